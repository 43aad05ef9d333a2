"""MiniCLIP: a small CLIP pretrained here, offline, so the course can teach transfer.

No pretrained CLIP can be downloaded on the course's machines, yet every chapter is about
transferring a pretrained model. So we pretrain the ``mini`` architecture (8.0M parameters; 4 layers
of width 128 a tower) on SynthRS's *web* domain -- photos of objects on coloured backdrops or named
grounds, plus aerial web photos of each scene, all with web-like alt-text ("aerial view of a busy
airport") -- and transfer it to the top-down *rs* domain, as OpenAI's CLIP was pretrained on web
photos (some of them aerial) and transferred to aerial images. Whether transfer happens at all is
decided by the source domain's design (shared vocabulary, shared visual statistics): see
``docs/design.md``.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from rsretrieval import defaults
from rsretrieval.models.factory import create_model, local_pretrained_path
from rsretrieval.files import atomic_write_json, sha256_file
from rsretrieval.paths import data_home

_logger = logging.getLogger(__name__)


@dataclass
class PretrainConfig:
    """Settings of MiniCLIP's pretraining; the defaults (MiniCLIP 2) take 11-13 minutes on 2 CPU cores."""

    model: str = "mini"
    tag: str = "synthrs"
    source_domain: str = "web"  # object photos plus aerial web photos of each rs scene; "source": photos only
    source_root: str = "synthrs-source"  # relative paths are taken from the data home (rsretrieval.paths)
    n_images: int = 9000
    image_size: int = 96  # render at the model's resolution: decoding 224 px images would cost more than training
    epochs: int = 2
    batch_size: int = 128
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup_steps: int = 100
    seed: int = 0
    device: str = "auto"
    threads: int = 2  # CPU threads: sums split over another count round differently, so the bits change
    # zero-shot is reported on this rs-domain SynthRS: version 1.0 is the test as generated at commit
    # 58f58c4, the guard every MiniCLIP we ship keeps >= 25 mR on, whatever version the course uses
    eval_root: str = "synthrs-1.0"
    eval_version: str = "1.0"
    eval_images: int | None = None  # size of that dataset (None: its version's)
    progress: bool = True


def pretrain(cfg: PretrainConfig | None = None, out: str | Path | None = None) -> dict[str, Any]:
    """Generate the source domain, pretrain MiniCLIP from scratch, save it compactly, report zero-shot.

    Resumable: an interrupted run continues from its last checkpoint when called again. The same
    settings give the same file bit for bit on the same kind of CPU (``cfg.threads`` is pinned; the
    file's meta holds only what decides the weights, no timings or paths).

    Returns:
        A report with the config, training history, wall time, file size and the zero-shot
        metrics on the rs domain's test split (measured on the saved, reloaded weights).
    """
    from rsretrieval.data import load_dataset
    from rsretrieval.data.synthrs import generate_synthrs

    cfg = cfg or PretrainConfig()
    target = Path(out) if out else local_pretrained_path(cfg.model, cfg.tag)
    if target is None:
        raise ValueError(f"no shipped weights are registered for ({cfg.model}, {cfg.tag}); pass `out`")
    t0 = time.perf_counter()
    source_root = _abs(cfg.source_root)
    generate_synthrs(source_root, n_images=cfg.n_images, image_size=cfg.image_size, seed=cfg.seed,
                     domain=cfg.source_domain, progress=cfg.progress, overwrite=True)  # our own cache folder
    source = load_dataset("synthrs", source_root, "all")
    t_data = time.perf_counter() - t0

    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        report = _pretrain(cfg, target, source, t0, t_data)
    finally:
        torch.set_num_threads(threads)
    atomic_write_json(target.with_suffix(".json"), report)
    return report


def _pretrain(cfg: PretrainConfig, target: Path, source: Any, t0: float, t_data: float) -> dict[str, Any]:
    from rsretrieval.models.compact import save_compact
    from rsretrieval.errors import StaleRunError
    from rsretrieval.training import ContrastiveTask, TrainConfig, check_resumable, clear_run, fit

    run_dir = data_home() / "miniclip" / f"{target.stem}-run"
    torch.manual_seed(cfg.seed)
    bundle = create_model(cfg.model)
    train_cfg = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
                            warmup_steps=cfg.warmup_steps, seed=cfg.seed, device=cfg.device, eval_every=0,
                            output_dir=str(run_dir), progress=cfg.progress, checkpoint_every_steps=100)
    try:
        check_resumable(train_cfg, source, ContrastiveTask(bundle.model))  # the task fit builds by default
    except StaleRunError as err:  # the run folder is ours: a run of other settings or data is restarted
        _logger.warning("%s Starting afresh.", err)
        clear_run(run_dir)
    history = fit(bundle.model, bundle.tokenizer, source, bundle.transform, train_cfg)
    t_train = time.perf_counter() - t0 - t_data

    used = torch.unique(bundle.tokenizer(source.captions))
    report: dict[str, Any] = {
        "config": asdict(cfg), "architecture": architecture(cfg.model), "images": source.num_images,
        "pairs": source.num_captions,
        "used_tokens": int(used.numel()), "data_seconds": round(t_data, 1), "train_seconds": round(t_train, 1),
        "history": history.to_dict(),
    }
    meta = {"config": weight_settings(asdict(cfg)), "images": source.num_images, "pairs": source.num_captions,
            "used_tokens": report["used_tokens"]}
    report["payload_sha256"] = save_compact(bundle.model.cpu(), target, used, arch=cfg.model, meta=meta)
    report["file_bytes"] = target.stat().st_size
    report["file_sha256"] = sha256_file(target)

    # Zero-shot on the rs domain, measured on the weights as saved (reloaded from the file).
    report.update(_zero_shot(_load_file(cfg.model, target), _abs(cfg.eval_root), cfg))
    report["total_seconds"] = round(time.perf_counter() - t0, 1)
    return report


# What each choice of the pretraining buys: a variant overrides PretrainConfig's defaults. The
# table of their zero-shot results (val chooses, test is reported) is VARIANTS_FILE.
VARIANTS: dict[str, dict[str, Any]] = {
    "web": {},  # MiniCLIP 2 (the defaults): object photos plus aerial web photos of each rs scene, with alt-text
    "source": {"source_domain": "source"},  # MiniCLIP 1: object photos only
    "web-half-data": {"n_images": 4500},  # what the data's size buys (half the images, half the steps)
    "web-1-epoch": {"epochs": 1},  # the same steps as half the data, on twice the distinct images
    "web-3-epochs": {"epochs": 3},  # what training longer buys
    "web-2-layers": {"model": "mini-2-layers"},  # what depth buys: 2 transformer layers a tower, not 4
    "web-width-192": {"model": "mini-width-192"},  # what width buys: 192 channels, not 128
}
VARIANTS_FILE = Path(__file__).parent / "models" / "weights" / "pretrain-variants.json"


def pretrain_variants(names: list[str] | None = None, out_dir: str | Path | None = None,
                      progress: bool = True) -> list[dict[str, Any]]:
    """Pretrain each variant (a finished one is read back, an interrupted one resumes) and update the table.

    Args:
        names: keys of :data:`VARIANTS` (default: all).
        out_dir: where the variants' weights and reports go (default: ``<data home>/miniclip/variants``).

    Returns:
        The table's rows, one per variant run so far: name, overrides, zero-shot val and test mR,
        minutes, file size and the weights' sha256.
    """
    import json

    unknown = [n for n in names or () if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown pretraining variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    folder = Path(out_dir) if out_dir else data_home() / "miniclip" / "variants"
    rows = {r["name"]: r for r in json.loads(VARIANTS_FILE.read_text())["variants"]} if VARIANTS_FILE.is_file() \
        else {}
    for name in names or list(VARIANTS):
        cfg = replace(PretrainConfig(), **VARIANTS[name], source_root=str(folder / f"{name}-source"),
                      progress=progress)
        target = folder / f"{name}.pt"
        report_file = target.with_suffix(".json")
        previous = json.loads(report_file.read_text()) if report_file.is_file() else None
        done = previous is not None and _settings(previous["config"]) == _settings(asdict(cfg)) \
            and previous.get("architecture") == architecture(cfg.model)  # a model name's config may change
        if done:
            report, timing = previous, rows.get(name, {})
        else:  # minutes are wall time: the CPU minutes and the load say how much of it the run had
            used = time.process_time()
            report = pretrain(cfg, out=target)
            timing = {"cpu_minutes": (time.process_time() - used) / 60, "load_average": round(os.getloadavg()[0], 2)}
        rows[name] = {
            "name": name, "overrides": VARIANTS[name], "zero_shot_val_mr": report["zero_shot_val"]["mr"],
            "zero_shot_test_mr": report["zero_shot"]["mr"], "minutes": report["total_seconds"] / 60,
            # a resumed run's minutes are those of its last call only: flag it, and rerun for a timing
            "resumed": sum(r["seconds"] for r in report["history"]["records"]) > report["train_seconds"] + 1,
            "file_bytes": report["file_bytes"], "file_sha256": sha256_file(target),
            **{k: timing[k] for k in ("cpu_minutes", "load_average") if k in timing},
        }
        atomic_write_json(VARIANTS_FILE, {"ties": report["zero_shot_ties"], "variants": list(rows.values())})
    return list(rows.values())


def read_variants(path: str | Path | None = None) -> list[dict[str, Any]]:
    """The rows of the variants table (:data:`VARIANTS_FILE`), in :data:`VARIANTS` order; [] before any run."""
    import json

    path = Path(path) if path else VARIANTS_FILE
    rows = json.loads(path.read_text(encoding="utf-8"))["variants"] if path.is_file() else []
    order = list(VARIANTS)
    return sorted(rows, key=lambda r: order.index(r["name"]) if r["name"] in order else len(order))


def variant_of(report: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The row of the variants table whose run made the same file as a shipped MiniCLIP's report
    (same sha256), or None: which choice of pretraining that MiniCLIP is."""
    return next((r for r in rows if r.get("file_sha256") == report.get("file_sha256")), None)


def format_variants(rows: list[dict[str, Any]]) -> str:
    """The variants table as text: what each pretraining choice buys in zero-shot mR, and what it costs."""
    head = f"{'variant':16s} {'changes':28s} {'val mR':>7s} {'test mR':>7s} {'minutes':>7s} {'MB':>5s} {'load':>5s}"
    lines = [head, "-" * len(head)]
    for r in rows:
        changes = ", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "(the defaults: MiniCLIP 2)"
        lines.append(f"{r['name']:16s} {changes:28s} {r['zero_shot_val_mr']:7.2f} {r['zero_shot_test_mr']:7.2f} "
                     f"{r['minutes']:7.1f} {r['file_bytes'] / 1e6:5.1f} "
                     f"{r['load_average'] if r.get('load_average') is not None else '-':>5}"
                     + ("  (resumed)" if r["resumed"] else ""))
    return "\n".join(lines)


def _settings(config: dict[str, Any]) -> dict[str, Any]:
    """What decides a pretraining's result: its config without the display switch."""
    return {k: v for k, v in config.items() if k != "progress"}


def architecture(model: str) -> dict[str, Any]:
    """The model config ``model`` names now (its JSON file's contents)."""
    import open_clip

    from rsretrieval.models import list_models

    list_models()  # registers our configs with open_clip
    return open_clip.get_model_config(model)


def weight_settings(config: dict[str, Any]) -> dict[str, Any]:
    """What decides the weights: the config without display, paths and the zero-shot evaluation."""
    return {k: v for k, v in config.items() if k not in ("progress", "source_root", "eval_root", "eval_version",
                                                         "eval_images")}


def rescore(weights: str | Path | None = None, eval_root: str | Path | None = None, progress: bool = True,
            tag: str | None = None) -> dict[str, Any]:
    """Measure the zero-shot line of a pretraining report again with today's metric, and rewrite the report.

    The weights are not touched; use it when the evaluation protocol changes (e.g. its tie rule).

    Args:
        weights: a weights file written by :func:`pretrain` (default: MiniCLIP's shipped ``tag``, by default
            the course's, ``defaults.MINICLIP_TAG``).
        eval_root: the rs-domain SynthRS to score on (default: ``PretrainConfig.eval_root``; the
            report's own path names the machine it was made on).
    """
    import json

    target = Path(weights) if weights else local_pretrained_path(defaults.MODEL, tag or defaults.MINICLIP_TAG)
    report_path = target.with_suffix(".json")
    if not report_path.is_file():
        raise FileNotFoundError(f"no pretraining report {report_path} beside the weights {target}: rescore reads "
                                "the report `pretrain` wrote; pass the weights file it saved")
    report = json.loads(report_path.read_text(encoding="utf-8"))
    cfg = PretrainConfig(**{k: v for k, v in report["config"].items() if k in PretrainConfig.__dataclass_fields__})
    cfg = replace(cfg, progress=progress)
    shipped = create_model(cfg.model, cfg.tag) if weights is None else _load_file(cfg.model, target)
    report.update(_zero_shot(shipped, _abs(eval_root or PretrainConfig.eval_root), cfg))
    atomic_write_json(report_path, report)
    return report


def _zero_shot(bundle: Any, eval_root: Path, cfg: PretrainConfig) -> dict[str, Any]:
    """Zero-shot on the rs domain's val split (what variants are chosen by) and test split (what is reported)."""
    from rsretrieval.data import load_dataset
    from rsretrieval.data.synthrs import generate_synthrs
    from rsretrieval.evaluation import DEFAULT_TIES, evaluate
    from rsretrieval.models.utils import select_device

    generate_synthrs(eval_root, version=cfg.eval_version, n_images=cfg.eval_images, progress=cfg.progress)
    device = select_device(cfg.device)
    out: dict[str, Any] = {}
    for split, key in (("val", "zero_shot_val"), ("test", "zero_shot")):
        data = load_dataset("synthrs", eval_root, split)
        result = evaluate(bundle.model.to(device), data, transform=bundle.transform, tokenizer=bundle.tokenizer,
                          device=device, progress=cfg.progress, per_scene=False, ties=DEFAULT_TIES)
        out[key] = result.metrics
    out |= {"zero_shot_ties": DEFAULT_TIES, "chance_mr": chance_mr(out["zero_shot"]["n_images"])}
    return out


def chance_mr(n_images: int, captions_per_image: int = 5) -> float:
    """mR of a random ranking, in percent: about 533/N for N images with 5 captions each.

    t2i R@K = K/N. i2t ranks the c*N captions: the chance that one of an image's c captions is in
    the top K is about 1-(1-K/(cN))^c, which is close to K/N as well.
    """
    ks = (1, 5, 10)
    n_texts = captions_per_image * n_images
    i2t = [100 * (1 - (1 - k / n_texts) ** captions_per_image) for k in ks]
    t2i = [100 * k / n_images for k in ks]
    return sum(i2t + t2i) / 6


def _abs(path: str | Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else data_home() / p


def _load_file(model: str, path: Path):
    from rsretrieval.models.compact import load_compact

    bundle = create_model(model)
    load_compact(bundle.model, path, arch=model)
    return bundle
