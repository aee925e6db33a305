"""Chapters are deterministic: rendering a chapter twice gives the same page, number for number, and the same
figures, byte for byte. (Chapter 7 is left out: its table has a column of measured timings.)"""

from pathlib import Path

import pytest

from quantref.render import render_chapter

ROOT = Path(__file__).resolve().parents[1]
DETERMINISTIC_CHAPTERS = ["01_ranges.py", "02_affine.py", "03_rounding.py"]


@pytest.mark.slow
@pytest.mark.parametrize("name", DETERMINISTIC_CHAPTERS)
def test_chapter_prints_the_same_numbers_twice(name, tmp_path):
    script = ROOT / "chapters" / name
    first = render_chapter(script, tmp_path / "first", echo=False)
    second = render_chapter(script, tmp_path / "second", echo=False)
    assert first.read_text() == second.read_text()
    figures = sorted((tmp_path / "first" / script.stem).glob("*.png"))
    assert figures, f"{name} draws no figure"
    for figure in figures:
        twin = tmp_path / "second" / script.stem / figure.name
        assert figure.read_bytes() == twin.read_bytes(), f"{name}: {figure.name} differs between two runs"
