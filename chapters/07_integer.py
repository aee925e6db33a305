# %% [markdown]
# # 7. Integer-only inference, and a model that onnxruntime runs bit-exactly
#
# The earlier chapters simulated quantization in float: `fake_quant` rounds a value to the grid and hands back a
# float. A deployed int8 model never sees those floats. This chapter takes the walkthrough CNN all the way:
# fold batch norm, calibrate, quantize, run the network on **integers only** in JAX, export that very model as an
# ONNX graph, run the graph in onnxruntime, and check that onnxruntime's output is exactly — bit for bit — what
# quantref predicted. Then the usual table: accuracy, bytes on disk, speed.
#
# Every step goes through `quantref.nn`, the one pipeline the library has for any Flax NNX model of conv and dense
# layers: a layer's name is its module path (`conv1`, `conv2`, `dense`), the tensor entering it is
# `"conv2.input"`, and those names run from calibration to the ONNX file.

# %%
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import onnxruntime as ort
from flax import nnx

from quantref import data, formats, integer, nn, ptq, ranges, train
from quantref.export import onnx as export_onnx

np.set_printoptions(precision=4, suppress=True)
model = train.load_or_train()
splits = data.load_splits()
x_test = jnp.asarray(splits.x_test)

# %% [markdown]
# ## Step 1: fold batch norm
#
# At inference a batch norm is a per-channel affine map $y = \gamma (x - \mu)/\sqrt{\sigma^2 + \epsilon} + \delta$
# (we write its learned shift $\delta$, because $\beta$ is the top of a range on this site), so it merges into the
# layer before it: $W'_c = W_c\,\gamma_c/\sqrt{\sigma_c^2+\epsilon}$ and
# $\mathrm{bias}'_c = (\mathrm{bias}_c - \mu_c)\gamma_c/\sqrt{\sigma_c^2+\epsilon} + \delta_c$. This is an exact
# reparameterisation — in quantization, "model fusion" means exactly this merge (with the ReLU that follows), not
# combining several models.
# `nn.fold_batch_norm` finds the Conv → BatchNorm pairs from the model's traced structure, not from their names:

# %%
network = nn.trace(model, x_test[:1])
print(" → ".join(step.kind + (f"[{step.path}]" if step.path else "") for step in network.steps))
folded = nn.fold_batch_norm(model, x_test[:1])
print("max |folded - model| logit difference:", float(jnp.abs(folded(x_test) - model(x_test)).max()))
float_logits = np.asarray(folded(x_test))
float_accuracy = ptq.accuracy(float_logits, splits.y_test)
print(f"float test accuracy: {float_accuracy:.2%}")

# %% [markdown]
# After folding, the network is three layers of kernel and bias — exactly what gets quantized. Folding changes
# the weights' ranges, and that is why it must come first: the factor $\gamma_c/\sigma_c$ differs per channel, so
# the spread between the largest and the smallest per-channel range grows or shrinks. For conv2, the ratio of the
# largest to the smallest channel's $\max|W_c|$:


# %%
def channel_spread(kernel):
    absmax = np.abs(np.asarray(kernel)).reshape(-1, kernel.shape[-1]).max(axis=0)
    return absmax.max() / absmax.min()


for path in ("conv1", "conv2"):
    print(
        f"{path}: before folding {channel_spread(nn.get_module(model, path).kernel[...]):.1f}x, "
        f"after {channel_spread(nn.get_module(folded, path).kernel[...]):.1f}x"
    )

# %% [markdown]
# A per-tensor scale has to cover the widest channel, so a wider spread costs the narrow channels resolution; the
# granularity comparisons below (and in chapter 1) quantize the *folded* weights, as a deployed network does.
#
# ## Step 2: calibrate and quantize
#
# The integer network stores one tensor per layer input — the image, the two feature maps after ReLU (max-pooling
# keeps the grid, so conv2's output and the dense layer's input share one) — plus the logits. Their ranges come
# from the calibration split (chapter 3's observers); each gets a per-tensor uint8 scale and zero point. Weights
# are symmetric on the narrow grid $[-127, 127]$ with one scale per output channel (chapter 1), and each bias
# becomes an int32 with the scale of the accumulator it is added to, $s_{bias} = s_{in} s_w$, so that it adds
# straight into the integer sum.

# %%
qmodel = ptq.quantize_model(folded, splits.x_calib, observer="min_max")
for name, quant in qmodel.activations.items():
    print(f"{name:>13}: scale {float(quant.scale):.6f}  zero point {int(quant.zero_point)}")
conv2 = qmodel.layers["conv2"]
print(
    "conv2 int8 kernel codes in",
    int(conv2.kernel.min()),
    "..",
    int(conv2.kernel.max()),
    "| int32 bias",
    np.asarray(conv2.bias[:4]),
)

# %% [markdown]
# The post-ReLU zero points are 0: a range calibrated on non-negative data starts at 0, and 0 is the bottom of
# the uint8 grid. That will make ReLU free.
#
# How much accuracy does each choice cost? The fake-quant simulation (`ptq.fake_quant_model` swaps a fake-quant
# layer in for each conv and dense layer) answers, for 8 and 4 bits, per-channel and per-tensor weights, and the
# calibration methods of chapter 3 (a selection, to keep the chapter quick):

# %%
rows = ptq.accuracy_table(
    folded, splits.x_calib, splits.x_test, splits.y_test, observers=("min_max", "percentile", "mse", "entropy")
)
print(f"{'config':<8} {'weights':<12} {'observer':<11} {'test acc':>8} {'images lost':>11}")
for row in rows:
    lost = round((float_accuracy - row["accuracy"]) * len(splits.y_test))
    print(f"{row['config']:<8} {row['weights']:<12} {row['observer']:<11} {row['accuracy']:>8.2%} {lost:>11}")

# %% [markdown]
# Each test image is a third of a point, so the last column counts images rather than points. Read it with that
# grain: the table shows where a choice costs images at all, not a ranking finer than one image. Chapter 3 shows
# where the observers differ more finely (the SQNR of 4-bit activations).
#
# One caveat from building these observers: the KL ("entropy") method needs two safeguards on post-ReLU
# activations. The spike of exact zeros dominates the divergence unless the first histogram bin is set aside
# (NVIDIA's pytorch-quantization gives it its neighbour's count), and the search must not try thresholds below 128
# histogram bins (TensorRT's floor). What each does, as the fraction of the feature map's maximum that the 4-bit
# entropy range keeps:

# %%
_, calibration_activations = nn.capture(folded, splits.x_calib)
uint4 = formats.int_format(4, signed=False)
safeguards = {
    "both safeguards": {},
    "no zero-bin fix": {"smooth_zero_bin": False},
    "no 128-bin floor": {"min_bins": 1},
    "neither": {"smooth_zero_bin": False, "min_bins": 1},
}
for name in ("conv2.input", "dense.input"):
    values = calibration_activations[name]
    kept = []
    for options in safeguards.values():
        _, high = ranges.calibrate(ranges.entropy(uint4, **options), [values], progress=False)
        kept.append(f"{float(high) / float(values.max()):.0%}")
    print(f"{name:>12}: " + ", ".join(f"{label} {value}" for label, value in zip(safeguards, kept)))

# %% [markdown]
# Without the zero-bin fix the method clips hard; whether the floor also matters depends on the feature map (it
# catches the case where the search would run to the very smallest thresholds). The picture is the KL method's
# own view of conv2's input at the range it chose: the clipped histogram $P$ (the last kept bin collects
# everything beyond the threshold) and its 16-level quantized version $Q$.

# %%
magnitudes = np.abs(np.asarray(calibration_activations["conv2.input"])).ravel()
_, chosen = ranges.calibrate(ranges.entropy(uint4), [calibration_activations["conv2.input"]], progress=False)
counts, edges = np.histogram(magnitudes, bins=2048, range=(0, magnitudes.max()))
counts = counts.astype(float)
counts[0] = counts[1]  # the zero-bin fix
kept_bins = int(np.ceil(float(chosen) / (edges[1] - edges[0])))
p = counts[:kept_bins].copy()
p[-1] += counts[kept_bins:].sum()
levels = np.arange(kept_bins) * uint4.levels // kept_bins
q = np.zeros_like(p)
for level in range(uint4.levels):
    members = (levels == level) & (counts[:kept_bins] > 0)
    q[members] = counts[:kept_bins][levels == level].sum() / max(members.sum(), 1)
figure, axis = plt.subplots(figsize=(10, 3.2))
centers = edges[:kept_bins]
axis.step(centers, p / p.sum(), where="post", label="P: clipped histogram", lw=1)
axis.step(centers, q / q.sum(), where="post", label="Q: quantized to 16 levels", lw=1)
axis.set(
    yscale="log",
    xlabel="|activation| of conv2.input",
    ylabel="probability",
    title=f"KL calibration of conv2.input at 4 bits: threshold {float(chosen):.3f}",
)
axis.legend()
plt.show()

# %% [markdown]
# ## Step 3: the integer-only network
#
# Now drop the floats. For a layer with input codes $q_{x,k}$ (zero point $z_x$), weight codes $q_{w,kc}$ and
# int32 bias codes $q_{\mathrm{bias},c}$, writing $q_{y,c}$ for the output codes:
#
# $$\text{acc}_c = \sum_k (q_{x,k} - z_x)\, q_{w,kc} + q_{\mathrm{bias},c} \ \text{(int32, exact)}, \qquad
# q_{y,c} = \operatorname{clamp}\big(\operatorname{round}(M_c\, \text{acc}_c) + z_y,\ \ell,\ q_{max}\big),
# \qquad M_c = \frac{s_x s_{w,c}}{s_y}.$$
#
# The lower end $\ell$ is $q_{min}$ for a layer with no ReLU after it (the logits), and $\max(q_{min}, z_y)$ for a
# layer followed by a ReLU: real 0 is code $z_y$, so clamping there *is* the ReLU. Max-pooling runs on the codes
# because the quantizer is monotone. The products are int8 × int8 → int32 (`preferred_element_type=jnp.int32`).
# One layer's dataflow:

# %%
figure, axis = plt.subplots(figsize=(11, 2.2))
boxes = [
    ("int8/uint8 codes x\n(zero point z_x)", 0.0),
    ("× int8 weights w\n+ int32 bias b", 0.2),
    ("int32 accumulator\nΣ (x−z_x)·w + b", 0.4),
    ("requantize\nround(M·acc) + z_y", 0.6),
    ("clamp to [ℓ, q_max]\n(ℓ = z_y if ReLU)", 0.8),
]
for label, left in boxes:
    axis.add_patch(plt.Rectangle((left, 0.25), 0.16, 0.5, fill=False))
    axis.text(left + 0.08, 0.5, label, ha="center", va="center", fontsize=8)
for (_, left), (_, right) in zip(boxes, boxes[1:]):
    axis.annotate("", xy=(right, 0.5), xytext=(left + 0.16, 0.5), arrowprops={"arrowstyle": "->"})
axis.set(xlim=(-0.02, 0.98), ylim=(0, 1), title="One integer layer: codes in, codes out; only M is a real number")
axis.axis("off")
plt.show()

# %% [markdown]
# What is left is how to compute $\operatorname{round}(M\,\text{acc})$, and runtimes differ:
#
# - **onnxruntime**: $M$ in float32, $y = \operatorname{rne}(f_{32}(f_{32}(\text{acc})\cdot M)) + z_y$;
# - **TFLite** (LiteRT's reference convolution): $M = q_m 2^{e-31}$ with a 31-bit integer $q_m$, applied by a
#   rounding high multiply and a rounding shift — integers only, two roundings.
#
# (LiteRT's other kernel sets round differently again; `integer.REQUANTIZATIONS` has a mode for each, and chapter 9
# runs them against LiteRT itself.) Both come from the oracle (`quantref.runtimes.onnx.requantize`,
# `quantref.runtimes.tflite.requantize`), the same
# functions that are checked bit for bit against the runtimes. How far is each from the float fake-quant
# simulation, in logit codes?

# %%
x_fake, fake_activations = ptq.fake_quant_forward(folded, qmodel, x_test)
logits_quant = qmodel.activations["dense.output"]
fake_codes = np.round(np.asarray(x_fake) / float(logits_quant.scale)) + int(logits_quant.zero_point)
results = {}
for requantization in ("onnxruntime", "tflite"):
    rescale = integer.multipliers(qmodel, requantization)
    out = results[requantization] = integer.integer_forward(qmodel, rescale, x_test)
    lsb = np.abs(np.asarray(out.output_q).astype(int) - fake_codes)
    print(
        f"{requantization:>11}: accuracy {ptq.accuracy(out.output, splits.y_test):.2%} | argmax agrees with "
        f"fake-quant on {np.mean(np.argmax(out.output, 1) == np.argmax(x_fake, 1)):.2%} | logit codes differ "
        f"in {np.mean(lsb > 0):.2%} of entries, by at most {int(lsb.max())} LSB"
    )
tflite_conv1 = integer.multipliers(qmodel, "tflite").layers["conv1"]
print(
    "TFLite conv1 multipliers (q_m, shift):",
    np.asarray(tflite_conv1.quantized_multiplier[:2]),
    np.asarray(tflite_conv1.shift[:2]),
)

# %% [markdown]
# Read the two lines separately. Fake quantization accumulates float32 products of dequantized values and divides
# by $s_y$; the integer path sums exactly and multiplies by a rounded $M$. When a value lies within float rounding
# of a half-way point the two land on neighbouring codes, and one changed code in a feature map moves the next
# layer's sums. How often that happens depends on the mode and on the platform (the float rounding of XLA's
# convolutions differs between CPUs and backends): on the machine that rendered this page the fractions are the
# ones printed above. TFLite's double rounding (a rounding high multiply, then a rounding shift: up to three
# quarters of an LSB from the exact product) is the mode that moves codes. Where do the differences start? Per stored
# activation, the fraction of codes that differ from fake-quant:

# %%
stored = ("conv2.input", "dense.input", "dense.output")
figure, axes = plt.subplots(1, 2, figsize=(11, 3.5))
for requantization, out in results.items():
    fractions = []
    for name in stored:
        quant = qmodel.activations[name]
        simulated = np.round(np.asarray(fake_activations[name]) / float(quant.scale)) + int(quant.zero_point)
        fractions.append(np.mean(np.asarray(out.codes[name]).astype(int) != simulated))
    print(f"{requantization:>11}: " + ", ".join(f"{n} {f:.2%}" for n, f in zip(stored, fractions)))
    offset = 0.2 if requantization == "tflite" else -0.2
    axes[0].bar(np.arange(len(stored)) + offset, fractions, width=0.4, label=requantization)
axes[0].set(
    xticks=range(len(stored)),
    xticklabels=stored,
    ylabel="codes ≠ fake-quant",
    title="Integer path vs fake-quant, per stored tensor",
)
axes[0].legend()
error = np.abs(np.asarray(results["onnxruntime"].output) - float_logits).ravel()
axes[1].hist(error / float(logits_quant.scale), bins=40)
axes[1].set(
    xlabel="|int8 logit − float logit| in LSB of the logits",
    ylabel="count",
    title="Integer (onnxruntime mode) vs float logits",
)
figure.tight_layout()
plt.show()

# %% [markdown]
# ## Step 4: export to ONNX and run it in onnxruntime
#
# `export_onnx` takes the quantized model itself — the `qmodel` above, not a fresh one — and writes `model.onnx`:
# QuantizeLinear → QLinearConv → QLinearConv → MaxPool → QLinearConv → Flatten → DequantizeLinear, all in the
# standard ONNX domain, with the pipeline's names on its tensors. Two details. There is no ReLU node: ONNX has no
# Relu on uint8 and QLinearConv has no fused activation, but with $z_y = 0$ the requantization's saturation at 0
# is the ReLU. And the dense layer is a QLinearConv with a 4×4 kernel over the pooled 4×4×32 map: QLinearMatMul has
# no bias input, and adding the bias after dequantization would put a float op in the middle of an integer model.
# Next to it go `float.onnx`, the test inputs, and `expected.npz` — quantref's prediction of onnxruntime's output.

# %%
out_dir = os.path.join(tempfile.mkdtemp(prefix="quantref-export-"), "digits")
paths = export_onnx.export_onnx(qmodel, out_dir, test_x=splits.x_test, test_y=splits.y_test, float_model=folded)
x_np = np.load(paths["test_inputs"])["x"]
expected = np.load(paths["expected"])["output"]
sessions = {}
for name, level in (
    ("disable_all", ort.GraphOptimizationLevel.ORT_DISABLE_ALL),
    ("enable_all", ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
):
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.intra_op_num_threads = 1
    sessions[name] = {
        kind: ort.InferenceSession(str(paths[kind]), options, providers=["CPUExecutionProvider"])
        for kind in ("model", "float")
    }
    got = sessions[name]["model"].run(None, {"x": x_np})[0]
    mismatches = int(np.sum(got.view(np.uint32) != expected.view(np.uint32)))
    print(f"onnxruntime ({name}): {mismatches} of {got.size} logits differ from quantref's prediction (bitwise)")
print("expected.npz is the qmodel shown above:", np.array_equal(expected, np.asarray(results["onnxruntime"].output)))

# %% [markdown]
# Zero mismatches: quantref's integer path, in onnxruntime mode, *is* onnxruntime's answer — not approximately, but
# in every bit of every logit, with graph optimisations on and off. (On x86 CPUs without VNNI, onnxruntime's
# uint8×int8 kernels can saturate 16-bit pair sums; that machine would show mismatches, and the fix is onnxruntime's
# `reduce_range`.)
#
# ## The table
#
# Bytes are those of the files on disk; times are the median of repeated runs on the 300 test images, one thread
# for onnxruntime (the benchmark script, `benchmarks/integer.py`, measures a single image and a large batch too).


# %%
def median_seconds(function, repeats=20):
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def jitted(module):
    graphdef, state = nnx.split(module)
    return jax.jit(lambda x: nnx.merge(graphdef, state)(x))


float_forward = jitted(folded)
fake_forward = jitted(ptq.fake_quant_model(folded, qmodel))
rescale = integer.multipliers(qmodel, "onnxruntime")
integer_forward = jax.jit(lambda x: integer.integer_forward(qmodel, rescale, x).output)
ort_sessions = sessions["enable_all"]
table = [
    (
        "float32 (JAX)",
        float_accuracy,
        os.path.getsize(paths["float"]),
        median_seconds(lambda: float_forward(x_test).block_until_ready()),
    ),
    (
        "fake-quant W8A8 (JAX)",
        ptq.accuracy(x_fake, splits.y_test),
        None,
        median_seconds(lambda: fake_forward(x_test).block_until_ready()),
    ),
    (
        "integer W8A8 (JAX)",
        ptq.accuracy(results["onnxruntime"].output, splits.y_test),
        os.path.getsize(paths["model"]),
        median_seconds(lambda: integer_forward(x_test).block_until_ready()),
    ),
    (
        "float32 (onnxruntime)",
        ptq.accuracy(ort_sessions["float"].run(None, {"x": x_np})[0], splits.y_test),
        os.path.getsize(paths["float"]),
        median_seconds(lambda: ort_sessions["float"].run(None, {"x": x_np})),
    ),
    (
        "int8 (onnxruntime)",
        ptq.accuracy(ort_sessions["model"].run(None, {"x": x_np})[0], splits.y_test),
        os.path.getsize(paths["model"]),
        median_seconds(lambda: ort_sessions["model"].run(None, {"x": x_np})),
    ),
]
print(f"{'model':<24} {'test acc':>8} {'bytes':>7} {'ms / 300 images':>16}")
for label, accuracy, size, seconds in table:
    print(f"{label:<24} {accuracy:>8.2%} {size if size else '-':>7} {seconds * 1e3:>16.2f}")
ratio = os.path.getsize(paths["float"]) / os.path.getsize(paths["model"])
print(f"model.onnx is {ratio:.2f}x smaller than float.onnx")

# %% [markdown]
# The int8 file is smaller by the ratio printed, not by 4: the scales, int32 biases and the graph's own bytes
# (node and tensor names among them) weigh more in a model this small than they would in a large one.
# Accuracy is the float model's. Speed depends on the backend: a model this small is dominated by per-operation
# overhead, and whether int8 wins over float is a property of the kernels, not of the idea — the benchmark script
# measures it properly.
#
# ## Exercises
#
# **Exercise 7.1.** Why int32 accumulators? Work out the largest $|\text{acc}|$ conv2 can reach with uint8 inputs
# (zero point 0) and int8 weights on $[-127, 127]$, and the number of bits that takes.

# %% tags=["solution"]
taps = 3 * 3 * 16  # kernel height × width × input channels
worst = taps * 255 * 127
print(
    f"{taps} taps × 255 × 127 = {worst:,}, which needs {int(np.ceil(np.log2(worst + 1))) + 1} signed bits: "
    "more than int16, comfortably inside int32"
)

# %% [markdown]
# **Exercise 7.2.** Recompute conv1's onnxruntime multiplier $M_c = f_{32}(f_{32}(s_x s_{w,c}) / s_y)$ for the
# first two channels by hand, in float32, from the scales printed in step 2, and compare with what
# `integer.multipliers` uses.

# %% tags=["solution"]
s_x = np.float32(qmodel.activations["conv1.input"].scale)
s_y = np.float32(qmodel.activations["conv2.input"].scale)
s_w = np.asarray(qmodel.layers["conv1"].kernel_scale[:2], np.float32)
by_hand = (s_x * s_w) / s_y
print(
    "by hand:",
    by_hand,
    "| integer.multipliers:",
    np.asarray(rescale.layers["conv1"].multiplier[:2]),
    "| equal:",
    np.array_equal(by_hand, np.asarray(rescale.layers["conv1"].multiplier[:2])),
)

# %% [markdown]
# **Exercise 7.3.** The export relies on the post-ReLU zero points being 0. Move conv2's input grid so its zero
# point is 5 and try to export: what does quantref say, and why would the graph be wrong otherwise?

# %% tags=["solution"]
import dataclasses

shifted = dict(qmodel.activations)
shifted["conv2.input"] = ptq.ActivationQuant(shifted["conv2.input"].scale, np.int32(5))
try:
    export_onnx.quantized_model_proto(dataclasses.replace(qmodel, activations=shifted))
except ValueError as error:
    print("refused:", error)
# Without a ReLU node, codes 0..4 (negative reals) would survive the requantization's clamp at 0.
