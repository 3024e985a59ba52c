"""The embedded tiny-CLIP pretraining recipe: contrastive training on the procedural world, offline, on CPU.

Captions are drawn fresh from each sample's spec every time it is used (several styles, prompt-like
wrappers), and captions that are identical within a batch are all treated as positives (multi-positive
InfoNCE), since a small world repeats itself. Held-out compositions and fonts never appear.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from suite.config.sequences import read_yaml
from suite.config.train import make_scheduler
from suite.data import world
from suite.data.embedded import HELDOUT_COMPOSITIONS, PRETRAIN_FONTS
from suite.errors import ConfigError
from suite.models import CLIP_MEAN, CLIP_STD, embedded_config

WRAPPERS = ("{}", "a photo of {}.", "a picture of {}.", "an image of {}.", "{}.")
SHAPE_WRAPPERS = ("a photo of a {}.", "a {}.", "a picture of a {}.", "a {} shape.")
COLOUR_WRAPPERS = ("a {} object.", "something {}.", "a {} shape.")
TEXTURE_WRAPPERS = ("a {} object.", "a {} shape.")


def load_recipe(name: str) -> dict[str, Any]:
    path = Path(name)
    if not path.is_file():
        path = Path(str(resources.files("suite").joinpath(f"models/recipes/{name}.yaml")))
    if not path.is_file():
        raise ConfigError(f"unknown pretraining recipe {name!r} (no {path})")
    return read_yaml(path, ConfigError, "pretraining recipe")


def sample_pool(recipe: dict[str, Any], rng: np.random.Generator, n: int) -> list[dict]:
    facets = list(recipe["mixture"])
    weights = np.array([recipe["mixture"][f] for f in facets], dtype=float)
    weights /= weights.sum()
    specs = []
    for _ in range(n):
        facet = facets[int(rng.choice(len(facets), p=weights))]
        if facet == "glyph":
            char = (world.DIGITS + world.LETTERS)[int(rng.integers(len(world.DIGITS) + len(world.LETTERS)))]
            domain = recipe["glyph_domains"][int(rng.integers(len(recipe["glyph_domains"])))]
            spec = world.sample_spec("glyph", char, domain, rng, fonts=PRETRAIN_FONTS)
            if domain == "pixelated":
                spec["bg"] = "black"
                spec["glyph"]["size"] = "large"
        else:
            domain = recipe["domains"][int(rng.integers(len(recipe["domains"])))]
            value = None
            if facet == "count":
                value = world.COUNT_WORDS[int(rng.integers(2, 5))]
            elif facet in ("object", "texture"):
                facet_value = "object"
                colour = list(world.COLOURS)[int(rng.integers(len(world.COLOURS)))]
                shape = world.SHAPES[int(rng.integers(len(world.SHAPES)))]
                while (colour, shape) in HELDOUT_COMPOSITIONS:
                    shape = world.SHAPES[int(rng.integers(len(world.SHAPES)))]
                value = f"{colour} {shape}"
                spec = world.sample_spec(facet_value, value, domain, rng, forbidden=HELDOUT_COMPOSITIONS)
                spec["_facet"] = facet
                specs.append(spec)
                continue
            spec = world.sample_spec(facet, value, domain, rng, forbidden=HELDOUT_COMPOSITIONS)
        spec["_facet"] = facet
        specs.append(spec)
    return specs


def pretrain_caption(spec: dict, rng: np.random.Generator) -> str:
    """A caption for pretraining: world captions plus facet-only phrasings in prompt-like wrappers."""
    facet = spec.get("_facet")
    clean = {k: v for k, v in spec.items() if not k.startswith("_")}
    r = rng.random()
    if facet in ("object", "texture") and len(clean["objects"]) == 1:
        o = clean["objects"][0]
        if facet == "texture" and r < 0.5:
            return TEXTURE_WRAPPERS[int(rng.integers(len(TEXTURE_WRAPPERS)))].format(o["texture"])
        if r < 0.2:
            return SHAPE_WRAPPERS[int(rng.integers(len(SHAPE_WRAPPERS)))].format(o["shape"])
        if r < 0.35:
            return COLOUR_WRAPPERS[int(rng.integers(len(COLOUR_WRAPPERS)))].format(o["colour"])
        if r < 0.6:
            return SHAPE_WRAPPERS[int(rng.integers(len(SHAPE_WRAPPERS)))].format(f"{o['colour']} {o['shape']}")
    if facet == "glyph" and r < 0.5:
        c = clean["glyph"]["char"]
        if r < 0.3:
            return f"the digit {c}." if c.isdigit() else f"the letter {c}."
        return f"the number {c}." if c.isdigit() else f"a {c}."
    text = world.caption(clean, rng)
    return WRAPPERS[int(rng.integers(len(WRAPPERS)))].format(text)


def multi_positive_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, caption_ids: torch.Tensor) -> torch.Tensor:
    logits = scale * img @ txt.T
    same = (caption_ids[:, None] == caption_ids[None, :]).float()
    target = same / same.sum(1, keepdim=True)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def _augment(x: torch.Tensor, aug: dict[str, Any], gen: torch.Generator) -> torch.Tensor:
    """Random affine per image (rotation, translation, scale, shear) on a float batch in [0, 1]."""
    b = x.shape[0]
    u = lambda lo, hi: torch.rand(b, generator=gen) * (hi - lo) + lo  # noqa: E731
    ang = torch.deg2rad(u(-aug["degrees"], aug["degrees"]))
    sh = torch.deg2rad(u(-aug["shear"], aug["shear"]))
    sc = u(*aug["scale"])
    tx, ty = u(-aug["translate"], aug["translate"]) * 2, u(-aug["translate"], aug["translate"]) * 2
    cos, sin = torch.cos(ang), torch.sin(ang)
    theta = torch.stack([torch.stack([cos / sc, (-sin + sh) / sc, tx], -1),
                         torch.stack([sin / sc, cos / sc, ty], -1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # fill with the border colour so backgrounds stay uniform
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def render_pool(recipe: dict[str, Any], rng: np.random.Generator, pool_n: int, size: int) -> tuple[list[dict], torch.Tensor]:
    """``pool_n`` sampled scene specs and their rendered images (uint8, NCHW)."""
    specs = sample_pool(recipe, rng, pool_n)
    pool = torch.from_numpy(np.stack([world.render({k: v for k, v in s.items() if not k.startswith("_")}, size)
                                      for s in specs])).permute(0, 3, 1, 2).contiguous()
    return specs, pool


def save_pretrained(model, cfg: dict, recipe: dict[str, Any], recipe_name: str, result: dict[str, Any],
                    out_dir: str | Path) -> str:
    """``<model>.safetensors`` (fp16) and ``<model>.json`` (config, recipe, sha256, loss) in ``out_dir``."""
    import open_clip  # for its version in the metadata

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    weights = out / f"{recipe['model']}.safetensors"
    save_file(state, str(weights))
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    meta = {"model": recipe["model"], "config": cfg, "recipe": recipe_name, "recipe_content": recipe,
            "sha256": digest, "steps": result["steps"], "train_seconds": round(result["train_seconds"], 1),
            "final_loss": float(np.mean(result["losses"][-50:])), "torch": torch.__version__,
            "open_clip": open_clip.__version__}
    (out / f"{recipe['model']}.json").write_text(json.dumps(meta, indent=1) + "\n")
    return digest


def pretrain(recipe_name: str, out_dir: str | Path | None = None, steps: int | None = None,
             log_every: int = 100, progress: bool = True) -> dict[str, Any]:
    """Run a recipe; writes ``<model>.safetensors`` (fp16) and ``<model>.json`` to ``out_dir`` when given."""
    if steps is not None and steps < 1:
        raise ConfigError(f"--steps: {steps} (a pretraining run takes at least one step)")
    import open_clip  # heavy: imported only when a model is pretrained


    recipe = load_recipe(recipe_name)
    steps = int(steps if steps is not None else recipe["steps"])
    torch.set_num_threads(int(recipe.get("threads", 2)))
    seed = int(recipe["seed"])
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    cfg = embedded_config(recipe["model"])
    model = open_clip.CLIP(**cfg)
    pool_n = min(int(recipe["pool_size"]), max(512, steps * recipe["batch_size"]))
    t0 = time.perf_counter()
    specs, pool = render_pool(recipe, rng, pool_n, cfg["vision_cfg"]["image_size"])
    render_s = time.perf_counter() - t0
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], weight_decay=recipe["weight_decay"])
    warm, lo = int(recipe["warmup"]), float(recipe["min_lr"]) / float(recipe["lr"])
    sched = make_scheduler(opt, steps, warm, "cosine", floor=lo)
    gen = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    t1 = time.perf_counter()
    for step in range(steps):
        idx = rng.choice(pool_n, recipe["batch_size"], replace=False)
        caps = [pretrain_caption(specs[i], rng) for i in idx]
        uniq = {c: i for i, c in enumerate(dict.fromkeys(caps))}
        x = (_augment(pool[idx].float() / 255.0, recipe["augment"], gen) - mean) / std
        tokens = open_clip.tokenize(caps, context_length=cfg["text_cfg"]["context_length"])
        losses.append(_step(model, opt, sched, x, tokens, torch.tensor([uniq[c] for c in caps])))
        if progress and (step % log_every == 0 or step == steps - 1):
            el = time.perf_counter() - t1
            print(f"step {step:5d}/{steps} loss {np.mean(losses[-log_every:]):.4f} lr {sched.get_last_lr()[0]:.2e} "
                  f"{el / (step + 1):.2f}s/step", flush=True)
    result = {"recipe": recipe_name, "recipe_content": recipe, "steps": steps, "losses": losses,
              "render_seconds": render_s, "train_seconds": time.perf_counter() - t1, "model": model}
    if out_dir is not None:
        result["sha256"] = save_pretrained(model, cfg, recipe, recipe_name, result, out_dir)
    return result


def _step(model, opt, sched, x: torch.Tensor, tokens: torch.Tensor, ids: torch.Tensor) -> float:
    """One contrastive step (captions shared by several images are all positives); returns the loss."""
    img = F.normalize(model.encode_image(x), dim=-1)
    txt = F.normalize(model.encode_text(tokens), dim=-1)
    loss = multi_positive_loss(img, txt, model.logit_scale.exp(), ids)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(100))
    return float(loss.detach())
