"""Gradient estimators for training through quantization: the straight-through estimator (STE), LSQ's learned
step size and PACT's learned clipping level, each a ``jax.custom_vjp`` fake quantizer. :mod:`quantref.qat` builds
its quantizer modules on them.

References:
  Bengio et al., "Estimating or Propagating Gradients Through Stochastic Neurons", arXiv:1308.3432, 2013.
  Esser et al., "Learned Step Size Quantization", arXiv:1902.08153, 2019.
  Choi et al., "PACT: Parameterized Clipping Activation for Quantized Neural Networks", arXiv:1805.06085, 2018.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from quantref import affine, formats

__all__ = ["ste_fake_quant", "lsq_fake_quant", "pact_fake_quant", "scale_gradient", "lsq_gradient_scale"]


def _fake_quant(x, scale, zero_point, qmin, qmax):
    """$s(\\operatorname{clamp}(\\mathrm{rne}(x/s) + z, q_{min}, q_{max}) - z)$ and $x/s$, as :mod:`quantref.affine`
    computes them (a true division; the zero point added after rounding)."""
    position = affine.true_divide(x, scale)
    codes = jnp.clip(jnp.round(position) + zero_point, qmin, qmax)
    return (codes - zero_point) * scale, position


def _sum_to(gradient: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Sums a broadcast gradient back to a parameter's shape (scalar, or per channel along the last axis)."""
    if gradient.shape == shape:
        return gradient
    if not shape:
        return jnp.sum(gradient)
    return jnp.sum(gradient.reshape(-1, shape[-1]), axis=0).reshape(shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _ste(x, scale, zero_point, qmin, qmax):
    return _fake_quant(x, scale, zero_point, qmin, qmax)[0]


def _ste_fwd(x, scale, zero_point, qmin, qmax):
    value, position = _fake_quant(x, scale, zero_point, qmin, qmax)
    return value, (position + zero_point, scale, zero_point)


def _ste_bwd(qmin, qmax, residuals, gradient):
    shifted, scale, zero_point = residuals
    inside = (shifted >= qmin) & (shifted <= qmax)
    return jnp.where(inside, gradient, 0.0), jnp.zeros_like(scale), jnp.zeros_like(zero_point)


_ste.defvjp(_ste_fwd, _ste_bwd)


def ste_fake_quant(x: jax.Array, scale: jax.Array, zero_point: jax.Array, fmt: formats.IntFormat) -> jax.Array:
    """Fake quantization with the straight-through estimator: the gradient is 1 inside the grid's range, 0 outside.

    $$
    \\hat x = s\\,\\big(\\operatorname{clamp}(\\lfloor x/s \\rceil + z,\\ q_{min},\\ q_{max}) - z\\big), \\qquad
    \\frac{\\partial \\hat x}{\\partial x} \\approx \\begin{cases} 1 & q_{min} \\le x/s + z \\le q_{max} \\\\
    0 & \\text{otherwise} \\end{cases}
    $$

    The forward pass is exactly :func:`quantref.affine.fake_quant` (round half to even, true division). The scale
    and zero point get no gradient: they are set from outside (min-max weights, EMA activation ranges).

    References:
      Bengio et al., arXiv:1308.3432, 2013.
      Jacob et al., arXiv:1712.05877, 2017, sec. 3.

    Args:
      x: float32 values.
      scale: positive scale, scalar or per channel (broadcast against ``x``'s last axis).
      zero_point: integer-valued zero point (any dtype), shaped like ``scale``.
      fmt: the integer grid.

    Returns:
      The fake-quantized values, shaped like ``x``.
    """
    return _ste(x, jnp.asarray(scale, jnp.float32), jnp.asarray(zero_point, jnp.float32), fmt.qmin, fmt.qmax)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _lsq(x, scale, zero_point, qmin, qmax):
    return _fake_quant(x, scale, jnp.clip(jnp.round(zero_point), qmin, qmax), qmin, qmax)[0]


def _lsq_fwd(x, scale, zero_point, qmin, qmax):
    rounded_zero_point = jnp.clip(jnp.round(zero_point), qmin, qmax)
    value, position = _fake_quant(x, scale, rounded_zero_point, qmin, qmax)
    return value, (position, scale, rounded_zero_point, zero_point)


def _lsq_bwd(qmin, qmax, residuals, gradient):
    position, scale, zero_point, raw_zero_point = residuals
    shifted = position + zero_point
    inside = (shifted > qmin) & (shifted < qmax)
    # Eq. 3 of LSQ with a zero point: round(x/s) - x/s inside, the clamped code minus z outside.
    step = jnp.where(inside, jnp.round(position) - position, jnp.clip(shifted, qmin, qmax) - zero_point)
    offset = jnp.where(inside, 0.0, -scale)  # LSQ+: z moves only the clamped values, by -s each
    return (
        jnp.where(inside, gradient, 0.0),
        _sum_to(gradient * step, jnp.shape(scale)),
        _sum_to(gradient * offset, jnp.shape(raw_zero_point)),
    )


_lsq.defvjp(_lsq_fwd, _lsq_bwd)


def lsq_fake_quant(x: jax.Array, scale: jax.Array, zero_point: jax.Array, fmt: formats.IntFormat) -> jax.Array:
    """Fake quantization with LSQ's gradients for the input, the step size and (LSQ+) the zero point.

    With $\\hat z = \\lfloor z \\rceil$ (clamped to the grid) and $v = x/s$, the forward is
    :func:`ste_fake_quant`'s, and (eq. 3 of LSQ, rounding passed straight through):

    $$
    \\frac{\\partial \\hat x}{\\partial s} = \\begin{cases}
    q_{min} - \\hat z & v + \\hat z \\le q_{min} \\\\
    -v + \\lfloor v \\rceil & q_{min} < v + \\hat z < q_{max} \\\\
    q_{max} - \\hat z & v + \\hat z \\ge q_{max} \\end{cases}, \\qquad
    \\frac{\\partial \\hat x}{\\partial x} = \\mathbb 1[q_{min} < v + \\hat z < q_{max}], \\qquad
    \\frac{\\partial \\hat x}{\\partial z} = -s\\,\\mathbb 1[\\text{clamped}] .
    $$

    For $z = 0$ on a symmetric grid $q_{min} = -Q_N$, $q_{max} = Q_P$ this is the paper's eq. 3 exactly. Gradients
    of a per-channel ``scale`` are summed over the other axes. LSQ multiplies the step's gradient by
    $g = 1/\\sqrt{N q_{max}}$ — compose with :func:`scale_gradient` and :func:`lsq_gradient_scale`.

    References:
      Esser et al., arXiv:1902.08153, 2019, eq. 3 and 5.
      Bhalgat et al., arXiv:2004.09576, 2020 (the learned offset).

    Args:
      x: float32 values.
      scale: positive step size, scalar or per channel along ``x``'s last axis.
      zero_point: zero point shaped like ``scale`` (float: rounded in the forward, learned with the STE).
      fmt: the integer grid.

    Returns:
      The fake-quantized values, shaped like ``x``.
    """
    return _lsq(x, jnp.asarray(scale, jnp.float32), jnp.asarray(zero_point, jnp.float32), fmt.qmin, fmt.qmax)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _pact(x, alpha, qmax):
    return _fake_quant(x, alpha / qmax, jnp.float32(0), 0, qmax)[0]


def _pact_fwd(x, alpha, qmax):
    return _pact(x, alpha, qmax), (x, alpha)


def _pact_bwd(qmax, residuals, gradient):
    x, alpha = residuals
    passed = (x > 0) & (x < alpha)
    return jnp.where(passed, gradient, 0.0), jnp.sum(jnp.where(x >= alpha, gradient, 0.0))


_pact.defvjp(_pact_fwd, _pact_bwd)


def pact_fake_quant(x: jax.Array, alpha: jax.Array, fmt: formats.IntFormat) -> jax.Array:
    """PACT: clip a non-negative activation at a learned level $\\alpha$, then quantize $[0, \\alpha]$ uniformly.

    $$
    y = \\operatorname{clip}(x, 0, \\alpha), \\qquad \\hat y = s \\lfloor y / s \\rceil,\\ s = \\alpha / q_{max},
    \\qquad \\frac{\\partial \\hat y}{\\partial \\alpha} = \\mathbb 1[x \\ge \\alpha], \\qquad
    \\frac{\\partial \\hat y}{\\partial x} = \\mathbb 1[0 < x < \\alpha]
    $$

    (PACT's eq. 3: the rounding passed straight through, so $\\alpha$ learns only from the clipped values; LSQ's
    step gradient also counts the rounding error of the values inside.) The forward pass is
    :func:`ste_fake_quant` with scale $\\alpha/q_{max}$ and zero point 0 on the unsigned grid.

    References:
      Choi et al., arXiv:1805.06085, 2018, eq. 1–3.

    Args:
      x: float32 values.
      alpha: positive scalar clipping level.
      fmt: an unsigned grid (``qmin`` 0).

    Returns:
      The fake-quantized values.

    Raises:
      ValueError: if ``fmt`` is signed.
    """
    if fmt.signed:
        raise ValueError(f"fmt must be an unsigned grid for PACT (it clips at 0), got {fmt.name}")
    return _pact(x, jnp.asarray(alpha, jnp.float32), fmt.qmax)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def scale_gradient(x: jax.Array, factor: float) -> jax.Array:
    """The identity, whose gradient is multiplied by ``factor``: LSQ's gradient scale, $\\partial/\\partial x
    \\mapsto g\\,\\partial/\\partial x$.

    Args:
      x: any array.
      factor: a Python float $g$.

    Returns:
      ``x``, unchanged.
    """
    return x


scale_gradient.defvjp(lambda x, factor: (x, None), lambda factor, _, gradient: (gradient * factor,))


def lsq_gradient_scale(num_elements: int, fmt: formats.IntFormat) -> float:
    """LSQ's step-size gradient scale $g = 1/\\sqrt{N\\, q_{max}}$.

    $N$ is the number of values one step size quantizes: a weight tensor's elements (per output channel, for
    per-channel steps), or an activation's features per example. The factor keeps the step's update about as
    large, relative to the step, as a weight's update relative to the weight (sec. 2.2 of the paper).

    References:
      Esser et al., arXiv:1902.08153, 2019, sec. 2.2.

    Args:
      num_elements: $N$.
      fmt: the grid ($q_{max} = Q_P$).

    Returns:
      $g$.
    """
    return 1.0 / math.sqrt(num_elements * fmt.qmax)
