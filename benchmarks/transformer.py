"""Weight-only quantization of chapter 8's transformer, quantref against qwix, timed in the same run.

    python benchmarks/transformer.py [--bits 4 3] [--train]

On the cached character model (:func:`quantref.transformer.load_or_train`), the same 32 calibration windows and
the same grid (full signed int4/int3, groups of 128 rows), for round-to-nearest, GPTQ and AWQ:

- quantref: :func:`quantref.weight_only.rtn_weights`, :func:`quantref.weight_only.gptq_weights` (sequential, with
  and without act-order), :func:`quantref.scaling.awq`;
- qwix: ``PtqProvider``, ``contrib.gptq`` (one calibration pass on the float model, no act-order) and
  ``contrib.awq``.

Prints bits per character on chapter 8's test windows and the seconds of each quantization (calibration
included, evaluation not; the arrays waited for): the first call (compilation included) and a second, warm call.
quantref's AWQ runs with its defaults (``clip=True``: the weight-clipping search of the reference implementation,
which qwix 0.1.8 does not have). ``--train`` also trains the model from scratch and prints the
wall-clock and CPU (user + system) seconds. No number here is a test assertion: the machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jax
import jax.numpy as jnp
from flax import nnx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, nargs="+", default=[4, 3], choices=[3, 4])
    parser.add_argument("--train", action="store_true", help="also time training from scratch (about 3 CPU-minutes)")
    args = parser.parse_args()

    import qwix
    from qwix.contrib import awq as qwix_awq
    from qwix.contrib import gptq as qwix_gptq

    from quantref import formats, scaling, text, transformer, weight_only

    corpus = text.load_corpus()
    if args.train:
        wall, cpu = time.perf_counter(), _cpu_seconds()
        transformer.train(corpus, progress=False)
        print(f"training from scratch: {time.perf_counter() - wall:.0f} s wall, {_cpu_seconds() - cpu:.0f} s CPU")
    model = transformer.load_or_train()
    config = model.config
    test_windows = text.windows(corpus.test, config.context, 64)
    calibration = [text.random_windows(corpus.train, config.context, 32, seed=1)[:, :-1]]
    pairs = transformer.scaling_pairs(config)
    rule_path = r"blocks/\d+/(attn|mlp)/\w+"
    example = jnp.asarray(calibration[0])
    qwix_types = {4: jnp.int4, 3: "int3"}

    # Each run quantizes, waits for the arrays, and returns the evaluation to run outside the timer.
    def evaluate(base, weights):
        weights = jax.block_until_ready(weights)
        return lambda: transformer.bits_per_char(weight_only.dequantized_model(base, weights), test_windows)

    def evaluate_qwix(quantized):
        jax.block_until_ready(nnx.state(quantized))
        return lambda: transformer.bits_per_char(quantized, test_windows)

    def quantref_rtn(bits):
        return evaluate(model, weight_only.rtn_weights(model, formats.int_format(bits), 128, skip="head"))

    def quantref_gptq(bits, act_order):
        grid = formats.int_format(bits)
        return evaluate(
            model, weight_only.gptq_weights(model, calibration, grid, 128, act_order=act_order, skip="head")
        )

    def quantref_awq(bits):
        statistics = scaling.input_statistics(model, calibration)
        scaled, weights, _ = scaling.awq(model, statistics, pairs, formats.int_format(bits), 128, skip="head")
        return evaluate(scaled, weights)

    def qwix_rtn(bits):
        rules = [qwix.QtRule(module_path=rule_path, weight_qtype=qwix_types[bits], tile_size=128)]
        return evaluate_qwix(qwix.quantize_model(model, qwix.PtqProvider(rules), example))

    def qwix_calibrated(bits, library, rule, calibration_provider, inference_provider):
        rules = [rule(module_path=rule_path, weight_qtype=qwix_types[bits], tile_size=128)]
        calibrating = qwix.quantize_model(model, calibration_provider(rules), example)
        for batch in calibration:
            calibrating(jnp.asarray(batch))
        quantized = qwix.quantize_model(model, inference_provider(rules), example)
        params = nnx.to_pure_dict(nnx.state(calibrating, nnx.Param))
        stats = nnx.to_pure_dict(nnx.state(calibrating, qwix.QuantStat))
        _install(quantized, library.quantize_params(params, quantized, stats), qwix_awq.WithAwqScale)
        return evaluate_qwix(quantized)

    runs = {
        "RTN": (quantref_rtn, qwix_rtn),
        "GPTQ": (
            lambda bits: quantref_gptq(bits, act_order=False),
            lambda bits: qwix_calibrated(
                bits, qwix_gptq, qwix_gptq.GptqRule, qwix_gptq.GptqCalibrationProvider, qwix.PtqProvider
            ),
        ),
        "GPTQ act-order": (lambda bits: quantref_gptq(bits, act_order=True), None),
        "AWQ": (
            quantref_awq,
            lambda bits: qwix_calibrated(
                bits, qwix_awq, qwix_awq.AwqRule, qwix_awq.AwqCalibrationProvider, qwix_awq.AwqInferenceProvider
            ),
        ),
    }
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} "
        f"({jax.default_backend()}), qwix {qwix.__version__}; float model "
        f"{transformer.bits_per_char(model, test_windows):.4f} bpc"
    )
    print(f"{'g128':<20}{'quantref bpc':>13}{'first s':>9}{'warm s':>8}{'qwix bpc':>10}{'first s':>9}{'warm s':>8}")
    for bits in args.bits:
        for name, (ours, theirs) in runs.items():
            cells = "".join(_timed(lambda run=ours: run(bits)))
            if theirs is not None:
                try:
                    cells += "".join(_timed(lambda run=theirs: run(bits)))
                except TypeError as error:  # qwix's GPTQ takes no synthetic qtype such as "int3"
                    cells += f"   qwix: {str(error).splitlines()[0]}"
            print(f"{f'int{bits} {name}':<20}{cells}")


def _timed(run) -> list[str]:
    """Quantizes twice (the first call compiles), timing each, then evaluates; the bits per character and both
    times, as table cells."""
    start = time.perf_counter()
    run()
    first = time.perf_counter() - start
    start = time.perf_counter()
    evaluate = run()
    warm = time.perf_counter() - start
    return [f"{evaluate():>13.4f}", f"{first:>9.1f}", f"{warm:>8.1f}"]


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def _install(module, tree, awq_wrapper) -> None:
    """Puts qwix's quantized parameters into its NNX model: for an NNX model qwix returns them as a plain dict, in
    which its wrappers (codes and scales, and AWQ's per-input-channel scale) are dicts too."""
    for key, value in tree.items():
        child = module[key] if isinstance(key, int) else getattr(module, key)
        if isinstance(value, dict) and "array" in value:
            array = child.array.replace(**value["array"])
            if "awq_scale" in value:
                wrapped = awq_wrapper(array=array, awq_scale=value["awq_scale"], how=child.how, contracting_axis=0)
            else:
                wrapped = child.replace(array=array)
            setattr(module, key, wrapped)
        elif isinstance(value, dict):
            _install(child, value, awq_wrapper)
        elif isinstance(child, nnx.Variable):
            child[...] = value


if __name__ == "__main__":
    main()
