"""The regime study: which limit keeps fine-tuning on SynthRS far below its gain on RSITMD.

One factor at a time from today's regime (SynthRS's shipped size, the ``mini-synthrs`` recipes), each
row trained once and scored on **validation only**: a SynthRS as large as RSITMD (4,752 images:
3,420 train / 864 val / 468 test) gives every row the same 864-image validation split, and a row
of fewer training images takes a nested, scene-stratified subset of its train split. Rows:

* ``size``: 1,050 (today's), 2,000 and 3,420 training images;
* ``epochs``: the recipe's epoch cap (``stop_epoch``, chosen on 1,050 images) lifted to its 12-epoch schedule, patience kept;
* ``captions``: two statements a caption (:data:`~rsretrieval.data.synthrs.REGIMES`'s
  ``two-clause-captions``: the same images, captions that say more of them).

Each row is a :func:`~rsretrieval.experiments.run_method` run folder under ``out/runs/`` (finished
rows are read back, an interrupted one resumes) and the table is ``out/study.json``, rewritten
atomically after every row.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rsretrieval import defaults
from rsretrieval.data.dataset import CaptionDataset, caption_statistics, nested_subset
from rsretrieval.files import atomic_write_json

STUDY_VERSION = 1
STUDY_SYNTHRS = {"version": "1.0", "n_images": 4752, "split_fractions": (0.72, 0.18, 0.10)}  # RSITMD's shape, 18 scenes
TODAY_TRAIN_IMAGES = 1050  # the shipped SynthRS's train split


@dataclass(frozen=True)
class Row:
    """One configuration of the study: a factor's level, trained with one method (or zero-shot)."""

    factor: str
    level: str
    method: str  # a registered method, or "zero_shot"
    train_images: int | None = None  # None: the whole train split
    captions: dict[str, Any] = field(default_factory=dict)  # generator parameters beside STUDY_SYNTHRS
    train: dict[str, Any] = field(default_factory=dict)  # overrides of the recipe's training settings
    pretraining: str | None = None  # a MiniCLIP pretraining variant (rsretrieval.pretrain.VARIANTS); None: shipped

    @property
    def key(self) -> str:
        return f"{self.factor}-{self.level}-{self.method}"


def _rows() -> list[Row]:
    rows = []
    for method in ("zero_shot", "full", "mrs_adapter"):
        rows.append(Row("size", str(TODAY_TRAIN_IMAGES), method, TODAY_TRAIN_IMAGES))
    for method in ("full", "mrs_adapter"):
        rows.append(Row("size", "all", method))
    for method in ("zero_shot", "full", "mrs_adapter"):
        rows.append(Row("captions", "two-clause", method, TODAY_TRAIN_IMAGES, {"caption_clauses": 2}))
    for method in ("full", "mrs_adapter"):
        rows.append(Row("epochs", "uncapped", method, TODAY_TRAIN_IMAGES, train={"stop_epoch": 12}))
        rows.append(Row("size", "2000", method, 2000))
    rows.append(Row("captions", "two-clause+all", "full", None, {"caption_clauses": 2}))
    # on SynthRS 3.0's data (RSITMD's shape, two-statement captions): which pretraining transfers best
    rows.append(Row("captions", "two-clause+all", "mrs_adapter", None, {"caption_clauses": 2}))
    for method in ("zero_shot", "full", "mrs_adapter"):
        rows.append(Row("pretraining", "web-3-epochs", method, None, {"caption_clauses": 2},
                        pretraining="web-3-epochs"))
    return rows


ROWS: tuple[Row, ...] = tuple(_rows())


def _dataset(root: Path, captions: dict[str, Any], split: str) -> CaptionDataset:
    from rsretrieval.data import load_dataset
    from rsretrieval.data.synthrs import generate_synthrs

    folder = root / ("synthrs" + "".join(f"-{k}{v}" for k, v in sorted(captions.items())))
    generate_synthrs(folder, **STUDY_SYNTHRS, **captions, progress=False)
    return load_dataset("synthrs", folder, split)


def run_row(row: Row, out: Path, *, recipe: str = defaults.RECIPE, model: str = "mini",
            pretrained: str = defaults.MINICLIP_TAG, device: str = "auto") -> dict[str, Any]:
    """Train (or read back) one row and return its table record: val mR, best epoch, seconds."""
    from rsretrieval.experiments import run_method

    train = _dataset(out / "data", row.captions, "train")
    val = _dataset(out / "data", row.captions, "val")
    if row.train_images is not None:
        train = nested_subset(train, row.train_images)
    record = {"key": row.key, "factor": row.factor, "level": row.level, "method": row.method,
              "train_images": train.num_images, "val_images": val.num_images, "captions": row.captions,
              "train": row.train, **({"pretraining": row.pretraining} if row.pretraining else {})}
    if row.pretraining:
        pretrained = str(variant_weights(row.pretraining))
    t0 = time.perf_counter()
    if row.method == "zero_shot":
        from rsretrieval.evaluation import evaluate
        from rsretrieval.models import create_model, select_device

        dev = select_device(device)
        bundle = create_model(model, pretrained)
        metrics = evaluate(bundle.model.to(dev), val, transform=bundle.transform, tokenizer=bundle.tokenizer,
                           device=dev, per_scene=False, progress=False).metrics
        return record | {"val_mr": metrics["mr"], "val": metrics, "best_epoch": 0, "epochs_run": 0,
                         "seconds": round(time.perf_counter() - t0, 1)}
    result = run_method(model, pretrained, row.method, train, val, None,
                        {"device": device, "progress": False, **row.train}, recipe=recipe,
                        run_dir=out / "runs" / row.key)
    epochs = result["history"]["records"]
    return record | {"val_mr": result["val_mr"], "val": result["val"], "best_epoch": result["best_epoch"],
                     "epochs_run": sum(1 for r in epochs if r.get("seconds")),
                     "budget": result["identity"]["config"].get("stop_epoch") or result["identity"]["config"]["epochs"],
                     "val_curve": [r["val_mr"] for r in epochs if r.get("val_mr") is not None],
                     "seconds": round(sum(r.get("seconds") or 0 for r in epochs), 1)}


def run_study(out: str | Path, only: Sequence[str] | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    """Run the rows of :data:`ROWS` (or those whose key contains one of ``only``) in order; rows already
    in ``out/study.json`` with the same settings are kept. Returns the table."""
    out = Path(out)
    table_file = out / "study.json"
    table = json.loads(table_file.read_text())["rows"] if table_file.exists() else []
    for row in ROWS:
        if only and not any(o in row.key for o in only):
            continue
        done = next((r for r in table if r["key"] == row.key and r["captions"] == row.captions
                     and r["train"] == row.train and r.get("pretraining") == row.pretraining), None)
        if done is not None:
            continue
        record = run_row(row, out, **kwargs)
        table = [r for r in table if r["key"] != row.key] + [record]
        atomic_write_json(table_file, {"study_version": STUDY_VERSION, "synthrs": STUDY_SYNTHRS, "rows": table})
        print(format_row(record), flush=True)
    return table


def variant_weights(name: str) -> Path:
    """The weights file of MiniCLIP pretraining variant ``name``, pretrained first if it is not there."""
    from rsretrieval.pretrain import pretrain_variants
    from rsretrieval.paths import data_home

    path = data_home() / "miniclip" / "variants" / f"{name}.pt"
    if not path.is_file():
        pretrain_variants([name], progress=False)
    return path


def format_row(r: dict[str, Any]) -> str:
    epoch = f"epoch {r['best_epoch']} of {r['epochs_run']} run" if r["method"] != "zero_shot" else "no training"
    return (f"{r['factor']:9s} {r['level']:15s} {r['method']:12s} {r['train_images']:5d} train  "
            f"val mR {r['val_mr']:6.2f}  ({epoch}, {r['seconds']:.0f} s)")


def study_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each trained row with its zero-shot baseline on the same validation split and the ratio to it."""
    def base(r: dict[str, Any]) -> str:  # the zero-shot a row starts from: its captions and pretraining
        return json.dumps([r["captions"], r.get("pretraining")], sort_keys=True)

    zero = {base(r): r["val_mr"] for r in rows if r["method"] == "zero_shot"}
    out = []
    for r in rows:
        z = zero.get(base(r))
        out.append(r | {"zero_shot_val_mr": z, "ratio": r["val_mr"] / z if z else None})
    return out


# ------------------------------------------------------------------------------------------ statistics

# RSITMD's published figures (docs/protocol.md); what its papers do not state is None here, and
# ``python -m rsretrieval data stats rsitmd --root ROOT`` measures it on your copy.
RSITMD_PUBLISHED = {"images": 4743, "train_images": 4291, "test_images": 452, "captions": 23715,
                    "captions_per_image": 5.0, "scenes": 33, "mean_words": None, "named_scene_share": None,
                    "duplicate_share": None}


def dataset_statistics(data: CaptionDataset) -> dict[str, Any]:
    """The facts of a split that decide how much a caption can say about its one image.

    ``named_scene_share``: captions containing one of the scene's phrases
    (:func:`rsretrieval.cmer.scene.scene_phrases`; SynthRS: its own scene nouns).
    ``duplicate_share``: captions that, word for word (lower case, punctuation dropped), are also a
    caption of another image of the split.
    """
    import re

    from rsretrieval.cmer.scene import scene_phrases, vocabulary_of

    vocabulary = vocabulary_of(data)
    norm = [" ".join(re.findall(r"[a-z0-9]+", c.lower())) for c in data.captions]
    owners: dict[str, set[int]] = {}
    for text, i in zip(norm, data.text_to_image, strict=True):
        owners.setdefault(text, set()).add(i)
    phrases = {s: scene_phrases(s, vocabulary) for s in set(data.scenes)}
    named = sum(any(re.search(rf"\b{re.escape(p)}\b", text) for p in phrases[data.scenes[i]])
                for text, i in zip(norm, data.text_to_image, strict=True))
    n = max(1, data.num_captions)
    words = caption_statistics(data.captions)
    return {"images": data.num_images, "captions": data.num_captions,
            "captions_per_image": data.num_captions / max(1, data.num_images),
            "scenes": len({s for s in data.scenes if s != "unknown"}),
            "mean_words": words["mean_words"], "vocabulary": words["vocabulary"],
            "named_scene_share": named / n,
            "duplicate_share": sum(len(owners[t]) > 1 for t in norm) / n}
