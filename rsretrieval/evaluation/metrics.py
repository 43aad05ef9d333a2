"""Retrieval metrics for text-image retrieval with several captions per image (``docs/protocol.md``).

i2t: an image's rank is the best rank among its ground-truth captions, R@K over images; t2i: a
caption's rank is its one image's rank, R@K over captions; mR is the mean of the six recalls and
rsum their sum. The ground truth is an explicit caption -> image index (``text_to_image``), never a
position rule.

**Ties** count optimistically: a rank is the number of candidates scoring *strictly* higher, so a
duplicated caption (RSICD has ~24k unique captions out of 54k) cannot push its image down. A
collapsed model that scores every pair alike would then look perfect, so :func:`retrieval_ranks`
warns when many t2i queries tie with another image. Everything is vectorised and chunked: the
temporaries of a 5,000 x 25,000 matrix stay around 16 MB.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch

# The six recalls in the order papers print them; mR and rsum are computed from these.
RECALL_KEYS: tuple[str, ...] = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")
METRIC_KEYS: tuple[str, ...] = RECALL_KEYS + ("mr", "rsum")

# Accepted forms of a similarity matrix and of a 1-D integer array (caption->image index, ranks).
ScoresLike = torch.Tensor | np.ndarray
IndexLike = Sequence[int] | np.ndarray | torch.Tensor

# Elements of the similarity matrix compared per chunk: a bool temporary of 16 MB.
_CHUNK_ELEMENTS = 2**24
# Share of t2i queries tied with another image above which the ranks are suspicious.
_TIE_WARN_FRACTION = 0.1


def _as_similarity(similarity: ScoresLike) -> torch.Tensor:
    sim = torch.as_tensor(similarity)  # zero-copy for numpy input
    if sim.ndim != 2:
        raise ValueError(f"similarity must be 2-D [n_images, n_texts], got shape {tuple(sim.shape)}")
    if sim.shape[0] == 0 or sim.shape[1] == 0:
        raise ValueError(f"similarity has an empty dimension: shape {tuple(sim.shape)}")
    if sim.dtype == torch.bool or sim.is_complex():
        raise ValueError(f"similarity must hold real scores, got dtype {sim.dtype}")
    return sim


def _as_index(text_to_image: IndexLike, n_images: int, n_texts: int) -> torch.Tensor:
    idx = torch.as_tensor(np.asarray(text_to_image) if not torch.is_tensor(text_to_image) else text_to_image)
    if idx.ndim != 1 or idx.numel() != n_texts:
        raise ValueError(
            f"text_to_image must give one image index per caption: expected {n_texts} entries "
            f"(the similarity's columns), got shape {tuple(idx.shape)}"
        )
    if idx.is_floating_point() or idx.dtype == torch.bool:
        raise ValueError(f"text_to_image must hold integer image indices, got dtype {idx.dtype}")
    idx = idx.to(torch.int64)
    bad = ((idx < 0) | (idx >= n_images)).nonzero().flatten()
    if bad.numel():
        j = int(bad[0])
        raise ValueError(
            f"caption {j} points to image {int(idx[j])}, outside the {n_images} images "
            "(the similarity's rows)"
        )
    return idx


def _chunk(n_queries: int, n_candidates: int, chunk_size: int | None) -> int:
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        return chunk_size
    return max(1, _CHUNK_ELEMENTS // n_candidates)


def retrieval_ranks(
    similarity: ScoresLike,
    text_to_image: IndexLike,
    *,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """0-based best ranks of every image query and every caption query.

    A rank is the number of candidates scoring *strictly higher* than the ground truth
    (optimistic ties, see the module docstring). For an image that is the number of captions
    scoring higher than its best-scoring own caption, which equals the best rank over its
    captions.

    Args:
        similarity: ``[n_images, n_texts]`` scores (torch tensor on any device, or numpy array).
        text_to_image: for each caption (column), the index of its image (row). Any order and
            any number of captions per image, but at least one.
        chunk_size: queries compared per chunk; by default as many as fit in ~16M elements.

    Returns:
        ``(i2t_ranks, t2i_ranks)``: int64 CPU tensors of shape ``[n_images]`` and ``[n_texts]``.

    Raises:
        ValueError: on bad shapes or indices, NaN scores, or an image without any caption (its
            i2t rank is undefined: there is no ground-truth caption to rank).
    """
    sim = _as_similarity(similarity)
    n_images, n_texts = sim.shape
    idx = _as_index(text_to_image, n_images, n_texts).to(sim.device)

    per_image = torch.bincount(idx, minlength=n_images)
    empty = (per_image == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"image {empty[0]} has no caption (images without captions: {empty[:10]}"
            f"{' ...' if len(empty) > 10 else ''}), so its image->text rank is undefined. "
            "Drop such images (CaptionDataset.subset) before evaluating."
        )

    cols = torch.arange(n_texts, device=sim.device)
    gt_scores = sim[idx, cols]  # [n_texts]: each caption's score with its own image
    # Best own-caption score per image; include_self=False so the empty buffer is never read.
    best_own = gt_scores.new_empty(n_images).scatter_reduce_(0, idx, gt_scores, "amax", include_self=False)

    i2t = torch.empty(n_images, dtype=torch.int64, device=sim.device)
    step = _chunk(n_images, n_texts, chunk_size)
    for start in range(0, n_images, step):
        rows = sim[start : start + step]  # [chunk, n_texts]
        if rows.is_floating_point() and torch.isnan(rows).any():
            raise ValueError("similarity contains NaN; check the features (a zero vector normalises to NaN)")
        i2t[start : start + step] = (rows > best_own[start : start + step, None]).sum(dim=1)

    t2i = torch.empty(n_texts, dtype=torch.int64, device=sim.device)
    ties = 0
    step = _chunk(n_texts, n_images, chunk_size)
    for start in range(0, n_texts, step):
        block = sim[:, start : start + step]  # [n_images, chunk]: candidates x caption queries
        own = gt_scores[None, start : start + step]  # [1, chunk]
        t2i[start : start + step] = (block > own).sum(dim=0)
        # The own image always equals itself; a second equal score is a tie.
        ties += int(((block == own).sum(dim=0) > 1).sum())

    if ties > _TIE_WARN_FRACTION * n_texts:
        warnings.warn(
            f"{ties} of {n_texts} captions score their image exactly as high as another image; ties count "
            "as hits (optimistic ranks), so the recalls may be inflated. Identical features (a collapsed "
            "model, duplicate images, low-precision scores) cause this.",
            RuntimeWarning,
            stacklevel=2,
        )
    return i2t.cpu(), t2i.cpu()


def recall_at_k(
    ranks: IndexLike, ks: Sequence[int] = (1, 5, 10)
) -> dict[int, float]:
    """Percentage of queries whose 0-based rank is < K, for each K.

    Args:
        ranks: 0-based ranks, one per query (from :func:`retrieval_ranks`).
        ks: the cut-offs.

    Returns:
        ``{K: percent}`` as Python floats in [0, 100].
    """
    r = torch.as_tensor(np.asarray(ranks) if not torch.is_tensor(ranks) else ranks)
    if r.numel() == 0:
        raise ValueError("recall_at_k needs at least one rank")
    return {int(k): 100.0 * int((r < k).sum()) / r.numel() for k in ks}


def rank_stats(ranks: IndexLike) -> dict[str, float]:
    """Median and mean rank, **1-based** as papers report them (1 = the match came first).

    The median follows VSE++ (``floor(median(0-based ranks)) + 1``), so it is a whole number.

    Args:
        ranks: 0-based ranks, one per query.

    Returns:
        ``{"median_rank": float, "mean_rank": float}``.
    """
    r = np.asarray(ranks.cpu() if torch.is_tensor(ranks) else ranks, dtype=np.float64)
    if r.size == 0:
        raise ValueError("rank_stats needs at least one rank")
    return {"median_rank": float(math.floor(np.median(r)) + 1), "mean_rank": float(r.mean() + 1)}


def metrics_from_ranks(
    i2t_ranks: IndexLike,
    t2i_ranks: IndexLike,
) -> dict[str, float]:
    """The six recalls, mR and rsum (percent) from 0-based ranks.

    The denominators are the queries given: images for i2t, captions for t2i. Passing a subset
    of the ranks (e.g. one scene's queries) gives that subset's recalls against the full gallery.
    """
    i2t = recall_at_k(i2t_ranks)
    t2i = recall_at_k(t2i_ranks)
    out = {f"i2t_r{k}": v for k, v in i2t.items()} | {f"t2i_r{k}": v for k, v in t2i.items()}
    rsum = sum(out[k] for k in RECALL_KEYS)
    out["mr"] = rsum / len(RECALL_KEYS)
    out["rsum"] = rsum
    return out


def retrieval_metrics(
    similarity: ScoresLike,
    text_to_image: IndexLike,
    *,
    chunk_size: int | None = None,
) -> dict[str, float]:
    """Multi-caption retrieval recalls in percent, following ``docs/protocol.md`` exactly.

    Args:
        similarity: ``[n_images, n_texts]`` scores (torch or numpy; higher = more similar).
        text_to_image: for each caption (column), the index of its image (row).
        chunk_size: queries compared per chunk (memory bound); the default is fine.

    Returns:
        ``{"i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "mr", "rsum"}`` as
        percentages (floats). i2t recalls are over images, t2i recalls over captions.

    Raises:
        ValueError: see :func:`retrieval_ranks` (e.g. an image with no caption).

    Example:
        >>> sim = torch.tensor([[0.9, 0.8, 0.1], [0.2, 0.1, 0.7]])
        >>> retrieval_metrics(sim, [0, 0, 1])["mr"]
        100.0
    """
    i2t, t2i = retrieval_ranks(similarity, text_to_image, chunk_size=chunk_size)
    return metrics_from_ranks(i2t, t2i)

