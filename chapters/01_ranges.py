# %% [markdown]
# # 1. Ranges: what to quantize between
#
# A uniform quantizer puts $2^b$ evenly spaced values between two ends, $\alpha$ and $\beta$. Everything else
# follows from those two numbers (chapter 2 turns them into a scale and a zero point), so the first question of
# quantization is: *which range?* The data's minimum and maximum is the obvious answer and often a poor one,
# because one outlier stretches the grid for everybody. This chapter trains the walkthrough CNN, records its
# activations on a calibration set, and compares six ways of choosing the range — min-max, abs-max, a moving
# average, a percentile, the MSE-optimal clip and the KL-divergence (entropy) clip — by the error they cause and
# by the model's accuracy.

# %%
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from quantref import affine, data, formats, models, ranges, rounding, train

# %% [markdown]
# ## The walkthrough model
#
# A small CNN (conv–batchnorm–ReLU twice, max-pool, dense) on scikit-learn's bundled 8×8 digits: 1,797 images
# split into train, calibration and test sets with a fixed seed. Training takes a few seconds and is cached on disk
# (`quantref cache path` shows where), so later chapters reuse the same weights.

# %%
splits = data.load_splits()
print(f"train {len(splits.x_train)}, calibration {len(splits.x_calib)}, test {len(splits.x_test)} images")
model = train.load_or_train()
float_accuracy = models.accuracy(model, splits.x_test, splits.y_test)
print(f"float32 test accuracy: {float_accuracy:.2%}")

# %% [markdown]
# ## Calibration data
#
# Weights are known in advance, so their range can be read off directly. Activations depend on the input, so we
# run the model on a *calibration set* — images it was not trained on, here 200 — and observe each layer's input.
# Calibration runs over batches, as it would over a data set that does not fit in memory:

# %%
calibration_batches = [jnp.asarray(batch) for batch in np.array_split(splits.x_calib, 4)]
recorded = [models.forward_with_activations(model, batch)[1] for batch in calibration_batches]
layer_inputs = [f"{name}.input" for name in models.LAYER_NAMES]
for name in layer_inputs:
    values = np.concatenate([np.asarray(batch[name]).ravel() for batch in recorded])
    print(
        f"{name:>12}: {values.size:>7} values, min {values.min():.3f}, max {values.max():.3f}, "
        f"99th percentile {np.percentile(values, 99):.3f}, zeros {np.mean(values == 0):.0%}"
    )

# %% [markdown]
# The ReLU outputs (`conv2.input`, `dense.input`) are one-sided, a quarter to a half exact zeros, and
# long-tailed: the maximum is about twice the 99th percentile. A range that reaches the maximum spends half of its
# grid on the 1 % of values above that percentile.
#
# ## An observer, from nothing
#
# The simplest estimator keeps a running minimum and maximum. Written as a pair of pure functions — `init` makes a
# state, `update` folds in one batch — it streams over any number of batches, and the result does not depend on
# how the data was batched:


# %%
def min_max_init():
    return jnp.inf, -jnp.inf


def min_max_update(state, batch):
    low, high = state
    return jnp.minimum(low, batch.min()), jnp.maximum(high, batch.max())


state = min_max_init()
for batch in recorded:
    state = min_max_update(state, batch["dense.input"])
everything = jnp.concatenate([batch["dense.input"].ravel() for batch in recorded])
print("streamed:", [float(v) for v in state], "| one pass:", [float(everything.min()), float(everything.max())])

# %% [markdown]
# `quantref.ranges` has every estimator in this `(init, update, result)` form, as optax has its optimizers.
# `ranges.calibrate` folds an observer over batches and returns $(\alpha, \beta)$:
#
# - **min-max**: $[\min x, \max x]$.
# - **abs-max**: $[-\max|x|, \max|x|]$, for symmetric quantization.
# - **moving average**: an exponential moving average of each batch's min and max (less sensitive to one
#   extreme batch).
# - **percentile**: clip at the $p$-th percentile (here 99.99) instead of the maximum.
# - **MSE**: the clipping range that minimizes $\lVert x - Q(x) \rVert^2$ — the "least squares" range.
# - **entropy**: the range that minimizes the KL divergence between the histogram of $x$ and that of its
#   quantized version (TensorRT's calibrator).
#
# MSE and entropy depend on the bit width, so each is calibrated for the format it will be used with.


# %%
def calibrate_all(name, fmt):
    batches = [batch[name] for batch in recorded]
    observers = {
        "min-max": ranges.min_max(),
        "abs-max": ranges.abs_max(),
        "moving average": ranges.moving_average_min_max(),
        "percentile 99.99": ranges.percentile(99.99),
        "MSE": ranges.mse(fmt),
        "entropy": ranges.entropy(fmt),
    }
    return {method: ranges.calibrate(observer, batches) for method, observer in observers.items()}


uint8, uint4 = formats.int_format(8, signed=False), formats.int_format(4, signed=False)
dense_ranges = calibrate_all("dense.input", uint4)
for method, (low, high) in dense_ranges.items():
    print(f"{method:>17}: [{float(low):7.3f}, {float(high):7.3f}]")

# %% [markdown]
# Where does each estimator put the top of the range? On a log scale, the histogram of `dense.input` shows the
# long tail that min-max must cover:

# %%
figure, axes = plt.subplots(1, 2, figsize=(12, 3.5))
for ax, name in zip(axes, ("conv2.input", "dense.input")):
    values = np.concatenate([np.asarray(batch[name]).ravel() for batch in recorded])
    ax.hist(values[values > 0], bins=100, color="lightgray")
    for (method, (_, high)), color in zip(calibrate_all(name, uint4).items(), plt.cm.tab10.colors):
        ax.axvline(float(high), color=color, lw=1.5, label=f"{method} ({float(high):.2f})")
    ax.set(title=f"{name} (non-zero values), 4-bit ranges", xlabel="activation", ylabel="count", yscale="log")
    ax.legend(fontsize=7)
figure.tight_layout()
plt.show()

# %% [markdown]
# ## Error and accuracy
#
# For each estimator and bit width: the SQNR of each layer's input when it alone is fake-quantized (unsigned,
# asymmetric; higher is better), and the test accuracy of the model when *all three* layer inputs are
# fake-quantized with ranges calibrated on the calibration set. Weights stay in float here, to isolate the
# effect of the activation ranges.

# %%
_, test_activations = models.forward_with_activations(model, jnp.asarray(splits.x_test))
float_logits = np.asarray(models.forward_with_activations(model, jnp.asarray(splits.x_test))[0])
print(f"{'method':>17} {'bits':>4}" + "".join(f"{name:>13}" for name in layer_inputs) + f"{'test acc':>10}")
results = {}
for fmt in (uint8, uint4):
    per_layer = {name: calibrate_all(name, fmt) for name in layer_inputs}
    for method in per_layer[layer_inputs[0]]:
        params = {name: affine.scale_zero_point(*per_layer[name][method], fmt) for name in layer_inputs}
        sqnrs = [
            float(
                rounding.sqnr_db(test_activations[name], affine.fake_quant(test_activations[name], *params[name], fmt))
            )
            for name in layer_inputs
        ]

        def quantize_input(name, x):
            return affine.fake_quant(x, *params[name], fmt) if name in params else x

        logits, _ = models.forward_with_activations(model, jnp.asarray(splits.x_test), activation_fn=quantize_input)
        accuracy = float(np.mean(np.argmax(np.asarray(logits), axis=1) == splits.y_test))
        results[(method, fmt.bits)] = accuracy
        print(f"{method:>17} {fmt.bits:>4}" + "".join(f"{s:>11.1f}dB" for s in sqnrs) + f"{accuracy:>10.2%}")

# %%
methods = list(dict.fromkeys(method for method, _ in results))
figure, ax = plt.subplots(figsize=(7, 3.2))
positions = np.arange(len(methods))
for offset, bits in ((-0.2, 8), (0.2, 4)):
    ax.bar(positions + offset, [results[(m, bits)] for m in methods], width=0.4, label=f"A{bits}")
ax.axhline(float_accuracy, color="k", ls="--", lw=1, label="float32")
ax.set_xticks(positions, methods, rotation=20)
ax.set(
    title="Test accuracy with all layer inputs fake-quantized",
    ylabel="accuracy",
    ylim=(min(results.values()) - 0.05, 1.0),
)
ax.legend()
figure.tight_layout()
plt.show()

# %% [markdown]
# At 8 bits the grid is fine enough that every estimator keeps the accuracy. The SQNR still tells them apart:
# entropy gives up about 8 dB on `conv2.input`, because the KL criterion matches the *shape* of the histogram, not
# the squared error, and clips more of the tail than a 256-level grid needs. At 4 bits
# there are only 16 levels, and the estimators that clip the long tail of the ReLU outputs (percentile, MSE,
# entropy) buy SQNR over min-max on `conv2.input` and `dense.input` — MSE the most (2 to 3 dB), since it
# minimises exactly the error that SQNR measures; percentile and entropy between 0.3 and 1.7 dB. The accuracy column
# moves by a test image or two (0.33 points
# each), which on 300 images is within noise; the SQNR is the steadier measure. The image input (`conv1.input`,
# bounded in $[0, 1]$ with no tail) gets the same range from every estimator. Abs-max is meant for symmetric formats:
# on these non-negative activations its range $[-\max|x|, \max|x|]$ spends half of the grid on values that never
# occur, which costs about 6 dB (one bit) against min-max on the ReLU outputs, 8 dB on the image. Chapter 3 shows the
# same trade-off from the other side:
# clipping error against rounding error.
