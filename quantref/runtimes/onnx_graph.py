"""An interpreter for quantized ONNX graphs, with the semantics of a named execution, compiled once and run jit'd.

:func:`run_model` runs a model exported by another tool (onnxruntime's quantizer, a framework's exporter) so that a
backend or an exporter can be checked against quantref's oracle on a whole network; :func:`compile_model` checks and
plans a graph once and returns a :class:`CompiledModel` that runs it as one ``jax.jit``-compiled function. Which
execution is reproduced is the ``flavor``:

- ``"onnxruntime"`` — onnxruntime's default session (CPU execution provider, graph optimisations on): QDQ node units
  are fused into integer kernels as onnxruntime fuses them (:mod:`~quantref.runtimes.onnx_qdq`), and every
  quantization operator is the function of :mod:`quantref.runtimes.onnx` (or :mod:`~quantref.runtimes.onnx_microsoft`)
  of the same name. This is what deploys.
- ``"onnxruntime_unoptimized"`` — the same session with ``ORT_DISABLE_ALL``: the graph as written, node by node.
- ``"reference"`` — the ONNX reference evaluator (``onnx.reference.ReferenceEvaluator``): the graph as written, its
  quantization operators with ``flavor="reference"``.

Operators are dispatched through one registry per domain, ``_OPS[domain][op_type]``: what each computes and what it
accepts, checked for every node before anything runs (:mod:`~quantref.runtimes.onnx_ops`,
:mod:`~quantref.runtimes.onnx_float`, :mod:`~quantref.runtimes.onnx_microsoft`).

References:
  ONNX operator specification, https://onnx.ai/onnx/operators/, and the ONNX IR specification,
  https://onnx.ai/onnx/repo-docs/IR.html. onnxruntime, "Graph optimizations",
  https://onnxruntime.ai/docs/performance/model-optimizations/graph-optimizations.html.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

import jax
import numpy as np

from quantref._validate import is_concrete
from quantref.runtimes import _arith, _qdq_drop, onnx_float, onnx_microsoft, onnx_nbits, onnx_ops, onnx_qdq
from quantref.runtimes import onnx as qonnx
from quantref.runtimes.onnx_ops import Context
from quantref.runtimes.onnx_qdq import Node

if TYPE_CHECKING:  # onnx is optional (the conformance extra); compile_model imports it when called
    import onnx

__all__ = ["FLAVORS", "SUPPORTED_OPS", "SUPPORTED_MICROSOFT_OPS", "CompiledModel", "compile_model", "run_model"]

#: The executions run_model reproduces (see the module docstring).
FLAVORS = ("onnxruntime", "onnxruntime_unoptimized", "reference")
_MS = "com.microsoft"
_DEFAULT_DOMAINS = ("", "ai.onnx")
_OPS: dict[str, dict[str, onnx_ops.Op]] = {
    "": {**onnx_ops.OPS, **onnx_float.OPS},
    _MS: dict(onnx_microsoft.OPS),
}

#: The operators of the default ``ai.onnx`` domain that :func:`run_model` executes.
SUPPORTED_OPS: tuple[str, ...] = tuple(sorted(_OPS[""]))
#: The ``com.microsoft`` operators that :func:`run_model` executes.
SUPPORTED_MICROSOFT_OPS: tuple[str, ...] = tuple(sorted(_OPS[_MS]))


def run_model(
    model: onnx.ModelProto | str | os.PathLike | bytes,
    feeds: Mapping[str, jax.Array | np.ndarray],
    *,
    flavor: str = "onnxruntime",
) -> dict[str, np.ndarray]:
    """Runs a quantized ONNX graph as onnxruntime (optimised or not) or the ONNX reference evaluator would.

    An interpreter for the operators quantized ONNX models are made of — QOperator graphs (QLinearConv,
    QLinearMatMul, the ``com.microsoft`` QGemm, QLinearAdd, ...) and QDQ graphs (float operators between
    QuantizeLinear and DequantizeLinear) — so that a model exported by another tool can be checked against quantref's
    oracle, output for output. With the default ``flavor="onnxruntime"`` it computes what onnxruntime's default
    session computes: QDQ node units fused into integer kernels (:mod:`~quantref.runtimes.onnx_qdq`), so that for
    instance a DequantizeLinear → Conv → QuantizeLinear unit is the QLinearConv

    $$
    y = \\operatorname{sat}\\big(\\operatorname{rne}(f_{32}(f_{32}(acc) \\cdot M)) + z_y\\big), \\quad
    M = f_{32}(f_{32}(s_x s_w) / s_y),
    $$

    with the int32 bias in ``acc``. What it computes, operator by operator:

    - **bit-exact**: QuantizeLinear, DequantizeLinear (every type of :func:`~quantref.runtimes.onnx.quantize_linear`,
      float16 scales included), DynamicQuantizeLinear, MatMulInteger, ConvInteger, QLinearMatMul, QLinearConv (2-D)
      and the ``com.microsoft`` operators of :mod:`~quantref.runtimes.onnx_microsoft`; data
      movement (Reshape, Transpose, Flatten, Squeeze, Unsqueeze, Concat, Gather, Slice, Split, Expand, Tile, Shape,
      Identity, Constant, ConstantOfShape, Range, Where), MaxPool (1 to 3 spatial dimensions, ``ceil_mode``,
      ``auto_pad``; padded positions are skipped as in onnxruntime; only the first output), Cast (below), and the
      exactly rounded float operators of :mod:`~quantref.runtimes.onnx_float` (Add, Mul, Relu, Clip, ..., and
      float32 and float16 Sigmoid, which follow MLAS's own approximation in the onnxruntime flavors).
    - **float, not bit-exact**: float Conv, MatMul, Gemm, pools, Softmax, reductions that sum, LayerNormalization
      and the other transcendental functions, which onnxruntime's kernels compute in another order or with other
      approximations (:mod:`~quantref.runtimes.onnx_float`): within a few float32 ulps, so a QuantizeLinear after
      one can move a code by one near a rounding tie. In an optimised QDQ graph only the units onnxruntime does not
      fuse (16-bit and 4-bit types, Softmax, Where, float operators without a DQ on every input) are left to them —
      except the MatMuls and Gemms of 16-bit activations and DQ'd constant weights, which become MatMulNBits
      (:mod:`~quantref.runtimes.onnx_nbits`), reproduced bit for bit.
    - Cast between bool, the integer types (int8 … uint64; int4/uint4/int2/uint2 as sources only), float16,
      bfloat16, float32, float64 and the float8 types: float → integer truncates toward zero; integer → integer
      wraps; float → float rounds to nearest even; float → float8 is QuantizeLinear with scale 1 (and ``saturate``).
      A float → integer cast whose truncated value does not fit the target goes through int32 (int64 for int64
      targets) as on x86-64, where NaN, $\\pm\\infty$ and out-of-range values become $-2^{31}$ ($-2^{63}$), and the
      low bits are kept (300.0 → uint8 44); to uint32/uint64 it follows the compiler's split at $2^{31}$/$2^{63}$.

    The ``com.microsoft`` operators follow onnxruntime's kernels in every flavor (the reference evaluator has none).
    Not reproduced: float MaxPool windows that hold NaN or only $-\\infty$ (onnxruntime's vectorized kernel answers
    by position), a float NaN's payload through float operators, onnxruntime's answers for float16/float64 →
    uint32/uint64 casts out of range, and the optimised session's MatMulNBits rewrite where its kernel is not
    reproduced (2-bit weights, blocks other than 32, float16 scales; see :mod:`~quantref.runtimes.onnx_nbits`),
    which runs as a float MatMul here (MatMulNBits' NaN activations are reproduced, as MLAS's maximum treats them).
    Every rule is checked against onnxruntime 1.32 (CPU execution provider) and the reference evaluator of onnx
    1.23 in ``tests/test_run_model.py``, ``tests/test_qdq.py``,
    ``tests/test_onnx_microsoft.py``, ``tests/test_onnx_node_tests.py`` and ``tests/test_matmul_nbits.py``.

    The graph runs as one ``jax.jit``-compiled function with 64-bit types enabled for the duration of the call
    (``jax.enable_x64``, scoped), so that int64/float64 tensors keep their values; nodes whose inputs are all
    constants are evaluated while compiling. To run one graph many times, compile it once with
    :func:`compile_model`. run_model needs the ``onnx`` package (the ``conformance`` extra); quantref itself
    imports without it.

    References:
      ONNX operator specification, https://onnx.ai/onnx/operators/ (the operators above), and the ONNX IR
      specification, https://onnx.ai/onnx/repo-docs/IR.html (graph inputs, initializers, topological order).
      onnxruntime ``core/optimizer/qdq_transformer/`` (the QDQ fusion), ``core/providers/cpu/nn/pool.cc`` and
      ``pool_attributes.h`` (MaxPool), ``core/providers/cpu/tensor/cast_op.cc`` (Cast).

    Args:
      model: an ``onnx.ModelProto``, a path to a ``.onnx`` file, or the serialized bytes.
      feeds: graph input name → array (numpy, ml_dtypes or JAX); each must have the input's declared dtype
        exactly and its shape, where symbolic (``dim_param``) and unknown dimensions match any size. Inputs that
        have an initializer of the same name are optional.
      flavor: the execution reproduced: ``"onnxruntime"`` (default session), ``"onnxruntime_unoptimized"``
        (``ORT_DISABLE_ALL``) or ``"reference"`` (the ONNX reference evaluator).

    Returns:
      Graph output name → numpy array (ml_dtypes arrays for float8, int4 and the other non-numpy types), in the
      order of ``graph.output``.

    Raises:
      ValueError: before anything runs: an unknown ``flavor``, a node with an unsupported operator (naming the
        operator, the node's name and index, and listing the supported operators), an operator outside the
        default and ``com.microsoft`` domains, an attribute or an input/output arity run_model does not handle, an
        input no earlier node defines, a missing or unknown feed name (listing the graph's inputs), a feed of the
        wrong shape. While compiling: invalid operator arguments (for example a scale that is not finite and > 0),
        named with the node.
      TypeError: a feed of the wrong dtype (before anything runs); ``model`` of an unsupported type; operands of
        unsupported dtypes, named with the node.
    """
    return compile_model(model, flavor=flavor)(feeds)


def compile_model(model: onnx.ModelProto | str | os.PathLike | bytes, *, flavor: str = "onnxruntime") -> CompiledModel:
    """Checks and plans an ONNX graph once, for :func:`run_model`'s semantics; the result runs it jit-compiled.

    Args:
      model: an ``onnx.ModelProto``, a path to a ``.onnx`` file, or the serialized bytes.
      flavor: ``"onnxruntime"``, ``"onnxruntime_unoptimized"`` or ``"reference"`` (see :func:`run_model`).

    Returns:
      A :class:`CompiledModel`; call it with the feeds. Each new set of input shapes compiles once.

    Raises:
      ValueError, TypeError: as :func:`run_model` before anything runs.
    """
    import onnx
    import onnx.numpy_helper  # noqa: F401  (makes onnx.numpy_helper available as an attribute)

    if not isinstance(flavor, str) or flavor not in FLAVORS:
        raise ValueError(f"flavor must be one of {FLAVORS}, got {flavor!r:.80}")
    model = _load_model(onnx, model)
    graph = model.graph
    if len(graph.sparse_initializer):
        raise ValueError("sparse initializers are not supported by run_model")
    initializers = {tensor.name: onnx.numpy_helper.to_array(tensor) for tensor in graph.initializer}
    opsets = {("" if entry.domain in _DEFAULT_DOMAINS else entry.domain): entry.version for entry in model.opset_import}
    nodes = []
    defined = set(initializers) | {value_info.name for value_info in graph.input}
    for index, proto in enumerate(graph.node):
        node = Node(
            index,
            proto.name,
            proto.op_type,
            "" if proto.domain in _DEFAULT_DOMAINS else proto.domain,
            tuple(proto.input),
            tuple(proto.output),
            _attributes(onnx, proto),
        )
        _check_node(node)
        for name in node.inputs:
            if name and name not in defined:
                raise ValueError(
                    f"{node.label()} reads {name!r}, which no graph input, initializer or earlier node defines "
                    f"(graph.node must be in topological order)"
                )
        defined.update(name for name in node.outputs if name)
        nodes.append(node)
    outputs = tuple(value_info.name for value_info in graph.output)
    for name in outputs:
        if name not in defined:
            raise ValueError(f"graph output {name!r} is produced by no node, input or initializer")
    # An initializer that graph.input also lists may be fed: onnxruntime does not treat it as a constant (its
    # GetConstantInitializer returns null), so no rewrite may rely on its value.
    graph_inputs = _graph_input_names(graph)
    constants = {name: value for name, value in initializers.items() if name not in graph_inputs}
    _check_nbits_nodes(nodes, constants, graph_inputs)
    if flavor == "onnxruntime":
        types = {name: np.dtype(value.dtype) for name, value in initializers.items()}
        types.update({vi.name: _np_dtype(vi.type.tensor_type.elem_type) for vi in graph.input if _is_tensor(vi)})
        shapes = _inferred_shapes(onnx, model, constants)
        nodes, added = onnx_qdq.fuse(nodes, constants, types, set(outputs), opsets.get("", 1), shapes)
        initializers = {**initializers, **added}
        nodes = _qdq_drop.drop_max_pool(nodes, {**constants, **added}, set(outputs))
    return CompiledModel(onnx, graph, _live(nodes, outputs), initializers, outputs, opsets, flavor)


def _graph_input_names(graph) -> frozenset[str]:
    return frozenset(value_info.name for value_info in graph.input)


def _inferred_shapes(onnx, model, constants: Mapping[str, np.ndarray]) -> dict[str, tuple | None]:
    """Every value's shape as ONNX shape inference knows it (ints, dim_param names or None per dimension; None for
    an unknown rank), the constant initializers' own shapes included: what onnxruntime's rewrites look at."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True).graph
    except Exception:  # inference that fails (a >2 GB model, an inconsistent graph) leaves only what is declared
        inferred = model.graph
    shapes: dict[str, tuple | None] = {}
    for value_info in (*inferred.value_info, *inferred.output, *inferred.input):
        if _is_tensor(value_info):
            shapes[value_info.name] = _expected_shape(value_info)
    shapes.update({name: tuple(np.shape(value)) for name, value in constants.items()})
    return shapes


def _check_nbits_nodes(nodes: list[Node], constants: Mapping[str, np.ndarray], graph_inputs: frozenset[str]) -> None:
    """MatMulNBits' attributes and constant weights, checked before tracing (:mod:`~quantref.runtimes.onnx_nbits`)."""
    for node in nodes:
        if node.domain != _MS or node.op_type != "MatMulNBits":
            continue
        label = node.label()
        try:
            onnx_nbits.nbits_attributes(node.attributes)
            weights = [name for name in node.inputs[1:4] if name]
            fed = [name for name in weights if name in graph_inputs]
            if fed:
                raise ValueError(f"MatMulNBits: {', '.join(map(repr, fed))} {onnx_nbits.WEIGHTS_NOT_CONSTANT}")
            if all(name in constants for name in node.inputs[1:3]):
                zero_points = node.inputs[3] if len(node.inputs) > 3 and node.inputs[3] else None
                if zero_points is None or zero_points in constants:
                    onnx_nbits.check_weight_shapes(
                        node.attributes,
                        np.shape(constants[node.inputs[1]]),
                        np.shape(constants[node.inputs[2]]),
                        None if zero_points is None else np.shape(constants[zero_points]),
                    )
        except ValueError as error:
            raise ValueError(f"{label}: {error}") from None


class CompiledModel:
    """An ONNX graph checked and planned once, run as one ``jax.jit``-compiled function (see :func:`run_model`).

    Attributes:
      flavor: the execution it reproduces.
      nodes: the nodes it runs, after QDQ fusion (``"onnxruntime"``) and without those no output needs.
      input_names: the graph inputs it needs fed.
      output_names: the graph outputs it returns, in order.
    """

    def __init__(self, onnx, graph, nodes, initializers, outputs, opsets, flavor):
        self.flavor = flavor
        self.nodes = tuple(nodes)
        self.output_names = outputs
        self._graph_inputs = {vi.name: vi for vi in graph.input}
        self.input_names = tuple(name for name in self._graph_inputs if name not in initializers)
        self._initializers = initializers
        self._opsets = opsets
        self._onnx = onnx
        self._unrounded = _selected_only(self.nodes, outputs)
        self._jitted = jax.jit(self._execute, static_argnums=0)

    def __call__(self, feeds: Mapping[str, jax.Array | np.ndarray]) -> dict[str, np.ndarray]:
        """Runs the graph on ``feeds`` (graph input name → array); returns graph output name → numpy array."""
        checked = _check_feeds(self._onnx, self._graph_inputs, feeds, self._initializers)
        names = tuple(sorted(checked))
        with jax.enable_x64(True):
            results = self._jitted(names, *(checked[name] for name in names))
            return {name: np.asarray(value) for name, value in zip(self.output_names, results)}

    def _execute(self, names, *values):
        env = {**self._initializers, **dict(zip(names, values))}
        for node in self.nodes:
            op = _OPS[node.domain][node.op_type]
            inputs = [env[name] if name else None for name in node.inputs]
            while inputs and inputs[-1] is None:
                inputs.pop()
            context = Context(self.flavor, self._opsets.get(node.domain, 1), len(node.outputs))
            try:
                # What is known before running is computed now: constant folding, and the operators' checks of
                # concrete arguments (a scale's value) see concrete values.
                with jax.ensure_compile_time_eval():
                    results = op.impl(inputs, node.attributes, context)
                if all(value is None or is_concrete(value) for value in inputs):
                    results = [np.asarray(value) for value in results]
                else:
                    results = [
                        value if name in self._unrounded else _node_output(value)
                        for name, value in zip(node.outputs, results)
                    ]
            except (ValueError, TypeError) as error:
                raise type(error)(f"{node.label()}: {error}") from error
            for name, value in zip(node.outputs, results):
                if name:
                    env[name] = value
        return tuple(env[name] for name in self.output_names)


def _node_output(value):
    """A node's float output is rounded once, as the runtime's kernel returns it (no multiply-add across nodes)."""
    if np.issubdtype(np.dtype(value.dtype), np.floating) and np.dtype(value.dtype).itemsize >= 2:
        return _arith.rounded(value)
    return value


# Operators whose rule passes a float input through a select before any arithmetic (MaxPool's NaN test): the select
# already keeps the producer's product from being contracted with what follows, as _arith.rounded would.
_SELECTING = frozenset({"MaxPool"})


def _selected_only(nodes: tuple[Node, ...], outputs: tuple[str, ...]) -> frozenset[str]:
    """The values read only by :data:`_SELECTING` operators (and no graph output): their producers' outputs need no
    :func:`_node_output` barrier, which would otherwise sit between a convolution's channels-last result and the
    pool and keep XLA from cancelling the transposes between them."""
    readers: dict[str, set[str]] = {}
    for node in nodes:
        for name in node.inputs:
            if name:
                readers.setdefault(name, set()).add(node.op_type if node.domain == "" else f"{node.domain}.")
    return frozenset(name for name, ops in readers.items() if ops <= _SELECTING and name not in outputs)


def _live(nodes: list[Node], outputs: tuple[str, ...]) -> list[Node]:
    """The nodes some graph output depends on, in their order."""
    needed = set(outputs)
    kept = []
    for node in reversed(nodes):
        if any(name in needed for name in node.outputs if name):
            kept.append(node)
            needed.update(name for name in node.inputs if name)
    return kept[::-1]


# ----------------------------------------------------------------------------------------------------------------
# Checking the graph and the feeds before anything runs


def _np_dtype(elem_type: int) -> np.dtype:
    return onnx_ops.np_dtype(elem_type)


def _onnx_type_name(onnx, elem_type: int) -> str:
    return onnx.TensorProto.DataType.Name(elem_type)


def _is_tensor(value_info) -> bool:
    return value_info.type.HasField("tensor_type")


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


def _check_node(node: Node) -> None:
    """Everything about a node that can be checked before running: op, domain, arity, attributes."""
    import onnx

    label = node.label()
    if node.domain not in _OPS:
        raise ValueError(
            f"{label} is in the domain {node.domain!r}; run_model supports the default ONNX domain (ai.onnx) "
            f"operators {', '.join(SUPPORTED_OPS)} and the com.microsoft operators "
            f"{', '.join(SUPPORTED_MICROSOFT_OPS)}"
        )
    spec = _OPS[node.domain].get(node.op_type)
    if spec is None:
        supported = SUPPORTED_OPS if node.domain == "" else SUPPORTED_MICROSOFT_OPS
        raise ValueError(f"{label}: unsupported operator {node.op_type!r}; run_model supports {', '.join(supported)}")
    inputs = list(node.inputs)
    most = spec.inputs[1] if spec.inputs[1] >= 0 else len(inputs)
    if len(inputs) > most or any(not name for name in inputs[: spec.inputs[0]]) or len(inputs) < spec.inputs[0]:
        optional = "any number of" if spec.inputs[1] < 0 else str(spec.inputs[1] - spec.inputs[0])
        raise ValueError(
            f"{label} has inputs {inputs}; {node.op_type} takes {spec.inputs[0]} required and {optional} optional "
            f"inputs"
        )
    outputs = list(node.outputs)
    if any(outputs[spec.outputs :]) or not any(outputs):
        raise ValueError(
            f"{label} has outputs {outputs}; run_model supports at most {spec.outputs} output(s) of "
            f"{node.op_type}" + (" (MaxPool's Indices output is not supported)" if node.op_type == "MaxPool" else "")
        )
    unknown = sorted(set(node.attributes) - set(spec.attributes))
    if unknown:
        raise ValueError(
            f"{label} has attribute(s) {unknown} that run_model does not support for {node.op_type} "
            f"(supported: {list(spec.attributes)})"
        )
    attributes = node.attributes
    if node.op_type == "Constant" and len(attributes) != 1:
        raise ValueError(
            f"{label} must have exactly one of the attributes {list(spec.attributes)}, got {sorted(attributes)}"
        )
    if node.op_type == "Cast":
        if "to" not in attributes:
            raise ValueError(f"{label} has no 'to' attribute")
        try:
            target = _np_dtype(attributes["to"])
        except (KeyError, TypeError, ValueError):
            target = None
        if target not in onnx_ops.CAST_TARGETS:
            raise ValueError(
                f"{label}: Cast to {_onnx_type_name(onnx, attributes['to'])} is not supported; run_model casts to "
                f"{', '.join(d.name for d in onnx_ops.CAST_TARGETS)}"
            )
    if node.op_type in ("QuantizeLinear", "DequantizeLinear") and attributes.get("output_dtype", 0):
        target = _np_dtype(attributes["output_dtype"])
        dequantized = (np.dtype(np.float32), np.dtype(np.float16), np.dtype("bfloat16"))
        allowed = dequantized if node.op_type == "DequantizeLinear" else tuple(qonnx.QUANTIZED_DTYPES.values())
        if target not in allowed:
            raise ValueError(
                f"{label}: output_dtype {_onnx_type_name(onnx, attributes['output_dtype'])} is not supported by "
                f"run_model"
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


def _check_feeds(onnx, declared, feeds, initializers) -> dict[str, np.ndarray]:
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
        array = value if isinstance(value, jax.Array) else np.asarray(value)
        if not _is_tensor(declared[name]):
            raise ValueError(f"graph input {name!r} is not a tensor; run_model supports tensor inputs only")
        tensor_type = declared[name].type.tensor_type
        expected_dtype = _np_dtype(tensor_type.elem_type)
        if np.dtype(array.dtype) != expected_dtype:
            raise TypeError(
                f"feed {name!r} must have dtype {expected_dtype.name} (ONNX "
                f"{_onnx_type_name(onnx, tensor_type.elem_type)}), got {np.dtype(array.dtype).name}"
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
