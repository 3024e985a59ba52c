"""A run's state after each finished task, so ``--resume`` continues after the last one; and the rule that a
checkpoint or record of another configuration (another fingerprint) is never resumed or overwritten silently."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from suite.config.run import differing_fields
from suite.errors import SuiteError
from suite.paths import parse_json, read_json, write_atomic
from suite.results.records import write_json_atomic

FILES = ("checkpoint.pt", "record.partial.json")  # what a run folder holds; nothing else there is ever removed


class CheckpointError(SuiteError):
    """A checkpoint that cannot be resumed: unreadable, or of another configuration."""


class Checkpoints:
    """The run folder of one run: ``checkpoint.pt`` (parameters, method state, record so far) and
    ``record.partial.json`` (the record so far, readable without torch), both replaced atomically."""

    def __init__(self, run_dir: Path, fingerprint: dict[str, Any], device: torch.device):
        self.run_dir, self.fingerprint, self.device = Path(run_dir), fingerprint, device

    def save(self, rec: dict[str, Any], tasks_done: int, params: list[torch.nn.Parameter], method_state: dict,
             pet: dict[str, torch.Tensor] | None = None, branches: int = 1) -> None:
        """``params``: the method's own trainable parameters, by position; ``pet``: the PET's whole state (every
        per-task branch, frozen or not) and ``branches`` its branch count, so a resumed run rebuilds them first."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        state = {"tasks_done": tasks_done, "params": [p.detach().cpu().clone() for p in params], "method": method_state,
                 "record": json.dumps(rec), "fingerprint": json.dumps(self.fingerprint)}
        if pet is not None:
            state["pet"] = {k: v.detach().cpu().clone() for k, v in pet.items()}
            state["branches"] = int(branches)
        write_atomic(self.run_dir / "checkpoint.pt", lambda fh: torch.save(state, fh))
        self.save_partial(rec)

    def save_partial(self, rec: dict[str, Any]) -> None:
        write_json_atomic(self.run_dir / "record.partial.json", rec)

    def resumable(self) -> bool:
        """Whether a checkpoint of this very configuration is there to resume from (read from the small partial
        record beside it, so nothing heavy is loaded to decide)."""
        if not (self.run_dir / "checkpoint.pt").is_file():
            return False
        try:
            partial = read_json(self.run_dir / "record.partial.json", "partial record")
        except (OSError, ValueError):
            return False
        return isinstance(partial, dict) and (partial.get("fingerprint") or {}).get("digest") == self.fingerprint["digest"]

    def load(self, restart: bool = False) -> dict[str, Any] | None:
        """The saved state (``record``, ``tasks_done``, ``params``, ``method``), or ``None`` when there is none
        (or, with ``restart``, when it belongs to another configuration and was discarded)."""
        path = self.run_dir / "checkpoint.pt"
        if not path.is_file():
            return None
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as exc:  # noqa: BLE001 — a truncated or foreign file, said in one line
            raise CheckpointError(f"{path}: not a checkpoint this suite can read ({type(exc).__name__}); "
                                  f"use --restart to discard it") from None
        old = parse_json(state.get("fingerprint", "null") or "null", path, CheckpointError)
        if old is None or old.get("digest") != self.fingerprint["digest"]:
            if restart:
                self.discard()
                return None
            differ = differing_fields(self.fingerprint, old)
            raise CheckpointError(f"{path}: --resume onto a run of another configuration (differs in: "
                                  f"{', '.join(differ) or 'fingerprint missing'}); use --restart to discard it")
        return {**state, "record": parse_json(state["record"], path, CheckpointError), "tasks_done": int(state["tasks_done"])}

    def discard(self) -> None:
        """Remove only the files a run writes in its run folder (and the temporaries of a write cut short)."""
        for name in FILES:
            (self.run_dir / name).unlink(missing_ok=True)
            for tmp in self.run_dir.glob(f".{name}.*"):
                tmp.unlink(missing_ok=True)
        (self.run_dir / "checkpoint.pt.tmp").unlink(missing_ok=True)  # written by earlier versions


def refuse_foreign_record(path: Path, fingerprint: dict[str, Any]) -> None:
    """A record of another configuration under this run's name is never overwritten silently."""
    if not path.is_file():
        return
    try:
        old = read_json(path, "record").get("fingerprint") or {}
    except (SuiteError, AttributeError):
        old = {}
    if old.get("digest") not in (None, fingerprint["digest"]):
        raise CheckpointError(f"{path}: a record of another configuration has this name (differs in: "
                              f"{', '.join(differing_fields(fingerprint, old))}); use --restart to replace it, or "
                              f"another --out")


__all__ = ["CheckpointError", "Checkpoints", "refuse_foreign_record"]
