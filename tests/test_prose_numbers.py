"""Every number in a chapter's prose is printed by the code beside it (or derived on the page).

A chapter's page is its prose, its code cells and their printed output. This test reads each rendered page and
checks that every number the prose states appears, to the precision the prose gives, in the chapter's output or as
a literal in its code (an input the reader can see) — or is on a short per-chapter list of constants that the page
derives in its formulas. A claim the output does not show is a bug: it is how prose drifts from what the code
computes, e.g. when a platform or a library version moves a result.

What counts as a number: digits in the prose and its math, not part of a word (int8, float32, W8A8, x86) and not a
reference (chapter 3, sec. 2.3.1, arXiv:2106.08295, exercise 1.2). Signs are ignored; thousands separators (1,797)
and digit underscores (10_000) are read as one number. A prose number with d decimals matches a shown number that
rounds to it at d decimals: "1.4×" matches a printed 1.43, "56 %" a printed 56%.

The pitfalls page's measured snippet is checked too: running it must print exactly the output the page shows.
"""

import contextlib
import io
import re
from decimal import Decimal

import pytest
from test_chapters import ROOT, rendered

from quantref.render import chapter_scripts

CHAPTERS = [script.name for script in chapter_scripts(ROOT)]

#: Numbers a page may state without printing them, per chapter: constants it derives in its formulas, and the wrong
#: figures of other write-ups that it quotes to refute. Keep these lists short: a number belongs here only if the page
#: shows where it comes from.
DERIVED = {
    "01_affine.py": {"0.12"},  # the write-up's claimed "corrected" value of 0.6, quoted to refute it
    "07_integer.py": {"31"},  # TFLite's multiplier format: a 31-bit integer q_m, M = q_m 2^(e - 31)
}

FENCE = re.compile(r"^\s*(`{3,})(\w*)\s*$")
REFERENCE = re.compile(
    r"(?i)(?:\bchapters?|\bsec(?:tion)?s?\.?|§|\beqs?\.|\bexercises?|\barxiv:?|\bfig(?:ure)?\.?)\s*\d+(?:\.\d+)*"
)
# A prose number: digits not glued to a word or a dotted name; 1,797 and 10_000 are one number.
PROSE_NUMBER = re.compile(r"(?<![\w.])(\d{1,3}(?:,\d{3})+(?![\d,])|\d+(?:_\d{3})*(?:\.\d+)?)(?![\w])")
# A shown number: any run of digits, wherever it is (45.9dB, W8, (3.2x)).
SHOWN_NUMBER = re.compile(r"\d{1,3}(?:,\d{3})+(?![\d,])|\d+(?:_\d{3})*(?:\.\d+)?")


def split_page(text: str) -> tuple[str, str, str]:
    """A rendered page split into its prose, its code and its printed output."""
    prose, code, output = [], [], []
    lines = iter(text.splitlines())
    for line in lines:
        fence = FENCE.match(line)
        if fence is None:
            prose.append(line)
            continue
        body = []
        for inner in lines:
            if inner.strip() == fence.group(1):
                break
            body.append(inner)
        (output if fence.group(2) == "text" else code).append("\n".join(body))
    return "\n".join(prose), "\n".join(code), "\n".join(output)


def prose_numbers(prose: str) -> list[tuple[str, str]]:
    """``(number, context)`` for every number stated in the prose."""
    lines = prose.splitlines()
    text = "\n".join(line for line in lines[1:] if not line.startswith(("![", "??? ")))  # title, figures, folds
    text = re.sub(r"`[^`\n]*`", " ", text)  # inline code: identifiers and calls, not claims
    text = re.sub(r"\]\([^)\s]*\)", "]", text)  # link targets
    text = REFERENCE.sub(" ", text)
    return [
        (match.group(1), text[max(0, match.start() - 50) : match.end() + 30].replace("\n", " "))
        for match in PROSE_NUMBER.finditer(text)
    ]


def _value(number: str) -> Decimal:
    return Decimal(number.replace(",", "").replace("_", ""))


def shown_numbers(*texts: str) -> set[Decimal]:
    return {_value(match.group(0)) for text in texts for match in SHOWN_NUMBER.finditer(text)}


def is_shown(number: str, shown: set[Decimal]) -> bool:
    value = _value(number)
    decimals = -value.as_tuple().exponent if "." in number else 0
    tolerance = Decimal(5) / Decimal(10) ** (decimals + 1)
    return any(abs(candidate - value) <= tolerance for candidate in shown)


def unshown_numbers(page: str, derived: set[str]) -> list[tuple[str, str]]:
    """``(number, context)`` for each number in the page's prose that its code and output do not show."""
    prose, code, output = split_page(page)
    shown = shown_numbers(code, output) | {_value(number) for number in derived}
    return [(number, context) for number, context in prose_numbers(prose) if not is_shown(number, shown)]


def test_the_checker_catches_an_unprinted_number():
    page = "# 9. A chapter\n\nThe error is 0.25 and the step 0.1, over 1,000 values.\n\n```python\nn = 1_000\n```\n"
    page += "\n```text\nstep 0.1003\n```\n"
    assert [number for number, _ in unshown_numbers(page, set())] == ["0.25"]
    assert unshown_numbers(page.replace("0.25", "0.250"), {"0.25"}) == []
    references = "# 9. A chapter\n\nSee chapter 7, sec. 2.3.1 and arXiv:2106.08295, in int8 and `key(7)`.\n"
    assert unshown_numbers(references, set()) == []


@pytest.mark.slow
@pytest.mark.parametrize("name", CHAPTERS)
def test_every_number_in_the_prose_is_printed(name):
    missing = unshown_numbers(rendered(name).read_text(encoding="utf-8"), DERIVED.get(name, set()))
    report = "\n".join(f"  {number!r} in '...{context}...'" for number, context in missing)
    assert not missing, f"{name}: numbers in the prose that the output does not show:\n{report}"


def test_pitfalls_snippet_prints_what_the_page_shows():
    text = (ROOT / "docs" / "pitfalls.md").read_text(encoding="utf-8")
    block = r"((?:(?!```).)*?)"  # a fence's body: no fence inside
    blocks = re.findall(rf"```python\n{block}\n```\s*\n```text\n{block}\n```", text, flags=re.DOTALL)
    assert blocks, "the pitfalls page has no measured snippet"
    for source, expected in blocks:
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            exec(compile(source, "pitfalls.md", "exec"), {})
        assert stdout.getvalue().rstrip() == expected.rstrip()


def test_pages_link_to_chapters_that_exist():
    pages = [ROOT / "docs" / name for name in ("index.md", "pitfalls.md", "getting-started.md")]
    pages += [ROOT / "chapters" / name for name in CHAPTERS]
    for page in pages:
        for target in re.findall(r"chapters/(\d\d_\w+)\.(?:md|py)", page.read_text(encoding="utf-8")):
            assert (ROOT / "chapters" / f"{target}.py").is_file(), f"{page.name} links to a missing {target}"
