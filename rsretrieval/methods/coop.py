"""CoOp: learned context vectors in the text tower.

Zhou, Yang, Loy, Liu. "Learning to Prompt for Vision-Language Models" (CoOp), IJCV 2022.
https://arxiv.org/abs/2109.01134

How it fits open_clip: the method's tokenizer (:class:`CoOpTokenizer`, obtained through
``rsretrieval.methods.wrap_tokenizer(model, tokenizer)``) writes M placeholder tokens right after
the start token and shifts the caption right; the wrapped token embedding replaces the placeholders'
embeddings by the M learned vectors. The sequence length is unchanged, so the causal mask and the
positional embeddings still fit, and the end token is still the highest id in each row, so
open_clip's ``argmax`` pooling still finds it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from rsretrieval.methods.base import (
    AdapterModule,
    BlockWrapper,
    MethodConfig,
    UnsupportedModelError,
    check_positive,
    register_method,
    tower_resblocks,
    tower_width,
)

PLACEHOLDER_ID = 343  # "x" in CLIP's BPE vocabulary: CoOp's "X X X X {caption}" template


@dataclass
class CoOpConfig(MethodConfig):
    """Learned text context (CoOp, Zhou et al., 2022): M vectors in place of the first M word slots.

    Default: M = 16 vectors of the text width, **8,192** parameters on ViT-B-32 (16 x 512).
    PE-RSITR lists "CoOp 0.10M", which CoOp's design cannot reach with any usual M:
    one set of 512-d vectors would need M ~ 195, more than the 77-token context leaves for a caption.
    0.10M matches 16 vectors *at every one of the 12 text blocks* (16 x 512 x 12 = 98,304), i.e. a
    deep variant; ``deep=True`` builds exactly that (fresh vectors replace the context positions at
    the input of blocks 1..11), but it is not CoOp as published, so it is not the default.
    The learned vectors replace token embeddings, so the model cannot start equal to the frozen one.
    """

    n_ctx: int = field(default=16, metadata={"help": "M: number of learned context vectors"})
    deep: bool = field(default=False, metadata={"help": "also replace the context positions at every later block"})
    init_std: float = field(default=0.02, metadata={"help": "std of the normal init (CoOp's generic context)"})
    placeholder_token_id: int = field(
        default=PLACEHOLDER_ID, metadata={"help": "token id written at the context slots; must be below the end id"}
    )

    def __post_init__(self) -> None:
        check_positive(type(self).__name__, n_ctx=self.n_ctx, init_std=self.init_std)


class CoOpContext(AdapterModule):
    """M learned context vectors [M, D]."""

    def __init__(self, n_ctx: int, width: int, std: float, like: torch.Tensor) -> None:
        super().__init__()
        self.vectors = nn.Parameter(torch.empty(n_ctx, width, device=like.device, dtype=like.dtype))
        nn.init.normal_(self.vectors, std=std)


def _put_context(x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
    """Replace positions 1..M of x [N, L, D] by ctx [M, D]."""
    c = ctx.to(x.dtype).expand(x.shape[0], -1, -1)  # [N, M, D]
    return torch.cat([x[:, :1], c, x[:, 1 + ctx.shape[0]:]], dim=1)


class CoOpEmbedding(nn.Module):
    """Wraps ``model.token_embedding``: embeds tokens, then puts the context at positions 1..M."""

    def __init__(self, base_layer: nn.Embedding, context: CoOpContext, placeholder_id: int) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.context = context
        self.placeholder_id = placeholder_id

    @property
    def weight(self) -> torch.Tensor:  # code that reads token_embedding.weight keeps working
        return self.base_layer.weight

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        m = self.context.vectors.shape[0]
        if not bool((text[:, 1:1 + m] == self.placeholder_id).all()):
            # without the placeholders the context would overwrite the caption's first words
            raise ValueError(
                f"CoOp expects {m} placeholder tokens ({self.placeholder_id}) after the start token; tokenize "
                "with rsretrieval.methods.wrap_tokenizer(model, tokenizer) instead of the plain tokenizer"
            )
        return _put_context(self.base_layer(text), self.context.vectors)


class CoOpDeepBlock(BlockWrapper):
    """Deep variant: replaces the context positions at this block's input by fresh vectors."""

    def __init__(self, base_layer: nn.Module, context: CoOpContext) -> None:
        super().__init__(base_layer)
        self.context = context

    def forward(self, q_x: torch.Tensor, k_x: torch.Tensor | None = None, v_x: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        self.check_self_attention(k_x, v_x)
        return self.base_layer(_put_context(q_x, self.context.vectors), attn_mask=attn_mask)


class CoOpTokenizer:
    """Wraps an open_clip tokenizer: ``[SOT, X * M, caption..., EOT, 0...]``, same length as before.

    The caption is shifted right by M; when that pushes the end token out, the last slot gets it
    back (the caption loses its last M tokens instead).
    """

    def __init__(self, tokenizer: Callable, n_ctx: int, placeholder_id: int = PLACEHOLDER_ID) -> None:
        self.tokenizer = tokenizer
        self.n_ctx = n_ctx
        self.placeholder_id = placeholder_id

    @property
    def context_length(self) -> int:
        return self.tokenizer.context_length

    def __call__(self, texts: str | list[str], context_length: int | None = None) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        tokens = self.tokenizer(texts) if context_length is None else self.tokenizer(texts, context_length)
        n, length = tokens.shape
        m = self.n_ctx
        if m > length - 3:
            raise ValueError(f"CoOp with n_ctx={m} leaves no room for a caption in a context of {length} tokens")
        rows = torch.arange(n)
        eot_pos = tokens.argmax(dim=-1)  # open_clip's argmax pooling: the end token has the highest id
        eot = tokens[rows, eot_pos]
        if bool((eot <= self.placeholder_id).any()):
            raise ValueError(f"placeholder id {self.placeholder_id} is not below the end token id; "
                             "set CoOpConfig.placeholder_token_id to a smaller id of this tokenizer")
        out = torch.zeros_like(tokens)
        out[:, 0] = tokens[:, 0]
        out[:, 1:1 + m] = self.placeholder_id
        out[:, 1 + m:] = tokens[:, 1:length - m]
        cut = eot_pos + m >= length  # the end token fell off: give it the last slot back
        out[cut, length - 1] = eot[cut]
        return out


def inject_coop(model: nn.Module, config: CoOpConfig) -> None:
    """Wrap ``token_embedding`` (and, if deep, text blocks 1..L-1) with learned context."""
    if getattr(model, "text_pool_type", "argmax") != "argmax":
        raise UnsupportedModelError(f"CoOp needs open_clip's argmax text pooling; this model pools by "
                                    f"{model.text_pool_type!r}")
    if config.n_ctx > model.context_length - 3:
        raise ValueError(f"CoOpConfig.n_ctx={config.n_ctx} leaves no room for a caption in the model's "
                         f"{model.context_length}-token context; use n_ctx <= {model.context_length - 3}")
    width = tower_width(model, "text")
    ref = model.token_embedding.weight
    context = CoOpContext(config.n_ctx, width, config.init_std, ref)
    model.token_embedding = CoOpEmbedding(model.token_embedding, context, config.placeholder_token_id)
    if config.deep:
        _, blocks = tower_resblocks(model, "text")
        for i in range(1, len(blocks)):
            blocks[i] = CoOpDeepBlock(blocks[i], CoOpContext(config.n_ctx, width, config.init_std, ref))


def coop_tokenizer(model: nn.Module, config: CoOpConfig, tokenizer: Callable) -> CoOpTokenizer:
    """The tokenizer wrapper :func:`rsretrieval.methods.wrap_tokenizer` returns for CoOp."""
    return CoOpTokenizer(tokenizer, config.n_ctx, config.placeholder_token_id)


register_method("coop", CoOpConfig, inject_coop, starts_at_base=False, wrap_tokenizer=coop_tokenizer,
                paper_params=100_000)
