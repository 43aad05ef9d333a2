"""Visual Prompt Tuning: learned tokens in the image tower.

Jia, Tang, Chen, Cardie, Belongie, Hariharan, Lim. "Visual Prompt Tuning", ECCV 2022.
https://arxiv.org/abs/2203.12119
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from rsretrieval.methods.base import (
    AdapterModule,
    BlockWrapper,
    MethodConfig,
    check_positive,
    register_method,
    tower_resblocks,
    tower_width,
)


@dataclass
class VPTConfig(MethodConfig):
    """Visual prompt tokens (Jia et al., 2022), inserted after the class token of the image tower.

    Deep VPT (the default) gives every block its own fresh prompts: they are inserted at the block's
    input and their outputs are dropped after it, so the sequence outside the blocks keeps its length
    and ``tok`` pooling still reads the class token at position 0. Shallow VPT inserts prompts once,
    before block 0, and drops them after the last block.

    Default on ViT-B-32: 50 tokens x 768 x 12 blocks = **460,800** parameters, PE-RSITR's "VPT
    0.46M". Prompts change the attention of every token, so the model cannot start
    equal to the frozen one.
    """

    num_tokens: int = field(default=50, metadata={"help": "prompt tokens per block (deep) or in total (shallow)"})
    deep: bool = field(default=True, metadata={"help": "fresh prompts at every block (VPT-deep) or only the first"})

    def __post_init__(self) -> None:
        check_positive(type(self).__name__, num_tokens=self.num_tokens)


class VPTPrompts(AdapterModule):
    """``num_tokens`` prompt vectors, initialised uniform(-v, v) with v = sqrt(6 / (3 p^2 + d)) as in VPT."""

    def __init__(self, num_tokens: int, width: int, patch_area: int, like: torch.Tensor) -> None:
        super().__init__()
        bound = math.sqrt(6.0 / (3 * patch_area + width))  # xavier-uniform over a patch's pixels and the width
        self.tokens = nn.Parameter(torch.empty(num_tokens, width, device=like.device, dtype=like.dtype))
        nn.init.uniform_(self.tokens, -bound, bound)


class VPTBlock(BlockWrapper):
    """Inserts prompts after the class token before the block and/or removes them after it."""

    def __init__(self, base_layer: nn.Module, prompts: VPTPrompts | None, remove: int) -> None:
        super().__init__(base_layer)
        self.prompts = prompts
        self.remove = remove  # how many prompt positions to drop from the block's output

    def forward(self, q_x: torch.Tensor, k_x: torch.Tensor | None = None, v_x: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        self.check_self_attention(k_x, v_x)
        x = q_x  # [N, 1 + L, D]: class token then patches
        if self.prompts is not None:
            p = self.prompts.tokens.to(x.dtype).expand(x.shape[0], -1, -1)  # [N, P, D]
            x = torch.cat([x[:, :1], p, x[:, 1:]], dim=1)  # [N, 1 + P + L, D]
        x = self.base_layer(x, attn_mask=attn_mask)
        if self.remove:
            x = torch.cat([x[:, :1], x[:, 1 + self.remove:]], dim=1)  # back to [N, 1 + L, D]
        return x


def inject_vpt(model: nn.Module, config: VPTConfig) -> None:
    """Wrap the image blocks: every one (deep) or the first and last (shallow)."""
    _, blocks = tower_resblocks(model, "visual")
    width = tower_width(model, "visual")
    patch = model.visual.patch_size
    patch_area = patch[0] * patch[1] if isinstance(patch, (tuple, list)) else patch * patch
    ref = model.visual.class_embedding
    n, last = config.num_tokens, len(blocks) - 1
    for i, block in enumerate(blocks):
        if config.deep:
            blocks[i] = VPTBlock(block, VPTPrompts(n, width, patch_area, ref), remove=n)
        elif i in (0, last):
            prompts = VPTPrompts(n, width, patch_area, ref) if i == 0 else None
            blocks[i] = VPTBlock(block, prompts, remove=n if i == last else 0)


register_method("vpt", VPTConfig, inject_vpt, starts_at_base=False, paper_params=460_000)
