"""Parsers of the published caption-annotation formats, scene rules and the validation carve.

Every parser turns a file into :class:`ImageRecord` objects: one per image, with its captions in
file order and the file's own split. Record-level problems (a missing field, an empty caption,
non-UTF-8 bytes, a repeated file name) go through a :class:`Problems` collector, which raises at
the first one or, with ``on_error='skip'``, notes it and leaves the record out. File-level
problems (the file is not JSON, the two precomp files do not line up) always raise: there is no
record to skip.
"""

from __future__ import annotations

import codecs
import json
import logging
import os
import random
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rsretrieval.data.dataset import normalize_scene
from rsretrieval.data.registry import UCM_CLASSES, DatasetInfo
from rsretrieval.errors import DatasetFormatError, DatasetNotFoundError

if TYPE_CHECKING:
    from rsretrieval.data.caption_csv import CSVColumns

_logger = logging.getLogger(__name__)

UNKNOWN = "unknown"
_FILE_SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}
_UTF8_FIX = "re-save the file as UTF-8 (e.g. `iconv -f WINDOWS-1252 -t UTF-8 in > out`)"


@dataclass
class ImageRecord:
    """One image as read from an annotation file.

    Attributes:
        filename: path of the image relative to the images folder.
        split: ``train``, ``val`` or ``test`` (``restval`` already mapped to ``train``).
        captions: the image's captions, stripped, in file order.
        where: the record's location for messages (file, record number or line, file name).
        label: an explicit class field of the record, if any.
    """

    filename: str
    split: str
    captions: list[str]
    where: str
    label: str | None = None


@dataclass(frozen=True)
class Problem:
    """One record-level problem.

    Attributes:
        message: what is wrong, where, and the fix.
        split: the split of the record in the file (``None`` when it could not be read).
        record: the record's :attr:`ImageRecord.where`; groups a record's caption problems.
        caption: True when only one caption was dropped (the record may still be kept).
    """

    message: str
    split: str | None
    record: str
    caption: bool = False


class Problems:
    """Collects record-level problems.

    Args:
        on_error: ``raise`` (raise :class:`DatasetFormatError` at the first problem), ``skip`` or
            ``collect`` (note it; the caller leaves the record or caption out). ``collect`` is
            ``skip`` without the final summary warning, for :func:`rsretrieval.data.check_dataset`.
    """

    def __init__(self, on_error: str = "raise") -> None:
        if on_error not in ("raise", "skip", "collect"):
            raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
        self.on_error = on_error
        self.found: list[Problem] = []

    def report(self, message: str, *, split: str | None, record: str, caption: bool = False) -> None:
        """Raise ``message`` or note it, depending on ``on_error``."""
        if self.on_error == "raise":
            raise DatasetFormatError(message + " (or load with on_error='skip' to leave the record out)")
        _logger.debug("skipped: %s", message)
        self.found.append(Problem(message, split, record, caption))

    @property
    def notes(self) -> list[str]:
        return [p.message for p in self.found]

    def __len__(self) -> int:
        return len(self.found)

    def of_split(self, split: str, final_split: dict[str, str]) -> list[Problem]:
        """The problems that concern a load of ``split``.

        A kept record's problems go with its final split (``final_split``, by record, after the
        validation carve); a record left out stays in its file split. Problems whose split could
        not be read concern every split.
        """
        return [
            p
            for p in self.found
            if split == "all" or final_split.get(p.record, p.split) in (split, None)
        ]


def left_out_summary(problems: list[Problem]) -> str:
    """``3 image record(s) and 1 caption(s) of kept images``: what was left out, counted right."""
    dropped = {p.record for p in problems if not p.caption}
    captions = sum(p.caption and p.record not in dropped for p in problems)
    parts = [f"{len(dropped)} image record(s)"] if dropped else []
    if captions:
        parts.append(f"{captions} caption(s) of kept images" if dropped else f"{captions} caption(s)")
    unknown = sum(p.split is None for p in problems)
    tail = f" ({unknown} of unknown split)" if unknown else ""
    return " and ".join(parts) + tail


# ---------------------------------------------------------------- text decoding helpers


def _has_bad_bytes(text: str) -> bool:
    # surrogateescape maps each undecodable byte to U+DC80..U+DCFF
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def _printable(text: str) -> str:
    return "".join("\ufffd" if "\udc80" <= ch <= "\udcff" else ch for ch in text)


def _decode(path: Path) -> tuple[str, list[int]]:
    """The file's text and the 1-based numbers of lines holding non-UTF-8 bytes."""
    data = path.read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    try:
        return data.decode("utf-8"), []
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="surrogateescape")
        bad = [n for n, line in enumerate(text.split("\n"), 1) if _has_bad_bytes(line)]
        return text, bad


# ---------------------------------------------------------------- Karpathy json


def read_karpathy(path: str | Path, problems: Problems) -> list[ImageRecord]:
    """Read a Karpathy-style caption json (RSITMD, RSICD, UCM, Sydney, SynthRS, COCO-style).

    The file holds ``{"images": [{"filename", "split", "sentences": [{"raw", "tokens"}, ...]}]}``.
    A caption is the stripped ``raw`` text, or the ``tokens`` joined by spaces when ``raw`` is
    missing. An optional ``filepath`` is prepended to ``filename``; an optional ``label``,
    ``class`` or ``scene`` field becomes :attr:`ImageRecord.label`.

    Args:
        path: the json file.
        problems: where record-level problems go.

    Returns:
        One record per usable image, in file order.

    Raises:
        DatasetFormatError: the file is not JSON or not shaped like a Karpathy file, or (with
            ``on_error='raise'``) a record is bad.
    """
    path = Path(path)
    text, bad_lines = _decode(path)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetFormatError(
            f"{path}: not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}. The file is damaged "
            "or truncated: download it again, or fix that spot by hand."
        ) from exc
    images = doc.get("images") if isinstance(doc, dict) else None
    if not isinstance(images, list):
        raise DatasetFormatError(
            f"{path}: expected a Karpathy-style object with an 'images' list at the top level, found "
            f"{type(doc).__name__}{' with keys ' + str(sorted(doc)[:8]) if isinstance(doc, dict) else ''}. "
            "Is this the right annotation file?"
        )
    def line_of(value: str) -> str:
        """Where ``value`` sits in the file, for messages about non-UTF-8 bytes."""
        pos = text.find(value)
        if pos >= 0:
            return f" (line {text.count(chr(10), 0, pos) + 1})"
        return f" (non-UTF-8 bytes on line(s) {', '.join(map(str, bad_lines[:10]))})"

    records: list[ImageRecord] = []
    seen_bad = False
    for k, img in enumerate(images):
        rec, bad = _karpathy_record(path, k, img, problems, line_of)
        seen_bad |= bad
        if rec is not None:
            records.append(rec)
    if bad_lines and not seen_bad:
        # the bad bytes sit outside any filename or caption (a key, the "dataset" field...)
        raise DatasetFormatError(
            f"{path}: line(s) {', '.join(map(str, bad_lines[:10]))} hold bytes that are not valid UTF-8; "
            f"{_UTF8_FIX}."
        )
    return records


def _karpathy_record(
    path: Path, k: int, img: object, problems: Problems, line_of: Callable[[str], str]
) -> tuple[ImageRecord | None, bool]:
    """One image record, or ``None`` when it is unusable; and whether it held non-UTF-8 bytes."""
    if not isinstance(img, dict):
        where = f"{path}: image record #{k}"
        problems.report(
            f"{where} is a {type(img).__name__}, not an object; remove or fix it", split=None, record=where
        )
        return None, False
    fn, imgid = img.get("filename"), img.get("imgid")
    where = f"{path}: image record #{k} (filename={_printable(str(fn))!r}, imgid={imgid!r})"
    split = _FILE_SPLITS.get(str(img.get("split", "")).strip().lower())

    def drop(message: str) -> None:
        problems.report(message, split=split, record=where)

    if not isinstance(fn, str) or not fn.strip():
        drop(f"{where} has no 'filename' string; add the image's file name to the record")
        return None, False
    if _has_bad_bytes(fn):
        drop(f"{where}: the file name holds non-UTF-8 bytes{line_of(fn)}; {_UTF8_FIX}")
        return None, True
    fn = fn.strip()
    if isinstance(img.get("filepath"), str) and img["filepath"].strip():
        fn = f"{img['filepath'].strip().rstrip('/')}/{fn}"
    if split is None:
        drop(f"{where} has split={img.get('split')!r}; expected one of 'train', 'val', 'test', 'restval'")
        return None, False
    sentences = img.get("sentences")
    if not isinstance(sentences, list) or not sentences:
        drop(f"{where} has no 'sentences' list (or it is empty); add its captions or remove the record")
        return None, False
    captions, bad = [], False
    for s, sent in enumerate(sentences):
        sid = sent.get("sentid") if isinstance(sent, dict) else None
        swhere = f"{where}, sentence #{s} (sentid={sid!r})"
        cap = _sentence_text(sent)
        message = None
        if cap is None:
            message = f"{swhere} has neither a 'raw' string nor a 'tokens' list; add the caption text"
        elif _has_bad_bytes(cap):
            bad = True
            message = f"{swhere}: caption {_printable(cap)!r} holds non-UTF-8 bytes{line_of(cap)}; {_UTF8_FIX}"
        elif not cap:
            message = f"{swhere} is an empty caption; write the caption or delete the sentence"
        else:
            captions.append(cap)
        if message:
            problems.report(message, split=split, record=where, caption=True)
    if not captions:
        drop(f"{where} is left out: none of its captions is usable")
        return None, bad
    label = next((img[key] for key in ("label", "class", "scene") if img.get(key) not in (None, "")), None)
    return ImageRecord(fn, split, captions, where, None if label is None else str(label)), bad


def _sentence_text(sent: object) -> str | None:
    if not isinstance(sent, dict):
        return None
    raw = sent.get("raw")
    if isinstance(raw, str):
        return raw.strip()
    tokens = sent.get("tokens")
    if isinstance(tokens, list) and all(isinstance(t, str) for t in tokens):
        return " ".join(t.strip() for t in tokens if t.strip())
    return None


# ---------------------------------------------------------------- precomp text files


def read_precomp(folder: str | Path, problems: Problems) -> list[ImageRecord]:
    """Read the AMFMN/GaLR/PE-RSITR ``precomp`` layout.

    For each split in train, val, test whose files exist: ``{split}_caps.txt`` holds one
    caption per line and ``{split}_filename.txt`` one image file name per line, either one line
    per caption (same line count) or one line per image with 5 consecutive captions each (a
    fifth of the lines). Published copies use both conventions, so the line counts decide.

    Args:
        folder: the folder holding the text files.
        problems: where record-level problems go.

    Returns:
        One record per usable image, grouped by split in file order.

    Raises:
        DatasetNotFoundError: one file of a pair is missing, or ``train`` is missing.
        DatasetFormatError: the line counts match neither convention, or (with
            ``on_error='raise'``) a line is bad.
    """
    folder = Path(folder)
    records: list[ImageRecord] = []
    for split in ("train", "val", "test"):
        caps_path, names_path = folder / f"{split}_caps.txt", folder / f"{split}_filename.txt"
        if not caps_path.exists() and not names_path.exists() and split != "train":
            continue
        for p in (caps_path, names_path):
            if not p.exists():
                raise DatasetNotFoundError(
                    f"{p} is missing: the precomp layout needs both {caps_path.name} (one caption per line) "
                    f"and {names_path.name} (image file names) in {folder}."
                )
        records.extend(_precomp_split(split, caps_path, names_path, problems))
    return records


def _read_lines(path: Path) -> list[tuple[str | None, bytes]]:
    """The file's lines as (text, or ``None`` when not UTF-8; raw bytes), without trailing blanks."""
    data = path.read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    raw_lines = data.split(b"\n")
    while raw_lines and not raw_lines[-1].strip():
        raw_lines.pop()
    out: list[tuple[str | None, bytes]] = []
    for raw in raw_lines:
        try:
            out.append((raw.decode("utf-8").strip(), raw))
        except UnicodeDecodeError:
            out.append((None, raw))
    return out


def _not_utf8(path: Path, n: int, raw: bytes) -> str:
    return f"{path}: line {n} ({raw[:60]!r}) holds bytes that are not valid UTF-8; {_UTF8_FIX}"


def _precomp_split(split: str, caps_path: Path, names_path: Path, problems: Problems) -> list[ImageRecord]:
    caps, names = _read_lines(caps_path), _read_lines(names_path)
    if len(names) == len(caps):
        per = 1
    elif len(names) * 5 == len(caps):
        per = 5
    else:
        raise DatasetFormatError(
            f"{caps_path} has {len(caps)} lines but {names_path} has {len(names)}: expected the same number "
            "(one file name per caption) or a fifth (one file name per image, 5 consecutive captions each). "
            "Check that neither file is truncated or has stray blank lines."
        )
    by_name: dict[str, ImageRecord] = {}
    out: list[ImageRecord] = []
    for i, (name, raw_name) in enumerate(names):
        where = f"{names_path}: line {i + 1} (filename={name!r})"
        # with one line per caption, a bad name line loses one caption; with one per image, an image
        line_problem = {"split": split, "record": where, "caption": per == 1}
        if name is None:
            problems.report(_not_utf8(names_path, i + 1, raw_name), **line_problem)
            continue
        if not name:
            problems.report(f"{where} is blank; write the image file name on that line", **line_problem)
            continue
        if per == 5 and name in by_name:
            problems.report(
                f"{where} repeats a file name already on {by_name[name].where}; each image once", **line_problem
            )
            continue
        rec = by_name.get(name)
        if rec is None:
            rec = by_name[name] = ImageRecord(name, split, [], where)
            out.append(rec)
        for j in range(i * per, i * per + per):
            cap, raw_cap = caps[j]
            if cap is None:
                message = _not_utf8(caps_path, j + 1, raw_cap)
            elif not cap:
                message = f"{caps_path}: line {j + 1} (caption of {name!r}) is empty; write the caption"
            else:
                rec.captions.append(cap)
                continue
            problems.report(message, split=split, record=rec.where, caption=True)
    usable = []
    for rec in out:
        if rec.captions:
            usable.append(rec)
        else:
            problems.report(
                f"{rec.where} is left out: none of its captions is usable", split=split, record=rec.where
            )
    return usable


# ---------------------------------------------------------------- checks shared by every format

def drop_duplicates(records: list[ImageRecord], problems: Problems) -> list[ImageRecord]:
    """Keep the first record of each file name; report the others (including across splits)."""
    first: dict[str, ImageRecord] = {}
    out = []
    for rec in records:
        key = os.path.normcase(rec.filename)
        if key in first:
            problems.report(
                f"{rec.where} repeats file name {rec.filename!r} of {first[key].where}; an image must appear "
                "once (merge the two records' sentences or remove one)",
                split=rec.split,
                record=rec.where,
            )
            continue
        first[key] = rec
        out.append(rec)
    return out


# ---------------------------------------------------------------- scenes


def prefix_scene(filename: str) -> str | None:
    """``denseresidential_12.tif`` -> ``denseresidential``; ``None`` when the stem has no ``_``."""
    stem = Path(filename).stem
    if "_" not in stem:
        return None
    return normalize_scene(stem.rsplit("_", 1)[0]) or None


def ucm_scene(filename: str) -> str | None:
    """UCM image ``n.tif`` (n in 1..2100) -> its UC-Merced class; ``None`` otherwise."""
    stem = Path(filename).stem
    if not stem.isdigit() or not 1 <= int(stem) <= 100 * len(UCM_CLASSES):
        return None
    return UCM_CLASSES[(int(stem) - 1) // 100]


def read_class_lists(folder: str | Path) -> dict[str, str]:
    """RSICD's ``txtclasses_rsicd/<Class>.txt`` files as ``{image file name: scene}``."""
    mapping: dict[str, str] = {}
    for txt in sorted(Path(folder).glob("*.txt")):
        scene = normalize_scene(txt.stem)
        try:
            lines = txt.read_text(encoding="utf-8-sig").splitlines()
        except UnicodeDecodeError as exc:
            raise DatasetFormatError(f"{txt}: not valid UTF-8 ({exc}); {_UTF8_FIX}") from exc
        for line in lines:
            name = Path(line.strip()).name
            if name and mapping.setdefault(name, scene) != scene:
                _logger.warning("%s lists %s, already in class %s; keeping that", txt, name, mapping[name])
    return mapping




def assign_scenes(
    info: DatasetInfo, records: list[ImageRecord], root: Path, scene_rule: str | None = None
) -> list[str]:
    """One normalised scene per record.

    An explicit ``label``/``class``/``scene`` field always wins. Otherwise ``prefix`` takes the
    file-name prefix before the last ``_`` (for RSICD, names without one are looked up in
    ``root/txtclasses_rsicd/*.txt``), ``ucm`` maps ids to UC-Merced classes, ``field`` gives
    ``unknown``. A rule that leaves images unlabelled issues one warning for the whole load.

    Args:
        info: the dataset's registry entry.
        records: the images.
        root: the dataset root (for RSICD's class lists).
        scene_rule: ``prefix``, ``ucm``, ``field`` or ``None`` for the dataset's default.
    """
    rule = scene_rule or info.scene_rule
    if rule not in ("prefix", "ucm", "field"):
        raise ValueError(f"scene_rule must be 'prefix', 'ucm' or 'field', not {scene_rule!r}")
    classes: dict[str, str] = {}
    class_dir = root / "txtclasses_rsicd"
    if info.name == "rsicd" and class_dir.is_dir():
        classes = read_class_lists(class_dir)
    scenes, unlabelled = [], []
    for rec in records:
        if rec.label is not None and normalize_scene(rec.label):
            scenes.append(normalize_scene(rec.label))
            continue
        scene = None
        if rule == "prefix":
            scene = prefix_scene(rec.filename) or classes.get(Path(rec.filename).name)
        elif rule == "ucm":
            scene = ucm_scene(rec.filename)
        if scene is None and rule != "field":
            unlabelled.append(rec.filename)
        scenes.append(scene or UNKNOWN)
    if unlabelled:
        _warn_unlabelled(info, rule, unlabelled, root, bool(classes))
    return scenes


def _warn_unlabelled(info: DatasetInfo, rule: str, names: list[str], root: Path, had_classes: bool) -> None:
    examples = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    if info.name == "rsicd":
        fix = (
            f"{'some are not listed in' if had_classes else 'put the class lists at'} "
            f"{root / 'txtclasses_rsicd'}/<Class>.txt (one image file name per line; from {info.source})"
        )
    elif rule == "ucm":
        fix = "UCM images must be named 1.tif ... 2100.tif"
    else:
        fix = "their names have no '<scene>_' prefix"
    warnings.warn(
        f"{info.name}: {len(names)} image(s) get scene 'unknown' ({examples}): {fix}.",
        UserWarning,
        stacklevel=4,  # the caller of load_dataset
    )


# ---------------------------------------------------------------- validation carve


def carve_validation(
    filenames: list[str], scenes: list[str], val_fraction: float, seed: int = 0
) -> set[int]:
    """Pick ``val_fraction`` of the given (train) images for validation, by image.

    Stratified by scene: each scene gives its share, rounded by largest remainder so the total is
    ``round(n * val_fraction)`` (at least one, at most ``n - 1``). Images are sorted by file name
    before the seeded shuffle, so the choice depends on ``seed`` and the file names only, not on
    the order of the annotation file.

    Args:
        filenames: one per train image.
        scenes: one per train image.
        val_fraction: share of images for validation, in (0, 1).
        seed: seed of the shuffle.

    Returns:
        Indices (into ``filenames``) of the validation images.
    """
    n = len(filenames)
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), not {val_fraction}")
    if n < 2:
        raise DatasetFormatError(f"cannot carve a validation split from {n} train image(s); need at least 2")
    n_val = min(max(round(n * val_fraction), 1), n - 1)
    groups: dict[str, list[int]] = {}
    for i in sorted(range(n), key=lambda i: filenames[i]):
        groups.setdefault(scenes[i], []).append(i)
    exact = {s: len(g) * n_val / n for s, g in groups.items()}
    quota = {s: int(q) for s, q in exact.items()}
    leftover = n_val - sum(quota.values())
    for s in sorted(groups, key=lambda s: (-(exact[s] - quota[s]), -len(groups[s]), s))[:leftover]:
        quota[s] += 1
    rng = random.Random(seed)
    chosen: set[int] = set()
    for s in sorted(groups):
        members = list(groups[s])
        rng.shuffle(members)
        chosen.update(members[: quota[s]])
    return chosen


# ---------------------------------------------------------------- finding the files


@dataclass
class Source:
    """Where one dataset's files were found.

    Attributes:
        root: the dataset folder.
        annotation: the json file, or for ``precomp`` the folder of the text files.
        images_dir: the folder the image file names are relative to.
    """

    root: Path
    annotation: Path
    images_dir: Path


def locate(info: DatasetInfo, root: str | Path, images_dir: str | Path | None = None) -> Source:
    """Find a dataset's annotation file(s) and image folder, or say exactly what is missing.

    Args:
        info: the dataset's registry entry.
        root: the dataset folder (for ``karpathy``, also the json file itself).
        images_dir: overrides the registry's image folder (relative paths are taken from the root).

    Raises:
        DatasetNotFoundError: listing the missing file, the expected layout and the source.
    """
    root = Path(root).expanduser()
    if info.name == "karpathy":
        return _locate_karpathy(info, root, images_dir)
    if info.reader == "csv":
        return _locate_csv(info, root, images_dir)
    images = _images_dir(root, images_dir, root / info.image_dir)
    missing = [root / f for f in info.annotation_files if not (root / f).is_file()]
    if not images.is_dir():
        missing.append(images)
    if not missing:
        annotation = root if info.reader == "precomp" else root / info.annotation_files[0]
        return Source(root, annotation, images)
    if info.generated:
        raise DatasetNotFoundError(
            f"SynthRS not found in root={str(root)!r} (missing {', '.join(map(str, missing))}). "
            f"It is generated, not downloaded: run `python -m rsretrieval data synth --root {root}` first."
        )
    if info.reader == "precomp" and missing == [images] and images_dir is None:
        raise DatasetNotFoundError(
            f"{images} does not exist. Precomp text files carry no images: pass images_dir= the folder "
            f"holding the images named in {root / 'train_filename.txt'} (e.g. the RSITMD 'images' folder)."
        )
    message = info.not_found_message(root, missing)
    hint = _nested_hint(info, root)
    raise DatasetNotFoundError(message + hint)


def _images_dir(root: Path, images_dir: str | Path | None, default: Path) -> Path:
    if images_dir is None:
        return default
    p = Path(images_dir).expanduser()
    return p if p.is_absolute() else root / p


def _nested_hint(info: DatasetInfo, root: Path) -> str:
    """Point at a copy one folder down (archives often add a top-level folder)."""
    if not root.is_dir():
        return ""
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        if all((sub / f).is_file() for f in info.annotation_files):
            return f"\nFound {info.annotation_files[0]} in {sub}: did you mean root={str(sub)!r}?"
    return ""


def _locate_karpathy(info: DatasetInfo, root: Path, images_dir: str | Path | None) -> Source:
    if root.is_file():
        annotation, folder = root, root.parent
    elif root.is_dir():
        folder = root
        candidates = sorted(p for p in root.glob("*.json") if p.name != "objects.json")
        if (root / "dataset.json").is_file():
            annotation = root / "dataset.json"
        elif len(candidates) == 1:
            annotation = candidates[0]
        else:
            found = ", ".join(p.name for p in candidates) or "none"
            raise DatasetNotFoundError(
                f"cannot tell which Karpathy-style json to read in {root} (json files found: {found}). "
                "Pass the json file itself as root, e.g. load_dataset('karpathy', 'DIR/dataset_coco.json', "
                "images_dir='DIR/images')."
            )
    else:
        raise DatasetNotFoundError(
            f"{root} does not exist. For 'karpathy', root is a Karpathy-style json file or the folder "
            f"holding it, with the images in images_dir (default: its 'images' folder).\n{info.layout(root)}"
        )
    if images_dir is not None:
        images = _images_dir(folder, images_dir, folder)
    else:
        found = [folder / d for d in ("images", "imgs", "RSICD_images") if (folder / d).is_dir()]
        images = found[0] if found else folder
    if not images.is_dir():
        raise DatasetNotFoundError(
            f"image folder {images} does not exist; pass images_dir= the folder of the images"
        )
    return Source(folder, annotation, images)


def _locate_csv(info: DatasetInfo, root: Path, images_dir: str | Path | None) -> Source:
    from rsretrieval.data.caption_csv import CSV_SUFFIXES, csv_split_files

    if root.is_file() and root.suffix.lower() not in CSV_SUFFIXES:
        raise DatasetNotFoundError(f"{root} is not a .csv or .tsv file; for 'csv', root is a caption CSV, or a "
                                   f"folder of train.csv, val.csv and test.csv\n{info.layout(root)}")
    if not root.exists() or (root.is_dir() and "train" not in csv_split_files(root)):
        raise DatasetNotFoundError(f"no caption CSV at {root}: for 'csv', root is a caption CSV (open_clip's "
                                   f"format), or a folder holding train.csv (val.csv, test.csv optional)\n"
                                   f"{info.layout(root)}")
    folder = root.parent if root.is_file() else root
    images = _images_dir(folder, images_dir, folder)  # image paths are relative to the CSV's folder
    return Source(folder, root, images)


def read_records(info: DatasetInfo, source: Source, problems: Problems,
                 columns: CSVColumns | None = None) -> list[ImageRecord]:
    """Parse a located dataset with its format's reader and drop repeated file names."""
    if info.reader == "csv":
        from rsretrieval.data.caption_csv import CSVColumns, csv_split_files, read_csv_split

        records = [rec for split, path in csv_split_files(source.annotation).items()
                   for rec in read_csv_split(path, split, columns or CSVColumns(), problems, source.images_dir)]
    elif info.reader == "precomp":
        records = read_precomp(source.annotation, problems)
    else:
        records = read_karpathy(source.annotation, problems)
    return drop_duplicates(records, problems)
