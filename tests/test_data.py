import gzip
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from suite.config.sequences import parse_sequence
from suite.data import DataMissingError, materialize, world


def _seq(tasks, track="class-incremental", embedded=False):
    return parse_sequence({"name": "t", "version": 1, "track": track, "protocol": "task-id", "embedded": embedded,
                           "tasks": tasks}, "mem.yaml")


def test_world_render_is_deterministic_and_domains_differ():
    rng = np.random.default_rng(0)
    spec = world.sample_spec("object", "red circle", "solid", rng)
    a, b = world.render(spec, 32), world.render(dict(spec), 32)
    assert a.dtype == np.uint8 and a.shape == (32, 32, 3) and np.array_equal(a, b)
    other = world.render(dict(spec, domain="noisy"), 32)
    assert not np.array_equal(a, other)


def test_world_ground_truth_objects_and_captions():
    rng = np.random.default_rng(1)
    for _ in range(20):
        s = world.sample_spec("scene", None, "solid", rng)
        objs = world.objects_of(s)
        cap = world.caption(s, style="short")
        assert all(o in cap or o.split()[1] + "s" in cap for o in objs)
    g = world.sample_spec("glyph", "7", "solid", rng)
    assert world.objects_of(g) == ["digit 7"]


def test_world_unknown_values_are_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(world.WorldError, match="unknown domain"):
        world.sample_spec("shape", "circle", "watercolour", rng)
    with pytest.raises(world.WorldError, match="unknown shape"):
        world.sample_spec("shape", "blob", "solid", rng)


def _write_idx(path, arr):
    arr = np.asarray(arr, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, 8, arr.ndim) + b"".join(struct.pack(">I", d) for d in arr.shape)
    with gzip.open(str(path) + ".gz", "wb") as fh:
        fh.write(header + arr.tobytes())


def test_fashion_mnist_idx_adapter(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 20)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", rng.integers(0, 255, (n, 28, 28)))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    seq = _seq([{"name": "f", "source": {"adapter": "fashion-mnist", "root": str(tmp_path)},
                 "classes": [str(i) for i in range(10)],
                 "split": {"rule": "official", "train_per_class": 2, "test_per_class": 1}}])
    data = materialize(seq, "f", size=16)
    assert len(data.train) == 20 and len(data.test) == 10 and data.train.images.shape[1:] == (16, 16, 3)
    assert len(data.manifest_sha256) == 64


def test_fashion_mnist_missing_names_package(tmp_path):
    seq = _seq([{"name": "f", "source": {"adapter": "fashion-mnist", "root": str(tmp_path / "none")}, "classes": ["a"],
                 "split": {"rule": "official"}}])
    with pytest.raises(DataMissingError, match="dataset-fashion-mnist"):
        materialize(seq, "f")


def test_imagefolder_adapter_with_class_range_and_few_shot(tmp_path):
    for split in ("train", "test"):
        for c in ("ant", "bee", "cat"):
            d = tmp_path / split / c
            d.mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (10, 10), (i * 40, 0, 0)).save(d / f"{i}.png")
    seq = _seq([{"name": "ants", "source": {"adapter": "imagefolder", "root": str(tmp_path)},
                 "classes": {"from": "folders", "range": [1, 3]}, "split": {"rule": "official", "few_shot": 2}}])
    data = materialize(seq, "ants")
    assert data.classnames == ["bee", "cat"]
    assert len(data.train) == 4 and len(data.test) == 8 and set(data.test.labels) == {0, 1}
    assert data.test.load(0).shape == (10, 10, 3)


def _folders(root, names, shade):
    for split in ("train", "test"):
        for c in names:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (10, 10), shade[c]).save(d / f"{i}.png")


def test_imagefolder_maps_classes_to_folders_by_name_not_position(tmp_path):
    shade = {"Red_Circle": (200, 0, 0), "blue-square": (0, 0, 200)}
    _folders(tmp_path, ["Red_Circle", "blue-square"], shade)
    seq = _seq([{"name": "s", "source": {"adapter": "imagefolder", "root": str(tmp_path)},
                 "classes": ["blue square", "red circle"], "split": {"rule": "official"}}])
    data = materialize(seq, "s")
    assert data.classnames == ["blue square", "red circle"]
    for i in range(len(data.test)):  # label 0 is the blue folder's images, whatever the folders' sorted order
        assert (data.test.load(i)[0, 0, 2] > 100) == (data.test.labels[i] == 0)
    other = tmp_path / "wordnet"  # folders named by id, as ImageNet-R ships; names come from the sequence file
    _folders(other, ["n01443537", "n01440764", "n02084071"], {"n01443537": (200, 100, 0), "n01440764": (0, 90, 0),
                                                               "n02084071": (0, 0, 0)})
    seq = _seq([{"name": "s", "source": {"adapter": "imagefolder", "root": str(other),
                                          "folders": {"goldfish": "n01443537", "tench": "n01440764"}},
                 "classes": ["goldfish", "tench"], "templates": ["a photo of a {}."], "split": {"rule": "official"}}])
    data = materialize(seq, "s")
    assert data.classnames == ["goldfish", "tench"] and len(data.test) == 4  # the third folder is not taken
    assert {data.test.ids[i].split("/")[1] for i in range(4) if data.test.labels[i] == 0} == {"n01443537"}
    assert all("n0" not in t.format(c) for c in data.classnames for t in data.templates)
    seq = _seq([{"name": "s", "source": {"adapter": "imagefolder", "root": str(other)},
                 "classes": ["goldfish", "yellow star"], "split": {"rule": "official"}}])
    with pytest.raises(DataMissingError, match=r"no folder for class\(es\) \['goldfish', 'yellow star'\]"):
        materialize(seq, "s")


def test_torchvision_adapter_reads_local_root_never_downloads(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 12), ("t10k", 6)):
        for suffix, arr in (("images-idx3-ubyte", rng.integers(0, 255, (n, 28, 28))), ("labels-idx1-ubyte", np.arange(n) % 3)):
            arr = np.asarray(arr, dtype=np.uint8)
            header = struct.pack(">BBBB", 0, 0, 8, arr.ndim) + b"".join(struct.pack(">I", d) for d in arr.shape)
            (raw / f"{prefix}-{suffix}").write_bytes(header + arr.tobytes())
    seq = _seq([{"name": "m", "source": {"adapter": "torchvision", "dataset": "MNIST", "root": str(tmp_path)},
                 "classes": {"from": "dataset", "range": [0, 3]}, "split": {"rule": "official"}}])
    data = materialize(seq, "m")
    assert len(data.train) == 12 and len(data.test) == 6 and data.classnames[0].startswith("0")
    seq2 = _seq([{"name": "m", "source": {"adapter": "torchvision", "dataset": "MNIST", "root": str(tmp_path / "empty")},
                  "classes": {"from": "dataset"}, "split": {"rule": "official"}}])
    with pytest.raises(DataMissingError, match="MNIST"):
        materialize(seq2, "m")


def test_webdataset_adapter_reads_local_shards(tmp_path):
    import io

    import webdataset as wds

    for split in ("train", "test"):
        with wds.TarWriter(str(tmp_path / f"pairs-{split}-000000.tar")) as sink:
            for i in range(5):
                buf = io.BytesIO()
                Image.new("RGB", (8, 8), (i * 50, 0, 0)).save(buf, format="PNG")
                sink.write({"__key__": f"{split}{i:03d}", "png": buf.getvalue(), "txt": f"caption {i}"})
    seq = _seq([{"name": "pairs", "source": {"adapter": "webdataset", "root": str(tmp_path), "urls": "pairs-{split}-000000.tar"},
                 "split": {"rule": "karpathy"}}], track="cross-modal")
    data = materialize(seq, "pairs")
    assert len(data.train) == 5 and data.test.captions[2] == ("caption 2",)
    assert data.test.load(1).shape == (8, 8, 3)


def test_sklearn_digits_adapter_is_seeded_and_disjoint():
    seq = _seq([{"name": "d", "source": {"adapter": "sklearn-digits"}, "classes": [str(i) for i in range(10)],
                 "split": {"rule": "seeded-holdout", "train_per_class": 5, "test_per_class": 5}}])
    data = materialize(seq, "d", size=24)
    assert len(data.train) == 50 and len(data.test) == 50
    assert not set(data.train.ids) & set(data.test.ids)


def test_later_evaluations_decode_no_test_image_again():
    """File-backed test images are decoded once per run; the second evaluation reads the kept inputs."""
    import torch

    from suite.data.base import Split
    from suite.evaluation.evaluator import Evaluator
    from suite.models import create_model_and_transforms

    decodes = []

    def load(i):
        decodes.append(i)
        return np.full((12, 12, 3), i * 20, np.uint8)

    split = Split(labels=np.arange(6) % 2, ids=[f"f{i}" for i in range(6)], loader=load)
    ev = Evaluator(create_model_and_transforms("embedded:micro-clip@random"), batch_size=4)
    first = ev.image_features(split)
    assert sorted(decodes) == list(range(6))
    second = ev.image_features(split)
    assert sorted(decodes) == list(range(6)) and torch.equal(first, second)
    small = Evaluator(ev.backbone, batch_size=4, input_cache_bytes=0)  # no room: decodes again, same features
    assert torch.equal(small.image_features(split), first) and len(decodes) == 12


def _shade(i):
    return np.full((12, 12, 3), i * 20, np.uint8)


def _never(i):
    raise AssertionError(f"image {i} decoded again")


def test_first_evaluation_decodes_in_workers_and_later_ones_decode_nothing():
    import torch

    from suite.data.base import Split
    from suite.evaluation.evaluator import Evaluator
    from suite.models import create_model_and_transforms

    backbone = create_model_and_transforms("embedded:micro-clip@random")
    split = Split(labels=np.arange(10) % 2, ids=[f"f{i}" for i in range(10)], loader=_shade)
    plain = Evaluator(backbone, batch_size=4).image_features(split)
    ev = Evaluator(backbone, batch_size=4, workers=2)
    assert torch.equal(ev.image_features(split), plain)
    split.loader = _never
    assert torch.equal(ev.image_features(split), plain)


def test_training_with_decoding_workers_is_identical_to_the_main_process(tmp_path):
    """File-backed images decoded by 2 DataLoader workers: the same matrix as without workers, twice."""
    from conftest import MICRO, imagefolder_sequence

    from suite.engine.runner import RunConfig, run

    seq = imagefolder_sequence(tmp_path)
    matrices = []
    for workers in (2, 2, 0):
        rec = run(RunConfig(sequence=seq, model=MICRO, pet="lora", method="seq", workers=workers,
                            out=str(tmp_path / f"r{len(matrices)}"), run_dir=str(tmp_path / "runs"), progress=False))
        matrices.append(rec["matrix"])
    assert matrices[0] == matrices[1] == matrices[2]


def test_shipped_imagenet_r_sequence_names_wordnet_folders_by_their_class_names(tmp_path, monkeypatch):
    """ImageNet-R as the dataset ships it (WordNet-id folders): the shipped sequence's names file gives every
    prompt a class name; a WordNet-id folder without a name is refused; classes may be chosen by id or name."""
    from suite.config.sequences import load_sequence

    names = dict(line.split("\t") for line in open("tasks/real/names/imagenet.tsv").read().splitlines()
                 if line and not line.startswith("#"))
    ids = sorted(names)[::5][:200]
    for split in ("train", "test"):
        for k, wnid in enumerate(ids):
            (tmp_path / "imagenet-r" / split / wnid).mkdir(parents=True)
            Image.new("RGB", (8, 8), (k, 0, 0)).save(tmp_path / "imagenet-r" / split / wnid / "0.png")
    monkeypatch.setenv("CLSUITE_DATA", str(tmp_path))
    seq = load_sequence("tasks/real/imagenet-r-10.yaml")
    second = materialize(seq, "imagenet-r-2", verify=False)
    assert second.classnames == [names[w] for w in ids[20:40]]
    prompts = [t.format(c) for c in second.classnames for t in second.templates]
    assert not any(re.search(r"n\d{8}", p) for p in prompts)
    assert {i.split("/")[1] for i in second.test.ids} == set(ids[20:40])
    picked = _seq([{"name": "s", "source": {"adapter": "imagefolder", "root": str(tmp_path / "imagenet-r"),
                                            "folders_file": str(Path.cwd() / "tasks/real/names/imagenet.tsv")},
                    "classes": [names[ids[3]], ids[7]], "split": {"rule": "official"}}])
    data = materialize(picked, "s")
    assert data.classnames == [names[ids[3]], names[ids[7]]] and len(data.test) == 2
    assert [i.split("/")[1] for i in data.test.ids] == [ids[3], ids[7]]
    bare = _seq([{"name": "s", "source": {"adapter": "imagefolder", "root": str(tmp_path / "imagenet-r")},
                  "classes": {"from": "folders"}, "split": {"rule": "official"}}])
    with pytest.raises(DataMissingError, match="WordNet ids with no class name"):
        materialize(bare, "s")


def test_torchvision_class_names_are_prompt_names():
    from suite.data.real import _prompt_name

    assert _prompt_name(("tench", "Tinca tinca")) == "tench" and _prompt_name("aquarium_fish") == "aquarium fish"
