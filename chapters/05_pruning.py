# %% [markdown]
# # 5. Pruning and compression: fewer weights, fewer bytes
#
# Quantization stores every weight with fewer bits. Pruning stores fewer weights: it sets most of them to zero and
# keeps the ones that matter. This chapter prunes the walkthrough CNN every way that is in common use — weight by
# weight by magnitude (per layer and globally), two of every four weights (the 2:4 pattern of sparse tensor cores),
# and whole channels — raises the sparsity gradually while fine-tuning, and measures per layer how much each one
# tolerates. Then it takes the model all the way to a file with Deep Compression (Han et al., arXiv:1510.00149):
# pruning, k-means weight sharing and Huffman coding, with the bytes on disk and the accuracy at each step. Everything
# is in `quantref.pruning`, `quantref.structured`, `quantref.compression` and `quantref.coding`, over the model
# pipeline of chapter 7.
#
# ## Magnitude pruning keeps the largest magnitudes
#
# To a sparsity $s$ (the fraction of zeros), a tensor of $n$ weights loses its $k = \operatorname{round}(s n)$
# weights of smallest magnitude:
#
# $$
# m_i = \mathbb 1\bigl[\,|w_i| > \tau\,\bigr], \qquad \tau = \text{the } k\text{-th smallest } |w_j|, \qquad
# \hat w = m \odot w .
# $$
#
# A popular write-up illustrates this with the weights $[0.6, 0.3, 0.5]$ and keeps $0.5$ while dropping $0.6$. No
# sparsity does that:

# %%
import os
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from quantref import coding, compression, data, integer, models, nn, pruning, ptq, structured, train

np.set_printoptions(precision=3, suppress=True)
weights = np.array([0.6, 0.3, 0.5], np.float32)
for zeros in (1, 2):
    mask = np.asarray(pruning.magnitude_mask(weights, zeros / 3))
    print(f"prune {zeros} of 3: mask {mask.astype(int)}, kept {weights[mask == 1]}")
signed = np.array([-0.6, 0.3, 0.5], np.float32)
print(f"[-0.6, 0.3, 0.5], prune 1: kept {signed[np.asarray(pruning.magnitude_mask(signed, 1 / 3)) == 1]}")
print(f"sum of w * sign(w) = {np.sum(signed * np.sign(signed)):.1f} = sum |w| = {np.abs(signed).sum():.1f}")

# %% [markdown]
# The same write-up gives $\sum_i w_i \operatorname{sign}(w_i)$ as the pruning criterion. But
# $w_i \operatorname{sign}(w_i) = |w_i|$, so the sum is $\lVert w\rVert_1$, one number for the whole tensor: it
# cannot say which weight to drop. It is a useful score for a whole *channel* — the L1 criterion of structured
# pruning, below — but the mask compares each $|w_i|$ with a threshold. And it is the magnitude that counts: $-0.6$
# outranks $0.5$.
#
# ## The model, and one-shot pruning
#
# The digits CNN (chapter 3), its BatchNorms folded into the convolutions (chapter 7). Pruning touches its three
# kernels. *One-shot* pruning zeros the smallest weights and changes nothing else. Layer-wise, every kernel loses the
# same fraction; globally, one threshold over all kernels decides, so a layer with many small weights loses more.
# Accuracy is on the 300 test images (one image is a third of a point); next to it, the test cross-entropy (nats
# per image), a finer measure that moves before the accuracy does.

# %%
splits = data.load_splits()
model = train.load_or_train()
example = splits.x_test[:1]
folded = nn.fold_batch_norm(model, example)
float_logits = np.asarray(folded(jnp.asarray(splits.x_test)))
float_accuracy = models.accuracy(folded, splits.x_test, splits.y_test)
kernels = {path: layer.kernel[...] for path, layer in nn.find_layers(folded).items()}
sizes = {path: kernel.size for path, kernel in kernels.items()}
print(f"float test accuracy {float_accuracy:.2%}; kernels {sizes}, {sum(sizes.values()):,} weights in all")


def scores(candidate):
    """(test accuracy, test cross-entropy in nats per image)."""
    logits = candidate(jnp.asarray(splits.x_test))
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(splits.y_test)).mean()
    return ptq.accuracy(logits, splits.y_test), float(loss)


def logit_sqnr(candidate):
    """The SQNR of a model's logits against the float model's, in dB."""
    error = np.asarray(candidate(jnp.asarray(splits.x_test))) - float_logits
    return float(10 * np.log10(np.sum(float_logits**2) / np.sum(error**2)))


sparsities = [0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
one_shot = {"layer": [], "global": []}
for value in tqdm(sparsities, desc="one-shot"):
    for scope in one_shot:
        pruned = pruning.apply_masks(folded, pruning.magnitude_masks(folded, value, scope=scope))
        one_shot[scope].append(scores(pruned)[0])
print("sparsity        " + "".join(f"{value:>7.0%}" for value in sparsities))
for scope, accuracies in one_shot.items():
    print(f"{scope + '-wise':<16}" + "".join(f"{accuracy:>7.1%}" for accuracy in accuracies))
global_masks = pruning.magnitude_masks(folded, 0.8, scope="global")
print("global 80 %: per-layer sparsity", {path: f"{1 - float(mask.mean()):.0%}" for path, mask in global_masks.items()})
print("mean |w| per layer, folded:", {path: f"{float(jnp.abs(kernel).mean()):.2f}" for path, kernel in kernels.items()})
print(f"conv1 before folding: {float(jnp.abs(model.conv1.kernel[...]).mean()):.2f}")

# %% [markdown]
# Half the weights go almost for free, one-shot; beyond that the accuracy collapses, and sooner layer-wise than
# globally: at 80 % the layer-wise model keeps 42.7 %, the global one 89.3 %. The global threshold spares conv1: its
# weights are large — folding multiplied them by the BatchNorm's $\gamma/\sigma$, which took their mean magnitude
# from 0.33 to 0.84 — so at 80 % overall conv1 loses 4 % and the two big layers take the rest. Which layer can take
# how much is worth measuring directly.
#
# ## Sensitivity: one layer at a time
#
# Han et al. (arXiv:1506.02626) set per-layer sparsities from a scan: prune one layer alone, to increasing
# sparsity, and watch the accuracy. `pruning.sensitivity_scan` does it with one-shot magnitude masks; the same scan
# with the SQNR of the logits against the float model's shows the damage before the accuracy does.

# %%
scan_sparsities = [0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98]
sensitivity = pruning.sensitivity_scan(folded, lambda candidate: scores(candidate)[0], scan_sparsities)
sensitivity_sqnr = pruning.sensitivity_scan(folded, logit_sqnr, scan_sparsities[1:])
print("layer alone     " + "".join(f"{value:>7.0%}" for value in scan_sparsities))
for path, curve in sensitivity.items():
    print(f"{path:<16}" + "".join(f"{accuracy:>7.1%}" for accuracy in curve))
for path, curve in sensitivity_sqnr.items():
    print(f"{path} logit SQNR at 30 % and 50 %: {curve[0]:.1f} dB, {curve[1]:.1f} dB")

figure, axes = plt.subplots(1, 2, figsize=(11, 3.6))
for scope, accuracies in one_shot.items():
    axes[0].plot(sparsities, accuracies, "o-", label=f"one-shot, {scope}-wise")
for path, curve in sensitivity.items():
    axes[1].plot(scan_sparsities, curve, "o-", label=f"{path} alone ({sizes[path]} weights)")
axes[0].set(xlabel="sparsity", ylabel="test accuracy", title="Pruning the whole model at once")
axes[1].set(xlabel="sparsity of that layer", ylabel="test accuracy", title="Per-layer sensitivity")
for ax in axes:
    ax.legend()
figure.tight_layout()
plt.show()

# %% [markdown]
# conv1 — 144 weights that every later feature is built from — is by far the most sensitive: pruned alone to 70 %
# it costs more than ten points (86.3 %). conv2 keeps 98.3 % up to 80 %; the dense layer gives way earlier but more
# gently, and keeps 92.3 % at 90 %. The SQNR column says the same sooner: at 50 %, conv1 is already at 8.8 dB. These
# curves are one-shot; with fine-tuning every layer goes much further, but in the same order.
#
# ## Gradual pruning with fine-tuning
#
# One-shot pruning removes weights and leaves the rest where they were; the network never gets to adapt. Zhu and
# Gupta (arXiv:1710.01878) instead raise the sparsity while training, along a cubic curve from $s_i$ at step $t_0$
# to $s_f$ at step $t_0 + n\Delta t$, re-pruning by magnitude every $\Delta t$ steps:
#
# $$
# s_t = s_f + (s_i - s_f)\left(1 - \frac{t - t_0}{n \Delta t}\right)^3 .
# $$
#
# It prunes fast while there are many redundant weights and slowly near the end, when each removal costs more.
# `pruning.polynomial_sparsity` is that curve (the tests check it against torchao's `CubicSL` and the formula of
# TensorFlow's model-optimization toolkit). `pruning.fine_tune` trains with optax through the pipeline's
# `QuantLayer` with an `nn.Mask`: the forward pass uses $W \odot M$, so a pruned weight gets no gradient, and
# after each step the kernel is set back to $W \odot M$, so momentum and weight decay cannot move it either — pruned
# weights are exactly zero throughout. The pruning runs on the model *with* its BatchNorms, in training mode, and
# folds them afterwards; the fine-tuned models are cached on disk like the float one.

# %%
steps, end = 1000, 600
schedule_curve = [float(pruning.polynomial_sparsity(t, 0.9, end_step=end, frequency=25)) for t in range(steps)]
print("scheduled sparsity at steps 0, 100, 300, 600:", [f"{schedule_curve[t]:.3f}" for t in (0, 100, 300, 600)])
config = pruning.FineTuneConfig(steps=steps, learning_rate=3e-3)
gradual_sparsities = [0.5, 0.75, 0.9, 0.95]
gradual = {}
for value in tqdm(gradual_sparsities, desc="gradual pruning"):
    schedule = pruning.Schedule(final_sparsity=value, end_step=end, frequency=25)
    tuned = pruning.load_or_fine_tune(model, splits.x_train, splits.y_train, config, schedule=schedule)
    gradual[value] = nn.fold_batch_norm(tuned, example)
    accuracy, loss = scores(gradual[value])
    print(f"{value:.0%} in every layer, gradual + fine-tuned: accuracy {accuracy:.2%}, test loss {loss:.3f}")
left = int(jnp.sum(gradual[0.95].conv1.kernel[...] != 0))
print(f"conv1 weights left at 95 %: {left} of {sizes['conv1']}")

figure, axes = plt.subplots(1, 2, figsize=(11, 3.4))
axes[0].plot(schedule_curve)
axes[0].set(xlabel="training step", ylabel="sparsity", title="Cubic schedule (s_f = 90 %, Δt = 25)")
axes[1].plot(sparsities, one_shot["layer"], "o-", label="one-shot, layer-wise")
axes[1].plot(gradual_sparsities, [scores(m)[0] for m in gradual.values()], "s-", label="gradual + fine-tuning")
axes[1].set(xlabel="sparsity (every layer)", ylabel="test accuracy", title="Fine-tuning recovers the accuracy")
axes[1].legend()
figure.tight_layout()
plt.show()

# %% [markdown]
# The cubic curve is at 0.787 by step 300, half-way to its end, and reaches its 0.9 at step 600. With fine-tuning
# the accuracy curve moves far to the right: at 90 % in every layer the fine-tuned model keeps 97.67 %, where
# one-shot pruning kept 13.0 %; the network re-learns with the weights it has left. At 95 % the uniform target
# takes conv1 down to 7 of its 144 weights, and the accuracy falls to 94.33 % — the sensitivity scan said to spare
# conv1, so Deep Compression, below, gives each layer its own target.
#
# ## N:M sparsity: two of every four
#
# Unstructured zeros are scattered, and a dense kernel multiplies by them all the same. NVIDIA's sparse tensor
# cores skip them if the pattern is regular: in every group of 4 consecutive weights along the input (reduction)
# dimension, at most 2 are non-zero, so the hardware stores 2 values and a 2-bit index each, and runs at twice the
# dense rate. `pruning.n_m_mask` keeps the 2 largest magnitudes of each group. conv1 has one input channel, so it
# has no groups of 4; conv2 and the dense layer do.

# %%
two_four = {path: pruning.n_m_mask(folded_kernel, 2, 4) for path, folded_kernel in kernels.items() if path != "conv1"}
print("2:4 mask of the dense kernel, 4 outputs (rows) x its first 8 inputs:\n", np.asarray(two_four["dense"][:8, :4]).T)
print("2:4 one-shot:", "accuracy {:.2%}, test loss {:.3f}".format(*scores(pruning.apply_masks(folded, two_four))))
bn_two_four = {path: pruning.n_m_mask(nn.get_module(model, path).kernel[...], 2, 4) for path in ("conv2", "dense")}
tuned_two_four = pruning.load_or_fine_tune(model, splits.x_train, splits.y_train, config, masks=bn_two_four)
tuned_two_four = nn.fold_batch_norm(tuned_two_four, example)
print("2:4 fine-tuned:", "accuracy {:.2%}, test loss {:.3f}".format(*scores(tuned_two_four)))

# %% [markdown]
# Each row has two ones in every group of four. Half of conv2 and of the dense layer go, in a pattern hardware can
# use, and one-shot the accuracy does not even move (99.00 %): 2:4 removes only the smaller two of every four, and
# these layers have the redundancy. The test loss shows the damage (0.059), and fine-tuning with the masks fixed
# takes it to 0.013.
#
# ## Structured pruning: a smaller network
#
# Zeros save time only where a kernel skips them. Removing whole output channels needs no special kernel: the
# pruned layer's kernel and bias lose those columns, the BatchNorm after it loses those channels (scale, offset and
# running statistics), and the next layer loses the matching input rows — after a flatten, every spatial position's
# copy of the channel. What is left is a dense network with fewer channels. `structured.prune_channels` ranks channels
# by the L1 norm of their weights (Li et al., arXiv:1608.08710; the same channels as torch's `ln_structured`, as the
# tests check) and shrinks the arrays, finding the BatchNorm and the next layer from the traced network.

# %%
small = structured.prune_channels(model, example, 0.5, ord=1)
for name in ("conv1", "bn1", "conv2", "bn2", "dense"):
    before, after = nn.get_module(model, name), nn.get_module(small, name)
    array = "kernel" if hasattr(before, "kernel") else "mean"
    print(f"{name:>5}.{array:<6} {getattr(before, array).shape} -> {getattr(after, array).shape}")
small_accuracy, small_loss = scores(nn.fold_batch_norm(small, example))
print(f"half the channels, one-shot: accuracy {small_accuracy:.2%}, test loss {small_loss:.3f}")
small_tuned = nn.fold_batch_norm(pruning.load_or_fine_tune(small, splits.x_train, splits.y_train, config), example)
print("half the channels, fine-tuned: accuracy {:.2%}, test loss {:.3f}".format(*scores(small_tuned)))

# %% [markdown]
# One-shot, removing half the channels wrecks the network (47.33 %) — each removed channel took a whole feature
# map with it — but fine-tuning brings the accuracy back (99.67 %). The smaller network computes a quarter of
# conv2's multiplications (half the inputs times half the outputs) and half of conv1's and the dense layer's. Is it
# faster? The jit'd forward pass at batch 1024, against the unpruned model, next to the 90 %-sparse and 2:4 models
# (the same dense shapes, with zeros) and to both networks with conv1 run as XLA's own convolution (explained
# below), the calls interleaved in a random order so that all see the same load:


# %%
def jit_forward(candidate, x):
    graphdef, state = nnx.split(candidate)
    forward = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
    return lambda: forward(state, x).block_until_ready()


def with_xla_conv1(candidate):
    """A copy whose conv1 runs as XLA's own convolution instead of the model's nine multiply-adds."""
    copy = nnx.clone(candidate)
    copy.conv1.conv_general_dilated = jax.lax.conv_general_dilated
    return copy


x_batch = jnp.asarray(splits.x_test[np.random.default_rng(0).integers(0, len(splits.x_test), 1024)])
paths = {
    "unpruned": jit_forward(folded, x_batch),
    "half the channels": jit_forward(small_tuned, x_batch),
    "90 % unstructured": jit_forward(gradual[0.9], x_batch),
    "2:4 (conv2, dense)": jit_forward(tuned_two_four, x_batch),
    "unpruned, XLA conv1": jit_forward(with_xla_conv1(folded), x_batch),
    "half, XLA conv1": jit_forward(with_xla_conv1(small_tuned), x_batch),
}
times = {name: [] for name in paths}
for function in paths.values():
    function()
order = np.random.default_rng(0)
for _ in range(15):
    for name in order.permutation(list(paths)):
        start = time.perf_counter()
        paths[name]()
        times[name].append(time.perf_counter() - start)
for name, values in times.items():
    baseline = "unpruned, XLA conv1" if "XLA" in name else "unpruned"
    ratio = statistics.median(times[baseline]) / statistics.median(values)
    print(f"{name:<20} median {statistics.median(values) * 1e3:6.2f} ms  speed-up {ratio:.2f}x")

# %% [markdown]
# The unstructured and 2:4 models do every multiplication of the dense one — XLA's CPU convolution does not look
# at the values — so any difference between their times and the unpruned time is noise (run the cell again and it
# moves); they would need sparse kernels, or sparse tensor cores for 2:4, to gain anything. The smaller network is
# faster, though by less than its count of multiplications: at 8 to 32 channels XLA's CPU convolutions run far
# below the machine's peak.
#
# The last two rows are a lesson about kernels. The walkthrough model computes conv1, whose input has one channel,
# as nine multiply-adds of shifted copies of the image (`models.tap_conv`: XLA's convolution up to float32 rounding).
# XLA's own CPU convolution first builds the nine-value patch of every pixel and then contracts it with the
# kernel; with a contraction that short the patches are the work, whatever the number of output channels. With it,
# conv1 costs about as much at 8 channels as at 16, takes a large share of the forward pass, and hides most of what
# pruning saved. A smaller network is faster only if its kernels' cost follows its size. `benchmarks/pruning.py`
# measures all this with more rounds, at batch 1 too, layer by layer, and with torch's pruning utilities and
# onnxruntime side by side (torch's utilities mask; they do not shrink); its results are on the benchmarks page.
# The timings here come from one short run on a shared machine.
#
# ## Deep Compression: from weights to bytes
#
# Han, Mao and Dally compress in three stages, each multiplying the savings of the one before:
#
# 1. **Prune**, gradually with fine-tuning, each layer to its own sparsity (from the sensitivity scan), and store
#    only the survivors, each with the distance from the previous one — a small number that fits in a few bits;
#    a gap too long for them is bridged by an escape symbol that stores no weight.
# 2. **Share weights**: cluster each layer's survivors into $2^b$ values with k-means (centroids initialised evenly
#    between the smallest and largest weight, which keeps a few centroids on the rare large weights), store each
#    weight as its $b$-bit cluster index and the centroids once. Then fine-tune the centroids: with $W_i = c_{I_i}$,
#    $\partial \mathcal L / \partial c_k = \sum_{i: I_i = k} \partial \mathcal L / \partial W_i$, the sum of the
#    gradients of the cluster's members — exactly what automatic differentiation of the gather $c[I]$ computes.
# 3. **Huffman-code** the cluster indices and the gaps, whose distributions are far from uniform.
#
# `compression.deep_compression` runs the three stages (the fine-tuned models are cached), and
# `compression.write_compressed` writes a real file, `model.qrc`, whose format is versioned and documented in
# `quantref.compression`: a header with a magic number, version and length, the tensors as one bit stream, and a
# CRC-32. Each stage below is written to disk and read back, and the accuracy is that of the model read back.

# %%
dc = compression.deep_compression(model, splits.x_train, splits.y_train)
print("per-layer sparsity:", {path: f"{value:.1%}" for path, value in pruning.sparsity(dc.pruned).items()})
bits_per_layer = dict(compression.DeepCompressionConfig().bits)
print("bits per shared weight:", bits_per_layer)
stages = {
    "float32, dense": (compression.compress(folded, sparse=False), False),
    "pruned: sparse, float32 values": (compression.compress(dc.pruned), False),
    "+ shared weights (k-means)": (compression.compress(dc.shared), False),
    "+ centroids fine-tuned": (compression.compress(dc.tuned), False),
    "+ Huffman coding": (compression.compress(dc.tuned), True),
    "+ float16 biases": (dc.compressed, True),
}
out_dir = tempfile.mkdtemp(prefix="quantref-compressed-")
npz_path = os.path.join(out_dir, "float32.npz")
np.savez(npz_path, **train.model_to_arrays(folded))
print(f"for reference, the folded float32 model as an .npz: {os.path.getsize(npz_path):,} bytes\n")
table = []
for label, (compressed, huffman) in stages.items():
    path = compression.write_compressed(compressed, out_dir, huffman=huffman, force=True)["model"]
    read_back = compression.load_compressed(compression.read_compressed(path), folded)
    table.append((label, path.stat().st_size, *scores(read_back)))
print(f"{'stage':<32} {'bytes':>7} {'smaller':>8} {'accuracy':>9} {'test loss':>10}")
for label, size, accuracy, loss in table:
    print(f"{label:<32} {size:>7,} {table[0][1] / size:>7.1f}x {accuracy:>9.2%} {loss:>10.3f}")
final_ratio, final_change = table[0][1] / table[-1][1], 100 * (table[-1][2] - table[0][2])
print(f"\nfinal: {final_ratio:.1f}x smaller than the float32 file, accuracy {final_change:+.2f} points")
print("for comparison, Deep Compression (Han et al., Table 1): LeNet-300-100 40x, LeNet-5 39x")

# %% [markdown]
# Pruning alone makes the file 16.2× smaller (each survivor still costs 32 bits and a gap), weight sharing takes
# it to 38.0×, Huffman coding to 40.1× and half-precision biases to 45.4×: 877 bytes for the whole network, at the
# float model's accuracy (the +0.33 points are one test image, noise). That is further than the paper's LeNets
# went, on a network with far fewer weights to lose. Centroid fine-tuning is what makes 4-bit sharing free: k-means
# alone leaves the test loss at 0.077, and a few hundred steps on 16 numbers per layer bring it to 0.050. Where do
# the bytes go, and why does Huffman coding gain so little?


# %%
def tensor_bytes(compressed, name):
    single = compression.CompressedModel({name: compressed.tensors[name]})
    return len(compression.encode(single)) - 13  # minus the file's own header, length and checksum


sparse_tensors = {name: t for name, t in dc.compressed.tensors.items() if isinstance(t, compression.SparseTensor)}
for name, tensor in sparse_tensors.items():
    size, kept_weights = tensor_bytes(dc.compressed, name), len(tensor.positions)
    print(
        f"{name:<13} {kept_weights:>4} weights kept of {int(np.prod(tensor.shape)):>5}: {size:>4} bytes, "
        f"{8 * size / kept_weights:.1f} bits per kept weight (index, gap, a share of the codebook)"
    )
    gaps = np.diff(tensor.positions, prepend=-1)
    index_entropy = coding.entropy_bits(np.bincount(tensor.indices)) / kept_weights
    gap_entropy = coding.entropy_bits(np.bincount(gaps)) / kept_weights
    print(f"{'':<13} entropy per kept weight: cluster index {index_entropy:.2f} bits of 4, gap {gap_entropy:.2f} bits")
bias_bytes = sum(tensor_bytes(dc.compressed, name) for name in dc.compressed.tensors if name.endswith("bias"))
codebook_bytes = sum(4 * len(tensor.centroids) for tensor in sparse_tensors.values())
print(
    f"codebooks: {codebook_bytes} bytes; biases: {bias_bytes} bytes; together "
    f"{(codebook_bytes + bias_bytes) / table[-1][1]:.0%} of the whole file's {table[-1][1]} bytes"
)
for name, tensor in sparse_tensors.items():
    used = len(tensor.centroids)
    unused = 2 ** bits_per_layer[name.split(".")[0]] - used
    print(f"{name} codebook: {used} centroids used, {4 * used} bytes; {unused} unused, not stored")
print(f"Huffman coding saved {table[3][1] - table[4][1]} bytes")

# %% [markdown]
# Each cluster index carries less than its 4 bits of information (2.69 to 3.48), and the gaps between survivors
# are close to their entropy already in the best fixed width the encoder picks for each layer, so Huffman coding can
# only remove the difference: 54 bytes. The paper's layers had hundreds of thousands of weights; here 34 % of the
# file is what no entropy coder touches — the codebooks (136 bytes) and the biases (161). conv1 pays most per
# weight: its 58 survivors carry a codebook of 13 float32 centroids. Why not 16? Linear initialisation spreads the
# centroids evenly over the range of the surviving weights, and some land where no weight is: 3, 4 and 7 of the 16
# per layer end up with no member, and the file stores only the centroids that some weight uses.
#
# What k-means did to conv2:

# %%

conv2_before = np.asarray(dc.pruned.conv2.kernel[...])
figure, ax = plt.subplots(figsize=(9, 3.2))
ax.hist(conv2_before[conv2_before != 0], bins=80, color="lightgray", label="conv2 weights kept by pruning")
for model_stage, style, label in ((dc.shared, "--", "k-means centroids"), (dc.tuned, "-", "after fine-tuning")):
    for index, centroid in enumerate(np.asarray(model_stage.conv2.weight_quantizer.centroids[...])):
        ax.axvline(
            centroid, ls=style, lw=0.9, color="C0" if style == "--" else "C3", label=label if not index else None
        )
ax.set(xlabel="weight", ylabel="count", title="Weight sharing in conv2: 16 values for every weight that is left")
ax.legend()
figure.tight_layout()
plt.show()

# %% [markdown]
# Pruning cut a hole around zero in the distribution, and the linear initialisation put centroids across the
# whole range, hole included. k-means moved the others onto the two sides, and fine-tuning moved them further, each
# by the summed gradient of its members; a centroid in the hole has no members, so neither step moves it.
#
# The file reads back bit for bit — every kernel is exactly the one the fine-tuned model computes with — and a
# truncated or corrupted file is refused with an error that says so, never read as a different model (the tests cut
# and flip bits everywhere in it):

# %%
path = compression.write_compressed(dc.compressed, out_dir, force=True)["model"]
read_back = compression.read_compressed(path)
same = all(
    np.asarray(compression.decompress(read_back)[f"{p}.kernel"]).tobytes()
    == np.asarray(nn.get_module(dc.tuned, p).effective_kernel()).tobytes()
    for p in ("conv1", "conv2", "dense")
)
print("kernels read back bit for bit:", same)
blob = path.read_bytes()
for label, broken in (("truncated", blob[:-7]), ("one bit flipped", blob[:300] + bytes([blob[300] ^ 4]) + blob[301:])):
    try:
        compression.decode(broken)
    except ValueError as error:
        print(f"{label}: ValueError: {error}")

# %% [markdown]
# ## Into the integer pipeline
#
# A pruned or compressed model is still a model of the pipeline: read back, it quantizes like any other (chapter
# 7), and zeros stay zeros on the symmetric int8 grid. The integer-only network runs it:

# %%
decompressed = compression.load_compressed(read_back, folded)
qmodel = ptq.quantize_model(decompressed, splits.x_calib)
output = integer.integer_forward(qmodel, integer.multipliers(qmodel, "onnxruntime"), splits.x_test)
zero_codes = sum(int(np.sum(np.asarray(layer.kernel) == 0)) for layer in qmodel.layers.values())
kept = sum(len(tensor.positions) for tensor in sparse_tensors.values())
print(f"int8 codes that are 0: {zero_codes} (pruned: {sum(sizes.values()) - kept})")
print(f"integer-only accuracy of the compressed model: {ptq.accuracy(output.output, splits.y_test):.2%}")

# %% [markdown]
# ## Where sparsity saves time
#
# - **Structured** (fewer channels): everywhere, with no special kernels — the network is simply smaller; measured
#   above and in `benchmarks/pruning.py`.
# - **Unstructured** (scattered zeros): on a CPU or GPU, only with sparse kernels, which pay for their index
#   bookkeeping and win only at high sparsity on large layers; with dense kernels, as measured above, not at all. It
#   saves *bytes*, as the Deep Compression table shows.
# - **2:4**: on GPUs with sparse tensor cores (NVIDIA Ampere and later), up to twice the dense rate for the matrix
#   products; on a CPU with dense kernels, nothing.
#
# ## Exercises
#
# **Exercise 5.1.** Prune the folded model one-shot to 70 % with the global threshold and with a per-layer
# target from the sensitivity scan (dense 85 %, conv2 55 %, conv1 20 %: about as many weights in all). Which is
# better?

# %% tags=["solution"]
targets = {"conv1": 0.2, "conv2": 0.55, "dense": 0.85}
print("per-layer targets:", {path: f"{value:.0%}" for path, value in targets.items()})
for label, masks in (
    ("global 70 %", pruning.magnitude_masks(folded, 0.7, scope="global")),
    ("per layer", pruning.magnitude_masks(folded, targets)),
):
    removed = sum(int(np.sum(np.asarray(mask) == 0)) for mask in masks.values())
    pruned = pruning.apply_masks(folded, masks)
    print(f"{label:<11}: {removed} weights removed, accuracy {scores(pruned)[0]:.2%}, SQNR {logit_sqnr(pruned):.1f} dB")
# The global threshold wins: the scan measured each layer alone, and the layers' errors interact; one threshold on
# the folded magnitudes already ranks the weights across layers well.

# %% [markdown]
# **Exercise 5.2.** Replace k-means by a uniform grid between each layer's extremes (`iterations=0`: the
# initialisation alone) at the same 4 bits, on the pruned model, without fine-tuning the centroids. What does
# k-means buy?

# %% tags=["solution"]
bits = dict(compression.DeepCompressionConfig().bits)
kernels_dc = {path: nn.get_module(dc.pruned, path).kernel[...] for path in bits}
for label, iterations in (("uniform grid", 0), ("k-means", 50)):
    shared = compression.share_weights(dc.pruned, bits, iterations=iterations)
    accuracy, loss = scores(shared)
    error = np.mean([np.mean((nn.get_module(shared, p).effective_kernel() - kernels_dc[p]) ** 2) for p in bits])
    print(f"{label:<12}: accuracy {accuracy:.2%}, test loss {loss:.3f}, mean squared weight error {error:.2e}")

# %% [markdown]
# **Exercise 5.3.** Rank conv2's channels by L2 instead of L1 norm. How many of the 16 channels kept differ?

# %% tags=["solution"]
kept_l1 = structured.channel_keep(model.conv2.kernel[...], 0.5, ord=1)
kept_l2 = structured.channel_keep(model.conv2.kernel[...], 0.5, ord=2)
print("L1 keeps", kept_l1, "\nL2 keeps", kept_l2, f"\n{len(np.setdiff1d(kept_l1, kept_l2))} channels differ")
