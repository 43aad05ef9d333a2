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
# A scene may declare far more pixels than it holds (a sparse file): past this it is skipped, not tiled.
# 1e9 pixels is about 15,000 tiles of 256 px; raise it for genuine larger scenes.
MAX_SCENE_PIXELS = 1_000_000_000
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
        try:
            if self.ds.width * self.ds.height > MAX_SCENE_PIXELS:
                raise DatasetFormatError(
                    f"scene {self.path} declares {self.ds.width}x{self.ds.height} pixels, over "
                    f"rsretrieval.search.geotiff.MAX_SCENE_PIXELS = {MAX_SCENE_PIXELS:,}: if it is genuine, "
                    "raise that limit; otherwise replace the file")
            self.bands = self._pick_bands()
            self.low, self.high = stretch if stretch is not None else self._reading(self._stretch)
            self.georef_problem = self._georef_problem()
        except BaseException:
            self.ds.close()
            raise

    def __enter__(self) -> Raster:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.ds.close()

    def windows(self) -> list[tuple[int, int, int, int]]:
        return tile_windows(self.ds.width, self.ds.height, self.tiling.size, self.tiling.overlap)

    def _reading(self, read, *args, **kwargs):
        """``read(...)``, with rasterio's read errors (a truncated or damaged file) naming the scene."""
        rasterio = _rasterio()
        try:
            return read(*args, **kwargs)
        except rasterio.errors.RasterioError as exc:
            raise DatasetFormatError(f"scene {self.path} is damaged: rasterio cannot read its pixels "
                                     f"({str(exc).splitlines()[0][:160]}); replace the file with a good copy") from None

    def _pick_bands(self) -> tuple[int, ...]:
        ds, asked = self.ds, self.tiling.bands
        if asked is not None:
            missing = [b for b in asked if b > ds.count]
            if missing:
                raise DatasetFormatError(f"scene {self.path} has {ds.count} band(s): band {missing[0]} does not exist "
                                         f"(asked for bands {list(asked)}, 1-based): choose among 1..{ds.count}")
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
        data = self._reading(self.ds.read, list(self.bands), window=w).astype(np.float64)
        valid = (self._reading(self.ds.dataset_mask, window=w) > 0) & np.isfinite(data).all(axis=0)
        return self._rgb(data, valid), float(valid.mean())

    def _rgb(self, data: np.ndarray, valid: np.ndarray) -> Image.Image:
        scaled = (data - self.low[:, None, None]) / (self.high - self.low)[:, None, None]
        img = np.clip(np.nan_to_num(scaled) * 255 + 0.5, 0, 255).astype(np.uint8)
        img[:, ~valid] = 0
        if img.shape[0] == 1:
            img = np.repeat(img, 3, axis=0)
        return Image.fromarray(np.ascontiguousarray(img.transpose(1, 2, 0)), "RGB")

    def _georef_problem(self) -> str | None:
        """Why this scene's tiles get no coordinates (None: they do): no CRS, a CRS without a
        geotransform, or corners outside the CRS's area of use (e.g. metres labelled EPSG:4326)."""
        ds = self.ds
        if ds.crs is None:
            return "no CRS"
        if ds.transform.is_identity:
            return f"a CRS ({ds.crs.to_string()}) but no geotransform: pixel positions are not coordinates"
        try:
            lon, lat = self._corners_lonlat((0, 0, ds.width, ds.height))
        except Exception as exc:  # noqa: BLE001 -- PROJ's errors for points it cannot transform
            return f"its corners cannot be transformed to longitude/latitude ({str(exc)[:120]})"
        area = _area_of_use(ds.crs)
        bad = not (np.isfinite(lon).all() and np.isfinite(lat).all())
        if not bad and area is not None:
            south, west, north, east = area
            slack = 1.0  # degrees: scenes at the edge of a UTM zone are common and fine
            east = east + 360 if east < west else east  # an area across the antimeridian
            lon_in = np.where(lon < west - slack, lon + 360, lon)
            bad = bool((lat < south - slack).any() or (lat > north + slack).any()
                       or (lon_in < west - slack).any() or (lon_in > east + slack).any())
        if bad:
            return (f"corners at longitude {np.round(lon, 3).tolist()}, latitude {np.round(lat, 3).tolist()}, "
                    f"outside {ds.crs.to_string()}'s area of use {area}: the CRS label is probably wrong "
                    "(e.g. metres labelled EPSG:4326)")
        return None

    def _corners_lonlat(self, window: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
        """The window's four corners (top-left, clockwise on the image) in longitude/latitude."""
        from rasterio.warp import transform

        xs, ys = self._corners(window)
        lon, lat = transform(self.ds.crs, "EPSG:4326", xs, ys)
        return np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64)

    def _corners(self, window: tuple[int, int, int, int]) -> tuple[list[float], list[float]]:
        c, r, w, h = window
        corners = [self.ds.transform @ p for p in ((c, r), (c + w, r), (c + w, r + h), (c, r + h))]
        return [float(x) for x, _ in corners], [float(y) for _, y in corners]

    def georef(self, window: tuple[int, int, int, int]) -> dict[str, Any]:
        """The tile's window, CRS, bounds in the CRS ``[left, bottom, right, top]``, and in longitude/latitude
        (``lonlat``: ``[west, south, east, north]``; ``footprint``: its four corners as ``[lon, lat]``,
        counter-clockwise as RFC 7946 wants an exterior ring); all four corners go through the geotransform,
        so south-up and rotated scenes are right. The last three are None where the scene has no usable
        georeferencing (:attr:`georef_problem` says why)."""
        out: dict[str, Any] = {"window": list(window), "crs": None, "bounds": None, "lonlat": None,
                               "footprint": None}
        if self.georef_problem is not None:
            return out
        xs, ys = self._corners(window)
        lon, lat = self._corners_lonlat(window)
        ring = [[float(x), float(y)] for x, y in zip(lon, lat)]
        if _signed_area(ring) < 0:
            ring.reverse()
        out.update(crs=self.ds.crs.to_string(), bounds=[min(xs), min(ys), max(xs), max(ys)],
                   lonlat=[float(lon.min()), float(lat.min()), float(lon.max()), float(lat.max())], footprint=ring)
        return out

    def quicklook(self, side: int = 1024) -> Image.Image:
        """The whole scene, stretched as its tiles are, at most ``side`` pixels on its longer side."""
        scale = max(1.0, max(self.ds.width, self.ds.height) / side)
        h, w = max(1, round(self.ds.height / scale)), max(1, round(self.ds.width / scale))
        data = self._reading(self.ds.read, list(self.bands), out_shape=(len(self.bands), h, w)).astype(np.float64)
        valid = (self._reading(self.ds.dataset_mask, out_shape=(h, w)) > 0) & np.isfinite(data).all(axis=0)
        return self._rgb(data, valid)


def _signed_area(ring: list[list[float]]) -> float:
    """Twice the signed area of a ring (shoelace): positive when counter-clockwise."""
    return sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring, ring[1:] + ring[:1]))


def _area_of_use(crs) -> tuple[float, float, float, float] | None:
    """The CRS's area of use as (south, west, north, east) degrees, from its WKT2 BBOX (a CRS read from a
    GeoTIFF's keys often lacks one: then its EPSG code's); the whole globe for an unknown geographic CRS."""
    import re

    from rasterio.crs import CRS
    from rasterio.enums import WktVersion

    def bbox(c) -> list[str]:
        try:
            return re.findall(r"BBOX\[([^\]]+)\]", c.to_wkt(version=WktVersion.WKT2_2019))
        except Exception:  # noqa: BLE001 -- a CRS PROJ cannot write as WKT2
            return []

    found = bbox(crs)
    if not found:
        try:
            code = crs.to_epsg()
            found = bbox(CRS.from_epsg(code)) if code else []
        except Exception:  # noqa: BLE001 -- no EPSG code PROJ knows
            found = []
    if not found:
        return (-90.0, -180.0, 90.0, 180.0) if crs.is_geographic else None
    south, west, north, east = (float(v) for v in found[0].split(","))
    return south, west, north, east


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
