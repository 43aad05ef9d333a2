"""The search engine as a web application: one process loads the model and the index once, then
answers every query (``python -m rsretrieval serve INDEX``).

JSON API:

    GET  /health                       {"status": "ok", "images", "model", "index"}
    GET  /api/search?q=TEXT&k=K        {"query", "k", "took_ms", "results": [{"id", "score", "path", "scene",
                                        "thumbnail", "window", "bounds", "lonlat", "footprint", "raster"}]}
    POST /api/search?k=K               the same, for the image sent as the request body
    GET  /api/similar/ID?k=K           "more like this": the images nearest to indexed image ID
    GET  /api/thumbnail/ID             a JPEG of indexed image ID (by id only: no path reaches the disk)
    GET  /api/rasters                  the GeoTIFF scenes of the index, with their size and quicklook
    GET  /api/quicklook/RID            a JPEG of scene RID, stretched as its tiles are
    GET  /                             the search page

A bad request gets a 4xx and ``{"error": "one line"}``; the server keeps serving.
"""

import asyncio
import io
import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from concurrent.futures import Future
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from rsretrieval import defaults
from rsretrieval.errors import DatasetFormatError, QueryImageError, lazy_import
from rsretrieval.search.archive import Hit, ImageIndex
from rsretrieval.search.geotiff import split_key

MAX_K = 100
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
THUMBNAIL_SIDE = 256


class _Batcher:
    """Calls ``fn`` on lists of items from many threads, one list at a time in its own thread: the
    items that arrive while a list is being processed go together into the next (a text encoder
    takes 8 queries in about 3x the time of one)."""

    def __init__(self, fn: Callable[[list[Any]], list[Any]], max_batch: int = 32) -> None:
        self.fn, self.max_batch = fn, max_batch
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._loop, daemon=True, name="rsretrieval-batcher").start()

    def __call__(self, item: Any) -> Any:
        return self.submit(item).result()

    def submit(self, item: Any) -> Future:
        future: Future = Future()
        self.queue.put((item, future))
        return future

    def _loop(self) -> None:
        while True:
            batch = [self.queue.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            try:
                results = self.fn([item for item, _ in batch])
            except Exception as exc:  # noqa: BLE001 -- each caller gets the error of its batch
                for _, future in batch:
                    future.set_exception(exc)
            else:
                for (_, future), result in zip(batch, results, strict=True):
                    future.set_result(result)


class SearchService:
    """What the application serves, apart from HTTP: one index with its encoder, safe to call from
    several threads. Text queries that arrive together are encoded as one batch."""

    def __init__(self, index: ImageIndex) -> None:
        if index.encoder is None:
            raise ValueError("the index must be loaded with an encoder to serve text and image queries")
        self.index = index
        self._texts = _Batcher(self._search_texts)
        keys = index.manifest.paths
        self.rasters = sorted({split_key(k)[0] for k in keys if k in index.manifest.tiles})
        self._raster_of = {r: i for i, r in enumerate(self.rasters)}
        self.thumbnail = lru_cache(maxsize=2048)(self._thumbnail)
        self._about = lru_cache(maxsize=100_000)(self._describe)
        self.quicklook = lru_cache(maxsize=16)(self._quicklook)
        index.searcher  # noqa: B018 -- built now, not on the first query

    def search_text(self, q: str, k: int) -> list[dict[str, Any]]:
        return self._texts((q, k))

    def submit_text(self, q: str, k: int) -> Future:
        """:meth:`search_text` without waiting: a future of its rows (what the server awaits)."""
        return self._texts.submit((q, k))

    def _search_texts(self, queries: list[tuple[str, int]]) -> list[list[dict[str, Any]]]:
        vectors = self.index.encoder.encode_texts([q for q, _ in queries])
        scores, ids = self.index.searcher.search(vectors, max(k for _, k in queries))  # one call for the batch
        return [[self._row(int(i), r + 1, float(sc)) for r, (sc, i) in enumerate(zip(scores[j][:k], ids[j][:k]))
                 if i >= 0] for j, (_, k) in enumerate(queries)]

    def search_image(self, image: Image.Image | bytes, k: int) -> list[dict[str, Any]]:
        return self._rows(self.index.search_image(image, k))

    def similar(self, i: int, k: int) -> list[dict[str, Any]]:
        self._check_id(i)
        vector = np.asarray(self.index.embeddings[i : i + 1], dtype=np.float32)
        return self._rows(self.index.search_vector(vector, k))

    def _check_id(self, i: int) -> None:
        if not 0 <= i < len(self.index):
            raise KeyError(f"no image {i}: ids run from 0 to {len(self.index) - 1}")

    def _rows(self, hits: list[Hit]) -> list[dict[str, Any]]:
        return [self._row(h.id, h.rank, h.score) for h in hits]

    def _row(self, i: int, rank: int, score: float) -> dict[str, Any]:
        return {"id": i, "rank": rank, "score": round(score, 6), **self._about(i)}

    def _describe(self, i: int) -> dict[str, Any]:
        """What a result says about indexed image ``i`` besides its score (path relative to the index root)."""
        m = self.index.manifest
        key = m.paths[i]
        tile = m.tiles.get(key) or {}
        rel = split_key(key)[0]
        return {"path": rel, "scene": m.scenes[i], "thumbnail": f"/api/thumbnail/{i}",
                "window": tile.get("window"), "crs": tile.get("crs"), "bounds": tile.get("bounds"),
                "lonlat": tile.get("lonlat"), "footprint": tile.get("footprint"), "raster": self._raster_of.get(rel)}

    def _thumbnail(self, i: int) -> bytes:
        self._check_id(i)
        with self._reading(split_key(self.index.manifest.paths[i])[0]):
            img = self.index.image(i)
        img.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        return _jpeg(img)

    @contextmanager
    def _reading(self, rel: str) -> Iterator[None]:
        """Turn a file that vanished or broke after indexing into :class:`Unavailable`, naming it."""
        try:
            yield
        except (DatasetFormatError, OSError) as exc:
            path = Path(self.index.manifest.root) / rel
            if not path.exists():
                raise Unavailable(410, f"{rel} is no longer on disk (removed since the index was built): "
                                       "restore it, or rebuild the index") from None
            raise Unavailable(422, f"{rel} cannot be read any more ({str(exc).splitlines()[0][:160]}): "
                                   "restore a good copy, or rebuild the index") from None

    def raster_info(self) -> list[dict[str, Any]]:
        """The index's GeoTIFF scenes; one that vanished or broke since indexing is listed with its ``error``."""
        out = []
        for rid, rel in enumerate(self.rasters):
            row: dict[str, Any] = {"id": rid, "path": rel, "quicklook": f"/api/quicklook/{rid}"}
            try:
                with self._reading(rel), self.index.raster(rel) as r:
                    row.update(width=r.ds.width, height=r.ds.height,
                               crs=None if r.ds.crs is None else r.ds.crs.to_string())
            except Unavailable as exc:
                row.update(width=None, height=None, crs=None, quicklook=None, error=exc.reason)
            out.append(row)
        return out

    def _quicklook(self, rid: int) -> bytes:
        if not 0 <= rid < len(self.rasters):
            raise KeyError(f"no scene {rid}: the index holds {len(self.rasters)} GeoTIFF scene(s)")
        with self._reading(self.rasters[rid]), self.index.raster(self.rasters[rid]) as r:
            return _jpeg(r.quicklook(1024))


class Unavailable(Exception):
    """An indexed file the server cannot show any more: ``status`` 410 (gone) or 422 (unreadable)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=85)
    return buf.getvalue()


def create_app(service: SearchService, *, max_upload_bytes: int = MAX_UPLOAD_BYTES):
    """The FastAPI application over ``service``."""
    fastapi = lazy_import("fastapi")
    from fastapi import Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException

    app = fastapi.FastAPI(title="rsretrieval search", docs_url="/api/docs", redoc_url=None)
    page = resources.files("rsretrieval.search").joinpath("static/index.html").read_text(encoding="utf-8")

    def error(status: int, reason: str) -> JSONResponse:
        return JSONResponse({"error": reason}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "path"))
        return error(400, f"{where}: {first.get('msg', 'invalid')}".strip(": "))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404 and exc.detail == "Not Found":
            return error(404, f"not found: {request.url.path[:200]}; the API is /api/search, /api/similar/ID, "
                              "/api/thumbnail/ID, /api/rasters, /api/quicklook/ID (see /api/docs)")
        return error(exc.status_code, str(exc.detail))

    @app.get("/health")
    def health() -> dict[str, Any]:
        m = service.index.manifest
        return {"status": "ok", "images": len(service.index), "model": m.encoder["model"],
                "index": str(service.index.folder)}

    @app.get("/", response_class=HTMLResponse)
    def home() -> str:
        return page

    def answer(query: str | None, k: int, started: float, results: list[dict[str, Any]]) -> Response:
        body = {"query": query, "k": k, "took_ms": round((time.perf_counter() - started) * 1000, 2),
                "results": results}
        return Response(json.dumps(body), media_type="application/json")  # plain data: no encoder pass

    @app.get("/api/search")
    async def search(q: str = Query(""), k: int = Query(10, ge=1, le=MAX_K)):
        started = time.perf_counter()
        if not q.strip():
            return error(400, "empty query: type what you are looking for, e.g. 'two white planes beside the "
                              "terminal'")
        if len(q) > 1000:
            return error(400, f"query of {len(q)} characters: keep it under 1000")
        return answer(q, k, started, await asyncio.wrap_future(service.submit_text(q, k)))

    @app.post("/api/search")
    async def search_by_image(request: Request, k: int = Query(10, ge=1, le=MAX_K)):
        started = time.perf_counter()
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_upload_bytes:
            return error(413, f"upload of {int(declared):,} bytes: the limit is {max_upload_bytes:,}")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_upload_bytes:
                return error(413, f"upload over {max_upload_bytes:,} bytes: send a smaller image")
        if not body:
            return error(400, "empty upload: send an image (PNG, JPEG, TIFF) as the request body")
        import anyio.to_thread

        try:
            results = await anyio.to_thread.run_sync(service.search_image, bytes(body), k)
        except QueryImageError as exc:
            return error(exc.status, str(exc))
        return answer(None, k, started, results)

    @app.get("/api/similar/{i}")
    def similar(i: int, k: int = Query(10, ge=1, le=MAX_K)):
        started = time.perf_counter()
        try:
            return answer(None, k, started, service.similar(i, k))
        except KeyError as exc:
            return error(404, exc.args[0])

    def jpeg(make: Callable[[int], bytes], key: int) -> Response:
        try:
            data = make(key)
        except KeyError as exc:  # an id the index does not have
            return error(404, exc.args[0])
        except Unavailable as exc:
            return error(exc.status, exc.reason)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/api/thumbnail/{i}")
    def thumbnail(i: int):
        return jpeg(service.thumbnail, i)

    @app.get("/api/rasters")
    def rasters() -> dict[str, Any]:
        return {"rasters": service.raster_info()}

    @app.get("/api/quicklook/{rid}")
    def quicklook(rid: int):
        return jpeg(service.quicklook, rid)

    return app


def serve(index_folder: str | Path, *, host: str = "127.0.0.1", port: int = 8000, model: str | None = None,
          pretrained: str | None = None, adapter: str | None = None, device: str = "auto", threads: int = 1,
          log_level: str = "warning") -> None:
    """Load ``index_folder`` with the encoder it was built with (or the one given) and serve it until stopped.

    ``threads``: torch's CPU threads; one query is too small to gain from more (measured by ``bench-serve``).
    """
    import torch

    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an integer >= 1, got {threads!r}")
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be a TCP port (1 to 65535; 0: any free one), got {port!r}")
    uvicorn = lazy_import("uvicorn")
    torch.set_num_threads(threads)
    app = create_app(SearchService(load_index(index_folder, model, pretrained, adapter, device)))
    print(f"serving {index_folder} on http://{host}:{port}/ (Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


def load_index(folder: str | Path, model: str | None = None, pretrained: str | None = None,
               adapter: str | None = None, device: str = "auto", backend: str = "auto") -> ImageIndex:
    """An index with the encoder its manifest names (or the one given, which must match)."""
    from rsretrieval.search.archive import Encoder

    manifest = ImageIndex.read_manifest(folder)
    encoder = Encoder(model or manifest.encoder["model"], pretrained or manifest.pretrained,
                      adapter or manifest.adapter_path, device)
    return ImageIndex.load(folder, encoder, backend=backend)


class BackgroundServer:
    """``app`` served by uvicorn on ``host``:``port`` (0: a free port) in a thread of this process, for
    benchmarks and tests: ``with BackgroundServer(app) as url: ...``."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0) -> None:
        import socket

        uvicorn = lazy_import("uvicorn")
        if port == 0:
            with socket.socket() as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
        self.url = f"http://{host}:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on {self.url} did not start")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def _clients_elsewhere(url: str, clients: int, requests: int) -> dict[str, Any]:
    """The benchmark's clients (``http_clients.py``) in another process, as real clients are (not sharing
    the server's interpreter lock); run as a script, so that it starts without torch (-P: nothing of
    this folder shadows what it imports)."""
    import subprocess
    import sys

    script = Path(__file__).with_name("http_clients.py")
    proc = subprocess.run([sys.executable, "-P", str(script), url, str(clients), str(requests)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"the benchmark's clients failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout)


def bench_serve(index_folder: str | Path | None = None, *, vectors: int = 1_000_000, clients: int = 8,
                requests: int = 400, device: str = "cpu", threads: int = 1, progress: bool = True) -> dict[str, Any]:
    """Served text queries, measured end to end over HTTP on 127.0.0.1 (encoding, search, JSON):
    latency percentiles with ``clients`` concurrent clients, over ``index_folder`` (default: an index
    of SynthRS's images with MiniCLIP, built once into ``<data home>/indexes/synthrs-mini``) and over
    ``vectors`` synthetic vectors searched by FAISS IVF (the same encoder; 0: skip)."""
    import torch

    from rsretrieval.paths import data_dir
    from rsretrieval.search.archive import Encoder, Manifest
    from rsretrieval.search.vectors import build, synthetic_vectors

    def say(msg: str) -> None:
        if progress:
            print(msg, flush=True)

    if index_folder is None:
        index_folder = data_dir("indexes") / "synthrs-mini"
        if not (Path(index_folder) / "manifest.json").is_file():
            from rsretrieval.data import load_dataset

            images = load_dataset("synthrs", None, "all").image_paths[0].parent  # generated on first use
            say(f"building the SynthRS index into {index_folder} (once)")
            encoder = Encoder(defaults.MODEL, defaults.MINICLIP_TAG, device=device)
            ImageIndex.build(images, index_folder, encoder, progress=progress)
    torch.set_num_threads(threads)
    index = load_index(index_folder, device=device)
    result: dict[str, Any] = {"device": device, "threads": threads, "targets_ms": {"index": 30.0, "million": 50.0}}
    runs = [("index", index)]
    if vectors:
        t0 = time.perf_counter()
        vecs = synthetic_vectors(vectors, index.manifest.dim, seed=0)
        fake = Manifest(index.manifest.encoder, index.manifest.dim, "float32", root=index.manifest.root,
                        paths=[f"synthetic/{i}" for i in range(vectors)], scenes=[None] * vectors)
        big = ImageIndex(Path(index_folder), fake, vecs, index.encoder, backend="ivf")
        big._search = build(vecs, "ivf")
        result["million_build_s"] = round(time.perf_counter() - t0, 1)
        result["million_search"] = {"nlist": big._search.params.nlist, "nprobe": big._search.params.nprobe}
        runs.append(("million", big))
    for name, idx in runs:
        service = SearchService(idx)
        with BackgroundServer(create_app(service)) as url:
            _clients_elsewhere(url, clients, 4 * clients)  # warm-up: threads, caches, first-call paths
            alone = _clients_elsewhere(url, 1, max(20, requests // 4))
            stats = _clients_elsewhere(url, clients, requests)
        stats["one_client_p50_ms"] = alone["p50_ms"]
        stats["vectors"] = len(idx)
        stats["target_ratio"] = stats["p50_ms"] / result["targets_ms"][name]
        result[name] = stats
        say(format_bench_serve_line(name, stats, result["targets_ms"][name]))
    return result


def format_bench_serve_line(name: str, s: dict[str, Any], target: float) -> str:
    return (f"{name}: {s['vectors']:,} vectors, {s['clients']} clients, {s['requests']} text queries: p50 "
            f"{s['p50_ms']:.1f} ms (target {target:.0f} ms: {s['p50_ms'] / target:.2f} of it), p95 {s['p95_ms']:.1f} ms, "
            f"{s['queries_per_s']:.0f} queries/s, {s['errors']} errors; one client alone: p50 "
            f"{s['one_client_p50_ms']:.1f} ms")
