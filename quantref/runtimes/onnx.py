"""ONNX quantization operators, bit-exact with onnxruntime's CPU execution provider.

QuantizeLinear, DequantizeLinear and DynamicQuantizeLinear live here; the integer operators (MatMulInteger,
ConvInteger, QLinearMatMul, QLinearConv, their requantization) live in :mod:`quantref.runtimes.onnx_integer` and are
re-exported here, so ``quantref.runtimes.onnx`` names all of them.

Each function mirrors one ONNX operator (same inputs, same attributes as keyword arguments) and returns the values
that onnxruntime 1.32's CPU execution provider returns, bit for bit — at rounding ties, at saturation, for ±Inf and
NaN. Where the ONNX reference evaluator (``onnx.reference.ReferenceEvaluator``, onnx 1.23) gives a different answer,
``flavor="reference"`` reproduces the reference evaluator instead; each function lists the differences under
"Differs from the reference evaluator".

The core formulas (``rne`` = round half to even, ``sat`` = clamp to the output type, ``f32`` = round to float32):

$$
\\text{QuantizeLinear: } y = \\operatorname{sat}(\\operatorname{rne}(x / s) + z), \\qquad
\\text{DequantizeLinear: } \\hat x = (x - z)\\cdot s,
\\text{QLinearMatMul/Conv: } y = \\operatorname{sat}\\big(\\operatorname{rne}(f_{32}(f_{32}(acc)\\cdot M)) + z_y\\big),
\\quad M = f_{32}(f_{32}(s_a s_b) / s_y).
$$

Conventions shared by every function here:

- Inputs may be numpy or JAX arrays. Float inputs are computed in float32 (float16/bfloat16 are widened exactly,
  float64 is rounded to float32 first). Quantized inputs and zero points must carry their ONNX type as a numpy /
  ml_dtypes dtype (``np.uint8``, ``ml_dtypes.int4``, ``ml_dtypes.float8_e4m3fn``, ...): the dtype *is* the ONNX type.
- Results are JAX arrays of the exact ONNX output dtype (JAX supports int4/uint4/int2/uint2 and the four float8
  types natively); ``np.asarray(result)`` gives the numpy/ml_dtypes array to compare with onnxruntime's output.
- Every function is ``jax.jit``-compatible: attributes (``axis``, ``block_size``, ``saturate``, ``flavor``, conv
  geometry) are static, and the output dtype follows the zero point's dtype, which is static under tracing.
- Validation happens in Python before tracing: dtypes, shapes against ``axis``/``block_size``, conv/matmul geometry.
  Scales must be finite and > 0: onnxruntime has no defined answer for a zero scale (it divides by zero) and the
  spec does not define negative or NaN scales, so a concrete scale outside ``(0, inf)`` raises ``ValueError``. Traced
  scales cannot be inspected and are not checked; they then follow the formulas above literally.
- Scales are float32, float16 or bfloat16. onnxruntime widens float16 scales (and float16 ``x``) to float32 and
  computes in float32, returning float16 from DequantizeLinear; the reference evaluator does the same except that
  from opset 23 it divides float16 ``x`` by a float16 scale in float16 (``precision``). Python floats and float64
  arrays are rounded to float32.
- Subnormal float32 values: JAX (XLA) on CPU flushes subnormal floats to zero, the runtimes do not. A concrete
  scale below the smallest normal float32 (``np.finfo(np.float32).tiny`` ≈ 1.18e-38), a QLinear ``s_a·s_b``
  product below it, or a DynamicQuantizeLinear input whose scale would be below it raises ``ValueError``.
  Subnormal *inputs* ``x``, subnormal quotients ``x / s`` and subnormal results (for example a float8 input times
  a tiny scale in DequantizeLinear) are flushed to zero here, unlike in onnxruntime — so for instance
  ``x = 1e-38``, ``s = 1.2e-38`` quantizes to 0 here and to 1 in onnxruntime.
- Float arithmetic is written so that XLA has no multiply-add to contract: each rounding that the runtime performs
  is a separate operation here, and the tests check constructed ties ``x = (k + 1/2)·s`` and their float32
  neighbours against the live runtime.
- No 64-bit JAX types are needed. The one float64 step (the reference evaluator's requantization in
  :func:`qlinear_matmul` / :func:`qlinear_conv` with ``flavor="reference"``) runs in numpy through
  ``jax.pure_callback``, so it stays exact and jit-compatible without ``jax_enable_x64``.

References:
  ONNX operator specification, https://onnx.ai/onnx/operators/ (QuantizeLinear, DequantizeLinear,
  DynamicQuantizeLinear, MatMulInteger, ConvInteger, QLinearMatMul, QLinearConv).
  onnxruntime sources: ``onnxruntime/core/providers/cpu/quantization/quantize_linear.cc``,
  ``core/mlas/lib/quantize.cpp`` (MlasQuantizeLinear, MlasRequantizeOutput), ``core/util/qmath.h``
  (GetQuantizationParameter), ``include/onnxruntime/core/common/float8.h`` (float → float8 conversion),
  ``core/providers/cpu/quantization/qlinearconv.cc``, ``core/providers/cpu/math/quantize_linear_matmul.cc``.
  onnx sources: ``onnx/reference/ops/op_quantize_linear.py``, ``op_qlinear_matmul.py``, ``op_qlinear_conv.py``,
  ``op_dynamic_quantize_linear.py``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from quantref import _validate, formats
from quantref._validate import is_concrete
from quantref.affine import expand_param
from quantref.affine import true_divide as _divide  # XLA rewrites x / constant as x * (1 / constant)
from quantref.runtimes import _onnx_types as _types
from quantref.runtimes._arith import float_to_int32
from quantref.runtimes._onnx_types import QUANTIZED_DTYPES, Flavor
from quantref.runtimes.onnx_integer import conv_integer, matmul_integer, qlinear_conv, qlinear_matmul, requantize

__all__ = [
    "Flavor",
    "QUANTIZED_DTYPES",
    "quantize_linear",
    "dequantize_linear",
    "dynamic_quantize_linear",
    "matmul_integer",
    "conv_integer",
    "qlinear_matmul",
    "qlinear_conv",
    "requantize",
]

_FLAVORS = _types.FLAVORS
_INT_FORMATS = _types.INT_FORMATS
_FLOAT8_NAMES = _types.FLOAT8_NAMES
_FLOAT4 = _types.FLOAT4


# ----------------------------------------------------------------------------------------------------------------
# QuantizeLinear / DequantizeLinear


@functools.partial(jax.jit, static_argnames=("out_dtype", "axis", "block_size", "half", "flavor"))
def _quantize_int(x, scale, zero_point, *, out_dtype, axis, block_size, half, flavor):
    fmt = _INT_FORMATS[out_dtype]
    zero_point = expand_param(zero_point.astype(jnp.int32), x.shape, axis, block_size)
    quotient = _quotient(x, scale, axis=axis, block_size=block_size, half=half)
    if flavor == "onnxruntime":
        # MLAS clamps in float to [qmin - z, qmax - z] and then rounds; equal to sat(rne(v) + z) for every v,
        # with NaN mapped to qmin.
        rounded = jnp.round(quotient)
        codes = jnp.clip(rounded, fmt.qmin - zero_point, fmt.qmax - zero_point)
        codes = jnp.where(jnp.isnan(rounded), fmt.qmin, codes.astype(jnp.int32) + zero_point)
    else:
        # Reference evaluator: int32 conversion (NaN and |v| >= 2^31 give INT32_MIN), a wrapping int32 add of the
        # zero point, then the clamp.
        codes = jnp.clip(float_to_int32(jnp.round(quotient)) + zero_point, fmt.qmin, fmt.qmax)
    return codes.astype(jnp.int32).astype(out_dtype)


def _quotient(x, scale, *, axis, block_size, half):
    """x / s: a true float32 division (MlasQuantizeLinear), rounded to ``half`` when the reference divides in float16
    or bfloat16 (numpy's half division is the float32 quotient rounded to half)."""
    quotient = _divide(x, expand_param(scale, x.shape, axis, block_size))
    return quotient if half is None else quotient.astype(half).astype(jnp.float32)


def _float8_bits(value: jax.Array) -> jax.Array:
    return jax.lax.bitcast_convert_type(value, jnp.uint8)


@functools.partial(jax.jit, static_argnames=("out_dtype", "axis", "block_size", "saturate", "half", "flavor"))
def _quantize_float8(x, scale, *, out_dtype, axis, block_size, saturate, half, flavor):
    name = _FLOAT8_NAMES[out_dtype]
    quotient = _quotient(x, scale, axis=axis, block_size=block_size, half=half)
    result = formats.cast_float8(quotient, name, saturate=saturate)
    if flavor == "reference":
        return result
    # onnxruntime's own converter (float8.h) differs from a round-to-nearest-even cast in three places.
    magnitude = jnp.abs(quotient)
    sign = jnp.where(jnp.signbit(quotient), jnp.uint8(0x80), jnp.uint8(0))
    bits = _float8_bits(result)
    if name == "float8_e4m3fn" and not saturate:
        # Mantissa 111 at the top exponent is NaN, and the converter clears the low bit before rounding: values in
        # [480, 496) come out as 448 instead of NaN.
        bits = jnp.where((magnitude >= 480) & (magnitude < 496), sign | jnp.uint8(0x7E), bits)
    if name == "float8_e5m2":
        # NaN is encoded 0x7F (ml_dtypes/XLA: 0x7E), and the non-saturating overflow path ORs 0x7C into 0x7B, which
        # gives NaN for [61440, 65536) instead of Inf.
        nan = jnp.isnan(quotient)
        if not saturate:
            nan = nan | ((magnitude >= 61440) & (magnitude < 65536))
        bits = jnp.where(nan, sign | jnp.uint8(0x7F), bits)
    return jax.lax.bitcast_convert_type(bits, out_dtype)


@functools.partial(jax.jit, static_argnames=("axis", "block_size", "half"))
def _quantize_float4(x, scale, zero_point, *, axis, block_size, half):
    quotient = _quotient(x, scale, axis=axis, block_size=block_size, half=half)
    # The spec (and the reference evaluator) add the zero point as a float before the cast.
    shifted = quotient + expand_param(zero_point.astype(jnp.float32), x.shape, axis, block_size)
    return formats.cast_float4(shifted)


def quantize_linear(
    x: jax.Array | np.ndarray,
    y_scale: jax.Array | np.ndarray | float,
    y_zero_point: jax.Array | np.ndarray | None = None,
    *,
    axis: int = 1,
    block_size: int = 0,
    saturate: bool = True,
    output_dtype: str | np.dtype | type | None = None,
    precision: str | np.dtype | type | None = None,
    flavor: Flavor = "onnxruntime",
) -> jax.Array:
    """ONNX QuantizeLinear: ``y = sat(rne(x / y_scale) + y_zero_point)``.

    $$
    y = \\operatorname{clamp}\\big(\\operatorname{rne}(f_{32}(x / s)) + z,\\; q_{min},\\; q_{max}\\big)
    $$

    for integer outputs — a true float32 division, rounded *before* the zero point is added — and
    ``y = cast_fp8(x / s)`` (round half to even; the zero point's *values* are ignored, as both runtimes do) for
    float8 outputs. FLOAT4E2M1 (opset 23) follows the spec, which onnxruntime 1.32 does not implement on CPU:
    ``y = cast_fp4(x / s + z)`` (round half to even, saturating at ±6; see :func:`quantref.formats.cast_float4`),
    in both flavors. Granularity follows the scale's shape: a scalar (or 1-element) scale is per-tensor (its zero
    point may be a scalar or have one element too); with ``block_size=0`` a 1-D scale of length ``x.shape[axis]``
    is per-axis; with ``block_size=B > 0`` the scale has ``x``'s shape with ``x.shape[axis]`` replaced by
    ``ceil(x.shape[axis] / B)`` and element ``i`` uses block ``i // B`` (a ragged last block is allowed).

    float16 and bfloat16 scales (opset 19+): onnxruntime widens ``x`` and the scale to float32 and divides in
    float32, so the result is the float32 one. The reference evaluator (opset 23+) divides in the type of
    ``precision`` if given, else in numpy's promotion of ``x``'s and the scale's types: float16 ``x`` and scale
    give the float32 quotient rounded to float16 before ``rne``.

    onnxruntime: NaN → qmin; +Inf and ``x/s >= qmax`` → qmax; −Inf → qmin. float8 with ``saturate=True``: out of
    range and ±Inf → ±max, NaN → NaN; with ``saturate=False``: e4m3fn and the fnuz types overflow to NaN, e5m2 to ±Inf.

    Differs from the reference evaluator:
      - integer outputs: the reference converts ``rne(x/s)`` to int32 before adding the zero point, so NaN, ±Inf
        and ``|x/s| >= 2^31`` become INT32_MIN (then qmin — or qmax when the zero point is negative, because the
        int32 add wraps), and ``rne(x/s) + z`` wraps when it passes 2^31 − 1. onnxruntime saturates instead.
      - float8 e4m3fn, ``saturate=False``: ``|x/s|`` in [480, 496) gives ±448 in onnxruntime, NaN in the reference.
      - float8 e5m2, ``saturate=False``: ``|x/s|`` in [61440, 65536) gives NaN in onnxruntime, ±Inf in the reference.
      - float8 e5m2 NaN is the code 0x7F/0xFF in onnxruntime and 0x7E/0xFE in the reference (both NaN).
      - float16/bfloat16 ``x`` and scale: the quotient is rounded to half precision in the reference only.

    References:
      ONNX operator spec, QuantizeLinear (opsets 10, 13, 19, 21, 23, 25).
      onnxruntime ``core/providers/cpu/quantization/quantize_linear.cc``, ``core/mlas/lib/quantize.cpp``,
      ``include/onnxruntime/core/common/float8.h``; onnx ``onnx/reference/ops/op_quantize_linear.py``.

    Args:
      x: float input (float32, float16 or bfloat16; float64 is rounded to float32 first).
      y_scale: positive scale (float32, float16 or bfloat16): scalar, 1-D per-axis, or blocked (see above).
      y_zero_point: zero point with the scale's shape; its dtype is the output type (int8, uint8, int16, uint16,
        int4, uint4, int2, uint2, float8_e4m3fn, float8_e4m3fnuz, float8_e5m2, float8_e5m2fnuz, float4_e2m1fn).
        ``None``: zero of type ``output_dtype``.
      axis: the per-axis / blocked axis; negative counts from the end.
      block_size: 0 for per-tensor/per-axis, else the block length along ``axis``.
      saturate: float8 outputs only: clamp overflow and ±Inf to ±max (ignored for integer outputs, as in ONNX).
      output_dtype: output type when there is no zero point (a dtype or one of the names above); must agree with
        the zero point's dtype when both are given. Default uint8.
      precision: opset 23's ``precision`` attribute: the float type the reference evaluator divides in (float16,
        bfloat16 or float32); ``None`` for numpy's promotion. onnxruntime always divides in float32.
      flavor: ``"onnxruntime"`` (CPU execution provider) or ``"reference"`` (``onnx.reference``).

    Returns:
      A JAX array of ``x``'s shape and the output dtype.

    Raises:
      TypeError: ``x``/``y_scale`` not float (or float8), or a zero point of an unsupported dtype.
      ValueError: unsupported ``output_dtype`` or ``precision``, an ``output_dtype`` contradicting the zero point, a
        scale/zero-point shape that does not fit ``axis``/``block_size``, a concrete scale that is not finite and
        > 0 or is subnormal in float32 (below ~1.18e-38: JAX flushes subnormals to zero on CPU), an unknown
        ``flavor``.
    """
    _validate.check_choice(flavor, "flavor", _FLAVORS)
    x_dtype = np.dtype(_validate.as_array(x, "x").dtype)
    x = _validate.float32_array(x, "x")
    scale, scale_dtype = _scale(y_scale, "y_scale")
    allowed = list(_INT_FORMATS) + list(_FLOAT8_NAMES) + [_FLOAT4]
    zero_point = None if y_zero_point is None else _validate.typed_array(y_zero_point, "y_zero_point", allowed)
    requested = None if output_dtype is None else _validate.dtype_choice(output_dtype, "output_dtype", QUANTIZED_DTYPES)
    if zero_point is not None and requested is not None and requested != zero_point.dtype:
        raise ValueError(
            f"output_dtype={requested} contradicts y_zero_point's dtype {zero_point.dtype}; give one or make them agree"
        )
    out_dtype = np.dtype(zero_point.dtype) if zero_point is not None else (requested or np.dtype(np.uint8))
    resolved_axis, block = _validate.scale_granularity(x.shape, scale.shape, axis, block_size, "y_scale")
    zero_point = _validate.zero_point_like(_per_tensor_zero_point(zero_point, scale), scale, out_dtype, "y_zero_point")
    if resolved_axis is None:
        scale, zero_point = scale.reshape(()), zero_point.reshape(())
    if not isinstance(saturate, (bool, np.bool_)):
        raise TypeError(f"saturate must be a bool, got {saturate!r}")
    half = _half_quotient(x_dtype, scale_dtype, precision) if flavor == "reference" else None
    geometry = dict(axis=resolved_axis, block_size=block, half=half)
    if out_dtype in _FLOAT8_NAMES:
        return _quantize_float8(x, scale, out_dtype=out_dtype, saturate=bool(saturate), flavor=flavor, **geometry)
    if out_dtype == _FLOAT4:
        return _quantize_float4(x, scale, zero_point, **geometry)
    return _quantize_int(x, scale, zero_point, out_dtype=out_dtype, flavor=flavor, **geometry)


@functools.partial(jax.jit, static_argnames=("axis", "block_size", "out_dtype"))
def _dequantize(x, scale, zero_point, *, axis, block_size, out_dtype):
    scale = expand_param(scale, x.shape, axis, block_size)
    if x.dtype in _FLOAT8_NAMES:
        return (formats.float8_to_float32(x) * scale).astype(out_dtype)
    if x.dtype == _FLOAT4:
        return (x.astype(jnp.float32) * scale).astype(out_dtype)
    zero_point = expand_param(zero_point.astype(jnp.int32), x.shape, axis, block_size)
    # int32 subtraction (wrapping for int32 inputs), one rounding to float32, one float32 multiply.
    return ((x.astype(jnp.int32) - zero_point).astype(jnp.float32) * scale).astype(out_dtype)


def dequantize_linear(
    x: jax.Array | np.ndarray,
    x_scale: jax.Array | np.ndarray | float,
    x_zero_point: jax.Array | np.ndarray | None = None,
    *,
    axis: int = 1,
    block_size: int = 0,
    output_dtype: str | np.dtype | type | None = None,
) -> jax.Array:
    """ONNX DequantizeLinear: ``y = (x - x_zero_point) * x_scale``, computed in float32.

    $$
    y = f_{T}\\big(f_{32}(f_{32}(x - z) \\cdot s)\\big)
    $$

    ``x - z`` is an int32 subtraction (exact for every type up to 16 bits; it wraps for int32 inputs, as
    onnxruntime's does), rounded once to float32 and multiplied once in float32 by the (widened) scale; the product
    is rounded to the output type ``T`` — the scale's type (float32, float16 or bfloat16), or ``output_dtype``
    (opset 23) — which is what onnxruntime and the reference evaluator both compute for float16 scales. For float8
    and FLOAT4E2M1 inputs ``y = f_T(f_{32}(x) \\cdot s)`` and the zero point is ignored. Granularity as in
    :func:`quantize_linear`, a 1-element zero point beside a scalar scale included.

    Differs from the reference evaluator:
      - int32 inputs: the reference computes ``f32(f64(f32(x) - z) · s)`` — it rounds ``x`` to float32 *before*
        subtracting the zero point and does not wrap — so large int32 values (|x| > 2^24) or a wrapping ``x − z``
        differ. All other input types agree.

    References:
      ONNX operator spec, DequantizeLinear (opsets 10, 13, 19, 21, 23, 25). onnxruntime
      ``core/providers/cpu/quantization/quantize_linear.cc``; onnx ``onnx/reference/ops/op_dequantize_linear.py``.

    Args:
      x: quantized input: int8, uint8, int16, uint16, int32, int4, uint4, int2, uint2, one of the float8 types, or
        float4_e2m1fn.
      x_scale: positive scale (float32, float16 or bfloat16): scalar, 1-D per-axis, or blocked.
      x_zero_point: zero point of ``x``'s dtype and the scale's shape, or ``None`` (zero).
      axis: the per-axis / blocked axis; negative counts from the end.
      block_size: 0 for per-tensor/per-axis, else the block length along ``axis``.
      output_dtype: the output type (float32, float16 or bfloat16); ``None``: the scale's type.

    Returns:
      A JAX array of ``x``'s shape and the output type.

    Raises:
      TypeError: unsupported ``x`` or scale dtype, or a zero point whose dtype differs from ``x``'s.
      ValueError: a scale/zero-point shape that does not fit ``axis``/``block_size``, an unsupported
        ``output_dtype``, or a concrete scale that is not finite and > 0 or is subnormal in float32 (below
        ~1.18e-38).
    """
    allowed = list(_INT_FORMATS) + [np.dtype(np.int32)] + list(_FLOAT8_NAMES) + [_FLOAT4]
    x = _validate.typed_array(x, "x", allowed)
    scale, scale_dtype = _scale(x_scale, "x_scale")
    out_dtype = scale_dtype
    if output_dtype is not None:
        out_dtype = _validate.dtype_choice(output_dtype, "output_dtype", _DEQUANTIZED_DTYPES)
    zero_point = (
        None if x_zero_point is None else _validate.typed_array(x_zero_point, "x_zero_point", [np.dtype(x.dtype)])
    )
    resolved_axis, block = _validate.scale_granularity(x.shape, scale.shape, axis, block_size, "x_scale")
    zero_point = _per_tensor_zero_point(zero_point, scale)
    zero_point = _validate.zero_point_like(zero_point, scale, np.dtype(x.dtype), "x_zero_point")
    if resolved_axis is None:
        scale, zero_point = scale.reshape(()), zero_point.reshape(())
    return _dequantize(x, scale, zero_point, axis=resolved_axis, block_size=block, out_dtype=out_dtype)


_DEQUANTIZED_DTYPES = {"float32": np.dtype(np.float32), **{dtype.name: dtype for dtype in _types.HALF_DTYPES}}


def _scale(value, name: str) -> tuple[jax.Array, np.dtype]:
    """A Q/DQ scale as float32 (float16/bfloat16 widened exactly), checked; and its own type (float64 and Python
    floats count as float32, to which they are rounded)."""
    array = _validate.as_array(value, name)
    dtype = np.dtype(array.dtype)
    if dtype in _types.HALF_DTYPES:
        array = array.astype(np.float32) if isinstance(array, np.ndarray) else array.astype(jnp.float32)
        return _validate.scale_float32(array, name), dtype
    return _validate.scale_float32(array, name), np.dtype(np.float32)


def _per_tensor_zero_point(zero_point, scale: jax.Array):
    """A zero point of shape (1,) beside a scalar scale, or the reverse: both per-tensor (the spec and both runtimes
    accept it)."""
    if zero_point is not None and scale.size == 1 and scale.ndim <= 1 and zero_point.size == 1 and zero_point.ndim <= 1:
        return zero_point.reshape(scale.shape)
    return zero_point


def _half_quotient(x_dtype: np.dtype, scale_dtype: np.dtype, precision) -> np.dtype | None:
    """The half type the reference evaluator's ``x / s`` is rounded to: ``precision`` if given, else numpy's
    promotion of x's and the scale's types; None when it is float32."""
    if precision is not None:
        choices = {"float32": np.dtype(np.float32), **{dtype.name: dtype for dtype in _types.HALF_DTYPES}}
        chosen = _validate.dtype_choice(precision, "precision", choices)
        return chosen if chosen in _types.HALF_DTYPES else None
    if x_dtype in _types.HALF_DTYPES and x_dtype == scale_dtype:
        return x_dtype
    return None


# ----------------------------------------------------------------------------------------------------------------
# DynamicQuantizeLinear


@functools.partial(jax.jit, static_argnames=("flavor",))
def _dynamic_quantize(x, *, flavor):
    if flavor == "onnxruntime":
        # NaN is skipped when taking min/max (std::min/max keep the running value).
        low = jnp.minimum(jnp.min(jnp.where(jnp.isnan(x), jnp.inf, x), initial=jnp.inf), 0.0)
        high = jnp.maximum(jnp.max(jnp.where(jnp.isnan(x), -jnp.inf, x), initial=-jnp.inf), 0.0)
        scale = jnp.where(high == low, jnp.float32(1.0), _divide(high - low, jnp.float32(255.0)))
    else:
        low = jnp.minimum(jnp.min(x, initial=jnp.inf), 0.0)
        high = jnp.maximum(jnp.max(x, initial=-jnp.inf), 0.0)
        scale = _divide(jnp.where(high == low, jnp.float32(1.0), high - low), jnp.float32(255.0))
    initial = jnp.float32(0.0) - _divide(low, scale)
    # std::max(qmin, std::min(qmax, v)) and Python's max(qmin, min(qmax, v)) both give qmax for v = NaN.
    clamped = jnp.where(initial < 255.0, initial, jnp.float32(255.0))
    clamped = jnp.where(clamped > 0.0, clamped, jnp.float32(0.0))
    zero_point = jnp.round(clamped)
    quotient = jnp.round(_divide(x, scale))
    codes = jnp.clip(quotient + zero_point, 0.0, 255.0)
    # NaN codes (NaN input, or NaN scale in the reference) become 0: MLAS maps NaN to qmin, numpy's cast gives 0.
    codes = jnp.where(jnp.isnan(codes), 0.0, codes)
    return codes.astype(jnp.uint8), scale, zero_point.astype(jnp.uint8)


def dynamic_quantize_linear(
    x: jax.Array | np.ndarray, *, flavor: Flavor = "onnxruntime"
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """ONNX DynamicQuantizeLinear: uint8 quantization with a scale and zero point computed from the data.

    $$
    l = \\min(0, \\min x), \\quad h = \\max(0, \\max x), \\quad s = f_{32}\\big((h - l) / 255\\big),
    z = \\operatorname{rne}\\big(\\operatorname{clamp}(0 - l / s,\\; 0,\\; 255)\\big), \\quad
    y = \\operatorname{sat}(\\operatorname{rne}(x / s) + z).
    $$

    onnxruntime: if ``h == l`` (all-zero or empty input) ``s = 1``; NaN elements are skipped when taking the min and
    max, and quantize to 0.

    Differs from the reference evaluator:
      - all-zero input: ``s = 1/255`` in the reference, ``1`` in onnxruntime (``y`` and ``z`` agree: 0).
      - any NaN: the reference's min/max become NaN, so ``s = NaN``, ``z = 255`` and every ``y`` is 0.

    onnxruntime's NaN handling is not a clean rule: its SIMD min/max (MlasFindMinMaxElement) skips a NaN at most
    positions, but at a few positions that depend on the input length and the CPU's vector width it does not. On
    an x86-64 AVX2/AVX-512 machine, for length >= 8: a NaN in the last element propagates (``s = NaN``, ``z = 255``),
    and a NaN 2, 4 or 8 places from the end, or at some multiples of 32, gives yet another scale. quantref skips
    every NaN — onnxruntime's answer at all other positions; do not rely on NaN inputs here.

    References:
      ONNX operator spec, DynamicQuantizeLinear (opset 11). onnxruntime
      ``core/providers/cpu/quantization/dynamicquantizelinear.cc`` and ``core/util/qmath.h``
      (GetQuantizationParameter); onnx ``onnx/reference/ops/op_dynamic_quantize_linear.py``.

    Args:
      x: float input (computed in float32).
      flavor: ``"onnxruntime"`` or ``"reference"``.

    Returns:
      ``(y, y_scale, y_zero_point)``: uint8 codes of ``x``'s shape, a float32 scalar scale, a uint8 scalar zero
      point.

    Raises:
      TypeError: ``x`` is not a float array.
      ValueError: unknown ``flavor``, or a concrete ``x`` whose range gives a subnormal float32 scale (JAX
        flushes subnormals to zero on CPU).
    """
    _validate.check_choice(flavor, "flavor", _FLAVORS)
    x = _validate.float32_array(x, "x")
    if is_concrete(x) and x.size:
        values = np.asarray(x)
        finite = values[~np.isnan(values)]
        if finite.size:
            low, high = min(np.float32(finite.min()), np.float32(0)), max(np.float32(finite.max()), np.float32(0))
            with np.errstate(over="ignore", invalid="ignore"):
                scale = np.float32(np.float32(high - low) / np.float32(255))
            if high != low and np.isfinite(scale) and scale < np.finfo(np.float32).tiny:
                raise ValueError(
                    f"x's range [{low!r}, {high!r}] gives the scale {scale!r}, a subnormal float32: JAX flushes "
                    f"subnormal float32 to zero on CPU, so results would not match"
                )
    return _dynamic_quantize(x, flavor=flavor)
