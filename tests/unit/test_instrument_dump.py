"""Kite instruments dumps: parsing, validation against the current master, diffs."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ticker_tasks.db.models import NO_EXPIRY
from ticker_tasks.errors import ValidationError
from ticker_tasks.market.instrument_dump import (
    DUMP_COLUMNS,
    DUMP_DTYPES,
    DumpError,
    DumpReport,
    diff_dump,
    option_chain_fields,
    parse_dump,
    validate_dump,
)
from ticker_tasks.settings import load_settings

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "kite" / "instruments_all.csv"
#: The mock's derivatives expire 2017-11-30 .. 2018-01-25.
MOCK_TODAY = dt.date(2017, 11, 28)
HEADER = ",".join(DUMP_COLUMNS)


@pytest.fixture(scope="module")
def raw() -> bytes:
    return FIXTURE.read_bytes()


@pytest.fixture(scope="module")
def dump(raw: bytes) -> pd.DataFrame:
    return parse_dump(raw)


def _counts(frame: pd.DataFrame) -> dict[str, int]:
    return {str(k): int(v) for k, v in frame["segment"].value_counts().items()}


def _validate(
    frame: pd.DataFrame, counts: dict[str, int], today: dt.date = MOCK_TODAY
) -> DumpReport:
    return validate_dump(frame, counts, tolerance=0.2, today=today)


def _csv(rows: list[str]) -> bytes:
    return ("\n".join([HEADER, *rows]) + "\n").encode()


def synthetic_dump(rows: int, *, expiry: dt.date = dt.date(2026, 1, 29)) -> pd.DataFrame:
    """A dump-shaped frame: 2 indices, then equities, futures and options (CE/PE pairs)."""
    n_opt = rows // 2 - rows // 2 % 2
    n_eq = rows - n_opt - 10 - 2
    ex_tokens = np.arange(1000, 1000 + rows, dtype=np.int64)
    kinds = ["INDEX"] * 2 + ["EQ"] * n_eq + ["FUT"] * 10 + ["CE", "PE"] * (n_opt // 2)
    kind = np.array(kinds)
    derivative = np.isin(kind, ["FUT", "CE", "PE"])
    option = np.isin(kind, ["CE", "PE"])
    index = kind == "INDEX"
    seg_id = np.where(index, 9, np.where(derivative, 2, 1))
    strike = np.where(option, 20000 + 50 * (np.arange(rows) // 2 % 400), 0).astype(float)
    symbol = np.where(
        option,
        np.char.add(np.char.add("NIFTY26JAN", strike.astype(int).astype(str)), kind),
        np.char.add("SYM", np.arange(rows).astype(str)),
    )
    # Options of the same strike and type would collide: put each in its own expiry week.
    expiries = np.array([expiry + dt.timedelta(days=7 * int(w)) for w in np.arange(rows) // 800])
    return pd.DataFrame(
        {
            "instrument_token": (ex_tokens << 8) | seg_id,
            "exchange_token": ex_tokens,
            "tradingsymbol": symbol,
            "name": np.where(derivative, "NIFTY", "COMPANY"),
            "last_price": 0.0,
            "expiry": np.where(derivative, expiries, np.full(rows, NO_EXPIRY, dtype=object)),
            "strike": strike,
            "tick_size": np.where(index, 0.0, 0.05),
            "lot_size": np.where(index, 0, np.where(derivative, 75, 1)),
            "instrument_type": np.where(index, "EQ", kind),
            "segment": np.where(
                index,
                "INDICES",
                np.where(option, "NFO-OPT", np.where(derivative, "NFO-FUT", "NSE")),
            ),
            "exchange": np.where(derivative, "NFO", "NSE"),
        }
    )


def to_csv_bytes(frame: pd.DataFrame) -> bytes:
    out = frame.copy()
    out["expiry"] = [("" if e == NO_EXPIRY else e.isoformat()) for e in out["expiry"]]
    return out.to_csv(index=False, lineterminator="\r\n").encode()


# --- parse -----------------------------------------------------------------------------------


def test_parse_fixture_types_and_values(dump):
    assert list(dump.columns) == list(DUMP_COLUMNS)
    assert {c: str(t) for c, t in dump.dtypes.items()} == {
        c: str(pd.Series([], dtype=t).dtype) for c, t in DUMP_DTYPES.items()
    }
    assert len(dump) == 99
    row = dump.loc[dump["tradingsymbol"] == "BANKNIFTY18JAN23500CE"].iloc[0]
    assert row["instrument_token"] == 12073986
    assert row["exchange_token"] == 47164
    assert row["expiry"] == dt.date(2018, 1, 25)
    assert row["strike"] == 23500.0
    assert row["lot_size"] == 40
    assert row["segment"] == "NFO-OPT"
    equity = dump.loc[dump["tradingsymbol"] == "ADANIPORTS"].iloc[0]
    assert equity["expiry"] == NO_EXPIRY
    assert equity["name"] == "ADANI PORT & SEZ"
    assert all(isinstance(e, dt.date) for e in dump["expiry"])


def test_fixture_validates_against_its_own_counts(dump):
    report = _validate(dump, _counts(dump))
    assert report.ok, report.problems
    assert report.counts == {"BSE": 19, "NFO-OPT": 25, "NSE": 55}


def test_text_is_not_guessed_as_missing():
    frame = parse_dump(_csv(["3814145,14899,NA,NULL,0,,0,0.05,1,EQ,NSE,NSE"]))
    assert frame.loc[0, "tradingsymbol"] == "NA"
    assert frame.loc[0, "name"] == "NULL"


def test_byte_order_mark_and_lf_line_ends_are_accepted(raw):
    frame = parse_dump(b"\xef\xbb\xbf" + raw.replace(b"\r\n", b"\n"))
    assert len(frame) == 99


def test_cut_mid_row_is_rejected(raw):
    cut = raw[: len(raw) // 2]
    assert not cut.endswith(b"\n")
    with pytest.raises(DumpError, match="line"):
        parse_dump(cut)


@pytest.mark.parametrize("keep", [11, 9, 6, 2])
def test_rows_cut_after_any_field_are_rejected(keep):
    fields = (
        "12073986,47164,BANKNIFTY18JAN23500CE,,2528.4,2018-01-25,23500.0,0.05,40,CE,NFO-OPT,NFO"
    )
    with pytest.raises(DumpError):
        parse_dump(_csv([",".join(fields.split(",")[:keep])]))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"\r\n\r\n", "empty"),
        (HEADER.encode() + b"\r\n", "no rows"),
        (b"token,symbol\n1,A\n", "header"),
        (b"<html>502 Bad Gateway</html>", "header"),
        (_csv(["x,1594,INFY,INFOSYS,0,,0,0.05,1,EQ,NSE,NSE"]), "non-numeric instrument_token"),
        (_csv(["408065,1594,INFY,INFOSYS,0,,0,0.05,1.5,EQ,NSE,NSE"]), "non-integer lot_size"),
        (_csv(["408065,1594,INFY,INFOSYS,0,,0,abc,1,EQ,NSE,NSE"]), "non-numeric tick_size"),
        (_csv(["408065,1594,INFY,INFOSYS,0,,0,0.05,1,EQ,NSE,NSE,EXTRA"]), "more fields"),
        (_csv(["408065,1594,INFY,INFOSYS,0,25-01-2018,0,0.05,1,EQ,NSE,NSE"]), "expiry"),
        (_csv(["408065,1594,INFY,INFOSYS,0,2018-02-30,0,0.05,1,EQ,NSE,NSE"]), "expiry"),
        (_csv(["408065,1594,,INFOSYS,0,,0,0.05,1,EQ,NSE,NSE"]), "blank tradingsymbol"),
        (_csv(['408065,1594,"INFY,INFOSYS,0,,0,0.05,1,EQ,NSE,NSE']), "unreadable"),
        (HEADER.encode() + b"\n" + b"\xff\xfe garbage\n", "unreadable"),
    ],
)
def test_garbled_dumps_raise_dump_error(data, message):
    with pytest.raises(DumpError, match=message) as caught:
        parse_dump(data)
    assert isinstance(caught.value, ValidationError)
    assert "\n" not in str(caught.value)


# --- validate --------------------------------------------------------------------------------


def test_half_the_rows_fails_against_the_full_counts(raw, dump):
    lines = raw.split(b"\r\n")
    half = b"\r\n".join(lines[: len(lines) // 2]) + b"\r\n"
    truncated = parse_dump(half)
    report = _validate(truncated, _counts(dump))
    assert not report.ok
    assert any("shrank" in p or "vanished" in p for p in report.problems)


def test_shrink_beyond_tolerance_is_detected_and_within_tolerance_passes(dump):
    nse = dump.index[dump["segment"] == "NSE"]
    within = dump.drop(nse[:10])  # 55 -> 45: -18 %
    beyond = dump.drop(nse[:12])  # 55 -> 43: -22 %
    assert _validate(within, _counts(dump)).ok
    report = _validate(beyond, _counts(dump))
    assert not report.ok
    assert report.problems == ["segment NSE shrank from 55 to 43 rows (22% > tolerance 20%)"]


def test_growth_and_new_segments_pass(dump):
    smaller = {k: v // 2 for k, v in _counts(dump).items() if k != "BSE"}
    assert _validate(dump, smaller).ok
    assert _validate(dump, {}).ok


def test_vanished_segment_is_an_error_whatever_the_tolerance(dump):
    counts = {**_counts(dump), "MCX-FUT": 3}
    report = validate_dump(dump, counts, tolerance=1.0, today=MOCK_TODAY)
    assert not report.ok
    assert report.problems == ["segment MCX-FUT vanished (had 3 rows)"]


def test_duplicate_tokens_are_detected(dump):
    twin = dump.iloc[[0]].assign(tradingsymbol="TWIN")
    report = _validate(pd.concat([dump, twin], ignore_index=True), _counts(dump))
    assert not report.ok
    assert any("share an instrument_token" in p and "TWIN" in p for p in report.problems)


def test_duplicate_natural_keys_are_detected(dump):
    twin = dump.iloc[[0]].assign(instrument_token=(99999 << 8) | 1, exchange_token=99999)
    report = _validate(pd.concat([dump, twin], ignore_index=True), _counts(dump))
    assert not report.ok
    assert any("share (exchange, tradingsymbol, expiry)" in p for p in report.problems)


@pytest.mark.parametrize(
    ("column", "value", "symbol", "problem"),
    [
        ("expiry", NO_EXPIRY, "BANKNIFTY18JAN23500CE", "derivatives without expiry"),
        ("expiry", dt.date(2017, 11, 1), "BANKNIFTY18JAN23500CE", "expired before"),
        ("expiry", dt.date(2018, 1, 25), "ADANIPORTS", "not derivatives but have an expiry"),
        ("strike", 0.0, "BANKNIFTY18JAN23500CE", "options with strike <= 0"),
        ("strike", 10.0, "ADANIPORTS", "not options but have a strike"),
        ("tick_size", 0.0, "ADANIPORTS", "tick_size <= 0"),
        ("lot_size", 0, "BANKNIFTY18JAN23500CE", "lot_size <= 0"),
        ("exchange_token", 1, "ADANIPORTS", "exchange_token"),
    ],
)
def test_insane_rows_are_reported(dump, column, value, symbol, problem):
    bad = dump.copy()
    bad.loc[bad["tradingsymbol"] == symbol, column] = value
    report = _validate(bad, _counts(dump))
    assert not report.ok
    assert len(report.problems) == 1
    assert problem in report.problems[0]
    assert symbol in report.problems[0]


def test_stale_dump_is_detected_by_expiries(dump):
    report = _validate(dump, _counts(dump), today=dt.date(2018, 3, 1))
    assert not report.ok
    assert any("25 rows are derivatives that expired" in p for p in report.problems)


def test_index_rows_may_have_zero_tick_and_lot():
    frame = parse_dump(_csv(["256265,1001,NIFTY 50,NIFTY 50,0,,0,0,0,EQ,INDICES,NSE"]))
    assert _validate(frame, {}).ok


def test_tolerance_is_checked(dump):
    with pytest.raises(ValidationError):
        validate_dump(dump, {}, tolerance=1.5, today=MOCK_TODAY)


def test_settings_tolerance_default():
    assert load_settings().instrument_count_tolerance == 0.2


# --- diff ------------------------------------------------------------------------------------


def test_diff_of_identical_dumps_is_empty(dump):
    diff = diff_dump(dump, dump.copy())
    assert diff.empty
    assert diff.summary() == "added=0 changed=0 vanished=0"


def test_diff_finds_added_changed_and_vanished(dump):
    current = dump.copy()
    new = dump.copy()
    new = new.loc[new["tradingsymbol"] != "ADANIPORTS"]  # vanished
    fresh = new.iloc[[0]].assign(
        tradingsymbol="NEWCO", instrument_token=(77777 << 8) | 1, exchange_token=77777
    )
    new = pd.concat([new, fresh], ignore_index=True)  # added
    new.loc[new["tradingsymbol"] == "BANKNIFTY18JAN23500CE", "lot_size"] = 25
    new.loc[new["tradingsymbol"] == "ARMANFIN", "tick_size"] = 0.01
    new.loc[new["tradingsymbol"] == "PDPL", "instrument_token"] = (88888 << 8) | 1

    diff = diff_dump(new, current)

    assert diff.added["tradingsymbol"].tolist() == ["NEWCO"]
    assert diff.vanished["tradingsymbol"].tolist() == ["ADANIPORTS"]
    changed = diff.changed.set_index("tradingsymbol")
    assert sorted(changed.index) == ["ARMANFIN", "BANKNIFTY18JAN23500CE", "PDPL"]
    assert changed.loc["BANKNIFTY18JAN23500CE", "lot_size_old"] == 40
    assert changed.loc["BANKNIFTY18JAN23500CE", "lot_size_new"] == 25
    assert changed.loc["PDPL", "instrument_token_new"] == (88888 << 8) | 1
    assert changed.loc["ARMANFIN", "tick_size_old"] == pytest.approx(0.05)
    assert diff.summary() == "added=1 changed=3 vanished=1"


def test_diff_accepts_a_database_shaped_master(dump):
    # As read from SQL: expiry datetime64 (NO_EXPIRY is out of ns range, so NULL), Decimals.
    current = dump.copy()
    current["expiry"] = pd.DatetimeIndex(
        [pd.NaT if e == NO_EXPIRY else pd.Timestamp(e) for e in current["expiry"]]
    )
    current["tick_size"] = current["tick_size"].map(lambda v: Decimal(f"{v:.2f}"))
    assert diff_dump(dump, current).empty


def test_same_symbol_with_a_new_expiry_is_added_not_changed(dump):
    new = dump.copy()
    mask = new["tradingsymbol"] == "BANKNIFTY18JAN23500CE"
    new.loc[mask, "expiry"] = dt.date(2018, 2, 22)
    diff = diff_dump(new, dump)
    assert diff.added["tradingsymbol"].tolist() == ["BANKNIFTY18JAN23500CE"]
    assert diff.vanished["tradingsymbol"].tolist() == ["BANKNIFTY18JAN23500CE"]
    assert diff.changed.empty


# --- option chain fields ---------------------------------------------------------------------


def test_option_chain_fields(dump):
    options = option_chain_fields(dump)
    assert len(options) == 25
    assert set(options["option_type"]) == {"CE", "PE"}
    row = options.loc[options["tradingsymbol"] == "ADANIPORTS17DEC490PE"].iloc[0]
    # The mock leaves `name` blank: the underlying comes from the tradingsymbol.
    assert row["underlying"] == "ADANIPORTS"
    assert row["option_type"] == "PE"
    assert row["strike"] == 490.0
    assert row["expiry"] == dt.date(2017, 12, 28)
    assert "BANKNIFTY" in set(options["underlying"])


def test_option_chain_prefers_the_name_column():
    frame = parse_dump(
        _csv(
            [
                "10001,39,NIFTY2411821000CE,NIFTY,0,2024-01-18,21000,0.05,50,CE,NFO-OPT,NFO",
                "10002,39,NIFTY24JAN21000PE,,0,2024-01-25,21000,0.05,50,PE,NFO-OPT,NFO",
                "10003,39,ODDSYMBOL,,0,2024-01-25,21000,0.05,50,PE,NFO-OPT,NFO",
            ]
        )
    )
    assert option_chain_fields(frame)["underlying"].tolist() == ["NIFTY", "NIFTY", ""]


# --- scale -----------------------------------------------------------------------------------


def test_synthetic_30k_dump_parses_validates_and_diffs():
    frame = synthetic_dump(30_000)
    parsed = parse_dump(to_csv_bytes(frame))
    assert len(parsed) == 30_000
    assert parsed["instrument_token"].is_unique
    report = validate_dump(parsed, _counts(parsed), tolerance=0.2, today=dt.date(2026, 1, 20))
    assert report.ok, report.problems
    assert sum(report.counts.values()) == 30_000

    changed = parsed.copy()
    changed.loc[changed.index[-100:], "lot_size"] = 65
    diff = diff_dump(changed.iloc[500:], parsed)
    assert len(diff.vanished) == 500
    assert len(diff.changed) == 100
    assert diff.added.empty
    assert len(option_chain_fields(parsed)) == (parsed["instrument_type"].isin(["CE", "PE"])).sum()
