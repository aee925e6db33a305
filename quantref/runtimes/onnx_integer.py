"""ONNX integer operators, bit-exact with onnxruntime's CPU execution provider: MatMulInteger, ConvInteger,
QLinearMatMul, QLinearConv and their requantization.

Conventions as in :mod:`quantref.runtimes.onnx` (whose namespace re-exports every function here): numpy or JAX
inputs whose dtype is their ONNX type, JAX results of the exact ONNX output dtype, validation in Python before
tracing, ``jax.jit``-compatible, and ``flavor="reference"`` for the ONNX reference evaluator where it differs.

$$
acc = \\sum_k (a_{ik} - z_a)(b_{kj} - z_b) \\;(\\text{int32}), \\qquad
y = \\operatorname{sat}\\big(\\operatorname{rne}(f_{32}(f_{32}(acc)\\cdot M)) + z_y\\big),
\\quad M = f_{32}(f_{32}(s_a s_b) / s_y).
$$

Scales may be float32 or float16 (QLinearMatMul opset 21): onnxruntime widens float16 scales to float32 exactly and
computes $M$ in float32; the reference evaluator computes $M$ in float16 (each product and quotient rounded to
float16) before its float64 product.

References:
  ONNX operator specification, https://onnx.ai/onnx/operators/ (MatMulInteger, ConvInteger, QLinearMatMul,
  QLinearConv). onnxruntime ``core/providers/cpu/math/matmul_integer.cc``,
  ``core/providers/cpu/quantization/conv_integer.cc``, ``qlinearconv.cc``, ``quantize_linear_matmul.cc`` and
  ``core/mlas/lib/quantize.cpp`` (MlasRequantizeOutput); onnx ``onnx/reference/ops/op_qlinear_matmul.py``,
  ``op_qlinear_conv.py``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from quantref import _validate
from quantref.affine import true_divide as _divide  # XLA rewrites x / constant as x * (1 / constant)
from quantref.runtimes import _arith
from quantref.runtimes import _onnx_types as _types

__all__ = ["matmul_integer", "conv_integer", "qlinear_matmul", "qlinear_conv", "requantize"]


# ----------------------------------------------------------------------------------------------------------------
# MatMulInteger / ConvInteger: exact int32 accumulation


# ----------------------------------------------------------------------------------------------------------------
# Exact integer accumulation, in float32 where that is exact: XLA's CPU backend has fast float convolutions and
# matrix products but scalar-speed integer ones. A sum of integer products is exact in float32, in any order, when
# every partial sum stays below 2^24; the bound is checked before tracing, from the operand types and zero points
# and, when the weights are known (initializers), from the weights themselves. Otherwise the weights are split into
# high and low parts (two float products), and beyond that the product runs in int32.

_FLOAT_EXACT = 2**24
_HIGHEST = jax.lax.Precision.HIGHEST


def _operand_bound(dtype: np.dtype, zero_point) -> int:
    """The largest |q - z| over the type's codes (the zero point's value when known)."""
    info = np.iinfo(dtype)
    if _validate.is_concrete(zero_point):
        values = np.asarray(zero_point, np.int64)
        return int(max(np.max(values - info.min), np.max(info.max - values)))
    return int(info.max) - int(info.min)


def _accumulation(x_bound: int, w, w_zero_point, reduce_axes: tuple[int, ...]) -> str:
    """How to sum x_k w_k exactly: "float" (one float32 product), "split" (two) or "int" (int32). ``w_zero_point`` is
    already shaped to broadcast against ``w``."""
    count = int(np.prod([w.shape[axis] for axis in reduce_axes]))
    span = _operand_bound(np.dtype(w.dtype), w_zero_point)
    if _validate.is_concrete(w) and _validate.is_concrete(w_zero_point):
        centred = np.asarray(w, np.int64) - np.asarray(w_zero_point, np.int64)
        parts = (centred, centred >> 4, centred & 15)
        sums = [int(np.max(np.sum(np.abs(part), axis=reduce_axes), initial=0)) for part in parts]
    else:
        sums = [count * span, count * ((span >> 4) + 1), count * 15]
    if x_bound * sums[0] < _FLOAT_EXACT:
        return "float"
    if x_bound * max(sums[1:]) < _FLOAT_EXACT:
        return "split"
    return "int"


def _weight_parts(w32: jax.Array, mode: str) -> list[tuple[jax.Array, int]]:
    """The centred weights as (part, factor) pairs with w = sum(factor * part), each part's product exact."""
    if mode == "split":
        return [(w32 >> 4, 16), (w32 & 15, 1)]
    return [(w32, 1)]


def _combine(products, mode: str) -> jax.Array:
    if mode == "int":
        return products[0]
    total = None
    for product, factor in products:
        value = product.astype(jnp.int32) * factor
        total = value if total is None else total + value
    return total


@functools.partial(jax.jit, static_argnames=("mode",))
def _matmul_int32(a, b, a_zero_point, b_zero_point, *, mode: str = "int"):
    a32 = a.astype(jnp.int32) - a_zero_point.astype(jnp.int32)
    b32 = b.astype(jnp.int32) - b_zero_point.astype(jnp.int32)
    if mode == "int":
        return jnp.matmul(a32, b32, preferred_element_type=jnp.int32)
    a_float = a32.astype(jnp.float32)
    products = [
        (jnp.matmul(a_float, part.astype(jnp.float32), precision=_HIGHEST), factor)
        for part, factor in _weight_parts(b32, mode)
    ]
    return _combine(products, mode)


def _matmul_mode(a, a_zero_point, b, b_zero_point) -> str:
    if b.ndim < 2:
        return "int"
    return _accumulation(_operand_bound(np.dtype(a.dtype), a_zero_point), b, b_zero_point, (b.ndim - 2,))


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
    a = _validate.typed_array(a, "a", _types.EIGHT_BIT)
    b = _validate.typed_array(b, "b", _types.EIGHT_BIT)
    _, columns = _validate.check_matmul_shapes(a.shape, b.shape)
    a_zp = _validate.operand_zero_point(a_zero_point, a, "a_zero_point", None, "")
    b_zp = _validate.operand_zero_point(b_zero_point, b, "b_zero_point", columns if b.ndim > 1 else None, "per column")
    return _matmul_int32(a, b, a_zp, b_zp, mode=_matmul_mode(a, a_zp, b, b_zp))


@functools.partial(jax.jit, static_argnames=("strides", "pads", "dilations", "group", "mode"))
def _conv_int32(x, w, x_zero_point, w_zero_point, *, strides, pads, dilations, group, mode: str = "int"):
    """The int32 accumulators ``(N, M, H_out, W_out)`` of ConvInteger (see :func:`_conv_channels_last`)."""
    acc = _conv_channels_last(
        x, w, x_zero_point, w_zero_point, strides=strides, pads=pads, dilations=dilations, group=group, mode=mode
    )
    return acc.transpose(0, 3, 1, 2)


def _conv_channels_last(
    x, w, x_zero_point, w_zero_point, *, strides, pads, dilations, group, mode: str, keep_float: bool = False
):
    """The int32 accumulators of ConvInteger, channels last: ``(N, H_out, W_out, M)`` for an NCHW ``x``.

    $$
    acc_{n,i,j,m} = \\sum_{c,p,q} (x_{n,c,\\,i s_0 + p d_0 - t,\\, j s_1 + q d_1 - l} - z_x)(w_{m,c,p,q} - z_{w,m})
    $$

    Computed channels last (NHWC), the layout XLA's CPU convolutions and matrix products run in: the callers
    transpose back to NCHW at the end, and XLA cancels a transpose back to NHWC in the next convolution or pool,
    so that a chain of convolutions never moves its activations between layouts.

    Args:
      x: integer ``(N, C, H, W)``.
      w: integer ``(M, C/group, kH, kW)``.
      x_zero_point: scalar.
      w_zero_point: scalar or ``(M,)``.
      strides, pads, dilations, group: the ONNX geometry (pads ``(top, left, bottom, right)``).
      mode: ``"float"``, ``"split"`` or ``"int"`` (see :func:`_accumulation`).
      keep_float: with ``mode="float"``, return the float32 sums themselves (exact integers) rather than int32:
        XLA's CPU backend converts float32 to int32 slowly (it saturates), as slowly as the convolution runs.

    Returns:
      int32 ``(N, H_out, W_out, M)`` (float32 with ``keep_float`` and ``mode="float"``).
    """
    # Padding happens in the zero-point-subtracted domain: a padded x element contributes 0.
    x32 = (x.astype(jnp.int32) - x_zero_point.astype(jnp.int32)).transpose(0, 2, 3, 1)
    w32 = w.astype(jnp.int32) - w_zero_point.astype(jnp.int32).reshape((-1, 1, 1, 1) if w_zero_point.ndim else ())
    geometry = dict(
        window_strides=strides,
        padding=((pads[0], pads[2]), (pads[1], pads[3])),
        rhs_dilation=dilations,
        dimension_numbers=("NHWC", "OIHW", "NHWC"),
        feature_group_count=group,
    )
    if mode == "int":
        return jax.lax.conv_general_dilated(x32, w32, preferred_element_type=jnp.int32, **geometry)
    x_float = x32.astype(jnp.float32)
    products = [
        (_conv_float(x_float, part.astype(jnp.float32), geometry, strides, pads, dilations, group), factor)
        for part, factor in _weight_parts(w32, mode)
    ]
    if keep_float and mode == "float":
        return products[0][0]
    return _combine(products, mode)


_TAPS = 16  # at most this many products per output: a sum of shifted slices beats XLA's CPU convolution


def _conv_float(x, w, geometry, strides, pads, dilations, group):
    """An exact float32 convolution of integers, channels last (``x`` NHWC, ``w`` OIHW, the result NHWC): every
    partial sum is below 2^24, so any order gives the same sum. In the fastest form XLA's CPU backend offers: a
    matrix product when the kernel covers the whole (unpadded) input, a sum of shifted slices when each output has
    few products (a 1-channel input, a depthwise convolution), else XLA's convolution."""
    out_channels, per_group, kernel_h, kernel_w = w.shape
    if group == 1 and not any(pads) and (kernel_h, kernel_w) == tuple(x.shape[1:3]):
        # (h, w, c) order on both sides: the input's rows are contiguous channels last
        rows = w.transpose(0, 2, 3, 1).reshape(out_channels, -1).T
        flat = jnp.matmul(x.reshape(x.shape[0], -1), rows, precision=_HIGHEST)
        return flat.reshape(x.shape[0], 1, 1, out_channels)
    if per_group * kernel_h * kernel_w > _TAPS:
        return jax.lax.conv_general_dilated(x, w, precision=_HIGHEST, **geometry)
    # Materialized once: XLA would otherwise read an unpadded tap from x's producer, recomputed in every output.
    padded = jax.lax.optimization_barrier(jnp.pad(x, ((0, 0), (pads[0], pads[2]), (pads[1], pads[3]), (0, 0))))
    out_h = (padded.shape[1] - dilations[0] * (kernel_h - 1) - 1) // strides[0] + 1
    out_w = (padded.shape[2] - dilations[1] * (kernel_w - 1) - 1) // strides[1] + 1
    # input channel c of output channel m's group: (m // (out_channels / group)) * per_group + c
    groups = np.arange(out_channels) // (out_channels // group)
    total = None
    for c in range(per_group):
        source = jnp.take(padded, groups * per_group + c, axis=3) if (group > 1 or per_group > 1) else padded
        for i in range(kernel_h):
            for j in range(kernel_w):
                top, left = i * dilations[0], j * dilations[1]
                window = source[
                    :,
                    top : top + strides[0] * (out_h - 1) + 1 : strides[0],
                    left : left + strides[1] * (out_w - 1) + 1 : strides[1],
                    :,
                ]
                term = window * w[:, c, i, j]
                total = term if total is None else total + term
    return total


def _conv_mode(x, x_zero_point, w, w_zero_point) -> str:
    w_zero_point = w_zero_point.reshape((-1, 1, 1, 1) if w_zero_point.ndim else ())
    return _accumulation(_operand_bound(np.dtype(x.dtype), x_zero_point), w, w_zero_point, (1, 2, 3))


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
    x = _validate.typed_array(x, "x", _types.EIGHT_BIT)
    w = _validate.typed_array(w, "w", _types.EIGHT_BIT)
    _validate.check_conv_geometry(x.shape, w.shape, strides, pads, dilations, group)
    strides, pads, dilations = (tuple(int(v) for v in value) for value in (strides, pads, dilations))
    x_zp = _validate.operand_zero_point(x_zero_point, x, "x_zero_point", None, "")
    w_zp = _validate.operand_zero_point(w_zero_point, w, "w_zero_point", w.shape[0], "per output channel")
    mode = _conv_mode(x, x_zp, w, w_zp)
    return _conv_int32(x, w, x_zp, w_zp, strides=strides, pads=pads, dilations=dilations, group=int(group), mode=mode)


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


def _multiplier(first, second, y_scale, half, flavor):
    """M = f32(f32(s1 s2) / sy): two roundings, in this order, in onnxruntime and in the reference evaluator. With
    float16 scales (``half``) the reference evaluator rounds each step to float16 instead; onnxruntime widens them."""
    if half is None or flavor == "onnxruntime":
        return _divide(first * second, y_scale)
    product = (first * second).astype(half).astype(jnp.float32)
    return _divide(product, y_scale).astype(half).astype(jnp.float32)


def _output_codes(acc, first_scale, second_scale, y_scale, y_zero_point, out_dtype, half, flavor):
    """The int32 accumulator requantized with $M = f_{32}(f_{32}(s_1 s_2) / s_y)$ to the output's codes."""
    multiplier = _multiplier(first_scale, second_scale, y_scale, half, flavor)
    fmt = _types.INT_FORMATS[out_dtype]
    codes = _requantize(acc, multiplier, y_zero_point.astype(jnp.int32), qmin=fmt.qmin, qmax=fmt.qmax, flavor=flavor)
    return codes.astype(out_dtype)


@functools.partial(jax.jit, static_argnames=("out_dtype", "half", "flavor", "mode"))
def _qlinear_matmul(
    a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point, *, out_dtype, half, flavor, mode
):
    acc = _matmul_int32(a, b, a_zero_point, b_zero_point, mode=mode)
    return _output_codes(acc, a_scale, b_scale, y_scale, y_zero_point, out_dtype, half, flavor)


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
    flavor: _types.Flavor = "onnxruntime",
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
    _validate.check_choice(flavor, "flavor", _types.FLAVORS)
    a = _validate.typed_array(a, "a", _types.EIGHT_BIT)
    b = _validate.typed_array(b, "b", _types.EIGHT_BIT)
    _, columns = _validate.check_matmul_shapes(a.shape, b.shape)
    per_column = columns if b.ndim > 1 else None
    a_zp = _validate.operand_zero_point(a_zero_point, a, "a_zero_point", None, "")
    b_zp = _validate.operand_zero_point(b_zero_point, b, "b_zero_point", per_column, "per column")
    half = _half_scales(a_scale=a_scale, b_scale=b_scale, y_scale=y_scale)
    sa = _validate.scalar_scale(_widen(a_scale), "a_scale")
    if per_column:
        sb = _validate.per_index_scale(_widen(b_scale), "b_scale", columns, "per column")
    else:
        sb = _validate.scalar_scale(_widen(b_scale), "b_scale")
    sy = _validate.scalar_scale(_widen(y_scale), "y_scale")
    _validate.check_scale_product(sa, sb, "a_scale * b_scale")
    zy = _validate.scalar_zero_point(y_zero_point, "y_zero_point")
    mode = _matmul_mode(a, a_zp, b, b_zp)
    return _qlinear_matmul(
        a, sa, a_zp, b, sb, b_zp, sy, zy, out_dtype=np.dtype(zy.dtype), half=half, flavor=flavor, mode=mode
    )


@functools.partial(
    jax.jit,
    static_argnames=("out_dtype", "strides", "pads", "dilations", "group", "half", "flavor", "mode", "float_bias"),
)
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
    half,
    flavor,
    mode,
    float_bias=False,
):
    # Channels last until the end: the bias and the multipliers broadcast along the last axis. With exact float32
    # sums and a bias exact in float32 (|b| <= 2^24), f32(acc) + f32(b) is f32(acc + b) rounded once, as the int32
    # sum converted would be: the accumulator need not go through int32 (a slow conversion in XLA's CPU backend).
    acc = _conv_channels_last(
        x,
        w,
        x_zero_point,
        w_zero_point,
        strides=strides,
        pads=pads,
        dilations=dilations,
        group=group,
        mode=mode,
        keep_float=float_bias,
    )
    acc = acc + (bias.astype(jnp.float32) if float_bias and mode == "float" else bias)
    codes = _output_codes(acc, x_scale, w_scale, y_scale, y_zero_point, out_dtype, half, flavor)
    return codes.transpose(0, 3, 1, 2)


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
    flavor: _types.Flavor = "onnxruntime",
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
    _validate.check_choice(flavor, "flavor", _types.FLAVORS)
    x = _validate.typed_array(x, "x", _types.EIGHT_BIT)
    w = _validate.typed_array(w, "w", _types.EIGHT_BIT)
    _validate.check_conv_geometry(x.shape, w.shape, strides, pads, dilations, group)
    strides, pads, dilations = (tuple(int(v) for v in value) for value in (strides, pads, dilations))
    out_channels = w.shape[0]
    x_zp = _validate.operand_zero_point(x_zero_point, x, "x_zero_point", None, "")
    w_zp = _validate.operand_zero_point(w_zero_point, w, "w_zero_point", out_channels, "per output channel")
    half = _half_scales(x_scale=x_scale, w_scale=w_scale, y_scale=y_scale)
    sx = _validate.scalar_scale(_widen(x_scale), "x_scale")
    sw = _validate.per_index_scale(_widen(w_scale), "w_scale", out_channels, "per output channel")
    sy = _validate.scalar_scale(_widen(y_scale), "y_scale")
    _validate.check_scale_product(sx, sw, "x_scale * w_scale")
    zy = _validate.scalar_zero_point(y_zero_point, "y_zero_point")
    mode = _conv_mode(x, x_zp, w, w_zp)
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
        half=half,
        flavor=flavor,
        mode=mode,
        float_bias=flavor == "onnxruntime" and mode == "float" and _exact_in_float(bias),
    )


def _exact_in_float(values) -> bool:
    """Whether ``values`` are known (concrete) integers that float32 holds exactly: $|v| \\le 2^{24}$."""
    return _validate.is_concrete(values) and bool(np.all(np.abs(np.asarray(values, np.int64)) <= _FLOAT_EXACT))


def _half_scales(**scales) -> np.dtype | None:
    """The scales' half type (float16/bfloat16) when all of them have it, None when none does."""
    dtypes = {name: np.dtype(_validate.as_array(value, name).dtype) for name, value in scales.items()}
    halves = {dtype for dtype in dtypes.values() if dtype in _types.HALF_DTYPES}
    if not halves:
        return None
    if len(halves) > 1 or len(set(dtypes.values())) > 1:
        shown = ", ".join(f"{name} {dtype.name}" for name, dtype in dtypes.items())
        raise TypeError(f"float16/bfloat16 scales must all have the same type, got {shown}")
    return halves.pop()


def _widen(scale):
    """A float16/bfloat16 scale widened (exactly) to float32, for the float32 checks; other values unchanged."""
    array = _validate.as_array(scale, "scale")
    if np.dtype(array.dtype) in _types.HALF_DTYPES:
        return array.astype(np.float32) if isinstance(array, np.ndarray) else array.astype(jnp.float32)
    return scale
