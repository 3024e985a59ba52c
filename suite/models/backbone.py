"""Backbones behind one interface: encode images/text, tokenize, and name the blocks PETs attach to."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from suite.errors import ConfigError
from suite.models.attention import SplitAttention, split_attention_in

# OpenAI CLIP's image normalisation (open_clip's OPENAI_DATASET_MEAN / STD)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TOWERS = ("vision", "text")


@dataclass
class BlockSite:
    """Where PETs attach in one transformer block: its attention (q/k/v/out Linear) and its MLP."""

    tower: str
    index: int
    block: nn.Module
    attn_attr: str
    mlp_attr: str
    width: int
    linears: dict[str, tuple[nn.Module, str]]  # role -> (parent module, attribute name)

    @property
    def attn(self) -> nn.Module:
        return getattr(self.block, self.attn_attr)

    @property
    def mlp(self) -> nn.Module:
        return getattr(self.block, self.mlp_attr)


class Backbone(nn.Module):
    """A CLIP model with the interface the suite needs; subclasses adapt open_clip and transformers."""

    spec: str = ""
    pretrained: bool = False
    image_size: int = 224
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def blocks(self, tower: str) -> list[BlockSite]:
        raise NotImplementedError

    def image_side(self) -> list[nn.Module]:
        """The modules ``encode_image`` runs (PET layers attached there included): whatever trains elsewhere in
        the backbone leaves image features as they are."""
        raise NotImplementedError

    @property
    def logit_scale_value(self) -> torch.Tensor:
        raise NotImplementedError

    _class_template: str | None = None

    def set_class_template(self, template: str | None) -> None:
        """Make every class prompt use ``template`` instead of the sequence's templates (a PET such as CoOp
        that learns the prompt's words); ``None`` restores the sequence's templates."""
        self._class_template = template

    def class_templates(self, templates: list[str]) -> list[str]:
        return [self._class_template] if self._class_template else list(templates)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def images_from_uint8(self, batch: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``(B, H, W, 3)`` uint8 → normalised ``(B, 3, S, S)`` float on the model's device (fast path for arrays)."""
        x = torch.as_tensor(batch).to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False).clamp_(0, 1)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_image(images), self.encode_text(tokens)


class OpenClipBackbone(Backbone):
    def __init__(self, model: nn.Module, image_size: int, context_length: int, mean, std, spec: str,
                 pretrained: bool, tokenizer: Callable | None = None, pil_preprocess: Callable | None = None):
        super().__init__()
        split_attention_in(model)
        self.model = model
        self.image_size, self.context_length = int(image_size), int(context_length)
        self.mean, self.std = tuple(mean), tuple(std)
        self.spec, self.pretrained = spec, pretrained
        self._tokenizer = tokenizer
        self.pil_preprocess = pil_preprocess

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images)

    def image_side(self) -> list[nn.Module]:
        return [self.model.visual]

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        if self._tokenizer is not None:
            return self._tokenizer(texts)
        from suite.models.bpe import tokenize  # CLIP's tokenizer, as open_clip's, without importing open_clip

        return tokenize(texts, context_length=self.context_length)

    @property
    def logit_scale_value(self) -> torch.Tensor:
        return self.model.logit_scale.exp()

    def blocks(self, tower: str) -> list[BlockSite]:
        trunk = self.model.visual.transformer if tower == "vision" else self.model.transformer
        sites = []
        for i, blk in enumerate(trunk.resblocks):
            attn = blk.attn
            if not isinstance(attn, SplitAttention):
                raise TypeError(f"{tower} block {i}: unsupported attention {type(attn).__name__}")
            lin = {"q": (attn, "q"), "k": (attn, "k"), "v": (attn, "v"), "out": (attn, "out"),
                   "fc1": (blk.mlp, "c_fc"), "fc2": (blk.mlp, "c_proj")}
            sites.append(BlockSite(tower, i, blk, "attn", "mlp", trunk.width, lin))
        return sites


class HFBackbone(Backbone):
    """transformers ``CLIPModel`` (separate q/k/v Linear). LoRA and adapters attach; prefix/prompt need open_clip."""

    def __init__(self, model: nn.Module, tokenizer: Any, spec: str):
        super().__init__()
        self.model = model
        cfg = model.config
        self.image_size = int(cfg.vision_config.image_size)
        self.context_length = int(cfg.text_config.max_position_embeddings)
        self.mean, self.std = CLIP_MEAN, CLIP_STD
        self.spec, self.pretrained = spec, True
        self._tokenizer = tokenizer

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        out = self.model.vision_model(pixel_values=images)
        return self.model.visual_projection(out.pooler_output)

    def image_side(self) -> list[nn.Module]:
        return [self.model.vision_model, self.model.visual_projection]

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = (tokens != getattr(self.model.config.text_config, "pad_token_id", 0)).long() if tokens.dim() == 2 else None
        out = self.model.text_model(input_ids=tokens, attention_mask=mask)
        return self.model.text_projection(out.pooler_output)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        if self._tokenizer is None:
            raise ConfigError(f"{self.spec}: no tokenizer files (vocab.json, merges.txt) in the model directory")
        return self._tokenizer(texts, padding="max_length", truncation=True, max_length=self.context_length,
                               return_tensors="pt")["input_ids"]

    @property
    def logit_scale_value(self) -> torch.Tensor:
        return self.model.logit_scale.exp()

    def blocks(self, tower: str) -> list[BlockSite]:
        enc = (self.model.vision_model if tower == "vision" else self.model.text_model).encoder
        sites = []
        for i, layer in enumerate(enc.layers):
            att = layer.self_attn
            lin = {"q": (att, "q_proj"), "k": (att, "k_proj"), "v": (att, "v_proj"), "out": (att, "out_proj"),
                   "fc1": (layer.mlp, "fc1"), "fc2": (layer.mlp, "fc2")}
            sites.append(BlockSite(tower, i, layer, "self_attn", "mlp", att.embed_dim, lin))
        return sites
