import copy
from pathlib import Path

import pytest
import yaml

from suite.cli import main
from suite.config.sequences import SequenceError, load_sequence, load_sequence_file, sequence_files
from suite.data import materialize, materialize_sequence

REAL = {"mtil-order-1", "mtil-order-2", "x-tail", "cifar100-10x10", "imagenet-r-10", "domainnet", "retrieval-coco-flickr"}
EMBEDDED = {"world-class-incremental", "world-domain-incremental", "world-cross-modal", "mini-mtil", "mini-xtail"}


def test_every_required_sequence_is_shipped_and_valid():
    files = sequence_files()
    assert REAL | EMBEDDED <= set(files)
    for name in files:
        seq = load_sequence(name)
        assert seq.name == name
    tracks = {load_sequence(n).track for n in EMBEDDED}
    assert tracks == {"class-incremental", "domain-incremental", "cross-modal"}


def test_mtil_orders_hold_the_published_datasets():
    o1 = [t.name for t in load_sequence("mtil-order-1").tasks]
    o2 = [t.name for t in load_sequence("mtil-order-2").tasks]
    assert o1 == ["aircraft", "caltech101", "cifar100", "dtd", "eurosat", "flowers", "food", "mnist", "pets", "cars", "sun397"]
    assert sorted(o1) == sorted(o2) and o2[0] == "cars" and o2[-1] == "cifar100"
    assert load_sequence("x-tail").protocol == "task-agnostic"


@pytest.mark.parametrize("name", sorted(EMBEDDED))
def test_embedded_materialises_offline_with_stable_pinned_hash(name):
    from suite.data import registry

    seq = load_sequence(name)
    first = {k: (v.manifest_sha256, v.content_sha256) for k, v in materialize_sequence(seq).items()}
    registry._CACHE.clear()
    second = {k: (v.manifest_sha256, v.content_sha256) for k, v in materialize_sequence(seq).items()}
    assert first == second
    for t in seq.tasks + seq.control_sets:
        assert first[t.name][0] == t.pinned_manifest


def test_cross_modal_tasks_carry_captions_and_objects():
    seq = load_sequence("world-cross-modal")
    data = materialize(seq, seq.tasks[0])
    assert len(data.test.captions) == len(data.test) == seq.tasks[0].split["test_size"] == 900
    assert seq.tasks[0].gallery_size == 300
    assert all(1 <= len(o) <= 3 for o in data.test.objects)


def _base() -> dict:
    return yaml.safe_load(Path(sequence_files()["world-domain-incremental"]).read_text())


def _write(tmp_path, data) -> Path:
    (tmp_path / "t").mkdir(exist_ok=True)
    p = tmp_path / "t" / "bad.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def _mutations():
    def missing(d):
        del d["tasks"][1]["split"]
    def unknown_track(d):
        d["track"] = "lifelong"
    def duplicate_class(d):
        for t in d["tasks"]:
            t["classes"] = ["circle", "square", "circle"]
    def bad_path(d):
        d["templates_file"] = "../nowhere/templates.yaml"
    def missing_name(d):
        del d["name"]
    def gallery_off_retrieval(d):
        d["tasks"][2]["split"]["gallery_size"] = 10
    return {"tasks.1.split": missing, "track": unknown_track, "tasks.0.classes": duplicate_class,
            "templates_file": bad_path, "name": missing_name, "tasks.2.split.gallery_size": gallery_off_retrieval}


@pytest.mark.parametrize("field", list(_mutations()))
def test_malformed_file_gives_one_line_error_naming_file_and_field(tmp_path, field):
    data = copy.deepcopy(_base())
    data["templates_file"] = str(Path(sequence_files()["world-domain-incremental"]).parent.parent / "templates/world.yaml")
    _mutations()[field](data)
    p = _write(tmp_path, data)
    with pytest.raises(SequenceError) as exc:
        load_sequence_file(p)
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith(str(p)) and f" {field}" in msg


def test_pinned_hash_mismatch_is_refused(tmp_path):
    from suite.data import ManifestMismatch

    data = _base()
    data["templates_file"] = str(Path(sequence_files()["world-domain-incremental"]).parent.parent / "templates/world.yaml")
    data["tasks"][0]["split"]["train_per_class"] = 3
    seq = load_sequence_file(_write(tmp_path, data))
    with pytest.raises(ManifestMismatch, match="manifest_sha256"):
        materialize(seq, seq.tasks[0])


def test_real_sequence_missing_data_says_where_and_how(tmp_path, monkeypatch):
    from suite.data import DataMissingError

    monkeypatch.setenv("CLSUITE_DATA", str(tmp_path))
    seq = load_sequence("cifar100-10x10")
    with pytest.raises(DataMissingError) as exc:
        materialize(seq, seq.tasks[0])
    msg = str(exc.value)
    assert "CIFAR100" in msg and str(tmp_path) in msg and "CLSUITE_DATA" in msg


def test_cli_lists_and_shows(capsys):
    assert main(["tasks", "list"]) == 0
    out = capsys.readouterr().out
    assert all(n in out for n in REAL | EMBEDDED) and "INVALID" not in out
    assert main(["tasks", "show", "world-class-incremental"]) == 0
    out = capsys.readouterr().out
    assert "ci-5" in out and "manifest=" in out and "valid: yes" in out


def test_cli_show_bad_file_exits_2(tmp_path, capsys):
    p = _write(tmp_path, {"name": "x", "version": 1, "track": "sideways", "protocol": "task-id", "tasks": []})
    assert main(["tasks", "show", str(p)]) == 2
    assert str(p) in capsys.readouterr().err
