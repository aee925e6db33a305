"""LiteRT's kernel sets written out in numpy (float64 where the C++ uses double, int64 for the fixed point): the
independent reference that quantref.runtimes.litert and quantref.integer's TFLite modes are checked against.

Slow and plain on purpose — no JAX, no quantref arithmetic — so that a test comparing quantref with it compares two
implementations, and a test comparing it with live LiteRT (tests/test_export_tflite.py) checks this file too.
"""

from __future__ import annotations

import math

import numpy as np

QMIN, QMAX = -128, 127
#: Which requantization each kernel set applies to each layer type (measured against LiteRT 2.3.0).
LAYER_REQUANTIZATION = {
    "reference": {"conv": "gemmlowp", "dense": "double"},
    "optimized": {"conv": "ruy", "dense": "ruy"},
    "xnnpack": {"conv": "float32", "dense": "float32"},
}


def vector_lanes(shape) -> np.ndarray:
    size = math.prod(shape)
    return (np.arange(size) < size - size % 8).reshape(shape)


def x86_int32(values: np.ndarray) -> np.ndarray:
    """cvttsd2si / cvtps2dq on integer-valued floats: NaN and values outside int32 give INT32_MIN (as int64)."""
    values = np.asarray(values, np.float64)
    inside = (values >= -(2.0**31)) & (values < 2.0**31)
    return np.where(inside, np.where(inside, values, 0.0).astype(np.int64), -(2**31))


def wrap32(values: np.ndarray) -> np.ndarray:
    return (np.asarray(values, np.int64) + 2**31) % 2**32 - 2**31


def std_round(values: np.ndarray) -> np.ndarray:
    """C's round: half away from zero (np.round is half to even)."""
    truncated = np.trunc(values)
    return truncated + np.where(np.abs(values - truncated) >= 0.5, np.sign(values), 0.0)


def quantize(x, scale, zero_point, kernels, qmin=QMIN, qmax=QMAX) -> np.ndarray:
    """QUANTIZE as each kernel set computes it on x86-64 (int64 codes)."""
    x = np.asarray(x, np.float32)
    scale, zero_point = np.float32(scale), int(zero_point)
    with np.errstate(all="ignore"):
        if kernels == "reference":
            codes = x86_int32(std_round(x / scale))  # float32 division
            return np.clip(wrap32(codes + zero_point), qmin, qmax)
        vector = np.rint(x * (np.float32(1) / scale))  # float32 product, half to even
        if kernels == "xnnpack":
            vector = np.where(np.isnan(vector), 32767.0, np.clip(vector, -32768.0, 32767.0))
            return np.clip(vector.astype(np.int64) + zero_point, qmin, qmax)
        scalar = std_round(x.astype(np.float64) / np.float64(scale))  # the scalar tail divides in double
        codes = np.where(vector_lanes(x.shape), x86_int32(vector), x86_int32(scalar))
    return np.clip(wrap32(codes + zero_point), qmin, qmax)


def dequantize(codes, scale, zero_point, kernels) -> np.ndarray:
    scale, codes = np.float32(scale), np.asarray(codes).astype(np.int64)
    # (q - z) · s is exact in float64 (a 9-bit times a 24-bit integer): one rounding, as float32 does it.
    once = ((codes - int(zero_point)) * np.float64(scale)).astype(np.float32)
    if kernels != "optimized":
        return once
    twice = codes.astype(np.float32) * scale - np.float32(int(zero_point)) * scale
    return np.where(vector_lanes(codes.shape), twice, once).astype(np.float32)


def quantize_multiplier(real: float) -> tuple[int, int]:
    """TFLite's QuantizeMultiplier in Python integers."""
    if real == 0:
        return 0, 0
    fraction, shift = math.frexp(real)
    quantized = int(math.copysign(math.floor(abs(fraction * 2.0**31) + 0.5), fraction))
    if abs(quantized) == 2**31:
        quantized //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    return quantized, shift


def fixed_point(acc, multipliers: np.ndarray, method: str) -> np.ndarray:
    """gemmlowp's or ruy's fixed-point multiply of int64 accumulators (channels last) by real multipliers."""
    acc = np.asarray(acc, np.int64)
    pairs = [quantize_multiplier(float(m)) for m in np.broadcast_to(multipliers, acc.shape[-1:])]
    quantized = np.array([p[0] for p in pairs], np.int64)
    shift = np.array([p[1] for p in pairs], np.int64)
    left, right = np.maximum(shift, 0), np.maximum(-shift, 0)
    shifted = wrap32(acc << left)
    high = (shifted * quantized + 2**30) >> 31  # floor: the doubling high multiply's ties go up
    if method == "ruy":
        nudge = np.where(right > 0, np.left_shift(1, np.maximum(right - 1, 0)), 0)
        return (high + nudge) >> right  # ties up
    mask = (np.int64(1) << right) - 1
    return (high >> right) + ((high & mask) > (mask >> 1) + (high < 0))  # ties away from zero


def requantize(acc, method, input_scale, kernel_scale, output_scale, zero_point, qmin=QMIN, qmax=QMAX) -> np.ndarray:
    """Requantize int32 accumulators (channels last) with one of LiteRT's methods, as int64 codes."""
    acc = np.asarray(acc, np.int64)
    kernel_scale = np.asarray(kernel_scale, np.float32)
    if method == "float32":  # XNNPACK = onnxruntime: M folded in float32, f32(acc) · M, half to even
        multiplier = np.float32(input_scale) * kernel_scale / np.float32(output_scale)
        scaled = np.rint(acc.astype(np.float32) * multiplier).astype(np.int64)
        return np.clip(scaled + int(zero_point), qmin, qmax)
    real = np.float64(np.float32(input_scale)) * kernel_scale.astype(np.float64) / np.float64(np.float32(output_scale))
    if method == "double":
        with np.errstate(invalid="ignore"):
            scaled = x86_int32(std_round(acc.astype(np.float64) * real))  # the product rounded to double
    else:
        scaled = fixed_point(acc, real, method)
    return np.clip(wrap32(scaled + int(zero_point)), qmin, qmax)


def _same_padding(size: int, window: int, stride: int) -> tuple[int, int]:
    total = max((-(-size // stride) - 1) * stride + window - size, 0)
    return total // 2, total - total // 2  # the odd extra row/column after


def _windows(x: np.ndarray, window, strides, padding: str, fill: int):
    """Yield ``(i, j, patch)``: for each window tap, the input values it sees at every output position."""
    pads = [(0, 0), (0, 0)]
    if padding == "SAME":
        pads = [_same_padding(x.shape[1 + a], window[a], strides[a]) for a in range(2)]
    padded = np.pad(x, ((0, 0), *pads, (0, 0)), constant_values=fill)
    out = [(padded.shape[1 + a] - window[a]) // strides[a] + 1 for a in range(2)]
    for i in range(window[0]):
        for j in range(window[1]):
            yield i, j, padded[:, i : i + strides[0] * out[0] : strides[0], j : j + strides[1] * out[1] : strides[1]]


def predict_network(network, x, kernels: str, io: str = "float") -> np.ndarray:
    """What LiteRT computes from a quantref.export.tflite.Network, in numpy: the independent reference."""
    from quantref.export import tflite  # the network's dataclasses only

    quant = network.input
    codes = np.asarray(x).astype(np.int64) if io == "int8" else quantize(x, quant.scale, quant.zero_point, kernels)
    for layer in network.layers:
        if isinstance(layer, (tflite.Conv2D, tflite.FullyConnected)):
            shifted = codes - int(quant.zero_point)
            kernel = np.asarray(layer.kernel, np.int64)
            if isinstance(layer, tflite.Conv2D):  # padding taps contribute nothing: zero padding of x - z
                patches = _windows(shifted, kernel.shape[:2], layer.strides, layer.padding, 0)
                acc = sum(patch @ kernel[i, j] for i, j, patch in patches)
                kind = "conv"
            else:
                acc, kind = shifted @ kernel, "dense"
            out = layer.output
            lowest = max(QMIN, int(out.zero_point)) if layer.relu else QMIN
            method = LAYER_REQUANTIZATION[kernels][kind]
            acc = wrap32(acc + np.asarray(layer.bias, np.int64))
            codes = requantize(acc, method, quant.scale, layer.kernel_scale, out.scale, out.zero_point, lowest, QMAX)
            quant = out
        elif isinstance(layer, tflite.MaxPool2D):
            patches = _windows(codes, layer.window, layer.strides, layer.padding, QMIN)
            codes = np.max([patch for _, _, patch in patches], axis=0)
        else:
            codes = codes.reshape(codes.shape[0], -1)
    if io == "int8":
        return codes.astype(np.int8)
    return dequantize(codes, quant.scale, quant.zero_point, kernels)
