"""`quantref vectors` / `quantref check` on user errors: one line on stderr naming the file or argument, exit 2, no
traceback, nothing written or deleted; and a run killed at several points leaves the complete old or new set."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from _kill import run_and_kill  # tests/_kill.py

from quantref import cli, vectors

FEW = 5  # cases in a small set: enough to exercise every path, quick to compute


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small vectors directory and quantref's own results for it."""
    root = tmp_path_factory.mktemp("small")
    out, results = root / "vectors", root / "results"
    vectors.write_vectors(out, cases=vectors.build_cases()[:FEW])
    vectors.compute_results(out, results)
    return out, results


def run_cli(*argv: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """The real console entry point in a subprocess: what a user sees, traceback or not."""
    return subprocess.run(
        [sys.executable, "-m", "quantref.cli", *argv], capture_output=True, text=True, timeout=timeout, check=False
    )


def assert_one_line_error(result: subprocess.CompletedProcess, command: str, *names: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"quantref {command}: "), result.stderr
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------------------------
# check: bad vectors directories and results


@pytest.mark.parametrize(
    ("content", "field"),
    [
        ("[]", "JSON object"),
        ('"quantref-vectors"', "JSON object"),
        ('{"format": "quantref-vectors", "format_version": "1"}', "'cases'"),
        ('{"format": "quantref-vectors", "format_version": "1", "cases": 3}', "'cases'"),
        ('{"format": "quantref-vectors", "format_version": "1", "cases": [3]}', "cases[0]"),
        ('{"format": "quantref-vectors", "format_version": "1", "cases": [{"id": "a"}]}', "'operator'"),
        ('{"format": "quantref-vectors", "format_version": "2", "cases": []}', "version"),
        ('{"format": "other", "format_version": "1", "cases": []}', "format"),
    ],
)
def test_check_with_a_manifest_of_the_wrong_shape(small, tmp_path, capsys, content, field):
    out = tmp_path / "vectors"
    shutil.copytree(small[0], out)
    (out / "manifest.json").write_text(content)
    assert cli.main(["check", str(out), str(small[1])]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(out / "manifest.json") in err and field in err, err


def test_check_with_invalid_json_names_the_file(small, tmp_path):
    out = tmp_path / "vectors"
    shutil.copytree(small[0], out)
    (out / "manifest.json").write_text('{"format": "quantref-vectors",')
    line = assert_one_line_error(run_cli("check", str(out), str(small[1])), "check", "manifest.json", "not valid JSON")
    assert str(out) in line


@pytest.mark.parametrize("entry_change", [{"file": "/etc/passwd"}, {"file": "../outside.npz"}, {"inputs": "x"}])
def test_check_refuses_case_entries_that_leave_the_directory_or_lack_fields(small, tmp_path, capsys, entry_change):
    out = tmp_path / "vectors"
    shutil.copytree(small[0], out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["cases"][0].update(entry_change)
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert cli.main(["check", str(out), str(small[1])]) == 2
    assert "cases[0]" in capsys.readouterr().err


def test_check_with_a_truncated_case_file_names_it(small, tmp_path):
    out = tmp_path / "vectors"
    shutil.copytree(small[0], out)
    entry = vectors.load_manifest(out)["cases"][0]
    path = out / entry["file"]
    path.write_bytes(path.read_bytes()[:50])
    assert_one_line_error(run_cli("check", str(out), str(small[1])), "check", entry["id"])


def test_check_with_missing_or_unreadable_results(small, tmp_path, capsys):
    out, _ = small
    assert cli.main(["check", str(out), str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    broken = tmp_path / "results.npz"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    assert cli.main(["check", str(out), str(broken)]) == 2
    assert str(broken) in capsys.readouterr().err
    not_npz = tmp_path / "results.txt"
    not_npz.write_text("x")
    assert cli.main(["check", str(out), str(not_npz)]) == 2
    assert "RESULTS" in capsys.readouterr().err


def test_check_with_an_unknown_case_pattern(small, capsys):
    assert cli.main(["check", str(small[0]), str(small[1]), "--case", "onnx.Nothing.*"]) == 2
    assert "onnx.Nothing.*" in capsys.readouterr().err


def test_check_on_a_file_instead_of_a_directory(small, tmp_path, capsys):
    path = tmp_path / "file"
    path.write_text("x")
    assert cli.main(["check", str(path), str(small[1])]) == 2
    assert str(path) in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------------------------
# vectors: an output that cannot be written is refused before any case is computed


@pytest.fixture
def no_work(monkeypatch):
    """Fail loudly if a case is evaluated: the output checks must come first."""
    from quantref.vectors import files

    def refuse(*args, **kwargs):
        raise AssertionError("a case was computed before the output directory was checked")

    monkeypatch.setattr(files, "evaluate", refuse)
    monkeypatch.setattr(files, "build_cases", refuse)


def test_vectors_under_a_file(tmp_path, capsys, no_work):
    (tmp_path / "file").write_text("mine")
    assert cli.main(["vectors", str(tmp_path / "file" / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "file" in err
    assert (tmp_path / "file").read_text() == "mine"


def test_vectors_onto_a_file(tmp_path, capsys, no_work):
    (tmp_path / "file").write_text("mine")
    assert cli.main(["vectors", str(tmp_path / "file"), "--force"]) == 2
    assert str(tmp_path / "file") in capsys.readouterr().err
    assert (tmp_path / "file").read_text() == "mine"


def test_vectors_in_proc(capsys, no_work):
    assert cli.main(["vectors", "/proc/quantref-vectors"]) == 2
    assert "/proc/quantref-vectors" in capsys.readouterr().err


def test_vectors_in_a_non_empty_directory_without_force(tmp_path, capsys, no_work):
    (tmp_path / "notes.txt").write_text("mine")
    assert cli.main(["vectors", str(tmp_path)]) == 2
    assert "--force" in capsys.readouterr().err
    assert snapshot(tmp_path) == {"notes.txt": b"mine"}


def test_vectors_with_a_cases_file_in_the_way(tmp_path, capsys, no_work):
    (tmp_path / "cases").write_text("mine, not a directory")
    assert cli.main(["vectors", str(tmp_path), "--force"]) == 2
    assert "cases" in capsys.readouterr().err
    assert (tmp_path / "cases").read_text() == "mine, not a directory"


def test_vectors_as_a_real_command_prints_no_traceback(tmp_path):
    (tmp_path / "file").write_text("mine")
    assert_one_line_error(run_cli("vectors", str(tmp_path / "file" / "out")), "vectors", "file")


def test_force_keeps_user_files_byte_for_byte(small, tmp_path):
    out = tmp_path / "vectors"
    shutil.copytree(small[0], out)
    (out / "README.md").write_bytes(b"\x00\x01 the user's bytes")
    (out / "cases" / "mine.npz").write_bytes(b"not quantref's")
    (out / "cases" / "sub").mkdir()
    (out / "cases" / "sub" / "deep.txt").write_text("deep")
    user = {k: v for k, v in snapshot(out).items() if k in ("README.md", "cases/mine.npz", "cases/sub/deep.txt")}
    vectors.write_vectors(out, force=True, cases=vectors.build_cases()[: FEW - 2])
    after = snapshot(out)
    assert {k: after[k] for k in user} == user
    listed = {e["file"] for e in vectors.load_manifest(out)["cases"]}
    assert set(after) == listed | set(user) | {"manifest.json"}


# ------------------------------------------------------------------------------------------------------------------
# vectors --force killed at several points: the directory holds the complete old set or the complete new one


_DRIVER = textwrap.dedent(
    """
    import sys, time
    import quantref._files as quantref_files
    from quantref import cli, vectors
    from quantref.vectors import files

    NEW = int(sys.argv[2])
    cases = vectors.build_cases()[:NEW]
    files.build_cases = lambda: cases
    evaluate, write_npz, write_files = files.evaluate, files.write_npz, quantref_files.write_files

    def say(marker):
        print(marker, flush=True)
        time.sleep(0.3)  # a window for the parent to kill in

    def slow_evaluate(*args, **kwargs):
        say("evaluate")
        return evaluate(*args, **kwargs)

    def slow_write_npz(path, arrays):
        write_npz(path, arrays)
        say("npz")

    def slow_write_files(target, writers):
        def wrap(name, writer):
            def run(path):
                writer(path)
                say("wrote " + name)
            return run
        return write_files(target, {name: wrap(name, writer) for name, writer in writers.items()})

    files.evaluate, files.write_npz, quantref_files.write_files = slow_evaluate, slow_write_npz, slow_write_files
    sys.exit(cli.main(["vectors", sys.argv[1], "--force"]))
    """
)

# (marker, how many times it must be seen before the kill); None: let the run finish.
KILL_POINTS = [("evaluate", 2), ("npz", 1), ("npz", 6), ("wrote cases", 1), ("wrote manifest.json", 1), (None, 0)]


def _state(out: Path, old_ids: list[str], new_ids: list[str], user: dict[str, bytes]) -> str:
    """'old' or 'new' if ``out`` holds exactly that complete set (and the user's files); fails otherwise."""
    manifest = vectors.load_manifest(out)
    ids = [entry["id"] for entry in manifest["cases"]]
    assert ids in (old_ids, new_ids), ids
    for entry in manifest["cases"]:
        vectors.load_case(out, entry)  # every listed case is complete and readable
    files = snapshot(out)
    assert {k: files.get(k) for k in user} == user, "the user's files changed"
    expected = {f"cases/{i}.npz" for i in ids} | set(user) | {"manifest.json"}
    assert set(files) == expected, set(files) ^ expected
    return "old" if ids == old_ids else "new"


@pytest.mark.parametrize(("marker", "count"), KILL_POINTS)
def test_vectors_force_killed_leaves_the_old_or_the_new_set(tmp_path, marker, count):
    cases = vectors.build_cases()
    old, new = cases[:3], cases[:8]
    out = tmp_path / "vectors"
    vectors.write_vectors(out, cases=old)
    (out / "README").write_text("the user's")
    (out / "cases" / "mine.npz").write_bytes(b"the user's too")
    user = {"README": b"the user's", "cases/mine.npz": b"the user's too"}
    assert _state(out, [c.id for c in old], [c.id for c in new], user) == "old"

    process, seen = run_and_kill(_DRIVER, [str(out), str(len(new))], marker, count)
    if marker is None:
        assert process.returncode == 0, process.stderr.read()
    else:
        assert process.returncode == -signal.SIGKILL, (seen, process.stderr.read())
    state = _state(out, [c.id for c in old], [c.id for c in new], user)
    # Killed before the swap: the old set; left to finish: the new one.
    assert state == ("new" if marker is None else "old")
    # A later run cleans up nothing of the user's and completes the new set.
    vectors.write_vectors(out, force=True, cases=new)
    assert _state(out, [c.id for c in old], [c.id for c in new], user) == "new"
