"""VPT-NSP² fidelity: the adaptive cut-off and blend of the authors' code, the two null-space conditions on the
projected *update* (P₂ Δ P₁), the unprojected first task, summed covariances, the LN loss, resume, and runs."""
import numpy as np
import pytest
import torch
import yaml
from conftest import MICRO, run_config, small_sequence

from suite.config.train import make_optimizer
from suite.engine.runner import RunConfig, Runner, run
from suite.errors import ConfigError
from suite.methods.vpt_nsp2 import VPTNSP2, adaptive_cutoff, gaussian_smooth, null_space_projector

PROTOCOL = {"task_id_train": False, "task_id_test": False, "memory": 0, "routing": "none", "extra_forward": 0}


# -- the authors' rule, re-derived here in numpy/scipy (train_eval.py: adaptive_threshold) ----------------------
def _reference_cutoff(points: np.ndarray, offset: float = 0.0) -> int:
    from scipy.ndimage import gaussian_filter1d

    n = len(points)
    if n >= 128:
        f = gaussian_filter1d(points, sigma=10)
        o2 = (f[:-1] - f[1:])[:-1] - (f[:-1] - f[1:])[1:]
        drop = int(n * 0.03 / 2)
        o2 = o2[drop:-drop]
    else:
        o2 = (points[:-1] - points[1:])[:-1] - (points[:-1] - points[1:])[1:]
    thres = points[np.argmax(o2) + int((n - len(o2)) / 2)]
    i = int(np.arange(n)[points >= thres].max())
    return min(i + int(offset * (n - i)), n - 1) if 0 <= offset < 1 else max(min(i + int(offset), n - 1), 0)


def test_fidelity_adaptive_cutoff_is_the_authors_rule():
    s = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    assert adaptive_cutoff(s(10, 9, 1, 0.5)) == 2            # the elbow point opens the null space
    assert adaptive_cutoff(s(5, 4.5, 4, 0.1, 0.05, 0.01)) == 3
    assert adaptive_cutoff(s(4, 3, 1, 1, 0.5)) == 3          # moved past the values tied with it
    assert adaptive_cutoff(s(10, 9, 1, 0.5), offset=0.5) == 3
    assert adaptive_cutoff(s(10, 9, 1, 0.5), offset=-1) == 1
    pytest.importorskip("scipy")
    from scipy.ndimage import gaussian_filter1d

    g = np.random.default_rng(0)
    for n in (24, 64, 130, 768):
        pts = np.sort(np.abs(g.standard_normal(n)) * np.exp(-np.arange(n) / (n / 8)))[::-1].copy()
        if n >= 128:  # where the rule smooths
            torch.testing.assert_close(gaussian_smooth(torch.from_numpy(pts)), torch.from_numpy(gaussian_filter1d(pts, 10)))
        for off in (0.0, 0.25, 3):
            assert adaptive_cutoff(torch.from_numpy(pts), off) == _reference_cutoff(pts, off), (n, off)


def _low_rank(rows: int, dim: int, spectrum: list[float], seed: int) -> torch.Tensor:
    """``rows x dim`` features whose second moment ``XᵀX / rows`` has eigenvalues ``spectrum`` then ~1e-12."""
    g = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))[0]
    z = torch.linalg.qr(torch.randn(rows, len(spectrum), generator=g, dtype=torch.float64))[0] * rows ** 0.5
    x = z @ torch.diag(torch.tensor(spectrum, dtype=torch.float64).sqrt()) @ q[:, :len(spectrum)].T
    return x + 1e-6 * torch.randn(rows, dim, generator=g, dtype=torch.float64)


class _Prompt(torch.nn.Module):
    def __init__(self, length: int, width: int):
        super().__init__()
        self.tokens = torch.nn.Parameter(torch.zeros(length, width, dtype=torch.float64))


def _method_over(feats_key: torch.Tensor, feats_value: torch.Tensor, **options) -> tuple[VPTNSP2, _Prompt]:
    m, layer = VPTNSP2(**options), _Prompt(feats_value.shape[1], feats_key.shape[1])
    m.init_state({"blk": layer})
    cov = {"key": feats_key.T @ feats_key / len(feats_key), "value": feats_value.T @ feats_value / len(feats_value)}
    m.accumulate({"blk": cov}, 100)
    m.build_projectors()
    return m, layer


def test_fidelity_projected_update_meets_both_null_space_conditions():
    """η = 1: whatever the optimiser does, the update the method leaves, Δ' = P₂ Δ P₁, satisfies the paper's two
    conditions on the old features: (q W_k) Δ'ᵀ = 0 (keys of old tokens on the prompts unchanged) and a Δ' = 0
    (the value mix of old tokens' attention on the prompt slots unchanged)."""
    fk = _low_rank(600, 24, [4.0, 3.0, 2.0, 1.0], seed=1)   # q W_k of old tokens: 4 directions of R^24
    fv = _low_rank(600, 6, [2.0, 1.0], seed=2)              # their attention on the 6 prompt slots: 2 directions
    m, layer = _method_over(fk, fv, eta1=1.0, eta2=1.0)
    g = torch.Generator().manual_seed(3)
    m.before_step(None)
    with torch.no_grad():
        raw = torch.randn(6, 24, generator=g, dtype=torch.float64)
        layer.tokens.add_(raw)  # the optimiser's step
    m.after_step(None)
    d = layer.tokens.detach()
    rel = lambda f, x: float(x.norm() / (f.norm() * d.norm()))  # noqa: E731
    assert float(d.norm()) > 1e-3 * float(raw.norm())         # not a zero update
    assert rel(fk, fk @ d.T) < 1e-5, "condition 1 (old keys on the prompts) broken"
    assert rel(fv, fv @ d) < 1e-5, "condition 2 (old attention on the prompt slots) broken"
    assert rel(fk, fk @ raw.T) > 1e-2 and rel(fv, fv @ raw) > 1e-2  # the raw step did interfere
    assert m.null_dims == {"blk.key": 20, "blk.value": 4}  # the cut-off found the elbows (4 and 2 kept)


def test_fidelity_blend_is_eta_normalised_null_projector_plus_identity():
    fk = _low_rank(400, 16, [5.0, 4.0, 3.0], seed=4)
    cov = fk.T @ fk / len(fk)
    _, s, vh = torch.linalg.svd(cov)
    k0 = _reference_cutoff(s.numpy())
    u0 = vh[k0:]
    b = u0.T @ u0 / (len(u0) ** 0.5)  # ‖U₀ᵀU₀‖_F = √k: the authors divide B by its Frobenius norm
    for eta in (1.0, 0.98, 0.6):
        expect = eta * b + (1 - eta) * torch.eye(16, dtype=torch.float64)
        torch.testing.assert_close(null_space_projector(cov, eta), expect)
    m, _ = _method_over(fk, _low_rank(400, 5, [2.0, 1.0], seed=5), eta1=0.7, eta2=0.9)
    torch.testing.assert_close(m.proj["blk"]["key"], 0.7 * b + 0.3 * torch.eye(16, dtype=torch.float64))
    torch.testing.assert_close(null_space_projector(cov, 0.7, normalise=False),
                               0.7 * u0.T @ u0 + 0.3 * torch.eye(16, dtype=torch.float64))


# -- on the micro model -----------------------------------------------------------------------------------------
def _runner(seq_file, method="vpt-nsp2", tasks=2, **options):
    cfg = RunConfig(sequence=seq_file(train=16, test=4, n_tasks=tasks), model=MICRO, pet="vpt", method=method,
                    method_options=options, training={"iterations": 8, "batch_size": 16, "lr": 0.01},
                    progress=False, out="/tmp/unused", run_dir="/tmp/unused")
    return Runner(cfg)


def _start_task(r, t):
    data = r.data[r.seq.tasks[t].name]
    r.ctx.task_index, r.ctx.task_data = t, data
    r.method.before_task(r.ctx, t)
    return data, r.method.trainable(r.ctx)


def test_fidelity_adam_update_not_gradient_is_projected(seq_file):
    """Task 2's applied step is P₂ (the AdamW step) P₁ — not AdamW on a projected gradient — and with η = 1 it is
    orthogonal to the kept (old-feature) directions of both accumulated covariances."""
    r = _runner(seq_file, eta1=1.0, eta2=1.0)
    m = r.method
    r.learn_task(0)
    data, params = _start_task(r, 1)
    opt = make_optimizer(params, r.train)
    twin = [p.detach().clone().requires_grad_(True) for p in params]
    twin_opt = make_optimizer(twin, r.train)
    grad_twin = [p.detach().clone().requires_grad_(True) for p in params]
    grad_opt = make_optimizer(grad_twin, r.train)
    batch = next(iter(r.batches(data, 1, seed=1)))
    m.loss(r.ctx, batch).backward()
    before = [p.detach().clone() for p in params]
    names = {id(layer.tokens): name for name, layer in m.layers.items()}
    for t, g, p in zip(twin, grad_twin, params):
        t.grad = p.grad.clone()
        p1, p2 = (m.proj[names[id(p)]][s].to(p.dtype) for s in ("key", "value"))
        g.grad = p2 @ p.grad @ p1
    m.before_step(r.ctx)
    opt.step()
    m.after_step(r.ctx)
    twin_opt.step()
    grad_opt.step()
    for p, b, t, g in zip(params, before, twin, grad_twin):
        name = names[id(p)]
        p1, p2 = (m.proj[name][s].to(p.dtype) for s in ("key", "value"))
        applied = p.detach() - b
        expect = p2 @ (t.detach() - b) @ p1  # (float32: θ + Δ rounds at ~1e-7 of θ)
        assert float((applied - expect).norm()) <= 1e-3 * float(expect.norm()) and float(expect.norm()) > 0
        assert float((applied - (g.detach() - b)).norm()) > 0.1 * float(applied.norm())  # a different rule
        for side, on_right in (("key", True), ("value", False)):
            vh = torch.linalg.svd(m.cov[name][side])[2]
            kept = vh[: vh.shape[0] - m.null_dims[f"{name}.{side}"]].to(p.dtype)
            inner = applied @ kept.T if on_right else kept @ applied
            assert float(inner.norm()) <= 1e-5 * float(applied.norm()), (name, side)


def test_fidelity_first_task_trains_unprojected(seq_file):
    """Task 1 under vpt-nsp2 ends exactly where plain sequential training of the same prompts ends."""
    from suite.methods.seq import SequentialPET

    r = _runner(seq_file)
    start = {k: v.clone() for k, v in r.pet.state_dict().items()}
    r.learn_task(0)
    nsp = {k: v.clone() for k, v in r.pet.state_dict().items()}
    assert r.method.proj  # it built projectors for task 2
    r.pet.load_state_dict(start)
    r.method = SequentialPET()
    r.learn_task(0)
    assert any(not torch.equal(start[k], nsp[k]) for k in start)
    for k, v in r.pet.state_dict().items():
        torch.testing.assert_close(v, nsp[k], rtol=0, atol=0, msg=k)


def test_fidelity_covariances_sum_over_tasks_ln_loss_and_resume(seq_file):
    r = _runner(seq_file, tasks=3)
    m = r.method
    r.learn_task(0)
    first = {n: {s: c.clone() for s, c in slot.items()} for n, slot in m.cov.items()}
    r.learn_task(1)
    new, seen = m.collect(r.ctx)  # task 2's covariances, collected again (same batches, same prompts)
    for n, slot in m.cov.items():
        for s in ("key", "value"):
            torch.testing.assert_close(slot[s], first[n][s] + new[n][s])
    assert seen == m.counts[-1] > 0
    # the LN loss: L1 of per-token mean and (biased) std over the width against the prompts after task 2
    name, layer = next(iter(m.layers.items()))
    torch.testing.assert_close(m.ln_penalty(), torch.zeros((), dtype=layer.tokens.dtype))
    with torch.no_grad():
        layer.tokens.add_(0.25)
    torch.testing.assert_close(float(m.ln_penalty().detach()), 0.25, rtol=1e-5, atol=1e-6)  # means move, stds do not
    data, _ = _start_task(r, 2)
    batch = next(iter(r.batches(data, 1, seed=1)))
    torch.testing.assert_close(m.loss(r.ctx, batch), r.ctx.task_loss(batch) + m.ln_penalty())
    # resume: a fresh method loaded from the state holds the same covariances, projectors and previous prompts
    fresh = VPTNSP2()
    fresh.setup(r.ctx)
    fresh.load_state_dict(m.state_dict())
    for n in m.cov:
        for s in ("key", "value"):
            torch.testing.assert_close(fresh.cov[n][s], m.cov[n][s], rtol=0, atol=0)
            torch.testing.assert_close(fresh.proj[n][s], m.proj[n][s], rtol=0, atol=0)
        torch.testing.assert_close(fresh.prev[n], m.prev[n], rtol=0, atol=0)
    assert fresh.report() == m.report() and m.report()["nsp_bytes"] > 0


@pytest.mark.parametrize("track", ["class-incremental", "cross-modal"])
def test_fidelity_end_to_end_record_and_protocol(seq_file, tmp_path, track):
    rec = run(run_config(seq_file(track=track), tmp_path, method="vpt-nsp2", pet="vpt"))
    assert rec["status"] == "complete"
    assert rec["method"]["protocol"] == PROTOCOL
    eff = rec["efficiency"]
    assert eff["nsp_bytes"] == eff["nsp_covariance_bytes"] + eff["nsp_projector_bytes"] > 0


def test_fidelity_refuses_other_pets(seq_file, tmp_path):
    with pytest.raises(ConfigError) as err:
        run(run_config(seq_file(), tmp_path, method="vpt-nsp2", pet="lora"))
    assert "vpt-nsp2" in str(err.value) and "--pet vpt" in str(err.value) and "\n" not in str(err.value)
    seq = tmp_path / "s.yaml"
    seq.write_text(yaml.safe_dump(small_sequence()))
    with pytest.raises(ConfigError, match="depth: deep"):
        run(run_config(str(seq), tmp_path, method="vpt-nsp2", pet="vpt", pet_options={"depth": "shallow"}))


def test_fidelity_mean_accumulation_weights_tasks_by_images():
    m = VPTNSP2(accumulate="mean")
    m.init_state({"blk": _Prompt(3, 4)})
    a, c = torch.eye(4, dtype=torch.float64), 2 * torch.ones(4, 4, dtype=torch.float64)
    m.accumulate({"blk": {"key": a, "value": a[:3, :3]}}, 10)
    m.accumulate({"blk": {"key": c, "value": c[:3, :3]}}, 30)
    torch.testing.assert_close(m.cov["blk"]["key"], 0.25 * a + 0.75 * c)
