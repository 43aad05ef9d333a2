"""Download, resume, checksum and safe extraction, against a loopback HTTP server (no internet)."""

from __future__ import annotations

import hashlib
import io
import re
import stat
import sys
import tarfile
import threading
import types
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from fakedata import make_ucm

from rsretrieval.data import load_dataset
from rsretrieval.data.fetch import download, extract, prepare_dataset
from rsretrieval.files import sha256_file
from rsretrieval.errors import (
    ChecksumError,
    DatasetFormatError,
    DatasetNotFoundError,
    UnsafeArchiveError,
)

PAYLOAD = bytes(range(256)) * 800  # 200 KiB, several read chunks


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.files``; honours ``Range: bytes=N-`` unless ``server.honor_range`` is off,
    and sends only ``server.cut_after`` body bytes of the next response (then drops the link)."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        srv = self.server
        data = srv.files.get(self.path)
        rng = self.headers.get("Range")
        srv.requests.append((self.path, rng))
        if data is None:
            self.send_error(404)
            return
        m = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if m and srv.honor_range:
            start = int(m.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = data[start:]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            body = data
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.cut_after is not None:
            self.wfile.write(body[: srv.cut_after])
            srv.cut_after = None
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.requests, srv.honor_range, srv.cut_after = {"/data.bin": PAYLOAD}, [], True, None
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    srv.base = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


SHA = hashlib.sha256(PAYLOAD).hexdigest()


# ---------------------------------------------------------------- download


def test_full_download(server, tmp_path):
    out = download(f"{server.base}/data.bin", tmp_path / "data.bin", sha256=SHA, progress=False)
    assert out.read_bytes() == PAYLOAD
    assert not (tmp_path / "data.bin.part").exists()
    assert server.requests == [("/data.bin", None)]
    # a second call finds the verified file and does not download again
    assert download(f"{server.base}/data.bin", tmp_path, sha256=SHA, progress=False) == out
    assert len(server.requests) == 1


def test_resume_from_truncated_part(server, tmp_path):
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD[:70_000])
    out = download(f"{server.base}/data.bin", tmp_path / "data.bin", sha256=SHA, progress=False)
    assert out.read_bytes() == PAYLOAD
    assert server.requests == [("/data.bin", "bytes=70000-")]


def test_resume_without_checksum_warns_that_only_the_size_was_checked(server, tmp_path):
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD[:70_000])
    with pytest.warns(UserWarning, match="no checksum was given.*size only"):
        out = download(f"{server.base}/data.bin", tmp_path / "data.bin", progress=False)
    assert out.read_bytes() == PAYLOAD


def test_broken_transfer_keeps_part_then_resumes(server, tmp_path):
    server.cut_after = 50_000
    with pytest.raises(ConnectionError, match=r"stopped at 50000 of 204800 bytes.*resume"):
        download(f"{server.base}/data.bin", tmp_path / "data.bin", progress=False)
    assert (tmp_path / "data.bin.part").stat().st_size == 50_000
    assert not (tmp_path / "data.bin").exists()
    out = download(f"{server.base}/data.bin", tmp_path / "data.bin", sha256=SHA, progress=False)
    assert out.read_bytes() == PAYLOAD
    assert server.requests[-1] == ("/data.bin", "bytes=50000-")


def test_server_ignoring_range_restarts(server, tmp_path):
    server.honor_range = False
    (tmp_path / "data.bin.part").write_bytes(b"garbage" * 100)
    out = download(f"{server.base}/data.bin", tmp_path / "data.bin", sha256=SHA, progress=False)
    assert out.read_bytes() == PAYLOAD


def test_complete_part_answered_416(server, tmp_path):
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD)
    out = download(f"{server.base}/data.bin", tmp_path / "data.bin", sha256=SHA, progress=False)
    assert out.read_bytes() == PAYLOAD


def test_checksum_mismatch(server, tmp_path):
    wrong = "0" * 64
    with pytest.raises(ChecksumError) as err:
        download(f"{server.base}/data.bin", tmp_path / "data.bin", sha256=wrong, progress=False)
    msg = str(err.value)
    assert "data.bin" in msg and wrong in msg and SHA in msg
    assert not (tmp_path / "data.bin").exists() and not (tmp_path / "data.bin.part").exists()
    # an existing file with the wrong checksum is reported, not silently used
    (tmp_path / "data.bin").write_bytes(b"tampered")
    with pytest.raises(ChecksumError, match="expected " + SHA):
        download(f"{server.base}/data.bin", tmp_path / "data.bin", sha256=SHA, progress=False)


def test_http_error(server, tmp_path):
    with pytest.raises(ConnectionError, match="HTTP 404"):
        download(f"{server.base}/missing.zip", tmp_path / "missing.zip", progress=False)


# ---------------------------------------------------------------- extraction


def _zip(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return path


def _tar(path: Path, members: dict[str, bytes], links: dict[str, tuple[bytes, str]] | None = None) -> Path:
    mode = {".gz": "w:gz", ".bz2": "w:bz2", ".xz": "w:xz"}.get(path.suffix, "w")
    with tarfile.open(path, mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, (kind, target) in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tf.addfile(info)
    return path


GOOD = {"ds/dataset.json": b"{}", "ds/imgs/1.tif": b"x"}


def test_extract_zip(tmp_path):
    out = extract(_zip(tmp_path / "a.zip", GOOD), tmp_path / "out")
    assert (out / "ds" / "dataset.json").read_bytes() == b"{}"
    assert (out / "ds" / "imgs" / "1.tif").read_bytes() == b"x"


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz", ".tar.bz2", ".tar.xz"])
def test_extract_tar(tmp_path, suffix):
    archive = _tar(tmp_path / f"a{suffix}", GOOD, {"ds/link.json": (tarfile.SYMTYPE, "dataset.json")})
    out = extract(archive, tmp_path / "o")
    assert (out / "ds" / "imgs" / "1.tif").read_bytes() == b"x"
    assert (out / "ds" / "link.json").read_bytes() == b"{}"  # a link inside the folder is fine


@pytest.mark.parametrize(
    ("make", "pattern"),
    [
        (lambda p: _zip(p / "a.zip", {"../evil.txt": b"!"}), "absolute path or '..'"),
        (lambda p: _zip(p / "a.zip", {"ok/../../evil.txt": b"!"}), "absolute path or '..'"),
        (lambda p: _zip(p / "a.zip", {"/abs/evil.txt": b"!"}), "absolute path or '..'"),
        (lambda p: _zip(p / "a.zip", GOOD, {"ds/esc": "../../outside"}), "symlink to '../../outside'"),
        (lambda p: _tar(p / "a.tar", {"../evil.txt": b"!"}), "absolute path or '..'"),
        (lambda p: _tar(p / "a.tar.gz", {"/etc/evil.txt": b"!"}), "absolute path or '..'"),
        (lambda p: _tar(p / "a.tar", GOOD, {"ds/esc": (tarfile.SYMTYPE, "../../outside")}), "symlink"),
        (lambda p: _tar(p / "a.tar", GOOD, {"ds/esc": (tarfile.SYMTYPE, "/etc/passwd")}), "symlink"),
        (lambda p: _tar(p / "a.tar", GOOD, {"ds/hard": (tarfile.LNKTYPE, "../outside")}), "hard link"),
        (lambda p: _tar(p / "a.tar", {}, {"dev": (tarfile.CHRTYPE, "")}), "device or fifo"),
    ],
    ids=["zip-dotdot", "zip-inner-dotdot", "zip-abs", "zip-symlink", "tar-dotdot", "tar-abs", "tar-symlink",
         "tar-abs-symlink", "tar-hardlink", "tar-device"],  # fmt: skip
)
def test_unsafe_archives_refused(tmp_path, make, pattern):
    archive = make(tmp_path)
    dest = tmp_path / "deep" / "out"
    with pytest.raises(UnsafeArchiveError, match=pattern) as err:
        extract(archive, dest)
    assert str(archive) in str(err.value)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "deep" / "evil.txt").exists()
    assert not any(dest.rglob("*"))  # checked before anything was written


def test_not_an_archive(tmp_path):
    (tmp_path / "page.zip").write_text("<html>quota exceeded</html>")
    with pytest.raises(DatasetFormatError, match="neither a zip nor a tar"):
        extract(tmp_path / "page.zip", tmp_path / "out")


# ---------------------------------------------------------------- prepare_dataset


def test_prepare_existing_files(tmp_path, server):
    make_ucm(tmp_path)
    assert prepare_dataset("ucm", tmp_path) == tmp_path
    assert server.requests == []


def test_prepare_without_url_says_where(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        prepare_dataset("rsicd", tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "dataset_rsicd.json") in msg and "RSICD_images/" in msg
    assert "201528014227051/RSICD_optimal" in msg and "manual" in msg


def test_prepare_downloads_and_extracts(tmp_path, server):
    src = tmp_path / "src"
    make_ucm(src / "UCM_captions")
    buf = tmp_path / "ucm.zip"
    with zipfile.ZipFile(buf, "w") as zf:
        for f in sorted(src.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(src).as_posix())
    server.files["/ucm.zip"] = buf.read_bytes()
    root = tmp_path / "data"
    got = prepare_dataset("ucm", root, url=f"{server.base}/ucm.zip", sha256=sha256_file(buf), progress=False)
    assert got == root / "UCM_captions"  # the archive wraps the files in one folder
    assert load_dataset("ucm", got, "test").num_images == 2
    with pytest.raises(ChecksumError):
        prepare_dataset("ucm", tmp_path / "x", url=f"{server.base}/ucm.zip", sha256="1" * 64, progress=False)


def test_prepare_synthrs_calls_generator(tmp_path, monkeypatch):
    calls = []

    def generate_synthrs(root, **kwargs):
        calls.append(Path(root))
        return Path(root)

    module = types.ModuleType("rsretrieval.data.synthrs")
    module.generate_synthrs = generate_synthrs
    monkeypatch.setitem(sys.modules, "rsretrieval.data.synthrs", module)
    assert prepare_dataset("synthrs", tmp_path / "syn") == tmp_path / "syn"
    assert calls == [tmp_path / "syn"]


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz", ".tar.xz"])
def test_truncated_tar_is_an_error_and_leaves_dest_alone(tmp_path, suffix):
    big = {"ds/dataset.json": b"{}", "ds/imgs/1.tif": bytes(range(256)) * 400, "ds/imgs/2.tif": b"y" * 5000}
    archive = _tar(tmp_path / f"a{suffix}", big)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "kept.txt").write_text("mine")
    with pytest.raises(DatasetFormatError, match="truncated"):
        extract(archive, dest)
    assert [p.name for p in dest.iterdir()] == ["kept.txt"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left


def test_tar_cut_at_a_member_boundary_is_truncated(tmp_path):
    archive = _tar(tmp_path / "a.tar", GOOD)
    with tarfile.open(archive) as tf:
        end = tf.getmembers()[0].offset_data + 512  # the first member's data fits one block
    archive.write_bytes(archive.read_bytes()[:end])
    with pytest.raises(DatasetFormatError, match="truncated: it ends after member 'ds/dataset.json'"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_extraction_merges_into_an_existing_folder(tmp_path):
    dest = tmp_path / "out"
    (dest / "ds").mkdir(parents=True)
    (dest / "ds" / "notes.txt").write_text("mine")
    extract(_tar(tmp_path / "a.tar", GOOD), dest)
    assert (dest / "ds" / "notes.txt").read_text() == "mine" and (dest / "ds" / "imgs" / "1.tif").read_bytes() == b"x"
