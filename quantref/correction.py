"""Correcting quantization error where it matters: in a layer's output over the data, not in single values.

Rounding each weight to its nearest grid point is best for that weight alone; a layer's output mixes many weights
and inputs, and the network needs that output. The methods here look at it over calibration data, for any NNX
model of ``nnx.Conv`` and ``nnx.Linear`` layers, over the model pipeline (:mod:`quantref.nn`, :mod:`quantref.ptq`):

- **reparameterise** the float network without changing its function: cross-layer equalization
  (:func:`equalize`) and bias absorption (:func:`absorb_bias`), Nagel et al.'s data-free quantization (DFQ);
- **choose the grid**: :func:`quantref.gptq.weight_scale` by min-max or by the weights' squared error
  (:func:`mse_scales` for a model);
- **correct the mean** of each layer's output error: :func:`bias_correction` (measured on calibration data) and
  :func:`analytic_bias_correction` (predicted from BatchNorm statistics);
- **choose the rounding**: AdaRound (:func:`adaround`) learns per weight whether to round up or down; GPTQ
  (:func:`quantref.gptq.gptq`) rounds one input row at a time and moves the others to compensate. Both run over
  the layers in order (:func:`quantize_sequentially`), each seeing the inputs the quantized layers before it make.

Every method ends in a :class:`quantref.ptq.QuantizedModel`, which integer inference and ONNX export take as they
take any other; :func:`quantref.ptq.with_weights` builds one from given integer kernels, and
:func:`quantref.ptq.fake_quant_model` simulates one with *its* codes.

Two formulas that some write-ups call "error correction" are not: $x_c = x_q + \\alpha (x - x_q)$ needs the float
$x$ at inference (if $x$ is known, there is nothing to correct) and lands between grid points; and dequantization
$\\hat x = s(q - z)$ maps codes back to reals without removing any error (the error *is* $\\hat x - x$).

References:
  Nagel, van Baalen, Blankevoort, Welling, "Data-Free Quantization Through Weight Equalization and Bias
  Correction", arXiv:1906.04721, 2019.
  Nagel, Amjad, van Baalen, Louizos, Blankevoort, "Up or Down? Adaptive Rounding for Post-Training
  Quantization", arXiv:2004.10568, 2020.
  Nagel et al., "A White Paper on Neural Network Quantization", arXiv:2106.08295, 2021, sec. 3.2-3.5.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax import lax
from jax.scipy import stats as jstats
from tqdm.auto import tqdm

from quantref import affine, formats, gptq, nn, ptq

__all__ = [
    "Gaussian",
    "Pair",
    "Reparameterized",
    "batch_norm_statistics",
    "equalization_pairs",
    "equalize",
    "absorb_bias",
    "mse_scales",
    "bias_correction",
    "analytic_bias_correction",
    "AdaRoundResult",
    "rectified_sigmoid",
    "rounding_regularizer",
    "adaround",
    "layer_statistics",
    "quantize_sequentially",
    "adaround_model",
    "gptq_model",
    "layer_sqnr",
]

# Steps f with f(x / s) = f(x) / s per channel for s > 0 that keep each channel in place (flattening an NHWC map
# keeps the channel as the fastest axis): equalization and absorption pass through them.
_HOMOGENEOUS = ("relu", "max_pool", "flatten")


class Gaussian(NamedTuple):
    """A per-channel normal distribution of a layer's output (before its ReLU): ``mean`` and ``std``, ``(out,)``."""

    mean: jax.Array
    std: jax.Array


class Pair(NamedTuple):
    """Layers ``first`` → ``second`` joined only by steps ``between`` (ReLU, max-pool, flatten) that commute with
    a positive per-channel scale."""

    first: str
    second: str
    between: tuple[str, ...]


class Reparameterized(NamedTuple):
    """A float ``model`` with the function of the one it came from, and ``statistics`` (``{path: Gaussian}``) of
    its layer outputs, or ``None``."""

    model: nnx.Module
    statistics: dict[str, Gaussian] | None


# --- reparameterising the float network --------------------------------------------------------------------------


def batch_norm_statistics(model: nnx.Module, x: jax.Array | np.ndarray) -> dict[str, Gaussian]:
    """The distribution of each layer's output that the BatchNorm after it implies: $\\mathcal N(\\beta,
    \\gamma^2)$, with no data.

    A BatchNorm normalises to zero mean and unit variance, then scales by $\\gamma$ and shifts by $\\beta$: after
    folding, the layer's output channel $c$ has mean $\\beta_c$ and standard deviation $|\\gamma_c|$ (DFQ's
    premise). Call it on the model *before* :func:`quantref.nn.fold_batch_norm`, which keeps the layers' paths.

    References:
      Nagel et al., arXiv:1906.04721, 2019, sec. 4.1-4.2.

    Args:
      model: the unfolded model.
      x: an example input batch (for :func:`quantref.nn.trace`).

    Returns:
      ``{layer path: Gaussian(beta, |gamma|)}`` for each conv or dense layer followed directly by a BatchNorm.
    """
    network = nn.trace(model, x)
    statistics = {}
    for step in network.steps:
        producer = network.steps[step.inputs[0] - 1] if step.kind == "batch_norm" and step.inputs[0] > 0 else None
        if producer is not None and producer.kind in ("conv", "dense"):
            norm = nn.get_module(model, step.path)
            gamma = norm.scale[...] if norm.scale is not None else jnp.ones(norm.mean.shape)
            beta = norm.bias[...] if norm.bias is not None else jnp.zeros(norm.mean.shape)
            statistics[producer.path] = Gaussian(jnp.asarray(beta, jnp.float32), jnp.abs(gamma).astype(jnp.float32))
    return statistics


def equalization_pairs(network: nn.Trace) -> list[Pair]:
    """The pairs of layers that cross-layer equalization can rescale, in execution order: a conv or dense layer
    whose output reaches exactly one other (ungrouped) conv or dense layer through steps that each read only the
    step before and commute with a positive per-channel scale (ReLU, max-pool, flatten).

    Args:
      network: the model's :func:`quantref.nn.trace`.

    Returns:
      The :class:`Pair` s.
    """
    pairs = []
    for index, step in enumerate(network.steps):
        if step.kind not in ("conv", "dense") or not _ungrouped(step):
            continue
        value, between = index + 1, []
        while value not in network.outputs and len(readers := network.consumers(value)) == 1:
            reader = network.steps[readers[0]]
            if reader.kind in ("conv", "dense") and _ungrouped(reader) and reader.inputs == (value,):
                pairs.append(Pair(step.path, reader.path, tuple(between)))
            if reader.kind not in _HOMOGENEOUS:
                break
            between.append(reader.kind)
            value = readers[0] + 1
    return pairs


def equalize(
    model: nnx.Module,
    x: jax.Array | np.ndarray,
    *,
    statistics: Mapping[str, Gaussian] | None = None,
    iterations: int = 100,
    tolerance: float = 1e-6,
) -> Reparameterized:
    """Cross-layer equalization: rescale each pair's channels so that both layers have the same per-channel range.

    For $z = W_2 f(W_1 x + b_1) + b_2$ with $f$ positively homogeneous ($f(x/s) = f(x)/s$ for $s > 0$: ReLU),
    dividing output channel $i$ of the first layer by $s_i$ and multiplying input channel $i$ of the second by
    $s_i$ leaves $z$ unchanged. With $r^{(1)}_i$, $r^{(2)}_i$ those channels' ranges ($\\max |W|$),

    $$
    s_i = \\frac{1}{r^{(2)}_i} \\sqrt{r^{(1)}_i\\, r^{(2)}_i}
    \\quad\\Longrightarrow\\quad \\frac{r^{(1)}_i}{s_i} = r^{(2)}_i\\, s_i = \\sqrt{r^{(1)}_i\\, r^{(2)}_i},
    $$

    which maximises $\\sum_i \\frac{r^{(1)}_i / s_i}{\\max_j r^{(1)}_j / s_j} \\cdot \\frac{r^{(2)}_i s_i}{\\max_j
    r^{(2)}_j s_j}$, the precision of the two per-tensor grids together. A layer in two pairs (the middle of a
    chain) is rescaled by both in turn, so the sweep repeats until every $|s_i - 1| \\le$ ``tolerance``.
    Channels with an all-zero range keep $s_i = 1$.

    References:
      Nagel et al., arXiv:1906.04721, 2019, sec. 4.1 (eqs. 6-10).

    Args:
      model: the float model, BatchNorms folded.
      x: an example input batch (for :func:`quantref.nn.trace`).
      statistics: layer output distributions (:func:`batch_norm_statistics`) to rescale along, or ``None``.
      iterations: the most sweeps over the pairs.
      tolerance: the largest $|s_i - 1|$ at which a sweep counts as converged.

    Returns:
      The :class:`Reparameterized` model and statistics ($\\mu / s$, $\\sigma / s$).

    Raises:
      ValueError: if ``iterations < 1`` or ``tolerance < 0``.
    """
    if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)) or iterations < 1:
        raise ValueError(f"iterations must be a positive int, got {iterations!r}")
    if not tolerance >= 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance!r}")
    clone, statistics = nnx.clone(model), None if statistics is None else dict(statistics)
    pairs = equalization_pairs(nn.trace(clone, x))
    for _ in range(iterations):
        largest = 0.0
        for pair in pairs:
            first, second = _layer(clone, pair.first), _layer(clone, pair.second)
            first_range, second_range = _channel_ranges(first, second)
            live = (first_range > 0) & (second_range > 0)
            scale = np.where(live, np.sqrt(first_range / np.where(live, second_range, 1.0)), 1.0)
            _scale_channels(first, second, scale)
            if statistics is not None and pair.first in statistics:
                statistics[pair.first] = Gaussian(*(v / scale.astype(np.float32) for v in statistics[pair.first]))
            largest = max(largest, float(np.max(np.abs(scale - 1.0), initial=0.0)))
        if largest <= tolerance:
            break
    return Reparameterized(clone, statistics)


def absorb_bias(
    model: nnx.Module, x: jax.Array | np.ndarray, statistics: Mapping[str, Gaussian], *, num_std: float = 3.0
) -> Reparameterized:
    """Bias absorption: move the part of a ReLU layer's output that is (almost) always there into the next bias.

    If channel $i$ of a layer's output is at least $c_i \\ge 0$ for (almost) every input, then
    $\\operatorname{ReLU}(y_i) = \\operatorname{ReLU}(y_i - c_i) + c_i$ and the constant passes through the next
    layer as $W_2 c$:

    $$
    b_1 \\leftarrow b_1 - c, \\qquad b_2 \\leftarrow b_2 + W_2 c, \\qquad c_i = \\max(0,\\ \\mu_i - k\\,\\sigma_i),
    $$

    with $\\mathcal N(\\mu_i, \\sigma_i^2)$ the channel's distribution and $k$ = ``num_std``. The activation's
    range, and so its grid step, shrinks by $c_i$. Exact where $y_i \\ge c_i$ (under the Gaussian, all but a
    fraction $\\Phi(-k)$), except at the border of a zero-padded convolution, whose padded taps see 0, not $c$.

    References:
      Nagel et al., arXiv:1906.04721, 2019, sec. 4.1 ("absorbing high biases").

    Args:
      model: the float model, BatchNorms folded.
      x: an example input batch.
      statistics: ``{path: Gaussian}`` of the layers' outputs (:func:`batch_norm_statistics`, then
        :func:`equalize`).
      num_std: $k$.

    Returns:
      The :class:`Reparameterized` model and statistics ($\\mu - c$).

    Raises:
      ValueError: if ``num_std`` is negative.
    """
    if not num_std >= 0:
        raise ValueError(f"num_std must be >= 0, got {num_std!r}")
    clone, statistics = nnx.clone(model), dict(statistics)
    for pair in equalization_pairs(nn.trace(clone, x)):
        if "relu" in pair.between and pair.first in statistics:
            mean, std = statistics[pair.first]
            shift = jnp.maximum(mean - num_std * std, 0.0)
            first, second = _layer(clone, pair.first), _layer(clone, pair.second)
            _set_bias(first, _bias(first) - shift)
            channels = second.kernel[...].reshape(-1, len(shift), second.kernel.shape[-1])
            _set_bias(second, _bias(second) + jnp.einsum("pio,i->o", channels, shift))
            statistics[pair.first] = Gaussian(mean - shift, std)
    return Reparameterized(clone, statistics)


# --- quantized models with given weights -------------------------------------------------------------------------


def mse_scales(model: nnx.Module, qmodel: ptq.QuantizedModel, *, num_candidates: int = 100) -> ptq.QuantizedModel:
    """``qmodel`` with each kernel on the scales that minimise its squared error (:func:`quantref.gptq.weight_scale`
    with ``method="mse"``, ``qmodel``'s granularity), rounded to nearest; ``num_candidates`` as there."""
    kernels = {}
    for path, quant in qmodel.layers.items():
        kernel, fmt = _layer(model, path).kernel[...], qmodel.weight_format
        per_channel = quant.kernel_scale.ndim == 1
        scale = gptq.weight_scale(kernel, fmt, per_channel=per_channel, method="mse", num_candidates=num_candidates)
        kernels[path] = (gptq.round_to_nearest(kernel, scale, fmt), scale)
    return ptq.with_weights(model, qmodel, kernels=kernels)


# --- bias correction ---------------------------------------------------------------------------------------------


def bias_correction(
    model: nnx.Module, qmodel: ptq.QuantizedModel, calibration_x: np.ndarray, *, batch_size: int = 256
) -> ptq.QuantizedModel:
    """Empirical bias correction: remove the mean of each layer's output error, measured on calibration data.

    Layer by layer in execution order, with $\\mathbb E[x]$ the mean input row (:func:`quantref.nn.input_rows`) in
    the float network and $\\mathbb E[\\hat x]$ in the quantized one, whose earlier layers are already corrected:

    $$
    \\hat b = b - \\big(\\hat W^\\top \\mathbb E[\\hat x] - W^\\top \\mathbb E[x]\\big),
    $$

    which is $b - (\\hat W - W)^\\top \\mathbb E[x]$ when the inputs are the same. On the calibration data the
    quantized layer's output then has the float layer's mean (up to the int32 rounding of the bias).

    References:
      Nagel et al., arXiv:1906.04721, 2019, sec. 4.2 (eq. 13); Banner et al., arXiv:1810.05723, 2019.

    Args:
      model: the float model that ``qmodel`` quantizes.
      qmodel: its :class:`~quantref.ptq.QuantizedModel`.
      calibration_x: calibration inputs ``(N, ...)``.
      batch_size: inputs per batch.

    Returns:
      ``qmodel`` with corrected int32 biases.
    """
    batches = _batches(calibration_x, batch_size)
    biases: dict[str, jax.Array] = {}
    for path in qmodel.layer_order():
        current = ptq.fake_quant_model(model, ptq.with_weights(model, qmodel, biases=biases))
        layer = _layer(model, path)
        quantized_mean = _dequantized(qmodel, path).T @ _mean_rows(current, path, batches)
        float_mean = gptq.kernel_matrix(layer.kernel[...]).T @ _mean_rows(model, path, batches)
        biases[path] = _bias(layer) - (quantized_mean - float_mean)
    return ptq.with_weights(model, qmodel, biases=biases)


def analytic_bias_correction(
    model: nnx.Module, qmodel: ptq.QuantizedModel, statistics: Mapping[str, Gaussian]
) -> ptq.QuantizedModel:
    """Analytic bias correction: predict $\\mathbb E[x]$ from the previous layer's output distribution, with no data.

    For a layer whose input is $\\operatorname{ReLU}(y)$, $y_c \\sim \\mathcal N(\\mu_c, \\sigma_c^2)$ (the previous
    layer's :func:`batch_norm_statistics`), the clipped normal's mean gives

    $$
    \\mathbb E[x_c] = \\mu_c\\, \\Phi\\Big(\\frac{\\mu_c}{\\sigma_c}\\Big)
    + \\sigma_c\\, \\varphi\\Big(\\frac{\\mu_c}{\\sigma_c}\\Big), \\qquad
    \\hat b = b - (\\hat W - W)^\\top \\mathbb E[x],
    $$

    every tap of a convolution's receptive field taking its channel's mean (padding ignored). A layer whose input
    is not (a flatten of) the ReLU of a layer with statistics — the first layer, a layer after max-pool (the max of
    clipped normals is not a clipped normal) — keeps its bias.

    References:
      Nagel et al., arXiv:1906.04721, 2019, sec. 4.2 (eqs. 14-16).

    Args:
      model: the float model that ``qmodel`` quantizes.
      qmodel: its :class:`~quantref.ptq.QuantizedModel`.
      statistics: ``{path: Gaussian}`` of ``model``'s layer outputs.

    Returns:
      ``qmodel`` with corrected int32 biases where the statistics reach.
    """
    steps, biases = qmodel.network.steps, {}
    for path, step in qmodel.network.layer_steps().items():
        value, kinds = step.inputs[0], []
        while value > 0 and steps[value - 1].kind in ("relu", "flatten"):
            kinds, value = kinds + [steps[value - 1].kind], steps[value - 1].inputs[0]
        producer = steps[value - 1].path if value > 0 and steps[value - 1].kind in ("conv", "dense") else None
        if path not in qmodel.layers or producer not in statistics:
            continue
        mean, std = (jnp.asarray(v, jnp.float32) for v in statistics[producer])
        if "relu" in kinds:
            ratio = mean / jnp.maximum(std, 1e-12)
            mean = mean * jstats.norm.cdf(ratio) + std * jstats.norm.pdf(ratio)
        layer = _layer(model, path)
        matrix = gptq.kernel_matrix(layer.kernel[...])
        expected = jnp.tile(mean, matrix.shape[0] // len(mean))  # input rows are (..., channel), channel fastest
        biases[path] = _bias(layer) - (_dequantized(qmodel, path) - matrix).T @ expected
    return ptq.with_weights(model, qmodel, biases=biases)


# --- choosing the rounding: AdaRound ----------------------------------------------------------------------------

#: The stretch of AdaRound's rectified sigmoid (Louizos et al.'s $\zeta$ and $\gamma$).
ZETA, GAMMA = 1.1, -0.1


class AdaRoundResult(NamedTuple):
    """What :func:`adaround` returns: ``codes`` ``(in, out)`` in ``fmt.storage_dtype``, their reconstruction error
    ``objective``, and ``nearest_objective``, that of round-to-nearest on the same grid."""

    codes: jax.Array
    objective: jax.Array
    nearest_objective: jax.Array


def rectified_sigmoid(v: jax.Array) -> jax.Array:
    """$h(V) = \\operatorname{clamp}(\\sigma(V)(\\zeta - \\gamma) + \\gamma, 0, 1)$: it reaches 0 and 1 exactly (a
    sigmoid never does), so the rounding regulariser can be satisfied."""
    return jnp.clip(jax.nn.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def rounding_regularizer(v: jax.Array, beta: jax.Array | float) -> jax.Array:
    """$f_{reg}(V) = \\sum (1 - |2 h(V) - 1|^{\\beta})$: zero when every $h$ is 0 or 1, largest at $h = \\tfrac12$;
    a high $\\beta$ leaves $h$ free to move, a low one pushes it to an end."""
    return jnp.sum(1.0 - jnp.abs(2.0 * rectified_sigmoid(v) - 1.0) ** beta)


def adaround(
    kernel: jax.Array,
    scale: jax.Array,
    fmt: formats.IntFormat,
    stats: gptq.ReconstructionStats,
    *,
    iterations: int = 1000,
    learning_rate: float = 0.01,
    regularization: float = 0.01,
    beta: tuple[float, float] = (20.0, 2.0),
    warmup: float = 0.2,
) -> AdaRoundResult:
    """AdaRound for one layer: learn, per weight, whether to round down or up, to minimise the output error.

    $$
    \\tilde W(V) = s \\operatorname{clamp}\\big(\\lfloor W/s \\rfloor + h(V), q_{min}, q_{max}\\big), \\qquad
    \\min_V\\ \\frac1N \\lVert X W - \\hat X \\tilde W(V) \\rVert_F^2 + \\lambda f_{reg}(V),
    $$

    with $X$ the layer's input rows in the float network and $\\hat X$ in the network whose earlier layers are
    quantized (the paper's asymmetric reconstruction: the rounding also compensates the error that arrives).
    $V$ starts where $h(V) = W/s - \\lfloor W/s \\rfloor$ ($\\tilde W = W$ inside the grid); for the first
    ``warmup`` fraction of the Adam steps only the reconstruction error counts, then $\\lambda f_{reg}$ joins with
    $\\beta$ falling linearly from ``beta[0]`` to ``beta[1]``. A weight finally rounds up where $h(V) \\ge \\tfrac12$.
    Every step sees the whole calibration set exactly, through ``stats``
    (:func:`quantref.gptq.reconstruction_error`): there is no minibatch noise.

    References:
      Nagel et al., arXiv:2004.10568, 2020, eqs. 21-25, sec. 4 (asymmetric reconstruction) and 5 (λ = 0.01, β
      from 20 to 2, 20 % warm-up); Louizos et al., arXiv:1712.01312, 2017 (the rectified sigmoid).

    Args:
      kernel: ``(in, out)`` float kernel matrix (:func:`quantref.gptq.kernel_matrix`).
      scale: ``()``, ``(out,)`` or ``(groups, out)`` scales (:func:`quantref.gptq.row_scales`).
      fmt: the integer grid.
      stats: the layer's :class:`~quantref.gptq.ReconstructionStats`.
      iterations: Adam steps.
      learning_rate: Adam's step size.
      regularization: $\\lambda$.
      beta: ``(start, end)`` of the annealed exponent.
      warmup: the fraction of steps without the regulariser, in ``[0, 1)``.

    Returns:
      The :class:`AdaRoundResult`.

    Raises:
      ValueError: naming the argument, for shapes that do not fit or hyperparameters out of range.
      TypeError: if ``fmt`` is not an :class:`~quantref.formats.IntFormat`.
    """
    formats.check_format(fmt)
    kernel = jnp.asarray(kernel, jnp.float32)
    if kernel.ndim != 2 or stats.gram.shape != (kernel.shape[0],) * 2:
        raise ValueError(f"kernel must be an (in, out) matrix matching stats.gram {stats.gram.shape}: {kernel.shape}")
    if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)) or iterations < 1:
        raise ValueError(f"iterations must be a positive int, got {iterations!r}")
    if not 0 <= warmup < 1 or len(beta) != 2 or not min(beta) > 0:
        raise ValueError(f"warmup must be in [0, 1) and beta (start, end) > 0, got {warmup!r} and {beta!r}")
    if not learning_rate > 0 or not regularization >= 0:
        raise ValueError(f"learning_rate must be > 0 and regularization >= 0, got {learning_rate}, {regularization}")
    codes, objective, nearest = _adaround(
        kernel,
        gptq.row_scales(scale, *kernel.shape).astype(jnp.float32),
        gptq.ReconstructionStats(*(jnp.asarray(value, jnp.float32) for value in stats)),
        jnp.float32(fmt.qmin),
        jnp.float32(fmt.qmax),
        jnp.float32(learning_rate),
        jnp.float32(regularization),
        jnp.asarray(beta, jnp.float32),
        iterations=int(iterations),
        warmup_steps=int(warmup * iterations),
    )
    return AdaRoundResult(codes.astype(fmt.storage_dtype), objective, nearest)


@functools.partial(jax.jit, static_argnames=("iterations", "warmup_steps"))
def _adaround(kernel, scales, stats, qmin, qmax, learning_rate, regularization, beta, *, iterations, warmup_steps):
    ratio = affine.true_divide(kernel, scales)  # as quantref.affine.quantize divides, so "nearest" is its codes
    floor = jnp.floor(ratio)
    # h(V0) = the fractional part: invert the rectified sigmoid (fraction - gamma lies in [0.1, 1.1)).
    start = -jnp.log((ZETA - GAMMA) / (jnp.clip(ratio - floor, 0.0, 1.0) - GAMMA) - 1.0)
    # Only the first term of the reconstruction error depends on V: compute the others once.
    cross, constant = 2 * stats.cross @ kernel, jnp.sum(kernel * (stats.input_error @ kernel))

    def loss(v, beta_now, weight):
        delta = scales * jnp.clip(floor + rectified_sigmoid(v), qmin, qmax) - kernel
        error = (jnp.sum(delta * (stats.gram @ delta)) + jnp.sum(delta * cross) + constant) / stats.count
        return error + weight * rounding_regularizer(v, beta_now)

    optimizer = optax.adam(learning_rate)

    def step(carry, index):
        v, opt_state = carry
        annealed = jnp.clip((index - warmup_steps) / max(iterations - warmup_steps, 1), 0.0, 1.0)
        weight = jnp.where(index < warmup_steps, 0.0, regularization)
        grads = jax.grad(loss)(v, beta[0] + (beta[1] - beta[0]) * annealed, weight)
        updates, opt_state = optimizer.update(grads, opt_state, v)
        return (optax.apply_updates(v, updates), opt_state), None

    (v, _), _ = lax.scan(step, (start, optimizer.init(start)), jnp.arange(iterations))
    codes = jnp.clip(floor + (v >= 0), qmin, qmax)  # h(V) >= 1/2 exactly where V >= 0
    nearest = jnp.clip(jnp.round(ratio), qmin, qmax)
    objective = gptq.reconstruction_error(kernel, scales * codes, stats)
    return codes, objective, gptq.reconstruction_error(kernel, scales * nearest, stats)


# --- sequentially over a model's layers --------------------------------------------------------------------------


def layer_statistics(
    model: nnx.Module, qmodel: ptq.QuantizedModel, path: str, calibration_x: np.ndarray, *, batch_size: int = 256
) -> gptq.ReconstructionStats:
    """One layer's :class:`~quantref.gptq.ReconstructionStats` over calibration data: from its input rows in the
    float ``model`` ($X$) and in ``qmodel``'s :func:`quantref.ptq.fake_quant_model` ($\\hat X$, whose ``gram`` is
    :func:`quantref.nn.input_statistics`'s there)."""
    quantized = ptq.fake_quant_model(model, qmodel)
    batches = _batches(calibration_x, batch_size)
    return functools.reduce(
        gptq.ReconstructionStats.__add__,
        (gptq.reconstruction_stats(_rows(model, path, batch), _rows(quantized, path, batch)) for batch in batches),
    )


def quantize_sequentially(
    model: nnx.Module,
    qmodel: ptq.QuantizedModel,
    calibration_x: np.ndarray,
    quantize_layer: Callable[[jax.Array, jax.Array, gptq.ReconstructionStats], jax.Array],
    *,
    progress: bool = False,
    description: str = "layers",
) -> ptq.QuantizedModel:
    """Replaces each layer's codes, in execution order, by ``quantize_layer(kernel, scale, stats)``: the loop that
    AdaRound and GPTQ share. A layer's statistics come from the network whose earlier layers already have their
    new codes, so it sees, and can compensate, the error that arrives at its input.

    Args:
      model: the float model that ``qmodel`` quantizes.
      qmodel: its :class:`~quantref.ptq.QuantizedModel`: the grids (kept) and the starting codes.
      calibration_x: calibration inputs.
      quantize_layer: maps the ``(in, out)`` float kernel matrix, the layer's scale and its
        :class:`~quantref.gptq.ReconstructionStats` to ``(in, out)`` codes.
      progress: show a tqdm bar over the layers, labelled ``description``.
      description: the bar's label.

    Returns:
      The new :class:`~quantref.ptq.QuantizedModel`.
    """
    for path in tqdm(qmodel.layer_order(), desc=description, disable=not progress):
        stats = layer_statistics(model, qmodel, path, calibration_x)
        scale = qmodel.layers[path].kernel_scale
        codes = quantize_layer(gptq.kernel_matrix(_layer(model, path).kernel[...]), scale, stats)
        qmodel = ptq.with_weights(model, qmodel, kernels={path: (codes, scale)})
    return qmodel


def adaround_model(
    model: nnx.Module, qmodel: ptq.QuantizedModel, calibration_x: np.ndarray, *, progress: bool = False, **options
) -> ptq.QuantizedModel:
    """:func:`adaround` over ``model``'s layers in order, on ``qmodel``'s grids (:func:`quantize_sequentially`);
    ``options`` are :func:`adaround`'s (``iterations``, ``learning_rate``, ...).

    References:
      Nagel et al., arXiv:2004.10568, 2020, sec. 4-5.
    """

    def quantize_layer(kernel, scale, stats):
        return adaround(kernel, scale, qmodel.weight_format, stats, **options).codes

    return quantize_sequentially(
        model, qmodel, calibration_x, quantize_layer, progress=progress, description="AdaRound"
    )


def gptq_model(
    model: nnx.Module, qmodel: ptq.QuantizedModel, calibration_x: np.ndarray, *, progress: bool = False, **options
) -> ptq.QuantizedModel:
    """:func:`quantref.gptq.gptq` over ``model``'s layers in order, on ``qmodel``'s grids, each with the Hessian
    $H = 2 \\hat X^\\top \\hat X$ of the inputs the quantized layers before it produce (:func:`quantize_sequentially`);
    ``options`` are :func:`~quantref.gptq.gptq`'s (``block_size``, ``damping``, ``act_order``).

    References:
      Frantar et al., arXiv:2210.17323, 2022, sec. 3-4.
    """

    def quantize_layer(kernel, scale, stats):
        return gptq.gptq(kernel, 2 * stats.gram, scale, qmodel.weight_format, **options)

    return quantize_sequentially(model, qmodel, calibration_x, quantize_layer, progress=progress, description="GPTQ")


# --- measuring ---------------------------------------------------------------------------------------------------


def layer_sqnr(expected: Mapping[str, jax.Array], got: Mapping[str, jax.Array]) -> dict[str, float]:
    """Each layer's output SQNR in dB, $10 \\log_{10} \\sum y^2 / \\sum (\\hat y - y)^2$, between two recordings of
    :func:`quantref.nn.capture` or :func:`quantref.ptq.fake_quant_forward` (``"<path>.output"``).

    Args:
      expected: the float network's activations $y$.
      got: the quantized network's activations $\\hat y$, where the errors of all earlier layers have arrived.

    Returns:
      ``{path: dB}`` for each layer output recorded in both.
    """
    result = {}
    for name in expected:
        if name.endswith(".output") and name in got:
            y, y_hat = np.asarray(expected[name], np.float64), np.asarray(got[name], np.float64)
            result[name[: -len(".output")]] = float(10 * np.log10(np.sum(y**2) / max(np.sum((y_hat - y) ** 2), 1e-300)))
    return result


# --- helpers -----------------------------------------------------------------------------------------------------


def _layer(model: nnx.Module, path: str) -> nnx.Module:
    layer = nn.get_module(model, path)
    return layer.layer if isinstance(layer, nn.QuantLayer) else layer


def _ungrouped(step: nn.Step) -> bool:
    return step.kind == "dense" or step.param("groups") == 1


def _bias(layer: nnx.Module) -> jax.Array:
    return layer.bias[...] if layer.bias is not None else jnp.zeros(layer.kernel.shape[-1], jnp.float32)


def _set_bias(layer: nnx.Module, bias: jax.Array) -> None:
    if layer.bias is None:
        layer.bias, layer.use_bias = nnx.Param(jnp.asarray(bias, jnp.float32)), True
    else:
        layer.bias[...] = jnp.asarray(bias, layer.bias[...].dtype)


def _channel_ranges(first: nnx.Module, second: nnx.Module) -> tuple[np.ndarray, np.ndarray]:
    """$\\max|W|$ per output channel of ``first`` and per input channel of ``second``, in float64."""
    first_kernel = np.abs(np.asarray(first.kernel[...], np.float64))
    channels = first_kernel.shape[-1]
    second_kernel = np.abs(np.asarray(second.kernel[...], np.float64)).reshape(-1, channels, second.kernel.shape[-1])
    return first_kernel.reshape(-1, channels).max(axis=0), second_kernel.max(axis=(0, 2))


def _scale_channels(first: nnx.Module, second: nnx.Module, scale: np.ndarray) -> None:
    first.kernel[...] = jnp.asarray(np.asarray(first.kernel[...], np.float64) / scale, jnp.float32)
    _set_bias(first, jnp.asarray(np.asarray(_bias(first), np.float64) / scale, jnp.float32))
    shape = second.kernel.shape
    second_kernel = np.asarray(second.kernel[...], np.float64).reshape(-1, len(scale), shape[-1])
    second.kernel[...] = jnp.asarray((second_kernel * scale[:, None]).reshape(shape), jnp.float32)


def _dequantized(qmodel: ptq.QuantizedModel, path: str) -> jax.Array:
    quant = qmodel.layers[path]
    return gptq.kernel_matrix(quant.kernel.astype(jnp.float32) * jnp.asarray(quant.kernel_scale, jnp.float32))


def _batches(x: np.ndarray, batch_size: int) -> list[jax.Array]:
    x = np.asarray(x, np.float32)
    if x.ndim < 2 or len(x) == 0:
        raise ValueError(f"calibration_x must be a non-empty batch (N, ...), got shape {x.shape}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return [jnp.asarray(x[start : start + batch_size]) for start in range(0, len(x), batch_size)]


@functools.partial(jax.jit, static_argnums=(0, 1))
def _rows_jit(graphdef, path, state, x):
    model = nnx.merge(graphdef, state)
    _, activations = nn.capture(model, x, select=path)
    return nn.input_rows(nn.get_module(model, path), activations[f"{path}.input"])


def _rows(model: nnx.Module, path: str, x: jax.Array) -> jax.Array:
    """The layer's :func:`quantref.nn.input_rows` on ``x``, compiled once per model structure and path."""
    graphdef, state = nnx.split(model)
    return _rows_jit(graphdef, path, state, x)


def _mean_rows(model: nnx.Module, path: str, batches: list[jax.Array]) -> jax.Array:
    rows = [_rows(model, path, batch) for batch in batches]
    return sum(r.sum(axis=0) for r in rows) / sum(r.shape[0] for r in rows)
