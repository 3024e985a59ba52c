"""The documentation site's generated pages: the command line from the real parser, the Python API (mkdocstrings
directives), the methods and PETs from the registry, the sequences from ``tasks/``, the record schema from its JSON
Schema, and the boards' tables rebuilt from ``results/``.

:func:`pages` returns ``{path under docs/: Markdown}``; ``docs/hooks.py`` adds them to the MkDocs build, so the
reference cannot drift from the code and nothing generated is committed. Every value that comes from a file, a
docstring or a plug-in is escaped here (:func:`text`, :func:`code`) before it reaches Markdown or HTML.
"""
from __future__ import annotations

import argparse
import dataclasses
import html
import inspect
import json
import re
from pathlib import Path
from typing import Any, Callable, Iterable

from suite.results.analysis import markdown_table

# HTML's and Markdown's own punctuation, written as character references so a value is shown, never interpreted
_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;",
            **{c: f"&#{ord(c)};" for c in "|*_`[]\\#{}!~$"}}
_ROLE = re.compile(r"``(.+?)``|:[a-z]+:`~?([^`]+)`|`([^`]+)`", re.S)
_ARXIV = re.compile(r"arXiv[: ]?(\d{4}\.\d{4,5})")
_GITHUB = re.compile(r"github\.com/[\w.-]+/[\w-]+(?:[\w.-]*[\w-])?")
_CITATION = re.compile(r"\(([^()]*?(?:et al\.|&|\b(?:19|20)\d\d\b|arXiv)[^()]*)\)")


# ----------------------------------------------------------------------------------------------- escaping
def text(value: Any) -> str:
    """``value`` as inline Markdown that shows exactly its characters (HTML escaped; table pipes, emphasis, links,
    math and newlines neutralised), so a help text or a record can never inject markup or break a table."""
    return "".join(_ESCAPES.get(c, c) for c in re.sub(r"\s+", " ", str(value)))


def code(value: Any) -> str:
    """``value`` in a ``<code>`` element, escaped as :func:`text` does (safe inside a table cell)."""
    return f"<code>{text(value)}</code>"


def prose(doc: str) -> str:
    """A docstring fragment as escaped inline Markdown: ````literal````, single-backtick spans and Sphinx roles
    (``:class:`~a.B```) become ``<code>``; everything else is :func:`text`."""
    out, last = [], 0
    for m in _ROLE.finditer(doc):
        out.append(text(doc[last:m.start()]))
        literal = m.group(1) or m.group(3)
        if literal is None:  # a role: its target, the last dotted part when written with ~
            target = m.group(2)
            literal = target.rsplit(".", 1)[-1] if m.group(0).split("`")[1].startswith("~") else target
        out.append(code(literal))
        last = m.end()
    out.append(text(doc[last:]))
    return "".join(out).strip()


def first_paragraph(doc: str | None) -> str:
    """The first paragraph of a docstring (the summary a reference page shows), unwrapped."""
    return " ".join((inspect.cleandoc(doc or "").split("\n\n") or [""])[0].split())


def table(head: list[str], rows: Iterable[list[str]]) -> list[str]:
    """Markdown table lines, an empty cell shown as "–"; cells must already be escaped (:func:`text`,
    :func:`code`), so no raw ``|`` is left for :func:`markdown_table` to escape."""
    return markdown_table(head, [[c or "–" for c in row] for row in rows])


def anchor(name: str) -> str:
    """A stable heading id for a name (``tasks list`` → ``tasks-list``)."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "item"


def show(value: Any) -> str:
    """A default or option value as it is written in YAML/on the command line."""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=str)


# ----------------------------------------------------------------------------------------------- command line
def parser() -> argparse.ArgumentParser:
    """The real ``clsuite`` parser, with every verb module registered (as :func:`suite.cli.main.main` builds it)."""
    from suite.cli.main import build_parser

    return build_parser()


def subcommands(p: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """``(name, help, parser)`` of each sub-command of ``p`` in declaration order (none: an empty list)."""
    out = []
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: (a.help or "").replace("%%", "%") for a in action._choices_actions}
            out += [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
    return out


def walk_verbs(p: argparse.ArgumentParser | None = None, prefix: str = "") -> list[tuple[str, str, argparse.ArgumentParser]]:
    """Every verb and sub-verb (``"tasks list"``), groups before their members, with its help and parser."""
    p = p or parser()
    out = []
    for name, help_, sub in subcommands(p):
        full = f"{prefix}{name}"
        out.append((full, help_, sub))
        out += walk_verbs(sub, full + " ")
    return out


def options(p: argparse.ArgumentParser) -> list[argparse.Action]:
    """The options and positionals of one parser (not ``--help``, not its sub-command selector)."""
    return [a for a in p._actions
            if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)) and a.help != argparse.SUPPRESS]


def _type(action: argparse.Action) -> str:
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return "flag"
    if isinstance(action, argparse._VersionAction):
        return "flag (prints and exits)"
    kind = getattr(action.type, "__name__", None) or ("string" if action.nargs != 0 else "flag")
    doc = first_paragraph(getattr(action.type, "__doc__", "") if action.type not in (int, float, str) else "")
    if doc.startswith("An argparse type: "):
        kind = doc[len("An argparse type: "):].split(" (")[0].rstrip(".")
    kind = {"int": "integer", "float": "number", "str": "string"}.get(kind, kind)
    if action.nargs in ("+", "*"):
        kind += ", one or more" if action.nargs == "+" else ", any number"
    if isinstance(action, argparse._AppendAction):
        kind += ", repeatable"
    return kind


def _default(action: argparse.Action) -> str:
    if action.default in (None, argparse.SUPPRESS) or isinstance(action, (argparse._StoreTrueAction,
                                                                          argparse._VersionAction)):
        return ""
    return code(show(action.default))


def _help(p: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The help text as ``--help`` prints it (argparse expands ``%(default)s`` and ``%%``)."""
    try:
        return (action.help or "") % {**vars(action), "prog": p.prog}
    except (KeyError, TypeError, ValueError):
        return action.help or ""


def _nowrap(name: str) -> str:
    """An option's name in code that a narrow column does not break at its hyphens."""
    return f'<code style="white-space: nowrap">{text(name)}</code>'


def option_rows(p: argparse.ArgumentParser) -> list[list[str]]:
    """One table row per option: name(s), help, type, default, choices, required."""
    rows = []
    for a in options(p):
        names = ", ".join(_nowrap(s) for s in a.option_strings) if a.option_strings else _nowrap(a.metavar or a.dest)
        required = "required" if (a.required or not a.option_strings) and a.nargs not in ("?", "*") else "optional"
        choices = ", ".join(code(show(c)) for c in a.choices) if a.choices else ""
        rows.append([names, prose(_help(p, a)), text(_type(a)), _default(a), choices, required])
    return rows


def cli_page() -> str:
    """``reference/cli.md``: every verb and sub-verb of the real parser, one heading each, every option in a table."""
    p = parser()
    head = ["Option", "What it does", "Type", "Default", "Choices", "Required"]
    lines = ["# Command line", "",
             "Generated from the parser `clsuite` itself builds (`suite/cli/`), so it lists exactly what the installed "
             "command accepts. Every verb also takes `--help`. Run options that take `key=value` lists parse each value "
             "as YAML.", "", "Usage: `clsuite [--debug] [--version] VERB ...`", "",
             "## Global options {#global-options}", ""]
    lines += table(head, option_rows(p)) + [""]
    lines += ["## Verbs {#verbs}", ""]
    lines += table(["Verb", "What it does"], [[f"[{code('clsuite ' + name)}](#{anchor(name)})", prose(h)]
                                              for name, h, _ in walk_verbs(p)]) + [""]
    for name, help_, sub in walk_verbs(p):
        level = "##" if " " not in name else "###"
        lines += [f"{level} clsuite {text(name)} {{#{anchor(name)}}}", "", prose(help_) or "", ""]
        children = subcommands(sub)
        if children:
            lines += ["Sub-verbs: " + ", ".join(f"[{code(c)}](#{anchor(name + ' ' + c)})" for c, _, _ in children), ""]
        rows = option_rows(sub)
        if rows:
            lines += table(head, rows) + [""]
        elif not children:
            lines += ["No options.", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- Python API
API_MODULES = (
    ("The library (`import suite`)", "suite.api",
     "What `clsuite run`, `sweep`, `summarize`, `compare` and `plot` do, as functions that return objects; the "
     "names are re-exported by `suite` itself and imported on first use."),
    ("Errors", "suite.errors", "Everything the suite refuses raises one of these, with a one-line message."),
    ("Writing a method", "suite.methods.base",
     "The plug-in API of continual-learning methods: subclass `Method`, declare `OPTIONS` and `PROTOCOL`."),
    ("Method registry", "suite.methods", "Finding, registering and building methods by name."),
    ("PETs", "suite.pet", "Parameter-efficient tuners: one door (`attach_pet`) and the config every PET extends."),
    ("Plug-in registries", "suite.registry", "Names of PETs, methods and backbones, built-in and installed."),
)


def api_page() -> str:
    """``reference/api.md``: mkdocstrings directives for the public modules (rendered from their docstrings)."""
    lines = ["# Python API", "", "Rendered from the docstrings by mkdocstrings. The how-to guide "
             "[Use the Python API](../how-to/python-api.md) walks through a session.", ""]
    for title, module, why in API_MODULES:
        lines += [f"## {title} {{#{anchor(module)}}}", "", why, "", f"::: {module}",
                  "    options:", "      show_root_heading: false", "      show_root_toc_entry: false",
                  "      heading_level: 3", "      filters: [\"!^_\"]", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- methods and PETs
def references(doc: str) -> dict[str, list[str]]:
    """What a module docstring states about its source: the citation, arXiv identifiers, official repositories."""
    cite = _CITATION.search(first_paragraph(doc))
    parts = [p for p in (cite.group(1).split(";") if cite else []) if "official" not in p and "github" not in p]
    words = _ARXIV.sub("", "; ".join(p.strip() for p in parts)).strip(" ,;")
    return {"citation": [" ".join(words.split())] if words else [],
            "arxiv": list(dict.fromkeys(_ARXIV.findall(doc))),
            "repository": list(dict.fromkeys(m.rstrip(".") for m in _GITHUB.findall(doc)))}


def source_lines(doc: str) -> list[str]:
    """Paper and official-repository lines (links) of a module docstring; a suite baseline has none."""
    refs = references(doc)
    paper = "; ".join([text(c) for c in refs["citation"]] +
                      [f"[arXiv:{a}](https://arxiv.org/abs/{a})" for a in refs["arxiv"]])
    repo = ", ".join(f"[{text(r)}](https://{html.escape(r, quote=True)})" for r in refs["repository"])
    return [f"- **Paper:** {paper or 'none stated (a suite baseline or variant)'}",
            f"- **Official repository:** {repo or 'none stated'}"]


def _option_range(opt: Any) -> str:
    parts = []
    types = getattr(opt, "types", ())
    low, high = getattr(opt, "low", None), getattr(opt, "high", None)
    if int in types or float in types:
        bounds = ([f"{'>' if getattr(opt, 'open_low', False) else '≥'} {low:g}"] if low is not None else []) + \
                 ([f"≤ {high:g}"] if high is not None else [])
        parts.append(("number" if float in types else "integer") + (" " + ", ".join(bounds) if bounds else ""))
    if getattr(opt, "choices", None):
        parts.append("one of " + ", ".join(str(c) for c in opt.choices))
    elif str in types:
        parts.append("string")
    parts += [word for t, word in ((bool, "true/false"), (dict, "mapping")) if t in types]
    return " or ".join(parts)


def method_section(name: str) -> list[str]:
    """One method's section: summary, paper, repository, PETs, tracks, protocol flags, options."""
    from suite.methods import method_class
    from suite.methods.base import PROTOCOL_DEFAULTS
    from suite.registry import METHODS, PluginError

    where = METHODS.sources().get(name, "?")
    lines = [f"## {text(name)} {{#{anchor(name)}}}", ""]
    try:
        cls = method_class(name)
    except PluginError as exc:
        return lines + [f"Cannot be loaded here: {text(exc)}", ""]
    module = inspect.getmodule(cls)
    doc = (module.__doc__ if module is not None else None) or cls.__doc__ or ""
    lines += [prose(first_paragraph(doc)), "", f"- **Class:** {code(where)}"] + source_lines(doc)
    lines += [f"- **PETs:** {', '.join(code(p) for p in cls.pets) if cls.pets else 'any (' + code('--pet') + ')'}"
              + ("" if cls.needs_pet else "; runs without a PET"),
              f"- **Tracks:** {', '.join(code(t) for t in cls.tracks) if cls.tracks else 'every track'}",
              f"- **Trains:** {'yes' if cls.trains else 'no (never builds an optimiser)'}", ""]
    try:
        protocol = cls().protocol  # the defaults' flags (a method whose flags depend on an option computes them)
    except Exception:  # noqa: BLE001 — a plug-in that cannot be built without options: its class-level flags
        protocol = {**PROTOCOL_DEFAULTS, **getattr(cls, "PROTOCOL", {})}
    lines += ["Protocol flags (with default options; written into every record as `method.protocol`):", ""]
    lines += table(["Flag", "Value"], [[code(k), code(show(v))] for k, v in protocol.items()]) + [""]
    declared = getattr(cls, "OPTIONS", {}) or {}
    defaults = cls.option_defaults()
    if defaults:
        lines += ["Options (`--method-options key=value,...`):", ""]
        lines += table(["Option", "Default", "Type and range"],
                       [[code(k), code(show(v)), text(_option_range(declared[k])) if k in declared else ""]
                        for k, v in defaults.items()]) + [""]
    else:
        lines += ["No options.", ""]
    return lines


def methods_page() -> str:
    """``reference/methods.md``: every registered method (built-in, then plug-ins) from its class and module."""
    from suite.registry import METHODS

    names = METHODS.names()
    lines = ["# Methods", "",
             "Every method the registry knows (`suite/registry.py`: built-ins, then installed plug-ins), generated from "
             "its class: the summary, paper and official repository are those its module's docstring states; options are "
             "the declared `OPTIONS` with their defaults and ranges, checked before any model is built; protocol flags "
             "are what the method uses beyond the batch (task identity at train or test, replay memory, routing of test "
             "images, extra forward passes), which the boards' rules read. See "
             "[Add a method](../how-to/add-a-method.md) to write one.", ""]
    lines += table(["Method", "Summary"], [[f"[{code(n)}](#{anchor(n)})", _summary_cell(n)] for n in names]) + [""]
    for name in names:
        lines += method_section(name)
    return "\n".join(lines)


def _summary_cell(name: str) -> str:
    from suite.methods import method_class
    from suite.registry import PluginError

    try:
        cls = method_class(name)
    except PluginError:
        return "(cannot be loaded)"
    module = inspect.getmodule(cls)
    return short(first_paragraph((module.__doc__ if module else "") or cls.__doc__ or ""))


def short(summary: str, limit: int = 150) -> str:
    """A summary for an index table: without its citation, its first sentence, at most ``limit`` characters."""
    summary = " ".join(_CITATION.sub("", summary).split()).replace(" :", ":").replace(" .", ".")
    first = re.split(r"(?<=[.])\s", summary)[0]
    return prose(first if len(first) <= limit else first[:limit - 1].rsplit(" ", 1)[0] + "…")


def pet_option_rows(mod: Any) -> list[list[str]]:
    """One row per field of a PET's config: default, type and the values the config accepts. Ranges come from
    :data:`suite.pet.base.INT_RANGES`; the choices of a string option are the candidates (a tuple constant of its
    module named after it, the towers) that the config itself accepts when built."""
    from suite.config.bounds import MAX_COUNT
    from suite.errors import ConfigError
    from suite.models.backbone import TOWERS
    from suite.pet.base import INT_RANGES

    cfg = mod.CONFIG
    rows = []
    for f in dataclasses.fields(cfg):
        default = f.default if f.default is not dataclasses.MISSING else None
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        values = ""
        if kind == "int":
            lo, hi = INT_RANGES.get(f.name, (0, None))
            values = f"integer from {lo} to {MAX_COUNT if hi is None else hi}"
        elif kind == "float":
            values = "finite number"
        elif kind == "bool":
            values = "true/false"
        elif kind == "str":
            candidates = tuple(TOWERS) + ("both",) if f.name == "towers" else getattr(mod, f.name.upper() + "S", None)
            if isinstance(candidates, tuple) and all(isinstance(c, str) for c in candidates):
                accepted = []
                for c in candidates:
                    try:
                        cfg(**{f.name: c})
                    except ConfigError:
                        continue
                    accepted.append(c)
                values = "one of " + ", ".join(accepted)
            elif f.name == "layers":
                values = "all, first:K, or block indices such as 0-3 or 0,2,5"
            else:
                values = "string"
        rows.append([code(f.name), code(show(default)), text(values)])
    return rows


def pets_page() -> str:
    """``reference/pets.md``: every registered PET form with its config's options (defaults, ranges, choices)."""
    from suite.pet.base import OFFICIAL_SHAPES
    from suite.registry import PETS, PluginError

    names = PETS.names()
    lines = ["# PETs", "",
             "Every parameter-efficient tuner the registry knows (`suite/registry.py`), generated from its module: the "
             "summary and source are its docstring's; options are the fields of its config (`--pet-options "
             "key=value,...`), checked when the config is built, before any model is loaded. Every PET takes "
             "`towers` and `layers`.", ""]
    sections, summary = [], []
    for name in names:
        where = PETS.sources().get(name, "?")
        sections += [f"## {text(name)} {{#{anchor(name)}}}", ""]
        try:
            mod = PETS.load(name)
            if getattr(mod, "KIND", None) != name or not hasattr(mod, "CONFIG"):
                raise PluginError(f"{where} does not define KIND = {name!r} and CONFIG")
        except PluginError as exc:
            sections += [f"Cannot be loaded here: {text(exc)}", ""]
            summary.append([f"[{code(name)}](#{anchor(name)})", "(cannot be loaded)"])
            continue
        doc = mod.__doc__ or ""
        summary.append([f"[{code(name)}](#{anchor(name)})", short(first_paragraph(doc))])
        tracks = mod.CONFIG.tracks
        learns = ([f"- **Tracks:** {', '.join(code(t) for t in tracks)} only ({text(mod.CONFIG.tracks_why)}); a run "
                   "on another track is refused before anything is built"] if tracks is not None else [])
        sections += [prose(first_paragraph(doc)), "", f"- **Module:** {code(where)}", f"- **Config:** "
                     f"{code(mod.CONFIG.__name__)}"] + learns + source_lines(doc) + [""]
        sections += ["Options:", ""] + table(["Option", "Default", "Accepted values"], pet_option_rows(mod)) + [""]
        if name in OFFICIAL_SHAPES:
            shape = ", ".join(f"{k}={show(v)}" for k, v in OFFICIAL_SHAPES[name].items())
            sections += [f"`preset: pegp-official` fills in the shape of the PEGP authors' code: {code(shape)} "
                         "(options given explicitly win).", ""]
    return "\n".join(lines + table(["PET", "Summary"], summary) + [""] + sections)


# ----------------------------------------------------------------------------------------------- sequences
def sequences_page() -> str:
    """``reference/sequences.md``: every shipped sequence file (name, version, track, protocol, tasks, boards) and
    the archived versions kept for older records."""
    from suite.config.sequences import ARCHIVE, SequenceError, load_sequence_file, sequence_files, tasks_dir
    from suite.leaderboard.boards import board_sequences, load_boards

    boards = load_boards()
    member = {}
    for b in boards.values():
        for s in board_sequences(b):
            member.setdefault(s, []).append((b["name"], s in b["control_sequences"]))
    rows, details = [], []
    for name, path in sequence_files().items():
        where = path.relative_to(tasks_dir().parent) if tasks_dir().parent in path.parents else path
        try:
            seq = load_sequence_file(path)
        except SequenceError as exc:
            rows.append([code(name), "", "", "", "", "", "", text(f"invalid: {exc}")])
            continue
        on = ", ".join(f"[{code(b)}](../results/boards.md#{anchor('board ' + b)})" + (" (control)" if control else "")
                       for b, control in member.get(name, []))
        rows.append([f"[{code(name)}](#{anchor(name)})", text(seq.version), code(seq.track), code(seq.protocol),
                     "embedded" if seq.embedded else "real", text(len(seq.tasks)), text(len(seq.control_sets)), on])
        details += [f"## {text(name)} {{#{anchor(name)}}}", "", prose(seq.description) if seq.description else "", "",
                    f"- **File:** {code(where)}", f"- **Version:** {seq.version}; track {code(seq.track)}, protocol "
                    f"{code(seq.protocol)}, {'embedded (runs offline)' if seq.embedded else 'real data'}"]
        if seq.reference:
            details.append(f"- **Reference:** {text(seq.reference)}")
        details += [f"- **Tasks ({len(seq.tasks)}):** " + ", ".join(code(t.name) for t in seq.tasks)]
        if seq.control_sets:
            details.append(f"- **Control sets ({len(seq.control_sets)}):** " +
                           ", ".join(code(t.name) for t in seq.control_sets))
        training = ", ".join(f"{k}={show(v)}" for k, v in seq.training.items())
        if training:
            details.append(f"- **Training budget:** {code(training)}")
        details.append("")
    archived = sorted((tasks_dir() / ARCHIVE).glob("*.yaml"))
    lines = ["# Sequences", "",
             "Every task sequence shipped in `tasks/` (`clsuite tasks list`), read by the same loader the runs use. A "
             "sequence's boards are the leaderboards (`leaderboards/*.yaml`) that rank it, or list it as a control sequence "
             "(never ranked). "
             "See [Add a sequence](../how-to/add-a-sequence.md) to write one.", ""]
    lines += table(["Sequence", "Version", "Track", "Protocol", "Data", "Tasks", "Controls", "Boards"], rows) + [""]
    lines += details
    if archived:
        lines += ["## Archived versions {#archived-versions}", "",
                  "Earlier versions kept in `tasks/archive/` so records run on them stay checkable:", "",
                  ", ".join(code(p.name) for p in archived), ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- record schema
def _schema_type(node: dict) -> str:
    if "const" in node:
        return "constant " + show(node["const"])
    if "enum" in node:
        return "one of " + ", ".join(show(v) for v in node["enum"])
    if "oneOf" in node or "anyOf" in node:
        return " or ".join(_schema_type(n) for n in node.get("oneOf", node.get("anyOf", [])))
    kind = node.get("type", "any")
    return " or ".join(kind) if isinstance(kind, list) else str(kind)


def _constraints(node: dict) -> str:
    words = {"minimum": "≥", "maximum": "≤", "exclusiveMinimum": ">", "exclusiveMaximum": "<",
             "minLength": "length ≥", "maxLength": "length ≤", "minItems": "items ≥", "maxItems": "items ≤",
             "pattern": "matches"}
    return ", ".join(f"{w} {node[k]}" for k, w in words.items() if k in node)


def schema_rows(node: dict, path: str = "", required: bool = True) -> list[list[str]]:
    """One row per field of a JSON Schema, depth first, named by dotted path (``[]`` an array's items, ``*`` any
    key of a mapping); alternatives (``oneOf``) contribute the fields of their object branches."""
    rows = []
    if path:
        rows.append([code(path), text(_schema_type(node)), "yes" if required else "no", text(_constraints(node)),
                     prose(node.get("description", ""))])
    branches = [node] + [n for n in node.get("oneOf", []) + node.get("anyOf", []) if isinstance(n, dict)]
    for branch in branches:
        need = set(branch.get("required", []))
        for key, sub in branch.get("properties", {}).items():
            rows += schema_rows(sub, f"{path}.{key}" if path else key, key in need)
        for pattern, sub in branch.get("patternProperties", {}).items():
            rows += schema_rows(sub, f"{path}.<{pattern}>", False)
        if isinstance(branch.get("additionalProperties"), dict):
            rows += schema_rows(branch["additionalProperties"], f"{path}.*", False)
        if isinstance(branch.get("items"), dict):
            rows += schema_rows(branch["items"], f"{path}[]", True)
    return rows


def record_schema_page() -> str:
    """``reference/record-schema.md``: every field of ``suite/schemas/record.schema.json`` with type and constraints."""
    from importlib import resources

    schema = json.loads(resources.files("suite").joinpath("schemas/record.schema.json").read_text())
    lines = ["# Record schema", "",
             f"Every run writes one JSON record; this is its schema, {code(schema.get('$id', ''))} "
             f"({text(schema.get('title', ''))}), generated from `suite/schemas/record.schema.json`, which "
             "`clsuite validate` and the boards check records against. Paths are dotted; `[]` is an array's items, `*` "
             "any key of a mapping. *Required* is relative to the enclosing object.", ""]
    return "\n".join(lines + table(["Field", "Type", "Required", "Constraints", "Description"], schema_rows(schema))
                     + [""])


# ----------------------------------------------------------------------------------------------- boards
def boards_page(results: Path | None = None, figures: Path | None = None, figures_url: str = "../figures") -> str:
    """``results/boards.md``: each committed board's tables rebuilt from ``results`` with the leaderboard's own
    triage, ranking and formatting (the numbers the interactive board shows), and the figures in ``figures``
    named after a sequence (``rivals-<sequence>.svg``)."""
    from suite.leaderboard.boards import board_sequences, load_boards, load_verifications, triage
    from suite.leaderboard.build import default_results_dir, load_named_records, rank_entries
    from suite.leaderboard.reported import METRICS as REPORTED
    from suite.leaderboard.reported import load_reported, reported_rows
    from suite.results.analysis import format_stat, relabel
    from suite.results.metrics import METRICS

    results = results or default_results_dir()
    boards = load_boards()
    reported = load_reported(boards=boards)
    named, unreadable = load_named_records(results)
    tri = triage(named, boards, load_verifications())
    lines = ["# Boards", "",
             f"The committed boards' tables, rebuilt at every documentation build from the {len(named)} records in "
             "`results/` by the leaderboard's own code (triage, ranking, intervals). Cells are the mean ± the 95% "
             "interval over seeds, then `[low, high]` over seeds and test items; entries whose interval overlaps the "
             "leader's share its rank (marked *tied*). Entries with fewer seeds than the board asks for are listed "
             "unranked.", "",
             f"Records refused: {len(unreadable) + len(tri.rejected)}; off the board's budget: {len(tri.off_budget)}. "
             "The full interactive board, with every column, entry pages and the refusals' reasons, is built by "
             "`clsuite leaderboard build` (into `leaderboards/site/`).", ""]
    for board in boards.values():
        cols = board["summary_columns"]
        rules = ", ".join(f"{k}: {show(v)}" for k, v in board.get("protocol", {}).items())
        lines += [f"## {text(board['title'])} {{#{anchor('board ' + board['name'])}}}", "",
                  f"- **Board:** {code(board['name'])}, track {code(board['track'])}",
                  f"- **Ranked by:** {text(METRICS[board['rank_by']].label)}; at least {board['min_seeds']} seeds",
                  f"- **Protocol rules:** {code(rules) if rules else 'none'}", ""]
        head = ["Rank", "Entry", "Seeds", "Tier"] + [text(METRICS[c].label) for c in cols]
        for seq in board_sequences(board):
            control = board["control_sequences"].get(seq)
            mine = [g for g in tri.groups if g.sequence == seq]
            pub = reported.get(seq)
            if not mine and pub is None and not any(s.group.sequence == seq for s in getattr(tri, "stale", [])):
                continue
            lines += [f"### {text(seq)}{' (control, not ranked)' if control else ''} "
                      f"{{#{anchor(board['name'] + ' ' + seq)}}}", ""]
            if control:
                lines += [f"A control sequence: its entries are listed in the order ranking would give, never ranked. "
                          f"Why: {text(control)}", ""]
            if mine:
                relabel(mine)
                ranked = [g for g in mine if len(g.seeds) >= board["min_seeds"]]
                unranked = [g for g in mine if len(g.seeds) < board["min_seeds"]]
                rows = []
                for item in rank_entries(ranked, board["rank_by"]):
                    if control:
                        item = {**item, "rank": "–", "tied": False}
                    g = item["group"]
                    rows.append([text(item["rank"] + (" (tied)" if item["tied"] else "")), text(g.label),
                                 text(len(g.seeds)), text(tri.tiers.get(g.key, "self-reported"))]
                                + [text(format_stat(c, g.stat(c))) for c in cols])
                rows += [[text("–"), text(g.label), text(len(g.seeds)), text(tri.tiers.get(g.key, "self-reported"))]
                         + [text(format_stat(c, g.stat(c))) for c in cols] for g in unranked]
                lines += table(head, rows) + [""]
            old = [s for s in getattr(tri, "stale", []) if s.group.sequence == seq]  # an older version's seeds
            if old:
                relabel([s.group for s in old])
                lines += ["Stale entries (an older sequence or suite version), never ranked:", ""]
                lines += table(["Entry", "Seeds", "Why"] + [text(METRICS[c].label) for c in cols],
                               [[text(s.group.label), text(len(s.group.seeds)), text(s.reason)]
                                + [text(format_stat(c, s.group.stat(c))) for c in cols] for s in old]) + [""]
            if figures is not None and (figures / f"rivals-{seq}.svg").is_file():
                lines += [f"![Forgetting against plasticity on {text(seq)}: PEGP and its rivals]"
                          f"({figures_url}/rivals-{seq}.svg)", ""]
            if pub is not None:
                lines += [f"Published numbers ({text(pub['backbone'])}), as their papers report them; never ranked "
                          "with the runs above:", ""]
                lines += table(["Method", "Variant", "Source"] + [text(METRICS[m].label) for m in REPORTED],
                               [[text(r["method"]), text(r["variant"]),
                                 f"{text(r['title'])}, {text(r['venue'])}" +
                                 (f" ([arXiv:{text(r['arxiv'])}](https://arxiv.org/abs/{text(r['arxiv'])}))"
                                  if r["arxiv"] else "")] + [text(r["cells"][m]) for m in REPORTED]
                                for r in reported_rows(pub)]) + [""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- all pages
GENERATED: dict[str, Callable[[], str]] = {
    "reference/cli.md": cli_page, "reference/api.md": api_page, "reference/methods.md": methods_page,
    "reference/pets.md": pets_page, "reference/sequences.md": sequences_page,
    "reference/record-schema.md": record_schema_page,
}


def pages(docs_dir: Path | None = None) -> dict[str, str]:
    """Every generated page, ``{path relative to docs/: Markdown}``; ``docs_dir`` is where the boards page finds
    its figures (``docs/figures``)."""
    out = {path: make() for path, make in GENERATED.items()}
    out["results/boards.md"] = boards_page(figures=(docs_dir / "figures") if docs_dir is not None else None)
    return out


__all__ = ["API_MODULES", "GENERATED", "api_page", "boards_page", "cli_page", "code", "methods_page", "option_rows",
           "pages", "pets_page", "prose", "record_schema_page", "references", "schema_rows", "sequences_page", "table",
           "text", "walk_verbs"]
