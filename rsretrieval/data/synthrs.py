"""SynthRS: a procedural, seeded image-caption dataset that runs fully offline.

Two domains share one vocabulary of objects, colours, counts and positions:

* ``domain="rs"``: top-down remote-sensing-like scenes named like RSITMD's classes (airport,
  parking, port, ...), each with its own textured ground, landmarks (runway, river, bridge, ...)
  and characteristic, often small objects. Captions follow RSITMD's style, and about 40% of them
  never name the scene.
* ``domain="source"``: object-centred "photos" (one object class per image, on backgrounds that
  vary in colour and texture, objects from small to large) with simpler captions. It is the
  pretraining domain: reference.md §6 measured that transfer to the rs domain appears only when
  the source shares the rs vocabulary and visual statistics.

Layout written by :func:`generate_synthrs` (RSITMD's, so the RSITMD reader loads it)::

    root/dataset_RSITMD.json   Karpathy-style captions and splits
    root/images/<scene>_<k>.png
    root/masks/<scene>_<k>.png 8-bit object ids: 0 = background, k = k-th entry of objects.json
    root/objects.json          {filename: [{"id", "class", "colour", "kind", "bbox", "area_fraction",
                                "position", "size", "ground", "on", "near"}, ...]}
    root/synthrs.json          generator version and parameters (written last)

``bbox`` is ``[x0, y0, x1, y1]`` in pixels, tight around the object's visible mask pixels, with
``x1``/``y1`` exclusive. ``kind`` is ``object`` (countable things) or ``landmark`` (runway, river,
bridge, ...). ``on``/``near`` hold landmark ids; ``position`` is [top|middle|bottom, left|center|right].

Image ``i`` is a pure function of ``(seed, domain, i)``: its scene is ``SCENES[i % len(SCENES)]``
(``SOURCE_SCENES`` for the source domain) and all its randomness comes from
``np.random.default_rng([seed, DOMAINS.index(domain), i])``, so the same seed gives byte-identical
files in any generation order.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> image, objects, mask = render_scene(rng, "airport", 224)
>>> captions = make_captions(rng, "airport", objects)   # five true sentences
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import struct
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from rsretrieval.errors import RSRetrievalError

DOMAINS = ("rs", "source")
# Generator version per domain, so a change to one does not invalidate the other's datasets.
# source 1.1: names grounds, landmarks and places.
VERSIONS: Mapping[str, str] = MappingProxyType({"rs": "1.0", "source": "1.1"})
Colour = tuple[int, int, int]


class SynthRSExistsError(RSRetrievalError, FileExistsError):
    """The target folder already holds something other than the requested SynthRS dataset."""


# ----------------------------------------------------------------------------- vocabulary

PALETTE: Mapping[str, Colour] = MappingProxyType({
    "white": (232, 232, 226), "gray": (128, 130, 134), "black": (34, 34, 38), "red": (196, 44, 38),
    "orange": (230, 126, 36), "yellow": (232, 204, 56), "green": (58, 140, 54), "blue": (44, 86, 196),
    "brown": (122, 80, 48),
})


@dataclass(frozen=True)
class ObjectClass:
    """One countable object class: how it is named, coloured and sized.

    Attributes:
        nouns: (singular, plural) synonyms used in captions.
        verbs: (singular, plural, participle) verb phrases ("is parked", "are parked", "parked").
        colours: rs-domain colour names and weights.
        length: rs-domain length range as a fraction of the image side.
        shadow: shadow length as a fraction of the object length (its height).
    """

    nouns: tuple[tuple[str, str], ...]
    verbs: tuple[tuple[str, str, str], ...]
    colours: tuple[tuple[str, float], ...]
    length: tuple[float, float]
    shadow: float


OBJECTS: Mapping[str, ObjectClass] = MappingProxyType({
    "plane": ObjectClass((("plane", "planes"), ("airplane", "airplanes"), ("aircraft", "aircraft")),
                         (("is parked", "are parked", "parked"), ("is standing", "are standing", "standing")),
                         (("white", 6), ("gray", 2), ("red", 1), ("blue", 1)), (0.10, 0.2), 0.05),
    "car": ObjectClass((("car", "cars"),),
                       (("is parked", "are parked", "parked"), ("is stopped", "are stopped", "stopped")),
                       (("white", 3), ("black", 2), ("gray", 2), ("red", 2), ("blue", 2), ("yellow", 1)),
                       (0.042, 0.055), 0.06),
    "truck": ObjectClass((("truck", "trucks"), ("lorry", "lorries")),
                         (("is parked", "are parked", "parked"),),
                         (("white", 3), ("red", 1), ("blue", 1), ("yellow", 1), ("orange", 1)), (0.07, 0.09),
                         0.07),
    "boat": ObjectClass((("boat", "boats"), ("ship", "ships"), ("vessel", "vessels")),
                        (("is moored", "are moored", "moored"), ("is floating", "are floating", "floating")),
                        (("white", 5), ("red", 1), ("blue", 1), ("yellow", 1), ("orange", 1)), (0.06, 0.16),
                        0.03),
    "tank": ObjectClass((("storage tank", "storage tanks"), ("oil tank", "oil tanks"), ("tank", "tanks")),
                        (("stands", "stand", "standing"), ("is located", "are located", "located")),
                        (("white", 6), ("gray", 3), ("yellow", 1)), (0.07, 0.15), 0.12),
    "building": ObjectClass((("building", "buildings"), ("house", "houses")),
                            (("stands", "stand", "standing"), ("is built", "are built", "built"),
                             ("is located", "are located", "located")),
                            (("red", 3), ("gray", 3), ("white", 2), ("orange", 2), ("brown", 2), ("blue", 1)),
                            (0.08, 0.16), 0.14),
    "tree": ObjectClass((("tree", "trees"),), (("grows", "grow", "growing"), ("stands", "stand", "standing")),
                        (("green", 12), ("yellow", 1), ("orange", 1)), (0.05, 0.09), 0.14),
    "court": ObjectClass((("tennis court", "tennis courts"), ("court", "courts")),
                         (("is located", "are located", "located"), ("lies", "lie", "lying")),
                         (("green", 3), ("blue", 2), ("red", 2)), (0.13, 0.18), 0.0),
    "pool": ObjectClass((("swimming pool", "swimming pools"), ("pool", "pools")),
                        (("is located", "are located", "located"), ("lies", "lie", "lying")), (("blue", 1),),
                        (0.05, 0.08), 0.0),
})

# Landmarks are drawn before the objects; their nouns are used in relations ("beside the runway").
LANDMARKS: Mapping[str, str] = MappingProxyType({
    "runway": "runway", "terminal": "terminal", "river": "river", "bridge": "bridge", "pier": "pier",
    "road": "road", "track": "running track", "diamond": "baseball diamond", "church": "church",
    "pond": "pond", "water": "sea", "path": "dirt path",
})


@dataclass(frozen=True)
class SceneInfo:
    """How captions name a scene.

    Attributes:
        nouns: scene words; object-only captions contain none of them.
        prep: preposition for "cars are parked in the parking lot" ("" where that would misplace objects).
        adjectives: scene adjectives ("a busy airport").
        ground: what the ground looks like, without any scene word.
    """

    nouns: tuple[str, ...]
    prep: str
    adjectives: tuple[str, ...]
    ground: tuple[str, ...]


SCENE_INFO: Mapping[str, SceneInfo] = MappingProxyType({
    "airport": SceneInfo(("airport", "airfield"), "at", ("large", "busy"), ("grass and concrete",)),
    "farmland": SceneInfo(("farmland", "farm", "cropland"), "in", ("large", "green"),
                          ("fields of different colours", "fields with crop rows")),
    "forest": SceneInfo(("forest", "woods", "woodland"), "in", ("dense", "green", "thick"),
                        ("dark green tree crowns", "dense green vegetation")),
    "beach": SceneInfo(("beach", "coast", "seaside"), "on", ("sandy", "long"),
                       ("yellow sand and blue water",)),
    "river": SceneInfo(("river",), "", ("winding", "wide"), ("green land and dark water",)),
    "port": SceneInfo(("port", "harbor", "harbour"), "in", ("busy", "large"), ("water and gray concrete",)),
    "parking": SceneInfo(("parking lot", "parking area"), "in", ("large", "busy", "open"), ("gray asphalt",)),
    "denseresidential": SceneInfo(("dense residential area", "crowded neighbourhood",
                                   "residential district"), "in",
                                  ("crowded", "busy"), ("roofs and narrow streets",)),
    "sparseresidential": SceneInfo(("sparse residential area", "quiet neighbourhood", "suburb"), "in",
                                   ("quiet", "green"), ("green lawns",)),
    "industrial": SceneInfo(("industrial area", "factory zone", "industrial park"), "in", ("large", "busy"),
                            ("gray concrete and large roofs",)),
    "playground": SceneInfo(("playground", "sports ground", "stadium"), "at", ("large", "green"),
                            ("green grass",)),
    "storagetanks": SceneInfo(("oil depot", "fuel depot", "storage area"), "in", ("large", "industrial"),
                              ("bare brown ground",)),
    "bridge": SceneInfo(("bridge",), "", ("long", "gray"), ("water and land",)),
    "baseballfield": SceneInfo(("baseball field", "ballpark"), "at", ("green", "large"),
                               ("mown green grass",)),
    "desert": SceneInfo(("desert", "sand sea"), "in", ("vast", "dry", "empty"),
                        ("rippled yellow sand dunes",)),
    "meadow": SceneInfo(("meadow", "grassland"), "in", ("green", "open", "quiet"), ("green grass",)),
    "pond": SceneInfo(("pond", "small lake"), "", ("small", "quiet"), ("grass and still water",)),
    "church": SceneInfo(("church",), "", ("old", "large"), ("gray pavement", "paved squares")),
})
SCENES: tuple[str, ...] = tuple(SCENE_INFO)
SOURCE_SCENES: tuple[str, ...] = tuple(OBJECTS)
_NUMBERS = ("zero", "one", "two", "three", "four", "five")
_POS = MappingProxyType({
    ("top", "left"): ("in the top left corner", "at the top left"),
    ("top", "right"): ("in the top right corner", "at the top right"),
    ("bottom", "left"): ("in the bottom left corner", "at the bottom left"),
    ("bottom", "right"): ("in the bottom right corner", "at the bottom right"),
    ("top", "center"): ("at the top", "in the upper part of the image"), ("top", None): ("at the top",),
    ("bottom", "center"): ("at the bottom", "in the lower part of the image"),
    ("bottom", None): ("at the bottom",),
    ("middle", "left"): ("on the left", "at the left"), (None, "left"): ("on the left side", "on the left"),
    ("middle", "right"): ("on the right", "at the right"),
    (None, "right"): ("on the right side", "on the right"),
    ("middle", "center"): ("in the center", "in the middle of the image"),
})

# Texture ramps (dark, light) for the grounds.
_RAMPS: Mapping[str, tuple[Colour, Colour]] = MappingProxyType({
    "grass": ((50, 84, 36), (136, 164, 80)), "drygrass": ((104, 110, 62), (184, 176, 118)),
    "canopy": ((14, 36, 18), (74, 112, 52)), "sand": ((184, 160, 118), (240, 224, 184)),
    "dune": ((168, 116, 66), (240, 202, 142)), "water": ((16, 44, 74), (60, 104, 134)),
    "shallow": ((34, 104, 126), (100, 178, 182)), "asphalt": ((56, 57, 60), (122, 122, 124)),
    "concrete": ((140, 138, 130), (210, 206, 198)), "soil": ((112, 88, 62), (176, 150, 112)),
})


# ----------------------------------------------------------------------------- textures


def _pick(rng: np.random.Generator, seq: Sequence[Any]) -> Any:
    return seq[int(rng.integers(len(seq)))]


def _weighted(rng: np.random.Generator, pairs: Sequence[tuple[str, float]]) -> str:
    r = rng.random() * sum(w for _, w in pairs)  # by hand: rng.choice(p=...) costs ~10x more
    for name, w in pairs:
        r -= w
        if r < 0:
            return name
    return pairs[-1][0]


def _noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth value noise in about [0, 1]: a small random grid upsampled (fast, vectorised in C)."""
    grid = rng.random((cells + 1, cells + 1), dtype=np.float32)
    return np.asarray(Image.fromarray(grid).resize((size, size), Image.Resampling.BICUBIC))


def _fbm(rng: np.random.Generator, size: int, cells: Sequence[int] = (3, 12),
         grain: float = 0.12) -> np.ndarray:
    """Two or more octaves of value noise plus pixel grain (sensor-like), roughly in [0, 1]."""
    weights = np.array([0.62, 0.38, 0.25][: len(cells)], np.float32)
    weights *= 1.6 / weights.sum()  # stretch by 1.6: upsampled noise clusters around 0.5
    base = min(size, max(size // 4, 2 * max(cells)))  # sum the octaves small, upsample once
    small = sum(w * _noise(rng, base, c) for c, w in zip(cells, weights))
    field = np.array(Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC))
    if grain:
        field += grain * rng.random((size, size), dtype=np.float32)
    field -= 0.3 + grain / 2
    return field


def _paint(field: np.ndarray, ramp: str | tuple[Colour, Colour]) -> np.ndarray:
    """Map a [0, 1] field through a dark->light colour ramp, as an RGB uint8 array."""
    lo, hi = _RAMPS[ramp] if isinstance(ramp, str) else ramp
    grey = Image.fromarray(np.clip(field * 255.0, 0, 255).astype(np.uint8))
    # The ramp as a palette: PIL's palette conversion is ~5x faster than numpy fancy indexing.
    ramp = np.linspace(np.asarray(lo, np.float32), np.asarray(hi, np.float32), 256).astype(np.uint8)
    grey.putpalette(ramp.tobytes())
    return np.asarray(grey.convert("RGB"))


def _coords(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    return c[None, :], c[:, None]


def _water_field(rng: np.random.Generator, size: int) -> np.ndarray:
    """Water brightness: smooth noise plus short, noise-bent wave crests (made at half size: 4x cheaper)."""
    half = max(16, size // 2)
    x, y = _coords(half)
    a = rng.uniform(0, math.pi)
    phase = 2 * math.pi * rng.uniform(18, 30) * (x * math.cos(a) + y * math.sin(a)) + 4 * _noise(rng, half, 5)
    field = 0.6 * _fbm(rng, half, (3, 8), 0.0) + 0.22 * np.sin(phase) + 0.2
    field = np.array(Image.fromarray(field.astype(np.float32)).resize((size, size), Image.Resampling.BICUBIC))
    return field + 0.05 * (rng.random((size, size), dtype=np.float32) - 0.5)


def _water(rng: np.random.Generator, size: int, ramp: str = "water") -> np.ndarray:
    return _paint(_water_field(rng, size), ramp)


def _fields(rng: np.random.Generator, size: int) -> np.ndarray:
    """Farmland: irregular rotated parcels, each with its own crop colour and row direction."""
    half = max(16, size // 2)  # computed at half size and upsampled: parcels are smooth, 4x cheaper
    x, y = _coords(half)
    a = rng.uniform(0, math.pi)
    u, v = x * math.cos(a) + y * math.sin(a), -x * math.sin(a) + y * math.cos(a)
    cu = np.cumsum(rng.uniform(0.12, 0.32, 8)) - 1.0
    cv = np.cumsum(rng.uniform(0.12, 0.32, 8)) - 1.0
    pid = np.searchsorted(cu, u) * 9 + np.searchsorted(cv, v)
    crops = np.array([(86, 128, 52), (120, 150, 66), (168, 160, 92), (150, 118, 78), (70, 104, 46),
                      (190, 176, 110), (110, 90, 60)], np.float32)
    colour = crops[rng.integers(len(crops), size=81)][pid]
    period = rng.uniform(0.018, 0.035, 81)[pid]
    rows = np.where(rng.random(81)[pid] < 0.5, u, v)
    shade = 0.86 + 0.1 * np.sin(2 * math.pi * rows / period) + 0.12 * (_noise(rng, half, 6) - 0.5)
    small = Image.fromarray(np.clip(colour * shade[..., None], 0, 255).astype(np.uint8))
    return np.asarray(small.resize((size, size), Image.Resampling.BILINEAR))


def _dunes(rng: np.random.Generator, size: int) -> np.ndarray:
    x, y = _coords(size)
    a = rng.uniform(0, math.pi)
    u = x * math.cos(a) + y * math.sin(a) + 0.25 * _noise(rng, size, 3)
    crest = (u * rng.uniform(5, 9)) % 1.0  # sawtooth profile: gentle windward, steep lee slopes
    return _paint(0.55 * crest ** 1.5 + 0.45 * _fbm(rng, size, (4, 20), 0.08), "dune")


def _band(size: int, angle: float, offset: float, width: float, amp: float = 0.0, waves: float = 1.0,
          phase: float = 0.0) -> np.ndarray:
    """Boolean mask of a (possibly winding) band across the image; lengths in image fractions."""
    x, y = _coords(size)
    u = (x - 0.5) * math.cos(angle) + (y - 0.5) * math.sin(angle)
    v = -(x - 0.5) * math.sin(angle) + (y - 0.5) * math.cos(angle)
    centre = offset + amp * np.sin(2 * math.pi * waves * u + phase)
    return np.abs(v - centre) < width / 2


def _poly_zone(size: int, polys: Sequence[Sequence[tuple[float, float]]]) -> np.ndarray:
    img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(img)
    for p in polys:
        draw.polygon(list(p), fill=1)
    return np.asarray(img, dtype=bool)


def _lighten(c: Sequence[float], t: float) -> Colour:
    return tuple(int(min(255, v + (255 - v) * t)) for v in c)  # type: ignore[return-value]


def _darken(c: Sequence[float], t: float) -> Colour:
    return tuple(int(v * (1 - t)) for v in c)  # type: ignore[return-value]


# ----------------------------------------------------------------------------- object shapes
# Shapes are in local units (length 1 along +x, centred at 0): ("poly", role, points) or
# ("circle", role, (x, y, r)) or ("line", role, (x0, y0, x1, y1)). Roles pick the fill colour.


def _rect(x0: float, y0: float, x1: float, y1: float) -> list[tuple[float, float]]:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def _plane(rng: np.random.Generator) -> list:
    wings = [(0.14, 0), (-0.1, -0.5), (-0.21, -0.5), (-0.07, 0), (-0.21, 0.5), (-0.1, 0.5)]
    tail = [(-0.36, 0), (-0.45, -0.19), (-0.52, -0.19), (-0.47, 0), (-0.52, 0.19), (-0.45, 0.19)]
    body = [(-0.5, -0.05), (0.36, -0.05), (0.5, 0), (0.36, 0.05), (-0.5, 0.05)]
    return [("poly", "shade", wings), ("poly", "shade", tail), ("poly", "body", body),
            ("poly", "dark", _rect(0.0, -0.23, 0.09, -0.18)), ("poly", "dark", _rect(0.0, 0.18, 0.09, 0.23))]


def _car(rng: np.random.Generator) -> list:
    return [("poly", "body", _rect(-0.5, -0.23, 0.5, 0.23)), ("poly", "glass", _rect(0.1, -0.19, 0.27, 0.19)),
            ("poly", "glass", _rect(-0.38, -0.18, -0.27, 0.18))]


def _truck(rng: np.random.Generator) -> list:
    return [("poly", "light", _rect(-0.5, -0.2, 0.24, 0.2)), ("poly", "body", _rect(0.28, -0.19, 0.5, 0.19)),
            ("poly", "glass", _rect(0.42, -0.16, 0.48, 0.16))]


def _boat(rng: np.random.Generator) -> list:
    hull = [(-0.5, -0.15), (0.16, -0.15), (0.5, 0), (0.16, 0.15), (-0.5, 0.15)]
    return [("poly", "body", hull), ("poly", "cabin", _rect(-0.32, -0.08, 0.02, 0.08))]


def _tank(rng: np.random.Generator) -> list:
    return [("circle", "body", (0, 0, 0.5)), ("circle", "shade", (0, 0, 0.42)),
            ("circle", "light", (0.04, -0.04, 0.36)),
            ("circle", "dark", (0, 0, 0.05))]


def _building(rng: np.random.Generator) -> list:
    h = rng.uniform(0.28, 0.45)
    if rng.random() < 0.5:  # gable roof: one half in shade
        return [("poly", "body", _rect(-0.5, -h, 0.5, h)), ("poly", "shade", _rect(-0.5, 0, 0.5, h))]
    units = [("poly", "light", _rect(x, -h * 0.5, x + 0.12, -h * 0.1)) for x in (-0.35, -0.05, 0.25)]
    return [("poly", "body", _rect(-0.5, -h, 0.5, h)),
            ("poly", "shade", _rect(-0.5, h * 0.75, 0.5, h))] + units


def _tree(rng: np.random.Generator) -> list:
    blobs = [("circle", "shade", (0, 0, 0.42))]
    for _ in range(int(rng.integers(2, 5))):
        blobs.append(("circle", "body",
                      (rng.uniform(-0.18, 0.18), rng.uniform(-0.18, 0.18), rng.uniform(0.22, 0.32))))
    return blobs + [("circle", "light", (-0.1, -0.1, 0.12))]


def _court(rng: np.random.Generator) -> list:
    w, h = 0.44, 0.22
    lines = [(-w, -h, w, -h), (-w, h, w, h), (-w, -h, -w, h), (w, -h, w, h), (0, -h - 0.03, 0, h + 0.03),
             (-0.22, 0, 0.22, 0), (-0.22, -h, -0.22, h), (0.22, -h, 0.22, h)]
    return [("poly", "body", _rect(-0.5, -0.28, 0.5, 0.28))] + [("line", "white", ln) for ln in lines]


def _pool(rng: np.random.Generator) -> list:
    return [("poly", "white", _rect(-0.5, -0.3, 0.5, 0.3)), ("poly", "body", _rect(-0.43, -0.23, 0.43, 0.23))]


# Half-width of each shape across its length (all shapes span [-0.52, 0.52] along it): cheap boxes
# let placement reject a spot before any polygon is built.
_HALF_WIDTH: Mapping[str, float] = MappingProxyType({
    "plane": 0.5, "car": 0.23, "truck": 0.2, "boat": 0.15, "tank": 0.5, "building": 0.45, "tree": 0.52,
    "court": 0.28, "pool": 0.3,
})
_SHAPES: Mapping[str, Callable[[np.random.Generator], list]] = MappingProxyType({
    "plane": _plane, "car": _car, "truck": _truck, "boat": _boat, "tank": _tank, "building": _building,
    "tree": _tree, "court": _court, "pool": _pool,
})


def _roles(cls: str, rgb: Colour) -> dict[str, Colour]:
    white = rgb[0] > 200 and rgb[2] > 200
    return {"body": rgb, "shade": _darken(rgb, 0.2), "dark": _darken(rgb, 0.5), "light": _lighten(rgb, 0.3),
            "glass": (38, 46, 58), "white": (238, 238, 234),
            "cabin": (150, 152, 156) if white else (236, 236, 230)}


# ----------------------------------------------------------------------------- canvas


class _Frame:
    """A rotated frame: (u, v) pixels along/across ``angle`` around a centre -> image (x, y)."""

    def __init__(self, cx: float, cy: float, angle: float) -> None:
        self.cx, self.cy, self.angle = cx, cy, angle
        self.c, self.s = math.cos(angle), math.sin(angle)

    def pt(self, u: float, v: float) -> tuple[float, float]:
        return self.cx + u * self.c - v * self.s, self.cy + u * self.s + v * self.c

    def rect(self, u0: float, v0: float, u1: float, v1: float) -> list[tuple[float, float]]:
        return [self.pt(u, v) for u, v in _rect(u0, v0, u1, v1)]


class _Canvas:
    """One image being rendered: RGB picture, id mask, objects, and free space for placement."""

    def __init__(self, rng: np.random.Generator, size: int) -> None:
        self.rng, self.S = rng, size
        self.mask = Image.new("L", (size, size), 0)
        self.mdraw = ImageDraw.Draw(self.mask)
        self.items: list[dict[str, Any]] = []
        self.boxes: list[tuple[float, float, float, float]] = []  # objects' boxes, for collision tests
        self.zones: dict[int, np.ndarray] = {}
        self.blocked = np.zeros((size, size), dtype=bool)
        self.ground = "ground"
        sun = rng.uniform(0, 2 * math.pi)
        self.sun = (math.cos(sun), math.sin(sun))
        self.line = max(1, round(size / 224))

    def start(self, background: np.ndarray, ground: str) -> None:
        self.img = Image.fromarray(background)
        self.draw = ImageDraw.Draw(self.img, "RGBA")
        self.ground = ground

    def landmark(self, name: str, colour: str, zone: np.ndarray, *, block: bool = True) -> dict[str, Any]:
        """Register an already painted region as a landmark (mask id, zone for relations)."""
        item = {"class": name, "colour": colour, "kind": "landmark", "id": len(self.items) + 1}
        self.mask.paste(item["id"], mask=Image.fromarray(zone))
        ys, xs = np.nonzero(zone.any(1))[0], np.nonzero(zone.any(0))[0]
        item["geom"] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1) if len(xs) else (0, 0, 0, 0)
        self.items.append(item)
        self.zones[item["id"]] = zone
        if block:
            self.blocked |= zone
        return item

    def landmark_poly(self, name: str, colour: str, fill: Colour, poly: list, *,
                      block: bool = True) -> dict[str, Any]:
        self.draw.polygon(poly, fill=fill)
        return self.landmark(name, colour, _poly_zone(self.S, [poly]), block=block)

    def add(self, cls: str, cx: float, cy: float, length: float, angle: float, colour: str | None = None, *,
            check: bool = True, ground: str | None = None, pad: float = 0.15) -> dict[str, Any] | None:
        """Draw one object if it fits inside the image without touching others; return it or None."""
        if len(self.items) >= 250:  # masks are 8-bit
            return None
        c, s = math.cos(angle), math.sin(angle)
        half_w = _HALF_WIDTH[cls]
        if cls in ("tank", "tree"):  # round: the box does not grow with rotation
            ex = ey = 0.52 * length
        else:  # box of the rotated local rectangle [-0.52, 0.52] x [-half_w, half_w]
            ex = (0.52 * abs(c) + half_w * abs(s)) * length
            ey = (0.52 * abs(s) + half_w * abs(c)) * length
        box = (cx - ex, cy - ey, cx + ex, cy + ey)
        if box[0] < 0 or box[1] < 0 or box[2] > self.S or box[3] > self.S:
            return None
        p = pad * length
        if check and any(box[0] < b[2] + p and b[0] < box[2] + p and box[1] < b[3] + p and b[1] < box[3] + p
                         for b in self.boxes):
            return None
        placed = self._place(_SHAPES[cls](self.rng), cx, cy, length * c, length * s, length)
        colour = colour or _weighted(self.rng, OBJECTS[cls].colours)
        tone = self.rng.uniform(0.9, 1.06) * self.rng.uniform(0.98, 1.02, 3)  # brightness varies, hue stays
        rgb = tuple(int(min(255, v * f)) for v, f in zip(PALETTE[colour], tone))
        if cls == "pool" and colour == "blue":
            rgb = (70, 150, 214)  # pool water reads as light blue from above
        self._paint(placed, _roles(cls, rgb), OBJECTS[cls].shadow * length)
        item = {"class": cls, "colour": colour, "kind": "object", "id": len(self.items) + 1, "geom": box,
                "center": (cx, cy), "length": length, "ground": ground or self.ground}
        for kind, _, data in placed:
            if kind == "poly":
                self.mdraw.polygon(data, fill=item["id"])
            elif kind == "circle":
                self.mdraw.ellipse(data, fill=item["id"])
        self.items.append(item)
        self.boxes.append(box)
        return item

    @staticmethod
    def _place(parts: list, cx: float, cy: float, c: float, s: float, length: float) -> list:
        """Local shape parts -> image coordinates (rotation and scale folded into c, s)."""
        placed = []
        for kind, role, data in parts:
            if kind == "circle":
                px, py, r = cx + data[0] * c - data[1] * s, cy + data[0] * s + data[1] * c, data[2] * length
                placed.append((kind, role, (px - r, py - r, px + r, py + r)))
            elif kind == "line":
                x0, y0, x1, y1 = data
                placed.append((kind, role, [(cx + x0 * c - y0 * s, cy + x0 * s + y0 * c),
                                            (cx + x1 * c - y1 * s, cy + x1 * s + y1 * c)]))
            else:
                placed.append((kind, role, [(cx + x * c - y * s, cy + x * s + y * c) for x, y in data]))
        return placed

    def _paint(self, placed: list, roles: dict[str, Colour], shadow: float) -> None:
        dx, dy = self.sun[0] * shadow, self.sun[1] * shadow
        if shadow > 0:
            for kind, _, data in placed:
                if kind == "poly":
                    self.draw.polygon([(x + dx, y + dy) for x, y in data], fill=(0, 0, 0, 90))
                elif kind == "circle":
                    self.draw.ellipse((data[0] + dx, data[1] + dy, data[2] + dx, data[3] + dy),
                                      fill=(0, 0, 0, 90))
        for kind, role, data in placed:
            if kind == "poly":
                self.draw.polygon(data, fill=roles[role])
            elif kind == "circle":
                self.draw.ellipse(data, fill=roles[role])
            else:
                self.draw.line(data, fill=roles[role], width=self.line)

    def scatter(self, cls: str, n: int, length: tuple[float, float] | None = None, *,
                zone: np.ndarray | None = None,
                angle: float | Callable[[float, float], float] | None = None,
                colour: str | Sequence[str] | None = None,
                check: bool = True, ground: str | None = None, tries: int = 30) -> list[dict[str, Any]]:
        """Place up to ``n`` objects at random free spots (inside ``zone``, else off blocked landmarks).

        ``colour`` is one colour name, a list to draw each object's colour from, or None for the
        class's usual colours.
        """
        S, rng = self.S, self.rng
        lo, hi = length or OBJECTS[cls].length
        allowed = ~self.blocked if zone is None else zone
        cand = None if zone is None else np.flatnonzero(zone)  # small zones: sample their pixels directly
        out: list[dict[str, Any]] = []
        if cand is not None and not len(cand):
            return out
        for _ in range(n):
            for _ in range(tries):
                if cand is None:
                    cx, cy = rng.random() * S, rng.random() * S
                else:
                    k = int(cand[rng.integers(len(cand))])
                    cx, cy = k % S + rng.random(), k // S + rng.random()
                ln = rng.uniform(lo, hi) * S
                r = ln * 0.45
                pts = ((cx, cy), (cx - r, cy), (cx + r, cy), (cx, cy - r), (cx, cy + r))
                if not all(0 <= x < S and 0 <= y < S and allowed[int(y), int(x)] for x, y in pts):
                    continue
                if callable(angle):
                    a = angle(cx, cy)
                else:
                    a = rng.uniform(0, 2 * math.pi) if angle is None else angle
                col = colour if colour is None or isinstance(colour, str) else _pick(rng, colour)
                obj = self.add(cls, cx, cy, ln, a, col, check=check, ground=ground)
                if obj:
                    out.append(obj)
                    break
        return out

    def finish(self) -> tuple[Image.Image, list[dict[str, Any]], np.ndarray]:
        """Measure what is visible, drop hidden objects, renumber, and add positions and relations."""
        mask = np.asarray(self.mask)
        S, keep, lut = self.S, [], np.zeros(256, np.uint8)
        for it in self.items:
            g = it["geom"]
            x0, y0 = max(0, int(g[0])), max(0, int(g[1]))
            x1, y1 = min(S, int(g[2]) + 2), min(S, int(g[3]) + 2)
            hit = mask[y0:y1, x0:x1] == it["id"]
            rows, cols = hit.any(1), hit.any(0)
            if not rows.any():
                continue  # fully hidden by later objects
            lut[it["id"]] = len(keep) + 1
            it["bbox"] = [x0 + int(cols.argmax()), y0 + int(rows.argmax()),
                          x0 + len(cols) - int(cols[::-1].argmax()),
                          y0 + len(rows) - int(rows[::-1].argmax())]
            it["area_fraction"] = round(np.count_nonzero(hit) / (S * S), 6)
            keep.append(it)
        if len(keep) < len(self.items):
            mask = lut[mask]
        ids = {it["id"]: k + 1 for k, it in enumerate(keep)}
        return self.img, [self._describe(it, k + 1, ids) for k, it in enumerate(keep)], np.array(mask)

    def _describe(self, it: dict[str, Any], new_id: int, ids: dict[int, int]) -> dict[str, Any]:
        S = self.S
        out = {"id": new_id, "class": it["class"], "colour": it["colour"], "kind": it["kind"],
               "bbox": it["bbox"], "area_fraction": it["area_fraction"]}
        if it["kind"] == "landmark":
            return out
        cx, cy = it["center"]
        out["position"] = ["top" if cy < S / 3 else "bottom" if cy > 2 * S / 3 else "middle",
                           "left" if cx < S / 3 else "right" if cx > 2 * S / 3 else "center"]
        rel = it["length"] / S
        out["size"] = "small" if rel < 0.15 else "large" if rel > 0.38 else "medium"
        out["ground"] = it["ground"]
        xi, yi, r = int(min(cx, S - 1)), int(min(cy, S - 1)), int(it["length"] * 0.5 + 0.06 * S)
        out["on"], out["near"] = None, []
        for lid, zone in self.zones.items():
            if lid not in ids:
                continue
            if zone[yi, xi]:
                out["on"] = ids[lid]
                out["ground"] = LANDMARKS[self.items[lid - 1]["class"]]
            elif zone[max(0, yi - r): yi + r + 1, max(0, xi - r): xi + r + 1].any():
                out["near"].append(ids[lid])
        return out


# ----------------------------------------------------------------------------- rs scenes


def _airport(cv: _Canvas) -> None:
    S, rng = cv.S, cv.rng
    cv.start(_paint(_fbm(rng, S), "drygrass"), "grass")
    side = _pick(rng, (-1, 1))
    fr = _Frame(S * rng.uniform(0.4, 0.6), S * rng.uniform(0.4, 0.6), rng.uniform(0, math.pi))
    w = rng.uniform(0.08, 0.11) * S
    cv.draw.polygon(fr.rect(-S, -0.1 * S * side, S, 0.36 * S * side), fill=(176, 174, 168))  # apron
    cv.draw.polygon(fr.rect(-S, -0.2 * S * side, S, -0.16 * S * side), fill=(98, 98, 100))  # taxiway
    rv = -0.3 * S * side
    cv.landmark_poly("runway", "gray", (88, 88, 92), fr.rect(-1.5 * S, rv - w / 2, 1.5 * S, rv + w / 2))
    for u in np.arange(-1.5, 1.5, 0.1) * S:
        cv.draw.polygon(fr.rect(u, rv - cv.line / 2, u + 0.05 * S, rv + cv.line / 2), fill=(236, 236, 236))
    cv.landmark_poly("terminal", "white", (214, 214, 210),
                     fr.rect(-0.4 * S, 0.36 * S * side, 0.4 * S, 0.5 * S * side))
    n = int(rng.choice(8, p=[0.12, 0.16, 0.18, 0.16, 0.14, 0.1, 0.08, 0.06])) + 1
    length = rng.uniform(*OBJECTS["plane"].length) * S
    if n <= 2 and rng.random() < 0.5:  # a close-up of one or two airliners
        length = rng.uniform(0.25, 0.4) * S
    per_row = math.ceil(n / (1 if n <= 4 else 2))
    # centre the rows on the point of the apron nearest the image centre, so planes stay in view
    u0 = (S / 2 - fr.cx) * fr.c + (S / 2 - fr.cy) * fr.s
    for k in range(n):
        row, col = divmod(k, per_row)
        u = u0 + (col - (per_row - 1) / 2) * length * 1.12 + rng.normal(0, 0.01 * S)
        cv.add("plane", *fr.pt(u, (0.24 - 0.2 * row) * S * side), length * rng.uniform(0.9, 1.05),
               fr.angle + side * math.pi / 2 + rng.normal(0, 0.06), ground="concrete", pad=0.05)
    if rng.random() < 0.25:
        cv.add("plane", *fr.pt(u0 + rng.uniform(-0.3, 0.3) * S, rv), length,
               fr.angle + _pick(rng, (0, math.pi)))
    cars = _poly_zone(S, [fr.rect(-0.5 * S, 0.5 * S * side, 0.5 * S, 0.6 * S * side)])
    cv.scatter("car", int(rng.integers(0, 5)), zone=cars, angle=fr.angle + math.pi / 2)


def _farmland(cv: _Canvas) -> None:
    S, rng = cv.S, cv.rng
    cv.start(_fields(rng, S), "fields")
    if rng.random() < 0.6:
        a = rng.uniform(0, math.pi)
        zone = _band(S, a, rng.uniform(-0.3, 0.3), 0.045)
        cv.img.paste((150, 140, 120), mask=Image.fromarray(zone))
        road = cv.landmark("road", "gray", zone)
        if rng.random() < 0.5:
            cv.scatter("truck", 1, zone=zone, angle=a)
        cv.scatter("building", int(rng.integers(0, 4)), (0.06, 0.1), zone=_near(cv, road, 0.1))
    cv.scatter("tree", int(rng.integers(0, 6)))


def _near(cv: _Canvas, item: dict[str, Any], dist: float) -> np.ndarray:
    """Free pixels within ``dist`` (image fraction) of a landmark, via its dilated box."""
    S, zone = cv.S, np.zeros((cv.S, cv.S), dtype=bool)
    x0, y0, x1, y1 = item["geom"]
    d = int(dist * S)
    zone[max(0, y0 - d): y1 + d, max(0, x0 - d): x1 + d] = True
    return zone & ~cv.blocked


def _forest(cv: _Canvas) -> None:
    S, rng = cv.S, cv.rng
    cv.start(_paint(_fbm(rng, S, (4, 24), 0.3), "canopy"), "forest floor")
    if rng.random() < 0.3:
        zone = _band(S, rng.uniform(0, math.pi), rng.uniform(-0.3, 0.3), 0.04, 0.05, 1.0, rng.uniform(0, 6))
        cv.img.paste((142, 120, 90), mask=Image.fromarray(zone))
        cv.landmark("path", "brown", zone)
        cv.scatter("car", int(rng.integers(0, 2)), zone=zone)
    if rng.random() < 0.3:
        cv.scatter("tree", int(rng.integers(1, 4)), (0.08, 0.15), colour=_pick(rng, ("yellow", "orange")))
    cv.scatter("tree", int(rng.integers(30, 50)), (0.09, 0.16), colour="green",
               check=False)  # a closed canopy


def _beach(cv: _Canvas) -> None:
    S, rng = cv.S, cv.rng
    a, off = rng.uniform(0, 2 * math.pi), rng.uniform(-0.15, 0.15)
    x, y = _coords(S)
    d = ((x - 0.5) * math.cos(a) + (y - 0.5) * math.sin(a)) - off + 0.025 * np.sin(2 * math.pi * 4 * (
        -(x - 0.5) * math.sin(a) + (y - 0.5) * math.cos(a)) + rng.uniform(0, 6))
    sea = d > 0
    waves = _water_field(rng, S)
    sea_rgb = np.where((d > 0.18)[..., None], _paint(waves, "water"), _paint(waves, "shallow"))
    img = np.where(sea[..., None], sea_rgb, _paint(_fbm(rng, S, (3, 30), 0.25), "sand"))
    img[(d > -0.006) & (d < 0.012)] = (236, 240, 236)  # surf line
    cv.start(img, "sand")
    water = cv.landmark("water", "blue", sea & (d > 0.03))
    cv.scatter("boat", int(rng.integers(0, 5)), zone=cv.zones[water["id"]] & (d > 0.08), ground="water")
    land = ~sea & (d < -0.15)
    cv.scatter("building", int(rng.integers(0, 4)), zone=land, angle=a + math.pi / 2)
    cv.scatter("tree", int(rng.integers(0, 5)), zone=~sea & (d < -0.05))
    cv.scatter("pool", int(rng.integers(0, 2)), zone=land)


def _river(cv: _Canvas) -> None:
    S, rng = cv.S, cv.rng
    a = rng.uniform(0, math.pi)
    zone = _band(S, a, rng.uniform(-0.15, 0.15), rng.uniform(0.14, 0.24), rng.uniform(0.03, 0.1), 1.0,
                 rng.uniform(0, 6))
    land = _fields(rng, S) if rng.random() < 0.4 else _paint(_fbm(rng, S), "grass")
    cv.start(np.where(zone[..., None], _water(rng, S), land), "grass")
    river = cv.landmark("river", "blue", zone)
    cv.scatter("boat", int(rng.integers(1, 5)), zone=_erode(zone, 0.03),
               angle=lambda *_: a + rng.normal(0, 0.3),
               ground="water")
    cv.scatter("tree", int(rng.integers(1, 7)), zone=_near(cv, river, 0.06))
    cv.scatter("building", int(rng.integers(0, 4)))


def _erode(zone: np.ndarray, frac: float) -> np.ndarray:
    """Shrink a zone by about ``frac`` of the image so objects stay well inside it."""
    d = max(1, int(frac * zone.shape[0]))
    out = zone.copy()
    out[d:] &= zone[:-d]
    out[:-d] &= zone[d:]
    out[:, d:] &= zone[:, :-d]
    out[:, :-d] &= zone[:, d:]
    return out


def _port(cv: _Canvas) -> None:
    S, rng = cv.S, cv.rng
    a = _pick(rng, (0, 0.5, 1, 1.5)) * math.pi + rng.normal(0, 0.1)
    fr = _Frame(S / 2, S / 2, a)
    q = rng.uniform(-0.1, 0.1) * S  # quay line at u = q; water for u > q
    sea = _poly_zone(S, [fr.rect(q, -S, 2 * S, S)])
    cv.start(np.where(sea[..., None], _water(rng, S), _paint(_fbm(rng, S, (3, 16)), "concrete")), "concrete")
    water = cv.landmark("water", "blue", sea & ~_poly_zone(S, [fr.rect(q, -S, q + 0.02 * S, S)]), block=False)
    boats = int(rng.integers(3, 9))
    for v in np.linspace(-0.35, 0.35, int(rng.integers(2, 4))) * S:
        pier = fr.rect(q - 2, v - 0.025 * S, q + 0.32 * S, v + 0.025 * S)
        cv.landmark_poly("pier", "gray", (170, 168, 160), pier)
        for sgn in (-1, 1):
            if boats > 0 and rng.random() < 0.8:
                ln = rng.uniform(0.08, 0.15) * S
                ok = cv.add("boat", *fr.pt(q + rng.uniform(0.04, 0.2) * S + ln / 2, v + sgn * 0.06 * S), ln,
                            a + _pick(rng, (0, math.pi)), ground="water")
                boats -= ok is not None
    cv.scatter("boat", boats, zone=_erode(cv.zones[water["id"]] & ~cv.blocked, 0.04), ground="water")
    land = ~sea & ~cv.blocked
    cv.scatter("building", int(rng.integers(1, 4)), (0.12, 0.2), zone=land, angle=a)
    cv.scatter("tank", int(rng.integers(0, 4)), zone=land)
    cv.scatter("truck", int(rng.integers(0, 4)), zone=land, angle=a + math.pi / 2)


def _parking(cv: _Canvas) -> None:
    S, rng = cv.S, cv.rng
    a = _pick(rng, (0, math.pi / 2)) + rng.uniform(-0.4, 0.4)
    fr = _Frame(S / 2, S / 2, a)
    ln = rng.uniform(*OBJECTS["car"].length) * S
    sw, depth, aisle = ln * 0.62, ln * 1.2, ln * 1.4
    fill, half = rng.uniform(0.05, 0.45), rng.uniform(0.5, 0.75) * S
    pairs = int(rng.integers(2, 5))  # double rows of stalls back to back, an aisle between pairs
    period = 2 * depth + aisle
    x, y = _coords(S)
    u = ((x - 0.5) * math.cos(a) + (y - 0.5) * math.sin(a)) * S
    v = (-(x - 0.5) * math.sin(a) + (y - 0.5) * math.cos(a)) * S + (pairs - 1) / 2 * period
    k = np.round(v / period)
    dv = np.abs(v - k * period)
    lw = max(1.0, S / 224)
    stall_lines = ((u + half) % sw < lw) & (dv < depth) | (dv < lw / 2)
    paint = (k >= 0) & (k < pairs) & (np.abs(u) < half) & stall_lines
    img = np.where(paint[..., None], np.uint8(224), _paint(_fbm(rng, S, (3, 20), 0.15), "asphalt"))
    cv.start(img, "asphalt")
    us = np.arange(-half, half - sw, sw) + sw / 2
    for p in range(pairs):
        for sgn in (-1, 1):
            vrow = (p - (pairs - 1) / 2) * period + sgn * depth / 2
            for u_ in us[rng.random(len(us)) < fill]:
                cv.add("car", *fr.pt(u_, vrow), ln * rng.uniform(0.9, 1.05),
                       a + sgn * math.pi / 2 + rng.normal(0, 0.04),
                       check=False)  # stalls never overlap
    grass = _band(S, a, _pick(rng, (-0.45, 0.45)), 0.14)
    cv.img.paste(Image.fromarray(_paint(_fbm(rng, S), "grass")), mask=Image.fromarray(grass))
    cv.scatter("tree", int(rng.integers(0, 6)), zone=grass)


def _residential(cv: _Canvas, dense: bool) -> None:
    S, rng = cv.S, cv.rng
    a = rng.uniform(0, math.pi)
    fr = _Frame(S / 2, S / 2, a)
    cv.start(_paint(_fbm(rng, S), "grass" if not dense else ((92, 100, 78), (164, 164, 146))), "grass")
    roads = [rng.uniform(-0.35, -0.15), rng.uniform(0.15, 0.35)] if dense else [rng.uniform(-0.15, 0.15)]
    for off in roads:
        zone = _band(S, a, off, 0.055, 0.0 if dense else 0.06, 1.0, rng.uniform(0, 6))
        cv.img.paste((84, 84, 88), mask=Image.fromarray(zone))
        cv.landmark("road", "gray", zone)
        cv.scatter("car", int(rng.integers(0, 3)), zone=_erode(zone, 0.01),
                   angle=a + _pick(rng, (0, math.pi)))
    colour = None if rng.random() < 0.6 else _weighted(rng, OBJECTS["building"].colours)
    if not dense:
        for house in cv.scatter("building", int(rng.integers(2, 7)), (0.1, 0.14), angle=a, colour=colour):
            if rng.random() < 0.5:
                cv.add("pool", house["center"][0] + rng.uniform(-1, 1) * house["length"] * 0.9,
                       house["center"][1] + rng.uniform(-1, 1) * house["length"] * 0.9,
                       rng.uniform(0.05, 0.07) * S, a)
        cv.scatter("tree", int(rng.integers(2, 9)))
        return
    ln = rng.uniform(0.08, 0.12) * S
    for v in np.arange(-0.75, 0.75, 0.85 * ln / S) * S:  # a grid of houses, skipping the roads
        for u in np.arange(-0.75, 0.75, 1.2 * ln / S) * S:
            x, y = fr.pt(u + rng.normal(0, 0.03 * ln), v)
            if 0 <= x < S and 0 <= y < S and not cv.blocked[int(y), int(x)] and rng.random() < 0.88:
                cv.add("building", x, y, ln * rng.uniform(0.85, 1.0), a, colour, pad=0.05)
    cv.scatter("tree", int(rng.integers(0, 5)), (0.04, 0.07))


def _industrial(cv: _Canvas) -> None:
    S, rng = cv.S, cv.rng
    a = rng.uniform(0, math.pi)
    cv.start(_paint(_fbm(rng, S, (3, 16)), "concrete"), "concrete")
    zone = _band(S, a, rng.uniform(-0.2, 0.2), 0.07)
    cv.img.paste((80, 80, 84), mask=Image.fromarray(zone))
    cv.landmark("road", "gray", zone)
    cv.scatter("building", int(rng.integers(2, 5)), (0.2, 0.34), angle=a,
               colour=_pick(rng, ("white", "gray", "blue")))
    cv.scatter("truck", int(rng.integers(1, 6)), angle=a + _pick(rng, (0, math.pi / 2)))
    cv.scatter("car", int(rng.integers(0, 5)), zone=_erode(zone, 0.01), angle=a)
    cv.scatter("tank", int(rng.integers(0, 3)))


def _playground(cv: _Canvas) -> None:
    S, rng = cv.S, cv.rng
    cv.start(_paint(_fbm(rng, S), "grass"), "grass")
    vertical = rng.random() < 0.5
    w, h = rng.uniform(0.5, 0.7) * S, rng.uniform(0.3, 0.4) * S
    cx, cy = S * rng.uniform(0.4, 0.6), S * rng.uniform(0.4, 0.6)
    if vertical:
        w, h = h, w
    box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
    r, lane = min(w, h) / 2, 0.05 * S
    cv.draw.rounded_rectangle(box, radius=r, fill=(178, 70, 52))
    for k in (1, 2):
        cv.draw.rounded_rectangle((box[0] + k * lane / 3, box[1] + k * lane / 3, box[2] - k * lane / 3,
                                   box[3] - k * lane / 3), radius=r, outline=(230, 220, 210), width=cv.line)
    inner = (box[0] + lane, box[1] + lane, box[2] - lane, box[3] - lane)
    cv.draw.rounded_rectangle(inner, radius=r - lane, fill=(70, 146, 66), outline=(236, 236, 236),
                              width=cv.line)
    cv.draw.ellipse((cx - 0.04 * S, cy - 0.04 * S, cx + 0.04 * S, cy + 0.04 * S), outline=(236, 236, 236),
                    width=cv.line)
    zone = np.asarray(_rounded_zone(S, box, r))
    cv.landmark("track", "red", zone)
    cv.scatter("court", int(rng.integers(0, 4)), angle=math.pi / 2 if vertical else 0.0)
    cv.scatter("tree", int(rng.integers(0, 6)))
    cv.scatter("building", int(rng.integers(0, 2)), (0.12, 0.2))


def _rounded_zone(size: int, box: tuple, r: float) -> np.ndarray:
    img = Image.new("L", (size, size), 0)
    ImageDraw.Draw(img).rounded_rectangle(box, radius=r, fill=1)
    return np.asarray(img, dtype=bool)


def _storagetanks(cv: _Canvas) -> None:
    S, rng = cv.S, cv.rng
    cv.start(_paint(_fbm(rng, S, (3, 18), 0.15), "soil" if rng.random() < 0.6 else "concrete"), "bare ground")
    a = rng.uniform(0, math.pi)
    zone = _band(S, a, _pick(rng, (-0.38, 0.38)), 0.06)
    cv.img.paste((96, 94, 92), mask=Image.fromarray(zone))
    cv.landmark("road", "gray", zone)
    rows, cols = int(rng.integers(1, 4)), int(rng.integers(2, 5))
    d = rng.uniform(0.08, 0.24 if rows * cols <= 4 else 0.15) * S
    fr = _Frame(S * rng.uniform(0.4, 0.6), S * rng.uniform(0.4, 0.6), a)
    colour = _pick(rng, ("white", "white", "gray"))
    for i in range(rows):
        for j in range(cols):
            cv.add("tank", *fr.pt((j - (cols - 1) / 2) * d * 1.3, (i - (rows - 1) / 2) * d * 1.3), d, 0.0,
                   colour)
    cv.scatter("truck", int(rng.integers(0, 3)), zone=_erode(zone, 0.01), angle=a)


def _bridge(cv: _Canvas) -> None:
    S, rng = cv.S, cv.rng
    a = rng.uniform(0, math.pi)
    water = _band(S, a, rng.uniform(-0.1, 0.1), rng.uniform(0.3, 0.5), 0.03, 0.7, rng.uniform(0, 6))
    cv.start(np.where(water[..., None], _water(rng, S), _paint(_fbm(rng, S), "grass")), "grass")
    river = cv.landmark("river", "blue", water, block=False)
    b = a + math.pi / 2 + rng.normal(0, 0.15)
    road = _band(S, b, rng.uniform(-0.2, 0.2), 0.07)
    cv.img.paste((86, 86, 90), mask=Image.fromarray(road & ~water))
    deck = road & _dilate(water, 0.05)
    cv.img.paste((168, 166, 160), mask=Image.fromarray(deck))
    cv.landmark("road", "gray", road & ~deck)
    cv.landmark("bridge", "gray", deck)
    cv.scatter("car", int(rng.integers(0, 6)), zone=_erode(road, 0.012), angle=b + _pick(rng, (0, math.pi)))
    cv.scatter("boat", int(rng.integers(0, 4)), zone=_erode(cv.zones[river["id"]], 0.04) & ~cv.blocked,
               angle=lambda *_: a + rng.normal(0, 0.2), ground="water")
    cv.scatter("tree", int(rng.integers(0, 5)), zone=~water & ~cv.blocked)


def _dilate(zone: np.ndarray, frac: float) -> np.ndarray:
    return ~_erode(~zone, frac)


def _baseballfield(cv: _Canvas) -> None:
    S, rng = cv.S, cv.rng
    a = rng.uniform(0, 2 * math.pi)
    x, y = _coords(S)
    stripes = 0.08 * np.sign(np.sin(2 * math.pi * 7 * (x * math.cos(a) + y * math.sin(a))))
    cv.start(_paint(_fbm(rng, S) + stripes, "grass"), "grass")
    R = rng.uniform(0.35, 0.5) * S
    hx, hy = S / 2 - math.cos(a) * R / 2, S / 2 - math.sin(a) * R / 2
    deg = math.degrees(a)
    outer = (hx - R, hy - R, hx + R, hy + R)
    fan = Image.new("L", (S, S), 0)
    ImageDraw.Draw(fan).pieslice(outer, deg - 45, deg + 45, fill=255)
    cv.img.paste(Image.fromarray(_paint(_fbm(rng, S, (4, 16), 0.1), ((70, 140, 56), (126, 182, 88)))),
                 mask=fan)
    ri = 0.45 * R
    cv.draw.pieslice((hx - ri, hy - ri, hx + ri, hy + ri), deg - 45, deg + 45, fill=(176, 124, 80))
    fr = _Frame(hx, hy, a)
    s = 0.22 * R
    cv.draw.polygon([fr.pt(0, 0), fr.pt(s * 0.7, -s * 0.7), fr.pt(1.4 * s, 0), fr.pt(s * 0.7, s * 0.7)],
                    fill=(88, 150, 66))
    for sgn in (-1, 1):
        cv.draw.line([fr.pt(0, 0), fr.pt(R * 0.7, sgn * R * 0.7)], fill=(236, 236, 236), width=cv.line)
    cv.landmark("diamond", "brown", np.asarray(fan) > 0)
    cv.scatter("tree", int(rng.integers(0, 7)))
    cv.scatter("car", int(rng.integers(0, 6)), angle=a)
    cv.scatter("building", int(rng.integers(0, 2)))


def _desert(cv: _Canvas) -> None:
    S, rng = cv.S, cv.rng
    cv.start(_dunes(rng, S), "sand")
    if rng.random() < 0.7:
        cls = _pick(rng, ("car", "truck", "building"))
        cv.scatter(cls, int(rng.integers(1, 4)))


def _meadow(cv: _Canvas) -> None:
    S, rng = cv.S, cv.rng
    cv.start(_paint(_fbm(rng, S, (2, 6, 30), 0.1), ((84, 120, 48), (170, 190, 100))), "grass")
    if rng.random() < 0.3:
        zone = _band(S, rng.uniform(0, math.pi), rng.uniform(-0.3, 0.3), 0.025, 0.06, 1.0, rng.uniform(0, 6))
        cv.img.paste((160, 140, 104), mask=Image.fromarray(zone))
        cv.landmark("path", "brown", zone)
    cv.scatter("tree", int(rng.integers(0, 8)), (0.05, 0.1))


def _pond(cv: _Canvas) -> None:
    S, rng = cv.S, cv.rng
    x, y = _coords(S)
    r = np.hypot(x - rng.uniform(0.4, 0.6), y - rng.uniform(0.4, 0.6))
    zone = r + 0.18 * (_noise(rng, S, 4) - 0.5) < rng.uniform(0.18, 0.3)
    cv.start(np.where(zone[..., None], _water(rng, S), _paint(_fbm(rng, S), "grass")), "grass")
    pond = cv.landmark("pond", "blue", zone)
    cv.scatter("tree", int(rng.integers(2, 9)), zone=_near(cv, pond, 0.08))
    cv.scatter("boat", int(rng.integers(0, 3)), (0.05, 0.08), zone=_erode(zone, 0.04), ground="water")
    cv.scatter("building", int(rng.integers(0, 3)))


def _church(cv: _Canvas) -> None:
    S, rng = cv.S, cv.rng
    cv.start(_paint(_fbm(rng, S, (3, 20)), "concrete"), "pavement")
    fr = _Frame(S * rng.uniform(0.4, 0.6), S * rng.uniform(0.4, 0.6), rng.uniform(0, 2 * math.pi))
    L, w = rng.uniform(0.35, 0.5) * S, rng.uniform(0.05, 0.07) * S
    t0, t1 = 0.12 * L, 0.12 * L + 2 * w
    arm = 0.3 * L  # a Latin cross: long nave, transept near the head
    cross = [fr.pt(*p) for p in [(-L / 2, -w), (t0, -w), (t0, -arm), (t1, -arm), (t1, -w), (L / 2, -w),
                                 (L / 2, w), (t1, w), (t1, arm), (t0, arm), (t0, w), (-L / 2, w)]]
    colour = _pick(rng, ("red", "gray", "brown"))
    rgb = PALETTE[colour]
    dx, dy = cv.sun[0] * 0.08 * L, cv.sun[1] * 0.08 * L
    cv.draw.polygon([(x + dx, y + dy) for x, y in cross], fill=(0, 0, 0, 90))
    cv.landmark_poly("church", colour, rgb, cross)
    cv.draw.polygon(fr.rect(-L / 2, 0, L / 2, w), fill=_darken(rgb, 0.22))
    cv.draw.polygon(fr.rect(t0, -arm, t1, arm), fill=_lighten(rgb, 0.12))
    cv.scatter("building", int(rng.integers(2, 7)), (0.1, 0.15), angle=fr.angle)
    cv.scatter("tree", int(rng.integers(1, 7)))
    cv.scatter("car", int(rng.integers(0, 5)))


_RS_SCENES: Mapping[str, Callable[[_Canvas], None]] = MappingProxyType({
    "airport": _airport, "farmland": _farmland, "forest": _forest, "beach": _beach, "river": _river,
    "port": _port, "parking": _parking, "denseresidential": lambda cv: _residential(cv, True),
    "sparseresidential": lambda cv: _residential(cv, False), "industrial": _industrial,
    "playground": _playground, "storagetanks": _storagetanks, "bridge": _bridge,
    "baseballfield": _baseballfield, "desert": _desert, "meadow": _meadow, "pond": _pond, "church": _church,
})


# ----------------------------------------------------------------------------- source domain


# Web photos are taken on real ground as often as on studio backdrops, and web captions say where
# ("a plane at the airport"). Naming grounds, landmarks and places here gives MiniCLIP the words rs
# captions are made of; version 1.0 of the source domain had none of them, and 16% of the rs test
# captions' words were tokens MiniCLIP had never seen.
_SOURCE_GROUNDS: Mapping[str, tuple[Callable[[np.random.Generator, int], np.ndarray], tuple[str, ...]]] = \
    MappingProxyType({
        "grass": (lambda rng, S: _paint(_fbm(rng, S), "grass"), ("green grass", "the grass")),
        "sand": (lambda rng, S: _paint(_fbm(rng, S, (4, 20), 0.08), "sand"), ("yellow sand", "the sand")),
        "water": (_water, ("dark water", "the water")),
        "asphalt": (lambda rng, S: _paint(_fbm(rng, S, (3, 16)), "asphalt"), ("gray asphalt", "the asphalt")),
        "concrete": (lambda rng, S: _paint(_fbm(rng, S, (3, 16)), "concrete"), ("gray concrete", "the concrete")),
        "bare ground": (lambda rng, S: _paint(_fbm(rng, S, (3, 18), 0.15), "soil"),
                        ("bare brown ground", "the bare ground")),
        "fields": (_fields, ("fields of different colours", "the fields")),
    })
# Places a web caption may name for an object, or for a ground: always scene words of SCENE_INFO.
_OBJECT_PLACES: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "plane": ("airport",), "car": ("parking", "denseresidential"), "truck": ("parking", "industrial"),
    "boat": ("port", "river", "beach"), "tank": ("storagetanks", "industrial"),
    "building": ("denseresidential", "sparseresidential", "industrial", "church"),
    "tree": ("forest", "meadow", "sparseresidential"), "court": ("playground", "sparseresidential"),
    "pool": ("sparseresidential", "denseresidential"),
})
_GROUND_PLACES: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "grass": ("meadow", "baseballfield", "playground"), "sand": ("desert", "beach"),
    "water": ("pond", "river", "port"), "fields": ("farmland",), "asphalt": ("parking",),
    "concrete": ("industrial", "church"), "bare ground": ("storagetanks", "desert"),
})


def _source_background(cv: _Canvas, label: str) -> tuple[np.ndarray, str]:
    """A coloured, textured backdrop ("an orange background") or, half of the time, a named ground."""
    S, rng = cv.S, cv.rng
    if rng.random() < 0.5:
        ground = _pick(rng, tuple(g for g in _SOURCE_GROUNDS if g != "water" or label == "boat"))
        return _SOURCE_GROUNDS[ground][0](rng, S), ground
    bg = _pick(rng, tuple(PALETTE))
    base = np.array(PALETTE[bg], np.float32)
    x, y = _coords(S)
    kind = int(rng.integers(4))
    if kind == 0:
        field = _fbm(rng, S, (2, 8), 0.1)
    elif kind == 1:  # stripes
        a = rng.uniform(0, math.pi)
        u = x * math.cos(a) + y * math.sin(a)
        field = 0.5 + 0.3 * np.sign(np.sin(2 * math.pi * rng.uniform(3, 10) * u))
        field = field + 0.2 * (_noise(rng, S, 4) - 0.5)
    elif kind == 2:  # blotches
        blobs = _noise(rng, S, int(rng.integers(3, 9))) > 0.5
        field = 0.35 + 0.4 * blobs + 0.1 * rng.random((S, S), dtype=np.float32)
    else:  # fine grain and a gradient
        field = 0.3 + 0.4 * (x * 0.5 + y * 0.5) + 0.35 * rng.random((S, S), dtype=np.float32)
    return _paint(field, (tuple(base * 0.7), tuple(np.minimum(255, base * 1.15 + 18)))), f"{bg} background"


def _source_landmark(cv: _Canvas, label: str, img: np.ndarray, ground: str) -> tuple[np.ndarray, str, np.ndarray]:
    """A straight road, river or (behind planes) runway across the picture, off-centre."""
    S, rng = cv.S, cv.rng
    name = "runway" if label == "plane" and rng.random() < 0.6 else _pick(rng, ("road", "river"))
    if name == "river" and ground == "water":
        name = "road"
    zone = _band(S, rng.uniform(0, math.pi), _pick(rng, (-1, 1)) * rng.uniform(0.25, 0.38),
                 rng.uniform(0.12, 0.2))
    if name == "river":
        band = _water(rng, S)
    else:
        band = _paint(_fbm(rng, S, (3, 16)), "asphalt")
        if name == "runway":
            band = (band * 0.8).astype(np.uint8)
    return np.where(zone[..., None], band, img), name, zone


def _source(cv: _Canvas, label: str) -> None:
    """An object-centred image: the label's objects, maybe a distractor and a landmark, on a backdrop or ground."""
    rng = cv.rng
    img, ground = _source_background(cv, label)
    landmark = None
    if rng.random() < 0.3:
        img, name, zone = _source_landmark(cv, label, img, ground)
        landmark = (name, zone)
    cv.start(img, ground)
    if landmark:
        cv.landmark(landmark[0], "blue" if landmark[0] == "river" else "gray", landmark[1])
    cv.sun = (cv.sun[0] * 0.6, cv.sun[1] * 0.6)
    bg = ground.removesuffix(" background")
    others = [c for c in PALETTE if c != bg]
    allowed = {"tree": ("green", "yellow", "orange", "brown", "red"), "pool": ("blue", "white")}
    palette = [c for c in allowed.get(label, others) if c != bg] or others
    size = math.exp(rng.uniform(math.log(0.07), math.log(0.7 if landmark is None else 0.45)))
    if size > 0.42:  # big objects come alone or in pairs, small ones in groups of up to six
        n = 1
    elif size > 0.25:
        n = int(rng.integers(1, 3))
    else:
        n = int(rng.choice(6, p=[0.3, 0.25, 0.18, 0.12, 0.08, 0.07])) + 1
    colour = _pick(rng, palette) if rng.random() < 0.6 else None  # None: each object its own colour
    for _ in range(8):  # always show the label's object: shrink until it fits
        if cv.scatter(label, n, (size * 0.85, size * 1.1), colour=colour or palette):
            break
        size *= 0.75
    if rng.random() < 0.5:
        other = _pick(rng, [c for c in SOURCE_SCENES if c != label])
        pal = [c for c in allowed.get(other, others) if c != bg] or others
        cv.scatter(other, int(rng.integers(1, 3)), (0.08, 0.25), colour=_pick(rng, pal))


# ----------------------------------------------------------------------------- public rendering


def render_scene(rng: np.random.Generator, scene: str, image_size: int = 224,
                 domain: str = "rs") -> tuple[Image.Image, list[dict[str, Any]], np.ndarray]:
    """Render one image of a scene.

    Args:
        rng: the image's random generator (all randomness comes from it).
        scene: an entry of :data:`SCENES` (``domain="rs"``) or :data:`SOURCE_SCENES` (``"source"``).
        image_size: side in pixels; every length scales with it.
        domain: ``"rs"`` or ``"source"``.

    Returns:
        The RGB image, its objects (see the module docstring) and the uint8 id mask.
    """
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, not {domain!r}")
    names = SCENES if domain == "rs" else SOURCE_SCENES
    if scene not in names:
        raise ValueError(f"unknown {domain} scene {scene!r}; choose one of {', '.join(names)}")
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32, not {image_size}")
    cv = _Canvas(rng, image_size)
    if domain == "rs":
        _RS_SCENES[scene](cv)
    else:
        _source(cv, scene)
    return cv.finish()


# ----------------------------------------------------------------------------- captions

_NEAR = ("beside", "near", "next to", "close to")
# scenes that can be "covered with" their ground
_AREAS = frozenset({"farmland", "forest", "parking", "denseresidential", "sparseresidential", "industrial",
                    "desert", "meadow", "storagetanks"})


def _counted(rng: np.random.Generator, k: int, adj: str, noun: tuple[str, str]) -> str:
    """``a white car``, ``three cars``, ``many red cars``: counts are exact, "many" means more than five."""
    if k == 1:
        word = "one" if rng.random() < 0.2 else "an" if (adj or noun[0])[0] in "aeiou" else "a"
        return f"{word} {adj}{noun[0]}"
    word = _NUMBERS[k] if k < len(_NUMBERS) else _pick(rng, ("many", "several", "lots of"))
    return f"{word} {adj}{noun[1]}"


def _np(rng: np.random.Generator, objs: list[dict[str, Any]], sizes: bool = False) -> tuple[str, bool]:
    """A noun phrase naming every object of one class, with true counts and colours; and whether plural."""
    noun = _pick(rng, OBJECTS[objs[0]["class"]].nouns)
    size = ""
    size_words = {o.get("size") for o in objs}
    if sizes and len(size_words) == 1 and size_words <= {"small", "large"} and rng.random() < 0.6:
        size = f"{size_words.pop()} "
    counts = sorted(Counter(o["colour"] for o in objs).items(), key=lambda t: (-t[1], t[0]))
    if len(counts) == 1 and rng.random() < 0.75:
        return _counted(rng, counts[0][1], f"{size}{counts[0][0]} ", noun), counts[0][1] > 1
    if 1 < len(counts) <= 3 and rng.random() < 0.6:
        parts = [_counted(rng, k, f"{size}{c} ", noun) for c, k in counts]
        return ", ".join(parts[:-1]) + " and " + parts[-1], True
    return _counted(rng, len(objs), size, noun), len(objs) > 1


def _box(objs: list[dict[str, Any]]) -> tuple[float, float, float, float]:
    return (min(o["bbox"][0] for o in objs), min(o["bbox"][1] for o in objs),
            max(o["bbox"][2] for o in objs), max(o["bbox"][3] for o in objs))


def _centre(o: dict[str, Any]) -> tuple[float, float]:
    return (o["bbox"][0] + o["bbox"][2]) / 2, (o["bbox"][1] + o["bbox"][3]) / 2


def _relations(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> list[str]:
    """Relations that hold for every object of ``a`` with respect to group ``b``."""
    bx0, by0, bx1, by1 = _box(b)
    out = []
    for word, test in (("to the left of", lambda x, y: x < bx0), ("to the right of", lambda x, y: x > bx1),
                       ("above", lambda x, y: y < by0), ("below", lambda x, y: y > by1)):
        if all(test(*_centre(o)) for o in a):
            out.append(word)

    def gap(p: dict[str, Any], q: dict[str, Any]) -> bool:
        (p0, p1, p2, p3), (q0, q1, q2, q3) = p["bbox"], q["bbox"]
        reach = 0.75 * max(p2 - p0, p3 - p1, q2 - q0, q3 - q1)
        return max(q0 - p2, p0 - q2, q1 - p3, p1 - q3, 0) <= reach

    if all(any(gap(p, q) for q in b) for p in a):
        out.append("near")
    return out


def _places(rng: np.random.Generator, objs: list[dict[str, Any]],
            marks: dict[int, dict[str, Any]]) -> list[str]:
    """Locative phrases true for every object of the group: on/near a landmark, or a part of the image."""
    out = []
    on = {o.get("on") for o in objs}
    if len(on) == 1 and None not in on:
        out.append(f"on the {LANDMARKS[marks[on.pop()]['class']]}")
    near = set.intersection(*(set(o.get("near") or ()) for o in objs))
    out += [f"{_pick(rng, _NEAR)} the {LANDMARKS[marks[i]['class']]}" for i in sorted(near)]
    vs, hs = {o["position"][0] for o in objs}, {o["position"][1] for o in objs}
    key = (vs.pop() if len(vs) == 1 else None, hs.pop() if len(hs) == 1 else None)
    if key in _POS:
        out.append(_pick(rng, _POS[key]))
    return out


def _be(phrase: str, plural: bool) -> str:
    """``is``/``are`` for "there is/are ...": agrees with the first conjunct, as English does."""
    return "is" if phrase.split(" ", 1)[0] in ("a", "an", "one") else "are" if plural else "is"


def _verb(rng: np.random.Generator, cls: str, plural: bool, form: int | None = None) -> str:
    v = _pick(rng, OBJECTS[cls].verbs)
    return v[2] if form == 2 else v[1] if plural else v[0]


def _with(rng: np.random.Generator, groups: list[list[dict[str, Any]]], sizes: bool = False) -> str:
    picked = [groups[i] for i in sorted(rng.permutation(len(groups))[: int(rng.integers(1, 3))])]
    return _join([_np(rng, g, sizes)[0] for g in picked])


def _join(phrases: list[str]) -> str:
    """Join noun phrases; "as well as" keeps colour lists ("a red car and a white car") readable."""
    if len(phrases) < 2:
        return phrases[0]
    glue = " as well as " if any(" and " in p for p in phrases) else " and "
    return ", ".join(phrases[:-1]) + glue + phrases[-1]


def _object_sentence(rng: np.random.Generator, scene: str, groups: list[list[dict[str, Any]]],
                     marks: dict[int, dict[str, Any]]) -> str | None:
    """One sentence about objects only (no scene word); None if the drawn template does not apply."""
    a = groups[int(rng.integers(len(groups)))]
    cls = a[0]["class"]
    np_a, pl = _np(rng, a)
    places = _places(rng, a, marks)
    t = int(rng.integers(5))
    if t == 0 and places:
        return f"{np_a} {_verb(rng, cls, pl)} {_pick(rng, places)}"
    if t == 1 and places:
        return f"there {_be(np_a, pl)} {np_a} {_pick(rng, places)}"
    if t == 2 and len(groups) > 1:
        b = _pick(rng, [g for g in groups if g is not a])
        rels = _relations(a, b)
        if rels:
            rel = _pick(rng, rels)
            rel = _pick(rng, _NEAR) if rel == "near" else rel
            return f"{np_a} {_verb(rng, cls, pl)} {rel} {_np(rng, b)[0]}"
    if t == 3 and len(groups) > 1:
        picked = [groups[i] for i in sorted(rng.permutation(len(groups))[: int(rng.integers(2, 4))])]
        return f"{_join([_np(rng, g)[0] for g in picked])} can be seen"
    if t == 4 and len({o["ground"] for o in a}) == 1:
        return f"{np_a} {_verb(rng, cls, pl)} on the {a[0]['ground']}"
    return None


def _scene_sentence(rng: np.random.Generator, scene: str, groups: list[list[dict[str, Any]]],
                    marks: dict[int, dict[str, Any]]) -> str | None:
    """One sentence that names the scene."""
    info = SCENE_INFO[scene]
    noun = _pick(rng, info.nouns)
    art = "an" if noun[0] in "aeiou" else "a"
    t = int(rng.integers(5 if groups else 1))
    if t == 0:
        adj = _pick(rng, [a for a in info.adjectives if a not in noun] or info.adjectives)
        if groups and rng.random() < 0.7:
            tail = f" with {_with(rng, groups)}"
        else:
            tail = f" covered with {_pick(rng, info.ground)}" if scene in _AREAS else " seen from above"
        return f"{'an' if adj[0] in 'aeiou' else 'a'} {adj} {noun}{tail}"
    a = groups[int(rng.integers(len(groups)))]
    cls = a[0]["class"]
    np_a, pl = _np(rng, a)
    places = _places(rng, a, marks)
    if t == 1 and places:
        return f"{art} {noun} with {np_a} {_verb(rng, cls, pl, 2)} {_pick(rng, places)}"
    if not info.prep:
        return None
    where = f"{info.prep} the {noun}"
    if t == 2:
        place = f"{_pick(rng, places)} " if places and rng.random() < 0.5 else ""
        return f"{np_a} {_verb(rng, cls, pl)} {place}{where}"
    if t == 3:
        return f"there {_be(np_a, pl)} {np_a} {where}"
    if places:
        return f"{where}, {np_a} {_verb(rng, cls, pl)} {_pick(rng, places)}"
    return None


def _fallback(scene: str, named: bool, k: int) -> str:
    """Texture sentences for images with few objects; ``k`` walks through distinct variants."""
    info = SCENE_INFO[scene]
    ground = info.ground[k % len(info.ground)]
    if named:
        noun = info.nouns[k % len(info.nouns)]
        adj = info.adjectives[(k // len(info.nouns)) % len(info.adjectives)]
        named_as = noun if adj in noun else f"{adj} {noun}"
        forms = (f"{'an' if named_as[0] in 'aeiou' else 'a'} {named_as}",
                 f"this is a remote sensing image of a {noun}",
                 f"an overhead view of a {noun}", f"a {noun} seen from above")
    else:
        forms = (f"the ground is covered with {ground}", f"most of the image is {ground}",
                 f"an overhead view of {ground}", f"the image shows {ground}",
                 f"we can see {ground} from above")
    return forms[(k // max(1, len(info.nouns) * len(info.adjectives)) if named else k) % len(forms)]


def _mentions(text: str, words: Sequence[str]) -> bool:
    return any(re.search(rf"\b{re.escape(w)}\b", text) for w in words)


def _finish(sentence: str) -> str:
    s = " ".join(sentence.split())
    return s[0].upper() + s[1:] + "."


def _groups(objects: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    by: dict[str, list[dict[str, Any]]] = {}
    for o in objects:
        if o["kind"] == "object":
            by.setdefault(o["class"], []).append(o)
    return list(by.values())


def _rs_captions(rng: np.random.Generator, scene: str, objects: Sequence[dict[str, Any]],
                 n: int) -> list[str]:
    groups = _groups(objects)
    marks = {o["id"]: o for o in objects if o["kind"] == "landmark"}
    nouns = SCENE_INFO[scene].nouns
    named = rng.permutation([True] * (n - n * 2 // 5) + [False] * (n * 2 // 5))  # ~40% never name the scene
    out: list[str] = []
    for want in named:
        for attempt in range(100):
            if attempt < 40 and (groups or want):
                s = (_scene_sentence if want else _object_sentence)(rng, scene, groups, marks)
            else:  # few objects: describe the ground, walking through distinct variants
                s = _fallback(scene, bool(want), attempt - 40)
            if s and _mentions(s, nouns) == bool(want) and _finish(s) not in out:
                out.append(_finish(s))
                break
    return out


def _a(phrase: str) -> str:
    return f"{'an' if phrase[0] in 'aeiou' else 'a'} {phrase}"


def _source_captions(rng: np.random.Generator, objects: Sequence[dict[str, Any]], n: int) -> list[str]:
    groups = _groups(objects)
    marks = {o["id"]: o for o in objects if o["kind"] == "landmark"}
    ground = groups[0][0]["ground"]
    named = ground in _SOURCE_GROUNDS
    label = groups[0][0]["class"]
    places = _OBJECT_PLACES[label] + (_GROUND_PLACES[ground] if named else ())
    place = _pick(rng, places) if rng.random() < 0.7 else None  # one place per image, as one web page has
    out: list[str] = []
    for attempt in range(300):
        if len(out) == n:
            break
        bg = _pick(rng, _SOURCE_GROUNDS[ground][1]) if named else _a(ground)  # "green grass", "an orange background"
        a = groups[0] if rng.random() < 0.7 else groups[int(rng.integers(len(groups)))]  # mostly the label
        np_a, pl = _np(rng, a, sizes=True)
        wheres = _places(rng, a, marks)
        t = int(rng.integers(10)) if attempt < 150 else 10
        s: str | None = None
        if t == 0:
            s = f"{np_a} on {bg}"
        elif t == 1 and wheres:
            s = f"{np_a} {_pick(rng, wheres)}"
        elif t == 2:
            s = f"there {_be(np_a, pl)} {np_a} on {bg}"
        elif t == 3 and len(groups) > 1:
            b = _pick(rng, [g for g in groups if g is not a])
            rels = _relations(a, b)
            if rels:
                rel = _pick(rng, rels)
                s = f"{np_a} {_pick(rng, _NEAR) if rel == 'near' else rel} {_np(rng, b, True)[0]}"
        elif t == 4 and len(groups) > 1:
            s = f"{_join([_np(rng, g, True)[0] for g in groups])} on {bg}"
        elif t == 5 and wheres:
            s = f"{np_a} {_verb(rng, a[0]['class'], pl)} {_pick(rng, wheres)}"
        elif t == 6 and named and rng.random() < 0.4:
            s = f"{np_a} on the ground covered with {_SOURCE_GROUNDS[ground][1][0]}"
        elif t == 6:
            s = f"{bg} with {_with(rng, groups, True)}"
        elif t in (7, 8) and place:
            info = SCENE_INFO[place]
            noun = _pick(rng, info.nouns)
            if t == 7:
                s = f"{np_a} {_verb(rng, a[0]['class'], pl)} {info.prep or _pick(rng, _NEAR)} the {noun}"
            else:
                adj = _pick(rng, [w for w in info.adjectives if w not in noun] or [""])
                s = f"{_a(f'{adj} {noun}'.strip())} with {np_a}"
        elif t == 9:
            s = f"{_join([_np(rng, g)[0] for g in groups])} can be seen " + _pick(rng, (f"on {bg}", "from above", ""))
        elif t == 10:  # rare: the templates ran out of distinct sentences
            s = _pick(rng, (f"{np_a} seen from above on {bg}", f"an image of {np_a}", f"a picture of {np_a}",
                            f"a view of {np_a} on {bg}"))
        if s and _finish(s) not in out:
            out.append(_finish(s))
    return out


def make_captions(rng: np.random.Generator, scene: str, objects: Sequence[dict[str, Any]], domain: str = "rs",
                  n: int = 5) -> list[str]:
    """Write ``n`` distinct captions that describe an image's objects truthfully.

    Every noun phrase counts all objects of its class (or of that class and colour): "two white
    planes" means exactly two white planes; "many"/"several"/"lots of" mean more than five.

    Args:
        rng: random generator (the image's own, after rendering).
        scene: the image's scene label.
        objects: the objects returned by :func:`render_scene`.
        domain: ``"rs"`` (RSITMD-like captions, ~40% without any scene word) or ``"source"``.
        n: number of captions.

    Returns:
        ``n`` capitalised sentences ending with a full stop.
    """
    if domain == "source":
        return _source_captions(rng, objects, n)
    return _rs_captions(rng, scene, objects, n)


# ----------------------------------------------------------------------------- dataset files


def _params(n_images: int, image_size: int, seed: int, domain: str,
            split_fractions: Sequence[float]) -> dict[str, Any]:
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, not {domain!r}")
    if n_images < 1 or image_size < 32:
        raise ValueError(f"need n_images >= 1 and image_size >= 32, got {n_images} and {image_size}")
    fr = [float(f) for f in split_fractions]
    if len(fr) != 3 or min(fr) < 0 or abs(sum(fr) - 1) > 1e-6:
        raise ValueError(f"split_fractions must be three non-negative numbers (train, val, test) "
                         f"summing to 1, not {fr}")
    return {"version": VERSIONS[domain], "n_images": int(n_images), "image_size": int(image_size), "seed": int(seed),
            "domain": domain, "split_fractions": fr}


def _read_params(root: Path) -> dict[str, Any] | None:
    try:
        return json.loads((root / "synthrs.json").read_text())["params"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _complete(root: Path, params: dict[str, Any]) -> bool:
    """Whether every file of a finished dataset is still there (one directory listing, no stat calls)."""
    try:
        n = params["n_images"]
        return len(os.listdir(root / "images")) == n and len(os.listdir(root / "masks")) == n and all(
            (root / f).is_file() for f in ("dataset_RSITMD.json", "objects.json"))
    except OSError:
        return False


def _splits(scenes: list[str], fractions: Sequence[float], seed: int) -> list[str]:
    """Seeded, per-scene (stratified) split of image indices."""
    out = [""] * len(scenes)
    for k, scene in enumerate(sorted(set(scenes))):
        idx = [i for i, s in enumerate(scenes) if s == scene]
        perm = np.random.default_rng([seed, 7919, k]).permutation(len(idx))
        n_train, n_val = round(fractions[0] * len(idx)), round(fractions[1] * len(idx))
        for rank, j in enumerate(perm):
            out[idx[j]] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
    return out


def _render_one(i: int, params: dict[str, Any]) -> tuple[str, str, Image.Image, list[dict[str, Any]],
                                                         np.ndarray, list[str]]:
    """Image ``i`` of a dataset: a pure function of (seed, domain, i)."""
    names = SCENES if params["domain"] == "rs" else SOURCE_SCENES
    scene = names[i % len(names)]
    rng = np.random.default_rng([params["seed"], DOMAINS.index(params["domain"]), i])
    img, objects, mask = render_scene(rng, scene, params["image_size"], params["domain"])
    captions = make_captions(rng, scene, objects, params["domain"])
    return f"{scene}_{i // len(names) + 1}.png", scene, img, objects, mask, captions


def _png_bytes(arr: np.ndarray) -> bytes:
    """Encode an RGB or grey uint8 array as PNG (no row filter, zlib level 1).

    Pillow's encoder tries every PNG row filter on every row; on these images filter "none" at
    level 1 is both smaller and twice as fast, which keeps generation above 200 images/s.
    """
    h, w = arr.shape[:2]
    channels = 1 if arr.ndim == 2 else arr.shape[2]
    rows = np.zeros((h, w * channels + 1), np.uint8)  # first byte of each row: filter type 0
    rows[:, 1:] = arr.reshape(h, w * channels)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", w, h, 8, 2 if channels == 3 else 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), 1))
            + chunk(b"IEND", b""))


def _write_dataset(folder: Path, params: dict[str, Any], progress: bool) -> None:
    (folder / "images").mkdir()
    (folder / "masks").mkdir()
    names = SCENES if params["domain"] == "rs" else SOURCE_SCENES
    n = params["n_images"]
    splits = _splits([names[i % len(names)] for i in range(n)], params["split_fractions"], params["seed"])
    images, objects_by_file = [], {}
    indices: Any = range(n)
    if progress:
        from tqdm.auto import tqdm  # imported only when shown: it costs ~0.1 s

        indices = tqdm(indices, desc=f"SynthRS {params['domain']}")
    for i in indices:
        fn, scene, img, objects, mask, captions = _render_one(i, params)
        (folder / "images" / fn).write_bytes(_png_bytes(np.asarray(img)))
        (folder / "masks" / fn).write_bytes(_png_bytes(mask))
        objects_by_file[fn] = objects
        images.append({"filename": fn, "imgid": i, "split": splits[i],
                       "sentids": list(range(5 * i, 5 * i + len(captions))),
                       "sentences": [{"raw": c, "tokens": re.findall(r"[a-z0-9]+", c.lower()), "imgid": i,
                                      "sentid": 5 * i + j} for j, c in enumerate(captions)]})
    (folder / "dataset_RSITMD.json").write_text(json.dumps({"images": images, "dataset": "synthrs"}))
    (folder / "objects.json").write_text(json.dumps(objects_by_file))
    meta = {"generator": "rsretrieval.data.synthrs", "params": params, "scenes": list(names),
            "objects": list(OBJECTS), "landmarks": list(LANDMARKS), "colours": list(PALETTE),
            "splits": dict(sorted(Counter(splits).items()))}
    (folder / "synthrs.json").write_text(json.dumps(meta, indent=1))  # written last: marks a complete dataset


def generate_synthrs(root: str | Path, *, n_images: int = 1500, image_size: int = 224, seed: int = 0,
                     domain: str = "rs", split_fractions: Sequence[float] = (0.7, 0.1, 0.2),
                     overwrite: bool = False, progress: bool = True) -> Path:
    """Generate SynthRS in RSITMD's layout under ``root`` (or reuse it if already there).

    The dataset is written into a temporary sibling folder and renamed into place, so an
    interrupted run never leaves a half dataset that looks complete.

    Args:
        root: target folder.
        n_images: number of images; scenes take turns, so each scene gets about the same share.
        image_size: image side in pixels.
        seed: the images and splits are a pure function of the seed (byte-identical files).
        domain: ``"rs"`` (top-down scenes) or ``"source"`` (object-centred pretraining domain).
        split_fractions: train/val/test shares, applied within each scene.
        overwrite: replace an existing SynthRS dataset made with other parameters.
        progress: show a tqdm progress bar.

    Returns:
        ``root`` as a Path.

    Raises:
        SynthRSExistsError: ``root`` holds a dataset with other parameters (and not ``overwrite``),
            or files that are not a SynthRS dataset.
        ValueError: invalid parameters.
    """
    root = Path(root).expanduser()
    params = _params(n_images, image_size, seed, domain, split_fractions)
    old = _read_params(root)
    if old == params and _complete(root, params):
        return root  # same params but files lost: fall through and remake it
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        if old is None:
            raise SynthRSExistsError(f"{root} exists and is not a SynthRS dataset (no readable "
                                     "synthrs.json); choose an empty or new folder. Nothing was deleted.")
        if old != params and not overwrite:
            diff = ", ".join(f"{k}: {old.get(k)!r} -> {v!r}" for k, v in params.items() if old.get(k) != v)
            raise SynthRSExistsError(f"{root} holds a SynthRS dataset made with other parameters ({diff}). "
                                     "Pass overwrite=True to replace it, or choose another root.")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.partial-", dir=root.parent))
    try:
        _write_dataset(tmp, params, progress)
        _swap_in(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def _swap_in(tmp: Path, root: Path) -> None:
    """Rename the finished folder into place, moving any previous dataset aside first."""
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()
    trash = None
    if root.exists():
        trash = root.with_name(f".{root.name}.old-{os.getpid()}-{time.monotonic_ns()}")
        root.rename(trash)
    os.replace(tmp, root)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def benchmark(n: int = 400, image_size: int = 224, domain: str = "rs") -> dict[str, float]:
    """Measure generation speed on one core and print it.

    Returns:
        ``{"images_per_s": end to end (render, captions, PNG, files, json),
        "render_encode_per_s": the same without touching the disk}``. The gap is the file
        system's cost of creating two files per image, which varies a lot on shared machines.
    """
    params = _params(n, image_size, 0, domain, (0.7, 0.1, 0.2))
    t0 = time.perf_counter()
    for i in range(n):
        _, _, img, _, mask, _ = _render_one(i, params)
        _png_bytes(np.asarray(img)), _png_bytes(mask)
    in_memory = n / (time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        generate_synthrs(Path(tmp) / "bench", n_images=n, image_size=image_size, domain=domain,
                         progress=False)
        end_to_end = n / (time.perf_counter() - t0)
    print(f"SynthRS {domain} {image_size}px, {n} images, one core: {end_to_end:.0f} images/s end to end, "
          f"{in_memory:.0f} images/s render + encode without disk writes")
    return {"images_per_s": end_to_end, "render_encode_per_s": in_memory}


if __name__ == "__main__":
    benchmark()
    benchmark(domain="source")
