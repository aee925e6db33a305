"""Tests for quantref.rounding: rounding modes against exact references, stochastic rounding, SQNR, error split."""

import math
from fractions import Fraction

import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from quantref import affine, formats, rounding

# --- deterministic modes against exact rational references -------------------------------------------------------


def _reference(value: float, mode: str) -> float:
    """Round a float32 value exactly, in rationals (no floating-point rounding anywhere)."""
    if not math.isfinite(value):
        return value
    x = Fraction(value)
    half = Fraction(1, 2)
    if mode == "half_to_even":
        return float(round(x))  # Fraction.__round__ rounds ties to even
    if mode == "half_up":
        return float(math.floor(x + half))
    if mode == "half_away_from_zero":
        return float(math.copysign(math.floor(abs(x) + half), value))
    if mode == "floor":
        return float(math.floor(x))
    if mode == "ceil":
        return float(math.ceil(x))
    raise AssertionError(mode)


DETERMINISTIC = ("half_to_even", "half_away_from_zero", "half_up", "floor", "ceil")


def _hard_cases() -> np.ndarray:
    ties = np.arange(-10, 10, dtype=np.float32) + np.float32(0.5)
    big = np.float32(2.0**23)
    large = np.array([big - 0.5, big - 1.5, big - 1, big, big + 1, 2.0**22 + 0.5, 2.0**22 - 0.5, 2.0**24], np.float32)
    centre = np.concatenate([ties, large, -large, [0.49999997, -0.49999997, 0.0, 1e-30, -1e-30, 0.7, -0.7]])
    centre = centre.astype(np.float32)
    up = np.nextafter(centre, np.float32(np.inf))
    down = np.nextafter(centre, np.float32(-np.inf))
    cases = np.concatenate([centre, up, down])
    # XLA flushes subnormal float32 inputs to zero (floor(-1e-45) gives -0.0, not -1), so the neighbours of 0 are
    # left out; a subnormal x / scale would need a subnormal-sized x in the first place.
    return cases[(cases == 0) | (np.abs(cases) >= np.finfo(np.float32).tiny)]


def test_hard_cases_include_the_floor_plus_half_trap():
    x = np.float32(0.49999997)
    assert x == np.nextafter(np.float32(0.5), np.float32(0))
    # The naive floor(x + 0.5) rounds it up, because x + 0.5 rounds to 1.0 in float32.
    assert np.floor(x + np.float32(0.5)) == 1.0
    for mode in DETERMINISTIC[:3]:
        assert float(rounding.round_to_int(jnp.float32(x), mode)) == 0.0
        assert float(rounding.round_to_int(jnp.float32(-x), mode)) == 0.0


@pytest.mark.parametrize("mode", DETERMINISTIC)
def test_modes_match_exact_reference_on_ties_neighbours_and_large_values(mode):
    x = _hard_cases()
    got = np.asarray(rounding.round_to_int(jnp.asarray(x), mode))
    assert got.dtype == np.float32
    expected = np.array([_reference(float(v), mode) for v in x], np.float32)
    np.testing.assert_array_equal(got, expected)


def test_tie_directions_spelled_out():
    ties = jnp.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5], jnp.float32)
    expected = {
        "half_to_even": [-2, -2, 0, 0, 2, 2],
        "half_away_from_zero": [-3, -2, -1, 1, 2, 3],
        "half_up": [-2, -1, 0, 1, 2, 3],
        "floor": [-3, -2, -1, 0, 1, 2],
        "ceil": [-2, -1, 0, 1, 2, 3],
    }
    for mode, want in expected.items():
        np.testing.assert_array_equal(rounding.round_to_int(ties, mode), want, err_msg=mode)


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float32, 64, elements=st.floats(-1e9, 1e9, width=32, allow_subnormal=False)))
def test_modes_match_exact_reference_on_random_floats(x):
    for mode in DETERMINISTIC:
        got = np.asarray(rounding.round_to_int(jnp.asarray(x), mode))
        expected = np.array([_reference(float(v), mode) for v in x], np.float32)
        np.testing.assert_array_equal(got, expected, err_msg=mode)


@pytest.mark.parametrize("mode", rounding.ROUNDING_MODES)
def test_nan_and_inf_pass_through(mode):
    x = jnp.array([np.nan, np.inf, -np.inf], jnp.float32)
    got = np.asarray(rounding.round_to_int(x, mode, key=jax.random.key(0)))
    assert np.isnan(got[0]) and got[1] == np.inf and got[2] == -np.inf


def test_integer_input_is_rounded_as_float32():
    got = rounding.round_to_int(jnp.array([1, -2, 3], jnp.int32), "half_up")
    assert got.dtype == jnp.float32
    np.testing.assert_array_equal(got, [1, -2, 3])


def test_bad_mode_and_missing_key_are_refused():
    with pytest.raises(ValueError, match="rounding"):
        rounding.round_to_int(jnp.ones(3), "nearest")
    with pytest.raises(ValueError, match="key"):
        rounding.round_to_int(jnp.ones(3), "stochastic")
    with pytest.raises(ValueError, match="rounding"):
        rounding.check_rounding("half_down", None)
    rounding.check_rounding("stochastic", jax.random.key(0))


# --- stochastic rounding -----------------------------------------------------------------------------------------

DRAWS = 200_000


@pytest.mark.parametrize("value", [0.1, 0.5, 0.9, -2.3, 7.75, -0.01, 1000.125])
def test_stochastic_rounding_is_unbiased(value):
    x = np.float32(value)
    draws = np.asarray(rounding.round_to_int(jnp.full(DRAWS, x), "stochastic", jax.random.key(7)))
    floor, ceil = math.floor(x), math.ceil(x)
    assert set(np.unique(draws).tolist()) <= {floor, ceil}
    # Each draw is floor + Bernoulli(r); the mean of n draws has std sqrt(r (1 - r) / n). Allow 5 sigma.
    r = float(Fraction(float(x)) - floor)
    sigma = math.sqrt(r * (1 - r) / DRAWS)
    assert abs(draws.astype(np.float64).mean() - float(x)) <= 5 * sigma + 1e-6


@settings(max_examples=50, deadline=None)
@given(
    hnp.arrays(np.float32, 256, elements=st.floats(-1e6, 1e6, width=32, allow_subnormal=False)),
    st.integers(0, 2**31 - 1),
)
def test_stochastic_rounding_only_goes_to_floor_or_ceil(x, seed):
    got = np.asarray(rounding.round_to_int(jnp.asarray(x), "stochastic", jax.random.key(seed)))
    assert np.all((got == np.floor(x)) | (got == np.ceil(x)))
    # Integers never move.
    integral = x == np.floor(x)
    np.testing.assert_array_equal(got[integral], x[integral])


def test_stochastic_rounding_is_deterministic_per_key():
    x = jnp.full(1000, 0.5, jnp.float32)
    a = rounding.round_to_int(x, "stochastic", jax.random.key(3))
    b = rounding.round_to_int(x, "stochastic", jax.random.key(3))
    c = rounding.round_to_int(x, "stochastic", jax.random.key(4))
    np.testing.assert_array_equal(a, b)
    # Two keys agreeing on 1000 fair coin flips has probability 2**-1000.
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_stochastic_quantize_is_unbiased_through_the_affine_quantizer():
    x = jnp.full(DRAWS, 0.3, jnp.float32)
    q = np.asarray(affine.quantize(x, 1.0, 0, formats.INT8, rounding="stochastic", key=jax.random.key(1)))
    assert set(np.unique(q).tolist()) <= {0, 1}
    sigma = math.sqrt(0.3 * 0.7 / DRAWS)
    assert abs(q.astype(np.float64).mean() - 0.3) <= 5 * sigma + 1e-6


# --- noise power and SQNR ----------------------------------------------------------------------------------------

SAMPLES = 1 << 17
DB_PER_BIT = 20 * math.log10(2)  # 6.0206


def _full_scale_uniform(bits: int, step: float, rng: np.random.Generator) -> np.ndarray:
    # The 2**b cells of the grid span [(qmin - 1/2) step, (qmax + 1/2) step], centred on -step/2 for any grid of
    # 2**b consecutive integers. The signal is centred on zero (its power is all AC, as the 6.02 b derivation
    # assumes), and is shifted by -step/2 into the quantizer's full-scale range; see _quantize_centred.
    half_span = 2 ** (bits - 1) * step
    return rng.uniform(-half_span, half_span, SAMPLES).astype(np.float32)


def _quantize_centred(x: np.ndarray, bits: int, step: float) -> np.ndarray:
    """x_hat for a zero-centred signal x whose full scale is the library grid's, via fake_quant."""
    fmt = formats.int_format(bits)
    shifted = jnp.asarray(x - np.float32(step / 2))
    return np.asarray(affine.fake_quant(shifted, step, 0, fmt)) + np.float32(step / 2)


@pytest.mark.parametrize("bits", range(2, 13))
def test_uniform_full_scale_sqnr_is_6_02_b_not_6_02_b_plus_1_76(bits):
    step = 1.0 / 2**bits
    x = _full_scale_uniform(bits, step, np.random.default_rng(bits))
    shifted = x - np.float32(step / 2)
    lo, hi = (formats.int_format(bits).qmin - 0.5) * step, (formats.int_format(bits).qmax + 0.5) * step
    assert lo <= shifted.min() and shifted.max() <= hi
    x_hat = _quantize_centred(x, bits, step)
    measured = float(rounding.sqnr_db(x, x_hat))
    uniform_ideal = float(rounding.ideal_sqnr_db(bits, "uniform"))
    assert abs(uniform_ideal - DB_PER_BIT * bits) < 1e-4
    assert abs(measured - uniform_ideal) <= 0.5
    # The often-quoted 6.02 b + 1.76 dB is the sine-wave figure; a uniform signal is 1.76 dB below it.
    assert abs(measured - (DB_PER_BIT * bits + 10 * math.log10(1.5))) > 0.5
    # The noise itself is uniform on [-step/2, step/2]: power step^2 / 12. The mean of n squared uniform errors
    # has relative std sqrt(1/80 - 1/144) * 12 / sqrt(n) = 0.894 / sqrt(n); allow 5 sigma.
    noise = np.mean((x.astype(np.float64) - x_hat) ** 2)
    assert abs(noise / float(rounding.uniform_noise_power(step)) - 1) <= 5 * 0.894 / math.sqrt(SAMPLES)


def test_uncentred_uniform_signal_carries_a_dc_term():
    # Quantizing the grid's own full-scale range [(qmin - 1/2) step, (qmax + 1/2) step] directly counts its mean
    # (-step/2) as signal power: SQNR = 10 log10(4**b + 3), 0.75 dB above 6.02 b at b = 2. This is why the SQNR
    # tests centre the signal.
    bits, step = 2, 0.25
    x = _full_scale_uniform(bits, step, np.random.default_rng(0)) - np.float32(step / 2)
    x_hat = affine.fake_quant(jnp.asarray(x), step, 0, formats.int_format(bits))
    assert abs(float(rounding.sqnr_db(x, x_hat)) - 10 * math.log10(4**bits + 3)) < 0.05


# A full-scale sine (amplitude 2**(b-1) step) dwells near its peaks, where the error is not uniform, so the
# uniform-noise model overestimates its SQNR at low b. Measured minus (6.02 b + 1.76), in dB, with 2**17 evenly
# spaced phases: b=2: -1.00, b=3: -0.73, b=4: -0.53, b=5: -0.38, b=6: -0.27, b=8: -0.14, b=10: -0.07, b=12: -0.04.
# The 0.5 dB claim therefore holds from b = 5.
@pytest.mark.parametrize("bits", range(5, 13))
def test_full_scale_sine_sqnr_is_6_02_b_plus_1_76(bits):
    step = 1.0 / 2**bits
    phase = (np.arange(SAMPLES) + 0.5) / SAMPLES
    x = (2 ** (bits - 1) * step * np.sin(2 * np.pi * phase)).astype(np.float32)
    measured = float(rounding.sqnr_db(x, _quantize_centred(x, bits, step)))
    sine_ideal = float(rounding.ideal_sqnr_db(bits, "sine"))
    assert abs(sine_ideal - (DB_PER_BIT * bits + 10 * math.log10(1.5))) < 1e-4
    assert abs(measured - sine_ideal) <= 0.5


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_full_scale_sine_sqnr_falls_short_of_the_model_at_low_bits(bits):
    step = 1.0 / 2**bits
    phase = (np.arange(SAMPLES) + 0.5) / SAMPLES
    x = (2 ** (bits - 1) * step * np.sin(2 * np.pi * phase)).astype(np.float32)
    measured = float(rounding.sqnr_db(x, _quantize_centred(x, bits, step)))
    shortfall = float(rounding.ideal_sqnr_db(bits, "sine")) - measured
    assert 0.5 < shortfall < 1.1


def test_ideal_sqnr_and_sqnr_db_values():
    np.testing.assert_allclose(rounding.ideal_sqnr_db(8, "uniform"), 20 * math.log10(256), rtol=1e-6)
    np.testing.assert_allclose(rounding.ideal_sqnr_db(8), 20 * math.log10(256) + 10 * math.log10(1.5), rtol=1e-6)
    with pytest.raises(ValueError, match="signal"):
        rounding.ideal_sqnr_db(8, "gaussian")
    # power 2 over noise power 2 * 0.01: 100, i.e. 20 dB.
    np.testing.assert_allclose(rounding.sqnr_db(jnp.array([1.0, -1.0]), jnp.array([1.1, -0.9])), 20.0, rtol=1e-5)
    assert float(rounding.sqnr_db(jnp.ones(3), jnp.ones(3))) == np.inf
    with pytest.raises(ValueError, match="x_hat"):
        rounding.sqnr_db(jnp.ones(3), jnp.ones(4))
    np.testing.assert_allclose(rounding.uniform_noise_power(0.5), 0.25 / 12, rtol=1e-7)


# --- clipping / rounding error split ------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(
    hnp.arrays(np.float32, 128, elements=st.floats(-8, 8, width=32)),
    st.floats(0.01, 0.1),
    st.integers(-20, 20),
)
def test_error_split_adds_up_and_matches_numpy(x, scale, zero_point):
    fmt = formats.INT8
    scale = np.float32(scale)
    x_hat = np.asarray(affine.fake_quant(jnp.asarray(x), scale, zero_point, fmt))
    lo, hi = (fmt.qmin - zero_point) * scale, (fmt.qmax - zero_point) * scale
    split = rounding.error_split(x, x_hat, lo, hi)
    np.testing.assert_allclose(split["clipping"] + split["rounding"], split["total"], rtol=1e-5, atol=1e-12)
    sq = (x.astype(np.float64) - x_hat) ** 2
    outside = (x < lo) | (x > hi)
    np.testing.assert_allclose(split["clipping"], sq[outside].sum() / x.size, rtol=1e-4, atol=1e-12)
    np.testing.assert_allclose(split["rounding"], sq[~outside].sum() / x.size, rtol=1e-4, atol=1e-12)
    np.testing.assert_allclose(split["clipped_fraction"], outside.mean(), rtol=1e-6)
    # Rounding error alone is at most (step/2)^2 per element on average.
    assert float(split["rounding"]) <= (scale / 2) ** 2 * (1 + 1e-4)


def test_error_split_has_no_clipping_when_nothing_is_clipped():
    x = np.random.default_rng(0).uniform(-1, 1, 1000).astype(np.float32)
    scale = np.float32(1 / 127)
    x_hat = affine.fake_quant(jnp.asarray(x), scale, 0, formats.INT8)
    split = rounding.error_split(x, x_hat, -128 * scale, 127 * scale)
    assert float(split["clipping"]) == 0.0 and float(split["clipped_fraction"]) == 0.0
    assert float(split["rounding"]) == float(split["total"]) > 0.0


def test_error_split_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="x_hat"):
        rounding.error_split(jnp.ones(3), jnp.ones(2), -1.0, 1.0)
