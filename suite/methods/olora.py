"""O-LoRA: orthogonal subspace learning for continual learning (Wang et al., EMNLP 2023 Findings, arXiv 2310.14152).

Each task learns its own LoRA branch beside the frozen branches of the earlier tasks; the loss pulls the new
branch's down-projection ``A_t`` towards rows orthogonal to every earlier ``A_i`` of the same layer:

    loss = task loss + λ1 · Σ_layers Σ_{i<t} Σ_jk |(A_i A_tᵀ)_jk| + λ2 · Σ_layers (‖A_t‖_F + ‖B_t‖_F)

At test every branch adds ``(α/r) B_i A_i x``: one model, no task identity, no selection.

Official code, github.com/cmnfriend/O-LoRA (read for facts, nothing copied):

* ``src/uie_trainer_lora.py``, ``UIETrainer.training_step`` (lines 90-109): the orthogonality term is
  ``|lora_A · loranew_Aᵀ|`` summed element-wise, for every LoRA module, where ``lora_A`` is the row-wise
  concatenation of all earlier tasks' ``A`` (so the sum is the sum over earlier branches taken here); the second
  term is ``torch.norm(p, p=2)`` (the Frobenius norm, not squared) of every ``loranew_A`` / ``loranew_B``;
  ``loss += λ1·orth + λ2·l2``.
* ``src/run_uie_lora.py``: ``lamda_1 = 0.5``, ``lamda_2 = 0`` (lines 240-241; ``scripts/order_*.sh`` pass the same;
  only ``scripts/long.sh`` tries λ1 5 and λ2 0.1-0.3 on some tasks); only ``loranew_*`` trains, every earlier
  ``lora_*`` is frozen (lines 405-416); LoRA ``r = lora_dim = 8``, ``lora_alpha = 32``, dropout 0.1 (lines 115,
  380-394) on T5's ``q`` and ``v`` (``src/peft/utils/other.py``, target-module map).
* ``src/peft/tuners/lora.py``, ``Linear.forward`` (lines 575-600): old and new branches share the scale α/r;
  ``src/peft/utils/save_and_load.py`` (lines 36-51): after a task ``loranew`` is concatenated into ``lora``.

Here the branches are the PET's per-task branches (:class:`~suite.methods.branching.PerTaskBranches`): branch
``t`` learns task ``t``; opening it freezes every earlier one, and the task's optimiser holds only the open branch's
``A`` and ``B`` (the engine rebuilds it after ``before_task``). The earlier ``A`` enter the penalty detached, so its
gradient reaches the new ``A`` only, as in the official code (where they are frozen).

Departures, and why:

* The LoRA shape is the PET's (``--pet lora`` options: rank, α, targets, towers, layers), not O-LoRA's r 8 / α 32
  on q,v: the method cannot reshape a PET another option declared. The official shape is
  ``pet_options: {targets: "q,v", rank: 8, alpha: 32}`` in a run's ``--config`` file; the boards use the suite's
  LoRA shape for every method.
* No LoRA dropout (the suite's LoRA has none); no instruction prompts (they belong to the T5 generation setup).
* The official optimiser is the Hugging Face Trainer's AdamW at lr 1e-3, constant schedule, one epoch per task;
  here the sequence's LoRA budget (AdamW, lr 0.005, cosine, ~100 iterations) trains it, like every LoRA method.
* The penalty is computed over every LoRA layer of the PET, both towers when the PET spans both (the official
  model is one T5 whose every ``q``/``v`` carries LoRA).
"""
from __future__ import annotations

from typing import Any

import torch

from suite.methods.base import Batch, Option, RunContext
from suite.methods.branching import PerTaskBranches


class OLoRA(PerTaskBranches):
    """A LoRA branch per task; the new ``A`` is pushed orthogonal to the frozen earlier ``A`` of its layer."""

    name = "olora"
    # branches follow task boundaries, never the task's identity; one summed model answers every image
    PROTOCOL = {"task_id_train": False, "task_id_test": False, "memory": 0, "routing": "none"}
    OPTIONS = {
        "lambda_1": Option(0.5, (float,), low=0),  # weight of Σ|A_old A_newᵀ| (official --lamda_1)
        "lambda_2": Option(0.0, (float,), low=0),  # weight of ‖A_new‖_F + ‖B_new‖_F (official --lamda_2)
    }

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        self._last_orth: torch.Tensor | None = None

    def before_task(self, ctx: RunContext, t: int) -> None:
        super().before_task(ctx, t)
        self._last_orth = None  # the penalty reported is this task's

    def orthogonality(self) -> torch.Tensor:
        """``Σ_layers Σ_{i<t} Σ |A_i A_tᵀ|``: zero exactly when every row of each new ``A`` is orthogonal to every
        row of the earlier ``A`` of its layer; the earlier ones are detached, so only the new ``A`` is pulled."""
        total = None
        for layer in self.pet.pet_layers:
            branches = layer.branch_list()
            if len(branches) < 2:
                continue
            old = torch.cat([b["A"].detach() for b in branches[:-1]])  # (r · t, d_in): the official lora_A
            term = (old @ branches[-1]["A"].T).abs().sum()
            total = term if total is None else total + term
        if total is None:  # task 1: no earlier branch
            total = torch.zeros((), device=self.pet.pet_layers[0].A.device)
        return total

    def magnitude(self) -> torch.Tensor:
        """``Σ_layers ‖A_t‖_F + ‖B_t‖_F`` of the open branch (the official l2 term: norms, not squared)."""
        terms = [torch.linalg.vector_norm(p) for br in self.current() for p in br.values()]
        return torch.stack(terms).sum()

    def loss(self, ctx: RunContext, batch: Batch) -> torch.Tensor:
        loss = ctx.task_loss(batch)
        l1, l2 = float(self.options["lambda_1"]), float(self.options["lambda_2"])
        if l1 > 0:
            orth = self.orthogonality()
            self._last_orth = orth.detach()
            loss = loss + l1 * orth
        if l2 > 0:
            loss = loss + l2 * self.magnitude()
        return loss

    def report(self) -> dict[str, Any]:
        out = super().report()
        if self._last_orth is not None:  # the (unweighted) penalty at the last training step
            out["olora_orthogonality"] = float(self._last_orth)
        return out


__all__ = ["OLoRA"]
