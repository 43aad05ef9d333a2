import copy
import os

if os.environ.get("RSR_TEST_GPU") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the suite is CPU-only, as CI; `make test-gpu` lifts this

import numpy as np
import pytest
import torch
from PIL import Image

from rsretrieval.data.dataset import CaptionDataset

# `make test` runs one pytest-xdist worker per core: each worker (and what it launches) gets its share of
# the cores, so that two workers' torch thread pools do not spin against each other
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_THREADS = max(1, min(2, (os.cpu_count() or 1) // _WORKERS))
if _WORKERS > 1:
    os.environ["OMP_NUM_THREADS"] = str(_THREADS)
torch.set_num_threads(_THREADS)

COLOURS = {"red": (200, 30, 30), "green": (30, 160, 40), "blue": (30, 60, 200), "white": (240, 240, 240)}


def make_colour_dataset(root, n_per_colour: int = 4, size: int = 32, captions_per_image: int = 2) -> CaptionDataset:
    """A small dataset where each image is a noisy flat colour and its captions name it."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    paths, scenes, captions, t2i = [], [], [], []
    for name, rgb in COLOURS.items():
        for k in range(n_per_colour):
            arr = np.clip(np.array(rgb) + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
            path = root / f"{name}_{k}.png"
            Image.fromarray(arr).save(path)
            for c in range(captions_per_image):
                captions.append(f"a {name} image number {k} variant {c}")
                t2i.append(len(paths))
            paths.append(path)
            scenes.append(name)
    return CaptionDataset("colours", "train", paths, scenes, captions, t2i)


@pytest.fixture
def colour_data(tmp_path):
    return make_colour_dataset(tmp_path / "colours")


@pytest.fixture(scope="session")
def tiny_bundle():
    from rsretrieval.models import create_model

    torch.manual_seed(0)  # the same random weights whatever ran before (tests run in any order)
    return create_model("tiny")


@pytest.fixture
def tiny(tiny_bundle):
    """A fresh copy of the tiny CLIP with a batch of 4 images and 4 captions (two of one colour)."""
    torch.manual_seed(0)
    model = copy.deepcopy(tiny_bundle.model)
    images = torch.randn(4, 3, 32, 32)
    tokens = tiny_bundle.tokenizer(["a red field", "a blue lake", "a red field again", "green trees"])
    return model, images, tokens

