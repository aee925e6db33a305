"""The float operators of :func:`~quantref.runtimes.onnx_graph.run_model`: what remains of a quantized graph.

A QDQ model is float Conv/MatMul/Gemm/Add/... nodes between QuantizeLinear/DequantizeLinear pairs, and even after
onnxruntime fuses its node units into integer kernels some float operators remain (a Softmax at the end, a
LayerNormalization, an int16 Conv that has no integer kernel). They are computed here in float32 with JAX:

- **bit-exact**, because IEEE 754 rounds each of them to one answer: elementwise Add, Sub, Mul, Div, Neg, Abs,
  Sqrt, Relu, LeakyRelu, Floor, Ceil, Round, Clip, Min, Max, Where, ReduceMin, ReduceMax and integer arithmetic
  (two's-complement wrap, division truncated toward zero) — except that which of two NaNs, and the sign of a zero
  result of Min/Max, are not reproduced;
- **float, not bit-exact**: operators that sum (MatMul, Gemm, Conv, AveragePool, GlobalAveragePool, ReduceSum,
  ReduceMean, Softmax, LayerNormalization) — onnxruntime's MLAS kernels sum in another order, blocked and
  vectorized — and transcendental ones (Exp, Log, Tanh, Erf, Gelu, Pow), which MLAS approximates with its
  own polynomials. Their results are within a few float32 ulps of onnxruntime's; a QuantizeLinear after them can
  move a code by one where the value lands near a rounding tie, and the tests count how many codes that moves.
- **Sigmoid** is bit-exact in the onnxruntime flavors for float32 and float16 (computed in float32 and rounded, as
  onnxruntime does): :func:`mlas_logistic` is MLAS's own approximation, operation for operation. float64 (Eigen's
  in onnxruntime) and the reference flavor compute the logistic function with JAX: float, not bit-exact.

Every flavor computes them the same way (the reference evaluator's numpy kernels are not reproduced either).

References:
  ONNX operator specification, https://onnx.ai/onnx/operators/. onnxruntime ``core/providers/cpu/math/``
  (element_wise_ops.cc, gemm.cc, matmul.cc, softmax.cc), ``core/providers/cpu/nn/`` (conv.cc, pool.cc,
  layer_norm_impl.cc), ``core/mlas/lib/`` (logistic.cpp, tanh.cpp, erf.cpp, compute.cpp).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from quantref.affine import true_divide
from quantref.runtimes import _arith, onnx_ops
from quantref.runtimes.onnx_ops import Op

__all__ = ["OPS", "conv_float", "mlas_logistic"]

OPS: dict[str, Op] = {}
_HIGHEST = jax.lax.Precision.HIGHEST


# ----------------------------------------------------------------------------------------------------------------
# Elementwise: exact


def _binary(rule_float, rule_int):
    def impl(inputs, attributes, context):
        a, b = inputs
        kind = np.dtype(a.dtype).kind
        return [rule_float(a, b) if kind == "f" or np.dtype(a.dtype).name == "bfloat16" else rule_int(a, b)]

    return impl


def _float_divide(a, b):
    return true_divide(jnp.asarray(a), jnp.asarray(b)) if np.dtype(a.dtype) == np.float32 else a / b


def _int_divide(a, b):
    return jax.lax.div(*jnp.broadcast_arrays(jnp.asarray(a), jnp.asarray(b)))  # truncates toward zero, as C++ does


def _relu(inputs, attributes, context):
    x = inputs[0]
    return [jnp.where(x < 0, jnp.zeros((), x.dtype), x)]  # keeps NaN and -0.0, as onnxruntime does


def _leaky_relu(inputs, attributes, context):
    x = inputs[0]
    alpha = jnp.asarray(attributes.get("alpha", 0.01), x.dtype)
    return [jnp.where(x >= 0, x, x * alpha)]


def _clip(inputs, attributes, context):
    x = inputs[0]
    if context.opset < 11:
        low, high = attributes.get("min"), attributes.get("max")
    else:
        low = inputs[1] if len(inputs) > 1 else None
        high = inputs[2] if len(inputs) > 2 else None
    if low is not None:
        x = jnp.maximum(x, jnp.asarray(low, x.dtype))
    if high is not None:
        x = jnp.minimum(x, jnp.asarray(high, x.dtype))
    return [x]


def _variadic(rule):
    def impl(inputs, attributes, context):
        result = inputs[0]
        for value in inputs[1:]:
            result = rule(result, value)
        return [result]

    return impl


def _unary(rule):
    return lambda inputs, attributes, context: [rule(inputs[0])]


def _comparison(rule):
    return lambda inputs, attributes, context: [rule(inputs[0], inputs[1])]


OPS["Relu"] = Op(_relu, (1, 1), 1, ())
OPS["LeakyRelu"] = Op(_leaky_relu, (1, 1), 1, ("alpha",))
OPS["Add"] = Op(_binary(jnp.add, jnp.add), (2, 2), 1, ())
OPS["Sub"] = Op(_binary(jnp.subtract, jnp.subtract), (2, 2), 1, ())
OPS["Mul"] = Op(_binary(jnp.multiply, jnp.multiply), (2, 2), 1, ())
OPS["Div"] = Op(_binary(_float_divide, _int_divide), (2, 2), 1, ())
OPS["Min"] = Op(_variadic(jnp.minimum), (1, -1), 1, ())
OPS["Max"] = Op(_variadic(jnp.maximum), (1, -1), 1, ())
OPS["Clip"] = Op(_clip, (1, 3), 1, ("min", "max"))
OPS["Neg"] = Op(_unary(jnp.negative), (1, 1), 1, ())
OPS["Abs"] = Op(_unary(jnp.abs), (1, 1), 1, ())
OPS["Sqrt"] = Op(_unary(jnp.sqrt), (1, 1), 1, ())
OPS["Floor"] = Op(_unary(jnp.floor), (1, 1), 1, ())
OPS["Ceil"] = Op(_unary(jnp.ceil), (1, 1), 1, ())
OPS["Round"] = Op(_unary(jnp.round), (1, 1), 1, ())  # half to even
OPS["Reciprocal"] = Op(_unary(lambda x: _float_divide(jnp.ones((), x.dtype), x)), (1, 1), 1, ())
OPS["Equal"] = Op(_comparison(jnp.equal), (2, 2), 1, ())
OPS["Less"] = Op(_comparison(jnp.less), (2, 2), 1, ())
OPS["LessOrEqual"] = Op(_comparison(jnp.less_equal), (2, 2), 1, ())
OPS["Greater"] = Op(_comparison(jnp.greater), (2, 2), 1, ())
OPS["GreaterOrEqual"] = Op(_comparison(jnp.greater_equal), (2, 2), 1, ())
OPS["Not"] = Op(_unary(jnp.logical_not), (1, 1), 1, ())
OPS["And"] = Op(_comparison(jnp.logical_and), (2, 2), 1, ())
OPS["Or"] = Op(_comparison(jnp.logical_or), (2, 2), 1, ())


# ----------------------------------------------------------------------------------------------------------------
# Transcendental: float, not bit-exact (MLAS has its own approximations)


def _sigmoid(inputs, attributes, context):
    """onnxruntime's MLAS logistic, bit for bit, in its flavors; the reference evaluator's is not reproduced."""
    x = inputs[0]
    dtype = np.dtype(x.dtype)
    if context.flavor == "reference" or dtype not in (np.float32, np.float16):
        return [jax.nn.sigmoid(x)]
    return [mlas_logistic(x.astype(jnp.float32)).astype(dtype)]  # float16 goes through float32, as in onnxruntime


def _gelu(inputs, attributes, context):
    x = inputs[0]
    if attributes.get("approximate", "none") == "tanh":
        inner = jnp.float32(math.sqrt(2 / math.pi)) * (x + jnp.float32(0.044715) * x * x * x)
        return [jnp.float32(0.5) * x * (1 + jnp.tanh(inner))]
    return [jnp.float32(0.5) * x * (1 + jax.lax.erf(x * jnp.float32(1 / math.sqrt(2))))]


OPS["Exp"] = Op(_unary(jnp.exp), (1, 1), 1, ())
OPS["Log"] = Op(_unary(jnp.log), (1, 1), 1, ())
OPS["Tanh"] = Op(_unary(jnp.tanh), (1, 1), 1, ())
OPS["Erf"] = Op(_unary(jax.lax.erf), (1, 1), 1, ())
OPS["Sigmoid"] = Op(_sigmoid, (1, 1), 1, ())
OPS["Pow"] = Op(_comparison(lambda a, b: jnp.power(a, jnp.asarray(b, a.dtype))), (2, 2), 1, ())
OPS["Gelu"] = Op(_gelu, (1, 1), 1, ("approximate",))


# MLAS's logistic constants (Eigen's rational approximation): the clamp, then p's and q's coefficients, high first.
_LOGISTIC_RANGE = 18.0
_LOGISTIC_P = (4.37031012579801e-11, 1.15627324459942e-07, 6.08574864600143e-05, 8.51377133304701e-03,
               2.48287947061529e-01)  # fmt: skip
_LOGISTIC_Q = (6.10247389755681e-13, 5.76102136993427e-09, 6.29106785017040e-06, 1.70198817374094e-03,
               1.16817656904453e-01, 9.93151921023180e-01)  # fmt: skip


def mlas_logistic(x) -> jax.Array:
    """onnxruntime's float32 logistic function on x86-64 (``MlasComputeLogistic``, the FMA3 kernel), bit for bit.

    .. math::

        v = \\min(\\max(x, -18), 18), \\qquad
        \\sigma(x) \\approx \\max\\Big(0,\\ \\frac{v \\cdot p(v^2)}{q(v^2)} + \\tfrac12\\Big)

    with ``p`` of degree 4 and ``q`` of degree 5 in ``v²`` evaluated by Horner's rule, each step one fused
    multiply-add (one rounding), ``v²``, ``v · p``, the quotient and the ``+ ½`` each rounded to float32. The fused
    multiply-adds are emulated exactly (:func:`quantref.runtimes._arith.fma_f32`), so the result does not depend on
    the backend's own FMA.

    References:
      onnxruntime ``core/mlas/lib/logistic.cpp`` (the constants) and ``core/mlas/lib/x86_64/LogisticKernelFma3.S``;
      Boldo and Melquiond, "Emulation of a FMA and correctly-rounded sums: proved algorithms using rounding to
      odd", IEEE Transactions on Computers 57(4), 2008.

    Args:
      x: float32 values, any shape.

    Returns:
      float32 values in [0, 1] (NaN stays NaN), the shape of ``x``.
    """
    x = jnp.asarray(x, jnp.float32)
    v = jnp.where(x < -_LOGISTIC_RANGE, jnp.float32(-_LOGISTIC_RANGE), x)  # vmaxps/vminps: NaN passes through
    v = jnp.where(v > _LOGISTIC_RANGE, jnp.float32(_LOGISTIC_RANGE), v)
    square = v * v
    p = _arith.fma_f32(square, jnp.float32(_LOGISTIC_P[0]), jnp.float32(_LOGISTIC_P[1]))
    for coefficient in _LOGISTIC_P[2:]:
        p = _arith.fma_f32(square, p, jnp.float32(coefficient))
    q = _arith.fma_f32(square, jnp.float32(_LOGISTIC_Q[0]), jnp.float32(_LOGISTIC_Q[1]))
    for coefficient in _LOGISTIC_Q[2:]:
        q = _arith.fma_f32(square, q, jnp.float32(coefficient))
    y = true_divide(v * p, q) + jnp.float32(0.5)
    return jnp.where(y < 0, jnp.float32(0), y)  # vmaxps(0, y): NaN passes through


# ----------------------------------------------------------------------------------------------------------------
# Products and sums: float, not bit-exact (another summation order)


def _matmul(inputs, attributes, context):
    a, b = inputs
    return [jnp.matmul(a, b, precision=_HIGHEST)]


def _gemm(inputs, attributes, context):
    a, b = inputs[0], inputs[1]
    c = inputs[2] if len(inputs) > 2 else None
    a = a.T if attributes.get("transA", 0) else a
    b = b.T if attributes.get("transB", 0) else b
    y = jnp.matmul(a, b, precision=_HIGHEST)
    alpha, beta = attributes.get("alpha", 1.0), attributes.get("beta", 1.0)
    if alpha != 1.0:
        y = y * jnp.asarray(alpha, y.dtype)
    if c is not None and beta != 0.0:
        y = y + (c if beta == 1.0 else c * jnp.asarray(beta, y.dtype))
    return [y]


def conv_float(x, w, bias, attributes: dict):
    """A float convolution (1 to 3 spatial dimensions, NCHW), with ONNX's attributes."""
    spatial = x.ndim - 2
    geometry = onnx_ops.conv_geometry(attributes, x.shape, w.shape, spatial=spatial)
    pads = geometry["pads"]
    letters = "DHW"[3 - spatial :]
    y = jax.lax.conv_general_dilated(
        x,
        w,
        window_strides=geometry["strides"],
        padding=[(pads[i], pads[spatial + i]) for i in range(spatial)],
        rhs_dilation=geometry["dilations"],
        dimension_numbers=("NC" + letters, "OI" + letters, "NC" + letters),
        feature_group_count=geometry["group"],
        precision=_HIGHEST,
    )
    if bias is not None:
        y = y + bias.reshape((1, -1) + (1,) * spatial)
    return y


def _conv(inputs, attributes, context):
    x, w = inputs[0], inputs[1]
    if not 1 <= x.ndim - 2 <= 3:
        raise ValueError(f"Conv needs a 3-D to 5-D input, got shape {x.shape}")
    return [conv_float(x, w, inputs[2] if len(inputs) > 2 else None, attributes)]


def _average_pool(inputs, attributes, context):
    x = inputs[0]
    geometry = onnx_ops.pool_geometry(x.shape, attributes, "AveragePool")
    return [average_pool(x, geometry, bool(attributes.get("count_include_pad", 0)))]


def average_pool(x, geometry: onnx_ops.PoolGeometry, count_include_pad: bool):
    """Window sums divided by the number of elements each window averages, as onnxruntime's pool does: the input
    positions it covers, plus its explicit padding when ``count_include_pad`` (not the part of a ``ceil_mode`` window
    beyond the padding)."""
    count = len(geometry.kernel)
    window = dict(
        window_dimensions=(1, 1) + geometry.kernel,
        window_strides=(1, 1) + geometry.strides,
        padding="VALID",
        window_dilation=(1, 1) + geometry.dilations,
    )
    zero = jnp.zeros((), x.dtype)
    padding = [(0, 0, 0), (0, 0, 0)] + [(begin, end, 0) for begin, end in geometry.padding]
    total = jax.lax.reduce_window(jax.lax.pad(x, zero, padding), zero, jax.lax.add, **window)
    ones = jnp.ones((1, 1) + tuple(x.shape[2:]), jnp.float32)
    if count_include_pad:
        explicit = [(geometry.pads[i], geometry.pads[count + i]) for i in range(count)]
        ones = jax.lax.pad(ones, jnp.float32(1), [(0, 0, 0), (0, 0, 0)] + [(b, e, 0) for b, e in explicit])
        padding = [(0, 0, 0), (0, 0, 0)] + [
            (begin - b, end - e, 0) for (begin, end), (b, e) in zip(geometry.padding, explicit)
        ]
    counts = jax.lax.reduce_window(jax.lax.pad(ones, jnp.float32(0), padding), jnp.float32(0), jax.lax.add, **window)
    return true_divide(total, jnp.maximum(counts, 1).astype(x.dtype))


def _global_average_pool(inputs, attributes, context):
    x = inputs[0]
    return [jnp.mean(x, axis=tuple(range(2, x.ndim)), keepdims=True)]


def _global_max_pool(inputs, attributes, context):
    x = inputs[0]
    return [jnp.max(x, axis=tuple(range(2, x.ndim)), keepdims=True)]


def _softmax(inputs, attributes, context, log: bool = False):
    x = inputs[0]
    rule = jax.nn.log_softmax if log else jax.nn.softmax
    if context.opset >= 13:
        return [rule(x, axis=int(attributes.get("axis", -1)))]
    axis = int(attributes.get("axis", 1)) % x.ndim  # before opset 13: coerced to 2-D at axis
    flat = x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)
    return [rule(flat, axis=1).reshape(x.shape)]


def _reduce(rule):
    def impl(inputs, attributes, context):
        x = inputs[0]
        axes = onnx_ops._axes(inputs, attributes, context, 1)
        if not axes:
            if attributes.get("noop_with_empty_axes", 0):
                return [x]
            axes = list(range(x.ndim))
        return [rule(x, axis=tuple(a % x.ndim for a in axes), keepdims=bool(attributes.get("keepdims", 1)))]

    return impl


def _layer_normalization(inputs, attributes, context):
    x, scale = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    axis = int(attributes.get("axis", -1)) % x.ndim
    axes = tuple(range(axis, x.ndim))
    epsilon = jnp.asarray(attributes.get("epsilon", 1e-5), jnp.float32)
    mean = jnp.mean(x, axis=axes, keepdims=True)
    centred = x - mean
    variance = jnp.mean(centred * centred, axis=axes, keepdims=True)
    y = centred / jnp.sqrt(variance + epsilon) * scale
    return [y + bias if bias is not None else y]


def _batch_normalization(inputs, attributes, context):
    x, scale, bias, mean, variance = inputs
    shape = (1, -1) + (1,) * (x.ndim - 2)
    epsilon = jnp.asarray(attributes.get("epsilon", 1e-5), x.dtype)
    inverse = scale.reshape(shape) / jnp.sqrt(variance.reshape(shape) + epsilon)
    return [(x - mean.reshape(shape)) * inverse + bias.reshape(shape)]


_REDUCE_ATTRIBUTES = ("axes", "keepdims", "noop_with_empty_axes")
OPS["MatMul"] = Op(_matmul, (2, 2), 1, ())
OPS["Gemm"] = Op(_gemm, (2, 3), 1, ("alpha", "beta", "transA", "transB"))
OPS["Conv"] = Op(_conv, (2, 3), 1, onnx_ops.CONV_ATTRIBUTES)
OPS["AveragePool"] = Op(_average_pool, (1, 1), 1, onnx_ops.POOL_ATTRIBUTES + ("count_include_pad",))
OPS["GlobalAveragePool"] = Op(_global_average_pool, (1, 1), 1, ())
OPS["GlobalMaxPool"] = Op(_global_max_pool, (1, 1), 1, ())
OPS["Softmax"] = Op(_softmax, (1, 1), 1, ("axis",))
OPS["LogSoftmax"] = Op(lambda i, a, c: _softmax(i, a, c, log=True), (1, 1), 1, ("axis",))
OPS["ReduceMin"] = Op(_reduce(jnp.min), (1, 2), 1, _REDUCE_ATTRIBUTES)
OPS["ReduceMax"] = Op(_reduce(jnp.max), (1, 2), 1, _REDUCE_ATTRIBUTES)
OPS["ReduceSum"] = Op(_reduce(jnp.sum), (1, 2), 1, _REDUCE_ATTRIBUTES)
OPS["ReduceMean"] = Op(_reduce(jnp.mean), (1, 2), 1, _REDUCE_ATTRIBUTES)
OPS["LayerNormalization"] = Op(_layer_normalization, (2, 3), 1, ("axis", "epsilon", "stash_type"))
OPS["BatchNormalization"] = Op(_batch_normalization, (5, 5), 1, ("epsilon", "momentum", "training_mode"))
