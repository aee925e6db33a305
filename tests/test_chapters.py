"""Chapters are deterministic: rendering a chapter twice gives the same page, number for number, and the same
figures, byte for byte. (Chapter 7 is left out: its table has a column of measured timings.)

`rendered` renders a chapter once per test session; the tests that read a chapter's page (here, and in
test_prose_numbers.py and test_exercises.py) share that one run, since a chapter takes up to half a minute."""

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import pytest

from quantref.render import render_chapter

ROOT = Path(__file__).resolve().parents[1]
DETERMINISTIC_CHAPTERS = ["01_affine.py", "02_rounding.py", "03_ranges.py"]
_PAGES = Path(tempfile.mkdtemp(prefix="quantref-pages-"))
atexit.register(shutil.rmtree, _PAGES, ignore_errors=True)


@functools.cache
def rendered(name: str) -> Path:
    """The page of ``chapters/<name>``, rendered once per session; its figures are in ``page.parent / page.stem``."""
    return render_chapter(ROOT / "chapters" / name, _PAGES, echo=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", DETERMINISTIC_CHAPTERS)
def test_chapter_prints_the_same_numbers_twice(name, tmp_path):
    script = ROOT / "chapters" / name
    first = rendered(name)
    second = render_chapter(script, tmp_path, echo=False)
    assert first.read_text() == second.read_text()
    figures = sorted((first.parent / script.stem).glob("*.png"))
    assert figures, f"{name} draws no figure"
    for figure in figures:
        twin = tmp_path / script.stem / figure.name
        assert figure.read_bytes() == twin.read_bytes(), f"{name}: {figure.name} differs between two runs"
