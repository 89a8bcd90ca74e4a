"""Static reference data: the indices and NSE stocks the simulated universe is built from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

SEGMENT_NSE: Final = 1
SEGMENT_NFO: Final = 2
SEGMENT_INDICES: Final = 9


@dataclass(frozen=True, slots=True)
class Underlying:
    """An index or stock whose price path drives its derivatives.

    Attributes:
        symbol: F&O ``name`` (``NIFTY``, ``INFY``).
        tradingsymbol: Cash/index tradingsymbol (``NIFTY 50``, ``INFY``).
        display_name: ``name`` column of the cash/index row of the dump.
        exchange_token: Exchange token of the cash/index instrument.
        is_index: True for indices (segment 9, not tradable).
        base_price: Price level the path moves around.
        strike_step: Distance between option strikes.
        lot_size: F&O lot size.
        freeze_qty: Largest F&O order quantity.
        path_vol: Scale of the price path's moves (1.0 = about 1% a day).
        atm_vol: At-the-money implied volatility of its options.
        skew: Slope of the smile in ``ln(K/F)``.
        curvature: Convexity of the smile in ``ln(K/F)``.
    """

    symbol: str
    tradingsymbol: str
    display_name: str
    exchange_token: int
    is_index: bool
    base_price: float
    strike_step: float
    lot_size: int
    freeze_qty: int
    path_vol: float
    atm_vol: float
    skew: float
    curvature: float

    @property
    def segment(self) -> int:
        """Segment id of the cash/index instrument."""
        return SEGMENT_INDICES if self.is_index else SEGMENT_NSE

    @property
    def instrument_token(self) -> int:
        """``(exchange_token << 8) | segment``."""
        return (self.exchange_token << 8) | self.segment


INDICES: Final[tuple[Underlying, ...]] = (
    Underlying(
        "NIFTY", "NIFTY 50", "NIFTY 50", 1001, True, 25000.0, 50.0, 75, 1800, 1.0, 0.13, -0.35, 1.5
    ),
    Underlying(
        "BANKNIFTY",
        "NIFTY BANK",
        "NIFTY BANK",
        1016,
        True,
        55000.0,
        100.0,
        35,
        900,
        1.2,
        0.16,
        -0.35,
        1.5,
    ),
    Underlying(
        "FINNIFTY",
        "NIFTY FIN SERVICE",
        "NIFTY FIN SERVICE",
        1007,
        True,
        26000.0,
        50.0,
        65,
        1800,
        1.1,
        0.15,
        -0.35,
        1.5,
    ),
)

# symbol, company name, exchange token, price level, lot size
_STOCKS: Final[tuple[tuple[str, str, int, float, int], ...]] = (
    ("INFY", "INFOSYS", 1594, 1550.0, 400),
    ("RELIANCE", "RELIANCE INDUSTRIES", 2885, 1400.0, 500),
    ("TCS", "TATA CONSULTANCY SERV LT", 11536, 3100.0, 175),
    ("HDFCBANK", "HDFC BANK", 1333, 980.0, 550),
    ("ICICIBANK", "ICICI BANK.", 4963, 1400.0, 700),
    ("SBIN", "STATE BANK OF INDIA", 3045, 850.0, 750),
    ("ITC", "ITC", 1660, 410.0, 1600),
    ("LT", "LARSEN & TOUBRO.", 11483, 3800.0, 175),
    ("AXISBANK", "AXIS BANK", 5900, 1150.0, 625),
    ("KOTAKBANK", "KOTAK MAHINDRA BANK", 1922, 2100.0, 400),
    ("HINDUNILVR", "HINDUSTAN UNILEVER.", 1394, 2450.0, 300),
    ("BHARTIARTL", "BHARTI AIRTEL", 10604, 2000.0, 475),
    ("BAJFINANCE", "BAJAJ FINANCE", 317, 1000.0, 750),
    ("MARUTI", "MARUTI SUZUKI INDIA.", 10999, 16000.0, 50),
    ("ASIANPAINT", "ASIAN PAINTS", 236, 2400.0, 250),
    ("HCLTECH", "HCL TECHNOLOGIES", 7229, 1500.0, 350),
    ("SUNPHARMA", "SUN PHARMACEUTICAL IND L", 3351, 1700.0, 350),
    ("TITAN", "TITAN COMPANY", 3506, 3600.0, 175),
    ("WIPRO", "WIPRO", 3787, 250.0, 3000),
    ("ULTRACEMCO", "ULTRATECH CEMENT", 11532, 12000.0, 50),
    ("NESTLEIND", "NESTLE INDIA", 17963, 1250.0, 500),
    ("TATAMOTORS", "TATA MOTORS", 3456, 680.0, 800),
    ("TATASTEEL", "TATA STEEL", 3499, 170.0, 5500),
    ("POWERGRID", "POWER GRID CORP.", 14977, 290.0, 1900),
    ("NTPC", "NTPC", 11630, 340.0, 1500),
    ("ONGC", "OIL AND NATURAL GAS CORP.", 2475, 245.0, 2250),
    ("COALINDIA", "COAL INDIA", 20374, 385.0, 1350),
    ("JSWSTEEL", "JSW STEEL", 11723, 1150.0, 675),
    ("M&M", "MAHINDRA & MAHINDRA", 2031, 3600.0, 200),
    ("ADANIENT", "ADANI ENTERPRISES", 25, 2400.0, 300),
    ("ADANIPORTS", "ADANI PORT & SEZ", 15083, 1450.0, 475),
    ("BAJAJFINSV", "BAJAJ FINSERV", 16675, 2000.0, 250),
    ("INDUSINDBK", "INDUSIND BANK", 5258, 750.0, 700),
    ("TECHM", "TECH MAHINDRA", 13538, 1500.0, 600),
    ("DRREDDY", "DR. REDDY S LABORATORIES", 881, 1250.0, 625),
    ("CIPLA", "CIPLA", 694, 1500.0, 375),
    ("EICHERMOT", "EICHER MOTORS", 910, 7000.0, 175),
    ("GRASIM", "GRASIM INDUSTRIES", 1232, 2800.0, 250),
    ("HEROMOTOCO", "HERO MOTOCORP", 1348, 5500.0, 150),
    ("BRITANNIA", "BRITANNIA INDUSTRIES", 547, 6000.0, 125),
    ("HINDALCO", "HINDALCO  INDUSTRIES", 1363, 800.0, 1400),
    ("DIVISLAB", "DIVI S LABORATORIES", 10940, 6000.0, 100),
    ("APOLLOHOSP", "APOLLO HOSPITALS ENTER. L", 157, 7500.0, 125),
    ("BPCL", "BHARAT PETROLEUM CORP  LT", 526, 340.0, 1975),
    ("SBILIFE", "SBI LIFE INSURANCE CO", 21808, 1850.0, 375),
    ("HDFCLIFE", "HDFC LIFE INS CO", 467, 760.0, 1100),
    ("TATACONSUM", "TATA CONSUMER PRODUCT", 3432, 1150.0, 550),
    ("UPL", "UPL", 11287, 700.0, 1355),
)


def _strike_step(price: float) -> float:
    for limit, step in (
        (250.0, 2.5),
        (500.0, 5.0),
        (1000.0, 10.0),
        (2500.0, 20.0),
        (5000.0, 50.0),
        (10000.0, 100.0),
    ):
        if price < limit:
            return step
    return 250.0


def _stock(number: int, row: tuple[str, str, int, float, int]) -> Underlying:
    symbol, name, token, price, lot = row
    vol = 1.0 + 0.6 * ((number * 7) % 10) / 10.0
    return Underlying(
        symbol,
        symbol,
        name,
        token,
        False,
        price,
        _strike_step(price),
        lot,
        lot * 20,
        vol,
        0.22 + 0.02 * ((number * 3) % 7),
        -0.25,
        1.0,
    )


STOCKS: Final[tuple[Underlying, ...]] = tuple(_stock(i, row) for i, row in enumerate(_STOCKS))
UNDERLYINGS: Final[tuple[Underlying, ...]] = INDICES + STOCKS
