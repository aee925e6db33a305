"""Tests for quantref.qat, quantref.qat_train and quantref.parallel: the estimators' gradients against their analytic
forms (and LSQ against a PyTorch autograd implementation of the paper's code), BatchNorm folding in training
against BatchNorm itself, determinism across processes and device counts, and the road from a QAT model to integers
and ONNX."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from quantref import formats, integer, nn, parallel, ptq, qat, qat_train

ROOT = Path(__file__).resolve().parents[1]
UINT4 = formats.int_format(4, signed=False)
INT4N = formats.int_format(4, signed=True, narrow_range=True)


def _grid_values(scale: float, fmt: formats.IntFormat, zero_point: float = 0.0) -> np.ndarray:
    """Values from well below the grid to well above it, none on a rounding tie or a range boundary."""
    low, high = (fmt.qmin - zero_point - 3) * scale, (fmt.qmax - zero_point + 3) * scale
    return np.linspace(low, high, 997, dtype=np.float32) + np.float32(scale * 0.0123)


# --- the estimators -------------------------------------------------------------------------------------------------


def test_ste_gradient_is_one_inside_the_range_and_zero_outside():
    scale, zero_point = 0.25, 3.0
    x = _grid_values(scale, UINT4, zero_point)
    upstream = np.random.default_rng(0).normal(size=x.shape).astype(np.float32)
    grad_x, grad_s = jax.grad(
        lambda x, s: jnp.sum(qat.ste_fake_quant(x, s, zero_point, UINT4) * upstream), argnums=(0, 1)
    )(jnp.asarray(x), jnp.float32(scale))
    inside = (x / scale + zero_point >= UINT4.qmin) & (x / scale + zero_point <= UINT4.qmax)
    assert 0 < inside.sum() < x.size
    np.testing.assert_array_equal(np.asarray(grad_x), np.where(inside, upstream, 0))
    assert float(grad_s) == 0.0
    # The forward is the affine fake quantizer's, bit for bit.
    from quantref import affine

    np.testing.assert_array_equal(
        np.asarray(qat.ste_fake_quant(x, scale, zero_point, UINT4)),
        np.asarray(affine.fake_quant(x, scale, int(zero_point), UINT4)),
    )


def _lsq_step_gradient(x: np.ndarray, scale: float, qmin: int, qmax: int, zero_point: float = 0.0) -> np.ndarray:
    """LSQ's eq. 3 (with a zero point), elementwise, in float64."""
    v = x.astype(np.float64) / scale
    shifted = v + zero_point
    return np.where(shifted <= qmin, qmin - zero_point, np.where(shifted >= qmax, qmax - zero_point, np.round(v) - v))


@pytest.mark.parametrize("fmt", [INT4N, formats.int_format(2, signed=True, narrow_range=True), formats.UINT8])
def test_lsq_step_gradient_is_eq3_times_the_gradient_scale(fmt):
    scale = 0.05
    x = _grid_values(scale, fmt)
    upstream = np.random.default_rng(1).normal(size=x.shape).astype(np.float32)
    g = qat.lsq_gradient_scale(x.size, fmt)
    assert g == pytest.approx(1 / np.sqrt(x.size * fmt.qmax))

    def loss(x, s):
        return jnp.sum(qat.lsq_fake_quant(x, qat.scale_gradient(s, g), 0.0, fmt) * upstream)

    grad_x, grad_s = jax.grad(loss, argnums=(0, 1))(jnp.asarray(x), jnp.float32(scale))
    terms = upstream * _lsq_step_gradient(x, scale, fmt.qmin, fmt.qmax)
    # float32 sums 997 terms of both signs: allow its rounding, relative to the sum of their magnitudes.
    np.testing.assert_allclose(float(grad_s), g * terms.sum(), rtol=0, atol=1e-6 * g * np.abs(terms).sum())
    inside = (x / scale > fmt.qmin) & (x / scale < fmt.qmax)
    np.testing.assert_array_equal(np.asarray(grad_x), np.where(inside, upstream, 0))


def test_lsq_per_channel_and_zero_point_gradients():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(200, 3)).astype(np.float32) * np.array([1, 3, 10], np.float32)
    scale = np.array([0.1, 0.2, 0.5], np.float32)
    zero_point = np.array([2.0, 7.0, 9.0], np.float32)
    upstream = rng.normal(size=x.shape).astype(np.float32)
    grad_s, grad_z = jax.grad(
        lambda s, z: jnp.sum(qat.lsq_fake_quant(jnp.asarray(x), s, z, UINT4) * upstream), argnums=(0, 1)
    )(jnp.asarray(scale), jnp.asarray(zero_point))
    terms = upstream * _lsq_step_gradient(x, scale, 0, 15, zero_point)
    np.testing.assert_allclose(np.asarray(grad_s), terms.sum(axis=0), rtol=0, atol=1e-6 * np.abs(terms).sum())
    clamped = (x / scale + zero_point <= 0) | (x / scale + zero_point >= 15)
    offsets = np.where(clamped, -scale * upstream, 0)
    np.testing.assert_allclose(np.asarray(grad_z), offsets.sum(axis=0), rtol=0, atol=1e-6 * np.abs(offsets).sum())


def test_lsq_matches_the_papers_pytorch_formulation():
    torch = pytest.importorskip("torch")
    # LSQ's appendix: grad_scale(x, g) = (x - x*g).detach() + x*g; round_pass(x) = (x.round() - x).detach() + x;
    # v_hat = round_pass(clamp(v / s, -Q_N, Q_P)) * s.
    rng = np.random.default_rng(3)
    x = rng.normal(size=(64, 9)).astype(np.float32)
    upstream = rng.normal(size=x.shape).astype(np.float32)
    fmt, scale = INT4N, 0.3
    g = qat.lsq_gradient_scale(x.size, fmt)
    v = torch.tensor(x, requires_grad=True)
    s = torch.tensor(scale, requires_grad=True)
    s_scaled = (s - s * g).detach() + s * g
    clamped = torch.clamp(v / s_scaled, fmt.qmin, fmt.qmax)
    v_hat = ((clamped.round() - clamped).detach() + clamped) * s_scaled
    (v_hat * torch.tensor(upstream)).sum().backward()

    def loss(x, s):
        return jnp.sum(qat.lsq_fake_quant(x, qat.scale_gradient(s, g), 0.0, fmt) * upstream)

    grad_x, grad_s = jax.grad(loss, argnums=(0, 1))(jnp.asarray(x), jnp.float32(scale))
    np.testing.assert_allclose(v_hat.detach().numpy(), np.asarray(qat.lsq_fake_quant(x, scale, 0.0, fmt)), atol=1e-6)
    np.testing.assert_allclose(float(grad_s), s.grad.item(), rtol=1e-4)
    # torch's chain rule multiplies by s and by 1/s, one rounding each; the zero pattern (the clamped values) is exact.
    np.testing.assert_allclose(np.asarray(grad_x), v.grad.numpy(), rtol=3e-7, atol=0)
    np.testing.assert_array_equal(np.asarray(grad_x) == 0, v.grad.numpy() == 0)


def test_pact_alpha_gradient_counts_the_clipped_values():
    alpha = 2.0
    x = np.linspace(-1, 4, 501, dtype=np.float32) + np.float32(0.0031)
    upstream = np.random.default_rng(4).normal(size=x.shape).astype(np.float32)
    grad_x, grad_alpha = jax.grad(lambda x, a: jnp.sum(qat.pact_fake_quant(x, a, UINT4) * upstream), argnums=(0, 1))(
        jnp.asarray(x), jnp.float32(alpha)
    )
    clipped = upstream[x >= alpha]
    np.testing.assert_allclose(float(grad_alpha), clipped.sum(), rtol=0, atol=1e-6 * np.abs(clipped).sum())
    np.testing.assert_array_equal(np.asarray(grad_x), np.where((x > 0) & (x < alpha), upstream, 0))
    values = np.asarray(qat.pact_fake_quant(x, alpha, UINT4))
    assert values.min() == 0 and values.max() == pytest.approx(alpha)
    assert len(np.unique(values)) == 16
    with pytest.raises(ValueError, match="unsigned"):
        qat.pact_fake_quant(x, alpha, formats.INT8)


# --- BatchNorm folded in training ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def float_model():
    from quantref import train

    return train.load_or_train(progress=False)


@pytest.fixture(scope="module")
def splits():
    from quantref import data

    return data.load_splits()


@pytest.mark.parametrize("statistics", qat.BN_STATISTICS)
def test_folded_training_forward_equals_batch_norm_in_training_mode(float_model, splits, statistics):
    """Quantizers off: the folded layer in batch-statistics mode is the conv followed by BatchNorm in training mode —
    output and updated running statistics."""
    x = jnp.asarray(splits.x_train[:64])
    reference = nnx.clone(float_model)
    expected = reference(x, train=True)
    model = qat.prepare(float_model, splits.x_calib, qat.QATConfig(bn_statistics=statistics))
    for path in ("conv1", "conv2", "dense"):
        layer = nn.get_module(model, path)
        layer.weight_quantizer = layer.input_quantizer = layer.output_quantizer = None
    model.train()
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(expected), rtol=1e-5, atol=1e-5)
    for path, norm in (("conv1", "bn1"), ("conv2", "bn2")):
        folded = nn.get_module(model, path).norm
        np.testing.assert_allclose(folded.mean[...], nn.get_module(reference, norm).mean[...], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(folded.var[...], nn.get_module(reference, norm).var[...], rtol=1e-5, atol=1e-6)
    # Frozen (and in eval mode), the layer is the inference-time fold of nn.fold_batch_norm.
    qat.freeze_batch_norm(model)
    folded_model = nn.fold_batch_norm(reference, x[:1])
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(folded_model(x)), rtol=1e-5, atol=1e-5)


def test_prepared_model_starts_at_min_max_ptq(float_model, splits):
    model = qat.prepare(float_model, splits.x_calib, qat.QATConfig(weight_bits=8, activation_bits=8))
    folded = nn.fold_batch_norm(float_model, splits.x_calib[:1])
    qmodel = ptq.quantize_model(folded, splits.x_calib, observer="min_max")
    for path in ("conv1", "conv2", "dense"):
        scale, zero_point = nn.get_module(model, path).input_quantizer.observed()
        expected = qmodel.activations[f"{path}.input"]
        assert float(scale) == float(expected.scale) and int(zero_point) == int(expected.zero_point)


# --- from QAT to integers and ONNX ---------------------------------------------------------------------------------


def _short_qat(float_model, splits, weight_bits, activation_bits):
    """Two steps of QAT in the deployed form (BatchNorm frozen): one compilation, and a model that has trained."""
    config = qat.QATConfig(
        weight_bits=weight_bits, activation_bits=activation_bits, epochs=1, warmup_steps=0, freeze_bn_step=0
    )
    model, history = qat_train.train_qat(
        float_model,
        splits.x_train[:128],
        splits.y_train[:128],
        calibration_x=splits.x_calib,
        config=config,
        progress=False,
    )
    assert history["loss"].shape == (2,)
    return model


@pytest.fixture(scope="module")
def qat_w4a4(float_model, splits):
    return _short_qat(float_model, splits, 4, 4)


def test_integer_network_computes_what_the_qat_model_computes(qat_w4a4, splits):
    qmodel = qat.to_quantized_model(qat_w4a4, splits.x_calib)
    assert qmodel.weight_format.name == "int4n" and qmodel.activation_format.name == "uint4"
    assert list(qmodel.layers) == ["conv1", "conv2", "dense"]
    for layer in qmodel.layers.values():
        codes = np.asarray(layer.kernel)
        assert codes.dtype == np.int8 and codes.min() >= -7 and codes.max() <= 7
    out = integer.integer_forward(qmodel, integer.multipliers(qmodel, "onnxruntime"), splits.x_test)
    logits = qat_train.predict(qat_w4a4, splits.x_test)
    step = float(qmodel.activations["dense.output"].scale)
    # The same grids and codes; float accumulation may put a value across a rounding tie now and then.
    mismatched = np.abs(np.asarray(out.output) - logits) > step / 2
    assert mismatched.mean() <= 0.01
    assert ptq.accuracy(out.output, splits.y_test) == pytest.approx(ptq.accuracy(logits, splits.y_test), abs=0.01)


def _onnx_matches(qmodel, splits, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from quantref.export import onnx as export_onnx

    paths = export_onnx.export_onnx(qmodel, tmp_path, test_x=splits.x_test)
    session = ort.InferenceSession(str(paths["model"]), providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {"x": splits.x_test})
    expected = np.load(paths["expected"])["output"]
    np.testing.assert_array_equal(output, expected)


def test_qat_w8a8_runs_bit_exactly_in_onnxruntime(float_model, splits, tmp_path):
    _onnx_matches(qat.to_quantized_model(_short_qat(float_model, splits, 8, 8), splits.x_calib), splits, tmp_path)


def test_qat_w4a4_runs_bit_exactly_in_onnxruntime(qat_w4a4, splits, tmp_path):
    _onnx_matches(qat.to_quantized_model(qat_w4a4, splits.x_calib), splits, tmp_path)


# --- determinism, across processes and devices ---------------------------------------------------------------------


def _digest(arrays) -> str:
    return hashlib.sha256(b"".join(np.asarray(array).tobytes() for array in arrays)).hexdigest()


def _trained_digest(model, splits, mesh) -> str:
    """A few QAT steps with the batch in 8 shards, on ``mesh``: the hash of every trained array and the losses."""
    config = qat.QATConfig(epochs=1, warmup_steps=0, freeze_bn_step=None, shards=8)
    trained, history = qat_train.train_qat(
        model,
        splits.x_train[:128],
        splits.y_train[:128],
        calibration_x=splits.x_calib[:64],
        config=config,
        mesh=mesh,
        progress=False,
    )
    arrays = qat_train.model_to_arrays(trained)
    return _digest([arrays[key] for key in sorted(arrays)] + [history["loss"]])


def _calibrated(model, splits, mesh) -> tuple[str, list[float]]:
    """Observers with momentum 0 keep the last batch's range, combined over 8 shards by min and max."""
    observing = qat.prepare(model, splits.x_calib[:8], qat.QATConfig(momentum=0.0))
    graphdef, params, state = parallel.split_model(observing)
    observe = parallel.observe_step(graphdef, lambda m, x: m(x), mesh=mesh, shards=8)
    (x,) = parallel.shard_batch(mesh, splits.x_calib[:200])
    new_state = observe(params, state, x)
    observed = parallel.merge_model(graphdef, params, new_state).conv1.input_quantizer
    return _digest(jax.tree.leaves(new_state)), [float(observed.low[...]), float(observed.high[...])]


def _on_eight_devices() -> dict:
    """Run in a process with 8 simulated CPU devices: the digests on a 1-device and on the 8-device mesh."""
    from quantref import data, train

    model, splits = train.load_or_train(progress=False), data.load_splits()
    meshes = {"1": parallel.make_mesh(jax.devices()[:1]), "8": parallel.make_mesh()}
    assert len(jax.devices()) == 8
    return {
        "train": {name: _trained_digest(model, splits, mesh) for name, mesh in meshes.items()},
        "calibrate": {name: _calibrated(model, splits, mesh) for name, mesh in meshes.items()},
    }


@pytest.fixture(scope="module")
def eight_devices() -> dict:
    """:func:`_on_eight_devices` in another process, started with ``XLA_FLAGS`` (which must be set before JAX
    starts)."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    code = (
        "import json, sys; sys.path.insert(0, 'tests'); import test_qat as t; print(json.dumps(t._on_eight_devices()))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_training_is_bitwise_identical_across_processes_and_device_counts(eight_devices, float_model, splits):
    """This process (1 device) and another (1 device, then 8 simulated CPU devices), the batch in 8 shards: three
    runs, one set of bits."""
    here = _trained_digest(float_model, splits, parallel.make_mesh(jax.devices()[:1]))
    assert eight_devices["train"] == {"1": here, "8": here}


def test_sharded_calibration_is_exact(eight_devices, splits):
    calibrated = eight_devices["calibrate"]
    assert calibrated["1"] == calibrated["8"]
    # The min and max over 8 shards are the min and max over the batch.
    assert calibrated["8"][1] == [float(splits.x_calib[:200].min()), float(splits.x_calib[:200].max())]


# --- bad input ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"weight_bits": 1}, "weight_bits"),
        ({"activation_bits": 9}, "activation_bits"),
        ({"activation_method": "dorefa"}, "activation_method"),
        ({"bn_statistics": "batch"}, "bn_statistics"),
        ({"shards": 3}, "shards"),
        ({"freeze_bn_step": -1}, "freeze_bn_step"),
    ],
)
def test_bad_config_is_refused_before_any_work(float_model, splits, overrides, match):
    with pytest.raises(ValueError, match=match):
        qat.prepare(float_model, splits.x_calib, qat.QATConfig(**overrides))


def test_bad_shards_and_mesh_are_refused():
    mesh = parallel.make_mesh(jax.devices()[:1])
    with pytest.raises(ValueError, match="shards"):
        parallel.train_step(None, None, None, mesh=mesh, shards=0)
    with pytest.raises(TypeError, match="mesh"):
        parallel.observe_step(None, None, mesh="cpu")
    with pytest.raises(ValueError, match="calibration_x"):
        qat.prepare(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), np.zeros((0, 2), np.float32))
