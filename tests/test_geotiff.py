"""GeoTIFF scenes in the search index: tiles by windowed reads, RGB by band description, an 8-bit
stretch, nodata left out, and coordinates that come back with the hits."""

import json

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")

from rasterio.transform import from_origin  # noqa: E402

from rsretrieval.cli import main  # noqa: E402
from rsretrieval.data.synthrs.mosaic import generate_mosaic  # noqa: E402
from rsretrieval.search import ImageIndex  # noqa: E402
from rsretrieval.search.geotiff import Raster, Tiling, is_scene, split_key, tile_key, tile_windows  # noqa: E402


def test_tile_windows_cover_the_raster_and_end_at_its_edges():
    assert tile_windows(100, 60, 256) == [(0, 0, 100, 60)]  # smaller than one tile: the whole raster
    wins = tile_windows(600, 300, 256)
    assert [w[:2] for w in wins] == [(0, 0), (256, 0), (344, 0), (0, 44), (256, 44), (344, 44)]
    assert all(c + w <= 600 and r + h <= 300 for c, r, w, h in wins)
    assert [w[0] for w in tile_windows(600, 256, 256, overlap=128)] == [0, 128, 256, 344]
    assert split_key(tile_key("a/b.tif", (256, 44, 256, 256))) == ("a/b.tif", (256, 44, 256, 256))
    assert split_key("photos/#1.png") == ("photos/#1.png", None)
    with pytest.raises(ValueError, match="0 <= overlap < size"):
        Tiling(size=256, overlap=256)


def _write(path, data, **profile):
    count, height, width = data.shape
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=count, dtype=data.dtype,
                       **profile) as dst:
        dst.write(data)
    return path


def test_bands_are_picked_by_description_then_colour_interpretation_then_first_three(tmp_path):
    data = np.arange(4 * 40 * 40, dtype=np.uint16).reshape(4, 40, 40)
    plain = _write(tmp_path / "plain.tif", data)
    with Raster(plain, Tiling()) as r:
        assert r.bands == (1, 2, 3)
    with Raster(plain, Tiling(bands=(4, 3, 2))) as r:
        assert r.bands == (4, 3, 2)
    with pytest.raises(Exception, match="has 4 bands; bands \\[5, 1, 1\\] were asked for"):
        Raster(plain, Tiling(bands=(5, 1, 1)))
    named = tmp_path / "named.tif"
    _write(named, data)
    with rasterio.open(named, "r+") as ds:
        for i, name in enumerate(["nir", "Blue", "green", "RED"], start=1):
            ds.set_band_description(i, name)
    with Raster(named, Tiling()) as r:
        assert r.bands == (4, 3, 2)
    rgb = _write(tmp_path / "rgb.tif", np.zeros((3, 40, 40), np.uint8), photometric="RGB")
    assert not is_scene(rgb)  # an 8-bit RGB chip without a CRS is read as a plain image, as always
    assert is_scene(plain) and not is_scene(tmp_path / "none.png")


def test_float_scene_with_nan_nodata_is_stretched_and_masked(tmp_path):
    data = np.linspace(0.0, 1.0, 3 * 64 * 64, dtype=np.float32).reshape(3, 64, 64)
    data[:, :, :16] = np.nan
    path = _write(tmp_path / "float.tif", data, nodata=float("nan"), crs="EPSG:4326",
                  transform=from_origin(10.0, 50.0, 0.001, 0.001))
    with Raster(path, Tiling(size=64)) as r:
        img, valid = r.read((0, 0, 64, 64))
        geo = r.georef((0, 0, 64, 64))
    arr = np.asarray(img)
    assert valid == pytest.approx(48 / 64)
    assert (arr[:, :16] == 0).all() and arr[:, 16:].max() == 255 and arr[:, 16:].min() == 0  # 2-98% stretch
    assert geo["lonlat"] == pytest.approx([10.0, 49.936, 10.064, 50.0])


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory):
    folder = tmp_path_factory.mktemp("geo") / "scenes"
    layout = generate_mosaic(folder / "mosaic.tif", grid=(2, 3), cell=224, margin=224)
    return folder, layout


def test_the_mosaic_is_a_4_band_16_bit_geotiff_with_a_crs(mosaic):
    folder, layout = mosaic
    with rasterio.open(folder / "mosaic.tif") as ds:
        assert (ds.count, ds.dtypes[0], ds.crs.to_string()) == (4, "uint16", "EPSG:32631")
        assert (ds.width, ds.height) == (3 * 224 + 224, 2 * 224) and ds.descriptions[2] == "red"
    assert [c["scene"] for c in layout["cells"]][:2] == ["airport", "farmland"]


def test_scene_tiles_are_indexed_with_coordinates_and_a_query_finds_the_planted_tile(mosaic, tmp_path, capsys):
    folder, layout = mosaic
    out = tmp_path / "index"
    assert main(["index", "build", "--images", str(folder), "--out", str(out), "--tile-size", "224",
                 "--device", "cpu"]) == 0
    index = ImageIndex.read_manifest(out)
    windows = [split_key(p)[1] for p in index.paths]
    assert sorted(windows) == sorted(tuple(c["window"]) for c in layout["cells"])  # the nodata column: left out
    assert [s["error"] for s in index.skipped] == ["mostly nodata (0% valid, below min_valid 50%)"] * 2
    assert index.tiling["size"] == 224

    geojson = tmp_path / "hits.geojson"
    capsys.readouterr()
    assert main(["search", str(out), "planes at the airport", "-k", "3", "--json", "--geojson", str(geojson),
                 "--device", "cpu"]) == 0
    hits = json.loads(capsys.readouterr().out)
    airport = layout["cells"][0]
    assert hits[0]["window"] == airport["window"] and hits[0]["bounds"] == pytest.approx(airport["bounds"])
    west, south, east, north = hits[0]["lonlat"]
    # UTM zone 31's central meridian is 3 degrees east: the mosaic's left edge (easting 500 km) lies on it
    assert west == pytest.approx(3.0, abs=1e-9) and 45.15 < south < north < 45.16 and east > west
    features = json.loads(geojson.read_text())["features"]
    assert len(features) == 3 and features[0]["properties"]["window"] == airport["window"]
    ring = features[0]["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1] and len(ring) == 5
    assert min(p[0] for p in ring) == pytest.approx(west) and max(p[1] for p in ring) == pytest.approx(north)

    # A tile read back from the index is the stretched scene: its red band follows the rendered one.
    loaded = ImageIndex.load(out)
    tile = np.asarray(loaded.image(index.paths.index(tile_key("mosaic.tif", tuple(airport["window"])))))
    with rasterio.open(folder / "mosaic.tif") as ds:
        red = ds.read(3, window=rasterio.windows.Window(*airport["window"])).astype(float)
    assert np.corrcoef(tile[..., 0].ravel(), red.ravel())[0, 1] > 0.99
