"""DIKI (Tang et al., "Mind the Interference: Retaining Pre-trained Knowledge in Parameter Efficient Continual
Learning of Vision-Language Models", ECCV 2024, arXiv:2407.05342): one set of key/value prefixes per task in the
first blocks of both CLIP towers, read by a *separate* attention term added to the block's own attention output,

    Attn(x) = softmax(q Kᵀ/√d_h) V  +  w · softmax(q P_kᵀ/√d_h) P_v,

with ``P_v = 0`` at initialisation (so the model starts as the frozen one, bit for bit). Before a task trains,
the mean and covariance of the frozen model's normalised image features over its training data are stored; at
test each image takes the task of the highest Gaussian log-likelihood ``logp`` of its frozen feature, and the
prefixes' term is scaled by the calibrated weight ``w = sigmoid(logp / s - 1)`` of that image (``s = 512`` in the
official code, ViT-B/16's feature dimension; see *Departures*). Training task ``t`` uses prefixes ``t`` at weight 1.

Official code read (facts only, no code taken): lloongx/DIKI.

- Residual attention: ``clip/attention.py`` 135-142 — the block's own SDPA over its keys and values, then a second
  SDPA of the same queries over the prefix keys/values with no mask (the text tower's causal mask stays on the
  block's own term), multiplied per sample by ``batch_weight`` (140) and added before the output projection.
  Prefix keys and values are learned directly per head (``prefix[:, 0]``, ``prefix[:, 1]`` split into heads,
  86-87 and 117-133: no in-projection). Here: :class:`ResidualPrefix`, an ``attn.sources`` branch of
  :class:`suite.models.attention.SplitAttention` (the slot that adds a separately softmaxed term to the block's
  attention output before ``out``; registered with :func:`suite.pet.kv.register_source`).
- Initialisation: ``clip/attention.py`` 167-173 — a pool of ``nb_task`` prefixes of ``(2, length, width)``, all
  zero, then the key half drawn U(-1, 1): ``P_v = 0``, ``P_k ~ U(-1, 1)`` for every task's prefix.
- Placement: ``clip/model.py`` 207-219 (``prompts_needed > i``: the first ``depth`` blocks of a tower), 240-242
  (vision), 314-323 (text): both towers, ``prompt_depth_vision = prompt_depth_text = 8``, ``n_ctx_vision =
  n_ctx_text = 8`` (``configs/MTIL.yaml``); ``DIKI/DIKI.py`` 39-43.
- What trains: ``DIKI/DIKI.py`` 223-231 (``prefix_pool`` only; the whole pool is in SGD with weight decay 0, but
  only task ``t``'s rows are in the forward at train, so only they move). Here only task ``t``'s prefixes are in
  the optimiser of task ``t``.
- Training forward: ``DIKI/DIKI.py`` 162-166 and 184-189 — the given task id selects the prefixes of both towers,
  ``batch_weight = text_batch_weight = None`` (weight 1).
- Statistics: ``DIKI/DIKI.py`` 361-376 — one no-grad pass of the frozen image encoder over the task's training
  loader, normalised features, mean, unbiased covariance ``δᵀδ / (n - 1)`` plus ``1e-7 · I``, before training.
- Test: ``DIKI/DIKI.py`` 157-160 (frozen, normalised image feature) and 167-180 — ``MultivariateNormal(mean_k,
  cov_k).log_prob`` for every learned task, top-1, ``w = sigmoid(logp / 512 - 1)`` per image for the image tower,
  and for the text tower ``text_batch_weight`` = the mean of the batch's ``w``; with ``batchwise_prompt`` the
  batch votes one task (the most frequent top-1, 176-180).
- Budget: ``configs/MTIL.yaml`` — SGD, lr 5.0, cosine, 10 epochs, batch 128, weight decay 0, no warm-up.

Defaults: length 8, the first 8/12 of each tower's blocks (see below), ``ridge`` 1e-7, per-image routing.

Departures, with reasons:

- **Per-image routing and weight at test.** The official config ships ``batchwise_prompt: True``: the batch's
  majority task serves every image of the batch, which reveals the task when a test batch holds one task. Here
  each image takes its own most likely task and its own ``w``; an image's features depend on that image alone.
  Option ``batchwise: true`` reproduces the vote (ties to the smallest task id; each image keeps its own ``w`` in
  the image tower, as the official ``batch_weight``), and its records state ``routing: per-batch``.
- **Text side at test.** Officially the class prompts are encoded with the voted task's text prefixes at weight
  ``mean(w)`` over the batch. The per-image equivalent (a batch of one image) is the image's own task's text
  prefixes at the image's own ``w``: each image is scored against class features encoded that way. Text features
  are cached per route, so the text weight is ``w`` rounded to a grid of ``text_levels`` steps (16: an error of
  at most 1/32 in the text tower's weight; the image tower uses ``w`` exactly). Every distinct (task, level) among
  a step's test images encodes every class head once more: at 64 levels one evaluation step of
  world-class-incremental encoded 555 heads and took 294 s (2-core AMD EPYC, loaded), so 16 (``text_levels: 64``
  for a closer text weight). A route is ``task ·
  (text_levels + 1) + round(w · text_levels)``. With ``batchwise`` the text weight is the batch's mean ``w``.
- **Calibration scale.** The official divides ``logp`` by 512, the feature dimension of ViT-B/16 (the log-density
  of a ``d``-dimensional Gaussian grows with ``d``). ``scale: "dim"`` (default) divides by the backbone's feature
  dimension: 512 on ViT-B/16 (the official value), 64 on the embedded tiny CLIP; a number sets it explicitly.
- **Depth.** ViT-B/16 has 12 blocks per tower and prefixes in the first 8. ``vision_depth``/``text_depth``
  ``"auto"`` take the first ``max(1, round(8n/12))`` blocks of a tower of ``n`` (12 -> 8; the embedded tiny CLIP,
  vision 4 -> 3, text 3 -> 2; the micro CLIP, 2 -> 1). Length 8 is kept: the prefixes have their own softmax,
  so their number does not compete with the image's token count.
- **Numerics.** Prefixes are float32 parameters (the official pool is float16); the Gaussian log-likelihood is
  computed in float64 through a Cholesky factor (the official ``MultivariateNormal`` in float32); if the
  covariance with the ``ridge`` is not positive definite in float64, the ridge is multiplied by 10 until it is.
  Statistics use ``ctx.batches`` over the whole training split once (the last incomplete batch dropped), summed
  over processes under torchrun.
- **Budget.** The official SGD at lr 5.0 for 10 epochs is not the suite's scale (AdamW, cosine, ~100 steps at
  batch 64, set per sequence): the board's rate is the sequence's ``pet_training: diki`` entry, the prefix form's
  budget by the sequence files' rule for prefix-injecting rivals, not tuned for DIKI.
- Classification is the suite's (CLIP text features of the task's or the sequence's classes), as the official.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from suite.errors import ConfigError
from suite.methods.base import Method, Option, RunContext
from suite.models.attention import SplitAttention, attend
from suite.models.inference import Encode, Inference, Routed, by_route, frozen
from suite.pet.base import MAX_TOKENS
from suite.pet.kv import register_source

OFFICIAL_BLOCKS, OFFICIAL_DEPTH = 12, 8  # ViT-B/16 (both towers), configs/MTIL.yaml prompt_depth_vision/text
OFFSET = 1.0  # w = sigmoid(logp / scale - OFFSET), DIKI/DIKI.py 171


@dataclass
class PrefixState:
    """What every DIKI prefix reads during a forward: the task whose prefixes answer (``None``: none, the frozen
    model) and the weight of their term (``None``: 1; a float; or one weight per sample of the batch)."""

    task: int | None = None
    weight: float | torch.Tensor | None = None


class ResidualPrefix(nn.Module):
    """One block's per-task prefixes ``P_k, P_v`` (``heads x length x head_dim`` each, learned directly) and the
    separate attention term ``w · softmax(q P_kᵀ / √d_h) P_v`` added to the block's own attention output."""

    def __init__(self, name: str, attn: SplitAttention, length: int, count: int, state: PrefixState):
        super().__init__()
        self.pet_name = name
        shape = (attn.num_heads, length, attn.head_dim)
        self.pk = nn.ParameterList([nn.Parameter(torch.rand(shape) * 2 - 1) for _ in range(count)])  # U(-1, 1)
        self.pv = nn.ParameterList([nn.Parameter(torch.zeros(shape)) for _ in range(count)])  # zero: identity
        self.state = state

    def contribute(self, q: torch.Tensor, attn: SplitAttention) -> torch.Tensor:
        s = self.state
        if s.task is None:
            return q.new_zeros(())  # adds an exact zero: the frozen block
        b = q.shape[0]
        pk = self.pk[s.task].to(q.dtype).unsqueeze(0).expand(b, -1, -1, -1)
        pv = self.pv[s.task].to(q.dtype).unsqueeze(0).expand(b, -1, -1, -1)
        out = attend(q, pk, pv)  # no mask: every token (the text tower's too) sees every prefix slot
        if s.weight is None:
            return out
        if isinstance(s.weight, torch.Tensor):
            return out * s.weight.to(device=out.device, dtype=out.dtype).view(-1, 1, 1, 1)
        return out * float(s.weight)


class DIKI(Method):
    """Per-task residual prefixes in both towers; each test image picks a task by the Gaussian likelihood of its
    frozen feature and weights the prefixes by its calibrated likelihood."""

    name = "diki"
    needs_pet = False
    text_changes = True

    OPTIONS = {"length": Option(8, (int,), low=1, high=MAX_TOKENS),
               "vision_depth": Option("auto", (int, str), low=0, choices=("auto",)),
               "text_depth": Option("auto", (int, str), low=0, choices=("auto",)),
               "scale": Option("dim", (float, str), low=0, open_low=True, choices=("dim",)),
               "ridge": Option(1e-7, (float,), low=0),
               "text_levels": Option(16, (int,), low=1, high=4096),
               "batchwise": Option(False, (bool,))}
    PROTOCOL = {"task_id_train": True, "routing": "per-sample"}

    def __init__(self, **options: Any):
        super().__init__(**options)
        if self.options["text_depth"] == 0:
            self.text_changes = False

    @property
    def protocol(self) -> dict[str, Any]:
        proto = super().protocol
        if self.options["batchwise"]:
            proto["routing"] = "per-batch"
        return proto

    @staticmethod
    def depth_for(blocks: int, depth: int | str = "auto") -> int:
        """Prefixed blocks of a tower of ``blocks``: the first 8/12 (at least one), or ``depth`` as given."""
        if depth == "auto":
            return max(1, round(OFFICIAL_DEPTH * blocks / OFFICIAL_BLOCKS)) if blocks else 0
        if int(depth) > blocks:
            raise ConfigError(f"method diki: depth {depth} exceeds the tower's {blocks} blocks")
        return int(depth)

    # -- setup -----------------------------------------------------------------------------------------
    def setup(self, ctx: RunContext) -> None:
        o = self.options
        visual = getattr(getattr(ctx.backbone, "model", None), "visual", None)
        if visual is None:
            raise ConfigError(f"method {self.name} puts prefixes in open_clip towers; "
                              f"{type(ctx.backbone).__name__} has none")
        n_tasks = max(len(ctx.sequence.tasks) if ctx.sequence is not None else 0, 1)
        self.state = PrefixState()
        self.layers: dict[str, list[ResidualPrefix]] = {}
        self.depths: dict[str, int] = {}
        self._undo: list = []
        for tower in ("vision", "text"):
            sites = ctx.backbone.blocks(tower)
            depth = self.depth_for(len(sites), o[f"{tower}_depth"])
            self.depths[tower] = depth
            self.layers[tower] = []
            for site in sites[:depth]:
                layer = ResidualPrefix(f"{self.name}.{tower}.{site.index}", site.attn, o["length"], n_tasks, self.state)
                register_source(site.attn, layer, self._undo)
                self.layers[tower].append(layer.to(ctx.device))
        self.dim = int(visual.output_dim)
        self.scale = float(self.dim if o["scale"] == "dim" else o["scale"])
        self.means = torch.zeros(n_tasks, self.dim, dtype=torch.float32)
        self.covars = torch.zeros(n_tasks, self.dim, self.dim, dtype=torch.float32)
        self.ridges = [0.0] * n_tasks  # the ridge each task's covariance needed (``ridge`` unless raised)
        self.learned = 0  # tasks with statistics (the official ``task_learnt``)
        self.tasks_done = 0
        self._chol: torch.Tensor | None = None  # float64 Cholesky factors of the learned tasks, built on demand
        self._params: list[nn.Parameter] = []
        self.device, self.backbone = ctx.device, ctx.backbone
        self.last_tasks: torch.Tensor | None = None  # per image of the last routed batch: its task and weight
        self.last_weights: torch.Tensor | None = None

    def all_layers(self) -> list[ResidualPrefix]:
        return self.layers["vision"] + self.layers["text"]

    @contextlib.contextmanager
    def active(self, task: int | None, weight: float | torch.Tensor | None = None) -> Iterator[None]:
        """Task ``task``'s prefixes in both towers at ``weight`` (``task`` None: the frozen model)."""
        before = (self.state.task, self.state.weight)
        self.state.task, self.state.weight = task, weight
        try:
            yield
        finally:
            self.state.task, self.state.weight = before

    # -- statistics and task inference -------------------------------------------------------------------
    @torch.no_grad()
    def collect(self, ctx: RunContext, t: int) -> None:
        """Mean and covariance of the frozen model's normalised image features over task ``t``'s training data."""
        data = ctx.task_data
        n_images = len(data.train)
        n_batches = max(1, n_images // ctx.batch_size) if n_images >= ctx.batch_size else 1
        total = torch.zeros(self.dim, dtype=torch.float64, device=ctx.device)
        outer = torch.zeros(self.dim, self.dim, dtype=torch.float64, device=ctx.device)
        count = torch.zeros((), dtype=torch.float64, device=ctx.device)
        with self.active(None):
            for batch in ctx.batches(data, n_batches):
                f = F.normalize(ctx.backbone.encode_image(batch["images"]).float(), dim=-1).to(torch.float64)
                total += f.sum(0)
                outer += f.T @ f
                count += len(f)
        if dist.is_available() and dist.is_initialized():
            for x in (total, outer, count):
                dist.all_reduce(x)
        n = float(count)
        if n < 2:
            raise ConfigError(f"method {self.name}: task {t + 1} has {int(n)} training image(s); its Gaussian needs 2")
        mean = total / n
        covar = (outer - n * torch.outer(mean, mean)) / (n - 1)
        self.means[t] = mean.float().cpu()
        self.covars[t] = covar.float().cpu()
        self.learned = max(self.learned, t + 1)
        self._chol = None

    def _factors(self) -> torch.Tensor:
        if self._chol is None or len(self._chol) != self.learned:
            eye = torch.eye(self.dim, dtype=torch.float64)
            factors = []
            for k in range(self.learned):
                ridge = float(self.options["ridge"])
                cov = self.covars[k].to(torch.float64)
                while True:
                    chol, info = torch.linalg.cholesky_ex(cov + ridge * eye)
                    if int(info) == 0:
                        break
                    ridge = max(ridge * 10, 1e-12)
                self.ridges[k] = ridge
                factors.append(chol)
            self._chol = torch.stack(factors).to(self.device)
        return self._chol

    @torch.no_grad()
    def log_likelihood(self, features: torch.Tensor) -> torch.Tensor:
        """``log N(f; mean_k, cov_k + ridge·I)`` of every (normalised, frozen) feature under every learned task,
        ``(N, tasks)`` in float64."""
        chol = self._factors()
        x = features.to(device=chol.device, dtype=torch.float64)
        delta = x.unsqueeze(0) - self.means[: self.learned].to(chol.device, torch.float64).unsqueeze(1)  # (T, N, d)
        z = torch.linalg.solve_triangular(chol, delta.transpose(1, 2), upper=False)  # (T, d, N)
        half_logdet = torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)  # (T,)
        logp = -0.5 * (z ** 2).sum(1) - half_logdet.unsqueeze(1) - 0.5 * self.dim * math.log(2 * math.pi)
        return logp.T

    def weight_of(self, logp: torch.Tensor) -> torch.Tensor:
        """The calibrated weight ``sigmoid(logp / scale - 1)``."""
        return torch.sigmoid(logp / self.scale - OFFSET)

    @torch.no_grad()
    def select(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per image, its task (argmax log-likelihood) and weight, from its frozen feature alone."""
        best, task = self.log_likelihood(features).max(dim=1)
        return task, self.weight_of(best)

    # -- training hooks -------------------------------------------------------------------------------
    def trainable(self, ctx: RunContext) -> list[nn.Parameter]:
        """Task ``t``'s prefixes of both towers: nothing of another task is in the optimiser."""
        t = max(ctx.task_index, 0)
        self._params = [p for layer in self.all_layers() for p in (layer.pk[t], layer.pv[t])]
        return self._params

    def before_task(self, ctx: RunContext, t: int) -> None:
        self.collect(ctx, t)  # the frozen model's statistics: the official computes them before training

    def loss(self, ctx: RunContext, batch: Any) -> torch.Tensor:
        with self.active(ctx.task_index):  # the task's prefixes in both towers at weight 1
            return ctx.task_loss(batch)

    def after_task(self, ctx: RunContext, t: int) -> None:
        self.tasks_done = t + 1

    def inference(self, ctx: RunContext) -> Inference | None:
        return DIKIInference(self) if self.learned else None

    # -- state ----------------------------------------------------------------------------------------
    def _tensors(self) -> dict[str, list[nn.Parameter]]:
        return {f"{kind}.{tower}": [p for layer in self.layers[tower] for p in getattr(layer, kind)]
                for tower in ("vision", "text") for kind in ("pk", "pv") if self.layers[tower]}

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {k: torch.stack([p.detach().cpu() for p in ps]) for k, ps in self._tensors().items()}
        state.update(means=self.means.clone(), covars=self.covars.clone(), learned=self.learned,
                     tasks_done=self.tasks_done)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for k, ps in self._tensors().items():
                if k not in state or tuple(state[k].shape) != (len(ps), *ps[0].shape):
                    got = tuple(state[k].shape) if k in state else None
                    raise ConfigError(f"method {self.name}: checkpoint {k} has shape {got}, "
                                      f"this run {(len(ps), *ps[0].shape)}")
                for p, v in zip(ps, state[k]):
                    p.copy_(v)
        if tuple(state["covars"].shape) != tuple(self.covars.shape):
            raise ConfigError(f"method {self.name}: checkpoint statistics {tuple(state['covars'].shape)}, "
                              f"this run {tuple(self.covars.shape)}")
        self.means.copy_(state["means"])
        self.covars.copy_(state["covars"])
        self.learned = int(state["learned"])
        self.tasks_done = int(state.get("tasks_done", 0))
        self._chol = None

    def report(self) -> dict[str, Any]:
        params = [p for ps in self._tensors().values() for p in ps]
        stats = self.means[: self.learned].numel() + self.covars[: self.learned].numel()
        return {"prefix_parameters": int(sum(p.numel() for p in params)),
                "prefix_bytes": int(sum(p.numel() * p.element_size() for p in params)),
                "statistics_bytes": int(stats * self.means.element_size()),
                "tasks_learned": int(self.learned), "vision_depth": self.depths["vision"],
                "text_depth": self.depths["text"]}


class DIKIInference(Inference):
    """Test time: each image's frozen feature picks its task and weight; the image is encoded with that task's
    prefixes at its own weight, and scored against class features encoded with the same task's text prefixes at
    that weight (rounded to ``text_levels`` steps). Route ``task · (levels + 1) + level``."""

    def __init__(self, method: DIKI):
        self.method = method
        self.levels = int(method.options["text_levels"])

    def _frozen(self, images: torch.Tensor, encode: Encode) -> torch.Tensor:
        def compute() -> torch.Tensor:
            with self.method.active(None):
                return encode(images)

        return frozen(images, "diki-query", compute)

    def assign(self, images: torch.Tensor, encode: Encode) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per image: task, image-tower weight, route (the task and the text tower's weight level)."""
        task, weight = self.method.select(self._frozen(images, encode))
        text_weight = weight
        if self.method.options["batchwise"]:  # the official vote: the batch's most frequent task, mean weight
            voted = torch.bincount(task, minlength=self.method.learned).argmax()
            task = torch.full_like(task, int(voted))
            text_weight = weight.mean().expand(len(weight))
        level = torch.round(text_weight * self.levels).long()
        return task.cpu(), weight.float(), (task.cpu() * (self.levels + 1) + level.cpu())

    def route(self, images: torch.Tensor) -> torch.Tensor:
        backbone = self.method.backbone
        return self.assign(images, lambda x: F.normalize(backbone.encode_image(x).float(), dim=-1))[2]

    def encode_images(self, images: torch.Tensor, encode: Encode) -> Routed:
        task, weight, routes = self.assign(images, encode)
        self.method.last_tasks, self.method.last_weights = task, weight.detach().cpu()
        def encode_task(k: int, rows: torch.Tensor) -> torch.Tensor:  # each image at its own weight
            with self.method.active(k, weight[rows.to(weight.device)]):
                return encode(images[rows.to(images.device)])

        return Routed(by_route(task, encode_task, torch.zeros(0, 1)), routes)

    def using(self, route: int):
        if route < 0:
            return self.method.active(None)
        task, level = divmod(int(route), self.levels + 1)
        return self.method.active(task, level / self.levels)


__all__ = ["DIKI", "DIKIInference", "PrefixState", "ResidualPrefix"]
