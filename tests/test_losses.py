"""Hinge losses (VSE++, HMMC) on hand-checked cases, the HMMC two-view task and the loss registry."""

from __future__ import annotations

import copy

import pytest
import torch

from rsretrieval.training.losses import HMMCLoss, VSEHardNegativeLoss, hardest_negative_hinge
from fakedata import make_batch
from rsretrieval.training.tasks import HMMCTask, build_task, list_losses, token_dropout
from rsretrieval.training import ContrastiveTask, TrainConfig, fit

E1, E2, E3 = torch.eye(3)


def _close(x: torch.Tensor, value: float) -> None:
    torch.testing.assert_close(x, torch.tensor(value), atol=1e-6, rtol=0)


def test_hinge_2x2_by_hand():
    # a = [e1, e2], b = [e1, (0.8, 0.6)]: s = [[1, .8], [0, .6]], positives s11 = 1, s22 = .6
    # rows (anchor a_i):    a1: [.2 + .8 - 1]+ = 0       a2: [.2 + 0 - .6]+ = 0
    # columns (anchor b_j): b1: [.2 + 0 - 1]+ = 0        b2: [.2 + .8 - .6]+ = .4
    a = torch.eye(2)
    b = torch.tensor([[1.0, 0.0], [0.8, 0.6]])
    _close(hardest_negative_hinge(a, b, margin=0.2), 0.4)
    _close(VSEHardNegativeLoss()(a, 3 * b)["hinge_loss"], 0.4)  # cosine: the scale of b does not matter


def test_hinge_3x3_by_hand_takes_the_hardest_negative_only():
    # a = [e1, e2, e3], b = [e1, (.6, .8, 0), e3], margin .5: s = [[1, .6, 0], [0, .8, 0], [0, 0, 1]]
    # rows:    a1: max([.5+.6-1]+, [.5+0-1]+) = .1    a2: max([.5-.8]+, [.5-.8]+) = 0    a3: 0
    # columns: b1: 0                                  b2: max([.5+.6-.8]+, [.5+0-.8]+) = .3    b3: 0
    a = torch.stack([E1, E2, E3])
    b = torch.stack([E1, torch.tensor([0.6, 0.8, 0.0]), E3])
    _close(hardest_negative_hinge(a, b, margin=0.5), 0.4)
    # a sum over all negatives (not VSE++) would add nothing here; a mean would give .4 / 3: check neither
    # pairs 1 and 2 show the same image: (a1, b2) and (a2, b1) are no negatives any more, both terms vanish
    loss = VSEHardNegativeLoss(margin=0.5)(a, b, None, torch.tensor([7, 7, 9]))["hinge_loss"]
    _close(loss, 0.0)
    unmasked = VSEHardNegativeLoss(margin=0.5, mask_same_image=False)(a, b, None, torch.tensor([7, 7, 9]))
    _close(unmasked["hinge_loss"], 0.4)


def test_hmmc_loss_by_hand():
    v = torch.eye(2)
    t = torch.tensor([[1.0, 0.0], [0.8, 0.6]])
    v2 = v.clone()  # identical view: s = I, every hinge [.2 + 0 - 1]+ = 0
    # t vs t2 = [(.6, .8), e2]: s = [[.6, 0], [.96, .6]], positives .6
    # rows: t1: [.2 + 0 - .6]+ = 0, t2: [.2 + .96 - .6]+ = .56; columns: t2_1: [.2 + .96 - .6]+ = .56, t2_2: 0
    t2 = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    out = HMMCLoss()(v, t, v2, t2, torch.tensor([0, 1]))
    assert set(out) == {"cross_loss", "intra_image_loss", "intra_text_loss"}
    _close(out["cross_loss"], 0.4)
    _close(out["intra_image_loss"], 0.0)
    _close(out["intra_text_loss"], 1.12)
    masked = HMMCLoss()(v, t, v2, t2, torch.tensor([3, 3]))  # one image: nothing is a negative
    assert all(float(x) == 0 for x in masked.values())
    weighted = HMMCLoss(cross_weight=2.0, text_weight=0.5)(v, t, v2, t2, torch.tensor([0, 1]))
    _close(weighted["cross_loss"], 0.8)
    _close(weighted["intra_text_loss"], 0.56)


def test_hmmc_second_view_differs_only_in_train_mode_and_hooks_go_away(tiny):
    model, images, tokens = tiny
    hooked = [model.visual.transformer, model.transformer]
    model.eval()
    with torch.no_grad():
        v, t = model.encode_image(images), model.encode_text(tokens)
        with token_dropout(model, 0.2):
            assert all(len(m._forward_pre_hooks) == 1 for m in hooked)
            v2, t2 = model.encode_image(images), model.encode_text(tokens)
        assert torch.equal(v, v2) and torch.equal(t, t2)
        model.train()  # (train mode also leaves MultiheadAttention's eval fast path: compare within a mode)
        v_tr, t_tr = model.encode_image(images), model.encode_text(tokens)
        with token_dropout(model, 0.2):
            v3, t3 = model.encode_image(images), model.encode_text(tokens)
        assert not torch.allclose(v_tr, v3) and not torch.allclose(t_tr, t3)
        v4, t4 = model.encode_image(images), model.encode_text(tokens)  # hooks removed: no dropout left
        assert torch.equal(v_tr, v4) and torch.equal(t_tr, t4)
    assert all(len(m._forward_pre_hooks) == 0 for m in hooked)
    with pytest.raises(RuntimeError, match="boom"), token_dropout(model, 0.2):
        raise RuntimeError("boom")
    assert all(len(m._forward_pre_hooks) == 0 for m in hooked)


def test_hmmc_task_trains(tiny):
    model, images, tokens = tiny
    task = HMMCTask(model)
    task.train()
    out = task(make_batch(images, tokens, torch.tensor([0, 1, 0, 2])))
    assert set(out) == {"cross_loss", "intra_image_loss", "intra_text_loss"}
    total = sum(out.values())
    total.backward()
    assert model.visual.proj.grad is not None and model.text_projection.grad is not None
    with pytest.raises(ValueError, match="token_dropout"):
        HMMCTask(model, token_dropout=1.0)


def test_loss_registry(tiny):
    model, images, tokens = tiny
    assert list_losses() == ["infonce", "vsepp", "hmmc", "recycling", "cmer"]
    with pytest.raises(ValueError, match="unknown loss 'triplet'. Available: infonce, vsepp, hmmc, recycling, cmer"):
        build_task("triplet", model)
    with pytest.raises(ValueError, match="margn"):
        build_task("vsepp", model, margn=0.1)
    ids = torch.tensor([0, 1, 0, 2])
    for name, keys in [("infonce", {"contrastive_loss"}), ("vsepp", {"hinge_loss"}),
                       ("hmmc", {"cross_loss", "intra_image_loss", "intra_text_loss"})]:
        task = build_task(name, model)
        assert set(task(make_batch(images, tokens, ids))) == keys
    assert isinstance(build_task("vsepp", model, margin=0.1), ContrastiveTask)
    hmmc = build_task("hmmc", model, token_dropout=0.1, margin=0.3)
    assert hmmc.loss.margin == 0.3 and hmmc.token_dropout == 0.1


def test_fit_with_hmmc_and_a_method(colour_data, tiny_bundle):
    from rsretrieval.methods import apply_method

    torch.manual_seed(0)
    model = apply_method(copy.deepcopy(tiny_bundle.model), "mrs_adapter")
    cfg = TrainConfig(epochs=1, batch_size=8, lr=1e-3, warmup_steps=1, max_steps=2, progress=False, eval_every=0)
    history = fit(model, tiny_bundle.tokenizer, colour_data, tiny_bundle.transform, cfg,
                  task=build_task("hmmc", model))
    assert history.records[-1]["updates"] == 2
    assert history.records[-1]["train_loss"] > 0
