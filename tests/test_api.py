"""The Python API (suite/api.py): its guide's example (docs/how-to/python-api.md) run as written, the examples
executed, the numbers the command line prints, records as objects, and refusals as the suite's own errors."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from conftest import MICRO, small_sequence

import suite
from suite.errors import ConfigError, SuiteError

ROOT = Path(__file__).resolve().parents[1]


def _python(args: list[str], cwd: Path, timeout: int = 900, **env: str) -> subprocess.CompletedProcess:
    """``python args`` in ``cwd`` (outside the repository) with this checkout importable."""
    full = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                OMP_NUM_THREADS="2", MPLBACKEND="Agg", **env)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=full, capture_output=True, text=True, timeout=timeout)


def test_import_suite_loads_no_torch(tmp_path):
    code = ("import sys, suite; assert 'torch' not in sys.modules; f = suite.run, suite.load_records, suite.Record; "
            "assert 'torch' not in sys.modules; print(sorted(set(suite.__all__) - set(dir(suite))))")
    res = _python(["-c", code], tmp_path)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stderr[-2000:]


GUIDE = ROOT / "docs" / "how-to" / "python-api.md"


def guide_api_block() -> str:
    """The example of the Python API guide (docs/how-to/python-api.md), marked ``<!-- api:example -->``."""
    text = GUIDE.read_text()
    (block,) = re.findall(r"<!-- api:example -->\s*\n```python\n(.*?)\n```", text, re.S)
    return textwrap.dedent(block)


def test_guide_python_api_example_runs_as_written(tmp_path):
    """The guide's block, unchanged, in an empty folder: it holds the issue's acceptance line (the embedded tiny
    CLIP on world-class-incremental, 2 iterations per task, 16 test images per task)."""
    block = guide_api_block()
    assert ("suite.run(sequence=\"world-class-incremental\", pet=\"lora\", method=\"seq\", iterations=2, max_eval=16)"
            in block)
    (tmp_path / "guide_api.py").write_text(block + "\n")
    res = _python(["guide_api.py"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    last = float(res.stdout.split()[0])
    (record,) = (tmp_path / "results").glob("world-class-incremental__*.json")
    rec = json.loads(record.read_text())
    assert last == rec["aggregates"]["last"] and json.loads((tmp_path / "my-run.json").read_text()) == rec
    assert "world-class-incremental" in res.stdout and (tmp_path / "matrix.svg").stat().st_size > 0


@pytest.fixture(scope="module")
def example_env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("examples")
    seq = tmp / "seq.yaml"
    seq.write_text(yaml.safe_dump(small_sequence()))
    return tmp, {"CLSUITE_EXAMPLE_SEQUENCE": str(seq), "CLSUITE_EXAMPLE_MODEL": MICRO}


def test_quickstart_example(example_env):
    tmp, env = example_env
    res = _python([str(ROOT / "examples" / "quickstart.py")], tmp, **env)
    assert res.returncode == 0, res.stderr[-3000:]
    (record,) = (tmp / "example-results").glob("*.json")
    rec = json.loads(record.read_text())
    assert f"Last: {rec['aggregates']['last']}" in res.stdout and f"record file: {record.relative_to(tmp)}" in res.stdout


@pytest.fixture(scope="module")
def walked(example_env):
    """examples/walkthrough.py run top to bottom (as a notebook would run its cells)."""
    tmp, env = example_env
    res = _python([str(ROOT / "examples" / "walkthrough.py")], tmp, **env)
    assert res.returncode == 0, res.stderr[-3000:]
    return tmp / "walkthrough-results", res.stdout


def test_walkthrough_example(walked):
    out, stdout = walked
    records = sorted((out / "records").glob("*.json"))
    assert len(records) == 5  # seq and PEGP on two seeds, and the method defined in the walk-through
    anchor = [json.loads(p.read_text()) for p in records if "__anchor__" in p.name]
    assert anchor and anchor[0]["method"]["options"] == {"strength": 1.0}
    assert (out / "curves.svg").stat().st_size > 0 and "Last, PEGP - seq, paired by seed:" in stdout
    assert len(list((out / "runs").glob("*/csv/tasks.csv"))) == 4


def test_summarize_compare_and_plot_print_what_the_command_line_prints(walked, capsys, tmp_path, monkeypatch):
    import matplotlib

    from suite.cli import main

    # an SVG's date and element ids are otherwise new each time it is saved
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    monkeypatch.setitem(matplotlib.rcParams, "svg.hashsalt", "clsuite")

    folder = str(walked[0] / "records")
    recs = suite.load_records(folder)
    assert main(["summarize", folder]) == 0
    assert capsys.readouterr().out == str(recs.summarize()) + "\n"
    assert main(["compare", folder, "--pair", "pegp/lora:seq/lora", "--format", "md"]) == 0
    assert capsys.readouterr().out == recs.compare(pairs=["pegp/lora:seq/lora"]).format("md") + "\n"
    assert main(["compare", "--results", folder, "--method", "seq", "--method", "pegp", "--metrics", "last,avg"]) == 0
    assert capsys.readouterr().out == str(recs.filter(method=["seq", "pegp"]).compare(metrics="last,avg")) + "\n"
    assert main(["plot", folder, "--kind", "tradeoff", "--out", str(tmp_path / "cli.svg")]) == 0
    assert recs.plot(kind="tradeoff", out=tmp_path / "api.svg") == tmp_path / "api.svg"
    assert (tmp_path / "cli.svg").read_bytes() == (tmp_path / "api.svg").read_bytes()
    # the filters, and the numbers behind the tables
    seq = recs.filter(method="seq", pet="lora")
    assert len(seq) == 2 and {r.seed for r in seq} == {0, 1}
    rows = recs.summarize()
    row = next(r for r in rows if r["method"] == "seq")
    assert row["last"][0] == pytest.approx(sum(r.aggregates["last"] for r in seq) / 2)
    diff = next(d for d in recs.compare(pairs=[("pegp/lora", "seq/lora")]).differences if d.metric == "last")
    pegp = {r.seed: r.aggregates["last"] for r in recs.filter(method="pegp")}
    assert diff.mean == pytest.approx(sum(pegp[r.seed] - r.aggregates["last"] for r in seq) / 2)
    assert recs.compare().to_dict()["metrics"]


def test_run_returns_a_record(tmp_path, seq_file):
    from suite.results import metrics
    from suite.results.records import load_record

    r = suite.run(sequence=seq_file(), model=MICRO, pet="lora", method="seq", seed=1, iterations=2, progress=False,
                  pet_options={"rank": 2}, out=tmp_path / "results", run_dir=tmp_path / "runs")
    assert isinstance(r, suite.Record) and r.status == "complete" and r.seed == 1 and r.method == "seq"
    on_disk = load_record(r.path)
    assert r.to_dict() == on_disk and dict(r) == on_disk and r["pet"]["options"]["rank"] == 2
    assert r.aggregates == metrics.aggregate(r.matrix, r.zero_shot) and "last" in r.aggregates
    assert len(r.steps) == len(r.tasks) == len(r.matrix) and r.steps[0]["iterations"] == 2
    assert r.efficiency["trainable_parameters"] > 0 and r.value("last") == r.aggregates["last"]
    assert r.table().splitlines()[0] == "seq / lora on small-class-incremental (seed 1)"
    saved = r.save(tmp_path / "copy" / "r.json")
    assert suite.Record.load(saved).to_dict() == on_disk and "Record(" in repr(r)
    r.to_dict()["matrix"][0][0] = 5.0  # copies: the record object does not change
    assert r.matrix == on_disk["matrix"]


def test_a_method_object_and_a_registered_method(tmp_path, seq_file):
    from suite.methods import Method, make_method
    from suite.registry import METHODS

    @suite.register_method
    class Halfway(Method):
        """seq with its task loss halved (an example)."""

        name = "halfway-test"

        def loss(self, ctx, batch):
            return 0.5 * ctx.task_loss(batch)

    try:
        assert "halfway-test" in METHODS.names() and isinstance(make_method("halfway-test"), Halfway)
        r = suite.run(sequence=seq_file(), model=MICRO, method="halfway-test", iterations=1, progress=False,
                      out=tmp_path / "a", run_dir=tmp_path / "runs")
        assert r.method == "halfway-test" and r["method"]["source"].endswith(":test_a_method_object_and_a_registered_"
                                                                             "method.<locals>.Halfway")
        with pytest.raises(ConfigError, match="registered in this process only"):
            suite.sweep(suite.plan(sequence=seq_file(), methods=["halfway-test"], seeds=[0, 1], model=MICRO), jobs=2)
        obj = suite.run(sequence=seq_file(), model=MICRO, method=Halfway(), iterations=1, progress=False,
                        out=tmp_path / "b", run_dir=tmp_path / "runs-b")
        assert obj.matrix == r.matrix
    finally:
        METHODS.local.pop("halfway-test", None)


@pytest.mark.parametrize("kwargs, match", [
    (dict(sequence=123), "sequence"),
    (dict(sequence="world-class-incremental", seed=-1), "seed"),
    (dict(sequence="world-class-incremental", iterations="many"), "iterations"),
    (dict(sequence="world-class-incremental", pet_options="rank=8"), "pet_options"),
    (dict(sequence="world-class-incremental", pet_options={"rank": -1}), "rank"),
    (dict(sequence="world-class-incremental", method="no-such-method"), "no-such-method"),
    (dict(sequence="world-class-incremental", loggers=["mlflow"]), "mlflow"),
    (dict(sequence="world-class-incremental", loggers=[object()]), "loggers"),
    (dict(sequence="world-class-incremental", amp="yes"), "amp"),
    (dict(sequence="no-such-sequence"), "no-such-sequence"),
    (dict(), "sequence"),
    # the hostile-input classes (tests/test_hostile.py) refused by the API as by the command line
    (dict(sequence="world-class-incremental", seed=10 ** 30), "seed"),
    (dict(sequence="world-class-incremental", iterations=10 ** 30), "iterations"),
    (dict(sequence="world-class-incremental", pet_options={"layers": "3-1"}), "backwards"),
])
def test_run_refuses_with_the_suites_errors(kwargs, match, tmp_path):
    with pytest.raises(SuiteError, match=match) as info:
        suite.run(model=MICRO, out=tmp_path / "r", run_dir=tmp_path / "runs", progress=False, **kwargs)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "r").exists()


def test_the_other_functions_refuse_with_the_suites_errors(tmp_path):
    from suite.methods import Method

    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "x"}')
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    for call, match in [
        (lambda: suite.load_records(deep), "nested"),
        (lambda: suite.load_records(tmp_path / "missing"), "no such"),
        (lambda: suite.load_records(bad), "bad.json"),
        (lambda: suite.load_records(), "name record files"),
        (lambda: suite.Record.load(bad), "bad.json"),
        (lambda: suite.Records().compare(pairs=["pegp/lora"]), "A:B"),
        (lambda: suite.Records().compare(metrics="nonsense"), "nonsense"),
        (lambda: suite.Records().plot(kind="pie"), "pie"),
        (lambda: suite.Records().plot(), "no records"),
        (lambda: suite.plan(sequence="world-class-incremental", seeds=[0, -1]), "seeds"),
        (lambda: suite.plan(sequence="world-class-incremental", learning_rate=3), "learning_rate"),
        (lambda: suite.plan(tmp_path / "no-plan.yaml"), "no-plan.yaml"),
        (lambda: suite.sweep([], jobs=0), "jobs"),
        (lambda: suite.register_method(int), "not a suite.methods.Method"),
        (lambda: suite.register_method(type("Nameless", (Method,), {})), "name"),
        (lambda: suite.register_method(type("Seq2", (Method,), {"name": "seq"})), "built-in"),
        (lambda: suite.run_config(config=tmp_path / "none.yaml"), "none.yaml"),
    ]:
        with pytest.raises(SuiteError, match=match):
            call()


def test_a_failed_task_raises_the_suites_error_and_trackers_are_told(tmp_path, seq_file):
    from suite.engine.loggers import Logger
    from suite.engine.loop import TrainingFailed
    from suite.methods import Method

    class Diverges(Method):
        name = "diverges-test"

        def loss(self, ctx, batch):
            return ctx.task_loss(batch) * float("nan")

    class Ends(Logger):
        status = None

        def finish(self, record):
            Ends.status = record["status"]

    with pytest.raises(TrainingFailed, match=r"task 1 .*finished tasks are kept in .*record\.partial\.json") as info:
        suite.run(sequence=seq_file(), model=MICRO, method=Diverges(), iterations=1, progress=False,
                  out=tmp_path / "r", run_dir=tmp_path / "runs", loggers=[Ends(), "csv"])
    assert isinstance(info.value, SuiteError) and Ends.status == "failed"
    assert not (tmp_path / "r").exists() and list((tmp_path / "runs").glob("*/csv/params.json"))


def test_a_plan_narrowed_to_a_sequence_keeps_only_its_runs_and_says_so_in_the_command(monkeypatch):
    """Remaking one board sequence's records (``clsuite sweep --plan P --sequence S``) must run exactly the plan's
    runs on S, and each record's command must name the narrowing, so it re-runs what it made."""
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # the plan's path as a user at the repository root gives it
    whole = suite.plan("leaderboards/embedded-plan.yaml")
    narrowed = suite.plan("leaderboards/embedded-plan.yaml", sequence="mini-mtil,world-class-incremental")
    kept = [c for c in whole if c.sequence in ("mini-mtil", "world-class-incremental")]
    assert [c.run_id() for c in narrowed] == [c.run_id() for c in kept] and 0 < len(narrowed) < len(whole)
    assert {c.command for c in narrowed} == {
        "clsuite sweep --plan leaderboards/embedded-plan.yaml --sequence mini-mtil,world-class-incremental"}
    assert {c.command for c in whole} == {"clsuite sweep --plan leaderboards/embedded-plan.yaml"}
    with pytest.raises(SuiteError, match=r"embedded-plan.yaml: sequence 'mini-mtl' is not in the plan; it has: "):
        suite.plan("leaderboards/embedded-plan.yaml", sequence="mini-mtl")
    with pytest.raises(SuiteError, match="sequence names"):
        suite.plan("leaderboards/embedded-plan.yaml", sequence=3)
