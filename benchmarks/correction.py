"""GPTQ against qwix's GPTQ, and round-to-nearest against qwix's PtqProvider, on the walkthrough CNN.

    python benchmarks/correction.py [--repeats 5]

Both sides get the same layers, the same calibration data (the 200 calibration images, float inputs), the same
settings (4-bit weights, one scale per output channel on qwix's int4 grid — $s = \\max|W_c| / 7.5$, codes in
$[-8, 7]$ — block size 128, dampening 0.01 of the mean diagonal, no act-order):

- **layer by layer** (conv1, conv2, dense of the BN-folded CNN): :func:`quantref.gptq.gptq` against
  ``qwix.contrib.gptq_core.quantize_weight`` (what qwix's ``quantize_params`` runs) on the same Hessian
  $H = 2X^\\top X$: the layer's output error $\\operatorname{tr}(\\Delta^\\top X^\\top X \\Delta) / N$, the codes that
  differ, and the time (quantref: the first call, which compiles, and the median of ``--repeats`` warm calls; qwix:
  one call, eager, as ``quantize_params`` runs it — for the dense layer, that very call);
- **the model**, weights only: qwix's NNX flow (``GptqCalibrationProvider`` → ``quantize_params``, and
  ``PtqProvider`` for round-to-nearest) quantizes the dense layer (its ``PtqProvider`` quantizes a convolution only
  together with its activations); quantref's GPTQ and round-to-nearest on the same layer and grid; then quantref on
  all three layers, on qwix's grid and on its own narrow one ($\\max|W_c| / 7$, codes in $[-7, 7]$). Test accuracy
  and logit SQNR against the float model.

No number here is a test assertion: the machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from kernels import median_seconds  # benchmarks/kernels.py, beside this script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import qwix
    from flax import nnx
    from qwix._src.core import qarray
    from qwix._src.utils import flax_util
    from qwix.contrib import gptq as qwix_gptq
    from qwix.contrib import gptq_core

    from quantref import data, formats, gptq, nn, ptq, rounding, train

    splits = data.load_splits()
    folded = nn.fold_batch_norm(train.load_or_train(progress=False), splits.x_calib[:1])
    x_calib, x_test = jnp.asarray(splits.x_calib), jnp.asarray(splits.x_test)
    float_logits, _ = nn.capture(folded, x_test)
    _, activations = nn.capture(folded, x_calib)
    paths = list(nn.find_layers(folded))
    kernels = {path: gptq.kernel_matrix(nn.get_module(folded, path).kernel[...]) for path in paths}
    rows = {path: nn.input_rows(nn.get_module(folded, path), activations[f"{path}.input"]) for path in paths}
    grams = {path: rows[path].T @ rows[path] for path in paths}
    int4 = formats.int_format(4)  # qwix's grid: [-8, 7]
    qwix_scales = {path: jnp.abs(kernel).max(axis=0) / 7.5 for path, kernel in kernels.items()}
    settings = {"block_size": 128, "damping": 0.01}

    # qwix's NNX flow on the dense layer: the GPTQ call that quantize_params makes is the dense layer's qwix time.
    rules = [qwix_gptq.GptqRule(module_path="dense", weight_qtype=jnp.int4)]
    calibrating = qwix.quantize_model(nnx.clone(folded), qwix_gptq.GptqCalibrationProvider(rules), x_calib)
    calibrating(x_calib)
    ptq_model = qwix.quantize_model(nnx.clone(folded), qwix.PtqProvider(rules), x_calib)
    qwix_rtn_logits = ptq_model(x_test)
    params = nnx.to_pure_dict(nnx.state(calibrating, nnx.Param))
    qwix_rtn_codes = np.asarray(
        qwix.quantize_params(params, ptq_model)["dense"]["kernel"]["array"]["qvalue"].astype(jnp.int8)
    )
    stats = nnx.to_pure_dict(nnx.state(calibrating, flax_util.QuantStat))
    started = time.perf_counter()
    quantized_params = qwix_gptq.quantize_params(params, ptq_model, stats, gptq_block_size=128)
    qwix_dense_seconds = time.perf_counter() - started
    nnx.update(ptq_model, quantized_params)
    qwix_gptq_logits = ptq_model(x_test)
    qwix_dense_codes = np.asarray(quantized_params["dense"]["kernel"]["array"]["qvalue"].astype(jnp.int8))

    print(
        f"{platform.processor() or platform.machine()}, jax {jax.__version__} ({jax.default_backend()}), "
        f"qwix {qwix.__version__}; quantref warm time: median of "
        f"{args.repeats}"
    )
    print("\nlayer by layer: 4-bit per-channel GPTQ on qwix's int4 grid, the same H = 2 X^T X")
    header = "layer  | rows x in x out     | error quantref | error qwix | error nearest | codes differ"
    print(header + " | quantref first s | quantref warm s | qwix s | qwix / quantref warm")
    ours_codes, total = {}, {"ours": 0.0, "qwix": 0.0}
    for path in paths:
        kernel, gram, scale = kernels[path], grams[path], qwix_scales[path]
        started = time.perf_counter()
        codes = jax.block_until_ready(gptq.gptq(kernel, 2 * gram, scale, int4, **settings))
        first = time.perf_counter() - started
        warm = median_seconds(
            lambda: jax.block_until_ready(gptq.gptq(kernel, 2 * gram, scale, int4, **settings)), args.repeats
        )
        if path == "dense":
            theirs, qwix_seconds = qwix_dense_codes, qwix_dense_seconds  # quantize_params keeps (in, out)
        else:
            how = qarray.HowToQuantize(qtype=jnp.int4, channelwise_axes=(0,))
            started = time.perf_counter()
            result = gptq_core.quantize_weight(kernel.T, 2 * gram, how, blocksize=128, percdamp=0.01)[0]
            theirs = np.asarray(jax.block_until_ready(result.qvalue).astype(jnp.int8)).T
            qwix_seconds = time.perf_counter() - started
        ours_codes[path] = codes
        count = rows[path].shape[0]
        errors = [
            float(gptq.layer_error(kernel, np.asarray(c, np.float32) * scale, gram)) / count
            for c in (codes, theirs, gptq.round_to_nearest(kernel, scale, int4))
        ]
        differ = int(np.sum(np.asarray(codes) != theirs))
        total["ours"] += warm
        total["qwix"] += qwix_seconds
        print(
            f"{path:<6} | {count:>5} x {kernel.shape[0]:>3} x {kernel.shape[1]:>2} | {errors[0]:>14.5f} | "
            f"{errors[1]:>10.5f} | {errors[2]:>13.5f} | {differ:>5} of {codes.size:<5} | {first:>16.3f} | "
            f"{warm:>15.4f} | {qwix_seconds:>6.2f} | {qwix_seconds / warm:>8.0f}"
        )
    print(
        f"all three layers: quantref {total['ours']:.4f} s warm, qwix {total['qwix']:.2f} s: quantref takes "
        f"{total['ours'] / total['qwix']:.4f}x qwix's time"
    )

    def weight_only(chosen):
        """The float model with the given layers' kernels replaced by their dequantized codes."""

        def kernel_fn(path, kernel):
            if path not in chosen:
                return kernel
            codes, scale = chosen[path]
            return (np.asarray(codes, np.float32) * scale).reshape(kernel.shape)

        return nn.map_kernels(folded, kernel_fn)

    def row(name, logits):
        accuracy = ptq.accuracy(logits, splits.y_test)
        print(f"{name:<58} | {accuracy:>8.2%} | {float(rounding.sqnr_db(float_logits, logits)):>14.1f}")

    narrow = ptq.weight_format(4)
    narrow_scales = {path: gptq.weight_scale(kernels[path], narrow) for path in paths}
    print("\nthe model, weights only (activations float): test accuracy and logit SQNR against float")
    print(f"{'model':<58} | {'accuracy':>8} | logit SQNR dB")
    row("float", float_logits)
    row("qwix PtqProvider (round to nearest), dense", qwix_rtn_logits)
    dense_rtn = {"dense": (gptq.round_to_nearest(kernels["dense"], qwix_scales["dense"], int4), qwix_scales["dense"])}
    row("quantref round to nearest, dense, qwix's grid", weight_only(dense_rtn)(x_test))
    ties = np.argwhere(np.asarray(dense_rtn["dense"][0]) != qwix_rtn_codes)
    ratios = [float(kernels["dense"][i, j] / qwix_scales["dense"][j]) for i, j in ties]
    print(
        f"  (round to nearest: {len(ties)} of {qwix_rtn_codes.size} codes differ, at W/s = {ratios}: x.5 ties that "
        f"float32 rounding of the division sends either way)"
    )
    row("qwix GPTQ (GptqCalibrationProvider + quantize_params), dense", qwix_gptq_logits)
    row(
        "quantref GPTQ, dense, qwix's grid", weight_only({"dense": (ours_codes["dense"], qwix_scales["dense"])})(x_test)
    )
    all_rtn = {
        path: (gptq.round_to_nearest(kernels[path], qwix_scales[path], int4), qwix_scales[path]) for path in paths
    }
    row("quantref round to nearest, all layers, qwix's grid", weight_only(all_rtn)(x_test))
    row(
        "quantref GPTQ, all layers, qwix's grid",
        weight_only({p: (ours_codes[p], qwix_scales[p]) for p in paths})(x_test),
    )
    narrow_rtn = {p: (gptq.round_to_nearest(kernels[p], narrow_scales[p], narrow), narrow_scales[p]) for p in paths}
    row("quantref round to nearest, all layers, [-7, 7]", weight_only(narrow_rtn)(x_test))
    narrow_gptq = {
        p: (gptq.gptq(kernels[p], 2 * grams[p], narrow_scales[p], narrow, **settings), narrow_scales[p]) for p in paths
    }
    row("quantref GPTQ, all layers, [-7, 7]", weight_only(narrow_gptq)(x_test))


if __name__ == "__main__":
    main()
