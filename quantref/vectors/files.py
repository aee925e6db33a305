"""Writing the vectors to disk, reading them back, and writing quantref's own results as a backend would.

Writing is atomic: the new set (``manifest.json`` and ``cases/``) is built in a staging directory beside OUT_DIR and
swapped in in one step (:mod:`quantref._files`), so an interrupted ``quantref vectors --force`` leaves the complete
old set or the complete new one, never a mix. Files that quantref did not write (anything but ``manifest.json`` and
the cases an earlier manifest lists) are kept, hard-linked into the new set. Reading checks the manifest's shape
and names the file and the field when it is not what :data:`~quantref.vectors.encoding.SCHEMA` says.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

import quantref
from quantref import _files
from quantref.vectors.case import Case
from quantref.vectors.catalogue import build_cases
from quantref.vectors.encoding import FORMAT_VERSION, RUNTIMES, SCHEMA, decode, encode, read_npz, write_npz
from quantref.vectors.evaluator import evaluate

__all__ = ["write_vectors", "load_manifest", "load_case", "compute_results", "select_cases"]

_CASE_DIR = "cases"
_MANIFEST = "manifest.json"


def write_vectors(out_dir: str | Path, *, force: bool = False, cases: list[Case] | None = None) -> Path:
    """Write the test vectors: ``OUT_DIR/manifest.json`` and ``OUT_DIR/cases/<id>.npz``, atomically.

    Expected outputs are computed with :func:`~quantref.vectors.evaluate`; neither onnxruntime nor torch is needed.
    The output is deterministic (fixed seeds, no timestamps in the files). OUT_DIR is checked before any case is
    computed. The new set is written beside OUT_DIR and swapped in in one step: if the run is interrupted, OUT_DIR
    holds the complete old set or the complete new one (a ``.quantref-staging-*`` directory beside it may remain).

    Args:
      out_dir: the directory to write (created if missing).
      force: write into a directory that is not empty: ``manifest.json`` and the cases are replaced, the cases
        that the old manifest lists and the new set does not are removed, and every other file is kept.
      cases: the cases to write; default :func:`~quantref.vectors.build_cases`.

    Returns:
      The path of ``manifest.json``.

    Raises:
      TypeError: if ``out_dir`` is not a path or ``force`` not a bool.
      ValueError: if ``out_dir`` is a file, lies under a file, cannot be written, holds a ``cases`` that is not a
        directory, or is a non-empty directory and ``force`` is False; or if a case is invalid.
    """
    if not isinstance(force, (bool, np.bool_)):
        raise TypeError(f"force must be a bool, got {force!r}")
    target = _files.check_output_dir(out_dir, force=bool(force))
    if (target / _CASE_DIR).exists() and not (target / _CASE_DIR).is_dir():
        raise ValueError(f"{target / _CASE_DIR} is not a directory; quantref vectors writes its cases there")
    if cases is not None and (not isinstance(cases, (list, tuple)) or not all(isinstance(c, Case) for c in cases)):
        raise TypeError(f"cases must be a list of vectors.Case, got {type(cases).__name__}")
    files: dict[str, dict[str, np.ndarray]] = {}
    entries = []
    for case in cases if cases is not None else build_cases():
        outputs = evaluate(case.operator, case.runtime, case.inputs, case.attributes)
        clash = set(outputs) & set(case.inputs)
        if clash:
            raise ValueError(f"case {case.id}: names {clash} are both inputs and outputs")
        if not _is_plain_name(case.id):
            raise ValueError(f"case id {case.id!r} must be a plain file name (no '/', not '.' or '..')")
        files[f"{case.id}.npz"] = {name: encode(array)[0] for name, array in {**case.inputs, **outputs}.items()}
        entries.append(
            {
                "id": case.id,
                "operator": case.operator,
                "runtime": case.runtime,
                "expectation": _expectation(case.runtime),
                "description": case.description,
                "file": f"{_CASE_DIR}/{case.id}.npz",
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
    stale = _files_listed(target)  # cases an earlier quantref wrote: not carried into the new set

    def write_cases(path: Path) -> None:
        path.mkdir()
        for name, arrays in files.items():
            write_npz(path / name, arrays)
        _carry_over(target / _CASE_DIR, path, keep=lambda name: name not in files and name not in stale)

    def write_manifest(path: Path) -> None:
        path.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")

    # The cases first, the manifest last; then the whole set replaces the old one in one step.
    written = _files.write_files(target, {_CASE_DIR: write_cases, _MANIFEST: write_manifest})
    return written[_MANIFEST]


def load_manifest(vectors_dir: str | Path) -> dict[str, Any]:
    """Read and validate ``manifest.json``.

    Args:
      vectors_dir: a directory written by :func:`write_vectors`.

    Returns:
      The manifest as a dict.

    Raises:
      TypeError: if ``vectors_dir`` is not a path.
      ValueError: if the directory or its manifest is missing or unreadable, is not valid JSON, does not have the
        shape the schema describes (naming the file and the field), or its format version is not one this quantref
        reads.
    """
    if not isinstance(vectors_dir, (str, os.PathLike)):
        raise TypeError(f"vectors_dir must be a path, got {type(vectors_dir).__name__}")
    directory = Path(vectors_dir)
    path = directory / _MANIFEST
    if not directory.is_dir():
        raise ValueError(f"vectors directory {vectors_dir} does not exist (write it with `quantref vectors DIR`)")
    if not path.is_file():
        raise ValueError(f"{vectors_dir} has no manifest.json; is it a directory written by `quantref vectors`?")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read {path}: {error}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{path}: the manifest must be a JSON object, got {type(manifest).__name__}")
    if manifest.get("format") != "quantref-vectors" or manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: format {manifest.get('format')!r} version {manifest.get('format_version')!r}; "
            f"this quantref reads quantref-vectors version {FORMAT_VERSION}"
        )
    _check_entries(manifest.get("cases"), str(path))
    return manifest


def load_case(vectors_dir: str | Path, entry: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A case's inputs and expected outputs, decoded to their true dtypes.

    Args:
      vectors_dir: the vectors directory.
      entry: the case's entry in the manifest's ``cases`` (as :func:`load_manifest` checked it).

    Returns:
      ``(inputs, outputs)``: name → array, in manifest order.

    Raises:
      TypeError: if ``vectors_dir`` is not a path.
      ValueError: if ``entry`` is not a case entry of the schema's shape, the case's file cannot be read, lacks an
        array the entry lists, or an array does not decode as its ``dtype`` or has another shape (naming the file
        and the array).
    """
    if not isinstance(vectors_dir, (str, os.PathLike)):
        raise TypeError(f"vectors_dir must be a path, got {type(vectors_dir).__name__}")
    _check_entries([entry], "entry", one=True)
    path = Path(vectors_dir) / entry["file"]
    arrays = read_npz(path)
    decoded: list[dict[str, np.ndarray]] = []
    for kind in ("inputs", "outputs"):
        values = {}
        for spec in entry[kind]:
            name = spec["name"]
            if name not in arrays:
                raise ValueError(f"{path} has no array {name!r} (the manifest lists it under {kind})")
            try:
                value = decode(arrays[name], spec["dtype"])
            except ValueError as error:
                raise ValueError(f"{path}, array {name!r}: {error}") from None
            if list(value.shape) != list(spec["shape"]):
                raise ValueError(f"{path}, array {name!r}: shape {value.shape}, the manifest says {spec['shape']}")
            values[name] = value
        decoded.append(values)
    return decoded[0], decoded[1]


def select_cases(manifest: dict[str, Any], patterns: list[str] | None) -> list[dict[str, Any]]:
    """The manifest's entries whose id matches one of ``patterns`` (glob patterns), or all of them.

    Raises:
      TypeError: if ``patterns`` is not a list of strings.
      ValueError: if a pattern matches no case.
    """
    entries = manifest["cases"]
    if patterns is None:
        return entries
    if isinstance(patterns, str) or not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"cases must be a list of case ids or glob patterns, got {patterns!r:.80}")
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
    uint8 bit patterns). Checking these results against the vectors must report zero mismatches. Each file is
    written atomically (a temporary file renamed into place).

    Args:
      vectors_dir: a directory written by :func:`write_vectors`.
      results_dir: where to write the results (created if missing; existing files of the same name are replaced).
      cases: case ids or glob patterns (``"onnx.QuantizeLinear.*"``) to run; default all.

    Returns:
      ``results_dir``.

    Raises:
      ValueError: for a missing or unreadable vectors directory, a pattern that matches no case, or a
        ``results_dir`` that cannot be written (checked before any case runs).
    """
    manifest = load_manifest(vectors_dir)
    chosen = select_cases(manifest, cases)
    if not isinstance(results_dir, (str, os.PathLike)):
        raise TypeError(f"results_dir must be a path, got {type(results_dir).__name__}")
    results_dir = Path(results_dir)
    try:
        results_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"results_dir {results_dir} cannot be created: {error.strerror or error}") from None
    if not os.access(results_dir, os.W_OK | os.X_OK):
        raise ValueError(f"results_dir {results_dir} cannot be written")
    for entry in chosen:
        inputs, _ = load_case(vectors_dir, entry)
        outputs = evaluate(entry["operator"], entry["runtime"], inputs, entry["attributes"])
        path = results_dir / f"{entry['id']}.npz"
        partial = path.with_name(f".{path.name}.partial")
        write_npz(partial, {name: encode(array)[0] for name, array in outputs.items()})
        os.replace(partial, path)
    return results_dir


# ----------------------------------------------------------------------------------------------------------------
# Helpers


def _describe(arrays: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    entries = []
    for name, array in arrays.items():
        stored, dtype = encode(array)
        entries.append({"name": name, "dtype": dtype, "storage": stored.dtype.name, "shape": list(array.shape)})
    return entries


def _expectation(runtime: str) -> str:
    info = RUNTIMES[runtime]
    return f"{info['runtime']} {info['version']}, {info['details']}; as reproduced by {info['reproduced_by']}"


def _is_plain_name(name: object) -> bool:
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name


def _files_listed(target: Path) -> set[str]:
    """Names of the case files in ``target/cases`` that the manifest there lists (quantref wrote them), if any."""
    try:
        manifest = load_manifest(target)
    except ValueError:
        return set()  # no manifest, or not ours: nothing in cases/ is known to be quantref's
    prefix = f"{_CASE_DIR}/"
    return {e["file"][len(prefix) :] for e in manifest["cases"] if e["file"].startswith(prefix)}


def _carry_over(old: Path, new: Path, keep) -> None:
    """Hard-link (directories: copy as hard links) the entries of ``old`` that ``keep(name)`` into ``new``."""
    if not old.is_dir():
        return
    for entry in old.iterdir():
        if not keep(entry.name):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, new / entry.name, symlinks=True, copy_function=os.link)
        elif entry.is_symlink():
            os.symlink(os.readlink(entry), new / entry.name)
        else:
            os.link(entry, new / entry.name)


def _check_entries(entries: object, label: str, one: bool = False) -> None:
    """The manifest's ``cases`` (or ``one`` entry): a list of entries of the shape the schema describes."""
    if not isinstance(entries, list):
        raise ValueError(f"{label}: 'cases' must be a list of case entries, got {type(entries).__name__}")
    seen = set()
    for index, entry in enumerate(entries):
        where = label if one else f"{label}: cases[{index}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} must be an object, got {type(entry).__name__}")
        for key, kind in (("id", str), ("operator", str), ("runtime", str), ("file", str), ("attributes", dict)):
            if not isinstance(entry.get(key), kind):
                raise ValueError(f"{where}: '{key}' must be a {kind.__name__}, got {entry.get(key)!r:.80}")
        if entry["id"] in seen:
            raise ValueError(f"{where}: the id {entry['id']!r} appears twice")
        seen.add(entry["id"])
        parts = Path(entry["file"]).parts
        if Path(entry["file"]).is_absolute() or ".." in parts or not parts:
            raise ValueError(f"{where}: 'file' must be a path inside the vectors directory, got {entry['file']!r}")
        for kind in ("inputs", "outputs"):
            specs = entry.get(kind)
            if not isinstance(specs, list):
                raise ValueError(f"{where}: '{kind}' must be a list, got {specs!r:.80}")
            for spec in specs:
                fields_ok = isinstance(spec, dict) and all(
                    isinstance(spec.get(field), str) for field in ("name", "dtype")
                )
                shape = spec.get("shape") if isinstance(spec, dict) else None
                shape_ok = isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)
                if not (fields_ok and shape_ok):
                    raise ValueError(
                        f"{where}: each of '{kind}' must be {{name, dtype, storage, shape}} with a list of sizes, "
                        f"got {spec!r:.80}"
                    )
