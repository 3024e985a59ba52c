"""webdataset shards without reading them whole.

Two readers over the same tar files. :func:`index_shards` reads the tar headers (and the small label and caption
members) of local shards, so a split knows its keys, labels and captions and reads one image's bytes by offset when
asked: evaluation, manifests and seeded training order work as for any file-backed split, and no image is held in
memory. :class:`ShardStream` reads shards front to back for training (``source.stream: true``), each shard read by
exactly one DataLoader worker of one rank, so every sample is seen once per epoch across all processes.
"""
from __future__ import annotations

import glob
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from braceexpand import braceexpand
from webdataset.tariterators import base_plus_ext, tarfile_samples

from suite.data.base import DataMissingError
from suite.errors import SuiteError
from suite.paths import parse_json


class ShardError(SuiteError):
    """A shard that cannot be read as a webdataset tar, or shards too few for the processes reading them."""


@dataclass(frozen=True)
class MemberRef:
    """Where one member's bytes lie: a local tar file, the offset of its data, its size."""

    shard: str
    offset: int
    size: int

    def read(self) -> bytes:
        with open(self.shard, "rb") as f:
            f.seek(self.offset)
            return f.read(self.size)


@dataclass
class ShardSample:
    key: str
    image: MemberRef
    label: int
    captions: tuple[str, ...]


@dataclass(frozen=True)
class SampleFormat:
    """Which members of a sample are its image (first extension found), label and captions."""

    image_exts: tuple[str, ...] = ("jpg", "png", "jpeg", "webp")
    label_key: str = "cls"
    caption_key: str = "txt"

    @classmethod
    def from_source(cls, src: dict[str, Any]) -> "SampleFormat":
        return cls(tuple(src.get("image_key", "jpg;png;jpeg;webp").split(";")), src.get("label_key", "cls"),
                   src.get("caption_key", "txt"))

    def label(self, members: dict[str, bytes]) -> int:
        raw = members.get(self.label_key)
        return int(raw.decode().strip()) if raw is not None else 0

    def captions(self, members: dict[str, bytes]) -> tuple[str, ...]:
        """``txt``: one caption per non-empty line; ``json``: a list, or an object's ``captions`` list."""
        raw = members.get(self.caption_key)
        if raw is None:
            return ()
        if self.caption_key.endswith("json"):
            obj = parse_json(raw.decode(), f"{self.caption_key} captions", ShardError)
            items = obj.get("captions", []) if isinstance(obj, dict) else obj
            return tuple(str(c) for c in items)
        return tuple(line.strip() for line in raw.decode().splitlines() if line.strip())

    def image_ext(self, members) -> str | None:
        return next((e for e in self.image_exts if e in members), None)


@dataclass(frozen=True)
class ShardStreamSource:
    """A training split read as a stream: its shards, their sample format, the shuffle buffer size."""

    shards: list[str]
    fmt: SampleFormat
    shuffle: int = 0


def expand_shards(pattern: str, root: Path) -> list[str]:
    """Shard files named by ``pattern``: a glob (``coco-train-*.tar``) or brace range (``{000000..000063}``),
    relative to ``root`` unless absolute; sorted. Every brace-named file must exist; a glob must match one."""
    full = pattern if Path(pattern).is_absolute() else str(root / pattern)
    if any(ch in full for ch in "*?["):
        found = sorted(glob.glob(full))
        if not found:
            raise DataMissingError(f"{full}: no shard matches this pattern")
        return found
    names = list(braceexpand(full))
    missing = [n for n in names if not Path(n).is_file()]
    if missing:
        raise DataMissingError(f"{missing[0]}: shard not found ({len(missing)} of {len(names)} named by {pattern!r} missing)")
    return names


def index_shards(shards: list[str], fmt: SampleFormat) -> list[ShardSample]:
    """Keys, labels, captions and image locations of every sample (headers and small members only are read)."""
    out: list[ShardSample] = []
    for shard in shards:
        try:
            with tarfile.open(shard, "r:") as tf:
                groups: dict[str, dict[str, tarfile.TarInfo]] = {}
                for info in tf:
                    if not info.isfile():
                        continue
                    key, ext = base_plus_ext(info.name)
                    if key is not None:
                        groups.setdefault(key, {})[ext.lower()] = info
                for key, members in groups.items():
                    ext = fmt.image_ext(members)
                    if ext is None:
                        continue
                    small = {k: tf.extractfile(members[k]).read() for k in (fmt.label_key, fmt.caption_key)
                             if k in members}
                    info = members[ext]
                    out.append(ShardSample(key, MemberRef(shard, info.offset_data, info.size), fmt.label(small),
                                           fmt.captions(small)))
        except (tarfile.TarError, OSError, ValueError, UnicodeDecodeError) as exc:
            raise ShardError(f"{shard}: not a readable webdataset shard ({type(exc).__name__}: {str(exc)[:120]})") from None
    return out


def decode_bytes(raw: bytes):
    """An image member's bytes as an RGB PIL image (what :func:`~suite.evaluation.evaluator.model_input` takes,
    without an array round trip)."""
    from PIL import Image  # decoding only; indexing shards needs no PIL

    return Image.open(io.BytesIO(raw)).convert("RGB")


class ShardStream(torch.utils.data.IterableDataset):
    """Samples of ``shards`` read front to back; shards are dealt to (rank, worker) slots, so under torchrun with
    DataLoader workers each shard is read by one process per epoch. The shard order is seeded by (seed, epoch);
    ``shuffle`` > 0 adds a seeded buffer of that many samples within each reader. Yields
    ``(transform(image), label, caption)``, the caption chosen in turn by epoch among the sample's captions."""

    def __init__(self, shards: list[str], fmt: SampleFormat, transform: Callable[[np.ndarray], Any],
                 seed: int = 0, rank: int = 0, world: int = 1, shuffle: int = 0):
        self.shards, self.fmt, self.transform = list(shards), fmt, transform
        self.seed, self.rank, self.world, self.shuffle = seed, rank, world, shuffle
        self.epoch = 0
        if len(self.shards) < world:
            raise ShardError(f"{len(self.shards)} shard(s) for {world} processes: each process needs at least one")

    def set_epoch(self, epoch: int) -> None:
        """Takes effect at the next ``iter()`` of a DataLoader without persistent workers."""
        self.epoch = epoch

    def shards_for(self, worker: int, workers: int) -> list[str]:
        """This rank's worker's shards: slot ``worker * world + rank`` of every ``world * workers``, so every rank
        gets a shard as long as there are at least ``world`` of them."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = [self.shards[i] for i in torch.randperm(len(self.shards), generator=g).tolist()]
        return order[worker * self.world + self.rank::self.world * workers]

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker])
        buffer: list[tuple] = []
        for sample in tarfile_samples([{"url": s} for s in self.shards_for(worker, workers)]):
            ext = self.fmt.image_ext(sample)
            if ext is None:
                continue
            caps = self.fmt.captions(sample)
            item = (self.transform(decode_bytes(sample[ext])), self.fmt.label(sample),
                    caps[self.epoch % len(caps)] if caps else "")
            if self.shuffle <= 0:
                yield item
                continue
            buffer.append(item)
            if len(buffer) >= self.shuffle:
                yield buffer.pop(int(rng.integers(len(buffer))))
        while buffer:
            yield buffer.pop(int(rng.integers(len(buffer))))


__all__ = ["MemberRef", "SampleFormat", "ShardSample", "ShardStream", "ShardError", "ShardStreamSource",
           "decode_bytes", "expand_shards",
           "index_shards"]
