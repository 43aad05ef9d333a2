import numpy as np
import pytest

from rsretrieval.search.vectors import bench_search, build, exact_topk, recall_at_k, synthetic_vectors


def brute(vectors, queries, k):
    scores = queries @ vectors.T
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, ids, 1), ids


def test_exact_topk_matches_brute_force_across_chunks():
    v = synthetic_vectors(1000, 16, clusters=20, seed=1)
    q = synthetic_vectors(7, 16, clusters=20, seed=2)
    s, i = exact_topk(v, q, 10, chunk=128)
    bs, bi = brute(v, q, 10)
    np.testing.assert_allclose(s, bs, rtol=1e-6)
    assert (i == bi).all()


def test_recall_at_k():
    truth = np.array([[1, 2, 3], [4, 5, 6]])
    found = np.array([[3, 2, 9], [4, 5, 6]])
    assert recall_at_k(found, truth) == pytest.approx(5 / 6)


def test_synthetic_vectors_are_unit_and_seeded():
    a = synthetic_vectors(500, 32, clusters=20, seed=3)
    assert np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    assert np.array_equal(a, synthetic_vectors(500, 32, clusters=20, seed=3))
    u = synthetic_vectors(500, 32, uniform=True, seed=3)
    # clustered vectors have near neighbours far closer than uniform ones do
    assert (a @ a.T - 2 * np.eye(500)).max(1).mean() > (u @ u.T - 2 * np.eye(500)).max(1).mean() + 0.2


def test_auto_picks_exact_for_small_archives():
    v = synthetic_vectors(300, 16)
    assert build(v).params.backend == "exact"
    with pytest.raises(ValueError, match="zero vectors"):
        build(np.zeros((0, 16), dtype=np.float32))


def test_ivf_reaches_target_recall_on_new_queries():
    v = synthetic_vectors(20_000, 32, clusters=200, seed=0)
    index = build(v, "ivf", target_recall=0.95, k=10)
    assert index.params.nlist > 1 and 1 <= index.params.nprobe <= index.params.nlist
    q = synthetic_vectors(200, 32, clusters=200, seed=0) + 0.01
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    _, truth = exact_topk(v, q, 10)
    assert recall_at_k(index.search(q, 10)[1], truth) >= 0.9
    before = index.ntotal
    index.add(synthetic_vectors(10, 32, seed=9))
    assert index.ntotal == before + 10


@pytest.mark.slow
def test_ivfpq_stores_fewer_bytes():
    v = synthetic_vectors(5_000, 32, clusters=50, seed=0)
    pq = build(v, "ivfpq", m=8)
    assert pq.memory_bytes() / 5_000 < 32 * 4 / 2
    s, i = pq.search(v[:3], 5)
    assert i.shape == (3, 5) and (i[:, 0] == np.arange(3)).all()  # re-ranked exactly: each finds itself


@pytest.mark.slow
def test_bench_search_small():
    r = bench_search(4_000, 32, 50, 10, exact_queries=10, pq_m=8, progress=False)
    for key in ("faiss_recall_at_k", "faiss_p50_ms", "exact_p50_ms", "ivfpq_bytes_per_vector", "faiss_build_s"):
        assert key in r and np.isfinite(r[key])
    assert 0 <= r["faiss_recall_at_k"] <= 1


def test_a_second_index_reuses_the_first_ones_cells():
    v = synthetic_vectors(8_000, 32, clusters=80, seed=0)
    ivf = build(v, "ivf", k=10)
    cells = ivf.centroids()
    assert cells.shape == (ivf.params.nlist, 32) and ivf.assignment.shape == (8_000,)
    assert ivf.memory_bytes() == 8_000 * (32 * 4 + 8) + ivf.params.nlist * 32 * 4  # codes, ids, centres
    q = v[:50] + 0.01
    _, truth = exact_topk(v, q, 10)
    pq = build(v, "ivfpq", m=8, k=10, tune_queries=q, tune_truth=truth, cells_of=ivf)
    assert pq.params.nlist == ivf.params.nlist
    np.testing.assert_array_equal(pq.centroids(), cells)  # k-means skipped: the same cells
    np.testing.assert_array_equal(pq.assignment, ivf.assignment)
    assert recall_at_k(pq.search(q, 10)[1], truth) > 0.5
    again = build(v, "ivf", k=10, cells_of=ivf)  # the same cells and assignment: the same index
    for nprobe in (1, 4):
        ivf.index.nprobe = again.index.nprobe = nprobe
        np.testing.assert_array_equal(again.search(q, 10)[1], ivf.search(q, 10)[1])
    with pytest.raises(ValueError, match="same 100 x 32 vectors"):
        build(v[:100], "ivf", cells_of=ivf)
    with pytest.raises(ValueError, match="no IVF cells"):
        build(v[:100]).centroids()
