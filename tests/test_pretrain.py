"""MiniCLIP's pretraining path end to end, on a tiny model and a few images."""

import json

import pytest
import torch

from rsretrieval.pretrain import PretrainConfig, chance_mr, pretrain


@pytest.mark.slow
def test_pretrain_saves_reports_and_restarts_a_stale_run(tmp_path):
    cfg = PretrainConfig(model="tiny", source_root=str(tmp_path / "source"), n_images=18, image_size=32, epochs=1,
                         batch_size=16, warmup_steps=1, eval_root=str(tmp_path / "rs"), eval_images=36,
                         device="cpu", progress=False)
    out = tmp_path / "tiny-test.pt"
    torch.manual_seed(0)
    report = pretrain(cfg, out)
    assert out.exists() and json.loads(out.with_suffix(".json").read_text())["zero_shot"] == report["zero_shot"]
    assert report["pairs"] == 5 * 18 and report["history"]["records"][-1]["updates"] == 6  # 90 pairs / 16
    assert 0 < report["used_tokens"] < 200 and report["chance_mr"] == chance_mr(report["zero_shot"]["n_images"])

    # Another source domain: the run folder's checkpoint is stale, so pretraining starts afresh
    # instead of resuming (and silently shipping) the old weights.
    again = pretrain(PretrainConfig(**{**cfg.__dict__, "n_images": 27}), out)
    assert again["pairs"] == 5 * 27
    assert again["history"]["records"][-1]["updates"] == 9  # 135 pairs / 16, all trained in this run
