"""Recipes: named settings per method, taken by train/run_method, and the sweep that chooses them on val."""

import json

import pytest
import torch

import rsretrieval.recipes as recipes
from fakedata import karpathy_doc, write_image, write_json
from rsretrieval.experiments import run_method
from rsretrieval.recipes import load_recipe
from rsretrieval.training import TrainConfig, fit
from rsretrieval.training.loop import _optimizer, _schedule


def test_pe_rsitr_recipe_is_the_published_protocol():
    r = load_recipe("pe-rsitr", "mrs_adapter")
    cfg = r.config()
    assert (cfg.optimizer, cfg.lr, cfg.epochs, cfg.batch_size, cfg.schedule, cfg.step_epochs, cfg.step_gamma) == \
        ("adam", 2e-4, 30, 16, "step", (19,), 0.7)
    assert r.loss == "hmmc" and r.val_fraction == 0.2
    assert load_recipe("pe-rsitr", "linear_probe").loss is None  # the "*" entry: the method's own loss
    assert r.config(epochs=2, lr=None).epochs == 2 and r.config(epochs=2).lr == 2e-4  # explicit wins, None doesn't


def test_recipe_errors_name_the_fix(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown recipe 'nope'.*recipes sweep"):
        load_recipe("nope", "full")
    monkeypatch.setattr(recipes, "RECIPE_DIR", tmp_path)
    write_json(tmp_path / "r.json", {"methods": {"full": {"train": {"lr": 1e-4, "lrr": 2}}}})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['lrr'\]"):
        load_recipe("r", "full")
    with pytest.raises(ValueError, match="no entry for method 'vpt'.*--method vpt"):
        load_recipe("r", "vpt")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        load_recipe("bad", "full")


def test_step_schedule_and_adam():
    cfg = TrainConfig(optimizer="adam", schedule="step", step_epochs=(2, 3), step_gamma=0.5, warmup_steps=0,
                      lr=1.0, weight_decay=0.0)
    opt = _optimizer(torch.nn.Linear(2, 2), cfg)
    assert type(opt) is torch.optim.Adam
    sched = _schedule(opt, cfg, total_steps=12, updates_per_epoch=3)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == [1.0] * 6 + [0.5] * 3 + [0.25] * 3  # after epoch 2, then after epoch 3
    with pytest.raises(ValueError, match="schedule must be one of"):
        TrainConfig(schedule="linear")
    with pytest.raises(ValueError, match="patience must be None or an integer >= 1"):
        TrainConfig(patience=0)


@pytest.mark.slow
def test_patience_stops_when_val_stops_improving(colour_data, tiny_bundle):
    import copy

    model = copy.deepcopy(tiny_bundle.model)
    cfg = TrainConfig(epochs=6, batch_size=8, lr=1e-12, warmup_steps=0, patience=2, progress=False, device="cpu")
    history = fit(model, tiny_bundle.tokenizer, colour_data, tiny_bundle.transform, cfg, val_data=colour_data)
    assert history.best_epoch == 1 and len(history.records) == 3  # two epochs without a better val mR


def test_stop_epoch_cuts_the_validated_schedule_without_shortening_it(colour_data, tiny_bundle):
    import copy

    runs = {}
    for stop in (None, 2):
        cfg = TrainConfig(epochs=4, stop_epoch=stop, batch_size=8, lr=1e-3, warmup_steps=1, progress=False,
                          device="cpu")
        runs[stop] = fit(copy.deepcopy(tiny_bundle.model), tiny_bundle.tokenizer, colour_data, tiny_bundle.transform,
                         cfg, val_data=colour_data).records
    assert len(runs[2]) == 2 and len(runs[None]) == 4
    assert runs[2] == [{**r, "seconds": runs[2][k]["seconds"], "samples_per_s": runs[2][k]["samples_per_s"]}
                       for k, r in enumerate(runs[None][:2])]  # the same steps and learning rates, then a stop
    with pytest.raises(ValueError, match="stop_epoch"):
        TrainConfig(stop_epoch=0)


def _no_test_dataset(root):
    """A Karpathy json with train and val images only: no test split at all."""
    items = []
    for k, colour in enumerate(["red", "green", "blue", "white"] * 3):
        name = f"{colour}_{k}.png"
        write_image(root / name, size=(32, 32), value=60 * k)
        items.append({"filename": name, "split": "val" if k >= 8 else "train",
                      "captions": [f"a {colour} square", f"{colour} image {k}"]})
    write_json(root / "captions.json", karpathy_doc(items))
    return root


@pytest.mark.slow
def test_sweep_reads_no_test_split_and_stores_a_recipe(tmp_path, monkeypatch):
    from rsretrieval.data import load_dataset
    from rsretrieval.recipes.sweep import sweep

    root = _no_test_dataset(tmp_path / "data")
    with pytest.raises(Exception, match="no usable images"):
        load_dataset("karpathy", root, "test")  # there is no test split to read
    monkeypatch.setattr(recipes, "RECIPE_DIR", tmp_path / "recipes")
    (tmp_path / "recipes").mkdir()
    space = {"train.lr": [1e-3, 1e-2], "method.bottleneck": [2, 4]}
    base = {"epochs": 2, "patience": 1, "batch_size": 8, "warmup_steps": 1}
    entry = sweep("adapter", dataset="karpathy", root=root, model="tiny", pretrained=None, space=space, base=base,
                  out_dir=tmp_path / "runs", device="cpu", progress=False)
    points = entry["sweep"]["points"]
    assert all(p["val_mr"] is not None for p in points)
    lr_stage = [p for p in points if "method.bottleneck" not in p["settings"]]
    lrs = [p["settings"]["train.lr"] for p in lr_stage]
    assert lrs[:2] == [1e-3, 1e-2] and len(lrs) <= 4  # a best at the edge is tried further out, twice at most
    for k, lr in enumerate(lrs[2:], start=2):
        assert lr in (pytest.approx(max(lrs[:k]) * 3, rel=1e-2), pytest.approx(min(lrs[:k]) / 3, rel=1e-2))
    lr_best = max(lr_stage, key=lambda p: p["val_mr"])["settings"]["train.lr"]
    assert len(lrs) == 4 or lr_best not in (min(lrs), max(lrs))
    rest = points[len(lr_stage):]
    assert [p["settings"]["method.bottleneck"] for p in rest] == [2, 4]  # the second knob, lr fixed
    assert all(p["settings"]["train.lr"] == lr_best for p in rest)
    longer = [p for p in rest if "train.epochs" in p["settings"]]  # a longer schedule for a budget-bound choice
    rest = [p for p in rest if p not in longer]
    assert entry["sweep"]["chosen"] == max(rest + longer, key=lambda p: p["val_mr"])["settings"]
    # bottleneck 2 is the adapter's default: that point is the lr stage's best, read back, not trained again
    assert rest[0]["val_mr"] == max(p["val_mr"] for p in lr_stage)
    assert len(list((tmp_path / "runs").glob("*/results.json"))) == len(lr_stage) + 1 + len(longer)
    for results in (tmp_path / "runs").glob("*/results.json"):
        assert json.loads(results.read_text())["test"] is None  # nothing was scored on test

    r = load_recipe("tiny-karpathy", "adapter")  # the stored recipe, read back by name
    assert r.train["lr"] == entry["train"]["lr"] and r.method_kwargs == entry["method_kwargs"]
    assert r.sweep["selected_on"] == "val"
    assert r.train["epochs"] == entry["sweep"]["chosen"].get("train.epochs", base["epochs"])
    assert r.train["stop_epoch"] == entry["sweep"]["best_epoch"]

    # Resumable: a second sweep reads every point back instead of training it.
    import rsretrieval.training as training
    calls = []
    monkeypatch.setattr(training, "fit", lambda *a, **k: calls.append(1))
    assert sweep("adapter", dataset="karpathy", root=root, model="tiny", pretrained=None, space=space, base=base,
                 out_dir=tmp_path / "runs", device="cpu", progress=False) == entry
    assert calls == []
    monkeypatch.undo()
    monkeypatch.setattr(recipes, "RECIPE_DIR", tmp_path / "recipes")

    # Another loss is swept on its own and stored beside the method's entry, not over it.
    hmmc = sweep("adapter", dataset="karpathy", root=root, model="tiny", pretrained=None, loss="hmmc",
                 space={"train.lr": [1e-3, 3e-3]}, base={**base, "epochs": 1}, out_dir=tmp_path / "runs-hmmc",
                 device="cpu", progress=False)
    stored = json.loads((tmp_path / "recipes" / "tiny-karpathy.json").read_text())["methods"]
    assert set(stored) == {"adapter", "adapter+hmmc"} and stored["adapter"] == entry
    assert load_recipe("tiny-karpathy", "adapter", "hmmc").train["lr"] == hmmc["train"]["lr"]
    assert load_recipe("tiny-karpathy", "adapter", "hmmc").loss == "hmmc"
    assert load_recipe("tiny-karpathy", "adapter", "infonce").train == load_recipe("tiny-karpathy", "adapter").train
    assert load_recipe("tiny-karpathy", "adapter", "vsepp").train["lr"] == entry["train"]["lr"]  # none of its own


def test_a_choice_still_improving_at_its_last_epoch_gets_a_longer_budget(tmp_path, monkeypatch):
    """The sweep's early stopping chooses the epochs only when the peak lies inside the budget."""
    import rsretrieval.data as data
    import rsretrieval.experiments as experiments
    from rsretrieval.recipes import sweep as sweep_module

    runs = []

    def fake_run(model, pretrained, method, train, val, test, config, **kwargs):
        runs.append(config)
        epochs, lr = config["epochs"], config["lr"]
        best = min(epochs, 20)  # this method peaks at epoch 20, whatever the budget
        return {"val_mr": best - 10 * abs(lr - 0.2), "best_epoch": best,
                "history": {"records": [{"seconds": 1.0}] * min(epochs, best + config["patience"])}}

    monkeypatch.setattr(experiments, "run_method", fake_run)
    monkeypatch.setattr(data, "load_dataset", lambda *a, **k: None)
    monkeypatch.setattr(recipes, "RECIPE_DIR", tmp_path)
    entry = sweep_module.sweep("adapter", dataset="karpathy", model="tiny", pretrained=None,
                               space={"train.lr": [0.1, 0.2, 0.3]}, base={"epochs": 12, "patience": 2},
                               out_dir=tmp_path / "runs", progress=False)
    # 12 epochs: best at 12, the last -> 24: best at 20, inside the budget, so no further
    assert [c["epochs"] for c in runs] == [12, 12, 12, 24]
    assert entry["train"]["epochs"] == 24 and entry["train"]["stop_epoch"] == 20
    assert entry["sweep"]["chosen"] == {"train.lr": 0.2, "train.epochs": 24}


@pytest.mark.slow
def test_run_method_takes_a_recipe_and_trains_without_val(tmp_path, monkeypatch, colour_data):
    monkeypatch.setattr(recipes, "RECIPE_DIR", tmp_path)
    write_json(tmp_path / "mine.json", {"model": "mini", "datasets": ["synthrs"], "methods": {"*": {"train": {"lr": 1e-3, "batch_size": 8, "epochs": 2,
                                                                     "warmup_steps": 1}},
                                                    "adapter": {"method_kwargs": {"bottleneck": 3}}}})
    with pytest.warns(UserWarning, match="recipe 'mine' was chosen for mini on synthrs; this run trains tiny"):
        out = run_method("tiny", None, "adapter", colour_data, None, colour_data,
                         {"epochs": 1, "device": "cpu", "progress": False}, recipe="mine", run_dir=tmp_path / "run")
    identity = out["identity"]
    assert identity["recipe"] == "mine" and identity["selection"] == "last epoch"
    assert identity["config"]["lr"] == 1e-3 and identity["config"]["epochs"] == 1  # the dict overrides the recipe
    assert identity["method_kwargs"] == {"bottleneck": 3}
    assert out["val"] is None and out["best_epoch"] == 1 and out["test"]["mr"] >= 0
    with pytest.raises(TypeError, match="dict of the fields that override it"):
        run_method("tiny", None, "adapter", colour_data, None, colour_data, TrainConfig(), recipe="mine",
                   run_dir=tmp_path / "run2")


def test_val_fraction_zero_trains_on_all_of_train(tmp_path):
    from fakedata import make_rsitmd
    from rsretrieval.data import load_dataset
    from rsretrieval.errors import DatasetFormatError

    expected = make_rsitmd(tmp_path)
    assert load_dataset("rsitmd", tmp_path, "train", val_fraction=0).num_images == len(expected["train"])
    assert load_dataset("rsitmd", tmp_path, "train").num_images < len(expected["train"])  # the default carves val
    with pytest.raises(DatasetFormatError, match="val_fraction=0 carves none"):
        load_dataset("rsitmd", tmp_path, "val", val_fraction=0)
