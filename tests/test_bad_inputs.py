"""Bad inputs to every public function of the numerics, the runtimes, the vectors and the testing helpers.

Each input either raises a ``ValueError``/``TypeError`` whose message names the offending parameter (checked with a
regular expression), or returns what the documentation promises (checked). Nothing may pass silently with a wrong
number, and nothing may fail deep inside JAX or numpy with an error that names something else.
"""

from __future__ import annotations

import re

import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings

from quantref import affine, formats, ranges, rounding, testing, vectors
from quantref.runtimes import onnx as qonnx
from quantref.runtimes import onnx_graph as qonnx_graph
from quantref.runtimes import tflite as qtflite
from quantref.runtimes import torch as qtorch

INT8, UINT8 = formats.INT8, formats.UINT8
X = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
Q8 = np.arange(-6, 6, dtype=np.int8).reshape(3, 4)
U8 = np.arange(12, dtype=np.uint8).reshape(3, 4)
ACC = np.arange(-6, 6, dtype=np.int32)
KEY = jax.random.key(0)
SUBNORMAL = np.float32(1e-40)
WIDE = np.int64(2**32 + 3)  # wraps to 3 in int32
JUNK = {"None": None, "str": "abc", "dict": {"a": 1}, "complex": np.complex64(1 + 2j)}


def junk_cases(call_with, name, allowed_errors=(TypeError,)):
    """For one array parameter: None, a string, a dict and a complex value all raise, naming it."""
    return [(f"{name}={label}", lambda v=value: call_with(v), allowed_errors, name) for label, value in JUNK.items()]


# Each case: (id, thunk, the exception types allowed, a regex the message must match: the parameter's name).
CASES: list[tuple[str, object, tuple[type, ...], str]] = []


def case(case_id, thunk, errors, match):
    CASES.append((case_id, thunk, errors if isinstance(errors, tuple) else (errors,), match))


# ---------------------------------------------------------------------------------------------------------- formats
case("IntFormat(4.5)", lambda: formats.IntFormat(4.5), TypeError, "bits")
case("IntFormat(True)", lambda: formats.IntFormat(True), TypeError, "bits")
case("IntFormat('8')", lambda: formats.IntFormat("8"), TypeError, "bits")
case("IntFormat(0)", lambda: formats.IntFormat(0), ValueError, "bits")
case("IntFormat(33)", lambda: formats.IntFormat(33), ValueError, "bits")
case("IntFormat(8, signed=1)", lambda: formats.IntFormat(8, signed=1), TypeError, "signed")
case("IntFormat(8, narrow_range='yes')", lambda: formats.IntFormat(8, True, "yes"), TypeError, "narrow_range")
case("IntFormat(8, False, True)", lambda: formats.IntFormat(8, False, True), ValueError, "narrow_range")
case("int_format(8.0)", lambda: formats.int_format(8.0), TypeError, "bits")
case("int_format(None)", lambda: formats.int_format(None), TypeError, "bits")
case("int_format(17)", lambda: formats.int_format(17), ValueError, "bits")
case("int_format(max_bits=64)", lambda: formats.int_format(8, max_bits=64), ValueError, "max_bits")
case("int_format(max_bits=8.5)", lambda: formats.int_format(8, max_bits=8.5), TypeError, "max_bits")
case("int_format(signed=None)", lambda: formats.int_format(8, signed=None), TypeError, "signed")
case("pack_int(int64 2**33+1)", lambda: formats.pack_int(np.int64([2**33 + 1]), 4), ValueError, "values")
case("pack_int(uint64 huge)", lambda: formats.pack_int(np.array([2**64 - 1], np.uint64), 4), ValueError, "values")
case("pack_int(floats)", lambda: formats.pack_int(np.array([1.5]), 4), TypeError, "values")
case("pack_int(bools)", lambda: formats.pack_int(np.array([True]), 4), TypeError, "values")
case("pack_int(bits=3)", lambda: formats.pack_int(np.int8([1]), 3), ValueError, "bits")
case("pack_int(bits=4.0)", lambda: formats.pack_int(np.int8([1]), 4.0), ValueError, "bits")
case("pack_int(16 in 4 bits)", lambda: formats.pack_int(np.int8([16]), 4), ValueError, "values")
CASES += junk_cases(lambda v: formats.pack_int(v, 4), "values")
case("unpack_int(int8 packed)", lambda: formats.unpack_int(np.int8([1]), 4, True, 2), TypeError, "packed")
case("unpack_int(count=2.0)", lambda: formats.unpack_int(np.uint8([1]), 4, True, 2.0), TypeError, "count")
case("unpack_int(count=3)", lambda: formats.unpack_int(np.uint8([1]), 4, True, 3), ValueError, "count")
case("unpack_int(count=-1)", lambda: formats.unpack_int(np.uint8([1]), 4, True, -1), ValueError, "count")
case("unpack_int(signed='no')", lambda: formats.unpack_int(np.uint8([1]), 4, "no", 2), TypeError, "signed")
case("unpack_int(None)", lambda: formats.unpack_int(None, 4, True, 2), TypeError, "packed")
case("float8_dtype('e4m3')", lambda: formats.float8_dtype("e4m3"), ValueError, "name")
case("float8_dtype(['x'])", lambda: formats.float8_dtype(["x"]), ValueError, "name")
case("float8_max(None)", lambda: formats.float8_max(None), ValueError, "name")
case("cast_float8(complex)", lambda: formats.cast_float8(np.array([1 + 1j]), "float8_e4m3fn"), TypeError, "x")
case("cast_float8(None)", lambda: formats.cast_float8(None, "float8_e4m3fn"), TypeError, "x")
case("cast_float8(saturate=1)", lambda: formats.cast_float8(X, "float8_e4m3fn", saturate=1), TypeError, "saturate")

# --------------------------------------------------------------------------------------------------------- rounding
case("round_to_int(rounding='up')", lambda: rounding.round_to_int(X, "up"), ValueError, "rounding")
case("round_to_int(rounding=None)", lambda: rounding.round_to_int(X, None), ValueError, "rounding")
case("round_to_int(stochastic, no key)", lambda: rounding.round_to_int(X, "stochastic"), ValueError, "key")
case("round_to_int(stochastic, key=3)", lambda: rounding.round_to_int(X, "stochastic", 3), TypeError, "key")
case(
    "round_to_int(stochastic, key='seed')",
    lambda: rounding.round_to_int(X, "stochastic", "seed"),
    TypeError,
    "key",
)
case(
    "round_to_int(stochastic, two keys)",
    lambda: rounding.round_to_int(X, "stochastic", jax.random.split(KEY)),
    TypeError,
    "key",
)
CASES += junk_cases(lambda v: rounding.round_to_int(v), "x")
case("round_to_int(bool)", lambda: rounding.round_to_int(np.array([True])), TypeError, "x")
case("uniform_noise_power(0)", lambda: rounding.uniform_noise_power(0.0), ValueError, "step")
case("uniform_noise_power(-1)", lambda: rounding.uniform_noise_power(-1.0), ValueError, "step")
case("uniform_noise_power(nan)", lambda: rounding.uniform_noise_power(np.nan), ValueError, "step")
case("uniform_noise_power(None)", lambda: rounding.uniform_noise_power(None), TypeError, "step")
case("ideal_sqnr_db(signal='square')", lambda: rounding.ideal_sqnr_db(8, "square"), ValueError, "signal")
case("ideal_sqnr_db(bits=0)", lambda: rounding.ideal_sqnr_db(0), ValueError, "bits")
case("ideal_sqnr_db(bits='8')", lambda: rounding.ideal_sqnr_db("8"), TypeError, "bits")
case("sqnr_db(complex)", lambda: rounding.sqnr_db(X.astype(np.complex64), X), TypeError, "x")
case("sqnr_db(None x_hat)", lambda: rounding.sqnr_db(X, None), TypeError, "x_hat")
case("sqnr_db(shape)", lambda: rounding.sqnr_db(X, X[:2]), ValueError, "x_hat")
case("error_split(lo shape)", lambda: rounding.error_split(X, X, np.zeros(5), 1.0), ValueError, "lo")
case("error_split(hi None)", lambda: rounding.error_split(X, X, -1.0, None), TypeError, "hi")
case("error_split(x_hat complex)", lambda: rounding.error_split(X, X + 1j, -1.0, 1.0), TypeError, "x_hat")

# ----------------------------------------------------------------------------------------------------------- affine
case("quantize(scale subnormal)", lambda: affine.quantize(X, SUBNORMAL, 0, INT8), ValueError, "scale")
case("quantize(scale 1e-45)", lambda: affine.quantize(X, np.float32(1e-45), 0, INT8), ValueError, "scale")
case("quantize(scale 1e-50 f64)", lambda: affine.quantize(X, np.float64(1e-50), 0, INT8), ValueError, "scale")
case("quantize(scale 1e39 f64)", lambda: affine.quantize(X, np.float64(1e39), 0, INT8), ValueError, "scale")
case("quantize(zero_point int64 wide)", lambda: affine.quantize(X, 0.1, WIDE, INT8), ValueError, "zero_point")
case(
    "quantize(zero_point int64 array wide)",
    lambda: affine.quantize(X, np.full(3, 0.1, np.float32), np.array([0, 0, 2**40]), INT8, axis=0),
    ValueError,
    "zero_point",
)
case("quantize(zero_point 2**40)", lambda: affine.quantize(X, 0.1, 2**40, INT8), ValueError, "zero_point")
case("quantize(zero_point 2**70)", lambda: affine.quantize(X, 0.1, 2**70, INT8), (ValueError, TypeError), "zero_point")
case("quantize(zero_point 1.0)", lambda: affine.quantize(X, 0.1, 1.0, INT8), ValueError, "zero_point")
case("quantize(zero_point True)", lambda: affine.quantize(X, 0.1, True, INT8), ValueError, "zero_point")
case("quantize(zero_point complex)", lambda: affine.quantize(X, 0.1, 1j, INT8), ValueError, "zero_point")
case("quantize(x complex)", lambda: affine.quantize(X + 1j, 0.1, 0, INT8), ValueError, "x")
case("quantize(scale complex)", lambda: affine.quantize(X, 0.1 + 0j, 0, INT8), ValueError, "scale")
CASES += junk_cases(lambda v: affine.quantize(v, 0.1, 0, INT8), "x", (TypeError, ValueError))
CASES += junk_cases(lambda v: affine.quantize(X, v, 0, INT8), "scale", (TypeError, ValueError))
case("quantize(zero_point None str)", lambda: affine.quantize(X, 0.1, "0", INT8), TypeError, "zero_point")
case("quantize(fmt 'int8')", lambda: affine.quantize(X, 0.1, 0, "int8"), TypeError, "fmt")
case("quantize(fmt None)", lambda: affine.quantize(X, 0.1, 0, None), TypeError, "fmt")
case(
    "quantize(rounding stochastic key=3)",
    lambda: affine.quantize(X, 0.1, 0, INT8, rounding="stochastic", key=3),
    TypeError,
    "key",
)
case("quantize(rounding 5)", lambda: affine.quantize(X, 0.1, 0, INT8, rounding=5), ValueError, "rounding")
case("quantize(axis 1.0)", lambda: affine.quantize(X, np.full(4, 0.1), None, INT8, axis=1.0), ValueError, "axis")
case("quantize(axis '1')", lambda: affine.quantize(X, np.full(4, 0.1), None, INT8, axis="1"), ValueError, "axis")
case(
    "quantize(block_size 0)",
    lambda: affine.quantize(X, np.full((3, 1), 0.1), None, INT8, axis=1, block_size=0),
    ValueError,
    "block_size",
)
case("fake_quant(scale subnormal)", lambda: affine.fake_quant(X, SUBNORMAL, 0, INT8), ValueError, "scale")
case("fake_quant(zero_point wide)", lambda: affine.fake_quant(X, 0.1, WIDE, INT8), ValueError, "zero_point")
case("fake_quant(key=3)", lambda: affine.fake_quant(X, 0.1, 0, INT8, rounding="stochastic", key=3), TypeError, "key")
case("dequantize(q int64 wide)", lambda: affine.dequantize(np.array([2**40]), 0.1, 0), ValueError, "q")
case("dequantize(q uint32 big)", lambda: affine.dequantize(np.array([2**31], np.uint32), 0.1, 0), ValueError, "q")
case("dequantize(zero_point wide)", lambda: affine.dequantize(Q8, 0.1, WIDE), ValueError, "zero_point")
case("dequantize(scale subnormal)", lambda: affine.dequantize(Q8, SUBNORMAL, 0), ValueError, "scale")
case("dequantize(q float)", lambda: affine.dequantize(X, 0.1, 0), ValueError, "q")
case("dequantize(q None)", lambda: affine.dequantize(None, 0.1, 0), TypeError, "q")
case("dequantize(q str)", lambda: affine.dequantize("1", 0.1, 0), (TypeError, ValueError), "q")
case(
    "scale_zero_point(min_scale 1e-45)",
    lambda: affine.scale_zero_point(-1.0, 1.0, INT8, min_scale=1e-45),
    ValueError,
    "min_scale",
)
case(
    "scale_zero_point(min_scale inf)",
    lambda: affine.scale_zero_point(-1.0, 1.0, INT8, min_scale=np.inf),
    ValueError,
    "min_scale",
)
case(
    "scale_zero_point(min_scale nan)",
    lambda: affine.scale_zero_point(-1.0, 1.0, INT8, min_scale=np.nan),
    ValueError,
    "min_scale",
)
case(
    "scale_zero_point(min_scale 1e39)",
    lambda: affine.scale_zero_point(-1.0, 1.0, INT8, min_scale=1e39),
    ValueError,
    "min_scale",
)
case(
    "scale_zero_point(min_scale '1')",
    lambda: affine.scale_zero_point(-1.0, 1.0, INT8, min_scale="1"),
    TypeError,
    "min_scale",
)
case(
    "scale_zero_point(min_scale None)",
    lambda: affine.scale_zero_point(-1.0, 1.0, INT8, min_scale=None),
    TypeError,
    "min_scale",
)
case(
    "scale_zero_point(range 6e38)", lambda: affine.scale_zero_point(-3e38, 3e38, INT8), ValueError, "max_val - min_val"
)
case("scale_zero_point(min 1e39 f64)", lambda: affine.scale_zero_point(-1e39, 1.0, INT8), ValueError, "min_val")
case(
    "scale_zero_point(symmetric 'yes')",
    lambda: affine.scale_zero_point(-1.0, 1.0, INT8, symmetric="yes"),
    TypeError,
    "symmetric",
)
case("scale_zero_point(min None)", lambda: affine.scale_zero_point(None, 1.0, INT8), TypeError, "min_val")
case("scale_zero_point(max complex)", lambda: affine.scale_zero_point(-1.0, 1j, INT8), TypeError, "max_val")
case("scale_zero_point(max str)", lambda: affine.scale_zero_point(-1.0, "1", INT8), TypeError, "max_val")
case(
    "scale_zero_point(divisor 127)",
    lambda: affine.scale_zero_point(-1.0, 1.0, INT8, symmetric=True, symmetric_divisor=127),
    ValueError,
    "symmetric_divisor",
)

# ----------------------------------------------------------------------------------------------------------- ranges
case("calibrate('min_max', ...)", lambda: ranges.calibrate("min_max", [X]), TypeError, "observer")
case("calibrate(None, ...)", lambda: ranges.calibrate(None, [X]), TypeError, "observer")
case("calibrate(min_max, one array)", lambda: ranges.calibrate(ranges.min_max(), X), TypeError, "batches")
case("calibrate(min_max, None)", lambda: ranges.calibrate(ranges.min_max(), None), TypeError, "batches")
case("calibrate(min_max, [])", lambda: ranges.calibrate(ranges.min_max(), []), ValueError, "batches")
case("calibrate(min_max, [None])", lambda: ranges.calibrate(ranges.min_max(), [None]), TypeError, "x")
case("calibrate(min_max, ['abc'])", lambda: ranges.calibrate(ranges.min_max(), ["abc"]), TypeError, "x")
case("calibrate(min_max, [complex])", lambda: ranges.calibrate(ranges.min_max(), [X + 1j]), TypeError, "x")
case("calibrate(percentile, [complex])", lambda: ranges.calibrate(ranges.percentile(), [X + 1j]), TypeError, "x")
case(
    "calibrate(progress='yes')", lambda: ranges.calibrate(ranges.min_max(), [X], progress="yes"), TypeError, "progress"
)
case("min_max(axis 1.5)", lambda: ranges.min_max(axis=1.5), ValueError, "axis")
case("min_max(block_size 0)", lambda: ranges.min_max(axis=0, block_size=0), ValueError, "block_size")
case("min_max(block_size no axis)", lambda: ranges.min_max(block_size=2), ValueError, "block_size")
case("abs_max(axis '0')", lambda: ranges.abs_max(axis="0"), ValueError, "axis")
case("moving_average(momentum 1.5)", lambda: ranges.moving_average_min_max(1.5), ValueError, "momentum")
case("moving_average(momentum nan)", lambda: ranges.moving_average_min_max(np.nan), ValueError, "momentum")
case("moving_average(momentum '0.9')", lambda: ranges.moving_average_min_max("0.9"), ValueError, "momentum")
case("percentile(0)", lambda: ranges.percentile(0.0), ValueError, "percentile")
case("percentile(nan)", lambda: ranges.percentile(np.nan), ValueError, "percentile")
case("percentile('99')", lambda: ranges.percentile("99"), ValueError, "percentile")
case("percentile(symmetric 'no')", lambda: ranges.percentile(99.0, symmetric="no"), TypeError, "symmetric")
case("percentile(num_bins 1000)", lambda: ranges.percentile(num_bins=1000), ValueError, "num_bins")
case("percentile(block_size 2)", lambda: ranges.percentile(axis=0, block_size=2), ValueError, "block_size")
case("mse(fmt 'int8')", lambda: ranges.mse("int8"), TypeError, "fmt")
case("mse(num_candidates 0)", lambda: ranges.mse(INT8, 0), ValueError, "num_candidates")
case("mse(num_candidates 2.0)", lambda: ranges.mse(INT8, 2.0), ValueError, "num_candidates")
case("mse(symmetric None)", lambda: ranges.mse(INT8, symmetric=None), TypeError, "symmetric")
case("mse(symmetric_divisor x)", lambda: ranges.mse(INT8, symmetric_divisor="x"), ValueError, "symmetric_divisor")
case("mse_range(+-3e38)", lambda: ranges.mse_range(np.float32([-3e38, 3e38]), INT8), ValueError, r"\bx\b")
case("mse_range(None)", lambda: ranges.mse_range(None, INT8), TypeError, "x")
case("mse_range(complex)", lambda: ranges.mse_range(X + 1j, INT8), TypeError, "x")
case("mse_range(fmt None)", lambda: ranges.mse_range(X, None), TypeError, "fmt")
case(
    "entropy(num_quantized_bins 0)",
    lambda: ranges.entropy(INT8, num_quantized_bins=0),
    ValueError,
    "num_quantized_bins",
)
case("entropy(min_bins 0)", lambda: ranges.entropy(INT8, min_bins=0), ValueError, "min_bins")
case("entropy(smooth_zero_bin 'x')", lambda: ranges.entropy(INT8, smooth_zero_bin="x"), TypeError, "smooth_zero_bin")
case("entropy(fmt 8)", lambda: ranges.entropy(8), TypeError, "fmt")
case("observer_from_name('minmax')", lambda: ranges.observer_from_name("minmax"), ValueError, "name")
case("observer_from_name(['min_max'])", lambda: ranges.observer_from_name(["min_max"]), ValueError, "name")
case("observer_from_name(None)", lambda: ranges.observer_from_name(None), ValueError, "name")
case("histogram_edges(MinMaxState)", lambda: ranges.histogram_edges(ranges.min_max().init(X)), TypeError, "state")
case(
    "min_max().update(hist state)", lambda: ranges.min_max().update(ranges.percentile().init(X), X), TypeError, "state"
)
case(
    "percentile().result(minmax state)",
    lambda: ranges.percentile().result(ranges.min_max().init(X)),
    TypeError,
    "state",
)
case("min_max().init('abc')", lambda: ranges.min_max().init("abc"), TypeError, "x_example")
case("min_max().init((2.5,))", lambda: ranges.min_max(axis=0).init((2.5,)), TypeError, "x_example")
case(
    "min_max(axis=0).update(wrong shape)",
    lambda: ranges.min_max(axis=0).update(ranges.min_max(axis=0).init(X), X.T),
    ValueError,
    "x",
)

# ------------------------------------------------------------------------------------------------- runtimes: onnx
case("quantize_linear(x None)", lambda: qonnx.quantize_linear(None, 0.1), TypeError, "x")
case("quantize_linear(x 'a')", lambda: qonnx.quantize_linear("a", 0.1), TypeError, "x")
case("quantize_linear(x int)", lambda: qonnx.quantize_linear(Q8, 0.1), TypeError, "x")
case("quantize_linear(x complex)", lambda: qonnx.quantize_linear(X + 1j, 0.1), TypeError, "x")
case("quantize_linear(scale 0)", lambda: qonnx.quantize_linear(X, 0.0), ValueError, "y_scale")
case("quantize_linear(scale subnormal)", lambda: qonnx.quantize_linear(X, SUBNORMAL), ValueError, "y_scale")
case("quantize_linear(scale None)", lambda: qonnx.quantize_linear(X, None), TypeError, "y_scale")
case("quantize_linear(zp int64)", lambda: qonnx.quantize_linear(X, 0.1, np.int64(3)), TypeError, "y_zero_point")
case("quantize_linear(zp int32)", lambda: qonnx.quantize_linear(X, 0.1, np.int32(3)), TypeError, "y_zero_point")
case(
    "quantize_linear(output_dtype int32)",
    lambda: qonnx.quantize_linear(X, 0.1, output_dtype="int32"),
    ValueError,
    "output_dtype",
)
case(
    "quantize_linear(output_dtype 5)",
    lambda: qonnx.quantize_linear(X, 0.1, output_dtype=[5]),
    TypeError,
    "output_dtype",
)
case("quantize_linear(flavor ort)", lambda: qonnx.quantize_linear(X, 0.1, flavor="ort"), ValueError, "flavor")
case("quantize_linear(saturate 1)", lambda: qonnx.quantize_linear(X, 0.1, saturate=1), TypeError, "saturate")
case(
    "quantize_linear(axis 1.0)",
    lambda: qonnx.quantize_linear(X, np.full(4, 0.1, np.float32), axis=1.0),
    ValueError,
    "axis",
)
case("dequantize_linear(x float)", lambda: qonnx.dequantize_linear(X, 0.1), TypeError, "x")
case("dequantize_linear(x int64)", lambda: qonnx.dequantize_linear(np.int64([1]), 0.1), TypeError, "x")
case(
    "dequantize_linear(zp other dtype)",
    lambda: qonnx.dequantize_linear(Q8, 0.1, np.uint8(0)),
    TypeError,
    "x_zero_point",
)
case("dequantize_linear(scale nan)", lambda: qonnx.dequantize_linear(Q8, np.nan), ValueError, "x_scale")
case("dynamic_quantize_linear(None)", lambda: qonnx.dynamic_quantize_linear(None), TypeError, "x")
case("dynamic_quantize_linear(int)", lambda: qonnx.dynamic_quantize_linear(Q8), TypeError, "x")
case("matmul_integer(a float)", lambda: qonnx.matmul_integer(X, Q8.T), TypeError, r"\ba\b")
case("matmul_integer(b None)", lambda: qonnx.matmul_integer(Q8, None), TypeError, r"\bb\b")
case("matmul_integer(shapes)", lambda: qonnx.matmul_integer(Q8, Q8), ValueError, r"\ba\b|\bb\b")
case("matmul_integer(zp int32)", lambda: qonnx.matmul_integer(Q8, Q8.T, np.int32(0)), TypeError, "a_zero_point")
case(
    "conv_integer(strides 3)",
    lambda: qonnx.conv_integer(np.zeros((1, 1, 4, 4), np.int8), np.zeros((1, 1, 2, 2), np.int8), strides=3),
    ValueError,
    "strides",
)
case(
    "conv_integer(group 0)",
    lambda: qonnx.conv_integer(np.zeros((1, 1, 4, 4), np.int8), np.zeros((1, 1, 2, 2), np.int8), group=0),
    ValueError,
    "group",
)
case(
    "conv_integer(x 3-D)",
    lambda: qonnx.conv_integer(np.zeros((1, 4, 4), np.int8), np.zeros((1, 1, 2, 2), np.int8)),
    ValueError,
    r"\bx\b",
)
case(
    "qlinear_matmul(a_scale 0)",
    lambda: qonnx.qlinear_matmul(U8, 0.0, np.uint8(0), Q8.T, 0.1, np.int8(0), 0.1, np.uint8(0)),
    ValueError,
    "a_scale",
)
case(
    "qlinear_matmul(y_zero_point int32)",
    lambda: qonnx.qlinear_matmul(U8, 0.1, np.uint8(0), Q8.T, 0.1, np.int8(0), 0.1, np.int32(0)),
    TypeError,
    "y_zero_point",
)
case(
    "qlinear_matmul(subnormal product)",
    lambda: qonnx.qlinear_matmul(U8, 1e-20, np.uint8(0), Q8.T, 1e-20, np.int8(0), 0.1, np.uint8(0)),
    ValueError,
    "a_scale \\* b_scale",
)
case(
    "qlinear_conv(bias int64)",
    lambda: qonnx.qlinear_conv(
        np.zeros((1, 1, 4, 4), np.uint8),
        0.1,
        np.uint8(0),
        np.zeros((2, 1, 2, 2), np.int8),
        0.1,
        np.int8(0),
        0.1,
        np.uint8(0),
        np.zeros(2, np.int64),
    ),
    TypeError,
    "bias",
)
case(
    "requantize(acc int64 wide)",
    lambda: qonnx.requantize(np.int64([2**33]), np.float32(0.5), 0, 0, 255),
    ValueError,
    "acc",
)
case("requantize(multiplier subnormal)", lambda: qonnx.requantize(ACC, SUBNORMAL, 0, 0, 255), ValueError, "multiplier")
case("requantize(qmin > qmax)", lambda: qonnx.requantize(ACC, np.float32(0.5), 0, 9, 3), ValueError, "qmin")
case(
    "requantize(zero_point float)", lambda: qonnx.requantize(ACC, np.float32(0.5), 0.5, 0, 255), TypeError, "zero_point"
)
case("run_model(model 3)", lambda: qonnx_graph.run_model(3, {}), (TypeError, ImportError), "model|onnx")

# ------------------------------------------------------------------------------------------------ runtimes: torch
case("quantize_per_tensor(dtype 'int8')", lambda: qtorch.quantize_per_tensor(X, 0.1, 0, "int8"), ValueError, "dtype")
case(
    "quantize_per_tensor(scale subnormal)",
    lambda: qtorch.quantize_per_tensor(X, float(SUBNORMAL), 0, "qint8"),
    ValueError,
    "scale",
)
case("quantize_per_tensor(scale None)", lambda: qtorch.quantize_per_tensor(X, None, 0, "qint8"), TypeError, "scale")
case("quantize_per_tensor(zp 1.5)", lambda: qtorch.quantize_per_tensor(X, 0.1, 1.5, "qint8"), TypeError, "zero_point")
case("quantize_per_tensor(zp 300)", lambda: qtorch.quantize_per_tensor(X, 0.1, 300, "qint8"), ValueError, "zero_point")
case("quantize_per_tensor(x None)", lambda: qtorch.quantize_per_tensor(None, 0.1, 0, "qint8"), TypeError, "x")
case("quantize_per_tensor(x complex)", lambda: qtorch.quantize_per_tensor(X + 1j, 0.1, 0, "qint8"), TypeError, "x")
case(
    "quantize_per_channel(zp int64 wide)",
    lambda: qtorch.quantize_per_channel(X, np.full(3, 0.1), np.array([0, 0, 2**40]), 0, "qint32"),
    ValueError,
    "zero_points",
)
case(
    "quantize_per_channel(scales complex)",
    lambda: qtorch.quantize_per_channel(X, np.full(3, 0.1 + 0j), np.zeros(3, np.int64), 0, "qint8"),
    TypeError,
    "scales",
)
case(
    "quantize_per_channel(scales None)",
    lambda: qtorch.quantize_per_channel(X, None, np.zeros(3, np.int64), 0, "qint8"),
    (TypeError, ValueError),
    "scales",
)
case(
    "fake_quantize_per_channel(scale shape)",
    lambda: qtorch.fake_quantize_per_channel_affine(X, np.full(2, 0.1), np.zeros(3, np.int64), 0, -128, 127),
    ValueError,
    r"\bscale\b",
)
case(
    "fake_quantize_per_channel(zero_point float)",
    lambda: qtorch.fake_quantize_per_channel_affine(X, np.full(3, 0.1), np.zeros(3), 0, -128, 127),
    TypeError,
    r"\bzero_point\b",
)
case(
    "fake_quantize_per_tensor(quant_min > max)",
    lambda: qtorch.fake_quantize_per_tensor_affine(X, 0.1, 0, 5, 3),
    ValueError,
    "quant_min",
)
case("min_max_observer(qscheme x)", lambda: qtorch.min_max_observer(X, "quint8", "x"), ValueError, "qscheme")
case("min_max_observer(empty)", lambda: qtorch.min_max_observer(np.zeros(0, np.float32)), ValueError, r"\bx\b")
case("min_max_observer(reduce_range 1)", lambda: qtorch.min_max_observer(X, reduce_range=1), TypeError, "reduce_range")

# ----------------------------------------------------------------------------------------------- runtimes: tflite
case(
    "srdhm([2**33])", lambda: qtflite.saturating_rounding_doubling_high_mul(np.int64([2**33]), 3), ValueError, r"\ba\b"
)
case("srdhm(float)", lambda: qtflite.saturating_rounding_doubling_high_mul(1.5, 3), TypeError, r"\ba\b")
case("srdhm(b None)", lambda: qtflite.saturating_rounding_doubling_high_mul(1, None), TypeError, r"\bb\b")
case(
    "srdhm(shapes)",
    lambda: qtflite.saturating_rounding_doubling_high_mul(np.int32([1, 2]), np.int32([1, 2, 3])),
    ValueError,
    "broadcast",
)
case("rdbpot(x 2**33)", lambda: qtflite.rounding_divide_by_pot(np.int64([2**33]), 2), ValueError, r"\bx\b")
case("rdbpot(exponent 2.5)", lambda: qtflite.rounding_divide_by_pot(np.int32([8]), 2.5), TypeError, "exponent")
case("rdbpot(exponent 40)", lambda: qtflite.rounding_divide_by_pot(np.int32([8]), 40), ValueError, "exponent")
case(
    "mbqm(x 2**33)", lambda: qtflite.multiply_by_quantized_multiplier(np.int64([2**33]), 2**30, 0), ValueError, r"\bx\b"
)
case("mbqm(shift 31)", lambda: qtflite.multiply_by_quantized_multiplier(ACC, 2**30, 31), ValueError, "shift")
case(
    "mbqm(multiplier float)",
    lambda: qtflite.multiply_by_quantized_multiplier(ACC, 0.5, 0),
    TypeError,
    "quantized_multiplier",
)
case("quantize_multiplier(nan)", lambda: qtflite.quantize_multiplier(np.nan), ValueError, "real_multiplier")
case("quantize_multiplier('0.5')", lambda: qtflite.quantize_multiplier("0.5"), TypeError, "real_multiplier")
case(
    "quantize_multiplier_array(complex)",
    lambda: qtflite.quantize_multiplier_array(np.array([0.5 + 1j])),
    TypeError,
    "real_multipliers",
)
case("quantize_multiplier_array(None)", lambda: qtflite.quantize_multiplier_array(None), TypeError, "real_multipliers")
case(
    "per_channel_multipliers(str)", lambda: qtflite.per_channel_multipliers(0.1, ["a"], 0.1), TypeError, "filter_scales"
)
case(
    "per_channel_multipliers(0 scale)",
    lambda: qtflite.per_channel_multipliers(0.0, [0.1], 0.1),
    ValueError,
    "input_scale",
)
case("tflite.quantize(x None)", lambda: qtflite.quantize(None, 0.1, 0, "int8"), TypeError, r"\bx\b")
case("tflite.quantize(scale subnormal)", lambda: qtflite.quantize(X, 1e-40, 0, "int8"), ValueError, "scale")
case("tflite.quantize(dtype int4)", lambda: qtflite.quantize(X, 0.1, 0, "int4"), ValueError, "dtype")
case(
    "fully_connected(x float)",
    lambda: qtflite.fully_connected(
        X, Q8, None, np.full(3, 2**30, np.int32), np.zeros(3, np.int32), input_zero_point=0, output_zero_point=0
    ),
    TypeError,
    r"\bx\b",
)
case(
    "fully_connected(bias int64 wide)",
    lambda: qtflite.fully_connected(
        Q8,
        Q8,
        np.array([0, 0, 2**40]),
        np.full(3, 2**30, np.int32),
        np.zeros(3, np.int32),
        input_zero_point=0,
        output_zero_point=0,
    ),
    ValueError,
    "bias",
)
case(
    "fully_connected(zp 200)",
    lambda: qtflite.fully_connected(
        Q8, Q8, None, np.full(3, 2**30, np.int32), np.zeros(3, np.int32), input_zero_point=200, output_zero_point=0
    ),
    ValueError,
    "input_zero_point",
)
case(
    "conv2d(padding 'same')",
    lambda: qtflite.conv2d(
        np.zeros((1, 4, 4, 1), np.int8),
        np.zeros((1, 2, 2, 1), np.int8),
        None,
        np.full(1, 2**30, np.int32),
        np.zeros(1, np.int32),
        input_zero_point=0,
        output_zero_point=0,
        padding="same",
    ),
    ValueError,
    "padding",
)
case("tflite.requantize(shift 40)", lambda: qtflite.requantize(ACC, 2**30, 40, 0, 0, 255), ValueError, "shift")

# ----------------------------------------------------------------------------------------------- testing, vectors
case("compare(expected None)", lambda: testing.compare(Q8, None), TypeError, "expected")
case("compare(expected complex)", lambda: testing.compare(Q8, X + 1j), TypeError, "expected")
case("compare(expected str)", lambda: testing.compare(Q8, np.array(["a"])), TypeError, "expected")
case("compare(max_report -1)", lambda: testing.compare(Q8, Q8, max_report=-1), ValueError, "max_report")
case("compare(max_report 2.5)", lambda: testing.compare(Q8, Q8, max_report=2.5), ValueError, "max_report")
case("format_report(not a Comparison)", lambda: testing.format_report("x"), TypeError, "comparison")
case("assert_matches(name 3)", lambda: testing.assert_matches(Q8, Q8, name=3), TypeError, "name")
case("encode(object)", lambda: vectors.encode(np.array([object()])), ValueError, "dtype")
case("encode(complex)", lambda: vectors.encode(np.array([1j])), ValueError, "dtype")
case("decode(int4 as int8)", lambda: vectors.decode(np.int8([1]), "int4"), ValueError, "int4")
case("decode(unknown)", lambda: vectors.decode(np.int8([1]), "int3"), ValueError, "int3")
case("evaluate(operator)", lambda: vectors.evaluate("onnx.Foo", "onnxruntime", {}, {}), ValueError, "operator")
case("evaluate(runtime)", lambda: vectors.evaluate("onnx.QuantizeLinear", "ort", {}, {}), ValueError, "runtime")
case(
    "evaluate(missing input)",
    lambda: vectors.evaluate("onnx.QuantizeLinear", "onnxruntime", {}, {}),
    ValueError,
    "y_scale|x",
)
case(
    "evaluate(inputs list)", lambda: vectors.evaluate("onnx.QuantizeLinear", "onnxruntime", [], {}), TypeError, "inputs"
)
case(
    "evaluate(bad scale)",
    lambda: vectors.evaluate("onnx.QuantizeLinear", "onnxruntime", {"x": X, "y_scale": np.float32(0)}, {}),
    ValueError,
    "y_scale",
)
case("load_manifest(None)", lambda: vectors.load_manifest(None), TypeError, "vectors_dir")
case("load_manifest(missing)", lambda: vectors.load_manifest("/nonexistent/vectors"), ValueError, "vectors")
case("write_vectors(force 'yes')", lambda: vectors.write_vectors("/nonexistent/x", force="yes"), TypeError, "force")
case("write_vectors(out_dir None)", lambda: vectors.write_vectors(None), TypeError, "out_dir")
case("write_vectors(under /proc)", lambda: vectors.write_vectors("/proc/quantref-vectors"), ValueError, "out_dir")
case(
    "write_vectors(cases 3)", lambda: vectors.write_vectors("/tmp/quantref-never-written", cases=3), TypeError, "cases"
)
case("check(vectors_dir missing)", lambda: vectors.check("/nonexistent/v", "/nonexistent/r"), ValueError, "vectors")
case(
    "check(max_report -2)",
    lambda: vectors.check("/nonexistent/v", "/nonexistent/r", max_report=-2),
    ValueError,
    "max_report",
)


case("true_divide(None)", lambda: affine.true_divide(None, 1.0), TypeError, "numerator")
case("true_divide('a')", lambda: affine.true_divide(X, "a"), TypeError, "denominator")
case("true_divide(complex)", lambda: affine.true_divide(X + 1j, 1.0), TypeError, "numerator")
case("expand_param(None)", lambda: affine.expand_param(None, (3, 4), None, None), TypeError, "param")
case("run_model(junk bytes)", lambda: qonnx_graph.run_model(b"junk", {}), (ValueError, ImportError), "model|onnx")
case(
    "run_model(missing file)",
    lambda: qonnx_graph.run_model("/nonexistent/m.onnx", {}),
    (ValueError, ImportError),
    "model|onnx",
)
case("format_check(None)", lambda: vectors.format_check(None), TypeError, "report")
case("decode(None)", lambda: vectors.decode(None, "int8"), TypeError, "stored")
case("decode(dtype 3)", lambda: vectors.decode(np.int8([1]), 3), TypeError, "dtype")
case("encode(None)", lambda: vectors.encode(None), TypeError, "array")
case("load_case(entry without file)", lambda: vectors.load_case("/tmp", {"id": "a"}), ValueError, "entry")
case("load_case(vectors_dir None)", lambda: vectors.load_case(None, {}), TypeError, "vectors_dir")


@pytest.mark.parametrize(("thunk", "errors", "match"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_a_clear_error(thunk, errors, match):
    with pytest.raises(Exception) as info:
        thunk()
    assert isinstance(info.value, errors), f"{type(info.value).__name__}: {info.value}"
    assert re.search(match, str(info.value)), f"the message does not name {match!r}: {info.value}"


def test_there_are_at_least_150_bad_inputs():
    assert len(CASES) + len(DOCUMENTED) >= 150, len(CASES) + len(DOCUMENTED)


# ------------------------------------------------------------------------------------------------------------------
# Inputs that are valid though unusual: each returns the documented result


def _empty_batch_ranges():
    return ranges.calibrate(ranges.min_max(axis=1), [np.zeros((0, 4), np.float32)])


DOCUMENTED = [
    # Valid numpy scalars are accepted as their Python counterparts.
    (
        "min_scale np.float32",
        lambda: affine.scale_zero_point(-1.0, 1.0, INT8, min_scale=np.float32(1e-3)),
        lambda r: float(r[0]) == float(np.float32(2.0 / 255)),
    ),
    (
        "momentum np.float32",
        lambda: ranges.moving_average_min_max(np.float32(0.5)),
        lambda r: isinstance(r, ranges.Observer),
    ),
    ("percentile np.int64", lambda: ranges.percentile(np.int64(99)), lambda r: isinstance(r, ranges.Observer)),
    ("IntFormat(np.int64(8))", lambda: formats.IntFormat(np.int64(8)), lambda r: r == INT8 and type(r.bits) is int),
    (
        "zero_point np.int64 in range",
        lambda: affine.quantize(X, 0.1, np.int64(3), INT8),
        lambda r: np.array_equal(np.asarray(r), np.asarray(affine.quantize(X, 0.1, 3, INT8))),
    ),
    (
        "torch scale np.float32",
        lambda: qtorch.quantize_per_tensor(X, np.float32(0.1), np.int64(3), "qint8"),
        lambda r: r.dtype == jnp.int8,
    ),
    (
        "tflite quantize_multiplier np.float32",
        lambda: qtflite.quantize_multiplier(np.float32(0.5)),
        lambda r: r == (2**30, 0),
    ),
    # Empty inputs give empty results (or the documented empty-range value).
    (
        "quantize empty",
        lambda: affine.quantize(np.zeros((0, 3), np.float32), 0.1, 0, INT8),
        lambda r: r.shape == (0, 3) and r.dtype == jnp.int8,
    ),
    ("fake_quant empty", lambda: affine.fake_quant(np.zeros(0, np.float32), 0.1, 0, INT8), lambda r: r.shape == (0,)),
    ("dequantize empty", lambda: affine.dequantize(np.zeros(0, np.int8), 0.1, 0), lambda r: r.shape == (0,)),
    ("pack_int empty", lambda: formats.pack_int(np.zeros(0, np.int8), 4), lambda r: r.shape == (0,)),
    ("round_to_int empty", lambda: rounding.round_to_int(np.zeros(0, np.float32)), lambda r: r.shape == (0,)),
    (
        "quantize_linear empty",
        lambda: qonnx.quantize_linear(np.zeros((0, 2), np.float32), 0.1),
        lambda r: r.shape == (0, 2),
    ),
    (
        "dynamic_quantize_linear empty (scale 1)",
        lambda: qonnx.dynamic_quantize_linear(np.zeros(0, np.float32)),
        lambda r: r[0].shape == (0,) and float(r[1]) == 1.0,
    ),
    (
        "matmul_integer empty batch",
        lambda: qonnx.matmul_integer(np.zeros((0, 4), np.int8), Q8.T),
        lambda r: r.shape == (0, 3),
    ),
    (
        "requantize empty",
        lambda: qonnx.requantize(np.zeros(0, np.int32), np.float32(0.5), 0, 0, 255),
        lambda r: r.shape == (0,),
    ),
    (
        "torch quantize empty",
        lambda: qtorch.quantize_per_tensor(np.zeros(0, np.float32), 0.1, 0, "quint8"),
        lambda r: r.shape == (0,),
    ),
    (
        "tflite quantize empty",
        lambda: qtflite.quantize(np.zeros(0, np.float32), 0.1, 0, "int8"),
        lambda r: r.shape == (0,),
    ),
    (
        "min_max of an empty batch: per-channel (0, 0)",
        _empty_batch_ranges,
        lambda r: np.array_equal(np.asarray(r[0]), np.zeros(4)) and np.array_equal(np.asarray(r[1]), np.zeros(4)),
    ),
    (
        "compare of empty arrays",
        lambda: testing.compare(np.zeros(0, np.int8), np.zeros(0, np.int8)),
        lambda r: r.ok and r.size == 0,
    ),
    ("compare None actual is a mismatch", lambda: testing.compare(None, Q8), lambda r: not r.ok and r.error),
    ("compare ragged actual is a mismatch", lambda: testing.compare([[1], [1, 2]], Q8), lambda r: not r.ok),
    # A traced ReLU bound in requantize: the exact path is chosen at run time.
    (
        "requantize wide bounds traced",
        lambda: jax.jit(qonnx.requantize)(
            np.int32([2**30 + 128]), np.float32(1.0), jnp.int32(0), jnp.int32(-(2**31)), jnp.int32(2**31 - 1)
        ),
        lambda r: int(r[0]) == 2**30 + 128,
    ),
]


@pytest.mark.parametrize(("thunk", "check"), [d[1:] for d in DOCUMENTED], ids=[d[0] for d in DOCUMENTED])
def test_unusual_but_valid_inputs_give_the_documented_result(thunk, check):
    assert check(thunk())


# ------------------------------------------------------------------------------------------------------------------
# Property-based: whole classes of bad inputs


WIDE_INTS = st.one_of(st.integers(2**31, 2**62), st.integers(-(2**62), -(2**31) - 1))


@settings(max_examples=25, deadline=None)
@given(WIDE_INTS)
def test_zero_points_beyond_int32_never_wrap(value):
    for call in (
        lambda: affine.quantize(X, 0.1, np.int64(value), INT8),
        lambda: affine.fake_quant(X, 0.1, np.array(value, np.int64), INT8),
        lambda: affine.dequantize(Q8, 0.1, np.int64(value)),
    ):
        with pytest.raises(ValueError, match="zero_point"):
            call()


@settings(max_examples=25, deadline=None)
@given(hnp.arrays(np.int64, st.integers(1, 6), elements=WIDE_INTS))
def test_int64_arrays_beyond_int32_are_refused_by_the_integer_kernels(values):
    with pytest.raises(ValueError, match="values"):
        formats.pack_int(values, 4)
    with pytest.raises(ValueError, match=r"\ba\b"):
        qtflite.saturating_rounding_doubling_high_mul(values, np.int32(3))
    with pytest.raises(ValueError, match=r"\bx\b"):
        qtflite.rounding_divide_by_pot(values, 1)
    with pytest.raises(ValueError, match=r"\bx\b"):
        qtflite.multiply_by_quantized_multiplier(values, 2**30, 0)
    with pytest.raises(ValueError, match="acc"):
        qonnx.requantize(values, np.float32(0.5), 0, 0, 255)
    with pytest.raises(ValueError, match="acc"):
        qtflite.requantize(values, 2**30, 0, 0, 0, 255)


@settings(max_examples=30, deadline=None)
@given(st.floats(0, float(np.finfo(np.float32).tiny), exclude_max=True, width=32))
def test_subnormal_scales_are_refused_everywhere(scale):
    scale = np.float32(scale)
    for call, name in (
        (lambda: affine.quantize(X, scale, 0, INT8), "scale"),
        (lambda: affine.fake_quant(X, scale, 0, INT8), "scale"),
        (lambda: affine.dequantize(Q8, scale, 0), "scale"),
        (lambda: qonnx.quantize_linear(X, scale), "y_scale"),
        (lambda: qtorch.quantize_per_tensor(X, float(scale), 0, "qint8"), "scale"),
        (lambda: qtflite.quantize(X, float(scale), 0, "int8"), "scale"),
    ):
        with pytest.raises(ValueError, match=name):
            call()


@settings(max_examples=30, deadline=None)
@given(
    st.one_of(
        st.none(),
        st.text(max_size=3),
        st.complex_numbers(allow_nan=False, allow_infinity=False).filter(lambda z: z.imag != 0),
        st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
    )
)
def test_non_arrays_are_named_not_passed_to_jax(value):
    for call, name in (
        (lambda: affine.quantize(value, 0.1, 0, INT8), "x"),
        (lambda: affine.scale_zero_point(value, 1.0, INT8), "min_val"),
        (lambda: rounding.round_to_int(value), "x"),
        (lambda: qonnx.quantize_linear(value, 0.1), "x"),
        (lambda: qtorch.quantize_per_tensor(value, 0.1, 0, "qint8"), "x"),
        (lambda: qtflite.rounding_divide_by_pot(value, 1), "x"),
        (lambda: ranges.calibrate(ranges.min_max(), [value]), "x"),
    ):
        with pytest.raises((TypeError, ValueError), match=rf"\b{name}\b"):
            call()


@settings(max_examples=20, deadline=None)
@given(st.sampled_from([1e-45, 1e-42, 0.0, -1.0, float("inf"), float("nan"), 3.5e38, 1e39]))
def test_min_scale_never_gives_a_zero_or_infinite_scale(min_scale):
    with pytest.raises(ValueError, match="min_scale"):
        affine.scale_zero_point(0.0, 0.0, INT8, min_scale=min_scale)


@settings(max_examples=20, deadline=None)
@given(st.floats(1e-30, 1e30), st.floats(1e-30, 1e30))
def test_scale_zero_point_is_finite_normal_or_refused(low, high):
    try:
        scale, _ = affine.scale_zero_point(-low, high, INT8)
    except ValueError as error:
        assert "max_val - min_val" in str(error) or "min_val" in str(error) or "max_val" in str(error)
        return
    scale = float(scale)
    assert np.isfinite(scale) and scale >= float(np.finfo(np.float32).tiny)


def test_sub_byte_ml_dtypes_are_accepted_where_documented():
    q = np.array([-8, 7], ml_dtypes.int4)
    np.testing.assert_array_equal(np.asarray(affine.dequantize(q, 1.0, 0)), [-8.0, 7.0])
