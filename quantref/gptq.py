"""GPTQ: round a layer's weights one input row at a time, pushing each row's rounding error onto the rows not yet
rounded, so that the layer's *output* error stays small.

For a layer $y = x W$ with kernel $W$ (``(in, out)``, quantref's layout: one row per input feature) and input rows
$X$ (``(samples, in)``, :func:`quantref.nn.input_rows`), the output error of a quantized kernel $\\hat W$ is

$$
\\lVert X W - X \\hat W \\rVert_F^2 = \\operatorname{tr}\\big((\\hat W - W)^\\top X^\\top X\\, (\\hat W - W)\\big)
= \\tfrac12 \\operatorname{tr}\\big(\\Delta^\\top H \\Delta\\big), \\qquad H = 2 X^\\top X ,
$$

a quadratic form whose Hessian $H$ is the same for every output channel. Optimal Brain Quantization (OBQ) rounds
one weight at a time and moves the others to compensate; for the input row $i$ rounded last-but-not-yet, with
$H_F^{-1}$ the inverse Hessian over the rows $F$ still free, the best update of the free rows and the error it
leaves are

$$
\\delta_F = -\\frac{w_i - \\operatorname{q}(w_i)}{[H_F^{-1}]_{ii}}\\, [H_F^{-1}]_{:,i}, \\qquad
E_i = \\frac{(w_i - \\operatorname{q}(w_i))^2}{[H_F^{-1}]_{ii}} .
$$

GPTQ (Frantar et al. 2022) makes this fast and stable with three changes, all here:

1. **One order for every output channel**, so $H_F^{-1}$ is shared; rounding rows $0, 1, \\dots$ in order,
   the rows of $H_F^{-1}$ that the updates need are exactly the rows of the upper **Cholesky factor** $U$ of
   $H^{-1} = U^\\top U$ (scaled by $U_{ii}$): $w_{j} \\mathrel{-}= U_{ij}\\,(w_i - q(w_i)) / U_{ii}$ for
   $j > i$. No matrix is re-inverted, and $H$ gets **dampening** $\\lambda = d \\cdot \\operatorname{mean}
   \\operatorname{diag}(H)$ on its diagonal so that the factorisation exists and is well conditioned.
2. **Lazy block updates**: inside a block of ``block_size`` rows the updates are applied row by row; the rows
   after the block receive the block's accumulated errors in one matrix product $W_{>b} \\mathrel{-}=
   U_{b, >b}^\\top E_b$ — the same arithmetic, grouped so that it is a matrix multiply.
3. **Act-order** (optional): round the rows with the largest $H_{ii}$ (the most-used inputs) first, while many
   rows are still free to absorb their error.

The grid is chosen *before* rounding (GPTQ chooses the rounding, not the range): one scale per output channel,
one per tensor, or one per group of ``group_size`` consecutive input rows and output channel (the grid of
weight-only LLM quantization). With act-order the groups stay groups of consecutive rows of the original kernel
(the "static groups" of the reference implementation), so the result is stored like any group-wise kernel.

Inputs that are always zero ($H_{ii} = 0$) get $H_{ii} = 1$: their weights are rounded to nearest and push error
nowhere (the reference implementation sets them to zero instead, which changes the layer for inputs it has not
seen).

The module also has what GPTQ works with, which :mod:`quantref.correction` (AdaRound) shares: the layer's output
error from its inputs' second moments (:class:`ReconstructionStats`, :func:`reconstruction_error`, also when the
inputs themselves carry the error of earlier quantized layers), and the grid (:func:`weight_scale` by min-max or by
MSE search, as the reference implementation's quantizer offers; :func:`round_to_nearest`; :func:`row_scales`).

References:
  Frantar, Ashkboos, Hoefler, Alistarh, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
  Transformers", arXiv:2210.17323, 2022, sec. 3 (Algorithm 1) and 4 (act-order is its "desc_act" follow-up).
  Frantar & Alistarh, "Optimal Brain Compression", arXiv:2208.11580, 2022 (OBQ).
  Hassibi & Stork, "Second order derivatives for network pruning: Optimal Brain Surgeon", NeurIPS 1992.
"""

from __future__ import annotations

import functools
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from quantref import affine, formats

__all__ = [
    "gptq",
    "layer_error",
    "ReconstructionStats",
    "reconstruction_stats",
    "reconstruction_error",
    "WEIGHT_SCALE_METHODS",
    "weight_scale",
    "round_to_nearest",
    "kernel_matrix",
    "row_scales",
]


def gptq(
    kernel: jax.Array,
    hessian: jax.Array,
    scale: jax.Array,
    fmt: formats.IntFormat,
    *,
    block_size: int = 128,
    damping: float = 0.01,
    act_order: bool = False,
) -> jax.Array:
    """Quantizes a kernel matrix with GPTQ: integer codes that keep $\\lVert X W - X \\hat W\\rVert^2$ small.

    $$
    \\text{for } i = 0, 1, \\dots:\\quad q_i = \\operatorname{clamp}\\big(\\operatorname{rne}(w_i / s_i),
    q_{min}, q_{max}\\big), \\qquad w_j \\mathrel{-}= \\frac{U_{ij}}{U_{ii}}\\, (w_i - s_i q_i) \\quad (j > i),
    $$

    with $w_i$ the (updated) row $i$ of $W$, $s_i$ its scales and $U$ the upper Cholesky factor of
    $(H + \\lambda I)^{-1}$, $\\lambda = $ ``damping`` $\\cdot \\operatorname{mean} \\operatorname{diag} H$.
    With $H \\propto I$ no error moves and the result is round-to-nearest.

    References:
      Frantar et al., arXiv:2210.17323, 2022, Algorithm 1.

    Args:
      kernel: ``(in, out)`` float kernel matrix (a conv kernel reshaped to ``(-1, out)``, rows in the order of
        :func:`quantref.nn.input_rows`).
      hessian: ``(in, in)``, $H = 2 X^\\top X$ (any positive multiple gives the same codes), e.g. ``2 * gram`` of
        :func:`quantref.nn.input_statistics` with ``gram=True``.
      scale: the grid's scales: ``()`` per tensor, ``(out,)`` per output channel, or ``(in // group_size, out)``
        per group of consecutive input rows.
      fmt: the integer grid (e.g. :func:`quantref.ptq.weight_format`).
      block_size: rows per lazy block (any value gives the same codes up to float rounding; 128 as the paper).
      damping: $d$, the fraction of the mean diagonal added to $H$'s diagonal.
      act_order: round rows in order of decreasing $H_{ii}$ if True, else in their order.

    Returns:
      ``(in, out)`` integer codes in ``fmt.storage_dtype``; the quantized kernel is ``codes * row_scales(scale,
      in)``.

    Raises:
      ValueError: naming the argument, for shapes that do not fit, a group count that does not divide ``in``,
        ``block_size < 1`` or a negative ``damping``.
      TypeError: if ``fmt`` is not an :class:`~quantref.formats.IntFormat`.
    """
    formats.check_format(fmt)
    kernel, hessian, scale = jnp.asarray(kernel), jnp.asarray(hessian), jnp.asarray(scale)
    if kernel.ndim != 2:
        raise ValueError(f"kernel must be an (in, out) matrix, got shape {kernel.shape}")
    rows = kernel.shape[0]
    if hessian.shape != (rows, rows):
        raise ValueError(f"hessian must be ({rows}, {rows}) for a kernel of shape {kernel.shape}, got {hessian.shape}")
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    if not np.isfinite(damping) or damping < 0:
        raise ValueError(f"damping must be a finite number >= 0, got {damping!r}")
    dtype = jnp.result_type(kernel.dtype, hessian.dtype, jnp.float32)
    expanded = row_scales(scale, rows, kernel.shape[1]).astype(dtype)
    codes = _gptq(
        kernel.astype(dtype),
        hessian.astype(dtype),
        expanded,
        jnp.asarray(fmt.qmin, dtype),
        jnp.asarray(fmt.qmax, dtype),
        jnp.asarray(damping, dtype),
        block_size=int(min(block_size, rows)),
        act_order=bool(act_order),
    )
    return codes.astype(fmt.storage_dtype)


class ReconstructionStats(NamedTuple):
    """The second moments of a layer's inputs that its reconstruction error needs (all ``(in, in)``).

    Attributes:
      count: $N$, the number of input rows.
      gram: $\\hat X^\\top \\hat X$ of the rows in the quantized network (GPTQ's Hessian is twice this).
      cross: $\\hat X^\\top (\\hat X - X)$, with $X$ the rows in the float network.
      input_error: $(\\hat X - X)^\\top (\\hat X - X)$.
    """

    count: jax.Array
    gram: jax.Array
    cross: jax.Array
    input_error: jax.Array

    def __add__(self, other: ReconstructionStats) -> ReconstructionStats:  # type: ignore[override]
        """The statistics of two sets of rows together."""
        return ReconstructionStats(*(mine + theirs for mine, theirs in zip(self, other)))


def reconstruction_stats(float_rows: jax.Array, quantized_rows: jax.Array) -> ReconstructionStats:
    """The :class:`ReconstructionStats` of one batch of a layer's input rows, $X$ (float network) and $\\hat X$
    (quantized network), both ``(N, in)`` as :func:`quantref.nn.input_rows` gives them; add batches with ``+``.

    Raises:
      ValueError: if the two are not matrices of one shape.
    """
    float_rows, quantized_rows = jnp.asarray(float_rows), jnp.asarray(quantized_rows)
    if float_rows.ndim != 2 or float_rows.shape != quantized_rows.shape:
        raise ValueError(
            f"float_rows and quantized_rows must be matrices of one shape, got {float_rows.shape} "
            f"and {quantized_rows.shape}"
        )
    difference = quantized_rows - float_rows
    return ReconstructionStats(
        jnp.asarray(float_rows.shape[0], jnp.float32),
        quantized_rows.T @ quantized_rows,
        quantized_rows.T @ difference,
        difference.T @ difference,
    )


def reconstruction_error(kernel: jax.Array, quantized: jax.Array, stats: ReconstructionStats) -> jax.Array:
    """A layer's mean output error $\\frac1N \\lVert X W - \\hat X \\hat W \\rVert_F^2$, from its input statistics.

    With $\\Delta = \\hat W - W$ and $D = \\hat X - X$, $XW - \\hat X \\hat W = -(\\hat X \\Delta + D W)$, so

    $$
    \\lVert X W - \\hat X \\hat W \\rVert_F^2 = \\operatorname{tr}(\\Delta^\\top \\hat X^\\top \\hat X \\Delta)
    + 2 \\operatorname{tr}(\\Delta^\\top \\hat X^\\top D W) + \\operatorname{tr}(W^\\top D^\\top D W):
    $$

    exact over all the calibration rows at a cost of $O(\\text{in}^2\\,\\text{out})$, whatever their number, and
    written in the small $\\Delta$ and $D$ so that no precision is lost to cancellation between large terms.

    Args:
      kernel: ``(in, out)`` float kernel $W$.
      quantized: ``(in, out)`` quantized kernel $\\hat W$ (dequantized values).
      stats: the layer's :class:`ReconstructionStats`.

    Returns:
      The scalar error per input row (summed over output channels).
    """
    kernel, delta = jnp.asarray(kernel), jnp.asarray(quantized) - jnp.asarray(kernel)
    total = jnp.sum(delta * (stats.gram @ delta)) + 2 * jnp.sum(delta * (stats.cross @ kernel))
    return (total + jnp.sum(kernel * (stats.input_error @ kernel))) / stats.count


def layer_error(kernel: jax.Array, quantized: jax.Array, gram: jax.Array) -> jax.Array:
    """The output error of a quantized kernel on the data behind ``gram``: $\\operatorname{tr}(\\Delta^\\top
    X^\\top X \\Delta) = \\lVert X W - X \\hat W\\rVert_F^2$, with $\\Delta = \\hat W - W$.

    Args:
      kernel: ``(in, out)`` float kernel.
      quantized: ``(in, out)`` quantized (dequantized) kernel.
      gram: ``(in, in)``, $X^\\top X$.

    Returns:
      The scalar error (divide by the number of rows for a mean per output position).
    """
    delta = jnp.asarray(quantized) - jnp.asarray(kernel)
    return jnp.sum(delta * (jnp.asarray(gram) @ delta))


# --- the grid GPTQ rounds onto ----------------------------------------------------------------------------------------

#: How :func:`weight_scale` chooses a range: the weights' extremes, or the clip that minimises their squared error.
WEIGHT_SCALE_METHODS = ("min_max", "mse")


def weight_scale(
    kernel: jax.Array,
    fmt: formats.IntFormat,
    *,
    per_channel: bool = True,
    group_size: int | None = None,
    method: Literal["min_max", "mse"] = "min_max",
    num_candidates: int = 100,
) -> jax.Array:
    """Symmetric weight scales per tensor, per output channel or per group of input rows, by min-max or MSE.

    $$
    \\text{min\\_max:}\\ s = \\frac{\\max |W|}{q_{max}}, \\qquad
    \\text{mse:}\\ s = \\frac{\\alpha^\\ast \\max |W|}{q_{max}},\\quad
    \\alpha^\\ast = \\mathop{\\mathrm{arg\\,min}}_{\\alpha \\in \\{1, \\frac{K-1}{K}, \\dots, \\frac1K\\}}
    \\lVert W - Q_{\\alpha}(W) \\rVert^2,
    $$

    each max and each search over the weights that share a scale (as :func:`quantref.ranges.mse_range` searches a
    range for data); $\\alpha = 1$ wins ties, so the MSE scale's weight error is never above min-max's.

    References:
      Nagel et al., arXiv:2106.08295, 2021, sec. 3.1 (MSE range setting), applied per channel.

    Args:
      kernel: the kernel, ``(..., out)`` (HWIO for a conv, ``(in, out)`` for a dense layer).
      fmt: the symmetric weight grid (:func:`quantref.ptq.weight_format`).
      per_channel: one scale per output channel if True, else one per tensor (ignored with ``group_size``).
      group_size: one scale per output channel and group of this many consecutive rows of
        :func:`kernel_matrix`, or ``None``.
      method: ``"min_max"`` or ``"mse"``.
      num_candidates: $K$ for ``"mse"``.

    Returns:
      ``()``, ``(out,)`` or ``(rows // group_size, out)`` float32 scales.

    Raises:
      ValueError: naming the argument, for an unknown method or a group size that does not divide the rows.
    """
    if method not in _RANGE_RULES:
        raise ValueError(f"method must be one of {WEIGHT_SCALE_METHODS}, got {method!r}")
    matrix = kernel_matrix(kernel)
    rows, columns = matrix.shape
    if group_size is not None:
        if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)) or group_size < 1:
            raise ValueError(f"group_size must be a positive int or None, got {group_size!r}")
        if rows % group_size:
            raise ValueError(f"group_size {group_size} must divide the kernel's {rows} rows")
        # (groups, size, out) -> (size, groups * out): one column per scale.
        view = matrix.reshape(rows // group_size, group_size, columns).transpose(1, 0, 2).reshape(group_size, -1)
        shape, axis = (rows // group_size, columns), -1
    else:
        view, shape, axis = matrix, ((columns,) if per_channel else ()), (-1 if per_channel else None)
    low, high = _RANGE_RULES[method](view, fmt, axis, num_candidates)
    scale, _ = affine.scale_zero_point(low, high, fmt, symmetric=True)
    return scale.reshape(shape)


def _min_max_range(view, fmt, axis, num_candidates):
    magnitude = jnp.abs(view).max() if axis is None else jnp.abs(view).max(axis=0)
    return -magnitude, magnitude


def _mse_range(view, fmt, axis, num_candidates):
    low, high = _min_max_range(view, fmt, axis, num_candidates)
    shrink = _best_shrink(view, high, jnp.float32(fmt.qmin), jnp.float32(fmt.qmax), num_candidates=int(num_candidates))
    return low * shrink, high * shrink


@functools.partial(jax.jit, static_argnames="num_candidates")
def _best_shrink(view, absmax, qmin, qmax, *, num_candidates):
    """The $\\alpha$ of :func:`weight_scale`'s MSE search, for each column of ``view`` (or for all of it): one pass per
    candidate, as :func:`quantref.ranges.mse_range` does for data, in one compiled loop."""
    alphas = jnp.arange(num_candidates, 0, -1, dtype=jnp.float32) / num_candidates  # 1 first: it wins ties

    def error(alpha):
        scale = jnp.maximum(alpha * absmax / qmax, jnp.finfo(jnp.float32).eps)
        quantized = jnp.clip(jnp.round(affine.true_divide(view, scale)), qmin, qmax) * scale
        return jnp.sum((view - quantized) ** 2, axis=tuple(range(view.ndim - absmax.ndim)))

    return alphas[jnp.argmin(lax.map(error, alphas), axis=0)]


_RANGE_RULES = {"min_max": _min_max_range, "mse": _mse_range}


def round_to_nearest(kernel: jax.Array, scale: jax.Array, fmt: formats.IntFormat) -> jax.Array:
    """Round-to-nearest codes of a kernel on a grid: $\\operatorname{clamp}(\\operatorname{rne}(W / s), q_{min},
    q_{max})$, with a true division (as :func:`quantref.affine.quantize`).

    Args:
      kernel: the kernel, ``(..., out)``.
      scale: ``()``, ``(out,)`` or ``(groups, out)`` (per group of :func:`kernel_matrix` rows).
      fmt: the grid.

    Returns:
      ``(rows, out)`` codes of :func:`kernel_matrix`, ``fmt.storage_dtype``.
    """
    matrix = kernel_matrix(kernel)
    scales = row_scales(scale, *matrix.shape)
    codes = jnp.clip(jnp.round(affine.true_divide(matrix, scales)), fmt.qmin, fmt.qmax)
    return codes.astype(fmt.storage_dtype)


def kernel_matrix(kernel: jax.Array) -> jax.Array:
    """A kernel as the matrix $W$ with $\\text{layer}(x) = X W + b$: ``kernel.reshape(-1, out)`` (rows in
    :func:`quantref.nn.input_rows` order)."""
    kernel = jnp.asarray(kernel)
    return kernel.reshape(-1, kernel.shape[-1])


def row_scales(scale: jax.Array, rows: int, columns: int) -> jax.Array:
    """Expands per-tensor, per-channel or per-group scales to one scale per kernel element, ``(rows, columns)``.

    Args:
      scale: ``()``, ``(columns,)`` or ``(groups, columns)`` with ``groups`` dividing ``rows`` (group ``g`` covers
        rows ``g * rows // groups`` to ``(g + 1) * rows // groups - 1``).
      rows: the kernel matrix's input rows.
      columns: its output channels.

    Returns:
      ``(rows, columns)`` scales.

    Raises:
      ValueError: if ``scale``'s shape fits none of these.
    """
    scale = jnp.asarray(scale)
    if scale.ndim == 2 and scale.shape[1] == columns and scale.shape[0] >= 1 and rows % scale.shape[0] == 0:
        return jnp.repeat(scale, rows // scale.shape[0], axis=0)
    if scale.shape in ((), (columns,)):
        return jnp.broadcast_to(scale, (rows, columns))
    raise ValueError(
        f"scale must be () per tensor, ({columns},) per channel or (groups, {columns}) with groups dividing {rows}, "
        f"got shape {scale.shape}"
    )


# --- the algorithm, jit-compiled once per shape ------------------------------------------------------------------


def _divide(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
    # A true division (XLA would turn a division by a broadcast scale into a multiply by its reciprocal, which moves
    # codes at ties; see quantref.affine.true_divide), in the inputs' dtype.
    return numerator / jnp.where(jnp.isnan(numerator), jnp.ones_like(denominator), denominator)


def _upper_cholesky_of_inverse(hessian: jax.Array, damping: jax.Array) -> jax.Array:
    """$U$ with $U^\\top U = (H + \\lambda I)^{-1}$, upper triangular; dead inputs get $H_{ii} = 1$."""
    diagonal = jnp.diagonal(hessian)
    dead = diagonal == 0
    hessian = hessian + jnp.diag(jnp.where(dead, 1.0, 0.0).astype(hessian.dtype))
    hessian = hessian + damping * jnp.mean(jnp.where(dead, 1.0, diagonal)) * jnp.eye(len(hessian), dtype=hessian.dtype)
    lower = jnp.linalg.cholesky(hessian)
    inverse = jax.scipy.linalg.cho_solve((lower, True), jnp.eye(len(hessian), dtype=hessian.dtype))
    return jnp.linalg.cholesky(inverse).T


@functools.partial(jax.jit, static_argnames=("block_size", "act_order"))
def _gptq(kernel, hessian, scales, qmin, qmax, damping, *, block_size, act_order):
    rows, columns = kernel.shape
    order = jnp.argsort(-jnp.diagonal(hessian), stable=True) if act_order else jnp.arange(rows)
    kernel, scales = kernel[order], scales[order]
    upper = _upper_cholesky_of_inverse(hessian[order][:, order], damping)
    # Pad to whole blocks: the padded rows have U = I and W = 0, so nothing flows into or out of them.
    padded = -rows % block_size
    kernel = jnp.pad(kernel, ((0, padded), (0, 0)))
    scales = jnp.pad(scales, ((0, padded), (0, 0)), constant_values=1)
    upper = jnp.pad(upper, ((0, padded), (0, padded))) + jnp.diag(jnp.arange(rows + padded) >= rows)
    total = rows + padded

    def block(index, carry):
        weights, codes = carry
        start = index * block_size
        block_weights = lax.dynamic_slice_in_dim(weights, start, block_size)  # (block, out)
        block_scales = lax.dynamic_slice_in_dim(scales, start, block_size)
        block_upper = lax.dynamic_slice(upper, (start, start), (block_size, block_size))

        def row(i, state):
            block_weights, block_codes, errors = state
            w, s = block_weights[i], block_scales[i]
            q = jnp.clip(jnp.round(_divide(w, s)), qmin, qmax)
            error = (w - q * s) / block_upper[i, i]
            # U is upper triangular: row i of the block touches only rows >= i (row i itself becomes q * s).
            block_weights = block_weights - jnp.outer(block_upper[i], error)
            return block_weights, block_codes.at[i].set(q), errors.at[i].set(error)

        empty = jnp.zeros_like(block_weights)
        _, block_codes, errors = lax.fori_loop(0, block_size, row, (block_weights, empty, empty))
        # The lazy update: every row after the block receives the block's errors at once.
        later = (jnp.arange(total) >= start + block_size)[None, :]
        weights = weights - (lax.dynamic_slice_in_dim(upper, start, block_size) * later).T @ errors
        return weights, lax.dynamic_update_slice_in_dim(codes, block_codes, start, 0)

    _, codes = lax.fori_loop(0, total // block_size, block, (kernel, jnp.zeros_like(kernel)))
    return codes[:rows][jnp.argsort(order)]
