"""Observers that need the distribution, not just the extremes: percentile, MSE-optimal and entropy (KL)
clipping, over one streaming power-of-two histogram per tensor or channel (see :mod:`quantref.ranges`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from quantref import _validate, affine, formats
from quantref.ranges.observers import (
    Observer,
    ShapeOrExample,
    as_float32,
    batch_min_max,
    check_batch,
    check_state,
    checked_result,
    empty_to_zero,
    reduce,
    shape_of,
    stats_shape,
)

__all__ = ["HistogramState", "histogram_edges", "percentile", "mse", "mse_range", "entropy"]

_MIN_EXPONENT = -100  # the histogram starts at [0, 2**-100): every |x| below that shares bin 0


class HistogramState(NamedTuple):
    """A signed histogram on a power-of-two range (see the module docstring), plus the exact extremes.

    Attributes:
      counts: int32, shape ``stats_shape + (2 * num_bins,)``. Bin ``i`` holds the values in
        ``[(i - num_bins) w, (i - num_bins + 1) w)`` for ``i >= num_bins`` and in ``((i - num_bins) w,
        (i - num_bins + 1) w]`` below (each sign bins its magnitude), with ``w = 2**exponent / num_bins``.
      exponent: int32, shape ``stats_shape``: every finite ``|x|`` seen is below ``2**exponent``.
      min_val: float32, the smallest finite value seen (``+inf`` if none).
      max_val: float32, the largest finite value seen (``-inf`` if none).
    """

    counts: jax.Array
    exponent: jax.Array
    min_val: jax.Array
    max_val: jax.Array


def _scatter_counts(position: jax.Array, weight: jax.Array, num_bins: int) -> jax.Array:
    """Sum ``weight`` into bins ``position`` of each row: ``(rows, n) -> (rows, 2 * num_bins)``."""
    rows = position.shape[0]
    flat = (jnp.arange(rows, dtype=jnp.int32)[:, None] * (2 * num_bins) + position).reshape(-1)
    return jnp.zeros(rows * 2 * num_bins, jnp.int32).at[flat].add(weight.reshape(-1)).reshape(rows, 2 * num_bins)


def _signed_position(magnitude_bin: jax.Array, negative: jax.Array, num_bins: int) -> jax.Array:
    return jnp.where(negative, num_bins - 1 - magnitude_bin, num_bins + magnitude_bin)


def _rebin(counts: jax.Array, shift: jax.Array, num_bins: int) -> jax.Array:
    """Merge each row's bins for a range ``2**shift`` times wider: magnitude bin ``j`` goes to ``j >> shift``."""
    position = jnp.arange(2 * num_bins, dtype=jnp.int32)
    negative = position < num_bins
    magnitude_bin = jnp.where(negative, num_bins - 1 - position, position - num_bins)
    # Past log2(num_bins) every bin has merged into bin 0; the clamp keeps the shift count below 32.
    shift = jnp.minimum(shift, int(math.log2(num_bins)))
    merged = _signed_position(magnitude_bin[None, :] >> shift[:, None], negative[None, :], num_bins)
    return _scatter_counts(merged, counts, num_bins)


def _histogram_observer(
    axis: int | None,
    block_size: int | None,
    num_bins: int,
    result: Callable[[HistogramState], tuple[jax.Array, jax.Array]],
) -> Observer:
    _validate.check_observer_granularity(axis, block_size, allow_groups=False)
    num_bins = _validate.check_num_bins(num_bins)
    log2_bins = int(math.log2(num_bins))

    def init(x_example: ShapeOrExample) -> HistogramState:
        shape = stats_shape(shape_of(x_example), axis, None)
        return HistogramState(
            counts=jnp.zeros(shape + (2 * num_bins,), jnp.int32),
            exponent=jnp.full(shape, _MIN_EXPONENT, jnp.int32),
            min_val=jnp.full(shape, jnp.inf, jnp.float32),
            max_val=jnp.full(shape, -jnp.inf, jnp.float32),
        )

    def update(state: HistogramState, x: jax.Array) -> HistogramState:
        check_state(state, HistogramState)
        x = as_float32(x)
        check_batch(x, state.exponent.shape, axis, None)
        rows = x.reshape(1, -1) if axis is None else jnp.moveaxis(x, axis, 0).reshape(x.shape[axis], -1)
        finite = jnp.isfinite(rows)
        magnitude = jnp.where(finite, jnp.abs(rows), 0.0)
        batch_max = jnp.max(magnitude, axis=1, initial=0.0)
        # frexp: batch_max = f * 2**e with f in [0.5, 1), so every |x| < 2**e.
        batch_exponent = jnp.where(batch_max > 0, jnp.frexp(batch_max)[1], _MIN_EXPONENT)
        old_exponent = state.exponent.reshape(-1)
        exponent = jnp.maximum(old_exponent, batch_exponent)
        counts = _rebin(state.counts.reshape(-1, 2 * num_bins), exponent - old_exponent, num_bins)
        # |x| / w = |x| * 2**(log2_bins - e): a multiply by a power of two, exact.
        inverse_width = jnp.ldexp(jnp.ones_like(batch_max), log2_bins - exponent)
        magnitude_bin = jnp.floor(magnitude * inverse_width[:, None]).astype(jnp.int32)
        # A no-op by the frexp bound; kept because bin num_bins would spill into the next row's counts.
        magnitude_bin = jnp.minimum(magnitude_bin, num_bins - 1)
        position = _signed_position(magnitude_bin, rows < 0, num_bins)
        counts = counts + _scatter_counts(position, finite.astype(jnp.int32), num_bins)
        batch_min, batch_max = batch_min_max(x, axis, None)
        return HistogramState(
            counts=counts.reshape(state.counts.shape),
            exponent=exponent.reshape(state.exponent.shape),
            min_val=jnp.minimum(state.min_val, batch_min),
            max_val=jnp.maximum(state.max_val, batch_max),
        )

    return Observer(init, update, checked_result(result, HistogramState))


def histogram_edges(state: HistogramState) -> np.ndarray:
    """Bin edges of a :class:`HistogramState`, for plotting or inspection.

    Args:
      state: a histogram observer's state.

    Returns:
      float64 array of shape ``state.counts.shape[:-1] + (2 * num_bins + 1,)``: edge ``i`` is
      ``(i - num_bins) * 2**exponent / num_bins``.

    Raises:
      TypeError: if ``state`` is not a :class:`HistogramState`.
    """
    check_state(state, HistogramState)
    num_bins = state.counts.shape[-1] // 2
    width = np.ldexp(1.0, np.asarray(state.exponent, np.int64)) / num_bins
    return (np.arange(2 * num_bins + 1) - num_bins) * width[..., None]


class _Histogram(NamedTuple):
    """A histogram state flattened to rows (one per tensor or channel), in numpy float64 for ``result``."""

    counts: np.ndarray  # (rows, 2 * num_bins) int64
    width: np.ndarray  # (rows,)
    min_val: np.ndarray  # (rows,), 0 for an empty row
    max_val: np.ndarray
    empty: np.ndarray  # (rows,) bool
    shape: tuple[int, ...]

    @property
    def num_bins(self) -> int:
        return self.counts.shape[1] // 2

    def magnitude_counts(self) -> np.ndarray:
        """Counts of $|x|$: bin ``j`` holds ``[j w, (j + 1) w)``."""
        return self.counts[:, self.num_bins :] + self.counts[:, self.num_bins - 1 :: -1]

    def finish(self, min_val: np.ndarray, max_val: np.ndarray) -> tuple[jax.Array, jax.Array]:
        min_val = np.where(self.empty, 0.0, min_val).reshape(self.shape)
        max_val = np.where(self.empty, 0.0, max_val).reshape(self.shape)
        return jnp.asarray(min_val, jnp.float32), jnp.asarray(max_val, jnp.float32)


def _histogram(state: HistogramState) -> _Histogram:
    num_bins = state.counts.shape[-1] // 2
    counts = np.asarray(state.counts, np.int64).reshape(-1, 2 * num_bins)
    min_val = np.asarray(state.min_val, np.float64).reshape(-1)
    max_val = np.asarray(state.max_val, np.float64).reshape(-1)
    empty = ~(min_val <= max_val)
    return _Histogram(
        counts=counts,
        width=np.ldexp(1.0, np.asarray(state.exponent, np.int64).reshape(-1)) / num_bins,
        min_val=np.where(empty, 0.0, min_val),
        max_val=np.where(empty, 0.0, max_val),
        empty=empty,
        shape=tuple(state.exponent.shape),
    )


def _first_bin_reaching(counts: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """Per row, the first bin at which the cumulative count reaches ``rank``."""
    return np.argmax(np.cumsum(counts, axis=1) >= rank[:, None], axis=1)


# --- percentile -------------------------------------------------------------------------------------------------


def percentile(
    percentile: float = 99.99,
    *,
    symmetric: bool = False,
    axis: int | None = None,
    block_size: int | None = None,
    num_bins: int = 2048,
) -> Observer:
    """Clip the tails at a percentile, estimated from a streaming histogram.

    With $n$ finite values and rank $k = \\lceil n p / 100 \\rceil$ (the "inverted CDF" percentile,
    ``np.percentile(..., method="inverted_cdf")``):

    $$
    \\text{two-tailed: } \\text{max\\_val} = x_{(k)}, \\quad \\text{min\\_val} = -(-x)_{(k)}; \\qquad
    \\text{symmetric: } \\pm\\, |x|_{(k)}
    $$

    — the same fraction is clipped from each tail. The histogram locates $x_{(k)}$ to its bin, and the
    result is the bin's outer edge (so it errs towards clipping less), clamped to the data's extent: it is within
    one bin width $w = 2^e/\\text{num\\_bins}$ of the exact percentile. The symmetric result is also clamped
    to ``[min_val, max_val]`` of the data, so non-negative data gives ``(min x, t)`` rather than ``(-t, t)``.

    References:
      McKinstry et al., "Discovering Low-Precision Networks Close to Full-Precision Networks for Efficient
      Inference", arXiv:1809.04191, 2018 (percentile clipping).
      Wu et al., arXiv:2004.09602, 2020, sec. 4.1.

    Args:
      percentile: $p$ in ``(0, 100]``; ``100`` is min-max (up to the bin). Two-tailed needs $p \\ge 50$.
      symmetric: clip ``|x|`` at its percentile (one threshold for both signs) if True, else each tail separately.
      axis: ``None`` for per-tensor, else the channel axis.
      block_size: must be ``None``: per-group histograms are not supported (the argument exists to say so).
      num_bins: bins per sign, a power of two.

    Returns:
      An :class:`Observer` whose state is a :class:`HistogramState`.

    Raises:
      ValueError: naming ``percentile`` if it is not a number in ``(0, 100]`` (or below 50 when two-tailed);
        ``num_bins`` if it is not a power of two; ``block_size``/``axis`` as :func:`min_max`.
    """
    value = percentile
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"percentile must be a number in (0, 100], got {value!r:.80}")
    if not 0.0 < value <= 100.0:  # also False for NaN
        raise ValueError(f"percentile must be a number in (0, 100], got {value!r}")
    symmetric = _validate.check_bool(symmetric, "symmetric")
    if not symmetric and value < 50.0:
        raise ValueError(
            f"percentile must be in [50, 100] for two-tailed clipping (symmetric=False), got {value!r}: below 50 "
            "the upper percentile falls under the lower one"
        )
    fraction = float(value) / 100.0

    def result(state: HistogramState) -> tuple[jax.Array, jax.Array]:
        hist = _histogram(state)
        counts, n = hist.counts, hist.counts.sum(axis=1)
        rank = np.maximum(np.ceil(n * fraction), 1)
        if symmetric:
            magnitude_bin = _first_bin_reaching(hist.magnitude_counts(), rank)
            threshold = (magnitude_bin + 1) * hist.width
            return hist.finish(np.maximum(hist.min_val, -threshold), np.minimum(hist.max_val, threshold))
        upper_bin = _first_bin_reaching(counts, rank)
        lower_bin = 2 * hist.num_bins - 1 - _first_bin_reaching(counts[:, ::-1], rank)
        upper = (upper_bin - hist.num_bins + 1) * hist.width
        lower = (lower_bin - hist.num_bins) * hist.width
        return hist.finish(np.maximum(hist.min_val, lower), np.minimum(hist.max_val, upper))

    return _histogram_observer(axis, block_size, num_bins, result)


# --- MSE-optimal clipping ---------------------------------------------------------------------------------------


def _check_mse_args(fmt: formats.IntFormat, num_candidates: int, symmetric: bool, symmetric_divisor: str) -> bool:
    _validate.check_format(fmt)
    if (
        isinstance(num_candidates, (bool, np.bool_))
        or not isinstance(num_candidates, (int, np.integer))
        or num_candidates < 1
    ):
        raise ValueError(f"num_candidates must be a positive int, got {num_candidates!r:.80}")
    _validate.check_symmetric_divisor(symmetric_divisor)
    symmetric = _validate.check_bool(symmetric, "symmetric")
    if symmetric and fmt.bits < 2:
        raise ValueError(f"symmetric=True needs fmt.bits >= 2, got {fmt.bits}")
    return symmetric


def _shrink_factors(num_candidates: int) -> np.ndarray:
    """``1, (K-1)/K, ..., 1/K``: the min-max range itself first, so that argmin prefers it on ties."""
    return np.arange(num_candidates, 0, -1) / num_candidates


def _candidate_params(
    min_val: np.ndarray,
    max_val: np.ndarray,
    fmt: formats.IntFormat,
    symmetric: bool,
    symmetric_divisor: str,
    num_candidates: int,
    data: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shrink factors ``alpha`` and the scale and zero point of each range ``alpha * [min, max]``.

    Returns ``(alpha (K,), scale (K, *shape), zero_point (K, *shape))``. ``data`` names the values, for the error.
    """
    if not symmetric:
        with np.errstate(over="ignore"):
            width = np.float32(np.maximum(max_val, 0.0)) - np.float32(np.minimum(min_val, 0.0))
        if not np.all(np.isfinite(width)):
            raise ValueError(
                f"{data} spans [{np.min(min_val):.6g}, {np.max(max_val):.6g}], too wide for a finite float32 scale "
                "(max - min overflows float32); use symmetric=True or clip the data"
            )
    alpha = _shrink_factors(num_candidates)
    expand = (slice(None),) + (None,) * np.ndim(min_val)
    scale, zero_point = affine.scale_zero_point(
        alpha[expand] * min_val,
        alpha[expand] * max_val,
        fmt,
        symmetric=symmetric,
        symmetric_divisor=symmetric_divisor,
    )
    return alpha, np.asarray(scale, np.float64), np.asarray(zero_point, np.float64)


def _rounding_error_integral(u: np.ndarray) -> np.ndarray:
    """$\\int_{-1/2}^{u} (v - \\operatorname{round}(v))^2\\, dv$: ``n/12`` per whole period, plus the rest."""
    n = np.floor(u + 0.5)
    return n / 12.0 + ((u - n) ** 3 + 0.125) / 3.0


def _expected_squared_error(
    hist: _Histogram, scale: np.ndarray, zero_point: np.ndarray, fmt: formats.IntFormat
) -> np.ndarray:
    """Sum of squared quantization error per row, if each bin's values were spread uniformly over the bin.

    For the grid $\\{s\\,q\\}_{q = q_{min}-z}^{q_{max}-z}$ with ends $L, H$, the error at $t$ is
    $(t - H)^2$ above, $(t - L)^2$ below, and $(t - s\\,\\mathrm{round}(t/s))^2$ between; its
    integral over each bin is closed-form, so no bin-centre aliasing against the grid.
    """
    width = hist.width[:, None]
    left = (np.arange(2 * hist.num_bins) - hist.num_bins)[None, :] * width
    right = left + width
    scale, zero_point = scale[:, None], zero_point[:, None]
    low, high = scale * (fmt.qmin - zero_point), scale * (fmt.qmax - zero_point)
    above = (np.maximum(right, high) - high) ** 3 - (np.maximum(left, high) - high) ** 3
    below = (low - np.minimum(left, low)) ** 3 - (low - np.minimum(right, low)) ** 3
    inside = _rounding_error_integral(np.clip(right, low, high) / scale) - _rounding_error_integral(
        np.clip(left, low, high) / scale
    )
    integral = (above + below) / 3.0 + scale**3 * inside
    return np.sum(hist.counts * integral, axis=1) / hist.width


def mse(
    fmt: formats.IntFormat,
    num_candidates: int = 100,
    *,
    symmetric: bool = False,
    symmetric_divisor: affine.SymmetricDivisor = "qmax",
    axis: int | None = None,
    block_size: int | None = None,
    num_bins: int = 2048,
) -> Observer:
    """MSE-optimal clipping range ("least squares"), estimated from a streaming histogram.

    Clipping trades clipping error against rounding error; choose the range that minimises the total:

    $$
    \\alpha^\\ast = \\mathop{\\mathrm{arg\\,min}}_{\\alpha \\in \\{1, \\frac{K-1}{K}, \\dots, \\frac1K\\}}
    \\big\\lVert x - Q_{\\alpha}(x) \\big\\rVert^2, \\qquad
    (\\text{min\\_val}, \\text{max\\_val}) = \\alpha^\\ast (\\min x, \\max x)
    $$

    where $Q_\\alpha$ is the fake-quantizer with ``scale_zero_point(alpha * min, alpha * max, fmt,
    symmetric=...)`` — a one-dimensional search that shrinks both ends by the same factor (the white paper's grid
    search; a 2-D search over both ends costs $K^2$). The error of each candidate is computed from the
    histogram, assuming the values of a bin
    are spread uniformly over it, and integrating the exact squared error of the grid over each bin (closed form:
    $s^3/12$ per whole grid step inside the range, $\\int (t - H)^2$ beyond it). $\\alpha = 1$,
    the exact min-max range, is a candidate and wins ties, so the estimated error is never worse than min-max's.
    Use the result with the same ``fmt``, ``symmetric`` and ``symmetric_divisor``. (This is the quantity the
    "least-squares quantization" of some write-ups should mean: least squares chooses the range; the quantizer
    stays $Q$.)

    References:
      Nagel et al., "A White Paper on Neural Network Quantization", arXiv:2106.08295, 2021, sec. 3.1 ("Mean
      squared error").
      Banner et al., "Post-training 4-bit quantization of convolution networks for rapid-deployment",
      arXiv:1810.05723, 2018 (analytical clipping).

    Args:
      fmt: the integer grid the range is for.
      num_candidates: $K$, the number of shrink factors tried.
      symmetric: choose the range for symmetric quantization if True, else asymmetric.
      symmetric_divisor: as :func:`quantref.affine.scale_zero_point`.
      axis: ``None`` for per-tensor, else the channel axis.
      block_size: must be ``None``: per-group histograms are not supported (the argument exists to say so).
      num_bins: bins per sign, a power of two.

    Returns:
      An :class:`Observer` whose state is a :class:`HistogramState`.

    Raises:
      ValueError: naming the argument, for ``num_candidates < 1``, an unknown ``symmetric_divisor``, a bad
        ``num_bins``, or ``axis``/``block_size`` as :func:`percentile`.
      TypeError: if ``fmt`` is not an :class:`~quantref.formats.IntFormat`.
    """
    symmetric = _check_mse_args(fmt, num_candidates, symmetric, symmetric_divisor)

    def result(state: HistogramState) -> tuple[jax.Array, jax.Array]:
        hist = _histogram(state)
        alpha, scale, zero_point = _candidate_params(
            hist.min_val, hist.max_val, fmt, symmetric, symmetric_divisor, num_candidates, "the observed data"
        )
        errors = np.stack([_expected_squared_error(hist, scale[k], zero_point[k], fmt) for k in range(len(alpha))])
        best = alpha[np.argmin(errors, axis=0)]
        return hist.finish(best * hist.min_val, best * hist.max_val)

    return _histogram_observer(axis, block_size, num_bins, result)


def mse_range(
    x: jax.Array,
    fmt: formats.IntFormat,
    *,
    num_candidates: int = 100,
    symmetric: bool = False,
    symmetric_divisor: affine.SymmetricDivisor = "qmax",
    axis: int | None = None,
    block_size: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """MSE-optimal clipping range, computed exactly on the data with :func:`quantref.affine.fake_quant`.

    $$
    \\alpha^\\ast = \\mathop{\\mathrm{arg\\,min}}_{\\alpha \\in \\{1, \\frac{K-1}{K}, \\dots, \\frac1K\\}}
    \\sum_i \\big(x_i - \\operatorname{fake\\_quant}_{\\alpha}(x_i)\\big)^2
    $$

    chosen independently for each tensor, channel or group (the error separates over them). The non-streaming
    counterpart of :func:`mse`: one pass per candidate over all of ``x``. $\\alpha = 1$ is the min-max range
    and wins ties, so the error is never worse than min-max's — exactly, as ``fake_quant`` measures it. Non-finite
    values are ignored.

    References:
      Nagel et al., "A White Paper on Neural Network Quantization", arXiv:2106.08295, 2021, sec. 3.1.

    Args:
      x: float data.
      fmt: the integer grid.
      num_candidates: $K$, the number of shrink factors tried.
      symmetric: symmetric quantization if True, else asymmetric.
      symmetric_divisor: as :func:`quantref.affine.scale_zero_point`.
      axis: ``None`` for per-tensor, else the channel or group axis.
      block_size: group size along ``axis``; must divide ``x.shape[axis]``.

    Returns:
      ``(min_val, max_val)``, float32, shaped for the granularity.

    Raises:
      ValueError: as :func:`mse` and :func:`min_max`.
      TypeError: if ``fmt`` is not an :class:`~quantref.formats.IntFormat`.
    """
    symmetric = _check_mse_args(fmt, num_candidates, symmetric, symmetric_divisor)
    _validate.check_observer_granularity(axis, block_size)
    x = as_float32(x)
    stats_shape(x.shape, axis, block_size)
    min_val, max_val = empty_to_zero(*batch_min_max(x, axis, block_size))
    min_val, max_val = np.asarray(min_val, np.float64), np.asarray(max_val, np.float64)
    alpha, scale, zero_point = _candidate_params(
        min_val, max_val, fmt, symmetric, symmetric_divisor, num_candidates, "x"
    )
    finite = jnp.isfinite(x)
    errors = []
    for k in range(len(alpha)):
        x_hat = affine.fake_quant(
            x,
            jnp.asarray(scale[k], jnp.float32),
            jnp.asarray(zero_point[k], jnp.int32),
            fmt,
            axis=axis,
            block_size=block_size,
        )
        squared = jnp.where(finite, (x - x_hat) ** 2, 0.0)
        errors.append(np.asarray(reduce(squared, jnp.sum, axis, block_size), np.float64))
    best = alpha[np.argmin(np.stack(errors), axis=0)]
    return jnp.asarray(best * min_val, jnp.float32), jnp.asarray(best * max_val, jnp.float32)


# --- entropy (KL divergence) ------------------------------------------------------------------------------------


def _kl_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Row-wise $\\sum p \\log(p/q)$ of the normalised rows; ``inf`` where ``q`` misses mass of ``p``."""
    with np.errstate(divide="ignore", invalid="ignore"):  # an empty row gives 0 here; result() maps it to (0, 0)
        p = p / p.sum(axis=1, keepdims=True)
        q = q / q.sum(axis=1, keepdims=True)
        terms = np.where(p > 0, p * np.log(p / q), 0.0)
    return np.where(np.isfinite(terms).all(axis=1), terms.sum(axis=1), np.inf)


def _entropy_threshold_bins(
    magnitude_counts: np.ndarray, num_quantized_bins: int, smooth_zero_bin: bool = True, min_bins: int = 128
) -> np.ndarray:
    """Per row, the number of magnitude bins ``i`` to keep that minimises KL(P_i || Q_i) (TensorRT's loop)."""
    rows, num_bins = magnitude_counts.shape
    counts = magnitude_counts.astype(np.float64)
    occupied = num_bins - np.argmax(counts[:, ::-1] > 0, axis=1)  # one past the last non-empty bin
    # Bin 0 holds the exact zeros of ReLU outputs and zero padding. Left as it is, that spike dominates the
    # divergence (every level that merges it spreads its mass thin) and drives the search to the smallest
    # candidate; like NVIDIA's pytorch-quantization entropy calibrator, replace it by its neighbour's count.
    if smooth_zero_bin and num_bins > 1:
        counts[:, 0] = counts[:, 1]
    # Keeping more bins than the data occupies clips nothing; the smallest such i is the min-max candidate.
    stop = np.maximum(occupied, num_quantized_bins)
    best_bins, best_kl = stop.copy(), np.full(rows, np.inf)
    # Like TensorRT and pytorch-quantization, never search below 128 bins (1/16 of the default histogram): with few
    # levels (4-bit) the smallest candidates clip almost everything, yet can score a low divergence on sparse data.
    for i in range(min(max(num_quantized_bins, min_bins), num_bins), int(stop.max()) + 1):
        inside = counts[:, :i]
        reference = inside.copy()
        reference[:, -1] += counts[:, i:].sum(axis=1)  # P: the clipped distribution, outliers in the last bin
        chunk = np.arange(i) * num_quantized_bins // i  # bin -> quantization level
        starts = np.flatnonzero(np.diff(chunk, prepend=-1))
        level_mass = np.add.reduceat(inside, starts, axis=1)  # Q: levels from the in-range values only
        level_support = np.add.reduceat(reference > 0, starts, axis=1)
        candidate = np.where(reference > 0, (level_mass / np.maximum(level_support, 1))[:, chunk], 0.0)
        kl = _kl_divergence(reference, candidate)
        better = (i <= stop) & (kl < best_kl)
        best_bins, best_kl = np.where(better, i, best_bins), np.where(better, kl, best_kl)
    return best_bins


def entropy(
    fmt: formats.IntFormat,
    *,
    num_quantized_bins: int | None = None,
    axis: int | None = None,
    block_size: int | None = None,
    num_bins: int = 2048,
    smooth_zero_bin: bool = True,
    min_bins: int = 128,
) -> Observer:
    """KL-divergence ("entropy") calibration, TensorRT's method, from a streaming histogram of $|x|$.

    For each candidate threshold $t_i = i\\,w$ (keep the first $i$ magnitude bins), build

    - $P_i$: the histogram clipped at $t_i$ — bins $0..i-1$, with every count beyond
      $t_i$ added to bin $i-1$;
    - $Q_i$: its quantized version — bins $0..i-1$ (the in-range values only) merged into
      ``num_quantized_bins`` levels, each level's mass spread evenly over the bins where $P_i > 0$;

    and pick

    $$
    i^\\ast = \\mathop{\\mathrm{arg\\,min}}_{i \\ge \\max(\\text{num\\_quantized\\_bins},\\ 128)} \\mathrm{KL}(P_i
    \\,\\Vert\\, Q_i)
    = \\sum_j P_i(j) \\log \\frac{P_i(j)}{Q_i(j)}, \\qquad \\text{range} = \\pm\\, i^\\ast w
    $$

    (clamped to the data's extent, so the largest candidate is exactly min-max). Clipping puts mass in
    $P$'s last bin that $Q$ does not have, so heavy clipping costs divergence; a long sparse tail
    costs resolution in every level, so it gets clipped. Where $Q_i$ is zero on mass of $P_i$ (the
    outliers land in an empty level) the divergence is infinite and the candidate is skipped, rather than
    smoothed with an epsilon as some implementations do; ties go to the smaller threshold. As in TensorRT and
    pytorch-quantization, no candidate below 128 bins is tried: with few levels (4-bit) the smallest candidates
    clip almost everything yet can score a low divergence on sparse data. Runs in
    $O(\\text{num\\_bins}^2)$ numpy per ``result``.

    KL compares the *shapes* of two histograms, so it needs a dense one: many values per tensor or channel, as
    activations over a calibration set have. On a handful of values it is degenerate (when everything kept falls
    in one level, $P_i = Q_i$ and the divergence is 0), so prefer :func:`mse` or :func:`percentile` for
    small per-channel weight tensors. With ``num_bins == num_quantized_bins`` the only candidate is min-max.
    The first magnitude bin (exact zeros from ReLU or padding) is given its neighbour's count before the search,
    as NVIDIA's pytorch-quantization does, so a spike at zero does not push the threshold to the smallest
    candidate.

    References:
      Migacz, "8-bit Inference with TensorRT", GPU Technology Conference, 2017.
      Wu et al., arXiv:2004.09602, 2020, sec. 4.1 ("Entropy").

    Args:
      fmt: the integer grid; sets the default ``num_quantized_bins``.
      num_quantized_bins: quantization levels covering ``[0, t]``. Default: half the grid for a signed format
        (``fmt.levels // 2``, 128 for int8, TensorRT's value), the whole grid for an unsigned one (non-negative
        data such as ReLU outputs).
      axis: ``None`` for per-tensor, else the channel axis.
      block_size: must be ``None``: per-group histograms are not supported (the argument exists to say so).
      num_bins: bins per sign, a power of two, at least ``num_quantized_bins``.
      smooth_zero_bin: give the first magnitude bin its neighbour's count (the zero-spike safeguard); ``False``
        only to measure what the safeguard does.
      min_bins: the smallest candidate tried (the 128-bin floor); lower it only to measure what the floor does.

    Returns:
      An :class:`Observer` whose state is a :class:`HistogramState`.

    Raises:
      ValueError: naming the argument, for a ``num_quantized_bins`` outside ``[1, num_bins]``, a bad ``num_bins``,
        or ``axis``/``block_size`` as :func:`percentile`.
      TypeError: if ``fmt`` is not an :class:`~quantref.formats.IntFormat`.
    """
    _validate.check_format(fmt)
    num_bins = _validate.check_num_bins(num_bins)
    if num_quantized_bins is None:
        num_quantized_bins = fmt.levels // 2 if fmt.signed else fmt.levels
    if (
        isinstance(num_quantized_bins, bool)
        or not isinstance(num_quantized_bins, (int, np.integer))
        or not 1 <= num_quantized_bins <= num_bins
    ):
        raise ValueError(f"num_quantized_bins must be an int in [1, num_bins={num_bins}], got {num_quantized_bins!r}")
    if isinstance(min_bins, bool) or not isinstance(min_bins, (int, np.integer)) or min_bins < 1:
        raise ValueError(f"min_bins must be a positive int, got {min_bins!r}")
    smooth_zero_bin = _validate.check_bool(smooth_zero_bin, "smooth_zero_bin")

    def result(state: HistogramState) -> tuple[jax.Array, jax.Array]:
        hist = _histogram(state)
        bins = _entropy_threshold_bins(hist.magnitude_counts(), int(num_quantized_bins), smooth_zero_bin, min_bins)
        threshold = bins * hist.width
        return hist.finish(np.maximum(hist.min_val, -threshold), np.minimum(hist.max_val, threshold))

    return _histogram_observer(axis, block_size, num_bins, result)
