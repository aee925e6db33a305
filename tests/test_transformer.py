"""Tests for the second walkthrough model and the algorithms chapter 8 runs on it: the corpus (quantref.text), the
character transformer (quantref.transformer), weight-only quantization with its packed files (quantref.weight_only)
and the equivalence scalings of SmoothQuant and AWQ (quantref.scaling). A tiny configuration keeps each test to
seconds; the trained model is chapter 8's business."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from quantref import formats, gptq, nn, scaling, text, transformer, weight_only

TINY = transformer.TransformerConfig(context=16, width=32, depth=2, heads=2, mlp_ratio=2)
INT3 = formats.int_format(3)  # the full signed grid, [-4, 3]


@nnx.jit
def _forward(model, ids):
    # Compiled once per model structure: an eager call compiles every operation of the model on its own.
    return model(ids)


def logits(model, ids):
    return np.asarray(_forward(model, jnp.asarray(ids, jnp.int32)))


@pytest.fixture(scope="module")
def corpus():
    return text.load_corpus()


@pytest.fixture(scope="module")
def model():
    """A tiny model trained for a few steps, so that its weights and activations are not at initialization."""
    fake = text.Corpus(text.encode("def f(x):\n    return x + 1\n" * 200), np.zeros(0), np.zeros(0), "-", "-")
    config = transformer.TrainConfig(steps=30, batch_size=8, warmup_steps=5, learning_rate=1e-2)
    return transformer.train(fake, config=TINY, train_config=config, progress=False)


@pytest.fixture(scope="module")
def batches(corpus):
    return [jnp.asarray(text.random_windows(corpus.train, TINY.context, 8, (1, i))[:, :-1]) for i in range(2)]


@pytest.fixture(scope="module")
def test_windows(corpus):
    return text.windows(corpus.test, TINY.context, 16)


# --- the corpus --------------------------------------------------------------------------------------------------


def test_the_split_is_fixed_disjoint_and_by_file(corpus):
    files = [set(text.TRAIN_FILES), set(text.VALIDATION_FILES), set(text.TEST_FILES)]
    assert not (files[0] & files[1] or files[0] & files[2] or files[1] & files[2])
    text.load_corpus.cache_clear()
    again = text.load_corpus()
    assert again.fingerprint == corpus.fingerprint
    for split in ("train", "validation", "test"):
        assert np.array_equal(getattr(again, split), getattr(corpus, split))
    # The test split is exactly its files, in order.
    first = text.encode((text.stdlib_dir() / text.TEST_FILES[0]).read_text(encoding="utf-8"))
    assert np.array_equal(corpus.test[: len(first)], first)
    assert len(corpus.train) > 10 * len(corpus.test)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=text.TRAIN_FILES[0]):
        text.load_corpus(str(tmp_path))


def test_encode_decode():
    source = "def f(x):\n\treturn x ~ 1\n"
    assert text.decode(text.encode(source)) == source
    assert list(text.encode("é€")) == [text.UNKNOWN_ID] * 2
    assert text.decode(text.encode("é")) == "?"
    with pytest.raises(ValueError, match="ids"):
        text.decode(np.array([text.VOCAB_SIZE]))


def test_windows_are_spread_and_random_windows_repeat_per_seed(corpus):
    ids = np.arange(1000) % 97
    spread = text.windows(ids, 9, 4)
    assert spread.shape == (4, 10)
    assert list(spread[:, 0]) == [ids[i * 25 * 10] for i in range(4)]  # 100 windows fit: every 25th
    assert np.array_equal(text.random_windows(ids, 9, 3, (0, 1)), text.random_windows(ids, 9, 3, (0, 1)))
    assert not np.array_equal(text.random_windows(ids, 9, 3, (0, 1)), text.random_windows(ids, 9, 3, (0, 2)))
    with pytest.raises(ValueError, match="count"):
        text.windows(ids, 9, 101)


# --- the model ---------------------------------------------------------------------------------------------------


def test_attention_is_causal(model):
    ids = np.array(text.encode("for i in range(9):"), np.int32)[None, : TINY.context]
    changed = ids.copy()
    changed[0, 10] = text.encode("#")[0]
    before, after = logits(model, ids), logits(model, changed)
    np.testing.assert_array_equal(before[0, :10], after[0, :10])  # the past does not see the future
    assert np.abs(before[0, 10:] - after[0, 10:]).min(axis=-1).max() > 0


def test_attention_matches_a_direct_computation(model):
    """One attention layer against a per-position loop in numpy: position t mixes values 0..t."""
    attn = model.blocks[0].attn
    x = np.random.default_rng(0).normal(size=(1, 5, TINY.width)).astype(np.float32)
    qkv = x[0] @ np.asarray(attn.qkv.kernel[...]) + np.asarray(attn.qkv.bias[...])
    q, k, v = np.split(qkv, 3, axis=-1)
    width = TINY.width // TINY.heads
    mixed = np.zeros((5, TINY.width), np.float32)
    for head in range(TINY.heads):
        cols = slice(head * width, (head + 1) * width)
        for t in range(5):
            scores = k[: t + 1, cols] @ q[t, cols] / np.sqrt(width)
            weights = np.exp(scores - scores.max())
            mixed[t, cols] = (weights / weights.sum()) @ v[: t + 1, cols]
    expected = mixed @ np.asarray(attn.out.kernel[...]) + np.asarray(attn.out.bias[...])
    np.testing.assert_allclose(np.asarray(_forward(attn, jnp.asarray(x)))[0], expected, rtol=1e-4, atol=1e-5)


def test_the_pipeline_finds_the_projections_by_path(model):
    assert list(nn.find_layers(model, skip="head")) == [
        f"blocks.{b}.{name}" for b in range(2) for name in ("attn.out", "attn.qkv", "mlp.down", "mlp.up")
    ]
    steps = nn.trace(model, jnp.zeros((1, 4), jnp.float32)).layer_steps()  # ids as floats, as the pipeline takes inputs
    assert list(steps)[:4] == ["blocks.0.attn.qkv", "blocks.0.attn.out", "blocks.0.mlp.up", "blocks.0.mlp.down"]


def test_training_is_deterministic_and_the_arrays_round_trip(model):
    fake = text.Corpus(text.encode("def f(x):\n    return x + 1\n" * 200), np.zeros(0), np.zeros(0), "-", "-")
    config = transformer.TrainConfig(steps=30, batch_size=8, warmup_steps=5, learning_rate=1e-2)
    again = transformer.train(fake, config=TINY, train_config=config, progress=False)
    arrays = transformer.model_to_arrays(model)
    for key, value in transformer.model_to_arrays(again).items():
        np.testing.assert_array_equal(value, arrays[key], err_msg=key)
    restored = transformer.model_from_arrays(arrays, TINY)
    ids = text.encode("return x")[None]
    np.testing.assert_array_equal(logits(restored, ids), logits(model, ids))
    with pytest.raises(ValueError, match="keys"):
        transformer.model_from_arrays({"head/kernel": arrays["head/kernel"]}, TINY)


def test_bits_per_char_is_the_mean_negative_log2_probability(model, test_windows):
    values = logits(model, test_windows[:, :-1]).astype(np.float64)
    shifted = values - values.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    picked = np.take_along_axis(log_probs, test_windows[:, 1:, None], axis=-1)
    expected = -picked.mean() / np.log(2)
    assert transformer.bits_per_char(model, test_windows, batch_size=5) == pytest.approx(expected, rel=1e-5)
    # A model that has learned nothing (zero logits) is uniform: log2(vocab) bits.
    blank = nn.map_kernels(model, lambda path, k: jnp.zeros_like(k) if path == "head" else k)
    blank.head.bias[...] = jnp.zeros(TINY.vocab_size)
    assert transformer.bits_per_char(blank, test_windows) == pytest.approx(np.log2(TINY.vocab_size), rel=1e-6)


def test_generation_repeats_per_seed(model):
    first = transformer.generate(model, "def ", 12, seed=3)
    assert len(first) == 12 and first == transformer.generate(model, "def ", 12, seed=3)
    with pytest.raises(ValueError, match="prompt"):
        transformer.generate(model, "", 5)


# --- weight-only quantization ------------------------------------------------------------------------------------


@pytest.mark.parametrize("narrow_range, divisor, low", [(True, 7.0, -7), (False, 7.5, -8)])
def test_group_scales_and_codes_against_a_numpy_reference(narrow_range, divisor, low):
    kernel = np.random.default_rng(1).normal(size=(32, 6)).astype(np.float32)
    fmt = formats.int_format(4, narrow_range=narrow_range)
    scale = np.asarray(weight_only.group_scales(kernel, fmt, 8))
    expected = np.abs(kernel).reshape(4, 8, 6).max(axis=1) / divisor
    np.testing.assert_array_equal(scale, expected.astype(np.float16).astype(np.float32))
    codes = np.asarray(weight_only.quantize_kernel(kernel, scale, fmt))
    rows = np.repeat(scale, 8, axis=0)
    np.testing.assert_array_equal(codes, np.clip(np.round(kernel / rows), low, 7))
    quant = weight_only.WeightQuant(jnp.asarray(codes), jnp.asarray(scale), fmt)
    assert quant.group_size == 8
    np.testing.assert_array_equal(np.asarray(quant.dequantize()), codes * rows)
    np.testing.assert_array_equal(np.asarray(weight_only.GroupFakeQuant(scale, fmt)(kernel)), codes * rows)
    assert weight_only.group_scales(kernel, fmt).shape == (6,)
    with pytest.raises(ValueError, match="group_size"):
        weight_only.group_scales(kernel, fmt, 5)
    with pytest.raises(ValueError, match="signed"):
        weight_only.group_scales(kernel, formats.UINT4, 8)


def test_full_grid_round_to_nearest_matches_qwix():
    qwix = pytest.importorskip("qwix")
    kernel = np.random.default_rng(4).normal(size=(64, 12)).astype(np.float32)
    scale = np.asarray(weight_only.group_scales(kernel, formats.INT4, 16))
    codes = np.asarray(weight_only.quantize_kernel(kernel, scale, formats.INT4))
    theirs = qwix.quantize(jnp.asarray(kernel), jnp.int4, channelwise_axes=(1,), tiled_axes={0: 16})
    # qwix keeps float32 scales, quantref rounds them to float16: equal up to that rounding, and so are the codes
    # except within that rounding of a tie, where they differ by one.
    np.testing.assert_allclose(scale, np.asarray(theirs.scale), rtol=1e-3)
    their_codes = np.asarray(theirs.qvalue).astype(np.int8)
    differ = codes != their_codes
    ratio = kernel / np.repeat(np.asarray(theirs.scale), 16, axis=0)
    assert np.all(np.abs(codes[differ] - their_codes[differ]) == 1)
    assert np.all(np.abs(np.abs(ratio[differ] - np.floor(ratio[differ])) - 0.5) < 4e-3 * np.abs(ratio[differ]))
    assert differ.mean() < 0.05


def test_quant_layers_compute_what_the_dequantized_kernels_compute(model, test_windows):
    weights = weight_only.rtn_weights(model, INT3, 16, skip="head")
    swapped = weight_only.fake_quant_model(model, weights)
    assert all(isinstance(layer, nn.QuantLayer) for path, layer in nn.find_layers(swapped, skip="head").items())
    ids = test_windows[:4, :-1]
    np.testing.assert_array_equal(logits(swapped, ids), logits(weight_only.dequantized_model(model, weights), ids))
    # Round-to-nearest through QuantLayer's weight quantizer on the float kernels gives the same model.
    direct = nn.swap_layers(
        model,
        lambda path, layer: (
            nn.QuantLayer(layer, weight_quantizer=weight_only.GroupFakeQuant(weights[path].scale, INT3))
            if path in weights
            else None
        ),
    )
    np.testing.assert_array_equal(logits(direct, ids), logits(swapped, ids))


def test_gptq_driver_lowers_each_layers_output_error(model, batches):
    rtn = weight_only.rtn_weights(model, INT3, 16, skip="head")
    solved = weight_only.gptq_weights(model, batches, INT3, 16, skip="head")
    assert set(solved) == set(rtn)
    for path in rtn:  # GPTQ chooses the rounding, not the grid
        np.testing.assert_array_equal(np.asarray(solved[path].scale), np.asarray(rtn[path].scale))
    # The first layer's input is the float one, so its output error on the calibration data is what GPTQ minimises.
    path = "blocks.0.attn.qkv"
    gram = scaling.input_statistics(model, batches, select=path)[path].gram
    kernel = nn.get_module(model, path).kernel[...]
    errors = [float(gptq.layer_error(kernel, w[path].dequantize(), gram)) for w in (rtn, solved)]
    assert errors[1] < 0.9 * errors[0]


def test_pack_bits_is_pack_int_for_nibbles_and_round_trips_every_width():
    rng = np.random.default_rng(2)
    for bits in (1, 2, 4):
        codes = rng.integers(-(1 << (bits - 1)), 1 << (bits - 1), size=37)
        np.testing.assert_array_equal(weight_only.pack_bits(codes, bits), np.asarray(formats.pack_int(codes, bits)))
    for bits in range(1, 9):
        codes = rng.integers(-(1 << (bits - 1)), 1 << (bits - 1), size=41)
        packed = weight_only.pack_bits(codes, bits)
        assert packed.size == -(-41 * bits // 8)
        np.testing.assert_array_equal(weight_only.unpack_bits(packed, bits, 41), codes)
    # 3 bits: eight codes in three bytes, little-endian bit order.
    assert list(weight_only.pack_bits(np.array([1, 2, 3, -1, 0, 0, 0, 0]), 3)) == [0b11010001, 0b00001110, 0]
    with pytest.raises(ValueError, match="fit"):
        weight_only.pack_bits(np.array([8]), 3)


def test_packed_file_round_trips_and_its_size_is_the_payload(model, tmp_path, test_windows):
    weights = weight_only.rtn_weights(model, INT3, 16, skip="head")
    path = tmp_path / "model.safetensors"
    size = weight_only.save_packed(path, model, weights)
    raw = path.read_bytes()
    assert size == len(raw)
    header_length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_length])
    payload = max(entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__")
    assert size == 8 + header_length + payload
    for layer, quant in weights.items():  # 3-bit codes: 3 bits each, rounded up to whole bytes; float16 scales
        assert header[f"{layer}.codes"] == {
            **header[f"{layer}.codes"],
            "dtype": "U8",
            "shape": [-(-quant.codes.size * 3 // 8)],
        }
        assert header[f"{layer}.scale"]["dtype"] == "F16"
        assert json.loads(header["__metadata__"][layer]) == {
            "bits": 3,
            "narrow_range": False,
            "shape": list(quant.codes.shape),
        }
    fresh = transformer.CharTransformer(TINY, rngs=nnx.Rngs(7))
    loaded = weight_only.load_packed(path, fresh)
    for layer, quant in weights.items():
        np.testing.assert_array_equal(np.asarray(loaded[layer].codes), np.asarray(quant.codes))
        np.testing.assert_array_equal(np.asarray(loaded[layer].scale), np.asarray(quant.scale))
    ids = test_windows[:4, :-1]
    np.testing.assert_array_equal(
        logits(weight_only.fake_quant_model(fresh, loaded), ids),
        logits(weight_only.fake_quant_model(model, weights), ids),
    )


# --- SmoothQuant and AWQ -----------------------------------------------------------------------------------------


def test_scaling_any_pair_leaves_the_function_unchanged(model, test_windows):
    rng = np.random.default_rng(3)
    for pair in transformer.scaling_pairs(TINY):
        scaled = scaling.scale_channels(model, pair, rng.uniform(0.1, 10.0, TINY.width))
        np.testing.assert_allclose(
            logits(scaled, test_windows[:4, :-1]), logits(model, test_windows[:4, :-1]), rtol=1e-4, atol=1e-4
        )
        assert not np.array_equal(
            np.asarray(nn.get_module(scaled, pair.layers[0]).kernel[...]),
            np.asarray(nn.get_module(model, pair.layers[0]).kernel[...]),
        )
    with pytest.raises(ValueError, match="positive"):
        scaling.scale_channels(model, transformer.scaling_pairs(TINY)[0], -np.ones(TINY.width))


def test_smoothquant_migrates_the_maxima_and_keeps_the_function(model, batches, test_windows):
    stats = scaling.input_statistics(model, batches)
    pairs = [pair for pair in transformer.scaling_pairs(TINY) if pair.columns is None]
    smoothed = scaling.smooth(model, stats, pairs, alpha=0.5)
    np.testing.assert_allclose(
        logits(smoothed, test_windows[:4, :-1]), logits(model, test_windows[:4, :-1]), rtol=1e-4, atol=1e-4
    )
    # With alpha = 0.5, each channel's activation maximum and weight-row maximum become equal.
    after = scaling.input_statistics(smoothed, batches, select=pairs[0].layers[0])[pairs[0].layers[0]]
    rows = np.abs(np.asarray(nn.get_module(smoothed, pairs[0].layers[0]).kernel[...])).max(axis=1)
    np.testing.assert_allclose(np.asarray(after.abs_max), rows, rtol=1e-3)
    expected = np.sqrt(
        np.asarray(stats[pairs[0].layers[0]].abs_max)
        * np.abs(np.asarray(nn.get_module(model, pairs[0].layers[0]).kernel[...])).max(axis=1)
    )
    np.testing.assert_allclose(rows, expected, rtol=1e-3)
    with pytest.raises(ValueError, match="alpha"):
        scaling.smoothquant_scales(np.ones(3), np.ones(3), 1.5)


def test_smoothquant_scales_match_qwix():
    smooth_quant = pytest.importorskip("qwix.contrib.smooth_quant")
    rng = np.random.default_rng(5)
    act, weight = rng.uniform(0.01, 30.0, 64).astype(np.float32), rng.uniform(0.01, 1.0, 64).astype(np.float32)
    for alpha in (0.0, 0.5, 0.85, 1.0):
        np.testing.assert_allclose(
            np.asarray(scaling.smoothquant_scales(act, weight, alpha)),
            np.asarray(smooth_quant.compute_scales_ratio(jnp.asarray(act), jnp.asarray(weight), alpha)),
            rtol=1e-6,
        )


def test_awqs_clip_never_raises_a_layers_calibration_error(model, batches):
    """With the clipping search (the default) each layer's output error on the calibration data, in the rescaled
    model, is at most what rounding the same scaled kernel on its full range gives."""
    stats = scaling.input_statistics(model, batches)
    pairs = transformer.scaling_pairs(TINY)
    scaled, clipped, _ = scaling.awq(model, stats, pairs, INT3, 16, skip="head")
    same, unclipped, _ = scaling.awq(model, stats, pairs, INT3, 16, skip="head", clip=False)
    scaled_stats = scaling.input_statistics(scaled, batches)
    gained = 0
    for path in clipped:
        kernel = nn.get_module(scaled, path).kernel[...]
        np.testing.assert_array_equal(kernel, nn.get_module(same, path).kernel[...])  # the clip changes no scale s
        errors = [
            float(gptq.layer_error(kernel, w[path].dequantize(), scaled_stats[path].gram)) for w in (clipped, unclipped)
        ]
        assert errors[0] <= errors[1] * (1 + 1e-4)
        gained += errors[0] < 0.99 * errors[1]
    assert gained >= len(clipped) // 2


def test_awq_keeps_the_function_and_never_loses_to_rtn_on_calibration_data(model, batches, test_windows, tmp_path):
    stats = scaling.input_statistics(model, batches)
    pairs = transformer.scaling_pairs(TINY)
    scaled, weights, alphas = scaling.awq(model, stats, pairs, INT3, 16, skip="head")
    ids = test_windows[:4, :-1]
    np.testing.assert_allclose(logits(scaled, ids), logits(model, ids), rtol=1e-4, atol=1e-4)
    downs = {f"blocks.{block}.mlp.down" for block in range(TINY.depth)}  # after a GELU: scales kept as row scales
    assert set(alphas) == {pair.layers[0] for pair in pairs} | downs
    assert all((weights[path].row_scale is not None) == (path in downs) for path in weights)
    rtn = weight_only.rtn_weights(model, INT3, 16, skip="head")
    for layer in alphas:
        kernel = nn.get_module(model, layer).kernel[...]
        scale, alpha, losses = scaling.awq_scales([kernel], stats[layer], INT3, 16)
        assert alpha == alphas[layer]
        rtn_loss = gptq.layer_error(kernel, rtn[layer].dequantize(), stats[layer].gram)
        np.testing.assert_allclose(float(losses[0]), float(rtn_loss), rtol=1e-4)  # alpha = 0 is RTN
        assert float(losses.min()) <= float(rtn_loss) * (1 + 1e-6)  # up to float32 summation order
    # The row scales go through the fake-quant layers and the packed file like the rest.
    swapped = weight_only.fake_quant_model(scaled, weights)
    np.testing.assert_array_equal(logits(swapped, ids), logits(weight_only.dequantized_model(scaled, weights), ids))
    weight_only.save_packed(tmp_path / "awq.safetensors", scaled, weights)
    fresh = transformer.CharTransformer(TINY, rngs=nnx.Rngs(3))
    loaded = weight_only.load_packed(tmp_path / "awq.safetensors", fresh)
    np.testing.assert_array_equal(logits(weight_only.fake_quant_model(fresh, loaded), ids), logits(swapped, ids))
