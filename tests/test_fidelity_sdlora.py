"""SD-LoRA fidelity: a layer computes W x + α_t B_t A_t x + Σ_{i<t} α_i B_i A_i x / (‖B_i‖‖A_i‖), so rescaling a
stored old direction leaves the output unchanged; one magnitude per task is shared by every layer; only the
magnitudes and the open branch receive gradient (old A/B none); magnitudes survive state_dict/load_state_dict
(resume); a run gives a complete record on class-incremental and cross-modal sequences."""
import pytest
import torch

from suite.engine.runner import Runner, run
from tests.conftest import method_runner, run_config, start_task


def _runner(seq: str, tmp_path, **method_options) -> Runner:
    return method_runner(seq, tmp_path, "sdlora", **method_options)


def _second_task(r: Runner):
    """Open task 2's branch, with every B filled (task 1's untrained branch included) so every path carries
    signal; return task 2's data."""
    data = start_task(r, 1)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for layer in r.pet.pet_layers:
            for br in layer.branch_list():
                br["B"].copy_(torch.randn(br["B"].shape, generator=g) * 0.1)
        r.method.magnitudes[0].fill_(1.7)
        r.method.magnitudes[1].fill_(0.6)
    return data


def _values(params) -> list[float]:
    return [float(p.detach()) for p in params]


def _expected(layer, x: torch.Tensor, alphas: list[float]) -> torch.Tensor:
    (A0, B0), (A1, B1) = ((br["A"].detach(), br["B"].detach()) for br in layer.branch_list())
    out = layer.base(x) + alphas[0] * (x @ A0.T @ B0.T) / (B0.norm() * A0.norm())
    return out + alphas[1] * (x @ A1.T @ B1.T)  # the open branch: no normalisation, no α/r


def test_fidelity_sdlora_output_formula_and_rescale_invariance(seq_file, tmp_path):
    r = _runner(seq_file(), tmp_path)
    _second_task(r)
    assert _values(r.method.magnitudes) == pytest.approx([1.7, 0.6])
    layer = r.pet.pet_layers[0]
    x = torch.randn(5, layer.base.in_features, generator=torch.Generator().manual_seed(1))
    expected = _expected(layer, x, [1.7, 0.6])
    with torch.no_grad():
        merged = layer(x)  # evaluation path: W + Σ s_i B_i A_i
    trained = layer(x)  # training path: branch by branch
    assert torch.allclose(merged, expected, atol=1e-5) and torch.allclose(trained, expected, atol=1e-5)
    # every layer's scales use the same magnitude objects: one scalar per task shared across layers
    for lay in r.pet.pet_layers:
        s = r.method.scales(lay)
        assert s[1] is r.method.magnitudes[1]
        assert torch.allclose(s[0] * (lay.branch_list()[0]["B"].norm() * lay.branch_list()[0]["A"].norm()),
                              r.method.magnitudes[0])
    with torch.no_grad():  # rescale the stored old direction: B by 3.7, A by 0.2
        old = layer.branch_list()[0]
        old["B"].mul_(3.7)
        old["A"].mul_(0.2)
        after = layer(x)
    assert torch.allclose(after, merged, atol=1e-5)
    with torch.no_grad():  # the open branch is not normalised: rescaling it changes the output
        layer.branch_list()[1]["B"].mul_(3.7)
        assert not torch.allclose(layer(x), merged, atol=1e-3)


def test_fidelity_sdlora_gradients_reach_magnitudes_and_open_branch_only(seq_file, tmp_path):
    r = _runner(seq_file(), tmp_path)
    data = _second_task(r)
    old = [p for layer in r.pet.pet_layers for p in layer.branch_list()[0].values()]
    new = [p for layer in r.pet.pet_layers for p in layer.branch_list()[1].values()]
    trainable = {id(p) for p in r.method.trainable(r.ctx)}
    assert trainable == {id(p) for p in new + r.method.magnitudes}
    batch = next(iter(r.batches(data, 1, seed=1)))
    r.method.loss(r.ctx, batch).backward()
    assert all(p.grad is None for p in old)  # old directions: no gradient
    for m in r.method.magnitudes:  # the old task's scalar keeps learning, as the new one does
        assert m.grad is not None and float(m.grad.abs()) > 0
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in new)


def test_fidelity_sdlora_magnitudes_reset_and_resume(seq_file, tmp_path):
    seq = seq_file()
    r = _runner(seq, tmp_path)
    _second_task(r)
    state, pet_state = r.method.state_dict(), r.pet.state_dict()
    assert torch.equal(state["magnitudes"], torch.tensor([1.7, 0.6]))  # float32 both sides
    layer = r.pet.pet_layers[3]
    x = torch.randn(4, layer.base.in_features, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = layer(x)
    # a fresh run restored as the runner resumes: branches grown, PET state, then the method's state
    fresh = _runner(seq, tmp_path / "again", magnitudes="carry")
    fresh.pet.grow_to(2)
    fresh.pet.load_state_dict(pet_state)
    fresh.method.load_state_dict(state)
    assert _values(fresh.method.magnitudes) == pytest.approx([1.7, 0.6])
    with torch.no_grad():
        assert torch.allclose(fresh.pet.pet_layers[3](x), before, atol=1e-6)
    # official: every task restarts all magnitudes at 0.8 (a fresh network per task); "carry" keeps them
    r.method.before_task(r.ctx, 2)
    assert _values(r.method.magnitudes) == pytest.approx([0.8] * 3)
    fresh.method.before_task(fresh.ctx, 2)
    assert _values(fresh.method.magnitudes) == pytest.approx([1.7, 0.6, 0.8])
    assert fresh.pet.branch_count() == 3 and len(fresh.method.trainable(fresh.ctx)) == 2 * len(fresh.pet.pet_layers) + 3


@pytest.mark.parametrize("track", ["class-incremental", "cross-modal"])
def test_fidelity_sdlora_end_to_end_records(seq_file, tmp_path, track):
    rec = run(run_config(seq_file(track=track), tmp_path, method="sdlora", pet="lora"))
    assert rec["status"] == "complete", track
    assert rec["method"]["protocol"] == {"task_id_train": False, "task_id_test": False, "memory": 0,
                                         "routing": "none", "extra_forward": 0}
    assert rec["efficiency"]["branches"] == 2 and rec["efficiency"]["sdlora_magnitudes"] == 2
