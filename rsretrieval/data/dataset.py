"""The one in-memory form of every caption dataset, and its torch views.

A :class:`CaptionDataset` is one split of one dataset: a list of images, a list of captions and
an explicit caption -> image index. The evaluation protocol (reference: best rank over an
image's captions) needs that index; nothing here assumes five captions per image or any order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from rsretrieval.errors import DatasetFormatError


# Images declaring more pixels than this are refused before decoding (a "decompression bomb" would fill the
# memory). PIL's own default; raise it for genuine large scenes: rsretrieval.data.dataset.MAX_IMAGE_PIXELS = ...
MAX_IMAGE_PIXELS = 178_956_970


def open_image(path: str | Path) -> Image.Image:
    """Open an image as RGB, or raise a :class:`DatasetFormatError` naming the file and the fix."""
    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise Image.DecompressionBombError(f"{img.width}x{img.height} pixels")
            return img.convert("RGB")
    except Image.DecompressionBombError as exc:
        raise DatasetFormatError(
            f"image {path} declares more pixels than rsretrieval decodes ({str(exc)[:120]}; the limit is "
            f"rsretrieval.data.dataset.MAX_IMAGE_PIXELS = {MAX_IMAGE_PIXELS:,}). If the image is genuine, raise "
            "that limit; otherwise replace the file."
        ) from None
    except FileNotFoundError as exc:
        raise DatasetFormatError(
            f"image {path} is missing. Re-extract the dataset archive, or run "
            "`python -m rsretrieval data check NAME --root DIR` to list every missing file."
        ) from exc
    except OSError as exc:  # PIL.UnidentifiedImageError and truncated files
        raise DatasetFormatError(
            f"image {path} cannot be decoded ({exc}). Replace the file with a good copy, or load "
            "the dataset with on_error='skip' to leave it out."
        ) from exc


@dataclass
class CaptionDataset:
    """One split of an image-caption dataset.

    Attributes:
        name: the dataset's registry name (``rsitmd``, ``synthrs``, ...).
        split: ``train``, ``val``, ``test`` or ``all``.
        image_paths: one path per image.
        scenes: one normalised scene label per image (``unknown`` where none is known).
        captions: one string per caption.
        text_to_image: for each caption, the index of its image in ``image_paths``.
        skipped: one note per record or caption of this split left out with ``on_error='skip'``.
        metadata: extra per-dataset facts (e.g. the path of object masks for SynthRS).
    """

    name: str
    split: str
    image_paths: list[Path]
    scenes: list[str]
    captions: list[str]
    text_to_image: list[int]
    skipped: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.scenes) != len(self.image_paths):
            raise ValueError(f"{len(self.scenes)} scenes for {len(self.image_paths)} images")
        if len(self.text_to_image) != len(self.captions):
            raise ValueError(f"{len(self.text_to_image)} caption->image entries for {len(self.captions)} captions")
        n = len(self.image_paths)
        bad = [j for j, i in enumerate(self.text_to_image) if not 0 <= i < n]
        if bad:
            raise ValueError(f"captions {bad[:5]} point outside the {n} images")

    @property
    def num_images(self) -> int:
        return len(self.image_paths)

    @property
    def num_captions(self) -> int:
        return len(self.captions)

    @property
    def image_to_texts(self) -> list[list[int]]:
        """For each image, the indices of its captions."""
        out: list[list[int]] = [[] for _ in self.image_paths]
        for j, i in enumerate(self.text_to_image):
            out[i].append(j)
        return out

    @property
    def scene_names(self) -> list[str]:
        """The distinct scene labels, sorted."""
        return sorted(set(self.scenes))

    def caption_scenes(self) -> list[str]:
        """The scene of each caption's image."""
        return [self.scenes[i] for i in self.text_to_image]

    def subset(self, image_indices: Sequence[int], split: str | None = None) -> CaptionDataset:
        """A new dataset holding the given images (in that order) and all their captions."""
        keep = list(image_indices)
        new_index = {old: new for new, old in enumerate(keep)}
        captions, t2i = [], []
        for j, i in enumerate(self.text_to_image):
            if i in new_index:
                captions.append(self.captions[j])
                t2i.append(new_index[i])
        return CaptionDataset(
            name=self.name,
            split=split or self.split,
            image_paths=[self.image_paths[i] for i in keep],
            scenes=[self.scenes[i] for i in keep],
            captions=captions,
            text_to_image=t2i,
            skipped=list(self.skipped),
            metadata=dict(self.metadata),
        )

    def pairs(self, transform: Callable | None = None) -> PairDataset:
        """Training view: one item per (image, caption) pair."""
        return PairDataset(self, transform)

    def images(self, transform: Callable | None = None) -> ImageDataset:
        """Evaluation view: each image once."""
        return ImageDataset(self, transform)

    def summary(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for s in self.scenes:
            counts[s] = counts.get(s, 0) + 1
        per_image = np.bincount(np.asarray(self.text_to_image, dtype=np.int64), minlength=self.num_images)
        return {
            "name": self.name,
            "split": self.split,
            "images": self.num_images,
            "captions": self.num_captions,
            "unique_captions": len(set(self.captions)),
            "captions_per_image": {int(k): int(v) for k, v in zip(*np.unique(per_image, return_counts=True))},
            "scenes": dict(sorted(counts.items())),
            "skipped": len(self.skipped),
        }

    def __repr__(self) -> str:
        return (
            f"CaptionDataset(name={self.name!r}, split={self.split!r}, images={self.num_images}, "
            f"captions={self.num_captions}, scenes={len(set(self.scenes))})"
        )


class PairDataset(torch.utils.data.Dataset):
    """Image-caption pairs for training. Items: ``{"image", "caption", "image_index", "scene"}``."""

    def __init__(self, data: CaptionDataset, transform: Callable | None = None) -> None:
        self.data = data
        self.transform = transform

    def __len__(self) -> int:
        return self.data.num_captions

    def __getitem__(self, j: int) -> dict[str, Any]:
        i = self.data.text_to_image[j]
        img = open_image(self.data.image_paths[i])
        return {
            "image": self.transform(img) if self.transform else img,
            "caption": self.data.captions[j],
            "image_index": i,
            "scene": self.data.scenes[i],
        }


class ImageDataset(torch.utils.data.Dataset):
    """Each image once, for evaluation and indexing. Items: ``{"image", "image_index", "scene"}``."""

    def __init__(self, data: CaptionDataset, transform: Callable | None = None) -> None:
        self.data = data
        self.transform = transform

    def __len__(self) -> int:
        return self.data.num_images

    def __getitem__(self, i: int) -> dict[str, Any]:
        img = open_image(self.data.image_paths[i])
        return {
            "image": self.transform(img) if self.transform else img,
            "image_index": i,
            "scene": self.data.scenes[i],
        }


def normalize_scene(name: str) -> str:
    """``DenseResidential``, ``dense_residential`` and ``dense residential`` -> ``denseresidential``."""
    return "".join(ch for ch in name.lower() if ch.isalnum())


def caption_statistics(captions: Sequence[str]) -> dict[str, Any]:
    """Length and vocabulary facts of a list of captions (words = lower-cased alphabetic tokens)."""
    import re

    words = [re.findall(r"[a-z]+", c.lower()) for c in captions]
    lengths = np.array([len(w) for w in words])
    vocab: dict[str, int] = {}
    for ws in words:
        for token in ws:
            vocab[token] = vocab.get(token, 0) + 1
    return {
        "captions": len(captions),
        "unique_captions": len(set(captions)),
        "mean_words": float(lengths.mean()) if len(lengths) else 0.0,
        "max_words": int(lengths.max()) if len(lengths) else 0,
        "vocabulary": len(vocab),
        "top_words": sorted(vocab.items(), key=lambda kv: -kv[1])[:20],
        "lengths": lengths.tolist(),
    }


def nested_subset(data: CaptionDataset, n: int, seed: int = 0) -> CaptionDataset:
    """``n`` images of ``data``, the same share of every scene; a smaller ``n`` gives a subset of a larger.

    Each scene's images are ranked once by a seeded permutation and the subset takes, scene by
    scene, the first ones, rounding so that the shares add up to ``n`` exactly.
    """
    if not 1 <= n <= data.num_images:
        raise ValueError(f"need 1 <= n <= {data.num_images} images, got {n}")
    scenes = sorted(set(data.scenes))
    order = {s: [i for i in range(data.num_images) if data.scenes[i] == s] for s in scenes}
    for k, s in enumerate(scenes):
        perm = np.random.default_rng([seed, 104729, k]).permutation(len(order[s]))
        order[s] = [order[s][j] for j in perm]
    quota = {s: n * len(order[s]) / data.num_images for s in scenes}
    take = {s: int(quota[s]) for s in scenes}
    for s in sorted(scenes, key=lambda s: (-(quota[s] - take[s]), s))[: n - sum(take.values())]:
        take[s] += 1
    keep = sorted(i for s in scenes for i in order[s][: take[s]])
    return data.subset(keep)
