"""Post-training quantization (PTQ) of any NNX model of conv and dense layers: calibrate, quantize, simulate.

The recipe (Nagel et al.'s "standard PTQ pipeline", sec. 4.1, and TFLite's int8 spec), on a model whose BatchNorms
are already folded (:func:`quantref.nn.fold_batch_norm`):

1. run the float model on the calibration split and estimate, with any observer of :mod:`quantref.ranges`, the
   range of every layer's input (``"<path>.input"``) and of every output layer's output (``"<path>.output"``) —
   per tensor, asymmetric, int8 or uint8. For a chain of layers these are exactly the tensors an integer-only
   network stores: the input, each post-ReLU feature map, the logits. A layer input that comes through a
   max-pool is observed before the pool, on the feature map the previous layer writes (max-pooling keeps the grid;
   onnxruntime's calibrator does the same);
2. quantize each weight tensor symmetrically on the narrow grid $[-(2^{b-1}-1), 2^{b-1}-1]$, one scale per output
   channel (or per tensor), $s_w = \\max|W_c| / (2^{b-1}-1)$, zero point 0;
3. quantize each bias to int32 with the scale of the accumulator it is added to, zero point 0:

$$
s_{bias,c} = s_{in}\\, s_{w,c}, \\qquad b_q = \\operatorname{rne}(b / s_{bias}) .
$$

The result is a :class:`QuantizedModel` keyed by layer path: integer weights and biases, float32 scales, integer
zero points, and the model's traced structure — all an integer-only runtime needs (:mod:`quantref.integer`,
:mod:`quantref.export.onnx`). :func:`fake_quant_model` swaps drop-in fake-quant layers
(:class:`quantref.nn.QuantLayer`) into the float model to simulate it ("fake quantization"); this works for any
model of conv and dense layers, residual or not. :func:`accuracy_table` compares bit widths, granularities and
calibration methods.

References:
  Jacob et al., "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference",
  arXiv:1712.05877, 2017, sec. 2.4 (int32 bias with $s_{bias} = s_{in} s_w$) and 3.
  Nagel et al., "A White Paper on Neural Network Quantization", arXiv:2106.08295, 2021, sec. 2.3, 3.1, 4.1.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from quantref import affine, formats, nn, ranges
from quantref._validate import INT32_MAX

__all__ = [
    "LayerQuant",
    "ActivationQuant",
    "QuantizedModel",
    "FakeQuant",
    "OBSERVER_NAMES",
    "weight_format",
    "activation_format",
    "calibrate_activations",
    "quantize_model",
    "fake_quant_model",
    "with_weights",
    "quantize_bias",
    "from_fake_quant",
    "fake_quant_forward",
    "accuracy",
    "accuracy_table",
]

#: The observers of :mod:`quantref.ranges` that :func:`quantize_model` accepts by name.
OBSERVER_NAMES = tuple(ranges.OBSERVERS)


class LayerQuant(NamedTuple):
    """One quantized conv or dense layer.

    Attributes:
      kernel: integer weight codes, int8 storage, the layer's kernel layout (HWIO for a conv, ``(in, out)`` for a
        dense layer), zero point 0.
      kernel_scale: float32, ``(out,)`` per output channel or ``()`` per tensor.
      bias: int32 codes, ``(out,)``, with scale ``input_scale * kernel_scale`` and zero point 0 (zeros for a layer
        without a bias).
    """

    kernel: jax.Array
    kernel_scale: jax.Array
    bias: jax.Array


class ActivationQuant(NamedTuple):
    """Per-tensor quantization parameters of one activation: float32 ``scale`` and int32 ``zero_point`` (scalars)."""

    scale: jax.Array
    zero_point: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QuantizedModel:
    """A quantized network, keyed by layer path (a pytree; formats and structure are static).

    Attributes:
      layers: ``{path: LayerQuant}`` (:meth:`layer_order` gives the execution order).
      activations: ``{name: ActivationQuant}`` for ``"<path>.input"`` of every layer and ``"<path>.output"`` of the
        output layers (those whose result the model returns without another layer in between).
      network: the model's :class:`quantref.nn.Trace` (what integer inference and export run).
      weight_format: the weights' grid (narrow, signed).
      activation_format: the activations' grid (int8 or uint8, or fewer bits).
    """

    layers: dict[str, LayerQuant]
    activations: dict[str, ActivationQuant]
    network: nn.Trace = dataclasses.field(metadata={"static": True})
    weight_format: formats.IntFormat = dataclasses.field(metadata={"static": True})
    activation_format: formats.IntFormat = dataclasses.field(metadata={"static": True})

    def output_activation(self, path: str) -> ActivationQuant:
        """The grid a layer's output is requantized to, in a chain of layers: the next layer's input grid (ReLU,
        max-pool and flatten keep it), or the layer's own output grid if it is an output layer."""
        return self.activations[self.output_name(path)]

    def output_name(self, path: str) -> str:
        """The name of the grid :meth:`output_activation` returns (``"<next>.input"`` or ``"<path>.output"``)."""
        if f"{path}.output" in self.activations:
            return f"{path}.output"
        paths = self.layer_order()
        index = paths.index(path)
        if index + 1 >= len(paths):
            raise ValueError(f"layer {path!r} has no output grid")
        return f"{paths[index + 1]}.input"

    def layer_order(self) -> list[str]:
        """The quantized layers' paths in execution order (``layers`` itself is sorted by key once it has passed
        through a JAX transformation)."""
        return [path for path in self.network.layer_steps() if path in self.layers]


class FakeQuant(nnx.Module):
    """A static fake quantizer: $\\hat x = s\\,(\\operatorname{clamp}(\\mathrm{rne}(x/s) + z, q_{min}, q_{max}) - z)$.

    Attributes:
      scale: float32, scalar or per channel along ``axis``.
      zero_point: int32, same shape as ``scale``.
      fmt: the integer grid (static).
      axis: the channel axis for per-channel parameters, else ``None`` (static).
    """

    def __init__(self, scale: jax.Array, zero_point: jax.Array, fmt: formats.IntFormat, axis: int | None = None):
        self.scale = nnx.Variable(jnp.asarray(scale, jnp.float32))
        self.zero_point = nnx.Variable(jnp.asarray(zero_point, jnp.int32))
        self.fmt = fmt
        self.axis = axis

    def __call__(self, x: jax.Array) -> jax.Array:
        return affine.fake_quant(x, self.scale[...], self.zero_point[...], self.fmt, axis=self.axis)


def _check_bits(bits: int, name: str) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 2 <= bits <= 8:
        raise ValueError(f"{name} must be an int in 2..8, got {bits!r}")
    return int(bits)


def weight_format(bits: int) -> formats.IntFormat:
    """The symmetric narrow weight grid $[-(2^{b-1}-1),\\ 2^{b-1}-1]$ (TFLite's weight spec: $[-127, 127]$ for 8 bits).

    Args:
      bits: 2..8.

    Returns:
      The format.

    Raises:
      ValueError: if ``bits`` is not an int in 2..8.
    """
    return formats.int_format(_check_bits(bits, "weight_bits"), signed=True, narrow_range=True)


def activation_format(bits: int, signed: bool) -> formats.IntFormat:
    """The activation grid: $[0, 2^b - 1]$ unsigned or $[-2^{b-1}, 2^{b-1}-1]$ signed.

    Args:
      bits: 2..8.
      signed: int grid if True, uint grid otherwise.

    Returns:
      The format.

    Raises:
      ValueError: if ``bits`` is not an int in 2..8.
    """
    return formats.int_format(_check_bits(bits, "activation_bits"), signed=bool(signed))


def _observer(observer: str | ranges.Observer, fmt: formats.IntFormat) -> ranges.Observer:
    if isinstance(observer, ranges.Observer):
        return observer
    if observer not in OBSERVER_NAMES:
        raise ValueError(f"observer must be a ranges.Observer or one of {OBSERVER_NAMES}, got {observer!r}")
    # The histogram-error observers choose a range *for* a grid; the others only look at the data.
    kwargs = {"fmt": fmt} if observer in ("mse", "entropy") else {}
    return ranges.observer_from_name(observer, **kwargs)


def _check_batch(x: Any, name: str, *, allow_empty: bool = False) -> np.ndarray:
    array = np.asarray(nn.check_input(x, name))
    if array.ndim < 2 or (len(array) == 0 and not allow_empty):
        raise ValueError(f"{name} must be a non-empty float array (N, ...), got {array.dtype}{array.shape}")
    return array.astype(np.float32)


def _check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _batches(x: np.ndarray, batch_size: int) -> list[jax.Array]:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return [jnp.asarray(x[start : start + batch_size]) for start in range(0, len(x), int(batch_size))]


def _layer_order(model: nnx.Module, network: nn.Trace, select: Any, skip: Any) -> list[str]:
    chosen = nn.find_layers(model, select, skip)
    order = [path for path in network.layer_steps() if path in chosen]
    if not order:
        raise ValueError("the model has no conv or dense layer to quantize (check select/skip)")
    return order


def _check_folded(network: nn.Trace) -> None:
    for step in network.steps:
        if step.kind == "batch_norm" and step.inputs and step.inputs[0] > 0:
            producer = network.steps[step.inputs[0] - 1]
            if producer.kind in ("conv", "dense"):
                raise ValueError(
                    f"BatchNorm {step.path!r} follows layer {producer.path!r}: fold it first with "
                    "quantref.nn.fold_batch_norm(model, x), as a deployed network does"
                )


def calibrate_activations(
    model: nnx.Module,
    calibration_x: np.ndarray,
    *,
    observer: str | ranges.Observer = "min_max",
    fmt: formats.IntFormat = formats.UINT8,
    batch_size: int = 50,
    select: str | Sequence[str] | None = None,
    skip: str | Sequence[str] | None = None,
) -> dict[str, tuple[jax.Array, jax.Array]]:
    """Estimates the range of each selected layer's input, and of each output layer's output, on float activations.

    Args:
      model: the float model (BatchNorms folded).
      calibration_x: float32 inputs ``(N, ...)``; use the calibration split only.
      observer: an observer name from :data:`OBSERVER_NAMES` (``mse`` and ``entropy`` are built for ``fmt``), or
        a :class:`quantref.ranges.Observer` (per tensor, ``axis=None``).
      fmt: the activation grid, for the observers that need it.
      batch_size: inputs per calibration batch.
      select: path patterns of the layers to quantize (:func:`quantref.nn.find_layers`).
      skip: path patterns of layers to leave in float.

    Returns:
      ``{name: (min_val, max_val)}`` for ``"<path>.input"`` of every selected layer and ``"<path>.output"`` of the
      selected output layers.

    Raises:
      ValueError: for an unknown observer name, an empty or non-float ``calibration_x`` or a ``batch_size`` below 1.
    """
    calibration_x = _check_batch(calibration_x, "calibration_x")
    batches = _batches(calibration_x, batch_size)
    obs = _observer(observer, fmt)
    network = nn.trace(model, batches[0])
    order = _layer_order(model, network, select, skip)
    names = [f"{path}.input" for path in order] + [
        f"{path}.output" for path in network.output_layers() if path in order
    ]
    recorded = [nn.capture_jit(model, batch, select=select, skip=skip)[1] for batch in batches]
    stored = {name: _stored_tensor(network, name) for name in names}
    return {
        name: ranges.calibrate(obs, [stored[name](activations) for activations in recorded], progress=False)
        for name in names
    }


def _stored_tensor(network: nn.Trace, name: str):
    """Where a layer input's range is observed: on the tensor an integer network stores.

    Between two layers, ReLU, max-pool and flatten keep the grid, so the stored tensor is the previous layer's
    requantized output *before* any max-pool — the tensor onnxruntime's calibrator observes too (MaxPool reuses its
    input's parameters). Anywhere else the range is observed on the layer's input itself.
    """
    path, end = name.rsplit(".", 1)
    captured = lambda activations: activations[name]  # noqa: E731
    if end != "input":
        return captured
    index = next(i for i, step in enumerate(network.steps) if step.path == path and step.kind in ("conv", "dense"))
    between: list[nn.Step] = []
    value = network.steps[index].inputs[0] if network.steps[index].inputs else 0
    while value > 0 and network.steps[value - 1].kind in ("relu", "max_pool", "flatten"):
        between.insert(0, network.steps[value - 1])
        value = network.steps[value - 1].inputs[0]
    producer = network.steps[value - 1] if value > 0 else None
    if producer is None or producer.kind not in ("conv", "dense") or all(s.kind != "max_pool" for s in between):
        return captured
    before_pool = [step for step in between[: [s.kind for s in between].index("max_pool")]]
    relu = any(step.kind == "relu" for step in before_pool)

    def stored(activations: dict[str, jax.Array]) -> jax.Array:
        output = activations[f"{producer.path}.output"]
        return jnp.maximum(output, 0) if relu else output

    return stored


def _quantize_kernel(kernel: jax.Array, fmt: formats.IntFormat, per_channel: bool) -> tuple[jax.Array, jax.Array]:
    magnitude = jnp.abs(kernel)
    absmax = magnitude.reshape(-1, kernel.shape[-1]).max(axis=0) if per_channel else magnitude.max()
    scale, _ = affine.scale_zero_point(-absmax, absmax, fmt, symmetric=True)
    codes = affine.quantize(kernel, scale, None, fmt, axis=-1 if per_channel else None)
    return codes.astype(jnp.int8), scale


def quantize_model(
    model: nnx.Module,
    calibration_x: np.ndarray,
    *,
    weight_bits: int = 8,
    activation_bits: int = 8,
    per_channel: bool = True,
    observer: str | ranges.Observer = "min_max",
    activation_signed: bool = False,
    activation_ranges: dict[str, tuple[jax.Array, jax.Array]] | None = None,
    select: str | Sequence[str] | None = None,
    skip: str | Sequence[str] | None = None,
) -> QuantizedModel:
    """Quantizes a model's conv and dense layers: symmetric narrow-range weights, asymmetric activations, int32 biases.

    $$
    s_{w,c} = \\frac{\\max |W_c|}{2^{b_w-1}-1}, \\qquad
    (s_a, z_a) = \\text{scale\\_zero\\_point}(\\text{observer range}), \\qquad
    b_{q,c} = \\operatorname{rne}\\!\\Big(\\frac{b_c}{f_{32}(s_{in}\\, s_{w,c})}\\Big)
    $$

    where $s_{in}$ is the scale of the layer's input activation.

    References:
      Jacob et al., arXiv:1712.05877, 2017, sec. 2.4.
      Nagel et al., arXiv:2106.08295, 2021, sec. 4.1.

    Args:
      model: the float NNX model, BatchNorms folded (:func:`quantref.nn.fold_batch_norm`).
      calibration_x: calibration inputs ``(N, ...)``.
      weight_bits: weight bits, 2..8.
      activation_bits: activation bits, 2..8.
      per_channel: one weight scale per output channel if True, else one per tensor.
      observer: the calibration method, see :func:`calibrate_activations`.
      activation_signed: int activations if True, uint (the onnxruntime default, u8s8) if False.
      activation_ranges: ranges already computed by :func:`calibrate_activations` for this ``observer``, activation
        format and selection (skips calibration); ``None`` calibrates.
      select: path patterns of the layers to quantize (:func:`quantref.nn.find_layers`); ``None`` quantizes all.
      skip: path patterns of layers to leave in float.

    Returns:
      The :class:`QuantizedModel`.

    Raises:
      ValueError: naming the parameter, for bit widths outside 2..8, an unknown observer, bad ``calibration_x``,
        ``activation_ranges`` missing a name, or a BatchNorm left unfolded after a layer.
      TypeError: if ``model`` is not an NNX module.
    """
    w_fmt = weight_format(weight_bits)
    a_fmt = activation_format(activation_bits, _check_bool(activation_signed, "activation_signed"))
    per_channel = _check_bool(per_channel, "per_channel")
    calibration_x = _check_batch(calibration_x, "calibration_x")
    try:
        network = nn.trace(model, calibration_x[:1])
    except ValueError as error:
        raise ValueError(f"calibration_x does not fit the model: {error}") from None
    _check_folded(network)
    order = _layer_order(model, network, select, skip)
    if activation_ranges is None:
        activation_ranges = calibrate_activations(
            model, calibration_x, observer=observer, fmt=a_fmt, select=select, skip=skip
        )
    if not isinstance(activation_ranges, dict):
        raise TypeError(f"activation_ranges must be a dict from calibrate_activations, got {type(activation_ranges)}")
    needed = [f"{path}.input" for path in order] + [f"{p}.output" for p in network.output_layers() if p in order]
    missing = [name for name in needed if name not in activation_ranges]
    if missing:
        raise ValueError(f"activation_ranges lacks {missing}; it must hold {needed}")
    activations = {}
    for name in needed:
        try:
            min_val, max_val = activation_ranges[name]
            scale, zero_point = affine.scale_zero_point(min_val, max_val, a_fmt)
        except (TypeError, ValueError) as error:
            raise ValueError(f"activation_ranges[{name!r}] must be a (min_val, max_val) pair: {error}") from None
        activations[name] = ActivationQuant(scale.astype(jnp.float32), zero_point.astype(jnp.int32))
    layers = {}
    for path in order:
        layer = nn.get_module(model, path)
        layer = layer.layer if isinstance(layer, nn.QuantLayer) else layer
        codes, scale = _quantize_kernel(layer.kernel[...], w_fmt, per_channel)
        input_scale = activations[f"{path}.input"].scale
        bias_scale = np.float32(input_scale) * np.asarray(scale, np.float32)  # f32(s_in * s_w)
        bias = layer.bias[...] if layer.bias is not None else jnp.zeros(codes.shape[-1], jnp.float32)
        layers[path] = LayerQuant(codes, scale, quantize_bias(bias, bias_scale))
    return QuantizedModel(layers, activations, network, w_fmt, a_fmt)


def fake_quant_model(model: nnx.Module, qmodel: QuantizedModel) -> nnx.Module:
    """A copy of the float model that computes with ``qmodel``'s own integers: its simulation in float ("fake quant").

    Each quantized layer's kernel becomes its dequantized codes $s_w W_q$ and its bias $f_{32}(s_{in} s_w)\\,b_q$ —
    the quantized model's values, whatever chose them (round-to-nearest, AdaRound, GPTQ, a correction) — and the
    layer is wrapped in a :class:`quantref.nn.QuantLayer` that fake-quantizes its input on its activation grid (and
    its output, for output layers). The result computes in float32 what the integer network computes with
    integers, up to float rounding in the accumulation and the rescale (see :mod:`quantref.integer`). Any model
    works, including those that integer inference refuses (residual adds, average pooling): what is not a layer
    stays float.

    References:
      Jacob et al., arXiv:1712.05877, 2017, sec. 3.

    Args:
      model: the float model that ``qmodel`` was quantized from.
      qmodel: its :class:`QuantizedModel`.

    Returns:
      The fake-quant model; call it as the original.

    Raises:
      TypeError: if ``qmodel`` is not a :class:`QuantizedModel`.
    """
    if not isinstance(qmodel, QuantizedModel):
        raise TypeError(f"qmodel must be a QuantizedModel from quantize_model, got {type(qmodel).__name__}")
    a_fmt = qmodel.activation_format

    def activation(name: str) -> FakeQuant | None:
        quant = qmodel.activations.get(name)
        return None if quant is None else FakeQuant(quant.scale, quant.zero_point, a_fmt)

    def wrap(path: str, layer: nnx.Module) -> nn.QuantLayer | None:
        if path not in qmodel.layers:
            return None
        quant = qmodel.layers[path]
        inner = layer.layer if isinstance(layer, nn.QuantLayer) else layer
        scale = np.asarray(quant.kernel_scale, np.float32)
        inner.kernel[...] = jnp.asarray(np.asarray(quant.kernel, np.float32) * scale, inner.kernel[...].dtype)
        bias = np.asarray(quant.bias, np.float32) * _bias_scale(qmodel, path, scale)
        if inner.bias is None:
            inner.bias, inner.use_bias = nnx.Param(jnp.asarray(bias)), True
        else:
            inner.bias[...] = jnp.asarray(bias, inner.bias[...].dtype)
        # The kernel is on its grid already, so the weight quantizer returns it unchanged; it is there so that the
        # layer says what its grid is (from_fake_quant reads the integers back through it).
        axis = None if quant.kernel_scale.ndim == 0 else inner.kernel.ndim - 1
        zero = jnp.zeros_like(quant.kernel_scale, jnp.int32)
        return nn.QuantLayer(
            inner,
            weight_quantizer=FakeQuant(quant.kernel_scale, zero, qmodel.weight_format, axis),
            input_quantizer=activation(f"{path}.input"),
            output_quantizer=activation(f"{path}.output"),
        )

    return nn.swap_layers(model, wrap)


def with_weights(
    model: nnx.Module,
    qmodel: QuantizedModel,
    *,
    kernels: dict[str, tuple[jax.Array, jax.Array]] | None = None,
    biases: dict[str, jax.Array] | None = None,
) -> QuantizedModel:
    """``qmodel`` with some integer kernels replaced and every bias requantized on its grid (:func:`quantize_bias`).

    This is how an algorithm that chooses integer weights (AdaRound, GPTQ, MSE scales) or corrects biases hands its
    result back as a :class:`QuantizedModel` that :func:`fake_quant_model`, integer inference and export take.

    Args:
      model: the float model that ``qmodel`` quantizes (its biases are used where ``biases`` has none).
      qmodel: the quantized model (its activation grids are kept).
      kernels: ``{path: (codes, scale)}``: codes in the kernel's layout (or any array of its size, e.g. the
        ``(in, out)`` matrix of a convolution), scale ``()`` or ``(out,)``.
      biases: ``{path: float bias (out,)}`` in place of the model's.

    Returns:
      The new :class:`QuantizedModel`.

    Raises:
      ValueError: for a path that ``qmodel`` does not quantize, or codes or a scale of the wrong shape.
    """
    kernels, biases = dict(kernels or {}), dict(biases or {})
    unknown = sorted((set(kernels) | set(biases)) - set(qmodel.layers))
    if unknown:
        raise ValueError(f"kernels and biases name layers that qmodel does not quantize: {unknown}")
    layers = {}
    for path, quant in qmodel.layers.items():
        layer = nn.get_module(model, path)
        layer = layer.layer if isinstance(layer, nn.QuantLayer) else layer
        codes, scale = kernels.get(path, (quant.kernel, quant.kernel_scale))
        if np.size(codes) != np.prod(layer.kernel.shape):
            raise ValueError(
                f"the codes of {path} must have {np.prod(layer.kernel.shape)} entries, got {np.shape(codes)}"
            )
        codes, scale = jnp.asarray(codes).reshape(layer.kernel.shape).astype(jnp.int8), jnp.asarray(scale, jnp.float32)
        if scale.shape not in ((), (codes.shape[-1],)):
            raise ValueError(f"the scale of {path} must be () or ({codes.shape[-1]},), got {scale.shape}")
        bias = biases.get(path, layer.bias[...] if layer.bias is not None else jnp.zeros(codes.shape[-1]))
        bias_scale = np.broadcast_to(_bias_scale(qmodel, path, scale), (codes.shape[-1],))
        layers[path] = LayerQuant(codes, scale, quantize_bias(bias, bias_scale))
    return dataclasses.replace(qmodel, layers=layers)


def quantize_bias(bias: jax.Array | np.ndarray, scale: np.ndarray) -> jax.Array:
    """A bias on its int32 grid: $b_q = \\operatorname{clamp}(\\operatorname{rne}(b / s_{bias}), \\pm(2^{31}-1))$.

    Args:
      bias: float biases ``(out,)``.
      scale: $s_{bias} = f_{32}(s_{in} s_w)$, ``()`` or ``(out,)``.

    Returns:
      int32 codes ``(out,)``.
    """
    codes = np.round(np.asarray(bias, np.float32) / np.asarray(scale, np.float32))
    # Clip in float64: in float32, 2**31 - 1 rounds up to 2**31, which the int32 cast would wrap to -2**31 (a dead
    # channel, all-zero weights with a bias, has a tiny bias scale and hits this).
    return jnp.asarray(np.clip(codes.astype(np.float64), -INT32_MAX, INT32_MAX).astype(np.int32))


def _bias_scale(qmodel: QuantizedModel, path: str, kernel_scale: np.ndarray) -> np.ndarray:
    """$f_{32}(s_{in} s_w)$, the scale of a layer's bias and accumulator."""
    return np.float32(qmodel.activations[f"{path}.input"].scale) * np.asarray(kernel_scale, np.float32)


def from_fake_quant(model: nnx.Module, x: jax.Array | np.ndarray) -> QuantizedModel:
    """Reads the integer model back out of a model whose layers are fake-quant :class:`quantref.nn.QuantLayer` s.

    The inverse of :func:`fake_quant_model`, and how a model trained with quantization in the loop (QAT) becomes the
    :class:`QuantizedModel` that integer inference and export take. Each quantizer is read through its attributes
    ``scale``, ``zero_point`` (NNX variables or arrays) and ``fmt`` — :class:`FakeQuant` has them, and so may a
    learned quantizer:

    $$
    W_q = \\operatorname{clamp}(\\operatorname{rne}(W / s_w), q_{min}, q_{max}), \\qquad
    b_q = \\operatorname{rne}\\big(b / f_{32}(s_{in} s_w)\\big)
    $$

    (a pruning mask is applied to $W$ first).

    Args:
      model: the model with QuantLayers (weight and input quantizers on every layer to export; output quantizers on
        the output layers).
      x: an example input batch (for the model's structure).

    Returns:
      The :class:`QuantizedModel`.

    Raises:
      ValueError: if a layer lacks a weight or input quantizer, the weight quantizer has a non-zero zero point, or
        the quantizers' formats disagree between layers.
    """
    network = nn.trace(model, x)
    layers, activations, weight_formats, activation_formats = {}, {}, set(), set()
    outputs = network.output_layers()
    for path in network.layer_steps():
        layer = nn.get_module(model, path)
        if not isinstance(layer, nn.QuantLayer) or layer.weight_quantizer is None or layer.input_quantizer is None:
            raise ValueError(f"layer {path!r} must be a QuantLayer with weight and input quantizers")
        w_scale, w_zero, w_fmt = _quantizer_parameters(layer.weight_quantizer, f"{path}.weight_quantizer")
        if np.any(np.asarray(w_zero) != 0):
            raise ValueError(f"{path}.weight_quantizer must be symmetric (zero point 0)")
        kernel = layer.layer.kernel[...]
        if layer.mask is not None:
            kernel = kernel * layer.mask[...]
        codes = affine.quantize(kernel, w_scale, None, w_fmt, axis=None if w_scale.ndim == 0 else -1)
        in_scale, in_zero, a_fmt = _quantizer_parameters(layer.input_quantizer, f"{path}.input_quantizer")
        activations[f"{path}.input"] = ActivationQuant(in_scale, in_zero)
        if path in outputs and layer.output_quantizer is not None:
            out_scale, out_zero, _ = _quantizer_parameters(layer.output_quantizer, f"{path}.output_quantizer")
            activations[f"{path}.output"] = ActivationQuant(out_scale, out_zero)
        bias = layer.layer.bias[...] if layer.layer.bias is not None else jnp.zeros(codes.shape[-1], jnp.float32)
        bias_scale = np.float32(in_scale) * np.asarray(w_scale, np.float32)
        layers[path] = LayerQuant(codes.astype(jnp.int8), w_scale, quantize_bias(bias, bias_scale))
        weight_formats.add(w_fmt)
        activation_formats.add(a_fmt)
    if len(weight_formats) != 1 or len(activation_formats) != 1:
        raise ValueError(
            f"every layer must use one weight format and one activation format, got {weight_formats} and "
            f"{activation_formats}"
        )
    return QuantizedModel(layers, activations, network, weight_formats.pop(), activation_formats.pop())


def _quantizer_parameters(quantizer: Any, name: str) -> tuple[jax.Array, jax.Array, formats.IntFormat]:
    try:
        scale, zero_point, fmt = quantizer.scale, quantizer.zero_point, quantizer.fmt
    except AttributeError:
        raise ValueError(f"{name} must have scale, zero_point and fmt attributes to be read out") from None
    scale = jnp.asarray(scale[...] if isinstance(scale, nnx.Variable) else scale, jnp.float32)
    zero_point = jnp.asarray(zero_point[...] if isinstance(zero_point, nnx.Variable) else zero_point, jnp.int32)
    return scale, zero_point, fmt


def fake_quant_forward(
    model: nnx.Module, qmodel: QuantizedModel, x: jax.Array | np.ndarray
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Runs :func:`fake_quant_model` on ``x`` and records every layer's input and output.

    Compiled once per model structure and activation grid (:func:`quantref.nn.capture_jit`), so one compilation
    serves every weight grid and every correction of a model.

    Args:
      model: the float model.
      qmodel: its quantization.
      x: a batch of inputs.

    Returns:
      ``(output, activations)`` as :func:`quantref.nn.capture`: ``"<path>.input"`` holds the fake-quantized input,
      ``"<path>.output"`` the layer's output (fake-quantized for output layers).
    """
    x = _check_batch(x, "x", allow_empty=True)
    simulated = fake_quant_model(model, qmodel)
    if len(x) == 0:  # an empty batch gives an empty result, shaped as one row would be
        one = nn.capture_jit(simulated, jnp.zeros((1, *x.shape[1:]), jnp.float32))
        return jax.tree.map(lambda leaf: leaf[:0], one)
    return nn.capture_jit(simulated, jnp.asarray(x))


def accuracy(logits: jax.Array | np.ndarray, labels: np.ndarray) -> float:
    """The fraction of rows of ``logits`` whose argmax is the label.

    Args:
      logits: ``(N, classes)``.
      labels: ``(N,)`` integer labels.

    Returns:
      Accuracy in [0, 1].

    Raises:
      ValueError: if there are no rows, or ``labels`` is not one integer per row.
    """
    logits, labels = np.asarray(logits), np.asarray(labels)
    if logits.ndim < 2 or len(logits) == 0:
        raise ValueError(f"logits must be a non-empty (N, classes) array, got shape {logits.shape}")
    if labels.shape != logits.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be {len(logits)} integer labels, got {labels.dtype}{labels.shape}")
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


def accuracy_table(
    model: nnx.Module,
    calibration_x: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    *,
    bit_widths: Sequence[tuple[int, int]] = ((8, 8), (4, 8), (8, 4)),
    observers: Sequence[str] = OBSERVER_NAMES,
    activation_signed: bool = False,
) -> list[dict[str, object]]:
    """Fake-quant test accuracy for every weight/activation bit width × weight granularity × calibration method.

    The first row is the float network. Activation ranges are calibrated once per (observer, activation bits).

    Args:
      model: the float model, BatchNorms folded.
      calibration_x: calibration inputs.
      test_x: test inputs.
      test_y: test labels.
      bit_widths: ``(weight_bits, activation_bits)`` pairs, e.g. ``(8, 8)`` for W8A8.
      observers: calibration methods, names from :data:`OBSERVER_NAMES`.
      activation_signed: int activations if True, uint otherwise.

    Returns:
      A list of rows ``{"config", "weights", "observer", "accuracy"}``, e.g.
      ``{"config": "W8A8", "weights": "per-channel", "observer": "min_max", "accuracy": 0.99}``; the float row has
      ``config="float32"``.
    """
    test_x = jnp.asarray(_check_batch(test_x, "test_x"))
    float_logits, _ = nn.capture_jit(model, test_x)
    rows: list[dict[str, object]] = [
        {"config": "float32", "weights": "-", "observer": "-", "accuracy": accuracy(float_logits, test_y)}
    ]
    calibrated: dict[tuple[str, int], dict] = {}
    for weight_bits, activation_bits in bit_widths:
        for per_channel in (True, False):
            for observer in observers:
                key = (observer, activation_bits)
                if key not in calibrated:
                    fmt = activation_format(activation_bits, activation_signed)
                    calibrated[key] = calibrate_activations(model, calibration_x, observer=observer, fmt=fmt)
                qmodel = quantize_model(
                    model,
                    calibration_x,
                    weight_bits=weight_bits,
                    activation_bits=activation_bits,
                    per_channel=per_channel,
                    activation_signed=activation_signed,
                    activation_ranges=calibrated[key],
                )
                logits, _ = fake_quant_forward(model, qmodel, test_x)
                rows.append(
                    {
                        "config": f"W{weight_bits}A{activation_bits}",
                        "weights": "per-channel" if per_channel else "per-tensor",
                        "observer": observer,
                        "accuracy": accuracy(logits, test_y),
                    }
                )
    return rows
