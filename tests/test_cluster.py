"""Plans on a real SLURM cluster (one node, started for this session by :mod:`slurm_cluster`): a plan as a job
array equals the local sweep; a failed run is reported with its error and resubmitted alone; a cancelled run
resumes to the uninterrupted record; ``srun -n 2`` equals torchrun with two processes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import MICRO, small_sequence
from slurm_cluster import Cluster

from suite.cli import main
from suite.results.records import Tolerance, record_differences, strip_timings


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    cluster = Cluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.up()
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        cluster.down()
        pytest.fail(f"no test cluster: {exc}")  # never a silent skip: scripts/test installs what it needs
    before = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)  # sbatch, squeue and scancel, here and in the suite, read it
    yield cluster
    cluster.down()
    if before is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = before


def _plan(tmp_path: Path, name: str, seq: str, groups: list[dict], out: str) -> str:
    plan = tmp_path / f"{name}.yaml"
    plan.write_text(yaml.safe_dump({"out": str(tmp_path / out), "model": MICRO,
                                    "groups": [{"sequences": [seq], **g} for g in groups]}))
    return str(plan)


def _sequence(tmp_path: Path, iterations: int = 4, n_tasks: int = 2) -> str:
    seq = small_sequence(n_tasks=n_tasks)
    seq["training"]["iterations"] = iterations
    path = tmp_path / "cluster-seq.yaml"
    path.write_text(yaml.safe_dump(seq))
    return str(path)


def _records(folder: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


def _slurm(plan: str, *extra: str) -> int:
    return main(["sweep", "--plan", plan, "--executor", "slurm", "--cpus-per-run", "1", "--array-parallelism", "2",
                 "--slurm-time", "10", *extra])


def test_a_plan_as_a_job_array_equals_the_local_sweep(slurm, tmp_path, capsys):
    """2 methods x 2 seeds: ``--executor slurm --wait`` writes the records the local pool writes (one thread per
    run in both), accuracy matrices equal."""
    seq = _sequence(tmp_path)
    groups = [{"methods": ["seq", "pegp"], "pets": ["lora"], "seeds": [0, 1]}]
    assert main(["sweep", "--plan", _plan(tmp_path, "local", seq, groups, "local"), "--jobs", "2", "--quiet"]) == 0
    assert _slurm(_plan(tmp_path, "cluster", seq, groups, "cluster"), "--wait") == 0
    local, cluster = _records(tmp_path / "local"), _records(tmp_path / "cluster")
    assert len(local) == 4 and sorted(local) == sorted(cluster)
    for name in local:
        assert cluster[name]["matrix"] == local[name]["matrix"], name
    out = capsys.readouterr().out
    assert "4 done, 0 running, 0 pending, 0 failed" in out
    assert list((tmp_path / "cluster-jobs").glob("*_0_log.out")), "each run's stdout is in the job folder"


def test_a_failed_run_is_reported_and_resume_submits_only_it(slurm, tmp_path, capsys):
    """A method option that raises when the run sets up (GPM on a layer the model lacks) fails its array element:
    ``sweep status`` names it with its error line; fixed, ``--resume`` submits that run alone."""
    seq = _sequence(tmp_path)
    good = {"methods": ["seq"], "pets": ["lora"], "seeds": [0]}
    plan = _plan(tmp_path, "plan", seq, [good, {"methods": ["gpm"], "seeds": [0], "method_options": {"layers": "99"}}],
                 "res")
    assert _slurm(plan, "--wait") == 1
    capsys.readouterr()
    assert main(["sweep", "status", "--plan", plan]) == 1
    status = capsys.readouterr().out
    failed = [line for line in status.splitlines() if line.startswith("failed")]
    assert len(failed) == 1 and "__gpm__" in failed[0], status
    assert "layers [99] out of range" in status and "_log.err" in status, status
    assert "1 done" in status
    fixed = _plan(tmp_path, "plan", seq, [good, {"methods": ["gpm"], "seeds": [0], "method_options": {"layers": "0"}}],
                  "res")
    assert _slurm(fixed, "--resume", "--wait") == 0
    assert "submitted 1 of 2 runs" in capsys.readouterr().err
    assert len(_records(tmp_path / "res")) == 2


def _wait_for(predicate, timeout: float, what: str) -> None:
    end = time.time() + timeout
    while not predicate():
        if time.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_cancelled_run_resumes_to_the_uninterrupted_record(slurm, tmp_path, capsys):
    """``scancel`` after the first task's checkpoint, then ``--resume``: the run continues after task 1 and its
    record equals an uninterrupted run's (timings aside; one machine, so bit for bit)."""
    seq = _sequence(tmp_path, iterations=1000, n_tasks=3)
    plan = _plan(tmp_path, "plan", seq, [{"methods": ["seq"], "pets": ["lora"], "seeds": [0]}], "res")
    assert _slurm(plan) == 0
    runs = tmp_path / "res" / ".runs"
    _wait_for(lambda: any(runs.glob("*/checkpoint.pt")), 300, "the first task's checkpoint")
    array = json.loads((tmp_path / "res-jobs" / "runs.json").read_text()).popitem()[1]["job"].split("_")[0]
    subprocess.run(["scancel", "--signal=KILL", "--full", array], check=True)  # as a preemption kill: no grace
    _wait_for(lambda: not subprocess.run(["squeue", "-h", "-j", array], capture_output=True, text=True).stdout.strip(),
              60, "the cancelled job to leave the queue")
    assert not list((tmp_path / "res").glob("*.json")), "the run finished before it was cancelled: nothing tested"
    partial = json.loads(next(runs.glob("*/record.partial.json")).read_text())
    assert 1 <= len(partial["steps"]) < 3
    capsys.readouterr()
    assert main(["sweep", "status", "--plan", plan]) == 1
    assert "failed" in capsys.readouterr().out
    assert _slurm(plan, "--resume", "--wait") == 0
    resumed = next((tmp_path / "res").glob("*.json"))
    kept = json.loads(resumed.read_text())["steps"][0]
    assert kept["train_time_s"] == partial["steps"][0]["train_time_s"], "task 1 was trained again, not resumed"
    straight = tmp_path / "straight"
    rc = subprocess.run([sys.executable, "-m", "suite", "run", "--sequence", seq, "--model", MICRO, "--pet", "lora",
                         "--method", "seq", "--quiet", "--out", str(straight), "--run-dir", str(tmp_path / "r2")],
                        env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=600)
    assert rc.returncode == 0, rc.stderr[-2000:]
    a, b = (strip_timings(json.loads(p.read_text())) for p in (resumed, next(straight.glob("*.json"))))
    assert record_differences(a, b, Tolerance()) == []


def test_srun_two_tasks_equal_torchrun_two_processes(slurm, tmp_path):
    """``srun -n 2 python -m suite run``: rank and world size from SLURM's variables (no torchrun), gloo on CPU;
    the record equals torchrun's with two processes, and states two processes on one node."""
    seq = str(tmp_path / "seq.yaml")
    Path(seq).write_text(yaml.safe_dump(small_sequence()))
    args = ["-m", "suite", "run", "--sequence", seq, "--model", MICRO, "--pet", "lora", "--method", "pegp", "--quiet",
            "--batch-size", "8"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    srun = subprocess.run(["srun", "-n", "2", "--cpus-per-task", "1", sys.executable, *args, "--out",
                           str(tmp_path / "srun"), "--run-dir", str(tmp_path / "r1")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert srun.returncode == 0, srun.stderr[-2000:]
    torchrun = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                               "2", *args, "--out", str(tmp_path / "torchrun"), "--run-dir", str(tmp_path / "r2")],
                              env=env, capture_output=True, text=True, timeout=600)
    assert torchrun.returncode == 0, torchrun.stderr[-2000:]
    a, b = (json.loads(next((tmp_path / d).glob("*.json")).read_text()) for d in ("srun", "torchrun"))
    assert a["efficiency"]["world_size"] == 2 and a["environment"]["nodes"] == 1
    assert record_differences(strip_timings(a), strip_timings(b), Tolerance()) == []
