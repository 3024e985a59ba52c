"""Names that become paths, and the folders of a checkout.

Anything derived from user data (method, PET or sequence names, run ids) becomes a file name only through
:func:`safe_name`: letters, digits, ``.``, ``_`` and ``-`` only, no leading dot, bounded length, and a hash suffix
whenever the text had to change, so two different names never collide. :func:`inside` checks that a path built
from such a name stays in its folder.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

from .errors import ConfigError

MAX_NAME = 100
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


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
