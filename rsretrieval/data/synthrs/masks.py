"""SynthRS object masks, read back from a generated dataset (for measuring where a model looks)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def object_masks(data: Any, image_indices: Sequence[int] | None = None) -> np.ndarray:
    """SynthRS object masks: [N, H, W] bool, True on pixels of ``kind == "object"`` entries.

    Args:
        data: a SynthRS :class:`~rsretrieval.data.dataset.CaptionDataset` (its
            ``metadata["objects_file"]`` points at ``objects.json``; masks are ``masks/<stem>.png``
            beside it, 8-bit object ids with 0 = background).
        image_indices: which images (default: all).

    Raises:
        FileNotFoundError: a dataset without SynthRS objects or masks.
    """
    objects_file = data.metadata.get("objects_file") if hasattr(data, "metadata") else None
    if not objects_file:
        raise FileNotFoundError(f"{data!r} has no metadata['objects_file']: object masks exist for SynthRS "
                                "only")
    objects = json.loads(Path(objects_file).read_text())
    mask_dir = Path(objects_file).parent / "masks"
    out = []
    for i in (range(data.num_images) if image_indices is None else image_indices):
        path = Path(data.image_paths[i])
        ids = np.asarray(Image.open(mask_dir / f"{path.stem}.png"))
        keep = [o["id"] for o in objects.get(path.name, []) if o.get("kind") == "object"]
        out.append(np.isin(ids, keep))
    return np.stack(out)
