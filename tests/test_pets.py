"""Every PET on the towers it supports: attaches, trains only its own parameters and only its tower; PETs whose
published form has the property (LoRA, adapters, the gated variants) leave outputs unchanged at attach, the
standard prefix/VPT/CoOp change them by definition."""
import pytest
import torch

from suite.errors import ConfigError
from suite.models import create_model_and_transforms
from suite.pet import attach_pet
from suite.registry import PETS

TOWERS = ("vision", "text")
NO_CHANGE_AT_ATTACH = {"lora", "adapter", "gated-prefix", "gated-prompt"}
ONLY = {"vpt": "vision", "coop": "text"}
CASES = [(k, t) for k in sorted(PETS.builtin) for t in TOWERS if ONLY.get(k, t) == t]


def _inputs(bb, n=2):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, bb.image_size, bb.image_size, generator=g)
    template = bb.class_templates(["a {}"])[0]  # CoOp writes its own class prompts
    tokens = bb.tokenize([template.replace("{}", c) for c in ("red circle", "three blue squares")][:n])
    return x, tokens


def _check_pet(bb, kind, tower, options=None):
    x, tokens = _inputs(bb)
    with torch.no_grad():
        ref_i, ref_t = bb.encode_image(x), bb.encode_text(tokens)
    frozen = {n: p.detach().clone() for n, p in bb.named_parameters()}
    pet = attach_pet(bb, kind, towers=tower, **(options or {}))
    try:
        params = list(pet.parameters())
        assert params and all(p.requires_grad for p in params)
        x, tokens = _inputs(bb)
        with torch.no_grad():
            i0, t0 = bb.encode_image(x), bb.encode_text(tokens)
        if kind in NO_CHANGE_AT_ATTACH:
            assert torch.allclose(i0, ref_i, atol=1e-5) and torch.allclose(t0, ref_t, atol=1e-5), "output changed at init"
        else:
            moved_at_attach = (i0 - ref_i).abs().max() if tower == "vision" else (t0 - ref_t).abs().max()
            assert moved_at_attach > 1e-6, f"{kind} is defined to change outputs when attached"
        opt = torch.optim.SGD(params, lr=0.5)
        for _ in range(2):  # gated PETs need one step to open the gate before their tokens move
            opt.zero_grad()
            loss = (bb.encode_image(x) @ bb.encode_text(tokens).T).diagonal().sum()
            loss.backward()
            opt.step()
        with torch.no_grad():
            i1, t1 = bb.encode_image(x), bb.encode_text(tokens)
        moved = (i1 - i0).abs().max() if tower == "vision" else (t1 - t0).abs().max()
        assert moved > 1e-6, "one training step did not change the tower's output"
        untouched = (t1 - ref_t) if tower == "vision" else (i1 - ref_i)
        assert untouched.abs().max() < 1e-6, "the other tower changed"
        for n, p in bb.named_parameters():
            if n in frozen and not any(p is q for q in params):
                assert torch.equal(p, frozen[n]), f"backbone weight {n} changed"
    finally:
        pet.detach_from_model()
    x, tokens = _inputs(bb)
    with torch.no_grad():
        assert torch.allclose(bb.encode_image(x), ref_i, atol=1e-6) and torch.allclose(bb.encode_text(tokens), ref_t, atol=1e-6)


@pytest.fixture(scope="module")
def micro():
    torch.manual_seed(0)
    return create_model_and_transforms("embedded:micro-clip@random")


@pytest.fixture(scope="module")
def vitb16():
    torch.manual_seed(0)
    return create_model_and_transforms("open_clip:ViT-B-16")


@pytest.mark.parametrize("kind,tower", CASES)
def test_pet_on_micro_model(micro, kind, tower):
    _check_pet(micro, kind, tower)


@pytest.mark.parametrize("kind,tower", CASES)
def test_pet_on_vit_b16_random_weights(vitb16, kind, tower):
    _check_pet(vitb16, kind, tower, {"layers": "0-1,11"})


@pytest.mark.parametrize("depth", ["deep", "shallow"])
def test_vpt_depths_and_official_presets(micro, depth):
    _check_pet(micro, "vpt", "vision", {"depth": depth})
    for kind in ("adapter", "lora", "prefix", "vpt", "coop"):
        pet = attach_pet(micro, kind, preset="pegp-official")
        try:
            assert pet.config.to_dict()["towers"] in ("vision", "text") and list(pet.parameters())
        finally:
            pet.detach_from_model()
    pet = attach_pet(micro, "adapter", preset="pegp-official", bottleneck=3)  # explicit options win
    assert pet.config.bottleneck == 3 and pet.config.position == "attn" and not pet.config.bias
    pet.detach_from_model()


def test_shallow_vpt_prompts_are_seen_by_later_blocks(micro):
    """Shallow prompts travel through every block (removed only before pooling): the class token's output moves
    when the prompt tokens move, also with the prompt inserted before block 0 only."""
    x = torch.randn(1, 3, micro.image_size, micro.image_size)
    pet = attach_pet(micro, "vpt", depth="shallow")
    try:
        with torch.no_grad():
            a = micro.encode_image(x)
            pet.pet_layers[0].tokens.add_(torch.randn_like(pet.pet_layers[0].tokens))  # (a constant shift is what LN removes)
            b = micro.encode_image(x)
        assert (a - b).abs().max() > 1e-4
    finally:
        pet.detach_from_model()


def test_split_attention_matches_fused_multihead_attention():
    mha = torch.nn.MultiheadAttention(32, 4, batch_first=True)
    from suite.models.attention import SplitAttention

    split = SplitAttention.from_mha(mha)
    x = torch.randn(2, 7, 32)
    mask = torch.triu(torch.full((7, 7), float("-inf")), 1)
    ref = mha(x, x, x, need_weights=False, attn_mask=mask)[0]
    assert torch.allclose(split(x, x, x, attn_mask=mask)[0], ref, atol=1e-5)


def test_lora_and_adapter_on_transformers_clip(tmp_path):
    from transformers import CLIPConfig, CLIPModel

    cfg = CLIPConfig(text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                                  "max_position_embeddings": 16, "vocab_size": 100},
                     vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                                    "image_size": 16, "patch_size": 8}, projection_dim=16)
    CLIPModel(cfg).save_pretrained(tmp_path)
    bb = create_model_and_transforms(f"hf:{tmp_path}")
    tokens = torch.randint(1, 99, (2, 16))
    bb.tokenize = lambda texts: tokens  # no tokenizer files in this synthetic model
    for kind in ("lora", "adapter"):
        for tower in TOWERS:
            _check_pet(bb, kind, tower)
    for kind in ("prefix", "vpt", "coop", "gated-prefix", "gated-prompt"):
        with pytest.raises(ConfigError, match="open_clip"):
            attach_pet(bb, kind, **({"towers": "text"} if kind == "coop" else {"towers": "vision"} if kind == "vpt" else {}))


def test_bad_pet_options_are_clear(micro):
    with pytest.raises(ValueError, match="unknown option"):
        attach_pet(micro, "lora", rnak=4)
    with pytest.raises(ValueError, match="out of range"):
        attach_pet(micro, "adapter", layers="0-9")
    with pytest.raises(ValueError, match="unknown PET"):
        attach_pet(micro, "ia3")


def test_text_prompts_encoded_in_checkpointed_chunks_match_one_pass():
    """Chunked, checkpointed encoding of a trained text side: the same features and the same gradients."""
    import torch
    import torch.nn.functional as F

    from suite.evaluation.evaluator import Evaluator
    from suite.models import create_model_and_transforms
    from suite.pet import attach_pet

    backbone = create_model_and_transforms("embedded:micro-clip@random")
    pet = attach_pet(backbone, "lora", towers="text")
    names = [f"class {i}" for i in range(11)]
    image = F.normalize(torch.randn(5, backbone.encode_text(backbone.tokenize(["a"])).shape[-1]), dim=-1)
    results = []
    for chunk in (1000, 3):
        pet.zero_grad()
        text = Evaluator(backbone, text_chunk=chunk).class_text_features(names, ["a {}.", "the {}."], fresh=True)
        F.cross_entropy(image @ text.T * 50, torch.arange(5)).backward()
        results.append((text.detach(), [p.grad.clone() for p in pet.parameters() if p.grad is not None]))
    (whole, g_whole), (chunked, g_chunked) = results
    assert torch.allclose(whole, chunked, atol=1e-6) and len(g_whole) == len(g_chunked) > 0
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g_whole, g_chunked))


def _lora_by_definition(layer, x):
    """``W x + b + (α/r) B (A x)``, written as the paper states it."""
    return layer.base(x) + layer.scale * (x @ layer.A.T) @ layer.B.T


@pytest.mark.parametrize("broken", [False, True])
def test_lora_training_forward_and_gradients_are_the_low_rank_definition(broken):
    """Training runs LoRA with its merged weight (one product; issue 35's step profile), and feature collection
    runs the low-rank form: both give the definition's outputs and the same gradients of A, B and the input. The
    broken variant (the scale left out of the merged weight) must fail the same comparison."""
    torch.manual_seed(0)
    bb = create_model_and_transforms("embedded:tiny-clip")
    pet = attach_pet(bb, "lora", rank=4)
    layer = pet.pet_layers[0]
    with torch.no_grad():
        layer.B.normal_()
    if broken:
        layer.merged_weight = lambda: layer.base.weight + layer.B @ layer.A
    x = torch.randn(3, 7, layer.base.in_features, requires_grad=True)

    def grads(forward):
        out = forward(x)
        parts = torch.autograd.grad(out.square().sum(), (layer.A, layer.B, x))
        return [out.detach(), *parts]

    want = grads(lambda v: _lora_by_definition(layer, v))
    got = {"merged": grads(layer)}
    pet.set_sink(lambda key, feats: None)  # collecting features: the low-rank form
    got["collecting"] = grads(layer)
    pet.set_sink(None)
    for path, values in got.items():
        close = all(float((g - w).norm() / w.norm()) < 1e-5 for g, w in zip(values, want))  # fp32 sums, reordered
        assert close != (broken and path == "merged"), path
