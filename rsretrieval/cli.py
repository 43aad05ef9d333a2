"""Command line: ``python -m rsretrieval COMMAND``. A thin layer over the public API.

Every command parses its arguments into the library's own config objects and calls library
functions; nothing in ``rsretrieval/`` reads ``sys.argv`` but :func:`main`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

from rsretrieval import defaults
from rsretrieval.argtypes import NON_NEGATIVE, POSITIVE, comma_separated, device, port, positive, share
from rsretrieval.files import atomic_write_text


def _add_data_args(p: argparse.ArgumentParser, split: str | None = None) -> None:
    p.add_argument("--dataset", default="synthrs", help="rsitmd, rsicd, ucm, sydney, synthrs, karpathy, precomp, csv")
    p.add_argument("--root", default=None, help="dataset folder (synthrs: <data home>/synthrs, generated on first use)")
    if split is not None:
        p.add_argument("--split", default=split, help="train, val, test or all")
    p.add_argument("--val-fraction", type=share, default=None,
                   help="share of train carved out as val if the files have none (default 0.1, or the recipe's); "
                        "0: no validation, train on all of train and keep the last epoch")
    _add_csv_args(p)


def _add_csv_args(p: argparse.ArgumentParser) -> None:
    csv = p.add_argument_group("--dataset csv (open_clip's caption CSV/TSV: --root FILE or a folder of train.csv, "
                               "val.csv, test.csv)")
    csv.add_argument("--csv-img-key", default="filepath", help="the image path column (default: filepath)")
    csv.add_argument("--csv-caption-key", default="title", help="the caption column (default: title)")
    csv.add_argument("--csv-scene-key", default=None, help="a scene column, if any")
    csv.add_argument("--csv-split-key", default=None, help="a train/val/test column (default: 'split', if any)")
    csv.add_argument("--csv-separator", default=None, help="default: tab for .tsv, comma otherwise")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="mini", help="architecture: tiny, mini, ViT-B-32, ...")
    p.add_argument("--pretrained", default=None, help="weights tag (openai, synthrs) or a state-dict file")
    p.add_argument("--device", type=device, default="auto", help="auto, cpu, cuda, cuda:1, mps")


def _json_out(obj: Any, path: str | None) -> None:
    text = json.dumps(obj, indent=2, default=str)
    if path:
        atomic_write_text(path, text + "\n")
    print(text)


# ----------------------------------------------------------------------------- data

def cmd_data_synth(args: argparse.Namespace) -> int:
    from rsretrieval.data.synthrs import generate_synthrs
    from rsretrieval.paths import data_dir

    root = generate_synthrs(args.root or data_dir("synthrs"), version=args.version, n_images=args.n_images,
                            image_size=args.image_size, seed=args.seed, domain=args.domain,
                            object_scale=args.object_scale, unnamed_share=args.unnamed_share,
                            caption_clauses=args.caption_clauses, overwrite=args.overwrite)
    meta = json.loads((root / "synthrs.json").read_text())
    splits = ", ".join(f"{n} {s}" for s, n in meta["splits"].items())
    print(f"SynthRS {args.domain} {meta['params']['version']} ready in {root} ({splits})")
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from rsretrieval.data import check_dataset

    report = check_dataset(args.name, args.root, **_csv_options(args))
    _json_out(report, args.json)
    return 0 if report["ok"] else 1


def cmd_data_info(args: argparse.Namespace) -> int:
    from rsretrieval.data import get_dataset_info, list_datasets

    if not args.name:
        print("\n".join(list_datasets()))
        return 0
    info = get_dataset_info(args.name)
    print(f"{info.title}\n\nsource: {info.source}\n\nlayout:\n{info.layout()}\n\ncitation:\n{info.citation}")
    return 0


def cmd_data_stats(args: argparse.Namespace) -> int:
    from rsretrieval.data import load_dataset
    from rsretrieval.study import dataset_statistics

    stats = dataset_statistics(load_dataset(args.name, args.root, args.split))
    _json_out(stats, args.json)
    return 0


def _name_root(value: str) -> tuple[str, str | None]:
    name, sep, root = value.partition(":")
    if not name:
        raise ValueError(f"{value!r}: give a dataset as NAME:ROOT (e.g. rsicd:~/data/RSICD), or NAME alone for "
                         "a generated one (synthrs)")
    return name, (root or None) if sep else None


def cmd_data_leakage(args: argparse.Namespace) -> int:
    from rsretrieval.data import load_dataset
    from rsretrieval.data.leakage import find_leakage

    (test_name, test_root), (train_name, train_root) = _name_root(args.test), _name_root(args.train)
    test = load_dataset(test_name, test_root, args.test_split, verify_images=True)
    train = load_dataset(train_name, train_root, args.train_split, verify_images=True)
    pairs = find_leakage(test.image_paths, train.image_paths, threshold=args.threshold,
                         candidates=args.candidates, progress=not args.no_progress)
    if args.json:
        _json_out(pairs, args.json)
    else:
        for p in pairs:
            print(f"{p['score']:.3f}  {p['test_image']}  ~  {p['train_image']}")
    leaked = len({p["test_image"] for p in pairs})
    print(f"{leaked} of {test.num_images} {test_name} {args.test_split} images are near-duplicates of "
          f"{train_name} {args.train_split} images ({len(pairs)} pairs); leave them out with "
          "load_dataset(..., exclude=THE_JSON)", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------- train / eval

def _load(args: argparse.Namespace, split: str):
    from rsretrieval.data import load_dataset

    val_fraction = {} if args.val_fraction is None else {"val_fraction": args.val_fraction}
    return load_dataset(args.dataset, args.root or None, split, seed=args.seed, **val_fraction, **_csv_options(args))


def _csv_options(args: argparse.Namespace) -> dict[str, Any]:
    return {key: getattr(args, key) for key in ("csv_img_key", "csv_caption_key", "csv_scene_key", "csv_split_key",
                                                  "csv_separator")
            if hasattr(args, key)}


def cmd_train(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from rsretrieval.experiments import run_method
    from rsretrieval.training import TrainConfig

    cfg_fields = {f.name for f in fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in cfg_fields and v is not None}
    if args.recipe:
        from rsretrieval.recipes import load_recipe

        recipe = load_recipe(args.recipe, args.method)
        if args.val_fraction is None and recipe.val_fraction is not None:
            args.val_fraction = recipe.val_fraction
        config: Any = given  # the recipe's settings, under the flags given
    else:
        config = TrainConfig(**given)
    train, test = _load(args, "train"), _load(args, "test")
    val = None if args.val_fraction == 0 else _load(args, "val")  # 0: all of train, the last epoch kept
    results = run_method(args.model, args.pretrained, args.method, train, val, test, config, recipe=args.recipe,
                         loss=args.loss, run_dir=args.output_dir, per_scene=True, verbose=True)
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    if "rank" in results:  # another torchrun rank: rank 0 reports
        return 0
    _json_out({"best_epoch": results["best_epoch"], "loss": results["loss"], "test": results["test"]}, None)
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    import copy

    from rsretrieval.methods import apply_method, list_methods
    from rsretrieval.models import count_parameters, create_model

    base = create_model(args.model, None, device="cpu").model  # random weights: counting needs no download
    names = list_methods() if args.method == "all" else [args.method]
    for name in names:
        model = apply_method(copy.deepcopy(base) if len(names) > 1 else base, name)
        trainable, total = count_parameters(model)
        print(json.dumps({"method": name, "trainable": trainable, "total": total}))
        del model
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from rsretrieval.bench import bench, format_table

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    results = bench(args.model, methods, batch_size=args.batch_size, steps=args.steps, warmup=args.warmup,
                    repeats=args.repeats, device=args.device, loss=args.loss, grad_checkpointing=args.grad_checkpointing, amp=args.amp)
    if args.json:
        atomic_write_text(args.json, json.dumps(results, indent=2) + "\n")
    print(format_table(results))
    return 0


def cmd_index_build(args: argparse.Namespace) -> int:
    from rsretrieval.data.readers import prefix_scene
    from rsretrieval.search import Encoder, ImageIndex, find_images
    from rsretrieval.search.geotiff import Tiling
    from rsretrieval.training.loop import init_distributed

    tiling = Tiling(args.tile_size, args.tile_overlap, tuple(args.bands) if args.bands else None, args.min_valid)
    rank, _ = init_distributed()  # under torchrun: before the encoder, so each rank takes its own GPU
    encoder = Encoder(args.model, args.pretrained, args.adapter, args.device)
    root = Path(args.images).resolve()
    scenes = ({str(p.relative_to(root)): prefix_scene(p.name) for p in find_images(root)}
              if args.scene_from_prefix else None)
    index = ImageIndex.build(root, args.out, encoder, batch_size=args.batch_size, dtype=args.dtype, scenes=scenes,
                             tiling=tiling, chunk=args.chunk, ann=args.ann)
    if rank:
        return 0  # rank 0 reports
    print(index, index.searcher.params)
    for s in index.manifest.skipped:
        print(f"skipped {s['path']}: {s['error']}", file=sys.stderr)
    return 0


def cmd_index_ann(args: argparse.Namespace) -> int:
    from rsretrieval.search import ImageIndex

    index = ImageIndex.load(args.index)
    t0 = time.perf_counter()
    search = index.build_ann(args.backend)
    print(f"{index.folder}: {search.params} over {len(index):,} vectors in {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from rsretrieval.search import Encoder, ImageIndex

    manifest = ImageIndex.read_manifest(args.index)  # a missing or damaged index is reported here
    encoder = Encoder(args.model or manifest.encoder["model"], args.pretrained or manifest.pretrained,
                      args.adapter or manifest.adapter_path, args.device)
    index = ImageIndex.load(args.index, encoder)
    hits = index.search_image(args.image, args.k, args.scene) if args.image else \
        index.search_text(args.query, args.k, args.scene)
    if args.geojson:
        from rsretrieval.files import atomic_write_json
        from rsretrieval.search.geotiff import hits_geojson

        collection = hits_geojson(hits)
        atomic_write_json(args.geojson, collection)
        print(f"wrote {len(collection['features'])} of {len(hits)} hits (those with coordinates) to {args.geojson}",
              file=sys.stderr)
    if args.json:
        print(json.dumps([{"rank": h.rank, "id": h.id, "score": h.score, "path": str(h.path), "scene": h.scene,
                           **({"window": h.tile["window"], "crs": h.tile["crs"], "bounds": h.tile["bounds"],
                               "lonlat": h.tile["lonlat"]} if h.tile else {})} for h in hits], indent=1))
    else:
        for h in hits:
            where = ""
            if h.tile:
                where = f"  window {h.tile['window']}"
                if h.tile["lonlat"]:
                    w, s_, e, n = h.tile["lonlat"]
                    where += f"  lon {w:.5f}..{e:.5f} lat {s_:.5f}..{n:.5f}"
            print(f"{h.rank:3d}  {h.score:.4f}  {h.path}" + (f"  [{h.scene}]" if h.scene else "") + where)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from rsretrieval.search.serve import serve

    serve(args.index, host=args.host, port=args.port, model=args.model, pretrained=args.pretrained,
          adapter=args.adapter, device=args.device, threads=args.threads)
    return 0


def cmd_bench_serve(args: argparse.Namespace) -> int:
    from rsretrieval.search.serve import bench_serve

    if args.clients < 1 or args.requests < 1 or args.vectors < 0:
        raise ValueError("need --clients >= 1, --requests >= 1 and --vectors >= 0")
    result = bench_serve(args.index, vectors=args.vectors, clients=args.clients, requests=args.requests,
                         device=args.device, threads=args.threads)
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    return 0 if all(result[k]["errors"] == 0 for k in ("index", "million") if k in result) else 1


def cmd_bench_search(args: argparse.Namespace) -> int:
    from rsretrieval.bench import machine_info
    from rsretrieval.search.vectors import bench_search, format_bench

    result = bench_search(args.vectors, args.dim, args.queries, args.k, uniform=args.uniform, pq_m=args.pq_m,
                          seed=args.seed, backends=args.index, store=args.store, exact_queries=args.exact_queries)
    result["measured_with"] = machine_info("bench-search", vars(args))
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    print(format_bench(result))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from rsretrieval.evaluation import evaluate
    from rsretrieval.methods import load_method, wrap_tokenizer
    from rsretrieval.models import create_model, seed_everything, select_device
    from rsretrieval.training import load_best

    device = select_device(args.device)
    seed_everything(args.seed)  # random base weights (no --pretrained) must be the ones `train` used
    bundle = create_model(args.model, args.pretrained, device=device)
    model, tokenizer = bundle.model, bundle.tokenizer
    if args.run:
        if not Path(args.run, "results.json").is_file() and not Path(args.run, "best.pt").is_file():
            raise FileNotFoundError(f"{args.run} is not a run folder (no results.json or best.pt): pass the --out "
                                    "folder of a finished `train`")
        method_file = Path(args.run) / "method.pt"
        if method_file.exists():  # a parameter-efficient run: re-inject its method with the trained weights
            model = load_method(model, method_file, base_name=bundle.name)
            tokenizer = wrap_tokenizer(model, tokenizer)
        else:  # full fine-tuning
            load_best(model, args.run)
    data = _load(args, args.split)
    result = evaluate(model.to(device), data, transform=bundle.transform, tokenizer=tokenizer,
                      batch_size=args.batch_size, device=device, ties=args.ties)
    print(result.table())
    if args.json:
        atomic_write_text(args.json, json.dumps(result.to_dict(), indent=2) + "\n")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from rsretrieval.pretrain import PretrainConfig, pretrain

    if args.rescore:
        from rsretrieval.pretrain import rescore

        report = rescore(args.out, tag=args.tag, progress=args.progress is not False)
        print(f"zero-shot mR on SynthRS test {report['zero_shot']['mr']:.2f} (ties={report['zero_shot_ties']}) "
              f"written to the report beside {args.out or 'the shipped weights'}")
        return 0
    if args.variants:
        from rsretrieval.pretrain import VARIANTS_FILE, format_variants, pretrain_variants, read_variants

        names = None if args.variants == ["all"] else args.variants
        pretrain_variants(names, out_dir=args.out, progress=args.progress is not False)
        print(format_variants(read_variants()))
        print(f"table written to {VARIANTS_FILE}")
        return 0
    cfg_fields = {f.name for f in fields(PretrainConfig)}
    cfg = PretrainConfig(**{k: v for k, v in vars(args).items() if k in cfg_fields and v is not None})
    report = pretrain(cfg, out=args.out)
    zs = report["zero_shot"]
    print(f"MiniCLIP saved ({report['file_bytes'] / 1e6:.1f} MB, sha256 {report['file_sha256'][:12]}) after "
          f"{report['total_seconds']:.0f} s; zero-shot mR on SynthRS val {report['zero_shot_val']['mr']:.2f}, "
          f"test {zs['mr']:.2f} (chance {report['chance_mr']:.2f})")
    return 0


def cmd_recipes_list(args: argparse.Namespace) -> int:
    from rsretrieval.recipes import list_recipes, read_recipe_file

    for name in list_recipes():
        doc = read_recipe_file(name)
        print(f"{name:14s} {doc.get('model')} ({doc.get('pretrained')}) on {', '.join(doc.get('datasets', []))}: "
              f"{', '.join(doc['methods'])}")
    return 0


def cmd_recipes_show(args: argparse.Namespace) -> int:
    from rsretrieval.recipes import load_recipe, read_recipe_file

    if args.method:
        recipe = load_recipe(args.name, args.method)
        print(json.dumps({**recipe.to_dict(), "sweep": recipe.sweep}, indent=1))
    else:
        print(json.dumps(read_recipe_file(args.name), indent=1))
    return 0


def cmd_recipes_sweep(args: argparse.Namespace) -> int:
    from rsretrieval.recipes import recipe_key
    from rsretrieval.recipes.sweep import SEARCH_SPACES, sweep

    # every space, a method+loss one (e.g. focus_adapter+recycling) with its loss
    runs = [(k.partition("+")[0], k.partition("+")[2] or args.loss) for k in SEARCH_SPACES] \
        if args.method == ["all"] else [(m, args.loss) for m in args.method]
    unknown = [m for m, _ in runs if m not in SEARCH_SPACES]
    if unknown:
        raise ValueError(f"no search space for {', '.join(unknown)}; known: {', '.join(SEARCH_SPACES)} (or all)")
    for method, loss in runs:
        key = recipe_key(method, loss)
        entry = sweep(method, dataset=args.dataset, root=args.root, model=args.model, pretrained=args.pretrained,
                      loss=loss, out_dir=Path(args.out) / key if args.out else None,
                      recipe_file=args.recipe_file, device=args.device, progress=args.progress)
        chosen = ", ".join(f"{k}={v}" for k, v in entry["sweep"]["chosen"].items())
        print(f"{key}: {chosen}: val mR {entry['sweep']['val_mr']:.2f} at epoch {entry['sweep']['best_epoch']} "
              f"({len(entry['sweep']['points'])} points)")
    return 0


def cmd_zoo_build(args: argparse.Namespace) -> int:
    from rsretrieval.zoo import ZooSettings, build_zoo, zoo_dir

    settings = ZooSettings(model=args.model, pretrained=args.pretrained or None, dataset=args.dataset,
                           root=args.root, recipe=args.recipe or None, device=args.device, threads=args.threads,
                           regime=args.regime, version=args.version or None)
    out = Path(args.out) if args.out else zoo_dir(settings.model, settings.dataset, settings.regime)
    doc = build_zoo(args.only, args.seed, out, settings, workers=args.workers, progress=args.progress)
    print(f"{len(doc['entries'])} entries in {out / 'zoo.json'}")
    return 0


def cmd_zoo_show(args: argparse.Namespace) -> int:
    from rsretrieval.zoo import load_zoo

    doc = load_zoo(args.out)
    print(f"{'entry':28s} {'epoch':>5s} {'val mR':>7s} {'test mR':>7s} {'train s':>8s} {'peak MB':>8s} {'file MB':>7s}")
    for e in doc["entries"]:
        print(f"{e['key']:28s} {e['best_epoch']:5d} {e['val_mr']:7.2f} {e['test_mr']:7.2f} {e['train_seconds']:8.0f} "
              f"{e['peak_memory_bytes'] / 2**20:8.0f} {e['file_bytes'] / 1e6:7.2f}"
              + (f"  (the run of {e['same_run_as']})" if e.get("same_run_as") else ""))
    return 0


def _parse_params(pairs: list[list[str]]) -> dict[str, Any]:
    """``-p NAME VALUE`` pairs; values are read as JSON literals when they parse, else kept as strings."""
    out: dict[str, Any] = {}
    for item in pairs or []:
        if not (len(item) == 2 or (len(item) == 1 and "=" in item[0])):
            raise ValueError(f"-p takes NAME VALUE or NAME=VALUE, got {' '.join(item)!r} (e.g. -p DATASET rsitmd)")
        name, value = item if len(item) == 2 else item[0].split("=", 1)
        try:
            out[name] = json.loads(value)
        except json.JSONDecodeError:
            out[name] = value
    return out


def cmd_course(args: argparse.Namespace) -> int:
    from rsretrieval.course import NotebookFailed, list_notebooks, run_course

    params = _parse_params(args.param)
    if args.smoke:
        params["SMOKE"] = True
    notebooks = list_notebooks(args.notebooks)
    if not notebooks:
        raise FileNotFoundError(f"no course notebooks (NN_name.ipynb) in {args.notebooks}: write an edition there "
                                "first, e.g. `course --edition student --out build/student`")
    if args.only:
        notebooks = [nb for nb in notebooks if any(nb.stem.startswith(o) for o in args.only)]
        if not notebooks:
            raise ValueError(f"no notebook name starts with {' or '.join(args.only)}; the notebooks are "
                             f"{', '.join(nb.stem for nb in list_notebooks(args.notebooks))}")
    if args.edition:
        from rsretrieval.editions import write_edition

        out = args.out if args.out != "build/course" else f"build/{args.edition}"
        written = write_edition(args.edition, out, notebooks)
        print(f"{args.edition} edition: {len(written)} notebooks in {out}")
        return 0
    try:
        summary = run_course(args.out, params, notebooks=notebooks, cell_timeout=args.cell_timeout,
                             answers=args.answers)
    except NotebookFailed as exc:
        print(f"course stopped: {exc}", file=sys.stderr)
        return 1
    for nb in summary["notebooks"]:
        print(f"{nb['notebook']:28s} {nb['seconds']:7.1f} s")
    print(f"total {summary['total_seconds']:.0f} s; summary in {Path(args.out) / 'summary.json'}")
    return 0


# ----------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    from rsretrieval.evaluation.metrics import DEFAULT_TIES, TIE_RULES

    parser = argparse.ArgumentParser(prog="python -m rsretrieval", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback and whole message of an error (also: RSR_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="datasets: generate SynthRS, check a dataset on disk, show layouts")
    dsub = data.add_subparsers(dest="data_command", required=True)
    p = dsub.add_parser("synth", help="generate the offline SynthRS dataset")
    p.add_argument("--root", default=None, help="default: <data home>/synthrs (see rsretrieval.paths)")
    p.add_argument("--domain", default="rs", choices=["rs", "source", "web"],
                   help="rs: the top-down target domain; source, web: the pretraining domains of MiniCLIP 1 and 2")
    p.add_argument("--version", default=None,
                   help="generator version whose size, split and captions apply (rs: 1.0 or 3.0; default: current)")
    p.add_argument("--n-images", type=POSITIVE, default=None, help="default: the version's (rs 1.0: 1500, 3.0: 4752)")
    p.add_argument("--image-size", type=POSITIVE, default=224)
    p.add_argument("--seed", type=NON_NEGATIVE, default=0)
    p.add_argument("--object-scale", type=positive, default=1.0,
                   help="draw every object this much smaller or larger (a regime of small targets)")
    p.add_argument("--unnamed-share", type=share, default=0.4,
                   help="share of captions that never name the scene (1.0: none does)")
    p.add_argument("--caption-clauses", type=int, default=None, choices=[1, 2],
                   help="statements per caption (2: a second about another object class or the ground; "
                        "default: the version's)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_data_synth)
    p = dsub.add_parser("check", help="count images/captions per split and list every problem found")
    p.add_argument("name")
    p.add_argument("--root", required=True)
    _add_csv_args(p)
    p.add_argument("--json", default=None, help="also write the report here")
    p.set_defaults(func=cmd_data_check)
    p = dsub.add_parser("stats", help="captions per image, caption length, share naming the scene, duplicates")
    p.add_argument("name")
    p.add_argument("--root", default=None, help="the dataset folder (synthrs: generated on first use)")
    p.add_argument("--split", default="all", help="train, val, test or all")
    p.add_argument("--json", default=None, help="also write the statistics here")
    p.set_defaults(func=cmd_data_stats)

    p = dsub.add_parser("info", help="where to get a dataset and how to lay it out")
    p.add_argument("name", nargs="?")
    p.set_defaults(func=cmd_data_info)

    p = dsub.add_parser("leakage", help="test images of one dataset that are near-duplicates of another's "
                                        "train images (re-encoded, resized or slightly cropped)")
    p.add_argument("--test", required=True, metavar="NAME:ROOT", help="e.g. rsitmd:~/data/RSITMD")
    p.add_argument("--train", required=True, metavar="NAME:ROOT", help="e.g. rsicd:~/data/RSICD")
    p.add_argument("--test-split", default="test")
    p.add_argument("--train-split", default="train", help="train, val, test or all")
    p.add_argument("--threshold", type=share, default=0.85,
                   help="least match score of a duplicate (default 0.85; see docs/design.md)")
    p.add_argument("--candidates", type=POSITIVE, default=3, help="train images verified per test image")
    p.add_argument("--json", default=None, help="write the pairs here (the list load_dataset(exclude=) takes)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_data_leakage)

    p = sub.add_parser("train", help="train a model; selects the best epoch on val, reports test")
    _add_data_args(p)
    _add_model_args(p)
    p.add_argument("--recipe", default=None,
                   help="take the method's settings from this recipe (`recipes list`); the flags below override it")
    p.add_argument("--epochs", type=POSITIVE, default=None, help="default 5")
    p.add_argument("--patience", type=NON_NEGATIVE, default=None, help="stop after this many epochs without a better val mR")
    p.add_argument("--batch-size", type=POSITIVE, default=None, help="default 64")
    p.add_argument("--lr", type=positive, default=None, help="default 1e-4")
    p.add_argument("--weight-decay", type=float, default=None, help="default 0.05")
    p.add_argument("--warmup-steps", type=NON_NEGATIVE, default=None, help="default 20")
    p.add_argument("--grad-accum", type=POSITIVE, default=None)
    p.add_argument("--max-steps", type=POSITIVE, default=None)
    p.add_argument("--seed", type=NON_NEGATIVE, default=0)
    p.add_argument("--method", default="full",
                   help="transfer method (see `params --method all`): full, linear_probe, adapter, lora, vpt, coop, "
                        "clip_adapter, adaptformer, mrs_adapter, focus_adapter, cmer")
    p.add_argument("--loss", default=None,
                   help="training loss: infonce, vsepp, hmmc, recycling, cmer (default: the method's own, "
                        "e.g. cmer for --method cmer, else infonce)")
    p.add_argument("--out", dest="output_dir", required=True,
                   help="run folder: checkpoints, history, results, method.pt")
    p.add_argument("--no-resume", dest="resume", action="store_false", default=None)
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("params", help="trainable / total parameters of a method, as JSON (random weights)")
    p.add_argument("--model", default="ViT-B-32", help="architecture: tiny, mini, ViT-B-32, ...")
    p.add_argument("--method", default="all", help="a method name, or `all` for one JSON line per method")
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("bench", help="training throughput and peak memory per method, one process each")
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--methods", default="full,mrs_adapter", help="comma-separated; ratios are to the first; "
                   "METHOD:floor: a side branch's frozen forward and side network alone")
    p.add_argument("--batch-size", type=POSITIVE, default=32)
    p.add_argument("--steps", type=POSITIVE, default=3, help="timed steps, after --warmup untimed ones")
    p.add_argument("--warmup", type=NON_NEGATIVE, default=1)
    p.add_argument("--repeats", type=POSITIVE, default=3,
                   help="rounds, interleaved (each method once a round); medians and their spread are reported")
    p.add_argument("--device", type=device, default="cpu")
    p.add_argument("--loss", default="infonce")
    p.add_argument("--grad-checkpointing", action="store_true",
                   help="recompute each block's activations in backward instead of keeping them (open_clip's)")
    p.add_argument("--no-amp", dest="amp", action="store_false", help="no mixed precision (only CUDA uses it)")
    p.add_argument("--json", default=None)
    p.set_defaults(func=cmd_bench)

    index = sub.add_parser("index", help="build a search index over a folder of images")
    isub = index.add_subparsers(dest="index_command", required=True)
    p = isub.add_parser("build", help="encode every image below --images (resumes an interrupted build)")
    p.add_argument("--images", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--model", default="mini")
    p.add_argument("--pretrained", default=defaults.MINICLIP_TAG)
    p.add_argument("--adapter", default=None, help="a method file (method.pt) written by `train`")
    p.add_argument("--device", type=device, default="auto")
    p.add_argument("--batch-size", type=POSITIVE, default=64)
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    p.add_argument("--scene-from-prefix", action="store_true",
                   help="scene = file name before the last '_' (RSITMD, RSICD, SynthRS names)")
    p.add_argument("--tile-size", type=POSITIVE, default=256, help="GeoTIFF scenes: tile side in pixels")
    p.add_argument("--tile-overlap", type=NON_NEGATIVE, default=0, help="GeoTIFF scenes: pixels shared by neighbouring tiles")
    p.add_argument("--bands", type=POSITIVE, nargs="+", default=None,
                   help="GeoTIFF scenes: the red, green, blue band numbers (1-based; default: by band description "
                        "or colour interpretation, else the first three)")
    p.add_argument("--min-valid", type=share, default=0.5,
                   help="GeoTIFF scenes: skip tiles with a smaller share of valid (not nodata) pixels")
    p.add_argument("--chunk", type=POSITIVE, default=1024,
                   help="images (or tiles) per resumable part; under torchrun the ranks share the parts")
    p.add_argument("--ann", default="auto", choices=["auto", "exact", "ivf", "ivfpq"],
                   help="the FAISS index trained once and stored with the embeddings (auto: exact below 50,000 "
                        "vectors, IVF-Flat up to 2 GB of float32 lists, IVF-PQ above)")
    p.set_defaults(func=cmd_index_build)
    p = isub.add_parser("ann", help="(re)train an index's FAISS index from its embeddings (no encoder needed)")
    p.add_argument("index")
    p.add_argument("--backend", default="auto", choices=["auto", "exact", "ivf", "ivfpq"])
    p.set_defaults(func=cmd_index_ann)

    p = sub.add_parser("search", help="search an index by text (or --image)")
    p.add_argument("index")
    p.add_argument("query", nargs="?", default="")
    p.add_argument("-k", type=POSITIVE, default=10)
    p.add_argument("--image", default=None, help="search by this example image instead of text")
    p.add_argument("--scene", default=None, help="keep only images of this scene")
    p.add_argument("--model", default=None, help="default: the model recorded in the index")
    p.add_argument("--pretrained", default=None)
    p.add_argument("--adapter", default=None)
    p.add_argument("--device", type=device, default="auto")
    p.add_argument("--json", action="store_true", help="print hits as JSON")
    p.add_argument("--geojson", default=None, metavar="PATH",
                   help="write the georeferenced hits as a GeoJSON FeatureCollection (opens in QGIS)")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("serve", help="serve an index: a search page and a JSON API (model and index loaded once)")
    p.add_argument("index")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: this machine only)")
    p.add_argument("--port", type=port, default=8000)
    p.add_argument("--model", default=None, help="default: the model recorded in the index")
    p.add_argument("--pretrained", default=None)
    p.add_argument("--adapter", default=None)
    p.add_argument("--device", type=device, default="auto")
    p.add_argument("--threads", type=POSITIVE, default=1, help="torch CPU threads (default 1: a query gains nothing "
                                                          "from more, and the other cores serve other requests)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("bench-serve", help="served text-query latency over HTTP with concurrent clients: the "
                                           "SynthRS index and a million-vector FAISS index")
    p.add_argument("--index", default=None, help="default: SynthRS's images with MiniCLIP (built once)")
    p.add_argument("--vectors", type=NON_NEGATIVE, default=1_000_000, help="synthetic vectors of the large run (0: skip)")
    p.add_argument("--clients", type=POSITIVE, default=8)
    p.add_argument("--requests", type=POSITIVE, default=400)
    p.add_argument("--device", type=device, default="cpu")
    p.add_argument("--threads", type=POSITIVE, default=1)
    p.add_argument("--json", default=None)
    p.set_defaults(func=cmd_bench_serve)

    p = sub.add_parser("bench-search", help="exact vs FAISS search on synthetic vectors: latency, recall, memory")
    p.add_argument("--vectors", type=NON_NEGATIVE, default=1_000_000)
    p.add_argument("--dim", type=POSITIVE, default=512)
    p.add_argument("--queries", type=POSITIVE, default=1000)
    p.add_argument("--k", type=POSITIVE, default=10)
    p.add_argument("--uniform", action="store_true", help="uniform on the sphere: the structure-free worst case")
    p.add_argument("--pq-m", type=POSITIVE, default=64, help="IVF-PQ bytes per vector")
    p.add_argument("--index", type=comma_separated, default=("ivf", "ivfpq"), help="FAISS indexes to build: ivf,ivfpq")
    p.add_argument("--store", metavar="DIR", help="vectors (float16) and FAISS files in DIR, measured as served")
    p.add_argument("--exact-queries", type=POSITIVE, default=50, help="queries that time exact search")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0)
    p.add_argument("--json", default=None)
    p.set_defaults(func=cmd_bench_search)

    p = sub.add_parser("eval", help="evaluate a model (optionally a run's best checkpoint) on a split")
    _add_data_args(p, split="test")
    _add_model_args(p)
    p.add_argument("--run", default=None, help="a run folder written by `train` (loads its best.pt)")
    p.add_argument("--ties", default=DEFAULT_TIES, choices=TIE_RULES,
                   help="how tied scores rank (default: the mean over tie orders, as the published code "
                        "gives on average; see docs/protocol.md)")
    p.add_argument("--batch-size", type=POSITIVE, default=128)
    p.add_argument("--seed", type=NON_NEGATIVE, default=0)
    p.add_argument("--json", default=None)
    p.set_defaults(func=cmd_eval)

    recipes = sub.add_parser("recipes", help="training recipes: list, show, or choose them on validation (sweep)")
    rsub = recipes.add_subparsers(dest="recipes_command", required=True)
    p = rsub.add_parser("list", help="the recipes the library ships, with the methods each covers")
    p.set_defaults(func=cmd_recipes_list)
    p = rsub.add_parser("show", help="a recipe's settings (and the sweep behind them) as JSON")
    p.add_argument("name")
    p.add_argument("--method", default=None)
    p.set_defaults(func=cmd_recipes_show)
    p = rsub.add_parser("sweep", help="choose a method's settings on the validation split; resumable")
    p.add_argument("--method", nargs="+", required=True, metavar="METHOD", help="methods to sweep, or all")
    p.add_argument("--loss", default=None, help="train with this loss (default: each method's own); stored as "
                                                 "the recipe entry METHOD+LOSS")
    p.add_argument("--dataset", default="synthrs")
    p.add_argument("--root", default=None, help="dataset folder (synthrs: generated on first use)")
    p.add_argument("--model", default="mini")
    p.add_argument("--pretrained", default=defaults.MINICLIP_TAG)
    p.add_argument("--device", type=device, default="auto")
    p.add_argument("--out", default=None, help="run folders (default <data home>/sweeps/<model>-<dataset>)")
    p.add_argument("--recipe-file", default=None, help="where to store the recipe (default: the library's "
                                                       "rsretrieval/recipes/<model>-<dataset>.json)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=cmd_recipes_sweep)

    zoo = sub.add_parser("zoo", help="the zoo of trained checkpoints notebooks 02-04 compare: build or show it")
    zsub = zoo.add_subparsers(dest="zoo_command", required=True)
    p = zsub.add_parser("build", help="train every configuration (or --only some) over seeds; resumable")
    p.add_argument("--only", nargs="+", default=None, metavar="LABEL", help="zoo labels or methods (default: all)")
    p.add_argument("--seed", nargs="+", type=NON_NEGATIVE, default=None, help="seeds (default 0 1 2)")
    p.add_argument("--out", default=None, help="zoo folder (default: the checkout's data/zoo/<model>-<dataset>)")
    p.add_argument("--model", default="mini")
    p.add_argument("--pretrained", default=defaults.MINICLIP_TAG)
    p.add_argument("--dataset", default="synthrs")
    p.add_argument("--root", default=None)
    p.add_argument("--recipe", default=defaults.RECIPE, help="recipe name ('' for TrainConfig's defaults)")
    p.add_argument("--device", type=device, default="cpu")
    p.add_argument("--threads", type=POSITIVE, default=1, help="CPU threads of each entry; the files repeat bit for bit "
                                                          "only with the same count")
    p.add_argument("--workers", type=POSITIVE, default=2, help="entries trained at once, one child process each "
                                                          "(the files do not depend on it)")
    p.add_argument("--regime", default=None, help="a SynthRS regime (small-targets, scene-free-captions): its "
                                                  "dataset is generated, its zoo goes to data/zoo/<model>-synthrs-<regime>")
    p.add_argument("--version", default=None, help="SynthRS version to generate (default: the current one)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=cmd_zoo_build)
    p = zsub.add_parser("show", help="the zoo's entries: best epoch, val and test mR, time, memory, file size")
    p.add_argument("--out", default=None, help="zoo folder (default: the committed MiniCLIP zoo)")
    p.set_defaults(func=cmd_zoo_show)

    p = sub.add_parser("pretrain", help="pretrain MiniCLIP on SynthRS's web domain (11-13 min on 2 CPU cores)")
    p.add_argument("--model", default="mini")
    p.add_argument("--tag", default=None, help="the shipped tag to write (default synthrs; e.g. synthrs3 with --epochs 3)")
    p.add_argument("--source-domain", default=None, choices=["source", "web"],
                   help="pretraining images: object photos plus aerial web photos (web, the default), or the "
                        "photos only (source, MiniCLIP 1)")
    p.add_argument("--source-root", default=None, help="where the pretraining images are generated")
    p.add_argument("--n-images", type=POSITIVE, default=None)
    p.add_argument("--epochs", type=POSITIVE, default=None)
    p.add_argument("--batch-size", type=POSITIVE, default=None)
    p.add_argument("--lr", type=positive, default=None)
    p.add_argument("--seed", type=NON_NEGATIVE, default=None)
    p.add_argument("--device", type=device, default=None)
    p.add_argument("--threads", type=POSITIVE, default=None,
                   help="CPU threads (default 2); the weights repeat bit for bit only with the same count")
    p.add_argument("--out", default=None, help="weights file (default: the shipped MiniCLIP's); with --variants, "
                                               "their folder (default: <data home>/miniclip/variants)")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    p.add_argument("--variants", nargs="+", default=None, metavar="NAME",
                   help="pretrain these variants (or `all`) into <data home>/miniclip/variants and update the "
                        "table of what each choice buys (rsretrieval/models/weights/pretrain-variants.json)")
    p.add_argument("--rescore", action="store_true",
                   help="only re-measure the report's zero-shot line with the current metric (weights unchanged)")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("course", help="run every notebook with papermill into one folder (what `make course` does)")
    p.add_argument("--out", default="build/course")
    p.add_argument("-p", "--param", nargs="+", action="append", metavar="NAME VALUE",
                   help="a notebook parameter, e.g. -p DATASET rsitmd or -p DEVICE=cuda")
    p.add_argument("--smoke", action="store_true", help="SMOKE=True: tiny sizes, for tests")
    p.add_argument("--only", nargs="+", help="notebook name prefixes, e.g. 00 01")
    p.add_argument("--notebooks", default=None,
                   help="run the notebooks of this folder (e.g. an edition in build/student); default: the course's")
    p.add_argument("--cell-timeout", type=POSITIVE, default=None, help="seconds per cell")
    p.add_argument("--answers", action="store_true",
                   help="also run the worked answers to the exercises (cells tagged instructor; minutes more)")
    p.add_argument("--edition", choices=["student", "instructor"], default=None,
                   help="write this edition of the notebooks (into build/<edition>) instead of running them: "
                        "student leaves every solution out")
    p.set_defaults(func=cmd_course)
    return parser


EXIT_ERROR, EXIT_USAGE = 1, 2  # argparse exits with 2 on bad usage; every other error is 1


def error_line(exc: BaseException) -> str:
    """A user error as one line: its message's first line, with a pointer to the rest if there is more."""
    lines = [line for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    more = " (more with --debug)" if len(lines) > 1 else ""
    return f"error: {lines[0].strip()}{more}"


def main(argv: list[str] | None = None) -> int:
    """Run one command; user errors print ``error: <message>`` (one line) and return 1, not a traceback.

    ``--debug`` (or ``RSR_DEBUG=1``) lets the exception through, with its traceback and whole message.
    """
    from rsretrieval.errors import RSRetrievalError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except (RSRetrievalError, OSError, ValueError) as exc:  # the library's errors and bad paths or values
        if args.debug or os.environ.get("RSR_DEBUG", "") not in ("", "0"):
            raise
        print(error_line(exc), file=sys.stderr)
        return EXIT_ERROR
