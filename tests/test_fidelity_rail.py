"""RAIL fidelity: the recursive primal head equals the joint ridge solution on every task's data, the dual head
equals kernel ridge on every stored feature, the test-time fusion is the official one per image (0.2 zero-shot
probabilities + 0.8 regression outputs when the zero-shot argmax is a learned class), the random expansion is fixed
and seeded, and a run writes a complete record while the cross-modal track is refused in one line."""
import pytest
import torch
import yaml
from conftest import method_runner, run_config, small_sequence

from suite.engine.runner import Runner
from suite.errors import ConfigError
from suite.methods.rail import RAIL, expansion_matrix, hidden_for, score_map
from suite.models.inference import FROZEN, Routed


def _learn(r, tasks):
    for t in tasks:
        r.learn_task(t)


def _all_features(r, tasks):
    """Every task's training features and head columns, collected afresh (the classes are known by now)."""
    parts = [r.method.collect(r.ctx, r.data[r.seq.tasks[t].name]) for t in tasks]
    return torch.cat([p[0] for p in parts]).double(), torch.cat([p[1] for p in parts])


def _test_features(r, tasks):
    ev = r.evaluator
    feats = [ev.image_features(r.data[r.seq.tasks[t].name].test, sample=False) for t in tasks]
    return torch.cat(feats)


def test_fidelity_primal_recursion_equals_joint_ridge(seq_file, tmp_path):
    # 160 images a task: two recursion chunks of 128 per task
    r = method_runner(seq_file(train=80, test=2), tmp_path, "rail", pet=None, form="primal")
    m = r.method
    assert r.params == [] and m.hidden == hidden_for(32) == 938
    _learn(r, [0, 1])
    X, cols = _all_features(r, [0, 1])
    assert len(X) == 320 and sorted(set(cols.tolist())) == [0, 1, 2, 3]
    phi = torch.relu(X @ m.expansion.double().T)
    Y = torch.nn.functional.one_hot(cols, 4).double()
    A = phi.T @ phi + 0.1 * torch.eye(m.hidden, dtype=torch.float64)
    W = torch.linalg.solve(A, phi.T @ Y)
    rel = float((m.W - W).norm() / W.norm())
    assert rel < 1e-4, rel
    R_rel = float((m.R - torch.linalg.inv(A)).norm() / torch.linalg.inv(A).norm())
    assert R_rel < 1e-4, R_rel
    # not vacuous: the first task alone is a different solution
    W1 = torch.linalg.solve(phi[:160].T @ phi[:160] + 0.1 * torch.eye(m.hidden, dtype=torch.float64),
                            phi[:160].T @ Y[:160])
    assert float((m.W - W1).norm() / W.norm()) > 1e-2


def test_fidelity_dual_equals_kernel_ridge_on_all_data(seq_file, tmp_path):
    r = method_runner(seq_file(train=20, test=4), tmp_path, "rail", pet=None, form="dual")
    m = r.method
    _learn(r, [0, 1])
    X, cols = _all_features(r, [0, 1])
    assert torch.equal(m.labels.cpu(), cols) and torch.allclose(m.features.double(), X)
    K = torch.exp(-0.1 * torch.cdist(X, X).pow(2))
    alpha = torch.linalg.solve(K + 0.001 * torch.eye(len(X), dtype=torch.float64),
                               torch.nn.functional.one_hot(cols, 4).double())
    test = _test_features(r, [0, 1]).double()
    want = torch.exp(-0.1 * torch.cdist(test, X).pow(2)) @ alpha
    got = m.predict(test.float())
    rel = float((got - want).norm() / want.norm())
    assert rel < 1e-4, rel
    # not vacuous: kernel ridge on the last task alone predicts otherwise
    last = torch.linalg.solve(K[40:, 40:] + 0.001 * torch.eye(40, dtype=torch.float64),
                              torch.nn.functional.one_hot(cols[40:], 4).double())
    assert float((torch.exp(-0.1 * torch.cdist(test, X[40:]).pow(2)) @ last - want).norm() / want.norm()) > 1e-2


def test_fidelity_fusion_per_image_and_unseen_names_zero_shot(seq_file, tmp_path):
    r = method_runner(seq_file(train=20, test=10), tmp_path, "rail", pet=None)
    m = r.method
    _learn(r, [0])
    inf = m.inference(r.ctx)
    scale = float(r.backbone.logit_scale_value)
    t0, t1 = (r.data[r.seq.tasks[t].name] for t in (0, 1))
    names = list(t0.classnames) + list(t1.classnames)
    feats = _test_features(r, [0, 1])
    # the random micro model's prompts favour some names for every image; any text serves the arithmetic, so the
    # rows are four test images (two of each task): each of those wins for itself, so both kinds of image occur
    text = feats[[0, 10, 20, 30]]
    assert not torch.allclose(text, r.evaluator.class_text_features(names, t0.templates))
    img = Routed(feats, torch.full((len(feats),), FROZEN))
    got = inf.scores(img, lambda route: text, names)
    cos = feats @ text.T
    p = torch.softmax(scale * cos.double(), -1)
    seen = p.argmax(-1) < 2  # the zero-shot argmax is one of task 1's (learned) classes
    assert bool(seen.any()) and bool((~seen).any())  # both kinds of image occur
    y = m.predict(feats)  # learned columns: task 1's two classes
    f = p.clone()
    f[seen, :2] = 0.2 * p[seen, :2] + 0.8 * y[seen]
    f[seen, 2:] = 0.2 * p[seen, 2:]
    torch.testing.assert_close(got, (score_map(f) / scale).float(), rtol=1e-5, atol=1e-6)
    # unseen images are the zero-shot log-probabilities; a seen image's unlearned classes keep 0.2 of theirs
    torch.testing.assert_close(got[~seen].double(), torch.log_softmax(scale * cos[~seen].double(), -1) / scale,
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[seen][:, 2:].double(),
                               (torch.log(torch.tensor(0.2)) + torch.log_softmax(scale * cos[seen].double(), -1)[:, 2:]) / scale,
                               rtol=1e-5, atol=1e-6)
    # what the evaluator makes of it: argmax of the official output, probabilities its renormalisation
    probs = torch.softmax(scale * got, -1).double()
    assert torch.equal(probs.argmax(-1), f.argmax(-1))
    pos = (f > 1e-6).all(-1)
    torch.testing.assert_close(probs[pos], (f / f.sum(-1, keepdim=True))[pos], rtol=1e-3, atol=1e-5)
    # a head with no learned name (task 2's, a control set's, concepts) and captions: the zero-shot cosines
    assert torch.equal(inf.scores(img, lambda route: text[2:], names[2:]), feats @ text[2:].T)
    assert torch.equal(inf.scores(img, lambda route: text, None), cos)
    # per image: one image scored alone equals its row in the batch
    one = inf.scores(img[[3]], lambda route: text, names)
    torch.testing.assert_close(one, got[3:4])


def test_fidelity_expansion_fixed_seeded_and_state_resumes(seq_file, tmp_path):
    seq = seq_file(train=10, test=4)
    r = method_runner(seq, tmp_path, "rail", pet=None, form="primal", hidden=64)
    m = r.method
    E0 = m.expansion.clone()
    assert E0.shape == (64, 32) and float(E0.abs().max()) <= 32 ** -0.5
    _learn(r, [0, 1])
    assert torch.equal(m.expansion, E0)
    torch.testing.assert_close(E0, expansion_matrix(32, 64, 0))
    assert not torch.equal(expansion_matrix(32, 64, 1), E0)
    # a fresh method resumed from the state answers the same
    state = m.state_dict()
    assert {"W", "R", "expansion", "classes"} <= set(state) and state["classes"] == m.classes
    fresh = RAIL(form="primal", hidden=64)
    fresh.load_state_dict(state)
    feats = _test_features(r, [0, 1])
    assert torch.equal(fresh.predict(feats), m.predict(feats))
    rep = m.report()
    assert rep["rail_W_bytes"] == 64 * 4 * 8 and rep["rail_R_bytes"] == 64 * 64 * 8 and rep["rail_expansion_bytes"] == 64 * 32 * 4


def test_fidelity_end_to_end_record_and_cross_modal_refused(seq_file, tmp_path):
    runner = Runner(run_config(seq_file(train=4, test=2), tmp_path, method="rail", pet=None,
                               method_options={"form": "dual"}))
    rec = runner.run()
    assert rec["status"] == "complete" and len(rec["steps"]) == 2
    # the dual form re-solves over every stored training feature: a memory of 16 examples, which the boards refuse
    assert rec["method"]["protocol"] == {"task_id_train": False, "task_id_test": False, "memory": 16,
                                         "routing": "per-sample", "extra_forward": 0}
    eff = rec["efficiency"]
    assert eff["trainable_parameters"] == 0 and eff["rail_stored_features"] == 16 and eff["rail_bytes"] > 0
    assert all(s["iterations"] == 0 for s in rec["steps"])
    # domain-incremental: the same classes in each task's domain share the head's columns
    raw = small_sequence(track="domain-incremental", train=4, test=2)
    for task in raw["tasks"]:
        task["classes"] = raw["tasks"][0]["classes"]
    (tmp_path / "dom.yaml").write_text(yaml.safe_dump(raw))
    dom = Runner(run_config(str(tmp_path / "dom.yaml"), tmp_path / "d", method="rail", pet=None,
                            method_options={"form": "primal", "hidden": 32})).run()
    assert dom["status"] == "complete" and dom["efficiency"]["rail_classes"] == 2
    assert dom["method"]["protocol"]["memory"] == 0  # the primal form keeps R and W only
    with pytest.raises(ConfigError) as err:
        Runner(run_config(seq_file(track="cross-modal"), tmp_path / "x", method="rail", pet=None))
    msg = str(err.value)
    assert "\n" not in msg and "rail" in msg and "cross-modal" in msg
