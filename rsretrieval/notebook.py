"""Helpers the course notebooks share: resolving their parameters and recording numbers."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
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
    _figures_with_alt_text()
    return Setup(dev, data, out, smoke, model, pretrained or None)


def _figures_with_alt_text() -> None:
    """In a notebook, every matplotlib figure is shown as a PNG with alternative text (read off the
    figure, or set by :func:`rsretrieval.plots.set_alt_text`), in the course's colour-blind-safe style."""
    from rsretrieval.plots import use_course_style

    use_course_style()
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None or not hasattr(shell, "display_formatter"):
        return
    from matplotlib.figure import Figure

    from rsretrieval.plots import alt_text

    def png(fig: Figure):
        import io

        if not fig.axes and not fig.images:
            return None
        buf = io.BytesIO()
        fig.savefig(buf, format="png", bbox_inches="tight", dpi=fig.dpi)
        return buf.getvalue(), {"alt": alt_text(fig)}

    shell.display_formatter.formatters["image/png"].for_type(Figure, png)


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
    if _CHECKS:
        records["checks"] = dict(_CHECKS)  # what each build-it cell's check said: ok, differs, not done
    atomic_write_text(path, json.dumps(records, indent=1, default=float) + "\n")
    return records


_CHECKS: dict[str, str] = {}


def check(what: str, attempt: Callable[[], Any], expected: Any, *, atol: float = 1e-6) -> Any:
    """Compare a learner's build-it result with the library's and say in words what agrees or differs.

    Args:
        what: what was built (``"recalls_by_hand"``), for the sentence.
        attempt: runs the learner's code; raising ``NotImplementedError`` means "not written yet".
        expected: the library's result (numbers, tensors, arrays, or dicts and lists of them).
        atol: the largest absolute difference still counted as equal.

    Returns:
        The learner's result when it agrees, else ``expected``: the notebook goes on with a right
        answer either way.
    """
    try:
        got = attempt()
    except NotImplementedError:
        print(f"not done yet: {what} still raises NotImplementedError. Write it in the cell above and run "
              "this cell again; until then the library's result is used.")
        _CHECKS[what] = "not done"
        return expected
    problems = _differences(got, expected, atol, what)
    if problems:
        print(f"{what} differs from the library's: " + "; ".join(problems[:5])
              + ("; ..." if len(problems) > 5 else "") + ". The library's result is used from here on.")
        _CHECKS[what] = "differs"
        return expected
    print(f"{what} agrees with the library's ({_summary(expected)}, within {atol:g}).")
    _CHECKS[what] = "ok"
    return got


def _summary(x: Any) -> str:
    if isinstance(x, dict):
        return f"{len(x)} values: {', '.join(map(str, list(x)[:6]))}" + (", ..." if len(x) > 6 else "")
    shape = getattr(x, "shape", None)
    if shape is not None:
        return f"shape {tuple(shape)}, {getattr(x, 'dtype', '')}"
    return f"{type(x).__name__}"


def _differences(got: Any, expected: Any, atol: float, name: str) -> list[str]:
    import numpy as np

    if isinstance(expected, dict):
        if not isinstance(got, dict):
            return [f"{name} is a {type(got).__name__}, the library's is a dict"]
        out = [f"{name} lacks {k!r}" for k in expected if k not in got]
        out += [f"{name} has {k!r}, which the library's has not" for k in got if k not in expected]
        for k in expected:
            if k in got:
                out += _differences(got[k], expected[k], atol, f"{name}[{k!r}]")
        return out
    if isinstance(expected, (list, tuple)) and not hasattr(expected, "shape"):
        if not isinstance(got, (list, tuple)) or len(got) != len(expected):
            return [f"{name} has {len(got) if hasattr(got, '__len__') else 'no'} items, the library's "
                    f"{len(expected)}"]
        return [d for k, (g, e) in enumerate(zip(got, expected)) for d in _differences(g, e, atol, f"{name}[{k}]")]
    if isinstance(expected, (str, bool)) or expected is None:
        return [] if got == expected else [f"{name} is {got!r}, the library's is {expected!r}"]
    try:
        g = got.detach().cpu().numpy() if hasattr(got, "detach") else np.asarray(got)
        e = expected.detach().cpu().numpy() if hasattr(expected, "detach") else np.asarray(expected)
    except (TypeError, ValueError):
        return [] if got == expected else [f"{name} is {got!r}, the library's is {expected!r}"]
    if g.shape != e.shape:
        return [f"{name} has shape {g.shape}, the library's {e.shape}"]
    out = []
    if hasattr(expected, "dtype") and hasattr(got, "dtype") and str(got.dtype) != str(expected.dtype):
        out.append(f"{name} is {got.dtype}, the library's is {expected.dtype}")
    if not np.issubdtype(g.dtype, np.number) and g.dtype != bool:
        return out + ([] if np.array_equal(g, e) else [f"{name}'s values differ"])
    diff = np.abs(g.astype(np.float64) - e.astype(np.float64))
    if diff.size and (not np.isfinite(diff).all() or diff.max() > atol):
        at = np.unravel_index(int(np.nanargmax(np.where(np.isfinite(diff), diff, np.inf))), diff.shape)
        where = f" at {tuple(int(i) for i in at)}" if diff.ndim else ""
        out.append(f"{name} is {g[at] if diff.ndim else g.item():.6g}{where} where the library's is "
                   f"{e[at] if diff.ndim else e.item():.6g} ({int((diff > atol).sum())} of {diff.size} values "
                   f"differ by more than {atol:g})")
    return out


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
SYNTHRS_DEFAULT = {"image_size": 224}  # the size and split of the current version (data.synthrs.VERSIONS)
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
    """The pretrained model's test mR as a :func:`rsretrieval.experiments.summarize` row (one run, no spread),
    with its per-image ``hits`` for paired comparisons."""
    from rsretrieval.evaluation import evaluate, per_image_hits
    from rsretrieval.models import count_parameters, create_model

    bundle = create_model(cfg.model, cfg.pretrained)
    result = evaluate(bundle.model.to(cfg.device), test, transform=bundle.transform, tokenizer=bundle.tokenizer,
                      device=cfg.device, progress=False)
    metrics = result.metrics
    return {"label": "zero-shot", "n": 1, "trainable": 0, "total": count_parameters(bundle.model)[1],
            "mr_mean": metrics["mr"], "mr_std": 0.0, "seconds_per_epoch": 0.0, "values": [metrics["mr"]],
            "hits": [per_image_hits(result, test.text_to_image)]}


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
