"""Atomic file writes: a crash or a full disk never leaves half a file where a whole one is expected."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _atomic(path: str | Path, write: Callable[[str], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename it into place.

    Saved through a file object, so the archive's inner folder is always ``archive`` rather than
    the (random) temporary name: the same object gives the same bytes.
    """
    import torch

    def save(tmp: str | Path) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)

    return _atomic(path, save)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file and a rename."""
    return _atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, obj: Any, *, indent: int = 1, **kwargs: Any) -> Path:
    """``json.dumps(obj)`` written atomically, with a final newline."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, **kwargs) + "\n")


def sha256_file(path: str | Path) -> str:
    """The hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextmanager
def file_lock(path: str | Path):
    """Hold an exclusive advisory lock tied to ``path`` (on ``.<name>.lock`` beside it) while a
    read-modify-write of ``path`` runs, so two processes updating one file do not lose each other's
    changes. Where there are no advisory locks (Windows) it locks nothing: run one writer at a time."""
    try:
        import fcntl
    except ImportError:
        fcntl = None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield

