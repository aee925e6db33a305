"""The ONNX cases of the test vectors: QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear, MatMulInteger,
ConvInteger, QLinearMatMul and QLinearConv, each where onnxruntime (and, where it differs, the reference evaluator)
shows its rules: constructed ties across the whole grid, saturation, NaN and Inf, every granularity."""

from __future__ import annotations

import ml_dtypes
import numpy as np

from quantref.vectors.case import INT_RANGES, QL_PARAMS, SPECIALS, Case, code_range_ks, f32, ints, rng_for, ties
from quantref.vectors.encoding import BIT_PATTERN_TYPES

__all__ = ["onnx_cases"]


def onnx_cases() -> list[Case]:
    """Every ONNX case, in a fixed order."""
    return _onnx_quantize_cases() + _onnx_dequantize_cases() + _onnx_other_cases()


def _onnx_quantize_cases() -> list[Case]:
    cases = []
    op = "onnx.QuantizeLinear"
    for name, (lo, hi) in INT_RANGES.items():
        scale, zero_point = QL_PARAMS[name]
        dtype = BIT_PATTERN_TYPES.get(name, np.dtype(name))
        zp = np.array(zero_point).astype(dtype)
        label = f"{name}.ties"
        ks = code_range_ks(lo, hi, zero_point, label)
        random = (rng_for(label).standard_normal(256) * scale * (hi - lo) / 4).astype(np.float32)
        x = np.concatenate([ties(scale, ks), random])
        cases.append(
            Case(
                f"{op}.{label}",
                op,
                "onnxruntime",
                f"{name} output, per-tensor: constructed ties x = (k + 1/2)s across the grid and 3 codes "
                "beyond (saturation), their float32 neighbours, and normal samples",
                {"x": x, "y_scale": f32(scale), "y_zero_point": zp},
                {"axis": 1},
            )
        )
        for runtime, suffix in (("onnxruntime", ""), ("onnx-reference", ".reference")):
            cases.append(
                Case(
                    f"{op}.{name}.specials{suffix}",
                    op,
                    runtime,
                    f"{name} output: NaN, +-Inf, +-0, denormals, values far beyond the grid and beyond int32",
                    {"x": SPECIALS * f32(scale), "y_scale": f32(scale), "y_zero_point": zp},
                    {"axis": 1},
                )
            )
    rng = rng_for("quantize_linear.granularity")
    cases += [
        Case(
            f"{op}.uint8.default_zero_point",
            op,
            "onnxruntime",
            "no zero point and no output_dtype: uint8 with zero point 0",
            {"x": f32(rng.standard_normal(64) * 3), "y_scale": f32(0.02)},
            {"axis": 1},
        ),
        Case(
            f"{op}.int4.output_dtype",
            op,
            "onnxruntime",
            "no zero point; the output_dtype attribute selects int4",
            {"x": np.concatenate([ties(0.37, np.arange(-11, 11)), SPECIALS]), "y_scale": f32(0.37)},
            {"axis": 1, "output_dtype": "int4"},
        ),
        Case(
            f"{op}.int8.per_axis",
            op,
            "onnxruntime",
            "per-axis scale and zero point along axis 1 of a 3-D input",
            {
                "x": f32(rng.standard_normal((2, 3, 40)) * 2),
                "y_scale": f32([0.01, 0.02, 0.037]),
                "y_zero_point": np.array([-5, 0, 9], np.int8),
            },
            {"axis": 1},
        ),
        Case(
            f"{op}.uint8.per_axis_negative_axis",
            op,
            "onnxruntime",
            "per-axis along axis=-1 (the last axis)",
            {
                "x": f32(rng.standard_normal((16, 5))),
                "y_scale": f32([0.004, 0.01, 0.02, 0.03, 0.05]),
                "y_zero_point": np.array([0, 3, 128, 200, 255], np.uint8),
            },
            {"axis": -1},
        ),
        Case(
            f"{op}.int4.blocked",
            op,
            "onnxruntime",
            "blocked along axis 1, block_size 4, with a ragged last block (10 = 4 + 4 + 2)",
            {
                "x": f32(rng.standard_normal((4, 10)) * 2),
                "y_scale": f32(rng.uniform(0.1, 0.5, (4, 3))),
                "y_zero_point": ints(rng, -2, 3, (4, 3), ml_dtypes.int4),
            },
            {"axis": 1, "block_size": 4},
        ),
        Case(
            f"{op}.uint8.blocked_axis0",
            op,
            "onnxruntime",
            "blocked along axis 0, block_size 4 (6 = 4 + 2)",
            {
                "x": f32(rng.standard_normal((6, 3))),
                "y_scale": f32(rng.uniform(0.005, 0.02, (2, 3))),
                "y_zero_point": ints(rng, 100, 150, (2, 3), np.uint8),
            },
            {"axis": 0, "block_size": 4},
        ),
    ]
    for name in ("float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz"):
        dtype = BIT_PATTERN_TYPES[name]
        finite = np.arange(256, dtype=np.uint8).view(dtype).astype(np.float32)
        grid = np.unique(np.abs(finite[np.isfinite(finite)]))
        top = grid[-1]
        middles = ((grid[1:].astype(np.float64) + grid[:-1]) / 2).astype(np.float32)
        factors = (1.0, 1.03, 1.0625, 1.07, 1.1, 1.125, 1.2, 1.5, 2.0)
        bands = f32([top * f for f in factors] + [1e6, 480, 488, 495.9, 496, 61440, 65535, 65536])
        values = np.concatenate(
            [grid, middles, np.nextafter(middles, np.float32(np.inf)), np.nextafter(middles, np.float32(0)), bands]
        )
        values = np.concatenate([values, -values, f32([np.nan, np.inf, -np.inf])])
        scale = 2.0  # exact: x / 2 lands on the constructed values
        random = f32(rng_for(name).standard_normal(512) * top / 3)
        for saturate in (1, 0):
            # The reference evaluator differs only for e4m3fn without saturation and for e5m2 (its NaN code).
            differs = name == "float8_e5m2" or (name == "float8_e4m3fn" and not saturate)
            for runtime, suffix in (("onnxruntime", ""), ("onnx-reference", ".reference"))[: 2 if differs else 1]:
                label = f"{name}.{'saturate' if saturate else 'no_saturate'}{suffix}"
                cases.append(
                    Case(
                        f"{op}.{label}",
                        op,
                        runtime,
                        f"{name} output, saturate={saturate}: every finite value, the ties between neighbours and "
                        "their float32 neighbours, the overflow bands, +-Inf, NaN, and normal samples",
                        {
                            "x": np.concatenate([values * f32(scale), random]),
                            "y_scale": f32(scale),
                            "y_zero_point": np.zeros((), dtype),
                        },
                        {"axis": 1, "saturate": saturate},
                    )
                )
    return cases


def _onnx_dequantize_cases() -> list[Case]:
    op = "onnx.DequantizeLinear"
    cases = []
    for name, (lo, hi) in INT_RANGES.items():
        scale, zero_point = QL_PARAMS[name]
        dtype = BIT_PATTERN_TYPES.get(name, np.dtype(name))
        if hi - lo < 256:
            codes = np.arange(lo, hi + 1)
        else:
            codes = np.concatenate(
                [np.arange(lo, lo + 4), np.arange(hi - 3, hi + 1), rng_for(name).integers(lo, hi, 252)]
            )
        cases.append(
            Case(
                f"{op}.{name}",
                op,
                "onnxruntime",
                f"{name} input: every code (16-bit: a sample), per-tensor",
                {"x": codes.astype(dtype), "x_scale": f32(scale), "x_zero_point": np.array(zero_point).astype(dtype)},
                {"axis": 1},
            )
        )
    int32 = np.array([-(2**31), -(2**31) + 1, -(2**24) - 1, -1, 0, 1, 2**24 + 1, 2**31 - 1], np.int32)
    cases.append(
        Case(
            f"{op}.int32",
            op,
            "onnxruntime",
            "int32 input: the zero point is subtracted in wrapping int32, then one rounding to float32",
            {"x": int32, "x_scale": f32(0.001), "x_zero_point": np.array(7, np.int32)},
            {"axis": 1},
        )
    )
    for name in ("float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz"):
        cases.append(
            Case(
                f"{op}.{name}",
                op,
                "onnxruntime",
                f"{name} input: all 256 bit patterns (NaN included)",
                {"x": np.arange(256, dtype=np.uint8).view(BIT_PATTERN_TYPES[name]), "x_scale": f32(0.5)},
                {"axis": 1},
            )
        )
    rng = rng_for("dequantize_linear.granularity")
    cases += [
        Case(
            f"{op}.int8.per_axis",
            op,
            "onnxruntime",
            "per-axis along axis 0",
            {
                "x": ints(rng, -128, 128, (3, 50), np.int8),
                "x_scale": f32([0.01, 0.2, 3.0]),
                "x_zero_point": np.array([-3, 0, 17], np.int8),
            },
            {"axis": 0},
        ),
        Case(
            f"{op}.int4.blocked",
            op,
            "onnxruntime",
            "blocked along axis 1, block_size 4, ragged last block",
            {
                "x": ints(rng, -8, 8, (3, 10), ml_dtypes.int4),
                "x_scale": f32(rng.uniform(0.1, 1, (3, 3))),
                "x_zero_point": ints(rng, -2, 3, (3, 3), ml_dtypes.int4),
            },
            {"axis": 1, "block_size": 4},
        ),
    ]
    return cases


def _onnx_other_cases() -> list[Case]:
    cases = []
    rng = rng_for("onnx.other")
    op = "onnx.DynamicQuantizeLinear"
    for label, x in (
        ("random", rng.standard_normal(1000) * 2.5),
        ("all_positive", rng.uniform(0.1, 7, 64)),
        ("all_negative", -rng.uniform(0.1, 7, 64)),
        ("constant", np.full(16, 2.5)),
        ("ties", ties(6.0 / 255, np.arange(-60, 195))),
    ):
        cases.append(
            Case(
                f"{op}.{label}",
                op,
                "onnxruntime",
                f"uint8 dynamic quantization of {label.replace('_', ' ')} input",
                {"x": f32(x)},
            )
        )
    for runtime, suffix in (("onnxruntime", ""), ("onnx-reference", ".reference")):
        cases.append(
            Case(
                f"{op}.all_zero{suffix}",
                op,
                runtime,
                "all-zero input: onnxruntime takes scale 1, the reference evaluator 1/255",
                {"x": np.zeros(16, np.float32)},
            )
        )
    cases.append(
        Case(
            f"{op}.nan.reference",
            op,
            "onnx-reference",
            "a NaN element makes the reference evaluator's scale NaN (onnxruntime's answer depends on the "
            "NaN's position and the CPU's vector width: no onnxruntime case)",
            {"x": f32([0.5, np.nan, -1.0, 2.0])},
        )
    )

    op = "onnx.MatMulInteger"
    cases += [
        Case(
            f"{op}.uint8_uint8",
            op,
            "onnxruntime",
            "uint8 x uint8 with scalar zero points",
            {
                "a": ints(rng, 0, 256, (5, 16), np.uint8),
                "b": ints(rng, 0, 256, (16, 7), np.uint8),
                "a_zero_point": np.array(3, np.uint8),
                "b_zero_point": np.array(200, np.uint8),
            },
        ),
        Case(
            f"{op}.int8_int8_per_column",
            op,
            "onnxruntime",
            "int8 x int8, per-column b zero point",
            {
                "a": ints(rng, -128, 128, (4, 32), np.int8),
                "b": ints(rng, -128, 128, (32, 6), np.int8),
                "a_zero_point": np.array(-5, np.int8),
                "b_zero_point": ints(rng, -10, 10, 6, np.int8),
            },
        ),
        Case(
            f"{op}.uint8_int8_batched",
            op,
            "onnxruntime",
            "uint8 x int8, batched 3-D a against 2-D b",
            {
                "a": ints(rng, 0, 256, (2, 4, 8), np.uint8),
                "b": ints(rng, -128, 128, (8, 3), np.int8),
                "a_zero_point": np.array(128, np.uint8),
                "b_zero_point": np.array(0, np.int8),
            },
        ),
        Case(
            f"{op}.extremes",
            op,
            "onnxruntime",
            "the largest products: 255 - 0 times -128 - 127, summed 64 times",
            {
                "a": np.full((2, 64), 255, np.uint8),
                "b": np.full((64, 2), -128, np.int8),
                "a_zero_point": np.array(0, np.uint8),
                "b_zero_point": np.array(127, np.int8),
            },
        ),
    ]
    op = "onnx.ConvInteger"
    cases += [
        Case(
            f"{op}.uint8_padded_strided",
            op,
            "onnxruntime",
            "uint8 x uint8, pads 1, stride 2, scalar zero points",
            {
                "x": ints(rng, 0, 256, (1, 3, 7, 7), np.uint8),
                "w": ints(rng, 0, 256, (4, 3, 3, 3), np.uint8),
                "x_zero_point": np.array(17, np.uint8),
                "w_zero_point": np.array(128, np.uint8),
            },
            {"strides": [2, 2], "pads": [1, 1, 1, 1], "dilations": [1, 1], "group": 1},
        ),
        Case(
            f"{op}.int8_grouped_dilated",
            op,
            "onnxruntime",
            "int8 x int8, group 2, dilation 2, asymmetric pads (onnxruntime supports only a scalar w zero point)",
            {
                "x": ints(rng, -128, 128, (2, 4, 8, 8), np.int8),
                "w": ints(rng, -128, 128, (6, 2, 2, 3), np.int8),
                "x_zero_point": np.array(-3, np.int8),
                "w_zero_point": np.array(2, np.int8),
            },
            {"strides": [1, 1], "pads": [0, 1, 2, 0], "dilations": [2, 2], "group": 2},
        ),
    ]

    op = "onnx.QLinearMatMul"
    k = np.arange(-128, 128)
    for out, zero_point in (("uint8", 1), ("int8", -3)):
        # onnxruntime implements (a, b, y) = (uint8, int8 or uint8, uint8) and (int8, int8, int8).
        a, a_zero_point = (128 + k, 128) if out == "uint8" else (k, 0)
        inputs = {
            "a": a.astype(out).reshape(-1, 1),
            "a_scale": f32(0.5),
            "a_zero_point": np.array(a_zero_point).astype(out),
            "b": np.array([[1]], np.int8),
            "b_scale": f32(1.0),
            "b_zero_point": np.array(0, np.int8),
            "y_scale": f32(1.0),
            "y_zero_point": np.array(zero_point).astype(out),
        }
        for runtime, suffix in (("onnxruntime", ""), ("onnx-reference", ".reference")):
            cases.append(
                Case(
                    f"{op}.ties_{out}{suffix}",
                    op,
                    runtime,
                    f"acc = -128..127, M = 1/2, odd y_zero_point {zero_point}: every odd acc is a tie; "
                    "zero point after rounding (onnxruntime) or before (reference)",
                    inputs,
                )
            )
    scales = {"a_scale": f32(0.0173), "b_scale": f32(0.0091), "y_scale": f32(0.0537)}
    random_inputs = {
        "a": ints(rng, 0, 256, (16, 64), np.uint8),
        "a_scale": scales["a_scale"],
        "a_zero_point": np.array(131, np.uint8),
        "b": ints(rng, -128, 128, (64, 16), np.int8),
        "b_scale": scales["b_scale"],
        "b_zero_point": np.array(0, np.int8),
        "y_scale": scales["y_scale"],
        "y_zero_point": np.array(120, np.uint8),
    }
    per_column = {
        "a": ints(rng, -128, 128, (8, 32), np.int8),
        "a_scale": f32(0.02),
        "a_zero_point": np.array(4, np.int8),
        "b": ints(rng, -128, 128, (32, 5), np.int8),
        "b_scale": f32(rng.uniform(0.001, 0.01, 5)),
        "b_zero_point": ints(rng, -3, 3, 5, np.int8),
        "y_scale": f32(0.011),
        "y_zero_point": np.array(-9, np.int8),
    }
    cases.append(Case(f"{op}.random_uint8", op, "onnxruntime", "uint8 x int8 -> uint8, random operands", random_inputs))
    cases.append(
        Case(
            f"{op}.per_column_int8",
            op,
            "onnxruntime",
            "int8 x int8 -> int8 with per-column b scale and zero point",
            per_column,
        )
    )

    op = "onnx.QLinearConv"
    conv = {
        "x": ints(rng, 0, 256, (1, 4, 9, 9), np.uint8),
        "x_scale": f32(0.0213),
        "x_zero_point": np.array(97, np.uint8),
        "w": ints(rng, -127, 128, (6, 4, 3, 3), np.int8),
        "w_scale": f32(rng.uniform(0.002, 0.02, 6)),
        "w_zero_point": np.zeros(6, np.int8),
        "y_scale": f32(0.0731),
        "y_zero_point": np.array(11, np.uint8),
        "B": ints(rng, -5000, 5000, 6, np.int32),
    }
    grouped = {
        "x": ints(rng, -20, 20, (2, 4, 6, 6), np.int8),
        "x_scale": f32(0.5),
        "x_zero_point": np.array(-1, np.int8),
        "w": ints(rng, -10, 10, (4, 2, 3, 3), np.int8),
        "w_scale": f32(0.25),
        "w_zero_point": np.array(0, np.int8),
        "y_scale": f32(4.0),
        "y_zero_point": np.array(5, np.int8),
    }
    cases.append(
        Case(
            f"{op}.per_channel_uint8",
            op,
            "onnxruntime",
            "uint8 input, int8 per-channel weights, int32 bias, pads 1, stride 2",
            conv,
            {"strides": [2, 2], "pads": [1, 1, 1, 1], "dilations": [1, 1], "group": 1},
        )
    )
    for runtime, suffix in (("onnxruntime", ""), ("onnx-reference", ".reference")):
        cases.append(
            Case(
                f"{op}.grouped_int8_ties{suffix}",
                op,
                runtime,
                "int8 input and weights, group 2, no bias, M = 1/32 exactly and an odd y_zero_point: "
                "many exact ties, where the zero point's place (after or before rounding) shows",
                grouped,
                {"strides": [1, 1], "pads": [1, 0, 1, 0], "dilations": [1, 1], "group": 2},
            )
        )
    return cases
