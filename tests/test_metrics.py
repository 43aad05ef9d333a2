"""Check the fast, chunked retrieval metrics against a slow reference written here.

The reference below is a plain transcription of the protocol in docs/protocol.md over Python lists and shares no
code with rsretrieval.evaluation.metrics, so a bug in one is not copied into the other.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from rsretrieval.evaluation.metrics import (
    METRIC_KEYS,
    RECALL_KEYS,
    metrics_from_ranks,
    rank_stats,
    recall_at_k,
    retrieval_metrics,
    retrieval_ranks,
    tie_rule_table,
)
from rsretrieval.evaluation.metrics import TIE_RULES

# ----------------------------------------------------------------------------------------------
# Slow reference


def naive_ranks(sim: list[list[float]], text_to_image: list[int]) -> tuple[list[int], list[int]]:
    """0-based ranks; a rank counts the candidates with a strictly greater score (optimistic ties)."""
    n_images, n_texts = len(sim), len(sim[0])
    i2t = []
    for i in range(n_images):
        own = [j for j in range(n_texts) if text_to_image[j] == i]
        best = None
        for j in own:  # every own caption's rank, keep the best one
            rank = 0
            for jj in range(n_texts):
                if sim[i][jj] > sim[i][j]:
                    rank += 1
            best = rank if best is None else min(best, rank)
        i2t.append(best)
    t2i = []
    for j in range(n_texts):
        gt = text_to_image[j]
        rank = 0
        for ii in range(n_images):
            if sim[ii][j] > sim[gt][j]:
                rank += 1
        t2i.append(rank)
    return i2t, t2i


def naive_metrics(sim: list[list[float]], text_to_image: list[int]) -> dict[str, float]:
    i2t, t2i = naive_ranks(sim, text_to_image)
    out = {}
    for name, ranks in (("i2t", i2t), ("t2i", t2i)):
        for k in (1, 5, 10):
            out[f"{name}_r{k}"] = 100.0 * len([r for r in ranks if r < k]) / len(ranks)
    rsum = sum(out[k] for k in RECALL_KEYS)
    out["mr"] = rsum / 6
    out["rsum"] = rsum
    return out


def random_case(
    gen: torch.Generator, n_images: int, max_captions: int, integer: bool = False
) -> tuple[torch.Tensor, list[int]]:
    """1..max_captions captions per image, in shuffled order; integer scores force many ties."""
    counts = torch.randint(1, max_captions + 1, (n_images,), generator=gen)
    t2i = torch.repeat_interleave(torch.arange(n_images), counts)
    t2i = t2i[torch.randperm(len(t2i), generator=gen)]
    shape = (n_images, len(t2i))
    sim = torch.randint(0, 5, shape, generator=gen).float() if integer else torch.randn(shape, generator=gen)
    return sim, t2i.tolist()


@contextlib.contextmanager
def no_runtime_warning() -> Iterator[None]:
    """Fail on any RuntimeWarning (pytest.warns has no negative form)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        yield


def assert_same(fast: dict[str, float], slow: dict[str, float]) -> None:
    assert list(fast) == list(METRIC_KEYS)
    for k in METRIC_KEYS:
        assert fast[k] == pytest.approx(slow[k], abs=1e-9), k


# ----------------------------------------------------------------------------------------------
# Against the reference


@pytest.mark.parametrize(
    ("seed", "n_images", "max_captions", "integer"),
    [
        (0, 5, 1, False),  # one caption per image, square
        (1, 12, 7, False),  # variable captions, non-square
        (2, 40, 7, False),
        (3, 30, 5, True),  # integer scores: ties everywhere
        (4, 8, 3, True),
        (5, 1, 4, False),  # a single image: every rank is 0
    ],
)
def test_matches_reference_random(seed: int, n_images: int, max_captions: int, integer: bool) -> None:
    gen = torch.Generator().manual_seed(seed)
    sim, t2i = random_case(gen, n_images, max_captions, integer)
    with pytest.warns() if integer else no_runtime_warning():
        fast = retrieval_metrics(sim, t2i, ties="optimistic")
    assert_same(fast, naive_metrics(sim.tolist(), t2i))
    with pytest.warns() if integer else no_runtime_warning():
        fast_ranks = retrieval_ranks(sim, t2i, ties="optimistic", chunk_size=3)
    slow_ranks = naive_ranks(sim.tolist(), t2i)
    assert fast_ranks[0].rank().tolist() == slow_ranks[0]
    assert fast_ranks[1].rank().tolist() == slow_ranks[1]


def test_large_case_matches_reference() -> None:
    gen = torch.Generator().manual_seed(7)
    sim, t2i = random_case(gen, 300, 9)  # ~300 x 1500, five captions per image on average
    assert 1200 < len(t2i) < 1800
    # Make it a bit like a real model so the recalls are not all near zero.
    sim[torch.tensor(t2i), torch.arange(len(t2i))] += 2.0
    fast = retrieval_metrics(sim, t2i)
    slow = naive_metrics(sim.tolist(), t2i)
    assert_same(fast, slow)
    assert 0 < fast["t2i_r1"] < 100 and 0 < fast["i2t_r1"] < 100


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 7, 16, 17, 49, 50, 51, 1000])
def test_chunk_boundaries(chunk_size: int) -> None:
    gen = torch.Generator().manual_seed(11)
    sim, t2i = random_case(gen, 17, 5)  # 17 rows, ~50 columns: chunks straddle both sizes
    slow = naive_ranks(sim.tolist(), t2i)
    for ties in TIE_RULES:  # no ties here: every rule gives the same ranks
        i2t, t2i_ranks = retrieval_ranks(sim, t2i, ties=ties, chunk_size=chunk_size)
        assert i2t.rank().tolist() == slow[0], ties
        assert t2i_ranks.rank().tolist() == slow[1], ties


def test_default_chunking_on_wide_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    import rsretrieval.evaluation.metrics as metrics

    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 64)  # forces many chunks with the default rule
    gen = torch.Generator().manual_seed(12)
    sim, t2i = random_case(gen, 20, 6)
    assert_same(retrieval_metrics(sim, t2i), naive_metrics(sim.tolist(), t2i))


# ----------------------------------------------------------------------------------------------
# Hand-computed cases

# Three images with 3, 2 and 1 captions, captions in shuffled order.
#              c0    c1    c2    c3    c4    c5
HAND_SIM = [
    [0.90, 0.10, 0.80, 0.30, 0.20, 0.70],  # img0, own captions c1 c3 c5
    [0.95, 0.60, 0.50, 0.10, 0.40, 0.90],  # img1, own captions c0 c4
    [0.50, 0.30, 0.10, 0.25, 0.90, 0.20],  # img2, own caption  c2
]
HAND_T2I = [1, 0, 2, 0, 1, 0]
# i2t: img0 best own = c5 0.70, beaten by c0 0.90 and c2 0.80 -> rank 2
#      img1 best own = c0 0.95, beaten by nothing             -> rank 0
#      img2 own = c2 0.10, beaten by all five others           -> rank 5
#      ranks [2, 0, 5]: R@1 1/3, R@5 2/3, R@10 3/3
# t2i: c0 col (0.90, 0.95, 0.50) own img1 -> 0;  c1 (0.10, 0.60, 0.30) own img0 -> 2
#      c2 col (0.80, 0.50, 0.10) own img2 -> 2;  c3 (0.30, 0.10, 0.25) own img0 -> 0
#      c4 col (0.20, 0.40, 0.90) own img1 -> 1;  c5 (0.70, 0.90, 0.20) own img0 -> 1
#      ranks [0, 2, 2, 0, 1, 1]: R@1 2/6, R@5 6/6, R@10 6/6
HAND_EXPECTED = {
    "i2t_r1": 100 / 3,
    "i2t_r5": 200 / 3,
    "i2t_r10": 100.0,
    "t2i_r1": 100 / 3,
    "t2i_r5": 100.0,
    "t2i_r10": 100.0,
    "mr": 1300 / 3 / 6,
    "rsum": 1300 / 3,
}


def test_hand_computed_3x6() -> None:
    i2t, t2i = retrieval_ranks(torch.tensor(HAND_SIM), HAND_T2I)
    assert i2t.rank().tolist() == [2, 0, 5]
    assert t2i.rank().tolist() == [0, 2, 2, 0, 1, 1]
    assert_same(retrieval_metrics(torch.tensor(HAND_SIM), HAND_T2I), HAND_EXPECTED)
    assert_same(naive_metrics(HAND_SIM, HAND_T2I), HAND_EXPECTED)  # the reference agrees too


def test_numpy_input_and_dtypes() -> None:
    expected = retrieval_metrics(torch.tensor(HAND_SIM), HAND_T2I)
    assert retrieval_metrics(np.array(HAND_SIM), np.array(HAND_T2I)) == expected
    assert retrieval_metrics(np.array(HAND_SIM, dtype=np.float32), tuple(HAND_T2I)) == expected
    assert retrieval_metrics(torch.tensor(HAND_SIM, dtype=torch.float64), torch.tensor(HAND_T2I)) == expected
    # Integer-valued scores are exact in every dtype: half precision and int tensors agree.
    gen = torch.Generator().manual_seed(3)
    sim, t2i = random_case(gen, 10, 4, integer=True)
    # Not argsort: numpy sorts each dtype its own way, so its order among ties changes with the dtype
    # (that is why it is not the default).
    for ties in ("expected", "optimistic", "pessimistic"):
        with pytest.warns(RuntimeWarning):
            ref = retrieval_metrics(sim, t2i, ties=ties)
            for dtype in (torch.float16, torch.bfloat16, torch.int64):
                assert retrieval_metrics(sim.to(dtype), t2i, ties=ties) == ref, (ties, dtype)


def test_each_tie_rule_on_one_tie() -> None:
    # img0's own caption c0 ties c1 (img1's); c0 scores img0 and img1 alike.
    sim = torch.tensor([[0.5, 0.5], [0.5, 0.2]])
    expected_ranks = {  # (i2t, t2i) ranks of each rule
        "optimistic": ([0, 1], [0, 1]),  # the tied ground truth comes first
        "pessimistic": ([1, 1], [1, 1]),  # ... last
        "expected": ([0.5, 1], [0.5, 1]),  # ... on average half-way
        "argsort": ([1, 1], [1, 1]),  # argsort()[::-1] puts the later of two equal scores first: the foreign one
    }
    for ties, (i2t_want, t2i_want) in expected_ranks.items():
        with pytest.warns(RuntimeWarning, match="1 of 2 captions"):  # c0's tie is half the t2i queries
            i2t, t2i = retrieval_ranks(sim, [0, 1], ties=ties)
        assert i2t.rank().tolist() == i2t_want and t2i.rank().tolist() == t2i_want, ties
    with pytest.warns(RuntimeWarning):
        m = retrieval_metrics(sim, [0, 1])
    assert m["i2t_r1"] == 25.0 and m["t2i_r1"] == 25.0  # half a hit for the tied query, none for the other


def test_constant_similarity_warns_and_scores_chance_unless_optimistic() -> None:
    t2i = [0, 0, 1, 1, 2, 2, 3, 3]
    with pytest.warns(RuntimeWarning, match="optimistic.*inflated"):
        assert retrieval_metrics(torch.zeros(4, 8), t2i, ties="optimistic")["mr"] == 100.0
    with pytest.warns(RuntimeWarning, match="depend on how ties are broken"):
        m = retrieval_metrics(torch.zeros(4, 8), t2i)
    assert m["t2i_r1"] == 25.0  # one image in four
    assert m["i2t_r1"] == pytest.approx(100 * 2 / 8)  # two own captions among eight
    # the first five of eight places all foreign: C(6, 5) of C(8, 5) orders
    assert m["i2t_r5"] == pytest.approx(100 * (1 - 6 / 56))


def test_perfect_similarity_gives_100() -> None:
    t2i = [2, 0, 1, 1, 0, 2, 3]  # image 3 has one caption, the others two, shuffled
    sim = torch.zeros(4, len(t2i))
    sim[torch.tensor(t2i), torch.arange(len(t2i))] = 1.0  # identity-like: own pairs score highest
    m = retrieval_metrics(sim, t2i)
    assert all(m[k] == 100.0 for k in RECALL_KEYS)
    assert m["mr"] == 100.0 and m["rsum"] == 600.0


def test_worst_similarity() -> None:
    sim = 1.0 - torch.eye(12)  # every own pair scores lowest: rank 11 everywhere
    m = retrieval_metrics(sim, list(range(12)))
    assert all(m[k] == 0.0 for k in RECALL_KEYS)


def test_rsum_is_six_mr() -> None:
    gen = torch.Generator().manual_seed(21)
    for _ in range(5):
        sim, t2i = random_case(gen, 25, 6)
        m = retrieval_metrics(sim, t2i)
        assert m["rsum"] == pytest.approx(6 * m["mr"])
        assert m["rsum"] == pytest.approx(sum(m[k] for k in RECALL_KEYS))


# ----------------------------------------------------------------------------------------------
# Errors


def test_zero_caption_image_raises() -> None:
    sim = torch.randn(4, 5)
    with pytest.raises(ValueError, match=r"image 2 has no caption.*undefined"):
        retrieval_metrics(sim, [0, 0, 1, 3, 3])


@pytest.mark.parametrize(
    ("sim", "t2i", "match"),
    [
        (torch.randn(3, 4), [0, 1, 2], "one image index per caption"),
        (torch.randn(3, 3), [0, 1, 3], "outside the 3 images"),
        (torch.randn(3, 3), [0, -1, 2], "outside the 3 images"),
        (torch.randn(3, 3), [0.0, 1.0, 2.0], "integer"),
        (torch.randn(3), [0, 1, 2], "2-D"),
        (torch.randn(0, 3), [0, 1, 2], "empty"),
        (torch.tensor([[0.1, float("nan")], [0.2, 0.3]]), [0, 1], "NaN"),
    ],
)
def test_bad_inputs_raise(sim: torch.Tensor, t2i: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        retrieval_metrics(sim, t2i)


# ----------------------------------------------------------------------------------------------
# Helpers


def test_recall_at_k() -> None:
    ranks = [0, 1, 4, 5, 9, 10, 100, 0]
    assert recall_at_k(ranks) == {1: 25.0, 5: 50.0, 10: 75.0}
    assert recall_at_k(np.array(ranks), ks=(2, 1000)) == {2: 37.5, 1000: 100.0}
    assert recall_at_k(torch.tensor(ranks), ks=(1,)) == {1: 25.0}


def test_rank_stats_are_one_based() -> None:
    assert rank_stats([0, 0, 0]) == {"median_rank": 1.0, "mean_rank": 1.0}
    assert rank_stats(torch.tensor([0, 1, 2, 9])) == {"median_rank": 2.0, "mean_rank": 4.0}  # floor(1.5)+1
    assert rank_stats(np.array([4])) == {"median_rank": 5.0, "mean_rank": 5.0}


def test_metrics_from_ranks_subset() -> None:
    m = metrics_from_ranks([0, 3], [0, 0, 20, 7])
    assert m["i2t_r1"] == 50.0 and m["i2t_r5"] == 100.0
    assert m["t2i_r1"] == 50.0 and m["t2i_r10"] == 75.0
    assert math.isclose(m["mr"], m["rsum"] / 6)


# ----------------------------------------------------------------------------------------------
# Tie rules against the published procedure


def published_ranks(sim: np.ndarray, per_image: int = 5) -> tuple[list[int], list[int]]:
    """The AMFMN / PE-RSITR evaluation loop: caption j belongs to image j // 5, positions in argsort[::-1]."""
    n_images = sim.shape[0]
    i2t = []
    for i in range(n_images):
        order = np.argsort(sim[i])[::-1]
        i2t.append(min(int(np.where(order == j)[0][0]) for j in range(per_image * i, per_image * i + per_image)))
    t2i = []
    for j, column in enumerate(sim.T):
        order = np.argsort(column)[::-1]
        t2i.append(int(np.where(order == j // per_image)[0][0]))
    return i2t, t2i


@pytest.mark.parametrize(("n_images", "levels"), [(3, 3), (17, 4), (60, 6)])
def test_argsort_rule_is_the_published_procedure(n_images: int, levels: int) -> None:
    gen = torch.Generator().manual_seed(n_images)
    sim = torch.randint(0, levels, (n_images, 5 * n_images), generator=gen).float()  # ties everywhere
    t2i = np.repeat(np.arange(n_images), 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        i2t_ranks, t2i_ranks = retrieval_ranks(sim, t2i, ties="argsort", chunk_size=7)
    want_i2t, want_t2i = published_ranks(sim.numpy())
    assert i2t_ranks.rank().tolist() == want_i2t and t2i_ranks.rank().tolist() == want_t2i


def _exact_expectation(sim: list[list[int]], t2i: list[int]) -> dict[str, float]:
    """Mean over every order of the tied candidates, by enumerating the orders (small cases only)."""
    import itertools

    n_images, n_texts = len(sim), len(sim[0])
    hits = {f"{d}_r{k}": 0.0 for d in ("i2t", "t2i") for k in (1, 5, 10)}
    for i in range(n_images):  # every tie-break order of the captions
        orders = list(itertools.permutations(range(n_texts)))
        for k in (1, 5, 10):
            good = 0
            for tiebreak in orders:
                ranking = sorted(range(n_texts), key=lambda j: (-sim[i][j], tiebreak[j]))
                good += any(t2i[j] == i for j in ranking[:k])
            hits[f"i2t_r{k}"] += 100 * good / len(orders) / n_images
    for j in range(n_texts):
        orders = list(itertools.permutations(range(n_images)))
        for k in (1, 5, 10):
            good = 0
            for tiebreak in orders:
                ranking = sorted(range(n_images), key=lambda i: (-sim[i][j], tiebreak[i]))
                good += t2i[j] in ranking[:k]
            hits[f"t2i_r{k}"] += 100 * good / len(orders) / n_texts
    return hits


def test_expected_rule_is_the_mean_over_tie_orders() -> None:
    gen = torch.Generator().manual_seed(5)
    t2i = [0, 1, 0, 2, 1, 2, 0]  # 7 captions: 5,040 orders per image query
    sim = torch.randint(0, 3, (3, 7), generator=gen).float()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        got = retrieval_metrics(sim, t2i)
    for key, value in _exact_expectation(sim.int().tolist(), t2i).items():
        assert got[key] == pytest.approx(value, abs=1e-9), key


def test_rules_bound_each_other_and_agree_without_ties() -> None:
    gen = torch.Generator().manual_seed(8)
    sim, t2i = random_case(gen, 40, 6, integer=True)
    table = tie_rule_table(sim, t2i)
    assert list(table) == list(TIE_RULES)
    for key in METRIC_KEYS:
        assert table["pessimistic"][key] <= table["expected"][key] <= table["optimistic"][key], key
        assert table["pessimistic"][key] <= table["argsort"][key] <= table["optimistic"][key], key
    assert table["optimistic"]["mr"] > table["pessimistic"]["mr"] + 1  # the case has many ties
    sim, t2i = random_case(gen, 40, 6)  # continuous scores: no ties
    table = tie_rule_table(sim, t2i)
    assert all(table[rule] == table["expected"] for rule in TIE_RULES)


def test_expected_ranks_add_up_over_subsets() -> None:
    # Per-scene numbers are subsets of the queries: weighted by query counts they give the whole.
    gen = torch.Generator().manual_seed(9)
    sim, t2i = random_case(gen, 30, 5, integer=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        i2t, t2i_ranks = retrieval_ranks(sim, t2i)
    whole = metrics_from_ranks(i2t, t2i_ranks)
    half = torch.arange(len(i2t)) < 12
    part_a, part_b = recall_at_k(i2t[half]), recall_at_k(i2t[~half])
    for k in (1, 5, 10):
        assert (part_a[k] * 12 + part_b[k] * (len(i2t) - 12)) / len(i2t) == pytest.approx(whole[f"i2t_r{k}"])


def test_unknown_tie_rule_is_refused() -> None:
    with pytest.raises(ValueError, match="ties must be one of 'expected', 'argsort'"):
        retrieval_metrics(torch.eye(2), [0, 1], ties="random")
