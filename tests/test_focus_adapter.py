"""The Focus-Adapter side branch (our reconstruction of CMER's) on the tiny CLIP."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from rsretrieval.methods import apply_method, get_applied_method, get_method, load_method, save_method
from rsretrieval.cmer.focus_adapter import (
    FocusAdapterCLIP,
    FocusAdapterConfig,
    FocusPool,
    focus_mass_on_objects,
    remember_frozen_features,
    resolve_layers,
)
from rsretrieval.data.synthrs import object_masks
from rsretrieval.training import ContrastiveTask
from fakedata import make_batch

CAPTIONS = ["a red field", "two white planes near a runway", "a red field again", "green trees"]
IDS = torch.tensor([0, 1, 0, 2])


@pytest.fixture
def base(tiny_bundle):
    return copy.deepcopy(tiny_bundle.model)


@pytest.fixture(scope="module")
def images():
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def tokens(tiny_bundle):
    return tiny_bundle.tokenizer(CAPTIONS)


def embeddings(model, images, tokens):
    model.eval()
    with torch.no_grad():
        return model.encode_image(images, normalize=True), model.encode_text(tokens, normalize=True)


def open_gates(model, value=1.0):
    with torch.no_grad():
        for branch in (model.focus_adapter.image, model.focus_adapter.text):
            branch.gate.fill_(value)


@pytest.mark.parametrize("name", ["focus_adapter", "cmer"])
def test_step_zero_is_frozen_clip_and_re_classes(name, base, images, tokens):
    ref = embeddings(copy.deepcopy(base), images, tokens)
    model = apply_method(base, name)
    assert isinstance(model, FocusAdapterCLIP) and get_method(name).starts_at_base
    got = embeddings(model, images, tokens)
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    assert model.tapped_layers == {"visual": (0, 1), "text": (0, 1)}  # tiny: 2 blocks per tower, all tapped


def test_gate_scale_keeps_step_zero_and_multiplies_the_gate(base, images, tokens):
    ref = embeddings(copy.deepcopy(base), images, tokens)
    offsets = {}
    for scale in (1.0, 64.0):
        torch.manual_seed(0)  # the same branch weights for both scales
        model = apply_method(copy.deepcopy(base), "focus_adapter", gate_scale=scale)
        got = embeddings(model, images, tokens)
        assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])  # the zero gate hides the branch
        with torch.no_grad():
            model.focus_adapter.image.gate.fill_(0.01)
            frozen, taps = model.frozen_image_features(images)
            offsets[scale] = model.focus_adapter.image_from_features(frozen, taps) - frozen
    assert torch.allclose(offsets[64.0], 64 * offsets[1.0], rtol=1e-3, atol=1e-5)
    assert offsets[1.0].abs().max() > 1e-3
    with pytest.raises(ValueError, match="gate_scale"):
        apply_method(copy.deepcopy(base), "focus_adapter", gate_scale=0.0)


def test_outlier_init_tilts_the_focus_but_keeps_frozen_clip(base, images, tokens):
    ref = embeddings(copy.deepcopy(base), images, tokens)
    model = apply_method(base, "focus_adapter", outlier_init=1.0)
    got = embeddings(model, images, tokens)
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])  # the zero gate hides the branch
    maps = model.focus_map(images).flatten(1)
    outlier = model.focus_map(images, kind="outlier").flatten(1)
    assert not torch.allclose(maps, torch.full_like(maps, 1 / 16))
    assert torch.equal(maps.argmax(1), outlier.argmax(1))  # the most outlying patch weighs most


def test_only_branch_trains_and_backbone_is_untouched(base, images, tokens):
    model = apply_method(base, "focus_adapter")
    names = set(get_applied_method(model).param_names)
    assert names and all(n.startswith("focus_adapter.") for n in names)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == names
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    task = ContrastiveTask(model).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    for _ in range(2):  # step 1 moves the zero gate, step 2 everything behind it
        opt.zero_grad()
        sum(task(make_batch(images, tokens, IDS)).values()).backward()
        opt.step()
    for n, p in model.named_parameters():
        if n in names:
            assert not torch.equal(p, before[n]), f"{n} did not train"
        else:
            assert torch.equal(p, before[n]) and p.grad is None, n


def _saved_tensors(fn) -> int:
    count = 0

    def pack(t):
        nonlocal count
        count += 1
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    assert out.requires_grad
    return count


def test_no_autograd_graph_through_the_backbone(base, images, tokens):
    model = apply_method(base, "focus_adapter").train()
    open_gates(model)
    frozen, taps = model.frozen_image_features(images)
    assert frozen.grad_fn is None and not frozen.requires_grad
    assert len(taps) == 2 and all(t.grad_fn is None and not t.requires_grad for t in taps)
    assert taps[0].shape == (4, 1 + 16, 64)  # [N, 1 + P, D], class token first
    t_frozen, t_taps, eot = model.frozen_text_features(tokens)
    assert t_frozen.grad_fn is None and all(not t.requires_grad for t in t_taps)
    assert t_taps[0].shape[1] == int(eot.max()) + 1  # cut after the batch's last EOT
    # every tensor autograd keeps for backward belongs to the branch: the full encode saves exactly
    # as many as the branch alone on the same (pre-computed) frozen features
    full = _saved_tensors(lambda: model.encode_image(images))
    branch = _saved_tensors(lambda: model.focus_adapter.image_from_features(frozen, taps))
    assert full == branch > 0
    full_t = _saved_tensors(lambda: model.encode_text(tokens))
    branch_t = _saved_tensors(lambda: model.focus_adapter.text_from_features(t_frozen, t_taps, eot))
    assert full_t == branch_t > 0


def test_frozen_micro_batches_change_nothing(base, images, tokens):
    whole = apply_method(copy.deepcopy(base), "focus_adapter", frozen_batch=0)
    small = apply_method(copy.deepcopy(base), "focus_adapter", frozen_batch=3)  # 4 samples: chunks of 3 and 1
    assert small.focus_adapter.frozen_batch(images) == 3 and whole.focus_adapter.frozen_batch(images) == 4
    assert apply_method(copy.deepcopy(base), "focus_adapter").focus_adapter.frozen_batch(images) == 16  # CPU
    pairs = [(whole.frozen_image_features(images), small.frozen_image_features(images)),
             (whole.frozen_text_features(tokens)[:2], small.frozen_text_features(tokens)[:2])]
    for (a, ta), (b, tb) in pairs:  # the same up to float rounding: kernels block a smaller batch differently
        assert torch.allclose(a, b, atol=1e-5)
        assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(ta, tb))
        assert [x.shape for x in ta] == [y.shape for y in tb]


def test_remembered_frozen_features_are_bit_for_bit_and_shared_by_runs_of_one_backbone(base, images, tokens,
                                                                                       monkeypatch):
    runs = [apply_method(copy.deepcopy(base), "focus_adapter") for _ in range(2)]
    for k, run in enumerate(runs):
        open_gates(run, 0.5 + k)  # two different branches on one frozen backbone
    plain = [embeddings(run, images, tokens) for run in runs]
    forwards = []  # calls of either run's first frozen image block
    call = torch.nn.Module.__call__

    def counting(module, *args, **kwargs):
        if any(module is run.visual.transformer.resblocks[0] for run in runs):
            forwards.append(module)
        return call(module, *args, **kwargs)

    store = {}
    monkeypatch.setattr(torch.nn.Module, "__call__", counting)
    remembered = []
    for run in runs:
        with remember_frozen_features(run, store):
            remembered.append(embeddings(run, images, tokens))
    monkeypatch.undo()
    for (a, b), (c, d) in zip(plain, remembered):
        assert torch.equal(a, c) and torch.equal(b, d)
    assert len(forwards) == 1  # the second run's frozen image forward was read back
    assert not hasattr(runs[0], "_rsr_frozen_memo")  # the store is let go of after the block
    other = copy.deepcopy(runs[1])
    with torch.no_grad():
        other.visual.transformer.resblocks[0].mlp.c_fc.weight.add_(1.0)  # another backbone: another key
    with remember_frozen_features(other, store):
        embeddings(other, images, tokens)
    assert len(store) == 2
    with remember_frozen_features(base, store) as same:  # no side branch: nothing to remember
        assert same is base and len(store) == 2


def test_focus_weights_shape_sum_and_start_uniform(base, images):
    model = apply_method(base, "focus_adapter")
    maps = model.focus_map(images)
    assert maps.shape == (4, 4, 4)  # [N, H_patches, W_patches]: 32 px / patch 8
    assert torch.allclose(maps.sum(dim=(1, 2)), torch.ones(4))
    assert torch.allclose(maps, torch.full_like(maps, 1 / 16))  # step 0: mean pooling
    assert model.focus_map(images, kind="outlier").shape == (4, 4, 4)
    with torch.no_grad():
        model.focus_adapter.focus.outlier_weight.fill_(1.0)
    maps = model.focus_map(images)
    assert torch.allclose(maps.sum(dim=(1, 2)), torch.ones(4)) and (maps > 0).all()
    assert not torch.allclose(maps, torch.full_like(maps, 1 / 16))


def test_focus_pooling_starts_as_mean_pooling(base, images):
    outs = {}
    for pooling in ("focus", "mean", "cls"):
        torch.manual_seed(0)  # same branch weights for each pooling: the focus layer draws no random numbers
        model = apply_method(copy.deepcopy(base), "focus_adapter", pooling=pooling)
        open_gates(model)
        with torch.no_grad():
            outs[pooling] = model.encode_image(images)
    assert torch.allclose(outs["focus"], outs["mean"], atol=1e-6)
    assert not torch.allclose(outs["cls"], outs["mean"], atol=1e-4)


def test_focus_layer_can_learn_to_favour_outliers():
    pool = FocusPool(bottleneck=8, temperature=0.1)
    patches = torch.zeros(1, 9, 8)
    patches[0, 4] = 3.0  # one small target on a flat background
    w0 = pool.weights(patches)
    assert torch.allclose(w0, torch.full_like(w0, 1 / 9))
    with torch.no_grad():
        pool.outlier_weight.fill_(0.5)
    w = pool.weights(patches)
    assert w[0, 4] > 0.9 and torch.allclose(w.sum(), torch.tensor(1.0))
    assert pool.last_outlier[0].argmax() == 4
    # the zero-initialised parameters get a gradient at step 0: the layer can move away from the mean
    pool = FocusPool(bottleneck=8, temperature=0.1)
    target = torch.randn(8)
    (pool(patches + 0.1 * torch.randn(1, 9, 8)) @ target).backward()
    assert pool.outlier_weight.grad is not None and pool.score.grad.abs().sum() > 0


def test_text_pooling_and_tapped_layers(base, images, tokens):
    torch.manual_seed(0)
    mean = apply_method(copy.deepcopy(base), "focus_adapter")
    torch.manual_seed(0)
    eot = apply_method(copy.deepcopy(base), "focus_adapter", text_pooling="eot", layers=(-1,))
    assert eot.tapped_layers == {"visual": (1,), "text": (1,)}
    for m in (mean, eot):
        open_gates(m)
    with torch.no_grad():
        assert not torch.allclose(mean.encode_text(tokens), eot.encode_text(tokens), atol=1e-4)
        # padding after the EOT never matters: the same caption in a batch of longer ones
        short = mean.encode_text(tokens[:1])
        assert torch.allclose(short, mean.encode_text(tokens)[:1], atol=1e-5)
    assert resolve_layers(4, 12) == (2, 5, 8, 11) and resolve_layers(4, 2) == (0, 1)
    assert resolve_layers((-1, 0, 11), 12) == (0, 11)


def test_image_only_branch(base, images, tokens):
    ref = embeddings(copy.deepcopy(base), images, tokens)
    model = apply_method(base, "focus_adapter", towers=("visual",))
    assert model.focus_adapter.text is None and model.tapped_layers["text"] == ()
    open_gates_image = model.focus_adapter.image.gate
    with torch.no_grad():
        open_gates_image.fill_(1.0)
    got = embeddings(model, images, tokens)
    assert torch.equal(got[1], ref[1]) and not torch.allclose(got[0], ref[0], atol=1e-4)


@pytest.mark.parametrize("overrides, match", [
    ({"pooling": "max"}, "pooling"),
    ({"text_pooling": "first"}, "text_pooling"),
    ({"layers": 0}, "must be > 0"),
    ({"layers": ()}, "empty"),
    ({"bottleneck": 0}, "must be > 0"),
    ({"focus_temperature": 0.0}, "must be > 0"),
    ({"layers": True}, "int or a sequence"),
    ({"frozen_batch": -1}, "frozen_batch"),
])
def test_config_validation(overrides, match):
    with pytest.raises(ValueError, match=match):
        FocusAdapterConfig(**overrides)


def test_layer_outside_the_tower_is_refused_before_editing(base):
    with pytest.raises(ValueError, match="outside a tower of 2 blocks"):
        apply_method(base, "focus_adapter", layers=(5,))
    assert type(base).__name__ == "CLIP" and not hasattr(base, "focus_adapter")


def test_save_load_round_trip_with_a_non_default_config(base, images, tokens, tmp_path):
    model = apply_method(copy.deepcopy(base), "focus_adapter", pooling="mean", layers=(-1,), bottleneck=16)
    with torch.no_grad():
        for p in model.focus_adapter.parameters():
            p.add_(0.1 * torch.randn_like(p))
    path = save_method(model, tmp_path / "fa.pt", base_name="tiny")
    fresh = load_method(copy.deepcopy(base), path, base_name="tiny")
    assert isinstance(fresh, FocusAdapterCLIP)
    assert get_applied_method(fresh).config == get_applied_method(model).config
    for a, b in zip(embeddings(model, images, tokens), embeddings(fresh, images, tokens)):
        assert torch.equal(a, b)


def test_focus_mass_on_objects_by_hand():
    maps = torch.tensor([[[0.7, 0.1], [0.1, 0.1]],
                         [[0.25, 0.25], [0.25, 0.25]]])  # [N=2, h=2, w=2]
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[0, 0, 0] = True  # image 0: one object pixel in the top-left patch (1/4 of it)
    masks[1, 2:, 2:] = True  # image 1: the whole bottom-right patch
    r = focus_mass_on_objects(maps, masks)
    assert r["per_image_focus"] == pytest.approx([0.7, 0.25])
    assert r["per_image_uniform"] == pytest.approx([0.25, 0.25])
    assert r["focus_share"] == pytest.approx(0.475) and r["uniform_share"] == pytest.approx(0.25)
    assert r["lift"] == pytest.approx(1.9)
    assert r["object_fraction"][0, 0, 0] == pytest.approx(0.25)
    # a patch needs more than min_fraction of object pixels to count
    r = focus_mass_on_objects(maps, masks, min_fraction=0.5)
    assert r["per_image_focus"] == pytest.approx([0.0, 0.25])
    with pytest.raises(ValueError, match="same N"):
        focus_mass_on_objects(maps, masks[:1])


def test_object_masks_read_synthrs_layout(tmp_path):
    import json

    from rsretrieval.data.dataset import CaptionDataset

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    ids = np.zeros((8, 8), dtype=np.uint8)
    ids[:, :4] = 1  # a landmark (a river): not a small target
    ids[6, 6] = 2  # an object
    Image.fromarray(ids).save(tmp_path / "masks" / "port_0.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "port_0.png")
    (tmp_path / "objects.json").write_text(json.dumps({"port_0.png": [
        {"id": 1, "class": "river", "kind": "landmark"}, {"id": 2, "class": "boat", "kind": "object"}]}))
    data = CaptionDataset("synthrs", "test", [tmp_path / "images" / "port_0.png"], ["port"], ["a boat"], [0],
                          metadata={"objects_file": str(tmp_path / "objects.json")})
    masks = object_masks(data)
    assert masks.shape == (1, 8, 8) and masks.sum() == 1 and masks[0, 6, 6]
