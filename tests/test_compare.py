"""The paired comparison of two systems against hand computations."""

import numpy as np
import pytest
import torch

from rsretrieval.evaluation import EvalResult, metrics_from_ranks, paired_comparison, per_image_hits, retrieval_ranks


def _result(similarity, text_to_image) -> EvalResult:
    i2t, t2i = retrieval_ranks(torch.tensor(similarity, dtype=torch.float32), text_to_image)
    return EvalResult(metrics=metrics_from_ranks(i2t, t2i), i2t_ranks=i2t, t2i_ranks=t2i)


def _missing_first(n: int, wrong: list[int]) -> list[list[float]]:
    """One caption per image, each image's own pair scoring 1 and the others 0; for the images in ``wrong``
    the own pair scores -1, so the image and its caption each rank their ground truth last."""
    s = np.eye(n)
    for i in wrong:
        s[i, i] = -1
    return s.tolist()


def test_per_image_hits_add_up_to_the_metrics():
    t2i = [0, 0, 1, 2, 2, 2]
    sim = np.random.default_rng(0).normal(size=(3, 6))
    r = _result(sim, t2i)
    table = per_image_hits(r, t2i)
    assert table[:, 6].tolist() == [2, 1, 3]
    for j, k in enumerate((1, 5, 10)):
        assert table[:, j].mean() * 100 == pytest.approx(r.metrics[f"i2t_r{k}"])
        assert table[:, 3 + j].sum() / 6 * 100 == pytest.approx(r.metrics[f"t2i_r{k}"])


def test_four_images_by_hand():
    # B misses R@1 in both directions on images 0-2 and ties A elsewhere: A - B = 2 * 100 * 3/4 / 6 = 25.
    t2i = [0, 1, 2, 3]
    a, b = _result(_missing_first(4, []), t2i), _result(_missing_first(4, [0, 1, 2]), t2i)
    assert a.metrics["mr"] == 100 and b.metrics["mr"] == pytest.approx(75)
    c = paired_comparison(a, b, t2i, method="percentile", n_resamples=20000)
    assert c.delta == pytest.approx(25)
    # Bootstrap: a resample holding k of the three images differs by 100/3 * k/4. P(k <= 0) = 1/256 < 2.5% <
    # P(k <= 1) = 13/256, and P(k = 4) = 81/256 > 2.5%: the 95% percentile interval is k = 1 to k = 4.
    assert (c.ci_low, c.ci_high) == (pytest.approx(100 / 12), pytest.approx(100 / 3))
    # Permutation, exact over the 16 swaps: swapping d of the three gives 100/12 * (3 - 2d); |T| >= 25 for
    # d = 0 and d = 3, each twice (image 3 swapped or not): 4 of 16, two-sided p = 2 * 2/16.
    assert c.p_value == pytest.approx(0.25)
    assert c.verdict == "ahead" and c.sentence("A", "B").startswith("A leads B by 25.00 mR")


def test_seeds_enter_as_their_mean_and_their_spread_is_noise():
    t2i = list(range(8))
    good = [_result(_missing_first(8, w), t2i) for w in ([], [0])]
    bad = [_result(_missing_first(8, w), t2i) for w in ([0, 2], [0, 2, 4])]
    c = paired_comparison(good, bad, t2i, n_resamples=2000)
    mean = lambda rs: np.mean([r.metrics["mr"] for r in rs])  # noqa: E731
    assert c.delta == pytest.approx(mean(good) - mean(bad))
    assert c.runs_a == c.runs_b == 2 and c.std_a > 0
    assert c.ci_low <= c.delta <= c.ci_high


def test_identical_systems_are_within_noise():
    t2i = [0, 1, 2]
    r = _result(_missing_first(3, [1]), t2i)
    c = paired_comparison(r, r, t2i, n_resamples=200)
    assert (c.delta, c.ci_low, c.ci_high) == (0, 0, 0) and c.p_value == 1
    assert c.verdict == "within noise" and "within noise" in c.sentence("x", "y")


def test_different_splits_are_refused():
    a = _result(_missing_first(3, []), [0, 1, 2])
    b = _result(_missing_first(4, []), [0, 1, 2, 3])
    with pytest.raises(ValueError, match="does not match"):
        paired_comparison(a, b, [0, 1, 2])


def test_the_leader_reads_its_own_interval():
    t2i = [0, 1, 2, 3]
    a, b = _result(_missing_first(4, []), t2i), _result(_missing_first(4, [0, 1, 2]), t2i)
    c = paired_comparison(b, a, t2i, method="percentile", n_resamples=20000)  # b - a = -25
    assert c.delta == pytest.approx(-25) and c.ci_high < 0
    assert c.sentence("B", "A").startswith(f"A leads B by 25.00 mR (95% CI {-c.ci_high:+.2f} to {-c.ci_low:+.2f}")


def test_summary_rows_of_zoo_runs_are_compared_image_by_image():
    """Runs that carry per-image hits (as evaluate_zoo's do) are compared by the paired CI, seeds pooled."""
    from rsretrieval.evaluation.compare import mr_of
    from rsretrieval.experiments import compare, format_summary, plain, summarize, with_ci

    t2i = list(range(8))
    hits = {w: per_image_hits(_result(_missing_first(8, w), t2i), t2i) for w in ((), (0,), (0, 2), (0, 2, 4))}
    mr = {w: float(mr_of(h, np.arange(8))) for w, h in hits.items()}
    runs = [{"label": label, "seed": s, "trainable": 1, "total": 2, "seconds_per_epoch": 1.0,
             "test": {"mr": mr[w]}, "test_hits": hits[w]}
            for label, ws in (("good", ((), (0,))), ("bad", ((0, 2), (0, 2, 4)))) for s, w in enumerate(ws)]
    good, bad = summarize(runs, group="label")
    sentence = compare(good, bad, group="label")
    c = paired_comparison(good["hits"], bad["hits"])
    assert sentence == c.sentence("good", "bad") and "CI" in sentence and "2 seeds" in sentence
    assert c.delta == pytest.approx(good["mr_mean"] - bad["mr_mean"])
    rows = with_ci([bad, good], bad, group="label")
    assert rows[0]["delta"] is None and rows[1]["ci_low"] == pytest.approx(c.ci_low)
    assert rows[1]["verdict"] == c.verdict
    text = format_summary(rows, group="label")
    assert "Δ vs bad [95% CI]" in text and f"{c.delta:+6.2f}" in text
    assert "hits" not in plain(rows[1]) and "hits" in rows[1]
    no_hits = {**good}
    del no_hits["hits"]
    assert "CI" not in compare(no_hits, bad, group="label")  # the seeds' spread alone, as before


def test_learning_curves_cross_where_the_numbers_say():
    """Two methods, the second overtaking the first between 20 and 40 labelled images."""
    from rsretrieval.experiments import crossings, learning_curve, summarize
    from rsretrieval.plots import alt_text, plot_learning_curves

    t2i = list(range(40))
    hits = lambda wrong: per_image_hits(_result(_missing_first(40, list(range(wrong))), t2i), t2i)  # noqa: E731
    # mR = 100 * (40 - wrong) / 40, two seeds a point: a misses 10.5, 9.5, 8.5 images; b 30.5, 12.5, 0.5
    misses = {"a": {0.25: (10, 11), 0.5: (9, 10), 1.0: (8, 9)}, "b": {0.25: (30, 31), 0.5: (12, 13), 1.0: (0, 1)}}
    runs = [{"label": m if share == 1 else f"{m}@{round(100 * share)}%", "seed": s, "trainable": 1, "total": 1,
             "seconds_per_epoch": 0.0, "test": {"mr": 100 * (40 - w) / 40}, "test_hits": hits(w)}
            for m, by_share in misses.items() for share, ws in by_share.items() for s, w in enumerate(ws)]
    curve = learning_curve(summarize(runs, group="label"), ["a", "b"], [0.25, 0.5, 1.0], 40)
    assert [p["n_train_images"] for p in curve if p["method"] == "a"] == [10, 20, 40]
    assert all(p["ci_low"] <= p["mr_mean"] <= p["ci_high"] for p in curve)
    (line,) = crossings(curve)
    assert line.startswith("b overtakes a between 20 and 40 labelled images (b ")
    assert "both outside the paired 95% CI" in line
    fig = plot_learning_curves(curve)
    assert alt_text(fig).startswith("Learning curves: a 73.8 at 10, 76.2 at 20")
