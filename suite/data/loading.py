"""From a split to model inputs, one path for training and evaluation: decoding (:func:`model_input`), batches
of decoded images on the model's device (:func:`as_model_batch`), DataLoader datasets whose workers decode
without touching the model, and the seeded training batches of a task (:class:`Batches`)."""
from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any, Iterable, Iterator

import numpy as np
import torch
import torch.utils.data

from suite.data.base import Split, TaskData
from suite.data.shards import ShardError, ShardStream


def model_input(backbone, image) -> torch.Tensor | np.ndarray:
    """One decoded image (an array or an RGB PIL image) as the model takes it: the model's PIL transform (a
    tensor), or resized to its input size (uint8; normalised with its batch)."""
    from PIL import Image  # only file-backed images decode through PIL

    im = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    tf = getattr(backbone, "pil_preprocess", None)
    return tf(im) if tf is not None else np.asarray(im.resize((backbone.image_size, backbone.image_size)))


def decode_image(backbone, split: Split, i: int) -> torch.Tensor | np.ndarray:
    """Image ``i`` of a file-backed split, decoded and made a model input (:func:`model_input`)."""
    return model_input(backbone, split.image(i))


def _as_tensor(image: torch.Tensor | np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image) if isinstance(image, np.ndarray) else image


def as_model_batch(backbone, images: torch.Tensor) -> torch.Tensor:
    """A stack of :func:`model_input` results on the model's device: uint8 images normalised there (resized ones
    from the PIL-less path), transformed ones moved as they are. Every decoded batch — main process or DataLoader
    workers, training or evaluation — goes through here."""
    if images.dtype == torch.uint8:
        return backbone.images_from_uint8(images)
    return images.to(backbone.device, non_blocking=True)


def batch_images(backbone, split: Split, idx: Iterable[int]) -> torch.Tensor:
    """Preprocessed images of ``split`` at ``idx``: the uint8 fast path, or each image decoded by
    :func:`decode_image`."""
    idx = list(idx)
    if split.images is not None:
        return backbone.images_from_uint8(split.images[idx])
    ims = [decode_image(backbone, split, i) for i in idx]
    return as_model_batch(backbone, torch.from_numpy(np.stack(ims)) if isinstance(ims[0], np.ndarray) else torch.stack(ims))


def _decoding_view(backbone) -> SimpleNamespace:
    """Only what decoding reads: DataLoader workers never touch the model (or its device)."""
    return SimpleNamespace(pil_preprocess=getattr(backbone, "pil_preprocess", None), image_size=backbone.image_size)


class DecodedImages(torch.utils.data.Dataset):
    """The images of a file-backed split, each decoded as :func:`decode_image` does it (for DataLoader workers)."""

    def __init__(self, backbone, split):
        self.backbone = _decoding_view(backbone)
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        return _as_tensor(decode_image(self.backbone, self.split, i))


class StreamInput:
    """A streamed sample's image as a model input (picklable, for the stream's DataLoader workers)."""

    def __init__(self, backbone):
        self.backbone = _decoding_view(backbone)

    def __call__(self, image) -> torch.Tensor:
        return _as_tensor(model_input(self.backbone, image))


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity, e.g. a SLURM allocation), else the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_workers() -> int:
    """Decoding processes for file-backed training data: half the cores, at most 8 (0 on a 1-2 core machine)."""
    cores = available_cores()
    return min(8, cores // 2) if cores > 2 else 0


class Batches:
    """Seeded mini-batches of one task's training split; each rank takes its shard of every global batch.

    The order of images depends only on the seed. In-memory (embedded) data is sliced directly; images read
    from files are decoded by ``workers`` DataLoader processes (pinned memory, prefetch) in that same order, so a
    run is identical with any number of workers."""

    def __init__(self, backbone, track: str, batch_size: int, workers: int = 0, rank: int = 0, world: int = 1):
        self.backbone, self.track, self.batch_size, self.workers = backbone, track, batch_size, int(workers)
        self.rank, self.world = rank, world

    def make(self, data: TaskData, idx: list[int], images: torch.Tensor | None = None, draw: int = 0) -> dict[str, Any]:
        """The batch of images ``idx``; on the cross-modal track with each image's caption for its ``draw``-th use."""
        split = data.train
        captions = [split.caption(i, draw) for i in idx] if self.track == "cross-modal" else None
        return self._assemble(data, batch_images(self.backbone, split, idx) if images is None else images,
                              split.labels[idx], captions)

    def _assemble(self, data: TaskData, images: torch.Tensor, labels, captions: list[str] | None) -> dict[str, Any]:
        """A training batch as losses read it: model inputs, labels, the task's data, and caption tokens."""
        batch = {"images": images, "labels": torch.as_tensor(labels, device=self.backbone.device), "data": data}
        if captions is not None:
            batch["tokens"] = self.backbone.tokenize(list(captions)).to(self.backbone.device)
        return batch

    def order(self, data: TaskData, n: int, seed: int = 0) -> list[list[int]]:
        """This rank's image indices of each of ``n`` batches."""
        rank, world = self.rank, self.world
        g = torch.Generator().manual_seed(seed)
        total = len(data.train)
        if total == 0:
            return []
        out, perm, pos = [], torch.randperm(total, generator=g), 0
        for _ in range(n):
            if pos + self.batch_size > total:
                perm, pos = torch.randperm(total, generator=g), 0
            out.append(perm[pos:pos + self.batch_size].tolist()[rank::world])
            pos += self.batch_size
        return out

    def epoch_of(self, b: int, total: int) -> int:
        """How many times :meth:`order` has reshuffled before batch ``b`` (each epoch draws the next caption)."""
        return b // max(1, total // self.batch_size)

    def __call__(self, data: TaskData, n: int, seed: int = 0) -> Iterator[dict[str, Any]]:
        if data.train_stream is not None:
            yield from self.streamed(data, n, seed)
            return
        order = self.order(data, n, seed)
        total = len(data.train)
        if data.train.images is not None or self.workers == 0 or not order:
            for b, idx in enumerate(order):
                yield self.make(data, idx, draw=self.epoch_of(b, total))
            return
        loader = torch.utils.data.DataLoader(DecodedImages(self.backbone, data.train), batch_sampler=order,
                                             num_workers=self.workers, pin_memory=self.backbone.device.type == "cuda",
                                             prefetch_factor=4)
        for b, (idx, images) in enumerate(zip(order, loader)):
            yield self.make(data, idx, as_model_batch(self.backbone, images), draw=self.epoch_of(b, total))

    def streamed(self, data: TaskData, n: int, seed: int = 0) -> Iterator[dict[str, Any]]:
        """``n`` batches read front to back from the task's shards (:class:`~suite.data.shards.ShardStream`): this
        rank's share of every global batch, epoch after epoch; a reader's last incomplete batch is dropped."""
        rank, world = self.rank, self.world
        src = data.train_stream
        stream = ShardStream(src.shards, src.fmt, StreamInput(self.backbone), seed, rank, world, src.shuffle)
        workers = min(self.workers, len(src.shards) // world)
        share = len(range(rank, self.batch_size, world))  # this rank's rows of a global batch, as order() deals them
        loader = torch.utils.data.DataLoader(stream, batch_size=share, num_workers=workers, drop_last=True,
                                             pin_memory=self.backbone.device.type == "cuda")
        made, epoch = 0, 0
        while made < n:
            stream.set_epoch(epoch)
            before = made
            for images, labels, captions in loader:
                yield self._assemble(data, as_model_batch(self.backbone, images), labels,
                                     captions if self.track == "cross-modal" else None)
                made += 1
                if made == n:
                    return
            if made == before:
                raise ShardError(f"{data.name}: no reader of {len(src.shards)} shard(s) holds a whole batch of "
                                 f"{share} samples")
            epoch += 1


__all__ = ["Batches", "available_cores", "DecodedImages", "StreamInput", "as_model_batch", "batch_images", "decode_image",
           "default_workers", "model_input"]
