# %% [markdown]
# # 2. Rounding and its error
#
# The affine quantizer of chapter 1 has one non-linear step, $\operatorname{round}(x/s)$. This chapter looks at
# that step closely: which way ties go in each runtime, a float32 trap in the textbook formula, the uniform-noise
# model $\Delta^2/12$ and the SQNR it predicts (measured, and with a common mistake corrected), stochastic
# rounding, and what each rounding mode does to the walkthrough CNN's weights. Here $\Delta$ is the step of the
# grid that values are rounded to — for the affine quantizer $\Delta = s$, its scale.

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from quantref import affine, data, formats, models, nn, rounding, train

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
# Measured on a million Gaussian values $x \sim \mathcal{N}(0, 1)$ quantized to 6 bits over $[-3, 3]$ (three
# standard deviations), counting only the values inside the range:

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
# Let a signal swing between $-A$ and $A$ (its peak amplitude is $A$) on a $b$-bit grid of $2^b$ cells of width
# $\Delta$. It fills the grid ("full scale") when $2A = 2^b \Delta$. A uniform signal on $[-A, A]$ has power
# $A^2/3$ and a sine of amplitude $A$ has power $A^2/2$, so the signal-to-quantization-noise ratio is
#
# $$\text{uniform: } \frac{A^2/3}{\Delta^2/12} = \frac{4A^2}{\Delta^2} = 2^{2b} \ \Rightarrow\ 6.02\,b \text{ dB},
# \qquad \text{sine: } \frac{A^2/2}{\Delta^2/12} = 1.5 \cdot 2^{2b} \ \Rightarrow\ 6.02\,b + 1.76 \text{ dB},$$
#
# with $10\log_{10} 4 = 6.02$ and $10 \log_{10} 1.5 = 1.76$. The famous $6.02\,b + 1.76$ is the figure for a
# **sine**. It is often quoted for a uniform signal, which gets 1.76 dB less. Measured, for 2 to 12 bits:

# %%
print(f"10 log10(4) = {10 * np.log10(4):.2f}, 10 log10(1.5) = {10 * np.log10(1.5):.2f}")
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

print(f"{'bits':>4} {'uniform':>8} {'6.02b':>7} {'sine':>7} {'6.02b+1.76':>11} {'sine short by':>14}")
for i, bits in enumerate(bits_range):
    ideal_sine = float(rounding.ideal_sqnr_db(bits, "sine"))
    print(
        f"{bits:>4} {measured['uniform'][i]:>8.2f} {float(rounding.ideal_sqnr_db(bits, 'uniform')):>7.2f} "
        f"{measured['sine'][i]:>7.2f} {ideal_sine:>11.2f} {ideal_sine - measured['sine'][i]:>14.2f}"
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
# by 0.99 dB at 2 bits — because a sine lingers near its peaks, where the few coarse levels make an error that is
# not uniform; from 5 bits on it is within 0.38 dB.
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
# Unbiased is not the same as accurate. A value with fractional part $f$ is rounded up with probability $f$
# (error $1 - f$ steps) and down with probability $1 - f$ (error $-f$), so its error power is
# $f(1-f)\Delta^2$: zero on the grid, $\Delta^2/4$ half-way between two codes, and $\Delta^2/6$ on average over
# $f$ — twice the $\Delta^2/12$ of rounding to nearest (exercise 2.1 measures it).
#
# ## Rounding the CNN's weights
#
# Does the rounding mode matter for a model? The walkthrough CNN's weights (batch norm folded into the
# convolutions, as deployed: see chapter 1), per-channel symmetric, rounded four ways. For each: the mean error
# in steps (the bias), the error power relative to $\Delta^2/12$ (the noise), and the test accuracy:

# %%
model = train.load_or_train()
splits = data.load_splits()
folded = nn.fold_batch_norm(model, jnp.asarray(splits.x_calib[:1]))
float_accuracy = models.accuracy(model, splits.x_test, splits.y_test)
print(f"float32 test accuracy {float_accuracy:.2%}; one test image is {1 / len(splits.y_test):.2%}")
print(f"{'mode':>20} {'bits':>4} {'mean error (steps)':>19} {'power / (D^2/12)':>17} {'test accuracy':>14}")
for bits in (8, 4):
    fmt = formats.int_format(bits, narrow_range=True)
    for mode in ("half_to_even", "half_away_from_zero", "floor", "stochastic"):
        errors = []

        def quantize_kernel(path, kernel):
            absmax = jnp.abs(kernel).reshape(-1, kernel.shape[-1]).max(axis=0)
            scale, _ = affine.scale_zero_point(-absmax, absmax, fmt, symmetric=True)
            key = jax.random.key(7) if mode == "stochastic" else None
            kernel_hat = affine.fake_quant(kernel, scale, None, fmt, axis=-1, rounding=mode, key=key)
            errors.append(np.asarray((kernel_hat - kernel) / scale).ravel())
            return kernel_hat

        accuracy = models.accuracy(nn.map_kernels(folded, quantize_kernel), splits.x_test, splits.y_test)
        errors = np.concatenate(errors)
        print(f"{mode:>20} {bits:>4} {errors.mean():>19.3f} {np.mean(errors**2) * 12:>17.2f} {accuracy:>14.2%}")

# %% [markdown]
# The weights follow the uniform-noise model: rounded to nearest, their error power is $\Delta^2/12$ to within
# about 1 % (1.01 and 0.99 times it). The two nearest modes agree, since real weights almost never sit on a tie.
# Floor is biased by half a step and its error power is about $\Delta^2/3$, four times the nearest modes'
# (the error is spread over a whole step, $[-\Delta, 0)$); stochastic rounding is unbiased with about twice their
# power, $\Delta^2/6$, as derived above. At 8 bits none of this moves the accuracy; at 4 bits, where a step is a
# sizeable fraction of every weight, floor's systematic error costs the most. Stochastic rounding's accuracy is that
# of one random draw (`key(7)`); read it as "about as good as nearest", not better.
#
# Rounding error that does not average out in a layer's *output* is what the correction methods go after: bias
# correction removes its mean, and AdaRound chooses for each weight whether to round up or down so as to minimise
# the layer's output error — see the [pitfalls](../pitfalls.md) page for both. Chapter 3 turns to the other half of
# a quantizer's error: where to put the range, trading clipping error against rounding error.
#
# ## Exercises
#
# **Exercise 2.1.** Measure stochastic rounding's error power on values spread evenly over many steps and compare
# it with $\Delta^2/6$ and with round-to-nearest's $\Delta^2/12$.

# %% tags=["solution"]
values = jax.random.uniform(jax.random.key(3), (1_000_000,), minval=-50.0, maxval=50.0)  # step 1, many steps
for mode, model_power in (("stochastic", 1 / 6), ("half_to_even", 1 / 12)):
    rounded = rounding.round_to_int(values, mode, key=jax.random.key(4) if mode == "stochastic" else None)
    power = float(jnp.mean((rounded - values) ** 2))
    print(f"{mode:>12}: error power {power:.4f} step^2, model {model_power:.4f}")
    assert abs(power - model_power) < 0.002

# %% [markdown]
# **Exercise 2.2.** Ties are rare in real weights but common in data that is already on a half-step grid. Round
# the 1,000 ties $0.5, 1.5, \dots, 999.5$ with half-to-even and with half-away-from-zero: what is each mode's mean
# error?

# %% tags=["solution"]
ties = jnp.arange(1_000) + 0.5
print(f"{ties.size} ties from {float(ties[0])} to {float(ties[-1])}")
for mode in ("half_to_even", "half_away_from_zero"):
    bias = float(jnp.mean(rounding.round_to_int(ties, mode) - ties))
    print(f"{mode:>20}: mean error {bias:+.3f} steps")
# Half away from zero always rounds these positive ties up (+0.5 each); half to even goes up and down in turn.
