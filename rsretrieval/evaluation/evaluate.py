"""Encode a caption dataset with a CLIP-like model and score it with the retrieval protocol.

The protocol (``docs/protocol.md``): every image is encoded once, every caption once, the gallery is
the whole split, cosine similarity ranks it, and :mod:`rsretrieval.evaluation.metrics` turns the
``[n_images, n_texts]`` similarity into the six recalls (percent), mR and rsum, using the
dataset's explicit caption -> image index as ground truth.

The model only needs ``encode_image(images)`` and ``encode_text(tokens)`` (open_clip's ``CLIP``
and ``CustomTextCLIP`` have both), so adapted models, side-branch models and test fakes all work.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from rsretrieval.data.dataset import CaptionDataset, ImageDataset
from rsretrieval.evaluation.metrics import (
    DEFAULT_TIES,
    METRIC_KEYS,
    RECALL_KEYS,
    Ranks,
    metrics_from_ranks,
    rank_stats,
    retrieval_ranks,
)
from rsretrieval.models.utils import autocast, eval_mode

_logger = logging.getLogger(__name__)

__all__ = [
    "EvalResult",
    "compare_table",
    "decoded_images",
    "encode_images",
    "encode_texts",
    "evaluate",
    "evaluate_features",
    "format_metrics",
]


# ----------------------------------------------------------------------------------------------
# Encoding


def _resolve_device(model: nn.Module, device: torch.device | str | None) -> torch.device:
    """The device to put inputs on; checks the model is already there (we never move it)."""
    param = next(iter(model.parameters()), None)
    model_device = param.device if param is not None else None
    if device is None:
        return model_device if model_device is not None else torch.device("cpu")
    dev = torch.device(device)
    if model_device is not None and (
        model_device.type != dev.type or (dev.index is not None and model_device.index != dev.index)
    ):
        raise ValueError(
            f"the model's parameters are on {model_device} but device={dev}. Move the model first "
            f"(model.to({str(dev)!r})) or pass device={str(model_device)!r}."
        )
    return dev


def _image_view(
    data: CaptionDataset | torch.utils.data.Dataset, transform: Callable | None
) -> torch.utils.data.Dataset:
    if isinstance(data, CaptionDataset):
        if transform is None:
            raise ValueError(
                "encode_images needs transform= (e.g. the preprocess from open_clip) for a CaptionDataset"
            )
        return data.images(transform)
    if isinstance(data, ImageDataset):
        if transform is not None and data.transform is not None and transform is not data.transform:
            raise ValueError(
                "the image view already has a transform; pass transform=None or a view without one"
            )
        if data.transform is None:
            if transform is None:
                raise ValueError("the image view has no transform; pass transform=")
            return data.data.images(transform)
        return data
    if transform is not None:
        raise ValueError("transform= only applies to a CaptionDataset or its .images() view")
    return data


def decoded_images(data: CaptionDataset, transform: Callable, limit_bytes: int = 2**29):
    """``data``'s images decoded and transformed once, as a list of items (``data.images(transform)``,
    decoded lazily, where they would take more than ``limit_bytes``): for encoding one split many
    times, e.g. once an epoch."""
    view = data.images(transform)
    if not len(view):
        return view
    first = view[0]
    if len(view) * first["image"].nbytes > limit_bytes:
        return view
    return [first] + [view[i] for i in range(1, len(view))]


def encode_images(
    model: nn.Module,
    dataset_or_view: CaptionDataset | torch.utils.data.Dataset,
    *,
    transform: Callable | None = None,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> torch.Tensor:
    """Encode each image of a dataset once (the gallery is every image of the split).

    Args:
        model: a CLIP-like module with ``encode_image``, already on ``device``.
        dataset_or_view: a :class:`CaptionDataset`, its ``.images()`` view, or any dataset whose
            items are dicts with an ``"image"`` tensor (and optionally ``"image_index"``).
        transform: PIL image -> tensor, needed unless the view already has one.
        batch_size: images per forward pass.
        device: where inputs go; defaults to the model's device. The model is never moved.
        num_workers: DataLoader workers for decoding.
        progress: show a tqdm bar.

    Returns:
        ``[n_images, dim]`` float32 CPU tensor of L2-normalised features, row i = image i.
    """
    dev = _resolve_device(model, device)
    view = _image_view(dataset_or_view, transform)
    loader = torch.utils.data.DataLoader(view, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    rows: list[torch.Tensor] = []
    order: list[torch.Tensor] = []
    with eval_mode(model), torch.inference_mode(), autocast(dev):
        for batch in tqdm(loader, desc="encode images", disable=not progress, leave=False):
            images = batch["image"] if isinstance(batch, Mapping) else batch
            rows.append(model.encode_image(images.to(dev, non_blocking=True)).float().cpu())
            if isinstance(batch, Mapping) and "image_index" in batch:
                order.append(torch.as_tensor(batch["image_index"]))
    if not rows:
        raise ValueError("encode_images got an empty dataset")
    feats = F.normalize(torch.cat(rows), dim=-1)  # normalise in float32, after autocast
    if order:
        # Place rows by the dataset's own index, so a view that reorders cannot misalign rows.
        index = torch.cat(order)
        if not torch.equal(index.sort().values, torch.arange(len(index))):
            raise ValueError("the view's image_index values are not a permutation of 0..n-1")
        feats = feats[index.argsort()]
    return feats


def encode_texts(
    model: nn.Module,
    captions: Sequence[str],
    *,
    tokenizer: Callable[[list[str]], torch.Tensor],
    batch_size: int = 256,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Encode each caption once, in order (duplicates included: each is its own query).

    Args:
        model: a CLIP-like module with ``encode_text``, already on ``device``.
        captions: the caption strings.
        tokenizer: list of strings -> ``[batch, context]`` token tensor (``open_clip.get_tokenizer``).
        batch_size: captions per forward pass.
        device: where inputs go; defaults to the model's device.
        progress: show a tqdm bar.

    Returns:
        ``[n_texts, dim]`` float32 CPU tensor of L2-normalised features, row j = caption j.
    """
    dev = _resolve_device(model, device)
    captions = list(captions)
    rows: list[torch.Tensor] = []
    starts = range(0, len(captions), batch_size)
    with eval_mode(model), torch.inference_mode(), autocast(dev):
        for start in tqdm(starts, desc="encode texts", disable=not progress, leave=False):
            tokens = tokenizer(captions[start : start + batch_size])
            rows.append(model.encode_text(tokens.to(dev, non_blocking=True)).float().cpu())
    if not rows:
        raise ValueError("encode_texts got no captions")
    return F.normalize(torch.cat(rows), dim=-1)


# ----------------------------------------------------------------------------------------------
# Results


@dataclass
class EvalResult:
    """What :func:`evaluate` measured.

    Attributes:
        metrics: the six recalls, ``mr`` and ``rsum`` (percent), ``i2t/t2i_median_rank`` and
            ``i2t/t2i_mean_rank`` (1-based), ``n_images`` and ``n_captions``.
        per_scene: scene -> the six recalls, ``mr``, ``rsum``, ``n_images``, ``n_captions`` for the
            queries of that scene (its images for i2t, its images' captions for t2i), each ranked
            against the **full** gallery, not the scene's own images. A scene's numbers therefore
            add up to the overall ones (weighted by query counts) and are not inflated by a
            smaller gallery.
        similarity: ``[n_images, n_texts]`` cosine similarities (CPU float32).
        i2t_ranks: the standing of each image query (``.rank()`` gives 0-based ranks).
        t2i_ranks: the standing of each caption query.
        ties: the tie rule the metrics were computed with (see :mod:`.metrics`).
    """

    metrics: dict[str, float]
    per_scene: dict[str, dict[str, float]] = field(default_factory=dict)
    similarity: torch.Tensor | None = field(default=None, repr=False)
    i2t_ranks: Ranks | None = field(default=None, repr=False)
    t2i_ranks: Ranks | None = field(default=None, repr=False)
    ties: str = DEFAULT_TIES

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable metrics and per-scene metrics (no similarity, no ranks)."""
        return {
            "ties": self.ties,
            "metrics": {k: _plain(v) for k, v in self.metrics.items()},
            "per_scene": {s: {k: _plain(v) for k, v in m.items()} for s, m in self.per_scene.items()},
        }

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def table(self, max_scenes: int | None = None) -> str:
        """A short printable summary: the headline line, ranks, and a per-scene table by mR."""
        m = self.metrics
        lines = [
            f"{m.get('n_images', '?')} images, {m.get('n_captions', '?')} captions",
            format_metrics(m),
        ]
        if "i2t_median_rank" in m:
            lines.append(
                f"median rank i2t {m['i2t_median_rank']:.0f} t2i {m['t2i_median_rank']:.0f} | "
                f"mean rank i2t {m['i2t_mean_rank']:.1f} t2i {m['t2i_mean_rank']:.1f}"
            )
        if self.per_scene:
            scenes = sorted(self.per_scene.items(), key=lambda kv: -kv[1]["mr"])
            if max_scenes is not None:
                scenes = scenes[:max_scenes]
            width = max(len("scene"), *(len(s) for s, _ in scenes))
            lines.append(f"{'scene':<{width}}  images  captions  i2t R@1  t2i R@1     mR")
            for s, sm in scenes:
                lines.append(
                    f"{s:<{width}}  {sm['n_images']:>6}  {sm['n_captions']:>8}  "
                    f"{sm['i2t_r1']:>7.1f}  {sm['t2i_r1']:>7.1f}  {sm['mr']:>5.1f}"
                )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _plain(v: Any) -> Any:
    """numpy/torch scalars -> Python numbers, for json."""
    if isinstance(v, (np.generic, torch.Tensor)):
        return v.item()
    return v


def _per_scene(data: CaptionDataset, i2t_ranks: Ranks, t2i_ranks: Ranks) -> dict[str, dict[str, float]]:
    image_scenes = np.asarray(data.scenes, dtype=object)
    caption_scenes = image_scenes[np.asarray(data.text_to_image, dtype=np.int64)]
    out: dict[str, dict[str, float]] = {}
    for scene in data.scene_names:
        img_mask = torch.from_numpy(image_scenes == scene)
        cap_mask = torch.from_numpy(caption_scenes == scene)
        m = metrics_from_ranks(i2t_ranks[img_mask], t2i_ranks[cap_mask])
        m["n_images"] = int(img_mask.sum())
        m["n_captions"] = int(cap_mask.sum())
        out[scene] = m
    return out


def evaluate_features(
    image_features: torch.Tensor | np.ndarray,
    text_features: torch.Tensor | np.ndarray,
    data: CaptionDataset,
    *,
    per_scene: bool = True,
    ties: str = DEFAULT_TIES,
) -> EvalResult:
    """Score pre-computed (e.g. cached) features with the retrieval protocol.

    Args:
        image_features: ``[n_images, dim]``, row i = ``data.image_paths[i]``.
        text_features: ``[n_texts, dim]``, row j = ``data.captions[j]``.
        data: the split the features come from; its ``text_to_image`` is the ground truth.
        per_scene: also compute the per-scene breakdown.
        ties: how tied candidates are ranked (:data:`rsretrieval.evaluation.metrics.TIE_RULES`).

    Returns:
        An :class:`EvalResult`. Features are L2-normalised here (again), so the similarity is
        cosine whatever was cached.
    """
    img = F.normalize(torch.as_tensor(image_features).float().cpu(), dim=-1)
    txt = F.normalize(torch.as_tensor(text_features).float().cpu(), dim=-1)
    if img.shape[0] != data.num_images or txt.shape[0] != data.num_captions:
        raise ValueError(
            f"features do not match {data!r}: {img.shape[0]} image rows for {data.num_images} images, "
            f"{txt.shape[0]} text rows for {data.num_captions} captions"
        )
    if img.shape[1] != txt.shape[1]:
        raise ValueError(f"image features have dim {img.shape[1]} but text features {txt.shape[1]}")
    similarity = img @ txt.T  # [n_images, n_texts]
    i2t, t2i = retrieval_ranks(similarity, data.text_to_image, ties=ties)
    metrics = metrics_from_ranks(i2t, t2i)
    for name, ranks in (("i2t", i2t), ("t2i", t2i)):
        metrics |= {f"{name}_{k}": v for k, v in rank_stats(ranks).items()}
    metrics["n_images"] = data.num_images
    metrics["n_captions"] = data.num_captions
    scenes = _per_scene(data, i2t, t2i) if per_scene else {}
    return EvalResult(metrics=metrics, per_scene=scenes, similarity=similarity, i2t_ranks=i2t, t2i_ranks=t2i,
                      ties=ties)


def evaluate(
    model: nn.Module,
    data: CaptionDataset,
    *,
    transform: Callable,
    tokenizer: Callable[[list[str]], torch.Tensor],
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    per_scene: bool = True,
    progress: bool = True,
    num_workers: int = 0,
    ties: str = DEFAULT_TIES,
    images: Any = None,
) -> EvalResult:
    """Zero-shot or fine-tuned retrieval evaluation of ``model`` on one split.

    Each image and each caption is encoded once; the full split is the gallery for both
    directions. Select checkpoints on a validation split, never on the test split you report.

    Args:
        model: a CLIP-like module with ``encode_image``/``encode_text``, already on ``device``.
            Its train/eval modes are restored afterwards.
        data: the split to evaluate.
        transform: PIL image -> tensor (open_clip's ``preprocess_val``).
        tokenizer: ``open_clip.get_tokenizer(name)`` or any list[str] -> token tensor.
        batch_size: images per forward pass (captions go 256 at a time).
        device: where inputs go (a string or ``torch.device``).
        per_scene: also compute the per-scene breakdown.
        progress: show tqdm bars.
        num_workers: DataLoader workers for image decoding.
        ties: how tied candidates are ranked (:data:`rsretrieval.evaluation.metrics.TIE_RULES`).
        images: ``data``'s images already decoded and transformed (:func:`decoded_images`), for a
            split scored many times; ``transform`` is then not applied.

    Returns:
        An :class:`EvalResult`; ``print(result.table())`` for a summary.
    """
    image_features = encode_images(
        model, data if images is None else images, transform=transform if images is None else None,
        batch_size=batch_size, device=device, num_workers=num_workers, progress=progress,
    )
    text_features = encode_texts(model, data.captions, tokenizer=tokenizer, device=device, progress=progress)
    result = evaluate_features(image_features, text_features, data, per_scene=per_scene, ties=ties)
    _logger.info("%s/%s: %s", data.name, data.split, format_metrics(result.metrics))
    return result


# ----------------------------------------------------------------------------------------------
# Formatting

_LABELS = {
    "i2t_r1": "i2t R@1", "i2t_r5": "R@5", "i2t_r10": "R@10",
    "t2i_r1": "t2i R@1", "t2i_r5": "R@5", "t2i_r10": "R@10",
}


def format_metrics(metrics: Mapping[str, Any], digits: int = 1) -> str:
    """One line: ``i2t R@1 9.7 R@5 27.4 R@10 40.0 | t2i R@1 8.1 R@5 30.2 R@10 47.9 | mR 23.9 rsum 143.3``."""
    f = f".{digits}f"
    i2t = " ".join(f"{_LABELS[k]} {metrics[k]:{f}}" for k in RECALL_KEYS[:3])
    t2i = " ".join(f"{_LABELS[k]} {metrics[k]:{f}}" for k in RECALL_KEYS[3:])
    rsum = metrics.get("rsum", sum(metrics[k] for k in RECALL_KEYS))
    mr = metrics.get("mr", rsum / len(RECALL_KEYS))
    return f"{i2t} | {t2i} | mR {mr:{f}} rsum {rsum:{f}}"


_COLUMNS = {
    "i2t_r1": "i2t@1", "i2t_r5": "i2t@5", "i2t_r10": "i2t@10",
    "t2i_r1": "t2i@1", "t2i_r5": "t2i@5", "t2i_r10": "t2i@10",
    "mr": "mR", "rsum": "rsum",
}


def compare_table(
    rows: Mapping[str, Mapping[str, Any] | EvalResult],
    paper: Mapping[str, float] | None = None,
    *,
    paper_name: str = "",
    digits: int = 2,
) -> str:
    """A plain-text table of our numbers, with an optional row of published numbers.

    Args:
        rows: method name -> metrics dict (or :class:`EvalResult`). Missing keys print as ``-``.
        paper: published numbers with the same keys (often only ``mr``). Since rsum = 6 mR by
            definition, the one missing is filled from the other.
        paper_name: what the paper row is called; it is always suffixed with ``(paper)``.
        digits: decimals (papers print two).

    Returns:
        The table, one row per method, the paper row last.
    """
    table: list[tuple[str, Mapping[str, Any]]] = [
        (name, r.metrics if isinstance(r, EvalResult) else r) for name, r in rows.items()
    ]
    if paper is not None:
        p = dict(paper)
        if "mr" in p and "rsum" not in p:
            p["rsum"] = 6 * p["mr"]
        elif "rsum" in p and "mr" not in p:
            p["mr"] = p["rsum"] / 6
        table.append((f"{paper_name} (paper)".strip(), p))

    def cell(m: Mapping[str, Any], key: str) -> str:
        return f"{float(m[key]):.{digits}f}" if key in m and m[key] is not None else "-"

    name_w = max(len("method"), *(len(n) for n, _ in table)) if table else len("method")
    widths = {k: max(len(h), digits + 5) for k, h in _COLUMNS.items()}
    header = f"{'method':<{name_w}}  " + "  ".join(f"{h:>{widths[k]}}" for k, h in _COLUMNS.items())
    lines = [header, "-" * len(header)]
    for name, m in table:
        lines.append(f"{name:<{name_w}}  " + "  ".join(f"{cell(m, k):>{widths[k]}}" for k in _COLUMNS))
    return "\n".join(lines)


assert tuple(_COLUMNS) == METRIC_KEYS  # the table shows exactly the protocol's metrics
