"""Render a chapter script into a markdown page with its executed output and figures.

A chapter is a plain Python script in jupytext "percent" format: a line ``# %%`` starts a code cell and
``# %% [markdown]`` starts a prose cell whose lines are markdown behind ``# ``. ``python chapters/01_affine.py``
runs it as a script; `render_chapter` runs the same cells one by one in a single namespace and writes a page
with each cell's source, its printed output and the matplotlib figures it left open. A code cell marked
``# %% tags=["solution"]`` (jupytext's cell-metadata syntax) is an exercise's solution: it runs like any other cell,
and the page shows its code and output folded in a collapsed "Solution" block.

Why in-process and not a Jupyter kernel: every chapter imports JAX and trains or loads the same model, so rendering
them all in one interpreter pays for the JAX import (and its compilation caches) once; there is no kernel, no
ipykernel/nbclient dependency and no inter-process protocol to go wrong; and a chapter runs exactly as it does under
plain ``python`` — ``__name__ == "__main__"``, the working directory unchanged.

Usage: ``python -m quantref.render [chapters_dir] [out_dir]`` (defaults: ``chapters`` and ``docs/chapters``).
"""

from __future__ import annotations

import io
import re
import shutil
import sys
import traceback
import types
import warnings
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:  # matplotlib is imported only when a chapter is rendered
    from matplotlib.figure import Figure

CELL_MARKER = re.compile(r"^# %%(.*)$")
SOLUTION_TAG = re.compile(r"""\btags\s*=\s*\[[^\]]*["']solution["']""")
CHAPTER_GLOB = "[0-9][0-9]_*.py"


class ChapterError(RuntimeError):
    """A chapter cell raised while rendering; the message names the chapter, the cell and the line."""


@dataclass(frozen=True)
class Cell:
    """One cell of a chapter script.

    Attributes:
        kind: ``"code"``, ``"markdown"`` or ``"solution"`` (a code cell shown collapsed).
        source: the cell's text; for markdown, with the leading ``# `` stripped from each line.
        line: 1-based line number in the script where the cell's text starts.
    """

    kind: str
    source: str
    line: int


def parse_cells(text: str) -> list[Cell]:
    """Split a percent-format script into cells.

    Text before the first ``# %%`` marker (a shebang, a module docstring, imports) is a code cell. Empty cells are
    dropped.

    Args:
        text: the script's source.

    Returns:
        The cells in order.
    """
    cells: list[Cell] = []
    kind, start, body = "code", 1, []

    def close() -> None:
        leading = next((i for i, line in enumerate(body) if line.strip()), len(body))
        source = "\n".join(body[leading:]).rstrip()
        if source:
            cells.append(Cell(kind, source, start + leading))

    for number, line in enumerate(text.splitlines(), start=1):
        marker = CELL_MARKER.match(line)
        if marker is None:
            body.append(_uncomment(line) if kind == "markdown" else line)
            continue
        close()
        kind = "markdown" if re.search(r"\[(markdown|md)\]", marker.group(1)) else "code"
        kind = "solution" if kind == "code" and SOLUTION_TAG.search(marker.group(1)) else kind
        start, body = number + 1, []
    close()
    return cells


def _uncomment(line: str) -> str:
    """Strip the ``# `` (or a bare ``#``) that hides a markdown line from Python."""
    if line.startswith("# "):
        return line[2:]
    return line[1:] if line.startswith("#") else line


class _Tee(io.StringIO):
    """A string buffer that also forwards every write to another stream (the real stdout), so progress shows live."""

    def __init__(self, echo_to: TextIO | None) -> None:
        super().__init__()
        self.echo_to = echo_to

    def write(self, text: str) -> int:
        if self.echo_to is not None:
            self.echo_to.write(text)
            self.echo_to.flush()
        return super().write(text)


def _fence(text: str, lang: str) -> str:
    """A fenced code block that stays closed even if ``text`` itself contains backtick fences."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{lang}\n{text}\n{ticks}"


def _collapsed(title: str, blocks: list[str]) -> str:
    """A collapsed pymdownx.details block (``??? example``) holding markdown blocks, indented under its title."""
    body = "\n\n".join(blocks)
    return f'??? example "{title}"\n\n' + "\n".join(f"    {line}" if line else "" for line in body.splitlines())


def _alt_text(figure: Figure, number: int) -> str:
    """A figure's suptitle or first axes title, for the image's alt text."""
    titles = [figure.get_suptitle()] + [axes.get_title() for axes in figure.axes]
    title = next((t for t in titles if t), f"Figure {number}")
    return " ".join(re.sub(r"[\[\]]", "", title).split())


def render_chapter(script: Path, out_dir: Path, *, echo: bool = True) -> Path:
    """Execute a chapter script cell by cell and write its page.

    Writes ``out_dir/<stem>.md`` (prose cells as markdown, code cells as ``python`` blocks, their stdout as ``text``
    blocks) and ``out_dir/<stem>/figN.png`` for every matplotlib figure open after a cell (the figure is then
    closed). stderr — tqdm progress bars, warnings — goes to the real stderr and not into the page.

    Args:
        script: the chapter script, e.g. ``chapters/01_affine.py``.
        out_dir: where to write the page and its figure folder (created if needed).
        echo: also print each cell's output to the real stdout as it runs.

    Returns:
        The path of the written markdown page.

    Raises:
        ChapterError: a cell raised; the message names the chapter, the cell number and the script line.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    script, out_dir = Path(script).resolve(), Path(out_dir)
    stem = script.stem
    fig_dir = out_dir / stem
    shutil.rmtree(fig_dir, ignore_errors=True)  # stale figures from an earlier render must not linger
    fig_dir.mkdir(parents=True)

    title, cells = _split_title(parse_cells(script.read_text(encoding="utf-8")), stem)
    source_name = f"{script.parent.name}/{script.name}"
    # A real module registered as __main__ (as runpy does), so pickling, dataclasses and Flax see the chapter's
    # classes the way they do under `python script.py`.
    module = types.ModuleType("__main__")
    module.__file__ = str(script)
    saved = sys.modules.get("__main__"), sys.argv, list(sys.path)
    sys.modules["__main__"], sys.argv = module, [str(script)]
    sys.path.insert(0, str(script.parent))

    parts = [title, f"*This page is the executed output of `{source_name}`; run it alone with `python {source_name}`.*"]
    figure_count = 0
    plt.close("all")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*non-interactive.*cannot be shown")  # plt.show() under Agg
            for index, cell in enumerate(cells, start=1):
                if cell.kind == "markdown":
                    parts += [cell.source] if cell.source else []
                    continue
                block = [_fence(cell.source, "python")]
                # Pad with newlines so tracebacks point at the script's real line numbers.
                code = compile("\n" * (cell.line - 1) + cell.source, str(script), "exec")
                output = _Tee(sys.stdout if echo else None)
                try:
                    with redirect_stdout(output):
                        exec(code, module.__dict__)
                except Exception as error:
                    frames = traceback.extract_tb(error.__traceback__)
                    line = next((f.lineno for f in reversed(frames) if f.filename == str(script)), cell.line)
                    raise ChapterError(
                        f"{script.name}: cell {index} (line {line}) raised {type(error).__name__}: {error}"
                    ) from error
                text = output.getvalue().rstrip()
                if text.strip():
                    block.append(_fence(text, "text"))
                for number in plt.get_fignums():
                    figure = plt.figure(number)
                    figure_count += 1
                    name = f"fig{figure_count}.png"
                    figure.savefig(fig_dir / name, dpi=120, bbox_inches="tight", metadata={"Software": None})
                    block.append(f"![{_alt_text(figure, figure_count)}]({stem}/{name})")
                    plt.close(figure)
                parts += [_collapsed("Solution", block)] if cell.kind == "solution" else block
    finally:
        plt.close("all")
        sys.modules["__main__"], sys.argv, sys.path[:] = saved
        if saved[0] is None:
            del sys.modules["__main__"]

    page = out_dir / f"{stem}.md"
    page.write_text("\n\n".join(parts) + "\n", encoding="utf-8")
    return page


def _split_title(cells: list[Cell], stem: str) -> tuple[str, list[Cell]]:
    """Take the first markdown cell's ``# Title`` line out of the cells; fall back to a title made from the stem."""
    for index, cell in enumerate(cells):
        if cell.kind == "markdown":
            if not cell.source.startswith("# "):
                break
            title, _, rest = cell.source.partition("\n")
            # Keep the (maybe empty) rest as a cell so cell numbers in error messages match the script.
            return title, cells[:index] + [Cell("markdown", rest.strip("\n"), cell.line + 1)] + cells[index + 1 :]
    return "# " + stem.split("_", 1)[-1].replace("_", " ").capitalize(), cells


def chapter_scripts(root: Path) -> list[Path]:
    """The chapter scripts ``NN_topic.py``, sorted by number.

    Args:
        root: the repository root (chapters are looked up in ``root/chapters``) or the chapters directory itself.

    Returns:
        Sorted paths of the chapter scripts.
    """
    root = Path(root)
    directory = root / "chapters" if (root / "chapters").is_dir() else root
    return sorted(directory.glob(CHAPTER_GLOB))


def render_all(chapters_dir: Path, out_dir: Path, *, echo: bool = True) -> list[Path]:
    """Render every chapter, in order, into ``out_dir``.

    Args:
        chapters_dir: directory holding the ``NN_topic.py`` scripts (or the repository root).
        out_dir: where the pages go, e.g. ``docs/chapters``.
        echo: also print each cell's output to the real stdout as it runs.

    Returns:
        The paths of the written markdown pages, in chapter order.
    """
    return [render_chapter(script, out_dir, echo=echo) for script in chapter_scripts(chapters_dir)]


if __name__ == "__main__":
    args = sys.argv[1:]
    pages = render_all(Path(args[0] if args else "chapters"), Path(args[1] if len(args) > 1 else "docs/chapters"))
    print("\n".join(str(page) for page in pages), file=sys.stderr)
