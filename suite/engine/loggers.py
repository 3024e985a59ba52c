"""Experiment trackers: what a run reports while it runs, to TensorBoard, Weights & Biases or CSV files.

A tracker is a :class:`Logger` (the design of Avalanche's loggers): the runner calls

* :meth:`Logger.start` once, with the run's name, configuration and fingerprint (:class:`RunInfo`);
* :meth:`Logger.step` after every optimiser step, with the loss and the learning rate of that step;
* :meth:`Logger.task` after every task is learned and evaluated, with that step of the record (accuracy row,
  control accuracies, retention, hallucination, calibration, timings): :func:`task_measures` flattens it into
  the named numbers every tracker logs, at x = the number of tasks learned;
* :meth:`Logger.finish` once at the end (also after a failure, with the partial record): aggregates, the matrix
  as a table and the record file as an artifact.

Loggers only read: the runner hands them copies, calls them on rank 0 only, and nothing a logger does reaches
the record (``tests/test_trackers.py`` checks that a run with every tracker gives the record of a run without).
``--log tensorboard|wandb|csv`` (:data:`suite.config.run.TRACKERS`) names the built-in ones; the Python API also
takes :class:`Logger` instances. TensorBoard and W&B are the optional extra ``trackers``; a missing one is refused
in one line before anything is built.
"""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Mapping, Sequence

from suite.config.run import TRACKERS
from suite.errors import ConfigError
from suite.results.records import step_summary

EXTRA = "pip install clip-continual-suite[trackers]"
# Prefixes of the per-task measures (:func:`task_measures`); per-step measures are under ``train/``.
TASK_PREFIXES = ("accuracy", "control", "retention", "calibration", "hallucination", "fit", "time")
# The record's summary numbers (suite.results.records.step_summary) and their names as tracked measures.
SUMMARY_MEASURES = {"zero_shot_retention": "retention/mean", "ece": "calibration/ece",
                    "hallucination_fpr": "hallucination/pope_fpr", "pope_auroc": "hallucination/pope_auroc",
                    "hijacking_rate": "hallucination/hijacking_rate",
                    "retrieval_confident_mismatch": "hallucination/retrieval_confident_mismatch"}


@dataclass(frozen=True)
class RunInfo:
    """What a logger is told when a run starts."""

    name: str  #: the run id (it names the record and the run folder)
    config: dict[str, Any]  #: the run's options (:class:`~suite.config.run.RunConfig` as a dict)
    fingerprint: dict[str, Any]  #: ``digest`` and ``fields`` (:meth:`~suite.config.run.RunIdentity.fingerprint`)
    tasks: list[str]  #: the sequence's task names, in order
    controls: list[str]  #: its control sets
    record_path: Path  #: where the record is written at the end
    log_dir: Path  #: the folder trackers write under (each in a subfolder of its own)
    first_step: int = 0  #: global step of the first optimiser step to come (> 0 when a run resumes)
    params: dict[str, Any] = field(default_factory=dict)  #: flat parameters: name, digest and the main options


class Logger:
    """One experiment tracker. Every hook does nothing by default; a subclass overrides those it needs."""

    name = "logger"

    def start(self, info: RunInfo) -> None:
        """The run begins (or resumes): open the tracker, record the run's name, config and fingerprint."""

    def step(self, i: int, loss: float, lr: float) -> None:
        """Optimiser step ``i`` (counted over the whole run, from 0) had training loss ``loss`` at rate ``lr``."""

    def task(self, t: int, step: Mapping[str, Any]) -> None:
        """Task ``t`` (from 0) was learned and every task evaluated: ``step`` is the record's step entry."""

    def finish(self, record: Mapping[str, Any]) -> None:
        """The run ended (``record["status"]`` says how): final numbers, the matrix, the record; close."""


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def task_measures(step: Mapping[str, Any], info: RunInfo) -> dict[str, float]:
    """The named numbers of one evaluated step that every tracker logs (missing or non-finite ones left out)."""
    out: dict[str, float] = {}
    acc = list(step.get("accuracy") or [])
    for name, v in zip(info.tasks, acc):
        out[f"accuracy/{name}"] = v
    if acc:
        t = int(step.get("task", len(acc) - 1))
        out["accuracy/mean"] = sum(acc) / len(acc)
        out["accuracy/seen"] = sum(acc[: t + 1]) / (t + 1)
    for name, v in (step.get("control_accuracy") or {}).items():
        out[f"control/{name}"] = v
    for name, v in (step.get("retention") or {}).items():
        out[f"retention/{name}"] = v
    for key, v in step_summary(dict(step)).items():
        out[SUMMARY_MEASURES.get(key, f"summary/{key}")] = v
    out["fit/train_accuracy"] = step.get("train_accuracy")
    out["fit/final_loss"] = step.get("final_loss")
    out["fit/iterations"] = step.get("iterations")
    for key in ("train_time_s", "eval_time_s", "wall_time_s"):
        out[f"time/{key}"] = step.get(key)
    out["time/peak_memory_mb"] = step.get("peak_memory_mb")
    return {k: float(v) for k, v in out.items() if _finite(v)}


def matrix_rows(record: Mapping[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """The accuracy matrix as a table: a header (``after``, then the task names) and one row per step, the
    zero-shot row first."""
    names = list(record["sequence"]["tasks"])
    rows = [["zero-shot", *record["zero_shot"]["tasks"]]]
    rows += [[f"after {names[i]}", *row] for i, row in enumerate(record["matrix"])]
    return ["after", *names], rows


def _markdown(head: list[str], rows: list[list[Any]]) -> str:
    cell = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                     + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows])


def _copy_record(info: RunInfo, folder: Path) -> Path | None:
    """The record file as the tracker's artifact: copied into ``folder`` (None when it was not written)."""
    if not info.record_path.is_file():
        return None
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copyfile(info.record_path, folder / "record.json"))


# --------------------------------------------------------------------------------------------------- CSV
class CSVLogger(Logger):
    """Plain files, no dependency, under ``<log_dir>/csv/``: ``params.json`` (name, config, fingerprint),
    ``train.csv`` (step, loss, lr), ``tasks.csv`` (one row per task with every measure of :func:`task_measures`),
    and at the end ``aggregates.csv``, ``matrix.csv`` and ``record.json``. A resumed run appends."""

    name = "csv"

    def __init__(self, folder: str | Path | None = None):
        self.folder = Path(folder) if folder is not None else None
        self.info: RunInfo | None = None
        self._train = None
        self._columns: list[str] = []

    def start(self, info: RunInfo) -> None:
        self.info = info
        self.folder = self.folder or info.log_dir / "csv"
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "params.json").write_text(json.dumps(
            {"name": info.name, "params": info.params, "config": info.config, "fingerprint": info.fingerprint},
            indent=1, default=str) + "\n")
        path = self.folder / "train.csv"
        fresh = not path.is_file() or info.first_step == 0
        self._train = open(path, "w" if fresh else "a", newline="")
        if fresh:
            csv.writer(self._train).writerow(["step", "loss", "lr"])
        self._tasks_fresh = not (self.folder / "tasks.csv").is_file() or info.first_step == 0

    def step(self, i: int, loss: float, lr: float) -> None:
        csv.writer(self._train).writerow([i, repr(float(loss)), repr(float(lr))])

    def task(self, t: int, step: Mapping[str, Any]) -> None:
        m = task_measures(step, self.info)
        path = self.folder / "tasks.csv"
        if self._tasks_fresh or not self._columns:
            self._columns = ["task", "name"] + list(m)
            if not self._tasks_fresh and path.is_file():  # a resumed run keeps the columns it began with
                with open(path, newline="") as fh:
                    self._columns = next(csv.reader(fh), self._columns)
        with open(path, "w" if self._tasks_fresh else "a", newline="") as fh:
            w = csv.DictWriter(fh, self._columns, restval="", extrasaction="ignore")
            if self._tasks_fresh:
                w.writeheader()
            w.writerow({"task": t + 1, "name": self.info.tasks[t], **{k: repr(v) for k, v in m.items()}})
        self._tasks_fresh = False

    def finish(self, record: Mapping[str, Any]) -> None:
        if self._train is not None:
            self._train.close()
            self._train = None
        with open(self.folder / "aggregates.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["metric", "value"])
            for k, v in (record.get("aggregates") or {}).items():
                w.writerow([k, "" if v is None else repr(v)])
        head, rows = matrix_rows(record)
        with open(self.folder / "matrix.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(head)
            w.writerows([[r[0], *(repr(v) for v in r[1:])] for r in rows])
        _copy_record(self.info, self.folder)


# ------------------------------------------------------------------------------------------ TensorBoard
class TensorBoardLogger(Logger):
    """Event files under ``<log_dir>/tensorboard/`` (``tensorboard --logdir runs/`` shows every run): scalars
    ``train/loss`` and ``train/lr`` per step; every :func:`task_measures` number at x = tasks learned;
    ``aggregates/*`` at the end; the run's name, config, fingerprint and matrix as text; hyper-parameters with the
    aggregates as their metrics (the HParams tab); the record copied beside the event files."""

    name = "tensorboard"

    def __init__(self, folder: str | Path | None = None):
        require("tensorboard")
        self.folder = Path(folder) if folder is not None else None
        self.writer = None
        self.info: RunInfo | None = None

    def start(self, info: RunInfo) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.info = info
        self.folder = self.folder or info.log_dir / "tensorboard"
        self.writer = SummaryWriter(log_dir=str(self.folder))
        self.writer.add_text("run/name", info.name)
        self.writer.add_text("run/config", "```\n" + json.dumps(info.config, indent=1, default=str) + "\n```")
        self.writer.add_text("run/fingerprint", "```\n" + json.dumps(info.fingerprint, indent=1) + "\n```")

    def step(self, i: int, loss: float, lr: float) -> None:
        self.writer.add_scalar("train/loss", loss, i)
        self.writer.add_scalar("train/lr", lr, i)

    def task(self, t: int, step: Mapping[str, Any]) -> None:
        for k, v in task_measures(step, self.info).items():
            self.writer.add_scalar(k, v, t + 1)
        self.writer.flush()

    def finish(self, record: Mapping[str, Any]) -> None:
        from torch.utils.tensorboard.summary import hparams

        n = len(record.get("matrix") or [])
        aggregates = {f"aggregates/{k}": float(v) for k, v in (record.get("aggregates") or {}).items() if _finite(v)}
        for k, v in aggregates.items():
            self.writer.add_scalar(k, v, n)
        if record.get("matrix"):
            self.writer.add_text("matrix", _markdown(*matrix_rows(record)), n)
        self.writer.add_text("run/status", str(record.get("status")), n)
        params = {k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v, sort_keys=True)
                  for k, v in self.info.params.items()}
        fw = self.writer._get_file_writer()
        for summary in hparams(params, aggregates):
            fw.add_summary(summary)
        self.writer.close()
        _copy_record(self.info, self.folder)


# ------------------------------------------------------------------------------------------- W&B
def wandb_mode() -> str | None:
    """``None`` (W&B decides) when ``WANDB_MODE`` is set or an API key is found (``WANDB_API_KEY`` or a netrc
    entry for the W&B host); otherwise ``"offline"``, so a run never stops to ask for a login."""
    if os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY"):
        return None
    import netrc
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        found = netrc.netrc(os.environ.get("NETRC")).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        found = None
    return None if found else "offline"


class WandbLogger(Logger):
    """A Weights & Biases run under ``<log_dir>/wandb/`` (offline, ``wandb/offline-run-*``, unless an API key
    or ``WANDB_MODE`` says otherwise; ``wandb sync`` uploads it later). Project ``$WANDB_PROJECT`` or
    ``clsuite``; the run is named by the run id, its config holds the run's options and fingerprint. Logs
    ``train/loss``, ``train/lr`` against ``train/step``; every :func:`task_measures` number against ``task``
    (tasks learned); at the end the aggregates in the summary, the matrix as a ``wandb.Table`` and the record file
    as an artifact of type ``record``."""

    name = "wandb"

    def __init__(self, folder: str | Path | None = None, project: str | None = None, **init: Any):
        require("wandb")
        self.folder = Path(folder) if folder is not None else None
        self.project, self.init = project, init
        self.run = None
        self.info: RunInfo | None = None

    def start(self, info: RunInfo) -> None:
        import wandb

        self.info = info
        self.folder = self.folder or info.log_dir
        self.folder.mkdir(parents=True, exist_ok=True)
        settings = wandb.Settings(console="off", x_disable_stats=True, save_code=False, quiet=True, silent=True)
        args: dict[str, Any] = dict(project=self.project or os.environ.get("WANDB_PROJECT") or "clsuite",
                                    name=info.name, dir=str(self.folder), reinit="create_new", settings=settings,
                                    config={**info.params, "config": info.config,
                                            "fingerprint_fields": info.fingerprint.get("fields")})
        mode = wandb_mode()
        if mode:
            args["mode"] = mode
        self.run = wandb.init(**{**args, **self.init})
        self.run.define_metric("train/step")
        self.run.define_metric("train/*", step_metric="train/step")
        self.run.define_metric("task")
        for prefix in TASK_PREFIXES:
            self.run.define_metric(f"{prefix}/*", step_metric="task")

    def step(self, i: int, loss: float, lr: float) -> None:
        self.run.log({"train/step": i, "train/loss": loss, "train/lr": lr})

    def task(self, t: int, step: Mapping[str, Any]) -> None:
        self.run.log({"task": t + 1, **task_measures(step, self.info)})

    def finish(self, record: Mapping[str, Any]) -> None:
        import wandb

        try:
            self.run.summary.update({f"aggregates/{k}": v for k, v in (record.get("aggregates") or {}).items()
                                     if v is not None})
            self.run.summary["status"] = str(record.get("status"))
            if record.get("matrix"):
                head, rows = matrix_rows(record)
                self.run.log({"matrix": wandb.Table(columns=head, data=rows)})
            if self.info.record_path.is_file():
                art = wandb.Artifact(f"record-{self.info.name}"[:128], type="record",
                                     metadata={"fingerprint": self.info.fingerprint.get("digest")})
                art.add_file(str(self.info.record_path), name="record.json")
                self.run.log_artifact(art)
        finally:
            self.run.finish(exit_code=0 if record.get("status") == "complete" else 1)


# --------------------------------------------------------------------------------------------- building
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}  # tracker -> the package it needs
CLASSES: dict[str, type[Logger]] = {"csv": CSVLogger, "tensorboard": TensorBoardLogger, "wandb": WandbLogger}


def require(tracker: str) -> None:
    """Refuse, in one line naming the extra, a tracker whose package is not installed."""
    package = PACKAGES.get(tracker)
    if package and find_spec(package) is None:
        raise ConfigError(f"--log {tracker}: the {package} package is not installed; {EXTRA}")


def make_loggers(names: Sequence[str | Logger]) -> list[Logger]:
    """Loggers from tracker names (:data:`~suite.config.run.TRACKERS`) or :class:`Logger` instances; an unknown
    name, an object that is no logger, or a missing package is refused in one line."""
    out: list[Logger] = []
    for item in names:
        if isinstance(item, Logger):
            out.append(item)
        elif isinstance(item, str) and item in CLASSES:
            out.append(CLASSES[item]())
        else:
            raise ConfigError(f"log: {item!r} is neither a tracker ({', '.join(TRACKERS)}) nor a "
                              "suite.engine.loggers.Logger")
    return out


__all__ = ["CLASSES", "CSVLogger", "EXTRA", "Logger", "RunInfo", "TASK_PREFIXES", "TensorBoardLogger", "WandbLogger",
           "make_loggers", "matrix_rows", "require", "task_measures", "wandb_mode"]
