"""MkDocs hooks: add the pages generated from the code and results/ (``suite.cli.reference.pages``) to the build,
so `mkdocs build --strict` works from a clean checkout and no generated page is committed; and turn the pages'
TeX formulas into MathML at build time, which browsers render natively — the site loads no script from the
network and ships none (it is read from disk)."""
from __future__ import annotations

import html
import re
import sys
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Replace or add each generated page (a stale copy under docs/ never wins over the code)."""
    if str(ROOT) not in sys.path:  # the checkout's suite, even when it is not installed
        sys.path.insert(0, str(ROOT))
    from suite.cli.reference import pages

    me = files.get_file_from_path(Path(__file__).name)
    if me is not None:  # this hook lives in docs/ but is not a page of the site
        files.remove(me)
    for src_uri, markdown in pages(Path(config.docs_dir)).items():
        old = files.get_file_from_path(src_uri)
        if old is not None:
            files.remove(old)
        files.append(File.generated(config, src_uri, content=markdown))
    return files


# what pymdownx.arithmatex (generic mode) leaves: \( … \) in a span, \[ … \] in a div
_MATH = re.compile(r'<(span|div) class="arithmatex">\\([(\[])(.*?)\\[)\]]</\1>', re.S)


def on_page_content(content: str, **_: object) -> str:
    """Every formula of the page as MathML (inline or display); a formula the converter cannot read fails the
    build, naming it, rather than showing raw TeX."""
    from latex2mathml.converter import convert

    def mathml(m: re.Match) -> str:
        tex = html.unescape(m.group(3)).strip()
        try:
            out = convert(tex, display="block" if m.group(2) == "[" else "inline")
        except Exception as exc:  # noqa: BLE001 — any parse failure: one line naming the formula
            raise ValueError(f"docs: cannot convert the formula {tex[:60]!r} to MathML: {exc}") from None
        return out if m.group(1) == "span" else f'<div class="math">{out}</div>'

    return _ROLE.sub(_role, _MATH.sub(mathml, content))


# docstrings are written for Sphinx-style roles (:func:`run`); mkdocstrings leaves the role's name in the text
_ROLE = re.compile(r":(?:func|class|meth|mod|data|attr|exc|obj):<code>(~?)([^<]*)</code>")


def _role(m: re.Match) -> str:
    """``:class:`~a.b.C``` reads ``C`` (Sphinx's tilde: the last component), any other role its target as code."""
    target = m.group(2).rsplit(".", 1)[-1] if m.group(1) else m.group(2)
    return f"<code>{target}</code>"
