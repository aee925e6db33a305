"""Integer-only inference against float inference, as ratios timed in the same run.

    python benchmarks/integer.py [--repeats 30]

For batch 1 and batch 1024 of (random-resampled) test images, times:

- quantref's integer-only forward (:func:`quantref.integer.integer_forward`, onnxruntime requantization, jit'd)
  against the folded float forward (the model after :func:`quantref.nn.fold_batch_norm`, jit'd);
- onnxruntime running the exported ``model.onnx`` (int8) against ``float.onnx`` (all graph optimisations, one
  intra-op thread and default threads).

Prints medians and the ratio int/float (below 1 means the integer path is faster). No number here is a test
assertion: the machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from kernels import median_seconds  # benchmarks/kernels.py, beside this script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()

    import onnxruntime as ort
    from flax import nnx

    from quantref import data, integer, nn, ptq, train
    from quantref.export import onnx as export_onnx

    splits = data.load_splits()
    folded = nn.fold_batch_norm(train.load_or_train(progress=False), splits.x_calib[:1])
    qmodel = ptq.quantize_model(folded, splits.x_calib)
    rescale = integer.multipliers(qmodel, "onnxruntime")
    graphdef, state = nnx.split(folded)
    float_forward = jax.jit(lambda x: nnx.merge(graphdef, state)(x))
    integer_forward = jax.jit(lambda x: integer.integer_forward(qmodel, rescale, x).output)
    paths = export_onnx.export_onnx(
        qmodel,
        os.path.join(tempfile.mkdtemp(prefix="quantref-bench-"), "digits"),
        test_x=splits.x_test,
        float_model=folded,
    )

    print(
        f"{platform.processor() or platform.machine()}, jax {jax.__version__} ({jax.default_backend()}), "
        f"onnxruntime {ort.__version__}; medians of {args.repeats} runs"
    )
    print(f"{'path':<34} {'batch':>6} {'float ms':>10} {'int ms':>10} {'int/float':>10}")
    rng = np.random.default_rng(0)
    for batch in (1, 1024):
        x_np = splits.x_test[rng.integers(0, len(splits.x_test), batch)]
        x = jnp.asarray(x_np)
        float_time = median_seconds(lambda: float_forward(x), args.repeats)
        int_time = median_seconds(lambda: integer_forward(x), args.repeats)
        print(
            f"{'JAX jit (integer vs float)':<34} {batch:>6} {float_time * 1e3:>10.3f} {int_time * 1e3:>10.3f} "
            f"{int_time / float_time:>10.2f}"
        )
        for threads in (1, 0):
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            sessions = {
                kind: ort.InferenceSession(str(paths[kind]), options, providers=["CPUExecutionProvider"])
                for kind in ("float", "model")
            }
            times = {
                kind: median_seconds(lambda s=session: s.run(None, {"x": x_np}), args.repeats)
                for kind, session in sessions.items()
            }
            label = f"onnxruntime ({'1 thread' if threads == 1 else 'default threads'})"
            print(
                f"{label:<34} {batch:>6} {times['float'] * 1e3:>10.3f} {times['model'] * 1e3:>10.3f} "
                f"{times['model'] / times['float']:>10.2f}"
            )


if __name__ == "__main__":
    main()
