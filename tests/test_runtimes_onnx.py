"""quantref.runtimes.onnx against live onnxruntime (CPU EP) and onnx.reference.ReferenceEvaluator.

Every comparison is exact: integer outputs by value, float8 outputs by bit pattern, float outputs by bit pattern
with any NaN equal to any NaN. Each single-node model is built with onnx.helper and run as a real runtime would.
"""

from __future__ import annotations

import ctypes

import jax
import ml_dtypes
import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the ONNX cross-checks need the conformance extra (onnx)")
ort = pytest.importorskip("onnxruntime", reason="the ONNX cross-checks need the conformance extra (onnxruntime)")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

from quantref.runtimes import onnx as qonnx  # noqa: E402

INT_DTYPES = [
    np.dtype(d)
    for d in (np.int8, np.uint8, np.int16, np.uint16, ml_dtypes.int4, ml_dtypes.uint4, ml_dtypes.int2, ml_dtypes.uint2)
]
FLOAT8_DTYPES = [
    np.dtype(d)
    for d in (ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e4m3fnuz, ml_dtypes.float8_e5m2, ml_dtypes.float8_e5m2fnuz)
]
SUB_BYTE = {np.dtype(d) for d in (ml_dtypes.int4, ml_dtypes.uint4, ml_dtypes.int2, ml_dtypes.uint2)}
TENSOR_TYPE = {
    np.dtype(dtype): helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    for dtype in INT_DTYPES + FLOAT8_DTYPES + [np.dtype(np.float32), np.dtype(np.int32), np.dtype(np.float16)]
}


# ------------------------------------------------------------------------------------------------------------------
# Running one node in onnxruntime and in the reference evaluator


def opset_for(dtype: np.dtype) -> int:
    """int2/uint2 need opset 25; blocked quantization, int4 and output_dtype need 21."""
    return 25 if dtype in {np.dtype(ml_dtypes.int2), np.dtype(ml_dtypes.uint2)} else 21


def build(op, inputs, outputs, attrs=None, constants=(), opset=21, widen=True):
    """A one-node model. ``inputs``: list of (name, array|None); ``outputs``: list of (name, dtype).

    ``widen``: append a Cast to int8 after sub-byte outputs (onnxruntime's Python API cannot return packed types).
    """
    initializers, graph_inputs, feeds = [], [], {}
    for name, value in inputs:
        if value is None:
            continue
        value = np.asarray(value)
        if name in constants:
            initializers.append(numpy_helper.from_array(value, name))
        else:
            graph_inputs.append(helper.make_tensor_value_info(name, TENSOR_TYPE[value.dtype], list(value.shape)))
            feeds[name] = value
    nodes = [
        helper.make_node(
            op,
            [name if value is not None else "" for name, value in inputs],
            [name for name, _ in outputs],
            **(attrs or {}),
        )
    ]
    graph_outputs = []
    for name, dtype in outputs:
        if widen and np.dtype(dtype) in SUB_BYTE:
            nodes.append(helper.make_node("Cast", [name], [name + "_int8"], to=TensorProto.INT8))
            graph_outputs.append(helper.make_tensor_value_info(name + "_int8", TensorProto.INT8, None))
        else:
            graph_outputs.append(helper.make_tensor_value_info(name, TENSOR_TYPE[np.dtype(dtype)], None))
    graph = helper.make_graph(nodes, "node", graph_inputs, graph_outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 11 if opset < 25 else 12
    return model, feeds


def run_ort(op, inputs, outputs, attrs=None, constants=(), opset=21):
    """Run in onnxruntime; float8 outputs are read back as raw bytes (the Python API has no numpy type for them)."""
    model, feeds = build(op, inputs, outputs, attrs, constants, opset)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    binding = session.io_binding()
    for name, value in feeds.items():
        binding.bind_cpu_input(name, value)
    for output in session.get_outputs():
        binding.bind_output(output.name, "cpu")
    session.run_with_iobinding(binding)
    results = []
    for value, (_, dtype) in zip(binding.get_outputs(), outputs):
        dtype = np.dtype(np.int8) if np.dtype(dtype) in SUB_BYTE else np.dtype(dtype)
        shape = tuple(value.shape())
        count = int(np.prod(shape)) * dtype.itemsize
        raw = bytes((ctypes.c_uint8 * count).from_address(value.data_ptr())) if count else b""
        results.append(np.frombuffer(raw, dtype).reshape(shape).copy())
    return results


def run_ref(op, inputs, outputs, attrs=None, constants=(), opset=21):
    model, feeds = build(op, inputs, outputs, attrs, constants, opset, widen=False)
    with np.errstate(all="ignore"):
        return [np.asarray(r) for r in ReferenceEvaluator(model).run(None, feeds)]


def as_bits(value) -> np.ndarray:
    """Integers as int64; float8 as their bit patterns."""
    value = np.asarray(value)
    if value.dtype in FLOAT8_DTYPES:
        return value.view(np.uint8).astype(np.int64)
    return value.astype(np.int64)


def assert_same(actual, expected, x=None, label=""):
    """Exact equality of quantized outputs (integers or float8 bit patterns), with a readable report."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    if expected.dtype == np.int8 and actual.dtype in SUB_BYTE:
        actual = actual.astype(np.int8)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    if actual.dtype in FLOAT8_DTYPES or expected.dtype in FLOAT8_DTYPES:
        a = np.asarray(actual).view(np.uint8) if actual.dtype in FLOAT8_DTYPES else actual.astype(np.uint8)
        e = np.asarray(expected).view(np.uint8) if expected.dtype in FLOAT8_DTYPES else expected.astype(np.uint8)
    else:
        a, e = actual.astype(np.int64), expected.astype(np.int64)
    bad = np.flatnonzero(a.ravel() != e.ravel())
    if bad.size:
        where = bad[:8]
        inputs = "" if x is None else f" x={np.asarray(x).ravel()[where].tolist()}"
        pytest.fail(
            f"{label}: {bad.size} of {a.size} differ; at {where.tolist()}:{inputs} "
            f"quantref={a.ravel()[where].tolist()} runtime={e.ravel()[where].tolist()}"
        )


def assert_same_float(actual, expected, label=""):
    """float32 bit patterns equal, any NaN equal to any NaN."""
    actual, expected = np.asarray(actual, np.float32), np.asarray(expected, np.float32)
    both_nan = np.isnan(actual) & np.isnan(expected)
    bad = np.flatnonzero(~both_nan.ravel() & (actual.view(np.uint32).ravel() != expected.view(np.uint32).ravel()))
    if bad.size:
        where = bad[:8]
        pytest.fail(
            f"{label}: {bad.size} of {actual.size} differ; at {where.tolist()}: "
            f"quantref={actual.ravel()[where].tolist()} runtime={expected.ravel()[where].tolist()}"
        )


def quantize_node(x, scale, zero_point, out_dtype, runner, *, axis=1, block_size=0, saturate=True):
    attrs = {"axis": axis}
    if block_size:
        attrs["block_size"] = block_size
    if out_dtype in FLOAT8_DTYPES:
        attrs["saturate"] = int(saturate)
    inputs = [("x", x), ("s", scale), ("z", zero_point)]
    return runner(
        "QuantizeLinear", inputs, [("y", out_dtype)], attrs, constants=("s", "z"), opset=opset_for(out_dtype)
    )[0]


# ------------------------------------------------------------------------------------------------------------------
# Inputs


def tie_inputs(scale: np.float32, span: int, rng: np.random.Generator, extra: int = 2000) -> np.ndarray:
    """Ties x = (k + 1/2)·s, their float32 neighbours, values on the grid, specials and random values."""
    k = np.arange(-span, span + 1, dtype=np.float64)
    ties = ((k + 0.5) * np.float64(scale)).astype(np.float32)
    on_grid = (k * np.float64(scale)).astype(np.float32)
    specials = np.array(
        [
            0.0,
            -0.0,
            np.inf,
            -np.inf,
            np.nan,
            -np.nan,
            1e30,
            -1e30,
            3e9,
            -3e9,
            2.2e9,
            -2.2e9,
            2147483520.0,
            -2147483648.0,
            1e-45,
            -1e-45,
            3.4e38,
            -3.4e38,
        ],
        np.float32,
    )
    random = (rng.standard_normal(extra) * span * scale).astype(np.float32)
    return np.concatenate(
        [
            ties,
            np.nextafter(ties, np.float32(np.inf)),
            np.nextafter(ties, np.float32(-np.inf)),
            on_grid,
            specials,
            specials * scale,
            random,
        ]
    ).astype(np.float32)


def int_range(dtype: np.dtype) -> tuple[int, int]:
    info = ml_dtypes.iinfo(dtype) if dtype in SUB_BYTE else np.iinfo(dtype)
    return int(info.min), int(info.max)


def random_scales(rng, shape, low=1e-3, high=2.0):
    return np.exp(rng.uniform(np.log(low), np.log(high), shape)).astype(np.float32)


FLAVOR_RUNNERS = [("onnxruntime", run_ort), ("reference", run_ref)]


# ------------------------------------------------------------------------------------------------------------------
# QuantizeLinear


@pytest.mark.parametrize("flavor,runner", FLAVOR_RUNNERS, ids=["ort", "ref"])
@pytest.mark.parametrize("dtype", INT_DTYPES, ids=str)
def test_quantize_linear_int_ties_saturation_and_specials(dtype, flavor, runner):
    rng = np.random.default_rng(0)
    qmin, qmax = int_range(dtype)
    span = min(2 * (qmax - qmin), 3000)
    for scale in (np.float32(0.37), np.float32(1.0), np.float32(0.0123), np.nextafter(np.float32(0.1), 1)):
        x = tie_inputs(scale, span, rng)
        for zero in sorted({qmin, (qmin + qmax) // 2 + 1, qmax, 0, 1}):
            zero_point = np.array(zero, dtype)
            expected = quantize_node(x, scale, zero_point, dtype, runner)
            actual = qonnx.quantize_linear(x, scale, zero_point, flavor=flavor)
            assert np.asarray(actual).dtype == dtype
            assert_same(actual, expected, x, f"{dtype} s={scale} z={zero}")


@pytest.mark.parametrize("flavor,runner", FLAVOR_RUNNERS, ids=["ort", "ref"])
@pytest.mark.parametrize("dtype", INT_DTYPES, ids=str)
def test_quantize_linear_int_fuzz_per_axis_and_blocked(dtype, flavor, runner):
    """3·10^4 random elements per dtype and granularity (1.5·10^5 per dtype), random scales and zero points."""
    rng = np.random.default_rng(1)
    qmin, qmax = int_range(dtype)
    x = (rng.standard_normal((6, 50, 100)) * rng.choice([0.01, 1, 100, 1e4], (6, 50, 1))).astype(np.float32)
    x.ravel()[rng.choice(x.size, 50, replace=False)] = np.array([np.nan, np.inf, -np.inf, 1e20, -1e20] * 10)
    cases = [
        dict(scale=random_scales(rng, ()), axis=1, block_size=0),
        dict(scale=random_scales(rng, (50,)), axis=1, block_size=0),
        dict(scale=random_scales(rng, (100,)), axis=-1, block_size=0),
        dict(scale=random_scales(rng, (6, 50, 15)), axis=2, block_size=7),  # ragged: 100 = 14·7 + 2
        dict(scale=random_scales(rng, (2, 50, 100)), axis=-3, block_size=4),  # ragged: 6 = 4 + 2
    ]
    for case in cases:
        zero_point = rng.integers(qmin, qmax + 1, case["scale"].shape).astype(dtype)
        expected = quantize_node(
            x, case["scale"], zero_point, dtype, runner, axis=case["axis"], block_size=case["block_size"]
        )
        actual = qonnx.quantize_linear(
            x, case["scale"], zero_point, axis=case["axis"], block_size=case["block_size"], flavor=flavor
        )
        assert_same(actual, expected, x, f"{dtype} axis={case['axis']} block={case['block_size']}")


def float8_inputs(dtype: np.dtype, rng: np.random.Generator) -> np.ndarray:
    """Every float8 value, every midpoint and its float32 neighbours, a dense sweep around the top, specials."""
    codes = np.arange(256, dtype=np.uint8).view(dtype).astype(np.float32)
    finite = np.unique(codes[np.isfinite(codes)])
    mids = ((finite[1:].astype(np.float64) + finite[:-1]) / 2).astype(np.float32)
    top = float(ml_dtypes.finfo(dtype).max)
    sweep = np.linspace(0.9 * top, 1.4 * top, 4001, dtype=np.float32)
    specials = np.array([np.inf, -np.inf, np.nan, -np.nan, 0.0, -0.0, 1e-30, -1e-30, 1e30, -1e30], np.float32)
    random = (rng.standard_normal(5000) * rng.choice([1e-3, 1, top / 4], 5000)).astype(np.float32)
    core = np.concatenate(
        [finite, mids, np.nextafter(mids, np.float32(np.inf)), np.nextafter(mids, np.float32(-np.inf)), sweep]
    )
    return np.concatenate([core, -core, specials, random]).astype(np.float32)


@pytest.mark.parametrize("flavor,runner", FLAVOR_RUNNERS, ids=["ort", "ref"])
@pytest.mark.parametrize("saturate", [True, False], ids=["sat", "nosat"])
@pytest.mark.parametrize("dtype", FLOAT8_DTYPES, ids=str)
def test_quantize_linear_float8_bit_exact(dtype, saturate, flavor, runner):
    rng = np.random.default_rng(2)
    x = float8_inputs(dtype, rng)
    zero_point = np.array(0, dtype)
    for scale in (np.float32(1.0), np.float32(0.75)):
        expected = quantize_node(x, scale, zero_point, dtype, runner, saturate=saturate)
        actual = qonnx.quantize_linear(x, scale, zero_point, saturate=saturate, flavor=flavor)
        assert np.asarray(actual).dtype == dtype
        assert_same(actual, expected, x, f"{dtype} saturate={saturate} s={scale}")
    # Per-axis and blocked float8 (output type from output_dtype, no zero point input).
    x = x[: 20 * 500].reshape(20, 500)
    for scale, axis, block in ((random_scales(rng, (500,), 1e-2, 4), -1, 0), (random_scales(rng, (20, 63)), 1, 8)):
        attrs = {"axis": axis, "saturate": int(saturate), "output_dtype": TENSOR_TYPE[dtype]}
        if block:
            attrs["block_size"] = block
        expected = runner("QuantizeLinear", [("x", x), ("s", scale)], [("y", dtype)], attrs, constants=("s",))[0]
        actual = qonnx.quantize_linear(
            x, scale, axis=axis, block_size=block, saturate=saturate, output_dtype=dtype, flavor=flavor
        )
        assert_same(actual, expected, x, f"{dtype} axis={axis} block={block}")


def test_quantize_linear_output_dtype_and_default_uint8():
    x = np.linspace(-300, 300, 1001, dtype=np.float32)
    for dtype in (np.dtype(np.int16), np.dtype(ml_dtypes.int4), np.dtype(ml_dtypes.float8_e5m2)):
        attrs = {"output_dtype": TENSOR_TYPE[dtype]}
        expected = run_ort(
            "QuantizeLinear", [("x", x), ("s", np.float32(0.3))], [("y", dtype)], attrs, constants=("s",)
        )[0]
        actual = qonnx.quantize_linear(x, np.float32(0.3), output_dtype=dtype)
        assert np.asarray(actual).dtype == dtype
        assert_same(actual, expected, x, str(dtype))
    assert np.asarray(qonnx.quantize_linear(x, np.float32(0.3), output_dtype="int4")).dtype == ml_dtypes.int4
    expected = run_ort("QuantizeLinear", [("x", x), ("s", np.float32(0.3))], [("y", np.uint8)], constants=("s",))[0]
    assert_same(qonnx.quantize_linear(x, np.float32(0.3)), expected, x, "default uint8")


def test_quantize_linear_jit_matches_eager():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((8, 1000)) * 50).astype(np.float32)
    scale = random_scales(rng, (1000,))
    zero_point = rng.integers(-128, 128, (1000,)).astype(np.int8)
    eager = qonnx.quantize_linear(x, scale, zero_point, axis=-1)
    jitted = jax.jit(lambda x, s, z: qonnx.quantize_linear(x, s, z, axis=-1))(x, scale, zero_point)
    np.testing.assert_array_equal(np.asarray(eager), np.asarray(jitted))
    expected = quantize_node(x, scale, zero_point, np.dtype(np.int8), run_ort, axis=-1)
    assert_same(jitted, expected, x, "jit")


# ------------------------------------------------------------------------------------------------------------------
# DequantizeLinear


@pytest.mark.parametrize("dtype", INT_DTYPES + [np.dtype(np.int32)] + FLOAT8_DTYPES, ids=str)
def test_dequantize_linear_matches_onnxruntime(dtype):
    rng = np.random.default_rng(4)
    if dtype in FLOAT8_DTYPES:
        x = rng.integers(0, 256, (10, 40, 100), dtype=np.uint8).view(dtype)
        zero = lambda shape: np.zeros(shape, dtype)  # noqa: E731
    else:
        qmin, qmax = int_range(dtype) if dtype != np.int32 else (-(2**31), 2**31 - 1)
        x = rng.integers(qmin, qmax, (10, 40, 100), endpoint=True, dtype=np.int64).astype(dtype)
        x.ravel()[:4] = np.array([qmin, qmax, qmin, qmax]).astype(dtype)
        zero = lambda shape: rng.integers(qmin, qmax, shape, endpoint=True, dtype=np.int64).astype(dtype)  # noqa: E731
    runner_inputs = []
    for scale, axis, block in (
        (random_scales(rng, ()), 1, 0),
        (random_scales(rng, (40,)), 1, 0),
        (random_scales(rng, (100,)), -1, 0),
        (random_scales(rng, (10, 40, 15)), 2, 7),
    ):
        zero_point = zero(scale.shape)
        attrs = {"axis": axis, **({"block_size": block} if block else {})}
        inputs = [("x", x), ("s", scale), ("z", zero_point)]
        # onnxruntime's Python API cannot feed packed or float8 arrays: pass those as an initializer.
        constants = ("s", "z", "x") if dtype in SUB_BYTE or dtype in FLOAT8_DTYPES else ("s", "z")
        expected = run_ort(
            "DequantizeLinear", inputs, [("y", np.float32)], attrs, constants=constants, opset=opset_for(dtype)
        )[0]
        actual = qonnx.dequantize_linear(x, scale, zero_point, axis=axis, block_size=block)
        assert np.asarray(actual).dtype == np.float32
        assert_same_float(actual, expected, f"{dtype} axis={axis} block={block}")
        runner_inputs.append((inputs, attrs, actual))
    if dtype != np.int32:  # the reference evaluator agrees everywhere except int32 (see the disagreement tests)
        for inputs, attrs, actual in runner_inputs:
            expected = run_ref(
                "DequantizeLinear", inputs, [("y", np.float32)], attrs, constants=("s", "z"), opset=opset_for(dtype)
            )[0]
            assert_same_float(actual, expected, f"{dtype} reference")


# ------------------------------------------------------------------------------------------------------------------
# DynamicQuantizeLinear

DYNAMIC_OUTPUTS = [("y", np.uint8), ("s", np.float32), ("z", np.uint8)]


def check_dynamic(x, flavor, runner):
    expected = runner("DynamicQuantizeLinear", [("x", x)], DYNAMIC_OUTPUTS, opset=11)
    y, scale, zero_point = qonnx.dynamic_quantize_linear(x, flavor=flavor)
    assert_same(y, expected[0], x, "y")
    assert_same_float(scale, expected[1], "y_scale")
    assert_same(zero_point, expected[2], None, "y_zero_point")


@pytest.mark.parametrize("flavor,runner", FLAVOR_RUNNERS, ids=["ort", "ref"])
def test_dynamic_quantize_linear(flavor, runner):
    rng = np.random.default_rng(5)
    for _ in range(20):  # 20 × 5000 = 10^5 elements, varied ranges and offsets
        x = (rng.standard_normal(5000) * rng.choice([1e-3, 1, 1e3]) + rng.choice([-5, 0, 5])).astype(np.float32)
        check_dynamic(x, flavor, runner)
    for x in (
        np.zeros(7, np.float32),
        np.full(7, 3.0, np.float32),
        np.full(7, -3.0, np.float32),
        np.array([1.0, np.inf, -2.0], np.float32),
        np.array([1.0, -np.inf, 2.0], np.float32),
        np.array([-0.0, 0.0, 0.0], np.float32),
    ):
        check_dynamic(x, flavor, runner)
    # NaN: in the reference, everywhere; in onnxruntime, at a position where its SIMD min/max skips it.
    x = np.linspace(-1, 2, 100, dtype=np.float32)
    x[1] = np.nan
    check_dynamic(x, flavor, runner)


# ------------------------------------------------------------------------------------------------------------------
# MatMulInteger / ConvInteger


@pytest.mark.parametrize("flavor,runner", FLAVOR_RUNNERS, ids=["ort", "ref"])
@pytest.mark.parametrize("a_dtype,b_dtype", [(np.uint8, np.int8), (np.uint8, np.uint8), (np.int8, np.int8)])
def test_matmul_integer(a_dtype, b_dtype, flavor, runner):
    rng = np.random.default_rng(6)
    info_a, info_b = np.iinfo(a_dtype), np.iinfo(b_dtype)
    a = rng.integers(info_a.min, info_a.max, (2, 150, 64), endpoint=True).astype(a_dtype)
    b = rng.integers(info_b.min, info_b.max, (64, 340), endpoint=True).astype(b_dtype)  # 2·150·340 > 10^5 outputs
    for a_zp, b_zp in (
        (a_dtype(7), b_dtype(3)),
        (None, None),
        (a_dtype(info_a.max), rng.integers(info_b.min, info_b.max, (340,)).astype(b_dtype)),
    ):
        inputs = [
            ("a", a),
            ("b", b),
            ("za", None if a_zp is None else np.asarray(a_zp)),
            ("zb", None if b_zp is None else np.asarray(b_zp)),
        ]
        expected = runner("MatMulInteger", inputs, [("y", np.int32)], constants=("za", "zb"), opset=10)[0]
        np.testing.assert_array_equal(np.asarray(qonnx.matmul_integer(a, b, a_zp, b_zp)), expected)


CONV_CASES = [
    dict(strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), group=1),
    dict(strides=(2, 1), pads=(1, 2, 0, 1), dilations=(1, 1), group=1),
    dict(strides=(1, 2), pads=(1, 1, 1, 1), dilations=(2, 1), group=2),
    dict(strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), group=8),  # depthwise
]


def conv_attrs(case, w_shape):
    return {
        "strides": list(case["strides"]),
        "pads": list(case["pads"]),
        "dilations": list(case["dilations"]),
        "group": case["group"],
        "kernel_shape": list(w_shape[2:]),
    }


@pytest.mark.parametrize("flavor,runner", FLAVOR_RUNNERS, ids=["ort", "ref"])
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"s{c['strides']}p{c['pads']}d{c['dilations']}g{c['group']}")
def test_conv_integer(case, flavor, runner):
    rng = np.random.default_rng(7)
    group = case["group"]
    x = rng.integers(0, 256, (2, 8, 24, 24)).astype(np.uint8)
    w = rng.integers(0, 256, (8, 8 // group, 3, 3)).astype(np.uint8)
    for x_zp, w_zp in ((np.uint8(131), np.uint8(120)), (None, None)):
        inputs = [
            ("x", x),
            ("w", w),
            ("zx", None if x_zp is None else np.asarray(x_zp)),
            ("zw", None if w_zp is None else np.asarray(w_zp)),
        ]
        expected = runner(
            "ConvInteger", inputs, [("y", np.int32)], conv_attrs(case, w.shape), constants=("w", "zx", "zw"), opset=10
        )[0]
        actual = qonnx.conv_integer(
            x, w, x_zp, w_zp, strides=case["strides"], pads=case["pads"], dilations=case["dilations"], group=group
        )
        np.testing.assert_array_equal(np.asarray(actual), expected)


# ------------------------------------------------------------------------------------------------------------------
# QLinearMatMul / QLinearConv


def qlinear_matmul_node(runner, a, sa, za, b, sb, zb, sy, zy, constants=("sa", "za", "b", "sb", "zb", "sy", "zy")):
    inputs = [
        ("a", a),
        ("sa", np.asarray(sa)),
        ("za", np.asarray(za)),
        ("b", b),
        ("sb", np.asarray(sb)),
        ("zb", np.asarray(zb)),
        ("sy", np.asarray(sy)),
        ("zy", np.asarray(zy)),
    ]
    return runner("QLinearMatMul", inputs, [("y", np.asarray(zy).dtype)], constants=constants, opset=21)[0]


@pytest.mark.parametrize("flavor,runner", FLAVOR_RUNNERS, ids=["ort", "ref"])
@pytest.mark.parametrize(
    "a_dtype,b_dtype,y_dtype",
    [(np.uint8, np.int8, np.uint8), (np.int8, np.int8, np.int8), (np.uint8, np.uint8, np.uint8)],
)
def test_qlinear_matmul_fuzz(a_dtype, b_dtype, y_dtype, flavor, runner):
    rng = np.random.default_rng(8)
    info_a, info_b, info_y = np.iinfo(a_dtype), np.iinfo(b_dtype), np.iinfo(y_dtype)
    for k, constants in ((64, ("sa", "za", "b", "sb", "zb", "sy", "zy")), (200, ("sa", "za", "sb", "zb", "sy", "zy"))):
        a = rng.integers(info_a.min, info_a.max, (300, k), endpoint=True).astype(a_dtype)
        b = rng.integers(info_b.min, info_b.max, (k, 400), endpoint=True).astype(b_dtype)  # 1.2·10^5 outputs
        sa, sb = random_scales(rng, (), 1e-3, 0.1), random_scales(rng, (), 1e-3, 0.1)
        sy = np.float32(sa * sb * np.sqrt(k) * 40 * rng.uniform(0.5, 2))  # outputs span the whole grid
        za, zb, zy = (
            np.asarray(rng.integers(i.min, i.max, endpoint=True)).astype(d)
            for i, d in ((info_a, a_dtype), (info_b, b_dtype), (info_y, y_dtype))
        )
        expected = qlinear_matmul_node(runner, a, sa, za, b, sb, zb, sy, zy, constants)
        actual = qonnx.qlinear_matmul(a, sa, za, b, sb, zb, sy, zy, flavor=flavor)
        assert_same(actual, expected, None, f"k={k}")


@pytest.mark.parametrize("flavor,runner", FLAVOR_RUNNERS, ids=["ort", "ref"])
def test_qlinear_matmul_ties(flavor, runner):
    """Every accumulator value −2^12..2^12 with M = 1/2, 1/4, 3/8: exact ties, odd and even zero points."""
    acc_values = np.arange(-(2**12), 2**12, dtype=np.int32)
    # acc = Σ_k (a_k − 128)·1: split acc + 128·K greedily over K uint8 columns of a; b is a column of ones.
    k = 40
    a = np.zeros((acc_values.size, k), np.int64)
    remaining = acc_values.astype(np.int64) + 128 * k
    for column in range(k):
        a[:, column] = np.minimum(remaining, 255)
        remaining -= a[:, column]
    assert np.all(remaining == 0)
    a = a.astype(np.uint8)
    b = np.ones((k, 1), np.int8)
    for sa, sb, sy in ((0.5, 1.0, 1.0), (0.375, 1.0, 1.0), (0.1, 0.2, 0.3), (1.0, 1.0, 255.0)):
        for zy in (np.uint8(0), np.uint8(127), np.uint8(255)):
            args = (a, np.float32(sa), np.uint8(128), b, np.float32(sb), np.int8(0), np.float32(sy), zy)
            expected = qlinear_matmul_node(runner, *args)
            assert_same(qonnx.qlinear_matmul(*args, flavor=flavor), expected, None, f"s={sa, sb, sy} zy={zy}")


@pytest.mark.parametrize("flavor,runner", FLAVOR_RUNNERS, ids=["ort", "ref"])
def test_qlinear_matmul_per_column_b(flavor, runner):
    rng = np.random.default_rng(9)
    a = rng.integers(0, 256, (64, 96)).astype(np.uint8)
    b = rng.integers(-128, 128, (96, 48)).astype(np.int8)
    sb = random_scales(rng, (48,), 1e-3, 0.05)
    zb = np.zeros(48, np.int8)
    args = (a, np.float32(0.02), np.uint8(120), b, sb, zb, np.float32(0.5), np.uint8(128))
    expected = qlinear_matmul_node(runner, *args)
    assert_same(qonnx.qlinear_matmul(*args, flavor=flavor), expected, None, "per-column")


def qlinear_conv_node(runner, x, sx, zx, w, sw, zw, sy, zy, bias, case, w_constant=True):
    inputs = [
        ("x", x),
        ("sx", np.asarray(sx)),
        ("zx", np.asarray(zx)),
        ("w", w),
        ("sw", np.asarray(sw)),
        ("zw", np.asarray(zw)),
        ("sy", np.asarray(sy)),
        ("zy", np.asarray(zy)),
        ("bias", bias),
    ]
    constants = ("sx", "zx", "sw", "zw", "sy", "zy", "bias") + (("w",) if w_constant else ())
    return runner(
        "QLinearConv", inputs, [("y", np.asarray(zy).dtype)], conv_attrs(case, w.shape), constants=constants, opset=10
    )[0]


@pytest.mark.parametrize("flavor,runner", FLAVOR_RUNNERS, ids=["ort", "ref"])
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"s{c['strides']}p{c['pads']}d{c['dilations']}g{c['group']}")
@pytest.mark.parametrize("x_dtype,y_dtype", [(np.uint8, np.uint8), (np.int8, np.int8)])
def test_qlinear_conv_fuzz_per_channel(x_dtype, y_dtype, case, flavor, runner):
    """Per-output-channel w_scale, int32 bias, ≥ 10^5 outputs per case, weights as an initializer and as an input."""
    rng = np.random.default_rng(10)
    group = case["group"]
    info_x, info_y = np.iinfo(x_dtype), np.iinfo(y_dtype)
    x = rng.integers(info_x.min, info_x.max, (4, 8, 80, 80), endpoint=True).astype(x_dtype)
    w = rng.integers(-128, 128, (8, 8 // group, 3, 3)).astype(np.int8)
    sx = np.float32(0.05)
    sw = random_scales(rng, (8,), 1e-3, 0.05)
    sy = np.float32(np.median(sx * sw) * np.sqrt(72 // group) * 60)
    bias = rng.integers(-5000, 5000, (8,)).astype(np.int32)
    zx = np.asarray(rng.integers(info_x.min, info_x.max, endpoint=True)).astype(x_dtype)
    zy = np.asarray(rng.integers(info_y.min, info_y.max, endpoint=True)).astype(y_dtype)
    kwargs = dict(strides=case["strides"], pads=case["pads"], dilations=case["dilations"], group=group)
    actual = qonnx.qlinear_conv(x, sx, zx, w, sw, np.int8(0), sy, zy, bias, flavor=flavor, **kwargs)
    assert np.asarray(actual).size >= 10**5 or case["strides"] != (1, 1)
    for w_constant in (True, False) if runner is run_ort else (True,):
        expected = qlinear_conv_node(runner, x, sx, zx, w, sw, np.int8(0), sy, zy, bias, case, w_constant)
        assert_same(actual, expected, None, f"w_constant={w_constant}")


@pytest.mark.parametrize("flavor,runner", FLAVOR_RUNNERS, ids=["ort", "ref"])
def test_qlinear_conv_ties(flavor, runner):
    """1×1 conv with w = 1 and M = 1/2: every accumulator is hit, half of them are exact ties."""
    x = np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16)
    w = np.ones((1, 1, 1, 1), np.int8)
    case = dict(strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), group=1)
    for bias in (np.array([0], np.int32), np.array([-255], np.int32), np.array([1001], np.int32)):
        for zy in (np.uint8(0), np.uint8(127), np.uint8(128)):
            args = (x, np.float32(0.5), np.uint8(0), w, np.float32(1.0), np.int8(0), np.float32(1.0), zy, bias)
            expected = qlinear_conv_node(runner, *args, case)
            assert_same(qonnx.qlinear_conv(*args, flavor=flavor), expected, None, f"bias={bias} zy={zy}")


# ------------------------------------------------------------------------------------------------------------------
# Where onnxruntime and the reference evaluator disagree: each case shown by running both. If one of these starts
# failing, a runtime changed — update the flavor and the conformance page.


def both(op, inputs, outputs, attrs=None, constants=(), opset=21):
    return (
        run_ort(op, inputs, outputs, attrs, constants, opset)[0],
        run_ref(op, inputs, outputs, attrs, constants, opset)[0],
    )


DISAGREEMENTS = {
    # name: (x, scale, zero point, saturate, onnxruntime's answer, reference's answer)
    "int8 +Inf": (np.inf, 1.0, np.int8(0), True, 127, -128),
    "int8 3e9 (beyond int32)": (3e9, 1.0, np.int8(0), True, 127, -128),
    "int8 NaN, zero point -5 (int32 add wraps)": (np.nan, 1.0, np.int8(-5), True, -128, 127),
    "int8 -Inf, zero point -5": (-np.inf, 1.0, np.int8(-5), True, -128, 127),
    "uint16 2147483520 + 1000 wraps": (2147483520.0, 1.0, np.uint16(1000), True, 65535, 0),
    "uint8 +Inf": (np.inf, 1.0, np.uint8(0), True, 255, 0),
    "int4 +Inf": (np.inf, 1.0, np.array(0, ml_dtypes.int4), True, 7, -8),
    "float8_e4m3fn 480, saturate=0": (480.0, 1.0, np.array(0, ml_dtypes.float8_e4m3fn), False, 0x7E, 0x7F),
    "float8_e5m2 61440, saturate=0": (61440.0, 1.0, np.array(0, ml_dtypes.float8_e5m2), False, 0x7F, 0x7C),
    "float8_e5m2 NaN code": (np.nan, 1.0, np.array(0, ml_dtypes.float8_e5m2), True, 0x7F, 0x7E),
}


@pytest.mark.parametrize("name", list(DISAGREEMENTS))
def test_disagreement_quantize_linear(name):
    x, scale, zero_point, saturate, ort_answer, ref_answer = DISAGREEMENTS[name]
    x, zero_point = np.array([x], np.float32), np.asarray(zero_point)
    ort_out, ref_out = (
        quantize_node(x, np.float32(scale), zero_point, zero_point.dtype, runner, saturate=saturate)
        for runner in (run_ort, run_ref)
    )
    assert as_bits(ort_out).item() == ort_answer and as_bits(ref_out).item() == ref_answer
    for flavor, answer in (("onnxruntime", ort_answer), ("reference", ref_answer)):
        actual = qonnx.quantize_linear(x, np.float32(scale), zero_point, saturate=saturate, flavor=flavor)
        assert as_bits(actual).item() == answer


def test_disagreement_dequantize_int32():
    x = np.array([2**31 - 1, 16777217], np.int32)
    inputs = [("x", x), ("s", np.float32(0.3)), ("z", np.int32(-7))]
    ort_out, ref_out = both("DequantizeLinear", inputs, [("y", np.float32)], constants=("s", "z"))
    # onnxruntime: int32 x − z wraps to −2^31 + 6; the reference rounds x to float32 first and does not wrap.
    assert ort_out[0] < 0 < ref_out[0] and ort_out[1] != ref_out[1]
    assert_same_float(qonnx.dequantize_linear(x, np.float32(0.3), np.int32(-7)), ort_out, "int32")


def test_disagreement_dynamic_quantize_all_zero_and_nan():
    ort_out = run_ort("DynamicQuantizeLinear", [("x", np.zeros(4, np.float32))], DYNAMIC_OUTPUTS, opset=11)
    ref_out = run_ref("DynamicQuantizeLinear", [("x", np.zeros(4, np.float32))], DYNAMIC_OUTPUTS, opset=11)
    assert ort_out[1] == 1.0 and ref_out[1] == np.float32(1 / 255)
    x = np.array([1.0, np.nan, -2.0, 4.0], np.float32)
    ort_out = run_ort("DynamicQuantizeLinear", [("x", x)], DYNAMIC_OUTPUTS, opset=11)
    ref_out = run_ref("DynamicQuantizeLinear", [("x", x)], DYNAMIC_OUTPUTS, opset=11)
    assert ort_out[1] == np.float32(6) / np.float32(255) and np.isnan(ref_out[1]) and ref_out[2] == 255


def test_disagreement_dynamic_quantize_nan_position_in_onnxruntime():
    """onnxruntime's SIMD min/max propagates a NaN in the last element (length ≥ 8) instead of skipping it."""
    x = np.linspace(-1, 2, 40, dtype=np.float32)
    x[-1] = np.nan
    ort_out = run_ort("DynamicQuantizeLinear", [("x", x)], DYNAMIC_OUTPUTS, opset=11)
    assert np.isnan(ort_out[1]) and ort_out[2] == 255
    x[-1], x[1] = 2.0, np.nan
    assert not np.isnan(run_ort("DynamicQuantizeLinear", [("x", x)], DYNAMIC_OUTPUTS, opset=11)[1])


def test_disagreement_qlinear_matmul_zero_point_before_rounding():
    """acc = 1, M = 1/2: onnxruntime rne(0.5) + 1 = 1; the reference rne(0.5 + 1) = 2."""
    args = (
        np.array([[1]], np.uint8),
        np.float32(0.5),
        np.uint8(0),
        np.array([[1]], np.int8),
        np.float32(1.0),
        np.int8(0),
        np.float32(1.0),
        np.uint8(1),
    )
    assert qlinear_matmul_node(run_ort, *args).item() == 1
    assert qlinear_matmul_node(run_ref, *args).item() == 2
    assert np.asarray(qonnx.qlinear_matmul(*args)).item() == 1
    assert np.asarray(qonnx.qlinear_matmul(*args, flavor="reference")).item() == 2


# ------------------------------------------------------------------------------------------------------------------
# Bad input


def test_bad_input_quantize_linear():
    x = np.ones((2, 3, 4), np.float32)
    with pytest.raises(ValueError, match="output_dtype"):
        qonnx.quantize_linear(x, 1.0, output_dtype="int32")
    with pytest.raises(ValueError, match="output_dtype"):
        qonnx.quantize_linear(x, 1.0, np.int8(0), output_dtype=np.uint8)
    with pytest.raises(TypeError, match="y_zero_point"):
        qonnx.quantize_linear(x, 1.0, np.int32(0))
    with pytest.raises(TypeError, match="x must"):
        qonnx.quantize_linear(x.astype(np.int32), 1.0)
    with pytest.raises(ValueError, match="y_scale"):
        qonnx.quantize_linear(x, np.ones(4, np.float32))  # per-axis scale of the wrong length (axis=1 has 3)
    with pytest.raises(ValueError, match="y_scale"):
        qonnx.quantize_linear(x, np.ones((2, 3, 3), np.float32), axis=2, block_size=3)  # needs ceil(4/3) = 2
    with pytest.raises(ValueError, match="y_zero_point"):
        qonnx.quantize_linear(x, np.ones(3, np.float32), np.zeros(2, np.uint8))
    with pytest.raises(ValueError, match="axis"):
        qonnx.quantize_linear(x, np.ones(3, np.float32), axis=5)
    with pytest.raises(ValueError, match="block_size"):
        qonnx.quantize_linear(x, np.ones(3, np.float32), block_size=-1)
    for scale in (0.0, -1.0, np.nan, np.inf):
        with pytest.raises(ValueError, match="y_scale"):
            qonnx.quantize_linear(x, np.float32(scale))
    with pytest.raises(ValueError, match="flavor"):
        qonnx.quantize_linear(x, 1.0, flavor="tflite")


def test_bad_input_dequantize_linear():
    with pytest.raises(TypeError, match="x must"):
        qonnx.dequantize_linear(np.ones(3, np.float32), 1.0)
    with pytest.raises(TypeError, match="x_zero_point"):
        qonnx.dequantize_linear(np.ones(3, np.uint8), 1.0, np.int8(0))
    with pytest.raises(ValueError, match="x_scale"):
        qonnx.dequantize_linear(np.ones((3, 4), np.uint8), np.ones(5, np.float32))
    with pytest.raises(ValueError, match="x_scale"):
        qonnx.dequantize_linear(np.ones(3, np.uint8), np.float32(0.0))


def test_bad_input_matmul_and_conv():
    a, b = np.ones((3, 4), np.uint8), np.ones((5, 6), np.int8)
    with pytest.raises(ValueError, match="a's last dimension"):
        qonnx.matmul_integer(a, b)
    with pytest.raises(TypeError, match="b must"):
        qonnx.matmul_integer(a, np.ones((4, 6), np.int16))
    with pytest.raises(ValueError, match="b_zero_point"):
        qonnx.matmul_integer(a, np.ones((4, 6), np.int8), None, np.zeros(5, np.int8))
    with pytest.raises(ValueError, match="b_scale"):
        qonnx.qlinear_matmul(
            a, 1.0, np.uint8(0), np.ones((4, 6), np.int8), np.ones(5, np.float32), np.int8(0), 1.0, np.uint8(0)
        )
    with pytest.raises(ValueError, match="y_scale"):
        qonnx.qlinear_matmul(a, 1.0, np.uint8(0), np.ones((4, 6), np.int8), 1.0, np.int8(0), -1.0, np.uint8(0))
    x, w = np.ones((1, 4, 8, 8), np.uint8), np.ones((6, 2, 3, 3), np.int8)
    with pytest.raises(ValueError, match="w.shape"):
        qonnx.conv_integer(x, w)  # group=1 needs w.shape[1] == 4
    with pytest.raises(ValueError, match="group"):
        qonnx.conv_integer(x, w, group=3)
    with pytest.raises(ValueError, match="x must be 4-D"):
        qonnx.conv_integer(x[0], w, group=2)
    with pytest.raises(ValueError, match="pads"):
        qonnx.conv_integer(x, w, pads=(1, 1), group=2)
    with pytest.raises(ValueError, match="w_scale"):
        qonnx.qlinear_conv(x, 1.0, np.uint8(0), w, np.ones(4, np.float32), np.int8(0), 1.0, np.uint8(0), group=2)
    with pytest.raises(ValueError, match="bias"):
        qonnx.qlinear_conv(x, 1.0, np.uint8(0), w, 1.0, np.int8(0), 1.0, np.uint8(0), np.zeros(4, np.int32), group=2)
    with pytest.raises(TypeError, match="y_zero_point"):
        qonnx.qlinear_conv(x, 1.0, np.uint8(0), w, 1.0, np.int8(0), 1.0, np.int16(0), group=2)


# ------------------------------------------------------------------------------------------------------------------
# Zero-point variants of the convolutions


@pytest.mark.parametrize("flavor,runner", FLAVOR_RUNNERS, ids=["ort", "ref"])
def test_qlinear_conv_weight_zero_points(flavor, runner):
    """uint8 weights with a scalar zero point, int8 weights with per-output-channel zero points."""
    rng = np.random.default_rng(11)
    x = rng.integers(0, 256, (1, 4, 24, 24)).astype(np.uint8)
    case = dict(strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), group=1)
    bias = rng.integers(-3000, 3000, (6,)).astype(np.int32)
    for w, w_zp in (
        (rng.integers(0, 256, (6, 4, 3, 3)).astype(np.uint8), np.uint8(128)),
        (rng.integers(-128, 128, (6, 4, 3, 3)).astype(np.int8), rng.integers(-5, 5, (6,)).astype(np.int8)),
    ):
        args = (
            x,
            np.float32(0.05),
            np.uint8(3),
            w,
            random_scales(rng, (6,), 1e-3, 0.02),
            w_zp,
            np.float32(0.3),
            np.uint8(100),
            bias,
        )
        expected = qlinear_conv_node(runner, *args, case)
        actual = qonnx.qlinear_conv(*args, pads=case["pads"], flavor=flavor)
        assert_same(actual, expected, None, f"w {w.dtype} zero point {w_zp}")


def test_conv_integer_per_channel_weight_zero_point_reference_only():
    """onnxruntime's ConvInteger accepts only a per-tensor w_zero_point; the spec and the reference allow (M,)."""
    rng = np.random.default_rng(12)
    x = rng.integers(0, 256, (1, 4, 12, 12)).astype(np.uint8)
    w = rng.integers(0, 256, (6, 4, 3, 3)).astype(np.uint8)
    w_zp = rng.integers(0, 256, (6,)).astype(np.uint8)
    case = dict(strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), group=1)
    inputs = [("x", x), ("w", w), ("zx", np.asarray(np.uint8(3))), ("zw", w_zp)]
    expected = run_ref(
        "ConvInteger", inputs, [("y", np.int32)], conv_attrs(case, w.shape), constants=("w", "zx", "zw"), opset=10
    )[0]
    np.testing.assert_array_equal(np.asarray(qonnx.conv_integer(x, w, np.uint8(3), w_zp, pads=case["pads"])), expected)
    with pytest.raises(Exception, match="per tensor|Non per-tensor"):
        run_ort(
            "ConvInteger", inputs, [("y", np.int32)], conv_attrs(case, w.shape), constants=("w", "zx", "zw"), opset=10
        )


# ------------------------------------------------------------------------------------------------------------------
# Subnormal scales: rejected rather than answered wrongly; float16 scales as each runtime computes them


SUBNORMAL_MESSAGE = "JAX flushes subnormal float32 to zero on CPU, so results would not match"


def test_subnormal_scale_is_rejected_where_onnxruntime_differs():
    x = np.float32([1e-40, 3e-40, 1, -1e-40])
    ort_out = run_ort("QuantizeLinear", [("x", x), ("s", np.float32(1e-40)), ("z", np.int8(0))], [("y", np.int8)])[0]
    np.testing.assert_array_equal(ort_out, np.int8([1, 3, 127, -1]))  # what a flushing implementation cannot give
    with pytest.raises(ValueError, match=f"y_scale.*{SUBNORMAL_MESSAGE}"):
        qonnx.quantize_linear(x, np.float32(1e-40), np.int8(0))
    with pytest.raises(ValueError, match=f"x_scale.*{SUBNORMAL_MESSAGE}"):
        qonnx.dequantize_linear(np.int8([1]), np.float32([1.0, 1e-39])[1:])
    with pytest.raises(ValueError, match=f"y_scale.*{SUBNORMAL_MESSAGE}"):
        qonnx.quantize_linear(np.float32([[1, 2]]), np.float32([1.0, 5e-39]), np.int8([0, 0]), axis=1)


def test_smallest_normal_scale_matches_onnxruntime():
    tiny = np.finfo(np.float32).tiny
    x = np.float32([tiny, 3 * tiny, 100 * tiny, -2.5 * tiny, 1])
    expected = run_ort("QuantizeLinear", [("x", x), ("s", tiny), ("z", np.int8(0))], [("y", np.int8)])[0]
    np.testing.assert_array_equal(np.asarray(qonnx.quantize_linear(x, tiny, np.int8(0))), expected)


def test_qlinear_subnormal_scale_product_is_rejected():
    f = np.float32
    inputs = [
        ("a", np.uint8([[200]])),
        ("sa", f(1e-20)),
        ("za", np.uint8(0)),
        ("b", np.uint8([[200]])),
        ("sb", f(1e-20)),
        ("zb", np.uint8(0)),
        ("sy", f(1e-36)),
        ("zy", np.uint8(0)),
    ]
    assert run_ort("QLinearMatMul", inputs, [("y", np.uint8)])[0].item() == 4  # needs the subnormal 1e-40
    with pytest.raises(ValueError, match=f"a_scale \\* b_scale.*{SUBNORMAL_MESSAGE}"):
        qonnx.qlinear_matmul(*[value for _, value in inputs])
    with pytest.raises(ValueError, match=f"x_scale \\* w_scale.*{SUBNORMAL_MESSAGE}"):
        qonnx.qlinear_conv(
            np.uint8(np.ones((1, 1, 1, 1))),
            f(1e-20),
            np.uint8(0),
            np.uint8(np.ones((1, 1, 1, 1))),
            f(1e-20),
            np.uint8(0),
            f(1e-36),
            np.uint8(0),
        )


def test_dynamic_quantize_linear_subnormal_scale_is_rejected():
    x = np.float32([1e-36, -1e-37])
    scale = run_ort("DynamicQuantizeLinear", [("x", x)], [("y", np.uint8), ("s", np.float32), ("z", np.uint8)])[1]
    assert 0 < scale < np.finfo(np.float32).tiny
    with pytest.raises(ValueError, match=SUBNORMAL_MESSAGE):
        qonnx.dynamic_quantize_linear(x)


def half_inputs(rng, scale):
    """float16 values around ties of a float16 scale, where float32 and float16 quotients round differently."""
    k = np.arange(-300, 300)
    ties = ((k + 0.5) * np.float64(scale)).astype(np.float16)
    near = np.concatenate([ties, np.nextafter(ties, np.float16(np.inf)), np.nextafter(ties, np.float16(-np.inf))])
    random = (rng.standard_normal(600) * 200 * np.float64(scale)).astype(np.float16)
    return np.concatenate([near, random, np.float16([0, -0.0, np.inf, -np.inf, np.nan, 6e4, -6e4])])


@pytest.mark.parametrize("out_dtype", [np.dtype(np.uint8), np.dtype(np.int16), np.dtype(ml_dtypes.float8_e4m3fn)])
def test_float16_scales_quantize_as_onnxruntime_and_the_reference(out_dtype):
    rng = np.random.default_rng(40)
    scale = np.float16(0.0137)
    x = half_inputs(rng, scale)
    zero_point = np.zeros((), out_dtype) if out_dtype in FLOAT8_DTYPES else np.asarray(3, out_dtype)
    inputs = [("x", x), ("s", scale), ("z", zero_point)]
    ort_out = run_ort("QuantizeLinear", inputs, [("y", out_dtype)], constants=("s", "z"), opset=21)[0]
    assert_same(qonnx.quantize_linear(x, scale, zero_point), ort_out, x, "onnxruntime")
    # From opset 23 the reference evaluator divides float16 by float16 in float16: other codes at the ties.
    ref_out = run_ref("QuantizeLinear", inputs, [("y", out_dtype)], constants=("s", "z"), opset=23)[0]
    assert_same(qonnx.quantize_linear(x, scale, zero_point, flavor="reference"), ref_out, x, "reference")
    assert np.any(as_bits(ref_out) != as_bits(ort_out))
    # precision=float32 makes the reference divide in float32, as onnxruntime does.
    ref32 = run_ref(
        "QuantizeLinear", inputs, [("y", out_dtype)], {"precision": TensorProto.FLOAT}, constants=("s", "z"), opset=23
    )[0]
    assert_same(qonnx.quantize_linear(x, scale, zero_point, precision=np.float32, flavor="reference"), ref32, x)
    finite = np.isfinite(x)  # Inf and NaN differ between the runtimes whatever the precision (see quantize_linear)
    assert_same(ref32[finite], ort_out[finite], x[finite], "reference with precision=float32 against onnxruntime")


def test_float16_scales_dequantize_to_float16():
    x = np.arange(-128, 128, dtype=np.int8)
    scale = np.float16(0.0137)
    for opset, runner in ((21, run_ort), (23, run_ref)):
        expected = runner(
            "DequantizeLinear", [("x", x), ("s", scale), ("z", np.int8(-7))], [("y", np.float16)], constants=("s", "z")
        )[0]
        got = np.asarray(qonnx.dequantize_linear(x, scale, np.int8(-7)))
        assert got.dtype == np.float16 and np.array_equal(got.view(np.uint16), expected.view(np.uint16)), opset


def test_float16_scales_qlinear_matmul():
    rng = np.random.default_rng(41)
    a = rng.integers(0, 256, (32, 24), dtype=np.uint8)
    b = rng.integers(0, 256, (24, 16), dtype=np.uint8)
    for trial in range(8):
        sa, sb, sy = rng.uniform(0.001, 0.1, 3).astype(np.float16)
        inputs = [
            ("a", a),
            ("sa", sa),
            ("za", np.uint8(120)),
            ("b", b),
            ("sb", sb),
            ("zb", np.uint8(130)),
            ("sy", sy),
            ("zy", np.uint8(110)),
        ]
        values = [value for _, value in inputs]
        constants = ("sa", "za", "b", "sb", "zb", "sy", "zy")
        for flavor, runner in (("onnxruntime", run_ort), ("reference", run_ref)):
            expected = runner("QLinearMatMul", inputs, [("y", np.uint8)], constants=constants)[0]
            assert_same(qonnx.qlinear_matmul(*values, flavor=flavor), expected, label=f"{flavor} {trial}")


def test_mixed_half_and_float32_scales_are_rejected():
    with pytest.raises(TypeError, match="must all have the same type"):
        qonnx.qlinear_matmul(
            np.uint8([[1]]),
            np.float32(1),
            np.uint8(0),
            np.uint8([[1]]),
            np.float16(1),
            np.uint8(0),
            np.float32(1),
            np.uint8(0),
        )
