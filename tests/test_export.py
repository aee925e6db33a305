"""Tests for quantref.export.onnx: onnxruntime runs the exported int8 graph exactly as quantref predicts."""

import dataclasses

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime", reason="the export tests run the graph in onnxruntime (test extra)")
onnx = pytest.importorskip("onnx", reason="the export writes ONNX (test extra)")

from quantref import integer, ptq  # noqa: E402
from quantref.export import onnx as export_onnx  # noqa: E402

LEVELS = {
    "disable_all": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "enable_all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def _session(model, level):
    options = ort.SessionOptions()
    options.graph_optimization_level = LEVELS[level]
    source = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def exported(tmp_path_factory, qmodel, folded, splits):
    out_dir = tmp_path_factory.mktemp("export")
    return export_onnx.export_onnx(qmodel, out_dir, test_x=splits.x_test, test_y=splits.y_test, float_model=folded)


@pytest.mark.parametrize("level", LEVELS)
def test_onnxruntime_equals_expected_bitwise(exported, level):
    x = np.load(exported["test_inputs"])["x"]
    expected = np.load(exported["expected"])["output"]
    got = _session(str(exported["model"]), level).run(None, {"x": x})[0]
    assert got.dtype == np.float32 and got.shape == (300, 10)
    np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))


def _far_inputs():
    rng = np.random.default_rng(0)
    return {
        "noise": rng.uniform(-2, 3, (32, 8, 8, 1)).astype(np.float32),
        "normal": rng.normal(0.5, 2.0, (32, 8, 8, 1)).astype(np.float32),
        "zeros": np.zeros((2, 8, 8, 1), np.float32),
        "max": np.ones((2, 8, 8, 1), np.float32),
        "saturating": np.array([1e9, -1e9, 300.0, -7.0, np.inf, -np.inf], np.float32)[:, None, None, None]
        * np.ones((6, 8, 8, 1), np.float32),
        "one_image": np.full((1, 8, 8, 1), 0.5, np.float32),
    }


@pytest.mark.parametrize("level", LEVELS)
def test_onnxruntime_equals_integer_path_far_from_the_test_set(qmodel, level):
    session = _session(export_onnx.quantized_model_proto(qmodel), level)
    rescale = integer.multipliers(qmodel, "onnxruntime")
    for name, x in _far_inputs().items():
        got = session.run(None, {"x": x})[0]
        expected = np.asarray(integer.integer_forward(qmodel, rescale, x).output)
        np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32), err_msg=name)


def test_signed_activations_export_exactly(folded, splits):
    signed = ptq.quantize_model(folded, splits.x_calib, activation_signed=True)
    x = np.concatenate(list(_far_inputs().values()))
    got = _session(export_onnx.quantized_model_proto(signed), "enable_all").run(None, {"x": x})[0]
    expected = np.asarray(integer.integer_forward(signed, integer.multipliers(signed), x).output)
    np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))


def test_size_and_accuracy(exported):
    model_bytes, float_bytes = exported["model"].stat().st_size, exported["float"].stat().st_size
    assert float_bytes / model_bytes >= 3.3
    inputs = np.load(exported["test_inputs"])
    x, y = inputs["x"], inputs["y"]
    int8_accuracy = ptq.accuracy(_session(str(exported["model"]), "enable_all").run(None, {"x": x})[0], y)
    float_accuracy = ptq.accuracy(_session(str(exported["float"]), "enable_all").run(None, {"x": x})[0], y)
    assert float_accuracy - int8_accuracy <= 0.005


def test_float_model_matches_flax(exported, model):
    x = np.load(exported["test_inputs"])["x"]
    np.testing.assert_allclose(
        _session(str(exported["float"]), "disable_all").run(None, {"x": x})[0],
        np.asarray(model(x)),
        rtol=1e-4,
        atol=1e-4,
    )


def test_graph_uses_standard_qoperators_and_pipeline_names(exported):
    model = onnx.load(exported["model"])
    assert {opset.domain for opset in model.opset_import} == {""}
    ops = [node.op_type for node in model.graph.node]
    assert ops == [
        "QuantizeLinear",
        "Transpose",
        "QLinearConv",
        "QLinearConv",
        "MaxPool",
        "QLinearConv",
        "Flatten",
        "DequantizeLinear",
    ]
    names = {tensor.name for tensor in model.graph.initializer}
    assert {"conv1.kernel", "conv2.input.scale", "dense.input.zero_point", "dense.output.scale"} <= names


def test_test_inputs_are_the_test_split(exported, splits):
    inputs = np.load(exported["test_inputs"])
    np.testing.assert_array_equal(inputs["x"], splits.x_test)
    np.testing.assert_array_equal(inputs["y"], splits.y_test)


def test_refuses_non_empty_directory_unless_forced_and_keeps_other_files(exported, qmodel, splits, folded):
    out_dir = exported["model"].parent
    (out_dir / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        export_onnx.export_onnx(qmodel, out_dir, test_x=splits.x_test)
    before = exported["model"].read_bytes()
    export_onnx.export_onnx(qmodel, out_dir, test_x=splits.x_test, test_y=splits.y_test, float_model=folded, force=True)
    assert exported["model"].read_bytes() == before  # deterministic
    assert (out_dir / "notes.txt").read_text() == "mine"
    assert not [p for p in out_dir.parent.iterdir() if p.name.startswith(".quantref-")]


def test_refuses_a_file(tmp_path, qmodel, splits):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(ValueError, match="directory"):
        export_onnx.export_onnx(qmodel, path, test_x=splits.x_test)
    with pytest.raises(ValueError, match="under the file"):
        export_onnx.export_onnx(qmodel, path / "below", test_x=splits.x_test)


@pytest.mark.parametrize("bits", [(4, 4), (4, 8), (8, 3), (2, 8)])
@pytest.mark.parametrize("signed", [False, True])
def test_narrower_grids_export_exactly(folded, splits, bits, signed):
    weight_bits, activation_bits = bits
    narrow = ptq.quantize_model(
        folded, splits.x_calib, weight_bits=weight_bits, activation_bits=activation_bits, activation_signed=signed
    )
    x = np.concatenate([splits.x_test, *_far_inputs().values()])
    got = _session(export_onnx.quantized_model_proto(narrow), "enable_all").run(None, {"x": x})[0]
    expected = np.asarray(integer.integer_forward(narrow, integer.multipliers(narrow), x).output)
    np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))
    fmt = narrow.activation_format
    codes = np.round(expected / float(narrow.activations["dense.output"].scale)) + int(
        narrow.activations["dense.output"].zero_point
    )
    assert codes.min() >= fmt.qmin and codes.max() <= fmt.qmax  # the Clip nodes keep the narrow grid


def test_refuses_a_relu_zero_point_off_the_bottom(qmodel):
    activations = dict(qmodel.activations)
    activations["conv2.input"] = ptq.ActivationQuant(activations["conv2.input"].scale, np.int32(5))
    shifted = dataclasses.replace(qmodel, activations=activations)
    with pytest.raises(ValueError, match="zero point of conv1's output"):
        export_onnx.quantized_model_proto(shifted)
