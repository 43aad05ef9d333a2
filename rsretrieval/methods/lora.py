"""LoRA on open_clip's attention and MLP weights, through ``torch.nn.utils.parametrize``.

Hu, Shen, Wallis, Allen-Zhu, Li, Wang, Wang, Chen. "LoRA: Low-Rank Adaptation of Large Language
Models", ICLR 2022. https://arxiv.org/abs/2106.09685

Why parametrizations: in open_clip 3.3.0 attention is ``nn.MultiheadAttention``, whose q, k, v
weights are one fused ``in_proj_weight`` and whose forward hands ``in_proj_weight`` and
``out_proj.weight`` straight to ``F.multi_head_attention_forward``. A module wrapped around
``out_proj`` is never called (peft's LoRA on it is silently ignored). A parametrization replaces
the *attribute* ``in_proj_weight`` by ``W + (alpha/r) B A`` every time it is read, so every code
path, fused or not, sees the update.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from rsretrieval.methods.base import (
    AdapterModule,
    MethodConfig,
    UnsupportedModelError,
    check_positive,
    check_towers,
    iter_blocks,
    match_targets,
    register_method,
)

# local target name -> (module path inside a block, parameter name, which third of the rows or None)
TARGETS: dict[str, tuple[str, str, int | None]] = {
    "attn.q": ("attn", "in_proj_weight", 0),
    "attn.k": ("attn", "in_proj_weight", 1),
    "attn.v": ("attn", "in_proj_weight", 2),
    "attn.out_proj": ("attn.out_proj", "weight", None),
    "mlp.c_fc": ("mlp.c_fc", "weight", None),
    "mlp.c_proj": ("mlp.c_proj", "weight", None),
}


@dataclass
class LoraConfig(MethodConfig):
    """Low-rank updates ``W + (alpha / r) B A`` (Hu et al., 2022), B zero-initialised.

    Targets are names like ``visual.transformer.resblocks.0.attn.q``; a pattern matches a name
    exactly, as a ``.``-suffix (``attn.q``) or as a full regular expression
    (``visual.*resblocks\\.(10|11)\\.attn\\.[qv]``). Local targets per block: ``attn.q``,
    ``attn.k``, ``attn.v`` (row slices of the fused ``in_proj_weight``), ``attn.out_proj``,
    ``mlp.c_fc``, ``mlp.c_proj``.

    Default (q and v in every block of both towers, r = 4): ``12 x 2 x 4 x 2d`` = 147,456 (image)
    + 98,304 (text) = **245,760** on ViT-B-32. PE-RSITR reports no LoRA figure. Unlike activation
    adapters, LoRA has no dropout here: it acts on weights, not on inputs.
    """

    r: int = field(default=4, metadata={"help": "rank of the update"})
    alpha: float = field(default=8.0, metadata={"help": "scale numerator: the update is (alpha / r) B A"})
    target_modules: tuple[str, ...] = field(
        default=("attn.q", "attn.v"), metadata={"help": f"patterns over block targets; local names: {list(TARGETS)}"}
    )
    towers: tuple[str, ...] = field(default=("visual", "text"), metadata={"help": "towers whose blocks are searched"})

    def __post_init__(self) -> None:
        owner = type(self).__name__
        self.towers = check_towers(self.towers, owner)
        if isinstance(self.target_modules, str):
            self.target_modules = (self.target_modules,)
        self.target_modules = tuple(self.target_modules)
        if not self.target_modules:
            raise ValueError(f"{owner}.target_modules is empty: name at least one target, e.g. ('attn.q', 'attn.v')")
        check_positive(owner, r=self.r, alpha=self.alpha)


class LoraDelta(AdapterModule):
    """A parametrization ``W -> W + scale * B @ A`` on rows ``[start, stop)`` of W (all rows by default).

    ``A`` is kaiming-uniform(a=sqrt 5) and ``B`` zero, as in the LoRA reference code, so the weight
    is unchanged until B trains.
    """

    def __init__(self, rows: int, cols: int, r: int, scale: float, start: int = 0, stop: int | None = None,
                 like: torch.Tensor | None = None) -> None:
        super().__init__()
        self.rows, self.start = rows, start
        self.stop = rows if stop is None else stop
        kw = {"device": like.device, "dtype": like.dtype} if like is not None else {}
        self.lora_A = nn.Parameter(torch.empty(r, cols, **kw))
        self.lora_B = nn.Parameter(torch.zeros(self.stop - start, r, **kw))
        nn.init.kaiming_uniform_(self.lora_A, a=5**0.5)
        self.scale = scale

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        delta = self.scale * (self.lora_B @ self.lora_A)  # [stop - start, cols]
        if self.start or self.stop != self.rows:
            delta = F.pad(delta, (0, 0, self.start, self.rows - self.stop))  # zero rows outside the slice
        return weight + delta

    def extra_repr(self) -> str:
        return f"rows={self.start}:{self.stop} of {self.rows}, r={self.lora_A.shape[0]}, scale={self.scale:g}"


def lora_candidates(model: nn.Module, towers: tuple[str, ...]) -> dict[str, tuple[str, str]]:
    """Every name a LoRA pattern can match -> (block name, local target), in model order.

    Names look like ``transformer.resblocks.3.mlp.c_fc`` or ``visual.transformer.resblocks.0.attn.q``.
    """
    return {f"{name}.{local}": (name, local) for _, name, _, _ in iter_blocks(model, towers) for local in TARGETS}


def inject_lora(model: nn.Module, config: LoraConfig) -> None:
    """Register a :class:`LoraDelta` parametrization on every matched weight (or weight slice)."""
    candidates = lora_candidates(model, config.towers)
    matched = match_targets(list(candidates), config.target_modules, "LoraConfig.target_modules")
    chosen = {name for hits in matched.values() for name in hits}
    for name, (block_name, local) in candidates.items():  # model order keeps parameter names deterministic
        if name not in chosen:
            continue
        path, pname, third = TARGETS[local]
        module = model.get_submodule(f"{block_name}.{path}")
        weight = getattr(module, pname)  # already parametrized when q and v share in_proj_weight: same shape
        if weight is None:
            raise UnsupportedModelError(f"{block_name}.{path} has no {pname} (separate q/k/v projections?); "
                                        "target mlp.c_fc / mlp.c_proj instead")
        rows, cols = weight.shape
        start, stop = (0, rows) if third is None else (third * rows // 3, (third + 1) * rows // 3)
        delta = LoraDelta(rows, cols, config.r, config.alpha / config.r, start, stop, like=weight)
        parametrize.register_parametrization(module, pname, delta)


register_method("lora", LoraConfig, inject_lora, starts_at_base=True)
