"""Tests for AWQ's weight-clipping search (quantref.scaling.awq_clip) on synthetic kernels and inputs: it never
raises the output error on the data it searched, it finds the best ratio of each column when a column is one group,
and it refuses bad arguments by name. The AWQ pipeline on a model is tested in tests/test_transformer.py."""

import jax.numpy as jnp
import numpy as np
import pytest

from quantref import formats, gptq, scaling, weight_only

INT3, INT4 = formats.int_format(3), formats.int_format(4)


def _problem(rows=64, columns=24, samples=256, seed=0):
    """A heavy-tailed kernel (a few large weights per column: clipping pays) and correlated inputs with a few large
    channels."""
    rng = np.random.default_rng(seed)
    kernel = rng.standard_t(3, (rows, columns)).astype(np.float32) * 0.05
    mixing = rng.normal(size=(rows, rows)) * 0.3 + np.eye(rows)
    x = rng.normal(size=(samples, rows)) @ mixing * rng.uniform(0.2, 3.0, rows)
    return jnp.asarray(kernel), jnp.asarray((x.T @ x).astype(np.float32))


def _column_errors(kernel, scale, fmt, gram):
    delta = weight_only.GroupFakeQuant(scale, fmt)(kernel) - kernel
    return np.asarray(jnp.sum(delta * (gram @ delta), axis=0))


@pytest.mark.parametrize("fmt", [INT3, INT4])
@pytest.mark.parametrize("group_size", [None, 64, 16])
def test_the_clip_never_raises_any_columns_output_error(fmt, group_size):
    kernel, gram = _problem()
    scale, ratio = scaling.awq_clip(kernel, gram, fmt, group_size)
    unclipped = weight_only.group_scales(kernel, fmt, group_size)
    assert scale.shape == unclipped.shape == ratio.shape
    before, after = _column_errors(kernel, unclipped, fmt, gram), _column_errors(kernel, scale, fmt, gram)
    assert np.all(after <= before * (1 + 1e-5) + 1e-6)
    assert after.sum() < 0.95 * before.sum()  # heavy tails: clipping pays here
    assert float(ratio.min()) >= 0.55 - 1e-6 and float(ratio.max()) <= 1.0
    assert float(ratio.min()) < 1.0
    # The scales are the clipped ranges' own: float16 numbers of r max|W| / (q_max + 1/2).
    np.testing.assert_array_equal(np.asarray(scale), np.asarray(scale).astype(np.float16).astype(np.float32))


def test_one_group_per_column_is_an_exhaustive_search():
    kernel, gram = _problem(seed=1)
    _, ratio = scaling.awq_clip(kernel, gram, INT3, None, grid=10, max_shrink=0.45)
    candidates = [1.0 - i / 10 for i in range(5)]
    errors = np.stack(
        [_column_errors(kernel, weight_only.group_scales(kernel * r, INT3), INT3, gram) for r in candidates]
    )
    np.testing.assert_allclose(np.asarray(ratio), np.asarray(candidates, np.float32)[errors.argmin(axis=0)])


def test_no_shrink_is_round_to_nearest():
    kernel, gram = _problem(seed=2)
    scale, ratio = scaling.awq_clip(kernel, gram, INT4, 16, max_shrink=0.0)
    np.testing.assert_array_equal(np.asarray(scale), np.asarray(weight_only.group_scales(kernel, INT4, 16)))
    assert np.all(np.asarray(ratio) == 1.0)


def test_the_clip_minds_the_inputs():
    """A channel that is never active costs nothing: its weights may be clipped hard; on uniform inputs the same
    column keeps more of its range."""
    kernel = jnp.asarray(np.concatenate([np.full((1, 4), 1.0), np.random.default_rng(3).normal(0, 0.1, (31, 4))]))
    silent = jnp.diag(jnp.asarray([0.0] + [1.0] * 31, jnp.float32))
    active = jnp.diag(jnp.asarray([100.0] + [1.0] * 31, jnp.float32))
    _, ratio_silent = scaling.awq_clip(kernel, silent, INT3)
    _, ratio_active = scaling.awq_clip(kernel, active, INT3)
    assert np.all(np.asarray(ratio_silent) < np.asarray(ratio_active))
    error = gptq.layer_error(
        kernel, weight_only.GroupFakeQuant(scaling.awq_clip(kernel, active, INT3)[0], INT3)(kernel), active
    )
    assert float(error) <= float(
        gptq.layer_error(
            kernel, weight_only.GroupFakeQuant(weight_only.group_scales(kernel, INT3), INT3)(kernel), active
        )
    )


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"grid": 0}, "grid"),
        ({"grid": True}, "grid"),
        ({"grid": 2.5}, "grid"),
        ({"max_shrink": 1.0}, "max_shrink"),
        ({"max_shrink": -0.1}, "max_shrink"),
        ({"max_shrink": "0.5"}, "max_shrink"),
    ],
)
def test_bad_search_arguments_are_named(kwargs, name):
    kernel, gram = _problem(rows=16, columns=4)
    with pytest.raises(ValueError, match=name):
        scaling.awq_clip(kernel, gram, INT3, **kwargs)


def test_bad_shapes_are_named():
    kernel, gram = _problem(rows=16, columns=4)
    with pytest.raises(ValueError, match="gram"):
        scaling.awq_clip(kernel, gram[:8, :8], INT3)
    with pytest.raises(ValueError, match="group_size"):
        scaling.awq_clip(kernel, gram, INT3, 5)
    with pytest.raises(ValueError, match="kernel"):
        scaling.awq_clip(kernel[0], gram, INT3)


def test_awq_refuses_bad_clip_arguments_before_searching():
    # No model, statistics or pairs are looked at: the arguments are checked first.
    with pytest.raises(TypeError, match="clip"):
        scaling.awq(None, {}, [], INT3, clip="yes")
    with pytest.raises(ValueError, match="clip_grid"):
        scaling.awq(None, {}, [], INT3, clip_grid=0)
    with pytest.raises(ValueError, match="max_shrink"):
        scaling.awq(None, {}, [], INT3, max_shrink=1.5)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_calibration_statistics_that_are_not_finite_are_refused(bad):
    # A NaN error for every candidate would make the search silently pick the first (no clipping, alpha = 0).
    kernel, gram = _problem(rows=16, columns=4)
    broken = gram.at[2, 5].set(bad)
    with pytest.raises(ValueError, match="gram must be finite"):
        scaling.awq_clip(kernel, broken, INT3)
    abs_mean = jnp.ones(16)
    with pytest.raises(ValueError, match="gram must be finite"):
        scaling.awq_scales([kernel], _statistics(abs_mean, broken), INT3)
    statistics = _statistics(abs_mean.at[0].set(bad), gram)
    with pytest.raises(ValueError, match="abs_mean must be finite"):
        scaling.awq_scales([kernel], statistics, INT3)


def test_awq_scales_names_bad_kernels_and_grids():
    kernel, gram = _problem(rows=16, columns=4)
    statistics = _statistics(jnp.ones(16), gram)
    with pytest.raises(ValueError, match="kernels must hold at least one"):
        scaling.awq_scales([], statistics, INT3)
    with pytest.raises(ValueError, match="same input"):
        scaling.awq_scales([kernel, kernel[:8]], statistics, INT3)
    for grid in (0, True, 2.5, 10**7):
        with pytest.raises(ValueError, match="grid"):
            scaling.awq_scales([kernel], statistics, INT3, grid=grid)
    with pytest.raises(ValueError, match="grid"):
        scaling.awq_clip(kernel, gram, INT3, grid=np.uint64(2**63))


def test_numpy_numbers_are_accepted_like_python_ones():
    kernel, gram = _problem(rows=16, columns=4)
    plain = scaling.awq_clip(kernel, gram, INT3, grid=20, max_shrink=0.5)
    numpy = scaling.awq_clip(kernel, gram, INT3, grid=np.int64(20), max_shrink=np.float32(0.5))
    np.testing.assert_array_equal(np.asarray(plain[1]), np.asarray(numpy[1]))
    assert scaling.clip_ratios(np.int32(10), np.float64(0.3)) == scaling.clip_ratios(10, 0.3)
    assert scaling.clip_ratios(10, 0.3) == pytest.approx((1.0, 0.9, 0.8))


def _statistics(abs_mean, gram):
    return scaling.ChannelStatistics(count=256, abs_mean=abs_mean, abs_max=abs_mean, gram=gram)
