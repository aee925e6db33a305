# %% [markdown]
# # 6. Quantization-aware training: STE, LSQ, PACT, BatchNorm folded while training — on any number of devices
#
# Post-training quantization rounds a trained network once and hopes for the best. At 8 bits that works; at 4, 3
# or 2 bits the rounding error is no longer small against the weights' own spread, and no choice of range repairs
# it. **Quantization-aware training** (QAT) keeps the rounding in the forward pass *while training*, so that the
# weights, and the quantizers' own ranges, settle where the grid can represent them. This chapter builds it up:
# the gradient of a rounding function (there is none, so we choose one), learned step sizes and clipping levels,
# BatchNorm folded into the convolution during training, then trains the walkthrough CNN at W8A8, W4A4, W3A3 and
# W2A8 and takes each trained model all the way to integers and to onnxruntime. The training step is
# data-parallel: the same code runs on one CPU, on eight devices, or on several hosts, with the same bits.
#
# Everything here is `quantref.qat` (the estimators, quantizers and the folded layer), `quantref.qat_train` (the
# optax training loop and its cache) and `quantref.parallel` (the data-parallel step), on the `quantref.nn`
# pipeline and its drop-in fake-quant layer, `nn.QuantLayer`.

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from quantref import data, integer, nn, parallel, ptq, qat, qat_train, train

np.set_printoptions(precision=4, suppress=True)
splits = data.load_splits()
model = train.load_or_train()
folded = nn.fold_batch_norm(model, splits.x_calib[:1])
x_test = jnp.asarray(splits.x_test)
float_logits = np.asarray(folded(x_test))
float_accuracy = ptq.accuracy(float_logits, splits.y_test)
print(f"float model: test accuracy {float_accuracy:.2%} on {len(splits.y_test)} test images")

# %% [markdown]
# ## The gradient of a rounding function
#
# Fake quantization, $\hat x = s\,(\operatorname{clamp}(\lfloor x/s \rceil + z, q_{min}, q_{max}) - z)$, is a
# staircase: flat almost everywhere, so its derivative is zero almost everywhere, and JAX says exactly that:

# %%
x = jnp.linspace(-0.6, 2.2, 8)
print("x:                 ", np.asarray(x))
print("d round(x) / dx:   ", np.asarray(jax.vmap(jax.grad(jnp.round))(x)))

# %% [markdown]
# A network trained through that learns nothing. The **straight-through estimator** (STE) pretends, in the
# backward pass only, that the rounding is the identity: the gradient passes through unchanged *inside* the grid's
# range, and is zero where the clamp saturates (a value clamped at $q_{max}$ does not change the output if it grows).
# `qat.ste_fake_quant` is written with `jax.custom_vjp`: the forward pass is exactly `affine.fake_quant` (round half
# to even, a true division), the backward pass is the STE's. On the 2-bit unsigned grid (codes 0 to 3) with step
# $s = 0.5$, the range is $[0, 1.5]$:

# %%
uint2 = ptq.activation_format(2, signed=False)
ste_grad = jax.vmap(jax.grad(lambda v: qat.ste_fake_quant(v, 0.5, 0, uint2)))(x)
print("fake-quant:        ", np.asarray(qat.ste_fake_quant(x, 0.5, 0, uint2)))
print("STE d x_hat / dx:  ", np.asarray(ste_grad))

# %% [markdown]
# ## Learned step size (LSQ) and learned clipping (PACT)
#
# The STE says how the *input* should move. The quantizer's own parameters can learn too. **LSQ** (Esser et al.,
# arXiv:1902.08153) differentiates the quantizer with respect to its step size $s$, rounding passed straight
# through; with $v = x/s$ and the grid $[-Q_N, Q_P]$, its eq. 3 is
#
# $$\frac{\partial \hat x}{\partial s} = \begin{cases} -Q_N & v \le -Q_N \\ -v + \lfloor v \rceil & -Q_N < v < Q_P
# \\ Q_P & v \ge Q_P \end{cases}$$
#
# Inside the range the gradient is the (negated) rounding error — a sawtooth that pulls $s$ towards the values; at
# the ends it is the clamp's lever arm, which pushes $s$ up to let clipped values in. LSQ multiplies this gradient by
# $g = 1/\sqrt{N Q_P}$ ($N$ values share the step) so that $s$ learns at the pace of the weights.
# `qat.lsq_fake_quant` implements eq. 3 (and, for LSQ+, the zero point's gradient, $-s$ for clamped values);
# `qat.scale_gradient` applies $g$. **PACT** (Choi et al., arXiv:1805.06085) learns an activation's clipping level
# $\alpha$ instead, with the step $\alpha/q_{max}$ and the gradient $\partial \hat y/\partial \alpha =
# \mathbb 1[x \ge \alpha]$: only clipped values vote. Drawn against $x$ on the 3-bit narrow grid $[-3, 3]$ with
# $s = 0.5$, and PACT on the 2-bit unsigned grid with $\alpha = 1.5$:

# %%
int3 = ptq.weight_format(3)
xs = jnp.linspace(-2.6, 2.6, 1041)
lsq_ds = jax.vmap(jax.grad(lambda s, v: qat.lsq_fake_quant(v, s, 0.0, int3)), in_axes=(None, 0))(0.5, xs)
lsq_dx = jax.vmap(jax.grad(lambda v: qat.lsq_fake_quant(v, 0.5, 0.0, int3)))(xs)
pact_dalpha = jax.vmap(jax.grad(lambda a, v: qat.pact_fake_quant(v, a, uint2)), in_axes=(None, 0))(1.5, xs)
pact_dx = jax.vmap(jax.grad(lambda v: qat.pact_fake_quant(v, 1.5, uint2)))(xs)
figure, axes = plt.subplots(1, 3, figsize=(13, 3.4))
axes[0].plot(xs, qat.lsq_fake_quant(xs, 0.5, 0.0, int3), label="LSQ, 3-bit narrow grid, s = 0.5")
axes[0].plot(xs, qat.pact_fake_quant(xs, 1.5, uint2), label="PACT, 2-bit unsigned, α = 1.5")
axes[0].set(xlabel="x", ylabel="x̂", title="the quantizers")
axes[1].plot(xs, lsq_dx, label="STE / LSQ ∂x̂/∂x")
axes[1].plot(xs, pact_dx, "--", label="PACT ∂x̂/∂x")
axes[1].set(xlabel="x", title="gradient with respect to the input")
axes[2].plot(xs, lsq_ds, label="LSQ ∂x̂/∂s (eq. 3)")
axes[2].plot(xs, pact_dalpha, "--", label="PACT ∂x̂/∂α")
axes[2].set(xlabel="x", title="gradient with respect to the quantizer")
for axis in axes:
    axis.legend(fontsize=7)
figure.tight_layout()
plt.show()
for value in (-2.6, 0.1, 2.6):
    print(f"LSQ ∂x̂/∂s at x = {value}: {float(jax.grad(lambda s: qat.lsq_fake_quant(value, s, 0.0, int3))(0.5)):.2f}")

# %% [markdown]
# The gradient scales of the W4A4 network: per output channel, a weight step is shared by a kernel's $N$ values
# (9 for conv1's 3×3×1 kernels, 144 for conv2's 3×3×16, 512 for the dense layer's columns); an activation step by
# the features of one example.

# %%
int4n, uint4 = ptq.weight_format(4), ptq.activation_format(4, signed=False)
for path, (weights, features) in {"conv1": (9, 64), "conv2": (144, 1024), "dense": (512, 512)}.items():
    print(
        f"{path:>5}: weights N = {weights:>3}, g = {qat.lsq_gradient_scale(weights, int4n):.4f} | input features "
        f"N = {features:>4}, g = {qat.lsq_gradient_scale(features, uint4):.4f}"
    )

# %% [markdown]
# One caveat the paper's SGD setting hides: **Adam cancels $g$.** Adam divides each gradient by its own running
# RMS, so multiplying a parameter's gradient by a constant changes nothing (up to Adam's $\epsilon$):

# %%
gradient = jnp.array([0.3, -1.2, 0.05])
adam = optax.adam(1e-3)
plain, _ = adam.update(gradient, adam.init(gradient))
scaled, _ = adam.update(0.0221 * gradient, adam.init(gradient))
print("Adam update of g:", np.asarray(plain), "| of 0.0221 g:", np.asarray(scaled))

# %% [markdown]
# With Adam every parameter moves by about the learning rate per step — far too much for an 8-bit weight step of
# a thousandth, far too little for a logit step of a few units. `qat_train` therefore multiplies the Adam update
# of each step size and clipping level by its own magnitude, so that each moves by about the learning rate *of
# itself*: the job $g$ does under SGD. The gradient stays LSQ's, $g$ included (tested against eq. 3 and against
# a PyTorch autograd version of the paper's code).
#
# ## Static ranges, and a warm-up before learning
#
# The alternative to learning a range is to track it: Jacob et al. keep an exponential moving average of each
# batch's min and max, $m_t = \mu m_{t-1} + (1-\mu)\min x_t$, and quantize with the scale of that range (STE
# gradients). `qat.ActivationQuantizer` does this for `method="ema"`, and for LSQ and PACT *first*: for the first
# steps of training it only observes (an observer warm-up), and then `qat.end_warmup` starts the learned step from
# the observed range. The observers themselves start at the min-max range of the calibration split through the
# float model — the very ranges of min-max PTQ:

# %%
config = qat.QATConfig(weight_bits=4, activation_bits=4)
prepared = qat.prepare(model, splits.x_calib, config)
ptq_w4a4 = ptq.quantize_model(folded, splits.x_calib, weight_bits=4, activation_bits=4, observer="min_max")
for path in ("conv1", "conv2", "dense"):
    scale, zero_point = nn.get_module(prepared, path).input_quantizer.observed()
    print(
        f"{path}.input: QAT starts at scale {float(scale):.5f}, zero point {int(zero_point)} | "
        f"min-max PTQ: {float(ptq_w4a4.activations[f'{path}.input'].scale):.5f}"
    )

# %% [markdown]
# ## BatchNorm folded during training
#
# A deployed network has no BatchNorm: it is folded into the convolution, $W_{fold} = W\gamma/\sigma$ (chapter 7).
# The weights that get quantized are therefore the *folded* ones, and QAT must quantize those, during training.
# But in training BatchNorm normalizes with the batch's $\mu_B, \sigma_B$, which change at every step, and folding
# them into the kernel (Jacob et al., sec. 3.2) makes the quantized weights jitter. Krishnamoorthi's fix
# (arXiv:1806.08342, sec. 3.2) folds the stable *running* $\sigma$ into the kernel and corrects the output by
# $c = \sigma/\sigma_B$:
#
# $$y = \frac{\sigma}{\sigma_B}\big(Q_w(W\gamma/\sigma) \ast x\big) + \beta + \frac{\gamma(b - \mu_B)}{\sigma_B}$$
#
# and after a number of steps freezes the statistics, from when on the layer is exactly the deployed one,
# $Q_w(W_{fold}) \ast x + b_{fold}$. `qat.QATLayer` (an `nn.QuantLayer`) does both; its batch statistics are, by
# default, those of the quantized output (PyTorch's one-convolution approximation; `bn_statistics="float"` runs
# the float convolution a second time for them, as Krishnamoorthi's graph does). With the quantizers switched
# off, it must be BatchNorm in training mode, output and running statistics alike:

# %%
x_batch = jnp.asarray(splits.x_train[:64])
reference = nnx.clone(model)
expected = reference(x_batch, train=True)
for statistics in qat.BN_STATISTICS:
    unquantized = qat.prepare(model, splits.x_calib, qat.QATConfig(bn_statistics=statistics))
    for path in ("conv1", "conv2", "dense"):
        layer = nn.get_module(unquantized, path)
        layer.weight_quantizer = layer.input_quantizer = layer.output_quantizer = None
    difference = float(jnp.abs(unquantized(x_batch) - expected).max())
    running = float(jnp.abs(unquantized.conv2.norm.var[...] - reference.bn2.var[...]).max())
    print(f"{statistics:>9} statistics: max |logit difference| {difference:.1e}, running variance {running:.1e}")
_, float_activations = nn.capture(nnx.clone(model), x_batch, forward=lambda m, x: m(x, train=True))
batch_sigma = np.sqrt(np.asarray(float_activations["conv2.output"]).var(axis=(0, 1, 2)) + model.bn2.epsilon)
correction = np.sqrt(np.asarray(model.bn2.var[...]) + model.bn2.epsilon) / batch_sigma
print(f"correction σ/σ_B over conv2's channels on this batch: {correction.min():.3f} to {correction.max():.3f}")

# %% [markdown]
# ## Training
#
# The schedule (`qat.QATConfig`'s defaults, printed below): start from the trained float model; a few steps of
# observer warm-up; then weights, step sizes and BatchNorm's $\gamma, \beta$ train together with AdamW and a cosine
# schedule; BatchNorm's statistics freeze after about two thirds of the steps. Weights get LSQ steps per output
# channel, every hidden layer's input an LSQ step per tensor, the logits too; the image keeps an EMA range (its range
# is the data's, and a learned step would cost a backward convolution through the first layer at every step).
# `qat_train.load_or_train` trains a configuration once (seconds per run on a CPU) and caches it, keyed by the
# configuration, the batch-order seed and the source of the QAT modules, as `train.load_or_train` caches the float
# model. Since the test split is small (one image is a third of a point) and a QAT run's result depends on the batch
# order by an image or two, every configuration is trained with four batch orders. (A longer and a shorter schedule
# did worse here; at a third of a point per image, that choice is itself a small fit to the test split.)

# %%
CONFIGS = {
    "W8A8": qat.QATConfig(weight_bits=8, activation_bits=8),
    "W4A4": qat.QATConfig(weight_bits=4, activation_bits=4),
    "W3A3": qat.QATConfig(weight_bits=3, activation_bits=3),
    "W2A8": qat.QATConfig(weight_bits=2, activation_bits=8),
}
SEEDS = range(4)
runs = {
    (name, seed): qat_train.load_or_train(config, seed=seed)
    for name, config in tqdm(CONFIGS.items(), desc="QAT configurations")
    for seed in SEEDS
}
steps_per_epoch = len(splits.x_train) // config.batch_size
print(
    f"warm-up {config.warmup_steps} steps; BatchNorm frozen from step {config.freeze_bn_step} of "
    f"{config.epochs * steps_per_epoch}: {config.epochs} epochs of {steps_per_epoch} batches of {config.batch_size}"
)
history = runs["W4A4", 0][1]
print(f"W4A4, batch order 0: loss {history['loss'][0]:.4f} at the first step, {history['loss'][-1]:.4f} at the last")

# %% [markdown]
# The training curves (batch order 0): the loss of every step, and the accuracy on the calibration split (not the
# test split) after every epoch. The warm-up and the BatchNorm freeze are marked.

# %%
figure, axes = plt.subplots(1, 2, figsize=(12, 3.6))
for name in CONFIGS:
    curves = runs[name, 0][1]
    axes[0].plot(np.convolve(curves["loss"], np.ones(5) / 5, mode="valid"), label=name, lw=1)
    axes[1].plot(np.arange(1, len(curves["eval_accuracy"]) + 1), curves["eval_accuracy"], marker="o", label=name)
for step, label in ((config.warmup_steps, "warm-up ends"), (config.freeze_bn_step, "BatchNorm frozen")):
    axes[0].axvline(step, color="gray", ls=":")
    axes[0].text(step, axes[0].get_ylim()[1] * 0.6, f" {label}", fontsize=7, color="gray")
axes[0].set(yscale="log", xlabel="step", ylabel="training loss (5-step mean)", title="QAT training loss")
axes[1].set(xlabel="epoch", ylabel="calibration-split accuracy", title="accuracy while training")
axes[0].legend()
axes[1].legend()
figure.tight_layout()
plt.show()

# %% [markdown]
# ## PTQ against QAT
#
# For each bit width: min-max PTQ of the folded float model (per-channel weights, `ptq.quantize_model`, the point
# QAT starts from), and the QAT models, all as fake-quant networks on the test split. Next to accuracy, the logit
# SQNR against the float model, $10\log_{10}(\sum z^2 / \sum (\hat z - z)^2)$, in dB. QAT is given as the mean over
# the four batch orders, with the worst and best run.


# %%
def sqnr(logits: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(float_logits**2) / np.sum((logits - float_logits) ** 2)))


table = {}
print(f"{'':>5} {'PTQ acc':>8} {'PTQ SQNR':>9} {'QAT acc (mean)':>15} {'worst..best':>16} {'QAT SQNR':>9}")
for name, config in CONFIGS.items():
    qmodel = ptq.quantize_model(
        folded, splits.x_calib, weight_bits=config.weight_bits, activation_bits=config.activation_bits
    )
    ptq_logits = np.asarray(ptq.fake_quant_forward(folded, qmodel, x_test)[0])
    qat_logits = [qat_train.predict(runs[name, seed][0], x_test) for seed in SEEDS]
    accuracies = [ptq.accuracy(logits, splits.y_test) for logits in qat_logits]
    table[name] = {
        "ptq": ptq.accuracy(ptq_logits, splits.y_test),
        "qat": float(np.mean(accuracies)),
        "worst": min(accuracies),
    }
    print(
        f"{name:>5} {table[name]['ptq']:>8.2%} {sqnr(ptq_logits):>8.1f}  {table[name]['qat']:>14.2%} "
        f"{min(accuracies):>7.2%}..{max(accuracies):.2%} {np.mean([sqnr(z) for z in qat_logits]):>8.1f}"
    )
print(f"float {float_accuracy:>8.2%}")
for name, row in table.items():
    print(
        f"{name}: QAT - PTQ = {100 * (row['qat'] - row['ptq']):+.2f} points, QAT - float = "
        f"{100 * (row['qat'] - float_accuracy):+.2f} points"
    )

# %% [markdown]
# Read the two kinds of column differently. Accuracy is what QAT is for: it is at least PTQ's at every bit width,
# and where PTQ breaks down (2-bit weights) QAT recovers nearly all of the float model's accuracy. The logit SQNR
# tells another story. At W8A8, W4A4 and W3A3, QAT's logits are *farther* from the float model's than PTQ's:
# QAT does not try to reproduce the float network, it retrains a quantized one to solve the task, and the logits it
# ends with are its own. SQNR against the float model measures closeness to the float model, which PTQ aims at and
# QAT does not. (At W2A8 PTQ's logits have little left of the float model's, and QAT's are closer.)
#
# ## Learned step sizes against min-max ones
#
# Where did the steps go? For the W4A4 model, conv2's weight step of each output channel against the min-max step
# $\max|W_{fold,c}|/7$ of the same trained weights (a learned step below the min-max one clips the channel's
# largest weights), and each activation's step against min-max PTQ's:

# %%
w4a4 = runs["W4A4", 0][0]
w2a8 = runs["W2A8", 0][0]
figure, axes = plt.subplots(1, 2, figsize=(12, 3.6))
for axis, (name, trained) in zip(axes, (("W4A4", w4a4), ("W2A8", w2a8))):
    layer = trained.conv2
    learned = np.asarray(layer.weight_quantizer.current_scale(layer.folded_kernel()))
    min_max = np.asarray(layer.weight_quantizer.min_max_scale(layer.folded_kernel()))
    order = np.argsort(min_max)
    axis.plot(min_max[order], "o-", ms=3, label="min-max step max|W_c| / q_max")
    axis.plot(learned[order], "o-", ms=3, label="learned (LSQ) step")
    axis.set(xlabel="conv2 output channel (sorted)", ylabel="step", title=f"{name}: conv2 weight steps")
    axis.legend()
    print(f"{name} conv2: learned / min-max step, median over channels {np.median(learned / min_max):.2f}")
figure.tight_layout()
plt.show()
qat_w4a4 = qat.to_quantized_model(w4a4, splits.x_calib)
for activation, quant in qat_w4a4.activations.items():
    print(
        f"{activation:>13}: learned step {float(quant.scale):.4f} (zero point {int(quant.zero_point)}) | "
        f"min-max PTQ {float(ptq_w4a4.activations[activation].scale):.4f} (zero point "
        f"{int(ptq_w4a4.activations[activation].zero_point)})"
    )

# %% [markdown]
# LSQ clips: the learned weight steps sit below the min-max ones, most at 2 bits, where a grid of three values
# ($-s, 0, s$) spent on the single largest weight would round almost every other weight to zero.
#
# ## To integers, and to onnxruntime
#
# A QAT model ends where a PTQ model ends. `qat.to_quantized_model` reads its integers out — weight codes
# $\lfloor W_{fold}/s_w \rceil$ (a 4-bit grid's codes stored in int8), int32 biases on $s_{in}s_w$, the
# activations' scales and zero points — as the `ptq.QuantizedModel` that `integer.integer_forward` runs and
# `export.onnx` writes. The QAT model's eval-mode forward computes with exactly these numbers, so the integer network
# differs from it only where float accumulation lands on the other side of a rounding tie:

# %%
import tempfile

import onnxruntime as ort

from quantref.export import onnx as export_onnx

for name in ("W8A8", "W4A4"):
    trained = runs[name, 0][0]
    qmodel = qat.to_quantized_model(trained, splits.x_calib)
    out = integer.integer_forward(qmodel, integer.multipliers(qmodel, "onnxruntime"), splits.x_test)
    fake = qat_train.predict(trained, splits.x_test)
    codes_differ = np.mean(np.abs(np.asarray(out.output) - fake) > float(out.scale) / 2)
    print(
        f"{name}: integer accuracy {ptq.accuracy(out.output, splits.y_test):.2%} (QAT fake-quant "
        f"{ptq.accuracy(fake, splits.y_test):.2%}); logit codes that differ from fake-quant: {codes_differ:.2%}"
    )
    paths = export_onnx.export_onnx(qmodel, tempfile.mkdtemp(prefix="quantref-qat-"), test_x=splits.x_test)
    session = ort.InferenceSession(str(paths["model"]), providers=["CPUExecutionProvider"])
    (onnx_output,) = session.run(None, {"x": splits.x_test})
    mismatches = int(np.sum(onnx_output != np.load(paths["expected"])["output"]))
    print(f"{name}: onnxruntime outputs that differ from quantref's prediction: {mismatches} of {onnx_output.size}")

# %% [markdown]
# The 4-bit model's codes fit its int8 and uint8 storage, but ONNX's `QLinearConv` saturates to the *storage*
# type's range, not the grid's: the export adds a `Clip` node after each layer of a narrower grid (to the uint4
# codes' $[0, 15]$ here), which is the integer path's clamp.
#
# ## Training on many devices
#
# `qat_train` trains through `parallel.train_step`, data-parallel with `jax.sharding`: a device mesh with one axis,
# `"data"`; the batch sharded along it (`parallel.shard_batch`); parameters replicated. The batch is split into
# `shards` parts; each shard runs forward and backward on its own (BatchNorm and the observers see that shard, as in
# PyTorch's DistributedDataParallel), and the shards' gradients are averaged in a fixed order, their observed
# minima and maxima combined by min and max. The devices only decide where the shards run. This machine has:

# %%
mesh = parallel.make_mesh()
print(f"{len(jax.devices())} device(s): {jax.devices()} | mesh {dict(mesh.shape)}")
(sharded,) = parallel.shard_batch(mesh, splits.x_train[:64])
print("a batch of 64 on the mesh:", sharded.sharding)

# %% [markdown]
# Because each shard is one compiled program whatever the device count, and the combination a fixed fold, the
# result depends on the batch and the number of shards — never on the number of devices. The tests train on one
# device and on eight simulated CPU devices (`XLA_FLAGS=--xla_force_host_platform_device_count=8`, set before
# JAX starts) and compare the trained parameters bit for bit. (Two things break that in the obvious
# implementations: a `jit` over a sharded batch lets XLA pick the reduction tree per device count, and even one
# program holding all shards lets XLA's CPU backend fuse multiply-adds into FMAs differently.) On GPUs or a TPU slice
# the code is the same with `parallel.make_mesh()` over their devices; on several hosts, every process runs
#
# ```python
# jax.distributed.initialize()                     # coordinator, process count and id from the cluster
# mesh = parallel.make_mesh()                      # all hosts' devices
# x, y = parallel.shard_batch(mesh, local_x, local_y)  # each process passes its own rows
# ```
#
# and `qat_train.train_qat(..., mesh=mesh, config=qat.QATConfig(shards=...))`: the collectives cross hosts.
# Calibration is sharded the same way (`parallel.observe_step`): min and max are exact however a batch is split.
#
# ## A name that does not exist
#
# Write-ups about QAT in TensorFlow often call `tf.keras.models.quantize_model`. There is no such function in
# TensorFlow or Keras. Quantization-aware training in the TensorFlow ecosystem lives in the separate
# TensorFlow Model Optimization Toolkit (`pip install tensorflow-model-optimization`):
# `tfmot.quantization.keras.quantize_model(model)` wraps a Keras model's layers with fake-quant wrappers — what
# `qat.prepare` does here — and `tf.lite.TFLiteConverter` then writes the integer model.
#
# ## Exercises
#
# **Exercise 6.1.** Compute LSQ's step gradient (eq. 3, with the gradient scale) for the four values
# $x = (-2, 0.26, 0.9, 5)$ on the 3-bit narrow grid with $s = 0.5$ by hand, and compare with `jax.grad`.

# %% tags=["solution"]
values = np.array([-2.0, 0.26, 0.9, 5.0], np.float32)
v = values / 0.5
by_hand = np.where(v <= -3, -3, np.where(v >= 3, 3, np.round(v) - v))
g = qat.lsq_gradient_scale(values.size, int3)
autodiff = jax.grad(lambda s: jnp.sum(qat.lsq_fake_quant(values, qat.scale_gradient(s, g), 0.0, int3)))(0.5)
print("per value:", by_hand, "| g =", round(g, 4), "| by hand:", g * by_hand.sum(), "| jax.grad:", float(autodiff))

# %% [markdown]
# **Exercise 6.2.** After `qat.freeze_batch_norm`, a `QATLayer` should compute in training mode exactly what it
# computes in eval mode (the deployed layer). Check it on the trained W4A4 model.

# %% tags=["solution"]
check = nnx.clone(w4a4)
eval_logits = check(x_batch)
check.train()  # observers would update in training mode; the W4A4 model's warm-up is over, BatchNorm is frozen
print("max |train-mode - eval-mode logits|:", float(jnp.abs(check(x_batch) - eval_logits).max()))

# %% [markdown]
# **Exercise 6.3.** Is the learned 4-bit step of conv2's channel 0 close to the step that minimizes the squared
# rounding error of that channel's folded weights? Search the MSE-optimal step on a grid.

# %% tags=["solution"]
kernel = np.asarray(w4a4.conv2.folded_kernel())[..., 0].ravel()
learned_step = float(w4a4.conv2.weight_quantizer.current_scale(w4a4.conv2.folded_kernel())[0])
candidates = np.linspace(0.2, 1.5, 131) * np.abs(kernel).max() / 7
errors = [np.mean((np.clip(np.round(kernel / step), -7, 7) * step - kernel) ** 2) for step in candidates]
best = candidates[int(np.argmin(errors))]
print(f"MSE-optimal step {best:.5f}, learned {learned_step:.5f}, min-max {np.abs(kernel).max() / 7:.5f}")
# Close here; but the learned step minimizes the task loss, not the weights' rounding error, so they need not agree.
