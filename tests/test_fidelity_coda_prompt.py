"""CODA-Prompt fidelity (GT-RIPL/CODA-Prompt, models/zoo.py CodaPrompt): Gram-Schmidt slices are orthonormal and
orthogonal to earlier tasks' rows; old slices get no gradient; the prompt of an image is sum_k cos(q * A_k, K_k) P_k
with q the frozen model's own [CLS] feature, per image; complete records on both kinds of track."""
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import run_config, small_sequence

from suite.engine.runner import Runner, run
from suite.errors import ConfigError
from suite.methods import make_method

TRAIN = {"iterations": 3, "batch_size": 8, "lr": 0.01}


def _runner(tmp_path, n_tasks: int = 2, track: str = "class-incremental", training=None, **options) -> Runner:
    path = tmp_path / f"coda-{track}-{n_tasks}.yaml"
    path.write_text(yaml.safe_dump(small_sequence(track=track, n_tasks=n_tasks)))
    cfg = run_config(str(path), tmp_path, method="coda-prompt", pet=None, method_options=options,
                     training={**TRAIN, **(training or {})})
    return Runner(cfg)


def _rows(param: torch.Tensor) -> torch.Tensor:
    return param.detach().reshape(len(param), -1).double()


def test_fidelity_gram_schmidt_slices_are_orthonormal_and_orthogonal_to_earlier_tasks(tmp_path):
    r = _runner(tmp_path, n_tasks=3)
    m = r.method
    m.before_task(r.ctx, 0)
    for layer in m.layers:
        for params in (layer.p, layer.k, layer.a):  # P (flattened), K and A: all three, as the official code
            first = _rows(params[0])
            assert torch.allclose(first @ first.T, torch.eye(len(first), dtype=torch.float64), atol=1e-5)
            assert not params[1].any() and not params[2].any()  # later tasks' rows wait for their task
    g = torch.Generator().manual_seed(1)
    for t in (1, 2):
        for layer in m.layers:  # earlier slices drift in training: no longer orthonormal
            for params in (layer.p, layer.k, layer.a):
                with torch.no_grad():
                    params[t - 1].add_(0.3 * torch.randn(params[t - 1].shape, generator=g))
        m.before_task(r.ctx, t)
        for layer in m.layers:
            for params in (layer.p, layer.k, layer.a):
                new = _rows(params[t])
                old = torch.cat([_rows(params[i]) for i in range(t)])
                assert torch.allclose(new @ new.T, torch.eye(len(new), dtype=torch.float64), atol=1e-5)
                assert (old @ new.T).abs().max() < 1e-5  # orthogonal to every earlier (trained) row
    assert m.per_task == 10 and m.pool_used == 32  # the micro CLIP's 32 dims cap the pool of 100


def test_fidelity_old_slices_get_no_gradient_in_task_two(tmp_path):
    r = _runner(tmp_path, training={"weight_decay": 0.1})
    m, ctx = r.method, r.ctx
    r.learn_task(0)
    before = [p.detach().clone() for layer in m.layers for p in (layer.p[0], layer.k[0], layer.a[0])]
    data = r.data[r.seq.tasks[1].name]
    ctx.task_index, ctx.task_data = 1, data
    m.before_task(ctx, 1)
    current = [p for layer in m.layers for p in (layer.p[1], layer.k[1], layer.a[1])]
    assert [id(p) for p in m.trainable(ctx)] == [id(p) for p in current]
    for layer in m.layers:  # what task 1's last step left
        for p in layer.parameters():
            p.grad = None
    batch = next(iter(r.batches(data, 1, seed=0)))
    m.loss(ctx, batch).backward()
    for layer in m.layers:
        assert layer.alpha.shape[1] == 2 * m.per_task  # task 2 uses slices 0 and 1
        for old, new in ((layer.p[0], layer.p[1]), (layer.k[0], layer.k[1]), (layer.a[0], layer.a[1])):
            assert old.grad is None or not old.grad.any(), layer.pet_name
            assert new.grad is not None and new.grad.abs().sum() > 0, layer.pet_name
    for p in current:
        p.grad = None
    r.learn_task(1)  # a whole task under AdamW with weight decay: the old slices stay exactly put
    after = [p.detach() for layer in m.layers for p in (layer.p[0], layer.k[0], layer.a[0])]
    assert all(torch.equal(a, b) for a, b in zip(before, after))


def _frozen_cls(r: Runner, images: torch.Tensor) -> torch.Tensor:
    """The pretrained model's [CLS] after ln_post (before proj), prompts removed from every block."""
    visual = r.backbone.model.visual
    sites = [blk.attn for blk in visual.transformer.resblocks]
    saved = [attn.prefixes for attn in sites]
    seen = []
    handle = visual.ln_post.register_forward_hook(lambda mod, inp, out: seen.append(out))
    try:
        for attn in sites:
            attn.prefixes = torch.nn.ModuleList()
        with torch.no_grad():
            visual(images)
    finally:
        handle.remove()
        for attn, pre in zip(sites, saved):
            attn.prefixes = pre
    out = seen[-1]
    return out[:, 0] if out.dim() == 3 else out


def test_fidelity_prompt_weights_are_per_image_from_the_frozen_query(tmp_path):
    r = _runner(tmp_path)
    m = r.method
    r.learn_task(0)
    data = r.data[r.seq.tasks[0].name]
    labels = torch.as_tensor(data.train.labels)
    picks = [int((labels == c).nonzero()[0]) for c in (0, 1)] + [1, 2, 3, 4]
    images = r.backbone.images_from_uint8(data.train.images[picks])
    with torch.no_grad():
        feats = r.backbone.encode_image(images)
        alphas = [layer.alpha.clone() for layer in m.layers]
        q = F.normalize(_frozen_cls(r, images).float(), dim=-1)
    for layer, alpha in zip(m.layers, alphas):
        # alpha_k = cos(q * A_k, K_k), q the frozen [CLS] of each image alone
        k, a = layer.k[0].detach(), layer.a[0].detach()
        want = F.cosine_similarity(q[:, None] * a[None], k[None], dim=-1)
        assert torch.allclose(alpha, want, atol=1e-5), layer.pet_name
        assert (alpha[0] - alpha[1]).abs().max() > 1e-3  # two images, two different mixtures
    # half the prompt rows are keys, half values
    layer = m.layers[0]
    pk, pv = layer.prefix(len(images), r.backbone.model.visual.transformer.resblocks[0].attn)
    prompt = torch.einsum("bn,nlw->blw", layer.alpha, layer.p[0])
    assert pk.shape[2] == pv.shape[2] == m.options["length"] // 2
    assert torch.allclose(pk.transpose(1, 2).reshape(len(images), -1), prompt[:, :4].reshape(len(images), -1))
    # an image's feature and prompt weights do not depend on the rest of its batch
    with torch.no_grad():
        alone = r.backbone.encode_image(images[:1])
        alone_alpha = m.layers[-1].alpha.clone()
        mixed = r.backbone.encode_image(torch.cat([images[:1], images[3:].flip(0)]))
        mixed_alpha = m.layers[-1].alpha.clone()
    assert torch.allclose(alone, feats[:1], atol=1e-5) and torch.allclose(mixed[:1], feats[:1], atol=1e-5)
    assert torch.allclose(alone_alpha, alphas[-1][:1], atol=1e-6) and torch.allclose(mixed_alpha[:1], alone_alpha, atol=1e-6)
    # what a checkpoint keeps gives the same model back
    again = _runner(tmp_path)
    again.method.load_state_dict(m.state_dict())
    with torch.no_grad():
        assert torch.allclose(again.backbone.encode_image(images), feats, atol=1e-6)


@pytest.mark.parametrize("track", ["class-incremental", "cross-modal"])
def test_fidelity_end_to_end_record_and_protocol(seq_file, tmp_path, track):
    rec = run(run_config(seq_file(track=track), tmp_path, method="coda-prompt", pet=None,
                         training={"iterations": 2, "batch_size": 8, "lr": 0.01}))
    assert rec["status"] == "complete" and len(rec["matrix"]) == 2
    assert rec["method"]["protocol"] == {"task_id_train": True, "task_id_test": False, "memory": 0,
                                         "routing": "per-sample", "extra_forward": 1}
    assert all(s["final_loss"] is not None for s in rec["steps"])


def test_fidelity_bad_options_are_refused_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match="coda-prompt"):
        _runner(tmp_path, length=7)
    with pytest.raises(ConfigError, match="coda-prompt"):
        _runner(tmp_path, n_tasks=3, pool=2)
    with pytest.raises(ConfigError, match="coda-prompt"):
        make_method("coda-prompt", {"ortho_weight": -1.0})
