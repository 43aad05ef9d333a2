"""A small file format for the weights we ship (MiniCLIP), so they can live in git.

MiniCLIP has 8.0M parameters, 6.3M of them the token embedding (49,408 tokens x 128). Only
the rows of tokens that occur in the pretraining captions ever receive a gradient; the rest are
untrained noise. A compact file stores every other tensor in float16, the used token rows in
float16, and a seed from which the unused rows are redrawn (normal, std 0.02, as open_clip
initialises them). 32 MB of float32 become about 3.5 MB.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from rsretrieval.errors import CheckpointError

FORMAT = "rsretrieval-compact-v1"
TOKEN_KEY = "token_embedding.weight"


def save_compact(model: nn.Module, path: str | Path, used_tokens: torch.Tensor, *, arch: str,
                 fill_seed: int = 0, meta: dict | None = None) -> str:
    """Write ``model``'s weights compactly; returns the SHA-256 of the payload tensors.

    Args:
        model: an open_clip CLIP module.
        path: the file to write (atomically).
        used_tokens: token ids whose embedding rows are kept (all others are redrawn on load).
        arch: architecture name the weights belong to, checked on load.
        fill_seed: seed for the redrawn rows.
        meta: extra JSON-serialisable facts (pretraining config, zero-shot result...).
    """
    from rsretrieval.files import atomic_save

    state = model.state_dict()
    tokens = torch.unique(used_tokens.long())
    payload = {k: v.half() if v.is_floating_point() else v for k, v in state.items() if k != TOKEN_KEY}
    payload["token_rows"] = tokens
    payload["token_values"] = state[TOKEN_KEY][tokens].half()
    digest = _digest(payload)
    atomic_save({
        "format": FORMAT, "arch": arch, "fill_seed": fill_seed, "token_shape": list(state[TOKEN_KEY].shape),
        "sha256": digest, "meta": meta or {}, "payload": payload,
    }, path)
    return digest


def load_compact(model: nn.Module, path: str | Path, *, arch: str) -> dict:
    """Load a compact file into ``model`` (float32); returns the file's ``meta``."""
    path = Path(path)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read {path}: {exc}. Re-create it with `python -m rsretrieval pretrain`.") from exc
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a {FORMAT} file")
    if blob["arch"] != arch:
        raise CheckpointError(f"{path} holds weights for {blob['arch']!r}, not {arch!r}: use --model {blob['arch']}")
    payload = blob["payload"]
    if _digest(payload) != blob["sha256"]:
        raise CheckpointError(f"{path} is corrupt (checksum mismatch). Re-create it with `python -m rsretrieval pretrain`.")
    state = model.state_dict()
    shape = tuple(blob["token_shape"])
    if shape != tuple(state[TOKEN_KEY].shape):
        raise CheckpointError(f"{path}: token embedding {shape} vs model {tuple(state[TOKEN_KEY].shape)}")
    g = torch.Generator().manual_seed(blob["fill_seed"])
    tokens = torch.randn(shape, generator=g) * 0.02
    tokens[payload["token_rows"]] = payload["token_values"].float()
    new_state = {k: v.float() if v.is_floating_point() else v for k, v in payload.items()
                 if k not in ("token_rows", "token_values")}
    new_state[TOKEN_KEY] = tokens
    missing = sorted(set(state) - set(new_state))
    unexpected = sorted(set(new_state) - set(state))
    if missing or unexpected:
        raise CheckpointError(f"{path} does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    try:
        model.load_state_dict(new_state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path} does not fit the model: {str(exc)[:400]}") from exc
    return dict(blob["meta"])


def is_compact(path: str | Path) -> bool:
    """Whether ``path`` looks like a compact file (checked by reading it)."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return False
    return isinstance(blob, dict) and blob.get("format") == FORMAT


def _digest(payload: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(payload):
        h.update(k.encode())
        h.update(payload[k].contiguous().cpu().numpy().tobytes())
    return h.hexdigest()
