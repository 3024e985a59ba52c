"""The board page in headless Chromium, opened from disk (file://): filters by method, PET, tier and text with a live
count, sorting by mouse and keyboard with aria-sort, stale entries listed apart and never ranked or leading, entry
pages that link their records, configuration and `clsuite reproduce` command, and the page's load with ten times
today's entries (measured and printed; only functional properties are asserted)."""
import json
import shlex
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import yaml
from records_factory import RESULTS, make_record, reference, write
from test_leaderboard import _chromium, older_version

from suite._version import __version__
from suite.leaderboard import build
from suite.leaderboard.boards import series_label
from suite.leaderboard.build import build_site
from suite.results.records import group_key, read_records, record_digest

REPO = Path(__file__).resolve().parents[1]
SEEDS = (0, 1, 2, 3, 4)  # the boards' min_seeds
SEQ = "mini-mtil"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A site of mini-mtil: seq/lora (reproduced), pegp/lora and pegp/adapter ranked, zeroshot with one
    seed (not ranked), and two stale entries that would lead if ranked: pegp/lora of sequence v2, and seq/lora of an
    incompatible suite version."""
    lora, adapter = reference(), reference(pet="adapter")
    seq = [make_record(lora, s, "seq", -0.01 * s) for s in SEEDS]
    recs = seq + [make_record(lora, s, "pegp", 0.04 + 0.01 * s) for s in SEEDS]
    recs += [make_record(adapter, s, "pegp", 0.02) for s in SEEDS]
    recs.append(make_record(reference(method="zeroshot", pet="none"), 0))
    recs += [older_version(make_record(lora, s, "pegp", 0.3)) for s in SEEDS]
    for s in SEEDS:
        old_suite = make_record(lora, s, "seq", 0.25)
        old_suite["environment"]["suite"] = "0.0.9"
        recs.append(old_suite)
    root = tmp_path_factory.mktemp("board")
    results = write(root / "results", recs)
    boards = root / "boards"
    shutil.copytree(REPO / "leaderboards", boards, ignore=shutil.ignore_patterns("site"))
    (boards / "verified.yaml").write_text(yaml.safe_dump([{"digest": record_digest(r), "tier": "reproduced"} for r in seq]))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLSUITE_BOARDS_DIR", str(boards))
        build_site(results, root / "site")
    return root / "site"


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    d = _chromium(tmp_path_factory.mktemp("chromium"))
    d.set_window_size(1280, 900)
    yield d
    d.quit()


def _open(driver, page: Path):
    driver.get(page.as_uri())
    return driver.find_element("css selector", f'section.runs[data-sequence="{SEQ}"]')


def _shown(section) -> list[tuple[str, str, str]]:
    """(table kind, method, PET) of every row the page shows now."""
    out = []
    for table in section.find_elements("css selector", "table.sortable"):
        kind = table.get_attribute("data-kind")
        out += [(kind, r.get_attribute("data-method"), r.get_attribute("data-pet"))
                for r in table.find_elements("css selector", "tbody tr") if r.is_displayed()]
    return out


def _count(section) -> str:
    return section.find_element("css selector", ".filter-count").text


def _no_errors(driver) -> None:
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors


def test_filters_by_method_pet_tier_and_text_with_a_live_count(site, driver):
    from selenium.webdriver.support.ui import Select

    section = _open(driver, site / "class-incremental.html")
    everything = _shown(section)
    assert len(everything) == 6 and _count(section) == "6 of 6 entries shown"
    form = section.find_element("css selector", "form.board-filter")
    for control in form.find_elements("css selector", "select, input"):  # every control has its label
        assert driver.execute_script("return arguments[0].labels.length", control) == 1
    method, pet, tier = (Select(form.find_element("name", n)) for n in ("method", "pet", "tier"))

    method.select_by_value("pegp")
    rows = _shown(section)
    assert sorted(rows) == [("ranked", "pegp", "adapter"), ("ranked", "pegp", "lora"), ("stale", "pegp", "lora")]
    assert _count(section) == "3 of 6 entries shown"
    pet.select_by_value("adapter")  # filters combine
    assert _shown(section) == [("ranked", "pegp", "adapter")] and _count(section) == "1 of 6 entries shown"
    method.select_by_value("")
    pet.select_by_value("")
    assert _shown(section) == everything

    tier.select_by_value("reproduced")
    assert _shown(section) == [("ranked", "seq", "lora")] and _count(section) == "1 of 6 entries shown"
    tier.select_by_value("self-reported")
    assert len(_shown(section)) == 5 and ("ranked", "seq", "lora") not in _shown(section)
    tier.select_by_value("")

    search = form.find_element("name", "q")
    search.send_keys("zeroshot")
    assert _shown(section) == [("unranked", "zeroshot", "-")] and _count(section) == "1 of 6 entries shown"
    search.clear()
    search.send_keys("stale v2")  # every word must match: the entry of the older sequence version only
    assert _shown(section) == [("stale", "pegp", "lora")]
    search.clear()
    search.send_keys("no-such-entry")
    assert _shown(section) == [] and _count(section) == "0 of 6 entries shown"
    search.clear()
    search.send_keys(" ")
    assert _shown(section) == everything and _count(section) == "6 of 6 entries shown"
    _no_errors(driver)


def _last_values(table) -> list[float]:
    col = [h.text for h in table.find_elements("css selector", "thead th")].index("Last")
    return [float(r.find_elements("tag name", "td")[col].get_attribute("data-v"))
            for r in table.find_elements("css selector", "tbody tr")]


@pytest.mark.parametrize("how", ["mouse", "keyboard"])
def test_sorts_by_a_column_both_ways_with_mouse_or_keyboard(site, driver, how):
    from selenium.webdriver.common.keys import Keys

    section = _open(driver, site / "class-incremental.html")
    table = section.find_element("css selector", 'table[data-kind="ranked"]')
    header = table.find_element("css selector", "th[data-col='last']")
    button = header.find_element("css selector", "button.sort")
    ranked = _last_values(table)
    assert ranked == sorted(ranked, reverse=True) and len(set(ranked)) == 3  # ranked best first
    assert header.get_attribute("aria-sort") is None
    keys = iter([Keys.ENTER, Keys.SPACE])

    def press():
        if how == "mouse":
            button.click()
        else:
            button.send_keys(next(keys))
            assert driver.switch_to.active_element == button  # the header's button has the focus

    press()
    assert _last_values(table) == sorted(ranked) and header.get_attribute("aria-sort") == "ascending"
    assert table.find_element("css selector", "th").get_attribute("aria-sort") is None  # one sorted column at a time
    press()
    assert _last_values(table) == sorted(ranked, reverse=True) and header.get_attribute("aria-sort") == "descending"
    _no_errors(driver)


def test_sort_buttons_are_in_the_tab_order(site, driver):
    from selenium.webdriver.common.keys import Keys

    section = _open(driver, site / "class-incremental.html")
    search = section.find_element("name", "q")
    search.click()
    focused = []
    for _ in range(4):  # from the search box: the columns toggle, then the ranked table's headers
        driver.switch_to.active_element.send_keys(Keys.TAB)
        focused.append(driver.switch_to.active_element.text)
    assert focused[0] == "Show all columns" and focused[1:] == ["#", "method", "PET"]


def test_an_older_sequence_version_is_stale_listed_apart_and_never_ranked_or_leading(site, driver):
    section = _open(driver, site / "class-incremental.html")
    ranked = section.find_element("css selector", 'table[data-kind="ranked"]')
    stale = section.find_element("css selector", 'table[data-kind="stale"]')
    heads = [h.text for h in stale.find_elements("css selector", "thead th")]

    def rows(table):
        return [dict(zip(heads if table is stale else [h.text for h in table.find_elements("css selector", "thead th")],
                         [c.text for c in r.find_elements("tag name", "td")]))
                for r in table.find_elements("css selector", "tbody tr")]

    assert {r["seq."] for r in rows(ranked)} == {"v3"} and {r["suite"] for r in rows(ranked)} == {__version__}
    assert all(r["seeds"] == "5" and r["tier"] in ("reproduced", "self-reported") for r in rows(ranked))
    by_why = {r["why stale"]: r for r in rows(stale)}
    old = by_why["sequence v2, current v3"]
    assert old["method"] == "pegp" and old["PET"] == "lora" and old["seq."] == "v2" and old["seeds"] == "5"
    suite = by_why[f"suite 0.0.9, current {series_label(__version__)}"]
    assert suite["method"] == "seq" and suite["suite"] == "0.0.9" and suite["seq."] == "v3"
    assert stale.find_element("css selector", "tbody tr").get_attribute("class") == "stale"
    assert f"Stale entries of {SEQ}" in section.text
    # both would lead if they were ranked: they are kept out, not outranked
    assert min(_last_values(stale)) > max(_last_values(ranked))
    stale_links = {a.get_attribute("href") for a in stale.find_elements("css selector", "a")}
    ranked_links = {a.get_attribute("href") for a in ranked.find_elements("css selector", "a")}
    assert len(stale_links) == 2 and not stale_links & ranked_links
    driver.get((site / "index.html").as_uri())
    leaders = driver.find_element("css selector", "table.leaders")
    assert not stale_links & {a.get_attribute("href") for a in leaders.find_elements("css selector", "a")}
    assert leaders.find_element("css selector", "tbody tr a").get_attribute("href") in ranked_links
    assert "2 stale entries" in driver.find_element("tag name", "main").text
    _no_errors(driver)


def test_entry_page_links_its_records_configuration_and_reproduce_command(site, driver):
    section = _open(driver, site / "class-incremental.html")
    section.find_element("css selector", 'table[data-kind="stale"] a').click()
    main = driver.find_element("tag name", "main").text
    assert "stale: sequence v2, current v3" in main and f"suite {__version__} · sequence v2" in main
    runs = driver.find_elements("css selector", "table.records tbody tr")
    assert [r.find_element("tag name", "td").text for r in runs] == [str(s) for s in SEEDS]
    results = site.parent / "results"
    for row in runs:
        link = row.find_element("css selector", "a")
        copy = Path(unquote(urlparse(link.get_attribute("href")).path))
        original = results / link.text
        assert copy.parent == site / "records" and copy.read_bytes() == original.read_bytes()
        command = row.find_element("css selector", "code.command").text
        assert shlex.split(command) == ["clsuite", "reproduce", str(original)]
    configs = [json.loads(p.text) for p in driver.find_elements("css selector", "pre.config") if p.is_displayed()]
    first = json.loads((results / runs[0].find_element("css selector", "a").text).read_text())
    assert configs == [first["config"]]  # the first seed's configuration is open; the others behind their summary
    driver.get(runs[0].find_element("css selector", "a").get_attribute("href"))  # the record opens from disk
    assert json.loads(driver.find_element("tag name", "body").text)["sequence"]["version"] == 2
    _no_errors(driver)


# -------------------------------------------------------------------------------------------------- load
def todays_entries() -> int:
    """Entries of a build of the committed results/: one per configuration (sequence, method, PET, options)."""
    good, _ = read_records([RESULTS], validate=False)
    return len({group_key(rec) for _, rec in good})


def test_board_page_with_ten_times_todays_entries_loads_and_filters(tmp_path, monkeypatch, capsys):
    """The built board page of one sequence with 10x the entries all of today's boards hold (generated by repeating
    real rows with new method names through the build's own page function), opened in Chromium: Navigation Timing
    and the time one filter and one sort take are printed (`-s`); asserted are only what the page shows (and a
    sanity bound of 30 s on loading, far above any real load)."""
    from selenium.webdriver.support.ui import Select

    target = 10 * todays_entries()
    real = build.board_page

    def generated(env, board, blocks, common):
        for block in blocks:
            if block["name"] == SEQ:
                real_rows = block["rows"] + block["unranked"] + block["stale"]
                n_stale = target // 10
                rows = []
                for i in range(target):
                    why = "sequence v2, current v3" if i >= target - n_stale else ""
                    row = dict(real_rows[i % len(real_rows)], method=f"m{i:04d}", rank=str(i + 1), tied=False, stale=why)
                    row["search"] = " ".join(filter(None, [row["method"], row["pet"], row["tier"], why and f"stale {why}"]))
                    rows.append(row)
                block.update(rows=rows[:target - n_stale - 1], unranked=rows[target - n_stale - 1:target - n_stale],
                             stale=rows[target - n_stale:], filters=build.filter_options(rows))
        return real(env, board, blocks, common)

    monkeypatch.setattr(build, "board_page", generated)
    lora = reference()
    recs = [make_record(lora, s, "seq", -0.01 * s) for s in SEEDS] + [make_record(reference(method="zeroshot", pet="none"), 0)]
    recs += [older_version(make_record(lora, s, "pegp", 0.3)) for s in SEEDS]
    page = build_site(write(tmp_path / "results", recs), tmp_path / "site").parent / "class-incremental.html"
    driver = _chromium(tmp_path)
    try:
        driver.get(page.as_uri())
        nav = driver.execute_script("var n = performance.getEntriesByType('navigation')[0]; return n.toJSON();")
        section = driver.find_element("css selector", f'section.runs[data-sequence="{SEQ}"]')
        rows = section.find_elements("css selector", "tbody tr[data-method]")
        assert len(rows) == target and _count(section) == f"{target} of {target} entries shown"
        filter_ms = driver.execute_script("""
            var select = arguments[0], t = performance.now();
            select.value = 'm0007'; select.dispatchEvent(new Event('change', {bubbles: true}));
            return performance.now() - t;""", section.find_element("name", "method"))
        assert _count(section) == f"1 of {target} entries shown"
        Select(section.find_element("name", "method")).select_by_value("")
        search_ms = driver.execute_script("""
            var input = arguments[0], t = performance.now();
            input.value = 'stale'; input.dispatchEvent(new Event('input', {bubbles: true}));
            return performance.now() - t;""", section.find_element("name", "q"))
        assert _count(section) == f"{target // 10} of {target} entries shown"
        sort_ms = driver.execute_script("""
            var button = arguments[0], t = performance.now(); button.click(); return performance.now() - t;""",
            section.find_element("css selector", 'table[data-kind="ranked"] th[data-col="last"] button'))
        _no_errors(driver)
    finally:
        driver.quit()
    size = page.stat().st_size
    with capsys.disabled():
        print(f"\nboard page with {target} entries (10 x {target // 10} today), {size / 1e6:.2f} MB: "
              f"domContentLoaded {nav['domContentLoadedEventEnd']:.0f} ms, load {nav['loadEventEnd']:.0f} ms "
              f"(response end {nav['responseEnd']:.0f} ms); filter by method {filter_ms:.1f} ms, "
              f"text search {search_ms:.1f} ms, sort {sort_ms:.1f} ms")
    assert 0 < nav["domContentLoadedEventEnd"] <= nav["loadEventEnd"] < 30_000
