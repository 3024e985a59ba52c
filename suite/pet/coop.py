"""CoOp (Zhou et al., IJCV 2022): learned context vectors in place of a class prompt's words.

Every class prompt becomes ``[V]_1 … [V]_M {class}.``: the template words are dropped and ``M`` learned vectors
(shared by all classes: CoOp's unified context) take their place as input embeddings of the text tower.
Implemented by writing class prompts as ``X X … X {class}.`` (placeholders) and swapping the placeholder embeddings
for the context in the token embedding; texts without placeholders (captions) are untouched. ``init`` starts the
context at the embeddings of a phrase (default ``a photo of a``, so before training a class reads as that
hand-written prompt; ``M`` is then the phrase's token count), or at random with ``init: random``.

Gradient space (PEGP) — a suite extension, documented as such: the authors never project CoOp contexts. The
context passes through every text block, so no input-feature space protects it; instead the space is spanned
by the rows of the Jacobian of the old classes' (normalised) text features with respect to the context,
``∂f_c[k] / ∂ctx`` (OGD-style, Farajtabar et al., 2020), collected after each task for its classes. A projected
update leaves old class features unchanged to first order. It costs one backward pass of the text tower per old
class and output dimension (85 s for two classes of ViT-B-16 on 2 CPU cores); ``jacobian_rows: m`` collects a
seeded random orthonormal sketch of m rows per class instead (m backward passes; it spans only part of the row
space, so protection is weaker). The low-energy directions of that space matter:
measured on the micro model (``tests/test_pegp.py``, SGD, 30 steps), old text features move 4.9x less than without
projection at ε = 0.99, 8.5x at 0.999 and 14x with the whole row space (ε = 1); give CoOp a high ε
(``thresholds: {"coop.*": 1.0}``). Per-task contexts (the authors' CLIP setting) are not implemented.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from suite.errors import ConfigError
from suite.models.backbone import Backbone
from suite.pet.base import PET, GradSpace, PETConfig, PETLayer, register_config, replace_attr, undo_all

PLACEHOLDER = "X"
JACOBIAN_CHUNK = 64  # output dimensions differentiated at once


@dataclass
class CoOpConfig(PETConfig):
    tracks = ("class-incremental", "domain-incremental")
    tracks_why = "its context replaces the words of class prompts, and retrieval encodes captions, not class prompts"

    towers: str = "text"
    length: int = 4
    init: str = "a photo of a"  # a phrase, or "random"
    init_std: float = 0.02
    jacobian_rows: int = 0  # PEGP space: rows per class, 0 = all output dimensions (exact); m > 0 = a sketch

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.towers != "text":
            raise ConfigError(f"coop learns the text tower's context only (towers: text), got {self.towers!r}")
        if self.length < 1:
            raise ConfigError(f"coop length must be >= 1, got {self.length}")
        if self.jacobian_rows < 0:
            raise ConfigError(f"coop jacobian_rows must be >= 0 (0 = all), got {self.jacobian_rows}")


class ContextEmbedding(PETLayer):
    """The text tower's token embedding with the placeholder positions 1..M replaced by the learned context."""

    borrowed = ("embedding",)

    def __init__(self, name: str, embedding: nn.Embedding, context: torch.Tensor, placeholder_id: int,
                 jacobian_rows: int = 0):
        super().__init__(name)
        self.embedding = embedding
        self.context = nn.Parameter(context.clone())
        self.placeholder_id = int(placeholder_id)
        self.jacobian_rows = int(jacobian_rows)

    @property
    def length(self) -> int:
        return int(self.context.shape[0])

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        emb = self.embedding(tokens)
        m = self.length
        rows = (tokens[:, 1:1 + m] == self.placeholder_id).all(dim=1)
        if rows.any():
            ctx = self.context.to(emb.dtype).unsqueeze(0).expand(int(rows.sum()), -1, -1)
            emb = emb.clone()
            emb[rows, 1:1 + m] = ctx
        return emb

    def template(self) -> str:
        return " ".join([PLACEHOLDER] * self.length) + " {}."

    def grad_spaces(self) -> list[GradSpace]:
        return [GradSpace(f"{self.pet_name}.context", self.context, self.context.numel(), "right")]

    def _output_directions(self, d_out: int, salt: int) -> torch.Tensor:
        """Rows ``u`` whose ``u·∂f/∂ctx`` are collected: all output axes, or a seeded orthonormal sketch of m."""
        if not self.jacobian_rows or self.jacobian_rows >= d_out:
            return torch.eye(d_out)
        g = torch.Generator().manual_seed(1_000_003 * (salt + 1))
        return torch.linalg.qr(torch.randn(d_out, self.jacobian_rows, generator=g))[0].T

    def collect_outputs(self, backbone: Backbone, classnames: list[str]) -> None:
        """Emit the Jacobian rows ``∂f_c[k] / ∂ctx`` of the given classes' normalised text features."""
        if self._sink is None or not classnames:
            return
        tokens = backbone.tokenize([self.template().replace("{}", c) for c in classnames]).to(self.context.device)
        rows = []
        with torch.enable_grad():
            for c in range(len(classnames)):  # one class at a time: its rows ∂f_c[k]/∂ctx, k batched
                feat = F.normalize(backbone.encode_text(tokens[c:c + 1]).float(), dim=-1)[0]
                directions = self._output_directions(feat.shape[0], c).to(feat)
                for start in range(0, len(directions), JACOBIAN_CHUNK):
                    chunk = directions[start:start + JACOBIAN_CHUNK]
                    (g,) = torch.autograd.grad(feat, self.context, grad_outputs=chunk, retain_graph=True,
                                               is_grads_batched=True)
                    rows.append(g.reshape(len(chunk), -1))
        self.emit("context", torch.cat(rows).detach())


def attach(backbone: Backbone, cfg: CoOpConfig) -> PET:
    model = getattr(backbone, "model", None)
    embedding = getattr(model, "token_embedding", None)
    if not isinstance(embedding, nn.Embedding):
        raise ConfigError("coop needs an open_clip backbone (a text tower with token_embedding)")
    placeholder = backbone.tokenize([PLACEHOLDER])[0]
    ids = placeholder[(placeholder != 0)][1:-1]  # drop start/end (and padding)
    if len(ids) != 1:
        raise ConfigError(f"coop: the placeholder {PLACEHOLDER!r} is not one token for this tokenizer")
    with torch.no_grad():
        if cfg.init != "random":
            phrase = backbone.tokenize([cfg.init])[0]
            body = phrase[(phrase != 0)][1:-1]
            context = embedding(body.to(embedding.weight.device)).detach()
        else:
            context = torch.randn(cfg.length, embedding.embedding_dim) * cfg.init_std
    layer = ContextEmbedding("coop.text", embedding, context, int(ids[0]), cfg.jacobian_rows)
    undo: list = []
    replace_attr(model, "token_embedding", layer, undo)
    backbone.set_class_template(layer.template())
    undo.append(lambda: backbone.set_class_template(None))
    return PET(KIND, cfg, [layer], undo_all(undo))


KIND, CONFIG = "coop", CoOpConfig
register_config(KIND, CoOpConfig)
