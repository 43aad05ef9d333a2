"""Object shapes and the canvas that paints a scene and its mask."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from rsretrieval.data.synthrs.textures import _darken, _lighten, _pick, _poly_zone, _weighted
from rsretrieval.data.synthrs.vocabulary import LANDMARKS, OBJECTS, PALETTE, Colour

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


OBJECT_SCALE = 1.0  # objects at their natural lengths: the course's target domain


class _Canvas:
    """One image being rendered: RGB picture, id mask, objects, and free space for placement."""

    def __init__(self, rng: np.random.Generator, size: int, object_scale: float = OBJECT_SCALE) -> None:
        self.rng, self.S, self.object_scale = rng, size, object_scale
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
        length *= self.object_scale
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


