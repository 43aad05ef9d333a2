"""Procedural grounds: noise, fractal textures, water, fields, dunes, bands."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from rsretrieval.data.synthrs.vocabulary import _RAMPS, Colour

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


