"""The affine (uniform) quantizer: scale, zero point, quantize, dequantize, fake-quant.

A real value x is mapped onto a b-bit integer grid ``qmin..qmax`` by a scale $s > 0$ and an integer zero
point $z$:

$$
q = \\operatorname{clamp}\\big(\\operatorname{round}(x / s) + z,\\; q_{min},\\; q_{max}\\big), \\qquad
\\hat x = s\\,(q - z).
$$

Zero is exactly representable ($x = 0 \\mapsto q = z \\mapsto \\hat x = 0$), which matters for zero padding
and ReLU outputs. Inside the representable range $[s(q_{min} - z),\\, s(q_{max} - z)]$ the error
$|x - \\hat x|$ is at most $s/2$; outside it is the clipping error.

Granularity is chosen by ``axis`` and ``block_size``, with the parameter shapes that ONNX uses:

- per-tensor (``axis=None``): ``scale`` and ``zero_point`` are scalars;
- per-channel (``axis=k``): 1-D of length ``x.shape[k]``;
- per-group / blocked (``axis=k, block_size=B``): ``x``'s shape with ``x.shape[k]`` replaced by
  ``ceil(x.shape[k] / B)``; element ``i`` along ``k`` uses group ``i // B`` (a ragged last group is allowed).

NaN and Inf: :func:`quantize` saturates ±Inf to ``qmax``/``qmin`` and maps NaN to ``qmin`` (as onnxruntime does, so
that integer outputs are always defined); :func:`fake_quant` propagates NaN (NaN in, NaN out) and saturates ±Inf.

References:
  Jacob et al., "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference",
  arXiv:1712.05877, 2017.
  Nagel et al., "A White Paper on Neural Network Quantization", arXiv:2106.08295, 2021, sec. 2.
"""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from quantref import _validate, formats
from quantref.rounding import RoundingMode, round_to_int

__all__ = [
    "SymmetricDivisor",
    "quantize",
    "dequantize",
    "fake_quant",
    "scale_zero_point",
    "expand_param",
    "true_divide",
]

SymmetricDivisor = Literal["qmax", "half_levels"]


def quantize(
    x: jax.Array,
    scale: jax.Array | float,
    zero_point: jax.Array | int | None,
    fmt: formats.IntFormat,
    *,
    axis: int | None = None,
    block_size: int | None = None,
    rounding: RoundingMode = "half_to_even",
    key: jax.Array | None = None,
) -> jax.Array:
    """Quantize real values to integer codes.

    $$
    q = \\operatorname{clamp}\\big(\\operatorname{round}(x / s) + z,\\; q_{min},\\; q_{max}\\big)
    $$

    The division is a true float32 division and the zero point is added after rounding, as ONNX QuantizeLinear
    specifies. ±Inf saturate; NaN maps to ``qmin`` (onnxruntime's choice).

    References:
      Jacob et al., arXiv:1712.05877, 2017, eq. (1)–(2).

    Args:
      x: float array.
      scale: positive finite scale(s), shaped for the granularity (see module docstring).
      zero_point: integer zero point(s) in ``[qmin, qmax]``, same shape as ``scale``; ``None`` means 0.
      fmt: the integer grid, e.g. :data:`quantref.formats.INT8`.
      axis: ``None`` for per-tensor, else the channel or group axis.
      block_size: group size along ``axis`` for per-group quantization, else ``None``.
      rounding: rounding mode, see :data:`quantref.rounding.ROUNDING_MODES`.
      key: PRNG key for ``rounding="stochastic"``.

    Returns:
      Integer codes of dtype ``fmt.storage_dtype`` (int8 for 2..8-bit signed formats, uint8 unsigned, ...).

    Raises:
      ValueError: naming the parameter, for a non-float ``x``, a non-float scale or one that is not finite and > 0
        or is subnormal in float32 (below ~1.18e-38: JAX flushes it to zero), a non-integer or out-of-grid zero
        point (int64 values are checked before any conversion), a shape that does not fit ``axis``/``block_size``,
        or an unknown rounding mode.
      TypeError: if ``fmt`` is not an :class:`~quantref.formats.IntFormat`, an array argument is not an array
        (``None``, a string), or ``rounding="stochastic"`` comes with something that is not a PRNG key.
    """
    _validate.check_rounding(rounding, key)
    x, scale, zero_point, axis = _params(x, scale, zero_point, fmt, axis, block_size)
    codes = _quantize_codes(
        x, scale, zero_point, key, qmin=fmt.qmin, qmax=fmt.qmax, axis=axis, block_size=block_size, rounding=rounding
    )
    codes = jnp.where(jnp.isnan(codes), fmt.qmin, codes)
    return codes.astype(fmt.storage_dtype)


def dequantize(
    q: jax.Array,
    scale: jax.Array | float,
    zero_point: jax.Array | int | None,
    *,
    axis: int | None = None,
    block_size: int | None = None,
) -> jax.Array:
    """Map integer codes back to real values.

    $$
    \\hat x = s\\,(q - z)
    $$

    The subtraction is exact in int32, then one float32 multiply — as ONNX DequantizeLinear computes it.

    Args:
      q: integer codes (any integer dtype up to 32 bits).
      scale: positive finite scale(s), shaped for the granularity.
      zero_point: integer zero point(s), same shape as ``scale``; ``None`` means 0.
      axis: ``None`` for per-tensor, else the channel or group axis.
      block_size: group size along ``axis``, else ``None``.

    Returns:
      float32 values of ``q``'s shape.

    Raises:
      ValueError: naming the parameter, for a non-integer ``q`` or zero point, values outside int32, a bad scale
        (as in :func:`quantize`), or shapes that do not fit the granularity.
      TypeError: if an argument is not an array (``None``, a string).
    """
    q = _validate.as_array(q, "q")
    if not _validate.is_integer_dtype(q.dtype):
        raise ValueError(f"q must be an integer array, got dtype {q.dtype}")
    q = _validate.int_array(q, "q", dtype=q.dtype if np.dtype(q.dtype).itemsize <= 4 else jnp.int32)
    scale = _scale(scale)
    zero_point = _zero_point(zero_point, scale)
    axis = _validate.check_granularity(q.shape, scale.shape, axis, block_size, "scale")
    _validate.check_granularity(q.shape, zero_point.shape, axis, block_size, "zero_point")
    return _dequantize(q, scale, zero_point, axis=axis, block_size=block_size)


def fake_quant(
    x: jax.Array,
    scale: jax.Array | float,
    zero_point: jax.Array | int | None,
    fmt: formats.IntFormat,
    *,
    axis: int | None = None,
    block_size: int | None = None,
    rounding: RoundingMode = "half_to_even",
    key: jax.Array | None = None,
) -> jax.Array:
    """Quantize then dequantize, staying in floating point ("simulated quantization").

    $$
    \\hat x = s\\,\\Big(\\operatorname{clamp}\\big(\\operatorname{round}(x/s) + z,\\, q_{min},\\, q_{max}\\big) -
    z\\Big)
    $$

    Equal to ``dequantize(quantize(x, ...), ...)`` for finite inputs, without the integer round trip. It is
    idempotent: ``fake_quant(fake_quant(x)) == fake_quant(x)``. NaN propagates; ±Inf saturate.

    References:
      Jacob et al., arXiv:1712.05877, 2017, sec. 3 ("simulated quantization").

    Args:
      x: float array.
      scale: positive finite scale(s), shaped for the granularity.
      zero_point: integer zero point(s) in ``[qmin, qmax]``; ``None`` means 0.
      fmt: the integer grid.
      axis: ``None`` for per-tensor, else the channel or group axis.
      block_size: group size along ``axis``, else ``None``.
      rounding: rounding mode.
      key: PRNG key for ``rounding="stochastic"``.

    Returns:
      An array of ``x``'s shape and dtype holding values on the quantization grid.

    Raises:
      ValueError: as :func:`quantize`.
      TypeError: as :func:`quantize`.
    """
    _validate.check_rounding(rounding, key)
    x, scale, zero_point, axis = _params(x, scale, zero_point, fmt, axis, block_size)
    return _fake_quant(
        x, scale, zero_point, key, qmin=fmt.qmin, qmax=fmt.qmax, axis=axis, block_size=block_size, rounding=rounding
    )


def scale_zero_point(
    min_val: jax.Array | float,
    max_val: jax.Array | float,
    fmt: formats.IntFormat,
    *,
    symmetric: bool = False,
    symmetric_divisor: SymmetricDivisor = "qmax",
    min_scale: float = float(np.finfo(np.float32).eps),
) -> tuple[jax.Array, jax.Array]:
    """Scale and zero point that map a real range onto an integer grid.

    The range is first widened to contain zero, $m = \\min(\\text{min}, 0)$, $M = \\max(\\text{max}, 0)$,
    so that zero is exactly representable. Then:

    $$
    \\text{asymmetric:} \\quad s = \\frac{M - m}{q_{max} - q_{min}}, \\quad
    z = \\operatorname{clamp}\\big(q_{min} - \\operatorname{round}(m / s),\\, q_{min},\\, q_{max}\\big)
    $$

    $$
    \\text{symmetric:} \\quad s = \\frac{\\max(|m|, |M|)}{d}, \\quad
    z = \\begin{cases} 0 & \\text{signed} \\\\ 2^{b-1} & \\text{unsigned} \\end{cases}
    $$

    where the divisor $d$ is a convention that real tools disagree on, so it is named here:

    - ``symmetric_divisor="qmax"``: $d = q_{max}$ (127 for int8) — TFLite, ONNX Runtime's quantizer,
      and the white paper; ±absmax land exactly on ±127, and with ``narrow_range`` the grid is ``[-127, 127]``.
    - ``symmetric_divisor="half_levels"``: $d = (q_{max} - q_{min}) / 2$ (127.5 for int8) — PyTorch's
      ``MinMaxObserver`` with ``per_tensor_symmetric``; the grid is stretched half a step further.

    A zero-width range (an all-zero tensor) would give $s = 0$; the scale is floored at ``min_scale``
    (float32 epsilon, PyTorch's choice), so that quantize never divides by zero.

    References:
      Nagel et al., "A White Paper on Neural Network Quantization", arXiv:2106.08295, 2021, sec. 2.2.
      Krishnamoorthi, "Quantizing deep convolutional networks for efficient inference", arXiv:1806.08342, 2018.

    Args:
      min_val: smallest value of the range (scalar, or per channel/group).
      max_val: largest value of the range, same shape.
      fmt: the integer grid.
      symmetric: symmetric (zero point fixed at the grid's middle) if True, else asymmetric.
      symmetric_divisor: ``"qmax"`` or ``"half_levels"``, see above. Ignored when asymmetric.
      min_scale: lower bound on the scale (a Python or numpy float, rounded to float32).

    Returns:
      ``(scale, zero_point)``: float32 and int32 arrays of ``min_val``'s shape.

    Raises:
      ValueError: if ``symmetric_divisor`` is unknown, ``min_val`` and ``max_val`` differ in shape, or (when
        concrete) ``min_val > max_val``, either is NaN or infinite in float32 somewhere, or the asymmetric range
        ``max_val - min_val`` overflows float32 (the scale would be infinite); ``symmetric=True`` with
        ``fmt.bits < 2``; or ``min_scale`` is not a finite float32 at least the smallest normal float32 (~1.18e-38).
      TypeError: if ``fmt`` is not an :class:`~quantref.formats.IntFormat`, ``symmetric`` is not a bool,
        ``min_scale`` is not a real number (numpy scalars are fine), or ``min_val``/``max_val`` are not real arrays.
    """
    _validate.check_format(fmt)
    _validate.check_symmetric_divisor(symmetric_divisor)
    symmetric = _validate.check_bool(symmetric, "symmetric")
    if symmetric and fmt.bits < 2:
        raise ValueError(f"symmetric=True needs fmt.bits >= 2, got {fmt.bits}")
    min_scale = _check_min_scale(min_scale)
    min_val = _validate.real_array(min_val, "min_val")
    max_val = _validate.real_array(max_val, "max_val")
    if min_val.shape != max_val.shape:
        raise ValueError(f"min_val and max_val must have the same shape, got {min_val.shape} and {max_val.shape}")
    if _validate.is_concrete(min_val) and _validate.is_concrete(max_val):
        _check_range(np.asarray(min_val), np.asarray(max_val), fmt, symmetric)
    return _scale_zero_point(
        min_val,
        max_val,
        qmin=fmt.qmin,
        qmax=fmt.qmax,
        signed=fmt.signed,
        bits=fmt.bits,
        symmetric=symmetric,
        divisor=symmetric_divisor,
        min_scale=min_scale,
    )


# ----------------------------------------------------------------------------------------------------------------
# The arithmetic behind them: the parameters broadcast against x, a division XLA does not rewrite, the kernels


def expand_param(param: jax.Array, x_shape: tuple[int, ...], axis: int | None, block_size: int | None) -> jax.Array:
    """Broadcast a per-tensor, per-channel or per-group parameter against ``x``.

    Args:
      param: the scale or zero point, shaped for the granularity (see the module docstring).
      x_shape: shape of the quantized tensor.
      axis: normalised axis, or ``None``.
      block_size: group size, or ``None``.

    Returns:
      ``param`` reshaped (per-channel) or repeated along ``axis`` (per-group) so that it broadcasts to ``x_shape``.
    """
    param = jnp.asarray(_validate.as_array(param, "param"))
    if axis is None:
        return param
    if block_size is None:
        return param.reshape((1,) * axis + (-1,) + (1,) * (len(x_shape) - axis - 1))
    repeated = jnp.repeat(param, block_size, axis=axis, total_repeat_length=param.shape[axis] * block_size)
    return jax.lax.slice_in_dim(repeated, 0, x_shape[axis], axis=axis)


def true_divide(numerator: jax.Array, denominator: jax.Array | float) -> jax.Array:
    """``numerator / denominator`` in float32, correctly rounded (IEEE division), elementwise, even under jit.

    XLA's algebraic simplifier rewrites ``a / broadcast(b)`` and ``a / constant`` as ``a * (1 / b)``, which is off
    by one ulp for about one quotient in seven and so moves codes near ties (and scales off the formula by an
    ulp). Selecting the denominator per element (1 where the numerator is NaN, whose quotient is NaN either way)
    makes it something other than a broadcast, so the true division survives — and still fuses into one loop,
    without materialising a full-size denominator. The runtimes of :mod:`quantref.runtimes` divide through it too.

    Args:
      numerator: float values.
      denominator: float values broadcastable against ``numerator`` (a scale, per-tensor or expanded).

    Returns:
      The float32 quotient, as IEEE 754 division rounds it.

    Raises:
      TypeError: if either argument is not a real array.
    """
    numerator = _validate.real_batch(numerator, "numerator")
    denominator = _validate.real_batch(denominator, "denominator")
    denominator = jnp.where(jnp.isnan(numerator), jnp.float32(1), denominator)
    return numerator / denominator


@functools.partial(jax.jit, static_argnames=("qmin", "qmax", "axis", "block_size", "rounding"))
def _quantize_codes(x, scale, zero_point, key, *, qmin, qmax, axis, block_size, rounding):
    """The integer codes as float32: ``clamp(round(x / s) + z)``, NaN mapped to qmin."""
    scale = expand_param(scale.astype(jnp.float32), x.shape, axis, block_size)
    zero_point = expand_param(zero_point.astype(jnp.float32), x.shape, axis, block_size)
    # A true division, not a multiply by 1/s: x/s and x*(1/s) differ near ties (see rounding chapter).
    codes = round_to_int(true_divide(x, scale), rounding, key) + zero_point
    return jnp.clip(codes, qmin, qmax)


@functools.partial(jax.jit, static_argnames=("axis", "block_size"))
def _dequantize(q, scale, zero_point, *, axis, block_size):
    scale = expand_param(scale.astype(jnp.float32), q.shape, axis, block_size)
    zero_point = expand_param(zero_point.astype(jnp.int32), q.shape, axis, block_size)
    return (q.astype(jnp.int32) - zero_point).astype(jnp.float32) * scale


@functools.partial(jax.jit, static_argnames=("qmin", "qmax", "axis", "block_size", "rounding"))
def _fake_quant(x, scale, zero_point, key, *, qmin, qmax, axis, block_size, rounding):
    codes = _quantize_codes(
        x, scale, zero_point, key, qmin=qmin, qmax=qmax, axis=axis, block_size=block_size, rounding=rounding
    )
    scale = expand_param(scale.astype(jnp.float32), x.shape, axis, block_size)
    zero_point = expand_param(zero_point.astype(jnp.float32), x.shape, axis, block_size)
    # codes and zero_point are small integers held exactly in float32, so the subtraction is exact.
    return ((codes - zero_point) * scale).astype(x.dtype)


@functools.partial(jax.jit, static_argnames=("qmin", "qmax", "signed", "bits", "symmetric", "divisor", "min_scale"))
def _scale_zero_point(min_val, max_val, *, qmin, qmax, signed, bits, symmetric, divisor, min_scale):
    lo = jnp.minimum(min_val, 0.0)
    hi = jnp.maximum(max_val, 0.0)
    if symmetric:
        d = qmax if divisor == "qmax" else (qmax - qmin) / 2
        if not signed:
            # An unsigned symmetric grid is centred on 2^(b-1): the half that holds positive values is qmax - mid.
            d = (qmax - 2 ** (bits - 1)) if divisor == "qmax" else (qmax - qmin) / 2
        scale = jnp.maximum(true_divide(jnp.maximum(-lo, hi), d), min_scale)
        zero_point = jnp.full(scale.shape, 0 if signed else 2 ** (bits - 1), jnp.int32)
        return scale, zero_point
    scale = jnp.maximum(true_divide(hi - lo, qmax - qmin), min_scale)
    zero_point = jnp.clip(qmin - jnp.round(true_divide(lo, scale)), qmin, qmax).astype(jnp.int32)
    return scale, zero_point


def _params(x, scale, zero_point, fmt, axis, block_size):
    """Validate inputs at the Python level, before any tracing; return arrays and the normalised axis."""
    _validate.check_format(fmt)
    x = _validate.float_array(x, "x", error=ValueError)
    scale = _scale(scale)
    zero_point = _zero_point(zero_point, scale)
    if _validate.is_concrete(zero_point):
        values = np.asarray(zero_point)
        if values.size and (values.min() < fmt.qmin or values.max() > fmt.qmax):
            raise ValueError(
                f"zero_point must lie in the {fmt.name} grid [{fmt.qmin}, {fmt.qmax}], "
                f"got values in [{values.min()}, {values.max()}]"
            )
    axis = _validate.check_granularity(x.shape, scale.shape, axis, block_size, "scale")
    _validate.check_granularity(x.shape, zero_point.shape, axis, block_size, "zero_point")
    return x, scale, zero_point, axis


def _scale(scale) -> jax.Array:
    """A float scale, finite, > 0 and normal in float32 (when concrete): JAX flushes subnormal scales to zero."""
    scale = _validate.float_array(scale, "scale", error=ValueError)
    _validate.check_scale(scale, "scale", error=ValueError)
    return scale


def _zero_point(zero_point, scale: jax.Array) -> jax.Array:
    """An integer zero point (int32 range checked on the original values), or zeros of the scale's shape."""
    if zero_point is None:
        return jnp.zeros(scale.shape, jnp.int32)
    return _validate.int_array(zero_point, "zero_point", error=ValueError)


def _check_min_scale(min_scale) -> float:
    """A Python or numpy float, finite and at least the smallest normal float32 (else the scale could be zero)."""
    value = _validate.check_real(min_scale, "min_scale")
    tiny = float(np.finfo(np.float32).tiny)
    with np.errstate(over="ignore"):
        finite32 = np.isfinite(np.float32(value))
    if not (np.isfinite(value) and finite32 and value >= tiny):
        raise ValueError(
            f"min_scale must be a finite float32 >= {tiny:.6g} (the smallest normal float32; a smaller floor lets "
            f"the scale be flushed to zero), got {min_scale!r}"
        )
    return float(np.float32(value))


def _check_range(min_val: np.ndarray, max_val: np.ndarray, fmt: formats.IntFormat, symmetric: bool) -> None:
    """A concrete range: finite, ordered, and narrow enough that its scale is finite in float32."""
    for name, values in (("min_val", min_val), ("max_val", max_val)):
        if not np.all(np.isfinite(values)):
            # A NaN range would pass the ordering check below and give a NaN scale.
            raise ValueError(f"{name} must be finite everywhere (in float32), got values such as {values.ravel()[:3]}")
    if np.any(min_val > max_val):
        raise ValueError("min_val must be <= max_val everywhere")
    if not symmetric:
        with np.errstate(over="ignore"):
            width = np.maximum(max_val, np.float32(0)) - np.minimum(min_val, np.float32(0))
        if not np.all(np.isfinite(width)):
            raise ValueError(
                "the range max_val - min_val must be finite in float32 (else the asymmetric scale is infinite), got "
                f"a range from {min_val.min():.6g} to {max_val.max():.6g}; narrow it or use symmetric=True"
            )
