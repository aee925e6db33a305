"""The oracle's speed: run_model (compiled once, jit'd) against onnxruntime on the same models, timed in one run.

    python benchmarks/run_model.py [--repeats 30]

For the exported walkthrough CNN (``model.onnx``, QOperator: QuantizeLinear, QLinearConv, MaxPool) and the same
float CNN quantized by ``onnxruntime.quantization.quantize_static`` (QDQ, per-channel; run_model fuses its node units
as onnxruntime does), at batch 1 and 1024, times one call of:

- onnxruntime's default session (CPU execution provider, all graph optimisations, default threads);
- :func:`quantref.runtimes.onnx_graph.compile_model`'s compiled model, called with the feeds (feed checks, the jit'd
  graph, outputs back to numpy), compiled once before timing.

The two are timed interleaved (one call of each per round, in a random order) and the medians printed with their ratio
(run_model ÷ onnxruntime; the goal is ≤ 2 at batch 1024), of wall-clock time and of the process's CPU time
(``time.process_time``, all threads: steadier than wall-clock time on a shared machine, though it counts threads
that spin while they wait). Every output is also compared, bit for bit. No number here is a test assertion: the
machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import tempfile

import jax
import numpy as np
from kernels import interleaved  # benchmarks/kernels.py, beside this script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()

    import onnx
    import onnxruntime as ort
    from onnxruntime import quantization

    from quantref import data, nn, ptq, train
    from quantref.export import onnx as export_onnx
    from quantref.runtimes import onnx_graph

    splits = data.load_splits()
    folded = nn.fold_batch_norm(train.load_or_train(progress=False), splits.x_calib[:1])
    qmodel = ptq.quantize_model(folded, splits.x_calib)
    directory = tempfile.mkdtemp(prefix="quantref-bench-")
    paths = export_onnx.export_onnx(qmodel, os.path.join(directory, "digits"), test_x=splits.x_test, float_model=folded)
    qoperator = str(paths["model"])
    float_path, qdq = os.path.join(directory, "float.onnx"), os.path.join(directory, "qdq.onnx")
    onnx.save(export_onnx.float_model_proto(folded, qmodel), float_path)

    class Calibration(quantization.CalibrationDataReader):
        batches = iter([{"x": splits.x_calib[i : i + 50]} for i in range(0, 200, 50)])

        def get_next(self):
            return next(self.batches, None)

    logging.getLogger().setLevel(logging.ERROR)
    quantization.quantize_static(float_path, qdq, Calibration(), per_channel=True)

    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__} "
        f"({jax.default_backend()}), onnxruntime {ort.__version__}; medians of {args.repeats} interleaved runs"
    )
    print(
        f"{'model':<22} {'batch':>6} {'onnxruntime ms':>15} {'run_model ms':>13} {'ratio':>7} {'CPU ratio':>10}  "
        f"bits equal"
    )
    rng = np.random.default_rng(0)
    for name, path in (("exported (QOperator)", qoperator), ("quantize_static (QDQ)", qdq)):
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        compiled = onnx_graph.compile_model(path)
        for batch in (1, 1024):
            x = splits.x_test[rng.integers(0, len(splits.x_test), batch)]
            feeds = {"x": x}
            times = interleaved(
                {"onnxruntime": lambda: session.run(None, feeds), "run_model": lambda: compiled(feeds)}, args.repeats
            )
            medians = {path: statistics.median(entry["wall"]) for path, entry in times.items()}
            cpu = {path: statistics.median(entry["cpu"]) for path, entry in times.items()}
            expected = session.run(None, feeds)[0]
            got = next(iter(compiled(feeds).values()))
            equal = np.array_equal(got.view(np.uint32), expected.view(np.uint32))
            ratio = medians["run_model"] / medians["onnxruntime"]
            cpu_ratio = cpu["run_model"] / cpu["onnxruntime"]
            print(
                f"{name:<22} {batch:>6} {medians['onnxruntime'] * 1e3:>15.3f} {medians['run_model'] * 1e3:>13.3f} "
                f"{ratio:>7.2f} {cpu_ratio:>10.2f}  {equal}"
            )


if __name__ == "__main__":
    main()
