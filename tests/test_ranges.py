"""Tests for quantref.ranges: streaming range observers (min-max, abs-max, EMA, percentile, MSE, entropy)."""

import itertools

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from quantref import affine, formats, ranges

ROWS, COLS, BATCH_ROWS = 64, 6, 8  # fixed batch shapes: one compilation per observer


def _fold(observer, batches, init_example=None):
    """The observer's state after all batches, with a jitted update (as ``calibrate`` runs it)."""
    update = jax.jit(observer.update)
    state = observer.init(batches[0] if init_example is None else init_example)
    for batch in batches:
        state = update(state, batch)
    return state


def _spread_data(seed: int, rows: int = ROWS, cols: int = COLS) -> np.ndarray:
    """Heavy-tailed data whose rows have magnitudes 2**-20 .. 2**20, so the histogram re-bins many times."""
    rng = np.random.default_rng(seed)
    scales = 2.0 ** rng.integers(-20, 21, size=(rows, 1))
    return (rng.standard_t(3, size=(rows, cols)) * scales).astype(np.float32)


def _fake_quant_sse(x, min_val, max_val, fmt, *, symmetric=False, axis=None, block_size=None) -> float:
    scale, zero_point = affine.scale_zero_point(min_val, max_val, fmt, symmetric=symmetric)
    x_hat = affine.fake_quant(x, scale, zero_point, fmt, axis=axis, block_size=block_size)
    return float(np.sum((np.asarray(x, np.float64) - np.asarray(x_hat, np.float64)) ** 2))


def _heavy_tailed(seed: int, size: int = 20000) -> np.ndarray:
    """Laplace data with five outliers ten times larger than their neighbours."""
    rng = np.random.default_rng(seed)
    x = rng.laplace(size=size).astype(np.float32)
    x[rng.choice(size, 5, replace=False)] *= 10.0
    return x


# Observers are built once: each new observer's update is a new function for jax.jit to compile.
NAMED = {
    name: ranges.observer_from_name(name, **({"fmt": formats.INT8} if name in ("mse", "entropy") else {}))
    for name in ranges.OBSERVERS
}
# Every histogram observer with the same axis and num_bins shares init/update and so the state; only result differs.
HISTOGRAM_RESULTS = {
    axis: {
        "percentile": ranges.percentile(99.9, axis=axis, num_bins=256),
        "percentile_symmetric": ranges.percentile(99.0, symmetric=True, axis=axis, num_bins=256),
        "mse": ranges.mse(formats.INT4, num_candidates=20, axis=axis, num_bins=256),
        "entropy": ranges.entropy(formats.INT4, axis=axis, num_bins=256),
    }
    for axis in (None, 1)
}


# --- batched == one pass -----------------------------------------------------------------------------------------


MIN_MAX_OBSERVERS = [make(axis=axis) for make in (ranges.min_max, ranges.abs_max) for axis in (None, 1, -1)]


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_min_max_and_abs_max_batched_equal_one_pass_bitwise(seed):
    x = _spread_data(seed)
    batches = np.split(x[np.random.default_rng(seed).permutation(ROWS)], ROWS // BATCH_ROWS)
    for observer in MIN_MAX_OBSERVERS:
        one_pass = observer.result(_fold(observer, [x]))
        batched = observer.result(_fold(observer, batches))
        for a, b in zip(one_pass, batched):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), axis=st.sampled_from([None, 1]))
def test_histogram_counts_and_results_batched_equal_one_pass_bitwise(seed, axis):
    x = _spread_data(seed)
    rng = np.random.default_rng(seed)
    batches = np.split(x[rng.permutation(ROWS)], ROWS // BATCH_ROWS)
    histogram = HISTOGRAM_RESULTS[axis]["percentile"]
    one_pass, batched = _fold(histogram, [x]), _fold(histogram, batches)
    for field, a, b in zip(ranges.HistogramState._fields, one_pass, batched):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=field)
    for name, observer in HISTOGRAM_RESULTS[axis].items():
        for a, b in zip(observer.result(one_pass), observer.result(batched)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)


def test_histogram_counts_equal_a_direct_numpy_binning():
    x = _spread_data(3).reshape(-1)
    num_bins = 256
    state = _fold(ranges.percentile(num_bins=num_bins), np.split(x, 8))
    exponent = np.frexp(np.abs(x).max())[1]
    assert int(state.exponent) == exponent
    magnitude_bin = np.floor(np.abs(x).astype(np.float64) * num_bins / 2.0**exponent).astype(int)
    position = np.where(x < 0, num_bins - 1 - magnitude_bin, num_bins + magnitude_bin)
    np.testing.assert_array_equal(np.asarray(state.counts), np.bincount(position, minlength=2 * num_bins))
    edges = ranges.histogram_edges(state)
    inside = (edges[position] <= x) & (x <= edges[position + 1])
    assert inside.all()


def test_histogram_grows_from_tiny_to_huge_values_exactly():
    tiny = np.array([1e-30, -3e-25, 0.0, 5e-20], np.float32)
    huge = np.array([1e30, -2.5, 7.0, -3e37], np.float32)
    observer = ranges.percentile(num_bins=64)
    one_pass = _fold(observer, [np.concatenate([tiny, huge])])
    for order in ([tiny, huge], [huge, tiny]):
        state = _fold(observer, order)
        np.testing.assert_array_equal(np.asarray(state.counts), np.asarray(one_pass.counts))
        assert int(state.exponent) == int(one_pass.exponent) == np.frexp(np.float32(3e37))[1]


# --- against numpy and slow loops --------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(
    values=st.lists(
        # Subnormals excluded: XLA on CPU flushes them to zero (documented in quantref.ranges).
        st.floats(allow_nan=False, allow_infinity=False, width=32, allow_subnormal=False)
        | st.sampled_from([np.nan, np.inf, -np.inf]),
        min_size=16,
        max_size=16,  # one shape: one compilation
    )
)
def test_min_max_matches_numpy_over_the_finite_values(values):
    x = np.array(values, np.float32)
    min_val, max_val = ranges.calibrate(NAMED["min_max"], [x])
    finite = x[np.isfinite(x)]
    expected = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
    assert (float(min_val), float(max_val)) == (float(expected[0]), float(expected[1]))
    low, high = ranges.calibrate(NAMED["abs_max"], [x])
    bound = float(np.abs(finite).max()) if finite.size else 0.0
    assert (float(low), float(high)) == (-bound, bound)


def _loop_reference(x: np.ndarray, axis: int, block_size: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel / per-group min and max by explicit Python loops over the parameter's entries."""
    moved = np.moveaxis(x, axis, 0)
    if block_size is None:
        min_val = np.array([moved[c][np.isfinite(moved[c])].min() for c in range(moved.shape[0])])
        max_val = np.array([moved[c][np.isfinite(moved[c])].max() for c in range(moved.shape[0])])
        return min_val, max_val
    groups = moved.shape[0] // block_size
    min_val = np.empty((groups,) + moved.shape[1:], np.float32)
    max_val = np.empty_like(min_val)
    for g in range(groups):
        for rest in itertools.product(*(range(d) for d in moved.shape[1:])):
            block = moved[(slice(g * block_size, (g + 1) * block_size),) + rest]
            min_val[(g,) + rest] = block.min()
            max_val[(g,) + rest] = block.max()
    return np.moveaxis(min_val, 0, axis), np.moveaxis(max_val, 0, axis)


@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("block_size", [None, 2])
def test_per_channel_and_per_group_match_a_python_loop(axis, block_size):
    x = np.random.default_rng(axis + 7).normal(size=(4, 6, 8)).astype(np.float32)
    expected_min, expected_max = _loop_reference(x, axis, block_size)
    min_val, max_val = ranges.calibrate(ranges.min_max(axis=axis, block_size=block_size), [x])
    np.testing.assert_array_equal(np.asarray(min_val), expected_min)
    np.testing.assert_array_equal(np.asarray(max_val), expected_max)
    low, high = ranges.calibrate(ranges.abs_max(axis=axis, block_size=block_size), [x])
    np.testing.assert_array_equal(np.asarray(high), np.maximum(-expected_min, expected_max))
    np.testing.assert_array_equal(np.asarray(low), -np.asarray(high))
    # The shapes are what affine expects: quantizing with them works.
    scale, zero_point = affine.scale_zero_point(min_val, max_val, formats.INT8)
    affine.quantize(x, scale, zero_point, formats.INT8, axis=axis, block_size=block_size)


def test_per_channel_over_batches_of_different_sizes():
    x = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    min_val, max_val = ranges.calibrate(ranges.min_max(axis=1), [x[:7], x[7:30], x[30:]])
    np.testing.assert_array_equal(np.asarray(min_val), x.min(axis=0))
    np.testing.assert_array_equal(np.asarray(max_val), x.max(axis=0))


def test_per_channel_histogram_results_equal_per_tensor_results_on_each_channel():
    x = _spread_data(11, rows=128, cols=3)
    per_channel_state = _fold(HISTOGRAM_RESULTS[1]["percentile"], np.split(x, 4))
    per_tensor_states = [_fold(HISTOGRAM_RESULTS[None]["percentile"], [x[:, c]]) for c in range(x.shape[1])]
    for name, per_channel in HISTOGRAM_RESULTS[1].items():
        min_val, max_val = per_channel.result(per_channel_state)
        for c, state in enumerate(per_tensor_states):
            low, high = HISTOGRAM_RESULTS[None][name].result(state)
            assert (float(min_val[c]), float(max_val[c])) == (float(low), float(high)), name


# --- moving average ----------------------------------------------------------------------------------------------


def test_moving_average_known_example_by_hand():
    observer = ranges.moving_average_min_max(momentum=0.9)
    batches = [np.array([-1.0, 0.5, 1.0]), np.array([-3.0, 2.0]), np.array([0.0, 4.0])]
    state = observer.init(batches[0])
    expected = [(-1.0, 1.0), (-1.2, 1.1), (-1.08, 1.39)]  # first batch sets; then 0.9 * old + 0.1 * new
    for batch, (low, high) in zip(batches, expected):
        state = observer.update(state, batch)
        np.testing.assert_allclose([float(v) for v in observer.result(state)], [low, high], rtol=1e-6)


def test_moving_average_per_channel_skips_entries_without_finite_values():
    observer = ranges.moving_average_min_max(momentum=0.5, axis=1)
    first = np.array([[1.0, np.nan], [3.0, np.nan]], np.float32)
    second = np.array([[-1.0, 2.0], [5.0, 4.0]], np.float32)
    min_val, max_val = ranges.calibrate(observer, [first, second])
    np.testing.assert_allclose(np.asarray(min_val), [0.0, 2.0])  # channel 1 first seen in the second batch
    np.testing.assert_allclose(np.asarray(max_val), [4.0, 4.0])
    lonely = ranges.calibrate(observer, [first])
    np.testing.assert_array_equal(np.asarray(lonely[0]), [1.0, 0.0])


# --- MSE ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [formats.INT4, formats.INT8, formats.UINT4, formats.int_format(8, narrow_range=True)])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("seed", [1])
def test_mse_range_is_never_worse_than_min_max_and_strictly_better_with_outliers(fmt, symmetric, seed):
    student_t = np.random.default_rng(seed).standard_t(2, size=4000).astype(np.float32)
    outliers = _heavy_tailed(seed)
    for x in (student_t, outliers):
        baseline = _fake_quant_sse(x, x.min(), x.max(), fmt, symmetric=symmetric)
        optimised = _fake_quant_sse(x, *ranges.mse_range(x, fmt, symmetric=symmetric), fmt, symmetric=symmetric)
        assert optimised <= baseline
    assert optimised < baseline  # on the outlier data
    if fmt.bits == 4:
        assert optimised < 0.6 * baseline


def test_mse_range_equals_min_max_where_min_max_is_best():
    x = np.linspace(-1.0, 1.0, 255, dtype=np.float32)  # exactly on the int8 min-max grid: zero error
    low, high = ranges.mse_range(x, formats.INT8)
    assert (float(low), float(high)) == (-1.0, 1.0)


@pytest.mark.parametrize("axis, block_size", [(0, None), (1, None), (1, 16)])
def test_mse_range_per_channel_and_group_is_never_worse_in_any_channel(axis, block_size):
    rng = np.random.default_rng(5)
    x = rng.laplace(size=(8, 64)).astype(np.float32)
    x[rng.random(x.shape) < 0.01] *= 10.0

    def squared_error_per_param(range_min, range_max):
        """Squared error summed over what each scale covers: one number per channel or group."""
        scale, zero_point = affine.scale_zero_point(range_min, range_max, formats.INT4)
        x_hat = affine.fake_quant(x, scale, zero_point, formats.INT4, axis=axis, block_size=block_size)
        squared = (x.astype(np.float64) - np.asarray(x_hat, np.float64)) ** 2
        moved = np.moveaxis(squared, axis, 0)
        if block_size is None:
            return moved.reshape(moved.shape[0], -1).sum(axis=1)
        return moved.reshape(moved.shape[0] // block_size, block_size, -1).sum(axis=1)

    min_val, max_val = ranges.calibrate(ranges.min_max(axis=axis, block_size=block_size), [x])
    low, high = ranges.mse_range(x, formats.INT4, axis=axis, block_size=block_size)
    assert low.shape == min_val.shape
    baseline, optimised = squared_error_per_param(min_val, max_val), squared_error_per_param(low, high)
    assert np.all(optimised <= baseline * (1 + 1e-9))
    assert optimised.sum() < baseline.sum()


@pytest.mark.parametrize("symmetric", [False, True])
def test_streaming_mse_beats_min_max_and_is_close_to_the_exact_search(symmetric):
    x = _heavy_tailed(2)
    fmt = formats.INT4
    low, high = ranges.calibrate(ranges.mse(fmt, symmetric=symmetric), np.split(x, 10))
    streamed = _fake_quant_sse(x, low, high, fmt, symmetric=symmetric)
    exact = _fake_quant_sse(x, *ranges.mse_range(x, fmt, symmetric=symmetric), fmt, symmetric=symmetric)
    baseline = _fake_quant_sse(x, x.min(), x.max(), fmt, symmetric=symmetric)
    assert streamed < 0.5 * baseline
    assert streamed <= exact * 1.02


def test_streaming_mse_keeps_min_max_on_uniform_data():
    x = np.random.default_rng(0).uniform(-1, 1, 20000).astype(np.float32)
    low, high = ranges.calibrate(ranges.mse(formats.INT8), [x])
    np.testing.assert_allclose([float(low), float(high)], [x.min(), x.max()], rtol=0.02)
    assert _fake_quant_sse(x, low, high, formats.INT8) <= 1.01 * _fake_quant_sse(x, x.min(), x.max(), formats.INT8)


# --- percentile --------------------------------------------------------------------------------------------------


PERCENTILE_HISTOGRAM = ranges.percentile(num_bins=512)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
@pytest.mark.parametrize("symmetric", [False, True])
def test_percentile_is_within_one_bin_of_numpy(seed, symmetric):
    x = np.random.default_rng(seed).standard_t(3, size=3000).astype(np.float32)
    state = _fold(PERCENTILE_HISTOGRAM, np.split(x, 3))
    width = 2.0 ** int(state.exponent) / 512
    for value in (50.0, 90.0, 99.0, 99.9, 99.99, 100.0):
        low, high = (float(v) for v in ranges.percentile(value, symmetric=symmetric, num_bins=512).result(state))
        if symmetric:
            # One threshold t for |x|, clamped to the data's extent on each side.
            threshold = max(-low, high)
            expected = np.percentile(np.abs(x), value, method="inverted_cdf")
            assert expected <= threshold <= expected + width
            assert (low, high) == (max(-threshold, float(x.min())), min(threshold, float(x.max())))
        else:
            upper = np.percentile(x, value, method="inverted_cdf")
            lower = -np.percentile(-x, value, method="inverted_cdf")
            assert upper <= high <= upper + width
            assert lower - width <= low <= lower
        if value == 100.0:
            assert (low, high) == (float(x.min()), float(x.max()))


def test_percentile_per_channel_within_one_bin():
    x = np.random.default_rng(1).normal(size=(2000, 4)).astype(np.float32) * np.array([1, 10, 100, 0.01], np.float32)
    observer = ranges.percentile(99.0, axis=1)
    state = _fold(observer, [x])
    low, high = observer.result(state)
    width = np.ldexp(1.0, np.asarray(state.exponent)) / 2048
    upper = np.percentile(x, 99.0, axis=0, method="inverted_cdf")
    assert np.all((upper <= np.asarray(high)) & (np.asarray(high) <= upper + width))


# --- entropy -----------------------------------------------------------------------------------------------------


def test_entropy_clips_heavy_tails_below_the_max():
    x = _heavy_tailed(0)
    low, high = ranges.calibrate(ranges.entropy(formats.INT8), np.split(x, 4))
    assert float(high) < 0.25 * np.abs(x).max()
    assert float(low) == -float(high)
    # Still above the bulk of the data.
    assert float(high) > np.percentile(np.abs(x), 99.0)


@pytest.mark.parametrize("fmt", [formats.INT8, formats.UINT8])
def test_entropy_keeps_about_the_max_on_uniform_data(fmt):
    x = np.random.default_rng(0).uniform(-1, 1, 50000).astype(np.float32)
    if not fmt.signed:
        x = np.abs(x)
    low, high = ranges.calibrate(ranges.entropy(fmt, num_bins=512), [x])
    assert float(high) >= 0.97 * x.max()
    assert float(low) == max(-float(high), float(x.min()))


def test_entropy_with_as_many_bins_as_levels_is_min_max():
    x = _heavy_tailed(3, size=2000)
    low, high = ranges.calibrate(ranges.entropy(formats.INT8, num_bins=128), [x])
    assert (float(low), float(high)) == (float(x.min()), float(x.max()))


# --- NaN, Inf, degenerate input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(NAMED))
def test_nan_and_inf_are_ignored(name):
    observer = NAMED[name]
    x = _heavy_tailed(4, size=2000)
    dirty = x.copy()
    dirty[[3, 100, 1000]] = [np.nan, np.inf, -np.inf]
    clean = np.delete(x, [3, 100, 1000])
    expected = observer.result(_fold(observer, [clean]))
    got = observer.result(_fold(observer, [dirty]))
    for a, b in zip(expected, got):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("name", sorted(NAMED))
@pytest.mark.parametrize("fill", [0.0, 2.5, -7.0, np.nan])
def test_constant_all_zero_and_all_nan_inputs_give_usable_ranges(name, fill):
    observer = NAMED[name]
    x = np.full((16, 2), fill, np.float32)
    min_val, max_val = ranges.calibrate(observer, [x])
    value = 0.0 if np.isnan(fill) else fill
    low, high = (-abs(value), abs(value)) if name == "abs_max" else (value, value)
    if name == "mse" and value != 0.0:
        assert float(min_val) <= float(max_val) and np.sign(float(max_val)) == np.sign(value)
    else:
        assert (float(min_val), float(max_val)) == (low, high)
    scale, zero_point = affine.scale_zero_point(min_val, max_val, formats.INT8)
    assert np.isfinite(float(scale)) and float(scale) > 0
    x_hat = affine.fake_quant(np.nan_to_num(x), scale, zero_point, formats.INT8)
    np.testing.assert_allclose(np.asarray(x_hat), np.nan_to_num(x), atol=float(scale))


# --- jit, calibrate, names ---------------------------------------------------------------------------------------


def test_update_runs_under_jit_and_scan():
    x = _spread_data(9)
    observer = ranges.percentile(99.0, axis=1, num_bins=128)
    batches = jnp.asarray(x).reshape(ROWS // BATCH_ROWS, BATCH_ROWS, COLS)
    scanned, _ = jax.lax.scan(lambda s, b: (observer.update(s, b), None), observer.init(batches[0]), batches)
    looped = _fold(observer, list(np.asarray(batches)))
    np.testing.assert_array_equal(np.asarray(scanned.counts), np.asarray(looped.counts))


def test_calibrate_shows_progress_for_many_batches(capsys):
    batches = [np.full((2,), float(i), np.float32) for i in range(120)]
    min_val, max_val = ranges.calibrate(ranges.min_max(), batches)
    assert (float(min_val), float(max_val)) == (0.0, 119.0)
    assert "calibrating" in capsys.readouterr().err
    ranges.calibrate(ranges.min_max(), batches[:3])
    assert "calibrating" not in capsys.readouterr().err


def test_calibrate_accepts_a_generator_and_rejects_no_batches():
    low, high = ranges.calibrate(ranges.abs_max(), (np.array([i, -2 * i], np.float32) for i in range(5)))
    assert (float(low), float(high)) == (-8.0, 8.0)
    with pytest.raises(ValueError, match="batches"):
        ranges.calibrate(ranges.min_max(), [])


def test_init_accepts_a_shape_or_a_shape_struct():
    observer = ranges.min_max(axis=1, block_size=2)
    from_shape = observer.init((3, 4))
    from_struct = observer.init(jax.ShapeDtypeStruct((3, 4), jnp.float32))
    assert from_shape.min_val.shape == from_struct.min_val.shape == (3, 2)


def test_observer_from_name_builds_each_and_lists_names_on_error():
    assert all(isinstance(observer, ranges.Observer) for observer in NAMED.values())
    with pytest.raises(ValueError, match="name must be one of .*min_max.*percentile"):
        ranges.observer_from_name("kl")


# --- bad input ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 0.0, 101, -1, 100.0001, float("nan"), float("inf"), True, "99"])
def test_percentile_outside_its_range_is_rejected(value):
    with pytest.raises(ValueError, match=r"percentile must be a number in \(0, 100\]"):
        ranges.percentile(value)


def test_two_tailed_percentile_below_50_is_rejected_but_symmetric_is_fine():
    with pytest.raises(ValueError, match=r"percentile must be in \[50, 100\]"):
        ranges.percentile(10.0)
    ranges.percentile(10.0, symmetric=True)


@pytest.mark.parametrize("make", [ranges.min_max, ranges.abs_max, ranges.moving_average_min_max])
def test_block_size_that_does_not_divide_is_rejected(make):
    observer = make(axis=1, block_size=3)
    with pytest.raises(ValueError, match="block_size=3 must divide"):
        observer.init((4, 8))
    with pytest.raises(ValueError, match="block_size"):
        make(axis=1, block_size=0)
    with pytest.raises(ValueError, match="block_size"):
        make(block_size=2)
    with pytest.raises(ValueError, match="block_size"):
        ranges.mse_range(np.zeros((4, 8), np.float32), formats.INT8, axis=1, block_size=3)


def test_histogram_observers_reject_block_size():
    with pytest.raises(ValueError, match="block_size"):
        ranges.percentile(axis=0, block_size=4)
    with pytest.raises(ValueError, match="block_size"):
        ranges.mse(formats.INT8, axis=0, block_size=4)
    with pytest.raises(ValueError, match="block_size"):
        ranges.entropy(formats.INT8, axis=0, block_size=4)


@pytest.mark.parametrize("axis", [2, -3, 1.0, True])
def test_axis_out_of_range_is_rejected(axis):
    with pytest.raises(ValueError, match="axis"):
        ranges.min_max(axis=axis).init((3, 4))
    with pytest.raises(ValueError, match="axis"):
        ranges.mse_range(np.zeros((3, 4), np.float32), formats.INT8, axis=axis)
    with pytest.raises(ValueError, match="axis"):
        ranges.entropy(formats.INT8, axis=axis).init((3, 4))


def test_other_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="momentum"):
        ranges.moving_average_min_max(momentum=1.5)
    with pytest.raises(ValueError, match="num_bins"):
        ranges.percentile(num_bins=1000)
    with pytest.raises(ValueError, match="num_candidates"):
        ranges.mse(formats.INT8, num_candidates=0)
    with pytest.raises(ValueError, match="symmetric_divisor"):
        ranges.mse(formats.INT8, symmetric_divisor="127")
    with pytest.raises(ValueError, match="num_quantized_bins"):
        ranges.entropy(formats.INT8, num_bins=64)  # 128 levels do not fit in 64 bins
    with pytest.raises(TypeError, match="fmt"):
        ranges.mse(8)
    observer = ranges.min_max(axis=1)
    state = observer.init((2, 3))
    with pytest.raises(ValueError, match="initialised for"):
        observer.update(state, np.zeros((2, 4), np.float32))
