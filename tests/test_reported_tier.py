"""The *reported* tier: published numbers (leaderboards/reported/) shown on a real sequence's board page beside the
suite's runs, never ranked, pooled or compared with them; no submission or record can claim the tier."""
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from records_factory import make_record, reference, write

from suite.cli import main
from suite.config.sequences import load_sequence
from suite.leaderboard.boards import BoardError, board_for, load_boards, load_verifications
from suite.leaderboard.build import build_site
from suite.leaderboard.reported import METRICS, check_reported, load_reported
from suite.leaderboard.submit import pack, validate_submission

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "leaderboards" / "reported" / "mtil-order-1.yaml"
SEEDS = (0, 1, 2, 3, 4)  # the boards' min_seeds
XSS = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """Ranked runs (mini-mtil, the same board as mtil-order-1): seq and pegp with five seeds."""
    base = reference()
    recs = [make_record(base, s, "seq", -0.01 * s) for s in SEEDS] + [make_record(base, s, "pegp", 0.04 + 0.01 * s)
                                                                      for s in SEEDS]
    return write(tmp_path_factory.mktemp("results"), recs)


def _page(site: Path) -> str:
    return (site / "class-incremental.html").read_text()


def _section(page: str, seq: str) -> str:
    """The page's part for one sequence (from its heading to the next sequence's)."""
    return page.split(f'<h2 id="{seq}">', 1)[1].split("<h2 id=", 1)[0]


def _rows(table_html: str) -> list[list[str]]:
    body = table_html.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return [re.findall(r"<td[^>]*>(.*?)</td>", r, re.S) for r in body.split("<tr")[1:]]


# --------------------------------------------------------------------------------------------- the data
def test_data_file_validates_and_names_a_real_sequence_on_a_board():
    reported = load_reported()
    assert "mtil-order-1" in reported
    data = reported["mtil-order-1"]
    assert check_reported(yaml.safe_load(DATA.read_text()), DATA) == data
    boards = load_boards()
    for seq in reported:
        load_sequence(seq)  # a sequence the suite keeps
        assert board_for(boards, seq) is not None
    assert board_for(boards, "mtil-order-1")["track"] == load_sequence("mtil-order-1").track == "class-incremental"
    methods = [e["method"] for e in data["entries"]]
    for needed in ("Zero-shot CLIP", "ZSCL", "MoE-Adapters", "DIKI", "RAIL", "GIFT", "DPW"):
        assert needed in methods
    for e in data["entries"]:
        assert all(0 <= e[m] <= 100 for m in METRICS)
        assert e["source"]["title"] and e["source"]["venue"] and re.fullmatch(r"\d{4}\.\d{4,5}", e["source"]["arxiv"])
        assert e["checked_where"] if e["checked"] else e["taken_from"]
    batchwise = {e["method"] for e in data["entries"] if "batch-wise task inference" in e.get("protocol_note", "")}
    assert {"MoE-Adapters", "DIKI", "DPW"} <= batchwise


# --------------------------------------------------------------------------------------------- the page
def test_page_lists_every_reported_entry_with_the_file_numbers(records, tmp_path):
    build_site(records, tmp_path / "site")
    page = _page(tmp_path / "site")
    part = _section(page, "mtil-order-1")
    assert "No runs of this suite on mtil-order-1 yet." in part  # no records: the runs' part is empty
    rows = _rows(part.split('<table class="reported">', 1)[1])
    entries = yaml.safe_load(DATA.read_text())["entries"]
    assert len(rows) == len(entries)
    for cells, e in zip(rows, entries):
        assert cells[0].split("<br>")[0] == e["method"]
        assert [float(c) for c in cells[1:4]] == [e[m] for m in METRICS]
        assert f"arXiv:{e['source']['arxiv']}" in cells[4]
        assert cells[5].startswith("checked: " if e["checked"] else "not checked; from: ")
    assert "tier <span class=\"tier-reported\">reported</span>; not ranked" in part


def test_reported_entries_are_never_ranked_or_compared(records, tmp_path):
    build_site(records, tmp_path / "site")
    page = _page(tmp_path / "site")
    names = {e["method"] for e in load_reported()["mtil-order-1"]["entries"]}
    ranked = page.split('<table class="sortable"', 1)[1].split("</table>", 1)[0]
    ranked_methods = {re.search(r'<a href="[^"]*">(.*?)</a>', r).group(1) for r in ranked.split("<tr")[2:]}
    assert ranked_methods == {"seq", "pegp"}  # the suite's runs only
    assert not any(n in ranked for n in names)
    reported = page.split('<section class="reported"', 1)[1].split("</section>", 1)[0]
    assert "sortable" not in reported and "tie" not in reported.replace("tier", "")  # no ranks, no tie comparisons
    assert not re.search(r"<th[^>]*>#</th>", reported)
    index = (tmp_path / "site" / "index.html").read_text()
    leaders = index.split('<table class="leaders">', 1)[1].split("</table>", 1)[0]
    assert not any(f">{n}<" in leaders for n in names)
    assert "2 entries over" in index  # the runs only; the published numbers are counted apart
    assert f"{len(load_reported()['mtil-order-1']['entries'])} published results listed apart" in index


def test_user_text_in_a_reported_file_is_escaped(records, tmp_path, monkeypatch):
    boards = tmp_path / "boards"
    shutil.copytree(REPO / "leaderboards", boards, ignore=shutil.ignore_patterns("site"))
    data = yaml.safe_load(DATA.read_text())
    data["entries"][0]["method"] = XSS
    data["entries"][0]["protocol_note"] = "</td><script>alert(2)</script>"
    (boards / "reported" / "mtil-order-1.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.setenv("CLSUITE_BOARDS_DIR", str(boards))
    build_site(records, tmp_path / "site")
    page = _page(tmp_path / "site")
    assert XSS not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "<script>alert" not in page


# ------------------------------------------------------------------------------------- refusing the tier
def _submission(folder: Path, tmp_path: Path) -> Path:
    files = [str(p) for p in sorted(folder.glob("*.json")) if json.loads(p.read_text())["method"]["name"] == "pegp"]
    return pack(files, tmp_path / "sub.json")


@pytest.mark.parametrize("where", ["submission", "record"])
def test_a_submission_claiming_reported_is_refused_in_one_line(records, tmp_path, where, capsys):
    sub_path = _submission(records, tmp_path)
    assert validate_submission(sub_path) == []
    sub = json.loads(sub_path.read_text())
    (sub if where == "submission" else sub["records"][0])["tier"] = "reported"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(sub))
    problems = validate_submission(bad)
    assert problems and all("\n" not in p for p in problems)  # a refused record also leaves its entry a seed short
    field = "tier: 'reported'" if where == "submission" else "records.0: tier: 'reported'"
    assert f"{bad}: {field} is the tier of published numbers" in problems[0]
    assert main(["validate", str(bad)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("rejected: ") and out.count("\n") == len(problems)


def test_a_record_claiming_reported_is_refused_by_the_build(records, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(records, results)
    first = sorted(results.glob("*.json"))[0]
    rec = json.loads(first.read_text())
    rec["tier"] = "Reported"
    first.write_text(json.dumps(rec))
    build_site(results, tmp_path / "site")
    refused = (tmp_path / "site" / "refused.html").read_text()
    assert f"{first.name}: tier: &#39;reported&#39; is the tier of published numbers" in refused


def test_a_reported_file_of_a_sequence_on_no_board_is_refused(tmp_path):
    data = yaml.safe_load(DATA.read_text())
    data["sequence"] = "mtil-order-9"
    (tmp_path / "reported").mkdir()
    path = tmp_path / "reported" / "mtil-order-9.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(BoardError, match=re.escape(f"{path}: sequence: 'mtil-order-9' is on no board")):
        load_reported(tmp_path, boards=load_boards())


def test_the_verification_file_cannot_grant_reported(tmp_path):
    (tmp_path / "verified.yaml").write_text(yaml.safe_dump([{"digest": "0" * 64, "tier": "reported"}]))
    with pytest.raises(BoardError, match="tier: reproduced"):
        load_verifications(tmp_path)


# ------------------------------------------------------------------------------------- a bad data file
def _bad(tmp_path: Path, change) -> Path:
    data = yaml.safe_load(DATA.read_text())
    change(data)
    folder = tmp_path / "boards" / "reported"
    folder.mkdir(parents=True)
    (folder / "mtil-order-1.yaml").write_text(yaml.safe_dump(data))
    return tmp_path / "boards"


@pytest.mark.parametrize("change,field,words", [
    (lambda d: d["entries"][2].pop("source"), "entries.2.source", "required"),
    (lambda d: d["entries"][0]["source"].pop("arxiv"), "entries.0.source.arxiv", "required"),
    (lambda d: d["entries"][1].__setitem__("last", 101.5), "entries.1.last", "maximum of 100"),
    (lambda d: d["entries"][3].__setitem__("transfer", -0.1), "entries.3.transfer", "minimum of 0"),
    (lambda d: d["entries"][4].__setitem__("avg", "77.8"), "entries.4.avg", "not of type 'number'"),
    (lambda d: d["entries"][5].__setitem__("checked", False), "entries.5.taken_from", "required"),
    (lambda d: d.__setitem__("sequence", "mtil-order-2"), "sequence", "named for 'mtil-order-1'"),
])
def test_a_bad_data_file_is_refused_in_one_line_naming_file_and_field(tmp_path, monkeypatch, capsys, change, field,
                                                                       words):
    root = _bad(tmp_path, change)
    path = root / "reported" / "mtil-order-1.yaml"
    with pytest.raises(BoardError) as err:
        load_reported(root)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{path}: {field}: ") and words in msg, msg
    for name in ("class-incremental.yaml", "domain-incremental.yaml", "cross-modal.yaml", "verified.yaml"):
        shutil.copy(REPO / "leaderboards" / name, root / name)
    shutil.copytree(REPO / "leaderboards" / "templates", root / "templates")
    monkeypatch.setenv("CLSUITE_BOARDS_DIR", str(root))
    (tmp_path / "results").mkdir()
    with pytest.raises(BoardError, match=re.escape(f"{path}: {field}: ")):
        build_site(tmp_path / "results", tmp_path / "site")
    assert not (tmp_path / "site").exists()
