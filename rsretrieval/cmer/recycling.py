"""Negative sample recycling: queues of past batches' embeddings as extra negatives.

Our reconstruction of CMER's two-queue recycling, ``L = L_batch + w * L_queue`` with no momentum
encoder (why stale entries are tolerable, and how much they drift: ``docs/cmer.md``).
:class:`EmbeddingQueue` is a FIFO ring buffer of detached embeddings and their image ids, held in
buffers; as a :class:`~rsretrieval.training.TrainingState` it is checkpointed with every run, so a
resumed run continues with the same queues. Under DDP, rank 0's queues are broadcast with the
buffers (give ``dim`` up front so they exist when DDP wraps the task).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rsretrieval.training.checkpoint import TrainingState
from rsretrieval.training.losses import InfoNCELoss

__all__ = ["EmbeddingQueue", "RecyclingLoss", "effective_negatives", "embedding_drift", "queue_memory_bytes",
           "steps_held"]


class EmbeddingQueue(TrainingState):
    """A FIFO ring buffer of detached embeddings, their image ids and (optionally) scene ids.

    The newest batch overwrites the oldest entries once the buffer is full. Everything lives in
    registered buffers, so the queue follows ``.to(device)`` and is part of ``state_dict()``.

    Args:
        size: capacity (entries); independent of the batch size.
        dim: embedding width, or None to take it from the first :meth:`enqueue` (the buffer is
            then allocated lazily; :meth:`load_state_dict` also works on a lazy queue).

    Example:
        >>> q = EmbeddingQueue(3, 2)
        >>> q.enqueue(torch.eye(2), torch.tensor([4, 5]))
        >>> q.valid, q.image_ids.tolist()
        (2, [4, 5])
    """

    def __init__(self, size: int, dim: int | None = None) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"queue size must be >= 1, got {size}")
        self.size = size
        self.register_buffer("feats", torch.zeros(size, dim or 0))  # [size, dim], slot order
        self.register_buffer("ids", torch.full((size,), -1, dtype=torch.long))  # image id per slot (-1: none)
        self.register_buffer("scenes", torch.full((size,), -1, dtype=torch.long))  # scene id per slot
        self.register_buffer("enqueued_at", torch.zeros(size, dtype=torch.long))  # enqueue call per slot
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))  # next slot to write
        self.register_buffer("count", torch.zeros((), dtype=torch.long))  # filled slots
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))  # enqueue calls so far

    # ------------------------------------------------------------------ reading (oldest first)

    @property
    def valid(self) -> int:
        """How many entries hold an embedding (0 at start, ``size`` once full)."""
        return int(self.count)

    def _order(self) -> torch.Tensor:
        """Slot indices of the valid entries, oldest first."""
        n = self.valid
        if n < self.size:
            return torch.arange(n, device=self.feats.device)
        return (int(self.ptr) + torch.arange(self.size, device=self.feats.device)) % self.size

    @property
    def features(self) -> torch.Tensor:
        """[valid, dim] the stored embeddings, oldest first."""
        return self.feats[self._order()]

    @property
    def image_ids(self) -> torch.Tensor:
        """[valid] image id of each stored embedding, oldest first."""
        return self.ids[self._order()]

    @property
    def scene_ids(self) -> torch.Tensor:
        """[valid] scene id of each stored embedding (-1 where none was given), oldest first."""
        return self.scenes[self._order()]

    def ages(self) -> torch.Tensor:
        """[valid] how many enqueue calls (training steps) ago each entry was written, oldest first.

        The newest batch has age 0; a full queue at batch size B holds ages up to ``size / B - 1``.
        """
        return int(self.calls) - 1 - self.enqueued_at[self._order()]

    # ------------------------------------------------------------------ writing

    @torch.no_grad()
    def enqueue(
        self,
        features: torch.Tensor,
        image_ids: torch.Tensor,
        scene_ids: torch.Tensor | None = None,
    ) -> None:
        """Append a batch (detached, stored in float32); the oldest entries make room.

        Args:
            features: [B, dim] embeddings. A batch larger than the queue keeps its last ``size`` rows.
            image_ids: [B] dataset index of each row's image (what masks same-image entries).
            scene_ids: optional [B] scene ids.
        """
        features = features.detach()
        if features.ndim != 2 or len(features) != len(image_ids.view(-1)):
            raise ValueError(f"enqueue needs features [B, dim] and image_ids [B], got "
                             f"{tuple(features.shape)} and {tuple(image_ids.shape)}")
        if self.feats.shape[1] == 0:  # lazy allocation on first use
            self.feats = torch.zeros(self.size, features.shape[1], device=self.feats.device)
        if features.shape[1] != self.feats.shape[1]:
            raise ValueError(f"queue holds dim {self.feats.shape[1]}, "
                             f"got features of dim {features.shape[1]}")
        ids = image_ids.detach().view(-1).to(self.ids.device, torch.long)
        scenes = (scene_ids.detach().view(-1).to(self.ids.device, torch.long) if scene_ids is not None
                  else torch.full_like(ids, -1))
        features = features.to(self.feats.device, self.feats.dtype)
        if len(features) > self.size:  # only the newest `size` rows can survive anyway
            features, ids, scenes = features[-self.size:], ids[-self.size:], scenes[-self.size:]
        slots = (int(self.ptr) + torch.arange(len(features), device=self.feats.device)) % self.size
        self.feats[slots] = features
        self.ids[slots] = ids
        self.scenes[slots] = scenes
        self.enqueued_at[slots] = int(self.calls)
        self.ptr.fill_((int(self.ptr) + len(features)) % self.size)
        self.count.fill_(min(self.valid + len(features), self.size))
        self.calls += 1

    @torch.no_grad()
    def reset(self) -> None:
        """Empty the queue (keeps its size and dim)."""
        self.ids.fill_(-1)
        self.scenes.fill_(-1)
        self.enqueued_at.zero_()
        self.ptr.zero_()
        self.count.zero_()
        self.calls.zero_()
        self.feats.zero_()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001
        # A lazy queue (dim unknown yet) takes the dim of the saved one before the usual strict load.
        saved = state_dict.get(prefix + "feats")
        if saved is not None and self.feats.shape[1] == 0 and saved.shape[0] == self.size:
            self.feats = torch.zeros_like(saved, device=self.feats.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.feats.shape[1] or None}, valid={self.valid}"


def _queue_infonce(
    anchors: torch.Tensor,
    positives: torch.Tensor,
    queue: torch.Tensor,
    anchor_ids: torch.Tensor | None,
    queue_ids: torch.Tensor,
    scale: torch.Tensor,
    mask_same_image: bool,
) -> torch.Tensor:
    """Mean over anchors of ``-log softmax([s<a_i, p_i>, s<a_i, q_k> ...])[0]``.

    Queue entries of the anchor's own image are removed from the softmax (never negatives).
    """
    pos = scale * (anchors * positives).sum(dim=-1, keepdim=True)  # [B, 1]
    neg = scale * anchors @ queue.to(anchors.dtype).t()  # [B, K]
    if mask_same_image and anchor_ids is not None:
        neg = neg.masked_fill(anchor_ids.view(-1, 1) == queue_ids.view(1, -1), float("-inf"))
    logits = torch.cat([pos, neg], dim=1)  # [B, 1 + K], the positive in column 0
    return (torch.logsumexp(logits, dim=1) - pos.squeeze(1)).mean()


class RecyclingLoss(nn.Module):
    """``L = L_batch + weight * L_queue`` with an image queue and a text queue (our CMER reconstruction).

    With ``s`` the logit scale, image ``v_i``, its caption ``t_i`` in the batch, text queue
    ``T`` and image queue ``V`` (past batches, detached)::

        L_i2t   = mean_i -log( e^{s<v_i,t_i>} / (e^{s<v_i,t_i>} + sum_{k: id(T_k) != id_i} e^{s<v_i,T_k>}) )
        L_t2i   = mean_i -log( e^{s<t_i,v_i>} / (e^{s<t_i,v_i>} + sum_{k: id(V_k) != id_i} e^{s<t_i,V_k>}) )
        L_queue = (L_i2t + L_t2i) / 2

    Choices (ours; the abstract leaves them open):

    - A *separate* term rather than one softmax over batch + queue: ``L_batch`` stays exactly the
      baseline loss, an empty queue gives ``L_queue = 0`` (so the first step equals the baseline)
      and ``weight`` dials how much the stale negatives count. Summed, the two terms contrast each
      positive against ``batch_size - 1 + queue_size`` negatives (:func:`effective_negatives`).
    - The temperature is the model's own logit scale, shared with ``L_batch``: the queue adds
      negatives, not a new hyper-parameter.
    - Queue entries of the *same image* (another caption of it, or the same pair from an earlier
      step) are masked, never negatives, as :func:`~rsretrieval.training.losses.same_image_mask` does in
      the batch. Ids are dataset image indices, so they are comparable across batches.
    - No momentum encoder: entries come from the trained model itself and are detached (no
      gradient into the past); see the module docstring for why drift is tolerable here.
    - Only in training mode is the batch enqueued, so computing a loss in eval mode changes nothing.

    Args:
        base_loss: the batch loss; any module with the :class:`~rsretrieval.training.losses.InfoNCELoss`
            call signature returning a dict of ``*_loss`` entries. Default InfoNCE.
        queue_size: entries per queue (same for both); independent of the batch size.
        dim: embedding width, or None to learn it from the first batch.
        weight: multiplies ``L_queue``.
        mask_same_image: mask same-image queue entries (keep True; False only for ablations).
        max_age: if set, entries written more than ``max_age`` steps ago are left out (bounds the
            staleness independently of the pool size; :meth:`EmbeddingQueue.ages`).
        warmup_steps: ``L_queue`` counts only from this training step on: the first steps fill the
            queue with embeddings of a model that is still changing fast.

    Returns (forward):
        The base loss's dict (``contrastive_loss`` for InfoNCE) plus ``queue_loss``.
    """

    def __init__(
        self,
        base_loss: nn.Module | None = None,
        queue_size: int = 512,
        dim: int | None = None,
        weight: float = 1.0,
        mask_same_image: bool = True,
        max_age: int | None = None,
        warmup_steps: int = 0,
    ) -> None:
        super().__init__()
        if max_age is not None and max_age < 0:
            raise ValueError(f"max_age must be >= 0 or None, got {max_age}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.warmup_steps = warmup_steps
        self.base_loss = base_loss if base_loss is not None else InfoNCELoss()
        self.max_age = max_age
        self.image_queue = EmbeddingQueue(queue_size, dim)
        self.text_queue = EmbeddingQueue(queue_size, dim)
        self.weight = weight
        self.mask_same_image = mask_same_image

    @property
    def queue_size(self) -> int:
        return self.image_queue.size

    def queue_loss(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor | float,
        image_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``L_queue`` alone (unweighted); 0 (with a graph) while the queues are empty."""
        texts, text_ids = self._entries(self.text_queue)
        images, image_ids_q = self._entries(self.image_queue)
        if len(texts) == 0:
            return (image_features * text_features).sum() * 0.0
        i2t = _queue_infonce(image_features, text_features, texts, image_ids, text_ids, logit_scale,
                             self.mask_same_image)
        t2i = _queue_infonce(text_features, image_features, images, image_ids, image_ids_q, logit_scale,
                             self.mask_same_image)
        return (i2t + t2i) / 2

    def _entries(self, queue: EmbeddingQueue) -> tuple[torch.Tensor, torch.Tensor]:
        """The queue's features and image ids, without entries older than ``max_age``."""
        feats, ids = queue.features, queue.image_ids
        if self.max_age is not None and len(feats):
            fresh = queue.ages() <= self.max_age
            feats, ids = feats[fresh], ids[fresh]
        return feats, ids

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor | float,
        image_ids: torch.Tensor | None = None,
        scene_ids: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Batch loss + weighted queue loss, then enqueue the batch (training mode only).

        Args:
            image_features: [B, D] L2-normalised image embeddings.
            text_features: [B, D] L2-normalised caption embeddings, row i the caption of image row i.
            logit_scale: the temperature's inverse (``model.logit_scale.exp()``).
            image_ids: [B] dataset image index of each pair (masks same-image negatives).
            scene_ids: optional [B] scene ids, stored with the queue entries.
        """
        out = dict(self.base_loss(image_features, text_features, logit_scale, image_ids))
        queue = self.queue_loss(image_features, text_features, logit_scale, image_ids)
        warming = self.training and int(self.image_queue.calls) < self.warmup_steps
        out["queue_loss"] = (0.0 if warming else self.weight) * queue
        if self.training:
            ids = image_ids if image_ids is not None else torch.full((len(image_features),), -1)
            self.image_queue.enqueue(image_features, ids, scene_ids)
            self.text_queue.enqueue(text_features, ids, scene_ids)
        return out

    def extra_repr(self) -> str:
        return (f"queue_size={self.queue_size}, weight={self.weight}, "
                f"mask_same_image={self.mask_same_image}, max_age={self.max_age}, warmup_steps={self.warmup_steps}")


def effective_negatives(batch_size: int, queue_size: int) -> int:
    """Negatives each positive is contrasted with per step: ``(batch_size - 1) + queue_size``.

    An upper bound: same-image entries (other captions of the image, in the batch or the queue)
    are masked and do not count. Without a queue it is ``batch_size - 1``, so more negatives
    otherwise need a bigger batch, whose memory grows with the batch; the queue costs only
    ``2 * queue_size * dim`` stored floats (:func:`queue_memory_bytes`) and one extra matrix product.

    Example:
        >>> effective_negatives(32, 1024)
        1055
    """
    if batch_size < 1 or queue_size < 0:
        raise ValueError(f"need batch_size >= 1 and queue_size >= 0, got {batch_size}, {queue_size}")
    return batch_size - 1 + queue_size


def queue_memory_bytes(queue_size: int, dim: int, bytes_per_value: int = 4) -> int:
    """Bytes held by the two queues' embeddings (ids and bookkeeping add 32 bytes per entry)."""
    return 2 * queue_size * (dim * bytes_per_value + 32)


def embedding_drift(old: torch.Tensor, new: torch.Tensor) -> float:
    """Mean cosine between embeddings as they were enqueued (``old``) and re-encoded now (``new``).

    1.0 means a queue entry is as good as fresh; the gap below 1 is the staleness that a momentum
    encoder would have to remove. Both are [N, D], row i the same input.
    """
    if old.shape != new.shape:
        raise ValueError(f"shapes differ: {tuple(old.shape)} vs {tuple(new.shape)}")
    return float(F.cosine_similarity(old.float(), new.float(), dim=-1).mean())


def steps_held(batch_size: int, queue_size: int) -> int:
    """How many steps an entry stays in the queue: ``ceil(queue_size / batch_size)``."""
    return math.ceil(queue_size / batch_size)
