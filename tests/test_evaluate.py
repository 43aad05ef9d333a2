"""Evaluation loop, result formatting and plots, on a fake CLIP and a tiny on-disk dataset."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before anything imports pyplot

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from PIL import Image
from torch import nn

from rsretrieval import plots
from rsretrieval.data.dataset import CaptionDataset
from rsretrieval.evaluation import (
    EvalResult,
    compare_table,
    encode_images,
    encode_texts,
    evaluate,
    evaluate_features,
    format_metrics,
)
from rsretrieval.evaluation.metrics import METRIC_KEYS, retrieval_metrics

# Each image is a flat colour; each caption names a colour as three numbers. Some captions name
# a slightly wrong colour, so retrieval is good but not perfect.
IMAGES = [  # (colour, scene)
    ((200, 30, 40), "farmland"),
    ((190, 60, 40), "farmland"),
    ((20, 180, 60), "forest"),
    ((30, 150, 90), "forest"),
    ((40, 60, 220), "river"),
    ((90, 90, 90), "river"),
    ((10, 10, 10), "forest"),
]
CAPTIONS = [  # (image index, colour named), deliberately not grouped by image; 1-3 per image
    (3, (30, 150, 90)),
    (0, (200, 30, 40)),
    (5, (90, 90, 90)),
    (1, (200, 30, 40)),  # names image 0's colour: a miss for t2i
    (2, (20, 180, 60)),
    (4, (40, 60, 220)),
    (6, (12, 10, 10)),
    (0, (195, 45, 40)),
    (3, (25, 165, 75)),
    (4, (90, 90, 90)),  # names image 5's colour
    (3, (30, 150, 90)),  # duplicate caption
    (1, (190, 60, 40)),
]


class FakeCLIP(nn.Module):
    """encode_image: a fixed linear map of the mean pixel colour; encode_text: the same map of
    the colour the tokens name. Records every row it encodes."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.proj = nn.Linear(3, dim, bias=False)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(dim, 3, generator=gen))
        self.frozen = nn.Sequential(nn.Dropout(0.5))  # a submodule whose mode must survive too
        self.images_seen: list[torch.Tensor] = []
        self.tokens_seen: list[torch.Tensor] = []

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        assert not self.training and torch.is_inference_mode_enabled()
        colour = x.mean(dim=(2, 3))  # [B, 3, H, W] -> [B, 3]
        self.images_seen.append(colour)
        return self.proj(colour) * 3.0  # not unit-norm on purpose

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        assert not self.training and torch.is_inference_mode_enabled()
        self.tokens_seen.append(tokens)
        return self.proj(tokens.float() / 255.0)


class FakeTokenizer:
    """'rgb 200 30 40 field' -> tensor([200, 30, 40]); counts the captions it tokenised."""

    def __init__(self) -> None:
        self.n_captions = 0

    def __call__(self, texts: list[str]) -> torch.Tensor:
        self.n_captions += len(texts)
        return torch.tensor([[int(w) for w in t.split() if w.isdigit()][:3] for t in texts])


def to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)  # [H,W,3] -> [3,H,W]


@pytest.fixture
def data(tmp_path: Path) -> CaptionDataset:
    gen = np.random.default_rng(0)
    paths = []
    for i, (colour, _) in enumerate(IMAGES):
        # Zero-mean noise keeps the mean colour while making each image a real picture.
        noise = gen.integers(-5, 6, size=(8, 8, 3))
        pixels = np.clip(np.array(colour) + noise - noise.mean(axis=(0, 1)).round().astype(int), 0, 255)
        path = tmp_path / f"img_{i}.png"
        Image.fromarray(pixels.astype(np.uint8)).save(path)
        paths.append(path)
    return CaptionDataset(
        name="fake",
        split="test",
        image_paths=paths,
        scenes=[s for _, s in IMAGES],
        captions=[f"rgb {r} {g} {b} patch" for _, (r, g, b) in CAPTIONS],
        text_to_image=[i for i, _ in CAPTIONS],
    )


def mean_colours(data: CaptionDataset) -> torch.Tensor:
    return torch.stack([to_tensor(Image.open(p).convert("RGB")).mean(dim=(1, 2)) for p in data.image_paths])


def expected_features(model: FakeCLIP, data: CaptionDataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Features computed without the evaluation code: straight from the images and colours."""
    with torch.no_grad():
        colours = mean_colours(data)
        img = F.normalize(model.proj(colours), dim=-1)
        txt = F.normalize(model.proj(torch.tensor([c for _, c in CAPTIONS]).float() / 255.0), dim=-1)
    return img, txt


def run(model: FakeCLIP, data: CaptionDataset, tok: FakeTokenizer | None = None, **kwargs) -> EvalResult:
    tok = tok or FakeTokenizer()
    return evaluate(model, data, transform=to_tensor, tokenizer=tok, batch_size=4, progress=False, **kwargs)


# ----------------------------------------------------------------------------------------------
# evaluate


def test_evaluate_matches_metrics_on_features(data: CaptionDataset) -> None:
    model = FakeCLIP()
    result = run(model, data)
    img, txt = expected_features(model, data)
    expected = retrieval_metrics(img @ txt.T, data.text_to_image)
    for k in METRIC_KEYS:
        assert result.metrics[k] == pytest.approx(expected[k]), k
    assert 0 < result.metrics["mr"] < 100  # the fixture is neither trivial nor hopeless
    assert result.similarity.shape == (data.num_images, data.num_captions)
    torch.testing.assert_close(result.similarity, img @ txt.T, atol=1e-5, rtol=0)
    assert result.metrics["n_images"] == 7 and result.metrics["n_captions"] == 12
    assert result.metrics["i2t_median_rank"] >= 1 and result.metrics["t2i_mean_rank"] >= 1


def test_each_image_and_caption_encoded_once(data: CaptionDataset) -> None:
    model, tok = FakeCLIP(), FakeTokenizer()
    run(model, data, tok)
    seen = torch.cat(model.images_seen)
    assert seen.shape[0] == data.num_images
    torch.testing.assert_close(seen, mean_colours(data))  # every image once, in dataset order
    assert len(model.images_seen) == 2  # 7 images in batches of 4
    tokens = torch.cat(model.tokens_seen)
    assert tok.n_captions == data.num_captions
    assert tokens.tolist() == [list(c) for _, c in CAPTIONS]  # every caption once, in order, duplicates kept


def test_features_are_unit_float32(data: CaptionDataset) -> None:
    model = FakeCLIP()
    img = encode_images(model, data, transform=to_tensor, batch_size=3, device="cpu", progress=False)
    txt = encode_texts(
        model, data.captions, tokenizer=FakeTokenizer(), batch_size=5, device=torch.device("cpu"), progress=False
    )
    for feats in (img, txt):
        assert feats.dtype == torch.float32 and feats.device.type == "cpu"
        torch.testing.assert_close(feats.norm(dim=-1), torch.ones(len(feats)))
    ref_img, ref_txt = expected_features(model, data)
    torch.testing.assert_close(img, ref_img, atol=1e-6, rtol=0)
    torch.testing.assert_close(txt, ref_txt, atol=1e-6, rtol=0)
    # An .images() view gives the same rows as the dataset plus a transform.
    view_img = encode_images(model, data.images(to_tensor), batch_size=2, progress=False)
    torch.testing.assert_close(view_img, img)


def test_evaluate_features_equals_evaluate(data: CaptionDataset) -> None:
    model = FakeCLIP()
    result = run(model, data)
    img, txt = expected_features(model, data)
    cached = evaluate_features(img.numpy() * 2.0, txt, data)  # numpy, not unit-norm: re-normalised
    assert cached.to_dict() == result.to_dict()


def test_per_scene_counts_and_full_gallery(data: CaptionDataset) -> None:
    result = run(FakeCLIP(), data)
    per_scene = result.per_scene
    assert set(per_scene) == {"farmland", "forest", "river"}
    assert sum(m["n_images"] for m in per_scene.values()) == data.num_images
    assert sum(m["n_captions"] for m in per_scene.values()) == data.num_captions
    assert per_scene["forest"]["n_images"] == 3 and per_scene["forest"]["n_captions"] == 5
    # Ranked against the full gallery, so scene recalls average (by query count) to the overall ones.
    for key, count in (("i2t_r1", "n_images"), ("t2i_r1", "n_captions"), ("t2i_r5", "n_captions")):
        weighted = sum(m[key] * m[count] for m in per_scene.values()) / result.metrics[count]
        assert weighted == pytest.approx(result.metrics[key])
    assert run(FakeCLIP(), data, per_scene=False).per_scene == {}


def test_training_modes_restored(data: CaptionDataset) -> None:
    model = FakeCLIP()
    model.train()
    model.frozen.eval()  # mixed modes, as in a PEFT model with a frozen backbone
    before = [m.training for m in model.modules()]
    run(model, data)
    assert [m.training for m in model.modules()] == before
    model.eval()
    run(model, data)
    assert not any(m.training for m in model.modules())


def test_to_dict_is_json_and_table_prints(data: CaptionDataset) -> None:
    result = run(FakeCLIP(), data)
    d = json.loads(json.dumps(result.to_dict()))
    assert set(d) == {"ties", "metrics", "per_scene"} and d["ties"] == "expected"
    assert d["metrics"]["mr"] == pytest.approx(result.metrics["mr"])
    assert d["per_scene"]["river"]["n_images"] == 2
    table = result.table()
    assert "mR" in table and "farmland" in table and "7 images, 12 captions" in table
    assert str(result) == table


def test_device_mismatch_is_an_error(data: CaptionDataset) -> None:
    with pytest.raises(ValueError, match="Move the model first"):
        encode_texts(FakeCLIP(), ["rgb 1 2 3"], tokenizer=FakeTokenizer(), device="cuda", progress=False)


def test_features_not_matching_dataset(data: CaptionDataset) -> None:
    with pytest.raises(ValueError, match="7 images"):
        evaluate_features(torch.randn(6, 8), torch.randn(12, 8), data)


# ----------------------------------------------------------------------------------------------
# Formatting


METRICS = {"i2t_r1": 9.71, "i2t_r5": 27.43, "i2t_r10": 40.04}
METRICS |= {"t2i_r1": 8.14, "t2i_r5": 30.22, "t2i_r10": 47.80}
METRICS |= {"rsum": sum(METRICS.values()), "mr": sum(METRICS.values()) / 6}


def test_format_metrics() -> None:
    assert format_metrics(METRICS) == (
        "i2t R@1 9.7 R@5 27.4 R@10 40.0 | t2i R@1 8.1 R@5 30.2 R@10 47.8 | mR 27.2 rsum 163.3"
    )


def test_compare_table_labels_paper_row() -> None:
    text = compare_table({"zero-shot": METRICS, "adapter": dict(METRICS, mr=30.0)}, {"mr": 23.89},
                         paper_name="PE-RSITR zero-shot")
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["method", "i2t@1"]
    assert lines[-1].startswith("PE-RSITR zero-shot (paper)")
    assert "23.89" in lines[-1] and "143.34" in lines[-1]  # rsum filled in as 6 mR
    assert lines[-1].split()[4] == "-"  # unknown recalls are shown as such
    assert "(paper)" not in "\n".join(lines[:-1])
    assert compare_table({"a": METRICS}).count("\n") == 2  # header, rule, one row


# ----------------------------------------------------------------------------------------------
# Plots (smoke tests: they build, they return a Figure, they render)


def _renders(fig: Figure) -> None:
    assert isinstance(fig, Figure)
    fig.canvas.draw()  # Agg: catches layout errors without a display


def test_plots(data: CaptionDataset) -> None:
    result = run(FakeCLIP(), data)
    _renders(plots.plot_recall_bars({"zero-shot": METRICS, "fake": result.metrics}))
    _renders(plots.plot_per_scene(result.per_scene))
    _renders(plots.plot_rank_histogram(result.t2i_ranks))
    both = {"i2t": result.i2t_ranks, "t2i": result.t2i_ranks.rank().numpy()}
    _renders(plots.plot_rank_histogram(both, max_rank=5))
    column = 3
    _renders(
        plots.plot_retrieval_grid(
            data.captions[column],
            data.image_paths,
            result.similarity[:, column],
            [i == data.text_to_image[column] for i in range(data.num_images)],
            k=3,
        )
    )
    captions = [[data.captions[j] for j in js] for js in data.image_to_texts]
    _renders(plots.plot_image_captions(data.image_paths, captions, n=3))


def test_curve_and_cost_figures() -> None:
    from rsretrieval.plots import plot_cost, plot_val_curves
    from rsretrieval.widgets import LiveCurve

    zoo_rows = [{"label": "mrs_adapter", "history": [{"epoch": 1, "val_mr": 10.0}, {"epoch": 2, "val_mr": 12.0}]},
                {"label": "mrs_adapter", "history": {"records": [{"epoch": 1, "val_mr": 11.0},
                                                                  {"epoch": 2, "val_mr": 14.0}]}}]
    ax = plot_val_curves(zoo_rows).axes[0]
    assert list(ax.lines[0].get_ydata()) == [10.5, 13.0]  # the mean over seeds, epoch by epoch
    longer = zoo_rows + [{"label": "mrs_adapter", "best_epoch": 3, "val_mr": 15.0,
                          "history": [{"epoch": 1, "val_mr": 9.0}, {"epoch": 2, "val_mr": 13.0},
                                      {"epoch": 3, "val_mr": 15.0}]}]
    ax = plot_val_curves(longer, zero_shot=8.0).axes[0]
    assert list(ax.lines[0].get_ydata()) == [10.0, 13.0, 15.0]  # a seed that trained longer is not cut off
    assert [list(line.get_xdata()) for line in ax.lines[1:2]] == [[3]]  # its chosen epoch, starred
    assert "zero-shot" in [t.get_text() for t in ax.get_legend().get_texts()]
    curve = LiveCurve("mrs_adapter", zoo_rows)
    curve({"epoch": 1, "val_mr": 9.0, "train_loss": 2.0})
    curve({"epoch": 2, "val_mr": 11.0, "train_loss": 1.5})
    assert list(curve.figure().axes[0].lines[-1].get_ydata()) == [9.0, 11.0]
    fig = plot_cost([{"label": "full", "seconds": 600.0, "memory_bytes": 2**30, "val_mr": 54.0, "val_mr_std": 0.4},
                     {"label": "focus", "seconds": 40.0, "memory_bytes": None, "val_mr": 52.0}])
    assert [len(a.collections) > 0 for a in fig.axes] == [True, True]
