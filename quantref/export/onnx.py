"""Export of the quantized walkthrough CNN to ONNX, as a graph that onnxruntime runs with integers only.

The quantized graph (standard ``ai.onnx`` domain, opset 13, "QOperator" format):

```
x float32 (N, 8, 8, 1) NHWC ── QuantizeLinear ── uint8 ── Transpose → NCHW
   ── QLinearConv conv1 3×3 pad 1 (int8 weights per output channel, int32 bias)   ReLU = the clamp at y_zero_point
   ── QLinearConv conv2 3×3 pad 1                                                  ReLU = the clamp at y_zero_point
   ── MaxPool 2×2 (on uint8)
   ── QLinearConv dense as a 4×4 valid convolution → (N, 10, 1, 1) ── Flatten ── DequantizeLinear ── logits float32
```

Three choices, and why:

- **The input is the test split's tensor as it is**: float32 ``(N, 8, 8, 1)`` NHWC, ``pixels / 16``
  (:func:`quantref.data.preprocess`); the graph quantizes it and transposes the uint8 codes to NCHW itself.
- **ReLU has no node.** ONNX has no Relu on uint8, and QLinearConv has no fused activation. But each post-ReLU
  range is calibrated on non-negative data, so its zero point is the grid's bottom code ($z_y = 0$ for uint8):
  the requantization's saturation at 0 *is* the ReLU, exactly. The export checks this and refuses otherwise.
- **The dense layer is a QLinearConv**, a 4×4 kernel over the pooled 4×4×32 map (weight ``[o, c, h, w] =
  W[(h·4 + w)·32 + c, o]``, the NHWC flatten order). QLinearMatMul would do the product but has no bias input: the
  bias would have to be added after dequantization, in float, which is no longer integer-only (and the standard
  domain has no QLinearAdd or QGemm). A convolution takes the int32 bias into its accumulator, like conv1 and
  conv2.

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

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from quantref import correction, data, integer, ptq, train

__all__ = ["OPSET", "quantized_model_proto", "float_model_proto", "export_onnx"]

OPSET = 13
_POOLED = (4, 4, 32)  # the dense layer's input map, (H, W, C)


def _dense_as_conv(kernel: np.ndarray) -> np.ndarray:
    """(512, 10) dense kernel in NHWC flatten order → (10, 32, 4, 4) OIHW convolution kernel."""
    height, width, channels = _POOLED
    return np.transpose(kernel.reshape(height, width, channels, -1), (3, 2, 0, 1))


def _oihw(kernel: np.ndarray) -> np.ndarray:
    return np.transpose(kernel, (3, 2, 0, 1))


def _graph(nodes, initializers, name: str, output_dtype: int = TensorProto.FLOAT) -> onnx.ModelProto:
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 8, 1])]
    outputs = [helper.make_tensor_value_info("logits", output_dtype, ["N", 10])]
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="quantref")
    onnx.checker.check_model(model)
    return model


def quantized_model_proto(qmodel: ptq.QuantizedModel) -> onnx.ModelProto:
    """The int8 QOperator ONNX graph of a quantized CNN (see the module docstring).

    Args:
      qmodel: a model from :func:`quantref.ptq.quantize_model` with 8-bit weights, uint8 or int8 activations, and
        post-ReLU zero points at the grid's bottom (any range calibrated on post-ReLU data has them).

    Returns:
      The checked ``onnx.ModelProto``; input ``x`` float32 ``(N, 8, 8, 1)``, output ``logits`` float32 ``(N, 10)``.

    Raises:
      ValueError: if the weights are not 8-bit, the activations are not 8-bit, or a post-ReLU zero point is not
        the grid's bottom code (the ReLU would then need a node of its own).
    """
    fmt = qmodel.activation_format
    if qmodel.weight_format.bits != 8 or fmt.bits != 8:
        raise ValueError(
            f"qmodel must have 8-bit weights and activations for QLinearConv, got weights "
            f"{qmodel.weight_format.name} and activations {fmt.name}"
        )
    for name in ("conv1_output", "conv2_output"):
        zero_point = int(getattr(qmodel, name).zero_point)
        if zero_point != fmt.qmin:
            raise ValueError(
                f"qmodel.{name}.zero_point must be {fmt.qmin} (the bottom of {fmt.name}) so that saturation is the "
                f"ReLU, got {zero_point}; calibrate it on post-ReLU activations"
            )
    act_dtype = np.dtype(fmt.storage_dtype)
    tensors: list[onnx.TensorProto] = []

    def constant(name: str, value, dtype) -> str:
        tensors.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def activation(prefix: str, quant: ptq.ActivationQuant) -> list[str]:
        return [
            constant(f"{prefix}_scale", quant.scale, np.float32),
            constant(f"{prefix}_zp", quant.zero_point, act_dtype),
        ]

    def weights(name: str, kernel: np.ndarray) -> list[str]:
        layer = getattr(qmodel, name)
        scale = np.asarray(layer.kernel_scale, np.float32)
        return [
            constant(f"{name}_w", kernel, np.int8),
            constant(f"{name}_w_scale", scale, np.float32),
            weight_zero_point,
        ]

    # Symmetric weights: one scalar zero point 0 serves every layer and channel (smaller file, same meaning).
    weight_zero_point = constant("w_zp", 0, np.int8)
    x_q = activation("x", qmodel.input)
    a1 = activation("a1", qmodel.conv1_output)
    a2 = activation("a2", qmodel.conv2_output)
    out = activation("y", qmodel.logits)
    kernels = {
        "conv1": _oihw(np.asarray(qmodel.conv1.kernel)),
        "conv2": _oihw(np.asarray(qmodel.conv2.kernel)),
        "dense": _dense_as_conv(np.asarray(qmodel.dense.kernel)),
    }
    bias = {name: constant(f"{name}_b", getattr(qmodel, name).bias, np.int32) for name in kernels}
    nodes = [
        helper.make_node("QuantizeLinear", ["x", *x_q], ["x_q"]),
        helper.make_node("Transpose", ["x_q"], ["x_nchw"], perm=[0, 3, 1, 2]),
        helper.make_node(
            "QLinearConv",
            ["x_nchw", *x_q, *weights("conv1", kernels["conv1"]), *a1, bias["conv1"]],
            ["a1"],
            kernel_shape=[3, 3],
            pads=[1, 1, 1, 1],
        ),
        helper.make_node(
            "QLinearConv",
            ["a1", *a1, *weights("conv2", kernels["conv2"]), *a2, bias["conv2"]],
            ["a2"],
            kernel_shape=[3, 3],
            pads=[1, 1, 1, 1],
        ),
        helper.make_node("MaxPool", ["a2"], ["pooled"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node(
            "QLinearConv",
            ["pooled", *a2, *weights("dense", kernels["dense"]), *out, bias["dense"]],
            ["y_q"],
            kernel_shape=[4, 4],
        ),
        helper.make_node("Flatten", ["y_q"], ["y_flat"], axis=1),
        helper.make_node("DequantizeLinear", ["y_flat", *out], ["logits"]),
    ]
    return _graph(nodes, tensors, "quantref_digits_cnn_int8")


def float_model_proto(params: correction.FoldedCNN) -> onnx.ModelProto:
    """The float32 ONNX graph of the folded CNN, laid out as :func:`quantized_model_proto` (Conv for QLinearConv).

    Args:
      params: folded float parameters from :func:`quantref.correction.fold_batch_norm`.

    Returns:
      The checked ``onnx.ModelProto``, same input and output as the quantized graph.
    """
    tensors = [
        numpy_helper.from_array(np.asarray(value, np.float32), name)
        for name, value in (
            ("conv1_w", _oihw(np.asarray(params.conv1_kernel))),
            ("conv1_b", params.conv1_bias),
            ("conv2_w", _oihw(np.asarray(params.conv2_kernel))),
            ("conv2_b", params.conv2_bias),
            ("dense_w", _dense_as_conv(np.asarray(params.dense_kernel))),
            ("dense_b", params.dense_bias),
        )
    ]
    nodes = [
        helper.make_node("Transpose", ["x"], ["x_nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["x_nchw", "conv1_w", "conv1_b"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["a1"]),
        helper.make_node("Conv", ["a1", "conv2_w", "conv2_b"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["a2"]),
        helper.make_node("MaxPool", ["a2"], ["pooled"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["pooled", "dense_w", "dense_b"], ["y"], kernel_shape=[4, 4]),
        helper.make_node("Flatten", ["y"], ["logits"], axis=1),
    ]
    return _graph(nodes, tensors, "quantref_digits_cnn_float")


def export_onnx(out_dir: str | Path, *, force: bool = False, observer: str = "min_max") -> dict[str, Path]:
    """Trains (or loads) the walkthrough CNN, quantizes it W8A8 per channel, and writes it for onnxruntime.

    Writes into ``out_dir``:

    - ``model.onnx``: the int8 graph of :func:`quantized_model_proto`;
    - ``float.onnx``: the float graph of :func:`float_model_proto` (batch norm folded);
    - ``test_inputs.npz``: ``x``, the test split as fed to both models (float32 NHWC), and ``y``, its labels;
    - ``expected.npz``: ``logits``, quantref's prediction of ``model.onnx``'s output on ``x`` —
      :func:`quantref.integer.integer_forward` in ``"onnxruntime"`` mode, dequantized.

    Args:
      out_dir: the directory; created if missing.
      force: overwrite the files of a non-empty ``out_dir`` if True.
      observer: calibration method for the activations, a name from :data:`quantref.ptq.OBSERVER_NAMES`.

    Returns:
      The paths written, keyed ``"model"``, ``"float"``, ``"test_inputs"``, ``"expected"``.

    Raises:
      ValueError: if ``out_dir`` is an existing non-empty directory and ``force`` is False, or is a file.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"out_dir must be a directory, got the file {out_dir}")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise ValueError(f"out_dir {out_dir} is not empty; pass force=True (--force) to overwrite its files")
    splits = data.load_splits()
    params = correction.fold_batch_norm(train.load_or_train(progress=False))
    qmodel = ptq.quantize_model(params, splits.x_calib, observer=observer)
    expected = integer.integer_forward(qmodel, integer.multipliers(qmodel, "onnxruntime"), jnp.asarray(splits.x_test))
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "model": out_dir / "model.onnx",
        "float": out_dir / "float.onnx",
        "test_inputs": out_dir / "test_inputs.npz",
        "expected": out_dir / "expected.npz",
    }
    onnx.save(quantized_model_proto(qmodel), paths["model"])
    onnx.save(float_model_proto(params), paths["float"])
    np.savez(paths["test_inputs"], x=splits.x_test, y=splits.y_test)
    np.savez(paths["expected"], logits=np.asarray(expected.logits))
    return paths
