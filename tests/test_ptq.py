"""Tests for quantref.ptq: weight/bias/activation quantization of the folded CNN and fake-quant accuracy."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from quantref import integer, nn, ptq, ranges

LAYERS = {"conv1": 16, "conv2": 32, "dense": 10}


def test_layers_and_activations_are_named_by_path(qmodel):
    assert list(qmodel.layers) == ["conv1", "conv2", "dense"]
    assert list(qmodel.activations) == ["conv1.input", "conv2.input", "dense.input", "dense.output"]


def test_weights_are_narrow_symmetric_per_channel(qmodel, folded):
    for path, out in LAYERS.items():
        layer = qmodel.layers[path]
        assert layer.kernel.dtype == jnp.int8 and layer.kernel_scale.shape == (out,)
        codes = np.asarray(layer.kernel)
        assert codes.min() >= -127 and codes.max() <= 127
        # Abs-max lands on ±127 in every channel.
        assert np.all(np.abs(codes).reshape(-1, out).max(axis=0) == 127)
        kernel = np.asarray(nn.get_module(folded, path).kernel[...])
        scale = np.asarray(layer.kernel_scale)
        assert np.max(np.abs(codes * scale - kernel)) <= scale.max() / 2 * (1 + 1e-6)


def test_bias_is_int32_with_product_scale(qmodel, folded):
    for path in LAYERS:
        layer = qmodel.layers[path]
        assert layer.bias.dtype == jnp.int32
        input_scale = qmodel.activations[f"{path}.input"].scale
        bias_scale = np.float32(input_scale) * np.asarray(layer.kernel_scale, np.float32)
        expected = np.round(np.asarray(nn.get_module(folded, path).bias[...], np.float32) / bias_scale)
        np.testing.assert_array_equal(np.asarray(layer.bias), expected.astype(np.int32))


def test_activation_parameters(qmodel):
    acts = qmodel.activations
    assert qmodel.activation_format.name == "uint8"
    # Post-ReLU ranges start at 0, so their zero point is the bottom of the grid.
    assert int(acts["conv2.input"].zero_point) == 0 and int(acts["dense.input"].zero_point) == 0
    assert int(acts["conv1.input"].zero_point) == 0
    assert np.isclose(float(acts["conv1.input"].scale), 1 / 255)  # the input is in [0, 1]
    assert 0 < int(acts["dense.output"].zero_point) < 255  # logits have both signs
    # In a chain, a layer's output is requantized to the next layer's input grid; the last to its own.
    assert qmodel.output_activation("conv1") is acts["conv2.input"]
    assert qmodel.output_activation("dense") is acts["dense.output"]


def test_w8a8_per_channel_accuracy_drop(qmodel, folded, splits):
    float_logits = folded(jnp.asarray(splits.x_test))
    logits, _ = ptq.fake_quant_forward(folded, qmodel, splits.x_test)
    drop = ptq.accuracy(float_logits, splits.y_test) - ptq.accuracy(logits, splits.y_test)
    assert drop <= 0.005


def test_fake_quant_activations_are_on_the_grid(qmodel, folded, splits):
    _, activations = ptq.fake_quant_forward(folded, qmodel, splits.x_test[:8])
    for name, quant in qmodel.activations.items():
        codes = np.asarray(activations[name]) / float(quant.scale) + int(quant.zero_point)
        np.testing.assert_allclose(codes, np.round(codes), atol=1e-3)


def test_fake_quant_weights_are_the_dequantized_codes(qmodel, folded):
    simulated = ptq.fake_quant_model(folded, qmodel)
    for path, layer in qmodel.layers.items():
        wrapped = nn.get_module(simulated, path)
        assert isinstance(wrapped, nn.QuantLayer)
        expected = np.asarray(layer.kernel, np.float32) * np.asarray(layer.kernel_scale)
        np.testing.assert_array_equal(np.asarray(wrapped.effective_kernel()), expected)
    # The float model is left alone.
    assert not isinstance(folded.conv1, nn.QuantLayer)


def test_signed_activations_and_an_observer_object(folded, splits):
    qmodel = ptq.quantize_model(folded, splits.x_calib, activation_signed=True, observer=ranges.min_max())
    assert qmodel.activation_format.name == "int8"
    assert int(qmodel.activations["conv2.input"].zero_point) == -128


def test_select_and_skip_leave_layers_in_float(folded, splits):
    qmodel = ptq.quantize_model(folded, splits.x_calib, skip="dense")
    assert list(qmodel.layers) == ["conv1", "conv2"]
    simulated = ptq.fake_quant_model(folded, qmodel)
    assert isinstance(simulated.dense, nnx.Linear) and isinstance(simulated.conv2, nn.QuantLayer)
    only = ptq.quantize_model(folded, splits.x_calib, select="conv*")
    assert list(only.layers) == ["conv1", "conv2"]


def test_unfolded_batch_norm_is_refused(model, splits):
    with pytest.raises(ValueError, match="BatchNorm 'bn1' follows layer 'conv1'.*fold_batch_norm"):
        ptq.quantize_model(model, splits.x_calib)


def test_accuracy_table_rows(folded, splits):
    rows = ptq.accuracy_table(
        folded, splits.x_calib, splits.x_test, splits.y_test, bit_widths=((8, 8), (4, 8)), observers=("min_max",)
    )
    assert [(r["config"], r["weights"]) for r in rows] == [
        ("float32", "-"),
        ("W8A8", "per-channel"),
        ("W8A8", "per-tensor"),
        ("W4A8", "per-channel"),
        ("W4A8", "per-tensor"),
    ]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows)
    assert rows[1]["accuracy"] >= rows[0]["accuracy"] - 0.005


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"weight_bits": 9}, "weight_bits"),
        ({"activation_bits": 1}, "activation_bits"),
        ({"observer": "bogus"}, "observer"),
        ({"activation_ranges": {"conv1.input": (0.0, 1.0)}}, "activation_ranges"),
        ({"select": "nothing*"}, "no conv or dense layer"),
    ],
)
def test_bad_arguments(folded, splits, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ptq.quantize_model(folded, splits.x_calib, **kwargs)


def test_bad_calibration_data(folded):
    with pytest.raises(ValueError, match="calibration_x"):
        ptq.quantize_model(folded, np.zeros((0, 8, 8, 1), np.float32))
    with pytest.raises(TypeError, match="calibration_x"):
        ptq.quantize_model(folded, None)


def test_dead_channel_bias_saturates_instead_of_wrapping(folded, splits):
    # A channel with all-zero weights but a bias gets the floor scale (float32 eps), so its bias code is far beyond
    # int32: it must saturate at +(2**31 - 1), keeping its sign, not wrap to -2**31.
    dead = nnx.clone(folded)
    dead.conv1.kernel[..., 0] = 0.0
    dead.conv1.bias[0] = 2.0
    quantized = ptq.quantize_model(dead, splits.x_calib)
    assert int(quantized.layers["conv1"].bias[0]) == 2**31 - 1


def test_from_fake_quant_reads_back_the_quantized_model(qmodel, folded, splits):
    simulated = ptq.fake_quant_model(folded, qmodel)
    read = ptq.from_fake_quant(simulated, splits.x_calib[:1])
    assert read.weight_format == qmodel.weight_format and read.activation_format == qmodel.activation_format
    assert set(read.activations) == set(qmodel.activations)
    for name, quant in qmodel.activations.items():
        assert float(read.activations[name].scale) == float(quant.scale)
        assert int(read.activations[name].zero_point) == int(quant.zero_point)
    for path, layer in qmodel.layers.items():
        for field in ("kernel", "kernel_scale", "bias"):
            np.testing.assert_array_equal(getattr(read.layers[path], field), getattr(layer, field))


def test_from_fake_quant_needs_quantizers(folded, splits):
    with pytest.raises(ValueError, match="'conv1' must be a QuantLayer"):
        ptq.from_fake_quant(folded, splits.x_calib[:1])


def test_fake_quant_model_computes_with_the_quantized_models_own_codes(qmodel, folded, splits):
    # Codes that round-to-nearest would not choose (as AdaRound or GPTQ may): the simulation must use them.
    codes = np.asarray(qmodel.layers["conv2"].kernel).astype(np.int32)
    moved = np.clip(codes + np.where(codes % 2 == 0, 1, -1), -127, 127)
    scale = qmodel.layers["conv2"].kernel_scale
    changed = ptq.with_weights(folded, qmodel, kernels={"conv2": (moved, scale)})
    np.testing.assert_array_equal(changed.layers["conv2"].kernel, moved.astype(np.int8))
    np.testing.assert_array_equal(changed.layers["conv2"].bias, qmodel.layers["conv2"].bias)  # same bias grid
    simulated = ptq.fake_quant_model(folded, changed)
    np.testing.assert_array_equal(simulated.conv2.effective_kernel(), moved.astype(np.float32) * np.asarray(scale))
    # ... and the integer path, which computes with the codes, agrees with it on every prediction.
    fake, _ = ptq.fake_quant_forward(folded, changed, splits.x_test)
    out = integer.integer_forward(changed, integer.multipliers(changed), splits.x_test)
    assert np.mean(np.argmax(fake, 1) == np.argmax(out.output, 1)) >= 0.99


def test_quantize_bias_saturates_and_rounds_half_to_even():
    codes = ptq.quantize_bias(np.array([2.5, 3.5, -2.5, 1e30, -1e30], np.float32), np.float32(1.0))
    np.testing.assert_array_equal(codes, [2, 4, -2, 2**31 - 1, -(2**31 - 1)])
