"""Tests for quantref.pruning and quantref.structured: masks against torch.nn.utils.prune on the same weights, 2:4
against torch's WeightNormSparsifier, the schedule against torchao's CubicSL (and torch.ao.pruning's) and the tfmot
formula, channel pruning that shrinks the arrays and computes what the masked network computes, and masked
fine-tuning that keeps pruned weights exactly zero."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from quantref import models, nn, pruning, structured

torch = pytest.importorskip("torch", reason="torch (the conformance extra) is the independent implementation")
prune = pytest.importorskip("torch.nn.utils.prune")


def random_model(factory, seed=0):
    """``factory()``'s model with random weights and BatchNorm statistics drawn by numpy.

    Built from ``nnx.eval_shape``, so that no initializer is compiled: that alone takes seconds per model."""
    model = nnx.eval_shape(factory)
    rng = np.random.default_rng(seed)
    state = nnx.state(model)

    def draw(path, leaf):
        name = str(path[-1].key)
        if name == "var":
            return jnp.asarray(rng.uniform(0.5, 2.0, leaf.shape), leaf.dtype)
        scale = 1.0 if name in ("mean", "scale") else 0.1 if name == "bias" else 1 / np.sqrt(np.prod(leaf.shape[:-1]))
        return jnp.asarray(rng.normal(1.0 if name == "scale" else 0.0, scale, leaf.shape), leaf.dtype)

    nnx.replace_by_pure_dict(state, jax.tree_util.tree_map_with_path(draw, nnx.to_pure_dict(state)))
    nnx.update(model, state)
    return model


@pytest.fixture(scope="module")
def cnn():
    """An untrained walkthrough CNN with random weights and BatchNorm statistics."""
    return random_model(lambda: models.DigitsCNN(rngs=nnx.Rngs(0)))


class MLP(nnx.Module):
    def __init__(self, rngs):
        self.fc1, self.fc2, self.out = (nnx.Linear(a, b, rngs=rngs) for a, b in ((6, 8), (8, 8), (8, 3)))

    def __call__(self, x):
        return self.out(jax.nn.relu(self.fc2(jax.nn.relu(self.fc1(x)))))


class Residual(nnx.Module):
    def __init__(self, rngs):
        self.a, self.b = nnx.Linear(6, 6, rngs=rngs), nnx.Linear(6, 6, rngs=rngs)

    def __call__(self, x):
        y = self.a(x)
        return y + self.b(y)


def _conv_weights(seed, shape=(3, 3, 16, 32)):
    """Random HWIO weights and the same weights as a torch Conv2d (OIHW)."""
    kernel = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    conv = torch.nn.Conv2d(shape[2], shape[3], shape[:2], bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()))
    return kernel, conv


def _torch_mask(module):
    return module.weight_mask.detach().numpy().transpose(2, 3, 1, 0)


@pytest.mark.parametrize("amount", [0.0, 0.3, 0.5, 0.9, 0.999, 1.0])
def test_magnitude_mask_equals_torch_l1_unstructured(amount):
    kernel, conv = _conv_weights(0)
    prune.l1_unstructured(conv, "weight", amount=amount)
    np.testing.assert_array_equal(pruning.magnitude_mask(kernel, amount), _torch_mask(conv))


def test_magnitude_mask_rounds_the_count_half_to_even_like_torch():
    weights = np.arange(1, 11, dtype=np.float32)
    for amount in (0.05, 0.15, 0.25, 0.35):  # 0.5, 1.5, 2.5, 3.5 weights
        linear = torch.nn.Linear(10, 1, bias=False)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(weights[None]))
        prune.l1_unstructured(linear, "weight", amount=amount)
        mask = np.asarray(pruning.magnitude_mask(weights, amount))
        np.testing.assert_array_equal(mask, linear.weight_mask.numpy()[0])
        assert mask.sum() == 10 - round(amount * 10)


def test_magnitude_masks_global_equals_torch_global_unstructured(cnn):
    model = cnn
    torch_layers = {}
    for path, layer in nn.find_layers(model).items():
        kernel = np.asarray(layer.kernel[...])
        if kernel.ndim == 4:
            module = torch.nn.Conv2d(kernel.shape[2], kernel.shape[3], kernel.shape[:2], bias=False)
            weight = kernel.transpose(3, 2, 0, 1)
        else:
            module = torch.nn.Linear(*kernel.shape, bias=False)
            weight = kernel.T
        with torch.no_grad():
            module.weight.copy_(torch.from_numpy(weight.copy()))
        torch_layers[path] = module
    prune.global_unstructured(
        [(module, "weight") for module in torch_layers.values()], pruning_method=prune.L1Unstructured, amount=0.8
    )
    masks = pruning.magnitude_masks(model, 0.8, scope="global")
    for path, module in torch_layers.items():
        expected = module.weight_mask.numpy()
        expected = expected.transpose(2, 3, 1, 0) if expected.ndim == 4 else expected.T
        np.testing.assert_array_equal(masks[path], expected, err_msg=path)
    sparsities = {path: float(1 - mask.mean()) for path, mask in masks.items()}
    assert len(set(np.round(list(sparsities.values()), 3))) == 3  # one threshold, different sparsity per layer
    total = sum(mask.size for mask in masks.values())
    assert sum(int((mask == 0).sum()) for mask in masks.values()) == round(0.8 * total)


def test_layer_masks_per_path_and_errors(cnn):
    model = cnn
    masks = pruning.magnitude_masks(model, {"conv2": 0.5, "dense": 0.75})
    assert set(masks) == {"conv2", "dense"}
    assert float(1 - masks["dense"].mean()) == 0.75
    with pytest.raises(ValueError, match="sparsity must be in"):
        pruning.magnitude_masks(model, 1.5)
    with pytest.raises(ValueError, match="not selected layers"):
        pruning.magnitude_masks(model, {"conv9": 0.5})
    with pytest.raises(ValueError, match="scope='global' takes one sparsity"):
        pruning.magnitude_masks(model, {"conv2": 0.5}, scope="global")
    with pytest.raises(ValueError, match="scope must be one of"):
        pruning.magnitude_masks(model, 0.5, scope="row")
    with pytest.raises(TypeError, match="sparsity must be a real number"):
        pruning.magnitude_mask(np.ones(4), "half")
    with pytest.raises(TypeError, match="weights must be an array"):
        pruning.magnitude_mask("weights", 0.5)
    with pytest.raises(TypeError, match="kernel must be an array"):
        pruning.n_m_mask(None)
    with pytest.raises(ValueError, match="kernel must have an output axis"):
        structured.channel_norms(np.ones(3))
    with pytest.raises(ValueError, match="y must hold one integer label per example"):
        pruning.fine_tune(model, np.zeros((4, 8, 8, 1)), np.zeros(4), progress=False)


@pytest.mark.parametrize("ord", [1, 2])
@pytest.mark.parametrize("amount", [0.25, 0.5, 0.75])
def test_channel_keep_equals_torch_ln_structured(ord, amount):
    kernel, conv = _conv_weights(1)
    prune.ln_structured(conv, "weight", amount=amount, n=ord, dim=0)
    kept = structured.channel_keep(kernel, amount, ord)
    expected = np.flatnonzero(_torch_mask(conv).reshape(-1, kernel.shape[-1]).all(axis=0))
    np.testing.assert_array_equal(kept, expected)
    np.testing.assert_allclose(
        structured.channel_norms(kernel, ord), np.linalg.norm(kernel.reshape(-1, 32), ord=ord, axis=0), rtol=1e-6
    )


def _drop_inputs(model, x, keep):
    """The original model with each pruned channel cut off where the next layer reads it (its input weights zero).

    Removing a channel from the network is exactly this: nothing downstream sees it."""
    network = nn.trace(model, x)
    clone = nnx.clone(model)
    order = list(network.layer_steps())
    for path, indices in keep.items():
        following = order[order.index(path) + 1]
        layer = nn.get_module(clone, following)
        kernel = np.asarray(layer.kernel[...]).copy()
        channels = nn.get_module(model, path).kernel.shape[-1]
        dropped = np.setdiff1d(np.arange(channels), indices)
        if kernel.ndim == 2:  # after a flatten: feature f belongs to channel f % channels
            kernel[np.isin(np.arange(kernel.shape[0]) % channels, dropped)] = 0
        else:
            kernel[..., dropped, :] = 0
        layer.kernel[...] = jnp.asarray(kernel)
    return clone


def test_shrink_channels_computes_what_the_cut_network_computes(cnn):
    model = cnn
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(16, 8, 8, 1)), jnp.float32)
    small = structured.prune_channels(model, x, {"conv1": 0.5, "conv2": 0.75}, ord=2)
    keep = {
        "conv1": structured.channel_keep(model.conv1.kernel[...], 0.5, 2),
        "conv2": structured.channel_keep(model.conv2.kernel[...], 0.75, 2),
    }
    assert small.conv1.kernel.shape == (3, 3, 1, 8) and small.conv1.bias.shape == (8,)
    assert small.bn1.mean.shape == small.bn1.scale.shape == (8,) and small.bn1.num_features == 8
    assert small.conv2.kernel.shape == (3, 3, 8, 8) and small.bn2.var.shape == (8,)
    assert small.dense.kernel.shape == (4 * 4 * 8, 10) and small.dense.in_features == 128
    assert model.conv1.kernel.shape == (3, 3, 1, 16)  # the original is unchanged
    np.testing.assert_array_equal(small.bn1.mean[...], model.bn1.mean[...][keep["conv1"]])
    np.testing.assert_allclose(small(x), _drop_inputs(model, x, keep)(x), rtol=1e-5, atol=1e-5)
    folded_small = nn.fold_batch_norm(small, x)
    np.testing.assert_allclose(folded_small(x), small(x), rtol=1e-4, atol=1e-4)
    small(x, train=True)  # BatchNorm in training mode works on the smaller arrays too


def test_shrink_channels_on_an_mlp_and_what_it_refuses():
    mlp = random_model(lambda: MLP(nnx.Rngs(0)))
    x = jnp.asarray(np.random.default_rng(1).normal(size=(5, 6)), jnp.float32)
    keep = {"fc1": np.array([0, 2, 5]), "fc2": np.array([1, 7])}
    small = structured.shrink_channels(mlp, x, keep)
    assert [small.fc1.kernel.shape, small.fc2.kernel.shape, small.out.kernel.shape] == [(6, 3), (3, 2), (2, 3)]
    np.testing.assert_allclose(small(x), _drop_inputs(mlp, x, keep)(x), rtol=1e-6, atol=1e-6)
    assert structured.prune_channels(mlp, x, 0.5).out.kernel.shape == (4, 3)  # output layers are never pruned
    with pytest.raises(ValueError, match="model output"):
        structured.shrink_channels(mlp, x, {"out": np.array([0])})
    with pytest.raises(ValueError, match="read by 2 steps"):
        structured.shrink_channels(random_model(lambda: Residual(nnx.Rngs(0))), x, {"a": np.array([0, 1])})
    with pytest.raises(ValueError, match="channel indices"):
        structured.shrink_channels(mlp, x, {"fc1": np.array([8])})
    with pytest.raises(ValueError, match="would remove all"):
        structured.channel_keep(mlp.fc1.kernel[...], 1.0)


def test_n_m_mask_equals_torch_weight_norm_sparsifier_2_4():
    from torch.ao.pruning import WeightNormSparsifier

    kernel = np.random.default_rng(2).normal(size=(32, 12)).astype(np.float32)  # (in, out)
    linear = torch.nn.Sequential(torch.nn.Linear(32, 12))
    with torch.no_grad():
        linear[0].weight.copy_(torch.from_numpy(kernel.T.copy()))
    sparsifier = WeightNormSparsifier(sparsity_level=1.0, sparse_block_shape=(1, 4), zeros_per_block=2)
    sparsifier.prepare(linear, [{"tensor_fqn": "0.weight"}])
    sparsifier.step()
    expected = linear[0].parametrizations.weight[0].mask.numpy().T
    np.testing.assert_array_equal(pruning.n_m_mask(kernel, 2, 4), expected)


def test_n_m_mask_on_a_conv_kernel_keeps_the_largest_n_of_each_group():
    kernel = np.random.default_rng(3).normal(size=(3, 3, 16, 8)).astype(np.float32)
    mask = np.asarray(pruning.n_m_mask(kernel, 2, 4))
    groups = np.moveaxis(mask, 2, -1).reshape(3, 3, 8, 4, 4)
    assert np.all(groups.sum(axis=-1) == 2)
    magnitudes = np.moveaxis(np.abs(kernel), 2, -1).reshape(3, 3, 8, 4, 4)
    kept_min = np.where(groups == 1, magnitudes, np.inf).min(axis=-1)
    dropped_max = np.where(groups == 0, magnitudes, -np.inf).max(axis=-1)
    assert np.all(kept_min > dropped_max)
    with pytest.raises(ValueError, match="must divide the input dimension"):
        pruning.n_m_mask(np.ones((3, 3, 1, 8)), 2, 4)
    with pytest.raises(ValueError, match="n must be an int in"):
        pruning.n_m_mask(kernel, 5, 4)


def _tfmot_polynomial_decay(step, final, initial, begin, end, frequency, power):
    """tfmot's PolynomialDecay as its documentation states it, written here independently: the sparsity applies
    at steps where (step - begin) % frequency == 0 and holds until the next; no pruning before begin."""
    if step < begin:
        return 0.0
    step = min(step, end)
    step = begin + (step - begin) // frequency * frequency
    progress = (step - begin) / (end - begin)
    return final + (initial - final) * (1 - progress) ** power


@pytest.mark.parametrize("frequency", [1, 7, 25])
def test_polynomial_sparsity_equals_the_tfmot_formula(frequency):
    for initial, final, begin, end, power in ((0.0, 0.9, 0, 100, 3), (0.2, 0.75, 30, 230, 3), (0.0, 0.5, 5, 50, 2)):
        for step in range(0, end + 40):
            got = float(
                pruning.polynomial_sparsity(
                    step,
                    final,
                    initial_sparsity=initial,
                    begin_step=begin,
                    end_step=end,
                    frequency=frequency,
                    power=power,
                )
            )
            expected = _tfmot_polynomial_decay(step, final, initial, begin, end, frequency, power)
            assert got == pytest.approx(expected, rel=1e-6, abs=1e-7), (step, frequency)


@pytest.mark.parametrize("module", ["torchao.prototype.sparsity", "torch.ao.pruning"])
def test_polynomial_sparsity_equals_cubic_sl(module):
    package = pytest.importorskip(module, reason=f"{module}'s CubicSL is the independent implementation")
    sparsifier = package.WeightNormSparsifier(sparsity_level=0.85)
    sparsifier.prepare(torch.nn.Sequential(torch.nn.Linear(4, 4)), [{"tensor_fqn": "0.weight"}])
    scheduler = package.CubicSL(sparsifier, init_sl=0.1, init_t=20, delta_t=10, total_t=15, initially_zero=True)
    ours = jax.jit(
        lambda step: pruning.polynomial_sparsity(
            step, 0.85, initial_sparsity=0.1, begin_step=20, end_step=20 + 10 * 15, frequency=1
        )
    )
    for step in range(220):
        assert float(ours(step)) == pytest.approx(scheduler.get_last_sl()[0], rel=1e-6, abs=1e-7), step
        sparsifier.step()
        scheduler.step()


def test_polynomial_sparsity_rejects_bad_arguments():
    with pytest.raises(ValueError, match="end_step must be an int in"):
        pruning.polynomial_sparsity(0, 0.5, begin_step=10, end_step=10)
    with pytest.raises(ValueError, match="final_sparsity must be in"):
        pruning.polynomial_sparsity(0, -0.1, end_step=10)
    with pytest.raises(ValueError, match="frequency must be an int in"):
        pruning.polynomial_sparsity(0, 0.5, end_step=10, frequency=0)


def _toy_data(count=128):
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(count, 8, 8, 1)).astype(np.float32)
    y = (x[:, :4].mean(axis=(1, 2, 3)) > x[:, 4:].mean(axis=(1, 2, 3))).astype(np.int32)
    return x, y


FIXED_MASK_CONFIG = pruning.FineTuneConfig(steps=12, batch_size=32, learning_rate=1e-2, weight_decay=1e-2)


def test_fine_tune_with_fixed_masks_keeps_pruned_weights_exactly_zero(cnn):
    model = cnn
    masks = pruning.magnitude_masks(model, 0.7)
    x, y = _toy_data()
    tuned = pruning.fine_tune(model, x, y, FIXED_MASK_CONFIG, masks=masks, progress=False)
    for path, layer in nn.find_layers(tuned).items():
        assert isinstance(layer, nnx.Conv | nnx.Linear)  # the wrappers are gone
        kernel, original = np.asarray(layer.kernel[...]), np.asarray(nn.get_module(model, path).kernel[...])
        mask = np.asarray(masks[path]) != 0
        assert np.all(kernel[~mask] == 0) and not np.any(np.signbit(kernel[~mask]))  # +0.0
        assert np.all(kernel[mask] != original[mask])  # the survivors trained
        assert np.mean(kernel == 0) == round(0.7 * kernel.size) / kernel.size


def test_fine_tune_with_a_schedule_reaches_the_final_sparsity(cnn):
    x, y = _toy_data()
    schedule = pruning.Schedule(final_sparsity=(("conv2", 0.8), ("dense", 0.6)), end_step=8, frequency=4)
    config = pruning.FineTuneConfig(steps=10, batch_size=32, learning_rate=1e-2)
    tuned = pruning.fine_tune(cnn, x, y, config, schedule=schedule, progress=False)
    expected = {"conv1": 0.0, "conv2": round(0.8 * 4608) / 4608, "dense": 0.6}
    assert pruning.sparsity(tuned) == pytest.approx(expected, abs=1e-7)
    assert schedule.sparsity(4)["conv2"] == pytest.approx(0.8 * (1 - 0.5**3))


def test_load_or_fine_tune_caches_the_result(cnn, tmp_path, monkeypatch):
    monkeypatch.setenv("QUANTREF_CACHE", str(tmp_path))
    model = cnn
    masks = pruning.magnitude_masks(model, 0.5)
    x, y = _toy_data(64)
    config = FIXED_MASK_CONFIG  # the same optimizer and wrapped layers as above: no second compilation
    first = pruning.load_or_fine_tune(model, x, y, config, masks=masks, progress=False)
    assert len(list(tmp_path.glob("fine_tuned-*.quantref.npz"))) == 1
    second = pruning.load_or_fine_tune(model, x, y, config, masks=masks, progress=False)
    for path, layer in nn.find_layers(first).items():
        np.testing.assert_array_equal(layer.kernel[...], nn.get_module(second, path).kernel[...])
    np.testing.assert_array_equal(first.bn2.mean[...], second.bn2.mean[...])
    other = dataclasses.replace(config, seed=1)
    pruning.load_or_fine_tune(model, x, y, other, masks=masks, progress=False)
    assert len(list(tmp_path.glob("fine_tuned-*.quantref.npz"))) == 2  # another config, another entry


def test_sensitivity_scan_prunes_one_layer_at_a_time(cnn):
    model = cnn
    x = jnp.asarray(_toy_data(16)[0])
    reference = np.asarray(model(x))

    def output_change(pruned):
        return float(np.abs(np.asarray(pruned(x)) - reference).mean())

    scan = pruning.sensitivity_scan(model, output_change, [0.0, 0.5, 0.9, 1.0])
    assert set(scan) == {"conv1", "conv2", "dense"}
    for path, values in scan.items():
        assert values[0] == 0.0 and values[-1] > values[1] > 0, path
    assert pruning.sparsity(model) == {"conv1": 0.0, "conv2": 0.0, "dense": 0.0}  # the model is unchanged
