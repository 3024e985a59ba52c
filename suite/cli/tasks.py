"""``clsuite tasks``: list, show, prepare and pin task sequences."""
from __future__ import annotations

import argparse
from pathlib import Path

from suite.cli.verbs import command


def _sequence_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("sequence", help="sequence name or path to a YAML file")


@command("tasks list", "every shipped sequence with its track and protocol")
def _tasks_list(args: argparse.Namespace) -> int:
    from suite.config.sequences import SequenceError, load_sequence_file, sequence_files

    print(f"{'name':28s} {'track':20s} {'protocol':14s} {'kind':9s} tasks")
    for name, path in sequence_files().items():
        try:
            seq = load_sequence_file(path)
            kind = "embedded" if seq.embedded else "real"
            print(f"{name:28s} {seq.track:20s} {seq.protocol:14s} {kind:9s} {len(seq.tasks)}")
        except SequenceError as exc:
            print(f"{name:28s} INVALID: {exc}")
    return 0


@command("tasks show", "tasks, classes, sizes and manifest hashes of one sequence (validates a file)", _sequence_arg)
def _tasks_show(args: argparse.Namespace) -> int:
    from suite.config.sequences import load_sequence
    from suite.data import materialize

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


@command("tasks prepare", "materialise a sequence's data and verify its manifest hashes", _sequence_arg)
def _tasks_prepare(args: argparse.Namespace) -> int:
    """Materialise a sequence's data and verify (embedded) or report (real) each manifest hash. Every task and
    control set is checked: one whose data is missing or laid out wrongly gets a line saying what was looked for
    and how to provide it (its ``source.hint``), and the command exits 1 after checking the others."""
    from suite.config.sequences import load_sequence
    from suite.data import DataMissingError, materialize
    from suite.data.shards import ShardError

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


def _pin_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="path to an embedded sequence YAML file")


@command("tasks pin", "write the materialised manifest hashes into an embedded sequence file", _pin_args)
def _tasks_pin(args: argparse.Namespace) -> int:
    """Rewrite the ``manifest_sha256`` values of an embedded sequence file with the hashes materialised here."""
    from suite.data.pin import pin_file

    for name, digest in pin_file(Path(args.file)).items():
        print(f"{name:24s} {digest}")
    return 0
