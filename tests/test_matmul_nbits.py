"""MatMulNBits (``accuracy_level=4``) and onnxruntime's DequantizeLinear → MatMul/Gemm rewrite into it, bit for bit.

- One-node ``com.microsoft.MatMulNBits`` models (4 and 8 bits, blocks of 32, random shapes with ``K`` not a multiple
  of 32 and every ``N mod 4``, with and without zero points and bias, all-zero blocks and ties in the activations)
  run through ``run_model`` and onnxruntime's session: every output equal in its bits.
- Which MatMuls and Gemms onnxruntime rewrites (read from its saved optimised graph) and which ``run_model``'s
  ``"onnxruntime"`` flavor rewrites: the same ones, over per-tensor, per-channel and blocked weights, int8/uint8/int4
  weights, Gemm attributes and bias shapes, shared weights and 8- or 16-bit activations.
- ``quantize_static`` models with int16 activations (an MLP of MatMuls, one of Gemms, 3-D activations): the default
  flavor equals onnxruntime's default session bit for bit, inside and far outside the calibration range.

The kernel reproduced is MLAS's AVX512-VNNI one; on a CPU without AVX512-VNNI onnxruntime runs another (the tests
that compare against onnxruntime are skipped there).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime", reason="the MatMulNBits cross-checks need the conformance extra")
onnx = pytest.importorskip("onnx", reason="the MatMulNBits cross-checks need the conformance extra")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnxruntime import quantization as ort_quantization  # noqa: E402

from quantref.runtimes import onnx_graph  # noqa: E402


def _has_avx512_vnni() -> bool:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return " avx512_vnni" in cpuinfo.read()
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _has_avx512_vnni(), reason="reproduces MLAS's AVX512-VNNI MatMulNBits kernel")


def moved(got, expected) -> int:
    """How many outputs differ in their bits."""
    assert got.dtype == expected.dtype and got.shape == expected.shape
    return int(np.sum(got.view(np.uint32) != expected.view(np.uint32)))


def session(model, path=None):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if path is not None:
        options.optimized_model_filepath = str(path)
    source = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


# ------------------------------------------------------------------------------------------------------------------
# One-node MatMulNBits models


def nbits_model(shape, codes, scales, zero_points, bias, bits, attributes=None):
    """A MatMulNBits node over unsigned ``codes [N, 32 B]``, ``scales [N, B]``, ``zero_points [N, B]`` or None."""
    n, padded = codes.shape
    blocks = padded // 32
    if bits == 4:
        pairs = codes.astype(np.uint8).reshape(n, blocks, 16, 2)
        packed = pairs[..., 0] | (pairs[..., 1] << 4)
    else:
        packed = codes.astype(np.uint8).reshape(n, blocks, 32)
    initializers = {"B": packed.astype(np.uint8), "scales": scales.reshape(-1).astype(np.float32)}
    inputs = ["x", "B", "scales"]
    if zero_points is not None:
        z = zero_points.astype(np.uint8)
        if bits == 4:
            z = np.pad(z, ((0, 0), (0, blocks % 2)))
            z = z[:, 0::2] | (z[:, 1::2] << 4)
        initializers["zero_points"] = z.reshape(-1).astype(np.uint8)
        inputs.append("zero_points")
    if bias is not None:
        initializers["bias"] = bias
        inputs += [""] * (5 - len(inputs)) + ["bias"]
    attributes = {"K": shape[-1], "N": n, "bits": bits, "block_size": 32, "accuracy_level": 4, **(attributes or {})}
    node = helper.make_node("MatMulNBits", inputs, ["y"], domain="com.microsoft", **attributes)
    graph = helper.make_graph(
        [node],
        "nbits",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(v, k) for k, v in initializers.items()],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    )
    model.ir_version = 10
    return model


def activations(rng, shape):
    """Normal values, one all-zero block, and a block whose codes land on ties (k/2 · m/127 for amax m)."""
    x = rng.standard_normal(shape).astype(np.float32)
    rows = x.reshape(-1, shape[-1])
    width = min(32, shape[-1])
    rows[0, :width] = 0
    if rows.shape[0] > 1:
        rows[1, :width] = (np.arange(width) * 0.5 * (1.5 / 127)).astype(np.float32)
        rows[1, 0] = 1.5
    return rows.reshape(shape)


CASES = [  # (activation shape, N, bits, zero points, bias)
    ((1, 40), 9, 8, True, False),
    ((3, 20), 4, 8, True, True),
    ((5, 100), 7, 8, False, False),
    ((8, 128), 13, 8, True, True),
    ((17, 300), 30, 8, True, False),
    ((2, 3, 70), 6, 8, True, True),
    ((64, 33), 66, 8, False, True),
    ((4, 160), 11, 4, True, False),
    ((9, 250), 21, 4, False, True),
    ((2, 1000), 5, 4, True, True),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_one_node_models_bit_for_bit(case):
    shape, n, bits, with_zero_points, with_bias = CASES[case]
    rng = np.random.default_rng(case)
    k = shape[-1]
    blocks = -(-k // 32)
    codes = np.zeros((n, blocks * 32), np.int64)
    codes[:, :k] = rng.integers(0, 1 << bits, (n, k))
    scales = (rng.random((n, blocks)) * 0.02 + 0.001).astype(np.float32)
    zero_points = rng.integers(0, 1 << bits, (n, blocks)) if with_zero_points else None
    bias = rng.standard_normal(n).astype(np.float32) if with_bias else None
    model = nbits_model(shape, codes, scales, zero_points, bias, bits)
    x = activations(rng, shape)
    expected = session(model).run(None, {"x": x})[0]
    got = onnx_graph.run_model(model, {"x": x})["y"]
    assert moved(got, expected) == 0


def test_configurations_not_reproduced_raise():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (4, 64))
    scales = np.ones((4, 2), np.float32)
    for attributes in ({"accuracy_level": 0}, {"block_size": 64}, {"bits": 2}):
        model = nbits_model((2, 64), codes, scales, None, None, 8, attributes)
        with pytest.raises(ValueError, match="MatMulNBits is reproduced for"):
            onnx_graph.run_model(model, {"x": np.ones((2, 64), np.float32)})


# ------------------------------------------------------------------------------------------------------------------
# Which MatMuls and Gemms become MatMulNBits


K, N = 40, 24


def _weight(rng, dtype, shape):
    info = np.iinfo(dtype)
    return rng.integers(info.min, int(info.max) + 1, shape).astype(dtype)


def rewrite_case(name):
    """(nodes, initializers, activation type) of one small graph: y = MatMul/Gemm(x or DQ(x), DQ(w))."""
    rng = np.random.default_rng(1)
    node = helper.make_node
    scale = lambda shape: (rng.random(shape) * 0.01 + 0.001).astype(np.float32)  # noqa: E731
    inits = {"wq": _weight(rng, np.int8, (K, N)), "ws": scale((N,)), "wz": np.zeros(N, np.int8)}
    dq_attributes = {"axis": 1}
    activation, x_type = "x", TensorProto.FLOAT
    op, op_attributes, extra = "MatMul", {}, []
    if name == "per-tensor uint8":
        inits.update(wq=_weight(rng, np.uint8, (K, N)), ws=scale(()), wz=np.array(3, np.uint8))
    elif name == "per-channel no zero point":
        del inits["wz"]
    elif name == "per-channel axis -1":
        dq_attributes = {"axis": -1}
    elif name == "blocked 32":
        inits.update(ws=scale((2, N)), wz=np.zeros((2, N), np.int8))
        dq_attributes = {"axis": 0, "block_size": 32}
    elif name == "int16 weights":
        inits.update(wq=_weight(rng, np.int16, (K, N)), wz=np.zeros(N, np.int16))
    elif name.startswith("gemm"):
        op = "Gemm"
        if "bias" in name:
            inits["b"] = rng.standard_normal((1, N) if "2-D" in name else N).astype(np.float32)
            extra = ["b"]
        if "beta" in name:
            op_attributes = {"beta": 2.0}
        if "alpha" in name:
            op_attributes = {"alpha": 0.5}
    elif name.endswith("activations"):
        dtype = {"uint8 activations": np.uint8, "int16 activations": np.int16}[name]
        inits.update(xs=np.float32(0.02), xz=np.zeros((), dtype))
        activation, x_type = "xd", TensorProto.FLOAT
    nodes = [node("DequantizeLinear", [n for n in ("wq", "ws", "wz") if n in inits], ["w"], **dq_attributes)]
    if activation == "xd":
        nodes += [
            node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
            node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        ]
    nodes.append(node(op, [activation, "w", *extra], ["y"], **op_attributes))
    if name == "weight shared by two MatMuls":
        nodes.append(node("MatMul", ["x", "w"], ["y2"]))
    return nodes, inits, x_type


REWRITES = {  # name: whether onnxruntime 1.32 rewrites it into MatMulNBits
    "per-channel int8": True,
    "per-tensor uint8": True,
    "per-channel no zero point": True,
    "per-channel axis -1": False,
    "blocked 32": True,
    "int16 weights": False,
    "gemm": True,
    "gemm bias": True,
    "gemm 2-D bias": False,
    "gemm bias beta": False,
    "gemm alpha": False,
    "weight shared by two MatMuls": False,
    "uint8 activations": False,  # MatMulIntegerToFloat claims it first
    "int16 activations": True,
}


@pytest.mark.parametrize("name", list(REWRITES))
def test_rewrite_selection_matches_onnxruntime(tmp_path, name):
    nodes, inits, x_type = rewrite_case(name)
    outputs = [helper.make_tensor_value_info(v, TensorProto.FLOAT, None) for v in ("y", "y2") if any(v in n.output for n in nodes)]  # fmt: skip  # noqa: E501
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", x_type, [3, K])],
        outputs,
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    reference = session(model, tmp_path / "optimized.onnx")
    theirs = [node.op_type for node in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    ours = [node.op_type for node in onnx_graph.compile_model(model).nodes]
    assert ("MatMulNBits" in theirs) == REWRITES[name] == ("MatMulNBits" in ours)
    x = np.random.default_rng(2).standard_normal((3, K)).astype(np.float32)
    got = onnx_graph.run_model(model, {"x": x})
    for value, expected in zip(got.values(), reference.run(None, {"x": x})):
        if "MatMulNBits" in ours:
            assert moved(value, expected) == 0
    unoptimized = onnx_graph.compile_model(model, flavor="onnxruntime_unoptimized")
    assert "MatMulNBits" not in [node.op_type for node in unoptimized.nodes]


# ------------------------------------------------------------------------------------------------------------------
# quantize_static with int16 activations


def float_model(kind):
    rng = np.random.default_rng(11)
    node = helper.make_node
    weights = {"w0": rng.standard_normal((40, 70)) * 0.3, "w1": rng.standard_normal((70, 10)) * 0.3}
    weights["b0"] = rng.standard_normal(70) * 0.1
    if kind == "gemm":
        nodes = [node("Gemm", ["x", "w0", "b0"], ["h"]), node("Relu", ["h"], ["r"]), node("Gemm", ["r", "w1"], ["y"])]
    else:
        nodes = [
            node("MatMul", ["x", "w0"], ["m"]),
            node("Add", ["m", "b0"], ["h"]),
            node("Relu", ["h"], ["r"]),
            node("MatMul", ["r", "w1"], ["y"]),
        ]
    shape = ["N", 3, 40] if kind == "3-D" else ["N", 40]
    graph = helper.make_graph(
        nodes,
        kind,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


class _Reader(ort_quantization.CalibrationDataReader):
    def __init__(self, batches):
        self.batches = iter(batches)

    def get_next(self):
        return next(self.batches, None)


@pytest.mark.parametrize("kind", ["matmul", "gemm", "3-D"])
def test_int16_activation_models_bit_for_bit(tmp_path, kind):
    logging.getLogger().setLevel(logging.ERROR)
    shape = (32, 3, 40) if kind == "3-D" else (32, 40)
    rng = np.random.default_rng(3)
    calibration = rng.standard_normal(shape).astype(np.float32)
    source, path = str(tmp_path / "float.onnx"), str(tmp_path / "qdq.onnx")
    onnx.save(float_model(kind), source)
    ort_quantization.quantize_static(
        source,
        path,
        _Reader([{"x": calibration[i : i + 8]} for i in range(0, 32, 8)]),
        quant_format=ort_quantization.QuantFormat.QDQ,
        activation_type=ort_quantization.QuantType.QInt16,
        weight_type=ort_quantization.QuantType.QInt8,
        per_channel=True,
    )
    nodes = [node.op_type for node in onnx_graph.compile_model(path).nodes]
    assert nodes.count("MatMulNBits") == 2 and "MatMul" not in nodes and "Gemm" not in nodes
    inside = rng.standard_normal(shape).astype(np.float32)
    outside = (rng.standard_normal(shape) * 50).astype(np.float32)
    reference = session(path)
    for x in (inside, outside):
        assert moved(onnx_graph.run_model(path, {"x": x})["y"], reference.run(None, {"x": x})[0]) == 0


# ------------------------------------------------------------------------------------------------------------------
# Overridable initializers, Gemm bias shapes, operator validation


def _dq_model(nodes, inits, inputs, outputs=("y",)):
    graph = helper.make_graph(
        nodes,
        "g",
        inputs,
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return model


def _optimized_ops(model, tmp_path):
    reference = session(model, tmp_path / "optimized.onnx")
    return reference, [node.op_type for node in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]


def test_overridable_weight_initializer_is_not_rewritten(tmp_path):
    """A weight initializer that graph.input also lists may be fed: onnxruntime keeps the float MatMul and reads the
    fed value."""
    rng = np.random.default_rng(3)
    inits = {"wq": _weight(rng, np.int8, (K, N)), "ws": np.full(N, 0.01, np.float32), "wz": np.zeros(N, np.int8)}
    node = helper.make_node
    nodes = [node("DequantizeLinear", ["wq", "ws", "wz"], ["w"]), node("MatMul", ["x", "w"], ["y"])]
    for overridden in ("wq", "ws", "wz"):
        value = np.asarray(inits[overridden])
        declared = helper.make_tensor_value_info(overridden, helper.np_dtype_to_tensor_dtype(value.dtype), value.shape)
        model = _dq_model(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, K]), declared])
        reference, theirs = _optimized_ops(model, tmp_path)
        assert "MatMulNBits" not in theirs
        assert "MatMulNBits" not in [n.op_type for n in onnx_graph.compile_model(model).nodes]
        x = rng.standard_normal((3, K)).astype(np.float32)
        fed = np.zeros_like(value) if overridden != "ws" else np.full(N, 0.5, np.float32)
        for feeds in ({"x": x}, {"x": x, overridden: fed}):
            expected = reference.run(None, feeds)[0]
            got = onnx_graph.run_model(model, feeds)["y"]
            # the float MatMul is not bit-exact (module docstring of onnx_float): the fed value must be used
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def _gemm_bias_model(bias_info, extra_nodes=(), bias="b"):
    rng = np.random.default_rng(4)
    inits = {"wq": _weight(rng, np.int8, (K, N)), "ws": np.full(N, 0.01, np.float32), "wz": np.zeros(N, np.int8)}
    node = helper.make_node
    nodes = [node("DequantizeLinear", ["wq", "ws", "wz"], ["w"]), *extra_nodes, node("Gemm", ["x", "w", bias], ["y"])]
    return _dq_model(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, K]), bias_info])


def test_gemm_bias_shape_is_inferred(tmp_path):
    """A Gemm bias that is neither an initializer nor a DQ of one: its inferred shape [N] lets onnxruntime rewrite
    the Gemm into MatMulNBits, bit for bit; an undeclared shape keeps it float; one inference cannot tell raises."""
    node = helper.make_node
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, K)).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    shaped = helper.make_tensor_value_info("b", TensorProto.FLOAT, [N])
    for model in (_gemm_bias_model(shaped), _gemm_bias_model(shaped, [node("Relu", ["b"], ["rb"])], "rb")):
        reference, theirs = _optimized_ops(model, tmp_path)
        assert "MatMulNBits" in theirs and "MatMulNBits" in [n.op_type for n in onnx_graph.compile_model(model).nodes]
        assert moved(onnx_graph.run_model(model, {"x": x, "b": b})["y"], reference.run(None, {"x": x, "b": b})[0]) == 0
    for declared in ([1, N], ["n"], None):
        model = _gemm_bias_model(helper.make_tensor_value_info("b", TensorProto.FLOAT, declared))
        _, theirs = _optimized_ops(model, tmp_path)
        assert "MatMulNBits" not in theirs
        assert "MatMulNBits" not in [n.op_type for n in onnx_graph.compile_model(model).nodes]
    unknown = helper.make_tensor_value_info("b", TensorProto.FLOAT, None)
    model = _gemm_bias_model(unknown, [node("Relu", ["b"], ["rb"])], "rb")
    with pytest.raises(ValueError, match="shape of its bias 'rb' cannot be inferred"):
        onnx_graph.compile_model(model)


def _attempt(model, x):
    try:
        return session(model).run(None, {"x": x})[0]
    except Exception as error:  # onnxruntime's own refusal
        return error


def test_missing_bits_defaults_to_four():
    rng = np.random.default_rng(6)
    codes, scales = rng.integers(0, 16, (4, 64)), rng.uniform(0.01, 0.1, (4, 2)).astype(np.float32)
    model = nbits_model((2, 64), codes, scales, None, None, 4)
    bits = [a for a in model.graph.node[0].attribute if a.name == "bits"][0]
    model.graph.node[0].attribute.remove(bits)
    x = rng.standard_normal((2, 64)).astype(np.float32)
    assert moved(onnx_graph.run_model(model, {"x": x})["y"], session(model).run(None, {"x": x})[0]) == 0


@pytest.mark.parametrize("attribute", ["K", "N", "block_size"])
def test_missing_attribute_raises(attribute):
    rng = np.random.default_rng(7)
    model = nbits_model((2, 64), rng.integers(0, 16, (4, 64)), np.ones((4, 2), np.float32), None, None, 4)
    found = [a for a in model.graph.node[0].attribute if a.name == attribute][0]
    model.graph.node[0].attribute.remove(found)
    with pytest.raises(ValueError, match=f"needs the attribute.*'{attribute}'"):
        onnx_graph.compile_model(model)


WRONG_SHAPES = {  # name: (initializer index, array, message); onnxruntime refuses each at PrePack
    "scales short": (1, np.ones(7, np.float32), "scales has shape \\(7,\\).*need \\(8,\\) or \\(4, 2\\)"),
    "scales [B, N]": (1, np.ones((2, 4), np.float32), "scales has shape \\(2, 4\\)"),
    "B bytes per block": (0, np.ones((4, 2, 8), np.uint8), "B has shape \\(4, 2, 8\\).*need \\(4, 2, 16\\)"),
    "B too long": (0, np.ones((4, 2, 32), np.uint8), "B has shape \\(4, 2, 32\\)"),
    "B 2-D": (0, np.ones((4, 32), np.uint8), "B has shape \\(4, 32\\)"),
    "zero points short": (2, np.ones(1, np.uint8), "zero_points has shape \\(1,\\).*need \\(4,\\) or \\(4, 1\\)"),
    "zero points too long": (2, np.ones(8, np.uint8), "zero_points has shape \\(8,\\)"),
}


@pytest.mark.parametrize("name", list(WRONG_SHAPES))
def test_weights_of_the_wrong_shape_raise(name):
    index, array, message = WRONG_SHAPES[name]
    rng = np.random.default_rng(8)
    codes, scales = rng.integers(0, 16, (4, 64)), rng.uniform(0.01, 0.1, (4, 2)).astype(np.float32)
    model = nbits_model((2, 64), codes, scales, rng.integers(0, 16, (4, 2)), None, 4)
    initializer = model.graph.initializer[index]
    initializer.CopyFrom(numpy_helper.from_array(array, initializer.name))
    assert isinstance(_attempt(model, np.ones((2, 64), np.float32)), Exception)
    with pytest.raises(ValueError, match=message):
        onnx_graph.compile_model(model)


@pytest.mark.parametrize("which", ["B", "scales", "zero_points"])
@pytest.mark.parametrize("overridable", [False, True])
def test_weights_that_are_not_constants_raise(which, overridable):
    """Weights fed at run time (onnxruntime runs another, unprepacked kernel) are refused before tracing."""
    rng = np.random.default_rng(9)
    model = nbits_model((3, 64), rng.integers(0, 256, (5, 64)), np.ones((5, 2), np.float32), np.ones((5, 2)), None, 8)
    initializer = [t for t in model.graph.initializer if t.name == which][0]
    shape = list(numpy_helper.to_array(initializer).shape)
    if not overridable:
        model.graph.initializer.remove(initializer)
    model.graph.input.append(helper.make_tensor_value_info(which, initializer.data_type, shape))
    with pytest.raises(ValueError, match=f"'{which}' must be constant.*prepacked constant weights"):
        onnx_graph.compile_model(model)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("k", [20, 40, 50, 64, 100])
def test_nan_activations_bit_for_bit(k, bits):
    """A NaN at every position of ``K`` (one per row; full blocks and tails of at most or more than 16 values):
    skipped, knocking out the value it is compared with, or making its row NaN, as MLAS's vmaxps steps do."""
    rng = np.random.default_rng(k + bits)
    blocks, n = -(-k // 32), 6
    codes = rng.integers(0, 1 << bits, (n, 32 * blocks))
    scales = rng.uniform(0.001, 0.1, (n, blocks)).astype(np.float32)
    model = nbits_model((k, k), codes, scales, rng.integers(0, 1 << bits, (n, blocks)), None, bits)
    x = rng.standard_normal((k, k)).astype(np.float32)
    x[np.arange(k), np.arange(k)] = np.nan
    x[0, 1], x[1, 5] = np.nan, np.inf
    expected = session(model).run(None, {"x": x})[0]
    assert np.isnan(expected).any(axis=1).sum() < k - 1  # most rows stay finite
    assert moved(onnx_graph.run_model(model, {"x": x})["y"], expected) == 0
