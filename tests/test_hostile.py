"""Hostile, malformed and careless input, as a user or a submitter would give it: every case is refused with the
suite's own error (one line naming the file or flag and the field), never a traceback, never silently accepted.
Property-based fuzzing of the sequence, record and submission validators closes the file."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from conftest import make_plugin, small_sequence
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from records_factory import reference

from suite.cli import main
from suite.config.sequences import SequenceError, parse_sequence
from suite.errors import SuiteError
from suite.experiments.sweep import PlanError, load_plan
from suite.leaderboard.boards import check_record, load_boards
from suite.leaderboard.submit import SUBMISSION_SCHEMA, validate_submission
from suite.results.records import validate_record


def _one_line_error(capsys, rc: int) -> str:
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("clsuite: error: ") and "\n" not in err and "Traceback" not in err, err
    assert len(err) <= 320
    return err


# ----------------------------------------------------------------------------------------- sequences
def _seq() -> dict:
    return small_sequence()


def _set(path: str, value):
    def mutate(d: dict) -> dict:
        d = copy.deepcopy(d)
        keys = path.split(".")
        cur = d
        for k in keys[:-1]:
            cur = cur[int(k)] if isinstance(cur, list) else cur[k]
        last = keys[-1]
        if value is _DELETE:
            del cur[last]
        elif isinstance(cur, list):
            cur[int(last)] = value
        else:
            cur[last] = value
        return d
    return mutate


_DELETE = object()

SEQUENCE_CASES = [
    ("name", _DELETE, "name"), ("name", "", "name"), ("name", "Bad Name", "name"), ("name", "x" * 300, "name"),
    ("name", 5, "name"), ("version", _DELETE, "version"), ("version", 0, "version"), ("version", "two", "version"),
    ("track", "online", "track"), ("track", _DELETE, "track"), ("protocol", "oracle", "protocol"),
    ("image_size", 4, "image_size"), ("image_size", 100000, "image_size"), ("image_size", "big", "image_size"),
    ("seed", -1, "seed"), ("training", "fast", "training"), ("training.lr", 0, "training.lr"),
    ("training.lr", -1, "training.lr"), ("training.lr", 1e9, "training.lr"), ("training.iterations", -5, "iterations"),
    ("training.iterations", 1e12, "iterations"), ("training.optimizer", "adam", "optimizer"),
    ("training.schedule", "step", "schedule"), ("training.learning_rate", 0.1, "learning_rate"),
    ("training.batch_size", 0, "batch_size"), ("pet_training", {"lora": {"lr": -1}}, "pet_training.lora.lr"),
    ("pet_training", {"lora": {"rate": 1}}, "pet_training.lora"), ("pet_training", {"Bad Name": {}}, "pet_training"),
    ("tasks", [], "tasks"), ("tasks", "all", "tasks"), ("tasks.0.name", "../../etc", "tasks.0.name"),
    ("tasks.0.name", "", "tasks.0.name"), ("tasks.0.name", "t1", "duplicate"), ("tasks.0.source", {}, "adapter"),
    ("tasks.0.source.adapter", "ftp", "adapter"), ("tasks.0.source.evil", 1, "evil"), ("tasks.0.classes", [], "classes"),
    ("tasks.0.classes", ["a", "a"], "duplicate"), ("tasks.0.classes", [""], "classes"),
    ("tasks.0.classes", _DELETE, "classes"), ("tasks.0.templates", ["no placeholder"], "templates"),
    ("tasks.0.templates", "nonexistent-set", "template"), ("tasks.0.split.train_per_class", -1, "train_per_class"),
    ("tasks.0.split.train_per_class", 10**12, "train_per_class"), ("tasks.0.split.test_per_class", 0, "test_per_class"),
    ("tasks.0.split.rule", "random", "rule"), ("tasks.0.split.rule", _DELETE, "rule"),
    ("tasks.0.split.manifest_sha256", "abc", "manifest_sha256"), ("tasks.0.split.extra", 1, "extra"),
    ("tasks.0.candidates", [["a", "b"]], "candidates"), ("control_sets.0.candidates", [["red star"]], "candidates"),
    ("control_sets.0.candidates", [["blue heart", "x"]], "red star"),
    ("control_sets.0.name", "t0", "duplicate"), ("synonyms", [["solo"]], "synonyms"), ("unknown_top", 1, "unknown_top"),
    ("templates_file", "/nonexistent/templates.yaml", "templates_file"),
    ("tasks.0.source.stream", "yes", "stream"), ("tasks.0.source.shuffle", -3, "shuffle"),
    ("tasks.0.source.shuffle", 10**9, "shuffle"), ("tasks.0.source.folders_file", 7, "folders_file"),
    ("tasks.0.source.split_file", ["a"], "split_file"),
    ("seed", 2**64, "seed"), ("tasks.0.split.seed", 2**70, "seed"),
]


@pytest.mark.parametrize("path, value, field", SEQUENCE_CASES, ids=[f"seq-{i}" for i in range(len(SEQUENCE_CASES))])
def test_sequence_file_refused_with_its_field(tmp_path, capsys, path, value, field):
    data = _set(path, value)(_seq())
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(data))
    with pytest.raises(SequenceError) as err:
        parse_sequence(yaml.safe_load(f.read_text()), f)
    assert field in str(err.value) and str(f) in str(err.value) and "\n" not in str(err.value)
    err_line = _one_line_error(capsys, main(["tasks", "show", str(f)]))
    assert str(f) in err_line


RAW_SEQUENCE_FILES = [
    ("not: [valid", "not valid YAML"), ("- just\n- a list\n", "mapping"), ("", "mapping"), ("42", "mapping"),
    ("\t\tbad indent: [", "not valid YAML"), ("a: &a [1]\n" + "".join(f"k{i}: *a\n" for i in range(300)), "aliases"),
    ("\0binary", "binary"), ("name: a\nversion: 1\nname: b\n", "'name' is given twice"),
    ("seed: " + "1" * 5000 + "\n", "4300 digits"), ("[" * 100_000, "nested more than 64 levels"),
]


@pytest.mark.parametrize("text, says", RAW_SEQUENCE_FILES, ids=[f"raw-{i}" for i in range(len(RAW_SEQUENCE_FILES))])
def test_unreadable_sequence_files(tmp_path, capsys, text, says):
    f = tmp_path / "raw.yaml"
    f.write_text(text)
    assert says in _one_line_error(capsys, main(["tasks", "show", str(f)]))


def test_alias_bomb_is_refused_fast_and_short(tmp_path, capsys):
    import time

    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, cur in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    lines.append("name: *i")
    f = tmp_path / "bomb.yaml"
    f.write_text("\n".join(lines) + "\n")
    t = time.perf_counter()
    err = _one_line_error(capsys, main(["tasks", "show", str(f)]))
    assert time.perf_counter() - t < 1.0 and len(err) < 300 and "aliases are expanded" in err


# ---------------------------------------------------------------------------------------- run config
CONFIG_CASES = [
    ({"training": {"learning_rate": 0.1}}, "training.learning_rate"), ({"training": {"optimizer": "adam"}}, "optimizer"),
    ({"training": {"lr": 0}}, "training.lr"), ({"training": {"lr": "fast"}}, "training.lr"),
    ({"training": {"iterations": -1}}, "iterations"), ({"training": {"epochs": -1}}, "epochs"),
    ({"training": {"batch_size": 0}}, "batch_size"), ({"training": {"warmup": -3}}, "warmup"),
    ({"training": {"schedule": "linear"}}, "schedule"), ({"training": ["lr", 1]}, "training"),
    ({"training": {"weight_decay": -1}}, "weight_decay"), ({"trainig": {}}, "trainig"), ({"seed": -1}, "seed"),
    ({"seed": "zero"}, "seed"), ({"max_eval": 0}, "max_eval"), ({"max_eval": -5}, "max_eval"),
    ({"eval_batch_size": 0}, "eval_batch_size"), ({"device": "bogus"}, "--device"), ({"device": "tpu"}, "--device"),
    ({"device": "cuda:99"}, "--device"), ({"method": "nope"}, "unknown method"), ({"pet": "nope"}, "unknown PET"),
    ({"pet_options": {"rank": 0}}, "rank"), ({"pet_options": {"towers": "ears"}}, "towers"),
    ({"pet_options": {"layers": "0-999"}}, "layers"), ({"pet_options": {"bogus": 1}}, "bogus"),
    ({"method": "pegp", "method_options": {"threshold": 2}}, "threshold"),
    ({"method": "pegp", "method_options": {"basis": "magic"}}, "basis"),
    ({"method": "pegp", "method_options": {"nonsense": 1}}, "nonsense"),
    ({"sequence": "no-such-sequence"}, "unknown sequence"), ({"model": "nokind:thing"}, "unknown model kind"),
    ({"model": "embedded:no-such-model"}, "unknown embedded model"),
    ({"seed": 2**64}, "seed"), ({"eval_batch_size": 10**30}, "eval_batch_size"), ({"workers": 2**70}, "workers"),
    ({"training": {"lr": 10**400}}, "training.lr"), ({"training": {"warmup": 2**64}}, "warmup"),
    ({"pet_options": {"layers": "5-2"}}, "backwards"), ({"pet_options": {"rank": 2**64}}, "rank"),
]


@pytest.mark.parametrize("cfg, says", CONFIG_CASES, ids=[f"cfg-{i}" for i in range(len(CONFIG_CASES))])
def test_run_config_refused_with_its_field(tmp_path, capsys, seq_file, cfg, says):
    data = {"sequence": seq_file(), "model": "embedded:micro-clip@random", "pet": "lora", "method": "seq",
            "out": str(tmp_path / "r"), "run_dir": str(tmp_path / "runs"), **cfg}
    f = tmp_path / "run.yaml"
    f.write_text(yaml.safe_dump(data))
    err = _one_line_error(capsys, main(["run", "--config", str(f), "--quiet"]))
    assert says in err, err
    assert not list((tmp_path / "r").glob("*.json")) if (tmp_path / "r").exists() else True


FLAG_CASES = [
    (["run", "--sequence", "{seq}", "--pet-options", "rank"], "--pet-options"),
    (["run", "--sequence", "{seq}", "--method-options", "threshold=[0.9"], "--method-options"),
    (["run", "--sequence", "{seq}", "--iterations", "-1"], "iterations"),
    (["run", "--sequence", "{seq}", "--lr", "0"], "lr"), (["run", "--sequence", "{seq}", "--lr", "nan"], "lr"),
    (["run", "--sequence", "{seq}", "--batch-size", "0"], "batch_size"),
    (["run", "--sequence", "{seq}", "--max-eval", "0"], "max_eval"),
    (["run", "--sequence", "{seq}", "--seed", "-3"], "seed"),
    (["run", "--sequence", "{seq}", "--device", "cuda"], "--device"),
    (["run", "--sequence", "{seq}", "--device", "gpu0"], "--device"),
    (["run", "--config", "/nonexistent/run.yaml"], "no such config file"),
    (["sweep", "--plan", "/nonexistent/plan.yaml"], "no such plan file"),
    (["sweep", "--plan", "{plan}", "--sequence", "x"], "plan.yaml: sequence 'x' is not in the plan"),
    (["metrics", "/nonexistent.json"], "nonexistent"), (["metrics", "{bad_matrix}"], "matrix"),
    (["compare", "--results", "/nonexistent-folder"], "no such record file or folder"),
    (["compare", "{record}", "--pair", "nocolon"], "--pair"),
    (["compare", "{record}", "--metrics", "happiness"], "happiness"),
    (["plot", "{record}", "--metric", "task:nope", "--out", "{tmp}/f.svg"], "no task"),
    (["plot", "{record}", "--out", "{tmp}/f.bmp"], "figure format"),
    (["pretrain", "--steps", "-1", "--out", "{tmp}/w"], "--steps"),
    (["pretrain", "--recipe", "nope"], "recipe"),
    (["demo", "--out", "results"], "--out"),
    (["calibrate", "{seq}", "--from", "{tmp}", "--pets", "lora", "--seeds", "0"], "no budget record"),
    (["leaderboard", "build", "--out", "."], "refus"),
    (["tasks", "show", "no-such-sequence"], "unknown sequence"),
    (["tasks", "pin", "{seq}"], "embedded"),
    (["run", "--sequence", "{seq}", "--model", "embedded:micro-clip@{tmp}/bad.safetensors"], "not a weights file"),
    (["run", "--sequence", "{seq}", "--model", "embedded:micro-clip@{tmp}/bad.pt"], "not a weights file"),
    (["run", "--sequence", "{seq}", "--model", "embedded:micro-clip@{tmp}/missing.pt"], "not found"),
    (["run", "--sequence", "{seq}", "--out", "{tmp}/bad.pt"], "is a file, not a folder"),
    (["accept", "{tmp}/bad.pt"], "refused"),
    # files that are missing, binary, not UTF-8 or folders, through every verb that reads one (one reader)
    (["submit", "{tmp}/missing.json", "--out", "{tmp}/s.json"], "no such record"),
    (["submit", "{tmp}", "--out", "{tmp}/s.json"], "a folder, not a record"),
    (["submit", "{bin}", "--out", "{tmp}/s.json"], "binary"),
    (["metrics", "{bin}"], "binary"), (["compare", "{bin}"], "binary"), (["summarize", "{bin}"], "binary"),
    (["plot", "{bin}", "--out", "{tmp}/f.svg"], "binary"), (["reproduce", "{bin}"], "binary"),
    (["accept", "{bin}"], "binary"), (["tasks", "show", "{latin}"], "not UTF-8"),
    (["run", "--config", "{bin}"], "binary"), (["run", "--sequence", "{latin}"], "not UTF-8"),
    (["sweep", "--plan", "{bin}"], "binary"), (["pretrain", "--recipe", "{bin}"], "binary"),
    (["tasks", "pin", "{latin}"], "not UTF-8"),
    # sizes bounded by the model (before any parameter is allocated) or by a sane maximum
    (["run", "--sequence", "{seq}", "--pet", "lora", "--pet-options", "rank=100000"], "exceeds the width"),
    (["run", "--sequence", "{seq}", "--pet", "adapter", "--pet-options", "bottleneck=100000"], "exceeds the width"),
    (["run", "--sequence", "{seq}", "--pet", "prefix", "--pet-options", "length=100000"], "length"),
    (["run", "--sequence", "{seq}", "--pet", "vpt", "--pet-options", "length=100000"], "length"),
    (["run", "--sequence", "{seq}", "--pet", "coop", "--pet-options", "length=100000"], "length"),
    (["run", "--sequence", "{seq}", "--pet", "gated-prompt", "--pet-options", "length=0"], "length"),
    (["run", "--sequence", "{seq}", "--pet", "adapter", "--pet-options", "bottleneck=2.5"], "bottleneck"),
    (["run", "--sequence", "{seq}", "--pet", "lora", "--pet-options", "alpha=.nan"], "alpha"),
    # counts and lists on the command line: argparse's refusals are one line too
    (["sweep", "--sequence", "{seq}", "--jobs", "0"], "--jobs"),
    (["sweep", "--sequence", "{seq}", "--jobs", "two"], "--jobs"),
    (["calibrate", "{seq}", "--jobs", "-1"], "--jobs"),
    (["sweep", "--sequence", "{seq}", "--seeds", "0,x"], "--seeds"),
    (["sweep", "--sequence", "{seq}", "--seeds", "1,1"], "--seeds"),
    (["run", "--sequence", "{seq}", "--iterations", "many"], "--iterations"),
    (["run", "--no-such-flag"], "unrecognized"), (["no-such-verb"], "invalid choice"),
    # the SLURM executor's options, refused before anything is submitted
    (["sweep", "--sequence", "{seq}", "--executor", "slurm", "--slurm-time", "soon"], "--slurm-time"),
    (["sweep", "--sequence", "{seq}", "--executor", "slurm", "--gpus-per-run", "-1"], "gpus_per_run"),
    (["sweep", "--sequence", "{seq}", "--executor", "slurm", "--slurm-extra", "account"], "--slurm-extra"),
    (["sweep", "--sequence", "{seq}", "--executor", "pbs"], "--executor"),
    (["sweep", "stats", "--sequence", "{seq}"], "invalid choice"),
    # integers beyond 64 bits where a seed, count or size is expected (suite.config.bounds), and integers too large
    # for a float: refused in one line, never an OverflowError inside torch
    (["run", "--sequence", "{seq}", "--seed", "99999999999999999999999"], "seed"),
    (["run", "--sequence", "{seq}", "--iterations", "99999999999999999999999"], "iterations"),
    (["run", "--sequence", "{seq}", "--batch-size", "99999999999999999999999"], "batch_size"),
    (["run", "--sequence", "{seq}", "--max-eval", "99999999999999999999999"], "max_eval"),
    (["sweep", "--sequence", "{seq}", "--seeds", "0,99999999999999999999999"], "--seeds"),
    (["calibrate", "{seq}", "--seeds", "99999999999999999999999"], "--seeds"),
    (["run", "--sequence", "{seq}", "--pet", "coop", "--pet-options", "jacobian_rows=99999999999999999999999"],
     "jacobian_rows"),
    (["run", "--sequence", "{seq}", "--pet", "lora", "--pet-options", "alpha=1" + "0" * 400], "alpha"),
    (["run", "--sequence", "{seq}", "--method", "ewc", "--method-options", "fisher_batches=99999999999999999999999"],
     "fisher_batches"),
    (["run", "--sequence", "{seq}", "--method", "lwf", "--method-options", "weight=1" + "0" * 400], "weight"),
    (["run", "--sequence", "{seq}", "--pet-options", "rank=1" + "0" * 5000], "4300 digits"),
    # JSON and YAML nested 100,000 deep, through every verb that reads one (suite.paths.parse_json, parse_yaml)
    (["metrics", "{deep}"], "nested more than 64 levels"), (["compare", "{deep}"], "nested more than 64 levels"),
    (["summarize", "{deep}"], "nested more than 64 levels"), (["plot", "{deep}", "--out", "{tmp}/f.svg"], "nested"),
    (["submit", "{deep}", "--out", "{tmp}/s.json"], "nested more than 64 levels"),
    (["reproduce", "{deep}"], "nested"), (["accept", "{deep}"], "nested"),
    (["metrics", "{record}", "--zero-shot", "[" * 100_000], "nested more than 64 levels"),
    (["run", "--config", "{deep_yaml}"], "nested more than 64 levels"),
    (["tasks", "show", "{deep_yaml}"], "nested more than 64 levels"),
    (["run", "--sequence", "{seq}", "--pet-options", "rank=" + "[" * 100_000], "nested more than 64 levels"),
    # a PET layer range written backwards (or empty) selects no block: refused, not a run that trains nothing
    (["run", "--sequence", "{seq}", "--pet-options", "layers=3-1"], "backwards"),
    (["run", "--sequence", "{seq}", "--pet", "adapter", "--pet-options", "layers=3-2"], "backwards"),
    (["run", "--sequence", "{seq}", "--pet", "prefix", "--pet-options", "layers=first:0"], "selects no block"),
    # an option given twice: which value was meant cannot be known
    (["run", "--sequence", "{seq}", "--pet-options", "rank=4", "--pet-options", "rank=8"], "rank is given twice"),
    (["run", "--sequence", "{seq}", "--pet-options", "rank=4,towers=vision,rank=8"], "rank is given twice"),
    (["run", "--sequence", "{seq}", "--method", "pegp", "--method-options", "threshold=0.9",
      "--method-options", "threshold=0.8"], "threshold is given twice"),
    (["sweep", "--sequence", "{seq}", "--executor", "slurm", "--slurm-extra", "account=a", "--slurm-extra", "account=b"],
     "account is given twice"),
    (["calibrate", "{seq}", "--grid", "lr=0.1;lr=0.2"], "lr is given twice"),
    (["run", "--config", "{dup_yaml}"], "'rank' is given twice"),
    # a PET that cannot learn on the sequence's track: refused before anything is built (CoOp on retrieval failed
    # at its first step with autograd's "element 0 of tensors does not require grad")
    (["run", "--sequence", "world-cross-modal", "--pet", "coop"], "PET coop learns on the class-incremental and "
     "domain-incremental track(s), not cross-modal (world-cross-modal): its context replaces the words of class prompts"),
    (["sweep", "--sequence", "world-cross-modal", "--methods", "seq", "--pets", "lora,coop"], "PET coop learns on"),
]


@pytest.mark.parametrize("argv, says", FLAG_CASES, ids=[f"flag-{i}" for i in range(len(FLAG_CASES))])
def test_command_line_refusals(tmp_path, capsys, seq_file, argv, says):
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({"groups": [{"sequences": ["world-class-incremental"], "methods": ["zeroshot"]}]}))
    bad = tmp_path / "bad.json"
    bad.write_text('[[0.5, 2.0]]')
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    (tmp_path / "binary.json").write_bytes(bytes(range(256)))
    (tmp_path / "latin.yaml").write_bytes("name: caf\u00e9\n".encode("latin-1"))
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (tmp_path / "deep.yaml").write_text("pet_options: " + "[" * 100_000 + "]" * 100_000 + "\n")
    (tmp_path / "dup.yaml").write_text(f"sequence: {seq_file()}\npet_options: {{rank: 4, rank: 8}}\n")
    record = tmp_path / "rec.json"
    record.write_text(json.dumps(reference()))
    subs = {"{seq}": seq_file(), "{plan}": str(plan), "{bad_matrix}": str(bad), "{record}": str(record),
            "{bin}": str(tmp_path / "binary.json"), "{latin}": str(tmp_path / "latin.yaml"),
            "{deep}": str(tmp_path / "deep.json"), "{deep_yaml}": str(tmp_path / "deep.yaml"),
            "{dup_yaml}": str(tmp_path / "dup.yaml"), "{tmp}": str(tmp_path)}
    args = [a for a in argv]
    for i, a in enumerate(args):
        for k, v in subs.items():
            a = a.replace(k, v)
        args[i] = a
    err = _one_line_error(capsys, main(args))
    assert says in err, err


# ------------------------------------------------------------------------------------------ records
def _rec() -> dict:
    return copy.deepcopy(reference())


def _rmut(fn):
    def apply():
        r = _rec()
        fn(r)
        return r
    return apply


RECORD_CASES = [
    (_rmut(lambda r: r.update(matrix=[[0.5]])), "matrix"),
    (_rmut(lambda r: r["matrix"].pop()), "matrix"),
    (_rmut(lambda r: r["matrix"][0].__setitem__(0, 1.5)), "matrix"),
    (_rmut(lambda r: r["matrix"][0].__setitem__(0, -0.1)), "matrix"),
    (_rmut(lambda r: r["matrix"][0].__setitem__(0, "high")), "matrix"),
    (_rmut(lambda r: r["matrix"][0].__setitem__(0, None)), "matrix"),
    (_rmut(lambda r: r["aggregates"].__setitem__("last", 0.99)), "aggregates.last"),
    (_rmut(lambda r: r["aggregates"].__setitem__("made_up", 0.5)), "aggregates.made_up"),
    (_rmut(lambda r: r["sequence"].__setitem__("version", 99)), "sequence.version"),
    (_rmut(lambda r: r["sequence"].__setitem__("name", "not-a-sequence")), "sequence.name"),
    (_rmut(lambda r: r["sequence"].__setitem__("tasks", ["a", "b"])), "matrix"),
    (_rmut(lambda r: r["sequence"]["manifests"].__setitem__(r["sequence"]["tasks"][0], "0" * 64)), "manifests"),
    (_rmut(lambda r: r.update(status="partial")), "matrix"),
    (_rmut(lambda r: r.pop("matrix")), "matrix"),
    (_rmut(lambda r: r.pop("sequence")), "sequence"),
    (_rmut(lambda r: r.pop("schema")), "schema"),
    (_rmut(lambda r: r.update(schema="someone-else/v9")), "schema"),
    (_rmut(lambda r: r.update(seed="zero")), "seed"),
    (_rmut(lambda r: r.update(seed=-1)), "seed"),
    (_rmut(lambda r: r["method"].update(name="")), "method"),
    (_rmut(lambda r: r["method"].pop("name")), "method"),
    (_rmut(lambda r: r.update(zero_shot="none")), "zero_shot"),
    (_rmut(lambda r: r.update(steps="many")), "steps"),
    (_rmut(lambda r: r.update(matrix="[[1]]")), "matrix"),
    (_rmut(lambda r: r.update(aggregates=[])), "aggregates"),
    (_rmut(lambda r: r.update(model="tiny")), "model"),
]


@pytest.mark.parametrize("make, field", RECORD_CASES, ids=[f"rec-{i}" for i in range(len(RECORD_CASES))])
def test_fabricated_records_fail_validation_naming_the_field(make, field):
    with pytest.raises(SuiteError) as err:
        check_record(make(), "rec.json", load_boards())
    assert field in str(err.value) and "\n" not in str(err.value), str(err.value)


SUBMISSION_CASES = [
    ("not json at all", "not valid JSON"), ("[]", "schema"), ('{"schema": "x"}', "schema"),
    (json.dumps({"schema": SUBMISSION_SCHEMA, "board": "class-incremental", "records": []}), "no records"),
    (json.dumps({"schema": SUBMISSION_SCHEMA, "board": "nope", "records": ["x"]}), "board"),
    (json.dumps({"schema": SUBMISSION_SCHEMA, "board": {"a": 1}, "records": ["x"]}), "board"),
    (json.dumps({"schema": SUBMISSION_SCHEMA, "board": "class-incremental", "records": ["x"]}), "records.0"),
]


@pytest.mark.parametrize("text, says", SUBMISSION_CASES, ids=[f"sub-{i}" for i in range(len(SUBMISSION_CASES))])
def test_bad_submissions_are_refused(tmp_path, text, says):
    f = tmp_path / "sub.json"
    f.write_text(text)
    problems = validate_submission(f)
    assert problems and any(says in p for p in problems), problems


@pytest.mark.parametrize("content, says", [(bytes(range(256)), "binary"), (b"\xff\xfe{}", "not UTF-8"),
                                           (None, "no such submission"),
                                           (b"[" * 100_000 + b"]" * 100_000, "nested more than 64 levels"),
                                           (b'{"records": [' + b"[" * 100_000, "nested more than 64 levels")])
def test_validate_refuses_unreadable_submissions_in_one_line(tmp_path, capsys, content, says):
    """``validate`` answers a refusal (exit 1, one ``rejected:`` line), never a traceback, for a binary, non-UTF-8
    or missing submission file."""
    f = tmp_path / "sub.json"
    if content is not None:
        f.write_bytes(content)
    assert main(["validate", str(f)]) == 1
    out = capsys.readouterr()
    assert out.out.startswith("rejected: ") and out.out.count("\n") == 1 and says in out.out, out
    assert "Traceback" not in out.err


PLAN_CASES = [
    ({}, "groups"), ({"groups": []}, "groups"), ({"groups": [{"methods": ["seq"]}]}, "sequences"),
    ({"groups": [{"sequences": ["a"]}]}, "methods"), ({"groups": "all"}, "groups"),
    ({"groups": [{"sequences": ["a"], "methods": ["seq"], "seeds": [-1]}]}, "seeds"),
    ({"groups": [{"sequences": ["a"], "methods": ["seq"], "bogus": 1}]}, "bogus"),
    ({"seeds": "0,1", "groups": [{"sequences": ["a"], "methods": ["seq"]}]}, "seeds"),
    ({"executor": {"queue": "gpu"}, "groups": [{"sequences": ["a"], "methods": ["seq"]}]}, "queue"),
    ({"executor": {"gpus_per_run": -2}, "groups": [{"sequences": ["a"], "methods": ["seq"]}]}, "gpus_per_run"),
    ({"seeds": [2**64], "groups": [{"sequences": ["a"], "methods": ["seq"]}]}, "seeds"),
    ({"groups": [{"sequences": ["a"], "methods": ["seq"], "seeds": [0, 2**70]}]}, "seeds"),
]


@pytest.mark.parametrize("plan, says", PLAN_CASES, ids=[f"plan-{i}" for i in range(len(PLAN_CASES))])
def test_bad_plans_are_refused(tmp_path, plan, says):
    f = tmp_path / "plan.yaml"
    f.write_text(yaml.safe_dump(plan))
    with pytest.raises(PlanError) as err:
        load_plan(f)
    assert says in str(err.value) and str(f) in str(err.value)


def test_a_missing_field_is_named_itself_in_every_kind_of_file(tmp_path):
    """Plans, records and boards name the field to add, not the object that lacks it (``plan.yaml:
    groups.0.methods: …``, not ``plan.yaml: groups.0: …``), as sequences do: one schema helper for all of them."""
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({"groups": [{"sequences": ["a"]}]}))
    with pytest.raises(PlanError, match=r"plan\.yaml: groups\.0\.methods: 'methods' is a required property"):
        load_plan(plan)
    rec = _rec()
    rec["method"].pop("name")
    with pytest.raises(SuiteError, match=r"^rec\.json: method\.name: "):
        validate_record(rec, "rec.json")
    board = tmp_path / "boards" / "b.yaml"
    board.parent.mkdir()
    board.write_text(yaml.safe_dump({"title": "b"}))
    with pytest.raises(SuiteError, match=r"b\.yaml: ([a-z_]+): '\1' is a required property"):
        load_boards(board.parent)


def test_the_corpus_is_at_least_150_cases():
    n = (len(SEQUENCE_CASES) + len(RAW_SEQUENCE_FILES) + 1 + len(CONFIG_CASES) + len(FLAG_CASES) + len(RECORD_CASES)
         + len(SUBMISSION_CASES) + len(PLAN_CASES))
    assert n >= 150, n


# ------------------------------------------------------------------------------------------ fuzzing
JSONISH = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True)
                       | st.text(max_size=12),
                       lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids, max_size=4),
                       max_leaves=20)
FUZZ = settings(max_examples=60, deadline=None,  # timing checks would fail on a loaded CI machine, not a bug
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(data=JSONISH)
def test_fuzz_sequence_validator_raises_only_its_error(data):
    try:
        parse_sequence(data, Path("fuzz.yaml"))
    except SequenceError:
        pass


@FUZZ
@given(key=st.sampled_from(["matrix", "sequence", "aggregates", "zero_shot", "steps", "method", "pet", "seed",
                            "training", "config", "status", "summary", "efficiency", "model"]), value=JSONISH)
def test_fuzz_record_validator_raises_only_its_error(key, value):
    rec = _rec()
    rec[key] = value
    try:
        check_record(rec, "fuzz.json", load_boards())
    except SuiteError:
        pass


@FUZZ
@given(data=JSONISH)
@example(data={"\n": float("inf")})  # found by this test once: the key's line break reached the message
def test_fuzz_submission_validator_returns_reasons(tmp_path_factory, data):
    f = tmp_path_factory.mktemp("sub") / "s.json"
    f.write_text(json.dumps({"schema": SUBMISSION_SCHEMA, "board": "class-incremental", "records": [data]}))
    problems = validate_submission(f)
    assert problems and all(isinstance(p, str) and "\n" not in p for p in problems)



def test_a_key_with_a_line_break_is_named_escaped_in_one_line(tmp_path):
    """Field names come from the input: one holding a line break is shown escaped, so each refusal stays one line
    and still names the field."""
    from suite.config.train import TrainConfig

    sub = tmp_path / "s.json"
    sub.write_text(json.dumps({"schema": SUBMISSION_SCHEMA, "board": "class-incremental",
                               "records": [{"ok": 1.0, "a\nb": float("inf")}]}))
    assert validate_submission(sub) == [f"{sub}: records.0: a\\nb: non-finite number inf"]
    with pytest.raises(SuiteError) as err:
        TrainConfig.from_dict({"lr\u2028": 0.1}, "run.yaml")
    assert str(err.value).splitlines() == [str(err.value)] and "training.lr\\u2028: unknown setting" in str(err.value)
    rec = reference()
    rec["aggregates"]["x\ny"] = 0.5
    with pytest.raises(SuiteError) as err:
        check_record(rec, "r.json", load_boards())
    assert str(err.value).splitlines() == [str(err.value)] and "x\\ny" in str(err.value)


def test_a_corrupt_image_is_named_in_one_line(tmp_path, capsys):
    from PIL import Image

    for split in ("train", "test"):
        for c in ("a", "b"):
            d = tmp_path / "img" / split / c
            d.mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(d / "ok.png")
    (tmp_path / "img" / "test" / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    seq = tmp_path / "seq.yaml"
    seq.write_text(yaml.safe_dump({"name": "files", "version": 1, "track": "class-incremental", "protocol": "task-id",
                                   "tasks": [{"name": "t", "source": {"adapter": "imagefolder", "root": str(tmp_path / "img")},
                                              "classes": ["a", "b"], "split": {"rule": "official"}}],
                                   "training": {"iterations": 1, "batch_size": 2}}))
    err = _one_line_error(capsys, main(["run", "--sequence", str(seq), "--model", "embedded:micro-clip@random",
                                        "--out", str(tmp_path / "r"), "--run-dir", str(tmp_path / "runs"), "--quiet"]))
    assert "broken.png" in err and "cannot decode" in err


@pytest.mark.parametrize("content, says", [
    ("n01440764 tench\n", ":1: expected '<folder><TAB><class name>'"),
    ("# header\nn01440764\ttench\textra\n", ":2: expected"),
    ("n01440764\t \n", ":1: expected"),
])
def test_a_bad_class_names_file_is_named_with_its_line(tmp_path, capsys, content, says):
    from conftest import imagefolder_sequence

    seq = yaml.safe_load(open(imagefolder_sequence(tmp_path)).read())
    (tmp_path / "names.tsv").write_text(content)
    seq["tasks"][0]["source"]["folders_file"] = "names.tsv"
    (tmp_path / "files.yaml").write_text(yaml.safe_dump(seq))
    line = _one_line_error(capsys, main(["tasks", "prepare", str(tmp_path / "files.yaml")]))
    assert "names.tsv" in line and says in line



# ------------------------------------------------------------------------------- writes the system refuses
def _refusing_os(monkeypatch, code: int, where: str):
    """``suite.paths`` sees an ``os`` (or ``tempfile``) whose files cannot be written: ``where="write"`` fails every
    write into the file (the disk filled up while ``torch.save`` wrote the checkpoint), ``"create"`` refuses to
    create it (no permission: root ignores file modes, so the refusal is simulated)."""
    import io
    import os as real_os
    import tempfile as real_tempfile
    import types

    import suite.paths

    class Full(io.BufferedWriter):
        def write(self, data):
            raise OSError(code, real_os.strerror(code))

    if where == "write":
        fake = types.SimpleNamespace(**{k: getattr(real_os, k) for k in dir(real_os) if not k.startswith("__")})
        fake.fdopen = lambda fd, mode="wb": Full(io.FileIO(fd, mode))
        monkeypatch.setattr(suite.paths, "os", fake)
    else:
        def refuse(*args, **kwargs):
            raise OSError(code, real_os.strerror(code), kwargs.get("dir"))
        monkeypatch.setattr(suite.paths, "tempfile", types.SimpleNamespace(mkstemp=refuse, gettempdir=real_tempfile.gettempdir))


@pytest.mark.parametrize("code, where", [(28, "write"), (13, "create")], ids=["disk-full", "permission"])
def test_a_write_the_system_refuses_is_one_line_and_leaves_nothing_half_written(tmp_path, capsys, monkeypatch, seq_file,
                                                                               code, where):
    import errno

    assert code == {"write": errno.ENOSPC, "create": errno.EACCES}[where]
    _refusing_os(monkeypatch, code, where)
    err = _one_line_error(capsys, main(["run", "--sequence", seq_file(), "--model", "embedded:micro-clip@random",
                                        "--iterations", "1", "--max-eval", "8", "--out", str(tmp_path / "r"),
                                        "--run-dir", str(tmp_path / "runs"), "--quiet"]))
    assert "checkpoint.pt" in err and "cannot write" in err and real_strerror(code) in err, err
    left = [p.name for p in tmp_path.rglob("*") if p.is_file()]
    assert not [n for n in left if n.startswith(".") or n.endswith((".pt", ".json"))], left  # no record, no temporary


def real_strerror(code: int) -> str:
    import os

    return os.strerror(code)


def test_a_refused_write_keeps_the_earlier_file(tmp_path, monkeypatch):
    from suite.paths import WriteError, write_atomic

    target = tmp_path / "record.json"
    target.write_text("earlier\n")
    _refusing_os(monkeypatch, 28, "write")
    with pytest.raises(WriteError, match="No space left on device.*the earlier file is unchanged"):
        write_atomic(target, lambda fh: fh.write(b"new"))
    assert target.read_text() == "earlier\n" and [p.name for p in tmp_path.iterdir()] == ["record.json"]


# ------------------------------------------------------------------- a PET that would train nothing
def test_a_pet_that_attaches_no_parameter_is_refused_before_the_run(tmp_path, capsys, monkeypatch, seq_file):
    """Whatever its options, a PET with zero trainable parameters after attaching is refused when it is built: a run
    would train nothing and still write an ordinary-looking record. (Methods that train nothing on purpose,
    ``trains=False`` or an empty ``trainable`` on some task, are not PETs and are not concerned.)"""
    make_plugin(tmp_path, monkeypatch, "empty",
                "from suite.pet import lora\nfrom suite.pet.base import PET\nKIND = 'empty'\nCONFIG = lora.LoRAConfig\n"
                "def attach(backbone, cfg):\n    return PET(KIND, cfg, [], lambda: None)\n",
                group="clsuite.pets", module="empty_pet")
    err = _one_line_error(capsys, main(["run", "--sequence", seq_file(), "--model", "embedded:micro-clip@random",
                                        "--pet", "empty", "--pet-options", "towers=vision", "--out", str(tmp_path / "r"),
                                        "--run-dir", str(tmp_path / "runs"), "--quiet"]))
    assert "PET empty (towers=vision): attaches no trainable parameter" in err, err
    assert not (tmp_path / "r").exists() and not (tmp_path / "runs").exists()


def test_repeated_option_flags_merge_distinct_keys(tmp_path):
    from suite.cli.runs import run_config_from_args
    from suite.cli.verbs import build_parser

    args = build_parser().parse_args(["run", "--sequence", "s.yaml", "--pet-options", "rank=4",
                                      "--pet-options", "towers=vision,layers=0-1", "--method-options", "threshold=0.9"])
    cfg = run_config_from_args(args)
    assert cfg.pet_options == {"rank": 4, "towers": "vision", "layers": "0-1"}
    assert cfg.method_options == {"threshold": 0.9}


def test_nesting_is_refused_fast(tmp_path, capsys):
    import time

    f = tmp_path / "deep.json"
    f.write_text("[" * 2_000_000 + "]" * 2_000_000)
    t = time.perf_counter()
    assert "nested more than 64 levels" in _one_line_error(capsys, main(["metrics", str(f)]))
    assert time.perf_counter() - t < 2.0
