"""Tests for quantref.affine: the quantize/dequantize/fake-quant mapping, granularity, scale and zero point."""

import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings

from quantref import _validate, affine, formats

INT8 = formats.INT8
INT8_NARROW = formats.int_format(8, narrow_range=True)
FORMATS = [INT8, formats.UINT8, formats.INT4, formats.UINT4, INT8_NARROW, formats.INT16]
EPS32 = float(np.finfo(np.float32).eps)


# --- slow references ---------------------------------------------------------------------------------------------


def _param_index(index: tuple[int, ...], axis: int | None, block_size: int | None) -> tuple[int, ...]:
    if axis is None:
        return ()
    axis %= len(index)
    if block_size is None:
        return (index[axis],)
    return index[:axis] + (index[axis] // block_size,) + index[axis + 1 :]


def _reference_quantize(x, scale, zero_point, fmt, axis=None, block_size=None) -> np.ndarray:
    """One element at a time: clamp(round_half_even(float32(x) / float32(s)) + z)."""
    x, scale, zero_point = np.asarray(x, np.float32), np.asarray(scale, np.float32), np.asarray(zero_point)
    out = np.empty(x.shape, np.int64)
    for index in np.ndindex(x.shape):
        p = _param_index(index, axis, block_size)
        ratio = np.float32(x[index]) / np.float32(scale[p])  # float32 / float32: one correctly rounded division
        out[index] = min(max(int(np.rint(ratio)) + int(zero_point[p]), fmt.qmin), fmt.qmax)
    return out


def _reference_dequantize(q, scale, zero_point, axis=None, block_size=None) -> np.ndarray:
    scale, zero_point = np.asarray(scale, np.float32), np.asarray(zero_point)
    out = np.empty(q.shape, np.float32)
    for index in np.ndindex(q.shape):
        p = _param_index(index, axis, block_size)
        out[index] = np.float32(int(q[index]) - int(zero_point[p])) * np.float32(scale[p])
    return out


# --- granularity against the slow loop ---------------------------------------------------------------------------

GRANULARITIES = [
    # (x shape, axis, block_size)
    ((5, 7), None, None),
    ((3, 5, 7), 0, None),
    ((3, 5, 7), 1, None),
    ((3, 5, 7), 2, None),
    ((3, 5, 7), -1, None),
    ((3, 5, 7), -3, None),
    ((4, 10), 1, 4),  # groups of 4, 4, 2
    ((4, 10), -1, 3),  # 3, 3, 3, 1
    ((7, 4), 0, 3),  # 3, 3, 1
    ((2, 9, 3), 1, 4),  # 4, 4, 1 in the middle axis
    ((2, 9, 3), -2, 9),  # one group covering the axis
    ((2, 9, 3), 1, 16),  # one group larger than the axis
    ((6, 5), 1, 1),  # one group per element
]


def _param_shape(shape, axis, block_size):
    if axis is None:
        return ()
    axis %= len(shape)
    if block_size is None:
        return (shape[axis],)
    return shape[:axis] + (-(-shape[axis] // block_size),) + shape[axis + 1 :]


@pytest.mark.parametrize(("shape", "axis", "block_size"), GRANULARITIES)
@pytest.mark.parametrize("fmt", [INT8, formats.UINT4], ids=lambda f: f.name)
def test_quantize_dequantize_match_slow_loop(shape, axis, block_size, fmt):
    rng = np.random.default_rng(hash((shape, axis, block_size, fmt.name)) % 2**32)
    param_shape = _param_shape(shape, axis, block_size)
    x = (rng.standard_normal(shape) * 2).astype(np.float32)
    x.flat[0], x.flat[-1] = 1e4, -1e4  # at least one value clipped at each end
    # The grid spans about ±4 (a 2-sigma range), so the clamp matters for many values, not only the two above.
    scale = (rng.uniform(0.5, 1.5, param_shape) * 8 / fmt.levels).astype(np.float32)
    zero_point = rng.integers(fmt.qmin, fmt.qmax + 1, param_shape).astype(np.int32)
    q = affine.quantize(x, scale, zero_point, fmt, axis=axis, block_size=block_size)
    assert q.shape == shape and q.dtype == fmt.storage_dtype
    expected_q = _reference_quantize(x, scale, zero_point, fmt, axis, block_size)
    np.testing.assert_array_equal(np.asarray(q), expected_q)
    assert (expected_q == fmt.qmin).any() and (expected_q == fmt.qmax).any()
    x_hat = affine.dequantize(q, scale, zero_point, axis=axis, block_size=block_size)
    assert x_hat.dtype == jnp.float32
    np.testing.assert_array_equal(
        np.asarray(x_hat), _reference_dequantize(expected_q, scale, zero_point, axis, block_size)
    )
    fq = affine.fake_quant(x, scale, zero_point, fmt, axis=axis, block_size=block_size)
    np.testing.assert_array_equal(np.asarray(fq), np.asarray(x_hat))


@pytest.mark.parametrize(("shape", "axis", "block_size"), GRANULARITIES)
def test_check_granularity_and_expand_param(shape, axis, block_size):
    param_shape = _param_shape(shape, axis, block_size)
    normalised = _validate.check_granularity(shape, param_shape, axis, block_size)
    assert normalised == (None if axis is None else axis % len(shape))
    param = jnp.arange(int(np.prod(param_shape)), dtype=jnp.float32).reshape(param_shape)
    expanded = np.broadcast_to(np.asarray(affine.expand_param(param, shape, normalised, block_size)), shape)
    for index in np.ndindex(shape):
        assert expanded[index] == np.asarray(param)[_param_index(index, normalised, block_size)]


# --- error bounds ------------------------------------------------------------------------------------------------


@st.composite
def _quantizer_case(draw):
    fmt = draw(st.sampled_from(FORMATS))
    scale = np.float32(draw(st.floats(1e-3, 10.0)))
    zero_point = draw(st.integers(fmt.qmin, fmt.qmax))
    span = float(np.float32(2 * max(abs(fmt.qmin - zero_point), abs(fmt.qmax - zero_point)) * float(scale)))
    # Values out to twice the representable range, so that about half are clipped.
    x = draw(hnp.arrays(np.float32, 64, elements=st.floats(-span, span, width=32, allow_subnormal=False)))
    return fmt, scale, zero_point, x


@settings(max_examples=100, deadline=None)
@given(_quantizer_case())
def test_error_is_at_most_half_a_step_inside_and_the_clipping_error_outside(case):
    fmt, scale, zero_point, x = case
    q = np.asarray(affine.quantize(x, scale, zero_point, fmt)).astype(np.int64)
    x_hat = np.asarray(affine.fake_quant(x, scale, zero_point, fmt)).astype(np.float64)
    lo = (fmt.qmin - zero_point) * float(scale)
    hi = (fmt.qmax - zero_point) * float(scale)
    x64 = x.astype(np.float64)
    error = np.abs(x64 - x_hat)
    # Float32 slack: x / s and s * (q - z) are each rounded once, relative error 2**-24.
    slack = EPS32 * (np.abs(x64) + np.abs(x_hat))
    inside = (lo <= x64) & (x64 <= hi)
    assert np.all(error[inside] <= float(scale) / 2 + slack[inside])
    above, below = x64 > hi, x64 < lo
    np.testing.assert_array_equal(q[above], fmt.qmax)
    np.testing.assert_array_equal(q[below], fmt.qmin)
    clip_distance = np.where(above, x64 - hi, lo - x64)
    outside = above | below
    assert np.all(np.abs(error[outside] - clip_distance[outside]) <= slack[outside])


@settings(max_examples=100, deadline=None)
@given(_quantizer_case())
def test_fake_quant_is_idempotent_and_equals_dequantize_of_quantize(case):
    fmt, scale, zero_point, x = case
    once = affine.fake_quant(x, scale, zero_point, fmt)
    twice = affine.fake_quant(once, scale, zero_point, fmt)
    np.testing.assert_array_equal(np.asarray(twice).view(np.uint32), np.asarray(once).view(np.uint32))
    round_trip = affine.dequantize(affine.quantize(x, scale, zero_point, fmt), scale, zero_point)
    np.testing.assert_array_equal(np.asarray(round_trip).view(np.uint32), np.asarray(once).view(np.uint32))
    # Quantizing a fake-quantized value gives back the same codes.
    np.testing.assert_array_equal(
        affine.quantize(once, scale, zero_point, fmt), affine.quantize(x, scale, zero_point, fmt)
    )


@pytest.mark.parametrize("scale", [0.0123, 0.1, 1 / 3, 0.7])
def test_per_tensor_and_per_channel_division_is_correctly_rounded_near_ties(scale):
    # x = (k + 1/2) s and its float32 neighbours: x / s lands on or next to a tie, where computing x * (1/s)
    # instead of x / s (as XLA does for a broadcast or constant divisor unless prevented) flips the code.
    rng = np.random.default_rng(0)
    s = np.float32(scale)
    x = ((rng.integers(-120, 120, 2000) + 0.5) * np.float64(s)).astype(np.float32)
    x = np.concatenate([x, np.nextafter(x, np.float32(np.inf)), np.nextafter(x, np.float32(-np.inf))])
    expected = np.clip(np.rint(x / s), -128, 127)  # numpy: one IEEE float32 division, then half to even
    np.testing.assert_array_equal(affine.quantize(x, s, 0, INT8), expected)
    x2 = x.reshape(2, -1)
    np.testing.assert_array_equal(
        affine.quantize(x2, jnp.full(2, s), jnp.zeros(2, jnp.int32), INT8, axis=0), expected.reshape(2, -1)
    )
    # Inside a user's jit the Python-float scale is a constant, which XLA would otherwise fold into a reciprocal.
    jitted = jax.jit(lambda x: affine.quantize(x, scale, 0, INT8))(jnp.asarray(x))
    np.testing.assert_array_equal(jitted, expected)


def test_nan_and_inf():
    x = jnp.array([np.nan, np.inf, -np.inf, 0.0], jnp.float32)
    q = np.asarray(affine.quantize(x, 0.1, 3, INT8))
    np.testing.assert_array_equal(q, [INT8.qmin, INT8.qmax, INT8.qmin, 3])
    fq = np.asarray(affine.fake_quant(x, 0.1, 3, INT8))
    assert np.isnan(fq[0])
    np.testing.assert_allclose(fq[1:], [(127 - 3) * 0.1, (-128 - 3) * 0.1, 0.0], rtol=1e-6)


def test_fake_quant_keeps_the_input_dtype():
    x = jnp.array([0.1, -0.26, 3.0], jnp.bfloat16)
    fq = affine.fake_quant(x, 0.25, None, formats.INT4)
    assert fq.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(fq, np.float32), [0.0, -0.25, 1.75])


# --- scale and zero point ----------------------------------------------------------------------------------------


@st.composite
def _range(draw, min_width=0.0):
    lo = draw(st.floats(-1e3, 1e3, width=32))
    hi = draw(st.floats(-1e3, 1e3, width=32))
    lo, hi = min(lo, hi), max(lo, hi)
    assume(hi - lo >= min_width)
    return np.float32(lo), np.float32(hi)


@settings(max_examples=100, deadline=None)
@given(_range(), st.sampled_from([INT8, formats.UINT8, formats.INT4, formats.UINT4, INT8_NARROW]), st.booleans())
def test_zero_is_exactly_representable(bounds, fmt, symmetric):
    lo, hi = bounds
    scale, zero_point = affine.scale_zero_point(lo, hi, fmt, symmetric=symmetric)
    assert scale.dtype == jnp.float32 and zero_point.dtype == jnp.int32
    assert float(scale) > 0 and fmt.qmin <= int(zero_point) <= fmt.qmax
    x = jnp.array([0.0, -0.0, lo, hi], jnp.float32)
    q = np.asarray(affine.quantize(x, scale, zero_point, fmt))
    assert q[0] == q[1] == int(zero_point)
    fq = np.asarray(affine.fake_quant(x, scale, zero_point, fmt))
    assert fq[0] == 0.0 and fq[1] == 0.0
    assert np.asarray(affine.dequantize(q[:1], scale, zero_point))[0] == 0.0


@settings(max_examples=100, deadline=None)
@given(_range(min_width=1e-2), st.sampled_from([INT8, formats.UINT8, formats.INT4, formats.UINT4, INT8_NARROW]))
def test_asymmetric_maps_min_to_qmin_and_max_to_qmax(bounds, fmt):
    lo, hi = bounds
    scale, zero_point = affine.scale_zero_point(lo, hi, fmt)
    m, big_m = min(float(lo), 0.0), max(float(hi), 0.0)  # the range widened to contain zero
    np.testing.assert_allclose(float(scale), (big_m - m) / (fmt.qmax - fmt.qmin), rtol=4 * EPS32)
    q = np.asarray(affine.quantize(jnp.array([m, big_m], jnp.float32), scale, zero_point, fmt)).astype(int)
    # z = qmin - round(m / s) makes m land on qmin exactly; max lands on qmax unless m / s is a tie that
    # rounding of z pushed the other way, and then it is one code below, still within half a step.
    assert q[0] == fmt.qmin
    assert q[1] in (fmt.qmax, fmt.qmax - 1)
    x_hat = np.asarray(affine.dequantize(q, scale, zero_point)).astype(np.float64)
    assert np.all(np.abs(x_hat - [m, big_m]) <= float(scale) * (0.5 + 1e-3))


def _reference_scale_zero_point(lo: float, hi: float, fmt: formats.IntFormat) -> tuple[np.float32, int]:
    """The asymmetric formulas in numpy float32: s = (M - m) / (qmax - qmin), z = clamp(qmin - round(m / s))."""
    m, big_m = np.float32(min(lo, 0.0)), np.float32(max(hi, 0.0))
    scale = max(np.float32(big_m - m) / np.float32(fmt.qmax - fmt.qmin), np.float32(EPS32))
    return scale, int(np.clip(fmt.qmin - np.rint(m / scale), fmt.qmin, fmt.qmax))


@settings(max_examples=100, deadline=None)
@given(_range(), st.sampled_from([INT8, formats.UINT8, formats.INT4, formats.UINT4, INT8_NARROW]))
def test_asymmetric_scale_zero_point_match_the_formulas(bounds, fmt):
    lo, hi = bounds
    scale, zero_point = affine.scale_zero_point(lo, hi, fmt)
    expected_scale, expected_zero_point = _reference_scale_zero_point(float(lo), float(hi), fmt)
    assert float(scale) == float(expected_scale)
    assert int(zero_point) == expected_zero_point


def test_asymmetric_uint8_over_minus_one_to_one():
    # s = 2/255; in float32, -1 / s is -127.49999 (not the tie -127.5), so z = 127.
    scale, zero_point = affine.scale_zero_point(-1.0, 1.0, formats.UINT8)
    np.testing.assert_allclose(float(scale), 2 / 255, rtol=1e-7)
    assert np.float32(-1.0) / np.float32(scale) > -127.5
    assert int(zero_point) == 127
    x = jnp.array([-1.0, 0.0, 0.6, 1.0], jnp.float32)
    q = np.asarray(affine.quantize(x, scale, zero_point, formats.UINT8))
    np.testing.assert_array_equal(q, _reference_quantize(x, scale, zero_point, formats.UINT8))
    # 1 / s is 127.49999 too, so max lands one code short of qmax (254 = 127 + 127), half a step from 1.0.
    assert q[0] == 0 and q[1] == 127 and q[3] == 254
    assert abs(float(affine.dequantize(q, scale, zero_point)[3]) - 1.0) <= float(scale) / 2 * (1 + 1e-5)
    # 0.6 comes back within half a step (the white-paper example: 0.6 -> 0.596 or so, not 0).
    x_hat = float(affine.dequantize(q, scale, zero_point)[2])
    assert abs(x_hat - 0.6) <= float(scale) / 2 * (1 + 1e-5)


@settings(max_examples=60, deadline=None)
@given(st.floats(0.01, 1e4), st.floats(0.0, 1.0))
def test_symmetric_int8_divisors(absmax, other):
    absmax = np.float32(absmax)
    for lo, hi in ((-absmax, np.float32(other * absmax)), (np.float32(-other * absmax), absmax)):
        scale, zero_point = affine.scale_zero_point(lo, hi, INT8, symmetric=True)
        assert float(scale) == float(absmax / np.float32(127))  # one correctly rounded float32 division
        assert int(zero_point) == 0
        # With divisor qmax, ±absmax land exactly on ±127.
        np.testing.assert_array_equal(affine.quantize(jnp.array([-absmax, absmax]), scale, 0, INT8), [-127, 127])
        # PyTorch MinMaxObserver (qint8, per_tensor_symmetric): scale = absmax / ((qmax - qmin) / 2) = absmax / 127.5.
        scale, zero_point = affine.scale_zero_point(lo, hi, INT8, symmetric=True, symmetric_divisor="half_levels")
        assert float(scale) == float(absmax / np.float32(127.5))
        assert int(zero_point) == 0


def test_symmetric_narrow_range_grid_is_minus_127_to_127():
    scale, zero_point = affine.scale_zero_point(-3.0, 2.0, INT8_NARROW, symmetric=True)
    np.testing.assert_allclose(float(scale), 3.0 / 127, rtol=1e-7)
    q = affine.quantize(jnp.array([-3.0, -100.0, 100.0, 3.0]), scale, zero_point, INT8_NARROW)
    np.testing.assert_array_equal(q, [-127, -127, 127, 127])
    # half_levels on a narrow grid is (127 - (-127)) / 2 = 127 as well.
    half, _ = affine.scale_zero_point(-3.0, 2.0, INT8_NARROW, symmetric=True, symmetric_divisor="half_levels")
    np.testing.assert_allclose(float(half), 3.0 / 127, rtol=1e-7)


def test_symmetric_unsigned_is_centred_on_128():
    scale, zero_point = affine.scale_zero_point(-2.0, 1.0, formats.UINT8, symmetric=True)
    assert int(zero_point) == 128
    np.testing.assert_allclose(float(scale), 2.0 / 127, rtol=1e-7)
    q = affine.quantize(jnp.array([-2.0, 0.0, 2.0]), scale, zero_point, formats.UINT8)
    np.testing.assert_array_equal(q, [128 - 127, 128, 128 + 127])
    # PyTorch quint8 per_tensor_symmetric: scale = absmax / 127.5, zero point 128.
    scale, zero_point = affine.scale_zero_point(
        -2.0, 1.0, formats.UINT8, symmetric=True, symmetric_divisor="half_levels"
    )
    assert int(zero_point) == 128
    np.testing.assert_allclose(float(scale), 2.0 / 127.5, rtol=1e-7)


def test_scale_zero_point_per_channel_and_zero_range():
    lo = jnp.array([-1.0, 0.0, 0.5, -4.0])
    hi = jnp.array([1.0, 0.0, 2.0, -1.0])
    scale, zero_point = affine.scale_zero_point(lo, hi, formats.UINT8)
    assert scale.shape == zero_point.shape == (4,)
    # Each channel on its own: the range widened to contain 0, divided into 255 steps.
    for i in range(4):
        s, z = affine.scale_zero_point(lo[i], hi[i], formats.UINT8)
        assert float(scale[i]) == float(s) and int(zero_point[i]) == int(z)
    for i in range(4):
        expected_scale, expected_zero_point = _reference_scale_zero_point(float(lo[i]), float(hi[i]), formats.UINT8)
        assert float(scale[i]) == float(expected_scale) and int(zero_point[i]) == expected_zero_point
    np.testing.assert_allclose(scale, [2 / 255, EPS32, 2 / 255, 4 / 255], rtol=1e-6)
    # A range entirely >= 0 starts at code 0; one entirely <= 0 ends at code 255.
    assert int(zero_point[1]) == int(zero_point[2]) == 0 and int(zero_point[3]) == 255
    # An all-zero range takes the floor scale and still quantizes zero to zero.
    assert float(affine.fake_quant(jnp.float32(0.0), scale[1], zero_point[1], formats.UINT8)) == 0.0


# --- invalid input -----------------------------------------------------------------------------------------------

X = jnp.ones((3, 4), jnp.float32)


@pytest.mark.parametrize("scale", [0.0, -0.1, np.nan, np.inf, -np.inf])
def test_bad_scale_values(scale):
    with pytest.raises(ValueError, match="scale"):
        affine.quantize(X, scale, 0, INT8)
    with pytest.raises(ValueError, match="scale"):
        affine.fake_quant(X, scale, 0, INT8)
    with pytest.raises(ValueError, match="scale"):
        affine.dequantize(jnp.ones(3, jnp.int8), scale, 0)
    with pytest.raises(ValueError, match="scale"):
        affine.quantize(X, jnp.array([0.1, scale, 0.1]), jnp.zeros(3, jnp.int32), INT8, axis=0)


def test_integer_scale_is_refused():
    with pytest.raises(ValueError, match="scale"):
        affine.quantize(X, jnp.int32(1), 0, INT8)


@pytest.mark.parametrize("axis", [2, -3, 10, 1.0, True])
def test_bad_axis(axis):
    with pytest.raises(ValueError, match="axis"):
        affine.quantize(X, jnp.full(3, 0.1), jnp.zeros(3, jnp.int32), INT8, axis=axis)
    with pytest.raises(ValueError, match="axis"):
        affine.dequantize(jnp.ones((3, 4), jnp.int8), jnp.full(3, 0.1), None, axis=axis)


def test_per_channel_and_per_group_shapes_must_fit():
    with pytest.raises(ValueError, match="scale"):
        affine.quantize(X, jnp.full(4, 0.1), None, INT8, axis=0)
    with pytest.raises(ValueError, match="zero_point"):
        affine.quantize(X, jnp.full(3, 0.1), jnp.zeros(4, jnp.int32), INT8, axis=0)
    with pytest.raises(ValueError, match="scale"):
        affine.quantize(X, jnp.full((3,), 0.1), None, INT8)  # per-tensor needs a scalar
    # (3, 4) grouped by 3 along axis 1 needs (3, 2).
    with pytest.raises(ValueError, match="scale"):
        affine.quantize(X, jnp.full((3, 1), 0.1), None, INT8, axis=1, block_size=3)
    with pytest.raises(ValueError, match="scale"):
        affine.quantize(X, jnp.full((2,), 0.1), None, INT8, axis=1, block_size=3)
    with pytest.raises(ValueError, match="zero_point"):
        affine.quantize(X, jnp.full((3, 2), 0.1), jnp.zeros((3, 1), jnp.int32), INT8, axis=1, block_size=3)
    with pytest.raises(ValueError, match="scale"):
        affine.dequantize(jnp.ones((3, 4), jnp.int8), jnp.full((1, 4), 0.1), None, axis=0, block_size=2)


@pytest.mark.parametrize("block_size", [0, -2, 1.5, True])
def test_bad_block_size(block_size):
    with pytest.raises(ValueError, match="block_size"):
        affine.quantize(X, jnp.full((3, 1), 0.1), None, INT8, axis=1, block_size=block_size)


def test_block_size_needs_an_axis():
    with pytest.raises(ValueError, match="block_size"):
        affine.quantize(X, 0.1, None, INT8, block_size=2)


def test_bad_zero_point():
    with pytest.raises(ValueError, match="zero_point"):
        affine.quantize(X, 0.1, 0.0, INT8)
    with pytest.raises(ValueError, match="zero_point"):
        affine.quantize(X, 0.1, jnp.float32(3), INT8)
    with pytest.raises(ValueError, match="zero_point"):
        affine.dequantize(jnp.ones(3, jnp.int8), 0.1, 1.5)
    for zero_point in (128, -129):
        with pytest.raises(ValueError, match="zero_point"):
            affine.quantize(X, 0.1, zero_point, INT8)
    with pytest.raises(ValueError, match="zero_point"):
        affine.fake_quant(X, 0.1, -128, INT8_NARROW)
    with pytest.raises(ValueError, match="zero_point"):
        affine.quantize(X, 0.1, 16, formats.UINT4)


def test_bad_x_q_and_fmt():
    with pytest.raises(ValueError, match="x must"):
        affine.quantize(jnp.ones(3, jnp.int32), 0.1, 0, INT8)
    with pytest.raises(ValueError, match="x must"):
        affine.fake_quant(np.ones(3, np.int8), 0.1, 0, INT8)
    with pytest.raises(ValueError, match="q must"):
        affine.dequantize(jnp.ones(3, jnp.float32), 0.1, 0)
    with pytest.raises(TypeError, match="fmt"):
        affine.quantize(X, 0.1, 0, 8)
    with pytest.raises(TypeError, match="fmt"):
        affine.scale_zero_point(-1.0, 1.0, "int8")


def test_bad_rounding_and_missing_key():
    with pytest.raises(ValueError, match="rounding"):
        affine.quantize(X, 0.1, 0, INT8, rounding="round")
    with pytest.raises(ValueError, match="rounding"):
        affine.fake_quant(X, 0.1, 0, INT8, rounding="stochastic")


def test_bad_scale_zero_point_arguments():
    with pytest.raises(ValueError, match="symmetric_divisor"):
        affine.scale_zero_point(-1.0, 1.0, INT8, symmetric=True, symmetric_divisor="levels")
    with pytest.raises(ValueError, match="min_val"):
        affine.scale_zero_point(1.0, -1.0, INT8)
    with pytest.raises(ValueError, match="min_val"):
        affine.scale_zero_point(jnp.array([0.0, 2.0]), jnp.array([1.0, 1.0]), INT8)
    with pytest.raises(ValueError, match="min_val"):
        affine.scale_zero_point(jnp.zeros(2), jnp.ones(3), INT8)
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(ValueError, match="min_val"):
            affine.scale_zero_point(bad, 1.0, INT8)
        with pytest.raises(ValueError, match="max_val"):
            affine.scale_zero_point(jnp.array([-1.0, -1.0]), jnp.array([1.0, bad]), INT8)
    with pytest.raises(ValueError, match="min_scale"):
        affine.scale_zero_point(-1.0, 1.0, INT8, min_scale=0.0)
    with pytest.raises(ValueError, match="symmetric"):
        affine.scale_zero_point(-1.0, 1.0, formats.int_format(1), symmetric=True)


# --- jit ---------------------------------------------------------------------------------------------------------


def test_quantize_and_fake_quant_inside_a_users_jit():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((4, 6)).astype(np.float32))
    scale = jnp.asarray(rng.uniform(0.01, 0.05, 4).astype(np.float32))
    zero_point = jnp.asarray(rng.integers(-5, 5, 4).astype(np.int32))

    @jax.jit
    def traced(x, scale, zero_point):
        q = affine.quantize(x, scale, zero_point, INT8, axis=0)
        fq = affine.fake_quant(x, scale, zero_point, INT8, axis=0)
        dq = affine.dequantize(q, scale, zero_point, axis=0)
        return q, fq, dq

    q, fq, dq = traced(x, scale, zero_point)
    np.testing.assert_array_equal(q, affine.quantize(x, scale, zero_point, INT8, axis=0))
    np.testing.assert_array_equal(fq, affine.fake_quant(x, scale, zero_point, INT8, axis=0))
    np.testing.assert_array_equal(dq, fq)

    @jax.jit
    def per_tensor(x, lo, hi):
        scale, zero_point = affine.scale_zero_point(lo, hi, formats.UINT8)
        return affine.fake_quant(x, scale, zero_point, formats.UINT8)

    eager_scale, eager_zero_point = affine.scale_zero_point(x.min(), x.max(), formats.UINT8)
    np.testing.assert_array_equal(
        per_tensor(x, x.min(), x.max()), affine.fake_quant(x, eager_scale, eager_zero_point, formats.UINT8)
    )


def test_stochastic_quantize_inside_jit_matches_eager():
    x = jnp.linspace(-1, 1, 50)
    key = jax.random.key(0)
    traced = jax.jit(lambda x, s, k: affine.quantize(x, s, 0, INT8, rounding="stochastic", key=k))(x, 0.1, key)
    np.testing.assert_array_equal(traced, affine.quantize(x, 0.1, 0, INT8, rounding="stochastic", key=key))
