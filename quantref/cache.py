"""On-disk cache for arrays that are expensive to recompute, such as trained weights.

Every entry is one ``.npz`` file named by its caller. Writes are atomic (a temporary
file in the same directory, then a rename), so a process that reads the cache while
another writes it sees either the whole old file, the whole new one, or none.
"""

from __future__ import annotations

import os
import uuid
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

__all__ = ["cache_dir", "entry_path", "save_arrays", "load_arrays", "discard", "clear_cache"]

_ENTRY_SUFFIX = ".quantref.npz"  # a suffix of our own, so clear_cache never touches a user's .npz
_TEMP_SUFFIX = ".quantref.tmp"


def cache_dir() -> Path:
    """Returns the directory that holds quantref's cache; it may not exist yet.

    Returns:
      ``$QUANTREF_CACHE`` if set, else ``$XDG_CACHE_HOME/quantref`` if
      ``XDG_CACHE_HOME`` is set, else ``~/.cache/quantref``.
    """
    if explicit := os.environ.get("QUANTREF_CACHE"):
        return Path(explicit)
    if xdg_cache_home := os.environ.get("XDG_CACHE_HOME"):
        return Path(xdg_cache_home) / "quantref"
    return Path.home() / ".cache" / "quantref"


def entry_path(name: str) -> Path:
    """Returns the file that holds the cache entry ``name``.

    Args:
      name: a plain file name without directory or suffix, e.g. ``"digits_cnn-seed0-1a2b"``.

    Returns:
      ``cache_dir() / (name + ".quantref.npz")``.

    Raises:
      ValueError: if ``name`` is empty, hidden, or contains a directory part.
    """
    if not name or Path(name).name != name or name.startswith("."):
        raise ValueError(f"cache entry name must be a plain file name, got {name!r}")
    return cache_dir() / (name + _ENTRY_SUFFIX)


def save_arrays(name: str, arrays: Mapping[str, np.ndarray]) -> Path:
    """Writes named arrays to the cache entry ``name`` atomically, replacing any old entry.

    Args:
      name: the entry's name (see :func:`entry_path`).
      arrays: the arrays to store, by key.

    Returns:
      The path of the written entry.
    """
    path = entry_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temporary file lives beside the entry so that the rename never crosses file systems, and its name is
    # unique so that processes writing the same entry at once do not write into one file.
    temp_path = path.with_name(f".{name}.{os.getpid()}.{uuid.uuid4().hex}{_TEMP_SUFFIX}")
    try:
        with temp_path.open("xb") as temp_file:
            np.savez(temp_file, **arrays)
        os.replace(temp_path, path)
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise
    return path


def load_arrays(name: str) -> dict[str, np.ndarray] | None:
    """Reads the cache entry ``name``.

    Args:
      name: the entry's name (see :func:`entry_path`).

    Returns:
      The stored arrays by key, or ``None`` if there is no such entry — or if the entry cannot be read (truncated
      or corrupted outside quantref, which writes atomically): then it is removed, with a warning naming it, so that
      the caller rebuilds it.
    """
    path = entry_path(name)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            return {key: stored[key] for key in stored.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        discard(name, f"{type(error).__name__}: {error}")
        return None


def discard(name: str, reason: str) -> None:
    """Removes a cache entry that cannot be used, with a warning that names it and says why.

    Args:
      name: the entry's name.
      reason: why it is discarded (shown in the warning).
    """
    path = entry_path(name)
    warnings.warn(f"quantref cache entry {path} is unusable ({reason}); removed, it will be rebuilt", stacklevel=3)
    path.unlink(missing_ok=True)


def clear_cache() -> list[Path]:
    """Removes every entry, and any temporary file left by an interrupted write, from ``cache_dir()``.

    The directory itself stays, since ``$QUANTREF_CACHE`` may name one the user made.

    Returns:
      The paths removed, sorted.
    """
    directory = cache_dir()
    if not directory.is_dir():
        return []
    written = [*directory.glob("*" + _ENTRY_SUFFIX), *directory.glob(".*" + _TEMP_SUFFIX)]
    removed = []
    for path in sorted(written):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
