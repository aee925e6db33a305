"""Integer-only inference: the quantized CNN run on integer tensors, as a deployed int8 runtime runs it.

Every stored tensor is an integer code; only the scales are real numbers, and they are folded, before inference,
into one multiplier per output channel. For a layer with input codes $x$ (zero point $z_x$), weight codes $w$
(zero point 0, symmetric) and int32 bias $b$ (scale $s_x s_w$):

$$
\\text{acc}_c = \\sum_k (x_k - z_x)\\, w_{kc} + b_c \\quad \\text{(exact, int32)}, \\qquad
y_c = \\operatorname{clamp}\\big(\\operatorname{round}(M_c\\, \\text{acc}_c) + z_y,\\ \\ell,\\ q_{max}\\big), \\qquad
M_c = \\frac{s_x\\, s_{w,c}}{s_y} .
$$

ReLU costs nothing: real 0 is code $z_y$, so the clamp's lower end is $\\ell = \\max(q_{min}, z_y)$.
Max-pooling commutes with the (monotone) quantizer, so it runs on the codes.

The products are int8 × int8 → int32 (``lax.conv_general_dilated`` / ``lax.dot_general`` with
``preferred_element_type=jnp.int32``), the fast path of XLA's CPU backend. uint8 activations are shifted to int8
($x - 128$, exact) for the product, and the zero point enters through the cross term

$$
\\sum_k (x_k - z_x) w_{kc} = \\sum_k (x_k - 128)\\, w_{kc} + (128 - z_x) \\sum_{k\\ \\text{valid}} w_{kc},
$$

where the second sum runs over the kernel taps that fall inside the image (zero padding is padding by $z_x$ in
code space, i.e. by real zero).

Two ways to compute $\\operatorname{round}(M\\,\\text{acc})$, chosen by :func:`multipliers`:

- ``"onnxruntime"`` (QLinearConv / QLinearMatMul on onnxruntime's CPU provider): $M = f_{32}(f_{32}(s_x s_w) / s_y)$
  and $y = \\operatorname{sat}(\\operatorname{rne}(f_{32}(f_{32}(\\text{acc}) \\cdot M)) + z_y)$ — one float32
  multiply, rounded half to even, *then* the zero point added in int32 (never a fused multiply-add).
- ``"tflite"`` (TFLite / gemmlowp reference kernels): $M$ in float64, encoded as a 31-bit fixed-point mantissa and
  a power-of-two exponent (:func:`quantref.runtimes.tflite.quantize_multiplier`), applied with
  :func:`quantref.runtimes.tflite.multiply_by_quantized_multiplier` — a rounding high multiply then a rounding right
  shift, two roundings that can be off from the exact product by up to 0.75 LSB. The 64-bit product is emulated in
  32-bit pieces, so ``jax_enable_x64`` is not needed.

Neither equals the float fake-quant simulation (:func:`quantref.ptq.fake_quant_forward`) bit for bit: there the
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
  onnxruntime, ``core/mlas/lib/quantize.cpp`` (MlasRequantizeOutput).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from quantref import affine, correction, formats
from quantref.ptq import LAYER_ACTIVATIONS, QuantizedModel
from quantref.runtimes import tflite

__all__ = [
    "Requantization",
    "REQUANTIZATIONS",
    "FloatMultiplier",
    "FixedPointMultiplier",
    "Multipliers",
    "IntegerOutput",
    "multipliers",
    "requantize",
    "integer_forward",
]

Requantization = Literal["onnxruntime", "tflite"]
REQUANTIZATIONS: tuple[str, ...] = ("onnxruntime", "tflite")


# --- requantization ---------------------------------------------------------------------------------------------


class FloatMultiplier(NamedTuple):
    """onnxruntime's rescale of one layer: float32 ``multiplier`` $f_{32}(f_{32}(s_x s_w)/s_y)$, per channel."""

    multiplier: jax.Array


class FixedPointMultiplier(NamedTuple):
    """TFLite's rescale of one layer: int32 ``quantized_multiplier`` and ``shift`` per channel."""

    quantized_multiplier: jax.Array
    shift: jax.Array


class Multipliers(NamedTuple):
    """The rescale of each layer, from :func:`multipliers`; its type chooses the requantization."""

    conv1: FloatMultiplier | FixedPointMultiplier
    conv2: FloatMultiplier | FixedPointMultiplier
    dense: FloatMultiplier | FixedPointMultiplier


def multipliers(qmodel: QuantizedModel, requantization: Requantization = "onnxruntime") -> Multipliers:
    """Folds each layer's scales into its output rescale, on the host, in the runtime's precision.

    $$
    \\text{onnxruntime: } M_c = f_{32}\\big(f_{32}(s_x\\, s_{w,c}) / s_y\\big), \\qquad
    \\text{tflite: } (q_{m,c}, e_c) = \\text{quantize\\_multiplier}\\big((s_x\\, s_{w,c}) / s_y \\text{ in
    float64}\\big)
    $$

    Args:
      qmodel: the quantized model (concrete arrays, not traced).
      requantization: ``"onnxruntime"`` or ``"tflite"``.

    Returns:
      The :class:`Multipliers`, per output channel (or scalar for per-tensor weights).

    Raises:
      ValueError: for an unknown ``requantization``.
    """
    if requantization not in REQUANTIZATIONS:
        raise ValueError(f"requantization must be one of {REQUANTIZATIONS}, got {requantization!r}")
    result = {}
    for name in LAYER_ACTIVATIONS:
        inp, out = qmodel.layer_activations(name)
        layer = getattr(qmodel, name)
        if requantization == "onnxruntime":
            # numpy float32 arithmetic rounds each operation to float32, in this order, as the C++ does.
            product = np.float32(inp.scale) * np.asarray(layer.kernel_scale, np.float32)
            result[name] = FloatMultiplier(jnp.asarray(product / np.float32(out.scale), jnp.float32))
        else:
            real = np.float64(np.float32(inp.scale)) * np.asarray(layer.kernel_scale, np.float64)
            quantized, shift = tflite.quantize_multiplier_array(real / np.float64(np.float32(out.scale)))
            result[name] = FixedPointMultiplier(jnp.asarray(quantized), jnp.asarray(shift))
    return Multipliers(**result)


def _round_small_to_int32(value: jax.Array) -> jax.Array:
    """Round half to even to int32, for $|v| < 2^{22}$ (here: clamped requantized values).

    Adding $1.5 \\cdot 2^{23}$ moves $v$ to where the float32 spacing is 1, so the addition itself rounds half to even
    and leaves the integer in the low mantissa bits. XLA's CPU backend lowers ``round`` to a scalar call; this is
    one vector add and a bitcast, and profiling showed it was most of the cost of requantization.
    """
    magic = jnp.float32(1.5 * 2**23)
    return lax.bitcast_convert_type(value + magic, jnp.int32) - lax.bitcast_convert_type(magic, jnp.int32)


def requantize(
    acc: jax.Array,
    multiplier: FloatMultiplier | FixedPointMultiplier,
    zero_point: jax.Array,
    qmin: int,
    qmax: int,
) -> jax.Array:
    """Rescales int32 accumulators to output codes, clamped to ``[qmin, qmax]``.

    $$
    \\text{onnxruntime: } y = \\operatorname{clamp}\\big(\\operatorname{rne}(f_{32}(f_{32}(\\text{acc}) \\cdot M)) +
    z_y\\big),
    \\qquad
    \\text{tflite: } y = \\operatorname{clamp}\\big(\\text{MBQM}(\\text{acc}, q_m, e) + z_y\\big)
    $$

    Pass ``qmin = max(format qmin, zero_point)`` to apply a ReLU.

    Args:
      acc: int32 accumulators, output channels last.
      multiplier: a :class:`FloatMultiplier` or :class:`FixedPointMultiplier` broadcastable over the last axis.
      zero_point: int32 scalar output zero point.
      qmin: lowest output code (traced values allowed).
      qmax: highest output code.

    Returns:
      int32 codes in ``[qmin, qmax]``.
    """
    zero_point = jnp.asarray(zero_point, jnp.int32)
    if isinstance(multiplier, FloatMultiplier):
        # The product is rounded to float32 and then to an integer before the zero point is added: no multiply-add
        # for XLA to contract. Clamping before the rounding is the same as after, for integer bounds.
        scaled = acc.astype(jnp.float32) * multiplier.multiplier
        scaled = jnp.clip(scaled, (qmin - zero_point).astype(jnp.float32), (qmax - zero_point).astype(jnp.float32))
        return _round_small_to_int32(scaled) + zero_point
    scaled = tflite.multiply_by_quantized_multiplier(acc, multiplier.quantized_multiplier, multiplier.shift)
    return jnp.clip(scaled + zero_point, qmin, qmax)


# --- the network ------------------------------------------------------------------------------------------------


class IntegerOutput(NamedTuple):
    """What :func:`integer_forward` returns.

    Attributes:
      logits_q: integer logit codes ``(N, 10)`` in the activation format's storage dtype (uint8 or int8).
      scale: float32 scalar, the logits' scale.
      zero_point: int32 scalar, the logits' zero point.
      logits: float32 ``(N, 10)``, $(\\text{logits\\_q} - z) \\cdot s$ (ONNX DequantizeLinear).
      codes: the integer codes of every stored activation, keyed as
        :data:`quantref.correction.ACTIVATION_POINTS` (``"pool.input"`` is before pooling).
    """

    logits_q: jax.Array
    scale: jax.Array
    zero_point: jax.Array
    logits: jax.Array
    codes: dict[str, jax.Array]


def _int8_operand(codes: jax.Array, fmt: formats.IntFormat) -> tuple[jax.Array, int]:
    """int8 codes for the product, and the offset to add back: unsigned codes are shifted down by 128 (exact)."""
    if fmt.signed:
        return codes.astype(jnp.int8), 0
    return (codes.astype(jnp.int32) - 128).astype(jnp.int8), 128


def _conv_accumulator(codes, zero_point, fmt, kernel, bias):
    x, offset = _int8_operand(codes, fmt)
    acc = lax.conv_general_dilated(
        x, kernel, (1, 1), "SAME", dimension_numbers=correction.CONV_DIMENSIONS, preferred_element_type=jnp.int32
    )
    # The sum of the taps that land inside the image, per output position: the zero-point cross term.
    inside = jnp.ones((1,) + x.shape[1:], jnp.int8)
    tap_sums = lax.conv_general_dilated(
        inside, kernel, (1, 1), "SAME", dimension_numbers=correction.CONV_DIMENSIONS, preferred_element_type=jnp.int32
    )
    return acc + (offset - zero_point) * tap_sums + bias


def _dense_accumulator(codes, zero_point, fmt, kernel, bias):
    x, offset = _int8_operand(codes, fmt)
    acc = lax.dot_general(x, kernel, (((1,), (0,)), ((), ())), preferred_element_type=jnp.int32)
    return acc + (offset - zero_point) * jnp.sum(kernel, axis=0, dtype=jnp.int32) + bias


@jax.jit
def _integer_forward(qmodel: QuantizedModel, rescale: Multipliers, x: jax.Array) -> IntegerOutput:
    fmt = qmodel.activation_format
    storage = fmt.storage_dtype
    codes = {}
    x = codes["conv1.input"] = affine.quantize(x, qmodel.input.scale, qmodel.input.zero_point, fmt)
    for name in ("conv1", "conv2"):
        inp, out = qmodel.layer_activations(name)
        point = LAYER_ACTIVATIONS[name][1]
        layer = getattr(qmodel, name)
        acc = _conv_accumulator(x, inp.zero_point, fmt, layer.kernel, layer.bias)
        # ReLU: real 0 is the code zero_point, so clamp there.
        relu_min = jnp.maximum(fmt.qmin, out.zero_point)
        x = codes[point] = requantize(acc, getattr(rescale, name), out.zero_point, relu_min, fmt.qmax).astype(storage)
    x = lax.reduce_window(x, jnp.array(fmt.qmin, storage), lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    x = x.reshape(x.shape[0], -1)
    acc = _dense_accumulator(x, qmodel.conv2_output.zero_point, fmt, qmodel.dense.kernel, qmodel.dense.bias)
    logits_q = requantize(acc, rescale.dense, qmodel.logits.zero_point, fmt.qmin, fmt.qmax).astype(storage)
    codes["logits"] = logits_q
    logits = (logits_q.astype(jnp.int32) - qmodel.logits.zero_point).astype(jnp.float32) * qmodel.logits.scale
    return IntegerOutput(logits_q, qmodel.logits.scale, qmodel.logits.zero_point, logits, codes)


def integer_forward(qmodel: QuantizedModel, rescale: Multipliers, x: jax.Array | np.ndarray) -> IntegerOutput:
    """Runs the quantized CNN on integers only: quantize the input, then int8 products, int32 sums, rescales.

    $$
    x_q = \\operatorname{sat}(\\operatorname{rne}(x / s_x) + z_x) \\to
    \\text{conv1} \\to \\text{requant+ReLU} \\to \\text{conv2} \\to \\text{requant+ReLU} \\to
    \\text{max-pool} \\to \\text{dense} \\to \\text{requant} \\to (\\text{logits}_q - z)\\, s
    $$

    The input quantization is ONNX QuantizeLinear (NaN → $q_{min}$, ±Inf saturate); everything between it and
    the final dequantization is integer arithmetic plus, in ``"onnxruntime"`` mode, one float32 multiply per
    output. Jit-compiled; ``rescale`` picks the requantization (see the module docstring).

    References:
      Jacob et al., arXiv:1712.05877, 2017, sec. 2.
      Nagel et al., arXiv:2106.08295, 2021, sec. 2.3.

    Args:
      qmodel: the quantized model from :func:`quantref.ptq.quantize_model` (weights of up to 8 bits).
      rescale: :func:`multipliers` of ``qmodel``, for the runtime to follow.
      x: float32 images ``(N, 8, 8, 1)``, preprocessed as :func:`quantref.data.preprocess`.

    Returns:
      The :class:`IntegerOutput`.

    Raises:
      ValueError: if ``x`` is not a float array of shape ``(N, 8, 8, 1)``, or ``rescale`` is not a
        :class:`Multipliers`.
    """
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating) or x.ndim != 4 or x.shape[1:] != (8, 8, 1):
        raise ValueError(f"x must be float images of shape (N, 8, 8, 1), got {x.dtype}{x.shape}")
    if not isinstance(rescale, Multipliers):
        raise ValueError(
            f"rescale must be the Multipliers from integer.multipliers(qmodel), got {type(rescale).__name__}"
        )
    return _integer_forward(qmodel, rescale, x.astype(jnp.float32))
