"""The catalogue of test cases: every case of the current format version (ONNX, PyTorch, TFLite, MX and NVFP4)."""

from __future__ import annotations

import numpy as np

from quantref.runtimes import tflite as qtflite
from quantref.vectors.case import SPECIALS, Case, code_range_ks, f32, ints, rng_for, ties
from quantref.vectors.catalogue_mx import microscaling_cases
from quantref.vectors.catalogue_onnx import onnx_cases

__all__ = ["build_cases"]


def build_cases() -> list[Case]:
    """Every case of the current format version, in a fixed order (inputs built from fixed seeds).

    Returns:
      The cases; their ids are unique.
    """
    cases = onnx_cases() + _torch_cases() + _tflite_cases() + microscaling_cases()
    ids = [case.id for case in cases]
    duplicates = {i for i in ids if ids.count(i) > 1}
    assert not duplicates, f"duplicate case ids {duplicates}"
    return cases


def _torch_cases() -> list[Case]:
    cases = []
    params = {
        "quint8": (0.1, 3, 0, 255),
        "qint8": (0.00214854861, -7, -128, 127),
        "qint32": (1 / 3, 12345, -(2**31), 2**31 - 1),
    }
    for dtype, (scale, zero_point, lo, hi) in params.items():
        label = f"{dtype}.ties"
        ks = np.arange(-300, 300) if dtype == "qint32" else np.arange(lo - zero_point - 3, hi - zero_point + 3)
        x = np.concatenate([ties(scale, ks), f32(rng_for(label).standard_normal(256) * scale * 40)])
        for op in ("torch.quantize_per_tensor",):
            cases.append(
                Case(
                    f"{op}.{label}",
                    op,
                    "torch",
                    f"{dtype}, scale {scale:.9g}, zero point {zero_point}: ties, neighbours, saturation, samples",
                    {"x": x, "scale": f32(scale), "zero_point": np.array(zero_point, np.int64)},
                    {"dtype": dtype},
                )
            )
            cases.append(
                Case(
                    f"{op}.{dtype}.specials",
                    op,
                    "torch",
                    f"{dtype}: NaN, +-Inf, +-0, huge values",
                    {"x": SPECIALS, "scale": f32(scale), "zero_point": np.array(zero_point, np.int64)},
                    {"dtype": dtype},
                )
            )
        # per channel: row c holds the ties of scale c, then the specials
        scales = f32([scale, scale * 3.7, scale / 1.9])
        zero_points = np.array([zero_point, lo + (hi - lo) // 4, hi - 5 if dtype != "qint32" else -99999], np.int64)
        rows = [np.concatenate([ties(s, np.arange(-140, 140)), SPECIALS]) for s in scales]
        op = "torch.quantize_per_channel"
        cases.append(
            Case(
                f"{op}.{dtype}",
                op,
                "torch",
                f"{dtype}, axis 0, three channels: ties and specials",
                {"x": np.stack(rows), "scales": scales, "zero_points": zero_points},
                {"axis": 0, "dtype": dtype},
            )
        )
    op = "torch.quantize_per_channel"
    rng = rng_for("torch.per_channel_axis1")
    cases.append(
        Case(
            f"{op}.quint8.axis1_4d",
            op,
            "torch",
            "quint8, axis 1 of an NCHW tensor",
            {
                "x": f32(rng.standard_normal((2, 3, 4, 5))),
                "scales": f32([0.01, 0.02, 0.013]),
                "zero_points": np.array([0, 128, 255], np.int64),
            },
            {"axis": 1, "dtype": "quint8"},
        )
    )

    op = "torch.fake_quantize_per_tensor_affine"
    for label, (scale, zero_point, lo, hi) in (
        ("uint8", (0.1, 3, 0, 255)),
        ("int8", (0.00214854861, 0, -128, 127)),
        ("int4", (0.37, -2, -8, 7)),
    ):
        x = np.concatenate([ties(scale, np.arange(lo - zero_point - 3, hi - zero_point + 3)), SPECIALS])
        cases.append(
            Case(
                f"{op}.{label}",
                op,
                "torch",
                f"quant range [{lo}, {hi}], scale {scale:.9g}, zero point {zero_point}: ties and specials",
                {"x": x, "scale": f32(scale), "zero_point": np.array(zero_point, np.int64)},
                {"quant_min": lo, "quant_max": hi},
            )
        )
    op = "torch.fake_quantize_per_channel_affine"
    scales = f32([0.1, 0.00214854861, 0.37])
    rows = [np.concatenate([ties(s, np.arange(-135, 135)), SPECIALS]) for s in scales]
    cases.append(
        Case(
            f"{op}.int8",
            op,
            "torch",
            "quant range [-128, 127], axis 0: ties and specials (+Inf -> quant_min)",
            {"x": np.stack(rows), "scale": scales, "zero_point": np.array([0, -7, 12], np.int64)},
            {"axis": 0, "quant_min": -128, "quant_max": 127},
        )
    )

    op = "torch.MinMaxObserver"
    rng = rng_for("torch.observer")
    data = f32(rng.standard_normal(1000) * 1.7 + 0.4)
    configurations = [
        ("quint8", "per_tensor_affine", False),
        ("quint8", "per_tensor_affine", True),
        ("qint8", "per_tensor_affine", False),
        ("qint8", "per_tensor_symmetric", False),
        ("qint8", "per_tensor_symmetric", True),
        ("quint8", "per_tensor_symmetric", False),
        ("qint32", "per_tensor_affine", False),
    ]
    for dtype, qscheme, reduce_range in configurations:
        label = f"{dtype}.{qscheme}" + (".reduce_range" if reduce_range else "")
        cases.append(
            Case(
                f"{op}.{label}",
                op,
                "torch",
                "calculate_qparams after one forward of random data",
                {"x": data},
                {"dtype": dtype, "qscheme": qscheme, "reduce_range": reduce_range},
            )
        )
    for label, x in (("all_zero", np.zeros(8, np.float32)), ("all_positive", f32(rng.uniform(0.5, 3, 100)))):
        cases.append(
            Case(
                f"{op}.quint8.per_tensor_affine.{label}",
                op,
                "torch",
                f"{label.replace('_', ' ')} input (all zero: scale = float32 eps)",
                {"x": x},
                {"dtype": "quint8", "qscheme": "per_tensor_affine", "reduce_range": False},
            )
        )
    return cases


def _tflite_cases() -> list[Case]:
    cases = []
    rng = rng_for("tflite")
    op = "tflite.QuantizeMultiplier"
    edge = [
        0.0,
        1.0,
        0.5,
        0.25,
        0.75,
        2.0,
        1.5,
        3.0,
        1e-10,
        1e-30,
        2.0**-31,
        2.0**-32,
        1 - 2.0**-33,
        1 - 2.0**-31,
        0.9999999999,
        1.0000000001,
        -0.5,
        -1.0,
        -0.3,
        1234.5678,
        2.0**30,
        2.0**31,
        2.0**40,
        4.6e-10,
    ]
    multipliers = np.concatenate([np.array(edge), np.exp(rng.uniform(-25, 12, 200))])
    for runtime, suffix in (("tflite", ""), ("tflite-single-rounding", ".single_rounding")):
        cases.append(
            Case(
                f"{op}.edges_and_random{suffix}",
                op,
                runtime,
                "exact powers of two, values that round up to 2^31, tiny values that flush to zero, "
                "negatives, large shifts, and log-uniform samples",
                {"real_multiplier": multipliers},
            )
        )
    op = "tflite.MultiplyByQuantizedMultiplier"
    pairs = [qtflite.quantize_multiplier(m) for m in (0.5, 0.3, 0.0013, 0.75, 3.05e-5, 1.7, 0.999)]
    x_values = np.concatenate(
        [
            np.arange(-2048, 2048),
            rng.integers(-(2**31), 2**31, 2000),
            [-(2**31), -(2**31) + 1, 2**31 - 1, 2**30, -(2**30)],
        ]
    ).astype(np.int64)
    grid_x, grid_pair = np.meshgrid(x_values, np.arange(len(pairs)), indexing="ij")
    inputs = {
        "x": grid_x.ravel().astype(np.int32),
        "quantized_multiplier": np.array([pairs[i][0] for i in grid_pair.ravel()], np.int32),
        "shift": np.array([pairs[i][1] for i in grid_pair.ravel()], np.int32),
    }
    for runtime, suffix in (("tflite", ".double_rounding"), ("tflite-single-rounding", ".single_rounding")):
        cases.append(
            Case(
                f"{op}{suffix}",
                op,
                runtime,
                "elementwise x * M for 7 multipliers (shifts -15..1) and x in -2048..2047, random int32 and "
                "the extremes; the default build rounds twice (up to 0.75 LSB off), single rounding once",
                inputs,
            )
        )
    op = "tflite.Quantize"
    for dtype, scale, zero_point, lo, hi in (
        ("int8", 0.1, -3, -128, 127),
        ("uint8", 0.1, 3, 0, 255),
        ("int16", 1 / 3, 0, -32768, 32767),
    ):
        ks = code_range_ks(lo, hi, zero_point, f"tflite.{dtype}")
        cases.append(
            Case(
                f"{op}.{dtype}",
                op,
                "tflite",
                f"{dtype}, scale {scale:.9g}, zero point {zero_point}: ties (half away from zero), specials",
                {
                    "x": np.concatenate([ties(scale, ks), SPECIALS]),
                    "scale": f32(scale),
                    "zero_point": np.array(zero_point, np.int32),
                },
                {"dtype": dtype},
            )
        )
    fc_scales = f32(rng.uniform(0.002, 0.02, 8))
    fc_multiplier, fc_shift = qtflite.per_channel_multipliers(0.05, fc_scales, 0.1)
    fc = {
        "x": ints(rng, -128, 128, (4, 16), np.int8),
        "filters": ints(rng, -127, 128, (8, 16), np.int8),
        "bias": ints(rng, -3000, 3000, 8, np.int32),
        "output_multiplier": fc_multiplier,
        "output_shift": fc_shift,
    }
    conv_scales = f32(rng.uniform(0.002, 0.02, 6))
    conv_multiplier, conv_shift = qtflite.per_channel_multipliers(0.031, conv_scales, 0.047)
    conv = {
        "x": ints(rng, -128, 128, (1, 7, 7, 4), np.int8),
        "filters": ints(rng, -127, 128, (6, 3, 3, 4), np.int8),
        "bias": ints(rng, -3000, 3000, 6, np.int32),
        "output_multiplier": conv_multiplier,
        "output_shift": conv_shift,
    }
    grouped_multiplier, grouped_shift = qtflite.per_channel_multipliers(0.031, conv_scales[:4], 0.047)
    grouped = {
        "x": ints(rng, -128, 128, (1, 8, 8, 4), np.int8),
        "filters": ints(rng, -127, 128, (4, 3, 3, 2), np.int8),
        "bias": None,
        "output_multiplier": grouped_multiplier,
        "output_shift": grouped_shift,
    }
    for runtime, suffix in (("tflite", ""), ("tflite-single-rounding", ".single_rounding")):
        cases.append(
            Case(
                f"tflite.FullyConnected.per_channel{suffix}",
                "tflite.FullyConnected",
                runtime,
                "int8 per-channel fully connected, int32 bias, multipliers from scales 0.05 / w / 0.1",
                fc,
                {"input_zero_point": -4, "output_zero_point": 6, "activation_min": -128, "activation_max": 127},
            )
        )
        cases.append(
            Case(
                f"tflite.FullyConnected.relu{suffix}",
                "tflite.FullyConnected",
                runtime,
                "as above with a fused ReLU (activation_min = output zero point)",
                fc,
                {"input_zero_point": -4, "output_zero_point": 6, "activation_min": 6, "activation_max": 127},
            )
        )
        cases.append(
            Case(
                f"tflite.Conv2D.same_stride2{suffix}",
                "tflite.Conv2D",
                runtime,
                "int8 per-channel conv, NHWC/OHWI, SAME padding (extra pixel bottom/right), stride 2",
                conv,
                {
                    "input_zero_point": 3,
                    "output_zero_point": -2,
                    "strides": [2, 2],
                    "padding": "SAME",
                    "dilations": [1, 1],
                    "activation_min": -128,
                    "activation_max": 127,
                },
            )
        )
        cases.append(
            Case(
                f"tflite.Conv2D.grouped_dilated{suffix}",
                "tflite.Conv2D",
                runtime,
                "grouped (2 groups) dilated conv, explicit padding ((1, 0), (0, 2)), no bias",
                {k: v for k, v in grouped.items() if v is not None},
                {
                    "input_zero_point": -1,
                    "output_zero_point": 0,
                    "strides": [1, 1],
                    "padding": [[1, 0], [0, 2]],
                    "dilations": [2, 2],
                    "activation_min": -128,
                    "activation_max": 127,
                },
            )
        )
    return cases
