"""Float training of the walkthrough model with optax, deterministic from a seed, cached on disk.

:func:`load_or_train` is what chapters call: it returns the trained :class:`~quantref.models.DigitsCNN`
from the cache (see :mod:`quantref.cache`) or trains it in a few seconds on a CPU and caches it.

Determinism: the weights are initialized from ``nnx.Rngs(seed)`` and the batches shuffled by
``numpy.random.default_rng((seed, epoch))``, so on one machine and JAX version the same seed gives
bitwise-identical parameters.

The cache entry's name holds the seed and a hash of the source of the data, model and training modules and of
the :class:`TrainConfig`, so editing any of them retrains instead of loading stale weights.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Mapping
from pathlib import Path

import jax
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from quantref import cache, data, models

__all__ = ["TrainConfig", "train", "model_to_arrays", "model_from_arrays", "cache_name", "load_or_train"]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of float training.

    Attributes:
      epochs: passes over the training split.
      batch_size: examples per optimizer step.
      learning_rate: initial AdamW learning rate, cosine-decayed to zero over training.
      weight_decay: AdamW decoupled weight decay.
    """

    epochs: int = 20
    batch_size: int = 64
    learning_rate: float = 1e-2
    weight_decay: float = 1e-4


# One transformation object per (config, steps) means that nnx.jit sees the same static optimizer on every
# call of `train` and compiles the training step once per process, not once per call.
@functools.cache
def _optimizer(config: TrainConfig, steps_per_epoch: int) -> optax.GradientTransformation:
    schedule = optax.cosine_decay_schedule(config.learning_rate, decay_steps=config.epochs * steps_per_epoch)
    return optax.adamw(schedule, weight_decay=config.weight_decay)


def _loss(model: models.DigitsCNN, x: jax.Array, y: jax.Array) -> jax.Array:
    logits = model(x, train=True)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@nnx.jit
def _train_step(model: models.DigitsCNN, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array) -> jax.Array:
    loss, grads = nnx.value_and_grad(_loss)(model, x, y)
    optimizer.update(model, grads)
    return loss


def train(
    x: np.ndarray,
    y: np.ndarray,
    *,
    seed: int = 0,
    config: TrainConfig = TrainConfig(),
    progress: bool = True,
) -> models.DigitsCNN:
    """Trains a fresh :class:`~quantref.models.DigitsCNN` on ``(x, y)`` with AdamW and cross-entropy.

    Args:
      x: float32 training images, shape ``(N, 8, 8, 1)``, with ``N >= config.batch_size``.
      y: int32 labels, shape ``(N,)``.
      seed: seed of the weight initialization and of the batch order.
      config: hyperparameters.
      progress: if True, show a tqdm progress bar on stderr.

    Returns:
      The trained model; call it with ``train=False`` (the default) for inference.

    Raises:
      ValueError: if there are fewer than ``config.batch_size`` examples.
    """
    steps_per_epoch = len(x) // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"need at least batch_size={config.batch_size} examples, got {len(x)}")
    model = models.DigitsCNN(rngs=nnx.Rngs(seed))
    optimizer = nnx.Optimizer(model, _optimizer(config, steps_per_epoch), wrt=nnx.Param)
    with tqdm(total=config.epochs * steps_per_epoch, desc="training", unit="step", disable=not progress) as bar:
        for epoch in range(config.epochs):
            for x_batch, y_batch in data.batches(x, y, config.batch_size, seed=(seed, epoch)):
                loss = _train_step(model, optimizer, x_batch, y_batch)
                bar.update()
            # Reading the loss waits for the device, so do it once per epoch, not per step.
            bar.set_postfix(epoch=epoch + 1, loss=f"{float(loss):.4f}")
    return model


def _path_to_key(path: tuple[jax.tree_util.DictKey, ...]) -> str:
    return "/".join(str(entry.key) for entry in path)


def model_to_arrays(model: models.DigitsCNN) -> dict[str, np.ndarray]:
    """Flattens the model's state (parameters and batch-norm statistics) into named numpy arrays.

    Args:
      model: the CNN.

    Returns:
      Arrays keyed by their path in ``nnx.state(model)``, e.g. ``"conv1/kernel"``, ``"bn1/mean"``.
    """
    state = nnx.to_pure_dict(nnx.state(model))
    leaves_with_paths, _ = jax.tree_util.tree_flatten_with_path(state)
    return {_path_to_key(path): np.asarray(leaf) for path, leaf in leaves_with_paths}


def model_from_arrays(arrays: Mapping[str, np.ndarray]) -> models.DigitsCNN:
    """Builds a :class:`~quantref.models.DigitsCNN` holding the state written by :func:`model_to_arrays`.

    Args:
      arrays: every array of the model's state, keyed as :func:`model_to_arrays` keys them.

    Returns:
      The model with that state.

    Raises:
      ValueError: if the keys or shapes do not match the model's architecture.
    """
    model = models.DigitsCNN(rngs=nnx.Rngs(0))
    state = nnx.state(model)
    template = model_to_arrays(model)
    if set(arrays) != set(template):
        raise ValueError(f"state keys differ from the model's: {sorted(set(arrays) ^ set(template))}")
    for key, expected in template.items():
        if arrays[key].shape != expected.shape or arrays[key].dtype != expected.dtype:
            raise ValueError(
                f"{key}: stored {arrays[key].dtype}{arrays[key].shape}, model has {expected.dtype}{expected.shape}"
            )
    restored = jax.tree_util.tree_map_with_path(
        lambda path, _: jax.numpy.asarray(arrays[_path_to_key(path)]), nnx.to_pure_dict(state)
    )
    nnx.replace_by_pure_dict(state, restored)
    nnx.update(model, state)
    return model


def cache_name(seed: int, config: TrainConfig) -> str:
    """Names the cache entry of the model trained by :func:`load_or_train` with this seed and config.

    Args:
      seed: the training seed.
      config: the hyperparameters.

    Returns:
      ``"digits_cnn-seed<seed>-<hash>"``, where the hash covers the source of ``quantref.data``,
      ``quantref.models`` and ``quantref.train`` and ``repr(config)``.
    """
    digest = hashlib.sha256(repr(config).encode())
    for module in (data, models):
        digest.update(Path(module.__file__).read_bytes())
    digest.update(Path(__file__).read_bytes())
    return f"digits_cnn-seed{seed}-{digest.hexdigest()[:16]}"


def load_or_train(seed: int = 0, config: TrainConfig = TrainConfig(), progress: bool = True) -> models.DigitsCNN:
    """Returns the walkthrough model trained on ``data.load_splits()``'s train split, from the cache if present.

    Args:
      seed: the training seed (the data splits always use their default seed).
      config: the hyperparameters.
      progress: if True and training is needed, show a tqdm progress bar on stderr.

    Returns:
      The trained model.
    """
    name = cache_name(seed, config)
    arrays = cache.load_arrays(name)
    if arrays is not None:
        try:
            return model_from_arrays(arrays)
        except ValueError as error:
            cache.discard(name, str(error))
    splits = data.load_splits()
    model = train(splits.x_train, splits.y_train, seed=seed, config=config, progress=progress)
    cache.save_arrays(name, model_to_arrays(model))
    return model
