"""scripts/gpu-check: the one-command GPU check, run here on the CPU (``--cpu --quick``, the micro model) through
the same path it takes on a GPU: every PET x {seq, pegp} x {fp32, bf16} measured, a 2-task run end to end, and a
failure exits non-zero in one line."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from suite.experiments.gpu_check import card_peak
from suite.pet import available_pets

ROOT = Path(__file__).resolve().parent.parent


def gpu_check(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # the CPU path, whatever this machine has
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu-check"), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env=env)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check") / "x.json"
    proc = gpu_check("--cpu", "--quick", "--out", str(out))
    return proc, out


def test_cpu_quick_measures_every_pet_method_and_precision_and_a_two_task_run(quick):
    proc, out = quick
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    steps = {(r["pet"], r["method"], r["precision"]): r for r in report["rows"] if r["check"] == "steps"}
    expected = {(p, m, x) for p in available_pets() for m in ("seq", "pegp") for x in ("fp32", "bf16")}
    assert set(steps) == expected
    for key, row in steps.items():
        assert row["status"] == "ok", (key, row.get("error"))
        assert math.isfinite(row["step_s"]) and row["step_s"] > 0, key
        assert row["images_per_s"] > 0 and row["gflop_per_step"] > 0 and 0 <= row["stall_share"] <= 1, key
        assert row["peak_tflops"] is None and row["peak_memory_mib"] is None, "the CPU has no card peak or CUDA peak"
        assert f"{key[0]}/{key[1]}/{key[2]}" in proc.stdout
    runs = [r for r in report["rows"] if r["check"] == "run"]
    assert len(runs) == 1 and runs[0]["status"] == "ok" and runs[0]["tasks"] == 2
    assert report["torchrun"] == "skipped: --cpu" and "torchrun skipped: --cpu" in proc.stdout
    assert report["failed"] == 0 and report["model"] == "embedded:micro-clip@random"


def test_a_failing_configuration_or_an_unknown_pet_exits_non_zero_in_one_line(tmp_path):
    proc = gpu_check("--cpu", "--quick", "--pets", "nosuch")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "unknown PET 'nosuch'" in proc.stderr and "Traceback" not in proc.stderr
    out = tmp_path / "failed.json"
    proc = gpu_check("--cpu", "--quick", "--pets", "lora", "--fail-on", "lora", "--out", str(out))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "gpu-check: 4 of 5 checks failed; first: steps/lora/seq/fp32: RuntimeError: forced failure (--fail-on lora)"]
    report = json.loads(out.read_text())
    assert [r["status"] for r in report["rows"]] == ["failed"] * 4 + ["ok"], "the other checks still ran"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # clsuite bench gpu is the same check; without a GPU it says so
    proc = subprocess.run([sys.executable, "-m", "suite", "bench", "gpu"], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "gpu-check: no CUDA GPU is visible (--cpu runs the same path on the CPU)"


def test_card_peaks_by_device_name():
    assert card_peak("NVIDIA H100 80GB HBM3", "bf16") == 989.0 and card_peak("NVIDIA H200", "fp32") == 67.0
    assert card_peak("NVIDIA A100-SXM4-80GB", "fp32") == 19.5 and card_peak("NVIDIA H100 PCIe", "bf16") == 756.0
    assert card_peak("Tesla T4", "bf16") is None
