"""Tests for quantref.nn, the one model pipeline: finding layers, capturing inputs, tracing, BatchNorm folding,
fake-quant layers — and the proof that PTQ, integer inference and ONNX export work unchanged on models other than
the walkthrough CNN (a deeper CNN with other names, with and without BatchNorm, and an MLP), bit for bit against
onnxruntime."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from quantref import integer, nn, ptq

# --- models defined only here ------------------------------------------------------------------------------------


class DeepCNN(nnx.Module):
    """Three convs (one strided, one VALID) and two dense layers, with other names; BatchNorm optional."""

    def __init__(self, *, batch_norm: bool, rngs: nnx.Rngs):
        self.stem = nnx.Conv(1, 8, kernel_size=(3, 3), padding="SAME", use_bias=not batch_norm, rngs=rngs)
        self.body = nnx.List(
            [
                nnx.Conv(8, 12, kernel_size=(3, 3), strides=(2, 2), padding="SAME", rngs=rngs),
                nnx.Conv(12, 16, kernel_size=(2, 2), padding="VALID", rngs=rngs),
            ]
        )
        self.norm = nnx.BatchNorm(8, rngs=rngs) if batch_norm else None
        self.hidden = nnx.Linear(2 * 2 * 16, 24, rngs=rngs)
        self.head = nnx.Linear(24, 10, rngs=rngs)

    def __call__(self, x):
        x = self.stem(x)
        if self.norm is not None:
            x = self.norm(x, use_running_average=True)
        x = nnx.relu(x)
        for conv in self.body:
            x = nnx.relu(conv(x))
        x = nnx.max_pool(x, window_shape=(2, 2), strides=(1, 1))
        x = nnx.relu(self.hidden(x.reshape(x.shape[0], -1)))
        return self.head(x)


class MLP(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(64, 32, rngs=rngs)
        self.fc2 = nnx.Linear(32, 16, rngs=rngs)
        self.out = nnx.Linear(16, 10, rngs=rngs)

    def __call__(self, x):
        return self.out(jax.nn.relu(self.fc2(jax.nn.relu(self.fc1(x)))))


class Residual(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.conv_a = nnx.Conv(1, 4, kernel_size=(3, 3), rngs=rngs)
        self.conv_b = nnx.Conv(4, 4, kernel_size=(3, 3), rngs=rngs)
        self.head = nnx.Linear(8 * 8 * 4, 10, rngs=rngs)

    def __call__(self, x):
        y = nnx.relu(self.conv_a(x))
        y = y + nnx.relu(self.conv_b(y))  # a residual add
        return self.head(y.reshape(y.shape[0], -1))


class AveragePooled(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.conv = nnx.Conv(1, 4, kernel_size=(3, 3), rngs=rngs)
        self.head = nnx.Linear(4 * 4 * 4, 10, rngs=rngs)

    def __call__(self, x):
        y = nnx.avg_pool(nnx.relu(self.conv(x)), window_shape=(2, 2), strides=(2, 2))
        return self.head(y.reshape(y.shape[0], -1))


def _with_random_statistics(model):
    """Non-trivial BatchNorm statistics, so that folding has something to fold."""
    rng = np.random.default_rng(0)
    for _, module in nnx.iter_modules(model):
        if isinstance(module, nnx.BatchNorm):
            size = module.mean.shape[0]
            module.mean[...] = jnp.asarray(rng.normal(0, 0.3, size), jnp.float32)
            module.var[...] = jnp.asarray(rng.uniform(0.5, 2.0, size), jnp.float32)
            module.scale[...] = jnp.asarray(rng.uniform(0.5, 1.5, size), jnp.float32)
            module.bias[...] = jnp.asarray(rng.normal(0, 0.2, size), jnp.float32)
    return model


def _images(splits, count):
    return splits.x_calib[:count]


# --- finding, capturing, tracing ---------------------------------------------------------------------------------


def test_find_layers_by_path_with_patterns():
    model = DeepCNN(batch_norm=True, rngs=nnx.Rngs(0))
    assert list(nn.find_layers(model)) == ["body.0", "body.1", "head", "hidden", "stem"]
    assert list(nn.find_layers(model, select="body.*")) == ["body.0", "body.1"]
    assert list(nn.find_layers(model, skip=["head", "stem"])) == ["body.0", "body.1", "hidden"]
    with pytest.raises(TypeError, match="select"):
        nn.find_layers(model, select=3)
    with pytest.raises(TypeError, match="model"):
        nn.find_layers({"stem": None})


def test_capture_records_inputs_and_outputs_in_call_order(model, splits):
    x = jnp.asarray(splits.x_test[:5])
    logits, activations = nn.capture(model, x)
    assert list(activations) == [f"{p}.{end}" for p in ("conv1", "conv2", "dense") for end in ("input", "output")]
    np.testing.assert_array_equal(logits, model(x))
    np.testing.assert_array_equal(activations["conv1.input"], x)
    np.testing.assert_array_equal(activations["conv1.output"], model.conv1(x))  # before BatchNorm
    assert activations["dense.input"].shape == (5, 512) and float(activations["conv2.input"].min()) >= 0
    assert isinstance(model.conv1, nnx.Conv)  # the taps are gone


def test_capture_input_fn_replaces_inputs(model, splits):
    x = jnp.asarray(splits.x_test[:3])
    seen = []
    _, activations = nn.capture(model, x, input_fn=lambda name, v: seen.append(name) or v * 0)
    assert seen == ["conv1.input", "conv2.input", "dense.input"]
    assert float(jnp.abs(activations["conv2.input"]).max()) == 0.0


def test_trace_of_the_walkthrough_cnn(model, splits):
    network = nn.trace(model, splits.x_test[:2])
    assert [(s.kind, s.path) for s in network.steps] == [
        ("conv", "conv1"),
        ("batch_norm", "bn1"),
        ("relu", None),
        ("conv", "conv2"),
        ("batch_norm", "bn2"),
        ("relu", None),
        ("max_pool", None),
        ("flatten", None),
        ("dense", "dense"),
    ]
    assert network.steps[0].param("padding") == ((1, 1), (1, 1))
    assert network.output_layers() == ["dense"]


@pytest.mark.parametrize(
    "cls, match",
    [
        (Residual, r"after layer 'conv_b' .*'add'"),
        (AveragePooled, r"after layer 'conv' .*'reduce_window_sum'"),
    ],
)
def test_unsupported_structure_is_named(cls, match, splits):
    with pytest.raises(ValueError, match=match):
        nn.trace(cls(rngs=nnx.Rngs(0)), _images(splits, 2)).sequential()


# --- BatchNorm folding -------------------------------------------------------------------------------------------


def test_folding_is_exact_up_to_float_rounding(model, folded, splits):
    x = jnp.asarray(splits.x_test)
    np.testing.assert_allclose(np.asarray(folded(x)), np.asarray(model(x)), rtol=1e-5, atol=1e-4)
    assert isinstance(folded.bn1, nn.Identity) and isinstance(model.bn1, nnx.BatchNorm)


def test_fold_formula_per_channel(model, folded):
    bn, conv = model.bn1, model.conv1
    factor = np.asarray(bn.scale[...]) / np.sqrt(np.asarray(bn.var[...]) + bn.epsilon)
    np.testing.assert_allclose(folded.conv1.kernel[...], np.asarray(conv.kernel[...]) * factor, rtol=1e-6)
    bias = (np.asarray(conv.bias[...]) - np.asarray(bn.mean[...])) * factor + np.asarray(bn.bias[...])
    np.testing.assert_allclose(folded.conv1.bias[...], bias, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(folded.dense.kernel[...], np.asarray(model.dense.kernel[...]))


def test_folds_pairs_found_by_structure_including_a_conv_without_bias(splits):
    model = _with_random_statistics(DeepCNN(batch_norm=True, rngs=nnx.Rngs(1)))
    assert model.stem.bias is None
    x = jnp.asarray(_images(splits, 16))
    folded = nn.fold_batch_norm(model, x[:1])
    assert isinstance(folded.norm, nn.Identity) and folded.stem.bias is not None
    np.testing.assert_allclose(np.asarray(folded(x)), np.asarray(model(x)), rtol=1e-5, atol=1e-5)
    assert model.stem.bias is None  # the original is untouched


# --- im2col rows and statistics ------------------------------------------------------------------------------------


def test_input_rows_reproduce_strided_and_valid_convolutions(splits):
    model = DeepCNN(batch_norm=False, rngs=nnx.Rngs(2))
    _, activations = nn.capture(model, _images(splits, 4))
    for path in ("stem", "body.0", "body.1", "hidden"):
        layer = nn.get_module(model, path)
        rows = nn.input_rows(layer, activations[f"{path}.input"])
        kernel = layer.kernel[...].reshape(-1, layer.kernel.shape[-1])
        expected = activations[f"{path}.output"].reshape(-1, kernel.shape[-1])
        np.testing.assert_allclose(np.asarray(rows @ kernel + layer.bias[...]), expected, rtol=1e-5, atol=1e-5)


def test_input_statistics_match_numpy(folded, splits):
    batches = [splits.x_calib[:64], splits.x_calib[64:100]]
    stats = nn.input_statistics(folded, batches, select="conv2", gram=True)
    _, activations = nn.capture(folded, splits.x_calib[:100])
    rows = np.asarray(nn.input_rows(folded.conv2, activations["conv2.input"]), np.float64)
    entry = stats["conv2"]
    assert entry.count == rows.shape[0] == 100 * 64
    np.testing.assert_allclose(entry.mean, rows.mean(axis=0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(entry.max, rows.max(axis=0), rtol=1e-6)
    np.testing.assert_allclose(entry.gram, rows.T @ rows, rtol=1e-4, atol=1e-3)


def test_quant_layer_mask_zeroes_weights(splits):
    layer = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
    mask = np.ones((4, 3), np.float32)
    mask[0] = 0
    wrapped = nn.QuantLayer(layer, mask=mask)
    x = jnp.ones((2, 4))
    expected = x @ (layer.kernel[...] * mask) + layer.bias[...]
    np.testing.assert_allclose(wrapped(x), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="mask"):
        nn.QuantLayer(layer, mask=np.ones((3, 3)))
    with pytest.raises(TypeError, match="kernel"):
        nn.QuantLayer(nnx.BatchNorm(3, rngs=nnx.Rngs(0)))


def test_map_kernels_copies(model):
    zeroed = nn.map_kernels(model, lambda path, kernel: kernel * 0 if path == "conv2" else kernel)
    assert float(jnp.abs(zeroed.conv2.kernel[...]).max()) == 0.0
    assert float(jnp.abs(model.conv2.kernel[...]).max()) > 0.0


# --- the same calls on other models --------------------------------------------------------------------------------


def _mlp_inputs(splits):
    return splits.x_calib.reshape(len(splits.x_calib), -1), splits.x_test.reshape(len(splits.x_test), -1)


OTHER_MODELS = {
    "deep_cnn_batch_norm": lambda: _with_random_statistics(DeepCNN(batch_norm=True, rngs=nnx.Rngs(3))),
    "deep_cnn": lambda: DeepCNN(batch_norm=False, rngs=nnx.Rngs(4)),
    "mlp": lambda: MLP(rngs=nnx.Rngs(5)),
}


@pytest.mark.parametrize("name", OTHER_MODELS)
@pytest.mark.parametrize("signed", [False, True])
def test_ptq_integer_and_export_on_other_models(name, signed, splits, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="the export check runs onnxruntime (test extra)")
    from quantref.export import onnx as export_onnx

    model = OTHER_MODELS[name]()
    calib, test = _mlp_inputs(splits) if name == "mlp" else (splits.x_calib, splits.x_test)
    folded = nn.fold_batch_norm(model, calib[:1])
    qmodel = ptq.quantize_model(folded, calib, activation_signed=signed)
    assert list(qmodel.layers) == [s.path for s in qmodel.network.steps if s.kind in ("conv", "dense")]
    # Fake-quant simulation tracks the float model.
    float_out = np.asarray(folded(jnp.asarray(test)))
    fake, _ = ptq.fake_quant_forward(folded, qmodel, test)
    assert np.mean(np.argmax(fake, 1) == np.argmax(float_out, 1)) >= 0.9
    # The integer path tracks fake-quant; onnxruntime equals the integer path bit for bit.
    rng = np.random.default_rng(0)
    far = rng.uniform(-1, 2, (16, *test.shape[1:])).astype(np.float32)
    x = np.concatenate([test[:100], far])
    out = integer.integer_forward(qmodel, integer.multipliers(qmodel), x)
    assert np.mean(np.argmax(out.output[:100], 1) == np.argmax(np.asarray(fake)[:100], 1)) >= 0.95
    paths = export_onnx.export_onnx(qmodel, tmp_path / "out", test_x=x, float_model=folded)
    for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        session = ort.InferenceSession(str(paths["model"]), options, providers=["CPUExecutionProvider"])
        got = session.run(None, {"x": x})[0]
        expected = np.load(paths["expected"])["output"]
        np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))
        float_session = ort.InferenceSession(str(paths["float"]), options, providers=["CPUExecutionProvider"])
        np.testing.assert_allclose(float_session.run(None, {"x": x})[0], folded(jnp.asarray(x)), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cls, layer", [(Residual, "conv_b"), (AveragePooled, "conv")])
def test_unsupported_models_simulate_but_refuse_integer_and_export(cls, layer, splits):
    pytest.importorskip("onnx", reason="the export check needs onnx (test extra)")
    from quantref.export import onnx as export_onnx

    model = cls(rngs=nnx.Rngs(6))
    qmodel = ptq.quantize_model(model, splits.x_calib)
    fake, _ = ptq.fake_quant_forward(model, qmodel, splits.x_test)
    float_out = np.asarray(model(jnp.asarray(splits.x_test)))
    assert np.mean(np.argmax(fake, 1) == np.argmax(float_out, 1)) >= 0.9
    for call in (
        lambda: integer.multipliers(qmodel),
        lambda: export_onnx.quantized_model_proto(qmodel),
    ):
        with pytest.raises(ValueError, match=f"after layer '{layer}'"):
            call()
