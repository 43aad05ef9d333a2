"""run_method: one training run, cached by its identity; a run of other settings is never resumed."""

import json

import pytest

from rsretrieval.experiments import run_method
from rsretrieval.training import TrainConfig


def _run(colour_data, run_dir, on_epoch=None, **kw):
    cfg = TrainConfig(**{**dict(epochs=1, batch_size=8, lr=1e-3, warmup_steps=1, progress=False, device="cpu"), **kw})
    return run_method("tiny", None, "adapter", colour_data, colour_data, colour_data, cfg, run_dir=run_dir,
                      on_epoch=on_epoch)


@pytest.mark.slow
def test_cached_by_identity_and_restarted_when_settings_change(tmp_path, colour_data):
    run_dir = tmp_path / "run"
    seen = []
    first = _run(colour_data, run_dir, on_epoch=seen.append)
    assert first["history"]["records"][-1]["updates"] == 4  # 32 pairs / 8
    assert seen == first["history"]["records"]  # each epoch's record, as it ended
    assert (run_dir / "method.pt").exists() and (run_dir / "identity.json").exists()
    stamp = (run_dir / "results.json").stat().st_mtime_ns
    assert _run(colour_data, run_dir) == first  # same identity: the stored result, nothing retrained
    assert (run_dir / "results.json").stat().st_mtime_ns == stamp

    # An interrupted run of the same identity (results not written yet) resumes from last.pt.
    (run_dir / "results.json").unlink()
    again = _run(colour_data, run_dir)
    assert again["test"] == first["test"] and again["history"]["records"] == first["history"]["records"]

    # The folder moved (a copied checkout, another --out): a finished run is read back, an interrupted one
    # resumes from its last.pt instead of starting afresh.
    moved = tmp_path / "elsewhere" / "run"
    moved.parent.mkdir()
    run_dir.rename(moved)
    stamp = (moved / "results.json").stat().st_mtime_ns
    assert _run(colour_data, moved)["test"] == first["test"]
    assert (moved / "results.json").stat().st_mtime_ns == stamp  # read back, not trained again
    (moved / "results.json").unlink()
    stamp = (moved / "identity.json").stat().st_mtime_ns
    assert _run(colour_data, moved)["history"]["records"] == first["history"]["records"]
    assert (moved / "identity.json").stat().st_mtime_ns == stamp  # not cleared and rewritten: resumed
    moved.rename(run_dir)

    # Other settings in the same folder: trained afresh, not resumed from the other run's last.pt.
    other = _run(colour_data, run_dir, lr=1e-2)
    assert other["identity"]["config"]["lr"] == 1e-2
    assert json.loads((run_dir / "identity.json").read_text())["config"]["lr"] == 1e-2
    assert other["history"]["records"][-1]["updates"] == 4 and other["test"] != first["test"]


def test_compare_prints_the_lead_or_says_within_noise():
    from rsretrieval.experiments import compare

    a = {"method": "full", "mr_mean": 30.0, "mr_std": 0.3, "n": 3}
    b = {"method": "lora", "mr_mean": 26.9, "mr_std": 0.4, "n": 3}
    assert compare(a, b) == "full leads lora by 3.10 ± 0.50 mR (3 seeds each)"
    assert compare(b, a) == "full leads lora by 3.10 ± 0.50 mR (3 seeds each)"
    c = {"method": "vpt", "mr_mean": 29.7, "mr_std": 0.4, "n": 3}
    assert compare(c, a).startswith("vpt and full are within noise: they differ by -0.30 mR")
    assert "no spread" in compare({**a, "n": 1, "mr_std": 0.0}, {**b, "n": 1, "mr_std": 0.0})
    zero_shot = {"method": "zero-shot", "mr_mean": 29.8, "mr_std": 0.0, "n": 1}  # one run: the seeds' spread rules
    assert compare(a, zero_shot).startswith("full and zero-shot are within noise")
    assert compare(b, zero_shot) == "zero-shot leads lora by 2.90 ± 0.40 mR (3 and 1 runs)"
