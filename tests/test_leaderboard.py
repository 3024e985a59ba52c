"""Leaderboard: a site built only from records that pass every check, safe to build anywhere, escaped, readable in
a browser; submissions validated by recomputation; the reproduced tier only from the maintainers' file."""
import json
import shutil
from pathlib import Path

import pytest
import yaml
from records_factory import make_record, reference, write

from suite.cli import main
from suite.cli.reference import sequences_page
from suite.config.sequences import load_sequence, load_sequence_version
from suite.engine.runner import RunConfig, run
from suite.leaderboard.boards import BoardError, board_for, load_boards, off_budget, stale_reason, suite_compatible, triage
from suite.leaderboard.build import MARKER, build_site
from suite.leaderboard.submit import pack, validate_submission
from suite.results.calibration import load_committed_report
from suite.results.records import read_records, recompute_aggregates

XSS = "<img src=x onerror=alert(1)>"
REPO = Path(__file__).resolve().parents[1]
SEEDS = (0, 1, 2, 3, 4)  # the boards' min_seeds


@pytest.fixture(scope="module")
def board_records(tmp_path_factory):
    """On-budget records of mini-mtil: seq and pegp with five seeds each, zeroshot with one, and an
    outside method whose name and options try to inject markup."""
    base = reference()
    recs = [make_record(base, s, "seq", -0.01 * s) for s in SEEDS]
    recs += [make_record(base, s, "pegp", 0.04 + 0.01 * s) for s in SEEDS]
    recs.append(make_record(reference(method="zeroshot", pet="none"), 0))  # one seed: not ranked
    for seed in SEEDS:
        xss = make_record(base, seed, XSS, 0.02)
        xss["method"]["options"] = {"note": "</code><script>alert(2)</script>"}
        xss["summary"].pop("zero_shot_retention")  # an entry with a missing value
        recs.append(xss)
    return write(tmp_path_factory.mktemp("results"), recs)


def test_site_has_boards_entries_figures_and_escapes(board_records, tmp_path):
    index = build_site(board_records, tmp_path / "site")
    site = tmp_path / "site"
    assert "class-incremental.html" in index.read_text() and (site / MARKER).is_file()
    board = (site / "class-incremental.html").read_text()
    assert "mini-mtil" in board and "pegp" in board and '<table class="sortable"' in board
    assert XSS not in board and "&lt;img src=x onerror=alert(1)&gt;" in board
    entries = list((site / "entries").glob("*/index.html"))
    assert len(entries) == 4
    for e in entries:
        page = e.read_text()
        assert "<script>alert" not in page
        for name in ("tasks", "matrix", "controls", "hallucination"):
            svg = (e.parent / f"{name}.svg").read_text()
            assert "<svg" in svg and "<text" in svg  # fonts kept as text
    assert "http://" not in board and "https://" not in board  # nothing fetched from the internet
    # the committed calibration report's board signal (issue 35): its share of entry pairs resolved on Last
    committed = load_committed_report("mini-mtil")["entry_pairs"]
    assert f"{committed['resolved']} of {committed['pairs']} pairs" in board
    for img in board.split("<img")[1:]:
        assert 'alt="' in img.split(">")[0] and 'alt=""' not in img.split(">")[0]


def test_board_shows_intervals_ties_and_refuses_to_rank_too_few_seeds(board_records, tmp_path):
    assert yaml.safe_load((REPO / "leaderboards" / "class-incremental.yaml").read_text())["min_seeds"] == len(SEEDS)
    build_site(board_records, tmp_path / "site")
    board = (tmp_path / "site" / "class-incremental.html").read_text()
    ranked, _, unranked = board.partition(f"Not ranked: fewer than {len(SEEDS)} seed(s).")
    assert "pegp" in ranked and "seq" in ranked and " ± " in ranked
    assert "zeroshot" in unranked and "zeroshot" not in ranked.split("<table", 1)[1]


def test_overlapping_intervals_are_ties():
    from suite.leaderboard.build import rank_entries
    from suite.results.analysis import group_records

    base = reference()
    close = [make_record(base, s, "a", 0.01 * s) for s in (0, 1, 2)] + [make_record(base, s, "b", 0.005 + 0.01 * s)
                                                                         for s in (0, 1, 2)]
    far = [make_record(base, s, "c", -0.3) for s in (0, 1, 2)]
    ranks = {i["group"].method: (i["rank"], i["tied"]) for i in rank_entries(group_records(close + far), "last")}
    assert ranks["b"] == ("1", True) and ranks["a"] == ("=1", True) and ranks["c"] == ("3", False)


def test_refuses_to_build_over_folders_it_did_not_make(board_records, tmp_path, monkeypatch, capsys):
    before = sorted(p.name for p in REPO.iterdir())
    results_before = sorted(p.name for p in (REPO / "results").iterdir())
    monkeypatch.chdir(REPO)
    assert main(["leaderboard", "build", "--results", str(board_records), "--out", "."]) == 2
    assert main(["leaderboard", "build", "--results", str(board_records), "--out", "results"]) == 2
    assert main(["leaderboard", "build", "--results", str(board_records), "--out", str(board_records)]) == 2
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    assert main(["leaderboard", "build", "--results", str(board_records), "--out", str(other)]) == 2
    err = capsys.readouterr().err
    assert "repository root" in err and "results folder" in err and "not a site clsuite built" in err
    assert sorted(p.name for p in REPO.iterdir()) == before
    assert sorted(p.name for p in (REPO / "results").iterdir()) == results_before
    assert (other / "keep.txt").read_text() == "mine"


def test_failed_build_leaves_previous_site_intact(board_records, tmp_path, monkeypatch):
    import suite.leaderboard.build as build

    site = tmp_path / "site"
    build_site(board_records, site)
    snapshot = {p.relative_to(site): p.read_bytes() for p in site.rglob("*") if p.is_file()}

    def broken(*a, **k):
        raise RuntimeError("figure failed half-way")

    monkeypatch.setattr(build, "entry_figures", broken)
    with pytest.raises(RuntimeError, match="half-way"):
        build_site(board_records, site)
    assert {p.relative_to(site): p.read_bytes() for p in site.rglob("*") if p.is_file()} == snapshot
    assert [p.name for p in tmp_path.iterdir()] == ["site"]  # no temporary folder left behind


def test_hostile_names_stay_inside_the_site(tmp_path):
    base = reference()
    recs = [make_record(base, 0, "../../escape", 0.01), make_record(base, 0, "m" * 300, 0.02)]
    recs[1]["pet"]["kind"] = "../" * 40 + "lora"
    index = build_site(write(tmp_path / "res", recs), tmp_path / "out" / "site")
    site = index.parent.resolve()
    files = [p.resolve() for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert files and all(site in p.parents for p in files)
    assert all(len(p.name) <= 100 for p in files)
    assert "escape" in (site / "class-incremental.html").read_text()


def test_fabricated_records_are_listed_as_rejected_not_ranked(tmp_path):
    base = reference("world-class-incremental")  # refused alike on a control sequence
    tiny = make_record(base, 0, "one-by-one", 0.0)
    tiny["matrix"], tiny["zero_shot"]["tasks"] = [[0.99]], [0.5]
    tiny["sequence"]["tasks"] = tiny["sequence"]["tasks"][:1]
    tiny["steps"] = tiny["steps"][:1]
    tiny["aggregates"] = {k: None for k in tiny["aggregates"]}
    pins = make_record(base, 0, "wrong-manifest", 0.0)
    pins["sequence"]["manifests"]["ci-1"] = "0" * 64
    claims = make_record(base, 0, "claims-more", 0.0)
    claims["aggregates"]["last"] = 0.99
    version = make_record(base, 0, "old-version", 0.0)
    version["sequence"]["version"] = 99
    tier = make_record(base, 0, "self-verified", 0.0)
    tier["verification"] = {"tier": "reproduced"}
    short = make_record(base, 0, "short-budget", 0.0)
    short["training"]["iterations"] = 5
    dup = [make_record(base, 3, "dup", 0.0), make_record(base, 3, "dup", 0.0)]
    (tmp_path / "res").mkdir()
    (tmp_path / "res" / "garbage.json").write_text("{not json")
    build_site(write(tmp_path / "res", [tiny, pins, claims, version, tier, short] + dup), tmp_path / "site")
    board = (tmp_path / "site" / "class-incremental.html").read_text()
    refused = (tmp_path / "site" / "refused.html").read_text()
    for name in ("one-by-one", "wrong-manifest", "claims-more", "old-version", "short-budget"):
        assert name not in board
    assert "matrix: must be complete 5 x 5" in refused or "sequence.tasks" in refused
    assert "sequence.manifests.ci-1" in refused and "aggregates.last: submitted 0.99" in refused
    assert "sequence.version: 99" in refused and "training.iterations: 5" in refused
    assert "duplicate of seed 3" in refused and "not valid JSON" in refused
    assert "self-verified" in board and "tier-reproduced" not in board  # a record cannot grant itself a tier


def test_reproduced_tier_comes_from_the_verification_file(board_records, tmp_path, monkeypatch):
    from suite.results.records import record_digest

    boards = tmp_path / "boards"
    shutil.copytree(REPO / "leaderboards", boards, ignore=shutil.ignore_patterns("site"))
    recs = [json.loads(p.read_text()) for p in sorted(board_records.glob("*.json"))]
    pegp = [r for r in recs if r["method"]["name"] == "pegp"]
    (boards / "verified.yaml").write_text(yaml.safe_dump([{"digest": record_digest(r), "tier": "reproduced"} for r in pegp]))
    monkeypatch.setenv("CLSUITE_BOARDS_DIR", str(boards))
    build_site(board_records, tmp_path / "site")
    board = (tmp_path / "site" / "class-incremental.html").read_text()
    rows = [r.split("</tr>")[0] for r in board.split("<tr")[1:]]
    assert "tier-reproduced" in next(r for r in rows if ">pegp</a>" in r)
    assert sum("tier-reproduced" in r for r in rows) == 1


RAIL_NA = ("no retrieval head (RAIL answers with a regression head over class names; the cross-modal track ranks "
           "image–text retrieval)")


def test_cross_modal_board_shows_rail_as_not_applicable_with_its_reason(tmp_path, monkeypatch):
    """The board's ``not_applicable`` is data: listed as n/a with its reason below the table, never ranked or counted;
    a (fabricated) record of the method on that board is refused, not ranked."""
    base = reference("world-cross-modal", "seq", "adapter")
    recs = [make_record(base, s, "seq", -0.01 * s) for s in SEEDS] + [make_record(base, s, "rail", 0.05) for s in SEEDS]
    index = build_site(write(tmp_path / "res", recs), tmp_path / "site")
    board = (tmp_path / "site" / "cross-modal.html").read_text()
    ranked, _, rest = board.partition("<h2>Not applicable on this track</h2>")
    assert ">seq</a>" in ranked and "rail" not in ranked
    assert f'<span class="name">rail</span> — n/a: {RAIL_NA}</li>' in rest
    assert "1 entries over world-cross-modal" in index.read_text()  # seq only: rail is not an entry
    refused = (tmp_path / "site" / "refused.html").read_text()
    assert refused.count("method.name: &#39;rail&#39; does not apply on board cross-modal (n/a: no retrieval head") == len(SEEDS)
    assert "Not applicable on this track" not in (tmp_path / "site" / "class-incremental.html").read_text()
    boards = tmp_path / "boards"  # the method and reason are text, escaped like everything else
    shutil.copytree(REPO / "leaderboards", boards, ignore=shutil.ignore_patterns("site"))
    data = yaml.safe_load((boards / "cross-modal.yaml").read_text())
    data["not_applicable"][XSS] = XSS
    (boards / "cross-modal.yaml").write_text(yaml.safe_dump(data, allow_unicode=True))
    monkeypatch.setenv("CLSUITE_BOARDS_DIR", str(boards))
    build_site(tmp_path / "res", tmp_path / "site")
    board = (tmp_path / "site" / "cross-modal.html").read_text()
    assert XSS not in board and "&lt;img src=x onerror=alert(1)&gt;</span> — n/a: &lt;img src=x" in board


@pytest.mark.parametrize("reason,words", [("", "should be non-empty"), ("   ", "does not match"),
                                          (3, "not of type 'string'"), (None, "not of type 'string'")])
def test_a_bad_not_applicable_reason_is_refused_in_one_line(tmp_path, monkeypatch, reason, words):
    boards = tmp_path / "boards"
    shutil.copytree(REPO / "leaderboards", boards, ignore=shutil.ignore_patterns("site"))
    path = boards / "cross-modal.yaml"
    data = yaml.safe_load(path.read_text())
    assert data["not_applicable"]["rail"] == RAIL_NA
    data["not_applicable"]["rail"] = reason
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    with pytest.raises(BoardError) as err:
        load_boards(boards)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{path}: not_applicable.rail: ") and words in msg, msg
    monkeypatch.setenv("CLSUITE_BOARDS_DIR", str(boards))
    (tmp_path / "results").mkdir()
    with pytest.raises(BoardError, match="not_applicable.rail: "):
        build_site(tmp_path / "results", tmp_path / "site")
    assert not (tmp_path / "site").exists()


def test_a_control_sequence_is_listed_apart_and_never_ranked(tmp_path):
    """world-class-incremental is the class-incremental board's control sequence (nothing forgets there): its
    entries are checked and shown under the reason, in the order ranking would give, never ranked or leaders."""
    base = reference("world-class-incremental")
    recs = [make_record(base, s, "seq", -0.01 * s) for s in SEEDS] + [make_record(base, s, "pegp", 0.05) for s in SEEDS]
    build_site(write(tmp_path / "res", recs), tmp_path / "site")
    board = (tmp_path / "site" / "class-incremental.html").read_text()
    section = board.split('<h2 id="world-class-incremental">', 1)[1].split("<h2 ", 1)[0]
    assert "control, not ranked" in section and "a positive-transfer control" in section
    assert 'data-kind="ranked"' not in section and 'data-kind="unranked"' in section and 'class="tie"' not in section
    assert section.index(">pegp</a>") < section.index(">seq</a>")  # pegp's higher Last first, without a rank
    index = (tmp_path / "site" / "index.html").read_text()
    assert "the control sequence(s) world-class-incremental (listed, not ranked)" in index
    assert 'class="leaders"' not in index and "#board-class-incremental) (control)" in sequences_page()


def test_a_bad_control_sequence_is_refused_in_one_line_and_its_reason_escaped(tmp_path, monkeypatch):
    boards = tmp_path / "boards"
    shutil.copytree(REPO / "leaderboards", boards, ignore=shutil.ignore_patterns("site"))
    path = boards / "class-incremental.yaml"
    data = yaml.safe_load(path.read_text())
    data["control_sequences"]["mini-mtil"] = "ranked and a control"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    with pytest.raises(BoardError) as err:
        load_boards(boards)
    assert str(err.value) == f"{path}: control_sequences.mini-mtil: also in sequences (ranked or a control, not both)"
    del data["control_sequences"]["mini-mtil"]
    data["control_sequences"]["world-class-incremental"] = XSS
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    monkeypatch.setenv("CLSUITE_BOARDS_DIR", str(boards))
    build_site(write(tmp_path / "res", [make_record(reference("world-class-incremental"), 0, "seq")]), tmp_path / "site")
    board = (tmp_path / "site" / "class-incremental.html").read_text()
    assert XSS not in board and "Why it is a\ncontrol: &lt;img src=x onerror=alert(1)&gt;" in board


def older_version(rec: dict, version: int = 2) -> dict:
    """``rec`` as a record of an archived version of its sequence: that version's tasks, pins and budget."""
    seq = load_sequence_version(rec["sequence"]["name"], version)
    rec["sequence"]["version"] = version
    rec["sequence"]["tasks"] = [t.name for t in seq.tasks]
    rec["sequence"]["manifests"] = {s.name: s.pinned_manifest for s in seq.tasks + seq.control_sets if s.pinned_manifest}
    rec["training"] = seq.default_training(rec["pet"]["kind"], rec["method"]["name"])
    return rec


@pytest.mark.parametrize("version,current,ok", [
    ("0.1.0", "0.1.0", True), ("0.1.7", "0.1.0", True), ("0.1.0+g1234", "0.1.3", True), ("0.0.9", "0.1.0", False),
    ("0.2.0", "0.1.0", False), ("1.4.0", "1.0.2", True), ("2.0.0", "1.9.0", False), ("1.0.0", "0.1.0", False),
    ("0+unknown", "0.1.0", False), (None, "0.1.0", False), ("", "0.1.0", False)])
def test_suite_compatibility_is_the_series(version, current, ok):
    assert suite_compatible(version, current) is ok


def test_committed_records_are_all_current():
    """Current, and each with its thread count, so the board's ``clsuite reproduce`` command re-runs it at that
    count (bit-identical on its machine) without a ``--threads`` the reader would have to know."""
    good, bad = read_records([REPO / "results"], validate=False)
    assert good and not bad
    versions = {}
    for path, rec in good:
        name = rec["sequence"]["name"]
        versions.setdefault(name, load_sequence(name).version)
        assert stale_reason(rec, versions[name]) is None, path.name
        assert isinstance(rec["environment"].get("threads"), int), path.name


def test_triage_sets_stale_records_apart_and_holds_them_to_their_own_budget():
    base = reference("world-class-incremental")  # a control sequence: triaged like a ranked one
    current = [make_record(base, s, "pegp", 0.0) for s in (0, 1)]
    old = [older_version(make_record(base, s, "pegp", 0.1)) for s in (0, 1)]  # the same seeds: not duplicates
    off = older_version(make_record(base, 2, "pegp", 0.1))
    off["training"] = dict(current[0]["training"])  # v2 record on the v3 budget
    suite = make_record(base, 0, "seq", 0.0)
    suite["environment"]["suite"] = "0.0.9"
    boards = load_boards()
    named = [(f"r{i}.json", r) for i, r in enumerate(current + old + [off, suite])]
    tri = triage(named, boards, {}, suite="0.1.4")
    assert [g.method for g in tri.groups] == ["pegp"] and tri.groups[0].seeds == [0, 1]
    assert {(s.group.method, tuple(s.group.seeds), s.reason) for s in tri.stale} == {
        ("pegp", (0, 1), "sequence v2, current v3"), ("seq", (0,), "suite 0.0.9, current 0.1.x")}
    assert tri.rejected == [] and [n for n, _ in tri.off_budget] == ["r4.json"]
    assert "training.iterations: 100 but the board's budget is the sequence's 60" in tri.off_budget[0][1]
    board = board_for(boards, "world-class-incremental")
    assert off_budget(old[0], board) == "sequence.version: v2, but the board ranks v3"  # what submissions must meet
    assert off_budget(old[0], board, own_version=True) is None
    assert {s.tier for s in tri.stale} == {"self-reported"}


# ----------------------------------------------------------------------------------------- submissions
def _submission(folder: Path, tmp_path: Path, name: str = "sub.json", method: str = "pegp") -> Path:
    files = [str(p) for p in sorted(folder.glob("*.json")) if json.loads(p.read_text())["method"]["name"] == method]
    return pack(files, tmp_path / name)


def _mutate(path: Path, fn) -> Path:
    sub = json.loads(path.read_text())
    fn(sub)
    out = path.with_name("bad-" + path.name)
    out.write_text(json.dumps(sub, allow_nan=True))
    return out


def test_valid_submission_passes(board_records, tmp_path):
    sub = _submission(board_records, tmp_path)
    assert validate_submission(sub) == []
    assert main(["validate", str(sub)]) == 0


def test_an_accepted_submission_ends_on_the_board(board_records, tmp_path):
    """submit → validate → accept (records into a results folder) → build: the entry is ranked."""
    results = tmp_path / "results"
    results.mkdir()
    for p in board_records.glob("*.json"):  # the board as it was, without the submitted method
        if json.loads(p.read_text())["method"]["name"] != "pegp":
            shutil.copy(p, results / p.name)
    sub = _submission(board_records, tmp_path)
    assert main(["accept", str(sub), "--results", str(results)]) == 0
    assert len([p for p in results.glob("*.json") if json.loads(p.read_text())["method"]["name"] == "pegp"]) == len(SEEDS)
    assert main(["accept", str(sub), "--results", str(results)]) == 0  # the same records again: no change
    build_site(results, tmp_path / "site")
    page = (tmp_path / "site" / "class-incremental.html").read_text()
    assert ">pegp<" in page
    bad = _mutate(sub, lambda s: s["records"][0]["aggregates"].__setitem__("last", 0.999))
    before = sorted(p.name for p in results.glob("*.json"))
    assert main(["accept", str(bad), "--results", str(results)]) == 2
    assert sorted(p.name for p in results.glob("*.json")) == before


@pytest.mark.parametrize("case,needle", [
    ("schema", "records.0: seed"),
    ("board", "unknown board"),
    ("manifest", "sequence.manifests.shapes"),
    ("aggregate", "aggregates.last"),
    ("nan", "non-finite"),
    ("empty", "holds no records"),
    ("duplicate", "appears twice"),
    ("budget", "training.lr"),
    ("items_missing", "steps.items: every step must keep its item outcomes"),
    ("items_wrong", "the items give accuracy"),
    ("no_reference", "zero_shot.reference"),
    ("memory", "method.protocol.memory: 2000 stored examples, but board class-incremental allows 0 (rehearsal-free)"),
    ("task_id_test", "method.protocol.task_id_test: the method is given the task id at test"),
    ("batchwise", "method.protocol.routing: 'per-batch'"),
])
def test_validate_rejects_with_one_line_reason(board_records, tmp_path, case, needle, capsys):
    sub = _submission(board_records, tmp_path)

    def schema(s):
        s["records"][0]["seed"] = "zero"

    def board(s):
        s["board"] = "sideways-learning"

    def manifest(s):
        s["records"][0]["sequence"]["manifests"]["shapes"] = "0" * 64

    def aggregate(s):
        s["records"][1]["aggregates"]["last"] += 0.05

    def nan(s):
        s["records"][0]["matrix"][2][1] = float("nan")

    def empty(s):
        s["records"] = []

    def duplicate(s):
        s["records"][1] = s["records"][0]

    def budget(s):
        s["records"][2]["training"]["lr"] = 0.5

    def items_missing(s):
        del s["records"][1]["steps"][2]["items"]

    def items_wrong(s):  # a claimed accuracy the item outcomes do not give (aggregates kept consistent)
        rec = s["records"][1]
        rec["matrix"][2][0] = rec["steps"][2]["accuracy"][0] = min(1.0, rec["matrix"][2][0] + 0.05)
        rec["aggregates"] = recompute_aggregates(rec)

    def no_reference(s):
        del s["records"][0]["zero_shot"]["reference"]

    def protocol(**flags):  # a record whose method declares what the board does not allow
        def change(s):
            s["records"][1]["method"]["protocol"] = {"task_id_train": False, "task_id_test": False, "memory": 0,
                                                     "routing": "none", "extra_forward": 0, **flags}
        return change

    memory, task_id_test, batchwise = protocol(memory=2000), protocol(task_id_test=True), protocol(routing="per-batch")

    bad = _mutate(sub, locals()[case])
    problems = validate_submission(bad)
    assert problems and all("\n" not in p for p in problems)
    assert any(needle in p for p in problems), problems
    assert main(["validate", str(bad)]) == 1
    assert capsys.readouterr().out.startswith("rejected: ")


def test_validate_rejects_too_few_seeds(board_records, tmp_path, monkeypatch):
    boards = tmp_path / "boards"
    shutil.copytree(REPO / "leaderboards", boards, ignore=shutil.ignore_patterns("site"))
    ci = boards / "class-incremental.yaml"
    data = yaml.safe_load(ci.read_text())
    data["min_seeds"] = len(SEEDS) + 1
    ci.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("CLSUITE_BOARDS_DIR", str(boards))
    problems = validate_submission(_submission(board_records, tmp_path))
    assert any(f"has {len(SEEDS)} seed(s); the board needs {len(SEEDS) + 1}" in p for p in problems)


def test_reproduce_writes_the_verification_file_not_the_record(seq_file, tmp_path):
    from suite.experiments.reproduce import reproduce
    from suite.results.records import record_digest

    out = tmp_path / "res"
    rec = run(RunConfig(sequence=seq_file(), model="embedded:micro-clip@random", pet="lora", method="pegp", seed=1,
                        out=str(out), run_dir=str(out / ".runs"), progress=False))
    path = next(out.glob("*.json"))
    original = path.read_text()
    verified = tmp_path / "verified.yaml"
    res = reproduce(path, out_dir=tmp_path / "rerun", verified_file=verified)
    assert res["reproduced"] and res["bit_identical"] and res["max_abs_diff"] == 0.0  # same machine: bit-identical
    assert path.read_text() == original
    (item,) = yaml.safe_load(verified.read_text())
    assert item["digest"] == record_digest(rec) and item["tier"] == "reproduced"
    tampered = json.loads(original)
    tampered["matrix"][0][0] = 1.0 - tampered["matrix"][0][0]
    bad = tmp_path / "tampered.json"
    bad.write_text(json.dumps(tampered))
    assert not reproduce(bad, out_dir=tmp_path / "rerun2", verified_file=verified)["reproduced"]
    assert len(yaml.safe_load(verified.read_text())) == 1


def test_reproduce_computes_with_the_records_thread_count(seq_file, tmp_path):
    """A run is bit-identical on its machine at the thread count it was made with (a sweep worker's share of the
    cores), so the re-run takes the record's ``environment.threads``; ``threads=`` overrides it."""
    import torch

    from suite.experiments.reproduce import reproduce

    before = torch.get_num_threads()
    out = tmp_path / "res"
    try:
        run(RunConfig(sequence=seq_file(), model="embedded:micro-clip@random", pet="lora", method="seq", seed=1,
                      out=str(out), run_dir=str(out / ".runs"), progress=False, threads=1))
        path = next(out.glob("*.json"))
        assert json.loads(path.read_text())["environment"]["threads"] == 1
        torch.set_num_threads(2)  # what a lone process on two cores would otherwise use
        res = reproduce(path, out_dir=tmp_path / "rerun", verified_file=tmp_path / "v.yaml")
        assert res["threads"] == 1 and torch.get_num_threads() == 1 and res["bit_identical"]
        rec = json.loads(path.read_text())
        rec["environment"]["threads"] = 2
        path.write_text(json.dumps(rec))
        assert reproduce(path, out_dir=tmp_path / "rerun2", verified_file=tmp_path / "v.yaml")["threads"] == 2
        assert reproduce(path, out_dir=tmp_path / "rerun3", verified_file=tmp_path / "v.yaml", threads=1)["threads"] == 1
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------- browser
def _chromium(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}", "--allow-file-access-from-files", "--window-size=1280,900"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=opts, service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"))


def test_reference_records_site_loads_without_console_errors(tmp_path):
    """The committed embedded reference records (results/) build a site every page of which loads cleanly."""
    from selenium.webdriver.common.by import By

    index = build_site(REPO / "results", tmp_path / "site")
    site = tmp_path / "site"
    pages = [index, site / "refused.html"] + sorted(site.glob("*.html")) + sorted(site.glob("entries/*/index.html"))[:4]
    driver = _chromium(tmp_path)
    try:
        for page in pages:
            driver.get(page.as_uri())
            assert driver.find_element(By.TAG_NAME, "h1").text
            for img in driver.find_elements(By.TAG_NAME, "img"):
                assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) > 100
                assert img.get_attribute("alt")
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == [], errors
    finally:
        driver.quit()


def test_board_page_in_a_browser(board_records, tmp_path):
    """Headless Chromium: no console errors, the default table fits 1,280 px, the toggle reveals the detail
    columns, sorting works, an entry without a value stays last both ways, figures and entry pages load."""
    from selenium.webdriver.common.by import By

    index = build_site(board_records, tmp_path / "site")
    driver = _chromium(tmp_path)
    try:
        driver.set_window_size(1280, 900)
        driver.get(index.as_uri())
        driver.find_element(By.LINK_TEXT, "Class-incremental continual learning of CLIP").click()
        table = driver.find_element(By.CSS_SELECTOR, "table.sortable")
        width = driver.execute_script("return document.documentElement.clientWidth")
        assert width <= 1280 and driver.execute_script("return arguments[0].getBoundingClientRect().right", table) <= width
        assert driver.execute_script("return document.documentElement.scrollWidth") <= width
        detail = table.find_element(By.CSS_SELECTOR, "th[data-col='transfer']")
        assert not detail.is_displayed()
        driver.find_element(By.CSS_SELECTOR, "button.toggle-details").click()
        assert detail.is_displayed()
        headers = [h.text for h in table.find_elements(By.TAG_NAME, "th")]

        def column(name):
            col = headers.index(name)
            return [r.find_elements(By.TAG_NAME, "td")[col].get_attribute("data-v")
                    for r in table.find_elements(By.CSS_SELECTOR, "tbody tr")]

        last = table.find_element(By.CSS_SELECTOR, "th[data-col='last']")
        last.click()
        asc = [float(v) for v in column(last.text)]
        assert asc == sorted(asc)
        last.click()
        assert [float(v) for v in column(last.text)] == sorted(asc, reverse=True)
        ret = table.find_element(By.CSS_SELECTOR, "th[data-col='zero_shot_retention']")
        for _ in range(2):  # ascending, then descending: the entry without a value is last both times
            ret.click()
            values = column(ret.text)
            assert values[-1] == "" and all(values[:-1])
        assert XSS in driver.find_element(By.TAG_NAME, "body").text  # shown as text, not run
        for img in driver.find_elements(By.CSS_SELECTOR, "img.figure"):
            assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) > 100
        driver.find_element(By.LINK_TEXT, "pegp").click()
        img = driver.find_element(By.CSS_SELECTOR, "img[src='tasks.svg']")
        assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) > 100
        driver.save_screenshot(str(tmp_path / "entry.png"))
        assert (tmp_path / "entry.png").stat().st_size > 5000
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == [], errors
    finally:
        driver.quit()


def test_ece_is_shown_only_where_its_interval_resolves_the_differences():
    from suite.leaderboard.build import unresolved_ece
    from suite.results.analysis import group_records

    base = reference()

    def seeds(method: str, value: float, half: float) -> list[dict]:
        out = []
        for s in range(3):
            r = make_record(base, s, method=method)
            r["steps"][-1]["ece"] = {"value": value, "low": value - half, "high": value + half, "bins": 15, "n": 400}
            r["summary"]["ece"] = value
            out.append(r)
        return out

    groups = group_records(seeds("a", 0.05, 0.01) + seeds("b", 0.20, 0.005) + seeds("c", 0.21, 0.03))
    by = {g.method: g for g in groups}
    hidden = unresolved_ece(groups)
    assert id(by["a"]) not in hidden           # ±1 point, 15 points from the nearest entry
    assert id(by["b"]) not in hidden           # ±0.5 point, 1 point from c
    assert hidden[id(by["c"])] == pytest.approx(0.03)  # ±3 points cannot tell c from b
