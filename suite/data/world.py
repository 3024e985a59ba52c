"""The procedural image–caption world: deterministic scenes of shapes and glyphs with ground truth.

A sample is a small JSON-able *spec* (objects with shape, colour, texture, size, position; or a glyph with its
font; the rendering domain; a noise seed). Specs are drawn from a seeded RNG, so the list of specs *is* the
manifest: its sha256 pins the data exactly, and :func:`render` turns a spec into pixels with no randomness
of its own beyond the spec's seed. Captions and object lists come from the same spec, which is what makes
hallucination measurable (we know what is *not* in the picture).
"""
from __future__ import annotations

import json
import math
import os
import re
from functools import lru_cache
from typing import Any, Iterable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from suite.errors import SuiteError

SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond", "hexagon", "heart")
COLOURS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40),
    "purple": (140, 60, 190), "orange": (245, 140, 30), "cyan": (40, 200, 210), "pink": (240, 120, 190),
}
TEXTURES = ("plain", "striped", "dotted", "checkered")
SIZES = ("small", "large")
POSITIONS = ("left", "right", "top", "bottom", "center")
COUNT_WORDS = ("zero", "one", "two", "three", "four")
DIGITS = tuple("0123456789")
LETTERS = tuple("ABCDEFGHJKLMNPRSTUVWXYZ")
DOMAINS = ("solid", "outline", "noisy", "textured", "blurred", "pixelated", "dark")
# Fonts shipped inside matplotlib: available offline everywhere the suite installs.
FONTS = ("DejaVuSans", "DejaVuSans-Bold", "DejaVuSansMono", "DejaVuSerif", "DejaVuSerif-Italic",
         "STIXGeneral", "cmr10", "cmss10", "cmtt10", "DejaVuSans-Oblique")
FACETS = ("shape", "colour", "object", "texture", "count", "glyph", "scene")

_POS_XY = {"left": (0.28, 0.5), "right": (0.72, 0.5), "top": (0.5, 0.28), "bottom": (0.5, 0.72), "center": (0.5, 0.5)}


class WorldError(SuiteError):
    pass


@lru_cache(maxsize=64)
def _font(name: str, px: int) -> ImageFont.FreeTypeFont:
    import matplotlib  # only to find its bundled fonts

    path = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf", f"{name}.ttf")
    return ImageFont.truetype(path, px)


# ----------------------------------------------------------------------------------------------- specs
def _pick(rng: np.random.Generator, options: Iterable[Any], exclude: Iterable[Any] = ()) -> Any:
    pool = [o for o in options if o not in set(exclude)]
    return pool[int(rng.integers(len(pool)))]


def _object(rng: np.random.Generator, shape: str | None = None, colour: str | None = None,
            texture: str | None = None, forbidden: frozenset = frozenset(), size: str | None = None) -> dict:
    for _ in range(100):
        obj = {"shape": shape or _pick(rng, SHAPES), "colour": colour or _pick(rng, COLOURS),
               "texture": texture or _pick(rng, TEXTURES, ()), "size": size or _pick(rng, SIZES)}
        if (obj["colour"], obj["shape"]) not in forbidden:
            return obj
    raise WorldError(f"cannot draw an object avoiding {sorted(forbidden)} with shape={shape} colour={colour}")


def sample_spec(facet: str, value: str | None, domain: str, rng: np.random.Generator,
                forbidden: frozenset = frozenset(), fonts: tuple[str, ...] = FONTS) -> dict:
    """Draw one sample spec whose ``facet`` has ``value`` (the class), rendered in ``domain``."""
    if domain not in DOMAINS:
        raise WorldError(f"unknown domain {domain!r}; known: {', '.join(DOMAINS)}")
    spec: dict[str, Any] = {"domain": domain, "seed": int(rng.integers(2**31)), "bg": _pick(rng, ("white", "gray", "black"))}
    jitter = lambda: [round(float(rng.uniform(-0.08, 0.08)), 3), round(float(rng.uniform(-0.08, 0.08)), 3)]  # noqa: E731
    if facet == "glyph":
        if value is None or len(value) != 1:
            raise WorldError(f"glyph class must be one character, got {value!r}")
        spec["glyph"] = {"char": value, "font": _pick(rng, fonts or FONTS), "colour": _pick(rng, COLOURS),
                         "size": _pick(rng, SIZES), "pos": "center", "jitter": jitter()}
        return spec
    if facet == "scene":
        n = int(rng.integers(1, 4))
        positions = list(rng.permutation(["left", "right", "center"] if n < 3 else ["left", "center", "right"]))[:n]
        objs = []
        for pos in positions:
            o = _object(rng, forbidden=forbidden, size="small")
            o["pos"], o["jitter"] = str(pos), jitter()
            objs.append(o)
        spec["objects"] = objs
        return spec
    kw: dict[str, Any] = {}
    if facet == "shape":
        kw["shape"] = value
    elif facet == "colour":
        kw["colour"] = value
    elif facet == "texture":
        kw["texture"] = value
    elif facet == "object":
        colour, _, shape = (value or "").partition(" ")
        kw.update(colour=colour, shape=shape)
    elif facet == "count":
        if value not in COUNT_WORDS[1:]:
            raise WorldError(f"count class must be one of {COUNT_WORDS[1:]}, got {value!r}")
        n = COUNT_WORDS.index(value)
        base = _object(rng, forbidden=forbidden, size="small")
        slots = _count_slots(n, rng)
        spec["objects"] = [dict(base, pos=s, jitter=[0.0, 0.0]) for s in slots]
        return spec
    else:
        raise WorldError(f"unknown facet {facet!r}; known: {', '.join(FACETS)}")
    _check_value(kw)
    obj = _object(rng, forbidden=forbidden, **kw)
    obj["pos"], obj["jitter"] = _pick(rng, POSITIONS if obj["size"] == "small" else ("center",)), jitter()
    spec["objects"] = [obj]
    return spec


def _check_value(kw: dict) -> None:
    for key, allowed in (("shape", SHAPES), ("colour", tuple(COLOURS)), ("texture", TEXTURES)):
        if key in kw and kw[key] not in allowed:
            raise WorldError(f"unknown {key} {kw[key]!r}; known: {', '.join(allowed)}")


def _count_slots(n: int, rng: np.random.Generator) -> list[list[float]]:
    grid = [[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75], [0.5, 0.5]]
    idx = rng.permutation(len(grid))[:n]
    return [grid[int(i)] for i in sorted(idx)]


def spec_id(spec: dict) -> str:
    """Canonical text of a spec: the manifest entry."""
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))


# ------------------------------------------------------------------------------------------- rendering
def _texture_mask(texture: str, size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    period = max(4, size // 8)
    if texture == "striped":
        return ((xx + yy) // (period // 2)) % 2 == 0
    if texture == "dotted":
        return ((xx % period) < period // 2) & ((yy % period) < period // 2)
    if texture == "checkered":
        return ((xx // period) + (yy // period)) % 2 == 0
    return np.ones((size, size), dtype=bool)


def _shape_polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    def ring(n: int, rad: float, phase: float) -> list[tuple[float, float]]:
        return [(cx + rad * math.cos(phase + 2 * math.pi * k / n), cy + rad * math.sin(phase + 2 * math.pi * k / n))
                for k in range(n)]

    if shape == "circle":
        return ring(48, r, 0.0)
    if shape == "square":
        return ring(4, r * 1.2, math.pi / 4)
    if shape == "diamond":
        return ring(4, r * 1.15, 0.0)
    if shape == "triangle":
        return ring(3, r * 1.2, -math.pi / 2)
    if shape == "hexagon":
        return ring(6, r, 0.0)
    if shape == "star":
        outer, inner = ring(5, r * 1.2, -math.pi / 2), ring(5, r * 0.5, -math.pi / 2 + math.pi / 5)
        return [p for pair in zip(outer, inner) for p in pair]
    if shape == "cross":
        a, b = r * 0.38, r * 1.1
        pts = [(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b), (-a, a), (-b, a), (-b, -a), (-a, -a)]
        return [(cx + x, cy + y) for x, y in pts]
    if shape == "heart":
        pts = []
        for k in range(40):
            t = 2 * math.pi * k / 40
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((cx + x * r / 15, cy - y * r / 15 - r * 0.1))
        return pts
    raise WorldError(f"unknown shape {shape!r}")


_BG = {"white": (245, 245, 245), "gray": (128, 128, 128), "black": (15, 15, 15)}


def render(spec: dict, size: int = 32, supersample: int = 2) -> np.ndarray:
    """Render a spec to an ``size x size x 3`` uint8 array. Deterministic: same spec, same pixels."""
    big = size * supersample
    rng = np.random.default_rng(spec["seed"])
    domain = spec["domain"]
    bg = np.array(_BG[spec.get("bg", "white")], dtype=np.float64)
    if domain == "dark":
        bg = np.array((10.0, 10.0, 25.0))
    canvas = np.tile(bg, (big, big, 1))
    if domain == "textured":
        pattern = _texture_mask(_pick(rng, TEXTURES[1:]), big, rng)
        tint = np.array(_pick(rng, list(COLOURS.values())), dtype=np.float64)
        canvas[pattern] = 0.55 * canvas[pattern] + 0.45 * tint

    for obj in spec.get("objects", []):
        canvas = _draw_object(canvas, obj, big, domain, rng)
    if "glyph" in spec:
        canvas = _draw_glyph(canvas, spec["glyph"], big, domain)

    img = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8)).resize((size, size), Image.BOX)
    if domain == "blurred":
        img = img.filter(ImageFilter.GaussianBlur(radius=size / 24))
    elif domain == "pixelated":
        low = max(6, size // 4)
        img = img.convert("L").resize((low, low), Image.BOX).resize((size, size), Image.BILINEAR).convert("RGB")
    out = np.asarray(img, dtype=np.float64)
    if domain == "noisy":
        out = out + rng.normal(0, 40, out.shape)
    return np.clip(out, 0, 255).astype(np.uint8)


def _draw_object(canvas: np.ndarray, obj: dict, big: int, domain: str, rng: np.random.Generator) -> np.ndarray:
    pos = obj.get("pos", "center")
    cx, cy = (_POS_XY[pos] if isinstance(pos, str) else pos)
    jx, jy = obj.get("jitter", [0.0, 0.0])
    r = big * (0.30 if obj["size"] == "large" else 0.14)
    poly = _shape_polygon(obj["shape"], (cx + jx) * big, (cy + jy) * big, r)
    mask_img = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask_img)
    if obj["shape"] == "circle":
        x0, y0 = (cx + jx) * big, (cy + jy) * big
        box = [x0 - r, y0 - r, x0 + r, y0 + r]
        draw.ellipse(box, fill=255) if domain != "outline" else draw.ellipse(box, outline=255, width=max(2, big // 24))
    elif domain == "outline":
        draw.line(poly + [poly[0]], fill=255, width=max(2, big // 24))
    else:
        draw.polygon(poly, fill=255)
    mask = np.asarray(mask_img) > 127
    if domain != "outline":
        mask &= _texture_mask(obj["texture"], big, rng) | (obj["texture"] == "plain")
    colour = np.array(COLOURS[obj["colour"]], dtype=np.float64)
    canvas[mask] = colour
    return canvas


def _draw_glyph(canvas: np.ndarray, g: dict, big: int, domain: str) -> np.ndarray:
    px = int(big * (0.8 if g["size"] == "large" else 0.55))
    img = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(img)
    font = _font(g["font"], px)
    jx, jy = g.get("jitter", [0.0, 0.0])
    cx, cy = (0.5 + jx) * big, (0.5 + jy) * big
    if domain == "outline":
        draw.text((cx, cy), g["char"], font=font, anchor="mm", fill=0, stroke_width=max(1, big // 40), stroke_fill=255)
    else:
        draw.text((cx, cy), g["char"], font=font, anchor="mm", fill=255)
    alpha = np.asarray(img, dtype=np.float64)[..., None] / 255.0
    colour = np.array(COLOURS[g["colour"]], dtype=np.float64)
    return canvas * (1 - alpha) + colour * alpha


# -------------------------------------------------------------------------------------------- captions
def objects_of(spec: dict) -> list[str]:
    """Ground-truth concept list of a spec (``"red circle"``-style names, glyphs as ``"digit 3"``)."""
    if "glyph" in spec:
        c = spec["glyph"]["char"]
        return [f"digit {c}" if c.isdigit() else f"letter {c}"]
    return [f"{o['colour']} {o['shape']}" for o in spec.get("objects", [])]


def _describe(o: dict, detail: str) -> str:
    tex = "" if o["texture"] == "plain" else f"{o['texture']} "
    if detail == "short":
        return f"{o['colour']} {o['shape']}"
    if detail == "texture":
        return f"{o['colour']} {tex}{o['shape']}".replace("  ", " ")
    return f"{o['size']} {o['colour']} {tex}{o['shape']}".replace("  ", " ")


def caption(spec: dict, rng: np.random.Generator | None = None, style: str = "mixed") -> str:
    """A caption for a spec. ``style`` picks a caption domain: short, detailed, positional, or mixed."""
    rng = rng or np.random.default_rng(spec["seed"])
    if "glyph" in spec:
        g = spec["glyph"]
        kind = "digit" if g["char"].isdigit() else "letter"
        options = [f"the {kind} {g['char']}", f"a {g['colour']} {g['char']}", f"the {kind} {g['char']} in {g['colour']}",
                   f"a {g['size']} {kind} {g['char']}",
                   f"the number {g['char']}" if kind == "digit" else f"the letter {g['char']}"]
        return options[int(rng.integers(len(options)))]
    objs = spec.get("objects", [])
    same = len(objs) > 1 and all(_describe(o, "short") == _describe(objs[0], "short") for o in objs)
    if same:
        n = COUNT_WORDS[len(objs)] if len(objs) < len(COUNT_WORDS) else str(len(objs))
        return f"{n} {objs[0]['colour']} {objs[0]['shape']}s"
    if style == "mixed":
        style = ("short", "texture", "detailed", "positional")[int(rng.integers(4))]
    if style == "positional":
        parts = [f"a {_describe(o, 'short')} on the {o['pos']}" if isinstance(o.get("pos"), str) and o["pos"] != "center"
                 else f"a {_describe(o, 'short')} in the center" for o in objs]
    else:
        parts = [f"a {_describe(o, style)}" for o in objs]
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return _ARTICLE.sub(r"an \1", text)


_ARTICLE = re.compile(r"\ba (orange)")
