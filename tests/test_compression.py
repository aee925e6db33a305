"""Tests for quantref.coding and quantref.compression: Huffman codes against an independent construction and the
entropy bound, k-means against scikit-learn, centroid gradients as summed member gradients, and the compressed file:
a bit-exact round trip, and a clear error for every truncated or corrupted file."""

import heapq
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from test_pruning import random_model

from quantref import coding, compression, models, nn, pruning

# --- Huffman codes -----------------------------------------------------------------------------------------------


def _reference_huffman_cost(counts):
    """The optimal total code length, computed independently: a Huffman tree's cost is the sum of the weights of
    its internal nodes (van Leeuwen's two-queue construction over the sorted counts)."""
    leaves = sorted(int(c) for c in counts if c > 0)
    if len(leaves) == 1:
        return leaves[0]  # one symbol: one bit each
    merged, cost = [], 0
    leaf_index = 0

    def pop():
        nonlocal leaf_index
        if leaf_index < len(leaves) and (not merged or leaves[leaf_index] <= merged[0]):
            leaf_index += 1
            return leaves[leaf_index - 1]
        return heapq.heappop(merged)

    while len(leaves) - leaf_index + len(merged) > 1:
        weight = pop() + pop()
        cost += weight
        heapq.heappush(merged, weight)
    return cost


@pytest.mark.parametrize("seed", range(6))
def test_huffman_total_length_is_optimal_and_within_one_bit_of_entropy(seed):
    rng = np.random.default_rng(seed)
    alphabet = int(rng.integers(2, 300))
    counts = rng.zipf(1.3 + seed / 5, size=alphabet) * (rng.uniform(size=alphabet) < 0.8)
    counts[:2] += 1
    lengths = coding.huffman_code_lengths(counts)
    total = coding.coded_bits(counts, lengths)
    assert total == _reference_huffman_cost(counts)
    entropy = coding.entropy_bits(counts)
    assert entropy <= total < entropy + counts.sum()
    assert np.all((lengths > 0) == (counts > 0))


def test_huffman_on_a_textbook_example_and_the_one_symbol_code():
    lengths = coding.huffman_code_lengths([45, 13, 12, 16, 9, 5])  # CLRS 16.3: a=0, c=100, b=101, f=1100, e=1101
    np.testing.assert_array_equal(lengths, [1, 3, 3, 3, 4, 4])
    assert coding.coded_bits([45, 13, 12, 16, 9, 5], lengths) == 224
    np.testing.assert_array_equal(coding.huffman_code_lengths([0, 7, 0]), [0, 1, 0])
    codes = coding.canonical_codes([2, 1, 3, 3])
    np.testing.assert_array_equal(codes, [0b10, 0b0, 0b110, 0b111])


def test_canonical_codes_are_prefix_free_and_round_trip():
    rng = np.random.default_rng(7)
    counts = rng.integers(0, 40, size=50)
    lengths = coding.huffman_code_lengths(counts)
    codes = coding.canonical_codes(lengths)
    words = [format(int(codes[s]), f"0{lengths[s]}b") for s in np.flatnonzero(lengths)]
    assert not any(a != b and b.startswith(a) for a in words for b in words)
    symbols = rng.permutation(np.repeat(np.arange(50), counts))
    writer = coding.BitWriter()
    writer.write_varint(1234567)
    writer.write_symbols(symbols, lengths)
    writer.write(5, 3)
    reader = coding.BitReader(writer.getvalue())
    assert reader.read_varint() == 1234567
    np.testing.assert_array_equal(reader.read_symbols(len(symbols), lengths), symbols)
    assert reader.read(3) == 5
    with pytest.raises(ValueError, match="truncated"):
        reader.read(8)


def test_code_lengths_that_are_no_prefix_code_are_refused():
    with pytest.raises(ValueError, match="complete prefix code"):
        coding.canonical_codes([1, 1, 1])
    with pytest.raises(ValueError, match="complete prefix code"):
        coding.canonical_codes([2, 2, 2])
    with pytest.raises(ValueError, match="non-negative integers"):
        coding.huffman_code_lengths([3, -1])


# --- weight sharing ----------------------------------------------------------------------------------------------


def test_kmeans_equals_scikit_learn_lloyd_from_the_same_linear_start():
    cluster = pytest.importorskip("sklearn.cluster", reason="scikit-learn's KMeans is the independent implementation")
    # Mass everywhere in the range, so that no cluster ever empties (scikit-learn would move an empty one).
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.uniform(-1, 1, 1000), np.clip(rng.normal(0.2, 0.3, 1000), -1, 1)])
    for clusters in (4, 16):
        centroids, assignment = compression.kmeans_1d(values, clusters, iterations=300)
        assert np.all(np.bincount(assignment, minlength=clusters) > 0)
        start = np.linspace(values.min(), values.max(), clusters)[:, None]
        reference = cluster.KMeans(clusters, init=start, n_init=1, algorithm="lloyd", tol=0, max_iter=300)
        reference.fit(values[:, None])
        order = np.argsort(reference.cluster_centers_[:, 0])
        np.testing.assert_allclose(centroids, reference.cluster_centers_[order, 0], rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(assignment, np.argsort(order)[reference.labels_])
    linear, _ = compression.kmeans_1d(values, 4, iterations=0)
    np.testing.assert_allclose(linear, np.linspace(values.min(), values.max(), 4), rtol=1e-6)


@pytest.fixture(scope="module")
def pruned():
    """An untrained CNN, BatchNorm folded, magnitude-pruned to 80 %."""
    model = random_model(lambda: models.DigitsCNN(rngs=nnx.Rngs(0)))
    folded = nn.fold_batch_norm(model, np.zeros((1, 8, 8, 1), np.float32))
    return pruning.apply_masks(folded, pruning.magnitude_masks(folded, 0.8))


def test_share_weights_keeps_zeros_and_uses_at_most_2_to_the_b_values(pruned):
    shared = compression.share_weights(pruned, {"conv2": 3, "dense": 4})
    for path, bits in (("conv2", 3), ("dense", 4)):
        layer = nn.get_module(shared, path)
        kernel = np.asarray(layer.effective_kernel())
        original = np.asarray(nn.get_module(pruned, path).kernel[...])
        np.testing.assert_array_equal(kernel == 0, original == 0)
        assert len(np.unique(kernel[kernel != 0])) <= 2**bits
        centroids = np.asarray(layer.weight_quantizer.centroids[...])
        nearest = centroids[np.abs(original[original != 0][:, None] - centroids[None]).argmin(axis=1)]
        np.testing.assert_array_equal(kernel[kernel != 0], nearest)  # Lloyd's fixed point: each at its nearest
        linear = nn.get_module(compression.share_weights(pruned, {path: bits}, iterations=0), path)
        error = np.sum((kernel - original) ** 2)
        assert error < np.sum((np.asarray(linear.effective_kernel()) - original) ** 2)  # k-means lowers the error
    assert isinstance(shared.conv1, nnx.Conv)  # not listed: left alone


def test_centroid_gradient_is_the_sum_of_its_members_gradients(pruned):
    shared = compression.share_weights(pruned, 3, select="conv2")
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(8, 8, 8, 1)), jnp.float32)
    y = jnp.arange(8) % 10

    def loss(model):
        return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

    grads = nnx.grad(loss, argnums=nnx.DiffState(0, compression.Centroids))(shared)
    centroid_grad = np.asarray(grads["conv2"]["weight_quantizer"]["centroids"][...])
    # Independently: the gradient with respect to every weight of the shared kernel, summed per cluster.
    kernel = shared.conv2.effective_kernel()
    plain = nn.map_kernels(pruned, lambda path, k: kernel if path == "conv2" else k)
    weight_grad = np.asarray(nnx.grad(loss)(plain)["conv2"]["kernel"][...])
    indices = np.asarray(shared.conv2.weight_quantizer.indices[...])
    summed = np.bincount(indices[indices >= 0], weights=weight_grad[indices >= 0], minlength=8)
    np.testing.assert_allclose(centroid_grad, summed, rtol=1e-4, atol=1e-7)


def test_fine_tuning_centroids_moves_only_the_centroids(pruned):
    shared = compression.share_weights(pruned, 2)
    rng = np.random.default_rng(1)
    x, y = rng.uniform(size=(64, 8, 8, 1)).astype(np.float32), rng.integers(0, 10, 64).astype(np.int32)
    config = pruning.FineTuneConfig(steps=4, batch_size=32, learning_rate=1e-2)
    tuned = pruning.fine_tune(shared, x, y, config, wrt=compression.Centroids, progress=False)
    for path in ("conv1", "conv2", "dense"):
        before, after = nn.get_module(shared, path), nn.get_module(tuned, path)
        assert not np.array_equal(before.weight_quantizer.centroids[...], after.weight_quantizer.centroids[...])
        np.testing.assert_array_equal(before.weight_quantizer.indices[...], after.weight_quantizer.indices[...])
        np.testing.assert_array_equal(before.layer.bias[...], after.layer.bias[...])


# --- the file ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_model(pruned):
    return compression.share_weights(pruned, {"conv1": 2, "conv2": 4, "dense": 3})


def _assert_same(a: compression.CompressedModel, b: compression.CompressedModel):
    assert list(a.tensors) == list(b.tensors)
    for name, tensor in a.tensors.items():
        other = b.tensors[name]
        assert type(tensor) is type(other), name
        for field in ("values", "positions", "centroids", "indices"):
            mine, theirs = getattr(tensor, field, None), getattr(other, field, None)
            assert (mine is None) == (theirs is None), (name, field)
            if mine is not None:
                assert np.asarray(mine).dtype.kind == np.asarray(theirs).dtype.kind
                np.testing.assert_array_equal(np.asarray(mine).view(np.uint8), np.asarray(theirs).view(np.uint8))


@pytest.mark.parametrize("huffman", [True, False])
@pytest.mark.parametrize("bias_dtype", ["float32", "float16"])
def test_round_trip_is_bit_exact(shared_model, pruned, huffman, bias_dtype):
    compressed = compression.compress(shared_model, bias_dtype=bias_dtype)
    for tensor in compressed.tensors.values():
        if isinstance(tensor, compression.SparseTensor):  # only the centroids some weight uses are stored
            assert np.array_equal(np.unique(tensor.indices), np.arange(len(tensor.centroids)))
    blob = compression.encode(compressed, huffman=huffman)
    _assert_same(compression.decode(blob), compressed)
    assert compression.encode(compression.decode(blob), huffman=huffman) == blob
    loaded = compression.load_compressed(compression.decode(blob), pruned)
    for path in ("conv1", "conv2", "dense"):
        expected = np.asarray(nn.get_module(shared_model, path).effective_kernel())
        got = np.asarray(nn.get_module(loaded, path).kernel[...])
        assert got.tobytes() == expected.tobytes()  # bit for bit, +0.0 where pruned
    x = jnp.asarray(np.random.default_rng(2).uniform(size=(4, 8, 8, 1)), jnp.float32)
    if bias_dtype == "float32":
        np.testing.assert_array_equal(loaded(x), shared_model(x))


def test_sparse_raw_and_dense_tensors_round_trip(pruned):
    unfolded = random_model(lambda: models.DigitsCNN(rngs=nnx.Rngs(0)), 1)  # dense, with BatchNorm state
    for model in (pruned, unfolded):
        compressed = compression.compress(model)
        _assert_same(compression.decode(compression.encode(compressed)), compressed)
        arrays = compression.decompress(compressed)
        for path, layer in nn.find_layers(model).items():
            assert arrays[f"{path}.kernel"].tobytes() == np.asarray(layer.kernel[...]).tobytes()
    assert "bn1.mean" in compression.compress(unfolded).tensors
    assert isinstance(compression.compress(pruned).tensors["dense.kernel"], compression.SparseTensor)


def test_long_gaps_use_escapes():
    kernel = np.zeros((3000, 2), np.float32)
    kernel[[0, 1, 2999], [0, 1, 1]] = [1.5, -2.0, 3.0]  # gaps of 1, 2 and 5997
    tensor = compression.SparseTensor(kernel.shape, np.flatnonzero(kernel), kernel.ravel()[np.flatnonzero(kernel)])
    compressed = compression.CompressedModel({"w": tensor})
    for huffman in (True, False):
        decoded = compression.decode(compression.encode(compressed, huffman=huffman))
        np.testing.assert_array_equal(compression.decompress(decoded)["w"], kernel)


def test_every_truncation_and_corruption_is_an_error(shared_model):
    blob = compression.encode(compression.compress(shared_model, bias_dtype="float16"))
    for length in [0, 3, 4, 8, 12, *range(13, len(blob), 7), len(blob) - 1]:
        with pytest.raises(ValueError, match="truncated|not a quantref"):
            compression.decode(blob[:length])
    rng = np.random.default_rng(0)
    for position in rng.integers(4, len(blob), size=60):
        corrupted = bytearray(blob)
        corrupted[position] ^= 1 << int(rng.integers(8))
        with pytest.raises(ValueError, match="corrupted|truncated|version|longer"):
            compression.decode(bytes(corrupted))
    with pytest.raises(ValueError, match="not a quantref compressed model"):
        compression.decode(b"PK\x03\x04" + blob[4:])
    with pytest.raises(ValueError, match="version 2; this quantref reads version 1"):
        compression.decode(blob[:4] + b"\x02" + blob[5:])
    with pytest.raises(ValueError, match="longer than its header"):
        compression.decode(blob + b"\x00")


def _resealed(payload: bytes) -> bytes:
    """A file around ``payload`` with a correct length and checksum: what only the parser's own checks can catch."""
    head = compression.MAGIC + bytes([compression.VERSION]) + len(payload).to_bytes(4, "little") + payload
    return head + zlib.crc32(head).to_bytes(4, "little")


def test_structurally_broken_payloads_with_valid_checksums_are_errors(shared_model):
    blob = compression.encode(compression.compress(shared_model))
    payload = blob[9:-4]
    for cut in range(1, len(payload), 11):
        with pytest.raises(ValueError, match="truncated|corrupt"):
            compression.decode(_resealed(payload[:cut]))
    with pytest.raises(ValueError, match="data after the last tensor"):
        compression.decode(_resealed(payload + b"\x00"))
    writer = coding.BitWriter()
    writer.write_varint(1)
    writer.write_varint(1)
    writer.write_array(np.frombuffer(b"w", np.uint8), 8)
    writer.write_varint(1)
    writer.write_varint(4)
    writer.write(2, 2)  # sparse
    writer.write(2, 4)  # 2-bit gaps
    writer.write_varint(3)
    writer.write(0, 1)
    writer.write_array(np.array([2, 2, 2]), 2)  # positions 2, 5, 8: beyond 4 elements
    with pytest.raises(ValueError, match="beyond its 4 elements"):
        compression.decode(_resealed(writer.getvalue()))


def test_write_and_read_compressed(shared_model, tmp_path):
    compressed = compression.compress(shared_model)
    paths = compression.write_compressed(compressed, tmp_path / "out")
    assert paths == {"model": tmp_path / "out" / "model.qrc"}
    assert paths["model"].read_bytes() == compression.encode(compressed)
    _assert_same(compression.read_compressed(tmp_path / "out"), compressed)
    with pytest.raises(ValueError, match="not empty"):
        compression.write_compressed(compressed, tmp_path / "out")
    (tmp_path / "out" / "notes.txt").write_text("mine")
    compression.write_compressed(compressed, tmp_path / "out", huffman=False, force=True)
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"
    assert len(compression.encode(compressed, huffman=False)) == paths["model"].stat().st_size
    paths["model"].write_bytes(paths["model"].read_bytes()[:-1])
    with pytest.raises(ValueError, match="model.qrc is truncated"):
        compression.read_compressed(paths["model"])


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="values must be an array"):
        compression.kmeans_1d("weights", 4)
    with pytest.raises(TypeError, match="compressed must be a CompressedModel"):
        compression.encode({"w": np.ones(3)})
    with pytest.raises(TypeError, match="blob must be bytes"):
        compression.decode("model.qrc")
    with pytest.raises(ValueError, match="clusters must be an int in"):
        compression.kmeans_1d(np.ones(3), 0)


def test_compress_rejects_what_it_cannot_store(pruned):
    with pytest.raises(ValueError, match="bias_dtype must be one of"):
        compression.compress(pruned, bias_dtype="int8")
    masked = pruning.with_masks(pruned, pruning.magnitude_masks(pruned, 0.9))
    with pytest.raises(ValueError, match="wrapped with more than shared weights"):
        compression.compress(masked)
    with pytest.raises(ValueError, match="bits\\['conv1'\\] must be an int in"):
        compression.share_weights(pruned, {"conv1": 9})
    with pytest.raises(ValueError, match="no non-zero weight"):
        compression.share_weights(pruning.apply_masks(pruned, {"conv1": np.zeros((3, 3, 1, 16))}), 2)


def test_deep_compression_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("QUANTREF_CACHE", str(tmp_path))
    rng = np.random.default_rng(3)
    x, y = rng.uniform(size=(64, 8, 8, 1)).astype(np.float32), rng.integers(0, 10, 64).astype(np.int32)
    config = compression.DeepCompressionConfig(
        prune=pruning.FineTuneConfig(steps=4, batch_size=32),
        frequency=1,
        centroids=pruning.FineTuneConfig(steps=2, batch_size=32),
    )
    model = random_model(lambda: models.DigitsCNN(rngs=nnx.Rngs(0)))
    result = compression.deep_compression(model, x, y, config, progress=False)
    levels = pruning.sparsity(result.pruned)
    sizes = {"conv1": 144, "conv2": 4608, "dense": 5120}
    expected = {path: round(target * sizes[path]) / sizes[path] for path, target in config.sparsity}
    assert levels == pytest.approx(expected, abs=1e-6)
    arrays = compression.decompress(compression.decode(compression.encode(result.compressed)))
    np.testing.assert_array_equal(arrays["dense.kernel"], result.tuned.dense.effective_kernel())
    assert jax.tree.structure(nnx.state(result.tuned)) == jax.tree.structure(nnx.state(result.shared))
