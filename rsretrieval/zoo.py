"""The zoo: every configuration notebooks 02-05 compare, trained with its recipe over seeds, with provenance.

One entry is one configuration and one seed, trained by :func:`rsretrieval.experiments.run_method`
(best epoch on val, test scored once after) in a fresh child process, so its peak memory is its
own and the thread count is pinned (the same settings give the same file bit for bit on the same
kind of CPU). The committed zoo holds, per entry, a file of the trained weights only, in float16
(a method file; a full fine-tune as a compact model), and a row of ``zoo.json``; test is scored
once, from that file as stored.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from rsretrieval import defaults
from rsretrieval.errors import ChildProcessFailed, ZooIntegrityError
from rsretrieval.files import atomic_write_json, file_lock, sha256_file

ZOO_VERSION = 1
SEEDS = (0, 1, 2)


@dataclass(frozen=True)
class ZooConfig:
    """One configuration: a method with its loss and settings, over the recipe's."""

    label: str
    method: str
    loss: str | None = None  # None: the recipe's, else the method's default
    method_kwargs: dict[str, Any] = field(default_factory=dict)
    loss_kwargs: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields over the recipe's
    notebooks: tuple[str, ...] = ()
    cache_features: bool = True  # False: a side branch trains from pixels and tokens (what the cache saves)
    # loss knobs (CMERConfig fields) taken from the recipe's cmer entry: an ablation runs its component
    # with the settings CMER's sweep chose on validation
    cmer_knobs: tuple[str, ...] = ()
    # how many of the build's seeds it takes (None: all); which entries exist, not what one is
    n_seeds: int | None = None
    # a learning-curve point: this share of the training images (nested and scene-stratified, the same
    # images for every method and seed), trained on the recipe's whole schedule with early stopping on
    # val (the recipe's stop_epoch is where the sweep peaked on all the images, too early for fewer)
    train_share: float | None = None

    def seeds_of(self, seeds: list[int]) -> list[int]:
        """The seeds of ``seeds`` this configuration is built for: the first ``n_seeds`` of them."""
        return list(seeds)[: self.n_seeds] if self.n_seeds else list(seeds)

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() or c in "-_+" else "_" for c in self.label)


_MEAN = {"pooling": "mean"}
CONFIGS: tuple[ZooConfig, ...] = (
    *(ZooConfig(m, m, notebooks=("02",)) for m in ("full", "linear_probe", "adapter", "lora", "vpt", "coop",
                                                    "clip_adapter", "adaptformer")),
    ZooConfig("mrs_adapter", "mrs_adapter", "infonce", notebooks=("02", "03")),
    ZooConfig("mrs_adapter+hmmc", "mrs_adapter", "hmmc", notebooks=("02",)),
    ZooConfig("focus_adapter", "focus_adapter", "infonce", notebooks=("03", "04")),  # 04's "+focus"
    ZooConfig("side_branch", "focus_adapter", "infonce", _MEAN, notebooks=("03", "04")),  # mean pooling
    ZooConfig("focus_adapter_gate1", "focus_adapter", "infonce", {"gate_scale": 1.0}, notebooks=("03",)),
    # what the cache saves in time and memory (notebook 05), not a score to average: one seed
    ZooConfig("focus_adapter_uncached", "focus_adapter", "infonce", notebooks=("05",), cache_features=False,
              n_seeds=1),
    ZooConfig("+scene", "focus_adapter", "cmer", _MEAN, {"queue_weight": 0.0}, notebooks=("04",),
              cmer_knobs=("scene_prob",)),
    ZooConfig("+recycling", "focus_adapter", "recycling", _MEAN, notebooks=("04",),
              cmer_knobs=("queue_weight", "queue_size", "queue_warmup")),
    ZooConfig("cmer", "cmer", "cmer", notebooks=("04",)),
    # 04's batch x queue sweep: the side branch without and with the queues at two batch sizes, and
    # two other queue sizes at the small batch; the same number of pairs for every batch size. At the
    # recipe's batch its corners are side_branch and +recycling: the build trains each such run once.
    *(ZooConfig(f"sweep-b{b}-q{q}", "focus_adapter", "recycling" if q else "infonce", _MEAN,
                {"queue_size": q} if q else {}, {"batch_size": b}, notebooks=("04",),
                cmer_knobs=("queue_weight", "queue_warmup") if q else ())
      for b, q in ((16, 0), (16, 512), (64, 0), (64, 512), (16, 128), (16, 2048))),
)
# Notebook 02's learning curves: these methods at these shares of the training images (all of them:
# the entries above); zero-shot needs none.
CURVE_SHARES = (0.05, 0.10, 0.25, 0.50)
CURVE_METHODS = ("linear_probe", "full", "mrs_adapter", "lora", "focus_adapter")


def curve_label(label: str, share: float) -> str:
    """The zoo label of ``label``'s learning-curve point at ``share`` of the training images (1: itself)."""
    return label if share == 1 else f"{label}@{round(100 * share)}%"


CONFIGS += tuple(replace(c, label=curve_label(c.label, share), notebooks=("02",), train_share=share)
                 for c in CONFIGS if c.label in CURVE_METHODS for share in CURVE_SHARES)


def zoo_dir(model: str = "mini", dataset: str = "synthrs", regime: str | None = None) -> Path:
    """Where the committed zoo of ``model`` on ``dataset`` (in a SynthRS ``regime``) lives: the
    checkout's ``data/zoo/<model>-<dataset>[-<regime>]``."""
    from rsretrieval.paths import checkout_root, data_home

    root = checkout_root()
    name = f"{model}-{dataset}" + (f"-{regime}" if regime else "")
    return (root / "data" if root is not None else data_home()) / "zoo" / name


def select(only: list[str] | None, configs: tuple[ZooConfig, ...] = CONFIGS) -> list[ZooConfig]:
    """Configurations by label, or every configuration of a method; all when ``only`` is empty."""
    if not only:
        return list(configs)
    picked = []
    for name in only:
        found = [c for c in configs if c.label == name] or [c for c in configs if c.method == name]
        if not found:
            raise ValueError(f"no zoo configuration or method {name!r}; labels: {', '.join(c.label for c in configs)}")
        picked += [c for c in found if c not in picked]
    return picked


@dataclass
class ZooSettings:
    """What every entry of one zoo shares."""

    model: str = "mini"
    pretrained: str | None = defaults.MINICLIP_TAG
    dataset: str = "synthrs"
    root: str | None = None
    recipe: str | None = defaults.RECIPE
    device: str = "cpu"  # CPU by default: the committed files are made, and reproduced, there
    threads: int = 1  # per entry; `build_zoo(workers=2)` trains two at once on 2 cores
    regime: str | None = None  # a SynthRS regime (data.synthrs.REGIMES), generated into <data home>/synthrs-<regime>
    # the SynthRS version of generated data (None: the current one, data.synthrs.VERSIONS; recorded
    # concretely, so that a zoo names the generator it was built on); other datasets and roots: None
    version: str | None = None

    def __post_init__(self) -> None:
        if self.version is None and self.dataset == "synthrs" and self.root is None:
            from rsretrieval.data.synthrs import VERSIONS

            self.version = VERSIONS["rs"]

    def data_root(self) -> str | None:
        """The dataset folder: ``root``; for generated SynthRS of a regime or of another version than
        the current one, its folder (``<data home>/synthrs[-<regime>][-<version>]``), generated on first use."""
        from rsretrieval.data.synthrs import VERSIONS, generate_regime, generate_synthrs
        from rsretrieval.paths import data_dir

        other = self.version not in (None, VERSIONS["rs"])
        if self.root is not None or (self.regime is None and not other):
            return self.root

        if self.dataset != "synthrs":
            raise ValueError(f"regime {self.regime!r} and version {self.version!r} are SynthRS's: they need "
                             f"dataset 'synthrs', not {self.dataset!r}")
        folder = data_dir("-".join(p for p in ("synthrs", self.regime, self.version if other else None) if p))
        kwargs = {"progress": False, **({"version": self.version} if other else {})}
        if self.regime:
            return str(generate_regime(self.regime, folder, **kwargs))
        return str(generate_synthrs(folder, **kwargs))


def build_zoo(only: list[str] | None = None, seeds: list[int] | None = None, out: str | Path | None = None,
              settings: ZooSettings | None = None, *, configs: tuple[ZooConfig, ...] = CONFIGS,
              workers: int = 1, isolate: bool = True, progress: bool = True) -> dict[str, Any]:
    """Train every selected configuration for every seed (a finished entry is kept, an interrupted one resumes).

    Two configurations that train the same run (the same method, loss, settings and seed) train it once:
    the second's row is the first's, under its own label, with ``same_run_as`` naming the entry trained.

    Args:
        only: labels or methods (:func:`select`); None: all.
        seeds: default :data:`SEEDS`; a configuration with ``n_seeds`` takes the first ones.
        out: the zoo folder (default :func:`zoo_dir`): ``zoo.json``, ``files/``, and the run folders in
            ``runs/`` (checkpoints to resume from; not committed).
        settings: model, data, recipe, device, threads.
        workers: entries trained at once, each in its own child process with ``settings.threads``
            threads (on 2 cores, two 1-thread children do about 1.2x the work of one 2-thread child);
            the files do not depend on it.
        isolate: train each entry in a child process, so that its peak memory is its own (False: here,
            one at a time).

    Returns:
        The zoo document, as written to ``zoo.json`` after every entry.
    """
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    from rsretrieval.models.factory import check_weights

    settings = settings or ZooSettings()
    folder = Path(out) if out else zoo_dir(settings.model, settings.dataset, settings.regime)
    picked = select(only, configs)
    seeds = list(SEEDS if seeds is None else seeds)
    if workers < 1 or settings.threads < 1:
        raise ValueError(f"workers ({workers}) and threads ({settings.threads}) must be at least 1")
    if any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in seeds):
        raise ValueError(f"seeds must be integers from 0 up, not {seeds}")
    check_weights(settings.model, settings.pretrained)  # here, not in a child process after runs/ was made
    index = folder / "zoo.json"
    base = base_weights(settings)
    doc = _read_index(index) if index.is_file() else _new_doc(settings, base)
    _check_rows(doc, index)  # a damaged file is trained again below; a damaged record is refused by name
    other = _other_zoo(doc, settings, base)
    if other:
        raise ValueError(f"{index} is {other}: build into another --out folder, or delete it to rebuild")
    jobs = [(c, s) for c in picked for s in c.seeds_of(seeds)]
    by_label = {c.label: c for c in configs}
    fresh = {e["key"]: e for e in doc["entries"] if e["label"] in by_label and _fresh(e, by_label[e["label"]],
                                                                                      folder, settings)}
    trained = {}  # what decides a run's weights -> a fresh row that holds them
    for row in fresh.values():
        trained.setdefault(_run_of(settings, by_label[row["label"]], row["seed"]), row)
    todo = [(c, s) for c, s in jobs if f"{c.slug}-s{s}" not in fresh]  # new, changed, re-swept or damaged
    # two configurations that train the same run (a grid's corner that is another entry) train it once
    runs = {(c.label, s): _run_of(settings, c, s) for c, s in todo}
    firsts, followers, twins = {}, {}, []
    for config, seed in todo:
        run = runs[config.label, seed]
        if run in trained:
            twins.append(_twin_row(trained[run], config, seed, settings))
        elif run in firsts:
            followers.setdefault(run, []).append((config, seed))
        else:
            firsts[run] = (config, seed)
    if firsts:
        settings.data_root()  # a regime's data is generated here, once, not by two children at the same time
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="zoo", disable=not progress)

    def land(row: dict[str, Any]) -> None:  # only this thread writes zoo.json
        with file_lock(index):  # another build into this folder (other --only) may have landed entries
            if index.is_file():
                doc["entries"] = _read_index(index)["entries"]
            doc["entries"] = [e for e in doc["entries"] if e["key"] != row["key"]] + [row]
            doc["entries"].sort(key=lambda e: (_order(configs, e["label"]), e["seed"]))
            atomic_write_json(index, doc)
        bar.set_postfix_str(row["key"])
        bar.update(1)

    for row in twins:
        land(row)
    with ThreadPoolExecutor(max_workers=max(1, workers) if isolate else 1) as pool:  # each waits on a child
        train = _run_child if isolate else _in_process
        pending = {pool.submit(train, config, seed, folder, settings): run for run, (config, seed) in firsts.items()}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)  # each entry lands as it finishes
            for future in done:
                run = pending.pop(future)
                if future.exception() is not None:
                    for other in pending:
                        other.cancel()  # the running ones finish (and stay resumable); nothing new starts
                    raise future.exception()
                row = future.result()
                land(row)
                for twin, twin_seed in followers.get(run, []):
                    land(_twin_row(row, twin, twin_seed, settings))
    bar.close()
    return doc


def base_weights(settings: ZooSettings) -> str | None:
    """What the zoo's base weights are: a file's sha256 (ours, or a path), else the published tag; None: random.

    A zoo is of one set of base weights: re-pretraining MiniCLIP makes every entry of the old zoo stale.
    """
    from rsretrieval.models.factory import local_pretrained_path

    if not settings.pretrained:
        return None
    path = local_pretrained_path(settings.model, settings.pretrained) or Path(settings.pretrained)
    return f"sha256:{sha256_file(path)}" if path.is_file() else f"tag:{settings.pretrained}"


def _new_doc(settings: ZooSettings, base: str | None) -> dict[str, Any]:
    return {"zoo_version": ZOO_VERSION, "settings": asdict(settings), "base_weights": base, "entries": []}


def _other_zoo(doc: dict[str, Any], settings: ZooSettings, base: str | None) -> str | None:
    """What makes ``doc`` a zoo of other settings or base weights than these; None when it is not."""
    if doc.get("settings") != json.loads(json.dumps(asdict(settings))):
        return f"a zoo of other settings ({doc.get('settings')})"
    if doc.get("base_weights") != base:
        return (f"a zoo of other base weights ({doc.get('base_weights') or 'not recorded'}; "
                f"{settings.model} {settings.pretrained} is now {base})")
    return None


def _recipe_of(settings: ZooSettings, config: ZooConfig) -> dict[str, Any] | None:
    """The recipe's settings an entry trains with (a re-sweep that changes them makes the entry stale)."""
    if not settings.recipe:
        return None
    from rsretrieval.recipes import load_recipe

    chosen = load_recipe(settings.recipe, config.method, config.loss).to_dict()
    if config.cmer_knobs:
        chosen["cmer_knobs"] = _cmer_knobs(settings, config)
    return json.loads(json.dumps(chosen))


def _run_of(settings: ZooSettings, config: ZooConfig, seed: int) -> str:
    """What decides an entry's weights besides the zoo's settings: the same string, the same file."""
    from rsretrieval.training import TrainConfig

    recipe = _recipe_of(settings, config) or {}
    recipe.pop("cmer_knobs", None)  # taken into the loss keywords below
    train = {**asdict(TrainConfig()), **recipe.pop("train", {}), **_curve_train(settings, config),
             **config.train}  # as run_method resolves them
    return json.dumps({"method": config.method, "loss": config.loss, "method_kwargs": config.method_kwargs,
                       "train_share": config.train_share,
                       "loss_kwargs": {**_cmer_knobs(settings, config), **config.loss_kwargs}, "train": train,
                       "cache_features": config.cache_features, "recipe": recipe, "seed": seed}, sort_keys=True,
                      default=list)


def _curve_train(settings: ZooSettings, config: ZooConfig) -> dict[str, Any]:
    """A learning-curve point's schedule over the recipe's: no stop before the schedule's last epoch."""
    if config.train_share is None:
        return {}
    from rsretrieval.training import TrainConfig

    train = {"epochs": TrainConfig().epochs, **(_recipe_of(settings, config) or {}).get("train", {}), **config.train}
    return {"stop_epoch": train["epochs"]}


def _twin_row(row: dict[str, Any], config: ZooConfig, seed: int, settings: ZooSettings) -> dict[str, Any]:
    """The row of ``config`` when ``row`` trained the same run: its file and results, under this label."""
    return {**row, "key": f"{config.slug}-s{seed}", "label": config.label, "config": _plain(config),
            "recipe_settings": _recipe_of(settings, config), "same_run_as": row.get("same_run_as", row["key"]),
            "command": _rebuild_command(config, seed, settings)}


# the recycling loss names the queue's knobs as RecyclingLoss does
_RECYCLING_KEYWORDS = {"queue_weight": "weight", "queue_size": "queue_size", "queue_warmup": "warmup_steps"}


def _cmer_knobs(settings: ZooSettings, config: ZooConfig) -> dict[str, Any]:
    """The loss keywords ``config`` takes from the recipe's cmer entry (none without a recipe, and none
    where the recipe holds a sweep of this method and loss of its own: its choice applies)."""
    if not config.cmer_knobs or not settings.recipe:
        return {}
    from rsretrieval.recipes import load_recipe, read_recipe_file, recipe_key

    entries = read_recipe_file(settings.recipe)["methods"]
    if recipe_key(config.method, config.loss) in entries:
        return {}

    chosen = load_recipe(settings.recipe, "cmer").loss_kwargs
    knobs = {k: chosen[k] for k in config.cmer_knobs if k in chosen}
    if knobs and not any(knobs.values()):  # CMER's sweep switched the component off: measure it on
        knobs = _best_on(entries["cmer"], config.cmer_knobs) or knobs
    return {_RECYCLING_KEYWORDS[k]: v for k, v in knobs.items()} if config.loss == "recycling" else knobs


def _best_on(entry: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any] | None:
    """The knobs of the best validation point of a cmer sweep with a component on (a knob not 0): what
    an ablation of the component trains with where the sweep chose it off. None: no such point."""
    points = [p for p in entry.get("sweep", {}).get("points", [])
              if any(p["settings"].get(f"loss.{k}") for k in names)]
    best = max(points, key=lambda p: p["val_mr"])["settings"] if points else None
    return None if best is None else {k: best[f"loss.{k}"] for k in names if f"loss.{k}" in best}


def _plain(config: ZooConfig) -> dict[str, Any]:
    plain = json.loads(json.dumps(asdict(config)))
    del plain["n_seeds"]  # which entries a build makes, not what an entry is
    for name in ("cmer_knobs", "train_share"):
        if not plain[name]:
            del plain[name]  # entries made before the field existed keep their config
    return plain


def _order(configs: tuple[ZooConfig, ...], label: str) -> int:
    return next((k for k, c in enumerate(configs) if c.label == label), len(configs))


def _fresh(row: dict[str, Any], config: ZooConfig, folder: Path, settings: ZooSettings) -> bool:
    """Whether ``row`` is what building ``config`` now would give: the same config and recipe, its file intact."""
    return row["config"] == _plain(config) and row.get("recipe_settings") == _recipe_of(settings, config) \
        and _file_ok(folder, row)


def _file_ok(folder: Path, row: dict[str, Any]) -> bool:
    path = folder / row["file"]
    return path.is_file() and sha256_file(path) == row["file_sha256"]


def _run_child(config: ZooConfig, seed: int, folder: Path, settings: ZooSettings) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    job = folder / "runs" / f"{config.slug}-s{seed}.job.json"
    job.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(job, {"config": _plain(config), "seed": seed, "folder": str(folder),
                            "settings": asdict(settings)})
    proc = subprocess.run([sys.executable, "-m", "rsretrieval.zoo", "--child", str(job)],
                          stderr=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        last = next((line for line in reversed(proc.stderr.splitlines()) if line.strip()), "no message")
        raise ChildProcessFailed(f"zoo entry {config.label} seed {seed} failed (exit {proc.returncode}): {last}\n"
                                 f"{proc.stderr[-2000:]}")
    return json.loads(job.with_suffix(".row.json").read_text())


def _in_process(config: ZooConfig, seed: int, folder: Path, settings: ZooSettings) -> dict[str, Any]:
    import torch

    threads = torch.get_num_threads()
    try:
        return train_entry(config, seed, folder, settings)
    finally:
        torch.set_num_threads(threads)


def train_entry(config: ZooConfig, seed: int, folder: Path, settings: ZooSettings) -> dict[str, Any]:
    """Train one entry in this process and return its ``zoo.json`` row (what the child process runs)."""
    import torch

    import rsretrieval
    from rsretrieval.bench import peak_rss_bytes
    from rsretrieval.data import load_dataset, nested_subset
    from rsretrieval.experiments import run_method
    from rsretrieval.methods import save_method_half

    torch.set_num_threads(settings.threads)
    key = f"{config.slug}-s{seed}"
    from rsretrieval.recipes import data_kwargs

    kwargs = data_kwargs(settings.recipe)  # e.g. PE-RSITR's 20% of train as validation
    root = settings.data_root()
    splits = [load_dataset(settings.dataset, root, s, **kwargs) for s in ("train", "val", "test")]
    if config.train_share is not None:
        splits[0] = nested_subset(splits[0], max(1, round(config.train_share * splits[0].num_images)))
    overrides = {**_curve_train(settings, config), **config.train, "seed": seed, "device": settings.device,
                 "progress": False}
    result = run_method(settings.model, settings.pretrained, config.method, splits[0], splits[1],
                        None, overrides, recipe=settings.recipe,  # test: scored below, from the stored file
                        loss=config.loss, method_kwargs=config.method_kwargs,
                        loss_kwargs={**_cmer_knobs(settings, config), **config.loss_kwargs},
                        run_dir=folder / "runs" / key, cache_features=config.cache_features)
    target = folder / "files" / f"{key}.pt"
    target.parent.mkdir(parents=True, exist_ok=True)
    if config.method == "full":
        _save_full(result, settings, splits, target)
    else:
        save_method_half(result["method_file"], target)
    test = score_stored({"method": config.method, "seed": seed, "file": str(target.relative_to(folder))},
                        folder, settings, splits[2])
    records = result["history"]["records"]
    return {
        "key": key, "label": config.label, "method": config.method, "config": _plain(config),
        "loss": result["loss"], "seed": seed, "recipe": settings.recipe,
        "recipe_settings": _recipe_of(settings, config), "best_epoch": result["best_epoch"],
        "epochs_run": len(records), "val_mr": result["val_mr"], "test_mr": test["mr"], "test": test,
        "trainable": result["trainable"], "total": result["total"],
        "train_seconds": round(sum(r["seconds"] for r in records), 1),
        "seconds_per_epoch": round(result["seconds_per_epoch"], 2),
        "peak_memory_bytes": peak_rss_bytes(), "file": str(target.relative_to(folder)),
        "file_bytes": target.stat().st_size, "file_sha256": sha256_file(target), "identity": result["identity"],
        "history": [{k: r.get(k) for k in ("epoch", "train_loss", "val_mr", "lr")} for r in records],
        "library_version": rsretrieval.__version__, "command": _rebuild_command(config, seed, settings),
    }


def _rebuild_command(config: ZooConfig, seed: int, settings: ZooSettings) -> str:
    """The command line that builds this one entry again."""
    command = ["python", "-m", "rsretrieval", "zoo", "build", "--only", config.label, "--seed", str(seed)]
    return shlex.join(command + _settings_args(settings))


def _settings_args(settings: ZooSettings) -> list[str]:
    default = ZooSettings()
    args = []
    for name in ("model", "pretrained", "dataset", "root", "recipe", "device", "threads", "regime", "version"):
        value = getattr(settings, name)
        if value != getattr(default, name) and not (name == "version" and value is None):  # None: not SynthRS's
            args += [f"--{name}", "" if value is None else str(value)]
    return args


def score_stored(row: dict[str, Any], folder: str | Path, settings: ZooSettings, test,
                 decoded: dict[str, Any] | None = None) -> dict[str, float]:
    """The test metrics of an entry's file as stored (at build time, the only time an entry meets
    the test split). ``decoded``: a dict kept across calls, in which the test images are decoded
    once (every entry of a zoo has its base model's transform) and a side branch's frozen forwards are
    kept (:func:`~rsretrieval.cmer.remember_frozen_features`)."""
    return evaluate_stored(row, folder, settings, test, decoded).metrics


def evaluate_stored(row: dict[str, Any], folder: str | Path, settings: ZooSettings, test,
                    decoded: dict[str, Any] | None = None):
    """:func:`score_stored`'s whole :class:`~rsretrieval.evaluation.EvalResult`, ranks included."""
    import torch

    from rsretrieval.cmer import remember_frozen_features
    from rsretrieval.evaluation import decoded_images, evaluate

    bundle = entry_model(row, folder, settings)
    decoded = {} if decoded is None else decoded
    if "images" not in decoded:
        decoded["images"] = decoded_images(test, bundle.transform)
    device = settings.device
    model = bundle.model.to(device)
    # side-branch runs share their frozen backbone: its forwards on the test split are computed once
    with torch.no_grad(), remember_frozen_features(model, decoded.setdefault("frozen", {})):
        return evaluate(model, test, transform=bundle.transform, tokenizer=bundle.tokenizer, device=device,
                        per_scene=False, progress=False, images=decoded["images"])


def _save_full(result: dict[str, Any], settings: ZooSettings, splits: list, target: Path) -> None:
    """A full fine-tune's best weights as a compact file (float16, used token rows only)."""
    import torch

    from rsretrieval.models import create_model
    from rsretrieval.models.compact import save_compact
    from rsretrieval.training import load_best

    bundle = create_model(settings.model, settings.pretrained)
    load_best(bundle.model, Path(result["method_file"]).parent)
    captions = [c for data in splits for c in data.captions]
    used = torch.unique(torch.cat([bundle.tokenizer(captions).flatten(), _pretrained_rows(settings)]))
    identity = {**result["identity"], "config": {k: v for k, v in result["identity"]["config"].items()
                                                 if k != "output_dir"}}  # no path: the same bytes in any folder
    save_compact(bundle.model, target, used, arch=settings.model, meta={"zoo": identity})


def _pretrained_rows(settings: ZooSettings):
    """The token rows the base weights were pretrained on (kept as well), when they are a compact file."""
    import torch

    from rsretrieval.models.compact import FORMAT as COMPACT_FORMAT
    from rsretrieval.models.factory import local_pretrained_path

    path = local_pretrained_path(settings.model, settings.pretrained) if settings.pretrained else None
    blob = torch.load(path, map_location="cpu", weights_only=True) if path is not None and path.is_file() else None
    if not isinstance(blob, dict) or blob.get("format") != COMPACT_FORMAT:
        return torch.empty(0, dtype=torch.long)
    return blob["payload"]["token_rows"].long()


_WHAT_DECIDES = ("model", "pretrained", "dataset", "root", "recipe", "regime", "version")  # device, threads: only the bits


def find_zoo(settings: ZooSettings, folder: str | Path | None = None) -> dict[str, Any] | None:
    """The zoo in ``folder`` (default :func:`zoo_dir`) if it was built for the same model, base weights,
    data and recipe as ``settings`` (on any device), else None."""
    index = Path(folder or zoo_dir(settings.model, settings.dataset, settings.regime)) / "zoo.json"
    if not index.is_file():
        return None
    doc = _read_index(index)
    wanted = json.loads(json.dumps(asdict(settings)))
    same = all(doc.get("settings", {}).get(k) == wanted[k] for k in _WHAT_DECIDES)  # None == absent
    if not (same and doc.get("base_weights") == base_weights(settings)):
        return None
    verify_zoo(doc, index.parent, index)  # what is scored or selected is what was built
    return doc


def ensure_zoo(settings: ZooSettings, labels: list[str], seeds: list[int], out: str | Path, *,
               train: dict[str, Any] | None = None, configs: tuple[ZooConfig, ...] = CONFIGS,
               isolate: bool = True, progress: bool = True) -> tuple[dict[str, Any], Path]:
    """A zoo holding every (label, seed) asked for: the committed one when it has them for these
    settings, else the one in ``out``, after training what it lacks through :func:`build_zoo` (the
    committed entries it has are copied there first, not trained again).

    Args:
        train: TrainConfig fields over every configuration's (e.g. ``{"max_steps": 1}`` for a smoke run).
        isolate: train each entry in a child process (its own peak memory); False: in this one.

    Returns:
        (the zoo document, its folder).
    """
    wanted = {(c.label, seed) for c in select(labels, configs) for seed in c.seeds_of(seeds)}
    committed = find_zoo(settings)
    home = zoo_dir(settings.model, settings.dataset, settings.regime)
    if committed is not None and not train:
        if wanted <= {(e["label"], e["seed"]) for e in committed["entries"]}:
            return committed, home
        _copy_entries(committed, home, Path(out), settings, wanted)
    picked = tuple(replace(c, train={**c.train, **(train or {})}) for c in select(labels, configs))
    return build_zoo(None, seeds, out, settings, configs=picked, isolate=isolate, progress=progress), Path(out)


def _copy_entries(doc: dict[str, Any], source: Path, out: Path, settings: ZooSettings,
                  wanted: set[tuple[str, int]]) -> None:
    """Copy the ``wanted`` entries of the zoo in ``source`` (same model, data and recipe) into the zoo in ``out``."""
    index = out / "zoo.json"
    mine = _read_index(index) if index.is_file() else _new_doc(settings, doc.get("base_weights"))
    if _other_zoo(mine, settings, doc.get("base_weights")):
        return  # build_zoo refuses it by name
    keys = {e["key"] for e in mine["entries"]}
    rows = [e for e in doc["entries"] if (e["label"], e["seed"]) in wanted and e["key"] not in keys
            and _file_ok(source, e)]
    if not rows:
        return
    for row in rows:
        (out / row["file"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / row["file"], out / row["file"])
    mine["entries"] += rows
    atomic_write_json(index, mine)


def entry_model(row: dict[str, Any], folder: str | Path, settings: ZooSettings):
    """The trained model of one entry, as stored: a ``ModelBundle`` whose ``model`` carries the method.

    A full fine-tune is its compact file; any other method is injected into the base model and
    loaded from its method file (which checks that the base is the one it was trained on).
    """
    from rsretrieval.methods import load_method, wrap_tokenizer
    from rsretrieval.models import create_model, seed_everything
    from rsretrieval.models.compact import load_compact

    seed_everything(row["seed"])  # random base weights (no `pretrained`) are the run's seed's
    path = Path(folder) / row["file"]
    if row["method"] == "full":
        from rsretrieval.models.factory import _quiet_random_init

        with _quiet_random_init(True):  # filled from the file right after
            bundle = create_model(settings.model, None)
        load_compact(bundle.model, path, arch=settings.model)
        return bundle
    bundle = create_model(settings.model, settings.pretrained)
    net = load_method(bundle.model, path, base_name=bundle.name)
    return replace(bundle, model=net, tokenizer=wrap_tokenizer(net, bundle.tokenizer))


def evaluate_zoo(doc: dict[str, Any], folder: str | Path, test, *, labels: list[str] | None = None,
                 seeds: list[int] | None = None, device: str = "cpu", progress: bool = True) -> list[dict[str, Any]]:
    """Score every entry (of ``labels`` and ``seeds``, default all) live on ``test``, from its stored file
    (``test=None``: the entries as stored, ``test`` None).

    Returns:
        One run per entry, shaped as :func:`rsretrieval.experiments.run_method`'s results (``label``,
        ``method``, ``seed``, ``test``, ``val_mr``, ``best_epoch``, ``trainable``, ``total``,
        ``seconds_per_epoch``, ``history``, ...) plus ``stored_test_mr``, the build's own score, to check
        the live one against, ``test_hits``, its per-image hits (what paired comparisons resample;
        None when not scored), and ``file``, the entry's weights.
    """
    from rsretrieval.evaluation import per_image_hits

    settings = replace(ZooSettings(**doc["settings"]), device=device)
    rows = [e for e in doc["entries"] if (labels is None or e["label"] in labels)
            and (seeds is None or e["seed"] in seeds)]
    missing = sorted(set(labels or ()) - {e["label"] for e in rows})
    if missing:
        raise ValueError(f"the zoo in {folder} has no entries for {', '.join(missing)}: build them with "
                         f"`python -m rsretrieval zoo build --only {' '.join(missing)}`")
    runs, decoded, scored = [], {}, {}
    for row in tqdm(rows, desc="zoo: scoring on test", disable=not progress or test is None):
        metrics, hits = scored.get(row["file_sha256"], (None, None))  # two configurations, one file
        if test is not None and metrics is None:
            result = evaluate_stored(row, folder, settings, test, decoded)
            metrics, hits = scored[row["file_sha256"]] = result.metrics, per_image_hits(result, test.text_to_image)
        runs.append({**{k: row[k] for k in ("key", "label", "method", "loss", "seed", "val_mr", "best_epoch",
                                            "epochs_run", "trainable", "total", "train_seconds",
                                            "seconds_per_epoch", "peak_memory_bytes", "history")},
                     "test": metrics, "test_hits": hits, "train_images": row["identity"].get("train_images"),
                     "stored_test_mr": row["test_mr"], "file": str(Path(folder) / row["file"])})
    return runs


def best_entry(doc: dict[str, Any]) -> dict[str, Any]:
    """The zoo's best model by validation only: the configuration with the highest mean val mR over its
    seeds, and its seed with the highest val mR."""
    by_label: dict[str, list[dict[str, Any]]] = {}
    for e in doc["entries"]:
        by_label.setdefault(e["label"], []).append(e)
    label = max(by_label, key=lambda k: sum(e["val_mr"] for e in by_label[k]) / len(by_label[k]))
    return max(by_label[label], key=lambda e: e["val_mr"])


def encoder_weights(row: dict[str, Any], folder: str | Path, settings: ZooSettings) -> dict[str, Any]:
    """``pretrained`` and ``adapter`` that load one entry's model (e.g. into a search ``Encoder``)."""
    path = str(Path(folder) / row["file"])
    return {"pretrained": path, "adapter": None} if row["method"] == "full" else \
        {"pretrained": settings.pretrained, "adapter": path}


def load_zoo(folder: str | Path | None = None, *, verify: bool = True) -> dict[str, Any]:
    """The zoo document of ``folder`` (default: the committed MiniCLIP zoo on SynthRS).

    ``verify``: check every entry against its file and its own history first (:func:`verify_zoo`), so
    that nothing scores or selects a file that is not the one built, or a record that was edited.
    """
    folder = Path(folder or zoo_dir())
    index = folder / "zoo.json"
    if not index.is_file():
        raise FileNotFoundError(f"no zoo at {index}: build it with `python -m rsretrieval zoo build`")
    doc = _read_index(index)
    if verify:
        verify_zoo(doc, folder, index)
    return doc


def _read_index(index: Path) -> dict[str, Any]:
    try:
        doc = json.loads(index.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ZooIntegrityError(f"{index} is not valid JSON ({exc}): restore it (`git checkout -- {index}` "
                                "for the committed zoo) or rebuild it with `python -m rsretrieval zoo build`") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("entries"), list) or not isinstance(doc.get("settings"), dict):
        raise ZooIntegrityError(f"{index} is not a zoo (no settings and entries list): restore it or rebuild "
                                "it with `python -m rsretrieval zoo build`")
    return doc


_ROW_FIELDS = {"key": str, "label": str, "method": str, "seed": int, "best_epoch": int, "epochs_run": int,
               "val_mr": (int, float), "test_mr": (int, float), "file": str, "file_sha256": str, "history": list,
               "identity": dict}


def _row_name(row: Any, index: Path, n: int | None = None) -> str:
    return f"{index}, entry {row.get('key', n) if isinstance(row, dict) else n}"


def _row_fix(row: Any) -> str:
    return f"rebuild it with `{row['command']}`" if isinstance(row, dict) and isinstance(row.get("command"), str) \
        else "rebuild the zoo with `python -m rsretrieval zoo build`"


def _check_rows(doc: dict[str, Any], index: Path) -> None:
    """Every entry is a record with the fields (and types) a zoo row has."""
    for n, row in enumerate(doc["entries"]):
        if not isinstance(row, dict):
            raise ZooIntegrityError(f"{_row_name(row, index, n)} is not a record: {_row_fix(row)}")
        wrong = [f for f, kind in _ROW_FIELDS.items() if not isinstance(row.get(f), kind)
                 or (kind is int and isinstance(row.get(f), bool))]
        if wrong:
            raise ZooIntegrityError(f"{_row_name(row, index, n)}: {', '.join(wrong)} missing or of the wrong "
                                    f"type: {_row_fix(row)}")


def verify_zoo(doc: Any, folder: str | Path, index: str | Path | None = None) -> None:
    """Raise :class:`ZooIntegrityError`, naming the entry and the fix, unless every entry of ``doc`` holds:
    the fields a zoo row has; a file whose sha256 is the one recorded; no file shared by two entries that
    are not the same run (``same_run_as``); and a ``val_mr``/``best_epoch`` that are its history's best."""
    index = Path(index or Path(folder) / "zoo.json")
    _check_rows(doc, index)
    hashes: dict[str, str] = {}
    for row in doc["entries"]:
        name, fix = _row_name(row, index), _row_fix(row)
        path = Path(folder) / row["file"]
        if not path.resolve().is_relative_to(Path(folder).resolve()):
            raise ZooIntegrityError(f"{name}: its file {row['file']!r} lies outside the zoo folder: {fix}")
        if not path.is_file():
            raise ZooIntegrityError(f"{name}: its file {path} is missing: {fix}")
        digest = hashes.setdefault(row["file"], sha256_file(path))
        if digest != row["file_sha256"]:
            raise ZooIntegrityError(f"{name}: {path} has sha256 {digest[:12]}…, the zoo records "
                                    f"{row['file_sha256'][:12]}… (the file was replaced or edited): {fix}")
        history = [r.get("val_mr") if isinstance(r, dict) else None for r in row["history"]]
        if (len(history) != row["epochs_run"] or not all(isinstance(v, (int, float)) for v in history)
                or not 1 <= row["best_epoch"] <= len(history) or history[row["best_epoch"] - 1] != row["val_mr"]
                or max(history) != row["val_mr"]):
            raise ZooIntegrityError(f"{name}: val_mr {row['val_mr']} at best_epoch {row['best_epoch']} is not the "
                                    f"best of its recorded history ({len(history)} epochs): the record was edited; {fix}")
    first_of: dict[str, dict[str, Any]] = {}
    for row in doc["entries"]:
        other = first_of.setdefault(row["file_sha256"], row)
        if other is not row and row.get("same_run_as", row["key"]) != other.get("same_run_as", other["key"]):
            raise ZooIntegrityError(f"{index}: entries {other['key']} and {row['key']} hold the same weights "
                                    f"({row['file']}) but are different runs: a file was swapped; rebuild "
                                    f"{row['key']} with `{row.get('command')}`")


def exit_with_parent(poll_seconds: float = 2.0) -> None:
    """End this process when its parent ends (killed or stopped): a zoo build that is stopped leaves
    no entry training on behind it, which a restarted build would train a second time alongside.
    The entry's last checkpoint (written atomically) keeps it resumable."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        os._exit(3)

    threading.Thread(target=watch, daemon=True, name="rsretrieval-exit-with-parent").start()


def _child_main(argv: list[str] | None = None) -> int:
    exit_with_parent()
    p = argparse.ArgumentParser()
    p.add_argument("--child", required=True, help="the job file the parent wrote")
    job_path = Path(p.parse_args(argv).child)
    job = json.loads(job_path.read_text())
    config = ZooConfig(**{**job["config"], "notebooks": tuple(job["config"]["notebooks"])})
    row = train_entry(config, job["seed"], Path(job["folder"]), ZooSettings(**job["settings"]))
    # wall seconds grow when the machine is shared; this process's CPU time (one thread) and the load say by how much
    row.update(cpu_seconds=round(time.process_time(), 1), load_average=round(os.getloadavg()[0], 2))
    atomic_write_json(job_path.with_suffix(".row.json"), row)
    return 0


if __name__ == "__main__":
    raise SystemExit(_child_main())
