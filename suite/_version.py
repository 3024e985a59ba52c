"""The suite's version: ``clsuite --version`` prints it and every record carries it (``environment.suite``).

Run from a checkout, it is the checkout's ``pyproject.toml`` (what this code is, even when the installed
metadata is older: an editable install copies the version only when installed); installed from a wheel, the
package metadata (:func:`importlib.metadata.version`)."""
from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "clip-continual-suite"


def suite_version() -> str:
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    if pyproject.is_file() and (pyproject.parent / "suite" / "_version.py").is_file():
        found = re.search(r'(?m)^version\s*=\s*"([^"]+)"', pyproject.read_text(encoding="utf-8"))
        if found:
            return found.group(1)
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "0+unknown"


__version__ = suite_version()
