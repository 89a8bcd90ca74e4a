"""The canary-lag watchdog's pure parts: the frame scan and the replace decision."""

from __future__ import annotations

import struct

from workers.streamer.connection import frame_has_token, lagging_canaries


def frame(*tokens: int, size: int = 8) -> bytes:
    """A ticker frame of one ``size``-byte packet per token."""
    body = b"".join(
        struct.pack(">H", size) + struct.pack(">I", t) + bytes(size - 4) for t in tokens
    )
    return struct.pack(">H", len(tokens)) + body


def test_the_scan_finds_a_canary_in_any_packet() -> None:
    canaries = frozenset({256265})
    assert frame_has_token(frame(1, 2, 256265), canaries)
    assert frame_has_token(frame(256265, size=184), canaries)
    assert not frame_has_token(frame(1, 2, 3), canaries)
    assert not frame_has_token(b"\x00", canaries)
    assert not frame_has_token(frame(), canaries)


def test_the_scan_stops_at_a_torn_frame() -> None:
    canaries = frozenset({256265})
    torn = frame(1, 256265)[:14]  # the second packet's header is cut
    assert not frame_has_token(torn, canaries)
    assert frame_has_token(frame(256265, 1)[:10], canaries)


def test_a_connection_lagging_its_freshest_sibling_is_replaced() -> None:
    now = 1000.0
    last = {"A:0": 999.0, "A:1": 980.0, "A:2": 985.0}
    assert lagging_canaries(last, now, 15.0) == ["A:1"]
    assert lagging_canaries(last, now, 10.0) == ["A:1", "A:2"]
    assert lagging_canaries(last, now, 20.0) == []


def test_no_replacement_when_off_alone_or_all_equally_old() -> None:
    now = 1000.0
    assert lagging_canaries({"A:0": 999.0, "A:1": 900.0}, now, 0.0) == []
    assert lagging_canaries({"A:0": 900.0}, now, 15.0) == []
    assert lagging_canaries({"A:0": 900.0, "A:1": 901.0}, now, 15.0) == []  # market quiet
    assert lagging_canaries({}, now, 15.0) == []


def test_a_fresh_subscription_gets_grace_and_a_quiet_market_no_lag() -> None:
    now = 1000.0
    last = {"A:0": 999.0, "A:1": 970.0}
    assert lagging_canaries(last, now, 15.0, {"A:0": 900.0, "A:1": 990.0}) == []
    assert lagging_canaries(last, now, 15.0, {"A:0": 900.0, "A:1": 980.0}) == ["A:1"]
    # no canary seen anywhere: subscribe times alone never replace anything
    assert lagging_canaries({"A:0": 0.0, "A:1": 0.0}, now, 15.0, {"A:0": 900.0}) == []
    # one never saw its canary while its sibling does
    assert lagging_canaries({"A:0": 999.0, "A:1": 0.0}, now, 15.0, {"A:1": 950.0}) == ["A:1"]
    # the canary went quiet everywhere, then one socket reconnected: no cascade
    quiet = {"A:0": 500.0, "A:1": 500.0, "A:2": 500.0}
    assert lagging_canaries(quiet, now, 15.0, {"A:0": 100.0, "A:1": 100.0, "A:2": 990.0}) == []
