"""The painters of each rs scene, the source domain, and :func:`render_scene`."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from rsretrieval.data.synthrs.canvas import OBJECT_SCALE, _Canvas, _Frame
from rsretrieval.data.synthrs.textures import (
    _band,
    _coords,
    _darken,
    _dunes,
    _fbm,
    _fields,
    _lighten,
    _noise,
    _paint,
    _pick,
    _poly_zone,
    _water,
    _water_field,
    _weighted,
)
from rsretrieval.data.synthrs.vocabulary import DOMAINS, OBJECTS, PALETTE, SOURCE_SCENES, domain_scenes

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


def _web_photo(rng: np.random.Generator, img: Image.Image) -> Image.Image:
    """An aerial photo as the web has it: a colour cast, haze, another contrast, some blur."""
    arr = np.asarray(img, np.float32)
    gains = rng.uniform(0.85, 1.15, 3).astype(np.float32)
    haze, haze_level = rng.uniform(0.0, 0.3), rng.uniform(170, 235)
    contrast = rng.uniform(0.8, 1.2)
    mean = arr.mean()
    arr = (arr - mean) * contrast + mean
    arr = (arr * gains) * (1 - haze) + haze * haze_level
    out = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    radius = rng.uniform(0.0, 1.2) * img.size[0] / 224
    return out.filter(ImageFilter.GaussianBlur(radius)) if radius > 0.2 else out


# ----------------------------------------------------------------------------- public rendering


def render_scene(rng: np.random.Generator, scene: str, image_size: int = 224, domain: str = "rs", *,
                 object_scale: float = OBJECT_SCALE) -> tuple[Image.Image, list[dict[str, Any]], np.ndarray]:
    """Render one image of a scene.

    Args:
        rng: the image's random generator (all randomness comes from it).
        scene: an entry of :func:`domain_scenes` of the domain (:data:`SCENES` for ``"rs"``).
        image_size: side in pixels; every length scales with it.
        domain: ``"rs"``, ``"source"`` or ``"web"`` (source photos, and rs scenes as aerial web photos).
        object_scale: every object's length times this (the layout is drawn as at 1).

    Returns:
        The RGB image, its objects (see the module docstring) and the uint8 id mask.
    """
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, not {domain!r}")
    names = domain_scenes(domain)
    if scene not in names:
        raise ValueError(f"unknown {domain} scene {scene!r}; choose one of {', '.join(names)}")
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32, not {image_size}")
    cv = _Canvas(rng, image_size, object_scale)
    if scene in _RS_SCENES:
        _RS_SCENES[scene](cv)
    else:
        _source(cv, scene)
    img, objects, mask = cv.finish()
    if domain == "web" and scene in _RS_SCENES:
        img = _web_photo(rng, img)
    return img, objects, mask


