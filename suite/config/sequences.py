"""Task sequences are data: load a YAML file, validate it, and return a :class:`TaskSequence`.

Every problem is reported as one line ``<file>: <field>: <what is wrong>`` so that a researcher editing a
sequence file sees at once where to look.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from suite.errors import SuiteError, schema_field
from suite.paths import MAX_DEPTH, data_dir, parse_json, read_text, safe_name

ARCHIVE = "archive"  # tasks/archive/<name>.v<N>.yaml: earlier versions of sequence files
TRACKS = ("class-incremental", "domain-incremental", "cross-modal")
# Training settings a sequence file does not state; a sequence's ``training`` overrides them, a run config's
# ``training`` overrides both (``TaskSequence.default_training``).
from suite.config.train import TRAINING_DEFAULTS  # noqa: E402  (the defaults are stated once, with their type)


class SequenceError(SuiteError):
    """A task-sequence file that is malformed; the message is one line naming file and field."""


@dataclass(frozen=True)
class TaskSpec:
    """One task (or control set) of a sequence, as written in its file."""

    name: str
    source: dict[str, Any]
    split: dict[str, Any]
    classes: tuple[str, ...] | dict[str, Any] | None = None
    templates: tuple[str, ...] = ("a photo of a {}.",)
    tests: str = ""  # control sets: what the control measures, in words
    candidates: tuple[tuple[str, ...], ...] = ()  # control sets: the classes each image competes with

    def candidate_group(self, cls: str) -> tuple[str, ...]:
        """The classes an image of ``cls`` is classified among: its group, or every class without groups."""
        for group in self.candidates:
            if cls in group:
                return group
        return tuple(self.classes) if isinstance(self.classes, tuple) else ()

    def chance(self) -> float | None:
        """Accuracy of a guess drawn uniformly from each image's candidates (classes weighted equally)."""
        if not isinstance(self.classes, tuple) or not self.classes:
            return None
        return sum(1.0 / len(self.candidate_group(c)) for c in self.classes) / len(self.classes)

    @property
    def adapter(self) -> str:
        return self.source["adapter"]

    @property
    def pinned_manifest(self) -> str | None:
        return self.split.get("manifest_sha256")

    @property
    def gallery_size(self) -> int | None:
        """Retrieval ranks among consecutive galleries of this many test images (None: the whole test set)."""
        return self.split.get("gallery_size")


@dataclass(frozen=True)
class TaskSequence:
    name: str
    version: int
    track: str
    protocol: str
    tasks: tuple[TaskSpec, ...]
    control_sets: tuple[TaskSpec, ...] = ()
    embedded: bool = False
    description: str = ""
    reference: str = ""
    image_size: int | None = None
    seed: int = 0
    training: dict[str, Any] = field(default_factory=dict)
    synonyms: tuple[tuple[str, ...], ...] = ()  # groups of words one class-name rule treats as the same (hijacking)
    pet_training: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-PET changes to ``training``
    path: str = ""

    def default_training(self, pet: str | None = None, method: str | None = None) -> dict[str, Any]:
        """The effective training settings of a run that overrides nothing (the board's budget): ``training``
        changed by ``pet_training`` of the run's PET kind — or, for a method that trains without a PET (full
        fine-tuning, L2P's prompt pool, GPM on full weights), of the method's name."""
        key = pet if pet else (method or "")
        return {**TRAINING_DEFAULTS, **self.training, **self.pet_training.get(key, {})}

    def task(self, name: str) -> TaskSpec:
        for t in self.tasks + self.control_sets:
            if t.name == name:
                return t
        raise KeyError(name)


def tasks_dir() -> Path:
    """Where sequence files live: ``$CLSUITE_TASKS_DIR``, the repository's ``tasks/``, or the installed copy."""
    return data_dir("tasks", "CLSUITE_TASKS_DIR", "suite.tasks_data")


@lru_cache(maxsize=1)
def _schema() -> dict:
    return parse_json(resources.files("suite").joinpath("schemas/sequence.schema.json").read_text(), "sequence.schema.json")


def _schema_error_line(err: jsonschema.ValidationError) -> str:
    where = schema_field(err)
    if err.validator == "required":
        return f"{where}: required field is missing"
    if err.validator == "enum":
        return f"{where}: {err.instance!r} is not one of {list(err.validator_value)}"
    if err.validator == "uniqueItems":
        seen, dups = set(), []
        for item in err.instance:
            key = json.dumps(item, sort_keys=True)
            (dups.append(item) if key in seen else seen.add(key))
        return f"{where}: duplicate entries {dups}"
    if err.validator == "additionalProperties":
        return f"{where}: {err.message}"
    if err.validator == "oneOf" and err.context:
        best = min(err.context, key=lambda e: len(list(e.absolute_path)) * -1)
        return _schema_error_line(best) if list(best.absolute_path) else f"{where}: {best.message}"
    return f"{where}: {err.message}"


def _load_templates_file(path: Path, owner: Path) -> dict[str, list[str]]:
    if not path.is_file():
        raise SequenceError(f"{owner}: templates_file: no such file {path}")
    data = read_yaml(path, SequenceError, "templates file")
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise SequenceError(f"{path}: (top level): must map template-set names to lists of templates")
    for key, items in data.items():
        for i, tpl in enumerate(items):
            if not isinstance(tpl, str) or "{}" not in tpl:
                raise SequenceError(f"{path}: {key}.{i}: template must be a string containing '{{}}'")
    return data


def _task_from(raw: dict, where: str, templates: dict[str, list[str]], file: Path) -> TaskSpec:
    tpl = raw.get("templates", ["a photo of a {}."])
    if isinstance(tpl, str):
        if tpl not in templates:
            raise SequenceError(f"{file}: {where}.templates: unknown template set {tpl!r} "
                                f"(known: {sorted(templates) or 'none; set templates_file'})")
        tpl = templates[tpl]
    classes = raw.get("classes")
    if isinstance(classes, list):
        classes = tuple(classes)
    candidates = tuple(tuple(g) for g in raw.get("candidates", []))
    if candidates:
        if not where.startswith("control_sets"):
            raise SequenceError(f"{file}: {where}.candidates: only control sets classify among candidate groups")
        for c in classes if isinstance(classes, tuple) else ():
            found = [i for i, g in enumerate(candidates) if c in g]
            if len(found) != 1:
                raise SequenceError(f"{file}: {where}.candidates: class {c!r} must be in exactly one group "
                                    f"(found in {len(found)})")
    return TaskSpec(name=raw["name"], source=dict(raw["source"]), split=dict(raw["split"]),
                    classes=classes, templates=tuple(tpl), tests=raw.get("tests", ""), candidates=candidates)


def parse_sequence(data: Any, file: str | Path = "<memory>") -> TaskSequence:
    """Validate already-parsed YAML ``data`` and build the sequence; ``file`` names it in errors."""
    file = Path(file)
    if not isinstance(data, dict):
        raise SequenceError(f"{file}: (top level): expected a mapping, got {type(data).__name__}")
    errors = sorted(jsonschema.Draft202012Validator(_schema()).iter_errors(data),
                    key=lambda e: (len(list(e.absolute_path)), list(map(str, e.absolute_path))))
    if errors:
        raise SequenceError(f"{file}: {_schema_error_line(errors[0])}")

    templates: dict[str, list[str]] = {}
    if "templates_file" in data:
        templates = _load_templates_file((file.parent / data["templates_file"]).resolve(), file)

    seen: set[str] = set()
    specs: dict[str, list[TaskSpec]] = {"tasks": [], "control_sets": []}
    for group in specs:
        for i, raw in enumerate(data.get(group, [])):
            where = f"{group}.{i}"
            if raw["name"] in seen:
                raise SequenceError(f"{file}: {where}.name: duplicate task name {raw['name']!r}")
            seen.add(raw["name"])
            if data["track"] != "cross-modal" and "classes" not in raw:
                raise SequenceError(f"{file}: {where}.classes: required field is missing for track {data['track']}")
            if data.get("embedded") and "manifest_sha256" not in raw["split"]:
                raise SequenceError(f"{file}: {where}.split.manifest_sha256: embedded tasks must pin their manifest hash")
            if not data.get("embedded") and "rule" not in raw["split"]:
                raise SequenceError(f"{file}: {where}.split.rule: real-data tasks must state their split rule")
            if "gallery_size" in raw["split"] and data["track"] != "cross-modal":
                raise SequenceError(f"{file}: {where}.split.gallery_size: only retrieval tasks (track cross-modal) "
                                    f"rank among galleries; this sequence's track is {data['track']}")
            specs[group].append(_task_from(raw, where, templates, file))
    if data["track"] == "domain-incremental":
        first = specs["tasks"][0].classes
        for i, t in enumerate(specs["tasks"]):
            if isinstance(first, tuple) and t.classes != first:
                raise SequenceError(f"{file}: tasks.{i}.classes: a domain-incremental task must keep the classes of task 0")

    return TaskSequence(
        name=data["name"], version=data["version"], track=data["track"], protocol=data["protocol"],
        tasks=tuple(specs["tasks"]), control_sets=tuple(specs["control_sets"]),
        embedded=bool(data.get("embedded", False)), description=data.get("description", "").strip(),
        reference=data.get("reference", ""), image_size=data.get("image_size"), seed=data.get("seed", 0),
        training=dict(data.get("training", {})), path=str(file),
        synonyms=tuple(tuple(g) for g in data.get("synonyms", [])),
        pet_training={k: dict(v) for k, v in data.get("pet_training", {}).items()},
    )


MAX_YAML_ALIASES = 256  # an alias bomb ("billion laughs") expands to gigabytes; real files use a handful
MAX_YAML_BYTES = 4 * 2**20


class BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses more than :data:`MAX_YAML_ALIASES` aliases and nesting deeper than
    :data:`suite.paths.MAX_DEPTH` levels (PyYAML composes recursively: ``[[[[...`` would end in a RecursionError)."""

    def compose_node(self, parent, index):  # noqa: D401 — PyYAML's hook
        if self.check_event(yaml.AliasEvent):
            self._aliases = getattr(self, "_aliases", 0) + 1
            if self._aliases > MAX_YAML_ALIASES:
                mark = self.peek_event().start_mark
                raise yaml.YAMLError(f"more than {MAX_YAML_ALIASES} aliases (line {mark.line + 1}): refused")
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise yaml.YAMLError(f"nested more than {MAX_DEPTH} levels deep (line {mark.line + 1}): refused")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        """A key written twice in one mapping is refused (YAML says keys are unique; PyYAML keeps the last one
        without a word). Keys brought in by a merge (``<<: *base``) may still be overridden."""
        seen = set()
        for key_node, _ in node.value if isinstance(node, yaml.MappingNode) else ():
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = self.construct_object(key_node)
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice",
                                                            key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


MAX_YAML_NODES = 200_000  # values after expanding aliases


def _expanded_size(obj: Any, memo: dict[int, int]) -> int:
    """How many values ``obj`` holds once every alias is expanded (shared parts counted each time they occur)."""
    if not isinstance(obj, (dict, list)):
        return 1
    if id(obj) not in memo:
        memo[id(obj)] = 0  # a recursive alias counts once
        items = list(obj.keys()) + list(obj.values()) if isinstance(obj, dict) else obj
        memo[id(obj)] = 1 + sum(_expanded_size(v, memo) for v in items)
    return memo[id(obj)]


def parse_yaml(text: str) -> Any:
    """Safe YAML with bounded aliases, nesting and expanded size; the one YAML reader of the suite's input files
    and options. Anything it refuses is a ``yaml.YAMLError``."""
    try:
        data = yaml.load(text, Loader=BoundedLoader)  # noqa: S506 — a SafeLoader subclass
    except ValueError as exc:  # an integer of more than 4,300 digits (Python's own limit on converting text)
        raise yaml.YAMLError(str(exc).split(":")[0]) from None
    size = _expanded_size(data, {})
    if size > MAX_YAML_NODES:
        raise yaml.YAMLError(f"{size} values once aliases are expanded (at most {MAX_YAML_NODES}): refused")
    return data


def read_yaml(path: str | Path, error: type[Exception], what: str) -> Any:
    """Parse a YAML file; a missing, huge or bad file is ``error`` with one line naming the file and line."""
    text = read_text(path, what, error, max_bytes=MAX_YAML_BYTES)
    try:
        return parse_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"line {mark.line + 1}" if mark else "(file)"
        raise error(f"{path}: {at}: not valid YAML ({getattr(exc, 'problem', exc)})") from None


_PARSED: dict[tuple[str, int, int], TaskSequence] = {}


def load_sequence_file(path: str | Path) -> TaskSequence:
    """The sequence in ``path``, parsed once per content: a board build checks every record against its sequence
    (three reads a record, 1,665 for 555 records), so a parse is kept while the file's size and mtime stay."""
    try:
        st = Path(path).stat()
        key = (str(Path(path).resolve()), st.st_mtime_ns, st.st_size)
    except OSError:
        key = None  # read_yaml says what is wrong with the path
    if key is not None and key in _PARSED:
        return _PARSED[key]
    seq = parse_sequence(read_yaml(path, SequenceError, "sequence file"), Path(path))
    if key is not None:
        if len(_PARSED) >= 256:
            _PARSED.clear()
        _PARSED[key] = seq
    return seq


_FILES: dict[tuple, dict[str, Path]] = {}


def sequence_files() -> dict[str, Path]:
    """Every sequence file shipped, keyed by its file stem (which equals the sequence name). The listing is kept
    while no folder of ``tasks/`` changes (a file added, removed or renamed changes its folder's mtime)."""
    root = tasks_dir()
    try:
        key = (str(root), root.stat().st_mtime_ns,
               *sorted((d.name, d.stat().st_mtime_ns) for d in os.scandir(root) if d.is_dir()))
    except OSError:
        key = None
    if key is not None and key in _FILES:
        return dict(_FILES[key])
    files = {p.stem: p for p in sorted(root.glob("*/*.yaml")) if p.parent.name not in ("templates", ARCHIVE)}
    if key is not None:
        _FILES.clear()
        _FILES[key] = files
    return dict(files)


def load_sequence_version(name: str, version: int) -> TaskSequence:
    """Sequence ``name`` as it was at ``version``: the current file, or its copy kept in ``tasks/archive/``.

    Records of an older version stay checkable against the tasks and manifests they were run on."""
    current = load_sequence(name)
    if current.version == version:
        return current
    old = tasks_dir() / ARCHIVE / f"{safe_name(name)}.v{int(version)}.yaml"
    if not old.is_file():
        raise SequenceError(f"{name}: version: v{version} is not kept (this suite has v{current.version})")
    return load_sequence_file(old)


def load_sequence(name_or_path: str | Path) -> TaskSequence:
    """Load a sequence by shipped name or by file path."""
    text = str(name_or_path)
    files = sequence_files()
    if text in files:
        return load_sequence_file(files[text])
    if text.endswith((".yaml", ".yml")) or os.sep in text:
        return load_sequence_file(text)
    raise SequenceError(f"{text}: (name): unknown sequence; known: {', '.join(sorted(files))}")


