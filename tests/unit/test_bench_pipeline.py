"""Pipeline bench: loss and duplicate counting, message header parsing, load planning."""

from __future__ import annotations

import json

import pytest

from ticker_tasks.errors import ConfigError
from ticker_tasks.pipeline.bench import plan_load
from ticker_tasks.pipeline.bench_reader import (
    PublishedTally,
    count_published,
    parse_header,
    percentile_ms,
)


def message(connection: str, seq: int, packet_index: list[int]) -> dict[str, object]:
    return {
        "v": 1,
        "batch_id": f"{connection}-{seq}",
        "connection": connection,
        "seq": seq,
        "source": "mock",
        "received_at": [1.0] * len(packet_index),
        "packet_index": packet_index,
        "columns": {"instrument_token": list(range(len(packet_index)))},
    }


def test_every_offered_tick_published_once_is_neither_lost_nor_duplicated():
    messages = [message("a:0", 1, [0, 1, 2]), message("a:0", 2, [0, 1]), message("a:1", 1, [0])]
    counts = count_published(messages, offered=6)
    assert (counts.published, counts.unique, counts.duplicated, counts.lost) == (6, 6, 0, 0)


def test_a_batch_published_twice_counts_its_rows_as_duplicates():
    messages = [message("a:0", 1, [0, 1, 2]), message("a:0", 1, [0, 1, 2])]
    counts = count_published(messages, offered=3)
    assert (counts.published, counts.unique, counts.duplicated, counts.lost) == (6, 3, 3, 0)


def test_rows_split_over_messages_of_one_batch_are_counted_by_their_index():
    # Given one batch published in two parts (one per mode channel), overlapping on index 2
    messages = [message("a:0", 7, [0, 2, 4]), message("a:0", 7, [1, 2, 3])]
    counts = count_published(messages, offered=5)
    # I expect index 2 to count once as a duplicate and nothing lost
    assert (counts.unique, counts.duplicated, counts.lost) == (5, 1, 0)


def test_holes_left_by_rejected_rows_are_lost():
    counts = count_published([message("a:0", 1, [0, 3]), message("b:0", 1, [])], offered=4)
    assert (counts.published, counts.unique, counts.lost) == (2, 2, 2)


def test_same_seq_on_two_connections_is_two_batches():
    counts = count_published([message("a:0", 5, [0, 1]), message("a:1", 5, [0, 1])], offered=4)
    assert (counts.duplicated, counts.lost) == (0, 0)


def test_a_repeated_index_inside_one_message_is_a_duplicate():
    tally = PublishedTally()
    assert tally.add("a:0", 1, [0, 0, 1]) == 1
    assert tally.counts(2).duplicated == 1


def test_negative_index_is_refused():
    with pytest.raises(ValueError, match="negative"):
        PublishedTally().add("a:0", 1, [-1])


def test_header_is_parsed_without_decoding_the_columns():
    raw = json.dumps(message("bench0:1", 42, [0, 5, 9]), separators=(",", ":")).encode()
    header = parse_header(raw)
    assert (header.connection, header.seq, header.packet_index) == ("bench0:1", 42, [0, 5, 9])
    assert header.received_at == [1.0, 1.0, 1.0]


def test_header_tolerates_spaces_and_refuses_a_message_without_packet_index():
    spaced = json.dumps(message("a:0", 1, [0]))
    assert parse_header(spaced).packet_index == [0]
    legacy = message("a:0", 1, [0])
    del legacy["packet_index"]
    with pytest.raises(ValueError, match="packet_index"):
        parse_header(json.dumps(legacy))


def test_percentiles_in_milliseconds():
    import numpy as np

    latencies = np.array([0.010, 0.020, 0.030, 0.040, 0.050])
    assert percentile_ms(latencies, 50) == 30.0
    assert percentile_ms(np.zeros(0), 99) is None


def test_load_plan_defaults_to_ten_ticks_per_instrument():
    plan = plan_load(100_000)
    assert (plan.instruments, plan.ticks_per_second) == (10_000, 10.0)
    # 2999 instruments per connection (one slot for the canary), 3 connections per account
    assert (plan.connections, plan.accounts) == (4, 2)
    assert plan.target_per_s == (10_000 + 4) * 10.0


def test_load_plan_spreads_a_rate_over_given_instruments():
    plan = plan_load(2000, instruments=400)
    assert plan.ticks_per_second == 5.0
    assert (plan.connections, plan.accounts) == (1, 1)


def test_load_plan_refuses_more_than_ten_ticks_per_instrument():
    with pytest.raises(ConfigError, match="at least 1,000 instruments"):
        plan_load(10_000, instruments=500)
