"""Tests for quantref.export.onnx: onnxruntime runs the exported int8 graph exactly as quantref predicts."""

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from quantref import correction, data, integer, ptq, train  # noqa: E402
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
def exported(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("export")
    return export_onnx.export_onnx(out_dir)


@pytest.fixture(scope="module")
def qmodel():
    params = correction.fold_batch_norm(train.load_or_train(progress=False))
    return ptq.quantize_model(params, data.load_splits().x_calib)


@pytest.mark.parametrize("level", LEVELS)
def test_onnxruntime_equals_expected_bitwise(exported, level):
    x = np.load(exported["test_inputs"])["x"]
    expected = np.load(exported["expected"])["logits"]
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
        expected = np.asarray(integer.integer_forward(qmodel, rescale, x).logits)
        np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32), err_msg=name)


def test_signed_activations_export_exactly(qmodel):
    params = correction.fold_batch_norm(train.load_or_train(progress=False))
    signed = ptq.quantize_model(params, data.load_splits().x_calib, activation_signed=True)
    x = np.concatenate(list(_far_inputs().values()))
    got = _session(export_onnx.quantized_model_proto(signed), "enable_all").run(None, {"x": x})[0]
    expected = np.asarray(integer.integer_forward(signed, integer.multipliers(signed), x).logits)
    np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))


def test_size_and_accuracy(exported):
    model_bytes, float_bytes = exported["model"].stat().st_size, exported["float"].stat().st_size
    assert float_bytes / model_bytes >= 3.5
    inputs = np.load(exported["test_inputs"])
    x, y = inputs["x"], inputs["y"]
    int8_accuracy = ptq.accuracy(_session(str(exported["model"]), "enable_all").run(None, {"x": x})[0], y)
    float_accuracy = ptq.accuracy(_session(str(exported["float"]), "enable_all").run(None, {"x": x})[0], y)
    assert float_accuracy - int8_accuracy <= 0.005


def test_float_model_matches_flax(exported):
    x = np.load(exported["test_inputs"])["x"]
    model = train.load_or_train(progress=False)
    np.testing.assert_allclose(
        _session(str(exported["float"]), "disable_all").run(None, {"x": x})[0],
        np.asarray(model(x)),
        rtol=1e-4,
        atol=1e-4,
    )


def test_graph_uses_standard_qoperators(exported):
    import onnx

    model = onnx.load(exported["model"])
    assert {opset.domain for opset in model.opset_import} == {""}
    ops = [node.op_type for node in model.graph.node]
    assert ops[0] == "QuantizeLinear" and ops[-1] == "DequantizeLinear"
    assert ops.count("QLinearConv") == 3 and "MaxPool" in ops and "Relu" not in ops


def test_test_inputs_are_the_test_split(exported):
    inputs = np.load(exported["test_inputs"])
    splits = data.load_splits()
    np.testing.assert_array_equal(inputs["x"], splits.x_test)
    np.testing.assert_array_equal(inputs["y"], splits.y_test)


def test_refuses_non_empty_directory_unless_forced(exported):
    out_dir = exported["model"].parent
    with pytest.raises(ValueError, match="not empty"):
        export_onnx.export_onnx(out_dir)
    before = exported["model"].read_bytes()
    export_onnx.export_onnx(out_dir, force=True)
    assert exported["model"].read_bytes() == before  # deterministic


def test_refuses_a_file(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(ValueError, match="directory"):
        export_onnx.export_onnx(path)


def test_refuses_sub_8_bit_models():
    params = correction.fold_batch_norm(train.load_or_train(progress=False))
    w4 = ptq.quantize_model(params, data.load_splits().x_calib, weight_bits=4)
    with pytest.raises(ValueError, match="8-bit"):
        export_onnx.quantized_model_proto(w4)


def test_refuses_a_relu_zero_point_off_the_bottom(qmodel):
    import dataclasses

    shifted = dataclasses.replace(qmodel, conv1_output=ptq.ActivationQuant(qmodel.conv1_output.scale, np.int32(5)))
    with pytest.raises(ValueError, match="zero_point"):
        export_onnx.quantized_model_proto(shifted)
