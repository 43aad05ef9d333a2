"""Search: exact and FAISS vector search (:mod:`.vectors`) and an index over an image archive (:mod:`.archive`)."""

from rsretrieval.errors import SearchIndexError
from rsretrieval.search.archive import Encoder, Hit, ImageIndex, Manifest, find_images
from rsretrieval.search.vectors import SearchParams, VectorSearch, bench_search, build, exact_topk, format_bench

__all__ = [
    "Encoder",
    "Hit",
    "ImageIndex",
    "Manifest",
    "SearchIndexError",
    "SearchParams",
    "VectorSearch",
    "bench_search",
    "build",
    "exact_topk",
    "find_images",
    "format_bench",
]
