"""The recipe sweep: each method's knobs chosen on the validation split, and stored as a recipe.

A coordinate search, as one tunes by hand but written down: the method's knobs are swept one
after the other (learning rate first), each over a few values with the earlier knobs at their
best so far and the later ones at their defaults (a learning rate best at the edge of its grid is
tried further out, up to twice); every point trains with early stopping on
validation (``patience``), so the number of epochs is chosen too, and a chosen point still
improving at the last epoch of its budget is trained again on a longer schedule. Only ``train`` and ``val`` are
ever loaded: no test score can reach a choice.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from rsretrieval import defaults
from rsretrieval.files import atomic_write_json, file_lock
from rsretrieval.recipes import recipe_key, recipe_path

# What every sweep point shares (the model/dataset's training budget): at most `epochs`, early
# stopping after `patience` epochs without a better val mR. New weights (every method but full
# fine-tuning) train without weight decay, as the course's notebooks always did.
BASE_TRAIN: dict[str, Any] = {"epochs": 12, "patience": 2, "batch_size": 64, "warmup_steps": 20}


def base_train(method: str) -> dict[str, Any]:
    """The shared settings of ``method``'s sweep points."""
    return {**BASE_TRAIN, "weight_decay": 0.05 if method == "full" else 0.0}

_PETL_LR = [3e-4, 1e-3, 3e-3]

# The knobs of each method, in the order they are swept: "train.<TrainConfig field>",
# "method.<method config field>" or "loss.<loss keyword>" (cmer's: rsretrieval.cmer.CMERConfig's fields).
SEARCH_SPACES: dict[str, dict[str, list[Any]]] = {
    "full": {"train.lr": [1e-5, 3e-5, 1e-4]},
    "linear_probe": {"train.lr": _PETL_LR},
    "adapter": {"train.lr": _PETL_LR},
    "lora": {"train.lr": _PETL_LR},
    "vpt": {"train.lr": _PETL_LR},
    "coop": {"train.lr": [1e-3, 3e-3, 1e-2]},
    "clip_adapter": {"train.lr": _PETL_LR, "method.alpha": [0.2, 0.5]},
    "adaptformer": {"train.lr": _PETL_LR, "method.scale": [0.1, 0.5]},
    "mrs_adapter": {"train.lr": _PETL_LR},
    "focus_adapter": {"train.lr": _PETL_LR, "method.gate_scale": [16.0, 64.0, 128.0, 256.0],
                      "method.focus_temperature": [0.1, 0.3, 1.0]},
    "cmer": {"train.lr": _PETL_LR, "method.gate_scale": [16.0, 64.0, 128.0, 256.0],
             "loss.queue_weight": [0.25, 0.5, 1.0], "loss.queue_size": [256, 512, 1024],
             "loss.queue_warmup": [0, 100], "loss.scene_prob": [0.0, 0.25, 0.5]},
    # notebook 04's recycling row (the side branch with mean pooling and the queues): its own lr and
    # queue knobs, so that the row is not trained at another configuration's choice
    "focus_adapter+recycling": {"method.pooling": ["mean"], "train.lr": _PETL_LR,
                                "method.gate_scale": [16.0, 64.0, 128.0], "loss.weight": [0.25, 0.5, 1.0],
                                "loss.queue_size": [256, 512, 1024], "loss.warmup_steps": [0, 100]},
}


def sweep(
    method: str,
    *,
    dataset: str = "synthrs",
    root: str | Path | None = None,
    model: str = "mini",
    pretrained: str | None = defaults.MINICLIP_TAG,
    loss: str | None = None,
    space: dict[str, list[Any]] | None = None,
    base: dict[str, Any] | None = None,
    out_dir: str | Path | None = None,
    recipe_file: str | Path | None = None,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Sweep ``method``'s knobs on ``dataset``'s validation split and store the choice as a recipe.

    Resumable point by point: a finished point is read back, an interrupted one resumes.

    Args:
        method: a registered method; its knobs are ``SEARCH_SPACES[method]`` unless ``space`` is given.
        dataset, root: the data (train and val are loaded; a missing test split does not matter).
        model, pretrained: the base model.
        loss: the training loss (None: the method's default); another loss's choice is stored as
            the entry ``method+loss`` (:func:`~rsretrieval.recipes.recipe_key`).
        base: the shared TrainConfig fields (default :func:`base_train`).
        out_dir: the points' run folders (default ``<data home>/sweeps/<model>-<dataset>/<method>``).
        recipe_file: where the recipe goes (default: the library's ``<model>-<dataset>.json``).

    Returns:
        The recipe entry written for ``method``: ``train`` (the sweep's schedule, with ``stop_epoch`` =
        the chosen point's best epoch, so runs of the recipe stop where the sweep's early stopping
        found the peak), ``method_kwargs``, ``loss``,
        ``loss_kwargs`` and ``sweep`` (the space, every point's settings and val mR, the chosen one).
    """
    from rsretrieval.data import load_dataset
    from rsretrieval.experiments import run_method
    from rsretrieval.methods import get_method
    from rsretrieval.paths import data_home

    get_method(method)
    space = space if space is not None else SEARCH_SPACES.get(recipe_key(method, loss), SEARCH_SPACES.get(method))
    if not space:
        raise ValueError(f"no search space for method {method!r}: pass `space` (known: {', '.join(SEARCH_SPACES)})")
    for knob in space:
        if knob.split(".", 1)[0] not in ("train", "method", "loss") or "." not in knob:
            raise ValueError(f"knob {knob!r} must be train.<field>, method.<field> or loss.<keyword>")
    base = dict(base_train(method) if base is None else base)
    name, key = f"{model}-{dataset}", recipe_key(method, loss)
    folder = Path(out_dir) if out_dir else data_home() / "sweeps" / name / key
    train = load_dataset(dataset, root, "train")
    val = load_dataset(dataset, root, "val")

    defaults = _defaults(method, loss, list(space))
    total = sum(len(values) for values in space.values())
    bar = tqdm(total=total, desc=f"sweep {key}", disable=not progress)

    def train_point(settings: dict[str, Any]) -> dict[str, Any]:
        # a knob at its default is left out of the run, so a point that repeats an earlier one
        # (the default of the next knob) is read back instead of trained again
        run = {k: v for k, v in settings.items() if k.startswith("train.") or v != defaults.get(k, _NONE)}
        train_kw, method_kw, loss_kw = _split(run)
        result = run_method(model, pretrained, method, train, val, None,
                            {**base, **train_kw, "device": device, "progress": False},
                            loss=loss, method_kwargs=method_kw, loss_kwargs=loss_kw, run_dir=folder / _slug(run))
        point = {"settings": settings, "val_mr": result["val_mr"], "best_epoch": result["best_epoch"],
                 "epochs_run": len(result["history"]["records"]),
                 "train_seconds": sum(r["seconds"] for r in result["history"]["records"])}
        bar.update(1)
        bar.set_postfix({"val_mr": f"{point['val_mr']:.2f}", "best_epoch": point["best_epoch"]})
        return point

    points: list[dict[str, Any]] = []
    chosen: dict[str, Any] = {}
    for knob, values in space.items():
        stage: list[dict[str, Any]] = []
        values = list(values)
        while True:
            stage += [train_point({**chosen, knob: value}) for value in values[len(stage):]]
            further = _beyond_the_edge(knob, values, max(stage, key=lambda p: p["val_mr"])["settings"][knob],
                                       len(values) - len(space[knob]))
            if further is None:
                break
            values.append(further)
            bar.total += 1
        points += stage
        chosen = max(stage, key=lambda p: p["val_mr"])["settings"]  # ties: the first tried
    best = next(p for p in points if p["settings"] == chosen)
    # still improving when its budget ran out: the chosen point is trained again on a longer schedule
    epochs = base["epochs"]
    while best["best_epoch"] >= epochs and epochs * BUDGET_STEP <= MAX_EPOCHS:
        epochs *= BUDGET_STEP
        bar.total += 1
        longer = train_point({**chosen, "train.epochs": epochs})
        points.append(longer)
        if longer["val_mr"] <= best["val_mr"]:
            break
        chosen, best = longer["settings"], longer
    bar.close()

    train_kw, method_kw, loss_kw = _split(chosen)
    # the schedule the sweep validated, stopped where the chosen point peaked
    entry = {"train": {**base, **train_kw, "stop_epoch": best["best_epoch"]}, "method_kwargs": method_kw,
             "loss": loss, "loss_kwargs": loss_kw,
             "sweep": {"model": model, "pretrained": pretrained, "dataset": dataset, "selected_on": "val",
                       "data_params": _data_params(train),
                       "space": space, "points": points, "chosen": chosen, "val_mr": best["val_mr"],
                       "best_epoch": best["best_epoch"]}}
    _store(Path(recipe_file) if recipe_file else recipe_path(name), name, model, pretrained, dataset, key, entry)
    return entry


_NONE = object()


def _data_params(data) -> dict[str, Any] | None:
    """A generated dataset's generator parameters (which SynthRS version the recipe was chosen on)."""
    from rsretrieval.data.synthrs import generated_params

    root = getattr(data, "metadata", {}).get("root")
    return generated_params(root) if root else None


def _defaults(method: str, loss: str | None, knobs: list[str]) -> dict[str, Any]:
    """The default value of each method and loss knob (where it can be read), e.g. ``method.gate_scale``: 64."""
    import dataclasses
    import inspect

    from rsretrieval.cmer import CMERConfig
    from rsretrieval.methods import get_method
    from rsretrieval.training.tasks import _registry

    spec = get_method(method)
    loss = loss or spec.default_loss
    method_defaults = {f.name: f.default for f in dataclasses.fields(spec.config_cls)
                       if f.default is not dataclasses.MISSING}
    if loss == "cmer":
        loss_defaults = {f.name: f.default for f in dataclasses.fields(CMERConfig) if f.default is not dataclasses.MISSING}
    else:
        params = inspect.signature(_registry()[loss].build).parameters.values()
        loss_defaults = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    out = {}
    for knob in knobs:
        group, key = knob.split(".", 1)
        table = method_defaults if group == "method" else loss_defaults if group == "loss" else {}
        if key in table:
            out[knob] = table[key]
    return out


EDGE_STEP = 3.0  # a learning rate best at the edge of its grid is tried this factor further out
MAX_EXTENSIONS = 2
BUDGET_STEP = 2  # a chosen point whose best epoch is its last is trained again on this many times the epochs
MAX_EPOCHS = 48


def _beyond_the_edge(knob: str, values: list[Any], best: Any, extended: int) -> Any | None:
    """The next learning rate to try when the best one lies at the edge of those tried, else None."""
    if knob != "train.lr" or extended >= MAX_EXTENSIONS:
        return None
    if best == max(values):
        return float(f"{best * EDGE_STEP:.3g}")
    if best == min(values):
        return float(f"{best / EDGE_STEP:.3g}")
    return None


def _split(settings: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    parts: dict[str, dict[str, Any]] = {"train": {}, "method": {}, "loss": {}}
    for knob, value in settings.items():
        group, key = knob.split(".", 1)
        parts[group][key] = value
    return parts["train"], parts["method"], parts["loss"]


def _slug(settings: dict[str, Any]) -> str:
    return "_".join(f"{k.split('.', 1)[1]}={v}" for k, v in sorted(settings.items())) or "defaults"


def _store(path: Path, name: str, model: str, pretrained: str | None, dataset: str, method: str,
           entry: dict[str, Any]) -> None:
    with file_lock(path):  # sweeps of two methods may finish at once
        doc = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {
            "description": f"Chosen on {dataset}'s validation split for {model} ({pretrained}) by "
                           f"`python -m rsretrieval recipes sweep`; each method's entry keeps the sweep behind it.",
            "model": model, "pretrained": pretrained, "datasets": [dataset], "methods": {}}
        doc["methods"][method] = entry
        atomic_write_json(path, doc)
