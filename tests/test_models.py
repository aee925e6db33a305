"""Tests for quantref.models: shapes, eval-mode determinism, accuracy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from quantref import models


@pytest.fixture(scope="module")
def model() -> models.DigitsCNN:
    return models.DigitsCNN(rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def images() -> jax.Array:
    return jax.random.uniform(jax.random.key(1), (5, 8, 8, 1))


def test_logits_shape(model, images):
    assert model(images).shape == (5, 10)


def test_layers_are_named_attributes(model):
    assert model.conv1.kernel.shape == (3, 3, 1, 16)
    assert model.conv2.kernel.shape == (3, 3, 16, 32)
    assert model.dense.kernel.shape == (512, 10)
    assert model.bn1.mean.shape == (16,)
    assert model.bn2.var.shape == (32,)


def test_eval_mode_is_deterministic_and_leaves_statistics_alone(images):
    model = models.DigitsCNN(rngs=nnx.Rngs(0))
    mean_before = np.asarray(model.bn1.mean)
    first = model(images)
    second = model(images[::-1])[::-1]
    np.testing.assert_array_equal(model.bn1.mean, mean_before)
    # Each example's logits do not depend on the rest of the batch in eval mode.
    np.testing.assert_allclose(first, second, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(first, model(images))


def test_train_mode_updates_batch_norm_statistics(images):
    model = models.DigitsCNN(rngs=nnx.Rngs(0))
    model(images, train=True)
    assert not np.array_equal(model.bn1.mean, jnp.zeros(16))


def test_accuracy_counts_argmax_matches(model, images):
    predictions = np.asarray(jnp.argmax(model(images), axis=-1))
    assert models.accuracy(model, np.asarray(images), predictions) == 1.0
    assert models.accuracy(model, np.asarray(images), (predictions + 1) % 10) == 0.0
