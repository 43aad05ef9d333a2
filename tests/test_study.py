"""The regime study's pieces: nested training subsets, two-clause captions, dataset statistics."""

import numpy as np

from rsretrieval.data.dataset import CaptionDataset
from rsretrieval.data.synthrs.generate import _params, _render_one
from rsretrieval.data import nested_subset
from rsretrieval.study import ROWS, dataset_statistics


def _data(n: int) -> CaptionDataset:
    scenes = ["airport", "port", "farmland"]
    return CaptionDataset(name="synthrs", split="train", image_paths=[f"{i}.png" for i in range(n)],
                          scenes=[scenes[i % 3] for i in range(n)],
                          captions=[f"caption {i // 2}" for i in range(2 * n)],
                          text_to_image=[i // 2 for i in range(2 * n)])


def test_subsets_are_nested_stratified_and_exact():
    data = _data(90)
    small, large = nested_subset(data, 10), nested_subset(data, 40)
    assert small.num_images == 10 and large.num_images == 40
    assert set(small.image_paths) <= set(large.image_paths)
    counts = [large.scenes.count(s) for s in ("airport", "port", "farmland")]
    assert max(counts) - min(counts) <= 1
    assert small.num_captions == 20


def test_two_clause_captions_keep_the_images_and_say_more():
    one, two = (_params(60, 64, 0, "rs", (0.7, 0.1, 0.2), caption_clauses=c, version="1.0") for c in (1, 2))
    assert "caption_clauses" not in one  # version 1.0's parameters stay as they always were
    for i in range(0, 60, 7):
        a, b = _render_one(i, one), _render_one(i, two)
        assert np.array_equal(np.asarray(a[2]), np.asarray(b[2]))  # the same image, byte for byte
        assert len(b[5]) == 5 and len(set(b[5])) == 5
    words = lambda p: np.mean([len(c.split()) for i in range(60) for c in _render_one(i, p)[5]])  # noqa: E731
    assert words(two) > words(one) + 3


def test_statistics_count_duplicates_and_scene_names():
    data = CaptionDataset(name="synthrs", split="test", image_paths=["a.png", "b.png"], scenes=["airport", "port"],
                          captions=["A plane at the airport.", "Two cars.", "two cars", "A ship in the port."],
                          text_to_image=[0, 0, 1, 1])
    s = dataset_statistics(data)
    assert s["duplicate_share"] == 0.5 and s["named_scene_share"] == 0.5 and s["captions_per_image"] == 2


def test_every_row_is_one_factor_away_from_today_or_from_synthrs_3():
    today = {"train_images": 1050, "captions": {}, "train": {}, "pretraining": None}
    synthrs3 = {**today, "train_images": None, "captions": {"caption_clauses": 2}}  # the two-clause+all rows
    for row in ROWS:
        changed = [k for k, v in today.items() if getattr(row, k) != v]
        if row.factor == "pretraining":
            changed = [k for k, v in synthrs3.items() if getattr(row, k) != v]
        assert len(changed) <= 1 or row.level == "two-clause+all", row.key
