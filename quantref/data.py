"""The walkthrough data: scikit-learn's bundled 8×8 digits, in fixed train / calibration / test splits.

The 1,797 images ship with scikit-learn, so nothing is downloaded. Each pixel is an integer count 0..16.

Preprocessing, which every consumer of the model must repeat exactly (the ONNX export feeds the same tensor):

$$
x = \\text{float32}(\\text{pixel}) / 16 \\in [0, 1], \\qquad \\text{shape } (N, 8, 8, 1) \\text{ (NHWC).}
$$

The splits are stratified by label and fixed by a seed:

- **train** (1,297 images): fits the float model.
- **calibration** (200 images): the only data that range estimation and error correction may look at.
- **test** (300 images): held out; every accuracy in the chapters is measured on it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

__all__ = ["PIXEL_MAX", "NUM_CLASSES", "IMAGE_SHAPE", "Splits", "preprocess", "load_splits", "batches"]

PIXEL_MAX = 16
NUM_CLASSES = 10
IMAGE_SHAPE = (8, 8, 1)


@dataclasses.dataclass(frozen=True)
class Splits:
    """The digits in three disjoint, stratified splits, preprocessed by :func:`preprocess`.

    Attributes:
      x_train: float32 images, shape ``(1297, 8, 8, 1)``, values in [0, 1].
      y_train: int32 labels 0..9, shape ``(1297,)``.
      x_calib: float32 images for calibration, shape ``(200, 8, 8, 1)``.
      y_calib: int32 labels, shape ``(200,)``.
      x_test: float32 held-out images, shape ``(300, 8, 8, 1)``.
      y_test: int32 labels, shape ``(300,)``.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_calib: np.ndarray
    y_calib: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def preprocess(pixels: np.ndarray) -> np.ndarray:
    """Turns raw digit pixels into the model's input tensor.

    Args:
      pixels: integer counts 0..16, shape ``(N, 8, 8)`` or ``(N, 64)``.

    Returns:
      float32 array of shape ``(N, 8, 8, 1)`` with values ``pixels / 16`` in [0, 1].
    """
    pixels = np.asarray(pixels)
    return (pixels.reshape(-1, *IMAGE_SHAPE) / PIXEL_MAX).astype(np.float32)


def load_splits(seed: int = 0, num_calib: int = 200, num_test: int = 300) -> Splits:
    """Loads the bundled digits and splits them into train, calibration and test sets.

    Args:
      seed: seed of the stratified shuffle; the same seed always gives the same splits.
      num_calib: number of calibration images.
      num_test: number of test images; the rest (1,797 − num_calib − num_test) are for training.

    Returns:
      The preprocessed :class:`Splits`.
    """
    digits = load_digits()
    images = preprocess(digits.images)
    labels = digits.target.astype(np.int32)
    x_rest, x_test, y_rest, y_test = train_test_split(
        images, labels, test_size=num_test, stratify=labels, random_state=seed
    )
    x_train, x_calib, y_train, y_calib = train_test_split(
        x_rest, y_rest, test_size=num_calib, stratify=y_rest, random_state=seed
    )
    return Splits(x_train, y_train, x_calib, y_calib, x_test, y_test)


def batches(
    x: np.ndarray, y: np.ndarray, batch_size: int, seed: int | Sequence[int]
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields one shuffled pass over ``(x, y)`` in full batches.

    The last ``len(x) % batch_size`` examples of the shuffled order are dropped, so every batch has the
    same shape and a jitted step compiles once; a new seed per epoch drops different examples each time.

    Args:
      x: inputs, first axis is the example.
      y: labels, same first axis length as ``x``.
      batch_size: examples per batch.
      seed: seed of the shuffle, anything ``numpy.random.default_rng`` accepts, e.g. ``(seed, epoch)``.

    Yields:
      ``(x_batch, y_batch)`` pairs of ``batch_size`` examples each.
    """
    order = np.random.default_rng(seed).permutation(len(x))
    for start in range(0, len(x) - batch_size + 1, batch_size):
        chosen = order[start : start + batch_size]
        yield x[chosen], y[chosen]
