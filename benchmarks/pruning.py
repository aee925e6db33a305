"""Pruning's speed and Deep Compression's bytes on the walkthrough CNN, against the unpruned model in the same run.

    python benchmarks/pruning.py [--rounds 40]

Speed: the jit'd forward pass at batch 1024 (and 1) of

- the unpruned model (BatchNorm folded) — the baseline;
- half the channels of conv1 and conv2 removed by L1 norm (:func:`quantref.structured.prune_channels`, which shrinks
  the arrays), fine-tuned and folded;
- 90 % unstructured sparsity and 2:4 sparsity: the same dense shapes with zeros in them;
- the unpruned and the shrunk model again with conv1 run as XLA's own convolution (``lax.conv_general_dilated``)
  instead of the model's nine multiply-adds (:func:`quantref.models.tap_conv`), to show what that choice is worth;

and the same in PyTorch and onnxruntime as peers: ``torch.nn.utils.prune.ln_structured`` on the same channels (it
masks: the weight keeps its shape and a hook multiplies it by the mask before every call), that mask made permanent
with ``prune.remove``, and the network rebuilt by hand at the smaller shapes — the step torch's utilities leave to
the user; onnxruntime runs the float ONNX graphs that :func:`quantref.export.onnx.float_model_proto` writes for the
unpruned and the shrunk model (default session options). The calls are interleaved, round by round in a random
order, so that every path sees the same load; the tables give the median wall-clock and CPU time (all threads of the
process) over ``--rounds`` rounds, the wall minimum, and the speed-ups against the unpruned model of the same
framework. Then each stage of the JAX network alone, unpruned against shrunk, to show where the time goes.

Bytes: the Deep Compression stages (:func:`quantref.compression.deep_compression`), each written with
:func:`quantref.compression.write_compressed` and measured on disk, with the accuracy of the model read back.

No number here is a test assertion: the machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from kernels import interleaved  # benchmarks/kernels.py, beside this script

# The chapter's structured fine-tuning, so that both read the same cache entry.
STRUCTURED = {"amount": 0.5, "steps": 1000, "learning_rate": 3e-3}


def jit_forward(model: nnx.Module, x: jax.Array) -> Callable[[], jax.Array]:
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
    return lambda: forward(state, x)


def with_xla_conv1(model: nnx.Module) -> nnx.Module:
    """A copy whose conv1 runs as ``lax.conv_general_dilated`` instead of :func:`quantref.models.tap_conv`."""
    copy = nnx.clone(model)
    copy.conv1.conv_general_dilated = jax.lax.conv_general_dilated
    return copy


def layer_forwards(model: nnx.Module, x: jax.Array) -> dict[str, Callable[[], jax.Array]]:
    """Each stage of a folded walkthrough CNN alone, jit'd, on the input it sees in the whole network."""
    graphdef, state = nnx.split(model)
    stages = {
        "conv1 + ReLU": lambda m, v: nnx.relu(m.conv1(v)),
        "conv2 + ReLU": lambda m, v: nnx.relu(m.conv2(v)),
        "max-pool + dense": lambda m, v: m.dense(nnx.max_pool(v, (2, 2), strides=(2, 2)).reshape(v.shape[0], -1)),
    }
    forwards = {}
    for name, stage in stages.items():
        compiled = jax.jit(lambda state, v, stage=stage: stage(nnx.merge(graphdef, state), v))
        forwards[name] = (lambda compiled, v: lambda: compiled(state, v))(compiled, x)
        x = stage(model, x)
    return forwards


def torch_cnn(model: nnx.Module):
    """A torch copy of a folded walkthrough CNN (any channel counts): NCHW, the dense rows permuted to CHW order."""
    import torch

    conv1, conv2, dense = (np.asarray(getattr(model, name).kernel[...]) for name in ("conv1", "conv2", "dense"))
    channels = conv2.shape[-1]
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, conv1.shape[-1], 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(conv2.shape[2], channels, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(dense.shape[0], dense.shape[1]),
    )
    rows = np.arange(dense.shape[0]).reshape(4, 4, channels).transpose(2, 0, 1).ravel()  # CHW -> our HWC row
    with torch.no_grad():
        for index, kernel, name in ((0, conv1, "conv1"), (2, conv2, "conv2")):
            net[index].weight.copy_(torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()))
            net[index].bias.copy_(torch.from_numpy(np.asarray(getattr(model, name).bias[...])))
        net[6].weight.copy_(torch.from_numpy(dense[rows].T.copy()))
        net[6].bias.copy_(torch.from_numpy(np.asarray(model.dense.bias[...])))
    return net.eval()


def float_session(model: nnx.Module, x_calib: np.ndarray):
    """An onnxruntime session (default options) on the float ONNX graph quantref exports for a folded model."""
    import onnxruntime

    from quantref import ptq
    from quantref.export import onnx as qexport

    proto = qexport.float_model_proto(model, ptq.quantize_model(model, x_calib))
    return onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def report(times: dict[str, dict[str, list[float]]], baseline: Callable[[str], str]) -> None:
    """One line per path: wall median and minimum, CPU median, and the speed-ups against ``baseline(name)``."""
    print(f"{'path':<44} {'wall ms':>8} {'(min)':>7} {'CPU ms':>7}   {'speed-up: wall':>14} {'CPU':>6}")
    for name, entry in times.items():
        wall, cpu = statistics.median(entry["wall"]), statistics.median(entry["cpu"])
        base = times[baseline(name)]
        print(
            f"{name:<44} {wall * 1e3:>8.3f} {min(entry['wall']) * 1e3:>7.3f} {cpu * 1e3:>7.3f}   "
            f"{statistics.median(base['wall']) / wall:>13.2f}x {statistics.median(base['cpu']) / cpu:>5.2f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()

    import torch
    import torch.nn.utils.prune as prune

    from quantref import compression, data, models, nn, pruning, structured, train

    splits = data.load_splits()
    model = train.load_or_train(progress=False)
    example = splits.x_test[:1]
    folded = nn.fold_batch_norm(model, example)
    small = structured.prune_channels(model, example, STRUCTURED["amount"])
    config = pruning.FineTuneConfig(steps=STRUCTURED["steps"], learning_rate=STRUCTURED["learning_rate"])
    small = nn.fold_batch_norm(pruning.load_or_fine_tune(small, splits.x_train, splits.y_train, config), example)
    sparse = pruning.apply_masks(folded, pruning.magnitude_masks(folded, 0.9))
    two_four = pruning.apply_masks(folded, {p: pruning.n_m_mask(folded.conv2.kernel[...]) for p in ["conv2"]})
    accuracy = {
        "unpruned": models.accuracy(folded, splits.x_test, splits.y_test),
        "channels": models.accuracy(small, splits.x_test, splits.y_test),
    }

    torch_dense = torch_cnn(folded)
    torch_masked = torch_cnn(folded)
    for index in (0, 2):  # L1 over each output channel's weights: the channels prune_channels removes
        prune.ln_structured(torch_masked[index], "weight", amount=STRUCTURED["amount"], n=1, dim=0)
    torch_removed = torch_cnn(folded)
    for index in (0, 2):
        prune.ln_structured(torch_removed[index], "weight", amount=STRUCTURED["amount"], n=1, dim=0)
        prune.remove(torch_removed[index], "weight")
    torch_small = torch_cnn(small)
    kept = np.flatnonzero(torch_masked[0].weight_mask.numpy().reshape(16, -1).any(axis=1))
    expected = structured.channel_keep(folded.conv1.kernel[...], STRUCTURED["amount"], 1)
    assert np.array_equal(kept, expected), "torch and quantref chose different channels"

    ort_sessions = {
        label: float_session(m, splits.x_train[:256])
        for label, m in (("unpruned", folded), ("half the channels (shrunk)", small))
    }

    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} "
        f"({jax.default_backend()}), torch {torch.__version__} ({torch.get_num_threads()} threads); "
        f"medians (and the wall minimum) of {args.rounds} interleaved rounds"
    )
    print(
        f"test accuracy: unpruned {accuracy['unpruned']:.2%}, half the channels (fine-tuned) "
        f"{accuracy['channels']:.2%}: {100 * (accuracy['unpruned'] - accuracy['channels']):+.2f} points drop"
    )
    rng = np.random.default_rng(0)
    for batch in (1024, 1):
        x_np = splits.x_test[rng.integers(0, len(splits.x_test), batch)]
        x, x_torch = jnp.asarray(x_np), torch.from_numpy(x_np.transpose(0, 3, 1, 2).copy())
        jax_paths = {
            "JAX: unpruned": jit_forward(folded, x),
            "JAX: half the channels (shrunk)": jit_forward(small, x),
            "JAX: 90% unstructured zeros": jit_forward(sparse, x),
            "JAX: 2:4 zeros in conv2": jit_forward(two_four, x),
            "JAX, XLA conv1: unpruned": jit_forward(with_xla_conv1(folded), x),
            "JAX, XLA conv1: half the channels (shrunk)": jit_forward(with_xla_conv1(small), x),
        }
        torch_paths = {
            "torch: unpruned": lambda: torch_dense(x_torch),
            "torch: ln_structured mask (hook)": lambda: torch_masked(x_torch),
            "torch: mask removed (zeros)": lambda: torch_removed(x_torch),
            "torch: rebuilt at half the channels": lambda: torch_small(x_torch),
        }
        ort_paths = {
            f"onnxruntime: {label}": (lambda session: lambda: session.run(None, {"x": x_np}))(session)
            for label, session in ort_sessions.items()
        }
        # One framework at a time: torch's idle OpenMP threads spin for a while and would slow whatever JAX runs next.
        times = interleaved(jax_paths, args.rounds)
        with torch.inference_mode():
            times |= interleaved(torch_paths, args.rounds)
        times |= interleaved(ort_paths, args.rounds)
        print(f"\nbatch {batch}")
        report(times, lambda name: name.split(":")[0] + ": unpruned")

    x = jnp.asarray(splits.x_test[rng.integers(0, len(splits.x_test), 1024)])
    big_layers, small_layers = layer_forwards(folded, x), layer_forwards(small, x)
    times = interleaved(
        {f"unpruned {k}": f for k, f in big_layers.items()} | {f"shrunk {k}": f for k, f in small_layers.items()},
        args.rounds,
    )
    print("\nJAX, batch 1024, layer by layer (each stage alone, on the input it sees in the network)")
    report(times, lambda name: name.replace("shrunk", "unpruned"))

    result = compression.deep_compression(model, splits.x_train, splits.y_train, progress=False)
    stages = {
        "float32, dense": (compression.compress(folded, sparse=False), False),
        "pruned (sparse, float32 values)": (compression.compress(result.pruned), False),
        "+ k-means sharing, fine-tuned": (compression.compress(result.tuned), False),
        "+ Huffman coding": (compression.compress(result.tuned), True),
        "+ float16 biases": (result.compressed, True),
    }
    out = tempfile.mkdtemp(prefix="quantref-bench-")
    base_bytes = None
    print(f"\n{'Deep Compression stage':<34} {'bytes':>7} {'ratio':>7} {'test acc':>9}")
    for label, (compressed, huffman) in stages.items():
        path = compression.write_compressed(compressed, out, huffman=huffman, force=True)["model"]
        size = path.stat().st_size
        base_bytes = base_bytes or size
        read_back = compression.load_compressed(compression.read_compressed(path), folded)
        test_accuracy = models.accuracy(read_back, splits.x_test, splits.y_test)
        print(f"{label:<34} {size:>7} {base_bytes / size:>6.1f}x {test_accuracy:>9.2%}")


if __name__ == "__main__":
    main()
