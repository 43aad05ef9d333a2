"""One training loop for every transfer method.

Methods differ only in what they did to the model before training (which parameters train, which
modules were injected) and in the *task* that turns a :class:`~rsretrieval.training.tasks.Batch`
into losses. The loop never branches on a method or loss name.

Exact resume: the order of pairs in epoch ``e`` comes from a generator seeded with ``(seed, e)``
and checkpoints hold everything else (:mod:`rsretrieval.training.checkpoint`), so an interrupted
run continues to bit-identical weights on CPU.

Several processes: launch the same script with ``torchrun --nproc_per_node=N``; :func:`fit` joins
the process group torchrun describes (NCCL on GPUs, gloo on CPU), wraps the task in DDP, shards
every epoch's order by rank, and lets rank 0 alone evaluate and write.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from rsretrieval.data.dataset import CaptionDataset, open_image
from rsretrieval.evaluation.evaluate import decoded_images, evaluate
from rsretrieval.files import atomic_save, atomic_write_json
from rsretrieval.models.utils import autocast, count_parameters, seed_everything, select_device
from rsretrieval.training.checkpoint import (
    load_trainable_state_dict,
    load_training_state_dict,
    resume_checkpoint,
    rng_state,
    run_key,
    save_best,
    set_rng_state,
    trainable_state_dict,
    training_state_dict,
)
from rsretrieval.training.tasks import Batch, ContrastiveTask, Task

_logger = logging.getLogger(__name__)


OPTIMIZERS = ("adamw", "adam")
SCHEDULES = ("cosine", "step", "constant")


@dataclass
class TrainConfig:
    """Settings of one training run. Every field has a default fit for a CPU course run."""

    epochs: int = 5  # at most: with `patience`, training stops earlier
    stop_epoch: int | None = None  # stop after this epoch, the schedule still spanning `epochs` (a recipe's best)
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 0.05
    optimizer: str = "adamw"  # or "adam" (PE-RSITR's: Adam, with weight_decay as L2 in the gradient)
    schedule: str = "cosine"  # linear warm-up, then: "cosine" decay to lr * min_lr_ratio, "step" or "constant"
    warmup_steps: int = 20
    min_lr_ratio: float = 0.0
    step_epochs: tuple[int, ...] = ()  # "step": lr *= step_gamma after each of these epochs
    step_gamma: float = 0.1
    patience: int | None = None  # stop after this many validations without a better val mR (None: never)
    grad_accum: int = 1  # optimizer step every grad_accum batches
    clip_grad_norm: float | None = 1.0
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # mixed precision, used on CUDA only
    preload_images: bool = True  # decode + preprocess each image once (needs a deterministic transform)
    eval_every: int = 1  # epochs between validation runs (0: never)
    eval_batch_size: int = 128
    checkpoint_every_steps: int = 0  # extra mid-epoch checkpoints (0: only at epoch ends)
    max_steps: int | None = None  # stop early after this many optimizer steps (smoke runs)
    output_dir: str | None = None  # where last.pt / best.pt / history.json go (None: nothing written)
    resume: bool = True  # continue from output_dir/last.pt when it exists
    progress: bool = True

    def __post_init__(self) -> None:
        at_least = {"epochs": 1, "batch_size": 1, "eval_batch_size": 1, "grad_accum": 1, "warmup_steps": 0,
                    "eval_every": 0, "checkpoint_every_steps": 0}
        for name, low in at_least.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"TrainConfig.{name} must be an integer >= {low}, got {value!r}")
        for name, known in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES)):
            if getattr(self, name) not in known:
                raise ValueError(f"TrainConfig.{name} must be one of {', '.join(known)}, got {getattr(self, name)!r}")
        self.step_epochs = tuple(self.step_epochs)  # a list from JSON or the command line
        if not all(isinstance(e, int) and not isinstance(e, bool) and e >= 1 for e in self.step_epochs):
            raise ValueError(f"TrainConfig.step_epochs must be epochs >= 1, got {self.step_epochs!r}")
        if not 0 < self.step_gamma <= 1:
            raise ValueError(f"TrainConfig.step_gamma must be in (0, 1], got {self.step_gamma!r}")
        if self.patience is not None and (isinstance(self.patience, bool) or not isinstance(self.patience, int)
                                          or self.patience < 1):
            raise ValueError(f"TrainConfig.patience must be None or an integer >= 1, got {self.patience!r}")
        if self.stop_epoch is not None and (isinstance(self.stop_epoch, bool) or not isinstance(self.stop_epoch, int)
                                            or self.stop_epoch < 1):
            raise ValueError(f"TrainConfig.stop_epoch must be None or an integer >= 1, got {self.stop_epoch!r}")
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or self.max_steps < 1):
            raise ValueError(f"TrainConfig.max_steps must be None or an integer >= 1, got {self.max_steps!r}")
        if not self.lr > 0 or not self.weight_decay >= 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"TrainConfig needs lr > 0, weight_decay >= 0 and 0 <= min_lr_ratio <= 1; got "
                             f"{self.lr}, {self.weight_decay} and {self.min_lr_ratio}")
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            raise ValueError(f"TrainConfig.clip_grad_norm must be None or > 0, got {self.clip_grad_norm!r}")
        if self.output_dir is not None and Path(self.output_dir).exists() and not Path(self.output_dir).is_dir():
            raise ValueError(f"TrainConfig.output_dir {self.output_dir} is a file, not a run folder: "
                             "choose a folder (it is created if missing)")


@dataclass
class History:
    """What happened, epoch by epoch: losses, validation metrics, learning rate, speed."""

    records: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_mr: float | None = None

    def append(self, **record: Any) -> None:
        self.records.append(record)

    def column(self, key: str) -> list[Any]:
        return [r.get(key) for r in self.records]

    def to_dict(self) -> dict[str, Any]:
        return {"records": self.records, "best_epoch": self.best_epoch, "best_mr": self.best_mr}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> History:
        return cls(list(d.get("records", [])), d.get("best_epoch"), d.get("best_mr"))

    def plot(self):
        """Training loss and validation mR per epoch, as a matplotlib Figure."""
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.2))
        epochs = self.column("epoch")
        ax.plot(epochs, self.column("train_loss"), "o-", label="train loss")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        if any(v is not None for v in self.column("val_mr")):
            ax2 = ax.twinx()
            ax2.plot(epochs, self.column("val_mr"), "s-", color="tab:orange", label="val mR")
            ax2.set_ylabel("val mR (%)")
            ax2.legend(loc="upper right")
        ax.legend(loc="upper left")
        fig.tight_layout()
        plt.close(fig)
        return fig


# ----------------------------------------------------------------------------- data

class _PreloadedPairs(torch.utils.data.Dataset):
    """Pairs whose images were preprocessed once and kept as one tensor [n_images, 3, H, W]."""

    def __init__(self, data: CaptionDataset, pixels: torch.Tensor) -> None:
        self.data, self.pixels = data, pixels

    def __len__(self) -> int:
        return self.data.num_captions

    def __getitem__(self, j: int) -> dict[str, Any]:
        i = self.data.text_to_image[j]
        return {"image": self.pixels[i], "caption": self.data.captions[j], "image_index": i}


class _IndexedPairs(torch.utils.data.Dataset):
    """Pairs without pixels, for tasks that read cached features: items carry indices and the caption only."""

    def __init__(self, data: CaptionDataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return self.data.num_captions

    def __getitem__(self, j: int) -> dict[str, Any]:
        return {"caption": self.data.captions[j], "image_index": self.data.text_to_image[j]}


_PRELOADED: dict[tuple, torch.Tensor] = {}  # the last few preloads, for notebooks that train many runs


def preload_images(data: CaptionDataset, transform: Callable, progress: bool = True) -> torch.Tensor:
    """Apply ``transform`` to every image once: [n_images, 3, H, W].

    The result is remembered for the same files and transform (two entries at most), so comparing
    methods in one process decodes the training images once.
    """
    key = (tuple(map(str, data.image_paths)), repr(transform))
    if key in _PRELOADED:
        return _PRELOADED[key]
    pixels = _preload(data, transform, progress)
    while len(_PRELOADED) >= 2:
        _PRELOADED.pop(next(iter(_PRELOADED)))
    _PRELOADED[key] = pixels
    return pixels


def _preload(data: CaptionDataset, transform: Callable, progress: bool) -> torch.Tensor:
    first = transform(open_image(data.image_paths[0]))
    out = torch.empty((data.num_images, *first.shape), dtype=first.dtype)
    out[0] = first
    for i in tqdm(range(1, data.num_images), desc="preload", disable=not progress, leave=False):
        out[i] = transform(open_image(data.image_paths[i]))
    return out


def epoch_order(n: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[int]:
    """The order of pairs in an epoch: a permutation seeded by (seed, epoch), sharded by rank.

    With several ranks the last ``n % world`` pairs of the permutation are left out of that epoch,
    so every rank takes the same number of steps (DDP would wait forever for a missing one).
    """
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    return order[: n - n % world][rank::world]


# ----------------------------------------------------------------------------- optimisation and processes

def _optimizer(module: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # No weight decay on gains, biases, embeddings' scalars (nanoGPT's split by ndim).
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters: inject a method or unfreeze something first")
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return optimizer([g for g in groups if g["params"]], lr=cfg.lr)


def _schedule(opt: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int,
              updates_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "step":  # the epoch of update `step` is step // updates_per_epoch (0-based)
            return cfg.step_gamma ** sum(step // updates_per_epoch >= e for e in cfg.step_epochs)
        if cfg.schedule == "constant":
            return 1.0
        progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _dist_info() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def init_distributed() -> tuple[int, int]:
    """Join the process group that ``torchrun`` describes in the environment; return (rank, world size).

    Without torchrun (no ``WORLD_SIZE`` > 1) this is a no-op returning (0, 1). NCCL on CUDA (each
    process on GPU ``LOCAL_RANK``), gloo on CPU. Calling it again is harmless.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and torch.distributed.is_available() \
            and not torch.distributed.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return _dist_info()


# ----------------------------------------------------------------------------- the loop

@dataclass
class _Run:
    """The mutable state of one run: what a checkpoint saves and a resume restores."""

    task: Task
    runner: nn.Module  # the task, or its DDP wrapper
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    key: dict[str, Any]
    history: History = field(default_factory=History)
    epoch: int = 0
    batch: int = 0  # first batch of `epoch` still to run
    updates: int = 0
    # what every validation of the run shares: the split decoded once and a side branch's frozen
    # forwards (the same numbers every epoch); not saved, rebuilt after a resume
    val_memo: dict[str, Any] = field(default_factory=dict)

    def state(self) -> dict[str, Any]:
        return {
            "trainable": trainable_state_dict(self.task), "state": training_state_dict(self.task),
            "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
            "scaler": self.scaler.state_dict(), "rng": rng_state(), "epoch": self.epoch, "batch": self.batch,
            "updates": self.updates, "history": json.dumps(self.history.to_dict()), "key": json.dumps(self.key),
        }

    def restore(self, ck: dict[str, Any], source: str) -> None:
        load_trainable_state_dict(self.task, ck["trainable"], source=source)
        load_training_state_dict(self.task, ck["state"], source=source)
        self.opt.load_state_dict(ck["optimizer"])
        self.sched.load_state_dict(ck["scheduler"])
        self.scaler.load_state_dict(ck["scaler"])
        set_rng_state(ck["rng"])
        self.history = History.from_dict(json.loads(ck["history"]))
        self.epoch, self.batch, self.updates = ck["epoch"], ck["batch"], ck["updates"]


def _training_pairs(task: Task, data: CaptionDataset, transform: Callable, cfg: TrainConfig
                    ) -> torch.utils.data.Dataset:
    if not task.inputs.pixels:
        return _IndexedPairs(data)
    if cfg.preload_images:
        return _PreloadedPairs(data, preload_images(data, transform, cfg.progress))
    return data.pairs(transform)


def _make_batch(task: Task, tokenizer: Callable, pairs: torch.utils.data.Dataset, index: list[int],
                device: torch.device) -> Batch:
    items = [pairs[j] for j in index]
    image_ids = torch.tensor([it["image_index"] for it in items], device=device)
    captions = task.rewrite_captions([it["caption"] for it in items], image_ids)
    return Batch(
        image_ids=image_ids,
        caption_ids=torch.tensor(index, device=device),
        captions=captions,
        pixels=torch.stack([it["image"] for it in items]).to(device) if task.inputs.pixels else None,
        tokens=tokenizer(captions).to(device) if task.inputs.tokens else None,
    )


def _save_last(run: _Run, out: Path | None, rank: int) -> None:
    if out is not None and rank == 0:
        atomic_save(run.state(), out / "last.pt")


def _train_epoch(run: _Run, cfg: TrainConfig, tokenizer: Callable, pairs: torch.utils.data.Dataset,
                 device: torch.device, out: Path | None, rank: int, world: int) -> dict[str, Any]:
    """Run the rest of epoch ``run.epoch`` (from batch ``run.batch``); returns its history record."""
    order = epoch_order(len(pairs), cfg.seed, run.epoch, rank, world)
    batches = [order[k:k + cfg.batch_size] for k in range(0, len(order), cfg.batch_size)]
    trainable = [p for p in run.task.parameters() if p.requires_grad]
    run.task.train()
    t0, seen, loss_sum, n_loss = time.perf_counter(), 0, 0.0, 0
    bar = tqdm(total=len(batches), initial=run.batch, desc=f"epoch {run.epoch + 1}/{cfg.epochs}",
               disable=not cfg.progress or rank != 0, leave=False)
    for b in range(run.batch, len(batches)):
        batch = _make_batch(run.task, tokenizer, pairs, batches[b], device)
        with autocast(device, enabled=cfg.amp):
            loss = sum(v for k, v in run.runner(batch).items() if k.endswith("_loss"))
        run.scaler.scale(loss / cfg.grad_accum).backward()
        loss_sum, n_loss, seen = loss_sum + loss.item(), n_loss + 1, seen + len(batches[b])
        if (b + 1) % cfg.grad_accum == 0 or b + 1 == len(batches):
            if cfg.clip_grad_norm:
                run.scaler.unscale_(run.opt)
                nn.utils.clip_grad_norm_(trainable, cfg.clip_grad_norm)
            run.scaler.step(run.opt)
            run.scaler.update()
            run.opt.zero_grad(set_to_none=True)
            run.sched.step()
            run.updates += 1
            if cfg.checkpoint_every_steps and run.updates % cfg.checkpoint_every_steps == 0:
                run.batch = b + 1
                _save_last(run, out, rank)
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if _done(run, cfg):
            break
    bar.close()
    seconds = time.perf_counter() - t0
    return {"epoch": run.epoch + 1, "updates": run.updates, "train_loss": loss_sum / max(n_loss, 1),
            "lr": run.opt.param_groups[0]["lr"], "seconds": seconds, "samples_per_s": seen / max(seconds, 1e-9)}


def _done(run: _Run, cfg: TrainConfig) -> bool:
    return cfg.max_steps is not None and run.updates >= cfg.max_steps


def _out_of_patience(history: History, cfg: TrainConfig) -> bool:
    """Early stopping: the last ``cfg.patience`` validations found no better val mR than the best."""
    if cfg.patience is None or history.best_epoch is None:
        return False
    later = [r for r in history.records if r["epoch"] > history.best_epoch and r.get("val_mr") is not None]
    return len(later) >= cfg.patience


def _validate(run: _Run, model: nn.Module, tokenizer: Callable, val_data: CaptionDataset, transform: Callable,
              cfg: TrainConfig, device: torch.device, out: Path | None) -> dict[str, float]:
    """Validation metrics of the current weights; keeps ``best.pt`` at the best validation mR."""
    memo = run.val_memo
    if "images" not in memo:
        memo["images"] = decoded_images(val_data, transform)
    remember = getattr(model, "remember_frozen", None)  # a side branch's frozen forwards, computed once
    with remember(memo.setdefault("frozen", {})) if remember is not None else contextlib.nullcontext():
        result = evaluate(model, val_data, transform=transform, tokenizer=tokenizer, batch_size=cfg.eval_batch_size,
                          device=device, per_scene=False, progress=False, images=memo["images"])
    history = run.history
    if history.best_mr is None or result.metrics["mr"] > history.best_mr:
        history.best_mr, history.best_epoch = result.metrics["mr"], run.epoch + 1
        if out is not None:
            save_best(run.task, out, run.epoch + 1, result.metrics)
    return {f"val_{k}": v for k, v in result.metrics.items() if k in ("mr", "rsum", "i2t_r1", "t2i_r1")}


def _start(task: Task, cfg: TrainConfig, train_data: CaptionDataset, steps_per_epoch: int,
           device: torch.device, world: int) -> _Run:
    """Optimizer, schedule, scaler and DDP wrapper of a run, resumed from ``last.pt`` when it has one."""
    updates_per_epoch = math.ceil(steps_per_epoch / cfg.grad_accum)
    total = updates_per_epoch * cfg.epochs if cfg.max_steps is None else min(updates_per_epoch * cfg.epochs,
                                                                              cfg.max_steps)
    opt = _optimizer(task, cfg)
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and not torch.cuda.is_bf16_supported())
    runner = task if world == 1 else nn.parallel.DistributedDataParallel(
        task, device_ids=[device.index] if device.type == "cuda" else None)
    run = _Run(task, runner, opt, _schedule(opt, cfg, total, updates_per_epoch), scaler,
               run_key(cfg, train_data, task))
    found = resume_checkpoint(cfg, run.key)
    if found is not None:
        run.restore(found[1], source=str(found[0]))
        _logger.info("resumed from %s at epoch %d batch %d", found[0], run.epoch, run.batch)
    return run


def fit(
    model: nn.Module,
    tokenizer: Callable,
    train_data: CaptionDataset,
    transform: Callable,
    config: TrainConfig | None = None,
    *,
    val_data: CaptionDataset | None = None,
    val_transform: Callable | None = None,
    task: Task | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> History:
    """Train ``model`` on ``train_data`` and return the :class:`History`.

    Args:
        model: an open_clip CLIP module whose trainable parameters are already chosen.
        tokenizer: list[str] -> LongTensor.
        train_data: the training split (pairs are drawn from its captions).
        transform: PIL -> tensor for training images.
        config: a :class:`TrainConfig`.
        val_data: validation split; the best epoch by its mR is saved as ``best.pt``. Never the test split.
        val_transform: evaluation transform (defaults to ``transform``).
        task: a :class:`~rsretrieval.training.tasks.Task` (default: InfoNCE on ``model``).
        on_epoch: called with each epoch's record (train loss, val metrics, lr, seconds) as it ends,
            e.g. to draw the curves while training runs (:class:`rsretrieval.widgets.LiveCurve`).

    The model ends with the weights of the last step (``best.pt`` holds the best epoch's).
    """
    cfg = config or TrainConfig()
    rank, world = init_distributed()
    device = select_device(cfg.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # under torchrun: this rank's GPU
    seed_everything(cfg.seed)
    out = Path(cfg.output_dir) if cfg.output_dir else None
    task = task if task is not None else ContrastiveTask(model)
    if not isinstance(task, Task):
        raise TypeError(f"task must be an rsretrieval.training.Task, got {type(task).__name__}")
    task.to(device)
    _logger.info("trainable params: %s || all params: %s", *(f"{n:,}" for n in count_parameters(task)))
    pairs = _training_pairs(task, train_data, transform, cfg)
    steps = math.ceil(len(epoch_order(len(pairs), cfg.seed, 0, rank, world)) / cfg.batch_size)
    run = _start(task, cfg, train_data, steps, device, world)
    last = min(cfg.epochs, cfg.stop_epoch or cfg.epochs)
    while run.epoch < last and not _done(run, cfg) and not _out_of_patience(run.history, cfg):
        record = _train_epoch(run, cfg, tokenizer, pairs, device, out, rank, world)
        last_epoch = _done(run, cfg) or run.epoch + 1 == last
        if val_data is not None and cfg.eval_every and rank == 0 and ((run.epoch + 1) % cfg.eval_every == 0
                                                                      or last_epoch):
            record.update(_validate(run, model, tokenizer, val_data, val_transform or transform, cfg, device, out))
        run.history.append(**record)
        if on_epoch is not None and rank == 0:
            on_epoch(run.history.records[-1])
        run.epoch, run.batch = run.epoch + 1, 0
        _save_last(run, out, rank)
        if out is not None and rank == 0:
            atomic_write_json(out / "history.json", run.history.to_dict())
    if world > 1:
        torch.distributed.barrier()  # every rank returns after rank 0 wrote its last files
    return run.history
