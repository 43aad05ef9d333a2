"""Contrastive losses. They see embeddings, never the model (as open_clip's ``ClipLoss``).

Every loss returns a dict whose keys end in ``_loss``; the trainer sums them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def same_image_mask(image_ids: torch.Tensor) -> torch.Tensor:
    """[B, B] bool: True where pairs i and j show the same image but are different pairs.

    Two captions of one image in a batch are not negatives of each other; treating them as
    such pushes apart embeddings that should agree.
    """
    ids = image_ids.view(-1)
    same = ids[:, None] == ids[None, :]
    return same & ~torch.eye(len(ids), dtype=torch.bool, device=ids.device)


class InfoNCELoss(nn.Module):
    """Symmetric InfoNCE (CLIP's loss) with same-image masking.

    ``logits[i, j] = scale * <img_i, txt_j>``; the target of row i is column i. Entries of other
    pairs of the same image are removed from the softmax rather than counted as negatives.
    """

    def __init__(self, mask_same_image: bool = True) -> None:
        super().__init__()
        self.mask_same_image = mask_same_image

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
        image_ids: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        logits = logit_scale * image_features @ text_features.t()  # [B, B]
        if self.mask_same_image and image_ids is not None:
            logits = logits.masked_fill(same_image_mask(image_ids), float("-inf"))
        target = torch.arange(len(logits), device=logits.device)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
        return {"contrastive_loss": loss}


def hardest_negative_hinge(
    a: torch.Tensor,
    b: torch.Tensor,
    margin: float = 0.2,
    not_negative: torch.Tensor | None = None,
) -> torch.Tensor:
    """VSE++'s max-violation hinge between two aligned sets, both directions, summed over the batch.

    With ``s = cos(a_i, b_j)`` [B, B] and positives on the diagonal::

        sum_i max_{j neg} [m - s_ii + s_ij]_+  +  sum_j max_{i neg} [m - s_jj + s_ij]_+

    Args:
        a: [B, D] features (normalised here, so the score is a cosine).
        b: [B, D] features; ``b[i]`` is the positive of ``a[i]``.
        margin: m.
        not_negative: optional [B, B] bool, True where a pair is neither the positive nor a
            negative (e.g. two captions of one image); the diagonal is always excluded.

    Returns:
        A scalar.
    """
    scores = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).t()  # [B, B]
    pos = scores.diag()
    cost_b = (margin + scores - pos[:, None]).clamp(min=0)  # row i: anchor a_i against negatives b_j
    cost_a = (margin + scores - pos[None, :]).clamp(min=0)  # column j: anchor b_j against negatives a_i
    excluded = torch.eye(len(scores), dtype=torch.bool, device=scores.device)
    if not_negative is not None:
        excluded = excluded | not_negative
    cost_b = cost_b.masked_fill(excluded, 0)
    cost_a = cost_a.masked_fill(excluded, 0)
    return cost_b.max(dim=1).values.sum() + cost_a.max(dim=0).values.sum()


class VSEHardNegativeLoss(nn.Module):
    """VSE++ max-violation hinge on cosine similarity, image->text and text->image, summed over the batch.

    Faghri, Fleet, Kiros, Fidler. "VSE++: Improving Visual-Semantic Embeddings with Hard Negatives",
    BMVC 2018. https://arxiv.org/abs/1707.05612

    Each anchor counts only its hardest negative. Pairs of the same image are never negatives
    (``image_ids``). The call matches :class:`InfoNCELoss` (``logit_scale`` is accepted and unused),
    so it drops into :class:`rsretrieval.training.ContrastiveTask`.
    """

    def __init__(self, margin: float = 0.2, mask_same_image: bool = True) -> None:
        super().__init__()
        self.margin = margin
        self.mask_same_image = mask_same_image

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor | None = None,
        image_ids: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        mask = same_image_mask(image_ids) if self.mask_same_image and image_ids is not None else None
        return {"hinge_loss": hardest_negative_hinge(image_features, text_features, self.margin, mask)}


class HMMCLoss(nn.Module):
    """PE-RSITR's hybrid multi-modal contrastive loss: three hardest-negative hinges, summed.

    Yuan, Zhan, Xiong. PE-RSITR, IEEE TGRS 2023::

        L = w_c C(v, t) + w_v C(v, v~) + w_t C(t, t~)

    where ``C`` is :func:`hardest_negative_hinge` (margin 0.2, all weights 1) and ``v~``, ``t~`` are
    a second, dropout-perturbed view of the same batch (built by :class:`rsretrieval.training.tasks.HMMCTask`).
    Unlike the released code, pairs that share an image are masked in all three terms: two captions
    of one image, or one image seen twice, are not negatives.
    """

    def __init__(
        self,
        margin: float = 0.2,
        cross_weight: float = 1.0,
        image_weight: float = 1.0,
        text_weight: float = 1.0,
        mask_same_image: bool = True,
    ) -> None:
        super().__init__()
        self.margin = margin
        self.cross_weight, self.image_weight, self.text_weight = cross_weight, image_weight, text_weight
        self.mask_same_image = mask_same_image

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        image_features_2: torch.Tensor,
        text_features_2: torch.Tensor,
        image_ids: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        mask = same_image_mask(image_ids) if self.mask_same_image and image_ids is not None else None
        m = self.margin
        return {
            "cross_loss": self.cross_weight * hardest_negative_hinge(image_features, text_features, m, mask),
            "intra_image_loss": self.image_weight * hardest_negative_hinge(image_features, image_features_2, m, mask),
            "intra_text_loss": self.text_weight * hardest_negative_hinge(text_features, text_features_2, m, mask),
        }
