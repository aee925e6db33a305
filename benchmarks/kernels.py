"""Fake-quant throughput, as ratios against baselines timed in the same run.

    python benchmarks/kernels.py [--size 16777216] [--repeats 15]

Times quantref's int8 ``fake_quant`` (per-tensor, and per-channel along axis 0 of a square matrix) on at least
16 M float32 values, and prints, for each, the throughput as a ratio against:

- a jit'd elementwise ``a * x + b`` on the same array (the memory-bound floor any elementwise kernel pays),
- ``torch.fake_quantize_per_tensor_affine`` / ``_per_channel_affine`` (if torch is installed),
- qwix's ``quantize`` then ``dequantize`` with a fixed range (if qwix is installed; per-tensor symmetric int8).

A ratio above 1 means quantref is faster. Medians of ``--repeats`` runs after a warm-up; no number here is a
test assertion, because the machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from quantref import affine, formats


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn()`` after one warm-up call; JAX results are waited for."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved(functions: dict[str, Callable[[], object]], rounds: int) -> dict[str, dict[str, list[float]]]:
    """Seconds per call of each function, wall-clock and CPU (``time.process_time``: every thread of this process).

    Every round calls each function once, in a new random order (so that no path is always the one that runs
    first), after a warm-up. On a loaded machine the wall time includes waiting for a core; the CPU time does not,
    which makes its ratios the steadier measure of how much work each path does.
    """
    for function in functions.values():
        jax.block_until_ready(function())
    times: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in functions}
    order = np.random.default_rng(0)
    for _ in range(rounds):
        for name in order.permutation(list(functions)):
            wall, cpu = time.perf_counter(), time.process_time()
            jax.block_until_ready(functions[name]())
            times[name]["cpu"].append(time.process_time() - cpu)
            times[name]["wall"].append(time.perf_counter() - wall)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1 << 24, help="number of float32 values (default 16 M)")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()

    side = int(np.sqrt(args.size))
    rng = np.random.default_rng(0)
    x_np = rng.standard_normal((side, side), dtype=np.float32)
    x = jnp.asarray(x_np)
    absmax = float(np.abs(x_np).max())
    scale = jnp.float32(absmax / 127)
    channel_scale = jnp.asarray(np.abs(x_np).max(axis=1) / 127, jnp.float32)
    channel_zero_point = jnp.zeros((side,), jnp.int32)

    affine_baseline = jax.jit(lambda v: 1.0009765625 * v + 0.5)
    timings = {
        "baseline a*x+b": median_seconds(lambda: affine_baseline(x), args.repeats),
        "quantref per-tensor": median_seconds(lambda: affine.fake_quant(x, scale, 0, formats.INT8), args.repeats),
        "quantref per-channel": median_seconds(
            lambda: affine.fake_quant(x, channel_scale, channel_zero_point, formats.INT8, axis=0), args.repeats
        ),
    }
    try:
        import torch

        x_torch = torch.from_numpy(x_np)
        scale_torch = torch.from_numpy(np.asarray(channel_scale))
        zero_torch = torch.zeros(side, dtype=torch.int32)
        timings["torch per-tensor"] = median_seconds(
            lambda: torch.fake_quantize_per_tensor_affine(x_torch, float(scale), 0, -128, 127), args.repeats
        )
        timings["torch per-channel"] = median_seconds(
            lambda: torch.fake_quantize_per_channel_affine(x_torch, scale_torch, zero_torch, 0, -128, 127),
            args.repeats,
        )
        torch_info = f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    except ImportError:
        torch_info = "torch not installed"
    try:
        import qwix

        # A fixed range, so qwix does not spend a reduction pass on calibration that quantref was handed.
        method = f"fixed,{-absmax},{absmax}"
        qwix_fake_quant = jax.jit(lambda v: qwix.dequantize(qwix.quantize(v, jnp.int8, calibration_method=method)))
        timings["qwix per-tensor"] = median_seconds(lambda: qwix_fake_quant(x), args.repeats)
        qwix_info = "qwix installed"
    except ImportError:
        qwix_info = "qwix not installed"

    size = side * side
    print(
        f"fake-quant int8 on {size:,} float32 values ({side}x{side}); {platform.processor() or platform.machine()}, "
        f"jax {jax.__version__} on {jax.devices()[0].platform}; {torch_info}; {qwix_info}"
    )
    print(f"{'kernel':<22} {'median ms':>10} {'Gvalues/s':>10}")
    for name, seconds in timings.items():
        print(f"{name:<22} {seconds * 1e3:>10.2f} {size / seconds / 1e9:>10.3f}")
    print("\nthroughput ratios (quantref / other; > 1 means quantref is faster):")
    for granularity in ("per-tensor", "per-channel"):
        ours = timings[f"quantref {granularity}"]
        for other in ("baseline a*x+b", f"torch {granularity}", f"qwix {granularity}"):
            if other in timings:
                print(f"  {granularity:<12} vs {other:<22} {timings[other] / ours:6.2f}")


if __name__ == "__main__":
    main()
