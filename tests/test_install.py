"""Installs as users install: the wheel built from this checkout, installed (not editable) into a fresh virtual
environment that reuses the heavy packages already installed (``--system-site-packages``), runs ``clsuite
--version``, ``tasks list``, a micro ``run`` and ``demo --quick`` from a temporary folder outside the repository.
Tasks, templates, weights and board templates must all come from the package: nothing the commands write may name
the checkout. The checkout's own (editable) install is left as it was. About 4 CPU-minutes (8 s to build and
install, the rest the demo's three runs), so about 2 minutes on 2 idle cores."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.install
SOURCES = ("suite", "tasks", "leaderboards")  # what the wheel is built from (pyproject's packages and package-dir)
NOT_SHIPPED = re.compile(r"(^|/)(__pycache__|site)(/|$)|\.pyc$")  # leaderboards/site is a build output


def _sh(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 300) -> str:
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{' '.join(cmd)} -> {res.returncode}\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    return res.stdout


def _shipped_files() -> set[str]:
    """Every file of the checkout a user needs, as its path inside the wheel."""
    where = {"suite": "suite", "tasks": "suite/tasks_data", "leaderboards": "suite/boards_data"}
    out = set()
    for folder in SOURCES:
        for p in (REPO / folder).rglob("*"):
            rel = p.relative_to(REPO / folder).as_posix()
            if p.is_file() and not NOT_SHIPPED.search(rel) and not p.name.startswith("."):
                out.add(f"{where[folder]}/{rel}")
    return out


def _editable_install_state() -> dict[str, str]:
    """The files by which the interpreter running the tests finds ``suite`` (its editable install), hashed."""
    state = {}
    for folder in {*site.getsitepackages(), site.getusersitepackages()}:
        for p in Path(folder).glob("*clip_continual_suite*"):
            files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
            for f in files:
                state[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return state


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """(python, environment, version) of a fresh virtual environment holding the wheel of this checkout."""
    tmp = tmp_path_factory.mktemp("install")
    assert REPO not in tmp.parents
    src, dist = tmp / "src", tmp / "dist"
    src.mkdir()
    # a copy of what the wheel is built from, so the build writes nothing (build/, egg-info) into the checkout
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for folder in SOURCES:
        shutil.copytree(REPO / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "site"))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "CLSUITE_", "VIRTUAL_ENV", "PIP_")) or k == "CLSUITE_CACHE"}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", MPLBACKEND="Agg", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    _sh([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(dist),
         str(src)], tmp, env)
    wheel = next(dist.glob("clip_continual_suite-*.whl"))
    missing = _shipped_files() - set(zipfile.ZipFile(wheel).namelist())
    assert not missing, f"files of the checkout missing from the wheel (pyproject packages/package-data): {sorted(missing)[:10]}"

    before = _editable_install_state()
    venv = tmp / "venv"
    # --without-pip: the system's pip (reachable through --system-site-packages) installs into the environment
    _sh([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], tmp, env)
    python = venv / "bin" / "python"
    # --ignore-installed: the checkout's editable install stays as it is (never uninstalled or re-pointed)
    _sh([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed", str(wheel)], tmp, env)
    assert _editable_install_state() == before
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    work = tmp / "work"
    work.mkdir()
    version = re.search(r'(?m)^version\s*=\s*"([^"]+)"', (REPO / "pyproject.toml").read_text()).group(1)
    return python, env, work, version


def test_the_wheel_is_what_runs(venv):
    python, env, work, version = venv
    where, got = json.loads(_sh([str(python), "-c", "import json, suite; print(json.dumps([suite.__file__, "
                                 "suite.__version__]))"], work, env))
    assert Path(where).is_relative_to(python.parent.parent) and got == version
    assert _sh(["clsuite", "--version"], work, env).strip() == f"clsuite {version}"


def test_tasks_run_and_demo_from_another_folder(venv):
    python, env, work, version = venv
    assert shutil.which("clsuite", path=env["PATH"]) == str(python.parent / "clsuite")
    listed = _sh(["clsuite", "tasks", "list"], work, env)
    assert "world-class-incremental" in listed and "mini-mtil" in listed
    _sh(["clsuite", "run", "--sequence", "world-class-incremental", "--iterations", "1", "--max-eval", "16",
         "--out", "out", "--run-dir", "runs", "--quiet"], work, env)
    (record,) = (work / "out").glob("*.json")
    rec = json.loads(record.read_text())
    assert rec["status"] == "complete" and rec["environment"]["suite"] == version
    assert rec["environment"]["git_commit"] is None  # the code ran from site-packages, not from a checkout
    _sh(["clsuite", "demo", "--quick", "--out", "demo"], work, env, timeout=1800)  # a bound for a hang, not a target
    assert len(list((work / "demo").glob("*.json"))) == 3 and (work / "demo" / "site" / "index.html").is_file()
    for f in work.rglob("*"):  # nothing written names the checkout: tasks, templates, weights came from the package
        if f.is_file() and f.suffix in (".json", ".html", ".csv", ".svg", ".yaml", ".md"):
            assert str(REPO) not in f.read_text(errors="replace"), f
