"""The suite's own error type. Everything the suite rejects — a malformed file, a bad option, a record that does
not check out, data that is missing — is a :class:`SuiteError` whose message is one line naming the file (or
command) and field; the command line prints that line. Any other exception is a bug and keeps its traceback."""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    import jsonschema


class SuiteError(ValueError):
    """Bad input or a refused operation; the message is one line that says where and what."""


class ConfigError(SuiteError):
    """A configuration value (option, flag, setting) that is unknown or invalid."""


def field_path(parts: Iterable[object]) -> str:
    """The dotted path of a field for a one-line message (``tasks.0.split``; ``(top level)`` when empty). Keys come
    from the input, so a line break or any other unprintable character in one is shown escaped (``\\n``): the
    message stays one line whatever the file holds."""
    shown = ["".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(p))
             for p in parts]
    return ".".join(shown) or "(top level)"


def schema_field(err: jsonschema.ValidationError) -> str:
    """The :func:`field_path` of the field a JSON-schema error is about; a missing property is named itself, not
    the object that lacks it, so every file's one-line refusal names the field to add."""
    path = list(err.absolute_path)
    if err.validator == "required" and isinstance(err.instance, dict):
        missing = next((k for k in err.validator_value if k not in err.instance), None)
        if missing is not None:
            path.append(missing)
    return field_path(path)


__all__ = ["ConfigError", "SuiteError", "field_path", "schema_field"]
