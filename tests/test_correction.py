"""Tests for quantref.correction and quantref.gptq: each correction does what its formula promises, on the
walkthrough CNN and on a small MLP, cross-checked against independent implementations (a float64 re-inverting
OBQ loop for GPTQ, qwix's GPTQ, a brute-force MSE search, Monte Carlo for the clipped normal), and the corrected
model still runs bit-exactly in integer inference and onnxruntime."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from quantref import correction, formats, gptq, integer, nn, ptq

W4 = ptq.weight_format(4)


class MLP(nnx.Module):
    """Linear-ReLU-Linear-ReLU-Linear, with very different channel scales so that equalization has work to do."""

    def __init__(self, seed: int = 0):
        rngs = nnx.Rngs(seed)
        self.fc1, self.fc2, self.fc3 = (
            nnx.Linear(6, 8, rngs=rngs),
            nnx.Linear(8, 8, rngs=rngs),
            nnx.Linear(8, 3, rngs=rngs),
        )
        spread = jnp.logspace(-1.5, 1.5, 8)
        self.fc1.kernel[...] = self.fc1.kernel[...] * spread
        self.fc2.kernel[...] = self.fc2.kernel[...] / spread[:, None]

    def __call__(self, x):
        return self.fc3(nnx.relu(self.fc2(nnx.relu(self.fc1(x)))))


@pytest.fixture(scope="module")
def x_calib(splits):
    return splits.x_calib


@pytest.fixture(scope="module")
def w4(folded, x_calib):
    """W4A8 per-channel on MSE scales: the grid AdaRound and GPTQ start from."""
    return correction.mse_scales(folded, ptq.quantize_model(folded, x_calib, weight_bits=4))


def _relative(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.max(np.abs(a - b)) / np.max(np.abs(b))


# --- equalization and absorption ---------------------------------------------------------------------------------


def test_equalize_keeps_the_cnn_and_equalizes_each_pair(folded, splits):
    x = splits.x_test
    pairs = correction.equalization_pairs(nn.trace(folded, x[:1]))
    assert pairs == [
        correction.Pair("conv1", "conv2", ("relu",)),
        correction.Pair("conv2", "dense", ("relu", "max_pool", "flatten")),
    ]
    equalized = correction.equalize(folded, x[:1]).model
    assert _relative(equalized(x), folded(x)) <= 1e-5
    for pair in pairs:
        first, second = (nn.get_module(equalized, path).kernel[...] for path in pair[:2])
        channels = first.shape[-1]
        first_range = np.abs(np.asarray(first)).reshape(-1, channels).max(axis=0)
        second_range = np.abs(np.asarray(second)).reshape(-1, channels, second.shape[-1]).max(axis=(0, 2))
        np.testing.assert_allclose(first_range, second_range, rtol=1e-4)
    before = np.abs(np.asarray(folded.conv1.kernel[...])).reshape(-1, 16).max(axis=0)
    after = np.abs(np.asarray(equalized.conv1.kernel[...])).reshape(-1, 16).max(axis=0)
    assert after.max() / after.min() < before.max() / before.min()  # the per-tensor grid fits the channels better


def test_equalize_any_nnx_model_and_carry_statistics():
    model, x = MLP(), np.random.default_rng(0).normal(size=(64, 6)).astype(np.float32)
    statistics = {"fc1": correction.Gaussian(jnp.ones(8), 2 * jnp.ones(8))}
    result = correction.equalize(model, x[:1], statistics=statistics)
    assert _relative(result.model(x), model(x)) <= 1e-5
    scale = np.asarray(model.fc1.kernel[...]) / np.asarray(result.model.fc1.kernel[...])  # s per output channel
    np.testing.assert_allclose(np.asarray(result.statistics["fc1"].mean), 1 / scale[0], rtol=1e-5)
    ranges = [np.abs(np.asarray(layer.kernel[...])) for layer in (result.model.fc1, result.model.fc2)]
    np.testing.assert_allclose(ranges[0].max(axis=0), ranges[1].max(axis=1), rtol=1e-4)


def test_batch_norm_statistics_are_the_batch_norms_beta_and_gamma(model, splits):
    statistics = correction.batch_norm_statistics(model, splits.x_calib[:1])
    assert list(statistics) == ["conv1", "conv2"]
    np.testing.assert_array_equal(statistics["conv2"].mean, model.bn2.bias[...])
    np.testing.assert_array_equal(statistics["conv2"].std, np.abs(model.bn2.scale[...]))


def test_absorb_bias_moves_the_always_present_part_and_keeps_the_function():
    model, x = MLP(1), np.random.default_rng(1).uniform(-0.1, 0.1, size=(256, 6)).astype(np.float32)
    model.fc1.bias[...] = jnp.linspace(-1.0, 4.0, 8)  # most pre-activations far above zero
    _, recorded = nn.capture(model, x)
    low = np.asarray(recorded["fc1.output"]).min(axis=0)
    # Statistics whose mean - 3 std is the smallest pre-activation: c = max(0, that), and ReLU(y - c) + c = ReLU(y).
    statistics = {"fc1": correction.Gaussian(jnp.asarray(low + 0.03), jnp.full(8, 0.01))}
    result = correction.absorb_bias(model, x[:1], statistics, num_std=3.0)
    shift = np.asarray(model.fc1.bias[...] - result.model.fc1.bias[...])
    np.testing.assert_allclose(shift, np.maximum(low, 0), rtol=1e-5, atol=1e-6)
    assert np.sum(shift > 0) >= 4 and np.sum(shift == 0) >= 2  # some channels dip below zero: nothing to absorb
    assert _relative(result.model(x), model(x)) <= 1e-5
    np.testing.assert_allclose(np.asarray(result.statistics["fc1"].mean), low + 0.03 - shift, rtol=1e-5)


# --- grids and quantized models with given weights -------------------------------------------------------------


def test_with_weights_and_fake_quant_reproduce_ptq_exactly(folded, qmodel, splits):
    rebuilt = ptq.with_weights(folded, qmodel)
    for path, quant in qmodel.layers.items():
        for mine, theirs in zip(rebuilt.layers[path], quant):
            np.testing.assert_array_equal(mine, theirs)
    rtn = gptq.round_to_nearest(folded.conv2.kernel[...], qmodel.layers["conv2"].kernel_scale, qmodel.weight_format)
    np.testing.assert_array_equal(rtn, gptq.kernel_matrix(qmodel.layers["conv2"].kernel))


def test_mse_scales_are_a_brute_force_search_and_never_worse(folded, w4):
    kernel = np.asarray(gptq.kernel_matrix(folded.conv2.kernel[...]), np.float64)
    absmax = np.abs(kernel).max(axis=0)
    candidates = np.arange(100, 0, -1) / 100  # alpha = 1 first, so it wins ties
    errors = [
        np.sum((kernel - np.clip(np.round(kernel / (a * absmax / 7)), -7, 7) * (a * absmax / 7)) ** 2, axis=0)
        for a in candidates
    ]
    best = candidates[np.argmin(errors, axis=0)] * absmax / 7
    np.testing.assert_allclose(w4.layers["conv2"].kernel_scale, best, rtol=1e-5)
    for path, quant in w4.layers.items():
        kernel = gptq.kernel_matrix(nn.get_module(folded, path).kernel[...])
        mse_error = jnp.sum((kernel - gptq.kernel_matrix(quant.kernel) * quant.kernel_scale) ** 2, axis=0)
        min_max = gptq.weight_scale(kernel, W4)
        rtn_error = jnp.sum((kernel - gptq.round_to_nearest(kernel, min_max, W4) * min_max) ** 2, axis=0)
        assert np.all(mse_error <= rtn_error * (1 + 1e-6)) and mse_error.sum() < rtn_error.sum()


def test_group_scales_cover_consecutive_rows():
    kernel = jnp.asarray(np.random.default_rng(2).normal(size=(8, 3)), jnp.float32)
    scale = gptq.weight_scale(kernel, W4, group_size=4)
    assert scale.shape == (2, 3)
    np.testing.assert_allclose(scale[1], np.abs(np.asarray(kernel[4:])).max(axis=0) / 7, rtol=1e-6)
    np.testing.assert_allclose(gptq.row_scales(scale, 8, 3)[5], scale[1])


# --- bias correction -------------------------------------------------------------------------------------------


def _mean_output_error(folded, qmodel, x):
    """Per layer and channel, the mean over the data of (quantized layer on quantized inputs) - (float layer on float
    inputs), before any output quantizer, from the layers' input rows; and half the step of the bias's int32 grid."""
    _, expected = nn.capture(folded, x)
    _, got = ptq.fake_quant_forward(folded, qmodel, x)
    errors = {}
    for path, quant in qmodel.layers.items():
        layer = nn.get_module(folded, path)
        bias_step = np.asarray(qmodel.activations[f"{path}.input"].scale * quant.kernel_scale)
        w_hat = gptq.kernel_matrix(quant.kernel) * quant.kernel_scale
        quantized = nn.input_rows(layer, got[f"{path}.input"]).mean(axis=0) @ w_hat + quant.bias * bias_step
        rows = nn.input_rows(layer, expected[f"{path}.input"])
        reference = rows.mean(axis=0) @ gptq.kernel_matrix(layer.kernel[...]) + layer.bias[...]
        errors[path] = (np.asarray(quantized - reference), bias_step / 2)
    return errors


def test_bias_correction_zeroes_the_mean_output_error_on_the_calibration_data(folded, x_calib):
    per_tensor = ptq.quantize_model(folded, x_calib, weight_bits=4, per_channel=False)
    before = _mean_output_error(folded, per_tensor, x_calib)
    after = _mean_output_error(folded, correction.bias_correction(folded, per_tensor, x_calib), x_calib)
    for path, (error, half_step) in after.items():
        # What is left is the rounding of the corrected bias to its int32 grid (and float32 sums).
        assert np.all(np.abs(error) <= half_step * 1.01 + 1e-5), path
        assert np.max(np.abs(before[path][0])) >= 100 * half_step, path


def test_analytic_bias_correction_uses_the_clipped_normal_mean():
    # fc1 passes its input through, so its outputs are exactly the Gaussian the statistics describe.
    model, rng = MLP(3), np.random.default_rng(3)
    model.fc1 = nnx.Linear(8, 8, rngs=nnx.Rngs(0))
    model.fc1.kernel[...], model.fc1.bias[...] = jnp.eye(8), jnp.zeros(8)
    mean, std = np.linspace(-1, 1, 8), np.linspace(0.5, 2, 8)
    x = (rng.normal(size=(200_000, 8)) * std + mean).astype(np.float32)
    qmodel = ptq.quantize_model(model, x[:256], weight_bits=3)
    statistics = {"fc1": correction.Gaussian(jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32))}
    corrected = correction.analytic_bias_correction(model, qmodel, statistics)
    quant = qmodel.layers["fc2"]
    w, w_hat = np.asarray(model.fc2.kernel[...]), np.asarray(quant.kernel * quant.kernel_scale)
    monte_carlo = np.maximum(x, 0).mean(axis=0)  # E[ReLU(y)], what fc2 sees on average
    expected = np.asarray(model.fc2.bias[...]) - (w_hat - w).T @ monte_carlo
    got = corrected.layers["fc2"].bias * (qmodel.activations["fc2.input"].scale * quant.kernel_scale)
    np.testing.assert_allclose(np.asarray(got), expected, atol=0.01 * np.abs(w_hat - w).sum(axis=0).max())
    for path in ("fc1", "fc3"):  # no statistics for the layers before them
        np.testing.assert_array_equal(corrected.layers[path].bias, qmodel.layers[path].bias)


# --- GPTQ ---------------------------------------------------------------------------------------------------------


def _obq_reference(kernel, hessian, scales, qmin, qmax, damping, act_order):
    """GPTQ's result computed the slow way, in float64: round one row, re-invert the Hessian of the rows still
    free, and update them with the OBS formula (no Cholesky, no blocks)."""
    kernel, hessian = np.array(kernel, np.float64), np.array(hessian, np.float64)
    diagonal = np.diag(hessian).copy()
    dead = diagonal == 0
    hessian[dead, dead] = 1
    hessian += damping * np.mean(np.where(dead, 1, diagonal)) * np.eye(len(hessian))
    order = np.argsort(-diagonal, kind="stable") if act_order else np.arange(len(kernel))
    kernel, scales, hessian = kernel[order], np.asarray(scales, np.float64)[order], hessian[np.ix_(order, order)]
    codes = np.zeros_like(kernel)
    for i in range(len(kernel)):
        inverse = np.linalg.inv(hessian[i:, i:])
        codes[i] = np.clip(np.round(kernel[i] / scales[i]), qmin, qmax)
        kernel[i:] -= np.outer(inverse[:, 0], (kernel[i] - codes[i] * scales[i]) / inverse[0, 0])
    result = np.empty_like(codes)
    result[order] = codes
    return result


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("group_size", [None, 8])
def test_gptq_equals_the_float64_obq_reference(act_order, group_size):
    rng = np.random.default_rng(4)
    inputs = rng.normal(size=(300, 24)) @ rng.normal(size=(24, 24)) * np.linspace(0.2, 3, 24)
    inputs[:, 5] = 0  # a dead input
    kernel = rng.normal(size=(24, 5))
    hessian = 2 * inputs.T @ inputs
    with jax.enable_x64(True):
        scale = gptq.weight_scale(jnp.asarray(kernel), W4, group_size=group_size)
        scales = np.asarray(gptq.row_scales(scale, 24, 5))
        expected = _obq_reference(kernel, hessian, scales, -7, 7, 0.01, act_order)
        for block_size in (5, 128):  # lazy blocks of 5 rows, and one block of all 24
            codes = gptq.gptq(kernel, hessian, scale, W4, block_size=block_size, act_order=act_order)
            np.testing.assert_array_equal(codes, expected)
    rtn = gptq.round_to_nearest(jnp.asarray(kernel, jnp.float32), jnp.asarray(scale, jnp.float32), W4)
    assert gptq.layer_error(kernel, expected * scales, inputs.T @ inputs) < gptq.layer_error(
        kernel, rtn * scales, inputs.T @ inputs
    )


@pytest.mark.parametrize("granularity", ["tensor", "channel", "group"])
def test_gptq_with_an_identity_hessian_is_round_to_nearest(granularity):
    kernel = jnp.asarray(np.random.default_rng(5).normal(size=(32, 6)), jnp.float32)
    scale = {
        "tensor": gptq.weight_scale(kernel, W4, per_channel=False),
        "channel": gptq.weight_scale(kernel, W4),
        "group": gptq.weight_scale(kernel, W4, group_size=8),
    }[granularity]
    for act_order in (False, True):
        codes = gptq.gptq(kernel, jnp.eye(32), scale, W4, block_size=8, act_order=act_order)
        np.testing.assert_array_equal(codes, gptq.round_to_nearest(kernel, scale, W4))


def test_gptq_matches_qwix_on_qwixs_grid():
    qwix_gptq = pytest.importorskip("qwix.contrib.gptq_core", reason="qwix is the peer implementation (test extra)")
    from qwix._src.core import qarray

    rng = np.random.default_rng(6)
    inputs = rng.normal(size=(200, 8)) * np.linspace(0.5, 2, 8)
    kernel = jnp.asarray(rng.normal(size=(8, 4)), jnp.float32)
    hessian = jnp.asarray(inputs.T @ inputs, jnp.float32)
    how = qarray.HowToQuantize(qtype=jnp.int4, channelwise_axes=(0,))
    theirs = qwix_gptq.quantize_weight(kernel.T, hessian, how, blocksize=4, percdamp=0.01)[0]
    # qwix's int4 grid: s = absmax / 7.5 on [-8, 7].
    scale = jnp.abs(kernel).max(axis=0) / 7.5
    ours = gptq.gptq(kernel, hessian, scale, formats.int_format(4), block_size=4)
    np.testing.assert_array_equal(ours, np.asarray(theirs.qvalue.astype(jnp.int8)).T)


def test_gptq_lowers_each_cnn_layers_error(folded, w4, x_calib):
    improved = correction.gptq_model(folded, w4, x_calib)
    for path in w4.layer_order():
        stats = correction.layer_statistics(folded, improved, path, x_calib)
        kernel = gptq.kernel_matrix(nn.get_module(folded, path).kernel[...])
        scale = w4.layers[path].kernel_scale
        errors = [
            gptq.layer_error(kernel, gptq.kernel_matrix(q.layers[path].kernel) * scale, stats.gram)
            for q in (improved, w4)
        ]
        assert errors[0] < 0.9 * errors[1], path


def test_gptq_rejects_bad_arguments():
    kernel = jnp.ones((4, 2))
    with pytest.raises(ValueError, match="hessian"):
        gptq.gptq(kernel, jnp.eye(3), jnp.ones(2), W4)
    with pytest.raises(ValueError, match="scale"):
        gptq.gptq(kernel, jnp.eye(4), jnp.ones(3), W4)
    with pytest.raises(ValueError, match="block_size"):
        gptq.gptq(kernel, jnp.eye(4), jnp.ones(2), W4, block_size=0)
    with pytest.raises(ValueError, match="group_size"):
        gptq.weight_scale(kernel, W4, group_size=3)
    with pytest.raises(ValueError, match="method"):
        gptq.weight_scale(kernel, W4, method="percentile")


# --- AdaRound -----------------------------------------------------------------------------------------------------


def test_reconstruction_error_from_statistics_equals_the_direct_sum():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(500, 12)).astype(np.float32)
    x_hat = (x + rng.normal(scale=0.05, size=x.shape)).astype(np.float32)
    kernel, quantized = rng.normal(size=(12, 3)), rng.normal(size=(12, 3))
    direct = np.sum((x.astype(np.float64) @ kernel - x_hat.astype(np.float64) @ quantized) ** 2) / 500
    stats = gptq.reconstruction_stats(x[:200], x_hat[:200]) + gptq.reconstruction_stats(x[200:], x_hat[200:])
    np.testing.assert_allclose(gptq.reconstruction_error(kernel, quantized, stats), direct, rtol=1e-4)


def test_rectified_sigmoid_reaches_both_ends_and_the_regularizer_vanishes_there():
    v = jnp.asarray([-30.0, 0.0, 30.0])
    np.testing.assert_array_equal(correction.rectified_sigmoid(v), [0.0, 0.5, 1.0])
    assert float(correction.rounding_regularizer(v[jnp.asarray([0, 2])], 2.0)) == 0.0
    assert float(correction.rounding_regularizer(v[1:2], 2.0)) == 1.0


def test_adaround_beats_nearest_on_every_cnn_layer_and_is_deterministic(folded, w4, x_calib):
    for path in w4.layer_order():
        stats = correction.layer_statistics(folded, w4, path, x_calib)
        kernel = gptq.kernel_matrix(nn.get_module(folded, path).kernel[...])
        runs = [correction.adaround(kernel, w4.layers[path].kernel_scale, W4, stats, iterations=300) for _ in range(2)]
        np.testing.assert_array_equal(runs[0].codes, runs[1].codes)
        assert runs[0].objective < 0.8 * runs[0].nearest_objective, path
        flipped = np.asarray(runs[0].codes) != np.asarray(gptq.kernel_matrix(w4.layers[path].kernel))
        assert 0 < flipped.mean() < 0.5
        assert np.all(np.abs(np.asarray(runs[0].codes, int) - gptq.kernel_matrix(w4.layers[path].kernel)) <= 1)


def test_adaround_rejects_bad_arguments(folded, w4, x_calib):
    stats = correction.layer_statistics(folded, w4, "conv1", x_calib)
    kernel = gptq.kernel_matrix(folded.conv1.kernel[...])
    with pytest.raises(ValueError, match="warmup"):
        correction.adaround(kernel, w4.layers["conv1"].kernel_scale, W4, stats, warmup=1.0)
    with pytest.raises(ValueError, match="iterations"):
        correction.adaround(kernel, w4.layers["conv1"].kernel_scale, W4, stats, iterations=0)
    with pytest.raises(ValueError, match="kernel"):
        correction.adaround(kernel[:4], w4.layers["conv1"].kernel_scale, W4, stats)


# --- the corrected model, deployed ---------------------------------------------------------------------------


def test_corrected_model_runs_bit_exactly_in_integer_inference_and_onnxruntime(folded, qmodel, x_calib, splits):
    ort = pytest.importorskip("onnxruntime", reason="the export is checked in onnxruntime (test extra)")
    pytest.importorskip("onnx", reason="the export writes ONNX (test extra)")
    from quantref.export import onnx as export_onnx

    corrected = correction.adaround_model(
        folded, correction.bias_correction(folded, qmodel, x_calib), x_calib, iterations=300
    )
    assert all(np.any(corrected.layers[p].kernel != qmodel.layers[p].kernel) for p in qmodel.layers)
    x = np.concatenate([splits.x_test, np.random.default_rng(8).uniform(-1, 2, (32, 8, 8, 1)).astype(np.float32)])
    expected = integer.integer_forward(corrected, integer.multipliers(corrected, "onnxruntime"), x)
    session = ort.InferenceSession(
        export_onnx.quantized_model_proto(corrected).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    got = session.run(None, {"x": x})[0]
    np.testing.assert_array_equal(got.view(np.uint32), np.asarray(expected.output).view(np.uint32))
    simulated, _ = ptq.fake_quant_forward(folded, corrected, splits.x_test)
    assert abs(ptq.accuracy(simulated, splits.y_test) - ptq.accuracy(got[:300], splits.y_test)) <= 1 / 300


def test_model_level_arguments_are_checked(folded, qmodel):
    with pytest.raises(ValueError, match="iterations"):
        correction.equalize(folded, np.zeros((1, 8, 8, 1), np.float32), iterations=0)
    with pytest.raises(ValueError, match="num_std"):
        correction.absorb_bias(folded, np.zeros((1, 8, 8, 1), np.float32), {}, num_std=-1.0)
    with pytest.raises(ValueError, match="does not quantize"):
        ptq.with_weights(folded, qmodel, biases={"missing": jnp.zeros(3)})
    with pytest.raises(ValueError, match="calibration_x"):
        correction.bias_correction(folded, qmodel, np.zeros((0, 8, 8, 1), np.float32))
