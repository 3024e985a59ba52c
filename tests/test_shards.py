"""Real data without materialising it: webdataset shards indexed or streamed (split across ranks and workers), and
COCO/Flickr by their Karpathy split files with every caption of every image."""
import io
import json

import numpy as np
import pytest
import torch
import webdataset as wds
import yaml
from conftest import MICRO
from PIL import Image

from suite.config.sequences import load_sequence
from suite.data import DataMissingError, materialize
from suite.data.shards import SampleFormat, ShardError, ShardStream, expand_shards, index_shards
from suite.results.records import validate_record


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (value % 256, 40, 90)).save(buf, format="PNG")
    return buf.getvalue()


def write_shards(folder, prefix: str, shards: int, per_shard: int, captions: int = 1) -> list[int]:
    """``shards`` tar files of ``per_shard`` samples; sample k has label k and ``captions`` caption lines."""
    ids = []
    for s in range(shards):
        with wds.TarWriter(str(folder / f"{prefix}-{s:06d}.tar")) as sink:
            for j in range(per_shard):
                k = s * per_shard + j
                text = "\n".join(f"sample {k} caption {c}" for c in range(captions))
                sink.write({"__key__": f"s{k:05d}", "png": _png(k), "cls": str(k).encode(), "txt": text})
                ids.append(k)
    return ids


def _labels_of_one_epoch(stream, workers: int) -> list[int]:
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers)
    return [int(label) for _, label, _ in loader]


def test_a_stream_over_shards_with_two_workers_sees_every_sample_once_per_epoch(tmp_path):
    ids = write_shards(tmp_path, "train", shards=5, per_shard=7)
    shards = expand_shards("train-*.tar", tmp_path)
    stream = ShardStream(shards, SampleFormat(), transform=lambda image: image.size, seed=3, shuffle=4)
    for epoch in (0, 1):
        stream.set_epoch(epoch)
        seen = _labels_of_one_epoch(stream, workers=2)
        assert sorted(seen) == ids, f"epoch {epoch}: some sample missed or read twice"
    stream.set_epoch(0)
    first = _labels_of_one_epoch(stream, workers=2)
    assert first == _labels_of_one_epoch(stream, workers=2), "the same epoch and seed give the same order"
    stream.set_epoch(1)
    assert _labels_of_one_epoch(stream, workers=2) != first, "another epoch, another order"


def test_two_ranks_with_two_workers_each_read_disjoint_shards_covering_the_epoch(tmp_path):
    ids = write_shards(tmp_path, "train", shards=6, per_shard=3)
    shards = expand_shards("train-{000000..000005}.tar", tmp_path)
    per_rank = [_labels_of_one_epoch(ShardStream(shards, SampleFormat(), lambda a: 0, seed=1, rank=r, world=2), 2)
                for r in (0, 1)]
    assert not set(per_rank[0]) & set(per_rank[1]) and sorted(per_rank[0] + per_rank[1]) == ids
    assert all(per_rank), "every rank gets shards"
    with pytest.raises(ShardError, match="1 shard.*for 2 processes"):
        ShardStream(shards[:1], SampleFormat(), lambda a: 0, world=2)


def test_index_reads_labels_and_caption_lists_but_keeps_no_image_bytes(tmp_path):
    write_shards(tmp_path, "test", shards=2, per_shard=4, captions=5)
    samples = index_shards(expand_shards("test-*.tar", tmp_path), SampleFormat())
    assert [s.label for s in samples] == list(range(8))
    assert samples[3].captions == tuple(f"sample 3 caption {c}" for c in range(5))
    assert not any(isinstance(v, (bytes, bytearray)) for s in samples for v in vars(s).values())
    image = np.asarray(Image.open(io.BytesIO(samples[5].image.read())))
    assert image.shape == (8, 8, 3) and image[0, 0, 0] == 5
    with pytest.raises(DataMissingError, match=r"000002.tar: shard not found \(6 of 8"):
        expand_shards("test-{000000..000007}.tar", tmp_path)
    (tmp_path / "bad-000000.tar").write_bytes(b"not a tar file at all" * 40)
    with pytest.raises(ShardError, match="bad-000000.tar: not a readable webdataset shard"):
        index_shards([str(tmp_path / "bad-000000.tar")], SampleFormat())


def _stream_sequence(tmp_path, shuffle=8) -> str:
    for split in ("train", "test"):
        write_shards(tmp_path, f"pairs-{split}", shards=4, per_shard=6, captions=5)
    task = {"name": "pairs", "source": {"adapter": "webdataset", "root": str(tmp_path), "urls": "pairs-{split}-*.tar",
                                        "stream": True, "shuffle": shuffle},
            "templates": ["{}"], "split": {"rule": "karpathy"}}
    seq = tmp_path / "stream.yaml"
    seq.write_text(yaml.safe_dump({"name": "stream", "version": 1, "track": "cross-modal", "protocol": "task-agnostic",
                                   "tasks": [task, dict(task, name="again")],
                                   "training": {"iterations": 5, "batch_size": 4, "lr": 0.001}}))
    return str(seq)


def test_streamed_training_batches_are_seeded_whole_and_captioned(tmp_path):
    from suite.data.loading import Batches
    from suite.models import create_model_and_transforms

    seq = load_sequence(_stream_sequence(tmp_path))
    data = materialize(seq, "pairs")
    assert data.train_stream is not None and len(data.test.captions[0]) == 5
    backbone = create_model_and_transforms(MICRO)
    runs = [list(Batches(backbone, "cross-modal", 4, workers=2)(data, 9, seed=7)) for _ in range(2)]
    assert len(runs[0]) == 9 and all(len(b["images"]) == 4 and len(b["tokens"]) == 4 for b in runs[0])
    for a, b in zip(*runs):
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["tokens"], b["tokens"])


def test_a_streamed_cross_modal_run_completes_with_workers(tmp_path):
    from suite.engine.runner import RunConfig, run

    rec = run(RunConfig(sequence=_stream_sequence(tmp_path), model=MICRO, pet="lora", workers=2,
                        out=str(tmp_path / "out"), run_dir=str(tmp_path / "runs"), progress=False))
    validate_record(rec)
    r = rec["steps"][-1]["retrieval"]["pairs"]
    assert rec["status"] == "complete" and all(0.0 <= r[k] <= 1.0 for k in ("i2t_r1", "t2i_r1", "i2t_r10"))
    assert [s["iterations"] for s in rec["steps"]] == [5, 5]


# ------------------------------------------------------------------------------------------ Karpathy splits
def write_karpathy(root, splits=("train", "restval", "val", "test", "test"), name="dataset_coco.json", **entry):
    (root / "val2014").mkdir(parents=True, exist_ok=True)
    images = []
    for i, which in enumerate(splits):
        Image.new("RGB", (16, 16), (30 * i, 0, 0)).save(root / "val2014" / f"im{i}.jpg")
        images.append({"filepath": "val2014", "filename": f"im{i}.jpg", "split": which,
                       "sentences": [{"raw": f"image {i} said way {c} "} for c in range(5)], **entry})
    (root / name).write_text(json.dumps({"images": images, "dataset": "coco"}))


def _karpathy_sequence(root, **source) -> object:
    from suite.config.sequences import parse_sequence

    return parse_sequence({"name": "k", "version": 1, "track": "cross-modal", "protocol": "task-agnostic",
                           "tasks": [{"name": "coco", "source": {"adapter": "karpathy", "root": str(root), **source},
                                      "templates": ["{}"], "split": {"rule": "karpathy"}}]}, "mem.yaml")


def test_karpathy_split_file_gives_every_image_its_five_captions(tmp_path):
    write_karpathy(tmp_path)
    data = materialize(_karpathy_sequence(tmp_path), "coco")
    assert data.train.ids == ["val2014/im0.jpg", "val2014/im1.jpg"], "train + restval, not val"
    assert data.test.ids == ["val2014/im3.jpg", "val2014/im4.jpg"]
    assert data.test.captions[1] == tuple(f"image 4 said way {c}" for c in range(5))
    assert data.test.load(0).shape == (16, 16, 3)
    assert [data.train.caption(0, d) for d in (0, 1, 5)] == ["image 0 said way 0", "image 0 said way 1",
                                                               "image 0 said way 0"]


@pytest.mark.parametrize("bad,match", [
    ({"filename": "../../etc/passwd"}, "leaves the image folder"),
    ({"sentences": "no list"}, "not a Karpathy split file"),
])
def test_karpathy_hostile_entries_fail_in_one_line(tmp_path, bad, match):
    write_karpathy(tmp_path, **bad)
    with pytest.raises(DataMissingError, match=match):
        materialize(_karpathy_sequence(tmp_path), "coco")


def test_karpathy_missing_files_are_named(tmp_path):
    with pytest.raises(DataMissingError, match="dataset_coco.json"):
        materialize(_karpathy_sequence(tmp_path), "coco")
    write_karpathy(tmp_path)
    (tmp_path / "val2014" / "im3.jpg").unlink()
    with pytest.raises(DataMissingError, match="im3.jpg"):
        materialize(_karpathy_sequence(tmp_path), "coco")


def test_retrieval_scores_images_against_all_their_captions():
    """Two images with two captions each; hand-computed recall from fixed features."""
    from suite.data.base import Split
    from suite.evaluation.evaluator import Evaluator

    class FixedText(Evaluator):
        def text_features(self, texts, route=None):
            assert texts == ["a0", "a1", "b0", "b1"]
            return torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.9, 0.1], [0.0, -1.0]])

    split = Split(labels=np.zeros(2, np.int64), ids=["a", "b"], captions=[("a0", "a1"), ("b0", "b1")])
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    r = FixedText(backbone=None).retrieval(img, split)
    # image a: scores a0 0, a1 1, b0 .9, b1 0 → best is a1 (positive): i2t R@1 = 1 for a
    # image b: scores a0 1, a1 0, b0 .1, b1 -1 → a0 first, b0 third → R@1 0, R@5 1
    assert r["i2t_r1"] == 0.5 and r["i2t_r5"] == 1.0
    # texts: a0→(a 0, b 1) wrong; a1→(a 1, b 0) right; b0→(a .9, b .1) wrong; b1→(a 0, b -1) wrong
    assert r["t2i_r1"] == 0.25 and r["t2i_r5"] == 1.0


def test_tasks_prepare_checks_every_set_and_says_how_to_provide_the_missing(tmp_path, monkeypatch, capsys):
    from suite.cli import main

    monkeypatch.setenv("CLSUITE_DATA", str(tmp_path / "nothing-here"))
    assert main(["tasks", "prepare", "tasks/real/retrieval-coco-flickr.yaml"]) == 1
    out = capsys.readouterr().out
    assert "coco" in out and "flickr30k" in out and "imagenet-val" in out and "3 of 3 data sets not ready" in out
    assert "dataset_coco.json" in out and "5 captions" in out, "the hint says how to provide the data"
    coco = tmp_path / "nothing-here" / "coco"
    write_karpathy(coco)
    assert main(["tasks", "prepare", "tasks/real/retrieval-coco-flickr.yaml"]) == 1
    out = capsys.readouterr().out
    assert "captions/test image=5.0" in out and "2 of 3 data sets not ready" in out
