"""PyTorch 2.13 CPU (x86 / fbgemm) quantization numerics, bit for bit.

PyTorch never divides by the scale: every CPU kernel multiplies by the float32 reciprocal
$\\mathrm{inv} = f_{32}(1 / f_{32}(s))$. What differs from kernel to kernel is *where the zero point enters and
how many times the result is rounded* ($\\mathrm{rne}$ = round half to even, $f_{32}$ = round to float32):

$$
\\begin{aligned}
\\texttt{quantize\\_per\\_tensor}\\ (\\text{quint8, qint8}):&\\quad
q = \\operatorname{sat}\\big(\\mathrm{rne}(f_{32}(x\\cdot\\mathrm{inv} + z))\\big)
&&\\text{one fused multiply-add}\\\\
\\texttt{quantize\\_per\\_tensor}\\ (\\text{qint32}),\\ \\texttt{quantize\\_per\\_channel}:&\\quad
q = \\operatorname{sat}\\big(\\mathrm{rne}(f_{32}(f_{32}(x\\cdot\\mathrm{inv}) + z))\\big)
&&\\text{multiply, add, two roundings}\\\\
\\texttt{fake\\_quantize\\_*}:&\\quad
q = \\operatorname{clamp}\\big(\\mathrm{rne}(f_{32}(x\\cdot\\mathrm{inv})) + z\\big),\\ \\
y = f_{32}\\big((q - z)\\,s\\big) &&\\text{zero point after rounding}
\\end{aligned}
$$

So ``torch.quantize_per_tensor`` and ``torch.quantize_per_channel`` can disagree on the same numbers, and both
can disagree with ONNX ``QuantizeLinear`` ($\\mathrm{rne}(x / s) + z$: a true division, zero point after
rounding) when $x/s$ lies within an ulp of a half-integer.

NaN and out-of-range values follow what the x86 kernels compute (``quantize_per_tensor``: NaN → qmax for the 8-bit
types, qmin for qint32; ``quantize_per_channel``: NaN → 0 for the 8-bit types — the low byte of the x86 "integer
indefinite" ``0x80000000`` — and qmin for qint32; ``fake_quantize_per_tensor_affine``: NaN → quant_min;
``fake_quantize_per_channel_affine``: NaN, +Inf and anything that rounds beyond $2^{63}$ → quant_min).

Exactness without ``jax_enable_x64``: XLA contracts ``a * b + c`` into a fused multiply-add on CPU and GPU, which
would silently turn the two-rounding kernels into the one-rounding one. The product is therefore made opaque to
contraction (:func:`_rounded_product`), and the fused multiply-add that fbgemm really performs is emulated with
error-free transformations (Dekker's product with a bit-mask split, Knuth's TwoSum, and Boldo–Melquiond's round-to-odd
correction), all in float32.

Subnormal float32 values: JAX (XLA) on CPU flushes subnormals to zero, PyTorch does not. Scales below the smallest
normal float32 (``np.finfo(np.float32).tiny`` ≈ 1.18e-38) therefore raise ``ValueError``. Subnormal *inputs* ``x``
and subnormal products $x \\cdot \\mathrm{inv}$ are flushed to zero here, unlike in PyTorch (they only matter when
the zero point or a tie sits right next to them, but do not rely on them).

References:
  PyTorch ``aten/src/ATen/native/quantized/cpu/kernels/QuantizedOpKernels.cpp``,
  ``aten/src/ATen/native/quantized/AffineQuantizerBase.cpp``,
  ``aten/src/ATen/native/quantized/FakeQuantPerTensorAffine.cpp``,
  ``torch/ao/quantization/observer.py``; fbgemm ``src/QuantUtilsAvx2.cc``.
  Dekker, "A floating-point technique for extending the available precision", Numer. Math. 18, 1971.
  Boldo & Melquiond, "Emulation of FMA and correctly rounded sums: proved algorithms using rounding to odd",
  IEEE Trans. Computers 57(4), 2008.
"""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from quantref import _validate, formats
from quantref._validate import INT32_MAX, INT32_MIN, check_normal_float32, is_concrete
from quantref.affine import true_divide as _divide  # XLA rewrites x / constant as x * (1 / constant)
from quantref.runtimes._arith import float_to_int32

__all__ = [
    "TorchQDtype",
    "quantize_per_tensor",
    "quantize_per_channel",
    "fake_quantize_per_tensor_affine",
    "fake_quantize_per_channel_affine",
    "min_max_observer",
]

TorchQDtype = Literal["quint8", "qint8", "qint32"]
_QDTYPES: dict[str, formats.IntFormat] = {"quint8": formats.UINT8, "qint8": formats.INT8, "qint32": formats.INT32}


# ---------------------------------------------------------------------------------------------------------------
# float32 building blocks, exact under XLA's multiply-add contraction


def _rounded_product(a: jax.Array, b: jax.Array) -> jax.Array:
    """``f32(a * b)``, hidden from multiply-add contraction.

    A ``select`` between the product and another value is not a multiply, so no backend can fuse it into a later
    add. The other arm is only taken for a NaN product, where ``a + b`` is NaN as well (callers never multiply
    0 by Inf: the reciprocal of a validated scale is finite and non-zero).
    """
    product = a * b
    return jnp.where(product != product, a + b, product)


def _split(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``a = hi + lo`` exactly, each with at most 12 significant bits (mask the low 12 bits of the encoding)."""
    bits = jax.lax.bitcast_convert_type(a, jnp.uint32)
    hi = jax.lax.bitcast_convert_type(bits & jnp.uint32(0xFFFFF000), jnp.float32)
    return hi, a - hi


def _two_sum(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Knuth's TwoSum: ``s = f32(a + b)`` and ``e = a + b - s`` exactly (no multiplies, so nothing to contract)."""
    s = a + b
    b_virtual = s - a
    return s, (a - (s - b_virtual)) + (b - b_virtual)


def _two_product(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Dekker's product: ``p = f32(a * b)`` and ``e = a * b - p`` exactly (no overflow or underflow assumed).

    Every product of halves is exact (12 × 12 bits), so a backend that contracts one of them into the following
    add computes the same value; ``p`` itself is kept out of contraction by :func:`_rounded_product`.
    """
    p = _rounded_product(a, b)
    a_hi, a_lo = _split(a)
    b_hi, b_lo = _split(b)
    return p, ((a_hi * b_hi - p) + a_hi * b_lo + a_lo * b_hi) + a_lo * b_lo


def _round_to_odd_sum(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a + b`` rounded to odd: exact if representable, else the neighbour whose last significand bit is 1."""
    s, e = _two_sum(a, b)
    bits = jax.lax.bitcast_convert_type(s, jnp.int32)
    # s is even and inexact: step one ulp towards the exact value (sign-magnitude: +1 grows |s|).
    step = jnp.where((e > 0) == (s > 0), 1, -1)
    bits = jnp.where((e != 0) & ((bits & 1) == 0), bits + step, bits)
    return jax.lax.bitcast_convert_type(bits, jnp.float32)


def _fma(a: jax.Array, b: jax.Array, c: jax.Array) -> jax.Array:
    """``f32(a * b + c)`` with one rounding, for finite ``b != 0`` and an integer-valued ``c``.

    Boldo & Melquiond (2008, Algorithm 5.4): ``a*b = uh + ul`` (Dekker), ``c + uh = th + tl`` (TwoSum), then
    ``f32(th + RO(tl + ul))`` is the correctly rounded ``a*b + c``, all in float32.

    Outside the range where Dekker's error term is exact the answer is known without it: below ``2^-64`` the product
    cannot move an integer ``c`` (nor round a zero ``c`` to anything but a value that rounds to integer 0), and above
    ``2^64`` adding ``|c| < 2^32`` cannot bring the sum back into any integer range.
    """
    uh, ul = _two_product(a, b)
    th, tl = _two_sum(c, uh)
    fused = th + _round_to_odd_sum(tl, ul)
    magnitude = jnp.abs(uh)
    return jnp.where(magnitude < 2.0**-64, c, jnp.where(magnitude >= 2.0**64, uh, fused))


def _saturate_f32(values: jax.Array, fmt: formats.IntFormat) -> jax.Array:
    """Clamp integer-valued float32 (no NaN) to ``fmt`` and convert, exactly also for qint32's ±2^31 ends."""
    out = jnp.clip(values, -(2.0**31), 2.0**31 - 256).astype(jnp.int32)  # 2^31-256: largest float32 < 2^31
    out = jnp.where(values >= 2.0**31, INT32_MAX, out)
    return jnp.clip(out, fmt.qmin, fmt.qmax).astype(fmt.storage_dtype)


# ---------------------------------------------------------------------------------------------------------------
# validation (host side, before tracing)


def _check_qdtype(dtype: str) -> formats.IntFormat:
    if not isinstance(dtype, str) or dtype not in _QDTYPES:
        raise ValueError(f"dtype must be one of {tuple(_QDTYPES)}, got {dtype!r}")
    return _QDTYPES[dtype]


def _float_input(x: jax.Array | np.ndarray) -> jax.Array:
    array = _validate.as_array(x, "x")
    if not _validate.is_float_dtype(array.dtype):
        raise TypeError(f"x must be a floating-point array (PyTorch quantizes float32), got dtype {array.dtype}")
    return jnp.asarray(array).astype(jnp.float32)


def _check_scales(scale: np.ndarray, name: str) -> np.ndarray:
    """float32 scales, each positive, finite, with a finite float32 reciprocal (else torch's answer is garbage)."""
    values = np.asarray(scale, dtype=np.float64)
    if not np.all(np.isfinite(values) & (values > 0)):
        bad = values[~(np.isfinite(values) & (values > 0))].ravel()[:3]
        raise ValueError(f"{name} must be finite and > 0, got values such as {bad.tolist()}")
    scale32 = values.astype(np.float32)
    with np.errstate(divide="ignore", over="ignore"):
        inv = np.float32(1) / scale32
    if not np.all((scale32 > 0) & np.isfinite(inv)):
        bad = values[~((scale32 > 0) & np.isfinite(inv))].ravel()[:3]
        raise ValueError(
            f"{name} must round to a float32 with a finite reciprocal (>= ~2.9e-39), got values such as {bad.tolist()}"
        )
    check_normal_float32(scale32, name)
    return scale32


def _check_int(value: object, name: str) -> int:
    return _validate.check_int(value, name)


def _check_scalar_scale(scale: object) -> np.float32:
    if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, (int, float, np.integer, np.floating)):
        raise TypeError(f"scale must be a Python or numpy float, got {scale!r} of type {type(scale).__name__}")
    return _check_scales(np.asarray(scale), "scale")[()]


def _check_axis(axis: object, ndim: int) -> int:
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)) or not -ndim <= axis < ndim:
        raise ValueError(f"axis must be an int in [{-ndim}, {ndim - 1}] for a {ndim}-d input, got {axis!r}")
    return int(axis) % ndim


def _channel_params(x, scales, zero_points, axis, names=("scales", "zero_points")):
    """Validate per-channel scales/zero points against ``x`` and ``axis``; return float32 scales, int zero points.

    ``names``: the parameters' names in the caller's signature, for the messages.
    """
    scale_name, zero_point_name = names
    if x.ndim == 0:
        raise ValueError("per-channel quantization needs an input with at least one dimension, got a scalar")
    axis = _check_axis(axis, x.ndim)
    channels = x.shape[axis]
    scales_arr = _validate.as_array(scales, scale_name)
    zero_points_arr = _validate.as_array(zero_points, zero_point_name)
    if not (_validate.is_float_dtype(scales_arr.dtype) or _validate.is_integer_dtype(scales_arr.dtype)):
        raise TypeError(f"{scale_name} must be real numbers, got dtype {scales_arr.dtype}")
    for name, arr in ((scale_name, scales_arr), (zero_point_name, zero_points_arr)):
        if arr.shape != (channels,):
            raise ValueError(
                f"{name} must have shape ({channels},) for axis {axis} of x.shape {x.shape}, got {arr.shape}"
            )
    if not _validate.is_integer_dtype(zero_points_arr.dtype):
        raise TypeError(f"{zero_point_name} must be an integer array, got dtype {zero_points_arr.dtype}")
    # Range-check before any int32 conversion (jnp.asarray would wrap int64 values silently).
    _check_zero_points_in(zero_points_arr, INT32_MIN, INT32_MAX, zero_point_name, "int32")
    if is_concrete(scales_arr):
        scales_arr = _check_scales(np.asarray(scales_arr), scale_name)
    return axis, jnp.asarray(scales_arr).astype(jnp.float32), jnp.asarray(zero_points_arr).astype(jnp.int32)


def _check_zero_points_in(values: jax.Array, lo: int, hi: int, name: str, what: str) -> None:
    if is_concrete(values):
        arr = np.asarray(values)
        if arr.size and (arr.min() < lo or arr.max() > hi):
            raise ValueError(f"{name} must lie in {what} [{lo}, {hi}], got values in [{arr.min()}, {arr.max()}]")


def _check_quant_range(quant_min: object, quant_max: object) -> tuple[int, int]:
    quant_min = _check_int(quant_min, "quant_min")
    quant_max = _check_int(quant_max, "quant_max")
    if not INT32_MIN <= quant_min <= quant_max <= INT32_MAX:
        raise ValueError(
            f"need -2**31 <= quant_min <= quant_max <= 2**31 - 1, got quant_min={quant_min}, quant_max={quant_max}"
        )
    return quant_min, quant_max


def _channel_shape(axis: int, ndim: int) -> tuple[int, ...]:
    return (1,) * axis + (-1,) + (1,) * (ndim - axis - 1)


# ---------------------------------------------------------------------------------------------------------------
# quantize


@functools.partial(jax.jit, static_argnames=("fmt",))
def _quantize_per_tensor(x, inv, zero_point, *, fmt):
    zero_point = zero_point.astype(jnp.float32)
    if fmt.bits == 8:
        # fbgemm's AVX2 kernel: _mm256_fmadd_ps(x, inv, zp), then min(·, 2147483520.f) turns NaN into a huge value.
        values = jnp.round(_fma(x, inv, zero_point))
        return _saturate_f32(jnp.where(jnp.isnan(values), 2.0**31, values), fmt)
    # qint32 goes through fbgemm's scalar Quantize: f32(x*inv), + zp in float32, nearbyint, clamp in double (NaN → min).
    values = jnp.round(_rounded_product(x, inv) + zero_point)
    return _saturate_f32(jnp.where(jnp.isnan(values), -(2.0**31), values), fmt)


def quantize_per_tensor(x: jax.Array | np.ndarray, scale: float, zero_point: int, dtype: TorchQDtype) -> jax.Array:
    """``torch.quantize_per_tensor(x, scale, zero_point, dtype).int_repr()`` on CPU, bit for bit.

    With $\\mathrm{inv} = f_{32}(1/f_{32}(s))$:

    $$
    \\text{quint8, qint8:}\\quad q = \\operatorname{sat}\\big(\\mathrm{rne}(\\operatorname{fma}(x, \\mathrm{inv},
    z))\\big),
    \\qquad
    \\text{qint32:}\\quad q = \\operatorname{sat}\\big(\\mathrm{rne}(f_{32}(f_{32}(x\\cdot\\mathrm{inv}) + z))\\big).
    $$

    The 8-bit types use fbgemm's AVX2 kernel, a single fused multiply-add (one rounding) of the reciprocal product
    and the zero point; qint32 uses the scalar path, which rounds the product first. Both add the zero point
    *before* rounding to an integer, unlike ONNX. NaN → qmax (8-bit) or qmin (qint32); ±Inf saturate.

    References:
      PyTorch ``aten/src/ATen/native/quantized/cpu/kernels/QuantizedOpKernels.cpp``
      (``quantize_tensor_per_tensor_affine_cpu``); fbgemm ``src/QuantUtilsAvx2.cc`` (``QuantizeAvx2``),
      ``include/fbgemm/QuantUtils.h`` (``Quantize``).

    Args:
      x: float array (rounded to float32 first, as ``x.float()``); any shape.
      scale: positive finite Python float (PyTorch rounds it to float32).
      zero_point: int within the range of ``dtype``.
      dtype: ``"quint8"``, ``"qint8"`` or ``"qint32"``.

    Returns:
      The integer representation: ``uint8``, ``int8`` or ``int32``, shaped like ``x``.

    Raises:
      ValueError: for an unknown ``dtype``, a scale that is not positive, finite and normal in float32
        (>= ~1.18e-38), or a zero point outside the range of ``dtype``.
      TypeError: for a non-float ``x``, a non-numeric ``scale`` or a non-int ``zero_point``.
    """
    fmt = _check_qdtype(dtype)
    x = _float_input(x)
    scale32 = _check_scalar_scale(scale)
    zero_point = _check_int(zero_point, "zero_point")
    _check_zero_points_in(np.asarray(zero_point), fmt.qmin, fmt.qmax, "zero_point", f"the {dtype} range")
    inv = np.float32(1) / scale32
    return _quantize_per_tensor(x, jnp.float32(inv), jnp.int32(zero_point), fmt=fmt)


@functools.partial(jax.jit, static_argnames=("axis", "fmt"))
def _quantize_per_channel(x, scales, zero_points, *, axis, fmt):
    shape = _channel_shape(axis, x.ndim)
    inv = (1.0 / scales).reshape(shape)
    values = jnp.round(_rounded_product(x, inv) + zero_points.astype(jnp.float32).reshape(shape))
    # static_cast<int>(NaN) is 0x80000000 on x86; stored into 8 bits that is 0.
    nan_code = 0.0 if fmt.bits == 8 else -(2.0**31)
    return _saturate_f32(jnp.where(jnp.isnan(values), nan_code, values), fmt)


def quantize_per_channel(
    x: jax.Array | np.ndarray,
    scales: jax.Array | np.ndarray,
    zero_points: jax.Array | np.ndarray,
    axis: int,
    dtype: TorchQDtype,
) -> jax.Array:
    """``torch.quantize_per_channel(x, scales, zero_points, axis, dtype).int_repr()`` on CPU, bit for bit.

    $$
    q = \\operatorname{sat}\\big(\\mathrm{rne}(f_{32}(f_{32}(x\\cdot\\mathrm{inv}_c) + z_c))\\big),
    \\qquad \\mathrm{inv}_c = f_{32}(1/f_{32}(s_c)).
    $$

    Two roundings (product, then sum), zero point added before the integer rounding — so for the same numbers it can
    differ from ``quantize_per_tensor``'s single fused rounding. NaN → 0 for quint8/qint8 (the low byte of x86's
    ``0x80000000``), qmin for qint32; ±Inf saturate.

    References:
      PyTorch ``aten/src/ATen/native/quantized/cpu/kernels/QuantizedOpKernels.cpp``
      (``quantize_tensor_per_channel_affine_cpu``), ``aten/src/ATen/native/quantized/AffineQuantizerBase.cpp``
      (``quantize_val``).

    Args:
      x: float array (rounded to float32 first).
      scales: 1-D, one positive finite scale per channel (rounded to float32, as torch does).
      zero_points: 1-D integers in the range of ``dtype``, one per channel.
      axis: the channel axis of ``x`` (negative allowed).
      dtype: ``"quint8"``, ``"qint8"`` or ``"qint32"``.

    Returns:
      The integer representation: ``uint8``, ``int8`` or ``int32``, shaped like ``x``.

    Raises:
      ValueError: for an unknown ``dtype``, a bad ``axis``, ``scales``/``zero_points`` whose shape is not
        ``(x.shape[axis],)``, non-positive, non-finite or subnormal (< ~1.18e-38) scales, or zero points outside the
        range of ``dtype``.
      TypeError: for a non-float ``x`` or non-integer ``zero_points``.
    """
    fmt = _check_qdtype(dtype)
    x = _float_input(x)
    axis, scales, zero_points = _channel_params(x, scales, zero_points, axis)
    _check_zero_points_in(zero_points, fmt.qmin, fmt.qmax, "zero_points", f"the {dtype} range")
    return _quantize_per_channel(x, scales, zero_points, axis=axis, fmt=fmt)


# ---------------------------------------------------------------------------------------------------------------
# fake quantize


@functools.partial(jax.jit, static_argnames=("quant_min", "quant_max"))
def _fake_quantize_per_tensor(x, scale, zero_point, *, quant_min, quant_max):
    # ATen's vectorized kernel works in float32 throughout: rne(x*inv) + zp, clamp, (q - zp) * s.
    zero_point = zero_point.astype(jnp.float32)
    codes = jnp.round(_rounded_product(x, 1.0 / scale)) + zero_point
    codes = jnp.clip(codes, jnp.float32(quant_min), jnp.float32(quant_max))
    codes = jnp.where(jnp.isnan(codes), jnp.float32(quant_min), codes)
    return (codes - zero_point) * scale


def fake_quantize_per_tensor_affine(
    x: jax.Array | np.ndarray, scale: float, zero_point: int, quant_min: int, quant_max: int
) -> jax.Array:
    """``torch.fake_quantize_per_tensor_affine(x, scale, zero_point, quant_min, quant_max)`` on CPU, bit for bit.

    $$
    q = \\operatorname{clamp}\\big(\\mathrm{rne}(f_{32}(x\\cdot\\mathrm{inv})) + z,\\ q_{min},\\ q_{max}\\big),
    \\qquad y = f_{32}\\big(f_{32}(q - z)\\cdot s\\big),
    $$

    the zero point added *after* rounding, like ONNX, but with the reciprocal instead of a division. All steps are
    float32 (exact for ranges narrower than $2^{24}$). NaN → ``quant_min``; ±Inf saturate.

    References:
      PyTorch ``aten/src/ATen/native/quantized/FakeQuantPerTensorAffine.cpp``,
      ``aten/src/ATen/native/quantized/cpu/kernels/QuantizedOpKernels.cpp``
      (``fake_quantize_tensor_cachemask_kernel``).

    Args:
      x: float array (computed in float32).
      scale: positive finite float.
      zero_point: int in ``[quant_min, quant_max]``.
      quant_min: smallest code, an int ``>= -2**31``.
      quant_max: largest code, an int ``<= 2**31 - 1``.

    Returns:
      float32 array shaped like ``x``.

    Raises:
      ValueError: for a non-positive, non-finite or subnormal scale, ``quant_min > quant_max``, or a zero point
        outside ``[quant_min, quant_max]``.
      TypeError: for a non-float ``x`` or non-int ``zero_point``/``quant_min``/``quant_max``.
    """
    x = _float_input(x)
    scale32 = _check_scalar_scale(scale)
    quant_min, quant_max = _check_quant_range(quant_min, quant_max)
    zero_point = _check_int(zero_point, "zero_point")
    _check_zero_points_in(np.asarray(zero_point), quant_min, quant_max, "zero_point", "[quant_min, quant_max]")
    return _fake_quantize_per_tensor(
        x, jnp.float32(scale32), jnp.int32(zero_point), quant_min=quant_min, quant_max=quant_max
    )


@functools.partial(jax.jit, static_argnames=("axis", "quant_min", "quant_max"))
def _fake_quantize_per_channel(x, scales, zero_points, *, axis, quant_min, quant_max):
    shape = _channel_shape(axis, x.ndim)
    scales = scales.reshape(shape)
    zero_points = zero_points.reshape(shape)
    # ATen's scalar loop: int64(zp + nearbyint(x*inv)) with the sum in float32; NaN and |q| >= 2^63 become INT64_MIN.
    codes = jnp.round(_rounded_product(x, 1.0 / scales)) + zero_points.astype(jnp.float32)
    to_min = jnp.isnan(codes) | (codes >= 2.0**63)
    codes = jnp.clip(_saturate_f32(jnp.where(to_min, 0.0, codes), formats.INT32), quant_min, quant_max)
    codes = jnp.where(to_min, quant_min, codes)
    # torch evaluates (q - zp) * s in double and rounds once; |q - zp| < 2^24 is exact in float32, so one float32
    # multiply rounds the same way.
    return (codes - zero_points).astype(jnp.float32) * scales


def fake_quantize_per_channel_affine(
    x: jax.Array | np.ndarray,
    scale: jax.Array | np.ndarray,
    zero_point: jax.Array | np.ndarray,
    axis: int,
    quant_min: int,
    quant_max: int,
) -> jax.Array:
    """``torch.fake_quantize_per_channel_affine(x, scale, zero_point, axis, quant_min, quant_max)`` on CPU.

    $$
    q = \\operatorname{clamp}\\big(f_{32}(\\mathrm{rne}(f_{32}(x\\cdot\\mathrm{inv}_c)) + z_c),\\ q_{min},\\
    q_{max}\\big),
    \\qquad y = f_{32}\\big((q - z_c)\\,s_c\\big)\\ \\text{(one rounding)}.
    $$

    Unlike the per-tensor kernel, this scalar kernel converts through ``int64``: NaN, +Inf and any product that rounds
    to $\\ge 2^{63}$ become ``INT64_MIN`` and so clamp to ``quant_min`` (+Inf → quant_min, not quant_max).

    References:
      PyTorch ``aten/src/ATen/native/quantized/cpu/kernels/QuantizedOpKernels.cpp``
      (``fake_quant_per_channel_cachemask_cpu``).

    Args:
      x: float array (computed in float32).
      scale: 1-D float scales, one per channel along ``axis`` (rounded to float32).
      zero_point: 1-D integers in ``[quant_min, quant_max]``, one per channel.
      axis: channel axis of ``x`` (negative allowed).
      quant_min: smallest code, an int ``>= -2**31``.
      quant_max: largest code, an int ``<= 2**31 - 1``, with ``quant_max - quant_min < 2**24``.

    Returns:
      float32 array shaped like ``x``.

    Raises:
      ValueError: for a bad ``axis``, parameter shapes other than ``(x.shape[axis],)``, non-positive, non-finite
        or subnormal scales, ``quant_min > quant_max``, a range of ``2**24`` codes or more, or zero points outside
        ``[quant_min, quant_max]``.
      TypeError: for a non-float ``x`` or a non-integer ``zero_point``.
    """
    x = _float_input(x)
    quant_min, quant_max = _check_quant_range(quant_min, quant_max)
    if quant_max - quant_min >= 2**24:
        raise ValueError(
            "fake_quantize_per_channel_affine supports quant_max - quant_min < 2**24 (torch evaluates (q - z)*s in "
            f"double; quantref reproduces it exactly where q - z fits float32), got [{quant_min}, {quant_max}]"
        )
    axis, scales, zero_points = _channel_params(x, scale, zero_point, axis, names=("scale", "zero_point"))
    _check_zero_points_in(zero_points, quant_min, quant_max, "zero_point", "[quant_min, quant_max]")
    return _fake_quantize_per_channel(x, scales, zero_points, axis=axis, quant_min=quant_min, quant_max=quant_max)


# ---------------------------------------------------------------------------------------------------------------
# observer


_OBSERVER_RANGES = {
    ("quint8", False): (0, 255),
    ("quint8", True): (0, 127),
    ("qint8", False): (-128, 127),
    ("qint8", True): (-64, 63),
    ("qint32", False): (INT32_MIN, INT32_MAX),
    ("qint32", True): (INT32_MIN, INT32_MAX),
}


@functools.partial(jax.jit, static_argnames=("quant_min", "quant_max", "symmetric", "symmetric_zero_point"))
def _min_max_observer(x, *, quant_min, quant_max, symmetric, symmetric_zero_point):
    eps = jnp.float32(np.finfo(np.float32).eps)
    min_neg = jnp.minimum(jnp.min(x), 0.0)
    max_pos = jnp.maximum(jnp.max(x), 0.0)
    if symmetric:
        # float(quant_max - quant_min) / 2 is 127.5 for 8 bits: the symmetric scale is max|x| / 127.5, not / 127.
        scale = jnp.maximum(_divide(jnp.maximum(-min_neg, max_pos), (quant_max - quant_min) / 2), eps)
        return scale, jnp.int32(symmetric_zero_point)
    scale = jnp.maximum(_divide(max_pos - min_neg, float(quant_max - quant_min)), eps)
    # round(min/scale).to(torch.int) is x86's cvttps2dq (out of range or NaN -> INT32_MIN), then an int32 subtraction.
    rounded = float_to_int32(jnp.round(_divide(min_neg, scale)))
    zero_point = jnp.int32(quant_min) - rounded  # wraps like torch's int32 tensor arithmetic
    return scale, jnp.clip(zero_point, quant_min, quant_max)


def min_max_observer(
    x: jax.Array | np.ndarray,
    dtype: TorchQDtype = "quint8",
    qscheme: Literal["per_tensor_affine", "per_tensor_symmetric"] = "per_tensor_affine",
    reduce_range: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """``torch.ao.quantization.MinMaxObserver(dtype, qscheme, reduce_range)`` after one ``forward(x)``:
    ``calculate_qparams()``.

    With $m = \\min(\\min x, 0)$, $M = \\max(\\max x, 0)$, $\\epsilon = 2^{-23}$ and float32
    arithmetic throughout:

    $$
    \\text{affine:}\\quad s = \\max\\Big(\\frac{M - m}{q_{max} - q_{min}}, \\epsilon\\Big),\\
    z = \\operatorname{clamp}\\big(q_{min} - \\mathrm{rne}(m / s)\\big); \\qquad
    \\text{symmetric:}\\quad s = \\max\\Big(\\frac{\\max(-m, M)}{(q_{max} - q_{min})/2}, \\epsilon\\Big),\\
    z = 128\\ (\\text{quint8})\\ \\text{or}\\ 0.
    $$

    For 8 bits the symmetric divisor is 127.5, not 127. ``reduce_range`` narrows quint8 to [0, 127] and qint8 to
    [−64, 63] (qint32 ignores it; torch refuses it for symmetric quint8). An all-zero input gives
    $s = \\epsilon$. NaN in ``x`` makes ``s`` NaN (the zero point is then meaningless, as in torch).

    References:
      PyTorch ``torch/ao/quantization/observer.py`` (``MinMaxObserver``,
      ``UniformQuantizationObserverBase._calculate_qparams``), ``torch/ao/quantization/utils.py``
      (``calculate_qmin_qmax``).

    Args:
      x: float array, non-empty (observed in float32).
      dtype: ``"quint8"``, ``"qint8"`` or ``"qint32"``.
      qscheme: ``"per_tensor_affine"`` or ``"per_tensor_symmetric"``.
      reduce_range: drop one bit of range, as for fbgemm's overflow-free int8 kernels.

    Returns:
      ``(scale, zero_point)``: a float32 scalar and an int32 scalar.

    Raises:
      ValueError: for an unknown ``dtype`` or ``qscheme``, an empty ``x``, or symmetric quint8 with
        ``reduce_range`` (PyTorch raises NotImplementedError there).
      TypeError: for a non-float ``x`` or a non-bool ``reduce_range``.
    """
    _check_qdtype(dtype)
    qschemes = ("per_tensor_affine", "per_tensor_symmetric")
    if qscheme not in qschemes:
        raise ValueError(f"qscheme must be one of {qschemes}, got {qscheme!r}")
    if not isinstance(reduce_range, (bool, np.bool_)):
        raise TypeError(f"reduce_range must be a bool, got {reduce_range!r}")
    symmetric = qscheme == "per_tensor_symmetric"
    if symmetric and reduce_range and dtype == "quint8":
        raise ValueError("reduce_range=True is not supported with qscheme='per_tensor_symmetric' and dtype='quint8'")
    x = _float_input(x)
    if x.size == 0:
        raise ValueError("x must be non-empty: MinMaxObserver ignores empty inputs and has no range to report")
    quant_min, quant_max = _OBSERVER_RANGES[(dtype, bool(reduce_range))]
    return _min_max_observer(
        x,
        quant_min=quant_min,
        quant_max=quant_max,
        symmetric=symmetric,
        symmetric_zero_point=128 if dtype == "quint8" else 0,
    )
