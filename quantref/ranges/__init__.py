"""Range estimation (calibration): streaming observers that choose the ``(min_val, max_val)`` to quantize over.

The affine quantizer (:mod:`quantref.affine`) needs a real range; this module estimates it from data. Each method
is an :class:`Observer`, a triple of pure functions in optax's ``(init, update)`` style:

.. code-block:: python

   observer = ranges.min_max(axis=0)
   state = observer.init(first_batch)               # a NamedTuple of arrays: a pytree
   for batch in batches:
       state = jax.jit(observer.update)(state, batch)
   min_val, max_val = observer.result(state)
   scale, zero_point = affine.scale_zero_point(min_val, max_val, formats.INT8)

(:func:`calibrate` runs that loop.) The methods, following the white paper's sec. 3.1:

- :func:`min_max` — the data's extent $[\\min x, \\max x]$;
- :func:`abs_max` — the symmetric range $\\pm \\max |x|$;
- :func:`moving_average_min_max` — an exponential moving average of per-batch min and max (QAT-style);
- :func:`percentile` — clip the tails at a percentile;
- :func:`mse` — the clipping range that minimises $\\lVert x - Q(x) \\rVert^2$ (and :func:`mse_range`, its
  exact non-streaming form);
- :func:`entropy` — TensorRT's KL-divergence calibration.

**Granularity.** Every observer takes ``axis`` and the min/max observers also take ``block_size``; results have
the shapes :mod:`quantref.affine` expects: scalars per tensor, ``(x.shape[axis],)`` per channel
(statistics reduced over every other axis), and ``x.shape`` with ``x.shape[axis] → x.shape[axis] // block_size``
per group (every other axis kept). Unlike :mod:`quantref.affine`, observers do not accept a ragged last group:
``block_size`` must divide ``x.shape[axis]``. The histogram observers (percentile, mse, entropy) are per-tensor or
per-channel only: a histogram per group (thousands of bins for every 32 or 128 weights) costs more memory than the
tensor itself.

**The histogram.** Percentile, MSE and entropy need the distribution, not just the extremes, and a stream cannot be
read twice. :class:`HistogramState` keeps, for each sign, ``num_bins`` bins of $|x|$ over $[0, 2^e)$,
where $2^e$ is the smallest power of two strictly above every $|x|$ seen so far (starting from
$2^{-100}$; bin width $w = 2^e / \\text{num\\_bins}$, magnitude bin $\\lfloor |x| / w \\rfloor$).
When a batch holds a larger value, the bound grows to $2^{e+k}$ and each old bin $j$ merges into bin
$j \\gg k$. Because $\\lfloor \\lfloor |x|/w \\rfloor / 2^k \\rfloor = \\lfloor |x| / (2^k w) \\rfloor$
and every division by a power of two is exact in floating point, a value lands in the same final bin whenever it
arrived: the counts are bitwise the same however the data is split into batches and in whatever order. (A histogram
over ``[min, max]`` re-binned by interpolation, as PyTorch's ``HistogramObserver`` does, depends on the batching.)
The two signs are stored side by side as one signed histogram of ``2 * num_bins`` bins with edges at multiples of
$w$.

**NaN and Inf.** Observers ignore non-finite values: every statistic is taken over the finite values only, so one
overflowed activation does not destroy the range. A tensor (or channel, or group) with no finite value yet has the
range ``(0, 0)``, which :func:`~quantref.affine.scale_zero_point` turns into its smallest scale. All-equal input
gives ``(c, c)``; ``scale_zero_point`` widens every range to contain zero, so this is usable too.

Statistics are float32 (inputs are cast to float32) and histogram counts are int32: at most $2^{31} - 1$
values per tensor or channel. Subnormal float32 inputs (below ~1.18e-38) count as zero: XLA flushes them on CPU.

References:
  Nagel et al., "A White Paper on Neural Network Quantization", arXiv:2106.08295, 2021, sec. 3.1.
  Krishnamoorthi, "Quantizing deep convolutional networks for efficient inference", arXiv:1806.08342, 2018.
  Wu et al., "Integer Quantization for Deep Learning Inference: Principles and Empirical Evaluation",
  arXiv:2004.09602, 2020 (max, percentile, entropy and MSE calibration compared).
  Migacz, "8-bit Inference with TensorRT", GPU Technology Conference, 2017.

The package: :mod:`~quantref.ranges.observers` (the protocol, min-max, abs-max, moving average),
:mod:`~quantref.ranges.histogram` (the histogram and the observers built on it) and
:mod:`~quantref.ranges.calibration` (running an observer); everything public is importable from
``quantref.ranges``.
"""

from quantref.ranges.calibration import OBSERVERS, calibrate, observer_from_name
from quantref.ranges.histogram import HistogramState, entropy, histogram_edges, mse, mse_range, percentile
from quantref.ranges.observers import (
    MinMaxState,
    MovingAverageState,
    Observer,
    abs_max,
    min_max,
    moving_average_min_max,
)

__all__ = [
    "Observer",
    "MinMaxState",
    "MovingAverageState",
    "HistogramState",
    "min_max",
    "abs_max",
    "moving_average_min_max",
    "percentile",
    "mse",
    "mse_range",
    "entropy",
    "histogram_edges",
    "calibrate",
    "OBSERVERS",
    "observer_from_name",
]
