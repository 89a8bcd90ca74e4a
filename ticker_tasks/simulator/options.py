"""Black-76 option prices from a volatility smile (vectorized numpy).

Options are priced off the forward of their expiry, ``F = S * (1 + r * T)``, with the
discounted Black-76 formula used by vollib's ``black`` model, so the implied volatility of a
model price recovered with ``vollib.black.implied_volatility.implied_volatility(price, F, K,
r, T, flag)`` is the smile volatility. The normal CDF uses W. J. Cody's rational Chebyshev
approximation of ``erfc`` (double precision), vectorized.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]

RISK_FREE_RATE: Final = 0.065
MINUTES_PER_YEAR: Final = 365.0 * 1440.0
MIN_VOL: Final = 0.05
MAX_VOL: Final = 2.0

# W. J. Cody, "Rational Chebyshev approximations for the error function", Math. Comp. 1969.
_A: Final = (
    3.1611237438705656,
    113.864154151050156,
    377.485237685302021,
    3209.37758913846947,
    0.185777706184603153,
)
_B: Final = (23.6012909523441209, 244.024637934444173, 1282.61652607737228, 2844.23683343917062)
_C: Final = (
    0.564188496988670089,
    8.88314979438837594,
    66.1191906371416295,
    298.635138197400131,
    881.95222124176909,
    1712.04761263407058,
    2051.07837782607147,
    1230.33935479799725,
    2.15311535474403846e-8,
)
_D: Final = (
    15.7449261107098347,
    117.693950891312499,
    537.181101862009858,
    1621.38957456669019,
    3290.79923573345963,
    4362.61909014324716,
    3439.36767414372164,
    1230.33935480374942,
)
_P: Final = (
    0.305326634961232344,
    0.360344899949804439,
    0.125781726111229246,
    0.0160837851487422766,
    6.58749161529837803e-4,
    0.0163153871373020978,
)
_Q: Final = (
    2.56852019228982242,
    1.87295284992346047,
    0.527905102951428412,
    0.0605183413124413191,
    0.00233520497626869185,
)
_SQRPI: Final = 0.56418958354775628695
_THRESH: Final = 0.46875
_XBIG: Final = 26.543


def _scaled_exp(y: F64) -> F64:
    """``exp(-y*y)`` (one exponential: relative error ~1e-15 for the arguments used here)."""
    return np.exp(-y * y)


def erfc(x: F64) -> F64:
    """Complementary error function, accurate to about 1e-16 relative."""
    x = np.ascontiguousarray(x, dtype=np.float64)
    y = np.abs(x)
    out = np.empty_like(x)
    small = y <= _THRESH
    if small.any():
        xs = x[small]
        ysq = xs * xs
        num = _A[4] * ysq
        den = ysq
        for i in range(3):
            num = (num + _A[i]) * ysq
            den = (den + _B[i]) * ysq
        out[small] = 1.0 - xs * (num + _A[3]) / (den + _B[3])
    mid = (~small) & (y <= 4.0)
    if mid.any():
        ym = y[mid]
        num = _C[8] * ym
        den = ym
        for i in range(7):
            num = (num + _C[i]) * ym
            den = (den + _D[i]) * ym
        out[mid] = (num + _C[7]) / (den + _D[7]) * _scaled_exp(ym)
    big = y > 4.0
    if big.any():
        yb = y[big]
        ysq = 1.0 / (yb * yb)
        num = _P[5] * ysq
        den = ysq
        for i in range(4):
            num = (num + _P[i]) * ysq
            den = (den + _Q[i]) * ysq
        res = (_SQRPI - ysq * (num + _P[4]) / (den + _Q[4])) / yb * _scaled_exp(yb)
        out[big] = np.where(yb >= _XBIG, 0.0, res)
    negative = (~small) & (x < 0.0)
    out[negative] = 2.0 - out[negative]
    return out


def norm_cdf(x: F64) -> F64:
    """Standard normal CDF."""
    return 0.5 * erfc(-np.asarray(x, dtype=np.float64) / np.sqrt(2.0))


def smile_vol(atm_vol: F64, skew: F64, curvature: F64, strike: F64, forward: F64) -> F64:
    """Volatility of a strike: ``atm + skew * x + curvature * x**2`` with ``x = ln(K/F)``."""
    x = np.log(strike / forward)
    return np.clip(atm_vol + skew * x + curvature * x * x, MIN_VOL, MAX_VOL)


def black76(
    forward: F64,
    strike: F64,
    years: F64,
    vol: F64,
    is_call: Bools,
    rate: float = RISK_FREE_RATE,
) -> F64:
    """Discounted Black-76 price; at or after expiry the intrinsic value.

    Args:
        forward: Forward (future) price.
        strike: Strike price.
        years: Time to expiry in years.
        vol: Volatility (annualized, decimal).
        is_call: True for calls, False for puts.
        rate: Continuously compounded discount rate.

    Returns:
        The option prices.
    """
    forward = np.ascontiguousarray(forward, dtype=np.float64)
    strike = np.ascontiguousarray(strike, dtype=np.float64)
    years = np.ascontiguousarray(years, dtype=np.float64)
    vol = np.ascontiguousarray(vol, dtype=np.float64)
    alive = years > 0.0
    t = np.where(alive, years, 1.0)
    sd = vol * np.sqrt(t)
    d1 = (np.log(forward / strike) + 0.5 * sd * sd) / sd
    d2 = d1 - sd
    discount = np.exp(-rate * t)
    sign = np.where(is_call, 1.0, -1.0)
    price = sign * discount * (forward * norm_cdf(sign * d1) - strike * norm_cdf(sign * d2))
    intrinsic = np.where(
        is_call, np.maximum(forward - strike, 0.0), np.maximum(strike - forward, 0.0)
    )
    return np.where(alive, price, intrinsic)


def forward_price(spot: F64, years: F64, rate: float = RISK_FREE_RATE) -> F64:
    """Future / forward price with simple carry: ``S * (1 + r * T)``."""
    return spot * (1.0 + rate * np.maximum(years, 0.0))
