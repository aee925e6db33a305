"""Tests for quantref.formats: integer grids, sub-byte packing, float8 casts."""

import math

import hypothesis.strategies as st
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings

from quantref import formats

# --- integer grids -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", range(1, 17))
def test_qmin_qmax_levels_follow_the_power_of_two_formulas(bits):
    signed = formats.int_format(bits, signed=True)
    assert (signed.qmin, signed.qmax, signed.levels) == (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1, 2**bits)
    unsigned = formats.int_format(bits, signed=False)
    assert (unsigned.qmin, unsigned.qmax, unsigned.levels) == (0, 2**bits - 1, 2**bits)
    if bits >= 2:
        narrow = formats.int_format(bits, narrow_range=True)
        assert (narrow.qmin, narrow.qmax, narrow.levels) == (-(2 ** (bits - 1)) + 1, 2 ** (bits - 1) - 1, 2**bits - 1)
        assert narrow.qmin == -narrow.qmax


@pytest.mark.parametrize("bits", range(1, 17))
@pytest.mark.parametrize("signed", [True, False])
def test_storage_dtype_is_the_smallest_that_holds_the_grid(bits, signed):
    fmt = formats.int_format(bits, signed=signed)
    info = np.iinfo(fmt.storage_dtype)
    assert info.min <= fmt.qmin and fmt.qmax <= info.max
    assert fmt.storage_dtype.itemsize == (1 if bits <= 8 else 2)
    assert (info.min < 0) == signed


def test_named_constants_and_names():
    assert formats.INT8 == formats.int_format(8)
    assert formats.UINT8 == formats.int_format(8, signed=False)
    assert formats.INT4 == formats.int_format(4)
    assert formats.UINT4 == formats.int_format(4, signed=False)
    assert formats.INT16 == formats.int_format(16)
    assert formats.INT32 == formats.int_format(32, max_bits=32)
    assert (formats.INT32.qmin, formats.INT32.qmax) == (-(2**31), 2**31 - 1)
    assert formats.INT8.name == "int8"
    assert formats.UINT4.name == "uint4"
    assert formats.int_format(8, narrow_range=True).name == "int8n"


@pytest.mark.parametrize("bits", [0, 17, -3])
def test_int_format_rejects_bits_out_of_range(bits):
    with pytest.raises(ValueError, match="bits"):
        formats.int_format(bits)


@pytest.mark.parametrize("bits", [1.5, True, "8", None, 8.0])
def test_int_format_rejects_bits_that_are_not_ints(bits):
    with pytest.raises(TypeError, match="bits"):
        formats.int_format(bits)


def test_int_format_rejects_bad_signed_and_narrow_range():
    with pytest.raises(TypeError, match="signed"):
        formats.int_format(8, signed=1)
    with pytest.raises(TypeError, match="narrow_range"):
        formats.int_format(8, narrow_range="yes")
    with pytest.raises(ValueError, match="narrow_range"):
        formats.int_format(8, signed=False, narrow_range=True)
    with pytest.raises(ValueError, match="narrow_range"):
        formats.int_format(1, narrow_range=True)


# --- packing -----------------------------------------------------------------------------------------------------


def _reference_pack(values: list[int], bits: int) -> bytes:
    """Slow pack: element i goes to byte i // per_byte at bit offset bits * (i % per_byte)."""
    per_byte = 8 // bits
    out = bytearray(math.ceil(len(values) * bits / 8))
    for i, v in enumerate(values):
        out[i // per_byte] |= (v % (1 << bits)) << (bits * (i % per_byte))
    return bytes(out)


@st.composite
def _codes(draw):
    bits = draw(st.sampled_from([1, 2, 4]))
    signed = draw(st.booleans())
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    # Few distinct lengths keep the number of compiled shapes small; odd ones exercise the padding.
    length = draw(st.sampled_from([0, 1, 3, 7, 8, 13, 33]))
    values = draw(st.lists(st.integers(lo, hi), min_size=length, max_size=length))
    return bits, signed, values


@settings(max_examples=60, deadline=None)
@given(_codes())
def test_pack_unpack_round_trip_and_layout(case):
    bits, signed, values = case
    array = np.array(values, np.int8 if signed else np.uint8)
    packed = formats.pack_int(array, bits)
    assert packed.dtype == np.uint8
    assert packed.shape == (math.ceil(len(values) * bits / 8),)
    assert np.asarray(packed).tobytes() == _reference_pack(values, bits)
    unpacked = formats.unpack_int(packed, bits, signed, len(values))
    assert unpacked.dtype == (np.int8 if signed else np.uint8)
    np.testing.assert_array_equal(np.asarray(unpacked), array)


def test_pack_first_element_in_low_nibble_hand_built_bytes():
    # int4 [1, 2] -> 0x21; [-1, 0] -> 0x0F (two's complement 1111 in the low nibble); [0, -8] -> 0x80.
    np.testing.assert_array_equal(formats.pack_int(np.array([1, 2, -1, 0, 0, -8], np.int8), 4), [0x21, 0x0F, 0x80])
    # Odd length: the last byte's high nibble is padding (zero).
    np.testing.assert_array_equal(formats.pack_int(np.array([7], np.int8), 4), [0x07])
    # 2 bits: [1, 2, 3, 0] -> 0b00_11_10_01.
    np.testing.assert_array_equal(formats.pack_int(np.array([1, 2, 3, 0], np.uint8), 2), [0b00111001])
    # 1 bit: element 0 is bit 0.
    np.testing.assert_array_equal(formats.pack_int(np.array([1, 0, 1, 1, 0, 0, 0, 1], np.uint8), 1), [0b10001101])
    np.testing.assert_array_equal(formats.unpack_int(np.array([0x21], np.uint8), 4, True, 2), [1, 2])
    np.testing.assert_array_equal(formats.unpack_int(np.array([0xF8], np.uint8), 4, True, 2), [-8, -1])
    np.testing.assert_array_equal(formats.unpack_int(np.array([0xF8], np.uint8), 4, False, 2), [8, 15])


def test_pack_nibbles_match_ml_dtypes_int4_bit_patterns():
    values = np.arange(-8, 8, dtype=np.int8)
    nibbles = values.astype(ml_dtypes.int4).view(np.uint8) & 0x0F
    packed = np.asarray(formats.pack_int(values, 4))
    np.testing.assert_array_equal(packed & 0x0F, nibbles[0::2])
    np.testing.assert_array_equal(packed >> 4, nibbles[1::2])
    unsigned = np.arange(16, dtype=np.uint8)
    np.testing.assert_array_equal(
        np.asarray(formats.unpack_int(formats.pack_int(unsigned, 4), 4, False, 16)),
        unsigned.astype(ml_dtypes.uint4).astype(np.uint8),
    )


def test_pack_keeps_shape_order_c_flattened():
    values = np.array([[1, 2, 3], [4, 5, 6]], np.int8)
    np.testing.assert_array_equal(formats.pack_int(values, 4), [0x21, 0x43, 0x65])


@pytest.mark.parametrize("bits", [0, 3, 8, 4.0, True])
def test_pack_and_unpack_reject_bad_bits(bits):
    with pytest.raises(ValueError, match="bits"):
        formats.pack_int(np.zeros(4, np.int8), bits)
    with pytest.raises(ValueError, match="bits"):
        formats.unpack_int(np.zeros(2, np.uint8), bits, True, 4)


def test_pack_rejects_values_that_do_not_fit():
    with pytest.raises(TypeError, match="values"):
        formats.pack_int(np.array([0.5, 1.0], np.float32), 4)
    # 4 bits hold -8..15 (int4 or uint4 codes); 16, -9 and 300 would be silently truncated, so they are refused.
    for bad in ([16], [-9], [0, 1, 300]):
        with pytest.raises(ValueError, match="values"):
            formats.pack_int(np.array(bad, np.int32), 4)
    with pytest.raises(ValueError, match="values"):
        formats.pack_int(np.array([2], np.int8), 1)


def test_unpack_rejects_bad_dtype_and_count():
    with pytest.raises(TypeError, match="packed"):
        formats.unpack_int(np.zeros(2, np.int8), 4, True, 4)
    with pytest.raises(ValueError, match="count"):
        formats.unpack_int(np.zeros(2, np.uint8), 4, True, 5)
    with pytest.raises(ValueError, match="count"):
        formats.unpack_int(np.zeros(2, np.uint8), 4, True, -1)


# --- float8 ------------------------------------------------------------------------------------------------------


def test_float8_max_from_the_bit_layouts():
    # e4m3fn: bias 7, top exponent field 15 with mantissa 110 (111 is NaN): 2^8 * 1.75.
    assert formats.float8_max("float8_e4m3fn") == 2.0**8 * 1.75 == 448.0
    # e4m3fnuz: bias 8, top exponent field 15 with mantissa 111 (only 0x80 is NaN): 2^7 * 1.875.
    assert formats.float8_max("float8_e4m3fnuz") == 2.0**7 * 1.875 == 240.0
    # e5m2: IEEE-like, bias 15, top finite exponent field 30: 2^15 * 1.75.
    assert formats.float8_max("float8_e5m2") == 2.0**15 * 1.75 == 57344.0
    # e5m2fnuz: bias 16, exponent field 31 is finite: 2^15 * 1.75.
    assert formats.float8_max("float8_e5m2fnuz") == 2.0**15 * 1.75


def test_float8_dtype_rejects_unknown_name():
    assert formats.float8_dtype("float8_e5m2") == np.dtype(ml_dtypes.float8_e5m2)
    with pytest.raises(ValueError, match="name"):
        formats.float8_dtype("float8_e3m4")
    with pytest.raises(ValueError, match="name"):
        formats.cast_float8(np.zeros(2, np.float32), "fp8")


def test_cast_float8_e4m3fn_saturates_or_goes_nan():
    x = np.array([500.0, -500.0, np.inf, -np.inf, np.nan, 448.0], np.float32)
    sat = np.asarray(formats.cast_float8(x, "float8_e4m3fn", saturate=True)).astype(np.float32)
    np.testing.assert_array_equal(sat[:4], [448.0, -448.0, 448.0, -448.0])
    assert np.isnan(sat[4]) and sat[5] == 448.0
    raw = np.asarray(formats.cast_float8(x, "float8_e4m3fn", saturate=False)).astype(np.float32)
    # e4m3fn has no infinity: overflow and ±Inf become NaN.
    assert np.all(np.isnan(raw[:5])) and raw[5] == 448.0


def test_cast_float8_e5m2_saturates_or_goes_inf():
    x = np.array([70000.0, -70000.0, np.inf, -np.inf, np.nan], np.float32)
    sat = np.asarray(formats.cast_float8(x, "float8_e5m2", saturate=True)).astype(np.float32)
    np.testing.assert_array_equal(sat[:4], [57344.0, -57344.0, 57344.0, -57344.0])
    assert np.isnan(sat[4])
    raw = np.asarray(formats.cast_float8(x, "float8_e5m2", saturate=False)).astype(np.float32)
    np.testing.assert_array_equal(raw[:4], [np.inf, -np.inf, np.inf, -np.inf])
    assert np.isnan(raw[4])


@pytest.mark.parametrize("name", sorted(formats.FLOAT8_DTYPES))
def test_cast_float8_is_round_half_to_even_like_ml_dtypes(name):
    dtype = formats.FLOAT8_DTYPES[name]
    finite = np.arange(256, dtype=np.uint8).view(dtype).astype(np.float32)
    finite = np.unique(finite[np.isfinite(finite)])
    # Midpoints between neighbouring float8 values are the ties; their float32 neighbours must not tie.
    mids = ((finite[1:].astype(np.float64) + finite[:-1]) / 2).astype(np.float32)
    x = np.concatenate([finite, mids, np.nextafter(mids, np.float32(np.inf)), np.nextafter(mids, np.float32(-np.inf))])
    got = np.asarray(formats.cast_float8(x, name, saturate=False))
    np.testing.assert_array_equal(got.view(np.uint8), x.astype(dtype).view(np.uint8))
    # Every value a float8 represents casts to itself.
    np.testing.assert_array_equal(np.asarray(formats.cast_float8(finite, name)).astype(np.float32), finite)
    # Ties go to the even neighbour (even mantissa, i.e. even bit pattern for same-sign neighbours).
    tied = np.asarray(formats.cast_float8(mids, name)).view(np.uint8)
    assert np.all(tied % 2 == 0)
