"""Every chapter ends with two or three exercises whose solutions run with the chapter and are folded on its page.

A solution is a code cell marked ``# %% tags=["solution"]``: rendering the chapter executes it (a wrong solution
fails the chapter, like any cell), and the page shows it in a collapsed ``??? example "Solution"`` block with its
output."""

import re
import textwrap

import pytest
from test_chapters import ROOT, rendered

from quantref.render import chapter_scripts, parse_cells, render_chapter

CHAPTERS = [script.name for script in chapter_scripts(ROOT)]
SCRIPT = textwrap.dedent(
    """\
    # %% [markdown]
    # # Tiny chapter
    #
    # **Exercise 1.** What is 6 times 7?

    # %% tags=["solution"]
    answer = 6 * 7
    print("answer", answer)

    # %%
    print("after the fold", answer)
    """
)


def test_a_solution_cell_runs_and_is_folded(tmp_path):
    script = tmp_path / "01_tiny.py"
    script.write_text(SCRIPT)
    assert [cell.kind for cell in parse_cells(SCRIPT)] == ["markdown", "solution", "code"]
    page = render_chapter(script, tmp_path / "out", echo=False).read_text()
    folded = '??? example "Solution"\n\n    ```python\n    answer = 6 * 7\n    print("answer", answer)\n    ```'
    assert folded + "\n\n    ```text\n    answer 42\n    ```\n" in page
    assert "\n```text\nafter the fold 42\n```" in page  # later cells are not indented into the fold


def solutions(page: str) -> list[str]:
    """The folded solution blocks of a rendered page (title line and indented body)."""
    return re.findall(r'^\?\?\? example "Solution"\n\n((?:    .*\n|\n)+)', page, flags=re.MULTILINE)


@pytest.mark.slow
@pytest.mark.parametrize("name", CHAPTERS)
def test_chapter_has_two_or_three_executed_exercises(name):
    page = rendered(name).read_text(encoding="utf-8")
    exercises = re.findall(r"^\*\*Exercise \d+\.\d+\.\*\*", page, flags=re.MULTILINE)
    blocks = solutions(page)
    assert 2 <= len(exercises) <= 3, f"{name}: {len(exercises)} exercises"
    assert len(blocks) == len(exercises), f"{name}: {len(exercises)} exercises but {len(blocks)} solutions"
    for block in blocks:
        assert "    ```python\n" in block and "    ```text\n" in block, f"{name}: a solution printed nothing"


def test_chapter_scripts_mark_their_solutions():
    for name in CHAPTERS:
        text = (ROOT / "chapters" / name).read_text(encoding="utf-8")
        exercises = len(re.findall(r"^# \*\*Exercise \d+\.\d+\.\*\*", text, flags=re.MULTILINE))
        marked = sum(cell.kind == "solution" for cell in parse_cells(text))
        assert marked == exercises, f"{name}: {exercises} exercises, {marked} solution cells"
