"""onnxruntime's QDQ node-unit fusion: DequantizeLinear → op → QuantizeLinear groups become integer kernels.

A QDQ model (the format onnxruntime's quantizer writes by default, and TensorRT, QNN and OpenVINO read) keeps its
arithmetic in float: each Conv, MatMul, Gemm, Add, ... reads DequantizeLinear outputs and feeds a QuantizeLinear.
onnxruntime's default session (graph optimisations on) does not run it that way: it rewrites every such *node unit*
into one integer kernel — DQ→Conv→Q into QLinearConv, DQ→MatMul→Q into QLinearMatMul (MatMulIntegerToFloat without
the Q), DQ→Gemm(→Q) into QGemm, DQ→Add/Mul→Q into QLinearAdd/QLinearMul, DQ→Concat→Q into QLinearConcat,
DQ→AveragePool/GlobalAveragePool/LeakyRelu/Sigmoid/Softmax→Q into their QLinear versions — and those kernels round
differently from the float graph (a QLinearConv adds its int32 bias to the accumulator and requantizes once; the
float graph adds a dequantized bias in float and quantizes the float sum). :func:`fuse` makes the same decisions,
so that :func:`~quantref.runtimes.onnx_graph.run_model` computes what deploys:

1. **Propagation** (``QDQPropagationTransformer``): a DequantizeLinear with a constant scalar scale and zero point
   is carried forward across MaxPool, Reshape, Transpose, Squeeze, Unsqueeze and Slice, and a QuantizeLinear
   backward across them, by inserting Q→DQ pairs with the same parameters. The values do not change (quantizing a
   dequantized code gives the code back, and these operators only move or select values) but more operators end up
   between a DQ and a Q.
2. **int8 to uint8** (``QDQS8ToU8Transformer``): a Q→DQ pair with an int8 zero point, where the Q has no other
   consumer, is converted to uint8 (codes and zero point + 128, the same dequantized values). A Q that feeds several
   DQs keeps int8, so the units on either side of it may see mixed types and stay float.
3. **Selection** (``QDQSelectorActionTransformer``'s selectors): an operator is a unit when every input it has comes
   from a DequantizeLinear and, except for MatMul and Gemm, its only consumer is one QuantizeLinear (possibly
   through a Relu or Clip that the Q's range makes redundant); input and output types agree (int8 activations need
   int8 weights; a Conv or Gemm bias must be int32); 16-bit and 4-bit types are not fused (there is no integer
   kernel for them), and such units stay float.
4. **Replacement**: the unit's target becomes one integer node reading the DQs' inputs and writing the Q's output.
   What DQ and Q nodes no longer feed anything is dropped by the interpreter.
5. **Weight-only units** (``DQMatMulToMatMulNBits``): a MatMul, or a Gemm with ``alpha = 1``, no transposes and (if
   it has a bias) ``beta = 1`` and a bias whose inferred shape is ``[N]``, that no rule above took, whose second
   input is a DequantizeLinear of a constant rank-2 int8/uint8/int4/uint4 weight — per tensor, per column (``axis`` 1 or
   absent; ``-1`` is refused) or in blocks along ``K`` (``axis=0``, ``block_size`` a power of two ≥ 16) — with a
   float32 scale, the DQ feeding only this node and no other DQ reading that weight, becomes ``com.microsoft``
   MatMulNBits with ``accuracy_level=4`` (:mod:`~quantref.runtimes.onnx_nbits`): weights as unsigned codes (int8 and
   int4 shifted by 128 and 8, zero points with them), blocks of 32 along ``K`` for per-tensor and per-column
   weights, a Gemm's bias as its bias input. The activation stays float, or comes from a 16-bit DQ; one from an
   8-bit, 4-bit or 32-bit DQ keeps the MatMul float. This is what happens to the MatMuls and Gemms of
   ``quantize_static(..., activation_type=QInt16)`` models and of weight-only models; MatMulNBits then quantizes
   the activations to int8 per row and block of 32 as it runs.

"Constant" means an initializer that ``graph.input`` does not also list: one it lists may be fed, and onnxruntime
neither propagates, converts to uint8, drops around a MaxPool, nor rewrites into MatMulNBits on its value (the
integer units themselves do not need constants and fuse either way).

Everything else runs as written: data movement between a DQ and a Q with equal parameters gives the same codes
either way, so the ``drop`` rules (DQ→MaxPool→Q becoming an integer MaxPool, and so on) need not be reproduced.
Not reproduced: the Where unit (QLinearWhere); the MatMulNBits rewrite of 2-bit weights, of weights in blocks
other than 32 along ``K`` and of float16 scales (onnxruntime rewrites them, with kernels not reproduced here: those
MatMuls stay float); and ``DoubleQDQPairsRemover``, which merges two consecutive Q→DQ pairs with different
parameters. The rules were checked against onnxruntime 1.32's saved optimised graphs (``tests/test_qdq.py``,
``tests/test_matmul_nbits.py``).

References:
  onnxruntime ``core/optimizer/qdq_transformer/qdq_propagation.cc``,
  ``selectors_actions/qdq_selectors.cc``, ``qdq_selector_action_transformer.cc``, ``qdq_actions.cc``; the
  ``NodeUnit`` definition in ``core/framework/node_unit.cc``; ``DQMatMulNodeGroupSelector`` and
  ``DQMatMulToMatMulNBitsAction`` in ``qdq_selectors.cc`` and ``qdq_actions.cc``. "Quantize ONNX models",
  onnxruntime documentation,
  https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html (QDQ format).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import NamedTuple

import numpy as np

from quantref.runtimes import onnx_nbits

__all__ = ["Node", "fuse"]

_MS = "com.microsoft"
_DEFAULT_DOMAINS = ("", "ai.onnx")
_PROPAGATABLE = ("MaxPool", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Slice")
_UNARY = {
    "AveragePool": "QLinearAveragePool",
    "GlobalAveragePool": "QLinearGlobalAveragePool",
    "LeakyRelu": "QLinearLeakyRelu",
    "Sigmoid": "QLinearSigmoid",
    "Softmax": "QLinearSoftmax",
}
_BINARY = {"Add": "QLinearAdd", "Mul": "QLinearMul"}
_EIGHT_BIT = (np.dtype(np.int8), np.dtype(np.uint8))


class Node(NamedTuple):
    """A node of the graph the interpreter runs: an ONNX node as read, one inserted by propagation, or a fused unit.

    Attributes:
      index: position of the node (of the unit's target) in ``graph.node``, for messages; -1 for inserted ones.
      name: the node's name.
      op_type: the operator.
      domain: ``""`` for ai.onnx, else the domain (``com.microsoft`` for fused units).
      inputs: input value names (``""`` for an absent optional input).
      outputs: output value names.
      attributes: attribute name → Python value.
      fused: for a fused unit, the ``graph.node`` indices of the nodes it replaces.
    """

    index: int
    name: str
    op_type: str
    domain: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attributes: dict
    fused: tuple[int, ...] = ()

    def label(self) -> str:
        """The node as messages name it: ``node 3 'conv' (Conv)``, with its unit for a fused node."""
        name = f" {self.name!r}" if self.name else " (unnamed)"
        fused = " fused from a QDQ node unit" if self.fused else ""
        return f"node {self.index}{name} ({self.op_type}{fused})"

    def is_op(self, op_type: str) -> bool:
        """Whether this is ``op_type`` of the default domain."""
        return self.op_type == op_type and self.domain in _DEFAULT_DOMAINS


def fuse(
    nodes: list[Node],
    initializers: Mapping[str, np.ndarray],
    value_types: Mapping[str, np.dtype],
    graph_outputs: set[str],
    opset: int,
    value_shapes: Mapping[str, tuple | None] | None = None,
) -> tuple[list[Node], dict[str, np.ndarray]]:
    """The nodes onnxruntime's optimised session runs for a QDQ graph (see the module docstring).

    Args:
      nodes: the graph's nodes, in topological order.
      initializers: constant tensors by name (the scales and zero points the rules look at): not those that
        ``graph.input`` also lists, which may be fed and which onnxruntime does not treat as constants.
      value_types: the element type of every graph input and initializer (more are inferred from the nodes).
      graph_outputs: names of the graph's outputs (a unit never swallows one).
      opset: the model's ai.onnx opset (QLinearSoftmax computes as its Softmax version does).
      value_shapes: value name → shape from ONNX shape inference (ints, dim_param names or None per dimension;
        None for an unknown rank): a Gemm bias's shape decides its MatMulNBits rewrite.

    Returns:
      The rewritten nodes (topological order kept) and the constants they add (zero points a DQ left implicit).

    Raises:
      ValueError: a Gemm that onnxruntime may rewrite into MatMulNBits but whose bias shape shape inference cannot
        tell (so whether it is rewritten is unknown).
    """
    graph = _Graph(list(nodes), dict(initializers), dict(value_types), set(graph_outputs), opset, value_shapes)
    graph.propagate()
    graph.signed_to_unsigned()
    return graph.select(), graph.added


class _Graph:
    def __init__(self, nodes, initializers, value_types, graph_outputs, opset, value_shapes=None):
        self.nodes = nodes
        self.shapes = dict(value_shapes or {})
        self.opset = opset
        self.initializers = initializers
        self.types = value_types
        self.graph_outputs = graph_outputs
        self.added: dict[str, np.ndarray] = {}
        self.counter = 0

    # --- the graph's edges ------------------------------------------------------------------------------------

    def producer(self, value: str) -> Node | None:
        for node in self.nodes:
            if value in node.outputs:
                return node
        return None

    def consumers(self, value: str) -> list[tuple[Node, int]]:
        return [(node, slot) for node in self.nodes for slot, name in enumerate(node.inputs) if name == value]

    def single_edge(self, value: str) -> Node | None:
        """The only consumer of ``value`` when it has exactly one edge and is not a graph output."""
        edges = self.consumers(value)
        if len(edges) != 1 or value in self.graph_outputs:
            return None
        return edges[0][0]

    def elem_type(self, value: str) -> np.dtype | None:
        """A value's element type, from the inputs and initializers, Q outputs, and type-preserving operators."""
        if value in self.types:
            return self.types[value]
        node = self.producer(value)
        if node is None:
            return None
        if node.is_op("QuantizeLinear"):
            if len(node.inputs) > 2 and node.inputs[2]:
                result = self.elem_type(node.inputs[2])
            else:
                output_dtype = node.attributes.get("output_dtype", 0)
                result = _np_dtype(output_dtype) if output_dtype else np.dtype(np.uint8)
        elif node.domain in _DEFAULT_DOMAINS and node.op_type in _PROPAGATABLE + ("Flatten", "Identity"):
            result = self.elem_type(node.inputs[0])
        else:
            return None
        self.types[value] = result
        return result

    def scalar_constant(self, name: str) -> bool:
        return name in self.initializers and np.asarray(self.initializers[name]).size == 1

    def qdq_parameters(self, node: Node) -> tuple[str, str] | None:
        """(scale, zero point) names of a Q/DQ whose parameters are constant scalars ("" for a missing zero point)."""
        zero_point = node.inputs[2] if len(node.inputs) > 2 else ""
        if not self.scalar_constant(node.inputs[1]) or (zero_point and not self.scalar_constant(zero_point)):
            return None
        return node.inputs[1], zero_point

    def fresh(self, base: str) -> str:
        self.counter += 1
        return f"{base}__qdq{self.counter}"

    # --- 1. propagation ---------------------------------------------------------------------------------------

    def propagate(self) -> None:
        for dq in [node for node in self.nodes if node.is_op("DequantizeLinear")]:
            self._propagate_dq_forward(dq)
        for q in [node for node in self.nodes if node.is_op("QuantizeLinear")]:
            self._propagate_q_backward(q)

    def _propagatable(self, node: Node | None) -> bool:
        return node is not None and node.domain in _DEFAULT_DOMAINS and node.op_type in _PROPAGATABLE

    def _insert_pairs(self, value: str, edges: list[tuple[Node, int]], parameters: tuple[str, str]) -> list[Node]:
        """``value`` → Q → DQ → each consumer edge; returns the consumers, now fed by a DQ."""
        scale, zero_point = parameters
        quantized = self.fresh(value + "_q")
        extra = [zero_point] if zero_point else []
        new_nodes = [Node(-1, quantized, "QuantizeLinear", "", (value, scale, *extra), (quantized,), {})]
        rewired = {}
        for number, (node, slot) in enumerate(edges):
            dequantized = self.fresh(f"{value}_dq{number}")
            new_nodes.append(
                Node(-1, dequantized, "DequantizeLinear", "", (quantized, scale, *extra), (dequantized,), {})
            )
            inputs = list(rewired.get(id(node), node).inputs)
            inputs[slot] = dequantized
            rewired[id(node)] = rewired.get(id(node), node)._replace(inputs=tuple(inputs))
        position = max(
            (i for i, node in enumerate(self.nodes) if value in node.outputs), default=-1
        )  # right after the producer (before every consumer)
        self.nodes[position + 1 : position + 1] = new_nodes
        self.nodes = [rewired.get(id(node), node) for node in self.nodes]
        return list(rewired.values())

    def _propagate_dq_forward(self, dq: Node) -> None:
        parameters = self.qdq_parameters(dq)
        if parameters is None:
            return
        for node, _ in self.consumers(dq.outputs[0]):  # each consumer has its own DQ (EnsureUniqueDQForNodeUnit)
            if dq.outputs[0] in self.graph_outputs:
                return
            pending = [node]
            while pending:
                current = pending.pop()
                if not self._propagatable(current) or current.outputs[0] in self.graph_outputs:
                    continue
                edges = [(n, s) for n, s in self.consumers(current.outputs[0]) if not n.is_op("QuantizeLinear")]
                if edges:
                    pending.extend(self._insert_pairs(current.outputs[0], edges, parameters))

    def _propagate_q_backward(self, q: Node) -> None:
        parameters = self.qdq_parameters(q)
        if parameters is None:
            return
        value = q.inputs[0]
        while True:
            node = self.producer(value)
            if not self._propagatable(node) or self.single_edge(value) is None:
                return
            before = node.inputs[0]
            source = self.producer(before)
            if source is not None and (self.single_edge(before) is None or source.is_op("DequantizeLinear")):
                return
            self._insert_pairs(before, self.consumers(before)[:1], parameters)
            if source is None:  # a graph input or initializer: propagation stops there
                return
            value = before

    # --- 2. int8 Q→DQ pairs to uint8 ------------------------------------------------------------------------------

    def signed_to_unsigned(self) -> None:
        """``QDQS8ToU8Transformer``: a Q whose only consumer is a DQ, both with the same constant int8 zero point,
        becomes a uint8 pair (codes and zero point + 128; the dequantized values do not change). Pairs whose Q feeds
        several DQs stay int8 — and then their units' types may no longer agree, so they stay float."""
        for position, q in enumerate(self.nodes):
            if not q.is_op("QuantizeLinear") or len(q.inputs) != 3 or q.outputs[0] in self.graph_outputs:
                continue
            edges = self.consumers(q.outputs[0])
            if len(edges) != 1 or not edges[0][0].is_op("DequantizeLinear") or len(edges[0][0].inputs) != 3:
                continue
            dq = edges[0][0]
            # EnsureUniqueDQForNodeUnit has given each consumer of a shared DQ its own copy: the Q then feeds several.
            if len(self.consumers(dq.outputs[0])) + (dq.outputs[0] in self.graph_outputs) != 1:
                continue
            zero_points = [self.initializers.get(name) for name in (q.inputs[2], dq.inputs[2])]
            if any(z is None or np.asarray(z).size != 1 or np.asarray(z).dtype != np.int8 for z in zero_points):
                continue
            value = int(np.asarray(zero_points[0]).reshape(())) + 128
            if value != int(np.asarray(zero_points[1]).reshape(())) + 128:
                continue
            name = self.fresh("qdq_s8_to_u8_zero_point")
            self.initializers[name] = self.added[name] = np.asarray(value, np.uint8)
            self.types[name] = np.dtype(np.uint8)
            self.types.pop(q.outputs[0], None)
            self.nodes[position] = q._replace(inputs=(q.inputs[0], q.inputs[1], name))
            index = self.nodes.index(dq)
            self.nodes[index] = dq._replace(inputs=(dq.inputs[0], dq.inputs[1], name))

    # --- 3 and 4. selection and replacement ----------------------------------------------------------------------

    def select(self) -> list[Node]:
        result = []
        replaced_q: dict[str, Node] = {}
        for node in self.nodes:
            if node.domain in _DEFAULT_DOMAINS and node.op_type in _SELECTORS:
                unit = _SELECTORS[node.op_type](self, node)
                if unit is not None:
                    fused, q = unit
                    result.append(fused)
                    if q is not None:
                        replaced_q[q.outputs[0]] = q
                    continue
            if node.domain in _DEFAULT_DOMAINS and node.op_type in ("MatMul", "Gemm"):
                node = _select_nbits(self, node) or node
            result.append(node)
        return [node for node in result if not (node.is_op("QuantizeLinear") and node.outputs[0] in replaced_q)]

    def dq_inputs(self, node: Node, count: int | None = None) -> list[Node] | None:
        """The DQ producing each existing input (``count`` first inputs only), or None if one is not a DQ."""
        names = [name for name in node.inputs if name][: count if count is not None else None]
        dqs = []
        for name in names:
            producer = self.producer(name)
            if producer is None or not producer.is_op("DequantizeLinear") or name in self.graph_outputs:
                return None
            dqs.append(producer)
        return dqs

    def q_output(self, node: Node, allow_none: bool = False) -> tuple[Node | None, Node | None] | None:
        """(the unit's Q, a redundant Relu/Clip between) — (None, None) when there is no Q and that is allowed;
        None when the node is not a unit."""
        value = node.outputs[0]
        edges = self.consumers(value)
        clip = None
        if len(edges) == 1 and (edges[0][0].is_op("Relu") or edges[0][0].is_op("Clip")):
            candidate = edges[0][0]
            if len(self.consumers(candidate.outputs[0])) == 1 and candidate.outputs[0] not in self.graph_outputs:
                clip = candidate
        source = clip if clip is not None else node
        qs = [n for n, _ in self.consumers(source.outputs[0]) if n.is_op("QuantizeLinear")]
        if clip is not None and (len(qs) != 1 or not self.clip_made_redundant(clip, qs[0])):
            return None
        if not qs:
            return (None, None) if allow_none else None
        if value in self.graph_outputs or len(qs) != 1 or len(edges) != 1:
            return None
        return qs[0], clip

    def clip_made_redundant(self, clip: Node, q: Node) -> bool:
        """A Relu/Clip before a Q whose range it does not narrow (the Q's lowest code is at or above the clip)."""
        zero_point = q.inputs[2] if len(q.inputs) > 2 else ""
        if not self.scalar_constant(q.inputs[1]) or (zero_point and not self.scalar_constant(zero_point)):
            return False
        out = self.elem_type(q.outputs[0])
        if out not in _EIGHT_BIT + (np.dtype(np.int16), np.dtype(np.uint16)):
            return False
        info = np.iinfo(out)
        scale = np.float32(np.asarray(self.initializers[q.inputs[1]]).reshape(()))
        z = int(np.asarray(self.initializers[zero_point]).reshape(())) if zero_point else 0
        low = np.float32(scale * np.float32(info.min - z))
        high = np.float32(scale * np.float32(info.max - z))
        if clip.is_op("Relu"):
            return z == info.min
        bounds = [
            np.asarray(self.initializers[name]).reshape(()) if name in self.initializers else None
            for name in clip.inputs[1:3]
        ]
        clip_low = bounds[0] if len(bounds) > 0 and bounds[0] is not None else None
        clip_high = bounds[1] if len(bounds) > 1 and bounds[1] is not None else None
        if len(clip.inputs) > 1 and clip.inputs[1] and clip_low is None:
            return False
        if len(clip.inputs) > 2 and clip.inputs[2] and clip_high is None:
            return False
        return (clip_low is None or clip_low <= low) and (clip_high is None or clip_high >= high)

    def types_of(self, dqs: list[Node]) -> list[np.dtype | None]:
        return [self.elem_type(dq.inputs[0]) for dq in dqs]

    def zero_point(self, node: Node) -> str:
        """A Q/DQ's zero point name, adding a zero constant of the quantized type when the node has none."""
        if len(node.inputs) > 2 and node.inputs[2]:
            return node.inputs[2]
        dtype = self.elem_type(node.outputs[0] if node.is_op("QuantizeLinear") else node.inputs[0])
        name = self.fresh(node.outputs[0] + "_zero_point")
        self.added[name] = np.zeros((), dtype)
        return name

    def parameters(self, node: Node) -> tuple[str, str, str] | tuple[str, str]:
        """(value, scale, zero point) of a DQ, (scale, zero point) of a Q."""
        if node.is_op("DequantizeLinear"):
            return node.inputs[0], node.inputs[1], self.zero_point(node)
        return node.inputs[1], self.zero_point(node)


def _fused(node: Node, op_type: str, domain: str, inputs, outputs, attributes, members) -> Node:
    indices = tuple(sorted({m.index for m in members if m is not None and m.index >= 0}))
    return Node(node.index, node.name, op_type, domain, tuple(inputs), tuple(outputs), attributes, indices)


def _allowed(dtype: np.dtype | None) -> bool:
    return dtype in _EIGHT_BIT


def _select_conv(graph: _Graph, node: Node):
    dqs = graph.dq_inputs(node)
    if dqs is None or len(dqs) != len([name for name in node.inputs if name]) or len(dqs) < 2:
        return None
    found = graph.q_output(node)
    if found is None:
        return None
    q, clip = found
    x_type, w_type = graph.types_of(dqs[:2])
    if not (_allowed(x_type) and _allowed(w_type)) or graph.elem_type(q.outputs[0]) != x_type:
        return None
    if x_type == np.dtype(np.int8) and w_type != x_type:
        return None
    if len(dqs) == 3 and graph.elem_type(dqs[2].inputs[0]) != np.dtype(np.int32):
        return None
    x, w = graph.parameters(dqs[0]), graph.parameters(dqs[1])
    inputs = [*x, *w, *graph.parameters(q)] + ([dqs[2].inputs[0]] if len(dqs) == 3 else [])
    return _fused(node, "QLinearConv", "", inputs, q.outputs, dict(node.attributes), [node, q, clip, *dqs]), q


def _select_matmul(graph: _Graph, node: Node):
    dqs = graph.dq_inputs(node)
    if dqs is None or len(dqs) != 2:
        return None
    a_type, b_type = graph.types_of(dqs)
    if not (_allowed(a_type) and _allowed(b_type)) or (a_type == np.dtype(np.int8) and b_type != a_type):
        return None
    found = graph.q_output(node, allow_none=True)
    if found is None:
        return None
    q, clip = found
    a, b = graph.parameters(dqs[0]), graph.parameters(dqs[1])
    if q is None:
        if clip is not None:
            return None
        inputs = [a[0], b[0], a[1], b[1], a[2], b[2]]
        return _fused(node, "MatMulIntegerToFloat", _MS, inputs, node.outputs, {}, [node, *dqs]), None
    if graph.elem_type(q.outputs[0]) != a_type:
        return None
    inputs = [*a, *b, *graph.parameters(q)]
    return _fused(node, "QLinearMatMul", "", inputs, q.outputs, {}, [node, q, clip, *dqs]), q


def _select_gemm(graph: _Graph, node: Node):
    dqs = graph.dq_inputs(node)
    if dqs is None or len(dqs) != len([name for name in node.inputs if name]):
        return None
    found = graph.q_output(node, allow_none=True)
    if found is None:
        return None
    q, clip = found
    a_type, b_type = graph.types_of(dqs[:2])
    if not (_allowed(a_type) and _allowed(b_type)) or (a_type == np.dtype(np.int8) and b_type != a_type):
        return None
    if q is not None and graph.elem_type(q.outputs[0]) != a_type:
        return None
    if len(dqs) == 3 and (
        node.attributes.get("beta", 1.0) != 1.0 or graph.elem_type(dqs[2].inputs[0]) != np.dtype(np.int32)
    ):
        return None
    a, b = graph.parameters(dqs[0]), graph.parameters(dqs[1])
    bias = [dqs[2].inputs[0]] if len(dqs) == 3 else [""]
    output = [*graph.parameters(q)] if q is not None else []
    attributes = {k: v for k, v in node.attributes.items() if k in ("alpha", "transA", "transB")}
    outputs = q.outputs if q is not None else node.outputs
    members = [node, q, clip, *dqs]
    return _fused(node, "QGemm", _MS, [*a, *b, *bias, *output], outputs, attributes, members), q


def _select_unary(graph: _Graph, node: Node):
    dqs = graph.dq_inputs(node, count=1)
    if dqs is None or len(dqs) != 1:
        return None
    found = graph.q_output(node)
    if found is None:
        return None
    q, clip = found
    (x_type,) = graph.types_of(dqs)
    if not _allowed(x_type) or graph.elem_type(q.outputs[0]) != x_type:
        return None
    attributes = dict(node.attributes)
    if node.op_type in ("AveragePool", "GlobalAveragePool"):
        attributes["channels_last"] = 0
    if node.op_type == "Softmax":
        attributes["opset"] = graph.opset
    inputs = [*graph.parameters(dqs[0]), *graph.parameters(q)]
    return _fused(node, _UNARY[node.op_type], _MS, inputs, q.outputs, attributes, [node, q, clip, *dqs]), q


def _select_binary(graph: _Graph, node: Node):
    dqs = graph.dq_inputs(node)
    if dqs is None or len(dqs) != 2:
        return None
    found = graph.q_output(node)
    if found is None:
        return None
    q, clip = found
    a_type, b_type = graph.types_of(dqs)
    if not _allowed(a_type) or a_type != b_type or graph.elem_type(q.outputs[0]) != a_type:
        return None
    inputs = [*graph.parameters(dqs[0]), *graph.parameters(dqs[1]), *graph.parameters(q)]
    return _fused(node, _BINARY[node.op_type], _MS, inputs, q.outputs, {}, [node, q, clip, *dqs]), q


def _select_concat(graph: _Graph, node: Node):
    dqs = graph.dq_inputs(node)
    if dqs is None or len(dqs) != len([name for name in node.inputs if name]):
        return None
    found = graph.q_output(node)
    if found is None:
        return None
    q, clip = found
    types = graph.types_of(dqs)
    if not _allowed(types[0]) or any(t != types[0] for t in types) or graph.elem_type(q.outputs[0]) != types[0]:
        return None
    inputs = [*graph.parameters(q)] + [name for dq in dqs for name in graph.parameters(dq)]
    attributes = {"axis": node.attributes["axis"]}
    return _fused(node, "QLinearConcat", _MS, inputs, q.outputs, attributes, [node, q, clip, *dqs]), q


def _close_to_one(node: Node, name: str) -> bool:
    return abs(float(node.attributes.get(name, 1.0)) - 1.0) <= 1e-6


def _select_nbits(graph: _Graph, node: Node) -> Node | None:
    """``DQMatMulToMatMulNBits``: a MatMul (or plain Gemm) whose weight is a DequantizeLinear'd constant becomes
    MatMulNBits (``accuracy_level=4``, blocks of 32), unless its activation comes from a non-16-bit DQ."""
    if node.op_type == "Gemm" and not (
        _close_to_one(node, "alpha") and not node.attributes.get("transA", 0) and not node.attributes.get("transB", 0)
    ):
        return None
    dq = graph.producer(node.inputs[1])
    if dq is None or not dq.is_op("DequantizeLinear") or dq.outputs[0] in graph.graph_outputs:
        return None
    if len(graph.consumers(dq.outputs[0])) != 1:
        return None
    if sum(n.is_op("DequantizeLinear") and n.inputs[0] == dq.inputs[0] for n in graph.nodes) != 1:
        return None
    activation = graph.producer(node.inputs[0])
    if activation is not None and activation.is_op("DequantizeLinear"):
        if graph.elem_type(activation.inputs[0]) not in (np.dtype(np.int16), np.dtype(np.uint16)):
            return None
    weights = _nbits_weights(graph, dq)
    if weights is None:
        return None
    codes, scales, zero_points, bits = weights
    k, n = codes.shape
    bias = node.inputs[2] if node.op_type == "Gemm" and len(node.inputs) > 2 and node.inputs[2] else ""
    if bias and not (_close_to_one(node, "beta") and _bias_is_n(graph, node, bias, n)):
        return None
    names = []
    for label, value in zip(("B", "scales", "zero_points"), onnx_nbits.pack_weights(codes, scales, zero_points, bits)):
        name = graph.fresh(f"{dq.inputs[0]}_nbits_{label}")
        graph.added[name] = value
        names.append(name)
    attributes = {"K": k, "N": n, "bits": bits, "block_size": onnx_nbits.BLOCK, "accuracy_level": 4}
    inputs = [node.inputs[0], *names] + (["", bias] if bias else [])
    return _fused(node, "MatMulNBits", _MS, inputs, node.outputs, attributes, [node, dq])


def _bias_is_n(graph: _Graph, node: Node, name: str, n: int) -> bool:
    """Whether a Gemm bias has the static shape ``[N]`` that the MatMulNBits rewrite needs, as onnxruntime's
    inferred shapes tell it: a symbolic dimension or an undeclared graph input's unknown shape is not ``[N]``
    (onnxruntime does not know it either); a node output whose shape inference cannot tell raises."""
    chain = list(_through_qdq(graph, name))
    shape = next((graph.shapes[value] for value in chain if value in graph.shapes), None)
    if shape is not None and (len(shape) != 1 or isinstance(shape[0], (int, str))):
        return shape == (n,)
    if graph.producer(chain[-1]) is None:  # a graph input declared without a (complete) shape
        return False
    raise ValueError(
        f"{node.label()}: the shape of its bias {name!r} cannot be inferred, so whether onnxruntime rewrites it into "
        f"MatMulNBits (a bias of shape [{n}]) is unknown; declare the shape (graph.value_info) to run it"
    )


def _through_qdq(graph: _Graph, name: str) -> Iterator[str]:
    """``name``, then the input of each Q/DQ node that produces the one before (propagation inserts Q/DQ nodes,
    which keep their input's shape), back to the first value no Q/DQ node produces."""
    yield name
    while (producer := graph.producer(name)) is not None and producer.op_type in ("QuantizeLinear", "DequantizeLinear"):
        name = producer.inputs[0]
        yield name


def _nbits_weights(graph: _Graph, dq: Node) -> tuple[np.ndarray, np.ndarray, np.ndarray, int] | None:
    """A DQ's constant ``[K, N]`` weight as MatMulNBits' unsigned codes, scales and zero points per block of 32
    (``[B, N]``); None when the rewrite does not apply or its kernel is not reproduced (2 bits, float16 scales,
    blocks other than 32)."""
    names = [name for name in dq.inputs if name]
    if any(name not in graph.initializers for name in names):
        return None
    weight, scale = (np.asarray(graph.initializers[name]) for name in names[:2])
    zero_point = np.asarray(graph.initializers[names[2]]) if len(names) > 2 else np.zeros((), weight.dtype)
    dtype = np.dtype(graph.elem_type(dq.inputs[0]) or weight.dtype)
    bits = {"int8": 8, "uint8": 8, "int4": 4, "uint4": 4}.get(dtype.name)
    if bits is None or weight.ndim != 2 or scale.dtype != np.float32:
        return None
    k, n = weight.shape
    blocks = -(-k // onnx_nbits.BLOCK)
    block_size = int(dq.attributes.get("block_size", 0))
    if block_size > 0:
        if dq.attributes.get("axis") != 0 or block_size != onnx_nbits.BLOCK or scale.shape != (blocks, n):
            return None
        zero_point = np.broadcast_to(zero_point, scale.shape) if len(names) < 3 else zero_point
    elif scale.ndim == 0 and zero_point.ndim == 0:
        scale, zero_point = np.broadcast_to(scale, (blocks, n)), np.broadcast_to(zero_point, (blocks, n))
    elif scale.shape == (n,) and zero_point.shape in ((), (n,)) and dq.attributes.get("axis", 1) == 1:
        scale, zero_point = np.broadcast_to(scale, (blocks, n)), np.broadcast_to(zero_point, (blocks, n))
    else:
        return None
    if zero_point.shape != scale.shape:
        return None
    offset = (1 << (bits - 1)) if dtype.name.startswith("int") else 0
    codes = weight.astype(np.int64) + offset
    return codes, scale.astype(np.float32), zero_point.astype(np.int64) + offset, bits


_SELECTORS = {
    "Conv": _select_conv,
    "MatMul": _select_matmul,
    "Gemm": _select_gemm,
    "Concat": _select_concat,
    **dict.fromkeys(_UNARY, _select_unary),
    **dict.fromkeys(_BINARY, _select_binary),
}


def _np_dtype(elem_type: int) -> np.dtype:
    import onnx

    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
