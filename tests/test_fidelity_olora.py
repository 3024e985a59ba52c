"""O-LoRA fidelity: the orthogonality penalty Σ|A_old A_newᵀ| is exactly zero for orthogonal rows and positive
otherwise, weighted by λ1 in the loss; its gradient reaches only the new A; old branches never receive a gradient
and only the open branch trains; a run gives a complete record on class-incremental and cross-modal sequences."""
import pytest
import torch

from suite.engine.runner import Runner, run
from tests.conftest import method_runner, run_config, start_task


def _runner(seq: str, tmp_path, **method_options) -> Runner:
    return method_runner(seq, tmp_path, "olora", **method_options)


def _second_task(r: Runner):
    """Open task 2's branch (task 1's is the attached one, untrained: its A is random); return task 2's data."""
    return start_task(r, 1)


def test_fidelity_olora_penalty_zero_iff_orthogonal_and_grad_only_new_A(seq_file, tmp_path):
    r = _runner(seq_file(), tmp_path)
    _second_task(r)
    layers = r.pet.pet_layers
    assert all(len(layer.branch_list()) == 2 for layer in layers)
    with torch.no_grad():  # old rows span the first r coordinates, new rows the next r: orthogonal
        for layer in layers:
            old, new = layer.branch_list()[0]["A"], layer.branch_list()[1]["A"]
            rank, d = old.shape
            assert 2 * rank <= d
            old.zero_()[:, :rank] = torch.randn(rank, rank)
            new.zero_()[:, rank:2 * rank] = torch.randn(rank, rank)
    assert float(r.method.orthogonality().detach()) == 0.0
    with torch.no_grad():  # one shared coordinate in one layer: the penalty is the element-wise L1 of A_old A_newᵀ
        layers[0].branch_list()[1]["A"][0, 0] = 0.5
    old, new = layers[0].branch_list()[0]["A"], layers[0].branch_list()[1]["A"]
    expected = (old @ new.T).abs().sum()
    penalty = r.method.orthogonality()
    assert float(penalty.detach()) > 0 and torch.allclose(penalty, expected)
    penalty.backward()
    for layer in layers:
        old_b, new_b = layer.branch_list()
        assert old_b["A"].grad is None and old_b["B"].grad is None  # old branches: no gradient
        assert new_b["B"].grad is None  # the penalty does not involve B
    g = layers[0].branch_list()[1]["A"].grad
    assert g is not None and float(g.abs().sum()) > 0
    # d/dA_new Σ|A_old A_newᵀ| = sign(A_old A_newᵀ)ᵀ A_old
    assert torch.allclose(g, torch.sign(old.detach() @ new.detach().T).T @ old.detach())


def test_fidelity_olora_loss_weights_penalty_and_only_new_branch_trains(seq_file, tmp_path):
    r = _runner(seq_file(), tmp_path, lambda_1=0.5, lambda_2=0.25)
    data = _second_task(r)
    new = [p for layer in r.pet.pet_layers for p in layer.branch_list()[1].values()]
    old = [p for layer in r.pet.pet_layers for p in layer.branch_list()[0].values()]
    assert {id(p) for p in r.method.trainable(r.ctx)} == {id(p) for p in new}
    assert not any(p.requires_grad for p in old)
    batch = next(iter(r.batches(data, 1, seed=1)))
    torch.manual_seed(0)
    task = r.ctx.task_loss(batch)
    l2 = sum(torch.linalg.vector_norm(p) for p in new)
    torch.manual_seed(0)
    loss = r.method.loss(r.ctx, batch)
    assert float(r.method.orthogonality().detach()) > 0  # random A rows are not orthogonal: the test proves something
    assert torch.allclose(loss, task + 0.5 * r.method.orthogonality() + 0.25 * l2, rtol=1e-5, atol=1e-6)
    loss.backward()
    assert all(p.grad is None for p in old)
    assert all(p.grad is not None for p in new)


@pytest.mark.parametrize("track", ["class-incremental", "cross-modal"])
def test_fidelity_olora_end_to_end_records(seq_file, tmp_path, track):
    rec = run(run_config(seq_file(track=track), tmp_path, method="olora", pet="lora"))
    assert rec["status"] == "complete", track
    assert rec["method"]["protocol"] == {"task_id_train": False, "task_id_test": False, "memory": 0,
                                         "routing": "none", "extra_forward": 0}
    assert rec["efficiency"]["branches"] == 2
    assert rec["efficiency"]["olora_orthogonality"] > 0
