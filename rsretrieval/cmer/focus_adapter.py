"""Focus-Adapter: a side branch beside a frozen CLIP, with a focus layer for small targets.

Our reconstruction of CMER's Focus-Adapter, of which only the abstract is known (the design and
its arguments: ``docs/cmer.md``). Per tower, tapped block outputs of the frozen backbone (run under
``torch.no_grad``) pass LayerNorm + down projections, one residual MLP and a pooling (image: class
token + focus-weighted patches), then join the frozen embedding through a zero-initialised,
scaled gate: ``e = e_frozen + s * gate * up(p)``. Step 0 is frozen CLIP bit for bit, and only the
branch is back-propagated, so what it reads can be cached (:mod:`rsretrieval.cmer.cache`).

Two registry names inject the same module: ``focus_adapter`` (trains with InfoNCE by default) and
``cmer`` (trains with the ``cmer`` loss: scene captions + recycled negatives).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from torch import nn

from rsretrieval.models.utils import embed_dim
from rsretrieval.methods.base import (
    AdapterModule,
    MethodConfig,
    UnsupportedModelError,
    check_positive,
    check_probability,
    check_towers,
    get_applied_method,
    like,
    register_method,
    tower_resblocks,
    tower_width,
)

POOLINGS = ("focus", "mean", "cls")
TEXT_POOLINGS = ("mean", "eot")


# ----------------------------------------------------------------------------- config

@dataclass
class FocusAdapterConfig(MethodConfig):
    """Focus-Adapter (our reconstruction of CMER's): a side branch on frozen tokens of both towers.

    Per tower: LayerNorm + Linear (width -> ``bottleneck``) on each tapped block output, summed;
    one residual MLP block; pooling (image: class token + focus-weighted patch tokens; text: masked
    mean over the caption's tokens or its EOT token); Linear up to the embedding; added to the
    frozen embedding through a zero-initialised per-dimension gate, scaled by ``gate_scale``. The
    backbone runs under
    ``torch.no_grad``. With ``layers=4``: every block of ``mini``/``tiny``, blocks 2, 5, 8, 11 of
    ViT-B-32.
    """

    layers: int | tuple[int, ...] = field(default=4, metadata={
        "help": "blocks tapped per tower: an int n = n evenly spaced blocks ending at the last (every block "
                "when the tower has <= n), or explicit block indices (negative ones count from the end)"})
    bottleneck: int = field(default=64, metadata={
        "help": "r: width of the side branch (capped at half the tower's width)"})
    mlp_ratio: float = field(default=1.0, metadata={
        "help": "hidden width of the residual MLP, as a multiple of r"})
    dropout: float = field(default=0.0, metadata={"help": "dropout inside the residual MLP, training only"})
    pooling: str = field(default="focus", metadata={
        "help": "image pooling: focus (class token + focus-weighted patches), mean (class token + mean of "
                "patches), cls (class token only)"})
    focus_temperature: float = field(default=0.3, metadata={
        "help": "tau of the focus softmax: logits are divided by it. The logits start at 0, so tau does "
                "not change step 0; a small tau lets the few focus parameters move the weights in a short "
                "run"})
    outlier_init: float = field(default=0.0, metadata={
        "help": "initial beta of the focus layer's outlier prior. 0: the focus starts as mean pooling; "
                "> 0: it starts tilted towards outlier patches (step 0 stays frozen CLIP either way: the "
                "gate is 0)"})
    text_pooling: str = field(default="mean", metadata={
        "help": "text pooling: mean over the caption's tokens (SOT excluded, EOT included) or eot (the EOT "
                "token)"})
    towers: tuple[str, ...] = field(default=("visual", "text"), metadata={"help": "towers that get a branch"})
    gate_scale: float = field(default=64.0, metadata={
        "help": "s in e_frozen + s * gate * up(p), gate zero-initialised: Adam moves the gate by ~lr per step, "
                "so the branch's share grows by ~s * lr per step. 1 is a plain zero gate; 64 matches the default "
                "bottleneck r. Not tuned yet (docs/cmer.md)"})
    frozen_batch: int | None = field(default=None, metadata={
        "help": "micro-batch of the frozen forward (same numbers up to float rounding, lower peak memory). "
                "None: 16 on CPU, the whole batch on GPU; 0: always the whole batch"})

    def __post_init__(self) -> None:
        owner = type(self).__name__
        self.towers = check_towers(self.towers, owner)
        if self.frozen_batch is not None and self.frozen_batch < 0:
            raise ValueError(f"{owner}.frozen_batch={self.frozen_batch}: use None, 0 or a positive size")
        if isinstance(self.layers, bool) or not isinstance(self.layers, (int, list, tuple)):
            raise ValueError(f"{owner}.layers={self.layers!r}: use an int or a sequence of block indices")
        if isinstance(self.layers, int):
            check_positive(owner, layers=self.layers)
        else:
            self.layers = tuple(int(i) for i in self.layers)
            if not self.layers:
                raise ValueError(f"{owner}.layers is empty: tap at least one block")
        check_positive(owner, bottleneck=self.bottleneck, mlp_ratio=self.mlp_ratio,
                       focus_temperature=self.focus_temperature, gate_scale=self.gate_scale)
        check_probability(owner, dropout=self.dropout)
        if self.pooling not in POOLINGS:
            raise ValueError(f"{owner}.pooling={self.pooling!r}: use one of {POOLINGS}")
        if self.text_pooling not in TEXT_POOLINGS:
            raise ValueError(f"{owner}.text_pooling={self.text_pooling!r}: use one of {TEXT_POOLINGS}")


@dataclass
class CMERAdapterConfig(FocusAdapterConfig):
    """CMER's side branch (our reconstruction): the Focus-Adapter, trained with the ``cmer`` loss by default.

    The method injects exactly what ``focus_adapter`` injects. CMER's training-time parts, scene-label
    augmentation and recycled negatives, belong to the ``cmer`` loss, which the registry makes this
    method's default: ``train --method cmer`` trains all of CMER (see :class:`rsretrieval.cmer.CMERConfig`).
    """


def resolve_layers(spec: int | Sequence[int], depth: int,
                   owner: str = "FocusAdapterConfig") -> tuple[int, ...]:
    """Block indices to tap in a tower of ``depth`` blocks.

    Args:
        spec: an int n (n evenly spaced blocks ending at the last one; every block if depth <= n)
            or explicit indices (negative ones count from the end).
        depth: number of blocks.
        owner: name used in error messages.

    Returns:
        Sorted, distinct, non-negative indices.

    Raises:
        ValueError: an index outside the tower.

    Example:
        >>> resolve_layers(4, 12), resolve_layers(4, 4), resolve_layers((-1, 0), 12)
        ((2, 5, 8, 11), (0, 1, 2, 3), (0, 11))
    """
    if isinstance(spec, int):
        n = min(spec, depth)
        return tuple(sorted({math.floor((k + 1) * depth / n + 0.5) - 1 for k in range(n)}))
    bad = [i for i in spec if not -depth <= i < depth]
    if bad:
        raise ValueError(f"{owner}.layers: block indices {bad} are outside a tower of {depth} blocks")
    return tuple(sorted({i % depth for i in spec}))


# ----------------------------------------------------------------------------- the branch

class ResidualMLP(nn.Module):
    """``x + fc2(dropout(gelu(fc1(LayerNorm(x)))))``, token-wise."""

    def __init__(self, width: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.dropout(self.act(self.fc1(self.norm(x)))))


class SideBranch(nn.Module):
    """One tower's branch: tapped tokens -> bottleneck tokens, and pooled bottleneck -> embedding offset.

    Initialisation: down projections kaiming-uniform(a=sqrt 5) with zero bias (as the repo's other
    adapters), the up projection keeps torch's default (random) init and the **gate** is zero. The
    gate, not the up projection, is the zero: then the gate gets a gradient at step 0 and every other
    parameter from step 1 on. (Zeroing more than one factor in a chain would leave the rest without
    gradient for longer: e.g. a zero ``fc2`` in the MLP as well would freeze ``fc1`` for two steps.)

    The gate is used as ``gate_scale * gate``: a per-parameter learning rate ``s * lr`` for a gate
    that still starts at exactly 0 (why: ``docs/cmer.md``).

    Args:
        width: D, the tower's residual width.
        n_taps: number of tapped blocks.
        bottleneck: r.
        embed_dim: E, the joint embedding width.
        mlp_ratio: hidden width of the residual MLP / r.
        dropout: dropout in the MLP.
        gate_scale: s, the gate's multiplier.
    """

    def __init__(self, width: int, n_taps: int, bottleneck: int, embed_dim: int, mlp_ratio: float,
                 dropout: float, gate_scale: float = 1.0) -> None:
        super().__init__()
        self.gate_scale = gate_scale
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(n_taps))
        self.downs = nn.ModuleList(nn.Linear(width, bottleneck) for _ in range(n_taps))
        self.block = ResidualMLP(bottleneck, max(1, round(mlp_ratio * bottleneck)), dropout)
        self.up = nn.Linear(bottleneck, embed_dim)
        self.gate = nn.Parameter(torch.zeros(embed_dim))  # e = e_frozen + gate * up(p): 0 keeps frozen CLIP
        with torch.no_grad():
            for lin in self.downs:
                nn.init.kaiming_uniform_(lin.weight, a=5**0.5)
                nn.init.zeros_(lin.bias)

    def tokens(self, taps: Sequence[torch.Tensor]) -> torch.Tensor:
        """Tapped block outputs, each [N, T, D] -> bottleneck tokens [N, T, r]: per tap LayerNorm + down
        projection, summed, then the residual MLP; computed as :meth:`tokens_from_normalised` of
        :meth:`normalise` (what a cache stores), so both paths train the same map."""
        return self.tokens_from_normalised(self.normalise(taps))

    def normalise(self, taps: Sequence[torch.Tensor]) -> torch.Tensor:
        """Taps, each [N, T, D] -> [N, T, n_taps * D]: each standardised as its LayerNorm does, before
        the norm's scale and shift (which train), side by side. What a feature cache stores: it does
        not change while the branch trains."""
        self._check(len(taps))
        with torch.no_grad():
            return torch.cat([F.layer_norm(x.float(), x.shape[-1:], eps=norm.eps)
                              for x, norm in zip(taps, self.norms)], dim=-1)

    def tokens_from_normalised(self, normalised: torch.Tensor) -> torch.Tensor:
        """:meth:`normalise`'s output [N, T, n_taps * D] -> bottleneck tokens [N, T, r]. The norms' scale
        and shift fold into one down projection over all taps (the same map as LayerNorm + down per tap,
        summed, up to float rounding), so backward keeps the normalised input only and computes the
        weights' gradient, never a tap's full-width one: no recomputation, and no more memory than the
        taps a checkpoint would keep."""
        weight = torch.cat([down.weight * norm.weight for down, norm in zip(self.downs, self.norms)], dim=1)
        bias = sum(down.weight @ norm.bias + down.bias for down, norm in zip(self.downs, self.norms))
        return self.block(F.linear(normalised.to(weight.dtype), weight, bias))

    def _check(self, n_taps: int) -> None:
        if n_taps != len(self.downs):
            raise ValueError(f"the branch reads {len(self.downs)} tapped blocks, got {n_taps}")

    def fuse(self, frozen: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """``e_frozen + s * gate * up(pooled)``: [N, E] + [E] * [N, E]."""
        return frozen.to(self.gate.dtype) + (self.gate_scale * self.gate) * self.up(pooled)


class FocusPool(nn.Module):
    """The focus layer: softmax weights over patch tokens that start uniform (= mean pooling).

    For bottleneck patch tokens ``h_i`` [P, r] of one image, with ``m`` their mean (dominated by
    the background when targets are small) and ``d_i = h_i - m``::

        z_i     = standardise_i(||d_i||)                 outlier score: zero mean, unit variance over patches
        logit_i = (beta * z_i + s . LayerNorm(d_i)) / tau
        w_i     = softmax_i(logit_i)                     [P], sums to 1

    ``beta`` (scalar) and ``s`` ([r]) start at 0, so every logit is 0 and ``w_i = 1/P``: the layer
    *is* mean pooling at step 0, and any focus it ends with was learned because it lowered the
    loss. (``outlier_init`` > 0 starts ``beta`` there instead, for the ablation "start focused on
    outliers"; the model still starts as frozen CLIP, because the branch's gate is 0.)

    ``beta`` decides how much "being unlike the background" counts (CMER's intuition: small
    targets are outliers against a dominant background); ``s`` learns which deviations matter (a
    car vs. a shadow). The LayerNorm has no affine parameters: ``s`` already scales it, and a
    parameter behind the zero ``s`` would get no gradient in the first steps. Weights below 1/P
    are the suppressed background. The class token is not scored; the branch adds it separately.

    After each forward, ``last_weights`` [N, P] and ``last_outlier`` [N, P] (``z``) hold the
    detached values for plotting (:meth:`FocusAdapterCLIP.focus_map`).
    """

    def __init__(self, bottleneck: int, temperature: float, outlier_init: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(bottleneck, elementwise_affine=False)
        self.score = nn.Parameter(torch.zeros(bottleneck))  # s
        self.outlier_weight = nn.Parameter(torch.full((), float(outlier_init)))  # beta
        self.temperature = temperature
        self.last_weights: torch.Tensor | None = None
        self.last_outlier: torch.Tensor | None = None

    def weights(self, patches: torch.Tensor) -> torch.Tensor:
        """Patch tokens [N, P, r] -> focus weights [N, P] (rows sum to 1)."""
        dev = patches - patches.mean(dim=1, keepdim=True)  # [N, P, r]
        dist = dev.norm(dim=-1)  # [N, P]
        z = (dist - dist.mean(dim=1, keepdim=True)) / (dist.std(dim=1, correction=0, keepdim=True) + 1e-6)
        logits = (self.outlier_weight * z + self.norm(dev) @ self.score) / self.temperature  # [N, P]
        w = logits.softmax(dim=-1)
        self.last_weights, self.last_outlier = w.detach(), z.detach()
        return w

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """Patch tokens [N, P, r] -> focus-weighted sum [N, r]."""
        return (self.weights(patches).unsqueeze(-1) * patches).sum(dim=1)


class FocusAdapter(AdapterModule):
    """Both branches and the focus layer; lives at ``model.focus_adapter``.

    Attributes:
        config: the :class:`FocusAdapterConfig`.
        layers: tapped block indices per tower, e.g. ``{"visual": (2, 5, 8, 11), "text": (...)}``.
        grid: the image tower's patch grid (rows, cols).
        image, text: the towers' :class:`SideBranch` (None for a tower without a branch).
        focus: the :class:`FocusPool` (None unless ``pooling="focus"``).
    """

    def __init__(self, config: FocusAdapterConfig, widths: dict[str, int], depths: dict[str, int],
                 embed_dim: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.config = config
        self.layers = {t: resolve_layers(config.layers, depths[t]) for t in config.towers}
        self.grid = grid
        # a bottleneck as wide as the stream would not be one: r = min(bottleneck, width // 2) (tiny hits it)
        self.bottleneck = {t: max(1, min(config.bottleneck, widths[t] // 2)) for t in config.towers}
        branches = {t: SideBranch(widths[t], len(self.layers[t]), self.bottleneck[t], embed_dim,
                                  config.mlp_ratio, config.dropout, config.gate_scale) for t in config.towers}
        self.image = branches.get("visual")
        self.text = branches.get("text")
        self.focus = (FocusPool(self.bottleneck["visual"], config.focus_temperature, config.outlier_init)
                      if config.pooling == "focus" and self.image is not None else None)
        self.last_weights: torch.Tensor | None = None  # image focus weights of the last forward, [N, P]

    def frozen_batch(self, x: torch.Tensor) -> int:
        """Micro-batch size of the frozen forward for input ``x`` (``FocusAdapterConfig.frozen_batch``)."""
        size = self.config.frozen_batch
        if size is None:
            size = 16 if x.device.type == "cpu" else 0
        return size if size > 0 else max(1, len(x))

    # each tower from its frozen embedding and taps: raw (a forward from pixels and tokens) or
    # normalised (SideBranch.normalise: what rsretrieval.cmer.cache stores)
    def image_from_features(self, frozen: torch.Tensor, taps: Sequence[torch.Tensor]) -> torch.Tensor:
        """Frozen image embedding [N, E] + tapped blocks (each [N, 1+P, D], class token first) -> [N, E]."""
        return frozen if self.image is None else self._pool_image(frozen, self.image.tokens(taps))

    def image_from_normalised(self, frozen: torch.Tensor, normalised: torch.Tensor) -> torch.Tensor:
        """Frozen image embedding [N, E] + normalised taps [N, 1+P, n_taps * D] -> [N, E]."""
        if self.image is None:
            return frozen
        return self._pool_image(frozen, self.image.tokens_from_normalised(normalised))

    def text_from_features(self, frozen: torch.Tensor, taps: Sequence[torch.Tensor],
                           eot: torch.Tensor) -> torch.Tensor:
        """Frozen text embedding [N, E] + tapped blocks (each [N, L, D]) + EOT positions [N] -> [N, E].

        ``L`` may be shorter than the context as long as it reaches every EOT: the branch is
        token-wise until pooling, and pooling reads positions up to the EOT only.
        """
        return frozen if self.text is None else self._pool_text(frozen, self.text.tokens(taps), eot)

    def text_from_normalised(self, frozen: torch.Tensor, normalised: torch.Tensor,
                             eot: torch.Tensor) -> torch.Tensor:
        """Frozen text embedding [N, E] + normalised taps [N, L, n_taps * D] + EOT positions [N] -> [N, E]."""
        if self.text is None:
            return frozen
        return self._pool_text(frozen, self.text.tokens_from_normalised(normalised), eot)

    def _pool_image(self, frozen: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        cls, patches = h[:, 0], h[:, 1:]  # h: [N, 1+P, r]
        if self.config.pooling == "cls":
            pooled, self.last_weights = cls, None
        elif self.focus is not None:
            pooled = cls + self.focus(patches)
            self.last_weights = self.focus.last_weights
        else:
            pooled = cls + patches.mean(dim=1)
            self.last_weights = torch.full(patches.shape[:2], 1 / patches.shape[1], device=h.device)
        return self.image.fuse(frozen, pooled)

    def _pool_text(self, frozen: torch.Tensor, h: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
        eot = eot.to(h.device)  # h: [N, L, r]
        if self.config.text_pooling == "eot":
            pooled = h[torch.arange(len(h), device=h.device), eot]
        else:
            pos = torch.arange(h.shape[1], device=h.device)
            # [N, L]: SOT out, EOT in
            mask = ((pos[None, :] >= 1) & (pos[None, :] <= eot[:, None])).to(h.dtype)
            pooled = (h * mask.unsqueeze(-1)).sum(dim=1) / mask.sum(dim=1, keepdim=True).clamp(min=1)
        return self.text.fuse(frozen, pooled)


# ----------------------------------------------------------------------------- the model

@contextlib.contextmanager
def tap_blocks(blocks: nn.ModuleList, indices: Sequence[int]) -> Iterator[list[torch.Tensor]]:
    """Collect the outputs of ``blocks[i]`` for ``i`` in ``indices`` while the context is open.

    Yields a list that is filled, in ``indices`` order, by forward hooks during the forward pass;
    the hooks are removed on exit, exceptions included.
    """
    taps: list[Any] = [None] * len(indices)
    handles = []
    for k, i in enumerate(indices):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor, k: int = k) -> None:
            taps[k] = output
        handles.append(blocks[i].register_forward_hook(hook))
    try:
        yield taps
    finally:
        for h in handles:
            h.remove()
    if any(t is None for t in taps):
        raise RuntimeError(f"blocks {list(indices)} were not all run: the side branch reads their outputs")


class FocusAdapterCLIP(CLIP):
    """open_clip's ``CLIP`` with a Focus-Adapter side branch (made by ``apply_method``, never built directly).

    ``apply_method(model, "focus_adapter")`` re-classes the model in place to this subclass, so
    everything that calls ``encode_image`` / ``encode_text`` / ``forward`` (``fit``, ``evaluate``,
    ``bench``, losses) gets the adapted embeddings without knowing the method. The frozen path is
    the parent class's own code, run under ``torch.no_grad``.
    """

    focus_adapter: FocusAdapter

    def remember_frozen(self, store: dict[str, Any]) -> contextlib.AbstractContextManager:
        """:func:`remember_frozen_features` of this model: what ``fit`` validates each epoch under."""
        return remember_frozen_features(self, store)

    def _frozen(self, encode: Any, blocks: nn.ModuleList, layers: Sequence[int], x: torch.Tensor,
                length: int | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run a frozen tower (``encode``) under no_grad in micro-batches, collecting tapped block outputs.

        Each sample is computed on its own in every layer, so micro-batches give the same numbers
        as one pass up to float rounding (~1e-6: matrix kernels block a smaller batch differently;
        CLIP's own outputs vary as much with the batch size) with smaller transient activations: on
        CPU, ViT-B-32 at batch 32 peaks ~60 MB lower in 16s, for ~1% of the time. The branch gets
        exactly what frozen CLIP computes for each micro-batch. ``length`` cuts tapped tokens
        after that position (and copies them, so the full-context tensors are freed).
        """
        size = self.focus_adapter.frozen_batch(x)
        memo = getattr(self, _MEMO_ATTR, None)
        embeds: list[torch.Tensor] = []
        parts: list[list[torch.Tensor]] = [[] for _ in layers]
        for chunk in x.split(size) if len(x) else [x]:
            key = (encode.__name__, tuple(layers), length, _tensor_digest(chunk)) if memo is not None else None
            if key is not None and key in memo:
                embed, kept = memo[key]
            else:
                with torch.no_grad(), tap_blocks(blocks, layers) as taps:
                    embed = encode(self, chunk)
                kept = [tap if length is None else tap[:, :length].contiguous() for tap in taps]
                if key is not None and memo.get(_MEMO_BYTES, 0) < _MEMO_LIMIT:
                    memo[key] = (embed, kept)
                    memo[_MEMO_BYTES] = memo.get(_MEMO_BYTES, 0) + sum(t.nbytes for t in (embed, *kept))
            embeds.append(embed)
            for part, tap in zip(parts, kept):
                part.append(tap)
        cat = (lambda ts: ts[0] if len(ts) == 1 else torch.cat(ts))  # noqa: E731
        return cat(embeds), [cat(p) for p in parts]

    def frozen_image_features(self, image: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Frozen CLIP's image embedding [N, E] (not normalised) and the tapped blocks' tokens.

        Taps are [N, 1+P, D] each (batch-first, class token first). No autograd graph is built.
        """
        layers = self.focus_adapter.layers.get("visual", ())
        return self._frozen(CLIP.encode_image, self.visual.transformer.resblocks, layers, image)

    def frozen_text_features(self, text: torch.Tensor
                             ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """Frozen text embedding [N, E], tapped tokens (each [N, L, D], up to the batch's last EOT), EOT [N].

        EOT positions follow open_clip's ``argmax`` pooling: the EOT token has the highest id.
        Tokens after the batch's last EOT are never pooled, so they are not kept.
        """
        layers = self.focus_adapter.layers.get("text", ())
        eot = text.argmax(dim=-1)
        length = int(eot.max()) + 1 if len(eot) else 0
        frozen, taps = self._frozen(CLIP.encode_text, self.transformer.resblocks, layers, text, length)
        return frozen, taps, eot

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        frozen, taps = self.frozen_image_features(image)
        x = self.focus_adapter.image_from_features(frozen, taps)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        frozen, taps, eot = self.frozen_text_features(text)
        x = self.focus_adapter.text_from_features(frozen, taps, eot)
        return F.normalize(x, dim=-1) if normalize else x

    def focus_map(self, images: torch.Tensor, kind: str = "weights") -> torch.Tensor:
        """Per-patch focus of a batch of images: [N, H_patches, W_patches], for drawing over the images.

        Args:
            images: preprocessed images [N, 3, H, W] on the model's device.
            kind: ``weights`` (the focus weights; each map sums to 1, uniform 1/P at step 0) or
                ``outlier`` (the standardised outlier score ``z`` the focus layer reads).

        Raises:
            ValueError: ``pooling="cls"`` (no patch weights), or ``outlier`` without a focus layer.
        """
        adapter = self.focus_adapter
        if adapter.image is None or adapter.config.pooling == "cls":
            raise ValueError("this Focus-Adapter pools no patch tokens (pooling='cls' or no image branch)")
        if kind not in ("weights", "outlier"):
            raise ValueError(f"kind={kind!r}: use 'weights' or 'outlier'")
        if kind == "outlier" and adapter.focus is None:
            raise ValueError("kind='outlier' needs pooling='focus'")
        with torch.no_grad():
            self.encode_image(images)
        flat = adapter.last_weights if kind == "weights" else adapter.focus.last_outlier
        return flat.reshape(len(images), *adapter.grid)

    # the protocol rsretrieval.cmer.cache relies on
    @property
    def tapped_layers(self) -> dict[str, tuple[int, ...]]:
        """Tapped block indices per tower (an empty tuple for a tower without a branch)."""
        return {t: self.focus_adapter.layers.get(t, ()) for t in ("visual", "text")}

    def cached_form(self, tower: str, taps: Sequence[torch.Tensor]) -> torch.Tensor:
        """What a cache stores of a tower's taps (``visual`` or ``text``): :meth:`SideBranch.normalise`."""
        branch = self.focus_adapter.image if tower == "visual" else self.focus_adapter.text
        return branch.normalise(taps)

    def branch_image(self, frozen: torch.Tensor, normalised: torch.Tensor) -> torch.Tensor:
        """Cached frozen features (:meth:`cached_form`) -> adapted image embedding (not normalised)."""
        return self.focus_adapter.image_from_normalised(frozen, normalised)

    def branch_text(self, frozen: torch.Tensor, normalised: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
        """Cached frozen features (:meth:`cached_form`) -> adapted text embedding (not normalised)."""
        return self.focus_adapter.text_from_normalised(frozen, normalised, eot)


def inject_focus_adapter(model: nn.Module, config: FocusAdapterConfig) -> None:
    """Attach a :class:`FocusAdapter` as ``model.focus_adapter``; re-class the model to FocusAdapterCLIP."""
    if type(model) is not CLIP:
        raise UnsupportedModelError(f"the Focus-Adapter re-classes open_clip's CLIP; got "
                                    f"{type(model).__name__}. Build the model with "
                                    "rsretrieval.models.create_model.")
    visual = model.visual
    if getattr(visual, "attn_pool", None) is not None or not hasattr(visual, "grid_size"):
        raise UnsupportedModelError("the Focus-Adapter needs a ViT image tower with a class token and no "
                                    "attention pool")
    widths = {t: tower_width(model, t) for t in config.towers}
    depths = {t: len(tower_resblocks(model, t)[1]) for t in config.towers}
    for t in config.towers:  # validate before editing anything
        resolve_layers(config.layers, depths[t], type(config).__name__)
    grid = tuple(int(g) for g in visual.grid_size)
    ref = model.transformer.resblocks[0].mlp.c_fc.weight
    model.focus_adapter = like(FocusAdapter(config, widths, depths, embed_dim(model), grid), ref)
    model.__class__ = FocusAdapterCLIP


register_method("focus_adapter", FocusAdapterConfig, inject_focus_adapter, starts_at_base=True)
register_method("cmer", CMERAdapterConfig, inject_focus_adapter, starts_at_base=True, default_loss="cmer")


_MEMO_ATTR = "_rsr_frozen_memo"
_MEMO_BYTES = "bytes"
_MEMO_LIMIT = 2**30  # beyond it, frozen forwards are computed as usual (a large split on a large backbone)


def _tensor_digest(x: torch.Tensor) -> tuple[Any, ...]:
    data = x.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    return str(x.dtype), tuple(x.shape), hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def remember_frozen_features(model: nn.Module, store: dict[str, Any]) -> Iterator[nn.Module]:
    """Within the block, a side-branch model's frozen forwards are kept in ``store`` and reused.

    Any model with the same frozen weights (``store`` is keyed by
    :func:`~rsretrieval.cmer.cache.frozen_weights_digest`) that meets the same input micro-batch
    gets the tensors computed the first time: the same numbers, bit for bit, without the backbone.
    Scoring many side-branch runs of one backbone on one split (a zoo) costs one backbone pass.
    A model without a side branch is left as it is. Use it for inference only: the stored tensors
    are returned as they are.
    """
    from rsretrieval.cmer.cache import frozen_weights_digest

    if not isinstance(model, FocusAdapterCLIP):
        yield model
        return
    setattr(model, _MEMO_ATTR, store.setdefault(frozen_weights_digest(model), {}))
    try:
        yield model
    finally:
        delattr(model, _MEMO_ATTR)


def get_focus_model(model: nn.Module) -> FocusAdapterCLIP:
    """``model`` itself, checked to carry a Focus-Adapter (``focus_adapter`` or ``cmer``)."""
    applied = get_applied_method(model)
    if not isinstance(model, FocusAdapterCLIP) or applied is None:
        name = applied.name if applied else "no method"
        raise ValueError(f"this model carries {name}; apply_method(model, 'focus_adapter') first")
    return model


# ----------------------------------------------------------------------------- does it focus on objects?

def focus_mass_on_objects(focus_maps: torch.Tensor | np.ndarray, masks: torch.Tensor | np.ndarray,
                          min_fraction: float = 0.0) -> dict[str, Any]:
    """Share of focus weight on patches that contain object pixels, vs. the share under uniform weights.

    Each pixel mask is reduced to the patch grid by area (the fraction of object pixels per patch;
    this assumes the images were resized to the model's square input without an off-centre crop, as
    SynthRS's square images are). A patch "contains an object" when that fraction is
    ``> min_fraction``.

    Args:
        focus_maps: [N, h, w] non-negative weights (e.g. :meth:`FocusAdapterCLIP.focus_map`).
        masks: [N, H, W] bool object masks (e.g. :func:`object_masks`), H and W >= h and w.
        min_fraction: the object-pixel fraction a patch needs to count.

    Returns:
        ``focus_share``: sum of weights on object patches / sum of all weights; ``uniform_share``:
        the same with uniform weights (= the share of object patches: what mean pooling gives);
        ``lift``: their ratio (> 1: the focus layer concentrates on objects); ``per_image_focus`` and
        ``per_image_uniform`` (lists); ``object_fraction``: [N, h, w] patch fractions.

    Example:
        >>> maps = torch.tensor([[[0.7, 0.1], [0.1, 0.1]]])
        >>> mask = torch.zeros(1, 4, 4, dtype=torch.bool); mask[0, 0, 0] = True
        >>> r = focus_mass_on_objects(maps, mask)
        >>> round(r["focus_share"], 3), r["uniform_share"]
        (0.7, 0.25)
    """
    w = torch.as_tensor(np.asarray(focus_maps) if not isinstance(focus_maps, torch.Tensor) else focus_maps)
    w = w.detach().float().cpu()
    m = torch.as_tensor(np.asarray(masks) if not isinstance(masks, torch.Tensor) else masks).float().cpu()
    if w.ndim != 3 or m.ndim != 3 or len(w) != len(m):
        raise ValueError(f"focus_maps [N, h, w] and masks [N, H, W] with the same N; got {tuple(w.shape)} "
                         f"and {tuple(m.shape)}")
    if (w < 0).any():
        raise ValueError("focus maps must be non-negative weights")
    # [N, h, w]: the share of object pixels in each patch
    fraction = F.adaptive_avg_pool2d(m.unsqueeze(1), w.shape[-2:]).squeeze(1)
    has_object = (fraction > min_fraction).float()
    mass = (w * has_object).flatten(1).sum(1)  # [N]
    total = w.flatten(1).sum(1)
    uniform = has_object.flatten(1).mean(1)
    return {
        "focus_share": float(mass.sum() / total.sum().clamp(min=1e-12)),
        "uniform_share": float(uniform.mean()),
        "lift": float((mass.sum() / total.sum().clamp(min=1e-12)) / uniform.mean().clamp(min=1e-12)),
        "per_image_focus": (mass / total.clamp(min=1e-12)).tolist(),
        "per_image_uniform": uniform.tolist(),
        "object_fraction": fraction,
    }
