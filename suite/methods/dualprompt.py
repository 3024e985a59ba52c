"""DualPrompt (Wang et al., "DualPrompt: Complementary Prompting for Rehearsal-free Continual Learning", ECCV 2022,
arXiv:2204.04799): a G(eneral)-prompt shared by every task in the shallow vision blocks, and a pool of
E(xpert)-prompts, one per task, with one learned key each, in the next blocks. Both enter as prefixes
(prefix-tuning): learned attention keys and values put before the block's own, in the same softmax.

Training task ``t`` uses E-prompt ``t`` for every image (the task's identity selects the prompt at train) and adds
the pull loss ``1 - cos(q, k_t)``, ``q`` the frozen model's image feature from an extra no-grad forward pass. At
test every image picks the E-prompt whose key is nearest its own ``q`` (argmax cosine), **per sample**.

Official code read (facts only, no code taken): google-research/l2p (JAX; the authors' DualPrompt) and its
PyTorch port JH-LEE-KR/dualprompt-pytorch.

- Defaults: l2p ``configs/cifar100_dualprompt.py`` (same values in the port's ``configs/cifar100_dualprompt.py``):
  G-prompt length 5 in blocks [0, 1], E-prompt pool 10 (= the 10 tasks of both configs: one E-prompt per task;
  here ``pool: tasks`` sizes it to the sequence, so no untrained key can be chosen at test, a number keeps extra
  entries as candidates as the official code would), length 5, top-1, in blocks [2, 3, 4], prefix-tuning for
  both, learned keys, ``embedding_key = "cls"`` (the frozen model's pre-logits), ``use_prompt_mask`` (task's own
  prompt at train), ``shared_prompt_pool = True``, ``shared_prompt_key = False``, ``pull_constraint_coeff = 1.0``;
  Adam, lr 0.03 scaled by batch/256 (``train_continual.py`` 638-639; port ``main.py`` 125-129), batch 24,
  constant schedule, weight decay 0, gradient clipping at norm 1.0, 5 epochs per task, optimiser rebuilt every
  task (``reinit_optimizer``).
- Prefix form: l2p ``models/prefix_attention.py`` 131-136 (key and value prefixes concatenated to the layer's keys
  and values along the sequence, after the projections: the prefix *is* the per-head key/value, learned directly,
  shape ``(2, length, heads, head_dim)``; the port's ``attention.py`` ``PreT_Attention.forward`` is the same).
  Here: :class:`suite.pet.kv.ConcatKV` registered with :func:`suite.pet.kv.register_prefix` (the suite's
  prefix-tuning slot, :class:`suite.models.attention.SplitAttention`), with a per-image prefix.
- G- and E-prompt placement: l2p ``models/vit.py`` 205-240 (a block in both lists gets both, concatenated); the
  G-prefix ``models/vit.py`` 318-344; initialisers there and in ``models/prompt.py`` 137/198: flax
  ``initializers.uniform()``, i.e. U[0, 0.01) for prompts and keys (the port draws U(-1, 1): option ``init``).
- Selection and pull: l2p ``models/prompt.py`` ``Prompt.__call__`` (cosine of l2-normalised key and query, top-k;
  ``prompt_mask`` overrides the choice at train, 218-219; ``reduce_sim`` = mean over the batch of
  ``cos(q, k_selected)``, 246-250) and ``train_continual.py`` 237-247 (mask = the task's own prompt) and 294-295
  (``loss - coeff * reduce_sim``; ``coeff * (1 - cos)`` here: the same gradient). Only ``k_t`` enters the loss, so
  no other key gets gradient; the unselected E-prompts are not in the forward at all.
- ``shared_prompt_pool``: l2p ``train_continual.py`` 551-571, port ``engine.py`` 183-206 — before task ``t > 0``,
  E-prompt ``t`` starts as a copy of E-prompt ``t - 1`` (keys are not copied). Option ``shared_init``.
- What trains: l2p ``freeze_part = ["encoder", "embedding", "cls"]`` (``train_continual.py`` 85-102): the
  G-prefix (``prefix``), the whole prompt pool and keys and the head train on **every** task; the pool's other
  rows get zero gradient (task's own prompt, task's own key) and a fresh Adam with weight decay 0 leaves them
  unchanged. Here each E-prompt and key is its own parameter and the optimiser of task ``t`` holds only the
  G-prefix, E-prompt ``t`` and key ``t`` (the same updates; untouched parameters are not even in the optimiser).

Departures, with reasons:

- **Per-sample selection at test.** Both official codes ship ``batchwise_prompt = True`` (l2p ``models/prompt.py``
  211-216, port ``prompt.py`` 100-111): the batch votes and every image gets the majority's prompt, which reveals
  the task when a test batch holds one task. The suite ranks per-sample routing only, so there is no batch vote
  here: each image's output depends on that image alone.
- **Query**: the frozen model's image embedding (CLIP's ``visual`` output: final LayerNorm of [CLS], then the
  projection), the suite's frozen-feature convention (as :mod:`suite.methods.l2p`), instead of ViT's pre-logits
  (the same [CLS] before a classifier head; CLIP has a projection there instead). Keys live in that space.
- **Blocks**: ViT-B/16 has 12 blocks; the official G blocks [0, 1] and E blocks [2, 3, 4] are the first 2/12 and
  the next 3/12 of the depth. ``g_layers``/``e_layers`` ``"auto"`` keeps those indices on a tower of 5 or more
  blocks and otherwise keeps the proportions: G = the first ``max(1, round(2n/12))`` blocks, E = the next
  ``max(1, round(5n/12) - |G|)`` (the embedded tiny CLIP, 4 blocks: G [0], E [1]; the micro CLIP, 2 blocks:
  G [0], E [1]). Explicit specs (``"0-1"``, ``"2,3"``) override.
- **Pool** must hold one prompt per task: the official falls back to key matching at train for tasks past the
  pool (``end > pool_size``); here a sequence with more tasks than ``pool`` is refused in one line.
- **Budget**: the official effective lr is 0.03 x 24/256 = 0.0028 with Adam, constant, ~1,000 iterations per task
  (5 epochs of CIFAR-100's 5,000 images per task at batch 24). The suite trains ~60-100 iterations at batch 64
  with AdamW (weight decay 0: Adam) and a cosine schedule, set per sequence (``pet_training: dualprompt:``); the
  prompt forms there learn at lr 0.03-0.06; world-class-incremental (tiny CLIP, seed 0, 200 test images per
  set) gains about 2 / 4 / 3 points of plasticity at lr 0.0028 / 0.03 / 0.1, so 0.03. Gradient clipping at
  norm 1.0 is kept (``before_step``).
- Classification is the suite's (CLIP text features of the batch's task, the official ``train_mask`` in effect);
  the official trains a linear head, CLIP has none. The text tower is untouched.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from suite.errors import ConfigError
from suite.methods.base import Method, Option, RunContext
from suite.models.attention import SplitAttention
from suite.models.inference import frozen
from suite.pet.base import MAX_TOKENS, PETConfig, select_sites
from suite.pet.kv import ConcatKV, register_prefix

INITS = ("uniform-0.01", "uniform-1")  # l2p (flax uniform(): U[0, 0.01)); the PyTorch port (U(-1, 1))
OFFICIAL_DEPTH, OFFICIAL_G, OFFICIAL_E = 12, "0-1", "2-4"  # ViT-B/16; l2p configs/cifar100_dualprompt.py


def _draw(shape: tuple[int, ...], init: str) -> torch.Tensor:
    return torch.rand(shape) * 0.01 if init == "uniform-0.01" else torch.rand(shape) * 2 - 1


def _span(start: int, stop: int) -> str:
    return str(start) if stop - start == 1 else f"{start}-{stop - 1}"


class PromptPrefix(ConcatKV):
    """Key/value prefixes of one vision block: ``count`` prompts of ``(2, length, heads, head_dim)`` (key half,
    value half), learned directly; each image gets the prompt its routing names (one prompt: every image)."""

    def __init__(self, name: str, attn: SplitAttention, length: int, count: int, init: str):
        super().__init__(name, attn, length)
        self.prompts = nn.ParameterList(
            [nn.Parameter(_draw((2, length, attn.num_heads, attn.head_dim), init)) for _ in range(count)])
        self.enabled = True  # off during the frozen query pass: then the block is the pretrained one exactly
        self.route: tuple[list[int], torch.Tensor] | None = None  # (prompt ids used, per-image position in them)

    def keys_values(self, attn: SplitAttention) -> tuple[torch.Tensor, torch.Tensor]:
        kv = self.prompts[0]
        return kv[0].transpose(0, 1), kv[1].transpose(0, 1)

    def prefix(self, batch: int, attn: SplitAttention) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.enabled:
            empty = self.prompts[0].new_zeros(batch, self.num_heads, 0, self.head_dim)
            return empty, empty
        if len(self.prompts) == 1:
            return super().prefix(batch, attn)
        ids, where = self.route
        # only the prompts some image uses enter the graph: the others get no gradient at all
        kv = torch.stack([self.prompts[i] for i in ids])[where]  # (B, 2, length, heads, head_dim)
        return kv[:, 0].transpose(1, 2), kv[:, 1].transpose(1, 2)


class DualPrompt(Method):
    """G-prompt in the shallow blocks for every task; an E-prompt per task, chosen per image by its key at test."""

    name = "dualprompt"
    needs_pet = False
    text_changes = False

    # pool "tasks": one E-prompt per task of the sequence, as every official config sets it (10 for 10 tasks)
    OPTIONS = {"pool": Option("tasks", (int, str), low=1, choices=("tasks",)),
               "length": Option(5, (int,), low=1, high=MAX_TOKENS),
               "g_length": Option(5, (int,), low=1, high=MAX_TOKENS),
               "g_layers": Option("auto", (str,)), "e_layers": Option("auto", (str,)),
               "pull_weight": Option(1.0, (float,), low=0), "init": Option("uniform-0.01", (str,), choices=INITS),
               "shared_init": Option(True, (bool,)), "clip_grad": Option(1.0, (float,), low=0)}
    PROTOCOL = {"task_id_train": True, "routing": "per-sample", "extra_forward": 1}

    def __init__(self, **options: Any):
        super().__init__(**options)
        for opt in ("g_layers", "e_layers"):
            spec = self.options[opt]
            if spec != "auto":
                try:
                    PETConfig(towers="vision", layers=spec)
                except ConfigError as exc:
                    raise ConfigError(f"method {self.name}: {opt}: {exc}") from None

    # -- setup -----------------------------------------------------------------------------------------
    def setup(self, ctx: RunContext) -> None:
        o = self.options
        visual = getattr(getattr(ctx.backbone, "model", None), "visual", None)
        if visual is None:
            raise ConfigError(f"method {self.name} puts prefixes in an open_clip vision tower; "
                              f"{type(ctx.backbone).__name__} has none")
        n_tasks = len(ctx.sequence.tasks) if ctx.sequence is not None else 0
        if o["pool"] == "tasks":
            o["pool"] = max(n_tasks, 1)
        if n_tasks > o["pool"]:
            raise ConfigError(f"method {self.name}: the sequence has {n_tasks} tasks but the E-prompt pool holds "
                              f"{o['pool']} (one per task); set pool >= {n_tasks}")
        depth = len(ctx.backbone.blocks("vision"))
        g_spec, e_spec = self.block_specs(depth, o["g_layers"], o["e_layers"])
        undo: list = []
        self.g_layers = self._attach(ctx, g_spec, "g", o["g_length"], 1, undo)
        self.e_layers = self._attach(ctx, e_spec, "e", o["length"], o["pool"], undo)
        self.blocks = {"g": g_spec, "e": e_spec}
        dim = int(visual.output_dim)
        self.keys = nn.ParameterList([nn.Parameter(_draw((dim,), o["init"]).to(ctx.device)) for _ in range(o["pool"])])
        self._undo = undo
        self._training_task: int | None = None  # set while ``loss`` runs: route every image to that task's prompt
        self._querying = False
        self._pull: torch.Tensor | None = None
        self._params: list[nn.Parameter] = []
        self.tasks_done = 0
        self.last_selection: torch.Tensor | None = None  # the E-prompt each image of the last forward used
        self._hook = visual.register_forward_pre_hook(self._route)

    @staticmethod
    def block_specs(depth: int, g_layers: str = "auto", e_layers: str = "auto") -> tuple[str, str]:
        """The blocks of the G- and E-prompts: official indices on 5+ blocks, the official proportions below."""
        if depth >= 5:
            g_auto, e_auto = OFFICIAL_G, OFFICIAL_E
        elif depth < 2 and "auto" in (g_layers, e_layers):
            raise ConfigError(f"method dualprompt: a vision tower of {depth} block(s) has no room for G- and E-prompt "
                              f"blocks; give g_layers and e_layers")
        else:
            n_g = max(1, round(2 * depth / OFFICIAL_DEPTH))
            n_e = max(1, round(5 * depth / OFFICIAL_DEPTH) - n_g)
            g_auto, e_auto = _span(0, n_g), _span(n_g, min(depth, n_g + n_e))
        return (g_auto if g_layers == "auto" else g_layers), (e_auto if e_layers == "auto" else e_layers)

    def _attach(self, ctx: RunContext, spec: str, kind: str, length: int, count: int, undo: list) -> list[PromptPrefix]:
        layers = []
        try:
            sites = select_sites(ctx.backbone, PETConfig(towers="vision", layers=spec))
        except ConfigError as exc:
            raise ConfigError(f"method {self.name}: {kind}_layers: {exc}") from None
        for site in sites:
            layer = PromptPrefix(f"{self.name}.{kind}.vision.{site.index}", site.attn, length, count, self.options["init"])
            register_prefix(site.attn, layer, undo)
            layers.append(layer.to(ctx.device))
        return layers

    # -- routing ----------------------------------------------------------------------------------------
    def query(self, visual: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """The frozen model's normalised image feature (every prefix off: the pretrained function bit for bit)."""
        self._querying = True
        layers = self.g_layers + self.e_layers
        try:
            for layer in layers:
                layer.enabled = False
            with torch.no_grad():
                out = visual(images)
        finally:
            for layer in layers:
                layer.enabled = True
            self._querying = False
        out = out[0] if isinstance(out, tuple) else out
        return F.normalize(out.float(), dim=-1)

    def select(self, query: torch.Tensor) -> torch.Tensor:
        """Each image's E-prompt: the argmax of cos(q, k) over the pool, for every image on its own."""
        with torch.no_grad():
            keys = F.normalize(torch.stack(list(self.keys)).float(), dim=-1)
            return (query @ keys.T).argmax(dim=-1)

    def _route(self, visual: nn.Module, args: tuple) -> None:
        if self._querying:
            return
        images = args[0]
        query = frozen(images, "dualprompt-query", lambda: self.query(visual, images))
        t = self._training_task
        if t is not None:  # training task t: its own prompt for every image, and the pull on its own key
            chosen = torch.full((len(images),), t, dtype=torch.long, device=images.device)
            self._pull = (1 - query @ F.normalize(self.keys[t].float(), dim=-1)).mean()
        else:
            chosen = self.select(query)
        ids, where = torch.unique(chosen, return_inverse=True)
        for layer in self.e_layers:
            layer.route = (ids.tolist(), where)
        self.last_selection = chosen

    # -- training hooks -------------------------------------------------------------------------------
    def trainable(self, ctx: RunContext) -> list[nn.Parameter]:
        """The G-prefix (every task) and task t's E-prompt and key: nothing of another task is in the optimiser."""
        t = max(ctx.task_index, 0)
        self._params = [p for layer in self.g_layers for p in layer.prompts] + \
                       [layer.prompts[t] for layer in self.e_layers] + [self.keys[t]]
        return self._params

    def before_task(self, ctx: RunContext, t: int) -> None:
        if self.options["shared_init"] and t > 0:  # shared_prompt_pool: E-prompt t starts from E-prompt t - 1
            with torch.no_grad():
                for layer in self.e_layers:
                    layer.prompts[t].copy_(layer.prompts[t - 1])

    def loss(self, ctx: RunContext, batch: Any) -> torch.Tensor:
        self._training_task, self._pull = ctx.task_index, None
        try:
            loss = ctx.task_loss(batch)
        finally:
            self._training_task = None
        pull, self._pull = self._pull, None
        return loss + self.options["pull_weight"] * pull if pull is not None else loss

    def before_step(self, ctx: RunContext) -> None:
        if self.options["clip_grad"] > 0 and self._params:
            torch.nn.utils.clip_grad_norm_(self._params, self.options["clip_grad"])

    def after_task(self, ctx: RunContext, t: int) -> None:
        self.tasks_done = t + 1

    # -- state ----------------------------------------------------------------------------------------
    def _tensors(self) -> dict[str, list[nn.Parameter]]:
        return {"g": [p for layer in self.g_layers for p in layer.prompts],
                "e": [p for layer in self.e_layers for p in layer.prompts], "keys": list(self.keys)}

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {k: torch.stack([p.detach().cpu() for p in ps]) for k, ps in self._tensors().items()}
        state["tasks_done"] = self.tasks_done
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for k, ps in self._tensors().items():
                if tuple(state[k].shape) != (len(ps), *ps[0].shape):
                    raise ConfigError(f"method {self.name}: checkpoint {k} has shape {tuple(state[k].shape)}, "
                                      f"this run {(len(ps), *ps[0].shape)}")
                for p, v in zip(ps, state[k]):
                    p.copy_(v)
        self.tasks_done = int(state.get("tasks_done", 0))

    def report(self) -> dict[str, Any]:
        params = [p for ps in self._tensors().values() for p in ps]
        return {"prompt_parameters": int(sum(p.numel() for p in params)),
                "prompt_bytes": int(sum(p.numel() * p.element_size() for p in params)),
                "e_prompts_trained": int(self.tasks_done)}
