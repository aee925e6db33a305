"""Rounding modes and the analysis of rounding error.

Quantization maps a real value to the grid by ``round(x / scale)``; which rounding function is used decides
where ties go and whether the error is biased. This module names each mode and measures the error it makes:

- the uniform-noise model: rounding to a grid of step $\\Delta$ makes an error uniform on
  $[-\\Delta/2, \\Delta/2]$, of power $\\Delta^2/12$;
- the signal-to-quantization-noise ratio of a b-bit quantizer of a full-scale signal:
  $\\mathrm{SQNR} = 6.02\\,b + 1.76$ dB for a sine, and exactly $20 \\log_{10}(2^b) \\approx 6.02\\,b$ dB for a
  uniform signal;
- the split of total error into clipping error (values outside the range) and rounding error (values inside).

References:
  Nagel et al., "A White Paper on Neural Network Quantization", arXiv:2106.08295, 2021.
  Gupta et al., "Deep Learning with Limited Numerical Precision", arXiv:1502.02551, 2015 (stochastic rounding).
  Widrow & Kollár, "Quantization Noise", Cambridge University Press, 2008.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from quantref import _validate
from quantref._validate import check_rounding

__all__ = [
    "ROUNDING_MODES",
    "RoundingMode",
    "check_rounding",
    "round_to_int",
    "uniform_noise_power",
    "ideal_sqnr_db",
    "sqnr_db",
    "error_split",
]

RoundingMode = Literal["half_to_even", "half_away_from_zero", "half_up", "floor", "ceil", "stochastic"]
ROUNDING_MODES: tuple[str, ...] = (
    "half_to_even",
    "half_away_from_zero",
    "half_up",
    "floor",
    "ceil",
    "stochastic",
)


def round_to_int(x: jax.Array, rounding: RoundingMode = "half_to_even", key: jax.Array | None = None) -> jax.Array:
    """Round float values to integers (returned as floats of the same dtype).

    With $f = \\lfloor x \\rfloor$ and $r = x - f \\in [0, 1)$ (exact in floating point, except for
    $-\\tfrac12 < x < 0$, where the rounding of $r \\in (\\tfrac12, 1)$ cannot change a half-up decision):

    $$
    \\text{half\\_up}(x) = f + [r \\ge \\tfrac12], \\qquad
    \\text{half\\_away\\_from\\_zero}(x) = \\operatorname{sign}(x)\\,\\text{half\\_up}(|x|), \\qquad
    \\text{stochastic}(x) = f + [u < r],\\ u \\sim U[0, 1).
    $$

    ``half_to_even`` (banker's rounding, IEEE 754's default) is what ONNX, PyTorch and XLA's ``round`` use; TFLite's
    reference kernels round half away from zero. Stochastic rounding is unbiased: $E[\\text{stochastic}(x)] = x$.
    The floor-and-compare form avoids the classic bug of ``floor(x + 0.5)``, which rounds 0.49999997 up because the
    sum itself rounds to 1.0 in float32. NaN and ±Inf pass through unchanged.

    References:
      Gupta et al., "Deep Learning with Limited Numerical Precision", arXiv:1502.02551, 2015.

    Args:
      x: float array.
      rounding: one of :data:`ROUNDING_MODES`.
      key: PRNG key, required for ``"stochastic"``.

    Returns:
      An array like ``x`` holding integer values (integer inputs come back as float32).

    Raises:
      ValueError: for an unknown ``rounding``, or ``"stochastic"`` without a key.
      TypeError: if ``x`` is not a real array (complex, bool, ``None``, a string) or ``key`` is not a PRNG key.
    """
    check_rounding(rounding, key)
    x = _real(x, "x")
    if rounding == "half_to_even":
        return jnp.round(x)
    if rounding == "floor":
        return jnp.floor(x)
    if rounding == "ceil":
        return jnp.ceil(x)
    if rounding == "half_up":
        return _half_up(x)
    if rounding == "half_away_from_zero":
        return jnp.sign(x) * _half_up(jnp.abs(x))
    floor = jnp.floor(x)
    uniform = jax.random.uniform(key, x.shape, dtype=x.dtype)
    # Where x is ±Inf, x - floor is NaN and the comparison is False, so ±Inf stays ±Inf.
    return floor + (uniform < x - floor).astype(x.dtype)


def _half_up(x: jax.Array) -> jax.Array:
    floor = jnp.floor(x)
    return floor + (x - floor >= 0.5).astype(x.dtype)


def uniform_noise_power(step: float | jax.Array) -> jax.Array:
    """Mean squared rounding error of a grid of step Δ under the uniform-noise model.

    $$
    E[e^2] = \\frac{1}{\\Delta} \\int_{-\\Delta/2}^{\\Delta/2} e^2 \\, de = \\frac{\\Delta^2}{12}
    $$

    References:
      Widrow & Kollár, "Quantization Noise", 2008, ch. 4.

    Args:
      step: the grid step Δ (the scale).

    Returns:
      $\\Delta^2 / 12$.

    Raises:
      TypeError: if ``step`` is not a real number or array.
      ValueError: if a concrete ``step`` is not finite and > 0.
    """
    step = _validate.real_array(step, "step")
    if _validate.is_concrete(step) and not np.all(np.isfinite(np.asarray(step)) & (np.asarray(step) > 0)):
        raise ValueError(f"step must be finite and > 0, got {np.asarray(step).ravel()[:3].tolist()}")
    return step**2 / 12.0


def ideal_sqnr_db(bits: int | jax.Array, signal: Literal["uniform", "sine"] = "sine") -> jax.Array:
    """SQNR of an ideal b-bit uniform quantizer of a full-scale signal, in dB.

    A full-scale signal spans the $2^b$ steps of the grid, $\\Delta = A / 2^b$ for a peak-to-peak
    amplitude $A$. With noise power $\\Delta^2/12$:

    $$
    \\text{uniform signal (power } A^2/12\\text{)}: \\quad 10\\log_{10} 2^{2b} = 6.02\\,b \\text{ dB}, \\qquad
    \\text{sine (power } A^2/8\\text{)}: \\quad 6.02\\,b + 1.76 \\text{ dB}.
    $$

    The familiar "6.02 b + 1.76" is the sine-wave figure; a uniform signal gets 1.76 dB less. For a sine the
    noise is not quite uniform at low b (the sine dwells near its peaks): measured, it falls short of the figure by
    1.0 dB at b = 2, 0.5 dB at b = 4 and under 0.4 dB from b = 5.

    References:
      Bennett, "Spectra of Quantized Signals", Bell System Technical Journal 27, 1948.

    Args:
      bits: bit width b.
      signal: ``"sine"`` or ``"uniform"``.

    Returns:
      The SQNR in dB.

    Raises:
      ValueError: for an unknown ``signal``, or a concrete ``bits`` that is not finite and > 0.
      TypeError: if ``bits`` is not a real number or array.
    """
    _validate.check_choice(signal, "signal", ("uniform", "sine"))
    bits = _validate.real_array(bits, "bits")
    if _validate.is_concrete(bits) and not np.all(np.isfinite(np.asarray(bits)) & (np.asarray(bits) > 0)):
        raise ValueError(f"bits must be finite and > 0, got {np.asarray(bits).ravel()[:3].tolist()}")
    base = 20.0 * np.log10(2.0) * bits
    return base + (10.0 * np.log10(1.5) if signal == "sine" else 0.0)


def sqnr_db(x: jax.Array, x_hat: jax.Array) -> jax.Array:
    """Signal-to-quantization-noise ratio of an approximation, in dB.

    $$
    \\mathrm{SQNR} = 10 \\log_{10} \\frac{\\sum x^2}{\\sum (x - \\hat x)^2}
    $$

    Args:
      x: the reference signal.
      x_hat: its quantized (or otherwise approximated) version, same shape.

    Returns:
      A scalar; ``+inf`` when ``x_hat == x`` exactly and ``x`` is not all zero, NaN when both are all zero or empty.

    Raises:
      TypeError: if ``x`` or ``x_hat`` is not a real array.
      ValueError: if their shapes differ.
    """
    x = _validate.real_array(x, "x")
    x_hat = _validate.real_array(x_hat, "x_hat")
    if x.shape != x_hat.shape:
        raise ValueError(f"x and x_hat must have the same shape, got {x.shape} and {x_hat.shape}")
    return 10.0 * jnp.log10(jnp.sum(x**2) / jnp.sum((x - x_hat) ** 2))


def error_split(x: jax.Array, x_hat: jax.Array, lo: jax.Array, hi: jax.Array) -> dict[str, jax.Array]:
    """Split the squared error of a quantizer into clipping and rounding parts.

    Values inside the representable range ``[lo, hi]`` only suffer rounding error (at most Δ/2 each); values
    outside are clipped to the range's end and suffer clipping error. The two parts add up to the total:

    $$
    \\sum_i (x_i - \\hat x_i)^2 = \\underbrace{\\sum_{x_i \\notin [lo, hi]} (x_i - \\hat x_i)^2}_{\\text{clipping}}
    + \\underbrace{\\sum_{x_i \\in [lo, hi]} (x_i - \\hat x_i)^2}_{\\text{rounding}}
    $$

    Widening the range trades clipping error for rounding error (Δ grows); range estimation (``ranges.py``)
    chooses the point on that trade-off.

    References:
      Nagel et al., "A White Paper on Neural Network Quantization", arXiv:2106.08295, 2021, sec. 2.2 and 3.1.

    Args:
      x: the original values.
      x_hat: the fake-quantized values, same shape.
      lo: the most negative representable value, ``(qmin - zero_point) * scale`` (broadcastable to x).
      hi: the most positive representable value, ``(qmax - zero_point) * scale`` (broadcastable to x).

    Returns:
      A dict with ``"clipping"``, ``"rounding"`` and ``"total"`` mean squared errors (each a sum divided by
      ``x.size``, so ``clipping + rounding == total``; NaN for an empty ``x``) and ``"clipped_fraction"``.

    Raises:
      TypeError: if an argument is not a real array.
      ValueError: if ``x`` and ``x_hat`` differ in shape, or ``lo``/``hi`` do not broadcast to it.
    """
    x = _validate.real_array(x, "x")
    x_hat = _validate.real_array(x_hat, "x_hat")
    lo = _validate.real_array(lo, "lo")
    hi = _validate.real_array(hi, "hi")
    if x.shape != x_hat.shape:
        raise ValueError(f"x and x_hat must have the same shape, got {x.shape} and {x_hat.shape}")
    for name, bound in (("lo", lo), ("hi", hi)):
        try:
            if jnp.broadcast_shapes(bound.shape, x.shape) != x.shape:
                raise ValueError
        except ValueError:
            raise ValueError(f"{name} must broadcast to x's shape {x.shape}, got shape {bound.shape}") from None
    squared = (x - x_hat) ** 2
    outside = (x < lo) | (x > hi)
    clipping = jnp.sum(jnp.where(outside, squared, 0.0)) / x.size
    rounding = jnp.sum(jnp.where(outside, 0.0, squared)) / x.size
    return {
        "clipping": clipping,
        "rounding": rounding,
        "total": jnp.sum(squared) / x.size,
        "clipped_fraction": jnp.mean(outside.astype(jnp.float32)),
    }


def _real(x, name: str) -> jax.Array:
    """A real array: float dtypes kept, integers as float32 (int64 without wrapping); not complex or bool."""
    array = _validate.as_array(x, name)
    if _validate.is_float_dtype(array.dtype):
        return jnp.asarray(array)
    return _validate.real_array(array, name)
