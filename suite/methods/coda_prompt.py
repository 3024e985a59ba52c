"""CODA-Prompt (Smith et al., "CODA-Prompt: COntinual Decomposed Attention-based Prompting for Rehearsal-Free
Continual Learning", CVPR 2023, arXiv:2211.13218). Official code: github.com/GT-RIPL/CODA-Prompt.

Mechanism, as the official code has it (read for facts, written anew here):

- ``models/zoo.py`` ``CodaPrompt``: in each of the vision blocks 0-4 (``_init_smart``: ``e_layers``) a set of
  components ``P`` (pool x length x width), keys ``K`` and attention vectors ``A`` (pool x key dim). The prompt of
  an image is ``sum_k alpha_k P_k`` with ``alpha_k = cos(q * A_k, K_k)`` (``forward``: the ``a_querry``, ``n_K``,
  ``aq_k``, ``P_`` einsums); its first ``length // 2`` rows are the attention's prefix keys and the rest its prefix
  values (``Ek``, ``Ev``), used as they are (no LayerNorm, no ``W_k``/``W_v``) and concatenated before the layer's
  own keys and values in the same softmax (``models/vit.py`` ``Attention.forward``: ``torch.cat((pk, k))``).
- ``q`` is the frozen model's final [CLS] feature from a second, no-grad pass without prompts
  (``ViTZoo.forward``: ``with torch.no_grad(): q, _ = self.feat(x); q = q[:, 0, :]``), per image.
- The pool is split into ``pool // n_tasks`` components per task (``pt``, ``s``, ``f`` in ``forward`` and
  ``gram_schmidt``). Training task ``t`` uses slices ``0..t``, with the slices of earlier tasks detached
  (``K[:s].detach()``); later slices are unused; at test slices ``0..t`` are used.
- Each task's slice of ``P``, ``K`` and ``A`` (all three) is (re)initialised by Gram-Schmidt against the earlier
  slices (``gram_schmidt``, called at construction for task 1 and by ``process_task_count`` from
  ``trainer.py`` before every later task): the random ``uniform_`` init of ``tensor_prompt`` is discarded, fresh
  Gaussian vectors are orthogonalised against all earlier rows and normalised; ``P`` is flattened to
  ``(pool, length * width)`` for it; rows of later tasks stay zero until their task.
- Orthogonality penalty ``mean((X Xᵀ - I)²)`` on ``K``, ``A`` and flattened ``P`` times ``ortho_mu``, which is
  ``0.0`` in every official script (``experiments/*.sh``: ``--prompt_param 100 8 0.0``).
- ``learners/prompt.py`` ``Prompt.update_model`` masks the logits of classes of earlier tasks (``-inf``) during
  training; the suite's classification objective (``suite/engine/objective.py``) already scores only the
  current task's classes, so no masking is needed here. Optimiser: Adam, lr 1e-3, no weight decay, cosine,
  20-50 epochs at batch 128 (``configs/*_prompt.yaml``), re-created for every task.

Departures, with their reasons:

- Backbone and head: CLIP's vision tower (``towers: vision``) and the frozen text classifier (class-name
  prompts, or captions on the cross-modal track) instead of an ImageNet ViT with a trained linear head; the
  text side never changes (``text_changes = False``).
- Query: CLIP's [CLS] after ``ln_post`` and before ``proj`` (the ViT's final-norm [CLS]: key dimension = the
  tower's width), taken by running the tower once with ``proj`` set aside; a tower without ``proj`` gives its
  output.
- Blocks: ``layers`` is ``first:5`` (blocks 0-4; the tiny CLIP's fewer blocks all take prompts).
- Pool: at most ``d`` orthonormal keys exist in ``d`` dimensions, so the pool used is ``min(pool, key dim,
  length * width)`` (official 100 <= 768; the embedded tiny CLIP's width 128 keeps 100; the micro CLIP's 32
  caps it at 32); ``report()`` gives the pool used. Fewer components than tasks is refused.
- Gram-Schmidt: the new slice is made orthogonal to the *span* of the earlier rows (an orthonormal basis of them
  by QR, projected twice) and orthonormal within; the official classical Gram-Schmidt projects on each earlier
  row separately, which is orthogonal to them only while they stay orthogonal (trained rows drift). Both give
  the same rows when the earlier rows are orthonormal.
- Each task's slice is its own parameter and only the current slice goes to the optimiser, so old slices stay
  exactly put under any optimiser (AdamW's decoupled weight decay would move rows with zero gradient); they are
  also detached in the forward as the official code does.
- Budget: the official Adam lr 1e-3 runs thousands of steps; the suite trains ~60-100 iterations (AdamW), and the
  board's rate is the sequence's ``pet_training: coda-prompt`` entry: the prefix form's budget (chosen on
  seq-prefix), not tuned for CODA-Prompt. Trials of the port on world-class-incremental (tiny CLIP, seed 0, 100
  iterations, 300 test images per task; plasticity / forgetting, points): lr 0.001: 3.2 / -0.5, 0.01: 8.3 / 2.7,
  0.03 (the board's): 6.1 / 2.3.
- The prefix is concatenated in the layer's own softmax (:class:`~suite.pet.kv.ConcatKV`, as the official
  ``torch.cat((pk, k))``), not the gated side branch L2P uses here: the official prefix has no gate.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from suite.errors import ConfigError
from suite.methods.base import Method, Option, RunContext
from suite.models.inference import frozen
from suite.pet.base import MAX_TOKENS, PETConfig, select_sites
from suite.pet.kv import ConcatKV, register_prefix


def orthonormal_slice(old: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` orthonormal rows orthogonal to the span of the rows of ``old`` (``n x dim``), from Gaussian draws
    (the global generator: a run re-seeds it per task). Why: a new task's components, keys and attention vectors
    start orthogonal to every earlier task's, so they do not interfere at the start."""
    dim = old.shape[1]
    if old.shape[0] + count > dim:
        raise ConfigError(f"method coda-prompt: {old.shape[0] + count} orthonormal rows do not fit in {dim} dimensions")
    draw = torch.randn(count, dim, dtype=torch.float64).to(old.device)
    old64 = old.detach().double()
    basis = torch.linalg.qr(old64.T).Q if old.shape[0] else old64.T  # (dim, n): orthonormal basis of old rows
    for _ in range(2):  # twice: one projection leaves round-off along the old span
        draw = draw - (draw @ basis) @ basis.T
    rows = torch.linalg.qr(draw.T).Q.T  # orthonormal within the slice (and still orthogonal to the old span)
    for _ in range(2):
        rows = rows - (rows @ basis) @ basis.T
    rows = F.normalize(rows, dim=1)
    return rows.to(old.dtype)


def ortho_penalty(x: torch.Tensor) -> torch.Tensor:
    """The official penalty ``mean((X Xᵀ - I)²)`` on the rows of ``x``."""
    gram = x @ x.T
    return ((gram - torch.eye(len(x), device=x.device, dtype=x.dtype)) ** 2).mean()


class CodaLayer(ConcatKV):
    """One block's components, keys and attention vectors, one parameter per task slice, and the per-image
    prefix (keys: first half of the prompt rows, values: second half) they give for the queries set by the
    method (``query``: ``(B, key dim)``; ``None`` gives an empty prefix: the frozen model)."""

    def __init__(self, name: str, attn, length: int, width: int, key_dim: int, per_task: int, n_tasks: int):
        super().__init__(name, attn, length // 2)
        self.plen, self.width = length, width
        self.p = nn.ParameterList([nn.Parameter(torch.zeros(per_task, length, width)) for _ in range(n_tasks)])
        self.k = nn.ParameterList([nn.Parameter(torch.zeros(per_task, key_dim)) for _ in range(n_tasks)])
        self.a = nn.ParameterList([nn.Parameter(torch.zeros(per_task, key_dim)) for _ in range(n_tasks)])
        self.current = 0  # the task whose slice trains; slices before it are detached, after it unused
        self.query: torch.Tensor | None = None
        self.alpha: torch.Tensor | None = None  # the last images' component weights (B, components in use)

    def components(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``P, K, A`` of slices ``0..current``, earlier slices detached (no gradient reaches them)."""
        t = self.current

        def join(params: nn.ParameterList) -> torch.Tensor:
            return torch.cat([params[i].detach() for i in range(t)] + [params[t]], dim=0)

        return join(self.p), join(self.k), join(self.a)

    def init_slice(self, t: int) -> None:
        """Gram-Schmidt task ``t``'s slice of ``P`` (flattened), ``K`` and ``A`` against slices ``< t``."""
        with torch.no_grad():
            for params in (self.p, self.k, self.a):
                old = torch.cat([params[i].reshape(len(params[i]), -1) for i in range(t)], dim=0) if t else \
                    params[0].new_zeros(0, params[0][0].numel())
                params[t].copy_(orthonormal_slice(old, len(params[t])).view_as(params[t]))

    def weights(self, query: torch.Tensor, keys: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
        """``alpha[b, k] = cos(q_b * A_k, K_k)``: each image weighs each component by itself alone."""
        attended = F.normalize(query.unsqueeze(1) * att.unsqueeze(0), dim=2)  # (B, n, d)
        return torch.einsum("bnd,nd->bn", attended, F.normalize(keys, dim=1))

    def prefix(self, batch: int, attn) -> tuple[torch.Tensor, torch.Tensor]:
        if self.query is None:
            empty = self.p[0].new_zeros(batch, self.num_heads, 0, self.head_dim)
            return empty, empty
        if self.query.shape[0] != batch:
            raise RuntimeError(f"{self.pet_name}: {batch} images but {self.query.shape[0]} queries")
        p, k, a = self.components()
        alpha = self.weights(self.query.to(k.dtype), k, a)
        self.alpha = alpha.detach()  # kept for inspection, without holding the step's graph
        prompt = torch.einsum("bn,nlw->blw", alpha, p)  # (B, length, width)
        half = self.length

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(batch, half, self.num_heads, self.head_dim).transpose(1, 2)

        return heads(prompt[:, :half]), heads(prompt[:, half:])

    def ortho_loss(self) -> torch.Tensor:
        p, k, a = self.components()
        return ortho_penalty(k) + ortho_penalty(a) + ortho_penalty(p.reshape(len(p), -1))


class CODAPrompt(Method):
    """Decomposed prompts: per image, a weighted sum of learned components, weighted by the image's frozen
    feature against per-component keys and attention vectors; each task adds a Gram-Schmidt slice."""

    name = "coda-prompt"
    needs_pet = False
    text_changes = False

    OPTIONS = {"pool": Option(100, (int,), low=1), "length": Option(8, (int,), low=2, high=MAX_TOKENS),
               "layers": Option("first:5", (str,)), "ortho_weight": Option(0.0, (float,), low=0)}
    PROTOCOL = {"task_id_train": True, "routing": "per-sample", "extra_forward": 1}

    def __init__(self, **options: Any):
        super().__init__(**options)
        if self.options["length"] % 2:
            raise ConfigError(f"method coda-prompt: length {self.options['length']} must be even (half keys, half values)")

    def setup(self, ctx: RunContext) -> None:
        o = self.options
        visual = getattr(ctx.backbone.model, "visual", None)
        sites = select_sites(ctx.backbone, PETConfig(towers="vision", layers=o["layers"]))
        if visual is None or not sites:
            raise ConfigError("method coda-prompt: needs an open_clip vision tower with blocks to prompt")
        proj = getattr(visual, "proj", None)
        key_dim = int(proj.shape[0]) if isinstance(proj, torch.Tensor) else int(visual.output_dim)
        width = sites[0].width
        n_tasks = len(ctx.sequence.tasks)
        self.pool_used = min(o["pool"], key_dim, o["length"] * width)
        self.per_task = self.pool_used // n_tasks
        if self.per_task < 1:
            raise ConfigError(f"method coda-prompt: a pool of {self.pool_used} components cannot give each of "
                              f"{n_tasks} tasks one")
        self.layers: list[CodaLayer] = []
        undo: list = []
        for site in sites:
            layer = CodaLayer(f"coda.vision.{site.index}", site.attn, o["length"], site.width, key_dim,
                              self.per_task, n_tasks)
            register_prefix(site.attn, layer, undo)
            self.layers.append(layer.to(ctx.device))
        self.key_dim, self.n_tasks, self.ready = key_dim, n_tasks, 0  # ready: slices initialised
        self._querying = False  # slices are initialised in before_task, under the task's seed
        visual.register_forward_pre_hook(self._set_query)

    def _prepare(self, t: int) -> None:
        """Initialise slices up to ``t`` (Gram-Schmidt) and make ``t`` the current one."""
        while self.ready <= t:
            for layer in self.layers:
                layer.init_slice(self.ready)
            self.ready += 1
        for layer in self.layers:
            layer.current = t

    def query(self, visual: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """The frozen model's [CLS] feature before ``proj``: a no-grad pass with empty prefixes."""
        for layer in self.layers:
            layer.query = None
        proj = getattr(visual, "proj", None)
        self._querying = True
        try:
            with torch.no_grad():
                if isinstance(proj, nn.Parameter):
                    visual.proj = None
                out = visual(images)
        finally:
            if isinstance(proj, nn.Parameter):
                visual.proj = proj
            self._querying = False
        return (out[0] if isinstance(out, tuple) else out).detach().float()

    def _set_query(self, visual: nn.Module, args: tuple) -> None:
        if self._querying:
            return
        q = frozen(args[0], "coda-query", lambda: self.query(visual, args[0]))
        for layer in self.layers:
            layer.query = q

    def before_task(self, ctx: RunContext, t: int) -> None:
        self._prepare(t)

    def trainable(self, ctx: RunContext) -> list[nn.Parameter]:
        t = max(ctx.task_index, 0)
        return [params[t] for layer in self.layers for params in (layer.p, layer.k, layer.a)]

    def loss(self, ctx: RunContext, batch: Any) -> torch.Tensor:
        loss = ctx.task_loss(batch)
        w = self.options["ortho_weight"]
        if w > 0:
            loss = loss + w * sum(layer.ortho_loss() for layer in self.layers)
        return loss

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"ready": self.ready, "current": self.layers[0].current}
        for layer in self.layers:
            for kind in ("p", "k", "a"):
                for t, param in enumerate(getattr(layer, kind)):
                    state[f"{layer.pet_name}.{kind}.{t}"] = param.detach().cpu().clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for layer in self.layers:
                for kind in ("p", "k", "a"):
                    for t, param in enumerate(getattr(layer, kind)):
                        param.copy_(state[f"{layer.pet_name}.{kind}.{t}"])
                layer.current = int(state["current"])
        self.ready = int(state["ready"])

    def report(self) -> dict[str, Any]:
        held = sum(p.numel() for layer in self.layers for p in layer.parameters())
        return {"coda_pool": self.pool_used, "coda_per_task": self.per_task, "coda_layers": len(self.layers),
                "coda_parameters": held, "coda_bytes": 4 * held,
                "coda_trainable_per_task": held // self.n_tasks}
