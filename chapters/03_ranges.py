# %% [markdown]
# # 3. Ranges: what to quantize between
#
# Chapters 1 and 2 took the range $[\alpha, \beta]$ as given: the affine quantizer spreads its $2^b$ codes over it,
# rounds everything inside to the nearest code (error power $\Delta^2/12$, with $\Delta = s = (\beta - \alpha) /
# (q_{max} - q_{min})$) and clips everything outside. So the range decides both halves of the error: a wide range
# clips nothing but has a coarse step, a narrow one has a fine step but clips the tails. The data's minimum and
# maximum is the obvious choice and often a poor one, because one outlier stretches the grid for everybody. This
# chapter takes the walkthrough CNN, records its activations on a calibration set, measures that trade-off on one
# of them, and compares six ways of choosing the range — min-max, abs-max, a moving average, a percentile, the
# MSE-optimal clip and the KL-divergence (entropy) clip — by the error they cause and by the model's accuracy.

# %%
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from quantref import affine, data, formats, models, nn, ranges, rounding, train

# %% [markdown]
# ## The walkthrough model
#
# A small CNN (conv–batchnorm–ReLU twice, max-pool, dense) on scikit-learn's bundled 8×8 digits: 1,797 images
# split into train, calibration and test sets with a fixed seed. Training takes a few seconds and is cached on disk
# (`quantref cache path` shows where), so every chapter uses the same weights.

# %%
splits = data.load_splits()
sizes = {"train": len(splits.x_train), "calibration": len(splits.x_calib), "test": len(splits.x_test)}
print(", ".join(f"{split} {size}" for split, size in sizes.items()) + f" images, {sum(sizes.values()):,} in all")
model = train.load_or_train()
float_accuracy = models.accuracy(model, splits.x_test, splits.y_test)
print(f"float32 test accuracy: {float_accuracy:.2%}; one test image is {1 / len(splits.y_test):.2%}")

# %% [markdown]
# ## Calibration data
#
# Weights are known in advance, so their range can be read off directly. Activations depend on the input, so we
# run the model on a *calibration set* — images it was not trained on, here 200 — and observe each layer's input.
# Calibration runs over batches, as it would over a data set that does not fit in memory:

# %%
calibration_batches = [jnp.asarray(batch) for batch in np.array_split(splits.x_calib, 4)]
recorded = [nn.capture(model, batch)[1] for batch in calibration_batches]  # {"conv1.input": ..., ...} per batch
layer_inputs = [f"{path}.input" for path in nn.find_layers(model)]
for name in layer_inputs:
    values = np.concatenate([np.asarray(batch[name]).ravel() for batch in recorded])
    p99 = np.percentile(values, 99)
    print(
        f"{name:>12}: {values.size:>7} values, min {values.min():.3f}, max {values.max():.3f} "
        f"= {values.max() / p99:.2f}x the 99th percentile {p99:.3f}, zeros {np.mean(values == 0):.0%}; "
        f"{1 - p99 / values.max():.0%} of a [0, max] grid above it"
    )

# %% [markdown]
# The image input (`conv1.input`) is bounded in $[0, 1]$. The ReLU outputs (`conv2.input`, `dense.input`) are
# one-sided — 56 % and 24 % of their values are exact zeros — and long-tailed: the maximum is 1.73 and 1.93 times
# the 99th percentile, so a range that reaches the maximum spends 42 % and 48 % of its codes on the 1 % of values
# above that percentile.
#
# ## Clipping error against rounding error
#
# Here is the trade-off on a real tensor, the input of the CNN's dense layer (post-ReLU and max-pooled:
# heavy-tailed and one-sided), quantized to 4 bits, unsigned, with the top of the range swept from 10 % to 100 % of
# its maximum. `rounding.error_split` separates the squared error of the values inside the grid (rounding) from
# that of the values beyond it (clipping):

# %%
features = jnp.concatenate([batch["dense.input"].ravel() for batch in recorded])
fmt4 = formats.int_format(4, signed=False)
thresholds = np.linspace(0.1, 1.0, 46) * float(features.max())
parts = {"clipping": [], "rounding": [], "total": []}
for threshold in thresholds:
    scale, zero_point = affine.scale_zero_point(0.0, threshold, fmt4)
    split = rounding.error_split(
        features, affine.fake_quant(features, scale, zero_point, fmt4), 0.0, float(scale) * fmt4.qmax
    )
    for name in parts:
        parts[name].append(float(split[name]))

best = int(np.argmin(parts["total"]))
print(
    f"max activation {float(features.max()):.3f}; best 4-bit threshold {thresholds[best]:.3f} "
    f"({thresholds[best] / float(features.max()):.0%} of max): MSE {parts['total'][best]:.2e} "
    f"vs {parts['total'][-1]:.2e} at the max ({parts['total'][-1] / parts['total'][best]:.1f}x worse)"
)

figure, ax = plt.subplots(figsize=(6, 3.5))
for name, values in parts.items():
    ax.plot(thresholds, values, label=name)
ax.axvline(thresholds[best], color="gray", ls=":", lw=1)
ax.set(
    title="dense.input, 4 bits: error against clipping threshold",
    xlabel="top of the range (clipping threshold)",
    ylabel="mean squared error",
    yscale="log",
)
ax.legend()
plt.show()

# %% [markdown]
# Clipping error falls and rounding error grows as the range widens; their sum has a minimum well inside the data's
# extent. Every range estimator below picks a point on this curve, by a different rule.
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
print("streamed:", [float(v) for v in state], "| one pass:", [float(features.min()), float(features.max())])

# %% [markdown]
# `quantref.ranges` has every estimator in this `(init, update, result)` form, as optax has its optimizers.
# `ranges.calibrate` folds an observer over batches and returns the range $(\alpha, \beta)$:
#
# - **min-max**: $[\min x, \max x]$.
# - **abs-max**: $[-\max|x|, \max|x|]$, for symmetric quantization.
# - **moving average**: an exponential moving average of each batch's min and max (less sensitive to one
#   extreme batch).
# - **percentile**: clip at the $p$-th percentile (here 99.99) instead of the maximum.
# - **MSE**: the clipping range that minimizes $\lVert x - Q(x) \rVert^2$ — the minimum of the curve above.
# - **entropy**: the range that minimizes the KL divergence between the histogram of $x$ and that of its
#   quantized version (TensorRT's calibrator).
#
# MSE and entropy depend on the bit width, so each is calibrated for the format it will be used with.


# %%
def calibrate_all(name, fmt, batches=None):
    batches = batches or [batch[name] for batch in recorded]
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
# Where does each estimator put the top of the range? On a log scale, the histograms of the two ReLU outputs show
# the long tail that min-max must cover:

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
_, test_activations = nn.capture(model, jnp.asarray(splits.x_test))
print(f"{'method':>17} {'bits':>4}" + "".join(f"{name:>13}" for name in layer_inputs) + f"{'test acc':>10}")
results, sqnr_table = {}, {}
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

        logits, _ = nn.capture(model, jnp.asarray(splits.x_test), input_fn=quantize_input)
        accuracy = float(np.mean(np.argmax(np.asarray(logits), axis=1) == splits.y_test))
        results[(method, fmt.bits)], sqnr_table[(method, fmt.bits)] = accuracy, sqnrs
        print(f"{method:>17} {fmt.bits:>4}" + "".join(f"{s:>11.1f}dB" for s in sqnrs) + f"{accuracy:>10.2%}")

print("\nSQNR gain over min-max (dB)")
for (method, bits), sqnrs in sqnr_table.items():
    if method != "min-max":
        gains = np.array(sqnrs) - np.array(sqnr_table[("min-max", bits)])
        print(f"{method:>17} {bits:>4}" + "".join(f"{g:>+13.1f}" for g in gains))
for bits in (8, 4):
    column = [accuracy for (_, b), accuracy in results.items() if b == bits]
    print(
        f"{bits}-bit accuracy spans {min(column):.2%} to {max(column):.2%}: "
        f"{round((max(column) - min(column)) * len(splits.y_test))} test images"
    )

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
# At 8 bits the grid is fine enough that every estimator keeps the float accuracy. The SQNR still tells them apart:
# entropy gives up 8.0 dB on `conv2.input`, because the KL criterion matches the *shape* of the histogram, not the
# squared error, and clips more of the tail than an 8-bit grid needs. At 4 bits there are only 16 levels, and
# the estimators that clip the long tail of the ReLU outputs buy SQNR over min-max on `conv2.input` and
# `dense.input`: MSE the most (+2.0 and +3.3 dB), since it minimises exactly the error that SQNR measures;
# percentile and entropy between +0.3 and +1.7 dB. The 4-bit accuracy column moves by three test images (0.33
# points each), which on 300 images is within noise; the SQNR is the steadier measure. The image input gets the
# same range from every estimator but abs-max. Abs-max is meant for symmetric formats: on these non-negative
# activations its range $[-\max|x|, \max|x|]$ spends half of the grid on values that never occur, which costs
# about 6 dB (one bit) against min-max on the ReLU outputs and 8.4 dB on the image.
#
# ## Exercises
#
# **Exercise 3.1.** The min-max observer gives the same range however the calibration data is batched. Does the
# moving average? Calibrate both on `dense.input` in 4 batches and in 8.

# %% tags=["solution"]
for batch_count in (4, 8):
    batches = [
        nn.capture(model, jnp.asarray(batch))[1]["dense.input"] for batch in np.array_split(splits.x_calib, batch_count)
    ]
    found = {
        method: float(ranges.calibrate(observer, batches)[1])
        for method, observer in (("min-max", ranges.min_max()), ("moving average", ranges.moving_average_min_max()))
    }
    print(f"{batch_count} batches: " + ", ".join(f"{method} max {value:.3f}" for method, value in found.items()))
# The moving average weights the last batches most, so its range depends on the batching and on the order.

# %% [markdown]
# **Exercise 3.2.** Which percentile is best for a 4-bit range on `dense.input`? Sweep 99, 99.9, 99.99 and 100
# (min-max) and compare the SQNR on the test set with the MSE range's.

# %% tags=["solution"]
test_features = test_activations["dense.input"]
candidates = {f"percentile {p}": ranges.percentile(p) for p in (99.0, 99.9, 99.99)}
candidates |= {"min-max": ranges.min_max(), "MSE": ranges.mse(uint4)}
for label, observer in candidates.items():
    low, high = ranges.calibrate(observer, [batch["dense.input"] for batch in recorded])
    scale, zero_point = affine.scale_zero_point(low, high, uint4)
    sqnr = float(rounding.sqnr_db(test_features, affine.fake_quant(test_features, scale, zero_point, uint4)))
    print(f"{label:>17}: top of range {float(high):.3f}, SQNR {sqnr:.1f} dB")
