"""The embedded backbone built without open_clip (suite/models/tiny_clip.py, suite/models/bpe.py) is open_clip's:
the same state dict (names, shapes, order, seeded random init), the shipped weights load strictly, image and text
features equal bit for bit (torch.equal) to open_clip's CLIP with the same weights on every class prompt of every
embedded sequence, cross-modal captions and hostile strings, the tokenizer equals ``open_clip.tokenize``, and a
run's model path imports none of open_clip, timm, transformers, torchvision."""
import subprocess
import sys

import numpy as np
import open_clip
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from suite.config.sequences import load_sequence, sequence_files
from suite.data import world
from suite.models import ModelError, asset_path, bpe, create_model_and_transforms, embedded_config
from suite.models.backbone import CLIP_MEAN, CLIP_STD, OpenClipBackbone
from suite.models.tiny_clip import CLIP

CONFIGS = ("tiny-clip", "micro-clip")

HOSTILE = [
    "", " ", "\t\n  \r", "a photo of a {}.", "A PHOTO   of\ta\nRED    circle", "don't it's we'll they've I'm you'd",
    "Caf\u00e9 na\u00efve \u00c6on \u00df \u0130stanbul", "\u00c3\u00a9t\u00c3\u00a9 (mojibake)",
    "&amp;amp; &lt;b&gt; &#39;x&#39; &nbsp;", "<b>bold</b> & <i>it</i>", "<start_of_text>",
    "a <END_OF_TEXT> b <start_of_text>", "\u4f60\u597d\u4e16\u754c \u3053\u3093\u306b\u3061\u306f",
    "\U0001F600\U0001F44D\U0001F3FD \u2764\ufe0f", "\u0645\u0631\u062d\u0628\u0627 \u05e9\u05dc\u05d5\u05dd",
    "e\u0301 a\u0308 \u0915\u094d\u0937", "\ufb01 \uff26\uff35\uff2c\uff2c \u2460 \u00bd \u0662\u0663 \u2167",
    "zero\u200bwidth\u200djoin\u00a0nbsp\u00ad", "\x00\x01\x7f\x9f ctrl",
    "\u201ccurly\u201d \u2018quotes\u2019 \u2014 dash \u2026", "123456789 3.14 1e-5 #42 @user", "!!!???...;;;",
    "_under_score_", "supercalifragilisticexpialidocious" * 4, "x" * 300, " ".join(["word"] * 60),
    "a photo of a red circle. " * 12,
]


def _prompts() -> list[str]:
    """Every class prompt of every embedded sequence (tasks and control sets, candidate classes included, each
    class in its task's templates, as the evaluator builds them) and captions of its cross-modal tasks."""
    out: list[str] = []
    for name in sequence_files():
        seq = load_sequence(name)
        if not seq.embedded:
            continue
        for spec in seq.tasks + seq.control_sets:
            classes = list(spec.classes) if isinstance(spec.classes, tuple) else []
            classes += [c for group in spec.candidates for c in group]
            out += [t.replace("{}", c) for c in classes for t in spec.templates]
            if not classes and spec.source.get("facet") == "scene":
                rng = np.random.default_rng(len(out))
                for _ in range(40):
                    s = world.sample_spec("scene", None, spec.source.get("domain", "solid"), rng)
                    out.append(world.caption(s, rng, style=spec.source.get("caption_style", "mixed")))
    return sorted(set(out))


PROMPTS = _prompts()


def _pair(name: str, seed: int = 0) -> tuple[nn.Module, nn.Module, dict]:
    cfg = embedded_config(name)
    torch.manual_seed(seed)
    ref = open_clip.CLIP(**cfg).eval()
    torch.manual_seed(seed)
    new = CLIP(**cfg).eval()
    return ref, new, cfg


@pytest.fixture(scope="module")
def shipped():
    """open_clip's CLIP and ours, both with the shipped tiny-clip weights."""
    ref, new, cfg = _pair("tiny-clip", seed=1)
    state = load_file(str(asset_path("tiny-clip")))
    ref.load_state_dict(state, strict=True)
    new.load_state_dict(state, strict=True)
    return ref, new, cfg


def _images(cfg: dict, n: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    s = cfg["vision_cfg"]["image_size"]
    return torch.randn(n, 3, s, s, generator=g)


def test_prompt_set_covers_every_embedded_sequence():
    assert len(PROMPTS) > 200
    assert "a photo of a red star." in PROMPTS or any("red star" in p for p in PROMPTS)
    assert any("{}" not in p and len(p.split()) > 4 for p in PROMPTS)  # captions


@pytest.mark.parametrize("name", CONFIGS)
def test_state_dict_module_tree_and_seeded_init_are_open_clips(name):
    ref, new, _ = _pair(name)
    a, b = ref.state_dict(), new.state_dict()
    assert list(a) == list(b)  # same names, same order
    assert {k: tuple(v.shape) for k, v in a.items()} == {k: tuple(v.shape) for k, v in b.items()}
    assert all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a), "seeded random init differs"
    assert [n for n, _ in ref.named_modules()] == [n for n, _ in new.named_modules()]
    assert [(n, type(m).__name__) for n, m in ref.named_modules() if isinstance(m, nn.MultiheadAttention)] == \
        [(n, type(m).__name__) for n, m in new.named_modules() if isinstance(m, nn.MultiheadAttention)]
    assert [n for n, _ in ref.named_buffers()] == [n for n, _ in new.named_buffers()] == ["attn_mask"]
    assert torch.equal(ref.attn_mask, new.attn_mask)
    assert (ref.context_length, ref.vocab_size, ref.visual.output_dim, ref.visual.transformer.width) == \
        (new.context_length, new.vocab_size, new.visual.output_dim, new.visual.transformer.width)


def test_shipped_weights_load_strictly(shipped):
    ref, new, _ = shipped
    state = load_file(str(asset_path("tiny-clip")))
    missing, unexpected = new.load_state_dict(state, strict=True)
    assert not missing and not unexpected
    assert all(torch.equal(v, new.state_dict()[k]) for k, v in state.items())


def test_image_and_text_features_equal_open_clips_bit_for_bit(shipped):
    ref, new, cfg = shipped
    ctx = cfg["text_cfg"]["context_length"]
    images = _images(cfg)
    texts = PROMPTS + HOSTILE
    tokens = open_clip.tokenize(texts, context_length=ctx)
    assert torch.equal(bpe.tokenize(texts, context_length=ctx), tokens)
    with torch.no_grad():
        assert torch.equal(new.encode_image(images), ref.encode_image(images))
        assert torch.equal(new.encode_text(tokens), ref.encode_text(tokens))
        assert torch.equal(new.encode_text(tokens, normalize=True), ref.encode_text(tokens, normalize=True))
        for a, b in zip(new(images, tokens[:16]), ref(images, tokens[:16])):
            assert torch.equal(a, b)


def test_training_mode_forward_and_gradients_equal_open_clips(shipped):
    ref, new, cfg = shipped
    images, tokens = _images(cfg, 4), open_clip.tokenize(PROMPTS[:6], context_length=cfg["text_cfg"]["context_length"])
    grads = []
    for model in (ref, new):
        model.train().zero_grad()
        img, txt, scale = model(images, tokens)
        (scale * img @ txt.T).logsumexp(-1).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        model.eval()
    assert list(grads[0]) == list(grads[1]) and len(grads[0]) > 20
    assert all(torch.equal(grads[0][n], grads[1][n]) for n in grads[0])


def test_backbone_the_suite_builds_equals_open_clip_wrapped_the_same_way(shipped):
    """The run path: ``embedded:tiny-clip`` (attention split for the PETs) against open_clip's CLIP with the
    shipped weights wrapped by the same backbone class."""
    ref_model, _, cfg = shipped
    import copy

    ref = OpenClipBackbone(copy.deepcopy(ref_model), image_size=cfg["vision_cfg"]["image_size"],
                           context_length=cfg["text_cfg"]["context_length"], mean=CLIP_MEAN, std=CLIP_STD,
                           spec="ref", pretrained=True).eval()
    bb = create_model_and_transforms("embedded:tiny-clip")
    assert bb.pretrained and bb.spec == "embedded:tiny-clip"
    assert [n for n, _ in bb.named_parameters()] == [n for n, _ in ref.named_parameters()]
    assert len(bb.blocks("vision")) == 4 and len(bb.blocks("text")) == 3
    texts = PROMPTS + HOSTILE
    tokens = bb.tokenize(texts)
    assert torch.equal(tokens, open_clip.tokenize(texts, context_length=bb.context_length))
    images = _images(cfg)
    with torch.no_grad():
        assert torch.equal(bb.encode_image(images), ref.encode_image(images))
        assert torch.equal(bb.encode_text(tokens), ref.encode_text(tokens))
    assert torch.equal(bb.logit_scale_value, ref.logit_scale_value)


@pytest.mark.parametrize("break_it", ["skip ln_final", "skip ln_post", "no causal mask", "tanh gelu"])
def test_the_comparison_sees_a_broken_variant(shipped, break_it):
    """The equality checks above are sharp: one step changed in our model makes them fail."""
    import copy

    ref, new, cfg = shipped
    new = copy.deepcopy(new)
    tokens = open_clip.tokenize(PROMPTS[:32], context_length=cfg["text_cfg"]["context_length"])
    images = _images(cfg, 4)
    if break_it == "skip ln_final":
        new.ln_final = nn.Identity()
    elif break_it == "skip ln_post":
        new.visual.ln_post = nn.Identity()
    elif break_it == "no causal mask":
        new.attn_mask.zero_()
    else:
        for trunk in (new.visual.transformer, new.transformer):
            trunk.resblocks[-1].mlp.gelu = nn.GELU(approximate="tanh")
    with torch.no_grad():
        same_image = torch.equal(new.encode_image(images), ref.encode_image(images))
        same_text = torch.equal(new.encode_text(tokens), ref.encode_text(tokens))
    assert not (same_image and same_text)
    assert same_image == (break_it in ("skip ln_final", "no causal mask"))


@pytest.mark.parametrize("ctx", [77, 24, 16, 5, 2])
def test_tokenizer_equals_open_clip_tokenize(ctx):
    texts = PROMPTS + HOSTILE
    ours = bpe.tokenize(texts, context_length=ctx)
    assert ours.dtype == torch.long and ours.shape == (len(texts), ctx)
    assert torch.equal(ours, open_clip.tokenize(texts, context_length=ctx))
    assert torch.equal(bpe.tokenize(texts[0], context_length=ctx), open_clip.tokenize(texts[0], context_length=ctx))
    long = bpe.tokenize(["x " * 200], context_length=ctx)[0]
    assert long[-1] == 49407 and (ctx < 2 or long[0] == 49406)  # truncated: the last id is the end token
    assert bpe._tables() is bpe._tables()  # merges and ids are built once per process


def test_unsupported_config_fields_are_refused_in_one_line():
    cfg = embedded_config("micro-clip")
    vision = {**cfg["vision_cfg"], "timm_model_name": "vit_tiny"}
    for bad, field in [({**cfg, "quick_gelu": True}, "quick_gelu"),
                       ({**cfg, "vision_cfg": vision}, "vision_cfg.timm_model_name"),
                       ({**cfg, "vision_cfg": {**cfg["vision_cfg"], "layers": [1, 1, 1, 1]}}, "vision_cfg.layers"),
                       ({**cfg, "text_cfg": {**cfg["text_cfg"], "hf_model_name": "bert"}}, "text_cfg.hf_model_name"),
                       ({**cfg, "text_cfg": {**cfg["text_cfg"], "ls_init_value": 0.1}}, "text_cfg.ls_init_value"),
                       ({**cfg, "text_cfg": {**cfg["text_cfg"], "no_such_field": 1}}, "text_cfg.no_such_field")]:
        with pytest.raises(ModelError, match=field.replace(".", r"\.")) as info:
            CLIP(**bad)
        assert "\n" not in str(info.value)
    CLIP(**{**cfg, "vision_cfg": {**cfg["vision_cfg"], "pool_type": "tok", "block_type": "default"}})  # defaults pass


def test_a_run_path_imports_no_open_clip_timm_transformers_torchvision():
    code = ("import sys, torch\n"
            "from suite.models import create_model_and_transforms\n"
            "from suite.engine.record import environment\n"
            "bb = create_model_and_transforms('embedded:tiny-clip')\n"
            "tokens = bb.tokenize(['a photo of a red circle.', 'Caf\\u00e9 &amp; co'])\n"
            "with torch.no_grad():\n"
            "    bb.encode_text(tokens); bb.encode_image(torch.zeros(1, 3, 32, 32))\n"
            "env = environment(torch.device('cpu'), 1)\n"
            "assert env['open_clip'], env\n"
            "heavy = [m for m in ('open_clip', 'timm', 'transformers', 'torchvision') if m in sys.modules]\n"
            "print('HEAVY', heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "HEAVY []" in out.stdout, out.stdout
