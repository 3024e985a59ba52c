"""The suite's own error type. Everything the suite rejects — a malformed file, a bad option, a record that does
not check out, data that is missing — is a :class:`SuiteError` whose message is one line naming the file (or
command) and field; the command line prints that line. Any other exception is a bug and keeps its traceback."""
from __future__ import annotations


class SuiteError(ValueError):
    """Bad input or a refused operation; the message is one line that says where and what."""


class ConfigError(SuiteError):
    """A configuration value (option, flag, setting) that is unknown or invalid."""


__all__ = ["ConfigError", "SuiteError"]
