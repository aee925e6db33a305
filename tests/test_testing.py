"""quantref.testing: exact comparison and its report, in LSBs, float8 codes and ulps."""

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from quantref.testing import assert_matches, compare, format_report


def test_equal_arrays_pass_for_every_kind():
    assert_matches(np.arange(10, dtype=np.uint8), np.arange(10, dtype=np.uint8))
    assert_matches(jnp.arange(-8, 8, dtype=jnp.int4), np.arange(-8, 8).astype(ml_dtypes.int4))  # JAX in, numpy out
    codes = np.arange(256, dtype=np.uint8)
    e4m3 = codes.view(ml_dtypes.float8_e4m3fn)
    assert_matches(e4m3, e4m3)  # includes both NaN codes: equal bits
    assert_matches(codes, e4m3)  # raw bit patterns in uint8 are accepted for float8
    assert_matches(np.array([1.5, -0.0, np.inf], np.float32), np.array([1.5, -0.0, np.inf], np.float32))


def test_integer_mismatch_report_names_index_values_and_lsb():
    expected = np.arange(20, dtype=np.uint8).reshape(4, 5)
    actual = expected.copy()
    actual[2, 3] += 1
    actual[0, 1] -= 1
    actual[3, 4] += 3
    with pytest.raises(AssertionError) as info:
        assert_matches(actual, expected, name="y")
    message = str(info.value)
    assert "y: 3 of 20 elements differ; largest |diff| 3 LSB" in message
    lines = message.strip().splitlines()
    # the worst element first, then the rest by index
    assert lines[2].split() == ["(3,", "4)", "19", "22", "+3", "LSB"]
    assert lines[3].split() == ["(0,", "1)", "1", "0", "-1", "LSB"]
    assert lines[4].split() == ["(2,", "3)", "13", "14", "+1", "LSB"]


def test_max_report_limits_the_listed_elements_not_the_count():
    expected = np.zeros(100, np.int32)
    comparison = compare(np.arange(100, dtype=np.int32), expected, max_report=4)
    assert comparison.mismatches == 99 and len(comparison.worst) == 4
    assert [m.index for m in comparison.worst] == [(99,), (98,), (97,), (96,)]
    assert comparison.max_abs_diff == 99


def test_wider_integer_results_compare_by_value_and_sub_byte_by_bit_pattern():
    expected = np.array([-8, -3, 0, 7], ml_dtypes.int4)
    assert compare(np.array([-8, -3, 0, 7], np.int8), expected).ok  # values in a wider integer type
    assert compare(np.array([0x8, 0xD, 0x0, 0x7], np.uint8), expected).ok  # raw bit patterns
    assert compare(np.array([-8, -3, 0, 7], np.int64), np.array([-8, -3, 0, 7], np.int16)).ok
    assert compare(np.array([-8, -2, 0, 7], np.int8), expected).worst[0].diff == 1


def test_float_nan_equals_nan_but_signed_zero_and_ulps_count():
    expected = np.array([np.nan, 1.0, 0.0, 2.0, 5.0], np.float32)
    quiet_other_payload = np.array([0x7FC00001], np.uint32).view(np.float32)[0]
    actual = np.array([quiet_other_payload, np.nextafter(np.float32(1), np.float32(2)), -0.0, np.nan, 5.0], np.float32)
    comparison = compare(actual, expected)
    assert comparison.mismatches == 3
    by_index = {m.index: m for m in comparison.worst}
    assert by_index[(1,)].diff == 1  # one ulp
    assert by_index[(2,)].diff == 0  # +0 vs -0: different bits, no distance
    assert np.isnan(by_index[(3,)].diff)  # NaN vs a number
    assert comparison.worst[0].index == (3,)  # NaN against a number ranks first
    report = format_report(comparison, "y")
    assert "+1 ulp" in report and "sign of zero" in report and "NaN vs number" in report
    assert "1.0000001 (0x3f800001)" in report  # the shortest float32 text and the bits


def test_float8_difference_is_counted_in_codes():
    expected = np.array([448, -448, 1.0, 0.0], ml_dtypes.float8_e4m3fn)
    actual = np.array([416, -448, 1.125, 2**-9], ml_dtypes.float8_e4m3fn)
    comparison = compare(actual, expected)
    assert comparison.unit == "code"
    assert sorted((m.index[0], m.diff) for m in comparison.worst) == [(0, -1.0), (2, 1.0), (3, 1.0)]
    with pytest.raises(AssertionError, match=r"448 \(0x7e\)\s+416 \(0x7d\)\s+-1 code"):
        assert_matches(actual, expected)


def test_shape_and_dtype_problems_are_reported_not_crashed():
    with pytest.raises(AssertionError, match=r"shape \(3,\) differs from the expected \(4,\)"):
        assert_matches(np.zeros(3, np.uint8), np.zeros(4, np.uint8))
    with pytest.raises(AssertionError, match="expected integers"):
        assert_matches(np.zeros(4, np.float32), np.zeros(4, np.uint8))
    with pytest.raises(AssertionError, match="float8_e5m2 values as that dtype or as their raw bit patterns"):
        assert_matches(np.zeros(4, np.float32), np.zeros(4, ml_dtypes.float8_e5m2))
    with pytest.raises(AssertionError, match="compared bit for bit"):
        assert_matches(np.zeros(4, np.float64), np.zeros(4, np.float32))


def test_sub_byte_raw_bits_require_zero_high_bits():
    expected = np.array([-3, 5], ml_dtypes.int4)
    assert compare(np.uint8([0x0D, 0x05]), expected).ok
    garbage = compare(np.uint8([0x1D, 0xF5]), expected)
    assert not garbage.ok and garbage.mismatches == 2
    assert {m.actual for m in garbage.worst} == {"29", "245"}  # the raw bytes, outside int4's range
    assert compare(np.uint8([0x03, 0x02]), np.array([-1, -2], ml_dtypes.int2)).ok
    assert compare(np.uint8([0x07]), np.array([3], ml_dtypes.uint2)).mismatches == 1
    assert compare(np.uint8([0x1F]), np.array([15], ml_dtypes.uint4)).mismatches == 1
    assert compare(np.uint8([0x0F]), np.array([15], ml_dtypes.uint4)).ok


def test_huge_uint64_does_not_wrap():
    result = compare(np.uint64([2**64 - 1, 5]), np.int8([-1, 5]))
    assert not result.ok and result.mismatches == 1
    assert result.worst[0].actual == str(2**64 - 1) and result.worst[0].diff == float(2**64)
    assert compare(np.uint64([2**64 - 1]), np.uint64([2**64 - 1])).ok
    assert compare(np.uint64([2**63]), np.int64([-(2**63)])).mismatches == 1
    assert compare(np.int64([7]), np.uint64([7])).ok


@pytest.mark.parametrize("max_report", [-1, -10])
def test_negative_max_report_is_rejected(max_report):
    with pytest.raises(ValueError, match="max_report"):
        compare(np.int8([1]), np.int8([1]), max_report=max_report)
    with pytest.raises(ValueError, match="max_report"):
        assert_matches(np.int8([1]), np.int8([2]), max_report=max_report)


def test_max_report_zero_counts_without_listing():
    result = compare(np.int8([1, 2]), np.int8([0, 0]), max_report=0)
    assert result.mismatches == 2 and result.worst == ()
