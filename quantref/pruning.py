"""Pruning: set weights to zero — one at a time by magnitude, or N of every M — and fine-tune with them at zero.

**Magnitude pruning** keeps the weights of largest magnitude. To a sparsity $s$ (the fraction of zeros) a tensor of
$n$ weights loses its $k = \\operatorname{round}(s\\,n)$ smallest $|w_i|$:

$$
m_i = \\mathbb 1\\bigl[\\,|w_i| > \\tau\\,\\bigr], \\qquad \\tau = \\text{the } k\\text{-th smallest } |w_j|, \\qquad
\\hat w = m \\odot w .
$$

*Layer-wise*, every layer gets sparsity $s$; *globally*, one threshold $\\tau$ over all layers' weights together, so
layers with many small weights lose more. It is each weight's magnitude $|w_i|$ that is compared with $\\tau$; the
sum $\\sum_i w_i \\operatorname{sign}(w_i) = \\sum_i |w_i| = \\lVert w\\rVert_1$ is one number for a whole tensor,
which can rank whole channels (:mod:`quantref.structured`, which removes them and shrinks the network) but not
weights.

**N:M sparsity** keeps the $N$ largest of every $M$ consecutive weights along a layer's input dimension — the 2:4
pattern that sparse tensor cores execute at twice the dense rate.

**Gradual pruning** raises the sparsity during fine-tuning along the cubic schedule of Zhu & Gupta
(:func:`polynomial_sparsity`), re-pruning by magnitude every few steps. :func:`fine_tune` trains with optax through
the pipeline's :class:`quantref.nn.QuantLayer` and its :class:`quantref.nn.Mask`: the forward pass uses
$W \\odot M$, so a pruned weight gets no gradient, and after every optimizer step the kernel is projected back onto
the mask, so pruned weights are exactly zero throughout. :func:`sensitivity_scan` measures how much each layer
tolerates on its own.

References:
  Han, Pool, Tran and Dally, "Learning both Weights and Connections for Efficient Neural Networks",
  arXiv:1506.02626, 2015.
  Zhu and Gupta, "To prune, or not to prune", arXiv:1710.01878, 2017, sec. 3.
  Mishra et al., "Accelerating Sparse Deep Neural Networks", arXiv:2104.08378, 2021 (2:4 sparsity).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from quantref import cache, data, nn, train
from quantref._validate import check_choice, check_int, check_real, real_array

__all__ = [
    "SCOPES",
    "magnitude_mask",
    "magnitude_masks",
    "n_m_mask",
    "polynomial_sparsity",
    "Schedule",
    "FineTuneConfig",
    "apply_masks",
    "with_masks",
    "bake_masks",
    "fine_tune",
    "load_or_fine_tune",
    "sensitivity_scan",
    "sparsity",
]

#: How :func:`magnitude_masks` spreads a sparsity over layers.
SCOPES = ("layer", "global")


# --- unstructured magnitude masks --------------------------------------------------------------------------------


def magnitude_mask(weights: jax.Array | np.ndarray, sparsity: float) -> jax.Array:
    """The mask that zeros the ``round(sparsity * size)`` weights of smallest magnitude.

    $k = \\operatorname{round}(s\\,n)$ rounds half to even, as ``torch.nn.utils.prune`` does; among equal magnitudes
    the earlier weight (in C order) is pruned first.

    References:
      Han et al., arXiv:1506.02626, 2015, sec. 3.

    Args:
      weights: any array.
      sparsity: the fraction of weights to zero, in [0, 1].

    Returns:
      A float32 0/1 array shaped like ``weights``.

    Raises:
      ValueError: if ``sparsity`` is not in [0, 1].
    """
    sparsity = _check_sparsity(sparsity, "sparsity")
    weights = real_array(weights, "weights")
    return _smallest_zeroed(jnp.abs(weights).ravel(), round(sparsity * weights.size)).reshape(weights.shape)


def magnitude_masks(
    model: nnx.Module,
    sparsity: float | Mapping[str, float],
    *,
    scope: str = "layer",
    select: str | Sequence[str] | None = None,
    skip: str | Sequence[str] | None = None,
) -> dict[str, jax.Array]:
    """Magnitude masks for a model's layers, layer by layer or with one global threshold.

    With ``scope="layer"`` each layer loses its own ``round(s * size)`` smallest weights (``sparsity`` may give one
    $s$ per path); with ``scope="global"`` the ``round(s * total)`` smallest magnitudes over all selected layers go,
    wherever they are — ``torch.nn.utils.prune.global_unstructured`` with ``L1Unstructured``. A layer wrapped in a
    :class:`quantref.nn.QuantLayer` with a mask is ranked by $|W \\odot M|$, so weights pruned before stay pruned.

    Args:
      model: any NNX model of conv and dense layers.
      sparsity: the fraction of zeros in [0, 1], or ``{path: fraction}`` for ``scope="layer"`` (paths not listed
        are not pruned).
      scope: ``"layer"`` or ``"global"``.
      select: path patterns of the layers to prune (see :func:`quantref.nn.find_layers`).
      skip: path patterns of layers to leave dense.

    Returns:
      ``{path: mask}``, float32 0/1 arrays shaped like each kernel.

    Raises:
      ValueError: for a sparsity outside [0, 1], an unknown scope, a per-layer mapping with ``scope="global"``, or a
        path in the mapping that is not a selected layer.
    """
    check_choice(scope, "scope", SCOPES)
    kernels = {path: _scores(layer) for path, layer in nn.find_layers(model, select, skip).items()}
    return _MASK_SCOPES[scope](kernels, sparsity)


def _layer_masks(scores: dict[str, jax.Array], sparsity: float | Mapping[str, float]) -> dict[str, jax.Array]:
    if isinstance(sparsity, Mapping):
        unknown = sorted(set(sparsity) - set(scores))
        if unknown:
            raise ValueError(f"sparsity names paths that are not selected layers: {unknown}; layers: {list(scores)}")
        targets = {path: _check_sparsity(value, f"sparsity[{path!r}]") for path, value in sparsity.items()}
    else:
        targets = dict.fromkeys(scores, _check_sparsity(sparsity, "sparsity"))
    return {path: magnitude_mask(scores[path], value) for path, value in targets.items()}


def _global_masks(scores: dict[str, jax.Array], sparsity: float | Mapping[str, float]) -> dict[str, jax.Array]:
    if isinstance(sparsity, Mapping):
        raise ValueError("scope='global' takes one sparsity for all layers, not a mapping")
    flat = jnp.concatenate([score.ravel() for score in scores.values()])
    mask = _smallest_zeroed(flat, round(_check_sparsity(sparsity, "sparsity") * flat.size))
    splits = np.cumsum([score.size for score in scores.values()])[:-1]
    return {path: part.reshape(score.shape) for (path, score), part in zip(scores.items(), jnp.split(mask, splits))}


_MASK_SCOPES = {"layer": _layer_masks, "global": _global_masks}


# --- N:M sparsity ------------------------------------------------------------------------------------------------


def n_m_mask(kernel: jax.Array | np.ndarray, n: int = 2, m: int = 4) -> jax.Array:
    """The N:M mask: the ``n`` largest magnitudes of every ``m`` consecutive weights along the input dimension.

    The input dimension is the kernel's second-to-last axis — ``in`` of a dense kernel ``(in, out)``, ``I`` of a
    conv kernel ``HWIO`` — the dimension a matrix product or convolution sums over, as NVIDIA's sparse tensor cores
    require. Among equal magnitudes the earlier weight is kept.

    References:
      Mishra et al., arXiv:2104.08378, 2021, sec. 3.

    Args:
      kernel: a kernel with at least two axes.
      n: weights kept per group, ``0 < n <= m``.
      m: the group size; must divide the input dimension.

    Returns:
      A float32 0/1 array shaped like ``kernel``; exactly ``n`` ones in every group.

    Raises:
      ValueError: for a kernel with fewer than two axes, bad ``n``/``m``, or an input dimension ``m`` does not
        divide.
    """
    m = check_int(m, "m", low=1)
    n = check_int(n, "n", low=1, high=m)
    kernel = real_array(kernel, "kernel")
    if kernel.ndim < 2:
        raise ValueError(f"kernel must have an input and an output axis, got shape {kernel.shape}")
    if kernel.shape[-2] % m:
        raise ValueError(f"m={m} must divide the input dimension, which is {kernel.shape[-2]} (kernel {kernel.shape})")
    groups = jnp.moveaxis(jnp.abs(kernel), -2, -1)  # (..., out, in)
    groups = groups.reshape(*groups.shape[:-1], -1, m)  # (..., out, in / m, m)
    rank = jnp.argsort(jnp.argsort(-groups, axis=-1, stable=True), axis=-1, stable=True)
    mask = (rank < n).astype(jnp.float32).reshape(*groups.shape[:-2], -1)
    return jnp.moveaxis(mask, -1, -2)


# --- the schedule ------------------------------------------------------------------------------------------------


def polynomial_sparsity(
    step: int | jax.Array,
    final_sparsity: float,
    *,
    initial_sparsity: float = 0.0,
    begin_step: int = 0,
    end_step: int,
    frequency: int = 1,
    power: float = 3.0,
) -> jax.Array:
    """The sparsity at a training step under Zhu & Gupta's polynomial (cubic by default) schedule.

    $$
    s_t = s_f + (s_i - s_f)\\left(1 - \\frac{t' - t_0}{t_e - t_0}\\right)^{p}, \\qquad
    t' = t_0 + \\Delta t \\left\\lfloor \\frac{\\min(t, t_e) - t_0}{\\Delta t} \\right\\rfloor ,
    $$

    for $t \\ge t_0$, and 0 before $t_0$ (pruning has not started). The sparsity rises fast while the network has
    many redundant weights and slowly near the end; it changes only every $\\Delta t$ steps (when the masks are
    recomputed) and stays at $s_f$ after $t_e$. With ``frequency=1`` this is torchao's ``CubicSL`` with
    ``initially_zero=True`` (and ``total_t * delta_t = end_step - begin_step``) and tfmot's ``PolynomialDecay``.

    References:
      Zhu and Gupta, arXiv:1710.01878, 2017, eq. (1).

    Args:
      step: the training step $t$ (a Python int or a traced integer).
      final_sparsity: $s_f$ in [0, 1].
      initial_sparsity: $s_i$ in [0, 1], the sparsity at $t_0$.
      begin_step: $t_0$.
      end_step: $t_e > t_0$.
      frequency: $\\Delta t$, steps between mask updates.
      power: $p$ (3: cubic).

    Returns:
      The sparsity, a float32 scalar.

    Raises:
      ValueError: for sparsities outside [0, 1], ``end_step <= begin_step`` or ``frequency < 1``.
    """
    final_sparsity = _check_sparsity(final_sparsity, "final_sparsity")
    initial_sparsity = _check_sparsity(initial_sparsity, "initial_sparsity")
    begin_step = check_int(begin_step, "begin_step", low=0)
    end_step = check_int(end_step, "end_step", low=begin_step + 1)
    frequency = check_int(frequency, "frequency", low=1)
    power = check_real(power, "power")
    step = jnp.asarray(step)
    pruned = jnp.minimum(step, end_step) - begin_step
    progress = (pruned - pruned % frequency).astype(jnp.float32) / (end_step - begin_step)
    value = final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - progress) ** power
    return jnp.where(step < begin_step, 0.0, value).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Gradual magnitude pruning during :func:`fine_tune` (the arguments of :func:`polynomial_sparsity`).

    Attributes:
      final_sparsity: $s_f$, or ``((path, s_f), ...)`` per layer (with ``scope="layer"``).
      end_step: $t_e$, when the final sparsity is reached.
      begin_step: $t_0$.
      frequency: $\\Delta t$, steps between mask updates.
      initial_sparsity: $s_i$.
      power: $p$.
      scope: ``"layer"`` or ``"global"`` (see :func:`magnitude_masks`).
    """

    final_sparsity: float | tuple[tuple[str, float], ...]
    end_step: int
    begin_step: int = 0
    frequency: int = 10
    initial_sparsity: float = 0.0
    power: float = 3.0
    scope: str = "layer"

    def sparsity(self, step: int) -> float | dict[str, float]:
        """The target sparsity (or ``{path: sparsity}``) at ``step``."""

        def at(final: float) -> float:
            return float(
                polynomial_sparsity(
                    step,
                    final,
                    initial_sparsity=self.initial_sparsity,
                    begin_step=self.begin_step,
                    end_step=self.end_step,
                    frequency=self.frequency,
                    power=self.power,
                )
            )

        if isinstance(self.final_sparsity, tuple):
            return {path: at(final) for path, final in self.final_sparsity}
        return at(self.final_sparsity)


# --- masked fine-tuning ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FineTuneConfig:
    """Hyperparameters of :func:`fine_tune`.

    Attributes:
      steps: optimizer steps.
      batch_size: examples per step.
      learning_rate: initial AdamW learning rate, cosine-decayed to zero over ``steps``.
      weight_decay: AdamW decoupled weight decay.
      seed: seed of the batch order.
    """

    steps: int = 600
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0


def apply_masks(model: nnx.Module, masks: Mapping[str, jax.Array]) -> nnx.Module:
    """A copy of the model with each masked kernel multiplied by its mask (zeros are ``+0.0``).

    Args:
      model: any NNX model of conv and dense layers.
      masks: ``{path: 0/1 mask}`` shaped like each kernel.

    Returns:
      The pruned copy.
    """
    return nn.map_kernels(model, lambda path, kernel: _masked(kernel, masks[path]) if path in masks else kernel)


def with_masks(model: nnx.Module, masks: Mapping[str, jax.Array]) -> nnx.Module:
    """A copy of the model whose masked layers compute with $W \\odot M$: each is wrapped in a
    :class:`quantref.nn.QuantLayer` holding its mask as a :class:`quantref.nn.Mask` (or, if already wrapped, given
    that mask), and its kernel is zeroed where the mask is 0.

    Args:
      model: any NNX model of conv and dense layers.
      masks: ``{path: 0/1 mask}``.

    Returns:
      The wrapped copy.
    """

    def wrap(path: str, layer: nnx.Module) -> nnx.Module | None:
        if path not in masks:
            return None
        inner = layer.layer if isinstance(layer, nn.QuantLayer) else layer
        inner.kernel[...] = _masked(inner.kernel[...], masks[path])
        if isinstance(layer, nn.QuantLayer):
            layer.mask = nn.Mask(jnp.asarray(masks[path], inner.kernel.dtype))
            return layer
        return nn.QuantLayer(layer, mask=masks[path])

    return nn.swap_layers(model, wrap)


def bake_masks(model: nnx.Module) -> nnx.Module:
    """A copy of the model with every :class:`quantref.nn.QuantLayer` mask multiplied into its kernel and removed.

    Args:
      model: any NNX model.

    Returns:
      The copy; wrappers left with no quantizer are replaced by their plain layer, so a model that
      :func:`with_masks` wrapped comes back with its original structure.
    """

    def bake(path: str, layer: nnx.Module) -> nnx.Module | None:
        if not isinstance(layer, nn.QuantLayer) or layer.mask is None:
            return None
        layer.layer.kernel[...] = _masked(layer.layer.kernel[...], layer.mask[...])
        layer.mask = None
        quantizers = (layer.weight_quantizer, layer.input_quantizer, layer.output_quantizer, layer.bias_quantizer)
        return layer if any(q is not None for q in quantizers) else layer.layer

    return nn.swap_layers(model, bake)


def _train_forward(model: nnx.Module, x: jax.Array) -> jax.Array:
    return model(x, train=True)


def fine_tune(
    model: nnx.Module,
    x: np.ndarray,
    y: np.ndarray,
    config: FineTuneConfig = FineTuneConfig(),
    *,
    masks: Mapping[str, jax.Array] | None = None,
    schedule: Schedule | None = None,
    wrt: Any = nnx.Param,
    forward: Callable[[nnx.Module, jax.Array], jax.Array] = _train_forward,
    progress: bool = True,
) -> nnx.Module:
    """Trains a copy of the model with cross-entropy and AdamW, keeping pruned weights exactly zero.

    With ``masks``, those layers compute with $W \\odot M$ (:func:`with_masks`); with a ``schedule``, the masks are
    recomputed every ``schedule.frequency`` steps by magnitude of $W \\odot M$ to the scheduled sparsity, so a weight
    once pruned stays pruned (gradual pruning, Zhu & Gupta). A masked weight gets no gradient, and after each step
    the kernel is set to $W \\odot M$ again, so neither momentum nor weight decay can move it off zero. At the end
    the masks are baked into the kernels (:func:`bake_masks`).

    Args:
      model: an NNX model of conv and dense layers (not changed).
      x: training inputs.
      y: integer labels.
      config: the hyperparameters.
      masks: fixed masks ``{path: 0/1 array}`` (e.g. from :func:`magnitude_masks` or :func:`n_m_mask`), or ``None``.
      schedule: gradual pruning, or ``None``; it may start from ``masks``.
      wrt: which variables train (an ``nnx`` filter): ``nnx.Param`` for all weights; a subclass to train only those
        (:class:`quantref.compression.Centroids` trains only a shared-weight codebook).
      forward: ``forward(model, x)`` computes logits in training mode; the default calls ``model(x, train=True)``.
      progress: show a tqdm bar.

    Returns:
      The fine-tuned copy, with masks baked into the kernels.

    Raises:
      ValueError: if ``config.steps`` or ``config.batch_size`` is not positive or exceeds the data.
    """
    x, y = np.asarray(real_array(x, "x")), np.asarray(y)
    if y.dtype.kind not in "iu" or y.shape != x.shape[:1]:
        raise ValueError(f"y must hold one integer label per example of x {x.shape}, got {y.dtype}{y.shape}")
    steps = check_int(config.steps, "config.steps", low=1)
    batch_size = check_int(config.batch_size, "config.batch_size", low=1, high=len(x))
    tuned = with_masks(model, masks or {})
    if schedule is not None:
        check_choice(schedule.scope, "schedule.scope", SCOPES)
        tuned = with_masks(tuned, _scheduled_masks(tuned, schedule, 0))
    optimizer = nnx.Optimizer(tuned, _optimizer(config.learning_rate, config.weight_decay, steps), wrt=wrt)
    epoch, done = 0, 0
    with tqdm(total=steps, desc="fine-tuning", unit="step", disable=not progress) as bar:
        while done < steps:
            for x_batch, y_batch in data.batches(x, y, batch_size, seed=(config.seed, epoch)):
                if schedule is not None and done % schedule.frequency == 0 and done:
                    _update_masks(tuned, schedule, done)
                loss = _train_step(tuned, optimizer, x_batch, y_batch, forward, wrt)
                done += 1
                bar.update()
                if done == steps:
                    break
            epoch += 1
            bar.set_postfix(loss=f"{float(loss):.4f}")
    return bake_masks(tuned)


def _scheduled_masks(model: nnx.Module, schedule: Schedule, step: int) -> dict[str, jax.Array]:
    """Magnitude masks at the scheduled sparsity, times the current masks (a pruned weight stays pruned)."""
    target = schedule.sparsity(step)
    paths = list(target) if isinstance(target, dict) else None
    masks = magnitude_masks(model, target, scope=schedule.scope, select=paths)
    layers = nn.find_layers(model)
    return {
        path: mask * layers[path].mask[...] if getattr(layers[path], "mask", None) is not None else mask
        for path, mask in masks.items()
    }


def _update_masks(model: nnx.Module, schedule: Schedule, step: int) -> None:
    for path, mask in _scheduled_masks(model, schedule, step).items():
        layer = nn.get_module(model, path)
        layer.mask[...] = mask
        layer.layer.kernel[...] = _masked(layer.layer.kernel[...], mask)


@functools.cache
def _optimizer(learning_rate: float, weight_decay: float, steps: int) -> optax.GradientTransformation:
    # One object per configuration, so that nnx.jit compiles the step once per process (see quantref.train).
    return optax.adamw(optax.cosine_decay_schedule(learning_rate, steps), weight_decay=weight_decay)


@nnx.jit(static_argnames=("forward", "wrt"))
def _train_step(model, optimizer, x, y, forward, wrt) -> jax.Array:
    def loss_fn(model: nnx.Module) -> jax.Array:
        return optax.softmax_cross_entropy_with_integer_labels(forward(model, x), y).mean()

    loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, wrt))(model)
    optimizer.update(model, grads)
    for layer in nn.find_layers(model).values():  # project back onto the masks
        if isinstance(layer, nn.QuantLayer) and layer.mask is not None:
            layer.layer.kernel[...] = _masked(layer.layer.kernel[...], layer.mask[...])
    return loss


def load_or_fine_tune(
    model: nnx.Module,
    x: np.ndarray,
    y: np.ndarray,
    config: FineTuneConfig = FineTuneConfig(),
    *,
    masks: Mapping[str, jax.Array] | None = None,
    schedule: Schedule | None = None,
    wrt: Any = nnx.Param,
    forward: Callable[[nnx.Module, jax.Array], jax.Array] = _train_forward,
    progress: bool = True,
) -> nnx.Module:
    """:func:`fine_tune`, cached on disk (:mod:`quantref.cache`) like the float model.

    The entry's name hashes what the result depends on: the model's state, the data, the masks, ``config``,
    ``schedule``, ``wrt`` and ``forward`` by name, and the source of this module (not of the pipeline modules it
    calls, whose unrelated edits would otherwise retrain every cached model). The cached state is loaded into a copy
    of ``model`` with its masks baked in, whose structure the result shares.

    Args:
      model: as :func:`fine_tune`.
      x: as :func:`fine_tune`.
      y: as :func:`fine_tune`.
      config: as :func:`fine_tune`.
      masks: as :func:`fine_tune`.
      schedule: as :func:`fine_tune`.
      wrt: as :func:`fine_tune`.
      forward: as :func:`fine_tune` (part of the key by its name only).
      progress: as :func:`fine_tune`.

    Returns:
      The fine-tuned model, computed once and then read from the cache.
    """
    digest = hashlib.sha256(repr((config, schedule, _name(wrt), _name(forward))).encode())
    for arrays in (train.model_to_arrays(model), masks or {}, {"x": np.asarray(x), "y": np.asarray(y)}):
        for key in sorted(arrays):
            digest.update(key.encode())
            digest.update(np.ascontiguousarray(arrays[key]).tobytes())
    digest.update(Path(__file__).read_bytes())
    name = f"fine_tuned-{digest.hexdigest()[:16]}"
    stored = cache.load_arrays(name)
    if stored is not None:
        return _load_state(bake_masks(with_masks(model, masks or {})), stored)
    tuned = fine_tune(model, x, y, config, masks=masks, schedule=schedule, wrt=wrt, forward=forward, progress=progress)
    cache.save_arrays(name, train.model_to_arrays(tuned))
    return tuned


def _load_state(model: nnx.Module, arrays: Mapping[str, np.ndarray]) -> nnx.Module:
    """A copy of ``model`` holding the state written by :func:`quantref.train.model_to_arrays` (same structure).

    Raises:
      ValueError: if the keys or shapes differ from the model's.
    """
    clone = nnx.clone(model)
    template = train.model_to_arrays(clone)
    if set(arrays) != set(template) or any(arrays[key].shape != template[key].shape for key in template):
        raise ValueError("the stored state does not match the model's structure")
    state = nnx.state(clone)
    pure = nnx.to_pure_dict(state)
    restored = jax.tree_util.tree_map_with_path(
        lambda path, _: jnp.asarray(arrays["/".join(str(entry.key) for entry in path)]), pure
    )
    nnx.replace_by_pure_dict(state, restored)
    nnx.update(clone, state)
    return clone


# --- sensitivity -------------------------------------------------------------------------------------------------


def sensitivity_scan(
    model: nnx.Module,
    evaluate: Callable[[nnx.Module], float],
    sparsities: Sequence[float],
    *,
    select: str | Sequence[str] | None = None,
    skip: str | Sequence[str] | None = None,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """A metric against sparsity for each layer pruned alone (one-shot magnitude pruning, no fine-tuning).

    Han et al. use this scan to set per-layer sparsities: a layer whose curve stays flat can be pruned hard.

    References:
      Han et al., arXiv:1506.02626, 2015, sec. 4 (fig. 6).

    Args:
      model: any NNX model of conv and dense layers.
      evaluate: ``evaluate(pruned_model)`` returns a number (e.g. test accuracy).
      sparsities: the sparsities to try.
      select: path patterns of the layers to scan.
      skip: path patterns to leave out.
      progress: show a tqdm bar.

    Returns:
      ``{path: array of evaluate(...) per sparsity}``.
    """
    sparsities = [_check_sparsity(value, "sparsities") for value in sparsities]
    layers = nn.find_layers(model, select, skip)
    results = {path: np.zeros(len(sparsities)) for path in layers}
    with tqdm(total=len(layers) * len(sparsities), desc="sensitivity", disable=not progress) as bar:
        for path, layer in layers.items():
            for index, value in enumerate(sparsities):
                pruned = apply_masks(model, {path: magnitude_mask(_kernel(layer), value)})
                results[path][index] = evaluate(pruned)
                bar.update()
    return results


def sparsity(model: nnx.Module) -> dict[str, float]:
    """The fraction of exactly-zero weights in each layer's kernel, $\\#\\{i : w_i = 0\\} / n$.

    Args:
      model: any NNX model of conv and dense layers (a wrapped layer counts its masked kernel $W \\odot M$).

    Returns:
      ``{path: fraction}``.
    """
    return {path: float(jnp.mean(_scores(layer) == 0)) for path, layer in nn.find_layers(model).items()}


# --- helpers -----------------------------------------------------------------------------------------------------


def _check_sparsity(value: object, name: str) -> float:
    value = check_real(value, name)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


def _smallest_zeroed(scores: jax.Array, count: int) -> jax.Array:
    """0 at the ``count`` smallest scores (earlier first among equals), 1 elsewhere; float32."""
    # Ranks, not a slice of the sort order: `count` may change from call to call without a new compilation.
    rank = jnp.argsort(jnp.argsort(scores, stable=True), stable=True)
    return (rank >= count).astype(jnp.float32)


def _kernel(layer: nnx.Module) -> jax.Array:
    return (layer.layer if isinstance(layer, nn.QuantLayer) else layer).kernel[...]


def _scores(layer: nnx.Module) -> jax.Array:
    """$|W \\odot M|$: a wrapped layer's masked weights score zero."""
    kernel = _kernel(layer)
    if isinstance(layer, nn.QuantLayer) and layer.mask is not None:
        kernel = kernel * layer.mask[...]
    return jnp.abs(kernel)


def _masked(kernel: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.where(jnp.asarray(mask) != 0, kernel, jnp.zeros_like(kernel))


def _name(value: Any) -> str:
    return getattr(value, "__qualname__", None) or repr(value)
