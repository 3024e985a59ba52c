"""The walk-through of docs/how-to/add-a-method.md, followed literally: its files cut from the page into a package,
the package installed, its method run for the board's budget, submitted, validated and shown on a board."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "how-to" / "add-a-method.md"
BLOCK = r"<!-- walkthrough:{what} -->\s*\n\s*```[a-z]*\n(.*?)\n\s*```"


def guide_blocks(what: str) -> list[tuple[str, str]]:
    text = GUIDE.read_text()
    pattern = re.compile(BLOCK.format(what=what + r"(?: (\S+))?"), re.S)
    return [(m.group(1) or "", textwrap.dedent(m.group(2))) for m in pattern.finditer(text)]


def _suite(args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "suite", *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=1200)


def test_walkthrough_end_to_end(tmp_path):
    files = guide_blocks("file")
    assert {p for p, _ in files} == {"my-method/pyproject.toml", "my-method/my_method/__init__.py"}
    for rel, body in files:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(body + "\n")
    ((_, run_block),) = guide_blocks("run")
    lines = [ln.strip() for ln in run_block.splitlines() if ln.strip()]
    assert lines[0] == "pip install ./my-method"
    # The page's install, into a folder of its own: --no-deps because this environment already has the suite.
    site = tmp_path / "site-packages"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--target", str(site), str(tmp_path / "my-method")], capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr[-2000:]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]), OMP_NUM_THREADS="2")
    run_args = shlex.split(lines[1])
    assert run_args[0] == "clsuite"
    res = _suite(run_args[1:] + ["--out", str(tmp_path / "results"), "--run-dir", str(tmp_path / "runs"), "--quiet"],
                 env, tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    (record,) = list((tmp_path / "results").glob("*anchor*.json"))

    sub = _suite(["submit", str(record), "--out", str(tmp_path / "sub.json"), "--method-source", "my-method==0.1.0"],
                 env, tmp_path)
    assert sub.returncode == 0, sub.stderr
    val = _suite(["validate", str(tmp_path / "sub.json")], env, tmp_path)
    assert "seed(s); the board needs" in val.stdout + val.stderr  # one seed: valid records, too few to rank

    built = _suite(["leaderboard", "build", "--results", str(tmp_path / "results"), "--out", str(tmp_path / "board")],
                   env, tmp_path)
    assert built.returncode == 0, built.stderr[-2000:]
    page = (tmp_path / "board" / "class-incremental.html").read_text()
    assert ">anchor<" in page and "Not ranked" in page
