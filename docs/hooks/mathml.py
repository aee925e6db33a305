"""MkDocs hook: turn arithmatex's TeX into MathML at build time, so pages need no math JavaScript and no network.

``pymdownx.arithmatex`` with ``generic: true`` leaves ``$...$`` as ``<span class="arithmatex">\\(...\\)</span>`` and
``$$...$$`` (and ``\\begin{env}...``) as ``<div class="arithmatex">\\[...\\]</div>``, with the TeX HTML-escaped
(``&lt;``, ``&amp;``). This hook unescapes it, converts it with ``latex2mathml`` and puts the ``<math>`` element in
its place, inside the same span/div; browsers render MathML natively (Chromium since 109, Firefox, Safari). TeX that
does not convert, or uses a command latex2mathml does not know, is logged as a warning, which fails
``mkdocs build --strict``. Docstrings shown by mkdocstrings go through the same path, so write their math as
``$...$`` and ``$$...$$`` too (not reST ``:math:`` roles).
"""

from __future__ import annotations

import html
import logging
import re

from latex2mathml.converter import convert

log = logging.getLogger("mkdocs.hooks.mathml")

ARITHMATEX = re.compile(r'<(span|div) class="arithmatex">(.*?)</\1>', re.DOTALL)
UNKNOWN_COMMAND = re.compile(r"<m[io]>(\\[A-Za-z]+)</m[io]>")
CODE = re.compile(r"<(pre|code)\b.*?</\1>", re.DOTALL)
DELIMITERS = {"span": (r"\(", r"\)"), "div": (r"\[", r"\]")}


def on_page_content(html_text: str, page, **kwargs) -> str:
    """Replace every arithmatex span/div in a page's HTML with MathML."""

    def replace(match: re.Match) -> str:
        tag, tex = match.group(1), html.unescape(match.group(2)).strip()
        opening, closing = DELIMITERS[tag]
        if tex.startswith(opening) and tex.endswith(closing):
            tex = tex[len(opening) : -len(closing)]
        try:
            mathml = convert(tex.strip(), display="block" if tag == "div" else "inline")
        except Exception as error:  # latex2mathml raises assorted exception types on unsupported TeX
            log.warning("%s: cannot convert TeX to MathML (%s): %s", page.file.src_uri, error, tex)
            return match.group(0)
        unknown = UNKNOWN_COMMAND.findall(mathml)
        if unknown:  # latex2mathml prints commands it does not know as text instead of failing
            log.warning("%s: TeX command(s) %s unknown to latex2mathml in: %s", page.file.src_uri, unknown, tex)
        # Keep the wrapper: Material styles div.arithmatex to scroll sideways when a formula is too wide.
        return f'<{tag} class="arithmatex">{mathml}</{tag}>'

    html_text = ARITHMATEX.sub(replace, html_text)
    if "$$" in CODE.sub("", html_text):  # arithmatex only sees a $$ block that is a paragraph of its own
        log.warning("%s: a $$ block was not recognised as math: put blank lines around it", page.file.src_uri)
    return html_text
