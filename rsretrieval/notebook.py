"""Helpers the course notebooks share: resolving their parameters and recording numbers."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rsretrieval.files import atomic_write_text
from rsretrieval import paths
from rsretrieval.data.registry import get_dataset_info
from rsretrieval.recipes import data_kwargs as recipe_data_kwargs  # noqa: F401  (the notebooks' name)


@dataclass
class Setup:
    """The derived configuration of a notebook run."""

    device: torch.device
    data_dir: Path
    output_dir: Path
    smoke: bool
    model: str
    pretrained: str | None

    def __repr__(self) -> str:
        return (f"Setup(device={self.device}, data_dir={self.data_dir}, output_dir={self.output_dir}, "
                f"smoke={self.smoke}, model={self.model}, pretrained={self.pretrained})")


def setup(*, device: str, dataset: str, data_dir: str | None, output_dir: str | None, model: str,
          pretrained: str | None, smoke: bool, seed: int, notebook: str) -> Setup:
    """Resolve a notebook's parameters: pick the device, find the data, make the output folder, seed.

    ``data_dir`` None (or empty) means the offline default for SynthRS, ``<data home>/synthrs``.
    """
    from rsretrieval.models.utils import seed_everything, select_device

    seed_everything(seed)
    dev = select_device(device)
    if not data_dir:
        info = get_dataset_info(dataset)
        if not info.generated:
            raise ValueError(f"DATASET={dataset!r} needs DATA_DIR: the folder where you put it (see README)")
        data = paths.data_dir(f"{info.name}-smoke" if smoke else info.name)
    else:
        data = Path(data_dir).expanduser()
    out = Path(output_dir) if output_dir else paths.build_dir() / "notebooks" / notebook
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    return Setup(dev, data, out, smoke, model, pretrained or None)


def record(output_dir: str | Path, **numbers: Any) -> dict[str, Any]:
    """Merge numbers into ``output_dir/records.json`` and return all records so far.

    Values must be JSON-serialisable; floats that are NaN or infinite are refused, because a
    record that is not a number is a bug to be seen, not a number to be plotted.
    """
    for key, value in numbers.items():
        _check_finite(key, value)
    path = Path(output_dir) / "records.json"
    records = json.loads(path.read_text()) if path.exists() else {}
    records.update(numbers)
    atomic_write_text(path, json.dumps(records, indent=1, default=float) + "\n")
    return records


def _check_finite(key: str, value: Any) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"record {key!r} is {value}")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_finite(f"{key}.{k}", v)
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_finite(f"{key}[{i}]", v)


# SynthRS sizes of the offline default and of smoke runs (tests).
SYNTHRS_DEFAULT = {"n_images": 1500, "image_size": 224}
SYNTHRS_SMOKE = {"n_images": 120, "image_size": 96}


def load_splits(cfg: Setup, dataset: str, splits: tuple[str, ...] = ("train", "val", "test"), **kwargs: Any) -> dict:
    """Load the splits a notebook needs; a generated dataset (SynthRS) is generated first if it is not on disk."""
    from rsretrieval.data import load_dataset

    if get_dataset_info(dataset).generated:
        from rsretrieval.data.synthrs import generate_synthrs

        generate_synthrs(cfg.data_dir, seed=0, **(SYNTHRS_SMOKE if cfg.smoke else SYNTHRS_DEFAULT))
    return {s: load_dataset(dataset, cfg.data_dir, s, **kwargs) for s in splits}


def run_settings(recipe: str | None, config: Any, *, keep: tuple[str, ...] = ("seed", "device", "progress"),
                 smoke: bool = False) -> dict[str, Any]:
    """``run_method``'s settings for a notebook run: ``config`` itself, or, with a recipe, the recipe's
    settings under the fields of ``config`` named in ``keep`` (and its ``max_steps`` in a smoke run).

    Example: ``run_method(..., **run_settings(RECIPE, TrainConfig(epochs=EPOCHS, seed=seed)))``.
    """
    if not recipe:
        return {"config": config}
    fields = keep + (("max_steps",) if smoke else ())
    return {"recipe": recipe, "config": {k: getattr(config, k) for k in fields}}




def zoo_settings(cfg: Setup, dataset: str, data_dir: str | None, recipe: str | None,
                 regime: str | None = None) -> Any:
    """The :class:`~rsretrieval.zoo.ZooSettings` of a notebook's parameters (and a SynthRS ``regime``).

    The offline default has no root (the zoo was built on it); a smoke run's regime is generated at
    the smoke size.
    """
    from rsretrieval.zoo import ZooSettings

    root = str(cfg.data_dir) if data_dir or cfg.smoke else None
    if regime and cfg.smoke:
        from rsretrieval.data.synthrs import generate_regime

        root = str(generate_regime(regime, paths.data_dir(f"synthrs-smoke-{regime}"), seed=0, **SYNTHRS_SMOKE,
                                   progress=False))
    return ZooSettings(model=cfg.model, pretrained=cfg.pretrained, dataset=dataset, root=root,
                       recipe=recipe or None, device=str(cfg.device), regime=regime,
                       threads=torch.get_num_threads())  # entries trained here, one at a time, use every core


def zoo_runs(cfg: Setup, dataset: str, data_dir: str | None, recipe: str | None, labels: list[str],
             seeds: list[int], test: Any, *, regime: str | None = None,
             progress: bool = True) -> tuple[list[dict[str, Any]], str]:
    """The runs a notebook compares, each scored live on ``test`` from its zoo file (``test=None``: not scored).

    They come from the committed zoo when it was built for the notebook's model, data and recipe
    (and ``regime``); otherwise (real data, another model or recipe) they are trained into
    ``OUTPUT_DIR/zoo`` through the same pipeline, resumably, one optimizer step each in a smoke run.

    Returns:
        (the runs, a line saying where they came from).
    """
    from rsretrieval.zoo import ensure_zoo, evaluate_zoo, zoo_dir

    settings = zoo_settings(cfg, dataset, data_dir, recipe, regime)
    out = cfg.output_dir / ("zoo" + (f"-{regime}" if regime else ""))
    doc, folder = ensure_zoo(settings, labels, seeds, out, train={"epochs": 1, "max_steps": 1} if cfg.smoke else None,
                             isolate=not cfg.smoke, progress=progress)
    committed = folder == zoo_dir(settings.model, settings.dataset, settings.regime)
    where = (f"the committed zoo ({folder}), trained by `python -m rsretrieval zoo build`" if committed else
             f"trained here into {folder} (no committed zoo matches {cfg.model}, {dataset}, recipe {recipe!r})")
    return evaluate_zoo(doc, folder, test, labels=labels, seeds=seeds, device=str(cfg.device), progress=progress), where


def zero_shot_row(cfg: Setup, test: Any) -> dict[str, Any]:
    """The pretrained model's test mR as a :func:`rsretrieval.experiments.summarize` row (one run, no spread)."""
    from rsretrieval.evaluation import evaluate
    from rsretrieval.models import count_parameters, create_model

    bundle = create_model(cfg.model, cfg.pretrained)
    metrics = evaluate(bundle.model.to(cfg.device), test, transform=bundle.transform, tokenizer=bundle.tokenizer,
                       device=cfg.device, progress=False).metrics
    return {"label": "zero-shot", "n": 1, "trainable": 0, "total": count_parameters(bundle.model)[1],
            "mr_mean": metrics["mr"], "mr_std": 0.0, "seconds_per_epoch": 0.0, "values": [metrics["mr"]]}


def watch_training(cfg: Setup, label: str, splits: dict, recipe: str | None, *, epochs: int, batch_size: int,
                   seed: int, reference: list[dict[str, Any]]) -> dict[str, Any]:
    """Train the zoo configuration ``label`` here from scratch for ``epochs`` (one step in a smoke run),
    drawing its validation curve after each epoch beside ``reference`` (the zoo's runs of it).

    Returns:
        :func:`rsretrieval.experiments.run_method`'s results (read back, and drawn, when this run was
        already done in ``OUTPUT_DIR/live``).
    """
    from IPython.display import display

    from rsretrieval.experiments import run_method
    from rsretrieval.training import TrainConfig
    from rsretrieval.widgets import LiveCurve
    from rsretrieval.zoo import select

    config = select([label])[0]
    curve = LiveCurve(f"{label}, {epochs} epochs", reference, title=f"{label}: trained here vs the zoo's runs")
    live_cfg = TrainConfig(epochs=epochs, batch_size=batch_size, seed=seed, device=str(cfg.device), progress=False,
                           max_steps=1 if cfg.smoke else None)
    live = run_method(cfg.model, cfg.pretrained, config.method, splits["train"], splits["val"], splits["test"],
                      **run_settings(recipe, live_cfg, keep=("epochs", "batch_size", "seed", "device", "progress"),
                                     smoke=cfg.smoke), loss=config.loss, method_kwargs=config.method_kwargs,
                      loss_kwargs=config.loss_kwargs, run_dir=cfg.output_dir / "live" / config.slug, on_epoch=curve)
    if not curve.records:  # read back from an earlier execution: draw what it recorded
        curve.records = live["history"]["records"]
        display(curve.figure())
    return live
