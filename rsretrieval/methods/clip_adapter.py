"""CLIP-Adapter: a residual bottleneck MLP on each tower's output embedding.

Gao, Geng, Zhang, Ma, Fang, Zhang, Li, Qiao. "CLIP-Adapter: Better Vision-Language Models with
Feature Adapters", IJCV 2024. https://arxiv.org/abs/2110.04544
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from rsretrieval.methods.base import (
    AdapterModule,
    MethodConfig,
    UnsupportedModelError,
    check_positive,
    check_towers,
    register_method,
)


@dataclass
class CLIPAdapterConfig(MethodConfig):
    """CLIP-Adapter (Gao et al.): ``f' = alpha * A(f) + (1 - alpha) * f`` on the projected features.

    ``A`` is CLIP-Adapter's two-layer MLP without biases, ``Linear(e, e/k) -> ReLU -> Linear(e/k, e)
    -> ReLU`` on the e-dimensional embedding. The paper uses reduction k = 4 (on one tower); PE-RSITR
    lists "CLIP-Adapter 0.52M", which is exactly k = 2 on both towers of ViT-B-32:
    2 towers x 2 x 512 x 256 = **524,288**, hence our default. alpha = 0.2 is CLIP-Adapter's residual
    ratio.

    It cannot start at the frozen model: ``A`` keeps its default init (a zero second layer would
    never train, because the final ReLU has zero gradient at 0) and the mix scales f by 1 - alpha.
    """

    reduction: int = field(default=2, metadata={"help": "k: bottleneck = embedding dim / k"})
    alpha: float = field(default=0.2, metadata={"help": "residual ratio: weight of the adapted feature"})
    towers: tuple[str, ...] = field(default=("visual", "text"), metadata={"help": "towers to adapt"})

    def __post_init__(self) -> None:
        owner = type(self).__name__
        self.towers = check_towers(self.towers, owner)
        check_positive(owner, reduction=self.reduction)
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"{owner}.alpha={self.alpha}: use a ratio in [0, 1]")


class CLIPAdapterMLP(AdapterModule):
    """``ReLU(W2 ReLU(W1 f))`` with W1: e -> e/k, W2: e/k -> e, no biases (as CLIP-Adapter)."""

    def __init__(self, dim: int, reduction: int) -> None:
        super().__init__()
        hidden = max(1, dim // reduction)
        self.fc = nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.ReLU(),
                                nn.Linear(hidden, dim, bias=False), nn.ReLU())

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.fc(f)


class AdaptedProjection(nn.Module):
    """Takes the place of ``visual.proj`` / ``text_projection`` and adapts what they output.

    open_clip applies both projections as ``features @ proj``, so this module implements
    ``__rmatmul__``: Python falls back to it because a tensor cannot multiply a module. That puts
    the adapter after the projection in ``encode_image`` and ``encode_text`` without patching either.
    The original projection is kept frozen as ``weight`` (a Parameter) or ``base_layer`` (a Linear).
    """

    def __init__(self, proj: nn.Parameter | nn.Module, adapter: CLIPAdapterMLP, alpha: float) -> None:
        super().__init__()
        if isinstance(proj, nn.Module):
            self.base_layer = proj
        else:
            self.weight = proj
        self.adapter = adapter
        self.alpha = alpha

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) if hasattr(self, "base_layer") else x @ self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.project(x)
        return self.alpha * self.adapter(f) + (1 - self.alpha) * f

    def __rmatmul__(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)


def _embed_dim(proj: nn.Parameter | nn.Module) -> int:
    return int(proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1])


def inject_clip_adapter(model: nn.Module, config: CLIPAdapterConfig) -> None:
    """Replace each chosen projection by an :class:`AdaptedProjection` around it."""
    for tower in config.towers:
        owner, attr = (model.visual, "proj") if tower == "visual" else (model, "text_projection")
        proj = getattr(owner, attr, None)
        if proj is None:
            raise UnsupportedModelError(f"CLIP-Adapter adapts projected features; the {tower} tower has no {attr}")
        ref = proj if isinstance(proj, torch.Tensor) else next(proj.parameters())
        adapter = CLIPAdapterMLP(_embed_dim(proj), config.reduction).to(device=ref.device, dtype=ref.dtype)
        delattr(owner, attr)  # a registered Parameter cannot be overwritten by a Module
        setattr(owner, attr, AdaptedProjection(proj, adapter, config.alpha))


register_method("clip_adapter", CLIPAdapterConfig, inject_clip_adapter, starts_at_base=False,
                paper_params=520_000)
