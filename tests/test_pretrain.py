"""MiniCLIP's pretraining path end to end, on a tiny model and a few images."""

import json

import pytest
import torch

from rsretrieval.files import sha256_file
from rsretrieval.pretrain import PretrainConfig, chance_mr, pretrain


@pytest.mark.slow
def test_pretrain_saves_reports_and_restarts_a_stale_run(tmp_path, monkeypatch):
    monkeypatch.setenv("RSR_HOME", str(tmp_path / "home"))  # the run folder goes there, not into the checkout
    cfg = PretrainConfig(model="tiny", source_root=str(tmp_path / "source"), n_images=18, image_size=32, epochs=1,
                         batch_size=16, warmup_steps=1, eval_root=str(tmp_path / "rs"), eval_images=36,
                         device="cpu", progress=False)
    out = tmp_path / "tiny-test.pt"
    torch.manual_seed(0)
    report = pretrain(cfg, out)
    assert out.exists() and json.loads(out.with_suffix(".json").read_text())["zero_shot"] == report["zero_shot"]
    assert report["pairs"] == 5 * 18 and report["history"]["records"][-1]["updates"] == 6  # 90 pairs / 16
    assert 0 < report["used_tokens"] < 200 and report["chance_mr"] == chance_mr(report["zero_shot"]["n_images"])

    # From nothing again (another run folder): the same file, bit for bit.
    twin = pretrain(cfg, tmp_path / "tiny-twin.pt")
    assert twin["file_sha256"] == report["file_sha256"] == sha256_file(out)

    # Another source domain: the run folder's checkpoint is stale, so pretraining starts afresh
    # instead of resuming (and silently shipping) the old weights.
    again = pretrain(PretrainConfig(**{**cfg.__dict__, "n_images": 27}), out)
    assert again["pairs"] == 5 * 27
    assert again["history"]["records"][-1]["updates"] == 9  # 135 pairs / 16, all trained in this run


@pytest.mark.slow
def test_variants_are_run_once_and_tabled_with_val_and_test(tmp_path, monkeypatch):
    import rsretrieval.pretrain as pretraining

    monkeypatch.setenv("RSR_HOME", str(tmp_path / "home"))
    tiny = {"model": "tiny", "n_images": 18, "image_size": 32, "epochs": 1, "batch_size": 16, "warmup_steps": 1,
            "eval_root": str(tmp_path / "rs"), "eval_images": 36, "device": "cpu"}
    monkeypatch.setattr(pretraining, "VARIANTS", {"a": tiny, "b": {**tiny, "source_domain": "web"}})
    monkeypatch.setattr(pretraining, "VARIANTS_FILE", tmp_path / "table.json")
    rows = pretraining.pretrain_variants(["a", "b"], out_dir=tmp_path / "variants", progress=False)
    assert [r["name"] for r in rows] == ["a", "b"]
    for row in rows:
        assert 0 <= row["zero_shot_val_mr"] <= 100 and 0 <= row["zero_shot_test_mr"] <= 100 and row["minutes"] > 0
    table = json.loads((tmp_path / "table.json").read_text())
    assert table["ties"] == "expected" and table["variants"] == rows
    assert pretraining.read_variants(tmp_path / "table.json") == rows
    text = pretraining.format_variants(rows)
    assert len(text.splitlines()) == 2 + len(rows) and "source_domain=web" in text
    calls = []
    monkeypatch.setattr(pretraining, "pretrain", lambda *a, **k: calls.append(a))
    assert pretraining.pretrain_variants(["a"], out_dir=tmp_path / "variants", progress=False)[0] == rows[0]
    assert calls == []  # a finished variant is read back, not retrained
    # the same settings on a model name whose config has changed since (MiniCLIP's width) run again
    previous = json.loads((tmp_path / "variants" / "a.json").read_text())
    assert previous["architecture"] == pretraining.architecture("tiny")
    monkeypatch.setattr(pretraining, "architecture", lambda model: {"embed_dim": 999})
    monkeypatch.setattr(pretraining, "pretrain", lambda *a, **k: calls.append(a) or previous)
    pretraining.pretrain_variants(["a"], out_dir=tmp_path / "variants", progress=False)
    assert len(calls) == 1
    with pytest.raises(ValueError, match="unknown pretraining variant"):
        pretraining.pretrain_variants(["nope"])


def test_each_shipped_miniclip_is_one_row_of_the_variants_table():
    """variant_of finds the row whose run made a shipped file (what notebook 01 names as the one in use)."""
    import json

    from rsretrieval.models import LOCAL_PRETRAINED, local_pretrained_path
    from rsretrieval.pretrain import read_variants, variant_of

    rows = read_variants()
    for (model, tag) in LOCAL_PRETRAINED:
        report = json.loads(local_pretrained_path(model, tag).with_suffix(".json").read_text())
        row = variant_of(report, rows)
        assert row is not None, f"{model}/{tag}: no variant's run made its file"
        assert row["zero_shot_val_mr"] == pytest.approx(report["zero_shot_val"]["mr"])
    assert variant_of({"file_sha256": "0" * 64}, rows) is None


def test_pretrain_tag_names_the_shipped_weights_it_writes(monkeypatch):
    from rsretrieval import pretrain as module
    from rsretrieval.cli import main

    seen = {}

    def fake(cfg, out=None):
        seen["cfg"] = cfg
        return {"zero_shot": {"mr": 1.0}, "zero_shot_val": {"mr": 1.0}, "chance_mr": 0.5, "file_sha256": "0" * 64,
                "file_bytes": 1, "total_seconds": 1.0}

    monkeypatch.setattr(module, "pretrain", fake)
    assert main(["pretrain", "--tag", "synthrs3", "--epochs", "3"]) == 0
    assert (seen["cfg"].tag, seen["cfg"].epochs, seen["cfg"].eval_version) == ("synthrs3", 3, "1.0")
