"""GeoTIFF scenes as tiles for the search index: windowed reads, RGB bands, an 8-bit stretch, coordinates.

An archive's scenes are large (thousands of pixels a side), multi-band, 16-bit or float, and
georeferenced. Each is cut into tiles of ``Tiling.size`` pixels read one window at a time (a scene
is never loaded whole), its red, green and blue bands stretched to 8 bits between per-scene
percentiles of the valid pixels (so all tiles of a scene share one stretch), nodata shown black,
and tiles that are mostly nodata left out. Every tile keeps its pixel window, its bounds in the
scene's CRS and in longitude/latitude, and its footprint (a polygon in longitude/latitude).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from rsretrieval.errors import DatasetFormatError, DependencyNotFoundError, lazy_import

TIFF_SUFFIXES = (".tif", ".tiff")
_OVERVIEW_SIDE = 1024  # the stretch's percentiles are read from a decimated copy at most this large


@dataclass(frozen=True)
class Tiling:
    """How scenes are cut: tile side and overlap in pixels, bands (1-based; None: RGB by the bands'
    descriptions or colour interpretation, else the first three), the least share of valid pixels a
    tile needs to be indexed, and the stretch's percentiles."""

    size: int = 256
    overlap: int = 0
    bands: tuple[int, ...] | None = None
    min_valid: float = 0.5
    percentiles: tuple[float, float] = (2.0, 98.0)

    def __post_init__(self) -> None:
        if self.size < 32 or not 0 <= self.overlap < self.size:
            raise ValueError(f"need a tile size >= 32 and 0 <= overlap < size, got size {self.size}, "
                             f"overlap {self.overlap}")
        if self.bands is not None and (len(self.bands) not in (1, 3) or min(self.bands) < 1):
            raise ValueError(f"bands are 1-based band numbers, one (grey) or three (red, green, blue): "
                             f"got {self.bands}")
        if not 0 <= self.min_valid <= 1 or not 0 <= self.percentiles[0] < self.percentiles[1] <= 100:
            raise ValueError(f"need 0 <= min_valid <= 1 and 0 <= low < high <= 100 percentiles, got "
                             f"{self.min_valid} and {self.percentiles}")

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Tiling:
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})


def _rasterio():
    return lazy_import("rasterio")


@contextmanager
def _quiet():
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        yield


def is_scene(path: str | Path) -> bool:
    """Whether ``path`` is read as a scene, tiled: a TIFF that is georeferenced, not 8-bit, or not one
    or three bands. Other images (8-bit RGB chips, PNG, JPEG) are read whole, as plain images."""
    if Path(path).suffix.lower() not in TIFF_SUFFIXES:
        return False
    try:
        import rasterio
    except ImportError:  # without rasterio, 8-bit chips are read as always; a scene says what it needs
        try:
            with Image.open(path) as im:
                mode = im.mode
        except OSError:
            return False  # the plain reader names the fault
        if mode in ("RGB", "L", "P", "RGBA"):
            return False
        raise DependencyNotFoundError(f"{path} is a multi-band or not 8-bit TIFF (mode {mode}): reading it as a "
                                      "GeoTIFF scene needs rasterio. Run `pip install rasterio`.") from None
    try:
        with _quiet(), rasterio.open(path) as ds:
            return ds.crs is not None or ds.dtypes[0] != "uint8" or ds.count not in (1, 3)
    except rasterio.errors.RasterioError:
        return False  # not a TIFF rasterio reads: left to the plain reader, which names the fault


def tile_windows(width: int, height: int, size: int, overlap: int = 0) -> list[tuple[int, int, int, int]]:
    """The ``(col, row, width, height)`` windows covering a ``width`` x ``height`` raster, row by row:
    steps of ``size - overlap``, the last tile of a row or column moved in to end at the edge."""
    def starts(n: int) -> list[int]:
        if n <= size:
            return [0]
        out = list(range(0, n - size + 1, size - overlap))
        return out if out[-1] + size == n else out + [n - size]

    return [(c, r, min(size, width), min(size, height)) for r in starts(height) for c in starts(width)]


def tile_key(rel: str, window: tuple[int, int, int, int]) -> str:
    """The index key of one tile of the scene at ``rel``: ``rel#col,row,width,height``."""
    return f"{rel}#{','.join(str(v) for v in window)}"


def split_key(key: str) -> tuple[str, tuple[int, int, int, int] | None]:
    """``(rel, window)`` of an index key; a whole file's key has no window."""
    rel, sep, frag = key.rpartition("#")
    if sep and frag.count(",") == 3 and all(p.isdigit() for p in frag.split(",")):
        c, r, w, h = (int(p) for p in frag.split(","))
        return rel, (c, r, w, h)
    return key, None


class Raster:
    """One GeoTIFF scene opened for tiled reading (use as a context manager, or call :meth:`close`)."""

    def __init__(self, path: str | Path, tiling: Tiling,
                 stretch: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """``stretch``: the scene's (low, high) from an earlier opening, instead of reading them again."""
        rasterio = _rasterio()
        self.path, self.tiling = Path(path), tiling
        try:
            with _quiet():  # a scene without a CRS is fine: its tiles just have no coordinates
                self.ds = rasterio.open(self.path)
        except rasterio.errors.RasterioError as exc:
            raise DatasetFormatError(f"scene {self.path} cannot be read by rasterio ({str(exc)[:160]}); "
                                     "replace the file with a good copy") from None
        self.bands = self._pick_bands()
        self.low, self.high = stretch if stretch is not None else self._stretch()

    def __enter__(self) -> Raster:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.ds.close()

    def windows(self) -> list[tuple[int, int, int, int]]:
        return tile_windows(self.ds.width, self.ds.height, self.tiling.size, self.tiling.overlap)

    def _pick_bands(self) -> tuple[int, ...]:
        ds, asked = self.ds, self.tiling.bands
        if asked is not None:
            if max(asked) > ds.count:
                raise DatasetFormatError(f"scene {self.path} has {ds.count} bands; bands {list(asked)} were asked "
                                         f"for (1-based): choose among 1..{ds.count}")
            return tuple(asked)
        names = [(d or "").strip().lower() for d in ds.descriptions]
        by_name = [next((i + 1 for i, n in enumerate(names) if n in aliases), None)
                   for aliases in (("red", "r"), ("green", "g"), ("blue", "b"))]
        if all(by_name):
            return tuple(by_name)
        interp = [ci.name for ci in ds.colorinterp]
        if all(c in interp for c in ("red", "green", "blue")):
            return tuple(interp.index(c) + 1 for c in ("red", "green", "blue"))
        return (1, 2, 3) if ds.count >= 3 else (1,)

    def _stretch(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-band low and high values that map to 0 and 255 (8-bit data: 0 and 255, unstretched)."""
        n = len(self.bands)
        if self.ds.dtypes[self.bands[0] - 1] == "uint8":
            return np.zeros(n), np.full(n, 255.0)
        scale = max(1.0, max(self.ds.width, self.ds.height) / _OVERVIEW_SIDE)
        shape = (n, max(1, round(self.ds.height / scale)), max(1, round(self.ds.width / scale)))
        data = self.ds.read(list(self.bands), out_shape=shape, masked=True)
        low, high = np.zeros(n), np.ones(n)
        for b in range(n):
            valid = data[b].compressed().astype(np.float64)
            valid = valid[np.isfinite(valid)]
            if valid.size:
                low[b], high[b] = np.percentile(valid, self.tiling.percentiles)
            high[b] = max(high[b], low[b] + 1e-6)
        return low, high

    def read(self, window: tuple[int, int, int, int]) -> tuple[Image.Image, float]:
        """The tile at ``window`` as an 8-bit RGB image (nodata black), and its share of valid pixels."""
        from rasterio.windows import Window

        w = Window(*window)
        data = self.ds.read(list(self.bands), window=w).astype(np.float64)
        valid = (self.ds.dataset_mask(window=w) > 0) & np.isfinite(data).all(axis=0)
        return self._rgb(data, valid), float(valid.mean())

    def _rgb(self, data: np.ndarray, valid: np.ndarray) -> Image.Image:
        scaled = (data - self.low[:, None, None]) / (self.high - self.low)[:, None, None]
        img = np.clip(np.nan_to_num(scaled) * 255 + 0.5, 0, 255).astype(np.uint8)
        img[:, ~valid] = 0
        if img.shape[0] == 1:
            img = np.repeat(img, 3, axis=0)
        return Image.fromarray(np.ascontiguousarray(img.transpose(1, 2, 0)), "RGB")

    def georef(self, window: tuple[int, int, int, int]) -> dict[str, Any]:
        """The tile's window, CRS, bounds in the CRS ``[left, bottom, right, top]``, and in longitude/latitude
        (``lonlat``: ``[west, south, east, north]``; ``footprint``: its corners as ``[lon, lat]``); the
        last three are None for a scene without a CRS."""
        from rasterio.warp import transform, transform_bounds

        out: dict[str, Any] = {"window": list(window), "crs": None, "bounds": None, "lonlat": None,
                               "footprint": None}
        if self.ds.crs is None:
            return out
        c, r, w, h = window
        (left, top), (right, bottom) = self.ds.transform @ (c, r), self.ds.transform @ (c + w, r + h)
        xs, ys = transform(self.ds.crs, "EPSG:4326", [left, right, right, left], [top, top, bottom, bottom])
        out.update(crs=self.ds.crs.to_string(), bounds=[left, bottom, right, top],
                   lonlat=list(transform_bounds(self.ds.crs, "EPSG:4326", left, bottom, right, top)),
                   footprint=[[x, y] for x, y in zip(xs, ys)])
        return out

    def quicklook(self, side: int = 1024) -> Image.Image:
        """The whole scene, stretched as its tiles are, at most ``side`` pixels on its longer side."""
        scale = max(1.0, max(self.ds.width, self.ds.height) / side)
        h, w = max(1, round(self.ds.height / scale)), max(1, round(self.ds.width / scale))
        data = self.ds.read(list(self.bands), out_shape=(len(self.bands), h, w)).astype(np.float64)
        valid = (self.ds.dataset_mask(out_shape=(h, w)) > 0) & np.isfinite(data).all(axis=0)
        return self._rgb(data, valid)


def hits_geojson(hits: list[Any]) -> dict[str, Any]:
    """The georeferenced hits as a GeoJSON FeatureCollection (RFC 7946: longitude/latitude polygons),
    each with its rank, score, file, scene, pixel window and CRS bounds; hits without coordinates are
    left out."""
    features = []
    for h in hits:
        tile = getattr(h, "tile", None) or {}
        if not tile.get("footprint"):
            continue
        ring = [list(p) for p in tile["footprint"]] + [list(tile["footprint"][0])]
        features.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
                         "properties": {"rank": h.rank, "score": h.score, "path": str(h.path), "scene": h.scene,
                                        "window": tile["window"], "crs": tile["crs"], "bounds": tile["bounds"]}})
    return {"type": "FeatureCollection", "features": features}
