"""Submission by pull request: a folder under submissions/ (the packed records and the submitter's checklist), the
checklist checked against the records, and the CI step (.ci/validate-submissions, the file .ci/run calls) that
validates what a change adds and fails with the reasons."""
import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from records_factory import make_record, reference

from suite.cli import main
from suite.leaderboard.submit import (
    CHECKLIST_FILE,
    SUBMISSION_FILE,
    accept,
    check_checklist,
    check_submission,
    load_checklist,
    pack,
    validate_submission,
)
from suite.results.records import RecordError

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / ".ci" / "validate-submissions"
TEMPLATE = REPO / "submissions" / "TEMPLATE.checklist.yaml"
SEEDS = (0, 1, 2, 3, 4)  # the class-incremental board's min_seeds
METHOD = "anchor"


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    """A valid packed submission: five seeds of an outside method on mini-mtil."""
    folder = tmp_path_factory.mktemp("records")
    paths = []
    for seed in SEEDS:
        path = folder / f"r{seed}.json"
        path.write_text(json.dumps(make_record(reference(), seed, METHOD, 0.01 * seed)))
        paths.append(str(path))
    return pack(paths, folder / "packed.json", "https://example.org/anchor")


def good_checklist(sub: Path) -> dict:
    run_ids = [r["run_id"] for r in json.loads(sub.read_text())["records"]]
    return {"method": METHOD, "method_source": "https://example.org/anchor", "code_version": "3f2a9c1",
            "contact": "someone@example.org",
            "protocol": {"memory": 0, "task_id_test": False, "routing": "none",
                         "extra_data": {"used": False, "what": ""}, "pretrained_weights": "embedded:tiny-clip"},
            "records": run_ids}


def make_submission(folder: Path, packed: Path, change_checklist=None, change_records=None) -> Path:
    """``folder`` as a submission folder: the packed file (records changed by ``change_records``) and a checklist
    (changed by ``change_checklist``)."""
    folder.mkdir(parents=True, exist_ok=True)
    sub = json.loads(packed.read_text())
    if change_records:
        change_records(sub["records"])
    (folder / SUBMISSION_FILE).write_text(json.dumps(sub))
    checklist = good_checklist(packed)
    if change_checklist:
        change_checklist(checklist)
    (folder / CHECKLIST_FILE).write_text(yaml.safe_dump(checklist, sort_keys=False))
    return folder


# ----------------------------------------------------------------------------------------- the checklist check
def test_a_checklist_that_agrees_passes(packed, tmp_path, capsys):
    folder = make_submission(tmp_path / "good", packed)
    assert validate_submission(folder / SUBMISSION_FILE) == []
    assert check_submission(folder) == []
    assert check_submission(folder / SUBMISSION_FILE) == []  # the checklist beside the file is found
    assert main(["validate", str(folder)]) == 0
    out = capsys.readouterr().out
    assert f"valid: {folder / SUBMISSION_FILE}" in out
    assert "checklist agrees with the records" in out and "memory 0, task id at test no, routing none" in out


def _set(path: str, value):
    def change(c: dict) -> None:
        *parents, last = path.split(".")
        node = c
        for key in parents:
            node = node[key]
        node[last] = value
    return change


@pytest.mark.parametrize("change,needle", [
    (_set("method", "seq"), "method: declares \"seq\", but records.0 (run_id "),
    (_set("protocol.memory", 2000), "protocol.memory: declares 2000, but records.0"),
    (_set("protocol.task_id_test", True), "protocol.task_id_test: declares true, but records.0"),
    (_set("protocol.routing", "per-sample"), "protocol.routing: declares \"per-sample\""),
    (_set("protocol.pretrained_weights", "open_clip:ViT-B-16@openai"),
     "protocol.pretrained_weights: declares \"open_clip:ViT-B-16@openai\", but records.0 (run_id "),
    (_set("protocol.pretrained_weights", ["embedded:tiny-clip", "open_clip:ViT-B-16@openai"]),
     "protocol.pretrained_weights: declares \"open_clip:ViT-B-16@openai\", which no record"),
    (lambda c: c["records"].pop(2), "records: does not list records.2 of the submission"),
    (lambda c: c["records"].append("elsewhere__s9"), "records: lists run_id \"elsewhere__s9\", which is not"),
    (lambda c: c.pop("code_version"), "code_version: 'code_version' is a required property"),
    (_set("code_version", ""), "code_version: '' does not match"),
    (_set("method_source", "my-method==0.1.0"), "method_source: 'my-method==0.1.0' does not match"),
    (_set("protocol.extra_data", {"used": True, "what": " "}), "protocol.extra_data.what: ' ' does not match"),
    (_set("protocol.routing", "per-task"), "protocol.routing: 'per-task' is not one of"),
    (_set("protocol.memory", True), "protocol.memory: True is not of type 'integer'"),
    (lambda c: c.update(tier="reproduced"), "(top level): Additional properties are not allowed"),
])
def test_each_declaration_that_disagrees_is_one_line_naming_file_and_field(packed, tmp_path, change, needle, capsys):
    folder = make_submission(tmp_path / "sub", packed, change)
    checklist = folder / CHECKLIST_FILE
    assert main(["validate", str(folder)]) == 1  # the records are those of the passing test: only the checklist fails
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith(f"rejected: {checklist}: ") and needle in line, line


def test_the_checklist_is_checked_against_what_each_record_states(packed, tmp_path):
    """Records a board allows (per-sample routing) but the checklist does not declare: only the checklist fails,
    naming the first record that disagrees and how many more do."""
    def route(records):
        for rec in records[1:]:
            rec["method"]["protocol"] = {"task_id_train": False, "task_id_test": False, "memory": 0,
                                         "routing": "per-sample", "extra_forward": 0}
    folder = make_submission(tmp_path / "sub", packed, change_records=route)
    assert validate_submission(folder / SUBMISSION_FILE) == []
    (problem,) = check_submission(folder)
    assert problem.startswith(f"{folder / CHECKLIST_FILE}: protocol.routing: declares \"none\", but records.1 ")
    assert "states method.protocol.routing \"per-sample\" (and 3 more record(s))" in problem
    # declaring per-sample routing agrees only with records that use it: seed 0 still routes none
    (problem,) = check_submission(make_submission(tmp_path / "declared", packed, _set("protocol.routing", "per-sample"),
                                                  route))
    assert "records.0" in problem and "states method.protocol.routing \"none\"" in problem


def test_memory_the_board_forbids_is_refused_twice_and_by_the_checklist(packed, tmp_path):
    def memory(records):
        records[3]["method"]["protocol"] = {"task_id_train": False, "task_id_test": False, "memory": 2000,
                                            "routing": "none", "extra_forward": 0}
    folder = make_submission(tmp_path / "sub", packed, change_records=memory)
    problems = check_submission(folder)
    assert any("records.3: method.protocol.memory: 2000 stored examples" in p for p in problems)  # the board's rule
    assert any(p.startswith(f"{folder / CHECKLIST_FILE}: protocol.memory: declares 0, but records.3") for p in problems)


def test_the_template_is_refused_unfilled_and_passes_filled(packed, tmp_path):
    with pytest.raises(RecordError) as err:
        load_checklist(TEMPLATE)
    assert str(err.value).startswith(f"{TEMPLATE}: ") and "\n" not in str(err.value)
    filled = yaml.safe_load(TEMPLATE.read_text())
    good = good_checklist(packed)
    assert set(filled) == set(good) and set(filled["protocol"]) == set(good["protocol"])  # the template has every field
    filled.update(copy.deepcopy(good))
    path = tmp_path / CHECKLIST_FILE
    path.write_text(yaml.safe_dump(filled))
    assert check_checklist(path, packed) == []


def test_a_folder_without_checklist_or_submission_is_refused(packed, tmp_path):
    folder = make_submission(tmp_path / "sub", packed)
    (folder / CHECKLIST_FILE).unlink()
    (problem,) = check_submission(folder)
    assert problem.startswith(f"{folder / CHECKLIST_FILE}: (file): no such checklist; copy submissions/TEMPLATE")
    assert check_submission(folder / SUBMISSION_FILE) == []  # a bare file needs no checklist (clsuite submit's output)
    (folder / CHECKLIST_FILE).write_text("method: [unclosed\n")
    (problem,) = check_submission(folder)
    assert problem.startswith(f"{folder / CHECKLIST_FILE}: line ") and "not valid YAML" in problem
    (folder / SUBMISSION_FILE).unlink()
    missing, elsewhere = check_submission(tmp_path / "sub", checklist=tmp_path / "elsewhere.yaml")
    assert missing == f"{folder / SUBMISSION_FILE}: (file): no such submission"
    assert elsewhere.startswith(f"{tmp_path / 'elsewhere.yaml'}: (file): no such checklist")


def test_accept_refuses_a_folder_whose_checklist_disagrees(packed, tmp_path):
    bad = make_submission(tmp_path / "bad", packed, _set("protocol.task_id_test", True))
    results = tmp_path / "results"
    with pytest.raises(RecordError, match="protocol.task_id_test: declares true"):
        accept(bad, results)
    assert not results.exists()  # refused whole: nothing written
    good = make_submission(tmp_path / "good", packed)
    assert len(accept(good, results)) == len(SEEDS)
    assert main(["accept", str(good), "--results", str(results)]) == 0  # the same records: no change


# ----------------------------------------------------------------------------------------- the CI step
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.org", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("CLSUITE_CI_BASE", "CLSUITE_BOARDS_DIR")}
    return {**env, **GIT_ENV, "CLSUITE_PYTHON": sys.executable,
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p), **extra}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, env=_env(), check=True, capture_output=True, text=True).stdout


def ci(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """The CI step exactly as .ci/run calls it (the same file), from ``cwd``."""
    return subprocess.run([str(SCRIPT), *args], cwd=cwd, env=_env(**env), capture_output=True, text=True, timeout=120)


def commit(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD").strip()


def test_ci_runs_the_script():
    assert os.access(SCRIPT, os.X_OK)
    assert ".ci/validate-submissions" in (REPO / ".ci" / "run").read_text().splitlines()


def test_ci_validates_what_a_change_adds_and_fails_with_the_reason(packed, tmp_path):
    repo = tmp_path / "repo"
    (repo / "submissions").mkdir(parents=True)
    shutil.copy(REPO / "submissions" / "README.md", repo / "submissions")
    shutil.copy(TEMPLATE, repo / "submissions")
    git(repo, "init", "-q", "-b", "main")
    base = commit(repo, "main as it is: the convention's files only")

    res = ci(repo)  # the first commit has no parent: every submission is validated, and there is none
    assert res.returncode == 0, res.stdout + res.stderr
    assert "no base (HEAD has no parent and no origin/main" in res.stdout
    assert res.stdout.endswith("no submission under submissions/: nothing to validate\n")
    (repo / "notes.md").write_text("a change elsewhere\n")
    commit(repo, "a clean main: a change outside submissions/")
    res = ci(repo)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.endswith("(HEAD's first parent), with uncommitted and untracked files\n"
                               "validate-submissions: no submission added or changed: nothing to validate\n")

    make_submission(repo / "submissions" / "anchor-good", packed)
    commit(repo, "a good submission")
    res = ci(repo)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "(HEAD's first parent)" in res.stdout
    assert "== submissions/anchor-good\nOK\n  valid: submissions/anchor-good/submission.json\n" in res.stdout
    assert "checklist agrees with the records" in res.stdout and "all 1 submission(s) valid" in res.stdout

    make_submission(repo / "submissions" / "anchor-bad", packed, _set("protocol.memory", 0),
                    lambda recs: recs[0]["method"].update(protocol={"task_id_train": False, "task_id_test": False,
                                                                    "memory": 500, "routing": "none",
                                                                    "extra_forward": 0}))
    tampered = make_submission(repo / "submissions" / "anchor-tampered", packed)
    sub = json.loads((tampered / SUBMISSION_FILE).read_text())
    sub["records"][1]["aggregates"]["last"] += 0.05
    (tampered / SUBMISSION_FILE).write_text(json.dumps(sub))
    commit(repo, "two bad submissions")
    res = ci(repo.joinpath("submissions"))  # from a subfolder: the script finds the repository's root
    assert res.returncode == 1, res.stdout + res.stderr
    assert "anchor-good" not in res.stdout  # not part of this change
    bad, tampered_block = res.stdout.split("== submissions/anchor-bad\n")[1].split("== submissions/anchor-tampered\n")
    assert bad.startswith("FAILED\n")
    assert ("  rejected: submissions/anchor-bad/checklist.yaml: protocol.memory: declares 0, but records.0 (run_id "
            in bad)
    assert "submissions/anchor-bad/submission.json: records.0: method.protocol.memory: 500 stored examples" in bad
    assert tampered_block.startswith("FAILED\n") and "records.1: aggregates.last: submitted" in tampered_block
    assert "2 of 2 submission(s) refused" in res.stderr

    res = ci(repo, CLSUITE_CI_BASE=base)  # the whole branch against main
    assert res.returncode == 1 and f"changes since {base[:12]} (the base CLSUITE_CI_BASE=" in res.stdout
    assert "== submissions/anchor-good\nOK\n" in res.stdout and "2 of 3 submission(s) refused" in res.stderr

    git(repo, "update-ref", "refs/remotes/origin/main", base)  # a pull request's checkout: origin/main is its base
    res = ci(repo)
    assert "(the merge-base with origin/main)" in res.stdout and "2 of 3 submission(s) refused" in res.stderr

    res = ci(repo, CLSUITE_CI_BASE="no-such-ref")
    assert res.returncode == 2 and "CLSUITE_CI_BASE: 'no-such-ref' is not a commit" in res.stderr


def test_ci_without_git_history_validates_every_submission(packed, tmp_path):
    tree = tmp_path / "export"
    make_submission(tree / "submissions" / "good", packed)
    make_submission(tree / "submissions" / "bad", packed, _set("protocol.task_id_test", True))
    shutil.copy(TEMPLATE, tree / "submissions")
    (tree / "submissions" / "stray.json").write_text("{}")
    res = ci(tmp_path, str(tree))
    assert res.returncode == 1, res.stdout + res.stderr
    assert "not a git checkout: validating every submission under submissions/" in res.stdout
    assert "== submissions/good\nOK\n" in res.stdout
    assert "== submissions/bad\nFAILED\n  rejected: submissions/bad/checklist.yaml: protocol.task_id_test:" in res.stdout
    assert "submissions/stray.json: not in a submission folder" in res.stdout
    assert "TEMPLATE" not in res.stdout and "2 of 3 submission(s) refused" in res.stderr
