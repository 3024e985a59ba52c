import json

import numpy as np
import pytest

from suite.cli import main
from suite.results import metrics

MTIL_ZS = {"Aircraft": 24.3, "Caltech101": 88.4, "CIFAR100": 68.2, "DTD": 44.6, "EuroSAT": 54.9, "Flowers": 71.0,
           "Food": 88.5, "MNIST": 59.4, "OxfordPet": 89.0, "StanfordCars": 64.7, "SUN397": 65.2}


def test_published_mtil_order1_zero_shot_row():
    row = list(MTIL_ZS.values())
    agg = metrics.aggregate([row] * 11)
    assert round(agg["transfer"], 1) == 69.4
    assert round(agg["avg"], 1) == 65.3
    assert round(agg["last"], 1) == 65.3
    assert agg["bwt"] == 0.0 and agg["forgetting"] == 0.0


def test_hand_computed_three_task_matrix():
    a = [[0.9, 0.2, 0.1],
         [0.6, 0.8, 0.3],
         [0.5, 0.7, 0.95]]
    agg = metrics.aggregate(a, zero_shot=[0.3, 0.25, 0.2])
    assert agg["transfer"] == pytest.approx((0.2 + (0.1 + 0.3) / 2) / 2)
    assert agg["avg"] == pytest.approx(sum(map(sum, a)) / 9)
    assert agg["last"] == pytest.approx((0.5 + 0.7 + 0.95) / 3)
    assert agg["bwt"] == pytest.approx(((0.5 - 0.9) + (0.7 - 0.8)) / 2)
    assert agg["forgetting"] == pytest.approx(((0.9 - 0.5) + (0.8 - 0.7)) / 2)
    assert agg["fwt"] == pytest.approx(((0.2 - 0.25) + (0.3 - 0.2)) / 2)
    assert agg["avg_incremental"] == pytest.approx((0.9 + 0.7 + (0.5 + 0.7 + 0.95) / 3) / 3)


def test_forgetting_uses_max_over_earlier_steps_not_just_diagonal():
    a = [[0.5, 0, 0], [0.9, 0.5, 0], [0.4, 0.5, 0.5]]
    assert metrics.forgetting(np.array(a, dtype=float)) == pytest.approx(((0.9 - 0.4) + 0.0) / 2)


def test_single_task_has_no_transfer_or_forgetting():
    agg = metrics.aggregate([[0.7]])
    assert agg["transfer"] is None and agg["bwt"] is None and agg["forgetting"] is None
    assert agg["last"] == 0.7


@pytest.mark.parametrize("bad", [[[1, 2, 3]], [[1, float("nan")], [1, 1]], [], [["x"]]])
def test_bad_matrices_rejected(bad):
    with pytest.raises(metrics.MatrixError):
        metrics.aggregate(bad)


@pytest.mark.parametrize("fmt", ["json", "csv", "npy"])
def test_cli_metrics_reads_every_format(tmp_path, capsys, fmt):
    a = np.array([[80.0, 10.0], [70.0, 90.0]])
    p = tmp_path / f"m.{fmt}"
    if fmt == "json":
        p.write_text(json.dumps(a.tolist()))
    elif fmt == "csv":
        p.write_text("\n".join(",".join(str(x) for x in r) for r in a))
    else:
        np.save(p, a)
    assert main(["metrics", str(p), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["transfer"] == 10.0 and out["avg"] == 62.5 and out["last"] == 80.0
    assert out["bwt"] == -10.0 and out["forgetting"] == 10.0


def test_cli_metrics_bad_file_one_line_error(tmp_path, capsys):
    p = tmp_path / "m.json"
    p.write_text("[[1, 2], [3]]")
    assert main(["metrics", str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(p) in err
