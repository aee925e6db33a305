# %% [markdown]
# # 2. The affine mapping
#
# Chapter 1 found a range $[\alpha, \beta]$ for every tensor. This chapter turns a range into integers: the
# *affine* (or *uniform*, *asymmetric*) quantizer that every deployed runtime uses. We build it by hand, check it
# against `quantref.affine`, name the conventions that real tools disagree on, and then quantize the walkthrough
# CNN's weights per tensor, per channel and per group, measuring accuracy and the bytes actually written to disk.

# %%
import os
import tempfile

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from quantref import affine, data, formats, models, rounding, train

np.set_printoptions(precision=4, suppress=True)

# %% [markdown]
# ## A grid of integers and two numbers
#
# A $b$-bit format is the set of integers $q_{min}, \dots, q_{max}$: $[-128, 127]$ for int8, $[0, 255]$ for
# uint8. To put reals on it we need a step, the **scale** $s > 0$, and an offset, the integer **zero point** $z$:
#
# $$q = \operatorname{clamp}\big(\operatorname{round}(x / s) + z,\ q_{min},\ q_{max}\big), \qquad \hat x = s\,(q - z).$$
#
# To cover $[\alpha, \beta]$ with the $q_{max} - q_{min}$ steps of the grid, $s = (\beta - \alpha)/(q_{max} -
# q_{min})$, and $z$ is chosen so that $\alpha$ lands on $q_{min}$. Three lines of numpy:


# %%
def quantize_by_hand(x, alpha, beta, qmin, qmax):
    scale = (beta - alpha) / (qmax - qmin)
    zero_point = int(np.round(qmin - alpha / scale))
    return np.clip(np.round(x / scale) + zero_point, qmin, qmax), scale, zero_point


x = np.array([-1.0, -0.3, 0.0, 0.25, 0.6, 1.0], np.float32)
q, scale, zero_point = quantize_by_hand(x, -1.0, 1.0, -128, 127)
print("scale", scale, "zero point", zero_point)
print("q    ", q)
print("x_hat", scale * (q - zero_point))

# %% [markdown]
# The library does the same in float32, with the conventions spelled out (`scale_zero_point` first widens the
# range to contain 0, then computes $s$ and $z$; `quantize` divides, rounds half to even, adds $z$ and clamps):

# %%
scale, zero_point = affine.scale_zero_point(-1.0, 1.0, formats.INT8)
q = affine.quantize(x, scale, zero_point, formats.INT8)
print("scale", float(scale), "zero point", int(zero_point))
print("q    ", np.asarray(q))
print("x_hat", np.asarray(affine.dequantize(q, scale, zero_point)))

# %% [markdown]
# The zero point came out as $-1$, not $0$. In float32, $s = 2/255$ is stored as $0.0078431377$, a hair above
# $2/255$, so $-1/s = -127.49999$ instead of the tie $-127.5$, and it rounds to $-127$ rather than to the even
# $-128$. The two grids are shifted by one code but represent the same reals — the dequantized values agree —
# and it is a first taste of why bit-exact work (chapter 7, the runtime oracle) has to say which precision every
# step is computed in.
#
# Now look at $0.6$ on the first grid: $0.6/s = 76.5$, a tie, which half-to-even rounds to 76, and $76 \cdot 2/255 =
# 0.596$. The error,
# $1/255 \approx 0.0039$, is exactly the bound $s/2$: a tie is the worst case of rounding. A popular write-up
# claims that $0.6$ quantizes to $0$ on this grid and that a "linear correction" recovers $0.12$; neither is true.
# Correction methods (bias correction, AdaRound, GPTQ) fix the *systematic* error of a layer's output, not single
# values — see the [pitfalls](../pitfalls.md) page.
#
# ## Zero must be exact
#
# The zero point is an integer, so $x = 0$ maps to $q = z$ and back to exactly $0$. That is why the range is
# widened to contain zero and why $z$ is rounded: zero padding in a convolution and the many exact zeros after a
# ReLU must stay zeros, or every padded border picks up a bias. For a range that does not contain zero, e.g.
# $[0.3, 2.0]$, the grid is stretched down to $0$:

# %%
scale, zero_point = affine.scale_zero_point(0.3, 2.0, formats.UINT8)
print("scale", float(scale), "zero point", int(zero_point), "(range widened to [0, 2])")
print("0.0 ->", np.asarray(affine.fake_quant(jnp.zeros(3), scale, zero_point, formats.UINT8)))

# %% [markdown]
# ## Symmetric quantization and the 127-or-127.5 question
#
# Fixing $z = 0$ (signed) makes the integer arithmetic cheaper — no zero-point cross terms in a matrix product,
# see chapter 7 — at the cost of wasting half the grid on a one-sided range. The scale is then
# $s = \max(|\alpha|, |\beta|) / d$, and here tools disagree on $d$:
#
# | convention | $d$ for int8 | used by |
# |---|---|---|
# | `symmetric_divisor="qmax"` | 127 | TFLite, onnxruntime's quantizer, the white paper |
# | `symmetric_divisor="half_levels"` | 127.5 | PyTorch `MinMaxObserver(qscheme=torch.per_tensor_symmetric)` |
#
# With $d = 127$ the extremes land exactly on $\pm 127$; with 127.5 the grid is half a step wider and
# $+\max$ itself is clipped (to 127, not 127.5). Narrow range (`int_format(8, narrow_range=True)`, $[-127, 127]$)
# removes the lonely $-128$ so that the grid is symmetric.

# %%
weights = np.array([-0.9, -0.2, 0.05, 0.4, 1.27], np.float32)
for divisor in ("qmax", "half_levels"):
    scale, zero_point = affine.scale_zero_point(
        weights.min(), weights.max(), formats.INT8, symmetric=True, symmetric_divisor=divisor
    )
    q = affine.quantize(weights, scale, zero_point, formats.INT8)
    error = np.abs(np.asarray(affine.dequantize(q, scale, zero_point)) - weights)
    print(f"{divisor:>11}: scale={float(scale):.6f}  q={np.asarray(q)}  max error={error.max():.6f}")

# %% [markdown]
# ## The error of the affine quantizer
#
# Inside the representable range $[s(q_{min} - z),\ s(q_{max} - z)]$ every value moves by at most $s/2$ (rounding
# error); outside, it is clamped to the nearest end (clipping error, unbounded). A 3-bit grid makes both visible:

# %%
fmt3 = formats.int_format(3, signed=False)
scale, zero_point = affine.scale_zero_point(-1.0, 1.0, fmt3)
xs = jnp.linspace(-1.6, 1.6, 2001)
x_hat = affine.fake_quant(xs, scale, zero_point, fmt3)
lo, hi = float(scale) * (fmt3.qmin - int(zero_point)), float(scale) * (fmt3.qmax - int(zero_point))

figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
left.plot(xs, xs, "k:", lw=1, label="identity")
left.plot(xs, x_hat, label=r"$\hat x$ (3-bit)")
left.set(title="The affine quantizer, 3 bits over [-1, 1]", xlabel="x", ylabel=r"$\hat x$")
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
    f"scale {float(scale):.4f}; max |error| inside the range {float(jnp.abs(x_hat - xs)[inside].max()):.4f}"
    f" <= s/2 = {float(scale) / 2:.4f}"
)

# %% [markdown]
# ## Granularity: per tensor, per channel, per group
#
# Now the walkthrough CNN (chapter 1 trained it; it is cached on disk). One scale for a whole weight tensor must
# cover its largest value, so output channels with small weights get few grid points. Here is the spread of the
# per-output-channel ranges of each layer:

# %%
model = train.load_or_train()
splits = data.load_splits()
float_accuracy = models.accuracy(model, splits.x_test, splits.y_test)
kernels = {name: np.asarray(getattr(model, name).kernel[...]) for name in models.LAYER_NAMES}
for name, kernel in kernels.items():
    channel_absmax = np.abs(kernel).reshape(-1, kernel.shape[-1]).max(axis=0)
    print(
        f"{name:>5} kernel {str(kernel.shape):>14}: per-channel max|w| from {channel_absmax.min():.3f} "
        f"to {channel_absmax.max():.3f} ({channel_absmax.max() / channel_absmax.min():.1f}x)"
    )

figure, axes = plt.subplots(1, 3, figsize=(12, 3))
for ax, (name, kernel) in zip(axes, kernels.items()):
    ax.bar(np.arange(kernel.shape[-1]), np.abs(kernel).reshape(-1, kernel.shape[-1]).max(axis=0))
    ax.set(title=f"{name}: max |w| per output channel", xlabel="output channel")
figure.tight_layout()
plt.show()

# %% [markdown]
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
            models.map_kernels(model, lambda name, _: quantized[name]), splits.x_test, splits.y_test
        )
        rows.append((f"W{bits} {granularity}", *sqnr.values(), accuracy, stored_bytes(stored)))

print(f"{'weights':<17} {'SQNR conv1':>10} {'conv2':>7} {'dense':>7} {'test acc':>9} {'bytes':>7} {'ratio':>6}")
print(f"{'float32':<17} {'':>10} {'':>7} {'':>7} {float_accuracy:>9.2%} {float_bytes:>7} {1:>6.2f}")
for label, s1, s2, s3, accuracy, size in rows:
    print(f"{label:<17} {s1:>9.1f}dB {s2:>6.1f}dB {s3:>6.1f}dB {accuracy:>9.2%} {size:>7} {float_bytes / size:>6.2f}")

# %% [markdown]
# Reading the table: at 8 bits every granularity keeps the test accuracy. The SQNR columns show what finer
# granularity buys — 1.5 to 3 dB per step from per-tensor to per-channel, up to 5 dB more per group on the dense
# layer, whose 512 inputs share one scale per channel otherwise. At 4 bits the accuracy column moves by up to
# three of the 300 test images (each is 0.33 points), which is noise next to the 2 to 8 dB SQNR differences: on a
# model this small, even per-tensor 4-bit weights keep 98 %. The bytes are those of a real file (4-bit codes packed
# two to a byte with `formats.pack_int`); per-group pays for its extra float32 scales, and every file pays the
# `.npz` container's headers, which is why the 8-bit files come out 2.9 to 3.5x smaller than float32, not 4x.
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
