# %% [markdown]
# # 8. A small transformer: weight-only int4 and int3, GPTQ and AWQ, activation outliers and SmoothQuant
#
# The CNN of the earlier chapters is small in every direction; a language model is not. Its weights dominate its
# memory, and a decoder generating text reads every weight once per token, so the first thing to shrink is the
# weights — to 4 or 3 bits, with activations left in float (**weight-only** quantization). At those widths plain
# rounding breaks down, and the two algorithms that made int4 language models practical fix it from two sides:
# GPTQ chooses *how to round*, AWQ chooses *what to round* (a rescaled kernel). Activations bring the second
# difficulty: a few channels of a transformer's activations are far larger than the rest (the outliers of
# LLM.int8()), which is what SmoothQuant answers when activations are quantized too.
#
# This chapter trains a small character-level transformer on the Python standard library's own source code and
# runs all of it with **the same library calls** as the CNN chapters: `nn.find_layers` finds the projections by
# path, `nn.capture` collects their inputs, `nn.QuantLayer` wraps them, `gptq.gptq` solves each layer, and
# `ptq.quantize_model` builds the W8A8 model. The metric is **bits per character** (bpc) on held-out files,
# $-\frac1N\sum_t \log_2 p(c_{t+1} \mid c_{\le t})$, and the perplexity per character is $2^{\text{bpc}}$.

# %%
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import qwix
from flax import nnx
from qwix.contrib import awq as qwix_awq_lib

from quantref import formats, gptq, nn, ptq, scaling, text, transformer, weight_only

np.set_printoptions(precision=3, suppress=True)
corpus = text.load_corpus()
model = transformer.load_or_train()
config = model.config
print(f"Python {corpus.python_version} standard library, corpus fingerprint {corpus.fingerprint}")
for split in ("train", "validation", "test"):
    print(f"{split:>10}: {len(getattr(corpus, split)):>9,} characters")
parameters = sum(value.size for value in transformer.model_to_arrays(model).values())
print(
    f"model: {config.depth} blocks, width {config.width}, {config.heads} heads, context {config.context}, "
    f"{parameters:,} parameters"
)

# %% [markdown]
# The corpus is a fixed list of top-level modules, split by file: the test text (`csv.py`, `fractions.py`,
# `heapq.py`, `pprint.py`, `shlex.py`, `textwrap.py`) comes from modules the model never saw. On another Python
# minor version the same files hold different text, so the fingerprint, the trained model and every number below
# change a little (`quantref.text` says so). The model is a GPT-style decoder: character and position embeddings,
# pre-LayerNorm blocks of causal self-attention and a GELU MLP, a final LayerNorm and a linear head. Its
# projections are `nnx.Linear` layers, and the pipeline finds them as it found the CNN's convolutions:

# %%
layers = nn.find_layers(model, skip="head")
for path in ("blocks.0.attn.qkv", "blocks.0.attn.out", "blocks.0.mlp.up", "blocks.0.mlp.down"):
    print(f"{path:<18} kernel {tuple(layers[path].kernel.shape)}")
quantized_weights = sum(layer.kernel.size for layer in layers.values())
print(f"{len(layers)} projections, {quantized_weights:,} weights; embeddings, LayerNorms and the head stay float")

test_windows = text.windows(corpus.test, config.context, 64)
calibration = [text.random_windows(corpus.train, config.context, 32, seed=1)[:, :-1]]  # one batch of 32 windows
float_bpc = transformer.bits_per_char(model, test_windows)
print(
    f"float model: {float_bpc:.4f} bits per character on {test_windows.size - len(test_windows):,} test "
    f"characters (perplexity {2**float_bpc:.3f})"
)

# %% [markdown]
# Three minutes of training on two cores make a weak model, but a model of Python all the same (the samples
# further down show its indentation, its `self.` and its keywords). Quantization is judged by how far it moves the
# bits per character from the float model's. The calibration data of every algorithm below are 32 random windows of
# the *training* files, as the papers calibrate on training text.
#
# ## Weight-only quantization: per channel and per group
#
# Each kernel $W$ (rows: input features, columns: output features) is stored as $b$-bit codes with one scale per
# output column (**per channel**) or per column and **group** of $g$ consecutive rows:
#
# $$s_{k,c} = \frac{\max_{i \in \text{group } k} |W_{i,c}|}{q_{max} + \frac12}, \qquad
# \hat W_{i,c} = s_{k(i),c}\ \operatorname{clamp}\big(\operatorname{rne}(W_{i,c}/s_{k(i),c}),\ q_{min},\ q_{max}\big)$$
#
# on the full signed grid, $[-8, 7]$ at int4 and $[-4, 3]$ at int3: the largest magnitude lands on the outer
# edge of the last code's bucket, so all $2^b$ levels are used (qwix's grid, and PyTorch's symmetric observer's).
# The narrow grid of chapter 7's int8 weights, $[-(2^{b-1}-1),\ 2^{b-1}-1]$, gives up one level — at int3, 7
# levels instead of 8, which costs more than it does at 8 bits (see the end of this section).
#
# A group follows the weights more closely: one large weight spoils the resolution of its group only, not its
# whole column. The price is the scales, stored as float16: $16/g$ more bits per weight. At this width a group of
# 128 rows is a whole column of `qkv`, `out` and `up` (128 input features each); only `mlp.down`, with 512, has
# four groups. Round-to-nearest (RTN) goes through the pipeline's fake-quant layers:
# `weight_only.fake_quant_model` swaps an `nn.QuantLayer` with a group weight quantizer in for every projection.
# The tables evaluate the same numbers with the dequantized kernels written into the float model
# (`weight_only.dequantized_model`: one compiled forward pass for every configuration); the check below shows that
# the two give the same bits per character, to the last digit.

# %%
GRIDS = {4: formats.int_format(4), 3: formats.int_format(3)}  # full signed grids: [-8, 7] and [-4, 3]
GROUPS = {"per-channel": None, "g128": 128, "g64": 64, "g32": 32}

rtn4 = weight_only.rtn_weights(model, GRIDS[4], 128, skip="head")
swapped = weight_only.fake_quant_model(model, rtn4)
up = nn.get_module(swapped, "blocks.0.mlp.up")
print(f"blocks.0.mlp.up is now a {type(up).__name__} with a {type(up.weight_quantizer).__name__} weight quantizer")
through_layers = transformer.bits_per_char(swapped, test_windows)
through_kernels = transformer.bits_per_char(weight_only.dequantized_model(model, rtn4), test_windows)
print(f"int4 g128 RTN: {through_layers!r} bpc through QuantLayers, {through_kernels!r} through dequantized kernels")


def evaluate(weights, base=model):
    """Bits per character of ``base`` with the quantized kernels ``weights``."""
    return transformer.bits_per_char(weight_only.dequantized_model(base, weights), test_windows)


table, seconds = {}, {}
for bits in (4, 3):
    for name, group in GROUPS.items():
        start = time.perf_counter()
        weights = jax.block_until_ready(weight_only.rtn_weights(model, GRIDS[bits], group, skip="head"))
        seconds[("RTN " + name, bits)] = time.perf_counter() - start
        table[("RTN " + name, bits)] = evaluate(weights)


def show(names):
    """Prints int4 and int3 bits per character of each configuration."""
    for name in names:
        print(f"{name:<18}{table[(name, 4)]:>10.4f}{table[(name, 3)]:>10.4f}")


print(f"{'':<18}{'int4 bpc':>10}{'int3 bpc':>10}")
show("RTN " + name for name in GROUPS)
narrow = evaluate(weight_only.rtn_weights(model, formats.int_format(3, narrow_range=True), skip="head"))
print(f"{'RTN per-channel':<18}{'':>10}{narrow:>10.4f}  on the narrow grid [-3, 3]")

# %% [markdown]
# Smaller groups help, a little at int4 and more at int3 (g128 and per channel differ only in `mlp.down` here, and
# by no more than the noise of this test text). int3 is where round-to-nearest starts to hurt: its perplexity cost
# is several times int4's (the table further down gives both), and the narrow grid's missing eighth level costs more
# than going from per-channel scales to groups of 32 gains.
#
# ## GPTQ: choose the rounding
#
# Chapter 4 built GPTQ for the CNN: round one input row of the kernel at a time and push its rounding error onto
# the rows not yet rounded, weighted by the inverse of $H = 2 X^\top X$, so that the layer's output error
# $\lVert XW - X\hat W\rVert^2$ — the error the next layer sees — stays small. The same `gptq.gptq` runs here,
# layer after layer: `weight_only.gptq_weights` captures each projection's input in the model whose earlier
# projections already hold their quantized kernels (the paper's sequential order) and solves it on the same grid
# as RTN (GPTQ chooses the codes, not the scales). **Act-order** rounds the rows with the largest $H_{ii}$ — the
# most-used input features — first, while many rows are still free to absorb their error.

# %%
solved = {}
for name, bits in (("g128", 4), ("g128", 3)):
    start = time.perf_counter()
    solved[(name, bits)] = jax.block_until_ready(
        weight_only.gptq_weights(model, calibration, GRIDS[bits], GROUPS[name], act_order=True, skip="head")
    )
    seconds[("GPTQ " + name, bits)] = time.perf_counter() - start
    table[("GPTQ " + name, bits)] = evaluate(solved[(name, bits)])
show(["GPTQ g128"])

# %% [markdown]
# On the same grids, GPTQ takes back most of what rounding to nearest lost, at int3 as at int4. What it minimises
# is each layer's output error on its calibration inputs. For the first block's projections at int3 g128,
# that error per calibration row, $\operatorname{tr}(\Delta^\top X^\top X \Delta) / N$, with $X$ the float
# model's inputs (for `qkv` exactly GPTQ's; for the later layers GPTQ saw the inputs of the partly quantized model,
# which differ slightly):

# %%
statistics = scaling.input_statistics(model, calibration)
rtn3 = weight_only.rtn_weights(model, GRIDS[3], 128, skip="head")
for path in ("blocks.0.attn.qkv", "blocks.0.attn.out", "blocks.0.mlp.up", "blocks.0.mlp.down"):
    kernel, stats = nn.get_module(model, path).kernel[...], statistics[path]
    errors = [
        float(gptq.layer_error(kernel, weights[path].dequantize(), stats.gram)) / stats.count
        for weights in (rtn3, solved[("g128", 3)])
    ]
    print(f"{path:<18} RTN {errors[0]:8.4f}   GPTQ {errors[1]:8.4f}   ({errors[0] / errors[1]:.1f}x smaller with GPTQ)")

# %% [markdown]
# ## AWQ: protect the salient input channels
#
# AWQ starts from an observation: a weight matters in proportion to the input it multiplies. Input channels whose
# activations are large on average are *salient*, and rounding their weights coarsely costs the most. So scale
# their kernel rows up before rounding — on the shared grid they get relatively finer steps — and divide the input
# by the same factor, which the LayerNorm before the layer absorbs at no cost:
#
# $$x W = \big(x\operatorname{diag}(s)^{-1}\big)\big(\operatorname{diag}(s) W\big), \qquad
# s = \overline{|X|}^{\,\alpha}, \qquad
# \alpha^* = \mathop{\mathrm{arg\,min}}_\alpha
# \lVert X W - (X\operatorname{diag}(s)^{-1})\,Q(\operatorname{diag}(s) W)\rVert^2 .$$
#
# `scaling.awq` searches $\alpha$ over 20 values in $[0, 1)$ for every projection's input. Where the producer of
# the input can absorb $1/s$ — the LayerNorms before `attn.qkv` and `mlp.up`, the value columns of `qkv` before
# `attn.out` (`transformer.scaling_pairs`) — it is folded in. `mlp.down` reads a GELU's output, and GELU does not
# commute with a scale, so its $s$ stays beside its codes as a row scale, divided out when the kernel is
# dequantized (as AutoAWQ's scaled activation and qwix do). $\alpha = 0$ is RTN itself, so on the calibration data
# the scale search never does worse. The search for the first block's `qkv` at int3 g128 (its 128 rows are one group):

# %%
pairs = transformer.scaling_pairs(config)
kernel = nn.get_module(model, "blocks.0.attn.qkv").kernel[...]
awq_scale, best_alpha, losses = scaling.awq_scales([kernel], statistics["blocks.0.attn.qkv"], GRIDS[3], 128)
alphas = np.arange(len(losses)) / len(losses)
figure, axis = plt.subplots(figsize=(7, 3))
axis.plot(alphas, np.asarray(losses) / float(losses[0]), marker="o")
axis.axvline(best_alpha, color="gray", ls=":")
axis.set(xlabel="α (s = mean|x|^α)", ylabel="output error / RTN's", title="AWQ search: blocks.0.attn.qkv, int3")
plt.show()
print(f"chosen α = {best_alpha:.2f}: output error {float(losses.min() / losses[0]):.0%} of RTN's")

# %% [markdown]
# AWQ's reference implementation adds a second search after the scales: **clipping**. The largest weight of a group
# sets its step; clamping the group to $\pm r \max|W|$ with $r < 1$ gives up that weight's accuracy for a finer
# step for all the others. `scaling.awq_clip` tries $r = 1, 0.95, \dots, 0.55$ for every output channel and group
# of the scaled kernel and keeps the one with the smallest output error on the calibration inputs,
# $\Delta^\top X^\top X \Delta$ for that column ($r = 1$ is among the candidates, so it never does worse than not
# clipping). `scaling.awq` runs both searches (`clip=True` is its default). For the same kernel:

# %%
scaled_kernel = kernel * awq_scale[:, None]
scaled_gram = statistics["blocks.0.attn.qkv"].gram / (awq_scale[:, None] * awq_scale[None, :])
clip_scale, ratios = scaling.awq_clip(scaled_kernel, scaled_gram, GRIDS[3], 128)
errors = [
    float(gptq.layer_error(scaled_kernel, weight_only.GroupFakeQuant(grid, GRIDS[3])(scaled_kernel), scaled_gram))
    for grid in (weight_only.group_scales(scaled_kernel, GRIDS[3], 128), clip_scale)
]
print("candidate ratios r:", ", ".join(f"{r:.2f}" for r in scaling.clip_ratios()))
print(
    f"clipping ratios: {np.mean(np.asarray(ratios) < 1):.0%} of the {np.size(ratios)} columns clipped, median r = "
    f"{np.median(np.asarray(ratios)):.2f}; output error {errors[1] / errors[0]:.0%} of the unclipped kernel's"
)

awq_models, unclipped = {}, {}
for bits in (4, 3):
    start = time.perf_counter()
    awq_statistics = scaling.input_statistics(model, calibration)  # timed with the rest: AWQ calibrates
    scaled, weights, _ = scaling.awq(model, awq_statistics, pairs, GRIDS[bits], 128, skip="head")
    weights = jax.block_until_ready(weights)  # the arrays are computed asynchronously: wait for them
    seconds[("AWQ g128", bits)] = time.perf_counter() - start
    table[("AWQ g128", bits)] = evaluate(weights, base=scaled)
    awq_models[bits] = (scaled, weights)
    scaled_only, weights_only, _ = scaling.awq(model, awq_statistics, pairs, GRIDS[bits], 128, clip=False, skip="head")
    unclipped[bits] = evaluate(weights_only, base=scaled_only)
show(["AWQ g128"])
for bits in (4, 3):
    rtn, scales_only, both = table[("RTN g128", bits)], unclipped[bits], table[("AWQ g128", bits)]
    print(
        f"int{bits}: RTN {rtn:.4f} -> AWQ scales only {scales_only:.4f} ({rtn - scales_only:+.4f}) -> "
        f"with clipping {both:.4f} ({scales_only - both:+.4f} more)"
    )

# %% [markdown]
# AWQ helps less than GPTQ on this model. The lever of its scales is the spread of the input channels'
# magnitudes — a few salient channels to protect — and this small model's activations are spread little (the
# outlier section below shows their maxima); the clipping does not depend on that spread, and the last two lines
# above split AWQ's gain over round to nearest between the scales alone and the clipping added to them. On the
# calibration data AWQ can only gain; the test text follows, less closely.

# %% [markdown]
# ## The perplexity table
#
# Every configuration against the float model, as bits per character, perplexity per character and the change in
# perplexity:

# %%
print(f"{'':<18}{'int4 bpc':>9}{'ppl':>8}{'Δppl':>8}  {'int3 bpc':>9}{'ppl':>8}{'Δppl':>8}")
print(f"{'float':<18}{float_bpc:>9.4f}{2**float_bpc:>8.3f}")
for name in dict.fromkeys(name for name, _ in table):
    cells = [
        f"{table[(name, b)]:>9.4f}{2 ** table[(name, b)]:>8.3f}{2 ** (table[(name, b)] - float_bpc) - 1:>+8.1%}"
        for b in (4, 3)
    ]
    print(f"{name:<18}" + "  ".join(cells))
gap = 2 ** (table[("GPTQ g128", 4)] - float_bpc) - 1
print(f"int4 g128 GPTQ: perplexity {gap:+.2%} from the float model's")

# %% [markdown]
# At int4 every method stays within a few percent of the float perplexity, and GPTQ at groups of 128 within one.
# At int3 the methods part: round-to-nearest loses several times more than GPTQ, whatever the group size.

# %% [markdown]
# ## Bytes on disk
#
# Bits per weight are not the whole story: the scales, and everything left in float (embeddings, LayerNorms,
# biases, the head), are on disk too. `weight_only.save_packed` writes the model as a safetensors file — each
# projection's codes packed into bytes (two int4 codes per byte; int3 as a bit stream, eight codes in three
# bytes), its scales as float16, every other parameter as float32 — and the table gives the file's size. A GPTQ
# file has the size of RTN's at the same setting (only the codes differ); an AWQ file adds the row scales of the
# `mlp.down` kernels (its other scales are folded into float parameters that are stored anyway).

# %%
directory = Path(tempfile.mkdtemp(prefix="quantref-chapter8-"))
float_bytes = weight_only.save_packed(directory / "float32.safetensors", model, {})
print(f"{'file':<18}{'bytes':>10}{'smaller':>9}{'bits per weight':>17}")
print(f"{'float32':<18}{float_bytes:>10,}{1:>8.2f}x{32:>17.3f}")
for bits, groups in ((8, ("per-channel",)), (4, tuple(GROUPS)), (3, tuple(GROUPS))):
    for name in groups:
        weights = weight_only.rtn_weights(model, formats.int_format(bits), GROUPS[name], skip="head")
        size = weight_only.save_packed(directory / f"int{bits}-{name}.safetensors", model, weights)
        payload = sum(-(-w.codes.size * bits // 8) + 2 * w.scale.size for w in weights.values())
        print(
            f"{f'int{bits} {name}':<18}{size:>10,}{float_bytes / size:>8.2f}x{8 * payload / quantized_weights:>17.3f}"
        )
scaled, weights = awq_models[3]
size = weight_only.save_packed(directory / "int3-g128-awq.safetensors", scaled, weights)
print(f"{'int3 g128 AWQ':<18}{size:>10,}{float_bytes / size:>8.2f}x")
fresh = transformer.CharTransformer(config, rngs=nnx.Rngs(1))
loaded = weight_only.load_packed(directory / "int3-g32.safetensors", fresh)
reference = weight_only.rtn_weights(model, GRIDS[3], 32, skip="head")
print(
    "int3 g32 file read back into a fresh model: every code equal:",
    all(np.array_equal(loaded[path].codes, reference[path].codes) for path in reference),
)

# %% [markdown]
# The bits per weight count the quantized projections' codes and scales; the file sizes add the float
# parameters and the safetensors header, so they shrink less than the weights do.
#
# ## What the models write
#
# The same prompt and the same random draws (seed 0, temperature 0.8) for the float model, GPTQ at int4 g128 and
# RTN at int3 g128:

# %%
samples = {
    "float": model,
    "int4 g128 GPTQ": weight_only.dequantized_model(model, solved[("g128", 4)]),
    "int3 g128 RTN": weight_only.dequantized_model(model, rtn3),
}
prompt = "    def __init__(self, "
for name, sampled in samples.items():
    print(f"--- {name}\n{prompt}{transformer.generate(sampled, prompt, 120, temperature=0.8, seed=0)}\n")

# %% [markdown]
# With the same random draws, the int4 model starts out on the float model's very characters, until its slightly
# different probabilities send a draw elsewhere; from there each model writes its own Python-shaped text.

# %% [markdown]
# ## Activation outliers
#
# Weight-only quantization leaves the activations in float. To run the matrix products on int8 units, the
# activations are quantized too — with one scale per tensor, since a scale per *input* channel cannot be taken out
# of the sum $\sum_j x_j W_{j,c}$. LLM.int8() found that transformers grow a few input channels whose values are
# far larger than the rest, in the same channels at every position, at the output of LayerNorm (where a large
# learned gain $\gamma_j$ lifts one channel everywhere). A per-tensor scale must cover them, which leaves every
# other channel few levels. The largest magnitude of each input channel of the projections, over the calibration
# data:

# %%
inputs = {"LayerNorm 1 → attn.qkv": "attn.qkv", "LayerNorm 2 → mlp.up": "mlp.up", "GELU → mlp.down": "mlp.down"}
figure, axes = plt.subplots(len(inputs), 1, figsize=(10, 2.3 * len(inputs)))
for axis, (label, suffix) in zip(axes, inputs.items()):
    for block in range(config.depth):
        peak = np.asarray(statistics[f"blocks.{block}.{suffix}"].abs_max)
        axis.plot(peak, lw=0.8, label=f"block {block}")
        top = np.argsort(peak)[::-1][:3]
        print(
            f"blocks.{block}.{suffix:<9} input: max {peak.max():6.2f}, median channel {np.median(peak):5.2f} "
            f"({peak.max() / np.median(peak):4.1f}x), largest channels {top}"
        )
    axis.set(ylabel="max |x|", title=label, ylim=(0, None))
axes[-1].set(xlabel="input channel")
axes[0].legend(ncol=config.depth, fontsize=8)
figure.tight_layout()
plt.show()

# %% [markdown]
# In this small model the outliers are mild: no channel reaches much more than twice the median channel's
# maximum, and the largest channels differ from block to block. LLM.int8() saw systematic outliers, far larger
# than every other channel, emerge in models of billions of parameters; a few minutes of training do not grow
# them. SmoothQuant has little to fix here, which is what the next section measures.

# %% [markdown]
# ## W8A8: round-to-nearest against SmoothQuant
#
# The W8A8 model is what `ptq.quantize_model` built for the CNN: int8 weights per output channel on the narrow
# grid, int8 activations per tensor on ranges calibrated on the calibration windows — here for every projection but
# the head (`skip="head"`). The pipeline takes float inputs, so the character ids go in as floats, and the model
# casts them back. SmoothQuant divides each LayerNorm-output channel by
# $s_j = \max|X_j|^{\alpha} / \max|W_{j,:}|^{1-\alpha}$ and multiplies the kernel rows by it, folding the division
# into the LayerNorm — an exact rescaling (`scaling.smooth`) that moves part of each outlier's range into the
# weights, whose scales are per channel. The migration strength $\alpha$ sets how much.

# %%
calibration_x = np.concatenate(calibration).astype(np.float32)


def wa_bpc(float_model, activation_bits):
    """Bits per character of ptq.quantize_model's fake-quant model: int8 weights, int<activation_bits> inputs."""
    qmodel = ptq.quantize_model(
        float_model, calibration_x, weight_bits=8, activation_bits=activation_bits, activation_signed=True, skip="head"
    )
    return transformer.bits_per_char(ptq.fake_quant_model(float_model, qmodel), test_windows)


ln_pairs = [pair for pair in pairs if pair.columns is None]  # LayerNorm -> qkv and LayerNorm -> up
activation_table = {("RTN", 8): wa_bpc(model, 8)}
for alpha in (0.5, 0.8):
    activation_table[(f"SmoothQuant α={alpha}", 8)] = wa_bpc(scaling.smooth(model, statistics, ln_pairs, alpha), 8)
print(f"{'':<20}{'W8A8 bpc':>10}{'Δppl':>8}")
for (name, _), bpc in activation_table.items():
    print(f"{name:<20}{bpc:>10.4f}{2 ** (bpc - float_bpc) - 1:>+8.2%}")
smoothed = scaling.smooth(model, statistics, ln_pairs, 0.5)
print(f"float model {float_bpc!r} bpc, smoothed float model {transformer.bits_per_char(smoothed, test_windows)!r} bpc")
after = scaling.input_statistics(smoothed, calibration, select="blocks.*.mlp.up")
for block in range(config.depth):
    before_peak = np.asarray(statistics[f"blocks.{block}.mlp.up"].abs_max)
    after_peak = np.asarray(after[f"blocks.{block}.mlp.up"].abs_max)
    print(
        f"blocks.{block}.mlp.up input, largest over median channel: {before_peak.max() / np.median(before_peak):5.1f}x"
        f" before smoothing, {after_peak.max() / np.median(after_peak):4.1f}x after (α = 0.5)"
    )

# %% [markdown]
# With outliers this mild, int8 activations cost little either way, and SmoothQuant's gain is small but in the
# right direction: at $\alpha = 0.5$ it is better than round-to-nearest, and it flattens the channel maxima it was
# built to flatten. $\alpha = 0.8$ moves too much of the range into the weights. The
# smoothed float model computes what the float model computes, to float32 rounding.

# %% [markdown]
# ## qwix side by side
#
# qwix, Google's quantization library for JAX, has round-to-nearest, GPTQ, AWQ and SmoothQuant as well. It works
# by intercepting the model's matrix products under rules that match module paths, not by swapping layers. Here it
# gets the same trained model, the same calibration windows and the same grid — qwix's symmetric int4 and int3 are
# the full signed grids with the largest magnitude at $q_{max} + \frac12$, which is why this chapter uses them — at
# groups of 128 rows (qwix's `tile_size`), at int4 (`benchmarks/transformer.py` runs int3 too). The seconds are
# wall-clock time of the quantization alone (calibration included, evaluation not, the first call of each, so
# compilation included) on a shared machine: read them as rough.

# %%
RULE_PATH = r"blocks/\d+/(attn|mlp)/\w+"  # qwix matches module paths, joined with "/", against a regex
example = jnp.asarray(calibration[0])
QWIX_TYPES = {4: jnp.int4, 3: "int3"}


def qwix_rtn(bits):
    rules = [qwix.QtRule(module_path=RULE_PATH, weight_qtype=QWIX_TYPES[bits], tile_size=128)]
    return qwix.quantize_model(model, qwix.PtqProvider(rules), example)


def qwix_awq(bits):
    """qwix's recipe: collect statistics with a calibration provider, transform the weights, run with the AWQ
    inference provider."""
    rules = [qwix_awq_lib.AwqRule(module_path=RULE_PATH, weight_qtype=QWIX_TYPES[bits], tile_size=128)]
    calibrating = qwix.quantize_model(model, qwix_awq_lib.AwqCalibrationProvider(rules), example)
    for batch in calibration:
        calibrating(jnp.asarray(batch))
    quantized = qwix.quantize_model(model, qwix_awq_lib.AwqInferenceProvider(rules), example)
    params = nnx.to_pure_dict(nnx.state(calibrating, nnx.Param))
    stats = nnx.to_pure_dict(nnx.state(calibrating, qwix.QuantStat))
    install(quantized, qwix_awq_lib.quantize_params(params, quantized, stats))
    return quantized


def install(module, tree):
    """Puts qwix's AWQ parameters into its NNX model. For an NNX model qwix returns them as a plain dict, in which
    its wrappers (codes, scales and the per-input-channel AWQ scale) are dicts too: rebuild them."""
    for key, value in tree.items():
        child = module[key] if isinstance(key, int) else getattr(module, key)
        if isinstance(value, dict) and "awq_scale" in value:
            array = child.array.replace(**value["array"])
            setattr(
                module,
                key,
                qwix_awq_lib.WithAwqScale(array=array, awq_scale=value["awq_scale"], how=child.how, contracting_axis=0),
            )
        elif isinstance(value, dict):
            install(child, value)
        elif isinstance(child, nnx.Variable):
            child[...] = value


qwix_results = {}
for name, run in (("RTN g128", qwix_rtn), ("AWQ g128", qwix_awq)):
    start = time.perf_counter()
    quantized = run(4)
    jax.block_until_ready(nnx.state(quantized))
    elapsed = time.perf_counter() - start
    qwix_results[(name, 4)] = (transformer.bits_per_char(quantized, test_windows), elapsed)
print(f"{'int4 g128':<12}{'quantref bpc':>13}{'s':>6}{'qwix bpc':>10}{'s':>6}")
for (name, bits), (theirs, elapsed) in qwix_results.items():
    print(f"{name[:3]:<12}{table[(name, bits)]:>13.4f}{seconds[(name, bits)]:>6.1f}{theirs:>10.4f}{elapsed:>6.1f}")

# %% [markdown]
# Round-to-nearest is the same computation in both libraries; the bits per character differ in the last digits
# because quantref rounds its scales to the float16 numbers it stores. The two AWQs differ in three places. qwix
# keeps every projection's AWQ scale beside its codes and divides the dequantized kernel by it at every call;
# quantref folds the scale into the LayerNorm or the value columns where it can, and keeps a row scale only for
# `mlp.down`. qwix's $\alpha$ search weighs each weight's error by its input's mean magnitude, an
# approximation of the output error $\operatorname{tr}(\Delta^\top X^\top X \Delta)$ that quantref's search
# measures on the calibration data. And qwix 0.1.8 has no clipping search: every group keeps its full range. On
# this test text quantref's AWQ ends ahead (line 4 of the summary below; `benchmarks/transformer.py` has int3 too).
#
# qwix's SmoothQuant (version 0.1.8) computes its migration scales from the same statistics, but its inference
# provider multiplies each projection's input by $1/s$ and then, in float, by the dequantized int8 kernel: it
# never quantizes the activations, so it has no W8A8 model to set beside quantref's.
#
# qwix's GPTQ is a loop in Python over the kernel's input rows, one small JAX operation after another, each
# compiled anew for its shape: on two cores it takes minutes for this model, past this chapter's budget.
# `benchmarks/transformer.py` runs it beside quantref's, on the whole model, and the benchmarks page reports both.

# %% [markdown]
# ## What this chapter shows, in its own numbers

# %%
print(f"1. int4 g128 GPTQ perplexity {gap:+.2%} from float: {'within' if gap <= 0.03 else 'NOT within'} +3%")
rtn_excess, gptq_excess = (2 ** table[(f"{method} g128", 3)] - 2**float_bpc for method in ("RTN", "GPTQ"))
print(
    f"2. int3 g128: perplexity +{rtn_excess:.3f} with RTN, +{gptq_excess:.3f} with GPTQ "
    f"({rtn_excess / gptq_excess:.1f}x less)"
)
rtn_bpc, smooth_bpc = activation_table[("RTN", 8)], activation_table[("SmoothQuant α=0.5", 8)]
verdict = "better than" if smooth_bpc < rtn_bpc else "NOT better than"
print(f"3. W8A8: SmoothQuant α=0.5 {smooth_bpc:.4f} bpc, {verdict} RTN's {rtn_bpc:.4f}")
for (name, bits), (theirs, _) in qwix_results.items():
    verdict = "<=" if table[(name, bits)] <= theirs else "> (worse than)"
    print(f"4. int{bits} {name}: quantref {table[(name, bits)]:.4f} bpc {verdict} qwix {theirs:.4f}")

# %% [markdown]
# Three errors that write-ups about quantizing language models make, and what the numbers above say about them:
#
# - *"int4 is 4 bits per weight."* The scales are stored too: the bits-per-weight column counts them, and the
#   files also carry everything left in float. A group of 32 with float16 scales is 4.5 bits per weight.
# - *"GPTQ and AWQ run the model in int4."* Both are weight-only: the codes are dequantized and multiplied with
#   float activations. Integer matrix products need quantized activations, which is where outliers and
#   SmoothQuant come in.
# - *"SmoothQuant changes the model."* The float model after smoothing computes the same logits up to float32
#   rounding (printed above); only what quantization sees changes.
#
# ## Exercises
#
# **Exercise 8.1.** Derive the bits per weight of int3 with groups of 64 and float16 scales, and check it against
# the size table.

# %% tags=["solution"]
per_weight = 3 + 16 / 64
weights = weight_only.rtn_weights(model, GRIDS[3], 64, skip="head")
stored = sum(-(-w.codes.size * 3 // 8) + 2 * w.scale.size for w in weights.values())
print(f"3 + 16/64 = {per_weight} bits per weight; stored: {8 * stored / quantized_weights:.3f}")

# %% [markdown]
# **Exercise 8.2.** SmoothQuant with $\alpha = 1$ moves *all* of an input's range into the weights. What are the
# largest input magnitudes of `blocks.0.attn.qkv` per channel after smoothing, and what happens to the spread of
# its kernel rows' maxima?

# %% tags=["solution"]
full = scaling.smooth(model, statistics, ln_pairs, 1.0)
after_inputs = scaling.input_statistics(full, calibration, select="blocks.0.attn.qkv")["blocks.0.attn.qkv"]
rows_before = np.abs(np.asarray(nn.get_module(model, "blocks.0.attn.qkv").kernel[...])).max(axis=1)
rows_after = np.abs(np.asarray(nn.get_module(full, "blocks.0.attn.qkv").kernel[...])).max(axis=1)
print("input maxima after smoothing: from", float(after_inputs.abs_max.min()), "to", float(after_inputs.abs_max.max()))
print(
    f"kernel row maxima, largest over smallest: {rows_before.max() / rows_before.min():.1f}x before, "
    f"{rows_after.max() / rows_after.min():.1f}x after — the outliers are now in the weights"
)

# %% [markdown]
# **Exercise 8.3.** In the first table, RTN per channel and RTN g128 differ only a little. Which projections get
# the very same codes from both grids, and why?

# %% tags=["solution"]
per_channel = weight_only.rtn_weights(model, GRIDS[4], None, skip="head")
for path, quant in rtn4.items():
    if path.startswith("blocks.0."):
        same_codes = np.array_equal(quant.codes, per_channel[path].codes)
        print(f"{path:<18} {quant.codes.shape[0]:>3} input rows, same codes: {same_codes}")
print("a group of 128 rows is the whole column of a kernel with 128 rows: only mlp.down (512 rows) has 4 groups")
