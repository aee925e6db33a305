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
  a power-of-two exponent (:func:`quantize_multiplier`), applied with
  :func:`multiply_by_quantized_multiplier` — a rounding high multiply then a rounding right shift, two roundings
  that can be off from the exact product by up to 0.75 LSB. The 64-bit product is emulated in 32-bit pieces, so
  ``jax_enable_x64`` is not needed.

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

from quantref import affine, formats
from quantref.ptq import QuantizedModel

__all__ = [
    "Requantization",
    "REQUANTIZATIONS",
    "FloatMultiplier",
    "FixedPointMultiplier",
    "Multipliers",
    "IntegerOutput",
    "quantize_multiplier",
    "saturating_rounding_doubling_high_mul",
    "rounding_divide_by_pot",
    "multiply_by_quantized_multiplier",
    "multipliers",
    "requantize",
    "integer_forward",
]

Requantization = Literal["onnxruntime", "tflite"]
REQUANTIZATIONS: tuple[str, ...] = ("onnxruntime", "tflite")
_CONV_DIMENSIONS = ("NHWC", "HWIO", "NHWC")
_INT32_MIN = -(2**31)
_INT32_MAX = 2**31 - 1


# --- TFLite / gemmlowp fixed-point arithmetic -------------------------------------------------------------------


def quantize_multiplier(multiplier: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Encodes real multipliers as TFLite does: a Q0.31 mantissa and a power-of-two exponent.

    $$
    M = q \\cdot 2^{e},\\ q \\in [\\tfrac12, 1) \\ (\\text{frexp}), \\qquad
    q_m = \\operatorname{round\\_away}(q \\cdot 2^{31}), \\qquad M \\approx q_m\\, 2^{e - 31}
    $$

    If rounding gives $q_m = 2^{31}$ it is halved and $e$ incremented; if $e < -31$ the multiplier is flushed to
    $q_m = e = 0$. Computed in float64 on the host (numpy), as TFLite computes it in double.

    References:
      Jacob et al., arXiv:1712.05877, 2017, sec. 2.2.
      TensorFlow Lite, ``kernels/internal/quantization_util.cc``, ``QuantizeMultiplier``.

    Args:
      multiplier: non-negative finite real multiplier(s), any shape.

    Returns:
      ``(quantized_multiplier, shift)``: int32 arrays of ``multiplier``'s shape; ``shift`` is $e$ (positive means
      a left shift).

    Raises:
      ValueError: if a multiplier is negative, NaN or infinite.
    """
    multiplier = np.asarray(multiplier, np.float64)
    if not np.all(np.isfinite(multiplier) & (multiplier >= 0)):
        raise ValueError(f"multiplier must be finite and >= 0, got {multiplier.ravel()[:4].tolist()}")
    mantissa, exponent = np.frexp(multiplier)
    scaled = mantissa * 2.0**31  # exact in float64
    quantized = np.floor(scaled + 0.5)  # round half away from zero (scaled >= 0); exact below 2**52
    overflow = quantized == 2.0**31
    quantized = np.where(overflow, quantized / 2, quantized)
    exponent = np.where(overflow, exponent + 1, exponent)
    flush = exponent < -31
    quantized = np.where(flush, 0, quantized)
    exponent = np.where(flush, 0, exponent)
    return quantized.astype(np.int32), exponent.astype(np.int32)


def saturating_rounding_doubling_high_mul(a: jax.Array, b: jax.Array) -> jax.Array:
    """gemmlowp's ``SaturatingRoundingDoublingHighMul``: the rounded high half of $2ab$, in int32.

    $$
    \\operatorname{SRDHM}(a, b) = \\operatorname{trunc}\\Big(\\frac{ab + \\nu}{2^{31}}\\Big), \\qquad
    \\nu = \\begin{cases} 2^{30} & ab \\ge 0 \\\\ 1 - 2^{30} & ab < 0 \\end{cases}
    $$

    (round to nearest, ties away from zero), saturating to $2^{31}-1$ for $a = b = -2^{31}$, the one overflow.
    The 62-bit magnitude $|a||b|$ is built from 16-bit limbs in uint32, so no 64-bit type is used.

    References:
      gemmlowp, ``fixedpoint/fixedpoint.h``.

    Args:
      a: int32 array.
      b: int32 array, broadcastable with ``a``.

    Returns:
      int32 array of the broadcast shape.
    """
    a = jnp.asarray(a, jnp.int32)
    b = jnp.asarray(b, jnp.int32)
    negative = (a < 0) != (b < 0)
    # |INT32_MIN| = 2**31 fits in uint32; the bit pattern of -a reinterpreted as uint32 is |a| for every a.
    abs_a = jnp.where(a < 0, -a, a).astype(jnp.uint32)
    abs_b = jnp.where(b < 0, -b, b).astype(jnp.uint32)
    a_hi, a_lo = abs_a >> 16, abs_a & 0xFFFF
    b_hi, b_lo = abs_b >> 16, abs_b & 0xFFFF
    low = a_lo * b_lo
    cross_1, cross_2 = a_hi * b_lo, a_lo * b_hi
    cross = cross_1 + cross_2
    cross_carry = (cross < cross_1).astype(jnp.uint32)  # a carry out of bit 32 of the cross sum, worth 2**48
    product_lo = low + (cross << 16)
    product_hi = a_hi * b_hi + (cross >> 16) + (cross_carry << 16) + (product_lo < low).astype(jnp.uint32)
    # Add the nudge to |ab|: 2**30 for a non-negative product; for a negative one, trunc((-P + 1 - 2**30) / 2**31)
    # is -((P + 2**30 - 1) >> 31).
    nudge = jnp.where(negative, jnp.uint32(2**30 - 1), jnp.uint32(2**30))
    sum_lo = product_lo + nudge
    sum_hi = product_hi + (sum_lo < product_lo).astype(jnp.uint32)
    magnitude = (sum_hi << 1) | (sum_lo >> 31)  # (|ab| + nudge) >> 31, at most 2**31
    saturated = magnitude >= jnp.uint32(2**31)  # only a = b = INT32_MIN
    magnitude = jnp.where(saturated, jnp.uint32(_INT32_MAX), magnitude).astype(jnp.int32)
    return jnp.where(negative, -magnitude, magnitude)


def rounding_divide_by_pot(x: jax.Array, exponent: jax.Array | int) -> jax.Array:
    """gemmlowp's ``RoundingDivideByPOT``: $x / 2^e$ rounded to nearest, ties away from zero, in int32.

    $$
    \\operatorname{RDBPOT}(x, e) = (x \\gg e) + \\big[(x \\mathbin{\\&} m) > (m \\gg 1) + [x < 0]\\big],
    \\qquad m = 2^e - 1
    $$

    References:
      gemmlowp, ``fixedpoint/fixedpoint.h``.

    Args:
      x: int32 array.
      exponent: shift $e$ in 0..31, broadcastable with ``x``.

    Returns:
      int32 array.
    """
    x = jnp.asarray(x, jnp.int32)
    exponent = jnp.asarray(exponent, jnp.int32)
    mask = (jnp.left_shift(jnp.uint32(1), exponent.astype(jnp.uint32)) - 1).astype(jnp.int32)
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0).astype(jnp.int32)
    return (x >> exponent) + (remainder > threshold).astype(jnp.int32)


def multiply_by_quantized_multiplier(x: jax.Array, quantized_multiplier: jax.Array, shift: jax.Array) -> jax.Array:
    """TFLite's ``MultiplyByQuantizedMultiplier`` (double rounding): $x \\cdot q_m 2^{shift - 31}$, rounded.

    $$
    \\operatorname{RDBPOT}\\big(\\operatorname{SRDHM}(x \\cdot 2^{\\max(shift, 0)},\\ q_m),\\ \\max(-shift, 0)\\big)
    $$

    Two roundings: the result can differ from $\\operatorname{round}(x\\, q_m 2^{shift-31})$ by one code (it is
    within 0.75 LSB of the exact product). A positive shift multiplies in int32 and wraps on overflow, as the C++
    does (multipliers above 1 are rare: they mean an output scale finer than the input's).

    References:
      Jacob et al., arXiv:1712.05877, 2017, sec. 2.2.
      TensorFlow Lite, ``kernels/internal/common.h``.

    Args:
      x: int32 accumulators.
      quantized_multiplier: int32 Q0.31 mantissas from :func:`quantize_multiplier`, broadcastable with ``x``.
      shift: int32 exponents from :func:`quantize_multiplier`, same shape as ``quantized_multiplier``.

    Returns:
      int32 array.
    """
    x = jnp.asarray(x, jnp.int32)
    shift = jnp.asarray(shift, jnp.int32)
    left = jnp.maximum(shift, 0)
    right = jnp.maximum(-shift, 0)
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(x << left, quantized_multiplier), right)


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
    \\text{tflite: } (q_{m,c}, e_c) = \\text{quantize\\_multiplier}\\big((s_x\\, s_{w,c}) / s_y \\text{ in float64}\\big)
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
    chain = {
        "conv1": (qmodel.input, qmodel.conv1, qmodel.conv1_output),
        "conv2": (qmodel.conv1_output, qmodel.conv2, qmodel.conv2_output),
        "dense": (qmodel.conv2_output, qmodel.dense, qmodel.logits),
    }
    result = {}
    for name, (inp, layer, out) in chain.items():
        if requantization == "onnxruntime":
            # numpy float32 arithmetic rounds each operation to float32, in this order, as the C++ does.
            product = np.float32(inp.scale) * np.asarray(layer.kernel_scale, np.float32)
            result[name] = FloatMultiplier(jnp.asarray(product / np.float32(out.scale), jnp.float32))
        else:
            real = np.float64(np.float32(inp.scale)) * np.asarray(layer.kernel_scale, np.float64)
            quantized, shift = quantize_multiplier(real / np.float64(np.float32(out.scale)))
            result[name] = FixedPointMultiplier(jnp.asarray(quantized), jnp.asarray(shift))
    return Multipliers(**result)


def requantize(
    acc: jax.Array,
    multiplier: FloatMultiplier | FixedPointMultiplier,
    zero_point: jax.Array,
    qmin: int,
    qmax: int,
) -> jax.Array:
    """Rescales int32 accumulators to output codes, clamped to ``[qmin, qmax]``.

    $$
    \\text{onnxruntime: } y = \\operatorname{clamp}\\big(\\operatorname{rne}(f_{32}(f_{32}(\\text{acc}) \\cdot M)) + z_y\\big),
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
    if isinstance(multiplier, FloatMultiplier):
        # The product is rounded to float32 and then to an integer before the zero point is added: no multiply-add
        # for XLA to contract. Clamping before the rounding is the same as after, for integer bounds.
        scaled = acc.astype(jnp.float32) * multiplier.multiplier
        scaled = jnp.clip(scaled, (qmin - zero_point).astype(jnp.float32), (qmax - zero_point).astype(jnp.float32))
        return jnp.round(scaled).astype(jnp.int32) + zero_point
    scaled = multiply_by_quantized_multiplier(acc, multiplier.quantized_multiplier, multiplier.shift)
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
        x, kernel, (1, 1), "SAME", dimension_numbers=_CONV_DIMENSIONS, preferred_element_type=jnp.int32
    )
    # The sum of the taps that land inside the image, per output position: the zero-point cross term.
    inside = jnp.ones((1,) + x.shape[1:], jnp.int8)
    tap_sums = lax.conv_general_dilated(
        inside, kernel, (1, 1), "SAME", dimension_numbers=_CONV_DIMENSIONS, preferred_element_type=jnp.int32
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
    layers = (
        ("conv1", qmodel.input, qmodel.conv1_output, "conv2.input"),
        ("conv2", qmodel.conv1_output, qmodel.conv2_output, "pool.input"),
    )
    for name, inp, out, point in layers:
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
        raise ValueError(f"rescale must be the Multipliers from integer.multipliers(qmodel), got {type(rescale).__name__}")
    return _integer_forward(qmodel, rescale, x.astype(jnp.float32))
