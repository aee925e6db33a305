"""Integer-only inference: a quantized chain of conv/dense layers run on integer tensors, as a deployed int8 runtime
runs it.

Every stored tensor is an integer code; only the scales are real numbers, and they are folded, before inference,
into one multiplier per output channel. For a layer with input codes $x$ (zero point $z_x$), weight codes $w$
(zero point 0, symmetric) and int32 bias $b$ (scale $s_x s_w$):

$$
\\text{acc}_c = \\sum_k (x_k - z_x)\\, w_{kc} + b_c \\quad \\text{(exact, int32)}, \\qquad
y_c = \\operatorname{clamp}\\big(\\operatorname{round}(M_c\\, \\text{acc}_c) + z_y,\\ \\ell,\\ q_{max}\\big), \\qquad
M_c = \\frac{s_x\\, s_{w,c}}{s_y} .
$$

The clamp's lower end is $\\ell = q_{min}$, except for a layer followed by a ReLU: real 0 is code $z_y$, so there
$\\ell = \\max(q_{min}, z_y)$ and the ReLU costs nothing. Max-pooling commutes with the (monotone) quantizer, so
it runs on the codes, and so does flattening.

The network is read from the quantized model's trace (:class:`quantref.nn.Trace`): any chain of conv (any strides,
zero padding, dilation, groups), dense, ReLU, max-pool and flatten steps, NHWC. Anything else — a residual add,
average pooling, a BatchNorm left unfolded — is refused with an error naming the step and the layer before it.

The products are int8 × int8 → int32 (``lax.conv_general_dilated`` / ``lax.dot_general`` with
``preferred_element_type=jnp.int32``), the fast path of XLA's CPU backend. uint8 activations are shifted to int8
($x - 128$, exact) for the product, and the zero point enters through the cross term

$$
\\sum_k (x_k - z_x) w_{kc} = \\sum_k (x_k - 128)\\, w_{kc} + (128 - z_x) \\sum_{k\\ \\text{valid}} w_{kc},
$$

where the second sum runs over the kernel taps that fall inside the image (zero padding is padding by $z_x$ in
code space, i.e. by real zero).

How to compute $\\operatorname{round}(M\\,\\text{acc})$ — and how to quantize the input and dequantize the
output — is the runtime's choice, and :func:`multipliers` picks one of four, each predicting a runtime bit for bit:

- ``"onnxruntime"`` (QLinearConv / QLinearMatMul on onnxruntime's CPU provider): $M = f_{32}(f_{32}(s_x s_w) / s_y)$
  and $y = \\operatorname{sat}(\\operatorname{rne}(f_{32}(f_{32}(\\text{acc}) \\cdot M)) + z_y)$ — one float32
  multiply, rounded half to even, *then* the zero point added in int32 (never a fused multiply-add). The input is
  quantized as ONNX QuantizeLinear does.
- ``"tflite"`` (LiteRT's reference kernels, ``BUILTIN_REF``): a conv's $M$ in float64, encoded as a 31-bit
  fixed-point significand and a power-of-two exponent (:func:`quantref.runtimes.tflite.quantize_multiplier`),
  applied with :func:`quantref.runtimes.tflite.multiply_by_quantized_multiplier` — a rounding high multiply then a
  rounding right shift, two roundings that can be off from the exact product by up to 0.75 LSB; a dense layer's
  product in float64, rounded half away from zero (:func:`quantref.runtimes.litert.requantize_float64`); the input
  quantized half away from zero.
- ``"tflite-optimized"`` (LiteRT's optimized builtin kernels): ruy's fixed point for both layer kinds
  (:func:`quantref.runtimes.litert.requantize_ruy`: the second rounding's ties go up), and QUANTIZE / DEQUANTIZE
  whose rounding depends on the element's position in the batch (:func:`quantref.runtimes.litert.quantize`).
- ``"tflite-xnnpack"`` (LiteRT's default XNNPACK delegate): onnxruntime's float32 requantization, the input
  multiplied by $f_{32}(1/s_x)$ and rounded half to even.

The 64-bit products and the float64 steps are emulated in 32-bit integers, so ``jax_enable_x64`` is not needed.

None equals the float fake-quant simulation (:func:`quantref.ptq.fake_quant_forward`) bit for bit: there the
accumulation is float32 on dequantized values and the rescale is a division $\\text{acc}\\,s_xs_w / s_y$ rounded
once, so a value within float rounding of a tie lands on the other code; one changed code moves the next layer's
accumulators, and the difference grows by a few LSB at the logits.

References:
  Jacob et al., "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference",
  arXiv:1712.05877, 2017, sec. 2.2–2.4 (the integer-only layer, the fixed-point multiplier, zero-point cross
  terms).
  Nagel et al., "A White Paper on Neural Network Quantization", arXiv:2106.08295, 2021, sec. 2.3.
  gemmlowp, ``fixedpoint/fixedpoint.h`` (SaturatingRoundingDoublingHighMul, RoundingDivideByPOT); TensorFlow Lite,
  ``kernels/internal/quantization_util.cc`` (QuantizeMultiplier) and ``common.h`` (MultiplyByQuantizedMultiplier).
  onnxruntime, ``core/mlas/lib/quantize.cpp`` (MlasRequantizeOutput). LiteRT: see :mod:`quantref.runtimes.litert`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from quantref import affine, formats, nn
from quantref.ptq import QuantizedModel
from quantref.runtimes import litert as qlitert
from quantref.runtimes import onnx as qonnx
from quantref.runtimes import tflite as qtflite

__all__ = [
    "Requantization",
    "REQUANTIZATIONS",
    "FloatMultiplier",
    "FixedPointMultiplier",
    "RuyMultiplier",
    "Float64Multiplier",
    "Multipliers",
    "IntegerOutput",
    "multipliers",
    "requantize",
    "integer_forward",
    "chain",
    "relu_follows",
]

Requantization = Literal["onnxruntime", "tflite", "tflite-optimized", "tflite-xnnpack"]
REQUANTIZATIONS: tuple[str, ...] = ("onnxruntime", "tflite", "tflite-optimized", "tflite-xnnpack")


# --- the network ------------------------------------------------------------------------------------------------


class IntegerOutput(NamedTuple):
    """What :func:`integer_forward` returns.

    Attributes:
      output_q: the network output's integer codes, in the activation format's storage dtype (uint8 or int8).
      scale: float32 scalar, the output's scale.
      zero_point: int32 scalar, the output's zero point.
      output: float32, $(\\text{output\\_q} - z) \\cdot s$ as the runtime dequantizes it (ONNX DequantizeLinear,
        or LiteRT's DEQUANTIZE of the kernel set).
      codes: the integer codes of every stored activation: ``"<path>.input"`` for each layer (after any max-pool
        and flatten before it) and ``"<path>.output"`` for the last layer (after any ReLU, pool or flatten after
        it).
    """

    output_q: jax.Array
    scale: jax.Array
    zero_point: jax.Array
    output: jax.Array
    codes: dict[str, jax.Array]


def integer_forward(qmodel: QuantizedModel, rescale: Multipliers, x: jax.Array | np.ndarray) -> IntegerOutput:
    """Runs a quantized chain of layers on integers only: quantize the input, then int8 products, int32 sums,
    rescales.

    $$
    x_q = \\operatorname{sat}(\\operatorname{round}(x / s_x) + z_x) \\to
    \\big[\\text{conv/dense} \\to \\text{requant}(+\\text{ReLU}) \\to \\text{max-pool/flatten}\\big]^{*} \\to
    (y_q - z)\\, s
    $$

    ``rescale`` picks the runtime to follow (see the module docstring): its requantization of each layer, and its
    quantization of the input and dequantization of the output — ONNX QuantizeLinear/DequantizeLinear for
    ``"onnxruntime"``, LiteRT's QUANTIZE/DEQUANTIZE of the matching kernel set for the ``"tflite*"`` modes
    (:func:`quantref.runtimes.litert.quantize`, :func:`quantref.runtimes.litert.dequantize`). Everything between
    them is integer arithmetic plus, in the float32 modes, one float32 multiply per output. Inputs that already are
    codes (the activation format's storage dtype, as a runtime's int8-I/O model takes them) skip the quantization.
    Jit-compiled.

    References:
      Jacob et al., arXiv:1712.05877, 2017, sec. 2.
      Nagel et al., arXiv:2106.08295, 2021, sec. 2.3.

    Args:
      qmodel: the quantized model from :func:`quantref.ptq.quantize_model` (weights of up to 8 bits), of a model
        that is a chain of conv / dense / ReLU / max-pool / flatten steps with every layer quantized.
      rescale: :func:`multipliers` of ``qmodel``, for the runtime to follow.
      x: float inputs shaped like the model's input ``(N, ...)``, or their integer codes in the activation
        format's storage dtype (int8 or uint8).

    Returns:
      The :class:`IntegerOutput`.

    Raises:
      ValueError: if the model is not such a chain (naming the first step that is not), if ``x`` does not have the
        model's input shape, or ``rescale`` is not a :class:`Multipliers`.
      TypeError: if ``x`` is neither a float array nor codes of the activation format.
    """
    steps = chain(qmodel)
    expected = steps[0].param("input_shape")
    storage = np.dtype(qmodel.activation_format.storage_dtype)
    given_codes = getattr(x, "dtype", None) == storage
    x_array = jnp.asarray(x) if given_codes else nn.check_input(x, "x")
    if tuple(x_array.shape[1:]) != expected:
        raise ValueError(
            f"x must be float inputs of shape (N, {', '.join(map(str, expected))}), got "
            f"{x_array.dtype}{tuple(x_array.shape)}"
        )
    if not isinstance(rescale, Multipliers) or set(rescale.layers) != set(qmodel.layers):
        raise ValueError("rescale must be the Multipliers from integer.multipliers(qmodel) of this qmodel")
    x_array = x_array if given_codes else jnp.asarray(x_array, jnp.float32)
    if x_array.shape[0] == 0:  # an empty batch gives an empty result, shaped as one row would be
        one = _integer_forward(qmodel, rescale, jnp.zeros((1, *expected), x_array.dtype))
        return jax.tree.map(lambda leaf: leaf[:0] if leaf.ndim else leaf, one)
    return _integer_forward(qmodel, rescale, x_array)


def chain(qmodel: QuantizedModel) -> tuple[nn.Step, ...]:
    """The quantized model's steps, checked to be a chain that integer inference and export can run.

    Raises:
      ValueError: naming the first step (and the layer before it) that is not conv / dense / ReLU / max-pool /
        flatten, a branch, or a layer left unquantized.
    """
    if not isinstance(qmodel, QuantizedModel):
        raise TypeError(f"qmodel must be a quantref.ptq.QuantizedModel, got {type(qmodel).__name__}")
    steps = qmodel.network.sequential()
    unquantized = [step.path for step in steps if step.kind in ("conv", "dense") and step.path not in qmodel.layers]
    if unquantized:
        raise ValueError(f"layers {unquantized} are not quantized; integer inference needs every layer quantized")
    if steps[0].kind not in ("conv", "dense"):
        raise ValueError(f"the model must start with a conv or dense layer, not {steps[0].kind}")
    return steps


@jax.jit
def _integer_forward(qmodel: QuantizedModel, rescale: Multipliers, x: jax.Array) -> IntegerOutput:
    fmt = qmodel.activation_format
    storage = fmt.storage_dtype
    steps = qmodel.network.steps
    first = steps[0].path
    codes: dict[str, jax.Array] = {}
    quant = qmodel.activations[f"{first}.input"]
    given_codes = x.dtype == storage
    value = x if given_codes else _QUANTIZE[rescale.requantization](x, quant, fmt).astype(storage)
    for index, step in enumerate(steps):
        if step.kind in ("conv", "dense"):
            codes[f"{step.path}.input"] = value
            layer = qmodel.layers[step.path]
            input_zero_point = qmodel.activations[f"{step.path}.input"].zero_point
            out = qmodel.output_activation(step.path)
            acc = _ACCUMULATORS[step.kind](value, input_zero_point, fmt, layer, step)
            # ReLU: real 0 is the code zero_point, so clamp there; only where a ReLU follows before the next layer.
            lowest = jnp.maximum(fmt.qmin, out.zero_point) if relu_follows(steps, index) else fmt.qmin
            value = requantize(acc, rescale.layers[step.path], out.zero_point, lowest, fmt.qmax).astype(storage)
        else:
            value = _CODE_STEPS[step.kind](value, step, fmt)
    last = [step.path for step in steps if step.path][-1]
    out = qmodel.output_activation(last)
    codes[f"{last}.output"] = value
    output = _DEQUANTIZE[rescale.requantization](value, out)
    return IntegerOutput(value, out.scale, out.zero_point, output, codes)


def relu_follows(steps: tuple[nn.Step, ...], index: int) -> bool:
    """Whether a ReLU comes after layer ``steps[index]`` before the next layer: then it clamps that layer's output
    at the code of real 0 (and an exported graph fuses it into the layer)."""
    for step in steps[index + 1 :]:
        if step.kind in ("conv", "dense"):
            return False
        if step.kind == "relu":
            return True
    return False


def _onnx_dequantize(codes: jax.Array, quant) -> jax.Array:
    return (codes.astype(jnp.int32) - quant.zero_point).astype(jnp.float32) * quant.scale


def _litert_quantize(kernels: str) -> Callable:
    return lambda x, quant, fmt: qlitert.quantize(x, quant.scale, quant.zero_point, fmt.name, kernels)


def _litert_dequantize(kernels: str) -> Callable:
    return lambda codes, quant: qlitert.dequantize(codes, quant.scale, quant.zero_point, kernels)


#: How each mode turns the float input into codes and the output codes back into floats.
_QUANTIZE = {
    "onnxruntime": lambda x, quant, fmt: affine.quantize(x, quant.scale, quant.zero_point, fmt),
    "tflite": _litert_quantize("reference"),
    "tflite-optimized": _litert_quantize("optimized"),
    "tflite-xnnpack": _litert_quantize("xnnpack"),
}
_DEQUANTIZE = {
    "onnxruntime": _onnx_dequantize,
    "tflite": _litert_dequantize("reference"),
    "tflite-optimized": _litert_dequantize("optimized"),
    "tflite-xnnpack": _litert_dequantize("xnnpack"),
}


def _int8_operand(codes: jax.Array, fmt: formats.IntFormat) -> tuple[jax.Array, int]:
    """int8 codes for the product, and the offset to add back: unsigned codes are shifted down by 128 (exact)."""
    if fmt.signed:
        return codes.astype(jnp.int8), 0
    return (codes.astype(jnp.int32) - 128).astype(jnp.int8), 128


def _conv_accumulator(codes, zero_point, fmt, layer, step):
    x, offset = _int8_operand(codes, fmt)

    def conv(operand: jax.Array) -> jax.Array:
        return lax.conv_general_dilated(
            operand,
            layer.kernel,
            step.param("strides"),
            step.param("padding"),
            rhs_dilation=step.param("dilation"),
            feature_group_count=step.param("groups"),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            preferred_element_type=jnp.int32,
        )

    # The sum of the taps that land inside the input, per output position: the zero-point cross term (zero padding
    # is padding by z_x in code space, i.e. by real zero).
    tap_sums = conv(jnp.ones((1,) + x.shape[1:], jnp.int8))
    return conv(x) + (offset - zero_point) * tap_sums + layer.bias


def _dense_accumulator(codes, zero_point, fmt, layer, step):
    x, offset = _int8_operand(codes, fmt)
    acc = lax.dot_general(x, layer.kernel, (((x.ndim - 1,), (0,)), ((), ())), preferred_element_type=jnp.int32)
    return acc + (offset - zero_point) * jnp.sum(layer.kernel, axis=0, dtype=jnp.int32) + layer.bias


def _max_pool(codes, step, fmt):
    window = (1, *step.param("window"), 1)
    strides = (1, *step.param("strides"), 1)
    padding = ((0, 0), *step.param("padding"), (0, 0))
    return lax.reduce_window(codes, jnp.array(fmt.qmin, codes.dtype), lax.max, window, strides, padding)


_ACCUMULATORS = {"conv": _conv_accumulator, "dense": _dense_accumulator}
_CODE_STEPS = {
    "relu": lambda codes, step, fmt: codes,  # applied by the clamp of the layer before
    "max_pool": _max_pool,
    "flatten": lambda codes, step, fmt: codes.reshape(codes.shape[0], math.prod(codes.shape[1:])),
}


# --- requantization ---------------------------------------------------------------------------------------------


class FloatMultiplier(NamedTuple):
    """A float32 rescale (onnxruntime, XNNPACK): ``multiplier`` $f_{32}(f_{32}(s_x s_w)/s_y)$, per channel."""

    multiplier: jax.Array


class FixedPointMultiplier(NamedTuple):
    """gemmlowp's rescale (TFLite's reference CONV_2D): int32 ``quantized_multiplier`` and ``shift`` per channel."""

    quantized_multiplier: jax.Array
    shift: jax.Array


class RuyMultiplier(NamedTuple):
    """ruy's rescale (LiteRT's optimized kernels): the same ``quantized_multiplier`` and ``shift`` as
    :class:`FixedPointMultiplier`, applied with ties up in the final shift."""

    quantized_multiplier: jax.Array
    shift: jax.Array


#: The float64 rescale of TFLite's reference FULLY_CONNECTED: $M_c$ in double, as exact integer words.
Float64Multiplier = qlitert.Float64Multiplier
Multiplier = FloatMultiplier | FixedPointMultiplier | RuyMultiplier | Float64Multiplier


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Multipliers:
    """The rescale of each layer, from :func:`multipliers` (a pytree).

    Attributes:
      layers: ``{path: FloatMultiplier | FixedPointMultiplier | RuyMultiplier | Float64Multiplier}``; the type
        chooses the requantization.
      requantization: one of :data:`REQUANTIZATIONS` (static); it also chooses the input quantization and the
        output dequantization.
    """

    layers: dict[str, Multiplier]
    requantization: str = dataclasses.field(metadata={"static": True})


def multipliers(qmodel: QuantizedModel, requantization: Requantization = "onnxruntime") -> Multipliers:
    """Folds each layer's scales into its output rescale, on the host, in the runtime's precision.

    $$
    \\text{float32: } M_c = f_{32}\\big(f_{32}(s_x\\, s_{w,c}) / s_y\\big), \\qquad
    \\text{fixed point: } (q_{m,c}, e_c) = \\text{quantize\\_multiplier}(M_c), \\qquad
    \\text{float64: } M_c = (\\text{double})\\,s_x\\, s_{w,c} / s_y
    $$

    with, per mode and layer kind:

    | ``requantization`` | conv | dense |
    | --- | --- | --- |
    | ``"onnxruntime"`` | float32 | float32 |
    | ``"tflite"`` | fixed point (gemmlowp) | float64 |
    | ``"tflite-optimized"`` | fixed point (ruy) | fixed point (ruy) |
    | ``"tflite-xnnpack"`` | float32 | float32 |

    Args:
      qmodel: the quantized model (concrete arrays, not traced) of a chain of layers; the ``"tflite*"`` modes need
        8-bit activations (TFLite's kernels are int8, or uint8 with the same arithmetic).
      requantization: one of :data:`REQUANTIZATIONS`.

    Returns:
      The :class:`Multipliers`, per output channel (or scalar for per-tensor weights).

    Raises:
      ValueError: for an unknown ``requantization``, a model that is not a chain of layers, or a ``"tflite*"``
        mode with activations of other than 8 bits.
    """
    if requantization not in REQUANTIZATIONS:
        raise ValueError(f"requantization must be one of {REQUANTIZATIONS}, got {requantization!r}")
    steps = chain(qmodel)
    if requantization.startswith("tflite") and qmodel.activation_format.bits != 8:
        raise ValueError(
            f"requantization {requantization!r} predicts TFLite's 8-bit kernels; the activations are "
            f"{qmodel.activation_format.name}"
        )
    kinds = {step.path: step.kind for step in steps if step.kind in ("conv", "dense")}
    result: dict[str, Multiplier] = {}
    for path, layer in qmodel.layers.items():
        scales = (qmodel.activations[f"{path}.input"].scale, layer.kernel_scale, qmodel.output_activation(path).scale)
        result[path] = _MULTIPLIERS[requantization][kinds[path]](*(np.asarray(scale, np.float32) for scale in scales))
    return Multipliers(result, requantization)


def _float32_multiplier(input_scale, kernel_scale, output_scale) -> FloatMultiplier:
    # numpy float32 arithmetic rounds each operation to float32, in this order, as the C++ does.
    return FloatMultiplier(jnp.asarray(input_scale * kernel_scale / output_scale, jnp.float32))


def _fixed_point(input_scale, kernel_scale, output_scale) -> tuple[jax.Array, jax.Array]:
    real = np.float64(input_scale) * kernel_scale.astype(np.float64) / np.float64(output_scale)
    quantized, shift = qtflite.quantize_multiplier_array(real)
    return jnp.asarray(quantized), jnp.asarray(shift)


_MULTIPLIERS: dict[str, dict[str, Callable[..., Multiplier]]] = {
    "onnxruntime": {"conv": _float32_multiplier, "dense": _float32_multiplier},
    "tflite": {
        "conv": lambda *scales: FixedPointMultiplier(*_fixed_point(*scales)),
        "dense": qlitert.per_channel_float64_multipliers,
    },
    "tflite-optimized": {
        "conv": lambda *scales: RuyMultiplier(*_fixed_point(*scales)),
        "dense": lambda *scales: RuyMultiplier(*_fixed_point(*scales)),
    },
    "tflite-xnnpack": {"conv": _float32_multiplier, "dense": _float32_multiplier},
}


def requantize(
    acc: jax.Array,
    multiplier: Multiplier,
    zero_point: jax.Array,
    qmin: int | jax.Array,
    qmax: int,
) -> jax.Array:
    """Rescales int32 accumulators to output codes, clamped to ``[qmin, qmax]``, as the runtime does.

    $$
    \\begin{aligned}
    \\text{float32: }& y = \\operatorname{clamp}\\big(\\operatorname{rne}(f_{32}(f_{32}(\\text{acc}) \\cdot M))
    + z_y\\big) \\\\
    \\text{fixed point: }& y = \\operatorname{clamp}\\big(\\text{MBQM}(\\text{acc}, q_m, e) + z_y\\big)
    \\ \\text{(gemmlowp or ruy rounding)} \\\\
    \\text{float64: }& y = \\operatorname{clamp}\\big(\\operatorname{round\\_half\\_away}(f_{64}(\\text{acc}
    \\cdot M)) + z_y\\big)
    \\end{aligned}
    $$

    The multiplier's type picks the runtime; the arithmetic is the oracle's own
    (:func:`quantref.runtimes.onnx.requantize`, :func:`quantref.runtimes.tflite.requantize`,
    :func:`quantref.runtimes.litert.requantize_ruy`, :func:`quantref.runtimes.litert.requantize_float64`). Pass
    ``qmin = max(format qmin, zero_point)`` to apply a ReLU.

    Args:
      acc: int32 accumulators, output channels last.
      multiplier: a :class:`FloatMultiplier`, :class:`FixedPointMultiplier`, :class:`RuyMultiplier` or
        :class:`Float64Multiplier`, broadcastable over the last axis.
      zero_point: int32 scalar output zero point.
      qmin: lowest output code (traced values allowed).
      qmax: highest output code.

    Returns:
      int32 codes in ``[qmin, qmax]``.
    """
    return _REQUANTIZE[type(multiplier)](acc, multiplier, zero_point, qmin, qmax)


_REQUANTIZE = {
    FloatMultiplier: lambda acc, m, z, qmin, qmax: qonnx.requantize(acc, m.multiplier, z, qmin, qmax),
    FixedPointMultiplier: lambda acc, m, z, qmin, qmax: qtflite.requantize(
        acc, m.quantized_multiplier, m.shift, z, qmin, qmax
    ),
    RuyMultiplier: lambda acc, m, z, qmin, qmax: qlitert.requantize_ruy(
        acc, m.quantized_multiplier, m.shift, z, qmin, qmax
    ),
    Float64Multiplier: lambda acc, m, z, qmin, qmax: qlitert.requantize_float64(acc, m, z, qmin, qmax),
}
