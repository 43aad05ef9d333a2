"""The FAISS index an image index stores: trained once, read back (memory-mapped), refused when stale."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from rsretrieval.cli import main
from rsretrieval.search import Encoder, ImageIndex, SearchIndexError
from rsretrieval.search import archive as archive_mod
from rsretrieval.search import vectors as vectors_mod
from rsretrieval.search.archive import ANN, ANN_META, Manifest, _write_index
from rsretrieval.search.vectors import exact_topk, recall_at_k, synthetic_vectors


@pytest.fixture
def big(tmp_path):
    """An index folder of 4,000 synthetic float16 vectors (no images: searched by vector)."""
    vecs = synthetic_vectors(4000, 32, clusters=40, seed=1).astype(np.float16)
    manifest = Manifest({"model": "fake", "weights": None, "adapter_sha256": None}, 32, "float16",
                        root=str(tmp_path), paths=[f"img_{i:05d}.png" for i in range(4000)], scenes=[None] * 4000)
    _write_index(tmp_path / "idx", manifest, vecs)
    return tmp_path / "idx"


def test_trained_once_then_read_back_without_training(big, monkeypatch):
    index = ImageIndex.load(big)
    built = index.build_ann("ivfpq", nlist=32, m=8)
    assert (big / ANN).is_file() and json.loads((big / ANN_META).read_text())["params"]["backend"] == "ivfpq"
    queries = np.asarray(index.embeddings[:50], dtype=np.float32)
    expected = built.search(queries, 10)

    monkeypatch.setattr(archive_mod, "build", lambda *a, **k: pytest.fail("a load must not retrain FAISS"))
    again = ImageIndex.load(big)
    search = again.searcher
    assert search.read_only and search.params == built.params  # memory-mapped, with the tuned nprobe
    scores, ids = search.search(queries, 10)
    assert np.array_equal(ids, expected[1]) and np.allclose(scores, expected[0])
    _, truth = exact_topk(again.embeddings, queries, 10)
    assert recall_at_k(ids, truth) >= 0.9  # re-ranked from the float16 embeddings on disk
    with pytest.raises(ValueError, match="read-only"):
        search.add(queries[:1])  # FAISS would abort the process: refused before it gets there


def test_auto_picks_by_size(big, monkeypatch):
    assert vectors_mod.choose_backend(1000, 512) == "exact"
    assert vectors_mod.choose_backend(1_000_000, 512) == "ivf"
    assert vectors_mod.choose_backend(10_000_000, 512) == "ivfpq"
    monkeypatch.setattr(archive_mod, "EXACT_LIMIT", 1000)  # 4,000 vectors count as large now
    with pytest.raises(SearchIndexError, match=r"no FAISS index \(ann.faiss\).*index ann"):
        ImageIndex.load(big).searcher  # noqa: B018
    assert ImageIndex.load(big, backend="exact").searcher.params.backend == "exact"  # asked for: no file needed


def test_stale_damaged_or_half_written_is_refused_by_name(big):
    ImageIndex.load(big).build_ann("ivf", nlist=16)
    good = (big / ANN).read_bytes()

    blob = bytearray(good)
    blob[len(blob) // 2] ^= 0xFF
    (big / ANN).write_bytes(bytes(blob))  # same size, other bytes
    with pytest.raises(SearchIndexError, match=r"ann.faiss is missing or damaged.*index ann"):
        ImageIndex.load(big).searcher  # noqa: B018
    (big / ANN).write_bytes(good)
    (big / ANN_META).write_text("{")
    with pytest.raises(SearchIndexError, match="ann.json is missing or damaged"):
        ImageIndex.load(big).searcher  # noqa: B018

    ImageIndex.load(big).build_ann("ivf", nlist=16)
    index = ImageIndex.load(big)
    _write_index(big, index.manifest, np.asarray(index.embeddings)[::-1].copy())  # other embeddings
    with pytest.raises(SearchIndexError, match=r"ann.faiss is stale.*embeddings_id"):
        ImageIndex.load(big).searcher  # noqa: B018
    assert main(["index", "ann", str(big), "--backend", "ivf"]) == 0  # rebuilt on request
    assert ImageIndex.load(big).searcher.params.backend == "ivf"


def test_added_images_join_the_stored_index(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "archive"
    root.mkdir()
    for k in range(80):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(root / f"img_{k:03d}.png")
    new = root / "new.png"
    encoder = Encoder("tiny", None, device="cpu")
    index = ImageIndex.build(root, tmp_path / "idx", encoder, ann="ivf", progress=False)
    assert index.searcher.params.backend == "ivf" and index.searcher.ntotal == 80
    Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(new)
    assert index.add([new]) == 1
    again = ImageIndex.load(tmp_path / "idx", encoder)  # the stored index names the new embeddings
    assert again.searcher.ntotal == 81
    assert again.search_image(new, k=1)[0].path == new
