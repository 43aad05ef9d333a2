"""What a training run writes and reads back: run identity, ``last.pt`` for exact resume, ``best.pt``.

A checkpoint stores the trainable weights, the task's training state (:class:`TrainingState`
submodules such as negative queues), optimizer, scheduler, RNG states and the position inside the
epoch, so an interrupted run continues to bit-identical weights on CPU. It also stores the run's
key (:func:`run_key`): a checkpoint of another run is refused, never resumed.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from rsretrieval.data.dataset import CaptionDataset
from rsretrieval.errors import CheckpointError, StaleRunError
from rsretrieval.files import atomic_save

if TYPE_CHECKING:
    from rsretrieval.training.loop import TrainConfig
    from rsretrieval.training.tasks import Task

RUN_FILES = ("last.pt", "best.pt", "history.json")  # what fit writes into output_dir

# TrainConfig fields that may differ between a run and its resumption: they do not change what is computed.
FREE_ON_RESUME = frozenset({"device", "amp", "preload_images", "eval_every", "eval_batch_size",
                            "checkpoint_every_steps", "output_dir", "resume", "progress",
                            "stop_epoch"})  # when to stop changes no step already taken


class TrainingState(nn.Module):
    """A submodule whose buffers training changes besides the parameters (e.g. negative queues).

    :func:`~rsretrieval.training.fit` saves every such submodule of the task with its checkpoints
    and restores it on resume, so a resumed run continues with the same state.
    """


# ----------------------------------------------------------------------------- run identity

def run_key(config: TrainConfig, train_data: CaptionDataset, task: Task) -> dict[str, Any]:
    """What a checkpoint must share with a run to be resumed by it: everything that changes the computation.

    That is the training settings, a digest of the training pairs (captions, their images' file
    names), the method and its config, the task and loss with their settings, a digest of the
    model's weights as training starts (base weights by content, and the method's initial weights),
    and the validation metric that picks the best epoch (with its tie rule).
    Call it before any step is taken or a checkpoint restored.
    """
    h = hashlib.sha256()
    for image, text in zip(train_data.text_to_image, train_data.captions):
        h.update(f"{int(image)}\t{text}\n".encode())
    for path in train_data.image_paths:
        h.update(f"{Path(path).name}\n".encode())
    from rsretrieval.evaluation.metrics import DEFAULT_TIES

    settings = {k: v for k, v in asdict(config).items() if k not in FREE_ON_RESUME}
    key = {"config": settings, "data": h.hexdigest()[:16], **_task_identity(task),
           "selection": {"metric": "mr", "ties": DEFAULT_TIES}}  # how the best epoch is chosen
    return json.loads(json.dumps(key, default=str))  # as it reads back from a checkpoint (tuples -> lists)


def _task_identity(task: Task) -> dict[str, Any]:
    from rsretrieval.methods import get_applied_method
    from rsretrieval.methods.checkpoint import tensors_checksum

    model = task.model
    applied = get_applied_method(model)
    inside_model = {id(m) for m in model.modules()}
    settings = {}
    for name, m in task.named_modules():
        if id(m) not in inside_model:  # the task and its loss (queues, ...): type and plain settings
            plain = {k: v for k, v in vars(m).items() if not k.startswith("_") and k != "training" and _plain(v)}
            settings[name or "task"] = {"type": type(m).__qualname__, **plain}
    return {
        "method": None if applied is None else {"name": applied.name, "config": asdict(applied.config)},
        "task": settings,
        "weights": tensors_checksum({**dict(model.named_parameters()), **dict(model.named_buffers())})[:16],
    }


def _plain(value: Any) -> bool:
    """A setting that fits in JSON as it is: scalars, and lists or tuples of them (scene prefixes, ...)."""
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return isinstance(value, (bool, int, float, str, type(None)))


def check_resumable(config: TrainConfig, train_data: CaptionDataset, task: Task) -> Path | None:
    """The checkpoint ``fit`` would resume from (None: it starts afresh); raise if it belongs to another run."""
    found = resume_checkpoint(config, run_key(config, train_data, task))
    return found[0] if found else None


_WHAT = {"data": "the training pairs (captions or image names)", "weights": "the weights at the start (base "
         "weights or the method's initialisation)", "method": "the method or its config",
         "task": "the loss or the task's settings"}


def resume_checkpoint(config: TrainConfig, key: dict[str, Any]) -> tuple[Path, dict[str, Any]] | None:
    """``(path, checkpoint)`` of the ``last.pt`` a run of ``key`` resumes, loaded once; None: start afresh."""
    if not (config.output_dir and config.resume):
        return None
    last = Path(config.output_dir) / "last.pt"
    if not last.exists():
        return None
    ck = load_checkpoint(last)
    stored = ck.get("key")
    if stored is None:
        diffs = ["it has no run key (written before rsretrieval checked runs): its settings and data are unknown"]
    else:
        stored = json.loads(stored)
        diffs = [f"{k}: {stored['config'].get(k)!r} -> {v!r}" for k, v in key["config"].items()
                 if stored["config"].get(k) != v]
        diffs += [_describe_change(part, stored.get(part), key[part]) for part in _WHAT
                  if stored.get(part) != key[part]]
    if diffs:
        raise StaleRunError(f"{last} belongs to another run ({'; '.join(diffs)}). Resuming it would mix two "
                            f"runs: delete {last.parent} or choose another output_dir to start afresh, or "
                            "restore the original settings and data to resume.")
    return last, ck


def _describe_change(part: str, before: Any, now: Any) -> str:
    if part == "method":
        name = lambda m: "no method" if m is None else m["name"]  # noqa: E731
        if name(before) != name(now):
            return f"method: {name(before)} -> {name(now)}"
    if part == "task" and isinstance(before, dict):
        changed = [k for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)]
        shown = [f"{k}: {before.get(k)} -> {now.get(k)}" for k in changed[:2]]
        return f"{_WHAT[part]} changed ({'; '.join(shown)})"
    return f"{_WHAT[part]} changed"


def clear_run(output_dir: str | Path) -> None:
    """Delete the files :func:`~rsretrieval.training.fit` wrote into ``output_dir`` (nothing else)."""
    for name in RUN_FILES:
        (Path(output_dir) / name).unlink(missing_ok=True)


# ----------------------------------------------------------------------------- state dicts

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
    return {name: m for name, m in module.named_modules() if isinstance(m, TrainingState)}


def training_state_dict(module: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """The state of every :class:`TrainingState` submodule, by module name."""
    return {name: {k: v.detach().clone() for k, v in m.state_dict().items()}
            for name, m in _stateful_modules(module).items()}


def load_training_state_dict(module: nn.Module, state: dict[str, dict[str, torch.Tensor]],
                             source: str = "checkpoint") -> None:
    """Load what :func:`training_state_dict` saved; the set of stateful submodules must match."""
    modules = _stateful_modules(module)
    if set(modules) != set(state):
        raise CheckpointError(f"{source} holds training state of {sorted(state)}, but this task has "
                              f"{sorted(modules)}. Resume with the same method and loss that wrote it.")
    for name, m in modules.items():
        m.load_state_dict(state[name])


# ----------------------------------------------------------------------------- RNG and files

def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) RNG states, in a form ``torch.load(weights_only=True)`` reads."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [name, keys.tolist(), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}. Delete it to start afresh.") from exc


def save_best(task: nn.Module, output_dir: Path, epoch: int, metrics: dict[str, float]) -> None:
    atomic_save({"trainable": trainable_state_dict(task), "epoch": epoch, "metrics": metrics},
                output_dir / "best.pt")


def load_best(task_or_model: nn.Module, output_dir: str | Path) -> dict[str, Any]:
    """Load ``best.pt`` of a run into the model (or task) it was trained on; returns its epoch and metrics."""
    path = Path(output_dir) / "best.pt"
    if not path.exists():
        raise FileNotFoundError(f"no best checkpoint at {path}: the run had no validation split or never evaluated")
    ck = load_checkpoint(path)
    state = ck["trainable"]
    from rsretrieval.training.tasks import Task

    if not isinstance(task_or_model, Task) and all(k.startswith("model.") for k in state):
        state = {k.removeprefix("model."): v for k, v in state.items()}  # saved from a task around the model
    load_trainable_state_dict(task_or_model, state, source=str(path))
    return {"epoch": ck["epoch"], "metrics": ck["metrics"]}
