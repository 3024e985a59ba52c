"""Ready for open_clip's next major: its development branch replaces ``nn.MultiheadAttention`` with its own
``Attention`` class (batch first, ``forward(x, k_x=, v_x=, attn_mask=)`` returning a tensor, a fused
``in_proj_weight``, optional q/k norms, head scale and inner norm) and its blocks call it that way. A local
stand-in of that class and call, written here from that interface, checks that the suite's attention splitting
and every attention-side PET keep working, so the ``open_clip_torch<4`` bound can be lifted once it ships."""
import copy
import types

import open_clip
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from suite.errors import ConfigError
from suite.evaluation.evaluator import Evaluator
from suite.models import embedded_config
from suite.models.attention import SplitAttention, is_open_clip_attention, split_attention_in
from suite.models.backbone import OpenClipBackbone
from suite.pet import attach_pet


class NextAttention(nn.Module):
    """Stand-in for open_clip 4's ``Attention``: the parts and the call the suite relies on."""

    def __init__(self, dim, num_heads, qk_norm=False, scale_heads=False, inner_norm=False, scaled_cosine=False):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.in_proj_weight = nn.Parameter(torch.randn(3 * dim, dim) * dim ** -0.5)
        self.in_proj_bias = nn.Parameter(torch.randn(3 * dim) * 0.1)
        self.ln_q = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.ln_k = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.logit_scale = nn.Parameter(torch.zeros(num_heads, 1, 1)) if scaled_cosine else None
        self.head_scale = nn.Parameter(torch.rand(num_heads, 1, 1) + 0.5) if scale_heads else None
        self.ln_inner = nn.LayerNorm(dim) if inner_norm else nn.Identity()
        self.attn_drop = nn.Dropout(0.0)
        self.out_proj = nn.Linear(dim, dim)
        self.out_drop = nn.Dropout(0.0)

    def forward(self, x, k_x=None, v_x=None, attn_mask=None):
        n, length, dim = x.shape
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        split = lambda t: t.reshape(n, -1, self.num_heads, self.head_dim).transpose(1, 2)  # noqa: E731
        q = split(F.linear(x, w_q, b_q))
        k = split(F.linear(x if k_x is None else k_x, w_k, b_k))
        v = split(F.linear(x if v_x is None else v_x, w_v, b_v))
        scores = (self.ln_q(q) * self.head_dim ** -0.5) @ self.ln_k(k).transpose(-1, -2)
        if attn_mask is not None:
            scores = scores + attn_mask
        out = scores.softmax(-1) @ v
        if self.head_scale is not None:
            out = out * self.head_scale
        return self.out_drop(self.out_proj(self.ln_inner(out.transpose(1, 2).reshape(n, length, dim))))

    @classmethod
    def like(cls, mha: nn.MultiheadAttention, **options) -> "NextAttention":
        new = cls(mha.embed_dim, mha.num_heads, **options)
        with torch.no_grad():
            new.in_proj_weight.copy_(mha.in_proj_weight)
            new.in_proj_bias.copy_(mha.in_proj_bias)
            new.out_proj.load_state_dict(mha.out_proj.state_dict())
        return new


def next_block_attention(self, q_x, k_x=None, v_x=None, attn_mask=None):
    """How open_clip 4's blocks call their attention: keywords, the tensor itself (no ``[0]``)."""
    k_x = q_x if k_x is None else k_x
    v_x = q_x if v_x is None else v_x
    return self.attn(q_x, k_x=k_x, v_x=v_x, attn_mask=None if attn_mask is None else attn_mask.to(q_x.dtype))


def as_next_major(model: nn.Module) -> nn.Module:
    """The same weights laid out as open_clip 4 lays them out."""
    for trunk in (model.visual.transformer, model.transformer):
        for block in trunk.resblocks:
            block.attn = NextAttention.like(block.attn)
            block.attention = types.MethodType(next_block_attention, block)
    return model


def _micro():
    torch.manual_seed(0)
    cfg = embedded_config("micro-clip")
    return open_clip.CLIP(**cfg).eval(), cfg


def _inputs(cfg):
    images = torch.randn(2, 3, cfg["vision_cfg"]["image_size"], cfg["vision_cfg"]["image_size"])
    tokens = open_clip.tokenize(["a red circle", "two blue squares"], context_length=cfg["text_cfg"]["context_length"])
    return images, tokens


def test_the_stand_in_is_faithful_to_the_model_it_was_made_from():
    model, cfg = _micro()
    images, tokens = _inputs(cfg)
    with torch.no_grad():
        ref = model.encode_image(images), model.encode_text(tokens)
        nxt = as_next_major(copy.deepcopy(model))
        assert torch.allclose(nxt.encode_image(images), ref[0], atol=1e-5)
        assert torch.allclose(nxt.encode_text(tokens), ref[1], atol=1e-5)


@pytest.mark.parametrize("options", [{}, {"qk_norm": True, "scale_heads": True, "inner_norm": True}])
def test_split_attention_from_open_clip_attention_computes_the_same(options):
    torch.manual_seed(1)
    attn = NextAttention(32, 4, **options).eval()
    assert is_open_clip_attention(attn) and not is_open_clip_attention(nn.MultiheadAttention(32, 4))
    split = SplitAttention.from_open_clip(attn).eval()
    x, kv = torch.randn(2, 7, 32), torch.randn(2, 7, 32)
    mask = torch.triu(torch.full((7, 7), float("-inf")), 1)
    with torch.no_grad():
        assert torch.allclose(split(x, attn_mask=mask), attn(x, attn_mask=mask), atol=1e-5)
        assert torch.allclose(split(x, k_x=kv, v_x=kv), attn(x, k_x=kv, v_x=kv), atol=1e-5)


def test_scaled_cosine_attention_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="scaled cosine"):
        SplitAttention.from_open_clip(NextAttention(32, 4, scaled_cosine=True))


@pytest.mark.parametrize("kind", ["lora", "adapter", "prefix", "gated-prefix", "vpt", "coop"])
def test_every_pet_attaches_and_trains_on_the_next_major_layout(kind):
    model, cfg = _micro()
    images, tokens = _inputs(cfg)
    with torch.no_grad():
        ref = model.encode_image(images), model.encode_text(tokens)
    model = as_next_major(model)
    backbone = OpenClipBackbone(model, image_size=cfg["vision_cfg"]["image_size"],
                                context_length=cfg["text_cfg"]["context_length"], mean=(0.5,) * 3, std=(0.5,) * 3,
                                spec="stand-in", pretrained=False)
    assert split_attention_in(backbone) == 0, "every attention was split when the backbone was made"
    assert all(isinstance(s.attn, SplitAttention) for t in ("vision", "text") for s in backbone.blocks(t))
    for p in backbone.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        assert torch.allclose(backbone.encode_image(images), ref[0], atol=1e-5)
        assert torch.allclose(backbone.encode_text(tokens), ref[1], atol=1e-5)
    pet = attach_pet(backbone, kind)
    params = [p for p in pet.parameters() if p.requires_grad]
    text = Evaluator(backbone).class_text_features(["circle", "square"], ["a photo of a {}."], fresh=True)
    loss = F.cross_entropy(backbone.encode_image(images) @ text.T, torch.arange(2))
    loss.backward()
    assert params and any(p.grad is not None and p.grad.abs().sum() > 0 for p in params), kind
