"""``clsuite``: one thin command line over the suite's modules (each subcommand calls one public function)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from .errors import SuiteError  # noqa: E402
from .paths import read_json  # noqa: E402
from .verbs import HANDLERS, PARSER_HOOKS, Parser, arguments, command  # noqa: E402


# ------------------------------------------------------------------------------------------------ tasks
@command("tasks list")
def _tasks_list(args: argparse.Namespace) -> int:
    from .sequences import SequenceError, load_sequence_file, sequence_files

    print(f"{'name':28s} {'track':20s} {'protocol':14s} {'kind':9s} tasks")
    for name, path in sequence_files().items():
        try:
            seq = load_sequence_file(path)
            kind = "embedded" if seq.embedded else "real"
            print(f"{name:28s} {seq.track:20s} {seq.protocol:14s} {kind:9s} {len(seq.tasks)}")
        except SequenceError as exc:
            print(f"{name:28s} INVALID: {exc}")
    return 0


@command("tasks show")
def _tasks_show(args: argparse.Namespace) -> int:
    from .data import materialize
    from .sequences import load_sequence

    seq = load_sequence(args.sequence)
    print(f"{seq.name} v{seq.version}  track={seq.track}  protocol={seq.protocol}  "
          f"{'embedded' if seq.embedded else 'real'}  file={seq.path}")
    if seq.description:
        print(f"  {seq.description}")
    for group, specs in (("task", seq.tasks), ("control", seq.control_sets)):
        for t in specs:
            classes = (f"{len(t.classes)} classes: {', '.join(t.classes[:6])}{' …' if len(t.classes) > 6 else ''}"
                       if isinstance(t.classes, tuple) else f"classes from {t.classes['from']}" if t.classes else "pairs")
            line = f"  [{group}] {t.name:24s} {t.adapter:15s} {classes}"
            if seq.embedded:
                data = materialize(seq, t)
                line += f"\n      train={len(data.train)} test={len(data.test)} manifest={data.manifest_sha256}"
            else:
                line += (f"\n      split rule={t.split.get('rule')} few_shot={t.split.get('few_shot')} "
                         "(hash computed when materialised)")
            print(line)
    print("valid: yes" + (" (manifests match their pins)" if seq.embedded else ""))
    return 0


@command("tasks prepare")
def _tasks_prepare(args: argparse.Namespace) -> int:
    """Materialise a sequence's data and verify (embedded) or report (real) each manifest hash. Every task and
    control set is checked: one whose data is missing or laid out wrongly gets a line saying what was looked for
    and how to provide it (its ``source.hint``), and the command exits 1 after checking the others."""
    from .data import DataMissingError, materialize
    from .data.shards import ShardError
    from .sequences import load_sequence

    seq = load_sequence(args.sequence)
    failed = 0
    for t in seq.tasks + seq.control_sets:
        try:
            data = materialize(seq, t)
        except (DataMissingError, ShardError) as exc:
            failed += 1
            print(f"{t.name:24s} NOT READY: {exc}")
            continue
        state = "verified" if t.pinned_manifest else "computed"
        caps = data.test.captions
        extra = (f" classes={len(data.classnames)}" if data.classnames else "") + (
            f" captions/test image={sum(map(len, caps)) / len(caps):.1f}" if caps else "")
        print(f"{t.name:24s} train={len(data.train):6d} test={len(data.test):6d}{extra} manifest {state} "
              f"{data.manifest_sha256}")
    if failed:
        print(f"{failed} of {len(seq.tasks) + len(seq.control_sets)} data sets not ready")
    return 1 if failed else 0


@command("tasks pin")
def _tasks_pin(args: argparse.Namespace) -> int:
    """Rewrite the ``manifest_sha256`` values of an embedded sequence file with the hashes materialised here."""
    from .data.pin import pin_file

    for name, digest in pin_file(Path(args.file)).items():
        print(f"{name:24s} {digest}")
    return 0


# ---------------------------------------------------------------------------------------------- metrics
@command("metrics")
def _metrics(args: argparse.Namespace) -> int:
    from .metrics import aggregate, load_matrix

    a = load_matrix(args.file)
    z = json.loads(args.zero_shot) if args.zero_shot else _record_zero_shot(args.file)
    agg = aggregate(a, z)
    if args.json:
        print(json.dumps(agg))
    else:
        for k, v in agg.items():
            print(f"{k:16s} {'n/a' if v is None else f'{v:.4f}'}")
    return 0


def _record_zero_shot(path: str) -> list[float] | None:
    """A results record's own zero-shot row (so FWT and plasticity agree with the record), else ``None``."""
    if not str(path).endswith(".json"):
        return None
    try:
        data = read_json(path, "record")
    except SuiteError:
        return None
    z = data.get("zero_shot", {}).get("tasks") if isinstance(data, dict) else None
    return z if isinstance(z, list) else None


@arguments
def _core_arguments(sub) -> None:
    tasks = sub.add_parser("tasks", help="list, inspect, prepare task sequences")
    tsub = tasks.add_subparsers(dest="sub", required=True)
    tsub.add_parser("list", help="every shipped sequence with its track and protocol")
    s = tsub.add_parser("show", help="tasks, classes, sizes and manifest hashes of one sequence (validates a file)")
    s.add_argument("sequence", help="sequence name or path to a YAML file")
    s = tsub.add_parser("prepare", help="materialise a sequence's data and verify its manifest hashes")
    s.add_argument("sequence", help="sequence name or path to a YAML file")
    s = tsub.add_parser("pin", help="write the materialised manifest hashes into an embedded sequence file")
    s.add_argument("file", help="path to an embedded sequence YAML file")

    m = sub.add_parser("metrics", help="every aggregate (Transfer/Avg/Last/BWT/forgetting/FWT) of an accuracy matrix")
    m.add_argument("file", help="matrix as JSON (list of rows or {'matrix': ...}), CSV, or .npy")
    m.add_argument("--json", action="store_true", help="print one JSON object")
    m.add_argument("--zero-shot", help="JSON list of zero-shot accuracies per task, for FWT and plasticity "
                   "(default: a results record's own zero-shot row)")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="clsuite", description="Continual learning of CLIP models: benchmark suite.")
    p.add_argument("--debug", action="store_true", help="show the traceback of a refused input, not one line")
    sub = p.add_subparsers(dest="cmd", required=True)
    for declare in PARSER_HOOKS:
        declare(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one verb. Input the suite refuses (:class:`~suite.errors.SuiteError`) is one line on stderr and exit
    status 2; any other exception is a bug and keeps its traceback."""
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


def one_line(message: str, limit: int = 300) -> str:
    """A message as one line of at most ``limit`` characters (a hostile value cannot flood the terminal)."""
    text = " ".join(message.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


from . import commands  # noqa: E402,F401  (the verbs declared there register after this file's own)

if __name__ == "__main__":
    sys.exit(main())
