"""Entropy coding for compressed models: Huffman codes and the bit streams they are written to.

A code assigns each symbol $s$ (a cluster index, a gap between non-zero weights) a bit string of length $\\ell_s$.
If symbol $s$ occurs $n_s$ times among $N$ symbols, the stream costs $L = \\sum_s n_s \\ell_s$ bits, and no
prefix-free code can do better than the empirical entropy,

$$
L \\ \\ge\\ N H, \\qquad H = -\\sum_s \\frac{n_s}{N} \\log_2 \\frac{n_s}{N} .
$$

Huffman's construction — repeatedly merge the two least frequent subtrees — gives the prefix-free code of least
$L$, and that $L$ is below $N (H + 1)$. Only the lengths $\\ell_s$ matter for the cost, so a file stores the lengths
and both sides derive the same **canonical** code from them (symbols sorted by length, then by value, given
consecutive codes), as DEFLATE does.

The file format of :mod:`quantref.compression` is one bit stream: :class:`BitWriter` and :class:`BitReader` write
and read fixed-width fields, LEB128 varints and Huffman-coded symbol streams, most significant bit first. A reader
that runs past the end raises ``ValueError`` instead of inventing bits.

References:
  Huffman, "A Method for the Construction of Minimum-Redundancy Codes", Proc. IRE 40(9), 1952.
  Deutsch, "DEFLATE Compressed Data Format Specification version 1.3", RFC 1951, 1996, sec. 3.2.2 (canonical
  codes from code lengths).
  Han, Mao and Dally, "Deep Compression", arXiv:1510.00149, 2016, sec. 4.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np

__all__ = [
    "MAX_CODE_LENGTH",
    "huffman_code_lengths",
    "canonical_codes",
    "check_code_lengths",
    "entropy_bits",
    "coded_bits",
    "BitWriter",
    "BitReader",
]

#: The longest code a stream may use: lengths are stored in 6 bits. A Huffman code reaches length $\\ell$ only if
#: the stream is longer than the Fibonacci number $F_{\\ell+2}$, so 63 bits cannot be reached by any real tensor.
MAX_CODE_LENGTH = 63


def huffman_code_lengths(counts: Sequence[int] | np.ndarray) -> np.ndarray:
    """The code length of each symbol in a Huffman code for these symbol counts.

    Each merge of the two lightest subtrees lengthens the codes of every symbol below them by one bit; ties are
    broken by creation order, so the result is deterministic. A symbol that never occurs gets length 0 (no code);
    if only one symbol occurs it gets length 1, since a code needs at least one bit per symbol.

    References:
      Huffman, Proc. IRE 40(9), 1952.

    Args:
      counts: ``(alphabet,)`` non-negative occurrence counts.

    Returns:
      ``(alphabet,)`` int64 code lengths; $\\sum_s n_s \\ell_s$ is the least total length of any prefix-free code.

    Raises:
      ValueError: if ``counts`` is not a 1-D array of non-negative integers.
    """
    counts = _counts(counts)
    lengths = np.zeros(len(counts), np.int64)
    used = np.flatnonzero(counts)
    if len(used) == 1:
        lengths[used] = 1
        return lengths
    # (weight, creation order, symbols below): the order makes ties deterministic and keeps lists uncompared.
    heap = [(int(counts[symbol]), order, [int(symbol)]) for order, symbol in enumerate(used)]
    heapq.heapify(heap)
    order = len(heap)
    while len(heap) > 1:
        weight_a, _, symbols_a = heapq.heappop(heap)
        weight_b, _, symbols_b = heapq.heappop(heap)
        lengths[symbols_a] += 1
        lengths[symbols_b] += 1
        heapq.heappush(heap, (weight_a + weight_b, order, symbols_a + symbols_b))
        order += 1
    return lengths


def canonical_codes(lengths: Sequence[int] | np.ndarray) -> np.ndarray:
    """The canonical prefix code for these code lengths (RFC 1951, sec. 3.2.2).

    Symbols are ordered by (length, symbol value); the first gets the all-zero code of its length, and each next
    one the previous code plus one, shifted left by the difference in length.

    Args:
      lengths: ``(alphabet,)`` code lengths in 0..:data:`MAX_CODE_LENGTH` (0: the symbol has no code).

    Returns:
      ``(alphabet,)`` uint64 codes (the low ``lengths[s]`` bits of ``codes[s]``, most significant first).

    Raises:
      ValueError: if the lengths cannot be those of a prefix code (Kraft's sum $\\sum_s 2^{-\\ell_s}$ above 1), or
        describe an incomplete code other than the one-symbol code of length 1.
    """
    lengths = check_code_lengths(lengths)
    codes = np.zeros(len(lengths), np.uint64)
    code, previous = 0, 0
    for symbol in sorted(np.flatnonzero(lengths), key=lambda s: (lengths[s], s)):
        code <<= int(lengths[symbol]) - previous
        codes[symbol] = code
        previous = int(lengths[symbol])
        code += 1
    return codes


def entropy_bits(counts: Sequence[int] | np.ndarray) -> float:
    """The empirical entropy of a stream in bits, $N H = -\\sum_s n_s \\log_2 (n_s / N)$: the least any code costs.

    Args:
      counts: ``(alphabet,)`` non-negative occurrence counts.

    Returns:
      $N H$ in bits (0 for an empty or one-symbol stream).
    """
    counts = _counts(counts).astype(np.float64)
    used = counts[counts > 0]
    return float(-(used * np.log2(used / used.sum())).sum()) if len(used) else 0.0


def coded_bits(counts: Sequence[int] | np.ndarray, lengths: Sequence[int] | np.ndarray) -> int:
    """The length in bits of a stream with these symbol counts under these code lengths, $\\sum_s n_s \\ell_s$.

    Args:
      counts: ``(alphabet,)`` occurrence counts.
      lengths: ``(alphabet,)`` code lengths.

    Returns:
      The total length in bits.
    """
    return int(np.dot(_counts(counts), np.asarray(lengths, np.int64)))


def check_code_lengths(lengths: Sequence[int] | np.ndarray) -> np.ndarray:
    """Checks that code lengths describe a complete prefix code: Kraft's sum $\\sum_s 2^{-\\ell_s} = 1$ exactly (or
    the one-symbol code ``[1]``). A decoder must refuse anything else, which a corrupted table would be.

    Args:
      lengths: ``(alphabet,)`` code lengths in 0..:data:`MAX_CODE_LENGTH`.

    Returns:
      The lengths as int64.

    Raises:
      ValueError: otherwise, saying why.
    """
    lengths = np.asarray(lengths)
    if lengths.ndim != 1 or lengths.dtype.kind not in "iu":
        raise ValueError(f"code lengths must be a 1-D integer array, got {lengths.dtype}{lengths.shape}")
    lengths = lengths.astype(np.int64)
    if len(lengths) and (lengths.min() < 0 or lengths.max() > MAX_CODE_LENGTH):
        raise ValueError(f"code lengths must be in 0..{MAX_CODE_LENGTH}, got {lengths.min()}..{lengths.max()}")
    used = lengths[lengths > 0]
    # Kraft's sum, exactly, in units of 2^-MAX_CODE_LENGTH.
    kraft = sum(1 << (MAX_CODE_LENGTH - int(length)) for length in used)
    if not (kraft == 1 << MAX_CODE_LENGTH or (len(used) == 1 and used[0] == 1)):
        raise ValueError(f"code lengths {lengths.tolist()} do not describe a complete prefix code")
    return lengths


def _counts(counts: Sequence[int] | np.ndarray) -> np.ndarray:
    array = np.asarray(counts)
    if array.ndim != 1 or (array.size and (array.dtype.kind not in "iu" or array.min() < 0)):
        raise ValueError(f"counts must be a 1-D array of non-negative integers, got {array.dtype}{array.shape}")
    return array.astype(np.int64)


# --- bit streams -------------------------------------------------------------------------------------------------


class BitWriter:
    """Accumulates a bit stream, most significant bit of each field first; :meth:`getvalue` pads it to bytes."""

    def __init__(self) -> None:
        self._chunks: list[np.ndarray] = []  # arrays of 0/1 bits (uint8)
        self.bits = 0

    def write(self, value: int, width: int) -> None:
        """Appends ``value`` as an unsigned ``width``-bit field."""
        if width and not 0 <= value < 1 << width:
            raise ValueError(f"value {value} does not fit in {width} bits")
        self.write_array(np.array([value], np.uint64), width)

    def write_array(self, values: np.ndarray, widths: int | np.ndarray) -> None:
        """Appends each ``values[i]`` as an unsigned field of ``widths[i]`` (or ``widths``) bits."""
        values = np.asarray(values, np.uint64).ravel()
        widths = np.broadcast_to(np.asarray(widths, np.int64), values.shape)
        if not len(values):
            return
        top = int(widths.max())
        if top == 0:
            return
        # bits[i, j] is bit j (from the top) of a field left-aligned to `top` bits.
        shifts = (widths[:, None] - 1 - np.arange(top)[None, :]).astype(np.int64)
        bits = (values[:, None] >> np.maximum(shifts, 0).astype(np.uint64)) & np.uint64(1)
        chunk = bits[shifts >= 0].astype(np.uint8)
        self._chunks.append(chunk)
        self.bits += len(chunk)

    def write_varint(self, value: int) -> None:
        """Appends a non-negative integer as LEB128: 7 bits per byte, low group first, the top bit says "more"."""
        if value < 0:
            raise ValueError(f"a varint must be non-negative, got {value}")
        while True:
            group, value = value & 0x7F, value >> 7
            self.write(group | (0x80 if value else 0), 8)
            if not value:
                return

    def write_symbols(self, symbols: np.ndarray, lengths: np.ndarray) -> None:
        """Appends symbols in the canonical code with these lengths (:func:`canonical_codes`)."""
        symbols = np.asarray(symbols, np.int64).ravel()
        codes = canonical_codes(lengths)
        if len(symbols) and (symbols.min() < 0 or symbols.max() >= len(lengths) or np.any(lengths[symbols] == 0)):
            raise ValueError("a symbol to write has no code")
        self.write_array(codes[symbols], np.asarray(lengths)[symbols])

    def getvalue(self) -> bytes:
        """The stream so far, zero-padded to a whole number of bytes."""
        bits = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.uint8)
        return np.packbits(bits).tobytes()


class BitReader:
    """Reads what :class:`BitWriter` wrote; every read past the end raises ``ValueError``."""

    def __init__(self, data: bytes, what: str = "stream"):
        self._bits = np.unpackbits(np.frombuffer(data, np.uint8))
        self.position = 0
        self._what = what

    @property
    def remaining(self) -> int:
        """Bits not yet read (including the final byte's padding)."""
        return len(self._bits) - self.position

    def _take(self, count: int) -> np.ndarray:
        if count > self.remaining:
            raise ValueError(f"{self._what} is truncated: needed {count} more bits, {self.remaining} left")
        bits = self._bits[self.position : self.position + count]
        self.position += count
        return bits

    def read(self, width: int) -> int:
        """Reads an unsigned ``width``-bit field."""
        value = 0
        for bit in self._take(width):
            value = (value << 1) | int(bit)
        return value

    def read_array(self, count: int, width: int) -> np.ndarray:
        """Reads ``count`` unsigned ``width``-bit fields (``width`` ≤ 64) as uint64."""
        bits = self._take(count * width).reshape(count, width).astype(np.uint64)
        weights = np.uint64(1) << np.arange(width - 1, -1, -1, dtype=np.uint64)
        return (bits * weights).sum(axis=1, dtype=np.uint64) if width else np.zeros(count, np.uint64)

    def read_varint(self, limit: int = 1 << 63) -> int:
        """Reads a LEB128 varint, checked to be below ``limit``."""
        value, shift = 0, 0
        while True:
            group = self.read(8)
            value |= (group & 0x7F) << shift
            shift += 7
            if value >= limit or shift > 70:
                raise ValueError(f"{self._what} is corrupt: a count or size {value} is out of range")
            if not group & 0x80:
                return value

    def read_symbols(self, count: int, lengths: np.ndarray) -> np.ndarray:
        """Reads ``count`` symbols of the canonical code with these lengths.

        Canonical decoding: after $\\ell$ bits the code value $c$ is a symbol of length $\\ell$ iff
        $c - \\text{first}_\\ell < \\text{count}_\\ell$, where $\\text{first}_\\ell$ is the first code of that length.
        """
        lengths = check_code_lengths(lengths)
        order = sorted(np.flatnonzero(lengths), key=lambda s: (lengths[s], s))
        top = int(lengths.max()) if len(lengths) else 0
        per_length = np.bincount(lengths[lengths > 0], minlength=top + 1)
        first, offset = np.zeros(top + 1, np.int64), np.zeros(top + 1, np.int64)
        code, index = 0, 0
        per_length[0] = 0
        for length in range(1, top + 1):
            code = (code + int(per_length[length - 1])) << 1  # RFC 1951's next_code
            first[length], offset[length] = code, index
            index += int(per_length[length])
        symbols = np.empty(count, np.int64)
        bits = self._bits
        position, end = self.position, len(bits)
        for i in range(count):
            value = 0
            for length in range(1, top + 1):
                if position >= end:
                    raise ValueError(f"{self._what} is truncated inside a Huffman-coded symbol")
                value = (value << 1) | int(bits[position])
                position += 1
                if value - first[length] < per_length[length]:
                    symbols[i] = order[offset[length] + value - first[length]]
                    break
            else:
                raise ValueError(f"{self._what} is corrupt: a bit string that is no code")
        self.position = position
        return symbols
