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

The package: :mod:`~quantref.vectors.encoding` (the format: version, runtimes, schema, how arrays are stored),
:mod:`~quantref.vectors.case` and :mod:`~quantref.vectors.catalogue` (the cases), :mod:`~quantref.vectors.evaluator`
(each operator's expectation), :mod:`~quantref.vectors.files` (writing and reading) and
:mod:`~quantref.vectors.checker` (comparing a backend's results). Everything public is importable from
``quantref.vectors``.
"""

from quantref.vectors.case import Case
from quantref.vectors.catalogue import build_cases
from quantref.vectors.checker import CaseResult, CheckReport, check, format_check
from quantref.vectors.encoding import FORMAT_VERSION, RUNTIMES, SCHEMA, decode, encode
from quantref.vectors.evaluator import evaluate
from quantref.vectors.files import compute_results, load_case, load_manifest, write_vectors

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
