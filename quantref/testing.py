"""Exact comparison of a backend's outputs with quantref's, with a report of the worst elements in LSBs.

One comparison serves two callers: :func:`assert_matches` in a Python test, and ``quantref check`` (through
:func:`quantref.vectors.check`) on results that another backend wrote to disk. Equality is *bitwise*:

- integer arrays (any width, including ml_dtypes ``int4``/``uint4``/``int2``/``uint2``) compare by value; the size of
  a mismatch is the integer difference $\\text{actual} - \\text{expected}$ in LSBs (codes);
- float8 arrays compare by bit pattern; the size of a mismatch is the distance in representable values (codes),
  counted on the sign-magnitude order of the encodings, so $448 \\to 416$ in e4m3fn is $-1$ code;
- float16/bfloat16/float32/float64 arrays compare by bit pattern, except that any NaN equals any NaN (runtimes
  differ in NaN payloads, never usefully); the size is the distance in ulps on the same ordering. $+0$ and $-0$
  differ (the size is then 0 ulps, reported as a sign difference).

A NaN against a number has no finite size; it is reported as ``nan`` and ranks above every finite mismatch.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np

__all__ = ["Mismatch", "Comparison", "compare", "format_report", "assert_matches"]

_SUB_BYTE = {np.dtype(d) for d in (ml_dtypes.int4, ml_dtypes.uint4, ml_dtypes.int2, ml_dtypes.uint2)}
_FLOAT8 = {
    np.dtype(d)
    for d in (ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e4m3fnuz, ml_dtypes.float8_e5m2, ml_dtypes.float8_e5m2fnuz)
}
_FLOATS = {np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16), np.dtype(np.float32), np.dtype(np.float64)}
_BITS_VIEW = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


@dataclass(frozen=True)
class Mismatch:
    """One element that differs.

    Attributes:
      index: the element's index in the array (a tuple, one entry per dimension).
      expected: the expected value, as a display string (float8 and floats also show their bit pattern).
      actual: the actual value, as a display string.
      diff: actual − expected in LSBs (integers), codes (float8) or ulps (floats); ``nan`` for NaN against a number.
    """

    index: tuple[int, ...]
    expected: str
    actual: str
    diff: float


@dataclass(frozen=True)
class Comparison:
    """The result of :func:`compare`.

    Attributes:
      size: number of elements compared (0 when the shapes differ).
      mismatches: number of elements that differ.
      unit: ``"LSB"`` (integers), ``"code"`` (float8) or ``"ulp"`` (floats).
      max_abs_diff: the largest ``|diff|`` over all mismatches (``nan`` if a NaN met a number), 0 if none.
      worst: up to ``max_report`` mismatches, largest ``|diff|`` first, then by index.
      error: a reason the arrays could not be compared element by element (shape or kind mismatch), else ``""``.
    """

    size: int
    mismatches: int
    unit: str
    max_abs_diff: float
    worst: tuple[Mismatch, ...]
    error: str = ""

    @property
    def ok(self) -> bool:
        """True when the arrays are comparable and every element matches."""
        return not self.error and self.mismatches == 0


def _kind(dtype: np.dtype) -> str:
    if dtype in _FLOAT8:
        return "float8"
    if dtype in _SUB_BYTE or np.issubdtype(dtype, np.integer) or dtype == np.bool_:
        return "int"
    if dtype in _FLOATS:
        return "float"
    raise TypeError(
        f"expected must be an integer, float8 or float array (with its true dtype), got dtype {dtype}; "
        "complex, string and object arrays cannot be compared"
    )


def _ordinal(values: np.ndarray) -> np.ndarray:
    """Map float bit patterns to integers that increase with the value (sign-magnitude → two's complement order).

    Consecutive representable values get consecutive ordinals, so the difference of two ordinals is a distance in
    ulps (float8: in codes). +0 and −0 both map to 0.
    """
    bits = values.view(_BITS_VIEW[values.dtype.itemsize]).astype(np.uint64)
    sign_bit = np.uint64(1) << np.uint64(8 * values.dtype.itemsize - 1)
    magnitude = (bits & ~sign_bit).astype(np.int64)
    return np.where(bits & sign_bit, -magnitude, magnitude)


def _display(values: np.ndarray, kind: str) -> list[str]:
    if kind == "int":
        return [str(int(v)) for v in (values if values.dtype in (np.uint64, np.int64) else values.astype(np.int64))]
    bits = values.view(_BITS_VIEW[values.dtype.itemsize])
    width = 2 * values.dtype.itemsize
    # str() of a numpy/ml_dtypes scalar is the shortest text that round-trips in its type: 1.0000001, not 1.00000011…
    return [f"{str(v)} (0x{int(b):0{width}x})" for v, b in zip(values, bits)]


def _coerce(actual: np.ndarray, expected: np.ndarray) -> np.ndarray | str:
    """Bring ``actual`` to ``expected``'s dtype where that is lossless and unambiguous, else explain why not."""
    if actual.dtype == expected.dtype:
        return actual
    kind = _kind(expected.dtype)
    if kind == "float8" or expected.dtype in _SUB_BYTE:
        # Raw bit patterns, one element per byte: how C++/Rust backends and quantref's vectors store these types.
        if actual.dtype == np.uint8 and kind == "float8":
            return actual.view(expected.dtype)
        if actual.dtype == np.uint8:
            return _decode_sub_byte(actual, expected.dtype)
        if kind == "int" and np.issubdtype(actual.dtype, np.integer):
            return actual  # the values themselves in a wider integer type, e.g. int4 results held in int8
        also = ", or as values in any integer type" if kind == "int" else ""
        return (
            f"expected {expected.dtype} values as that dtype or as their raw bit patterns in uint8 (one per "
            f"byte){also}; got dtype {actual.dtype}"
        )
    if kind == "int":
        if not (np.issubdtype(actual.dtype, np.integer) or actual.dtype in _SUB_BYTE):
            return f"expected integers ({expected.dtype}), got dtype {actual.dtype}"
        return actual
    return f"expected {expected.dtype} (compared bit for bit), got dtype {actual.dtype}"


def _decode_sub_byte(raw: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Raw sub-byte bit patterns in uint8 → their values (int64); a byte with any bit set above the type's width
    is not a valid encoding and keeps its raw byte value, which lies outside the type's range and so mismatches."""
    bits = 4 if dtype in {np.dtype(ml_dtypes.int4), np.dtype(ml_dtypes.uint4)} else 2
    mask = np.uint8((1 << bits) - 1)
    valid = (raw & ~mask) == 0
    low = (raw & mask).astype(np.int64)
    if dtype in {np.dtype(ml_dtypes.int4), np.dtype(ml_dtypes.int2)}:
        low = np.where(low >= 1 << (bits - 1), low - (1 << bits), low)
    return np.where(valid, low, raw.astype(np.int64))


def _exact_integers(values: np.ndarray) -> np.ndarray:
    """Integers without wrap-around: int64 when that is exact, else Python ints (uint64 above 2**63 - 1)."""
    if values.dtype == np.uint64:
        return values.astype(object)
    return values.astype(np.int64)


def compare(actual: np.ndarray, expected: np.ndarray, *, max_report: int = 10) -> Comparison:
    """Compare two arrays exactly and measure each mismatch in LSBs, float8 codes or ulps.

    $$
    \\text{diff} = \\begin{cases}
    a - e & \\text{integers (LSB)}\\\\
    \\operatorname{ord}(a) - \\operatorname{ord}(e) & \\text{float8 (codes), floats (ulps)}
    \\end{cases}
    $$

    where $\\operatorname{ord}$ numbers the representable values of the type in increasing order. Integer
    ``actual`` arrays of any width compare by value with an integer ``expected`` (uint64 values above $2^{63}-1$
    included, without wrap-around); a sub-byte or float8 ``expected`` also accepts ``actual`` as its raw bit patterns
    in ``uint8``, one element per byte — for sub-byte types every bit above the type's width must be zero, else the
    element mismatches (and shows its raw byte value). Float arrays must have the same dtype.

    Args:
      actual: the backend's output (numpy or anything ``np.asarray`` accepts, e.g. a JAX array).
      expected: the expected output, with its true dtype (``ml_dtypes`` types included).
      max_report: how many of the worst mismatches to keep in :attr:`Comparison.worst`.

    Returns:
      A :class:`Comparison`.

    Raises:
      TypeError: if ``expected`` is not an integer, float8 or float array (``None``, complex, strings).
      ValueError: if ``max_report`` is negative (or not an int).
    """
    if isinstance(max_report, (bool, np.bool_)) or not isinstance(max_report, (int, np.integer)) or max_report < 0:
        raise ValueError(f"max_report must be an int >= 0, got {max_report!r:.80}")
    if expected is None:
        raise TypeError("expected must be an array, got None")
    expected = np.asarray(expected)
    kind = _kind(expected.dtype)
    unit = {"int": "LSB", "float8": "code", "float": "ulp"}[kind]
    try:
        actual = np.asarray(actual)
    except (TypeError, ValueError) as error:  # e.g. a ragged list: reported as a mismatch, not raised
        return Comparison(0, 0, unit, 0.0, (), error=f"actual cannot be made an array: {error}")
    coerced = _coerce(actual, expected)
    if isinstance(coerced, str):
        return Comparison(0, 0, unit, 0.0, (), error=coerced)
    if coerced.shape != expected.shape:
        error = f"shape {coerced.shape} differs from the expected {expected.shape}"
        return Comparison(0, 0, unit, 0.0, (), error=error)
    flat_actual, flat_expected = coerced.reshape(-1), expected.reshape(-1)
    if kind == "int":
        a64, e64 = _exact_integers(flat_actual), _exact_integers(flat_expected)
        if a64.dtype == object or e64.dtype == object:
            a64, e64 = a64.astype(object), e64.astype(object)
        bad = np.asarray(a64 != e64, dtype=bool)
        diff = np.array([float(a - e) for a, e in zip(a64[bad], e64[bad])], np.float64)
    else:
        a_ord, e_ord = _ordinal(flat_actual), _ordinal(flat_expected)
        a_nan, e_nan = np.isnan(flat_actual.astype(np.float32)), np.isnan(flat_expected.astype(np.float32))
        bits = _BITS_VIEW[expected.dtype.itemsize]
        bad = ~((flat_actual.view(bits) == flat_expected.view(bits)) | (a_nan & e_nan))
        a_bad, e_bad = a_ord[bad], e_ord[bad]
        with np.errstate(over="ignore"):
            diff = (a_bad - e_bad).astype(np.float64)
        # Only float64 ordinals of opposite signs can overflow int64; their distance is astronomical anyway.
        opposite = (a_bad < 0) != (e_bad < 0)
        diff = np.where(opposite, a_bad.astype(np.float64) - e_bad.astype(np.float64), diff)
        diff = np.where(a_nan[bad] | e_nan[bad], np.nan, diff)
    positions = np.flatnonzero(bad)
    if positions.size == 0:
        return Comparison(expected.size, 0, unit, 0.0, ())
    magnitude = np.where(np.isnan(diff), np.inf, np.abs(diff))
    order = np.lexsort((positions, -magnitude))[:max_report]
    chosen = positions[order]
    expected_text = _display(flat_expected[chosen], kind)
    actual_text = _display(flat_actual[chosen], kind)
    worst = tuple(
        Mismatch(tuple(int(i) for i in np.unravel_index(p, expected.shape)), e, a, float(d))
        for p, e, a, d in zip(chosen, expected_text, actual_text, diff[order])
    )
    max_abs = float("nan") if np.isnan(diff).any() else float(np.abs(diff).max())
    return Comparison(expected.size, int(positions.size), unit, max_abs, worst)


def _format_diff(diff: float, unit: str) -> str:
    if np.isnan(diff):
        return "NaN vs number"
    if diff == 0:
        return f"0 {unit}s (sign of zero)"
    plural = "" if abs(diff) == 1 or unit == "LSB" else "s"
    return f"{int(diff):+d} {unit}{plural}"


def format_report(comparison: Comparison, name: str = "", *, indent: str = "") -> str:
    """A readable multi-line report of a :class:`Comparison`: the count, the largest size, and the worst elements.

    Args:
      comparison: the result of :func:`compare`.
      name: what was compared (an output name, a case id), for the first line.
      indent: prefix for every line.

    Returns:
      The report; one line when the arrays match.
    """
    if not isinstance(comparison, Comparison):
        raise TypeError(f"comparison must be a testing.Comparison (from compare), got {type(comparison).__name__}")
    if not isinstance(name, str) or not isinstance(indent, str):
        raise TypeError(f"name and indent must be strings, got {type(name).__name__} and {type(indent).__name__}")
    label = f"{name}: " if name else ""
    if comparison.error:
        return f"{indent}{label}{comparison.error}"
    if comparison.mismatches == 0:
        return f"{indent}{label}all {comparison.size} elements match"
    largest = "NaN vs number" if np.isnan(comparison.max_abs_diff) else f"{comparison.max_abs_diff:g} {comparison.unit}"
    lines = [
        f"{indent}{label}{comparison.mismatches} of {comparison.size} elements differ; largest |diff| {largest}; "
        f"worst {len(comparison.worst)}:"
    ]
    rows = [("index", "expected", "actual", "diff")] + [
        (str(m.index), m.expected, m.actual, _format_diff(m.diff, comparison.unit)) for m in comparison.worst
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    for row in rows:
        lines.append(indent + "  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return "\n".join(lines)


def assert_matches(actual: np.ndarray, expected: np.ndarray, *, name: str = "", max_report: int = 10) -> None:
    """Assert that ``actual`` equals ``expected`` exactly; otherwise fail with a report of the worst elements.

    Integers (any width, ml_dtypes ``int4``/``int2`` included) compare by value, float8 by bit pattern, floats by
    bit pattern with any NaN equal to any NaN (see :func:`compare`). The error message gives the number of
    mismatching elements, the largest difference and, for up to ``max_report`` elements (largest difference
    first), the index, the expected and actual values and the difference in LSBs, float8 codes or ulps.

    Example:
      >>> from quantref.runtimes import onnx
      >>> expected = onnx.quantize_linear(x, 0.1, np.uint8(3))     # doctest: +SKIP
      >>> assert_matches(my_backend_quantize(x, 0.1, 3), expected)  # doctest: +SKIP

    Args:
      actual: the output under test.
      expected: the expected output (e.g. from :mod:`quantref.runtimes`), with its true dtype.
      name: a label for the message.
      max_report: how many of the worst elements to list.

    Raises:
      AssertionError: on any mismatch, a shape mismatch, or an ``actual`` of an incomparable dtype.
      TypeError: if ``expected`` is not an integer, float8 or float array (as :func:`compare`), or ``name`` is not
        a string.
      ValueError: if ``max_report`` is not an int >= 0.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a string, got {type(name).__name__}")
    comparison = compare(actual, expected, max_report=max_report)
    if not comparison.ok:
        raise AssertionError("\n" + format_report(comparison, name or "arrays"))
