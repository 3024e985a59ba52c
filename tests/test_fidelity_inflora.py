"""InfLoRA fidelity: the designed, frozen down-projection lies outside the old tasks' DualGPM space and spans the top
singular directions of the residual input covariance; only the new up-projection learns; DualGPM follows the
official rules; a run gives a complete record with the declared protocol, and a non-LoRA PET is refused."""
import math

import pytest
import torch
from conftest import run_config

from suite.engine.runner import Runner, run
from suite.errors import ConfigError
from suite.methods.inflora import DualGPM, InfLoRA


def _runner(seq_file, tmp_path, **kw) -> Runner:
    cfg = run_config(seq_file(train=8, test=4), tmp_path, method="inflora", pet="lora",
                     training={"iterations": 3, "batch_size": 8, "lr": 0.005}, **kw)
    return Runner(cfg)


def _start_task(r: Runner, t: int) -> None:
    """What the runner does before training task ``t``: the method's before-task hook, then the optimiser's set."""
    r.ctx.task_index, r.ctx.task_data = t, r.data[r.seq.tasks[t].name]
    r.method.before_task(r.ctx, t)
    r.params = r.method.trainable(r.ctx)


def test_fidelity_new_branch_outside_old_space_and_only_new_B_learns(seq_file, tmp_path):
    r = _runner(seq_file, tmp_path)
    m = r.method
    r.learn_task(0)
    assert m.report()["basis_directions"] > 0
    _start_task(r, 1)
    assert r.pet.branch_count() == 2
    for key, layers in m.groups.items():
        old = m.memory[key].old_basis().float()
        assert old.shape[1] > 0, key
        for layer in layers:
            old_A, new_A = layer.branch_list()[0]["A"], layer.branch_list()[1]["A"]
            # rows orthonormal up to the official 1/sqrt(3), and orthogonal to every old direction
            torch.testing.assert_close(3 * new_A @ new_A.T, torch.eye(new_A.shape[0]), atol=1e-4, rtol=0)
            assert float((new_A @ old).abs().max()) < 1e-5, key
            # the old branch's leading rows (task 1's top directions) lie mostly inside the old space: the check
            # above is not vacuous
            lead = old_A[: min(old.shape[1], old_A.shape[0])]
            assert float((lead @ old).norm()) > 0.5 * float(lead.norm()), key
    # one training step: only the new up-projections receive gradient
    batch = next(iter(r.batches(r.ctx.task_data, 1, seed=1)))
    r.pet.zero_grad(set_to_none=True)
    m.loss(r.ctx, batch).backward()
    new_B = {id(br["B"]) for br in m.current()}
    assert set(map(id, r.params)) == new_B
    assert any(float(br["B"].grad.abs().sum()) > 0 for br in m.current())
    for layer in r.pet.pet_layers:
        old, new = layer.branch_list()
        assert new["A"].grad is None and not new["A"].requires_grad
        for p in old.values():
            assert p.grad is None or float(p.grad.abs().sum()) == 0.0


def test_fidelity_designed_A_spans_top_residual_directions(seq_file, tmp_path):
    """On one small layer (vision block 0's q/k/v input): the covariance and its SVD computed here, from a hook."""
    r = _runner(seq_file, tmp_path)
    m = r.method
    r.learn_task(0)
    _start_task(r, 1)
    layer = next(lay for lay in r.pet.pet_layers if lay.pet_name == "lora.vision.0.k")
    key = next(k for k, layers in m.groups.items() if layer in layers)
    cov = torch.zeros(layer.A.shape[1], layer.A.shape[1], dtype=torch.float64)

    def hook(_module, args):
        x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
        cov.add_(x.T @ x)

    handle = layer.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            for batch in r.ctx.batches(r.ctx.task_data, m.collect_batches(r.ctx)):
                r.ctx.task_loss(batch)
    finally:
        handle.remove()
    old = m.memory[key].old_basis()
    resid = cov - old @ (old.T @ cov)
    U, S, _ = torch.linalg.svd(resid)
    rank = layer.rank
    assert float(S[rank - 1]) > 1e3 * float(S[rank]) or float(S[rank - 1] - S[rank]) > 1e-6 * float(S[0])
    expected = U[:, :rank] @ U[:, :rank].T  # the projector onto the top-r residual directions
    A = layer.branch_list()[1]["A"].double()
    assert math.isclose(float(A.norm(dim=1).max()), 1 / math.sqrt(3), rel_tol=1e-4)
    torch.testing.assert_close(3 * A.T @ A, expected, atol=2e-4, rtol=0)


def _features(d: int, spectrum: list[float], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Features whose covariance has eigenvalues ``spectrum`` along random orthonormal directions Q."""
    g = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0]
    lam = torch.tensor(spectrum, dtype=torch.float64)
    return Q @ torch.diag(lam) @ Q.T, Q


def test_fidelity_dualgpm_follows_the_official_rules():
    d = 8
    cov, Q = _features(d, [8.0, 4.0, 2.0, 1.0, 0.5, 0.25, 0.1, 0.05], 0)
    mem = DualGPM(d)
    thr = 0.98
    ratio = torch.cumsum(torch.linalg.eigvalsh(cov).flip(0) ** 2, 0) / float((cov * cov).sum())
    expected = int((ratio < thr).sum())  # first task: #{cumsum of σ² ratios < λ}, no +1
    mem.update(cov, thr)
    assert mem.mode == "remove" and mem.occupied == expected == 2
    torch.testing.assert_close(mem.M @ mem.M.T, Q[:, :2] @ Q[:, :2].T, atol=1e-8, rtol=0)
    # a second task in the complementary directions: add until the captured energy reaches λ; more than d/2 in
    # all → the memory turns into the complement ("retain") and still means the same old space
    cov2 = Q[:, 2:] @ torch.diag(torch.tensor([9.0, 8.0, 7.0, 6.0, 0.01, 0.01], dtype=torch.float64)) @ Q[:, 2:].T
    mem.update(cov2, 0.99)
    assert mem.mode == "retain" and mem.occupied == 6 and mem.M.shape[1] == 2
    torch.testing.assert_close(mem.M @ mem.M.T, Q[:, 6:] @ Q[:, 6:].T, atol=1e-8, rtol=0)
    # design in retain mode: the new A spans the top residual directions, inside the free space
    m = InfLoRA()
    m.memory = {"x": mem}
    cov3 = cov + Q[:, 6:] @ torch.diag(torch.tensor([3.0, 0.5], dtype=torch.float64)) @ Q[:, 6:].T
    A = m.design("x", cov3, 1)
    torch.testing.assert_close(3 * A.T @ A, Q[:, 6:7] @ Q[:, 6:7].T, atol=1e-8, rtol=0)
    # the threshold schedule λ_t = (1 − λb)·t/T + λb
    m.n_tasks = 10
    assert m.threshold(0) == pytest.approx(0.98) and m.threshold(5) == pytest.approx(0.99)
    # state for --resume
    fresh = DualGPM(d)
    fresh.load_state_dict(mem.state_dict())
    assert fresh.mode == "retain" and torch.equal(fresh.M, mem.M) and fresh.started


def test_fidelity_end_to_end_record_protocol_and_refusal(seq_file, tmp_path):
    runner = Runner(run_config(seq_file(train=4, test=2), tmp_path, method="inflora", pet="lora",
                               training={"iterations": 2, "batch_size": 8, "lr": 0.005}))
    rec = runner.run()
    assert rec["status"] == "complete"
    assert rec["method"]["protocol"] == {"task_id_train": False, "task_id_test": False, "memory": 0,
                                         "routing": "none", "extra_forward": 0}
    eff = rec["efficiency"]
    assert eff["branches"] == 2 and eff["basis_directions"] > 0 and eff["basis_bytes"] > 0
    assert eff["pet_parameters"] > 0 and eff["extra_passes_per_task"] == 2
    state = runner.method.state_dict()
    assert all(isinstance(s["M"], torch.Tensor) for s in state["memory"].values())
    cross = run(run_config(seq_file(track="cross-modal", train=4, test=2), tmp_path / "x", method="inflora",
                           pet="lora", training={"iterations": 2, "batch_size": 8, "lr": 0.005}))
    assert cross["status"] == "complete" and cross["efficiency"]["basis_directions"] > 0
    with pytest.raises(ConfigError) as err:
        run(run_config(seq_file(), tmp_path / "v", method="inflora", pet="vpt"))
    assert "\n" not in str(err.value) and "inflora" in str(err.value) and "lora" in str(err.value)
