"""Data-parallel training and calibration of any NNX model with ``jax.sharding``: one code path for 1 device, 8, or
a pod.

The global batch is split into ``shards`` equal parts. Each shard runs the model forward and backward on its own
(BatchNorm and observers see that shard only, as in PyTorch's DistributedDataParallel), and the shards' results
are combined in a fixed order:

$$
\\bar g = \\frac{1}{S} \\Big( \\big( (g_1 + g_2) + g_3 \\big) + \\dots + g_S \\Big), \\qquad
m^{min} = \\min_i m_i^{min}, \\qquad m^{max} = \\max_i m_i^{max},
$$

for gradients and the loss (and BatchNorm's running statistics, averaged the same way), and observed minima and
maxima. The devices only decide *where* the shards run: a mesh of $D$ devices (``D`` must divide ``S``) puts
$S/D$ shards on each, the batch sharded along the mesh's ``"data"`` axis and the parameters replicated; the shards
run in $S/D$ rounds of one compiled program, each device computing one shard per round. A shard's arithmetic is
therefore the same program on any number of devices, and the combination is a fixed fold, so the trained parameters
depend on ``(batch, shards)`` and never on the number of devices: 8 devices give bit for bit what 1 device gives
(tested on 8 simulated CPU devices). Both halves matter. A plain ``jit`` over a sharded batch (GSPMD) lets XLA choose
the reduction tree, which changes with the device count; and even computing the shards in one program would not
do, because XLA's CPU backend contracts $ab + c$ into a fused multiply-add, and lays out a product's operands,
according to the program around them, which moves results by a rounding.

The same code runs

- on one CPU or accelerator: ``make_mesh()`` over ``jax.devices()``;
- on 8 simulated CPU devices: set ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` *before* JAX starts;
- on several GPUs or a TPU slice: ``make_mesh()`` over all local devices;
- on several hosts: call ``jax.distributed.initialize()`` in every process first (coordinator address, process
  count and id come from the cluster's environment on Cloud TPU and SLURM), build the mesh over ``jax.devices()``
  (all hosts' devices), and give :func:`shard_batch` each process's own rows: it assembles the global array with
  ``jax.make_array_from_process_local_data``. Every process runs the same program; the collectives cross hosts.

References:
  Li et al., "PyTorch Distributed: Experiences on Accelerating Data Parallel Training", arXiv:2006.15704, 2020.
  JAX documentation, "Distributed arrays and automatic parallelization" and "Manual parallelism with shard_map".
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "AXIS",
    "MinStat",
    "MaxStat",
    "make_mesh",
    "shard_batch",
    "replicate",
    "split_model",
    "merge_model",
    "train_step",
    "observe_step",
]

#: The mesh axis that the batch is sharded along.
AXIS = "data"


class MinStat(nnx.BatchStat):
    """A running statistic that shards combine by their minimum (an observer's low end)."""


class MaxStat(nnx.BatchStat):
    """A running statistic that shards combine by their maximum (an observer's high end)."""


# How each kind of non-trainable state is combined across shards; the order is the order of nnx.split's filters
# (MinStat and MaxStat before BatchStat, their base class). Anything else is a constant and is taken from shard 0.
_STATE_KINDS = (MinStat, MaxStat, nnx.BatchStat, ...)
_COMBINE = {
    MinStat: lambda stacked: jnp.min(stacked, axis=0),
    MaxStat: lambda stacked: jnp.max(stacked, axis=0),
    nnx.BatchStat: lambda stacked: _fold_mean(stacked),
    ...: lambda stacked: stacked[0],
}


def _fold_mean(stacked: jax.Array) -> jax.Array:
    """$((x_1 + x_2) + \\dots + x_S) / S$ along axis 0, always in this order (a fixed fold, not a reduction tree)."""
    total = stacked[0]
    for index in range(1, stacked.shape[0]):
        total = total + stacked[index]
    return total / stacked.shape[0]


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis device mesh (axis ``"data"``) for data parallelism.

    Args:
      devices: the devices, in order; ``None`` takes ``jax.devices()`` (every host's, after
        ``jax.distributed.initialize()``).

    Returns:
      The ``jax.sharding.Mesh``.

    Raises:
      ValueError: if ``devices`` is empty.
    """
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices must hold at least one device")
    return Mesh(np.array(devices), (AXIS,))


def shard_batch(mesh: Mesh, *arrays: np.ndarray | jax.Array) -> tuple[jax.Array, ...]:
    """Places batches on the mesh, split along the first axis (``PartitionSpec("data")``).

    On one host each array is the global batch. With several processes (``jax.process_count() > 1``) each array is
    this process's rows, and the global batch is their concatenation in process order
    (``jax.make_array_from_process_local_data``).

    Args:
      mesh: from :func:`make_mesh`.
      *arrays: batches whose first axis the mesh's device count divides.

    Returns:
      The sharded ``jax.Array`` s.

    Raises:
      ValueError: if the device count does not divide an array's first axis.
    """
    sharding = NamedSharding(mesh, PartitionSpec(AXIS))
    local_devices = sum(device.process_index == jax.process_index() for device in mesh.devices.flat)
    placed = []
    for array in arrays:
        if np.ndim(array) == 0 or np.shape(array)[0] % local_devices:
            raise ValueError(
                f"each batch's first axis must be a multiple of this process's {local_devices} devices, got shape "
                f"{np.shape(array)}"
            )
        if jax.process_count() > 1:
            placed.append(jax.make_array_from_process_local_data(sharding, np.asarray(array)))
        else:
            placed.append(jax.device_put(jnp.asarray(array), sharding))
    return tuple(placed)


def replicate(mesh: Mesh, tree: Any) -> Any:
    """Places every leaf of a pytree on every device of the mesh (``PartitionSpec()``)."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State, tuple[nnx.State, ...]]:
    """Splits a model into its structure, its trainable parameters and its other state, grouped by how shards combine
    them (:class:`MinStat`, :class:`MaxStat`, other ``nnx.BatchStat``, constants).

    Returns:
      ``(graphdef, params, state)``; :func:`merge_model` inverts it.
    """
    graphdef, params, *state = nnx.split(model, nnx.Param, *_STATE_KINDS)
    return graphdef, params, tuple(state)


def merge_model(graphdef: nnx.GraphDef, params: nnx.State, state: tuple[nnx.State, ...]) -> nnx.Module:
    """The model of :func:`split_model`'s parts (new variables, so that it can be mutated under a transformation)."""
    return nnx.merge(graphdef, params, *state, copy=True)


LossFn = Callable[[nnx.Module, jax.Array, jax.Array], jax.Array]


def train_step(
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    loss_fn: LossFn,
    *,
    mesh: Mesh,
    shards: int = 1,
) -> Callable:
    """A data-parallel training step: per-shard loss and gradients, a fixed-order combination, one optimizer update.

    $$
    \\theta \\leftarrow \\theta + \\text{optimizer}\\Big(\\frac{1}{S}\\sum_{i=1}^{S} \\nabla_\\theta\\,
    \\ell(\\theta;\\ x_i, y_i)\\Big)
    $$

    with the sum folded in shard order (see the module docstring) and the model's non-trainable state (BatchNorm
    statistics, observers) updated by each shard and combined by kind. With one shard on one device the step is one
    jit-compiled program; otherwise it runs $S/D$ rounds of one compiled per-shard program (each device computing
    one shard per round, ``shard_map`` over the mesh), then one compiled program that combines and updates.
    Keeping a shard's computation a program of its own is what makes its bits independent of the device count:
    XLA's CPU backend fuses multiply-adds into FMAs, and lays out a product's operands, according to the program
    around them.

    Args:
      graphdef: the model's structure, from :func:`split_model` (its static attributes — training mode, frozen
        BatchNorm — are part of it: a new mode is a new step).
      optimizer: an optax transformation over the parameters.
      loss_fn: ``loss_fn(model, x, y)``: the mean loss over one shard's examples; it may update the model's
        non-trainable state (as ``nnx.BatchNorm`` in training mode does).
      mesh: from :func:`make_mesh`.
      shards: ``S``, the number of parts the batch is split into; a multiple of the mesh's device count.

    Returns:
      ``step(params, state, opt_state, x, y) -> (params, state, opt_state, loss)``; ``x`` and ``y`` are the global
      batch (sharded by :func:`shard_batch`, or not), whose size ``S`` divides. The step may consume (donate) the
      buffers of ``params``, ``state`` and ``opt_state``: use the ones it returns.

    Raises:
      ValueError: if ``shards`` is not a positive multiple of the device count.
    """
    _check_shards(shards, mesh)

    def shard_grads(params, state, x, y):
        def loss_and_state(params):
            model = merge_model(graphdef, params, state)
            loss = loss_fn(model, x, y)
            return loss, split_model(model)[2]

        (loss, new_state), grads = jax.value_and_grad(loss_and_state, has_aux=True)(params)
        return loss, grads, new_state

    def update(params, opt_state, loss, grads, state):
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), state, opt_state, loss

    if shards == 1 and mesh.devices.size == 1:
        # The step's inputs are its outputs' buffers (donated): no copies of unchanged state, updates in place.
        @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
        def step(params, state, opt_state, x, y):
            loss, grads, state = shard_grads(params, state, x, y)
            return update(params, opt_state, loss, grads, state)

        return step

    run_shards = _rounds(shard_grads, mesh, shards)

    @jax.jit
    def combine_and_update(params, opt_state, stacked):
        loss, grads, state = stacked
        grads = jax.tree.map(_fold_mean, grads)
        return update(params, opt_state, _fold_mean(loss), grads, _combine_state(state))

    def step(params, state, opt_state, x, y):
        return combine_and_update(params, opt_state, run_shards(params, state, x, y))

    return step


def observe_step(graphdef: nnx.GraphDef, forward: Callable, *, mesh: Mesh, shards: int = 1) -> Callable:
    """A data-parallel forward pass that only updates the model's statistics (calibration).

    Each shard runs ``forward(model, x)`` on its part of the batch, which updates observers (and BatchNorm running
    statistics, in training mode); the shards' statistics are combined as in :func:`train_step` — minima by
    minimum, maxima by maximum, so a min-max calibration is exact however the batch is split.

    Args:
      graphdef: the model's structure, from :func:`split_model`.
      forward: ``forward(model, x)``.
      mesh: from :func:`make_mesh`.
      shards: the number of parts the batch is split into; a multiple of the mesh's device count.

    Returns:
      ``observe(params, state, x) -> state``.
    """
    _check_shards(shards, mesh)

    def shard_state(params, state, x, y):
        model = merge_model(graphdef, params, state)
        forward(model, x)
        return split_model(model)[2]

    run_shards = _rounds(shard_state, mesh, shards)
    combine = jax.jit(_combine_state)

    def observe(params, state, x):
        return combine(run_shards(params, state, x, np.zeros((x.shape[0],), np.int32)))

    return observe


# --- helpers -------------------------------------------------------------------------------------------------------


def _combine_state(stacked_state: tuple[nnx.State, ...]) -> tuple[nnx.State, ...]:
    return tuple(jax.tree.map(_COMBINE[kind], part) for kind, part in zip(_STATE_KINDS, stacked_state))


def _rounds(shard_fn: Callable, mesh: Mesh, shards: int) -> Callable:
    """``shard_fn(params, state, x_i, y_i)`` for every shard ``i``, stacked in shard order along a new first axis.

    Device ``d`` holds shards ``d k, ..., d k + k - 1`` (``k = S / D``) of a batch sharded along ``"data"``; round
    ``r`` runs one compiled program in which every device computes its shard ``d k + r``, so each shard's arithmetic
    is the same program whatever the device count.
    """
    devices = mesh.devices.size
    per_device = shards // devices
    batch_sharding = NamedSharding(mesh, PartitionSpec(AXIS))
    replicated = NamedSharding(mesh, PartitionSpec())

    one_shard = jax.jit(
        jax.shard_map(
            lambda params, state, x, y: jax.tree.map(lambda leaf: leaf[None], shard_fn(params, state, x, y)),
            mesh=mesh,
            in_specs=(PartitionSpec(), PartitionSpec(), PartitionSpec(AXIS), PartitionSpec(AXIS)),
            out_specs=PartitionSpec(AXIS),
            check_vma=False,  # each device's gradients are its shard's own, stacked, never summed here
        )
    )

    @functools.partial(jax.jit, out_shardings=batch_sharding)
    def round_inputs(values: jax.Array) -> tuple[jax.Array, ...]:
        grouped = values.reshape(devices, per_device, -1, *values.shape[1:])
        return tuple(grouped[:, index].reshape(-1, *values.shape[1:]) for index in range(per_device))

    @functools.partial(jax.jit, out_shardings=replicated)
    def in_shard_order(*results):
        # (rounds, devices, ...) -> shard index d k + r.
        stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves, axis=1), *results)
        return jax.tree.map(lambda leaf: leaf.reshape(shards, *leaf.shape[2:]), stacked)

    def run(params, state, x, y):
        if x.shape[0] % shards:
            raise ValueError(f"the batch size {x.shape[0]} must be a multiple of shards={shards}")
        x_rounds, y_rounds = round_inputs(x), round_inputs(y)
        results = [one_shard(params, state, x_round, y_round) for x_round, y_round in zip(x_rounds, y_rounds)]
        return in_shard_order(*results)

    return run


def _check_shards(shards: int, mesh: Mesh) -> None:
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh (parallel.make_mesh()), got {type(mesh).__name__}")
    devices = mesh.devices.size
    if isinstance(shards, bool) or not isinstance(shards, (int, np.integer)) or shards < 1 or shards % devices:
        raise ValueError(f"shards must be a positive multiple of the mesh's {devices} devices, got {shards!r}")
