"""PE-RSITR's MRS-Adapter: one bottleneck adapter shared by every block of both towers.

Yuan, Zhan, Xiong. "Parameter-Efficient Transfer Learning for Remote Sensing Image-Text Retrieval"
(PE-RSITR), IEEE TGRS 2023. https://ieeexplore.ieee.org/document/10231134 ; code:
https://github.com/ZhanYang-nwpu/PE-RSITR (``layers/MRS_Adapter.py``). Written from the released code's
shapes and initialisation (``docs/design.md``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from rsretrieval.methods.base import (
    AdapterModule,
    BlockWrapper,
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
class MRSAdapterConfig(MethodConfig):
    """MRS-Adapter (PE-RSITR): one shared adapter, parallel to the MLP of every block of both towers.

    Per tower t of width d_t: ``down_t: d_t -> 64``, ReLU, dropout 0.5 (training only), then
    ``concat(up_t: 64 -> d_t - 64, up_shared: 64 -> 64)`` back to d_t; the shared up projection is
    the part both modalities have in common. Down projections are kaiming-uniform(a=sqrt 5) with zero
    bias, every up projection is all zero, there is no scale. In every block
    ``x = x + attn(ln_1(x)); x = x + mlp(ln_2(x)) + adapter(x)``: the adapter reads the residual
    stream after attention, not the normalised MLP input.

    On ViT-B-32 (768 / 512): 768*64+64 + 512*64+64 + 64*704+704 + 64*448+448 + 64*64+64 =
    **161,088** trainable parameters, PE-RSITR's 0.16M. Other widths keep ``shared_dim`` = 64 and
    give the modality-specific ups the rest: on ``mini`` (128 / 128) they are 64 -> 64 each, on
    ``tiny`` (64 / 64) they vanish and the whole up projection is shared.
    """

    bottleneck: int = field(default=64, metadata={"help": "width of the shared bottleneck"})
    shared_dim: int = field(default=64, metadata={"help": "output dims produced by the shared up projection"})
    dropout: float = field(default=0.5, metadata={"help": "dropout on the bottleneck, training only"})
    towers: tuple[str, ...] = field(default=("visual", "text"), metadata={"help": "towers whose blocks share it"})

    def __post_init__(self) -> None:
        owner = type(self).__name__
        self.towers = check_towers(self.towers, owner)
        check_positive(owner, bottleneck=self.bottleneck)
        if self.shared_dim < 0:
            raise ValueError(f"{owner}.shared_dim={self.shared_dim} must be >= 0")
        check_probability(owner, dropout=self.dropout)


class MRSAdapter(AdapterModule):
    """The shared adapter: per-tower down and specific up, one shared up; ``forward(x, tower)``."""

    def __init__(self, widths: dict[str, int], bottleneck: int, shared_dim: int, dropout: float) -> None:
        super().__init__()
        too_narrow = {t: w for t, w in widths.items() if w < shared_dim}
        if too_narrow:
            raise ValueError(f"MRSAdapterConfig.shared_dim={shared_dim} exceeds tower width(s) {too_narrow}; "
                             "use a shared_dim no larger than the narrowest tower")
        self.down = nn.ModuleDict({t: nn.Linear(w, bottleneck) for t, w in widths.items()})
        self.act = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        # a zero-width Linear would only warn at init; a tower as narrow as shared_dim has no specific up
        self.up = nn.ModuleDict({t: nn.Linear(bottleneck, w - shared_dim) for t, w in widths.items()
                                 if w > shared_dim})
        self.up_shared = nn.Linear(bottleneck, shared_dim) if shared_dim else None
        with torch.no_grad():
            for lin in self.down.values():
                nn.init.kaiming_uniform_(lin.weight, a=5**0.5)
                nn.init.zeros_(lin.bias)
            for lin in [*self.up.values(), self.up_shared]:
                if lin is not None:
                    nn.init.zeros_(lin.weight)
                    nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor, tower: str) -> torch.Tensor:
        h = self.dropout(self.act(self.down[tower](x)))  # [N, L, bottleneck]
        parts = [self.up[tower](h)] if tower in self.up else []
        if self.up_shared is not None:
            parts.append(self.up_shared(h))
        return torch.cat(parts, dim=-1)  # [N, L, width]: modality-specific dims first, shared dims last


class MRSBlock(BlockWrapper):
    """``x = x + attn(ln_1(x)); x = x + mlp(ln_2(x)) + adapter(x)`` around a frozen block."""

    def __init__(self, base_layer: nn.Module, adapter: MRSAdapter, tower: str) -> None:
        super().__init__(base_layer)
        self.adapter = adapter  # the same instance in every block: its parameters count once
        self.tower = tower

    def forward(self, q_x: torch.Tensor, k_x: torch.Tensor | None = None, v_x: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        self.check_self_attention(k_x, v_x)
        base = self.base_layer
        x = self.attention_residual(q_x, attn_mask)
        return x + base.ls_2(base.mlp(base.ln_2(x))) + self.adapter(x, self.tower)


def inject_mrs_adapter(model: nn.Module, config: MRSAdapterConfig) -> None:
    """Build one :class:`MRSAdapter` and wrap every block of the chosen towers around it."""
    widths = {t: tower_width(model, t) for t in config.towers}
    ref = model.transformer.resblocks[0].mlp.c_fc.weight
    adapter = like(MRSAdapter(widths, config.bottleneck, config.shared_dim, config.dropout), ref)
    for tower, _, i, block in list(iter_blocks(model, config.towers)):
        tower_resblocks(model, tower)[1][i] = MRSBlock(block, adapter, tower)


register_method("mrs_adapter", MRSAdapterConfig, inject_mrs_adapter, starts_at_base=True, paper_params=161_088)
