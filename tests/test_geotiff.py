"""GeoTIFF scenes in the search index: tiles by windowed reads, RGB by band description, an 8-bit
stretch, nodata left out, and coordinates that come back with the hits."""

import json

import numpy as np
import pytest

from rsretrieval.errors import DatasetFormatError

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
    with pytest.raises(DatasetFormatError, match=r"plain.tif has 4 band\(s\): band 5 does not exist"):
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


# ------------------------------------------------------------------ georeferencing that is not silently wrong

def _scene(tmp_path, name, transform=None, crs="EPSG:32631", size=(64, 48)):
    w, h = size
    data = np.arange(3 * h * w, dtype=np.uint16).reshape(3, h, w)
    profile = {"crs": crs} if crs else {}
    if transform is not None:
        profile["transform"] = transform
    return _write(tmp_path / name, data, **profile)


def _expected_corners(path):
    """Each pixel corner of the whole scene through rasterio's own transforms, as an independent check."""
    from rasterio.warp import transform as warp

    with rasterio.open(path) as ds:
        xy = [ds.transform @ p for p in ((0, 0), (ds.width, 0), (ds.width, ds.height), (0, ds.height))]
        lon, lat = warp(ds.crs, "EPSG:4326", [x for x, _ in xy], [y for _, y in xy])
    return xy, list(zip(lon, lat))


def _ccw(ring):
    return sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring, ring[1:] + ring[:1])) > 0


def test_a_crs_without_a_geotransform_gives_no_coordinates(tmp_path):
    path = _scene(tmp_path, "nogeo.tif")
    with Raster(path, Tiling(size=64)) as r:
        assert "no geotransform" in r.georef_problem
        geo = r.georef((0, 0, 64, 48))
    assert geo["lonlat"] is None and geo["footprint"] is None and geo["window"] == [0, 0, 64, 48]


@pytest.mark.parametrize("name, transform", [
    ("north-up", from_origin(500000, 5000000, 10, 10)),
    ("south-up", rasterio.Affine(10, 0, 500000, 0, 10, 4999520)),
    ("rotated", from_origin(500000, 5000000, 10, 10) @ rasterio.Affine.rotation(30)),
])
def test_footprints_follow_all_four_corners_counter_clockwise(tmp_path, name, transform):
    path = _scene(tmp_path, f"{name}.tif", transform)
    xy, lonlat = _expected_corners(path)
    with Raster(path, Tiling(size=64)) as r:
        assert r.georef_problem is None
        geo = r.georef((0, 0, 64, 48))
    xs, ys = [x for x, _ in xy], [y for _, y in xy]
    assert geo["bounds"] == pytest.approx([min(xs), min(ys), max(xs), max(ys)])
    west, south, east, north = geo["lonlat"]
    assert west < east and south < north
    assert west == pytest.approx(min(p[0] for p in lonlat)) and north == pytest.approx(max(p[1] for p in lonlat))
    ring = geo["footprint"]
    assert len(ring) == 4 and _ccw(ring)  # RFC 7946: an exterior ring is counter-clockwise
    assert np.allclose(sorted(map(tuple, ring)), sorted(lonlat), rtol=0, atol=1e-9)


def test_metres_labelled_epsg_4326_and_scenes_outside_their_crs_area_get_no_coordinates(tmp_path):
    metres = _scene(tmp_path, "metres.tif", from_origin(500000, 5000000, 10, 10), crs="EPSG:4326")
    with Raster(metres, Tiling(size=64)) as r:
        assert "area of use" in r.georef_problem and r.georef((0, 0, 64, 48))["lonlat"] is None
    # UTM zone 31N (0 to 6 degrees east) with an easting that puts the scene half a world away
    far = _scene(tmp_path, "far.tif", from_origin(-9_000_000, 5000000, 10, 10))
    with Raster(far, Tiling(size=64)) as r:
        assert r.georef_problem is not None and r.georef((0, 0, 64, 48))["footprint"] is None


# ------------------------------------------------------------------ damaged scenes are skipped, named

def _truncated(tmp_path):
    path = _scene(tmp_path, "truncated.tif", from_origin(500000, 5000000, 10, 10), size=(512, 512))
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 3])
    return path


def _sparse_huge(tmp_path):
    path = tmp_path / "huge.tif"
    with rasterio.open(path, "w", driver="GTiff", width=100_000, height=100_000, count=3, dtype="uint16",
                       tiled=True, blockxsize=1024, blockysize=1024, sparse_ok=True, crs="EPSG:32631",
                       transform=from_origin(500000, 5000000, 10, 10)):
        pass  # nothing written: a few kB on disk that declare 10^10 pixels
    assert path.stat().st_size < 1_000_000
    return path


def test_damaged_and_oversized_scenes_are_skipped_and_named_while_the_rest_is_indexed(mosaic, tmp_path):
    from rsretrieval.search import Encoder

    folder, layout = mosaic
    archive = tmp_path / "archive"
    archive.mkdir()
    (archive / "mosaic.tif").write_bytes((folder / "mosaic.tif").read_bytes())
    _truncated(archive)
    _sparse_huge(archive)
    _scene(archive, "metres.tif", from_origin(500000, 5000000, 10, 10), crs="EPSG:4326")
    index = ImageIndex.build(archive, tmp_path / "idx", Encoder("tiny", None, device="cpu"),
                             tiling=Tiling(size=224), progress=False)
    errors = {s["path"]: s["error"] for s in index.manifest.skipped}
    assert "rasterio cannot read its pixels" in errors["truncated.tif"] and "truncated.tif" in errors["truncated.tif"]
    assert "MAX_SCENE_PIXELS" in errors["huge.tif"] and "100000x100000" in errors["huge.tif"]
    assert sum(split_key(p)[0] == "mosaic.tif" for p in index.manifest.paths) == len(layout["cells"])
    assert "metres.tif" in index.manifest.paths  # indexed, one tile, without coordinates
    assert index.manifest.tiles["metres.tif"]["lonlat"] is None


def test_a_band_the_scene_lacks_is_named_with_its_file(mosaic, tmp_path, capsys):
    folder, _ = mosaic
    assert main(["index", "build", "--images", str(folder), "--out", str(tmp_path / "idx"), "--tile-size", "224",
                 "--bands", "5", "3", "2", "--model", "tiny", "--pretrained", "none", "--device", "cpu"]) != 0
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.splitlines()[-1].startswith("error: none of the 1 images")
    assert "mosaic.tif has 4 band(s): band 5 does not exist" in err and "choose among 1..4" in err


def test_a_scene_stretch_is_read_once_per_build_however_many_chunks(mosaic, tmp_path, monkeypatch):
    from rsretrieval.search import Encoder

    folder, layout = mosaic
    calls = []
    original = Raster._stretch
    monkeypatch.setattr(Raster, "_stretch", lambda self: calls.append(self.path) or original(self))
    ImageIndex.build(folder, tmp_path / "idx", Encoder("tiny", None, device="cpu"), tiling=Tiling(size=224),
                     chunk=2, batch_size=2, progress=False)
    assert calls == [folder / "mosaic.tif"]
