"""InfLoRA: interference-free low-rank adaptation (Liang & Li, CVPR 2024, arXiv:2404.00228).

Official code: github.com/liangyanshuo/InfLoRA — ``methods/inflora.py`` (``InfLoRA._train`` lines 88–208: which
parameters train, the no-grad pass before the task that designs the new branch, lines 116–160, and the pass after
it that feeds DualGPM, lines 188–208; ``update_DualGPM`` lines 321–412), ``models/vit_inflora.py``
(``Attention_LoRA``: the input covariance ``cur_matrix``, line 237; the branches summed into k and v, line 246) and
``configs/mimg*_inflora.json`` (defaults).

The mechanism, as the suite runs it on its LoRA PET (:class:`~suite.methods.branching.PerTaskBranches`):

1. Task ``t`` trains its own LoRA branch ``(A_t, B_t)``; opening it freezes every earlier branch; the model always
   sums every branch (no task id at test). In our naming ``A`` (r x d_in) is the **down**-projection and ``B``
   (d_out x r, zero at init) the up-projection. The official code calls the designed down-projection ``lora_A``;
   the paper calls that designed matrix **B** (and the trained up-projection A). Here: our ``A`` = code's
   ``lora_A`` = paper's B (designed, frozen); our ``B`` = code's ``lora_B`` = paper's A (trained).
2. Before the task, one no-grad pass over the task's whole training split accumulates the input covariance
   ``C = Σ xᵀx`` of every adapted layer (:meth:`InfLoRA.covariances`). The old tasks' DualGPM memory is removed from
   it — ``C − M Mᵀ C`` while ``M`` spans the old input space ("remove"), ``M Mᵀ C`` once ``M`` spans its complement
   ("retain") — and the new branch's ``A`` is set to the top-r left singular vectors of that residual, ``/√3``,
   then frozen. Only the new ``B`` trains (:meth:`InfLoRA.trainable`).
3. After the task, a second no-grad pass gives the task's covariance again (now through the trained branch), and
   DualGPM grows ``M`` (:class:`DualGPM`): threshold ``λ_t = (λe − λb)·t/T + λb`` (t counted from 0, T tasks,
   ``λe = 1``); energies are squared singular values of ``C`` (σ⁴ of the features). The first task keeps the
   ``#{i: cumsum(ratio)_i < λ}`` top directions (at least one); later tasks add the top directions of the
   projected representation ``C − M Mᵀ C`` until the captured energy reaches ``λ`` (or, in "retain" mode, drop
   directions of ``M Mᵀ C`` from the free space until what is left of it holds less than ``1 − λ``, then take the
   free basis as the leading left singular vectors of ``M − U_r U_rᵀ M``). Once a "remove" basis holds more than
   half the dimensions it is replaced by its complement ("retain").

Defaults (``configs/mimg{5,10,20}_inflora.json``, ImageNet-R, the configs closest to CLIP-scale natural images):
``λb = 0.98`` (CIFAR-100 and DomainNet use 0.95, the ``inflorab5`` ImageNet-R variant 0.99), ``λe = 1.0``, rank 10,
Adam lr 5e-4, batch 128, 50 epochs. The rank is **the LoRA PET's** (``--pet-opt rank=…``, the suite's LoRA default
4), and so are the adapted maps: the official code adapts k and v only; the board runs the sequence's LoRA PET shape
(``targets``, default q,k,v,out), so every adapted map gets a designed branch. The maps that read the same input (q,
k, v of one block, as the official k and v share ``cur_matrix``) share one covariance and one DualGPM memory.

Departures, each with its reason:

- Scale: the official forward adds ``Σ_t B_t A_t x`` with no ``α/r``; ``scale: official`` (default) sets every
  branch's multiplier to 1 through :attr:`~suite.pet.lora.LoRALinear.branch_scales`. ``scale: pet`` keeps the
  PET's ``α/r``; a number sets it.
- The covariance is a plain sum, not the official running mean over tokens: a positive factor changes neither the
  singular vectors nor the energy ratios.
- First task with a basis of at least d/2 directions: the official code labels it "retain" without taking its
  complement (and its own summary ``assert`` then fails when it is above d/2); we keep it as "remove" and let the
  same summary step complement it when it is above d/2, which is what the label means.
- Degenerate residual (the old space leaves fewer than r free directions with energy): singular vectors with zero
  singular value are arbitrary, so each designed row is projected onto the free space (an exact no-op otherwise).
- ``collect_images``: the official passes see the whole training split; the default (None) does too, a number caps
  it (the last, partial batch of an epoch is left out by the suite's batching).
- The classifier: the official ViT trains a per-task linear head beside the branch; the suite's CLIP classifies
  with the text tower, which trains only if the PET's towers include it.
- The text tower: the official code adapts a vision transformer only. Where the LoRA PET also covers the text
  tower (the suite's default ``towers: both``), its branches are designed the same way, from the covariance of
  every token position the text blocks see — padding positions after the end token included, which never reach
  the pooled text feature; a review found this and it is left as is (the board's records were made so).
  ``--pet-options towers=vision`` gives the official scope.
- The official code also clusters each task's features (KMeans) into keys that nothing reads at test; left out.

Protocol: task boundaries only. The branch that trains is the newest one, chosen by time (a new branch at each
boundary), not by any task identity inside training; all branches are summed at test (routing none). No extra
forward per training step, but **two extra no-grad passes over the task's training data per task** (before:
design; after: DualGPM), plus a d x d covariance per input group while they run.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from suite.errors import ConfigError
from suite.methods.base import Option, RunContext
from suite.methods.branching import PerTaskBranches

A_SCALE = 1.0 / math.sqrt(3.0)  # methods/inflora.py lines 127, 154: U[:, :r].T / sqrt(3)
SHARED_INPUT_ROLES = ("q", "k", "v")  # read the same x in CLIP's self-attention: one covariance, one memory


def _unit_scales(layer: nn.Module) -> list[float]:
    """Every branch adds ``B_i A_i x`` unscaled, as the official forward (``models/vit_inflora.py`` line 246)."""
    return [1.0] * len(layer.branch_list())


class DualGPM:
    """The old tasks' input space of one layer group: ``M`` (d x k, orthonormal) spans it ("remove") or, once it
    is more than half full, its orthogonal complement ("retain"); ``methods/inflora.py`` ``update_DualGPM``."""

    def __init__(self, dim: int):
        self.dim = int(dim)
        self.M = torch.zeros(self.dim, 0, dtype=torch.float64)
        self.mode = "remove"
        self.started = False  # the first update uses the first-task rule

    @property
    def occupied(self) -> int:
        """Directions of the old tasks' space."""
        return self.M.shape[1] if self.mode == "remove" else self.dim - self.M.shape[1]

    def old_basis(self) -> torch.Tensor:
        """An orthonormal basis of the old tasks' space (the complement of ``M`` in "retain" mode)."""
        if self.mode == "remove":
            return self.M
        return _complement(self.M, self.dim)

    def residual(self, cov: torch.Tensor) -> torch.Tensor:
        """``cov`` with the old space removed on the left: ``C − M Mᵀ C`` or, in "retain" mode, ``M Mᵀ C``."""
        kept = self.M @ (self.M.T @ cov)
        return cov - kept if self.mode == "remove" else kept

    def to_free(self, vecs: torch.Tensor) -> torch.Tensor:
        """Columns of ``vecs`` projected onto the complement of the old space."""
        kept = self.M @ (self.M.T @ vecs)
        return vecs - kept if self.mode == "remove" else kept

    @torch.no_grad()
    def update(self, cov: torch.Tensor, threshold: float) -> int:
        """Grow the memory from this task's covariance ``cov`` (d x d); returns the old-space directions added."""
        cov = cov.to(torch.float64)
        before = self.occupied
        if not self.started:
            U, S, _ = torch.linalg.svd(cov, full_matrices=False)
            energy = S * S
            total = float(energy.sum())
            if total > 0.0:
                ratio = torch.cumsum(energy, 0) / total
                r = max(int((ratio < threshold).sum()), 1)
                self.M = U[:, :r].contiguous()
                self.started = True
        else:
            total = float((cov * cov).sum())  # Σ S1² of C
            if total > 0.0:
                U, S, _ = torch.linalg.svd(self.residual(cov), full_matrices=False)
                ratio = (S * S) / total
                cum = torch.cumsum(ratio, 0)
                n = ratio.shape[0]
                if self.mode == "remove":
                    acc = (total - float((S * S).sum())) / total  # energy already in the old space
                    r = 0 if acc >= threshold else min(n, int((acc + cum < threshold).sum()) + 1)
                    if r:
                        self.M = torch.cat([self.M, U[:, :r]], dim=1)[:, : self.dim].contiguous()
                else:
                    free = float(cum[-1]) if n else 0.0  # energy still in the free space
                    r = 0 if free < 1.0 - threshold else min(n, int((free - cum >= 1.0 - threshold).sum()) + 1)
                    r = min(r, self.M.shape[1])
                    if r:
                        Ur = U[:, :r]
                        left = self.M - Ur @ (Ur.T @ self.M)
                        Ui, _, _ = torch.linalg.svd(left, full_matrices=True)
                        self.M = Ui[:, : self.M.shape[1] - r].contiguous()
        if self.mode == "remove" and self.M.shape[1] > self.dim / 2:  # the summary step (lines 402–408)
            self.M = _complement(self.M, self.dim)
            self.mode = "retain"
        return self.occupied - before

    def state_dict(self) -> dict[str, Any]:
        return {"dim": self.dim, "M": self.M.clone(), "mode": self.mode, "started": int(self.started)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.dim, self.mode = int(state["dim"]), str(state["mode"])
        self.M = state["M"].to(torch.float64).cpu()
        self.started = bool(state["started"])


def _complement(M: torch.Tensor, dim: int) -> torch.Tensor:
    """An orthonormal basis of the orthogonal complement of span(M) (the trailing left singular vectors)."""
    if M.shape[1] == 0:
        return torch.eye(dim, dtype=torch.float64)
    U, _, _ = torch.linalg.svd(M, full_matrices=True)
    return U[:, M.shape[1]:].contiguous()


class InfLoRA(PerTaskBranches):
    name = "inflora"

    OPTIONS = {"lambda_b": Option(0.98, (float,), low=0, high=1, open_low=True),
               "lambda_e": Option(1.0, (float,), low=0, high=1, open_low=True),
               "scale": Option("official", (float, str), low=0, open_low=True, choices=("official", "pet")),
               "collect_images": Option(None, (int,), low=1)}
    PROTOCOL = {"task_id_train": False, "task_id_test": False, "memory": 0, "routing": "none", "extra_forward": 0}

    def __init__(self, **options: Any):
        super().__init__(**options)
        if float(self.options["lambda_b"]) > float(self.options["lambda_e"]):
            raise ConfigError(f"method inflora: lambda_b {self.options['lambda_b']} must not exceed "
                              f"lambda_e {self.options['lambda_e']}")

    def setup(self, ctx: RunContext) -> None:
        super().setup(ctx)
        self.n_tasks = len(ctx.sequence.tasks)
        # layer groups: the maps that read the same input share one covariance and one DualGPM memory
        self.groups: dict[str, list[nn.Module]] = {}
        for layer in self.pet.pet_layers:
            prefix, _, role = layer.pet_name.rpartition(".")
            dim = int(layer.A.shape[1])
            key = f"{prefix}.qkv@{dim}" if role in SHARED_INPUT_ROLES and prefix else layer.pet_name
            self.groups.setdefault(key, []).append(layer)
        self.readers = {f"{layers[0].pet_name}.A": key for key, layers in self.groups.items()}
        self.memory = {key: DualGPM(int(layers[0].A.shape[1])) for key, layers in self.groups.items()}
        self.tasks_done = 0
        scale = self.options["scale"]
        for layer in self.pet.pet_layers:
            if scale == "official":
                layer.branch_scales = _unit_scales
            elif scale != "pet":
                layer.branch_scales = _FixedScales(float(scale))

    # -- the two no-grad passes ---------------------------------------------------------------------------
    def collect_batches(self, ctx: RunContext) -> int:
        """Batches of one pass: the whole training split (official), or ``collect_images`` of it."""
        images = len(ctx.task_data.train)
        if self.options["collect_images"]:
            images = min(images, int(self.options["collect_images"]))
        return max(1, images // ctx.batch_size) if images >= ctx.batch_size else 1

    @torch.no_grad()
    def covariances(self, ctx: RunContext) -> dict[str, torch.Tensor]:
        """``Σ xᵀx`` of every layer group's input over the task's training data, under the current weights."""
        acc: dict[str, torch.Tensor] = {}

        def sink(key: str, feats: torch.Tensor) -> None:
            group = self.readers.get(key)
            if group is None:
                return
            x = feats.detach().reshape(-1, feats.shape[-1]).float()
            cov = (x.T @ x).to(torch.float64)
            acc[group] = cov if group not in acc else acc[group] + cov

        ctx.pet.set_sink(sink)
        try:
            for batch in ctx.batches(ctx.task_data, self.collect_batches(ctx)):
                ctx.task_loss(batch)
        finally:
            ctx.pet.set_sink(None)
        return {k: v.cpu() for k, v in acc.items()}

    # -- hooks ---------------------------------------------------------------------------------------------
    def before_task(self, ctx: RunContext, t: int) -> None:
        super().before_task(ctx, t)  # branch t is open (and every earlier one frozen)
        covs = self.covariances(ctx)
        with torch.no_grad():
            for key, layers in self.groups.items():
                cov = covs.get(key)
                for layer in layers:
                    A = layer.branch_list()[-1]["A"]
                    if cov is not None:
                        A.copy_(self.design(key, cov, A.shape[0]).to(device=A.device, dtype=A.dtype))
                    A.requires_grad_(False)

    def design(self, key: str, cov: torch.Tensor, rank: int) -> torch.Tensor:
        """The new branch's down-projection (r x d): the top-``rank`` left singular vectors of the covariance with
        the old space removed, ``/√3`` (``methods/inflora.py`` lines 122–160)."""
        memory = self.memory[key]
        U, _, _ = torch.linalg.svd(memory.residual(cov.to(torch.float64)), full_matrices=False)
        return (memory.to_free(U[:, :rank]) * A_SCALE).T.contiguous()

    def trainable(self, ctx: RunContext) -> list[nn.Parameter]:
        """Only the open branch's up-projections ``B`` (the official code enables ``lora_B_*.<task>`` only)."""
        return [branch["B"] for branch in self.current()]

    def threshold(self, t: int) -> float:
        """``λ_t = (λe − λb)·t/T + λb`` (``methods/inflora.py`` line 322; t from 0)."""
        lb, le = float(self.options["lambda_b"]), float(self.options["lambda_e"])
        return (le - lb) * t / max(1, self.n_tasks) + lb

    def after_task(self, ctx: RunContext, t: int) -> None:
        covs = self.covariances(ctx)
        threshold = self.threshold(t)
        for key, cov in covs.items():
            self.memory[key].update(cov, threshold)
        self.tasks_done = t + 1

    # -- state and record ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"tasks_done": self.tasks_done, "memory": {k: m.state_dict() for k, m in self.memory.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tasks_done = int(state["tasks_done"])
        for key, s in state["memory"].items():
            if key not in self.memory:
                raise ConfigError(f"method inflora: the checkpoint's DualGPM layer {key!r} is not in this PET")
            self.memory[key].load_state_dict(s)

    def report(self) -> dict[str, Any]:
        mem = self.memory.values()
        return {**super().report(),
                "basis_bytes": int(sum(m.M.numel() * m.M.element_size() for m in mem)),
                "basis_directions": int(sum(m.occupied for m in mem)),
                "basis_directions_per_space": {k: m.occupied for k, m in self.memory.items()},
                "basis_dims_per_space": {k: m.dim for k, m in self.memory.items()},
                "retain_spaces": int(sum(m.mode == "retain" for m in mem)),
                "saturated_spaces": int(sum(m.occupied >= m.dim for m in mem)),
                "spaces": len(self.memory),
                "extra_passes_per_task": 2}


class _FixedScales:
    """Every branch multiplied by one number (``scale: <number>``)."""

    def __init__(self, value: float):
        self.value = value

    def __call__(self, layer: nn.Module) -> list[float]:
        return [self.value] * len(layer.branch_list())


__all__ = ["DualGPM", "InfLoRA"]
