"""The command line, end to end on tiny data: what a user types, checked by what it writes."""

import json

import pytest

from rsretrieval.cli import main


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli") / "synthrs"
    assert main(["data", "synth", "--root", str(root), "--n-images", "40", "--image-size", "64"]) == 0
    return root


def test_data_check_and_info(synth_root, tmp_path, capsys):
    report_file = tmp_path / "report.json"
    assert main(["data", "check", "synthrs", "--root", str(synth_root), "--json", str(report_file)]) == 0
    report = json.loads(report_file.read_text())
    assert report["ok"] and report["usable_images"] == 40
    assert main(["data", "info", "rsitmd"]) == 0
    out = capsys.readouterr().out
    assert "dataset_RSITMD.json" in out and "@" in out  # the layout and a bibtex citation


def test_data_check_reports_a_corrupt_image(tmp_path):
    import shutil

    from rsretrieval.data.synthrs import generate_synthrs

    root = generate_synthrs(tmp_path / "s", n_images=20, image_size=32, progress=False)
    broken = sorted((root / "images").glob("*.png"))[3]
    broken.write_bytes(b"not a png")
    assert main(["data", "check", "synthrs", "--root", str(root)]) == 1
    shutil.rmtree(root)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "mrs_adapter"])
def test_train_then_eval_run(synth_root, tmp_path, method, capsys):
    out = tmp_path / method
    args = ["train", "--dataset", "synthrs", "--root", str(synth_root), "--model", "tiny", "--epochs", "1",
            "--batch-size", "16", "--method", method, "--out", str(out), "--no-progress", "--device", "cpu"]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["best_epoch"] == 1 and 0 <= results["test"]["mr"] <= 100 and results["test_per_scene"]
    assert (out / "last.pt").exists() and (out / "best.pt").exists()
    assert (out / "method.pt").exists() == (method != "full")
    capsys.readouterr()
    json_out = tmp_path / f"eval-{method}.json"
    assert main(["eval", "--dataset", "synthrs", "--root", str(synth_root), "--model", "tiny", "--run", str(out),
                 "--json", str(json_out)]) == 0
    again = json.loads(json_out.read_text())["metrics"]
    assert again["mr"] == pytest.approx(results["test"]["mr"], abs=1e-6)


@pytest.mark.slow
def test_train_under_torchrun_shards_the_epoch(synth_root, tmp_path):
    """Two CPU processes (gloo) under torchrun: each takes half of every epoch, rank 0 writes."""
    import math
    import os
    import subprocess
    import sys

    from rsretrieval.data import load_dataset

    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "rsretrieval",
           "train", "--dataset", "synthrs", "--root", str(synth_root), "--model", "tiny", "--epochs", "1",
           "--batch-size", "8", "--method", "adapter", "--out", str(out), "--no-progress", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    pairs = load_dataset("synthrs", synth_root, "train").num_captions
    assert results["history"]["records"][-1]["updates"] == math.ceil(pairs // 2 / 8)  # half the steps of one process
    assert (out / "best.pt").exists() and (out / "method.pt").exists()
    assert done.stdout.count("trainable params") == 1  # rank 0 alone reports


@pytest.mark.slow
def test_bench_writes_ratios(tmp_path, capsys):
    path = tmp_path / "bench.json"
    assert main(["bench", "--model", "tiny", "--methods", "full,mrs_adapter", "--batch-size", "4", "--steps", "1",
                 "--repeats", "2", "--json", str(path)]) == 0
    rows = json.loads(path.read_text())
    assert [r["method"] for r in rows] == ["full", "mrs_adapter"]
    for r in rows:
        assert r["samples_per_s"] > 0 and r["peak_memory_bytes"] > 50 * 2**20  # an RSS, not a tensor count
        assert set(r) >= {"method", "trainable", "samples_per_s", "peak_memory_bytes"}
        assert r["repeats"] == 2 and len(r["samples_per_s_runs"]) == 2
        assert min(r["samples_per_s_runs"]) <= r["samples_per_s"] <= max(r["samples_per_s_runs"])
    assert rows[0]["throughput_ratio"] == 1.0 and rows[0]["throughput_ratio_range"] == [1.0, 1.0]
    lo, hi = rows[1]["throughput_ratio_range"]
    assert lo <= rows[1]["throughput_ratio"] <= hi
    assert rows[1]["trainable"] < rows[0]["trainable"]
    out = capsys.readouterr().out
    assert "speed x" in out and "medians of 2 interleaved round(s)" in out

    # Gradient checkpointing keeps fewer tensors for backward, for full fine-tuning and an in-block adapter
    # (what autograd keeps does not depend on the process: measured in this one, which is faster)
    from rsretrieval.bench import measure

    for plain in rows:
        recomputed = measure("tiny", plain["method"], batch_size=4, steps=1, grad_checkpointing=True)
        assert recomputed["grad_checkpointing"] and not plain["grad_checkpointing"] and not recomputed["amp"]
        assert 0 < recomputed["saved_for_backward_bytes"] < plain["saved_for_backward_bytes"]


def test_bench_counts_what_backward_keeps_on_the_warm_up_step_or_an_extra_one():
    from rsretrieval.bench import measure

    on_warmup = measure("tiny", "mrs_adapter", batch_size=4, steps=1, warmup=1)
    extra = measure("tiny", "mrs_adapter", batch_size=4, steps=1, warmup=0)
    assert on_warmup["saved_for_backward_bytes"] == extra["saved_for_backward_bytes"] > 0
    side = measure("tiny", "focus_adapter", batch_size=4, steps=1, warmup=1)
    assert 0 < side["saved_for_backward_bytes"] < on_warmup["saved_for_backward_bytes"]


def test_unknown_dataset_root_is_required(capsys):
    from rsretrieval.errors import DatasetNotFoundError

    assert main(["eval", "--dataset", "rsitmd", "--model", "tiny"]) == 1
    assert "needs a root" in capsys.readouterr().err
    with pytest.raises(DatasetNotFoundError, match="needs a root"):  # --debug lets the error through
        main(["--debug", "eval", "--dataset", "rsitmd", "--model", "tiny"])


@pytest.mark.parametrize("argv, says", [
    (["eval", "--model", "tinyy"], "unknown model 'tinyy'"),
    (["eval", "--dataset", "rsitmdd", "--model", "tiny"], "unknown dataset 'rsitmdd'"),
    (["eval", "--model", "tiny", "--run", "no/such/run"], "is not a run folder"),
    (["train", "--model", "tiny", "--method", "loraa", "--out", "OUT"], "unknown method 'loraa'"),
    (["train", "--model", "tiny", "--loss", "tripplet", "--out", "OUT"], "unknown loss 'tripplet'"),
    (["search", "no/such/index", "planes"], "no index at no/such/index"),
    (["data", "check", "rsitmd", "--root", "no/such/folder"], "not found"),
    (["index", "build", "--images", "no/such/images", "--out", "OUT", "--model", "tiny", "--pretrained", ""],
     "does not exist"),
])
def test_user_errors_are_one_line_without_traceback(argv, says, synth_root, tmp_path, capsys):
    argv = [a.replace("OUT", str(tmp_path / "out")) for a in argv]
    if argv[0] == "train":
        argv += ["--dataset", "synthrs", "--root", str(synth_root), "--no-progress"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and says in err[-1], err
    assert not any("Traceback" in line for line in err)


def test_bad_usage_exits_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--epochs", "many"])
    assert info.value.code == 2


def test_index_build_and_search_from_the_command_line(synth_root, tmp_path, capsys):
    import shutil

    archive = tmp_path / "archive"
    (archive / "sub").mkdir(parents=True)
    for k, path in enumerate(sorted((synth_root / "images").glob("*.png"))[:8]):
        shutil.copy(path, archive / ("sub" if k % 2 else "") / path.name)
    (archive / "broken.jpg").write_bytes(b"garbage")
    index = tmp_path / "index"
    assert main(["index", "build", "--images", str(archive), "--out", str(index), "--model", "tiny",
                 "--pretrained", "", "--scene-from-prefix", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "skipped broken.jpg" in err
    manifest = json.loads((index / "manifest.json").read_text())
    assert len(manifest["paths"]) == 8 and manifest["skipped"][0]["path"] == "broken.jpg"
    assert main(["search", str(index), "white planes", "-k", "3", "--json", "--device", "cpu"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert [h["rank"] for h in hits] == [1, 2, 3] and hits[0]["score"] >= hits[-1]["score"]


# ---------------------------------------------------------------- every subcommand, given bad arguments


@pytest.fixture(scope="module")
def tiny_index(synth_root, tmp_path_factory):
    index = tmp_path_factory.mktemp("cli-index") / "index"
    assert main(["index", "build", "--images", str(synth_root / "images"), "--out", str(index), "--model", "tiny",
                 "--pretrained", "", "--device", "cpu"]) == 0
    return index


# (argv with FILE: an existing file, INDEX: a built index, ROOT: SynthRS, OUT: a fresh folder; message; exit code)
BAD_COMMANDS = {
    "data synth": (["data", "synth", "--root", "FILE", "--n-images", "10"], "is not a SynthRS dataset", 1),
    "data check": (["data", "check", "rsitmd"], "the following arguments are required: --root", 2),
    "data info": (["data", "info", "rsitmdd"], "unknown dataset 'rsitmdd'", 1),
    "data stats": (["data", "stats", "rsitmd"], "needs a root", 1),
    "data leakage": (["data", "leakage", "--test", ":ROOT", "--train", "synthrs"], "give a dataset as NAME:ROOT", 1),
    "train": (["train", "--dataset", "synthrs", "--root", "ROOT", "--model", "tiny", "--batch-size", "0",
               "--out", "OUT"], "argument --batch-size: 0 is below 1", 2),
    "train into a file": (["train", "--dataset", "synthrs", "--root", "ROOT", "--model", "tiny", "--out", "FILE"],
                          "is a file, not a run folder", 1),
    "params": (["params", "--model", "tiny", "--method", "loraa"], "unknown method 'loraa'", 1),
    "bench": (["bench", "--model", "tiny", "--methods", "full,nosuch"], "unknown method 'nosuch'", 1),
    "index build": (["index", "build", "--images", "FILE", "--out", "OUT", "--model", "tiny", "--pretrained", ""],
                    "does not exist", 1),
    "index ann": (["index", "ann", "OUT"], "no index at", 1),
    "index ann on a damaged one": (["index", "ann", "FILE"], "no index at", 1),
    "search": (["search", "INDEX", "", "--device", "cpu"], "empty", 1),
    "search with another model": (["search", "INDEX", "planes", "--model", "mini", "--pretrained", "synthrs",
                                   "--device", "cpu"], "built with", 1),
    "bench-search": (["bench-search", "--vectors", "100", "--dim", "8", "--k", "0"], "argument --k: 0 is below 1", 2),
    "serve": (["serve", "OUT", "--port", "8123"], "no index at", 1),
    "bench-serve": (["bench-serve", "--clients", "0"], "argument --clients: 0 is below 1", 2),
    "serve with no threads": (["serve", "INDEX", "--threads", "0"], "argument --threads: 0 is below 1", 2),
    "serve on no port": (["serve", "INDEX", "--port", "99999"], "99999 is not a TCP port", 2),
    "search a negative k": (["search", "INDEX", "planes", "-k", "-3"], "argument -k: -3 is below 1", 2),
    "eval on a missing GPU": (["eval", "--model", "tiny", "--device", "cuda"], "torch sees no CUDA GPU", 2),
    "index build on no device": (["index", "build", "--images", "ROOT", "--out", "OUT", "--device", "gpu"],
                                 "'gpu' is not a device name", 2),
    "zoo build a negative seed": (["zoo", "build", "--seed", "-1", "--out", "OUT"], "-1 is below 0", 2),
    "zoo build no workers": (["zoo", "build", "--workers", "0", "--out", "OUT"], "--workers: 0 is below 1", 2),
    "zoo build an unknown model": (["zoo", "build", "--model", "nope", "--out", "OUT"], "unknown model 'nope'", 1),
    "eval": (["eval", "--model", "tiny", "--ties", "random"], "invalid choice: 'random'", 2),
    "eval a bad split": (["eval", "--dataset", "synthrs", "--root", "ROOT", "--model", "tiny", "--split", "tset"],
                         "split must be one of", 1),
    "train with a recipe": (["train", "--dataset", "synthrs", "--root", "ROOT", "--model", "tiny", "--recipe", "nosuch",
                             "--out", "OUT"], "unknown recipe 'nosuch'", 1),
    "recipes list": (["recipes", "list", "--method", "full"], "unrecognized arguments", 2),
    "recipes show": (["recipes", "show", "nosuch"], "unknown recipe 'nosuch'", 1),
    "recipes sweep": (["recipes", "sweep", "--method", "nope"], "no search space for nope", 1),
    "zoo build": (["zoo", "build", "--only", "nope", "--out", "OUT"], "no zoo configuration or method 'nope'", 1),
    "zoo show": (["zoo", "show", "--out", "OUT"], "no zoo at", 1),
    "pretrain": (["pretrain", "--rescore", "--out", "OUT/none.pt"], "no pretraining report", 1),
    "course": (["course", "--only", "99", "--out", "OUT"], "no notebook name starts with 99", 1),
    "course parameter": (["course", "-p", "SMOKE", "--out", "OUT"], "-p takes NAME VALUE or NAME=VALUE", 1),
}


def _subcommands(parser, prefix=()) -> set[str]:
    import argparse

    found = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                inner = _subcommands(sub, (*prefix, name))
                found |= inner or {" ".join((*prefix, name))}
    return found


def test_every_subcommand_has_a_bad_argument_case():
    from rsretrieval.cli import build_parser

    covered = {name for name in BAD_COMMANDS if name in _subcommands(build_parser())}
    assert covered == _subcommands(build_parser())


@pytest.mark.parametrize(("argv", "says", "code"), BAD_COMMANDS.values(), ids=BAD_COMMANDS.keys())
def test_bad_arguments_give_one_line_and_the_exit_code(argv, says, code, synth_root, tiny_index, tmp_path, capsys):
    afile = tmp_path / "a-file"
    afile.write_text("not a folder")
    swap = {"FILE": str(afile), "INDEX": str(tiny_index), "ROOT": str(synth_root), "OUT": str(tmp_path / "out")}
    argv = [swap.get(a, a).replace("OUT", str(tmp_path / "out")) if a.startswith("OUT") else swap.get(a, a)
            for a in argv]
    try:
        got = main(argv)
    except SystemExit as exc:  # argparse: usage errors exit 2 after printing usage
        got = exc.code
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("WARNING")]
    assert got == code, err
    assert not any("Traceback" in line for line in err)
    if code == 1:
        assert len(err) == 1 and err[0].startswith("error: ") and says in err[0], err
    else:
        assert says in err[-1] and err[0].startswith("usage:"), err
