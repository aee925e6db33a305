"""Tests for quantref.ptq: weight/bias/activation quantization of the folded CNN and fake-quant accuracy."""

import jax.numpy as jnp
import numpy as np
import pytest

from quantref import correction, ptq, ranges


def test_weights_are_narrow_symmetric_per_channel(qmodel, params):
    for name, out in (("conv1", 16), ("conv2", 32), ("dense", 10)):
        layer = getattr(qmodel, name)
        assert layer.kernel.dtype == jnp.int8 and layer.kernel_scale.shape == (out,)
        codes = np.asarray(layer.kernel)
        assert codes.min() >= -127 and codes.max() <= 127
        # Abs-max lands on ±127 in every channel.
        assert np.all(np.abs(codes).reshape(-1, out).max(axis=0) == 127)
        kernel = np.asarray(getattr(params, f"{name}_kernel"))
        scale = np.asarray(layer.kernel_scale)
        assert np.max(np.abs(codes * scale - kernel)) <= scale.max() / 2 * (1 + 1e-6)


def test_bias_is_int32_with_product_scale(qmodel, params):
    input_scale = {"conv1": qmodel.input.scale, "conv2": qmodel.conv1_output.scale, "dense": qmodel.conv2_output.scale}
    for name in ("conv1", "conv2", "dense"):
        layer = getattr(qmodel, name)
        assert layer.bias.dtype == jnp.int32
        bias_scale = np.float32(input_scale[name]) * np.asarray(layer.kernel_scale, np.float32)
        expected = np.round(np.asarray(getattr(params, f"{name}_bias"), np.float32) / bias_scale)
        np.testing.assert_array_equal(np.asarray(layer.bias), expected.astype(np.int32))


def test_activation_parameters(qmodel):
    assert qmodel.activation_format.name == "uint8"
    # Post-ReLU ranges start at 0, so their zero point is the bottom of the grid.
    assert int(qmodel.conv1_output.zero_point) == 0 and int(qmodel.conv2_output.zero_point) == 0
    assert int(qmodel.input.zero_point) == 0
    assert np.isclose(float(qmodel.input.scale), 1 / 255)  # the input is in [0, 1]
    assert 0 < int(qmodel.logits.zero_point) < 255  # logits have both signs


def test_w8a8_per_channel_accuracy_drop(qmodel, params, splits):
    float_logits, _ = correction.folded_forward(params, jnp.asarray(splits.x_test))
    logits, _ = ptq.fake_quant_forward(qmodel, jnp.asarray(splits.x_test))
    drop = ptq.accuracy(float_logits, splits.y_test) - ptq.accuracy(logits, splits.y_test)
    assert drop <= 0.005


def test_fake_quant_activations_are_on_the_grid(qmodel, splits):
    _, activations = ptq.fake_quant_forward(qmodel, jnp.asarray(splits.x_test[:8]))
    for point in correction.ACTIVATION_POINTS:
        quant = qmodel.activation(point)
        codes = np.asarray(activations[point]) / float(quant.scale) + int(quant.zero_point)
        np.testing.assert_allclose(codes, np.round(codes), atol=1e-3)


def test_signed_activations_and_an_observer_object(params, splits):
    qmodel = ptq.quantize_model(params, splits.x_calib, activation_signed=True, observer=ranges.min_max())
    assert qmodel.activation_format.name == "int8"
    assert int(qmodel.conv1_output.zero_point) == -128


def test_accuracy_table_rows(params, splits):
    rows = ptq.accuracy_table(
        params, splits.x_calib, splits.x_test, splits.y_test, bit_widths=((8, 8), (4, 8)), observers=("min_max",)
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
    ],
)
def test_bad_arguments(params, splits, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ptq.quantize_model(params, splits.x_calib, **kwargs)


def test_bad_calibration_data(params):
    with pytest.raises(ValueError, match="calibration_x"):
        ptq.quantize_model(params, np.zeros((0, 8, 8, 1), np.float32))


def test_dead_channel_bias_saturates_instead_of_wrapping(params, splits):
    # A channel with all-zero weights but a bias gets the floor scale (float32 eps), so its bias code is far beyond
    # int32: it must saturate at +(2**31 - 1), keeping its sign, not wrap to -2**31.
    kernel = np.asarray(params.conv1_kernel).copy()
    kernel[..., 0] = 0.0
    bias = np.asarray(params.conv1_bias).copy()
    bias[0] = 2.0
    dead = params._replace(conv1_kernel=jnp.asarray(kernel), conv1_bias=jnp.asarray(bias))
    quantized = ptq.quantize_model(dead, splits.x_calib)
    assert int(quantized.conv1.bias[0]) == 2**31 - 1
