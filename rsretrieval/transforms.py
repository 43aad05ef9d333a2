"""Image transforms: the model's own preprocessing plus optional remote-sensing augmentation.

Aerial images have no canonical "up": flips and 90-degree rotations give new, equally valid
views, unlike natural photos. Colour jitter is left out on purpose: colours are named in captions.
"""

from __future__ import annotations

import random
from typing import Callable

from PIL import Image

_ROTATIONS = (None, Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270)


class RandomDihedral:
    """One of the 8 flips/rotations of the square, uniformly at random (on PIL images)."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()

    def __call__(self, img: Image.Image) -> Image.Image:
        rot = self.rng.choice(_ROTATIONS)
        if rot is not None:
            img = img.transpose(rot)
        if self.rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return img

    def __repr__(self) -> str:
        return "RandomDihedral()"


class Compose:
    def __init__(self, *steps: Callable) -> None:
        self.steps = steps

    def __call__(self, img):
        for step in self.steps:
            img = step(img)
        return img

    def __repr__(self) -> str:
        return "Compose(" + ", ".join(map(repr, self.steps)) + ")"


def rs_train_transform(transform: Callable, augment: bool = False) -> Callable:
    """The model's preprocessing, preceded by flips/rotations when ``augment``.

    Captions that say "left of" or "at the top" become wrong under a flip, so augmentation is off
    by default and a choice the caller makes knowingly.
    """
    return Compose(RandomDihedral(), transform) if augment else transform
