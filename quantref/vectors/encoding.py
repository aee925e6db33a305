"""The vectors' file format: its version, the runtimes it records, its schema, and how arrays are stored.

An ``.npz`` is a plain zip archive (stored, not compressed) of ``.npy`` files. Every array is stored in a standard
numpy type; the types numpy does not have — ``int4``, ``uint4``, ``int2``, ``uint2`` and the four float8 types — are
stored as their raw bit patterns in uint8, one element per byte, and the manifest gives each array's true ``dtype``
next to its ``storage`` type.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

__all__ = ["FORMAT_VERSION", "RUNTIMES", "SCHEMA", "BIT_PATTERN_TYPES", "encode", "decode", "write_npz", "read_npz"]

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
    "torchao-mx": {
        "runtime": "OCP Microscaling v1.0 and NVFP4 conversions as torchao computes them",
        "version": "torchao 0.18.0 (prototype.mx_formats: to_mx with the FLOOR scale, nvfp4_quantize)",
        "details": "CPU; elements and scales stored as their codes in uint8 (MXINT8 elements as int8)",
        "reproduced_by": "quantref.microscaling",
    },
    "tflite-single-rounding": {
        "runtime": "TFLite / LiteRT reference integer kernels",
        "version": "tensorflow/lite/kernels/internal/reference, built with TFLITE_SINGLE_ROUNDING",
        "details": "as an x86-64 build computes them",
        "reproduced_by": "quantref.runtimes.tflite, single_rounding=True",
    },
}

#: Types stored as raw bit patterns in uint8 (numpy has no such dtype; C++/Rust npy readers cannot read ml_dtypes).
BIT_PATTERN_TYPES: dict[str, np.dtype] = {
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
        "operator": "'onnx.<OpType>', 'torch.<function>', 'tflite.<kernel>', 'mx.quantize' or 'nvfp4.quantize'",
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


def encode(array: np.ndarray) -> tuple[np.ndarray, str]:
    """An array as stored in the vectors, and its true dtype name.

    Args:
      array: numpy or ml_dtypes array (JAX arrays are converted).

    Returns:
      ``(stored, dtype_name)``: sub-byte and float8 arrays as their uint8 bit patterns, everything else unchanged.

    Raises:
      ValueError: for a dtype the format does not define.
    """
    if array is None:
        raise TypeError("array must be an array, got None")
    array = np.asarray(array)
    array = array if array.flags.c_contiguous else array.copy(order="C")
    name = array.dtype.name
    if name in BIT_PATTERN_TYPES:
        return array.view(np.uint8), name
    if name not in _PLAIN_TYPES:
        raise ValueError(f"array has dtype {name}, which is not part of vectors format {FORMAT_VERSION}")
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
    if not isinstance(stored, np.ndarray):
        raise TypeError(f"stored must be a numpy array (as read from the .npz), got {type(stored).__name__}")
    if not isinstance(dtype, str):
        raise TypeError(f"dtype must be a dtype name, got {dtype!r:.80}")
    if dtype in BIT_PATTERN_TYPES:
        if stored.dtype != np.uint8:
            raise ValueError(f"{dtype} must be stored as uint8 bit patterns, got {stored.dtype}")
        return stored.view(BIT_PATTERN_TYPES[dtype])
    if dtype not in _PLAIN_TYPES or stored.dtype.name != dtype:
        raise ValueError(f"cannot decode a {stored.dtype} array as {dtype!r}")
    return stored


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` without the timestamps: a fixed date in every zip entry, so equal arrays give equal bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            archive.writestr(info, buffer.getvalue())


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file; a ValueError naming the file if it cannot be read (truncated, not a zip, ...)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(f"cannot read {path}: {error}") from error
