"""An interpreter for quantized ONNX graphs, with onnxruntime's CPU semantics, bit for bit.

:func:`run_model` runs a model exported by another tool (onnxruntime's quantizer, a framework's exporter) node by
node, each quantization operator being the function of :mod:`quantref.runtimes.onnx` of the same name, so that a
backend or an exporter can be checked against quantref's oracle on a whole network. Operators are dispatched through
one registry, ``_OPS[op_type]``: what each computes (its rule, on numpy arrays) and what it accepts (inputs, outputs,
attributes), checked for every node before anything runs.

References:
  ONNX operator specification, https://onnx.ai/onnx/operators/, and the ONNX IR specification,
  https://onnx.ai/onnx/repo-docs/IR.html.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, NamedTuple

import jax
import ml_dtypes
import numpy as np

from quantref import formats
from quantref.runtimes import onnx as qonnx

if TYPE_CHECKING:  # onnx is optional (the conformance extra); run_model imports it when called
    import onnx

__all__ = ["SUPPORTED_OPS", "run_model"]

_DEFAULT_DOMAINS = ("", "ai.onnx")
_FLOAT_SOURCES = tuple(np.dtype(d) for d in (np.float16, ml_dtypes.bfloat16, np.float32, np.float64))
_CAST_INT_TARGETS = tuple(
    np.dtype(d) for d in (np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64)
)
_SUB_BYTE = tuple(np.dtype(d) for d in (ml_dtypes.int4, ml_dtypes.uint4, ml_dtypes.int2, ml_dtypes.uint2))
_FLOAT8 = tuple(formats.FLOAT8_DTYPES.values())
_CAST_TARGETS = _CAST_INT_TARGETS + _FLOAT_SOURCES + _FLOAT8 + (np.dtype(np.bool_),)
_CAST_SOURCES = _CAST_TARGETS + _SUB_BYTE


def run_model(
    model: onnx.ModelProto | str | os.PathLike | bytes,
    feeds: Mapping[str, jax.Array | np.ndarray],
) -> dict[str, np.ndarray]:
    """Runs a quantized ONNX graph with onnxruntime's CPU semantics, bit for bit.

    An interpreter for the operators that quantized ONNX models are made of, so that a model exported by another
    tool (onnxruntime's quantizer, a framework's exporter) can be checked against quantref's oracle node by node.
    Nodes run in ``graph.node`` order (the ONNX spec requires it to be topological); each quantization operator is
    the function of :mod:`quantref.runtimes.onnx` of the same name (``"onnxruntime"`` flavor), so for instance a
    QLinearConv computes

    $$
    y = \\operatorname{sat}\\big(\\operatorname{rne}(f_{32}(f_{32}(acc) \\cdot M)) + z_y\\big), \\quad
    M = f_{32}(f_{32}(s_x s_w) / s_y),
    $$

    and the remaining operators follow onnxruntime's CPU kernels:

    - QuantizeLinear, DequantizeLinear (float32 ``x`` and scales; per-tensor, per-axis, blocked; every output type
      of :func:`~quantref.runtimes.onnx.quantize_linear`), DynamicQuantizeLinear, MatMulInteger, ConvInteger,
      QLinearMatMul, QLinearConv (2-D, with ``auto_pad``, ``strides``, ``pads``, ``dilations``, ``group``).
    - MaxPool on float32/float64/int8/uint8, 1 to 3 spatial dimensions, with ``kernel_shape``, ``strides``,
      ``pads``, ``dilations``, ``ceil_mode`` and ``auto_pad``: padded positions are skipped, and with ``ceil_mode``
      a last window that would start in the end padding is dropped, as onnxruntime does. Only the first output
      (no Indices).
    - Reshape (``allowzero``), Flatten, Transpose, Identity, Relu (NaN and $-0$ pass through), Constant and
      initializers.
    - Cast between bool, the integer types (int8 … uint64; int4/uint4/int2/uint2 as sources only), float16,
      bfloat16, float32, float64 and the float8 types: float → integer truncates toward zero; integer → integer
      wraps; float → float rounds to nearest even; float → float8 is QuantizeLinear with scale 1 (and
      ``saturate``). A float → integer cast whose truncated value does not fit the target is undefined behaviour
      in C++; run_model reproduces what onnxruntime does on x86-64 for float32 inputs: the value goes through
      int32 (int64 for int64 targets), where NaN, $\\pm\\infty$ and out-of-range values become $-2^{31}$
      ($-2^{63}$), and the low bits are kept (so 300.0 → uint8 44 and 1e10 → uint8 0). To uint32/uint64 it follows
      the compiler's split at $2^{31}$ / $2^{63}$; onnxruntime gives other out-of-range answers for float16 and
      float64 inputs to uint32/uint64, which run_model does not reproduce.

    Not reproduced: float MaxPool windows that hold NaN or only $-\\infty$, where onnxruntime's vectorized (MLAS)
    kernel answers by position. Everything is checked against onnxruntime 1.32 (CPU execution provider) in
    ``tests/test_run_model.py``, with graph optimisations on and off.

    run_model needs the ``onnx`` package (the ``conformance`` extra); quantref itself imports without it.

    References:
      ONNX operator specification, https://onnx.ai/onnx/operators/ (the operators above), and the ONNX IR
      specification, https://onnx.ai/onnx/repo-docs/IR.html (graph inputs, initializers, topological order).
      onnxruntime ``core/providers/cpu/nn/pool.cc`` and ``pool_attributes.h`` (MaxPool),
      ``core/providers/cpu/tensor/cast_op.cc`` (Cast), and the sources listed in the module docstring.

    Args:
      model: an ``onnx.ModelProto``, a path to a ``.onnx`` file, or the serialized bytes.
      feeds: graph input name → array (numpy, ml_dtypes or JAX); each must have the input's declared dtype
        exactly and its shape, where symbolic (``dim_param``) and unknown dimensions match any size. Inputs that
        have an initializer of the same name are optional.

    Returns:
      Graph output name → numpy array (ml_dtypes arrays for float8, int4 and the other non-numpy types), in the
      order of ``graph.output``.

    Raises:
      ValueError: before anything runs: a node with an unsupported operator (naming the operator, the node's name
        and index, and listing the supported operators), an operator outside the default domain, an attribute or
        an input/output arity run_model does not handle, an input no earlier node defines, a missing or unknown
        feed name (listing the graph's inputs), a feed of the wrong shape. While running: invalid operator
        arguments (for example a scale that is not finite and > 0), named with the node.
      TypeError: a feed of the wrong dtype (before anything runs); ``model`` of an unsupported type; operands of
        unsupported dtypes while running, named with the node.
    """
    import onnx
    import onnx.numpy_helper  # noqa: F401  (makes onnx.numpy_helper available as an attribute)

    model = _load_model(onnx, model)
    graph = model.graph
    if len(graph.sparse_initializer):
        raise ValueError("sparse initializers are not supported by run_model")
    initializers = {tensor.name: onnx.numpy_helper.to_array(tensor) for tensor in graph.initializer}
    plan = []
    defined = set(initializers) | {value_info.name for value_info in graph.input}
    for index, node in enumerate(graph.node):
        attributes = _attributes(onnx, node)
        _check_node(onnx, index, node, attributes)
        for name in node.input:
            if name and name not in defined:
                raise ValueError(
                    f"{_node_label(index, node)} reads {name!r}, which no graph input, initializer or "
                    f"earlier node defines (graph.node must be in topological order)"
                )
        defined.update(name for name in node.output if name)
        plan.append((index, node, attributes))
    for value_info in graph.output:
        if value_info.name not in defined:
            raise ValueError(f"graph output {value_info.name!r} is produced by no node, input or initializer")
    env: dict[str, np.ndarray] = {**initializers, **_check_feeds(onnx, graph, feeds, initializers)}

    for index, node, attributes in plan:
        inputs = [env[name] if name else None for name in node.input]
        while inputs and inputs[-1] is None:
            inputs.pop()
        try:
            outputs = _OPS[node.op_type].impl(inputs, attributes)
        except (ValueError, TypeError) as error:
            raise type(error)(f"{_node_label(index, node)}: {error}") from error
        for name, value in zip(node.output, outputs):
            if name:
                env[name] = value
    return {value_info.name: np.array(env[value_info.name]) for value_info in graph.output}


# ----------------------------------------------------------------------------------------------------------------
# The operators: _OPS[op_type] = what it computes (on numpy arrays) and what it accepts


class _Op(NamedTuple):
    """One supported operator: its rule ``impl(inputs, attributes) -> outputs`` and its signature.

    Attributes:
      impl: the rule, on numpy arrays; ``inputs`` has trailing absent optional inputs removed.
      inputs: ``(required, most)`` inputs.
      outputs: the most outputs supported.
      attributes: the attributes it understands.
    """

    impl: Callable[[list, dict], list]
    inputs: tuple[int, int]
    outputs: int
    attributes: tuple[str, ...]


_OPS: dict[str, _Op] = {}
_CONV_ATTRIBUTES = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")


def _identity(inputs, attributes):
    return [inputs[0]]


def _constant(inputs, attributes):
    import onnx.numpy_helper

    ((name, value),) = attributes.items()
    if name == "value":
        return [onnx.numpy_helper.to_array(value)]
    if name in ("value_float", "value_floats"):
        return [np.array(value, np.float32)]
    return [np.array(value, np.int64)]


def _relu(inputs, attributes):
    x = inputs[0]
    return [np.where(x < 0, np.zeros((), x.dtype), x)]  # keeps NaN and -0.0, as onnxruntime does


def _transpose(inputs, attributes):
    perm = attributes.get("perm")
    return [np.transpose(inputs[0], None if perm is None else [int(p) for p in perm])]


def _flatten_op(inputs, attributes):
    return [_flatten(inputs[0], int(attributes.get("axis", 1)))]


def _reshape_op(inputs, attributes):
    return [_reshape(inputs[0], inputs[1], bool(attributes.get("allowzero", 0)))]


def _cast_op(inputs, attributes):
    import onnx

    return [_cast(inputs[0], _np_dtype(onnx, attributes["to"]), bool(attributes.get("saturate", 1)))]


def _max_pool_op(inputs, attributes):
    return [_max_pool(inputs[0], attributes)]


def _quantize_linear(inputs, attributes):
    import onnx

    x, scale, zero_point = inputs[0], inputs[1], inputs[2] if len(inputs) > 2 else None
    _float32_only(x, "x", "QuantizeLinear")
    _float32_only(scale, "y_scale", "QuantizeLinear")
    output_dtype = attributes.get("output_dtype", 0)
    y = qonnx.quantize_linear(
        x,
        scale,
        zero_point,
        axis=int(attributes.get("axis", 1)),
        block_size=int(attributes.get("block_size", 0)),
        saturate=bool(attributes.get("saturate", 1)),
        output_dtype=_np_dtype(onnx, output_dtype) if output_dtype else None,
    )
    return [np.asarray(y)]


def _dequantize_linear(inputs, attributes):
    x, scale, zero_point = inputs[0], inputs[1], inputs[2] if len(inputs) > 2 else None
    _float32_only(scale, "x_scale", "DequantizeLinear")
    axis, block_size = int(attributes.get("axis", 1)), int(attributes.get("block_size", 0))
    return [np.asarray(qonnx.dequantize_linear(x, scale, zero_point, axis=axis, block_size=block_size))]


def _dynamic_quantize_linear(inputs, attributes):
    x = _float32_only(inputs[0], "x", "DynamicQuantizeLinear")
    return [np.asarray(value) for value in qonnx.dynamic_quantize_linear(x)]


def _matmul_integer(inputs, attributes):
    return [np.asarray(qonnx.matmul_integer(*inputs))]


def _qlinear_matmul(inputs, attributes):
    for position, name in ((1, "a_scale"), (4, "b_scale"), (6, "y_scale")):
        _float32_only(inputs[position], name, "QLinearMatMul")
    return [np.asarray(qonnx.qlinear_matmul(*inputs))]


def _conv_integer(inputs, attributes):
    return [np.asarray(qonnx.conv_integer(*inputs, **_conv_geometry_attributes(attributes, inputs[0], inputs[1])))]


def _qlinear_conv(inputs, attributes):
    for position, name in ((1, "x_scale"), (4, "w_scale"), (6, "y_scale")):
        _float32_only(inputs[position], name, "QLinearConv")
    return [np.asarray(qonnx.qlinear_conv(*inputs, **_conv_geometry_attributes(attributes, inputs[0], inputs[3])))]


_OPS["Identity"] = _Op(_identity, (1, 1), 1, ())
_OPS["Constant"] = _Op(_constant, (0, 0), 1, ("value", "value_float", "value_floats", "value_int", "value_ints"))
_OPS["Relu"] = _Op(_relu, (1, 1), 1, ())
_OPS["Transpose"] = _Op(_transpose, (1, 1), 1, ("perm",))
_OPS["Flatten"] = _Op(_flatten_op, (1, 1), 1, ("axis",))
_OPS["Reshape"] = _Op(_reshape_op, (2, 2), 1, ("allowzero",))
_OPS["Cast"] = _Op(_cast_op, (1, 1), 1, ("to", "saturate"))
# Indices (MaxPool's second output) is not supported; storage_order only affects it.
_OPS["MaxPool"] = _Op(
    _max_pool_op, (1, 1), 1, ("auto_pad", "ceil_mode", "dilations", "kernel_shape", "pads", "storage_order", "strides")
)
_OPS["QuantizeLinear"] = _Op(_quantize_linear, (2, 3), 1, ("axis", "block_size", "output_dtype", "saturate"))
_OPS["DequantizeLinear"] = _Op(_dequantize_linear, (2, 3), 1, ("axis", "block_size", "output_dtype"))
_OPS["DynamicQuantizeLinear"] = _Op(_dynamic_quantize_linear, (1, 1), 3, ())
_OPS["MatMulInteger"] = _Op(_matmul_integer, (2, 4), 1, ())
_OPS["QLinearMatMul"] = _Op(_qlinear_matmul, (8, 8), 1, ())
_OPS["ConvInteger"] = _Op(_conv_integer, (2, 4), 1, _CONV_ATTRIBUTES)
_OPS["QLinearConv"] = _Op(_qlinear_conv, (8, 9), 1, _CONV_ATTRIBUTES)

#: The operators :func:`run_model` executes (all in the default ``ai.onnx`` domain).
SUPPORTED_OPS: tuple[str, ...] = tuple(sorted(_OPS))


# ----------------------------------------------------------------------------------------------------------------
# Numpy rules: what onnxruntime's CPU kernels compute for the non-quantization operators


def _float32_only(value: np.ndarray, name: str, op: str) -> np.ndarray:
    if value.dtype != np.float32:
        raise TypeError(f"{op}: run_model supports float32 {name} only, got {value.dtype.name}")
    return value


def _spatial_attribute(attributes: dict, name: str, count: int, default: int) -> tuple[int, ...]:
    value = tuple(int(v) for v in attributes.get(name, ()))
    return value if value else (default,) * count


def _conv_pads(attributes: dict, in_sizes, kernel, strides, dilations) -> tuple[int, ...]:
    """Explicit (begins..., ends...) pads, resolving auto_pad as onnxruntime's conv does."""
    auto_pad = attributes.get("auto_pad", "NOTSET")
    count = len(kernel)
    if auto_pad == "NOTSET":
        return _spatial_attribute(attributes, "pads", 2 * count, 0)
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


def _conv_geometry_attributes(attributes: dict, x: np.ndarray, w: np.ndarray) -> dict:
    if x.ndim != 4 or w.ndim != 4:
        raise ValueError(
            f"run_model supports 2-D convolutions (4-D NCHW x and OIHW w) only, got x {x.shape} and w {w.shape}"
        )
    kernel = tuple(w.shape[2:])
    declared = tuple(int(v) for v in attributes.get("kernel_shape", ()))
    if declared and declared != kernel:
        raise ValueError(f"kernel_shape {declared} does not match the weights' spatial shape {kernel}")
    strides = _spatial_attribute(attributes, "strides", 2, 1)
    dilations = _spatial_attribute(attributes, "dilations", 2, 1)
    pads = _conv_pads(attributes, x.shape[2:], kernel, strides, dilations)
    return {"strides": strides, "pads": pads, "dilations": dilations, "group": int(attributes.get("group", 1))}


def _pool_output_size(
    size: int, kernel: int, stride: int, dilation: int, begin: int, total_pad: int, ceil_mode: bool
) -> int:
    """onnxruntime's PoolAttributes::ComputeOutputSize: a float32 division, truncated or ceiled."""
    quotient = np.float32(size + total_pad - dilation * (kernel - 1) - 1) / np.float32(stride) + np.float32(1)
    out = int(np.ceil(quotient)) if ceil_mode else int(np.trunc(quotient))
    # A last window that would start in the end padding is dropped (onnxruntime 1.32 does, as PyTorch does).
    if ceil_mode and out > 0 and (out - 1) * stride >= size + begin:
        out -= 1
    return out


def _max_pool(x: np.ndarray, attributes: dict) -> np.ndarray:
    allowed = tuple(np.dtype(d) for d in (np.float32, np.float64, np.int8, np.uint8))
    if x.dtype not in allowed:
        raise TypeError(f"MaxPool input must be one of {[d.name for d in allowed]}, got {x.dtype.name}")
    if "kernel_shape" not in attributes:
        raise ValueError("MaxPool needs kernel_shape")
    kernel = tuple(int(k) for k in attributes["kernel_shape"])
    count = len(kernel)
    if x.ndim != count + 2 or not 1 <= count <= 3:
        raise ValueError(
            f"MaxPool with kernel_shape {kernel} needs a {count + 2}-D input (1 to 3 spatial "
            f"dimensions), got shape {x.shape}"
        )
    strides = _spatial_attribute(attributes, "strides", count, 1)
    dilations = _spatial_attribute(attributes, "dilations", count, 1)
    ceil_mode = bool(attributes.get("ceil_mode", 0))
    auto_pad = attributes.get("auto_pad", "NOTSET")
    pads = _spatial_attribute(attributes, "pads", 2 * count, 0)
    if len(strides) != count or len(dilations) != count or len(pads) != 2 * count:
        raise ValueError(
            f"MaxPool strides/dilations/pads must have {count}/{count}/{2 * count} entries, got "
            f"{strides}, {dilations}, {pads}"
        )
    if any(k < 1 for k in kernel) or any(s < 1 for s in strides) or any(d < 1 for d in dilations):
        raise ValueError(
            f"MaxPool kernel_shape, strides and dilations must be >= 1, got {kernel}, {strides}, {dilations}"
        )
    if any(p < 0 or p >= kernel[i % count] for i, p in enumerate(pads)):
        raise ValueError(f"MaxPool pads must be >= 0 and smaller than the kernel, got {pads} for {kernel}")
    begins, out_sizes = [], []
    for i, (size, k, s, d) in enumerate(zip(x.shape[2:], kernel, strides, dilations)):
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
                f"MaxPool output would be empty along spatial axis {i} (input {size}, kernel {k}, "
                f"stride {s}, dilation {d}, padding {total})"
            )
        begins.append(begin)
        out_sizes.append(out)
    lowest = np.finfo(x.dtype).min if x.dtype.kind == "f" else np.iinfo(x.dtype).min
    result = np.full(x.shape[:2] + tuple(out_sizes), lowest, x.dtype)
    # onnxruntime: start from the type's lowest value, visit the window in row-major order and keep an element
    # when it is strictly greater; padded positions are skipped.
    for offsets in np.ndindex(*kernel):
        candidate, valid = x, np.ones((1, 1) + (1,) * count, bool)
        for axis, (offset, size, out, s, d, begin) in enumerate(
            zip(offsets, x.shape[2:], out_sizes, strides, dilations, begins)
        ):
            positions = np.arange(out) * s - begin + offset * d
            inside = (positions >= 0) & (positions < size)
            candidate = np.take(candidate, np.clip(positions, 0, size - 1), axis=axis + 2)
            shape = [1] * (count + 2)
            shape[axis + 2] = out
            valid = valid & inside.reshape(shape)
        result = np.where(valid & (candidate > result), candidate, result)
    return result


def _truncate_to_signed(value: np.ndarray, bits: int) -> np.ndarray:
    """x86 cvttss2si: truncation; NaN and out-of-range values give the integer indefinite INT_MIN."""
    limit = 2.0 ** (bits - 1)
    truncated = np.trunc(value)
    with np.errstate(invalid="ignore"):
        inside = (truncated >= -limit) & (truncated < limit)
    return np.where(inside, truncated, -limit).astype(np.int64 if bits == 64 else np.int32)


def _cast_float_to_int(x: np.ndarray, target: np.dtype) -> np.ndarray:
    value = x.astype(np.float64)  # exact for every float source
    if target in (np.dtype(np.uint32), np.dtype(np.uint64)):
        bits = target.itemsize * 8
        half = 2.0 ** (bits - 1)
        with np.errstate(invalid="ignore"):
            big = value >= half
        signed = np.dtype(np.int32 if bits == 32 else np.int64)
        low = _truncate_to_signed(value, bits)
        high = _truncate_to_signed(value - half, bits) ^ signed.type(np.iinfo(signed).min)
        return np.where(big, high, low).view(target)
    if target == np.dtype(np.int64):
        return _truncate_to_signed(value, 64)
    # int8/uint8/int16/uint16/int32: through int32, keeping the low bits.
    return _truncate_to_signed(value, 32).astype(target)


def _cast(x: np.ndarray, target: np.dtype, saturate: bool) -> np.ndarray:
    source = x.dtype
    if source not in _CAST_SOURCES:
        raise TypeError(f"Cast from {source.name} is not supported by run_model")
    if source == target:
        return x
    if target == np.dtype(np.bool_):
        return x.astype(np.float32) != 0 if source in _FLOAT8 else x != 0
    if source in _FLOAT8:
        x, source = x.astype(np.float32), np.dtype(np.float32)
        if source == target:
            return x
    if target in _FLOAT8:
        # float → float8 is QuantizeLinear with scale 1 (onnxruntime uses the same converter for both).
        wide = x if source in _FLOAT_SOURCES and source != np.float64 else x.astype(np.float32)
        return np.asarray(qonnx.quantize_linear(wide, np.float32(1.0), np.zeros((), target), saturate=saturate))
    if source in _FLOAT_SOURCES and target in _CAST_INT_TARGETS:
        return _cast_float_to_int(x, target)
    if source == np.dtype(np.bool_) or source in _SUB_BYTE:
        x = x.astype(np.int32)
    with np.errstate(over="ignore", invalid="ignore"):
        return x.astype(target)  # integer wrap-around; int → float and float → float round to nearest even


def _reshape(data: np.ndarray, shape: np.ndarray, allowzero: bool) -> np.ndarray:
    if shape.ndim != 1 or shape.dtype != np.int64:
        raise TypeError(f"Reshape's shape must be a 1-D int64 tensor, got {shape.dtype.name} {shape.shape}")
    dims = [int(d) for d in shape]
    if not allowzero:
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
    try:
        return data.reshape(dims)
    except ValueError as error:
        raise ValueError(f"cannot reshape {data.shape} to {dims}") from error


def _flatten(x: np.ndarray, axis: int) -> np.ndarray:
    if not -x.ndim <= axis <= x.ndim:
        raise ValueError(f"Flatten axis {axis} is out of range for a {x.ndim}-D input")
    axis = axis + x.ndim if axis < 0 else axis
    rows = int(np.prod(x.shape[:axis], dtype=np.int64))
    return x.reshape(rows, int(np.prod(x.shape[axis:], dtype=np.int64)))


# ----------------------------------------------------------------------------------------------------------------
# Checking the graph and the feeds before anything runs


def _np_dtype(onnx, elem_type: int) -> np.dtype:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))


def _onnx_type_name(onnx, elem_type: int) -> str:
    return onnx.TensorProto.DataType.Name(elem_type)


def _node_label(index: int, node) -> str:
    name = f" {node.name!r}" if node.name else " (unnamed)"
    return f"node {index}{name} ({node.op_type})"


def _load_model(onnx, model):
    if isinstance(model, onnx.ModelProto):
        return model
    if not isinstance(model, (str, os.PathLike, bytes, bytearray)):
        raise TypeError(f"model must be an onnx.ModelProto, a path, or serialized bytes, got {type(model).__name__}")
    try:
        if isinstance(model, (bytes, bytearray)):
            return onnx.load_model_from_string(bytes(model))
        return onnx.load(os.fspath(model))
    except OSError as error:
        raise ValueError(f"model {os.fspath(model)!r} cannot be read: {error.strerror or error}") from None
    except Exception as error:  # protobuf's DecodeError and friends: not a serialized ModelProto
        shown = f"{os.fspath(model)!r}" if isinstance(model, (str, os.PathLike)) else "(bytes)"
        raise ValueError(f"model {shown} is not a serialized ONNX model: {error}") from None


def _attributes(onnx, node) -> dict:
    values = {}
    for attribute in node.attribute:
        value = onnx.helper.get_attribute_value(attribute)
        if isinstance(value, bytes):
            value = value.decode()
        values[attribute.name] = value
    return values


def _check_node(onnx, index: int, node, attributes: dict) -> None:
    """Everything about a node that can be checked before running: op, domain, arity, attributes."""
    label = _node_label(index, node)
    if node.domain not in _DEFAULT_DOMAINS:
        raise ValueError(
            f"{label} is in the domain {node.domain!r}; run_model supports only the default ONNX "
            f"domain (ai.onnx) operators {', '.join(SUPPORTED_OPS)}"
        )
    spec = _OPS.get(node.op_type)
    if spec is None:
        raise ValueError(
            f"{label}: unsupported operator {node.op_type!r}; run_model supports {', '.join(SUPPORTED_OPS)}"
        )
    inputs = list(node.input)
    if (
        len(inputs) > spec.inputs[1]
        or any(not name for name in inputs[: spec.inputs[0]])
        or len(inputs) < spec.inputs[0]
    ):
        raise ValueError(
            f"{label} has inputs {inputs}; {node.op_type} takes {spec.inputs[0]} required and "
            f"{spec.inputs[1] - spec.inputs[0]} optional inputs"
        )
    outputs = list(node.output)
    if any(outputs[spec.outputs :]) or not any(outputs):
        raise ValueError(
            f"{label} has outputs {outputs}; run_model supports at most {spec.outputs} output(s) of "
            f"{node.op_type}" + (" (MaxPool's Indices output is not supported)" if node.op_type == "MaxPool" else "")
        )
    unknown = sorted(set(attributes) - set(spec.attributes))
    if unknown:
        raise ValueError(
            f"{label} has attribute(s) {unknown} that run_model does not support for "
            f"{node.op_type} (supported: {list(spec.attributes)})"
        )
    if node.op_type == "Constant" and len(attributes) != 1:
        raise ValueError(
            f"{label} must have exactly one of the attributes {list(spec.attributes)}, got {sorted(attributes)}"
        )
    if node.op_type == "Cast":
        if "to" not in attributes:
            raise ValueError(f"{label} has no 'to' attribute")
        try:
            target = _np_dtype(onnx, attributes["to"])
        except (KeyError, TypeError, ValueError):
            target = None
        if target not in _CAST_TARGETS:
            raise ValueError(
                f"{label}: Cast to {_onnx_type_name(onnx, attributes['to'])} is not supported; "
                f"run_model casts to {', '.join(d.name for d in _CAST_TARGETS)}"
            )
    if node.op_type in ("QuantizeLinear", "DequantizeLinear") and attributes.get("output_dtype", 0):
        target = _np_dtype(onnx, attributes["output_dtype"])
        allowed = (
            (np.dtype(np.float32),) if node.op_type == "DequantizeLinear" else tuple(qonnx.QUANTIZED_DTYPES.values())
        )
        if target not in allowed:
            raise ValueError(
                f"{label}: output_dtype {_onnx_type_name(onnx, attributes['output_dtype'])} is not "
                f"supported by run_model"
            )
    if attributes.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
        raise ValueError(f"{label}: unknown auto_pad {attributes['auto_pad']!r}")


def _expected_shape(value_info) -> tuple | None:
    """A graph input's declared shape: ints for fixed dims, the dim_param name (or None) for symbolic ones."""
    tensor_type = value_info.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    dims = []
    for dim in tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(int(dim.dim_value))
        else:
            dims.append(dim.dim_param or None)
    return tuple(dims)


def _check_feeds(onnx, graph, feeds, initializers) -> dict[str, np.ndarray]:
    declared = {value_info.name: value_info for value_info in graph.input}
    required = [name for name in declared if name not in initializers]
    if not hasattr(feeds, "items"):
        raise TypeError(f"feeds must be a mapping from input name to array, got {type(feeds).__name__}")
    unknown = [name for name in feeds if name not in declared]
    if unknown:
        raise ValueError(f"unknown feed name(s) {unknown}; the graph's inputs are {required}")
    missing = [name for name in required if name not in feeds]
    if missing:
        raise ValueError(f"missing feed(s) {missing}; the graph's inputs are {required}")
    checked = {}
    for name, value in feeds.items():
        array = np.asarray(value)
        if not declared[name].type.HasField("tensor_type"):
            raise ValueError(f"graph input {name!r} is not a tensor; run_model supports tensor inputs only")
        tensor_type = declared[name].type.tensor_type
        expected_dtype = _np_dtype(onnx, tensor_type.elem_type)
        if array.dtype != expected_dtype:
            raise TypeError(
                f"feed {name!r} must have dtype {expected_dtype.name} (ONNX "
                f"{_onnx_type_name(onnx, tensor_type.elem_type)}), got {array.dtype.name}"
            )
        expected_shape = _expected_shape(declared[name])
        if expected_shape is not None:
            fits = len(expected_shape) == array.ndim and all(
                not isinstance(want, int) or want == got for want, got in zip(expected_shape, array.shape)
            )
            if not fits:
                shown = tuple(d if d is not None else "?" for d in expected_shape)
                raise ValueError(f"feed {name!r} must have shape {shown} (names and ? are free), got {array.shape}")
        checked[name] = array
    return checked
