"""DIKI fidelity: the frozen model at initialisation, the residual prefix term as its own softmax, task inference by
the Gaussian likelihood of the frozen feature with the calibrated weight, per-image routing (no batch vote, an
image's features are its own), gradient to the current task's prefixes only, and a complete record."""
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import MICRO, run_config

from suite.errors import ConfigError
from suite.methods.base import RunContext
from suite.methods.diki import DIKI
from suite.models import create_model_and_transforms
from suite.models.inference import FROZEN


def _setup(n_tasks: int = 3, **options):
    torch.manual_seed(0)
    bb = create_model_and_transforms(MICRO)
    method = DIKI(**options)
    ctx = RunContext(backbone=bb, pet=None, device=torch.device("cpu"), sequence=SimpleNamespace(tasks=[0] * n_tasks),
                     batch_size=32)
    method.setup(ctx)
    return bb, method, ctx


def _images(n: int, seed: int, base: torch.Tensor | None = None, noise: float = 1.0) -> torch.Tensor:
    x = torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * noise
    return x if base is None else base + x


def _encode(bb):
    return lambda x: F.normalize(bb.encode_image(x).float(), dim=-1)


def _tokens(bb):
    return bb.tokenize(["a red circle", "a blue square", "a green triangle"])


def _randomise_values(method, scale: float = 1.0, seed: int = 3) -> None:
    """Trained-looking prefixes: non-zero values, so each task's prefixes change the output differently."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in method.all_layers():
            for pv in layer.pv:
                pv.copy_(torch.randn(pv.shape, generator=g) * scale)


BASES = [_images(1, 100 + k) * 1.5 for k in range(3)]  # one cluster centre per task, in input space


def _learn_gaussians(method, ctx, n_tasks: int = 3, per_task: int = 96):
    """Each task's training data: noisy copies of its centre; statistics collected as ``before_task`` does."""
    for t in range(n_tasks):
        imgs = _images(per_task, 200 + t, BASES[t], noise=0.3)
        ctx.task_data = SimpleNamespace(train=list(range(per_task)))
        ctx.batches = lambda data, n, imgs=imgs: iter({"images": imgs[i * 32:(i + 1) * 32]} for i in range(n))
        method.collect(ctx, t)


def test_fidelity_initial_model_is_the_frozen_one():
    torch.manual_seed(0)
    plain = create_model_and_transforms(MICRO)
    bb, method, ctx = _setup()
    x, tokens = _images(4, 1), _tokens(bb)
    with torch.no_grad():
        ref_img, ref_txt = plain.encode_image(x), plain.encode_text(tokens)
        for t in range(3):
            with method.active(t, 1.0):
                torch.testing.assert_close(bb.encode_image(x), ref_img, rtol=0, atol=0)
                torch.testing.assert_close(bb.encode_text(tokens), ref_txt, rtol=0, atol=0)
    assert all(not pv.any() for layer in method.all_layers() for pv in layer.pv), "P_v must start at zero"
    pk = torch.stack([p for layer in method.all_layers() for p in layer.pk])
    assert pk.abs().max() <= 1 and pk.std() > 0.4, "P_k ~ U(-1, 1)"
    # through the test-time path too: routed, weighted, texts under the route
    _learn_gaussians(method, ctx)
    inf = method.inference(ctx)
    with torch.no_grad():
        routed = inf.encode_images(x, _encode(bb))  # grouped by task: sub-batches, so float reassociation only
        torch.testing.assert_close(routed.features, F.normalize(ref_img, dim=-1), rtol=0, atol=1e-6)
        with inf.using(int(routed.routes[0])):
            torch.testing.assert_close(bb.encode_text(tokens), ref_txt, rtol=0, atol=0)


def test_fidelity_residual_term_is_its_own_softmax():
    """One block by hand: own attention + w · softmax(q P_kᵀ/√d) P_v, which is not the concatenated softmax."""
    bb, method, _ = _setup()
    _randomise_values(method)
    attn = bb.blocks("vision")[0].attn
    layer = method.layers["vision"][0]
    x = torch.randn(2, 5, attn.embed_dim, generator=torch.Generator().manual_seed(4))
    w = torch.tensor([0.3, 0.8])
    with torch.no_grad(), method.active(1, w):
        got = attn(x.transpose(0, 1) if not attn.batch_first else x, need_weights=False)
        got = got[0] if isinstance(got, tuple) else got
        got = got.transpose(0, 1) if not attn.batch_first else got
        q, k, v = attn.heads(attn.q(x)), attn.heads(attn.k(x)), attn.heads(attn.v(x))
        pk, pv = layer.pk[1].unsqueeze(0), layer.pv[1].unsqueeze(0)
        d = attn.head_dim
        own = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d), -1) @ v
        res = torch.softmax(q @ pk.transpose(-2, -1) / math.sqrt(d), -1) @ pv
        merge = lambda h: attn.out(h.transpose(1, 2).reshape(2, 5, attn.embed_dim))  # noqa: E731
        expected = merge(own + w.view(2, 1, 1, 1) * res)
        keys, values = torch.cat([pk.expand(2, -1, -1, -1), k], 2), torch.cat([pv.expand(2, -1, -1, -1), v], 2)
        concat = merge(torch.softmax(q @ keys.transpose(-2, -1) / math.sqrt(d), -1) @ values)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (got - concat).abs().max() > 1e-2, "the prefixes must not share the block's softmax"


def test_fidelity_task_inference_and_calibrated_weight():
    bb, method, ctx = _setup(scale=512.0)
    _learn_gaussians(method, ctx)
    assert method.learned == 3
    probes = torch.cat([_images(2, 300 + k, BASES[k], noise=0.3) for k in range(3)])
    with torch.no_grad():
        frozen = _encode(bb)(probes)
        task, weight = method.select(frozen)
    assert task.tolist() == [0, 0, 1, 1, 2, 2], "an image near task k's data must pick task k"
    # the reference log-likelihood: torch's MultivariateNormal on the stored statistics (float64)
    ridge = method.options["ridge"]
    logps = torch.stack([torch.distributions.MultivariateNormal(
        method.means[k].double(), method.covars[k].double() + ridge * torch.eye(method.dim, dtype=torch.float64)
    ).log_prob(frozen.double()) for k in range(3)], 1)
    torch.testing.assert_close(method.log_likelihood(frozen), logps, rtol=1e-9, atol=1e-6)
    best = logps.max(1).values
    torch.testing.assert_close(weight, torch.sigmoid(best / 512 - 1), rtol=1e-9, atol=1e-12)
    assert weight.std() > 0, "the weight is per image"
    # statistics: mean and unbiased covariance of the frozen, normalised features of the task's training data
    feats = _encode(bb)(_images(96, 201, BASES[1], noise=0.3)).double()
    torch.testing.assert_close(method.means[1].double(), feats.mean(0), rtol=0, atol=1e-6)
    torch.testing.assert_close(method.covars[1].double(), torch.cov(feats.T), rtol=0, atol=1e-6)
    # the default scale is the feature dimension (512 on ViT-B/16)
    assert _setup()[1].scale == bb.model.visual.output_dim


def test_fidelity_per_image_routing_weight_and_batch_independence():
    bb, method, ctx = _setup()
    _learn_gaussians(method, ctx)
    _randomise_values(method)
    a, c = _images(1, 400, BASES[0], noise=0.3), _images(1, 401, BASES[1], noise=0.3)
    inf, encode = method.inference(ctx), _encode(bb)
    levels = inf.levels
    with torch.no_grad():
        alone_c = inf.encode_images(c, encode)
        wc = method.last_weights[0]
        alone_a = inf.encode_images(a, encode)
        mixed = inf.encode_images(torch.cat([a, a, c]), encode)
        assert method.last_tasks.tolist() == [0, 0, 1], "each image must pick its own task"
        torch.testing.assert_close(method.last_weights[2], wc)
        torch.testing.assert_close(mixed.features[2:], alone_c.features, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(mixed.features[:1], alone_a.features, rtol=1e-5, atol=1e-5)
        other = inf.encode_images(torch.cat([_images(3, 402, BASES[2], noise=0.3), c]), encode)
        torch.testing.assert_close(other.features[3:], alone_c.features, rtol=1e-5, atol=1e-5)
        assert torch.equal(mixed.routes[2:], alone_c.routes) and torch.equal(inf.route(c), alone_c.routes)
        # c's route: task 1, text weight its own w on the grid; its features: task 1's prefixes at its own w
        assert int(alone_c.routes[0]) == 1 * (levels + 1) + round(float(wc) * levels)
        with method.active(1, wc.view(1)):
            torch.testing.assert_close(alone_c.features, encode(c), rtol=1e-6, atol=1e-6)
        with method.active(1, 1.0):
            assert (encode(c) - alone_c.features).abs().max() > 1e-4, "the weight must reach the image tower"
        with method.active(0, wc.view(1)):
            assert (encode(c) - alone_c.features).abs().max() > 1e-3, "tasks 0 and 1 must differ in output"
        tokens = _tokens(bb)
        with inf.using(int(alone_c.routes[0])):
            text_c = bb.encode_text(tokens)
        with method.active(1, round(float(wc) * levels) / levels):
            torch.testing.assert_close(text_c, bb.encode_text(tokens), rtol=0, atol=0)
        with inf.using(FROZEN):
            assert method.state.task is None
    # the official batch vote (option batchwise): c follows the majority a, a and takes task 0
    method.options["batchwise"] = True
    try:
        with torch.no_grad():
            voted = inf.encode_images(torch.cat([a, a, c]), encode)
        assert method.last_tasks.tolist() == [0, 0, 0]
        assert (voted.features[2:] - alone_c.features).abs().max() > 1e-3
        assert method.protocol["routing"] == "per-batch"
    finally:
        method.options["batchwise"] = False
    assert method.protocol["routing"] == "per-sample"


def test_fidelity_only_the_current_task_prefixes_get_gradient():
    bb, method, ctx = _setup(n_tasks=3)
    _randomise_values(method, 0.5)
    t = 1
    ctx.task_index = t
    params = method.trainable(ctx)
    own = [p for layer in method.all_layers() for p in (layer.pk[t], layer.pv[t])]
    assert {id(p) for p in params} == {id(p) for p in own}
    assert method.layers["vision"] and method.layers["text"], "both towers carry prefixes"
    x, tokens = _images(4, 9), _tokens(bb)

    def task_loss(batch):
        assert method.state.task == t and method.state.weight is None, "training uses task t at weight 1"
        img = F.normalize(bb.encode_image(batch["images"]), dim=-1)
        txt = F.normalize(bb.encode_text(tokens), dim=-1)
        return F.cross_entropy(20 * img @ txt.T, torch.tensor([0, 1, 2, 0]))

    ctx.task_loss = task_loss
    method.loss(ctx, {"images": x}).backward()
    assert method.state.task is None
    for p in own:
        assert p.grad is not None and p.grad.abs().sum() > 0, "task t's prefixes (both towers) must learn"
    for layer in method.all_layers():
        for i in (0, 2):
            for p in (layer.pk[i], layer.pv[i]):
                assert p.grad is None or not p.grad.any(), "another task's prefix received gradient"


def test_fidelity_depth_state_and_refusals():
    assert DIKI.depth_for(12) == 8 and DIKI.depth_for(4) == 3 and DIKI.depth_for(3) == 2 and DIKI.depth_for(2) == 1
    bb, method, ctx = _setup()
    assert method.depths == {"vision": 1, "text": 1}
    attn = bb.blocks("vision")[0].attn
    assert method.layers["vision"][0].pk[0].shape == (attn.num_heads, 8, attn.head_dim)
    _learn_gaussians(method, ctx, n_tasks=2)
    _randomise_values(method)
    state = method.state_dict()
    other = _setup()[1]
    other.load_state_dict(state)
    for key, value in other.state_dict().items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(value, state[key], rtol=0, atol=0)
    assert other.learned == 2
    rep = method.report()
    assert rep["statistics_bytes"] == 2 * (method.dim + method.dim ** 2) * 4 and rep["prefix_parameters"] > 0
    with pytest.raises(ConfigError, match="diki"):
        DIKI(batchwise="yes")
    with pytest.raises(ConfigError, match="depth 5"):
        _setup(vision_depth=5)


def test_fidelity_end_to_end_record(seq_file, tmp_path):
    from suite.engine.runner import run

    rec = run(run_config(seq_file(), tmp_path, method="diki", pet=None))
    assert rec["status"] == "complete"
    protocol = rec["method"]["protocol"]
    assert protocol["routing"] == "per-sample" and protocol["task_id_train"] is True
    assert protocol["task_id_test"] is False and protocol["memory"] == 0
    assert rec["efficiency"]["tasks_learned"] == 2 and rec["efficiency"]["prefix_parameters"] > 0
    assert all(math.isfinite(a) for step in rec["steps"] for a in step["accuracy"])
