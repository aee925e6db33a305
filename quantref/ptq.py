"""Post-training quantization (PTQ) of the walkthrough CNN: calibrate, quantize weights and biases, simulate.

The recipe (Nagel et al.'s "standard PTQ pipeline", sec. 4.1, and TFLite's int8 spec):

1. fold batch norm into the convolutions (:func:`quantref.correction.fold_batch_norm`);
2. run the float network on the calibration split and estimate, with any observer of :mod:`quantref.ranges`, the
   range of every activation that the integer network stores (:data:`quantref.correction.ACTIVATION_POINTS`: the
   input, the two post-ReLU feature maps, the logits) — per tensor, asymmetric, int8 or uint8;
3. quantize each weight tensor symmetrically on the narrow grid $[-(2^{b-1}-1), 2^{b-1}-1]$, one scale per output
   channel (or per tensor), $s_w = \\max|W_c| / (2^{b-1}-1)$, zero point 0;
4. quantize each bias to int32 with the scale of the accumulator it is added to, zero point 0:

$$
s_{bias,c} = s_{in}\\, s_{w,c}, \\qquad b_q = \\operatorname{rne}(b / s_{bias}) .
$$

The result is a :class:`QuantizedModel`: integer weights and biases, float32 scales and integer zero points — all
an integer-only runtime needs (:mod:`quantref.integer`, :mod:`quantref.export.onnx`). :func:`fake_quant_forward`
simulates it in float ("fake quantization"); :func:`accuracy_table` compares bit widths, granularities and
calibration methods.

References:
  Jacob et al., "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference",
  arXiv:1712.05877, 2017, sec. 2.4 (int32 bias with $s_{bias} = s_{in} s_w$) and 3.
  Nagel et al., "A White Paper on Neural Network Quantization", arXiv:2106.08295, 2021, sec. 2.3, 3.1, 4.1.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from quantref import affine, correction, formats, ranges

__all__ = [
    "LayerQuant",
    "ActivationQuant",
    "QuantizedModel",
    "OBSERVER_NAMES",
    "LAYER_ACTIVATIONS",
    "weight_format",
    "activation_format",
    "calibrate_activations",
    "quantize_model",
    "dequantize_params",
    "fake_quant_forward",
    "accuracy",
    "accuracy_table",
]

#: The observers of :mod:`quantref.ranges` that :func:`quantize_model` accepts by name.
OBSERVER_NAMES = tuple(ranges.OBSERVERS)
_LAYERS = ("conv1", "conv2", "dense")
# Each layer's input and output, named as in correction.ACTIVATION_POINTS: the one place the chain is written down.
LAYER_ACTIVATIONS = {
    "conv1": ("conv1.input", "conv2.input"),
    "conv2": ("conv2.input", "pool.input"),
    "dense": ("pool.input", "logits"),
}
_INT32_MAX = 2**31 - 1


class LayerQuant(NamedTuple):
    """One quantized conv or dense layer.

    Attributes:
      kernel: integer weight codes, int8 storage (HWIO for a conv, ``(in, out)`` for the dense layer), zero point 0.
      kernel_scale: float32, ``(out,)`` per output channel or ``()`` per tensor.
      bias: int32 codes, ``(out,)``, with scale ``input_scale * kernel_scale`` and zero point 0.
    """

    kernel: jax.Array
    kernel_scale: jax.Array
    bias: jax.Array


class ActivationQuant(NamedTuple):
    """Per-tensor quantization parameters of one activation: float32 ``scale`` and int32 ``zero_point`` (scalars)."""

    scale: jax.Array
    zero_point: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QuantizedModel:
    """The quantized CNN: integer weights and biases, scales and zero points (a pytree; formats are static).

    Attributes:
      conv1: conv1's quantized kernel and bias (batch norm folded in).
      conv2: conv2's.
      dense: the dense layer's.
      input: the network input's activation parameters (``conv1.input``).
      conv1_output: conv1's output after ReLU (``conv2.input``).
      conv2_output: conv2's output after ReLU (``pool.input``; max-pooling keeps the grid, so also the dense input).
      logits: the dense layer's output.
      weight_format: the weights' grid (narrow, signed).
      activation_format: the activations' grid (int8 or uint8, or fewer bits).
    """

    conv1: LayerQuant
    conv2: LayerQuant
    dense: LayerQuant
    input: ActivationQuant
    conv1_output: ActivationQuant
    conv2_output: ActivationQuant
    logits: ActivationQuant
    weight_format: formats.IntFormat = dataclasses.field(metadata={"static": True})
    activation_format: formats.IntFormat = dataclasses.field(metadata={"static": True})

    def activation(self, point: str) -> ActivationQuant:
        """The parameters of an activation named as in :data:`quantref.correction.ACTIVATION_POINTS`."""
        return {
            "conv1.input": self.input,
            "conv2.input": self.conv1_output,
            "pool.input": self.conv2_output,
            "logits": self.logits,
        }[point]

    def layer_activations(self, name: str) -> tuple[ActivationQuant, ActivationQuant]:
        """The parameters of a layer's input and output activations, for ``name`` in ``conv1``, ``conv2``, ``dense``."""
        return tuple(self.activation(point) for point in LAYER_ACTIVATIONS[name])


def _check_bits(bits: int, name: str) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 2 <= bits <= 8:
        raise ValueError(f"{name} must be an int in 2..8, got {bits!r}")
    return int(bits)


def weight_format(bits: int) -> formats.IntFormat:
    """The symmetric narrow weight grid $[-(2^{b-1}-1),\\ 2^{b-1}-1]$ (TFLite's weight spec: $[-127, 127]$ for 8 bits).

    Args:
      bits: 2..8.

    Returns:
      The format.

    Raises:
      ValueError: if ``bits`` is not an int in 2..8.
    """
    return formats.int_format(_check_bits(bits, "weight_bits"), signed=True, narrow_range=True)


def activation_format(bits: int, signed: bool) -> formats.IntFormat:
    """The activation grid: $[0, 2^b - 1]$ unsigned or $[-2^{b-1}, 2^{b-1}-1]$ signed.

    Args:
      bits: 2..8.
      signed: int grid if True, uint grid otherwise.

    Returns:
      The format.

    Raises:
      ValueError: if ``bits`` is not an int in 2..8.
    """
    return formats.int_format(_check_bits(bits, "activation_bits"), signed=bool(signed))


def _observer(observer: str | ranges.Observer, fmt: formats.IntFormat) -> ranges.Observer:
    if isinstance(observer, ranges.Observer):
        return observer
    if observer not in OBSERVER_NAMES:
        raise ValueError(f"observer must be a ranges.Observer or one of {OBSERVER_NAMES}, got {observer!r}")
    # The histogram-error observers choose a range *for* a grid; the others only look at the data.
    kwargs = {"fmt": fmt} if observer in ("mse", "entropy") else {}
    return ranges.observer_from_name(observer, **kwargs)


_float_forward = jax.jit(correction.folded_forward)


def calibrate_activations(
    params: correction.FoldedCNN,
    calibration_x: np.ndarray,
    *,
    observer: str | ranges.Observer = "min_max",
    fmt: formats.IntFormat = formats.UINT8,
    batch_size: int = 50,
) -> dict[str, tuple[jax.Array, jax.Array]]:
    """Estimates the range of every stored activation on float activations of the calibration split.

    Args:
      params: the folded float network.
      calibration_x: float32 images ``(N, 8, 8, 1)``; use the calibration split only.
      observer: an observer name from :data:`OBSERVER_NAMES` (``mse`` and ``entropy`` are built for ``fmt``), or
        a :class:`quantref.ranges.Observer` (per tensor, ``axis=None``).
      fmt: the activation grid, for the observers that need it.
      batch_size: images per calibration batch.

    Returns:
      ``{point: (min_val, max_val)}`` for each point of :data:`quantref.correction.ACTIVATION_POINTS`.

    Raises:
      ValueError: for an unknown observer name, an empty ``calibration_x`` or a ``batch_size`` below 1.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    calibration_x = np.asarray(calibration_x, np.float32)
    if calibration_x.ndim != 4 or len(calibration_x) == 0:
        raise ValueError(f"calibration_x must be a non-empty (N, 8, 8, 1) array, got shape {calibration_x.shape}")
    obs = _observer(observer, fmt)
    recorded = [
        _float_forward(params, jnp.asarray(calibration_x[start : start + batch_size]))[1]
        for start in range(0, len(calibration_x), batch_size)
    ]
    return {
        point: ranges.calibrate(obs, [activations[point] for activations in recorded], progress=False)
        for point in correction.ACTIVATION_POINTS
    }


def _quantize_kernel(kernel: jax.Array, fmt: formats.IntFormat, per_channel: bool) -> tuple[jax.Array, jax.Array]:
    magnitude = jnp.abs(kernel)
    absmax = magnitude.reshape(-1, kernel.shape[-1]).max(axis=0) if per_channel else magnitude.max()
    scale, _ = affine.scale_zero_point(-absmax, absmax, fmt, symmetric=True)
    codes = affine.quantize(kernel, scale, None, fmt, axis=-1 if per_channel else None)
    return codes.astype(jnp.int8), scale


def _quantize_bias(bias: jax.Array, scale: np.ndarray) -> jax.Array:
    codes = np.round(np.asarray(bias, np.float32) / scale)
    # Clip in float64: in float32, 2**31 - 1 rounds up to 2**31, which the int32 cast would wrap to -2**31 (a dead
    # channel, all-zero weights with a bias, has a tiny bias scale and hits this).
    return jnp.asarray(np.clip(codes.astype(np.float64), -_INT32_MAX, _INT32_MAX).astype(np.int32))


def quantize_model(
    params: correction.FoldedCNN,
    calibration_x: np.ndarray,
    *,
    weight_bits: int = 8,
    activation_bits: int = 8,
    per_channel: bool = True,
    observer: str | ranges.Observer = "min_max",
    activation_signed: bool = False,
    activation_ranges: dict[str, tuple[jax.Array, jax.Array]] | None = None,
) -> QuantizedModel:
    """Quantizes the folded CNN: symmetric narrow-range weights, asymmetric activations, int32 biases.

    $$
    s_{w,c} = \\frac{\\max |W_c|}{2^{b_w-1}-1}, \\qquad
    (s_a, z_a) = \\text{scale\\_zero\\_point}(\\text{observer range}), \\qquad
    b_{q,c} = \\operatorname{rne}\\!\\Big(\\frac{b_c}{f_{32}(s_{in}\\, s_{w,c})}\\Big)
    $$

    where $s_{in}$ is the scale of the layer's input activation (for the dense layer, conv2's post-ReLU scale:
    max-pooling does not change the grid).

    References:
      Jacob et al., arXiv:1712.05877, 2017, sec. 2.4.
      Nagel et al., arXiv:2106.08295, 2021, sec. 4.1.

    Args:
      params: the folded float network (:func:`quantref.correction.fold_batch_norm`).
      calibration_x: calibration images ``(N, 8, 8, 1)``.
      weight_bits: weight bits, 2..8.
      activation_bits: activation bits, 2..8.
      per_channel: one weight scale per output channel if True, else one per tensor.
      observer: the calibration method, see :func:`calibrate_activations`.
      activation_signed: int activations if True, uint (the onnxruntime default, u8s8) if False.
      activation_ranges: ranges already computed by :func:`calibrate_activations` for this ``observer`` and
        activation format (skips calibration); ``None`` calibrates.

    Returns:
      The :class:`QuantizedModel`.

    Raises:
      ValueError: naming the parameter, for bit widths outside 2..8, an unknown observer, or bad ``calibration_x``.
    """
    w_fmt = weight_format(weight_bits)
    a_fmt = activation_format(activation_bits, activation_signed)
    if activation_ranges is None:
        activation_ranges = calibrate_activations(params, calibration_x, observer=observer, fmt=a_fmt)
    acts = {}
    for point, (min_val, max_val) in activation_ranges.items():
        scale, zero_point = affine.scale_zero_point(min_val, max_val, a_fmt)
        acts[point] = ActivationQuant(scale.astype(jnp.float32), zero_point.astype(jnp.int32))
    layers = {}
    for name in _LAYERS:
        codes, scale = _quantize_kernel(getattr(params, f"{name}_kernel"), w_fmt, per_channel)
        input_scale = acts[LAYER_ACTIVATIONS[name][0]].scale
        bias_scale = np.float32(input_scale) * np.asarray(scale, np.float32)  # f32(s_in * s_w)
        layers[name] = LayerQuant(codes, scale, _quantize_bias(getattr(params, f"{name}_bias"), bias_scale))
    return QuantizedModel(
        **layers,
        input=acts["conv1.input"],
        conv1_output=acts["conv2.input"],
        conv2_output=acts["pool.input"],
        logits=acts["logits"],
        weight_format=w_fmt,
        activation_format=a_fmt,
    )


def dequantize_params(qmodel: QuantizedModel) -> correction.FoldedCNN:
    """The float network whose weights and biases are the quantized ones, dequantized ($\\hat W = s_w W_q$).

    Args:
      qmodel: the quantized model.

    Returns:
      Folded float32 parameters on the quantization grids.
    """
    values = {}
    for name in _LAYERS:
        layer = getattr(qmodel, name)
        input_scale = qmodel.layer_activations(name)[0].scale
        values[f"{name}_kernel"] = layer.kernel.astype(jnp.float32) * layer.kernel_scale
        values[f"{name}_bias"] = layer.bias.astype(jnp.float32) * (input_scale * layer.kernel_scale)
    return correction.FoldedCNN(**values)


@jax.jit
def fake_quant_forward(qmodel: QuantizedModel, x: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Simulates the quantized network in float32: dequantized weights, fake-quantized activations.

    $$
    \\hat a = s_a\\big(\\operatorname{clamp}(\\operatorname{rne}(a / s_a) + z_a, q_{min}, q_{max}) - z_a\\big)
    $$

    at every point of :data:`quantref.correction.ACTIVATION_POINTS`; convolutions and the dense product run in
    float32 on the dequantized values. This is what training-time ("simulated") quantization computes; an integer
    runtime differs from it by float rounding in the accumulation and by how it rescales (see
    :mod:`quantref.integer`).

    References:
      Jacob et al., arXiv:1712.05877, 2017, sec. 3.

    Args:
      qmodel: the quantized model.
      x: float32 images ``(N, 8, 8, 1)``.

    Returns:
      ``(logits, activations)`` as :func:`quantref.correction.folded_forward`; logits are on the logits' grid.
    """
    fmt = qmodel.activation_format

    def hook(point: str, value: jax.Array) -> jax.Array:
        quant = qmodel.activation(point)
        return affine.fake_quant(value, quant.scale, quant.zero_point, fmt)

    return correction.folded_forward(dequantize_params(qmodel), x, activation_fn=hook)


def accuracy(logits: jax.Array | np.ndarray, labels: np.ndarray) -> float:
    """The fraction of rows of ``logits`` whose argmax is the label.

    Args:
      logits: ``(N, classes)``.
      labels: ``(N,)`` integer labels.

    Returns:
      Accuracy in [0, 1].
    """
    return float(np.mean(np.argmax(np.asarray(logits), axis=-1) == np.asarray(labels)))


def accuracy_table(
    params: correction.FoldedCNN,
    calibration_x: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    *,
    bit_widths: Sequence[tuple[int, int]] = ((8, 8), (4, 8), (8, 4)),
    observers: Sequence[str] = OBSERVER_NAMES,
    activation_signed: bool = False,
) -> list[dict[str, object]]:
    """Fake-quant test accuracy for every weight/activation bit width × weight granularity × calibration method.

    The first row is the float network. Activation ranges are calibrated once per (observer, activation bits).

    Args:
      params: the folded float network.
      calibration_x: calibration images.
      test_x: test images.
      test_y: test labels.
      bit_widths: ``(weight_bits, activation_bits)`` pairs, e.g. ``(8, 8)`` for W8A8.
      observers: calibration methods, names from :data:`OBSERVER_NAMES`.
      activation_signed: int activations if True, uint otherwise.

    Returns:
      A list of rows ``{"config", "weights", "observer", "accuracy"}``, e.g.
      ``{"config": "W8A8", "weights": "per-channel", "observer": "min_max", "accuracy": 0.99}``; the float row has
      ``config="float32"``.
    """
    test_x = jnp.asarray(test_x, jnp.float32)
    float_logits, _ = _float_forward(params, test_x)
    rows: list[dict[str, object]] = [
        {"config": "float32", "weights": "-", "observer": "-", "accuracy": accuracy(float_logits, test_y)}
    ]
    calibrated: dict[tuple[str, int], dict] = {}
    for weight_bits, activation_bits in bit_widths:
        for per_channel in (True, False):
            for observer in observers:
                key = (observer, activation_bits)
                if key not in calibrated:
                    fmt = activation_format(activation_bits, activation_signed)
                    calibrated[key] = calibrate_activations(params, calibration_x, observer=observer, fmt=fmt)
                qmodel = quantize_model(
                    params,
                    calibration_x,
                    weight_bits=weight_bits,
                    activation_bits=activation_bits,
                    per_channel=per_channel,
                    activation_signed=activation_signed,
                    activation_ranges=calibrated[key],
                )
                logits, _ = fake_quant_forward(qmodel, test_x)
                rows.append(
                    {
                        "config": f"W{weight_bits}A{activation_bits}",
                        "weights": "per-channel" if per_channel else "per-tensor",
                        "observer": observer,
                        "accuracy": accuracy(logits, test_y),
                    }
                )
    return rows
