"""MagMax fidelity: the merge is the element-wise maximum-magnitude task vector (sign kept, a later task winning a tie)
of the cumulative task vectors θ_t - θ₀, scaled by λ; task t + 1 trains from θ_t (the sequential weights), never the
merge; evaluation answers with θ₀ + λ·merge (images and texts) and leaves the training weights as they were; the
checkpoint keeps the sequential weights and resuming gives the uninterrupted record; runs on a PET and on full
weights write complete records."""
import dataclasses

import pytest
import torch
from torch import nn

from suite.engine.runner import Runner, TrainingFailed, run
from suite.errors import ConfigError
from suite.methods.magmax import MagMax
from tests.conftest import method_runner, run_config

# Hand-built task vectors (as θ_t - θ₀, dyadic): ties (|·| equal) in columns 2, 3 and 5, sign flips throughout.
TAUS = [torch.tensor([[1.0, -3.0, 2.0, 0.5, -1.0, 0.0]]),
        torch.tensor([[-2.0, 1.0, -2.0, -0.5, 0.75, 0.0]]),
        torch.tensor([[0.125, 4.0, 1.5, 0.5, 0.0, -0.0]])]
# Per element, the value of largest magnitude over tasks 1..t; on a tie the later task's (its sign).
EXPECTED = [TAUS[0],
            torch.tensor([[-2.0, -3.0, -2.0, -0.5, -1.0, 0.0]]),
            torch.tensor([[-2.0, 4.0, -2.0, 0.5, -1.0, 0.0]])]


def _hand_built(scale: float = 0.5):
    m = MagMax(scale=scale)
    theta0 = torch.tensor([[0.25, -0.5, 1.0, 0.0, 2.0, -1.0]])  # dyadic: θ₀ + τ - θ₀ is exact
    m.params = [nn.Parameter(theta0.clone())]
    m.theta0 = [theta0.clone()]
    return m, theta0


def test_fidelity_magmax_merge_is_signed_max_magnitude_scaled(tmp_path):
    for scale in (0.5, 0.3):
        m, theta0 = _hand_built(scale)
        for t, tau in enumerate(TAUS):
            with torch.no_grad():
                m.params[0].copy_(theta0 + tau)  # sequential weights after task t: θ₀ + τ_t (cumulative)
            m.after_task(None, t)
            assert torch.equal(m.merged[0], EXPECTED[t]), (scale, t, m.merged[0])
            assert torch.allclose(m.merged_weights()[0], theta0 + scale * EXPECTED[t], atol=1e-7)
            assert torch.equal(m.params[0], theta0 + tau)  # merging never touches the trained weights
    assert m.report()["magmax_bytes"] == 2 * 6 * 4 and m.report()["magmax_tasks_merged"] == 3


class Watching(MagMax):
    """MagMax that writes down the trained parameters at the start of every task and at the end (after the merge)."""

    def setup(self, ctx):
        super().setup(ctx)
        self.starts, self.ends = [], []

    def before_task(self, ctx, t):
        super().before_task(ctx, t)
        self.starts.append([p.detach().clone() for p in self.params])

    def after_task(self, ctx, t):
        super().after_task(ctx, t)
        self.ends.append([p.detach().clone() for p in self.params])


def _same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_fidelity_magmax_next_task_trains_from_sequential_weights(seq_file, tmp_path):
    m = Watching()
    cfg = run_config(seq_file(n_tasks=3), tmp_path, method="magmax", training={"iterations": 2})
    r = Runner(cfg, method=m)
    r.run()
    assert _same(m.starts[0], m.theta0)
    for t in (0, 1):
        assert _same(m.starts[t + 1], m.ends[t]), t  # θ_t, after the evaluation with the merged weights
        merged = [z + 0.5 * mm for z, mm in zip(m.theta0, m.merged)]
        assert not _same(m.starts[t + 1], merged)
    # the merge after task 3 is over the cumulative τ_t = θ_t - θ₀ of the three tasks
    taus = [[e - z for e, z in zip(end, m.theta0)] for end in m.ends]
    for i, got in enumerate(m.merged):
        stack = torch.stack([tau[i] for tau in taus])
        pick = (stack.abs() >= stack.abs().max(0).values).flip(0).float().argmax(0)  # last task at the max
        assert torch.equal(got, stack.flip(0).gather(0, pick.unsqueeze(0))[0])
    # the checkpoint keeps the sequential weights, θ₀ and the merge
    ckpt = torch.load(tmp_path / "runs" / cfg.run_id() / "checkpoint.pt", weights_only=True)
    pet = dict(r.pet.named_parameters())
    names = [n for n, p in pet.items() if any(p is q for q in m.params)]
    assert _same([ckpt["pet"][n] for n in names], m.ends[-1])
    assert _same(ckpt["method"]["theta0"], m.theta0) and _same(ckpt["method"]["merged"], m.merged)


def _features(r, split, names, templates, route):
    ev = r.evaluator
    img = ev.image_features(split)
    img = img.features if hasattr(img, "routes") else img
    return img, ev.class_text_features(names, templates, route=route)


def test_fidelity_magmax_evaluation_answers_with_the_merged_weights(seq_file, tmp_path):
    r = method_runner(seq_file(), tmp_path, "magmax")
    r.learn_task(0)
    r.learn_task(1)
    m = r.method
    trained = [p.detach().clone() for p in m.params]
    data = r.data["t0"]
    names, templates = data.classnames, data.templates
    # the method's inference, as the runner sets it for an evaluation step
    r.evaluator.set_inference(m.inference(r.ctx))
    with torch.no_grad():
        img, txt = _features(r, data.test, names, templates, route=0)
    r.evaluator.set_inference(None)
    assert _same([p.detach() for p in m.params], trained)  # the training weights are back
    # a model with θ₀ + λ·merge loaded, evaluated as it stands
    with torch.no_grad():
        for p, w in zip(m.params, m.merged_weights()):
            p.copy_(w)
        r.evaluator.invalidate_text()
        ref_img, ref_txt = _features(r, data.test, names, templates, route=None)
        for p, w in zip(m.params, trained):  # and the sequential model, which must answer otherwise
            p.copy_(w)
        r.evaluator.invalidate_text()
        seq_img, seq_txt = _features(r, data.test, names, templates, route=None)
    assert torch.allclose(img, ref_img, atol=1e-6) and torch.allclose(txt, ref_txt, atol=1e-6)
    assert (img - seq_img).abs().max() > 1e-4 and (txt - seq_txt).abs().max() > 1e-4


def test_fidelity_magmax_resume_gives_the_uninterrupted_record(seq_file, tmp_path):
    seq = seq_file(n_tasks=3)
    first = MagMax()
    whole = run(run_config(seq, tmp_path / "a", method="magmax", training={"iterations": 2}), method=first)

    class StopAtThird(MagMax):
        def before_task(self, ctx, t):
            if t == 2:
                raise RuntimeError("stopped")

    cfg = run_config(seq, tmp_path / "b", method="magmax", training={"iterations": 2})
    with pytest.raises(TrainingFailed):
        Runner(cfg, method=StopAtThird()).run()
    again = MagMax()
    resumed = Runner(dataclasses.replace(cfg, resume=True), method=again).run()
    # θ₀ and the merge over all three tasks come back from the checkpoint (a merge restarted at task 3 differs)
    assert _same(again.theta0, first.theta0) and _same(again.merged, first.merged)
    assert resumed["matrix"] == whole["matrix"]
    assert [s["final_loss"] for s in resumed["steps"]] == [s["final_loss"] for s in whole["steps"]]


@pytest.mark.parametrize("weights", ["pet", "full"])
def test_fidelity_magmax_end_to_end_records(seq_file, tmp_path, weights):
    options = {} if weights == "pet" else {"weights": "full", "towers": "both"}
    cfg = run_config(seq_file(), tmp_path, method="magmax", method_options=options,
                     pet="lora" if weights == "pet" else None, training={"iterations": 2, "lr": 0.001})
    r = Runner(cfg)
    rec = r.run()
    assert rec["status"] == "complete"
    assert rec["method"]["protocol"] == {"task_id_train": False, "task_id_test": False, "memory": 0,
                                         "routing": "none", "extra_forward": 0}
    eff = rec["efficiency"]
    n = sum(p.numel() for p in r.method.params)
    assert eff["magmax_tasks_merged"] == 2 and eff["magmax_parameters"] == n and eff["magmax_bytes"] == 2 * 4 * n
    if weights == "full":
        assert r.pet is None and not any(p is r.backbone.model.logit_scale for p in r.method.params)
        assert n == sum(p.numel() for p in r.backbone.parameters()) - 1  # every weight but the logit scale


def test_fidelity_magmax_options_refused(seq_file, tmp_path):
    with pytest.raises(ConfigError, match="towers applies to weights: full"):
        MagMax(towers="both")
    with pytest.raises(ConfigError, match="give --pet"):
        Runner(run_config(seq_file(), tmp_path, method="magmax", pet=None))
