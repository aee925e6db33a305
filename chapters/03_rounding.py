# %% [markdown]
# # 3. Rounding and its error
#
# The affine quantizer of chapter 2 has one non-linear step, $\operatorname{round}(x/s)$. This chapter looks at
# that step closely: which way ties go in each runtime, a float32 trap in the textbook formula, the uniform-noise
# model $\Delta^2/12$ and the SQNR it predicts (measured, and with a common mistake corrected), stochastic
# rounding, and the split of a quantizer's error into clipping and rounding — the trade-off that range estimation
# (chapter 1) is really choosing a point on. It ends with what biased rounding does to the walkthrough CNN.

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from quantref import affine, data, formats, models, rounding, train

# %% [markdown]
# ## Six rounding modes
#
# They differ only on ties (and, for floor/ceil/stochastic, everywhere). ONNX, PyTorch and XLA round half to even;
# TFLite's reference kernels round half away from zero; `floor(x + 0.5)` ("half up") is what many hand-written
# kernels do.

# %%
ties = jnp.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.3, -0.7])
print(f"{'x':>22}", " ".join(f"{float(v):>5.1f}" for v in ties))
for mode in rounding.ROUNDING_MODES:
    key = jax.random.key(0) if mode == "stochastic" else None
    # (+ 0.0 turns -0.0 into 0.0 for printing)
    print(f"{mode:>22}", " ".join(f"{float(v) + 0.0:>5.0f}" for v in rounding.round_to_int(ties, mode, key)))

# %% [markdown]
# ## A float32 trap
#
# The textbook "half up" is $\lfloor x + 0.5 \rfloor$. In float32, $0.49999997 + 0.5$ is not representable and
# rounds to $1.0$, so the textbook formula rounds a number below one half *up*. `quantref.rounding` computes
# $f = \lfloor x \rfloor$ and compares the exact remainder $x - f$ with one half instead:

# %%
x = np.float32(0.49999997)
print("x =", repr(x), "| x + 0.5 =", repr(x + np.float32(0.5)), "| floor(x + 0.5) =", np.floor(x + np.float32(0.5)))
print("rounding.round_to_int(x, 'half_up') =", float(rounding.round_to_int(jnp.float32(x), "half_up")))

# %% [markdown]
# ## The uniform-noise model
#
# When the signal varies over many steps of the grid, the rounding error $e = \hat x - x$ is spread evenly over
# $[-\Delta/2, \Delta/2]$, so its power is
#
# $$E[e^2] = \frac{1}{\Delta}\int_{-\Delta/2}^{\Delta/2} e^2\,de = \frac{\Delta^2}{12}.$$
#
# Measured on a million Gaussian values quantized to 6 bits over $\pm 3\sigma$:

# %%
key = jax.random.key(0)
signal = jax.random.normal(key, (1_000_000,))
fmt6 = formats.int_format(6)
scale, zero_point = affine.scale_zero_point(-3.0, 3.0, fmt6, symmetric=True)
inside = jnp.abs(signal) < 3.0
error = (affine.fake_quant(signal, scale, zero_point, fmt6) - signal)[inside]
print(
    f"step {float(scale):.4f}: measured error power {float(jnp.mean(error**2)):.3e}, "
    f"model {float(rounding.uniform_noise_power(scale)):.3e}"
)

figure, ax = plt.subplots(figsize=(6, 3))
ax.hist(np.asarray(error) / float(scale), bins=60, density=True)
ax.set(title="Rounding error of a 6-bit quantizer, in steps", xlabel=r"$e / \Delta$", ylabel="density")
plt.show()

# %% [markdown]
# ## SQNR: 6.02 b dB, and where the 1.76 comes from
#
# A $b$-bit grid has $2^b$ cells of width $\Delta$. A signal that fills it ("full scale") has peak-to-peak
# amplitude $A = 2^b \Delta$. The signal-to-quantization-noise ratio is then
#
# $$\text{uniform signal: } \frac{A^2/12}{\Delta^2/12} = 2^{2b} \ \Rightarrow\ 6.02\,b \text{ dB}, \qquad
# \text{sine: } \frac{A^2/8}{\Delta^2/12} = 1.5 \cdot 2^{2b} \ \Rightarrow\ 6.02\,b + 1.76 \text{ dB}.$$
#
# The famous $6.02b + 1.76$ is the figure for a **sine**. It is often quoted for a uniform signal, which gets
# 1.76 dB less. Measured, for 2 to 12 bits:

# %%
bits_range = np.arange(2, 13)
measured = {"uniform": [], "sine": []}
for bits in bits_range:
    fmt = formats.int_format(int(bits))
    step = 1.0 / 2**bits
    lo, hi = (fmt.qmin - 0.5) * step, (fmt.qmax + 0.5) * step  # the 2^b whole cells of the grid
    uniform = jax.random.uniform(jax.random.key(int(bits)), (400_000,), minval=lo, maxval=hi)
    sine = (hi - lo) / 2 * jnp.sin(jnp.linspace(0, 2 * np.pi * 1001, 400_000)) + (hi + lo) / 2
    for name, signal in (("uniform", uniform), ("sine", sine)):
        signal_hat = affine.fake_quant(signal, jnp.float32(step), None, fmt)
        # The power of the signal about its mean, as the formulas above assume a zero-mean signal.
        centred = signal - jnp.mean(signal)
        measured[name].append(float(10 * jnp.log10(jnp.sum(centred**2) / jnp.sum((signal - signal_hat) ** 2))))

print(f"{'bits':>4} {'uniform':>8} {'6.02b':>7} {'sine':>7} {'6.02b+1.76':>11}")
for i, bits in enumerate(bits_range):
    print(
        f"{bits:>4} {measured['uniform'][i]:>8.2f} {float(rounding.ideal_sqnr_db(bits, 'uniform')):>7.2f} "
        f"{measured['sine'][i]:>7.2f} {float(rounding.ideal_sqnr_db(bits, 'sine')):>11.2f}"
    )

figure, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(bits_range, rounding.ideal_sqnr_db(bits_range, "uniform"), "k--", lw=1, label="6.02 b")
ax.plot(bits_range, rounding.ideal_sqnr_db(bits_range, "sine"), "k:", lw=1, label="6.02 b + 1.76")
ax.plot(bits_range, measured["uniform"], "o", label="measured, uniform signal")
ax.plot(bits_range, measured["sine"], "s", mfc="none", label="measured, sine")
ax.set(title="Measured SQNR against the uniform-noise model", xlabel="bits", ylabel="SQNR (dB)")
ax.legend()
plt.show()

# %% [markdown]
# The uniform signal lands on $6.02\,b$ at every width. The sine falls short of $6.02\,b + 1.76$ at low widths —
# by 1 dB at 2 bits — because a sine lingers near its peaks, where the few coarse levels make an error that is
# not uniform; the model is within 0.4 dB from 5 bits on.
#
# ## Stochastic rounding
#
# Round-to-nearest is deterministic and, for a single value, biased: $0.3$ always becomes $0$. Stochastic rounding
# rounds up with probability equal to the fractional part, so $E[\operatorname{round}(x)] = x$ exactly. It matters
# when many small quantized quantities are *summed* — gradient updates in low-precision training:

# %%
updates = jnp.full((10_000,), 0.3)
nearest = rounding.round_to_int(updates, "half_to_even")
stochastic = rounding.round_to_int(updates, "stochastic", key=jax.random.key(1))
print(
    f"sum of 10,000 updates of 0.3: exact {float(updates.sum()):.0f}, nearest {float(nearest.sum()):.0f}, "
    f"stochastic {float(stochastic.sum()):.0f}"
)

# %% [markdown]
# ## Clipping error against rounding error
#
# Every range choice trades the two parts of the error. A narrow range clips the tails (clipping error grows); a
# wide one makes the step $\Delta$ large (rounding error grows, as $\Delta^2/12$). Here is the trade-off on a real
# tensor, the input of the CNN's dense layer (post-ReLU, max-pooled: heavy-tailed and one-sided), quantized to
# 4 bits, unsigned, with a clipping threshold swept from 10% to 100% of its maximum:

# %%
model = train.load_or_train()
splits = data.load_splits()
_, activations = models.forward_with_activations(model, jnp.asarray(splits.x_calib))
features = activations["dense.input"].ravel()
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
    xlabel="clipping threshold",
    ylabel="mean squared error",
    yscale="log",
)
ax.legend()
plt.show()

# %% [markdown]
# ## Rounding the CNN's weights
#
# Does the rounding mode matter for a model? Round-to-nearest modes differ only on exact ties, which real weights
# almost never hit. Floor is another story: it moves every weight down by $\Delta/2$ on average, a systematic error
# that accumulates through every dot product. Stochastic rounding is unbiased but noisier than nearest (its error
# power is up to $\Delta^2/4$ per value, not $\Delta^2/12$). All weights, per-channel symmetric:

# %%
float_accuracy = models.accuracy(model, splits.x_test, splits.y_test)
print(f"float32 test accuracy {float_accuracy:.2%}")
print(f"{'mode':>20} {'bits':>4} {'mean error (steps)':>19} {'test accuracy':>14}")
for bits in (8, 4):
    fmt = formats.int_format(bits, narrow_range=True)
    for mode in ("half_to_even", "half_away_from_zero", "floor", "stochastic"):
        errors = []

        def quantize_kernel(name, kernel):
            absmax = jnp.abs(kernel).reshape(-1, kernel.shape[-1]).max(axis=0)
            scale, _ = affine.scale_zero_point(-absmax, absmax, fmt, symmetric=True)
            key = jax.random.key(7) if mode == "stochastic" else None
            kernel_hat = affine.fake_quant(kernel, scale, None, fmt, axis=-1, rounding=mode, key=key)
            errors.append(float(jnp.mean((kernel_hat - kernel) / scale)))
            return kernel_hat

        accuracy = models.accuracy(models.map_kernels(model, quantize_kernel), splits.x_test, splits.y_test)
        print(f"{mode:>20} {bits:>4} {np.mean(errors):>19.3f} {accuracy:>14.2%}")

# %% [markdown]
# The nearest modes are unbiased (mean error ≈ 0 steps) and agree with each other, since real weights almost never
# sit on a tie. Floor is biased by half a step, and at 4 bits, where a step is a sizeable fraction of every
# weight, it costs the most accuracy. Stochastic rounding's accuracy is that of one random draw (`key(7)`); other
# keys land a few test images either side, so read it as "about as good as nearest", not better. Chapter 4's bias
# correction and AdaRound start from exactly this observation: rounding error that does not average out in a
# layer's output is worth correcting.
