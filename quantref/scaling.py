"""Per-channel scaling between an operation and the layers after it: SmoothQuant and AWQ.

A linear layer does not care how its input channels are scaled, as long as its kernel rows are scaled back:

$$
x\\,W = \\big(x\\,\\operatorname{diag}(s)^{-1}\\big)\\big(\\operatorname{diag}(s)\\,W\\big) \\qquad (s_j > 0).
$$

When the operation that produces $x$ can absorb the division — a LayerNorm (divide its scale $\\gamma$ and bias
$\\beta$), or a linear layer (divide its output columns) — the rescaled network computes the same function at no
cost (:func:`scale_channels`; the model says which pairs it has, e.g.
:func:`quantref.transformer.scaling_pairs`). What changes is what quantization sees:

- **SmoothQuant** (Xiao et al. 2022) for W8A8: a few input channels with large activations (the outliers of
  LLM.int8()) stretch a per-tensor activation grid; dividing them by
  $s_j = \\max|X_j|^{\\alpha} / \\max|W_{j,:}|^{1-\\alpha}$ moves part of their range into the weights, which have
  a grid per output channel to absorb it. The migration strength $\\alpha$ decides how much
  (:func:`smoothquant_scales`, :func:`smooth`).
- **AWQ** (Lin et al. 2023) for weight-only int4/int3: a weight multiplied by its input's magnitude contributes
  more to the output, so scaling the rows of salient input channels *up* before rounding protects them. AWQ
  searches $s = \\overline{|X|}^{\\alpha}$ over a grid of $\\alpha \\in [0, 1]$ for the smallest output error of
  the quantized layers on calibration data (:func:`awq_scales`), then searches, per output channel and group, how
  far to clip the kernel's range before rounding (:func:`awq_clip`); :func:`awq` does both.

:func:`input_statistics` collects what both need in one pass over calibration data: each layer input's mean
magnitude and maximum magnitude per channel, and $X^\\top X$.

References:
  Xiao et al., "SmoothQuant: Accurate and Efficient Post-Training Quantization for Large Language Models",
  arXiv:2211.10438, 2022, sec. 4 (eq. 4: the migration strength).
  Lin et al., "AWQ: Activation-aware Weight Quantization for LLM Compression and Acceleration", arXiv:2306.00978,
  2023, sec. 3.2 (the search over $s_X^{\\alpha}$); the weight clipping of its reference implementation
  (llm-awq, ``auto_clip``).
  Dettmers et al., "LLM.int8(): 8-bit Matrix Multiplication for Transformers at Scale", arXiv:2208.07339, 2022,
  sec. 4 (outlier features).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from quantref import _validate, formats, gptq, nn, weight_only

__all__ = [
    "ChannelStatistics",
    "input_statistics",
    "scale_channels",
    "smoothquant_scales",
    "smooth",
    "awq_scales",
    "awq_clip",
    "clip_ratios",
    "awq",
]


class Pair(Protocol):
    """What :func:`scale_channels` needs of a pair (e.g. :class:`quantref.transformer.ScalingPair`)."""

    source: str
    layers: tuple[str, ...]
    columns: tuple[int, int] | None


class ChannelStatistics(NamedTuple):
    """Per-channel statistics of one layer's input rows $X$ over calibration data.

    Attributes:
      count: number of rows.
      abs_mean: ``(in,)``, $\\overline{|X_j|}$ (AWQ's activation magnitude).
      abs_max: ``(in,)``, $\\max|X_j|$ (SmoothQuant's, and the outlier picture's).
      gram: ``(in, in)``, $X^\\top X$.
    """

    count: int
    abs_mean: jax.Array
    abs_max: jax.Array
    gram: jax.Array


def input_statistics(
    model: nnx.Module, batches: Sequence[jax.Array | np.ndarray], *, select: str | Sequence[str] | None = None
) -> dict[str, ChannelStatistics]:
    """Accumulates each selected layer's input statistics over calibration batches (one compiled pass each).

    Args:
      model: any NNX model.
      batches: input batches.
      select: path patterns of the layers (:func:`quantref.nn.find_layers`); ``None`` takes all.

    Returns:
      ``{path: ChannelStatistics}``.

    Raises:
      ValueError: if ``batches`` is empty.
    """
    if len(batches) == 0:
        raise ValueError("batches must hold at least one batch")
    layers = nn.find_layers(model, select)
    totals: dict[str, list] = {}
    for batch in batches:
        # Float inputs, as the pipeline takes them (token ids are exact in float32; see weight_only._as_input).
        _, activations = nn.capture_jit(model, jnp.asarray(batch, jnp.float32), select=list(layers))
        for path, layer in layers.items():
            count, abs_sum, abs_max, gram = _row_statistics(nn.input_rows(layer, activations[f"{path}.input"]))
            if path not in totals:
                totals[path] = [count, abs_sum, abs_max, gram]
            else:
                entry = totals[path]
                totals[path] = [entry[0] + count, entry[1] + abs_sum, jnp.maximum(entry[2], abs_max), entry[3] + gram]
    return {
        path: ChannelStatistics(int(count), abs_sum / count, abs_max, gram)
        for path, (count, abs_sum, abs_max, gram) in totals.items()
    }


def scale_channels(model: nnx.Module, pair: Pair, scale: jax.Array | np.ndarray) -> nnx.Module:
    """A copy of ``model`` with channel $j$ between ``pair.source`` and ``pair.layers`` divided by $s_j$ on the
    source's side and multiplied back into the layers' kernel rows — the same function, rescaled.

    The source is a LayerNorm ($\\gamma \\leftarrow \\gamma / s$, $\\beta \\leftarrow \\beta / s$) or a linear layer
    (its output columns ``pair.columns``, kernel and bias, divided by $s$); each layer's kernel rows are multiplied
    by $s$.

    Args:
      model: any NNX model with modules at the pair's paths.
      pair: the source, the layers and (for a linear source) the columns.
      scale: ``(channels,)`` positive scales.

    Returns:
      The rescaled copy; the original is unchanged.

    Raises:
      ValueError: if a scale is not positive and finite, or its length is not the channels'.
      TypeError: for a source that is neither a LayerNorm nor a linear layer.
    """
    scale = np.asarray(scale, np.float32)
    if scale.ndim != 1 or not np.all(np.isfinite(scale)) or not np.all(scale > 0):
        raise ValueError("scale must be a vector of positive finite numbers")
    clone = nnx.clone(model)
    source = nn.get_module(clone, pair.source)
    source = source.layer if isinstance(source, nn.QuantLayer) else source
    divide = _DIVIDE.get(type(source))
    if divide is None:
        raise TypeError(f"cannot fold a scale into {pair.source} ({type(source).__name__}): a LayerNorm or Linear")
    divide(source, jnp.asarray(scale), pair.columns)
    for path in pair.layers:
        layer = nn.get_module(clone, path)
        layer = layer.layer if isinstance(layer, nn.QuantLayer) else layer
        if layer.kernel.shape[0] != scale.shape[0]:
            raise ValueError(f"scale has {scale.shape[0]} channels, layer {path} reads {layer.kernel.shape[0]}")
        layer.kernel[...] = layer.kernel[...] * jnp.asarray(scale)[:, None]
    return clone


def smoothquant_scales(act_abs_max: jax.Array, weight_abs_max: jax.Array, alpha: float) -> jax.Array:
    """SmoothQuant's migration scales, $s_j = \\max|X_j|^{\\alpha} / \\max|W_{j,:}|^{1-\\alpha}$.

    With $\\alpha = 0.5$ the smoothed activation and weight of channel $j$ share one maximum,
    $\\sqrt{\\max|X_j|\\max|W_{j,:}|}$; $\\alpha = 0$ leaves the activations alone (up to the weights' spread)
    and $\\alpha = 1$ moves all of their range into the weights.

    References:
      Xiao et al., arXiv:2211.10438, 2022, eq. 4.

    Args:
      act_abs_max: ``(in,)`` per-channel maximum magnitude of the input on calibration data.
      weight_abs_max: ``(in,)`` per-row maximum magnitude of the kernel(s) reading it.
      alpha: the migration strength in ``[0, 1]``.

    Returns:
      ``(in,)`` scales, floored at ``1e-5`` (channels that are zero on both sides get 1).

    Raises:
      ValueError: if ``alpha`` is outside ``[0, 1]``.
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    act, weight = jnp.asarray(act_abs_max, jnp.float32), jnp.asarray(weight_abs_max, jnp.float32)
    scale = jnp.power(act, alpha) / jnp.power(jnp.maximum(weight, 1e-5), 1.0 - alpha)
    return jnp.where((act == 0) & (weight == 0), 1.0, jnp.maximum(scale, 1e-5))


def smooth(
    model: nnx.Module, statistics: dict[str, ChannelStatistics], pairs: Sequence[Pair], alpha: float = 0.5
) -> nnx.Module:
    """SmoothQuant: a copy of ``model`` with every pair's activation outliers migrated into its weights.

    For each pair, $s$ comes from :func:`smoothquant_scales` with the layers' input maxima (``statistics``, of the
    float model) and the largest magnitude of each input row over all of the pair's layers (q, k and v share
    one input and one $s$). The copy computes the same function; quantize it as usual
    (:func:`quantref.ptq.quantize_model`).

    Args:
      model: the float model.
      statistics: :func:`input_statistics` of ``model`` for the pairs' layers.
      pairs: the pairs to smooth (SmoothQuant smooths the LayerNorm → layer pairs).
      alpha: the migration strength.

    Returns:
      The smoothed copy.
    """
    for pair in pairs:
        kernels = [_kernel(model, path) for path in pair.layers]
        weight_abs_max = jnp.max(jnp.stack([jnp.abs(k).max(axis=1) for k in kernels]), axis=0)
        act_abs_max = statistics[pair.layers[0]].abs_max
        model = scale_channels(model, pair, smoothquant_scales(act_abs_max, weight_abs_max, alpha))
    return model


def awq_scales(
    kernels: Sequence[jax.Array],
    statistics: ChannelStatistics,
    fmt: formats.IntFormat,
    group_size: int | None = None,
    *,
    grid: int = 20,
) -> tuple[jax.Array, float, jax.Array]:
    """AWQ's search for one input: the scale $s = \\overline{|X|}^{\\alpha}$ (normalised) whose quantized kernels
    reproduce the layers' outputs best on the calibration data.

    $$
    \\alpha^* = \\mathop{\\mathrm{arg\\,min}}_{\\alpha \\in \\{0, \\frac{1}{n}, \\dots\\}} \\sum_{W}
    \\operatorname{tr}\\big(\\Delta^\\top X^\\top X\\, \\Delta\\big), \\qquad
    \\Delta = \\operatorname{diag}(s)^{-1} Q\\big(\\operatorname{diag}(s) W\\big) - W ,
    $$

    the squared output error $\\lVert X W - (X \\operatorname{diag}(s)^{-1}) Q(\\operatorname{diag}(s) W)\\rVert^2$
    summed over the layers, with $Q$ round-to-nearest on the weight grid of
    :func:`quantref.weight_only.rtn_weights` and $s$ divided by $\\sqrt{\\max s \\cdot \\min s}$ as in the
    reference implementation. $\\alpha = 0$ is plain round-to-nearest, so the result is never worse than it on
    the calibration data.

    References:
      Lin et al., arXiv:2306.00978, 2023, sec. 3.2, eq. 5.

    Args:
      kernels: the ``(in, out)`` kernels that read this input.
      statistics: the input's :class:`ChannelStatistics` (``abs_mean`` and ``gram``).
      fmt: the signed weight grid (as :func:`quantref.weight_only.rtn_weights`).
      group_size: rows per group, or ``None`` per channel.
      grid: number of $\\alpha$ values, $\\alpha = i / n$ for $i = 0 .. n - 1$ (20: 0 to 0.95).

    Returns:
      ``(scale, alpha, losses)``: the best $s$ (``(in,)``), its $\\alpha$, and the loss at every $\\alpha$.

    Raises:
      ValueError: if ``grid`` is not an int in ``[1, 10000]``, ``kernels`` is empty or its kernels differ in rows,
        the statistics do not match the kernels or hold NaN or infinity (calibration inputs that do); as
        :func:`quantref.weight_only.group_scales` for the kernels, grid and group size.
    """
    _check_grid(grid, "grid")
    alphas = np.arange(grid) / grid
    if len(kernels) == 0:
        raise ValueError("kernels must hold at least one (in, out) kernel")
    kernels = tuple(jnp.asarray(kernel, jnp.float32) for kernel in kernels)
    for kernel in kernels:
        weight_only.group_scales(kernel, fmt, group_size)  # validates the kernel, the grid and the group size
        if kernel.shape[0] != kernels[0].shape[0]:
            raise ValueError(f"kernels must all read the same input: {kernels[0].shape[0]} rows, got {kernel.shape}")
    _check_statistics(statistics.abs_mean, statistics.gram, kernels[0].shape[0])
    scales, losses = _awq_search(
        kernels, statistics.abs_mean, statistics.gram, jnp.asarray(alphas), weight_only.grid_bounds(fmt), group_size
    )
    best = int(jnp.argmin(losses))
    return scales[best], float(alphas[best]), losses


def awq_clip(
    kernel: jax.Array,
    gram: jax.Array,
    fmt: formats.IntFormat,
    group_size: int | None = None,
    *,
    grid: int = 20,
    max_shrink: float = 0.5,
) -> tuple[jax.Array, jax.Array]:
    """AWQ's weight clipping: per output channel and group, the fraction $r$ of the range $\\max|W|$ whose
    round-to-nearest kernel reproduces the layer's output best on the calibration data.

    Clipping trades the few largest weights of a group (clamped to $\\pm r \\max|W|$) for a finer step
    $s = r \\max|W| / (q_{max} + \\frac12)$ for all the others. With $\\hat W(r) = s\\,\\operatorname{clamp}(
    \\operatorname{rne}(W / s), q_{min}, q_{max})$ and $\\Delta = \\hat W - W$, the output error of column $c$ is

    $$
    e_c = \\Delta_{:,c}^\\top\\, X^\\top X\\, \\Delta_{:,c}
        = \\sum_{k, l} \\Delta_{k,c}^\\top G_{kl}\\, \\Delta_{l,c} ,
    $$

    with $k, l$ the row groups and $G_{kl}$ the blocks of the Gram matrix $G = X^\\top X$. Each $r$ is searched
    on the grid $r = 1 - i / n$, $i = 0, 1, \\dots$ while $i / n < $ ``max_shrink`` (1 down to 0.55 by default, as
    in the reference implementation). With one group per column (per-channel scales) the search is exact. With
    several, the reference implementation minimises each group's own term $\\Delta_{k,c}^\\top G_{kk}
    \\Delta_{k,c}$; here the groups of a column are visited in order (coordinate descent) and each takes the $r$
    that minimises the whole $e_c$, cross terms included, given the others' current choices. Every step keeps or
    lowers $e_c$ and $r = 1$ is the start, so the result is never worse than the unclipped kernel on the
    calibration data.

    References:
      Lin et al., arXiv:2306.00978, 2023; the reference implementation's ``auto_clip`` (llm-awq,
      ``awq/quantize/auto_clip.py``: ``n_grid=20``, ``max_shrink=0.5``).

    Args:
      kernel: ``(in, out)`` float kernel, as it will be rounded (AWQ's scaled kernel).
      gram: ``(in, in)``, $X^\\top X$ of the kernel's input rows (of the scaled input, for AWQ's scaled kernel).
      fmt: the signed weight grid (as :func:`quantref.weight_only.rtn_weights`).
      group_size: rows per group, or ``None`` per channel.
      grid: $n$, the number of steps from $r = 1$ to $r = 0$.
      max_shrink: the largest fraction of the range that may be clipped away, in ``[0, 1)``.

    Returns:
      ``(scale, ratio)``: the :func:`quantref.weight_only.group_scales`-shaped scales of the clipped ranges (float16
      numbers, ``(out,)`` or ``(in // group_size, out)``) and the chosen $r$ of each (same shape).

    Raises:
      ValueError: if ``grid`` is not an int in ``[1, 10000]``, ``max_shrink`` is outside ``[0, 1)``, or ``gram``
        is not ``(in, in)`` or holds NaN or infinity; as :func:`quantref.weight_only.group_scales` for the kernel,
        grid and group size.
    """
    ratios = _clip_ratios(grid, max_shrink)
    kernel = jnp.asarray(kernel, jnp.float32)
    weight_only.group_scales(kernel, fmt, group_size)  # validates the kernel, the grid and the group size
    gram = jnp.asarray(gram, jnp.float32)
    _check_statistics(None, gram, kernel.shape[0])
    scale, choice = _clip_search(kernel, gram, weight_only.grid_bounds(fmt), group_size, ratios)
    return scale, jnp.asarray(ratios, jnp.float32)[choice]


def clip_ratios(grid: int = 20, max_shrink: float = 0.5) -> tuple[float, ...]:
    """The clipping ratios :func:`awq_clip` tries: $r = 1 - i / n$ for $i = 0, 1, \\dots$ while $i / n <$
    ``max_shrink``, largest first.

    Args:
      grid: $n$, the number of steps from $r = 1$ to $r = 0$ (at most 10,000).
      max_shrink: the largest fraction of the range that may be clipped away, in ``[0, 1)``.

    Returns:
      The ratios, starting with 1.

    Raises:
      ValueError: if ``grid`` is not an int in ``[1, 10000]`` or ``max_shrink`` is not a number in ``[0, 1)``.
    """
    return _clip_ratios(grid, max_shrink)


def awq(
    model: nnx.Module,
    statistics: dict[str, ChannelStatistics],
    pairs: Sequence[Pair],
    fmt: formats.IntFormat,
    group_size: int | None = None,
    *,
    grid: int = 20,
    clip: bool = True,
    clip_grid: int = 20,
    max_shrink: float = 0.5,
    select: str | Sequence[str] | None = None,
    skip: str | Sequence[str] | None = None,
) -> tuple[nnx.Module, dict[str, weight_only.WeightQuant], dict[str, float]]:
    """AWQ weight-only quantization: search a scale for each input (:func:`awq_scales`), then round every selected
    kernel to nearest with its rows scaled, on a range clipped per output channel and group (:func:`awq_clip`).

    Where the input's producer can absorb the scale (a pair), it is folded in (:func:`scale_channels`) and costs
    nothing. A layer in no pair (one after a GELU) keeps its scale beside its codes as
    :attr:`~quantref.weight_only.WeightQuant.row_scale`: its kernel is $Q(\\operatorname{diag}(s) W)$ with the rows
    divided by $s$ after dequantization (what AutoAWQ's scaled activation and qwix's AWQ do at run time). The scales
    are searched on the float model's statistics: folding is exact, so a layer's input in the rescaled model is its
    float input divided by its own scale, which the search accounts for. The clipping search, as in the reference
    implementation, comes after the scales and sees the scaled kernel and the scaled input, whose Gram matrix is
    $\\operatorname{diag}(s)^{-1} X^\\top X \\operatorname{diag}(s)^{-1}$. Without it (``clip=False``) each
    group's scale is $\\max|W| / (q_{max} + \\frac12)$, as in :func:`quantref.weight_only.rtn_weights`.

    References:
      Lin et al., arXiv:2306.00978, 2023, sec. 3.2; llm-awq's ``auto_scale`` and ``auto_clip``.

    Args:
      model: the float model.
      statistics: :func:`input_statistics` of ``model``.
      pairs: the foldable pairs.
      fmt: the signed weight grid.
      group_size: rows per group, or ``None`` per channel.
      grid: number of $\\alpha$ values.
      clip: search each group's clipping ratio (:func:`awq_clip`); ``False`` rounds on the full range.
      clip_grid: the clipping search's ``grid``.
      max_shrink: the clipping search's ``max_shrink``.
      select: path patterns of the layers to quantize.
      skip: path patterns to leave in float.

    Returns:
      ``(scaled, weights, alphas)``: the rescaled float model (the weights belong to it: use it with
      :func:`quantref.weight_only.fake_quant_model` and :func:`quantref.weight_only.save_packed`), the
      ``{path: WeightQuant}``, and the chosen $\\alpha$ of each pair (keyed by its first layer) and of each layer in
      no pair.

    Raises:
      TypeError: if ``clip`` is not a bool.
      ValueError: for a ``clip_grid`` or ``max_shrink`` that :func:`awq_clip` refuses (checked before any search).
    """
    if not isinstance(clip, (bool, np.bool_)):
        raise TypeError(f"clip must be a bool, got {clip!r}")
    clip = bool(clip)
    if clip:
        _clip_ratios(clip_grid, max_shrink, "clip_grid")
    chosen = nn.find_layers(model, select, skip)
    alphas, input_scales = {}, {}
    for pair in pairs:
        if not all(path in chosen for path in pair.layers):
            continue
        kernels = [_kernel(model, path) for path in pair.layers]
        scale, alpha, _ = awq_scales(kernels, statistics[pair.layers[0]], fmt, group_size, grid=grid)
        model = scale_channels(model, pair, scale)
        alphas[pair.layers[0]] = alpha
        input_scales.update(dict.fromkeys(pair.layers, scale))
    weights = weight_only.rtn_weights(model, fmt, group_size, select=select, skip=skip)
    for path in weights:
        kernel, row_scale = _kernel(model, path), None
        if path in input_scales:
            scale = input_scales[path]
        else:
            scale, alphas[path], _ = awq_scales([kernel], statistics[path], fmt, group_size, grid=grid)
            row_scale = scale = scale.astype(weight_only.SCALE_DTYPE).astype(jnp.float32)  # stored as float16
            kernel = kernel * scale[:, None]
        if clip:
            gram = statistics[path].gram / (scale[:, None] * scale[None, :])  # the scaled input's X^T X
            grid_scale, _ = awq_clip(kernel, gram, fmt, group_size, grid=clip_grid, max_shrink=max_shrink)
        elif row_scale is None:
            continue  # rtn_weights already rounded it
        else:
            grid_scale = weight_only.group_scales(kernel, fmt, group_size)
        codes = weight_only.quantize_kernel(kernel, grid_scale, fmt)
        weights[path] = weight_only.WeightQuant(codes, grid_scale, fmt, row_scale)
    return model, weights, alphas


# --- helpers -----------------------------------------------------------------------------------------------------


def _kernel(model: nnx.Module, path: str) -> jax.Array:
    layer = nn.get_module(model, path)
    layer = layer.layer if isinstance(layer, nn.QuantLayer) else layer
    return jnp.asarray(layer.kernel[...], jnp.float32)


def _clip_ratios(grid: int, max_shrink: float, grid_name: str = "grid") -> tuple[float, ...]:
    _check_grid(grid, grid_name)
    if (
        isinstance(max_shrink, (bool, np.bool_))
        or not isinstance(max_shrink, (int, float, np.integer, np.floating))
        or not 0.0 <= float(max_shrink) < 1.0
    ):
        raise ValueError(f"max_shrink must be a number in [0, 1), got {max_shrink!r}")
    grid, max_shrink = int(grid), float(max_shrink)
    return tuple(1.0 - i / grid for i in range(grid) if i / grid < max_shrink or i == 0)


_MAX_GRID = 10_000


def _check_grid(grid: int, name: str) -> None:
    if isinstance(grid, (bool, np.bool_)) or not isinstance(grid, (int, np.integer)) or not 1 <= grid <= _MAX_GRID:
        raise ValueError(f"{name} must be an int in [1, {_MAX_GRID}], got {grid!r}")


def _check_statistics(abs_mean: jax.Array | None, gram: jax.Array, rows: int) -> None:
    """The calibration statistics' shapes, and their finiteness (NaN would make every candidate's error NaN, and the
    search would silently pick the first)."""
    if gram.shape != (rows, rows):
        raise ValueError(f"gram must be ({rows}, {rows}) for this kernel, got {tuple(gram.shape)}")
    for name, value in (("abs_mean", abs_mean), ("gram", gram)):
        if value is not None:
            _validate.check_finite(value, f"the calibration statistics' {name}")


def _round_float(kernel: jax.Array, scale: jax.Array, bounds: jax.Array) -> jax.Array:
    """The kernel rounded to nearest on the grid of ``scale`` and ``bounds`` (traceable), in float."""
    return weight_only.grid_round(kernel, scale, bounds) * gptq.row_scales(scale, *kernel.shape)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _clip_search(kernel, gram, bounds, group_size, ratios):
    rows, columns = kernel.shape
    size = rows if group_size is None else group_size
    # Each candidate's scales (as group_scales shapes them), and its rounding error (ratio, rows, columns).
    candidates = jax.vmap(lambda ratio: weight_only.grid_scales(kernel * ratio, bounds, group_size))(
        jnp.asarray(ratios)
    )
    deltas = jax.vmap(lambda scale: _round_float(kernel, scale, bounds) - kernel)(candidates)
    blocks = candidates.reshape(len(ratios), rows // size, columns)
    choice = jnp.zeros((rows // size, columns), jnp.int32)
    current = deltas[0]  # ratio 1: no clipping
    for group in range(rows // size):
        # e_c as a function of group k's delta D, the others fixed: e_c = const + 2 D.(G_k,rest Delta_rest) + D.G_kk D
        band = slice(group * size, (group + 1) * size)
        trial = deltas[:, band]
        if rows // size == 1:  # one group: no cross term (and no product with a constant zero matrix, which XLA's
            # CPU backend 0.10.2 can miscompile when it fuses it into the reduction below)
            error = jax.vmap(lambda delta: jnp.sum(delta * (gram @ delta), axis=0))(trial)
        else:
            others = (np.arange(rows) // size != group)[:, None]  # the other groups
            cross = gram[band] @ jnp.where(others, current, 0.0)
            error = jax.vmap(lambda delta: jnp.sum(delta * (2.0 * cross + gram[band, band] @ delta), axis=0))(trial)
        best = jnp.argmin(error, axis=0)  # the first minimum: ties keep the larger range
        choice = choice.at[group].set(best)
        current = current.at[band].set(jnp.take_along_axis(trial, best[None, None, :], axis=0)[0])
    scale = jnp.take_along_axis(blocks, choice[None], axis=0)[0]
    return (scale[0] if group_size is None else scale), (choice[0] if group_size is None else choice)


@functools.partial(jax.jit, static_argnums=(5,))
def _awq_search(kernels, abs_mean, gram, alphas, bounds, group_size):
    # Every alpha's scale and summed output error in one compiled call (vectorized over the alphas).
    magnitude = jnp.maximum(abs_mean, 1e-4)

    def loss(alpha):
        scale = magnitude**alpha
        scale = scale / jnp.sqrt(scale.max() * scale.min())
        total = 0.0
        for kernel in kernels:
            scaled = kernel * scale[:, None]
            quantized = _round_float(scaled, weight_only.grid_scales(scaled, bounds, group_size), bounds)
            total = total + gptq.layer_error(kernel, quantized / scale[:, None], gram)
        return scale, total

    return jax.vmap(loss)(alphas)


@jax.jit
def _row_statistics(rows: jax.Array) -> tuple[int, jax.Array, jax.Array, jax.Array]:
    rows = rows.astype(jnp.float32)
    magnitude = jnp.abs(rows)
    return rows.shape[0], magnitude.sum(axis=0), magnitude.max(axis=0), rows.T @ rows


def _divide_norm(norm: nnx.LayerNorm, scale: jax.Array, columns: tuple[int, int] | None) -> None:
    if norm.scale is None:
        raise TypeError("a LayerNorm without a scale cannot absorb a per-channel scale")
    norm.scale[...] = norm.scale[...] / scale
    if norm.bias is not None:
        norm.bias[...] = norm.bias[...] / scale


def _divide_linear(layer: nnx.Linear, scale: jax.Array, columns: tuple[int, int] | None) -> None:
    start, stop = columns if columns is not None else (0, layer.kernel.shape[-1])
    if stop - start != scale.shape[0]:
        raise ValueError(f"scale has {scale.shape[0]} channels, the source's columns {start}:{stop} are {stop - start}")
    layer.kernel[...] = layer.kernel[...].at[:, start:stop].divide(scale)
    if layer.bias is not None:
        layer.bias[...] = layer.bias[...].at[start:stop].divide(scale)


#: How each kind of source absorbs a division of its output channels.
_DIVIDE = {nnx.LayerNorm: _divide_norm, nnx.Linear: _divide_linear}
