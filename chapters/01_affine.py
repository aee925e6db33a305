# %% [markdown]
# # 1. The affine mapping
#
# A quantized tensor is a tensor of small integers and two numbers that say what the integers mean: a **scale**
# and a **zero point**. This chapter builds that mapping — the *affine* (or *uniform*, *asymmetric*) quantizer
# that every deployed runtime uses — from a real interval $[\alpha, \beta]$ that it must cover. Where that interval
# comes from is chapter 3's subject (the data's minimum and maximum is the obvious answer and often a poor one);
# here it is simply given. We build the quantizer by hand, check it against `quantref.affine`, draw it, name the
# conventions that real tools disagree on, and then quantize the walkthrough CNN's weights per tensor, per channel
# and per group, measuring accuracy and the bytes actually written to disk. Chapter 2 then looks closely at its one
# non-linear step, the rounding.
#
# Notation, the same on every page of this site: a $b$-bit integer grid $q_{min}, \dots, q_{max}$; the real range
# $[\alpha, \beta]$ it is meant to cover; the scale $s$ (the grid's step in real units) and the zero point $z$;
# $x$ a real value and $\hat x$ its quantized value.

# %%
import os
import tempfile

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from quantref import affine, data, formats, models, nn, rounding, train

np.set_printoptions(precision=4, suppress=True)

# %% [markdown]
# ## A grid of integers and two numbers
#
# A $b$-bit format is the set of integers $q_{min}, \dots, q_{max}$: $[-128, 127]$ for int8, $[0, 255]$ for
# uint8. To put reals on it we need a step, the scale $s > 0$, and an offset, the integer zero point $z$:
#
# $$q = \operatorname{clamp}\big(\operatorname{round}(x / s) + z,\ q_{min},\ q_{max}\big), \qquad \hat x = s\,(q - z).$$
#
# Code $q$ stands for the real value $s(q - z)$, so the grid's values run from $s(q_{min} - z)$ to
# $s(q_{max} - z)$ — the *representable range* — and real 0 is code $z$. To spread the $q_{max} - q_{min}$ steps
# over $[\alpha, \beta]$, take $s = (\beta - \alpha)/(q_{max} - q_{min})$. Putting $\alpha$ exactly on $q_{min}$
# would need $z = q_{min} - \alpha/s$, but the zero point is an integer (the next sections say why), so it is
# rounded: $z = \operatorname{round}(q_{min} - \alpha/s)$. Rounding $z$ slides the whole grid by up to half a step.
# $\alpha$ therefore lands on $q_{min}$ only to within $s/2$, and since the grid is exactly $\beta - \alpha$ wide,
# what it gains at one end it loses at the other: one end of $[\alpha, \beta]$ can fall outside the grid and be
# clipped.
#
# Here is a 3-bit unsigned grid (codes 0 to 7) asked to cover $[\alpha, \beta] = [-0.7, 1.4]$:

# %%
fmt3 = formats.int_format(3, signed=False)
alpha, beta = -0.7, 1.4
scale, zero_point = affine.scale_zero_point(alpha, beta, fmt3)
codes = np.arange(fmt3.qmin, fmt3.qmax + 1)
grid = float(scale) * (codes - int(zero_point))
print(f"s = {float(scale):.4f}, q_min - alpha/s = {fmt3.qmin - alpha / float(scale):.4f}, z = {int(zero_point)}")
print(f"representable range [{grid[0]:.4f}, {grid[-1]:.4f}]: alpha = {alpha} is clipped to {grid[0]:.4f}")

figure, ax = plt.subplots(figsize=(10, 2.6))
ax.axhline(0, color="k", lw=1)
ax.axvspan(alpha, beta, ymin=0.35, ymax=0.65, color="tab:orange", alpha=0.2)
ax.text(beta - 0.02, -0.2, r"the range $[\alpha, \beta]$", ha="right", va="top", fontsize=9, color="tab:orange")
for code, value in zip(codes, grid):
    ax.plot([value, value], [-0.08, 0.08], color="tab:blue", lw=2)
    label = f"q={code}" + ("\n= z: real 0" if code == int(zero_point) else "")
    ax.text(value, -0.5, label, ha="center", va="top", fontsize=9, color="tab:blue")
    ax.text(value, 0.14, f"{value:.1f}", ha="center", va="bottom", fontsize=8)
for value, label in ((alpha, r"$\alpha$"), (beta, r"$\beta$")):
    ax.plot(value, 0, "v", color="tab:orange", ms=10)
    ax.text(value, 0.45, label, ha="center", fontsize=13, color="tab:orange")
ax.annotate("", (grid[4], 0.32), (grid[3], 0.32), arrowprops={"arrowstyle": "<->"})
ax.text((grid[3] + grid[4]) / 2, 0.36, f"s = {float(scale):.1f}", ha="center", fontsize=11)
ax.set(title=r"The affine grid: 3 bits over $[\alpha, \beta] = [-0.7, 1.4]$", ylim=(-1, 0.8), xlim=(-1.0, 1.7))
ax.set_yticks([])
ax.set_xlabel("real value x (the integer codes q below the line)")
plt.show()

# %% [markdown]
# The ideal zero point was $2.3333$; rounded to 2, the grid slid right by a third of a step, so its bottom value
# is $-0.6$ and every $x < -0.6$, $\alpha$ included, is clipped there. At the top the grid now reaches $1.5$,
# beyond $\beta$.
#
# ## By hand, then with the library
#
# The same formulas for int8 over $[-1, 1]$, in float64:


# %%
def quantize_by_hand(x, alpha, beta, qmin, qmax):
    scale = (beta - alpha) / (qmax - qmin)
    zero_point = int(np.round(qmin - alpha / scale))
    return np.clip(np.round(x / scale) + zero_point, qmin, qmax), scale, zero_point


x = np.array([-1.0, -0.3, 0.0, 0.25, 0.6, 1.0])
q, scale, zero_point = quantize_by_hand(x, -1.0, 1.0, -128, 127)
print("scale", scale, "| q_min - alpha/s =", -128 - (-1.0) / scale, "| zero point", zero_point)
print("x/s  ", x / scale)
print("q    ", q)
print("x_hat", scale * (q - zero_point))
print(f"|x_hat - x| at 0.6: {abs(scale * (q[4] - zero_point) - 0.6):.4f}; s/2 = 1/255 = {scale / 2:.4f}")
hand_steps = np.arange(-128, 128) - zero_point  # each code's value, in steps of s

# %% [markdown]
# $[-1, 1]$ is 255 steps wide and $\pm 1$ sit at $\pm 127.5$ steps from zero — half-way between codes. With
# $z = 0$ the grid's values are $s \cdot \{-128, \dots, 127\}$, from $-1.0039$ to $0.9961$: neither end of the
# range is on the grid, and $\beta = 1$ is clipped to $0.9961$. (And $-1$ itself is a tie, $-127.5$, that half-to-even
# rounding sends to $-128$, i.e. to $-1.0039$.) Also look at $0.6$: $0.6/s = 76.5$ is a tie too, which rounds to 76,
# and $76 \cdot 2/255 = 0.5961$. The error, $1/255 = 0.0039$, is exactly the bound $s/2$: a tie is the worst case
# of rounding. A popular write-up claims that $0.6$ quantizes to $0$ on this grid and that a "linear correction"
# recovers $0.12$; neither is true (see the [pitfalls](../pitfalls.md) page).
#
# The library computes in float32, with the conventions spelled out (`scale_zero_point` first widens the range to
# contain 0, then computes $s$ and $z$; `quantize` divides, rounds half to even, adds $z$ and clamps):

# %%
scale, zero_point = affine.scale_zero_point(-1.0, 1.0, formats.INT8)
q = affine.quantize(x, scale, zero_point, formats.INT8)
print(f"scale {float(scale):.10f} | q_min - alpha/s = {-128 - np.float32(-1.0) / scale:.5f}", end="")
print(f" | zero point {int(zero_point)}")
print("q    ", np.asarray(q))
print("x_hat", np.asarray(affine.dequantize(q, scale, zero_point)))
library_steps = np.arange(-128, 128) - int(zero_point)
shared = np.intersect1d(hand_steps, library_steps)
print(
    f"the two grids share {shared.size} of 256 values; this one spans [{library_steps[0]}, {library_steps[-1]}] steps"
)

# %% [markdown]
# The zero point came out as $-1$, not $0$. In float32, $s = 2/255$ is stored as $0.0078431377$, a hair above
# $2/255$, so $q_{min} - \alpha/s$ is $-0.50001$ instead of the tie $-0.5$, and it rounds to $-1$ rather than to the
# even $0$. The two grids are one code apart: they share 255 of their 256 values, and each has one the other lacks
# (this one reaches $+128 s = 1.0039$ but stops at $-127 s = -0.9961$, so it clips $\alpha = -1$ instead of
# $\beta$). The values inside come back the same — $-0.3$, $0.25$ and $0.6$ — and only the ends differ: here $-1$
# is clipped to $-0.9961$, and $1$ is rounded to $0.9961$ instead of being clipped to it. It is a first taste of
# why bit-exact work (chapter 7, the runtime oracle) has to say which precision every step is computed in.
#
# ## Zero must be exact
#
# The zero point is an integer, so $x = 0$ maps to $q = z$ and back to exactly $0$. That is why $z$ is rounded, and
# why the range is first widened to contain zero: zero padding in a convolution and the many exact zeros after a
# ReLU must stay zeros, or every padded border picks up a bias. A range that does not contain zero, e.g.
# $[0.5, 3]$, is stretched down to $0$:

# %%
scale, zero_point = affine.scale_zero_point(0.5, 3.0, formats.UINT8)
print(f"scale {float(scale):.6f} = 3/255, zero point {int(zero_point)} (the range widened to [0, 3])")
print("0.0 ->", np.asarray(affine.fake_quant(jnp.zeros(3), scale, zero_point, formats.UINT8)))

# %% [markdown]
# ## Symmetric or asymmetric
#
# Fixing $z = 0$ on a signed grid — *symmetric* quantization — makes the integer arithmetic cheaper (no zero-point
# cross terms in a matrix product, see chapter 7), at a price on one-sided data such as the output of a ReLU: the
# grid is centred on zero, so its negative half is never used. The asymmetric grid puts all its codes on the data.
# On a one-sided sample, with 3 bits so that the codes can be seen:

# %%
rng = np.random.default_rng(0)
relu_like = np.abs(rng.standard_normal(10_000)).astype(np.float32)  # one-sided, like a ReLU's output
grids = {
    "asymmetric (uint, z from the range)": (formats.int_format(3, signed=False), False),
    "symmetric (int, z = 0)": (formats.int_format(3), True),
}
sqnr_by_grid = {}
figure, axes = plt.subplots(2, 1, figsize=(9, 4), sharex=True)
for ax, (label, (fmt, symmetric)) in zip(axes, grids.items()):
    scale, zero_point = affine.scale_zero_point(0.0, relu_like.max(), fmt, symmetric=symmetric)
    values = float(scale) * (np.arange(fmt.qmin, fmt.qmax + 1) - int(zero_point))
    used = np.unique(np.asarray(affine.quantize(relu_like, scale, zero_point, fmt))).size
    sqnr = {}
    for bits in (3, 8):
        fmt_b = formats.int_format(bits, signed=fmt.signed)
        s_b, z_b = affine.scale_zero_point(0.0, relu_like.max(), fmt_b, symmetric=symmetric)
        sqnr[bits] = float(rounding.sqnr_db(relu_like, affine.fake_quant(relu_like, s_b, z_b, fmt_b)))
    print(f"{label:>36}: {used} of {values.size} codes used; SQNR {sqnr[3]:.1f} dB at 3 bits, {sqnr[8]:.1f} dB at 8")
    sqnr_by_grid[label] = sqnr
    ax.hist(relu_like, bins=80, color="lightgray")
    for value in values:
        ax.axvline(value, color="tab:blue", lw=1.5)
    ax.set(title=f"{label}: {used} of {values.size} codes on the data", ylabel="count")
axes[1].set_xlabel("x")
figure.tight_layout()
plt.show()
asymmetric, symmetric = sqnr_by_grid.values()
print(
    f"symmetric loses {asymmetric[8] - symmetric[8]:.1f} dB at 8 bits, {asymmetric[3] - symmetric[3]:.1f} dB at 3"
    f" (one bit is 20 log10(2) = {20 * np.log10(2):.2f} dB)"
)

# %% [markdown]
# The symmetric grid spends half of its codes on negative values that never occur, which is one bit lost: 6.1 dB
# of SQNR at 8 bits, close to the 6.02 dB a bit is worth on a fine grid (chapter 2 derives that rule), and 7.4 dB
# on the coarse 3-bit grid. That is why activations after a ReLU are
# usually quantized asymmetrically (or on an unsigned grid with $z = 0$), and weights, which are roughly symmetric
# about zero, symmetrically.
#
# ## The 127-or-127.5 question
#
# For symmetric quantization the scale is $s = \max(|\alpha|, |\beta|) / d$, and here tools disagree on the
# divisor $d$:
#
# | convention | $d$ for int8 | used by |
# |---|---|---|
# | `symmetric_divisor="qmax"` | 127 | TFLite, onnxruntime's quantizer |
# | `symmetric_divisor="half_levels"` | 127.5 | PyTorch `MinMaxObserver(qscheme=torch.per_tensor_symmetric)` |
#
# (The white paper of Nagel et al., arXiv:2106.08295, sec. 2.2, defines the grid by its limits — in its
# unsigned notation $-sz$ and $s(2^b - 1 - z)$, eqs. 4–7 — not by either divisor.)
#
# With $d = 127$ the extremes $\pm\max$ land exactly on codes $\pm 127$. With $d = 127.5$ the *divisor* is larger,
# so the step is smaller and the grid, in real units, is narrower: code 127 sits at $127/127.5 = 0.996$ of the
# maximum, which is clipped to it, while the extra code $-128$ reaches $1.004$ of it on the negative side. Side by
# side, near both ends (in units of $\max|x|$):

# %%
ends = {"qmax": 127.0, "half_levels": 127.5}
figure, axes = plt.subplots(1, 2, figsize=(10, 2.4), sharey=True)
for row, d in enumerate(ends.values()):
    values = np.arange(-128, 128) / d
    print(f"d = {d:>5}: step {1 / d:.6f}, codes -128 and 127 at {values[0]:.4f} and {values[-1]:.4f} times max")
    for ax, window in zip(axes, ((-1.025, -0.97), (0.97, 1.01))):
        inside = values[(values >= window[0]) & (values <= window[1])]
        ax.plot(inside, np.full_like(inside, row), "|", ms=18, mew=2, label=f"d = {d}")
        ax.set_xlim(window)
for ax in axes:
    ax.axvline(-1 if ax is axes[0] else 1, color="tab:red", ls="--", lw=1)
axes[0].set(title="near -max (dashed): the lowest codes", yticks=[0, 1], yticklabels=["d = 127", "d = 127.5"])
axes[0].set_ylim(-1, 2)
axes[1].set(title="near +max (dashed): the highest codes, up to 127")
axes[0].set_xlabel("value / max|x|")
axes[1].set_xlabel("value / max|x|")
figure.tight_layout()
plt.show()

# %% [markdown]
# Which one is more accurate depends on the data. On values that do not sit on either grid — a hundred thousand
# Gaussian samples, and the CNN's largest kernel — the two give SQNRs within a few hundredths of a dB:

# %%
gaussian = rng.standard_normal(100_000).astype(np.float32)
dense_kernel = np.asarray(train.load_or_train().dense.kernel[...])
for name, values in (("Gaussian samples", gaussian), ("dense kernel", dense_kernel)):
    results = []
    for divisor in ends:
        scale, zero_point = affine.scale_zero_point(
            values.min(), values.max(), formats.INT8, symmetric=True, symmetric_divisor=divisor
        )
        x_hat = affine.fake_quant(values, scale, zero_point, formats.INT8)
        results.append(float(rounding.sqnr_db(values, x_hat)))
    print(
        f"{name:>16}: SQNR {results[0]:.2f} dB with d = 127, {results[1]:.2f} dB with d = 127.5 "
        f"(difference {results[1] - results[0]:+.2f} dB)"
    )

# %% [markdown]
# The 127.5 grid's smaller step wins slightly on the bulk of the values and loses at most half a step on the one
# value at the maximum. Neither is "right"; what matters is that the quantizer and the runtime that will execute the
# model agree, which is why `quantref` names the convention instead of picking one silently. Narrow range
# (`int_format(8, narrow_range=True)`, $[-127, 127]$) removes the lonely $-128$ so that the grid is symmetric.
#
# ## The error of the affine quantizer
#
# Inside the representable range every value moves by at most $s/2$ (rounding error); outside, it is clamped to
# the nearest end (clipping error, unbounded). A 3-bit unsigned grid asked for $[-1, 1]$ makes both visible:

# %%
scale, zero_point = affine.scale_zero_point(-1.0, 1.0, fmt3)
lo, hi = float(scale) * (fmt3.qmin - int(zero_point)), float(scale) * (fmt3.qmax - int(zero_point))
print(
    f"s = 2/7 = {float(scale):.7f} in float32; q_min - alpha/s = {0 - np.float32(-1.0) / scale:.7f}"
    f" -> z = {int(zero_point)}; representable range [{lo:.4f}, {hi:.4f}]"
)
xs = jnp.linspace(-1.6, 1.6, 2001)
x_hat = affine.fake_quant(xs, scale, zero_point, fmt3)

figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
left.plot(xs, xs, "k:", lw=1, label="identity")
left.plot(xs, x_hat, label=r"$\hat x$ (3-bit)")
left.set(title=f"3 bits asked for [-1, 1]: grid [{lo:.3f}, {hi:.3f}]", xlabel="x", ylabel=r"$\hat x$")
left.legend()
right.plot(xs, x_hat - xs)
right.axhline(float(scale) / 2, color="gray", ls="--", lw=1, label=r"$\pm s/2$")
right.axhline(-float(scale) / 2, color="gray", ls="--", lw=1)
right.axvspan(lo, hi, color="green", alpha=0.08, label="representable range")
right.set(title="Error: rounding inside, clipping outside", xlabel="x", ylabel=r"$\hat x - x$")
right.legend()
figure.tight_layout()
plt.show()

inside = (xs >= lo) & (xs <= hi)
print(
    f"max |error| inside the range {float(jnp.abs(x_hat - xs)[inside].max()):.4f} <= s/2 = {float(scale) / 2:.4f}"
    f"; at x = -1 the error is {float(affine.fake_quant(jnp.float32(-1.0), scale, zero_point, fmt3)) + 1:.4f}"
)

# %% [markdown]
# The grid asked for $[-1, 1]$ is $[-0.857, 1.143]$: $-1$ is clipped. Seven steps of $s = 2/7$ do span the range,
# but real 0 must be a code, and $1/s = 3.5$ steps is not a whole number, so the grid cannot have $-1$, $0$ and
# $1$ all as codes. The ideal $z = 3.5$ is a tie; in float32, $s$ is a hair above $2/7$, $\alpha/s$ comes out as
# $-3.4999998$, and $z$ rounds down to 3, sliding the grid half a step to the right. On a coarse grid that half
# step is a large error: $-1$ comes back as $-0.857$.
#
# ## Granularity: per tensor, per channel, per group
#
# Now the walkthrough CNN: a small conv–batchnorm–ReLU ×2, max-pool, dense network on scikit-learn's 8×8 digits,
# trained once and cached on disk (`quantref cache path`). A deployed model folds each batch norm into the
# convolution before it (the white paper, sec. 2.3.1; chapter 7 does it step by step), and folding multiplies each
# output channel's weights by its own factor $\gamma_c/\sqrt{\sigma_c^2 + \epsilon}$ — so the weights to quantize
# are the folded ones, whose per-channel ranges can differ far more than the raw kernel's. One scale for a whole
# weight tensor must cover its largest value, so output channels with small weights get few grid points:

# %%
model = train.load_or_train()
splits = data.load_splits()
float_accuracy = models.accuracy(model, splits.x_test, splits.y_test)
folded = nn.fold_batch_norm(model, jnp.asarray(splits.x_calib[:1]))  # a copy; `model` is unchanged
kernels = {path: np.asarray(layer.kernel[...]) for path, layer in nn.find_layers(folded).items()}
raw_kernels = {path: np.asarray(layer.kernel[...]) for path, layer in nn.find_layers(model).items()}


def channel_absmax(kernel):
    return np.abs(kernel).reshape(-1, kernel.shape[-1]).max(axis=0)


for name, kernel in kernels.items():
    raw, new = channel_absmax(raw_kernels[name]), channel_absmax(kernel)
    print(
        f"{name:>5} kernel {str(kernel.shape):>14}: per-channel max|w| from {new.min():.3f} to {new.max():.3f} "
        f"({new.max() / new.min():.1f}x) folded, ({raw.max() / raw.min():.1f}x) before folding"
    )

figure, axes = plt.subplots(1, 3, figsize=(12, 3))
for ax, (name, kernel) in zip(axes, kernels.items()):
    ax.bar(np.arange(kernel.shape[-1]), channel_absmax(kernel))
    ax.set(title=f"{name} (folded): max |w| per output channel", xlabel="output channel")
figure.tight_layout()
plt.show()

# %% [markdown]
# Folding widened conv2's spread from 1.4× to 3.2× (and conv1's from 2.6× to 3.0×; the dense layer has no batch
# norm). Quantizing the raw kernels would have hidden that.
#
# Per-channel quantization gives every output channel its own scale. Per-group goes further and splits each
# output channel's *fan-in* (the $k_h k_w c_{in}$ weights that one output sums over) into blocks of `block_size`
# values with a scale each. Viewing each kernel as a (fan-in, out) matrix, per-channel is `axis=1` and per-group
# is `axis=0, block_size=16`; the scale tensor then has the matrix's shape with the fan-in divided by 16 (conv1's
# fan-in is only 9, so its group is its whole channel). Symmetric scales from each slice's abs-max:


# %%
def weight_scale(kernel, fmt, axis=None, block_size=None):
    """Symmetric scale from the abs-max of each slice of a 2-D (fan-in, out) kernel."""
    magnitude = jnp.abs(kernel)
    if axis is None:
        absmax = magnitude.max()
    elif block_size is None:
        absmax = magnitude.max(axis=0)
    else:
        absmax = magnitude.reshape(-1, block_size, kernel.shape[1]).max(axis=1)
    scale, _ = affine.scale_zero_point(-absmax, absmax, fmt, symmetric=True)
    return scale


def quantize_weights(kernel, fmt, granularity, block_size=16):
    """Fake-quantized kernel, and the integer codes and scales that would be stored."""
    matrix = jnp.asarray(kernel).reshape(-1, kernel.shape[-1])  # (fan-in, output channels)
    axis, block = {"per-tensor": (None, None), "per-channel": (1, None)}.get(granularity, (0, None))
    if granularity == "per-group":
        block = min(block_size, matrix.shape[0])
    scale = weight_scale(matrix, fmt, axis, block)
    codes = affine.quantize(matrix, scale, None, fmt, axis=axis, block_size=block)
    return affine.dequantize(codes, scale, None, axis=axis, block_size=block).reshape(kernel.shape), codes, scale


def stored_bytes(arrays):
    """Bytes on disk of an uncompressed .npz holding these arrays."""
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "weights.npz")
        np.savez(path, **arrays)
        return os.path.getsize(path)


rows = []
float_bytes = stored_bytes(kernels)
folded_accuracy = models.accuracy(folded, splits.x_test, splits.y_test)
print(f"folded float model: test accuracy {folded_accuracy:.2%} (the model's own: {float_accuracy:.2%})")
for bits in (8, 4):
    fmt = formats.int_format(bits, narrow_range=True)
    for granularity in ("per-tensor", "per-channel", "per-group"):
        quantized, stored = {}, {}
        sqnr = {}
        for name, kernel in kernels.items():
            dequantized, codes, scale = quantize_weights(kernel, fmt, granularity)
            quantized[name] = dequantized
            sqnr[name] = float(rounding.sqnr_db(kernel, dequantized))
            codes = np.asarray(codes)
            stored[f"{name}.codes"] = np.asarray(formats.pack_int(codes, 4)) if bits == 4 else codes
            stored[f"{name}.scale"] = np.asarray(scale, np.float32)
        accuracy = models.accuracy(
            nn.map_kernels(folded, lambda path, _: quantized[path]), splits.x_test, splits.y_test
        )
        rows.append((f"W{bits} {granularity}", *sqnr.values(), accuracy, stored_bytes(stored)))

print(f"{'weights':<17} {'SQNR conv1':>10} {'conv2':>7} {'dense':>7} {'test acc':>9} {'bytes':>7} {'ratio':>6}")
print(f"{'float32':<17} {'':>10} {'':>7} {'':>7} {float_accuracy:>9.2%} {float_bytes:>7} {1:>6.2f}")
for label, s1, s2, s3, accuracy, size in rows:
    print(f"{label:<17} {s1:>9.1f}dB {s2:>6.1f}dB {s3:>6.1f}dB {accuracy:>9.2%} {size:>7} {float_bytes / size:>6.2f}")
accuracies = [row[4] for row in rows]
print(
    f"test accuracies span {min(accuracies):.2%} to {max(accuracies):.2%}: "
    f"{round((max(accuracies) - min(accuracies)) * len(splits.y_test))} of {len(splits.y_test)} images "
    f"(one image is {1 / len(splits.y_test):.2%})"
)

# %% [markdown]
# Reading the table: the SQNR columns show what finer granularity buys on the folded weights, most on conv2,
# whose channels differ most after folding, and on the dense layer per group, whose 512 inputs share one scale
# per channel otherwise. The accuracy column moves by a few of the 300 test images at most (the last line gives
# the span), which is noise on a model this small next to the SQNR differences. The bytes are those of a real file
# (4-bit codes packed two to a byte with `formats.pack_int`); per-group pays for its extra float32 scales, and
# every file pays the `.npz` container's headers, which is why the 8-bit files come out less than 4× smaller than
# float32.
#
# ## Fake quantization
#
# Training and simulation use `fake_quant`, which stays in float: $\hat x = s(\operatorname{clamp}(\operatorname{
# round}(x/s) + z) - z)$. It is idempotent — values already on the grid do not move — which is what lets a
# quantized model be quantized again without drift:

# %%
matrix = jnp.asarray(kernels["conv2"]).reshape(-1, kernels["conv2"].shape[-1])
scale = weight_scale(matrix, formats.INT8, axis=1)
once = affine.fake_quant(matrix, scale, None, formats.INT8, axis=1)
twice = affine.fake_quant(once, scale, None, formats.INT8, axis=1)
print(
    "idempotent:",
    bool(jnp.array_equal(once, twice)),
    "| values that moved the second time:",
    int(jnp.sum(once != twice)),
)

# %% [markdown]
# ## Exercises
#
# **Exercise 1.1.** Compute $s$ and $z$ by hand for the range $[0.3, 2]$, on uint8 and on int8. How many of the
# codes does the data never use?

# %% tags=["solution"]
# The range does not contain 0, so it is widened to [0, 2] first (zero must be exact).
low, high = min(0.3, 0.0), max(2.0, 0.0)
for fmt in (formats.UINT8, formats.INT8):
    s_hand = (high - low) / (fmt.qmax - fmt.qmin)  # 2/255 on both grids
    z_hand = int(np.round(fmt.qmin - low / s_hand))  # q_min: real 0 is the bottom code
    scale, zero_point = affine.scale_zero_point(0.3, 2.0, fmt)
    assert np.isclose(float(scale), s_hand) and int(zero_point) == z_hand
    unused = int(np.round(0.3 / s_hand))  # codes for [0, 0.3): never hit by the data
    print(f"{'int8' if fmt.signed else 'uint8'}: s = {s_hand:.6f}, z = {z_hand}; {unused} codes below 0.3 unused")

# %% [markdown]
# **Exercise 1.2.** A float32 scale per group of $g$ weights costs $32/g$ extra bits per weight. For the dense
# kernel at 4 bits per group of 16 (the last row of the table), how many bytes are codes and how many are scales,
# and how many bits does a weight really cost?

# %% tags=["solution"]
# `stored` still holds the arrays of the table's last row (W4 per-group).
code_bytes, scale_bytes = stored["dense.codes"].nbytes, stored["dense.scale"].nbytes
weights = kernels["dense"].size
print(f"dense: {weights} weights, {code_bytes} bytes of packed 4-bit codes, {scale_bytes} bytes of scales")
print(f"{8 * (code_bytes + scale_bytes) / weights:.1f} bits per weight = 4 + 32/16")
