"""The runtimes' requantization (onnx.requantize, tflite.requantize) against exact integer references."""

from __future__ import annotations

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quantref.runtimes import onnx as qonnx
from quantref.runtimes import tflite as qtflite

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
RNG = np.random.default_rng(7)
ACC = np.concatenate(
    [
        RNG.integers(INT32_MIN, INT32_MAX, 3000, endpoint=True),
        RNG.integers(-(2**16), 2**16, 3000),
        np.arange(-300, 300),
        [INT32_MIN, INT32_MIN + 1, INT32_MAX, INT32_MAX - 1, 2**24 + 1, -(2**24) - 1],
    ]
).astype(np.int32)
BOUNDS = [  # (zero_point, qmin, qmax)
    (3, 0, 255),
    (-7, -128, 127),
    (5, 5, 255),  # a ReLU: qmin = zero point
    (1000, -32768, 32767),
    (2**21, -(2**22), 2**22 + 100),  # past the magic-number rounding's range: the exact path
    (0, INT32_MIN, INT32_MAX),
    (-100, INT32_MIN, INT32_MAX - 100),
    (7, INT32_MIN + 7, INT32_MAX),
]
MULTIPLIERS = [0.5, 1.0, 1e-3, 3.7e-7, 1.3, 1e3, 0.0123456]


def onnxruntime_reference(acc, multiplier, zero_point, qmin, qmax):
    """clamp(rne(f32(f32(acc) * M)) + z) with Python integers: no wrap, no float rounding but the two float32 ones."""
    scaled = acc.astype(np.float32) * np.float32(multiplier)  # numpy rounds f32(acc) and the product to float32
    return np.clip(np.rint(scaled.astype(np.float64)).astype(object) + zero_point, qmin, qmax).astype(np.int64)


@pytest.mark.parametrize("multiplier", MULTIPLIERS)
@pytest.mark.parametrize(("zero_point", "qmin", "qmax"), BOUNDS)
def test_onnx_requantize_is_exact(multiplier, zero_point, qmin, qmax):
    expected = onnxruntime_reference(ACC, multiplier, zero_point, qmin, qmax)
    eager = qonnx.requantize(ACC, np.float32(multiplier), zero_point, qmin, qmax)
    assert eager.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(eager, np.int64), expected)
    # Traced bounds (a ReLU's qmin under jit): the rounding is chosen at run time, with the same result.
    traced = jax.jit(qonnx.requantize)(ACC, jnp.float32(multiplier), jnp.int32(zero_point), jnp.int32(qmin), qmax)
    np.testing.assert_array_equal(np.asarray(traced, np.int64), expected)


def test_onnx_requantize_rounds_half_to_even_before_adding_the_zero_point():
    acc = np.arange(-9, 10, dtype=np.int32)  # M = 1/2: every odd acc is a tie
    got = np.asarray(qonnx.requantize(acc, np.float32(0.5), 3, 0, 255))
    np.testing.assert_array_equal(got, np.clip(np.rint(acc / 2) + 3, 0, 255))
    # Adding z before rounding (the reference evaluator) would give rint(acc / 2 + 3): different for odd acc.
    assert not np.array_equal(got, np.clip(np.rint(acc / 2 + 3), 0, 255))


def test_onnx_requantize_per_channel_and_relu():
    acc = RNG.integers(-50000, 50000, (4, 5, 6)).astype(np.int32)
    multiplier = RNG.uniform(1e-4, 1e-2, 6).astype(np.float32)
    zero_point = np.int32(-5)
    got = qonnx.requantize(acc, multiplier, zero_point, max(-128, int(zero_point)), 127)
    expected = np.clip(np.rint((acc.astype(np.float32) * multiplier).astype(np.float64)) - 5, -5, 127)
    np.testing.assert_array_equal(np.asarray(got), expected)


def test_onnx_requantize_is_qlinear_matmul_output_stage():
    a = RNG.integers(0, 256, (8, 32)).astype(np.uint8)
    b = RNG.integers(-128, 128, (32, 4)).astype(np.int8)
    sa, sb, sy = np.float32(0.0173), np.float32(0.0091), np.float32(0.0537)
    acc = (a.astype(np.int32) - 131) @ b.astype(np.int32)
    multiplier = np.float32(np.float32(sa * sb) / sy)
    expected = qonnx.qlinear_matmul(a, sa, np.uint8(131), b, sb, np.int8(0), sy, np.uint8(120))
    got = qonnx.requantize(acc, multiplier, 120, 0, 255)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(expected).astype(np.int32))


def _mbqm_exact(x: int, quantized_multiplier: int, shift: int) -> int:
    """Double-rounding MBQM with Python integers (gemmlowp's definition, no 64-bit emulation)."""
    left, right = max(shift, 0), max(-shift, 0)
    scaled = ((x << left) + 2**31) % 2**32 - 2**31  # the int32 left shift wraps
    if scaled == quantized_multiplier == INT32_MIN:
        high = INT32_MAX
    else:
        product = scaled * quantized_multiplier
        nudge = 2**30 if product >= 0 else 1 - 2**30
        high = int(Fraction(product + nudge, 2**31))  # truncation towards zero
    mask = (1 << right) - 1
    remainder, threshold = high & mask, (mask >> 1) + (high < 0)
    return (high >> right) + (remainder > threshold)


@pytest.mark.parametrize("real_multiplier", [0.0037, 0.5, 0.75, 1.7, 3.05e-5])
@pytest.mark.parametrize(("zero_point", "qmin", "qmax"), [(3, 0, 255), (-7, -128, 127), (6, 6, 127), (100, -100, 500)])
def test_tflite_requantize_matches_python_integers(real_multiplier, zero_point, qmin, qmax):
    quantized_multiplier, shift = qtflite.quantize_multiplier(real_multiplier)
    acc = ACC[::7]
    wrapped = [((_mbqm_exact(int(x), quantized_multiplier, shift) + zero_point + 2**31) % 2**32) - 2**31 for x in acc]
    expected = np.clip(np.array(wrapped, np.int64), qmin, qmax)
    got = qtflite.requantize(acc, quantized_multiplier, shift, zero_point, qmin, qmax)
    np.testing.assert_array_equal(np.asarray(got, np.int64), expected)
    traced = jax.jit(qtflite.requantize)(acc, quantized_multiplier, shift, jnp.int32(zero_point), jnp.int32(qmin), qmax)
    np.testing.assert_array_equal(np.asarray(traced, np.int64), expected)


def test_tflite_requantize_single_rounding_and_per_channel():
    multipliers, shifts = qtflite.quantize_multiplier_array(np.array([0.002, 0.013, 0.7]))
    acc = RNG.integers(-(2**20), 2**20, (5, 3)).astype(np.int32)
    for single in (False, True):
        expected = np.clip(
            np.asarray(qtflite.multiply_by_quantized_multiplier(acc, multipliers, shifts, single_rounding=single)) - 4,
            -128,
            127,
        )
        got = qtflite.requantize(acc, multipliers, shifts, -4, -128, 127, single_rounding=single)
        np.testing.assert_array_equal(np.asarray(got), expected)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: qonnx.requantize(np.int64([2**33]), np.float32(0.5), 0, 0, 255), ValueError, "acc"),
        (lambda: qonnx.requantize(np.float32([1.5]), np.float32(0.5), 0, 0, 255), TypeError, "acc"),
        (lambda: qonnx.requantize(np.int32([1]), 0.0, 0, 0, 255), ValueError, "multiplier"),
        (lambda: qonnx.requantize(np.int32([1]), np.float32(1e-40), 0, 0, 255), ValueError, "multiplier"),
        (lambda: qonnx.requantize(np.int32([1]), np.nan, 0, 0, 255), ValueError, "multiplier"),
        (lambda: qonnx.requantize(np.int32([1]), 3, 0, 0, 255), TypeError, "multiplier"),
        (lambda: qonnx.requantize(np.int32([1]), 0.5, 1.5, 0, 255), TypeError, "zero_point"),
        (lambda: qonnx.requantize(np.int32([1]), 0.5, np.int64(2**32 + 3), 0, 255), ValueError, "zero_point"),
        (lambda: qonnx.requantize(np.int32([1]), 0.5, 0, 10, 5), ValueError, "qmin"),
        (lambda: qonnx.requantize(np.int32([1]), 0.5, 5, INT32_MIN, 0), ValueError, "qmin - zero_point"),
        (lambda: qonnx.requantize(None, 0.5, 0, 0, 255), TypeError, "acc"),
        (lambda: qonnx.requantize(np.int32([1, 2]), np.float32([1, 2, 3]), 0, 0, 255), ValueError, "broadcast"),
        (lambda: qtflite.requantize(np.int32([1]), 2**30, 40, 0, 0, 255), ValueError, "shift"),
        (lambda: qtflite.requantize(np.int32([1]), 2**33, 0, 0, 0, 255), ValueError, "quantized_multiplier"),
        (lambda: qtflite.requantize(np.int32([1]), 2**30, 0, 0, 9, 3), ValueError, "qmin"),
        (lambda: qtflite.requantize(np.int32([1]), 2**30, 0, 0.5, 0, 3), TypeError, "zero_point"),
        (lambda: qtflite.requantize(np.int32([1]), 2**30, 0, 0, 0, 3, single_rounding=1), TypeError, "single_rounding"),
    ],
)
def test_requantize_rejects_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()
