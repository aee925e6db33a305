"""Export of a quantized sequential CNN as a fully-integer ``.tflite`` file, and what LiteRT will compute from it.

TFLite's int8 scheme (its quantization spec) is *not* uint8: activations are int8 with any zero point, weights are
int8, symmetric (zero point 0) on the narrow grid $[-127, 127]$ with one scale per output channel, and biases are
int32 with $s_{bias,c} = s_{in}\\, s_{w,c}$ and zero point 0. The graph written here, for ``io="float"``:

```
x float32 (N, H, W, C) ── QUANTIZE ── int8 ── CONV_2D (+ fused RELU) ── … ── MAX_POOL_2D ── RESHAPE (N, -1)
   ── FULLY_CONNECTED ── int8 ── DEQUANTIZE ── float32
```

and for ``io="int8"`` the same without the QUANTIZE and DEQUANTIZE at the ends. A ReLU after a layer is fused into it:
TFLite clamps the requantized output at $\\max(-128, z_{out})$, the code of real 0.

LiteRT runs a file with one of three sets of kernels (``OpResolverType``), and on x86-64 they do not compute the same
integers. Measured against ``ai-edge-litert`` (the tests), each is predicted bit for bit by a mode of quantref's
integer path (:data:`MODES`, :func:`quantref.integer.multipliers`):

| kernels | LiteRT resolver | mode | QUANTIZE (float → int8) | CONV_2D | FULLY_CONNECTED |
| --- | --- | --- | --- | --- | --- |
| ``"reference"`` | ``BUILTIN_REF`` | ``"tflite"`` | half away, $x / s$ | gemmlowp | float64 |
| ``"optimized"`` | ``BUILTIN_WITHOUT_DEFAULT_DELEGATES`` | ``"tflite-optimized"`` | by position | ruy | ruy |
| ``"xnnpack"`` | ``AUTO`` (XNNPACK) | ``"tflite-xnnpack"`` | half even, $x \\cdot f_{32}(1/s)$ | float32 | float32 |

The arithmetic of each — the requantizations, the QUANTIZE and DEQUANTIZE kernels, their NaN and out-of-range
behaviour — is the oracle's, :mod:`quantref.runtimes.litert`. :func:`export_tflite` writes the prediction of each
kernel set into ``expected.npz``, computed by :func:`quantref.integer.integer_forward` on the very quantized model
it exports; :func:`predict` does the same for a hand-made :class:`Network`.

References:
  LiteRT 8-bit quantization specification, https://ai.google.dev/edge/litert/models/quantization_spec
  TensorFlow ``tensorflow/lite/kernels/internal/reference/integer_ops/conv.h``, ``fully_connected.h``,
  ``reference/quantize.h``.
  Jacob et al., "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference",
  arXiv:1712.05877, 2017.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import jax.numpy as jnp
import numpy as np
from flax import nnx

from quantref import _files, integer, nn, ptq
from quantref.export import _tflite_schema as schema
from quantref.runtimes import litert as qlitert

__all__ = [
    "Kernels",
    "KERNELS",
    "RESOLVERS",
    "Quant",
    "Conv2D",
    "FullyConnected",
    "MaxPool2D",
    "Flatten",
    "Network",
    "model_bytes",
    "MODES",
    "predict",
    "export_tflite",
    "network_from_qmodel",
    "quantized_model",
    "float_network",
]

Kernels = qlitert.KernelSet
KERNELS: tuple[str, ...] = qlitert.KERNEL_SETS
#: The ``ai_edge_litert.interpreter.OpResolverType`` member that runs each kernel set.
RESOLVERS: dict[str, str] = {
    "reference": "BUILTIN_REF",
    "optimized": "BUILTIN_WITHOUT_DEFAULT_DELEGATES",
    "xnnpack": "AUTO",
}
_QMIN, _QMAX = -128, 127


# --- the network, as TFLite sees it ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Quant:
    """Per-tensor int8 parameters of an activation: float32 ``scale`` and ``zero_point`` in [-128, 127]."""

    scale: float
    zero_point: int


@dataclasses.dataclass(frozen=True)
class Conv2D:
    """A convolution: HWIO int8 ``kernel`` codes, float32 ``kernel_scale`` ``(out,)`` or ``()``, int32 ``bias``.

    ``output`` is the quantization of the layer's output (after the ReLU if ``relu``); ``padding`` is TFLite's
    ``"SAME"`` (extra row/column at the bottom/right) or ``"VALID"``. In a float network ``kernel`` and ``bias`` are
    float32 and ``kernel_scale`` and ``output`` are ``None``.
    """

    name: str
    kernel: np.ndarray
    kernel_scale: np.ndarray | None
    bias: np.ndarray
    output: Quant | None
    strides: tuple[int, int] = (1, 1)
    padding: Literal["SAME", "VALID"] = "SAME"
    relu: bool = False


@dataclasses.dataclass(frozen=True)
class FullyConnected:
    """A dense layer: ``(in, out)`` int8 ``kernel``, ``kernel_scale`` ``(out,)`` or ``()``, int32 ``bias`` (float32
    ``kernel`` and ``bias`` and no quantization in a float network)."""

    name: str
    kernel: np.ndarray
    kernel_scale: np.ndarray | None
    bias: np.ndarray
    output: Quant | None
    relu: bool = False


@dataclasses.dataclass(frozen=True)
class MaxPool2D:
    """Max pooling on the codes (the quantizer is monotone, so the grid is unchanged)."""

    name: str
    window: tuple[int, int]
    strides: tuple[int, int]
    padding: Literal["SAME", "VALID"] = "VALID"


@dataclasses.dataclass(frozen=True)
class Flatten:
    """``(N, H, W, C) -> (N, H·W·C)`` in NHWC order (a RESHAPE)."""

    name: str


Layer = Conv2D | FullyConnected | MaxPool2D | Flatten


@dataclasses.dataclass(frozen=True)
class Network:
    """A sequential network: the input's NHWC shape without the batch, its quantization, and the layers.

    With ``input=None`` (and no quantization in the layers) it is a float32 network, written for comparison.
    """

    input_shape: tuple[int, ...]
    input: Quant | None
    layers: tuple[Layer, ...]

    @property
    def output(self) -> Quant | None:
        """The quantization of the network's output: the last conv or dense layer's."""
        for layer in reversed(self.layers):
            if isinstance(layer, (Conv2D, FullyConnected)):
                return layer.output
        return self.input


# --- writing the flatbuffer --------------------------------------------------------------------------------------


def model_bytes(network: Network, *, io: Literal["float", "int8"] = "float") -> bytes:
    """The ``.tflite`` flatbuffer of a :class:`Network` (see the module docstring for the graph).

    The batch dimension is dynamic (``shape_signature`` -1; the stored shape has batch 1): call the interpreter's
    ``resize_tensor_input`` for larger batches. A float network (``network.input is None``) is written with float32
    tensors and operators throughout, for comparison.

    Args:
      network: the network; weights int8 on [-127, 127], biases int32, every scale positive float32.
      io: ``"float"`` for float32 input and output (QUANTIZE and DEQUANTIZE in the graph), ``"int8"`` for int8
        codes in and out.

    Returns:
      The file's bytes.

    Raises:
      ValueError: for an unknown ``io``, a layer of a type TFLite's integer path here does not cover, or parameters
        of the wrong dtype, shape or range.
    """
    if io not in ("float", "int8"):
        raise ValueError(f"io must be 'float' or 'int8', got {io!r}")
    quantized = network.input is not None
    if not quantized and io != "float":
        raise ValueError("a float network (input=None) has float32 input and output: io must be 'float'")
    version = None if quantized else 1  # the int8 operator versions, or float32's
    tensors: list[schema.Tensor] = []

    def add(tensor: schema.Tensor) -> int:
        tensors.append(tensor)
        return len(tensors) - 1

    def activation(name: str, shape: tuple[int, ...], quant: Quant | None) -> int:
        dtype = "float32" if quant is None else "int8"
        params = {} if quant is None else _quant_params(quant)
        return add(schema.Tensor(name, (1, *shape), dtype, shape_signature=(-1, *shape), **params))

    def operator(opcode: str, inputs: tuple[int, ...], output: int, options_type: str, **options: int) -> None:
        operators.append(schema.Operator(opcode, inputs, (output,), options_type, options, version))

    operators: list[schema.Operator] = []
    shape = tuple(int(d) for d in network.input_shape)
    quant = network.input
    if quantized and io == "float":
        graph_input = activation("x", shape, None)
        current = activation("x_q", shape, quant)
        operator("QUANTIZE", (graph_input,), current, "QuantizeOptions")
    else:
        graph_input = current = activation("x" if not quantized else "x_q", shape, quant)
    for layer in network.layers:
        if isinstance(layer, (Conv2D, FullyConnected)):
            conv = isinstance(layer, Conv2D)
            if not conv and len(shape) != 1:
                raise ValueError(f"{layer.name}: a fully-connected layer needs a flat input, got shape {shape}")
            kernel, kernel_scale, bias = _check_weights(layer, shape[-1], rank=4 if conv else 2, quantized=quantized)
            # TFLite's layouts put the output channels first: OHWI, (out, in).
            tflite_kernel = np.transpose(kernel, (3, 0, 1, 2)) if conv else np.ascontiguousarray(kernel.T)
            weights = _weight_tensors(layer.name, tflite_kernel, kernel_scale, bias, quant)
            inputs = (current, add(weights[0]), add(weights[1]))
            relu = schema.ACTIVATIONS["RELU" if layer.relu else "NONE"]
            shape = _conv_output_shape(shape, kernel.shape, layer.strides, layer.padding) if conv else kernel.shape[1:]
            out = activation(f"{layer.name}/output", shape, layer.output)
            if conv:
                operator(
                    "CONV_2D", inputs, out, "Conv2DOptions", padding=schema.PADDINGS[layer.padding],
                    stride_w=layer.strides[1], stride_h=layer.strides[0], fused_activation_function=relu,
                    dilation_w_factor=1, dilation_h_factor=1,
                )  # fmt: skip
            else:
                operator("FULLY_CONNECTED", inputs, out, "FullyConnectedOptions", fused_activation_function=relu)
            quant = layer.output
        elif isinstance(layer, MaxPool2D):
            shape = _pool_output_shape(shape, layer)
            out = activation(f"{layer.name}/output", shape, quant)
            operator(
                "MAX_POOL_2D", (current,), out, "Pool2DOptions", padding=schema.PADDINGS[layer.padding],
                stride_w=layer.strides[1], stride_h=layer.strides[0], filter_width=layer.window[1],
                filter_height=layer.window[0], fused_activation_function=schema.ACTIVATIONS["NONE"],
            )  # fmt: skip
        elif isinstance(layer, Flatten):
            shape = (math.prod(shape),)
            new_shape = np.array([-1, shape[0]], np.int32)
            shape_tensor = add(schema.Tensor(f"{layer.name}/shape", (2,), "int32", data=new_shape))
            out = activation(f"{layer.name}/output", shape, quant)
            operator("RESHAPE", (current, shape_tensor), out, "ReshapeOptions")
        else:
            raise ValueError(f"cannot write a layer of type {type(layer).__name__} to TFLite")
        current = out
    if quantized and io == "float":
        graph_output = activation("output", shape, None)
        operator("DEQUANTIZE", (current,), graph_output, "DequantizeOptions")
    else:
        graph_output = current
    return schema.model_bytes(tensors, operators, [graph_input], [graph_output])


def _quant_params(quant: Quant) -> dict[str, np.ndarray]:
    scale = np.float32(quant.scale)
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"an activation scale must be positive and finite, got {quant.scale}")
    if not _QMIN <= int(quant.zero_point) <= _QMAX:
        raise ValueError(f"an int8 activation's zero point must lie in [-128, 127], got {quant.zero_point}")
    return {"scale": np.array([scale]), "zero_point": np.array([int(quant.zero_point)], np.int64)}


def _check_weights(layer, in_features: int, *, rank: int, quantized: bool):
    kernel, bias = np.asarray(layer.kernel), np.asarray(layer.bias)
    kernel_dtype, bias_dtype = (np.int8, np.int32) if quantized else (np.float32, np.float32)
    if kernel.dtype != kernel_dtype or kernel.ndim != rank:
        raise ValueError(
            f"{layer.name}: kernel must be a {np.dtype(kernel_dtype)} array of rank {rank}, got "
            f"{kernel.dtype}{kernel.shape}"
        )
    if kernel.shape[-2] != in_features:
        raise ValueError(f"{layer.name}: kernel expects {kernel.shape[-2]} input features, the input has {in_features}")
    out_features = kernel.shape[-1]
    if bias.dtype != bias_dtype or bias.shape != (out_features,):
        raise ValueError(
            f"{layer.name}: bias must be {np.dtype(bias_dtype)} of shape ({out_features},), got "
            f"{bias.dtype}{bias.shape}"
        )
    if not quantized:
        if layer.kernel_scale is not None or layer.output is not None:
            raise ValueError(f"{layer.name}: a layer of a float network has no kernel_scale or output quantization")
        return kernel, None, bias
    if kernel.min(initial=0) < -127:
        raise ValueError(f"{layer.name}: TFLite's weights are on [-127, 127], got a code {kernel.min()}")
    kernel_scale = np.asarray(layer.kernel_scale, np.float32).reshape(-1)
    if kernel_scale.size not in (1, out_features) or not np.all(np.isfinite(kernel_scale) & (kernel_scale > 0)):
        raise ValueError(
            f"{layer.name}: kernel_scale must be positive, one per output channel or one in all, got "
            f"{kernel_scale.size} values for {out_features} channels"
        )
    if layer.output is None:
        raise ValueError(f"{layer.name}: a layer of an int8 network needs its output quantization")
    return kernel, kernel_scale, bias


def _weight_tensors(name: str, kernel: np.ndarray, kernel_scale: np.ndarray | None, bias: np.ndarray, inp: Quant):
    """The kernel (TFLite layout, output channels first) and bias tensors, quantized along axis 0 if int8."""
    channels = kernel.shape[0]
    if kernel_scale is None:
        return (
            schema.Tensor(f"{name}/kernel", kernel.shape, "float32", kernel),
            schema.Tensor(f"{name}/bias", (channels,), "float32", bias),
        )
    zeros = np.zeros(kernel_scale.size, np.int64)
    # TFLite checks s_bias against s_in · s_w (within a relative 1e-6) and takes both from the file.
    bias_scale = (np.float64(np.float32(inp.scale)) * kernel_scale.astype(np.float64)).astype(np.float32)
    return (
        schema.Tensor(f"{name}/kernel", kernel.shape, "int8", kernel, kernel_scale, zeros),
        schema.Tensor(f"{name}/bias", (channels,), "int32", bias, bias_scale, zeros),
    )


def _conv_output_shape(shape, kernel_shape, strides, padding) -> tuple[int, ...]:
    if len(shape) != 3:
        raise ValueError(f"a convolution needs an (H, W, C) input, got shape {shape}")
    if padding not in schema.PADDINGS:
        raise ValueError(f"padding must be 'SAME' or 'VALID', got {padding!r}")
    dims = []
    for size, k, s in zip(shape[:2], kernel_shape[:2], strides):
        dims.append(-(-size // s) if padding == "SAME" else (size - k) // s + 1)
    if min(dims) < 1:
        raise ValueError(f"the kernel {kernel_shape[:2]} does not fit the input {shape[:2]}")
    return (*dims, kernel_shape[3])


def _pool_output_shape(shape, layer: MaxPool2D) -> tuple[int, ...]:
    if len(shape) != 3:
        raise ValueError(f"{layer.name}: max pooling needs an (H, W, C) input, got shape {shape}")
    if layer.padding not in schema.PADDINGS:
        raise ValueError(f"{layer.name}: padding must be 'SAME' or 'VALID', got {layer.padding!r}")
    dims = []
    for size, k, s in zip(shape[:2], layer.window, layer.strides):
        dims.append(-(-size // s) if layer.padding == "SAME" else (size - k) // s + 1)
    return (*dims, shape[2])


# --- what LiteRT computes ------------------------------------------------------------------------------------------


#: The mode of :func:`quantref.integer.multipliers` that predicts each kernel set bit for bit.
MODES: dict[str, str] = {"reference": "tflite", "optimized": "tflite-optimized", "xnnpack": "tflite-xnnpack"}


def predict(
    network: Network,
    x: np.ndarray,
    *,
    kernels: Kernels = "reference",
    io: Literal["float", "int8"] = "float",
) -> np.ndarray:
    """The output LiteRT computes from :func:`model_bytes` of ``network`` with the given kernel set.

    It is :func:`quantref.integer.integer_forward` in the kernel set's mode (:data:`MODES`) on the network as a
    quantized model (:func:`quantized_model`): the same integer path that :func:`export_tflite` writes into
    ``expected.npz``. A network without layers (a QUANTIZE and a DEQUANTIZE) is
    :func:`quantref.runtimes.litert.quantize` then :func:`quantref.runtimes.litert.dequantize`.

    Args:
      network: the network.
      x: ``(N, *input_shape)`` float32 for ``io="float"``, int8 codes for ``io="int8"``.
      kernels: ``"reference"``, ``"optimized"`` or ``"xnnpack"``.
      io: as in :func:`model_bytes`.

    Returns:
      The output as a numpy array: float32 for ``io="float"`` (dequantized), int8 codes for ``io="int8"``.

    Raises:
      ValueError: for unknown ``kernels`` or ``io``, a float network, layers without a conv or dense among them,
        or an input of the wrong shape or dtype.
    """
    _check_kernels(kernels)
    if io not in ("float", "int8"):
        raise ValueError(f"io must be 'float' or 'int8', got {io!r}")
    if network.input is None:
        raise ValueError("predict runs int8 networks; a float network (input=None) has nothing to predict bit for bit")
    x = np.asarray(x)
    if x.shape[1:] != tuple(network.input_shape):
        raise ValueError(f"x must have shape (N, {', '.join(map(str, network.input_shape))}), got {x.shape}")
    if io == "int8" and x.dtype != np.int8:
        raise ValueError(f"with io='int8' x must be int8 codes, got {x.dtype}")
    if not network.layers:
        quant = network.input
        codes = x if io == "int8" else qlitert.quantize(x, quant.scale, quant.zero_point, "int8", kernels)
        return np.asarray(codes if io == "int8" else qlitert.dequantize(codes, quant.scale, quant.zero_point, kernels))
    qmodel = quantized_model(network)
    out = integer.integer_forward(qmodel, integer.multipliers(qmodel, MODES[kernels]), x)
    return np.asarray(out.output_q if io == "int8" else out.output)


def quantized_model(network: Network) -> ptq.QuantizedModel:
    """The :class:`quantref.ptq.QuantizedModel` of an int8 :class:`Network` (the inverse of
    :func:`network_from_qmodel`): its trace, layers and activation grids, for :mod:`quantref.integer`.

    Args:
      network: an int8 network with at least one conv or dense layer.

    Returns:
      The quantized model, int8 activations and weights.

    Raises:
      ValueError: for a float network or one without a conv or dense layer.
    """
    if network.input is None:
        raise ValueError("a float network (input=None) has no quantization")
    steps: list[nn.Step] = []
    layers: dict[str, ptq.LayerQuant] = {}
    activations: dict[str, ptq.ActivationQuant] = {}
    shape, quant, last = tuple(network.input_shape), network.input, None

    def step(kind: str, path: str | None, **params) -> None:
        steps.append(nn.Step(kind, path, tuple({**params, "input_shape": shape}.items()), (len(steps),)))

    for layer in network.layers:
        if isinstance(layer, (Conv2D, FullyConnected)):
            activations[f"{layer.name}.input"] = _activation(quant)
            kernel_scale = jnp.asarray(layer.kernel_scale, jnp.float32)
            layers[layer.name] = ptq.LayerQuant(jnp.asarray(layer.kernel), kernel_scale, jnp.asarray(layer.bias))
            if isinstance(layer, Conv2D):
                kernel_shape = np.shape(layer.kernel)
                pads = _explicit_padding(shape, kernel_shape[:2], layer.strides, layer.padding)
                step("conv", layer.name, strides=tuple(layer.strides), padding=pads, dilation=(1, 1), groups=1)
                shape = _conv_output_shape(shape, kernel_shape, layer.strides, layer.padding)
            else:
                step("dense", layer.name)
                shape = tuple(np.shape(layer.kernel)[1:])
            if layer.relu:
                step("relu", None)
            quant, last = layer.output, layer.name
        elif isinstance(layer, MaxPool2D):
            pads = _explicit_padding(shape, layer.window, layer.strides, layer.padding)
            step("max_pool", None, window=tuple(layer.window), strides=tuple(layer.strides), padding=pads)
            shape = _pool_output_shape(shape, layer)
        elif isinstance(layer, Flatten):
            step("flatten", None)
            shape = (math.prod(shape),)
        else:
            raise ValueError(f"cannot run a layer of type {type(layer).__name__}")
    if last is None:
        raise ValueError("the network has no conv or dense layer")
    activations[f"{last}.output"] = _activation(quant)
    trace = nn.Trace(tuple(steps), (len(steps),))
    return ptq.QuantizedModel(layers, activations, trace, ptq.weight_format(8), ptq.activation_format(8, True))


def _activation(quant: Quant) -> ptq.ActivationQuant:
    return ptq.ActivationQuant(jnp.float32(quant.scale), jnp.int32(quant.zero_point))


def _explicit_padding(shape, window, strides, padding: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """TFLite's SAME (the odd extra row/column at the bottom/right) or VALID as ``((top, bottom), (left, right))``."""
    if padding == "VALID":
        return ((0, 0), (0, 0))
    pads = []
    for size, k, s in zip(shape[:2], window, strides):
        total = max((-(-size // s) - 1) * s + k - size, 0)
        pads.append((total // 2, total - total // 2))
    return tuple(pads)


def _check_kernels(kernels: str) -> None:
    if kernels not in KERNELS:
        raise ValueError(f"kernels must be one of {KERNELS}, got {kernels!r}")


# --- from the quantref pipeline -------------------------------------------------------------------------------


def export_tflite(
    qmodel: ptq.QuantizedModel,
    out_dir: str | Path,
    *,
    test_x: np.ndarray,
    test_y: np.ndarray | None = None,
    float_model: nnx.Module | None = None,
    io: Literal["float", "int8"] = "float",
    force: bool = False,
) -> dict[str, Path]:
    """Writes a quantized model as a fully-integer ``.tflite`` file, with the inputs and quantref's predictions.

    Writes into ``out_dir`` (atomically, with the output directory rules of :func:`quantref.export.onnx.export_onnx`):

    - ``model.tflite``: the int8 graph of :func:`network_from_qmodel` (see the module docstring);
    - ``float.tflite``: the float32 graph of :func:`float_network`, if ``float_model`` is given;
    - ``test_inputs.npz``: ``x``, the inputs (float32), ``y`` their labels if given, and with ``io="int8"``
      ``x_q``, the int8 codes fed to ``model.tflite`` (TFLite's reference QUANTIZE of ``x``);
    - ``expected.npz``: quantref's prediction of ``model.tflite``'s output on the test inputs for each of LiteRT's
      kernel sets — ``output`` for the reference kernels (``BUILTIN_REF``), ``output_optimized`` for the optimized
      builtin kernels (``BUILTIN_WITHOUT_DEFAULT_DELEGATES``) and ``output_xnnpack`` for the default XNNPACK
      delegate (:func:`predict`): float32, or int8 codes with ``io="int8"``. They differ where the kernels round
      differently (ties; see :func:`requantize`).

    Args:
      qmodel: the quantized model (:func:`quantref.ptq.quantize_model` with ``activation_signed=True``), a chain of
        conv/dense/ReLU/max-pool/flatten layers with 8-bit activations and weights of at most 8 bits.
      out_dir: the directory; created if missing.
      test_x: float32 inputs shaped like the model's input (NHWC images or feature vectors).
      test_y: their labels, or ``None``.
      float_model: the float model (BatchNorm folded) that ``qmodel`` quantizes, to write ``float.tflite``.
      io: ``"float"`` (float32 in and out, QUANTIZE and DEQUANTIZE in the graph) or ``"int8"``.
      force: replace quantref's files in a non-empty ``out_dir`` (other files there are kept).

    Returns:
      The paths written, keyed ``"model"``, ``"float"`` (if written), ``"test_inputs"``, ``"expected"``.

    Raises:
      ValueError: if ``out_dir`` is a file, is not empty and ``force`` is False, or cannot be written; if ``qmodel``
        cannot be written (see :func:`network_from_qmodel`); or if ``test_x`` does not fit the model's input.
    """
    target = _files.check_output_dir(out_dir, force=force)
    network = network_from_qmodel(qmodel)
    model = model_bytes(network, io=io)
    float_model_bytes = model_bytes(float_network(float_model, qmodel)) if float_model is not None else None
    test_x = np.asarray(test_x, np.float32)
    inputs = {"x": test_x}
    if test_y is not None:
        inputs["y"] = np.asarray(test_y)
    integer.integer_forward(qmodel, integer.multipliers(qmodel, MODES["reference"]), test_x[:1])  # checks test_x
    fed = test_x
    if io == "int8":
        quant = network.input
        fed = inputs["x_q"] = np.asarray(qlitert.quantize(test_x, quant.scale, quant.zero_point, "int8", "reference"))
    expected = {}
    for kernels, mode in MODES.items():
        out = integer.integer_forward(qmodel, integer.multipliers(qmodel, mode), fed)
        expected[_EXPECTED_KEYS[kernels]] = np.asarray(out.output_q if io == "int8" else out.output)
    files: dict[str, Callable[[Path], None]] = {
        "model.tflite": lambda path: path.write_bytes(model),
        "test_inputs.npz": lambda path: _files.save_npz(path, inputs),
        "expected.npz": lambda path: _files.save_npz(path, expected),
    }
    if float_model_bytes is not None:
        files["float.tflite"] = lambda path: path.write_bytes(float_model_bytes)
    written = _files.write_files(target, files)
    return {name.split(".")[0]: path for name, path in written.items()}


_EXPECTED_KEYS = {"reference": "output", "optimized": "output_optimized", "xnnpack": "output_xnnpack"}


def network_from_qmodel(qmodel: ptq.QuantizedModel) -> Network:
    """The int8 :class:`Network` of a quantized chain of layers, named by the pipeline's layer paths.

    Each conv or dense layer keeps its codes, scales and int32 bias; its output is requantized to the grid of the
    next layer's input (or its own output grid at the end, :meth:`quantref.ptq.QuantizedModel.output_activation`);
    a ReLU before the next layer becomes the layer's fused RELU, so TFLite clamps at $\\max(-128, z_{out})$ as
    :mod:`quantref.integer` does.

    Args:
      qmodel: the quantized model.

    Returns:
      The :class:`Network`.

    Raises:
      ValueError: if the model is not a chain of conv/dense/ReLU/max-pool/flatten layers (naming the first step
        that is not); its activations are not signed 8-bit (TFLite's scheme is int8 — quantize with
        ``activation_signed=True``) or its weights wider than 8 bits; or a convolution is dilated or grouped, or a
        convolution's or pool's padding is neither TFLite's SAME nor VALID.
    """
    steps = integer.chain(qmodel)
    fmt = qmodel.activation_format
    if fmt.bits != 8 or not fmt.signed:
        raise ValueError(
            f"TFLite's integer scheme has int8 activations, got {fmt.name}; quantize with activation_signed=True "
            "and activation_bits=8"
        )
    if qmodel.weight_format.bits > 8:
        raise ValueError(f"TFLite's weights are int8, got {qmodel.weight_format.name}")
    first = qmodel.activations[f"{steps[0].path}.input"]
    return Network(tuple(steps[0].param("input_shape")), _quant(first), _layers(steps, qmodel.layers, qmodel))


def float_network(float_model: nnx.Module, qmodel: ptq.QuantizedModel) -> Network:
    """The float32 :class:`Network` of the float model that ``qmodel`` quantizes, laid out as
    :func:`network_from_qmodel` (same operators, float32 weights), to compare size and speed with.

    Args:
      float_model: the float model (BatchNorm folded).
      qmodel: its quantization, for the network's structure.

    Returns:
      A :class:`Network` with ``input=None``; write it with :func:`model_bytes`.
    """
    steps = integer.chain(qmodel)
    weights = {}
    for step in steps:
        if step.kind in ("conv", "dense"):
            layer = nn.get_module(float_model, step.path)
            layer = layer.layer if isinstance(layer, nn.QuantLayer) else layer
            kernel = np.asarray(layer.kernel[...], np.float32)
            bias = np.zeros(kernel.shape[-1], np.float32) if layer.bias is None else layer.bias[...]
            weights[step.path] = (kernel, None, np.asarray(bias, np.float32))
    return Network(tuple(steps[0].param("input_shape")), None, _layers(steps, weights, None))


def _quant(activation: ptq.ActivationQuant) -> Quant:
    return Quant(float(activation.scale), int(activation.zero_point))


def _layers(steps: tuple[nn.Step, ...], weights, qmodel: ptq.QuantizedModel | None) -> tuple[Layer, ...]:
    """The TFLite layers of a chain of steps; ``weights[path]`` is ``(kernel, kernel_scale, bias)``."""
    layers: list[Layer] = []
    for index, step in enumerate(steps):
        name = step.path or f"{step.kind}{index}"
        shape = step.param("input_shape")
        if step.kind in ("conv", "dense"):
            kernel, kernel_scale, bias = (np.asarray(w) if w is not None else None for w in weights[step.path])
            output = _quant(qmodel.output_activation(step.path)) if qmodel is not None else None
            relu = integer.relu_follows(steps, index)
            if step.kind == "dense":
                layers.append(FullyConnected(name, kernel, kernel_scale, bias, output, relu))
                continue
            if step.param("groups") != 1 or tuple(step.param("dilation")) != (1, 1):
                raise ValueError(f"conv layer {name!r}: TFLite's CONV_2D here is not dilated or grouped")
            strides = tuple(step.param("strides"))
            padding = _padding_mode(name, shape, kernel.shape[:2], strides, step.param("padding"))
            layers.append(Conv2D(name, kernel, kernel_scale, bias, output, strides, padding, relu))
        elif step.kind == "max_pool":
            window, strides = tuple(step.param("window")), tuple(step.param("strides"))
            padding = _padding_mode(name, shape, window, strides, step.param("padding"))
            layers.append(MaxPool2D(name, window, strides, padding))
        elif step.kind == "flatten":
            layers.append(Flatten(name))
        # A ReLU step is fused into the layer before it.
    return tuple(layers)


def _padding_mode(name: str, shape, window, strides, padding) -> Literal["SAME", "VALID"]:
    """TFLite's padding mode that pads exactly as ``padding`` ``((top, bottom), (left, right))`` does."""
    padding = tuple(tuple(int(p) for p in pair) for pair in padding)
    if all(p == 0 for pair in padding for p in pair):
        return "VALID"
    same = _explicit_padding(shape, window, strides, "SAME")
    if padding == same:
        return "SAME"
    raise ValueError(
        f"{name}: padding {padding} is neither TFLite's SAME {same} nor VALID; TFLite would need a PAD "
        "operator, which this export does not write"
    )
