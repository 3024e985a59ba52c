"""Names that become paths, and the folders of a checkout.

Anything derived from user data (method, PET or sequence names, run ids) becomes a file name only through
:func:`safe_name`: letters, digits, ``.``, ``_`` and ``-`` only, no leading dot, bounded length, and a hash suffix
whenever the text had to change, so two different names never collide. :func:`inside` checks that a path built
from such a name stays in its folder.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from importlib.util import find_spec
from itertools import accumulate
from pathlib import Path
from typing import Any, BinaryIO, Callable

from suite.errors import ConfigError, SuiteError

MAX_NAME = 100
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
# Nesting of any JSON or YAML the suite reads: a record nests 6 levels, a submission 8. Parsers (and the schema
# validators after them) recurse once or more per level, so ``[[[[...`` 100,000 deep would end in a RecursionError.
MAX_DEPTH = 64


def safe_name(text: str, max_len: int = MAX_NAME) -> str:
    """``text`` as a file name: unchanged when already safe and short, else a slug plus an 8-hex hash."""
    text = str(text)
    slug = _UNSAFE.sub("_", text).lstrip(".") or "_"
    if slug == text and len(text) <= max_len:
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{slug[: max_len - 9].rstrip('._-') or '_'}-{digest}"


def inside(folder: str | Path, name: str) -> Path:
    """``folder / name``, refusing anything that would resolve outside ``folder``."""
    base = Path(folder).resolve()
    path = (base / name).resolve()
    if path != base and base not in path.parents:
        raise ConfigError(f"{name!r}: would write outside {base}")
    return path


def repo_root() -> Path | None:
    """The checkout this package runs from (it has ``pyproject.toml`` and ``tasks/``), or ``None`` when installed."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() and (root / "tasks").is_dir() else None


def data_dir(folder: str, env: str, package: str) -> Path:
    """A data folder of the suite (``tasks``, ``leaderboards``): ``$env`` when set, the checkout's own folder, or
    the copy ``pip install .`` put inside the package as ``package`` (a namespace package without ``__init__``)."""
    if os.environ.get(env):
        return Path(os.environ[env])
    root = repo_root()
    if root is not None and (root / folder).is_dir():
        return root / folder
    spec = find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SuiteError(f"{package}: the suite's {folder}/ folder is neither in a checkout nor installed")
    return Path(list(spec.submodule_search_locations)[0])


class WriteError(SuiteError):
    """A file the suite could not write (disk full, quota, permission, read-only): nothing was half-written."""


class _Watched:
    """A file whose failed writes are remembered: a writer such as ``torch.save`` turns the ``OSError`` of a full
    disk into its own ``RuntimeError``, and the cause must still be told apart from a bug."""

    def __init__(self, fh: BinaryIO):
        self._fh, self.error = fh, None

    def write(self, data) -> int:
        try:
            return self._fh.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def __getattr__(self, name: str):
        return getattr(self._fh, name)


def write_atomic(path: str | Path, write: Callable[[BinaryIO], Any]) -> Path:
    """Create or replace ``path`` whole: ``write(file)`` fills a temporary file beside it, which is synced and
    renamed into place, so no reader (another process, a run killed mid-write) ever sees it half-written. The
    suite's one file writer for records, checkpoints and maintainers' files. A write the system refuses (disk
    full, quota, permission) is :class:`WriteError` naming the file; the temporary file is removed and an earlier
    ``path`` is left as it was."""
    path = Path(path)
    tmp: str | None = None
    watched: _Watched | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            watched = _Watched(fh)
            write(watched)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            try:
                Path(tmp).unlink(missing_ok=True)
            except OSError:
                pass
        cause = exc if isinstance(exc, OSError) else (watched.error if watched is not None else None)
        if cause is not None:
            raise WriteError(f"{path}: (file): cannot write ({cause.strerror or cause}); nothing was written"
                             f"{', the earlier file is unchanged' if path.exists() else ''}") from exc
        raise
    return path


def read_text(path: str | Path, what: str = "file", error: type[Exception] = SuiteError,
              max_bytes: int | None = None) -> str:
    """The text of a file the user named; a missing, unreadable, oversized, binary or non-UTF-8 file is ``error``
    with one line naming the file. Every verb reads user files through here (or :func:`read_json`)."""
    p = Path(path)
    try:
        if p.is_dir():
            raise error(f"{p}: (file): a folder, not a {what}")
        raw = p.read_bytes()
    except FileNotFoundError:
        raise error(f"{p}: (file): no such {what}") from None
    except OSError as exc:
        raise error(f"{p}: (file): cannot read this {what} ({exc.strerror or exc})") from None
    if max_bytes is not None and len(raw) > max_bytes:
        raise error(f"{p}: (file): {len(raw)} bytes; a {what} is at most {max_bytes} bytes")
    nul = raw.find(b"\0")
    if nul >= 0:
        raise error(f"{p}: (file): a binary file (NUL byte at {nul}), not a {what}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{p}: (file): not UTF-8 text (byte {exc.start}), not a {what}") from None


_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def json_depth(text: str) -> int:
    """How deeply ``text``'s arrays and objects nest, counted without parsing (brackets inside strings aside)."""
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def parse_json(text: str, source: str | Path = "<json>", error: type[Exception] = SuiteError) -> Any:
    """JSON text parsed, nested at most :data:`MAX_DEPTH` levels: the one JSON parser of the suite (files, records,
    options, checkpoints, package data). Bad or too deeply nested JSON is ``error`` naming ``source``."""
    if json_depth(text) > MAX_DEPTH:
        raise error(f"{source}: (file): JSON nested more than {MAX_DEPTH} levels deep: refused")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{source}: line {exc.lineno}: not valid JSON ({exc.msg})") from None
    except ValueError as exc:  # an integer of more than 4,300 digits (Python's own limit on converting text)
        raise error(f"{source}: (file): not valid JSON ({str(exc).split(':')[0]})") from None
    except RecursionError:  # brackets the count above could not see (malformed strings): still one line
        raise error(f"{source}: (file): JSON nested too deeply: refused") from None


def read_json(path: str | Path, what: str = "JSON file", error: type[Exception] = SuiteError) -> Any:
    """A JSON file the user named, parsed; any problem reading or parsing it is ``error`` naming file and line."""
    return parse_json(read_text(path, what, error), path, error)
