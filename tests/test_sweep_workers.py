"""A local sweep's worker processes: they end with the sweep, and a failed run does not silence the others."""
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import MICRO

from suite.errors import SuiteError
from suite.experiments.sweep import sweep


def _gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie nobody reaped counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def test_the_workers_of_a_killed_sweep_end_instead_of_taking_its_queued_runs(tmp_path):
    script = tmp_path / "sweep_parent.py"
    script.write_text(textwrap.dedent("""
        import os, time
        from suite.experiments.sweep import worker_pool

        if __name__ == "__main__":
            pool = worker_pool(1, 1)
            print(pool.submit(os.getpid).result(timeout=300), flush=True)
            pool.submit(time.sleep, 300)  # a long run in the worker, as a sweep's next run would be
            time.sleep(600)
    """))
    root = Path(__file__).parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=root, env=env)
    worker = None
    try:
        worker = int(parent.stdout.readline())
        assert not _gone(worker)
        parent.send_signal(signal.SIGKILL)  # no handler of the sweep runs: the worker must notice by itself
        parent.wait(timeout=60)
        deadline = time.monotonic() + 30
        while not _gone(worker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _gone(worker), "the worker outlived its sweep"
    finally:
        parent.kill()
        parent.stdout.close()
        if worker is not None and not _gone(worker):
            os.kill(worker, signal.SIGKILL)


def test_a_failed_run_in_a_parallel_sweep_is_logged_and_raised_after_the_others(tmp_path, seq_file):
    import suite

    seq = Path(seq_file())
    options = dict(sequence=str(seq), methods=["seq"], pets=["lora"], model=MICRO, iterations=1,
                   out=tmp_path / "out", run_dir=tmp_path / "runs")
    sweep(suite.plan(seeds=[0], **options), jobs=1, log=lambda line: None)
    # the sequence file changes (records name it by its content): seed 0's record is of another configuration now,
    # under the same name, so that run is refused
    seq.write_text(seq.read_text() + "# edited\n")
    second = suite.plan(seeds=[0, 1, 2], **options)
    lines: list[str] = []
    with pytest.raises(SuiteError, match="another configuration"):
        sweep(second, jobs=2, log=lines.append)
    progress = [line for line in lines if line.startswith("  [")]
    assert len(progress) == 3, lines
    assert sum("failed: " in line and "__s0__" in line for line in progress) == 1, lines
    assert sum(line.endswith("s") and "failed" not in line for line in progress) == 2, lines
    assert all((tmp_path / "out" / f"{c.run_id()}.json").exists() for c in second)
