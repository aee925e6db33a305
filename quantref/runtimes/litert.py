"""LiteRT's three kernel sets on x86-64, bit for bit: where they round differently from TFLite's reference kernels.

LiteRT (TFLite's runtime) runs an int8 model with one of three kernel sets, chosen by the interpreter's op resolver.
On paper they compute the same thing — $q = \\operatorname{round}(x/s) + z$ at the input,
$\\operatorname{round}(M_c\\,\\mathrm{acc}) + z$ after each CONV_2D and FULLY_CONNECTED, $(q - z)\\,s$ at the output.
They differ in how they round, measured against ``ai-edge-litert`` 2.3.0 on an x86-64 CPU with AVX-512:

| kernel set (resolver) | QUANTIZE | CONV_2D | FULLY_CONNECTED | DEQUANTIZE |
| --- | --- | --- | --- | --- |
| ``"reference"`` (``BUILTIN_REF``) | $f_{32}(x/s)$, half away | gemmlowp | float64, half away | $f_{32}((q-z)s)$ |
| ``"optimized"`` (``BUILTIN_WITHOUT_DEFAULT_DELEGATES``) | by position | ruy | ruy | by position |
| ``"xnnpack"`` (``AUTO``: XNNPACK) | $x \\cdot f_{32}(1/s)$, half even | float32 | float32 | $f_{32}((q-z)s)$ |

The requantizations, with $M_c = s_{in} s_{w,c} / s_{out}$:

- **gemmlowp** (:func:`quantref.runtimes.tflite.requantize`): $M_c$ as a Q0.31 significand $q_m$ and a shift $e$,
  a rounding doubling high multiply (ties up), then a rounding right shift by $r = \\max(-e, 0)$ with ties *away
  from zero*.
- **ruy** (:func:`requantize_ruy`): the same two steps, but the right shift rounds ties *up*:
  $y = \\lfloor (h + 2^{r-1}) / 2^r \\rfloor$. A negative accumulator whose high product ends in exactly
  $10\\ldots0$ gets one more than gemmlowp's (about one negative accumulator in $2^r$).
- **float64** (:func:`requantize_float64`, TFLite's reference FULLY_CONNECTED):
  $y = \\operatorname{round\\_half\\_away}(f_{64}(\\mathrm{acc} \\cdot M_c))$ with $M_c$ in double.
- **float32** (XNNPACK): onnxruntime's formula, $M_c = f_{32}(f_{32}(s_{in} s_{w,c}) / s_{out})$,
  $y = \\operatorname{rne}(f_{32}(f_{32}(\\mathrm{acc}) \\cdot M_c))$ — apply it with
  :func:`quantref.runtimes.onnx.requantize`.

Each ends with $\\operatorname{clamp}(y + z_{out}, \\ell, q_{max})$, the zero point added in wrapping int32.

The optimized QUANTIZE and DEQUANTIZE are vector code (NEON intrinsics, run on x86 through NEON_2_SSE) over blocks of
8 elements of the *flattened* tensor, batch included, with a scalar loop for the last ``size % 8`` elements; the two
round differently (:func:`quantize`, :func:`dequantize`), so the same value can give a different code at a
different position, or in a batch of a different size. :func:`vector_lanes` says which elements are which.

How it is computed here, without ``jax_enable_x64``: the two float64 steps (the reference FULLY_CONNECTED's product
and the optimized QUANTIZE's scalar division) are **exact integer formulations**, not host callbacks — the double
multiplier is carried as its 53-bit significand in two 32-bit words and an exponent, the 84-bit product
$|\\mathrm{acc}| \\cdot$ significand is formed in three 32-bit words and rounded to 53 bits as the FPU rounds it;
the quotient $x/s$ is rounded from a float32 candidate corrected by an exact 64-bit comparison of the integer
significands. Products that a backend could fuse into a multiply-add are split so that fusing changes nothing. So
everything here is ``jax.jit``-compatible and exact on any backend. (Subnormal float32 values are flushed to zero
by XLA on CPU, as :mod:`quantref.runtimes.tflite` notes; scales must be normal.)

Two caveats about the measurement. ruy picks its kernel by CPU: the rounding above is that of the AVX-512 kernel
bundled with ai-edge-litert 2.3.0 — current upstream ruy rounds once, $\\lfloor (x q_m + 2^{30+r}) /
2^{31+r} \\rfloor$, so another CPU or LiteRT version may differ. And the x86 conversions give INT32_MIN for NaN and
out-of-range values (``cvttss2si``/``cvtps2dq``); an ARM build saturates instead.

References:
  TensorFlow Lite / LiteRT ``tflite/kernels/internal/reference/integer_ops/fully_connected.h``,
  ``reference/quantize.h``, ``optimized/optimized_ops.h`` (``AffineQuantize``, ``Dequantize``).
  ruy ``ruy/kernel_avx512.cc``; XNNPACK ``src/f32-qs8-vcvt``, ``src/qs8-qc8w-gemm`` (fp32 requantization).
  Jacob et al., "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference",
  arXiv:1712.05877, 2017.
"""

from __future__ import annotations

import functools
import math
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from quantref import _validate, formats
from quantref._validate import INT32_MIN, is_concrete
from quantref.affine import true_divide as _divide  # XLA rewrites x / constant as x * (1 / constant)
from quantref.runtimes import _arith
from quantref.runtimes import tflite as qtflite
from quantref.runtimes._arith import float_to_int32

__all__ = [
    "KernelSet",
    "KERNEL_SETS",
    "VECTOR_BLOCK",
    "ruy_multiply",
    "requantize_ruy",
    "Float64Multiplier",
    "encode_float64",
    "per_channel_float64_multipliers",
    "requantize_float64",
    "vector_lanes",
    "quantize",
    "dequantize",
]

KernelSet = Literal["reference", "optimized", "xnnpack"]
KERNEL_SETS: tuple[str, ...] = ("reference", "optimized", "xnnpack")
#: The optimized QUANTIZE/DEQUANTIZE's vector width: blocks of this many elements of the flattened tensor.
VECTOR_BLOCK = 8
_DTYPES: dict[str, formats.IntFormat] = {"int8": formats.INT8, "uint8": formats.UINT8}


# ---------------------------------------------------------------------------------------------------------------
# ruy: the optimized CONV_2D and FULLY_CONNECTED


def ruy_multiply(
    x: jax.Array | np.ndarray, quantized_multiplier: jax.Array | np.ndarray | int, shift: jax.Array | np.ndarray | int
) -> jax.Array:
    """$x \\cdot M$ in fixed point as LiteRT's optimized kernels (ruy) compute it: ties up in both roundings.

    $$
    h = \\Big\\lfloor \\frac{(x \\cdot 2^{\\ell})\\, q_m + 2^{30}}{2^{31}} \\Big\\rfloor, \\qquad
    y = \\Big\\lfloor \\frac{h + 2^{r-1}}{2^{r}} \\Big\\rfloor \\ (r > 0), \\qquad
    \\ell = \\max(e, 0),\\ r = \\max(-e, 0),
    $$

    the left shift wrapping in int32. The first step is gemmlowp's ``SaturatingRoundingDoublingHighMul``; the second
    differs from its ``RoundingDivideByPOT`` only at a negative tie: $-3/2 \\to -1$ here, $-2$ there.

    References:
      ruy ``ruy/kernel_avx512.cc`` (as bundled with ai-edge-litert 2.3.0; measured, see the module docstring);
      gemmlowp ``fixedpoint/fixedpoint.h``.

    Args:
      x: int32 array (accumulators).
      quantized_multiplier: int32 (array) from :func:`quantref.runtimes.tflite.quantize_multiplier`, broadcastable.
      shift: int (array) in ``-31..30``, broadcastable.

    Returns:
      int32 array of the broadcast shape.

    Raises:
      TypeError: for non-integer inputs.
      ValueError: for values outside int32, a shift outside ``-31..30``, or shapes that do not broadcast.
    """
    x = _validate.int_array(x, "x")
    quantized_multiplier = _validate.int_array(quantized_multiplier, "quantized_multiplier")
    shift = _validate.int_array(shift, "shift")
    _validate.check_multiplier_shift(quantized_multiplier, shift, False)
    _validate.check_broadcast(x=x, quantized_multiplier=quantized_multiplier, shift=shift)
    return _ruy_multiply(x, quantized_multiplier, shift)


@jax.jit
def _ruy_multiply(x, quantized_multiplier, shift):
    x, quantized_multiplier, shift = jnp.broadcast_arrays(x, quantized_multiplier, shift)
    left = jnp.maximum(shift, 0).astype(jnp.uint32)
    right = jnp.maximum(-shift, 0)
    scaled = jax.lax.bitcast_convert_type(jax.lax.bitcast_convert_type(x, jnp.uint32) << left, jnp.int32)
    high = qtflite.saturating_rounding_doubling_high_mul(scaled, quantized_multiplier)
    # floor((h + 2^(r-1)) / 2^r) without the int32 overflow of the sum: the remainder decides the carry.
    mask = (jnp.uint32(1) << right.astype(jnp.uint32)) - jnp.uint32(1)
    remainder = jax.lax.bitcast_convert_type(high, jnp.uint32) & mask
    half = jnp.uint32(1) << jnp.maximum(right - 1, 0).astype(jnp.uint32)
    return (high >> right) + ((right > 0) & (remainder >= half)).astype(jnp.int32)


def requantize_ruy(
    acc: jax.Array | np.ndarray,
    quantized_multiplier: jax.Array | np.ndarray | int,
    shift: jax.Array | np.ndarray | int,
    zero_point: jax.Array | np.ndarray | int,
    qmin: jax.Array | int,
    qmax: jax.Array | int,
) -> jax.Array:
    """The output stage of LiteRT's optimized CONV_2D and FULLY_CONNECTED (ruy).

    $$
    y = \\operatorname{clamp}\\big(\\operatorname{ruy\\_multiply}(\\mathrm{acc}, q_m, e) + z,\\ q_{min},\\ q_{max}\\big)
    $$

    with :func:`ruy_multiply` and the zero point added in wrapping int32. Get ``quantized_multiplier`` and ``shift``
    from :func:`quantref.runtimes.tflite.per_channel_multipliers` (the same encoding as the reference kernels).
    Jit-compatible; traced values are not checked.

    Args:
      acc: int32 accumulators (bias included), output channels last.
      quantized_multiplier: int32, broadcastable against ``acc`` (one per output channel).
      shift: int in ``-31..30``, broadcastable against ``acc``.
      zero_point: the output zero point.
      qmin: lowest output code (``max(qmin, z)`` for a fused ReLU).
      qmax: highest output code.

    Returns:
      int32 codes in ``[qmin, qmax]``.

    Raises:
      TypeError: for non-integer arrays.
      ValueError: (concrete values only) values outside int32, a shift outside ``-31..30``, ``qmin > qmax``, or
        shapes that do not broadcast.
    """
    acc = _validate.int_array(acc, "acc")
    quantized_multiplier = _validate.int_array(quantized_multiplier, "quantized_multiplier")
    shift = _validate.int_array(shift, "shift")
    zero_point, qmin, qmax = _output_bounds(zero_point, qmin, qmax)
    _validate.check_multiplier_shift(quantized_multiplier, shift, False)
    _validate.check_broadcast(acc=acc, quantized_multiplier=quantized_multiplier, shift=shift, zero_point=zero_point)
    return jnp.clip(_ruy_multiply(acc, quantized_multiplier, shift) + zero_point, qmin, qmax)


# ---------------------------------------------------------------------------------------------------------------
# float64: the reference FULLY_CONNECTED


class Float64Multiplier(NamedTuple):
    """A positive IEEE double $M = (h \\cdot 2^{32} + l) \\cdot 2^{e}$, as JAX carries it without float64.

    Attributes:
      high: int32, the significand's top 21 bits ($2^{20} \\le h < 2^{21}$).
      low: uint32, its low 32 bits.
      exponent: int32 $e$, so that the 53-bit significand $h 2^{32} + l$ times $2^e$ is $M$ exactly.
    """

    high: jax.Array
    low: jax.Array
    exponent: jax.Array


def encode_float64(real_multipliers: np.ndarray | list[float] | float) -> Float64Multiplier:
    """Split positive float64 multipliers into the exact integer words of a :class:`Float64Multiplier`.

    $$
    M = f \\cdot 2^{k},\\ \\tfrac12 \\le f < 1 \\ (\\operatorname{frexp}); \\qquad
    \\text{significand} = f \\cdot 2^{53} \\in [2^{52}, 2^{53}),\\quad e = k - 53.
    $$

    Args:
      real_multipliers: positive, finite, normal float64 values (any shape).

    Returns:
      The :class:`Float64Multiplier`, each field shaped like the input.

    Raises:
      TypeError: if the values are not real numbers.
      ValueError: if a value is not positive, finite and normal.
    """
    values = _validate.host_float64(real_multipliers, "real_multipliers")
    if not np.all(np.isfinite(values) & (values >= np.finfo(np.float64).tiny)):
        raise ValueError(
            f"real_multipliers must be positive, finite and normal doubles, got {values.ravel()[:3].tolist()}"
        )
    fraction, exponent = np.frexp(values)
    significand = (fraction * 2.0**53).astype(np.uint64)  # exact: a power-of-two scaling of a double
    return Float64Multiplier(
        jnp.asarray((significand >> np.uint64(32)).astype(np.int32)),
        jnp.asarray((significand & np.uint64(0xFFFFFFFF)).astype(np.uint32)),
        jnp.asarray((exponent - 53).astype(np.int32)),
    )


def per_channel_float64_multipliers(
    input_scale: float, filter_scales: np.ndarray | list[float] | float, output_scale: float
) -> Float64Multiplier:
    """TFLite's reference FULLY_CONNECTED multiplier, per output channel, in double.

    $$
    M_c = \\frac{(\\text{double})\\,s_{in} \\cdot (\\text{double})\\,s_{w,c}}{(\\text{double})\\,s_{out}}
    $$

    evaluated left to right on the float32 scales (the product is exact; the division rounds once), then
    :func:`encode_float64`.

    References:
      LiteRT ``tflite/kernels/internal/reference/integer_ops/fully_connected.h`` (``FullyConnectedPerChannel`` and
      ``FullyConnected`` with float scales).

    Args:
      input_scale: the input's scale (rounded to float32).
      filter_scales: the weights' scales, scalar or one per output channel (rounded to float32).
      output_scale: the output's scale (rounded to float32).

    Returns:
      The :class:`Float64Multiplier`, shaped like ``filter_scales``.

    Raises:
      TypeError: if a scale is not real numbers.
      ValueError: if a scale is not positive and finite in float32.
    """
    names = ("input_scale", "filter_scales", "output_scale")
    scales = [
        _validate.host_float64(value, name).astype(np.float32)
        for value, name in zip((input_scale, filter_scales, output_scale), names)
    ]
    for name, value in zip(names, scales):
        if not np.all(np.isfinite(value) & (value > 0)):
            raise ValueError(f"{name} must be positive and finite in float32, got {np.ravel(value)[:3].tolist()}")
        _validate.check_normal_float32(value, name)
    if scales[0].ndim or scales[2].ndim:
        raise ValueError("input_scale and output_scale must be scalars")
    real = scales[0].astype(np.float64) * scales[1].astype(np.float64) / scales[2].astype(np.float64)
    return encode_float64(real)


def requantize_float64(
    acc: jax.Array | np.ndarray,
    multiplier: Float64Multiplier,
    zero_point: jax.Array | np.ndarray | int,
    qmin: jax.Array | int,
    qmax: jax.Array | int,
) -> jax.Array:
    """TFLite's reference FULLY_CONNECTED output stage: one product in double, rounded half away from zero.

    $$
    y = \\operatorname{clamp}\\big(\\operatorname{int32}(\\operatorname{round}(f_{64}(\\mathrm{acc} \\cdot M)))
    + z,\\ q_{min},\\ q_{max}\\big)
    $$

    ``round`` is C's (half away from zero); a result outside int32 becomes INT32_MIN (x86's ``cvttsd2si``) before
    the wrapping int32 add of the zero point. Computed exactly in 32-bit integers: the product of $|\\mathrm{acc}|$
    and the 53-bit significand is formed in three words, rounded to 53 bits half to even (the double product),
    then rounded half up at the binary point. No float64 and no host callback, so it is jit-compatible on any
    backend; traced values are not checked.

    Args:
      acc: int32 accumulators (bias included), output channels last.
      multiplier: a :class:`Float64Multiplier` broadcastable against ``acc`` (from
        :func:`per_channel_float64_multipliers`).
      zero_point: the output zero point.
      qmin: lowest output code.
      qmax: highest output code.

    Returns:
      int32 codes in ``[qmin, qmax]``.

    Raises:
      TypeError: for a ``multiplier`` that is not a :class:`Float64Multiplier`, or non-integer arrays.
      ValueError: (concrete values only) values outside int32, ``qmin > qmax``, or shapes that do not broadcast.
    """
    acc = _validate.int_array(acc, "acc")
    if not isinstance(multiplier, Float64Multiplier):
        raise TypeError(f"multiplier must be a Float64Multiplier (encode_float64), got {type(multiplier).__name__}")
    zero_point, qmin, qmax = _output_bounds(zero_point, qmin, qmax)
    _validate.check_broadcast(acc=acc, multiplier=multiplier.high, zero_point=zero_point)
    return jnp.clip(_float64_product_rounded(acc, *multiplier) + zero_point, qmin, qmax)


@jax.jit
def _float64_product_rounded(acc, high, low, exponent):
    """``(int32)round(f64(acc · M))`` with x86's INT32_MIN for results outside int32, in 32-bit integers."""
    acc, high, low, exponent = jnp.broadcast_arrays(acc, high, low, exponent)
    magnitude = _arith.magnitude(acc)  # |acc| < 2^31 + 1, as uint32
    # P = |acc| · (high · 2^32 + low) < 2^84, in three words (w2, w1, w0).
    low_hi, w0 = _arith.mul_u32(magnitude, low)
    high_hi, high_lo = _arith.mul_u32(magnitude, high.astype(jnp.uint32))
    w1 = low_hi + high_lo
    w2 = high_hi + (w1 < low_hi).astype(jnp.uint32)
    # The double product keeps the top 53 bits of P: drop k = bit_length(P) - 53 <= 31 bits, rounding half to even.
    length = jnp.where(
        w2 > 0, 96 - jax.lax.clz(w2), jnp.where(w1 > 0, 64 - jax.lax.clz(w1), 32 - jax.lax.clz(w0))
    ).astype(jnp.int32)
    drop = jnp.maximum(length - 53, 0)
    kept_hi, kept_lo = _shift_right_96(w2, w1, w0, drop)
    dropped = w0 & ((jnp.uint32(1) << drop.astype(jnp.uint32)) - jnp.uint32(1))
    half = jnp.where(drop > 0, jnp.uint32(1) << jnp.maximum(drop - 1, 0).astype(jnp.uint32), jnp.uint32(0))
    up = (drop > 0) & ((dropped > half) | ((dropped == half) & ((kept_lo & 1) == 1)))
    kept_hi, kept_lo = _arith.add_u64(kept_hi, kept_lo, jnp.uint32(0), up.astype(jnp.uint32))
    # |acc · M| ≈ kept · 2^(drop + exponent); round half up at the binary point (C's round on the magnitude).
    power = drop + exponent
    right = jnp.clip(-power, 1, 56)  # kept < 2^54: a right shift past 55 leaves 0
    half_hi, half_lo = _shift_left_64(jnp.uint32(0), jnp.uint32(1), right - 1)
    sum_hi, sum_lo = _arith.add_u64(kept_hi, kept_lo, half_hi, half_lo)
    rounded_hi, rounded_lo = _shift_right_64(sum_hi, sum_lo, right)
    # power >= 0 means |acc · M| >= 2^52: far outside int32, as is anything from 2^31 on.
    outside = (power >= 0) | (rounded_hi > 0) | (rounded_lo >= jnp.uint32(2**31))
    value = jax.lax.bitcast_convert_type(rounded_lo, jnp.int32)
    result = jnp.where(acc < 0, -value, value)
    return jnp.where(acc == 0, 0, jnp.where(outside, jnp.int32(INT32_MIN), result))


def _shift_right_64(hi, lo, amount):
    """``(hi, lo) >> amount`` (logical, uint32 words) for ``0 <= amount < 64``."""
    small = amount < 32
    a = jnp.clip(amount, 0, 31).astype(jnp.uint32)
    carry = jnp.where(a == 0, jnp.uint32(0), hi << (jnp.uint32(32) - jnp.maximum(a, 1)))
    b = jnp.clip(amount - 32, 0, 31).astype(jnp.uint32)
    return jnp.where(small, hi >> a, jnp.uint32(0)), jnp.where(small, (lo >> a) | carry, hi >> b)


def _shift_left_64(hi, lo, amount):
    """``(hi, lo) << amount`` (uint32 words) for ``0 <= amount < 64``."""
    small = amount < 32
    a = jnp.clip(amount, 0, 31).astype(jnp.uint32)
    carry = jnp.where(a == 0, jnp.uint32(0), lo >> (jnp.uint32(32) - jnp.maximum(a, 1)))
    b = jnp.clip(amount - 32, 0, 31).astype(jnp.uint32)
    return jnp.where(small, (hi << a) | carry, lo << b), jnp.where(small, lo << a, jnp.uint32(0))


def _shift_right_96(w2, w1, w0, amount):
    """The low 64 bits of the 96-bit ``(w2, w1, w0) >> amount`` for ``0 <= amount < 32``, as ``(hi, lo)``."""
    a = amount.astype(jnp.uint32)
    back = jnp.uint32(32) - jnp.maximum(a, jnp.uint32(1))
    carry1 = jnp.where(a == 0, jnp.uint32(0), w1 << back)
    carry2 = jnp.where(a == 0, jnp.uint32(0), w2 << back)
    return (w1 >> a) | carry2, (w0 >> a) | carry1


# ---------------------------------------------------------------------------------------------------------------
# QUANTIZE and DEQUANTIZE


def vector_lanes(shape: tuple[int, ...]) -> np.ndarray:
    """Which elements LiteRT's optimized QUANTIZE/DEQUANTIZE handle in 8-wide vector blocks (the rest: scalar).

    The kernels walk the flattened tensor, batch included: elements ``0 .. size - size % 8 - 1`` go through the
    vector loop, the last ``size % 8`` through the scalar one.

    Args:
      shape: the tensor's shape.

    Returns:
      A boolean numpy array of that shape.
    """
    size = math.prod(shape)
    return (np.arange(size) < size - size % VECTOR_BLOCK).reshape(shape)


def quantize(
    x: jax.Array | np.ndarray,
    scale: jax.Array | float,
    zero_point: jax.Array | int,
    dtype: Literal["int8", "uint8"] = "int8",
    kernels: KernelSet = "reference",
) -> jax.Array:
    """LiteRT's QUANTIZE (float32 → int8) as each kernel set computes it on x86-64.

    $$
    \\begin{aligned}
    \\text{reference:}\\ & \\operatorname{round\\_half\\_away}(f_{32}(x / s)) + z \\\\
    \\text{optimized, vector blocks:}\\ & \\operatorname{rne}(f_{32}(x \\cdot f_{32}(1/s))) + z \\qquad
    \\text{scalar tail:}\\ \\operatorname{round\\_half\\_away}(f_{64}(x / s)) + z \\\\
    \\text{xnnpack:}\\ & \\operatorname{rne}(\\min(f_{32}(x \\cdot f_{32}(1/s)),\\ q_{max} - z)) + z
    \\end{aligned}
    $$

    saturated to the output type. The two TFLite kernels convert with x86's ``cvttss2si``/``cvtps2dq`` (NaN and
    values outside int32 give INT32_MIN) and add the zero point in wrapping int32, so $+10^{30}$ becomes the lowest
    code for $z \\ge 0$ and the highest for $z < 0$; XNNPACK clamps before converting and saturates from there
    on (NaN gives the highest code). Which elements are the optimized kernel's scalar tail depends on the
    tensor's size (:func:`vector_lanes`). The scalar tail's double division is computed exactly (a float32
    candidate, corrected by comparing $2|x|$ with $(2n \\pm 1)\\,s$ on the integer significands): a float32 quotient
    rounds differently from a double one when it lands within an ulp of a half-integer.

    Jit-compatible: ``scale`` and ``zero_point`` may be traced (they are then not checked).

    References:
      LiteRT ``tflite/kernels/internal/reference/quantize.h`` (``AffineQuantize``),
      ``optimized/optimized_ops.h`` (``AffineQuantize``); XNNPACK ``src/f32-qs8-vcvt``.

    Args:
      x: float array (computed in float32).
      scale: positive normal float32 scale (scalar).
      zero_point: zero point in the output type's range (scalar).
      dtype: ``"int8"`` (TFLite's scheme) or ``"uint8"`` (the same arithmetic, saturated to [0, 255]).
      kernels: one of :data:`KERNEL_SETS`.

    Returns:
      Codes shaped like ``x``, of ``dtype``.

    Raises:
      TypeError: for a non-float ``x`` or non-numeric parameters.
      ValueError: for an unknown ``dtype`` or ``kernels``, a scale that is not positive, finite and normal, a zero
        point outside the type's range, or a non-scalar parameter (concrete values only).
    """
    fmt = _DTYPES[_validate.check_choice(dtype, "dtype", tuple(_DTYPES))]
    kernels = _validate.check_choice(kernels, "kernels", KERNEL_SETS)
    x = _validate.float_array(x, "x").astype(jnp.float32)
    scale, zero_point = _quantization(scale, zero_point, fmt)
    return _quantize(x, scale, zero_point, fmt=fmt, kernels=kernels)


def dequantize(
    q: jax.Array | np.ndarray, scale: jax.Array | float, zero_point: jax.Array | int, kernels: KernelSet = "reference"
) -> jax.Array:
    """LiteRT's DEQUANTIZE (int8 → float32) as each kernel set computes it.

    $$
    \\text{reference, xnnpack, optimized scalar tail: } f_{32}\\big((q - z)\\, s\\big), \\qquad
    \\text{optimized vector blocks: } f_{32}\\big(f_{32}(q\\, s) - f_{32}(z\\, s)\\big).
    $$

    The first rounds an exact product once; the optimized kernel's vector blocks (``vmlaq_f32`` through NEON_2_SSE:
    a multiply, then an add) round twice, so their result can be one float32 ulp away (e.g. $q = -9$, $z = 5$,
    $s = 0.1$ gives $-1.4000001$ instead of $-1.4$). Jit-compatible: ``scale`` and ``zero_point`` may be traced.

    References:
      LiteRT ``tflite/kernels/internal/reference/dequantize.h``, ``optimized/optimized_ops.h`` (``Dequantize``).

    Args:
      q: int8 or uint8 codes.
      scale: positive normal float32 scale (scalar).
      zero_point: zero point in the codes' range (scalar).
      kernels: one of :data:`KERNEL_SETS`.

    Returns:
      float32 array shaped like ``q``.

    Raises:
      TypeError: for codes that are not int8/uint8 or non-numeric parameters.
      ValueError: for unknown ``kernels``, a scale that is not positive, finite and normal, or a zero point outside
        the codes' range (concrete values only).
    """
    kernels = _validate.check_choice(kernels, "kernels", KERNEL_SETS)
    q = _validate.typed_array(q, "q", [np.int8, np.uint8])
    fmt = formats.INT8 if q.dtype == jnp.int8 else formats.UINT8
    scale, zero_point = _quantization(scale, zero_point, fmt)
    return _dequantize(q, scale, zero_point, kernels=kernels)


@functools.partial(jax.jit, static_argnames=("fmt", "kernels"))
def _quantize(x, scale, zero_point, *, fmt, kernels):
    return _QUANTIZERS[kernels](x, scale, zero_point, fmt).astype(fmt.storage_dtype)


@functools.partial(jax.jit, static_argnames=("kernels",))
def _dequantize(q, scale, zero_point, *, kernels):
    once = _dequantize_once(q, scale, zero_point)
    if kernels != "optimized":
        return once
    return jnp.where(vector_lanes(q.shape), _dequantize_twice(q, scale, zero_point), once)


def _quantize_reference(x, scale, zero_point, fmt):
    rounded = _round_half_away(_divide(x, scale))
    return jnp.clip(float_to_int32(rounded) + zero_point, fmt.qmin, fmt.qmax)


def _quantize_optimized(x, scale, zero_point, fmt):
    vector = float_to_int32(jnp.round(x * _divide(jnp.float32(1), scale)))  # rne(f32(x · f32(1/s)))
    scalar = _round_half_away_quotient(x, scale)
    codes = jnp.where(vector_lanes(x.shape), vector, scalar)
    return jnp.clip(codes + zero_point, fmt.qmin, fmt.qmax)  # the int32 add wraps, as the C++'s does


def _quantize_xnnpack(x, scale, zero_point, fmt):
    scaled = jnp.round(x * _divide(jnp.float32(1), scale))
    # min(v, qmax - z) keeps the bound for NaN (minps returns its second operand), then saturating packs.
    scaled = jnp.where(jnp.isnan(scaled), jnp.float32(2**15 - 1), jnp.clip(scaled, -(2.0**15), 2.0**15 - 1))
    return jnp.clip(scaled.astype(jnp.int32) + zero_point, fmt.qmin, fmt.qmax)


_QUANTIZERS = {"reference": _quantize_reference, "optimized": _quantize_optimized, "xnnpack": _quantize_xnnpack}


def _dequantize_once(q, scale, zero_point):
    # (q - z) is exact in float32 (|q - z| < 2^9): one rounding, of the exact product.
    return (q.astype(jnp.int32) - zero_point).astype(jnp.float32) * scale


def _dequantize_twice(q, scale, zero_point):
    # f32(q · s) and f32(z · s) each as the sum of two exact products (s split into halves of 12 significant bits;
    # |q|, |z| < 2^8), so that a backend that fuses a multiply into an add rounds the same; then their difference.
    high = jax.lax.bitcast_convert_type(
        jax.lax.bitcast_convert_type(scale, jnp.uint32) & jnp.uint32(0xFFFFF000), jnp.float32
    )
    low = scale - high
    codes, offset = q.astype(jnp.float32), zero_point.astype(jnp.float32)
    return (codes * high + codes * low) - (offset * high + offset * low)


def _round_half_away(value):
    """std::round on float32 values (exact: ``value - trunc(value)`` is exact)."""
    truncated = jnp.trunc(value)
    return truncated + jnp.where(jnp.abs(value - truncated) >= 0.5, jnp.sign(value), 0.0)


def _round_half_away_quotient(x, scale):
    """``(int32)std::round((double)x / (double)s)`` on x86-64, in 32-bit arithmetic.

    For $|x/s| < 2^{22}$ a double quotient is never rounded onto or across a half-integer (the gap from any
    half-integer is at least $1/(2 S)$, $S < 2^{24}$ the scale's significand), so the result is
    $\\operatorname{round\\_half\\_away}$ of the exact quotient; a float32 candidate $n$ is off by at most one, and
    comparing $2|x|$ with $(2n \\pm 1)\\,s$ exactly decides. Beyond $2^{22}$ the float32 candidate is used: every
    such value saturates, and it crosses $2^{31}$ (where x86 gives INT32_MIN) exactly when the true quotient does.
    """
    magnitude = jnp.abs(x)
    candidate = _round_half_away(_divide(magnitude, scale))  # >= 0; NaN stays NaN
    x_significand, x_exponent = _significand(magnitude)
    s_significand, s_exponent = _significand(scale)
    # 2|x| >= k·s  <=>  X · 2^(ex - es + 1) >= k · S, with both sides below 2^64 where it is asked.
    up = x_exponent - s_exponent + 1
    n = jnp.clip(candidate, 0, 2**22).astype(jnp.uint32)

    def at_least(odd: jax.Array) -> jax.Array:
        left_hi, left_lo = _shift_left_64(jnp.uint32(0), x_significand, jnp.clip(up, 0, 31))
        right_hi, right_lo = _arith.mul_u32(odd, s_significand)
        right_hi, right_lo = _shift_left_64(right_hi, right_lo, jnp.clip(-up, 0, 30))
        greater_equal = (left_hi > right_hi) | ((left_hi == right_hi) & (left_lo >= right_lo))
        return jnp.where(up < -30, False, greater_equal)  # then k·S·2^31 > X for every k >= 1

    exact = n + at_least(2 * n + 1).astype(jnp.uint32) - ((n > 0) & ~at_least(2 * n - 1)).astype(jnp.uint32)
    rounded = jnp.where(candidate < 2**22, exact.astype(jnp.float32), candidate)
    negative = (jax.lax.bitcast_convert_type(x, jnp.uint32) >> 31) == 1  # the sign bit: a subnormal x < 0 too
    return float_to_int32(jnp.where(negative, -rounded, rounded))


def _significand(value):
    """``(S, e)`` with ``value = S · 2^e`` exactly, ``S`` a uint32 < 2^24, for finite float32 ``value >= 0``."""
    bits = jax.lax.bitcast_convert_type(value, jnp.uint32)
    biased = (bits >> 23) & jnp.uint32(0xFF)
    fraction = bits & jnp.uint32(0x7FFFFF)
    significand = jnp.where(biased == 0, fraction, fraction | jnp.uint32(0x800000))
    return significand, jnp.maximum(biased.astype(jnp.int32), 1) - 150


def _quantization(scale, zero_point, fmt):
    """A scalar float32 scale and int32 zero point, checked when concrete."""
    scale = _validate.float_array(scale, "scale") if isinstance(scale, jax.Array) else _host_scale(scale)
    zero_point = _validate.int_array(zero_point, "zero_point")
    if scale.ndim or zero_point.ndim:
        raise ValueError(f"scale and zero_point must be scalars, got shapes {scale.shape} and {zero_point.shape}")
    if is_concrete(scale):
        value = np.float32(scale)
        if not (np.isfinite(value) and value > 0):
            raise ValueError(f"scale must be positive and finite in float32, got {value}")
        _validate.check_normal_float32(value, "scale")
    if is_concrete(zero_point) and not fmt.qmin <= int(zero_point) <= fmt.qmax:
        raise ValueError(f"zero_point must lie in [{fmt.qmin}, {fmt.qmax}], got {int(zero_point)}")
    return scale.astype(jnp.float32), zero_point


def _host_scale(scale) -> jax.Array:
    value = _validate.check_real(scale, "scale") if not isinstance(scale, np.ndarray) else scale
    return jnp.asarray(np.float32(value))


def _output_bounds(zero_point, qmin, qmax):
    zero_point = _validate.int_array(zero_point, "zero_point")
    qmin = _validate.int_array(qmin, "qmin")
    qmax = _validate.int_array(qmax, "qmax")
    if is_concrete(qmin) and is_concrete(qmax) and np.any(np.asarray(qmin) > np.asarray(qmax)):
        raise ValueError(
            f"qmin must be <= qmax, got qmin={np.asarray(qmin).tolist()} and qmax={np.asarray(qmax).tolist()}"
        )
    return zero_point, qmin, qmax
