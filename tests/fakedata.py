"""Tiny fake copies of each published caption-dataset layout, with real (8x8) image files.

Each ``make_*`` writes the layout under ``root`` and returns the facts the tests check against:
``{split: [(filename, scene, [captions...]), ...]}`` in file order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image

Expected = dict[str, list[tuple[str, str, list[str]]]]


def write_image(path: Path, size: tuple[int, int] = (8, 8), value: int = 0) -> Path:
    """A small real image; the format follows the extension (.tif, .jpg, .png)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value % 256, (3 * value) % 256, (7 * value) % 256)).save(path)
    return path


def captions_for(filename: str, n: int = 5) -> list[str]:
    stem = Path(filename).stem
    return [f"caption {k} of {stem}" for k in range(n)]


def karpathy_doc(items: list[dict[str, Any]], dataset: str = "fake") -> dict[str, Any]:
    """A Karpathy-style document from ``{"filename", "split", "captions", **extra}`` items."""
    images, sentid = [], 0
    for imgid, item in enumerate(items):
        item = dict(item)
        caps = item.pop("captions")
        sents = []
        for cap in caps:
            sents.append({"raw": cap, "tokens": cap.split(), "imgid": imgid, "sentid": sentid})
            sentid += 1
        images.append(
            {
                **item,
                "imgid": imgid,
                "sentids": [s["sentid"] for s in sents],
                "sentences": sents,
            }
        )
    return {"images": images, "dataset": dataset}


def write_json(path: Path, doc: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1), encoding="utf-8")
    return path


def _write_karpathy_layout(
    json_path: Path, images_dir: Path, items: list[dict[str, Any]], dataset: str
) -> None:
    for k, item in enumerate(items):
        write_image(images_dir / item["filename"], value=k)
    write_json(json_path, karpathy_doc(items, dataset))


def _expected(items: list[dict[str, Any]], scenes: list[str]) -> Expected:
    out: Expected = {"train": [], "val": [], "test": []}
    for item, scene in zip(items, scenes):
        split = "train" if item["split"] == "restval" else item["split"]
        out[split].append((item["filename"], scene, [c.strip() for c in item["captions"]]))
    return out


# ---------------------------------------------------------------- RSITMD and SynthRS


def _rsitmd_items(ext: str = "tif") -> tuple[list[dict[str, Any]], list[str]]:
    """20 train images in 4 scenes (8/6/4/2), 3 test images; no val, as in the real file."""
    items, scenes, n = [], [], 0
    for scene, count in (("airport", 8), ("beach", 6), ("denseresidential", 4), ("plane", 2)):
        for _ in range(count):
            n += 1
            fn = f"{scene}_{n}.{ext}"
            items.append({"filename": fn, "split": "train", "captions": captions_for(fn)})
            scenes.append(scene)
    items[9]["captions"] = captions_for(items[9]["filename"], 4)  # an image with 4 captions
    items[10]["captions"][2] = "  padded caption with spaces  "
    for fn, scene in ((f"airport_90.{ext}", "airport"), (f"DenseResidential_91.{ext}", "denseresidential"),
                      (f"beach_92.{ext}", "beach")):  # fmt: skip
        items.append({"filename": fn, "split": "test", "captions": captions_for(fn)})
        scenes.append(scene)
    return items, scenes


def make_rsitmd(root: Path) -> Expected:
    """``root/dataset_RSITMD.json`` + ``root/images/*.tif``."""
    items, scenes = _rsitmd_items("tif")
    _write_karpathy_layout(root / "dataset_RSITMD.json", root / "images", items, "rsitmd")
    return _expected(items, scenes)


def make_synthrs(root: Path, *, objects: bool = True) -> Expected:
    """SynthRS: RSITMD's layout with .png images and an optional ``objects.json``."""
    items, scenes = _rsitmd_items("png")
    _write_karpathy_layout(root / "dataset_RSITMD.json", root / "images", items, "synthrs")
    if objects:
        write_json(root / "objects.json", {"images": {}})
    return _expected(items, scenes)


# ---------------------------------------------------------------- RSICD


def make_rsicd(root: Path, *, class_files: bool = True) -> Expected:
    """``root/dataset_rsicd.json`` + ``root/RSICD_images/*.jpg`` (+ ``txtclasses_rsicd/``).

    Has train, val, test and restval images, and three numerically named images whose scenes
    come only from the class files (``unknown`` without them).
    """
    spec = [
        ("airport_1.jpg", "train", "airport"),
        ("airport_2.jpg", "val", "airport"),
        ("BareLand_3.jpg", "test", "bareland"),
        ("00001.jpg", "train", "airport"),
        ("00002.jpg", "test", "bareland"),
        ("00003.jpg", "val", "denseresidential"),
        ("denseResidential_4.jpg", "restval", "denseresidential"),
    ]
    items = [{"filename": fn, "split": split, "captions": captions_for(fn)} for fn, split, _ in spec]
    # RSICD repeats captions within an image: keep that
    items[0]["captions"][4] = items[0]["captions"][3]
    _write_karpathy_layout(root / "dataset_rsicd.json", root / "RSICD_images", items, "rsicd")
    if class_files:
        lists = {"Airport": ["airport_1.jpg", "airport_2.jpg", "00001.jpg"],
                 "BareLand": ["BareLand_3.jpg", "00002.jpg"],
                 "denseResidential": ["00003.jpg", "denseResidential_4.jpg"]}  # fmt: skip
        for cls, names in lists.items():
            path = root / "txtclasses_rsicd" / f"{cls}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join(names) + "\n", encoding="utf-8")
        scenes = [s for _, _, s in spec]
    else:
        scenes = [s if not fn[0].isdigit() else "unknown" for fn, _, s in spec]
    return _expected(items, scenes)


# ---------------------------------------------------------------- UCM and Sydney


def make_ucm(root: Path) -> Expected:
    """``root/dataset.json`` + ``root/imgs/<n>.tif`` with sparse ids across the 100-id class blocks."""
    spec = [
        ("1.tif", "train", "agricultural"),
        ("100.tif", "train", "agricultural"),
        ("101.tif", "val", "airplane"),
        ("150.tif", "train", "airplane"),
        ("1200.tif", "test", "intersection"),
        ("2001.tif", "train", "tenniscourt"),
        ("2100.tif", "test", "tenniscourt"),
    ]
    items = [{"filename": fn, "split": split, "captions": captions_for(fn)} for fn, split, _ in spec]
    _write_karpathy_layout(root / "dataset.json", root / "imgs", items, "ucm")
    return _expected(items, [s for _, _, s in spec])


def make_sydney(root: Path) -> Expected:
    """``root/dataset.json`` + ``root/imgs/<n>.tif``; two records carry a class field."""
    spec = [
        ("1.tif", "train", None),
        ("2.tif", "train", "Industrial"),
        ("3.tif", "val", None),
        ("4.tif", "test", None),
        ("5.tif", "test", "residential"),
    ]
    items = []
    for fn, split, label in spec:
        item: dict[str, Any] = {"filename": fn, "split": split, "captions": captions_for(fn)}
        if label == "Industrial":
            item["label"] = label
        elif label:
            item["class"] = label
        items.append(item)
    _write_karpathy_layout(root / "dataset.json", root / "imgs", items, "sydney")
    return _expected(items, [(label or "unknown").lower() for _, _, label in spec])


# ---------------------------------------------------------------- generic Karpathy json


def make_karpathy(root: Path) -> Expected:
    """``root/captions.json`` (the only json) + ``root/pics/``; one record uses ``filepath``,
    one sentence has only ``tokens``."""
    items = [
        {"filename": "a.png", "split": "train", "captions": captions_for("a.png"), "scene": "Forest"},
        {"filename": "b.png", "split": "train", "captions": captions_for("b.png", 3)},
        {"filename": "c.png", "split": "val", "captions": captions_for("c.png"), "filepath": "sub"},
        {"filename": "d.png", "split": "test", "captions": captions_for("d.png")},
    ]
    doc = karpathy_doc(items, "generic")
    del doc["images"][1]["sentences"][0]["raw"]  # tokens only
    for k, item in enumerate(items):
        write_image(root / "pics" / item.get("filepath", "") / item["filename"], value=k)
    write_json(root / "captions.json", doc)
    expected = _expected(items, ["forest", "unknown", "unknown", "unknown"])
    expected["val"] = [("sub/c.png", "unknown", captions_for("c.png"))]
    return expected


# ---------------------------------------------------------------- precomp text files


def make_precomp(root: Path, *, images: bool = True) -> Expected:
    """AMFMN ``precomp`` files: train one file-name line per image (5 captions each), test one
    line per caption; images in ``root/images``."""
    train = [f"airport_{k}.tif" for k in range(1, 4)] + ["beach_4.tif", "beach_5.tif"]
    test = ["airport_10.tif", "beach_11.tif"]
    train_caps = [c for fn in train for c in captions_for(fn)]
    test_caps = [c for fn in test for c in captions_for(fn)]
    root.mkdir(parents=True, exist_ok=True)
    (root / "train_filename.txt").write_text("\n".join(train) + "\n", encoding="utf-8")
    (root / "train_caps.txt").write_text("\n".join(train_caps) + "\n", encoding="utf-8")
    per_caption = [fn for fn in test for _ in range(5)]
    (root / "test_filename.txt").write_text("\n".join(per_caption) + "\n", encoding="utf-8")
    (root / "test_caps.txt").write_text("\n".join(test_caps) + "\n", encoding="utf-8")
    if images:
        for k, fn in enumerate(train + test):
            write_image(root / "images" / fn, value=k)
    return {
        "train": [(fn, fn.split("_")[0], captions_for(fn)) for fn in train],
        "val": [],
        "test": [(fn, fn.split("_")[0], captions_for(fn)) for fn in test],
    }


MAKERS = {
    "rsitmd": make_rsitmd,
    "rsicd": make_rsicd,
    "ucm": make_ucm,
    "sydney": make_sydney,
    "synthrs": make_synthrs,
    "karpathy": make_karpathy,
    "precomp": make_precomp,
}


def make_batch(images, tokens, image_ids, captions=None):
    """A training Batch of pixels and tokens, as fit builds it (caption ids = row numbers)."""
    import torch

    from rsretrieval.training import Batch

    return Batch(image_ids=image_ids, caption_ids=torch.arange(len(image_ids)), captions=list(captions or []),
                 pixels=images, tokens=tokens)
