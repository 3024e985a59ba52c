"""Measures that mean what they say: the POPE probe, --max-eval samples, hijacking's definition, pooled ECE."""
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import run_config, small_sequence

from suite.config.sequences import load_sequence
from suite.data import materialize_sequence
from suite.engine.runner import run
from suite.errors import ConfigError
from suite.evaluation.evaluator import ConceptProbe, Evaluator, stratified_sample

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


def test_calibration_report_has_every_number_the_issue_names(seq_file, tmp_path):
    """``clsuite calibrate``'s report on a tiny sequence: fields, targets and the text table (no timing asserts)."""
    from suite.config.sequences import load_sequence
    from suite.experiments.calibrate import calibrate
    from suite.results.calibration import TARGETS, format_report

    seq = seq_file()
    rep = calibrate(seq, ["lora"], [0, 1], out=str(tmp_path / "cal"), log=lambda m: None,
                    base=run_config(seq, tmp_path, progress=False))
    assert rep["sequence"] == load_sequence(seq).name and rep["seeds"] == [0, 1]
    (p,) = rep["pets"]
    assert p["pet"] == "lora" and p["seeds"] == [0, 1]
    for key in ("zero_shot", "seq_diagonal", "plasticity_per_task"):
        assert len(p[key]) == 2 and all(x["n"] == 2 for x in p[key])
    for key in ("plasticity", "seq_forgetting", "pegp_forgetting", "seq_last", "pegp_last"):
        assert p[key]["n"] == 2 and p[key]["ci"] is not None
    diag = [x["mean"] - z["mean"] for x, z in zip(p["seq_diagonal"], p["zero_shot"])]
    assert [x["mean"] for x in p["plasticity_per_task"]] == pytest.approx(diag)
    assert set(p["targets"]) == set(TARGETS) - {"pairs"}
    t = p["targets"]["plasticity"]
    assert t["met"] == (p["plasticity"]["mean"] >= TARGETS["plasticity"][1])
    assert (t["miss"] is None) == t["met"]
    (ctrl,) = rep["controls"]
    assert ctrl["name"] == "ctrl" and ctrl["chance"] == 0.5 and 0 <= ctrl["pretrained"] <= 1
    assert rep["wall_time_s"] > 0 and p["wall_time_s"]["seq"] > 0
    table = format_report(rep)
    assert "lora" in table and "ctrl" in table and "targets:" in table
    # --from: the same report from the records on disk, no runs
    again = calibrate(seq, ["lora"], [0, 1], source=str(tmp_path / "cal"))
    assert again["pets"] == rep["pets"] and again["wall_time_s"] is None
    assert sorted(rep["entry_pairs"]["entries"]) == ["pegp/lora", "seq/lora", "zeroshot/-"]


def test_entry_pairs_counts_a_pair_resolved_only_where_its_interval_excludes_zero():
    """The board signal of a calibration report: three entries, two far apart and one within noise of the first,
    give 2 of 3 pairs resolved (a count that took ties for resolved would say 3)."""
    from suite.config.sequences import load_sequence
    from suite.results.calibration import entry_pairs
    from tests.records_factory import make_record, reference

    base = reference("world-class-incremental")
    recs = [make_record(base, s, method=m, shift=shift + 0.003 * (s % 2))
            for m, shift in (("a", 0.0), ("b", 0.12), ("c", 0.001)) for s in range(5)]
    got = entry_pairs(load_sequence("world-class-incremental"), recs, list(range(5)))
    assert sorted(got["entries"]) == ["a/lora", "b/lora", "c/lora"]
    assert (got["pairs"], got["resolved"]) == (3, 2) and got["share"] == pytest.approx(2 / 3)
    assert got["target"]["met"] is False and got["target"]["miss"] == pytest.approx(0.85 - 2 / 3)
    assert entry_pairs(load_sequence("world-class-incremental"), recs, list(range(6)))["pairs"] == 0  # seed 5 missing


def test_per_pet_training_is_the_budget_and_is_recorded(seq_file, tmp_path):
    import yaml

    from suite.config.sequences import SequenceError, load_sequence_file

    path = Path(seq_file())
    data = yaml.safe_load(path.read_text())
    data["pet_training"] = {"prefix": {"lr": 0.05, "iterations": 2}}
    path.write_text(yaml.safe_dump(data))
    seq = load_sequence_file(path)
    assert seq.default_training("prefix")["lr"] == 0.05 and seq.default_training("lora")["lr"] == 0.01
    rec = run(run_config(str(path), tmp_path, pet="prefix"))
    assert rec["training"]["lr"] == 0.05 and rec["training"]["iterations"] == 2
    assert [s["iterations"] for s in rec["steps"]] == [2, 2]
    assert run(run_config(str(path), tmp_path, pet="lora"))["training"]["lr"] == 0.01
    data["pet_training"] = {"prefix": {"lr": -1}}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SequenceError, match=r"pet_training\.prefix\.lr"):
        load_sequence_file(path)


def test_calibrate_grid_explores_budgets_on_seq_only(seq_file, tmp_path):
    """``clsuite calibrate --grid``: every candidate per PET, seq only, with train − test accuracy and timing."""
    from suite.experiments.calibrate import explore, parse_grid
    from suite.results.calibration import format_grid

    assert parse_grid("lr=0.01,0.02; iterations=2") == [{"lr": 0.01, "iterations": 2}, {"lr": 0.02, "iterations": 2}]
    for bad in ("", "lr", "momentum=0.9", "lr=fast", "lr="):
        with pytest.raises(ConfigError, match="--grid"):
            parse_grid(bad)
    seq = seq_file()
    rep = explore(seq, ["lora"], [0], "lr=0.01,0.05;iterations=2", out=str(tmp_path / "grid"), log=lambda m: None,
                  base=run_config(seq, tmp_path))
    assert [r["candidate"] for r in rep["rows"]] == [{"lr": 0.01, "iterations": 2}, {"lr": 0.05, "iterations": 2}]
    for row in rep["rows"]:
        assert row["training"]["lr"] == row["candidate"]["lr"] and row["training"]["iterations"] == 2
        assert row["train_minus_test"]["n"] == 1 and row["run_wall_time_s"] > 0
        assert row["plan_estimate_s"] == pytest.approx(row["run_wall_time_s"] * 5)
    methods = {json.loads(p.read_text())["method"]["name"] for p in (tmp_path / "grid").glob("*.json")}
    assert methods == {"seq", "zeroshot"}  # no PEGP: designs are chosen on seq and zero-shot alone
    assert "lr=0.05" in format_grid(rep)


def test_calibrate_from_results_takes_the_pets_that_learn_on_the_track(tmp_path, capsys):
    """Without --pets, ``clsuite calibrate`` reports every built-in PET that learns on the sequence's track: on
    world-cross-modal that leaves CoOp out (it has no class prompts to learn there), where it used to stop at
    "no budget record of seq/coop"."""
    from suite.cli import main
    from suite.pet import pets_for_track
    from suite.registry import PETS

    assert pets_for_track("cross-modal") == [p for p in PETS.builtin if p != "coop"]
    assert pets_for_track("class-incremental") == list(PETS.builtin)
    report = tmp_path / "wcm.json"
    assert main(["calibrate", "world-cross-modal", "--from", str(Path(__file__).parents[1] / "results"),
                 "--seeds", "0,1,2,3,4", "--report", str(report)]) == 0
    assert [p["pet"] for p in json.loads(report.read_text())["pets"]] == pets_for_track("cross-modal")
    assert "coop" not in capsys.readouterr().out
