"""CMER as one recipe: the side branch, scene-label augmentation and recycled negatives, from one config.

:func:`build_cmer` turns a :class:`CMERConfig` into the model and the training task;
the loss registry's ``cmer`` entry (``train --method cmer``) builds the same task, and
``recycling`` adds the queues alone (the ablation's "+ recycling" row). :func:`scene_protocols`
is the test-time protocol the course reports: λ chosen on validation, test scored once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from rsretrieval.cmer.focus_adapter import CMERAdapterConfig
from rsretrieval.cmer.recycling import RecyclingLoss
from rsretrieval.cmer.scene import (
    SceneAugmentedTask,
    SceneEvalResult,
    choose_weight_on_val,
    evaluate_with_scenes,
    vocabulary_of,
)
from rsretrieval.data.dataset import CaptionDataset
from rsretrieval.models.utils import embed_dim
from rsretrieval.training.losses import InfoNCELoss
from rsretrieval.training.tasks import ContrastiveTask, Task, register_loss


@dataclass
class CMERConfig:
    """Everything of CMER as we reconstruct it (each part's argument: ``docs/cmer.md``).

    ``adapter`` is the side branch (:class:`~rsretrieval.cmer.focus_adapter.CMERAdapterConfig`);
    the other fields are the training-time parts.
    """

    adapter: CMERAdapterConfig = field(default_factory=CMERAdapterConfig, metadata={
        "help": "the Focus-Adapter side branch"})
    scene_prob: float = field(default=0.5, metadata={
        "help": "chance that a training caption gets its image's scene as a prefix (0: no scene captions)"})
    style: str = field(default="varied", metadata={
        "help": "scene prefixes: varied (random template and synonym) or fixed"})
    vocabulary: str | None = field(default=None, metadata={
        "help": "scene words: rs or synthrs (None: the training split's registry entry says)"})
    scene_loss_weight: float = field(default=0.0, metadata={
        "help": "weight of the auxiliary scene-classification loss (0: off)"})
    queue_size: int = field(default=512, metadata={"help": "entries per negative queue"})
    queue_weight: float = field(default=1.0, metadata={
        "help": "w in L_batch + w * L_queue (0: no recycled negatives)"})
    max_age: int | None = field(default=None, metadata={
        "help": "leave out queue entries written more than this many steps ago (None: keep all)"})
    queue_warmup: int = field(default=0, metadata={
        "help": "training steps before the queue loss counts (the queue fills meanwhile)"})
    mask_same_image: bool = field(default=True, metadata={
        "help": "never count another caption of the same image as a negative"})

    def __post_init__(self) -> None:
        if isinstance(self.adapter, dict):
            self.adapter = CMERAdapterConfig(**self.adapter)


def _default_tokenizer(model: nn.Module) -> Callable[[list[str]], torch.Tensor]:
    """open_clip's BPE tokenizer at the model's context length (what every model of this course uses)."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=int(getattr(model, "context_length", 77)))


def recycling_loss(model: nn.Module, *, queue_size: int = 512, weight: float = 1.0, max_age: int | None = None,
                   warmup_steps: int = 0, dim: int | None = None, **infonce: Any) -> RecyclingLoss:
    """InfoNCE + two queues sized for ``model``: known up front, the queues are allocated at once, so
    DDP's buffer broadcast sees the real buffers (``dim`` is learnt from the first batch otherwise)."""
    if dim is None:
        try:
            dim = embed_dim(model)
        except TypeError:
            dim = None
    return RecyclingLoss(InfoNCELoss(**infonce), queue_size=queue_size, dim=dim, weight=weight, max_age=max_age,
                         warmup_steps=warmup_steps)


def cmer_task(model: nn.Module, train_data: CaptionDataset, config: CMERConfig | None = None, *,
              tokenizer: Callable[[list[str]], torch.Tensor] | None = None) -> Task:
    """CMER's training task for a model that already carries its side branch.

    The scenes of ``train_data`` (by image index) feed the caption prefixes and the queue's scene ids.
    """
    cfg = config or CMERConfig()
    if train_data is None:
        raise ValueError("cmer needs the training split (the scene of every training image): "
                         "build_task('cmer', model, train)")
    loss = recycling_loss(model, queue_size=cfg.queue_size, weight=cfg.queue_weight, max_age=cfg.max_age,
                          warmup_steps=cfg.queue_warmup, mask_same_image=cfg.mask_same_image)
    vocabulary = cfg.vocabulary if cfg.vocabulary is not None else vocabulary_of(train_data)
    return SceneAugmentedTask(model, loss, scenes=list(train_data.scenes),
                              tokenizer=tokenizer or _default_tokenizer(model), prob=cfg.scene_prob,
                              style=cfg.style, vocabulary=vocabulary, scene_loss_weight=cfg.scene_loss_weight)


def build_cmer(model: nn.Module, train_data: CaptionDataset, config: CMERConfig | None = None, *,
               tokenizer: Callable[[list[str]], torch.Tensor] | None = None) -> tuple[nn.Module, Task]:
    """Apply CMER's side branch to ``model`` (in place) and build its training task.

    Example:
        >>> model, task = build_cmer(create_model("mini", "synthrs").model, train)   # doctest: +SKIP
        >>> fit(model, tokenizer, train, transform, TrainConfig(), val_data=val, task=task)  # doctest: +SKIP
    """
    from rsretrieval.methods import apply_method

    cfg = config or CMERConfig()
    model = apply_method(model, cfg.adapter)
    return model, cmer_task(model, train_data, cfg, tokenizer=tokenizer)


def _cmer_loss(model: nn.Module, train_data: CaptionDataset | None = None, *,
               tokenizer: Callable[[list[str]], torch.Tensor] | None = None, **fields: Any) -> Task:
    training_fields = [f.name for f in dataclasses.fields(CMERConfig) if f.name != "adapter"]
    unknown = sorted(set(fields) - set(training_fields))
    if unknown:
        raise TypeError(f"unknown keyword(s) {unknown}; CMERConfig's training fields are {training_fields}")
    return cmer_task(model, train_data, CMERConfig(**fields), tokenizer=tokenizer)


def _recycling_loss(model: nn.Module, train_data: CaptionDataset | None = None, *, queue_size: int = 512,
                    weight: float = 1.0, dim: int | None = None, max_age: int | None = None,
                    warmup_steps: int = 0, **kwargs: Any) -> Task:
    return ContrastiveTask(model, recycling_loss(model, queue_size=queue_size, weight=weight, max_age=max_age,
                                                 warmup_steps=warmup_steps, dim=dim, **kwargs))


register_loss("recycling", _recycling_loss,
              "InfoNCE + queues of past batches as negatives (our CMER reconstruction)")
register_loss("cmer", _cmer_loss,
              "scene-prefixed captions + recycled negatives (our CMER reconstruction; the cmer method's default)")


def scene_protocols(model: nn.Module, tokenizer: Callable, transform: Callable, val: CaptionDataset,
                    test: CaptionDataset, scene_names: Sequence[str], *, device: torch.device | str | None = None,
                    modes: Sequence[str] = ("none", "soft", "hard")) -> SceneEvalResult:
    """Test-time scene re-ranking as the course reports it: the soft weight chosen on ``val``, then
    ``test`` scored once with every mode (and the gold-label oracle row, labelled as such).

    ``scene_names`` is the category list a deployed system knows: the *training* split's.
    """
    from rsretrieval.evaluation import encode_images, encode_texts

    def features(data: CaptionDataset) -> tuple[torch.Tensor, torch.Tensor]:
        return (encode_images(model, data, transform=transform, device=device, progress=False),
                encode_texts(model, data.captions, tokenizer=tokenizer, device=device, progress=False))

    weight, _ = choose_weight_on_val(*features(val), val, scene_names, model, tokenizer)
    return evaluate_with_scenes(*features(test), test, scene_names, model, tokenizer, modes=modes, weight=weight)


