"""VPT-NSP²: visual prompt tuning in the null space of old tasks (Lu et al., NeurIPS 2024, "Visual Prompt Tuning in
Null Space for Continual Learning", arXiv:2406.05658; official code github.com/zugexiaodui/VPTinNSforCL).

What the prompts of a VPT-deep block change for an old image token is (i) its attention logits on the prompt
keys, ``q_h W_k,h LN(p)ᵀ``, and (ii) the value mix ``a_h LN(p) W_v`` through its attention weights ``a_h`` on the
``L`` prompt slots. The paper's two conditions for leaving old tokens' attention output unchanged under a prompt
update ``Δ`` (``L x d``) are, with LayerNorm's statistics held fixed (the LN loss below),

    condition 1 (width side):   (q_h W_k,h) Δᵀ = 0   for every old token and head   -> Δ P₁ with P₁ (d x d)
    condition 2 (prompt side):  a_h Δ = 0                                           -> P₂ Δ with P₂ (L x L)

After each task (but the last) one forward pass over the task's training images collects, per prompted block,
the uncentred covariances of (a) ``q_h W_k,h`` — the queries of the image tokens (class token and patches, not the
prompt rows), every head, pulled back through ``W_k`` (``train_eval.py: get_interm_tensor_dict``,
``interm_reader_1``; :class:`suite.pet.kv.PromptTokens` emits exactly this as ``.key``) — and (b) the image tokens'
attention weights on the prompt slots, softmax over all keys (``interm_reader_2``; emitted as ``.value``). Each
batch adds ``XᵀX / rows``; tasks are summed (``accumulate_interm_tensor_dict``, ``--null_interm_accum sum``).
Then (``get_update_projection_dict``, ``train_eval.py`` ~637–695) for each covariance: SVD, the adaptive cut-off
:func:`adaptive_cutoff` (the largest second difference of the descending singular values — Gaussian-smoothed,
σ = 10, with 1.5 % dropped at each end when there are ≥ 128 of them — marks the first null-space direction ``i``;
``offset`` moves it), ``B = U₀ᵀU₀ / ‖U₀ᵀU₀‖_F`` over the singular vectors ``i..n-1`` (the Frobenius normalisation
is the authors': ``B = P/√k`` for a ``k``-dim null space), and ``P = η B + (1 − η) I``. While tasks 2.. train, the
*update* the optimiser applies is replaced by ``P₂ Δ P₁`` (``utils/mod_adam.py`` ~587–604: the Adam step, its L2
term included, is projected, never the gradient). Here that is done in :meth:`VPTNSP2.after_step`: the prompt
values are snapshot in ``before_step`` and, after the optimiser, set to ``before + P₂ (after − before) P₁``. That is
the official choice and the only one that holds with an adaptive optimiser: Adam/AdamW rescale each coordinate, so
a projected gradient does not give a projected update (and AdamW's decoupled decay is projected here too, as the
official L2 term is). The first task trains unprojected. On tasks 2.. the loss adds the authors' LN loss
(``train_one_epoch``): ``λ · Σ_blocks [L1(mean_w(p), mean_w(p_prev)) + L1(std_w(p), std_w(p_prev))]`` against the
prompts at the end of the previous task, which keeps LayerNorm's per-token statistics (assumed fixed by the two
conditions) where they were.

Options (defaults: the authors' CLIP scripts, ``train_*_clip.sh``): ``eta1`` (P₁) = ``eta2`` (P₂) = 0.98 (their
ViT-in21k scripts use 0.97); ``offset1``/``offset2`` = 0 (``--null_thres_value1/2``: a fraction in [0, 1) of the
remaining directions, else a whole number of directions); ``accumulate``: ``sum`` (or ``mean``, weighted by
images); ``ln_loss`` λ = 1 (they force 1 whenever the null space is used); ``normalise``: the Frobenius
normalisation of ``B`` (on, as theirs); ``collect_images``: images the covariances see (default: the task's whole
training split, as theirs).

Protocol: no task identity beyond the task boundary, no memory, one model for every image (routing none), no extra
forward pass per step — one extra forward pass over the task's training split per task (the collection).

Departures, with reasons:

- The collection pass sees the suite's training batches (the run's training transform) under ``no_grad``; the
  authors use their evaluation transform at batch 100. The suite has no separate collection transform.
- ``--pet vpt`` (``depth: deep``) is the suite's VPT-deep: prompts are placed after the class token (theirs after
  the patches; attention is permutation-invariant over keys, so the mechanism is the same), initialised
  N(0, 0.02²) (theirs U(−1, 1)); length and blocks are the PET's (theirs: 4 tokens in blocks 0–3 for CLIP —
  ``--pet-option length=4 --pet-option layers=0-3`` reproduces it). VPT-shallow is refused: its prompts' hidden
  states in later blocks are not covered by the two conditions. Lengths < 3 are refused: the adaptive cut-off
  needs three singular values for a second difference.
- Their CLIP runs also train the logit scale and refine the classifier head on sampled class Gaussians
  (``--refine_head``); neither is part of the null-space mechanism and the suite's classifier is CLIP's text
  side, so neither is reproduced. Their optimiser is Adam (lr 0.001, L2 5e-5, multistep); the suite's is its
  sequence's (AdamW, cosine) and the projection is applied to whatever update it makes.
- Covariances are float64 on the CPU (theirs float32 on the GPU); under torchrun they are summed over ranks.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from suite.errors import ConfigError
from suite.methods.base import Method, Option, RunContext
from suite.pet.kv import ConcatKV, PromptTokens

SIDES = ("key", "value")  # the feature spaces of conditions 1 (width, P₁) and 2 (prompt slots, P₂)


def gaussian_smooth(x: torch.Tensor, sigma: float = 10.0, truncate: float = 4.0) -> torch.Tensor:
    """``scipy.ndimage.gaussian_filter1d(x, sigma)`` (its default ``reflect`` mode: the edge sample repeated,
    ``d c b a | a b c d | d c b a``), for a 1-d tensor at least as long as the kernel's radius."""
    radius = int(truncate * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    w = torch.exp(-0.5 * (t / sigma) ** 2)
    w = w / w.sum()
    padded = torch.cat([x[:radius].flip(0), x, x[-radius:].flip(0)])
    return padded.unfold(0, 2 * radius + 1, 1) @ w


def adaptive_cutoff(svals: torch.Tensor, offset: float = 0.0) -> int:
    """The index of the first null-space direction among the descending singular values ``svals`` (the authors'
    ``adaptive_threshold``): the point after the largest second difference (of the σ = 10 Gaussian-smoothed values,
    1.5 % dropped at each end, when there are ≥ 128), moved past every value tied with it, then by ``offset``."""
    points = svals.detach().to(torch.float64).cpu()
    n = len(points)
    if n < 3:
        raise ConfigError(f"vpt-nsp2: the adaptive cut-off needs at least 3 singular values, got {n}")
    if n >= 128:
        smooth = gaussian_smooth(points)
        d1 = smooth[:-1] - smooth[1:]
        d2 = d1[:-1] - d1[1:]
        drop = int(n * 0.03 / 2)
        valid = d2[drop:len(d2) - drop]
    else:
        d1 = points[:-1] - points[1:]
        valid = d1[:-1] - d1[1:]
    at = int(torch.argmax(valid)) + int((n - len(valid)) / 2)
    i = int((points >= points[at]).nonzero().max())
    if 0 <= offset < 1:
        i = min(i + int(offset * (n - i)), n - 1)
    else:
        i = max(min(i + int(offset), n - 1), 0)
    return i


def null_space_basis(cov: torch.Tensor, offset: float = 0.0) -> torch.Tensor:
    """The right singular vectors of ``cov`` (rows, float64) from :func:`adaptive_cutoff` on: the null space."""
    _, s, vh = torch.linalg.svd(cov.to(torch.float64), full_matrices=True)
    return vh[adaptive_cutoff(s, offset):]


def blend(u0: torch.Tensor, eta: float, normalise: bool = True) -> torch.Tensor:
    """``η B + (1 − η) I`` with ``B = U₀ᵀU₀``, divided by its Frobenius norm when ``normalise`` (the authors')."""
    b = u0.T @ u0
    if normalise:
        b = b / torch.linalg.norm(b)
    return eta * b + (1.0 - eta) * torch.eye(b.shape[0], dtype=b.dtype)


def null_space_projector(cov: torch.Tensor, eta: float, offset: float = 0.0, normalise: bool = True) -> torch.Tensor:
    """The blended projector of one covariance: :func:`blend` of :func:`null_space_basis`."""
    return blend(null_space_basis(cov, offset), eta, normalise)


class VPTNSP2(Method):
    name = "vpt-nsp2"
    pets = ("vpt",)
    PROTOCOL = {"task_id_train": False, "task_id_test": False, "memory": 0, "routing": "none", "extra_forward": 0}

    OPTIONS = {"eta1": Option(0.98, (float,), low=0, high=1), "eta2": Option(0.98, (float,), low=0, high=1),
               "offset1": Option(0.0, (float,)), "offset2": Option(0.0, (float,)),
               "accumulate": Option("sum", (str,), choices=("sum", "mean")),
               "ln_loss": Option(1.0, (float,), low=0), "normalise": Option(True, (bool,)),
               "collect_images": Option(None, (int,), low=1)}

    def setup(self, ctx: RunContext) -> None:
        pet = ctx.pet
        if pet is None or pet.kind != "vpt":
            raise ConfigError(f"method vpt-nsp2 projects VPT-deep prompt updates: it needs --pet vpt "
                              f"(got {'no PET' if pet is None else pet.kind})")
        if getattr(pet.config, "depth", "deep") != "deep":
            raise ConfigError("method vpt-nsp2 needs vpt depth: deep (VPT-shallow's later-block prompt states are "
                              "outside its null-space conditions)")
        layers = [m for m in pet.pet_layers if isinstance(m, PromptTokens) and isinstance(m, ConcatKV)]
        if not layers:
            raise ConfigError("method vpt-nsp2: the vpt PET has no deep prompt layers")
        if len(layers[0].tokens) < 3:
            raise ConfigError(f"method vpt-nsp2: vpt length {len(layers[0].tokens)} < 3: the adaptive null-space "
                              f"cut-off needs at least 3 prompt tokens")
        self.init_state({m.pet_name: m for m in layers})

    def init_state(self, layers: dict[str, Any]) -> None:
        """Empty state over ``layers`` (name → a layer holding ``tokens``, ``L x d``): nothing collected yet."""
        self.layers = dict(layers)
        self.cov: dict[str, dict[str, torch.Tensor]] = {}    # accumulated covariances, per block and side
        self.proj: dict[str, dict[str, torch.Tensor]] = {}   # P₁ ("key", d x d) and P₂ ("value", L x L)
        self.prev: dict[str, torch.Tensor] = {}              # the prompts at the end of the previous task (LN loss)
        self.counts: list[int] = []                          # images per collected task (accumulate: mean)
        self.null_dims: dict[str, int] = {}                  # null-space size per block and side (the record)
        self.tasks_done = 0
        self._before: dict[str, torch.Tensor] | None = None
        self._cast: dict[tuple, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}

    # -- training ---------------------------------------------------------------------------------------
    def ln_penalty(self) -> torch.Tensor | None:
        """The authors' LN loss: L1 between each block's prompts' per-token mean and std (over the width) and those
        of the prompts at the end of the previous task; None before the second task."""
        if not self.prev:
            return None
        total = None
        for name, layer in self.layers.items():
            p, p0 = layer.tokens, self.prev[name].to(device=layer.tokens.device, dtype=layer.tokens.dtype)
            term = F.l1_loss(p.mean(-1), p0.mean(-1)) + \
                F.l1_loss(p.std(-1, unbiased=False), p0.std(-1, unbiased=False))
            total = term if total is None else total + term
        return total

    def loss(self, ctx: RunContext, batch: Any) -> torch.Tensor:
        loss = ctx.task_loss(batch)
        lam = float(self.options["ln_loss"])
        if lam and self.prev:
            loss = loss + lam * self.ln_penalty()
        return loss

    def _projectors(self, like: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        key = (like.device, like.dtype)
        if key not in self._cast:
            self._cast[key] = {n: (p["key"].to(device=like.device, dtype=like.dtype),
                                   p["value"].to(device=like.device, dtype=like.dtype)) for n, p in self.proj.items()}
        return self._cast[key]

    @torch.no_grad()
    def before_step(self, ctx: RunContext) -> None:
        """Remember the prompts before the optimiser moves them (tasks after the first)."""
        if self.proj:
            self._before = {n: m.tokens.detach().clone() for n, m in self.layers.items()}

    @torch.no_grad()
    def after_step(self, ctx: RunContext) -> None:
        """Replace the applied update ``Δ`` of every block's prompts by ``P₂ Δ P₁`` (``mod_adam.py``)."""
        if self._before is None:
            return
        for name, layer in self.layers.items():
            before = self._before[name]
            p1, p2 = self._projectors(before)[name]
            layer.tokens.copy_(before + p2 @ (layer.tokens - before) @ p1)
        self._before = None

    # -- after a task: covariances and projectors -------------------------------------------------------------
    def collect(self, ctx: RunContext) -> tuple[dict[str, dict[str, torch.Tensor]], int]:
        """One pass over the task's training images: per block, Σ_batches XᵀX / rows of both feature spaces."""
        data = ctx.task_data
        total = len(data.train)
        cap = self.options["collect_images"]
        images = min(total, int(cap)) if cap else total
        new: dict[str, dict[str, torch.Tensor]] = {}

        def sink(key: str, feats: torch.Tensor) -> None:
            name, _, side = key.rpartition(".")
            if name not in self.layers or side not in SIDES:
                return
            x = feats.detach().reshape(-1, feats.shape[-1]).to(torch.float64)
            cov = (x.T @ x / max(1, x.shape[0])).cpu()
            slot = new.setdefault(name, {})
            slot[side] = cov if side not in slot else slot[side] + cov

        seen = 0
        ctx.pet.set_sink(sink)
        try:
            with torch.no_grad():
                for batch in ctx.batches(data, max(1, math.ceil(images / ctx.batch_size))):
                    ctx.backbone.encode_image(batch["images"])
                    seen += len(batch["images"])
        finally:
            ctx.pet.set_sink(None)
        if dist.is_available() and dist.is_initialized():
            for slot in new.values():
                for side, c in slot.items():
                    c = c.to(ctx.device)
                    dist.all_reduce(c)
                    slot[side] = c.cpu()
        return new, seen

    def accumulate(self, new: dict[str, dict[str, torch.Tensor]], seen: int) -> None:
        """Fold this task's covariances into the accumulated ones (``sum``, or ``mean`` weighted by images)."""
        self.counts.append(int(seen))
        if not self.cov:
            self.cov = new
            return
        before, now = float(sum(self.counts[:-1])), float(sum(self.counts))
        for name, slot in self.cov.items():
            for side in SIDES:
                if self.options["accumulate"] == "sum":
                    slot[side] = slot[side] + new[name][side]
                else:
                    slot[side] = before / now * slot[side] + self.counts[-1] / now * new[name][side]

    def build_projectors(self) -> None:
        """P₁ and P₂ of every block from the accumulated covariances (and the null-space sizes, for the record)."""
        o = self.options
        self.proj, self.null_dims = {}, {}
        for name, slot in self.cov.items():
            self.proj[name] = {}
            for side, eta, offset in (("key", o["eta1"], o["offset1"]), ("value", o["eta2"], o["offset2"])):
                u0 = null_space_basis(slot[side], float(offset))
                self.proj[name][side] = blend(u0, float(eta), bool(o["normalise"]))
                self.null_dims[f"{name}.{side}"] = int(u0.shape[0])
        self._cast = {}

    @torch.no_grad()
    def after_task(self, ctx: RunContext, t: int) -> None:
        self.prev = {n: m.tokens.detach().clone().cpu() for n, m in self.layers.items()}
        self.tasks_done = t + 1
        if t + 1 >= len(ctx.sequence.tasks):  # as the authors: no projector after the last task
            return
        new, seen = self.collect(ctx)
        missing = sorted(set(self.layers) - set(new))
        if missing or any(set(s) != set(SIDES) for s in new.values()):
            raise ConfigError(f"method vpt-nsp2: no features were collected for {missing or 'some prompt sides'}")
        self.accumulate(new, seen)
        self.build_projectors()

    # -- state --------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"tasks_done": self.tasks_done, "counts": list(self.counts),
                "cov": {n: {s: c.clone() for s, c in slot.items()} for n, slot in self.cov.items()},
                "proj": {n: {s: p.clone() for s, p in slot.items()} for n, slot in self.proj.items()},
                "prev": {n: p.clone() for n, p in self.prev.items()}, "null_dims": dict(self.null_dims)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tasks_done = int(state["tasks_done"])
        self.counts = [int(c) for c in state["counts"]]
        self.cov = {n: {s: c.to(torch.float64) for s, c in slot.items()} for n, slot in state["cov"].items()}
        self.proj = {n: {s: p.to(torch.float64) for s, p in slot.items()} for n, slot in state["proj"].items()}
        self.prev = {n: p.clone() for n, p in state["prev"].items()}
        self.null_dims = {k: int(v) for k, v in state.get("null_dims", {}).items()}
        self._before, self._cast = None, {}

    def report(self) -> dict[str, Any]:
        nbytes = lambda d: int(sum(t.numel() * t.element_size() for slot in d.values() for t in slot.values()))  # noqa: E731
        cov, proj = nbytes(self.cov), nbytes(self.proj)
        return {"nsp_bytes": cov + proj, "nsp_covariance_bytes": cov, "nsp_projector_bytes": proj,
                "nsp_null_dims": dict(self.null_dims)}


__all__ = ["VPTNSP2", "adaptive_cutoff", "blend", "gaussian_smooth", "null_space_basis", "null_space_projector"]
