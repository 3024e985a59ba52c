"""Adapters for users' real data: ImageFolder trees, torchvision datasets with a local root, webdataset shards.

Nothing here downloads. Missing data raises :class:`DataMissingError` naming the dataset, where it was
looked for, and how to provide it.
"""
from __future__ import annotations

import functools
import inspect
import io
import os
import re
from pathlib import Path

import numpy as np

from suite.config.sequences import TaskSequence, TaskSpec
from suite.data.base import DataMissingError, Split, TaskData, seeded_per_class
from suite.data.shards import SampleFormat, ShardStreamSource, expand_shards, index_shards
from suite.errors import ConfigError
from suite.paths import read_json, read_text

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


WORDNET_ID = re.compile(r"^n\d{8}$")


@functools.lru_cache(maxsize=16)
def _read_names_file(path: str) -> dict[str, str]:
    out: dict[str, str] = {}
    lines = read_text(path, "class-names file", ConfigError).splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            raise ConfigError(f"{path}:{n}: expected '<folder><TAB><class name>'")
        out[parts[0].strip()] = parts[1].strip()
    return out


def folder_names(seq: TaskSequence, task: TaskSpec) -> dict[str, str]:
    """Folder → class name: ``source.folders_file`` (a tab-separated file shipped beside the sequence, e.g.
    ``names/imagenet.tsv`` from ImageNet's WordNet metadata) and ``source.folders`` (class name → folder)."""
    out: dict[str, str] = {}
    if task.source.get("folders_file"):
        out.update(_read_names_file(str(Path(seq.path).parent / task.source["folders_file"])))
    out.update({folder: name for name, folder in task.source.get("folders", {}).items()})
    return out


def class_folders(task: TaskSpec, folder: Path, found: list[str], names: dict[str, str] | None = None) -> list[str]:
    """The folder of each class of ``task``, matched by name (case, ``_``, ``-`` and spaces ignored), by the
    folder's own name (an id such as a WordNet id), or through ``names`` (folder → class name, see
    :func:`folder_names`). Labels follow the class list, so a renamed or added folder cannot relabel a task;
    folders of other classes are left out (a task may take a subset of a dataset's classes). A class without a
    folder is an error naming it. Classes read from the folders keep the folders' sorted order."""
    if not isinstance(task.classes, tuple):
        return found
    by_norm = {_norm(f): f for f in found}
    by_name = {_norm(n): f for f, n in (names or {}).items() if f in found}
    out, missing = [], []
    for c in task.classes:
        f = by_name.get(_norm(c)) or by_norm.get(_norm(c))
        (out.append(f) if f in found else missing.append(c))
    if missing:
        raise DataMissingError(f"{folder} (task {task.name}): no folder for class(es) {missing[:5]} "
                               f"(set source.folders or source.folders_file to map class names to folder names)")
    return out


def imagefolder_class_names(task: TaskSpec, folder: Path, folders: list[str], names: dict[str, str]) -> list[str]:
    """What prompts call each class: the sequence's own name, else the folder's name from ``names``; a WordNet-id
    folder without a name is an error, so no prompt ever reads "a photo of a n01440764"."""
    listed = task.classes if isinstance(task.classes, tuple) else folders
    out = [c if _norm(c) != _norm(f) else names.get(f, c.replace("_", " ")) for c, f in zip(listed, folders)]
    ids = [n for n in out if WORDNET_ID.match(n)]
    if ids:
        raise DataMissingError(f"{folder} (task {task.name}): folder(s) {ids[:3]} are WordNet ids with no class name; "
                               f"give source.folders_file (e.g. names/imagenet.tsv) or source.folders")
    return out


def load_imagefolder(seq: TaskSequence, task: TaskSpec, size: int) -> TaskData:
    root = data_root(task)
    sub = task.source.get("subdir", "")
    names = folder_names(seq, task)
    splits = {}
    classes: list[str] = []
    for key, default in (("train_split", "train"), ("test_split", "test")):
        d = root / sub / task.source.get(key, default) if task.source.get(key, default) else root / sub
        if not d.is_dir():
            raise _missing(task, d, f"{key} folder")
        found = sorted(p.name for p in d.iterdir() if p.is_dir())
        if not found:
            raise DataMissingError(f"{d} (task {task.name}): no class folders")
        folders = class_folders(task, d, found, names)
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
    folders = [classes[i] for i in keep] if keep else classes
    return TaskData(task.name, imagefolder_class_names(task, root, folders, names), list(task.templates), train, test)


def load_torchvision(seq: TaskSequence, task: TaskSpec, size: int) -> TaskData:
    import torchvision.datasets as tvd  # heavy: only for the torchvision adapter

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
        found = [_prompt_name(c) for c in getattr(ds, "classes", [])] or [str(i) for i in range(int(labels.max()) + 1)]
    keep = _class_range(task)
    train = _few_shot(_select_classes(splits["train_split"], keep), task, seq.seed)
    test = _select_classes(splits["test_split"], keep)
    return TaskData(task.name, _names(task, found), list(task.templates), train, test)


def _prompt_name(cls) -> str:
    """A torchvision class as prompts name it: the first of a synonym tuple (ImageNet), underscores as spaces
    (CIFAR-100's ``aquarium_fish``)."""
    return str(cls[0] if isinstance(cls, (tuple, list)) and cls else cls).replace("_", " ")


def _torchvision_targets(ds) -> np.ndarray:
    for attr in ("targets", "labels", "_labels", "y"):
        if hasattr(ds, attr):
            return np.asarray(getattr(ds, attr), dtype=np.int64)
    if hasattr(ds, "_samples"):
        return np.asarray([s[1] for s in ds._samples], dtype=np.int64)
    return np.asarray([ds[i][1] for i in range(len(ds))], dtype=np.int64)


def load_webdataset(seq: TaskSequence, task: TaskSpec, size: int) -> TaskData:
    """Local shards, indexed (:func:`~suite.data.shards.index_shards`): labels, captions and where each image lies;
    images are read by offset when used. ``source.stream: true`` trains by reading the shards front to back
    instead (split across ranks and DataLoader workers; ``source.shuffle`` samples of seeded buffer)."""
    from PIL import Image  # only file-backed images decode through PIL

    src = task.source
    fmt = SampleFormat.from_source(src)
    splits, shards = {}, {}
    for which in ("train", "test"):
        pattern = src.get(f"{which}_urls") or src.get("urls", "").replace("{split}", which)
        if not pattern:
            raise _missing(task, data_root(task), f"{which}_urls (or urls with {{split}})")
        shards[which] = expand_shards(pattern, data_root(task))
        samples = index_shards(shards[which], fmt)
        if not samples:
            raise _missing(task, Path(shards[which][0]), f"webdataset samples with an image ({'/'.join(fmt.image_exts)})")
        refs = [s.image for s in samples]
        splits[which] = Split(labels=np.asarray([s.label for s in samples], dtype=np.int64), ids=[s.key for s in samples],
                              loader=lambda i, r=refs: Image.open(io.BytesIO(r[i].read())),
                              captions=[s.captions for s in samples] if all(s.captions for s in samples) else None)
    stream = None
    if src.get("stream"):
        if task.split.get("few_shot"):
            raise ConfigError(f"{task.name}.source.stream: a streamed training split cannot also be few-shot")
        stream = ShardStreamSource(shards["train"], fmt, int(src.get("shuffle", 0)))
    names = list(task.classes) if isinstance(task.classes, tuple) else []
    return TaskData(task.name, names, list(task.templates), _few_shot(splits["train"], task, seq.seed), splits["test"],
                    train_stream=stream)


def load_karpathy(seq: TaskSequence, task: TaskSpec, size: int) -> TaskData:
    """COCO / Flickr30k by the Karpathy split file (``dataset_coco.json``, ``dataset_flickr30k.json``): every image
    with all of its captions (five each), training on ``train_split`` (default ``train,restval``), testing on
    ``test_split`` (default ``test``). Images lie at ``root/images/filepath/filename``."""
    root, src = data_root(task), task.source
    split_file = root / src.get("split_file", "dataset_coco.json")
    if not split_file.is_file():
        raise _missing(task, split_file, "Karpathy split file")
    split = read_json(split_file, "Karpathy split file", DataMissingError)
    try:
        entries = split["images"]
        rows = [(e.get("split", ""), Path(e.get("filepath", "")) / e["filename"],
                 tuple(s["raw"].strip() for s in e["sentences"])) for e in entries]
    except (ValueError, KeyError, TypeError) as exc:
        raise DataMissingError(f"{split_file}: not a Karpathy split file (needs images[].filename, "
                               f"images[].sentences[].raw; {type(exc).__name__}: {str(exc)[:80]})") from None
    images = root / src.get("images", "")
    outside = next((p for _, p, _ in rows if p.is_absolute() or ".." in p.parts), None)
    if outside is not None:
        raise DataMissingError(f"{split_file}: images[].filepath/filename {str(outside)[:80]!r} leaves the image folder")
    splits = {}
    for key, default in (("train_split", "train,restval"), ("test_split", "test")):
        wanted = {w.strip() for w in src.get(key, default).split(",")}
        chosen = [(path, caps) for which, path, caps in rows if which in wanted and caps]
        if not chosen:
            raise DataMissingError(f"{split_file} (task {task.name}): no image of split(s) {sorted(wanted)}")
        missing = next((images / p for p, _ in chosen if not (images / p).is_file()), None)
        if missing is not None:
            raise _missing(task, missing, "image named by the split file")
        files = [str(images / p) for p, _ in chosen]
        splits[key] = Split(labels=np.zeros(len(chosen), dtype=np.int64), ids=[str(p) for p, _ in chosen],
                            loader=lambda i, fs=files: fs[i], captions=[caps for _, caps in chosen])
    return TaskData(task.name, [], list(task.templates), _few_shot(splits["train_split"], task, seq.seed),
                    splits["test_split"])
