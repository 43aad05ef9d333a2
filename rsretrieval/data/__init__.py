"""Remote-sensing caption datasets: load, check and prepare them.

>>> from rsretrieval.data import load_dataset
>>> train = load_dataset("rsitmd", "data/rsitmd", "train")   # doctest: +SKIP
>>> val = load_dataset("rsitmd", "data/rsitmd", "val")       # carved from train, seeded

Every split is a :class:`CaptionDataset` with an explicit caption -> image index. Splits come
from the annotation file; when it has no validation images, ``val`` is a seeded, scene-stratified
share of the file's train images (by image, so all captions of an image stay together), and
``train`` is the rest. The test split is never used to choose anything.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from PIL import Image

from rsretrieval.data.dataset import CaptionDataset, nested_subset, normalize_scene
from rsretrieval.data.fetch import download, extract, prepare_dataset
from rsretrieval.data.readers import (
    ImageRecord,
    Problem,
    Problems,
    Source,
    assign_scenes,
    carve_validation,
    locate,
    read_records,
    left_out_summary,
)
from rsretrieval.data.caption_csv import CSVColumns
from rsretrieval.data.registry import SPLITS, DatasetInfo, get_dataset_info, list_datasets
from rsretrieval.errors import DatasetFormatError, DatasetNotFoundError
from rsretrieval.paths import data_dir

__all__ = [
    "CaptionDataset",
    "DatasetInfo",
    "check_dataset",
    "download",
    "extract",
    "get_dataset_info",
    "list_datasets",
    "load_dataset",
    "nested_subset",
    "normalize_scene",
    "prepare_dataset",
]

_logger = logging.getLogger(__name__)


def default_root(info: DatasetInfo) -> Path:
    """The folder a dataset is loaded from when no root is given: a generated dataset's default
    folder, made on first use (deterministic, with a progress bar); real datasets need a root."""
    if not info.generated:
        raise DatasetNotFoundError(f"dataset {info.name!r} needs a root (--root on the command line): the folder "
                                   "where you put its files.\n"
                                   + info.not_found_message("ROOT"))
    return prepare_dataset(info.name, data_dir(info.name))


def load_dataset(
    name: str,
    root: str | Path | None = None,
    split: str = "train",
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    on_error: str = "raise",
    verify_images: bool = True,
    images_dir: str | Path | None = None,
    scene_rule: str | None = None,
    csv_img_key: str = "filepath",
    csv_caption_key: str = "title",
    csv_scene_key: str | None = None,
    csv_split_key: str | None = None,
    csv_separator: str | None = None,
    exclude: str | Path | Iterable[str | Path] | None = None,
) -> CaptionDataset:
    """Load one split of a caption dataset.

    Args:
        name: ``rsitmd``, ``rsicd``, ``ucm``, ``sydney``, ``synthrs``, ``karpathy`` (any
            Karpathy-style json), ``precomp`` (AMFMN text files) or ``csv`` (open_clip's caption
            CSV/TSV, your own images); see :func:`list_datasets`.
        root: the dataset folder, laid out as :meth:`DatasetInfo.layout` shows. For
            ``karpathy`` it may also be the json file. None: the default folder of a generated
            dataset (SynthRS: ``<data home>/synthrs``, see :mod:`rsretrieval.paths`), generated on
            first use; a folder you name must hold the files.
        split: ``train``, ``val``, ``test`` or ``all``.
        val_fraction: share of the file's train images carved out as ``val`` when the file has
            no val images (ignored otherwise). 0: no carve, all of train is trained on, and such a
            file has no ``val`` split (to compare with papers that train on all of train).
        seed: seed of that carve.
        on_error: ``raise`` stops at the first bad record; ``skip`` leaves bad records and
            captions out, notes those of this split in :attr:`CaptionDataset.skipped` and warns
            once, counting the images and the captions of kept images that were left out.
        verify_images: check that every image file of the split exists (without decoding it;
            :func:`check_dataset` decodes).
        images_dir: the image folder, if not the registry's (relative to ``root``).
        scene_rule: override how scenes are found: ``prefix``, ``ucm`` or ``field``.
        csv_img_key, csv_caption_key, csv_scene_key, csv_split_key, csv_separator: for ``csv``, the
            columns of the image path, caption, scene and split (default: ``split`` if present), and
            the separator (default: tab for ``.tsv``, else comma), as open_clip's ``--csv-*`` options.
        exclude: images to leave out: a leakage list written by ``data leakage --json`` (both sides
            of each pair), or image paths; how many were left out is ``metadata["excluded"]``.

    Returns:
        The split, with ``metadata`` holding the files read and how ``val`` was made.

    Raises:
        DatasetNotFoundError: the files are not there (the message shows the layout and source).
        DatasetFormatError: a file or (with ``on_error='raise'``) a record is malformed, or an
            image is missing.
    """
    info = get_dataset_info(name)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), not {val_fraction}")
    if root is None:
        root = default_root(info)
    source = locate(info, root, images_dir)
    problems = Problems(on_error)
    columns = CSVColumns(csv_img_key, csv_caption_key, csv_scene_key, csv_split_key, csv_separator)
    records = read_records(info, source, problems, columns)
    scenes = assign_scenes(info, records, source.root, scene_rule)
    splits, val_source = _final_splits(records, scenes, val_fraction, seed)
    chosen = [i for i, s in enumerate(splits) if split == "all" or s == split]
    excluded = 0
    if exclude is not None:
        from rsretrieval.data.leakage import excluded_paths

        drop = excluded_paths(exclude)
        kept = [i for i in chosen if str((source.images_dir / records[i].filename).resolve()) not in drop]
        excluded, chosen = len(chosen) - len(kept), kept
    if split == "val" and not chosen and val_fraction == 0:
        raise DatasetFormatError(f"{source.annotation} has no val images and val_fraction=0 carves none: "
                                 "train without validation (the last epoch is kept) or give val_fraction > 0")
    if verify_images:
        chosen = _existing_images(records, chosen, splits, source.images_dir, problems)
    mine = problems.of_split(split, {rec.where: s for rec, s in zip(records, splits, strict=True)})
    if not chosen:
        raise DatasetFormatError(
            f"{source.annotation}: split {split!r} has no usable images"
            + (f" (left out {left_out_summary(mine)}; first: {mine[0].message})" if mine else "")
        )
    data = _build(info, source, split, [records[i] for i in chosen], [scenes[i] for i in chosen], mine)
    data.metadata.update(
        val_source=val_source, val_fraction=val_fraction if val_source == "carved" else None, seed=seed,
        excluded=excluded,
    )
    if mine:
        warnings.warn(
            f"{info.name} {split}: left out {left_out_summary(mine)} of {source.annotation}; first: "
            f"{mine[0].message}. See CaptionDataset.skipped for all of them.",
            UserWarning,
            stacklevel=2,
        )
    _logger.info("loaded %r", data)
    return data


def _final_splits(
    records: list[ImageRecord], scenes: list[str], val_fraction: float, seed: int
) -> tuple[list[str], str]:
    """Each record's split after the val carve, and where val came from (``file`` or ``carved``)."""
    splits = [r.split for r in records]
    if "val" in splits:
        return splits, "file"
    train = [i for i, s in enumerate(splits) if s == "train"]
    if len(train) < 2 or val_fraction == 0:
        return splits, "none"
    names = [records[i].filename for i in train]
    picked = carve_validation(names, [scenes[i] for i in train], val_fraction, seed)
    for k in picked:
        splits[train[k]] = "val"
    return splits, "carved"


def _existing_images(
    records: list[ImageRecord], chosen: list[int], splits: list[str], images_dir: Path, problems: Problems
) -> list[int]:
    """The chosen records whose image file exists; report the others."""
    try:  # one directory read instead of thousands of stat calls; a folder is not an image
        with os.scandir(images_dir) as entries:
            listing = {e.name for e in entries if e.is_file()}
    except OSError:
        listing = set()
    keep = []
    for i in chosen:
        fn = records[i].filename
        if fn in listing or (images_dir / fn).is_file():
            keep.append(i)
        else:
            problems.report(
                f"{records[i].where}: image {images_dir / fn} is missing. Put the dataset's images in "
                f"{images_dir}",
                split=splits[i],
                record=records[i].where,
            )
    return keep


def _build(
    info: DatasetInfo,
    source: Source,
    split: str,
    records: list[ImageRecord],
    scenes: list[str],
    problems: list[Problem],
) -> CaptionDataset:
    captions: list[str] = []
    text_to_image: list[int] = []
    for i, rec in enumerate(records):
        captions.extend(rec.captions)
        text_to_image.extend([i] * len(rec.captions))
    metadata: dict[str, Any] = {
        "root": str(source.root),
        "annotation": str(source.annotation),
        "images_dir": str(source.images_dir),
    }
    objects = source.root / "objects.json"
    if "objects.json" in info.optional_files and objects.is_file():
        metadata["objects_file"] = str(objects)
    return CaptionDataset(
        name=info.name,
        split=split,
        image_paths=[source.images_dir / rec.filename for rec in records],
        scenes=scenes,
        captions=captions,
        text_to_image=text_to_image,
        skipped=[p.message for p in problems],
        metadata=metadata,
    )


def check_dataset(
    name: str,
    root: str | Path,
    *,
    decode: bool = True,
    images_dir: str | Path | None = None,
    csv_img_key: str = "filepath",
    csv_caption_key: str = "title",
    csv_scene_key: str | None = None,
    csv_split_key: str | None = None,
    csv_separator: str | None = None,
) -> dict[str, Any]:
    """Check a dataset thoroughly and report every problem instead of stopping at the first.

    Reads the annotations leniently, then per split of the file counts images, captions and
    scenes, and lists missing images, images that fail to decode (``decode=True`` opens every
    image fully: slow on big datasets), bad records (empty captions, non-UTF-8 text, repeated
    file names), duplicate captions and images with other than 5 captions.

    Args:
        name: registry name.
        root: the dataset folder.
        decode: decode every image, not only check that it exists.
        images_dir: the image folder, if not the registry's.
        csv_img_key, csv_caption_key, csv_scene_key, csv_split_key, csv_separator: for ``csv``, as
            :func:`load_dataset` takes them.

    Returns:
        ``{"name", "root", "annotation", "images_dir", "usable_images", "splits": {split: {"images",
        "captions", "unique_captions", "duplicate_captions", "scenes"}}, "problems": [str, ...],
        "ok": bool}``.
        ``ok`` is false when a record or image is unusable; duplicate captions, images with other
        than 5 captions and images of unknown scene are listed in ``problems`` but leave ``ok``
        true (RSICD has all three).

    Raises:
        DatasetNotFoundError: the annotation files or image folder are missing.
    """
    info = get_dataset_info(name)
    source = locate(info, root, images_dir)
    report: dict[str, Any] = {
        "name": info.name,
        "root": str(source.root),
        "annotation": str(source.annotation),
        "images_dir": str(source.images_dir),
        "usable_images": 0,
        "splits": {},
        "problems": [],
        "ok": False,
    }
    problems = Problems("collect")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            columns = CSVColumns(csv_img_key, csv_caption_key, csv_scene_key, csv_split_key, csv_separator)
            records = read_records(info, source, problems, columns)
            scenes = assign_scenes(info, records, source.root)
    except DatasetFormatError as exc:  # the file itself is unreadable: nothing more to check
        report["problems"].append(str(exc))
        return report
    file_splits = [r.split for r in records]
    usable = _existing_images(records, list(range(len(records))), file_splits, source.images_dir, problems)
    if decode:
        usable = [i for i in usable if _decodes(records[i], source.images_dir, problems)]
    errors = list(problems.notes)
    notes = [str(w.message) for w in caught]  # e.g. images without a known scene
    for split in ("train", "val", "test"):
        idx = [i for i, r in enumerate(records) if r.split == split]
        if not idx:
            continue
        caps = [c for i in idx for c in records[i].captions]
        dup = len(caps) - len(set(caps))
        report["splits"][split] = {
            "images": len(idx),
            "captions": len(caps),
            "unique_captions": len(set(caps)),
            "duplicate_captions": dup,
            "scenes": dict(sorted(Counter(scenes[i] for i in idx).items())),
        }
        if dup:
            notes.append(f"{split}: {dup} of {len(caps)} captions repeat another caption of the split")
        odd = [i for i in idx if len(records[i].captions) != 5]
        if odd:
            examples = ", ".join(f"{records[i].filename} ({len(records[i].captions)})" for i in odd[:5])
            notes.append(f"{split}: {len(odd)} image(s) have other than 5 captions, e.g. {examples}")
    report["problems"] = errors + notes
    report["ok"] = not errors
    report["usable_images"] = len(usable)
    return report


def _decodes(record: ImageRecord, images_dir: Path, problems: Problems) -> bool:
    path = images_dir / record.filename
    try:
        with Image.open(path) as img:
            img.load()
        return True
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        problems.report(
            f"{record.where}: image {path} cannot be decoded ({exc}); replace it with a good copy",
            split=record.split,
            record=record.where,
        )
        return False
