"""ONNX quantization operators, bit-exact with onnxruntime's CPU execution provider.

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
- Scales are float32: the semantics reproduced are those of float32 scales (opsets 10 to 21, and opset 23+ with
  float32 scales). float16/bfloat16 scales — with which onnxruntime divides in float16 at opset >= 23 and
  DequantizeLinear returns float16 — are rejected with ``TypeError``; Python floats and float64 arrays are rounded
  to float32.
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
from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from quantref import _validate, formats
from quantref._validate import is_concrete
from quantref.affine import expand_param
from quantref.affine import true_divide as _divide  # XLA rewrites x / constant as x * (1 / constant)
from quantref.runtimes import _arith
from quantref.runtimes._arith import float_to_int32

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

Flavor = Literal["onnxruntime", "reference"]
_FLAVORS = ("onnxruntime", "reference")

# The integer output types of QuantizeLinear and their grids. int4/uint4 need opset 21, int2/uint2 opset 25.
_INT_FORMATS: dict[np.dtype, formats.IntFormat] = {
    np.dtype(np.int8): formats.INT8,
    np.dtype(np.uint8): formats.UINT8,
    np.dtype(np.int16): formats.INT16,
    np.dtype(np.uint16): formats.int_format(16, signed=False),
    np.dtype(ml_dtypes.int4): formats.INT4,
    np.dtype(ml_dtypes.uint4): formats.UINT4,
    np.dtype(ml_dtypes.int2): formats.int_format(2, signed=True),
    np.dtype(ml_dtypes.uint2): formats.int_format(2, signed=False),
}
_FLOAT8_NAMES: dict[np.dtype, str] = {dtype: name for name, dtype in formats.FLOAT8_DTYPES.items()}

#: Every output type of QuantizeLinear, by name.
QUANTIZED_DTYPES: dict[str, np.dtype] = {
    **{dtype.name: dtype for dtype in _INT_FORMATS},
    **formats.FLOAT8_DTYPES,
}
_EIGHT_BIT = (np.dtype(np.int8), np.dtype(np.uint8))


# ----------------------------------------------------------------------------------------------------------------
# QuantizeLinear / DequantizeLinear


@functools.partial(jax.jit, static_argnames=("out_dtype", "axis", "block_size", "flavor"))
def _quantize_int(x, scale, zero_point, *, out_dtype, axis, block_size, flavor):
    fmt = _INT_FORMATS[out_dtype]
    scale = expand_param(scale, x.shape, axis, block_size)
    zero_point = expand_param(zero_point.astype(jnp.int32), x.shape, axis, block_size)
    # A true float32 division, rounded before the zero point is added (MlasQuantizeLinear).
    quotient = _divide(x, scale)
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


def _float8_bits(value: jax.Array) -> jax.Array:
    return jax.lax.bitcast_convert_type(value, jnp.uint8)


@functools.partial(jax.jit, static_argnames=("out_dtype", "axis", "block_size", "saturate", "flavor"))
def _quantize_float8(x, scale, *, out_dtype, axis, block_size, saturate, flavor):
    name = _FLOAT8_NAMES[out_dtype]
    quotient = _divide(x, expand_param(scale, x.shape, axis, block_size))
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


def quantize_linear(
    x: jax.Array | np.ndarray,
    y_scale: jax.Array | np.ndarray | float,
    y_zero_point: jax.Array | np.ndarray | None = None,
    *,
    axis: int = 1,
    block_size: int = 0,
    saturate: bool = True,
    output_dtype: str | np.dtype | type | None = None,
    flavor: Flavor = "onnxruntime",
) -> jax.Array:
    """ONNX QuantizeLinear: ``y = sat(rne(x / y_scale) + y_zero_point)``.

    $$
    y = \\operatorname{clamp}\\big(\\operatorname{rne}(f_{32}(x / s)) + z,\\; q_{min},\\; q_{max}\\big)
    $$

    for integer outputs — a true float32 division, rounded *before* the zero point is added — and
    ``y = cast_fp8(x / s)`` (round half to even; the zero point's *values* are ignored, as both runtimes do) for
    float8 outputs. Granularity follows the scale's shape: a scalar (or 1-element) scale is per-tensor; with
    ``block_size=0`` a 1-D scale of length ``x.shape[axis]`` is per-axis; with ``block_size=B > 0`` the scale has
    ``x``'s shape with ``x.shape[axis]`` replaced by ``ceil(x.shape[axis] / B)`` and element ``i`` uses block
    ``i // B`` (a ragged last block is allowed).

    onnxruntime: NaN → qmin; +Inf and ``x/s >= qmax`` → qmax; −Inf → qmin. float8 with ``saturate=True``: out of
    range and ±Inf → ±max, NaN → NaN; with ``saturate=False``: e4m3fn and the fnuz types overflow to NaN, e5m2 to ±Inf.

    Differs from the reference evaluator:
      - integer outputs: the reference converts ``rne(x/s)`` to int32 before adding the zero point, so NaN, ±Inf
        and ``|x/s| >= 2^31`` become INT32_MIN (then qmin — or qmax when the zero point is negative, because the
        int32 add wraps), and ``rne(x/s) + z`` wraps when it passes 2^31 − 1. onnxruntime saturates instead.
      - float8 e4m3fn, ``saturate=False``: ``|x/s|`` in [480, 496) gives ±448 in onnxruntime, NaN in the reference.
      - float8 e5m2, ``saturate=False``: ``|x/s|`` in [61440, 65536) gives NaN in onnxruntime, ±Inf in the reference.
      - float8 e5m2 NaN is the code 0x7F/0xFF in onnxruntime and 0x7E/0xFE in the reference (both NaN).

    References:
      ONNX operator spec, QuantizeLinear (opsets 10, 13, 19, 21, 23, 25).
      onnxruntime ``core/providers/cpu/quantization/quantize_linear.cc``, ``core/mlas/lib/quantize.cpp``,
      ``include/onnxruntime/core/common/float8.h``; onnx ``onnx/reference/ops/op_quantize_linear.py``.

    Args:
      x: float input (computed in float32).
      y_scale: positive scale: scalar, 1-D per-axis, or blocked (see above).
      y_zero_point: zero point with the scale's shape; its dtype is the output type (int8, uint8, int16, uint16,
        int4, uint4, int2, uint2, float8_e4m3fn, float8_e4m3fnuz, float8_e5m2, float8_e5m2fnuz). ``None``: zero
        of type ``output_dtype``.
      axis: the per-axis / blocked axis; negative counts from the end.
      block_size: 0 for per-tensor/per-axis, else the block length along ``axis``.
      saturate: float8 outputs only: clamp overflow and ±Inf to ±max (ignored for integer outputs, as in ONNX).
      output_dtype: output type when there is no zero point (a dtype or one of the names above); must agree with
        the zero point's dtype when both are given. Default uint8.
      flavor: ``"onnxruntime"`` (CPU execution provider) or ``"reference"`` (``onnx.reference``).

    Returns:
      A JAX array of ``x``'s shape and the output dtype.

    Raises:
      TypeError: ``x``/``y_scale`` not float, a float16/bfloat16 ``y_scale`` (float32 scales only: the opset 23+
        float16 arithmetic is not reproduced), or a zero point of an unsupported dtype.
      ValueError: unsupported ``output_dtype`` or one contradicting the zero point, a scale/zero-point shape that
        does not fit ``axis``/``block_size``, a concrete scale that is not finite and > 0 or is subnormal in
        float32 (below ~1.18e-38: JAX flushes subnormals to zero on CPU), an unknown ``flavor``.
    """
    _validate.check_choice(flavor, "flavor", _FLAVORS)
    x = _validate.float32_array(x, "x")
    scale = _validate.scale_float32(y_scale, "y_scale")
    allowed = list(_INT_FORMATS) + list(_FLOAT8_NAMES)
    zero_point = None if y_zero_point is None else _validate.typed_array(y_zero_point, "y_zero_point", allowed)
    requested = None if output_dtype is None else _validate.dtype_choice(output_dtype, "output_dtype", QUANTIZED_DTYPES)
    if zero_point is not None and requested is not None and requested != zero_point.dtype:
        raise ValueError(
            f"output_dtype={requested} contradicts y_zero_point's dtype {zero_point.dtype}; give one or make them agree"
        )
    out_dtype = np.dtype(zero_point.dtype) if zero_point is not None else (requested or np.dtype(np.uint8))
    resolved_axis, block = _validate.scale_granularity(x.shape, scale.shape, axis, block_size, "y_scale")
    zero_point = _validate.zero_point_like(zero_point, scale, out_dtype, "y_zero_point")
    if resolved_axis is None:
        scale, zero_point = scale.reshape(()), zero_point.reshape(())
    if not isinstance(saturate, (bool, np.bool_)):
        raise TypeError(f"saturate must be a bool, got {saturate!r}")
    if out_dtype in _FLOAT8_NAMES:
        return _quantize_float8(
            x, scale, out_dtype=out_dtype, axis=resolved_axis, block_size=block, saturate=bool(saturate), flavor=flavor
        )
    return _quantize_int(x, scale, zero_point, out_dtype=out_dtype, axis=resolved_axis, block_size=block, flavor=flavor)


@functools.partial(jax.jit, static_argnames=("axis", "block_size"))
def _dequantize(x, scale, zero_point, *, axis, block_size):
    scale = expand_param(scale, x.shape, axis, block_size)
    if x.dtype in _FLOAT8_NAMES:
        return x.astype(jnp.float32) * scale
    zero_point = expand_param(zero_point.astype(jnp.int32), x.shape, axis, block_size)
    # int32 subtraction (wrapping for int32 inputs), one rounding to float32, one float32 multiply.
    return (x.astype(jnp.int32) - zero_point).astype(jnp.float32) * scale


def dequantize_linear(
    x: jax.Array | np.ndarray,
    x_scale: jax.Array | np.ndarray | float,
    x_zero_point: jax.Array | np.ndarray | None = None,
    *,
    axis: int = 1,
    block_size: int = 0,
) -> jax.Array:
    """ONNX DequantizeLinear: ``y = (x - x_zero_point) * x_scale`` in float32.

    $$
    y = f_{32}\\big(f_{32}(x - z) \\cdot s\\big)
    $$

    ``x - z`` is an int32 subtraction (exact for every type up to 16 bits; it wraps for int32 inputs, as
    onnxruntime's does), rounded once to float32 and multiplied once. For float8 inputs ``y = f_{32}(x) \\cdot s``
    and the zero point is ignored. Granularity as in :func:`quantize_linear`.

    Differs from the reference evaluator:
      - int32 inputs: the reference computes ``f32(f64(f32(x) - z) · s)`` — it rounds ``x`` to float32 *before*
        subtracting the zero point and does not wrap — so large int32 values (|x| > 2^24) or a wrapping ``x − z``
        differ. All other input types agree.

    References:
      ONNX operator spec, DequantizeLinear (opsets 10, 13, 19, 21). onnxruntime
      ``core/providers/cpu/quantization/quantize_linear.cc``; onnx ``onnx/reference/ops/op_dequantize_linear.py``.

    Args:
      x: quantized input: int8, uint8, int16, uint16, int32, int4, uint4, int2, uint2 or one of the float8 types.
      x_scale: positive scale: scalar, 1-D per-axis, or blocked.
      x_zero_point: zero point of ``x``'s dtype and the scale's shape, or ``None`` (zero).
      axis: the per-axis / blocked axis; negative counts from the end.
      block_size: 0 for per-tensor/per-axis, else the block length along ``axis``.

    Returns:
      A float32 JAX array of ``x``'s shape.

    Raises:
      TypeError: unsupported ``x`` dtype, a float16/bfloat16 ``x_scale`` (float32 scales only: onnxruntime would
        return float16), or a zero point whose dtype differs from ``x``'s.
      ValueError: a scale/zero-point shape that does not fit ``axis``/``block_size``, or a concrete scale that is
        not finite and > 0 or is subnormal in float32 (below ~1.18e-38).
    """
    allowed = list(_INT_FORMATS) + [np.dtype(np.int32)] + list(_FLOAT8_NAMES)
    x = _validate.typed_array(x, "x", allowed)
    scale = _validate.scale_float32(x_scale, "x_scale")
    zero_point = (
        None if x_zero_point is None else _validate.typed_array(x_zero_point, "x_zero_point", [np.dtype(x.dtype)])
    )
    resolved_axis, block = _validate.scale_granularity(x.shape, scale.shape, axis, block_size, "x_scale")
    zero_point = _validate.zero_point_like(zero_point, scale, np.dtype(x.dtype), "x_zero_point")
    if resolved_axis is None:
        scale, zero_point = scale.reshape(()), zero_point.reshape(())
    return _dequantize(x, scale, zero_point, axis=resolved_axis, block_size=block)


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


# ----------------------------------------------------------------------------------------------------------------
# MatMulInteger / ConvInteger: exact int32 accumulation


@jax.jit
def _matmul_int32(a, b, a_zero_point, b_zero_point):
    a32 = a.astype(jnp.int32) - a_zero_point.astype(jnp.int32)
    b32 = b.astype(jnp.int32) - b_zero_point.astype(jnp.int32)
    return jnp.matmul(a32, b32, preferred_element_type=jnp.int32)


def matmul_integer(
    a: jax.Array | np.ndarray,
    b: jax.Array | np.ndarray,
    a_zero_point: jax.Array | np.ndarray | None = None,
    b_zero_point: jax.Array | np.ndarray | None = None,
) -> jax.Array:
    """ONNX MatMulInteger: ``(a - a_zero_point) @ (b - b_zero_point)`` accumulated exactly in int32.

    $$
    y_{ij} = \\sum_k (a_{ik} - z_a)(b_{kj} - z_{b,j}) \\quad (\\text{int32, wrapping})
    $$

    numpy-style matmul broadcasting of batch dimensions; a 1-D operand is treated as numpy does.

    References:
      ONNX operator spec, MatMulInteger (opset 10). onnxruntime ``core/providers/cpu/math/matmul_integer.cc``.

    Args:
      a: uint8 or int8 matrix ``(..., M, K)``.
      b: uint8 or int8 matrix ``(..., K, N)``.
      a_zero_point: scalar of ``a``'s dtype, or ``None``.
      b_zero_point: scalar or per-column ``(N,)`` of ``b``'s dtype, or ``None``.

    Returns:
      The int32 product, shape as ``numpy.matmul``.

    Raises:
      TypeError: operands or zero points of unsupported dtypes.
      ValueError: shapes that do not multiply, or zero points of the wrong shape.
    """
    a = _validate.typed_array(a, "a", _EIGHT_BIT)
    b = _validate.typed_array(b, "b", _EIGHT_BIT)
    _, columns = _validate.check_matmul_shapes(a.shape, b.shape)
    a_zp = _validate.operand_zero_point(a_zero_point, a, "a_zero_point", None, "")
    b_zp = _validate.operand_zero_point(b_zero_point, b, "b_zero_point", columns if b.ndim > 1 else None, "per column")
    return _matmul_int32(a, b, a_zp, b_zp)


@functools.partial(jax.jit, static_argnames=("strides", "pads", "dilations", "group"))
def _conv_int32(x, w, x_zero_point, w_zero_point, *, strides, pads, dilations, group):
    # Padding happens in the zero-point-subtracted domain: a padded x element contributes 0.
    x32 = x.astype(jnp.int32) - x_zero_point.astype(jnp.int32)
    w32 = w.astype(jnp.int32) - w_zero_point.astype(jnp.int32).reshape((-1, 1, 1, 1) if w_zero_point.ndim else ())
    return jax.lax.conv_general_dilated(
        x32,
        w32,
        window_strides=strides,
        padding=((pads[0], pads[2]), (pads[1], pads[3])),
        rhs_dilation=dilations,
        dimension_numbers=("NCHW", "OIHW", "NCHW"),
        feature_group_count=group,
        preferred_element_type=jnp.int32,
    )


def conv_integer(
    x: jax.Array | np.ndarray,
    w: jax.Array | np.ndarray,
    x_zero_point: jax.Array | np.ndarray | None = None,
    w_zero_point: jax.Array | np.ndarray | None = None,
    *,
    strides: Sequence[int] = (1, 1),
    pads: Sequence[int] = (0, 0, 0, 0),
    dilations: Sequence[int] = (1, 1),
    group: int = 1,
) -> jax.Array:
    """ONNX ConvInteger (2-D, NCHW): convolution of zero-point-subtracted operands, accumulated in int32.

    $$
    y_{n,m,i,j} = \\sum_{c,p,q} \\big(x_{n,c,\\,i s_0 + p d_0 - t,\\, j s_1 + q d_1 - l} - z_x\\big)
    \\big(w_{m,c,p,q} - z_{w,m}\\big)
    $$

    Padded positions contribute zero *after* subtracting ``x_zero_point`` (they behave like ``x = z_x``).

    References:
      ONNX operator spec, ConvInteger (opset 10). onnxruntime ``core/providers/cpu/quantization/conv_integer.cc``.

    Args:
      x: uint8 or int8 input ``(N, C, H, W)``.
      w: uint8 or int8 weights ``(M, C/group, kH, kW)``.
      x_zero_point: scalar of ``x``'s dtype, or ``None``.
      w_zero_point: scalar or per-output-channel ``(M,)`` of ``w``'s dtype, or ``None``.
      strides: ``(sH, sW)``.
      pads: ``(top, left, bottom, right)`` — ONNX order ``[x1_begin, x2_begin, x1_end, x2_end]``.
      dilations: ``(dH, dW)``.
      group: number of groups; must divide ``C`` and ``M``.

    Returns:
      int32 ``(N, M, H_out, W_out)``.

    Raises:
      TypeError: unsupported dtypes.
      ValueError: inconsistent shapes or conv attributes, or zero points of the wrong shape.
    """
    x = _validate.typed_array(x, "x", _EIGHT_BIT)
    w = _validate.typed_array(w, "w", _EIGHT_BIT)
    _validate.check_conv_geometry(x.shape, w.shape, strides, pads, dilations, group)
    strides, pads, dilations = (tuple(int(v) for v in value) for value in (strides, pads, dilations))
    x_zp = _validate.operand_zero_point(x_zero_point, x, "x_zero_point", None, "")
    w_zp = _validate.operand_zero_point(w_zero_point, w, "w_zero_point", w.shape[0], "per output channel")
    return _conv_int32(x, w, x_zp, w_zp, strides=strides, pads=pads, dilations=dilations, group=int(group))


# ----------------------------------------------------------------------------------------------------------------
# QLinearMatMul / QLinearConv: int32 accumulation, then requantization


_SMALL = 2**22  # the bound below which _arith.round_small_to_int32 is exact


@functools.partial(jax.jit, static_argnames=("small",))
def _requantize_float(acc, multiplier, zero_point, qmin, qmax, *, small: bool | None):
    """MlasRequantizeOutput with output bounds ``[qmin, qmax]``; ``small``: whether ``qmin - z`` and ``qmax - z`` are
    known to lie in ``[-2^22, 2^22]`` (True), known not to (False), or to be found out at run time (None)."""
    zero_point = jnp.asarray(zero_point, jnp.int32)
    low = jnp.asarray(qmin, jnp.int32) - zero_point
    high = jnp.asarray(qmax, jnp.int32) - zero_point
    # f32(acc) * M in float32 (one rounding each), clamped to [qmin - z, qmax - z], rounded half to even, and only
    # then z added in int32: no multiply-add for XLA to contract. Clamping before the rounding is the same as after,
    # for integer bounds.
    scaled = acc.astype(jnp.float32) * multiplier

    def fast(values):  # the bounds are exact in float32, and the clamped values small enough for the magic number
        values = jnp.clip(values, low.astype(jnp.float32), high.astype(jnp.float32))
        return _arith.round_small_to_int32(values) + zero_point

    def exact(values):  # bounds beyond 2^24 are not exact in float32: clamp in int32, where they are
        values = jnp.clip(values, -(2.0**31), 2.0**31)
        return jnp.clip(_arith.round_to_int32(values), low, high) + zero_point

    if small is None:
        small_bounds = jnp.all((low >= -_SMALL) & (high <= _SMALL))
        return jax.lax.cond(small_bounds, fast, exact, scaled)
    return fast(scaled) if small else exact(scaled)


def requantize(
    acc: jax.Array | np.ndarray,
    multiplier: jax.Array | np.ndarray | float,
    zero_point: jax.Array | np.ndarray | int,
    qmin: jax.Array | int,
    qmax: jax.Array | int,
) -> jax.Array:
    """onnxruntime's requantization of int32 accumulators (MlasRequantizeOutput), as in QLinearConv/QLinearMatMul.

    $$
    y = \\operatorname{clamp}\\big(\\operatorname{rne}(f_{32}(f_{32}(\\text{acc}) \\cdot M)) + z,\\
    q_{min},\\ q_{max}\\big)
    $$

    One float32 multiply, rounded half to even, *then* the zero point added in int32 (never a fused multiply-add).
    The multiplier is $M = f_{32}(f_{32}(s_x s_w) / s_y)$, computed by the caller (per output channel or scalar).
    The rounding is exact for every bound: with $|q_{min} - z|, |q_{max} - z| \\le 2^{22}$ (every 8- and 16-bit
    grid) it is one vector add (a magic-number rounding), otherwise a slower exact path; with traced bounds the
    choice is made at run time. Pass ``qmin = max(format qmin, zero_point)`` to apply a ReLU. Jit-compatible;
    traced values are not checked (``qmin - zero_point`` and ``qmax - zero_point`` must fit int32).

    References:
      onnxruntime ``core/mlas/lib/quantize.cpp`` (MlasRequantizeOutput), ``core/providers/cpu/quantization/
      qlinearconv.cc``.

    Args:
      acc: int32 accumulators (any integer array whose values fit int32).
      multiplier: float32 multiplier(s) broadcastable against ``acc`` (e.g. one per output channel, channels last);
        float64 values are rounded to float32.
      zero_point: int32 output zero point (scalar, or broadcastable against ``acc``).
      qmin: lowest output code (traced values allowed).
      qmax: highest output code (traced values allowed).

    Returns:
      int32 codes in ``[qmin, qmax]``, of the broadcast shape of ``acc`` and ``multiplier``.

    Raises:
      TypeError: for a non-integer ``acc``/``zero_point``/``qmin``/``qmax`` or a non-float ``multiplier``.
      ValueError: (concrete values only) values outside int32, a multiplier that is not finite, > 0 and normal in
        float32, ``qmin > qmax``, ``qmin - zero_point`` or ``qmax - zero_point`` outside int32, or shapes that
        do not broadcast.
    """
    acc = _validate.int_array(acc, "acc")
    multiplier = _validate.float_array(multiplier, "multiplier")
    _validate.check_scale(multiplier, "multiplier")
    multiplier = multiplier.astype(jnp.float32)
    zero_point = _validate.int_array(zero_point, "zero_point")
    qmin = _validate.int_array(qmin, "qmin")
    qmax = _validate.int_array(qmax, "qmax")
    try:
        jnp.broadcast_shapes(acc.shape, multiplier.shape, zero_point.shape, qmin.shape, qmax.shape)
    except ValueError as error:
        raise ValueError(
            f"acc {acc.shape}, multiplier {multiplier.shape}, zero_point {zero_point.shape}, qmin {qmin.shape} and "
            f"qmax {qmax.shape} do not broadcast"
        ) from error
    small = _validate.requantize_bounds(zero_point, qmin, qmax, _SMALL)
    return _requantize_float(acc, multiplier, zero_point, qmin, qmax, small=small)


def _requantize_reference_numpy(acc, multiplier, zero_point, qmin, qmax):
    acc, multiplier, zero_point = (np.asarray(value, np.float64) for value in (acc, multiplier, zero_point))
    total = acc * multiplier + zero_point
    return np.clip(np.rint(total), qmin, qmax).astype(np.int32)


def _requantize(acc, multiplier, zero_point, *, qmin: int, qmax: int, flavor: str):
    """``acc`` int32, ``multiplier`` float32 and ``zero_point`` int32 (of an 8-bit output), broadcastable to ``acc``."""
    if flavor == "onnxruntime":
        return _requantize_float(acc, multiplier, zero_point, qmin, qmax, small=True)
    # Reference evaluator: float64 product, zero point added in float64 before rounding. XLA without x64 has no
    # float64, so this one step runs in numpy on the host.
    multiplier = jnp.broadcast_to(multiplier, acc.shape)
    zero_point = jnp.broadcast_to(zero_point, acc.shape)
    callback = functools.partial(_requantize_reference_numpy, qmin=qmin, qmax=qmax)
    return jax.pure_callback(
        callback, jax.ShapeDtypeStruct(acc.shape, jnp.int32), acc, multiplier, zero_point, vmap_method="expand_dims"
    )


@functools.partial(jax.jit, static_argnames=("out_dtype", "flavor"))
def _qlinear_matmul(a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point, *, out_dtype, flavor):
    acc = _matmul_int32(a, b, a_zero_point, b_zero_point)
    # M = f32(f32(sa * sb) / sy): two roundings, in this order, in onnxruntime and in the reference evaluator.
    multiplier = _divide(a_scale * b_scale, y_scale)
    fmt = _INT_FORMATS[out_dtype]
    codes = _requantize(acc, multiplier, y_zero_point.astype(jnp.int32), qmin=fmt.qmin, qmax=fmt.qmax, flavor=flavor)
    return codes.astype(out_dtype)


def qlinear_matmul(
    a: jax.Array | np.ndarray,
    a_scale: jax.Array | np.ndarray | float,
    a_zero_point: jax.Array | np.ndarray,
    b: jax.Array | np.ndarray,
    b_scale: jax.Array | np.ndarray | float,
    b_zero_point: jax.Array | np.ndarray,
    y_scale: jax.Array | np.ndarray | float,
    y_zero_point: jax.Array | np.ndarray,
    *,
    flavor: Flavor = "onnxruntime",
) -> jax.Array:
    """ONNX QLinearMatMul: integer matmul requantized to the output's scale and zero point.

    $$
    acc = \\sum_k (a_{ik} - z_a)(b_{kj} - z_{b,j}) \\;(\\text{int32}), \\quad
    M_j = f_{32}(f_{32}(s_a s_{b,j}) / s_y), \\quad
    y_{ij} = \\operatorname{sat}\\big(\\operatorname{rne}(f_{32}(f_{32}(acc_{ij}) \\cdot M_j)) + z_y\\big).
    $$

    Differs from the reference evaluator:
      - the reference computes ``sat(rne(f64(acc) · f64(M) + z_y))``: no float32 rounding of ``acc`` or of the
        product, and the zero point is added *before* rounding. The results differ when ``f32(acc)`` is inexact
        (|acc| > 2^24), when the float32 product rounds onto or off a ``.5`` tie, and at exact ties with an odd
        zero point (``rne(t) + z`` vs ``rne(t + z)``).

    References:
      ONNX operator spec, QLinearMatMul (opsets 10, 21). onnxruntime
      ``core/providers/cpu/quantization/quantize_linear_matmul.cc`` and ``core/mlas/lib/quantize.cpp``
      (MlasRequantizeOutput); onnx ``onnx/reference/ops/op_qlinear_matmul.py``.

    Args:
      a: uint8 or int8 ``(..., M, K)``.
      a_scale: positive scalar.
      a_zero_point: scalar of ``a``'s dtype.
      b: uint8 or int8 ``(..., K, N)``.
      b_scale: positive scalar or per-column ``(N,)``.
      b_zero_point: scalar or per-column ``(N,)`` of ``b``'s dtype.
      y_scale: positive scalar.
      y_zero_point: scalar uint8 or int8; its dtype is the output type.
      flavor: ``"onnxruntime"`` or ``"reference"``.

    Returns:
      The requantized product, dtype of ``y_zero_point``, shape as ``numpy.matmul``.

    Raises:
      TypeError: unsupported dtypes.
      ValueError: shapes that do not multiply, parameters of the wrong shape, a concrete scale that is not finite
        and > 0, an unknown ``flavor``.
    """
    _validate.check_choice(flavor, "flavor", _FLAVORS)
    a = _validate.typed_array(a, "a", _EIGHT_BIT)
    b = _validate.typed_array(b, "b", _EIGHT_BIT)
    _, columns = _validate.check_matmul_shapes(a.shape, b.shape)
    per_column = columns if b.ndim > 1 else None
    a_zp = _validate.operand_zero_point(a_zero_point, a, "a_zero_point", None, "")
    b_zp = _validate.operand_zero_point(b_zero_point, b, "b_zero_point", per_column, "per column")
    sa = _validate.scalar_scale(a_scale, "a_scale")
    if per_column:
        sb = _validate.per_index_scale(b_scale, "b_scale", columns, "per column")
    else:
        sb = _validate.scalar_scale(b_scale, "b_scale")
    sy = _validate.scalar_scale(y_scale, "y_scale")
    _validate.check_scale_product(sa, sb, "a_scale * b_scale")
    zy = _validate.scalar_zero_point(y_zero_point, "y_zero_point")
    return _qlinear_matmul(a, sa, a_zp, b, sb, b_zp, sy, zy, out_dtype=np.dtype(zy.dtype), flavor=flavor)


@functools.partial(jax.jit, static_argnames=("out_dtype", "strides", "pads", "dilations", "group", "flavor"))
def _qlinear_conv(
    x,
    x_scale,
    x_zero_point,
    w,
    w_scale,
    w_zero_point,
    y_scale,
    y_zero_point,
    bias,
    *,
    out_dtype,
    strides,
    pads,
    dilations,
    group,
    flavor,
):
    acc = _conv_int32(x, w, x_zero_point, w_zero_point, strides=strides, pads=pads, dilations=dilations, group=group)
    acc = acc + bias.reshape(1, -1, 1, 1)
    multiplier = _divide(x_scale * w_scale, y_scale)
    multiplier = multiplier.reshape((1, -1, 1, 1) if multiplier.ndim else ())
    fmt = _INT_FORMATS[out_dtype]
    codes = _requantize(acc, multiplier, y_zero_point.astype(jnp.int32), qmin=fmt.qmin, qmax=fmt.qmax, flavor=flavor)
    return codes.astype(out_dtype)


def qlinear_conv(
    x: jax.Array | np.ndarray,
    x_scale: jax.Array | np.ndarray | float,
    x_zero_point: jax.Array | np.ndarray,
    w: jax.Array | np.ndarray,
    w_scale: jax.Array | np.ndarray | float,
    w_zero_point: jax.Array | np.ndarray,
    y_scale: jax.Array | np.ndarray | float,
    y_zero_point: jax.Array | np.ndarray,
    bias: jax.Array | np.ndarray | None = None,
    *,
    strides: Sequence[int] = (1, 1),
    pads: Sequence[int] = (0, 0, 0, 0),
    dilations: Sequence[int] = (1, 1),
    group: int = 1,
    flavor: Flavor = "onnxruntime",
) -> jax.Array:
    """ONNX QLinearConv (2-D, NCHW): integer convolution plus int32 bias, requantized per output channel.

    $$
    acc_{n,m,i,j} = b_m + \\sum_{c,p,q} (x - z_x)(w_{m,c,p,q} - z_{w,m}) \\;(\\text{int32}), \\quad
    M_m = f_{32}(f_{32}(s_x s_{w,m}) / s_y),
    y = \\operatorname{sat}\\big(\\operatorname{rne}(f_{32}(f_{32}(acc) \\cdot M_m)) + z_y\\big).
    $$

    Padded positions behave like ``x = z_x`` (zero after subtracting the zero point), as in :func:`conv_integer`.

    Differs from the reference evaluator:
      - as in :func:`qlinear_matmul`: the reference requantizes in float64 and adds ``z_y`` before rounding.

    References:
      ONNX operator spec, QLinearConv (opset 10). onnxruntime ``core/providers/cpu/quantization/qlinearconv.cc``
      and ``core/mlas/lib/quantize.cpp`` (MlasRequantizeOutput); onnx ``onnx/reference/ops/op_qlinear_conv.py``.

    Args:
      x: uint8 or int8 ``(N, C, H, W)``.
      x_scale: positive scalar.
      x_zero_point: scalar of ``x``'s dtype.
      w: uint8 or int8 ``(M, C/group, kH, kW)``.
      w_scale: positive scalar, or per output channel ``(M,)``.
      w_zero_point: scalar or ``(M,)`` of ``w``'s dtype.
      y_scale: positive scalar.
      y_zero_point: scalar uint8 or int8; its dtype is the output type.
      bias: int32 ``(M,)``, or ``None``.
      strides: ``(sH, sW)``.
      pads: ``(top, left, bottom, right)`` — ONNX order ``[x1_begin, x2_begin, x1_end, x2_end]``.
      dilations: ``(dH, dW)``.
      group: number of groups; must divide ``C`` and ``M``.
      flavor: ``"onnxruntime"`` or ``"reference"``.

    Returns:
      ``(N, M, H_out, W_out)`` of ``y_zero_point``'s dtype.

    Raises:
      TypeError: unsupported dtypes.
      ValueError: inconsistent shapes or conv attributes, parameters of the wrong shape, a concrete scale that is
        not finite and > 0, an unknown ``flavor``.
    """
    _validate.check_choice(flavor, "flavor", _FLAVORS)
    x = _validate.typed_array(x, "x", _EIGHT_BIT)
    w = _validate.typed_array(w, "w", _EIGHT_BIT)
    _validate.check_conv_geometry(x.shape, w.shape, strides, pads, dilations, group)
    strides, pads, dilations = (tuple(int(v) for v in value) for value in (strides, pads, dilations))
    out_channels = w.shape[0]
    x_zp = _validate.operand_zero_point(x_zero_point, x, "x_zero_point", None, "")
    w_zp = _validate.operand_zero_point(w_zero_point, w, "w_zero_point", out_channels, "per output channel")
    sx = _validate.scalar_scale(x_scale, "x_scale")
    sw = _validate.per_index_scale(w_scale, "w_scale", out_channels, "per output channel")
    sy = _validate.scalar_scale(y_scale, "y_scale")
    _validate.check_scale_product(sx, sw, "x_scale * w_scale")
    zy = _validate.scalar_zero_point(y_zero_point, "y_zero_point")
    if bias is None:
        bias = jnp.zeros((out_channels,), jnp.int32)
    else:
        bias = _validate.typed_array(bias, "bias", [np.dtype(np.int32)])
        if bias.shape != (out_channels,):
            raise ValueError(f"bias must have shape ({out_channels},) (one per output channel), got {bias.shape}")
    return _qlinear_conv(
        x,
        sx,
        x_zp,
        w,
        sw,
        w_zp,
        sy,
        zy,
        bias,
        out_dtype=np.dtype(zy.dtype),
        strides=strides,
        pads=pads,
        dilations=dilations,
        group=int(group),
        flavor=flavor,
    )
