"""Number formats: integer grids (bits, signedness, narrow range) and float8.

A b-bit integer format is the grid of integers ``qmin..qmax``:

$$
\\text{signed: } [-2^{b-1}, 2^{b-1}-1], \\qquad \\text{unsigned: } [0, 2^b - 1].
$$

*Narrow range* drops the most negative code of a signed grid (``[-127, 127]`` for int8) so that the grid is
symmetric around zero; TFLite uses it for weights.

Sub-byte integers (int4, uint4, int2, uint2) are stored packed, two or four to a byte, low nibble first (the
ONNX and TFLite convention). Float8 formats and FP4 (e2m1, ONNX's FLOAT4E2M1) come from ``ml_dtypes``; the
block-scaled formats built on them (MX, NVFP4) are in :mod:`quantref.microscaling`.

This module has no JAX tracing in it: formats are static, validated Python values.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from quantref import _validate
from quantref._validate import check_format

__all__ = [
    "IntFormat",
    "int_format",
    "check_format",
    "INT8",
    "UINT8",
    "INT4",
    "UINT4",
    "INT16",
    "INT32",
    "pack_int",
    "unpack_int",
    "FLOAT8_DTYPES",
    "float8_dtype",
    "float8_max",
    "cast_float8",
    "float8_to_float32",
    "FLOAT4_E2M1",
    "float4_max",
    "cast_float4",
]


@dataclasses.dataclass(frozen=True)
class IntFormat:
    """A b-bit integer grid ``qmin..qmax``.

    Build one with :func:`int_format`, which validates its arguments.

    Attributes:
      bits: number of bits, 1 to 32.
      signed: two's-complement signed grid if True, else unsigned.
      narrow_range: if True (signed only), drop the most negative code so that ``qmin == -qmax``.
    """

    bits: int
    signed: bool = True
    narrow_range: bool = False

    def __post_init__(self) -> None:
        # The constructor is public, so it guards the invariants and the types too (IntFormat(4.5) or
        # IntFormat(True) would give a grid with fractional or boolean bounds).
        object.__setattr__(self, "bits", _validate.check_int(self.bits, "bits"))
        object.__setattr__(self, "signed", _validate.check_bool(self.signed, "signed"))
        object.__setattr__(self, "narrow_range", _validate.check_bool(self.narrow_range, "narrow_range"))
        if not 1 <= self.bits <= 32:
            raise ValueError(f"bits must be in 1..32, got {self.bits}")
        if self.narrow_range and (not self.signed or self.bits < 2):
            raise ValueError(
                f"narrow_range=True needs a signed format with bits >= 2, got signed={self.signed}, bits={self.bits}"
            )

    @property
    def qmin(self) -> int:
        """The smallest code of the grid."""
        if not self.signed:
            return 0
        return -(2 ** (self.bits - 1)) + (1 if self.narrow_range else 0)

    @property
    def qmax(self) -> int:
        """The largest code of the grid."""
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1

    @property
    def levels(self) -> int:
        """Number of codes, ``qmax - qmin + 1``."""
        return self.qmax - self.qmin + 1

    @property
    def storage_dtype(self) -> np.dtype:
        """The smallest numpy integer dtype that holds every code (before packing)."""
        for width in (8, 16, 32):
            if self.bits <= width:
                return np.dtype(f"{'int' if self.signed else 'uint'}{width}")
        raise AssertionError("unreachable: bits validated to be <= 32")

    @property
    def name(self) -> str:
        """A short name such as ``int8``, ``uint4`` or ``int8n`` (narrow)."""
        return f"{'int' if self.signed else 'uint'}{self.bits}{'n' if self.narrow_range else ''}"


def int_format(bits: int, signed: bool = True, narrow_range: bool = False, *, max_bits: int = 16) -> IntFormat:
    """Validated constructor for :class:`IntFormat`.

    Args:
      bits: number of bits; an ``int`` in ``1..max_bits``.
      signed: signed (two's complement) grid if True, else unsigned.
      narrow_range: drop the most negative code (signed grids only, needs ``bits >= 2``).
      max_bits: the largest width accepted; 16 for quantization grids, 32 for accumulators.

    Returns:
      The format.

    Raises:
      TypeError: if ``bits`` is not an int or ``signed``/``narrow_range`` are not bools.
      ValueError: if ``bits`` is outside ``1..max_bits`` or ``narrow_range`` is asked of an unsigned or 1-bit grid.
    """
    max_bits = _validate.check_int(max_bits, "max_bits", low=1, high=32)
    if isinstance(bits, (bool, np.bool_)) or not isinstance(bits, (int, np.integer)):
        raise TypeError(f"bits must be an int in 1..{max_bits}, got {bits!r} of type {type(bits).__name__}")
    if not 1 <= bits <= max_bits:
        raise ValueError(f"bits must be in 1..{max_bits}, got {bits}")
    for name, value in (("signed", signed), ("narrow_range", narrow_range)):
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{name} must be a bool, got {value!r}")
    if narrow_range and (not signed or bits < 2):
        raise ValueError(f"narrow_range=True needs a signed format with bits >= 2, got signed={signed}, bits={bits}")
    return IntFormat(int(bits), bool(signed), bool(narrow_range))


INT8 = IntFormat(8, True)
UINT8 = IntFormat(8, False)
INT4 = IntFormat(4, True)
UINT4 = IntFormat(4, False)
INT16 = IntFormat(16, True)
INT32 = IntFormat(32, True)


def _check_pack_bits(bits: int) -> int:
    if isinstance(bits, (bool, np.bool_)) or not isinstance(bits, (int, np.integer)) or bits not in (1, 2, 4):
        raise ValueError(f"bits must be one of 1, 2, 4 for packing, got {bits!r}")
    return int(bits)


def pack_int(values: jnp.ndarray | np.ndarray, bits: int) -> jnp.ndarray:
    """Pack sub-byte integer codes into bytes, lowest element in the lowest bits.

    Element ``i`` of the flattened input lands in byte ``i // (8 / bits)`` at bit offset
    ``bits * (i % (8 / bits))`` — for 4 bits, the first element in the low nibble, as ONNX and TFLite store
    int4. A length that is not a multiple of ``8 / bits`` is zero-padded.

    Args:
      values: integer codes that fit in ``bits`` bits (signed values are stored two's complement); any shape,
        flattened in C order.
      bits: 1, 2 or 4.

    Returns:
      A flat ``uint8`` array of ``ceil(size * bits / 8)`` bytes.

    Raises:
      ValueError: if ``bits`` is not 1, 2 or 4, or (for concrete ``values``) a value lies outside
        ``-2**(bits-1)..2**bits - 1``, the union of the signed and unsigned grids, so would be silently truncated.
      TypeError: if ``values`` is not an integer array (floats would be truncated).
    """
    bits = _check_pack_bits(bits)
    values = _validate.as_array(values, "values")
    if not _validate.is_integer_dtype(values.dtype):
        raise TypeError(f"values must be an integer array, got dtype {values.dtype}")
    if _validate.is_concrete(values) and values.size:
        # The original values, before any conversion: int64 2**33 + 1 must not wrap to 1.
        lowest, highest = int(np.asarray(values).min()), int(np.asarray(values).max())
        if lowest < -(1 << (bits - 1)) or highest > (1 << bits) - 1:
            raise ValueError(
                f"values must fit in {bits} bits ({-(1 << (bits - 1))}..{(1 << bits) - 1}), "
                f"got values in [{lowest}, {highest}]"
            )
    per_byte = 8 // bits
    flat = jnp.asarray(values.astype(np.int32) if isinstance(values, np.ndarray) else values)
    flat = flat.reshape(-1).astype(jnp.int32) & ((1 << bits) - 1)
    pad = (-flat.size) % per_byte
    flat = jnp.pad(flat, (0, pad)).reshape(-1, per_byte)
    shifts = jnp.arange(per_byte, dtype=jnp.int32) * bits
    return jnp.sum(flat << shifts, axis=1).astype(jnp.uint8)


def unpack_int(packed: jnp.ndarray | np.ndarray, bits: int, signed: bool, count: int) -> jnp.ndarray:
    """Unpack bytes written by :func:`pack_int` back into integer codes.

    Args:
      packed: ``uint8`` bytes.
      bits: 1, 2 or 4.
      signed: sign-extend each field (two's complement) if True.
      count: number of codes to return (drops the padding).

    Returns:
      A flat ``int8`` (signed) or ``uint8`` (unsigned) array of length ``count``.

    Raises:
      ValueError: if ``bits`` is not 1, 2 or 4, or ``count`` does not fit in the bytes given.
      TypeError: if ``packed`` is not ``uint8``, ``signed`` not a bool or ``count`` not an int.
    """
    bits = _check_pack_bits(bits)
    signed = _validate.check_bool(signed, "signed")
    count = _validate.check_int(count, "count")
    packed = _validate.as_array(packed, "packed")
    if packed.dtype != np.uint8:
        raise TypeError(f"packed must be a uint8 array, got dtype {packed.dtype}")
    packed = jnp.asarray(packed)
    per_byte = 8 // bits
    if not 0 <= count <= packed.size * per_byte:
        raise ValueError(f"count must be in 0..{packed.size * per_byte} for {packed.size} bytes, got {count}")
    shifts = jnp.arange(per_byte, dtype=jnp.int32) * bits
    fields = (packed.reshape(-1, 1).astype(jnp.int32) >> shifts) & ((1 << bits) - 1)
    fields = fields.reshape(-1)[:count]
    if signed:
        fields = jnp.where(fields >= (1 << (bits - 1)), fields - (1 << bits), fields)
        return fields.astype(jnp.int8)
    return fields.astype(jnp.uint8)


FLOAT8_DTYPES: dict[str, np.dtype] = {
    "float8_e4m3fn": np.dtype(ml_dtypes.float8_e4m3fn),
    "float8_e4m3fnuz": np.dtype(ml_dtypes.float8_e4m3fnuz),
    "float8_e5m2": np.dtype(ml_dtypes.float8_e5m2),
    "float8_e5m2fnuz": np.dtype(ml_dtypes.float8_e5m2fnuz),
}


def float8_dtype(name: str) -> np.dtype:
    """The ml_dtypes dtype for a float8 format name.

    Args:
      name: one of ``float8_e4m3fn``, ``float8_e4m3fnuz``, ``float8_e5m2``, ``float8_e5m2fnuz``.

    Returns:
      The numpy dtype.

    Raises:
      ValueError: for any other name.
    """
    if not isinstance(name, str) or name not in FLOAT8_DTYPES:
        raise ValueError(f"name must be one of {sorted(FLOAT8_DTYPES)}, got {name!r:.80}")
    return FLOAT8_DTYPES[name]


def float8_max(name: str) -> float:
    """Largest finite value of a float8 format (448 for e4m3fn, 57344 for e5m2)."""
    return float(ml_dtypes.finfo(float8_dtype(name)).max)


def cast_float8(x: jnp.ndarray | np.ndarray, name: str, *, saturate: bool = True) -> jnp.ndarray:
    """Round float32 values to a float8 format (round half to even).

    $$
    y = \\operatorname{rne}_{\\text{fp8}}(x), \\quad \\text{with } |x| > \\text{max} \\mapsto
    \\begin{cases} \\pm\\text{max} & \\text{saturate} \\\\ \\text{overflow value} & \\text{otherwise}\\end{cases}
    $$

    With ``saturate=True`` values beyond the largest finite value, and ±Inf, clamp to ±max; NaN stays NaN.
    With ``saturate=False`` the result is what the plain cast gives: e4m3fn and the fnuz formats have no
    infinity, so overflow becomes NaN; e5m2 overflows to ±Inf.

    Args:
      x: float values.
      name: float8 format name, see :data:`FLOAT8_DTYPES`.
      saturate: clamp out-of-range values to the largest finite value.

    Returns:
      An array of the float8 dtype.

    Raises:
      ValueError: for an unknown ``name``.
      TypeError: if ``x`` is not a real array (complex values would lose their imaginary part) or ``saturate``
        is not a bool.
    """
    dtype = float8_dtype(name)
    saturate = _validate.check_bool(saturate, "saturate")
    x = _validate.real_array(x, "x")
    if saturate:
        top = float8_max(name)
        # Clamp only finite overflow and infinities; jnp.clip keeps NaN as NaN.
        x = jnp.clip(x, -top, top)
    return x.astype(dtype)


def float8_to_float32(x: jnp.ndarray) -> jnp.ndarray:
    """Widen float8 values to float32 exactly, NaN included as ml_dtypes (and onnxruntime) widen it.

    The fnuz formats have one NaN code, 0x80 (the bit pattern of −0 elsewhere); ml_dtypes and onnxruntime widen it to
    a NaN with the sign bit set, XLA's conversion to one without. Other values widen exactly either way.

    Args:
      x: an array of one of the float8 dtypes.

    Returns:
      float32 values.
    """
    wide = jnp.asarray(x).astype(jnp.float32)
    if np.dtype(x.dtype) in (FLOAT8_DTYPES["float8_e4m3fnuz"], FLOAT8_DTYPES["float8_e5m2fnuz"]):
        code = jax.lax.bitcast_convert_type(jnp.asarray(x), jnp.uint8)
        negative_nan = jax.lax.bitcast_convert_type(jnp.uint32(0xFFC00000), jnp.float32)
        wide = jnp.where(code == 0x80, negative_nan, wide)
    return wide


#: FP4 E2M1 (OCP Microscaling's element type; ONNX FLOAT4E2M1): 1 sign, 2 exponent, 1 mantissa bit, no Inf or NaN.
FLOAT4_E2M1: np.dtype = np.dtype(ml_dtypes.float4_e2m1fn)


def float4_max() -> float:
    """Largest finite value of FP4 E2M1 (6.0)."""
    return float(ml_dtypes.finfo(FLOAT4_E2M1).max)


def cast_float4(x: jnp.ndarray | np.ndarray) -> jnp.ndarray:
    """Round float values to FP4 E2M1 (round half to even, saturating).

    $$
    y = \\operatorname{rne}_{\\text{e2m1}}\\big(\\operatorname{clamp}(x, -6, 6)\\big), \\qquad
    \\text{grid } \\pm\\{0, 0.5, 1, 1.5, 2, 3, 4, 6\\}
    $$

    The format has no infinity and no NaN, so every out-of-range value and ±Inf saturate to ±6 (the OCP MX
    specification's conversion, and ONNX's FLOAT4E2M1). NaN has no code: the spec leaves it undefined, and this
    function returns the zero that ml_dtypes' cast (which the ONNX reference evaluator uses) gives, a zero of the
    opposite sign.

    References:
      Open Compute Project, "OCP Microscaling Formats (MX) Specification", v1.0, 2023, sec. 5.3.3 (FP4).
      ONNX operator spec, QuantizeLinear (opset 23, FLOAT4E2M1).

    Args:
      x: real values (computed in float32).

    Returns:
      An array of dtype ``float4_e2m1fn``.

    Raises:
      TypeError: if ``x`` is not a real array.
    """
    x = _validate.real_array(x, "x")
    top = float4_max()
    codes = jnp.clip(x, -top, top).astype(FLOAT4_E2M1)
    nan_zero = jnp.where(jnp.signbit(x), jnp.float32(0.0), jnp.float32(-0.0)).astype(FLOAT4_E2M1)
    return jnp.where(jnp.isnan(x), nan_zero, codes)
