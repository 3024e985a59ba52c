"""The one home of training settings, optimisers and learning-rate schedules (continual runs and pretraining).

:class:`TrainConfig` is the typed form of a ``training`` mapping wherever one enters (sequence file, ``--config``,
command-line options): an unknown key or a bad value is a :class:`ConfigError` naming the field.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from suite.config.bounds import MAX_BATCH, MAX_COUNT, finite_number, show_value
from suite.errors import ConfigError, field_path

OPTIMIZERS = ("adamw", "sgd")
# Upper bounds of the integer settings (a sequence file's schema states the same): counts, never unbounded
INT_LIMITS = {"iterations": 10_000_000, "epochs": 10_000, "batch_size": MAX_BATCH, "warmup": 10_000_000}
SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class TrainConfig:
    """Training settings of one task. ``epochs`` > 0 replaces ``iterations`` by passes over the training split."""

    iterations: int = 100
    epochs: int = 0
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adamw"
    schedule: str = "cosine"
    warmup: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            want = int if f.type in ("int", int) else float if f.type in ("float", float) else str
            if want is float and isinstance(v, int) and not isinstance(v, bool):
                v = finite_number(v, f"training.{f.name}")  # an integer too large for a float: one line
                object.__setattr__(self, f.name, v)
            if not isinstance(v, want) or isinstance(v, bool):
                raise ConfigError(f"training.{f.name}: {show_value(v)} is not "
                                  f"{want.__name__ if want is not float else 'a number'}")
            if want is int and v > INT_LIMITS.get(f.name, MAX_COUNT):
                raise ConfigError(f"training.{f.name}: {show_value(v)} is more than {INT_LIMITS.get(f.name, MAX_COUNT)}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"training.optimizer: {self.optimizer!r} is not one of {list(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"training.schedule: {self.schedule!r} is not one of {list(SCHEDULES)}")
        for name in ("iterations", "epochs", "warmup"):
            if getattr(self, name) < 0:
                raise ConfigError(f"training.{name}: {getattr(self, name)} is negative")
        if self.batch_size < 1:
            raise ConfigError(f"training.batch_size: {self.batch_size} must be at least 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"training.lr: {self.lr} must be a positive number")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise ConfigError(f"training.weight_decay: {self.weight_decay} must be a non-negative number")

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "<config>") -> "TrainConfig":
        """Defaults overridden by ``data``; ``where`` (a file, a command) prefixes every error."""
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: training: expected a mapping, got {type(data).__name__}")
        known = [f.name for f in fields(cls)]
        for key in data:
            if key not in known:
                raise ConfigError(f"{where}: {field_path(('training', key))}: unknown setting; known: {', '.join(known)}")
        try:
            return cls(**data)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


TRAINING_DEFAULTS = TrainConfig().to_dict()


def lr_factor(step: int, steps: int, warmup: int = 0, schedule: str = "cosine", floor: float = 0.0) -> float:
    """Multiplier of the base learning rate at ``step``: linear warm-up, then cosine from 1 to ``floor`` (or
    constant)."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
    return 1.0


def make_optimizer(params, cfg: TrainConfig):
    """The optimiser ``cfg`` names, over ``params`` (SGD with momentum 0.9, as GPM and PEGP train)."""
    import torch  # the config layer loads without torch (clsuite metrics, validate)

    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    # fused: one kernel per parameter instead of a dozen small ops (a PET has dozens of small tensors; 0.34 against
    # 0.96 ms per step for LoRA's 56 on 2 CPU threads); the same update, rounded in another order
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float64) for p in params)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused or None)


def make_scheduler(opt, steps: int, warmup: int = 0, schedule: str = "cosine", floor: float = 0.0):
    import torch  # the config layer loads without torch (clsuite metrics, validate)

    return torch.optim.lr_scheduler.LambdaLR(opt, lambda i: lr_factor(i, steps, warmup, schedule, floor))


__all__ = ["ConfigError", "TrainConfig", "TRAINING_DEFAULTS", "OPTIMIZERS", "SCHEDULES", "lr_factor",
           "make_optimizer", "make_scheduler"]
