"""Comparing methods: one run = pretrained model + method + loss, trained, selected on val, scored on test.

Runs are written to their own folders; a finished run is read back instead of retrained, and an
interrupted one resumes from its last checkpoint, so a notebook can be re-executed cheaply.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, replace
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from rsretrieval.data.dataset import CaptionDataset
from rsretrieval.files import atomic_write_json
from rsretrieval.training import TrainConfig


RESULTS_VERSION = 3  # the schema of results.json (below); 3: metrics with expected ties


def run_method(
    model: str,
    pretrained: str | None,
    method: str,
    train: CaptionDataset,
    val: CaptionDataset | None,
    test: CaptionDataset | None,
    config: TrainConfig | dict[str, Any] | None = None,
    *,
    recipe: str | None = None,
    loss: str | None = None,
    method_kwargs: dict[str, Any] | None = None,
    loss_kwargs: dict[str, Any] | None = None,
    run_dir: str | Path,
    per_scene: bool = False,
    verbose: bool = False,
    cache_features: bool = True,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train ``method`` on ``train``, keep its best epoch on ``val``, score ``test`` once; the one pipeline
    behind ``python -m rsretrieval train``, the notebooks and the benchmark runs.

    A finished run of the same identity is read back instead of retrained; an interrupted one resumes;
    a folder holding a run of other settings starts afresh (``config.resume=False`` always does).

    Args:
        model, pretrained: the base model (:func:`rsretrieval.models.create_model`).
        method: a registered method; ``method_kwargs`` set its config fields.
        train, val, test: the splits. Checkpoints are chosen on ``val`` only. ``val=None``: no selection,
            the last epoch is kept (to compare with papers that train on all of train). ``test=None``:
            nothing is scored on test (what a recipe sweep does).
        config: the training settings (``output_dir`` is set to ``run_dir``); with ``recipe``, a dict
            of the fields that override the recipe's.
        recipe: a recipe name (:mod:`rsretrieval.recipes`): its settings for ``method``, under
            ``config``, ``loss``, ``method_kwargs`` and ``loss_kwargs`` when those are given.
        loss: a training loss (:func:`rsretrieval.training.list_losses`); None: the recipe's, else the
            method's default.
        run_dir: the run folder.
        per_scene: also score ``test`` per scene.
        verbose: print the trainable-parameter line (rank 0 only).
        cache_features: a side branch (Focus-Adapter, CMER's branch) trains from the frozen-feature
            cache (:mod:`rsretrieval.cmer.cache`, built once per backbone and split): images and
            captions with ``infonce`` and ``recycling``, images only with ``cmer`` (which rewrites
            captions); the linear probe and CLIP-Adapter from the towers' pooled outputs, computed
            once (:class:`~rsretrieval.training.PooledFeatureTask`). False: from pixels and tokens.
        on_epoch: called with each epoch's record as training goes (not for a run read back).

    Returns:
        The ``results.json`` written to ``run_dir``: ``identity``, ``method``, ``loss``, ``seed``,
        ``trainable``, ``total``, ``method_file``, ``best_epoch``, ``val`` (metrics of the best epoch),
        ``val_mr``, ``test`` (metrics), ``test_per_scene``, ``seconds_per_epoch``, ``samples_per_s``,
        ``history``. ``identity["ties"]`` is the metrics' tie rule. Under torchrun, ranks other than 0 return ``{"rank": rank}`` after training.
    """
    from rsretrieval.evaluation import DEFAULT_TIES, evaluate
    from rsretrieval.methods import apply_method, get_method, save_method, wrap_tokenizer
    from rsretrieval.models import count_parameters, create_model, print_trainable_parameters, seed_everything
    from rsretrieval.models import select_device
    from rsretrieval.training import build_task, clear_run, fit, init_distributed, load_best
    from rsretrieval.training.checkpoint import save_best

    rank, world = init_distributed()  # under torchrun: one process per rank, rank 0 reports and writes
    config, loss, method_kwargs, loss_kwargs = _with_recipe(recipe, method, config, loss, method_kwargs, loss_kwargs)
    if recipe is not None and rank == 0:
        _warn_if_made_for_another_model(recipe, model, train.name)
    loss = loss or get_method(method).default_loss
    run_dir = Path(run_dir)
    cfg = replace(config, output_dir=str(run_dir))
    identity = {"model": model, "pretrained": pretrained, "method": method, "loss": loss,
                "method_kwargs": method_kwargs or {}, "loss_kwargs": loss_kwargs or {}, "config": _config_identity(cfg),
                "train_images": train.num_images, "selection": "val" if val is not None else "last epoch",
                "cached_features": trains_from_cache(method, loss) if cache_features else False,
                "recipe": recipe, "ties": DEFAULT_TIES, "results_version": RESULTS_VERSION}
    wanted = json.loads(json.dumps(identity))
    done, started = run_dir / "results.json", run_dir / "identity.json"
    if cfg.resume and done.exists() and _same_run((previous := json.loads(done.read_text())).get("identity"), wanted):
        return previous
    if rank == 0 and (not cfg.resume or not started.exists() or not _same_run(json.loads(started.read_text()), wanted)):
        # run_dir holds nothing, or a run of other settings (method, loss, data, config): start afresh;
        # only an interrupted run of exactly this identity is resumed.
        clear_run(run_dir)
        done.unlink(missing_ok=True)
        (run_dir / "method.pt").unlink(missing_ok=True)
        atomic_write_json(started, wanted)
    if world > 1:
        torch.distributed.barrier()  # the folder is ready before any rank looks into it
    seed_everything(cfg.seed)  # method init (and random base weights, if any) follow the run's seed
    bundle = create_model(model, pretrained)
    net = apply_method(bundle.model, method, **(method_kwargs or {}))
    tokenizer = wrap_tokenizer(net, bundle.tokenizer)  # CoOp writes placeholders; identity otherwise
    trainable, total = count_parameters(net)
    if rank == 0 and verbose:
        print_trainable_parameters(net)
    task = build_task(loss, net, train, **(loss_kwargs or {}))
    if identity["cached_features"] == "pooled":
        from rsretrieval.training import PooledFeatureTask

        task = PooledFeatureTask(net, train, bundle.transform, tokenizer, task.loss, device=select_device(cfg.device))
    elif identity["cached_features"]:
        from rsretrieval.cmer.cache import CachedSideBranchTask, build_cache

        cache = build_cache(net.to(select_device(cfg.device)), train, bundle.transform, tokenizer, progress=False)
        task = CachedSideBranchTask(net, cache, loss=task.loss) if identity["cached_features"] is True \
            else task.read_images_from(cache)
    history = fit(net, tokenizer, train, bundle.transform, cfg, val_data=val, val_transform=bundle.transform,
                  task=task, on_epoch=on_epoch)
    if rank != 0:
        return {"rank": rank}
    if val is None:  # no selection: the last epoch is the one kept
        save_best(net, run_dir, history.records[-1]["epoch"], None)
    best = load_best(net, run_dir)
    device = select_device(cfg.device)
    result = None if test is None else evaluate(
        net.to(device), test, transform=bundle.transform, tokenizer=tokenizer, device=device,
        batch_size=cfg.eval_batch_size, per_scene=per_scene, progress=False)
    # full fine-tuning's best.pt holds every weight; other methods also get a small portable file
    method_file = save_method(net, run_dir / "method.pt", base_name=bundle.name) if method != "full" \
        else run_dir / "best.pt"
    epochs = [r for r in history.records if r.get("seconds")]
    out = {
        "identity": identity, "method": method, "loss": loss, "seed": cfg.seed, "trainable": trainable,
        "total": total, "method_file": str(method_file), "best_epoch": best["epoch"], "val": best["metrics"],
        "val_mr": best["metrics"]["mr"] if best["metrics"] else None,
        "test": result.metrics if result else None, "test_per_scene": result.to_dict()["per_scene"] if result else None,
        "seconds_per_epoch": statistics.mean(r["seconds"] for r in epochs),
        "samples_per_s": statistics.mean(r["samples_per_s"] for r in epochs),
        "history": history.to_dict(),
    }
    atomic_write_json(done, out, default=float)
    return json.loads(done.read_text())


def _same_run(stored: Any, wanted: dict[str, Any]) -> bool:
    """Whether a stored run identity is ``wanted`` but for where the run's folder is (a copied checkout or
    a moved folder resumes its runs, and reads its finished ones back) and whether it drew progress bars."""
    def placeless(identity: Any) -> Any:
        if not isinstance(identity, dict) or not isinstance(identity.get("config"), dict):
            return identity
        config = {k: v for k, v in identity["config"].items() if k not in ("output_dir", "progress")}
        return {**identity, "config": config}

    return placeless(stored) == placeless(wanted)


def _config_identity(cfg: TrainConfig) -> dict[str, Any]:
    """The run identity's training settings; ``stop_epoch`` only when set, so runs made before the
    field existed keep their identity (and are read back, not trained again)."""
    return {k: v for k, v in asdict(cfg).items() if not (k == "stop_epoch" and v is None)}


CACHEABLE_LOSSES = ("infonce", "recycling")  # losses of the frozen features as they are: no dropout, no rewriting
IMAGE_CACHEABLE_LOSSES = ("cmer",)  # captions rewritten (scene prefixes): only the images' features are fixed


POOLED_METHODS = ("linear_probe", "clip_adapter")  # train only on each tower's pooled output


def trains_from_cache(method: str, loss: str) -> bool | str:
    """How ``run_method`` trains this method and loss from frozen features: True (a side branch, from
    the cache of images and captions), ``"images"`` (from the cache of images only), ``"pooled"`` (a
    method on the towers' pooled outputs, from those computed once), or False (not at all: the method
    sits inside the towers, or its loss changes what the backbone reads)."""
    from rsretrieval.cmer.focus_adapter import FocusAdapterConfig
    from rsretrieval.methods import get_method

    if method in POOLED_METHODS:
        return "pooled" if loss in CACHEABLE_LOSSES else False
    if not issubclass(get_method(method).config_cls, FocusAdapterConfig):
        return False
    return True if loss in CACHEABLE_LOSSES else "images" if loss in IMAGE_CACHEABLE_LOSSES else False


def _with_recipe(recipe: str | None, method: str, config: TrainConfig | dict[str, Any] | None, loss: str | None,
                 method_kwargs: dict[str, Any] | None, loss_kwargs: dict[str, Any] | None
                 ) -> tuple[TrainConfig, str | None, dict[str, Any], dict[str, Any]]:
    """The run's settings: the recipe's for ``method`` (if any), under what the caller gave explicitly."""
    if recipe is None:
        if isinstance(config, dict):
            config = TrainConfig(**config)
        return config or TrainConfig(), loss, method_kwargs or {}, loss_kwargs or {}
    if isinstance(config, TrainConfig):
        raise TypeError("with a recipe, pass `config` as a dict of the fields that override it (e.g. "
                        "{'epochs': 1}), not a whole TrainConfig, which would hide every recipe setting")
    from rsretrieval.recipes import load_recipe

    r = load_recipe(recipe, method, loss)
    return (r.config(**(config or {})), loss or r.loss, {**r.method_kwargs, **(method_kwargs or {})},
            {**r.loss_kwargs, **(loss_kwargs or {})})


def _warn_if_made_for_another_model(recipe: str, model: str, dataset: str) -> None:
    import warnings

    from rsretrieval.recipes import read_recipe_file

    doc = read_recipe_file(recipe)
    made_for = doc.get("model")
    if made_for is not None and made_for != model:
        warnings.warn(f"recipe {recipe!r} was chosen for {made_for} on {', '.join(doc.get('datasets', []))}; "
                      f"this run trains {model} on {dataset}", UserWarning, stacklevel=3)


def summarize(runs: list[dict[str, Any]], key: str = "mr", group: str = "method") -> list[dict[str, Any]]:
    """Mean and standard deviation of ``test[key]`` over the runs of each group (e.g. seeds of a method)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault(str(r[group]), []).append(r)
    rows = []
    for name, rs in groups.items():
        values = [r["test"][key] for r in rs]
        rows.append({
            group: name, "n": len(rs), "trainable": rs[0]["trainable"], "total": rs[0]["total"],
            f"{key}_mean": statistics.mean(values), f"{key}_std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "seconds_per_epoch": statistics.mean(r["seconds_per_epoch"] for r in rs),
            **({"samples_per_s": statistics.mean(r["samples_per_s"] for r in rs)}
               if all("samples_per_s" in r for r in rs) else {}),
            "values": values,
            # each run's per-image hits on test (zoo runs carry them): what a paired comparison resamples
            **({"hits": [r["test_hits"] for r in rs]} if all(r.get("test_hits") is not None for r in rs) else {}),
        })
    return rows


def compare(a: dict[str, Any], b: dict[str, Any], key: str = "mr", group: str = "method", unit: str = "mR") -> str:
    """One sentence comparing two :func:`summarize` rows, from their numbers: who leads by how much, or
    that the difference is within noise.

    Rows that hold their runs' per-image ``hits`` (zoo runs scored on one test split) are compared
    by :func:`~rsretrieval.evaluation.paired_comparison`: a lead needs its paired 95% CI to exclude 0
    and to exceed the seeds' spread. Otherwise the noise is the seeds' spread of a difference,
    sqrt(std_a² + std_b²); a difference no larger than it is called within noise. A row of one run
    (e.g. zero-shot, which has no seed) adds no spread; with one run on each side there is none to
    judge by, and the sentence says so.
    """
    if key == "mr" and "hits" in a and "hits" in b:
        return paired(a, b).sentence(a[group], b[group], unit)
    delta = a[f"{key}_mean"] - b[f"{key}_mean"]
    noise = (a[f"{key}_std"] ** 2 + b[f"{key}_std"] ** 2) ** 0.5
    seeds = f"{a['n']} and {b['n']} runs" if a["n"] != b["n"] else f"{a['n']} seed{'s' if a['n'] != 1 else ''} each"
    if max(a["n"], b["n"]) < 2:
        lead, trail = (a, b) if delta >= 0 else (b, a)
        return (f"{lead[group]} leads {trail[group]} by {abs(delta):.2f} {unit} ({seeds}: no spread to judge "
                "noise by)")
    if abs(delta) <= noise:
        return (f"{a[group]} and {b[group]} are within noise: they differ by {delta:+.2f} {unit}, no more than "
                f"the seeds' spread ({noise:.2f}; {seeds})")
    lead, trail = (a, b) if delta > 0 else (b, a)
    return f"{lead[group]} leads {trail[group]} by {abs(delta):.2f} ± {noise:.2f} {unit} ({seeds})"


def paired(a: dict[str, Any], b: dict[str, Any]):
    """The :class:`~rsretrieval.evaluation.Comparison` of two :func:`summarize` rows that hold ``hits``."""
    from rsretrieval.evaluation import paired_comparison

    if "hits" not in a or "hits" not in b:
        lacking = ", ".join(str(r.get("label", r.get("method", "?"))) for r in (a, b) if "hits" not in r)
        raise ValueError(f"a paired comparison needs both rows' per-image hits ({lacking} lack them): "
                         "summarize runs scored by rsretrieval.zoo.evaluate_zoo")
    return paired_comparison(a["hits"], b["hits"])


def with_ci(rows: list[dict[str, Any]], baseline: dict[str, Any], group: str = "method") -> list[dict[str, Any]]:
    """``rows`` with their paired comparison against ``baseline`` (the rows' mR minus its): ``vs``,
    ``delta``, ``ci_low``, ``ci_high``, ``p_value`` and ``verdict`` (``baseline`` itself: None)."""
    out = []
    for row in rows:
        if row is baseline or row[group] == baseline[group]:
            out.append({**row, "vs": None, "delta": None, "ci_low": None, "ci_high": None, "p_value": None,
                        "verdict": None})
            continue
        c = paired(row, baseline)
        out.append({**row, "vs": baseline[group], "delta": c.delta, "ci_low": c.ci_low, "ci_high": c.ci_high,
                    "p_value": c.p_value, "verdict": c.verdict})
    return out


def learning_curve(rows: list[dict[str, Any]], methods: list[str], shares: list[float], n_train: int,
                   zero_shot: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Each method's test mR against the number of labelled training images, from :func:`summarize` rows
    of zoo runs (labelled by :func:`rsretrieval.zoo.curve_label`), each point with the bootstrap 95% CI
    of its seeds' mean over test images; ``zero_shot`` (needing no labels) is drawn at every point."""
    from rsretrieval.evaluation import mr_interval
    from rsretrieval.zoo import curve_label

    by_label = {r["label"]: r for r in rows}
    points = []
    for method in methods + (["zero-shot"] if zero_shot else []):
        for share in sorted(shares):
            row = zero_shot if method == "zero-shot" else by_label.get(curve_label(method, share))
            if row is None:
                continue
            _, low, high = mr_interval(row["hits"]) if "hits" in row else (None, None, None)
            points.append({"method": method, "share": share, "n_train_images": max(1, round(share * n_train)),
                           "mr_mean": row["mr_mean"], "mr_std": row["mr_std"], "n": row["n"], "ci_low": low,
                           "ci_high": high, **({"hits": row["hits"]} if "hits" in row else {})})
    return points


def crossings(curve: list[dict[str, Any]]) -> list[str]:
    """Where two learning curves cross, in words from the numbers: between which numbers of labelled
    images one method's mean mR overtakes another's, and whether the paired CIs on each side say so."""
    by_method: dict[str, dict[int, dict[str, Any]]] = {}
    for p in curve:
        by_method.setdefault(p["method"], {})[p["n_train_images"]] = p
    out = []
    names = sorted(by_method)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            ns = sorted(set(by_method[a]) & set(by_method[b]))
            for lo, hi in zip(ns, ns[1:]):
                before = by_method[a][lo]["mr_mean"] - by_method[b][lo]["mr_mean"]
                after = by_method[a][hi]["mr_mean"] - by_method[b][hi]["mr_mean"]
                if before * after >= 0:
                    continue
                first, second = (a, b) if after > 0 else (b, a)
                sides = [paired({**by_method[first][n], "label": first}, {**by_method[second][n], "label": second})
                         if "hits" in by_method[a][n] and "hits" in by_method[b][n] else None for n in (lo, hi)]
                if all(c is not None for c in sides):
                    clear = all(c.verdict != "within noise" for c in sides)
                    detail = (f"{first} {sides[0].delta:+.2f} mR at {lo:,}, {sides[1].delta:+.2f} at {hi:,}; "
                              + ("both outside the paired 95% CI and the seeds' spread" if clear
                                 else "within noise on at least one side"))
                else:
                    detail = "means only: the points hold no per-image hits"
                out.append(f"{first} overtakes {second} between {lo:,} and {hi:,} labelled images ({detail})")
    return out


def plain(row: dict[str, Any]) -> dict[str, Any]:
    """A row without its per-image hits (for records and JSON)."""
    return {k: v for k, v in row.items() if k != "hits"}


def format_summary(rows: list[dict[str, Any]], key: str = "mr", group: str = "method",
                   extra: dict[str, dict[str, Any]] | None = None) -> str:
    """A plain-text table of :func:`summarize` rows; ``extra`` adds columns per group (e.g. peak memory)."""
    extra = extra or {}
    extra_cols = sorted({c for cols in extra.values() for c in cols})
    width = max([16] + [len(str(r[group])) for r in rows])
    vs = next((r["vs"] for r in rows if r.get("vs")), None)  # rows of with_ci: a CI column against vs
    ci_head = f" {'Δ vs ' + vs + ' [95% CI]':>30s}" if vs else ""
    head = (f"{group:{width}s} {'trainable':>12s} {key + ' (mean ± std)':>18s}{ci_head} {'s/epoch':>8s}"
            + "".join(f" {c:>14s}" for c in extra_cols))
    lines = [head, "-" * len(head)]
    for r in rows:
        cols = extra.get(r[group], {})
        ci = "" if not vs else f" {'-' if r.get('delta') is None else _ci(r):>30s}"
        lines.append(f"{r[group]:{width}s} {r['trainable']:12,d} {r[f'{key}_mean']:10.2f} ± {r[f'{key}_std']:5.2f}"
                     f"{ci} {r['seconds_per_epoch']:8.1f}" + "".join(f" {_fmt(cols.get(c)):>14s}" for c in extra_cols))
    return "\n".join(lines)


def _ci(row: dict[str, Any]) -> str:
    mark = {"ahead": "+", "behind": "-"}.get(row["verdict"], "~")
    return f"{row['delta']:+6.2f} [{row['ci_low']:+6.2f}, {row['ci_high']:+6.2f}] {mark}"


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:,.1f}" if isinstance(value, float) else str(value)
