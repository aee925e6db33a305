"""TFLite / LiteRT integer numerics: fixed-point requantization and the int8 reference kernels, bit for bit.

TFLite's integer kernels never touch a float at inference time. A real multiplier $M$ (for a conv,
$M_c = s_{in} s_{w,c} / s_{out}$, computed in double at prepare time) is encoded as a Q0.31 significand and a
power-of-two exponent,

$$
M \\approx q_m \\cdot 2^{\\text{shift} - 31}, \\qquad 2^{30} \\le q_m < 2^{31},
$$

and applied to an int32 accumulator by gemmlowp's fixed-point primitives:

$$
\\operatorname{SRDHM}(a, b) = \\Big\\lfloor \\frac{a b + 2^{30}}{2^{31}} \\Big\\rfloor\\ \\text{(ties towards }
+\\infty\\text{)},
\\qquad
\\operatorname{RDBPOT}(x, e) = \\operatorname{round\\_half\\_away}(x / 2^e),
\\operatorname{MBQM}(x) = \\operatorname{RDBPOT}\\big(\\operatorname{SRDHM}(x \\cdot 2^{\\max(\\text{shift}, 0)}, q_m),
\\max(-\\text{shift}, 0)\\big).
$$

Rounding twice makes MBQM up to 0.75 LSB away from the exact product (0.5 for the first rounding, then half of an
LSB scaled down by at least 2). Builds with ``TFLITE_SINGLE_ROUNDING`` compute
$\\lfloor (x q_m + 2^{30 - \\text{shift}}) / 2^{31 - \\text{shift}} \\rfloor$ instead: one rounding, ties up,
at most 0.5 LSB.

JAX without ``jax_enable_x64`` has no 64-bit integers, so the 64-bit products are built from 16-bit halves in
uint32 arithmetic; everything here is ``jax.jit``-compatible and exact on any backend.

These are TFLite's *reference* kernels (LiteRT's ``BUILTIN_REF`` resolver) — except that LiteRT's reference
FULLY_CONNECTED calls the overload of ``FullyConnectedPerChannel`` that requantizes in float64, not the fixed-point
one that :func:`fully_connected` here follows (measured against ai-edge-litert 2.3.0). That kernel, the optimized
kernels' (ruy) rounding and the XNNPACK delegate's, and the QUANTIZE/DEQUANTIZE variants of each are in
:mod:`quantref.runtimes.litert`.

Subnormal float32 values: :func:`quantize` divides in float32, and JAX (XLA) on CPU flushes subnormal floats to
zero, unlike TFLite. A scale below the smallest normal float32 (``np.finfo(np.float32).tiny`` ≈ 1.18e-38) raises
``ValueError``; subnormal *inputs* ``x`` and subnormal quotients ``x / s`` are flushed to zero here, unlike in
TFLite. The integer kernels are unaffected.

References:
  gemmlowp ``fixedpoint/fixedpoint.h`` (``SaturatingRoundingDoublingHighMul``, ``RoundingDivideByPOT``).
  TensorFlow ``tensorflow/lite/kernels/internal/quantization_util.cc`` (``QuantizeMultiplier``),
  ``tensorflow/lite/kernels/internal/common.cc`` (``MultiplyByQuantizedMultiplier``),
  ``tensorflow/lite/kernels/internal/reference/quantize.h`` (``AffineQuantize``),
  ``tensorflow/lite/kernels/internal/reference/integer_ops/fully_connected.h`` and ``conv.h``,
  ``tensorflow/lite/kernels/kernel_util.cc`` (``PopulateConvolutionQuantizationParams``).
  Jacob et al., "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference",
  arXiv:1712.05877, 2017.
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from quantref import _validate, formats
from quantref._validate import INT32_MAX, INT32_MIN, check_normal_float32, is_concrete
from quantref.affine import true_divide as _divide  # XLA rewrites x / constant as x * (1 / constant)
from quantref.runtimes import _arith
from quantref.runtimes._arith import float_to_int32

__all__ = [
    "TfliteDtype",
    "quantize_multiplier",
    "quantize_multiplier_array",
    "per_channel_multipliers",
    "saturating_rounding_doubling_high_mul",
    "rounding_divide_by_pot",
    "multiply_by_quantized_multiplier",
    "requantize",
    "quantize",
    "fully_connected",
    "conv2d",
]

TfliteDtype = Literal["int8", "uint8", "int16"]
_DTYPES: dict[str, formats.IntFormat] = {"int8": formats.INT8, "uint8": formats.UINT8, "int16": formats.INT16}


# ---------------------------------------------------------------------------------------------------------------
# host side: QuantizeMultiplier


def quantize_multiplier(real_multiplier: float, *, single_rounding: bool = False) -> tuple[int, int]:
    """TFLite's ``QuantizeMultiplier``: encode a real multiplier as a Q0.31 significand and an exponent.

    $$
    (f, e) = \\operatorname{frexp}(M),\\ \\tfrac12 \\le |f| < 1; \\qquad
    q_m = \\operatorname{round\\_half\\_away}(f \\cdot 2^{31});
    $$

    if $q_m = 2^{31}$ then $q_m \\leftarrow 2^{30},\\ e \\leftarrow e + 1$; if $e < -31$ then
    $q_m = e = 0$ (tiny multipliers flush to zero). Negative multipliers give a negative $q_m$. With
    ``single_rounding`` (``TFLITE_SINGLE_ROUNDING`` builds) a shift above 30 saturates to
    $(2^{31} - 1, 30)$.

    References:
      TensorFlow ``tensorflow/lite/kernels/internal/quantization_util.cc``.

    Args:
      real_multiplier: finite float (a Python float is an IEEE double, as in TFLite).
      single_rounding: apply the ``TFLITE_SINGLE_ROUNDING`` saturation of large shifts.

    Returns:
      ``(quantized_multiplier, shift)``: Python ints; ``M ≈ quantized_multiplier · 2^(shift − 31)``.

    Raises:
      TypeError: if ``real_multiplier`` is not a real number.
      ValueError: if it is NaN or infinite.
    """
    if isinstance(real_multiplier, (bool, np.bool_)) or not isinstance(
        real_multiplier, (int, float, np.integer, np.floating)
    ):
        raise TypeError(f"real_multiplier must be a float, got {real_multiplier!r}")
    value = float(real_multiplier)
    if not math.isfinite(value):
        raise ValueError(f"real_multiplier must be finite, got {value}")
    if value == 0.0:
        return 0, 0
    fraction, shift = math.frexp(value)
    scaled = fraction * 2.0**31  # exact: a power-of-two scaling of a double
    q_fixed = int(math.copysign(math.floor(abs(scaled) + 0.5), scaled))  # std::round; exact for |scaled| < 2^52
    if abs(q_fixed) == 2**31:
        q_fixed //= 2
        shift += 1
    if shift < -31:
        q_fixed, shift = 0, 0
    if single_rounding and shift > 30:
        q_fixed, shift = 2**31 - 1, 30
    return q_fixed, shift


def quantize_multiplier_array(
    real_multipliers: np.ndarray | list[float], *, single_rounding: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`quantize_multiplier` over an array (TFLite's ``QuantizeMultiplierArray``).

    Args:
      real_multipliers: finite floats, any shape.
      single_rounding: as in :func:`quantize_multiplier`.

    Returns:
      ``(quantized_multipliers, shifts)``: int32 numpy arrays shaped like the input.

    Raises:
      TypeError: if ``real_multipliers`` are not real numbers (complex, ``None``, strings).
      ValueError: if any multiplier is NaN or infinite.
    """
    values = _validate.host_float64(real_multipliers, "real_multipliers")
    pairs = [quantize_multiplier(float(v), single_rounding=single_rounding) for v in values.ravel()]
    multipliers = np.array([p[0] for p in pairs], dtype=np.int64).reshape(values.shape)
    shifts = np.array([p[1] for p in pairs], dtype=np.int64).reshape(values.shape)
    return multipliers.astype(np.int32), shifts.astype(np.int32)


def per_channel_multipliers(
    input_scale: float, filter_scales: np.ndarray | list[float], output_scale: float, *, single_rounding: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel requantization multipliers, as TFLite computes them at prepare time.

    $$
    M_c = \\frac{(\\text{double})\\,s_{in} \\cdot (\\text{double})\\,s_{w,c}}{(\\text{double})\\,s_{out}}
    $$

    with the float32 tensor scales widened to double and evaluated left to right, then :func:`quantize_multiplier`.

    References:
      TensorFlow ``tensorflow/lite/kernels/kernel_util.cc`` (``PopulateConvolutionQuantizationParams``).

    Args:
      input_scale: the input tensor's scale (rounded to float32, as stored in the model).
      filter_scales: per-output-channel weight scales (rounded to float32).
      output_scale: the output tensor's scale (rounded to float32).
      single_rounding: as in :func:`quantize_multiplier`.

    Returns:
      ``(output_multiplier, output_shift)``: int32 arrays of the filter scales' length.

    Raises:
      TypeError: if a scale is not real numbers.
      ValueError: if a scale is not positive and finite in float32, or the shapes are not as described.
    """
    names = ("input_scale", "filter_scales", "output_scale")
    scales = [
        _validate.host_float64(value, name).astype(np.float32)
        for value, name in zip((input_scale, filter_scales, output_scale), names)
    ]
    for name, value in zip(names, scales):
        if not np.all(np.isfinite(value) & (value > 0)):
            raise ValueError(
                f"{name} must be positive and finite in float32, got {np.asarray(value).ravel()[:3].tolist()}"
            )
    if scales[0].ndim or scales[2].ndim or scales[1].ndim != 1:
        raise ValueError("input_scale and output_scale must be scalars and filter_scales 1-D")
    effective = scales[0].astype(np.float64) * scales[1].astype(np.float64) / scales[2].astype(np.float64)
    return quantize_multiplier_array(effective, single_rounding=single_rounding)


# ---------------------------------------------------------------------------------------------------------------
# gemmlowp primitives


def saturating_rounding_doubling_high_mul(a: jax.Array, b: jax.Array) -> jax.Array:
    """gemmlowp's ``SaturatingRoundingDoublingHighMul`` for int32 (ARM's ``VQRDMULH``).

    $$
    \\operatorname{SRDHM}(a, b) = \\operatorname{trunc}\\Big(\\frac{ab + \\nu}{2^{31}}\\Big),\\quad
    \\nu = \\begin{cases} 2^{30} & ab \\ge 0 \\\\ 1 - 2^{30} & ab < 0 \\end{cases}
    \\;=\\; \\Big\\lfloor \\frac{ab + 2^{30}}{2^{31}} \\Big\\rfloor,
    $$

    the rounded high half of $2ab$, ties towards $+\\infty$; the one overflow,
    $a = b = -2^{31}$, saturates to $2^{31} - 1$.

    References:
      gemmlowp ``fixedpoint/fixedpoint.h``.

    Args:
      a: int32 array.
      b: int32 array broadcastable with ``a``.

    Returns:
      int32 array of the broadcast shape.

    Raises:
      TypeError: for non-integer inputs (floats would be truncated).
      ValueError: for values outside int32 (int64 values are checked before any conversion), or shapes that do
        not broadcast.
    """
    a, b = _validate.int_array(a, "a"), _validate.int_array(b, "b")
    _validate.check_broadcast(a=a, b=b)
    a, b = jnp.broadcast_arrays(a, b)
    hi, lo = _arith.mul_u32(_arith.magnitude(a), _arith.magnitude(b))
    negative = ((a < 0) != (b < 0)) & ((a != 0) & (b != 0))
    # |result| = floor((|ab| + 2^30 - [ab < 0]) / 2^31): trunc((ab + nudge) / 2^31) in sign-magnitude form.
    nudge = jnp.where(negative, jnp.uint32(2**30 - 1), jnp.uint32(2**30))
    hi, lo = _arith.add_u64(hi, lo, jnp.uint32(0), nudge)
    magnitude = (hi << 1) | (lo >> 31)
    value = jax.lax.bitcast_convert_type(magnitude, jnp.int32)
    result = jnp.where(negative, -value, value)
    return jnp.where((a == INT32_MIN) & (b == INT32_MIN), INT32_MAX, result)


def rounding_divide_by_pot(x: jax.Array, exponent: jax.Array | int) -> jax.Array:
    """gemmlowp's ``RoundingDivideByPOT``: $x / 2^e$ rounded to nearest, ties away from zero.

    $$
    m = 2^e - 1,\\quad r = x \\mathbin{\\&} m,\\quad t = \\lfloor m/2 \\rfloor + [x < 0],\\qquad
    \\operatorname{RDBPOT}(x, e) = (x \\gg e) + [r > t].
    $$

    References:
      gemmlowp ``fixedpoint/fixedpoint.h``.

    Args:
      x: int32 array.
      exponent: int or int array broadcastable with ``x``, each in ``0..31``.

    Returns:
      int32 array.

    Raises:
      TypeError: for non-integer inputs.
      ValueError: if a concrete ``exponent`` lies outside ``0..31``, values lie outside int32, or the shapes do
        not broadcast.
    """
    x = _validate.int_array(x, "x")
    exponent = _validate.int_array(exponent, "exponent")
    _validate.check_broadcast(x=x, exponent=exponent)
    if is_concrete(exponent):
        values = np.asarray(exponent)
        if values.size and (values.min() < 0 or values.max() > 31):
            raise ValueError(f"exponent must lie in 0..31, got values in [{values.min()}, {values.max()}]")
    return _rounding_divide_by_pot(x, exponent)


def _rounding_divide_by_pot(x: jax.Array, exponent: jax.Array) -> jax.Array:
    shift = exponent.astype(jnp.uint32)
    mask = (jnp.uint32(1) << shift) - jnp.uint32(1)
    remainder = jax.lax.bitcast_convert_type(x, jnp.uint32) & mask
    threshold = (mask >> 1) + (x < 0).astype(jnp.uint32)
    return (x >> exponent) + (remainder > threshold).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("single_rounding",))
def _mbqm(x, quantized_multiplier, shift, *, single_rounding):
    x, quantized_multiplier, shift = jnp.broadcast_arrays(x, quantized_multiplier, shift)
    if single_rounding:
        # (x * qm + 2^(30 - shift)) >> (31 - shift) in int64, then truncated to int32.
        total_shift = 31 - shift
        hi, lo = _arith.signed_product(x, quantized_multiplier)
        round_bit = total_shift - 1  # 0..61
        round_lo = jnp.where(round_bit < 32, jnp.uint32(1) << jnp.clip(round_bit, 0, 31).astype(jnp.uint32), 0)
        round_hi = jnp.where(round_bit >= 32, jnp.uint32(1) << jnp.clip(round_bit - 32, 0, 31).astype(jnp.uint32), 0)
        hi, lo = _arith.add_u64(hi, lo, round_hi.astype(jnp.uint32), round_lo.astype(jnp.uint32))
        return _arith.shift_right_low32(hi, lo, total_shift)
    left_shift = jnp.maximum(shift, 0)
    right_shift = jnp.maximum(-shift, 0)
    # x * (1 << left_shift) in int32 wraps on overflow, as the C++ does in practice.
    scaled = jax.lax.bitcast_convert_type(
        jax.lax.bitcast_convert_type(x, jnp.uint32) << left_shift.astype(jnp.uint32), jnp.int32
    )
    return _rounding_divide_by_pot(saturating_rounding_doubling_high_mul(scaled, quantized_multiplier), right_shift)


def multiply_by_quantized_multiplier(
    x: jax.Array | np.ndarray,
    quantized_multiplier: jax.Array | np.ndarray | int,
    shift: jax.Array | np.ndarray | int,
    *,
    single_rounding: bool = False,
) -> jax.Array:
    """TFLite's ``MultiplyByQuantizedMultiplier(int32 x, int32 qm, int shift)``: $x \\cdot M$ in fixed point.

    Default (double rounding, gemmlowp):

    $$
    \\operatorname{RDBPOT}\\big(\\operatorname{SRDHM}(x \\cdot 2^{\\max(\\text{shift},0)},\\ q_m),\\
    \\max(-\\text{shift}, 0)\\big),
    $$

    where the left shift wraps in int32 like the C++. ``single_rounding=True`` (``TFLITE_SINGLE_ROUNDING``):

    $$
    \\big\\lfloor (x \\cdot q_m + 2^{30 - \\text{shift}}) / 2^{31 - \\text{shift}} \\big\\rfloor \\bmod 2^{32},
    $$

    ties towards $+\\infty$. The two differ for about one input in $2^{|\\text{shift}|}$-ish near ties
    (double rounding is off the exact product by up to 0.75 LSB, single rounding by at most 0.5). Per-channel
    requantization is broadcasting: pass ``quantized_multiplier``/``shift`` shaped to broadcast along the channel axis.

    References:
      TensorFlow ``tensorflow/lite/kernels/internal/common.cc``; gemmlowp ``fixedpoint/fixedpoint.h``.

    Args:
      x: int32 array (e.g. accumulators).
      quantized_multiplier: int32 (array), as from :func:`quantize_multiplier`; ``>= 0`` with ``single_rounding``.
      shift: int (array) in ``-31..30``.
      single_rounding: use the ``TFLITE_SINGLE_ROUNDING`` formula.

    Returns:
      int32 array of the broadcast shape.

    Raises:
      TypeError: for non-integer inputs.
      ValueError: for values that do not fit int32, a shift outside ``-31..30``, or a negative multiplier with
        ``single_rounding``.
    """
    x = _validate.int_array(x, "x")
    quantized_multiplier = _validate.int_array(quantized_multiplier, "quantized_multiplier")
    shift = _validate.int_array(shift, "shift")
    if not isinstance(single_rounding, (bool, np.bool_)):
        raise TypeError(f"single_rounding must be a bool, got {single_rounding!r}")
    _validate.check_multiplier_shift(quantized_multiplier, shift, bool(single_rounding))
    try:
        jnp.broadcast_shapes(x.shape, quantized_multiplier.shape, shift.shape)
    except ValueError as err:
        raise ValueError(
            f"x {x.shape}, quantized_multiplier {quantized_multiplier.shape} and shift {shift.shape} do not broadcast"
        ) from err
    return _mbqm(x, quantized_multiplier, shift, single_rounding=bool(single_rounding))


@functools.partial(jax.jit, static_argnames=("single_rounding",))
def _requantize_fixed(acc, quantized_multiplier, shift, zero_point, qmin, qmax, *, single_rounding):
    # The int32 add of the zero point wraps like the C++ (acc += output_offset), then the clamp.
    scaled = _mbqm(acc, quantized_multiplier, shift, single_rounding=single_rounding)
    return jnp.clip(scaled + zero_point, qmin, qmax)


def requantize(
    acc: jax.Array | np.ndarray,
    quantized_multiplier: jax.Array | np.ndarray | int,
    shift: jax.Array | np.ndarray | int,
    zero_point: jax.Array | np.ndarray | int,
    qmin: jax.Array | int,
    qmax: jax.Array | int,
    *,
    single_rounding: bool = False,
) -> jax.Array:
    """TFLite's requantization of int32 accumulators to output codes, as its integer kernels end.

    $$
    y = \\operatorname{clamp}\\big(\\operatorname{MBQM}(\\text{acc}, q_m, \\text{shift}) + z,\\ q_{min},\\
    q_{max}\\big)
    $$

    with :func:`multiply_by_quantized_multiplier` (MBQM), the zero point added in wrapping int32 arithmetic, then the
    clamp to the activation range (``qmin = max(format qmin, z)`` applies a ReLU). Get ``quantized_multiplier`` and
    ``shift`` from :func:`quantize_multiplier_array` or :func:`per_channel_multipliers`. Jit-compatible.

    References:
      TensorFlow ``tensorflow/lite/kernels/internal/reference/integer_ops/conv.h`` and ``fully_connected.h``
      (the output stage), ``tensorflow/lite/kernels/internal/common.cc`` (``MultiplyByQuantizedMultiplier``).

    Args:
      acc: int32 accumulators (any integer array whose values fit int32).
      quantized_multiplier: int32 (array) broadcastable against ``acc`` (e.g. one per output channel, channels
        last); ``>= 0`` with ``single_rounding``.
      shift: int (array) in ``-31..30``, broadcastable against ``acc``.
      zero_point: the output zero point (int32 scalar or broadcastable array).
      qmin: lowest output code (traced values allowed).
      qmax: highest output code (traced values allowed).
      single_rounding: use the ``TFLITE_SINGLE_ROUNDING`` formula for MBQM.

    Returns:
      int32 codes in ``[qmin, qmax]``, of the broadcast shape.

    Raises:
      TypeError: for non-integer arrays or a non-bool ``single_rounding``.
      ValueError: (concrete values only) values outside int32, a shift outside ``-31..30``, a negative multiplier
        with ``single_rounding``, ``qmin > qmax``, or shapes that do not broadcast.
    """
    acc = _validate.int_array(acc, "acc")
    quantized_multiplier = _validate.int_array(quantized_multiplier, "quantized_multiplier")
    shift = _validate.int_array(shift, "shift")
    zero_point = _validate.int_array(zero_point, "zero_point")
    qmin = _validate.int_array(qmin, "qmin")
    qmax = _validate.int_array(qmax, "qmax")
    single_rounding = _validate.check_bool(single_rounding, "single_rounding")
    _validate.check_multiplier_shift(quantized_multiplier, shift, single_rounding)
    if is_concrete(qmin) and is_concrete(qmax) and np.any(np.asarray(qmin) > np.asarray(qmax)):
        raise ValueError(
            f"qmin must be <= qmax, got qmin={np.asarray(qmin).tolist()} and qmax={np.asarray(qmax).tolist()}"
        )
    shapes = (acc.shape, quantized_multiplier.shape, shift.shape, zero_point.shape, qmin.shape, qmax.shape)
    try:
        jnp.broadcast_shapes(*shapes)
    except ValueError as error:
        raise ValueError(
            "acc, quantized_multiplier, shift, zero_point, qmin and qmax must broadcast, got shapes "
            + ", ".join(str(shape) for shape in shapes)
        ) from error
    return _requantize_fixed(acc, quantized_multiplier, shift, zero_point, qmin, qmax, single_rounding=single_rounding)


# ---------------------------------------------------------------------------------------------------------------
# reference kernels


@functools.partial(jax.jit, static_argnames=("fmt",))
def _quantize(x, scale, zero_point, *, fmt):
    quotient = _divide(x, scale)
    truncated = jnp.trunc(quotient)
    # std::round: half away from zero; quotient - truncated is exact.
    rounded = truncated + jnp.where(jnp.abs(quotient - truncated) >= 0.5, jnp.sign(quotient), 0.0)
    # static_cast<int32_t> on x86-64 (cvttss2si): NaN and |v| >= 2^31 give INT32_MIN; then a wrapping int32 add.
    return jnp.clip(float_to_int32(rounded) + zero_point, fmt.qmin, fmt.qmax).astype(fmt.storage_dtype)


def quantize(x: jax.Array | np.ndarray, scale: float, zero_point: int, dtype: TfliteDtype) -> jax.Array:
    """TFLite's reference ``Quantize`` kernel (``reference_ops::AffineQuantize``), as an x86-64 build computes it.

    $$
    q = \\operatorname{clamp}\\big(\\operatorname{int32}(\\operatorname{round\\_half\\_away}(f_{32}(x / f_{32}(s))))
    + z,\\ q_{min},\\ q_{max}\\big)
    $$

    — a true float32 division and ties *away from zero* (ONNX and PyTorch round half to even; TFLite's optimized
    kernel multiplies by ``1/s`` and rounds half to even, so the two TFLite kernels differ at ties). Out of int32
    range the C++ cast is undefined; x86-64 returns ``INT32_MIN``, so NaN, ±Inf and $|x/s| \\ge 2^{31}$ all
    become ``INT32_MIN + z`` (wrapping) — qmin for ``z >= 0`` (even for +Inf) and qmax for ``z < 0``. An ARM build
    saturates instead (+Inf → qmax, NaN → ``z``).

    References:
      TensorFlow ``tensorflow/lite/kernels/internal/reference/quantize.h``, ``tensorflow/lite/kernels/quantize.cc``.

    Args:
      x: float array (computed in float32).
      scale: positive finite float (rounded to float32).
      zero_point: int in the range of ``dtype``.
      dtype: ``"int8"``, ``"uint8"`` or ``"int16"``.

    Returns:
      int8, uint8 or int16 array shaped like ``x``.

    Raises:
      ValueError: for an unknown ``dtype``, a non-positive, non-finite or subnormal (< ~1.18e-38) scale, or a zero
        point outside the range.
      TypeError: for a non-float ``x``, a non-numeric ``scale`` or a non-int ``zero_point``.
    """
    fmt = _DTYPES[_validate.check_choice(dtype, "dtype", tuple(_DTYPES))]
    x = _validate.float_array(x, "x")
    if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, (int, float, np.integer, np.floating)):
        raise TypeError(f"scale must be a float, got {scale!r}")
    scale32 = np.float32(scale)
    if not (np.isfinite(scale32) and scale32 > 0):
        raise ValueError(f"scale must be positive and finite in float32, got {scale!r}")
    check_normal_float32(scale32, "scale")
    if isinstance(zero_point, (bool, np.bool_)) or not isinstance(zero_point, (int, np.integer)):
        raise TypeError(f"zero_point must be an int, got {zero_point!r}")
    if not fmt.qmin <= zero_point <= fmt.qmax:
        raise ValueError(f"zero_point must lie in the {dtype} range [{fmt.qmin}, {fmt.qmax}], got {zero_point}")
    return _quantize(x.astype(jnp.float32), jnp.float32(scale32), jnp.int32(zero_point), fmt=fmt)


def _requantize(
    acc, output_multiplier, output_shift, output_zero_point, activation_min, activation_max, single_rounding
):
    return _requantize_fixed(
        acc,
        output_multiplier,
        output_shift,
        output_zero_point,
        activation_min,
        activation_max,
        single_rounding=single_rounding,
    ).astype(jnp.int8)


@functools.partial(
    jax.jit,
    static_argnames=("input_zero_point", "output_zero_point", "activation_min", "activation_max", "single_rounding"),
)
def _fully_connected(
    x,
    filters,
    bias,
    output_multiplier,
    output_shift,
    *,
    input_zero_point,
    output_zero_point,
    activation_min,
    activation_max,
    single_rounding,
):
    shifted = x.astype(jnp.int32) - input_zero_point
    acc = jnp.einsum("...d,od->...o", shifted, filters.astype(jnp.int32), preferred_element_type=jnp.int32) + bias
    return _requantize(
        acc, output_multiplier, output_shift, output_zero_point, activation_min, activation_max, single_rounding
    )


def fully_connected(
    x: jax.Array | np.ndarray,
    filters: jax.Array | np.ndarray,
    bias: jax.Array | np.ndarray | None,
    output_multiplier: jax.Array | np.ndarray,
    output_shift: jax.Array | np.ndarray,
    *,
    input_zero_point: int,
    output_zero_point: int,
    activation_min: int = -128,
    activation_max: int = 127,
    single_rounding: bool = False,
) -> jax.Array:
    """TFLite's int8 per-channel ``FullyConnected`` (``reference_integer_ops::FullyConnectedPerChannel``).

    $$
    \\mathrm{acc}_{b,c} = \\sum_d w_{c,d}\\,(x_{b,d} - z_{in}) + \\mathrm{bias}_c \\ \\text{(int32)},\\qquad
    y_{b,c} = \\operatorname{clamp}\\big(\\operatorname{MBQM}(\\mathrm{acc}_{b,c}, q_{m,c}, \\text{shift}_c) +
    z_{out},\\
    a_{min}, a_{max}\\big).
    $$

    Weights are int8, symmetric (zero point 0), one scale per output channel; get ``output_multiplier`` and
    ``output_shift`` from :func:`per_channel_multipliers`. The int32 accumulator wraps on overflow like the C++.

    References:
      TensorFlow ``tensorflow/lite/kernels/internal/reference/integer_ops/fully_connected.h``.

    Args:
      x: int8 input, shape ``(..., depth)``.
      filters: int8 weights, shape ``(out_channels, depth)`` (TFLite's layout).
      bias: int32 ``(out_channels,)`` with scale ``s_in * s_w[c]``, or None.
      output_multiplier: int32 ``(out_channels,)``.
      output_shift: int32 ``(out_channels,)``, each in ``-31..30``.
      input_zero_point: the input's zero point (``-input_offset`` in TFLite's params).
      output_zero_point: the output's zero point.
      activation_min: lower clamp (``-128``, or the fused ReLU's bound).
      activation_max: upper clamp.
      single_rounding: requantize with the ``TFLITE_SINGLE_ROUNDING`` formula.

    Returns:
      int8 array of shape ``(..., out_channels)``.

    Raises:
      TypeError: for non-int8 ``x``/``filters`` or non-integer parameters.
      ValueError: for mismatched depths, per-channel parameters of the wrong length, or out-of-range zero points,
        activation bounds or shifts.
    """
    x = _validate.int8_array(x, "x")
    filters = _validate.int8_array(filters, "filters")
    if filters.ndim != 2:
        raise ValueError(f"filters must be 2-D (out_channels, depth), got shape {filters.shape}")
    if x.ndim < 1 or x.shape[-1] != filters.shape[1]:
        raise ValueError(f"x's last dimension must equal filters' depth {filters.shape[1]}, got x.shape {x.shape}")
    channels = filters.shape[0]
    output_multiplier, output_shift = _validate.check_output_multipliers(
        output_multiplier, output_shift, channels, single_rounding
    )
    bias = _validate.bias_int32(bias, channels)
    _validate.check_int8_offsets(input_zero_point, output_zero_point, activation_min, activation_max)
    return _fully_connected(
        x,
        filters,
        bias,
        output_multiplier,
        output_shift,
        input_zero_point=int(input_zero_point),
        output_zero_point=int(output_zero_point),
        activation_min=int(activation_min),
        activation_max=int(activation_max),
        single_rounding=bool(single_rounding),
    )


def _same_padding(size: int, filter_size: int, stride: int, dilation: int) -> tuple[int, int]:
    """TFLite's ComputePaddingHeightWidth for SAME: the extra odd pixel goes after (bottom/right)."""
    effective = (filter_size - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


@functools.partial(
    jax.jit,
    static_argnames=(
        "strides",
        "padding",
        "dilations",
        "groups",
        "input_zero_point",
        "output_zero_point",
        "activation_min",
        "activation_max",
        "single_rounding",
    ),
)
def _conv2d(
    x,
    filters,
    bias,
    output_multiplier,
    output_shift,
    *,
    strides,
    padding,
    dilations,
    groups,
    input_zero_point,
    output_zero_point,
    activation_min,
    activation_max,
    single_rounding,
):
    # Out-of-bounds taps are skipped in TFLite, which is zero padding of (x - z_in).
    shifted = x.astype(jnp.int32) - input_zero_point
    acc = (
        jax.lax.conv_general_dilated(
            shifted,
            filters.astype(jnp.int32),
            window_strides=strides,
            padding=padding,
            rhs_dilation=dilations,
            dimension_numbers=("NHWC", "OHWI", "NHWC"),
            feature_group_count=groups,
            preferred_element_type=jnp.int32,
        )
        + bias
    )
    return _requantize(
        acc, output_multiplier, output_shift, output_zero_point, activation_min, activation_max, single_rounding
    )


def conv2d(
    x: jax.Array | np.ndarray,
    filters: jax.Array | np.ndarray,
    bias: jax.Array | np.ndarray | None,
    output_multiplier: jax.Array | np.ndarray,
    output_shift: jax.Array | np.ndarray,
    *,
    input_zero_point: int,
    output_zero_point: int,
    strides: tuple[int, int] = (1, 1),
    padding: Literal["SAME", "VALID"] | tuple[tuple[int, int], tuple[int, int]] = "VALID",
    dilations: tuple[int, int] = (1, 1),
    activation_min: int = -128,
    activation_max: int = 127,
    single_rounding: bool = False,
) -> jax.Array:
    """TFLite's int8 per-channel ``Conv2D`` (``reference_integer_ops::ConvPerChannel``), NHWC.

    $$
    \\mathrm{acc}_{n,y,x,c} = \\sum_{i,j,k} w_{c,i,j,k}\\,(x_{n,\\,y s_h + i d_h - p_t,\\,x s_w + j d_w - p_l,\\,k} -
    z_{in})
    + \\mathrm{bias}_c,
    $$

    taps outside the input contributing nothing (zero padding in the $x - z_{in}$ domain), then requantized per
    output channel exactly as in :func:`fully_connected`. Grouped convolution follows from the filter's input depth.

    References:
      TensorFlow ``tensorflow/lite/kernels/internal/reference/integer_ops/conv.h``,
      ``tensorflow/lite/kernels/padding.h``.

    Args:
      x: int8 input, ``(batch, height, width, in_channels)``.
      filters: int8 weights, ``(out_channels, filter_height, filter_width, in_channels / groups)`` (OHWI).
      bias: int32 ``(out_channels,)`` or None.
      output_multiplier: int32 ``(out_channels,)``.
      output_shift: int32 ``(out_channels,)``, each in ``-31..30``.
      input_zero_point: the input's zero point.
      output_zero_point: the output's zero point.
      strides: ``(stride_h, stride_w)``.
      padding: ``"VALID"``, ``"SAME"`` (TFLite's: extra pixel at the bottom/right) or explicit
        ``((top, bottom), (left, right))``.
      dilations: ``(dilation_h, dilation_w)``.
      activation_min: lower clamp.
      activation_max: upper clamp.
      single_rounding: requantize with the ``TFLITE_SINGLE_ROUNDING`` formula.

    Returns:
      int8 array ``(batch, out_height, out_width, out_channels)``.

    Raises:
      TypeError: for non-int8 ``x``/``filters`` or non-integer parameters.
      ValueError: for wrong ranks, an input depth that is not a multiple of the filter depth, out channels not
        divisible by the groups, bad strides/dilations/padding, per-channel parameters of the wrong length, or
        out-of-range zero points, activation bounds or shifts.
    """
    x = _validate.int8_array(x, "x")
    filters = _validate.int8_array(filters, "filters")
    if x.ndim != 4 or filters.ndim != 4:
        raise ValueError(f"x and filters must be 4-D (NHWC and OHWI), got shapes {x.shape} and {filters.shape}")
    in_channels, filter_depth, channels = x.shape[3], filters.shape[3], filters.shape[0]
    if in_channels == 0 or filter_depth == 0:
        raise ValueError(
            f"x and filters must have at least one input channel, got x shape {x.shape} (NHWC) and filters shape "
            f"{filters.shape} (OHWI)"
        )
    if in_channels % filter_depth or channels % (in_channels // filter_depth):
        raise ValueError(
            f"x's channels ({in_channels}) must be a multiple of filters' input depth ({filter_depth}) and "
            f"out_channels ({channels}) divisible by the resulting groups"
        )
    strides = _validate.positive_pair(strides, "strides")
    dilations = _validate.positive_pair(dilations, "dilations")
    if padding == "SAME":
        pads = tuple(_same_padding(x.shape[1 + i], filters.shape[1 + i], strides[i], dilations[i]) for i in range(2))
    elif padding == "VALID":
        pads = ((0, 0), (0, 0))
    elif (
        isinstance(padding, (tuple, list))
        and len(padding) == 2
        and all(isinstance(p, (tuple, list)) and len(p) == 2 for p in padding)
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0 for p in padding for v in p)
    ):
        pads = tuple((int(p[0]), int(p[1])) for p in padding)
    else:
        raise ValueError(f"padding must be 'SAME', 'VALID' or ((top, bottom), (left, right)), got {padding!r}")
    for i, name in enumerate(("height", "width")):
        effective = (filters.shape[1 + i] - 1) * dilations[i] + 1
        if x.shape[1 + i] + sum(pads[i]) < effective:
            raise ValueError(f"the dilated filter ({effective}) is larger than the padded input {name}")
    output_multiplier, output_shift = _validate.check_output_multipliers(
        output_multiplier, output_shift, channels, single_rounding
    )
    bias = _validate.bias_int32(bias, channels)
    _validate.check_int8_offsets(input_zero_point, output_zero_point, activation_min, activation_max)
    return _conv2d(
        x,
        filters,
        bias,
        output_multiplier,
        output_shift,
        strides=strides,
        padding=pads,
        dilations=dilations,
        groups=in_channels // filter_depth,
        input_zero_point=int(input_zero_point),
        output_zero_point=int(output_zero_point),
        activation_min=int(activation_min),
        activation_max=int(activation_max),
        single_rounding=bool(single_rounding),
    )
