"""What a record means: the pretrained reference for every PET form, the attach cost, item-level outcomes that
reproduce every accuracy, and intervals that include the test set (t over seeds with a bootstrap over items, McNemar)."""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
from conftest import run_config

from suite.engine.runner import run
from suite.results import items
from suite.results.records import RecordError, validate_record
from suite.results.uncertainty import mcnemar, two_level_interval


@pytest.mark.parametrize("pet", ["vpt", "coop", "prefix", "lora", "adapter"])
def test_the_reference_is_the_pretrained_model_and_attaching_has_its_own_cost(pet, seq_file, tmp_path):
    """A freshly attached, untrained PET: its retention is its control accuracy over the *pretrained* model's (no
    PET), and what attaching alone changed is ``attach_cost`` — zero for the forms that start as the identity."""
    cfg = run_config(seq_file(), tmp_path, pet=pet, training={"iterations": 0})
    rec = run(cfg)
    pretrained = run(run_config(cfg.sequence, tmp_path / "zs", pet=None, method="zeroshot"))
    assert rec["zero_shot"]["reference"] == "pretrained"
    assert rec["zero_shot"]["tasks"] == pretrained["zero_shot"]["tasks"]
    assert rec["zero_shot"]["controls"] == pretrained["zero_shot"]["controls"]
    first = rec["steps"][0]  # nothing trained: the model is the freshly attached one
    for name, acc in first["control_accuracy"].items():
        ref = pretrained["zero_shot"]["controls"][name]
        assert first["retention"][name] == pytest.approx(acc / ref)
        assert rec["attach_cost"]["controls"][name] == pytest.approx(ref - acc)
    cost = rec["attach_cost"]["tasks"]
    assert cost == pytest.approx([z - a for z, a in zip(rec["zero_shot"]["tasks"], first["accuracy"])])
    if pet in ("lora", "adapter"):
        assert cost == [0.0] * len(cost) and set(rec["attach_cost"]["controls"].values()) == {0.0}
    assert pretrained["attach_cost"] is None


def test_random_prompts_cost_accuracy_at_attach(seq_file, tmp_path):
    """The effect the reference fix is about must be measurable: on the pretrained tiny CLIP (the random micro
    model answers one class whatever it sees), VPT's random prompts change some answer before any training."""
    rec = run(run_config(seq_file(), tmp_path, pet="vpt", training={"iterations": 0}, model="embedded:tiny-clip",
                         pet_options={"length": 16, "init_std": 2.0}))
    changed = [abs(v) for v in rec["attach_cost"]["tasks"] + list(rec["attach_cost"]["controls"].values())]
    assert max(changed) > 0


def test_items_reproduce_every_accuracy_and_validate_rejects_a_mismatch(seq_file, tmp_path):
    rec = run(run_config(seq_file(), tmp_path))
    for step in [rec["zero_shot_step"]] + rec["steps"]:
        assert [items.accuracy(e) for e in step["items"]["tasks"]] == pytest.approx(step["accuracy"], abs=1e-12)
        for name, e in step["items"]["controls"].items():
            assert items.accuracy(e) == pytest.approx(step["control_accuracy"][name], abs=1e-12)
    bad = copy.deepcopy(rec)
    entry = bad["steps"][-1]["items"]["tasks"][0]
    bits = items.unpack(entry)["correct"]
    bits[0] = not bits[0]
    bad["steps"][-1]["items"]["tasks"][0] = items.pack_correct(bits)
    with pytest.raises(RecordError, match=r"steps\[1\]\.items\.tasks\[0\]: the items give accuracy"):
        validate_record(bad, "r.json")
    torn = copy.deepcopy(rec)
    torn["steps"][0]["items"]["controls"]["ctrl"] = "c:8:!!"
    with pytest.raises(RecordError, match="unreadable item outcomes"):
        validate_record(torn, "r.json")


def test_retrieval_items_reproduce_r1_both_ways(seq_file, tmp_path):
    rec = run(run_config(seq_file(track="cross-modal"), tmp_path))
    step = rec["steps"][-1]
    for entry, acc in zip(step["items"]["tasks"], step["accuracy"]):
        arrays = items.unpack(entry)
        assert len(arrays["t2i"]) == arrays["captions"].sum() and len(arrays["i2t"]) == items.size(entry)
        assert items.accuracy(entry) == pytest.approx(acc, abs=1e-12)
        assert items.scores(entry).mean() == pytest.approx(acc, abs=1e-12)


def test_packing_round_trips_and_refuses_what_does_not_fit():
    rng = np.random.default_rng(0)
    for n in (0, 1, 7, 8, 9, 100):
        bits = rng.random(n) < 0.5
        assert (items.unpack(items.pack_correct(bits))["correct"] == bits).all()
    entry = items.pack_correct([True, False, True])
    for bad in (entry.replace("c:3:", "c:12:"), "x:3:AA==", "c:3", entry + "!", 7):
        with pytest.raises(ValueError):
            items.unpack(bad)
    uneven = items.pack_hits([True, False, False], [True, False, True, True, False], [2, 1, 2])
    assert list(items.unpack(uneven)["captions"]) == [2, 1, 2]
    assert items.accuracy(uneven) == pytest.approx((1 / 3 + 3 / 5) / 2)
    assert items.scores(uneven).mean() == pytest.approx(items.accuracy(uneven))
    even = items.pack_hits([True, False], [True, True, False, False], [2, 2])
    assert even.count(":") == 4  # equal caption counts are implied, not stored
    with pytest.raises(ValueError):
        items.pack_hits([True], [True, False], [1])


def test_two_level_bootstrap_widths_order_as_the_variances_do():
    """Constructed score tables (seeds x items) with a known source of variance: seeds only (every item of a seed
    scores the seed's value), items only (every seed answers the same items the same way), and both."""
    rng = np.random.default_rng(1)
    n_seeds, n_items = 5, 400
    seed_effect = np.array([0.45, 0.55, 0.50, 0.60, 0.40])
    seeds_only = np.repeat(seed_effect[:, None], n_items, 1)
    item_bits = (rng.random(n_items) < 0.5).astype(float)
    items_only = np.repeat(item_bits[None, :], n_seeds, 0)
    both = (rng.random((n_seeds, n_items)) < seed_effect[:, None]).astype(float)

    def width(table, levels="both"):
        lo, hi = two_level_interval(table, levels=levels)
        assert lo <= table.mean() + 1e-9 and table.mean() - 1e-9 <= hi
        return hi - lo

    assert width(items_only, "seeds") == pytest.approx(0.0, abs=1e-12)  # seeds agree: resampling them alone cannot move the mean
    assert width(seeds_only, "items") == pytest.approx(0.0, abs=1e-12)  # items agree within a seed
    assert width(items_only) > 0.02 and width(seeds_only) > 0.02
    assert width(both) > width(both, "seeds") and width(both) > width(both, "items")
    # item noise on 400 items: half-width near 1.96 * sqrt(p(1-p)/n) = 4.9 points
    assert width(items_only) / 2 == pytest.approx(1.96 * np.sqrt(0.25 / n_items), rel=0.25)


def test_mcnemar_on_a_hand_computed_table():
    # a right / b wrong: 8; a wrong / b right: 2; agreement elsewhere (ignored by the test)
    a = np.array([1] * 8 + [0] * 2 + [1] * 30 + [0] * 10, bool)
    b = np.array([0] * 8 + [1] * 2 + [1] * 30 + [0] * 10, bool)
    res = mcnemar(a, b)
    assert (res["a_only"], res["b_only"]) == (8, 2)
    # exact two-sided: 2 * P(X <= 2), X ~ Binomial(10, 1/2) = 2 * (1 + 10 + 45) / 1024
    assert res["p"] == pytest.approx(2 * 56 / 1024)
    assert mcnemar(a, a)["p"] == 1.0
    with pytest.raises(ValueError):
        mcnemar(a, b[:-1])


@pytest.mark.parametrize("pet,identity", [("lora", True), ("adapter", True), ("gated-prefix", True),
                                          ("gated-prompt", True), ("vpt", False), ("prefix", False), ("coop", False)])
def test_a_pet_that_attaches_as_the_identity_is_evaluated_as_the_pretrained_model(pet, identity, seq_file, tmp_path):
    """The runner takes the freshly attached model's evaluation from the pretrained one exactly when the PET says
    it adds an exact zero (``PET.is_identity``); here both are evaluated in full on the pretrained tiny CLIP and
    must agree in every measure, items included, and a trained PET is no longer the identity."""
    from suite.engine.runner import Runner

    runner = Runner(run_config(seq_file(), tmp_path, pet=pet, model="embedded:tiny-clip",
                               training={"iterations": 2}))
    assert runner.pet.is_identity() is identity
    if identity:
        assert runner.evaluate(-1, None) == runner.reference[0]
        runner.learn_task(0)
        assert not runner.pet.is_identity()


def test_the_pretrained_evaluation_is_shared_only_where_nothing_it_depends_on_differs(seq_file, tmp_path, monkeypatch):
    """A sweep worker evaluates the pretrained model once per (sequence, data, weights, seed, evaluation settings):
    a run served from that cache has the reference a fresh evaluation gives; another seed is evaluated anew."""
    from suite.engine import runner as runner_module

    monkeypatch.setenv("CLSUITE_CACHE", "off")  # the in-process cache alone (the disk's: the test below)
    seq = seq_file()
    cfg = run_config(seq, tmp_path, pet="vpt", model="embedded:tiny-clip", training={"iterations": 0})
    first = runner_module.Runner(cfg).reference[0]
    cached = runner_module.Runner(dataclasses.replace(cfg, pet="lora")).reference[0]
    runner_module._PRETRAINED_EVALUATIONS.clear()
    fresh = runner_module.Runner(dataclasses.replace(cfg, pet="lora")).reference[0]
    assert first == cached == fresh
    cached["accuracy"][0] = -1.0  # callers get copies: changing one changes no later run's reference
    assert runner_module.Runner(cfg).reference[0] == fresh
    before = len(runner_module._PRETRAINED_EVALUATIONS)
    runner_module.Runner(dataclasses.replace(cfg, seed=cfg.seed + 1))
    assert len(runner_module._PRETRAINED_EVALUATIONS) == before + 1


def test_a_lone_run_reads_the_pretrained_evaluation_an_earlier_process_stored(seq_file, tmp_path, monkeypatch):
    """The reference on disk (``suite.engine.reference_cache``): a run that reads it, without evaluating the
    pretrained model, writes the record a run that evaluates it writes (timings aside); a damaged file, or a
    changed class prompt, is evaluated anew."""
    import json

    from suite.engine import runner as runner_module

    monkeypatch.setenv("CLSUITE_CACHE", str(tmp_path / "cache"))
    seq = seq_file()
    cfg = run_config(seq, tmp_path / "a", pet="lora", training={"iterations": 2})
    runner_module._PRETRAINED_EVALUATIONS.clear()
    computed = run(cfg)
    (stored,) = (tmp_path / "cache" / "reference").glob("*.json")

    evaluated = []
    own = runner_module.Runner.evaluate
    monkeypatch.setattr(runner_module.Runner, "evaluate", lambda self, t, zs: evaluated.append(t) or own(self, t, zs))
    runner_module._PRETRAINED_EVALUATIONS.clear()  # as in a new process
    read = run(dataclasses.replace(cfg, out=str(tmp_path / "b"), run_dir=str(tmp_path / "b")))
    assert -1 not in evaluated

    def without_timings(rec):
        rec = json.loads(json.dumps(rec))
        for part in [rec["efficiency"], rec["zero_shot_step"], *rec["steps"]]:
            for k in [k for k in part if k.endswith("_time_s") or k == "peak_memory_mb"]:
                del part[k]
        return {k: v for k, v in rec.items() if k not in ("run_id", "created", "command")}

    assert without_timings(read) == without_timings(computed)

    stored.write_text("{not json")
    runner_module._PRETRAINED_EVALUATIONS.clear()
    evaluated.clear()
    run(dataclasses.replace(cfg, out=str(tmp_path / "c"), run_dir=str(tmp_path / "c")))
    assert -1 in evaluated and json.loads(stored.read_text())["format"] == 1  # evaluated anew and replaced

    import yaml

    spec = yaml.safe_load(open(seq).read())
    spec["tasks"][0]["templates"] = ["a drawing of a {}."]
    open(seq, "w").write(yaml.safe_dump(spec))
    runner_module._PRETRAINED_EVALUATIONS.clear()
    evaluated.clear()
    run(dataclasses.replace(cfg, out=str(tmp_path / "d"), run_dir=str(tmp_path / "d")))
    assert -1 in evaluated  # another class prompt: another key
