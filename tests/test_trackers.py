"""Experiment trackers (suite/engine/loggers.py): what TensorBoard, W&B (offline) and CSV were told, read back
from their own files and compared with the record; and a run with every tracker gives the record of one without."""
from __future__ import annotations

import csv
import json
import struct
from pathlib import Path

import pytest
import yaml
from conftest import MICRO, small_sequence

from suite.results.records import load_record, strip_timings

# The environment a tracker test runs in: no W&B key, no netrc, W&B's own folders inside the test's folder.
WANDB_ENV = ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL", "WANDB_PROJECT", "WANDB_DIR")


def isolate_wandb(monkeypatch, tmp: Path) -> None:
    for key in WANDB_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("NETRC", str(tmp / "no-netrc"))
    for key in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(key, str(tmp / "wandb-home" / key.lower()))


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """``clsuite run … --log tensorboard --log csv --log wandb`` of the micro model on a two-task sequence."""
    from suite.cli import main

    tmp = tmp_path_factory.mktemp("trackers")
    mp = pytest.MonkeyPatch()
    isolate_wandb(mp, tmp)
    seq = tmp / "seq.yaml"
    seq.write_text(yaml.safe_dump(small_sequence()))
    try:
        rc = main(["run", "--sequence", str(seq), "--model", MICRO, "--pet", "lora", "--method", "seq", "--quiet",
                   "--out", str(tmp / "results"), "--run-dir", str(tmp / "runs"),
                   "--log", "tensorboard", "--log", "csv", "--log", "wandb"])
    finally:
        mp.undo()
    assert rc == 0
    (path,) = (tmp / "results").glob("*.json")
    rec = load_record(path)
    return {"tmp": tmp, "seq": seq, "record": rec, "path": path, "dir": tmp / "runs" / rec["run_id"]}


def _steps_per_task(rec: dict) -> list[int]:
    return [s["iterations"] for s in rec["steps"]]


def test_tensorboard_event_files_hold_the_records_numbers(logged):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rec = logged["record"]
    ea = EventAccumulator(str(logged["dir"] / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    for t, row in enumerate(rec["matrix"]):
        for name, acc in zip(rec["sequence"]["tasks"], row):
            (event,) = [e for e in ea.Scalars(f"accuracy/{name}") if e.step == t + 1]
            assert event.value == pytest.approx(acc, abs=1e-6)  # stored as float32
    for t, step in enumerate(rec["steps"]):
        assert [e.value for e in ea.Scalars("calibration/ece") if e.step == t + 1] == [pytest.approx(step["ece"]["value"])]
        for control, value in step["retention"].items():
            assert [e.value for e in ea.Scalars(f"retention/{control}") if e.step == t + 1] == [pytest.approx(value)]
    assert {"hallucination/pope_fpr", "time/wall_time_s", "train/lr"} <= tags
    losses = ea.Scalars("train/loss")
    assert [e.step for e in losses] == list(range(sum(_steps_per_task(rec))))
    ends = [sum(_steps_per_task(rec)[: t + 1]) - 1 for t in range(len(rec["steps"]))]
    assert [next(e.value for e in losses if e.step == i) for i in ends] == \
        [pytest.approx(s["final_loss"], rel=1e-6) for s in rec["steps"]]
    for k, v in rec["aggregates"].items():
        if v is not None:
            assert ea.Scalars(f"aggregates/{k}")[-1].value == pytest.approx(v, abs=1e-6)
    texts = {tag: ea.Tensors(tag)[-1].tensor_proto.string_val[0].decode() for tag in ea.Tags()["tensors"]}
    assert rec["run_id"] in texts["run/name/text_summary"]
    assert rec["fingerprint"]["digest"] in texts["run/fingerprint/text_summary"]
    assert "| after t0 |" in texts["matrix/text_summary"]
    assert json.loads((logged["dir"] / "tensorboard" / "record.json").read_text()) == rec


def test_csv_files_hold_the_records_numbers(logged):
    rec, folder = logged["record"], logged["dir"] / "csv"
    with open(folder / "tasks.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["task"]) for r in rows] == [1, 2]
    assert [[float(r[f"accuracy/{n}"]) for n in rec["sequence"]["tasks"]] for r in rows] == rec["matrix"]  # exact
    assert [float(r["calibration/ece"]) for r in rows] == [s["ece"]["value"] for s in rec["steps"]]
    with open(folder / "train.csv", newline="") as fh:
        train = list(csv.DictReader(fh))
    assert len(train) == sum(_steps_per_task(rec))
    assert float(train[-1]["loss"]) == rec["steps"][-1]["final_loss"]
    with open(folder / "aggregates.csv", newline="") as fh:
        agg = {r["metric"]: (float(r["value"]) if r["value"] else None) for r in csv.DictReader(fh)}
    assert agg == rec["aggregates"]
    with open(folder / "matrix.csv", newline="") as fh:
        matrix = list(csv.reader(fh))
    assert [[float(v) for v in r[1:]] for r in matrix[2:]] == rec["matrix"]
    params = json.loads((folder / "params.json").read_text())
    assert params["name"] == rec["run_id"] and params["fingerprint"]["digest"] == rec["fingerprint"]["digest"]
    assert json.loads((folder / "record.json").read_text()) == rec


def wandb_records(path: Path):
    """The records of a W&B ``.wandb`` file: a LevelDB-style log (7-byte file header, 32 KiB blocks, each chunk
    with a 7-byte header: crc32, length, type 1 full / 2 first / 3 middle / 4 last) of ``wandb.proto`` Records."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:  # padding to the end of the block
            pos += left
            continue
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            buf = b""
            yield record


def test_wandb_offline_run_holds_the_records_numbers(logged):
    rec = logged["record"]
    (run_dir,) = (logged["dir"] / "wandb").glob("offline-run-*")  # offline: no key was found, nothing asked
    (log,) = run_dir.glob("*.wandb")
    history, summary, config, artifacts, name = [], {}, {}, [], None
    for r in wandb_records(log):
        kind = r.WhichOneof("record_type")
        if kind == "history":
            history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item})
        elif kind == "summary":
            summary.update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.summary.update})
        elif kind == "run":
            name = r.run.display_name
            config.update({i.key: json.loads(i.value_json) for i in r.run.config.update})
        elif kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in r.config.update})
        elif kind == "artifact":
            artifacts.append((r.artifact.type, r.artifact.name))
    assert name == rec["run_id"]
    assert config["fingerprint"] == rec["fingerprint"]["digest"] and config["method"] == "seq"
    tasks = [h for h in history if "task" in h]
    assert [h["task"] for h in tasks] == [1, 2]
    assert [[h[f"accuracy/{n}"] for n in rec["sequence"]["tasks"]] for h in tasks] == rec["matrix"]  # exact (JSON)
    assert [h["retention/mean"] for h in tasks] == [s_["zero_shot_retention"] for s_ in
                                                    (_summary(s) for s in rec["steps"])]
    steps = [h for h in history if "train/step" in h]
    assert [h["train/step"] for h in steps] == list(range(sum(_steps_per_task(rec))))
    assert steps[-1]["train/loss"] == rec["steps"][-1]["final_loss"]
    assert all(summary[f"aggregates/{k}"] == v for k, v in rec["aggregates"].items() if v is not None)
    assert any("matrix/_type" in h for h in history)  # the matrix as a wandb.Table
    assert ("record", f"record-{rec['run_id']}") in artifacts


def _summary(step: dict) -> dict:
    from suite.results.records import step_summary

    return step_summary(step)


def test_a_run_with_every_tracker_gives_the_record_of_a_run_without(logged):
    import suite

    plain = suite.run(sequence=str(logged["seq"]), model=MICRO, pet="lora", method="seq", progress=False,
                      out=str(logged["tmp"] / "plain"), run_dir=str(logged["tmp"] / "plain-runs"))
    assert plain.run_id == logged["record"]["run_id"]
    a, b = strip_timings(plain.to_dict()), strip_timings(logged["record"])  # timings, paths and command out
    assert a == b and plain.matrix == logged["record"]["matrix"]


def test_a_logger_object_is_told_every_step_and_task(tmp_path, seq_file):
    import suite
    from suite.engine.loggers import Logger

    class Recorder(Logger):
        def __init__(self):
            self.calls = []

        def start(self, info):
            self.calls.append(("start", info.name, info.tasks, info.fingerprint["digest"]))

        def step(self, i, loss, lr):
            self.calls.append(("step", i, loss, lr))

        def task(self, t, step):
            step["accuracy"][0] = -1.0  # a logger that writes into what it is given changes nothing
            self.calls.append(("task", t))

        def finish(self, record):
            self.calls.append(("finish", record["status"]))

    rec_logger = Recorder()
    r = suite.run(sequence=seq_file(), model=MICRO, iterations=3, progress=False, loggers=[rec_logger],
                  out=str(tmp_path / "results"), run_dir=str(tmp_path / "runs"))
    kinds = [c[0] for c in rec_logger.calls]
    assert kinds == ["start"] + ["step"] * 3 + ["task"] + ["step"] * 3 + ["task", "finish"]
    assert rec_logger.calls[0][1:] == (r.run_id, r.tasks, r["fingerprint"]["digest"])
    assert [c[1] for c in rec_logger.calls if c[0] == "step"] == list(range(6))
    lrs = [c[3] for c in rec_logger.calls if c[0] == "step"]
    assert lrs[0] > lrs[2] > 0  # the schedule decays within a task
    assert rec_logger.calls[-1] == ("finish", "complete")
    assert min(r.matrix[0]) >= 0 and load_record(r.path)["matrix"] == r.matrix


def test_a_missing_tracker_package_is_refused_in_one_line_naming_the_extra(tmp_path, seq_file, capsys, monkeypatch):
    from suite.cli import main
    from suite.engine import loggers

    real = loggers.find_spec
    monkeypatch.setattr(loggers, "find_spec", lambda name: None if name == "wandb" else real(name))
    rc = main(["run", "--sequence", seq_file(), "--model", MICRO, "--quiet", "--log", "wandb",
               "--out", str(tmp_path / "r"), "--run-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "wandb" in err and "pip install clip-continual-suite[trackers]" in err
    assert not (tmp_path / "runs").exists()  # refused before anything was built or written


def test_trackers_in_run_configs_and_plans(tmp_path):
    from suite.api import plan, run_config
    from suite.config.run import RunConfig
    from suite.errors import ConfigError
    from suite.experiments.sweep import load_plan

    assert RunConfig.from_dict({"sequence": "x", "log": "csv"}).log == ["csv"]
    for bad in (["csv", "csv"], ["mlflow"], 3):
        with pytest.raises(ConfigError, match="log"):
            RunConfig.from_dict({"sequence": "x", "log": bad}, "my.yaml")
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("sequence: world-class-incremental\nlog: [tensorboard, csv]\n")
    assert run_config(config=cfg_file).log == ["tensorboard", "csv"]
    assert run_config(config=cfg_file, log=["wandb"]).log == ["wandb"]  # the options override the file
    p = tmp_path / "plan.yaml"
    p.write_text("log: [csv]\ngroups:\n  - sequences: [world-class-incremental]\n    methods: [seq]\n    pets: [lora]\n")
    assert [c.log for c in load_plan(p)] == [["csv"]]
    assert [c.log for c in plan(p, log=["tensorboard"])] == [["tensorboard"]]
    p.write_text("log: [mlflow]\ngroups:\n  - sequences: [world-class-incremental]\n    methods: [seq]\n")
    with pytest.raises(Exception, match="log"):
        load_plan(p)
    # never part of what a run is: the run id and the record's config leave the trackers out
    assert run_config("world-class-incremental", log=["csv"]).run_id() == run_config("world-class-incremental").run_id()
