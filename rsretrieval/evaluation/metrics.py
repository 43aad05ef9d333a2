"""Retrieval metrics for text-image retrieval with several captions per image (``docs/protocol.md``).

i2t: an image's rank is the best rank among its ground-truth captions, R@K over images; t2i: a
caption's rank is its one image's rank, R@K over captions; mR is the mean of the six recalls and
rsum their sum. The ground truth is an explicit caption -> image index (``text_to_image``), never a
position rule.

**Ties** (RSICD repeats caption strings across images, so identical captions score exactly alike)
follow one of :data:`TIE_RULES`. The published evaluation code (AMFMN, PE-RSITR) ranks with
numpy's default ``argsort``, which is not stable: its order among equal scores changes with the
numpy version and the CPU. The default, ``expected``, is the average of that code's result over
all orders of the tied candidates, computed exactly; ``argsort`` runs that code's procedure
itself; ``optimistic`` and ``pessimistic`` bound it. Everything is vectorised and chunked: the
temporaries of a 5,000 x 25,000 matrix stay around 16 MB.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

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

# How a ground truth tied with other candidates is ranked:
#   expected     the mean over every order of the tied candidates (the published code's expectation)
#   argsort      the published code's own procedure: position in numpy.argsort(scores)[::-1]
#   optimistic   ahead of every tied candidate (counts strictly higher scores only)
#   pessimistic  behind every tied candidate
TIE_RULES: tuple[str, ...] = ("expected", "argsort", "optimistic", "pessimistic")
DEFAULT_TIES = "expected"


def _check_ties(ties: str) -> str:
    if ties not in TIE_RULES:
        raise ValueError(f"ties must be one of {', '.join(map(repr, TIE_RULES))}, not {ties!r}")
    return ties


@dataclass(frozen=True)
class Ranks:
    """Where each query's ground truth stands, and the tie rule that turns that into a rank.

    Attributes:
        above: candidates scoring strictly higher than the query's best ground truth.
        tied: other candidates scoring exactly as high.
        own: ground truths at that best score (an image's tied own captions; 1 for captions).
        ties: one of :data:`TIE_RULES`. For ``argsort``, ``above`` holds the rank itself.
    """

    above: torch.Tensor
    tied: torch.Tensor
    own: torch.Tensor
    ties: str = DEFAULT_TIES

    def __len__(self) -> int:
        return self.above.numel()

    def __getitem__(self, index: torch.Tensor | slice) -> Ranks:
        return Ranks(self.above[index], self.tied[index], self.own[index], self.ties)

    def hits(self, k: int) -> torch.Tensor:
        """Each query's chance (0 to 1) that its 0-based rank is below ``k``."""
        above = self.above.to(torch.float64)
        if self.ties in ("optimistic", "argsort"):
            return (above < k).to(torch.float64)
        tied = self.tied.to(torch.float64)
        if self.ties == "pessimistic":
            return (above + tied < k).to(torch.float64)
        # The best of `own` ground truths placed at random among own + tied: P(it is among the first
        # r of the group) = 1 - C(tied, r) / C(own + tied, r), with r = k - above places left.
        own = self.own.to(torch.float64)
        r = (k - above).clamp(min=0)
        all_foreign = torch.ones_like(above)
        for i in range(k):
            factor = ((tied - i) / (own + tied - i)).clamp(min=0)
            all_foreign = torch.where(r > i, all_foreign * factor, all_foreign)
        return torch.where(r > 0, 1 - all_foreign, torch.zeros_like(above))

    def rank(self) -> torch.Tensor:
        """Each query's 0-based rank under the rule (``expected``: its mean over tie orders)."""
        above = self.above.to(torch.float64)
        if self.ties in ("optimistic", "argsort"):
            return above
        if self.ties == "pessimistic":
            return above + self.tied
        return above + self.tied / (self.own + 1)  # foreign candidates before the first of `own`


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
    ties: str = DEFAULT_TIES,
    chunk_size: int | None = None,
) -> tuple[Ranks, Ranks]:
    """Where the ground truth of every image query and every caption query stands.

    For an image, the standing of its best-scoring own caption (its best rank); for a caption,
    that of its image.

    Args:
        similarity: ``[n_images, n_texts]`` scores (torch tensor on any device, or numpy array).
        text_to_image: for each caption (column), the index of its image (row). Any order and
            any number of captions per image, but at least one.
        ties: how tied candidates are ranked, one of :data:`TIE_RULES`.
        chunk_size: queries compared per chunk; by default as many as fit in ~16M elements.

    Returns:
        ``(i2t, t2i)``: :class:`Ranks` of ``n_images`` and ``n_texts`` queries (CPU tensors).

    Raises:
        ValueError: on bad shapes or indices, NaN scores, an unknown tie rule, or an image
            without any caption (its i2t rank is undefined: there is no ground-truth caption).
    """
    _check_ties(ties)
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
    own_at_best = torch.bincount(idx[gt_scores == best_own[idx]], minlength=n_images)

    i2t_above = torch.empty(n_images, dtype=torch.int64, device=sim.device)
    i2t_equal = torch.empty_like(i2t_above)
    step = _chunk(n_images, n_texts, chunk_size)
    for start in range(0, n_images, step):
        rows = sim[start : start + step]  # [chunk, n_texts]
        if rows.is_floating_point() and torch.isnan(rows).any():
            raise ValueError("similarity contains NaN; check the features (a zero vector normalises to NaN)")
        best = best_own[start : start + step, None]
        i2t_above[start : start + step] = (rows > best).sum(dim=1)
        i2t_equal[start : start + step] = (rows == best).sum(dim=1)

    t2i_above = torch.empty(n_texts, dtype=torch.int64, device=sim.device)
    t2i_equal = torch.empty_like(t2i_above)
    step = _chunk(n_texts, n_images, chunk_size)
    for start in range(0, n_texts, step):
        block = sim[:, start : start + step]  # [n_images, chunk]: candidates x caption queries
        own = gt_scores[None, start : start + step]  # [1, chunk]
        t2i_above[start : start + step] = (block > own).sum(dim=0)
        t2i_equal[start : start + step] = (block == own).sum(dim=0)

    tied_t2i = t2i_equal - 1  # the own image always equals itself
    n_tied = int((tied_t2i > 0).sum())
    if n_tied > _TIE_WARN_FRACTION * n_texts:
        effect = (
            "ties='optimistic' counts them as hits, so the recalls may be inflated"
            if ties == "optimistic"
            else f"their ranks depend on how ties are broken (ties={ties!r})"
        )
        warnings.warn(
            f"{n_tied} of {n_texts} captions score their image exactly as high as another image; {effect}. "
            "Identical features (a collapsed model, duplicate images, low-precision scores) cause this.",
            RuntimeWarning,
            stacklevel=2,
        )
    if ties == "argsort":
        i2t_rank, t2i_rank = _argsort_ranks(sim, idx, chunk_size)
        zeros_i, zeros_t = torch.zeros_like(i2t_rank), torch.zeros_like(t2i_rank)
        return (Ranks(i2t_rank, zeros_i, zeros_i + 1, ties), Ranks(t2i_rank, zeros_t, zeros_t + 1, ties))
    i2t = Ranks(i2t_above.cpu(), (i2t_equal - own_at_best).cpu(), own_at_best.cpu(), ties)
    t2i = Ranks(t2i_above.cpu(), tied_t2i.cpu(), torch.ones_like(tied_t2i).cpu(), ties)
    return i2t, t2i


def _argsort_ranks(
    sim: torch.Tensor, idx: torch.Tensor, chunk_size: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ranks as the published code finds them: positions in ``numpy.argsort(row)[::-1]``."""
    scores = sim.detach().cpu().numpy()
    owner = idx.cpu().numpy()
    n_images, n_texts = scores.shape
    i2t = np.full(n_images, n_texts, dtype=np.int64)
    step = _chunk(n_images, n_texts, chunk_size)
    for start in range(0, n_images, step):
        rows = scores[start : start + step]
        order = np.argsort(rows, axis=1)[:, ::-1]
        position = np.empty_like(order)
        np.put_along_axis(position, order, np.broadcast_to(np.arange(n_texts), order.shape), axis=1)
        mine = np.nonzero((owner >= start) & (owner < start + len(rows)))[0]
        np.minimum.at(i2t, owner[mine], position[owner[mine] - start, mine])
    t2i = np.empty(n_texts, dtype=np.int64)
    step = _chunk(n_texts, n_images, chunk_size)
    for start in range(0, n_texts, step):
        queries = np.ascontiguousarray(scores[:, start : start + step].T)  # [chunk, n_images]
        order = np.argsort(queries, axis=1)[:, ::-1]
        t2i[start : start + step] = np.argmax(order == owner[start : start + step, None], axis=1)
    return torch.from_numpy(i2t), torch.from_numpy(t2i)


def recall_at_k(
    ranks: Ranks | IndexLike, ks: Sequence[int] = (1, 5, 10)
) -> dict[int, float]:
    """Percentage of queries whose 0-based rank is < K, for each K.

    Args:
        ranks: :class:`Ranks` (from :func:`retrieval_ranks`; its tie rule applies) or plain
            0-based ranks, one per query.
        ks: the cut-offs.

    Returns:
        ``{K: percent}`` as Python floats in [0, 100].
    """
    if isinstance(ranks, Ranks):
        if len(ranks) == 0:
            raise ValueError("recall_at_k needs at least one rank")
        return {int(k): 100.0 * float(ranks.hits(int(k)).sum()) / len(ranks) for k in ks}
    r = torch.as_tensor(np.asarray(ranks) if not torch.is_tensor(ranks) else ranks)
    if r.numel() == 0:
        raise ValueError("recall_at_k needs at least one rank")
    return {int(k): 100.0 * int((r < k).sum()) / r.numel() for k in ks}


def rank_stats(ranks: Ranks | IndexLike) -> dict[str, float]:
    """Median and mean rank, **1-based** as papers report them (1 = the match came first).

    The median follows VSE++ (``floor(median(0-based ranks)) + 1``), so it is a whole number.
    With :class:`Ranks`, each query's rank under its tie rule (the mean over tie orders for
    ``expected``).

    Args:
        ranks: :class:`Ranks` or 0-based ranks, one per query.

    Returns:
        ``{"median_rank": float, "mean_rank": float}``.
    """
    if isinstance(ranks, Ranks):
        ranks = ranks.rank()
    r = np.asarray(ranks.cpu() if torch.is_tensor(ranks) else ranks, dtype=np.float64)
    if r.size == 0:
        raise ValueError("rank_stats needs at least one rank")
    return {"median_rank": float(math.floor(np.median(r)) + 1), "mean_rank": float(r.mean() + 1)}


def metrics_from_ranks(
    i2t_ranks: Ranks | IndexLike,
    t2i_ranks: Ranks | IndexLike,
) -> dict[str, float]:
    """The six recalls, mR and rsum (percent) from :class:`Ranks` or 0-based ranks.

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
    ties: str = DEFAULT_TIES,
    chunk_size: int | None = None,
) -> dict[str, float]:
    """Multi-caption retrieval recalls in percent, following ``docs/protocol.md`` exactly.

    Args:
        similarity: ``[n_images, n_texts]`` scores (torch or numpy; higher = more similar).
        text_to_image: for each caption (column), the index of its image (row).
        ties: how tied candidates are ranked, one of :data:`TIE_RULES` (module docstring).
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
    i2t, t2i = retrieval_ranks(similarity, text_to_image, ties=ties, chunk_size=chunk_size)
    return metrics_from_ranks(i2t, t2i)


def tie_rule_table(similarity: ScoresLike, text_to_image: IndexLike) -> dict[str, dict[str, float]]:
    """The metrics under every rule of :data:`TIE_RULES`: how much ties move a result."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the tie warning, once per rule
        return {rule: retrieval_metrics(similarity, text_to_image, ties=rule) for rule in TIE_RULES}
