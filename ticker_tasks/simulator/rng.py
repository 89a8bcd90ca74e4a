"""Counter-based random numbers: the same (key, counter) always gives the same value.

The trade path must be a pure function of (seed, instrument, minute), so the simulator never
draws from a stateful generator: every value is ``splitmix64`` applied to a key built from
those coordinates. All functions work on numpy ``uint64`` arrays (array arithmetic wraps
silently; numpy scalars would warn on overflow, so inputs are always arrays).
"""

from __future__ import annotations

import zlib
from typing import Final

import numpy as np
import numpy.typing as npt

U64 = npt.NDArray[np.uint64]
F64 = npt.NDArray[np.float64]

_GOLDEN: Final = np.uint64(0x9E3779B97F4A7C15)
_STREAM: Final = np.uint64(0xD1B54A32D192ED03)
_M1: Final = np.uint64(0xBF58476D1CE4E5B9)
_M2: Final = np.uint64(0x94D049BB133111EB)
_S30: Final = np.uint64(30)
_S27: Final = np.uint64(27)
_S31: Final = np.uint64(31)
_MASK16: Final = np.uint64(0xFFFF)
_INV16: Final = 1.0 / 65536.0


def mix64(x: U64) -> U64:
    """The splitmix64 finalizer: a bijective, well-mixed hash of 64-bit values."""
    x = x ^ (x >> _S30)
    x = x * _M1
    x = x ^ (x >> _S27)
    x = x * _M2
    return x ^ (x >> _S31)


def as_u64(values: npt.ArrayLike) -> U64:
    """View integers (possibly negative) as ``uint64`` arrays of at least one dimension."""
    arr = np.atleast_1d(np.asarray(values))
    return arr.astype(np.int64).view(np.uint64) if arr.dtype != np.uint64 else arr


def combine(key: U64, counter: npt.ArrayLike) -> U64:
    """Key of ``counter`` under ``key`` (``mix64(key + counter * golden)``)."""
    return mix64(key + as_u64(counter) * _GOLDEN)


def stream(key: U64, number: int) -> U64:
    """The ``number``-th independent 64-bit draw of ``key``."""
    return mix64(key + np.full(1, number, dtype=np.uint64) * _STREAM)


def stream_many(key: U64, numbers: npt.ArrayLike) -> U64:
    """Draw number ``numbers[i]`` of ``key[i]`` (element-wise :func:`stream`)."""
    return mix64(key + as_u64(numbers) * _STREAM)


def uniform16(draw: U64, lane: int) -> F64:
    """Uniform value in (0, 1) from the 16-bit ``lane`` (0..3) of a 64-bit draw."""
    bits = (draw >> np.uint64(16 * lane)) & _MASK16
    return (bits.astype(np.float64) + 0.5) * _INV16


def uniform53(draw: U64) -> F64:
    """Uniform value in [0, 1) with 53 bits of precision."""
    return (draw >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def seed_key(seed: int) -> U64:
    """Root key of a seed."""
    return mix64(as_u64([seed & 0x7FFF_FFFF_FFFF_FFFF]))


def label_key(root: U64, *labels: str | int) -> U64:
    """Key derived from a root and stable labels (strings hashed with CRC-32)."""
    key = root
    for label in labels:
        value = label if isinstance(label, int) else zlib.crc32(label.encode("utf-8"))
        key = combine(key, [value])
    return key


def value_noise(key: U64, position: npt.NDArray[np.int64], scale: int) -> F64:
    """Piecewise-linear noise in (-1, 1): knots every ``scale`` steps, linear in between.

    Args:
        key: Key per element (broadcast against ``position``).
        position: Integer positions (e.g. epoch minutes).
        scale: Distance between knots.

    Returns:
        The noise at each position; a pure function of (key, position).
    """
    knot, rest = np.divmod(position, scale)
    left = mix64(key + as_u64(knot) * _GOLDEN)
    right = mix64(key + as_u64(knot + 1) * _GOLDEN)
    a = uniform16(left, 0) + uniform16(left, 1) - 1.0
    b = uniform16(right, 0) + uniform16(right, 1) - 1.0
    weight = rest.astype(np.float64) / scale
    return a + (b - a) * weight
