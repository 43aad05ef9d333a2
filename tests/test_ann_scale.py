"""Search over archives larger than memory: vectors written and read in blocks, pages released,
rows read without mapping the file, IVF-PQ re-ranking deepened until its recall."""

import json
import resource

import numpy as np
import pytest

import rsretrieval.search.vectors as vectors
from rsretrieval.cli import main
from rsretrieval.search.vectors import (bench_search, build, exact_topk, format_memory, load_search,
                                        memory_per_million, recall_at_k, save_search, synthetic_vectors,
                                        write_synthetic_vectors)


def test_written_vectors_are_the_generated_ones_in_float16_memory_mapped(tmp_path):
    on_disk = write_synthetic_vectors(tmp_path / "v.npy", 250_001, 8, seed=4)  # more than one generator block
    assert isinstance(on_disk, np.memmap) and on_disk.mode == "r" and on_disk.dtype == np.float16
    np.testing.assert_allclose(on_disk, synthetic_vectors(250_001, 8, seed=4), atol=1e-3)
    assert not list(tmp_path.glob(".*.tmp"))


def test_exact_search_over_a_memory_map_releases_its_pages_and_stays_exact(tmp_path):
    on_disk = write_synthetic_vectors(tmp_path / "v.npy", 200_000, 64, seed=1)  # 25 MB
    q = synthetic_vectors(300, 64, seed=2)
    # many queries: the score blocks are cut in rows of the archive and the selection in queries
    s, i = exact_topk(on_disk, q, 10, chunk=30_000)
    full = q @ np.asarray(on_disk, dtype=np.float32).T
    ref = np.argsort(-full, axis=1, kind="stable")[:, :10]
    np.testing.assert_allclose(s, np.take_along_axis(full, ref, 1), rtol=1e-5)
    assert (np.sort(i, 1) == np.sort(ref, 1)).mean() > 0.999  # ties in float16 may swap places

    del full
    before = _resident_file_kb()
    exact_topk(on_disk, q[:1], 10, chunk=20_000)
    assert _resident_file_kb() - before < 5_000  # a 25 MB file read whole, its pages handed back


def test_cells_are_assigned_as_faiss_would_and_survive_a_round_trip(tmp_path):
    v = synthetic_vectors(20_000, 32, clusters=100, seed=0)
    search = build(v, "ivfpq", m=8, k=10)
    _, faiss_cells = search.index.quantizer.search(v, 1)
    assert (search.assignment == faiss_cells[:, 0]).mean() > 0.999  # numpy's product, FAISS's choice
    q = synthetic_vectors(100, 32, clusters=100, seed=0) + 0.01
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    _, truth = exact_topk(v, q, 10)
    found = search.search(q, 10)[1]
    assert recall_at_k(found, truth) >= 0.9
    save_search(search, tmp_path / "pq.faiss")
    back = load_search(tmp_path / "pq.faiss", search.params, v)
    assert (back.search(q, 10)[1] == found).all()


def test_ivfpq_re_ranks_deeper_until_the_target_recall(monkeypatch):
    v = synthetic_vectors(20_000, 32, clusters=20, seed=0)  # dense clusters: 4-byte codes confuse neighbours
    search = build(v, "ivfpq", m=4, k=10, target_recall=0.95)
    assert search.params.rerank > 20 * 10
    assert search.params.rerank <= vectors.MAX_RERANK * 10


def test_bench_search_on_disk_measures_the_files_it_serves(tmp_path):
    r = bench_search(6_000, 32, 40, 10, exact_queries=3, pq_m=8, backends=("ivfpq",), store=tmp_path,
                     progress=False)
    assert (tmp_path / "vectors.npy").stat().st_size == r["vectors_file_bytes"] > 6_000 * 32 * 2
    assert (tmp_path / "ivfpq.faiss").stat().st_size == r["ivfpq_file_bytes"]
    assert "faiss_p50_ms" not in r and r["ivfpq_recall_at_k"] >= 0.9 and r["ivfpq_load_s"] >= 0
    assert r["peak_rss_bytes"] == pytest.approx(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                                                rel=0.05)
    assert "peak RSS of the run" in vectors.format_bench(r) and "ivfpq.faiss" in vectors.format_bench(r)


def test_ivf_flat_beyond_memory_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(vectors, "_memory_bytes", lambda: 1_000_000)
    with pytest.raises(ValueError, match="IVF-Flat keeps every vector as float32.*ivfpq"):
        bench_search(10_000, 32, 10, 10, pq_m=8, store=tmp_path, progress=False)
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="backends must be among ivf, ivfpq, not hnsw"):
        bench_search(10_000, 32, 10, 10, backends=("hnsw",), progress=False)


def test_bench_search_command_line(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["bench-search", "--vectors", "3000", "--dim", "16", "--queries", "20", "--pq-m", "4",
                 "--index", "ivfpq", "--store", str(tmp_path / "s"), "--exact-queries", "2",
                 "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["measured_with"]["command"].startswith("python -m rsretrieval bench-search")
    assert r["measured_with"]["cpus"] >= 1
    assert main(["bench-search", "--vectors", "3000", "--index", "ivf,annoy"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "annoy" in err[0]


def test_memory_per_million_orders_the_layouts():
    in_memory, mapped, ivf, pq = memory_per_million(512, pq_m=64)
    assert in_memory["resident"] == 4 * 512 * 10**6 and mapped["resident"] == 2 * 512 * 10**6
    assert pq["resident"] < in_memory["resident"] / 20  # about 72 bytes a vector, not 2,048
    assert ivf["resident"] > in_memory["resident"]  # the codes are the vectors, plus ids and centres
    assert all(r["disk"] >= 2 * 512 * 10**6 for r in (in_memory, mapped, ivf, pq))  # float16 embeddings kept
    assert "resident GiB" in format_memory(memory_per_million(512))


def test_random_rows_of_a_file_are_read_without_mapping_it(tmp_path):
    on_disk = write_synthetic_vectors(tmp_path / "v.npy", 50_000, 64, seed=5)
    ids = np.random.default_rng(0).choice(50_000, 300)
    expected = np.asarray(on_disk, dtype=np.float32)[ids]
    vectors._release(on_disk)
    assert vectors._read_rows(on_disk[:10], ids[:3]) is None  # a view: read through the map
    assert vectors._read_rows(np.load(tmp_path / "v.npy", mmap_mode="c"), ids[:3]) is None  # changes not in the file
    before = _resident_file_kb()
    np.testing.assert_array_equal(vectors._rows(on_disk, ids), expected)
    assert _resident_file_kb() - before < 1_000  # not the 6 MB file's pages


def _resident_file_kb():
    status = open("/proc/self/status").read()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("RssFile:")))
