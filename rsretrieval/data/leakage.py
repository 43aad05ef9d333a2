"""Leakage between datasets: images of one dataset's test split that are near-duplicates of images in
another's train split (RSICD and RSITMD share images, so a model trained on one and tested on the
other has seen part of its test set).

Robust to re-encoding (TIFF to JPEG), resizing (256 to 224 pixels) and small crops, in two steps:

1. **Candidates.** Each image is summarised by a 16 x 16 grey thumbnail of its central 70%, and
   also of its four 90% corner crops; a test image's candidates are the train images whose
   thumbnails correlate best with its own, either image taken as the crop (``candidates`` each).
2. **Verification.** A candidate pair is a duplicate when one image, at some scale between 0.85
   and 1 of the other (a crop of up to 15% of its side), matches a region of the other: the
   largest normalised cross-correlation (scikit-image's ``match_template``) of their high-pass
   filtered grey images at 96 pixels. High-pass filtering keeps edges and texture, so two different
   images of the same kind of scene (flat sea, uniform fields) do not match; the same image does.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from rsretrieval.data.dataset import open_image
from rsretrieval.errors import DatasetFormatError, DatasetNotFoundError, lazy_import

THRESHOLD = 0.85  # between planted copies (>= 0.90 on SynthRS) and different images (<= 0.66); docs/design.md
_SIDE = 96  # verification resolution
_KEEP = 128  # each image is kept in grey at this side, to resize from
_SCALES = np.round(np.arange(0.85, 1.0001, 0.01), 2)


def _thumb(img: Image.Image, frac: float = 0.7, n: int = 16) -> np.ndarray:
    w, h = img.size
    box = ((1 - frac) / 2 * w, (1 - frac) / 2 * h, (1 + frac) / 2 * w, (1 + frac) / 2 * h)
    return np.asarray(img.crop(box).resize((n, n), Image.BOX), dtype=np.float32).ravel()


def _descriptors(img: Image.Image) -> np.ndarray:
    """[5, 256]: the centre thumbnail of the image, then of its four 90% corner crops (z-normalised)."""
    w, h = img.size
    cw, ch = 0.9 * w, 0.9 * h
    crops = [img] + [img.crop((x, y, x + cw, y + ch)) for x, y in ((0, 0), (w - cw, 0), (0, h - ch), (w - cw, h - ch))]
    return _z(np.stack([_thumb(c) for c in crops]))


def _z(a: np.ndarray) -> np.ndarray:
    a = a - a.mean(-1, keepdims=True)
    return a / (np.linalg.norm(a, axis=-1, keepdims=True) + 1e-6)


def _high_pass(img: Image.Image, side: int) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    a = np.asarray(img.resize((side, side), Image.BILINEAR), dtype=np.float32) / 255
    return a - gaussian_filter(a, 3)


def match_score(a: Image.Image, b: Image.Image) -> float:
    """How well one of two grey images, scaled by 0.85 to 1 against the other, matches a region of it:
    the best normalised cross-correlation of their high-pass filtered centres (1: the same pixels)."""
    match_template = lazy_import("skimage.feature", "scikit-image").match_template
    best = -1.0
    for x, y in ((a, b), (b, a)):
        target = _high_pass(y, _SIDE)

        def at(s: float) -> float:
            size = round(_SIDE * s)
            side, off = round(_SIDE * 0.7 * s), round(_SIDE * 0.15 * s)
            template = _high_pass(x, size)[off:off + side, off:off + side]
            return float(match_template(target, template).max())

        coarse = {s: at(s) for s in _SCALES[::3]}  # every 0.03, then the neighbours of the best
        s0 = max(coarse, key=coarse.get)
        fine = [s for s in _SCALES if abs(s - s0) < 0.025 and s not in coarse]
        best = max(best, *coarse.values(), *(at(s) for s in fine))
    return best


def find_leakage(test_images: Sequence[str | Path], train_images: Sequence[str | Path], *,
                 threshold: float = THRESHOLD, candidates: int = 3, progress: bool = True) -> list[dict[str, Any]]:
    """The test images that are near-duplicates of train images.

    Args:
        test_images, train_images: image files (unreadable files raise, naming the file).
        threshold: the least :func:`match_score` of a duplicate.
        candidates: train images verified per test image.

    Returns:
        ``[{"test_image", "train_image", "score"}]``, best score first (one row per pair found).
    """
    if not 0 < threshold <= 1 or candidates < 1:
        raise ValueError(f"need 0 < threshold <= 1 and candidates >= 1, got {threshold} and {candidates}")

    def grey(paths: Sequence[str | Path], what: str) -> list[Image.Image]:
        return [open_image(p).convert("L").resize((_KEEP, _KEEP), Image.BILINEAR)
                for p in tqdm(paths, desc=f"reading {what}", disable=not progress)]

    test, train = grey(test_images, "test images"), grey(train_images, "train images")
    if not test or not train:
        return []
    d_test = np.stack([_descriptors(im) for im in test])  # [n, 5, 256]
    d_train = np.stack([_descriptors(im) for im in train])
    k = min(candidates, len(train))
    pairs: list[tuple[int, int]] = []
    for start in range(0, len(test), 256):  # test as the crop of a train image, and the other way round
        block = d_test[start:start + 256]
        sim = np.maximum(np.einsum("qd,nkd->qnk", block[:, 0], d_train).max(-1),
                         np.einsum("qkd,nd->qnk", block, d_train[:, 0]).max(-1))
        top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        pairs += [(start + q, int(j)) for q in range(len(block)) for j in top[q]]
    found = []
    for i, j in tqdm(pairs, desc="verifying candidates", disable=not progress):
        score = match_score(test[i], train[j])
        if score >= threshold:
            found.append({"test_image": str(Path(test_images[i]).resolve()),
                          "train_image": str(Path(train_images[j]).resolve()), "score": round(score, 4)})
    return sorted(found, key=lambda r: -r["score"])


def excluded_paths(exclude: str | Path | Iterable[str | Path]) -> set[str]:
    """The resolved paths named by ``exclude``: a leakage JSON (both sides of each pair, absolute paths
    as ``data leakage`` writes them) or image paths (relative ones from the working directory).
    A list that does not exist, a relative path in a list (it would mean another folder from another
    working directory) or an image that does not exist is an error, never an exclusion of nothing."""
    if isinstance(exclude, (str, Path)) and Path(exclude).suffix.lower() == ".json":
        path = Path(exclude)
        if not path.is_file():
            raise DatasetNotFoundError(f"exclude={str(path)!r}: no leakage list there; write one with "
                                       f"`python -m rsretrieval data leakage ... --json {path}`")
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
            names = [r[key] for r in rows for key in ("test_image", "train_image")]
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise DatasetFormatError(f"{path} is not a leakage list (a JSON list of {{'test_image', 'train_image', "
                                     f"'score'}} written by `data leakage --json`): {str(exc)[:120]}") from None
        relative = next((n for n in names if not Path(n).is_absolute()), None)
        if relative is not None:
            raise DatasetFormatError(f"{path}: {relative!r} is a relative path, which names another file from "
                                     "another working directory; write the list again with `data leakage --json` "
                                     "(it writes absolute paths), or make its paths absolute")
        return {str(Path(n).resolve()) for n in names}
    names = [exclude] if isinstance(exclude, (str, Path)) else list(exclude)
    missing = [n for n in names if not Path(n).is_file()]
    if missing:
        raise DatasetNotFoundError(f"exclude= names {len(missing)} image(s) that do not exist, e.g. "
                                   f"{str(Path(missing[0]).resolve())!r}: a leakage list is a .json file; image "
                                   "paths are relative to the working directory")
    return {str(Path(n).resolve()) for n in names}
