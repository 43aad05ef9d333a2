"""Download, verify and extract dataset archives, with nothing beyond the standard library and tqdm.

The lifecycle follows torchgeo's: files present -> done; a URL known -> download, verify,
extract; otherwise raise :class:`DatasetNotFoundError` saying which file goes where. Downloads
write ``<name>.part`` and resume it with an HTTP ``Range`` request, so a dropped connection on a
multi-GB archive costs nothing; the final name appears only once the file is complete and its
checksum matches. Archives are checked member by member before anything is written.
"""

from __future__ import annotations

import http.client
import logging
import lzma
import os
import posixpath
import re
import shutil
import stat
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import warnings
import zipfile
import zlib
from pathlib import Path, PurePosixPath, PureWindowsPath

from rsretrieval.data.registry import get_dataset_info
from rsretrieval.errors import ChecksumError, DatasetFormatError, DatasetNotFoundError, UnsafeArchiveError
from rsretrieval.files import sha256_file

_logger = logging.getLogger(__name__)

_CHUNK = 1 << 16
_USER_AGENT = "rsretrieval/0.1 (+urllib)"


def verify_sha256(path: str | Path, expected: str, *, shown_name: str | None = None) -> None:
    """Raise :class:`ChecksumError` unless ``path`` has the SHA-256 ``expected``."""
    actual = sha256_file(path)
    if actual.lower() != expected.strip().lower():
        raise ChecksumError(
            f"{shown_name or path}: SHA-256 mismatch, expected {expected.strip().lower()}, got {actual}. "
            "The file is corrupt or a different version: delete it and download again, or check the "
            "expected checksum."
        )


def _name_from_url(url: str) -> str:
    name = posixpath.basename(urllib.parse.urlparse(url).path)
    return urllib.parse.unquote(name) or "download"


def _content_range_total(value: str | None) -> int | None:
    m = re.match(r"bytes\s+(?:\d+-\d+|\*)/(\d+)", value or "")
    return int(m.group(1)) if m else None


def download(
    url: str,
    dest: str | Path,
    *,
    sha256: str | None = None,
    resume: bool = True,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``dest``, resuming a previous partial download.

    Bytes go to ``dest + '.part'``; with ``resume=True`` an existing ``.part`` is continued
    with an HTTP ``Range`` request (a server that ignores it restarts the file). When the
    download is complete and matches ``sha256``, the ``.part`` is renamed to ``dest`` in one
    atomic step, so ``dest`` never holds a partial or unverified file.

    Args:
        url: an ``http(s)://`` (or ``file://``) URL.
        dest: the file to write, or an existing folder (the name is then taken from the URL).
        sha256: expected hex SHA-256 of the file; ``None`` skips the check.
        resume: continue an existing ``.part`` file instead of starting over.
        progress: show a tqdm progress bar.
        timeout: socket timeout in seconds.

    Returns:
        The path of the complete file.

    Raises:
        ChecksumError: the file does not match ``sha256`` (a bad ``.part`` is deleted).
        ConnectionError: the server could not be reached, answered with an HTTP error, or the
            transfer stopped early (the ``.part`` is kept: call again to resume).
    """
    from tqdm.auto import tqdm

    dest = Path(dest)
    if dest.is_dir():
        dest = dest / _name_from_url(url)
    if dest.exists():
        if sha256:
            verify_sha256(dest, sha256)
        _logger.info("%s already downloaded", dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if part.exists() and not resume:
        part.unlink()
    start = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": _USER_AGENT}
    if start:
        headers["Range"] = f"bytes={start}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start and _content_range_total(exc.headers.get("Content-Range")) == start:
            return _finish(part, dest, sha256, resumed=True)  # the .part already holds every byte
        if exc.code == 416 and start:
            part.unlink()  # the .part is longer than the file: it cannot be resumed
            return download(url, dest, sha256=sha256, resume=False, progress=progress, timeout=timeout)
        raise ConnectionError(
            f"HTTP {exc.code} ({exc.reason}) for {url}. The link may have moved: get the file by hand and "
            f"save it as {dest}."
        ) from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConnectionError(f"cannot reach {url} ({reason}); check the network") from exc

    with resp:
        status = getattr(resp, "status", None) or resp.getcode()
        length = resp.headers.get("Content-Length")
        if start and status == 206:
            total = _content_range_total(resp.headers.get("Content-Range"))
            if total is None and length is not None:
                total = start + int(length)
            mode = "ab"
            _logger.info("resuming %s at byte %d", dest.name, start)
        else:
            if start:
                _logger.info("%s ignored the Range request; downloading %s from the start", url, dest.name)
            start, mode = 0, "wb"
            total = int(length) if length is not None else None
        try:
            with open(part, mode) as f, tqdm(
                total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
                desc=dest.name, disable=not progress,
            ) as bar:  # fmt: skip
                while chunk := resp.read(_CHUNK):
                    f.write(chunk)
                    bar.update(len(chunk))
        except (http.client.HTTPException, OSError) as exc:
            raise ConnectionError(
                f"download of {url} broke off ({exc}); the partial file {part} is kept: call again to resume"
            ) from exc
    size = part.stat().st_size
    if total is not None and size != total:
        raise ConnectionError(
            f"download of {url} stopped at {size} of {total} bytes; the partial file {part} is kept: "
            "call again to resume"
        )
    return _finish(part, dest, sha256, resumed=mode == "ab")


def _finish(part: Path, dest: Path, sha256: str | None, resumed: bool = False) -> Path:
    if not sha256 and resumed:
        warnings.warn(f"{dest.name}: no checksum was given, so the bytes resumed from {part.name} were checked by "
                      "size only; pass sha256= to verify the whole file", UserWarning, stacklevel=3)
    if sha256:
        try:
            verify_sha256(part, sha256, shown_name=str(dest))
        except ChecksumError:
            part.unlink()  # resuming a corrupt file would only reproduce the mismatch
            raise
    os.replace(part, dest)
    return dest


# ---------------------------------------------------------------- extraction


def _check_member_name(name: str, dest: Path, archive: Path) -> Path:
    """The member's target under ``dest``; refuse absolute paths and ``..``."""
    posix = name.replace("\\", "/")
    if (
        not posix
        or posix.startswith("/")
        or PureWindowsPath(name).drive
        or ".." in PurePosixPath(posix).parts
    ):
        raise UnsafeArchiveError(
            f"{archive}: member {name!r} has an absolute path or '..' and would be written outside {dest}; "
            "refusing to extract. Get a clean copy of the archive."
        )
    target = Path(os.path.normpath(dest / posix))
    if not target.is_relative_to(dest):
        raise UnsafeArchiveError(
            f"{archive}: member {name!r} would be written outside {dest}; refusing to extract."
        )
    return target


def _check_link(name: str, link: str, dest: Path, archive: Path, *, hard: bool) -> None:
    """Refuse a link whose target lies outside ``dest``."""
    link_posix = link.replace("\\", "/")
    if hard:  # hard-link targets are archive member names
        base = dest
    else:  # symlink targets are relative to the link's folder
        base = Path(os.path.normpath(dest / posixpath.dirname(name.replace("\\", "/"))))
    if link_posix.startswith("/") or PureWindowsPath(link).drive:
        target = Path(os.path.normpath(link_posix))
    else:
        target = Path(os.path.normpath(base / link_posix))
    if not target.is_relative_to(dest):
        kind = "hard link" if hard else "symlink"
        raise UnsafeArchiveError(
            f"{archive}: member {name!r} is a {kind} to {link!r}, outside {dest}; refusing to extract. "
            "Get a clean copy of the archive."
        )


def _extract_zip(archive: Path, dest: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:
            _check_member_name(info.filename, dest, archive)
            if stat.S_ISLNK(info.external_attr >> 16):
                target = zf.read(info).decode("utf-8", "replace")
                _check_link(info.filename, target, dest, archive, hard=False)
        # zipfile writes an (in-folder) symlink member as a small file holding its target
        zf.extractall(dest)


def _extract_tar(archive: Path, dest: Path) -> None:
    with tarfile.open(archive, "r:*") as tf:
        members = tf.getmembers()
        _check_tar_end(tf, archive)
        for m in members:
            _check_member_name(m.name, dest, archive)
            if m.issym() or m.islnk():
                _check_link(m.name, m.linkname, dest, archive, hard=m.islnk())
            elif not (m.isfile() or m.isdir()):
                raise UnsafeArchiveError(
                    f"{archive}: member {m.name!r} is a device or fifo, not a file; refusing to extract."
                )
        try:
            # our checks above, and Python's own 'data' filter as a second line of defence
            tf.extractall(dest, members=members, filter="data")
        except tarfile.FilterError as exc:
            raise UnsafeArchiveError(f"{archive}: {exc}; refusing to extract.") from exc


def _check_tar_end(tf: tarfile.TarFile, archive: Path) -> None:
    """A complete tar ends with zero blocks after its last member; one cut at a member boundary does not."""
    tf.fileobj.seek(tf.offset)
    if tf.fileobj.read(2 * tarfile.BLOCKSIZE).strip(b"\0") or tf.offset == 0:
        return  # more data (tarfile stopped at a zero block of its own) or an empty archive
    tf.fileobj.seek(tf.offset)
    if len(tf.fileobj.read(2 * tarfile.BLOCKSIZE)) < 2 * tarfile.BLOCKSIZE:
        raise DatasetFormatError(f"{archive} is truncated: it ends after member {tf.getmembers()[-1].name!r} "
                                 "without the end-of-archive blocks, so members may be missing. Download it again.")


def extract(archive: str | Path, dest: str | Path) -> Path:
    """Extract a zip or tar (``.tar``, ``.tar.gz``, ``.tgz``, ``.tar.bz2``, ``.tar.xz``) archive.

    Every member is checked before anything is written: absolute paths, ``..`` components,
    links (symbolic or hard) pointing outside ``dest`` and, for tar, device files are refused.
    Tar archives are additionally extracted with Python's ``filter="data"``. The archive is unpacked
    into a temporary folder beside ``dest`` and moved in only when all of it was read: a truncated,
    damaged or refused archive leaves ``dest`` as it was.

    Args:
        archive: the archive file.
        dest: the folder to extract into (created if needed).

    Returns:
        ``dest``.

    Raises:
        UnsafeArchiveError: a member would land outside ``dest``.
        DatasetFormatError: the file is neither a zip nor a tar archive, or it is truncated or damaged.
    """
    archive = Path(archive)
    dest = Path(os.path.abspath(dest))
    if not archive.is_file():
        raise DatasetNotFoundError(f"archive {archive} does not exist")
    if zipfile.is_zipfile(archive):
        unpack = _extract_zip
    elif tarfile.is_tarfile(archive):
        unpack = _extract_tar
    else:
        raise DatasetFormatError(
            f"{archive} is neither a zip nor a tar archive (or it is truncated); it may be an HTML error page "
            "saved by a failed download: delete it and download again."
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.extract-", dir=dest.parent))
    try:  # into a folder beside dest: dest changes only once the whole archive has been read and checked
        try:
            unpack(archive, tmp)
        except (tarfile.ReadError, EOFError, zipfile.BadZipFile, zlib.error, lzma.LZMAError, OSError) as exc:
            raise DatasetFormatError(f"{archive} is truncated or damaged ({type(exc).__name__}: {exc}); "
                                     "download it again.") from None
        dest.mkdir(exist_ok=True)
        for item in tmp.iterdir():
            target = dest / item.name
            if target.exists() and item.is_dir() and not item.is_symlink():
                shutil.copytree(item, target, symlinks=True, dirs_exist_ok=True)
            else:
                os.replace(item, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _logger.info("extracted %s into %s", archive, dest)
    return dest


# ---------------------------------------------------------------- the dataset lifecycle


def prepare_dataset(
    name: str,
    root: str | Path,
    url: str | None = None,
    sha256: str | None = None,
    *,
    progress: bool = True,
) -> Path:
    """Make sure a dataset's files are in ``root``.

    Files already there -> nothing to do. A generated dataset (SynthRS) -> generated with
    :func:`rsretrieval.data.synthrs.generate_synthrs`. A ``url`` (given, or the registry's) ->
    download into ``root``, verify ``sha256`` (given, or the registry's for that file name) and
    extract. Otherwise raise an error saying exactly which file to put where.

    Args:
        name: registry name (see :func:`rsretrieval.data.list_datasets`).
        root: the dataset folder.
        url: an archive URL overriding the registry's.
        sha256: the archive's expected SHA-256.
        progress: show a progress bar while downloading.

    Returns:
        The folder to pass as ``root`` to :func:`rsretrieval.data.load_dataset` (a sub-folder of
        ``root`` when the archive wraps the files in one).

    Raises:
        DatasetNotFoundError: the files are missing and there is nothing to download them from.
    """
    info = get_dataset_info(name)
    root = Path(root).expanduser()
    if info.generated:  # the generator checks what is there: files of other parameters are refused by name
        from rsretrieval.data.synthrs import generate_synthrs  # imported only when needed

        return Path(generate_synthrs(root))
    if not info.missing_files(root) or (info.name == "karpathy" and root.is_file()):
        return root
    url = url or info.url
    if url is None:
        raise DatasetNotFoundError(info.not_found_message(root))
    archive_name = _name_from_url(url)
    expected = sha256 or info.sha256.get(archive_name)
    archive = download(url, root / archive_name, sha256=expected, progress=progress)
    extract(archive, root)
    if not info.missing_files(root):
        return root
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        if not info.missing_files(sub):
            return sub
    raise DatasetNotFoundError(
        f"extracted {archive} into {root}, but the expected files are still missing.\n"
        + info.not_found_message(root)
    )
