"""MoE-Adapters fidelity: k gates per sample summing to one, the official balance term on a hand example, DDAS sending
an input above the threshold to the frozen model exactly, per-image routing (no batch vote unless asked), the most-used
experts frozen after a task, and a complete record with its protocol that resumes to the uninterrupted one."""
import dataclasses
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import MICRO, run_config

from suite.engine.runner import Runner, TrainingFailed
from suite.methods.base import RunContext
from suite.methods.moe_adapters import MoEAdapters, MoEInference, balance_loss, cv_squared, noisy_top_k
from suite.models import create_model_and_transforms
from suite.models.inference import FROZEN, Routed


def _setup(n_tasks: int = 2, **options):
    torch.manual_seed(0)
    bb = create_model_and_transforms(MICRO)
    method = MoEAdapters(**{"ae_iterations": 60, **options})  # fewer autoencoder steps: a fast test
    ctx = RunContext(backbone=bb, pet=None, device=torch.device("cpu"),
                     sequence=SimpleNamespace(tasks=[0] * n_tasks, track="class-incremental"), batch_size=8)
    method.setup(ctx)
    return bb, method, ctx


def _live(method: MoEAdapters, seed: int = 1) -> None:
    """Experts and routers away from their zero init, so every route changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for b in method.blocks:
            for p in b.expert_parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            for w in list(b.w_gate) + list(b.w_noise):
                w.copy_(torch.randn(w.shape, generator=g))


def _images(n: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 0.5 + shift


def _frozen_features(bb, images):
    with torch.no_grad():
        return bb.encode_image(images)


def _two_task_ddas(bb, method):
    """Task 0's autoencoder learns bright images, task 1's dark ones (the frozen model's embeddings)."""
    for t, shift in enumerate((1.5, -1.5)):
        ae, errs = method.train_autoencoder(_frozen_features(bb, _images(64, 10 + t, shift)), 16, seed=t)
        method.autoencoders.append(ae)
        method.task_thresholds.append(float(torch.quantile(errs, 0.95)))
    method.tasks_done = 2


def test_fidelity_exactly_k_gates_per_sample_summing_to_one():
    g = torch.Generator().manual_seed(0)
    x, wg, wn = torch.randn(16, 8, generator=g), torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g)
    for train in (True, False):
        gates, _ = noisy_top_k(x, wg, wn, 2, train)
        assert ((gates > 0).sum(-1) == 2).all()
        torch.testing.assert_close(gates.sum(-1), torch.ones(16))
    # and inside the model, both towers, at train (noise) and at test
    bb, method, _ = _setup()
    _live(method)
    tokens = bb.tokenize(["a red circle", "a blue square"])
    with method.routed(1):
        for train in (True, False):
            method.state.train = train
            with torch.no_grad():
                bb.encode_image(_images(5, 3))
                bb.encode_text(tokens)
            for b in method.blocks:
                assert ((b.last_gates > 0).sum(-1) == 2).all(), b.name
                torch.testing.assert_close(b.last_gates.sum(-1), torch.ones(len(b.last_gates)))
    method.state.train = False


def test_fidelity_balance_term_on_a_hand_example():
    gates = torch.tensor([[0.6, 0.4, 0.0], [0.0, 0.5, 0.5]])
    load = (gates > 0).sum(0).float()  # the test-time load: non-zero gates per expert, [1, 2, 1]
    # importance [0.6, 0.9, 0.5]: unbiased variance 0.043333 over mean^2 0.444444 = 0.0975; load: (1/3) / (16/9)
    assert float(cv_squared(gates.sum(0))) == pytest.approx(0.0975, abs=1e-6)
    assert float(balance_loss(gates, load)) == pytest.approx(0.0975 + 0.1875, abs=1e-6)
    assert float(cv_squared(torch.tensor([3.0]))) == 0.0
    # at test the gating's own load is that count
    _, test_load = noisy_top_k(torch.eye(2), torch.tensor([[3.0, 1.0, 0.0], [0.0, 1.0, 2.0]]), torch.zeros(2, 3), 2, False)
    assert test_load.tolist() == [1.0, 2.0, 1.0]


def test_fidelity_training_loss_adds_the_weighted_balance_terms(monkeypatch):
    import suite.methods.moe_adapters as moe

    bb, method, ctx = _setup(label_smoothing=0.0)
    _live(method)
    method.state.route = 0
    seen = []

    def spy(gates, load):
        v = balance_loss(gates, load)
        seen.append(float(v.detach()))
        return v

    monkeypatch.setattr(moe, "balance_loss", spy)
    ctx.task_loss = lambda batch: bb.encode_image(batch["images"]).sum() * 0  # the task's own loss: 0 here
    total = method.loss(ctx, {"images": _images(6, 4)})
    assert len(seen) == len(bb.blocks("vision"))  # one term per block the (training) images passed
    assert float(total.detach()) == pytest.approx(0.01 * sum(seen), rel=1e-5)


def test_fidelity_input_above_the_threshold_gets_the_frozen_model_exactly():
    bb, method, _ = _setup()
    images = torch.cat([_images(1, 20, 1.5), _images(1, 21, 9.0)])  # a bright image and one far from both tasks
    frozen = _frozen_features(bb, images)  # before any expert moves: the pretrained function
    _live(method)
    _two_task_ddas(bb, method)
    inf = MoEInference(method, bb)
    errs = inf.errors(images).min(-1).values
    hi, lo = int(errs.argmax()), int(errs.argmin())
    assert hi != lo
    method.options["threshold"] = float(errs.mean())  # between the two: one image is above it
    with torch.no_grad():
        out = inf.encode_images(images, bb.encode_image)
    assert out.routes[hi] == FROZEN and out.routes[lo] >= 0
    torch.testing.assert_close(out.features[hi], frozen[hi], rtol=0, atol=0)
    assert (out.features[lo] - frozen[lo]).abs().max() > 1e-3, "the routed image must get its task's experts"


def test_fidelity_per_image_routing_and_batch_independence():
    bb, method, _ = _setup()
    _live(method)
    _two_task_ddas(bb, method)
    bright, dark = _images(1, 30, 1.5), _images(3, 31, -1.5)
    batch = torch.cat([bright, dark])
    inf = MoEInference(method, bb)
    with torch.no_grad():
        both = inf.encode_images(batch, bb.encode_image)
        alone = Routed.cat([inf.encode_images(batch[i:i + 1], bb.encode_image) for i in range(len(batch))])
        other = inf.encode_images(torch.cat([_images(4, 32, -1.5), bright]), bb.encode_image)
    assert both.routes.tolist() == [0, 1, 1, 1], "each image takes the argmin of its own errors"
    assert torch.equal(both.routes, alone.routes)
    torch.testing.assert_close(both.features, alone.features, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(other.features[4], alone.features[0], rtol=1e-5, atol=1e-5)
    # the official batch vote (batchwise: true) gives the bright image the dark majority's router
    voting = MoEAdapters(batchwise=True)
    assert voting.protocol["routing"] == "per-batch" and method.protocol["routing"] == "per-sample"
    method.options["batchwise"], method.options["threshold"] = True, 1e9  # (the mixed batch's mean error is high)
    with torch.no_grad():
        assert inf.route(batch).tolist() == [1, 1, 1, 1]


def test_fidelity_most_used_experts_are_frozen_and_stay_unchanged(seq_file, tmp_path):
    from conftest import method_runner

    r = method_runner(seq_file(n_tasks=2), tmp_path, "moe-adapters", pet=None, ae_iterations=20)
    m = r.method
    r.learn_task(0)
    counts = [b.counts.clone() for b in m.blocks]
    for b, c in zip(m.blocks, counts):
        assert int(b.frozen.sum()) == 2, b.name
        assert float(c[b.frozen].min()) >= float(c[~b.frozen].max()), b.name  # the 2 largest counts (ties aside)
    frozen = {(i, e): [p.detach().clone() for p in b.experts[e].parameters()]
              for i, b in enumerate(m.blocks) for e in torch.nonzero(b.frozen).flatten().tolist()}
    router0 = [b.w_gate[0].detach().clone() for b in m.blocks]
    masks = [b.frozen.tolist() for b in m.blocks]
    free = [p.detach().clone() for p in free_now(m, masks)]
    r.learn_task(1)
    used_frozen = sum(int(m.blocks[i].counts[e] > 0) for i, e in frozen)
    assert used_frozen > 0, "task 1's router must use some frozen expert for the test to mean anything"
    for (i, e), saved in frozen.items():
        for p, v in zip(m.blocks[i].experts[e].parameters(), saved):
            assert torch.equal(p, v), f"frozen expert {e} of {m.blocks[i].name} changed"
    assert all(torch.equal(b.w_gate[0], v) for b, v in zip(m.blocks, router0))
    moved = [not torch.equal(p, v) for p, v in zip(free_now(m, masks), free)]
    assert any(moved), "the free experts must train in task 1"


def free_now(m, masks):
    return [p for b, mask in zip(m.blocks, masks) for e, f in enumerate(mask) if not f for p in b.experts[e].parameters()]


def test_fidelity_record_protocol_and_resume(seq_file, tmp_path):
    from suite.engine.runner import run

    seq = seq_file(n_tasks=2)
    kw = dict(method="moe-adapters", pet=None, training={"iterations": 2}, method_options={"ae_iterations": 20})
    whole = run(run_config(seq, tmp_path / "a", **kw))
    proto = whole["method"]["protocol"]
    assert proto["routing"] == "per-sample" and proto["task_id_train"] and not proto["task_id_test"]
    assert proto["extra_forward"] == 1 and proto["memory"] == 0
    assert whole["efficiency"]["expert_parameters"] > 0 and whole["efficiency"]["experts_frozen"] > 0
    assert len(whole["steps"]) == 2

    class StopAtSecond(MoEAdapters):
        def before_task(self, ctx, t):
            if t == 1:
                raise RuntimeError("stopped")
            super().before_task(ctx, t)

    cfg = run_config(seq, tmp_path / "b", **kw)
    with pytest.raises(TrainingFailed):
        Runner(cfg, method=StopAtSecond(ae_iterations=20)).run()
    resumed = Runner(dataclasses.replace(cfg, resume=True)).run()
    assert resumed["matrix"] == whole["matrix"]
    assert [s["final_loss"] for s in resumed["steps"]] == [s["final_loss"] for s in whole["steps"]]


def test_fidelity_frozen_route_is_the_pretrained_model_for_texts_too():
    bb, method, _ = _setup()
    tokens = bb.tokenize(["a red circle", "a green triangle"])
    with torch.no_grad():
        before = bb.encode_text(tokens)
        _live(method)
        with method.routed(FROZEN):
            after = bb.encode_text(tokens)
        with method.routed(0):
            routed = bb.encode_text(tokens)
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    assert (F.normalize(routed, dim=-1) - F.normalize(before, dim=-1)).abs().max() > 1e-4


def test_fidelity_vectorised_dispatch_is_the_sparse_per_expert_one():
    """The stacked top-k dispatch gives each sample ``sum_e g_e * expert_e`` over its chosen experts (the official
    per-expert loop), outputs and gradients; an expert no sample chose gets no gradient (``None``) after
    ``before_step``, so AdamW leaves it untouched (no weight decay, no momentum step) as the sparse code does."""
    bb, method, ctx = _setup(label_smoothing=0.0, dropout=0.0)
    _live(method)
    b = method.blocks[0]
    x = torch.randn(5, 7, b.experts[0].down.in_features, requires_grad=True)
    xs = x if b.batch_first else x.transpose(0, 1)  # as the tower's block sees it
    with method.routed(0):
        b.keep_input(None, (xs,))
        y = b.add_mixture(None, (xs,), torch.zeros(xs.shape))
    y = y if b.batch_first else y.transpose(0, 1)
    gates = b.last_gates
    ref = sum(gates[:, e].view(-1, 1, 1) * ex(x, b.scale, 0.0, False) for e, ex in enumerate(b.experts))
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    w = torch.randn(x.shape)
    grads = torch.autograd.grad((y * w).sum(), [x] + b.expert_parameters())
    ref_grads = torch.autograd.grad((ref * w).sum(), [x] + b.expert_parameters())
    torch.testing.assert_close(grads[0][:, 1:], ref_grads[0][:, 1:], rtol=1e-5, atol=1e-5)  # (token 0 feeds the router)
    for g, r in zip(grads[1:], ref_grads[1:]):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)
    # one training step: the unused experts (of every block) stay exactly as they were under AdamW's weight decay
    method.before_task(ctx, 0)
    ctx.task_index = 0
    params = method.trainable(ctx)
    ctx.task_loss = lambda batch: bb.encode_image(batch["images"]).pow(2).mean() \
        + bb.encode_text(bb.tokenize(["a red circle"])).pow(2).mean()
    before = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    method.loss(ctx, {"images": _images(2, 4)}).backward()
    used = [blk._used.clone() for blk in method.blocks]
    method.before_step(ctx)
    opt.step()
    moved = {id(p): not torch.equal(p, v) for p, v in zip(params, before)}
    n_unused = 0
    for blk, u in zip(method.blocks, used):
        for e, ex in enumerate(blk.experts):
            assert all(moved[id(p)] == bool(u[e]) for p in ex.parameters()), (blk.name, e, bool(u[e]))
            n_unused += int(not u[e])
    assert n_unused > 0, "some expert must go unused for the test to mean anything"
