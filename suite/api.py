"""The suite as a Python library: what ``clsuite run``, ``sweep``, ``summarize``, ``compare`` and ``plot`` do, as
functions that return objects (``import suite``; the names below are re-exported there).

>>> import suite
>>> r = suite.run(sequence="world-class-incremental", pet="lora", method="seq", iterations=2, max_eval=16)
>>> r.aggregates["last"], r.matrix[-1]
>>> recs = suite.load_records("results", sequence="mini-mtil")
>>> print(recs.summarize()); print(recs.compare(pairs=[("pegp/lora", "seq/lora")]))

* :func:`run` — one run (the options of ``clsuite run``, as keywords) → a :class:`Record`.
* :func:`plan` — the runs of a grid (methods × PETs × seeds) or of a plan file → a list of
  :class:`~suite.config.run.RunConfig`; :func:`sweep` runs them (here, ``jobs`` at once) → :class:`Records`.
* :func:`load_records` — records of files or folders, filtered → :class:`Records`, which can
  :meth:`~Records.summarize`, :meth:`~Records.compare` and :meth:`~Records.plot` (the numbers ``clsuite`` prints:
  the command line calls these same functions).
* :func:`register_method` — a :class:`~suite.methods.Method` written in a notebook, runnable by name.

Everything the suite refuses raises a :class:`~suite.errors.SuiteError` (a :class:`~suite.errors.ConfigError`
for options) whose message is one line. This module imports the heavy parts (torch, models) only when a function
needs them.
"""
from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Union

from suite.config.run import RunConfig, tracker_list
from suite.errors import ConfigError, SuiteError

if TYPE_CHECKING:  # imported for the annotations only: each pulls in torch
    from suite.engine.loggers import Logger
    from suite.methods import Method

PathLike = Union[str, Path]
# ``clsuite plot --kind``
PLOT_KINDS = ("curves", "matrix", "retention", "hallucination", "tradeoff")
# The run options that go into the training section (overrides of the sequence's budget)
TRAINING_OPTIONS = ("iterations", "epochs", "batch_size", "lr")


# ----------------------------------------------------------------------------------------------- options
def _check(name: str, value: Any, types: tuple[type, ...], what: str, source: str) -> None:
    if value is not None and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
        raise ConfigError(f"{source}: {name}: {value!r} must be {what}")


def run_config(sequence: str | None = None, *, config: PathLike | Mapping[str, Any] | None = None,
               model: str | None = None, pet: str | None = None, pet_options: Mapping[str, Any] | None = None,
               method: str | None = None, method_options: Mapping[str, Any] | None = None, seed: int | None = None,
               device: str | None = None, amp: bool | None = None, iterations: int | None = None,
               epochs: int | None = None, batch_size: int | None = None, lr: float | None = None,
               training: Mapping[str, Any] | None = None, max_eval: int | None = None, workers: int | None = None,
               out: PathLike | None = None, run_dir: PathLike | None = None, resume: bool | None = None,
               restart: bool | None = None, progress: bool | None = None, log: str | Sequence[str] | None = None,
               log_dir: PathLike | None = None, command: str | None = None, source: str | None = None) -> RunConfig:
    """The :class:`~suite.config.run.RunConfig` of these options, checked (a bad value raises
    :class:`~suite.errors.ConfigError` naming the option). ``clsuite run`` builds its config here.

    ``config`` is a run-config YAML file (or a mapping) with the same fields; options given here override it, and
    an option left ``None`` keeps the file's value or the default. ``pet="none"`` runs a method without a PET;
    ``pet_options``/``method_options`` are merged over the file's; ``iterations``, ``epochs``, ``batch_size``,
    ``lr`` (and any other key of ``training``) override the sequence's budget. ``log`` names trackers
    (``tensorboard``, ``wandb``, ``csv``); ``log_dir`` is where they write (default: the run folder). ``source``
    is how errors name the options (default: the config file, else ``suite.run``)."""
    from suite.config.sequences import read_yaml

    src = source or (str(config) if isinstance(config, (str, Path)) else "suite.run")
    data: dict[str, Any] = {}
    if isinstance(config, (str, Path)):
        data = read_yaml(config, ConfigError, "config file") or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{config}: (top level): a run config is a mapping")
    elif isinstance(config, Mapping):
        data = copy.deepcopy(dict(config))
    elif config is not None:
        raise ConfigError(f"{src}: config: {config!r} must be a YAML file's path or a mapping")
    for name, value in (("sequence", sequence), ("model", model), ("pet", pet), ("method", method), ("device", device),
                        ("command", command)):
        _check(name, value, (str,), "a string", src)
    for name, value in (("out", out), ("run_dir", run_dir), ("log_dir", log_dir)):
        _check(name, value, (str, Path), "a folder path", src)
    for name, value in (("amp", amp), ("resume", resume), ("restart", restart), ("progress", progress)):
        _check(name, value, (bool,), "True or False", src)
    for name, value in (("pet_options", pet_options), ("method_options", method_options), ("training", training)):
        _check(name, value, (Mapping,), "a mapping of option names to values", src)
    given = {"sequence": sequence, "model": model, "method": method, "seed": seed, "device": device, "amp": amp,
             "max_eval": max_eval, "out": out, "run_dir": run_dir, "resume": resume, "restart": restart,
             "workers": workers, "progress": progress, "command": command,
             "log_dir": None if log_dir is None else str(log_dir)}
    for key, value in given.items():
        if value is not None:
            data[key] = str(value) if key in ("out", "run_dir") else value
    if pet is not None:
        data["pet"] = None if pet == "none" else pet
    for key, value in (("pet_options", pet_options), ("method_options", method_options)):
        if value is not None:
            base = data.get(key) or {}
            if not isinstance(base, dict):
                raise ConfigError(f"{src}: {key}: expected a mapping")
            data[key] = {**base, **dict(value)}
    if log is not None:
        data["log"] = tracker_list(log, src)
    train = data.get("training") or {}
    if not isinstance(train, dict):
        raise ConfigError(f"{src}: training: expected a mapping")
    train = {**train, **dict(training or {})}
    for key, value in zip(TRAINING_OPTIONS, (iterations, epochs, batch_size, lr)):
        if value is not None:
            train[key] = value
    data["training"] = train
    if "sequence" not in data:
        raise ConfigError(f"{src}: sequence: required (a shipped sequence name or a sequence file)")
    return RunConfig.from_dict(data, src)


# ----------------------------------------------------------------------------------------------- records
class Record(Mapping[str, Any]):
    """One run's results record (``schemas/record.schema.json``), read-only; ``record["key"]`` reads the JSON.

    :attr:`matrix` (``matrix[t][d]``: accuracy on task ``d`` after learning task ``t``, fractions),
    :attr:`aggregates` (``transfer``, ``avg``, ``last``, ``bwt``, ``forgetting``, ``fwt``, ``avg_incremental``,
    ``plasticity``), :attr:`steps` (every per-task measure: accuracy row, controls, retention, hallucination, ECE,
    timings), :attr:`efficiency`; :meth:`to_dict`, :meth:`save`, :meth:`table` (what ``clsuite run`` prints)."""

    def __init__(self, data: Mapping[str, Any], path: PathLike | None = None):
        self._data = dict(data)
        #: the record file (``None`` for a record not read from or written to disk)
        self.path: Path | None = Path(path) if path is not None else None

    @classmethod
    def load(cls, path: PathLike) -> "Record":
        """The record in ``path``, validated (:class:`~suite.results.records.RecordError` if it is not one)."""
        from suite.results.records import load_record

        return cls(load_record(path), path)

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        last = self.aggregates.get("last")
        return (f"Record({self.run_id!r}, status={self.status!r}, "
                f"last={'n/a' if last is None else f'{last:.4f}'})")

    def __str__(self) -> str:
        return self.table()

    @property
    def run_id(self) -> str:
        """The run's id: it names the record file and the run folder."""
        return self._data["run_id"]

    @property
    def status(self) -> str:
        """``complete``, or ``partial``/``failed`` for a run that did not finish."""
        return self._data["status"]

    @property
    def sequence(self) -> str:
        """The sequence's name."""
        return self._data["sequence"]["name"]

    @property
    def tasks(self) -> list[str]:
        """The sequence's task names (the columns of :attr:`matrix`)."""
        return list(self._data["sequence"]["tasks"])

    @property
    def method(self) -> str:
        """The method's name."""
        return self._data["method"]["name"]

    @property
    def pet(self) -> str | None:
        """The PET form (``None`` for a method without one)."""
        return self._data["pet"]["kind"]

    @property
    def seed(self) -> int:
        """The run's seed."""
        return self._data["seed"]

    @property
    def matrix(self) -> list[list[float]]:
        """The accuracy matrix: ``matrix[t][d]`` is the accuracy on task ``d`` after learning task ``t``."""
        return copy.deepcopy(self._data["matrix"])

    @property
    def zero_shot(self) -> list[float]:
        """The pretrained model's accuracy on each task (the reference of FWT, plasticity and retention)."""
        return list(self._data["zero_shot"]["tasks"])

    @property
    def aggregates(self) -> dict[str, float | None]:
        """Every aggregate of the matrix (:data:`suite.results.metrics.METRIC_NAMES`: ``last``, ``avg``, ...)."""
        return dict(self._data["aggregates"])

    @property
    def summary(self) -> dict[str, float | None]:
        """The final step's measures beyond accuracy (zero-shot retention, ECE, hallucination FPR, ...)."""
        return dict(self._data.get("summary") or {})

    @property
    def steps(self) -> list[dict[str, Any]]:
        """One entry per learned task: accuracy row, control accuracies, retention, hallucination, ECE, timings."""
        return copy.deepcopy(self._data["steps"])

    @property
    def efficiency(self) -> dict[str, Any]:
        """Trainable parameters, wall time, peak memory and the method's own costs."""
        return dict(self._data["efficiency"])

    def value(self, metric: str) -> float | None:
        """Any registered metric (:data:`suite.results.metrics.METRICS`), as ``compare`` and the boards read it."""
        from suite.results.records import metric_value

        return metric_value(self._data, metric)

    def to_dict(self) -> dict[str, Any]:
        """The record as plain JSON-ready data (a copy)."""
        return copy.deepcopy(self._data)

    def save(self, path: PathLike) -> Path:
        """Write the record (validated, atomically) to ``path``; returns the path."""
        from suite.results.records import RecordError, validate_record, write_json_atomic

        validate_record(self._data, str(path))
        try:
            return write_json_atomic(path, self._data)
        except OSError as exc:
            raise RecordError(f"{path}: cannot write the record: {exc.strerror or exc}") from None

    def table(self) -> str:
        """The matrix and headline metrics on one screen (what ``clsuite run`` prints)."""
        from suite.results.records import summary_table

        return summary_table(self._data)


class Summary(list):
    """:meth:`Records.summarize`'s rows (one per configuration: ``sequence``, ``method``, ``pet``, ``seeds``, and
    per headline metric ``(mean, 95 % half-width over seeds, interval over seeds and test items or None)``);
    ``str()`` is the table ``clsuite summarize`` prints."""

    def __str__(self) -> str:
        from suite.experiments.sweep import format_summary

        return format_summary(list(self))


class Comparison:
    """:meth:`Records.compare`'s result: per group the mean ± 95 % CI of each metric (:attr:`rows`), the paired
    differences asked for (:attr:`differences`) and McNemar's tests (:attr:`item_tests`). ``str()`` and
    :meth:`format` give what ``clsuite compare`` prints."""

    def __init__(self, result: dict[str, Any]):
        self.result = result

    @property
    def metrics(self) -> list[str]:
        """The metrics compared."""
        return list(self.result["metrics"])

    @property
    def rows(self) -> list[dict[str, Any]]:
        """One row per group: ``group`` label, ``sequence``, ``method``, ``pet``, ``seeds`` and a
        :class:`~suite.results.analysis.Stat` (or ``None``) per metric."""
        return list(self.result["rows"])

    @property
    def differences(self) -> list[Any]:
        """The :class:`~suite.results.analysis.Difference` of each pair and metric (``a − b``, paired by seed)."""
        return list(self.result["differences"])

    @property
    def item_tests(self) -> list[dict[str, Any]]:
        """McNemar's exact test per pair and seed on the final step's test items."""
        return list(self.result.get("item_tests", []))

    def format(self, fmt: str = "text") -> str:
        """``text`` (a terminal table), ``md``, ``csv`` or ``json``: ``clsuite compare --format``."""
        from suite.results.analysis import format_compare

        if fmt not in ("text", "md", "csv", "json"):
            raise ConfigError(f"compare format {fmt!r}: give text, md, csv or json")
        return format_compare(self.result, fmt)

    def to_dict(self) -> dict[str, Any]:
        """The comparison as plain data (the ``json`` format, parsed)."""
        return json.loads(self.format("json"))

    def __str__(self) -> str:
        return self.format("text")


def parse_pair(pair: str | Sequence[str], flag: str = "pair") -> tuple[str, str]:
    """``"pegp/lora:seq/lora"`` or ``("pegp/lora", "seq/lora")`` → ``(a, b)``; anything else is refused."""
    if isinstance(pair, str):
        a, sep, b = pair.partition(":")
        if sep and a and b:
            return a, b
    elif isinstance(pair, Sequence) and len(pair) == 2 and all(isinstance(x, str) and x for x in pair):
        return pair[0], pair[1]
    raise ConfigError(f"{flag} {pair!r}: give A:B, e.g. {flag} pegp/lora:seq/lora")


class Records(Sequence[Record]):
    """Records of several runs (any sequences, methods, seeds): filter them, and summarize, compare and plot
    them exactly as ``clsuite summarize``, ``compare`` and ``plot`` do (seeds of one configuration grouped)."""

    def __init__(self, records: Iterable[Record | Mapping[str, Any] | Path] = ()):
        # a Path is a record file read (and validated) when first used: a sweep's records are listed, not read
        self._items: list[Record | Path] = [r if isinstance(r, (Record, Path)) else Record(r) for r in records]

    def _get(self, i: int) -> Record:
        item = self._items[i]
        if isinstance(item, Path):
            item = self._items[i] = Record.load(item)
        return item

    @property
    def _records(self) -> list[Record]:
        return [self._get(i) for i in range(len(self._items))]

    def __getitem__(self, i: int | slice) -> "Record | Records":  # type: ignore[override]
        if isinstance(i, slice):
            return Records(self._items[i])
        return self._get(range(len(self._items))[i])

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Records({len(self)} records)"

    @property
    def paths(self) -> list[Path | None]:
        """Each record's file."""
        return [r if isinstance(r, Path) else r.path for r in self._items]

    def dicts(self) -> list[dict[str, Any]]:
        """The records as the dicts the suite's functions take (not copied: do not change them)."""
        return [r._data for r in self._records]

    def filter(self, sequence: str | None = None, method: str | Iterable[str] | None = None,
               pet: str | Iterable[str] | None = None) -> "Records":
        """Only the records of this sequence, of these methods, of these PETs (``"none"`` for no PET)."""
        methods = [method] if isinstance(method, str) else method
        pets = [pet] if isinstance(pet, str) else pet
        keep = [r for r in self._records if (sequence is None or r.sequence == sequence)
                and (methods is None or r.method in methods) and (pets is None or (r.pet or "none") in pets)]
        return Records(keep)

    def summarize(self) -> Summary:
        """Per configuration, each headline metric's mean and 95 % intervals over seeds (and test items)."""
        from suite.experiments.sweep import summarize

        return Summary(summarize(self.dicts()))

    def compare(self, pairs: Iterable[str | Sequence[str]] = (), metrics: str | Sequence[str] | None = None) -> Comparison:
        """Mean ± 95 % CI per group, and for each pair ``(a, b)`` (group labels such as ``"pegp/lora"``) the
        difference a − b paired by seed (``clsuite compare --pair a:b``)."""
        from suite.results.analysis import compare
        from suite.results.metrics import COMPARE_METRICS

        names = tuple(metrics.split(",")) if isinstance(metrics, str) and metrics else tuple(metrics or COMPARE_METRICS)
        return Comparison(compare(self.dicts(), names, [parse_pair(p) for p in pairs]))

    def plot(self, kind: str = "curves", out: PathLike = "figure.svg", metric: str = "avg", x: str = "plasticity",
             y: str = "last") -> Path:
        """One figure of these records (``clsuite plot``): ``kind`` is ``curves`` (``metric`` after every task),
        ``matrix``, ``retention``, ``hallucination`` or ``tradeoff`` (``y`` against ``x``); the format follows
        the suffix of ``out`` (``.svg``, ``.png``, ``.pdf``). Returns the file."""
        from suite.leaderboard.plots import plot_records

        if kind not in PLOT_KINDS:
            raise ConfigError(f"plot kind {kind!r}: give one of {', '.join(PLOT_KINDS)}")
        return plot_records(self.dicts(), kind, out, metric, x, y)


def load_records(*paths: PathLike | Iterable[PathLike], sequence: str | None = None,
                 method: str | Iterable[str] | None = None, pet: str | Iterable[str] | None = None) -> Records:
    """The records in ``paths`` (record files, or folders of them), each validated, filtered by ``sequence``,
    ``method`` and ``pet`` (one name or several; ``"none"`` for no PET). A path that does not exist, or a file
    that is not a valid record, is refused (:class:`~suite.results.records.RecordError`)."""
    from suite.results.records import read_records

    flat: list[PathLike] = []
    for p in paths:
        flat.extend([p] if isinstance(p, (str, Path)) else list(p))
    if not flat:
        raise ConfigError("load_records: name record files or folders")
    for p in flat:
        _check("path", p, (str, Path), "a file or folder path", "load_records")
    good, bad = read_records(flat)
    if bad:
        from suite.results.records import RecordError

        raise RecordError(bad[0][1])
    return Records(Record(rec, path) for path, rec in good).filter(sequence, method, pet)


# -------------------------------------------------------------------------------------------------- runs
def run(sequence: str | None = None, *, pet: str | None = None, method: "str | Method | None" = None,
        seed: int | None = None, iterations: int | None = None, max_eval: int | None = None,
        model: str | None = None, pet_options: Mapping[str, Any] | None = None,
        method_options: Mapping[str, Any] | None = None, config: PathLike | Mapping[str, Any] | None = None,
        device: str | None = None, amp: bool | None = None, epochs: int | None = None, batch_size: int | None = None,
        lr: float | None = None, training: Mapping[str, Any] | None = None, workers: int | None = None,
        out: PathLike | None = None, run_dir: PathLike | None = None, resume: bool | None = None,
        restart: bool | None = None, progress: bool | None = None,
        loggers: "Sequence[str | Logger] | None" = None, log_dir: PathLike | None = None,
        command: str | None = None, source: str | None = None) -> Record:
    """Run one (sequence, model, PET, method, seed), write its record to ``out`` (default ``results/``) and
    return it: ``clsuite run`` with these options (see :func:`run_config` for each).

    ``method`` is a method's name (a built-in, an installed plug-in, or one :func:`register_method` made known) or
    a :class:`~suite.methods.Method` object. ``loggers`` are experiment trackers: ``"tensorboard"``, ``"wandb"``,
    ``"csv"`` or :class:`~suite.engine.loggers.Logger` objects; they never change the record. A refused option
    raises :class:`~suite.errors.ConfigError` before anything is built; a task that fails raises
    :class:`~suite.engine.loop.TrainingFailed` (finished tasks are kept in the run folder's partial record)."""
    from suite.engine.loggers import Logger
    from suite.engine.runner import Runner, TrainingFailed
    from suite.methods import Method

    method_obj = None
    if isinstance(method, Method):
        if method_options is not None:
            raise ConfigError("run: method_options: give the options to the method object, not both")
        method_obj, method_options, method = method, dict(method.options), method.name
    names, objects = [], []
    for item in loggers or []:
        if isinstance(item, Logger):
            objects.append(item)
        elif isinstance(item, str):
            names.append(item)
        else:
            raise ConfigError(f"run: loggers: {item!r} is neither a tracker name nor a suite.engine.loggers.Logger")
    if command is None:
        given = {"sequence": sequence, "pet": pet, "method": method, "seed": seed, "iterations": iterations,
                 "max_eval": max_eval, "model": model}
        command = "suite.run(" + ", ".join(f"{k}={v!r}" for k, v in given.items() if v is not None) + ")"
    cfg = run_config(sequence, config=config, model=model, pet=pet, pet_options=pet_options, method=method,
                     method_options=method_options, seed=seed, device=device, amp=amp, iterations=iterations,
                     epochs=epochs, batch_size=batch_size, lr=lr, training=training, max_eval=max_eval,
                     workers=workers, out=out, run_dir=run_dir, resume=resume, restart=restart, progress=progress,
                     log=names or None, log_dir=log_dir, command=command, source=source)
    runner = Runner(cfg, method_obj, objects)
    try:
        rec = runner.run()
    except TrainingFailed as exc:
        raise TrainingFailed(f"{exc}; finished tasks are kept in {runner.run_dir}/record.partial.json") from exc
    return Record(rec, runner.out_path() if runner.rank == 0 else None)


def plan(plan_file: PathLike | None = None, *, sequence: str | None = None,
         methods: str | Sequence[str] = ("seq", "pegp"), pets: str | Sequence[str] = ("lora",),
         seeds: int | Sequence[int] = (0, 1, 2), **options: Any) -> list[RunConfig]:
    """The runs of a sweep, in order, without running them: every run of ``plan_file`` (a plan such as
    ``leaderboards/embedded-plan.yaml``), or the grid ``methods × pets × seeds`` on ``sequence``. ``options``
    are the run options of :func:`run_config` (``iterations``, ``max_eval``, ``model``, ``out``, ``log``, ...),
    applied to every run; with a plan, the plan names the sequences and the records folder, and ``sequence``
    (one name, or several comma-separated) keeps only the plan's runs on those."""
    from suite.experiments.sweep import grid, load_plan

    unknown = sorted(set(options) - set(run_config.__kwdefaults__) - {"sequence"})
    if unknown:
        raise ConfigError(f"plan: {unknown[0]}: unknown run option; known: "
                          f"{', '.join(sorted(set(run_config.__kwdefaults__) - {'source'}))}")
    if plan_file is not None:
        if options.get("config") is not None:
            raise ConfigError("plan: the plan names its runs; give no config with it")
        _check("plan_file", plan_file, (str, Path), "a plan file's path", "plan")
        _check("sequence", sequence, (str,), "sequence names, comma-separated", "plan")
        only = [name.strip() for name in sequence.split(",")] if sequence is not None else None
        return load_plan(plan_file, run_config("-", **options), sequences=only)
    split = lambda v: v.split(",") if isinstance(v, str) else list(v)  # noqa: E731
    seed_list = [seeds] if isinstance(seeds, int) else list(seeds)
    for s in seed_list:
        _check("seeds", s, (int,), "integers >= 0", "plan")
        if s < 0:
            raise ConfigError(f"plan: seeds: {s} must be an integer >= 0")
    if len(set(seed_list)) != len(seed_list):
        raise ConfigError(f"plan: seeds: {seed_list} repeats a seed")
    return grid(run_config(sequence, **options), methods=split(methods), pets=split(pets), seeds=seed_list)


def sweep(runs: Sequence[RunConfig] | None = None, *, plan_file: PathLike | None = None, jobs: int = 1,
          resume: bool = False, log: Callable[[str], None] | None = None, **grid_and_options: Any) -> Records:
    """Run every run of ``runs`` (from :func:`plan`), or of ``plan(plan_file, **grid_and_options)``, on this
    machine, ``jobs`` at a time (the cores divided between them); ``resume`` skips runs whose record is already
    complete. Returns their records, in order. (``clsuite sweep --executor slurm`` submits a plan to SLURM.)"""
    from suite.experiments.sweep import sweep as run_sweep
    from suite.registry import METHODS

    if runs is None:
        runs = plan(plan_file, **grid_and_options)
    elif plan_file is not None or grid_and_options:
        raise ConfigError("sweep: give runs, or a plan file or grid, not both")
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise ConfigError(f"sweep: jobs: {jobs!r} must be an integer >= 1")
    local = sorted({c.method for c in runs if c.method in METHODS.local})
    if jobs > 1 and local:
        raise ConfigError(f"sweep: method {local[0]!r} is registered in this process only; its runs need jobs=1 "
                          "(or an entry point, so that worker processes find it)")
    paths = run_sweep(list(runs), jobs=jobs, resume=resume, log=log or (lambda msg: None))
    return Records(Path(p) for p in paths)


def register_method(cls: "type[Method]", name: str | None = None) -> "type[Method]":
    """Make a :class:`~suite.methods.Method` subclass defined here (a notebook, a script) runnable by its
    ``name`` (``run(method=name)``, ``sweep`` with ``jobs=1``), without a package or entry point. Usable as a
    class decorator; see :func:`suite.methods.register_method`."""
    from suite.methods import register_method as register

    return register(cls, name)


def available(kind: str = "methods") -> list[str]:
    """The names of ``methods``, ``pets``, ``sequences`` or ``trackers`` this installation knows."""
    from suite.config.run import TRACKERS
    from suite.registry import METHODS, PETS

    if kind == "methods":
        return METHODS.names()
    if kind == "pets":
        return PETS.names()
    if kind == "trackers":
        return list(TRACKERS)
    if kind == "sequences":
        from suite.config.sequences import sequence_files

        return list(sequence_files())
    raise ConfigError(f"available: {kind!r}: give methods, pets, sequences or trackers")


__all__ = ["Comparison", "PLOT_KINDS", "Record", "Records", "Summary", "SuiteError", "available", "load_records",
           "parse_pair", "plan", "register_method", "run", "run_config", "sweep"]
