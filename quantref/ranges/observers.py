"""The range observers' protocol and the extremes: min-max, abs-max and their moving average.

An :class:`Observer` is ``(init, update, result)``, pure functions over a NamedTuple state (see
:mod:`quantref.ranges`). This module also holds the reductions every observer shares: the statistics' shape for a
granularity, and the min/max over the finite values of a batch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from quantref import _validate

__all__ = ["Observer", "MinMaxState", "MovingAverageState", "min_max", "abs_max", "moving_average_min_max"]

ShapeOrExample = Any  # an array, a jax.ShapeDtypeStruct, or a shape tuple


class Observer(NamedTuple):
    """A range estimator as three pure functions.

    Attributes:
      init: ``init(x_example) -> state``; ``x_example`` is a batch (or anything with a ``.shape``, or a shape
        tuple) that fixes the shape of the statistics.
      update: ``update(state, x) -> state``; folds one batch in. Jit-able; the state is a NamedTuple of arrays.
      result: ``result(state) -> (min_val, max_val)``, float32 arrays shaped for the granularity, ready for
        :func:`quantref.affine.scale_zero_point`.
    """

    init: Callable[[ShapeOrExample], Any]
    update: Callable[[Any, jax.Array], Any]
    result: Callable[[Any], tuple[jax.Array, jax.Array]]


class MinMaxState(NamedTuple):
    """Running extremes over the finite values seen (``+inf``/``-inf`` where none yet)."""

    min_val: jax.Array
    max_val: jax.Array


class MovingAverageState(NamedTuple):
    """Exponential moving averages of per-batch extremes; ``seen`` marks entries that have had a finite value."""

    min_val: jax.Array
    max_val: jax.Array
    seen: jax.Array


def _min_max_observer(
    axis: int | None, block_size: int | None, result: Callable[[MinMaxState], tuple[jax.Array, jax.Array]]
) -> Observer:
    _validate.check_observer_granularity(axis, block_size)

    def init(x_example: ShapeOrExample) -> MinMaxState:
        shape = stats_shape(shape_of(x_example), axis, block_size)
        return MinMaxState(jnp.full(shape, jnp.inf, jnp.float32), jnp.full(shape, -jnp.inf, jnp.float32))

    def update(state: MinMaxState, x: jax.Array) -> MinMaxState:
        check_state(state, MinMaxState)
        x = as_float32(x)
        check_batch(x, state.min_val.shape, axis, block_size)
        batch_min, batch_max = batch_min_max(x, axis, block_size)
        return MinMaxState(jnp.minimum(state.min_val, batch_min), jnp.maximum(state.max_val, batch_max))

    return Observer(init, update, checked_result(result, MinMaxState))


def min_max(axis: int | None = None, block_size: int | None = None) -> Observer:
    """The data's extent: running minimum and maximum.

    $$
    \\text{min\\_val} = \\min_i x_i, \\qquad \\text{max\\_val} = \\max_i x_i
    $$

    over every finite value of every batch (per tensor, channel or group). Exact and order-independent: feeding
    the data in batches gives bitwise the same range as one pass. Never clips, so one outlier stretches the grid
    for everything else (see :func:`percentile` and :func:`mse`).

    References:
      Nagel et al., "A White Paper on Neural Network Quantization", arXiv:2106.08295, 2021, sec. 3.1 ("Min-max").
      Jacob et al., arXiv:1712.05877, 2017, sec. 3.

    Args:
      axis: ``None`` for per-tensor, else the channel (or group) axis.
      block_size: group size along ``axis`` for per-group ranges; must divide ``x.shape[axis]``.

    Returns:
      An :class:`Observer` whose state is a :class:`MinMaxState`.

    Raises:
      ValueError: naming the argument, for a non-int ``axis``, a non-positive ``block_size``, or ``block_size``
        without ``axis``; ``init``/``update`` raise for an axis out of range or a ``block_size`` that does not
        divide the axis.
    """
    return _min_max_observer(axis, block_size, lambda state: empty_to_zero(state.min_val, state.max_val))


def abs_max(axis: int | None = None, block_size: int | None = None) -> Observer:
    """The symmetric range $\\pm \\max_i |x_i|$ (for symmetric quantization).

    $$
    \\text{max\\_val} = -\\text{min\\_val} = \\max_i |x_i|
    $$

    Shares :func:`min_max`'s state ($\\max |x| = \\max(-\\min x, \\max x)$), so it is exact and
    order-independent too.

    References:
      Nagel et al., "A White Paper on Neural Network Quantization", arXiv:2106.08295, 2021, sec. 2.2 and 3.1.

    Args:
      axis: ``None`` for per-tensor, else the channel (or group) axis.
      block_size: group size along ``axis``; must divide ``x.shape[axis]``.

    Returns:
      An :class:`Observer` whose state is a :class:`MinMaxState` and whose result is ``(-a, a)``.

    Raises:
      ValueError: as :func:`min_max`.
    """

    def result(state: MinMaxState) -> tuple[jax.Array, jax.Array]:
        min_val, max_val = empty_to_zero(state.min_val, state.max_val)
        bound = jnp.maximum(-min_val, max_val)
        return -bound, bound

    return _min_max_observer(axis, block_size, result)


def moving_average_min_max(momentum: float = 0.9, axis: int | None = None, block_size: int | None = None) -> Observer:
    """Exponential moving average of each batch's minimum and maximum.

    $$
    m_1 = \\min x^{(1)}, \\qquad m_t = \\mu\\, m_{t-1} + (1 - \\mu) \\min x^{(t)}
    $$

    and the same for the maximum. The first batch initialises the average (no bias towards a zero start); a batch
    with no finite value in an entry leaves that entry unchanged. ``momentum`` $\\mu$ is the weight of the
    *old* value. PyTorch's ``MovingAverageMinMaxObserver`` names the other weight: its ``averaging_constant``
    $c$ (default 0.01) is $1 - \\mu$, so PyTorch's default is ``momentum=0.99``; TensorFlow's
    ``MovingAverageQuantize`` uses ``ema_decay=0.999`` $= \\mu$. Unlike the other observers the result
    depends on how the data is batched — by design, since it tracks a drifting distribution during training.

    References:
      Jacob et al., arXiv:1712.05877, 2017, sec. 3.1 (EMA of activation ranges during training).
      Krishnamoorthi, arXiv:1806.08342, 2018, sec. 3.

    Args:
      momentum: weight $\\mu \\in [0, 1]$ of the running value (0: the last batch only; 1: the first batch).
      axis: ``None`` for per-tensor, else the channel (or group) axis.
      block_size: group size along ``axis``; must divide ``x.shape[axis]``.

    Returns:
      An :class:`Observer` whose state is a :class:`MovingAverageState`.

    Raises:
      ValueError: if ``momentum`` is outside ``[0, 1]``, or as :func:`min_max`.
    """
    if isinstance(momentum, (bool, np.bool_)) or not isinstance(momentum, (int, float, np.integer, np.floating)):
        raise ValueError(f"momentum must be a float in [0, 1], got {momentum!r:.80}")
    if not 0.0 <= momentum <= 1.0:  # also False for NaN
        raise ValueError(f"momentum must be a float in [0, 1], got {momentum!r}")
    momentum = float(momentum)
    _validate.check_observer_granularity(axis, block_size)

    def init(x_example: ShapeOrExample) -> MovingAverageState:
        shape = stats_shape(shape_of(x_example), axis, block_size)
        zeros = jnp.zeros(shape, jnp.float32)
        return MovingAverageState(zeros, zeros, jnp.zeros(shape, bool))

    def update(state: MovingAverageState, x: jax.Array) -> MovingAverageState:
        check_state(state, MovingAverageState)
        x = as_float32(x)
        check_batch(x, state.min_val.shape, axis, block_size)
        batch_min, batch_max = batch_min_max(x, axis, block_size)
        present = batch_min <= batch_max

        def average(old: jax.Array, new: jax.Array) -> jax.Array:
            blended = momentum * old + (1.0 - momentum) * new
            return jnp.where(present, jnp.where(state.seen, blended, new), old)

        return MovingAverageState(
            average(state.min_val, batch_min), average(state.max_val, batch_max), state.seen | present
        )

    def result(state: MovingAverageState) -> tuple[jax.Array, jax.Array]:
        return state.min_val, state.max_val

    return Observer(init, update, checked_result(result, MovingAverageState))


# ----------------------------------------------------------------------------------------------------------------
# Shared by every observer: the statistics' shape, and min/max over the finite values


def stats_shape(x_shape: tuple[int, ...], axis: int | None, block_size: int | None) -> tuple[int, ...]:
    """Shape of the statistics (= of the quantization parameters) for a batch of ``x_shape``."""
    if axis is None:
        return ()
    ndim = len(x_shape)
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis must be None or an int in [{-ndim}, {ndim - 1}] for a {ndim}-d input, got {axis}")
    axis = axis % ndim
    if block_size is None:
        return (x_shape[axis],)
    if x_shape[axis] % block_size:
        raise ValueError(
            f"block_size={block_size} must divide x.shape[{axis}]={x_shape[axis]}: observers do not accept a "
            "ragged last group"
        )
    return x_shape[:axis] + (x_shape[axis] // block_size,) + x_shape[axis + 1 :]


def shape_of(x_example: ShapeOrExample) -> tuple[int, ...]:
    """The shape of an example batch: a shape tuple of ints >= 0, or anything with a ``.shape`` (or an array)."""
    if isinstance(x_example, tuple):
        sizes_ok = all(isinstance(d, (int, np.integer)) and not isinstance(d, (bool, np.bool_)) for d in x_example)
        if not sizes_ok or any(d < 0 for d in x_example):
            raise TypeError(f"x_example as a shape must be a tuple of ints >= 0, got {x_example!r:.80}")
        return tuple(int(d) for d in x_example)
    if hasattr(x_example, "shape"):
        return tuple(int(d) for d in x_example.shape)  # arrays, jax.ShapeDtypeStruct
    return tuple(np.shape(_validate.as_array(x_example, "x_example")))


def check_state(state: object, kind: type) -> None:
    """The state an observer's ``update``/``result`` gets must be the one its ``init`` made."""
    if not isinstance(state, kind):
        raise TypeError(
            f"state must be a {kind.__name__} (what this observer's init returns), got {type(state).__name__}"
        )


def checked_result(result: Callable[[Any], tuple[jax.Array, jax.Array]], kind: type):
    """``result`` with a check of its state's type."""

    def checked(state: Any) -> tuple[jax.Array, jax.Array]:
        check_state(state, kind)
        return result(state)

    return checked


def as_float32(x: jax.Array) -> jax.Array:
    return _validate.real_batch(x, "x")


def check_batch(x: jax.Array, expected: tuple[int, ...], axis: int | None, block_size: int | None) -> None:
    got = stats_shape(x.shape, axis, block_size)
    if got != expected:
        raise ValueError(
            f"x of shape {x.shape} gives statistics of shape {got}, but the state was initialised for {expected} "
            f"(axis={axis}, block_size={block_size})"
        )


def reduce(x: jax.Array, reducer: Callable[..., jax.Array], axis: int | None, block_size: int | None) -> jax.Array:
    """Apply ``jnp.min``/``jnp.max`` over each tensor, channel or group."""
    if axis is None:
        return reducer(x)
    axis = axis % x.ndim
    if block_size is None:
        return reducer(x, axis=tuple(a for a in range(x.ndim) if a != axis))
    grouped = x.reshape(x.shape[:axis] + (x.shape[axis] // block_size, block_size) + x.shape[axis + 1 :])
    return reducer(grouped, axis=axis + 1)


def batch_min_max(x: jax.Array, axis: int | None, block_size: int | None) -> tuple[jax.Array, jax.Array]:
    """Min and max over the finite values; ``+inf``/``-inf`` where there are none."""
    finite = jnp.isfinite(x)
    # The initial values make an empty batch a no-op instead of a reduction error.
    batch_min = reduce(jnp.where(finite, x, jnp.inf), functools.partial(jnp.min, initial=jnp.inf), axis, block_size)
    batch_max = reduce(jnp.where(finite, x, -jnp.inf), functools.partial(jnp.max, initial=-jnp.inf), axis, block_size)
    return batch_min, batch_max


def empty_to_zero(min_val: jax.Array, max_val: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Map ranges that have seen no finite value (``min > max``) to ``(0, 0)``."""
    empty = min_val > max_val
    return jnp.where(empty, 0.0, min_val), jnp.where(empty, 0.0, max_val)
