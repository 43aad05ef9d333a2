"""One factory over open_clip: architecture names, pretrained weights and transforms.

Two registries, kept apart as in open_clip: architectures are JSON files (open_clip's own plus
ours in ``configs/``: ``tiny`` for tests, ``mini`` for the offline course), and weights are a
tag (``openai``, ``laion2b_s34b_b79k``, ...), a local file, or one of our shipped checkpoints.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import open_clip
import torch

from rsretrieval import paths
from rsretrieval.errors import CheckpointError, ModelNotFoundError
from rsretrieval.models.compact import load_compact

_logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "configs"

# Our own weights, shipped as package data: (architecture, tag) -> file in rsretrieval.paths.WEIGHTS_DIR.
LOCAL_PRETRAINED: dict[tuple[str, str], str] = {
    ("mini", "synthrs"): "mini-synthrs.pt",
}

_registered = False


def _register_configs() -> None:
    global _registered
    if not _registered:
        open_clip.add_model_config(CONFIG_DIR)
        _registered = True


def list_models() -> list[str]:
    """Every architecture name the factory knows: ours first, then open_clip's."""
    _register_configs()
    ours = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
    return ours + [m for m in open_clip.list_models() if m not in ours]


def list_pretrained(name: str | None = None) -> list[tuple[str, str]]:
    """(architecture, tag) pairs with known weights; ours are local files, open_clip's download."""
    pairs = list(LOCAL_PRETRAINED) + [tuple(p) for p in open_clip.list_pretrained()]
    return [p for p in pairs if name is None or p[0] == name]


def local_pretrained_path(name: str, tag: str) -> Path | None:
    """The file of one of our shipped checkpoints, or None if (name, tag) is not ours."""
    rel = LOCAL_PRETRAINED.get((name, tag))
    return paths.WEIGHTS_DIR / rel if rel else None


@dataclass
class ModelBundle:
    """A CLIP model with everything needed to feed it.

    Attributes:
        model: the open_clip CLIP module.
        transform: evaluation preprocessing (PIL image -> tensor).
        train_transform: training preprocessing (open_clip's, without pixel augmentation by default).
        tokenizer: callable list[str] -> LongTensor [n, context_length].
        name: architecture name as given to open_clip (after the QuickGELU fix).
        pretrained: the tag or file the weights came from, or None for random weights.
    """

    model: torch.nn.Module
    transform: Callable
    train_transform: Callable
    tokenizer: Callable
    name: str
    pretrained: str | None

    @property
    def image_size(self) -> int:
        size = self.model.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)


@contextlib.contextmanager
def _quiet_random_init(active: bool):
    """Drop open_clip's "initialized randomly" warning when our own weights are loaded right after."""
    def drop(record: logging.LogRecord) -> bool:
        return "Model initialized randomly" not in record.getMessage()

    root = logging.getLogger()
    if active:
        root.addFilter(drop)
    try:
        yield
    finally:
        if active:
            root.removeFilter(drop)


def _is_open_clip_tag(name: str, tag: str) -> bool:
    known = {tuple(p) for p in open_clip.list_pretrained()}
    return (name, tag) in known or (f"{name}-quickgelu", tag) in known


def _resolve_name(name: str, pretrained: str | None, quick_gelu: bool | None) -> str:
    """Apply the QuickGELU rule: OpenAI weights were trained with QuickGELU."""
    if quick_gelu is None:
        quick_gelu = pretrained == "openai"
    if quick_gelu and not name.endswith("-quickgelu"):
        candidate = f"{name}-quickgelu"
        if candidate in open_clip.list_models():
            _logger.info("using %s: OpenAI weights need QuickGELU", candidate)
            return candidate
    if pretrained == "openai" and not name.endswith("-quickgelu") and not quick_gelu:
        warnings.warn(
            f"{name} with OpenAI weights and quick_gelu=False builds GELU where the weights expect QuickGELU; "
            "retrieval drops by 2-3 points. Leave quick_gelu unset to get the right activation.",
            stacklevel=3,
        )
    return name


def create_model(
    name: str = "mini",
    pretrained: str | Path | None = None,
    *,
    device: str | torch.device = "cpu",
    quick_gelu: bool | None = None,
    precision: str = "fp32",
    cache_dir: str | None = None,
    **kwargs: Any,
) -> ModelBundle:
    """Build a CLIP model, its transforms and tokenizer.

    Args:
        name: architecture (``tiny``, ``mini``, ``ViT-B-32``, ...; see :func:`list_models`).
        pretrained: None for random weights; an open_clip tag (``openai``: downloads, needs network);
            one of our shipped tags (``synthrs`` for ``mini``); or a path to a state-dict file, e.g.
            ``RemoteCLIP-ViT-B-32.pt`` or GeoRSCLIP's ``RS5M_ViT-B-32.pt`` (load into ``ViT-B-32``).
        device: where to put the model.
        quick_gelu: None picks QuickGELU exactly for OpenAI weights.
        precision: open_clip precision string; ``fp32`` unless you know why.
        cache_dir: where open_clip caches downloaded weights.
        **kwargs: passed to ``open_clip.create_model_and_transforms``.

    Returns:
        A :class:`ModelBundle`.

    Raises:
        ModelNotFoundError: unknown architecture or weights.
        CheckpointError: a weights file that does not fit the architecture.
    """
    _register_configs()
    if name not in open_clip.list_models():
        raise ModelNotFoundError(f"unknown model {name!r}. Available: {', '.join(list_models())}")
    # "", "none" (command lines, papermill parameters) mean random weights, like None
    tag = str(pretrained) if pretrained is not None and str(pretrained).lower() not in ("", "none") else None
    weights: str | None = tag
    compact: Path | None = None
    if tag is not None:
        local = local_pretrained_path(name, tag)
        if local is not None:
            if not local.is_file():
                raise ModelNotFoundError(
                    f"weights {name}/{tag} are not at {local}. Create them with "
                    f"`python -m rsretrieval pretrain --model {name}` (about 15 minutes on a CPU)."
                )
            compact, weights = local, None  # our compact format: built random, then filled below
        elif not Path(tag).is_file() and not _is_open_clip_tag(name, tag):
            looks_like_path = any(ch in tag for ch in "/\\.")
            hint = f"no file at {tag}" if looks_like_path else f"known tags: {[t for _, t in list_pretrained(name)]}"
            raise ModelNotFoundError(f"unknown weights {tag!r} for {name}: {hint}")
    arch = _resolve_name(name, tag, quick_gelu)
    try:
        with _quiet_random_init(compact is not None):
            model, train_tf, val_tf = open_clip.create_model_and_transforms(
                arch, pretrained=weights, device=device, precision=precision, cache_dir=cache_dir,
                weights_only=True, **kwargs,
            )
    except (RuntimeError, AssertionError, KeyError) as exc:
        # open_clip signals a misfit by RuntimeError (size mismatch, keys) or a bare assert (pos embeds)
        if weights is None or not Path(weights).is_file():
            raise
        raise CheckpointError(
            f"weights file {weights} does not fit architecture {arch}: {str(exc)[:400] or type(exc).__name__}. "
            "Pick the architecture the file was trained with (RemoteCLIP and GeoRSCLIP ViT-B/32 files go "
            "with ViT-B-32)."
        ) from exc
    if compact is not None:
        load_compact(model, compact, arch=name)
    tokenizer = open_clip.get_tokenizer(arch)
    return ModelBundle(model, val_tf, train_tf, tokenizer, arch, tag)
