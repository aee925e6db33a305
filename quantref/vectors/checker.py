"""Checking a backend's results against the vectors, exactly, and the report ``quantref check`` prints."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from quantref import testing
from quantref.vectors.encoding import read_npz
from quantref.vectors.files import load_case, load_manifest, select_cases

__all__ = ["CaseResult", "CheckReport", "check", "format_check"]


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
                return read_npz(path)
            except ValueError as error:  # one unreadable file fails its case, not the whole check
                return str(error)

        return get, sorted(found - known)
    if results.is_file() and results.suffix == ".npz":
        arrays = read_npz(results)
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
      vectors_dir: a directory written by :func:`~quantref.vectors.write_vectors`.
      results: a directory of ``<case id>.npz`` (one member per output name), or one ``.npz`` with members
        ``<case id>/<output name>``.
      cases: case ids or glob patterns to check; default all.
      max_report: how many of the worst mismatching elements to keep per output.

    Returns:
      A :class:`CheckReport`; print it with :func:`format_check`.

    Raises:
      TypeError: if ``results`` is not a path.
      ValueError: for a missing or invalid vectors directory (see :func:`~quantref.vectors.load_manifest`), a
        missing results path, a ``max_report`` that is not an int >= 0, or a case pattern that matches nothing.
    """
    if isinstance(max_report, (bool, np.bool_)) or not isinstance(max_report, (int, np.integer)) or max_report < 0:
        raise ValueError(f"max_report must be an int >= 0, got {max_report!r}")
    manifest = load_manifest(vectors_dir)
    if not isinstance(results, (str, os.PathLike)):
        raise TypeError(f"results must be a path, got {type(results).__name__}")
    results = Path(results)
    if not results.exists():
        raise ValueError(f"RESULTS {results} does not exist")
    get, unexpected = _results_source(results, manifest)
    outcomes = []
    for entry in select_cases(manifest, cases):
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
    if not isinstance(report, CheckReport):
        raise TypeError(f"report must be a vectors.CheckReport (from vectors.check), got {type(report).__name__}")
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
