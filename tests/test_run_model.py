"""quantref.runtimes.onnx_graph.run_model against live onnxruntime (CPU EP), bit for bit, optimisations on and off.

Every comparison is exact: same dtype, same shape, same bytes. Models are the exported walkthrough CNN
(quantref.export.onnx) and small graphs built here with onnx.helper.
"""

from __future__ import annotations

import ctypes
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="run_model's cross-checks need the conformance extra (onnx)")
ort = pytest.importorskip("onnxruntime", reason="run_model's cross-checks need the conformance extra (onnxruntime)")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from quantref.export import onnx as export_onnx  # noqa: E402
from quantref.runtimes import onnx_graph  # noqa: E402
from quantref.runtimes.onnx_graph import SUPPORTED_OPS, run_model  # noqa: E402

LEVELS = {
    "disable_all": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "enable_all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


# ------------------------------------------------------------------------------------------------------------------
# Helpers


def ort_run(model, feeds, level):
    """onnxruntime's outputs as numpy/ml_dtypes arrays, read as raw bytes (the Python API has no float8/bfloat16)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = LEVELS[level]
    source = model if isinstance(model, str) else model.SerializeToString()
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    proto = onnx.load(model) if isinstance(model, str) else model
    dtypes = [np.dtype(helper.tensor_dtype_to_np_dtype(o.type.tensor_type.elem_type)) for o in proto.graph.output]
    binding = session.io_binding()
    for name, value in feeds.items():
        binding.bind_cpu_input(name, np.ascontiguousarray(value))
    for output in session.get_outputs():
        binding.bind_output(output.name, "cpu")
    session.run_with_iobinding(binding)
    results = {}
    for output, value, dtype in zip(session.get_outputs(), binding.get_outputs(), dtypes):
        shape = tuple(value.shape())
        count = int(np.prod(shape)) * dtype.itemsize
        raw = bytes((ctypes.c_uint8 * count).from_address(value.data_ptr())) if count else b""
        results[output.name] = np.frombuffer(raw, dtype).reshape(shape).copy()
    return results


def assert_bitwise(actual: dict, expected: dict, label=""):
    assert list(actual) == list(expected), label
    for name in expected:
        a, e = actual[name], expected[name]
        assert isinstance(a, np.ndarray), (label, name, type(a))
        assert a.dtype == e.dtype and a.shape == e.shape, (label, name, a.dtype, a.shape, e.dtype, e.shape)
        a_bytes = a.reshape(-1).view(np.uint8).reshape(a.size, -1)
        e_bytes = e.reshape(-1).view(np.uint8).reshape(e.size, -1)
        if not np.array_equal(a_bytes, e_bytes):
            bad = np.flatnonzero(np.any(a_bytes != e_bytes, axis=1))
            pytest.fail(
                f"{label} {name}: {bad.size} of {a.size} differ; at {bad[:8].tolist()}: run_model="
                f"{a.ravel()[bad[:8]].tolist()} onnxruntime={e.ravel()[bad[:8]].tolist()}"
            )


def check_against_ort(model, feeds, label=""):
    got = run_model(model, feeds)
    for level in LEVELS:
        assert_bitwise(got, ort_run(model, feeds, level), f"{label} [{level}]")
    return got


def tensor_type(dtype) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def make_model(nodes, inputs, outputs, initializers=(), opset=21):
    """``inputs``: {name: array} (shapes taken from the arrays); ``outputs``: {name: dtype}."""
    graph = helper.make_graph(
        nodes,
        "test",
        [helper.make_tensor_value_info(n, tensor_type(v.dtype), list(v.shape)) for n, v in inputs.items()],
        [helper.make_tensor_value_info(n, tensor_type(d), None) for n, d in outputs.items()],
        initializer=[numpy_helper.from_array(np.asarray(v), n) for n, v in dict(initializers).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return model


# ------------------------------------------------------------------------------------------------------------------
# The exported walkthrough model


@pytest.fixture(scope="module")
def exported(tmp_path_factory, qmodel, folded, splits):
    out_dir = tmp_path_factory.mktemp("run_model")
    return export_onnx.export_onnx(qmodel, out_dir, test_x=splits.x_test, float_model=folded, force=True)


def far_inputs():
    rng = np.random.default_rng(4)
    ones = np.ones((4, 8, 8, 1), np.float32)
    specials = np.array([1e3, -1e3, np.inf, -np.inf, 1e30, -1e30, np.nan, 3.0], np.float32)
    mixed = rng.choice(specials, (16, 8, 8, 1)).astype(np.float32)
    return {
        "gaussian_x10": (rng.standard_normal((64, 8, 8, 1)) * 10).astype(np.float32),
        "zeros": np.zeros((3, 8, 8, 1), np.float32),
        "all_max": ones,
        "plus_1e3": ones * np.float32(1e3),
        "minus_1e3": ones * np.float32(-1e3),
        "plus_inf": ones * np.float32(np.inf),
        "minus_inf": ones * np.float32(-np.inf),
        "nan": ones * np.float32(np.nan),
        "mixed_specials": mixed,
        "one_image": np.full((1, 8, 8, 1), 0.25, np.float32),
    }


def test_exported_model_on_the_test_set(exported):
    x = np.load(exported["test_inputs"])["x"]
    expected = np.load(exported["expected"])["output"]
    got = check_against_ort(str(exported["model"]), {"x": x}, "test set")
    np.testing.assert_array_equal(got["output"].view(np.uint32), expected.view(np.uint32))


@pytest.mark.parametrize("name", list(far_inputs()))
def test_exported_model_far_from_the_test_set(exported, name):
    check_against_ort(str(exported["model"]), {"x": far_inputs()[name]}, name)


def test_model_forms_path_proto_bytes(exported):
    x = np.load(exported["test_inputs"])["x"][:5]
    proto = onnx.load(exported["model"])
    reference = run_model(exported["model"], {"x": x})  # pathlib.Path
    for form in (str(exported["model"]), proto, proto.SerializeToString()):
        assert_bitwise(run_model(form, {"x": x}), reference, type(form).__name__)
    import jax.numpy as jnp

    assert_bitwise(run_model(proto, {"x": jnp.asarray(x)}), reference, "jax feed")


# ------------------------------------------------------------------------------------------------------------------
# Hand-built graphs


def test_matmul_integer_then_cast():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (2, 5, 7), dtype=np.uint8)
    b = rng.integers(-128, 128, (7, 3), dtype=np.int8)
    nodes = [
        helper.make_node("MatMulInteger", ["a", "b", "za", "zb"], ["acc"], name="mm"),
        helper.make_node("Cast", ["acc"], ["acc_f"], to=TensorProto.FLOAT),
        helper.make_node("Identity", ["acc_f"], ["y"]),
        helper.make_node("MatMulInteger", ["a", "b"], ["acc0"]),
    ]
    init = {"za": np.uint8(131), "zb": np.array([-3, 0, 7], np.int8)}
    check_against_ort(make_model(nodes, {"a": a, "b": b}, {"y": np.float32, "acc0": np.int32}, init), {"a": a, "b": b})


@pytest.mark.parametrize(
    "attrs",
    [
        dict(kernel_shape=[3, 3], pads=[1, 0, 2, 1], strides=[2, 1]),
        dict(dilations=[2, 1], group=2),
        dict(auto_pad="SAME_UPPER", strides=[2, 2]),
        dict(auto_pad="SAME_LOWER", strides=[2, 3]),
        dict(auto_pad="VALID"),
    ],
    ids=["pads_strides", "dilated_grouped", "same_upper", "same_lower", "valid"],
)
def test_conv_integer(attrs):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (2, 4, 9, 8), dtype=np.uint8)
    w = rng.integers(0, 256, (6, 4 // attrs.get("group", 1), 3, 3), dtype=np.uint8)
    nodes = [helper.make_node("ConvInteger", ["x", "w", "zx", "zw"], ["y"], **attrs)]
    check_against_ort(
        make_model(nodes, {"x": x}, {"y": np.int32}, {"w": w, "zx": np.uint8(100), "zw": np.uint8(7)}), {"x": x}
    )


def test_qlinear_matmul_batched_and_per_column():
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (3, 4, 16), dtype=np.uint8)
    b = rng.integers(-128, 128, (16, 5), dtype=np.int8)
    init = {
        "sa": np.float32(0.02),
        "za": np.uint8(120),
        "b": b,
        "sb": rng.uniform(0.01, 0.05, 5).astype(np.float32),
        "zb": np.zeros(5, np.int8),
        "sy": np.float32(0.37),
        "zy": np.uint8(101),
    }
    nodes = [helper.make_node("QLinearMatMul", ["a", "sa", "za", "b", "sb", "zb", "sy", "zy"], ["y"])]
    check_against_ort(make_model(nodes, {"a": a}, {"y": np.uint8}, init), {"a": a})


def test_qlinear_conv_grouped_same_upper_with_bias():
    rng = np.random.default_rng(3)
    x = rng.integers(-128, 128, (2, 6, 7, 7), dtype=np.int8)
    w = rng.integers(-127, 128, (4, 3, 3, 3), dtype=np.int8)
    init = {
        "sx": np.float32(0.05),
        "zx": np.int8(3),
        "w": w,
        "sw": rng.uniform(0.001, 0.01, 4).astype(np.float32),
        "zw": np.int8(0),
        "sy": np.float32(0.11),
        "zy": np.int8(-20),
        "bias": rng.integers(-5000, 5000, 4).astype(np.int32),
    }
    nodes = [
        helper.make_node(
            "QLinearConv",
            ["x", "sx", "zx", "w", "sw", "zw", "sy", "zy", "bias"],
            ["y"],
            group=2,
            auto_pad="SAME_UPPER",
            strides=[2, 2],
        )
    ]
    check_against_ort(make_model(nodes, {"x": x}, {"y": np.int8}, init), {"x": x})


@pytest.mark.parametrize(
    "channels,group,attrs",
    [
        (6, 6, dict(strides=[2, 1], dilations=[2, 2], pads=[2, 1, 0, 2])),  # depthwise: a sum of shifted slices
        (1, 1, dict(pads=[1, 1, 1, 1])),  # one input channel
        (3, 1, dict(kernel_shape=[7, 7])),  # the kernel covers the input: a matrix product
    ],
    ids=["depthwise", "one_channel", "full_cover"],
)
def test_qlinear_conv_fast_forms(channels, group, attrs):
    rng = np.random.default_rng(13)
    x = rng.integers(0, 256, (3, channels, 7, 7), dtype=np.uint8)
    out = 6 if group > 1 else 5
    kernel = attrs.get("kernel_shape", [3, 3])
    init = {
        "sx": np.float32(0.05),
        "zx": np.uint8(131),
        "w": rng.integers(-128, 128, [out, channels // group] + kernel, dtype=np.int8),
        "sw": rng.uniform(0.001, 0.01, out).astype(np.float32),
        "zw": np.zeros(out, np.int8),
        "sy": np.float32(0.07),
        "zy": np.uint8(9),
        "bias": rng.integers(-5000, 5000, out).astype(np.int32),
    }
    names = ["x", "sx", "zx", "w", "sw", "zw", "sy", "zy", "bias"]
    nodes = [helper.make_node("QLinearConv", names, ["y"], group=group, **attrs)]
    check_against_ort(make_model(nodes, {"x": x}, {"y": np.uint8}, init), {"x": x})


def test_layout_chain_transpose_reshape_flatten_identity_relu():
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((2, 3, 4, 5)) * 3).astype(np.float32)
    x.ravel()[:4] = [np.nan, -0.0, 0.0, -np.inf]
    q = rng.integers(-128, 128, (2, 3, 4), dtype=np.int8)
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["t", "shape"], ["r"]),
        helper.make_node("Relu", ["r"], ["relu"]),
        helper.make_node("Identity", ["relu"], ["i"]),
        helper.make_node("Flatten", ["i"], ["f"], axis=-1),
        helper.make_node("Transpose", ["f"], ["y"]),  # default perm: reversed
        helper.make_node("Relu", ["q"], ["q_relu"]),
        helper.make_node("Flatten", ["q_relu"], ["q_flat"], axis=0),
        helper.make_node("Constant", [], ["shape2"], value_ints=[0, 0, -1, 2]),
        helper.make_node("Reshape", ["x", "shape2"], ["x4"]),
    ]
    init = {"shape": np.array([0, -1, 3], np.int64)}
    outputs = {"y": np.float32, "q_flat": np.int8, "x4": np.float32, "relu": np.float32}
    got = check_against_ort(make_model(nodes, {"x": x, "q": q}, outputs, init), {"x": x, "q": q})
    assert got["y"].shape == (3, 40) and got["x4"].shape == (2, 3, 10, 2) and got["q_flat"].shape == (1, 24)


def test_dynamic_quantize_then_dequantize_with_constants():
    rng = np.random.default_rng(6)
    x = (rng.standard_normal((4, 33)) * 2 + 0.5).astype(np.float32)
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xr"]),
        helper.make_node(
            "Constant", [], ["s"], value=numpy_helper.from_array(np.array([0.1, 0.2, 0.3, 0.4], np.float32))
        ),
        helper.make_node("QuantizeLinear", ["xr", "s"], ["q4"], axis=0, output_dtype=TensorProto.INT4),
        helper.make_node("DequantizeLinear", ["q4", "s"], ["y4"], axis=0),
        helper.make_node("Constant", [], ["sb"], value_float=0.25),
        helper.make_node("QuantizeLinear", ["x", "sb", ""], ["qu8"]),  # empty optional input: uint8, zero point 0
    ]
    outputs = {"xq": np.uint8, "xs": np.float32, "xz": np.uint8, "xr": np.float32, "y4": np.float32, "qu8": np.uint8}
    check_against_ort(make_model(nodes, {"x": x}, outputs), {"x": x})


def test_blocked_quantize_dequantize():
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((3, 10)) * 4).astype(np.float32)
    scale = rng.uniform(0.01, 0.2, (3, 3)).astype(np.float32)
    zero_point = rng.integers(-20, 20, (3, 3)).astype(np.int8)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], axis=1, block_size=4),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], axis=1, block_size=4),
    ]
    check_against_ort(
        make_model(nodes, {"x": x}, {"q": np.int8, "y": np.float32}, {"s": scale, "z": zero_point}), {"x": x}
    )


MAXPOOL_CASES = {
    "2x2_s2": dict(kernel_shape=[2, 2], strides=[2, 2]),
    "3x3_pads": dict(kernel_shape=[3, 3], pads=[1, 2, 2, 0], strides=[1, 2]),
    "ceil": dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
    "ceil_drop_last": dict(kernel_shape=[2, 3], strides=[3, 3], pads=[1, 1, 1, 1], ceil_mode=1),
    "ceil_pads": dict(kernel_shape=[3, 3], strides=[3, 2], pads=[2, 1, 2, 1], ceil_mode=1),
    "dilated": dict(kernel_shape=[2, 2], dilations=[2, 3], pads=[1, 1, 0, 1]),
    "same_upper": dict(kernel_shape=[3, 2], strides=[2, 2], auto_pad="SAME_UPPER"),
    "same_lower": dict(kernel_shape=[3, 3], strides=[2, 1], auto_pad="SAME_LOWER"),
    "valid": dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="VALID"),
}


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.float32], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", list(MAXPOOL_CASES))
def test_max_pool_2d(case, dtype):
    rng = np.random.default_rng(8)
    if np.dtype(dtype).kind == "f":
        x = (rng.standard_normal((2, 3, 7, 8)) * 100).astype(dtype)
        x[0, 0, :3] = -3e38  # near float32's lowest, where onnxruntime's window starts
    else:
        info = np.iinfo(dtype)
        x = rng.integers(info.min, info.max + 1, (2, 3, 7, 8), dtype=dtype)
        x[0, 0] = info.min  # an all-minimum channel: the padding must not win
    nodes = [helper.make_node("MaxPool", ["x"], ["y"], **MAXPOOL_CASES[case])]
    check_against_ort(make_model(nodes, {"x": x}, {"y": dtype}), {"x": x}, case)


@pytest.mark.parametrize(
    "shape,attrs",
    [
        ((2, 3, 11), dict(kernel_shape=[3], strides=[2], pads=[1, 1], ceil_mode=1)),
        ((1, 2, 5, 6, 7), dict(kernel_shape=[2, 3, 2], strides=[2, 2, 3], pads=[1, 0, 1, 0, 2, 1])),
    ],
    ids=["1d", "3d"],
)
def test_max_pool_1d_3d(shape, attrs):
    x = np.random.default_rng(9).integers(0, 256, shape, dtype=np.uint8)
    nodes = [helper.make_node("MaxPool", ["x"], ["y"], **attrs)]
    check_against_ort(make_model(nodes, {"x": x}, {"y": np.uint8}), {"x": x})


CAST_FLOATS = np.array(
    [
        0.0,
        -0.0,
        0.4,
        -0.7,
        1.5,
        -1.5,
        2.5,
        126.9,
        127.5,
        128.0,
        -128.9,
        -129.5,
        255.5,
        256.0,
        300.0,
        -300.0,
        1000.0,
        32767.5,
        32768.0,
        -32769.0,
        65543.0,
        2.0**31,
        -(2.0**31),
        3e9,
        -3e9,
        1e10,
        -1e10,
        2.0**63,
        1e20,
        np.inf,
        -np.inf,
        np.nan,
        1e-40,
        448.0,
        500.0,
        6e4,
        1.0000001,
    ],
    np.float32,
)
INT_TARGETS = [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64]


@pytest.mark.parametrize(
    "target", INT_TARGETS + [np.bool_, np.float16, np.float64, ml_dtypes.bfloat16], ids=lambda d: np.dtype(d).name
)
def test_cast_from_float32_in_and_out_of_range(target):
    x = np.concatenate([CAST_FLOATS, np.random.default_rng(10).uniform(-400, 400, 200).astype(np.float32)])
    nodes = [helper.make_node("Cast", ["x"], ["y"], to=tensor_type(target))]
    with np.errstate(all="ignore"):
        check_against_ort(make_model(nodes, {"x": x}, {"y": target}), {"x": x})


@pytest.mark.parametrize("source", [np.float16, np.float64], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize(
    "target", [np.int8, np.uint8, np.int16, np.int32, np.int64, np.float32], ids=lambda d: np.dtype(d).name
)
def test_cast_from_float16_float64(source, target):
    with np.errstate(all="ignore"):
        x = CAST_FLOATS.astype(source)
    nodes = [helper.make_node("Cast", ["x"], ["y"], to=tensor_type(target))]
    check_against_ort(make_model(nodes, {"x": x}, {"y": target}), {"x": x})


@pytest.mark.parametrize(
    "target",
    [ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e4m3fnuz, ml_dtypes.float8_e5m2, ml_dtypes.float8_e5m2fnuz],
    ids=lambda d: np.dtype(d).name,
)
@pytest.mark.parametrize("saturate", [1, 0])
def test_cast_float8_round_trip(target, saturate):
    x = np.concatenate([CAST_FLOATS, np.random.default_rng(11).standard_normal(300).astype(np.float32) * 100])
    nodes = [
        helper.make_node("Cast", ["x"], ["f8"], to=tensor_type(target), saturate=saturate),
        helper.make_node("Cast", ["f8"], ["back"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["f8"], ["as_int"], to=TensorProto.INT16),
    ]
    outputs = {"f8": target, "back": np.float32, "as_int": np.int16}
    check_against_ort(make_model(nodes, {"x": x}, outputs), {"x": x})


def test_cast_between_integers_and_to_float():
    rng = np.random.default_rng(12)
    x = rng.integers(-(2**31), 2**31, 300, dtype=np.int64) * rng.integers(1, 2**20, 300)
    x[:6] = [0, -1, 2**24 + 1, 2**53 + 1, -(2**63), 2**63 - 1]
    packed = np.array([-8, -1, 0, 7], ml_dtypes.int4)
    nodes = [
        helper.make_node("Cast", ["x"], [f"y{i}"], to=tensor_type(t))
        for i, t in enumerate(INT_TARGETS + [np.float32, np.float16, np.float64, np.bool_])
    ]
    nodes += [
        helper.make_node("Cast", ["p"], ["p8"], to=TensorProto.INT8),
        helper.make_node("Cast", ["p"], ["pf"], to=TensorProto.FLOAT),
    ]
    outputs = {f"y{i}": t for i, t in enumerate(INT_TARGETS + [np.float32, np.float16, np.float64, np.bool_])}
    outputs.update(p8=np.int8, pf=np.float32)
    with np.errstate(all="ignore"):
        check_against_ort(make_model(nodes, {"x": x}, outputs, {"p": packed}), {"x": x})


# ------------------------------------------------------------------------------------------------------------------
# Bad input: clear errors, raised before anything runs


def tiny_model(extra_nodes=(), domain_imports=()):
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="quant"), *extra_nodes]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.UNDEFINED, None)],
        initializer=[numpy_helper.from_array(np.float32(0.1), "s"), numpy_helper.from_array(np.uint8(3), "z")],
    )
    opsets = [helper.make_opsetid("", 21), *(helper.make_opsetid(d, 1) for d in domain_imports)]
    return helper.make_model(graph, opset_imports=opsets)


@pytest.mark.parametrize("op", ["LSTM", "NonMaxSuppression"])
def test_unsupported_operator_names_op_and_node(op):
    model = tiny_model([helper.make_node(op, ["q"], ["y"], name="my_node")])
    with pytest.raises(ValueError, match=rf"node 1 'my_node' \({op}\): unsupported operator '{op}'.*QLinearConv"):
        run_model(model, {"x": np.zeros((1, 4), np.float32)})


def zero_scale_model(last_op):
    model = tiny_model([helper.make_node(last_op, ["q"], ["y"])])
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.float32(0.0), "s"))
    return model


def test_unsupported_operator_is_reported_before_running():
    # The QuantizeLinear has a zero scale, an error when it runs; the LSTM after it must be reported first.
    with pytest.raises(ValueError, match=r"node 1 \(unnamed\) \(LSTM\)"):
        run_model(zero_scale_model("LSTM"), {"x": np.zeros((1, 4), np.float32)})
    # Errors while running name the node too.
    with pytest.raises(ValueError, match=r"node 0 'quant' \(QuantizeLinear\): y_scale must be finite and > 0"):
        run_model(zero_scale_model("Identity"), {"x": np.zeros((1, 4), np.float32)})


def test_unknown_domain_and_unsupported_microsoft_operator():
    model = tiny_model(
        [helper.make_node("QLinearAdd", ["q"], ["y"], name="add", domain="com.example")],
        domain_imports=["com.example"],
    )
    with pytest.raises(ValueError, match=r"'add'.*domain 'com\.example'.*com\.microsoft operators"):
        run_model(model, {"x": np.zeros((1, 4), np.float32)})
    model = tiny_model(
        [helper.make_node("QAttention", ["q"], ["y"], name="attention", domain="com.microsoft")],
        domain_imports=["com.microsoft"],
    )
    with pytest.raises(ValueError, match=r"'attention'.*unsupported operator 'QAttention'.*QLinearAdd"):
        run_model(model, {"x": np.zeros((1, 4), np.float32)})


def test_unsupported_attribute_and_output():
    model = tiny_model([helper.make_node("MaxPool", ["q"], ["y", "indices"], kernel_shape=[2])])
    with pytest.raises(ValueError, match="Indices"):
        run_model(model, {"x": np.zeros((1, 4), np.float32)})
    model = tiny_model([helper.make_node("Cast", ["q"], ["y"], to=TensorProto.STRING)])
    with pytest.raises(ValueError, match="Cast to STRING"):
        run_model(model, {"x": np.zeros((1, 4), np.float32)})


def test_feed_errors():
    model = tiny_model()
    good = np.zeros((3, 4), np.float32)
    assert run_model(model, {"x": good})["q"].dtype == np.uint8  # the symbolic batch dimension takes any size
    with pytest.raises(ValueError, match=r"missing feed\(s\) \['x'\]; the graph's inputs are \['x'\]"):
        run_model(model, {})
    with pytest.raises(ValueError, match=r"unknown feed name\(s\) \['y'\]; the graph's inputs are \['x'\]"):
        run_model(model, {"x": good, "y": good})
    with pytest.raises(TypeError, match=r"feed 'x' must have dtype float32 \(ONNX FLOAT\), got float64"):
        run_model(model, {"x": good.astype(np.float64)})
    with pytest.raises(ValueError, match=r"feed 'x' must have shape \('N', 4\).*got \(3, 5\)"):
        run_model(model, {"x": np.zeros((3, 5), np.float32)})
    with pytest.raises(ValueError, match=r"feed 'x' must have shape .*got \(4,\)"):
        run_model(model, {"x": np.zeros(4, np.float32)})
    with pytest.raises(TypeError, match="model must be"):
        run_model(42, {"x": good})


def test_undefined_input_and_topological_order():
    model = tiny_model([helper.make_node("Relu", ["nowhere"], ["y"], name="r")])
    with pytest.raises(ValueError, match=r"'r'.*reads 'nowhere'.*topological"):
        run_model(model, {"x": np.zeros((1, 4), np.float32)})


def test_supported_ops_listed():
    assert set(SUPPORTED_OPS) >= {
        "QuantizeLinear",
        "DequantizeLinear",
        "QLinearConv",
        "QLinearMatMul",
        "MaxPool",
        "MatMulInteger",
        "ConvInteger",
        "Cast",
        "Relu",
        "Identity",
        "Transpose",
        "Reshape",
        "Flatten",
        "DynamicQuantizeLinear",
        "Constant",
    }


def test_library_imports_without_onnx():
    code = (
        "import sys; sys.modules['onnx'] = None\n"
        "import quantref.runtimes.onnx_graph as qonnx_graph\n"
        "try:\n    qonnx_graph.run_model('m.onnx', {})\nexcept ImportError:\n    print('needs onnx')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "needs onnx"


def test_nodes_reading_an_overridable_initializer_are_not_folded():
    """An initializer graph.input also lists may be fed: nodes that read it are computed from the fed value, not
    folded from the initializer (onnxruntime's constant folding skips them too)."""
    node = helper.make_node
    nodes = [node("Mul", ["c", "two"], ["c2"]), node("Add", ["x", "c2"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "fold",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [4]),
            helper.make_tensor_value_info("c", TensorProto.FLOAT, [4]),
        ],  # fmt: skip  # noqa: E501
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[
            numpy_helper.from_array(np.full(4, 1.5, np.float32), "c"),
            numpy_helper.from_array(np.float32(2), "two"),
        ],  # fmt: skip  # noqa: E501
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    reference = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.arange(4, dtype=np.float32)
    compiled = onnx_graph.compile_model(model)
    for feeds in ({"x": x}, {"x": x, "c": np.array([0.25, -1, 7, 3], np.float32)}):
        np.testing.assert_array_equal(compiled(feeds)["y"], reference.run(None, feeds)[0])
