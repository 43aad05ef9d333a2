"""Where rsretrieval keeps what it ships, generates and caches.

- **Shipped** (package data, read-only): model configs and MiniCLIP's weights, beside the code.
- **Data home** (datasets it generates, feature caches, MiniCLIP pretraining runs): ``$RSR_HOME``
  when set; else the checkout's ``data/`` when the package runs from a source checkout (as the
  course does); else the user cache dir (``$XDG_CACHE_HOME/rsretrieval``, ``~/.cache/rsretrieval``).
- **Build outputs** (course runs, notebook outputs): the checkout's ``build/``, else ``<data home>/build``.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
WEIGHTS_DIR = PACKAGE_DIR / "models" / "weights"  # shipped weights (package data)


def checkout_root() -> Path | None:
    """The source checkout this package runs from, or None for an installed wheel."""
    root = PACKAGE_DIR.parent
    if (root / "pyproject.toml").is_file() and (root / "notebooks").is_dir():
        return root
    return None


def data_home() -> Path:
    """The folder for generated datasets and caches (see the module docstring)."""
    if os.environ.get("RSR_HOME"):
        return Path(os.environ["RSR_HOME"]).expanduser()
    root = checkout_root()
    if root is not None:
        return root / "data"
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "rsretrieval"


def data_dir(name: str) -> Path:
    """``<data home>/<name>``: the default folder of a generated dataset (``synthrs``) or a cache."""
    return data_home() / name


def build_dir() -> Path:
    """Where course runs and notebook outputs go by default."""
    root = checkout_root()
    return root / "build" if root is not None else data_home() / "build"


_ROOT = checkout_root()
NOTEBOOK_DIR = _ROOT / "notebooks" if _ROOT is not None else None  # the course notebooks live in the checkout


def list_notebooks(folder: str | Path | None = None) -> list[Path]:
    """The course notebooks, in order (``NN_name.ipynb``); default: the checkout's ``notebooks/``."""
    if folder is None:
        if NOTEBOOK_DIR is None:
            raise FileNotFoundError("the course notebooks ship with the source checkout, not the package: "
                                    "clone the repository and run `make course` there")
        folder = NOTEBOOK_DIR
    return sorted(p for p in Path(folder).glob("[0-9][0-9]_*.ipynb"))
