"""Full fine-tuning: every parameter trains (the upper reference of PE-RSITR's tables)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

from rsretrieval.methods.base import MethodConfig, register_method


@dataclass
class FullConfig(MethodConfig):
    """Full fine-tuning: all 151,277,313 parameters of ViT-B-32 train, logit scale included.

    No options. PE-RSITR reports full fine-tuning at 45.33 mR on RSITMD but no
    parameter count; on this project's 2 CPU cores it is the slowest mode.
    """


def inject_full(model: nn.Module, config: FullConfig) -> Iterable[nn.Parameter]:
    """Nothing to add: hand every parameter back to :func:`apply_method` to train in place."""
    return list(model.parameters())


register_method("full", FullConfig, inject_full, starts_at_base=True)
