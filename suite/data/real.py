"""Adapters for users' real data: ImageFolder trees, torchvision datasets with a local root, webdataset shards.

Nothing here downloads. Missing data raises :class:`DataMissingError` naming the dataset, where it was
looked for, and how to provide it.
"""
from __future__ import annotations

import inspect
import io
import os
from pathlib import Path

import numpy as np

from ..sequences import TaskSequence, TaskSpec
from .base import DataMissingError, Split, TaskData, seeded_per_class

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


def data_root(task: TaskSpec) -> Path:
    """``source.root`` with ``$CLSUITE_DATA`` (default ``~/data``) and ``~`` expanded."""
    raw = task.source.get("root", "${CLSUITE_DATA}/" + task.name)
    env = dict(os.environ)
    env.setdefault("CLSUITE_DATA", str(Path.home() / "data"))
    for key, val in env.items():
        raw = raw.replace("${" + key + "}", val)
    return Path(os.path.expanduser(raw))


def _missing(task: TaskSpec, where: Path, what: str) -> DataMissingError:
    hint = task.source.get("hint", "place the data there or set $CLSUITE_DATA / source.root")
    name = task.source.get("dataset", task.name)
    return DataMissingError(f"{name} (task {task.name}): {what} not found at {where}; {hint}")


def _few_shot(split: Split, task: TaskSpec, seed: int) -> Split:
    k = task.split.get("few_shot")
    if not k:
        return split
    return split.subset(seeded_per_class(split.labels, k, seed))


def _select_classes(split: Split, keep: list[int] | None) -> Split:
    """Keep only samples of the ``keep`` labels, relabelled 0..len(keep)-1 in that order."""
    if keep is None:
        return split
    remap = {c: i for i, c in enumerate(keep)}
    idx = [i for i, l in enumerate(split.labels) if int(l) in remap]
    sub = split.subset(idx)
    sub.labels = np.asarray([remap[int(l)] for l in sub.labels], dtype=np.int64)
    return sub


def _class_range(task: TaskSpec) -> list[int] | None:
    cls = task.classes
    if isinstance(cls, dict) and "range" in cls:
        lo, hi = cls["range"]
        return list(range(lo, hi))
    return None


def _names(task: TaskSpec, found: list[str]) -> list[str]:
    if isinstance(task.classes, tuple):
        return list(task.classes)
    keep = _class_range(task)
    return [found[i] for i in keep] if keep else found


def _norm(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").replace("-", " ").split())


def class_folders(task: TaskSpec, folder: Path, found: list[str]) -> list[str]:
    """The folder of each class of ``task``, matched by name (case, ``_``, ``-`` and spaces ignored; or as
    ``source.folders`` maps it, e.g. a class name to its WordNet-id folder). Labels follow the class list, so a
    renamed or added folder cannot relabel a task; folders of other classes are left out (a task may take a subset
    of a dataset's classes). A class without a folder is an error naming it. Classes read from the folders keep
    the folders' sorted order."""
    if not isinstance(task.classes, tuple):
        return found
    declared = task.source.get("folders", {})
    by_norm = {_norm(f): f for f in found}
    out, missing = [], []
    for c in task.classes:
        f = declared.get(c) or by_norm.get(_norm(c))
        (out.append(f) if f in found else missing.append(declared.get(c, c)))
    if missing:
        raise DataMissingError(f"{folder} (task {task.name}): no folder for class(es) {missing[:5]} "
                               f"(set source.folders to map class names to folder names)")
    return out


def load_imagefolder(seq: TaskSequence, task: TaskSpec, size: int) -> TaskData:
    root = data_root(task)
    sub = task.source.get("subdir", "")
    splits = {}
    classes: list[str] = []
    for key, default in (("train_split", "train"), ("test_split", "test")):
        d = root / sub / task.source.get(key, default) if task.source.get(key, default) else root / sub
        if not d.is_dir():
            raise _missing(task, d, f"{key.split('_')[0]} folder")
        found = sorted(p.name for p in d.iterdir() if p.is_dir())
        if not found:
            raise DataMissingError(f"{d} (task {task.name}): no class folders")
        folders = class_folders(task, d, found)
        classes = folders
        files, labels = [], []
        for c, cname in enumerate(folders):
            for f in sorted((d / cname).rglob("*")):
                if f.suffix.lower() in IMAGE_EXTS:
                    files.append(f)
                    labels.append(c)
        rel = [str(f.relative_to(root)) for f in files]
        splits[key] = Split(labels=np.asarray(labels, dtype=np.int64), ids=rel,
                            loader=lambda i, fs=files: str(fs[i]))
    keep = _class_range(task)
    train = _few_shot(_select_classes(splits["train_split"], keep), task, seq.seed)
    test = _select_classes(splits["test_split"], keep)
    return TaskData(task.name, _names(task, classes), list(task.templates), train, test)


def load_torchvision(seq: TaskSequence, task: TaskSpec, size: int) -> TaskData:
    import torchvision.datasets as tvd

    name = task.source["dataset"]
    cls = getattr(tvd, name, None)
    if cls is None:
        raise DataMissingError(f"{name} (task {task.name}): torchvision has no dataset class of that name")
    root = data_root(task)
    params = inspect.signature(cls.__init__).parameters
    splits = {}
    for key, default in (("train_split", "train"), ("test_split", "test")):
        which = task.source.get(key, default)
        kwargs = {"download": False} if "download" in params else {}
        if "split" in params:
            kwargs["split"] = which
        elif "train" in params:
            kwargs["train"] = which == "train"
        try:
            ds = cls(str(root), **kwargs)
        except (RuntimeError, FileNotFoundError, OSError) as exc:
            raise _missing(task, root, f"torchvision {name} ({which}) [{str(exc).splitlines()[0]}]") from None
        labels = _torchvision_targets(ds)
        splits[key] = Split(labels=labels, ids=[f"{name}:{which}:{i}" for i in range(len(labels))],
                            loader=lambda i, d=ds: d[i][0])
        found = [str(c) for c in getattr(ds, "classes", [])] or [str(i) for i in range(int(labels.max()) + 1)]
    keep = _class_range(task)
    train = _few_shot(_select_classes(splits["train_split"], keep), task, seq.seed)
    test = _select_classes(splits["test_split"], keep)
    return TaskData(task.name, _names(task, found), list(task.templates), train, test)


def _torchvision_targets(ds) -> np.ndarray:
    for attr in ("targets", "labels", "_labels", "y"):
        if hasattr(ds, attr):
            return np.asarray(getattr(ds, attr), dtype=np.int64)
    if hasattr(ds, "_samples"):
        return np.asarray([s[1] for s in ds._samples], dtype=np.int64)
    return np.asarray([ds[i][1] for i in range(len(ds))], dtype=np.int64)


def load_webdataset(seq: TaskSequence, task: TaskSpec, size: int) -> TaskData:
    """Read shards into memory (keys, encoded bytes, label or caption); images decode on access."""
    import webdataset as wds
    from PIL import Image

    src = task.source
    img_key, label_key, cap_key = src.get("image_key", "jpg;png;jpeg"), src.get("label_key", "cls"), src.get("caption_key", "txt")
    splits = {}
    for which in ("train", "test"):
        pattern = src.get(f"{which}_urls") or src.get("urls", "").replace("{split}", which)
        pattern = str(data_root(task) / pattern) if pattern and "://" not in pattern and not pattern.startswith("/") else pattern
        keys, blobs, labels, caps = [], [], [], []
        try:
            for sample in wds.WebDataset(pattern, shardshuffle=False, empty_check=False):
                ext = next((e for e in img_key.split(";") if e in sample), None)
                if ext is None:
                    continue
                keys.append(sample["__key__"])
                blobs.append(sample[ext])
                labels.append(int(sample[label_key].decode()) if label_key in sample else 0)
                caps.append(sample[cap_key].decode() if cap_key in sample else None)
        except (FileNotFoundError, OSError, ValueError) as exc:
            raise _missing(task, Path(pattern), f"webdataset shards ({exc.__class__.__name__})") from None
        if not keys:
            raise _missing(task, Path(pattern), "webdataset samples")
        splits[which] = Split(labels=np.asarray(labels, dtype=np.int64), ids=keys,
                              loader=lambda i, b=blobs: Image.open(io.BytesIO(b[i])).convert("RGB"),
                              captions=caps if any(c is not None for c in caps) else None)
    names = list(task.classes) if isinstance(task.classes, tuple) else []
    return TaskData(task.name, names, list(task.templates), _few_shot(splits["train"], task, seq.seed), splits["test"])
