"""LiteRT running the exported int8 ``.tflite`` against the float ``.tflite``, as ratios timed in the same run.

    python benchmarks/tflite.py [--repeats 30] [--threads 1]

Quantizes the walkthrough CNN (int8 activations, per-channel int8 weights), writes ``model.tflite`` and
``float.tflite`` with :func:`quantref.export.tflite.export_tflite`, and for batch 1 and batch 1024 of test images
times ``invoke()`` with each of LiteRT's kernel sets (reference kernels, optimized builtin kernels, the default
XNNPACK delegate). Also prints the two files' sizes and the accuracy of each on the test split.

Prints medians and the ratio int8/float (below 1 means the int8 model is faster). Then the cost of quantref's
prediction of each kernel set: ``integer.integer_forward`` (jit) in each TFLite mode, against the same path in
``"onnxruntime"`` mode (float32 requantization), timed in the same run. No number here is a test assertion: the
machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time

import numpy as np
from kernels import median_seconds  # benchmarks/kernels.py, beside this script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1, help="LiteRT's num_threads")
    args = parser.parse_args()

    import ai_edge_litert
    import jax
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from quantref import data, integer, nn, ptq, train
    from quantref.export import tflite

    splits = data.load_splits()
    folded = nn.fold_batch_norm(train.load_or_train(progress=False), splits.x_calib[:1])
    qmodel = ptq.quantize_model(folded, splits.x_calib, activation_signed=True)
    paths = tflite.export_tflite(
        qmodel, tempfile.mkdtemp(prefix="quantref-bench-"), test_x=splits.x_test, float_model=folded, force=True
    )

    def interpreter(path, kernels: str, batch: int) -> Interpreter:
        resolver = getattr(OpResolverType, tflite.RESOLVERS[kernels])
        runner = Interpreter(model_path=str(path), experimental_op_resolver_type=resolver, num_threads=args.threads)
        runner.resize_tensor_input(runner.get_input_details()[0]["index"], [batch, 8, 8, 1])
        runner.allocate_tensors()
        return runner

    def accuracy(path) -> float:
        runner = interpreter(path, "xnnpack", len(splits.x_test))
        runner.set_tensor(runner.get_input_details()[0]["index"], splits.x_test)
        runner.invoke()
        logits = runner.get_tensor(runner.get_output_details()[0]["index"])
        return float(np.mean(logits.argmax(axis=1) == splits.y_test))

    version = getattr(ai_edge_litert, "__version__", "?")
    print(f"{platform.processor() or platform.machine()}, ai-edge-litert {version}, {args.threads} thread(s)")
    for name in ("model", "float"):
        print(f"{paths[name].name:<14} {paths[name].stat().st_size:>8} bytes   accuracy {accuracy(paths[name]):.4f}")
    print(f"medians of {args.repeats} runs")
    print(f"{'kernels':<12} {'batch':>6} {'float ms':>10} {'int8 ms':>10} {'int8/float':>11}")
    rng = np.random.default_rng(0)
    for batch in (1, 1024):
        x = splits.x_test[rng.integers(0, len(splits.x_test), batch)]
        for kernels in tflite.KERNELS:
            times = {}
            for name in ("float", "model"):
                runner = interpreter(paths[name], kernels, batch)
                runner.set_tensor(runner.get_input_details()[0]["index"], x)
                times[name] = median_seconds(runner.invoke, args.repeats)
            float_ms, int8_ms = times["float"] * 1e3, times["model"] * 1e3
            print(f"{kernels:<12} {batch:>6} {float_ms:>10.3f} {int8_ms:>10.3f} {int8_ms / float_ms:>11.2f}")
    print("quantref's prediction (integer_forward, jit), batch 1024, against its onnxruntime mode (interleaved)")
    x = splits.x_test[rng.integers(0, len(splits.x_test), 1024)]
    forwards = {}
    for mode in ("onnxruntime", *tflite.MODES.values()):
        rescale = integer.multipliers(qmodel, mode)
        forwards[mode] = jax.jit(lambda x, rescale=rescale: integer.integer_forward(qmodel, rescale, x).output)
        forwards[mode](x).block_until_ready()
    samples = {mode: [] for mode in forwards}
    for _ in range(args.repeats):  # one call of each mode per round: the same load for all
        for mode, forward in forwards.items():
            start = time.perf_counter()
            forward(x).block_until_ready()
            samples[mode].append(time.perf_counter() - start)
    medians = {mode: float(np.median(times)) * 1e3 for mode, times in samples.items()}
    for mode, ms in medians.items():
        print(f"{mode:<18} {ms:>8.3f} ms {ms / medians['onnxruntime']:>6.2f}")


if __name__ == "__main__":
    main()
