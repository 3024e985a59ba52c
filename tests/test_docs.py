"""The documentation site (issue 34): ``scripts/docs`` builds it with ``mkdocs build --strict``; the generated
reference lists every CLI verb and option (walked from the real parser here, independently of the generator), every
registered method and PET with their options, every sequence and record field; no internal link points to a missing
page or anchor; Chromium renders it. One build is shared by the module's tests."""
from __future__ import annotations

import argparse
import dataclasses
import html
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from suite.cli import reference

REPO = Path(__file__).resolve().parents[1]
HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}


class Page(HTMLParser):
    """One built page: its element ids, its links (``a href``, ``img src``) and its visible text by section (the
    id of the heading above, ``""`` before the first)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.links: list[str] = []
        self.sections: dict[str, list[str]] = {"": []}
        self.section = ""
        self.skip = 0  # inside <script>/<style>

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
            if tag in HEADINGS:
                self.section = a["id"]
                self.sections.setdefault(self.section, [])
        if tag == "a" and a.get("name"):
            self.ids.add(a["name"])
        if tag == "a" and a.get("href") is not None:
            self.links.append(a["href"])
        if tag == "img" and a.get("src"):
            self.links.append(a["src"])
        if tag in ("script", "style"):
            self.skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self.skip -= 1

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.sections[self.section].append(data)

    def text(self, section: str | None = None) -> str:
        parts = self.sections.get(section, []) if section is not None else sum(self.sections.values(), [])
        return " ".join(" ".join(parts).split())


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("docs") / "site"
    proc = subprocess.run([str(REPO / "scripts" / "docs"), "--site-dir", str(out)], capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert (out / "index.html").is_file()
    return out


@pytest.fixture(scope="module")
def pages(site) -> dict[Path, Page]:
    return {p: parse(p) for p in sorted(site.rglob("*.html"))}


def verbs(p: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    """Every verb and sub-verb of a parser, by its full name (``tasks list``)."""
    out = {}
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out[prefix + name] = sub
                out.update(verbs(sub, f"{prefix}{name} "))
    return out


# ----------------------------------------------------------------------------------------------- the build
def test_strict_build_has_every_page_of_the_nav(site):
    """Every page the nav names is built (a strict build fails on a missing one), the generated ones included,
    and nothing generated or the hook itself is copied as a file."""
    import yaml

    nav = yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"]

    def paths(items):
        for item in items:
            for value in item.values():
                yield from (paths(value) if isinstance(value, list) else [value])

    for md in paths(nav):
        assert (site / md).with_suffix(".html").is_file(), md
    assert not (site / "hooks.py").exists()
    assert not list((REPO / "docs" / "reference").glob("*.md"))  # generated at build time, never committed


def test_api_reference_reads_without_sphinx_roles(site):
    """The Python API page comes from docstrings written with Sphinx roles; the hook renders them as code."""
    html = (site / "reference" / "api.html").read_text()
    assert "<code>run</code>" in html and "<code>RunConfig</code>" in html
    assert not re.search(r":(func|class|meth|mod|data|attr|exc|obj):<code>", html)


def test_no_internal_link_points_to_a_missing_page_or_anchor(site, pages):
    broken = []
    n = 0
    for path, page in pages.items():
        for href in page.links:
            parts = urlsplit(href)
            if parts.scheme or href.startswith("//"):
                continue
            base = site if parts.path.startswith("/") else path.parent  # 404.html links from the server's root
            target = (base / unquote(parts.path).lstrip("/")).resolve() if parts.path else path
            if target.is_dir():
                target = target / "index.html"
            n += 1
            if not target.exists():
                broken.append(f"{path.relative_to(site)}: {href} (no such file)")
            elif parts.fragment and target.suffix == ".html":
                ids = pages[target].ids if target in pages else parse(target).ids
                if unquote(parts.fragment) not in ids:
                    broken.append(f"{path.relative_to(site)}: {href} (no such anchor)")
    assert n > 500  # the reference pages alone link to every verb, method, PET and sequence
    assert broken == [], "\n".join(broken[:40])


# ----------------------------------------------------------------------------------------------- the reference
def test_every_verb_and_option_is_in_the_cli_reference(site, pages):
    from suite.cli.main import build_parser

    page = pages[site / "reference" / "cli.html"]
    found = verbs(build_parser())
    assert {"run", "sweep", "tasks", "tasks list", "leaderboard build", "summarize", "compare"} <= set(found)
    for name, sub in found.items():
        anchor = reference.anchor(name)
        assert anchor in page.ids, name
        section = page.text(anchor)
        assert section.startswith(f"clsuite {name}"), (name, section[:80])
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            shown = action.option_strings or [action.metavar or action.dest]
            for s in shown:
                assert s in section, (name, s)
            if action.default not in (None, False, argparse.SUPPRESS) and action.option_strings:
                assert str(action.default) in section, (name, shown, action.default)
            if action.choices:
                assert all(str(c) in section for c in action.choices), (name, shown)
    run = page.text(reference.anchor("run"))
    assert "--method-options" in run and "repeatable" in run


def test_every_method_and_pet_is_in_the_reference_with_its_options(site, pages):
    from suite.methods import method_class
    from suite.pet.base import PETConfig
    from suite.registry import METHODS, PETS

    methods = pages[site / "reference" / "methods.html"]
    assert len(METHODS.names()) >= 20
    for name in METHODS.names():
        section = methods.text(reference.anchor(name))
        assert section.startswith(name), name
        cls = method_class(name)
        for option, default in cls.option_defaults().items():
            assert option in section, (name, option)
        for flag in ("task_id_train", "task_id_test", "memory", "routing", "extra_forward"):
            assert flag in section, (name, flag)
    # paper and official repository, as the modules state them
    assert "arxiv.org/abs/2405.13383" in " ".join(methods.links)
    assert "https://github.com/GT-RIPL/CODA-Prompt" in methods.links
    rail = methods.text("rail")
    assert "Advancing Cross-domain Discriminability" in rail and "routing" in rail

    pets = pages[site / "reference" / "pets.html"]
    for name in PETS.names():
        section = pets.text(reference.anchor(name))
        assert section.startswith(name), name
        cfg = PETS.load(name).CONFIG
        assert issubclass(cfg, PETConfig)
        for f in dataclasses.fields(cfg):
            assert f.name in section, (name, f.name)
    assert re.search(r"position mlp one of mlp, attn", pets.text("adapter"))
    assert "towers text one of text" in pets.text("coop")  # the config itself refuses the other towers


def test_sequences_and_record_schema_are_complete(site, pages):
    from suite.config.sequences import sequence_files

    seqs = pages[site / "reference" / "sequences.html"]
    for name in sequence_files():
        assert reference.anchor(name) in seqs.ids, name
    assert "mtil-order-1" in seqs.text("mtil-order-1")
    schema = json.loads((REPO / "suite" / "schemas" / "record.schema.json").read_text())
    text = pages[site / "reference" / "record-schema.html"].text()
    for key, sub in schema["properties"].items():
        assert key in text, key
        for inner in sub.get("properties", {}):
            assert f"{key}.{inner}" in text, (key, inner)
    assert "method.protocol.routing" in text and "none, per-sample, per-batch" in text


def test_boards_page_has_every_board_and_entry(site, pages):
    from suite.leaderboard.boards import load_boards

    page = pages[site / "results" / "boards.html"]
    text = page.text()
    for board in load_boards().values():
        assert board["title"] in text
    entries: dict[str, set[str]] = {}
    for p in (REPO / "results").glob("*.json"):
        rec = json.loads(p.read_text())
        entries.setdefault(rec["sequence"]["name"], set()).add(rec["method"]["name"])
    assert entries
    for board in load_boards().values():
        for seq in board["sequences"]:
            if seq in entries:
                section = page.text(reference.anchor(f"{board['name']} {seq}"))
                for method in entries[seq]:
                    assert f"{method}/" in section, (seq, method)
    assert "clsuite leaderboard build" in text
    figures = [link for link in page.links if link.endswith(".svg")]
    assert figures and all((site / "results" / f).resolve().is_file() for f in figures)


# ----------------------------------------------------------------------------------------------- escaping
def test_generated_markdown_escapes_what_it_shows():
    """A hostile help text, option value or record cannot inject markup or split a table cell."""
    import markdown

    hostile = '<script>alert(1)</script> | *x* [a](javascript:1) `y` $z$'
    row = reference.table(["a", "b"], [[reference.text(hostile), reference.code(hostile)]])
    out = markdown.markdown("\n".join(row), extensions=["tables"])
    assert "<script" not in out and "<a " not in out and "<em>" not in out and "&lt;script&gt;" in out
    assert out.count("<td>") == 2
    assert reference.prose("the ``x|y`` of :class:`~suite.api.Records`") == \
        "the <code>x&#124;y</code> of <code>Records</code>"


def test_schema_rows_name_nested_fields_by_dotted_path():
    schema = {"type": "object", "required": ["a"], "properties": {
        "a": {"type": "object", "properties": {"b": {"type": "array", "items": {"type": "integer", "minimum": 0}}}},
        "c": {"oneOf": [{"type": "null"}, {"type": "object", "properties": {"d": {"type": "string"}}}]},
        "e": {"type": "object", "additionalProperties": {"type": "number"}}}}
    rows = reference.schema_rows(schema)
    names = [html.unescape(re.sub(r"<[^>]+>", "", r[0])) for r in rows]
    assert names == ["a", "a.b", "a.b[]", "c", "c.d", "e", "e.*"]
    assert rows[0][2] == "yes" and rows[3][2] == "no" and "≥ 0" in rows[2][3] and "null or object" in rows[3][1]


# ----------------------------------------------------------------------------------------------- browser
def test_site_renders_in_chromium(site, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
                 "--allow-file-access-from-files", "--window-size=1280,900"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(options=opts, service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"))
    try:
        for page, heading in ((site / "index.html", None), (site / "reference" / "cli.html", "Command line"),
                              (site / "reference" / "methods.html", "Methods")):
            driver.get(page.as_uri())
            assert "clsuite" in driver.title
            h1 = driver.find_element(By.TAG_NAME, "h1").text
            assert h1 and (heading is None or h1.startswith(heading))
            nav = driver.find_elements(By.CSS_SELECTOR, "nav.md-nav--primary a.md-nav__link")
            labels = {a.get_attribute("textContent").strip() for a in nav}
            assert {"Command line", "Methods", "PETs", "Boards"} <= labels
            assert driver.find_elements(By.CSS_SELECTOR, "input.md-search__input")
            width = driver.execute_script("return document.documentElement.clientWidth")
            assert driver.execute_script("return document.querySelector('.md-content').getBoundingClientRect().right") \
                <= width
        table = driver.find_element(By.CSS_SELECTOR, ".md-typeset table")
        assert table.find_elements(By.TAG_NAME, "tr")
        # formulas are MathML (docs/hooks.py), laid out by the browser itself: no raw TeX, each with a size
        driver.get((site / "concepts" / "metrics.html").as_uri())
        formulas = driver.find_elements(By.CSS_SELECTOR, ".md-typeset math")
        assert len(formulas) >= 10
        assert all(f.size["width"] > 0 and f.size["height"] > 0 for f in formulas)
        text = driver.find_element(By.CSS_SELECTOR, ".md-content").text
        assert "\\frac" not in text and "\\(" not in text and "\\sum" not in text
    finally:
        driver.quit()
