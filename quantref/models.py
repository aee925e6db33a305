"""The walkthrough model: a small Flax NNX CNN for the 8×8 digits.

Layers, in order (NHWC; shapes for one 8×8×1 image)::

    conv1    3×3, 1→16, SAME     (8, 8, 16)
    bn1, ReLU
    conv2    3×3, 16→32, SAME    (8, 8, 32)
    bn2, ReLU
    max-pool 2×2, stride 2       (4, 4, 32)
    flatten                      (512,)
    dense    512→10              (10,)  logits

10,026 parameters, plus 96 batch-norm running statistics.

Every layer is an attribute, and its name is its NNX path (``conv1``, ``bn1``, ``conv2``, ``bn2``, ``dense``), the
name :mod:`quantref.nn` and every later step use; a chapter reads ``model.conv1.kernel`` directly. BatchNorm follows
each conv, as in the networks that BN folding (:func:`quantref.nn.fold_batch_norm`) is for.

conv1, whose input has one channel, runs as nine multiply-adds of shifted copies of the image (:func:`tap_conv`),
not as XLA's convolution: the same function up to float32 rounding (on the CPU, a training step of this model is
the convolution's bit for bit, so training gives the weights it gave before), at a cost that follows the channel
count, which XLA's CPU convolution over one input channel does not (``benchmarks/pruning.py``).

The model runs in one of two modes, chosen per call: ``train=False`` (the default) normalizes with the running
statistics and is a pure, deterministic function of the input; ``train=True`` normalizes with the batch's
statistics and updates the running ones.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Hashable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax
from jax.custom_derivatives import SymbolicZero

from quantref.data import IMAGE_SHAPE, NUM_CLASSES

__all__ = ["DigitsCNN", "accuracy", "tap_conv"]

# With a few hundred training steps, the default momentum 0.99 leaves the running statistics too close to
# their initial values; 0.9 lets them track the data within a few epochs.
_BATCH_NORM_MOMENTUM = 0.9


class DigitsCNN(nnx.Module):
    """Conv-BN-ReLU ×2, max-pool, dense: 8×8×1 digits → 10 logits.

    Attributes:
      conv1: 3×3 convolution, 1→16 channels, SAME padding.
      bn1: batch norm over conv1's 16 channels.
      conv2: 3×3 convolution, 16→32 channels, SAME padding.
      bn2: batch norm over conv2's 32 channels.
      dense: 512→10 linear layer producing logits.
    """

    def __init__(self, *, rngs: nnx.Rngs):
        """Initializes the weights.

        Args:
          rngs: random streams for the weight initializers; the same seed gives the same weights.
        """
        height, width, channels = IMAGE_SHAPE
        self.conv1 = nnx.Conv(
            channels, 16, kernel_size=(3, 3), padding="SAME", conv_general_dilated=tap_conv, rngs=rngs
        )
        self.bn1 = nnx.BatchNorm(16, momentum=_BATCH_NORM_MOMENTUM, rngs=rngs)
        self.conv2 = nnx.Conv(16, 32, kernel_size=(3, 3), padding="SAME", rngs=rngs)
        self.bn2 = nnx.BatchNorm(32, momentum=_BATCH_NORM_MOMENTUM, rngs=rngs)
        self.dense = nnx.Linear((height // 2) * (width // 2) * 32, NUM_CLASSES, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Computes logits.

        Args:
          x: float32 images, shape ``(N, 8, 8, 1)``, preprocessed by :func:`quantref.data.preprocess`.
          train: if True, batch norm uses and updates batch statistics; if False, it uses running statistics.

        Returns:
          Logits, shape ``(N, 10)`` (``(0, 10)`` for an empty batch).

        Raises:
          ValueError: if ``x`` is not shaped ``(N, 8, 8, 1)``.
          TypeError: if ``x`` is not a float array.
        """
        _check_images(x, "x")
        use_running_average = not train
        x = nnx.relu(self.bn1(self.conv1(x), use_running_average=use_running_average))
        x = nnx.relu(self.bn2(self.conv2(x), use_running_average=use_running_average))
        x = nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2))
        return self.dense(x.reshape(x.shape[0], math.prod(x.shape[1:])))  # -1 would divide by zero for N = 0


@nnx.jit
def _predict(model: DigitsCNN, x: jax.Array) -> jax.Array:
    return jnp.argmax(model(x), axis=-1)


def accuracy(model: DigitsCNN, x: np.ndarray, y: np.ndarray) -> float:
    """Measures the fraction of examples whose most likely class is the label, in eval mode.

    Args:
      model: the CNN.
      x: float32 images, shape ``(N, 8, 8, 1)``.
      y: integer labels, shape ``(N,)``.

    Returns:
      Accuracy in [0, 1].

    Raises:
      ValueError: if ``x`` is not a non-empty ``(N, 8, 8, 1)`` batch or ``y`` is not ``(N,)`` integer labels.
      TypeError: if ``model`` is not an NNX module or ``x`` is not a float array.
    """
    if not isinstance(model, nnx.Module):
        raise TypeError(f"model must be an NNX model of the digits (a DigitsCNN), got {type(model).__name__}")
    x = _check_images(x, "x")
    labels = np.asarray(y)
    if len(x) == 0:
        raise ValueError("x must hold at least one image: the accuracy of no images is undefined")
    if labels.shape != (len(x),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"y must be {len(x)} integer labels, shape ({len(x)},), got {labels.dtype}{labels.shape}")
    predictions = np.asarray(_predict(model, jnp.asarray(x)))
    return float(np.mean(predictions == labels))


def tap_conv(
    inputs: jax.Array,
    kernel: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: lax.ConvDimensionNumbers | None = None,
    feature_group_count: int = 1,
    precision: lax.PrecisionLike = None,
    **kwargs: object,
) -> jax.Array:
    """``lax.conv_general_dilated`` for a convolution over one input channel, as one multiply-add per kernel tap.

    With one input channel a convolution is a weighted sum of shifted copies of the input: for a kernel $K$ of
    $k_1 \\times k_2$ taps, strides $s$ and dilation $d$,

    $$
    y_{n,h,w,c} = \\sum_{i<k_1,\\, j<k_2} x_{n,\\, s h + d i,\\, s w + d j} \\; K_{i,j,0,c}
    $$

    on the padded input. Computed this way the cost is one broadcast multiply-add per tap and output element, so
    it follows the output channel count. XLA's CPU convolution (Eigen's spatial convolution) instead builds the
    $k_1 k_2$-long patch of every pixel and contracts it with the kernel; with a contraction that short the patches
    are the work, which costs about as much for 8 output channels as for 16 and runs several times slower than the
    taps at this model's sizes (``benchmarks/pruning.py``).

    It is the same function as the convolution up to float32 rounding, and its derivatives (forward and reverse
    mode) are the convolution's, computed by ``lax.conv_general_dilated``. The taps accumulate
    ``fma(tap, K[tap], output)`` from zero in row-major tap order, which is what XLA's CPU convolution over one
    input channel computes; where XLA fuses each multiply-add into one FMA the result is the convolution's bit for
    bit. It does so in this model's jit'd training step on the CPU at the batch sizes the library trains with (a
    test checks the loss and every gradient at batch 64), so the model trains to the same weights either way; in
    other graphs (batch 1, fused inference graphs) or eagerly, the outputs may differ in the last bits.

    Any other convolution goes to ``lax.conv_general_dilated`` unchanged: more input channels, groups, input
    dilation, a layout other than channels-last, a preferred element type, dtypes other than float32 and float64
    (the taps would round a narrower type at every tap), an empty kernel or output, negative padding, and malformed
    arguments, which lax then refuses. The signature is that function's, which ``nnx.Conv`` takes as its
    ``conv_general_dilated`` argument.

    Args:
      inputs: the input, channels last: ``(N, *spatial, C_in)``.
      kernel: ``(*spatial, C_in, C_out)``.
      window_strides: one stride per spatial axis.
      padding: ``"SAME"``, ``"VALID"`` (or another ``lax`` padding type) or one ``(low, high)`` pair per spatial axis.
      lhs_dilation: as ``lax.conv_general_dilated``.
      rhs_dilation: kernel dilation per spatial axis (None: 1).
      dimension_numbers: as ``lax.conv_general_dilated``; the taps need ``nnx.Conv``'s channels-last numbers.
      feature_group_count: as ``lax.conv_general_dilated``.
      precision: as ``lax.conv_general_dilated``.
      **kwargs: passed to ``lax.conv_general_dilated`` (``preferred_element_type``, ``out_sharding``).

    Returns:
      The convolution, ``(N, *output spatial, C_out)``, as ``lax.conv_general_dilated`` shapes it.
    """
    geometry = _tap_geometry(
        inputs, kernel, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count
    )
    if geometry is None or not isinstance(precision, Hashable) or any(v is not None for v in kwargs.values()):
        return lax.conv_general_dilated(
            inputs,
            kernel,
            window_strides,
            padding,
            lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count,
            precision=precision,
            **kwargs,
        )
    return _taps(inputs, kernel, (*geometry, precision))


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _taps(inputs: jax.Array, kernel: jax.Array, geometry: tuple) -> jax.Array:
    """The taps of :func:`tap_conv`: ``output = tap * K[tap] + output`` in row-major tap order, from zero."""
    strides, padding, dilation, out_shape, _ = geometry
    padded = jnp.pad(inputs, ((0, 0), *padding, (0, 0)))  # (N, *padded spatial, 1)
    output = jnp.zeros((len(inputs), *out_shape, kernel.shape[-1]), inputs.dtype)
    for tap in itertools.product(*(range(size) for size in kernel.shape[:-2])):
        start = (0, *(i * d for i, d in zip(tap, dilation)), 0)
        limit = (len(padded), *(s + (n - 1) * t + 1 for s, n, t in zip(start[1:], out_shape, strides)), 1)
        output = lax.slice(padded, start, limit, (1, *strides, 1)) * kernel[tap][0] + output  # (N, *out, C_out)
    return output


def _taps_jvp(geometry: tuple, primals: tuple, tangents: tuple) -> tuple[jax.Array, jax.Array]:
    """The convolution's derivative, ``conv(dx, K) + conv(x, dK)``, with ``lax.conv_general_dilated``.

    Reverse mode transposes it into the convolution's own backward convolutions, so gradients are those of
    ``lax.conv_general_dilated`` exactly. A tangent that is zero (the data, in training) costs nothing.
    """
    strides, padding, dilation, _, precision = geometry
    inputs, kernel = primals
    conv = functools.partial(
        lax.conv_general_dilated,
        window_strides=strides,
        padding=padding,
        rhs_dilation=dilation,
        dimension_numbers=_channels_last(len(strides)),
        precision=precision,
    )
    d_inputs, d_kernel = tangents
    terms = [conv(d_inputs, kernel)] if type(d_inputs) is not SymbolicZero else []
    terms += [conv(inputs, d_kernel)] if type(d_kernel) is not SymbolicZero else []
    output = _taps(inputs, kernel, geometry)
    return output, sum(terms[1:], terms[0]) if terms else jnp.zeros_like(output)


_taps.defjvp(_taps_jvp, symbolic_zeros=True)


def _tap_geometry(
    inputs: jax.Array,
    kernel: jax.Array,
    window_strides: object,
    padding: object,
    lhs_dilation: object,
    rhs_dilation: object,
    dimension_numbers: object,
    feature_group_count: object,
) -> tuple | None:
    """``(strides, padding pairs, dilation, output spatial shape)`` when :func:`tap_conv` can use taps, else None.

    None for anything but a well-formed convolution the taps compute: lax then computes it or refuses it.
    """
    spatial = inputs.ndim - 2
    dilation = (1,) * spatial if rhs_dilation is None else rhs_dilation
    if not (
        inputs.dtype == kernel.dtype
        and inputs.dtype in (jnp.float32, jnp.float64)
        and kernel.ndim == inputs.ndim >= 3
        and inputs.shape[-1] == kernel.shape[-2] == 1
        and min(kernel.shape[:-2]) >= 1
        and _ints([feature_group_count], 1, 1)
        and (lhs_dilation is None or _ints(lhs_dilation, 1, 1, spatial))
        and dimension_numbers == _channels_last(spatial)
        and _ints(window_strides, 1, None, spatial)
        and _ints(dilation, 1, None, spatial)
    ):
        return None
    window = tuple((size - 1) * d + 1 for size, d in zip(kernel.shape[:-2], dilation))
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(inputs.shape[1:-1], window, window_strides, padding)
    if not isinstance(padding, Sequence) or len(padding) != spatial:
        return None
    if not all(isinstance(pair, Sequence) and _ints(pair, 0, None, 2) for pair in padding):
        return None
    pads = tuple((int(low), int(high)) for low, high in padding)
    out_shape = tuple(
        (size + low + high - extent) // stride + 1
        for size, (low, high), extent, stride in zip(inputs.shape[1:-1], pads, window, window_strides)
    )
    if min(out_shape) < 1:
        return None
    return tuple(int(stride) for stride in window_strides), pads, tuple(int(d) for d in dilation), out_shape


def _ints(values: object, low: int, high: int | None, length: int | None = None) -> bool:
    """Whether ``values`` is a sequence (of ``length``, if given) of Python or numpy integers in ``[low, high]``."""
    return (
        isinstance(values, Sequence)
        and (length is None or len(values) == length)
        and all(
            isinstance(value, int | np.integer) and low <= value and (high is None or value <= high) for value in values
        )
    )


def _channels_last(spatial: int) -> lax.ConvDimensionNumbers:
    """``nnx.Conv``'s dimension numbers: input and output ``(N, *spatial, C)``, kernel ``(*spatial, C_in, C_out)``."""
    return lax.ConvDimensionNumbers(
        lhs_spec=(0, spatial + 1, *range(1, spatial + 1)),
        rhs_spec=(spatial + 1, spatial, *range(spatial)),
        out_spec=(0, spatial + 1, *range(1, spatial + 1)),
    )


def _check_images(x: object, name: str) -> np.ndarray | jax.Array:
    """Checks a batch of images' type and shape before any tracing (static shapes are known under jit too)."""
    if x is None or isinstance(x, (str, bytes)) or not hasattr(x, "shape"):
        x = np.asarray(x) if x is not None and not isinstance(x, (str, bytes)) else None
        if x is None or x.dtype == object:
            raise TypeError(f"{name} must be a float array of images (N, 8, 8, 1)")
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{name} must be a float array of images (N, 8, 8, 1), got dtype {x.dtype}")
    if x.ndim != 4 or tuple(x.shape[1:]) != IMAGE_SHAPE:
        raise ValueError(f"{name} must be images of shape (N, 8, 8, 1), got {tuple(x.shape)}")
    return x
