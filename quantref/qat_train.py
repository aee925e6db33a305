"""QAT training with optax: deterministic from a seed, data-parallel on any mesh, cached on disk by its config.

:func:`train` runs the QAT recipe of :mod:`quantref.qat` on a trained float model — observer warm-up, then learned
scales, then frozen BatchNorm statistics — with AdamW and a cosine schedule, one jit-compiled
:func:`quantref.parallel.train_step` per phase, and a tqdm progress bar. :func:`load_or_train` is what chapters
call: it returns the QAT-trained walkthrough CNN for a :class:`quantref.qat.QATConfig` from the cache (see
:mod:`quantref.cache`), or trains it (seconds on a CPU) and caches it, keyed by the config, the seed, the float
model's own cache entry and the source of the QAT modules.

Determinism: batches are drawn by ``numpy.random.default_rng((seed, epoch))``, as in :mod:`quantref.train`; nothing
else is random. On one machine and JAX version the same config and seed give bitwise-identical parameters, in any
process and on any number of devices (:mod:`quantref.parallel` explains the latter).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh
from tqdm import tqdm

from quantref import cache, data, parallel, ptq, qat, train

__all__ = ["train_qat", "predict", "cache_name", "load_or_train", "model_to_arrays", "model_from_arrays"]


def _call(model: nnx.Module, x: jax.Array) -> Any:
    return model(x)


def _loss(forward: Callable) -> Callable:
    def loss(model: nnx.Module, x: jax.Array, y: jax.Array) -> jax.Array:
        return optax.softmax_cross_entropy_with_integer_labels(forward(model, x), y).mean()

    return loss


def _optimizer(config: qat.QATConfig, total_steps: int) -> optax.GradientTransformation:
    """AdamW, with decay on kernels only and *relative* updates for step sizes and clipping levels.

    Adam divides each gradient by its running RMS, so LSQ's gradient scale $g$ cancels, and an update of size
    $\\eta$ would be huge for an 8-bit weight step ($s \\approx 10^{-3}$) and tiny for a logit step. Multiplying a
    step's Adam update by $|s|$ restores what $g$ does under SGD: each step size moves by about $\\eta$ of itself.
    """
    schedule = optax.cosine_decay_schedule(config.learning_rate, decay_steps=total_steps)
    return optax.chain(
        optax.flatten(optax.scale_by_adam()),  # one vector, one fused update, instead of one per parameter array
        _times_magnitude(),
        optax.add_decayed_weights(config.weight_decay, mask=_kernels),
        optax.scale_by_learning_rate(schedule),
    )


def _names(path: tuple) -> list[str]:
    return [str(entry.key) for entry in path if hasattr(entry, "key")]


def _is_step_size(path: tuple) -> bool:
    names = _names(path)
    return len(names) > 1 and names[-1] in ("scale", "alpha") and names[-2].endswith("quantizer")


def _kernels(params: Any) -> Any:
    return jax.tree_util.tree_map_with_path(lambda path, _: _names(path)[-1] == "kernel", params)


def _times_magnitude() -> optax.GradientTransformation:
    def update(updates, state, params):
        def scale(path, update, param):
            return update * jnp.abs(param) if _is_step_size(path) else update

        return jax.tree_util.tree_map_with_path(scale, updates, params), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def train_qat(
    model: nnx.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    calibration_x: np.ndarray,
    config: qat.QATConfig = qat.QATConfig(),
    seed: int = 0,
    mesh: Mesh | None = None,
    eval_x: np.ndarray | None = None,
    eval_y: np.ndarray | None = None,
    forward: Callable = _call,
    progress: bool = True,
) -> tuple[nnx.Module, dict[str, np.ndarray]]:
    """Quantization-aware training of a trained float model.

    The schedule, in optimizer steps $t$: for $t <$ ``warmup_steps`` the activation quantizers observe (EMA
    ranges, no learned scales); then :func:`quantref.qat.end_warmup` sets the learned steps from those ranges; from
    $t =$ ``freeze_bn_step`` the folded BatchNorms use their running statistics
    (:func:`quantref.qat.freeze_batch_norm`). Weights, steps, clipping levels and BatchNorm's $\\gamma, \\beta$
    train together with AdamW; the loss is the mean cross-entropy.

    Args:
      model: the trained float model (BatchNorms not folded).
      x: training inputs ``(N, ...)``, ``N >= config.batch_size``.
      y: integer labels ``(N,)``.
      calibration_x: inputs for the initial ranges (:func:`quantref.qat.prepare`).
      config: the :class:`quantref.qat.QATConfig`.
      seed: seed of the batch order.
      mesh: the devices (:func:`quantref.parallel.make_mesh`); ``None`` uses one device. ``config.shards`` must be a
        multiple of its size.
      eval_x: inputs to measure accuracy on after each epoch (not the test split), or ``None``.
      eval_y: their labels.
      forward: how to call the model, ``forward(model, x)``.
      progress: show a tqdm progress bar on stderr.

    Returns:
      ``(qat_model, history)``: the trained QAT model (eval mode) and ``{"loss": (steps,), "eval_accuracy":
      (epochs,)}`` (the latter empty without ``eval_x``).

    Raises:
      ValueError: for a bad config, fewer than ``batch_size`` examples, or shards the mesh does not divide.
    """
    qat_model = qat.prepare(model, calibration_x, config, forward=forward)
    steps_per_epoch = len(x) // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"need at least batch_size={config.batch_size} examples, got {len(x)}")
    total_steps = config.epochs * steps_per_epoch
    mesh = parallel.make_mesh(jax.devices()[:1]) if mesh is None else mesh
    graphdef, params, state = parallel.split_model(qat_model)
    optimizer = _optimizer(config, total_steps)
    # Copies: the steps consume their inputs' buffers, which the float model (a clone shares them) still uses.
    params, state = parallel.replicate(mesh, jax.tree.map(jnp.copy, (params, state)))
    opt_state = parallel.replicate(mesh, optimizer.init(params))
    losses, accuracies = [], []
    step_index = 0
    with tqdm(total=total_steps, desc=f"QAT {_label(config)}", unit="step", disable=not progress) as bar:
        for epoch in range(config.epochs):
            for x_batch, y_batch in data.batches(x, y, config.batch_size, seed=(seed, epoch)):
                graphdef, params, state = _phase(graphdef, params, state, step_index, config)
                step = _train_step(graphdef, config, total_steps, mesh, forward)
                x_batch, y_batch = parallel.shard_batch(mesh, x_batch, y_batch)
                params, state, opt_state, loss = step(params, state, opt_state, x_batch, y_batch)
                losses.append(loss)
                step_index += 1
                bar.update()
            message = {"epoch": epoch + 1, "loss": f"{float(loss):.4f}"}  # reading the loss waits for the device
            if eval_x is not None:
                logits = predict(parallel.merge_model(graphdef, params, state), eval_x, forward=forward)
                accuracies.append(ptq.accuracy(logits, eval_y))
                message["eval"] = f"{accuracies[-1]:.2%}"
            bar.set_postfix(message)
    qat_model = parallel.merge_model(graphdef, params, state)
    qat_model.eval()
    history = {"loss": np.asarray(jnp.stack(losses)), "eval_accuracy": np.asarray(accuracies, np.float64)}
    return qat_model, history


# One compiled step per model structure, schedule and mesh, shared by every run of a process (seeds, retraining).
@functools.lru_cache(maxsize=32)
def _train_step(graphdef: nnx.GraphDef, config: qat.QATConfig, total_steps: int, mesh: Mesh, forward: Callable):
    optimizer = _optimizer(config, total_steps)
    return parallel.train_step(graphdef, optimizer, _loss(forward), mesh=mesh, shards=config.shards)


def _switches(step: int, config: qat.QATConfig) -> list[Callable[[nnx.Module], None]]:
    """The schedule's switches that take effect before optimizer step ``step``."""
    switches = []
    if step == config.warmup_steps and config.warmup_steps > 0:
        switches.append(qat.end_warmup)
    if step == config.freeze_bn_step:
        switches.append(qat.freeze_batch_norm)
    return switches


def _phase(graphdef, params, state, step: int, config: qat.QATConfig):
    """The model's parts with the schedule's switches applied at ``step`` (unchanged between switches)."""
    switches = _switches(step, config)
    if not switches:
        return graphdef, params, state
    model = parallel.merge_model(graphdef, params, state)
    for switch in switches:
        switch(model)
    return parallel.split_model(model)


def _label(config: qat.QATConfig) -> str:
    return f"W{config.weight_bits}A{config.activation_bits}"


def predict(model: nnx.Module, x: np.ndarray | jax.Array, *, forward: Callable = _call) -> np.ndarray:
    """The model's output on ``x`` in eval mode (jit-compiled; the model is not changed).

    Args:
      model: a QAT model (or any NNX model).
      x: inputs.
      forward: how to call the model.

    Returns:
      The output as a numpy array.
    """
    model = nnx.clone(model)
    model.eval()
    graphdef, state = nnx.split(model)
    return np.asarray(_jit_forward(graphdef, forward)(state, jnp.asarray(x)))


@functools.cache
def _jit_forward(graphdef: nnx.GraphDef, forward: Callable) -> Callable:
    return jax.jit(lambda state, x: forward(nnx.merge(graphdef, state), x))


# --- the cache ------------------------------------------------------------------------------------------------------


def _key(path: tuple) -> str:
    return "/".join(str(getattr(entry, "key", getattr(entry, "idx", entry))) for entry in path)


def model_to_arrays(model: nnx.Module) -> dict[str, np.ndarray]:
    """The model's state (parameters, statistics, observers) as named numpy arrays (``"conv1/weight_quantizer/
    scale"``)."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(nnx.state(model)))
    return {_key(path): np.asarray(leaf) for path, leaf in leaves}


def model_from_arrays(model: nnx.Module, arrays: Mapping[str, np.ndarray]) -> nnx.Module:
    """Loads :func:`model_to_arrays`'s arrays into ``model`` (a QAT model of the same structure), in place.

    Raises:
      ValueError: if the keys or shapes differ from the model's.
    """
    template = model_to_arrays(model)
    if set(arrays) != set(template) or any(arrays[k].shape != v.shape for k, v in template.items()):
        raise ValueError("the stored state does not match the model's structure")
    state = nnx.state(model)
    restored = jax.tree_util.tree_map_with_path(
        lambda path, leaf: jnp.asarray(arrays[_key(path)], leaf.dtype), nnx.to_pure_dict(state)
    )
    nnx.replace_by_pure_dict(state, restored)
    nnx.update(model, state)
    return model


def cache_name(config: qat.QATConfig, seed: int = 0) -> str:
    """The cache entry of the QAT model :func:`load_or_train` trains: ``"qat-W4A4-seed0-<hash>"``, the hash over
    ``repr(config)``, the float model's entry and the source of ``quantref.qat``, ``quantref.parallel`` and this
    module."""
    digest = hashlib.sha256(repr(config).encode())
    digest.update(train.cache_name(0, train.TrainConfig()).encode())
    for module in (qat, parallel):
        digest.update(Path(module.__file__).read_bytes())
    digest.update(Path(__file__).read_bytes())
    return f"qat-{_label(config)}-seed{seed}-{digest.hexdigest()[:16]}"


def load_or_train(
    config: qat.QATConfig = qat.QATConfig(), seed: int = 0, progress: bool = True
) -> tuple[nnx.Module, dict[str, np.ndarray]]:
    """The walkthrough CNN, QAT-trained with ``config`` on ``data.load_splits()``'s train split, from the cache if
    present.

    Starts from :func:`quantref.train.load_or_train`'s float model; the initial ranges come from the calibration
    split, and the history's accuracy is measured on it (never on the test split).

    Args:
      config: the :class:`quantref.qat.QATConfig`.
      seed: the batch-order seed.
      progress: show a progress bar if it trains.

    Returns:
      ``(qat_model, history)`` as :func:`train_qat` returns them.
    """
    name = cache_name(config, seed)
    splits = data.load_splits()
    arrays = cache.load_arrays(name)
    if arrays is not None:
        model = nnx.clone(_trained_structure(config, len(splits.x_train)))
        history = {key.removeprefix("history/"): value for key, value in arrays.items() if key.startswith("history/")}
        state = {key: value for key, value in arrays.items() if not key.startswith("history/")}
        return model_from_arrays(model, state), history
    model, history = train_qat(
        train.load_or_train(progress=progress),
        splits.x_train,
        splits.y_train,
        calibration_x=splits.x_calib,
        config=config,
        seed=seed,
        eval_x=splits.x_calib,
        eval_y=splits.y_calib,
        progress=progress,
    )
    cache.save_arrays(name, {**model_to_arrays(model), **{f"history/{k}": v for k, v in history.items()}})
    return model, history


@functools.lru_cache(maxsize=8)
def _trained_structure(config: qat.QATConfig, examples: int) -> nnx.Module:
    """A QAT model with the structure (and static switches) of one trained with ``config``, to load state into."""
    splits = data.load_splits()
    model = qat.prepare(train.load_or_train(progress=False), splits.x_calib, config)
    for step in range(config.epochs * (examples // config.batch_size)):
        for switch in _switches(step, config):
            switch(model)
    model.eval()
    return model
