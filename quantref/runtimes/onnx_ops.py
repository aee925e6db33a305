"""The operators of :func:`~quantref.runtimes.onnx_graph.run_model`: quantization, integer and data-movement rules.

Each supported operator is one entry of a registry, ``OPS[op_type] = Op(rule, signature)``: what it computes (a rule
on JAX arrays, traceable under ``jax.jit``) and what it accepts (inputs, outputs, attributes), checked for every node
before anything runs. This module holds the quantization operators (each one the function of
:mod:`quantref.runtimes.onnx` of the same name), the integer ones, and the operators that move or reinterpret data
without arithmetic (Reshape, Transpose, Cast, MaxPool, Gather, Slice, Concat, ...), which every runtime computes
identically; :mod:`~quantref.runtimes.onnx_float` holds the float arithmetic and
:mod:`~quantref.runtimes.onnx_microsoft` the ``com.microsoft`` operators.

Values are *static* when known before running — initializers, Constant outputs, shapes, and everything computed
from them only — and traced otherwise. A rule that needs a value to build the graph (a Reshape's shape, a Slice's
starts) asks for it with :func:`static`; the interpreter evaluates nodes whose inputs are all static at trace time
(constant folding), as onnxruntime does.

References:
  ONNX operator specification, https://onnx.ai/onnx/operators/. onnxruntime ``core/providers/cpu/nn/pool.cc``
  (MaxPool), ``core/providers/cpu/tensor/cast_op.cc`` (Cast).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from quantref import formats
from quantref._validate import is_concrete
from quantref.runtimes import onnx as qonnx

__all__ = ["Context", "Op", "OPS", "static", "conv_geometry", "spatial_attribute", "pool_geometry", "np_dtype"]


class Context(NamedTuple):
    """What a rule may depend on besides its inputs and attributes.

    Attributes:
      flavor: the execution reproduced: ``"onnxruntime"``, ``"onnxruntime_unoptimized"`` or ``"reference"``.
      opset: the opset version of the node's domain (some operators changed their inputs or defaults).
      outputs: how many outputs the node declares (Split without sizes splits into that many).
    """

    flavor: str
    opset: int
    outputs: int = 1

    @property
    def kernel_flavor(self) -> str:
        """The flavor of the :mod:`quantref.runtimes.onnx` functions: ``"reference"`` or ``"onnxruntime"``."""
        return "reference" if self.flavor == "reference" else "onnxruntime"


class Op(NamedTuple):
    """One supported operator: its rule ``impl(inputs, attributes, context) -> outputs`` and its signature.

    Attributes:
      impl: the rule; ``inputs`` has ``None`` for absent optional inputs and trailing absent ones removed.
      inputs: ``(required, most)`` inputs; ``most = -1`` for variadic operators.
      outputs: the most outputs supported.
      attributes: the attributes it understands.
    """

    impl: Callable[[list, dict, Context], list]
    inputs: tuple[int, int]
    outputs: int
    attributes: tuple[str, ...]


OPS: dict[str, Op] = {}
CONV_ATTRIBUTES = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")
POOL_ATTRIBUTES = ("auto_pad", "ceil_mode", "dilations", "kernel_shape", "pads", "strides")


# ----------------------------------------------------------------------------------------------------------------
# Quantization and integer operators: the functions of quantref.runtimes.onnx


def _quantize_linear(inputs, attributes, context):
    x, scale = inputs[0], inputs[1]
    zero_point = inputs[2] if len(inputs) > 2 else None
    output_dtype, precision = attributes.get("output_dtype", 0), attributes.get("precision", 0)
    y = qonnx.quantize_linear(
        x,
        scale,
        zero_point,
        axis=int(attributes.get("axis", 1)),
        block_size=int(attributes.get("block_size", 0)),
        saturate=bool(attributes.get("saturate", 1)),
        output_dtype=np_dtype(output_dtype) if output_dtype else None,
        precision=np_dtype(precision) if precision else None,
        flavor=context.kernel_flavor,
    )
    return [y]


def _dequantize_linear(inputs, attributes, context):
    x, scale = inputs[0], inputs[1]
    zero_point = inputs[2] if len(inputs) > 2 else None
    output_dtype = attributes.get("output_dtype", 0)
    y = qonnx.dequantize_linear(
        x,
        scale,
        zero_point,
        axis=int(attributes.get("axis", 1)),
        block_size=int(attributes.get("block_size", 0)),
        output_dtype=np_dtype(output_dtype) if output_dtype else None,
    )
    return [y]


def _dynamic_quantize_linear(inputs, attributes, context):
    return list(qonnx.dynamic_quantize_linear(inputs[0], flavor=context.kernel_flavor))


def _matmul_integer(inputs, attributes, context):
    return [qonnx.matmul_integer(*inputs)]


def _qlinear_matmul(inputs, attributes, context):
    return [qonnx.qlinear_matmul(*inputs, flavor=context.kernel_flavor)]


def _conv_integer(inputs, attributes, context):
    return [qonnx.conv_integer(*inputs, **conv_geometry(attributes, inputs[0].shape, inputs[1].shape))]


def _qlinear_conv(inputs, attributes, context):
    geometry = conv_geometry(attributes, inputs[0].shape, inputs[3].shape)
    return [qonnx.qlinear_conv(*inputs, **geometry, flavor=context.kernel_flavor)]


OPS["QuantizeLinear"] = Op(_quantize_linear, (2, 3), 1, ("axis", "block_size", "output_dtype", "precision", "saturate"))
OPS["DequantizeLinear"] = Op(_dequantize_linear, (2, 3), 1, ("axis", "block_size", "output_dtype"))
OPS["DynamicQuantizeLinear"] = Op(_dynamic_quantize_linear, (1, 1), 3, ())
OPS["MatMulInteger"] = Op(_matmul_integer, (2, 4), 1, ())
OPS["QLinearMatMul"] = Op(_qlinear_matmul, (8, 8), 1, ())
OPS["ConvInteger"] = Op(_conv_integer, (2, 4), 1, CONV_ATTRIBUTES)
OPS["QLinearConv"] = Op(_qlinear_conv, (8, 9), 1, CONV_ATTRIBUTES)


# ----------------------------------------------------------------------------------------------------------------
# Data movement: no arithmetic, the same in every runtime


def _identity(inputs, attributes, context):
    return [inputs[0]]


def _constant(inputs, attributes, context):
    import onnx.numpy_helper

    ((name, value),) = attributes.items()
    if name == "value":
        return [onnx.numpy_helper.to_array(value)]
    if name in ("value_float", "value_floats"):
        return [np.array(value, np.float32)]
    return [np.array(value, np.int64)]


def _transpose(inputs, attributes, context):
    perm = attributes.get("perm")
    return [jnp.transpose(inputs[0], None if perm is None else [int(p) for p in perm])]


def _flatten(inputs, attributes, context):
    x, axis = inputs[0], int(attributes.get("axis", 1))
    if not -x.ndim <= axis <= x.ndim:
        raise ValueError(f"Flatten axis {axis} is out of range for a {x.ndim}-D input")
    axis = axis + x.ndim if axis < 0 else axis
    rows = int(np.prod(x.shape[:axis], dtype=np.int64))
    return [x.reshape(rows, int(np.prod(x.shape[axis:], dtype=np.int64)))]


def _reshape(inputs, attributes, context):
    data, shape = inputs[0], static(inputs[1], "Reshape's shape")
    if shape.ndim != 1 or shape.dtype != np.int64:
        raise TypeError(f"Reshape's shape must be a 1-D int64 tensor, got {shape.dtype.name} {shape.shape}")
    dims = [int(d) for d in shape]
    if not attributes.get("allowzero", 0):
        for i, d in enumerate(dims):
            if d == 0:
                if i >= data.ndim:
                    raise ValueError(
                        f"Reshape shape {dims}: a 0 at position {i} copies a dimension the input "
                        f"{data.shape} does not have"
                    )
                dims[i] = data.shape[i]
    if dims.count(-1) > 1 or any(d < -1 for d in dims):
        raise ValueError(f"Reshape shape {dims} may have at most one -1 and no other negative entries")
    known = int(np.prod([d for d in dims if d != -1], dtype=np.int64))
    size = int(np.prod(data.shape, dtype=np.int64))
    if (-1 in dims and (known == 0 or size % known)) or (-1 not in dims and known != size):
        raise ValueError(f"cannot reshape {data.shape} to {dims}")
    return [data.reshape(dims)]


def _shape(inputs, attributes, context):
    dims = np.array(inputs[0].shape, np.int64)
    start, end = attributes.get("start", 0), attributes.get("end", len(dims))
    return [dims[start:end]]


def _axes(inputs, attributes, context, position: int, name: str = "axes") -> list[int] | None:
    """An axes list: an attribute before the opset that made it an input (Squeeze/Unsqueeze 13, Reduce* 18)."""
    if len(inputs) > position and inputs[position] is not None:
        return [int(a) for a in static(inputs[position], name)]
    if name in attributes:
        return [int(a) for a in attributes[name]]
    return None


def _squeeze(inputs, attributes, context):
    x = inputs[0]
    axes = _axes(inputs, attributes, context, 1)
    if axes is None:
        axes = [i for i, d in enumerate(x.shape) if d == 1]
    return [jnp.squeeze(x, tuple(a % x.ndim for a in axes)) if axes else x]


def _unsqueeze(inputs, attributes, context):
    x = inputs[0]
    axes = _axes(inputs, attributes, context, 1)
    rank = x.ndim + len(axes)
    return [jnp.expand_dims(x, tuple(sorted(a % rank for a in axes)))]


def _concat(inputs, attributes, context):
    axis = int(attributes["axis"])
    if all(is_static(value) for value in inputs):
        return [np.concatenate([np.asarray(v) for v in inputs], axis=axis)]
    return [jnp.concatenate(inputs, axis=axis)]


def _gather(inputs, attributes, context):
    data, indices = inputs
    axis = int(attributes.get("axis", 0)) % max(data.ndim, 1)
    size = data.shape[axis]
    indices = jnp.where(indices < 0, indices + size, indices) if not is_static(indices) else _wrap(indices, size)
    if is_static(data) and is_static(indices):
        return [np.take(np.asarray(data), indices, axis=axis)]
    return [jnp.take(data, indices, axis=axis, mode="clip")]


def _wrap(indices, size: int) -> np.ndarray:
    indices = np.asarray(indices)
    if np.any((indices < -size) | (indices >= size)):
        raise ValueError(f"Gather indices must lie in [{-size}, {size - 1}], got {indices.min()}..{indices.max()}")
    return np.where(indices < 0, indices + size, indices)


def _slice(inputs, attributes, context):
    data = inputs[0]
    if context.opset < 10:
        starts, ends = attributes["starts"], attributes["ends"]
        axes, steps = attributes.get("axes"), None
    else:
        starts, ends = static(inputs[1], "Slice's starts"), static(inputs[2], "Slice's ends")
        axes = static(inputs[3], "Slice's axes") if len(inputs) > 3 and inputs[3] is not None else None
        steps = static(inputs[4], "Slice's steps") if len(inputs) > 4 and inputs[4] is not None else None
    axes = list(range(len(starts))) if axes is None else [int(a) % data.ndim for a in axes]
    steps = [1] * len(starts) if steps is None else [int(s) for s in steps]
    index = [slice(None)] * data.ndim
    for axis, start, end, step in zip(axes, starts, ends, steps):
        index[axis] = _onnx_slice(int(start), int(end), step, data.shape[axis])
    if is_static(data):
        return [np.asarray(data)[tuple(index)]]
    return [data[tuple(index)]]


def _onnx_slice(start: int, end: int, step: int, size: int) -> slice:
    """ONNX Slice bounds as a Python slice: negative bounds count from the end, then they are clamped to [0, size]
    (positive steps) or to [0, size - 1] and [-1, size - 1] (negative steps, where an end of -1 means "past 0")."""
    if step == 0:
        raise ValueError("Slice steps must not be 0")
    start = start + size if start < 0 else start
    end = end + size if end < 0 else end
    if step > 0:
        return slice(min(max(start, 0), size), min(max(end, 0), size), step)
    start, end = min(max(start, 0), size - 1), min(max(end, -1), size - 1)
    return slice(start, None if end < 0 else end, step)


def _split(inputs, attributes, context):
    x = inputs[0]
    axis = int(attributes.get("axis", 0)) % x.ndim
    if len(inputs) > 1 and inputs[1] is not None:
        sizes = [int(s) for s in static(inputs[1], "Split's split")]
    elif "split" in attributes:
        sizes = [int(s) for s in attributes["split"]]
    else:
        count = int(attributes.get("num_outputs", context.outputs))
        chunk = -(-x.shape[axis] // count)
        sizes = [min(chunk, x.shape[axis] - i * chunk) for i in range(count)]
    if sum(sizes) != x.shape[axis]:
        raise ValueError(f"Split sizes {sizes} do not add up to the axis length {x.shape[axis]}")
    offsets = np.cumsum([0] + sizes)
    return [jax.lax.slice_in_dim(x, int(offsets[i]), int(offsets[i + 1]), axis=axis) for i in range(len(sizes))]


def _expand(inputs, attributes, context):
    x, shape = inputs[0], [int(d) for d in static(inputs[1], "Expand's shape")]
    return [jnp.broadcast_to(x, np.broadcast_shapes(x.shape, tuple(shape)))]


def _tile(inputs, attributes, context):
    return [jnp.tile(inputs[0], [int(r) for r in static(inputs[1], "Tile's repeats")])]


def _constant_of_shape(inputs, attributes, context):
    import onnx.numpy_helper

    shape = [int(d) for d in static(inputs[0], "ConstantOfShape's shape")]
    value = attributes.get("value")
    fill = np.zeros(1, np.float32) if value is None else onnx.numpy_helper.to_array(value).reshape(1)
    return [np.full(shape, fill[0], fill.dtype)]


def _range(inputs, attributes, context):
    start, limit, delta = (static(value, "Range's inputs") for value in inputs)
    return [np.arange(start, limit, delta, dtype=np.asarray(start).dtype)]


def _where(inputs, attributes, context):
    condition, x, y = inputs
    return [jnp.where(condition, x, y)]


def _max_pool(inputs, attributes, context):
    x = inputs[0]
    allowed = tuple(np.dtype(d) for d in (np.float16, np.float32, np.float64, np.int8, np.uint8))
    if np.dtype(x.dtype) not in allowed:
        raise TypeError(f"MaxPool input must be one of {[d.name for d in allowed]}, got {np.dtype(x.dtype).name}")
    geometry = pool_geometry(x.shape, attributes, "MaxPool")
    kind = np.dtype(x.dtype).kind
    lowest = np.finfo(x.dtype).min if kind == "f" else np.iinfo(x.dtype).min
    lowest = jnp.asarray(lowest, x.dtype)
    # Channels last (the layout of the convolutions, see onnx_integer._conv_channels_last): XLA cancels the
    # transposes between a convolution and the pool, and the slices below read whole rows of channels.
    x = jnp.moveaxis(x, 1, -1)
    if kind == "f":
        # onnxruntime keeps a window element only when it is strictly greater than the running maximum, which
        # starts at the type's lowest finite value: NaN never wins, and a window of -inf gives the lowest value.
        x = jnp.where(jnp.isnan(x), lowest, x)
    tiles = all(
        k == s and d == 1 and b == 0 and k * n == size
        for k, s, d, (b, _), n, size in zip(
            geometry.kernel, geometry.strides, geometry.dilations, geometry.padding, geometry.out_sizes, x.shape[1:-1]
        )
    )
    if kind != "f" and tiles:
        # Windows that tile the input (stride = kernel, no padding): one reduction over the window axes of a
        # reshape, which XLA's CPU backend vectorizes where the strided slices below are not. Integers only: the
        # maximum of equal floats (-0.0 and 0.0) would depend on the reduction's order.
        shape = [x.shape[0]] + [v for n, k in zip(geometry.out_sizes, geometry.kernel) for v in (n, k)] + [x.shape[-1]]
        pooled = jnp.max(x.reshape(shape), axis=tuple(range(2, 2 * len(geometry.kernel) + 1, 2)))
        return [jnp.moveaxis(pooled, -1, 1)]
    padded = jax.lax.pad(x, lowest, [(0, 0, 0)] + [(b, e, 0) for b, e in geometry.padding] + [(0, 0, 0)])
    # The maximum over the window's offsets of strided slices: elementwise, and far faster on XLA's CPU backend than
    # reduce_window. Padded positions hold the lowest value, which is where onnxruntime's maximum starts.
    pooled = None
    for offsets in np.ndindex(*geometry.kernel):
        index = [slice(None)] + [
            slice(o * d, o * d + s * (n - 1) + 1, s)
            for o, d, s, n in zip(offsets, geometry.dilations, geometry.strides, geometry.out_sizes)
        ]
        window = padded[tuple(index)]
        pooled = window if pooled is None else jnp.maximum(pooled, window)
    return [jnp.moveaxis(pooled, -1, 1)]


class PoolGeometry(NamedTuple):
    """A pooling window resolved to explicit numbers: kernel, strides, dilations, the (begin, end) padding per
    spatial axis that gives onnxruntime's output size (an end < 0 drops input), and the output size."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    pads: tuple[int, ...]
    out_sizes: tuple[int, ...]


def pool_geometry(shape: tuple[int, ...], attributes: dict, op: str) -> PoolGeometry:
    """The window of MaxPool/AveragePool as onnxruntime resolves its attributes (PoolAttributes)."""
    if "kernel_shape" not in attributes:
        raise ValueError(f"{op} needs kernel_shape")
    kernel = tuple(int(k) for k in attributes["kernel_shape"])
    count = len(kernel)
    if len(shape) != count + 2 or not 1 <= count <= 3:
        raise ValueError(
            f"{op} with kernel_shape {kernel} needs a {count + 2}-D input (1 to 3 spatial dimensions), got shape "
            f"{tuple(shape)}"
        )
    strides = spatial_attribute(attributes, "strides", count, 1)
    dilations = spatial_attribute(attributes, "dilations", count, 1)
    ceil_mode = bool(attributes.get("ceil_mode", 0))
    auto_pad = attributes.get("auto_pad", "NOTSET")
    pads = spatial_attribute(attributes, "pads", 2 * count, 0)
    if len(strides) != count or len(dilations) != count or len(pads) != 2 * count:
        raise ValueError(
            f"{op} strides/dilations/pads must have {count}/{count}/{2 * count} entries, got {strides}, "
            f"{dilations}, {pads}"
        )
    if any(k < 1 for k in kernel) or any(s < 1 for s in strides) or any(d < 1 for d in dilations):
        raise ValueError(f"{op} kernel_shape, strides and dilations must be >= 1, got {kernel}, {strides}, {dilations}")
    if any(p < 0 or p >= kernel[i % count] for i, p in enumerate(pads)):
        raise ValueError(f"{op} pads must be >= 0 and smaller than the kernel, got {pads} for {kernel}")
    padding, out_sizes, explicit = [], [], [0] * (2 * count)
    for i, (size, k, s, d) in enumerate(zip(shape[2:], kernel, strides, dilations)):
        if auto_pad == "NOTSET":
            begin, total = pads[i], pads[i] + pads[count + i]
        elif auto_pad == "VALID":
            begin, total = 0, 0
        else:  # onnxruntime's "legacy" SAME padding: it ignores the dilation.
            total = ((size + s - 1) // s - 1) * s + k - size
            begin = total // 2 if auto_pad == "SAME_UPPER" else (total + 1) // 2
        out = _pool_output_size(size, k, s, d, begin, total, ceil_mode)
        if out < 1:
            raise ValueError(
                f"{op} output would be empty along spatial axis {i} (input {size}, kernel {k}, stride {s}, "
                f"dilation {d}, padding {total})"
            )
        end = (out - 1) * s + d * (k - 1) + 1 - size - begin
        padding.append((begin, end))
        out_sizes.append(out)
        explicit[i], explicit[count + i] = begin, total - begin
    return PoolGeometry(kernel, strides, dilations, tuple(padding), tuple(explicit), tuple(out_sizes))


def _pool_output_size(size: int, kernel: int, stride: int, dilation: int, begin: int, total: int, ceil: bool) -> int:
    """onnxruntime's PoolAttributes::ComputeOutputSize: a float32 division, truncated or ceiled."""
    quotient = np.float32(size + total - dilation * (kernel - 1) - 1) / np.float32(stride) + np.float32(1)
    out = int(np.ceil(quotient)) if ceil else int(np.trunc(quotient))
    # A last window that would start in the end padding is dropped (onnxruntime 1.32 does, as PyTorch does).
    if ceil and out > 0 and (out - 1) * stride >= size + begin:
        out -= 1
    return out


OPS["Identity"] = Op(_identity, (1, 1), 1, ())
OPS["Constant"] = Op(_constant, (0, 0), 1, ("value", "value_float", "value_floats", "value_int", "value_ints"))
OPS["Transpose"] = Op(_transpose, (1, 1), 1, ("perm",))
OPS["Flatten"] = Op(_flatten, (1, 1), 1, ("axis",))
OPS["Reshape"] = Op(_reshape, (2, 2), 1, ("allowzero",))
OPS["Shape"] = Op(_shape, (1, 1), 1, ("start", "end"))
OPS["Squeeze"] = Op(_squeeze, (1, 2), 1, ("axes",))
OPS["Unsqueeze"] = Op(_unsqueeze, (1, 2), 1, ("axes",))
OPS["Concat"] = Op(_concat, (1, -1), 1, ("axis",))
OPS["Gather"] = Op(_gather, (2, 2), 1, ("axis",))
OPS["Slice"] = Op(_slice, (1, 5), 1, ("starts", "ends", "axes"))
OPS["Split"] = Op(_split, (1, 2), 64, ("axis", "split", "num_outputs"))
OPS["Expand"] = Op(_expand, (2, 2), 1, ())
OPS["Tile"] = Op(_tile, (2, 2), 1, ())
OPS["ConstantOfShape"] = Op(_constant_of_shape, (1, 1), 1, ("value",))
OPS["Range"] = Op(_range, (3, 3), 1, ())
OPS["Where"] = Op(_where, (3, 3), 1, ())
# Indices (MaxPool's second output) is not supported; storage_order only affects it.
OPS["MaxPool"] = Op(_max_pool, (1, 1), 1, POOL_ATTRIBUTES + ("storage_order",))


# ----------------------------------------------------------------------------------------------------------------
# Cast: onnxruntime's CPU kernel, out-of-range conversions as x86-64 computes them

_FLOAT_SOURCES = tuple(np.dtype(d) for d in (np.float16, ml_dtypes.bfloat16, np.float32, np.float64))
_CAST_INT_TARGETS = tuple(
    np.dtype(d) for d in (np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64)
)
_SUB_BYTE = tuple(np.dtype(d) for d in (ml_dtypes.int4, ml_dtypes.uint4, ml_dtypes.int2, ml_dtypes.uint2))
_FLOAT8 = tuple(formats.FLOAT8_DTYPES.values())
#: The types Cast converts to; from these and the sub-byte integers.
CAST_TARGETS = _CAST_INT_TARGETS + _FLOAT_SOURCES + _FLOAT8 + (np.dtype(np.bool_),)
_CAST_SOURCES = CAST_TARGETS + _SUB_BYTE


def _cast_op(inputs, attributes, context):
    return [_cast(inputs[0], np_dtype(attributes["to"]), bool(attributes.get("saturate", 1)))]


def _truncate_to_signed(value: jax.Array, bits: int) -> jax.Array:
    """x86 cvttss2si: truncation; NaN and out-of-range values give the integer indefinite INT_MIN."""
    limit = 2.0 ** (bits - 1)
    truncated = jnp.trunc(value)
    inside = (truncated >= -limit) & (truncated < limit)
    target = jnp.int64 if bits == 64 else jnp.int32
    return jnp.where(inside, jnp.where(inside, truncated, 0).astype(target), jnp.asarray(-limit).astype(target))


def _cast_float_to_int(x: jax.Array, target: np.dtype) -> jax.Array:
    value = x.astype(jnp.float64)  # exact for every float source
    if target in (np.dtype(np.uint32), np.dtype(np.uint64)):
        bits = target.itemsize * 8
        half = 2.0 ** (bits - 1)
        signed = jnp.int32 if bits == 32 else jnp.int64
        low = _truncate_to_signed(value, bits)
        high = _truncate_to_signed(value - half, bits) ^ jnp.asarray(-half).astype(signed)
        return jax.lax.bitcast_convert_type(jnp.where(value >= half, high, low), target)
    if target == np.dtype(np.int64):
        return _truncate_to_signed(value, 64)
    # int8/uint8/int16/uint16/int32: through int32, keeping the low bits.
    return _truncate_to_signed(value, 32).astype(target)


def _widen_float32(x: jax.Array) -> jax.Array:
    """float32 → float64 exactly, subnormals included (XLA on CPU would flush them to zero)."""
    wide = x.astype(jnp.float64)
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    subnormal = ((bits & 0x7F800000) == 0) & ((bits & 0x7FFFFF) != 0)
    magnitude = (bits & 0x7FFFFF).astype(jnp.float64) * jnp.float64(2.0**-149)
    return jnp.where(subnormal, jnp.where((bits >> 31) == 1, -magnitude, magnitude), wide)


def _narrow_float64(x: jax.Array) -> jax.Array:
    """float64 → float32 rounded to nearest even, subnormal results included (XLA on CPU would flush them)."""
    narrow = x.astype(jnp.float32)
    magnitude = jnp.abs(x)
    subnormal = (magnitude < 2.0**-126) & (magnitude > 0)
    codes = jnp.round(jnp.where(subnormal, magnitude, 0.0) * 2.0**149).astype(jnp.uint32)  # exact power-of-2 scaling
    bits = codes | jnp.where(jnp.signbit(x), jnp.uint32(0x80000000), jnp.uint32(0))
    return jnp.where(subnormal, jax.lax.bitcast_convert_type(bits, jnp.float32), narrow)


def _cast(x: jax.Array, target: np.dtype, saturate: bool) -> jax.Array:
    source = np.dtype(x.dtype)
    if source not in _CAST_SOURCES:
        raise TypeError(f"Cast from {source.name} is not supported by run_model")
    if source == target:
        return x
    if target == np.dtype(np.bool_):
        if source.kind == "f" or source in _FLOAT8 or source == np.dtype(ml_dtypes.bfloat16):
            # On the bits: XLA flushes subnormal floats to zero, which would make 1e-40 false.
            unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}[source.itemsize]
            magnitude = jax.lax.bitcast_convert_type(x, unsigned) << 1
            return magnitude != 0
        return x != 0
    if source in _FLOAT8:
        x, source = formats.float8_to_float32(x), np.dtype(np.float32)
        if source == target:
            return x
    if source == np.dtype(np.float32) and target == np.dtype(np.float64):
        return _widen_float32(x)
    if source == np.dtype(np.float64) and target == np.dtype(np.float32):
        return _narrow_float64(x)
    if target in _FLOAT8:
        # float → float8 is QuantizeLinear with scale 1 (onnxruntime uses the same converter for both).
        wide = x if source in _FLOAT_SOURCES and source != np.float64 else x.astype(jnp.float32)
        return qonnx.quantize_linear(wide, np.float32(1.0), np.zeros((), target), saturate=saturate)
    if source in _FLOAT_SOURCES and target in _CAST_INT_TARGETS:
        return _cast_float_to_int(x, target)
    if source == np.dtype(np.bool_) or source in _SUB_BYTE:
        x = x.astype(jnp.int32)
    return x.astype(target)  # integer wrap-around; int → float and float → float round to nearest even


OPS["Cast"] = Op(_cast_op, (1, 1), 1, ("to", "saturate"))


# ----------------------------------------------------------------------------------------------------------------
# Helpers the rules share


def is_static(value) -> bool:
    """Whether a value is known before running (not a tracer)."""
    return is_concrete(value)


def static(value, what: str) -> np.ndarray:
    """A value the graph's structure depends on, as numpy; it must be known before running."""
    if not is_concrete(value):
        raise ValueError(
            f"{what} must be known before running (an initializer, a Constant, or computed from shapes only)"
        )
    return np.asarray(value)


def np_dtype(elem_type: int) -> np.dtype:
    """The numpy / ml_dtypes dtype of an ONNX TensorProto element type."""
    import onnx

    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))


def spatial_attribute(attributes: dict, name: str, count: int, default: int) -> tuple[int, ...]:
    """A per-spatial-axis attribute, or ``default`` repeated."""
    value = tuple(int(v) for v in attributes.get(name, ()))
    return value if value else (default,) * count


def conv_pads(attributes: dict, in_sizes, kernel, strides, dilations) -> tuple[int, ...]:
    """Explicit (begins..., ends...) pads, resolving auto_pad as onnxruntime's conv does."""
    auto_pad = attributes.get("auto_pad", "NOTSET")
    count = len(kernel)
    if auto_pad == "NOTSET":
        return spatial_attribute(attributes, "pads", 2 * count, 0)
    if auto_pad == "VALID":
        return (0,) * (2 * count)
    begins, ends = [], []
    for size, k, s, d in zip(in_sizes, kernel, strides, dilations):
        target = (size + s - 1) // s
        needed = max(0, (target - 1) * s + d * (k - 1) + 1 - size)
        begin = needed // 2 if auto_pad == "SAME_UPPER" else (needed + 1) // 2
        begins.append(begin)
        ends.append(needed - begin)
    return tuple(begins + ends)


def conv_geometry(attributes: dict, x_shape: tuple[int, ...], w_shape: tuple[int, ...], *, spatial: int = 2) -> dict:
    """strides, pads, dilations and group of a convolution, as :mod:`quantref.runtimes.onnx` takes them."""
    if len(x_shape) != spatial + 2 or len(w_shape) != spatial + 2:
        raise ValueError(
            f"run_model supports {spatial}-D convolutions here ({spatial + 2}-D x and w) only, got x {tuple(x_shape)} "
            f"and w {tuple(w_shape)}"
        )
    kernel = tuple(w_shape[2:])
    declared = tuple(int(v) for v in attributes.get("kernel_shape", ()))
    if declared and declared != kernel:
        raise ValueError(f"kernel_shape {declared} does not match the weights' spatial shape {kernel}")
    strides = spatial_attribute(attributes, "strides", spatial, 1)
    dilations = spatial_attribute(attributes, "dilations", spatial, 1)
    pads = conv_pads(attributes, x_shape[2:], kernel, strides, dilations)
    return {"strides": strides, "pads": pads, "dilations": dilations, "group": int(attributes.get("group", 1))}
