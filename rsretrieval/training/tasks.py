"""Training tasks: model + loss, turning one :class:`Batch` into a dict of named losses.

The contract between :func:`~rsretrieval.training.fit` and a task, in one place:

- ``task.inputs`` (:class:`Inputs`) says whether the batch must carry pixels and tokens; a task
  that reads cached features needs neither;
- before tokenising, ``fit`` calls ``task.rewrite_captions(captions, image_ids)`` (identity by
  default; scene augmentation prefixes caption *strings* here);
- ``task(batch)`` returns ``{"<name>_loss": tensor, ...}``; ``fit`` sums every ``*_loss`` entry.

Which task a loss trains with is the loss registry's business (:data:`LOSSES`,
:func:`build_task`), so the loop never branches on a method or a loss.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from rsretrieval.data.dataset import CaptionDataset
from rsretrieval.models.utils import encode_pair, logit_scale
from rsretrieval.training.losses import HMMCLoss, InfoNCELoss, VSEHardNegativeLoss


@dataclass
class Batch:
    """One training batch: row ``k`` is one pair (a caption and its image) of the training split.

    Attributes:
        image_ids: [B] dataset index of each pair's image (what same-image masking compares).
        caption_ids: [B] dataset index of each pair's caption.
        captions: the captions, after :meth:`Task.rewrite_captions`.
        pixels: [B, 3, H, W] preprocessed images, when the task's inputs ask for them.
        tokens: [B, L] tokenised ``captions``, when the task's inputs ask for them.
    """

    image_ids: torch.Tensor
    caption_ids: torch.Tensor
    captions: list[str]
    pixels: torch.Tensor | None = None
    tokens: torch.Tensor | None = None


@dataclass(frozen=True)
class Inputs:
    """What a task reads from a batch besides the indices and caption strings."""

    pixels: bool = True  # decoded, preprocessed images
    tokens: bool = True  # tokenised captions


class Task(nn.Module):
    """Base of every training task: holds ``model`` and ``loss``; subclasses implement :meth:`forward`."""

    inputs: ClassVar[Inputs] = Inputs()

    def __init__(self, model: nn.Module, loss: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.loss = loss

    def rewrite_captions(self, captions: list[str], image_ids: torch.Tensor) -> list[str]:
        """The caption strings this batch trains on (called before tokenising); identity here."""
        return captions

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError


class ContrastiveTask(Task):
    """Encode both towers, normalise, and apply a contrastive loss ``loss(img, txt, scale, image_ids)``."""

    def __init__(self, model: nn.Module, loss: nn.Module | None = None) -> None:
        super().__init__(model, loss if loss is not None else InfoNCELoss())

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        img, txt = encode_pair(self.model, batch.pixels, batch.tokens)
        return self.loss(img, txt, logit_scale(self.model), batch.image_ids)


class _Unprojected(nn.Module):
    """Stands in for a tower's output projection: ``x @ self`` is ``x``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def __rmatmul__(self, x: torch.Tensor) -> torch.Tensor:
        return x


@contextlib.contextmanager
def _without_projections(model: nn.Module) -> Iterator[None]:
    """While open, ``encode_image`` / ``encode_text`` return the pooled features before each tower's
    projection (a Parameter, a Linear, or a module that wraps it, as CLIP-Adapter's). The projections
    are put back in the same registry slots, so parameter order and state-dict keys do not change."""
    swapped = []
    for owner, name in ((model.visual, "proj"), (model, "text_projection")):
        table = owner._parameters if name in owner._parameters else owner._modules
        original = table[name]
        if isinstance(original, nn.Parameter):
            table[name] = nn.Parameter(torch.eye(original.shape[0], dtype=original.dtype, device=original.device),
                                       requires_grad=False)
        else:
            table[name] = _Unprojected()
        swapped.append((table, name, original))
    try:
        yield
    finally:
        for table, name, original in swapped:
            table[name] = original


class PooledFeatureTask(Task):
    """Trains what acts on each tower's pooled output (the linear probe's projections, CLIP-Adapter)
    from those features, computed once with the frozen towers instead of at every step.

    The towers are run in eval mode, once per image and caption of ``data``; each batch then applies
    the projections (as trained so far) to its rows and a contrastive loss, as
    :class:`ContrastiveTask` does on the same batch with towers that have no dropout.
    """

    inputs = Inputs(pixels=False, tokens=False)

    def __init__(self, model: nn.Module, data: CaptionDataset, transform: Callable, tokenizer: Callable,
                 loss: nn.Module | None = None, *, device: torch.device | str = "cpu", batch_size: int = 128) -> None:
        from rsretrieval.models.utils import eval_mode
        from rsretrieval.training.loop import preload_images

        super().__init__(model, loss if loss is not None else InfoNCELoss())
        model.to(device)
        pixels = preload_images(data, transform, progress=False)
        captions = list(data.captions)
        with torch.no_grad(), eval_mode(model), _without_projections(model):
            self.images = torch.cat([model.encode_image(pixels[i:i + batch_size].to(device))
                                     for i in range(0, len(pixels), batch_size)])
            self.texts = torch.cat([model.encode_text(tokenizer(captions[i:i + batch_size]).to(device))
                                    for i in range(0, len(captions), batch_size)])

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        dev = self.model.logit_scale.device
        img = self.images.to(dev)[batch.image_ids] @ self.model.visual.proj
        proj = self.model.text_projection
        txt = self.texts.to(dev)[batch.caption_ids]
        txt = proj(txt) if isinstance(proj, nn.Linear) else txt @ proj
        return self.loss(F.normalize(img, dim=-1), F.normalize(txt, dim=-1), logit_scale(self.model),
                         batch.image_ids)


@contextlib.contextmanager
def token_dropout(model: nn.Module, p: float) -> Iterator[None]:
    """Dropout on the token embeddings of both towers while the context is open.

    Forward pre-hooks on ``model.visual.transformer`` (its input is the patch tokens after
    ``ln_pre``) and ``model.transformer`` (token + positional embeddings). Dropout follows the
    towers' ``training`` flag, so in eval mode the hooks change nothing. The hooks are removed on
    exit, exceptions included.
    """

    def hook(module: nn.Module, args: tuple) -> tuple:
        return (F.dropout(args[0], p=p, training=module.training), *args[1:])

    handles = [model.visual.transformer.register_forward_pre_hook(hook),
               model.transformer.register_forward_pre_hook(hook)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class HMMCTask(Task):
    """PE-RSITR's training task: two passes through the same weights, then :class:`HMMCLoss`.

    The first pass is the plain model; the second adds dropout (0.2) on the token embeddings of
    both towers (:func:`token_dropout`). Both passes receive gradients, as in PE-RSITR's code.
    """

    def __init__(self, model: nn.Module, loss: HMMCLoss | None = None, token_dropout: float = 0.2) -> None:
        if not 0 <= token_dropout < 1:
            raise ValueError(f"token_dropout={token_dropout}: use a probability in [0, 1)")
        super().__init__(model, loss if loss is not None else HMMCLoss())
        self.token_dropout = token_dropout

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        v, t = encode_pair(self.model, batch.pixels, batch.tokens)
        with token_dropout(self.model, self.token_dropout):
            v2, t2 = encode_pair(self.model, batch.pixels, batch.tokens)
        return self.loss(v, t, v2, t2, batch.image_ids)


# ----------------------------------------------------------------------------- the loss registry

TaskBuilder = Callable[..., Task]  # (model, train_data, **kwargs) -> Task


@dataclass(frozen=True)
class LossEntry:
    """A training loss by name: how to build its task, and one line for ``--help`` and listings."""

    build: TaskBuilder
    help: str


def _contrastive(loss_cls: type[nn.Module]) -> TaskBuilder:
    def build(model: nn.Module, train_data: CaptionDataset | None = None, **kwargs: Any) -> Task:
        return ContrastiveTask(model, loss_cls(**kwargs))

    return build


def _hmmc(model: nn.Module, train_data: CaptionDataset | None = None, token_dropout: float = 0.2,
          **kwargs: Any) -> Task:
    return HMMCTask(model, HMMCLoss(**kwargs), token_dropout)


LOSSES: dict[str, LossEntry] = {
    "infonce": LossEntry(_contrastive(InfoNCELoss), "symmetric InfoNCE (CLIP) with same-image masking"),
    "vsepp": LossEntry(_contrastive(VSEHardNegativeLoss),
                       "VSE++ hardest-negative hinge, margin 0.2, same-image masking"),
    "hmmc": LossEntry(_hmmc, "PE-RSITR's HMMC: cross-modal + intra-image + intra-text hinges over two "
                             "dropout views"),
}


def register_loss(name: str, build: TaskBuilder, help: str) -> None:
    """Add a training loss (``rsretrieval.cmer`` adds ``recycling`` and ``cmer``); names are unique."""
    if name in LOSSES:
        raise ValueError(f"loss {name!r} is already registered")
    LOSSES[name] = LossEntry(build, help)


def _registry() -> dict[str, LossEntry]:
    from rsretrieval.plugins import load_plugins

    load_plugins()  # the packages above (CMER: recycling, cmer) register their losses
    return LOSSES


def list_losses() -> list[str]:
    """Names :func:`build_task` accepts."""
    return list(_registry())


def build_task(name: str, model: nn.Module, train_data: CaptionDataset | None = None, **kwargs: Any) -> Task:
    """The task that trains ``model`` with loss ``name``: ``fit(..., task=build_task("hmmc", model))``.

    Args:
        name: one of :func:`list_losses`.
        model: the model (a method already applied).
        train_data: the training split; losses that read metadata (``cmer``: scenes) need it.
        **kwargs: passed to the loss and its task (``margin=``; ``hmmc``: ``token_dropout=``;
            ``recycling``: ``queue_size=``, ``weight=``, ``max_age=``; ``cmer``: see
            :class:`rsretrieval.cmer.CMERConfig`).

    Raises:
        ValueError: unknown name (the message lists valid ones) or unknown keyword.
    """
    losses = _registry()
    if name not in losses:
        raise ValueError(f"unknown loss {name!r}. Available: {', '.join(losses)}")
    try:
        return losses[name].build(model, train_data, **kwargs)
    except TypeError as exc:
        raise ValueError(f"loss {name!r}: {exc}") from exc
