"""What a run is: the options of one run (:class:`RunConfig`) and what makes two runs the same (:class:`RunIdentity`).

Everything that asks "is this the same run?" or "are these seeds of one configuration?" reads
:class:`RunIdentity`: the run id that names records and run folders, the resume fingerprint checked against
checkpoints and records, the group of seeds that summaries, compare and the boards pool, and the duplicate-seed
check of boards and submissions. A config gives the *requested* identity (options as typed; the run id is made
from it, so it is known before anything is built); a record gives the *resolved* one (options with their defaults,
the effective training), from which groups and duplicates are computed.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from suite.config.bounds import MAX_BATCH, MAX_COUNT, MAX_PROCESSES, MAX_SEED, bounded_int
from suite.config.sequences import TaskSequence
from suite.config.train import TrainConfig
from suite.errors import ConfigError
from suite.paths import safe_name

# The experiment trackers a run can log to (``--log``; :mod:`suite.engine.loggers` implements them).
TRACKERS = ("tensorboard", "wandb", "csv")


@dataclass
class RunConfig:
    sequence: str
    model: str = "embedded:tiny-clip"
    pet: str | None = "lora"
    pet_options: dict[str, Any] = field(default_factory=dict)
    method: str = "seq"
    method_options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    training: dict[str, Any] = field(default_factory=dict)  # overrides of the sequence's defaults
    out: str = "results"
    run_dir: str = "runs"
    resume: bool = False
    eval_batch_size: int = 256
    max_eval: int | None = None
    progress: bool = True
    command: str = ""
    threads: int | None = None  # torch CPU threads for this run (None: torch's default)
    restart: bool = False  # discard a checkpoint of another configuration in the run folder instead of refusing
    workers: int | None = None  # processes decoding file-backed training images (None: default_workers())
    log: list[str] = field(default_factory=list)  # experiment trackers (TRACKERS); never part of the record
    log_dir: str | None = None  # where trackers write (None: the run folder, run_dir/<run id>)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<config>") -> "RunConfig":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: {unknown[0]}: unknown field; known: {', '.join(sorted(known))}")
        if "sequence" not in data:
            raise ConfigError(f"{source}: sequence: required field is missing")
        TrainConfig.from_dict(data.get("training") or {}, source)  # unknown keys and bad values, named
        for key in ("out", "run_dir"):
            if key in data and Path(str(data[key])).exists() and not Path(str(data[key])).is_dir():
                raise ConfigError(f"{source}: {key}: {data[key]} is a file, not a folder")
        for key, low, high in (("seed", 0, MAX_SEED), ("max_eval", 1, MAX_COUNT), ("eval_batch_size", 1, MAX_BATCH),
                               ("threads", 1, MAX_PROCESSES), ("workers", 0, MAX_PROCESSES)):
            if data.get(key) is not None:  # bounded: a seed or size beyond 64 bits would overflow inside torch
                bounded_int(data[key], f"{source}: {key}", low, high)
        if "log" in data:
            data = {**data, "log": tracker_list(data["log"], source)}
        if data.get("log_dir") is not None and not isinstance(data["log_dir"], (str, Path)):
            raise ConfigError(f"{source}: log_dir: {data['log_dir']!r} must be a folder path")
        return cls(**data)

    def identity(self) -> "RunIdentity":
        """The identity this config asks for (options as given, training overrides only)."""
        return RunIdentity(self.sequence, self.model, self.pet, self.pet_options, self.method, self.method_options,
                           self.training, self.amp, self.max_eval, self.seed)

    def run_id(self) -> str:
        return self.identity().run_id()


@dataclass(frozen=True)
class RunIdentity:
    """The fields that make a run what it is; everything else (device, threads, workers, paths) is how it ran."""

    sequence: str  # a shipped name or a sequence file (a record: the sequence's name)
    model: str
    pet: str | None
    pet_options: Mapping[str, Any]
    method: str
    method_options: Mapping[str, Any]
    training: Mapping[str, Any]
    amp: bool
    max_eval: int | None
    seed: int

    @classmethod
    def of_record(cls, rec: Mapping[str, Any]) -> "RunIdentity":
        """The resolved identity a record states (its options with defaults, its effective training)."""
        cfg = rec.get("config") or {}
        return cls(rec["sequence"]["name"], rec["model"]["spec"], rec["pet"]["kind"], rec["pet"]["options"],
                   rec["method"]["name"], rec["method"]["options"], rec.get("training") or {},
                   bool(cfg.get("amp", False)), cfg.get("max_eval"), rec["seed"])

    def run_id(self) -> str:
        """File-safe id (:func:`suite.paths.safe_name`): it names the record and the run folder."""
        opts = json.dumps([self.pet_options, self.method_options, self.training, self.max_eval], sort_keys=True)
        tag = hashlib.sha256(opts.encode()).hexdigest()[:8]
        model = self.model.replace(":", "-").replace("/", "_").replace("@", "-")[-40:]
        return safe_name(f"{Path(self.sequence).stem}__{model}__{self.pet or 'none'}__{self.method}__s{self.seed}__{tag}",
                         max_len=160)

    def configuration(self) -> tuple[str, str, str, str, str]:
        """Everything but the seed: records that share it are seeds of one configuration (one group)."""
        return (self.sequence, self.method, self.pet or "-",
                json.dumps([self.pet_options, self.method_options], sort_keys=True),
                json.dumps([self.model, self.training, self.amp, self.max_eval], sort_keys=True))

    def key(self) -> tuple:
        """The configuration and the seed: two records with one key are the same run twice."""
        return (*self.configuration(), self.seed)

    def fingerprint(self, sequence: str, manifests: str, weights: str) -> dict[str, Any]:
        """What a checkpoint or record must match to be resumed or kept: this (resolved) identity plus the content
        it ran on (``sequence``: name, version and file hash; ``manifests``: the data's hash; ``weights``: the
        backbone's). ``digest`` hashes the fields."""
        fields = {"sequence": sequence, "manifests": manifests, "model": self.model, "weights": weights,
                  "pet": json.dumps([self.pet, dict(self.pet_options)], sort_keys=True),
                  "method": json.dumps([self.method, dict(self.method_options)], sort_keys=True, default=str),
                  "training": json.dumps(dict(self.training), sort_keys=True),
                  "amp": bool(self.amp), "seed": self.seed, "max_eval": self.max_eval}
        digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
        return {"digest": digest, "fields": fields}


def tracker_list(value: Any, source: str = "<config>") -> list[str]:
    """``log`` of a run config as a list of distinct tracker names (a single name may be given as a string)."""
    names = [value] if isinstance(value, str) else value
    if names is None:
        return []
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{source}: log: {value!r} must be a list of tracker names ({', '.join(TRACKERS)})")
    for n in names:
        if n not in TRACKERS:
            raise ConfigError(f"{source}: log: unknown tracker {n!r}; known: {', '.join(TRACKERS)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"{source}: log: {next(n for n in names if names.count(n) > 1)!r} is given twice")
    return list(names)


def sequence_label(seq: TaskSequence) -> str:
    """How a fingerprint names the sequence a run used: name, version and a hash of its file's content."""
    path = Path(seq.path)
    return f"{seq.name} v{seq.version} " + (hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else "-")


def differing_fields(mine: Mapping[str, Any], other: Mapping[str, Any] | None) -> list[str]:
    """The fingerprint fields in which ``other`` (a checkpoint's or record's fingerprint) differs from ``mine``."""
    theirs = (other or {}).get("fields", {})
    return sorted(k for k, v in mine["fields"].items() if theirs.get(k) != v)


__all__ = ["RunConfig", "RunIdentity", "TRACKERS", "differing_fields", "sequence_label", "tracker_list"]
