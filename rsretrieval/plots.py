"""Figures for retrieval results. Every function returns a :class:`matplotlib.figure.Figure`.

Figures are built with the object API (``Figure()``), not ``pyplot``: nothing is shown, nothing
piles up in pyplot's global figure list inside loops, and any backend works (Agg in tests and
CI). In a notebook, a returned figure displays as the cell's value (with the inline backend, e.g.
after ``%matplotlib inline``) or with ``display(fig)``; save it with ``fig.savefig(path)``.
"""

from __future__ import annotations

import textwrap
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from rsretrieval.data.dataset import open_image
from rsretrieval.evaluation.metrics import RECALL_KEYS, Ranks

_LABELS = {
    "i2t_r1": "i2t R@1", "i2t_r5": "i2t R@5", "i2t_r10": "i2t R@10",
    "t2i_r1": "t2i R@1", "t2i_r5": "t2i R@5", "t2i_r10": "t2i R@10",
    "mr": "mR", "rsum": "rsum",
}
# Okabe and Ito's colour-blind-safe palette (Color Universal Design), in matplotlib's cycle order
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
_MATCH, _MISS = "#009E73", "#D55E00"  # bluish green and vermillion: told apart with any colour vision


def use_course_style() -> None:
    """The course's figure defaults: the Okabe-Ito colour cycle and text legible at a notebook's width."""
    import matplotlib as mpl
    from cycler import cycler

    mpl.rcParams.update({"axes.prop_cycle": cycler(color=list(OKABE_ITO)), "font.size": 10,
                         "axes.titlesize": 10, "axes.labelsize": 10, "legend.fontsize": 9,
                         "image.cmap": "viridis"})


def alt_text(fig: Figure) -> str:
    """A figure's alternative text: the one set with :func:`set_alt_text`, else a description read
    off the figure (its title, and per panel the title, axis labels and legend entries)."""
    given = getattr(fig, "rsr_alt_text", None)
    if given:
        return given
    parts = []
    title = fig.get_suptitle()
    if title:
        parts.append(title.replace("\n", " "))
    axes = [ax for ax in fig.axes if ax.get_visible() and ax.axison]
    for k, ax in enumerate(axes):
        bits = []
        if ax.get_title():
            bits.append(ax.get_title().replace("\n", " "))
        if ax.get_xlabel() or ax.get_ylabel():
            bits.append(f"{ax.get_ylabel() or 'values'} against {ax.get_xlabel() or 'position'}")
        legend = ax.get_legend()
        if legend is not None:
            labels = [t.get_text() for t in legend.get_texts()]
            bits.append("series: " + ", ".join(labels[:8]) + (", ..." if len(labels) > 8 else ""))
        if bits:
            parts.append((f"panel {k + 1}: " if len(axes) > 1 else "") + "; ".join(bits))
    images = sum(len(ax.get_images()) for ax in fig.axes)
    if not parts:
        parts.append(f"{images} image(s)" if images else "a figure")
    elif images and not any(ax.axison for ax in fig.axes):
        parts.append(f"{images} image(s)")
    return ". ".join(parts)[:800]


def set_alt_text(fig: Figure, text: str) -> Figure:
    """Give ``fig`` the alternative text a screen reader says (and the HTML export writes)."""
    fig.rsr_alt_text = text
    return fig
RanksLike = Ranks | torch.Tensor | np.ndarray | Sequence[int]


def _numpy(x: Ranks | torch.Tensor | np.ndarray | Sequence[float]) -> np.ndarray:
    if isinstance(x, Ranks):
        x = x.rank()
    return x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)


def plot_recall_bars(
    results: Mapping[str, Mapping[str, float]],
    keys: Sequence[str] = RECALL_KEYS + ("mr",),
    *,
    title: str | None = None,
) -> Figure:
    """Grouped bars: one group per metric, one bar per method.

    Args:
        results: method name -> metrics dict (percent), e.g. ``{"zero-shot": r.metrics, ...}``.
        keys: the metrics to show, in order.
        title: optional axes title.
    """
    methods = list(results)
    fig = Figure(figsize=(max(6.0, 1.1 * len(keys) + 0.3 * len(methods) * len(keys) / 2), 3.8))
    ax = fig.subplots()
    x = np.arange(len(keys))
    width = 0.8 / max(1, len(methods))
    for n, method in enumerate(methods):
        values = [float(results[method].get(k, np.nan)) for k in keys]
        bars = ax.bar(x + (n - (len(methods) - 1) / 2) * width, values, width, label=method)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    ax.set_xticks(x, [_LABELS.get(k, k) for k in keys])
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8, loc="upper left")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_per_scene(
    per_scene: Mapping[str, Mapping[str, float]],
    key: str = "mr",
    *,
    title: str | None = None,
) -> Figure:
    """Horizontal bars of one metric (default mR) per scene, best scene on top.

    Each label carries the scene's image count: small scenes (RSITMD's "plane" has 6 test
    images) have noisy numbers.

    Args:
        per_scene: ``EvalResult.per_scene`` (scene -> metrics with ``n_images``).
        key: the metric to plot.
        title: optional axes title.
    """
    items = sorted(per_scene.items(), key=lambda kv: float(kv[1][key]))  # barh draws bottom-up
    fig = Figure(figsize=(6.0, max(2.0, 0.28 * len(items) + 1.0)))
    ax = fig.subplots()
    y = np.arange(len(items))
    values = [float(m[key]) for _, m in items]
    bars = ax.barh(y, values, color="tab:blue")
    ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
    labels = [f"{s} ({m['n_images']})" if "n_images" in m else s for s, m in items]
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlabel(f"{_LABELS.get(key, key)} (%), queries of the scene vs. the full gallery")
    ax.set_xlim(0, 105)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_rank_histogram(
    ranks: RanksLike | Mapping[str, RanksLike],
    *,
    max_rank: int = 50,
    title: str | None = None,
) -> Figure:
    """Histogram of 1-based ranks, with every rank above ``max_rank`` gathered in the last bar.

    Args:
        ranks: :class:`Ranks` (``EvalResult.t2i_ranks``) or 0-based ranks, or name -> ranks to overlay several
            (e.g. ``{"i2t": r.i2t_ranks, "t2i": r.t2i_ranks}``); each is shown as a share of its
            own queries so different query counts compare.
        max_rank: last rank with its own bar.
        title: optional axes title.
    """
    series = dict(ranks) if isinstance(ranks, Mapping) else {"ranks": ranks}
    fig = Figure(figsize=(7.0, 3.5))
    ax = fig.subplots()
    edges = np.arange(1, max_rank + 3) - 0.5  # one bin per rank 1..max_rank, plus an overflow bin
    for name, r in series.items():
        one_based = np.minimum(_numpy(r).astype(np.int64) + 1, max_rank + 1)
        weights = np.full(one_based.shape, 100.0 / max(1, one_based.size))
        ax.hist(one_based, bins=edges, weights=weights, alpha=0.6, label=name)
    for k in (1, 5, 10):  # the R@K cut-offs: bars left of a line count as hits for that K
        if k <= max_rank:
            ax.axvline(k + 0.5, color="gray", linestyle=":", linewidth=1)
    ticks = [t for t in (1, 5, 10, 20, 30, 40, 50, 100) if t <= max_rank] + [max_rank + 1]
    ax.set_xticks(ticks, [str(t) for t in ticks[:-1]] + [f">{max_rank}"])
    ax.set_xlabel("rank of the ground truth (1 = first)")
    ax.set_ylabel("% of queries")
    if len(series) > 1:
        ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_retrieval_grid(
    query: str,
    image_paths: Sequence[str | Path],
    scores: torch.Tensor | np.ndarray | Sequence[float],
    is_match: torch.Tensor | np.ndarray | Sequence[bool],
    k: int = 5,
) -> Figure:
    """The top-k images of a text query in a row; matches framed green, others red.

    Args:
        query: the caption, shown as the figure title.
        image_paths: gallery images (the whole gallery, or an already ranked top list).
        scores: one score per image (e.g. a column of ``EvalResult.similarity``).
        is_match: one flag per image: is it the query's ground-truth image?
        k: how many of the best-scoring images to show.
    """
    s = _numpy(scores).astype(np.float64)
    match = _numpy(is_match).astype(bool)
    if not len(image_paths) == len(s) == len(match):
        raise ValueError(f"{len(image_paths)} paths, {len(s)} scores and {len(match)} flags must match")
    top = np.argsort(-s, kind="stable")[:k]
    fig = Figure(figsize=(2.2 * max(1, len(top)), 2.9))
    axes = np.atleast_1d(fig.subplots(1, max(1, len(top))))
    for rank, (ax, i) in enumerate(zip(axes, top), start=1):
        ax.imshow(open_image(image_paths[i]))
        ax.set_title(f"#{rank}  {s[i]:.3f}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():  # the frame tells match from miss at a glance
            spine.set_edgecolor(_MATCH if match[i] else _MISS)
            spine.set_linewidth(4)
    fig.suptitle("\n".join(textwrap.wrap(f"query: {query}", 100)), fontsize=10)
    fig.tight_layout()
    return fig


def plot_image_captions(
    image_paths: Sequence[str | Path],
    captions_per_image: Sequence[Sequence[str]],
    n: int = 4,
    *,
    width: int = 34,
) -> Figure:
    """A row of the first ``n`` images, each with its captions wrapped below it.

    Args:
        image_paths: image files.
        captions_per_image: for each image, its captions (``data.image_to_texts`` mapped to text).
        n: how many images to show.
        width: characters per caption line.
    """
    n = min(n, len(image_paths))
    if n < 1:
        raise ValueError("plot_image_captions needs at least one image")
    texts = [
        "\n".join(textwrap.fill(f"- {c}", width, subsequent_indent="  ") for c in captions_per_image[i])
        for i in range(n)
    ]
    n_lines = max(t.count("\n") + 1 for t in texts)
    fig = Figure(figsize=(2.6 * n, 2.6 + 0.14 * n_lines))
    axes = np.atleast_1d(fig.subplots(1, n))
    for ax, path, text in zip(axes, image_paths, texts):
        ax.imshow(open_image(path))
        ax.set_axis_off()
        ax.text(0.0, -0.03, text, transform=ax.transAxes, ha="left", va="top", fontsize=7)
    # Leave the lower part of the figure to the captions.
    caption_height = 0.14 * n_lines / fig.get_figheight()  # ~0.14 inch per 7 pt line
    fig.subplots_adjust(left=0.02, right=0.98, top=0.98, bottom=min(0.8, caption_height))
    return fig


def plot_caption_lengths(lengths_by_name: Mapping[str, Sequence[int]], *, max_words: int = 40) -> Figure:
    """Histograms of caption length (words), one line per dataset or split."""
    fig = Figure(figsize=(6, 3))
    ax = fig.subplots()
    bins = np.arange(0, max_words + 2) - 0.5
    for name, lengths in lengths_by_name.items():
        ax.hist(np.clip(_numpy(lengths), 0, max_words), bins=bins, histtype="step", linewidth=2, density=True,
                label=f"{name} (mean {np.mean(_numpy(lengths)):.1f})")
    ax.set_xlabel("words per caption")
    ax.set_ylabel("share of captions")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_similarity(
    similarity: torch.Tensor | np.ndarray,
    text_to_image: Sequence[int],
    *,
    n_images: int = 12,
) -> Figure:
    """Heatmap of the first ``n_images`` rows and their captions' columns, ground truth outlined."""
    sim = _numpy(similarity)
    t2i = np.asarray(text_to_image)
    cols = np.flatnonzero(t2i < n_images)
    block = sim[:n_images][:, cols]
    fig = Figure(figsize=(min(12, 1 + 0.18 * len(cols)), 0.35 * n_images + 1.2))
    ax = fig.subplots()
    im = ax.imshow(block, aspect="auto", cmap="viridis")
    for c, j in enumerate(cols):  # one outlined cell per caption: its own image
        ax.add_patch(_rectangle(c - 0.5, t2i[j] - 0.5))
    ax.set_xlabel("captions")
    ax.set_ylabel("images")
    ax.set_title("cosine similarity (white boxes: ground truth)")
    fig.colorbar(im, ax=ax, fraction=0.03)
    fig.tight_layout()
    return fig


def _rectangle(x: float, y: float):
    from matplotlib.patches import Rectangle

    return Rectangle((x, y), 1, 1, fill=False, edgecolor="white", linewidth=1.2)


def plot_score_vs_params(
    rows: Sequence[Mapping],
    *,
    key: str = "mr",
    label: str = "method",
    paper: Mapping[str, tuple[float, float]] | None = None,
    title: str = "",
) -> Figure:
    """Score (mean ± std) against trainable parameters, log scale; optional paper points beside ours.

    Args:
        rows: :func:`rsretrieval.experiments.summarize` rows (``trainable``, ``{key}_mean``, ``{key}_std``).
        key: the metric.
        label: the row field naming each point.
        paper: ``{name: (trainable, score)}`` drawn as hollow markers on a second axis, labelled
            as the paper's (its numbers come from another model and dataset: compare shapes, not heights).
        title: figure title.
    """
    fig = Figure(figsize=(7, 3.6) if paper else (5, 3.6))
    axes = fig.subplots(1, 2 if paper else 1, squeeze=False)[0]
    ax = axes[0]
    for r in rows:
        ax.errorbar(r["trainable"], r[f"{key}_mean"], yerr=r[f"{key}_std"], fmt="o", capsize=3)
        ax.annotate(str(r[label]), (r["trainable"], r[f"{key}_mean"]), fontsize=8, xytext=(4, 3),
                    textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel(f"{_LABELS.get(key, key)} (%, ours)")
    ax.set_title(title or "ours")
    if paper:
        ax2 = axes[1]
        for name, (n, score) in paper.items():
            ax2.plot(n, score, "o", mfc="none")
            ax2.annotate(name, (n, score), fontsize=8, xytext=(4, 3), textcoords="offset points")
        ax2.set_xscale("log")
        ax2.set_xlabel("trainable parameters")
        ax2.set_ylabel(f"{_LABELS.get(key, key)} (%, paper)")
        ax2.set_title("PE-RSITR's table (paper, ViT-B/32 on RSITMD)")
    fig.tight_layout()
    return fig


def plot_search_results(title: str, paths: Sequence[str | Path], scores: Sequence[float],
                        labels: Sequence[str | None] | None = None, *, highlight: Sequence[bool] | None = None) -> Figure:
    """A row of search hits: each image titled with its rank, score and (optional) label.

    ``highlight`` frames chosen hits green and the rest grey (e.g. hits of the expected scene).
    """
    n = len(paths)
    if n == 0:
        raise ValueError("no hits to plot")
    fig = Figure(figsize=(2.2 * n, 2.9))
    axes = np.atleast_1d(fig.subplots(1, n))
    for r, (ax, path, score) in enumerate(zip(axes, paths, scores)):
        ax.imshow(open_image(path))
        label = f"\n{labels[r]}" if labels is not None and labels[r] else ""
        ax.set_title(f"#{r + 1}  {score:.3f}{label}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        if highlight is not None:
            for spine in ax.spines.values():
                spine.set_edgecolor(_MATCH if highlight[r] else "0.6")
                spine.set_linewidth(4)
    fig.suptitle("\n".join(textwrap.wrap(title, 100)), fontsize=10)
    fig.tight_layout()
    return fig


def plot_footprints(quicklook, size: tuple[int, int], windows: Sequence[Sequence[int]], scores: Sequence[float],
                    title: str, *, truth: Sequence[int] | None = None) -> Figure:
    """Search hits as rectangles on a scene's quicklook (the best one thickest), each labelled by rank.

    Args:
        quicklook: the scene, downsampled (a PIL image or array).
        size: the scene's ``(width, height)`` in pixels, the units of ``windows``.
        windows: each hit's ``[col, row, width, height]``.
        truth: a window to outline as the expected answer (dashed).
    """
    from matplotlib.patches import Rectangle

    width, height = size
    fig = Figure(figsize=(7, 7 * height / width + 0.6))
    ax = fig.subplots()
    ax.imshow(quicklook, extent=(0, width, height, 0))
    for rank, (window, score) in reversed(list(enumerate(zip(windows, scores), start=1))):
        c, r, w, h = window
        ax.add_patch(Rectangle((c, r), w, h, fill=False, edgecolor="#d55e00" if rank == 1 else "#e69f00",
                               linewidth=3 if rank == 1 else 1.5))
        ax.text(c + 4, r + 4, f"#{rank} {score:.2f}", color="white", fontsize=8, va="top",
                bbox={"facecolor": "black", "alpha": 0.6, "pad": 1, "linewidth": 0})
    if truth is not None:
        c, r, w, h = truth
        ax.add_patch(Rectangle((c, r), w, h, fill=False, edgecolor="#56b4e9", linewidth=2, linestyle="--"))
    ax.set_xlabel("column (pixels)")
    ax.set_ylabel("row (pixels)")
    ax.set_title("\n".join(textwrap.wrap(title, 90)), fontsize=10)
    fig.tight_layout()
    return fig


def plot_focus_maps(
    image_paths: Sequence[str | Path],
    maps: torch.Tensor | np.ndarray,
    masks: torch.Tensor | np.ndarray | None = None,
    titles: Sequence[str] | None = None,
    title: str = "",
) -> Figure:
    """Images with a focus map over each, object outlines from ``masks``, on one colour scale: each
    patch's weight over the uniform weight (1 = mean pooling), with its colour bar.

    Args:
        image_paths: N images.
        maps: [N, h, w] per-patch weights (upsampled to the image for display, nearest).
        masks: optional [N, H, W] bool object masks, drawn as contours.
        titles: optional per-image titles.
        title: the figure's title (say which model and seed the maps are from).
    """
    m = _numpy(maps).astype(np.float64)
    m = m * m.shape[-1] * m.shape[-2]  # weight / uniform weight
    vmax = float(m.max()) if m.size and m.max() > 0 else 1.0
    n = len(image_paths)
    fig = Figure(figsize=(2.4 * n + 0.8, 2.9))
    axes = np.atleast_1d(fig.subplots(1, n))
    shown = None
    for k, (ax, path) in enumerate(zip(axes, image_paths)):
        img = np.asarray(open_image(path))
        ax.imshow(img)
        shown = ax.imshow(m[k], cmap="inferno", alpha=0.55, extent=(0, img.shape[1], img.shape[0], 0),
                          interpolation="nearest", vmin=0, vmax=vmax)
        if masks is not None:
            mk = _numpy(masks[k]).astype(float)
            ax.contour(np.linspace(0, img.shape[1], mk.shape[1]), np.linspace(0, img.shape[0], mk.shape[0]), mk,
                       levels=[0.5], colors="cyan", linewidths=0.8)
        ax.set_title(titles[k] if titles else "", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    if shown is not None:
        fig.colorbar(shown, ax=list(axes), fraction=0.025, pad=0.02, label="weight / uniform")
    return fig


def _records(history: Mapping | Sequence[Mapping]) -> list[Mapping]:
    """Epoch records from a run's ``history`` (``{"records": [...]}``) or a zoo row's (a list)."""
    return list(history["records"] if isinstance(history, Mapping) else history)


def _series_styles(n: int) -> list[dict[str, Any]]:
    """Colour and line style for ``n`` series: tab10's colours, then tab20's, then dashed repeats,
    so that no two series of one figure look alike."""
    import matplotlib

    colours = matplotlib.colormaps["tab10" if n <= 10 else "tab20"].colors
    return [{"color": colours[i % len(colours)], "linestyle": ("-", "--", ":")[(i // len(colours)) % 3]}
            for i in range(n)]


def plot_val_curves(
    runs: Sequence[Mapping],
    *,
    label: str = "label",
    live: Mapping[str, Sequence[Mapping]] | None = None,
    zero_shot: float | None = None,
    title: str = "",
) -> Figure:
    """Validation mR per epoch for each label: the mean over the seeds that reached the epoch, their
    range shaded, and each seed's chosen (best) epoch starred, so a run that stops early or late is seen.

    Args:
        runs: runs with ``label`` and ``history`` (:func:`rsretrieval.zoo.evaluate_zoo`'s or
            :func:`rsretrieval.experiments.run_method`'s); ``best_epoch`` and ``val_mr``, if present, star it.
        live: ``{name: epoch records}`` of runs trained here, drawn dashed beside the others.
        zero_shot: the pretrained model's validation mR, drawn as a horizontal line.
        title: figure title.
    """
    fig = Figure(figsize=(7.2, 3.8))
    ax = fig.subplots()
    by_label: dict[str, list[Mapping]] = {}
    for r in runs:
        by_label.setdefault(str(r[label]), []).append(r)
    for (name, group), style in zip(by_label.items(), _series_styles(len(by_label))):
        histories = [_records(r["history"]) for r in group]
        length = max(len(h) for h in histories)
        curves = np.full((len(histories), length), np.nan)
        for k, h in enumerate(histories):
            curves[k, :len(h)] = [rec.get("val_mr") if rec.get("val_mr") is not None else np.nan for rec in h]
        epochs = np.arange(1, length + 1)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an epoch no seed validated: a gap
            mean, low, high = np.nanmean(curves, 0), np.nanmin(curves, 0), np.nanmax(curves, 0)
        ax.plot(epochs, mean, marker="o", ms=3, label=f"{name} ({len(histories)} seeds)", **style)
        if len(histories) > 1:
            ax.fill_between(epochs, low, high, alpha=0.15, color=style["color"])
        best = [(r["best_epoch"], r["val_mr"]) for r in group if r.get("best_epoch") and r.get("val_mr") is not None]
        if best:
            ax.plot(*zip(*best), "*", ms=9, color=style["color"], markeredgecolor="black", markeredgewidth=0.5)
    if any(r.get("best_epoch") for r in runs):
        ax.plot([], [], "*", ms=9, color="white", markeredgecolor="black", label="each seed's chosen epoch")
    if zero_shot is not None:
        ax.axhline(zero_shot, color="grey", linestyle="--", linewidth=1, label="zero-shot")
    for name, records in (live or {}).items():  # last, so that a live figure's newest line is its last
        pts = [(rec["epoch"], rec["val_mr"]) for rec in records if rec.get("val_mr") is not None]
        if pts:
            ax.plot(*zip(*pts), "s--", ms=3, color="black", label=f"{name} (trained here)")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation mR (%)")
    ax.set_title(title or "validation mR while training")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    return fig


def plot_learning_curves(points: Sequence[Mapping], *, title: str = "") -> Figure:
    """Test mR against the number of labelled training images, one line per method (mean over seeds),
    its bootstrap 95% CI over test images shaded; zero-shot as a dashed line with its band.

    Args:
        points: :func:`rsretrieval.experiments.learning_curve`'s points (``method``, ``n_train_images``,
            ``mr_mean``, ``ci_low``, ``ci_high``, ``n``).
    """
    fig = Figure(figsize=(6.4, 3.8))
    ax = fig.subplots()
    by_method: dict[str, list[Mapping]] = {}
    for p in points:
        by_method.setdefault(str(p["method"]), []).append(p)
    for name, pts in by_method.items():
        pts = sorted(pts, key=lambda p: p["n_train_images"])
        xs, ys = [p["n_train_images"] for p in pts], [p["mr_mean"] for p in pts]
        zero = name == "zero-shot"
        line, = ax.plot(xs, ys, "--" if zero else "o-", ms=4, color="gray" if zero else None,
                        label=f"{name} (no labels)" if zero else f"{name} ({pts[-1]['n']} seeds)")
        if all(p.get("ci_low") is not None for p in pts):
            ax.fill_between(xs, [p["ci_low"] for p in pts], [p["ci_high"] for p in pts], alpha=0.15,
                            color=line.get_color())
    ax.set_xscale("log")
    ax.set_xlabel("labelled training images")
    ax.set_ylabel("test mR (%)")
    ax.set_title(title or "how much labelled data each method needs")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return set_alt_text(fig, "Learning curves: " + "; ".join(
        f"{name} " + ", ".join(f"{p['mr_mean']:.1f} at {p['n_train_images']}" for p in
                               sorted(pts, key=lambda p: p["n_train_images"])) for name, pts in by_method.items()))


def plot_cost(points: Sequence[Mapping], *, title: str = "", metric: str = "val mR (%)") -> Figure:
    """What each method's score costs: its score against training seconds, and against peak memory.

    One colour and marker per point, named in a legend under both panels (labels written beside
    points overlap where costs are close); the log axes are labelled in plain numbers.

    Args:
        points: ``{"label", "seconds", "memory_bytes", "val_mr", "val_mr_std" (optional)}`` each
            (e.g. a zoo label's means over seeds, and ``bench``'s peak memory).
        title: figure title.
        metric: the y axis's name: which split's mR ``val_mr`` holds.
    """
    from matplotlib.ticker import LogLocator, NullFormatter, StrMethodFormatter

    fig = Figure(figsize=(8.4, 4.0))
    axes = fig.subplots(1, 2)
    styles = _series_styles(len(points))
    markers = "osD^vP*Xh<>"
    handles = []
    for ax, key, xlabel, scale in ((axes[0], "seconds", "training seconds (every epoch run)", 1.0),
                                   (axes[1], "memory_bytes", "peak training memory (MiB)", 2.0 ** -20)):
        for k, (p, style) in enumerate(zip(points, styles)):
            if p.get(key) is None:
                continue
            h = ax.errorbar(p[key] * scale, p["val_mr"], yerr=p.get("val_mr_std", 0.0), fmt=markers[k % len(markers)],
                            color=style["color"], capsize=3, ms=7, label=str(p["label"]))
            if ax is axes[0]:
                handles.append(h)
        xs = [p[key] * scale for p in points if p.get(key)]
        if xs and max(xs) > 5 * min(xs):  # a log axis only where the costs span orders of magnitude
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.xaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(metric)
        ax.margins(x=0.15)
    fig.suptitle(title or "what each method's score costs")
    fig.legend(handles=handles, loc="lower center", ncol=min(4, max(1, len(handles))), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    return fig
