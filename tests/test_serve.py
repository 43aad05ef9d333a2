"""`serve`: the JSON API and the page over an index of chips and a GeoTIFF mosaic's tiles."""

import io
import json
import shutil
import urllib.request

import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("rasterio")

from fastapi.testclient import TestClient  # noqa: E402

from rsretrieval.cli import main  # noqa: E402
from rsretrieval.data.synthrs.mosaic import generate_mosaic  # noqa: E402
from rsretrieval.search.serve import BackgroundServer, SearchService, create_app, load_index  # noqa: E402


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """Eight SynthRS chips and a 2 x 3 georeferenced mosaic, indexed with MiniCLIP."""
    base = tmp_path_factory.mktemp("serve")
    assert main(["data", "synth", "--root", str(base / "synthrs"), "--n-images", "8", "--image-size", "64"]) == 0
    images = base / "archive"
    shutil.copytree(base / "synthrs" / "images", images / "chips")
    layout = generate_mosaic(images / "scenes" / "mosaic.tif", grid=(2, 3), cell=224)
    index = base / "index"
    assert main(["index", "build", "--images", str(images), "--out", str(index), "--tile-size", "224",
                 "--scene-from-prefix", "--device", "cpu"]) == 0
    return index, layout


@pytest.fixture(scope="module")
def service(archive):
    return SearchService(load_index(archive[0], device="cpu"))


@pytest.fixture(scope="module")
def client(service):
    return TestClient(create_app(service, max_upload_bytes=200_000))


def test_text_search_answers_with_scores_thumbnails_and_coordinates(client, archive):
    _, layout = archive
    assert client.get("/health").json()["images"] == 8 + 6
    body = client.get("/api/search", params={"q": "planes at the airport", "k": 5}).json()
    assert body["query"] == "planes at the airport" and len(body["results"]) == 5 and body["took_ms"] > 0
    top = body["results"][0]
    assert set(top) >= {"id", "score", "path", "scene", "thumbnail", "window", "bounds", "lonlat", "footprint"}
    assert top["path"] == "scenes/mosaic.tif" and top["window"] == layout["cells"][0]["window"]
    assert top["lonlat"][0] == pytest.approx(3.0) and top["raster"] == 0
    scores = [r["score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True)
    chip = next(r for r in client.get("/api/search", params={"q": "a beach", "k": 14}).json()["results"]
                if r["path"].startswith("chips/"))
    assert chip["window"] is None and chip["lonlat"] is None and chip["scene"]


def test_thumbnails_similar_images_rasters_and_the_page(client, service):
    response = client.get("/api/thumbnail/0")
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(response.content)).size[0] <= 256
    like = client.get("/api/similar/3", params={"k": 3}).json()["results"]
    assert like[0]["id"] == 3 and like[0]["score"] == pytest.approx(1.0, abs=1e-2)
    rasters = client.get("/api/rasters").json()["rasters"]
    assert [r["path"] for r in rasters] == ["scenes/mosaic.tif"] and rasters[0]["crs"] == "EPSG:32631"
    look = client.get(rasters[0]["quicklook"])
    assert look.status_code == 200 and Image.open(io.BytesIO(look.content)).size == (672, 448)
    page = client.get("/")
    assert page.status_code == 200 and "<input id=\"q\"" in page.text


def test_search_by_an_uploaded_image_finds_that_image(client, service):
    i = 5
    buf = io.BytesIO()
    service.index.image(i).save(buf, "PNG")
    body = client.post("/api/search", params={"k": 3}, content=buf.getvalue(),
                       headers={"Content-Type": "image/png"}).json()
    assert body["results"][0]["id"] == i


@pytest.mark.parametrize(("method", "url", "kwargs", "status", "says"), [
    ("get", "/api/search", {"params": {"q": "  "}}, 400, "empty query"),
    ("get", "/api/search", {"params": {"q": "port", "k": 0}}, 400, "k: Input should be greater than or equal to 1"),
    ("get", "/api/search", {"params": {"q": "port", "k": "ten"}}, 400, "k: Input should be a valid integer"),
    ("post", "/api/search", {"content": b"not an image at all"}, 415, "not an image"),
    ("post", "/api/search", {"content": b""}, 400, "empty upload"),
    ("post", "/api/search", {"content": b"x" * 300_000}, 413, "the limit is 200,000"),
    ("get", "/api/thumbnail/9999", {}, 404, "no image 9999: ids run from 0 to 13"),
    ("get", "/api/thumbnail/..%2F..%2Fetc%2Fpasswd", {}, 404, "; the API is /api/search"),
    ("get", "/api/thumbnail/x.png", {}, 400, "i: Input should be a valid integer"),
    ("get", "/api/similar/-1", {}, 404, "no image -1"),
    ("get", "/api/quicklook/7", {}, 404, "no scene 7"),
])
def test_bad_requests_get_a_4xx_with_one_line_and_the_server_keeps_serving(client, method, url, kwargs, status,
                                                                           says):
    response = getattr(client, method)(url, **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert says in error and "\n" not in error
    assert client.get("/health").status_code == 200


def test_served_on_localhost_by_uvicorn(service):
    with BackgroundServer(create_app(service)) as url:
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(f"{url}/api/search?q=storage+tanks&k=2") as response:
            assert len(json.loads(response.read())["results"]) == 2


def _chromium():
    import shutil as sh

    browser = next((p for p in (sh.which("chromium"), sh.which("chromium-browser")) if p), None)
    driver = sh.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip("no headless Chromium here (Debian's chromium and chromium-driver): `.ci/run` installs them "
                    "with apt-get; elsewhere run `apt-get install chromium chromium-driver`")
    return browser, driver


@pytest.mark.slow
def test_the_page_in_a_real_browser(service, tmp_path):
    """Headless Chromium types a query, sees thumbnails, scores and footprints, follows 'more like this'
    and searches by an uploaded image."""
    browser, driver = _chromium()
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-quic", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,1000"):
        options.add_argument(flag)
    upload = tmp_path / "query.png"
    service.index.image(2).save(upload)
    with BackgroundServer(create_app(service)) as url:
        chrome = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))
        try:
            wait = WebDriverWait(chrome, 30)
            loaded = ("return [...document.querySelectorAll('.hit img')]"
                      ".filter(i => i.complete && i.naturalWidth > 0).length")
            chrome.get(url)
            box = chrome.find_element(By.ID, "q")
            box.send_keys("planes at the airport", Keys.ENTER)
            wait.until(lambda c: len(c.find_elements(By.CSS_SELECTOR, ".hit")) == 10 and c.execute_script(loaded) == 10)
            cards = chrome.find_elements(By.CSS_SELECTOR, ".hit")
            assert cards[0].find_element(By.CSS_SELECTOR, ".score").text.startswith("#1 0.")
            assert "lon 3.00000" in cards[0].find_element(By.CSS_SELECTOR, ".meta").text
            assert "q=planes+at+the+airport" in chrome.current_url
            wait.until(lambda c: c.find_elements(By.CSS_SELECTOR, ".map rect.top"))  # its footprint on the quicklook

            cards[3].click()  # more like this
            wait.until(lambda c: "similar=" in c.current_url and "images like" in c.find_element(By.ID, "status").text)
            chrome.refresh()  # the search lives in the URL
            wait.until(lambda c: c.execute_script(loaded) == 10)

            chrome.find_element(By.ID, "upload").send_keys(str(upload))
            wait.until(lambda c: "the image query.png" in c.find_element(By.ID, "status").text)
            first = chrome.find_elements(By.CSS_SELECTOR, ".hit")[0]
            assert first.get_attribute("data-id") == "2"

            chrome.get(f"{url}/?q=%20")
            wait.until(lambda c: "empty query" in c.find_element(By.ID, "status").text)
        finally:
            chrome.quit()


def test_bench_serve_measures_latency_with_concurrent_clients(archive, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench-serve", "--index", str(archive[0]), "--vectors", "6000", "--clients", "3",
                 "--requests", "24", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    for run, n in (("index", 14), ("million", 6000)):
        r = result[run]
        assert r["vectors"] == n and r["errors"] == 0 and r["clients"] == 3 and r["requests"] == 24
        assert 0 < r["one_client_p50_ms"] and 0 < r["p50_ms"] <= r["p95_ms"] <= r["max_ms"]
        assert r["target_ratio"] == pytest.approx(r["p50_ms"] / result["targets_ms"][run])
    assert result["million_search"]["nlist"] > 1
    assert "p50" in capsys.readouterr().out


# ---------------------------------------------------------------- files that vanish, uploads that cost too much


@pytest.fixture
def fragile(tmp_path):
    """A small index whose files the test may delete: two chips and a 1 x 2 mosaic, tiny random model."""
    assert main(["data", "synth", "--root", str(tmp_path / "synthrs"), "--n-images", "2", "--image-size", "64"]) == 0
    images = tmp_path / "archive"
    shutil.copytree(tmp_path / "synthrs" / "images", images / "chips")
    generate_mosaic(images / "scenes" / "mosaic.tif", grid=(1, 2), cell=64)
    index = tmp_path / "index"
    assert main(["index", "build", "--images", str(images), "--out", str(index), "--tile-size", "64",
                 "--model", "tiny", "--pretrained", "", "--device", "cpu"]) == 0
    service = SearchService(load_index(index, device="cpu"))
    return TestClient(create_app(service)), service, images


def test_a_file_removed_after_indexing_is_a_410_naming_it_and_the_server_keeps_serving(fragile):
    client, service, images = fragile
    paths = service.index.manifest.paths
    chip = next(i for i, p in enumerate(paths) if p.startswith("chips/"))
    tile = next(i for i, p in enumerate(paths) if p.startswith("scenes/"))
    (images / paths[chip]).unlink()
    (images / "scenes" / "mosaic.tif").unlink()
    for url in (f"/api/thumbnail/{chip}", f"/api/thumbnail/{tile}", "/api/quicklook/0"):
        response = client.get(url)
        assert response.status_code == 410, (url, response.text)
        assert "no longer on disk" in response.json()["error"]
    listed = client.get("/api/rasters")
    assert listed.status_code == 200
    assert listed.json()["rasters"][0]["path"] == "scenes/mosaic.tif" and "no longer on disk" in \
        listed.json()["rasters"][0]["error"]
    assert client.get("/api/search", params={"q": "planes"}).status_code == 200


def test_a_file_damaged_after_indexing_is_a_422(fragile):
    client, service, images = fragile
    (images / "scenes" / "mosaic.tif").write_bytes(b"II*\x00 truncated")
    response = client.get("/api/quicklook/0")
    assert response.status_code == 422 and "scenes/mosaic.tif cannot be read any more" in response.json()["error"]


def _png(width, height, mode="RGB"):
    buf = io.BytesIO()
    Image.new(mode, (width, height), 128).save(buf, "PNG")
    return buf.getvalue()


def _bomb():
    """A valid PNG header declaring 60000 x 60000 pixels, with almost no data."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 60_000, 60_000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.mark.parametrize(("content", "status", "says"), [
    (_bomb(), 413, "pixels"),
    (_png(1, 5000), 413, "aspect ratio over 20:1"),
    (_png(6000, 6000, "L")[:40], 415, "not an image"),
], ids=["decompression-bomb", "1x5000-strip", "truncated"])
def test_uploads_that_would_cost_too_much_are_refused_before_decoding(fragile, content, status, says):
    client, _, _ = fragile
    response = client.post("/api/search", content=content)
    assert response.status_code == status, response.text
    assert says in response.json()["error"]
    assert client.get("/health").status_code == 200


def test_a_16_bit_tiff_query_is_stretched_as_the_index_stretches_a_scene(tmp_path):
    import numpy as np
    import rasterio

    from rsretrieval.search.archive import open_query_image
    from rsretrieval.search.geotiff import Raster, Tiling

    path = tmp_path / "q16.tif"
    values = np.linspace(1000, 3000, 64 * 64, dtype=np.uint16).reshape(1, 64, 64)
    with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=1, dtype="uint16") as ds:
        ds.write(values)
    as_upload = np.asarray(open_query_image(path.read_bytes(), Tiling()))
    with Raster(path, Tiling()) as scene:
        as_indexed = np.asarray(scene.read((0, 0, 64, 64))[0])
    assert (as_upload == as_indexed).all()
    assert 0 < as_upload.mean() < 255 and as_upload.std() > 50  # stretched, not clipped to white
