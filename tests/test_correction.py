"""Tests for quantref.correction: batch-norm folding is exact and leaves the model alone."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quantref import correction, data, train


@pytest.fixture(scope="module")
def model():
    return train.load_or_train(progress=False)


@pytest.fixture(scope="module")
def splits():
    return data.load_splits()


def test_folded_logits_equal_the_models(model, splits):
    params = correction.fold_batch_norm(model)
    x = jnp.asarray(splits.x_test)
    expected = np.asarray(model(x))
    logits, _ = jax.jit(correction.folded_forward)(params, x)
    np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-5, atol=1e-4)
    assert np.array_equal(np.argmax(logits, axis=1), np.argmax(expected, axis=1))


def test_fold_formula_per_channel(model):
    params = correction.fold_batch_norm(model)
    bn, conv = model.bn1, model.conv1
    factor = np.asarray(bn.scale[...]) / np.sqrt(np.asarray(bn.var[...]) + bn.epsilon)
    np.testing.assert_allclose(params.conv1_kernel, np.asarray(conv.kernel[...]) * factor, rtol=1e-6)
    bias = (np.asarray(conv.bias[...]) - np.asarray(bn.mean[...])) * factor + np.asarray(bn.bias[...])
    np.testing.assert_allclose(params.conv1_bias, bias, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(params.dense_kernel, np.asarray(model.dense.kernel[...]))


def test_fold_does_not_mutate_the_model(model):
    before = np.asarray(model.conv2.kernel[...]).copy()
    correction.fold_batch_norm(model)
    np.testing.assert_array_equal(np.asarray(model.conv2.kernel[...]), before)


def test_shapes_and_activations(model, splits):
    params = correction.fold_batch_norm(model)
    assert [p.shape for p in params] == [(3, 3, 1, 16), (16,), (3, 3, 16, 32), (32,), (512, 10), (10,)]
    logits, activations = correction.folded_forward(params, jnp.asarray(splits.x_test[:4]))
    assert set(correction.ACTIVATION_POINTS) <= set(activations)
    assert activations["pool.input"].shape == (4, 8, 8, 32)
    assert activations["dense.input"].shape == (4, 512)
    assert float(activations["conv2.input"].min()) >= 0.0
    assert logits.shape == (4, 10)


def test_hook_sees_every_point_in_order(model, splits):
    params = correction.fold_batch_norm(model)
    seen = []
    correction.folded_forward(params, jnp.asarray(splits.x_test[:2]), activation_fn=lambda n, v: seen.append(n) or v)
    assert tuple(seen) == correction.ACTIVATION_POINTS


def test_rejects_non_model():
    with pytest.raises(ValueError, match="model must be"):
        correction.fold_batch_norm({"conv1": None})
