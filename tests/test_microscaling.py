"""quantref.microscaling: OCP MX and NVFP4 against the specification's examples, ml_dtypes' element types and
torchao's reference casts (``torchao.prototype.mx_formats``, CPU), scale code for scale code and element for element.
"""

from __future__ import annotations

import warnings

import ml_dtypes
import numpy as np
import pytest

from quantref import microscaling as mx

FP_FORMATS = ["mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e2m3", "mxfp6_e3m2", "mxfp4_e2m1"]


def wide_range(rng, shape=(12, 256)):
    """Rows of very different magnitudes, an all-zero block, a huge value, values on a binade edge."""
    x = (rng.standard_normal(shape) * np.exp(rng.uniform(-20, 20, (shape[0], 1)))).astype(np.float32)
    x[0, :32] = 0
    x[1, 7] = 3e37
    x[2, :32] = np.float32(2.0) ** np.arange(-16, 16)
    x[3, 32:64] = -1.0
    return x


def codes(scales) -> np.ndarray:
    return np.asarray(scales).view(np.uint8)


# ------------------------------------------------------------------------------------------------------------------
# The specification's rule on worked examples


def test_scale_is_the_largest_power_of_two_over_the_elements_top_binade():
    block = np.zeros(32, np.float32)
    for value, fmt, exponent in [
        (448.0, "mxfp8_e4m3", 0),
        (1.0, "mxfp8_e4m3", -8),
        (500.0, "mxfp8_e4m3", 0),  # floor(log2 500) = 8 = emax: X = 1, and 500 saturates to 448
        (6.0, "mxfp4_e2m1", 0),
        (7.9, "mxfp4_e2m1", 0),
        (57344.0, "mxfp8_e5m2", 0),
        (1.0, "mxint8", 0),
        (0.75, "mxint8", -1),
    ]:
        block[0] = value
        elements, scales = mx.mx_quantize(block, fmt)
        assert codes(scales).tolist() == [127 + exponent], (value, fmt)
        assert np.asarray(scales).astype(np.float32).tolist() == [2.0**exponent]
    assert float(np.asarray(mx.mx_quantize(np.full(32, 500.0, np.float32), "mxfp8_e4m3")[0])[0]) == 448.0


def test_elements_round_half_to_even_and_saturate():
    x = np.array([6.0, 5.0, 2.5, 0.25, 0.75, -3.5, 1.75] + [0.0] * 25, np.float32)  # X = 1 for FP4
    elements, scales = mx.mx_quantize(x, "mxfp4_e2m1")
    assert np.asarray(elements).astype(np.float32)[:7].tolist() == [6.0, 4.0, 2.0, 0.0, 1.0, -4.0, 2.0]
    x = np.array([1.0, 0.5, -1.0, 1.99, 0.5078125, 0.5234375] + [0.0] * 26, np.float32)  # MXINT8, X = 1
    elements, scales = mx.mx_quantize(x, "mxint8")
    assert np.asarray(elements)[:6].tolist() == [64, 32, -64, 127, 32, 34]  # 32.5 -> 32, 33.5 -> 34
    assert np.asarray(mx.mx_dequantize(elements, scales, block_size=32))[:4].tolist() == [1.0, 0.5, -1.0, 127 / 64]


def test_special_blocks():
    x = np.zeros((3, 32), np.float32)
    x[1, 3] = np.nan
    x[2, 3] = np.inf
    _, scales = mx.mx_quantize(x, "mxfp8_e4m3")
    assert codes(scales)[:, 0].tolist() == [0, 255, 255 - 8 + 1 - 1]  # zeros: 2^-127; NaN: the NaN code; Inf: clamp
    assert np.isnan(np.asarray(mx.mx_dequantize(*mx.mx_quantize(x, "mxfp8_e4m3")))[1]).all()


# ------------------------------------------------------------------------------------------------------------------
# The element types: ml_dtypes' round-to-nearest-even casts of the clamped quotients


@pytest.mark.parametrize("fmt", FP_FORMATS)
def test_elements_are_ml_dtypes_casts_of_the_scaled_block(fmt):
    rng = np.random.default_rng(1)
    x = wide_range(rng)
    elements, scales = mx.mx_quantize(x, fmt)
    spec = mx.MX_FORMATS[fmt]
    scale = np.repeat(np.maximum(np.asarray(scales).astype(np.float32), np.finfo(np.float32).tiny), 32, axis=-1)
    with np.errstate(over="ignore", invalid="ignore"):
        expected = np.clip(x / scale, -spec.max_value, spec.max_value).astype(spec.element)
    assert np.asarray(elements).dtype == spec.element
    np.testing.assert_array_equal(np.asarray(elements).view(np.uint8), expected.view(np.uint8))
    # The round trip: within half an element step where the quotient fits the element type; beyond it (the block's
    # top binade reaches past the element's largest value: the floor in the scale rule) saturated to it.
    back = np.asarray(mx.mx_dequantize(elements, scales))
    quotient = np.abs(x / scale)
    inside = quotient <= spec.max_value
    step = np.abs(x) * 2.0 ** -(ml_dtypes.finfo(spec.element).nmant + 1) + scale * float(
        ml_dtypes.finfo(spec.element).smallest_subnormal
    )
    assert np.all(np.abs(back - x)[inside] <= step[inside])
    np.testing.assert_array_equal(np.abs(back[~inside]), (spec.max_value * scale)[~inside])


def test_blocks_along_an_axis_with_a_short_last_block():
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((70, 3)) * 10).astype(np.float32)
    elements, scales = mx.mx_quantize(x, "mxfp8_e4m3", axis=0)
    assert np.asarray(scales).shape == (3, 3)  # 32 + 32 + 6
    reference, reference_scales = mx.mx_quantize(np.ascontiguousarray(x.T), "mxfp8_e4m3")
    np.testing.assert_array_equal(codes(scales), codes(reference_scales).T)
    np.testing.assert_array_equal(np.asarray(elements).T.view(np.uint8), np.asarray(reference).view(np.uint8))
    np.testing.assert_array_equal(
        np.asarray(mx.mx_fake_quant(x, "mxfp8_e4m3", axis=0)).T, mx.mx_fake_quant(x.T, "mxfp8_e4m3")
    )


# ------------------------------------------------------------------------------------------------------------------
# torchao's reference casts


@pytest.fixture(scope="module")
def torchao_mx():
    torch = pytest.importorskip("torch", reason="the torchao cross-check needs torch (conformance extra)")
    pytest.importorskip("torchao", reason="the MX cross-check needs torchao (bench extra)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchao.prototype.mx_formats import constants, kernels, mx_tensor, nvfp4_tensor
    return torch, constants, kernels, mx_tensor, nvfp4_tensor


@pytest.mark.parametrize("fmt", FP_FORMATS)
def test_mx_equals_torchao_to_mx(torchao_mx, fmt):
    torch, constants, kernels, mx_tensor, _ = torchao_mx
    element = {
        "mxfp8_e4m3": torch.float8_e4m3fn,
        "mxfp8_e5m2": torch.float8_e5m2,
        "mxfp6_e2m3": constants.DTYPE_FP6_E2M3,
        "mxfp6_e3m2": constants.DTYPE_FP6_E3M2,
        "mxfp4_e2m1": torch.float4_e2m1fn_x2,
    }[fmt]
    x = wide_range(np.random.default_rng(3))
    scales_ao, elements_ao = mx_tensor.to_mx(torch.from_numpy(x), element, 32)
    elements, scales = mx.mx_quantize(x, fmt)
    np.testing.assert_array_equal(codes(scales), scales_ao.view(torch.uint8).numpy().reshape(codes(scales).shape))
    if fmt.startswith("mxfp8"):
        values_ao = elements_ao.float().numpy()
    elif fmt == "mxfp4_e2m1":
        values_ao = kernels.f4_unpacked_to_f32(kernels.unpack_uint4(elements_ao.view(torch.uint8))).numpy()
    else:
        decode = kernels.f6_e2m3_unpacked_to_f32 if fmt == "mxfp6_e2m3" else kernels.f6_e3m2_unpacked_to_f32
        values_ao = decode(elements_ao.view(torch.uint8)).numpy()
    np.testing.assert_array_equal(np.asarray(elements).astype(np.float32), values_ao.reshape(x.shape))


@pytest.mark.parametrize("two_level", [True, False])
def test_nvfp4_equals_torchao(torchao_mx, two_level):
    torch, _, kernels, _, nvfp4_tensor = torchao_mx
    x = (
        wide_range(np.random.default_rng(4), (8, 128))
        if not two_level
        else np.random.default_rng(4).standard_normal((8, 128)).astype(np.float32) * 3
    )
    amax = np.abs(x).max()
    scale_ao = nvfp4_tensor.per_tensor_amax_to_scale(torch.tensor(amax)) if two_level else None
    scale = mx.nvfp4_per_tensor_scale(amax) if two_level else None
    if two_level:
        assert np.asarray(scale).view(np.uint32) == scale_ao.numpy().view(np.uint32)
    scales_ao, elements_ao = nvfp4_tensor.nvfp4_quantize(torch.from_numpy(x), 16, scale_ao)
    elements, scales = mx.nvfp4_quantize(x, scale)
    np.testing.assert_array_equal(codes(scales), scales_ao.view(torch.uint8).numpy().reshape(codes(scales).shape))
    values_ao = kernels.f4_unpacked_to_f32(kernels.unpack_uint4(elements_ao)).numpy().reshape(x.shape)
    np.testing.assert_array_equal(np.asarray(elements).astype(np.float32), values_ao)
    back = np.asarray(mx.nvfp4_fake_quant(x, scale))
    assert back.shape == x.shape and np.all(np.isfinite(back))


# ------------------------------------------------------------------------------------------------------------------
# Bad input


def test_bad_input_is_named():
    x = np.ones((4, 32), np.float32)
    with pytest.raises(ValueError, match="fmt must be one of"):
        mx.mx_quantize(x, "mxfp3")
    with pytest.raises(TypeError, match="fmt must be"):
        mx.mx_quantize(x, 8)
    with pytest.raises(ValueError, match="block_size"):
        mx.mx_quantize(x, "mxfp8_e4m3", block_size=0)
    with pytest.raises(ValueError, match="axis"):
        mx.mx_quantize(x, "mxfp8_e4m3", axis=2)
    elements, scales = mx.mx_quantize(x, "mxfp8_e4m3")
    with pytest.raises(ValueError, match="scales must have shape"):
        mx.mx_dequantize(elements, np.asarray(scales)[:2])
    with pytest.raises(TypeError, match="scales"):
        mx.mx_dequantize(elements, np.ones((4, 1), np.float32))
    with pytest.raises(ValueError, match="per_tensor_scale must be finite"):
        mx.nvfp4_quantize(x, 0.0)
