"""Linear probe: only the two projections into the joint embedding space train."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from rsretrieval.methods.base import MethodConfig, check_towers, register_method


@dataclass
class LinearProbeConfig(MethodConfig):
    """Linear probe: train ``visual.proj`` and ``text_projection``, freeze everything else.

    On ViT-B-32 that is 768x512 + 512x512 = **655,360** parameters (no biases). PE-RSITR reports
    **1.05M** for its linear probe without saying what it trained, so our count is
    38% lower, and we do not pad it to match. What 1.05M may be: two *new* 512->512 linear heads
    with biases on top of the frozen embeddings (2 x 262,656 = 1,050,624), or exactly 2^20 =
    1,048,576 (for instance the two projections plus a second 768x512 matrix). Training open_clip's
    own projections is the standard meaning of a CLIP linear probe for retrieval and needs no new
    module, so it starts at the frozen model.
    """

    towers: tuple[str, ...] = field(
        default=("visual", "text"), metadata={"help": "which projections train: visual.proj and/or text_projection"}
    )

    def __post_init__(self) -> None:
        self.towers = check_towers(self.towers, type(self).__name__)


def _params_of(obj: nn.Parameter | nn.Module | None, where: str) -> list[nn.Parameter]:
    if isinstance(obj, nn.Parameter):
        return [obj]
    if isinstance(obj, nn.Module):  # e.g. an nn.Linear text projection in other open_clip configs
        return list(obj.parameters())
    raise ValueError(f"linear_probe: the model has no {where} (it is {obj!r}); use a CLIP with projections")


def inject_linear_probe(model: nn.Module, config: LinearProbeConfig) -> Iterable[torch.Tensor]:
    """Return the projection parameters to train in place; nothing is added to the model."""
    params: list[nn.Parameter] = []
    if "visual" in config.towers:
        params += _params_of(getattr(model.visual, "proj", None), "visual.proj")
    if "text" in config.towers:
        params += _params_of(getattr(model, "text_projection", None), "text_projection")
    return params


register_method("linear_probe", LinearProbeConfig, inject_linear_probe, starts_at_base=True,
                paper_params=1_050_000)
