"""AdaptFormer: a scaled bottleneck adapter parallel to each block's MLP.

Chen, Ge, Tong, Wang, Song, Wang, Luo. "AdaptFormer: Adapting Vision Transformers for Scalable
Visual Recognition", NeurIPS 2022. https://arxiv.org/abs/2205.13535
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from rsretrieval.methods.base import (
    BlockWrapper,
    BottleneckAdapter,
    MethodConfig,
    check_positive,
    check_probability,
    check_towers,
    iter_blocks,
    like,
    register_method,
    tower_resblocks,
    tower_width,
)


@dataclass
class AdaptFormerConfig(MethodConfig):
    """AdaptMLP (Chen et al., 2022): ``x = x' + MLP(LN(x')) + s * up(ReLU(down(LN(x'))))``.

    ``x'`` is the residual stream after attention; the adapter reads the same normalised input as the
    MLP, with scale s = 0.1, dropout 0.1 on the bottleneck and AdaptFormer's init (zero up
    projection), so the model starts equal to the frozen one.

    Budget: PE-RSITR lists "AdaptFormer 0.17M" on ViT-B/32. One adapter per block
    in both towers costs ``12 (2*768 r + r + 768) + 12 (2*512 r + r + 512)`` = 30,744 r + 15,360, so
    0.17M means **r = 5** (169,080 parameters), far below AdaptFormer's own r = 64 (1.98M here).
    """

    bottleneck: int = field(default=5, metadata={"help": "r: width of the bottleneck"})
    scale: float = field(default=0.1, metadata={"help": "s: multiplier of the adapter branch"})
    dropout: float = field(default=0.1, metadata={"help": "dropout on the bottleneck, training only"})
    towers: tuple[str, ...] = field(default=("visual", "text"), metadata={"help": "towers to adapt"})

    def __post_init__(self) -> None:
        owner = type(self).__name__
        self.towers = check_towers(self.towers, owner)
        check_positive(owner, bottleneck=self.bottleneck)
        check_probability(owner, dropout=self.dropout)


class AdaptFormerBlock(BlockWrapper):
    """A block with an adapter parallel to its MLP, reading the MLP's input ``LN(x')``."""

    def __init__(self, base_layer: nn.Module, adapter: BottleneckAdapter, scale: float) -> None:
        super().__init__(base_layer)
        self.adapter = adapter
        self.scale = scale

    def forward(self, q_x: torch.Tensor, k_x: torch.Tensor | None = None, v_x: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        self.check_self_attention(k_x, v_x)
        base = self.base_layer
        x = self.attention_residual(q_x, attn_mask)  # x'
        h = base.ln_2(x)
        return x + base.ls_2(base.mlp(h)) + self.scale * self.adapter(h)


def inject_adaptformer(model: nn.Module, config: AdaptFormerConfig) -> None:
    """Wrap every block of the chosen towers in an :class:`AdaptFormerBlock`."""
    for tower, _, i, block in list(iter_blocks(model, config.towers)):
        adapter = like(BottleneckAdapter(tower_width(model, tower), config.bottleneck, "relu", config.dropout),
                       block.mlp.c_fc.weight)
        tower_resblocks(model, tower)[1][i] = AdaptFormerBlock(block, adapter, config.scale)


register_method("adaptformer", AdaptFormerConfig, inject_adaptformer, starts_at_base=True, paper_params=170_000)
