import copy

import pytest
import torch

from rsretrieval.errors import CheckpointError, StaleRunError
from rsretrieval.files import atomic_save
from rsretrieval.training.losses import InfoNCELoss, same_image_mask
from rsretrieval.models import create_model, freeze
from rsretrieval.data.dataset import CaptionDataset
from rsretrieval.training import (
    ContrastiveTask,
    Task,
    TrainConfig,
    check_resumable,
    epoch_order,
    fit,
    load_trainable_state_dict,
    trainable_state_dict,
)


def test_same_image_mask():
    mask = same_image_mask(torch.tensor([0, 1, 0, 2]))
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[0, 2] = expected[2, 0] = True
    assert torch.equal(mask, expected)


def test_infonce_hand_computed_and_masking():
    img = torch.eye(2)
    txt = torch.eye(2)
    out = InfoNCELoss()(img, txt, torch.tensor(1.0), torch.tensor([0, 1]))["contrastive_loss"]
    # each row: softmax over [1, 0] -> -log(e / (e + 1))
    expected = -torch.log(torch.e / (torch.e + torch.tensor(1.0)))
    assert torch.allclose(out, expected)
    # two captions of the same image: masked entries leave only the positive, so the loss is zero
    both = InfoNCELoss()(img, txt, torch.tensor(1.0), torch.tensor([5, 5]))["contrastive_loss"]
    assert torch.allclose(both, torch.tensor(0.0))
    unmasked = InfoNCELoss(mask_same_image=False)(img, txt, torch.tensor(1.0), torch.tensor([5, 5]))
    assert unmasked["contrastive_loss"] > 0.3


def test_epoch_order_is_seeded_and_sharded():
    a = epoch_order(10, seed=1, epoch=0)
    assert a == epoch_order(10, seed=1, epoch=0)
    assert a != epoch_order(10, seed=1, epoch=1)
    shards = epoch_order(10, 1, 0, rank=0, world=2) + epoch_order(10, 1, 0, rank=1, world=2)
    assert sorted(shards) == list(range(10))


def _cfg(tmp_path, **kw):
    base = dict(epochs=2, batch_size=4, lr=1e-3, warmup_steps=2, progress=False, output_dir=str(tmp_path),
                eval_every=0)
    base.update(kw)
    return TrainConfig(**base)


class _Crash(Exception):
    pass


class CrashingTask(ContrastiveTask):
    """Raises after a number of forward calls: an interruption in the middle of an epoch."""

    def __init__(self, model, crash_after=None):
        super().__init__(model)
        self._calls, self._crash_after = 0, crash_after  # private: not part of the run's identity

    def forward(self, *args):
        self._calls += 1
        if self._crash_after is not None and self._calls > self._crash_after:
            raise _Crash
        return super().forward(*args)


@pytest.mark.slow
def test_resume_after_interruption_is_exact(tmp_path, colour_data):
    torch.manual_seed(0)
    base = create_model("tiny")
    model_a, model_b = copy.deepcopy(base.model), copy.deepcopy(base.model)
    tf, tok = base.transform, base.tokenizer

    fit(model_a, tok, colour_data, tf, _cfg(tmp_path / "a"))

    # 32 pairs / batch 4 = 8 batches per epoch; checkpoint every 3 updates, crash in epoch 2
    cfg_b = _cfg(tmp_path / "b", checkpoint_every_steps=3)
    with pytest.raises(_Crash):
        fit(model_b, tok, colour_data, tf, cfg_b, task=CrashingTask(model_b, crash_after=11))
    fresh = copy.deepcopy(base.model)  # a new process would rebuild the model from scratch
    history = fit(fresh, tok, colour_data, tf, cfg_b, task=CrashingTask(fresh))
    for (name, pa), (_, pb) in zip(model_a.named_parameters(), fresh.named_parameters()):
        assert torch.equal(pa, pb), name
    assert [r["epoch"] for r in history.records] == [1, 2]
    assert history.records[-1]["updates"] == 16


class Crashing(Task):
    """Wraps any task and raises after a number of calls (the same wrapper keeps parameter names equal)."""

    def __init__(self, task, crash_after=None):
        torch.nn.Module.__init__(self)
        self.task, self.model, self._calls, self._crash_after = task, task.model, 0, crash_after
        self.inputs = task.inputs

    def rewrite_captions(self, captions, image_ids):
        return self.task.rewrite_captions(captions, image_ids)

    def forward(self, *args, **kwargs):
        self._calls += 1
        if self._crash_after is not None and self._calls > self._crash_after:
            raise _Crash
        return self.task(*args, **kwargs)


@pytest.mark.slow
def test_resume_restores_recycling_queues_exactly(tmp_path, colour_data):
    from rsretrieval.training.tasks import build_task

    torch.manual_seed(0)
    base = create_model("tiny")
    tf, tok = base.transform, base.tokenizer

    def make(model):
        return build_task("recycling", model, queue_size=12)

    model_a = copy.deepcopy(base.model)
    task_a = Crashing(make(model_a))
    fit(model_a, tok, colour_data, tf, _cfg(tmp_path / "a"), task=task_a)

    cfg_b = _cfg(tmp_path / "b", checkpoint_every_steps=3)
    model_b = copy.deepcopy(base.model)
    with pytest.raises(_Crash):
        fit(model_b, tok, colour_data, tf, cfg_b, task=Crashing(make(model_b), crash_after=11))
    fresh = copy.deepcopy(base.model)
    task_b = Crashing(make(fresh))
    fit(fresh, tok, colour_data, tf, cfg_b, task=task_b)
    for (name, pa), (_, pb) in zip(model_a.named_parameters(), fresh.named_parameters()):
        assert torch.equal(pa, pb), name
    queues_a, queues_b = task_a.state_dict(), task_b.state_dict()
    assert any("queue" in k for k in queues_a)
    for k in queues_a:
        assert torch.equal(queues_a[k], queues_b[k]), k


@pytest.mark.slow
def test_a_checkpoint_of_another_run_is_not_resumed(tmp_path, colour_data):
    from rsretrieval.methods import apply_method
    from rsretrieval.training import build_task

    torch.manual_seed(0)
    base = create_model("tiny")

    def task():  # the task a run of the same identity would build
        return ContrastiveTask(copy.deepcopy(base.model))

    cfg = _cfg(tmp_path, epochs=1)
    fit(copy.deepcopy(base.model), base.tokenizer, colour_data, base.transform, cfg)
    assert check_resumable(cfg, colour_data, task()) == tmp_path / "last.pt"
    # settings that do not change the computation may differ
    assert check_resumable(_cfg(tmp_path, epochs=1, device="cpu", eval_every=3, progress=True), colour_data, task())

    with pytest.raises(StaleRunError, match=r"lr: 0\.001 -> 0\.01.*delete"):
        fit(copy.deepcopy(base.model), base.tokenizer, colour_data, base.transform, _cfg(tmp_path, epochs=1, lr=1e-2))
    edited = CaptionDataset(colour_data.name, colour_data.split, colour_data.image_paths, colour_data.scenes,
                            ["a new caption"] + colour_data.captions[1:], colour_data.text_to_image)
    with pytest.raises(StaleRunError, match="training pairs"):
        check_resumable(cfg, edited, task())
    assert check_resumable(_cfg(tmp_path, epochs=1, resume=False), edited, task()) is None  # afresh

    # another loss, another method, other base weights: each is another run, named as such
    with pytest.raises(StaleRunError, match="loss or the task's settings changed.*VSEHardNegativeLoss"):
        check_resumable(cfg, colour_data, build_task("vsepp", copy.deepcopy(base.model)))
    with pytest.raises(StaleRunError, match="method: no method -> adapter"):
        check_resumable(cfg, colour_data, ContrastiveTask(apply_method(copy.deepcopy(base.model), "adapter")))
    other = copy.deepcopy(base.model)
    with torch.no_grad():
        other.logit_scale.add_(0.5)
    with pytest.raises(StaleRunError, match="weights at the start"):
        check_resumable(cfg, colour_data, ContrastiveTask(other))


@pytest.mark.slow
def test_training_lowers_loss_and_frozen_stays(tmp_path, colour_data):
    torch.manual_seed(0)
    bundle = create_model("tiny")
    freeze(bundle.model.visual)
    before = copy.deepcopy(bundle.model.visual.state_dict())
    hist = fit(bundle.model, bundle.tokenizer, colour_data, bundle.transform,
               _cfg(tmp_path, epochs=4, output_dir=None))
    losses = hist.column("train_loss")
    assert losses[-1] < losses[0]
    for k, v in bundle.model.visual.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_checkpoint_of_wrong_shape_is_a_clear_error():
    tiny = create_model("tiny").model
    state = trainable_state_dict(tiny)
    state["text_projection"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointError, match="wrong shape.*text_projection"):
        load_trainable_state_dict(tiny, state, source="x.pt")


def test_atomic_save_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "ck.pt"
    atomic_save({"a": torch.ones(2)}, target)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        atomic_save({"a": torch.zeros(2)}, target)
    assert torch.load(target, weights_only=True)["a"].sum() == 2  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]


def test_no_trainable_parameters_is_an_error(colour_data):
    bundle = create_model("tiny")
    freeze(bundle.model)
    with pytest.raises(ValueError, match="no trainable parameters"):
        fit(bundle.model, bundle.tokenizer, colour_data, bundle.transform, TrainConfig(epochs=1, progress=False))


@pytest.mark.parametrize("method", ["lora", "focus_adapter"])
def test_validation_decodes_once_and_keeps_a_side_branchs_frozen_forwards(tmp_path, colour_data, monkeypatch,
                                                                            method):
    """Each epoch's validation scores what a fresh evaluate() of the same weights scores, bit for bit,
    while the split is decoded once a run and a side branch's frozen backbone meets it once."""
    from rsretrieval.evaluation import evaluate
    from rsretrieval.methods import apply_method
    from rsretrieval.training import loop

    torch.manual_seed(0)
    base = create_model("tiny")
    model = apply_method(copy.deepcopy(base.model), method)
    decodes, scored, stores = [], [], []
    real_decode = loop.decoded_images
    monkeypatch.setattr(loop, "decoded_images", lambda *a: decodes.append(1) or real_decode(*a))
    if method == "focus_adapter":
        remember = model.remember_frozen
        model.remember_frozen = lambda store: stores.append(store) or remember(store)

    def on_epoch(record):  # the weights as they are when the epoch's validation ran
        scored.append(evaluate(model, colour_data, transform=base.transform, tokenizer=base.tokenizer,
                               batch_size=128, per_scene=False, progress=False).metrics)

    history = fit(model, base.tokenizer, colour_data, base.transform, _cfg(tmp_path, epochs=3, eval_every=1),
                  val_data=colour_data, on_epoch=on_epoch)
    assert len(decodes) == 1
    assert [{k: r[f"val_{k}"] for k in ("mr", "rsum", "i2t_r1", "t2i_r1")} for r in history.records] == \
        [{k: m[k] for k in ("mr", "rsum", "i2t_r1", "t2i_r1")} for m in scored]
    if method == "focus_adapter":  # one store for the run, holding what one pass over the split holds
        assert len(stores) == 3 and all(s is stores[0] for s in stores)
        once: dict = {}
        with remember(once):
            evaluate(model, colour_data, transform=base.transform, tokenizer=base.tokenizer, batch_size=128,
                     per_scene=False, progress=False)
        assert {k for k in next(iter(stores[0].values())) if isinstance(k, tuple)} == \
            {k for k in next(iter(once.values())) if isinstance(k, tuple)}
