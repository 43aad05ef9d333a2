"""A disk cache of what a side branch reads from a frozen backbone, and training from it.

With the backbone frozen and run without gradients, and no pixel augmentation, everything the
branch reads is the same in every epoch: the tapped blocks' tokens and the frozen embeddings of
every training image and caption. :func:`build_cache` computes them once into memory-mapped
``.npy`` files; :class:`CachedSideBranchTask` trains from them (timing: :func:`time_epochs`).

Layout of one entry, ``<cache_dir>/<key>/``::

    meta.json          what the key was made of, shapes, dtypes (written last, before the rename)
    image_tokens.npy   [n_images, 1 + P, n_layers_img * D_img]  float16  (class token first)
    image_embeds.npy   [n_images, E]                            float32  (frozen, not normalised)
    text_tokens.npy    [n_captions, L, n_layers_txt * D_txt]    float16  (L = longest caption's EOT + 1)
    text_embeds.npy    [n_captions, E]                          float32
    text_eot.npy       [n_captions]                             int64

Tokens are stored in the model's ``cached_form``: each tapped block's output standardised as the
branch's LayerNorm does before its (trained) scale and shift, the taps side by side, so that a
training step starts at the branch's one folded down projection.

The key hashes every frozen weight, the tapped layers, the split's files, captions and tokens, the
transform and this format's version: any change writes a new entry (invalidation by construction).
An entry is built in a temporary folder and renamed into place when complete.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from rsretrieval.data.dataset import CaptionDataset
from rsretrieval.training.losses import InfoNCELoss
from rsretrieval.methods.base import get_applied_method
from rsretrieval.models.utils import eval_mode, logit_scale
from rsretrieval.paths import data_dir
from rsretrieval.training.tasks import Batch, Inputs, Task

_logger = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: tokens in the model's cached_form (normalised, taps side by side)
_TMP_PREFIX = ".tmp-"
_FILES = ("image_tokens", "image_embeds", "text_tokens", "text_embeds", "text_eot")

__all__ = [
    "default_cache_dir",
    "CachedSideBranchTask",
    "FeatureCache",
    "build_cache",
    "cache_key",
    "clear_cache",
    "frozen_weights_digest",
    "open_cache",
    "time_epochs",
]


# ----------------------------------------------------------------------------- the key

def default_cache_dir() -> Path:
    """``<data home>/cache`` (see :mod:`rsretrieval.paths`)."""
    return data_dir("cache")


def frozen_weights_digest(model: nn.Module) -> str:
    """sha256 over the name, shape, dtype and bytes of every frozen parameter and every buffer.

    The applied method's own parameters are left out (they train; the cache never depends on
    them). About a second for ViT-B-32's 600 MB.
    """
    applied = get_applied_method(model)
    trained = set(applied.param_names) if applied is not None else set()
    h = hashlib.sha256()
    named = [(n, p) for n, p in model.named_parameters() if n not in trained] + list(model.named_buffers())
    for name, t in named:
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _files_fingerprint(paths: Sequence[Path]) -> list[list[Any]]:
    out = []
    for p in paths:
        st = os.stat(p)
        out.append([str(p), st.st_size, st.st_mtime_ns])
    return out


def cache_key(model: nn.Module, data: CaptionDataset, transform: Callable, tokenizer: Callable,
              tokens: torch.Tensor | None = None) -> tuple[str, dict[str, Any]]:
    """The cache key of (frozen model, tapped layers, dataset split, transform, tokenizer).

    Args:
        model: a model with a side branch (``tapped_layers``; e.g. after ``apply_method(model,
            "focus_adapter")``).
        data: the split to cache.
        transform: the (deterministic) image transform used for training.
        tokenizer: list[str] -> LongTensor.
        tokens: the tokenised captions, if already computed.

    Returns:
        (hex key, the JSON-able components it hashes; ``meta.json`` keeps the small ones).
    """
    if tokens is None:
        tokens = tokenizer(list(data.captions))
    t = tokens.detach().cpu().contiguous()
    parts: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "weights": frozen_weights_digest(model),
        "layers": {k: list(v) for k, v in _tapped_layers(model).items()},
        "dataset": data.name,
        "split": data.split,
        "transform": repr(transform),
        "tokens": hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode() + t.numpy().tobytes()).hexdigest(),
        "files": hashlib.sha256(json.dumps(_files_fingerprint(data.image_paths)).encode()).hexdigest(),
        "captions": hashlib.sha256(json.dumps([data.captions, data.text_to_image]).encode()).hexdigest(),
        "num_images": data.num_images,
        "num_captions": data.num_captions,
    }
    key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]
    return key, parts


def _tapped_layers(model: nn.Module) -> dict[str, tuple[int, ...]]:
    layers = getattr(model, "tapped_layers", None)
    if layers is None:
        raise TypeError(f"{type(model).__name__} has no side branch to cache features for: apply a "
                        "side-branch method first, e.g. apply_method(model, 'focus_adapter')")
    return dict(layers)


# ----------------------------------------------------------------------------- the cache

@dataclass
class FeatureCache:
    """One cache entry, opened memory-mapped (read-only).

    Attributes:
        path: the entry's directory.
        key: its key.
        meta: the contents of ``meta.json``.
        arrays: name -> memory-mapped array (see the module docstring for shapes).
        hit: True when :func:`build_cache` found the entry on disk instead of computing it.
    """

    path: Path
    key: str
    meta: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(repr=False)
    hit: bool = False

    @property
    def num_images(self) -> int:
        return int(self.arrays["image_embeds"].shape[0])

    @property
    def num_captions(self) -> int:
        return int(self.arrays["text_embeds"].shape[0])

    @property
    def layers(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v) for k, v in self.meta["parts"]["layers"].items()}

    @property
    def nbytes(self) -> int:
        """Bytes on disk (array data)."""
        return int(sum(a.nbytes for a in self.arrays.values()))

    @staticmethod
    def _rows(array: np.ndarray, index: torch.Tensor | Sequence[int]) -> np.ndarray:
        idx = np.asarray(index.cpu() if isinstance(index, torch.Tensor) else index, dtype=np.int64)
        return array[idx]  # fancy indexing on a memmap reads just these rows into memory

    def image_features(self, index: torch.Tensor | Sequence[int], device: torch.device | str = "cpu"
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen embeddings [B, E] and tokens [B, 1+P, layers * D] (``cached_form``) of images ``index``."""
        emb = torch.from_numpy(self._rows(self.arrays["image_embeds"], index)).to(device)
        return emb, torch.from_numpy(self._rows(self.arrays["image_tokens"], index)).to(device)

    def text_features(self, index: torch.Tensor | Sequence[int], device: torch.device | str = "cpu"
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Frozen embeddings [B, E], tokens [B, L, layers * D] (``cached_form``) and EOT positions [B]."""
        emb = torch.from_numpy(self._rows(self.arrays["text_embeds"], index)).to(device)
        tok = torch.from_numpy(self._rows(self.arrays["text_tokens"], index)).to(device)
        return emb, tok, torch.from_numpy(self._rows(self.arrays["text_eot"], index)).to(device)


def open_cache(path: str | Path, hit: bool = True) -> FeatureCache:
    """Open a complete cache entry; raises FileNotFoundError if ``path`` is not one."""
    path = Path(path)
    meta_file = path / "meta.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"{path} is not a complete feature cache (no meta.json)")
    meta = json.loads(meta_file.read_text())
    if not meta.get("complete") or meta.get("format") != FORMAT_VERSION:
        raise FileNotFoundError(f"{path} is incomplete or of another format version")
    arrays = {}
    for name in _FILES:
        arr = np.load(path / f"{name}.npy", mmap_mode="r")
        if list(arr.shape) != meta["shapes"][name]:
            raise FileNotFoundError(f"{path}/{name}.npy has shape {arr.shape}, meta.json says "
                                    f"{meta['shapes'][name]}")
        arrays[name] = arr
    return FeatureCache(path, meta["key"], meta, arrays, hit)


def _remove_stale_tmp(cache_dir: Path) -> None:
    """Delete temporary build directories whose builder process no longer runs."""
    for tmp in cache_dir.glob(f"{_TMP_PREFIX}*"):
        try:
            pid = int(tmp.name[len(_TMP_PREFIX):].split("-")[0])  # .tmp-<pid>-<random>
            os.kill(pid, 0)  # raises if no such process
            if pid == os.getpid():
                raise ProcessLookupError  # left by an earlier, interrupted build of this process
        except (IndexError, ValueError, ProcessLookupError):
            shutil.rmtree(tmp, ignore_errors=True)
        except PermissionError:  # a live process of another user: leave it
            pass


def build_cache(
    model: nn.Module,
    data: CaptionDataset,
    transform: Callable,
    tokenizer: Callable,
    *,
    cache_dir: str | Path | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    token_dtype: np.dtype | str = np.float16,
    progress: bool = True,
) -> FeatureCache:
    """Open the cache entry of (model, data, transform, tokenizer), computing it first if needed.

    Args:
        model: a model with a side branch (``apply_method(model, "focus_adapter")``): it provides
            ``tapped_layers``, ``frozen_image_features``, ``frozen_text_features`` and ``cached_form``.
        data: the split to cache (every image once, every caption once).
        transform: the deterministic training transform (no random augmentation: it would be
            frozen into the cache).
        tokenizer: list[str] -> LongTensor.
        cache_dir: parent directory of the entries (default :func:`default_cache_dir`).
        batch_size: images / captions per forward pass while building.
        device: where to run the backbone (default: the model's device).
        token_dtype: dtype of the stored tokens (float16 halves the disk and page-cache footprint).
        progress: show tqdm bars.

    Returns:
        The opened :class:`FeatureCache`; ``hit`` tells whether it was already on disk.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    tokens = tokenizer(list(data.captions))
    key, parts = cache_key(model, data, transform, tokenizer, tokens=tokens)
    final = cache_dir / key
    try:
        return open_cache(final, hit=True)
    except FileNotFoundError:
        if final.exists():  # not a complete entry (written by hand or another version): rebuild it
            shutil.rmtree(final)
    cache_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(cache_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{os.getpid()}-", dir=cache_dir))
    try:
        t0 = time.perf_counter()
        shapes = _write_features(model, data, transform, tokens, tmp, batch_size, device,
                                 np.dtype(token_dtype), progress)
        meta = {"format": FORMAT_VERSION, "key": key, "complete": True, "parts": parts, "shapes": shapes,
                "build_seconds": time.perf_counter() - t0, "created": time.strftime("%Y-%m-%d %H:%M:%S")}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.rename(tmp, final)  # atomic: the entry appears complete or not at all
        except OSError:
            if not (final / "meta.json").is_file():  # lost a race to a concurrent builder: theirs is as good
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return open_cache(final, hit=False)


def _write_features(model: nn.Module, data: CaptionDataset, transform: Callable, tokens: torch.Tensor,
                    out: Path, batch_size: int, device: str | torch.device | None, token_dtype: np.dtype,
                    progress: bool) -> dict[str, list[int]]:
    """Run the frozen backbone over every image and caption and fill the arrays in ``out``."""
    from numpy.lib.format import open_memmap

    layers = _tapped_layers(model)
    param = next(model.parameters())
    dev = torch.device(device) if device is not None else param.device
    arrays: dict[str, np.ndarray] = {}
    with eval_mode(model):  # no dropout / patch dropout may end up frozen into the cache
        try:
            loader = torch.utils.data.DataLoader(data.images(transform), batch_size=batch_size, shuffle=False)
            start = 0
            for batch in tqdm(loader, desc="cache images", disable=not progress, leave=False):
                emb, taps = model.frozen_image_features(batch["image"].to(dev))
                # a tower without a branch: a zero-size token array, so that shapes stay uniform
                tok = model.cached_form("visual", taps) if taps else emb.new_zeros(len(emb), 0, 0)  # [B, T, K*D]
                if not arrays:
                    arrays["image_tokens"] = open_memmap(out / "image_tokens.npy", "w+", token_dtype,
                                                         (data.num_images, *tok.shape[1:]))
                    arrays["image_embeds"] = open_memmap(out / "image_embeds.npy", "w+", np.float32,
                                                         (data.num_images, emb.shape[1]))
                end = start + len(emb)
                if arrays["image_tokens"].size:
                    arrays["image_tokens"][start:end] = tok.cpu().numpy().astype(token_dtype)
                arrays["image_embeds"][start:end] = emb.float().cpu().numpy()
                start = end

            eot_all = tokens.argmax(dim=-1)  # open_clip's argmax pooling: EOT has the highest id
            length = int(eot_all.max()) + 1
            n_layers = len(layers.get("text", ()))
            starts = range(0, data.num_captions, batch_size)
            for start in tqdm(starts, desc="cache captions", disable=not progress, leave=False):
                end = min(start + batch_size, data.num_captions)
                emb, taps, eot = model.frozen_text_features(tokens[start:end].to(dev))
                if "text_tokens" not in arrays:
                    width = n_layers * taps[0].shape[-1] if taps else 0
                    shape = (data.num_captions, length if n_layers else 0, width)
                    arrays["text_tokens"] = open_memmap(out / "text_tokens.npy", "w+", token_dtype, shape)
                    arrays["text_embeds"] = open_memmap(out / "text_embeds.npy", "w+", np.float32,
                                                        (data.num_captions, emb.shape[1]))
                    arrays["text_eot"] = open_memmap(out / "text_eot.npy", "w+", np.int64, (data.num_captions,))
                if n_layers:
                    tok = model.cached_form("text", taps)  # [B, L_batch, K*D], L_batch <= length
                    arrays["text_tokens"][start:end, :tok.shape[1]] = tok.cpu().numpy().astype(token_dtype)
                    arrays["text_tokens"][start:end, tok.shape[1]:] = 0
                arrays["text_embeds"][start:end] = emb.float().cpu().numpy()
                arrays["text_eot"][start:end] = eot.cpu().numpy()
            for a in arrays.values():
                a.flush()
            return {name: list(arrays[name].shape) for name in _FILES}
        finally:
            arrays.clear()  # close the memmaps before the directory is renamed


def clear_cache(cache_dir: str | Path | None = None, keep: Sequence[str] = ()) -> list[str]:
    """Delete every cache entry under ``cache_dir`` except the keys in ``keep``; returns the deleted keys.

    Entries are never deleted automatically: a changed dataset or model writes a new one beside the old.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if not cache_dir.is_dir():
        return []
    removed = []
    for entry in cache_dir.iterdir():
        if entry.is_dir() and entry.name not in keep and ((entry / "meta.json").is_file()
                                                          or entry.name.startswith(_TMP_PREFIX)):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
    return removed


# ----------------------------------------------------------------------------- training from the cache

def check_cache_fits(model: nn.Module, cache: FeatureCache) -> None:
    """Raise ``ValueError`` unless ``cache`` was built from ``model``'s frozen weights and tapped layers."""
    layers = _tapped_layers(model)
    if {k: tuple(v) for k, v in layers.items()} != cache.layers:
        raise ValueError(f"the cache holds layers {cache.layers}, the model taps {layers}: build the "
                         "cache with this model")
    if cache.meta["parts"]["weights"] != frozen_weights_digest(model):
        raise ValueError("the cache was built from other frozen weights than this model's: rebuild it "
                         "with build_cache(model, ...)")


def cached_image_features(model: nn.Module, cache: FeatureCache, image_ids: torch.Tensor) -> torch.Tensor:
    """[B, E] L2-normalised side-branch image embeddings of training images, read from the cache."""
    if len(image_ids) and int(image_ids.max()) >= cache.num_images:
        raise IndexError(f"image ids beyond the cache's {cache.num_images} images: was it built on another split?")
    emb, tokens = cache.image_features(image_ids, model.logit_scale.device)
    return F.normalize(model.branch_image(emb, tokens), dim=-1)


class CachedSideBranchTask(Task):
    """Model + cache + loss: trains a side branch from cached frozen features, with ``fit``.

    It computes what :class:`~rsretrieval.training.ContrastiveTask` computes for the same batch (the
    branch reads the same frozen features, only from disk and rounded to float16), without running
    the backbone, so its batches need neither pixels nor tokens: only the image and caption indices.

    Args:
        model: the side-branch model the cache was built with (``apply_method(model, "focus_adapter")``).
        cache: the :class:`FeatureCache` of the training split ``fit`` gets.
        loss: any ``loss(img, txt, logit_scale, image_ids) -> {"..._loss": ...}``; default InfoNCE.

    Example:
        >>> cache = build_cache(model, train, bundle.train_transform, tokenizer)   # doctest: +SKIP
        >>> fit(model, tokenizer, train, bundle.train_transform, cfg,
        ...     task=CachedSideBranchTask(model, cache))                          # doctest: +SKIP
    """

    inputs = Inputs(pixels=False, tokens=False)

    def __init__(self, model: nn.Module, cache: FeatureCache, loss: nn.Module | None = None) -> None:
        check_cache_fits(model, cache)
        super().__init__(model, loss if loss is not None else InfoNCELoss())
        self.cache = cache

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Losses of a batch given by dataset indices: rows of the cache's images and captions."""
        image_ids, caption_ids = batch.image_ids, batch.caption_ids
        if len(image_ids) and (int(image_ids.max()) >= self.cache.num_images
                               or int(caption_ids.max()) >= self.cache.num_captions):
            raise IndexError(f"indices beyond the cache ({self.cache.num_images} images, "
                             f"{self.cache.num_captions} captions): was it built on another split?")
        dev = self.model.logit_scale.device
        img_emb, img_tok = self.cache.image_features(image_ids, dev)
        txt_emb, txt_tok, eot = self.cache.text_features(caption_ids, dev)
        txt_tok = txt_tok[:, :int(eot.max()) + 1]  # as the uncached path: tokens up to the batch's last EOT
        img = F.normalize(self.model.branch_image(img_emb, img_tok), dim=-1)
        txt = F.normalize(self.model.branch_text(txt_emb, txt_tok, eot), dim=-1)
        return self.loss(img, txt, logit_scale(self.model), image_ids)


# ----------------------------------------------------------------------------- timing

def time_epochs(
    model: nn.Module,
    tokenizer: Callable,
    data: CaptionDataset,
    transform: Callable,
    *,
    epochs: int = 2,
    batch_size: int = 64,
    lr: float = 1e-3,
    cache_dir: str | Path | None = None,
    device: str = "cpu",
    seed: int = 0,
) -> dict[str, Any]:
    """Seconds per training epoch of a side-branch model, without and with the feature cache.

    Trains two copies of ``model`` (it is not changed) for ``epochs`` epochs each with the same
    config and seed: one with the default task (backbone forward every step; images preloaded once,
    before the first epoch, and not counted), one with :class:`CachedSideBranchTask` (the cache is
    built, or found, before training; its build time is reported apart).

    Returns:
        ``uncached_seconds`` and ``cached_seconds`` (lists, one per epoch), ``cache_build_seconds``,
        ``cache_hit``, ``speedup`` (uncached / cached seconds of the last epoch: with ``epochs`` >= 2,
        an epoch after the first), and each run's ``uncached_loss`` / ``cached_loss`` per epoch.
    """
    from rsretrieval.training import TrainConfig, fit

    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, warmup_steps=10, seed=seed, device=device,
                      eval_every=0, progress=False, output_dir=None)
    plain, cached = copy.deepcopy(model), copy.deepcopy(model)
    h_plain = fit(plain, tokenizer, data, transform, cfg)
    t0 = time.perf_counter()
    cache = build_cache(cached, data, transform, tokenizer, cache_dir=cache_dir, progress=False)
    build = time.perf_counter() - t0
    h_cached = fit(cached, tokenizer, data, transform, cfg, task=CachedSideBranchTask(cached, cache))
    plain_s, cached_s = h_plain.column("seconds"), h_cached.column("seconds")
    return {
        "uncached_seconds": plain_s,
        "cached_seconds": cached_s,
        "cache_build_seconds": build,
        "cache_hit": cache.hit,
        "cache_bytes": cache.nbytes,
        "speedup": plain_s[-1] / max(cached_s[-1], 1e-9),
        "uncached_loss": h_plain.column("train_loss"),
        "cached_loss": h_cached.column("train_loss"),
    }
