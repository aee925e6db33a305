"""quantref.runtimes.tflite against upstream's expectations and a slow big-int transcription of gemmlowp/TFLite."""

import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quantref.runtimes import tflite as qtflite

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
EDGES = [
    0,
    1,
    -1,
    2,
    -2,
    3,
    -3,
    INT32_MAX,
    INT32_MIN,
    INT32_MAX - 1,
    INT32_MIN + 1,
    2**30,
    -(2**30),
    2**30 - 1,
    -(2**30) + 1,
    2**16,
    -(2**16),
    12345,
    -12345,
]


# ---------------------------------------------------------------------------- slow Python transcription (big ints)


def _wrap32(value):
    return (value + 2**31) % 2**32 - 2**31


def _srdhm(a, b):
    if a == b == INT32_MIN:
        return INT32_MAX
    ab = a * b
    nudge = 2**30 if ab >= 0 else 1 - 2**30
    numerator = ab + nudge
    quotient = abs(numerator) // 2**31  # C++ '/' truncates towards zero
    return quotient if numerator >= 0 else -quotient


def _rdbpot(x, exponent):
    mask = (1 << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> exponent) + (1 if remainder > threshold else 0)


def _mbqm(x, multiplier, shift):
    return _rdbpot(_srdhm(_wrap32(x * (1 << max(shift, 0))), multiplier), max(-shift, 0))


def _mbqm_single(x, multiplier, shift):
    total_shift = 31 - shift
    return _wrap32((x * multiplier + (1 << (total_shift - 1))) >> total_shift)


def _vectorize(fn, *arrays):
    arrays = np.broadcast_arrays(*arrays)
    return np.array(
        [fn(*(int(a) for a in args)) for args in zip(*(a.ravel() for a in arrays))], dtype=np.int64
    ).reshape(arrays[0].shape)


def _mbqm_numpy(acc, multiplier, shift):
    """The same double-rounding MBQM in numpy int64, fast enough for kernel references (acc within int32)."""
    acc, multiplier, shift = (np.asarray(v, np.int64) for v in np.broadcast_arrays(acc, multiplier, shift))
    x = ((acc << np.maximum(shift, 0)) + 2**31) % 2**32 - 2**31
    ab = x * multiplier
    numerator = ab + np.where(ab >= 0, 2**30, 1 - 2**30)
    high = np.sign(numerator) * (np.abs(numerator) // 2**31)
    high = np.where((x == INT32_MIN) & (multiplier == INT32_MIN), INT32_MAX, high)
    exponent = np.maximum(-shift, 0)
    mask = (np.int64(1) << exponent) - 1
    threshold = (mask >> 1) + (high < 0)
    return (high >> exponent) + ((high & mask) > threshold)


# ------------------------------------------------------------------------------------------- quantize_multiplier


def test_quantize_multiplier_upstream_expectations():
    # tensorflow/lite/kernels/internal/quantization_util_test.cc, QuantizeMultiplierSmallerThanOneExp
    assert qtflite.quantize_multiplier(0.25) == (1073741824, -1)
    assert qtflite.quantize_multiplier(0.50 - 5e-9) == (2147483627, -1)
    assert qtflite.quantize_multiplier(0.50 - 1e-10) == (1073741824, 0)
    assert qtflite.quantize_multiplier(0.50) == (1073741824, 0)
    assert qtflite.quantize_multiplier(0.75) == (1610612736, 0)
    assert qtflite.quantize_multiplier(1 - 1e-9) == (2147483646, 0)
    # QuantizeMultiplierGreaterThanOne
    assert qtflite.quantize_multiplier(1 + 1e-11) == (1073741824, 1)
    assert qtflite.quantize_multiplier(1.25) == (1342177280, 1)
    assert qtflite.quantize_multiplier(1.50) == (1610612736, 1)
    assert qtflite.quantize_multiplier(1.75) == (1879048192, 1)
    assert qtflite.quantize_multiplier(2 - 1e-9) == (2147483647, 1)
    assert qtflite.quantize_multiplier(2 - 1e-11) == (1073741824, 2)
    assert qtflite.quantize_multiplier(2) == (1073741824, 2)
    # QuantizeMultiplierUnderflow (std::ldexp of a float32 1.0f / 0.99f)
    assert qtflite.quantize_multiplier(math.ldexp(1.0, -31)) == (1073741824, -30)
    assert qtflite.quantize_multiplier(math.ldexp(1.0, -32)) == (1073741824, -31)
    assert qtflite.quantize_multiplier(math.ldexp(float(np.float32(0.99)), -32)) == (0, 0)
    assert qtflite.quantize_multiplier(math.ldexp(1.0, -33)) == (0, 0)


def test_quantize_multiplier_array_upstream_expectations():
    # quantization_util_test.cc, QuantizeMultiplierArray
    weights = [-4, -2, -1, -0.5, -0.25, -0.125, 0, 0.125, 0.25, 0.5, 1, 2, 4]
    multipliers, shifts = qtflite.quantize_multiplier_array(weights)
    assert multipliers.tolist() == [-1073741824] * 6 + [0] + [1073741824] * 6
    assert shifts.tolist() == [3, 2, 1, 0, -1, -2, 0, -2, -1, 0, 1, 2, 3]
    assert multipliers.dtype == np.int32 and shifts.dtype == np.int32


def test_quantize_multiplier_single_rounding_saturates_large_shifts():
    assert qtflite.quantize_multiplier(2.0**40, single_rounding=True) == (2**31 - 1, 30)
    assert qtflite.quantize_multiplier(2.0**40) == (2**30, 41)


def test_multiply_by_quantized_multiplier_upstream_expectations():
    # quantization_util_test.cc, MultiplyByQuantizedMultiplierInt32 (both builds, and negative multipliers in the
    # double-rounding build only)
    def quant_and_multiply(x, multiplier, single_rounding=False):
        qm, shift = qtflite.quantize_multiplier(multiplier)
        return int(qtflite.multiply_by_quantized_multiplier(np.int32(x), qm, shift, single_rounding=single_rounding))

    for single in (False, True):
        assert quant_and_multiply(0, 0.1, single) == 0
        assert quant_and_multiply(1, 0, single) == 0
        assert quant_and_multiply(10000, 0.00097656, single) == 10
        assert quant_and_multiply(-10000, 0.00097656, single) == -10
        assert quant_and_multiply(INT32_MIN, 0.00001, single) == -21475
        assert quant_and_multiply(INT32_MAX, 0.00001, single) == 21475
    assert quant_and_multiply(10000, -0.00097656) == -10
    assert quant_and_multiply(-10000, -0.00097656) == 10
    assert quant_and_multiply(INT32_MIN, -0.00001) == 21475
    assert quant_and_multiply(INT32_MAX, -0.00001) == -21475
    # "maximum possible x and quantized_multiplier", shift -3: TfLiteRound(x * qm / 2^34)
    expected = round(Fraction(INT32_MAX * INT32_MAX, 2**34))
    for single in (False, True):
        assert (
            int(qtflite.multiply_by_quantized_multiplier(np.int32(INT32_MAX), INT32_MAX, -3, single_rounding=single))
            == expected
        )
        assert (
            int(qtflite.multiply_by_quantized_multiplier(np.int32(-INT32_MAX), INT32_MAX, -3, single_rounding=single))
            == -expected
        )


def test_quantize_multiplier_round_trip_random():
    rng = np.random.default_rng(0)
    for value in np.exp(rng.uniform(-20, 20, 2000)) * rng.choice([-1, 1], 2000):
        qm, shift = qtflite.quantize_multiplier(float(value))
        assert 2**30 <= abs(qm) < 2**31
        assert abs(qm * 2.0 ** (shift - 31) - value) <= 2.0 ** (shift - 32) * (1 + 1e-12)


# ------------------------------------------------------------------------------------------------ gemmlowp primitives


def test_srdhm_exhaustive_small_and_edges():
    a = np.arange(-1024, 1025, dtype=np.int32)
    for b in [2**30, -(2**30), 2**30 + 1, -(2**30) - 1, INT32_MAX, INT32_MIN, 3 * 2**28, 1, -1, 0, 2**29 + 7]:
        got = np.asarray(qtflite.saturating_rounding_doubling_high_mul(a, np.int32(b)))
        np.testing.assert_array_equal(got, _vectorize(_srdhm, a, np.int64(b)), err_msg=f"b={b}")
    edges = np.array(EDGES, np.int32)
    got = np.asarray(qtflite.saturating_rounding_doubling_high_mul(edges[:, None], edges[None, :]))
    np.testing.assert_array_equal(got, _vectorize(_srdhm, edges[:, None], edges[None, :]))
    # ties go towards +inf: 0.5 -> 1, -0.5 -> 0 (b = 2^30 means multiply by 1/2)
    assert np.asarray(
        qtflite.saturating_rounding_doubling_high_mul(np.int32([1, -1, 3, -3]), np.int32(2**30))
    ).tolist() == [
        1,
        0,
        2,
        -1,
    ]


def test_rounding_divide_by_pot_exhaustive_small():
    x = np.arange(-4096, 4097, dtype=np.int32)
    for exponent in range(0, 14):
        got = np.asarray(qtflite.rounding_divide_by_pot(x, exponent))
        np.testing.assert_array_equal(got, _vectorize(_rdbpot, x, np.int64(exponent)), err_msg=f"exponent={exponent}")
    edges = np.array(EDGES, np.int32)
    for exponent in (0, 1, 15, 30, 31):
        np.testing.assert_array_equal(
            qtflite.rounding_divide_by_pot(edges, exponent), _vectorize(_rdbpot, edges, np.int64(exponent))
        )
    # ties away from zero
    assert np.asarray(qtflite.rounding_divide_by_pot(np.int32([1, -1, 3, -3, 5, -5]), 1)).tolist() == [
        1,
        -1,
        2,
        -2,
        3,
        -3,
    ]


@pytest.mark.parametrize("single_rounding", [False, True])
def test_mbqm_sweeps_and_random(single_rounding):
    reference = _mbqm_single if single_rounding else _mbqm
    x = np.arange(-3000, 3001, dtype=np.int32)
    for qm, shift in [(2**30, -1), (2**30, -3), (1610612736, 0), (2147483647, 1), (1342177280, -7), (1073741825, 2)]:
        got = np.asarray(qtflite.multiply_by_quantized_multiplier(x, qm, shift, single_rounding=single_rounding))
        np.testing.assert_array_equal(
            got, _vectorize(reference, x, np.int64(qm), np.int64(shift)), err_msg=f"{qm},{shift}"
        )
    rng = np.random.default_rng(1)
    n = 20_000
    x = np.concatenate([rng.integers(INT32_MIN, INT32_MAX, n, endpoint=True), np.resize(EDGES, 200)]).astype(np.int32)
    low = 0 if single_rounding else INT32_MIN
    qm = np.concatenate(
        [rng.integers(low, INT32_MAX, n, endpoint=True), np.abs(np.resize(EDGES, 200)[::-1]).clip(0, INT32_MAX)]
    ).astype(np.int32)
    shift = rng.integers(-31, 31, x.size).astype(np.int32)
    got = np.asarray(qtflite.multiply_by_quantized_multiplier(x, qm, shift, single_rounding=single_rounding))
    np.testing.assert_array_equal(got, _vectorize(reference, x, qm, shift))


def test_single_and_double_rounding_differ_where_expected():
    # Negative ties: double rounding goes away from zero, single rounding towards +inf.
    assert int(qtflite.multiply_by_quantized_multiplier(np.int32(-2), 2**30, -1)) == -1
    assert int(qtflite.multiply_by_quantized_multiplier(np.int32(-2), 2**30, -1, single_rounding=True)) == 0
    # Positive values: single and double rounding differ where SRDHM's rounding pushes a value onto or off a tie of
    # the final shift; the measured errors against the exact rational product show the 0.5 and 0.75 LSB bounds.
    rng = np.random.default_rng(2)
    x = rng.integers(-(2**24), 2**24, 200_000).astype(np.int32)
    qm = rng.integers(2**30, 2**31, 200_000).astype(np.int32)
    shift = rng.integers(-8, 0, 200_000).astype(np.int32)
    double = np.asarray(qtflite.multiply_by_quantized_multiplier(x, qm, shift)).astype(np.int64)
    single = np.asarray(qtflite.multiply_by_quantized_multiplier(x, qm, shift, single_rounding=True)).astype(np.int64)
    assert (double != single).mean() > 0.01
    # Exact rational x·qm·2^(shift-31): the error of each rounding, in LSBs.
    exact_num = x.astype(np.int64) * qm.astype(np.int64)  # < 2^55: exact in int64
    denominators = (np.int64(1) << (31 - shift.astype(np.int64))).astype(np.float64)
    # |result - exact| = |result·2^k - num| / 2^k with both terms exact in int64 (k <= 39 keeps < 2^63).
    err_double = np.abs(double * (np.int64(1) << (31 - shift.astype(np.int64))) - exact_num) / denominators
    err_single = np.abs(single * (np.int64(1) << (31 - shift.astype(np.int64))) - exact_num) / denominators
    assert err_single.max() <= 0.5
    assert 0.5 < err_double.max() <= 0.75  # the documented 0.75-LSB bound, approached in practice
    assert err_double.max() > 0.74


# --------------------------------------------------------------------------------------------------------- quantize


def _quantize_reference(x, scale, zero_point, qmin, qmax):
    with np.errstate(invalid="ignore", over="ignore"):
        quotient = (x / np.float32(scale)).astype(np.float32)
        rounded = np.sign(quotient) * np.floor(np.abs(quotient).astype(np.float64) + 0.5)  # exact in float64
        in_range = (rounded >= -(2.0**31)) & (rounded < 2.0**31)
    as_int = np.where(in_range, np.nan_to_num(rounded), INT32_MIN).astype(np.int64)
    return np.clip(_wrap_array(as_int + zero_point), qmin, qmax)


def _wrap_array(values):
    return (values + 2**31) % 2**32 - 2**31


@pytest.mark.parametrize("dtype,qmin,qmax", [("int8", -128, 127), ("uint8", 0, 255), ("int16", -32768, 32767)])
def test_quantize_ties_away_and_fuzz(dtype, qmin, qmax):
    ties = np.array([0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 0.49999997, -0.49999997], np.float32)
    zero = max(qmin, 0) if dtype == "uint8" else 0
    got = np.asarray(qtflite.quantize(ties * 0.25, 0.25, zero, dtype)).astype(np.int64) - zero
    expected = np.array([1, -1, 2, -2, 3, -3, 0, 0]) if dtype != "uint8" else np.array([1, 0, 2, 0, 3, 0, 0, 0])
    assert got.tolist() == expected.tolist()
    assert int(qtflite.quantize(np.float32([2.5]), 1.0, 0, dtype)[0]) == 3  # rne would give 2
    rng = np.random.default_rng(3)
    x = np.concatenate(
        [
            (rng.standard_normal(100_000) * 300).astype(np.float32),
            np.array([np.nan, np.inf, -np.inf, 3e9, -3e9, 1e38], np.float32),
        ]
    )
    for scale, zp in ((0.37, int(np.clip(5, qmin, qmax))), (2.0, qmax), (0.01, qmin)):
        np.testing.assert_array_equal(
            qtflite.quantize(x, scale, zp, dtype), _quantize_reference(x, scale, zp, qmin, qmax)
        )


def test_quantize_x86_out_of_range_semantics():
    # static_cast<int32_t> of NaN/Inf/huge is INT32_MIN on x86-64, then + zp wraps.
    special = np.array([np.nan, np.inf, -np.inf], np.float32)
    assert np.asarray(qtflite.quantize(special, 1.0, 0, "int8")).tolist() == [-128, -128, -128]
    assert np.asarray(qtflite.quantize(special, 1.0, -1, "int8")).tolist() == [127, 127, 127]


# --------------------------------------------------------------------------------------------------- FC and conv


def _random_layer(rng, channels, depth):
    filters = rng.integers(-127, 128, (channels, depth)).astype(np.int8)
    bias = rng.integers(-20000, 20000, channels).astype(np.int32)
    multipliers, shifts = qtflite.per_channel_multipliers(0.02, rng.uniform(0.001, 0.02, channels), 0.05)
    return filters, bias, multipliers, shifts


def test_fully_connected_against_numpy():
    rng = np.random.default_rng(4)
    x = rng.integers(-128, 128, (64, 37)).astype(np.int8)
    filters, bias, multipliers, shifts = _random_layer(rng, 11, 37)
    for single in (False, True):
        got = qtflite.fully_connected(
            x,
            filters,
            bias,
            multipliers,
            shifts,
            input_zero_point=-3,
            output_zero_point=5,
            activation_min=-100,
            activation_max=120,
            single_rounding=single,
        )
        acc = (x.astype(np.int64) + 3) @ filters.astype(np.int64).T + bias
        scaled = (
            _mbqm_numpy(acc, multipliers, shifts)
            if not single
            else _vectorize(_mbqm_single, acc, multipliers.astype(np.int64), shifts.astype(np.int64))
        )
        np.testing.assert_array_equal(got, np.clip(scaled + 5, -100, 120).astype(np.int8))


def _conv_reference(x, filters, bias, multipliers, shifts, zin, zout, strides, pads, dilations):
    n, h, w, c = x.shape
    o, fh, fw, fc = filters.shape
    groups = c // fc
    xs = np.pad(x.astype(np.int64) - zin, ((0, 0), pads[0], pads[1], (0, 0)))
    oh = (xs.shape[1] - ((fh - 1) * dilations[0] + 1)) // strides[0] + 1
    ow = (xs.shape[2] - ((fw - 1) * dilations[1] + 1)) // strides[1] + 1
    acc = np.zeros((n, oh, ow, o), np.int64)
    per_group = o // groups
    for oc in range(o):
        g = oc // per_group
        for i in range(fh):
            for j in range(fw):
                patch = xs[
                    :,
                    i * dilations[0] : i * dilations[0] + (oh - 1) * strides[0] + 1 : strides[0],
                    j * dilations[1] : j * dilations[1] + (ow - 1) * strides[1] + 1 : strides[1],
                    g * fc : (g + 1) * fc,
                ]
                acc[..., oc] += patch @ filters[oc, i, j].astype(np.int64)
    acc += bias
    return np.clip(_mbqm_numpy(acc, multipliers, shifts) + zout, -128, 127).astype(np.int8)


@pytest.mark.parametrize(
    "strides,padding,dilations,groups",
    [
        ((1, 1), "VALID", (1, 1), 1),
        ((2, 2), "SAME", (1, 1), 1),
        ((1, 2), "SAME", (2, 1), 1),
        ((1, 1), "SAME", (1, 1), 2),
    ],
)
def test_conv2d_against_numpy(strides, padding, dilations, groups):
    rng = np.random.default_rng(5)
    x = rng.integers(-128, 128, (2, 9, 8, 4)).astype(np.int8)
    filters = rng.integers(-127, 128, (6, 3, 3, 4 // groups)).astype(np.int8)
    bias = rng.integers(-5000, 5000, 6).astype(np.int32)
    multipliers, shifts = qtflite.per_channel_multipliers(0.05, rng.uniform(0.001, 0.02, 6), 0.08)
    got = qtflite.conv2d(
        x,
        filters,
        bias,
        multipliers,
        shifts,
        input_zero_point=7,
        output_zero_point=-4,
        strides=strides,
        padding=padding,
        dilations=dilations,
    )
    # x is 9 high, 8 wide, the filter 3x3. SAME pads worked out by hand from TFLite's padding.h
    # (ComputePaddingWithOffset): out = ceil(in / s), total = max((out - 1) * s + (k - 1) * d + 1 - in, 0),
    # before = total // 2, after = total - before.
    hand_pads = {
        ((2, 2), (1, 1)): ((1, 1), (0, 1)),  # h: out 5, total 8+3-9 = 2; w: out 4, total 6+3-8 = 1
        ((1, 2), (2, 1)): ((2, 2), (0, 1)),  # h: out 9, total 8+5-9 = 4; w: out 4, total 6+3-8 = 1
        ((1, 1), (1, 1)): ((1, 1), (1, 1)),  # out = in, total = k - 1 = 2
    }
    pads = hand_pads[(strides, dilations)] if padding == "SAME" else ((0, 0), (0, 0))
    expected = _conv_reference(x, filters, bias, multipliers, shifts, 7, -4, strides, pads, dilations)
    np.testing.assert_array_equal(got, expected)


# ---------------------------------------------------------------------------------------------- jit, speed, bad input


def test_jit_and_traced_parameters():
    x = np.arange(-1000, 1000, dtype=np.int32) * 1237
    fn = jax.jit(lambda v, m, s: qtflite.multiply_by_quantized_multiplier(v, m, s))
    np.testing.assert_array_equal(
        fn(x, np.int32(1518500250), np.int32(-5)), _vectorize(_mbqm, x, np.int64(1518500250), np.int64(-5))
    )
    per_channel = fn(x.reshape(-1, 4), np.int32([2**30, 2**30 + 5, INT32_MAX, 1610612736]), np.int32([-1, 0, -9, 2]))
    assert per_channel.shape == (500, 4) and per_channel.dtype == jnp.int32


def _fc(weights=(4, 3), multipliers=4, bias=None, x_dtype=np.int8, input_zero_point=0):
    """fully_connected on zeros: a (2, 3) input, every other argument valid unless given."""
    return qtflite.fully_connected(
        np.zeros((2, 3), x_dtype),
        np.zeros(weights, np.int8),
        bias,
        [2**30] * multipliers,
        [0] * 4,
        input_zero_point=input_zero_point,
        output_zero_point=0,
    )


def _conv(x_shape, filter_shape, **options):
    """conv2d on zeros with two output channels, every other argument valid unless given."""
    return qtflite.conv2d(
        np.zeros(x_shape, np.int8),
        np.zeros(filter_shape, np.int8),
        None,
        [2**30] * 2,
        [0] * 2,
        input_zero_point=0,
        output_zero_point=0,
        **options,
    )


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda: qtflite.quantize(np.ones(3, np.float32), 0.1, 0, "int4"), ValueError, "dtype"),
        (lambda: qtflite.quantize(np.ones(3, np.float32), 0.0, 0, "int8"), ValueError, "scale"),
        (lambda: qtflite.quantize(np.ones(3, np.float32), -1.0, 0, "int8"), ValueError, "scale"),
        (lambda: qtflite.quantize(np.ones(3, np.float32), 0.1, 200, "int8"), ValueError, "zero_point"),
        (lambda: qtflite.quantize(np.ones(3, np.int32), 0.1, 0, "int8"), TypeError, "x"),
        (lambda: qtflite.quantize_multiplier(float("nan")), ValueError, "finite"),
        (lambda: qtflite.quantize_multiplier("0.5"), TypeError, "real_multiplier"),
        (lambda: qtflite.multiply_by_quantized_multiplier(np.int32([1]), 2**30, 31), ValueError, "shift"),
        (lambda: qtflite.multiply_by_quantized_multiplier(np.int32([1]), 2**30, -32), ValueError, "shift"),
        (lambda: qtflite.multiply_by_quantized_multiplier(np.int64([2**40]), 2**30, 0), ValueError, "x"),
        (
            lambda: qtflite.multiply_by_quantized_multiplier(np.int32([1]), -5, 0, single_rounding=True),
            ValueError,
            "quantized_multiplier",
        ),
        (lambda: qtflite.multiply_by_quantized_multiplier(np.float32([1]), 2**30, 0), TypeError, "x"),
        (
            lambda: qtflite.multiply_by_quantized_multiplier(np.int32([1, 2]), np.int32([1, 2, 3]), 0),
            ValueError,
            "broadcast",
        ),
        (lambda: qtflite.rounding_divide_by_pot(np.int32([1]), 32), ValueError, "exponent"),
        (lambda: _fc(weights=(4, 5)), ValueError, "depth"),
        (lambda: _fc(multipliers=3), ValueError, "output_multiplier"),
        (lambda: _fc(bias=[0] * 3), ValueError, "bias"),
        (lambda: _fc(x_dtype=np.uint8), TypeError, "x"),
        (lambda: _fc(input_zero_point=200), ValueError, "input_zero_point"),
        (lambda: _conv((1, 4, 4, 3), (2, 3, 3, 2)), ValueError, "multiple"),
        (lambda: _conv((1, 4, 4, 2), (2, 3, 3, 2), padding="FULL"), ValueError, "padding"),
        (lambda: _conv((1, 2, 2, 2), (2, 3, 3, 2)), ValueError, "larger"),
        (lambda: qtflite.per_channel_multipliers(0.0, [0.1], 0.2), ValueError, "input_scale"),
        (
            lambda: qtflite.quantize(np.ones(3, np.float32), 1e-40, 0, "int8"),
            ValueError,
            "scale.*JAX flushes subnormal float32 to zero on CPU, so results would not match",
        ),
        (lambda: qtflite.quantize(np.ones(3, np.float32), 5e-39, 0, "int8"), ValueError, "smallest normal float32"),
        (lambda: _conv((1, 4, 4, 0), (2, 3, 3, 1)), ValueError, "x and filters.*channel"),
        (lambda: _conv((1, 4, 4, 0), (2, 3, 3, 0)), ValueError, "x and filters.*channel"),
    ],
)
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize(
    "size,kernel,stride,dilation,expected",
    [
        (7, 3, 2, 1, (1, 1)),  # out 4: total = 3*2 + 3 - 7 = 2
        (8, 3, 2, 1, (0, 1)),  # out 4: total = 3*2 + 3 - 8 = 1, the odd pixel after
        (8, 3, 1, 1, (1, 1)),  # out 8: total = 7 + 3 - 8 = 2
        (8, 4, 1, 1, (1, 2)),  # out 8: total = 7 + 4 - 8 = 3
        (5, 3, 3, 1, (0, 1)),  # out 2: total = 3 + 3 - 5 = 1
        (9, 1, 2, 1, (0, 0)),  # out 5: total = 8 + 1 - 9 = 0
        (4, 1, 3, 1, (0, 0)),  # out 2: total = max(3 + 1 - 4, 0) = 0
        (6, 3, 4, 1, (0, 1)),  # out 2: total = 4 + 3 - 6 = 1
        (7, 3, 1, 2, (2, 2)),  # effective kernel 5, out 7: total = 6 + 5 - 7 = 4
        (10, 3, 2, 3, (2, 3)),  # effective kernel 7, out 5: total = 8 + 7 - 10 = 5
    ],
)
def test_same_padding_hand_computed(size, kernel, stride, dilation, expected):
    assert qtflite._same_padding(size, kernel, stride, dilation) == expected


@pytest.mark.parametrize("size,stride,expected_rows", [(7, 2, (1, 1)), (8, 2, (0, 1))])
def test_conv2d_same_padding_hand_computed(size, stride, expected_rows):
    """conv2d(padding="SAME") equals explicit hand-computed pads: the extra pixel goes at the bottom/right."""
    rng = np.random.default_rng(11)
    x = rng.integers(-128, 128, (1, size, size, 2)).astype(np.int8)
    filters = rng.integers(-127, 128, (3, 3, 3, 2)).astype(np.int8)
    multipliers, shifts = qtflite.per_channel_multipliers(0.05, [0.01, 0.02, 0.03], 0.1)
    common = dict(input_zero_point=3, output_zero_point=-2, strides=(stride, stride))
    same = qtflite.conv2d(x, filters, None, multipliers, shifts, padding="SAME", **common)
    explicit = qtflite.conv2d(x, filters, None, multipliers, shifts, padding=(expected_rows, expected_rows), **common)
    np.testing.assert_array_equal(same, explicit)
    expected = _conv_reference(
        x,
        filters,
        np.zeros(3, np.int64),
        multipliers,
        shifts,
        3,
        -2,
        (stride, stride),
        (expected_rows, expected_rows),
        (1, 1),
    )
    np.testing.assert_array_equal(same, expected)
