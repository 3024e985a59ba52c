"""One door to backbones: :func:`create_model_and_transforms` returns a frozen :class:`Backbone`.

Model specs (strings):

- ``embedded:tiny-clip`` — our embedded configs (``suite/models/configs/*.json``), with the shipped
  pretrained weights when they exist (``suite/assets/<name>.safetensors``), else random (``embedded:tiny-clip@random``);
- ``open_clip:ViT-B-16`` (random), ``open_clip:ViT-B-16@openai`` (pretrained tag; needs the weights cached
  locally since nothing downloads here), ``open_clip:ViT-B-16@/path/to/ckpt.pt`` (local checkpoint);
- ``hf:/path/to/dir`` — a transformers ``CLIPModel`` saved with ``save_pretrained``;
- ``<kind>:<name>[@<tag>]`` — a loader an installed package registers under the entry-point group
  ``clsuite.backbones`` with name ``<kind>``: a callable ``(name, tag) -> Backbone`` (imported only when asked).
"""
from __future__ import annotations

import hashlib
import os
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from suite.errors import SuiteError
from suite.models.backbone import CLIP_MEAN, CLIP_STD, Backbone, HFBackbone, OpenClipBackbone
from suite.paths import parse_json
from suite.registry import BACKBONES


class ModelError(SuiteError):
    pass


def embedded_configs() -> dict[str, Path]:
    root = Path(str(resources.files("suite").joinpath("models/configs")))
    return {p.stem: p for p in sorted(root.glob("*.json"))}


def embedded_config(name: str) -> dict:
    files = embedded_configs()
    if name not in files:
        raise ModelError(f"unknown embedded model {name!r}; known: {', '.join(files)}")
    cfg = parse_json(files[name].read_text(), files[name], ModelError)
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def asset_path(name: str) -> Path:
    return Path(str(resources.files("suite").joinpath("assets"))) / f"{name}.safetensors"


def _load_state(model: nn.Module, path: Path) -> None:
    try:
        if path.suffix == ".safetensors":

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
            state = state.get("state_dict", state) if isinstance(state, dict) else state
            state = {k.removeprefix("module."): v for k, v in state.items()}
    except Exception as exc:  # noqa: BLE001 — a corrupt or foreign file, said in one line
        raise ModelError(f"{path}: not a weights file this suite can read ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:120] if str(exc) else ''})") from None
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    if unexpected or [m for m in missing if not m.endswith("attn_mask")]:
        raise ModelError(f"{path}: checkpoint does not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")


def parse_spec(spec: str) -> tuple[str, str, str | None]:
    kind, _, rest = spec.partition(":")
    if not rest:
        kind, rest = "embedded", spec
    name, _, tag = rest.partition("@")
    return kind, name, (tag or None)


def create_model_and_transforms(spec: str = "embedded:tiny-clip", device: str | torch.device = "cpu",
                                freeze: bool = True) -> Backbone:
    """Build the backbone named by ``spec`` (see module doc) through its kind's loader
    (:data:`suite.registry.BACKBONES`); its weights are frozen unless ``freeze=False``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing downloads at run time: weights come from caches or paths
    kind, name, tag = parse_spec(spec)
    if kind not in BACKBONES.names():
        raise ModelError(f"unknown model kind {kind!r} in {spec!r} (use {', '.join(f'{k}:' for k in BACKBONES.names())})")
    bb = BACKBONES.load(kind)(name, tag)
    if not isinstance(bb, Backbone):
        raise ModelError(f"{spec}: the {kind!r} loader returned {type(bb).__name__}, not a suite Backbone")
    if freeze:
        for p in bb.parameters():
            p.requires_grad_(False)
    return bb.to(device).eval()


def _spec(kind: str, name: str, tag: str | None) -> str:
    return f"{kind}:{name}" + (f"@{tag}" if tag is not None else "")


def load_embedded(name: str, tag: str | None) -> Backbone:
    """``embedded:<name>[@random|@<weights file>]``: a shipped tiny open_clip config, with its shipped weights.

    Built by :mod:`suite.models.tiny_clip` (open_clip's module tree and arithmetic, without importing open_clip,
    whose imports cost seconds a run on an embedded model does not need)."""
    from suite.models.tiny_clip import CLIP

    spec = _spec("embedded", name, tag)
    cfg = embedded_config(name)
    model = CLIP(**cfg)
    weights = None
    if tag != "random":
        weights = Path(tag) if tag else asset_path(name)
        if weights.is_file():
            _load_state(model, weights)
        elif tag:
            raise ModelError(f"{spec}: checkpoint {weights} not found")
        else:
            weights = None
    return OpenClipBackbone(model, image_size=cfg["vision_cfg"]["image_size"],
                            context_length=cfg["text_cfg"]["context_length"], mean=CLIP_MEAN, std=CLIP_STD, spec=spec,
                            pretrained=weights is not None)


def load_open_clip(name: str, tag: str | None) -> Backbone:
    """``open_clip:<architecture>[@<pretrained tag or checkpoint>]``; weights must be cached or local."""
    import open_clip  # heavy: imported only when a model is built

    spec = _spec("open_clip", name, tag)
    if tag and (os.sep in tag or tag.endswith((".pt", ".bin", ".safetensors"))) and not Path(tag).is_file():
        raise ModelError(f"{spec}: checkpoint {tag} not found")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=tag)
    except Exception as exc:  # noqa: BLE001 — missing, corrupt or foreign weights: one line
        raise ModelError(f"{spec}: {str(exc).splitlines()[0]} (nothing is downloaded here: cache the weights "
                         f"first or give a local checkpoint path)") from None
    vis = model.visual
    size = vis.image_size[0] if isinstance(vis.image_size, (tuple, list)) else vis.image_size
    mean = getattr(vis, "image_mean", None) or CLIP_MEAN
    std = getattr(vis, "image_std", None) or CLIP_STD
    return OpenClipBackbone(model, image_size=size, context_length=model.context_length, mean=mean, std=std,
                            spec=spec, pretrained=tag is not None, tokenizer=open_clip.get_tokenizer(name),
                            pil_preprocess=preprocess)


def load_hf(name: str, tag: str | None) -> Backbone:
    """``hf:<folder>``: a transformers ``CLIPModel`` saved with ``save_pretrained``."""
    from transformers import CLIPModel, CLIPTokenizer  # heavy, optional: imported only for this kind

    path = Path(name)
    if not (path / "config.json").is_file():
        raise ModelError(f"{_spec('hf', name, tag)}: no transformers CLIPModel at {path} (expected config.json from "
                         f"save_pretrained)")
    model = CLIPModel.from_pretrained(str(path), local_files_only=True)
    tok = CLIPTokenizer.from_pretrained(str(path), local_files_only=True) if (path / "vocab.json").is_file() else None
    return HFBackbone(model, tokenizer=tok, spec=_spec("hf", name, tag))


def weights_digest(model: nn.Module) -> str:
    """sha256 (16 hex) of a model's parameters and buffers, names included: the weights a run starts from."""

    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


__all__ = ["Backbone", "ModelError", "asset_path", "create_model_and_transforms", "embedded_config", "embedded_configs",
           "load_embedded", "load_hf", "load_open_clip", "weights_digest"]
