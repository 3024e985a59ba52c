"""Measures that mean what they say: the POPE probe, --max-eval samples, hijacking's definition, pooled ECE."""
import numpy as np
import pytest
import yaml

from conftest import MICRO, run_config, small_sequence
from suite.data import materialize_sequence
from suite.evaluation.evaluator import ConceptProbe, Evaluator, stratified_sample
from suite.runner import RunConfig, run
from suite.sequences import load_sequence

_cfg = run_config


def test_pope_probe_has_positives_for_every_concept_and_disjoint_halves():
    seq = load_sequence("world-cross-modal")
    data = materialize_sequence(seq)
    probe = ConceptProbe.from_tasks(data, [t.name for t in seq.tasks])
    ids = lambda half: {(n, i) for n, sp in half.items() for i in sp.ids}  # noqa: E731
    assert not ids(probe.calibration) & ids(probe.scored)  # thresholds never see the scored images
    for half in (probe.calibration, probe.scored):
        present = {o for sp in half.values() for objs in sp.objects for o in objs}
        assert set(probe.concepts) <= present  # every scored concept has a positive in both halves
    vocab = {o for n in data for objs in (data[n].test.objects or []) for o in objs if n in [t.name for t in seq.tasks]}
    assert sorted(probe.concepts + probe.excluded) == sorted(vocab)


def test_max_eval_draws_a_stratified_sample_covering_every_class(seq_file, tmp_path):
    labels = np.repeat(np.arange(4), 10)  # a class-ordered split
    sample = stratified_sample(labels, 16, seed=0)
    assert len(sample) == 16 and set(labels[sample]) == {0, 1, 2, 3}
    assert sample == stratified_sample(labels, 16, seed=0)
    rec = run(_cfg(seq_file(test=8), tmp_path, max_eval=3, method="zeroshot", pet=None))
    ev = Evaluator(None, max_eval=3)
    seq = load_sequence(rec["config"]["sequence"])
    data = materialize_sequence(seq, 16)
    for t in seq.tasks:
        picked = ev.eval_labels(data[t.name].test)
        assert len(picked) == 3 and set(picked) == {0, 1}  # both classes, not the first 3 images of class 0


def test_hijacking_counts_only_name_disjoint_classes(tmp_path):
    raw = small_sequence(n_tasks=2)
    raw["tasks"][1]["classes"] = ["red triangle", "yellow star"]  # 'red' is learned in task 1 (red circle)
    raw["control_sets"][0]["classes"] = ["red star", "blue heart"]  # both share a word with task 1
    path = tmp_path / "seq.yaml"
    path.write_text(yaml.safe_dump(raw))
    rec = run(_cfg(str(path), tmp_path))
    first = rec["steps"][0]["hallucination"]["hijacking"]
    assert first["head"] == {"learned": 2, "unlearned": 1}  # only 'yellow star' is name-disjoint
    assert set(first) == {"head", "t1", "mean_rate", "mean_confidence"}
    assert rec["steps"][1]["hallucination"]["hijacking"] == {
        "not_applicable": "no class of a later task or control set is name-disjoint from the learned classes"}
    assert rec["summary"].get("hijacking_rate") is None


def test_step_records_pooled_ece_with_interval_and_pope_auroc(seq_file, tmp_path):
    rec = run(_cfg(seq_file(), tmp_path))
    ece = rec["steps"][-1]["ece"]
    assert ece["low"] <= ece["value"] <= ece["high"] and ece["n"] == 2 * 2 * 6
    pope = rec["steps"][-1]["hallucination"]["pope"]
    assert 0.0 <= pope["auroc"] <= 1.0 and pope["calibration_images"] > 0 and pope["scored_images"] > 0
    assert rec["summary"]["pope_auroc"] == pytest.approx(pope["auroc"])
