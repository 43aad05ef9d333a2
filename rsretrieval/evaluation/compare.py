"""Is one system ahead of another on the same test split? A paired bootstrap CI and permutation test.

The unit of resampling is a test image with its captions: the image's i2t query and its captions'
t2i queries stay together, and the gallery stays the whole split (as the metrics rank it). Several
runs of a system (seeds) enter as their mean per-image hit rates, so the difference tested is the
difference of the seeds' mean mR; the seeds' own spread is reported beside it.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rsretrieval.evaluation.evaluate import EvalResult

_KS = (1, 5, 10)


def per_image_hits(result: EvalResult, text_to_image: Sequence[int]) -> np.ndarray:
    """``[n_images, 7]``: each image's i2t hits at 1/5/10, its captions' summed t2i hits at 1/5/10, and
    its number of captions; the metrics' tie rule gives fractional hits for ties."""
    if result.i2t_ranks is None or result.t2i_ranks is None:
        raise ValueError("this EvalResult holds no ranks (read back from JSON?): evaluate the split again")
    t2i = np.asarray(text_to_image, dtype=np.int64)
    n = len(result.i2t_ranks)
    if len(result.t2i_ranks) != len(t2i) or (len(t2i) and t2i.max() >= n):
        raise ValueError(f"text_to_image ({len(t2i)} captions) does not match the result's "
                         f"{len(result.t2i_ranks)} captions over {n} images")
    out = np.zeros((n, 7))
    for j, k in enumerate(_KS):
        out[:, j] = result.i2t_ranks.hits(k).numpy()
        out[:, 3 + j] = np.bincount(t2i, weights=result.t2i_ranks.hits(k).numpy(), minlength=n)
    out[:, 6] = np.bincount(t2i, minlength=n)
    return out


def mr_of(table: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """mR (percent) of the images ``idx`` (any leading batch shape) of a :func:`per_image_hits` table."""
    rows = table[idx]  # [..., n, 7]
    i2t = rows[..., :3].mean(axis=-2)
    t2i = rows[..., 3:6].sum(axis=-2) / rows[..., 6:7].sum(axis=-2)
    return 100 * (i2t.sum(axis=-1) + t2i.sum(axis=-1)) / 6


@dataclass(frozen=True)
class Comparison:
    """System a minus system b on one test split (mR points)."""

    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    confidence: float
    n_images: int
    mr_a: float  # the seeds' mean
    mr_b: float
    std_a: float  # the seeds' spread (0 for one run)
    std_b: float
    runs_a: int
    runs_b: int

    @property
    def seeds_noise(self) -> float:
        return (self.std_a ** 2 + self.std_b ** 2) ** 0.5

    @property
    def verdict(self) -> str:
        """``ahead`` or ``behind`` only when the CI excludes 0 and the difference exceeds the seeds'
        spread; otherwise ``within noise``."""
        clear = (self.ci_low > 0 or self.ci_high < 0) and abs(self.delta) > self.seeds_noise
        return ("ahead" if self.delta > 0 else "behind") if clear else "within noise"

    def sentence(self, a: str, b: str, unit: str = "mR") -> str:
        """One sentence from the numbers: who leads by how much, or that it is within noise."""
        runs = (f"{self.runs_a} seed{'s' if self.runs_a != 1 else ''}" if self.runs_a == self.runs_b
                else f"{self.runs_a} and {self.runs_b} runs")
        ahead = self.verdict == "within noise" or self.delta > 0
        low, high = (self.ci_low, self.ci_high) if ahead else (-self.ci_high, -self.ci_low)  # the leader's view
        ci = (f"{100 * self.confidence:.0f}% CI {low:+.2f} to {high:+.2f}, p = {self.p_value:.3g}, "
              f"{self.n_images} test images, {runs}")
        if self.seeds_noise:
            ci += f", seeds' spread {self.seeds_noise:.2f}"
        if self.verdict == "within noise":
            return f"{a} and {b} are within noise: {a} {self.delta:+.2f} {unit} ({ci})"
        lead, trail = (a, b) if ahead else (b, a)
        return f"{lead} leads {trail} by {abs(self.delta):.2f} {unit} ({ci})"

    def to_dict(self) -> dict[str, float | int | str]:
        return {"delta": self.delta, "ci_low": self.ci_low, "ci_high": self.ci_high, "p_value": self.p_value,
                "confidence": self.confidence, "n_images": self.n_images, "verdict": self.verdict,
                "seeds_noise": self.seeds_noise}


Runs = EvalResult | np.ndarray | Sequence[EvalResult | np.ndarray]


def _tables(results: Runs, text_to_image: Sequence[int] | None) -> tuple[np.ndarray, list[float]]:
    runs = [results] if isinstance(results, EvalResult) or (isinstance(results, np.ndarray)
                                                            and results.ndim == 2) else list(results)
    if not runs:
        raise ValueError("a side of the comparison has no runs")
    if text_to_image is None and any(isinstance(r, EvalResult) for r in runs):
        raise ValueError("an EvalResult is compared through the split's text_to_image: pass it")
    tables = [np.asarray(r, dtype=np.float64) if not isinstance(r, EvalResult) else per_image_hits(r, text_to_image)
              for r in runs]
    if any(t.ndim != 2 or t.shape[1] != 7 or t.shape != tables[0].shape for t in tables):
        raise ValueError(f"per-image hit tables must all be [n_images, 7] of one split, got "
                         f"{sorted({t.shape for t in tables})}")
    everyone = np.arange(tables[0].shape[0])
    return np.mean(tables, axis=0), [float(mr_of(t, everyone)) for t in tables]


def paired_comparison(a: Runs, b: Runs, text_to_image: Sequence[int] | None = None, *, confidence: float = 0.95,
                      n_resamples: int = 9999, method: str = "BCa", seed: int = 0) -> Comparison:
    """Compare system ``a`` with ``b`` (one run, or several seeds, each an :class:`EvalResult` of the same
    split, whose ``text_to_image`` is given, or its :func:`per_image_hits` table) by their mR difference.

    Returns:
        The difference of the seeds' mean mR, its paired bootstrap CI over test images
        (``scipy.stats.bootstrap``; ``method`` as there) and a two-sided paired permutation p-value
        (``scipy.stats.permutation_test``, swapping a's and b's results image by image; exact when
        ``n_resamples`` covers every swap).
    """
    from scipy import stats

    ta, mrs_a = _tables(a, text_to_image)
    tb, mrs_b = _tables(b, text_to_image)
    if ta.shape != tb.shape:
        raise ValueError(f"the two systems were scored on different splits: {ta.shape[0]} and {tb.shape[0]} images")
    n = ta.shape[0]
    both = np.concatenate([ta, tb])  # row i: image i under a; row n + i: under b

    def diff(idx_a: np.ndarray, idx_b: np.ndarray, axis: int = -1) -> np.ndarray:
        return mr_of(both, idx_a) - mr_of(both, idx_b)

    everyone = np.arange(n)
    delta = float(diff(everyone, everyone + n))
    rng = np.random.default_rng(seed)

    def interval(how: str) -> tuple[float, float]:
        ci = stats.bootstrap((everyone,), lambda idx, axis=-1: diff(idx, idx + n), vectorized=True,
                             n_resamples=n_resamples, confidence_level=confidence, method=how,
                             rng=rng).confidence_interval
        return float(ci.low), float(ci.high)

    if np.allclose(ta, tb):  # identical per-image results: nothing to resample
        low = high = delta
    else:
        low, high = interval(method)
        if not (np.isfinite(low) and np.isfinite(high)):  # BCa degenerate on a tiny or lopsided split
            low, high = interval("percentile")
    perm = stats.permutation_test((everyone, everyone + n), diff, permutation_type="samples", vectorized=True,
                                  n_resamples=n_resamples, alternative="two-sided", rng=rng)
    return Comparison(
        delta=delta, ci_low=low, ci_high=high, p_value=float(perm.pvalue), confidence=confidence, n_images=n,
        mr_a=statistics.mean(mrs_a), mr_b=statistics.mean(mrs_b),
        std_a=statistics.stdev(mrs_a) if len(mrs_a) > 1 else 0.0,
        std_b=statistics.stdev(mrs_b) if len(mrs_b) > 1 else 0.0, runs_a=len(mrs_a), runs_b=len(mrs_b))


def mr_interval(runs: Runs, text_to_image: Sequence[int] | None = None, *, confidence: float = 0.95,
                n_resamples: int = 9999, seed: int = 0) -> tuple[float, float, float]:
    """The seeds' mean mR of one system and its bootstrap CI over test images (percentile): (mR, low, high)."""
    from scipy import stats

    table, _ = _tables(runs, text_to_image)
    everyone = np.arange(table.shape[0])
    ci = stats.bootstrap((everyone,), lambda idx, axis=-1: mr_of(table, idx), vectorized=True,
                         n_resamples=n_resamples, confidence_level=confidence, method="percentile",
                         rng=np.random.default_rng(seed)).confidence_interval
    return float(mr_of(table, everyone)), float(ci.low), float(ci.high)
