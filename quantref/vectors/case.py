"""One test case, and the kit its inputs are built with: seeded streams, constructed ties, special values."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Case", "SPECIALS"]


@dataclass(frozen=True)
class Case:
    """One test case: an operator applied to concrete inputs under one runtime's semantics.

    Attributes:
      id: unique id, ``"<operator>.<label>"``.
      operator: ``"onnx.QuantizeLinear"``, ``"torch.quantize_per_tensor"``, ``"tflite.Conv2D"``, ...
      runtime: a key of :data:`RUNTIMES`.
      description: what the case exercises.
      inputs: input name → array (true dtypes, ml_dtypes included), in the operator's order.
      attributes: JSON-serializable attributes.
    """

    id: str
    operator: str
    runtime: str
    description: str
    inputs: dict[str, np.ndarray]
    attributes: dict[str, Any] = field(default_factory=dict)


def rng_for(label: str) -> np.random.Generator:
    # One stream per case, seeded by its label: adding a case never changes another case's data.
    return np.random.default_rng(zlib.crc32(label.encode()))


def f32(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


def ints(rng: np.random.Generator, low: int, high: int, shape, dtype) -> np.ndarray:
    """Uniform random integers in [low, high) of the given dtype."""
    return rng.integers(low, high, shape).astype(dtype)


def ties(scale: float, ks: np.ndarray) -> np.ndarray:
    """x = (k + ½)·s rounded to float32, and its two float32 neighbours: where round-half rules and 1/s show."""
    ties = ((np.asarray(ks, np.float64) + 0.5) * float(np.float32(scale))).astype(np.float32)
    return np.concatenate([ties, np.nextafter(ties, np.float32(np.inf)), np.nextafter(ties, np.float32(-np.inf))])


SPECIALS = f32(
    [
        np.nan,
        -np.nan,
        np.inf,
        -np.inf,
        0.0,
        -0.0,
        1e-45,
        -1e-45,
        1e-38,
        1e30,
        -1e30,
        3e9,
        -3e9,
        2.0**31,
        -(2.0**31),
        9.3e18,
        65504.0,
        -65504.0,
    ]
)

INT_RANGES = {
    "int8": (-128, 127),
    "uint8": (0, 255),
    "int16": (-32768, 32767),
    "uint16": (0, 65535),
    "int4": (-8, 7),
    "uint4": (0, 15),
    "int2": (-2, 1),
    "uint2": (0, 3),
}
QL_PARAMS = {  # scale and zero point per output type: non-power-of-two scales, zero points off the middle
    "int8": (0.0123, -7),
    "uint8": (0.1, 3),
    "int16": (1 / 3, 1234),
    "uint16": (0.37, 40000),
    "int4": (0.37, -3),
    "uint4": (0.37, 5),
    "int2": (0.5, -1),
    "uint2": (0.3, 1),
}


def code_range_ks(lo: int, hi: int, zero_point: int, label: str) -> np.ndarray:
    """Tie indices k covering the whole grid (and 3 beyond each end) — sampled for 16-bit grids."""
    first, last = lo - zero_point - 3, hi - zero_point + 3
    if last - first <= 600:
        return np.arange(first, last)
    edges = np.concatenate([np.arange(first, first + 8), np.arange(last - 8, last)])
    return np.sort(np.concatenate([edges, rng_for(label).integers(first, last, 500)]))
