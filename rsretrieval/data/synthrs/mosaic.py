"""A georeferenced SynthRS mosaic: rs scenes side by side in one multi-band, 16-bit GeoTIFF.

What an archive of aerial imagery holds, made offline: one large raster with a CRS, four bands
stored blue, green, red, near-infrared (Sentinel-2's order, so a reader must pick RGB by the bands'
descriptions), 16-bit values, and a nodata margin on the right. Each cell of the grid is one
SynthRS scene; ``mosaic.json`` beside the file says which scene lies where (pixel window, CRS
bounds), so a search over its tiles can be checked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rsretrieval.data.synthrs.scenes import render_scene
from rsretrieval.data.synthrs.vocabulary import SCENES
from rsretrieval.errors import lazy_import
from rsretrieval.files import atomic_write_json

BAND_ORDER = ("blue", "green", "red", "nir")
NODATA = 0


def generate_mosaic(path: str | Path, *, grid: tuple[int, int] = (4, 4), cell: int = 224, seed: int = 0,
                    scenes: list[str] | None = None, crs: str = "EPSG:32631",
                    origin: tuple[float, float] = (500_000.0, 5_000_000.0), pixel_size: float = 0.5,
                    margin: int = 0) -> dict[str, Any]:
    """Write a ``grid`` (rows, columns) of rs scenes as one GeoTIFF at ``path``; return its layout.

    Args:
        cell: each scene's side in pixels.
        scenes: the scene of each cell, row by row (default: SynthRS's scenes in turn).
        crs, origin, pixel_size: the georeference (origin: the top-left corner in CRS units).
        margin: columns of nodata added on the right (a scene's edge, as archives have them).

    Returns:
        The layout also written to ``<path>.json``: the file's size, CRS, and per cell its scene,
        pixel window ``[col, row, width, height]`` and CRS bounds ``[left, bottom, right, top]``.
    """
    rasterio = lazy_import("rasterio")
    from rasterio.transform import from_origin

    rows, cols = grid
    names = scenes or [SCENES[k % len(SCENES)] for k in range(rows * cols)]
    if len(names) != rows * cols:
        raise ValueError(f"{len(names)} scenes for a {rows} x {cols} grid: give one per cell")
    height, width = rows * cell, cols * cell + margin
    data = np.full((len(BAND_ORDER), height, width), NODATA, dtype=np.uint16)
    transform = from_origin(origin[0], origin[1], pixel_size, pixel_size)
    cells = []
    for k, scene in enumerate(names):
        r, c = divmod(k, cols)
        img, _, _ = render_scene(np.random.default_rng([seed, 7, k]), scene, cell)
        rgb = np.asarray(img, dtype=np.uint16)
        x0, y0 = c * cell, r * cell
        # 16-bit reflectance-like values: 8-bit colour times 40 plus an offset, so none is nodata
        for band, name in enumerate(BAND_ORDER):
            values = rgb[..., 1] if name == "nir" else rgb[..., ("red", "green", "blue").index(name)]
            data[band, y0:y0 + cell, x0:x0 + cell] = values * 40 + 100
        left, top = transform @ (x0, y0)
        right, bottom = transform @ (x0 + cell, y0 + cell)
        cells.append({"scene": scene, "window": [x0, y0, cell, cell], "bounds": [left, bottom, right, top]})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with rasterio.open(tmp, "w", driver="GTiff", width=width, height=height, count=len(BAND_ORDER),
                       dtype="uint16", crs=crs, transform=transform, nodata=NODATA, tiled=True,
                       blockxsize=256, blockysize=256, compress="deflate") as dst:
        dst.write(data)
        for band, name in enumerate(BAND_ORDER, start=1):
            dst.set_band_description(band, name)
    tmp.replace(path)
    layout = {"file": path.name, "width": width, "height": height, "crs": crs, "pixel_size": pixel_size,
              "band_order": list(BAND_ORDER), "cells": cells}
    atomic_write_json(path.with_name(path.name + ".json"), layout)
    return layout
