"""onnxruntime's ``com.microsoft`` quantized operators, bit for bit with its x86-64 CPU kernels.

onnxruntime's quantizer writes these operators into QOperator models (QGemm, QLinearAdd, QLinearMul, QLinearConcat,
QLinearAveragePool, QLinearGlobalAveragePool, QLinearLeakyRelu, QLinearSigmoid), and its graph optimiser creates
them (and MatMulIntegerToFloat, MatMulNBits) from QDQ node units (:mod:`quantref.runtimes.onnx_qdq`). They are not
in the ONNX standard: each rule here follows the MLAS kernel that onnxruntime 1.32 runs on an x86-64 CPU with AVX2
(where a kernel has several implementations, the AVX2 one; MatMulNBits aside), with the roundings in the same order:

- **QGemm** ``(A, s_a, z_a, B, s_b, z_b, C, s_y, z_y)``: ``acc = Σ (a − z_a)(b − z_b) + C`` in int32 (``C`` the
  int32 bias), then QLinearConv's requantization with ``M = f32(f32(f32(α s_a) s_b) / s_y)``; without ``s_y`` the
  float output ``f32(acc) · f32(f32(α s_a) s_b)``.
- **MatMulIntegerToFloat** ``(A, B, s_a, s_b, z_a, z_b)``: ``f32(acc) · f32(s_a s_b)``.
- **MatMulNBits** with ``accuracy_level=4`` (4- or 8-bit weights in blocks of 32): the activations quantized to
  int8 per row and block, int32 lane sums and fused multiply-adds in the order of MLAS's AVX512-VNNI kernel
  (:mod:`quantref.runtimes.onnx_nbits`, the one kernel here that follows AVX512-VNNI rather than AVX2).
- **QLinearAdd**: with ``r_a = f32(s_a / s_c)``, ``r_b = f32(s_b / s_c)`` and
  ``k = f32(z_c − fma(r_a, z_a, f32(r_b z_b)))``, ``y = sat(rne(fma(a, r_a, fma(b, r_b, k))))`` — fused
  multiply-adds (the AVX2 kernel), exact here whatever the backend; where ``a`` is the broadcast operand of its
  span the two fused multiply-adds swap.
- **QLinearMul**: ``y = sat(rne(f32(f32(acc) · M) + z_c))`` with ``acc = (a − z_a)(b − z_b)`` and
  ``M = f32(f32(s_a s_b) / s_c)`` — the zero point added *before* rounding, unlike QLinearConv.
- **QLinearConcat, QLinearLeakyRelu, QLinearSigmoid**: a 256-entry table per input, ``table[q] =
  QuantizeLinear(f(DequantizeLinear(q)))``, applied to each code (a plain copy where an input's scale and zero point
  are the output's). Sigmoid's ``f`` is MLAS's own logistic (its AVX2/FMA3 kernel: the input clamped to
  [−18, 18], Eigen's rational approximation ``p(x)/q(x) + ½`` with the polynomials evaluated by fused
  multiply-adds, the result clamped at 0), so the table is onnxruntime's bit for bit.
- **QLinearGlobalAveragePool**: ``acc = Σ x − z_x · n`` in int32, requantized with
  ``M = f32(s_x / f32(s_y · n))``.
- **QLinearAveragePool**: the global pool when the window covers the whole image without padding; otherwise each
  code dequantized, the window summed in float32 in row-major order, divided by its size, and quantized as
  ``sat(rne(f32(f32(v / s_y) + z_y)))``.
- **QLinearSoftmax**: a 256-entry float32 table ``exp((i − 255 + shift) · s_x)`` (in double, ``shift`` keeping a
  row's sum finite), each row's codes shifted so that its maximum reads the top entry, the row summed in float32
  in order, and ``y = min(rne(f32(e · ⌊1/s_y⌋) / sum) + z_y, q_max)``.

References:
  onnxruntime ``contrib_ops/cpu/quantization/`` (quant_gemm.cc, matmul_integer_to_float.cc, qlinear_binary_op.cc,
  matmul_nbits.cc, qlinear_concat.cc, qlinear_lookup_table.cc, qlinear_activations.cc, qlinear_global_average_pool.cc,
  qlinear_pool.cc); ``core/mlas/lib/`` (qladd.cpp, intrinsics/avx2/qladd_avx2.cpp, qlmul.cpp, qpostprocessor.cpp,
  qlgavgpool.cpp, quantize.cpp). The operators' schemas: onnxruntime ``docs/ContribOperators.md``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from quantref import _validate
from quantref.affine import true_divide
from quantref.runtimes import _arith, onnx_float, onnx_nbits, onnx_ops
from quantref.runtimes import onnx as qonnx
from quantref.runtimes import onnx_integer as qinteger
from quantref.runtimes.onnx_ops import Op

__all__ = ["OPS"]

OPS: dict[str, Op] = {}
_EIGHT_BIT = (np.dtype(np.int8), np.dtype(np.uint8))


def _code_type(value, name: str) -> np.dtype:
    dtype = np.dtype(value.dtype)
    if dtype not in _EIGHT_BIT:
        raise TypeError(f"{name} must be int8 or uint8, got {dtype.name}")
    return dtype


def _scalar(value, name: str) -> jax.Array:
    """A per-tensor float32 scale (float16 widened), checked when known."""
    array = _validate.as_array(value, name)
    if np.dtype(array.dtype) == np.float16:
        array = array.astype(jnp.float32) if isinstance(array, jax.Array) else array.astype(np.float32)
    return _validate.scalar_scale(array, name)


def _zero_point(value, dtype: np.dtype, name: str) -> jax.Array:
    if value is None:
        return jnp.zeros((), jnp.int32)
    return _validate.scalar_zero_point(value, name).astype(jnp.int32) if dtype in _EIGHT_BIT else value


def _saturate(values: jax.Array, dtype: np.dtype) -> jax.Array:
    """cvtps2dq (round half to even; NaN and out-of-range give INT32_MIN), then saturating packs to 8 bits."""
    info = np.iinfo(dtype)
    codes = _arith.float_to_int32(jnp.round(values))
    return jnp.clip(codes, info.min, info.max).astype(dtype)


# ----------------------------------------------------------------------------------------------------------------
# QGemm and MatMulIntegerToFloat


def _qgemm(inputs, attributes, context):
    a, a_scale, a_zero_point, b, b_scale, b_zero_point = inputs[:6]
    bias = inputs[6] if len(inputs) > 6 else None
    y_scale = inputs[7] if len(inputs) > 7 else None
    y_zero_point = inputs[8] if len(inputs) > 8 else None
    a = a.T if attributes.get("transA", 0) else a
    b = b.T if attributes.get("transB", 0) else b
    acc = qinteger.matmul_integer(a, b, a_zero_point, b_zero_point)
    if bias is not None:
        acc = acc + jnp.asarray(bias, jnp.int32).reshape(_bias_shape(bias, acc.shape))
    alpha = jnp.float32(attributes.get("alpha", 1.0))
    scales = (alpha * _scalar(a_scale, "a_scale")) * _per_column(b_scale, b.shape[-1], "b_scale")
    if y_scale is None:
        return [acc.astype(jnp.float32) * scales]
    dtype = _code_type(a, "A")
    multiplier = true_divide(scales, _scalar(y_scale, "y_scale"))
    info = np.iinfo(dtype)
    zero_point = _zero_point(y_zero_point, dtype, "y_zero_point")
    return [qonnx.requantize(acc, multiplier, zero_point, info.min, info.max).astype(dtype)]


def _bias_shape(bias, acc_shape) -> tuple[int, ...]:
    shape = tuple(bias.shape)
    if int(np.prod(shape)) == 1:
        return ()
    if len(shape) == 1 or shape[0] == 1:
        return (1, acc_shape[1])
    return shape


def _per_column(scale, columns: int, name: str) -> jax.Array:
    array = _validate.as_array(scale, name)
    if array.size == 1:
        return _scalar(array.reshape(()), name)
    if np.dtype(array.dtype) == np.float16:
        array = array.astype(np.float32)
    return _validate.per_index_scale(array, name, columns, "per column")


def _matmul_integer_to_float(inputs, attributes, context):
    a, b, a_scale, b_scale = inputs[:4]
    a_zero_point = inputs[4] if len(inputs) > 4 else None
    b_zero_point = inputs[5] if len(inputs) > 5 else None
    bias = inputs[6] if len(inputs) > 6 else None
    acc = qinteger.matmul_integer(a, b, a_zero_point, b_zero_point)
    y = acc.astype(jnp.float32) * (_scalar(a_scale, "a_scale") * _per_column(b_scale, b.shape[-1], "b_scale"))
    return [y if bias is None else _arith.rounded(y) + bias]


OPS["QGemm"] = Op(_qgemm, (6, 9), 1, ("alpha", "transA", "transB"))
OPS["MatMulIntegerToFloat"] = Op(_matmul_integer_to_float, (4, 7), 1, ())
OPS["MatMulNBits"] = Op(
    lambda inputs, attributes, context: [onnx_nbits.matmul_nbits_op(inputs, attributes)],
    (3, 6),
    1,
    ("K", "N", "bits", "block_size", "accuracy_level", "weight_prepacked"),
)


# ----------------------------------------------------------------------------------------------------------------
# QLinearAdd and QLinearMul


def _binary_parameters(inputs):
    a, a_scale, a_zero_point, b, b_scale, b_zero_point, c_scale = inputs[:7]
    c_zero_point = inputs[7] if len(inputs) > 7 else None
    dtype = _code_type(a, "A")
    if np.dtype(b.dtype) != dtype:
        raise TypeError(f"A and B must have the same type, got {dtype.name} and {np.dtype(b.dtype).name}")
    scales = [
        _scalar(value, name) for value, name in ((a_scale, "A_scale"), (b_scale, "B_scale"), (c_scale, "C_scale"))
    ]
    zero_points = [
        _zero_point(value, dtype, name)
        for value, name in (
            (a_zero_point, "A_zero_point"),
            (b_zero_point, "B_zero_point"),
            (c_zero_point, "C_zero_point"),
        )
    ]
    return a, b, dtype, scales, zero_points


def _broadcast_in_span(first_shape, second_shape) -> bool:
    """Whether the first operand is the one onnxruntime's broadcaster holds constant over the innermost span."""
    shape = np.broadcast_shapes(tuple(first_shape), tuple(second_shape))
    ndim = len(shape)
    first = (1,) * (ndim - len(first_shape)) + tuple(first_shape)
    second = (1,) * (ndim - len(second_shape)) + tuple(second_shape)
    for axis in reversed(range(ndim)):
        if shape[axis] > 1:
            return first[axis] == 1 and second[axis] != 1
    return False


def _qlinear_add(inputs, attributes, context):
    a, b, dtype, (sa, sb, sc), (za, zb, zc) = _binary_parameters(inputs)
    ratio_a, ratio_b = true_divide(sa, sc), true_divide(sb, sc)
    fixed_b = _arith.rounded(ratio_b * zb.astype(jnp.float32))
    fixed = zc.astype(jnp.float32) - _arith.fma_small_int(za.astype(jnp.float32), ratio_a, fixed_b)
    a_float, b_float = a.astype(jnp.float32), b.astype(jnp.float32)
    if _broadcast_in_span(a.shape, b.shape):
        values = _arith.fma_small_int(b_float, ratio_b, _arith.fma_small_int(a_float, ratio_a, fixed))
    else:
        values = _arith.fma_small_int(a_float, ratio_a, _arith.fma_small_int(b_float, ratio_b, fixed))
    return [_saturate(values, dtype)]


def _qlinear_mul(inputs, attributes, context):
    a, b, dtype, (sa, sb, sc), (za, zb, zc) = _binary_parameters(inputs)
    product = (a.astype(jnp.int32) - za) * (b.astype(jnp.int32) - zb)
    multiplier = true_divide(sa * sb, sc)
    values = _arith.rounded(product.astype(jnp.float32) * multiplier) + zc.astype(jnp.float32)
    return [_saturate(values, dtype)]


OPS["QLinearAdd"] = Op(_qlinear_add, (7, 8), 1, ())
OPS["QLinearMul"] = Op(_qlinear_mul, (7, 8), 1, ())


# ----------------------------------------------------------------------------------------------------------------
# Lookup tables: QLinearConcat, QLinearLeakyRelu, QLinearSigmoid


def _table(dtype: np.dtype, x_scale, x_zero_point, y_scale, y_zero_point, transform) -> jax.Array:
    """onnxruntime's QlinearBuildLookupTable: entry i (the code whose byte is i) quantizes f(dequantize(code))."""
    codes = np.arange(256, dtype=np.uint8).view(dtype)
    dequantized = qonnx.dequantize_linear(codes, x_scale, _typed(x_zero_point, dtype))
    return qonnx.quantize_linear(transform(dequantized), y_scale, _typed(y_zero_point, dtype))


def _typed(zero_point, dtype: np.dtype):
    return np.zeros((), dtype) if zero_point is None else zero_point


def _lookup(x, table) -> jax.Array:
    index = jax.lax.bitcast_convert_type(x, jnp.uint8) if np.dtype(x.dtype) == np.int8 else x
    return jnp.take(table, index.astype(jnp.int32))


def _unary_lookup(transform):
    def impl(inputs, attributes, context):
        x, x_scale, x_zero_point, y_scale = inputs[:4]
        y_zero_point = inputs[4] if len(inputs) > 4 else None
        dtype = _code_type(x, "X")
        return [_lookup(x, _table(dtype, x_scale, x_zero_point, y_scale, y_zero_point, transform(attributes)))]

    return impl


def _leaky_relu(attributes):
    alpha = jnp.float32(attributes.get("alpha", 0.01))
    return lambda v: jnp.where(v >= 0, v, v * alpha)


def _qlinear_concat(inputs, attributes, context):
    y_scale, y_zero_point = inputs[0], inputs[1]
    tuples = [inputs[i : i + 3] for i in range(2, len(inputs), 3)]
    if not tuples or any(len(t) != 3 for t in tuples):
        raise ValueError("QLinearConcat takes Y_scale, Y_zero_point and then (X, X_scale, X_zero_point) triples")
    dtype = np.dtype(y_zero_point.dtype)
    parts = []
    for x, x_scale, x_zero_point in tuples:
        if _same(x_scale, y_scale) and _same(x_zero_point, y_zero_point):
            parts.append(x)
        else:
            parts.append(_lookup(x, _table(dtype, x_scale, x_zero_point, y_scale, y_zero_point, lambda v: v)))
    return [jnp.concatenate(parts, axis=int(attributes["axis"]))]


def _same(first, second) -> bool:
    """Equal constant scalars (onnxruntime copies such an input instead of looking it up)."""
    if not (_validate.is_concrete(first) and _validate.is_concrete(second)):
        return False
    return bool(np.asarray(first).reshape(-1)[0] == np.asarray(second).reshape(-1)[0])


OPS["QLinearLeakyRelu"] = Op(_unary_lookup(_leaky_relu), (4, 5), 1, ("alpha",))
OPS["QLinearSigmoid"] = Op(_unary_lookup(lambda attributes: onnx_float.mlas_logistic), (4, 5), 1, ())


OPS["QLinearConcat"] = Op(_qlinear_concat, (5, -1), 1, ("axis",))


# ----------------------------------------------------------------------------------------------------------------
# QLinearGlobalAveragePool and QLinearAveragePool


def _global_pool(x, x_scale, x_zero_point, y_scale, y_zero_point, dtype, axes) -> jax.Array:
    size = int(np.prod([x.shape[axis] for axis in axes]))
    zx, zy = _zero_point(x_zero_point, dtype, "x_zero_point"), _zero_point(y_zero_point, dtype, "y_zero_point")
    acc = jnp.sum(x.astype(jnp.int32), axis=axes, keepdims=True) - zx * size
    multiplier = true_divide(_scalar(x_scale, "x_scale"), _scalar(y_scale, "y_scale") * jnp.float32(size))
    info = np.iinfo(dtype)
    return qonnx.requantize(acc, multiplier, zy, info.min, info.max).astype(dtype)


def _qlinear_global_average_pool(inputs, attributes, context):
    x, x_scale, x_zero_point, y_scale, y_zero_point = (inputs + [None])[:5]
    dtype = _code_type(x, "X")
    channels_last = bool(attributes.get("channels_last", 0))
    axes = tuple(range(1, x.ndim - 1)) if channels_last else tuple(range(2, x.ndim))
    return [_global_pool(x, x_scale, x_zero_point, y_scale, y_zero_point, dtype, axes)]


def _qlinear_average_pool(inputs, attributes, context):
    x, x_scale, x_zero_point, y_scale, y_zero_point = (inputs + [None])[:5]
    dtype = _code_type(x, "X")
    channels_last = bool(attributes.get("channels_last", 0))
    if channels_last:
        x = jnp.moveaxis(x, -1, 1)
    geometry = onnx_ops.pool_geometry(x.shape, attributes, "QLinearAveragePool")
    if geometry.kernel == tuple(x.shape[2:]) and not any(geometry.pads):
        y = _global_pool(x, x_scale, x_zero_point, y_scale, y_zero_point, dtype, tuple(range(2, x.ndim)))
    else:
        values = qonnx.dequantize_linear(x, x_scale, _typed(x_zero_point, dtype))
        include_pad = bool(attributes.get("count_include_pad", 0))
        average = _window_average(values, geometry, include_pad)
        # (XLA would rewrite (a / b) / c as a / (b · c): each quotient is rounded on its own.)
        quotient = _arith.rounded(true_divide(_arith.rounded(average), _scalar(y_scale, "y_scale")))
        zy = _zero_point(y_zero_point, dtype, "y_zero_point")
        y = _saturate(quotient + zy.astype(jnp.float32), dtype)
    return [jnp.moveaxis(y, 1, -1) if channels_last else y]


def _window_average(values, geometry: onnx_ops.PoolGeometry, count_include_pad: bool) -> jax.Array:
    """Window sums in row-major window order (one rounding per addition, as the kernel's loop), over the input
    positions only, divided by the window's size (the whole kernel when ``count_include_pad``)."""
    total, count = None, None
    for offsets in np.ndindex(*geometry.kernel):
        candidate, valid = values, np.ones((1,) * values.ndim, bool)
        for axis, (offset, size, out, s, d, (begin, _)) in enumerate(
            zip(offsets, values.shape[2:], geometry.out_sizes, geometry.strides, geometry.dilations, geometry.padding)
        ):
            positions = np.arange(out) * s - begin + offset * d
            inside = (positions >= 0) & (positions < size)
            candidate = jnp.take(candidate, np.clip(positions, 0, size - 1), axis=axis + 2)
            shape = [1] * values.ndim
            shape[axis + 2] = out
            valid = valid & inside.reshape(shape)
        term = jnp.where(valid, candidate, jnp.float32(0))
        total = term if total is None else _arith.rounded(total) + term
        count = valid.astype(np.int64) if count is None else count + valid
    size = np.prod(geometry.kernel) if count_include_pad else count
    return true_divide(total, jnp.asarray(np.maximum(size, 1), jnp.float32))


_POOL = onnx_ops.POOL_ATTRIBUTES + ("channels_last", "count_include_pad")
OPS["QLinearGlobalAveragePool"] = Op(_qlinear_global_average_pool, (5, 5), 1, ("channels_last",))
OPS["QLinearAveragePool"] = Op(_qlinear_average_pool, (4, 5), 1, _POOL)
# onnxruntime's com.microsoft QuantizeLinear/DequantizeLinear (16-bit types before opset 21): the standard rules.
OPS["QuantizeLinear"] = onnx_ops.OPS["QuantizeLinear"]
OPS["DequantizeLinear"] = onnx_ops.OPS["DequantizeLinear"]


# ----------------------------------------------------------------------------------------------------------------
# QLinearSoftmax: a float32 exp table, sums in order, a floored output scale


def _softmax_table(x_scale, reduce_len: int, signed: bool) -> jax.Array:
    """onnxruntime's QlinearBuildLookupTableUint32: ``table[i] = f32(exp((i − 255 + shift) · s_x))`` in double,
    ``shift = max(0, log(FLT_MAX / n) − 5) / s_x`` keeping the row sum finite; signed inputs index from −128."""
    scale = jnp.asarray(x_scale, jnp.float64).reshape(())
    ceiling = jnp.float32(np.finfo(np.float32).max) / jnp.float32(reduce_len)
    shift = jnp.maximum(0.0, jnp.log(ceiling.astype(jnp.float64)) - 5.0) / scale
    steps = jnp.arange(256, dtype=jnp.float64)
    values = jnp.exp((steps - 255 + shift) * scale).astype(jnp.float32)
    if signed:  # entry i is stored at index uint8(i - 128)
        values = jnp.roll(values, -128)
    return values


def _qlinear_softmax(inputs, attributes, context):
    x, x_scale, x_zero_point, y_scale = inputs[:4]
    y_zero_point = inputs[4] if len(inputs) > 4 else None
    dtype = _code_type(x, "X")
    opset = int(attributes.get("opset", 13))
    axis = int(attributes.get("axis", -1 if opset >= 13 else 1)) % x.ndim
    if opset >= 13:
        moved = jnp.moveaxis(x, axis, -1)
        rows = moved.reshape(-1, moved.shape[-1])
    else:
        rows = x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)
    length = rows.shape[-1]
    signed = dtype == np.dtype(np.int8)
    table = _softmax_table(_scalar(x_scale, "x_scale"), length, signed)
    wide = rows.astype(jnp.int32)
    top = jnp.max(wide, axis=-1, keepdims=True)
    # uint8: the table shifted so that each row's maximum reads entry 255; int8: codes moved so the maximum is 127.
    index = (wide + 255 - top) if not signed else ((wide + 127 - top) & 255)
    exps = jnp.take(table, index)
    total = exps[:, 0]
    for column in range(1, length):  # the kernel's running sum, one rounding per addition
        total = _arith.rounded(total) + exps[:, column]
    scale = jnp.floor(true_divide(jnp.float32(1.0), _scalar(y_scale, "y_scale")))
    quotient = true_divide(_arith.rounded(exps * scale), total[:, None])
    zero_point = _zero_point(y_zero_point, dtype, "y_zero_point")
    codes = _arith.float_to_int32(jnp.round(quotient)) + zero_point
    # Saturated at the type's top only: the ratio is never negative.
    y = jnp.minimum(codes, np.iinfo(dtype).max).astype(dtype)
    if opset >= 13:
        return [jnp.moveaxis(y.reshape(moved.shape), -1, axis)]
    return [y.reshape(x.shape)]


OPS["QLinearSoftmax"] = Op(_qlinear_softmax, (4, 5), 1, ("axis", "opset"))
