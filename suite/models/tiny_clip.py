"""The embedded backbones' CLIP, built without importing open_clip.

``import open_clip`` costs seconds on a small CPU (its package imports timm, transformers and torchvision) and a
run on an embedded model uses none of that. :class:`CLIP` here is the plain ViT + text-transformer CLIP of
open_clip 3.x for the configs in ``suite/models/configs``: the same module tree, parameter and buffer names
(the shipped weights load strictly; PETs, attention splitting and hooks find what they find in open_clip's),
``nn.MultiheadAttention`` in the blocks as open_clip 3.x has, the same operations in the same order (features
equal bit for bit), and the same random initialisation for a given seed (parameters are created and drawn in
open_clip's order). Config fields for features the embedded models do not use are refused in one line.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from suite.errors import field_path

# Fields of open_clip's CLIPVisionCfg / CLIPTextCfg / CLIP(...) this module builds from, with open_clip's defaults.
VISION_SIZES = {"layers": 12, "width": 768, "head_width": 64, "mlp_ratio": 4.0, "patch_size": 16, "image_size": 224}
TEXT_SIZES = {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12, "mlp_ratio": 4.0}
# Fields accepted only at the value open_clip's plain CLIP has (any other value selects a feature not built here).
_SHARED_FIXED = {"ls_init_value": None, "final_ln_after_pool": False, "output_tokens": False, "act_kwargs": None,
                 "norm_kwargs": None, "block_type": (None, "default"), "qk_norm": False, "scaled_cosine_attn": False,
                 "scale_heads": False, "scale_attn_inner": False, "scale_attn": False, "scale_fc": False}
VISION_FIXED = {**_SHARED_FIXED, "patch_dropout": 0.0, "attentional_pool": False, "no_ln_pre": False,
                "pos_embed_type": "learnable", "pool_type": "tok", "timm_model_name": None}
TEXT_FIXED = {**_SHARED_FIXED, "hf_tokenizer_name": None, "tokenizer_mode": None, "tokenizer_kwargs": None,
              "embed_cls": False, "no_causal_mask": False, "pool_type": "argmax", "proj_bias": False,
              "proj_type": "linear", "hf_model_name": None}
# Fields that only matter with a feature refused above: accepted with any value, unused.
VISION_IDLE = {"attn_pooler_queries", "attn_pooler_heads", "timm_model_pretrained", "timm_pool", "timm_proj",
               "timm_proj_bias", "timm_drop", "timm_drop_path"}
TEXT_IDLE = {"pad_id", "eos_id", "hf_model_pretrained", "hf_proj_type", "hf_pooler_type"}
TOP_FIXED = {"quick_gelu": False, "init_logit_bias": None, "nonscalar_logit_scale": False, "cast_dtype": None,
             "output_dict": False}


def _pair(v: Any) -> tuple[int, int]:
    return (v[0], v[1]) if isinstance(v, (tuple, list)) else (v, v)


def _resolve(section: str, given: dict, sizes: dict, fixed: dict, idle: set) -> dict:
    """``given`` over ``sizes``' defaults; a field outside the three tables, or a fixed field at another value,
    is a ModelError naming it."""
    from suite.models import ModelError

    if not isinstance(given, dict):
        raise ModelError(f"embedded config: {section} must be a mapping, got {type(given).__name__}")
    out = dict(sizes)
    for key, value in given.items():
        if key in sizes or key in idle:
            out[key] = value
        elif key in fixed:
            allowed = fixed[key] if isinstance(fixed[key], tuple) else (fixed[key],)
            if value not in allowed:
                raise ModelError(f"embedded config: {field_path((section, key))} = {value!r} is not supported by the "
                                 f"built-in CLIP (only {allowed[0]!r}; that feature needs open_clip: use an open_clip: "
                                 "model spec)")
        else:
            raise ModelError(f"embedded config: {field_path((section, key))}: unknown field for the built-in CLIP")
    if isinstance(out.get("layers"), (tuple, list)):
        raise ModelError(f"embedded config: {section}.layers = {out['layers']!r}: the ResNet tower is not built here")
    return out


class LayerNorm(nn.LayerNorm):
    """LayerNorm whose output keeps the input's dtype (open_clip's ``LayerNorm``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps).to(dtype)


class ResidualAttentionBlock(nn.Module):
    """Pre-norm block: ``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))``; ``ls_1``/``ls_2`` are identities (no
    layer scale in these configs) kept so the module tree is open_clip's."""

    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.ln_1 = LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ls_1 = nn.Identity()
        self.ln_2 = LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, hidden)), ("gelu", nn.GELU()),
                                              ("c_proj", nn.Linear(hidden, width))]))
        self.ls_2 = nn.Identity()

    def get_weight_dtype(self) -> torch.dtype:
        """The dtype text embeddings are cast to (the first MLP weight's, as open_clip reads it)."""
        fc = self.mlp.c_fc
        return fc.int8_original_dtype if hasattr(fc, "int8_original_dtype") else fc.weight.dtype

    def attention(self, q_x: torch.Tensor, k_x: torch.Tensor | None = None, v_x: torch.Tensor | None = None,
                  attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The attention branch, called as open_clip's block calls ``nn.MultiheadAttention`` (PETs wrap it)."""
        # self-attention passes the same tensor object as query, key and value (attention's fast path checks it)
        k_x = q_x if k_x is None else k_x
        v_x = q_x if v_x is None else v_x
        mask = None if attn_mask is None else attn_mask.to(q_x.dtype)
        return self.attn(q_x, k_x, v_x, need_weights=False, attn_mask=mask)[0]

    def forward(self, q_x: torch.Tensor, k_x: torch.Tensor | None = None, v_x: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = q_x + self.ls_1(self.attention(q_x=self.ln_1(q_x), attn_mask=attn_mask))
        return x + self.ls_2(self.mlp(self.ln_2(x)))


class Transformer(nn.Module):
    """A stack of blocks over batch-first ``(N, L, D)`` tokens."""

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.width, self.layers = width, layers
        self.batch_first = True
        self.grad_checkpointing = False
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads, mlp_ratio) for _ in range(layers)])

    def get_cast_dtype(self) -> torch.dtype:
        """See :meth:`ResidualAttentionBlock.get_weight_dtype`."""
        return self.resblocks[0].get_weight_dtype()

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.resblocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                from torch.utils.checkpoint import checkpoint

                x = checkpoint(block, x, None, None, attn_mask, use_reentrant=False)
            else:
                x = block(x, attn_mask=attn_mask)
        return x


class VisionTransformer(nn.Module):
    """ViT image tower: patch conv, class token, learned positions, ``ln_pre``, blocks, ``ln_post`` on all
    tokens, the class token's features times ``proj`` (``proj`` may be set to None by a method that wants the
    normed class token itself)."""

    def __init__(self, image_size: Any, patch_size: Any, width: int, layers: int, heads: int, mlp_ratio: float,
                 output_dim: int):
        super().__init__()
        self.output_tokens = False
        self.image_size, self.patch_size = _pair(image_size), _pair(patch_size)
        self.grid_size = (self.image_size[0] // self.patch_size[0], self.image_size[1] // self.patch_size[1])
        self.final_ln_after_pool = False
        self.output_dim = output_dim
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        scale = width ** -0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(self.grid_size[0] * self.grid_size[1] + 1, width))
        self.patch_dropout = nn.Identity()
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads, mlp_ratio)
        self.attn_pool = None
        self.pool_type = "tok"
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute blocks in the backward pass instead of storing their activations."""
        self.transformer.grad_checkpointing = enable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # (N, grid², width)
        cls = self.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1).to(x.dtype)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(self.patch_dropout(x))
        x = self.ln_post(self.transformer(x))
        pooled = x[:, 0]
        return pooled @ self.proj if self.proj is not None else pooled


def causal_mask(length: int) -> torch.Tensor:
    """Additive mask: ``-inf`` above the diagonal (a token sees itself and the tokens before it), 0 elsewhere."""
    return torch.full((length, length), float("-inf")).triu_(1)


class CLIP(nn.Module):
    """open_clip's ``CLIP(**cfg)`` for a plain ViT / text-transformer config (see the module doc)."""

    def __init__(self, embed_dim: int, vision_cfg: dict, text_cfg: dict, init_logit_scale: float = np.log(1 / 0.07),
                 **options: Any):
        super().__init__()
        _resolve("(top level)", options, {}, TOP_FIXED, set())
        vc = _resolve("vision_cfg", vision_cfg, VISION_SIZES, VISION_FIXED, VISION_IDLE)
        tc = _resolve("text_cfg", text_cfg, TEXT_SIZES, TEXT_FIXED, TEXT_IDLE)
        self.output_dict = False
        # open_clip's construction order, so a seeded random init draws the same numbers for the same tensors
        self.visual = VisionTransformer(vc["image_size"], vc["patch_size"], vc["width"], vc["layers"],
                                        vc["width"] // vc["head_width"], vc["mlp_ratio"], embed_dim)
        width = tc["width"]
        token_embedding = nn.Embedding(tc["vocab_size"], width)
        positional_embedding = nn.Parameter(torch.empty(tc["context_length"], width))
        transformer = Transformer(width, tc["layers"], tc["heads"], tc["mlp_ratio"])
        ln_final = LayerNorm(width)
        text_projection = nn.Parameter(torch.empty(width, embed_dim))
        nn.init.normal_(token_embedding.weight, std=0.02)
        nn.init.normal_(positional_embedding, std=0.01)
        attn_std, fc_std = width ** -0.5, (2 * width) ** -0.5
        proj_std = attn_std * (2 * tc["layers"]) ** -0.5
        for block in transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(text_projection, std=width ** -0.5)
        # registered in open_clip's order: the state dict lists names in the same order
        self.transformer = transformer
        self.context_length, self.vocab_size = tc["context_length"], tc["vocab_size"]
        self.token_embedding = token_embedding
        self.positional_embedding = positional_embedding
        self.ln_final = ln_final
        self.text_projection = text_projection
        self.text_pool_type, self.text_eos_id = "argmax", tc.get("eos_id", 2)
        self.register_buffer("attn_mask", causal_mask(tc["context_length"]), persistent=False)
        self.logit_scale = nn.Parameter(torch.ones([]) * init_logit_scale)
        self.logit_bias = None

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute both towers' blocks in the backward pass instead of storing their activations."""
        self.visual.set_grad_checkpointing(enable)
        self.transformer.grad_checkpointing = enable

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Image features ``(N, embed_dim)`` of normalised images ``(N, 3, S, S)``."""
        features = self.visual(image)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Features of token ids ``(N, context_length)``: the end-of-text token's (the row's largest id) output
        after ``ln_final``, times ``text_projection``."""
        dtype = self.transformer.get_cast_dtype()
        x = self.token_embedding(text).to(dtype)
        x = x + self.positional_embedding.to(dtype)
        x = self.transformer(x, attn_mask=self.attn_mask)
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), text.argmax(dim=-1)]
        x = x @ self.text_projection
        return F.normalize(x, dim=-1) if normalize else x

    def get_logits(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled cosine similarities, images x texts and its transpose (the contrastive loss's inputs)."""
        image_logits = self.logit_scale.exp() * self.encode_image(image, normalize=True) @ \
            self.encode_text(text, normalize=True).T
        return image_logits, image_logits.T

    def forward(self, image: torch.Tensor | None = None,
                text: torch.Tensor | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """Normalised image and text features and ``exp(logit_scale)``, as open_clip's CLIP returns them."""
        image_features = self.encode_image(image, normalize=True) if image is not None else None
        text_features = self.encode_text(text, normalize=True) if text is not None else None
        return image_features, text_features, self.logit_scale.exp()


__all__ = ["CLIP", "LayerNorm", "ResidualAttentionBlock", "Transformer", "VisionTransformer", "causal_mask"]
