"""One QAT training step against the float training step and against qwix's QAT step, timed in the same run.

    python benchmarks/qat.py [--rounds 40] [--calls 5]

Same model (the walkthrough CNN from ``train.load_or_train``), same batch (64 training images), every step
jit-compiled and run through the same harness, :func:`quantref.parallel.train_step` on one device (forward,
backward, optimizer update):

- **float**: ``model(x, train=True)`` (BatchNorm with batch statistics), AdamW;
- **quantref QAT**, W4A4 and W8A8 (LSQ steps, EMA logit range), in each phase of the schedule — observer warm-up,
  learned steps with BatchNorm folded on batch statistics, BatchNorm frozen — with the optimizer QAT trains with;
- **qwix QAT**: ``qwix.quantize_model(model, qwix.QtProvider([QtRule(weight_qtype="int8", act_qtype="int8")]))``,
  AdamW. This is qwix's *dynamic-range* QAT (activation scales from each batch's absmax): its static-range QAT
  (``act_static_scale=True``) fails under ``nnx.value_and_grad`` on NNX models, and its int4 types fail to compile
  for convolutions on XLA's CPU backend, so the peer is int8 dynamic-range. It is also timed with its usual
  ``nnx.jit`` + ``nnx.Optimizer`` loop.

The variants are timed in interleaved rounds (each round calls every step ``--calls`` times), so that load from
other processes falls on all of them alike; the table gives the median and the minimum over rounds of the time per
step, and the ratios of medians. No number here is a test assertion: the machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx


def _float_loss(model, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(model(x, train=True), y).mean()


def _bound_step(model: nnx.Module, optimizer: optax.GradientTransformation, loss, mesh) -> Callable[[], object]:
    """One training step on a batch, carrying the parameters, state and optimizer state from call to call."""
    from quantref import parallel

    graphdef, params, state = parallel.split_model(model)
    carry = [*jax.tree.map(jnp.copy, (params, state)), optimizer.init(params)]
    step = parallel.train_step(graphdef, optimizer, loss, mesh=mesh)

    def run(x, y):
        carry[0], carry[1], carry[2], loss_value = step(*carry, x, y)
        return loss_value

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--calls", type=int, default=5)
    args = parser.parse_args()

    import qwix

    from quantref import data, parallel, qat, qat_train, train

    splits = data.load_splits()
    model = train.load_or_train(progress=False)
    x, y = jnp.asarray(splits.x_train[:64]), jnp.asarray(splits.y_train[:64])
    mesh = parallel.make_mesh(jax.devices()[:1])
    adamw = optax.adamw(1e-3, weight_decay=1e-4)
    qat_loss = qat_train._loss(qat_train._call)

    steps: dict[str, Callable] = {"float": _bound_step(nnx.clone(model), adamw, _float_loss, mesh)}
    for bits in (4, 8):
        config = qat.QATConfig(weight_bits=bits, activation_bits=bits)
        optimizer = qat_train._optimizer(config, 160)
        qat_model = qat.prepare(model, splits.x_calib, config)
        steps[f"QAT W{bits}A{bits} warm-up"] = _bound_step(qat_model, optimizer, qat_loss, mesh)
        qat.end_warmup(qat_model)
        steps[f"QAT W{bits}A{bits} learned steps, BN live"] = _bound_step(qat_model, optimizer, qat_loss, mesh)
        qat.freeze_batch_norm(qat_model)
        steps[f"QAT W{bits}A{bits} learned steps, BN frozen"] = _bound_step(qat_model, optimizer, qat_loss, mesh)

    rules = [qwix.QtRule(module_path=".*", weight_qtype="int8", act_qtype="int8")]
    qwix_model = qwix.quantize_model(nnx.clone(model), qwix.QtProvider(rules), x)
    steps["qwix QAT int8 (dynamic range)"] = _bound_step(qwix_model, adamw, _float_loss, mesh)

    qwix_nnx = qwix.quantize_model(nnx.clone(model), qwix.QtProvider(rules), x)
    qwix_optimizer = nnx.Optimizer(qwix_nnx, adamw, wrt=nnx.Param)

    @nnx.jit
    def qwix_nnx_step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(_float_loss)(model, x, y)
        optimizer.update(model, grads)
        return loss

    steps["qwix QAT int8, nnx.jit loop"] = lambda x, y: qwix_nnx_step(qwix_nnx, qwix_optimizer, x, y)

    for step in steps.values():  # compile
        jax.block_until_ready(step(x, y))
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(args.calls):
                result = step(x, y)
            jax.block_until_ready(result)
            times[name].append((time.perf_counter() - start) / args.calls)

    median = {name: statistics.median(values) for name, values in times.items()}
    print(
        f"{platform.processor() or platform.machine()}, jax {jax.__version__} ({jax.default_backend()}), "
        f"qwix {getattr(qwix, '__version__', '?')}; {args.rounds} interleaved rounds of {args.calls} calls, batch 64"
    )
    print(f"{'step':<44} {'median ms':>10} {'min ms':>8} {'/ float':>8} {'/ qwix':>8}")
    for name in steps:
        print(
            f"{name:<44} {median[name] * 1e3:>10.2f} {min(times[name]) * 1e3:>8.2f} "
            f"{median[name] / median['float']:>8.2f} {median[name] / median['qwix QAT int8 (dynamic range)']:>8.2f}"
        )
    # The whole schedule of the chapter's runs: warm-up, BatchNorm live until it freezes, frozen until the end.
    config = qat.QATConfig()
    total = config.epochs * (len(splits.x_train) // config.batch_size)
    counts = (config.warmup_steps, config.freeze_bn_step - config.warmup_steps, total - config.freeze_bn_step)
    for bits in (4, 8):
        phases = ("warm-up", "learned steps, BN live", "learned steps, BN frozen")
        weighted = sum(count * median[f"QAT W{bits}A{bits} {phase}"] for count, phase in zip(counts, phases)) / total
        print(
            f"QAT W{bits}A{bits}, mean over the schedule's {total} steps {counts}: {weighted / median['float']:.2f} x "
            f"float, {weighted / median['qwix QAT int8 (dynamic range)']:.2f} x qwix"
        )


if __name__ == "__main__":
    main()
