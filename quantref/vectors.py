"""Test vectors for other backends: quantref's expected integers as ``.npz`` files and a JSON manifest, and a checker.

``quantref vectors OUT_DIR`` (:func:`write_vectors`) writes a versioned set of cases — for each case its inputs, its
attributes, its expected outputs and the runtime (and version) whose answer it records — in a form that a C++ or Rust
test reads without Python:

```
OUT_DIR/
  manifest.json          format version, quantref version, the runtimes, the schema, and one entry per case
  cases/<case id>.npz    the case's inputs and expected outputs, one .npy member per array name
```

An ``.npz`` is a plain zip archive (stored, not compressed) of ``.npy`` files. Every array is stored in a standard
numpy type; the types numpy does not have — ``int4``, ``uint4``, ``int2``, ``uint2`` and the four float8 types — are
stored as their **raw bit patterns in uint8, one element per byte** (``int4`` −3 is ``0x0D``; float8 e4m3fn 448 is
``0x7E``), and the manifest gives each array's true ``dtype`` next to its ``storage`` type.

``quantref check OUT_DIR RESULTS`` (:func:`check`) compares another backend's outputs with the expected ones. RESULTS
is either a directory holding ``<case id>.npz`` per case, each with the case's output names, or one ``.npz`` whose
members are named ``<case id>/<output name>``. Results use the same encoding as the vectors (sub-byte and float8 as
uint8 bit patterns; integers may also come in any wider integer type). :func:`compute_results` writes quantref's own
results in that layout — the checker's self-test, and a template for a backend's test driver.

Every expectation is computed by :mod:`quantref.runtimes`, which the test suite cross-checks against live
onnxruntime, the ONNX reference evaluator and PyTorch with zero mismatches; writing the vectors needs none of those
runtimes installed. The files are deterministic: the same quantref version writes the same bytes.
"""

from __future__ import annotations

import fnmatch
import io
import json
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

import quantref
from quantref import testing

__all__ = [
    "FORMAT_VERSION",
    "RUNTIMES",
    "SCHEMA",
    "encode",
    "decode",
    "Case",
    "build_cases",
    "evaluate",
    "write_vectors",
    "load_manifest",
    "load_case",
    "compute_results",
    "CaseResult",
    "CheckReport",
    "check",
    "format_check",
]

#: Version of the file layout and manifest schema. A reader should refuse a version it does not know.
FORMAT_VERSION = "1"

#: The runtimes whose answers the cases record: what was run, and which quantref function reproduces it.
RUNTIMES: dict[str, dict[str, str]] = {
    "onnxruntime": {
        "runtime": "onnxruntime",
        "version": "1.32.0",
        "details": "CPU execution provider, x86-64",
        "reproduced_by": "quantref.runtimes.onnx, flavor='onnxruntime'",
    },
    "onnx-reference": {
        "runtime": "ONNX reference evaluator (onnx.reference.ReferenceEvaluator)",
        "version": "onnx 1.23.2",
        "details": "the Python reference implementation that ships with the onnx package",
        "reproduced_by": "quantref.runtimes.onnx, flavor='reference'",
    },
    "torch": {
        "runtime": "PyTorch",
        "version": "2.13.0+cpu",
        "details": "CPU, quantized engine x86 (fbgemm)",
        "reproduced_by": "quantref.runtimes.torch",
    },
    "tflite": {
        "runtime": "TFLite / LiteRT reference integer kernels",
        "version": "tensorflow/lite/kernels/internal/reference (default build: gemmlowp double rounding)",
        "details": "as an x86-64 build computes them",
        "reproduced_by": "quantref.runtimes.tflite, single_rounding=False",
    },
    "tflite-single-rounding": {
        "runtime": "TFLite / LiteRT reference integer kernels",
        "version": "tensorflow/lite/kernels/internal/reference, built with TFLITE_SINGLE_ROUNDING",
        "details": "as an x86-64 build computes them",
        "reproduced_by": "quantref.runtimes.tflite, single_rounding=True",
    },
}

# Types stored as raw bit patterns in uint8 (numpy has no such dtype; C++/Rust npy readers cannot read ml_dtypes).
_BIT_PATTERN_TYPES: dict[str, np.dtype] = {
    name: np.dtype(getattr(ml_dtypes, name))
    for name in ("int4", "uint4", "int2", "uint2", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz")
}
_PLAIN_TYPES = ("int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "float32", "float64")

#: What every field of ``manifest.json`` means; written into the manifest itself as its ``schema`` field.
SCHEMA: dict[str, Any] = {
    "format": "always 'quantref-vectors'",
    "format_version": "version of this layout; this schema is version 1",
    "quantref_version": "the quantref version that wrote the files",
    "layout": "cases/<id>.npz per case: a zip (stored) of <name>.npy, one per input and expected output",
    "encoding": (
        "each array is stored in its 'storage' numpy type; int4/uint4/int2/uint2 and float8_* are stored as their "
        "raw bit patterns in uint8, one element per byte (int4 -3 -> 0x0D, float8_e4m3fn 448 -> 0x7E); every other "
        "dtype is stored as itself, little-endian, C order"
    ),
    "comparison": (
        "exact: integers by value (size of a mismatch in LSBs), float8 by bit pattern (size in codes), floats by bit "
        "pattern with any NaN equal to any NaN (size in ulps)"
    ),
    "results": (
        "a backend's results: RESULTS/<id>.npz with one member per output name, or one .npz with members "
        "<id>/<output name>; same encoding (integer outputs may be given in any integer type)"
    ),
    "runtimes": "key -> {runtime, version, details, reproduced_by}: what each case's expectation follows",
    "cases[]": {
        "id": "unique case id, '<operator>.<label>'; also the file name cases/<id>.npz",
        "operator": "'onnx.<OpType>', 'torch.<function>' or 'tflite.<kernel>'",
        "runtime": "a key of 'runtimes': whose answer 'outputs' records",
        "expectation": "the same in words: runtime, version, details, and the quantref function reproducing it",
        "description": "what the case exercises",
        "file": "path of the .npz, relative to the manifest",
        "attributes": "the operator's attributes (ONNX attribute names; keyword arguments for torch/tflite)",
        "inputs": "list of {name, dtype, storage, shape}, in the operator's input order; absent optional inputs "
        "omitted",
        "outputs": "list of {name, dtype, storage, shape}: the expected outputs",
    },
}


# ----------------------------------------------------------------------------------------------------------------
# Encoding


def encode(array: np.ndarray) -> tuple[np.ndarray, str]:
    """An array as stored in the vectors, and its true dtype name.

    Args:
      array: numpy or ml_dtypes array (JAX arrays are converted).

    Returns:
      ``(stored, dtype_name)``: sub-byte and float8 arrays as their uint8 bit patterns, everything else unchanged.

    Raises:
      ValueError: for a dtype the format does not define.
    """
    array = np.asarray(array)
    array = array if array.flags.c_contiguous else array.copy(order="C")
    name = array.dtype.name
    if name in _BIT_PATTERN_TYPES:
        return array.view(np.uint8), name
    if name not in _PLAIN_TYPES:
        raise ValueError(f"dtype {name} is not part of vectors format {FORMAT_VERSION}")
    return array, name


def decode(stored: np.ndarray, dtype: str) -> np.ndarray:
    """The inverse of :func:`encode`: a stored array back in its true dtype (ml_dtypes for sub-byte and float8).

    Args:
      stored: the array as read from the ``.npz``.
      dtype: the manifest's ``dtype`` for it.

    Returns:
      The array with dtype ``dtype``.

    Raises:
      ValueError: if ``dtype`` is unknown or the stored array's type does not fit it.
    """
    if dtype in _BIT_PATTERN_TYPES:
        if stored.dtype != np.uint8:
            raise ValueError(f"{dtype} must be stored as uint8 bit patterns, got {stored.dtype}")
        return stored.view(_BIT_PATTERN_TYPES[dtype])
    if dtype not in _PLAIN_TYPES or stored.dtype.name != dtype:
        raise ValueError(f"cannot decode a {stored.dtype} array as {dtype!r}")
    return stored


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` without the timestamps: a fixed date in every zip entry, so equal arrays give equal bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            archive.writestr(info, buffer.getvalue())


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file; a ValueError naming the file if it cannot be read (truncated, not a zip, ...)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(f"cannot read {path}: {error}") from error


# ----------------------------------------------------------------------------------------------------------------
# The cases


@dataclass(frozen=True)
class Case:
    """One test case: an operator applied to concrete inputs under one runtime's semantics.

    Attributes:
      id: unique id, ``"<operator>.<label>"``.
      operator: ``"onnx.QuantizeLinear"``, ``"torch.quantize_per_tensor"``, ``"tflite.Conv2D"``, ...
      runtime: a key of :data:`RUNTIMES`.
      description: what the case exercises.
      inputs: input name → array (true dtypes, ml_dtypes included), in the operator's order.
      attributes: JSON-serializable attributes.
    """

    id: str
    operator: str
    runtime: str
    description: str
    inputs: dict[str, np.ndarray]
    attributes: dict[str, Any] = field(default_factory=dict)


def _rng(label: str) -> np.random.Generator:
    # One stream per case, seeded by its label: adding a case never changes another case's data.
    return np.random.default_rng(zlib.crc32(label.encode()))


def _f32(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


def _ints(rng: np.random.Generator, low: int, high: int, shape, dtype) -> np.ndarray:
    """Uniform random integers in [low, high) of the given dtype."""
    return rng.integers(low, high, shape).astype(dtype)


def _ties(scale: float, ks: np.ndarray) -> np.ndarray:
    """x = (k + ½)·s rounded to float32, and its two float32 neighbours: where round-half rules and 1/s show."""
    ties = ((np.asarray(ks, np.float64) + 0.5) * float(np.float32(scale))).astype(np.float32)
    return np.concatenate([ties, np.nextafter(ties, np.float32(np.inf)), np.nextafter(ties, np.float32(-np.inf))])


SPECIALS = _f32(
    [
        np.nan,
        -np.nan,
        np.inf,
        -np.inf,
        0.0,
        -0.0,
        1e-45,
        -1e-45,
        1e-38,
        1e30,
        -1e30,
        3e9,
        -3e9,
        2.0**31,
        -(2.0**31),
        9.3e18,
        65504.0,
        -65504.0,
    ]
)

_INT_RANGES = {
    "int8": (-128, 127),
    "uint8": (0, 255),
    "int16": (-32768, 32767),
    "uint16": (0, 65535),
    "int4": (-8, 7),
    "uint4": (0, 15),
    "int2": (-2, 1),
    "uint2": (0, 3),
}
_QL_PARAMS = {  # scale and zero point per output type: non-power-of-two scales, zero points off the middle
    "int8": (0.0123, -7),
    "uint8": (0.1, 3),
    "int16": (1 / 3, 1234),
    "uint16": (0.37, 40000),
    "int4": (0.37, -3),
    "uint4": (0.37, 5),
    "int2": (0.5, -1),
    "uint2": (0.3, 1),
}


def _code_range_ks(lo: int, hi: int, zero_point: int, label: str) -> np.ndarray:
    """Tie indices k covering the whole grid (and 3 beyond each end) — sampled for 16-bit grids."""
    first, last = lo - zero_point - 3, hi - zero_point + 3
    if last - first <= 600:
        return np.arange(first, last)
    edges = np.concatenate([np.arange(first, first + 8), np.arange(last - 8, last)])
    return np.sort(np.concatenate([edges, _rng(label).integers(first, last, 500)]))


def _onnx_quantize_cases() -> list[Case]:
    cases = []
    op = "onnx.QuantizeLinear"
    for name, (lo, hi) in _INT_RANGES.items():
        scale, zero_point = _QL_PARAMS[name]
        dtype = _BIT_PATTERN_TYPES.get(name, np.dtype(name))
        zp = np.array(zero_point).astype(dtype)
        label = f"{name}.ties"
        ks = _code_range_ks(lo, hi, zero_point, label)
        random = (_rng(label).standard_normal(256) * scale * (hi - lo) / 4).astype(np.float32)
        x = np.concatenate([_ties(scale, ks), random])
        cases.append(
            Case(
                f"{op}.{label}",
                op,
                "onnxruntime",
                f"{name} output, per-tensor: constructed ties x = (k + 1/2)s across the grid and 3 codes "
                "beyond (saturation), their float32 neighbours, and normal samples",
                {"x": x, "y_scale": _f32(scale), "y_zero_point": zp},
                {"axis": 1},
            )
        )
        for runtime, suffix in (("onnxruntime", ""), ("onnx-reference", ".reference")):
            cases.append(
                Case(
                    f"{op}.{name}.specials{suffix}",
                    op,
                    runtime,
                    f"{name} output: NaN, +-Inf, +-0, denormals, values far beyond the grid and beyond int32",
                    {"x": SPECIALS * _f32(scale), "y_scale": _f32(scale), "y_zero_point": zp},
                    {"axis": 1},
                )
            )
    rng = _rng("quantize_linear.granularity")
    cases += [
        Case(
            f"{op}.uint8.default_zero_point",
            op,
            "onnxruntime",
            "no zero point and no output_dtype: uint8 with zero point 0",
            {"x": _f32(rng.standard_normal(64) * 3), "y_scale": _f32(0.02)},
            {"axis": 1},
        ),
        Case(
            f"{op}.int4.output_dtype",
            op,
            "onnxruntime",
            "no zero point; the output_dtype attribute selects int4",
            {"x": np.concatenate([_ties(0.37, np.arange(-11, 11)), SPECIALS]), "y_scale": _f32(0.37)},
            {"axis": 1, "output_dtype": "int4"},
        ),
        Case(
            f"{op}.int8.per_axis",
            op,
            "onnxruntime",
            "per-axis scale and zero point along axis 1 of a 3-D input",
            {
                "x": _f32(rng.standard_normal((2, 3, 40)) * 2),
                "y_scale": _f32([0.01, 0.02, 0.037]),
                "y_zero_point": np.array([-5, 0, 9], np.int8),
            },
            {"axis": 1},
        ),
        Case(
            f"{op}.uint8.per_axis_negative_axis",
            op,
            "onnxruntime",
            "per-axis along axis=-1 (the last axis)",
            {
                "x": _f32(rng.standard_normal((16, 5))),
                "y_scale": _f32([0.004, 0.01, 0.02, 0.03, 0.05]),
                "y_zero_point": np.array([0, 3, 128, 200, 255], np.uint8),
            },
            {"axis": -1},
        ),
        Case(
            f"{op}.int4.blocked",
            op,
            "onnxruntime",
            "blocked along axis 1, block_size 4, with a ragged last block (10 = 4 + 4 + 2)",
            {
                "x": _f32(rng.standard_normal((4, 10)) * 2),
                "y_scale": _f32(rng.uniform(0.1, 0.5, (4, 3))),
                "y_zero_point": _ints(rng, -2, 3, (4, 3), ml_dtypes.int4),
            },
            {"axis": 1, "block_size": 4},
        ),
        Case(
            f"{op}.uint8.blocked_axis0",
            op,
            "onnxruntime",
            "blocked along axis 0, block_size 4 (6 = 4 + 2)",
            {
                "x": _f32(rng.standard_normal((6, 3))),
                "y_scale": _f32(rng.uniform(0.005, 0.02, (2, 3))),
                "y_zero_point": _ints(rng, 100, 150, (2, 3), np.uint8),
            },
            {"axis": 0, "block_size": 4},
        ),
    ]
    for name in ("float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz"):
        dtype = _BIT_PATTERN_TYPES[name]
        finite = np.arange(256, dtype=np.uint8).view(dtype).astype(np.float32)
        grid = np.unique(np.abs(finite[np.isfinite(finite)]))
        top = grid[-1]
        middles = ((grid[1:].astype(np.float64) + grid[:-1]) / 2).astype(np.float32)
        factors = (1.0, 1.03, 1.0625, 1.07, 1.1, 1.125, 1.2, 1.5, 2.0)
        bands = _f32([top * f for f in factors] + [1e6, 480, 488, 495.9, 496, 61440, 65535, 65536])
        values = np.concatenate(
            [grid, middles, np.nextafter(middles, np.float32(np.inf)), np.nextafter(middles, np.float32(0)), bands]
        )
        values = np.concatenate([values, -values, _f32([np.nan, np.inf, -np.inf])])
        scale = 2.0  # exact: x / 2 lands on the constructed values
        random = _f32(_rng(name).standard_normal(512) * top / 3)
        for saturate in (1, 0):
            # The reference evaluator differs only for e4m3fn without saturation and for e5m2 (its NaN code).
            differs = name == "float8_e5m2" or (name == "float8_e4m3fn" and not saturate)
            for runtime, suffix in (("onnxruntime", ""), ("onnx-reference", ".reference"))[: 2 if differs else 1]:
                label = f"{name}.{'saturate' if saturate else 'no_saturate'}{suffix}"
                cases.append(
                    Case(
                        f"{op}.{label}",
                        op,
                        runtime,
                        f"{name} output, saturate={saturate}: every finite value, the ties between neighbours and "
                        "their float32 neighbours, the overflow bands, +-Inf, NaN, and normal samples",
                        {
                            "x": np.concatenate([values * _f32(scale), random]),
                            "y_scale": _f32(scale),
                            "y_zero_point": np.zeros((), dtype),
                        },
                        {"axis": 1, "saturate": saturate},
                    )
                )
    return cases


def _onnx_dequantize_cases() -> list[Case]:
    op = "onnx.DequantizeLinear"
    cases = []
    for name, (lo, hi) in _INT_RANGES.items():
        scale, zero_point = _QL_PARAMS[name]
        dtype = _BIT_PATTERN_TYPES.get(name, np.dtype(name))
        if hi - lo < 256:
            codes = np.arange(lo, hi + 1)
        else:
            codes = np.concatenate([np.arange(lo, lo + 4), np.arange(hi - 3, hi + 1), _rng(name).integers(lo, hi, 252)])
        cases.append(
            Case(
                f"{op}.{name}",
                op,
                "onnxruntime",
                f"{name} input: every code (16-bit: a sample), per-tensor",
                {"x": codes.astype(dtype), "x_scale": _f32(scale), "x_zero_point": np.array(zero_point).astype(dtype)},
                {"axis": 1},
            )
        )
    int32 = np.array([-(2**31), -(2**31) + 1, -(2**24) - 1, -1, 0, 1, 2**24 + 1, 2**31 - 1], np.int32)
    cases.append(
        Case(
            f"{op}.int32",
            op,
            "onnxruntime",
            "int32 input: the zero point is subtracted in wrapping int32, then one rounding to float32",
            {"x": int32, "x_scale": _f32(0.001), "x_zero_point": np.array(7, np.int32)},
            {"axis": 1},
        )
    )
    for name in ("float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz"):
        cases.append(
            Case(
                f"{op}.{name}",
                op,
                "onnxruntime",
                f"{name} input: all 256 bit patterns (NaN included)",
                {"x": np.arange(256, dtype=np.uint8).view(_BIT_PATTERN_TYPES[name]), "x_scale": _f32(0.5)},
                {"axis": 1},
            )
        )
    rng = _rng("dequantize_linear.granularity")
    cases += [
        Case(
            f"{op}.int8.per_axis",
            op,
            "onnxruntime",
            "per-axis along axis 0",
            {
                "x": _ints(rng, -128, 128, (3, 50), np.int8),
                "x_scale": _f32([0.01, 0.2, 3.0]),
                "x_zero_point": np.array([-3, 0, 17], np.int8),
            },
            {"axis": 0},
        ),
        Case(
            f"{op}.int4.blocked",
            op,
            "onnxruntime",
            "blocked along axis 1, block_size 4, ragged last block",
            {
                "x": _ints(rng, -8, 8, (3, 10), ml_dtypes.int4),
                "x_scale": _f32(rng.uniform(0.1, 1, (3, 3))),
                "x_zero_point": _ints(rng, -2, 3, (3, 3), ml_dtypes.int4),
            },
            {"axis": 1, "block_size": 4},
        ),
    ]
    return cases


def _onnx_other_cases() -> list[Case]:
    cases = []
    rng = _rng("onnx.other")
    op = "onnx.DynamicQuantizeLinear"
    for label, x in (
        ("random", rng.standard_normal(1000) * 2.5),
        ("all_positive", rng.uniform(0.1, 7, 64)),
        ("all_negative", -rng.uniform(0.1, 7, 64)),
        ("constant", np.full(16, 2.5)),
        ("ties", _ties(6.0 / 255, np.arange(-60, 195))),
    ):
        cases.append(
            Case(
                f"{op}.{label}",
                op,
                "onnxruntime",
                f"uint8 dynamic quantization of {label.replace('_', ' ')} input",
                {"x": _f32(x)},
            )
        )
    for runtime, suffix in (("onnxruntime", ""), ("onnx-reference", ".reference")):
        cases.append(
            Case(
                f"{op}.all_zero{suffix}",
                op,
                runtime,
                "all-zero input: onnxruntime takes scale 1, the reference evaluator 1/255",
                {"x": np.zeros(16, np.float32)},
            )
        )
    cases.append(
        Case(
            f"{op}.nan.reference",
            op,
            "onnx-reference",
            "a NaN element makes the reference evaluator's scale NaN (onnxruntime's answer depends on the "
            "NaN's position and the CPU's vector width: no onnxruntime case)",
            {"x": _f32([0.5, np.nan, -1.0, 2.0])},
        )
    )

    op = "onnx.MatMulInteger"
    cases += [
        Case(
            f"{op}.uint8_uint8",
            op,
            "onnxruntime",
            "uint8 x uint8 with scalar zero points",
            {
                "a": _ints(rng, 0, 256, (5, 16), np.uint8),
                "b": _ints(rng, 0, 256, (16, 7), np.uint8),
                "a_zero_point": np.array(3, np.uint8),
                "b_zero_point": np.array(200, np.uint8),
            },
        ),
        Case(
            f"{op}.int8_int8_per_column",
            op,
            "onnxruntime",
            "int8 x int8, per-column b zero point",
            {
                "a": _ints(rng, -128, 128, (4, 32), np.int8),
                "b": _ints(rng, -128, 128, (32, 6), np.int8),
                "a_zero_point": np.array(-5, np.int8),
                "b_zero_point": _ints(rng, -10, 10, 6, np.int8),
            },
        ),
        Case(
            f"{op}.uint8_int8_batched",
            op,
            "onnxruntime",
            "uint8 x int8, batched 3-D a against 2-D b",
            {
                "a": _ints(rng, 0, 256, (2, 4, 8), np.uint8),
                "b": _ints(rng, -128, 128, (8, 3), np.int8),
                "a_zero_point": np.array(128, np.uint8),
                "b_zero_point": np.array(0, np.int8),
            },
        ),
        Case(
            f"{op}.extremes",
            op,
            "onnxruntime",
            "the largest products: 255 - 0 times -128 - 127, summed 64 times",
            {
                "a": np.full((2, 64), 255, np.uint8),
                "b": np.full((64, 2), -128, np.int8),
                "a_zero_point": np.array(0, np.uint8),
                "b_zero_point": np.array(127, np.int8),
            },
        ),
    ]
    op = "onnx.ConvInteger"
    cases += [
        Case(
            f"{op}.uint8_padded_strided",
            op,
            "onnxruntime",
            "uint8 x uint8, pads 1, stride 2, scalar zero points",
            {
                "x": _ints(rng, 0, 256, (1, 3, 7, 7), np.uint8),
                "w": _ints(rng, 0, 256, (4, 3, 3, 3), np.uint8),
                "x_zero_point": np.array(17, np.uint8),
                "w_zero_point": np.array(128, np.uint8),
            },
            {"strides": [2, 2], "pads": [1, 1, 1, 1], "dilations": [1, 1], "group": 1},
        ),
        Case(
            f"{op}.int8_grouped_dilated",
            op,
            "onnxruntime",
            "int8 x int8, group 2, dilation 2, asymmetric pads (onnxruntime supports only a scalar w zero point)",
            {
                "x": _ints(rng, -128, 128, (2, 4, 8, 8), np.int8),
                "w": _ints(rng, -128, 128, (6, 2, 2, 3), np.int8),
                "x_zero_point": np.array(-3, np.int8),
                "w_zero_point": np.array(2, np.int8),
            },
            {"strides": [1, 1], "pads": [0, 1, 2, 0], "dilations": [2, 2], "group": 2},
        ),
    ]

    op = "onnx.QLinearMatMul"
    k = np.arange(-128, 128)
    for out, zero_point in (("uint8", 1), ("int8", -3)):
        # onnxruntime implements (a, b, y) = (uint8, int8 or uint8, uint8) and (int8, int8, int8).
        a, a_zero_point = (128 + k, 128) if out == "uint8" else (k, 0)
        inputs = {
            "a": a.astype(out).reshape(-1, 1),
            "a_scale": _f32(0.5),
            "a_zero_point": np.array(a_zero_point).astype(out),
            "b": np.array([[1]], np.int8),
            "b_scale": _f32(1.0),
            "b_zero_point": np.array(0, np.int8),
            "y_scale": _f32(1.0),
            "y_zero_point": np.array(zero_point).astype(out),
        }
        for runtime, suffix in (("onnxruntime", ""), ("onnx-reference", ".reference")):
            cases.append(
                Case(
                    f"{op}.ties_{out}{suffix}",
                    op,
                    runtime,
                    f"acc = -128..127, M = 1/2, odd y_zero_point {zero_point}: every odd acc is a tie; "
                    "zero point after rounding (onnxruntime) or before (reference)",
                    inputs,
                )
            )
    scales = {"a_scale": _f32(0.0173), "b_scale": _f32(0.0091), "y_scale": _f32(0.0537)}
    random_inputs = {
        "a": _ints(rng, 0, 256, (16, 64), np.uint8),
        "a_scale": scales["a_scale"],
        "a_zero_point": np.array(131, np.uint8),
        "b": _ints(rng, -128, 128, (64, 16), np.int8),
        "b_scale": scales["b_scale"],
        "b_zero_point": np.array(0, np.int8),
        "y_scale": scales["y_scale"],
        "y_zero_point": np.array(120, np.uint8),
    }
    per_column = {
        "a": _ints(rng, -128, 128, (8, 32), np.int8),
        "a_scale": _f32(0.02),
        "a_zero_point": np.array(4, np.int8),
        "b": _ints(rng, -128, 128, (32, 5), np.int8),
        "b_scale": _f32(rng.uniform(0.001, 0.01, 5)),
        "b_zero_point": _ints(rng, -3, 3, 5, np.int8),
        "y_scale": _f32(0.011),
        "y_zero_point": np.array(-9, np.int8),
    }
    cases.append(Case(f"{op}.random_uint8", op, "onnxruntime", "uint8 x int8 -> uint8, random operands", random_inputs))
    cases.append(
        Case(
            f"{op}.per_column_int8",
            op,
            "onnxruntime",
            "int8 x int8 -> int8 with per-column b scale and zero point",
            per_column,
        )
    )

    op = "onnx.QLinearConv"
    conv = {
        "x": _ints(rng, 0, 256, (1, 4, 9, 9), np.uint8),
        "x_scale": _f32(0.0213),
        "x_zero_point": np.array(97, np.uint8),
        "w": _ints(rng, -127, 128, (6, 4, 3, 3), np.int8),
        "w_scale": _f32(rng.uniform(0.002, 0.02, 6)),
        "w_zero_point": np.zeros(6, np.int8),
        "y_scale": _f32(0.0731),
        "y_zero_point": np.array(11, np.uint8),
        "B": _ints(rng, -5000, 5000, 6, np.int32),
    }
    grouped = {
        "x": _ints(rng, -20, 20, (2, 4, 6, 6), np.int8),
        "x_scale": _f32(0.5),
        "x_zero_point": np.array(-1, np.int8),
        "w": _ints(rng, -10, 10, (4, 2, 3, 3), np.int8),
        "w_scale": _f32(0.25),
        "w_zero_point": np.array(0, np.int8),
        "y_scale": _f32(4.0),
        "y_zero_point": np.array(5, np.int8),
    }
    cases.append(
        Case(
            f"{op}.per_channel_uint8",
            op,
            "onnxruntime",
            "uint8 input, int8 per-channel weights, int32 bias, pads 1, stride 2",
            conv,
            {"strides": [2, 2], "pads": [1, 1, 1, 1], "dilations": [1, 1], "group": 1},
        )
    )
    for runtime, suffix in (("onnxruntime", ""), ("onnx-reference", ".reference")):
        cases.append(
            Case(
                f"{op}.grouped_int8_ties{suffix}",
                op,
                runtime,
                "int8 input and weights, group 2, no bias, M = 1/32 exactly and an odd y_zero_point: "
                "many exact ties, where the zero point's place (after or before rounding) shows",
                grouped,
                {"strides": [1, 1], "pads": [1, 0, 1, 0], "dilations": [1, 1], "group": 2},
            )
        )
    return cases


def _torch_cases() -> list[Case]:
    cases = []
    params = {
        "quint8": (0.1, 3, 0, 255),
        "qint8": (0.00214854861, -7, -128, 127),
        "qint32": (1 / 3, 12345, -(2**31), 2**31 - 1),
    }
    for dtype, (scale, zero_point, lo, hi) in params.items():
        label = f"{dtype}.ties"
        ks = np.arange(-300, 300) if dtype == "qint32" else np.arange(lo - zero_point - 3, hi - zero_point + 3)
        x = np.concatenate([_ties(scale, ks), _f32(_rng(label).standard_normal(256) * scale * 40)])
        for op in ("torch.quantize_per_tensor",):
            cases.append(
                Case(
                    f"{op}.{label}",
                    op,
                    "torch",
                    f"{dtype}, scale {scale:.9g}, zero point {zero_point}: ties, neighbours, saturation, samples",
                    {"x": x, "scale": _f32(scale), "zero_point": np.array(zero_point, np.int64)},
                    {"dtype": dtype},
                )
            )
            cases.append(
                Case(
                    f"{op}.{dtype}.specials",
                    op,
                    "torch",
                    f"{dtype}: NaN, +-Inf, +-0, huge values",
                    {"x": SPECIALS, "scale": _f32(scale), "zero_point": np.array(zero_point, np.int64)},
                    {"dtype": dtype},
                )
            )
        # per channel: row c holds the ties of scale c, then the specials
        scales = _f32([scale, scale * 3.7, scale / 1.9])
        zero_points = np.array([zero_point, lo + (hi - lo) // 4, hi - 5 if dtype != "qint32" else -99999], np.int64)
        rows = [np.concatenate([_ties(s, np.arange(-140, 140)), SPECIALS]) for s in scales]
        op = "torch.quantize_per_channel"
        cases.append(
            Case(
                f"{op}.{dtype}",
                op,
                "torch",
                f"{dtype}, axis 0, three channels: ties and specials",
                {"x": np.stack(rows), "scales": scales, "zero_points": zero_points},
                {"axis": 0, "dtype": dtype},
            )
        )
    op = "torch.quantize_per_channel"
    rng = _rng("torch.per_channel_axis1")
    cases.append(
        Case(
            f"{op}.quint8.axis1_4d",
            op,
            "torch",
            "quint8, axis 1 of an NCHW tensor",
            {
                "x": _f32(rng.standard_normal((2, 3, 4, 5))),
                "scales": _f32([0.01, 0.02, 0.013]),
                "zero_points": np.array([0, 128, 255], np.int64),
            },
            {"axis": 1, "dtype": "quint8"},
        )
    )

    op = "torch.fake_quantize_per_tensor_affine"
    for label, (scale, zero_point, lo, hi) in (
        ("uint8", (0.1, 3, 0, 255)),
        ("int8", (0.00214854861, 0, -128, 127)),
        ("int4", (0.37, -2, -8, 7)),
    ):
        x = np.concatenate([_ties(scale, np.arange(lo - zero_point - 3, hi - zero_point + 3)), SPECIALS])
        cases.append(
            Case(
                f"{op}.{label}",
                op,
                "torch",
                f"quant range [{lo}, {hi}], scale {scale:.9g}, zero point {zero_point}: ties and specials",
                {"x": x, "scale": _f32(scale), "zero_point": np.array(zero_point, np.int64)},
                {"quant_min": lo, "quant_max": hi},
            )
        )
    op = "torch.fake_quantize_per_channel_affine"
    scales = _f32([0.1, 0.00214854861, 0.37])
    rows = [np.concatenate([_ties(s, np.arange(-135, 135)), SPECIALS]) for s in scales]
    cases.append(
        Case(
            f"{op}.int8",
            op,
            "torch",
            "quant range [-128, 127], axis 0: ties and specials (+Inf -> quant_min)",
            {"x": np.stack(rows), "scale": scales, "zero_point": np.array([0, -7, 12], np.int64)},
            {"axis": 0, "quant_min": -128, "quant_max": 127},
        )
    )

    op = "torch.MinMaxObserver"
    rng = _rng("torch.observer")
    data = _f32(rng.standard_normal(1000) * 1.7 + 0.4)
    configurations = [
        ("quint8", "per_tensor_affine", False),
        ("quint8", "per_tensor_affine", True),
        ("qint8", "per_tensor_affine", False),
        ("qint8", "per_tensor_symmetric", False),
        ("qint8", "per_tensor_symmetric", True),
        ("quint8", "per_tensor_symmetric", False),
        ("qint32", "per_tensor_affine", False),
    ]
    for dtype, qscheme, reduce_range in configurations:
        label = f"{dtype}.{qscheme}" + (".reduce_range" if reduce_range else "")
        cases.append(
            Case(
                f"{op}.{label}",
                op,
                "torch",
                "calculate_qparams after one forward of random data",
                {"x": data},
                {"dtype": dtype, "qscheme": qscheme, "reduce_range": reduce_range},
            )
        )
    for label, x in (("all_zero", np.zeros(8, np.float32)), ("all_positive", _f32(rng.uniform(0.5, 3, 100)))):
        cases.append(
            Case(
                f"{op}.quint8.per_tensor_affine.{label}",
                op,
                "torch",
                f"{label.replace('_', ' ')} input (all zero: scale = float32 eps)",
                {"x": x},
                {"dtype": "quint8", "qscheme": "per_tensor_affine", "reduce_range": False},
            )
        )
    return cases


def _tflite_cases() -> list[Case]:
    from quantref.runtimes import tflite

    cases = []
    rng = _rng("tflite")
    op = "tflite.QuantizeMultiplier"
    edge = [
        0.0,
        1.0,
        0.5,
        0.25,
        0.75,
        2.0,
        1.5,
        3.0,
        1e-10,
        1e-30,
        2.0**-31,
        2.0**-32,
        1 - 2.0**-33,
        1 - 2.0**-31,
        0.9999999999,
        1.0000000001,
        -0.5,
        -1.0,
        -0.3,
        1234.5678,
        2.0**30,
        2.0**31,
        2.0**40,
        4.6e-10,
    ]
    multipliers = np.concatenate([np.array(edge), np.exp(rng.uniform(-25, 12, 200))])
    for runtime, suffix in (("tflite", ""), ("tflite-single-rounding", ".single_rounding")):
        cases.append(
            Case(
                f"{op}.edges_and_random{suffix}",
                op,
                runtime,
                "exact powers of two, values that round up to 2^31, tiny values that flush to zero, "
                "negatives, large shifts, and log-uniform samples",
                {"real_multiplier": multipliers},
            )
        )
    op = "tflite.MultiplyByQuantizedMultiplier"
    pairs = [tflite.quantize_multiplier(m) for m in (0.5, 0.3, 0.0013, 0.75, 3.05e-5, 1.7, 0.999)]
    x_values = np.concatenate(
        [
            np.arange(-2048, 2048),
            rng.integers(-(2**31), 2**31, 2000),
            [-(2**31), -(2**31) + 1, 2**31 - 1, 2**30, -(2**30)],
        ]
    ).astype(np.int64)
    grid_x, grid_pair = np.meshgrid(x_values, np.arange(len(pairs)), indexing="ij")
    inputs = {
        "x": grid_x.ravel().astype(np.int32),
        "quantized_multiplier": np.array([pairs[i][0] for i in grid_pair.ravel()], np.int32),
        "shift": np.array([pairs[i][1] for i in grid_pair.ravel()], np.int32),
    }
    for runtime, suffix in (("tflite", ".double_rounding"), ("tflite-single-rounding", ".single_rounding")):
        cases.append(
            Case(
                f"{op}{suffix}",
                op,
                runtime,
                "elementwise x * M for 7 multipliers (shifts -15..1) and x in -2048..2047, random int32 and "
                "the extremes; the default build rounds twice (up to 0.75 LSB off), single rounding once",
                inputs,
            )
        )
    op = "tflite.Quantize"
    for dtype, scale, zero_point, lo, hi in (
        ("int8", 0.1, -3, -128, 127),
        ("uint8", 0.1, 3, 0, 255),
        ("int16", 1 / 3, 0, -32768, 32767),
    ):
        ks = _code_range_ks(lo, hi, zero_point, f"tflite.{dtype}")
        cases.append(
            Case(
                f"{op}.{dtype}",
                op,
                "tflite",
                f"{dtype}, scale {scale:.9g}, zero point {zero_point}: ties (half away from zero), specials",
                {
                    "x": np.concatenate([_ties(scale, ks), SPECIALS]),
                    "scale": _f32(scale),
                    "zero_point": np.array(zero_point, np.int32),
                },
                {"dtype": dtype},
            )
        )
    fc_scales = _f32(rng.uniform(0.002, 0.02, 8))
    fc_multiplier, fc_shift = tflite.per_channel_multipliers(0.05, fc_scales, 0.1)
    fc = {
        "x": _ints(rng, -128, 128, (4, 16), np.int8),
        "filters": _ints(rng, -127, 128, (8, 16), np.int8),
        "bias": _ints(rng, -3000, 3000, 8, np.int32),
        "output_multiplier": fc_multiplier,
        "output_shift": fc_shift,
    }
    conv_scales = _f32(rng.uniform(0.002, 0.02, 6))
    conv_multiplier, conv_shift = tflite.per_channel_multipliers(0.031, conv_scales, 0.047)
    conv = {
        "x": _ints(rng, -128, 128, (1, 7, 7, 4), np.int8),
        "filters": _ints(rng, -127, 128, (6, 3, 3, 4), np.int8),
        "bias": _ints(rng, -3000, 3000, 6, np.int32),
        "output_multiplier": conv_multiplier,
        "output_shift": conv_shift,
    }
    grouped_multiplier, grouped_shift = tflite.per_channel_multipliers(0.031, conv_scales[:4], 0.047)
    grouped = {
        "x": _ints(rng, -128, 128, (1, 8, 8, 4), np.int8),
        "filters": _ints(rng, -127, 128, (4, 3, 3, 2), np.int8),
        "bias": None,
        "output_multiplier": grouped_multiplier,
        "output_shift": grouped_shift,
    }
    for runtime, suffix in (("tflite", ""), ("tflite-single-rounding", ".single_rounding")):
        cases.append(
            Case(
                f"tflite.FullyConnected.per_channel{suffix}",
                "tflite.FullyConnected",
                runtime,
                "int8 per-channel fully connected, int32 bias, multipliers from scales 0.05 / w / 0.1",
                fc,
                {"input_zero_point": -4, "output_zero_point": 6, "activation_min": -128, "activation_max": 127},
            )
        )
        cases.append(
            Case(
                f"tflite.FullyConnected.relu{suffix}",
                "tflite.FullyConnected",
                runtime,
                "as above with a fused ReLU (activation_min = output zero point)",
                fc,
                {"input_zero_point": -4, "output_zero_point": 6, "activation_min": 6, "activation_max": 127},
            )
        )
        cases.append(
            Case(
                f"tflite.Conv2D.same_stride2{suffix}",
                "tflite.Conv2D",
                runtime,
                "int8 per-channel conv, NHWC/OHWI, SAME padding (extra pixel bottom/right), stride 2",
                conv,
                {
                    "input_zero_point": 3,
                    "output_zero_point": -2,
                    "strides": [2, 2],
                    "padding": "SAME",
                    "dilations": [1, 1],
                    "activation_min": -128,
                    "activation_max": 127,
                },
            )
        )
        cases.append(
            Case(
                f"tflite.Conv2D.grouped_dilated{suffix}",
                "tflite.Conv2D",
                runtime,
                "grouped (2 groups) dilated conv, explicit padding ((1, 0), (0, 2)), no bias",
                {k: v for k, v in grouped.items() if v is not None},
                {
                    "input_zero_point": -1,
                    "output_zero_point": 0,
                    "strides": [1, 1],
                    "padding": [[1, 0], [0, 2]],
                    "dilations": [2, 2],
                    "activation_min": -128,
                    "activation_max": 127,
                },
            )
        )
    return cases


def build_cases() -> list[Case]:
    """Every case of the current format version, in a fixed order (inputs built from fixed seeds).

    Returns:
      The cases; their ids are unique.
    """
    cases = _onnx_quantize_cases() + _onnx_dequantize_cases() + _onnx_other_cases() + _torch_cases() + _tflite_cases()
    ids = [case.id for case in cases]
    duplicates = {i for i in ids if ids.count(i) > 1}
    assert not duplicates, f"duplicate case ids {duplicates}"
    return cases


# ----------------------------------------------------------------------------------------------------------------
# Evaluating a case with quantref


def evaluate(
    operator: str, runtime: str, inputs: dict[str, np.ndarray], attributes: dict[str, Any]
) -> dict[str, np.ndarray]:
    """Compute a case's outputs with :mod:`quantref.runtimes` — the expectation the vectors record.

    Args:
      operator: the case's ``operator``.
      runtime: the case's ``runtime`` (a key of :data:`RUNTIMES`); selects the ONNX flavor or TFLite's rounding.
      inputs: input name → array in its true dtype (as :func:`load_case` returns them).
      attributes: the case's attributes, as in the manifest.

    Returns:
      Output name → numpy array in its true dtype.

    Raises:
      ValueError: for an operator or runtime this format does not define.
    """
    from quantref.runtimes import onnx, tflite, torch

    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; known: {sorted(RUNTIMES)}")
    i, a = inputs, attributes
    flavor = "reference" if runtime == "onnx-reference" else "onnxruntime"
    single_rounding = runtime == "tflite-single-rounding"
    conv = {
        key: (tuple(a[key]) if key in ("strides", "pads", "dilations") else a[key])
        for key in ("strides", "pads", "dilations", "group")
        if key in a
    }
    if operator == "onnx.QuantizeLinear":
        y = onnx.quantize_linear(
            i["x"],
            i["y_scale"],
            i.get("y_zero_point"),
            axis=a.get("axis", 1),
            block_size=a.get("block_size", 0),
            saturate=bool(a.get("saturate", 1)),
            output_dtype=a.get("output_dtype"),
            flavor=flavor,
        )
        outputs = {"y": y}
    elif operator == "onnx.DequantizeLinear":
        outputs = {
            "y": onnx.dequantize_linear(
                i["x"], i["x_scale"], i.get("x_zero_point"), axis=a.get("axis", 1), block_size=a.get("block_size", 0)
            )
        }
    elif operator == "onnx.DynamicQuantizeLinear":
        outputs = dict(zip(("y", "y_scale", "y_zero_point"), onnx.dynamic_quantize_linear(i["x"], flavor=flavor)))
    elif operator == "onnx.MatMulInteger":
        outputs = {"y": onnx.matmul_integer(i["a"], i["b"], i.get("a_zero_point"), i.get("b_zero_point"))}
    elif operator == "onnx.ConvInteger":
        outputs = {"y": onnx.conv_integer(i["x"], i["w"], i.get("x_zero_point"), i.get("w_zero_point"), **conv)}
    elif operator == "onnx.QLinearMatMul":
        names = ("a", "a_scale", "a_zero_point", "b", "b_scale", "b_zero_point", "y_scale", "y_zero_point")
        outputs = {"y": onnx.qlinear_matmul(*(i[n] for n in names), flavor=flavor)}
    elif operator == "onnx.QLinearConv":
        names = ("x", "x_scale", "x_zero_point", "w", "w_scale", "w_zero_point", "y_scale", "y_zero_point")
        outputs = {"y": onnx.qlinear_conv(*(i[n] for n in names), i.get("B"), **conv, flavor=flavor)}
    elif operator == "torch.quantize_per_tensor":
        outputs = {"y": torch.quantize_per_tensor(i["x"], float(i["scale"]), int(i["zero_point"]), a["dtype"])}
    elif operator == "torch.quantize_per_channel":
        outputs = {"y": torch.quantize_per_channel(i["x"], i["scales"], i["zero_points"], a["axis"], a["dtype"])}
    elif operator == "torch.fake_quantize_per_tensor_affine":
        outputs = {
            "y": torch.fake_quantize_per_tensor_affine(
                i["x"], float(i["scale"]), int(i["zero_point"]), a["quant_min"], a["quant_max"]
            )
        }
    elif operator == "torch.fake_quantize_per_channel_affine":
        outputs = {
            "y": torch.fake_quantize_per_channel_affine(
                i["x"], i["scale"], i["zero_point"], a["axis"], a["quant_min"], a["quant_max"]
            )
        }
    elif operator == "torch.MinMaxObserver":
        scale, zero_point = torch.min_max_observer(i["x"], a["dtype"], a["qscheme"], a["reduce_range"])
        outputs = {"scale": scale, "zero_point": zero_point}
    elif operator == "tflite.QuantizeMultiplier":
        multiplier, shift = tflite.quantize_multiplier_array(i["real_multiplier"], single_rounding=single_rounding)
        outputs = {"quantized_multiplier": multiplier, "shift": shift}
    elif operator == "tflite.MultiplyByQuantizedMultiplier":
        outputs = {
            "y": tflite.multiply_by_quantized_multiplier(
                i["x"], i["quantized_multiplier"], i["shift"], single_rounding=single_rounding
            )
        }
    elif operator == "tflite.Quantize":
        outputs = {"y": tflite.quantize(i["x"], float(i["scale"]), int(i["zero_point"]), a["dtype"])}
    elif operator in ("tflite.FullyConnected", "tflite.Conv2D"):
        kernel = tflite.fully_connected if operator == "tflite.FullyConnected" else tflite.conv2d
        options = {key: value for key, value in a.items() if key not in ("strides", "dilations", "padding")}
        if operator == "tflite.Conv2D":
            padding = a["padding"] if isinstance(a["padding"], str) else tuple(tuple(p) for p in a["padding"])
            options.update(strides=tuple(a["strides"]), dilations=tuple(a["dilations"]), padding=padding)
        outputs = {
            "y": kernel(
                i["x"],
                i["filters"],
                i.get("bias"),
                i["output_multiplier"],
                i["output_shift"],
                single_rounding=single_rounding,
                **options,
            )
        }
    else:
        raise ValueError(f"unknown operator {operator!r}")
    return {name: np.asarray(value) for name, value in outputs.items()}


# ----------------------------------------------------------------------------------------------------------------
# Writing and reading


def _describe(arrays: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    entries = []
    for name, array in arrays.items():
        stored, dtype = encode(array)
        entries.append({"name": name, "dtype": dtype, "storage": stored.dtype.name, "shape": list(array.shape)})
    return entries


def _expectation(runtime: str) -> str:
    info = RUNTIMES[runtime]
    return f"{info['runtime']} {info['version']}, {info['details']}; as reproduced by {info['reproduced_by']}"


def write_vectors(out_dir: str | Path, *, force: bool = False, cases: list[Case] | None = None) -> Path:
    """Write the test vectors: ``OUT_DIR/manifest.json`` and ``OUT_DIR/cases/<id>.npz``.

    Expected outputs are computed with :func:`evaluate`; neither onnxruntime nor torch is needed. The output is
    deterministic (fixed seeds, no timestamps in the files).

    Args:
      out_dir: the directory to write (created if missing).
      force: write into a directory that is not empty (``cases/*.npz`` and ``manifest.json`` are replaced; other
        files are left alone).
      cases: the cases to write; default :func:`build_cases`.

    Returns:
      The path of ``manifest.json``.

    Raises:
      ValueError: if ``out_dir`` is a file, or a non-empty directory and ``force`` is False.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"OUT_DIR {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise ValueError(f"OUT_DIR {out_dir} is not empty; pass force=True (--force) to write into it")
    case_dir = out_dir / "cases"
    case_dir.mkdir(parents=True, exist_ok=True)
    for stale in case_dir.glob("*.npz"):  # no stale cases from another version; other files are not ours to delete
        stale.unlink()
    entries = []
    for case in cases if cases is not None else build_cases():
        outputs = evaluate(case.operator, case.runtime, case.inputs, case.attributes)
        clash = set(outputs) & set(case.inputs)
        if clash:
            raise ValueError(f"case {case.id}: names {clash} are both inputs and outputs")
        arrays = {name: encode(array)[0] for name, array in {**case.inputs, **outputs}.items()}
        _write_npz(case_dir / f"{case.id}.npz", arrays)
        entries.append(
            {
                "id": case.id,
                "operator": case.operator,
                "runtime": case.runtime,
                "expectation": _expectation(case.runtime),
                "description": case.description,
                "file": f"cases/{case.id}.npz",
                "attributes": case.attributes,
                "inputs": _describe(case.inputs),
                "outputs": _describe(outputs),
            }
        )
    manifest = {
        "format": "quantref-vectors",
        "format_version": FORMAT_VERSION,
        "quantref_version": quantref.__version__,
        "schema": SCHEMA,
        "runtimes": RUNTIMES,
        "cases": entries,
    }
    path = out_dir / "manifest.json"
    path.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return path


def load_manifest(vectors_dir: str | Path) -> dict[str, Any]:
    """Read and validate ``manifest.json``.

    Args:
      vectors_dir: a directory written by :func:`write_vectors`.

    Returns:
      The manifest as a dict.

    Raises:
      ValueError: if the directory or its manifest is missing, or the format version is not one this quantref reads.
    """
    path = Path(vectors_dir) / "manifest.json"
    if not Path(vectors_dir).is_dir():
        raise ValueError(f"vectors directory {vectors_dir} does not exist (write it with `quantref vectors DIR`)")
    if not path.is_file():
        raise ValueError(f"{vectors_dir} has no manifest.json; is it a directory written by `quantref vectors`?")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != "quantref-vectors" or manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: format {manifest.get('format')!r} version {manifest.get('format_version')!r}; "
            f"this quantref reads quantref-vectors version {FORMAT_VERSION}"
        )
    return manifest


def load_case(vectors_dir: str | Path, entry: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A case's inputs and expected outputs, decoded to their true dtypes.

    Args:
      vectors_dir: the vectors directory.
      entry: the case's entry in the manifest's ``cases``.

    Returns:
      ``(inputs, outputs)``: name → array, in manifest order.
    """
    arrays = _read_npz(Path(vectors_dir) / entry["file"])
    return tuple(
        {spec["name"]: decode(arrays[spec["name"]], spec["dtype"]) for spec in entry[kind]}
        for kind in ("inputs", "outputs")
    )


def _select(manifest: dict[str, Any], patterns: list[str] | None) -> list[dict[str, Any]]:
    entries = manifest["cases"]
    if not patterns:
        return entries
    chosen = [e for e in entries if any(fnmatch.fnmatchcase(e["id"], p) for p in patterns)]
    unknown = [p for p in patterns if not any(fnmatch.fnmatchcase(e["id"], p) for e in entries)]
    if unknown:
        raise ValueError(f"unknown case(s) {unknown}: no case id matches; the ids are listed in manifest.json")
    return chosen


def compute_results(vectors_dir: str | Path, results_dir: str | Path, *, cases: list[str] | None = None) -> Path:
    """Run quantref on every case's stored inputs and write the results as a backend would, for ``quantref check``.

    This is what a backend's test driver does, in Python: read the manifest, load each case's inputs, run the
    operator, and write ``results_dir/<id>.npz`` with one array per output name (sub-byte and float8 outputs as
    uint8 bit patterns). Checking these results against the vectors must report zero mismatches.

    Args:
      vectors_dir: a directory written by :func:`write_vectors`.
      results_dir: where to write the results (created if missing; existing files of the same name are replaced).
      cases: case ids or glob patterns (``"onnx.QuantizeLinear.*"``) to run; default all.

    Returns:
      ``results_dir``.

    Raises:
      ValueError: for a missing or unreadable vectors directory, or a pattern that matches no case.
    """
    manifest = load_manifest(vectors_dir)
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    for entry in _select(manifest, cases):
        inputs, _ = load_case(vectors_dir, entry)
        outputs = evaluate(entry["operator"], entry["runtime"], inputs, entry["attributes"])
        _write_npz(results_dir / f"{entry['id']}.npz", {name: encode(array)[0] for name, array in outputs.items()})
    return results_dir


# ----------------------------------------------------------------------------------------------------------------
# Checking a backend's results


@dataclass(frozen=True)
class CaseResult:
    """The check of one case.

    Attributes:
      id: the case id.
      status: ``"pass"``, ``"fail"`` (some output differs or has the wrong shape/type, or the results file for
        the case cannot be read) or ``"missing"``.
      outputs: output name → :class:`quantref.testing.Comparison` for every output found.
      missing: output names (or ``"<id>.npz"`` for the whole case) with no result.
      error: why the case's results file could not be read, if it could not.
    """

    id: str
    status: str
    outputs: dict[str, testing.Comparison]
    missing: tuple[str, ...] = ()
    error: str = ""


@dataclass(frozen=True)
class CheckReport:
    """All case results of :func:`check`.

    Attributes:
      vectors: the vectors directory.
      results: the results directory or file.
      cases: one :class:`CaseResult` per checked case, in manifest order.
      unexpected: result entries that name no case in the manifest.
    """

    vectors: str
    results: str
    cases: tuple[CaseResult, ...]
    unexpected: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when every case passed (none failed, none missing)."""
        return all(case.status == "pass" for case in self.cases)

    def count(self, status: str) -> int:
        """Number of cases with this status."""
        return sum(case.status == status for case in self.cases)


def _results_source(results: Path, manifest: dict[str, Any]):
    """A function id → {output name: array} | None, and the result entries that name no case."""
    known = {entry["id"] for entry in manifest["cases"]}
    if results.is_dir():
        found = {path.name[: -len(".npz")] for path in results.glob("*.npz")}

        def get(case_id: str) -> dict[str, np.ndarray] | str | None:
            path = results / f"{case_id}.npz"
            if not path.is_file():
                return None
            try:
                return _read_npz(path)
            except ValueError as error:  # one unreadable file fails its case, not the whole check
                return str(error)

        return get, sorted(found - known)
    if results.is_file() and results.suffix == ".npz":
        arrays = _read_npz(results)
        grouped: dict[str, dict[str, np.ndarray]] = {}
        for key, array in arrays.items():
            case_id, _, name = key.rpartition("/")
            grouped.setdefault(case_id, {})[name] = array
        return grouped.get, sorted(set(grouped) - known)
    raise ValueError(f"RESULTS {results} must be a directory of <case id>.npz files or one .npz file")


def check(
    vectors_dir: str | Path, results: str | Path, *, cases: list[str] | None = None, max_report: int = 10
) -> CheckReport:
    """Compare a backend's results with the vectors' expected outputs, exactly, with :func:`quantref.testing.compare`.

    Args:
      vectors_dir: a directory written by :func:`write_vectors`.
      results: a directory of ``<case id>.npz`` (one member per output name), or one ``.npz`` with members
        ``<case id>/<output name>``.
      cases: case ids or glob patterns to check; default all.
      max_report: how many of the worst mismatching elements to keep per output.

    Returns:
      A :class:`CheckReport`; print it with :func:`format_check`.

    Raises:
      ValueError: for a missing vectors directory or results path, or a case pattern that matches nothing.
    """
    manifest = load_manifest(vectors_dir)
    results = Path(results)
    if not results.exists():
        raise ValueError(f"RESULTS {results} does not exist")
    get, unexpected = _results_source(results, manifest)
    outcomes = []
    for entry in _select(manifest, cases):
        actual = get(entry["id"])
        if actual is None:
            outcomes.append(CaseResult(entry["id"], "missing", {}, (f"{entry['id']}.npz",)))
            continue
        if isinstance(actual, str):
            outcomes.append(CaseResult(entry["id"], "fail", {}, error=actual))
            continue
        _, expected = load_case(vectors_dir, entry)
        comparisons = {
            name: testing.compare(actual[name], value, max_report=max_report)
            for name, value in expected.items()
            if name in actual
        }
        missing = tuple(name for name in expected if name not in actual)
        passed = not missing and all(c.ok for c in comparisons.values())
        outcomes.append(CaseResult(entry["id"], "pass" if passed else "fail", comparisons, missing))
    return CheckReport(str(vectors_dir), str(results), tuple(outcomes), tuple(unexpected))


def format_check(report: CheckReport, *, verbose: bool = False) -> str:
    """The text ``quantref check`` prints: one line per case (failures with their worst elements), then a summary.

    Args:
      report: the result of :func:`check`.
      verbose: also list the passing cases.

    Returns:
      The report text.
    """
    lines = [f"checking {report.results} against {report.vectors} ({len(report.cases)} cases)"]
    for case in report.cases:
        if case.status == "pass":
            if verbose:
                sizes = ", ".join(f"{name} {c.size}" for name, c in case.outputs.items())
                lines.append(f"PASS     {case.id} ({sizes} elements)")
            continue
        if case.status == "missing":
            lines.append(f"MISSING  {case.id}: no results (looked for {case.missing[0]})")
            continue
        if case.error:
            lines.append(f"FAIL     {case.id}: {case.error}")
            continue
        lines.append(f"FAIL     {case.id}")
        for name, comparison in case.outputs.items():
            if not comparison.ok:
                lines.append(testing.format_report(comparison, name, indent="         "))
        for name in case.missing:
            lines.append(f"         {name}: missing from the results")
    for name in report.unexpected:
        lines.append(f"NOTE     result {name!r} names no case in the manifest (ignored)")
    summary = (
        f"{report.count('pass')} passed, {report.count('fail')} failed, {report.count('missing')} missing "
        f"of {len(report.cases)} cases"
    )
    lines.append(("OK: " if report.ok else "MISMATCH: ") + summary)
    return "\n".join(lines)
