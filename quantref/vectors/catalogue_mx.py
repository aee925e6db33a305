"""The block-scaled cases of the test vectors: OCP MX (MXFP8, MXFP6, MXFP4, MXINT8) and NVFP4, each where the
conversion shows its rules: blocks spanning many binades, ties at the element's half-steps, elements that saturate
after the floored scale, an all-zero block, a block holding Inf, and a short last block.

Elements and scales are stored as their codes (bit patterns) in uint8 (MXINT8 elements as int8), so that a backend
compares codes without a float6, float4 or E8M0 type of its own."""

from __future__ import annotations

import numpy as np

from quantref.microscaling import MX_FORMATS
from quantref.vectors.case import Case, f32, rng_for

__all__ = ["microscaling_cases"]


def microscaling_cases() -> list[Case]:
    """Every MX and NVFP4 case, in a fixed order."""
    cases = []
    for name, fmt in MX_FORMATS.items():
        x = _blocks(fmt.max_value, f"mx.{name}")
        cases.append(
            Case(
                f"mx.quantize.{name}",
                "mx.quantize",
                "torchao-mx",
                f"{name}: blocks of 32 along the last axis sharing an E8M0 scale; ties, saturation after the floored "
                "scale, an all-zero block, a block with Inf, magnitudes over 60 binades, a short last block",
                {"x": x},
                {"format": name, "block_size": 32, "axis": -1},
            )
        )
    cases.append(
        Case(
            "mx.quantize.mxfp8_e4m3.axis0_block16",
            "mx.quantize",
            "torchao-mx",
            "mxfp8_e4m3 with blocks of 16 along axis 0",
            {"x": _blocks(448.0, "mx.axis0").T.copy()},
            {"format": "mxfp8_e4m3", "block_size": 16, "axis": 0},
        )
    )
    x = f32(rng_for("nvfp4").standard_normal((6, 64)) * 3)
    x[1, :16] = f32(np.arange(16) * 0.25 - 2)  # FP4 ties after the block scale
    x[2, :16] = 0
    amax = f32(np.abs(x).max())
    cases.append(
        Case(
            "nvfp4.quantize.two_level",
            "nvfp4.quantize",
            "torchao-mx",
            "NVFP4: blocks of 16 FP4 E2M1 elements with E4M3 scales under the per-tensor scale amax / (448 * 6)",
            {"x": x, "per_tensor_scale": f32(amax / f32(448 * 6))},
            {"block_size": 16, "axis": -1},
        )
    )
    cases.append(
        Case(
            "nvfp4.quantize.block_scales_only",
            "nvfp4.quantize",
            "torchao-mx",
            "NVFP4 without a per-tensor scale: E4M3 block scales alone (clamped to [2^-6, 448])",
            {"x": _blocks(6.0 * 448, "nvfp4.one_level")},
            {"block_size": 16, "axis": -1},
        )
    )
    return cases


def _blocks(max_value: float, label: str) -> np.ndarray:
    """Rows of 32-blocks: random magnitudes over 60 binades, element ties, saturating blocks, zeros, Inf; 208 wide
    (13 blocks of 16, 6.5 of 32: the last 32-block is short)."""
    rng = rng_for(label)
    rows = 8
    x = f32(rng.standard_normal((rows, 208)) * np.exp(rng.uniform(-20, 20, (rows, 1))))
    x[0, :32] = 0  # all zero: the smallest scale
    x[1, :32] = f32(np.linspace(-max_value, max_value, 32))  # the element grid's range itself
    x[2, :32] = f32(max_value * 1.9) * f32(rng.uniform(0.9, 1, 32))  # past the top after the floor: saturates
    x[3, :32] = f32((np.arange(32) + 0.5) / 8)  # half-steps: ties to even
    x[4, 3] = np.inf
    return x
