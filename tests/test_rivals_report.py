"""The "PEGP against its rivals" page (docs/results/rivals.md) is computed from records (``clsuite rivals``)."""
from records_factory import make_record, reference, write

from suite.cli import main
from suite.results.records import load_records

SEEDS = (0, 1, 2, 3, 4)


def test_rivals_report_pairs_pegp_with_each_rival_on_its_pet(tmp_path, capsys):
    base = reference()  # seq/LoRA on mini-mtil
    recs = [make_record(base, s, "pegp", 0.05) for s in SEEDS]          # PEGP clearly better
    recs += [make_record(base, s, "inflora", 0.0) for s in SEEDS]
    recs += [make_record(base, s, "olora", 0.05) for s in SEEDS]        # the same: a tie
    recs += [make_record(base, s, "l2p", 0.0) for s in SEEDS]           # no PEGP entry on its PET: left out
    for r in recs[-len(SEEDS):]:
        r["pet"]["kind"] = None
    for r in recs[:len(SEEDS)]:  # resolved options, as real records carry them
        r["method"]["options"] = {"threshold": 0.97}
    swept = [make_record(base, s, "pegp", -0.10) for s in SEEDS]       # an option sweep's entry: not the matchup's
    for r in swept:  # sorts after the default entry, so a report keyed by method/PET alone would take it
        r["config"]["method_options"] = {"threshold": 0.99}
        r["method"]["options"] = {"threshold": 0.99}
    folder = write(tmp_path / "results", recs + swept)
    assert main(["rivals", "--results", str(folder), "--figures", str(tmp_path / "fig")]) == 0
    out = capsys.readouterr().out
    lines = {line.split(" | ")[1]: line for line in out.splitlines() if "/lora − " in line}
    assert set(lines) == {"pegp/lora − inflora/lora", "pegp/lora − olora/lora"}
    last_inflora = lines["pegp/lora − inflora/lora"].split(" | ")[2]
    assert last_inflora.startswith("+") and "(tie)" not in last_inflora
    assert "(tie)" in lines["pegp/lora − olora/lora"].split(" | ")[2]
    assert (tmp_path / "fig" / "rivals-mini-mtil.svg").is_file()
    assert "rivals-mini-mtil.svg" in out


def test_rivals_report_says_so_when_no_pair_exists(tmp_path, capsys):
    folder = write(tmp_path / "results", [make_record(reference(), s, "seq") for s in SEEDS])
    from suite.experiments.rivals import rivals_report
    assert rivals_report(load_records([str(folder)])).startswith("No sequence has records of PEGP and a rival")
