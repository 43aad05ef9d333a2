"""The frozen-feature cache and training a side branch from it."""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch
from PIL import Image

from rsretrieval.cmer.cache import (
    CachedSideBranchTask,
    build_cache,
    cache_key,
    clear_cache,
    open_cache,
    time_epochs,
)
from rsretrieval.methods import apply_method
from rsretrieval.training import Batch, ContrastiveTask, Inputs, TrainConfig, fit


@pytest.fixture
def model(tiny_bundle):
    torch.manual_seed(0)
    return apply_method(copy.deepcopy(tiny_bundle.model), "focus_adapter")


@pytest.fixture
def cache_dir(tmp_path):
    return tmp_path / "cache"  # tmp_path also holds colour_data's images


class BackboneCalls:
    """Counts forward passes of both frozen towers."""

    def __init__(self, model):
        self.n = 0
        self.handles = [model.visual.register_forward_hook(self._hook),
                        model.transformer.register_forward_hook(self._hook)]

    def _hook(self, *args):
        self.n += 1


def build(model, data, tiny_bundle, cache_dir):
    return build_cache(model, data, tiny_bundle.transform, tiny_bundle.tokenizer, cache_dir=cache_dir,
                       batch_size=8, progress=False)


def test_built_once_then_a_hit(model, colour_data, tiny_bundle, cache_dir):
    calls = BackboneCalls(model)
    cache = build(model, colour_data, tiny_bundle, cache_dir)
    assert not cache.hit and calls.n == 2 + 4  # 16 images / 8 + 32 captions / 8
    assert cache.num_images == 16 and cache.num_captions == 32
    tokens_img = cache.arrays["image_tokens"]
    assert tokens_img.shape == (16, 17, 2 * 64) and tokens_img.dtype == np.float16  # 2 taps side by side
    assert isinstance(cache.arrays["image_tokens"], np.memmap)
    again = build(model, colour_data, tiny_bundle, cache_dir)
    assert again.hit and calls.n == 6 and again.path == cache.path
    # the stored features are the model's own, each tap standardised as its LayerNorm does
    model.eval()
    image = colour_data.images(tiny_bundle.transform)[3]["image"]
    emb, taps = model.frozen_image_features(image[None])
    c_emb, c_tok = cache.image_features([3])
    assert torch.allclose(c_emb, emb, atol=1e-6)
    assert torch.allclose(c_tok[..., 64:].float(), torch.nn.functional.layer_norm(taps[1], (64,)), atol=1e-2)
    tokens = tiny_bundle.tokenizer([colour_data.captions[5]])
    t_emb, t_taps, eot = model.frozen_text_features(tokens)
    c_emb, c_tok, c_eot = cache.text_features([5])
    assert torch.equal(c_eot, eot) and torch.allclose(c_emb, t_emb, atol=1e-6)
    assert torch.allclose(c_tok[:, :int(eot) + 1, :64].float(), torch.nn.functional.layer_norm(t_taps[0], (64,)),
                          atol=1e-2)


def test_invalidated_by_captions_files_model_and_layers(model, colour_data, tiny_bundle, cache_dir):
    key = cache_key(model, colour_data, tiny_bundle.transform, tiny_bundle.tokenizer)[0]
    first = build(model, colour_data, tiny_bundle, cache_dir)
    assert first.key == key

    edited = copy.deepcopy(colour_data)
    edited.captions[0] = "a completely different caption"
    assert not build(model, edited, tiny_bundle, cache_dir).hit

    img = colour_data.image_paths[2]
    Image.new("RGB", (40, 40), (1, 2, 3)).save(img)  # a changed file: other size and mtime
    os.utime(img, ns=(1, 1))
    changed = build(model, colour_data, tiny_bundle, cache_dir)
    assert not changed.hit and changed.key != key
    key = changed.key

    other = copy.deepcopy(model)
    with torch.no_grad():
        other.visual.conv1.weight[0, 0, 0, 0] += 1e-3  # one frozen weight
    assert cache_key(other, colour_data, tiny_bundle.transform, tiny_bundle.tokenizer)[0] != key

    fewer = apply_method(copy.deepcopy(tiny_bundle.model), "focus_adapter", layers=(-1,))
    assert cache_key(fewer, colour_data, tiny_bundle.transform, tiny_bundle.tokenizer)[0] != key
    # trained branch weights do not change what the backbone computes: same key
    with torch.no_grad():
        model.focus_adapter.image.gate.fill_(1.0)
    assert cache_key(model, colour_data, tiny_bundle.transform, tiny_bundle.tokenizer)[0] == key
    assert len(clear_cache(cache_dir)) == 3 and not any(cache_dir.iterdir())


def test_interrupted_build_leaves_no_cache(model, colour_data, tiny_bundle, cache_dir, monkeypatch):
    def boom(tokens):
        raise KeyboardInterrupt  # e.g. the user stops the notebook while captions are encoded

    with monkeypatch.context() as m:
        m.setattr(model, "frozen_text_features", boom)
        with pytest.raises(KeyboardInterrupt):
            build(model, colour_data, tiny_bundle, cache_dir)
    assert list(cache_dir.iterdir()) == []  # image arrays were written, but only in the removed temp dir
    # a build killed outright leaves its temp dir: never read as a cache, removed by the next build
    (cache_dir / ".tmp-999999999-x").mkdir()
    live = cache_dir / f".tmp-{os.getppid()}-y_1"  # another process still building: left alone
    live.mkdir()
    key = cache_key(model, colour_data, tiny_bundle.transform, tiny_bundle.tokenizer)[0]
    (cache_dir / key).mkdir()  # an entry without meta.json is not complete
    with pytest.raises(FileNotFoundError):
        open_cache(cache_dir / key)
    calls = BackboneCalls(model)
    cache = build(model, colour_data, tiny_bundle, cache_dir)
    assert not cache.hit and calls.n > 0
    assert sorted(p.name for p in cache_dir.iterdir()) == sorted([key, live.name])


class Recording:
    """Mixin that records each step's loss."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        self.losses.append(out["contrastive_loss"].item())
        return out


class RecordingTask(Recording, ContrastiveTask):
    losses: list


class RecordingCachedTask(Recording, CachedSideBranchTask):
    losses: list


def test_cached_training_matches_uncached(model, colour_data, tiny_bundle, cache_dir):
    plain, cached = copy.deepcopy(model), copy.deepcopy(model)
    cfg = TrainConfig(epochs=1, batch_size=8, lr=1e-3, warmup_steps=1, progress=False, eval_every=0)
    task_a = RecordingTask(plain)
    task_a.losses = []
    fit(plain, tiny_bundle.tokenizer, colour_data, tiny_bundle.transform, cfg, task=task_a)
    cache = build(cached, colour_data, tiny_bundle, cache_dir)
    calls = BackboneCalls(cached)
    task_b = RecordingCachedTask(cached, cache)
    task_b.losses = []
    fit(cached, tiny_bundle.tokenizer, colour_data, tiny_bundle.transform, cfg, task=task_b)
    assert calls.n == 0  # training from the cache never runs the backbone
    assert len(task_a.losses) == len(task_b.losses) == 4
    assert task_a.losses[0] == pytest.approx(task_b.losses[0], abs=1e-6)  # step 0: frozen embeddings, fp32
    assert np.allclose(task_a.losses, task_b.losses, atol=2e-3)  # later steps: fp16 tokens
    # the trained models agree too (compared by what they compute: Adam moves a parameter whose gradient
    # is ~0 by up to lr per step in either direction, so single weights are not comparable)
    images = torch.stack([colour_data.images(tiny_bundle.transform)[i]["image"] for i in range(8)])
    tokens = tiny_bundle.tokenizer(colour_data.captions[:8])
    plain.eval(), cached.eval()
    with torch.no_grad():
        for a, b in [(plain.encode_image(images, normalize=True), cached.encode_image(images, normalize=True)),
                     (plain.encode_text(tokens, normalize=True), cached.encode_text(tokens, normalize=True))]:
            assert torch.allclose(a, b, atol=1e-4)


def test_the_folded_down_projection_is_layernorm_and_down_per_tap_up_to_rounding(model):
    # the branch (from pixels or from a cache) computes normalised taps side by side through one down
    # projection with the norms' scale and shift folded in: per tap LayerNorm + down, summed, for any norm
    torch.manual_seed(0)
    branch = copy.deepcopy(model.focus_adapter.image)
    with torch.no_grad():
        for norm in branch.norms:
            norm.weight.uniform_(0.5, 1.5), norm.bias.normal_()
    taps = [torch.randn(3, 17, 64) * 4 + 1 for _ in branch.downs]

    def per_tap():
        return branch.block(sum(down(norm(x)) for x, norm, down in zip(taps, branch.norms, branch.downs)))

    grads, outs = [], []
    for forward in (per_tap, lambda: branch.tokens(taps)):
        branch.zero_grad()
        out = forward()
        out.square().sum().backward()
        outs.append(out.detach())
        grads.append({n: p.grad.clone() for n, p in branch.named_parameters() if p.grad is not None})
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-5)
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:  # and so are the gradients of every parameter
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-3, rtol=1e-4, msg=n)


def test_cached_task_refuses_misuse(model, colour_data, tiny_bundle, cache_dir):
    cache = build(model, colour_data, tiny_bundle, cache_dir)
    task = CachedSideBranchTask(model, cache)
    assert task.inputs == Inputs(pixels=False, tokens=False)  # fit loads no image, tokenises nothing
    with pytest.raises(IndexError, match="beyond the cache"):
        task(Batch(image_ids=torch.tensor([0, 99]), caption_ids=torch.tensor([0, 1]), captions=["a", "b"]))
    fewer = apply_method(copy.deepcopy(tiny_bundle.model), "focus_adapter", layers=(-1,))
    with pytest.raises(ValueError, match="holds layers"):
        CachedSideBranchTask(fewer, cache)
    with pytest.raises(TypeError, match="no side branch"):
        build(copy.deepcopy(tiny_bundle.model), colour_data, tiny_bundle, cache_dir)


@pytest.mark.slow
def test_time_epochs_reports_both_runs(model, colour_data, tiny_bundle, cache_dir):
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    out = time_epochs(model, tiny_bundle.tokenizer, colour_data, tiny_bundle.transform, epochs=2,
                      batch_size=8, cache_dir=cache_dir)
    assert len(out["uncached_seconds"]) == len(out["cached_seconds"]) == 2
    assert out["speedup"] > 0 and out["cache_build_seconds"] > 0 and not out["cache_hit"]
    assert np.allclose(out["uncached_loss"], out["cached_loss"], atol=2e-3)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # trains copies only


@pytest.mark.slow
def test_run_method_trains_side_branches_from_the_cache(colour_data, tmp_path, monkeypatch):
    from rsretrieval.experiments import run_method, trains_from_cache

    monkeypatch.setenv("RSR_HOME", str(tmp_path / "home"))  # the cache goes there
    assert trains_from_cache("focus_adapter", "recycling") and trains_from_cache("cmer", "infonce")
    assert trains_from_cache("cmer", "cmer") == "images" and not trains_from_cache("mrs_adapter", "infonce")
    cfg = {"epochs": 1, "batch_size": 8, "lr": 1e-3, "warmup_steps": 1, "progress": False, "device": "cpu"}
    runs = {cached: run_method("tiny", None, "focus_adapter", colour_data, colour_data, colour_data, cfg,
                               run_dir=tmp_path / f"run-{cached}", cache_features=cached) for cached in (True, False)}
    assert runs[True]["identity"]["cached_features"] and not runs[False]["identity"]["cached_features"]
    assert any((tmp_path / "home" / "cache").iterdir())
    losses = [runs[c]["history"]["records"][0]["train_loss"] for c in (True, False)]
    assert losses[0] == pytest.approx(losses[1], abs=2e-3)  # the same training, up to the fp16 cache


@pytest.mark.slow
def test_scene_captions_read_only_the_images_from_the_cache(colour_data, tmp_path, monkeypatch):
    from rsretrieval.experiments import run_method, trains_from_cache

    monkeypatch.setenv("RSR_HOME", str(tmp_path / "home"))
    assert trains_from_cache("cmer", "cmer") == "images"
    cfg = {"epochs": 1, "batch_size": 8, "lr": 1e-3, "warmup_steps": 1, "progress": False, "device": "cpu"}
    runs = {cached: run_method("tiny", None, "cmer", colour_data, colour_data, colour_data, cfg,
                               loss_kwargs={"scene_prob": 1.0, "queue_size": 16}, run_dir=tmp_path / f"run-{cached}",
                               cache_features=cached) for cached in (True, False)}
    assert runs[True]["identity"]["cached_features"] == "images"
    losses = [runs[c]["history"]["records"][0]["train_loss"] for c in (True, False)]
    assert losses[0] == pytest.approx(losses[1], abs=2e-3)


@pytest.mark.parametrize("method", ["linear_probe", "clip_adapter"])
def test_methods_on_pooled_outputs_train_from_them_as_from_pixels(method, colour_data, tmp_path):
    from rsretrieval.experiments import run_method, trains_from_cache

    assert trains_from_cache(method, "infonce") == "pooled" and not trains_from_cache(method, "hmmc")
    cfg = {"epochs": 2, "batch_size": 8, "lr": 1e-2, "warmup_steps": 1, "progress": False, "device": "cpu"}
    runs = {cached: run_method("tiny", None, method, colour_data, colour_data, colour_data, cfg,
                               run_dir=tmp_path / f"run-{cached}", cache_features=cached) for cached in (True, False)}
    assert runs[True]["identity"]["cached_features"] == "pooled" and not runs[False]["identity"]["cached_features"]
    for key in ("train_loss", "val_mr"):
        got = [r[key] for r in runs[True]["history"]["records"]]
        want = [r[key] for r in runs[False]["history"]["records"]]
        assert got == pytest.approx(want, abs=1e-4), key  # the same training: only the towers' work is saved
    assert runs[True]["test"]["mr"] == pytest.approx(runs[False]["test"]["mr"], abs=1e-4)
    assert runs[True]["trainable"] == runs[False]["trainable"]
