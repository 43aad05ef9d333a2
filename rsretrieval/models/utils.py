"""Small helpers every method, task and notebook uses: device, precision, modes, encoding, counts, seeds."""

from __future__ import annotations

import contextlib
import logging
import os
import random
from collections.abc import Iterator

import numpy as np
import torch

from rsretrieval.errors import DeviceNotAvailableError

_logger = logging.getLogger(__name__)


def select_device(device: str | torch.device = "auto") -> torch.device:
    """Pick the device once. ``auto`` -> cuda if available, then mps, else cpu."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise DeviceNotAvailableError(f"device={device!r} is not a device name: use auto, cpu, cuda, cuda:N "
                                      "or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceNotAvailableError(f"device={device!r} asked for, but torch sees no CUDA GPU. "
                                      "Use device='auto' or 'cpu'.")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DeviceNotAvailableError(f"device={device!r} asked for, but torch sees {torch.cuda.device_count()} "
                                      f"CUDA GPU(s) (cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) is not None
                                  and torch.backends.mps.is_available()):
        raise DeviceNotAvailableError(f"device={device!r} asked for, but this machine has no usable MPS "
                                      "(Apple GPU). Use device='auto' or 'cpu'.")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise DeviceNotAvailableError(f"device={device!r}: rsretrieval runs on cpu, cuda or mps")
    return dev


def autocast(device: torch.device | str, enabled: bool = True) -> torch.autocast:
    """Mixed precision on CUDA only (bfloat16 where supported); a no-op context elsewhere."""
    dev = torch.device(device)
    use = enabled and dev.type == "cuda"
    dtype = torch.bfloat16 if use and torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type=dev.type, dtype=dtype, enabled=use)


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Switch to eval mode, then restore every submodule's own mode.

    Per module, not ``model.train(was_training)``: a PEFT model often keeps its frozen backbone in
    eval mode while the adapters train, and a single flag would flip the backbone back on.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def embed_dim(model: torch.nn.Module) -> int:
    """The joint embedding width E of an open_clip CLIP (``visual.output_dim``, else the text projection)."""
    dim = getattr(getattr(model, "visual", None), "output_dim", None)
    if isinstance(dim, int):
        return dim
    proj = getattr(model, "text_projection", None)
    if isinstance(proj, torch.nn.Linear):
        return int(proj.out_features)
    if isinstance(proj, torch.Tensor):
        return int(proj.shape[1])
    raise TypeError(f"{type(model).__name__} does not say its embedding width (no visual.output_dim or "
                    "text_projection)")


def logit_scale(model: torch.nn.Module) -> torch.Tensor:
    """CLIP's inverse temperature ``exp(logit_scale)``, clamped at 100 as CLIP trains it."""
    return model.logit_scale.exp().clamp(max=100)


def encode_pair(model: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised image and text embeddings of a batch, ``[B, E]`` each."""
    return model.encode_image(images, normalize=True), model.encode_text(tokens, normalize=True)


def encode_text_trimmed(model: torch.nn.Module, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """open_clip's ``CLIP.encode_text`` run over the batch's columns up to its longest caption only
    (padding is token id 0, as open_clip's tokenizer writes it; other padding is simply not trimmed).

    With the causal mask and end-of-text pooling, padding after a caption's end never reaches its
    feature, so the result equals ``model.encode_text(tokens)``; a query of 10 tokens then costs a
    third of a 32-token context. :func:`trims_text_exactly` says whether that holds for a model.
    """
    from open_clip.transformer import text_global_pool

    used = (tokens != 0).any(0).nonzero()
    n = int(used.max()) + 1 if len(used) else tokens.shape[1]
    tokens = tokens[:, :n]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype) + model.positional_embedding[:n].to(cast_dtype)
    mask = None if model.attn_mask is None else model.attn_mask[:n, :n]
    x = model.ln_final(model.transformer(x, attn_mask=mask))
    x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    proj = model.text_projection
    if proj is not None:
        x = proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj
    return torch.nn.functional.normalize(x, dim=-1) if normalize else x


def trims_text_exactly(model: torch.nn.Module, tokenizer, atol: float = 1e-5) -> bool:
    """Whether :func:`encode_text_trimmed` gives ``model.encode_text``'s features (checked on two
    captions): true for open_clip's CLIP with a causal text tower, whatever adapter it carries."""
    from open_clip.model import CLIP

    if type(model).encode_text is not CLIP.encode_text or getattr(model, "attn_mask", None) is None \
            or getattr(model, "text_pool_type", None) not in ("argmax", "eos"):
        return False
    tokens = tokenizer(["a plane", "two white planes parked beside the terminal of an airport"])
    device = next(model.parameters()).device
    with torch.inference_mode(), eval_mode(model):
        try:
            trimmed = encode_text_trimmed(model, tokens.to(device))
        except (RuntimeError, ValueError, IndexError):
            return False
        return bool(torch.allclose(trimmed, model.encode_text(tokens.to(device)), atol=atol))


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    """Turn off gradients for every parameter of ``module``; returns it for chaining."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def count_parameters(module: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; shared parameters are counted once."""
    seen: set[int] = set()
    trainable = total = 0
    for p in module.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


def print_trainable_parameters(module: torch.nn.Module) -> str:
    """Print and return peft's one-line summary: trainable params || all params || trainable%."""
    trainable, total = count_parameters(module)
    line = f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / max(total, 1):.4f}"
    print(line)
    return line


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
