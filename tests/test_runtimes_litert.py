"""quantref.runtimes.litert against exact integer references (Python big ints and fractions) and the numpy
reference of tests/litert_reference.py; live LiteRT checks these same functions in tests/test_export_tflite.py."""

import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import litert_reference as reference
import numpy as np
import pytest

from quantref.runtimes import litert as qlitert
from quantref.runtimes import tflite as qtflite

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
EDGES = [0, 1, -1, 2, -2, 3, -3, INT32_MAX, INT32_MIN, INT32_MIN + 1, 2**30, -(2**30), 12345, -12345, 65536, -65536]


def _wrap32(value: int) -> int:
    return (value + 2**31) % 2**32 - 2**31


def _round_half_away(value: Fraction) -> int:
    return math.floor(value + Fraction(1, 2)) if value >= 0 else -math.floor(-value + Fraction(1, 2))


def _x86_int32(value: int) -> int:
    return value if INT32_MIN <= value <= INT32_MAX else INT32_MIN


# --- ruy ----------------------------------------------------------------------------------------------------------


def _ruy(x: int, multiplier: int, shift: int) -> int:
    """ruy's fixed-point multiply in Python integers: floor divisions, each rounding's ties going up."""
    high = (_wrap32(x << max(shift, 0)) * multiplier + 2**30) // 2**31
    right = max(-shift, 0)
    return (high + (1 << right >> 1)) // 2**right


@pytest.mark.parametrize("real", [0.5, 0.25, 1 / 3, 0.0013, 3.05e-5, 0.999, 1.7, 300.0])
def test_ruy_multiply_matches_python_integers(real):
    multiplier, shift = qtflite.quantize_multiplier(real)
    x = np.array(EDGES + list(range(-3000, 3000)), np.int64)
    got = np.asarray(qlitert.ruy_multiply(x, multiplier, shift))
    np.testing.assert_array_equal(got, [_wrap32(_ruy(int(v), multiplier, shift)) for v in x])


def test_ruy_and_gemmlowp_differ_only_at_negative_ties():
    # M = 1/4 is q_m = 2^30 with shift -1: the high multiply gives h = floor((x + 1) / 2), then h / 2 is rounded,
    # a tie whenever h is odd. gemmlowp sends the negative ties down (away from zero), ruy up.
    multiplier, shift = qtflite.quantize_multiplier(0.25)
    x = np.arange(-64, 65, dtype=np.int32)
    ruy = np.asarray(qlitert.ruy_multiply(x, multiplier, shift))
    gemmlowp = np.asarray(qtflite.multiply_by_quantized_multiplier(x, multiplier, shift))
    high = (x.astype(np.int64) + 1) // 2
    np.testing.assert_array_equal(x[ruy != gemmlowp], x[(high < 0) & (high % 2 == 1)])  # -63, -62, -59, -58, ...
    np.testing.assert_array_equal((ruy - gemmlowp)[ruy != gemmlowp], 1)  # e.g. h = -3: -3/2 -> -1, not -2
    assert np.sum(ruy != gemmlowp) == 32


def test_requantize_ruy_clamps_after_a_wrapping_zero_point():
    multiplier, shift = qtflite.quantize_multiplier(0.5)
    acc = np.array([-3, -1, 1, 3, 1000, -1000], np.int32)  # -1.5, -0.5, 0.5, 1.5 go up: -1, 0, 1, 2
    got = qlitert.requantize_ruy(acc, multiplier, shift, -2, -128, 127)
    np.testing.assert_array_equal(np.asarray(got), [-3, -2, -1, 0, 127, -128])
    relu = qlitert.requantize_ruy(acc, multiplier, shift, -2, -2, 127)  # a fused ReLU: clamp at z
    np.testing.assert_array_equal(np.asarray(relu), [-2, -2, -1, 0, 127, -2])


# --- float64 ------------------------------------------------------------------------------------------------------


def _float64_reference(acc: int, real: float, zero_point: int, qmin: int, qmax: int) -> int:
    """C's round(double(acc) * M) + z, clamped: the product rounded to double exactly as IEEE does (Python's
    float(Fraction) rounds correctly, half to even), then half away from zero, x86's cast, a wrapping add."""
    product = Fraction(float(Fraction(acc) * Fraction(real)))
    return min(max(_wrap32(_x86_int32(_round_half_away(product)) + zero_point), qmin), qmax)


def test_encode_float64_is_exact():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.uniform(0, 1, 200) * 2.0 ** rng.integers(-60, 40, 200), [1.0, 0.5, 2.0**-1022]])
    encoded = qlitert.encode_float64(values)
    for value, high, low, exponent in zip(values, *(np.asarray(field) for field in encoded)):
        assert 2**20 <= high < 2**21
        assert Fraction(int(high) * 2**32 + int(low)) * Fraction(2) ** int(exponent) == Fraction(float(value))


def test_per_channel_float64_multipliers_follow_the_kernel():
    s_in, s_w, s_out = np.float32(0.02), np.float32([0.001, 0.0037, 0.5]), np.float32(0.3)
    encoded = qlitert.per_channel_float64_multipliers(s_in, s_w, s_out)
    expected = qlitert.encode_float64(np.float64(s_in) * s_w.astype(np.float64) / np.float64(s_out))
    for got, want in zip(encoded, expected):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_requantize_float64_matches_exact_rounding():
    rng = np.random.default_rng(1)
    # Constructed near-ties: M = (n + 1/2) / acc rounded to double, so acc · M lies within an ulp of n + 1/2 and
    # the double product often lands *on* the tie (then C's round goes away from zero, whatever the exact side).
    acc = rng.integers(1000, 2**31 - 1, 300) * rng.choice([-1, 1], 300)
    n = rng.integers(-100, 100, 300)
    reals = np.abs((n + 0.5) / acc)
    on_tie = sum(
        float(Fraction(int(a)) * Fraction(float(m))) % 1 == 0.5 and Fraction(int(a)) * Fraction(float(m)) % 1 != 0.5
        for a, m in zip(acc, reals)
    )
    assert on_tie > 100  # the double product was rounded onto the tie: exact rounding would differ
    cases = [(int(a), float(m)) for a, m in zip(acc, reals)]
    # Random products, edges, and multipliers above 1 that push acc · M outside int32 (x86: INT32_MIN).
    cases += [(int(a), float(m)) for a, m in zip(rng.integers(INT32_MIN, INT32_MAX, 300), rng.uniform(1e-6, 1, 300))]
    cases += [(a, m) for a in EDGES for m in (0.5, 0.999999, 1.0, 1.5, 3e-10, 2.0**-40)]
    for zero_point in (0, 7, -7):
        got = [
            int(qlitert.requantize_float64(np.int32(a), qlitert.encode_float64(m), zero_point, -128, 127))
            for a, m in cases[:: 4 if zero_point else 1]
        ]
        want = [_float64_reference(a, m, zero_point, -128, 127) for a, m in cases[:: 4 if zero_point else 1]]
        assert got == want


def test_requantize_float64_unclamped_against_numpy_double():
    """The int32 result before the clamp, on 24,000 random products: numpy's float64 is the C++'s double."""
    rng = np.random.default_rng(2)
    acc = rng.integers(INT32_MIN, INT32_MAX, (2000, 12), endpoint=True).astype(np.int32)
    reals = rng.uniform(0.5, 1, 12) * 2.0 ** rng.integers(-45, 3, 12)
    got = qlitert.requantize_float64(acc, qlitert.encode_float64(reals), 0, INT32_MIN, INT32_MAX)
    with np.errstate(invalid="ignore"):
        want = reference.x86_int32(reference.std_round(acc.astype(np.float64) * reals))
    np.testing.assert_array_equal(np.asarray(got), want)


# --- QUANTIZE and DEQUANTIZE --------------------------------------------------------------------------------------


def _quantize_inputs(scale: np.float32, rng: np.random.Generator) -> np.ndarray:
    ties = ((np.arange(-300, 300) + 0.5) * np.float64(scale)).astype(np.float32)
    special = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e30, -1e30, 3e9, -3e9, 2.0**31 * scale, -(2.0**31) * scale]
    return np.concatenate(
        [
            ties,
            np.nextafter(ties, np.float32(np.inf)),
            np.nextafter(ties, np.float32(-np.inf)),
            (rng.standard_normal(400) * 60 * scale).astype(np.float32),
            np.array(special, np.float32),
        ]
    )


@pytest.mark.parametrize("kernels", qlitert.KERNEL_SETS)
def test_quantize_matches_the_numpy_reference(kernels):
    rng = np.random.default_rng(3)
    for trial in range(6):
        scale = np.float32(rng.uniform(0.5, 2) * 10.0 ** rng.uniform(-4, 2))
        zero_point = int(rng.integers(-128, 128))
        x = _quantize_inputs(scale, rng)[: 2000 - trial]  # every length mod 8: tails of 0..5 elements
        got = np.asarray(qlitert.quantize(x, scale, zero_point, "int8", kernels))
        np.testing.assert_array_equal(got, reference.quantize(x, scale, zero_point, kernels))
        got = np.asarray(qlitert.quantize(x, scale, 3, "uint8", kernels))
        np.testing.assert_array_equal(got, reference.quantize(x, scale, 3, kernels, 0, 255))


def test_optimized_quantize_scalar_tail_is_the_exact_double_division():
    """The tail's round(double(x) / s) against exact fractions, where the float32 quotient misleads: values a few
    float32 ulps from a half-integer quotient (the reference kernel's f32(x / s) can round onto the half-integer)."""
    scale = np.float32(0.1)
    halves = ((np.arange(-126, 126) + 0.5) * np.float64(scale)).astype(np.float32)
    x = np.concatenate([np.nextafter(halves, np.float32(d)) for d in (-9, 9)] + [halves])
    # Tensors of 7 elements are all scalar tail (no block of 8).
    got = np.concatenate([qlitert.quantize(chunk, scale, 0, "int8", "optimized") for chunk in x.reshape(-1, 7)])
    exact = [_round_half_away(Fraction(float(v)) / Fraction(float(scale))) for v in x]
    np.testing.assert_array_equal(got, np.clip(exact, -128, 127))
    float32_quotient = np.asarray(qlitert.quantize(x, scale, 0, "int8", "reference"))
    assert np.sum(float32_quotient != got) >= 10  # the reference kernel rounds these the other way


def test_quantize_kernel_sets_part_at_ties_and_out_of_range():
    scale = np.float32(0.5)
    x = np.array([0.25, 0.75, -0.25, -0.75, 1e30, np.nan] + [0.0] * 2, np.float32)  # 8 values: all vector lanes
    codes = {k: np.asarray(qlitert.quantize(x, scale, -5, "int8", k)).tolist() for k in qlitert.KERNEL_SETS}
    assert codes["reference"] == [-4, -3, -6, -7, 127, 127, -5, -5]  # half away; INT32_MIN - 5 wraps to the top
    assert codes["optimized"] == [-5, -3, -5, -7, 127, 127, -5, -5]  # half to even, same wrap
    assert codes["xnnpack"] == [-5, -3, -5, -7, 127, 127, -5, -5]
    codes = {k: np.asarray(qlitert.quantize(x, scale, 5, "int8", k)).tolist() for k in qlitert.KERNEL_SETS}
    assert codes["optimized"][4:6] == [-128, -128] and codes["xnnpack"][4:6] == [127, 127]  # wrap vs saturate


def test_vector_lanes_cover_the_flattened_batch():
    lanes = qlitert.vector_lanes((3, 5))  # 15 elements: one block of 8, then a scalar tail of 7
    assert lanes.sum() == 8 and lanes.ravel()[:8].all() and not lanes.ravel()[8:].any()
    assert qlitert.vector_lanes((2, 4)).all() and not qlitert.vector_lanes((1, 7)).any()


@pytest.mark.parametrize("kernels", qlitert.KERNEL_SETS)
def test_dequantize_matches_the_numpy_reference(kernels):
    rng = np.random.default_rng(5)
    for size in (1, 7, 8, 9, 1000):
        q = rng.integers(-128, 128, size).astype(np.int8)
        scale, zero_point = np.float32(rng.uniform(1e-3, 1)), int(rng.integers(-128, 128))
        got = np.asarray(qlitert.dequantize(q, scale, zero_point, kernels))
        want = reference.dequantize(q, scale, zero_point, kernels)
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_optimized_dequantize_rounds_twice_in_its_vector_blocks():
    q = np.full(9, -9, np.int8)  # 8 vector lanes, then one scalar lane
    got = np.asarray(qlitert.dequantize(q, 0.1, 5, "optimized"))
    assert got[0] == np.float32(-1.4000001) and got[8] == np.float32(-1.4)
    assert np.asarray(qlitert.dequantize(q, 0.1, 5, "reference"))[0] == np.float32(-1.4)


def test_everything_jits_with_traced_parameters():
    x = _quantize_inputs(np.float32(0.1), np.random.default_rng(6))[:1001]
    for kernels in qlitert.KERNEL_SETS:
        traced = jax.jit(lambda x, s, z, k=kernels: qlitert.quantize(x, s, z, "int8", k))
        eager = qlitert.quantize(x, 0.1, -3, "int8", kernels)
        np.testing.assert_array_equal(traced(x, jnp.float32(0.1), jnp.int32(-3)), eager)
        dq = jax.jit(lambda q, s, z, k=kernels: qlitert.dequantize(q, s, z, k))
        np.testing.assert_array_equal(
            dq(eager, jnp.float32(0.1), jnp.int32(-3)), qlitert.dequantize(eager, 0.1, -3, kernels)
        )
    acc = np.arange(-5000, 5000, 7, dtype=np.int32)
    multiplier = qlitert.encode_float64(0.0123)
    traced = jax.jit(qlitert.requantize_float64)(acc, multiplier, jnp.int32(3), jnp.int32(-128), 127)
    np.testing.assert_array_equal(traced, qlitert.requantize_float64(acc, multiplier, 3, -128, 127))


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: qlitert.quantize(np.ones(3, np.float32), 0.1, 0, "int8", "gpu"), ValueError, "kernels"),
        (lambda: qlitert.quantize(np.ones(3, np.float32), 0.1, 0, "int16"), ValueError, "dtype"),
        (lambda: qlitert.quantize(np.ones(3, np.int32), 0.1, 0), TypeError, "x"),
        (lambda: qlitert.quantize(np.ones(3, np.float32), 0.0, 0), ValueError, "scale"),
        (lambda: qlitert.quantize(np.ones(3, np.float32), 1e-40, 0), ValueError, "scale"),
        (lambda: qlitert.quantize(np.ones(3, np.float32), "0.1", 0), TypeError, "scale"),
        (lambda: qlitert.quantize(np.ones(3, np.float32), 0.1, 200), ValueError, "zero_point"),
        (lambda: qlitert.quantize(np.ones(3, np.float32), 0.1, 0.5), TypeError, "zero_point"),
        (lambda: qlitert.quantize(np.ones(3, np.float32), np.float32([0.1, 0.2]), 0), ValueError, "scalars"),
        (lambda: qlitert.dequantize(np.ones(3, np.int32), 0.1, 0), TypeError, "q"),
        (lambda: qlitert.dequantize(np.ones(3, np.uint8), 0.1, -1), ValueError, "zero_point"),
        (lambda: qlitert.encode_float64([0.5, 0.0]), ValueError, "real_multipliers"),
        (lambda: qlitert.encode_float64(np.nan), ValueError, "real_multipliers"),
        (lambda: qlitert.encode_float64("a"), TypeError, "real_multipliers"),
        (lambda: qlitert.per_channel_float64_multipliers(-1.0, [0.1], 0.2), ValueError, "input_scale"),
        (lambda: qlitert.requantize_float64(np.int32([1]), 0.5, 0, -128, 127), TypeError, "Float64Multiplier"),
        (lambda: qlitert.requantize_float64(np.float32([1]), qlitert.encode_float64(0.5), 0, 0, 1), TypeError, "acc"),
        (lambda: qlitert.requantize_ruy(np.int32([1]), 2**30, 40, 0, -128, 127), ValueError, "shift"),
        (lambda: qlitert.requantize_ruy(np.int32([1]), 2**30, 0, 0, 9, 3), ValueError, "qmin"),
        (lambda: qlitert.ruy_multiply(np.int64([2**40]), 2**30, 0), ValueError, "x"),
        (lambda: qlitert.ruy_multiply(np.int32([1, 2]), np.int32([1, 2, 3]), 0), ValueError, "broadcast"),
    ],
)
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()
