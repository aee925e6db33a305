"""Structured pruning: remove whole channels, and shrink the network so that it is smaller, not just sparser.

Zeros scattered through a kernel (:mod:`quantref.pruning`) save time only where a kernel skips them. Removing an
output channel of a layer needs no special kernel — if the arrays shrink with it:

- the layer's kernel loses that output column and its bias that entry;
- a BatchNorm after it loses that channel's scale, offset and running statistics;
- per-channel steps in between (ReLU, max-pool) need nothing;
- the next layer loses the matching input rows: a conv its input channel, a dense layer its input feature — after a
  flatten of an ``(H, W, C)`` map, every feature $(hW + w)C + c$ of channel $c$.

What is left is a dense network with fewer channels, faster on any hardware. Channels are ranked by the Lp norm of
their weights, $\\lVert W_{:,c} \\rVert_1 = \\sum_i |w_{ic}|$ (Li et al.) — the sum
$\\sum_i w_i \\operatorname{sign}(w_i)$ that some write-ups misuse as a per-weight criterion is exactly this
per-channel score. The network's structure comes from :func:`quantref.nn.trace`, so the same calls work on any
chain-like NNX model of conv and dense layers.

References:
  Li, Kadav, Durdanovic, Samet and Graf, "Pruning Filters for Efficient ConvNets", arXiv:1608.08710, 2016.
  He, Zhang and Sun, "Channel Pruning for Accelerating Very Deep Neural Networks", arXiv:1707.06168, 2017.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from quantref import nn
from quantref._validate import check_int, check_real, real_array

__all__ = ["channel_norms", "channel_keep", "prune_channels", "shrink_channels"]


def channel_norms(kernel: jax.Array | np.ndarray, ord: int = 1) -> jax.Array:
    """The Lp norm of each output channel's weights (over every axis but the last), $\\lVert W_{:,c}\\rVert_p$.

    For L1 this is $\\sum_i |w_{ic}|$ — the sum $\\sum_i w_i \\operatorname{sign}(w_i)$ — a score for a whole channel.

    References:
      Li et al., arXiv:1608.08710, 2016, sec. 3.1.

    Args:
      kernel: a kernel whose last axis is the output channels.
      ord: 1 or 2.

    Returns:
      ``(out,)`` float32 norms.
    """
    ord = check_int(ord, "ord", low=1, high=2)
    kernel = real_array(kernel, "kernel")
    if kernel.ndim < 2:
        raise ValueError(f"kernel must have an output axis after its input axes, got shape {kernel.shape}")
    return jnp.linalg.norm(kernel.reshape(-1, kernel.shape[-1]), ord=ord, axis=0)


def channel_keep(kernel: jax.Array | np.ndarray, amount: float, ord: int = 1) -> np.ndarray:
    """The output channels that survive pruning ``round(amount * channels)`` of them by smallest Lp norm.

    The same channels as ``torch.nn.utils.prune.ln_structured(module, "weight", amount, n=ord, dim=0)``; among equal
    norms the earlier channel is kept.

    Args:
      kernel: a kernel whose last axis is the output channels.
      amount: the fraction of channels to remove, in [0, 1).
      ord: 1 or 2.

    Returns:
      The kept channel indices, ascending (int64).

    Raises:
      ValueError: if ``amount`` would remove every channel.
    """
    amount = _check_amount(amount)
    norms = np.asarray(channel_norms(kernel, ord))
    keep = len(norms) - round(amount * len(norms))
    if keep < 1:
        raise ValueError(f"amount={amount} would remove all {len(norms)} channels")
    return np.sort(np.argsort(-norms, kind="stable")[:keep])


def prune_channels(
    model: nnx.Module,
    x: jax.Array | np.ndarray,
    amount: float | Mapping[str, float],
    *,
    ord: int = 1,
    select: str | Sequence[str] | None = None,
    skip: str | Sequence[str] | None = None,
) -> nnx.Module:
    """A smaller copy of the model: each selected layer loses its channels of smallest Lp norm, physically.

    The channels are chosen by :func:`channel_keep` and removed by :func:`shrink_channels`. By default every layer
    whose output feeds another layer is selected (an output layer's channels are the model's outputs).

    Args:
      model: an NNX model of conv and dense layers (BatchNorms between them are fine).
      x: an example input batch (only its shape matters).
      amount: the fraction of channels to remove, or ``{path: fraction}``.
      ord: the norm, 1 or 2.
      select: path patterns of the layers to prune.
      skip: path patterns of layers to leave whole.

    Returns:
      The shrunk copy (same class); the original is unchanged.

    Raises:
      ValueError: as :func:`shrink_channels`, or for an amount outside [0, 1).
    """
    outputs = set(nn.trace(model, x).output_layers())
    layers = {path: layer for path, layer in nn.find_layers(model, select, skip).items() if path not in outputs}
    if isinstance(amount, Mapping):
        layers = {path: layers[path] for path in amount if path in layers}
        missing = sorted(set(amount) - set(layers))
        if missing:
            raise ValueError(f"amount names paths that are not prunable selected layers: {missing}")
    amounts = amount if isinstance(amount, Mapping) else dict.fromkeys(layers, amount)
    keep = {path: channel_keep(_kernel(layer), amounts[path], ord) for path, layer in layers.items()}
    return shrink_channels(model, x, keep)


def shrink_channels(model: nnx.Module, x: jax.Array | np.ndarray, keep: Mapping[str, np.ndarray]) -> nnx.Module:
    """A copy of the model with only the ``keep[path]`` output channels of each layer, and everything they feed.

    From the model's :func:`quantref.nn.trace`, each pruned layer's output is followed through per-channel steps —
    BatchNorm (its scale, offset and running statistics are sliced), ReLU, max-pool — to the one layer that reads
    it: a conv loses those input channels, a dense layer those input features; after a flatten of an
    ``(H, W, C)`` map, feature ``(h W + w) C + c`` belongs to channel ``c``.

    Args:
      model: an NNX model of plain ``nnx.Conv`` / ``nnx.Linear`` layers (call :func:`bake_masks` first if wrapped).
      x: an example input batch.
      keep: ``{path: kept output channel indices}``.

    Returns:
      The shrunk copy; the original is unchanged.

    Raises:
      ValueError: if a path is not a layer, a layer is wrapped, the output reaches anything but per-channel steps
        and one conv or dense layer (a residual add, a model output, a grouped conv), or an index is out of range.
    """
    network = nn.trace(model, x)
    steps = network.layer_steps()
    clone = nnx.clone(model)
    for path, indices in keep.items():
        if path not in steps:
            raise ValueError(f"keep names {path!r}, which is not a conv or dense layer of the model")
        layer = nn.get_module(clone, path)
        if isinstance(layer, nn.QuantLayer):
            raise ValueError(f"layer {path!r} is wrapped in a QuantLayer; call bake_masks(model) first")
        indices = np.asarray(indices, np.int64)
        channels = layer.kernel.shape[-1]
        if indices.ndim != 1 or not len(indices) or indices.min() < 0 or indices.max() >= channels:
            raise ValueError(f"keep[{path!r}] must be channel indices in 0..{channels - 1}, got {indices}")
        _slice_layer(layer, indices, axis=-1)
        value = network.steps.index(steps[path]) + 1
        while True:
            consumers = network.consumers(value)
            if len(consumers) != 1 or value in network.outputs:
                raise ValueError(f"the output of {path!r} is read by {len(consumers)} steps or is a model output")
            step = network.steps[consumers[0]]
            value = consumers[0] + 1
            if step.kind in _PER_CHANNEL:
                _PER_CHANNEL[step.kind](nn.get_module(clone, step.path) if step.path else None, indices)
                continue
            if step.kind == "flatten":
                *spatial, flat_channels = step.param("input_shape")
                positions = np.arange(int(np.prod(spatial)))[:, None] * flat_channels
                indices = (positions + indices[None, :]).ravel()
                continue
            if step.kind == "dense" or (step.kind == "conv" and step.param("groups") == 1):
                _slice_layer(nn.get_module(clone, step.path), indices, axis=-2)
                break
            raise ValueError(f"the output of {path!r} reaches a {step.kind} step, which channel pruning cannot follow")
    return clone


def _slice_layer(layer: nnx.Module, indices: np.ndarray, axis: int) -> None:
    """Keeps ``indices`` of a conv/dense kernel's output (``axis=-1``, with the bias) or input (``axis=-2``)."""
    layer.kernel = nnx.Param(jnp.take(layer.kernel[...], indices, axis=axis))
    if axis == -1:
        layer.out_features = len(indices)
        if layer.bias is not None:
            layer.bias = nnx.Param(layer.bias[...][indices])
    else:
        layer.in_features = layer.kernel.shape[-2] if isinstance(layer, nnx.Conv) else len(indices)
    if isinstance(layer, nnx.Conv):
        layer.kernel_shape = tuple(layer.kernel.shape)


def _slice_batch_norm(norm: nnx.Module, indices: np.ndarray) -> None:
    if not isinstance(norm, nnx.BatchNorm):
        return  # a folded BatchNorm (nn.Identity) has nothing to slice
    for name in ("scale", "bias", "mean", "var"):
        variable = getattr(norm, name)
        if variable is not None:
            setattr(norm, name, type(variable)(variable[...][indices]))
    norm.num_features = len(indices)


# Steps that act on each channel separately, and what pruning a channel does to them.
_PER_CHANNEL: dict[str, Callable[[Any, np.ndarray], None]] = {
    "batch_norm": _slice_batch_norm,
    "relu": lambda module, indices: None,
    "max_pool": lambda module, indices: None,
}


# --- helpers -----------------------------------------------------------------------------------------------------


def _check_amount(value: object) -> float:
    value = check_real(value, "amount")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"amount must be in [0, 1), got {value}")
    return value


def _kernel(layer: nnx.Module) -> jax.Array:
    return (layer.layer if isinstance(layer, nn.QuantLayer) else layer).kernel[...]
