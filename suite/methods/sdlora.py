"""SD-LoRA: scalable decoupled low-rank adaptation (Wu et al., ICLR 2025 oral, arXiv 2501.13198).

Each task learns a LoRA branch; once the task ends its direction ``B_i A_i`` is frozen and only its magnitude keeps
learning. While task ``t`` trains, every LoRA layer computes

    W x + α_t · B_t A_t x + Σ_{i<t} α_i · B_i A_i x / (‖B_i‖_F ‖A_i‖_F)

with one scalar ``α_i`` per task, shared by every layer (and by the q and v maps); all of ``α_0 … α_t`` train
together with ``A_t`` and ``B_t``. The open branch is not normalised (its ``B`` starts at zero) and there is no
α/r LoRA scale anywhere: the magnitudes replace it. At test the one summed model answers.

Official code, github.com/WuYichen-97/SD-Lora-CL (read for facts, nothing copied):

* ``backbone/lora.py``, ``_LoRA_qkv_timm_train.forward`` (lines 153-195): old branches add
  ``scaling_factor_prev[i](B_i A_i x / (‖B_i‖·‖A_i‖))`` (``torch.norm`` of each weight: Frobenius), the open one
  ``scaling_factor[0](B_t A_t x)``; the ``α/r`` factor is commented out; LoRA on the q and v slices of timm's
  fused qkv in every block.
* ``backbone/lora.py``, ``LoRA_ViT_timm.__init__`` (lines 326-353): the magnitudes are ``nn.Parameter([0.8])``, one
  for the open branch and a list for earlier ones, each handed to every block (shared across layers); old ``A``/``B``
  are loaded from disk and set ``requires_grad = False``.
* ``models/sdlora.py``, ``Learner._train`` / ``update_network`` (lines 68-125): every task after the first builds a
  fresh ``LoRA_ViT_timm``, so every magnitude, old ones included, restarts at 0.8, and the optimiser (SGD, momentum
  0.9, lr 8e-3 CIFAR / 1e-2 ImageNet-R, ``exps/sdlora_*.json``) takes all parameters, the old magnitudes with
  them; rank 10 (the "-RR" rank schedule 10/8/6 is left commented out there). ``LoRA_ViT_timm.save_wrap_param``,
  which would store the learned magnitudes, is never called, and the ``_LoRA_qkv_timm_eval`` path is not the one
  ``_compute_accuracy`` uses: evaluation runs the training module with the current magnitudes, as here.

This is the base SD-LoRA. "-RR" (lower rank for later tasks) needs branches of different ranks, which the suite's
LoRA (one rank for every branch) does not give; "-KD" (a new direction expressed in the span of old ones) is not in
the official code at all. Neither is implemented.

Implementation: the suite's per-task branches (:class:`~suite.methods.branching.PerTaskBranches`; opening branch
``t`` freezes the earlier ``A``/``B``) with :attr:`suite.pet.lora.LoRALinear.branch_scales` set on every layer to
:meth:`SDLoRA.scales`; the magnitudes are parameters the method owns, returned by :meth:`trainable` with the open
branch, kept in :meth:`state_dict` for ``--resume``.

Departures, and why:

* The official training step computes an orthogonality loss between branches and leaves it out of the loss
  (``models/sdlora.py``, ``_update_representation``); it is not computed here either.

* The LoRA shape is the PET's (``--pet lora`` options; the suite's LoRA on q,k,v,out unless ``targets`` says
  otherwise), not rank 10 on q,v: the method cannot reshape a PET another option declared. The official shape is
  ``pet_options: {targets: "q,v", rank: 10}`` in a run's ``--config`` file. The PET's ``alpha`` has no effect
  under SD-LoRA (the official code has no α/r).
* ``magnitudes: reset`` (default) restarts every magnitude at ``init`` before each task, as the official code does by
  rebuilding its network; ``carry`` keeps the learned values instead (the paper's reading that old magnitudes
  "continue to be updated"; at the boundary the open branch's output still changes, since its direction becomes
  normalised and a shared scalar cannot undo a per-layer norm).
* ``norm: factors`` (default) divides by ``‖B_i‖_F ‖A_i‖_F`` as the code does; ``product`` divides by
  ``‖B_i A_i‖_F`` as the paper's figure 1 writes the normalised direction.
* A direction whose norm is zero (a branch that never trained) adds zero instead of the official NaN.
* The optimiser is the sequence's LoRA budget (AdamW, lr 0.005, cosine, ~100 iterations), not SGD 8e-3 for 20
  epochs, like every LoRA method on the boards.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from suite.methods.base import Option, RunContext
from suite.methods.branching import PerTaskBranches
from suite.pet.lora import LoRALinear


class SDLoRA(PerTaskBranches):
    """Frozen, normalised directions of earlier tasks with learned magnitudes (one scalar per task, all layers)."""

    name = "sdlora"
    # branches follow task boundaries, never the task's identity; one summed model answers every image
    PROTOCOL = {"task_id_train": False, "task_id_test": False, "memory": 0, "routing": "none"}
    OPTIONS = {
        "init": Option(0.8, (float,), low=0, open_low=True),  # every magnitude's starting value (official 0.8)
        "magnitudes": Option("reset", (str,), choices=("reset", "carry")),
        "norm": Option("factors", (str,), choices=("factors", "product")),
    }

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        self.device = ctx.device
        self.magnitudes: list[nn.Parameter] = []
        self._grow(self.pet.branch_count())
        for layer in self.pet.pet_layers:
            layer.branch_scales = self.scales

    def _grow(self, n: int) -> None:
        while len(self.magnitudes) < n:
            self.magnitudes.append(nn.Parameter(torch.tensor(float(self.options["init"]), device=self.device)))

    def _norm(self, branch: dict[str, nn.Parameter]) -> torch.Tensor:
        """The frozen direction's norm (no gradient: the direction does not train)."""
        with torch.no_grad():
            A, B = branch["A"], branch["B"]
            if self.options["norm"] == "factors":
                n = torch.linalg.vector_norm(B) * torch.linalg.vector_norm(A)
            else:  # ‖B A‖_F² = Σ (BᵀB) ⊙ (A Aᵀ): two r x r products instead of the d_out x d_in one
                n = ((B.T @ B) * (A @ A.T)).sum().clamp_min(0).sqrt()
            return n.clamp_min(torch.finfo(n.dtype).tiny)

    def scales(self, layer: LoRALinear) -> list[torch.Tensor]:
        """One scale per branch of ``layer``: ``α_i / ‖direction_i‖`` for the frozen ones, ``α_t`` for the open one."""
        branches = layer.branch_list()
        self._grow(len(branches))
        last = len(branches) - 1
        return [self.magnitudes[i] if i == last else self.magnitudes[i] / self._norm(br)
                for i, br in enumerate(branches)]

    def before_task(self, ctx: RunContext, t: int) -> None:
        super().before_task(ctx, t)
        self._grow(self.pet.branch_count())
        if self.options["magnitudes"] == "reset":
            with torch.no_grad():
                for m in self.magnitudes:
                    m.fill_(float(self.options["init"]))

    def trainable(self, ctx: RunContext) -> list[nn.Parameter]:
        """The open branch's ``A`` and ``B`` and every task's magnitude so far (the old ones keep learning)."""
        return super().trainable(ctx) + self.magnitudes[: self.pet.branch_count()]

    def state_dict(self) -> dict[str, Any]:
        return {"magnitudes": torch.stack([m.detach() for m in self.magnitudes]).cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        values = state["magnitudes"]
        self._grow(len(values))
        with torch.no_grad():
            for m, v in zip(self.magnitudes, values):
                m.copy_(v)

    def report(self) -> dict[str, Any]:
        out = super().report()  # the PET's branches, parameters and bytes; the magnitudes add one number per task
        out["trainable_now"] += len(self.magnitudes[: self.pet.branch_count()])
        out["sdlora_magnitudes"] = len(self.magnitudes)
        out["sdlora_last_magnitude"] = float(self.magnitudes[-1].detach())
        return out


__all__ = ["SDLoRA"]
