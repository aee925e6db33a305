"""Fast tests of the chapter renderer on a tiny script."""

import textwrap
from pathlib import Path

import pytest

from quantref.render import ChapterError, chapter_scripts, parse_cells, render_all, render_chapter

SCRIPT = textwrap.dedent(
    """\
    # %% [markdown]
    # # Tiny chapter
    #
    # The scale is $s = 2/255$.

    # %%
    import sys
    import matplotlib.pyplot as plt
    print("hello from", __name__)
    print("progress", file=sys.stderr)

    # %% [markdown]
    # A figure follows.

    # %%
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, 1])
    ax.set_title("a line")
    plt.show()

    # %%
    answer = 6 * 7  # state carries over between cells
    """
)


def write(tmp_path: Path, text: str, name: str = "01_tiny.py") -> Path:
    script = tmp_path / "chapters" / name
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(text)
    return script


def test_parse_cells_splits_prose_and_code():
    cells = parse_cells(SCRIPT)
    assert [c.kind for c in cells] == ["markdown", "code", "markdown", "code", "code"]
    assert cells[0].source == "# Tiny chapter\n\nThe scale is $s = 2/255$."
    assert cells[1].source.startswith("import sys") and cells[1].line == 7


def test_render_writes_page_output_and_figure(tmp_path, capsys):
    page = render_chapter(write(tmp_path, SCRIPT), tmp_path / "out")
    text = page.read_text()
    assert page == tmp_path / "out" / "01_tiny.md"
    assert text.startswith("# Tiny chapter\n")
    assert "The scale is $s = 2/255$." in text and "# The scale" not in text
    assert "```python\nimport sys\n" in text
    assert "```text\nhello from __main__\n```" in text
    assert "\nprogress\n" not in text  # stderr is not part of the page
    assert "![a line](01_tiny/fig1.png)" in text
    png = (tmp_path / "out" / "01_tiny" / "fig1.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    captured = capsys.readouterr()
    assert "hello from __main__" in captured.out and "progress" in captured.err  # echoed live


def test_echo_false_keeps_stdout_quiet(tmp_path, capsys):
    render_chapter(write(tmp_path, SCRIPT), tmp_path / "out", echo=False)
    assert "hello" not in capsys.readouterr().out


def test_error_names_chapter_and_cell(tmp_path):
    text = SCRIPT + "\n# %%\nx = 1\n\n# %%\ny = 2\nraise ValueError('boom')\n"
    line = text.splitlines().index("raise ValueError('boom')") + 1
    script = write(tmp_path, text, "02_broken.py")
    with pytest.raises(ChapterError, match=rf"02_broken\.py: cell 7 \(line {line}\) raised ValueError: boom"):
        render_chapter(script, tmp_path / "out", echo=False)


def test_render_is_deterministic(tmp_path):
    script = write(tmp_path, SCRIPT)
    first = render_chapter(script, tmp_path / "a", echo=False)
    second = render_chapter(script, tmp_path / "b", echo=False)
    assert first.read_text() == second.read_text()
    assert (tmp_path / "a/01_tiny/fig1.png").read_bytes() == (tmp_path / "b/01_tiny/fig1.png").read_bytes()


def test_render_all_in_chapter_order(tmp_path):
    write(tmp_path, "# %%\nprint(2)\n", "02_b.py")
    write(tmp_path, "# %%\nprint(1)\n", "01_a.py")
    write(tmp_path, "# %%\nprint('not a chapter')\n", "helpers.py")
    assert [p.name for p in chapter_scripts(tmp_path)] == ["01_a.py", "02_b.py"]
    pages = render_all(tmp_path / "chapters", tmp_path / "out", echo=False)
    assert [p.name for p in pages] == ["01_a.md", "02_b.md"]
    assert pages[0].read_text().startswith("# A\n")  # no markdown title: one is made from the file name
