"""Integer arithmetic the runtimes share: x86's float → int32 conversion, exact round-half-to-even to int32, and
64-bit products from 32-bit pieces (JAX without ``jax_enable_x64`` has no 64-bit integers).

``static_cast<int32_t>(v)`` and numpy's ``astype(np.int32)`` compile to ``cvttss2si`` / ``cvttps2dq``: in-range
values truncate toward zero, and NaN or anything outside ``[-2^31, 2^31)`` gives the "integer indefinite" value
INT32_MIN. The C++ standard leaves those cases undefined; onnxruntime's reference evaluator (numpy), PyTorch and
TFLite built for x86-64 all hit this instruction, and an ARM build saturates instead.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from quantref._validate import INT32_MAX, INT32_MIN


def float_to_int32(value: jax.Array) -> jax.Array:
    """Convert integer-valued floats to int32 as x86-64 does: NaN and out-of-range values become INT32_MIN.

    Args:
      value: floats already rounded to integers (or NaN / ±Inf).

    Returns:
      int32 values.
    """
    in_range = (value >= -(2.0**31)) & (value < 2.0**31)
    # The inner where keeps XLA's own (saturating) conversion away from the values replaced anyway.
    return jnp.where(in_range, jnp.where(in_range, value, 0.0).astype(jnp.int32), jnp.int32(INT32_MIN))


def round_small_to_int32(value: jax.Array) -> jax.Array:
    """Round half to even to int32, exactly for $|v| \\le 2^{22}$.

    Adding $1.5 \\cdot 2^{23}$ moves $v$ to where the float32 spacing is 1, so the addition itself rounds half to even
    and leaves the integer in the low mantissa bits. XLA's CPU backend has lowered ``round`` to a scalar call; this is
    one vector add and a bitcast.
    """
    magic = jnp.float32(1.5 * 2**23)
    return jax.lax.bitcast_convert_type(value + magic, jnp.int32) - jax.lax.bitcast_convert_type(magic, jnp.int32)


def round_to_int32(value: jax.Array) -> jax.Array:
    """Round half to even to int32, exactly for every float32 in $[-2^{31}, 2^{31}]$ (saturating at the ends).

    Below $2^{23}$ adding and subtracting $\\pm 2^{23}$ rounds half to even (the spacing there is 1); from $2^{23}$ on,
    every float32 is an integer already.
    """
    offset = jnp.where(value < 0, jnp.float32(-(2**23)), jnp.float32(2**23))
    rounded = jnp.where(jnp.abs(value) < 2**23, (value + offset) - offset, value)
    inside = jnp.where(rounded >= 2.0**31, 0.0, rounded).astype(jnp.int32)
    return jnp.where(rounded >= 2.0**31, jnp.int32(INT32_MAX), inside)


def mul_u32(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Full 64-bit product of two uint32 arrays as ``(hi, lo)`` uint32 words (schoolbook on 16-bit halves)."""
    mask = jnp.uint32(0xFFFF)
    a_lo, a_hi = a & mask, a >> 16
    b_lo, b_hi = b & mask, b >> 16
    lo_lo = a_lo * b_lo
    mid1 = a_hi * b_lo
    mid2 = a_lo * b_hi
    hi_hi = a_hi * b_hi
    # cross = (lo_lo >> 16) + low halves of the middle products: < 3 * 2^16, no overflow.
    cross = (lo_lo >> 16) + (mid1 & mask) + (mid2 & mask)
    lo = (cross << 16) | (lo_lo & mask)
    hi = hi_hi + (mid1 >> 16) + (mid2 >> 16) + (cross >> 16)
    return hi, lo


def add_u64(hi: jax.Array, lo: jax.Array, add_hi: jax.Array, add_lo: jax.Array) -> tuple[jax.Array, jax.Array]:
    new_lo = lo + add_lo
    carry = (new_lo < lo).astype(jnp.uint32)
    return hi + add_hi + carry, new_lo


def negate_u64(hi: jax.Array, lo: jax.Array) -> tuple[jax.Array, jax.Array]:
    return add_u64(~hi, ~lo, jnp.uint32(0), jnp.uint32(1))


def magnitude(x: jax.Array) -> jax.Array:
    """|x| of an int32 array as uint32 (exact also for INT32_MIN)."""
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    return jnp.where(x < 0, jnp.uint32(0) - bits, bits)


def signed_product(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The exact int64 product of two int32 arrays, as two's-complement ``(hi, lo)`` uint32 words."""
    hi, lo = mul_u32(magnitude(a), magnitude(b))
    negative = (a < 0) != (b < 0)
    neg_hi, neg_lo = negate_u64(hi, lo)
    return jnp.where(negative, neg_hi, hi), jnp.where(negative, neg_lo, lo)


def shift_right_low32(hi: jax.Array, lo: jax.Array, amount: jax.Array) -> jax.Array:
    """Low 32 bits of the arithmetic right shift of a two's-complement int64 ``(hi, lo)`` by 1..62, as int32."""
    small = amount < 32
    amount_small = jnp.clip(amount, 1, 31).astype(jnp.uint32)
    from_small = (lo >> amount_small) | (hi << (jnp.uint32(32) - amount_small))
    hi_signed = jax.lax.bitcast_convert_type(hi, jnp.int32)
    from_large = hi_signed >> jnp.clip(amount - 32, 0, 31)
    return jnp.where(small, jax.lax.bitcast_convert_type(from_small, jnp.int32), from_large)


# ----------------------------------------------------------------------------------------------------------------
# Float32 roundings that XLA must not merge: one rounding per operation, and an exact fused multiply-add


def rounded(value: jax.Array) -> jax.Array:
    """``value`` itself, kept from being fused into a multiply-add with what follows.

    XLA's CPU backend (through LLVM) contracts ``a * b + c`` into one fused multiply-add where it can, which rounds
    once where a runtime that computes ``a * b`` and ``+ c`` in two kernels rounds twice. A select that depends on
    the value (NaN lanes take ``value + 1``, which is the same NaN) cannot be folded away, and stops the contraction.
    """
    return jnp.where(jnp.isnan(value), value + 1, value)


def two_sum(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Knuth's TwoSum: ``s = fl(a + b)`` and the exact error ``e`` with ``s + e = a + b`` (no overflow)."""
    s = a + b
    b_virtual = s - a
    a_virtual = s - b_virtual
    return s, (a - a_virtual) + (b - b_virtual)


def _add_round_to_odd(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a + b`` rounded to odd: truncated toward zero, with the last bit set when the sum is inexact."""
    s, e = two_sum(a, b)
    bits = jax.lax.bitcast_convert_type(s, jnp.int32)
    even = (bits & 1) == 0
    # Move one ulp toward the error (toward zero when they differ in sign), which lands on the odd neighbour.
    step = jnp.where(jnp.signbit(e) == jnp.signbit(s), 1, -1).astype(jnp.int32)
    odd = jax.lax.bitcast_convert_type(bits + step, jnp.float32)
    return jnp.where((e != 0) & even, odd, s)


def sum3(a: jax.Array, b: jax.Array, c: jax.Array) -> jax.Array:
    """``a + b + c`` correctly rounded to float32 (one rounding), from float32 operations only.

    Boldo and Melquiond's algorithm: two error-free additions, the two errors added with rounding to odd, and one
    final rounding to nearest, which is then the correct rounding of the exact sum (no overflow or underflow).

    References:
      Boldo and Melquiond, "Emulation of a FMA and correctly-rounded sums: proved algorithms using rounding to
      odd", IEEE Transactions on Computers 57(4), 2008.
    """
    upper, lower = two_sum(b, c)
    top, low = two_sum(a, upper)
    return top + _add_round_to_odd(low, lower)


def fma_small_int(a: jax.Array, r: jax.Array, c: jax.Array) -> jax.Array:
    """``fma(a, r, c) = rn(a·r + c)`` for float32 ``a`` holding integers with ``|a| < 2^8``, exactly.

    ``r`` is split into its top 16 and low 8 significand bits, so both partial products are exact in float32, and
    the three terms are summed with one rounding (:func:`sum3`). Independent of whether the backend has (or uses)
    a hardware fused multiply-add.
    """
    r_bits = jax.lax.bitcast_convert_type(r, jnp.int32)
    r_high = jax.lax.bitcast_convert_type(r_bits & jnp.int32(-256), jnp.float32)
    r_low = r - r_high
    return sum3(a * r_high, a * r_low, c)


def fma_f32(x: jax.Array, y: jax.Array, c: jax.Array) -> jax.Array:
    """float32 ``fma(x, y, c) = rn(x·y + c)``, one rounding: the product exact in float64, the sum rounded to odd,
    then once to float32.

    Rounding to odd at 53 bits and then to nearest at 24 gives the correctly rounded sum (Boldo and Melquiond 2008),
    so the result is the hardware FMA's whatever the backend does with float32 multiply-adds. 64-bit types are
    enabled for the computation (``jax.enable_x64``, scoped); it traces under ``jit`` and runs eagerly alike.
    """
    with jax.enable_x64(True):
        p = x.astype(jnp.float64) * y.astype(jnp.float64)  # 24 x 24 bits: exact
        c = c.astype(jnp.float64)
        s = p + c
        c_virtual = s - p
        e = (p - (s - c_virtual)) + (c - c_virtual)
        bits = jax.lax.bitcast_convert_type(s, jnp.int64)
        step = jnp.where((e > 0) == (s > 0), 1, -1).astype(jnp.int64)
        bits = jnp.where((e != 0) & ((bits & 1) == 0), bits + step, bits)
        return jax.lax.bitcast_convert_type(bits, jnp.float64).astype(jnp.float32)
