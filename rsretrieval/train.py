"""One training loop for every transfer method.

Methods differ only in what they did to the model before training (which parameters are
trainable, which modules were injected) and, optionally, in the *task*: the object that turns
a batch into a dict of losses. The loop itself never branches on a method or loss name.

Exact resume: the order of pairs in epoch ``e`` comes from a generator seeded with
``(seed, e)``; a checkpoint stores the trainable weights, the training state of the task (e.g.
recycling queues), optimizer, scheduler, RNG states and the position inside the epoch, so an
interrupted run continues to bit-identical weights on CPU. A checkpoint of another run (other
settings or training data) is refused, not resumed.

Several processes: launch the same script with ``torchrun --nproc_per_node=N``; :func:`fit` joins
the process group torchrun describes (NCCL on GPUs, gloo on CPU), wraps the task in DDP, shards
every epoch's order by rank, and lets rank 0 alone evaluate and write checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from rsretrieval.data.dataset import CaptionDataset, open_image
from rsretrieval.errors import CheckpointError
from rsretrieval.losses import InfoNCELoss
from rsretrieval.models.utils import autocast, count_parameters, seed_everything, select_device

_logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Settings of one training run. Every field has a default fit for a CPU course run."""

    epochs: int = 5
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 0.05
    warmup_steps: int = 20  # linear warm-up, then cosine decay to lr * min_lr_ratio
    min_lr_ratio: float = 0.0
    grad_accum: int = 1  # optimizer step every grad_accum batches
    clip_grad_norm: float | None = 1.0
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # mixed precision, used on CUDA only
    num_workers: int = 0
    preload_images: bool = True  # decode + preprocess each image once (needs a deterministic transform)
    eval_every: int = 1  # epochs between validation runs (0: never)
    eval_batch_size: int = 128
    checkpoint_every_steps: int = 0  # extra mid-epoch checkpoints (0: only at epoch ends)
    max_steps: int | None = None  # stop early after this many optimizer steps (smoke runs)
    output_dir: str | None = None  # where last.pt / best.pt / history.json go (None: nothing written)
    resume: bool = True  # continue from output_dir/last.pt when it exists
    progress: bool = True


# TrainConfig fields that may differ between a run and its resumption: they do not change what is computed.
_FREE_ON_RESUME = frozenset({"device", "amp", "num_workers", "preload_images", "eval_every", "eval_batch_size",
                             "checkpoint_every_steps", "output_dir", "resume", "progress"})


class StaleRunError(CheckpointError):
    """``output_dir/last.pt`` was written by a run with other settings or other training data."""


def run_key(config: TrainConfig, train_data: CaptionDataset) -> dict[str, Any]:
    """What a checkpoint must share with a run to be resumed by it: the settings that change the
    computation, and a digest of the training pairs (captions, their images' file names)."""
    h = hashlib.sha256()
    for image, text in zip(train_data.text_to_image, train_data.captions):
        h.update(f"{int(image)}\t{text}\n".encode())
    for path in train_data.image_paths:
        h.update(f"{Path(path).name}\n".encode())
    settings = {k: v for k, v in asdict(config).items() if k not in _FREE_ON_RESUME}
    return {"config": settings, "data": h.hexdigest()[:16]}


def check_resumable(config: TrainConfig, train_data: CaptionDataset) -> Path | None:
    """The checkpoint ``fit`` would resume from (None: it starts afresh); raise if it belongs to another run."""
    found = _resume_checkpoint(config, run_key(config, train_data))
    return found[0] if found else None


def _resume_checkpoint(config: TrainConfig, key: dict[str, Any]) -> tuple[Path, dict[str, Any]] | None:
    """``(path, checkpoint)`` of the ``last.pt`` a run of ``key`` resumes, loaded once; None: start afresh."""
    if not (config.output_dir and config.resume):
        return None
    last = Path(config.output_dir) / "last.pt"
    if not last.exists():
        return None
    ck = _load_checkpoint(last)
    stored = ck.get("key")
    if stored is None:
        diffs = ["it has no run key (written before rsretrieval checked runs): its settings and data are unknown"]
    else:
        stored = json.loads(stored)
        diffs = [f"{k}: {stored['config'].get(k)!r} -> {v!r}" for k, v in key["config"].items()
                 if stored["config"].get(k) != v]
        if stored["data"] != key["data"]:
            diffs.append("the training pairs (captions or image names) changed")
    if diffs:
        raise StaleRunError(f"{last} belongs to another run ({'; '.join(diffs)}). Resuming it would mix two "
                            f"runs: delete {last.parent} or choose another output_dir to start afresh, or "
                            "restore the original settings and data to resume.")
    return last, ck


RUN_FILES = ("last.pt", "best.pt", "history.json")  # what fit writes into output_dir


def clear_run(output_dir: str | Path) -> None:
    """Delete the files :func:`fit` wrote into ``output_dir`` (nothing else), so the next run starts afresh."""
    for name in RUN_FILES:
        (Path(output_dir) / name).unlink(missing_ok=True)


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


class ContrastiveTask(nn.Module):
    """Model + loss: turns a batch into a dict of losses (keys ending in ``_loss``)."""

    def __init__(self, model: nn.Module, loss: nn.Module | None = None) -> None:
        super().__init__()
        self.model = model
        self.loss = loss or InfoNCELoss()

    def forward(self, images: torch.Tensor, tokens: torch.Tensor, image_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        img = self.model.encode_image(images, normalize=True)
        txt = self.model.encode_text(tokens, normalize=True)
        return self.loss(img, txt, self.model.logit_scale.exp().clamp(max=100), image_ids)


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


# ----------------------------------------------------------------------------- checkpoints

def trainable_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train, by name (frozen weights are rebuilt from the base model)."""
    return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


def load_trainable_state_dict(module: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load what :func:`trainable_state_dict` saved; any missing, extra or misshapen key is an error."""
    params = {n: p for n, p in module.named_parameters() if p.requires_grad}
    missing = sorted(set(params) - set(state))
    unexpected = sorted(set(state) - set(params))
    wrong = [f"{n}: file {tuple(state[n].shape)} vs model {tuple(params[n].shape)}"
             for n in set(params) & set(state) if state[n].shape != params[n].shape]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{source} does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"wrong shape {wrong[:5]}. Build the model with the same architecture and method that wrote it."
        )
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(state[n])


def _stateful_modules(module: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in module.named_modules() if getattr(m, "resumable_state", False)}


def resumable_state_dict(module: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """State that training changes besides parameters (recycling queues, ...): submodules that set
    ``resumable_state = True``, by module name, so a resumed run continues with the same state."""
    return {name: {k: v.detach().clone() for k, v in m.state_dict().items()}
            for name, m in _stateful_modules(module).items()}


def load_resumable_state_dict(module: nn.Module, state: dict[str, dict[str, torch.Tensor]],
                              source: str = "checkpoint") -> None:
    """Load what :func:`resumable_state_dict` saved; the set of stateful submodules must match."""
    modules = _stateful_modules(module)
    if set(modules) != set(state):
        raise CheckpointError(f"{source} holds training state of {sorted(state)}, but this task has "
                              f"{sorted(modules)}. Resume with the same method and loss that wrote it.")
    for name, m in modules.items():
        m.load_state_dict(state[name])


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file, then rename: a crash never leaves half a checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [name, keys.tolist(), pos, has_gauss, cached],  # plain lists load under weights_only=True
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}. Delete it to start afresh.") from exc


# ----------------------------------------------------------------------------- the loop

def _optimizer(module: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # No weight decay on gains, biases, embeddings' scalars (nanoGPT's split by ndim).
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters: inject a method or unfreeze something first")
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr)


def _schedule(opt: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
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


def fit(
    model: nn.Module,
    tokenizer: Callable,
    train_data: CaptionDataset,
    transform: Callable,
    config: TrainConfig | None = None,
    *,
    val_data: CaptionDataset | None = None,
    val_transform: Callable | None = None,
    task: nn.Module | None = None,
) -> History:
    """Train ``model`` on ``train_data`` and return the :class:`History`.

    Args:
        model: an open_clip CLIP module whose trainable parameters are already chosen.
        tokenizer: list[str] -> LongTensor.
        train_data: the training split (pairs are drawn from its captions).
        transform: PIL -> tensor for training images.
        config: a :class:`TrainConfig`.
        val_data: validation split; the best epoch by its mR is saved as ``best.pt``.
            Never pass the test split here.
        val_transform: evaluation transform (defaults to ``transform``).
        task: batch -> losses; defaults to :class:`ContrastiveTask` with InfoNCE. It is called as
            ``task(images, tokens, image_ids)``. Optional attributes change that: ``takes_indices =
            True`` adds ``caption_ids=`` (the batch's caption indices in ``train_data``), and
            ``needs_pixels = False`` / ``needs_tokens = False`` skip loading images / tokenising
            and pass None instead (e.g. :class:`rsretrieval.cache.CachedSideBranchTask`).

    The model ends with the weights of the last step (``best.pt`` holds the best epoch's).
    """
    cfg = config or TrainConfig()
    rank, world = init_distributed()
    device = select_device(cfg.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # under torchrun: this rank's GPU
    seed_everything(cfg.seed)
    out = Path(cfg.output_dir) if cfg.output_dir else None
    task = task or ContrastiveTask(model)
    task.to(device)
    trainable, total = count_parameters(task)
    _logger.info("trainable params: %s || all params: %s", f"{trainable:,}", f"{total:,}")

    # Tasks that read cached features (rsretrieval.cache.CachedSideBranchTask) say so with three optional
    # attributes: needs_pixels / needs_tokens = False skip decoding / tokenising, takes_indices = True adds
    # caption_ids= (dataset caption indices) to the call. Other tasks are called exactly as before.
    needs_pixels = getattr(task, "needs_pixels", True)
    needs_tokens = getattr(task, "needs_tokens", True)
    takes_indices = getattr(task, "takes_indices", False)
    if not needs_pixels:
        pairs = _IndexedPairs(train_data)
    elif cfg.preload_images:
        pairs = _PreloadedPairs(train_data, preload_images(train_data, transform, cfg.progress))
    else:
        pairs = train_data.pairs(transform)
    steps_per_epoch = math.ceil(len(epoch_order(len(pairs), cfg.seed, 0, rank, world)) / cfg.batch_size)
    updates_per_epoch = math.ceil(steps_per_epoch / cfg.grad_accum)
    total_updates = updates_per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total_updates = min(total_updates, cfg.max_steps)
    opt = _optimizer(task, cfg)
    sched = _schedule(opt, cfg, total_updates)
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and not torch.cuda.is_bf16_supported())
    runner = task
    if world > 1:
        runner = nn.parallel.DistributedDataParallel(task, device_ids=[device.index] if device.type == "cuda" else None)

    history, start_epoch, start_batch, updates = History(), 0, 0, 0
    last = out / "last.pt" if out else None
    key = run_key(cfg, train_data)
    found = _resume_checkpoint(cfg, key)
    if found is not None:
        ck = found[1]
        load_trainable_state_dict(task, ck["trainable"], source=str(last))
        load_resumable_state_dict(task, ck["state"], source=str(last))
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        scaler.load_state_dict(ck["scaler"])
        _set_rng_state(ck["rng"])
        history = History.from_dict(json.loads(ck["history"]))
        start_epoch, start_batch, updates = ck["epoch"], ck["batch"], ck["updates"]
        _logger.info("resumed from %s at epoch %d batch %d", last, start_epoch, start_batch)

    def save(epoch: int, batch: int) -> None:
        if last is None or rank != 0:
            return
        atomic_save({
            "trainable": trainable_state_dict(task), "state": resumable_state_dict(task),
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "scaler": scaler.state_dict(), "rng": _rng_state(), "epoch": epoch, "batch": batch, "updates": updates,
            "history": json.dumps(history.to_dict()), "config": json.dumps(asdict(cfg)), "key": json.dumps(key),
        }, last)

    done = cfg.max_steps is not None and updates >= cfg.max_steps
    for epoch in range(start_epoch, cfg.epochs):
        if done:
            break
        order = epoch_order(len(pairs), cfg.seed, epoch, rank, world)
        batches = [order[k:k + cfg.batch_size] for k in range(0, len(order), cfg.batch_size)]
        task.train()
        t0, seen, loss_sum, n_loss = time.perf_counter(), 0, 0.0, 0
        bar = tqdm(total=len(batches), initial=start_batch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   disable=not cfg.progress or rank != 0, leave=False)
        for b in range(start_batch, len(batches)):
            items = [pairs[j] for j in batches[b]]
            images = torch.stack([it["image"] for it in items]).to(device, non_blocking=True) if needs_pixels else None
            tokens = tokenizer([it["caption"] for it in items]).to(device, non_blocking=True) if needs_tokens else None
            ids = torch.tensor([it["image_index"] for it in items], device=device)
            extra = {"caption_ids": torch.tensor(batches[b], device=device)} if takes_indices else {}
            with autocast(device, enabled=cfg.amp):
                losses = runner(images, tokens, ids, **extra)
                loss = sum(v for k, v in losses.items() if k.endswith("_loss"))
            scaler.scale(loss / cfg.grad_accum).backward()
            loss_sum, n_loss, seen = loss_sum + loss.item(), n_loss + 1, seen + len(items)
            if (b + 1) % cfg.grad_accum == 0 or b + 1 == len(batches):
                if cfg.clip_grad_norm:
                    scaler.unscale_(opt)
                    nn.utils.clip_grad_norm_([p for p in task.parameters() if p.requires_grad], cfg.clip_grad_norm)
                scaler.step(opt)
                scaler.update()
                opt.zero_grad(set_to_none=True)
                sched.step()
                updates += 1
                if cfg.checkpoint_every_steps and updates % cfg.checkpoint_every_steps == 0:
                    save(epoch, b + 1)
                if cfg.max_steps is not None and updates >= cfg.max_steps:
                    done = True
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if done:
                break
        bar.close()
        start_batch = 0
        seconds = time.perf_counter() - t0
        record: dict[str, Any] = {
            "epoch": epoch + 1, "updates": updates, "train_loss": loss_sum / max(n_loss, 1),
            "lr": opt.param_groups[0]["lr"], "seconds": seconds, "samples_per_s": seen / max(seconds, 1e-9),
        }
        if val_data is not None and cfg.eval_every and rank == 0 and ((epoch + 1) % cfg.eval_every == 0 or done
                                                                      or epoch + 1 == cfg.epochs):
            from rsretrieval.evaluate import evaluate  # deferred: evaluate imports plotting helpers

            result = evaluate(model, val_data, transform=val_transform or transform, tokenizer=tokenizer,
                              batch_size=cfg.eval_batch_size, device=device, per_scene=False, progress=False)
            record.update({f"val_{k}": v for k, v in result.metrics.items() if k in ("mr", "rsum", "i2t_r1", "t2i_r1")})
            if history.best_mr is None or result.metrics["mr"] > history.best_mr:
                history.best_mr, history.best_epoch = result.metrics["mr"], epoch + 1
                if out is not None:
                    atomic_save({"trainable": trainable_state_dict(task), "epoch": epoch + 1,
                                 "metrics": result.metrics}, out / "best.pt")
        history.append(**record)
        save(epoch + 1, 0)
        if out is not None and rank == 0:
            (out / "history.json").write_text(json.dumps(history.to_dict(), indent=1))
    if world > 1:
        torch.distributed.barrier()  # every rank returns after rank 0 wrote its last files
    return history


def load_best(task_or_model: nn.Module, output_dir: str | Path) -> dict[str, Any]:
    """Load ``best.pt`` of a run into the model it was trained on; returns its metrics."""
    path = Path(output_dir) / "best.pt"
    if not path.exists():
        raise FileNotFoundError(f"no best checkpoint at {path}: the run had no validation split or never evaluated")
    ck = _load_checkpoint(path)
    state = ck["trainable"]
    if not isinstance(task_or_model, ContrastiveTask) and all(k.startswith("model.") for k in state):
        state = {k.removeprefix("model."): v for k, v in state.items()}  # saved from the default task
    load_trainable_state_dict(task_or_model, state, source=str(path))
    return {"epoch": ck["epoch"], "metrics": ck["metrics"]}
