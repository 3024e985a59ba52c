"""Comparing methods: grouping over seeds, paired differences with intervals, one-figure comparisons."""
import json

import numpy as np
import pytest
from matplotlib.collections import PolyCollection
from records_factory import make_record, reference, write
from scipy import stats

from suite.cli import main
from suite.leaderboard.plots import comparison_figure, method_colour, save_figure
from suite.results.analysis import compare, curve, format_compare, group_records, paired_difference


@pytest.fixture(scope="module")
def three_records():
    """Two seeds of seq and one of pegp (three records, two methods) on mini-mtil."""
    base = reference()
    return [make_record(base, 0, "seq", 0.0), make_record(base, 1, "seq", -0.05), make_record(base, 0, "pegp", 0.03)]


def _gids(ax, prefix):
    found = [a.get_gid() for a in list(ax.get_lines()) + list(ax.collections) if (a.get_gid() or "").startswith(prefix)]
    return sorted(found)


def test_curves_figure_has_a_line_per_method_and_a_band_only_with_seeds(three_records):
    fig = comparison_figure(group_records(three_records), "curves", "avg")
    ax = fig.axes[0]
    assert _gids(ax, "group:") == ["group:pegp/lora", "group:seq/lora"]
    bands = [c for c in ax.collections if isinstance(c, PolyCollection) and (c.get_gid() or "").startswith("band:")]
    assert [b.get_gid() for b in bands] == ["band:seq/lora"]  # one seed of pegp: no band
    seq_line = next(l for l in ax.get_lines() if l.get_gid() == "group:seq/lora")
    # the line is the mean over the two seeds of the mean accuracy on tasks trained so far (x = 1..T)
    expected = np.mean([curve(r, "avg")[1:] for r in three_records[:2]], axis=0) * 100
    np.testing.assert_allclose(seq_line.get_ydata(), expected)
    assert list(ax.get_xticks()) == list(range(6)) and ax.get_xticklabels()[0].get_text() == "zero-shot"
    assert seq_line.get_color() == method_colour("seq")


def test_tradeoff_figure_has_one_point_set_per_method_with_error_bars(three_records):
    fig = comparison_figure(group_records(three_records), "tradeoff", x="plasticity")
    ax = fig.axes[0]
    assert _gids(ax, "point:") == ["point:pegp/lora", "point:seq/lora"]
    assert len(ax.containers) == 2
    seq = next(c for c in ax.containers if c.lines[0].get_gid() == "point:seq/lora")
    pegp = next(c for c in ax.containers if c.lines[0].get_gid() == "point:pegp/lora")
    assert seq.has_xerr and seq.has_yerr and not pegp.has_xerr and not pegp.has_yerr
    assert not [t for t in ax.texts if (t.get_gid() or "").startswith("tag:")]  # labels alone tell them apart


def test_tradeoff_points_of_one_method_and_pet_carry_their_options():
    """An ε sweep: groups that share method and PET are labelled on the figure by the option that differs."""
    base = reference(method="pegp")
    recs = []
    for eps, shift in ((0.8, 0.02), (0.99, 0.0)):
        for seed in (0, 1):
            r = make_record(base, seed, "pegp", shift - 0.01 * seed)
            r["method"]["options"] = {**r["method"]["options"], "threshold": eps}
            recs.append(r)
    ax = comparison_figure(group_records(recs), "tradeoff", x="plasticity", y="forgetting").axes[0]
    tags = sorted(t.get_text() for t in ax.texts if (t.get_gid() or "").startswith("tag:"))
    assert tags == ["threshold=0.8", "threshold=0.99"]


@pytest.mark.parametrize("kind", ["matrix", "retention", "hallucination"])
def test_other_kinds_draw(three_records, kind, tmp_path):
    path = save_figure(comparison_figure(group_records(three_records), kind), tmp_path / f"{kind}.svg")
    text = path.read_text()
    assert "<svg" in text and "seq/lora" in text  # text stays text in the SVG (svg.fonttype none)


def test_paired_difference_and_interval_by_hand():
    base = reference()
    a = [make_record(base, s, "pegp", d) for s, d in ((0, 0.02), (1, 0.00), (2, 0.04))]
    b = [make_record(base, s, "seq", 0.0) for s in (0, 1, 2)] + [make_record(base, 7, "seq", 0.3)]  # seed 7 unpaired
    groups = {g.method: g for g in group_records(a + b)}
    d = paired_difference(groups["pegp"], groups["seq"], "last")
    diffs = [np.mean(x["matrix"][-1]) - np.mean(y["matrix"][-1]) for x, y in zip(a, b)]  # items round to whole images
    assert d.seeds == (0, 1, 2)
    assert d.mean == pytest.approx(np.mean(diffs))
    assert d.ci == pytest.approx(stats.t.ppf(0.975, 2) * np.std(diffs, ddof=1) / np.sqrt(3))
    assert d.items is not None and d.items[0] <= d.mean <= d.items[1]  # the paired interval over seeds and items
    assert d.tie is (d.items[0] <= 0 <= d.items[1])


def test_compare_cli_prints_groups_and_paired_difference(tmp_path, capsys):
    base = reference()
    recs = [make_record(base, s, "seq", 0.0) for s in (0, 1, 2)] + [make_record(base, s, "pegp", x)
                                                                   for s, x in ((0, 0.05), (1, 0.06), (2, 0.04))]
    folder = write(tmp_path / "res", recs)
    assert main(["compare", str(folder), "--pair", "pegp/lora:seq/lora"]) == 0
    out = capsys.readouterr().out
    assert "pegp/lora − seq/lora" in out and "paired by seed" in out and "a better" in out
    assert "seeds and test items" in out and "McNemar per seed" in out and "seed 2: " in out
    assert main(["compare", "--results", str(folder), "--sequence", "mini-mtil",
                 "--pair", "pegp:seq", "--format", "json", "--metrics", "last"]) == 0
    data = json.loads(capsys.readouterr().out)
    (diff,) = data["differences"]
    assert diff["n"] == 3 and diff["tie"] is False and diff["mean"] > 0
    rows = {r["group"]: r for r in data["rows"]}
    assert rows["seq/lora"]["last"]["n"] == 3 and rows["seq/lora"]["last"]["ci"] == pytest.approx(0.0, abs=1e-12)


def test_compare_formats_and_bad_pair(three_records, capsys):
    res = compare(three_records, ("last", "forgetting"), [("pegp", "seq")])
    md = format_compare(res, "md")
    assert md.startswith("| group |") and "| pegp/lora − seq/lora |" in md
    csv_text = format_compare(res, "csv")
    assert csv_text.splitlines()[0].startswith("group,sequence,method,pet,seeds,last,last_ci")
    text = format_compare(res, "text")
    assert "± " in text and "-0.0" not in text
    # one shared seed: no interval over seeds, but the test items still give one, and it decides
    (d,) = [x for x in res["differences"] if x.metric == "last"]
    assert d.ci is None and d.items is not None and d.tie is (d.items[0] <= 0 <= d.items[1])
    bare = [json.loads(json.dumps(r)) for r in three_records]
    for r in bare:  # records without item outcomes (as before version 3): nothing to decide a one-seed pair
        for step in [r["zero_shot_step"]] + r["steps"]:
            step.pop("items")
    assert "one seed: no interval" in format_compare(compare(bare, ("last",), [("pegp", "seq")]), "text")
    with pytest.raises(ValueError, match="matches no group"):
        compare(three_records, ("last",), [("lwf", "seq")])


def test_plot_cli_writes_each_format(three_records, tmp_path):
    folder = write(tmp_path / "res", three_records)
    for name in ("c.svg", "c.png", "c.pdf"):
        assert main(["plot", str(folder), "--kind", "curves", "--metric", "first-task", "--out", str(tmp_path / name)]) == 0
        assert (tmp_path / name).stat().st_size > 1000
    assert main(["plot", str(folder), "--kind", "curves", "--metric", "task:nope", "--out", str(tmp_path / "x.svg")]) == 2
    assert main(["plot", str(folder), "--out", str(tmp_path / "x.gif")]) == 2
