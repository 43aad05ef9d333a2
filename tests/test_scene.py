"""Scene-label augmentation: caption prefixes at training time, scene re-ranking at test time."""

from __future__ import annotations

import copy
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rsretrieval.data.dataset import CaptionDataset
from rsretrieval.evaluation.metrics import retrieval_metrics
from rsretrieval.cmer.recycling import RecyclingLoss
from rsretrieval.cmer.scene import (
    ORACLE_ROW,
    SceneAugmentedTask,
    choose_weight_on_val,
    evaluate_with_scenes,
    keyword_scene_probs,
    predict_scenes,
    scene_accuracy,
    scene_caption,
    scene_phrases,
    scene_prompts,
    scene_rerank,
    with_article,
    zero_shot_scene_probs,
)
from fakedata import make_batch
from rsretrieval.cmer import CMERConfig, build_cmer
from rsretrieval.training.tasks import build_task
from rsretrieval.training import TrainConfig, fit

# ---------------------------------------------------------------------------------- words and captions


def test_scene_phrases_use_natural_words():
    assert scene_phrases("denseresidential") == ("dense residential area",)
    assert scene_phrases("DenseResidential") == ("dense residential area",)
    assert scene_phrases("storagetanks") == ("storage tanks",)
    assert scene_phrases("baseballfield") == ("baseball field",)
    assert scene_phrases("unknown") == ()
    # labels we do not know: split on separators / camelCase, or into known words, else kept whole
    assert scene_phrases("Golf_Course") == ("golf course",)
    assert scene_phrases("snowfield") == ("snow field",)
    assert scene_phrases("oilrefinery") == ("oilrefinery",)
    # SynthRS: the generator's own scene nouns (its captions use them), objects' plurals for source scenes
    assert scene_phrases("storagetanks", "synthrs") == ("oil depot", "fuel depot", "storage area")
    assert scene_phrases("plane", "synthrs") == ("planes", "airplanes", "aircraft")
    assert with_article("airport") == "an airport" and with_article("storage tanks") == "storage tanks"
    assert with_article("farmland") == "farmland"
    assert with_article("dense residential area") == "a dense residential area"


def test_scene_caption_is_deterministic_and_natural():
    cap = "Two white planes are parked near the terminal."
    assert scene_caption(cap, "airport", random.Random(0), style="fixed") == (
        "an aerial image of an airport: two white planes are parked near the terminal.")
    assert scene_caption(cap, "denseresidential", random.Random(0), style="fixed").startswith(
        "an aerial image of a dense residential area: two")
    a = [scene_caption(cap, "storagetanks", random.Random(s)) for s in range(20)]
    b = [scene_caption(cap, "storagetanks", random.Random(s)) for s in range(20)]
    assert a == b  # same seed, same text
    assert len(set(a)) > 1 and all("storage tanks: two white planes" in c for c in a)  # varied templates
    import numpy as np

    rngs = np.random.default_rng(3), np.random.default_rng(3)
    assert scene_caption(cap, "forest", rngs[0]) == scene_caption(cap, "forest", rngs[1])
    assert scene_caption(cap, "unknown", random.Random(0)) == cap
    acronym = scene_caption("UAV view of a port.", "port", random.Random(0), style="fixed")
    assert acronym.endswith(": UAV view of a port.")


def test_task_rewrites_caption_strings_as_scene_caption_does(tiny, tiny_bundle):
    model, _, _ = tiny
    names = ["airport", "denseresidential", "storagetanks"]
    task = SceneAugmentedTask(model, scenes=names, tokenizer=tiny_bundle.tokenizer, prob=1.0)
    captions = ["Two white planes are parked.", "many buildings and green trees are around a road",
                " ".join(["a very long caption"] * 12)]
    for seed in range(5):
        for s, name in enumerate(names):
            for cap in captions:
                torch.manual_seed(seed)
                rewritten = task.rewrite_captions([cap], torch.tensor([s]))
                torch.manual_seed(seed)
                rng = random.Random(int(torch.randint(0, 2**62, (1,))))
                rng.random()  # the task draws the "prefix or not" coin first
                assert rewritten == [scene_caption(cap, name, rng)], (seed, name, cap)
    torch.manual_seed(0)
    never = SceneAugmentedTask(model, scenes=names, tokenizer=tiny_bundle.tokenizer, prob=0.0)
    state = torch.get_rng_state()
    assert never.rewrite_captions(captions, torch.tensor([0, 1, 2])) == captions
    assert torch.equal(torch.get_rng_state(), state)  # prob 0 draws nothing: other runs' randomness stays


# ------------------------------------------------------------------------------------------ the training task

def test_scene_task_prefixes_deterministically_under_the_seed(tiny, tiny_bundle):
    model, images, tokens = tiny
    scenes = ["airport", "forest", "unknown"]
    ids = torch.tensor([0, 1, 2, 0])
    captions = ["a red field", "a blue lake", "a red field again", "green trees"]
    task = SceneAugmentedTask(model, scenes=scenes, tokenizer=tiny_bundle.tokenizer, prob=1.0)
    assert task.scene_names == ["airport", "forest"]
    torch.manual_seed(1)
    first = task.rewrite_captions(captions, ids)
    torch.manual_seed(1)
    assert task.rewrite_captions(captions, ids) == first  # the trainer's seeding decides the rewrite
    assert first[0] != captions[0] and first[2] == captions[2]  # unknown scene: untouched
    assert "forest" in first[1] and first[1].endswith("a blue lake")
    task.eval()
    assert task.rewrite_captions(captions, ids) == captions  # evaluation never rewrites
    task.train()
    never = SceneAugmentedTask(model, scenes=scenes, tokenizer=tiny_bundle.tokenizer, prob=0.0)
    assert never.rewrite_captions(captions, ids) == captions
    with pytest.raises(ValueError, match="outside the 3 training images"):
        task(make_batch(images, tokens, torch.tensor([0, 1, 2, 7])))
    with pytest.raises(ValueError, match="prob"):
        SceneAugmentedTask(model, scenes=scenes, tokenizer=tiny_bundle.tokenizer, prob=1.5)


def test_scene_task_losses_and_the_queue_gets_scene_ids(tiny, tiny_bundle):
    model, images, tokens = tiny
    scenes = ["airport", "forest", "unknown"]
    task = SceneAugmentedTask(model, RecyclingLoss(queue_size=8), scenes=scenes,
                              tokenizer=tiny_bundle.tokenizer, prob=0.5, scene_loss_weight=0.3)
    out = task(make_batch(images, tokens, torch.tensor([0, 1, 2, 0])))
    assert set(out) == {"contrastive_loss", "queue_loss", "scene_loss"}
    assert out["scene_loss"] > 0
    sum(out.values()).backward()
    assert model.text_projection.grad is not None
    assert task.loss.image_queue.scene_ids.tolist() == [0, 1, -1, 0]
    plain = SceneAugmentedTask(model, scenes=scenes, tokenizer=tiny_bundle.tokenizer)
    assert set(plain(make_batch(images, tokens, torch.tensor([0, 1, 2, 0])))) == {"contrastive_loss"}


def test_cmer_from_the_registry_and_fit(colour_data, tiny_bundle):
    with pytest.raises(ValueError, match="needs the training split"):
        build_task("cmer", copy.deepcopy(tiny_bundle.model))
    with pytest.raises(ValueError, match="queue_sise"):
        build_task("cmer", copy.deepcopy(tiny_bundle.model), colour_data, queue_sise=12)
    torch.manual_seed(0)
    model = copy.deepcopy(tiny_bundle.model)
    task = build_task("cmer", model, colour_data, queue_size=12, scene_prob=0.5, scene_loss_weight=0.1)
    assert isinstance(task, SceneAugmentedTask) and isinstance(task.loss, RecyclingLoss)
    assert task.scene_names == ["blue", "green", "red", "white"] and task.loss.queue_size == 12
    cfg = TrainConfig(epochs=1, batch_size=8, lr=1e-3, warmup_steps=1, max_steps=2, progress=False,
                      eval_every=0)
    history = fit(model, tiny_bundle.tokenizer, colour_data, tiny_bundle.transform, cfg, task=task)
    assert history.records[-1]["updates"] == 2 and history.records[-1]["train_loss"] > 0
    assert task.loss.text_queue.valid == 12


def test_build_cmer_is_the_method_and_its_default_loss(colour_data, tiny_bundle):
    from rsretrieval.methods import get_applied_method, get_method

    assert get_method("cmer").default_loss == "cmer" and get_method("focus_adapter").default_loss == "infonce"
    cfg = CMERConfig(adapter={"bottleneck": 16}, queue_size=8, scene_prob=1.0)
    model, task = build_cmer(copy.deepcopy(tiny_bundle.model), colour_data, cfg, tokenizer=tiny_bundle.tokenizer)
    assert get_applied_method(model).name == "cmer" and get_applied_method(model).config.bottleneck == 16
    assert isinstance(task, SceneAugmentedTask) and task.loss.queue_size == 8 and task.prob == 1.0


# ------------------------------------------------------------------------------------------ re-ranking

def test_hard_rerank_puts_same_scene_candidates_first():
    sim = torch.tensor([[0.9, 0.1, 0.5],
                        [0.8, 0.7, 0.6],
                        [0.2, 0.95, 0.3],
                        [0.4, 0.3, 0.2]])  # 4 images x 3 texts
    p_img = F.one_hot(torch.tensor([0, 1, 0, 1]), 2).float()
    p_txt = F.one_hot(torch.tensor([1, 0, 1]), 2).float()
    out = scene_rerank(sim, p_img, p_txt, mode="hard")
    match = torch.tensor([[0, 1, 0], [1, 0, 1], [0, 1, 0], [1, 0, 1]], dtype=torch.bool)
    for j in range(3):  # every text query: all images of its scene above all others, order kept inside
        assert out[match[:, j], j].min() > out[~match[:, j], j].max()
        assert torch.equal(out[match[:, j], j].argsort(), sim[match[:, j], j].argsort())
    for i in range(4):  # every image query likewise over texts
        assert out[i, match[i]].min() > out[i, ~match[i]].max()
    # text 0 belongs to scene 1: image 1 (0.8) now beats image 0 (0.9)
    assert out[:, 0].argmax() == 1 and sim[:, 0].argmax() == 0
    flat = torch.full((3, 2), 0.5)  # no prediction for any text: nothing is filtered
    assert torch.equal(scene_rerank(sim, p_img, flat, mode="hard"), sim)


def test_soft_rerank():
    torch.manual_seed(0)
    sim = torch.randn(5, 7)
    p_img, p_txt = torch.rand(5, 3).softmax(-1), torch.rand(7, 3).softmax(-1)
    assert torch.equal(scene_rerank(sim, p_img, p_txt, mode="soft", weight=0.0), sim)
    assert torch.equal(scene_rerank(sim, p_img, p_txt, mode="soft_linear", weight=0.0), sim)
    assert torch.equal(scene_rerank(sim, p_img, p_txt, mode="none"), sim)
    p_same = p_img @ p_txt.t()
    torch.testing.assert_close(scene_rerank(sim, p_img, p_txt, "soft", 0.5), sim + 0.5 * p_same.log())
    torch.testing.assert_close(scene_rerank(sim, p_img, p_txt, "soft_linear", 0.5), sim + 0.5 * p_same)
    with pytest.raises(ValueError, match="mode"):
        scene_rerank(sim, p_img, p_txt, mode="sharp")
    with pytest.raises(ValueError, match="does not fit"):
        scene_rerank(sim, p_img, p_txt[:3], mode="soft")


def test_zero_shot_scene_probs_shape_and_normalisation(tiny_bundle):
    model = tiny_bundle.model
    names = ["airport", "forest", "denseresidential"]
    feats = torch.randn(6, 64)
    probs = zero_shot_scene_probs(model, feats, names, tiny_bundle.tokenizer)
    assert probs.shape == (6, 3) and (probs >= 0).all()
    torch.testing.assert_close(probs.sum(-1), torch.ones(6))
    assert scene_prompts("airport")[0] == "an aerial image of an airport."
    assert len(predict_scenes(probs, names)) == 6
    with pytest.raises(ValueError, match="unknown"):
        zero_shot_scene_probs(model, feats, ["airport", "unknown"], tiny_bundle.tokenizer)


def test_scene_accuracy_and_keywords():
    assert scene_accuracy(["forest", "desert", "forest"], ["forest", "forest", "unknown"]) == 50.0
    assert scene_accuracy(["forest"], ["unknown"]) is None
    probs = keyword_scene_probs(["A dense forest.", "two storage tanks", "a white car"],
                                ["forest", "storagetanks", "airport"])
    assert probs.argmax(-1)[:2].tolist() == [0, 1]
    torch.testing.assert_close(probs[2], torch.full((3,), 1 / 3))  # names no scene: a flat row
    torch.testing.assert_close(probs.sum(-1), torch.ones(3))


# ------------------------------------------------------------------------------------------ the report

SCENES = ["forest", "desert"]


class WordModel(nn.Module):
    """A fake CLIP: the "tokenizer" already returns embeddings; dims 0/1 say forest/desert."""

    def __init__(self) -> None:
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(100.0).log())

    def encode_text(self, x: torch.Tensor) -> torch.Tensor:
        return x


def word_tokenizer(texts: list[str], dim: int = 10) -> torch.Tensor:
    out = torch.zeros(len(texts), dim)
    for r, t in enumerate(texts):
        out[r, 0], out[r, 1] = float("forest" in t), float("desert" in t)
    return out


def handmade(scenes: list[str] | None = None) -> tuple[torch.Tensor, torch.Tensor, CaptionDataset]:
    """8 images (4 forest, 4 desert), one caption each. Each caption also resembles an image of the
    *other* scene more than its own (the confuser), but its scene direction is right: scenes help."""
    gold = ["forest"] * 4 + ["desert"] * 4
    img = torch.zeros(8, 10)
    txt = torch.zeros(8, 10)
    for i in range(8):
        s = 0 if i < 4 else 1
        img[i, s], img[i, 2 + i] = 0.3, 1.0
        confuser = (i + 4) % 8
        txt[i, s], txt[i, 2 + i], txt[i, 2 + confuser] = 0.3, 1.0, 1.5
    data = CaptionDataset("handmade", "test", [Path(f"{i}.png") for i in range(8)], scenes or gold,
                          [f"caption {i}" for i in range(8)], list(range(8)))
    return img, txt, data


def test_evaluate_with_scenes_hard_beats_none_where_scenes_help():
    img, txt, data = handmade()
    result = evaluate_with_scenes(img, txt, data, SCENES, WordModel(), word_tokenizer,
                                  modes=("none", "soft", "hard"), weight=0.05)
    rows = result.rows
    assert set(rows) == {"none", "soft", "hard", ORACLE_ROW}
    assert rows["none"]["t2i_r1"] == 0.0  # every caption prefers its confuser
    assert rows["hard"]["mr"] > rows["none"]["mr"] and rows["hard"]["mr"] == 100.0
    assert rows["soft"]["mr"] > rows["none"]["mr"]
    assert result.image_scene_accuracy == 100.0 and result.text_scene_accuracy == 100.0
    cosine = F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).t()
    assert rows["none"] == retrieval_metrics(cosine, data.text_to_image)
    text = result.table()
    assert "NOT a valid protocol" in text and "soft (λ=0.05)" in text


def test_gold_labels_are_used_only_for_the_oracle_and_the_accuracy_report():
    img, txt, data = handmade()
    _, _, scrambled = handmade(["desert", "forest"] * 4)  # wrong gold labels for half of the images
    kw = dict(modes=("none", "soft", "soft_linear", "hard"), weight=0.05)
    real = evaluate_with_scenes(img, txt, data, SCENES, WordModel(), word_tokenizer, **kw)
    fake = evaluate_with_scenes(img, txt, scrambled, SCENES, WordModel(), word_tokenizer, **kw)
    for mode in kw["modes"]:
        assert real.rows[mode] == fake.rows[mode], mode  # predictions never read the labels
    assert torch.equal(real.image_scene_probs, fake.image_scene_probs)
    assert real.rows[ORACLE_ROW] != fake.rows[ORACLE_ROW]  # the oracle does
    assert fake.image_scene_accuracy == 50.0  # and the report does
    none = evaluate_with_scenes(img, txt, data, SCENES, WordModel(), word_tokenizer, modes=("none",),
                                oracle=False)
    assert set(none.rows) == {"none"}


def test_choose_weight_on_val():
    img, txt, data = handmade()
    best, scores = choose_weight_on_val(img, txt, data, SCENES, WordModel(), word_tokenizer,
                                        weights=(0.0, 0.005, 0.05, 0.5))
    assert set(scores) == {0.0, 0.005, 0.05, 0.5}
    assert best == 0.05  # the smallest weight reaching the best val mR
    assert scores[best] > scores[0.0]
    with pytest.raises(ValueError, match="soft"):
        choose_weight_on_val(img, txt, data, SCENES, WordModel(), word_tokenizer, mode="hard")
    best_linear, linear = choose_weight_on_val(img, txt, data, SCENES, WordModel(), word_tokenizer,
                                               mode="soft_linear")
    assert 0.0 in linear and max(linear) == 0.5 and linear[best_linear] >= linear[0.0]
