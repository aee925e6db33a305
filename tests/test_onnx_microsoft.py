"""quantref.runtimes.onnx_microsoft against onnxruntime's com.microsoft CPU kernels, one operator per model.

Each model is one node built with onnx.helper; inputs are random codes over the whole type range with parameters
that put many values near rounding ties. Every comparison is exact, QLinearSigmoid's table included (MLAS's own
logistic approximation, checked against onnxruntime's float Sigmoid, which runs the same kernel).
"""

from __future__ import annotations

import zlib

import jax
import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the com.microsoft cross-checks need the conformance extra (onnx)")
ort = pytest.importorskip("onnxruntime", reason="the com.microsoft cross-checks need the conformance extra")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from quantref.runtimes import onnx_graph as qonnx_graph  # noqa: E402

F32 = np.float32


def one_node(op, inputs, initializers, output_type, **attributes):
    """``inputs``: graph inputs {name: array}; ``initializers``: {name: array}; input order as given, "" skipped."""
    names = [name for name in list(inputs) + list(initializers)]
    order = attributes.pop("order", names)
    node = helper.make_node(op, order, ["y"], domain="com.microsoft", **attributes)
    graph = helper.make_graph(
        [node],
        op,
        [
            helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))
            for n, v in inputs.items()
        ],
        [helper.make_tensor_value_info("y", output_type, None)],
        initializer=[numpy_helper.from_array(np.asarray(v), n) for n, v in initializers.items()],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)]
    )
    model.ir_version = 8
    return model


def check(model, feeds, tolerance_moved=0):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    expected = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(
        None, feeds
    )[0]
    got = qonnx_graph.run_model(model, feeds)["y"]
    assert got.dtype == expected.dtype and got.shape == expected.shape
    bits = np.uint8 if got.itemsize == 1 else np.uint32
    moved = int(np.sum(got.view(bits) != expected.view(bits)))
    assert moved <= tolerance_moved, f"{moved} of {got.size} differ"
    return moved


def codes(rng, dtype, shape):
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max + 1, shape).astype(dtype)


def scales(rng, count):
    return [F32(v) for v in rng.uniform(0.002, 0.08, count)]


DTYPES = [np.uint8, np.int8]
# (A shape, B shape): full tensors, a per-channel operand, a scalar each side, and A broadcast in its span.
BROADCASTS = [
    ((2, 3, 5, 7), (2, 3, 5, 7)),
    ((2, 3, 5, 7), (1, 3, 1, 1)),
    ((2, 3, 5, 7), ()),
    ((), (4, 9)),
    ((1, 3, 1, 1), (2, 3, 5, 7)),
    ((4, 1), (4, 6)),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shapes", BROADCASTS, ids=str)
@pytest.mark.parametrize("op", ["QLinearAdd", "QLinearMul"])
def test_qlinear_add_and_mul(op, shapes, dtype):
    rng = np.random.default_rng(zlib.crc32(f"{op}{shapes}{np.dtype(dtype).name}".encode()))
    for _ in range(4):
        a, b = codes(rng, dtype, shapes[0]), codes(rng, dtype, shapes[1])
        sa, sb, sc = scales(rng, 3)
        if op == "QLinearMul":
            sc = F32(sc * 40)
        za, zb, zc = (dtype(v) for v in codes(rng, dtype, 3))
        init = {"sa": sa, "za": za, "sb": sb, "zb": zb, "sc": sc, "zc": zc}
        model = one_node(
            op,
            {"a": a, "b": b},
            init,
            helper.np_dtype_to_tensor_dtype(np.dtype(dtype)),
            order=["a", "sa", "za", "b", "sb", "zb", "sc", "zc"],
        )
        check(model, {"a": a, "b": b})


@pytest.mark.parametrize(
    "attributes,bias_shape,requantize",
    [
        (dict(), (6,), True),
        (dict(transB=1), (1, 6), True),
        (dict(transA=1, alpha=0.5), (5, 1), True),
        (dict(alpha=2.0), None, True),
        (dict(transB=1), (6,), False),
        (dict(), None, False),
    ],
)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_qgemm(attributes, bias_shape, requantize, dtype):
    rng = np.random.default_rng(5)
    a = codes(rng, dtype, (24, 5) if attributes.get("transA") else (5, 24))
    b = (
        codes(rng, np.int8, (6, 24) if attributes.get("transB") else (24, 6))
        if dtype == np.int8
        else codes(rng, np.uint8, (6, 24) if attributes.get("transB") else (24, 6))
    )
    sa, sb, sy = scales(rng, 3)
    init = {
        "sa": sa,
        "za": dtype(3),
        "b": b,
        "sb": np.asarray(rng.uniform(0.01, 0.03, 6), F32),
        "zb": np.zeros(6, b.dtype),
    }
    order = ["a", "sa", "za", "b", "sb", "zb"]
    if bias_shape is not None:
        init["c"] = rng.integers(-3000, 3000, bias_shape).astype(np.int32)
    order.append("c" if bias_shape is not None else "")
    if requantize:
        init.update(sy=F32(sy * 30), zy=dtype(5))
        order += ["sy", "zy"]
    output = helper.np_dtype_to_tensor_dtype(np.dtype(dtype)) if requantize else TensorProto.FLOAT
    model = one_node("QGemm", {"a": a}, init, output, order=order, **attributes)
    check(model, {"a": a})


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_qlinear_concat_copies_and_requantizes(dtype):
    rng = np.random.default_rng(6)
    x0, x1, x2 = codes(rng, dtype, (2, 3, 4)), codes(rng, dtype, (2, 5, 4)), codes(rng, dtype, (2, 1, 4))
    sy, s1, s2 = scales(rng, 3)
    init = {
        "sy": sy,
        "zy": dtype(2),
        "s0": sy,
        "z0": dtype(2),
        "s1": s1,
        "z1": dtype(-7 if dtype == np.int8 else 7),
        "s2": s2,
        "z2": dtype(0),
    }
    order = ["sy", "zy", "x0", "s0", "z0", "x1", "s1", "z1", "x2", "s2", "z2"]
    model = one_node(
        "QLinearConcat",
        {"x0": x0, "x1": x1, "x2": x2},
        init,
        helper.np_dtype_to_tensor_dtype(np.dtype(dtype)),
        order=order,
        axis=1,
    )
    check(model, {"x0": x0, "x1": x1, "x2": x2})


def _sigmoid(elem_type):
    """A one-node float Sigmoid model of ``elem_type``, and onnxruntime's session on it."""
    graph = helper.make_graph(
        [helper.make_node("Sigmoid", ["x"], ["y"])],
        "sigmoid",
        [helper.make_tensor_value_info("x", elem_type, [None])],
        [helper.make_tensor_value_info("y", elem_type, [None])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]), model


def test_mlas_logistic_and_run_models_sigmoid_are_onnxruntimes_bit_for_bit():
    from quantref.runtimes.onnx_float import mlas_logistic

    rng = np.random.default_rng(3)
    specials = [0.0, -0.0, 18.0, -18.0, 17.99, 30.0, -30.0, np.inf, -np.inf, np.nan, 1e-40, -1e-40, 1e-8]
    x = np.concatenate(
        [rng.uniform(-20, 20, 200_000), rng.standard_normal(200_000), np.linspace(-1e-3, 1e-3, 4001), specials]
    ).astype(F32)
    session, model = _sigmoid(TensorProto.FLOAT)
    expected = session.run(None, {"x": x})[0]
    in_graph = qonnx_graph.run_model(model, {"x": x})["y"]
    for got in (np.asarray(mlas_logistic(x)), np.asarray(jax.jit(mlas_logistic)(x)), in_graph):
        moved = got.view(np.uint32) != expected.view(np.uint32)
        assert not moved.any(), f"{moved.sum()} of {x.size} differ, first at x = {x[moved][:5]}"
    # float16: onnxruntime computes in float32 and rounds; so does run_model.
    half = rng.uniform(-12, 12, 4000).astype(np.float16)
    session16, model16 = _sigmoid(TensorProto.FLOAT16)
    expected16 = session16.run(None, {"x": half})[0]
    got16 = qonnx_graph.run_model(model16, {"x": half})["y"]
    assert got16.dtype == np.float16 and np.array_equal(got16.view(np.uint16), expected16.view(np.uint16))
    # Not the exact logistic: the approximation differs from it in the last bits for many inputs.
    exact = (1 / (1 + np.exp(-x[:1000].astype(np.float64)))).astype(F32)
    assert np.sum(exact != expected[:1000]) > 10


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_qlinear_sigmoid_tables_over_random_parameters(dtype):
    rng = np.random.default_rng(100)
    x = np.arange(256, dtype=np.uint8).view(dtype).reshape(4, 64)
    info = np.iinfo(dtype)
    moved = 0
    for _ in range(40):
        init = {
            "sx": F32(rng.uniform(0.005, 0.2)),
            "zx": dtype(rng.integers(info.min, info.max + 1)),
            "sy": F32(rng.uniform(1 / 512, 1 / 128)),
            "zy": dtype(rng.integers(info.min, info.min + 40)),
        }
        model = one_node(
            "QLinearSigmoid", {"x": x}, init, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)),
            order=["x", "sx", "zx", "sy", "zy"],
        )  # fmt: skip
        moved += check(model, {"x": x})
    assert moved == 0


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("op", ["QLinearLeakyRelu", "QLinearSigmoid"])
def test_lookup_table_activations(op, dtype):
    rng = np.random.default_rng(7)
    x = np.arange(256, dtype=np.uint8).view(dtype).reshape(4, 64)
    sx, sy = F32(0.05), F32(0.004 if op == "QLinearSigmoid" else 0.03)
    attributes = {"alpha": 0.13} if op == "QLinearLeakyRelu" else {}
    init = {"sx": sx, "zx": dtype(4), "sy": sy, "zy": dtype(-128 if dtype == np.int8 else 0)}
    model = one_node(
        op,
        {"x": x},
        init,
        helper.np_dtype_to_tensor_dtype(np.dtype(dtype)),
        order=["x", "sx", "zx", "sy", "zy"],
        **attributes,
    )
    moved = check(model, {"x": x})
    print(f"{op} {np.dtype(dtype).name}: {moved} of 256 codes moved")
    del rng


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize(
    "attributes",
    [
        dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1, strides=[2, 2]),
        dict(kernel_shape=[2, 3], strides=[2, 2], ceil_mode=1),
        dict(kernel_shape=[7, 5]),
        dict(kernel_shape=[3, 3], channels_last=1, pads=[0, 1, 2, 1]),
    ],
    ids=["padded", "count_pad_strided", "ceil", "global_fallback", "channels_last"],
)
def test_qlinear_average_pool(attributes, dtype):
    rng = np.random.default_rng(8)
    shape = (2, 7, 5, 3) if attributes.get("channels_last") else (2, 3, 7, 5)
    x = codes(rng, dtype, shape)
    init = {"sx": F32(0.0371), "zx": dtype(3), "sy": F32(0.0293), "zy": dtype(7)}
    model = one_node(
        "QLinearAveragePool",
        {"x": x},
        init,
        helper.np_dtype_to_tensor_dtype(np.dtype(dtype)),
        order=["x", "sx", "zx", "sy", "zy"],
        **attributes,
    )
    check(model, {"x": x})


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("channels_last", [0, 1])
def test_qlinear_global_average_pool(channels_last, dtype):
    rng = np.random.default_rng(9)
    x = codes(rng, dtype, (3, 6, 6, 5) if channels_last else (3, 5, 6, 6))
    init = {"sx": F32(0.021), "zx": dtype(-5 if dtype == np.int8 else 5), "sy": F32(0.013), "zy": dtype(9)}
    model = one_node(
        "QLinearGlobalAveragePool",
        {"x": x},
        init,
        helper.np_dtype_to_tensor_dtype(np.dtype(dtype)),
        order=["x", "sx", "zx", "sy", "zy"],
        channels_last=channels_last,
    )
    check(model, {"x": x})


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("axis,opset", [(-1, 13), (1, 13), (1, 12)])
def test_qlinear_softmax(axis, opset, dtype):
    rng = np.random.default_rng(10)
    x = codes(rng, dtype, (3, 4, 10))
    zy = dtype(-128) if dtype == np.int8 else dtype(0)
    init = {"sx": F32(0.083), "zx": dtype(0), "sy": F32(1 / 256), "zy": zy}
    model = one_node(
        "QLinearSoftmax",
        {"x": x},
        init,
        helper.np_dtype_to_tensor_dtype(np.dtype(dtype)),
        order=["x", "sx", "zx", "sy", "zy"],
        axis=axis,
        opset=opset,
    )
    check(model, {"x": x})


def test_matmul_integer_to_float():
    rng = np.random.default_rng(11)
    a, b = codes(rng, np.uint8, (5, 32)), codes(rng, np.int8, (32, 6))
    init = {
        "b": b,
        "sa": F32(0.017),
        "sb": np.asarray(rng.uniform(0.01, 0.02, 6), F32),
        "za": np.uint8(129),
        "zb": np.zeros(6, np.int8),
    }
    model = one_node(
        "MatMulIntegerToFloat", {"a": a}, init, TensorProto.FLOAT, order=["a", "b", "sa", "sb", "za", "zb"]
    )
    check(model, {"a": a})
