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

from quantref import formats
from quantref.rounding import RoundingMode, check_rounding, round_to_int

__all__ = [
    "SymmetricDivisor",
    "scale_zero_point",
    "quantize",
    "dequantize",
    "fake_quant",
    "expand_param",
    "true_divide",
    "is_concrete",
    "check_normal_float32",
    "check_granularity",
    "check_symmetric_divisor",
]

SymmetricDivisor = Literal["qmax", "half_levels"]


def is_concrete(value: object) -> bool:
    """Whether a value can be inspected now (a Python or numpy value, or a concrete JAX array, not a tracer).

    Validation of values (not shapes) runs only on concrete values: under ``jax.jit`` they are not known yet.

    Args:
      value: anything.

    Returns:
      True unless ``value`` is a JAX tracer.
    """
    return not isinstance(value, jax.core.Tracer)


def check_normal_float32(values: np.ndarray, name: str) -> None:
    """Reject values whose magnitude is below the smallest normal float32 (about 1.18e-38), naming the parameter.

    JAX (XLA) on CPU flushes subnormal float32 values to zero, so a subnormal scale cannot give the answer a runtime
    gives; the runtime modules refuse such scales rather than return a silently different number.

    Args:
      values: the float32 values to check.
      name: the parameter's name, for the message.

    Raises:
      ValueError: if any value is subnormal (or zero).
    """
    tiny = np.finfo(np.float32).tiny
    values = np.asarray(values)
    subnormal = np.abs(values) < tiny
    if np.any(subnormal):
        raise ValueError(
            f"{name} must be >= {tiny:.6g} (the smallest normal float32): JAX flushes subnormal float32 to zero on "
            f"CPU, so results would not match; got values such as {values[subnormal].ravel()[:3].tolist()}"
        )


def check_symmetric_divisor(symmetric_divisor: str) -> None:
    """Check a symmetric-divisor convention name (see :func:`scale_zero_point`), before any tracing.

    Args:
      symmetric_divisor: ``"qmax"`` or ``"half_levels"``.

    Raises:
      ValueError: for any other value, naming ``symmetric_divisor`` and the allowed values.
    """
    if symmetric_divisor not in ("qmax", "half_levels"):
        raise ValueError(f"symmetric_divisor must be 'qmax' or 'half_levels', got {symmetric_divisor!r}")


def check_granularity(
    x_shape: tuple[int, ...],
    param_shape: tuple[int, ...],
    axis: int | None,
    block_size: int | None,
    param_name: str = "scale",
) -> int | None:
    """Check that a quantization parameter's shape fits the granularity, and normalise the axis.

    Args:
      x_shape: shape of the tensor being quantized.
      param_shape: shape of ``scale`` (or ``zero_point``).
      axis: ``None`` for per-tensor, else the channel/group axis (negative allowed).
      block_size: ``None`` for per-channel; a positive group size for per-group.
      param_name: the parameter's name, for the error message.

    Returns:
      The axis as a non-negative int, or ``None`` for per-tensor.

    Raises:
      ValueError: naming the parameter when the axis is out of range, ``block_size`` is not a positive int or is
        given without an axis, or the parameter's shape does not fit.
    """
    ndim = len(x_shape)
    if axis is None:
        if block_size is not None:
            raise ValueError(f"block_size={block_size} needs an axis to group along; got axis=None")
        if param_shape != ():
            raise ValueError(f"per-tensor {param_name} (axis=None) must be a scalar, got shape {param_shape}")
        return None
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not -ndim <= axis < ndim:
        raise ValueError(f"axis must be None or an int in [{-ndim}, {ndim - 1}] for a {ndim}-d input, got {axis!r}")
    axis = int(axis) % ndim
    if block_size is None:
        if param_shape != (x_shape[axis],):
            raise ValueError(
                f"per-channel {param_name} along axis {axis} must have shape ({x_shape[axis]},), got {param_shape}"
            )
        return axis
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise ValueError(f"block_size must be None or a positive int, got {block_size!r}")
    groups = -(-x_shape[axis] // block_size)
    expected = x_shape[:axis] + (groups,) + x_shape[axis + 1 :]
    if param_shape != expected:
        raise ValueError(
            f"per-group {param_name} (axis={axis}, block_size={block_size}) must have shape {expected}, "
            f"got {param_shape}"
        )
    return axis


def expand_param(param: jax.Array, x_shape: tuple[int, ...], axis: int | None, block_size: int | None) -> jax.Array:
    """Broadcast a per-tensor, per-channel or per-group parameter against ``x``.

    Args:
      param: the scale or zero point, shaped as :func:`check_granularity` requires.
      x_shape: shape of the quantized tensor.
      axis: normalised axis, or ``None``.
      block_size: group size, or ``None``.

    Returns:
      ``param`` reshaped (per-channel) or repeated along ``axis`` (per-group) so that it broadcasts to ``x_shape``.
    """
    if axis is None:
        return param
    if block_size is None:
        return param.reshape((1,) * axis + (-1,) + (1,) * (len(x_shape) - axis - 1))
    repeated = jnp.repeat(param, block_size, axis=axis, total_repeat_length=param.shape[axis] * block_size)
    return jax.lax.slice_in_dim(repeated, 0, x_shape[axis], axis=axis)


def _check_scale(scale: jax.Array) -> None:
    if not jnp.issubdtype(scale.dtype, jnp.floating):
        raise ValueError(f"scale must be a floating-point array, got dtype {scale.dtype}")
    if is_concrete(scale):
        values = np.asarray(scale)
        if not np.all(np.isfinite(values) & (values > 0)):
            bad = values[~(np.isfinite(values) & (values > 0))].ravel()[:3]
            raise ValueError(f"scale must be finite and > 0 everywhere, got values such as {bad.tolist()}")


def _check_zero_point(zero_point: jax.Array, fmt: formats.IntFormat) -> None:
    if not jnp.issubdtype(zero_point.dtype, jnp.integer):
        raise ValueError(f"zero_point must be an integer array, got dtype {zero_point.dtype}")
    if is_concrete(zero_point):
        values = np.asarray(zero_point)
        if values.size and (values.min() < fmt.qmin or values.max() > fmt.qmax):
            raise ValueError(
                f"zero_point must lie in the {fmt.name} grid [{fmt.qmin}, {fmt.qmax}], "
                f"got values in [{values.min()}, {values.max()}]"
            )


def _params(x, scale, zero_point, fmt, axis, block_size):
    """Validate inputs at the Python level, before any tracing; return arrays and the normalised axis."""
    formats.check_format(fmt)
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"x must be a floating-point array, got dtype {x.dtype}")
    scale = jnp.asarray(scale)
    _check_scale(scale)
    zero_point = jnp.zeros(scale.shape, jnp.int32) if zero_point is None else jnp.asarray(zero_point)
    _check_zero_point(zero_point, fmt)
    axis = check_granularity(x.shape, scale.shape, axis, block_size, "scale")
    check_granularity(x.shape, zero_point.shape, axis, block_size, "zero_point")
    return x, scale, zero_point, axis


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
    """
    numerator = jnp.asarray(numerator, jnp.float32)
    denominator = jnp.where(jnp.isnan(numerator), jnp.float32(1), jnp.asarray(denominator, jnp.float32))
    return numerator / denominator


@functools.partial(jax.jit, static_argnames=("qmin", "qmax", "axis", "block_size", "rounding"))
def _quantize_codes(x, scale, zero_point, key, *, qmin, qmax, axis, block_size, rounding):
    """The integer codes as float32: ``clamp(round(x / s) + z)``, NaN mapped to qmin."""
    scale = expand_param(scale.astype(jnp.float32), x.shape, axis, block_size)
    zero_point = expand_param(zero_point.astype(jnp.float32), x.shape, axis, block_size)
    # A true division, not a multiply by 1/s: x/s and x*(1/s) differ near ties (see rounding chapter).
    codes = round_to_int(true_divide(x, scale), rounding, key) + zero_point
    return jnp.clip(codes, qmin, qmax)


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
      ValueError: naming the parameter, for a non-float ``x``, a non-positive/NaN/Inf or non-float scale, a
        non-integer or out-of-grid zero point, a shape that does not fit ``axis``/``block_size``, or an unknown
        rounding mode.
      TypeError: if ``fmt`` is not an :class:`~quantref.formats.IntFormat`.
    """
    check_rounding(rounding, key)
    x, scale, zero_point, axis = _params(x, scale, zero_point, fmt, axis, block_size)
    codes = _quantize_codes(
        x, scale, zero_point, key, qmin=fmt.qmin, qmax=fmt.qmax, axis=axis, block_size=block_size, rounding=rounding
    )
    codes = jnp.where(jnp.isnan(codes), fmt.qmin, codes)
    return codes.astype(fmt.storage_dtype)


@functools.partial(jax.jit, static_argnames=("axis", "block_size"))
def _dequantize(q, scale, zero_point, *, axis, block_size):
    scale = expand_param(scale.astype(jnp.float32), q.shape, axis, block_size)
    zero_point = expand_param(zero_point.astype(jnp.int32), q.shape, axis, block_size)
    return (q.astype(jnp.int32) - zero_point).astype(jnp.float32) * scale


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
      ValueError: naming the parameter, for non-integer ``q`` or zero point, a bad scale, or shapes that do
        not fit the granularity.
    """
    q = jnp.asarray(q)
    if not jnp.issubdtype(q.dtype, jnp.integer):
        raise ValueError(f"q must be an integer array, got dtype {q.dtype}")
    scale = jnp.asarray(scale)
    _check_scale(scale)
    zero_point = jnp.zeros(scale.shape, jnp.int32) if zero_point is None else jnp.asarray(zero_point)
    if not jnp.issubdtype(zero_point.dtype, jnp.integer):
        raise ValueError(f"zero_point must be an integer array, got dtype {zero_point.dtype}")
    axis = check_granularity(q.shape, scale.shape, axis, block_size, "scale")
    check_granularity(q.shape, zero_point.shape, axis, block_size, "zero_point")
    return _dequantize(q, scale, zero_point, axis=axis, block_size=block_size)


@functools.partial(jax.jit, static_argnames=("qmin", "qmax", "axis", "block_size", "rounding"))
def _fake_quant(x, scale, zero_point, key, *, qmin, qmax, axis, block_size, rounding):
    codes = _quantize_codes(
        x, scale, zero_point, key, qmin=qmin, qmax=qmax, axis=axis, block_size=block_size, rounding=rounding
    )
    scale = expand_param(scale.astype(jnp.float32), x.shape, axis, block_size)
    zero_point = expand_param(zero_point.astype(jnp.float32), x.shape, axis, block_size)
    # codes and zero_point are small integers held exactly in float32, so the subtraction is exact.
    return ((codes - zero_point) * scale).astype(x.dtype)


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
    """
    check_rounding(rounding, key)
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
      min_scale: lower bound on the scale.

    Returns:
      ``(scale, zero_point)``: float32 and int32 arrays of ``min_val``'s shape.

    Raises:
      ValueError: if ``symmetric_divisor`` is unknown, ``min_val`` and ``max_val`` differ in shape, or
        ``min_val > max_val`` or either is NaN or infinite somewhere (when concrete), ``symmetric=True`` with
        ``fmt.bits < 2``, or ``min_scale`` is not a positive float.
      TypeError: if ``fmt`` is not an :class:`~quantref.formats.IntFormat`.
    """
    formats.check_format(fmt)
    check_symmetric_divisor(symmetric_divisor)
    if symmetric and fmt.bits < 2:
        raise ValueError(f"symmetric=True needs fmt.bits >= 2, got {fmt.bits}")
    if not (isinstance(min_scale, (float, int)) and min_scale > 0):
        raise ValueError(f"min_scale must be a positive float, got {min_scale!r}")
    min_val = jnp.asarray(min_val, jnp.float32)
    max_val = jnp.asarray(max_val, jnp.float32)
    if min_val.shape != max_val.shape:
        raise ValueError(f"min_val and max_val must have the same shape, got {min_val.shape} and {max_val.shape}")
    if is_concrete(min_val) and is_concrete(max_val):
        # A NaN range would pass the ordering check below and give a NaN scale.
        if not (np.all(np.isfinite(np.asarray(min_val))) and np.all(np.isfinite(np.asarray(max_val)))):
            raise ValueError("min_val and max_val must be finite everywhere")
        if np.any(np.asarray(min_val) > np.asarray(max_val)):
            raise ValueError("min_val must be <= max_val everywhere")
    return _scale_zero_point(
        min_val,
        max_val,
        qmin=fmt.qmin,
        qmax=fmt.qmax,
        signed=fmt.signed,
        bits=fmt.bits,
        symmetric=bool(symmetric),
        divisor=symmetric_divisor,
        min_scale=float(min_scale),
    )


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
