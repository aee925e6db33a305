"""Block-scaled formats: OCP Microscaling (MXFP8, MXFP6, MXFP4, MXINT8) and NVIDIA's NVFP4.

A block-scaled format stores a tensor as small blocks of low-precision *elements* that share one *scale*. The
OCP Microscaling (MX) formats use blocks of $k = 32$ elements and a power-of-two scale stored as E8M0 (an 8-bit
exponent, $X = 2^{e - 127}$, 255 = NaN):

$$
X = 2^{\\lfloor \\log_2 \\max_i |v_i| \\rfloor - e_{max}}, \\qquad
P_i = \\operatorname{sat}\\big(\\operatorname{rne}_{\\text{elem}}(v_i / X)\\big), \\qquad \\hat v_i = X \\cdot P_i,
$$

where $e_{max}$ is the exponent of the element type's largest power of two (8 for FP8 E4M3, 15 for E5M2, 2 for FP6
E2M3, 4 for E3M2, 2 for FP4 E2M1, 0 for INT8), so that the block's largest magnitude lands in the element's top
binade; element values beyond the element's largest value (possible after rounding) saturate to it. MXINT8's
elements are int8 with an implied scale of $2^{-6}$ (values $-127/64 \\ldots 127/64$, the grid symmetric).

NVFP4 uses blocks of 16 FP4 E2M1 elements, each block's scale an FP8 E4M3 number (not a power of two), and one
float32 scale per tensor that brings the block scales into E4M3's range:

$$
g = \\frac{\\max |x|}{448 \\cdot 6}, \\quad
s_b = \\operatorname{e4m3}\\Big(\\frac{\\max_{i \\in b} |x_i| / 6}{g}\\Big), \\quad
P_i = \\operatorname{sat}_6\\big(\\operatorname{rne}_{\\text{e2m1}}(x_i \\cdot ((1 / g) / s_b))\\big), \\quad
\\hat x_i = P_i \\, s_b \\, g.
$$

Conventions: float32 arithmetic; blocks run along ``axis`` (the last by default); a length that is not a multiple
of the block size ends in a shorter last block. Where the specification leaves a choice, these functions make
torchao's (``torchao.prototype.mx_formats``, the reference the tests compare against): the scale exponent is
clamped to E8M0's range $[-127, 127]$, the all-zero block gets the smallest scale, and a scale below
$2^{-126}$ divides as $2^{-126}$ (JAX flushes float32 subnormals, as torchao's compiled path does); a block holding
NaN gets the NaN scale; NVFP4 multiplies by the reciprocal of its combined scale rather than dividing, as NVIDIA's
kernels do, and clamps block scales to $[2^{-6}, 448]$ (the normal E4M3 range). Subnormal float32 inputs are flushed
to zero (JAX on CPU). JAX's CPU backend has no FP6 type: FP6 elements are returned as numpy (ml_dtypes) arrays.

References:
  Open Compute Project, "OCP Microscaling Formats (MX) Specification", v1.0, 2023, secs. 5 and 6.3.
  Rouhani et al., "Microscaling Data Formats for Deep Learning", arXiv:2310.10537, 2023.
  NVIDIA, "Introducing NVFP4 for Efficient and Accurate Low-Precision Inference", 2025 (NVFP4's two-level scales).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from quantref import _validate, formats
from quantref.affine import true_divide

__all__ = [
    "MXFormat",
    "MX_FORMATS",
    "E8M0",
    "mx_quantize",
    "mx_dequantize",
    "mx_fake_quant",
    "nvfp4_per_tensor_scale",
    "nvfp4_quantize",
    "nvfp4_dequantize",
    "nvfp4_fake_quant",
]


@dataclasses.dataclass(frozen=True)
class MXFormat:
    """One OCP MX format: its element type and the exponent of the element's largest power of two.

    Attributes:
      name: ``mxfp8_e4m3``, ``mxfp8_e5m2``, ``mxfp6_e2m3``, ``mxfp6_e3m2``, ``mxfp4_e2m1`` or ``mxint8``.
      element: the element dtype (ml_dtypes; int8 for MXINT8).
      emax: $e_{max}$ of the element type.
      max_value: the element's largest finite value (127/64 for MXINT8).
    """

    name: str
    element: np.dtype
    emax: int
    max_value: float


#: The six MX formats of the OCP specification, by name.
MX_FORMATS: dict[str, MXFormat] = {
    format_.name: format_
    for format_ in (
        MXFormat("mxfp8_e4m3", np.dtype(ml_dtypes.float8_e4m3fn), 8, 448.0),
        MXFormat("mxfp8_e5m2", np.dtype(ml_dtypes.float8_e5m2), 15, 57344.0),
        MXFormat("mxfp6_e2m3", np.dtype(ml_dtypes.float6_e2m3fn), 2, 7.5),
        MXFormat("mxfp6_e3m2", np.dtype(ml_dtypes.float6_e3m2fn), 4, 28.0),
        MXFormat("mxfp4_e2m1", np.dtype(ml_dtypes.float4_e2m1fn), 2, 6.0),
        MXFormat("mxint8", np.dtype(np.int8), 0, 127 / 64),
    )
}
#: The shared-scale type of MX: E8M0, the value ``2^(code - 127)``; code 255 is NaN.
E8M0: np.dtype = np.dtype(ml_dtypes.float8_e8m0fnu)
_MIN_NORMAL = float(np.finfo(np.float32).tiny)
# Element types XLA's CPU backend cannot hold: (exponent bits, mantissa bits); computed on the float32 grid.
_HOST_TYPES = {np.dtype(ml_dtypes.float6_e2m3fn): (2, 3), np.dtype(ml_dtypes.float6_e3m2fn): (3, 2)}
_E4M3_MAX, _E4M3_EPS, _FP4_MAX = 448.0, 2.0**-6, 6.0  # EPS: the smallest normal E4M3


def mx_quantize(
    x: jax.Array | np.ndarray, fmt: str | MXFormat, *, block_size: int = 32, axis: int = -1
) -> tuple[jax.Array, jax.Array]:
    """Quantize to an OCP MX format: blocks of ``block_size`` elements along ``axis`` sharing an E8M0 scale.

    $$
    X = 2^{\\operatorname{clamp}(\\lfloor \\log_2 \\max_i |v_i| \\rfloor - e_{max},\\,-127,\\,127)},
    \\qquad P_i = \\operatorname{sat}(\\operatorname{rne}(v_i / X))
    $$

    References:
      OCP Microscaling Formats (MX) Specification v1.0, sec. 6.3 (conversion from float).

    Args:
      x: real values (computed in float32).
      fmt: an :class:`MXFormat` or the name of one in :data:`MX_FORMATS`.
      block_size: elements per shared scale (32 in the specification).
      axis: the axis the blocks run along.

    Returns:
      ``(elements, scales)``: elements of ``x``'s shape in the format's element dtype, and one E8M0 scale per
      block (``x``'s shape with ``axis`` replaced by the number of blocks).

    Raises:
      ValueError: an unknown format name, a ``block_size`` that is not a positive int, an ``axis`` out of range.
      TypeError: if ``x`` is not a real array or ``fmt`` is neither a name nor an :class:`MXFormat`.
    """
    fmt = _mx_format(fmt)
    x = _validate.real_array(x, "x")
    axis, block_size = _block_geometry(x, axis, block_size)
    elements, scales = _mx_quantize(x, fmt=fmt, block_size=block_size, axis=axis)
    if fmt.element in _HOST_TYPES:  # values already on the FP6 grid: the cast is exact
        elements = np.asarray(elements).astype(fmt.element)
    return elements, scales


def mx_dequantize(
    elements: jax.Array | np.ndarray, scales: jax.Array | np.ndarray, *, block_size: int = 32, axis: int = -1
) -> jax.Array:
    """The values an MX tensor stands for: ``X · P`` (MXINT8: ``X · P / 64``), in float32.

    Args:
      elements: the element codes (an MX element dtype, or int8 for MXINT8).
      scales: E8M0 scales, one per block, as :func:`mx_quantize` returns them.
      block_size: elements per scale.
      axis: the axis the blocks run along.

    Returns:
      float32 values of ``elements``' shape (NaN where the scale is NaN).

    Raises:
      TypeError: for elements of another dtype or scales that are not E8M0.
      ValueError: a ``block_size``/``axis`` that does not fit, or scales of the wrong shape.
    """
    elements = _validate.as_array(elements, "elements")
    allowed = [fmt.element for fmt in MX_FORMATS.values()]
    if np.dtype(elements.dtype) not in allowed:
        raise TypeError(
            f"elements must have an MX element dtype ({', '.join(d.name for d in allowed)}), got {elements.dtype}"
        )
    scales = _validate.typed_array(scales, "scales", [E8M0])
    axis, block_size = _block_geometry(elements, axis, block_size)
    _check_scales_shape(elements.shape, scales.shape, axis, block_size)
    int8 = np.dtype(elements.dtype) == np.dtype(np.int8)
    if np.dtype(elements.dtype) in _HOST_TYPES:
        elements = np.asarray(elements).astype(np.float32)  # exact; XLA's CPU backend has no FP6
    return _mx_dequantize(jnp.asarray(elements), scales, block_size=block_size, axis=axis, int8=int8)


def mx_fake_quant(x: jax.Array | np.ndarray, fmt: str | MXFormat, *, block_size: int = 32, axis: int = -1) -> jax.Array:
    """Quantize to an MX format and back (:func:`mx_quantize` then :func:`mx_dequantize`), in float32."""
    elements, scales = mx_quantize(x, fmt, block_size=block_size, axis=axis)
    return mx_dequantize(elements, scales, block_size=block_size, axis=axis)


def nvfp4_per_tensor_scale(amax: jax.Array | np.ndarray | float) -> jax.Array:
    """NVFP4's per-tensor scale from the tensor's largest magnitude: ``amax / (448 · 6)``, in float32.

    With it, a block holding the tensor's largest value gets the largest E4M3 block scale, 448.
    """
    return true_divide(_validate.real_array(amax, "amax"), jnp.float32(_E4M3_MAX * _FP4_MAX))


def nvfp4_quantize(
    x: jax.Array | np.ndarray,
    per_tensor_scale: jax.Array | np.ndarray | float | None = None,
    *,
    block_size: int = 16,
    axis: int = -1,
) -> tuple[jax.Array, jax.Array]:
    """Quantize to NVFP4: blocks of 16 FP4 E2M1 elements with an E4M3 scale each, under a float32 tensor scale.

    $$
    s_b = \\operatorname{e4m3}\\big(\\operatorname{clamp}(\\tfrac{\\max_b |x| / 6}{g}, 2^{-6}, 448)\\big),
    \\qquad P_i = \\operatorname{sat}_6\\big(\\operatorname{rne}_{\\text{e2m1}}(x_i \\cdot ((1/g)/s_b))\\big)
    $$

    With ``per_tensor_scale=None`` there is one level of scaling (``g = 1``, and the multiplier is ``1/s_b``).

    References:
      NVIDIA, NVFP4 (two-level scaling); torchao ``prototype/mx_formats/nvfp4_tensor.py`` (``nvfp4_quantize``).

    Args:
      x: real values (computed in float32).
      per_tensor_scale: ``g``, e.g. :func:`nvfp4_per_tensor_scale` of the tensor's (or the calibration's) max, or
        ``None`` for block scales alone.
      block_size: elements per block scale (16 for NVFP4).
      axis: the axis the blocks run along.

    Returns:
      ``(elements, block_scales)``: FP4 E2M1 elements of ``x``'s shape and E4M3 block scales.

    Raises:
      ValueError: a ``block_size``/``axis`` that does not fit, a concrete ``per_tensor_scale`` that is not finite,
        > 0 and normal.
      TypeError: if ``x`` or the scale is not a real array.
    """
    x = _validate.real_array(x, "x")
    axis, block_size = _block_geometry(x, axis, block_size)
    if per_tensor_scale is not None:
        per_tensor_scale = _validate.real_array(per_tensor_scale, "per_tensor_scale")
        _validate.check_scale(per_tensor_scale, "per_tensor_scale")
        if per_tensor_scale.shape not in ((), (1,)):
            raise ValueError(f"per_tensor_scale must be a scalar, got shape {per_tensor_scale.shape}")
        per_tensor_scale = per_tensor_scale.reshape(())
    return _nvfp4_quantize(x, per_tensor_scale, block_size=block_size, axis=axis)


def nvfp4_dequantize(
    elements: jax.Array | np.ndarray,
    block_scales: jax.Array | np.ndarray,
    per_tensor_scale: jax.Array | np.ndarray | float | None = None,
    *,
    block_size: int = 16,
    axis: int = -1,
) -> jax.Array:
    """The values an NVFP4 tensor stands for: ``P · s_b · g`` (``g = 1`` without a tensor scale), in float32."""
    elements = _validate.typed_array(elements, "elements", [formats.FLOAT4_E2M1])
    block_scales = _validate.typed_array(block_scales, "block_scales", [np.dtype(ml_dtypes.float8_e4m3fn)])
    axis, block_size = _block_geometry(elements, axis, block_size)
    _check_scales_shape(elements.shape, block_scales.shape, axis, block_size)
    scale = _expand(block_scales.astype(jnp.float32), elements.shape, axis, block_size)
    if per_tensor_scale is not None:
        scale = scale * _validate.real_array(per_tensor_scale, "per_tensor_scale").reshape(())
    return elements.astype(jnp.float32) * scale


def nvfp4_fake_quant(
    x: jax.Array | np.ndarray, per_tensor_scale=None, *, block_size: int = 16, axis: int = -1
) -> jax.Array:
    """Quantize to NVFP4 and back (:func:`nvfp4_quantize` then :func:`nvfp4_dequantize`), in float32."""
    elements, block_scales = nvfp4_quantize(x, per_tensor_scale, block_size=block_size, axis=axis)
    return nvfp4_dequantize(elements, block_scales, per_tensor_scale, block_size=block_size, axis=axis)


# ----------------------------------------------------------------------------------------------------------------
# The arithmetic: blocks, E8M0 scales, element casts


@functools.partial(jax.jit, static_argnames=("fmt", "block_size", "axis"))
def _mx_quantize(x, *, fmt: MXFormat, block_size: int, axis: int):
    amax = _block_amax(x, block_size, axis)
    # floor(log2(amax)) is the float32 exponent field (0 for zero and subnormals, read as 2^-127).
    exponent = ((jax.lax.bitcast_convert_type(amax, jnp.int32) >> 23) & 255) - 127 - fmt.emax
    codes = (jnp.clip(exponent, -127, 128) + 127).astype(jnp.uint8)  # 255 only from Inf: torchao's clamp
    codes = jnp.where(jnp.isnan(amax), jnp.uint8(255), codes)
    scales = jax.lax.bitcast_convert_type(codes, E8M0)
    divisor = jnp.maximum(jax.lax.bitcast_convert_type(codes.astype(jnp.int32) << 23, jnp.float32), _MIN_NORMAL)
    quotient = true_divide(x, _expand(divisor, x.shape, axis, block_size))
    return _cast_element(quotient, fmt), scales


@functools.partial(jax.jit, static_argnames=("block_size", "axis", "int8"))
def _mx_dequantize(elements, scales, *, block_size: int, axis: int, int8: bool):
    values = elements.astype(jnp.float32)
    if int8:
        values = values * jnp.float32(2.0**-6)
    return values * _expand(_e8m0_value(scales), elements.shape, axis, block_size)


def _e8m0_value(scales) -> jax.Array:
    """2^(code - 127) in float32 (exact for codes 1..254; code 0 is the subnormal 2^-127, which XLA flushes)."""
    codes = jax.lax.bitcast_convert_type(scales, jnp.uint8).astype(jnp.int32)
    value = jax.lax.bitcast_convert_type(codes << 23, jnp.float32)
    return jnp.where(codes == 255, jnp.float32(jnp.nan), value)


def _cast_element(values, fmt: MXFormat) -> jax.Array:
    if fmt.element == np.dtype(np.int8):
        codes = jnp.clip(jnp.round(values * jnp.float32(64.0)), -127, 127)
        return jnp.where(jnp.isnan(codes), 0, codes).astype(jnp.int8)
    top = jnp.float32(fmt.max_value)
    if fmt.element in _HOST_TYPES:
        return _round_small_float(values, _HOST_TYPES[fmt.element], top)
    # Saturating: values past the largest element (and infinities) become it; NaN stays NaN where the type has one.
    return jnp.clip(values, -top, top).astype(fmt.element)


def _round_small_float(values, bits: tuple[int, int], top) -> jax.Array:
    """Round to a float format with ``(exponent, mantissa)`` bits and no Inf/NaN, half to even, saturating at
    ``top``: the float32 values of the grid (for the FP6 types, which XLA cannot convert to)."""
    exponent_bits, mantissa_bits = bits
    magnitude = jnp.abs(values)
    exponent = ((jax.lax.bitcast_convert_type(magnitude, jnp.int32) >> 23) & 255) - 127
    exponent = jnp.maximum(exponent, 2 - 2 ** (exponent_bits - 1))  # the subnormal binade shares the smallest step
    step = jax.lax.bitcast_convert_type((exponent - mantissa_bits + 127) << 23, jnp.float32)
    rounded = jnp.minimum(jnp.round(magnitude / step) * step, top)  # a power of two: exact division and product
    return jnp.where(jnp.signbit(values), -rounded, rounded)


@functools.partial(jax.jit, static_argnames=("block_size", "axis"))
def _nvfp4_quantize(x, per_tensor_scale, *, block_size: int, axis: int):
    block_scale = true_divide(_block_amax(x, block_size, axis), jnp.float32(_FP4_MAX))
    if per_tensor_scale is not None:
        block_scale = true_divide(block_scale, per_tensor_scale)
    scales = jnp.clip(block_scale, _E4M3_EPS, _E4M3_MAX).astype(jnp.float8_e4m3fn)
    inverse = true_divide(jnp.float32(1.0), scales.astype(jnp.float32))
    if per_tensor_scale is not None:
        inverse = true_divide(true_divide(jnp.float32(1.0), per_tensor_scale), scales.astype(jnp.float32))
    scaled = x * _expand(inverse, x.shape, axis, block_size)
    return formats.cast_float4(scaled), scales


def _block_amax(x, block_size: int, axis: int) -> jax.Array:
    """max |x| over each block along ``axis`` (NaN if the block holds one); a short last block is padded with 0."""
    moved = jnp.moveaxis(jnp.abs(x), axis, -1)
    length = moved.shape[-1]
    blocks = -(-length // block_size)
    padded = jnp.pad(moved, [(0, 0)] * (moved.ndim - 1) + [(0, blocks * block_size - length)])
    amax = jnp.max(padded.reshape(*moved.shape[:-1], blocks, block_size), axis=-1)
    return jnp.moveaxis(amax, -1, axis)


def _expand(per_block, shape, axis: int, block_size: int) -> jax.Array:
    repeated = jnp.repeat(per_block, block_size, axis=axis, total_repeat_length=per_block.shape[axis] * block_size)
    return jax.lax.slice_in_dim(repeated, 0, shape[axis], axis=axis)


def _mx_format(fmt) -> MXFormat:
    if isinstance(fmt, MXFormat):
        return fmt
    if isinstance(fmt, str):
        if fmt not in MX_FORMATS:
            raise ValueError(f"fmt must be one of {sorted(MX_FORMATS)}, got {fmt!r:.80}")
        return MX_FORMATS[fmt]
    raise TypeError(f"fmt must be an MXFormat or a format name, got {type(fmt).__name__}")


def _block_geometry(x, axis, block_size) -> tuple[int, int]:
    block_size = _validate.check_int(block_size, "block_size", low=1)
    axis = _validate.check_int(axis, "axis")
    if x.ndim == 0 or not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis must lie in [{-x.ndim}, {x.ndim - 1}] for a {x.ndim}-d array, got {axis}")
    return axis % x.ndim, block_size


def _check_scales_shape(shape, scales_shape, axis: int, block_size: int) -> None:
    expected = tuple(shape[:axis]) + (-(-shape[axis] // block_size),) + tuple(shape[axis + 1 :])
    if tuple(scales_shape) != expected:
        raise ValueError(
            f"scales must have shape {expected} (one per block of {block_size}), got {tuple(scales_shape)}"
        )
