"""Leaderboard: site built from records (escaped), submissions validated by recomputation, browser-checked."""
import json
import shutil
from pathlib import Path

import pytest
import yaml

from suite.cli import main
from suite.leaderboard.build import build_site
from suite.leaderboard.submit import pack, validate_submission
from suite.runner import RunConfig, run

XSS = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """Real records of the embedded class-incremental sequence (micro model, few steps), two seeds each."""
    out = tmp_path_factory.mktemp("results")
    for method, pet in (("seq", "lora"), ("pegp", "lora")):
        for seed in (0, 1):
            run(RunConfig(sequence="world-class-incremental", model="embedded:micro-clip@random", pet=pet, method=method,
                          seed=seed, training={"iterations": 2, "batch_size": 8}, max_eval=8, out=str(out),
                          run_dir=str(out / ".runs"), progress=False))
    # an outside method whose name tries to inject markup
    rec = json.loads(next(out.glob("*seq*__s0__*.json")).read_text())
    rec["method"]["name"] = XSS
    rec["method"]["options"] = {"note": "</code><script>alert(2)</script>"}
    rec["run_id"] = "xss"
    (out / "xss.json").write_text(json.dumps(rec))
    return out


def test_site_has_boards_entries_plots_and_escapes(records, tmp_path):
    index = build_site(records, tmp_path / "site")
    html = index.read_text()
    assert "class-incremental.html" in html
    board = (tmp_path / "site" / "class-incremental.html").read_text()
    assert "world-class-incremental" in board and "pegp" in board and "<table class=\"sortable\"" in board
    assert XSS not in board and "&lt;img src=x onerror=alert(1)&gt;" in board
    entries = list((tmp_path / "site" / "entries").glob("*/index.html"))
    assert len(entries) == 3
    for e in entries:
        page = e.read_text()
        assert "<script>alert" not in page
        for png in ("forgetting.png", "heatmap.png", "retention.png", "hallucination.png"):
            assert (e.parent / png).stat().st_size > 1000
    assert "http://" not in board and "https://" not in board  # nothing fetched from the internet


def _submission(records, tmp_path, name="sub.json"):
    files = sorted(str(p) for p in records.glob("*pegp*.json"))
    return pack(files, tmp_path / name)


def _mutate(path: Path, fn) -> Path:
    sub = json.loads(path.read_text())
    fn(sub)
    out = path.with_name("bad-" + path.name)
    out.write_text(json.dumps(sub, allow_nan=True))
    return out


def test_valid_submission_passes(records, tmp_path, capsys):
    sub = _submission(records, tmp_path)
    assert validate_submission(sub) == []
    assert main(["validate", str(sub)]) == 0


@pytest.mark.parametrize("case,needle", [
    ("schema", "records.0: seed"),
    ("board", "unknown board"),
    ("manifest", "sequence.manifests.ci-1"),
    ("aggregate", "aggregates.last"),
    ("nan", "non-finite"),
])
def test_validate_rejects_with_one_line_reason(records, tmp_path, case, needle, capsys):
    sub = _submission(records, tmp_path)

    def schema(s):
        s["records"][0]["seed"] = "zero"

    def board(s):
        s["board"] = "sideways-learning"

    def manifest(s):
        s["records"][0]["sequence"]["manifests"]["ci-1"] = "0" * 64

    def aggregate(s):
        s["records"][1]["aggregates"]["last"] += 0.05

    def nan(s):
        s["records"][0]["matrix"][2][1] = float("nan")

    bad = _mutate(sub, locals()[case])
    problems = validate_submission(bad)
    assert problems and all("\n" not in p for p in problems)
    assert any(needle in p for p in problems), problems
    assert main(["validate", str(bad)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("rejected: ")


def test_validate_rejects_too_few_seeds(records, tmp_path, monkeypatch):
    boards = tmp_path / "boards"
    shutil.copytree(Path(__file__).resolve().parents[1] / "leaderboards", boards, ignore=shutil.ignore_patterns("site"))
    ci = boards / "class-incremental.yaml"
    data = yaml.safe_load(ci.read_text())
    data["min_seeds"] = 3
    ci.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("CLSUITE_BOARDS_DIR", str(boards))
    problems = validate_submission(_submission(records, tmp_path))
    assert any("has 2 seed(s); the board needs 3" in p for p in problems)


def _chromium(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}", "--allow-file-access-from-files"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=opts, service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"))


def test_reference_records_site_loads_without_console_errors(tmp_path):
    """The committed embedded reference records (results/) build a site every page of which loads cleanly."""
    from selenium.webdriver.common.by import By

    index = build_site(Path(__file__).resolve().parents[1] / "results", tmp_path / "site")
    pages = [index] + sorted((tmp_path / "site").glob("*.html")) + sorted((tmp_path / "site").glob("entries/*/index.html"))[:4]
    driver = _chromium(tmp_path)
    try:
        for page in pages:
            driver.get(page.as_uri())
            assert driver.find_element(By.TAG_NAME, "h1").text
            for img in driver.find_elements(By.TAG_NAME, "img"):
                assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) > 100
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == [], errors
    finally:
        driver.quit()


def test_browser_loads_sorts_and_shows_plots(records, tmp_path):
    """Headless Chromium (Debian chromium + chromium-driver): no console errors, sorting works, plots load."""
    from selenium.webdriver.common.by import By

    index = build_site(records, tmp_path / "site")
    driver = _chromium(tmp_path)
    try:
        driver.get(index.as_uri())
        driver.find_element(By.LINK_TEXT, "Class-incremental continual learning of CLIP").click()
        table = driver.find_element(By.CSS_SELECTOR, "table.sortable")
        header = table.find_element(By.CSS_SELECTOR, "th[data-col='last']")
        col = [h.text for h in table.find_elements(By.TAG_NAME, "th")].index(header.text)

        def column():
            return [float(r.find_elements(By.TAG_NAME, "td")[col].get_attribute("data-v") or "nan")
                    for r in table.find_elements(By.CSS_SELECTOR, "tbody tr")]

        header.click()
        asc = column()
        assert asc == sorted(asc)
        header.click()
        assert column() == sorted(asc, reverse=True)
        assert "sorted-desc" in header.get_attribute("class")
        # the injected method name is shown as text, not run
        assert XSS in driver.find_element(By.TAG_NAME, "body").text
        driver.find_element(By.PARTIAL_LINK_TEXT, "pegp").click()
        img = driver.find_element(By.CSS_SELECTOR, "img[alt='forgetting plot']")
        assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) > 100
        driver.save_screenshot(str(tmp_path / "entry.png"))
        assert (tmp_path / "entry.png").stat().st_size > 5000
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == [], errors
    finally:
        driver.quit()


def test_reproduce_marks_entry_reproduced(records, tmp_path):
    from suite.leaderboard.submit import reproduce

    src = next(records.glob("*pegp*__s1__*.json"))
    copy_path = tmp_path / src.name
    shutil.copy(src, copy_path)
    res = reproduce(copy_path, out_dir=tmp_path / "rerun")
    assert res["reproduced"] and res["max_abs_diff"] <= 1e-4
    assert json.loads(copy_path.read_text())["verification"]["tier"] == "reproduced"
    tampered = json.loads(src.read_text())
    tampered["matrix"][0][0] = 1.0 - tampered["matrix"][0][0]
    bad = tmp_path / "tampered.json"
    bad.write_text(json.dumps(tampered))
    assert not reproduce(bad, out_dir=tmp_path / "rerun2")["reproduced"]
