"""Nearest-neighbour search over unit vectors: exact for small archives, FAISS for large ones.

All backends answer the same question -- the k vectors with the largest inner product (cosine,
since vectors are normalised) -- behind one interface, :class:`VectorSearch`:

- ``exact``: a matrix product over every vector. Exact by construction; its cost grows with the
  archive (``bench-search`` measures it).
- ``ivf``: FAISS IVF-Flat. k-means cuts the space into ``nlist`` cells; a query scans only the
  ``nprobe`` nearest cells. ``nprobe`` is tuned at build time on held-out queries until recall@k
  against exact search reaches a target.
- ``ivfpq``: IVF with product quantisation: each vector stored in ``m`` bytes instead of
  ``4 * dim``, for archives that do not fit in memory; approximate distances, then the top
  candidates are re-ranked exactly when the float vectors are at hand.

``auto`` picks exact below 50,000 vectors and IVF above: below that size exact search is both
fast enough (a few ms) and free of tuning. A build reads the archive in blocks (it may be float16
on disk, larger than memory) and assigns each vector its cell with one matrix product per block.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rsretrieval.errors import lazy_import

EXACT_LIMIT = 50_000
IVF_FLAT_BYTES = 2 * 2**30  # auto: IVF-Flat while its float32 lists fit in this, IVF-PQ above
_CHUNK = 262_144  # rows converted to float32 at a time
_SCORES = 2**26  # floats in one block of exact scores (256 MB)
_SELECT = 64  # queries whose top-k are selected at a time
_TUNE_QUERIES = 200  # bench_search's held-out queries for tuning nprobe
MAX_RERANK = 200  # IVF-PQ re-ranks at most this many candidates per result asked for
_ADD_CHUNK = 65_536  # rows encoded into FAISS at a time (PQ encoding holds a few copies of the block)


def _faiss():
    return lazy_import("faiss", "faiss-cpu")


@dataclass
class SearchParams:
    """How a :class:`VectorSearch` was built."""

    backend: str
    nlist: int = 0
    nprobe: int = 0
    m: int = 0  # PQ bytes per vector (ivfpq)
    rerank: int = 0  # candidates re-ranked exactly (ivfpq)


class VectorSearch:
    """Top-k inner-product search over ``vectors`` [n, d] (rows unit-norm; float32, or float16 on disk:
    a memory-mapped array is read in chunks, never copied whole)."""

    def __init__(self, vectors: np.ndarray, params: SearchParams, index: Any = None,
                 assignment: np.ndarray | None = None) -> None:
        self.vectors = vectors
        self.params = params
        self.index = index
        self.assignment = assignment  # each built vector's IVF cell (None for exact search)
        self.read_only = False  # a memory-mapped FAISS index (load_search): FAISS aborts on an add

    @property
    def ntotal(self) -> int:
        return int(self.vectors.shape[0]) if self.index is None else int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """(scores [q, k], ids [q, k]) for float32 queries [q, d]; ids of missing results are -1."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = min(k, self.ntotal)
        if self.index is None:
            return exact_topk(self.vectors, queries, k)
        if self.params.backend == "ivfpq" and self.params.rerank and self.vectors is not None:
            _, cand = self.index.search(queries, max(k, self.params.rerank))
            return _rerank(self.vectors, queries, cand, k)
        return self.index.search(queries, k)

    def add(self, vectors: np.ndarray) -> None:
        """Append vectors (no retraining: new vectors join the existing IVF cells)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.read_only:
            raise ValueError("this FAISS index is memory-mapped read-only: load it with mmap=False to add vectors")
        if self.index is not None:
            self.index.add(vectors)
            self.assignment = None  # the new vectors' cells are FAISS's business
        self.vectors = vectors if self.vectors is None else np.concatenate([self.vectors, vectors])

    def centroids(self) -> np.ndarray:
        """The IVF cells' centres [nlist, d] (to build another index over the same vectors without k-means)."""
        if self.index is None:
            raise ValueError(f"a {self.params.backend} search has no IVF cells")
        return self.index.quantizer.reconstruct_n(0, self.params.nlist)

    def memory_bytes(self) -> int:
        """Bytes the search structure holds: the float vectors (exact); each vector's code (float vector
        for ivf, ``m`` bytes for ivfpq) and id, and the cells' centres (and the PQ codebooks)."""
        if self.index is None:
            return int(self.vectors.nbytes)
        d = self.index.d
        codebooks = 256 * d * 4 if self.params.backend == "ivfpq" else 0  # m codebooks of 256 x d/m floats
        return int(self.index.ntotal * (self.index.code_size + 8) + self.params.nlist * d * 4 + codebooks)


def choose_backend(n: int, dim: int) -> str:
    """``auto``'s choice for ``n`` vectors of ``dim``: exact below :data:`EXACT_LIMIT`, IVF-Flat while its
    float32 copy stays under :data:`IVF_FLAT_BYTES` (2 GB: 1M x 512), IVF-PQ above."""
    return "exact" if n < EXACT_LIMIT else "ivf" if n * dim * 4 <= IVF_FLAT_BYTES else "ivfpq"


def save_search(search: VectorSearch, path: str | Path) -> None:
    """Write a FAISS search's index to ``path`` (atomically: a crash leaves the old file or none)."""
    if search.index is None:
        raise ValueError("exact search has no FAISS index to write")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    _faiss().write_index(search.index, str(tmp))
    os.replace(tmp, path)


def load_search(path: str | Path, params: SearchParams, vectors: np.ndarray, *, mmap: bool = True) -> VectorSearch:
    """A search over ``vectors`` from the FAISS index :func:`save_search` wrote, with ``params``' nprobe.

    ``mmap``: the inverted lists stay on disk, paged in as queries touch them (read-only: to add
    vectors, load with ``mmap=False``). Raises RuntimeError (FAISS's) for a file FAISS cannot read."""
    faiss = _faiss()
    index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0)
    index.nprobe = params.nprobe
    search = VectorSearch(vectors, params, index)
    search.read_only = mmap
    return search


def exact_topk(vectors: np.ndarray, queries: np.ndarray, k: int, chunk: int = _CHUNK):
    """Exact top-k by inner product, in chunks of the archive (and of the queries when there are many)
    so that memory stays bounded: a score block holds at most ``_SCORES`` floats."""
    best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_i = np.full((len(queries), k), -1, dtype=np.int64)
    chunk = max(k, min(chunk, _SCORES // max(1, len(queries))))
    for start, block in _blocks(vectors, chunk):
        scores = queries @ block.T  # [q, chunk]
        kk = min(k, scores.shape[1])
        for q in range(0, len(queries), _SELECT):  # argpartition's int64 output is twice the scores' size
            rows = slice(q, q + _SELECT)
            part = np.argpartition(scores[rows], scores.shape[1] - kk, axis=1)[:, -kk:]
            cand_s = np.concatenate([best_s[rows], np.take_along_axis(scores[rows], part, 1)], axis=1)
            cand_i = np.concatenate([best_i[rows], part + start], axis=1)
            order = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
            best_s[rows], best_i[rows] = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)
    return best_s, best_i


def _release(vectors: np.ndarray) -> None:
    """Hand the pages of a read-only memory-mapped array back to the page cache: they stay cached
    but leave this process's resident set, so a pass over an archive larger than memory does not
    grow it (a private or writable mapping is left alone: its pages may hold changes)."""
    mapping = getattr(vectors, "_mmap", None)  # numpy.memmap's mmap.mmap
    if mapping is not None and getattr(vectors, "mode", None) == "r" and hasattr(mmap, "MADV_DONTNEED"):
        mapping.madvise(mmap.MADV_DONTNEED)


def _blocks(vectors: np.ndarray, chunk: int = _CHUNK):
    """(start, float32 block) over ``vectors`` in chunks of rows, releasing a memory map's pages after each."""
    for start in range(0, len(vectors), chunk):
        yield start, np.ascontiguousarray(vectors[start:start + chunk], dtype=np.float32)
        _release(vectors)


def _rows(vectors: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Rows ``ids`` as float32, read in id order (sequential reads of an array on disk)."""
    order = np.argsort(ids)
    out = np.empty((len(ids), vectors.shape[1]), dtype=np.float32)
    read = _read_rows(vectors, ids[order])
    out[order] = read if read is not None else vectors[ids[order]]
    return out


def _read_rows(vectors: np.ndarray, ids: np.ndarray) -> np.ndarray | None:
    """Rows of a memory-mapped ``.npy`` file read with ``pread`` instead of through the map: a page
    fault maps a whole cached folio (up to megabytes) into the process for one 1 KB row, so random
    rows read through the map would fill the resident set with the archive. None if not such a file
    (or a copy-on-write map, whose changes the file does not hold)."""
    base = getattr(vectors, "base", None)
    if (not isinstance(vectors, np.memmap) or not isinstance(base, mmap.mmap) or not vectors.flags.c_contiguous
            or vectors.mode == "c"):
        return None
    row = vectors.shape[1] * vectors.itemsize
    out = np.empty((len(ids), vectors.shape[1]), dtype=vectors.dtype)
    view = memoryview(out).cast("B")
    fd = os.open(vectors.filename, os.O_RDONLY)
    try:
        for j, i in enumerate(ids.tolist()):
            if os.preadv(fd, [view[j * row:(j + 1) * row]], vectors.offset + i * row) != row:
                raise OSError(f"{vectors.filename}: row {i} is cut short (the file is truncated)")
    finally:
        os.close(fd)
    return out


def _rerank(vectors: np.ndarray, queries: np.ndarray, cand: np.ndarray, k: int):
    picked = _rows(vectors, np.clip(cand, 0, None).ravel()).reshape(*cand.shape, -1)
    scores = np.einsum("qd,qcd->qc", queries, picked)
    scores[cand < 0] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(cand, order, 1)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Share of the true top-k ids that the approximate top-k found (averaged over queries)."""
    k = truth.shape[1]
    hits = sum(len(set(f[:k].tolist()) & set(t.tolist())) for f, t in zip(found, truth))
    return hits / truth.size


def check_pq_split(dim: int, m: int) -> None:
    """IVF-PQ cuts each vector into ``m`` sub-vectors of one byte each: ``dim`` must divide by ``m``."""
    if dim % m:
        raise ValueError(f"IVF-PQ needs dim ({dim}) divisible by m ({m}): pick m from "
                         f"{[k for k in (8, 16, 32, 48, 64, 96) if dim % k == 0]}")


def build(
    vectors: np.ndarray,
    backend: str = "auto",
    *,
    nlist: int | None = None,
    target_recall: float = 0.95,
    k: int = 10,
    m: int = 64,
    tune_queries: np.ndarray | None = None,
    tune_truth: np.ndarray | None = None,
    cells_of: VectorSearch | None = None,
    seed: int = 0,
) -> VectorSearch:
    """Build a search structure over unit vectors.

    Args:
        vectors: [n, d] float32, rows L2-normalised.
        backend: ``auto``, ``exact``, ``ivf`` or ``ivfpq``.
        nlist: IVF cells (default about 2·sqrt(n): 2,000 at a million vectors, so a cell holds ~500
            and a query scans a few thousand vectors; at most n/39 so k-means has data).
        target_recall: recall@k against exact search that ``nprobe`` is tuned to reach.
        k: the k of that recall.
        m: bytes per vector for ``ivfpq`` (d must be divisible by m).
        tune_queries: queries for tuning (default: 200 archive vectors with a little noise, a proxy
            for real queries, which land near the data).
        tune_truth: the exact top-k ids of ``tune_queries`` [q, k], when already known.
        cells_of: another IVF build over the same vectors whose cells are reused: their centres and
            each vector's cell, so neither k-means nor the assignment runs again (IVF-PQ still
            trains its codebooks).
        seed: k-means and sampling seed.
    """
    n, d = vectors.shape
    if n == 0:
        raise ValueError("cannot build a search index over zero vectors")
    if backend == "auto":
        backend = choose_backend(n, d)
    if backend == "exact":
        return VectorSearch(vectors, SearchParams("exact"))
    if backend not in ("ivf", "ivfpq"):
        raise ValueError(f"backend must be auto, exact, ivf or ivfpq, not {backend!r}")
    faiss = _faiss()
    quantizer = faiss.IndexFlatIP(d)
    assignment = None
    if cells_of is not None:
        if cells_of.assignment is None or len(cells_of.assignment) != n or cells_of.vectors.shape[1] != d:
            raise ValueError(f"cells_of must be an IVF build over the same {n:,} x {d} vectors "
                             f"(a {cells_of.params.backend} search over {cells_of.ntotal:,})")
        if nlist and nlist != cells_of.params.nlist:
            raise ValueError(f"nlist={nlist} but cells_of has {cells_of.params.nlist} cells")
        nlist, assignment = cells_of.params.nlist, cells_of.assignment
        quantizer.add(cells_of.centroids())  # a trained quantizer with nlist entries: FAISS skips k-means
    nlist = nlist or max(1, min(int(2 * math.sqrt(n)), n // 39))
    if backend == "ivf":
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    else:
        check_pq_split(d, m)
        index = faiss.IndexIVFPQ(quantizer, d, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    # 40 points a cell train k-means well (FAISS warns below 39); more only slows the build
    index.cp.seed = seed
    index.train(_rows(vectors, rng.choice(n, size=min(n, 40 * nlist), replace=False)))
    given = assignment is not None
    assignment = assignment if given else np.empty(n, dtype=np.int64)
    centres = None if given else quantizer.reconstruct_n(0, nlist)
    for start, block in _blocks(vectors, _ADD_CHUNK):
        cells = assignment[start:start + len(block)]
        if not given:  # numpy's BLAS: several times faster here than FAISS's flat scan, and as exact
            cells[:] = _nearest(block, centres)
        cells = np.ascontiguousarray(cells)
        index.add_core(len(block), faiss.swig_ptr(block), None, faiss.swig_ptr(cells))  # add() with cells given
    params = SearchParams(backend, nlist=nlist, m=m if backend == "ivfpq" else 0,
                          rerank=20 * k if backend == "ivfpq" else 0)
    search = VectorSearch(vectors, params, index, assignment)
    if tune_queries is None:
        picks = _rows(vectors, rng.choice(n, size=min(n, 200), replace=False))
        tune_queries = _normalise(picks + rng.normal(0, 0.05, picks.shape).astype(np.float32))
    if tune_truth is None:
        _, tune_truth = exact_topk(vectors, tune_queries, k)
    recall = tune_nprobe(search, tune_queries, k=k, target=target_recall, truth=tune_truth)
    # PQ's approximate distances miss true neighbours past the re-ranked candidates: look deeper
    while backend == "ivfpq" and recall < target_recall and params.rerank < MAX_RERANK * k:
        params.rerank = min(2 * params.rerank, MAX_RERANK * k)
        recall = tune_nprobe(search, tune_queries, k=k, target=target_recall, truth=tune_truth)
    return search


def _nearest(block: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Each row's centre of largest inner product, with score blocks of at most ``_SCORES`` floats."""
    step = max(1, _SCORES // len(centres))
    return np.concatenate([np.argmax(block[i:i + step] @ centres.T, axis=1) for i in range(0, len(block), step)])


def tune_nprobe(search: VectorSearch, queries: np.ndarray, *, k: int = 10, target: float = 0.95,
                truth: np.ndarray | None = None) -> float:
    """Smallest power-of-two ``nprobe`` whose recall@k on ``queries`` reaches ``target``; returns the recall.

    Stops early when doubling ``nprobe`` gains less than half a point of recall: a compressed index
    (IVF-PQ) plateaus below the target, and scanning more cells would only cost time. ``truth``: the
    queries' exact top-k ids, when already known (else computed here).
    """
    if truth is None:
        _, truth = exact_topk(search.vectors, queries, k)
    nprobe, recall, previous = 1, 0.0, -1.0
    while True:
        search.index.nprobe = nprobe
        recall = recall_at_k(search.search(queries, k)[1], truth)
        if recall >= target or nprobe >= search.params.nlist or recall - previous < 0.005:
            break
        previous, nprobe = recall, min(2 * nprobe, search.params.nlist)
    if recall - previous < 0.005 and previous >= 0 and nprobe > 1:
        nprobe //= 2  # the last doubling bought nothing
        search.index.nprobe = nprobe
    search.params.nprobe = nprobe
    return recall


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _synthetic_blocks(n: int, dim: int, clusters: int, spread: float, uniform: bool, seed: int):
    rng = np.random.default_rng(seed)
    centres = _normalise(rng.standard_normal((clusters, dim)).astype(np.float32))
    step = 100_000
    for s in range(0, n, step):
        size = min(step, n - s)
        x = rng.standard_normal((size, dim), dtype=np.float32)
        if not uniform:
            x = centres[rng.integers(0, clusters, size)] + spread / math.sqrt(dim) * x
        yield s, _normalise(x)


def synthetic_vectors(n: int, dim: int, *, clusters: int = 1000, spread: float = 0.5, uniform: bool = False,
                      seed: int = 0) -> np.ndarray:
    """Seeded unit vectors: a mixture of ``clusters`` Gaussian clusters (a stand-in for real embeddings,
    which cluster by scene and content), or uniform on the sphere (``uniform``: the structure-free
    worst case for any index)."""
    out = np.empty((n, dim), dtype=np.float32)
    for s, block in _synthetic_blocks(n, dim, clusters, spread, uniform, seed):
        out[s:s + len(block)] = block
    return out


def write_synthetic_vectors(path: str | Path, n: int, dim: int, *, uniform: bool = False, seed: int = 0,
                            dtype: str = "float16") -> np.ndarray:
    """:func:`synthetic_vectors` written block by block to an ``.npy`` file and returned memory-mapped
    read-only: an archive larger than memory, as :class:`~rsretrieval.search.archive.ImageIndex` keeps one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.lib.format.write_array_header_2_0(f, {"descr": np.dtype(dtype).str, "fortran_order": False,
                                                 "shape": (n, dim)})
        for _, block in _synthetic_blocks(n, dim, 1000, 0.5, uniform, seed):
            f.write(block.astype(dtype).tobytes())
    os.replace(tmp, path)
    return np.load(path, mmap_mode="r")


def _latencies_ms(fn, queries: np.ndarray, k: int) -> np.ndarray:
    times = []
    for q in queries:
        t = time.perf_counter()
        fn(q[None, :], k)
        times.append(1000 * (time.perf_counter() - t))
    return np.array(times)


def bench_search(n: int = 1_000_000, dim: int = 512, queries: int = 1000, k: int = 10, *, uniform: bool = False,
                 exact_queries: int = 50, target_recall: float = 0.95, pq_m: int = 64, seed: int = 0,
                 backends: tuple[str, ...] = ("ivf", "ivfpq"), store: str | Path | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """Build exact search and the FAISS ``backends`` over ``n`` synthetic vectors and measure them.

    Single-query latency is timed one query at a time (the interactive case). Exact latency is timed
    on ``exact_queries`` queries (it is slow and steady); the recall of each FAISS index is measured
    against exact top-k on all ``queries``, and ``nprobe`` is tuned on 200 others. IVF-PQ is built
    on IVF's cells when both are asked for (``ivfpq_build_s`` then leaves out the k-means and
    assignment that ``faiss_build_s`` counts).

    ``store``: a folder that gets the vectors as a float16 ``.npy`` file (written block by block and
    memory-mapped, as an index keeps its embeddings) and each FAISS index as a file, which is read
    back memory-mapped and measured as ``serve`` would use it; the archive is never in memory as
    float32. ``peak_rss_bytes`` is the whole run's peak resident set (page cache is not in it).
    """
    from rsretrieval.bench import peak_rss_bytes

    def say(msg: str) -> None:
        if progress:
            print(msg, flush=True)

    for name, value in (("n", n), ("dim", dim), ("queries", queries), ("k", k), ("pq_m", pq_m),
                        ("exact_queries", exact_queries)):
        if value < 1:
            raise ValueError(f"bench_search needs {name} >= 1, got {value}")
    if k > n:
        raise ValueError(f"k={k} is more than the {n} vectors searched")
    unknown = [b for b in backends if b not in ("ivf", "ivfpq")]
    if unknown or not backends:
        raise ValueError(f"backends must be among ivf, ivfpq, not {', '.join(unknown) or 'none'}")
    if "ivfpq" in backends:
        check_pq_split(dim, pq_m)  # before anything is built
    if "ivf" in backends and store is not None and n * dim * 4 > _memory_bytes() // 2:
        raise ValueError(f"IVF-Flat keeps every vector as float32 in memory: {n:,} x {dim} is "
                         f"{n * dim * 4 / 2**30:.1f} GiB, "
                         "more than half of this machine's; measure IVF-PQ alone (bench-search --index ivfpq)")
    t0 = time.perf_counter()
    folder = Path(store) if store is not None else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        vectors = write_synthetic_vectors(folder / "vectors.npy", n, dim, uniform=uniform, seed=seed)
    else:
        vectors = synthetic_vectors(n, dim, uniform=uniform, seed=seed)
    # measured queries, then 200 held-out ones that tune nprobe: near the data, as real queries are
    qs = synthetic_vectors(queries + _TUNE_QUERIES, dim, uniform=uniform, seed=seed)  # same cluster centres
    rng = np.random.default_rng(seed + 1)
    qs = _normalise(qs + rng.normal(0, 0.5 / math.sqrt(dim), qs.shape).astype(np.float32))
    say(f"data: {n:,} x {dim} {'uniform' if uniform else 'clustered'}"
        f"{' float16 on disk' if folder else ''} in {time.perf_counter() - t0:.1f} s")

    t = time.perf_counter()
    _, truth_all = exact_topk(vectors, qs, k)  # one pass over the archive for both query sets
    qs, tune, truth, tune_truth = qs[:queries], qs[queries:], truth_all[:queries], truth_all[queries:]
    say(f"exact top-{k} of {queries} + {_TUNE_QUERIES} queries in {time.perf_counter() - t:.1f} s")
    exact_lat = _latencies_ms(lambda q, kk: exact_topk(vectors, q, kk), qs[:exact_queries], k)

    result: dict[str, Any] = {"n": n, "dim": dim, "queries": queries, "k": k, "uniform": uniform,
                              "exact_p50_ms": float(np.median(exact_lat)),
                              "exact_p95_ms": float(np.percentile(exact_lat, 95)),
                              "exact_memory_bytes": n * dim * 4, "exact_bytes_per_vector": 4 * dim,
                              "vectors_file_bytes": (folder / "vectors.npy").stat().st_size if folder else 0}
    ivf = None
    for backend in backends:
        t = time.perf_counter()
        # IVF-PQ reuses IVF's cells (k-means and assignment of the same vectors): its build time is its own work
        search = build(vectors, backend, k=k, target_recall=target_recall, m=pq_m, tune_queries=tune,
                       tune_truth=tune_truth, cells_of=ivf, seed=seed)
        build_s = time.perf_counter() - t
        prefix = "faiss" if backend == "ivf" else "ivfpq"
        mem = search.memory_bytes()
        # IVF-PQ is built on IVF's cells: the inverted lists (a copy of the vectors) go, the cells stay
        keep_cells = backend == "ivf" and "ivfpq" in backends
        if folder is not None:  # measured as served: the file read back, its lists memory-mapped
            save_search(search, folder / f"{backend}.faiss")
            result[f"{prefix}_file_bytes"] = (folder / f"{backend}.faiss").stat().st_size
            params = search.params
            if keep_cells:  # before the file is read back: both copies of the lists never coexist
                search.index.reset()
                ivf = search
            del search
            t = time.perf_counter()
            search = load_search(folder / f"{backend}.faiss", params, vectors)
            result[f"{prefix}_load_s"] = time.perf_counter() - t
        found = search.search(qs, k)[1]
        lat = _latencies_ms(search.search, qs, k)
        result.update({
            f"{prefix}_build_s": build_s, f"{prefix}_params": asdict(search.params),
            f"{prefix}_recall_at_k": recall_at_k(found, truth),
            f"{prefix}_p50_ms": float(np.median(lat)), f"{prefix}_p95_ms": float(np.percentile(lat, 95)),
            f"{prefix}_memory_bytes": mem, f"{prefix}_bytes_per_vector": mem / n,
        })
        say(f"{backend}: build {build_s:.1f} s, recall@{k} {result[f'{prefix}_recall_at_k']:.3f}, "
            f"p50 {result[f'{prefix}_p50_ms']:.2f} ms, {mem / n:.0f} bytes/vector")
        if keep_cells and folder is None:
            search.index.reset()
            ivf = search
        del search
    fastest = "faiss" if "ivf" in backends else "ivfpq"
    result["speedup_p50"] = result["exact_p50_ms"] / result[f"{fastest}_p50_ms"]
    result["peak_rss_bytes"] = peak_rss_bytes()
    return result


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 2**63


def format_bench(result: dict[str, Any]) -> str:
    """A plain-text table of :func:`bench_search`'s result, and its peak memory and files."""
    rows = [("exact", result["exact_p50_ms"], result["exact_p95_ms"], 1.0, result["exact_bytes_per_vector"], 0.0)]
    for prefix, label in (("faiss", "faiss ivf"), ("ivfpq", "faiss ivf-pq")):
        if f"{prefix}_p50_ms" in result:
            rows.append((label, result[f"{prefix}_p50_ms"], result[f"{prefix}_p95_ms"],
                         result[f"{prefix}_recall_at_k"], result[f"{prefix}_bytes_per_vector"],
                         result[f"{prefix}_build_s"]))
    head = f"{'index':14s} {'p50 ms':>8s} {'p95 ms':>8s} {'recall@' + str(result['k']):>10s} {'bytes/vec':>10s} {'build s':>8s}"
    lines = [f"{result['n']:,} x {result['dim']} ({'uniform' if result['uniform'] else 'clustered'})", head]
    lines += [f"{r[0]:14s} {r[1]:8.2f} {r[2]:8.2f} {r[3]:10.3f} {r[4]:10.0f} {r[5]:8.1f}" for r in rows]
    files = [f"{name} {result[key] / 2**30:.2f} GiB" for name, key in
             (("vectors (float16)", "vectors_file_bytes"), ("ivf.faiss", "faiss_file_bytes"),
              ("ivfpq.faiss", "ivfpq_file_bytes")) if result.get(key)]
    if files:
        lines.append("files: " + ", ".join(files))
    if "peak_rss_bytes" in result:
        lines.append(f"peak RSS of the run: {result['peak_rss_bytes'] / 2**30:.2f} GiB")
    return "\n".join(lines)


def memory_per_million(dim: int, pq_m: int = 64, nlist: int = 2000) -> list[dict[str, Any]]:
    """What a million ``dim``-dimensional vectors cost each way of serving them, in bytes: ``resident``
    (what must stay in memory for queries to be fast) and ``disk`` (the index folder: the float16
    embeddings that every index keeps, plus the FAISS file). From the formats' sizes: a FAISS list
    entry is its code and an 8-byte id; the cells' centres are ``nlist`` float32 vectors."""
    million, f16, centres = 1_000_000, 2 * dim, nlist * dim * 4
    ivf, pq = million * (4 * dim + 8) + centres, million * (pq_m + 8) + centres + 256 * dim * 4
    return [
        {"layout": "exact, float32 in memory", "resident": million * 4 * dim, "disk": million * f16},
        {"layout": "exact, float16 memory-mapped", "resident": million * f16, "disk": million * f16,
         "note": "resident as page cache; read whole for every query"},
        {"layout": "IVF-Flat", "resident": ivf, "disk": ivf + million * f16},
        {"layout": f"IVF-PQ ({pq_m} B/vector), re-ranked from float16 on disk", "resident": pq,
         "disk": pq + million * f16, "note": "the re-ranked rows come from the page cache"},
    ]


def format_memory(rows: list[dict[str, Any]]) -> str:
    """:func:`memory_per_million`'s rows as a table in GiB."""
    width = max(len(r["layout"]) for r in rows)
    lines = [f"{'per million vectors':{width}s} {'resident GiB':>12s} {'disk GiB':>9s}"]
    lines += [f"{r['layout']:{width}s} {r['resident'] / 2**30:12.3f} {r['disk'] / 2**30:9.3f}"
              + (f"  ({r['note']})" if r.get("note") else "") for r in rows]
    return "\n".join(lines)


MEASURED = Path(__file__).with_name("measured")


def measured_bench(name: str = "bench-search-10m-ivfpq") -> dict[str, Any] | None:
    """A ``bench-search --json`` result this repository measured and keeps (``search/measured/``; its
    ``measured_with`` says the command and machine); None when the file is not there."""
    path = MEASURED / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def dumps(result: dict[str, Any]) -> str:
    return json.dumps(result, indent=2)
