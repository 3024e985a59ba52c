"""MoE-Adapters (Yu et al., "Boosting Continual Learning of Vision-Language Models via Mixture-of-Experts Adapters",
CVPR 2024, arXiv:2403.11549): in every block of both towers a bank of adapter experts in parallel to the MLP, mixed
per sample by a per-task noisy top-k router; after each task the experts its router used most are frozen; at test a
Distribution Discriminative Auto-Selector (DDAS, one autoencoder per task) sends each input either to the router of
the task it resembles most or, when it resembles none, to the frozen CLIP.

Official code read (facts only, no code taken): JiazuoYu/MoE-Adapters4CL, commit 4572d97, the ``mtil`` tree.

- Block: ``mtil/clip/model.py`` 287-362 (``ResidualAttentionBlock.__init__``) and 463-530 (``forward``):
  ``x = x + attn(ln_1(x)); x = x + mlp(ln_2(x)) + sum_e g_e(x) * expert_e(x)`` — the experts read the residual
  stream *before* ``ln_2`` and see every token of a sample; the router reads token 0 of that stream
  (``x.permute(1, 0, 2)[:, 0, :]``, 474): [CLS] in the vision tower and, in the text tower, the start-of-text token
  (under the causal mask the same vector for every text, so the text tower's clean routing is one fixed choice per
  task and layer; only the training noise varies it). Here: a pre-hook on the block's ``ln_2`` keeps its input, a
  hook on the block's MLP adds the mixture to the MLP's output; the model is otherwise untouched.
- Expert: ``mtil/clip/adapter.py`` (``Adapter``, ``init_option='lora'``, ``adapter_layernorm_option='none'``):
  ``scale * up(dropout(relu(down(x))))``, biases, ``down`` Kaiming-uniform (a = sqrt 5), ``up`` and both biases 0
  (attaching changes nothing), dropout 0.1 at train, scale 0.1 (model.py 342).
- Router: model.py 333-339 (one gate matrix ``w_gate`` and one noise matrix ``w_noise`` of ``(width, experts)`` per
  task, zeros at init) and 429-455 (``noisy_top_k_gating``, Shazeer et al. 2017): at train
  ``logits = x W_g + N(0, 1) * (softplus(x W_n) + 1e-2)``, at test ``x W_g``; the top-k logits softmaxed, the rest
  zero; ``load`` = the smooth probability of being in the top k (``_prob_in_top_k``, 396-427) at train, the count of
  non-zero gates otherwise; the balance loss ``1e-2 * (cv2(sum of gates) + cv2(load))`` per block
  (``cv_squared`` 369-385: unbiased variance over squared mean + 1e-10; 0 for one expert; 478-483).
- Training: ``src/models/finetune.py``: only experts and routers train (90-105: the experts listed as frozen get
  ``requires_grad = False``), AdamW (122), cross-entropy with label smoothing ``--ls 0.2`` (182; the train script
  ``scripts/train/train_full_shot_router11_experts22_1000iters.sh``: 22 experts, top-2, 1,000 iterations, 11
  routers); usage map: every non-zero gate of a forward counts for its expert (model.py 486-494); after the task,
  per block and tower, the 2 experts of largest count are appended to the frozen list (finetune.py 195-210; the list
  accumulates over tasks).
- DDAS: ``src/models/AutoEncoder.py``: the input is ``sigmoid`` of the image's AlexNet conv features (107, 185); the
  autoencoder ``Linear(in, 100) + ReLU``, ``Linear(100, in) + Sigmoid`` (13-31), MSE (66-68), Adam weight decay
  1e-4 (160) at lr 0.01 decayed x0.1 every 10 epochs (48-60, 180); 300 iterations per task in the train script.
  ``src/models/evaluation.py`` 45-80: the smallest reconstruction error over the task autoencoders picks the router;
  an error above the threshold (0.0655 in the script, every task) picks the frozen CLIP (``task_id = -1``: every
  expert off, 471-473). Class prompts are encoded under the chosen task's router too (``zeroshot_classifier``, 19-41).

Defaults and the scaling rules (the embedded CLIPs are far smaller than ViT-B/16):

- ``top_k`` 2, ``scale`` 0.1, ``dropout`` 0.1, ``balance_weight`` 1e-2, ``freeze`` 2 per block and tower,
  ``label_smoothing`` 0.2, ``ae_iterations`` 300, ``ae_lr`` 0.01 (weight decay 1e-4, x0.1 every 10 epochs of the
  features the autoencoder learns from): the official values.
- ``experts: auto`` = ``top_k x`` the number of tasks (the official 22 = 2 x 11 tasks): each task freezes up to
  ``freeze`` = k experts per block, so the last task still finds free experts, and no expert is never reachable.
  The tiny CLIP's 5-task sequences get 10 experts. A number overrides.
- ``bottleneck: auto`` = ``max(4, round(64 x vision width / 768))`` for both towers (the official uses 64 in both
  towers of ViT-B/16, vision width 768): 11 for the tiny CLIP (width 128), 4 for the micro one.
- Autoencoder code: ``ae_code: auto`` = ``max(4, d // 8)`` for a ``d``-dim feature (the official squeezes AlexNet's
  43,264 features into 100; that ratio leaves nothing of a 64-dim embedding, so one code unit per 8 dims: 8 for
  the tiny CLIP, 64 for ViT-B/16's 512).
- Threshold: ``threshold: auto`` = the largest, over the tasks learned, of the ``threshold_quantile`` (0.95)
  quantile of the task's own per-image training reconstruction errors under its own autoencoder — one number for
  every task, as the official's; an image of a learned task is kept from the frozen model unless it reconstructs
  worse than 95 % of that task's training images. The official 0.0655 is in AlexNet units; this rule is ours, fixed
  before any run and never tuned. A number overrides.

Departures, with reasons:

- **DDAS reads the frozen CLIP's image embedding, not AlexNet's conv features**: no AlexNet weights exist offline
  here. Its input is ``sigmoid(sqrt(d) * f / |f|)`` (the normalised embedding scaled to unit variance per
  coordinate, so the sigmoid sees values of order 1 as it does AlexNet's activations). The embedding costs one
  frozen forward per training step (``extra_forward: 1``; the official runs AlexNet in a separate pass), and one
  per test image before routing.
- **Routing per image**: the official scores a whole test batch with one mean reconstruction error (MSE over the
  batch) and gives every image that batch's router, which reveals the task when a test batch holds one task. Here
  each image takes the argmin of its own errors (``routing: per-sample``). ``batchwise: true`` reproduces the
  official vote; its records state ``routing: per-batch`` and the boards refuse them.
- **No reference-domain autoencoder**: the official trains a first autoencoder on TinyImageNet (a stand-in for the
  pretraining data) and sends images it wins to the frozen CLIP too; the suite has no such data that is neither a
  task nor a control set, so only the threshold sends images to the frozen model.
- The autoencoders learn from the frozen embeddings of the training batches the task's steps drew (the same
  augmented images the experts saw), ``ae_iterations`` steps at the run's batch size, on their own seeded random
  stream (the run's stream is untouched); the official draws 300 fresh batches of 64 in its own run.
- Experts of a block only count as used in training forwards (the official also counts any other forward of the
  process); an expert never chosen in a task is never frozen for it (the official's top-2 of the counts could pick
  an unused one on ties at zero; with text prompts in every step this does not happen there).
- The balance loss is added to the task loss, as the paper's objective states; the released code computes it in
  every block and never adds it (model.py 481-483: a local that is discarded). ``balance_weight: 0`` reproduces the
  released code.
- Label smoothing applies on the classification tracks; the cross-modal track keeps the suite's contrastive loss.
- Frozen experts stay in the optimiser's list with ``requires_grad = False`` (they get no gradient, so AdamW skips
  them, as the official ``requires_grad = False`` does); the list keeps the same shapes every task, so a checkpoint's
  by-position parameters fit on resume. Everything (experts, routers, frozen set, autoencoders, thresholds) is also in
  :meth:`state_dict`.
- Budget: the official lr differs per dataset (1e-4 to 5e-3, AdamW, cosine with 100 warm-up steps, 1,000 iterations,
  batch 64); the suite sets the lr per sequence under ``pet_training: moe-adapters:`` by the rule for methods that
  train without a PET: the budget of the nearest PET form, the adapter's (not tuned for this method).
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from suite.errors import ConfigError
from suite.methods.base import Method, Option, RunContext
from suite.models.inference import FROZEN, Inference, frozen

OFFICIAL_BOTTLENECK, OFFICIAL_WIDTH = 64, 768  # ViT-B/16 (model.py --ffn_num 64, vision width 768)
NOISE_EPSILON = 1e-2  # model.py noisy_top_k_gating
AE_WEIGHT_DECAY, AE_DECAY_EPOCHS = 1e-4, 10  # AutoEncoder.py 160, exp_lr_scheduler


# -- the official mixture's pieces, as plain functions (the fidelity tests check them on hand examples) --------------
def cv_squared(x: torch.Tensor) -> torch.Tensor:
    """Squared coefficient of variation: unbiased variance over squared mean (+1e-10); 0 for one value."""
    if x.numel() <= 1:
        return x.new_zeros(())
    x = x.float()
    return x.var() / (x.mean() ** 2 + 1e-10)


def _normal_cdf(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1 + torch.erf(z / math.sqrt(2)))


def noisy_top_k(x: torch.Tensor, w_gate: torch.Tensor, w_noise: torch.Tensor, k: int,
                train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Gates ``(N, E)`` (k non-zero per row, softmax of the top-k logits) and the load ``(E,)``: at train the logits
    carry input-dependent Gaussian noise and the load is each expert's summed probability of being in the top k; at
    test the logits are clean and the load counts non-zero gates."""
    clean = x @ w_gate.to(x.dtype)
    experts = clean.shape[-1]
    if train:
        std = F.softplus(x @ w_noise.to(x.dtype)) + NOISE_EPSILON
        noisy = clean + torch.randn_like(clean) * std
        logits = noisy
    else:
        logits = clean
    top, idx = logits.topk(min(k + 1, experts), dim=-1)
    gates = torch.zeros_like(logits).scatter(-1, idx[:, :k], torch.softmax(top[:, :k], dim=-1))
    if train and k < experts:
        # the probability that expert e stays in the top k if its noise were drawn again (the others' fixed)
        if_in, if_out = top[:, k:k + 1], top[:, k - 1:k]
        prob = torch.where(noisy > if_in, _normal_cdf((clean - if_in) / std), _normal_cdf((clean - if_out) / std))
        load = prob.sum(0)
    else:
        load = (gates > 0).sum(0).to(gates.dtype)
    return gates, load


def balance_loss(gates: torch.Tensor, load: torch.Tensor) -> torch.Tensor:
    """One block's load-balancing term (before the weight): cv2(importance) + cv2(load)."""
    return cv_squared(gates.sum(0)) + cv_squared(load)


class Expert(nn.Module):
    """One adapter expert: ``scale * up(dropout(relu(down(x))))``; ``up`` and the biases start at zero."""

    def __init__(self, width: int, bottleneck: int):
        super().__init__()
        self.down, self.up = nn.Linear(width, bottleneck), nn.Linear(bottleneck, width)
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
            self.down.bias.zero_()
            self.up.weight.zero_()
            self.up.bias.zero_()

    def forward(self, x: torch.Tensor, scale: float, dropout: float, train: bool) -> torch.Tensor:
        h = F.relu(self.down(x))
        return scale * self.up(F.dropout(h, p=dropout, training=train))


class _State:
    """What every block's mixture reads: the route in force, whether this forward trains, the balance terms."""

    def __init__(self) -> None:
        self.route = FROZEN
        self.train = False
        self.balance: list[torch.Tensor] = []


class MoEBlock(nn.Module):
    """The experts and per-task routers of one block of one tower, hooked in parallel to the block's MLP."""

    def __init__(self, name: str, width: int, experts: int, bottleneck: int, n_routers: int, top_k: int,
                 scale: float, dropout: float, batch_first: bool, state: _State):
        super().__init__()
        self.name, self.top_k, self.scale, self.dropout, self.batch_first = name, top_k, scale, dropout, batch_first
        self.experts = nn.ModuleList([Expert(width, bottleneck) for _ in range(experts)])
        self.w_gate = nn.ParameterList([nn.Parameter(torch.zeros(width, experts)) for _ in range(n_routers)])
        self.w_noise = nn.ParameterList([nn.Parameter(torch.zeros(width, experts)) for _ in range(n_routers)])
        self.register_buffer("frozen", torch.zeros(experts, dtype=torch.bool))
        self.register_buffer("counts", torch.zeros(experts))
        self.state = state
        self._x: torch.Tensor | None = None
        self.last_gates: torch.Tensor | None = None  # the gates of the last forward (tests read them)
        self._used: torch.Tensor | None = None  # the experts some sample chose in this step's training forwards

    def keep_input(self, module: nn.Module, args: tuple) -> None:  # pre-hook on the block's ln_2
        self._x = args[0]

    def add_mixture(self, module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor | None:  # hook on the MLP
        x, self._x = self._x, None
        r = self.state.route
        if r == FROZEN or x is None:
            return None  # the block as pretrained, bit for bit
        tokens = x if self.batch_first else x.transpose(0, 1)  # (N, L, D)
        gates, load = noisy_top_k(tokens[:, 0].float(), self.w_gate[r], self.w_noise[r], self.top_k, self.state.train)
        self.last_gates = gates.detach()
        if self.state.train:
            self.state.balance.append(balance_loss(gates, load))
            with torch.no_grad():
                self.counts += (gates > 0).sum(0).to(self.counts.dtype)
        y = self._dispatch(tokens, gates).to(out.dtype)
        return out + (y if self.batch_first else y.transpose(0, 1))

    def _dispatch(self, tokens: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        """``sum_e g_e * expert_e(tokens)`` over each sample's k selected experts, vectorised: the experts' weights
        stacked (each forward, so the per-expert parameters stay as they are), each sample's k experts' weights
        gathered, both projections as one batched matmul over the k slots. Equal to running each chosen expert on
        its samples and adding the gated outputs, up to float reassociation; an expert no sample chose (gate 0
        everywhere) takes no part in the output, and :meth:`MoEAdapters.before_step` drops the zero gradient the
        stacking gives it, so the optimiser skips it as the sparse dispatch does."""
        k = min(self.top_k, len(self.experts))
        g, idx = gates.topk(k, dim=-1)  # (N, k): the non-zero gates (ties at zero only where a gate underflowed)
        if self.state.train:
            used = (gates > 0).any(0)
            self._used = used if self._used is None else self._used | used
        down_w = torch.stack([ex.down.weight for ex in self.experts])  # (E, b, D)
        down_b = torch.stack([ex.down.bias for ex in self.experts])  # (E, b)
        up_w = torch.stack([ex.up.weight for ex in self.experts])  # (E, D, b)
        up_b = torch.stack([ex.up.bias for ex in self.experts])  # (E, D)
        dtype = tokens.dtype
        h = torch.einsum("nld,nkbd->nlkb", tokens, down_w[idx].to(dtype)) + down_b[idx].to(dtype).unsqueeze(1)
        h = F.dropout(F.relu(h), p=self.dropout, training=self.state.train)  # (N, L, k, b)
        h = h * g.to(h.dtype)[:, None, :, None]  # the gate of each slot
        y = torch.einsum("nlkb,nkdb->nld", h, up_w[idx].to(dtype))
        y = y + torch.einsum("nk,nkd->nd", g.to(y.dtype), up_b[idx].to(y.dtype)).unsqueeze(1)
        return self.scale * y

    def expert_parameters(self) -> list[nn.Parameter]:
        return [p for ex in self.experts for p in (ex.down.weight, ex.down.bias, ex.up.weight, ex.up.bias)]

    def set_frozen(self) -> None:
        for ex, f in zip(self.experts, self.frozen.tolist()):
            for p in ex.parameters():
                p.requires_grad_(not f)


class Autoencoder(nn.Module):
    """DDAS's per-task autoencoder: ``Linear + ReLU`` to the code, ``Linear + Sigmoid`` back; input in (0, 1)."""

    def __init__(self, dim: int, code: int):
        super().__init__()
        self.enc, self.dec = nn.Linear(dim, code), nn.Linear(code, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.dec(F.relu(self.enc(x))))

    def errors(self, x: torch.Tensor) -> torch.Tensor:
        """Per-row mean squared reconstruction error."""
        return (self(x) - x).pow(2).mean(-1)


def ae_input(features: torch.Tensor) -> torch.Tensor:
    """DDAS's input from image embeddings: sigmoid of the normalised embedding scaled to unit variance per dim."""
    f = F.normalize(features.float(), dim=-1)
    return torch.sigmoid(f * math.sqrt(f.shape[-1]))


class MoEInference(Inference):
    """DDAS at test: per image (or per batch, ``batchwise``) the smallest reconstruction error over the task
    autoencoders picks that task's routers; above the threshold, the frozen CLIP (route -1)."""

    def __init__(self, method: "MoEAdapters", backbone: nn.Module):
        self.method, self.backbone = method, backbone

    def errors(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, T)``: each image's reconstruction error under each learned task's autoencoder."""
        with torch.no_grad(), self.method.routed(FROZEN):
            x = ae_input(frozen(images, "moe-embedding", lambda: self.backbone.encode_image(images)))
            return torch.stack([ae.errors(x) for ae in self.method.autoencoders], dim=-1)

    def route(self, images: torch.Tensor) -> torch.Tensor:
        errs = self.errors(images)
        if self.method.options["batchwise"]:  # the official vote: one mean error per autoencoder for the batch
            errs = errs.mean(0, keepdim=True).expand_as(errs)
        best, task = errs.min(-1)
        routes = torch.where(best > self.method.threshold, torch.full_like(task, FROZEN), task).long().cpu()
        self.method.routed_counts[FROZEN] = self.method.routed_counts.get(FROZEN, 0) + int((routes == FROZEN).sum())
        self.method.routed_counts["all"] = self.method.routed_counts.get("all", 0) + len(routes)
        return routes

    def using(self, route: int):
        return self.method.routed(route)


class MoEAdapters(Method):
    """Adapter experts in every block of both towers, a noisy top-k router per task, DDAS routing at test."""

    name = "moe-adapters"
    needs_pet = False
    text_changes = True

    OPTIONS = {"experts": Option("auto", (int, str), low=1, choices=("auto",)),
               "top_k": Option(2, (int,), low=1),
               "bottleneck": Option("auto", (int, str), low=1, choices=("auto",)),
               "scale": Option(0.1, (float,), low=0),
               "dropout": Option(0.1, (float,), low=0, high=0.99),
               "balance_weight": Option(1e-2, (float,), low=0),
               "freeze": Option(2, (int,), low=0),
               "label_smoothing": Option(0.2, (float,), low=0, high=0.99),
               "ae_code": Option("auto", (int, str), low=1, choices=("auto",)),
               "ae_iterations": Option(300, (int,), low=1),
               "ae_lr": Option(0.01, (float,), low=0, open_low=True),
               "threshold": Option("auto", (float, str), low=0, choices=("auto",)),
               "threshold_quantile": Option(0.95, (float,), low=0, high=1),
               "batchwise": Option(False, (bool,))}
    PROTOCOL = {"task_id_train": True, "routing": "per-sample", "extra_forward": 1}

    @property
    def protocol(self) -> dict[str, Any]:
        proto = super().protocol
        return {**proto, "routing": "per-batch"} if self.options["batchwise"] else proto

    # -- setup -----------------------------------------------------------------------------------------
    def setup(self, ctx: RunContext) -> None:
        o = self.options
        n_tasks = max(len(ctx.sequence.tasks), 1) if ctx.sequence is not None else 1
        experts = o["top_k"] * n_tasks if o["experts"] == "auto" else int(o["experts"])
        if o["top_k"] > experts:
            raise ConfigError(f"method {self.name}: top_k {o['top_k']} exceeds the {experts} experts")
        sites = ctx.backbone.blocks("vision") + ctx.backbone.blocks("text")
        vision_width = ctx.backbone.blocks("vision")[0].width
        bottleneck = max(4, round(OFFICIAL_BOTTLENECK * vision_width / OFFICIAL_WIDTH)) \
            if o["bottleneck"] == "auto" else int(o["bottleneck"])
        self.n_experts, self.bottleneck, self.n_tasks = experts, bottleneck, n_tasks
        self.state = _State()
        self.blocks: list[MoEBlock] = []
        self._handles = []
        for site in sites:
            ln = next((getattr(site.block, a) for a in ("ln_2", "layer_norm2") if hasattr(site.block, a)), None)
            if ln is None:
                raise ConfigError(f"method {self.name}: {site.tower} block {site.index} has no ln_2 / layer_norm2 "
                                  f"before its MLP ({type(site.block).__name__})")
            batch_first = self._batch_first(ctx.backbone, site.tower)
            block = MoEBlock(f"{site.tower}.{site.index}", site.width, experts, bottleneck, n_tasks, o["top_k"],
                             o["scale"], o["dropout"], batch_first, self.state).to(ctx.device)
            self._handles += [ln.register_forward_pre_hook(block.keep_input),
                              site.mlp.register_forward_hook(block.add_mixture)]
            self.blocks.append(block)
        self.autoencoders = nn.ModuleList()
        self.task_thresholds: list[float] = []
        self.tasks_done = 0
        self._cache: list[torch.Tensor] = []
        self.routed_counts: dict[Any, int] = {}

    @staticmethod
    def _batch_first(backbone: nn.Module, tower: str) -> bool:
        model = getattr(backbone, "model", None)
        trunk = None
        if model is not None:
            trunk = getattr(getattr(model, "visual", None), "transformer", None) if tower == "vision" \
                else getattr(model, "transformer", None)
        return bool(getattr(trunk, "batch_first", True))  # HF CLIP layers are batch-first

    @contextlib.contextmanager
    def routed(self, route: int) -> Iterator[None]:
        """Route ``route``'s routers in force (``FROZEN``: every expert off) for the body, then the previous one."""
        before, self.state.route = self.state.route, int(route)
        try:
            yield
        finally:
            self.state.route = before

    @property
    def threshold(self) -> float:
        if self.options["threshold"] != "auto":
            return float(self.options["threshold"])
        return max(self.task_thresholds) if self.task_thresholds else float("inf")

    # -- training hooks -------------------------------------------------------------------------------
    def trainable(self, ctx: RunContext) -> list[nn.Parameter]:
        """Task t's routers and every expert (a frozen one has ``requires_grad = False``: no gradient, no step)."""
        t = max(ctx.task_index, 0)
        return [p for b in self.blocks for p in (b.w_gate[t], b.w_noise[t])] + \
               [p for b in self.blocks for p in b.expert_parameters()]

    def before_task(self, ctx: RunContext, t: int) -> None:
        if t >= self.n_tasks:
            raise ConfigError(f"method {self.name}: task {t + 1} has no router (the sequence has {self.n_tasks})")
        for b in self.blocks:
            b.counts.zero_()
            b.set_frozen()
        self.state.route = t
        self._cache = []

    def loss(self, ctx: RunContext, batch: Any) -> torch.Tensor:
        with torch.no_grad(), self.routed(FROZEN):  # DDAS's features: the frozen model's embedding
            self._cache.append(ctx.backbone.encode_image(batch["images"]).detach().float())
        self.state.train, self.state.balance = True, []
        for b in self.blocks:
            b._used = None
        try:
            ls = self.options["label_smoothing"]
            if ls > 0 and getattr(ctx.sequence, "track", None) != "cross-modal" and ctx.logits is not None:
                logits, target = ctx.logits(batch)
                loss = F.cross_entropy(logits.float(), target, label_smoothing=ls)
            else:
                loss = ctx.task_loss(batch)
        finally:
            self.state.train = False
        balance, self.state.balance = self.state.balance, []
        if balance and self.options["balance_weight"] > 0:
            loss = loss + self.options["balance_weight"] * torch.stack(balance).sum()
        return loss

    def before_step(self, ctx: RunContext) -> None:
        """The sparse dispatch's gradients: the stacked experts give every trainable expert a gradient (zeros where
        no sample chose it); the official dispatch gives those none, so AdamW skips them (no weight decay, no
        momentum step). Drop them. Under data parallelism the gradients are already averaged over processes (a
        missing one as zeros, every expert has one): nothing to drop, as before."""
        used = [b._used for b in self.blocks]
        for b in self.blocks:
            b._used = None
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            return
        known = [u for u in used if u is not None]
        flags = iter(torch.stack(known).tolist()) if known else iter(())  # one device sync for every block
        for b, u in zip(self.blocks, used):
            mask = next(flags) if u is not None else [False] * len(b.experts)
            for ex, chosen in zip(b.experts, mask):
                if not chosen:
                    for p in ex.parameters():
                        p.grad = None

    def after_task(self, ctx: RunContext, t: int) -> None:
        k = self.options["freeze"]
        for b in self.blocks:  # the most-used experts of this task, per block and tower, are frozen for good
            used = torch.nonzero(b.counts > 0).flatten()
            if k and len(used):
                top = used[b.counts[used].topk(min(k, len(used))).indices]
                b.frozen[top] = True
            b.set_frozen()
        feats = torch.cat(self._cache) if self._cache else self._draw_features(ctx)
        self._cache = []
        ae, errs = self.train_autoencoder(feats, ctx.batch_size, seed=ctx.seed * 1_000 + t)
        while len(self.autoencoders) <= t:
            self.autoencoders.append(ae)
        self.autoencoders[t] = ae
        q = float(torch.quantile(errs, self.options["threshold_quantile"]))
        self.task_thresholds = self.task_thresholds[:t] + [q]
        self.tasks_done = t + 1
        self.state.route = FROZEN

    def _draw_features(self, ctx: RunContext) -> torch.Tensor:
        """A task trained for no step: one pass of its training batches through the frozen model."""
        n = max(1, -(-len(ctx.task_data.train) // ctx.batch_size))
        out = []
        with torch.no_grad(), self.routed(FROZEN):
            for batch in ctx.batches(ctx.task_data, n):
                out.append(ctx.backbone.encode_image(batch["images"]).float())
        return torch.cat(out)

    def ae_code(self, dim: int) -> int:
        return max(4, dim // 8) if self.options["ae_code"] == "auto" else int(self.options["ae_code"])

    def train_autoencoder(self, feats: torch.Tensor, batch: int, seed: int) -> tuple[Autoencoder, torch.Tensor]:
        """One task's autoencoder on its frozen embeddings (its own random stream); returns it and its per-image
        training errors."""
        x = ae_input(feats)
        n, dim = x.shape
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            ae = Autoencoder(dim, self.ae_code(dim))
            g = torch.Generator().manual_seed(seed)
            ae = ae.to(x.device)
            opt = torch.optim.Adam(ae.parameters(), lr=self.options["ae_lr"], weight_decay=AE_WEIGHT_DECAY)
            order, pos = torch.randperm(n, generator=g), 0
            batch = max(1, min(batch, n))
            with torch.enable_grad():
                for i in range(self.options["ae_iterations"]):
                    if pos + batch > n:
                        order, pos = torch.randperm(n, generator=g), 0
                    rows = order[pos:pos + batch].to(x.device)
                    pos += batch
                    for group in opt.param_groups:  # x0.1 every 10 epochs of the features
                        group["lr"] = self.options["ae_lr"] * 0.1 ** ((i * batch) // (AE_DECAY_EPOCHS * n))
                    opt.zero_grad(set_to_none=True)
                    F.mse_loss(ae(x[rows]), x[rows]).backward()
                    opt.step()
        for p in ae.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            return ae, ae.errors(x)

    def inference(self, ctx: RunContext) -> Inference | None:
        self.routed_counts = {}
        return MoEInference(self, ctx.backbone) if len(self.autoencoders) else None

    # -- state ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"tasks_done": self.tasks_done, "n_autoencoders": len(self.autoencoders),
                                 "task_thresholds": torch.tensor(self.task_thresholds, dtype=torch.float64)}
        for b in self.blocks:
            for key, value in b.state_dict().items():
                if key != "counts":
                    state[f"{b.name}.{key}"] = value.detach().cpu().clone()
        for i, ae in enumerate(self.autoencoders):
            for key, value in ae.state_dict().items():
                state[f"ae.{i}.{key}"] = value.detach().cpu().clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for b in self.blocks:
            own = {k: v for k, v in b.state_dict().items() if k != "counts"}
            for key, value in own.items():
                saved = state.get(f"{b.name}.{key}")
                if saved is None or tuple(saved.shape) != tuple(value.shape):
                    raise ConfigError(f"method {self.name}: checkpoint {b.name}.{key} is missing or of another shape "
                                      f"({None if saved is None else tuple(saved.shape)} against {tuple(value.shape)})")
                with torch.no_grad():
                    value.copy_(saved)
            b.set_frozen()
        self.autoencoders = nn.ModuleList()
        device = self.blocks[0].frozen.device if self.blocks else torch.device("cpu")
        for i in range(int(state.get("n_autoencoders", 0))):
            enc = state[f"ae.{i}.enc.weight"]
            ae = Autoencoder(enc.shape[1], enc.shape[0])
            ae.load_state_dict({k[len(f"ae.{i}."):]: v for k, v in state.items() if k.startswith(f"ae.{i}.")})
            for p in ae.parameters():
                p.requires_grad_(False)
            self.autoencoders.append(ae.to(device))
        self.task_thresholds = [float(v) for v in state.get("task_thresholds", torch.zeros(0)).tolist()]
        self.tasks_done = int(state.get("tasks_done", 0))
        self.state.route = FROZEN

    def report(self) -> dict[str, Any]:
        experts = [p for b in self.blocks for p in b.expert_parameters()]
        routers = [p for b in self.blocks for p in list(b.w_gate) + list(b.w_noise)]
        aes = list(self.autoencoders.parameters())

        def size(ps):
            return int(sum(p.numel() for p in ps)), int(sum(p.numel() * p.element_size() for p in ps))

        out: dict[str, Any] = {}
        for key, ps in (("expert", experts), ("router", routers), ("autoencoder", aes)):
            out[f"{key}_parameters"], out[f"{key}_bytes"] = size(ps)
        out["experts_per_block"], out["expert_bottleneck"] = self.n_experts, self.bottleneck
        out["experts_frozen"] = int(sum(int(b.frozen.sum()) for b in self.blocks))
        if self.tasks_done and math.isfinite(self.threshold):
            out["ddas_threshold"] = float(self.threshold)
        if self.routed_counts.get("all"):
            out["ddas_frozen_share"] = self.routed_counts.get(FROZEN, 0) / self.routed_counts["all"]
        return out
