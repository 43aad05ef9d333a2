"""Tasks beyond :class:`~rsretrieval.train.ContrastiveTask`, and the loss registry behind ``--loss``.

A task is model + loss: ``task(images, tokens, image_ids) -> {"..._loss": tensor, ...}``;
:func:`rsretrieval.train.fit` sums the ``*_loss`` entries. :func:`get_loss` turns a loss name into
a *task factory* (``factory(model) -> task``), so ``fit(..., task=get_loss("hmmc")(model))`` trains
any method with any loss without the loop knowing either.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from rsretrieval.losses import HMMCLoss, InfoNCELoss, VSEHardNegativeLoss
from rsretrieval.recycling import RecyclingLoss
from rsretrieval.train import ContrastiveTask

TaskFactory = Callable[[nn.Module], nn.Module]


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


class HMMCTask(nn.Module):
    """PE-RSITR's training task: two passes through the same weights, then :class:`HMMCLoss`.

    The first pass is the plain model; the second adds dropout (0.2) on the token embeddings of
    both towers (:func:`token_dropout`). Both passes receive gradients, as in PE-RSITR's code.
    """

    def __init__(self, model: nn.Module, loss: HMMCLoss | None = None, token_dropout: float = 0.2) -> None:
        super().__init__()
        if not 0 <= token_dropout < 1:
            raise ValueError(f"token_dropout={token_dropout}: use a probability in [0, 1)")
        self.model = model
        self.loss = loss or HMMCLoss()
        self.token_dropout = token_dropout

    def encode(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.encode_image(images, normalize=True), self.model.encode_text(tokens, normalize=True)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor, image_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        v, t = self.encode(images, tokens)
        with token_dropout(self.model, self.token_dropout):
            v2, t2 = self.encode(images, tokens)
        return self.loss(v, t, v2, t2, image_ids)


def _infonce(**kwargs) -> TaskFactory:
    loss = InfoNCELoss(**kwargs)
    return lambda model: ContrastiveTask(model, loss)


def _vsepp(**kwargs) -> TaskFactory:
    loss = VSEHardNegativeLoss(**kwargs)
    return lambda model: ContrastiveTask(model, loss)


def _hmmc(token_dropout: float = 0.2, **kwargs) -> TaskFactory:
    loss = HMMCLoss(**kwargs)
    return lambda model: HMMCTask(model, loss, token_dropout)


def _embed_dim(model: nn.Module) -> int | None:
    """The joint embedding width, when the model says it (open_clip towers do: ``visual.output_dim``).

    Known up front, the queues are allocated at once rather than at the first batch, so DDP's
    buffer broadcast sees the real buffers.
    """
    dim = getattr(getattr(model, "visual", None), "output_dim", None)
    return int(dim) if isinstance(dim, int) else None


def _recycling(queue_size: int = 512, weight: float = 1.0, dim: int | None = None, max_age: int | None = None,
               **kwargs) -> TaskFactory:
    InfoNCELoss(**kwargs)  # fail on a bad keyword now, not at the first call of the factory

    # A queue is state: every task gets its own, so two runs built from one factory never share negatives.
    def factory(model: nn.Module) -> nn.Module:
        loss = RecyclingLoss(InfoNCELoss(**kwargs), queue_size=queue_size, dim=dim or _embed_dim(model),
                             weight=weight, max_age=max_age)
        return ContrastiveTask(model, loss)

    return factory


def _default_tokenizer(model: nn.Module) -> Callable[[list[str]], torch.Tensor]:
    """open_clip's BPE tokenizer at the model's context length (what every model of this course uses)."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=int(getattr(model, "context_length", 77)))


def _cmer(
    scenes=None,
    queue_size: int = 512,
    queue_weight: float = 1.0,
    max_age: int | None = None,
    scene_prob: float = 0.5,
    style: str = "varied",
    vocabulary: str | None = None,
    scene_loss_weight: float = 0.0,
    tokenizer: Callable[[list[str]], torch.Tensor] | None = None,
    **kwargs,
) -> TaskFactory:
    """CMER's training-time parts as we reconstruct them: scene-prefixed captions + recycled negatives.

    ``scenes`` is the scene label of every *training* image by image index (``train.scenes``), or the
    training :class:`~rsretrieval.data.dataset.CaptionDataset` itself (then ``vocabulary`` defaults to
    its name, so SynthRS gets its own scene words). The trainer passes image indices only, so the task
    cannot find scenes without being told.
    """
    from rsretrieval.data.dataset import CaptionDataset
    from rsretrieval.scene import SceneAugmentedTask

    if scenes is None:
        raise ValueError("cmer needs the scene of every training image: "
                         "get_loss('cmer', scenes=train.scenes) or get_loss('cmer', scenes=train)")
    if isinstance(scenes, CaptionDataset):
        vocabulary = vocabulary if vocabulary is not None else scenes.name
        scenes = scenes.scenes
    scenes = list(scenes)
    InfoNCELoss(**kwargs)

    def factory(model: nn.Module) -> nn.Module:
        loss = RecyclingLoss(InfoNCELoss(**kwargs), queue_size=queue_size, dim=_embed_dim(model),
                             weight=queue_weight, max_age=max_age)
        return SceneAugmentedTask(model, loss, scenes=scenes,
                                  tokenizer=tokenizer or _default_tokenizer(model), prob=scene_prob,
                                  style=style, vocabulary=vocabulary, scene_loss_weight=scene_loss_weight)

    return factory


# name -> (builder(**kwargs) -> task factory, one-line description)
LOSSES: dict[str, tuple[Callable[..., TaskFactory], str]] = {
    "infonce": (_infonce, "symmetric InfoNCE (CLIP) with same-image masking"),
    "vsepp": (_vsepp, "VSE++ hardest-negative hinge, margin 0.2, same-image masking"),
    "hmmc": (_hmmc, "PE-RSITR's HMMC: cross-modal + intra-image + intra-text hinges over two dropout views"),
    "recycling": (_recycling, "InfoNCE + queues of past batches as negatives (our CMER reconstruction)"),
    "cmer": (_cmer, "scene-prefixed captions + recycled negatives (our CMER reconstruction; needs scenes=)"),
}


def list_losses() -> list[str]:
    """Names :func:`get_loss` accepts."""
    return list(LOSSES)


def get_loss(name: str, **kwargs) -> TaskFactory:
    """A task factory for a loss: ``get_loss("hmmc")(model)`` is a task ready for ``fit(task=...)``.

    Args:
        name: one of :func:`list_losses`.
        **kwargs: passed to the loss (``margin=...``; for ``hmmc`` also ``token_dropout=...``; for
            ``recycling`` ``queue_size=``, ``weight=``, ``max_age=``; for ``cmer`` ``scenes=``
            (required: the training split or its ``scenes``), ``queue_size=``, ``queue_weight=``,
            ``max_age=``, ``scene_prob=``, ``style=``, ``vocabulary=``, ``scene_loss_weight=``,
            ``tokenizer=``).

    Raises:
        ValueError: unknown name (the message lists valid ones) or unknown keyword.
    """
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}. Available: {', '.join(LOSSES)}")
    try:
        return LOSSES[name][0](**kwargs)
    except TypeError as exc:
        raise ValueError(f"loss {name!r}: {exc}") from exc


def build_task(name: str, model: nn.Module, train_data=None, **kwargs) -> nn.Module:
    """The task of loss ``name`` for ``model``, given the training split when the loss needs data.

    Losses whose builder takes ``scenes`` (``cmer``) receive ``train_data`` unless ``scenes`` is
    given; the others ignore it. Callers that train on a dataset use this instead of
    ``get_loss(name)(model)`` so they need not know which losses read metadata.
    """
    import inspect

    if name in LOSSES and "scenes" in inspect.signature(LOSSES[name][0]).parameters and "scenes" not in kwargs:
        if train_data is None:
            raise ValueError(f"loss {name!r} needs the training split (its scenes): pass train_data")
        kwargs["scenes"] = train_data
    return get_loss(name, **kwargs)(model)
