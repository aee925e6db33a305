"""MkDocs hook: turn arithmatex's TeX into MathML at build time, so pages need no math JavaScript and no network.

``pymdownx.arithmatex`` with ``generic: true`` leaves ``$...$`` as ``<span class="arithmatex">\\(...\\)</span>`` and
``$$...$$`` (and ``\\begin{env}...``) as ``<div class="arithmatex">\\[...\\]</div>``, with the TeX HTML-escaped
(``&lt;``, ``&amp;``). This hook unescapes it, converts it with ``latex2mathml`` and puts the ``<math>`` element in
its place (inside the same span/div); browsers render MathML natively (Chromium since 109, Firefox, Safari). TeX that does not convert is left
as it is and logged as a warning, which fails ``mkdocs build --strict``.
"""

from __future__ import annotations

import html
import logging
import re

from latex2mathml.converter import convert

log = logging.getLogger("mkdocs.hooks.mathml")

ARITHMATEX = re.compile(r'<(span|div) class="arithmatex">(.*?)</\1>', re.DOTALL)
DELIMITERS = {"span": (r"\(", r"\)"), "div": (r"\[", r"\]")}


def tex_to_mathml(tex: str, *, display: bool) -> str:
    """Convert one TeX formula (without delimiters) to a ``<math>`` element."""
    return convert(tex.strip(), display="block" if display else "inline")


def on_page_content(html_text: str, page, **kwargs) -> str:
    """Replace every arithmatex span/div in a page's HTML with MathML."""

    def replace(match: re.Match) -> str:
        tag, tex = match.group(1), html.unescape(match.group(2)).strip()
        opening, closing = DELIMITERS[tag]
        if tex.startswith(opening) and tex.endswith(closing):
            tex = tex[len(opening) : -len(closing)]
        try:
            # Keep the wrapper: Material styles div.arithmatex to scroll sideways when a formula is too wide.
            return f'<{tag} class="arithmatex">{tex_to_mathml(tex, display=tag == "div")}</{tag}>'
        except Exception as error:  # latex2mathml raises assorted exception types on unsupported TeX
            log.warning("%s: cannot convert TeX to MathML (%s): %s", page.file.src_uri, error, tex)
            return match.group(0)

    return ARITHMATEX.sub(replace, html_text)
