"""Negative sample recycling: the FIFO queue, same-image masking, hand-checked loss values, resume."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F

from rsretrieval.training.losses import InfoNCELoss
from rsretrieval.cmer.recycling import (
    EmbeddingQueue,
    RecyclingLoss,
    effective_negatives,
    embedding_drift,
    queue_memory_bytes,
    steps_held,
)
from fakedata import make_batch
from rsretrieval.training.tasks import build_task
from rsretrieval.training import ContrastiveTask, TrainConfig, fit

E1, E2 = torch.eye(2)


def _close(x: torch.Tensor, value: float) -> None:
    torch.testing.assert_close(x, torch.tensor(value), atol=1e-6, rtol=0)


def _batch(b: int, d: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    img, txt = torch.randn(b, d, generator=g), torch.randn(b, d, generator=g)
    return F.normalize(img, dim=-1), F.normalize(txt, dim=-1)


# ------------------------------------------------------------------------------------------ the queue

def test_queue_fifo_order_and_wraparound():
    q = EmbeddingQueue(3, 2)
    assert q.valid == 0 and q.features.shape == (0, 2) and q.image_ids.tolist() == []
    q.enqueue(torch.tensor([[1.0, 0], [2, 0]]), torch.tensor([10, 11]))
    assert q.valid == 2 and q.image_ids.tolist() == [10, 11]
    q.enqueue(torch.tensor([[3.0, 0], [4, 0]]), torch.tensor([12, 13]), scene_ids=torch.tensor([5, 6]))
    # capacity 3: the oldest (10) made room; reading is oldest first across the wrap point
    assert q.valid == 3
    assert q.image_ids.tolist() == [11, 12, 13]
    assert q.features[:, 0].tolist() == [2.0, 3.0, 4.0]
    assert q.scene_ids.tolist() == [-1, 5, 6]
    assert q.ages().tolist() == [1, 0, 0]
    q.enqueue(torch.tensor([[5.0, 0]]), torch.tensor([14]))
    assert q.image_ids.tolist() == [12, 13, 14] and q.ages().tolist() == [1, 1, 0]
    # a batch bigger than the queue keeps its newest rows
    q.enqueue(torch.arange(10.0).repeat(2, 1).t(), torch.arange(20, 30))
    assert q.image_ids.tolist() == [27, 28, 29] and q.features[:, 0].tolist() == [7.0, 8.0, 9.0]
    q.reset()
    assert q.valid == 0
    with pytest.raises(ValueError, match="dim"):
        q.enqueue(torch.zeros(1, 5), torch.tensor([0]))
    with pytest.raises(ValueError, match="size"):
        EmbeddingQueue(0, 2)


def test_queue_stores_detached_float32_and_learns_its_dim():
    q = EmbeddingQueue(4)  # dim from the first batch
    x = torch.randn(2, 6, requires_grad=True).to(torch.bfloat16)
    q.enqueue(x, torch.tensor([0, 1]))
    assert q.features.shape == (2, 6) and q.features.dtype == torch.float32 and not q.features.requires_grad


def test_queue_state_dict_round_trip_into_a_lazy_queue():
    q = EmbeddingQueue(4, 3)
    for k in range(3):  # wraps around once
        q.enqueue(torch.full((2, 3), float(k)), torch.tensor([2 * k, 2 * k + 1]))
    buffer = io.BytesIO()
    torch.save(q.state_dict(), buffer)
    buffer.seek(0)
    r = EmbeddingQueue(4)  # lazy: takes dim 3 from the file
    r.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(r.features, q.features)
    assert r.image_ids.tolist() == q.image_ids.tolist() == [2, 3, 4, 5]
    assert torch.equal(r.ages(), q.ages())
    for m in (q, r):  # and both continue identically
        m.enqueue(torch.ones(1, 3), torch.tensor([9]))
    assert r.image_ids.tolist() == q.image_ids.tolist() == [3, 4, 5, 9]
    with pytest.raises(RuntimeError, match="size mismatch"):
        EmbeddingQueue(5, 3).load_state_dict(q.state_dict())


# ------------------------------------------------------------------------------------------ the loss

def test_empty_queue_gives_the_plain_batch_loss():
    img, txt = _batch(4)
    ids = torch.tensor([0, 1, 0, 2])  # two captions of image 0: masked in the batch loss
    plain = InfoNCELoss()(img, txt, torch.tensor(10.0), ids)
    out = RecyclingLoss(queue_size=16)(img, txt, torch.tensor(10.0), ids)
    assert set(out) == {"contrastive_loss", "queue_loss"}
    torch.testing.assert_close(out["contrastive_loss"], plain["contrastive_loss"])
    _close(out["queue_loss"], 0.0)


def test_queue_loss_2x2_by_hand():
    # batch: images v = [e1, e2], captions t = [e1, e2], ids [0, 1], scale s = 1
    # both queues hold [e2 (image 7), e1 (image 0)]; the e1 entry belongs to image 0 -> masked for pair 0
    # i2t pair 0: positive <e1,e1> = 1, negatives: e2 -> 0 (e1 of image 0 masked)
    #             -log(e^1 / (e^1 + e^0))            = log(1 + e^-1)  = 0.31326
    # i2t pair 1: positive <e2,e2> = 1, negatives: e2 (image 7) -> 1, e1 (image 0) -> 0
    #             -log(e^1 / (e^1 + e^1 + e^0))      = log(2 + e^-1)  = 0.86199
    # t2i is the same (t = v, same queue contents): L_queue = (0.31326 + 0.86199) / 2 = 0.58763
    # batch InfoNCE: rows [1, 0] -> log(1 + e^-1) = 0.31326 in both directions
    loss = RecyclingLoss(queue_size=4, dim=2)
    for queue in (loss.image_queue, loss.text_queue):
        queue.enqueue(torch.stack([E2, E1]), torch.tensor([7, 0]))
    v, t = torch.eye(2), torch.eye(2)
    out = loss(v, t, torch.tensor(1.0), torch.tensor([0, 1]))
    expected = (math.log(1 + math.exp(-1)) + math.log(2 + math.exp(-1))) / 2
    _close(out["queue_loss"], expected)
    _close(out["contrastive_loss"], math.log(1 + math.exp(-1)))
    assert loss.text_queue.image_ids.tolist() == [7, 0, 0, 1]  # the batch was enqueued after the loss
    # without the mask the e1 entry is a (false) negative of pair 0, scoring as high as its positive:
    # -log(e^1 / (e^1 + e^0 + e^1)) = log(2 + e^-1), the same as pair 1
    unmasked = RecyclingLoss(queue_size=4, dim=2, mask_same_image=False)
    for queue in (unmasked.image_queue, unmasked.text_queue):
        queue.enqueue(torch.stack([E2, E1]), torch.tensor([7, 0]))
    expected_unmasked = math.log(2 + math.exp(-1))
    _close(unmasked(v, t, torch.tensor(1.0), torch.tensor([0, 1]))["queue_loss"], expected_unmasked)
    weighted = RecyclingLoss(queue_size=4, dim=2, weight=0.5)
    for queue in (weighted.image_queue, weighted.text_queue):
        queue.enqueue(torch.stack([E2, E1]), torch.tensor([7, 0]))
    _close(weighted(v, t, torch.tensor(1.0), torch.tensor([0, 1]))["queue_loss"], 0.5 * expected)


def test_same_image_queue_entries_are_never_negatives():
    img, txt = _batch(3)
    ids = torch.tensor([4, 5, 6])
    loss = RecyclingLoss(queue_size=8)
    # the queue holds image 4's own embeddings (an earlier step's pair) and another caption of image 4
    for queue, feats in ((loss.image_queue, img), (loss.text_queue, txt)):
        queue.enqueue(torch.cat([feats[:1], F.normalize(torch.randn(1, 8), dim=-1)]), torch.tensor([4, 4]))
    v, t = img.clone().requires_grad_(), txt.clone().requires_grad_()
    loss.queue_loss(v, t, torch.tensor(10.0), ids).backward()
    # every queue entry belongs to image 4: pair 0 keeps only its positive (zero loss, zero gradient) ...
    assert torch.equal(v.grad[0], torch.zeros(8)) and torch.equal(t.grad[0], torch.zeros(8))
    # ... while pairs 1 and 2 see both entries as negatives
    assert v.grad[1].abs().sum() > 0 and t.grad[2].abs().sum() > 0
    only_own = RecyclingLoss(queue_size=8)
    for queue, feats in ((only_own.image_queue, img), (only_own.text_queue, txt)):
        queue.enqueue(feats[:1], torch.tensor([4]))
    _close(only_own.queue_loss(img[:1], txt[:1], torch.tensor(10.0), ids[:1]), 0.0)  # as with an empty queue


def test_batch_size_and_queue_size_are_independent():
    loss = RecyclingLoss(queue_size=5)
    valid = []
    for k, b in enumerate([2, 3, 7, 1]):
        img, txt = _batch(b, seed=k)
        out = loss(img, txt, torch.tensor(10.0), torch.arange(10 * k, 10 * k + b))
        assert torch.isfinite(out["queue_loss"]) and out["queue_loss"] >= 0
        valid.append(loss.text_queue.valid)
    assert valid == [2, 5, 5, 5]
    assert loss.text_queue.image_ids.tolist() == [23, 24, 25, 26, 30]
    big = RecyclingLoss(queue_size=1000)  # queue much larger than the batch: it simply fills up
    for k in range(3):
        img, txt = _batch(4, seed=k)
        big(img, txt, torch.tensor(10.0), torch.arange(4 * k, 4 * k + 4))
    assert big.image_queue.valid == 12


def test_gradients_only_reach_the_current_batch_and_eval_mode_does_not_enqueue():
    loss = RecyclingLoss(queue_size=8)
    img, txt = _batch(4)
    loss(img, txt, torch.tensor(10.0), torch.arange(4))
    v, t = _batch(4, seed=1)
    v.requires_grad_()
    out = loss(v, t, torch.tensor(10.0), torch.arange(4, 8))
    sum(out.values()).backward()
    assert v.grad is not None and not loss.image_queue.feats.requires_grad
    loss.eval()
    loss(v.detach(), t, torch.tensor(10.0), torch.arange(8, 12))
    assert loss.image_queue.valid == 8 and loss.image_queue.image_ids.tolist()[-1] == 7


def test_recycling_loss_state_dict_round_trip_gives_the_same_next_step():
    a = RecyclingLoss(queue_size=6)
    for k in range(4):
        img, txt = _batch(4, seed=k)
        a(img, txt, torch.tensor(10.0), torch.arange(4 * k, 4 * k + 4))
    b = RecyclingLoss(queue_size=6)  # lazy dim, as a freshly built task after a restart
    b.load_state_dict(a.state_dict())
    img, txt = _batch(4, seed=9)
    out_a = a(img, txt, torch.tensor(10.0), torch.arange(100, 104))
    out_b = b(img, txt, torch.tensor(10.0), torch.arange(100, 104))
    assert out_a["queue_loss"] > 0
    torch.testing.assert_close(out_a["queue_loss"], out_b["queue_loss"], rtol=0, atol=0)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key


def test_helpers():
    assert effective_negatives(32, 0) == 31 and effective_negatives(32, 1024) == 1055
    with pytest.raises(ValueError):
        effective_negatives(0, 10)
    assert queue_memory_bytes(1024, 512) == 2 * 1024 * (512 * 4 + 32)
    assert steps_held(32, 1024) == 32 and steps_held(48, 100) == 3
    x = F.normalize(torch.randn(5, 8), dim=-1)
    assert embedding_drift(x, x) == pytest.approx(1.0)
    assert embedding_drift(x, -x) == pytest.approx(-1.0)


# ---------------------------------------------------------------------------------- registry and training

def test_recycling_task_from_the_registry(tiny):
    model, images, tokens = tiny
    task, other = (build_task("recycling", model, queue_size=6, weight=0.5) for _ in range(2))
    assert isinstance(task, ContrastiveTask) and isinstance(task.loss, RecyclingLoss)
    assert task.loss is not other.loss  # each task its own queue
    assert task.loss.image_queue.feats.shape == (6, 64)  # dim taken from the model: allocated up front
    task.train()
    ids = torch.tensor([0, 1, 0, 2])
    first = task(make_batch(images, tokens, ids))
    assert set(first) == {"contrastive_loss", "queue_loss"} and float(first["queue_loss"].detach()) == 0
    second = task(make_batch(images, tokens, torch.tensor([3, 4, 5, 6])))
    assert float(second["queue_loss"].detach()) > 0
    assert task.loss.text_queue.valid == 6 and other.loss.text_queue.valid == 0
    with pytest.raises(ValueError, match="margn"):
        build_task("recycling", model, margn=1)


@pytest.mark.slow
def test_fit_with_recycling(colour_data, tiny_bundle):
    torch.manual_seed(0)
    model = copy.deepcopy(tiny_bundle.model)
    task = build_task("recycling", model, queue_size=16)
    cfg = TrainConfig(epochs=1, batch_size=8, lr=1e-3, warmup_steps=1, max_steps=3, progress=False,
                      eval_every=0)
    history = fit(model, tiny_bundle.tokenizer, colour_data, tiny_bundle.transform, cfg, task=task)
    assert history.records[-1]["updates"] == 3
    assert task.loss.image_queue.valid == 16 and task.loss.image_queue.ages().max() == 1


def test_max_age_leaves_out_stale_entries():
    loss = RecyclingLoss(queue_size=8, max_age=0)  # only the previous step's batch counts
    unbounded = RecyclingLoss(queue_size=8)
    old_img, old_txt = _batch(2, seed=1)
    new_img, new_txt = _batch(2, seed=2)
    for m in (loss, unbounded):
        m(old_img, old_txt, torch.tensor(10.0), torch.tensor([0, 1]))
        m(new_img, new_txt, torch.tensor(10.0), torch.tensor([2, 3]))
    assert loss.text_queue.ages().tolist() == [1, 1, 0, 0]
    probe_img, probe_txt = _batch(2, seed=3)
    ids = torch.tensor([4, 5])
    only_new = RecyclingLoss(queue_size=8)
    only_new.image_queue.enqueue(new_img, torch.tensor([2, 3]))
    only_new.text_queue.enqueue(new_txt, torch.tensor([2, 3]))
    torch.testing.assert_close(loss.queue_loss(probe_img, probe_txt, torch.tensor(10.0), ids),
                               only_new.queue_loss(probe_img, probe_txt, torch.tensor(10.0), ids))
    assert not torch.allclose(unbounded.queue_loss(probe_img, probe_txt, torch.tensor(10.0), ids),
                              only_new.queue_loss(probe_img, probe_txt, torch.tensor(10.0), ids))
    with pytest.raises(ValueError, match="max_age"):
        RecyclingLoss(max_age=-1)


@pytest.mark.slow
def test_fit_resume_restores_the_queue(colour_data, tiny_bundle, tmp_path):
    # fit's checkpoints hold the queues (a TrainingState), so a resumed run continues with them
    # (bit-exactness against an uninterrupted run: tests/test_train.py)
    cfg = TrainConfig(epochs=2, batch_size=8, lr=1e-3, warmup_steps=1, max_steps=6, progress=False, eval_every=0,
                      checkpoint_every_steps=2, output_dir=str(tmp_path / "run"))
    torch.manual_seed(0)
    model = copy.deepcopy(tiny_bundle.model)
    first = build_task("recycling", model, queue_size=16)
    calls = {"n": 0}

    def crash(*_):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the third step never ends; the checkpoint after step 2 survives

    first.register_forward_pre_hook(crash)
    with pytest.raises(KeyboardInterrupt):
        fit(model, tiny_bundle.tokenizer, colour_data, tiny_bundle.transform, cfg, task=first)
    model = copy.deepcopy(tiny_bundle.model)
    second = build_task("recycling", model, queue_size=16)
    history = fit(model, tiny_bundle.tokenizer, colour_data, tiny_bundle.transform, cfg, task=second)
    assert history.records[-1]["updates"] == 6
    assert second.loss.image_queue.calls == 6 and second.loss.image_queue.valid == 16  # 2 restored + 4 new


def test_queue_warmup_fills_the_queue_before_its_loss_counts():
    loss = RecyclingLoss(queue_size=16, warmup_steps=2).train()
    scale, ids = torch.tensor(10.0), torch.arange(4)
    seen = []
    for step in range(3):
        img, txt = _batch(4, seed=step)
        seen.append(float(loss(img, txt, scale, ids + 4 * step)["queue_loss"]))
    assert seen[0] == 0.0 and seen[1] == 0.0 and seen[2] > 0  # steps 0 and 1 only fill the queue
    assert loss.image_queue.valid == 12
    assert float(loss.eval()(img, txt, scale, ids + 20)["queue_loss"]) > 0  # evaluation always counts it
    with pytest.raises(ValueError, match="warmup_steps must be >= 0"):
        RecyclingLoss(warmup_steps=-1)
