"""RAIL: regression-based analytic incremental learning on frozen CLIP image features (Xu et al., NeurIPS 2024,
"Advancing Cross-domain Discriminability in Continual Learning of Vision-Language Models", arXiv:2406.18868;
official code github.com/linghan1997/Regression-based-Analytic-Incremental-Learning).

Nothing is back-propagated and the backbone never changes. After each task one pass over the task's training
images (frozen, L2-normalised image features) fits a ridge-regression head from features to one-hot labels over
every class name learned so far; a new task's classes add zero columns to the head.

Primal form (``primal_RAIL.py`` 23-104): a fixed random expansion ``φ(x) = ReLU(E x)`` (``E``: ``hidden x d``,
no bias, PyTorch's ``nn.Linear`` initialisation U(-1/√d, 1/√d), drawn once from the run seed) and the recursive
least-squares update, batch by batch,

    R ← R − R Xᵀ (I + X R Xᵀ)⁻¹ X R,        W ← W + R Xᵀ (Y − X W),        R₀ = I / λ,  W₀ = 0,

whose result after any number of tasks is the joint ridge solution ``W = (Σ XᵀX + λI)⁻¹ Σ XᵀY`` on every task's
data at once (the official first task computes that inverse directly; the recursion from ``R₀ = I/λ`` gives the
same). λ = 0.1 (``regularization``).

Dual form (``dual_RAIL.py`` 93-119, ``utils.py`` 77-140): kernel ridge regression with the RBF kernel
``k(x, x') = exp(−γ ‖x − x'‖²)`` on the normalised features (no expansion), ``α = (K + λI)⁻¹ Y`` re-solved after
each task over the features of every task so far, predictions ``k(x, X) α``; λ = 0.001 (hard-coded in
``dual_RAIL.py``), γ = 0.1 (``gamma``).

Test-time fusion (``primal_RAIL.py`` 253-273, ``dual_RAIL.py`` 165-186), per image: zero-shot probabilities
``p = softmax(s · cos)`` over the head's class names (``s``: the model's logit scale; the official fixes 100); if
the zero-shot argmax is a class RAIL has learned, the image's output is ``0.2 p + 0.8 y`` with ``y`` the regression
head's *raw* outputs (not a softmax) on the learned names and 0 elsewhere (so an unlearned name keeps ``0.2 p``);
otherwise the output is ``p``. The official fuses probabilities with unnormalised regression outputs (which may be
negative); the suite's evaluator multiplies scores by the logit scale and takes a softmax, so
:meth:`RAILInference.scores` returns ``ψ(f) / s`` for the official output ``f``, with ``ψ`` strictly increasing:
``ψ(v) = log v`` for ``v ≥ ε`` and the linear continuation ``log ε + (v − ε)/ε`` below it (ε = 1e-12).
Hence the argmax of every image is the official one, images keep the official order per class (a threshold across
images, as the POPE probe uses, sees the same ranking), and the evaluator's probabilities are ``f / Σ f`` wherever
``f > ε`` (the official's output renormalised; negative outputs get probability ~0). A head with no learned name
(a control set, the probe's concepts, an unseen head) gets the zero-shot cosines themselves.

Options: ``form`` ``dual`` (default: the paper's headline rows, e.g. MTIL Order I, are RAIL-dual) or ``primal``;
``hidden`` (primal expansion width; default ``None``: the scaling rule ``round(15000 · d / 512)``, capped at 15000
— the official 15,000 for ViT-B/16's 512-d features, the same expansion ratio (~29.3x) for other widths: tiny-clip
(d 64) 1875, micro-clip (d 32) 938); ``ridge`` λ (primal, 0.1); ``kernel_ridge`` λ (dual, 0.001); ``gamma`` γ
(dual, 0.1: unchanged for any width, the features are unit vectors so squared distances lie in [0, 4] whatever
``d``); ``fusion`` (0.8, the weight of the regression output).

Protocol: no task identity (a task boundary only: the fit after each task), routing ``per-sample`` (each image
decides alone, from its own zero-shot argmax, whether the regression head answers), no extra forward pass per step
(there are no steps; one feature pass over each task's training split). Memory: the primal form keeps nothing of
the data but ``R`` and ``W`` (fixed size), so ``memory`` is 0. The dual form keeps the frozen *features* of every
training image seen and re-solves the kernel ridge over them after each task: the training examples of earlier
tasks (as features) are used again, which the suite's boards count as a replay memory; its ``memory`` is the
number of stored features (``method.protocol`` is re-read after every task), so rehearsal-free boards refuse it.
Hence the default ``form`` is **primal**, the form that meets the boards' rule; the paper's headline numbers
(MTIL, X-TAIL) are the dual form's: ``--method-option form=dual`` runs it, unranked.

Departures, with reasons:

- The runner calls ``after_task`` only for training methods, so RAIL declares ``trains = True`` with no trainable
  parameters (``trainable`` answers ``[]``: no optimiser, no step runs) and fits in ``after_task``.
- Features come from one ordered pass over the task's training split with the evaluation path's preprocessing
  (every image once, no augmentation); the official loader draws CoOp's training augmentation once
  (``augmentation_time: 1``). A streamed (sharded) training split is read as one epoch of ``ctx.batches``.
- The recursion and the kernel solve run in float64 with a Cholesky-based solve (official: float32 and
  ``pinverse``; same mathematics, no drift from the joint solution over many batches). Batches of 128 (official).
- Zero-shot text features are the suite's template-averaged class prompts (official: "a photo of a {}.").
- The fusion's zero-shot softmax runs over the head's names (official: over every class name of the sequence,
  which is the class-incremental head here). Class names are the regression head's columns, so a domain-incremental
  sequence's recurring classes share a column.
- Only the fused score is returned; the official also prints zero-shot and adapter-only accuracies.
"""
from __future__ import annotations

import math
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F

from suite.data.base import TaskData
from suite.data.loading import batch_images
from suite.methods.base import Method, Option, RunContext
from suite.models.inference import FROZEN, Encode, Inference, Routed, frozen

OFFICIAL_HIDDEN, OFFICIAL_WIDTH = 15000, 512  # primal_RAIL's hidden_dim for ViT-B/16's 512-d features
CHUNK = 128  # the official batch size (features are collected and the recursion runs per chunk)
EPS = 1e-12  # below it the score map continues linearly (see the module docstring)


def hidden_for(width: int) -> int:
    """The primal expansion width for image features of ``width`` dims: the official ratio, capped at 15000."""
    return int(min(OFFICIAL_HIDDEN, max(1, round(OFFICIAL_HIDDEN * width / OFFICIAL_WIDTH))))


def expansion_matrix(width: int, hidden: int, seed: int) -> torch.Tensor:
    """The fixed random expansion ``E`` (``hidden x width``): nn.Linear's default U(-1/√width, 1/√width), seeded."""
    g = torch.Generator().manual_seed(int(seed))
    bound = 1.0 / math.sqrt(width)
    return (torch.rand(hidden, width, generator=g, dtype=torch.float32) * 2 - 1) * bound


def rbf_kernel(x: torch.Tensor, y: torch.Tensor, gamma: float) -> torch.Tensor:
    """``exp(−γ ‖x_i − y_j‖²)`` (float64)."""
    x, y = x.double(), y.double()
    d2 = (x.pow(2).sum(1, keepdim=True) + y.pow(2).sum(1)[None] - 2 * x @ y.T).clamp_min_(0)
    return torch.exp(-gamma * d2)


def rls_update(R: torch.Tensor, W: torch.Tensor, X: torch.Tensor, Y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One recursive least-squares step on a batch (``X``: ``B x h``, ``Y``: ``B x K``):
    ``R ← R − R Xᵀ (I + X R Xᵀ)⁻¹ X R``, then ``W ← W + R Xᵀ (Y − X W)`` with the new ``R``."""
    RXt = R @ X.T
    S = torch.eye(len(X), dtype=R.dtype, device=R.device) + X @ RXt
    L = torch.linalg.cholesky(S)
    R = R - RXt @ torch.cholesky_solve(RXt.T, L)
    R = 0.5 * (R + R.T)
    W = W + R @ X.T @ (Y - X @ W)
    return R, W


def score_map(f: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """ψ: ``log v`` for ``v ≥ eps``, ``log eps + (v − eps)/eps`` below; strictly increasing and continuous."""
    return torch.where(f >= eps, torch.log(f.clamp_min(eps)), math.log(eps) + (f - eps) / eps)


class RAIL(Method):
    name = "rail"
    trains = True  # the runner calls after_task only for training methods; trainable() is empty: no step runs
    needs_pet = False
    text_changes = False
    tracks: ClassVar[tuple[str, ...] | None] = ("class-incremental", "domain-incremental")

    OPTIONS: ClassVar[dict[str, Option]] = {
        "form": Option("primal", (str,), choices=("primal", "dual")),
        "hidden": Option(None, (int,), low=1, high=100000),
        "ridge": Option(0.1, (float,), low=0.0, open_low=True),
        "kernel_ridge": Option(0.001, (float,), low=0.0, open_low=True),
        "gamma": Option(0.1, (float,), low=0.0, open_low=True),
        "fusion": Option(0.8, (float,), low=0.0, high=1.0),
    }
    PROTOCOL: ClassVar[dict[str, Any]] = {"task_id_train": False, "task_id_test": False, "memory": 0,
                                          "routing": "per-sample", "extra_forward": 0}

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.classes: list[str] = []  # the regression head's columns, by class name, in the order learned
        self.seed = 0
        self.width = 0
        self.expansion: torch.Tensor | None = None  # primal: E (hidden x d)
        self.R: torch.Tensor | None = None          # primal: (Σ XᵀX + λI)⁻¹ (hidden x hidden, float64)
        self.W: torch.Tensor | None = None          # primal: hidden x classes (float64)
        self.features: torch.Tensor | None = None   # dual: every stored training feature (N x d)
        self.labels: torch.Tensor | None = None     # dual: their class columns (N,)
        self.alpha: torch.Tensor | None = None      # dual: (K + λI)⁻¹ Y (N x classes, float64)
        self.tasks_done = 0

    @property
    def protocol(self) -> dict[str, Any]:
        """The dual form's memory is every stored training feature (see the module docstring)."""
        stored = 0 if self.primal or self.features is None else int(len(self.features))
        return {**super().protocol, "memory": stored}

    @property
    def primal(self) -> bool:
        return self.options["form"] == "primal"

    @property
    def hidden(self) -> int:
        h = self.options["hidden"]
        return int(h) if h is not None else hidden_for(self.width)

    # hooks ------------------------------------------------------------------------------------------
    def setup(self, ctx: RunContext) -> None:
        self.seed = int(ctx.seed)
        bb = ctx.backbone
        with torch.no_grad():
            probe = torch.zeros(1, 3, bb.image_size, bb.image_size, device=ctx.device)
            self.width = int(bb.encode_image(probe).shape[-1])
        if self.primal:
            self.expansion = expansion_matrix(self.width, self.hidden, self.seed).to(ctx.device)
            self.R = torch.eye(self.hidden, dtype=torch.float64, device=ctx.device) / float(self.options["ridge"])
            self.W = torch.zeros(self.hidden, 0, dtype=torch.float64, device=ctx.device)

    def trainable(self, ctx: RunContext) -> list[torch.nn.Parameter]:
        return []

    def after_task(self, ctx: RunContext, t: int) -> None:
        data = ctx.task_data
        feats, labels = self.collect(ctx, data)
        self.fit(feats, labels)
        self.tasks_done = t + 1

    def learn_classes(self, names: list[str]) -> list[int]:
        """The head's column of each name, adding the new ones (zero columns in ``W``)."""
        for n in names:
            if n not in self.classes:
                self.classes.append(n)
        if self.W is not None and self.W.shape[1] < len(self.classes):
            pad = self.W.new_zeros(self.W.shape[0], len(self.classes) - self.W.shape[1])
            self.W = torch.cat([self.W, pad], 1)
        return [self.classes.index(n) for n in names]

    @torch.no_grad()
    def collect(self, ctx: RunContext, data: TaskData) -> tuple[torch.Tensor, torch.Tensor]:
        """The frozen, normalised features of every training image of ``data`` and their head columns."""
        columns = torch.as_tensor(self.learn_classes(list(data.classnames)), dtype=torch.long)
        bb, feats, labels = ctx.backbone, [], []
        if data.train_stream is not None and ctx.batches is not None:
            batches = ((b["images"], b["labels"]) for b in ctx.batches(data, max(1, math.ceil(len(data.train) / ctx.batch_size))))
        else:
            n = len(data.train)
            batches = ((batch_images(bb, data.train, range(i, min(n, i + CHUNK))),
                        torch.as_tensor(data.train.labels[i:i + CHUNK])) for i in range(0, n, CHUNK))
        for images, y in batches:
            feats.append(F.normalize(bb.encode_image(images).float(), dim=-1))
            labels.append(columns[torch.as_tensor(y).long().cpu()])
        if not feats:
            return torch.zeros(0, self.width, device=ctx.device), torch.zeros(0, dtype=torch.long)
        return torch.cat(feats), torch.cat(labels)

    @torch.no_grad()
    def fit(self, feats: torch.Tensor, labels: torch.Tensor) -> None:
        """Add one task's features (``N x d``, normalised) with their head columns to the regression head."""
        K = len(self.classes)
        if self.primal:
            for i in range(0, len(feats), CHUNK):
                X = self.expand(feats[i:i + CHUNK]).double()
                Y = F.one_hot(labels[i:i + CHUNK].to(X.device), K).double()
                self.R, self.W = rls_update(self.R, self.W, X, Y)
            return
        feats = feats.float()
        self.features = feats if self.features is None else torch.cat([self.features, feats.to(self.features.device)])
        labels = labels.to(self.features.device)
        self.labels = labels if self.labels is None else torch.cat([self.labels, labels])
        self.alpha = self.solve_dual()

    def solve_dual(self) -> torch.Tensor:
        """``α = (K + λI)⁻¹ Y`` over every stored feature (Cholesky, float64)."""
        X = self.features
        G = rbf_kernel(X, X, float(self.options["gamma"]))
        G.diagonal().add_(float(self.options["kernel_ridge"]))
        Y = F.one_hot(self.labels, len(self.classes)).double()
        return torch.cholesky_solve(Y, torch.linalg.cholesky(G))

    def expand(self, feats: torch.Tensor) -> torch.Tensor:
        return torch.relu(feats.float() @ self.expansion.to(feats.device).T)

    @torch.no_grad()
    def predict(self, feats: torch.Tensor) -> torch.Tensor:
        """The regression head's raw outputs (``N x`` learned classes, float64)."""
        if self.primal:
            return self.expand(feats).double() @ self.W.to(feats.device)
        return rbf_kernel(feats, self.features.to(feats.device), float(self.options["gamma"])) @ self.alpha.to(feats.device)

    def inference(self, ctx: RunContext) -> Inference | None:
        return RAILInference(self, float(ctx.backbone.logit_scale_value.detach().float()), float(self.options["fusion"]))

    # state ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"form": self.options["form"], "classes": list(self.classes), "seed": self.seed,
                                 "width": self.width, "tasks_done": self.tasks_done}
        for key in ("expansion", "R", "W", "features", "labels", "alpha"):
            value = getattr(self, key)
            if value is not None:
                state[key] = value.detach().cpu()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.classes = list(state.get("classes", []))
        self.seed, self.width = int(state.get("seed", self.seed)), int(state.get("width", self.width))
        self.tasks_done = int(state.get("tasks_done", 0))
        for key in ("expansion", "R", "W", "features", "labels", "alpha"):
            if key in state:
                old = getattr(self, key)
                setattr(self, key, state[key].to(old.device) if old is not None else state[key])

    def report(self) -> dict[str, Any]:
        nbytes = lambda t: int(t.numel() * t.element_size()) if t is not None else 0  # noqa: E731
        parts = {"rail_expansion_bytes": nbytes(self.expansion), "rail_R_bytes": nbytes(self.R),
                 "rail_W_bytes": nbytes(self.W), "rail_feature_bytes": nbytes(self.features) + nbytes(self.labels),
                 "rail_alpha_bytes": nbytes(self.alpha)}
        return {**parts, "rail_bytes": sum(parts.values()), "rail_classes": len(self.classes),
                "rail_hidden": self.hidden if self.primal else 0,
                "rail_stored_features": int(len(self.features)) if self.features is not None else 0}


class RAILInference(Inference):
    """Every image on the frozen model; its scores are the official fusion's, mapped by ψ (module docstring)."""

    def __init__(self, method: RAIL, scale: float, fusion: float):
        self.method, self.scale, self.fusion = method, scale, fusion

    def route(self, images: torch.Tensor) -> torch.Tensor:
        return torch.full((len(images),), FROZEN, dtype=torch.long)

    def text_route(self, route: int) -> int:
        return FROZEN

    def encode_images(self, images: torch.Tensor, encode: Encode) -> Routed:
        """Every image on the frozen model, which never changes: kept per test batch for the run."""
        return Routed(frozen(images, "rail-features", lambda: encode(images)), self.route(images))

    def fused(self, cos: torch.Tensor, feats: torch.Tensor, names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The official output ``f`` (float64, images x names) and which images the regression head answered."""
        m = self.method
        p = torch.softmax(self.scale * cos.double(), -1)
        head = [j for j, n in enumerate(names) if n in m.classes]
        learned = torch.zeros(len(names), dtype=torch.bool, device=cos.device)
        learned[head] = True
        seen = learned[p.argmax(-1)]
        f = p.clone()
        if bool(seen.any()):
            y = m.predict(feats[seen])[:, [m.classes.index(names[j]) for j in head]].to(p)
            adapted = p.new_zeros(int(seen.sum()), len(names))
            adapted[:, head] = y
            f[seen] = (1 - self.fusion) * p[seen] + self.fusion * adapted
        return f, seen

    def scores(self, images: Routed, text: Callable[[int], torch.Tensor], names: list[str] | None) -> torch.Tensor:
        cos = images.features.float() @ text(FROZEN).float().T
        if names is None or not any(n in self.method.classes for n in names) or len(images) == 0:
            return cos  # nothing RAIL learned is in this head: the zero-shot model
        f, _ = self.fused(cos, images.features, list(names))
        return (score_map(f) / self.scale).float()


__all__ = ["RAIL", "RAILInference", "expansion_matrix", "hidden_for", "rbf_kernel", "rls_update", "score_map"]
