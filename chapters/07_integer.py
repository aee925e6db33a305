# %% [markdown]
# # 7. Integer-only inference, and a model that onnxruntime runs bit-exactly
#
# The earlier chapters simulated quantization in float: `fake_quant` rounds a value to the grid and hands back a
# float. A deployed int8 model never sees those floats. This chapter takes the walkthrough CNN all the way:
# fold batch norm, calibrate, quantize, run the network on **integers only** in JAX, export it as an ONNX graph,
# run that graph in onnxruntime, and check that onnxruntime's output is exactly — bit for bit — what quantref
# predicted. Then the usual table: accuracy, bytes on disk, speed.

# %%
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import onnxruntime as ort

from quantref import correction, data, integer, ptq, train
from quantref.export import onnx as export_onnx

np.set_printoptions(precision=4, suppress=True)
model = train.load_or_train()
splits = data.load_splits()

# %% [markdown]
# ## Step 1: fold batch norm
#
# At inference a batch norm is a per-channel affine map $y = \gamma (x - \mu)/\sqrt{\sigma^2 + \epsilon} + \beta$,
# so it merges into the convolution before it: $W'_c = W_c\,\gamma_c/\sqrt{\sigma_c^2+\epsilon}$ and
# $b'_c = (b_c - \mu_c)\gamma_c/\sqrt{\sigma_c^2+\epsilon} + \beta_c$. After folding, the network is three layers of
# kernel and bias — exactly what gets quantized. It computes the same function:

# %%
params = correction.fold_batch_norm(model)
x_test = jnp.asarray(splits.x_test)
float_logits, float_activations = jax.jit(correction.folded_forward)(params, x_test)
print("max |folded - model| logit difference:", float(jnp.abs(float_logits - model(x_test)).max()))
float_accuracy = ptq.accuracy(float_logits, splits.y_test)
print(f"float test accuracy: {float_accuracy:.2%}")

# %% [markdown]
# ## Step 2: calibrate and quantize
#
# The integer network stores four activations: the input, the two feature maps after ReLU, and the logits. Their
# ranges come from the calibration split (chapter 1's observers); each gets a per-tensor uint8 scale and zero point.
# Weights are symmetric on the narrow grid $[-127, 127]$ with one scale per output channel (chapter 2), and each
# bias becomes an int32 with the scale of the accumulator it is added to, $s_{bias} = s_{in} s_w$, so that it adds
# straight into the integer sum.

# %%
qmodel = ptq.quantize_model(params, splits.x_calib, observer="min_max")
for name in ("input", "conv1_output", "conv2_output", "logits"):
    quant = getattr(qmodel, name)
    print(f"{name:>13}: scale {float(quant.scale):.6f}  zero point {int(quant.zero_point)}")
print(
    "conv2 int8 kernel codes in",
    int(qmodel.conv2.kernel.min()),
    "..",
    int(qmodel.conv2.kernel.max()),
    "| int32 bias",
    np.asarray(qmodel.conv2.bias[:4]),
)

# %% [markdown]
# The post-ReLU zero points are 0: a range calibrated on non-negative data starts at 0, and 0 is the bottom of
# the uint8 grid. That will make ReLU free.
#
# How much accuracy does each choice cost? The fake-quant simulation answers, for 8 and 4 bits, per-channel and
# per-tensor weights, and the calibration methods of chapter 1 (a selection, to keep the chapter quick):

# %%
rows = ptq.accuracy_table(
    params, splits.x_calib, splits.x_test, splits.y_test, observers=("min_max", "percentile", "mse", "entropy")
)
print(f"{'config':<8} {'weights':<12} {'observer':<11} {'test acc':>8}")
for row in rows:
    print(f"{row['config']:<8} {row['weights']:<12} {row['observer']:<11} {row['accuracy']:>8.2%}")

# %% [markdown]
# Each test image is 0.33 points. At 8 bits per-channel nothing is lost; per-tensor weights cost at most one image.
# At 4 bits a few images flip, and which granularity wins is within that noise on a model this small. No
# calibration method stands out here either: with 8-bit per-channel weights and 8-bit activations every observer
# keeps the float accuracy (per-tensor weights lose one image with three of the four), and chapter 1 shows where they
# differ (the SQNR of 4-bit activations). One caveat from building these
# observers: the KL ("entropy") method needs care on post-ReLU activations — the spike of exact zeros dominates
# the divergence unless it is set aside, and without that the method clips the feature maps to a tenth of their
# range at 4 bits (see `quantref.ranges.entropy`).
#
# ## Step 3: the integer-only network
#
# Now drop the floats. For a layer with input codes $x$ (zero point $z_x$), weight codes $w$ and int32 bias $b$:
#
# $$\text{acc}_c = \sum_k (x_k - z_x) w_{kc} + b_c \ \text{(int32, exact)}, \qquad
# y_c = \operatorname{clamp}\big(\operatorname{round}(M_c\, \text{acc}_c) + z_y,\ \max(q_{min}, z_y),\ q_{max}\big),
# \qquad M_c = \frac{s_x s_{w,c}}{s_y}.$$
#
# The lower clamp at $z_y$ *is* the ReLU (real 0 is code $z_y$), and max-pooling runs on the codes because the
# quantizer is monotone. The products are int8 × int8 → int32 (`preferred_element_type=jnp.int32`). What is left is
# how to compute $\operatorname{round}(M\,\text{acc})$, and runtimes differ:
#
# - **onnxruntime**: $M$ in float32, $y = \operatorname{rne}(f_{32}(f_{32}(\text{acc})\cdot M)) + z_y$;
# - **TFLite**: $M = q_m 2^{e-31}$ with a 31-bit integer $q_m$, applied by a rounding high multiply and a rounding
#   shift — integers only, two roundings.

# %%
x_fake, fake_activations = ptq.fake_quant_forward(qmodel, x_test)
fake_codes = np.round(np.asarray(x_fake) / float(qmodel.logits.scale)) + int(qmodel.logits.zero_point)
results = {}
for requantization in integer.REQUANTIZATIONS:
    rescale = integer.multipliers(qmodel, requantization)
    out = results[requantization] = integer.integer_forward(qmodel, rescale, x_test)
    lsb = np.abs(np.asarray(out.logits_q).astype(int) - fake_codes)
    print(
        f"{requantization:>11}: accuracy {ptq.accuracy(out.logits, splits.y_test):.2%} | argmax agrees with "
        f"fake-quant on {np.mean(np.argmax(out.logits, 1) == np.argmax(x_fake, 1)):.2%} | logit codes differ "
        f"in {np.mean(lsb > 0):.2%} of entries, by at most {lsb.max()} LSB"
    )
print(
    "TFLite conv1 multipliers (q_m, shift):",
    np.asarray(integer.multipliers(qmodel, "tflite").conv1.quantized_multiplier[:2]),
    np.asarray(integer.multipliers(qmodel, "tflite").conv1.shift[:2]),
)

# %% [markdown]
# The integer network and the fake-quant simulation agree on every prediction, but not on every integer. Fake
# quantization accumulates float32 products of dequantized values and divides by $s_y$; the integer path sums
# exactly and multiplies by a rounded $M$. When a value lies within float rounding of a half-way point the two land
# on neighbouring codes, and one changed code in a feature map moves the next layer's sums. TFLite's double rounding
# (up to 0.75 LSB from the exact product) flips more codes than onnxruntime's single float32 multiply. Where do the
# differences start? Per stored activation, the fraction of codes that differ from fake-quant:

# %%
stored = {"conv2.input": "conv1 out", "pool.input": "conv2 out", "logits": "logits"}
figure, axes = plt.subplots(1, 2, figsize=(11, 3.5))
for requantization, out in results.items():
    fractions = []
    for point in stored:
        quant = qmodel.activation(point)
        simulated = np.round(np.asarray(fake_activations[point]) / float(quant.scale)) + int(quant.zero_point)
        fractions.append(np.mean(np.asarray(out.codes[point]).astype(int) != simulated))
    axes[0].bar(
        np.arange(3) + (0.2 if requantization == "tflite" else -0.2), fractions, width=0.4, label=requantization
    )
axes[0].set(
    xticks=range(3),
    xticklabels=list(stored.values()),
    ylabel="codes ≠ fake-quant",
    title="Integer path vs fake-quant, per layer",
)
axes[0].legend()
error = np.abs(np.asarray(results["onnxruntime"].logits) - np.asarray(float_logits)).ravel()
axes[1].hist(error / float(qmodel.logits.scale), bins=40)
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
# `export_onnx` writes `model.onnx`: QuantizeLinear → QLinearConv → QLinearConv → MaxPool → QLinearConv →
# Flatten → DequantizeLinear, all in the standard ONNX domain. Two details. There is no ReLU node: ONNX has no Relu
# on uint8 and QLinearConv has no fused activation, but with $z_y = 0$ the requantization's saturation at 0 is the
# ReLU. And the dense layer is a QLinearConv with a 4×4 kernel over the pooled 4×4×32 map: QLinearMatMul has no
# bias input, and adding the bias after dequantization would put a float op in the middle of an integer model.
# Next to it go `float.onnx`, the test inputs, and `expected.npz` — quantref's prediction of onnxruntime's output.

# %%
out_dir = tempfile.mkdtemp(prefix="quantref-export-")
paths = export_onnx.export_onnx(out_dir)
x_np = np.load(paths["test_inputs"])["x"]
expected = np.load(paths["expected"])["logits"]
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

# %% [markdown]
# Zero mismatches: quantref's integer path, in onnxruntime mode, *is* onnxruntime's answer — not approximately, but
# in every bit of every logit, with graph optimisations on and off. (On x86 CPUs without VNNI, onnxruntime's
# uint8×int8 kernels can saturate 16-bit pair sums; that machine would show mismatches, and the fix is onnxruntime's
# `reduce_range`.)
#
# ## The table
#
# Bytes are those of the files on disk; times are the median of repeated runs on the 300 test images, one thread
# for onnxruntime (the benchmark script, `benchmarks/integer.py`, measures batch 1 and 1024 too).


# %%
def median_seconds(function, repeats=20):
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


float_forward = jax.jit(lambda x: correction.folded_forward(params, x)[0])
fake_forward = jax.jit(lambda x: ptq.fake_quant_forward(qmodel, x)[0])
rescale = integer.multipliers(qmodel, "onnxruntime")
integer_forward = jax.jit(lambda x: integer.integer_forward(qmodel, rescale, x).logits)
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
        ptq.accuracy(results["onnxruntime"].logits, splits.y_test),
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
print(f"model.onnx is {os.path.getsize(paths['float']) / os.path.getsize(paths['model']):.2f}x smaller than float.onnx")

# %% [markdown]
# The int8 file is about 3.5× smaller, not 4×: the scales, int32 biases and the graph's own bytes weigh more in a
# 10,000-parameter model than they would in a large one. Accuracy is the float model's. Speed depends on the
# backend: a model this small is dominated by per-operation overhead, and whether int8 wins over float is a
# property of the kernels, not of the idea — the benchmark script measures it properly.
