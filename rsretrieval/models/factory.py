"""One factory over open_clip: architecture names, pretrained weights and transforms.

Two registries, kept apart as in open_clip: architectures are JSON files (open_clip's own plus
ours in ``configs/``: ``tiny`` for tests, ``mini`` for the offline course, and two narrower or
shallower minis that pretraining's variants compare), and weights are a
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
from rsretrieval.models.compact import is_compact, load_compact

_logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "configs"

# Our own weights, shipped as package data: (architecture, tag) -> file in rsretrieval.paths.WEIGHTS_DIR.
LOCAL_PRETRAINED: dict[tuple[str, str], str] = {
    ("mini", "synthrs"): "mini-synthrs.pt",
    ("mini", "synthrs3"): "mini-synthrs3.pt",  # 3 pretraining epochs: chosen on SynthRS 3.0's validation split
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


def check_model_name(name: str) -> None:
    """Raise :class:`ModelNotFoundError` listing the known architectures unless ``name`` is one."""
    _register_configs()
    if name not in open_clip.list_models():
        raise ModelNotFoundError(f"unknown model {name!r}. Available: {', '.join(list_models())}")


def list_pretrained(name: str | None = None) -> list[tuple[str, str]]:
    """(architecture, tag) pairs with known weights; ours are local files, open_clip's download."""
    pairs = list(LOCAL_PRETRAINED) + [tuple(p) for p in open_clip.list_pretrained()]
    return [p for p in pairs if name is None or p[0] == name]


def local_pretrained_path(name: str, tag: str) -> Path | None:
    """The file of one of our shipped checkpoints, or None if (name, tag) is not ours."""
    rel = LOCAL_PRETRAINED.get((name, tag))
    return paths.WEIGHTS_DIR / rel if rel else None


def check_weights(name: str, pretrained: str | None) -> str | None:
    """Raise :class:`ModelNotFoundError` unless ``name`` is known and ``pretrained`` is None, one of our
    tags (its file present), a file, or an open_clip tag of ``name``; returns the tag (None: random).

    Cheap (nothing is loaded), so a command can refuse a bad pair before it starts any work.
    """
    check_model_name(name)
    # "", "none" (command lines, papermill parameters) mean random weights, like None
    tag = str(pretrained) if pretrained is not None and str(pretrained).lower() not in ("", "none") else None
    if tag is None:
        return None
    local = local_pretrained_path(name, tag)
    if local is not None:
        if not local.is_file():
            raise ModelNotFoundError(
                f"weights {name}/{tag} are not at {local}. Create them with "
                f"`python -m rsretrieval pretrain --model {name}` (11-13 minutes on 2 CPU cores)."
            )
    elif not Path(tag).is_file() and not _is_open_clip_tag(name, tag):
        looks_like_path = any(ch in tag for ch in "/\\.")
        hint = f"no file at {tag}" if looks_like_path else f"known tags: {[t for _, t in list_pretrained(name)]}"
        raise ModelNotFoundError(f"unknown weights {tag!r} for {name}: {hint}")
    return tag


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


# Keys an OpenAI CLIP state dict carries besides the weights (open_clip drops them when it converts one).
_OPENAI_KEYS = ("input_resolution", "context_length", "vocab_size")


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in a weights file, read safely (``weights_only=True``), or a :class:`CheckpointError`
    that names the file, says what it holds and what was expected.

    Accepts a plain state dict, ``{"state_dict": ...}`` (training checkpoints) and DDP's ``module.`` prefix.
    """
    import pickle

    path = Path(path)
    expected = "a state dict of tensors (torch.save(model.state_dict(), path))"
    if path.stat().st_size == 0:
        raise CheckpointError(f"weights file {path} is empty (0 bytes), not {expected}: download or save it again")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"weights file {path} holds more than tensors ({first[:160]}); rsretrieval loads "
                              f"only {expected}. Re-save just the weights from where the file came from.") from None
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError, EOFError, zipfile errors, ... for damage
        raise CheckpointError(f"cannot read weights file {path}: it is not a complete torch file "
                              f"({type(exc).__name__}: {str(exc)[:160]}); it may be truncated or not a torch "
                              f"file at all. Download or save it again.") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        what = "an empty dict" if isinstance(obj, dict) else f"a {type(obj).__name__}"
        raise CheckpointError(f"weights file {path} holds {what}, not {expected}")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"weights file {path} holds non-tensor entries ({bad[:3]}), not {expected}")
    if all(k.startswith("module.") for k in obj):
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
    return obj


def _check_positions(path: Path, state: dict[str, torch.Tensor], model: torch.nn.Module, resize: bool) -> None:
    """Refuse weights made for another image size or context length unless resizing was asked for."""
    model_state = model.state_dict()
    for key, what in (("visual.positional_embedding", "image size (patch grid)"),
                      ("positional_embedding", "context length")):
        own = model_state.get(key)
        theirs = state.get(key)
        same_width = theirs is not None and own is not None and theirs.shape[-1:] == own.shape[-1:]
        if same_width and theirs.shape != own.shape and not resize:  # another width: another architecture
            raise CheckpointError(
                f"weights file {path} was made for another {what}: {key} is {tuple(theirs.shape)}, the "
                f"model's is {tuple(own.shape)}. Build the architecture the file was trained with, or pass "
                "resize_positional_embeddings=True to interpolate them (retrieval usually suffers).")


def _load_weights_file(model: torch.nn.Module, path: Path, state: dict[str, torch.Tensor], arch: str,
                       resize: bool) -> None:
    from open_clip.factory import convert_state_dict, resize_pos_embed, resize_text_pos_embed

    state = convert_state_dict(model, {k: v for k, v in state.items() if k not in _OPENAI_KEYS})
    if "logit_scale" in state and model.logit_scale.ndim != state["logit_scale"].ndim:
        state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
    _check_positions(path, state, model, resize)
    if resize:
        resize_pos_embed(state, model)
        resize_text_pos_embed(state, model)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"weights file {path} does not fit architecture {arch}: {str(exc)[:400]}. Pick the architecture "
            "the file was trained with (RemoteCLIP and GeoRSCLIP ViT-B/32 files go with ViT-B-32)."
        ) from None


def create_model(
    name: str = "mini",
    pretrained: str | Path | None = None,
    *,
    device: str | torch.device = "cpu",
    quick_gelu: bool | None = None,
    precision: str = "fp32",
    cache_dir: str | None = None,
    resize_positional_embeddings: bool = False,
    **kwargs: Any,
) -> ModelBundle:
    """Build a CLIP model, its transforms and tokenizer.

    Args:
        name: architecture (``tiny``, ``mini``, ``ViT-B-32``, ...; see :func:`list_models`).
        pretrained: None for random weights; an open_clip tag (``openai``: downloads, needs network);
            one of our shipped tags (``synthrs`` for ``mini``); a path to a compact file (a full fine-tune
            of the zoo); or a path to a state-dict file, e.g.
            ``RemoteCLIP-ViT-B-32.pt`` or GeoRSCLIP's ``RS5M_ViT-B-32.pt`` (load into ``ViT-B-32``).
        device: where to put the model.
        quick_gelu: None picks QuickGELU for OpenAI weights: the ``openai`` tag, or a file with OpenAI's
            layout; for another file it cannot be known, so it warns (pass True or False to say).
        precision: open_clip precision string; ``fp32`` unless you know why.
        cache_dir: where open_clip caches downloaded weights.
        resize_positional_embeddings: interpolate the positional embeddings of a weights file made for
            another image size or context length (otherwise such a file is refused).
        **kwargs: passed to ``open_clip.create_model_and_transforms``.

    Returns:
        A :class:`ModelBundle`.

    Raises:
        ModelNotFoundError: unknown architecture or weights.
        CheckpointError: a weights file that cannot be read, holds no state dict, or does not fit the
            architecture (``read_weights_file``).
    """
    tag = check_weights(name, pretrained)
    weights: str | None = tag
    compact: Path | None = None
    if tag is not None:
        local = local_pretrained_path(name, tag)
        if local is not None:
            compact, weights = local, None  # our compact format: built random, then filled below
        elif Path(tag).is_file() and is_compact(tag):  # e.g. a full fine-tune of the zoo
            compact, weights = Path(tag), None
    file = Path(weights) if weights is not None and compact is None and Path(weights).is_file() else None
    state = read_weights_file(file) if file is not None else None  # read and checked before building anything
    if file is not None:
        weights = None  # built random, then filled from the checked state dict below
        if quick_gelu is None and any(k in state for k in _OPENAI_KEYS):
            quick_gelu = True  # OpenAI's own layout: trained with QuickGELU
        elif quick_gelu is None and name not in {p.stem for p in CONFIG_DIR.glob("*.json")}:
            warnings.warn(f"cannot tell from {file} whether its weights expect QuickGELU (OpenAI's CLIP and "
                          "models fine-tuned from its original code do) or GELU; building GELU. Pass "
                          "quick_gelu=True or False to say.", stacklevel=2)
    arch = _resolve_name(name, tag if file is None else None, quick_gelu)
    with _quiet_random_init(compact is not None or file is not None):
        model, train_tf, val_tf = open_clip.create_model_and_transforms(
            arch, pretrained=weights, device=device, precision=precision, cache_dir=cache_dir,
            weights_only=True, **kwargs,
        )
    if compact is not None:
        load_compact(model, compact, arch=name)
    if file is not None:
        _load_weights_file(model, file, state, arch, resize_positional_embeddings)
    tokenizer = open_clip.get_tokenizer(arch)
    return ModelBundle(model, val_tf, train_tf, tokenizer, arch, tag)
