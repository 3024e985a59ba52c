"""``clsuite``: one thin command line over the suite's modules (each verb calls one public function). The verbs
live in topic modules (tasks, results, board, runs, tools), each declared beside its handler."""
from __future__ import annotations

import errno
import os
import sys

from suite.cli import board, results, runs, tasks, tools  # noqa: F401  (each module registers its verbs)
from suite.cli.verbs import HANDLERS, build_parser
from suite.errors import SuiteError

# what the system answers when a file cannot be written: no space, over quota, too large, read-only, no permission
REFUSED_WRITES = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM})


def main(argv: list[str] | None = None) -> int:
    """Run one verb. Input the suite refuses (:class:`~suite.errors.SuiteError`) is one line on stderr and exit
    status 2; so is a file the system refuses to write (:data:`REFUSED_WRITES`: disk full, quota, permission) where
    a writer other than :func:`suite.paths.write_atomic` meets it. Any other exception is a bug and keeps its
    traceback."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser().parse_args(argv)
        key = f"{args.cmd} {args.sub}" if getattr(args, "sub", None) else args.cmd
        return HANDLERS[key](args)
    except SuiteError as exc:
        if "--debug" in argv:
            raise
        print(f"clsuite: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (``clsuite tasks list | head``): stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:
        if exc.errno not in REFUSED_WRITES or "--debug" in argv:
            raise
        where = exc.filename if exc.filename is not None else "(file)"
        print(f"clsuite: error: {one_line(f'{where}: {exc.strerror or exc}')}", file=sys.stderr)
        return 2


def one_line(message: str, limit: int = 300) -> str:
    """A message as one line of at most ``limit`` characters (a hostile value cannot flood the terminal)."""
    text = " ".join(message.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


if __name__ == "__main__":
    sys.exit(main())
