"""Reading records: ``metrics`` of a matrix, ``summarize``, ``compare`` and ``plot`` groups of records."""
from __future__ import annotations

import argparse
import json

from suite.api import PLOT_KINDS
from suite.cli.verbs import command
from suite.errors import ConfigError, SuiteError
from suite.paths import parse_json, read_json
from suite.results.metrics import COMPARE_METRICS


def _metrics_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="matrix as JSON (list of rows or {'matrix': ...}), CSV, or .npy")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--zero-shot", help="JSON list of zero-shot accuracies per task, for FWT and plasticity "
                   "(default: a results record's own zero-shot row)")


@command("metrics", "every aggregate (Transfer/Avg/Last/BWT/forgetting/FWT) of an accuracy matrix", _metrics_args)
def _metrics(args: argparse.Namespace) -> int:
    from suite.results.metrics import aggregate, load_matrix

    a = load_matrix(args.file)
    z = parse_json(args.zero_shot, "--zero-shot", ConfigError) if args.zero_shot else _record_zero_shot(args.file)
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


def _summarize_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("records", nargs="+", help="record files or folders")


@command("summarize", "mean ± 95%% CI across seeds of records", _summarize_args)
def _summarize(args: argparse.Namespace) -> int:
    from suite.api import load_records

    print(load_records(args.records).summarize())
    return 0


def _add_record_selection(p: argparse.ArgumentParser) -> None:
    """The options :func:`_records_from` reads."""
    p.add_argument("records", nargs="*", help="record files or folders")
    p.add_argument("--results", help="a folder of records (with --sequence to pick one sequence)")
    p.add_argument("--sequence", help="only records of this sequence")
    p.add_argument("--method", action="append", help="only records of this method (repeatable)")
    p.add_argument("--pet", action="append", help="only records of this PET, or none (repeatable)")


def _selected(args: argparse.Namespace):
    """Records named on the command line (files or folders), or ``--results DIR``, filtered by ``--sequence``,
    ``--method`` and ``--pet`` (:func:`suite.api.load_records`)."""
    from suite.api import load_records

    paths = list(args.records) + ([args.results] if getattr(args, "results", None) else [])
    records = load_records(paths, sequence=getattr(args, "sequence", None), method=getattr(args, "method", None),
                           pet=getattr(args, "pet", None)) if paths else []
    if not records:
        raise ConfigError("no records: name record files or folders, or --results DIR [--sequence NAME]")
    return records


def _records_from(args: argparse.Namespace) -> list[dict]:
    """:func:`_selected` as the record dicts."""
    return _selected(args).dicts()


def _plot_args(p: argparse.ArgumentParser) -> None:
    _add_record_selection(p)
    p.add_argument("--kind", default="curves", choices=PLOT_KINDS)
    p.add_argument("--metric", default="avg", help="curves: avg, first-task, task:<name> or control:<name>")
    p.add_argument("--x", default="plasticity", help="tradeoff: the x metric (plasticity, zero_shot_retention, ...)")
    p.add_argument("--y", default="last", help="tradeoff: the y metric (last, forgetting, ...)")
    p.add_argument("--out", default="figure.svg", help="the figure file: .svg, .png or .pdf")


@command("plot", "one figure comparing records: seeds grouped, mean with a 95%% band per method", _plot_args)
def _plot(args: argparse.Namespace) -> int:
    print(_selected(args).plot(args.kind, args.out, args.metric, args.x, args.y))
    return 0


def _compare_args(p: argparse.ArgumentParser) -> None:
    _add_record_selection(p)
    p.add_argument("--pair", action="append", help="A:B — print A − B per metric, paired by seed (repeatable); "
                   "A and B are group labels such as pegp/lora")
    p.add_argument("--metrics", help=f"comma-separated metrics (default: {','.join(COMPARE_METRICS)})")
    p.add_argument("--format", default="text", choices=["text", "md", "csv", "json"])


@command("compare", "mean ± 95%% CI per method group, and paired-by-seed differences", _compare_args)
def _compare(args: argparse.Namespace) -> int:
    from suite.api import parse_pair

    pairs = [parse_pair(text, "--pair") for text in args.pair or []]
    print(_selected(args).compare(pairs, args.metrics).format(args.format))
    return 0


def _rivals_args(p: argparse.ArgumentParser) -> None:
    _add_record_selection(p)
    p.add_argument("--figures", help="a folder for one forgetting-vs-plasticity figure per sequence (SVG)")


@command("rivals", "PEGP against its rivals: each entry, and PEGP − rival paired by seed and test item (Markdown)",
         _rivals_args)
def _rivals(args: argparse.Namespace) -> int:
    from suite.experiments.rivals import rivals_report

    print(rivals_report(_records_from(args), args.figures))
    return 0


def _coverage_args(p: argparse.ArgumentParser) -> None:
    _add_record_selection(p)
    p.add_argument("--seeds", type=int, default=5, help="seeds per simulated experiment (the boards' min_seeds)")
    p.add_argument("--trials", type=int, default=1000, help="simulated experiments per study")
    p.add_argument("--metric", action="append", help="metrics of the pool study (repeatable; default last, forgetting)")
    p.add_argument("--no-synthetic", action="store_true", help="only the pool of records, not the synthetic model")


@command("coverage", "how often the 95%% intervals contain the truth: seeds drawn from a pool of records of one "
         "configuration, and a synthetic model", _coverage_args)
def _coverage(args: argparse.Namespace) -> int:
    from suite.config.bounds import bounded_int
    from suite.results.analysis import group_records
    from suite.results.coverage import coverage_table, finite_pool_nominal, pool_coverage, synthetic_coverage
    from suite.results.uncertainty import ITEM_METRICS

    metrics = args.metric or ["last", "forgetting"]
    unknown = [m for m in metrics if m not in ITEM_METRICS]
    if unknown:
        raise ConfigError(f"--metric: {', '.join(unknown)}: not a metric with an interval over test items; "
                          f"choose from {', '.join(sorted(ITEM_METRICS))}")
    k = bounded_int(args.seeds, "--seeds", 2, 100)
    trials = bounded_int(args.trials, "--trials", 10, 100_000)
    rows = {}
    if args.records or args.results:
        pools = [g for g in group_records(_records_from(args)) if len(g.records) >= 2 * k]
        if not pools:
            raise ConfigError(f"no configuration has {2 * k} seeds or more: a pool study draws {k} of many")
        for g in pools:
            res = g.resampled()
            if res is None:
                raise ConfigError(f"{g.label}: its records keep no item outcomes; no interval over items")
            for name in metrics:
                n = len(g.records)
                try:
                    cov = pool_coverage(res, name, k, trials)
                except ValueError as exc:  # a metric some record of the pool does not define
                    raise ConfigError(f"{g.label}: {exc}") from None
                rows[f"{g.sequence} {g.label} {name}: {k} of a pool of {n} (an exact interval: "
                     f"{100 * finite_pool_nominal(n, k):.1f} %)"] = cov
    if not args.no_synthetic:
        for sd in (0.1, 0.4, 1.0):
            rows[f"synthetic, seed sd {sd} (logit), 300 items"] = synthetic_coverage(k, seed_sd=sd,
                                                                                    trials=min(trials, 400))
    if not rows:
        raise ConfigError("nothing to measure: name a pool of records, or drop --no-synthetic")
    print(coverage_table(rows))
    return 0
