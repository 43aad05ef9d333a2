"""Your own captioned images in open_clip's caption CSV/TSV format (``--csv-img-key``, ``--csv-caption-key``,
``--csv-separator``): one row per (image, caption), grouped per image; parsed by :mod:`csv` so that
quoted line breaks, quotes and physical line numbers are right."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from rsretrieval.data.readers import _FILE_SPLITS, _UTF8_FIX, ImageRecord, Problems, _decode, _printable
from rsretrieval.errors import DatasetFormatError

CSV_SUFFIXES = (".csv", ".tsv")


@dataclass(frozen=True)
class CSVColumns:
    """Which columns of a caption CSV hold what (open_clip's ``--csv-img-key``, ``--csv-caption-key``
    and ``--csv-separator``; open_clip's defaults), and an optional scene and split column."""

    img_key: str = "filepath"
    caption_key: str = "title"
    scene_key: str | None = None
    split_key: str | None = None  # None: the column "split" if there is one
    separator: str | None = None  # None: tab for .tsv, comma otherwise


def _csv_rows(path: Path, text: str, sep: str) -> list[tuple[int, list[str]]]:
    """Each record of the file with the physical line it starts on (blank lines skipped, counted).
    Parsed by :mod:`csv` over the text as a stream: a quoted field may hold line breaks, and only
    ``\\n``/``\\r`` end a line (not U+2028, NEL or form feed, as ``str.splitlines`` would have it)."""
    import csv
    import io

    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep, strict=True)
    rows, end = [], 0
    while True:
        start = end + 1
        try:
            fields = next(reader)
        except StopIteration:
            return rows
        except csv.Error as exc:
            raise DatasetFormatError(
                f"{path}: the record starting on line {start} cannot be parsed ({exc}): a quoted field opened "
                "there is not closed, or a quote inside a field is not doubled. Put a field that holds the "
                f"separator {sep!r}, a quote or a line break in quotes, and write a quote inside it as \"\"."
            ) from None
        end = reader.line_num
        if fields:
            rows.append((start, fields))


def _csv_path(fn: str, images_dir: Path | None) -> str:
    """One spelling per file: ``./x``, ``x//`` and ``../d/x`` (from folder ``d``) are all ``x``; a path
    outside the image folder stays absolute."""
    norm = os.path.normpath(fn)
    if images_dir is None:
        return norm
    full = Path(os.path.normpath(images_dir / norm))
    base = Path(os.path.normpath(images_dir))
    return str(full.relative_to(base)) if full.is_relative_to(base) else str(full)


def read_csv_split(path: Path, split: str, columns: CSVColumns, problems: Problems,
                   images_dir: Path | None = None) -> list[ImageRecord]:
    """Read one caption CSV: a row per (image, caption); the rows of one image (however its path is
    spelt, relative to ``images_dir``) become one record with its captions in file order. Its rows are
    ``split``, or each row's own in the split column. Lines named are the file's physical lines."""
    text, bad_lines = _decode(path)
    if bad_lines:
        raise DatasetFormatError(f"{path}: line(s) {', '.join(map(str, bad_lines[:10]))} hold bytes that are not "
                                 f"valid UTF-8; {_UTF8_FIX}.")
    sep = columns.separator or ("\t" if path.suffix.lower() == ".tsv" else ",")
    rows = _csv_rows(path, text, sep)
    header_line, header = rows[0] if rows else (1, [])
    split_key = columns.split_key or ("split" if "split" in header else None)
    wanted = [("image", columns.img_key, "csv_img_key"), ("caption", columns.caption_key, "csv_caption_key")]
    wanted += [("scene", columns.scene_key, "csv_scene_key")] if columns.scene_key else []
    wanted += [("split", split_key, "csv_split_key")] if split_key else []
    for what, key, option in wanted:
        if key not in header:
            shown = ", ".join(repr(h) for h in header[:12]) or "none"
            hint = " (is the separator right? pass csv_separator=, command line --csv-separator)" \
                if len(header) <= 1 else ""
            raise DatasetFormatError(f"{path}: no {what} column {key!r}; its columns are {shown}{hint}. Name the "
                                     f"{what} column with {option}= (command line: --{option.replace('_', '-')}).")
        where = [i + 1 for i, h in enumerate(header) if h == key]
        if len(where) > 1:
            raise DatasetFormatError(f"{path}: line {header_line}, the header, names the {what} column {key!r} "
                                     f"{len(where)} times (columns {', '.join(map(str, where))}); rename all but one")
    records: dict[str, ImageRecord] = {}
    for line, fields in rows[1:]:
        row = dict(zip(header, fields))
        fn = (row.get(columns.img_key) or "").strip()
        caption = " ".join((row.get(columns.caption_key) or "").split())  # a line break inside quotes is a space
        where = f"{path}: line {line} ({columns.img_key}={_printable(fn)!r})"
        row_split = _FILE_SPLITS.get((row.get(split_key) or "").strip().lower()) if split_key else split
        if len(fields) > len(header):
            problems.report(f"{where} has {len(fields)} fields, more than the header's {len(header)}; quote fields "
                            f"that hold the separator {sep!r}", split=row_split, record=where)
            continue
        if not fn:
            problems.report(f"{where} has an empty {columns.img_key!r}; give the image's path", split=row_split,
                            record=where)
            continue
        if row_split is None:
            problems.report(f"{where} has {split_key}={row.get(split_key)!r}; expected train, val or test",
                            split=None, record=where)
            continue
        key = _csv_path(fn, images_dir)
        rec = records.get(key)
        if rec is None:
            label = (row.get(columns.scene_key) or "").strip() if columns.scene_key else ""
            rec = records[key] = ImageRecord(key, row_split, [], f"{path}: image {_printable(fn)!r} (line {line})",
                                             label or None)
        elif rec.split != row_split:
            problems.report(f"{where}: the image is in split {rec.split!r} on an earlier line and {row_split!r} "
                            "here; one image belongs to one split", split=rec.split, record=where)
            continue
        if not caption:
            problems.report(f"{where} has an empty {columns.caption_key!r}; write the caption or delete the line",
                            split=row_split, record=rec.where, caption=True)
            continue
        rec.captions.append(caption)
    out = []
    for rec in records.values():
        if rec.captions:
            out.append(rec)
        else:
            problems.report(f"{rec.where} is left out: none of its captions is usable", split=rec.split,
                            record=rec.where)
    return out


def csv_split_files(root: Path) -> dict[str, Path]:
    """The caption CSVs of a dataset: a file (its rows are train, or each row's in a split column), or a
    folder of ``train``, ``val`` and ``test`` files (``.csv`` or ``.tsv``)."""
    if root.is_file():
        return {"train": root}
    return {split: f for split in ("train", "val", "test") for f in [next(
        (root / f"{split}{suffix}" for suffix in CSV_SUFFIXES if (root / f"{split}{suffix}").is_file()), None)]
        if f is not None}
