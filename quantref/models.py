"""The walkthrough model: a small Flax NNX CNN for the 8×8 digits.

Layers, in order (NHWC; shapes for one 8×8×1 image)::

    conv1    3×3, 1→16, SAME     (8, 8, 16)
    bn1, ReLU
    conv2    3×3, 16→32, SAME    (8, 8, 32)
    bn2, ReLU
    max-pool 2×2, stride 2       (4, 4, 32)
    flatten                      (512,)
    dense    512→10              (10,)  logits

10,026 parameters, plus 96 batch-norm running statistics.

Every layer is an attribute, and its name is its NNX path (``conv1``, ``bn1``, ``conv2``, ``bn2``, ``dense``), the
name :mod:`quantref.nn` and every later step use; a chapter reads ``model.conv1.kernel`` directly. BatchNorm follows
each conv, as in the networks that BN folding (:func:`quantref.nn.fold_batch_norm`) is for.

The model runs in one of two modes, chosen per call: ``train=False`` (the default) normalizes with the running
statistics and is a pure, deterministic function of the input; ``train=True`` normalizes with the batch's
statistics and updates the running ones.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from quantref.data import IMAGE_SHAPE, NUM_CLASSES

__all__ = ["DigitsCNN", "accuracy"]

# With a few hundred training steps, the default momentum 0.99 leaves the running statistics too close to
# their initial values; 0.9 lets them track the data within a few epochs.
_BATCH_NORM_MOMENTUM = 0.9


class DigitsCNN(nnx.Module):
    """Conv-BN-ReLU ×2, max-pool, dense: 8×8×1 digits → 10 logits.

    Attributes:
      conv1: 3×3 convolution, 1→16 channels, SAME padding.
      bn1: batch norm over conv1's 16 channels.
      conv2: 3×3 convolution, 16→32 channels, SAME padding.
      bn2: batch norm over conv2's 32 channels.
      dense: 512→10 linear layer producing logits.
    """

    def __init__(self, *, rngs: nnx.Rngs):
        """Initializes the weights.

        Args:
          rngs: random streams for the weight initializers; the same seed gives the same weights.
        """
        height, width, channels = IMAGE_SHAPE
        self.conv1 = nnx.Conv(channels, 16, kernel_size=(3, 3), padding="SAME", rngs=rngs)
        self.bn1 = nnx.BatchNorm(16, momentum=_BATCH_NORM_MOMENTUM, rngs=rngs)
        self.conv2 = nnx.Conv(16, 32, kernel_size=(3, 3), padding="SAME", rngs=rngs)
        self.bn2 = nnx.BatchNorm(32, momentum=_BATCH_NORM_MOMENTUM, rngs=rngs)
        self.dense = nnx.Linear((height // 2) * (width // 2) * 32, NUM_CLASSES, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Computes logits.

        Args:
          x: float32 images, shape ``(N, 8, 8, 1)``, preprocessed by :func:`quantref.data.preprocess`.
          train: if True, batch norm uses and updates batch statistics; if False, it uses running statistics.

        Returns:
          Logits, shape ``(N, 10)`` (``(0, 10)`` for an empty batch).

        Raises:
          ValueError: if ``x`` is not shaped ``(N, 8, 8, 1)``.
          TypeError: if ``x`` is not a float array.
        """
        _check_images(x, "x")
        use_running_average = not train
        x = nnx.relu(self.bn1(self.conv1(x), use_running_average=use_running_average))
        x = nnx.relu(self.bn2(self.conv2(x), use_running_average=use_running_average))
        x = nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2))
        return self.dense(x.reshape(x.shape[0], math.prod(x.shape[1:])))  # -1 would divide by zero for N = 0


@nnx.jit
def _predict(model: DigitsCNN, x: jax.Array) -> jax.Array:
    return jnp.argmax(model(x), axis=-1)


def accuracy(model: DigitsCNN, x: np.ndarray, y: np.ndarray) -> float:
    """Measures the fraction of examples whose most likely class is the label, in eval mode.

    Args:
      model: the CNN.
      x: float32 images, shape ``(N, 8, 8, 1)``.
      y: integer labels, shape ``(N,)``.

    Returns:
      Accuracy in [0, 1].

    Raises:
      ValueError: if ``x`` is not a non-empty ``(N, 8, 8, 1)`` batch or ``y`` is not ``(N,)`` integer labels.
      TypeError: if ``model`` is not an NNX module or ``x`` is not a float array.
    """
    if not isinstance(model, nnx.Module):
        raise TypeError(f"model must be an NNX model of the digits (a DigitsCNN), got {type(model).__name__}")
    x = _check_images(x, "x")
    labels = np.asarray(y)
    if len(x) == 0:
        raise ValueError("x must hold at least one image: the accuracy of no images is undefined")
    if labels.shape != (len(x),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"y must be {len(x)} integer labels, shape ({len(x)},), got {labels.dtype}{labels.shape}")
    predictions = np.asarray(_predict(model, jnp.asarray(x)))
    return float(np.mean(predictions == labels))


def _check_images(x: object, name: str) -> np.ndarray | jax.Array:
    """Checks a batch of images' type and shape before any tracing (static shapes are known under jit too)."""
    if x is None or isinstance(x, (str, bytes)) or not hasattr(x, "shape"):
        x = np.asarray(x) if x is not None and not isinstance(x, (str, bytes)) else None
        if x is None or x.dtype == object:
            raise TypeError(f"{name} must be a float array of images (N, 8, 8, 1)")
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{name} must be a float array of images (N, 8, 8, 1), got dtype {x.dtype}")
    if x.ndim != 4 or tuple(x.shape[1:]) != IMAGE_SHAPE:
        raise ValueError(f"{name} must be images of shape (N, 8, 8, 1), got {tuple(x.shape)}")
    return x
