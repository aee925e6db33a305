"""Error correction before quantization. For now: batch-norm folding ("model fusion").

In inference mode a batch norm is a fixed per-channel affine map, so it merges into the convolution before it. With
running mean $\\mu$, variance $\\sigma^2$, scale $\\gamma$, offset $\\beta$ and the conv's kernel $W$ and bias $b$,
output channel $c$ of ``bn(conv(x))`` is

$$
\\gamma_c \\frac{(W_c * x + b_c) - \\mu_c}{\\sqrt{\\sigma_c^2 + \\epsilon}} + \\beta_c
= W'_c * x + b'_c, \\qquad
W'_c = \\frac{\\gamma_c}{\\sqrt{\\sigma_c^2 + \\epsilon}} W_c, \\quad
b'_c = \\frac{\\gamma_c (b_c - \\mu_c)}{\\sqrt{\\sigma_c^2 + \\epsilon}} + \\beta_c .
$$

Folding must happen *before* quantization: the integer kernels then see one convolution with one bias, and the
weight ranges are those of $W'$, whose per-channel spread the batch norm may have widened (a reason to quantize
weights per channel).

References:
  Jacob et al., "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference",
  arXiv:1712.05877, 2017, sec. 3.2 ("Batch normalization folding").
  Nagel et al., "A White Paper on Neural Network Quantization", arXiv:2106.08295, 2021, sec. 2.3.1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from quantref import models

__all__ = ["FoldedCNN", "ACTIVATION_POINTS", "fold_batch_norm", "folded_forward"]

#: Activations that :func:`folded_forward` passes through its ``activation_fn`` hook, in order: the network's input,
#: the two post-ReLU feature maps (``pool.input`` is conv2's, before max-pooling), and the logits. These are the
#: tensors that an integer-only network stores as integers.
ACTIVATION_POINTS = ("conv1.input", "conv2.input", "pool.input", "logits")

CONV_DIMENSIONS = ("NHWC", "HWIO", "NHWC")  # Flax layouts: images NHWC, kernels HWIO


class FoldedCNN(NamedTuple):
    """The walkthrough CNN with its batch norms folded in: three layers, each a kernel and a bias (a pytree).

    Attributes:
      conv1_kernel: float32, ``(3, 3, 1, 16)`` (HWIO).
      conv1_bias: float32, ``(16,)``.
      conv2_kernel: float32, ``(3, 3, 16, 32)``.
      conv2_bias: float32, ``(32,)``.
      dense_kernel: float32, ``(512, 10)``; rows in the NHWC flatten order of the pooled ``(4, 4, 32)`` map.
      dense_bias: float32, ``(10,)``.
    """

    conv1_kernel: jax.Array
    conv1_bias: jax.Array
    conv2_kernel: jax.Array
    conv2_bias: jax.Array
    dense_kernel: jax.Array
    dense_bias: jax.Array


def _fold(conv: object, batch_norm: object) -> tuple[jax.Array, jax.Array]:
    kernel, bias = conv.kernel[...], conv.bias[...]
    gamma, beta = batch_norm.scale[...], batch_norm.bias[...]
    mean, var = batch_norm.mean[...], batch_norm.var[...]
    factor = gamma / jnp.sqrt(var + batch_norm.epsilon)
    return kernel * factor, (bias - mean) * factor + beta


def fold_batch_norm(model: models.DigitsCNN) -> FoldedCNN:
    """Folds each batch norm (with its running statistics) into the convolution before it.

    $$
    W'_c = \\frac{\\gamma_c}{\\sqrt{\\sigma_c^2 + \\epsilon}} W_c, \\qquad
    b'_c = \\frac{\\gamma_c (b_c - \\mu_c)}{\\sqrt{\\sigma_c^2 + \\epsilon}} + \\beta_c
    $$

    for every output channel $c$. The folded network computes the same function as the model in inference mode
    (``train=False``), up to float32 rounding.

    References:
      Jacob et al., arXiv:1712.05877, 2017, sec. 3.2.
      Nagel et al., arXiv:2106.08295, 2021, sec. 2.3.1.

    Args:
      model: the trained :class:`~quantref.models.DigitsCNN`.

    Returns:
      The folded float32 parameters.

    Raises:
      ValueError: if ``model`` is not a :class:`~quantref.models.DigitsCNN`.
    """
    if not isinstance(model, models.DigitsCNN):
        raise ValueError(f"model must be a quantref.models.DigitsCNN, got {type(model).__name__}")
    conv1_kernel, conv1_bias = _fold(model.conv1, model.bn1)
    conv2_kernel, conv2_bias = _fold(model.conv2, model.bn2)
    return FoldedCNN(conv1_kernel, conv1_bias, conv2_kernel, conv2_bias, model.dense.kernel[...], model.dense.bias[...])


def _conv(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    y = lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=CONV_DIMENSIONS)
    return y + bias


def folded_forward(
    params: FoldedCNN,
    x: jax.Array,
    activation_fn: Callable[[str, jax.Array], jax.Array] | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Runs the folded CNN and records its activations.

    conv1 → ReLU → conv2 → ReLU → 2×2 max-pool → flatten → dense, NHWC. Pure and ``jax.jit``-compatible.

    Args:
      params: folded parameters from :func:`fold_batch_norm` (or a quantized copy of them).
      x: float32 images, shape ``(N, 8, 8, 1)``, preprocessed as :func:`quantref.data.preprocess`.
      activation_fn: if given, ``activation_fn(name, value)`` replaces each activation named in
        :data:`ACTIVATION_POINTS` before the network goes on with it — the hook where fake quantization goes.

    Returns:
      ``(logits, activations)``. ``activations`` holds, after the hook, every name in :data:`ACTIVATION_POINTS`
      plus ``"conv1.output"`` and ``"conv2.output"`` (before ReLU) and ``"dense.input"`` (pooled, flattened).
    """
    hook = activation_fn or (lambda name, value: value)
    activations: dict[str, jax.Array] = {}
    x = activations["conv1.input"] = hook("conv1.input", x)
    y = activations["conv1.output"] = _conv(x, params.conv1_kernel, params.conv1_bias)
    x = activations["conv2.input"] = hook("conv2.input", jax.nn.relu(y))
    y = activations["conv2.output"] = _conv(x, params.conv2_kernel, params.conv2_bias)
    x = activations["pool.input"] = hook("pool.input", jax.nn.relu(y))
    x = lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    x = activations["dense.input"] = x.reshape(x.shape[0], -1)
    logits = activations["logits"] = hook("logits", x @ params.dense_kernel + params.dense_bias)
    return logits, activations
