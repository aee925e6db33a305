"""onnxruntime's drop rule for MaxPool: a DequantizeLinear → MaxPool → QuantizeLinear chain with equal parameters
becomes an integer MaxPool on the codes.

onnxruntime's optimised session removes the DQ and the Q around a MaxPool whose input and output quantization are
the same (``DropQDQNodesRules``) and pools the 8-bit codes. The codes are the same either way, which is why
:mod:`~quantref.runtimes.onnx_qdq` need not reproduce the rule; :func:`drop_max_pool` applies it for speed, so that
the pool reads the codes a QLinearConv writes instead of their dequantized float copy. With $D(q) = f_{32}((q - z)
s)$, $s > 0$, and $Q(x) = \\operatorname{sat}(\\operatorname{rne}(x / s) + z)$:

$$
Q\\big(\\max_k D(q_k)\\big) = Q\\big(D(\\max_k q_k)\\big) = \\max_k q_k,
$$

the first because $D$ is non-decreasing, the second because $|q - z| \\le 255$ and $f_{32}(f_{32}(k s) / s)$ lies
within $255 \\cdot 2^{-23}$ of $k$ (for a normal $s$ with $256 s$ finite), so rounds to $k$. A padded position holds
the type's lowest value (the codes) or float32's (the floats), which no window's maximum takes: pads are smaller
than the kernel, so every window holds an input.

References:
  onnxruntime ``core/optimizer/qdq_transformer/selectors_actions/qdq_selector_action_transformer.cc``
  (``DropQDQNodesRules``) and ``qdq_selectors.cc`` (``DropQDQNodeGroupSelector``).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from quantref.runtimes.onnx_qdq import Node

__all__ = ["drop_max_pool"]

_CODES = (np.dtype(np.uint8), np.dtype(np.int8))
_QUANTIZE_DEFAULTS = {"axis": None, "block_size": 0, "output_dtype": 0, "saturate": 1}


def drop_max_pool(nodes: list[Node], initializers: Mapping[str, np.ndarray], outputs: set[str]) -> list[Node]:
    """The nodes with every DQ → MaxPool → Q chain of equal scalar parameters replaced by a MaxPool of the codes.

    Args:
      nodes: the nodes to run, in topological order (after :func:`~quantref.runtimes.onnx_qdq.fuse`).
      initializers: constant tensors by name (the scales and zero points): not those that ``graph.input`` also
        lists, which may be fed and which onnxruntime's rule does not treat as constants.
      outputs: the graph's output names (never bypassed).

    Returns:
      The nodes, each chain's MaxPool reading the DQ's codes and writing the Q's output in place of the Q; the DQ
      stays, for the interpreter to drop where nothing else reads it.
    """
    readers: dict[str, list[Node]] = {}
    producers: dict[str, Node] = {}
    for node in nodes:
        for name in node.inputs:
            if name:
                readers.setdefault(name, []).append(node)
        for name in node.outputs:
            if name:
                producers[name] = node
    result, dropped = [], set()
    for node in nodes:
        if id(node) in dropped:
            continue
        dq = producers.get(node.inputs[0]) if node.is_op("MaxPool") and len(node.inputs) == 1 else None
        pooled = node.outputs[0] if node.outputs else ""
        after = readers.get(pooled, [])
        if (
            dq is not None
            and dq.is_op("DequantizeLinear")
            and len(after) == 1
            and after[0].is_op("QuantizeLinear")
            and len(readers.get(dq.outputs[0], [])) == 1
            and not {dq.outputs[0], pooled} & outputs
            and _same_grid(dq, after[0], initializers)
        ):
            q = after[0]
            dropped.add(id(q))
            node = Node(node.index, node.name, "MaxPool", "", (dq.inputs[0],), q.outputs, node.attributes, node.fused)
        result.append(node)
    return result


def _same_grid(dq: Node, q: Node, initializers: Mapping[str, np.ndarray]) -> bool:
    """Whether the DQ and the Q have equal constant scalar float32 scales and 8-bit zero points, a scale for which
    Q(D(q)) = q, and no attribute that changes the Q's result."""
    if len(dq.inputs) != 3 or len(q.inputs) != 3 or any(not name for name in dq.inputs + q.inputs):
        return False
    if any(key not in _QUANTIZE_DEFAULTS for key in q.attributes) or any(
        key in q.attributes and default is not None and q.attributes[key] != default
        for key, default in _QUANTIZE_DEFAULTS.items()
    ):
        return False
    if dq.attributes.get("output_dtype", 0) or any(key not in ("axis", "block_size") for key in dq.attributes):
        return False
    values = [initializers.get(name) for name in (dq.inputs[1], dq.inputs[2], q.inputs[1], q.inputs[2])]
    if any(value is None or np.ndim(value) != 0 for value in values):
        return False
    dq_scale, dq_zero, q_scale, q_zero = (np.asarray(value) for value in values)
    if dq_scale.dtype != np.float32 or q_scale.dtype != np.float32 or dq_zero.dtype not in _CODES:
        return False
    if dq_zero.dtype != q_zero.dtype or dq_scale.tobytes() != q_scale.tobytes() or dq_zero != q_zero:
        return False
    scale = np.float32(dq_scale)
    with np.errstate(over="ignore"):
        return bool(scale >= np.finfo(np.float32).tiny and np.isfinite(scale * np.float32(256)))
