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
    such pushes apart embeddings that should agree (reference.md §1, §3).
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
