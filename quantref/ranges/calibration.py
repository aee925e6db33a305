"""Running an observer over batches, and the observers by name."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from quantref import _validate
from quantref.ranges.histogram import entropy, mse, percentile
from quantref.ranges.observers import Observer, abs_max, min_max, moving_average_min_max

__all__ = ["calibrate", "OBSERVERS", "observer_from_name"]


def calibrate(
    observer: Observer, batches: Iterable[jax.Array], *, progress: bool | None = None
) -> tuple[jax.Array, jax.Array]:
    """Fold an observer over batches and return its range.

    $$
    s_0 = \\text{init}(x^{(1)}), \\quad s_t = \\text{update}(s_{t-1}, x^{(t)}), \\quad
    (\\text{min\\_val}, \\text{max\\_val}) = \\text{result}(s_T)
    $$

    ``update`` is jitted once (it recompiles only for a new batch shape).

    Args:
      observer: an :class:`Observer`, e.g. ``min_max()``.
      batches: an iterable of float arrays; the first also initialises the state.
      progress: show a tqdm progress bar; ``None`` shows one when ``batches`` has a length of 100 or more.

    Returns:
      ``(min_val, max_val)``, as ``observer.result``.

    Raises:
      ValueError: if ``batches`` is empty, or as the observer's ``init``/``update``.
      TypeError: if ``observer`` is not an :class:`Observer` (a name: use :func:`observer_from_name`), ``batches``
        is one array rather than an iterable of them, or a batch is not a real array.
    """
    if not isinstance(observer, Observer):
        raise TypeError(
            f"observer must be a ranges.Observer (e.g. ranges.min_max(), or ranges.observer_from_name(name)), "
            f"got {type(observer).__name__} {observer!r:.80}"
        )
    if isinstance(batches, (jax.Array, np.ndarray, str, bytes)) or not isinstance(batches, Iterable):
        raise TypeError(
            f"batches must be an iterable of arrays (a list or a generator of batches), got "
            f"{type(batches).__name__}; for one array x, pass [x]"
        )
    if progress is not None:
        progress = _validate.check_bool(progress, "progress")
    if progress is None:
        progress = hasattr(batches, "__len__") and len(batches) >= 100  # type: ignore[arg-type]
    iterator = iter(tqdm(batches, desc="calibrating", disable=not progress))
    empty = object()
    first = next(iterator, empty)
    if first is empty:
        raise ValueError("batches must hold at least one batch")
    first_array = _validate.as_array(first, "x")  # the batch itself, before init reads its shape
    if not (_validate.is_float_dtype(first_array.dtype) or _validate.is_integer_dtype(first_array.dtype)):
        raise TypeError(f"x (a batch) must be a real (float or integer) array, got dtype {first_array.dtype}")
    update = jax.jit(observer.update)
    state = update(observer.init(first), first)
    for batch in iterator:
        state = update(state, batch)
    return observer.result(state)


OBSERVERS: dict[str, Callable[..., Observer]] = {
    "min_max": min_max,
    "abs_max": abs_max,
    "moving_average_min_max": moving_average_min_max,
    "percentile": percentile,
    "mse": mse,
    "entropy": entropy,
}


def observer_from_name(name: str, **kwargs: Any) -> Observer:
    """Build an observer by name, for chapters and the command line.

    Args:
      name: one of :data:`OBSERVERS`: ``min_max``, ``abs_max``, ``moving_average_min_max``, ``percentile``,
        ``mse``, ``entropy``.
      **kwargs: the observer's arguments, e.g. ``fmt=formats.INT8`` for ``mse`` and ``entropy``.

    Returns:
      The :class:`Observer`.

    Raises:
      ValueError: for an unknown name, listing the allowed ones.
    """
    if not isinstance(name, str) or name not in OBSERVERS:
        raise ValueError(f"name must be one of {sorted(OBSERVERS)}, got {name!r:.80}")
    return OBSERVERS[name](**kwargs)
