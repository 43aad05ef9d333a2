"""The zoo on the tiny config: entries with provenance, resumable, and files that rebuild bit for bit."""

import json

import pytest
import torch

import rsretrieval.zoo as zoo
from rsretrieval.cli import main
from rsretrieval.files import sha256_file
from rsretrieval.data import load_dataset
from rsretrieval.methods import read_method_file
from rsretrieval.zoo import CONFIGS, ZooConfig, ZooSettings, build_zoo, ensure_zoo, evaluate_zoo, find_zoo, select

FIELDS = {"label", "method", "config", "loss", "seed", "recipe", "best_epoch", "val_mr", "test_mr", "train_seconds",
          "peak_memory_bytes", "file_sha256", "identity", "library_version", "command", "history"}


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo") / "synthrs"
    assert main(["data", "synth", "--root", str(root), "--n-images", "40", "--image-size", "32"]) == 0
    return root


def test_a_regime_has_its_own_zoo_folder_and_data(tmp_path, monkeypatch):
    from rsretrieval import paths
    from rsretrieval.zoo import zoo_dir

    assert zoo_dir("mini", "synthrs", "small-targets").name == "mini-synthrs-small-targets"
    assert ZooSettings(regime="small-targets", root="/somewhere").data_root() == "/somewhere"
    with pytest.raises(ValueError, match="small-targets, scene-free-captions"):
        ZooSettings(regime="nope").data_root()
    made = []
    monkeypatch.setattr(paths, "data_dir", lambda name: tmp_path / name)
    monkeypatch.setattr("rsretrieval.data.synthrs.generate.generate_synthrs", lambda root, **kw: made.append(kw) or root)
    assert ZooSettings(regime="scene-free-captions").data_root() == str(tmp_path / "synthrs-scene-free-captions")
    assert made == [{"unnamed_share": 1.0, "progress": False}]


def test_the_zoo_covers_every_comparison_of_notebooks_02_to_04():
    labels = [c.label for c in CONFIGS]
    assert len(set(labels)) == len(labels) and len({c.slug for c in CONFIGS}) == len(CONFIGS)
    for needed in ("full", "linear_probe", "coop", "vpt", "mrs_adapter", "mrs_adapter+hmmc", "focus_adapter",
                   "side_branch", "+scene", "+recycling", "cmer"):
        assert needed in labels
    assert {c.train["batch_size"] for c in CONFIGS if c.label.startswith("sweep-")} == {16, 64}
    assert [c.label for c in select(["mrs_adapter"])] == ["mrs_adapter"]  # a label first
    assert {c.method for c in select(["cmer", "focus_adapter"])} == {"cmer", "focus_adapter"}
    with pytest.raises(ValueError, match="no zoo configuration or method 'nope'"):
        select(["nope"])


@pytest.mark.slow
def test_zoo_entries_have_provenance_resume_and_rebuild_bit_for_bit(tiny_root, tmp_path, monkeypatch):
    settings = ZooSettings(model="tiny", pretrained=None, root=str(tiny_root), recipe=None)
    quick = {"epochs": 2, "batch_size": 16, "warmup_steps": 1}
    configs = (ZooConfig("linear_probe", "linear_probe", train=quick), ZooConfig("full", "full", train=quick))
    doc = build_zoo(None, [0], tmp_path / "a", settings, configs=configs, progress=False)
    assert [e["key"] for e in doc["entries"]] == ["linear_probe-s0", "full-s0"]
    for e in doc["entries"]:
        assert FIELDS <= set(e) and e["identity"]["selection"] == "val"
        assert e["peak_memory_bytes"] > 0 and 1 <= e["best_epoch"] <= 2 and len(e["history"]) == 2
        assert sha256_file(tmp_path / "a" / e["file"]) == e["file_sha256"]
    stored = read_method_file(tmp_path / "a" / doc["entries"][0]["file"])["state"].values()
    assert {t.dtype for t in stored} == {torch.float16}  # committed files are half the bytes
    assert json.loads((tmp_path / "a" / "zoo.json").read_text()) == doc

    # Finished entries are kept: nothing is trained again.
    monkeypatch.setattr(zoo, "_run_child", lambda *a: pytest.fail("a finished entry was retrained"))
    assert build_zoo(None, [0], tmp_path / "a", settings, configs=configs, progress=False) == doc
    monkeypatch.undo()

    # Rebuilt from nothing in another folder, two entries at a time: the same bytes.
    again = build_zoo(None, [0], tmp_path / "b", settings, configs=configs, workers=2, progress=False)
    assert [e["file_sha256"] for e in again["entries"]] == [e["file_sha256"] for e in doc["entries"]]

    # An entry that fails says which, and stops the build.
    from rsretrieval.errors import ChildProcessFailed

    broken = (ZooConfig("broken", "linear_probe", train={**quick, "epochs": 0}),)
    with pytest.raises(ChildProcessFailed, match="zoo entry broken seed 0 failed.*epochs must be an integer"):
        build_zoo(None, [0], tmp_path / "c", settings, configs=broken, workers=2, progress=False)

    # A zoo folder of other settings is refused by name.
    with pytest.raises(ValueError, match="zoo of other settings"):
        build_zoo(None, [0], tmp_path / "a", ZooSettings(model="tiny", pretrained=None, root=str(tiny_root),
                                                          recipe=None, threads=2), configs=configs, progress=False)

    # The entries, scored live from their stored files, give the build's own test scores.
    assert find_zoo(settings, tmp_path / "a") == doc and find_zoo(ZooSettings(), tmp_path / "a") is None
    runs = evaluate_zoo(doc, tmp_path / "a", load_dataset("synthrs", tiny_root, "test"), progress=False)
    assert [r["label"] for r in runs] == ["linear_probe", "full"]
    for r in runs:
        assert r["test"]["mr"] == pytest.approx(r["stored_test_mr"], abs=1e-9)
    with pytest.raises(ValueError, match="no entries for cmer"):
        evaluate_zoo(doc, tmp_path / "a", None, labels=["cmer"], progress=False)

    # What a notebook of other settings does: the entries it needs, trained here, through the same pipeline.
    made, where = ensure_zoo(settings, ["linear_probe"], [0], tmp_path / "d", train=quick, isolate=False,
                             progress=False)
    assert where == tmp_path / "d" and [e["file_sha256"] for e in made["entries"]] == [doc["entries"][0]["file_sha256"]]

    # A committed zoo that has some of the entries: those are copied, only the others are trained.
    monkeypatch.setattr(zoo, "zoo_dir", lambda *a: tmp_path / "a")
    assert ensure_zoo(settings, ["full"], [0], tmp_path / "e", configs=configs, progress=False) == (doc, tmp_path / "a")
    trained, train_here = [], zoo._in_process
    monkeypatch.setattr(zoo, "_in_process", lambda c, s, *a: trained.append(f"{c.slug}-s{s}") or train_here(c, s, *a))
    more, where = ensure_zoo(settings, ["linear_probe", "full"], [0, 1], tmp_path / "e", configs=configs,
                             isolate=False, progress=False)
    assert where == tmp_path / "e" and sorted(trained) == ["full-s1", "linear_probe-s1"]
    assert {e["key"]: e["file_sha256"] for e in more["entries"] if e["seed"] == 0} == \
        {e["key"]: e["file_sha256"] for e in doc["entries"]}


def test_the_committed_zoo_is_what_a_build_makes_now():
    from rsretrieval.zoo import SEEDS, load_zoo, zoo_dir

    doc = load_zoo()
    settings, by_label = ZooSettings(**doc["settings"]), {c.label: c for c in CONFIGS}
    assert doc["base_weights"] == zoo.base_weights(settings), "MiniCLIP was pretrained again: rebuild the zoo"
    assert [e["key"] for e in doc["entries"]] == [f"{c.slug}-s{s}" for c in CONFIGS for s in c.seeds_of(list(SEEDS))]
    stale = [e["key"] for e in doc["entries"] if not zoo._fresh(e, by_label[e["label"]], zoo_dir(), settings)]
    assert not stale, f"stale or damaged entries: {stale}; rebuild them with `python -m rsretrieval zoo build`"
    for c in CONFIGS:  # notebooks 02-04 average over 3 seeds
        assert c.n_seeds is None or set(c.notebooks) <= {"05"}, c.label


def test_ablations_take_their_components_knobs_from_cmers_recipe(monkeypatch):
    from types import SimpleNamespace

    from rsretrieval import recipes

    chosen = {"scene_prob": 0.25, "queue_weight": 0.5, "queue_size": 1024, "queue_warmup": 100}
    monkeypatch.setattr(recipes, "load_recipe", lambda name, method, loss=None: SimpleNamespace(
        loss_kwargs=chosen if method == "cmer" else {}, to_dict=lambda: {"method": method}))
    real = {"methods": {"cmer": {"train": {"lr": 0.001}}, "focus_adapter": {"train": {"lr": 0.003}}}}
    monkeypatch.setattr(recipes, "read_recipe_file", lambda name: real)  # no sweep of the recycling row's own
    by = {c.label: c for c in CONFIGS}
    settings = ZooSettings()
    assert zoo._cmer_knobs(settings, by["+scene"]) == {"scene_prob": 0.25}
    assert zoo._cmer_knobs(settings, by["+recycling"]) == {"weight": 0.5, "queue_size": 1024, "warmup_steps": 100}
    assert zoo._cmer_knobs(settings, by["sweep-b16-q512"]) == {"weight": 0.5, "warmup_steps": 100}
    assert zoo._cmer_knobs(settings, by["side_branch"]) == {} and zoo._cmer_knobs(ZooSettings(recipe=None),
                                                                                  by["+scene"]) == {}
    assert zoo._recipe_of(settings, by["+scene"])["cmer_knobs"] == {"scene_prob": 0.25}
    assert "cmer_knobs" not in zoo._plain(by["full"]) and zoo._plain(by["+scene"])["cmer_knobs"] == ["scene_prob"]

    # a recipe with a sweep of the recycling row's own (focus_adapter+recycling): its choice, not CMER's knobs
    monkeypatch.setattr(recipes, "read_recipe_file", lambda name: {
        **real, "methods": {**real["methods"], "focus_adapter+recycling": {"train": {"lr": 0.001}}}})
    assert zoo._cmer_knobs(settings, by["+recycling"]) == {} and zoo._cmer_knobs(settings, by["sweep-b16-q512"]) == {}
    assert zoo._cmer_knobs(settings, by["+scene"]) == {"scene_prob": 0.25}  # cmer+... has no entry of its own


def test_an_ablation_measures_its_component_on_where_cmers_sweep_chose_it_off(monkeypatch):
    from types import SimpleNamespace

    from rsretrieval import recipes

    def point(val_mr, **loss):
        return {"settings": {"train.lr": 0.001, **{f"loss.{k}": v for k, v in loss.items()}}, "val_mr": val_mr}

    cmer = {"sweep": {"points": [point(12.0), point(17.0, scene_prob=0.0), point(14.0, scene_prob=0.25),
                                 point(13.0, scene_prob=0.5)]}}
    monkeypatch.setattr(recipes, "load_recipe", lambda name, method, loss=None: SimpleNamespace(
        loss_kwargs={"scene_prob": 0.0, "queue_weight": 0.25}))
    monkeypatch.setattr(recipes, "read_recipe_file", lambda name: {"methods": {"cmer": cmer}})
    by = {c.label: c for c in CONFIGS}
    assert zoo._cmer_knobs(ZooSettings(), by["+scene"]) == {"scene_prob": 0.25}  # the best point with it on
    cmer["sweep"]["points"] = [point(17.0, scene_prob=0.0)]  # never swept on: the choice stands
    assert zoo._cmer_knobs(ZooSettings(), by["+scene"]) == {"scene_prob": 0.0}


def test_each_entry_lands_in_zoo_json_as_it_finishes(tmp_path, monkeypatch):
    configs = (ZooConfig("a", "linear_probe"), ZooConfig("b", "linear_probe", train={"lr": 0.01}))
    seen = []

    def fake_child(config, seed, folder, settings):
        import time

        index = folder / "zoo.json"
        deadline = time.monotonic() + (10 if config.label == "b" else 0)
        while not index.is_file() and time.monotonic() < deadline:  # b waits (a while) for a to land
            time.sleep(0.01)
        seen.append([e["key"] for e in json.loads(index.read_text())["entries"]] if index.is_file() else [])
        (folder / "files").mkdir(parents=True, exist_ok=True)
        (folder / "files" / f"{config.slug}.pt").write_bytes(config.slug.encode())
        return {"key": f"{config.slug}-s{seed}", "label": config.label, "seed": seed, "config": zoo._plain(config),
                "recipe_settings": None, "file": f"files/{config.slug}.pt",
                "file_sha256": zoo.sha256_file(folder / "files" / f"{config.slug}.pt")}

    monkeypatch.setattr(zoo, "_run_child", fake_child)
    build_zoo(None, [0], tmp_path / "z", ZooSettings(recipe=None), configs=configs, workers=1, progress=False)
    assert seen == [[], ["a-s0"]]  # the first entry was in zoo.json while the second was still training


def _fake_child(trained):
    def child(config, seed, folder, settings):
        trained.append(f"{config.slug}-s{seed}")
        (folder / "files").mkdir(parents=True, exist_ok=True)
        path = folder / "files" / f"{config.slug}-s{seed}.pt"
        path.write_bytes(f"{config.slug}-s{seed}".encode())
        return {"key": f"{config.slug}-s{seed}", "label": config.label, "seed": seed, "config": zoo._plain(config),
                "recipe_settings": None, "file": str(path.relative_to(folder)), "file_sha256": zoo.sha256_file(path),
                "command": "train it", "method": config.method, "best_epoch": 1, "epochs_run": 2, "val_mr": 30.0,
                "test_mr": 25.0, "history": [{"val_mr": 30.0}, {"val_mr": 29.0}], "identity": {}}
    return child


def test_a_zoo_is_of_one_set_of_base_weights(tmp_path, monkeypatch):
    """Re-pretrained base weights make every entry stale: a build into the old zoo is refused by name,
    and a notebook does not read it."""
    from rsretrieval.models.factory import local_pretrained_path

    shipped = "sha256:" + sha256_file(local_pretrained_path("mini", "synthrs"))
    assert zoo.base_weights(ZooSettings()) == shipped
    assert zoo.base_weights(ZooSettings(model="ViT-B-32", pretrained="openai")) == "tag:openai"
    assert zoo.base_weights(ZooSettings(model="tiny", pretrained=None)) is None
    (tmp_path / "mine.pt").write_bytes(b"weights")
    assert zoo.base_weights(ZooSettings(pretrained=str(tmp_path / "mine.pt"))) == \
        "sha256:" + sha256_file(tmp_path / "mine.pt")

    configs, settings = (ZooConfig("a", "linear_probe"),), ZooSettings(recipe=None)
    monkeypatch.setattr(zoo, "_run_child", _fake_child([]))
    doc = build_zoo(None, [0], tmp_path / "z", settings, configs=configs, progress=False)
    assert doc["base_weights"] == shipped and find_zoo(settings, tmp_path / "z") == doc
    monkeypatch.setattr(zoo, "base_weights", lambda s: "sha256:re-pretrained")
    assert find_zoo(settings, tmp_path / "z") is None
    with pytest.raises(ValueError, match=f"zoo of other base weights \\({shipped}; mini synthrs is now "
                                         "sha256:re-pretrained\\)"):
        build_zoo(None, [0], tmp_path / "z", settings, configs=configs, progress=False)


def test_configurations_that_train_the_same_run_train_it_once(tmp_path, monkeypatch):
    configs = (ZooConfig("side", "focus_adapter", "infonce", {"pooling": "mean"}),
               ZooConfig("grid-b64", "focus_adapter", "infonce", {"pooling": "mean"}, train={}),
               ZooConfig("grid-b16", "focus_adapter", "infonce", {"pooling": "mean"}, train={"batch_size": 16}),
               ZooConfig("uncached", "focus_adapter", "infonce", cache_features=False, n_seeds=1))
    trained = []
    monkeypatch.setattr(zoo, "_run_child", _fake_child(trained))
    settings = ZooSettings(recipe=None)
    doc = build_zoo(None, [0, 1], tmp_path, settings, configs=configs, workers=2, progress=False)
    assert sorted(trained) == ["grid-b16-s0", "grid-b16-s1", "side-s0", "side-s1", "uncached-s0"]
    rows = {e["key"]: e for e in doc["entries"]}
    assert list(rows) == ["side-s0", "side-s1", "grid-b64-s0", "grid-b64-s1", "grid-b16-s0", "grid-b16-s1",
                          "uncached-s0"]
    twin = rows["grid-b64-s1"]
    assert twin["same_run_as"] == "side-s1" and twin["file"] == rows["side-s1"]["file"]
    assert twin["label"] == "grid-b64" and twin["config"] == zoo._plain(configs[1]) and "n_seeds" not in twin["config"]
    assert "--only grid-b64 --seed 1" in twin["command"] and "same_run_as" not in rows["grid-b16-s1"]

    # Built again, or only the twin: nothing trains, the twin's row is kept.
    assert build_zoo(None, [0, 1], tmp_path, settings, configs=configs, progress=False) == doc
    assert build_zoo(["grid-b64"], [0, 1], tmp_path, settings, configs=configs, progress=False) == doc
    assert len(trained) == 5

    # A zoo that lacks the twin's row derives it from the run it has, without training.
    doc["entries"] = [e for e in doc["entries"] if e["key"] != "grid-b64-s0"]
    zoo.atomic_write_json(tmp_path / "zoo.json", doc)
    again = build_zoo(["grid-b64"], [0], tmp_path, settings, configs=configs, progress=False)
    assert len(trained) == 5 and {e["key"]: e for e in again["entries"]}["grid-b64-s0"]["same_run_as"] == "side-s0"

    # A notebook that asks for every seed of a one-seed configuration gets (and needs) its one seed.
    monkeypatch.setattr(zoo, "zoo_dir", lambda *a: tmp_path)
    monkeypatch.setattr(zoo, "find_zoo", lambda s, folder=None: again)
    assert ensure_zoo(settings, ["uncached", "side"], [0, 1], tmp_path / "out", configs=configs) == (again, tmp_path)


def test_a_child_ends_when_its_build_is_killed(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    pid_file = tmp_path / "child.pid"
    child = ("import pathlib, sys, time; from rsretrieval.zoo import exit_with_parent; exit_with_parent(0.1); "
             f"pathlib.Path({str(pid_file)!r}).write_text(str(__import__('os').getpid())); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', "
                               f"{child!r}])"])
    deadline = time.monotonic() + 60
    while not pid_file.is_file() or not pid_file.read_text():
        assert time.monotonic() < deadline, "the child did not start"
        time.sleep(0.1)
    child_pid = int(pid_file.read_text())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(child_pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(child_pid, signal.SIGKILL)
    raise AssertionError("the child kept running after its parent was killed")


def test_a_learning_curve_point_trains_on_a_nested_share_without_the_recipes_early_stop(tiny_root, tmp_path):
    from rsretrieval.data import nested_subset

    configs = (ZooConfig("linear_probe@50%", "linear_probe", train={"epochs": 2, "batch_size": 8}, train_share=0.5),)
    settings = ZooSettings(model="tiny", pretrained=None, root=str(tiny_root), recipe=None, threads=2)
    doc = build_zoo(None, [0], tmp_path / "c", settings, configs=configs, isolate=False, progress=False)
    (row,) = doc["entries"]
    train = load_dataset("synthrs", tiny_root, "train")
    half = nested_subset(train, round(train.num_images / 2))
    assert row["identity"]["train_images"] == half.num_images < train.num_images
    assert row["config"]["train_share"] == 0.5 and row["identity"]["config"]["stop_epoch"] == 2
    assert zoo.curve_label("full", 0.25) == "full@25%" and zoo.curve_label("full", 1) == "full"
    curve = [c for c in CONFIGS if c.train_share]
    assert {c.label.split("@")[0] for c in curve} == set(zoo.CURVE_METHODS)
    assert all(c.notebooks == ("02",) and c.n_seeds is None for c in curve)


def test_a_zoo_records_the_synthrs_version_it_was_built_on(tmp_path, monkeypatch):
    from dataclasses import asdict

    from rsretrieval.data import synthrs

    current = synthrs.VERSIONS["rs"]
    assert ZooSettings().version == current  # concrete, so a zoo names its generator
    assert ZooSettings(root=str(tmp_path)).version is None and ZooSettings(dataset="rsitmd").version is None
    # another version is generated into its own folder (the current one stays at <data home>/synthrs)
    monkeypatch.setenv("RSR_HOME", str(tmp_path))
    calls = []
    monkeypatch.setattr(synthrs, "generate_synthrs", lambda root, **kw: calls.append((root, kw)) or root)
    assert ZooSettings().data_root() is None and not calls
    other = "3.0" if current != "3.0" else "1.0"
    assert ZooSettings(version=other).data_root() == str(tmp_path / f"synthrs-{other}")
    assert calls == [(tmp_path / f"synthrs-{other}", {"version": other, "progress": False})]
    # a zoo of another version is another zoo, refused by name
    doc = {"settings": asdict(ZooSettings(version=other)), "base_weights": None}
    assert "other settings" in zoo._other_zoo(doc, ZooSettings(), None)
    assert zoo._other_zoo({**doc, "settings": asdict(ZooSettings())}, ZooSettings(), None) is None
    assert zoo._settings_args(ZooSettings(version=other)) == ["--version", other]
    assert "--version" not in zoo._settings_args(ZooSettings(dataset="rsitmd", root=str(tmp_path)))


def test_the_committed_zoos_match_the_current_generator():
    from rsretrieval.data.synthrs import VERSIONS

    for name in ("mini-synthrs", "mini-synthrs-small-targets", "mini-synthrs-scene-free-captions"):
        settings = json.loads((zoo.zoo_dir().parent / name / "zoo.json").read_text())["settings"]
        assert settings["version"] == VERSIONS["rs"], name
