"""The text corpus of the small transformer: the Python standard library's own sources, split by file.

Every Python installation ships its standard library as ``.py`` files, so the corpus needs no download. The corpus
is a fixed list of top-level modules (present from Python 3.9 to 3.14), split **by file** into three parts, so that
held-out text comes from modules the model never saw in training:

- test: :data:`TEST_FILES`, the text every perplexity in chapter 8 is measured on;
- validation: :data:`VALIDATION_FILES`, reported at the end of training;
- train: :data:`TRAIN_FILES`, everything else — also the source of the calibration windows of GPTQ, AWQ and
  SmoothQuant, as the papers calibrate on training text.

Characters map to a fixed vocabulary (:data:`VOCAB`: tab, newline, the 95 printable ASCII characters), with one
more id for anything else (a few non-ASCII characters in docstrings). Files are read as UTF-8 with universal
newlines, so the same files give the same ids on every operating system.

Determinism: the file list, the split, the vocabulary and the window positions are fixed, so the same Python minor
version (the same files) gives the same corpus on every machine, and :attr:`Corpus.fingerprint` (a hash of the
three texts) says so. **On another minor version** the file list is the same but the files' contents differ (the
standard library changes between releases — and may between patch releases of one minor version), so the
corpus, its fingerprint, the trained model (its cache entry is keyed by the fingerprint) and every measured number
differ a little; a listed file missing from an installation raises ``FileNotFoundError`` naming it.
"""

from __future__ import annotations

import functools
import hashlib
import sysconfig
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = [
    "VOCAB",
    "VOCAB_SIZE",
    "UNKNOWN_ID",
    "TRAIN_FILES",
    "VALIDATION_FILES",
    "TEST_FILES",
    "Corpus",
    "stdlib_dir",
    "encode",
    "decode",
    "load_corpus",
    "windows",
    "random_windows",
]

#: The characters with an id of their own: tab, newline and printable ASCII (space to ``~``), in that order.
VOCAB: str = "\t\n" + "".join(chr(code) for code in range(32, 127))
#: The id of every character not in :data:`VOCAB`.
UNKNOWN_ID: int = len(VOCAB)
#: Ids run from 0 to ``VOCAB_SIZE - 1``.
VOCAB_SIZE: int = len(VOCAB) + 1

#: Held out for every reported perplexity (about 126 kB on Python 3.11).
TEST_FILES: tuple[str, ...] = ("csv.py", "fractions.py", "heapq.py", "pprint.py", "shlex.py", "textwrap.py")
#: Held out, reported at the end of training (about 120 kB on Python 3.11).
VALIDATION_FILES: tuple[str, ...] = (
    "base64.py",
    "calendar.py",
    "gettext.py",
    "glob.py",
    "queue.py",
    "sched.py",
    "tokenize.py",
)
#: The training text (about 3.2 MB on Python 3.11).
TRAIN_FILES: tuple[str, ...] = tuple(
    f"{name}.py"
    for name in (
        "argparse ast bdb bisect bz2 cmd code codecs codeop colorsys compileall configparser contextlib copy "
        "copyreg dataclasses difflib dis doctest enum filecmp fileinput fnmatch ftplib functools getopt getpass "
        "graphlib gzip hashlib hmac imaplib inspect ipaddress keyword linecache locale lzma mailbox mimetypes "
        "modulefinder netrc ntpath numbers opcode operator optparse os pdb pickle pickletools platform plistlib "
        "poplib posixpath profile pstats py_compile pyclbr pydoc quopri random reprlib rlcompleter runpy secrets "
        "selectors shelve shutil signal site smtplib socket socketserver ssl stat statistics string stringprep "
        "struct subprocess symtable tabnanny tarfile tempfile threading timeit token trace traceback tracemalloc "
        "tty types typing uuid warnings wave weakref webbrowser zipapp zipimport"
    ).split()
)

_LOOKUP = np.full(128, UNKNOWN_ID, np.uint8)
_LOOKUP[[ord(char) for char in VOCAB]] = np.arange(len(VOCAB), dtype=np.uint8)


class Corpus(NamedTuple):
    """The three splits as character ids.

    Attributes:
      train: ``uint8`` ids of the training files, concatenated in :data:`TRAIN_FILES` order.
      validation: ids of :data:`VALIDATION_FILES`.
      test: ids of :data:`TEST_FILES`.
      fingerprint: the first 16 hex digits of a SHA-256 over the three splits (equal fingerprints, equal corpora).
      python_version: ``"3.11"``: the minor version whose standard library this is.
    """

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    fingerprint: str
    python_version: str


def stdlib_dir() -> Path:
    """The directory of the running Python's standard library sources (``sysconfig``'s ``stdlib`` path)."""
    return Path(sysconfig.get_paths()["stdlib"])


def encode(text: str) -> np.ndarray:
    """Character ids of a string: :data:`VOCAB` positions, :data:`UNKNOWN_ID` for any other character.

    Args:
      text: any string.

    Returns:
      ``uint8`` ids, one per character.

    Raises:
      TypeError: if ``text`` is not a ``str``.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    codes = np.frombuffer(text.encode("utf-32-le"), np.uint32)
    return np.where(codes < 128, _LOOKUP[np.minimum(codes, 127)], UNKNOWN_ID).astype(np.uint8)


def decode(ids: np.ndarray) -> str:
    """The string of character ids (:data:`UNKNOWN_ID` becomes ``"?"``).

    Raises:
      ValueError: for an id outside ``0..VOCAB_SIZE - 1``.
    """
    ids = np.asarray(ids).ravel()
    if ids.size and (ids.min() < 0 or ids.max() >= VOCAB_SIZE):
        raise ValueError(f"ids must be in 0..{VOCAB_SIZE - 1}, got values in [{ids.min()}, {ids.max()}]")
    return "".join(VOCAB[i] if i < len(VOCAB) else "?" for i in ids.tolist())


def _read(root: Path, names: tuple[str, ...]) -> np.ndarray:
    parts = []
    for name in names:
        path = root / name
        if not path.is_file():
            raise FileNotFoundError(f"the corpus file {name} is not in {root} (this Python lacks it)")
        # Universal newlines (read_text): \r\n and \n give the same ids.
        parts.append(encode(path.read_text(encoding="utf-8", errors="replace")))
    return np.concatenate(parts)


@functools.cache
def load_corpus(root: str | None = None) -> Corpus:
    """Reads and encodes the three splits (cached per process).

    Args:
      root: the directory holding the files; ``None`` is :func:`stdlib_dir`.

    Returns:
      The :class:`Corpus`.

    Raises:
      FileNotFoundError: naming a listed file that ``root`` lacks.
    """
    directory = stdlib_dir() if root is None else Path(root)
    train, validation, test = (_read(directory, names) for names in (TRAIN_FILES, VALIDATION_FILES, TEST_FILES))
    digest = hashlib.sha256()
    for split in (train, validation, test):
        digest.update(len(split).to_bytes(8, "little"))
        digest.update(split.tobytes())
    version = sysconfig.get_python_version()
    return Corpus(train, validation, test, digest.hexdigest()[:16], version)


def windows(ids: np.ndarray, length: int, count: int | None = None) -> np.ndarray:
    """Non-overlapping windows of ``length + 1`` ids (inputs and their next-character targets), evenly spread.

    With ``count`` windows out of the ``len(ids) // (length + 1)`` that fit, window ``i`` starts at
    ``(i * available // count) * (length + 1)``, so a subset still covers the whole text.

    Args:
      ids: a split of :class:`Corpus`.
      length: the context length (the model reads ``length`` ids and predicts the next one at each position).
      count: how many windows; ``None`` takes all that fit.

    Returns:
      ``(count, length + 1)`` ``int32`` ids.

    Raises:
      ValueError: if ``length < 1``, or ``count`` is below 1 or more than fit.
    """
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 1:
        raise ValueError(f"length must be a positive int, got {length!r}")
    available = len(ids) // (length + 1)
    count = available if count is None else count
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or not 1 <= count <= available:
        raise ValueError(f"count must be an int in 1..{available} for {len(ids)} ids, got {count!r}")
    starts = (np.arange(count) * available // count) * (length + 1)
    return np.stack([ids[start : start + length + 1] for start in starts]).astype(np.int32)


def random_windows(ids: np.ndarray, length: int, batch_size: int, seed: int | tuple[int, ...]) -> np.ndarray:
    """A batch of windows of ``length + 1`` ids at random positions, drawn from ``numpy.random.default_rng(seed)``.

    Args:
      ids: a split of :class:`Corpus`.
      length: the context length.
      batch_size: windows in the batch.
      seed: the generator's seed (training uses ``(seed, step)``, so every step has its own batch).

    Returns:
      ``(batch_size, length + 1)`` ``int32`` ids.

    Raises:
      ValueError: if the text is shorter than one window.
    """
    if len(ids) < length + 1:
        raise ValueError(f"need at least length + 1 = {length + 1} ids, got {len(ids)}")
    starts = np.random.default_rng(seed).integers(0, len(ids) - length, size=batch_size)
    return np.stack([ids[start : start + length + 1] for start in starts]).astype(np.int32)
