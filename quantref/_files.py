"""Writing a set of output files atomically: an interrupted run leaves the old set or the new one, never a mix.

The files are written into a staging directory beside the target, then swapped in with one ``renameat2(...,
RENAME_EXCHANGE)`` (Linux), so that no reader ever sees half of the new set. Files in the target that quantref did
not write are carried over (hard links), never deleted. Where the atomic exchange is not available, two renames
are used, and an interruption between them leaves the old set under a ``.quantref-old-*`` name beside the target.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

_STAGING_PREFIX = ".quantref-staging-"
_OLD_PREFIX = ".quantref-old-"


def check_output_dir(out_dir: str | Path, *, force: bool, ours: tuple[str, ...] = ()) -> Path:
    """Checks, before any work, that ``out_dir`` can take the output.

    Args:
      out_dir: the target directory (need not exist).
      force: allow replacing files in a non-empty directory.
      ours: names of files that quantref itself writes there; other files never block (they are kept), but a
        non-empty directory needs ``force`` all the same, so that nothing is overwritten by surprise.

    Returns:
      The target as a ``Path``.

    Raises:
      ValueError: if ``out_dir`` is a file, is non-empty without ``force``, or its parent cannot be written.
    """
    if not isinstance(out_dir, (str, os.PathLike)) or str(out_dir) == "":
        raise TypeError(f"out_dir must be a path, got {out_dir!r}")
    target = Path(out_dir)
    if target.exists() and not target.is_dir():
        raise ValueError(f"out_dir must be a directory, got the file {target}")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise ValueError(f"out_dir {target} is not empty; pass force=True (--force) to replace quantref's files in it")
    parent = _existing_parent(target)
    try:
        probe = tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=parent)
        os.rmdir(probe)
    except OSError as error:
        raise ValueError(f"out_dir {target} cannot be written: {error.strerror or error}") from None
    return target


def write_files(target: Path, writers: Mapping[str, Callable[[Path], None]]) -> dict[str, Path]:
    """Writes ``{name: writer}`` into ``target`` as one atomic step.

    Args:
      target: a directory checked by :func:`check_output_dir`.
      writers: each ``writer(path)`` writes one file at ``path``.

    Returns:
      ``{name: final path}``.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=target.parent))
    try:
        for name, writer in writers.items():
            writer(staging / name)
        if not target.exists():
            os.rename(staging, target)
            return {name: target / name for name in writers}
        # Keep what quantref did not write: hard links cost nothing and survive the swap.
        carried_dirs = []
        for entry in target.iterdir():
            if entry.name in writers:
                continue
            if entry.is_file() and not entry.is_symlink():
                os.link(entry, staging / entry.name)
            else:
                carried_dirs.append(entry.name)
        _exchange(staging, target)
        for name in carried_dirs:  # directories cannot be hard-linked; move them after the swap
            os.rename(staging / name, target / name)
    except BaseException:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(staging, ignore_errors=True)  # now the old set
    return {name: target / name for name in writers}


def save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """``np.savez`` to exactly ``path`` (numpy would append ``.npz`` to a name without it)."""
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def _existing_parent(path: Path) -> Path:
    """The nearest existing ancestor of ``path`` (where the staging directory goes, or its parents are made)."""
    candidate = path.absolute().parent
    while not candidate.exists():
        candidate = candidate.parent
    if not candidate.is_dir():
        raise ValueError(f"out_dir {path} lies under the file {candidate}")
    return candidate


def _exchange(first: Path, second: Path) -> None:
    """Swaps two directories atomically (Linux renameat2 RENAME_EXCHANGE), else with two renames."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        renameat2 = None
    if renameat2 is not None:
        at_fdcwd, rename_exchange = -100, 2
        if renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange) == 0:
            return
    old = Path(tempfile.mkdtemp(prefix=_OLD_PREFIX, dir=second.parent))
    os.rmdir(old)
    os.rename(second, old)
    os.rename(first, second)
    os.rename(old, first)
