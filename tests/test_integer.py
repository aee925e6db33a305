"""Tests for quantref.integer: the TFLite fixed-point primitives it uses against an independent Python-integer
transcription, and the integer-only CNN in every mode against an independent numpy implementation (int64, and
float64 where LiteRT uses double: tests/litert_reference.py) and against the fake-quant simulation."""

import dataclasses

import jax.numpy as jnp
import litert_reference as reference
import numpy as np
import pytest

from quantref import integer, ptq
from quantref.runtimes import litert, tflite

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


# --- slow references in Python / numpy int64 ---------------------------------------------------------------------


def _srdhm_reference(a: int, b: int) -> int:
    if a == b == INT32_MIN:
        return INT32_MAX
    product = a * b
    total = product + ((1 << 30) if product >= 0 else 1 - (1 << 30))
    return total // (1 << 31) if total >= 0 else -((-total) // (1 << 31))  # C++ division truncates


def _rdbpot_reference(x: int, exponent: int) -> int:
    mask = (1 << exponent) - 1
    return (x >> exponent) + int((x & mask) > (mask >> 1) + int(x < 0))


def _mbqm_reference_np(acc: np.ndarray, quantized: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """MultiplyByQuantizedMultiplier in numpy int64 (shifts <= 0 only, as in the model)."""
    acc, quantized, shift = (np.asarray(v, np.int64) for v in (acc, quantized, shift))
    assert np.all(shift <= 0)
    product = acc * quantized
    total = product + np.where(product >= 0, 1 << 30, 1 - (1 << 30))
    high = np.where(total >= 0, total // (1 << 31), -((-total) // (1 << 31)))
    exponent = -shift
    mask = (np.int64(1) << exponent) - 1
    return (high >> exponent) + ((high & mask) > (mask >> 1) + (high < 0)).astype(np.int64)


def _conv_np(codes, zero_point, kernel, bias):
    x = codes.astype(np.int64) - int(zero_point)
    x = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))  # zero padding in the zero-point-subtracted domain
    windows = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(1, 2))  # (N, H, W, C, 3, 3)
    return np.einsum("nhwcij,ijco->nhwo", windows, np.asarray(kernel, np.int64)) + np.asarray(bias, np.int64)


#: The LiteRT kernel set each TFLite mode predicts.
_KERNEL_SETS = {"tflite": "reference", "tflite-optimized": "optimized", "tflite-xnnpack": "xnnpack"}


def _quantize_np(x, quant, fmt, mode):
    scale, zp = np.float32(quant.scale), int(quant.zero_point)
    if mode == "onnxruntime":  # QuantizeLinear: a float32 division, half to even
        with np.errstate(invalid="ignore"):
            codes = np.rint(np.asarray(x, np.float32) / scale)
        return np.clip(np.nan_to_num(codes, nan=fmt.qmin - zp) + zp, fmt.qmin, fmt.qmax).astype(np.int64)
    return reference.quantize(x, scale, zp, _KERNEL_SETS[mode], fmt.qmin, fmt.qmax)


def _requant_np(acc, mode, kind, scales, zero_point, qmin, qmax):
    method = "float32" if mode == "onnxruntime" else reference.LAYER_REQUANTIZATION[_KERNEL_SETS[mode]][kind]
    return reference.requantize(acc, method, *scales, zero_point, qmin, qmax)


def _dequantize_np(codes, quant, mode):
    kernels = "reference" if mode == "onnxruntime" else _KERNEL_SETS[mode]  # both round (q - z)·s once
    return reference.dequantize(codes, quant.scale, quant.zero_point, kernels)


def _integer_forward_np(qmodel, mode, x):
    """The digits CNN's integer path in numpy, written out by hand (conv1, conv2, pool, dense): codes and output."""
    fmt, acts, layers = qmodel.activation_format, qmodel.activations, qmodel.layers
    codes = _quantize_np(x, acts["conv1.input"], fmt, mode)

    def scales(path, out):
        return (acts[f"{path}.input"].scale, np.asarray(layers[path].kernel_scale), acts[out].scale)

    for path, out in (("conv1", "conv2.input"), ("conv2", "dense.input")):
        acc = _conv_np(codes, acts[f"{path}.input"].zero_point, layers[path].kernel, layers[path].bias)
        out_zp = int(acts[out].zero_point)
        codes = _requant_np(acc, mode, "conv", scales(path, out), out_zp, max(fmt.qmin, out_zp), fmt.qmax)
    n = codes.shape[0]
    pooled = codes.reshape(n, 4, 2, 4, 2, 32).max(axis=(2, 4)).reshape(n, -1)
    acc = (pooled - int(acts["dense.input"].zero_point)) @ np.asarray(layers["dense"].kernel, np.int64)
    acc = acc + np.asarray(layers["dense"].bias, np.int64)
    out = acts["dense.output"]
    codes = _requant_np(acc, mode, "dense", scales("dense", "dense.output"), out.zero_point, fmt.qmin, fmt.qmax)
    return codes, _dequantize_np(codes, out, mode)


# --- fixed-point primitives --------------------------------------------------------------------------------------


def test_quantize_multiplier_known_values():
    values = np.array([1.0, 0.5, 0.25, 0.0, 1e-12, 0.9999999999, 0.75, 2.0])
    quantized, shift = tflite.quantize_multiplier_array(values)
    assert quantized.tolist() == [2**30, 2**30, 2**30, 0, 0, 2**30, 3 * 2**29, 2**30]
    assert shift.tolist() == [1, 0, -1, 0, 0, 1, 0, 2]
    exact = quantized.astype(np.float64) * 2.0 ** (shift.astype(np.float64) - 31)
    np.testing.assert_allclose(exact, values, rtol=2**-30, atol=1e-12)


def _int32_samples(rng, count):
    edges = np.array(
        [0, 1, -1, 2, -2, INT32_MAX, INT32_MIN, INT32_MIN + 1, 2**30, -(2**30), 46341, -46341, 65535, 65536]
    )
    return np.concatenate([edges, rng.integers(INT32_MIN, INT32_MAX, count, endpoint=True)]).astype(np.int32)


def test_srdhm_matches_python_integers():
    rng = np.random.default_rng(0)
    a = _int32_samples(rng, 400)
    b = _int32_samples(rng, 400)
    a, b = np.meshgrid(a, b[:60])
    got = np.asarray(tflite.saturating_rounding_doubling_high_mul(a, b))
    expected = np.vectorize(_srdhm_reference, otypes=[np.int64])(a.astype(np.int64), b.astype(np.int64))
    np.testing.assert_array_equal(got, expected)


def test_srdhm_saturates_only_at_int32_min_squared():
    assert int(tflite.saturating_rounding_doubling_high_mul(INT32_MIN, INT32_MIN)) == INT32_MAX
    assert int(tflite.saturating_rounding_doubling_high_mul(INT32_MIN, INT32_MAX)) == -INT32_MAX


def test_rounding_divide_by_pot_matches_python_integers():
    rng = np.random.default_rng(1)
    x = _int32_samples(rng, 300)
    for exponent in (0, 1, 2, 5, 17, 30, 31):
        got = np.asarray(tflite.rounding_divide_by_pot(x, exponent))
        expected = [_rdbpot_reference(int(v), exponent) for v in x]
        np.testing.assert_array_equal(got, expected)
    # Ties go away from zero.
    np.testing.assert_array_equal(
        np.asarray(tflite.rounding_divide_by_pot(np.array([6, -6, 2, -2], np.int32), 2)), [2, -2, 1, -1]
    )


def test_mbqm_within_one_of_exact_rounding():
    rng = np.random.default_rng(2)
    acc = rng.integers(-(2**24), 2**24, 2000).astype(np.int32)
    quantized, shift = tflite.quantize_multiplier_array(rng.uniform(1e-4, 0.99, 2000))
    got = np.asarray(tflite.multiply_by_quantized_multiplier(acc, quantized, shift)).astype(np.int64)
    np.testing.assert_array_equal(got, _mbqm_reference_np(acc, quantized, shift))
    exact = acc.astype(np.float64) * quantized * 2.0 ** (shift.astype(np.float64) - 31)
    assert np.max(np.abs(got - exact)) <= 0.75 + 1e-9


def test_onnxruntime_requantize_rounds_before_adding_the_zero_point():
    acc = jnp.array([1, 3, 5, -1, -3, 7], jnp.int32)
    multiplier = integer.FloatMultiplier(jnp.float32(0.5))
    # 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -0.5 -> 0, -1.5 -> -2, 3.5 -> 4 (half to even), then + 3.
    got = integer.requantize(acc, multiplier, jnp.int32(3), 0, 255)
    np.testing.assert_array_equal(np.asarray(got), [3, 5, 5, 3, 1, 7])
    np.testing.assert_array_equal(
        np.asarray(integer.requantize(acc, multiplier, jnp.int32(3), 4, 6)), [4, 5, 5, 4, 4, 6]
    )


def test_each_multiplier_type_requantizes_as_its_runtime():
    """M = 1/4 on accumulators around the ties: the four rules of the four multiplier types, side by side."""
    acc = jnp.array([-10, -6, -3, -2, 1, 2, 6, 10], jnp.int32)  # acc / 4: -2.5 -1.5 -0.75 -0.5 0.25 0.5 1.5 2.5
    quantized, shift = tflite.quantize_multiplier(0.25)
    rules = {
        "float32": integer.FloatMultiplier(jnp.float32(0.25)),  # half to even
        "gemmlowp": integer.FixedPointMultiplier(jnp.int32(quantized), jnp.int32(shift)),
        "ruy": integer.RuyMultiplier(jnp.int32(quantized), jnp.int32(shift)),
        "float64": litert.encode_float64(0.25),  # an integer.Float64Multiplier: half away from zero
    }
    got = {name: np.asarray(integer.requantize(acc, m, jnp.int32(0), -128, 127)).tolist() for name, m in rules.items()}
    assert got["float32"] == [-2, -2, -1, 0, 0, 0, 2, 2]
    assert got["float64"] == [-3, -2, -1, -1, 0, 1, 2, 3]
    # The fixed-point rules round twice (the high multiply, then the shift): 0.25 -> 1 and -0.75 -> 0 can happen.
    assert got["gemmlowp"] == [-3, -2, -1, -1, 1, 1, 2, 3]
    assert got["ruy"] == [-2, -1, 0, 0, 1, 1, 2, 3]


# --- the network -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qmodel_signed(folded, splits):
    return ptq.quantize_model(folded, splits.x_calib, activation_signed=True)


def _far_inputs(count=16):
    rng = np.random.default_rng(3)
    return np.concatenate(
        [
            rng.uniform(-3, 4, (count, 8, 8, 1)),
            np.zeros((1, 8, 8, 1)),
            np.ones((1, 8, 8, 1)),
            np.full((1, 8, 8, 1), 1e6),
            np.full((1, 8, 8, 1), -1e6),
        ]
    ).astype(np.float32)


@pytest.mark.parametrize("requantization", integer.REQUANTIZATIONS)
@pytest.mark.parametrize("signed", [False, True])
def test_integer_forward_equals_numpy_reference(splits, qmodel, qmodel_signed, requantization, signed):
    qmodel = qmodel_signed if signed else qmodel
    rescale = integer.multipliers(qmodel, requantization)
    x = np.concatenate([splits.x_test[:64], _far_inputs()])
    out = integer.integer_forward(qmodel, rescale, x)
    assert out.output_q.dtype == (jnp.int8 if signed else jnp.uint8)
    codes, output = _integer_forward_np(qmodel, requantization, x)
    np.testing.assert_array_equal(np.asarray(out.output_q), codes)
    np.testing.assert_array_equal(np.asarray(out.output).view(np.uint32), output.view(np.uint32))


@pytest.mark.parametrize("requantization", integer.REQUANTIZATIONS)
def test_integer_forward_is_close_to_fake_quant(qmodel, folded, splits, requantization):
    out = integer.integer_forward(qmodel, integer.multipliers(qmodel, requantization), splits.x_test)
    fake, _ = ptq.fake_quant_forward(folded, qmodel, splits.x_test)
    logits = qmodel.activations["dense.output"]
    fake_codes = np.round(np.asarray(fake) / float(logits.scale)) + int(logits.zero_point)
    difference = np.abs(np.asarray(out.output_q).astype(np.int64) - fake_codes)
    assert difference.max() <= 2  # LSBs of the logits
    agreement = np.mean(np.argmax(out.output, axis=1) == np.argmax(fake, axis=1))
    assert agreement >= 0.99
    assert ptq.accuracy(out.output, splits.y_test) >= ptq.accuracy(fake, splits.y_test) - 0.005


def test_relu_is_the_clamp_only_where_a_relu_follows(qmodel, splits):
    out = integer.integer_forward(qmodel, integer.multipliers(qmodel), splits.x_test[:16])
    for name in ("conv2.input", "dense.input"):
        assert int(np.asarray(out.codes[name]).min()) >= int(qmodel.activations[name].zero_point)
    # The logits layer has no ReLU: its codes go below its zero point.
    assert int(np.asarray(out.codes["dense.output"]).min()) < int(qmodel.activations["dense.output"].zero_point)


def test_multipliers_per_mode_and_layer_kind(qmodel_signed):
    types = {
        mode: {path: type(m).__name__ for path, m in integer.multipliers(qmodel_signed, mode).layers.items()}
        for mode in integer.REQUANTIZATIONS
    }
    assert (
        types["onnxruntime"] == types["tflite-xnnpack"] == dict.fromkeys(("conv1", "conv2", "dense"), "FloatMultiplier")
    )
    assert types["tflite"] == {
        "conv1": "FixedPointMultiplier",
        "conv2": "FixedPointMultiplier",
        "dense": "Float64Multiplier",
    }
    assert set(types["tflite-optimized"].values()) == {"RuyMultiplier"}
    ruy, gemmlowp = (
        integer.multipliers(qmodel_signed, mode).layers["conv1"] for mode in ("tflite-optimized", "tflite")
    )
    np.testing.assert_array_equal(
        ruy.quantized_multiplier, gemmlowp.quantized_multiplier
    )  # one encoding, two roundings


def test_integer_codes_as_input_skip_the_quantization(qmodel_signed, splits):
    """An int8-I/O model's input: the codes the float path computes give the same network output."""
    for mode in ("tflite", "tflite-optimized"):
        rescale = integer.multipliers(qmodel_signed, mode)
        from_floats = integer.integer_forward(qmodel_signed, rescale, splits.x_test[:16])
        from_codes = integer.integer_forward(qmodel_signed, rescale, from_floats.codes["conv1.input"])
        np.testing.assert_array_equal(np.asarray(from_codes.output_q), np.asarray(from_floats.output_q))
    with pytest.raises(TypeError, match="x must be"):  # uint8 codes for an int8 model are not its codes
        integer.integer_forward(qmodel_signed, rescale, np.zeros((2, 8, 8, 1), np.uint8))


def test_bad_arguments(qmodel):
    with pytest.raises(ValueError, match="requantization"):
        integer.multipliers(qmodel, "tensorrt")
    with pytest.raises(ValueError, match="x must be"):
        integer.integer_forward(qmodel, integer.multipliers(qmodel), np.zeros((2, 8, 8), np.float32))
    with pytest.raises(ValueError, match="rescale"):
        integer.integer_forward(qmodel, None, np.zeros((2, 8, 8, 1), np.float32))
    with pytest.raises(TypeError, match="qmodel"):
        integer.multipliers({"conv1": None})
    four_bit = dataclasses.replace(qmodel, activation_format=ptq.activation_format(4, signed=False))
    with pytest.raises(ValueError, match="8-bit"):
        integer.multipliers(four_bit, "tflite")
