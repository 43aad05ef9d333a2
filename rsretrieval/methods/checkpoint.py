"""Saving and loading a method on its own: its parameters, its config and the base it belongs to.

A method file holds only what the method trained (a few hundred KB for the adapters on ViT-B-32),
the method's name and config, the base model's name and :func:`base_fingerprint`, and a sha256 of
the saved tensors. Loading rebuilds the method on a fresh base and refuses, with a
:class:`~rsretrieval.errors.CheckpointError`, any file that was written for another base, does not
fit, or is damaged (peft's ``adapter_model`` + ``adapter_config`` idea in one file).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rsretrieval.errors import CheckpointError
from rsretrieval.methods.base import (
    MethodNotFoundError,
    apply_method,
    base_fingerprint,
    get_applied_method,
    get_method,
    method_parameters,
)
from rsretrieval.files import atomic_save

FORMAT = "rsretrieval-method"
VERSION = 1


def tensors_checksum(state: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and raw bytes of the tensors, in name order."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_method(model: nn.Module, path: str | Path, base_name: str | None = None) -> Path:
    """Write the applied method's parameters and metadata to ``path`` (atomically).

    Args:
        model: a model :func:`apply_method` was called on (and, usually, trained).
        path: the file to write, e.g. ``runs/x/method.pt``.
        base_name: the base architecture's name, e.g. ``ModelBundle.name``; checked again on load.

    Returns:
        The path written.
    """
    applied = get_applied_method(model)
    if applied is None:
        raise ValueError("save_method: no method has been applied to this model; call apply_method first")
    state = {n: p.detach().cpu().clone() for n, p in method_parameters(model).items()}
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "method": applied.name,
        "config": json.dumps(applied.config.to_dict()),  # a string: plain types load under weights_only
        "base_name": base_name,
        "base_fingerprint": applied.base_fingerprint,
        "state": state,
        "checksum": tensors_checksum(state),
    }
    atomic_save(payload, path)
    return Path(path)


def save_method_half(source: str | Path, target: str | Path) -> Path:
    """Copy the method file ``source`` to ``target`` (atomically) with its float32 tensors in float16.

    Half the bytes, for files that are committed (the zoo); :func:`load_method` casts them back to
    the model's dtype. The same source gives the same bytes.
    """
    payload = read_method_file(source)
    state = {n: t.half() if t.dtype == torch.float32 else t for n, t in payload["state"].items()}
    atomic_save({**payload, "state": state, "checksum": tensors_checksum(state)}, target)
    return Path(target)


def read_method_file(path: str | Path) -> dict[str, Any]:
    """Read and verify a method file (format, fields, checksum) without touching any model."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no method file at {path}: save one with save_method(model, path)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not a torch file, or holding non-tensor objects
        raise CheckpointError(f"cannot read method file {path}: {exc}. The file is damaged; save it again.") from exc
    needed = {"format", "method", "config", "base_fingerprint", "state", "checksum"}
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or not needed <= set(payload):
        raise CheckpointError(f"{path} is not a method file written by save_method (missing "
                              f"{sorted(needed - set(payload)) if isinstance(payload, dict) else 'everything'})")
    if payload.get("version", 0) > VERSION:
        raise CheckpointError(f"{path} has format version {payload['version']}; this rsretrieval reads up to "
                              f"{VERSION}. Upgrade rsretrieval.")
    if tensors_checksum(payload["state"]) != payload["checksum"]:
        raise CheckpointError(f"{path}: the saved tensors do not match their checksum (file corrupted or edited)")
    return payload


def load_method(model: nn.Module, path: str | Path, base_name: str | None = None) -> nn.Module:
    """Re-inject the method stored in ``path`` into ``model`` and load its parameters.

    Args:
        model: the base model the method was trained on, freshly built (e.g. ``create_model(...).model``),
            or a model that already carries the same method with the same config.
        path: a file written by :func:`save_method`.
        base_name: the base architecture's name (``ModelBundle.name``); when both this and the file
            have one, they must agree.

    Returns:
        The model, with the method applied and loaded.

    Raises:
        CheckpointError: wrong base (name or fingerprint), another method already applied, missing,
            unexpected or misshapen tensors, or a damaged file. If the error comes after injection
            (keys or shapes), the model carries a freshly injected method: rebuild it.
    """
    payload = read_method_file(path)
    saved_name = payload.get("base_name")
    if base_name is not None and saved_name is not None and base_name != saved_name:
        raise CheckpointError(f"{path} was trained on base {saved_name!r}, not {base_name!r}: build "
                              f"create_model({saved_name!r}, ...) with the same weights and load into that")
    try:
        spec = get_method(payload["method"])
    except MethodNotFoundError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    config = spec.config_cls.from_dict(json.loads(payload["config"]))

    applied = get_applied_method(model)
    if applied is None:
        fingerprint = base_fingerprint(model)
    elif applied.name != spec.name or applied.config != config:
        raise CheckpointError(f"the model already carries {applied.name} {applied.config}; {path} holds "
                              f"{spec.name} {config}. Load it into a fresh base model.")
    else:
        fingerprint = applied.base_fingerprint
    if fingerprint != payload["base_fingerprint"]:
        raise CheckpointError(
            f"{path} was trained on another base model (name {saved_name!r}, fingerprint "
            f"{payload['base_fingerprint'][:12]}, this model {fingerprint[:12]}): same architecture and "
            "same pretrained weights are needed. Build the base with the same create_model(name, pretrained)."
        )

    if applied is None:
        apply_method(model, config)
    params = method_parameters(model)
    state: dict[str, torch.Tensor] = payload["state"]
    missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
    wrong = [f"{n}: file {tuple(state[n].shape)} vs model {tuple(params[n].shape)}"
             for n in sorted(set(params) & set(state)) if state[n].shape != params[n].shape]
    if missing or unexpected or wrong:
        raise CheckpointError(f"{path} does not fit {spec.name}: missing {missing[:5]}, unexpected "
                              f"{unexpected[:5]}, wrong shape {wrong[:5]}. Was it written by another version?")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(state[n])
    return model
