"""``clsuite``, the command line: :func:`main` parses a verb and calls its handler (``commands``)."""
from suite.cli.main import main

__all__ = ["main"]
