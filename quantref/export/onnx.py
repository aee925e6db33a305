"""Export of a quantized chain of layers to ONNX, as a graph that onnxruntime runs with integers only.

The graph (standard ``ai.onnx`` domain, opset 13, "QOperator" format) follows the quantized model's trace
(:func:`quantref.integer.chain`): for the walkthrough CNN

```
x float32 (N, 8, 8, 1) NHWC ── QuantizeLinear ── uint8 ── Transpose → NCHW
   ── QLinearConv conv1 3×3 pad 1 (int8 weights per output channel, int32 bias)   ReLU = the clamp at y_zero_point
   ── QLinearConv conv2 3×3 pad 1                                                  ReLU = the clamp at y_zero_point
   ── MaxPool 2×2 (on uint8)
   ── QLinearConv dense as a 4×4 valid convolution → (N, 10, 1, 1) ── Flatten ── DequantizeLinear ── output float32
```

and for a multi-layer perceptron, QuantizeLinear ── Reshape to (N, F, 1, 1) ── one 1×1 QLinearConv per dense layer ──
Flatten ── DequantizeLinear. Tensors carry the pipeline's names (``conv2.input``, ``dense.kernel``, ...).

Three choices, and why:

- **The input is the model's input as it is**: float32, NHWC for a convolutional network; the graph quantizes it
  and transposes the codes to NCHW itself.
- **ReLU has no node.** ONNX has no Relu on uint8, and QLinearConv has no fused activation. But each post-ReLU
  range is calibrated on non-negative data, so its zero point is the grid's bottom code ($z_y = 0$ for uint8):
  the requantization's saturation at 0 *is* the ReLU, exactly. The export checks this and refuses otherwise.
- **A dense layer is a QLinearConv**: after a flattened $H \\times W \\times C$ map, an $H \\times W$ kernel over it
  (weight ``[o, c, h, w] = W[(h·W + w)·C + c, o]``, the NHWC flatten order); after another dense layer or on a
  vector input, a 1×1 kernel. QLinearMatMul would do the product but has no bias input: the bias would have to be
  added after dequantization, in float, which is no longer integer-only (and the standard domain has no QLinearAdd
  or QGemm). A convolution takes the int32 bias into its accumulator.

onnxruntime computes each QLinearConv as :mod:`quantref.integer` does in ``"onnxruntime"`` mode, so
``expected.npz`` — quantref's prediction, written beside the model — equals onnxruntime's output bit for bit, with
graph optimisations on or off (tested). Caveat from onnxruntime's documentation: on x86 CPUs *without* VNNI, its
uint8×int8 kernels use ``vpmaddubsw``, whose 16-bit pair sums can saturate for 8-bit weights; where that happens
the output is not the exact integer result (onnxruntime's quantizer offers ``reduce_range`` for it).

References:
  Jacob et al., "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference",
  arXiv:1712.05877, 2017.
  Nagel et al., "A White Paper on Neural Network Quantization", arXiv:2106.08295, 2021.
  ONNX operators QuantizeLinear, QLinearConv, MaxPool, DequantizeLinear: https://onnx.ai/onnx/operators/
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import onnx
from flax import nnx
from onnx import TensorProto, helper, numpy_helper

from quantref import _files, integer, nn, ptq

__all__ = ["OPSET", "quantized_model_proto", "float_model_proto", "export_onnx"]

OPSET = 13


def export_onnx(
    qmodel: ptq.QuantizedModel,
    out_dir: str | Path,
    *,
    test_x: np.ndarray,
    test_y: np.ndarray | None = None,
    float_model: nnx.Module | None = None,
    force: bool = False,
) -> dict[str, Path]:
    """Writes a quantized model for onnxruntime, with the inputs and quantref's prediction of its outputs.

    Writes into ``out_dir`` (atomically: an interrupted export leaves the old files or the new ones, never a mix):

    - ``model.onnx``: the int8 graph of :func:`quantized_model_proto`;
    - ``float.onnx``: the float graph of :func:`float_model_proto`, if ``float_model`` is given;
    - ``test_inputs.npz``: ``x``, the inputs as fed to the models (float32), and ``y``, their labels if given;
    - ``expected.npz``: ``output``, quantref's prediction of ``model.onnx``'s output on ``x`` —
      :func:`quantref.integer.integer_forward` in ``"onnxruntime"`` mode, dequantized.

    Args:
      qmodel: the quantized model (:func:`quantref.ptq.quantize_model`), a chain of layers with weights and
        activations of up to 8 bits.
      out_dir: the directory; created if missing.
      test_x: float32 inputs shaped like the model's input.
      test_y: their labels, or ``None``.
      float_model: the float model (BatchNorm folded) that ``qmodel`` quantizes, to write ``float.onnx``.
      force: replace quantref's files in a non-empty ``out_dir`` (other files there are kept).

    Returns:
      The paths written, keyed ``"model"``, ``"float"`` (if written), ``"test_inputs"``, ``"expected"``.

    Raises:
      ValueError: if ``out_dir`` is a file, is not empty and ``force`` is False, or cannot be written; or if
        ``qmodel`` cannot be exported (see :func:`quantized_model_proto`).
    """
    target = _files.check_output_dir(out_dir, force=force)
    model_proto = quantized_model_proto(qmodel)
    float_proto = float_model_proto(float_model, qmodel) if float_model is not None else None
    expected = integer.integer_forward(qmodel, integer.multipliers(qmodel, "onnxruntime"), test_x)
    inputs = {"x": np.asarray(test_x, np.float32)}
    if test_y is not None:
        inputs["y"] = np.asarray(test_y)
    files: dict[str, Callable[[Path], None]] = {
        "model.onnx": lambda path: onnx.save(model_proto, path),
        "test_inputs.npz": lambda path: _files.save_npz(path, inputs),
        "expected.npz": lambda path: _files.save_npz(path, {"output": np.asarray(expected.output)}),
    }
    if float_proto is not None:
        files["float.onnx"] = lambda path: onnx.save(float_proto, path)
    written = _files.write_files(target, files)
    return {name.split(".")[0]: path for name, path in written.items()}


def quantized_model_proto(qmodel: ptq.QuantizedModel) -> onnx.ModelProto:
    """The int8 QOperator ONNX graph of a quantized chain of layers (see the module docstring).

    Args:
      qmodel: a model from :func:`quantref.ptq.quantize_model` with weights of up to 8 bits (stored as int8),
        activations of up to 8 bits (stored as uint8 or int8, clipped to their grid by a Clip node when narrower),
        and post-ReLU zero points at the grid's bottom (any range calibrated on post-ReLU data has them).

    Returns:
      The checked ``onnx.ModelProto``; input ``x`` float32, output ``output`` float32.

    Raises:
      ValueError: if the model is not a chain of conv/dense/ReLU/max-pool/flatten layers (naming the first step
        that is not), the weights or activations have more than 8 bits, a post-ReLU zero point is not the grid's
        bottom code (the ReLU would then need a node of its own), or a dense layer's input is neither a vector nor a
        flattened map.
    """
    steps = integer.chain(qmodel)
    fmt = qmodel.activation_format
    if qmodel.weight_format.bits > 8 or fmt.bits > 8:
        raise ValueError(
            f"qmodel must have weights and activations of at most 8 bits for QLinearConv, got weights "
            f"{qmodel.weight_format.name} and activations {fmt.name}"
        )
    act_dtype = np.dtype(fmt.storage_dtype)
    graph = _GraphBuilder()

    def narrow(value: str) -> str:
        """Activations of fewer than 8 bits live in int8/uint8 tensors: clip them to their grid, as the integer path
        clamps (QLinearConv and QuantizeLinear saturate to the 8-bit range, and clipping after that is the same)."""
        if fmt.bits == 8:
            return value
        low = graph.constant(f"{fmt.name}.qmin", fmt.qmin, act_dtype)
        high = graph.constant(f"{fmt.name}.qmax", fmt.qmax, act_dtype)
        return graph.node("Clip", [value, low, high], f"{value}.clipped")

    def activation(name: str, quant: ptq.ActivationQuant) -> list[str]:
        return [
            graph.constant(f"{name}.scale", quant.scale, np.float32),
            graph.constant(f"{name}.zero_point", quant.zero_point, act_dtype),
        ]

    # Symmetric weights: one scalar zero point 0 serves every layer and channel (smaller file, same meaning).
    weight_zero_point = graph.constant("kernel.zero_point", 0, np.int8)

    def layer_node(step: nn.Step, value: str, layout: tuple, index: int) -> tuple[str, tuple]:
        layer = qmodel.layers[step.path]
        out = qmodel.output_activation(step.path)
        if integer.relu_follows(steps, index) and int(out.zero_point) != fmt.qmin:
            raise ValueError(
                f"the zero point of {step.path}'s output must be {fmt.qmin} (the bottom of {fmt.name}) so that "
                f"saturation is the ReLU, got {int(out.zero_point)}; calibrate it on post-ReLU activations"
            )
        kernel, attributes, layout = _conv_form(step, np.asarray(layer.kernel), layout)
        inputs = [
            value,
            *activation(f"{step.path}.input", qmodel.activations[f"{step.path}.input"]),
            graph.constant(f"{step.path}.kernel", kernel, np.int8),
            graph.constant(f"{step.path}.kernel_scale", layer.kernel_scale, np.float32),
            weight_zero_point,
            *activation(qmodel.output_name(step.path), out),
            graph.constant(f"{step.path}.bias", layer.bias, np.int32),
        ]
        return narrow(graph.node("QLinearConv", inputs, f"{step.path}.output", **attributes)), layout

    first = steps[0].path
    value = narrow(
        graph.node("QuantizeLinear", ["x", *activation(f"{first}.input", qmodel.activations[f"{first}.input"])])
    )
    value, layout = _to_nchw(graph, value, steps[0].param("input_shape"))
    for index, step in enumerate(steps):
        if step.kind in ("conv", "dense"):
            value, layout = layer_node(step, value, layout, index)
        else:
            value, layout = _STEP_NODES[step.kind](graph, step, value, layout)
    last = [step.path for step in steps if step.path][-1]
    value, output_shape = _from_nchw(graph, value, layout)
    out = qmodel.output_activation(last)
    graph.node("DequantizeLinear", [value, *activation(qmodel.output_name(last), out)], "output")
    return graph.model("quantref_int8", steps[0].param("input_shape"), output_shape)


def float_model_proto(float_model: nnx.Module, qmodel: ptq.QuantizedModel) -> onnx.ModelProto:
    """The float32 ONNX graph of the folded float model, laid out as :func:`quantized_model_proto` (Conv for
    QLinearConv, explicit Relu nodes).

    Args:
      float_model: the float model (BatchNorm folded) that ``qmodel`` quantizes.
      qmodel: its quantization, for the network's structure.

    Returns:
      The checked ``onnx.ModelProto``, same input and output as the quantized graph.
    """
    steps = integer.chain(qmodel)
    graph = _GraphBuilder()
    value, layout = _to_nchw(graph, "x", steps[0].param("input_shape"))
    for step in steps:
        if step.kind in ("conv", "dense"):
            layer = nn.get_module(float_model, step.path)
            layer = layer.layer if isinstance(layer, nn.QuantLayer) else layer
            kernel, attributes, layout = _conv_form(step, np.asarray(layer.kernel[...]), layout)
            bias = layer.bias[...] if layer.bias is not None else jnp.zeros(kernel.shape[0])
            inputs = [
                value,
                graph.constant(f"{step.path}.kernel", kernel, np.float32),
                graph.constant(f"{step.path}.bias", bias, np.float32),
            ]
            value = graph.node("Conv", inputs, f"{step.path}.output", **attributes)
        elif step.kind == "relu":
            value = graph.node("Relu", [value])
        else:
            value, layout = _STEP_NODES[step.kind](graph, step, value, layout)
    value, output_shape = _from_nchw(graph, value, layout)
    graph.node("Identity", [value], "output")
    return graph.model("quantref_float", steps[0].param("input_shape"), output_shape)


# --- layouts: ("map", (H, W, C)) is an NCHW tensor; ("flat", (H, W, C)) the same map standing for its NHWC
# flattening (no node: the next dense layer's kernel is laid out for it); ("vector", (F,)) is (N, F, 1, 1).


def _to_nchw(graph: _GraphBuilder, value: str, input_shape: tuple) -> tuple[str, tuple]:
    if len(input_shape) == 3:
        return graph.node("Transpose", [value], perm=[0, 3, 1, 2]), ("map", tuple(input_shape))
    if len(input_shape) == 1:
        shape = graph.constant(f"{value}.shape", [0, input_shape[0], 1, 1], np.int64)
        return graph.node("Reshape", [value, shape]), ("vector", tuple(input_shape))
    raise ValueError(f"export supports NHWC image inputs or (N, features) vectors, got input shape {input_shape}")


def _from_nchw(graph: _GraphBuilder, value: str, layout: tuple) -> tuple[str, list[int]]:
    """Back to the model's layout: NHWC for a map, (N, features) otherwise; returns the value and its shape."""
    kind, shape = layout
    if kind == "map":
        return graph.node("Transpose", [value], perm=[0, 2, 3, 1]), list(shape)
    if kind == "flat":
        value = graph.node("Transpose", [value], perm=[0, 2, 3, 1])
    return graph.node("Flatten", [value], axis=1), [int(np.prod(shape))]


def _conv_form(step: nn.Step, kernel: np.ndarray, layout: tuple) -> tuple[np.ndarray, dict, tuple]:
    """A layer's kernel as an OIHW convolution kernel, its QLinearConv/Conv attributes and the layout it produces."""
    kind, shape = layout
    if step.kind == "conv":
        if kind != "map":
            raise ValueError(f"conv layer {step.path!r} must see an image map, not a {kind} input")
        padding = step.param("padding")
        attributes = {
            "kernel_shape": list(kernel.shape[:2]),
            "pads": [padding[0][0], padding[1][0], padding[0][1], padding[1][1]],
            "strides": list(step.param("strides")),
            "dilations": list(step.param("dilation")),
            "group": step.param("groups"),
        }
        height, width, _ = shape
        out_h = _conv_size(height, kernel.shape[0], step, 0)
        out_w = _conv_size(width, kernel.shape[1], step, 1)
        return np.transpose(kernel, (3, 2, 0, 1)), attributes, ("map", (out_h, out_w, kernel.shape[-1]))
    if kind == "flat":
        height, width, channels = shape
        oihw = np.transpose(kernel.reshape(height, width, channels, -1), (3, 2, 0, 1))
        return oihw, {"kernel_shape": [height, width]}, ("vector", (kernel.shape[-1],))
    if kind == "vector" and step.param("input_shape") == shape:
        return kernel.T[:, :, None, None], {"kernel_shape": [1, 1]}, ("vector", (kernel.shape[-1],))
    raise ValueError(f"dense layer {step.path!r} must see a vector or a flattened map, got input {step.params}")


def _conv_size(size: int, kernel: int, step: nn.Step, axis: int) -> int:
    low, high = step.param("padding")[axis]
    dilated = (kernel - 1) * step.param("dilation")[axis] + 1
    return (size + low + high - dilated) // step.param("strides")[axis] + 1


def _max_pool_node(graph: _GraphBuilder, step: nn.Step, value: str, layout: tuple) -> tuple[str, tuple]:
    kind, (height, width, channels) = layout
    if kind != "map":
        raise ValueError(f"max-pooling must see an image map, not a {kind}")
    window, strides, padding = step.param("window"), step.param("strides"), step.param("padding")
    out_h = (height + sum(padding[0]) - window[0]) // strides[0] + 1
    out_w = (width + sum(padding[1]) - window[1]) // strides[1] + 1
    pads = [padding[0][0], padding[1][0], padding[0][1], padding[1][1]]
    node = graph.node("MaxPool", [value], kernel_shape=list(window), strides=list(strides), pads=pads)
    return node, ("map", (out_h, out_w, channels))


def _flatten_node(graph: _GraphBuilder, step: nn.Step, value: str, layout: tuple) -> tuple[str, tuple]:
    kind, shape = layout
    return value, (("flat", shape) if kind == "map" else layout)


_STEP_NODES = {
    "relu": lambda graph, step, value, layout: (value, layout),  # the requantization's clamp
    "max_pool": _max_pool_node,
    "flatten": _flatten_node,
}


class _GraphBuilder:
    """Collects initializers and nodes; names each node's output unless told."""

    def __init__(self):
        self.tensors: list[onnx.TensorProto] = []
        self.nodes: list[onnx.NodeProto] = []
        self.names: set[str] = set()

    def constant(self, name: str, value, dtype) -> str:
        if name not in self.names:
            self.tensors.append(numpy_helper.from_array(np.asarray(value, dtype), name))
            self.names.add(name)
        return name

    def node(self, op: str, inputs: list[str], output: str | None = None, **attributes) -> str:
        output = output or f"{op.lower()}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(op, inputs, [output], **attributes))
        return output

    def model(self, name: str, input_shape: tuple, output_shape: list[int]) -> onnx.ModelProto:
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *input_shape])]
        outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", *output_shape])]
        graph = helper.make_graph(self.nodes, name, inputs, outputs, initializer=self.tensors)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="quantref")
        onnx.checker.check_model(model)
        return model
