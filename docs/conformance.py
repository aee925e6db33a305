# %% [markdown]
# # Conformance: where the runtimes agree and where they differ
#
# "Quantize to int8" is not one function. ONNX, PyTorch and TFLite all compute
# $\operatorname{clamp}(\operatorname{round}(x/s) + z)$ on paper, and all of them agree on almost every input — but
# not on every input. They differ in *which* rounding
# breaks a tie, in *when* the zero point is added (before or after rounding), in whether they divide by the scale or
# multiply by its float32 reciprocal, in what NaN, $\pm\infty$ and overflow become, and in how an int32 accumulator is
# requantized (float32, float64 or fixed point). A kernel that is "off by one" against one runtime may be exactly
# right against another.
#
# Every table below is executed when this page is built. With the `conformance` extra installed (onnx, onnxruntime,
# torch) each number comes from the **live runtime** — onnxruntime's CPU execution provider, the ONNX reference
# evaluator (`onnx.reference`), PyTorch's CPU kernels — and the page build also checks that `quantref.runtimes`
# reproduces it. Without the extra, the numbers are quantref's stored expectations (the same functions that write
# `quantref vectors`, cross-checked against the live runtimes by the test suite). TFLite's columns always come from
# quantref's transcription of the reference kernels (`quantref.runtimes.tflite`): TFLite is not a Python dependency.
#
# | what | onnxruntime | ONNX reference evaluator | PyTorch | TFLite |
# |---|---|---|---|---|
# | tie rule | half to even | half to even | half to even | half **away** from zero (reference kernel) |
# | zero point added | after rounding | after rounding | **before** rounding (quantize_per_tensor/channel); after (fake-quant) | after rounding |  # noqa: E501
# | $x/s$ | division | division | multiply by $f_{32}(1/s)$ | division (reference kernel) |
# | NaN (int8) | qmin | qmin | qmax (per-tensor), 0 (per-channel) | qmin (x86) |
# | $+\infty$ (int8) | qmax | **qmin** (int32 overflow) | qmax; fake-quant per-channel: quant_min | qmin (x86) |
# | requantization | $f_{32}(f_{32}(acc)\cdot M)$, rne, $+z$ | float64, $+z$ before rounding | — | fixed point, two roundings |  # noqa: E501

# %%
import ctypes
import importlib.util
from fractions import Fraction

import ml_dtypes
import numpy as np

from quantref.runtimes import onnx as qonnx
from quantref.runtimes import tflite as qtflite
from quantref.runtimes import torch as qtorch

LIVE = all(importlib.util.find_spec(name) for name in ("onnx", "onnxruntime", "torch"))
if LIVE:
    import warnings

    import onnx
    import onnxruntime
    import torch
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    warnings.filterwarnings("ignore", message=".*quantized tensor creation.*")
    print(
        f"Source of the numbers: LIVE runtimes — onnxruntime {onnxruntime.__version__} (CPU execution provider), "
        f"onnx {onnx.__version__} ReferenceEvaluator, torch {torch.__version__}; every number also checked "
        "against quantref.runtimes."
    )
else:
    print(
        "Source of the numbers: quantref's stored expectations (quantref.runtimes; the `conformance` extra — "
        "onnx, onnxruntime, torch — is not installed here)."
    )


def agree(live, ours, what):
    """Return the live answer after checking that quantref gives the same bits."""
    live, ours = np.asarray(live), np.asarray(ours)
    if ours.dtype.name.startswith("float8"):
        ours = ours.view(np.uint8)  # onnxruntime hands float8 back as its bit patterns
    if ours.dtype == np.float32:
        same = np.array_equal(live.view(np.uint32), ours.view(np.uint32))
    else:
        same = np.array_equal(live.astype(np.int64), ours.astype(np.int64))
    if not same:
        raise AssertionError(f"{what}: the live runtime gives {live.tolist()} but quantref {ours.tolist()}")
    return live


def onnx_node(op, feeds, constants, out_types, flavor, attributes=None):
    """Run one ONNX node in onnxruntime or the reference evaluator; float8 results come back as uint8 bits."""
    inputs = [
        helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype), list(value.shape))
        for name, value in feeds.items()
    ]
    outputs = [
        helper.make_tensor_value_info(f"out{i}", helper.np_dtype_to_tensor_dtype(np.dtype(t)), None)
        for i, t in enumerate(out_types)
    ]
    names = list(feeds) + list(constants)
    node = helper.make_node(op, names, [o.name for o in outputs], **(attributes or {}))
    initializers = [numpy_helper.from_array(np.asarray(v), n) for n, v in constants.items()]
    model = helper.make_model(
        helper.make_graph([node], "g", inputs, outputs, initializer=initializers),
        opset_imports=[helper.make_opsetid("", 21)],
    )
    model.ir_version = 11
    if flavor == "onnxruntime":
        # Bind the outputs and copy their bytes: onnxruntime's numpy conversion does not know every float8 type.
        session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        binding = session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        for output in outputs:
            binding.bind_output(output.name, "cpu")
        session.run_with_iobinding(binding)
        results = []
        for value, out_type in zip(binding.get_outputs(), out_types):
            dtype = np.dtype(np.uint8) if np.dtype(out_type).name.startswith("float8") else np.dtype(out_type)
            count = int(np.prod(value.shape())) * dtype.itemsize
            raw = bytes((ctypes.c_uint8 * count).from_address(value.data_ptr()))
            results.append(np.frombuffer(raw, dtype).reshape(value.shape()).copy())
        return results
    with np.errstate(all="ignore"):
        results = ReferenceEvaluator(model).run(None, feeds)
    return [r.view(np.uint8) if r.dtype.name.startswith("float8") else r for r in results]


def quantize_linear(x, scale, zero_point, flavor, saturate=1):
    """ONNX QuantizeLinear; integer codes, or float8 bit patterns as uint8."""
    x = np.asarray(x, np.float32)
    ours = np.asarray(qonnx.quantize_linear(x, np.float32(scale), zero_point, saturate=bool(saturate), flavor=flavor))
    if not LIVE:
        return ours.view(np.uint8) if ours.dtype.name.startswith("float8") else ours
    attributes = {"saturate": saturate} if np.asarray(zero_point).dtype.name.startswith("float8") else {}
    live = onnx_node(
        "QuantizeLinear",
        {"x": x},
        {"s": np.float32(scale), "z": zero_point},
        [np.asarray(zero_point).dtype],
        flavor,
        attributes,
    )[0]
    return agree(live, ours, f"QuantizeLinear({flavor})")


def torch_quantize(x, scale, zero_point, dtype, per_channel=False):
    """torch.quantize_per_tensor / quantize_per_channel(axis 0 of a 1-channel tensor) integer representation."""
    x = np.asarray(x, np.float32)
    if per_channel:
        ours = qtorch.quantize_per_channel(x[None], np.float32([scale]), np.int64([zero_point]), 0, dtype)
        ours = np.asarray(ours)[0]
    else:
        ours = np.asarray(qtorch.quantize_per_tensor(x, scale, zero_point, dtype))
    if not LIVE:
        return ours
    torch_dtype = getattr(torch, dtype)
    if per_channel:
        live = (
            torch.quantize_per_channel(
                torch.from_numpy(x[None]),
                torch.tensor([scale], dtype=torch.float64),
                torch.tensor([zero_point]),
                0,
                torch_dtype,
            )
            .int_repr()
            .numpy()[0]
        )
    else:
        live = torch.quantize_per_tensor(torch.from_numpy(x), scale, zero_point, torch_dtype).int_repr().numpy()
    return agree(live, ours, f"torch quantize ({'per-channel' if per_channel else 'per-tensor'})")


def torch_fake_quantize(x, scale, zero_point, quant_min, quant_max, per_channel=False):
    """torch.fake_quantize_per_{tensor,channel}_affine, shown as the code it chose: y / s + z."""
    x = np.asarray(x, np.float32)
    if per_channel:
        ours = np.asarray(
            qtorch.fake_quantize_per_channel_affine(
                x[None], np.float32([scale]), np.int32([zero_point]), 0, quant_min, quant_max
            )
        )[0]
    else:
        ours = np.asarray(qtorch.fake_quantize_per_tensor_affine(x, scale, zero_point, quant_min, quant_max))
    if LIVE:
        if per_channel:
            live = torch.fake_quantize_per_channel_affine(
                torch.from_numpy(x[None]),
                torch.tensor([scale], dtype=torch.float32),
                torch.tensor([zero_point], dtype=torch.int32),
                0,
                quant_min,
                quant_max,
            ).numpy()[0]
        else:
            live = torch.fake_quantize_per_tensor_affine(
                torch.from_numpy(x), scale, zero_point, quant_min, quant_max
            ).numpy()
        ours = agree(live, ours, "torch fake_quantize")
    # y = (q - z)·s with |q - z| small: dividing back and rounding recovers q exactly.
    return np.rint(ours.astype(np.float64) / np.float64(np.float32(scale))).astype(np.int64) + zero_point


def tflite_quantize(x, scale, zero_point, dtype):
    return np.asarray(qtflite.quantize(np.asarray(x, np.float32), scale, zero_point, dtype))


def table(headers, rows):
    """Print a small aligned text table."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for number, row in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
        if number == 0:
            print("  ".join("-" * w for w in widths))


# %% [markdown]
# ## Ties: half to even, or half away from zero
#
# With $s = 0.5$ every $x$ below is an exact tie, $x/s = k + \tfrac12$. ONNX and PyTorch round half to even;
# TFLite's reference Quantize kernel uses `std::round`, half away from zero. (TFLite's *optimized* kernel multiplies
# by $1/s$ and rounds half to even, so TFLite disagrees with itself here.)

# %%
x = np.float32([-1.25, -0.75, -0.25, 0.25, 0.75, 1.25])
i8 = np.int8(0)
rows = zip(
    x,
    x / np.float32(0.5),
    quantize_linear(x, 0.5, i8, "onnxruntime"),
    quantize_linear(x, 0.5, i8, "reference"),
    torch_quantize(x, 0.5, 0, "qint8"),
    torch_fake_quantize(x, 0.5, 0, -128, 127),
    tflite_quantize(x, 0.5, 0, "int8"),
)
table(["x", "x/s", "onnxruntime", "ONNX ref", "torch q", "torch fake-q", "TFLite"], rows)

# %% [markdown]
# ## The zero point: added before or after rounding
#
# ONNX computes $\operatorname{rne}(x/s) + z$. `torch.quantize_per_tensor` computes
# $\operatorname{rne}(\operatorname{fma}(x, 1/s, z))$ — the zero point joins *before* the rounding, so at a tie the
# parity of $z$ decides the answer: with $s = 0.1$, $z = 3$, $x = 0.25$ ONNX rounds $2.5 \to 2$ and adds 3, torch
# rounds $5.5 \to 6$. TFLite agrees with torch here, for a different reason (ties away from zero). PyTorch's
# fake-quantize adds the zero point after rounding, like ONNX.

# %%
x = np.float32([0.05, 0.15, 0.25, 0.35, 0.45])
u8 = np.uint8(3)
rows = zip(
    x,
    quantize_linear(x, 0.1, u8, "onnxruntime"),
    quantize_linear(x, 0.1, u8, "reference"),
    torch_quantize(x, 0.1, 3, "quint8"),
    torch_quantize(x, 0.1, 3, "quint8", per_channel=True),
    torch_fake_quantize(x, 0.1, 3, 0, 255),
    tflite_quantize(x, 0.1, 3, "uint8"),
)
table(["x", "onnxruntime", "ONNX ref", "torch q", "torch q/channel", "torch fake-q", "TFLite"], rows)

# %% [markdown]
# ## Division or the reciprocal
#
# PyTorch never divides by the scale: it multiplies by $f_{32}(1/s)$, which rounds once more. When $x/s$ lies within
# an ulp of a half-integer the two land on different sides. With $s = 0.00214854861$ and $x = 0.273939937$ the true
# quotient is just below $127.5$; the float32 division keeps it below, the reciprocal product rounds onto $127.5$
# or above.

# %%
scale, x = np.float32(0.00214854861), np.float32([0.273939937])
print(
    f"x/s in float64: {float(x[0]) / float(scale):.12f};  f32(x / s) = {float(x[0] / scale):.9f};  "
    f"f32(x * f32(1/s)) = {float(x[0] * (np.float32(1) / scale)):.9f}"
)
u0 = np.uint8(0)
rows = [
    (
        x[0],
        quantize_linear(x, scale, u0, "onnxruntime")[0],
        quantize_linear(x, scale, u0, "reference")[0],
        torch_quantize(x, float(scale), 0, "quint8")[0],
        torch_fake_quantize(x, float(scale), 0, 0, 255)[0],
        tflite_quantize(x, float(scale), 0, "uint8")[0],
    )
]
table(["x", "onnxruntime", "ONNX ref", "torch q", "torch fake-q", "TFLite"], rows)

# %% [markdown]
# ## NaN, infinities and values beyond int32
#
# No specification says what NaN quantizes to, and the runtimes' answers are whatever their float-to-int
# conversion does. onnxruntime clamps in float and maps NaN to qmin. The reference evaluator converts to int32 first
# — on x86 NaN, $\pm\infty$ and anything beyond $2^{31}$ become INT32_MIN — so $+\infty$ lands on **qmin**.
# PyTorch's per-tensor kernel sends NaN to qmax, its per-channel kernel to 0 (the low byte of INT32_MIN), and its
# per-channel fake-quantize converts through int64, so $+\infty$ becomes quant_min. TFLite's reference kernel on
# x86-64 behaves like the reference evaluator (an ARM build saturates instead). int8, $s = 1$, $z = 0$:

# %%
x = np.float32([np.nan, np.inf, -np.inf, 3e9, -3e9, 1e30])
rows = zip(
    x,
    quantize_linear(x, 1.0, i8, "onnxruntime"),
    quantize_linear(x, 1.0, i8, "reference"),
    torch_quantize(x, 1.0, 0, "qint8"),
    torch_quantize(x, 1.0, 0, "qint8", per_channel=True),
    torch_fake_quantize(x, 1.0, 0, -128, 127),
    torch_fake_quantize(x, 1.0, 0, -128, 127, per_channel=True),
    tflite_quantize(x, 1.0, 0, "int8"),
)
table(["x", "onnxruntime", "ONNX ref", "torch q", "torch q/ch", "fake-q", "fake-q/ch", "TFLite"], rows)

# %% [markdown]
# ## float8 overflow
#
# With `saturate=1` both ONNX runtimes clamp to $\pm$max. With `saturate=0` the spec says e4m3fn overflows to NaN and
# e5m2 to $\pm\infty$; the reference evaluator does that, but onnxruntime's converter clears the low mantissa bit
# before rounding, so e4m3fn $x \in [480, 496)$ comes out as 448, and its e5m2 overflow path gives NaN (encoded
# 0x7F, where the reference and ml_dtypes use 0x7E) for $x \in [61440, 65536)$. Codes are shown in hex.


# %%
def float8_row(x, name):
    zero = np.zeros((), getattr(ml_dtypes, name))
    results = [
        quantize_linear(x, 1.0, zero, flavor, saturate)
        for saturate in (1, 0)
        for flavor in ("onnxruntime", "reference")
    ]

    def show(code):
        return f"{float(np.uint8(code).view(zero.dtype)):g} ({int(code):#04x})"

    return [(value, *(show(r[i]) for r in results)) for i, value in enumerate(x)]


headers = ["x", "ORT sat=1", "ref sat=1", "ORT sat=0", "ref sat=0"]
print("float8_e4m3fn")
table(headers, float8_row(np.float32([448, 464, 465, 479, 480, 495, 496, 512, np.inf]), "float8_e4m3fn"))
print("\nfloat8_e5m2")
table(headers, float8_row(np.float32([57344, 61439, 61440, 65535, 65536, np.inf, np.nan]), "float8_e5m2"))

# %% [markdown]
# ## DynamicQuantizeLinear on an all-zero tensor
#
# The scale is $(\max(0, \max x) - \min(0, \min x))/255$, which is 0 for an all-zero input. onnxruntime then uses
# scale 1, the reference evaluator $1/255$; the codes and the zero point agree.

# %%
zeros = np.zeros(4, np.float32)
rows = []
for flavor in ("onnxruntime", "reference"):
    ours = [np.asarray(v) for v in qonnx.dynamic_quantize_linear(zeros, flavor=flavor)]
    if LIVE:
        live = onnx_node("DynamicQuantizeLinear", {"x": zeros}, {}, [np.uint8, np.float32, np.uint8], flavor)
        ours = [agree(lv, ov, f"DynamicQuantizeLinear({flavor})") for lv, ov in zip(live, ours)]
    rows.append((flavor, ours[0].tolist(), f"{float(ours[1]):.9g}", int(ours[2])))
table(["runtime", "y", "y_scale", "y_zero_point"], rows)

# %% [markdown]
# ## Requantization: float32, float64 or fixed point
#
# QLinearMatMul and QLinearConv accumulate exactly in int32 and then rescale by $M = s_a s_b / s_y$. onnxruntime
# computes $\operatorname{rne}(f_{32}(f_{32}(acc)\cdot M)) + z_y$; the reference evaluator
# $\operatorname{rne}(acc \cdot M + z_y)$ in float64, zero point *before* rounding; TFLite encodes $M$ as a Q0.31
# fixed-point multiplier and rounds twice (ties up, then ties away from zero). With $M = \tfrac12$ every odd
# accumulator is a tie, and the three disagree (int8 output, $z_y = 1$):


# %%
def qlinear_matmul(acc, scales, zero_point, flavor):
    """QLinearMatMul of a = acc (int8 column) and b = [[1]]: the output is the requantized accumulator."""
    a = np.asarray(acc, np.int8).reshape(-1, 1)
    args = (
        a,
        np.float32(scales[0]),
        np.int8(0),
        np.int8([[1]]),
        np.float32(scales[1]),
        np.int8(0),
        np.float32(scales[2]),
        np.int8(zero_point),
    )
    ours = np.asarray(qonnx.qlinear_matmul(*args, flavor=flavor)).ravel()
    if not LIVE:
        return ours
    names = ("a_scale", "a_zero_point", "b", "b_scale", "b_zero_point", "y_scale", "y_zero_point")
    live = onnx_node("QLinearMatMul", {"a": a}, dict(zip(names, args[1:])), [np.int8], flavor)[0].ravel()
    return agree(live, ours, f"QLinearMatMul({flavor})")


def tflite_requantize(acc, real_multiplier, zero_point, single_rounding=False):
    multiplier, shift = qtflite.quantize_multiplier(real_multiplier)
    scaled = qtflite.multiply_by_quantized_multiplier(np.int32(acc), multiplier, shift, single_rounding=single_rounding)
    return np.clip(np.asarray(scaled) + zero_point, -128, 127)


acc = np.int32([-3, -1, 1, 3, 5])
rows = zip(
    acc,
    acc * 0.5 + 1,
    qlinear_matmul(acc, (0.5, 1.0, 1.0), 1, "onnxruntime"),
    qlinear_matmul(acc, (0.5, 1.0, 1.0), 1, "reference"),
    tflite_requantize(acc, 0.5, 1),
)
table(["acc", "exact acc*M + z", "onnxruntime", "ONNX ref", "TFLite"], rows)

# %% [markdown]
# Away from exact ties the float32 product can still round across a half-integer that the float64 product does not
# cross. A search over random scales finds such a case (zero point 0, so only the product's precision differs):

# %%
rng = np.random.default_rng(0)
products = (np.arange(-127, 128)[:, None] * np.arange(1, 128)[None, :]).ravel()
while True:
    sa, sb, sy = (np.float32(v) for v in rng.uniform(0.001, 0.1, 3))
    multiplier = np.float32(np.float32(sa * sb) / sy)
    f32 = np.rint(products.astype(np.float32) * multiplier)
    f64 = np.rint(products.astype(np.float64) * np.float64(multiplier))
    differ = np.flatnonzero((f32 != f64) & (np.abs(f64) < 100))
    if differ.size:
        break
value = int(products[differ[0]])
a_value = next(a for a in range(127, 0, -1) if value % a == 0 and abs(value // a) <= 127)
b_value = value // a_value
exact = Fraction(value) * Fraction(float(multiplier))
print(f"s_a={sa!r}, s_b={sb!r}, s_y={sy!r}: M = {float(multiplier)!r}, acc = {a_value} * {b_value} = {value}")
print(f"exact acc*M = {float(exact):.12f};  f32(f32(acc)*M) = {float(np.float32(value) * multiplier):.9f}")
args = (np.int8([[a_value]]), sa, np.int8(0), np.int8([[b_value]]), sb, np.int8(0), sy, np.int8(0))
rows = []
for flavor in ("onnxruntime", "reference"):
    ours = np.asarray(qonnx.qlinear_matmul(*args, flavor=flavor)).ravel()
    if LIVE:
        names = ("a_scale", "a_zero_point", "b", "b_scale", "b_zero_point", "y_scale", "y_zero_point")
        live = onnx_node("QLinearMatMul", {"a": args[0]}, dict(zip(names, args[1:])), [np.int8], flavor)[0].ravel()
        ours = agree(live, ours, f"QLinearMatMul({flavor})")
    rows.append(ours[0])
real = float(sa) * float(sb) / float(sy)
rows.append(tflite_requantize(np.int32([value]), real, 0)[0])
table(["onnxruntime", "ONNX ref", "TFLite"], [rows])

# %% [markdown]
# ## TFLite: double rounding or single rounding
#
# TFLite's default `MultiplyByQuantizedMultiplier` rounds twice — `SaturatingRoundingDoublingHighMul` (to the
# nearest $2^{-31}$ step, ties up), then `RoundingDivideByPOT` (ties away from zero) — and can be up to 0.75 LSB from
# the exact product. Builds with `TFLITE_SINGLE_ROUNDING` round once (ties up), within 0.5 LSB. Sweeping every
# int32 accumulator in $[-2^{16}, 2^{16})$ against a few multipliers (`differ` counts the accumulators where the
# two builds give different integers; the errors are against the exact product $x \cdot q_m 2^{shift - 31}$):

# %%
x = np.arange(-(2**16), 2**16, dtype=np.int32)
rows = []
for real in (0.3, 0.0013, 3.05e-5, 0.999):
    multiplier, shift = qtflite.quantize_multiplier(real)
    exact = x.astype(np.float64) * (multiplier * 2.0 ** (shift - 31))  # exact in float64: < 2^53
    double = np.asarray(qtflite.multiply_by_quantized_multiplier(x, multiplier, shift))
    single = np.asarray(qtflite.multiply_by_quantized_multiplier(x, multiplier, shift, single_rounding=True))
    worst = int(np.argmax(np.abs(double - exact)))
    rows.append(
        (
            real,
            multiplier,
            shift,
            int((double != single).sum()),
            f"{np.abs(double - exact).max():.4f}",
            f"{np.abs(single - exact).max():.4f}",
            f"x={x[worst]}: {exact[worst]:.4f} -> {double[worst]} (single: {single[worst]})",
        )
    )
table(["M", "q_m", "shift", "differ", "max err double", "max err single", "worst case"], rows)

# %% [markdown]
# ## LiteRT: three kernel sets, three sets of integers
#
# LiteRT, TFLite's runtime, runs an int8 model with one of three kernel sets, picked by its op resolver, and on
# x86-64 they do not round alike. `quantref.runtimes.litert` has the arithmetic of each, and `quantref.integer`
# predicts a whole network with each (modes `"tflite"`, `"tflite-optimized"`, `"tflite-xnnpack"`; chapter 9 runs
# the walkthrough CNN through all three, bit for bit):
#
# | kernel set (resolver) | QUANTIZE | CONV_2D | FULLY_CONNECTED | DEQUANTIZE |
# |---|---|---|---|---|
# | reference (`BUILTIN_REF`) | $f_{32}(x/s)$, half away | gemmlowp | float64 | one rounding |
# | optimized (`BUILTIN_WITHOUT_DEFAULT_DELEGATES`) | by position | ruy | ruy | by position |
# | XNNPACK (`AUTO`) | $x \cdot f_{32}(1/s)$, half to even | float32 | float32 | one rounding |
#
# - **gemmlowp**: $M$ as a 31-bit fixed-point multiplier; a rounding high multiply (ties up), then a rounding shift
#   with ties away from zero. **ruy**: the same multiplier and high multiply, then a shift with ties *up*.
# - **float64**: $\operatorname{round}(f_{64}(\mathrm{acc} \cdot M))$, half away from zero. **float32**:
#   onnxruntime's formula, $\operatorname{rne}(f_{32}(f_{32}(\mathrm{acc}) \cdot f_{32}(M)))$.
# - **by position**: the optimized kernels walk the flattened tensor in blocks of 8 — QUANTIZE as
#   $\operatorname{rne}(x \cdot f_{32}(1/s))$, DEQUANTIZE as $f_{32}(f_{32}(qs) - f_{32}(zs))$ — and the last
#   $n \bmod 8$ values in a scalar loop: $\operatorname{round}(f_{64}(x/s))$ half away, and $f_{32}((q - z)s)$,
#   one rounding.
#
# Out of range the two TFLite QUANTIZE kernels hit x86's INT32_MIN and wrap when adding the zero point; XNNPACK
# saturates. With `ai-edge-litert` installed (the `litert` extra) the counts below come from the live interpreter,
# running small models that quantref writes (`quantref.export.tflite.model_bytes`), and the page checks that quantref
# predicts every output bit for bit; without it they are quantref's predictions. QUANTIZE first, on the values of
# the next section plus every tie $x = (k + \tfrac12)s$, in one tensor whose size leaves the optimized kernel a
# scalar tail; then the special values, with a zero point at which the wrap and the saturation part ways:

# %%
from quantref.export import tflite  # noqa: E402

LITERT = importlib.util.find_spec("ai_edge_litert") is not None
if LITERT:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType


def litert_run(network, x, kernels, io="float"):
    """A kernel set's output: quantref's prediction, or the live interpreter's, checked to be the same bits."""
    ours = tflite.predict(network, x, kernels=kernels, io=io)
    if not LITERT:
        return ours
    resolver = getattr(OpResolverType, tflite.RESOLVERS[kernels])
    runner = Interpreter(model_content=tflite.model_bytes(network, io=io), experimental_op_resolver_type=resolver)
    index = runner.get_input_details()[0]["index"]
    runner.resize_tensor_input(index, list(x.shape))
    runner.allocate_tensors()
    runner.set_tensor(index, x)
    runner.invoke()
    return agree(runner.get_tensor(runner.get_output_details()[0]["index"]), ours, f"LiteRT ({kernels})")


def pairwise(codes):
    """How many codes each pair of kernel sets disagrees on."""
    pairs = (("reference", "optimized"), ("reference", "xnnpack"), ("optimized", "xnnpack"))
    return [(f"{a} vs {b}", f"{int(np.sum(codes[a] != codes[b]))} of {codes[a].size}") for a, b in pairs]


def quantize_codes(x, scale, zero_point):
    """Each kernel set's QUANTIZE codes, from a QUANTIZE → DEQUANTIZE model: (q - z)·s divided back by s and
    rounded recovers q exactly."""
    network = tflite.Network((x.size,), tflite.Quant(float(scale), zero_point), ())
    return {
        kernels: np.rint(litert_run(network, x[None], kernels)[0].astype(np.float64) / np.float64(scale)).astype(int)
        + zero_point
        for kernels in tflite.KERNELS
    }


values = (np.random.default_rng(1).standard_normal(200_000) * 0.5).astype(np.float32)
ties = ((np.arange(-128, 127) + 0.5) * np.float64(np.float32(0.0123))).astype(np.float32)
x = np.concatenate([values, ties])  # 200,255 values: the last 7 (ties) are the optimized kernel's scalar tail
table(["QUANTIZE", "codes that differ"], pairwise(quantize_codes(x, 0.0123, -7)))
special = np.float32([np.nan, np.inf, -np.inf, 1e30, -1e30, 3e9])
codes = quantize_codes(special, 0.1, 7)
table(["x"] + [f"{kernels}, z = 7" for kernels in tflite.KERNELS], zip(special, *codes.values()))

# %% [markdown]
# Then the integer layers: one CONV_2D (3×3, 16 channels, per-channel scales) and one FULLY_CONNECTED (256 inputs,
# 10 outputs) on random int8 inputs, int8 in and out, so only the requantization differs. The reference CONV_2D
# and the optimized kernels share their fixed-point multiplier and differ only in the final shift's negative ties;
# the reference FULLY_CONNECTED rounds one float64 product; XNNPACK rounds one float32 product, like onnxruntime.

# %%
rng = np.random.default_rng(7)
conv = tflite.Conv2D(
    "conv",
    rng.integers(-127, 128, (3, 3, 4, 16)).astype(np.int8),
    (rng.uniform(0.5, 2, 16) * 2e-3).astype(np.float32),
    rng.integers(-3000, 3000, 16).astype(np.int32),
    tflite.Quant(0.05, -10),
)
dense = tflite.FullyConnected(
    "dense",
    rng.integers(-127, 128, (256, 10)).astype(np.int8),
    (rng.uniform(0.5, 2, 10) * 1e-3).astype(np.float32),
    rng.integers(-3000, 3000, 10).astype(np.int32),
    tflite.Quant(0.2, 3),
)
layers = {
    "CONV_2D": (tflite.Network((8, 8, 4), tflite.Quant(0.02, 5), (conv,)), (256, 8, 8, 4)),
    "FULLY_CONNECTED": (tflite.Network((256,), tflite.Quant(0.02, 5), (dense,)), (2048, 256)),
}
for name, (network, shape) in layers.items():
    x = rng.integers(-128, 128, shape).astype(np.int8)
    codes = {kernels: litert_run(network, x, kernels, io="int8") for kernels in tflite.KERNELS}
    table([name, "codes that differ"], pairwise(codes))

# %% [markdown]
# Every count is a set of ties (for XNNPACK, also products within float32 rounding of a tie, and for the fixed-point
# kernels results that their double rounding moves), and quantref reproduces each kernel set's side of every one.
# A kernel written to match one LiteRT kernel set is therefore off by one code, here and there, against the others:
# decide which one it follows, and test at constructed ties. XNNPACK's layers requantize as onnxruntime does, but
# its QUANTIZE multiplies by $f_{32}(1/s)$, which onnxruntime's QuantizeLinear does not.

# %% [markdown]
# ## QDQ models: onnxruntime against itself
#
# A QDQ model (onnxruntime's quantizer's default format) computes in float between QuantizeLinear/DequantizeLinear
# pairs. onnxruntime's default session does not run it that way: its optimiser fuses each DequantizeLinear → op →
# QuantizeLinear unit into an integer kernel (QLinearMatMul, QGemm, QLinearAdd, QLinearSoftmax, ...), which rounds
# differently; with `ORT_DISABLE_ALL` the same file runs in float. So one model file has two onnxruntime answers.
# Three small models quantized by `onnxruntime.quantization.quantize_static` (per-channel int8 weights): an MLP
# (Gemm → QGemm), a transformer block (its Softmax becomes QLinearSoftmax: an exp table and an output scale floored
# to $\lfloor 1/s_y \rfloor$), and an MLP with int16 activations, whose MatMuls have no integer kernel and become
# MatMulNBits with `accuracy_level=4`, which quantizes the *activations* to int8 blocks on the fly. `run_model`'s
# flavors `onnxruntime` and `onnxruntime_unoptimized` reproduce the two sessions; the counts are outputs whose bits
# differ, on 64 inputs.

# %%
if LIVE:
    import logging
    import tempfile

    from onnxruntime import quantization

    from quantref.runtimes import onnx_graph

    def float_model(kind):
        rng = np.random.default_rng(12)
        count = 4 if kind == "transformer block" else 2
        weights = {f"w{i}": (rng.standard_normal((8, 8)) * 0.4).astype(np.float32) for i in range(count)}
        node = helper.make_node
        if kind == "transformer block":
            weights["scale"] = np.float32(8**-0.5)
            nodes = [node("MatMul", ["x", "w0"], ["q"]), node("MatMul", ["x", "w1"], ["k"]),
                     node("MatMul", ["x", "w2"], ["v"]), node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
                     node("MatMul", ["q", "kt"], ["a"]), node("Mul", ["a", "scale"], ["b"]),
                     node("Softmax", ["b"], ["p"], axis=-1), node("MatMul", ["p", "v"], ["o"]),
                     node("MatMul", ["o", "w3"], ["o2"]), node("Add", ["o2", "x"], ["y"])]  # fmt: skip
        else:
            op = "Gemm" if kind == "MLP (Gemm)" else "MatMul"
            if op == "Gemm":
                weights.update(b0=np.zeros(8, np.float32), b1=np.zeros(8, np.float32))
            nodes = [node(op, ["x", "w0"] + (["b0"] if op == "Gemm" else []), ["h"]), node("Relu", ["h"], ["r"]),
                     node(op, ["r", "w1"] + (["b1"] if op == "Gemm" else []), ["y"])]  # fmt: skip
        shape = [None, 8, 8] if kind == "transformer block" else [None, 8]
        graph = helper.make_graph(
            nodes, kind, [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, shape)],
            [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
            initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in weights.items()],
        )  # fmt: skip
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        return model

    class Calibration(quantization.CalibrationDataReader):
        def __init__(self, batches):
            self.batches = iter(batches)

        def get_next(self):
            return next(self.batches, None)

    def session_output(path, level, x):
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = level
        options.log_severity_level = 3
        return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    logging.getLogger().setLevel(logging.ERROR)
    rows, directory = [], tempfile.mkdtemp()
    for kind, activations in (("MLP (Gemm)", "QUInt8"), ("transformer block", "QUInt8"), ("MLP (MatMul)", "QInt16")):
        shape = (64, 8, 8) if kind == "transformer block" else (64, 8)
        x = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
        source, path = f"{directory}/float.onnx", f"{directory}/{kind}.onnx"
        onnx.save(float_model(kind), source)
        quantization.quantize_static(
            source, path, Calibration([{"x": x[i : i + 16]} for i in range(0, 64, 16)]), per_channel=True,
            activation_type=getattr(quantization.QuantType, activations),
        )  # fmt: skip
        optimized = session_output(path, onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL, x)
        unoptimized = session_output(path, onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL, x)
        ours = {flavor: onnx_graph.run_model(path, {"x": x}, flavor=flavor)["y"] for flavor in ("onnxruntime", "onnxruntime_unoptimized")}  # fmt: skip  # noqa: E501
        differ = lambda a, b: int((a.view(np.uint32) != b.view(np.uint32)).sum())  # noqa: E731
        rows.append((f"{kind}, {activations[1:].lower()} activations", optimized.size, differ(optimized, unoptimized),
                     differ(ours["onnxruntime"], optimized), differ(ours["onnxruntime_unoptimized"], unoptimized)))  # fmt: skip  # noqa: E501
    table(["model", "outputs", "optimised vs unoptimised", "run_model vs optimised", "run_model vs unoptimised"], rows)
else:
    print("This section needs the conformance extra (onnx, onnxruntime): it quantizes models with onnxruntime.")

# %% [markdown]
# The 8-bit QDQ models have an integer kernel for every unit, and `run_model` gives each session's bits. The int16
# MatMuls become MatMulNBits in the optimised session, and `run_model` reproduces that too: the rewrite's rules and
# the kernel's arithmetic (int8 activation blocks, int32 lane sums, fused multiply-adds in the order of MLAS's
# AVX512-VNNI kernel, the zero points through block sums) are in `quantref.runtimes.onnx_nbits`, so the default
# flavor matches the optimised session bit for bit — on an AVX512-VNNI CPU: AVX2 and ARM machines run other
# MatMulNBits kernels, with other sums. Against the unoptimised session the int16 model's float MatMuls agree up to
# float rounding (a summation order), not always to the bit. Almost every output of that model moves between the two
# sessions: a backend that matches "onnxruntime" on a QDQ model should say which session it means;
# `run_model(..., flavor=...)` makes the same choice explicit.

# %% [markdown]
# ## Where they agree
#
# Off the ties and the special values the runtimes agree. Quantizing 200,000 normally distributed values to int8
# ($s = 0.0123$, $z = -7$; uint8 for the torch fake-quant column's range), the counts of codes that differ from
# onnxruntime's:

# %%
x = (np.random.default_rng(1).standard_normal(200_000) * 0.5).astype(np.float32)
reference_codes = quantize_linear(x, 0.0123, np.int8(-7), "onnxruntime").astype(np.int64)
others = {
    "ONNX reference evaluator": quantize_linear(x, 0.0123, np.int8(-7), "reference"),
    "torch.quantize_per_tensor (qint8)": torch_quantize(x, 0.0123, -7, "qint8"),
    "torch.quantize_per_channel (qint8)": torch_quantize(x, 0.0123, -7, "qint8", per_channel=True),
    "torch.fake_quantize_per_tensor_affine": torch_fake_quantize(x, 0.0123, -7, -128, 127),
    "TFLite Quantize (reference kernel)": tflite_quantize(x, 0.0123, -7, "int8"),
}
counts = {name: int((codes.astype(np.int64) != reference_codes).sum()) for name, codes in others.items()}
table(["runtime", "codes differing from onnxruntime"], [(name, f"{n} of {x.size}") for name, n in counts.items()])

# %% [markdown]
# Random inputs rarely hit an exact tie, so the counts are small — and a backend tested only on random data will not
# notice which rule it implements. That is why `quantref vectors` builds its cases from constructed ties
# $x = (k + \tfrac12)s$ and their float32 neighbours, saturation and NaN/Inf, and records each runtime's answer as a
# separate case. Integer matrix products (MatMulInteger, ConvInteger) and DequantizeLinear of 8- and 16-bit codes are
# exact in every runtime and agree everywhere. See [Testing your backend](testing-your-backend.md).
