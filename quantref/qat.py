"""Quantization-aware training (QAT): train the network through its own quantizers, then read its integers out.

Post-training quantization rounds a trained network once and hopes; QAT keeps rounding in the forward pass while
training, so the weights and the quantizers' ranges adapt to the grid. Rounding has zero gradient almost
everywhere, so every QAT method is a choice of *estimator* for the backward pass:

- the **straight-through estimator** (STE): pass the gradient through the rounding unchanged, inside the grid's
  range, and stop it outside (:func:`ste_fake_quant`);
- **LSQ** learns the step size $s$ itself, with the exact derivative of the quantizer with respect to $s$ (rounding
  treated as the STE treats it) and a gradient scale $g = 1/\\sqrt{N q_{max}}$; LSQ+ learns the zero point too
  (:func:`lsq_fake_quant`, :func:`scale_gradient`);
- **PACT** learns an activation's clipping level $\\alpha$ (:func:`pact_fake_quant`);
- or a *static* range that is not learned but tracked: an exponential moving average of each batch's min and max
  (Jacob et al.), which is also how the learned scales are initialised (an observer warm-up).

Batch normalization is folded into the conv before it *during* training, so that the network learns the weights
that will be deployed: the folded kernel $W\\gamma/\\sigma$ is what gets quantized. With batch statistics, Jacob et
al.'s folding would make the quantized weights jitter with every batch; Krishnamoorthi's correction folds the
*running* $\\sigma$ into the kernel and rescales the output by $\\sigma/\\sigma_B$ instead, and after a number of
steps freezes the statistics (:class:`QATLayer`).

The pieces, in order of use: :func:`prepare` turns a trained float model into a QAT model (BatchNorm folded into
:class:`QATLayer` s, quantizers initialised from a calibration batch), :func:`train` trains it with optax —
deterministic from a seed, data-parallel over any number of devices through :mod:`quantref.parallel` — and
:func:`to_quantized_model` reads its integers out as the :class:`quantref.ptq.QuantizedModel` that
:mod:`quantref.integer` runs and :mod:`quantref.export.onnx` writes. :func:`load_or_train` caches trained models
by their config, as :func:`quantref.train.load_or_train` caches the float one.

References:
  Bengio, Léonard, Courville, "Estimating or Propagating Gradients Through Stochastic Neurons for Conditional
  Computation", arXiv:1308.3432, 2013 (the straight-through estimator).
  Jacob et al., "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference",
  arXiv:1712.05877, 2017, sec. 3 (simulated quantization, EMA ranges, BN folding in training).
  Krishnamoorthi, "Quantizing deep convolutional networks for efficient inference: A whitepaper", arXiv:1806.08342,
  2018, sec. 3.2 (BN folding with the correction factor, freezing the statistics).
  Choi et al., "PACT: Parameterized Clipping Activation for Quantized Neural Networks", arXiv:1805.06085, 2018.
  Esser et al., "Learned Step Size Quantization", arXiv:1902.08153, 2019 (eq. 3 and sec. 2.2).
  Bhalgat et al., "LSQ+: Improving low-bit quantization through learnable offsets and better initialization",
  arXiv:2004.09576, 2020.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from quantref import _validate, affine, formats, nn, parallel, ptq
from quantref.estimators import (  # re-exported: part of the QAT API
    lsq_fake_quant,
    lsq_gradient_scale,
    pact_fake_quant,
    scale_gradient,
    ste_fake_quant,
)

__all__ = [
    "WEIGHT_METHODS",
    "ACTIVATION_METHODS",
    "BN_STATISTICS",
    "ste_fake_quant",
    "lsq_fake_quant",
    "pact_fake_quant",
    "scale_gradient",
    "lsq_gradient_scale",
    "WeightQuantizer",
    "ActivationQuantizer",
    "QATLayer",
    "QATConfig",
    "prepare",
    "end_warmup",
    "freeze_batch_norm",
    "deployed_model",
    "to_quantized_model",
]

#: Weight quantizers: ``"lsq"`` learns a step size per output channel; ``"min_max"`` takes $\max|W|/q_{max}$ of the
#: current weights at every step (Jacob et al.), gradients by the STE.
WEIGHT_METHODS = ("lsq", "min_max")
#: Activation quantizers: ``"lsq"`` learns the step size, ``"pact"`` the clipping level (non-negative inputs only),
#: ``"ema"`` tracks an exponential moving average of the batch range and learns nothing.
ACTIVATION_METHODS = ("lsq", "pact", "ema")
#: Where a folded BatchNorm's batch statistics come from during training (see :class:`QATLayer`).
BN_STATISTICS = ("quantized", "float")


# --- the quantizer modules ----------------------------------------------------------------------------------------


class WeightQuantizer(nnx.Module):
    """A weight quantizer on the symmetric narrow grid: LSQ's learned step per output channel, or min-max with STE.

    Attributes:
      scale: the learned step, an ``nnx.Param`` (``"lsq"``), or ``None`` (``"min_max"`` computes it per call).
      fmt: the weight grid (static).
      method: one of :data:`WEIGHT_METHODS` (static).
      per_channel: one step per output channel (the kernel's last axis) if True (static).
    """

    def __init__(self, kernel: jax.Array, fmt: formats.IntFormat, *, method: str = "lsq", per_channel: bool = True):
        """Initialises the step from the kernel it will quantize (the folded kernel, for a conv with BatchNorm).

        The LSQ step starts at the paper's $2\\langle|W|\\rangle/\\sqrt{q_{max}}$ (per channel), or at the min-max
        step $\\max|W|/q_{max}$ if that is smaller (as it usually is at 8 bits, where LSQ's start would clip nothing
        but waste most of the grid).
        """
        self.fmt = fmt
        self.method = method
        self.per_channel = per_channel
        self.scale = (
            nnx.Param(jnp.minimum(self.min_max_scale(kernel), self._lsq_init(kernel))) if method == "lsq" else None
        )

    def min_max_scale(self, kernel: jax.Array) -> jax.Array:
        """$\\max|W|/q_{max}$, per output channel or per tensor (PTQ's weight scale)."""
        magnitude = jnp.abs(kernel).reshape(-1, kernel.shape[-1])
        absmax = magnitude.max(axis=0) if self.per_channel else magnitude.max()
        return jnp.maximum(affine.true_divide(absmax, self.fmt.qmax), jnp.finfo(jnp.float32).eps)

    def _lsq_init(self, kernel: jax.Array) -> jax.Array:
        magnitude = jnp.abs(kernel).reshape(-1, kernel.shape[-1])
        mean = magnitude.mean(axis=0) if self.per_channel else magnitude.mean()
        return 2 * mean / math.sqrt(self.fmt.qmax)

    def current_scale(self, kernel: jax.Array) -> jax.Array:
        """The step the quantizer uses for ``kernel`` now."""
        if self.scale is None:
            return jax.lax.stop_gradient(self.min_max_scale(kernel))
        return jnp.maximum(self.scale[...], jnp.finfo(jnp.float32).eps)

    def __call__(self, kernel: jax.Array) -> jax.Array:
        scale = self.current_scale(kernel)
        if self.scale is None:
            return ste_fake_quant(kernel, scale, jnp.zeros_like(scale), self.fmt)
        per_step = kernel.size // max(scale.size, 1)
        scale = scale_gradient(scale, lsq_gradient_scale(per_step, self.fmt))
        return lsq_fake_quant(kernel, scale, jnp.zeros_like(scale), self.fmt)


class ActivationQuantizer(nnx.Module):
    """A per-tensor activation quantizer: LSQ, PACT or EMA ranges, with an observer that runs first.

    While ``observing`` (the warm-up, and always for ``"ema"``), the quantizer tracks the batch range with an
    exponential moving average, $m_t = \\mu m_{t-1} + (1 - \\mu) \\min x_t$ (and the same for the max), and
    quantizes with the scale and zero point of that range (STE). :meth:`end_warmup` then sets the learned step
    (LSQ) or clipping level (PACT) from the observed range, and from then on they are learned.

    Attributes:
      low, high: the observed range (:class:`quantref.parallel.MinStat` / :class:`~quantref.parallel.MaxStat`:
        data-parallel shards combine them by min and max).
      scale: LSQ's learned step (``nnx.Param``), else ``None``.
      alpha: PACT's learned clipping level (``nnx.Param``), else ``None``.
      zero_point: the zero point: an ``nnx.Param`` if learned (LSQ+), else an ``nnx.Variable`` set at the end of the
        warm-up.
      fmt, method, momentum, observing, use_running_average: static; ``use_running_average=True`` (``model.eval()``)
        stops the observer's updates.
    """

    def __init__(
        self,
        min_val: jax.Array,
        max_val: jax.Array,
        fmt: formats.IntFormat,
        *,
        method: str = "lsq",
        momentum: float = 0.9,
        learn_zero_point: bool = False,
    ):
        """Starts the observer at ``[min_val, max_val]`` (a calibration batch's range)."""
        self.fmt = fmt
        self.method = method
        self.momentum = momentum
        self.low = parallel.MinStat(jnp.asarray(min_val, jnp.float32))
        self.high = parallel.MaxStat(jnp.asarray(max_val, jnp.float32))
        scale, zero_point = self.observed()
        self.scale = nnx.Param(scale) if method == "lsq" else None
        self.alpha = nnx.Param(jnp.maximum(self.high[...], 0.0)) if method == "pact" else None
        variable = nnx.Param if learn_zero_point and method == "lsq" else nnx.Variable
        self.zero_point = variable(zero_point)
        self.observing = True
        self.use_running_average = False

    def observed(self) -> tuple[jax.Array, jax.Array]:
        """Scale and (float) zero point of the observed range on the grid."""
        scale, zero_point = affine.scale_zero_point(self.low[...], self.high[...], self.fmt)
        return scale, zero_point.astype(jnp.float32)

    def quantization(self) -> tuple[jax.Array, jax.Array]:
        """The scale and zero point (float, integer-valued) the quantizer uses now."""
        if self.observing:
            return self.observed()
        if self.method == "pact":
            return jnp.maximum(self.alpha[...], 1e-8) / self.fmt.qmax, jnp.float32(0)
        zero_point = jnp.clip(jnp.round(self.zero_point[...]), self.fmt.qmin, self.fmt.qmax)
        return jnp.maximum(self.scale[...], jnp.finfo(jnp.float32).eps), zero_point

    def end_warmup(self) -> None:
        """Sets the learned parameters from the observed range and stops observing (``"ema"`` keeps observing)."""
        if self.method == "ema":
            return
        scale, zero_point = self.observed()
        if self.method == "lsq":
            self.scale[...] = scale
            self.zero_point[...] = zero_point
        else:
            self.alpha[...] = scale * self.fmt.qmax
        self.observing = False

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.observing:
            if not self.use_running_average:
                batch_low, batch_high = jax.lax.stop_gradient(jnp.min(x)), jax.lax.stop_gradient(jnp.max(x))
                self.low[...] = self.momentum * self.low[...] + (1 - self.momentum) * batch_low
                self.high[...] = self.momentum * self.high[...] + (1 - self.momentum) * batch_high
            scale, zero_point = self.observed()
            return ste_fake_quant(x, scale, zero_point, self.fmt)
        if self.method == "pact":
            return pact_fake_quant(x, self.alpha[...], self.fmt)
        scale = scale_gradient(self.quantization()[0], lsq_gradient_scale(x[0].size, self.fmt))
        return lsq_fake_quant(x, scale, self.zero_point[...], self.fmt)


# --- the layer: BatchNorm folded during training ------------------------------------------------------------------


class QATLayer(nn.QuantLayer):
    """A :class:`quantref.nn.QuantLayer` that also folds the BatchNorm after it, while training.

    With kernel $W$, bias $b$, the BatchNorm's $\\gamma, \\beta$, running statistics $\\mu, \\sigma^2$ and the
    current batch's statistics $\\mu_B, \\sigma_B^2$, the layer computes

    $$
    \\text{batch statistics:}\\quad y = \\frac{\\sigma}{\\sigma_B}\\, \\big(Q_w(W_{fold}) \\ast x\\big)
    + \\beta + \\frac{\\gamma (b - \\mu_B)}{\\sigma_B}, \\qquad
    \\text{running (frozen):}\\quad y = Q_w(W_{fold}) \\ast x + Q_b(b_{fold}),
    $$

    with $W_{fold} = W\\gamma/\\sigma$ and $b_{fold} = \\beta + \\gamma(b - \\mu)/\\sigma$ (each $\\sigma$ includes
    BatchNorm's $\\epsilon$). The correction factor $c = \\sigma/\\sigma_B$ lets the quantized kernel use the stable
    running $\\sigma$ (Jacob et al. fold $\\sigma_B$ in, and the quantized weights jitter from batch to batch). The
    batch statistics are those of

    - ``statistics="float"``: the float layer's output $W \\ast x + b$, from a second convolution — Krishnamoorthi's
      graph; as in TensorFlow's implementation of it, no gradient flows through them;
    - ``statistics="quantized"``: the unfolded quantized output $(Q_w(W_{fold}) \\ast x)\\,\\sigma/\\gamma + b$, one
      convolution, gradients through the statistics as through a BatchNorm — PyTorch's ``ConvBn2d``
      (``_forward_approximate``).

    Without quantizers both are exactly BatchNorm's training-mode output $\\gamma(Wx + b - \\mu_B)/\\sigma_B +
    \\beta$ (up to float rounding). In batch mode the running statistics are updated as BatchNorm updates them.
    After :func:`freeze_batch_norm` the layer computes the second form, which is the deployed layer: the folded kernel
    and bias that :func:`to_quantized_model` reads out, the bias on its int32 grid $s_{in} s_w$. A layer without a
    BatchNorm is an ordinary fake-quant layer.

    References:
      Krishnamoorthi, arXiv:1806.08342, 2018, sec. 3.2 and fig. 8–9.
      Jacob et al., arXiv:1712.05877, 2017, sec. 3.2.

    Attributes:
      norm: the ``nnx.BatchNorm`` folded into this layer (its parameters train; its statistics are the running
        ones), or ``None``.
      statistics: static; ``"float"`` or ``"quantized"``, see above.
      use_running_average: static; True in ``model.eval()`` mode (no statistics are updated).
      bn_frozen: static; True after :func:`freeze_batch_norm`: running statistics, in training too.
    """

    def __init__(
        self, layer: nnx.Module, norm: nnx.BatchNorm | None = None, *, statistics: str = "quantized", **quantizers: Any
    ):
        """Wraps ``layer`` (and the BatchNorm ``norm`` after it) with the quantizers of :class:`nn.QuantLayer`.

        Raises:
          ValueError: for an unknown ``statistics``.
        """
        if statistics not in BN_STATISTICS:
            raise ValueError(f"statistics must be one of {BN_STATISTICS}, got {statistics!r}")
        super().__init__(layer, **quantizers)
        self.norm = norm
        self.statistics = statistics
        self.use_running_average = False
        self.bn_frozen = False

    def _sigma(self) -> jax.Array:
        return jnp.sqrt(self.norm.var[...] + self.norm.epsilon)

    def _norm_params(self) -> tuple[jax.Array, jax.Array]:
        gamma = self.norm.scale[...] if self.norm.scale is not None else 1.0
        beta = self.norm.bias[...] if self.norm.bias is not None else 0.0
        return gamma, beta

    def _bias(self) -> jax.Array:
        bias = self.layer.bias
        return bias[...] if bias is not None else jnp.zeros(self.layer.kernel.shape[-1], jnp.float32)

    def folded_kernel(self) -> jax.Array:
        """$W_{fold} = (W \\odot M)\\,\\gamma/\\sigma$, running $\\sigma$ ($W \\odot M$ without a BatchNorm)."""
        kernel = self.layer.kernel[...]
        if self.mask is not None:
            kernel = kernel * self.mask[...]
        if self.norm is None:
            return kernel
        return kernel * (self._norm_params()[0] / self._sigma())

    def folded_bias(self) -> jax.Array:
        """$b_{fold} = \\beta + \\gamma(b - \\mu)/\\sigma$, running statistics ($b$ without a BatchNorm)."""
        if self.norm is None:
            return self._bias()
        gamma, beta = self._norm_params()
        return (self._bias() - self.norm.mean[...]) * (gamma / self._sigma()) + beta

    def effective_kernel(self) -> jax.Array:
        """The kernel the layer computes with: $Q_w(W_{fold})$."""
        kernel = self.folded_kernel()
        return kernel if self.weight_quantizer is None else self.weight_quantizer(kernel)

    def quantized_bias(self) -> jax.Array:
        """$b_{fold}$ on its int32 grid $s_{in}\\, s_w$ (rounding passed straight through), as deployed."""
        bias = self.folded_bias()
        if self.weight_quantizer is None or self.input_quantizer is None:
            return bias
        bias_scale = self.input_quantizer.quantization()[0] * self.weight_quantizer.current_scale(self.folded_kernel())
        return _round_ste(affine.true_divide(bias, bias_scale)) * bias_scale

    def __call__(self, x: jax.Array, *args: Any, **kwargs: Any) -> jax.Array:
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        if self.norm is None or self.bn_frozen or self.use_running_average:
            y = _apply(self.layer, x, self.effective_kernel(), self.quantized_bias())
        else:
            y = self._batch_statistics_forward(x)
        if self.output_quantizer is not None:
            y = self.output_quantizer(y)
        return y

    def _batch_statistics_forward(self, x: jax.Array) -> jax.Array:
        gamma, beta = self._norm_params()
        bias, sigma = self._bias(), self._sigma()
        y = _apply(self.layer, x, self.effective_kernel(), jnp.zeros_like(bias))
        if self.statistics == "float":
            kernel = self.layer.kernel[...] if self.mask is None else self.layer.kernel[...] * self.mask[...]
            # The float layer's output, for the statistics only: no gradient flows through them (as in TensorFlow's
            # folding, whose FusedBatchNorm passes none to its batch moments).
            batch_mean, batch_var = _moments(jax.lax.stop_gradient(_apply(self.layer, x, kernel, bias)))
        else:
            # PyTorch's approximation: the statistics of the unfolded quantized output y sigma / gamma + b, which are
            # those of y, scaled (and shifted by b); gradients flow through them as through a BatchNorm.
            unfold = sigma / gamma
            mean, var = _moments(y)
            batch_mean, batch_var = mean * unfold + bias, var * jnp.square(unfold)
        batch_sigma = jnp.sqrt(batch_var + self.norm.epsilon)
        y = y * (sigma / batch_sigma) + (beta + (bias - batch_mean) * (gamma / batch_sigma))
        batch_mean, batch_var = jax.lax.stop_gradient((batch_mean, batch_var))
        momentum = self.norm.momentum
        self.norm.mean[...] = momentum * self.norm.mean[...] + (1 - momentum) * batch_mean
        self.norm.var[...] = momentum * self.norm.var[...] + (1 - momentum) * batch_var
        return y


def _moments(y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-channel (last axis) mean and biased variance $E[y^2] - E[y]^2$ (clipped at 0), as ``nnx.BatchNorm``."""
    axes = tuple(range(y.ndim - 1))
    mean, mean_square = jnp.mean(y, axis=axes), jnp.mean(jnp.square(y), axis=axes)
    return mean, jnp.maximum(mean_square - jnp.square(mean), 0.0)


def _apply(layer: nnx.Module, x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """``layer(x)`` computed with another kernel and bias (same padding, strides and dtypes)."""
    graphdef, state = nnx.split(layer)
    state["kernel"] = state["kernel"].replace(kernel)
    if layer.bias is None:
        return nnx.merge(graphdef, state)(x) + bias
    state["bias"] = state["bias"].replace(bias)
    return nnx.merge(graphdef, state)(x)


@jax.custom_vjp
def _round_ste(x: jax.Array) -> jax.Array:
    return jnp.round(x)


_round_ste.defvjp(lambda x: (jnp.round(x), None), lambda _, gradient: (gradient,))


# --- a QAT model from a float one, and back to integers -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class QATConfig:
    """What to quantize and how to train it (the key of a trained model's cache entry).

    Attributes:
      weight_bits: weight bits, 2..8 (symmetric narrow grid, as :func:`quantref.ptq.weight_format`).
      activation_bits: activation bits, 2..8 (unsigned grid, as :func:`quantref.ptq.activation_format`).
      weight_method: one of :data:`WEIGHT_METHODS`.
      activation_method: one of :data:`ACTIVATION_METHODS`, for every layer's input.
      input_method: one of :data:`ACTIVATION_METHODS`, for the model's input. ``"ema"`` by default: the input's range
        is the data's, and learning its step would need the gradient with respect to the input, one more backward
        convolution through the first layer at every step.
      output_method: one of :data:`ACTIVATION_METHODS`, for the output layers' outputs (the logits; PACT falls back
        to LSQ there, since logits are signed).
      per_channel: one weight step per output channel if True, else one per tensor.
      learn_zero_point: learn the activations' zero points too (LSQ+), for ``"lsq"``.
      momentum: the observers' EMA weight of the old value, $\\mu$.
      warmup_steps: optimizer steps of observer warm-up before scales are learned.
      bn_statistics: one of :data:`BN_STATISTICS`.
      freeze_bn_step: the step from which BatchNorm statistics are frozen; ``None`` never freezes them.
      epochs: passes over the training split.
      batch_size: examples per optimizer step (the global batch, over all shards).
      learning_rate: initial AdamW learning rate, cosine-decayed to zero.
      weight_decay: AdamW decoupled weight decay, on kernels only (not on steps, clipping levels or BatchNorm).
      shards: parts the batch is split into for data parallelism (:mod:`quantref.parallel`); the result depends on
        it, not on the number of devices.
    """

    weight_bits: int = 4
    activation_bits: int = 4
    weight_method: str = "lsq"
    activation_method: str = "lsq"
    input_method: str = "ema"
    output_method: str = "lsq"
    per_channel: bool = True
    learn_zero_point: bool = False
    momentum: float = 0.9
    warmup_steps: int = 20
    bn_statistics: str = "quantized"
    freeze_bn_step: int | None = 100
    epochs: int = 8
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    shards: int = 1


def _call(model: nnx.Module, x: jax.Array) -> Any:
    return model(x)


def prepare(
    model: nnx.Module,
    calibration_x: np.ndarray,
    config: QATConfig | None = None,
    *,
    forward: nn.Forward = _call,
) -> nnx.Module:
    """A QAT copy of a trained float model: each conv/dense layer a :class:`QATLayer`, each BatchNorm after one
    folded into it, every layer's input (and each output layer's output) quantized.

    The activation observers start at the min-max range of ``calibration_x`` through the float, BN-folded model —
    exactly the ranges of min-max PTQ (:func:`quantref.ptq.calibrate_activations`) — and weight steps at LSQ's
    initialisation on the folded kernels. PACT is used only where an activation is non-negative (it clips at 0);
    elsewhere (the logits) LSQ. The model's input gets ``config.input_method``, the logits ``config.output_method``.
    The quantizers start observing (the warm-up) unless ``config.warmup_steps`` is 0.

    Args:
      model: the trained float model (not folded: its BatchNorms are folded here, with their statistics kept).
      calibration_x: float inputs ``(N, ...)`` for the initial ranges.
      config: the :class:`QATConfig` (bit widths and methods); ``None`` for the defaults.
      forward: how to call the model, as in :func:`quantref.nn.capture`.

    Returns:
      The QAT model, in training mode; the original is unchanged.

    Raises:
      ValueError: for a bad config or calibration batch, or a model without conv/dense layers.
      TypeError: if ``model`` is not an NNX module.
    """
    config = QATConfig() if config is None else _check_config(config)
    calibration_x = _batch(calibration_x, "calibration_x")
    network = nn.trace(model, calibration_x[:1], forward=forward)
    if not network.layer_steps():
        raise ValueError("the model has no conv or dense layer to quantize")
    norms = _batch_norm_pairs(network)
    folded = nn.fold_batch_norm(model, calibration_x[:1], forward=forward)
    _, activations = nn.capture(folded, calibration_x, forward=forward)
    w_fmt = ptq.weight_format(config.weight_bits)
    a_fmt = ptq.activation_format(config.activation_bits, signed=False)

    def activation_quantizer(name: str, method: str) -> ActivationQuantizer:
        values = activations[name]
        low, high = jnp.min(values), jnp.max(values)
        method = "lsq" if method == "pact" and float(low) < 0 else method
        return ActivationQuantizer(
            low, high, a_fmt, method=method, momentum=config.momentum, learn_zero_point=config.learn_zero_point
        )

    qat_model = nnx.clone(model)
    outputs, steps = set(network.output_layers()), network.layer_steps()
    for path in steps:
        layer = nn.get_module(qat_model, path)
        folded_kernel = nn.get_module(folded, path).kernel[...]
        wrapped = QATLayer(
            layer,
            nn.get_module(qat_model, norms[path]) if path in norms else None,
            statistics=config.bn_statistics,
            weight_quantizer=WeightQuantizer(
                folded_kernel, w_fmt, method=config.weight_method, per_channel=config.per_channel
            ),
            input_quantizer=activation_quantizer(
                f"{path}.input", config.input_method if steps[path].inputs == (0,) else config.activation_method
            ),
            output_quantizer=activation_quantizer(f"{path}.output", config.output_method) if path in outputs else None,
        )
        _set_module(qat_model, path, wrapped)
    for norm_path in norms.values():
        _set_module(qat_model, norm_path, nn.Identity())
    if config.warmup_steps == 0:
        end_warmup(qat_model)
    qat_model.train()
    return qat_model


def end_warmup(model: nnx.Module) -> None:
    """Ends the observer warm-up of every activation quantizer in ``model`` (in place): learned scales (LSQ) and
    clipping levels (PACT) start from the observed ranges; EMA quantizers keep observing."""
    for _, module in nnx.iter_modules(model):
        if isinstance(module, ActivationQuantizer):
            module.end_warmup()


def freeze_batch_norm(model: nnx.Module) -> None:
    """Freezes the folded BatchNorm statistics of every :class:`QATLayer` in ``model`` (in place): from now on the
    layers train in their deployed form, running statistics and no correction factor (Krishnamoorthi, sec. 3.2)."""
    for _, module in nnx.iter_modules(model):
        if isinstance(module, QATLayer):
            module.bn_frozen = True


def deployed_model(model: nnx.Module) -> nnx.Module:
    """The QAT model as it will be deployed: each :class:`QATLayer` replaced by a plain :class:`quantref.nn.QuantLayer`
    over the folded kernel $W_{fold}$ and bias $b_{fold}$, with static :class:`quantref.ptq.FakeQuant` quantizers at
    the steps and zero points the QAT model computes with now.

    Args:
      model: a QAT model from :func:`prepare` (trained or not); it is not changed.

    Returns:
      The deployed fake-quant model (its BatchNorms already folded), which :func:`quantref.ptq.from_fake_quant` reads
      the integers out of.
    """
    model = nnx.clone(model)
    model.eval()

    def static(quantizer: ActivationQuantizer | None) -> ptq.FakeQuant | None:
        if quantizer is None:
            return None
        scale, zero_point = quantizer.quantization()
        return ptq.FakeQuant(scale, zero_point.astype(jnp.int32), quantizer.fmt)

    def deploy(path: str, layer: nnx.Module) -> nn.QuantLayer | None:
        if not isinstance(layer, QATLayer):
            return None
        kernel, bias = layer.folded_kernel(), layer.folded_bias()
        scale = layer.weight_quantizer.current_scale(kernel)
        inner = nnx.clone(layer.layer)
        inner.kernel[...] = kernel
        if inner.bias is None:
            inner.bias, inner.use_bias = nnx.Param(bias), True
        else:
            inner.bias[...] = bias
        axis = None if scale.ndim == 0 else kernel.ndim - 1
        return nn.QuantLayer(
            inner,
            weight_quantizer=ptq.FakeQuant(scale, jnp.zeros_like(scale, jnp.int32), layer.weight_quantizer.fmt, axis),
            input_quantizer=static(layer.input_quantizer),
            output_quantizer=static(layer.output_quantizer),
        )

    return nn.swap_layers(model, deploy)


def to_quantized_model(model: nnx.Module, x_example: np.ndarray) -> ptq.QuantizedModel:
    """Reads a QAT model's integers out: the :class:`quantref.ptq.QuantizedModel` that integer inference and export
    take.

    :func:`quantref.ptq.from_fake_quant` of the :func:`deployed_model`: weight codes
    $\\operatorname{clamp}(\\lfloor W_{fold}/s_w \\rceil)$ (int8 storage; a 4-bit grid's codes are a subset of
    it), biases $\\lfloor b_{fold}/(s_{in} s_w) \\rceil$ in int32, and each activation's scale and zero point —
    the very numbers the QAT model's eval-mode forward computes with. So that forward and the integer network
    differ only where float accumulation puts a value on the other side of a rounding tie (see
    :mod:`quantref.integer`).

    Args:
      model: a QAT model from :func:`prepare` (trained or not).
      x_example: an example input batch (only its shape matters).

    Returns:
      The quantized model.
    """
    return ptq.from_fake_quant(deployed_model(model), _batch(x_example, "x_example")[:1])


def _batch_norm_pairs(network: nn.Trace) -> dict[str, str]:
    """``{layer path: BatchNorm path}`` for each BatchNorm that reads a conv/dense output nothing else reads (the
    pairs :func:`quantref.nn.fold_batch_norm` folds)."""
    pairs = {}
    for index, step in enumerate(network.steps):
        if step.kind != "batch_norm" or len(step.inputs) != 1 or step.inputs[0] == 0:
            continue
        producer = network.steps[step.inputs[0] - 1]
        if producer.kind in ("conv", "dense") and network.consumers(step.inputs[0]) == [index]:
            pairs[producer.path] = step.path
    return pairs


def _set_module(model: nnx.Module, path: str, module: nnx.Module) -> None:
    parent, _, name = path.rpartition(".")
    owner = nn.get_module(model, parent)
    if name.isdigit():
        owner[int(name)] = module
    else:
        setattr(owner, name, module)


def _batch(x: Any, name: str) -> np.ndarray:
    array = np.asarray(nn.check_input(x, name), np.float32)
    if array.ndim < 2 or len(array) == 0:
        raise ValueError(f"{name} must be a non-empty float array (N, ...), got {array.dtype}{array.shape}")
    return array


def _check_config(config: QATConfig) -> QATConfig:
    if not isinstance(config, QATConfig):
        raise TypeError(f"config must be a qat.QATConfig, got {type(config).__name__}")
    ptq.weight_format(config.weight_bits)
    ptq.activation_format(config.activation_bits, signed=False)
    _validate.check_choice(config.weight_method, "weight_method", WEIGHT_METHODS)
    for name in ("activation_method", "input_method", "output_method"):
        _validate.check_choice(getattr(config, name), name, ACTIVATION_METHODS)
    _validate.check_choice(config.bn_statistics, "bn_statistics", BN_STATISTICS)
    _validate.check_bool(config.per_channel, "per_channel")
    _validate.check_bool(config.learn_zero_point, "learn_zero_point")
    for name, low in (("epochs", 1), ("batch_size", 1), ("shards", 1), ("warmup_steps", 0)):
        _validate.check_int(getattr(config, name), name, low=low)
    if config.freeze_bn_step is not None:
        _validate.check_int(config.freeze_bn_step, "freeze_bn_step", low=0)
    if not 0.0 <= _validate.check_real(config.momentum, "momentum") < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {config.momentum!r}")
    if config.batch_size % config.shards:
        raise ValueError(f"shards={config.shards} must divide batch_size={config.batch_size}")
    if not _validate.check_real(config.learning_rate, "learning_rate") > 0:
        raise ValueError(f"learning_rate must be positive, got {config.learning_rate!r}")
    if not _validate.check_real(config.weight_decay, "weight_decay") >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {config.weight_decay!r}")
    return config
