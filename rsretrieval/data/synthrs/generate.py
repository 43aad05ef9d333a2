"""Writing a SynthRS dataset to disk: seeded, resumable, atomic."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from rsretrieval.data.synthrs.canvas import OBJECT_SCALE
from rsretrieval.data.synthrs.captions import CAPTION_CLAUSES, UNNAMED_SHARE, make_captions
from rsretrieval.data.synthrs.scenes import render_scene
from rsretrieval.data.synthrs.vocabulary import (
    DOMAINS,
    LANDMARKS,
    OBJECTS,
    PALETTE,
    VERSIONS,
    domain_scenes,
)
from rsretrieval.errors import SynthRSExistsError

# ----------------------------------------------------------------------------- dataset files


# Regimes of the rs domain in which a CMER component may matter more than in the default one.
REGIMES: dict[str, dict[str, float]] = {
    "small-targets": {"object_scale": 0.5},  # objects half as long: what a focus layer is for
    "scene-free-captions": {"unnamed_share": 1.0},  # no caption names its scene: what scene captions add
    "two-clause-captions": {"caption_clauses": 2},  # each caption tells two things: how much captions say
}


# What each version of the rs domain's dataset is made of. Image i is the same in every version (a
# pure function of seed and i): a version sets the size, the split and how much a caption says.
# 1.0: the course's first stand-in (1,050 / 144 / 306). 3.0: RSITMD's shape (3,420 / 864 / 468; RSITMD
# 4,291 train+val / 452 test) with two statements a caption, what the regime study found binding.
RS_EDITIONS: dict[str, dict[str, Any]] = {
    "1.0": {"n_images": 1500, "split_fractions": (0.7, 0.1, 0.2), "caption_clauses": 1},
    "3.0": {"n_images": 4752, "split_fractions": (0.72, 0.18, 0.10), "caption_clauses": 2},
}
_OTHER_DOMAINS = {"n_images": 1500, "split_fractions": (0.7, 0.1, 0.2), "caption_clauses": CAPTION_CLAUSES}


def edition(domain: str = "rs", version: str | None = None) -> dict[str, Any]:
    """The defaults of ``domain``'s dataset at generator ``version`` (default: the current one, :data:`VERSIONS`)."""
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, not {domain!r}")
    version = VERSIONS[domain] if version is None else str(version)
    known = list(RS_EDITIONS) if domain == "rs" else [VERSIONS[domain]]
    if version not in known:
        raise ValueError(f"SynthRS {domain} has no version {version!r}; known: {', '.join(known)}")
    return {"version": version, **(RS_EDITIONS[version] if domain == "rs" else _OTHER_DOMAINS)}


def _params(n_images: int | None, image_size: int, seed: int, domain: str, split_fractions: Sequence[float] | None,
            object_scale: float = OBJECT_SCALE, unnamed_share: float = UNNAMED_SHARE,
            caption_clauses: int | None = None, version: str | None = None) -> dict[str, Any]:
    base = edition(domain, version)
    n_images = base["n_images"] if n_images is None else n_images
    split_fractions = base["split_fractions"] if split_fractions is None else split_fractions
    caption_clauses = base["caption_clauses"] if caption_clauses is None else caption_clauses
    if n_images < 1 or image_size < 32:
        raise ValueError(f"need n_images >= 1 and image_size >= 32, got {n_images} and {image_size}")
    fr = [float(f) for f in split_fractions]
    if len(fr) != 3 or min(fr) < 0 or abs(sum(fr) - 1) > 1e-6:
        raise ValueError(f"split_fractions must be three non-negative numbers (train, val, test) "
                         f"summing to 1, not {fr}")
    if not 0.1 <= object_scale <= 2 or not 0 <= unnamed_share <= 1:
        raise ValueError(f"need 0.1 <= object_scale <= 2 and 0 <= unnamed_share <= 1, got {object_scale} and "
                         f"{unnamed_share}")
    if isinstance(caption_clauses, bool) or caption_clauses not in (1, 2):
        raise ValueError(f"caption_clauses must be 1 or 2, not {caption_clauses!r}")
    params = {"version": base["version"], "n_images": int(n_images), "image_size": int(image_size),
              "seed": int(seed), "domain": domain, "split_fractions": fr}
    # a regime other than the version's is part of the parameters; the version's stay as they always were
    if object_scale != OBJECT_SCALE:
        params["object_scale"] = float(object_scale)
    if unnamed_share != UNNAMED_SHARE:
        params["unnamed_share"] = float(unnamed_share)
    if caption_clauses != base["caption_clauses"]:
        params["caption_clauses"] = int(caption_clauses)
    return params


def _clauses(params: dict[str, Any]) -> int:
    if "caption_clauses" in params:
        return params["caption_clauses"]
    return RS_EDITIONS[params["version"]]["caption_clauses"] if params["domain"] == "rs" else CAPTION_CLAUSES


def generated_params(root: str | Path) -> dict[str, Any] | None:
    """The generator parameters a SynthRS folder was made with (its ``synthrs.json``); None if it is not one."""
    try:
        return json.loads((Path(root) / "synthrs.json").read_text())["params"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _complete(root: Path, params: dict[str, Any]) -> bool:
    """Whether every file of a finished dataset is still there (one directory listing, no stat calls)."""
    try:
        n = params["n_images"]
        return len(os.listdir(root / "images")) == n and len(os.listdir(root / "masks")) == n and all(
            (root / f).is_file() for f in ("dataset_RSITMD.json", "objects.json"))
    except OSError:
        return False


def _holds(root: Path, params: dict[str, Any]) -> bool:
    """Whether ``root`` holds a complete dataset made with ``params``."""
    return generated_params(root) == params and _complete(root, params)


def _splits(scenes: list[str], fractions: Sequence[float], seed: int) -> list[str]:
    """Seeded, per-scene (stratified) split of image indices."""
    out = [""] * len(scenes)
    for k, scene in enumerate(sorted(set(scenes))):
        idx = [i for i, s in enumerate(scenes) if s == scene]
        perm = np.random.default_rng([seed, 7919, k]).permutation(len(idx))
        n_train, n_val = round(fractions[0] * len(idx)), round(fractions[1] * len(idx))
        for rank, j in enumerate(perm):
            out[idx[j]] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
    return out


def _render_one(i: int, params: dict[str, Any]) -> tuple[str, str, Image.Image, list[dict[str, Any]],
                                                         np.ndarray, list[str]]:
    """Image ``i`` of a dataset: a pure function of (seed, domain, i)."""
    names = domain_scenes(params["domain"])
    scene = names[i % len(names)]
    rng = np.random.default_rng([params["seed"], DOMAINS.index(params["domain"]), i])
    img, objects, mask = render_scene(rng, scene, params["image_size"], params["domain"],
                                      object_scale=params.get("object_scale", OBJECT_SCALE))
    captions = make_captions(rng, scene, objects, params["domain"],
                             unnamed_share=params.get("unnamed_share", UNNAMED_SHARE),
                             clauses=_clauses(params))
    return f"{scene}_{i // len(names) + 1}.png", scene, img, objects, mask, captions


def _png_bytes(arr: np.ndarray) -> bytes:
    """Encode an RGB or grey uint8 array as PNG (no row filter, zlib level 1).

    Pillow's encoder tries every PNG row filter on every row; on these images filter "none" at
    level 1 is both smaller and twice as fast, which keeps generation above 200 images/s.
    """
    h, w = arr.shape[:2]
    channels = 1 if arr.ndim == 2 else arr.shape[2]
    rows = np.zeros((h, w * channels + 1), np.uint8)  # first byte of each row: filter type 0
    rows[:, 1:] = arr.reshape(h, w * channels)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", w, h, 8, 2 if channels == 3 else 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), 1))
            + chunk(b"IEND", b""))


def _write_dataset(folder: Path, params: dict[str, Any], progress: bool) -> None:
    (folder / "images").mkdir()
    (folder / "masks").mkdir()
    names = domain_scenes(params["domain"])
    n = params["n_images"]
    splits = _splits([names[i % len(names)] for i in range(n)], params["split_fractions"], params["seed"])
    images, objects_by_file = [], {}
    indices: Any = range(n)
    if progress:
        from tqdm.auto import tqdm  # imported only when shown: it costs ~0.1 s

        indices = tqdm(indices, desc=f"SynthRS {params['domain']}")
    for i in indices:
        fn, scene, img, objects, mask, captions = _render_one(i, params)
        (folder / "images" / fn).write_bytes(_png_bytes(np.asarray(img)))
        (folder / "masks" / fn).write_bytes(_png_bytes(mask))
        objects_by_file[fn] = objects
        images.append({"filename": fn, "imgid": i, "split": splits[i],
                       "sentids": list(range(5 * i, 5 * i + len(captions))),
                       "sentences": [{"raw": c, "tokens": re.findall(r"[a-z0-9]+", c.lower()), "imgid": i,
                                      "sentid": 5 * i + j} for j, c in enumerate(captions)]})
    (folder / "dataset_RSITMD.json").write_text(json.dumps({"images": images, "dataset": "synthrs"}))
    (folder / "objects.json").write_text(json.dumps(objects_by_file))
    meta = {"generator": "rsretrieval.data.synthrs", "params": params, "scenes": list(names),
            "objects": list(OBJECTS), "landmarks": list(LANDMARKS), "colours": list(PALETTE),
            "splits": dict(sorted(Counter(splits).items()))}
    (folder / "synthrs.json").write_text(json.dumps(meta, indent=1))  # written last: marks a complete dataset


def generate_synthrs(root: str | Path, *, version: str | None = None, n_images: int | None = None,
                     image_size: int = 224, seed: int = 0, domain: str = "rs",
                     split_fractions: Sequence[float] | None = None, object_scale: float = OBJECT_SCALE,
                     unnamed_share: float = UNNAMED_SHARE, caption_clauses: int | None = None,
                     overwrite: bool = False, progress: bool = True) -> Path:
    """Generate SynthRS in RSITMD's layout under ``root`` (or reuse it if already there).

    The dataset is written into a temporary sibling folder and renamed into place, so an
    interrupted run never leaves a half dataset that looks complete, and one that a concurrent
    process finished meanwhile is kept as it is (it may be open there).

    Args:
        root: target folder.
        version: the generator version whose defaults (size, split, caption clauses) apply: one of
            :data:`RS_EDITIONS` for the rs domain (default: the current one, :data:`VERSIONS`).
        n_images: number of images (default: the version's); scenes take turns, so each scene gets
            about the same share.
        image_size: image side in pixels.
        seed: the images and splits are a pure function of the seed (byte-identical files).
        domain: ``"rs"`` (top-down scenes) or ``"source"`` (object-centred pretraining domain).
        split_fractions: train/val/test shares, applied within each scene (default: the version's).
        object_scale: every object drawn this much smaller (< 1) or larger, the layout unchanged (a
            regime of small targets; captions still call each size what it is).
        unnamed_share: the share of an rs image's captions that never name its scene (0.4 as in
            RSITMD; 1.0: no caption does, a regime where only the objects say what the scene is).
        caption_clauses: statements per rs caption (default: the version's; 2: a second about another
            object class or the ground; the images stay byte-identical, only the captions change).
        overwrite: replace an existing SynthRS dataset made with other parameters.
        progress: show a tqdm progress bar.

    Returns:
        ``root`` as a Path.

    Raises:
        SynthRSExistsError: ``root`` holds a dataset with other parameters (and not ``overwrite``),
            or files that are not a SynthRS dataset.
        ValueError: invalid parameters.
    """
    root = Path(root).expanduser()
    params = _params(n_images, image_size, seed, domain, split_fractions, object_scale, unnamed_share,
                     caption_clauses, version)
    if _holds(root, params):
        return root  # same params but files lost: fall through and remake it
    old = generated_params(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        if old is None:
            raise SynthRSExistsError(f"{root} exists and is not a SynthRS dataset (no readable "
                                     "synthrs.json); choose an empty or new folder. Nothing was deleted.")
        if old != params and not overwrite:
            diff = ", ".join(f"{k}: {old.get(k)!r} -> {v!r}" for k, v in params.items() if old.get(k) != v)
            raise SynthRSExistsError(f"{root} holds a SynthRS dataset made with other parameters ({diff}). "
                                     "Pass overwrite=True (data synth --overwrite) to replace it, choose "
                                     "another root, or load that one by passing its folder as the root.")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.partial-", dir=root.parent))
    try:
        _write_dataset(tmp, params, progress)
        if _holds(root, params):
            shutil.rmtree(tmp)  # a concurrent run (notebook, test worker) finished it first
        else:
            _swap_in(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def generate_regime(regime: str, root: str | Path, **kwargs: Any) -> Path:
    """:func:`generate_synthrs` of a named :data:`REGIMES` entry into ``root`` (``kwargs``: its other arguments)."""
    if regime not in REGIMES:
        raise ValueError(f"unknown SynthRS regime {regime!r}; known: {', '.join(REGIMES)}")
    return generate_synthrs(root, **REGIMES[regime], **kwargs)


def _swap_in(tmp: Path, root: Path) -> None:
    """Rename the finished folder into place, moving any previous dataset aside first."""
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()
    trash = None
    if root.exists():
        trash = root.with_name(f".{root.name}.old-{os.getpid()}-{time.monotonic_ns()}")
        root.rename(trash)
    os.replace(tmp, root)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def benchmark(n: int = 400, image_size: int = 224, domain: str = "rs") -> dict[str, float]:
    """Measure generation speed on one core and print it.

    Returns:
        ``{"images_per_s": end to end (render, captions, PNG, files, json),
        "render_encode_per_s": the same without touching the disk}``. The gap is the file
        system's cost of creating two files per image, which varies a lot on shared machines.
    """
    params = _params(n, image_size, 0, domain, (0.7, 0.1, 0.2))
    t0 = time.perf_counter()
    for i in range(n):
        _, _, img, _, mask, _ = _render_one(i, params)
        _png_bytes(np.asarray(img)), _png_bytes(mask)
    in_memory = n / (time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        generate_synthrs(Path(tmp) / "bench", n_images=n, image_size=image_size, domain=domain,
                         progress=False)
        end_to_end = n / (time.perf_counter() - t0)
    print(f"SynthRS {domain} {image_size}px, {n} images, one core: {end_to_end:.0f} images/s end to end, "
          f"{in_memory:.0f} images/s render + encode without disk writes")
    return {"images_per_s": end_to_end, "render_encode_per_s": in_memory}


if __name__ == "__main__":
    benchmark()
    benchmark(domain="source")
