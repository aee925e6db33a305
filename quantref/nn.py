"""The model pipeline: one way to reach the layers of any Flax NNX model, for every algorithm in quantref.

Every quantization and compression method works layer by layer on the same few things — a layer's weight, its
input activations, its output — so this module gives one way to get at them, for any NNX model built from
``nnx.Conv`` and ``nnx.Linear`` layers:

- **Names.** A layer's name is its NNX module path joined with dots (``conv2``, ``blocks.0.mlp.up``). The tensor
  entering it is ``"<path>.input"`` and the tensor it returns is ``"<path>.output"`` (the layer's own output, before
  any BatchNorm or activation that follows it). Models, calibration, PTQ, integer inference, export and the
  chapters all use these names.
- **Finding layers**: :func:`find_layers` walks the module tree, filtered by path patterns (``fnmatch``).
- **Capturing inputs**: :func:`capture` runs a model and records each layer's input and output;
  :func:`input_statistics` accumulates what bias correction, AdaRound and GPTQ need (mean, per-channel range,
  $X^\\top X$) over calibration batches; :func:`input_rows` turns a layer's input into the matrix $X$ with
  $\\text{layer}(x) = X W + b$ (im2col for a convolution).
- **The network's structure**: :func:`trace` reads the sequence of operations from the model's jaxpr — each layer
  call, BatchNorm, ReLU, max-pool and flatten — which is how BatchNorm folding (:func:`fold_batch_norm`) finds its
  Conv→BatchNorm pairs without knowing their names, and how integer inference and export learn the network they run.
- **Fake-quant layers**: :class:`QuantLayer` wraps a layer with a weight quantizer, an input quantizer, an optional
  output quantizer and an optional pruning mask; :func:`swap_layers` puts such wrappers into a copy of a model.

Layers are swapped as plain modules (the PyTorch eager-mode style), not intercepted at the primitive level, so a
reader can follow what runs.

References:
  Nagel et al., "A White Paper on Neural Network Quantization", arXiv:2106.08295, 2021, sec. 2.3.1 (BN folding),
  3 and 4 (the PTQ and QAT pipelines).
  Jacob et al., "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference",
  arXiv:1712.05877, 2017, sec. 3.2.
"""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from quantref import _jaxpr

__all__ = [
    "LAYER_TYPES",
    "Step",
    "Trace",
    "InputStatistics",
    "Mask",
    "Identity",
    "QuantLayer",
    "find_layers",
    "capture",
    "capture_jit",
    "input_statistics",
    "input_rows",
    "trace",
    "fold_batch_norm",
    "map_kernels",
    "swap_layers",
    "get_module",
    "check_input",
]

#: The layer types that quantization touches: a ``kernel`` whose last axis is the output features.
LAYER_TYPES: tuple[type, ...] = (nnx.Linear, nnx.Conv)

Forward = Callable[[nnx.Module, jax.Array], Any]


def _call(model: nnx.Module, x: jax.Array) -> Any:
    return model(x)


# --- fake-quant layers -------------------------------------------------------------------------------------------


class Mask(nnx.Variable):
    """A pruning mask: 0/1 per weight, not a trainable parameter (optimizers that filter ``nnx.Param`` skip it)."""


class Identity(nnx.Module):
    """Returns its input; stands where a folded BatchNorm was (it accepts and ignores the BatchNorm's arguments)."""

    def __call__(self, x: jax.Array, *args: Any, **kwargs: Any) -> jax.Array:
        return x


class QuantLayer(nnx.Module):
    """A drop-in fake-quant wrapper around an ``nnx.Conv`` or ``nnx.Linear`` layer.

    $$
    y = Q_{out}\\big(\\text{layer}(Q_{in}(x);\\ Q_w(W \\odot M),\\ Q_b(b))\\big)
    $$

    where each $Q$ is a quantizer (any callable module: a static fake-quant for PTQ, a learned one for QAT) or the
    identity when unset, and $M$ is the optional pruning mask. The wrapped layer computes exactly as it would on its
    own (same padding, strides, dtypes), with the quantized kernel in place of its float one; gradients reach the
    float kernel through whatever estimator the weight quantizer defines.

    Attributes:
      layer: the float layer (its ``kernel`` stays float; the quantized one is computed at each call).
      weight_quantizer: maps the kernel to its fake-quantized values, or ``None``.
      input_quantizer: maps the input to its fake-quantized values, or ``None``.
      output_quantizer: maps the output to its fake-quantized values (set on the network's output layers), or
        ``None``.
      bias_quantizer: maps the bias to its fake-quantized values, or ``None``.
      mask: a :class:`Mask` shaped like the kernel, or ``None``.
    """

    def __init__(
        self,
        layer: nnx.Module,
        *,
        weight_quantizer: Callable[[jax.Array], jax.Array] | None = None,
        input_quantizer: Callable[[jax.Array], jax.Array] | None = None,
        output_quantizer: Callable[[jax.Array], jax.Array] | None = None,
        bias_quantizer: Callable[[jax.Array], jax.Array] | None = None,
        mask: jax.Array | None = None,
    ):
        """Wraps ``layer``.

        Args:
          layer: an ``nnx.Conv`` or ``nnx.Linear`` (or another layer with a ``kernel`` parameter).
          weight_quantizer: the weight quantizer, or ``None``.
          input_quantizer: the input quantizer, or ``None``.
          output_quantizer: the output quantizer, or ``None``.
          bias_quantizer: maps the bias to its fake-quantized values (PTQ's int32 bias grid), or ``None``.
          mask: 0/1 array shaped like ``layer.kernel``, or ``None``.

        Raises:
          TypeError: if ``layer`` has no ``kernel`` parameter.
          ValueError: if ``mask`` is not shaped like the kernel.
        """
        kernel = getattr(layer, "kernel", None)
        if not isinstance(kernel, nnx.Variable):
            raise TypeError(f"layer must have a kernel parameter (nnx.Conv, nnx.Linear), got {type(layer).__name__}")
        if mask is not None and np.shape(mask) != kernel.shape:
            raise ValueError(f"mask must have the kernel's shape {kernel.shape}, got {np.shape(mask)}")
        self.layer = layer
        self.weight_quantizer = weight_quantizer
        self.input_quantizer = input_quantizer
        self.output_quantizer = output_quantizer
        self.bias_quantizer = bias_quantizer
        self.mask = None if mask is None else Mask(jnp.asarray(mask, kernel[...].dtype))

    def effective_kernel(self) -> jax.Array:
        """The kernel the layer computes with: $Q_w(W \\odot M)$."""
        kernel = self.layer.kernel[...]
        if self.mask is not None:
            kernel = kernel * self.mask[...]
        if self.weight_quantizer is not None:
            kernel = self.weight_quantizer(kernel)
        return kernel

    def __call__(self, x: jax.Array, *args: Any, **kwargs: Any) -> jax.Array:
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        graphdef, state = nnx.split(self.layer)
        state["kernel"] = state["kernel"].replace(self.effective_kernel())
        if self.bias_quantizer is not None and self.layer.bias is not None:
            state["bias"] = state["bias"].replace(self.bias_quantizer(self.layer.bias[...]))
        y = nnx.merge(graphdef, state)(x, *args, **kwargs)
        if self.output_quantizer is not None:
            y = self.output_quantizer(y)
        return y


def _is_layer(module: object) -> bool:
    return isinstance(module, (QuantLayer, *LAYER_TYPES))


# --- finding layers ----------------------------------------------------------------------------------------------


def _patterns(value: str | Sequence[str] | None, name: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Sequence) and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise TypeError(f"{name} must be a path pattern or a sequence of them (str), got {value!r}")


def find_layers(
    model: nnx.Module, select: str | Sequence[str] | None = None, skip: str | Sequence[str] | None = None
) -> dict[str, nnx.Module]:
    """The quantizable layers of a model, by path.

    A layer is an ``nnx.Conv``, an ``nnx.Linear`` or a :class:`QuantLayer` already wrapping one (whose inner layer
    is not listed again). Paths are NNX module paths joined with dots; ``select`` and ``skip`` are shell-style
    patterns (``fnmatch``: ``"blocks.*.attn.*"``) matched against them.

    Args:
      model: any NNX module.
      select: keep only layers matching one of these patterns; ``None`` keeps all.
      skip: drop layers matching one of these patterns.

    Returns:
      ``{path: layer}`` in module-tree order (the order of a model's calls is :func:`trace`'s business).

    Raises:
      TypeError: if ``model`` is not an ``nnx.Module`` or a pattern is not a string.
    """
    if not isinstance(model, nnx.Module):
        raise TypeError(f"model must be a flax.nnx.Module, got {type(model).__name__}")
    selected, skipped = _patterns(select, "select"), _patterns(skip, "skip")
    found = {
        ".".join(str(part) for part in key): module
        for key, module in nnx.iter_modules(model)
        if key and _is_layer(module)  # the model itself is the container, not one of its layers
    }
    layers: dict[str, nnx.Module] = {}
    for path, module in found.items():
        if any(path.startswith(f"{outer}.") for outer in found):
            continue  # the layer inside a QuantLayer
        if selected is not None and not any(fnmatch.fnmatchcase(path, pattern) for pattern in selected):
            continue
        if skipped is not None and any(fnmatch.fnmatchcase(path, pattern) for pattern in skipped):
            continue
        layers[path] = module
    return dict(sorted(layers.items(), key=lambda item: _path_key(item[0])))


def _path_key(path: str) -> tuple:
    # "blocks.10" after "blocks.2": compare numeric parts as numbers.
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in path.split("."))


def _split_path(path: str) -> list[str | int]:
    return [int(part) if part.isdigit() else part for part in path.split(".")] if path else []


def get_module(model: nnx.Module, path: str) -> nnx.Module:
    """The submodule at a dotted path (``""`` is the model itself).

    Raises:
      ValueError: if there is no module at ``path``.
    """
    module: Any = model
    for part in _split_path(path):
        try:
            module = module[part] if isinstance(part, int) else getattr(module, part)
        except (AttributeError, IndexError, KeyError, TypeError):
            raise ValueError(f"path {path!r} names no submodule of {type(model).__name__}") from None
    return module


def _set_module(model: nnx.Module, path: str, module: nnx.Module) -> None:
    *parents, last = _split_path(path)
    parent = get_module(model, ".".join(str(part) for part in parents))
    if isinstance(last, int):
        parent[last] = module
    else:
        setattr(parent, last, module)


@contextmanager
def _swapped(model: nnx.Module, replacements: Mapping[str, nnx.Module]) -> Iterator[None]:
    """Temporarily puts ``replacements`` at their paths in ``model`` (restored on exit, even on error)."""
    originals = {path: get_module(model, path) for path in replacements}
    try:
        for path, module in replacements.items():
            _set_module(model, path, module)
        yield
    finally:
        for path, module in originals.items():
            _set_module(model, path, module)


def swap_layers(model: nnx.Module, wrap: Callable[[str, nnx.Module], nnx.Module | None]) -> nnx.Module:
    """A copy of ``model`` with each layer replaced by ``wrap(path, layer)`` (``None`` keeps the layer).

    This is how fake-quant layers (:class:`QuantLayer`), QAT quantizers and pruning masks go into a model; the
    original model is left unchanged.

    Args:
      model: any NNX module.
      wrap: called with each layer of :func:`find_layers` (of the copy).

    Returns:
      The new model.
    """
    clone = nnx.clone(model)
    for path, layer in find_layers(clone).items():
        new = wrap(path, layer)
        if new is not None:
            _set_module(clone, path, new)
    return clone


def map_kernels(model: nnx.Module, kernel_fn: Callable[[str, jax.Array], jax.Array]) -> nnx.Module:
    """A copy of the model with every layer's kernel replaced by ``kernel_fn(path, kernel)``.

    Biases, BatchNorm statistics and everything else are copied as they are; the original is unchanged. This is how
    chapters put fake-quantized weights into a model.

    Args:
      model: any NNX module.
      kernel_fn: maps a layer path and its float kernel to the new kernel (same shape).

    Returns:
      The new model.

    Raises:
      ValueError: if ``kernel_fn`` returns an array of another shape.
    """
    clone = nnx.clone(model)
    for path, layer in find_layers(clone).items():
        inner = layer.layer if isinstance(layer, QuantLayer) else layer
        kernel = inner.kernel[...]
        new = jnp.asarray(kernel_fn(path, kernel), kernel.dtype)
        if new.shape != kernel.shape:
            raise ValueError(f"kernel_fn returned shape {new.shape} for {path}, whose kernel is {kernel.shape}")
        inner.kernel[...] = new
    return clone


def check_input(x: Any, name: str) -> jax.Array:
    """A model input as a float array, checked before any tracing.

    Raises:
      TypeError: for ``None``, strings, objects, or non-float (integer, boolean, complex) arrays.
      ValueError: for an array without a batch axis.
    """
    if x is None or isinstance(x, (str, bytes)):
        raise TypeError(f"{name} must be a float array of inputs (N, ...), got {type(x).__name__}")
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        try:
            x = np.asarray(x)
        except (TypeError, ValueError) as error:
            raise TypeError(f"{name} must be a float array of inputs (N, ...): {error}") from None
        dtype = x.dtype
    if not np.issubdtype(dtype, np.floating):
        raise TypeError(f"{name} must be a float array of inputs (N, ...), got dtype {dtype}")
    if np.ndim(x) < 1:
        raise ValueError(f"{name} must have a batch axis, got a scalar")
    return jnp.asarray(x)


def _run(forward: Callable, model: nnx.Module, x: jax.Array) -> Any:
    """Calls ``forward(model, x)``, turning a shape error deep in JAX into one that names ``x``."""
    try:
        return forward(model, x)
    except (TypeError, ValueError) as error:
        if isinstance(error, (TypeError, ValueError)) and str(error).startswith(("x ", "model ")):
            raise
        raise ValueError(
            f"x of shape {tuple(x.shape)} cannot go through {type(model).__name__}: {str(error).splitlines()[0]}"
        ) from error


# --- capturing inputs --------------------------------------------------------------------------------------------


class _Tap(nnx.Module):
    """Records a layer's input and output in a Python dict while it runs (eagerly or under tracing)."""

    def __init__(self, layer: nnx.Module, path: str, record: dict, input_fn: Callable | None):
        self.layer = layer
        self.path = path
        self.record = nnx.data(record) if hasattr(nnx, "data") else record
        self.input_fn = input_fn

    def __call__(self, x: jax.Array, *args: Any, **kwargs: Any) -> jax.Array:
        name = f"{self.path}.input"
        if self.input_fn is not None:
            x = self.input_fn(name, x)
        # For a fake-quant layer, the tensor the layer computes with is its quantized input.
        quantizer = getattr(self.layer, "input_quantizer", None) if isinstance(self.layer, QuantLayer) else None
        self.record[name] = quantizer(x) if quantizer is not None else x
        y = self.record[f"{self.path}.output"] = self.layer(x, *args, **kwargs)
        return y


def capture(
    model: nnx.Module,
    x: jax.Array | np.ndarray,
    *,
    select: str | Sequence[str] | None = None,
    skip: str | Sequence[str] | None = None,
    input_fn: Callable[[str, jax.Array], jax.Array] | None = None,
    forward: Forward = _call,
) -> tuple[Any, dict[str, jax.Array]]:
    """Runs the model on ``x`` and records every selected layer's input and output.

    Args:
      model: any NNX module (it is restored as it was afterwards).
      x: the model's input batch.
      select: path patterns of the layers to record (see :func:`find_layers`).
      skip: path patterns of layers not to record.
      input_fn: if given, ``input_fn("<path>.input", value)`` replaces each selected layer's input before the layer
        consumes it — the hook where a chapter fake-quantizes activations. The recorded input is the replaced one.
      forward: how to call the model, ``forward(model, x)``; the default is ``model(x)`` (eval mode for the
        walkthrough models).

    Returns:
      ``(output, activations)``: the model's output and ``{"<path>.input": array, "<path>.output": array}`` in the
      order the layers ran (for a :class:`QuantLayer`, the input after its input quantizer). A layer called twice
      keeps its last call.
    """
    x = check_input(x, "x")
    record: dict[str, jax.Array] = {}
    taps = {path: _Tap(layer, path, record, input_fn) for path, layer in find_layers(model, select, skip).items()}
    with _swapped(model, taps):
        output = _run(forward, model, x)
    return output, dict(record)


def capture_jit(
    model: nnx.Module,
    x: jax.Array | np.ndarray,
    *,
    select: str | Sequence[str] | None = None,
    skip: str | Sequence[str] | None = None,
) -> tuple[Any, dict[str, jax.Array]]:
    """:func:`capture`, jit-compiled once per model structure (the NNX graph definition) and layer selection.

    The model's weights are arguments of the compiled function, so a model with other weights — corrected, pruned,
    quantized differently — of the same structure reuses the compilation.

    Args:
      model: any NNX module called as ``model(x)``.
      x: the model's input batch.
      select: path patterns of the layers to record (see :func:`find_layers`).
      skip: path patterns of layers not to record.

    Returns:
      ``(output, activations)`` as :func:`capture`.
    """
    x = check_input(x, "x")
    find_layers(model, select, skip)  # checks the arguments before tracing
    graphdef, state = nnx.split(model)
    return _capture_compiled(graphdef, _patterns(select, "select"), _patterns(skip, "skip"), state, x)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _capture_compiled(graphdef, select, skip, state, x):
    return capture(nnx.merge(graphdef, state), x, select=select, skip=skip)


class InputStatistics(NamedTuple):
    """Statistics of a layer's input rows $X$ (one row per output position, :func:`input_rows`) over calibration data.

    Attributes:
      count: number of rows.
      mean: ``(features,)``, $\\mathbb E[x]$.
      min: ``(features,)`` per-feature minimum.
      max: ``(features,)`` per-feature maximum.
      gram: ``(features, features)``, $X^\\top X$ summed over all rows (float32), or ``None`` if not requested.
    """

    count: int
    mean: jax.Array
    min: jax.Array
    max: jax.Array
    gram: jax.Array | None


def input_rows(layer: nnx.Module, x: jax.Array) -> jax.Array:
    """The matrix $X$ of a layer's input such that $\\text{layer}(x) = X\\,W + b$, with $W$ the kernel as a matrix.

    For ``nnx.Linear``, the input with its leading axes flattened. For ``nnx.Conv``, the receptive-field patches
    (im2col) with the layer's strides, padding and dilations, each row in the kernel's HWI order, so that
    ``kernel.reshape(-1, out)`` is $W$. Grouped convolutions are not supported.

    Args:
      layer: an ``nnx.Linear`` or ``nnx.Conv`` (or a :class:`QuantLayer` wrapping one).
      x: the layer's input.

    Returns:
      ``(rows, features)`` float array.

    Raises:
      ValueError: for a grouped or non-2D convolution, or another layer type.
    """
    if isinstance(layer, QuantLayer):
        layer = layer.layer
    if isinstance(layer, nnx.Linear):
        return x.reshape(-1, x.shape[-1])
    if not isinstance(layer, nnx.Conv):
        raise ValueError(f"layer must be an nnx.Linear or nnx.Conv, got {type(layer).__name__}")
    geometry = conv_geometry(layer, x.shape)
    if geometry.groups != 1 or len(geometry.strides) != 2:
        raise ValueError("input_rows supports 2D convolutions without groups")
    height, width = layer.kernel.shape[:2]
    patches = lax.conv_general_dilated_patches(
        x,
        (height, width),
        geometry.strides,
        geometry.padding,
        rhs_dilation=geometry.dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    channels = x.shape[-1]
    # conv_general_dilated_patches orders each patch (channel, row, column); the kernel is (row, column, channel).
    patches = patches.reshape(*patches.shape[:-1], channels, height, width)
    patches = jnp.moveaxis(patches, -3, -1)
    return patches.reshape(-1, height * width * channels)


def input_statistics(
    model: nnx.Module,
    batches: Sequence[jax.Array | np.ndarray],
    *,
    select: str | Sequence[str] | None = None,
    skip: str | Sequence[str] | None = None,
    gram: bool = False,
    forward: Forward = _call,
) -> dict[str, InputStatistics]:
    """Accumulates each selected layer's input statistics over calibration batches, without keeping the inputs.

    $$
    \\mathbb E[x] = \\frac1R \\sum_r X_{r,:}, \\qquad X^\\top X = \\sum_r X_{r,:}^\\top X_{r,:}
    $$

    over the rows $X_{r,:}$ of :func:`input_rows` (so for a convolution, the statistics of its receptive fields).

    Args:
      model: any NNX module.
      batches: input batches.
      select: path patterns of the layers (see :func:`find_layers`).
      skip: path patterns to leave out.
      gram: also accumulate $X^\\top X$ (features² floats per layer).
      forward: how to call the model, as in :func:`capture`.

    Returns:
      ``{path: InputStatistics}``.

    Raises:
      ValueError: if ``batches`` is empty.
    """
    if len(batches) == 0:
        raise ValueError("batches must hold at least one batch")
    layers = find_layers(model, select, skip)
    totals: dict[str, dict[str, Any]] = {}
    for batch in batches:
        if forward is _call:
            _, activations = capture_jit(model, batch, select=select, skip=skip)
        else:
            _, activations = capture(model, batch, select=select, skip=skip, forward=forward)
        for path, layer in layers.items():
            rows = input_rows(layer, activations[f"{path}.input"]).astype(jnp.float32)
            entry = totals.setdefault(path, {"count": 0, "sum": 0.0, "min": None, "max": None, "gram": 0.0})
            entry["count"] += rows.shape[0]
            entry["sum"] = entry["sum"] + rows.sum(axis=0)
            low, high = rows.min(axis=0), rows.max(axis=0)
            entry["min"] = low if entry["min"] is None else jnp.minimum(entry["min"], low)
            entry["max"] = high if entry["max"] is None else jnp.maximum(entry["max"], high)
            if gram:
                entry["gram"] = entry["gram"] + rows.T @ rows
    return {
        path: InputStatistics(
            entry["count"], entry["sum"] / entry["count"], entry["min"], entry["max"], entry["gram"] if gram else None
        )
        for path, entry in totals.items()
    }


# --- the network's structure -------------------------------------------------------------------------------------


class ConvGeometry(NamedTuple):
    """A convolution's explicit geometry: ``strides``, ``padding`` ``((low, high), ...)``, ``dilation``, ``groups``."""

    strides: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    dilation: tuple[int, ...]
    groups: int


def conv_geometry(layer: nnx.Conv, input_shape: tuple[int, ...]) -> ConvGeometry:
    """Resolves an ``nnx.Conv``'s strides, padding (``"SAME"``, ``"VALID"`` or explicit) and dilation for an input.

    Raises:
      ValueError: for padding modes that are not zero padding (``CIRCULAR``, ``REFLECT``, ``CAUSAL``) or input
        dilation.
    """
    spatial = len(layer.kernel_size)

    def broadcast(value: int | Sequence[int] | None) -> tuple[int, ...]:
        value = 1 if value is None else value
        return (int(value),) * spatial if isinstance(value, int) else tuple(int(v) for v in value)

    strides, dilation = broadcast(layer.strides), broadcast(layer.kernel_dilation)
    if broadcast(layer.input_dilation) != (1,) * spatial:
        raise ValueError("convolutions with input dilation are not supported")
    padding = layer.padding
    if isinstance(padding, str):
        if padding.upper() not in ("SAME", "VALID"):
            raise ValueError(f"convolution padding {padding!r} is not zero padding; use SAME, VALID or explicit pads")
        dilated = [(k - 1) * d + 1 for k, d in zip(layer.kernel_size, dilation)]
        pads = lax.padtype_to_pads(input_shape[-spatial - 1 : -1], dilated, strides, padding.upper())
    elif isinstance(padding, int):
        pads = [(padding, padding)] * spatial
    else:
        pads = [(p, p) if isinstance(p, int) else tuple(p) for p in padding]
    return ConvGeometry(strides, tuple((int(lo), int(hi)) for lo, hi in pads), dilation, int(layer.feature_group_count))


class Step(NamedTuple):
    """One operation of a traced network.

    Attributes:
      kind: ``"conv"``, ``"dense"``, ``"batch_norm"``, ``"relu"``, ``"max_pool"``, ``"flatten"``, or the name of a
        JAX primitive that none of these covers (``"add"``, ``"reduce_window_sum"``, ...).
      path: the module path for layers and batch norms, else ``None``.
      params: static parameters as ``((name, value), ...)``: a conv's ``strides``/``padding``/``dilation``/
        ``groups``, a pool's ``window``/``strides``/``padding``, every step's ``input_shape`` (one example's shape,
        batch axis excluded).
      inputs: indices of the values this step reads (value 0 is the model's input; step ``i`` writes value
        ``i + 1``).
    """

    kind: str
    path: str | None
    params: tuple[tuple[str, Any], ...]
    inputs: tuple[int, ...]

    def param(self, name: str) -> Any:
        """The value of one of ``params``."""
        return dict(self.params)[name]


class Trace(NamedTuple):
    """A network's operations in execution order, from :func:`trace`.

    Attributes:
      steps: the :class:`Step` s; step ``i`` produces value ``i + 1``.
      outputs: the values the model returns.
    """

    steps: tuple[Step, ...]
    outputs: tuple[int, ...]

    def layer_steps(self) -> dict[str, Step]:
        """The conv and dense steps by path, in execution order."""
        return {step.path: step for step in self.steps if step.kind in ("conv", "dense")}

    def consumers(self, value: int) -> list[int]:
        """Indices of the steps that read ``value``."""
        return [index for index, step in enumerate(self.steps) if value in step.inputs]

    def output_layers(self) -> list[str]:
        """Layers whose output reaches a model output without passing through another layer."""
        reached = set(self.outputs)
        result = []
        for index in range(len(self.steps) - 1, -1, -1):
            step = self.steps[index]
            if index + 1 not in reached:
                continue
            if step.kind in ("conv", "dense"):
                result.append(step.path)
            else:
                reached.update(step.inputs)
        return result[::-1]

    def sequential(self) -> tuple[Step, ...]:
        """The steps, checked to be one chain of conv / dense / ReLU / max-pool / flatten — what integer inference
        and export run.

        Raises:
          ValueError: naming the first step (and the layer before it) that is not in that set or breaks the chain.
        """
        previous = "the model's input"
        for index, step in enumerate(self.steps):
            if step.kind not in _SEQUENTIAL_KINDS:
                where = f"{step.kind} at {step.path}" if step.path else f"a {step.kind!r} operation"
                raise ValueError(
                    f"the model is not a chain of conv/dense/ReLU/max-pool/flatten layers: after {previous} it "
                    f"computes {where}, which integer inference and export do not support"
                )
            if step.inputs != (index,):
                raise ValueError(
                    f"the model is not a chain of layers: after {previous}, step {step.kind} "
                    f"{step.path or ''} reads an earlier value (a residual or branch), which integer inference and "
                    "export do not support"
                )
            if step.path:
                previous = f"layer {step.path!r}"
        if self.outputs != (len(self.steps),):
            raise ValueError("the model must return the last layer's value (one output)")
        return self.steps


_SEQUENTIAL_KINDS = ("conv", "dense", "relu", "max_pool", "flatten")


def trace(model: nnx.Module, x: jax.Array | np.ndarray, *, forward: Forward = _call) -> Trace:
    """Reads the network's operations, in execution order, from the jaxpr of one call.

    Each conv, dense (``nnx.Linear``) and ``nnx.BatchNorm`` call becomes one step named by its path; between them,
    ``max(x, 0)`` is a ReLU, ``reduce_window_max`` a max-pool, and a reshape to ``(N, features)`` a flatten. Every
    other primitive on the activations' path is kept as a step of its own kind, so that a caller can say exactly
    what it does not support. Computations on constants only (e.g. of weights) are not steps.

    Args:
      model: any NNX module (restored as it was afterwards).
      x: an example input batch (only its shape and dtype matter).
      forward: how to call the model, as in :func:`capture`.

    Returns:
      The :class:`Trace`.
    """
    if not isinstance(model, nnx.Module):
        raise TypeError(f"model must be a flax.nnx.Module, got {type(model).__name__}")
    x = check_input(x, "x")
    modules = [
        (".".join(str(part) for part in key), module)
        for key, module in nnx.iter_modules(model)
        if key and (_is_layer(module) or isinstance(module, nnx.BatchNorm))
    ]
    # Wrapped layers are marked as a whole, not their inner layer.
    modules = [(path, module) for path, module in modules if not any(path.startswith(f"{p}.") for p, _ in modules)]
    marked = {path: _jaxpr.Marked(module, index) for index, (path, module) in enumerate(modules)}
    with _swapped(model, marked):
        closed = _run(lambda m, value: jax.make_jaxpr(lambda v: forward(m, v))(value), model, x)
    builder = _jaxpr.TraceBuilder(modules, _module_step, Step)
    values = {id(closed.jaxpr.invars[0]): 0} if closed.jaxpr.invars else {}
    builder.walk(closed.jaxpr, values)
    outputs = tuple(values[id(var)] for var in closed.jaxpr.outvars if id(var) in values)
    return Trace(tuple(builder.steps), outputs)


def _module_step(module: nnx.Module, shape: tuple) -> tuple[str, dict]:
    layer = module.layer if isinstance(module, QuantLayer) else module
    if isinstance(layer, nnx.Conv):
        geometry = conv_geometry(layer, shape)
        return "conv", geometry._asdict()
    if isinstance(layer, nnx.BatchNorm):
        return "batch_norm", {}
    return "dense", {}


# --- BatchNorm folding -------------------------------------------------------------------------------------------


def fold_batch_norm(model: nnx.Module, x: jax.Array | np.ndarray, *, forward: Forward = _call) -> nnx.Module:
    """A copy of the model with each BatchNorm that directly follows a conv or dense layer folded into it.

    In inference mode a BatchNorm is a fixed per-channel affine map, so it merges into the layer before it. With
    running mean $\\mu$, variance $\\sigma^2$, scale $\\gamma$, offset $\\beta$ and the layer's kernel $W$ and bias
    $b$, output channel $c$ of ``bn(layer(x))`` is

    $$
    \\gamma_c \\frac{(W_c x + b_c) - \\mu_c}{\\sqrt{\\sigma_c^2 + \\epsilon}} + \\beta_c = W'_c x + b'_c, \\qquad
    W'_c = \\frac{\\gamma_c}{\\sqrt{\\sigma_c^2 + \\epsilon}} W_c, \\quad
    b'_c = \\frac{\\gamma_c (b_c - \\mu_c)}{\\sqrt{\\sigma_c^2 + \\epsilon}} + \\beta_c .
    $$

    This is an exact reparameterisation (up to float32 rounding), not an approximation. It must happen *before*
    quantization: the integer kernels then see one layer with one bias, and the weight ranges are those of $W'$,
    whose per-channel spread the BatchNorm may have widened. Pairs are found from the model's :func:`trace`, not by
    name: a BatchNorm whose input is a layer's output that nothing else reads. Each folded BatchNorm is replaced by
    an :class:`Identity`, so the copy has the same class and the same call.

    References:
      Jacob et al., arXiv:1712.05877, 2017, sec. 3.2.
      Nagel et al., arXiv:2106.08295, 2021, sec. 2.3.1.

    Args:
      model: a trained NNX model (folding uses the running statistics: the model's eval mode).
      x: an example input batch (only its shape matters).
      forward: how to call the model in eval mode, as in :func:`capture`.

    Returns:
      The folded copy; the original is unchanged.
    """
    network = trace(model, x, forward=forward)
    clone = nnx.clone(model)
    for index, step in enumerate(network.steps):
        if step.kind != "batch_norm" or len(step.inputs) != 1 or step.inputs[0] == 0:
            continue
        producer = network.steps[step.inputs[0] - 1]
        if producer.kind not in ("conv", "dense") or network.consumers(step.inputs[0]) != [index]:
            continue
        layer = get_module(clone, producer.path)
        layer = layer.layer if isinstance(layer, QuantLayer) else layer
        norm = get_module(clone, step.path)
        gamma = norm.scale[...] if norm.scale is not None else 1.0
        beta = norm.bias[...] if norm.bias is not None else 0.0
        factor = gamma / jnp.sqrt(norm.var[...] + norm.epsilon)
        bias = layer.bias[...] if layer.bias is not None else jnp.zeros_like(norm.mean[...])
        layer.kernel[...] = layer.kernel[...] * factor
        new_bias = (bias - norm.mean[...]) * factor + beta
        if layer.bias is None:
            layer.bias = nnx.Param(new_bias)
            layer.use_bias = True
        else:
            layer.bias[...] = new_bias
        _set_module(clone, step.path, Identity())
    return clone
