"""run_method: one training run, cached by its identity; a run of other settings is never resumed."""

import json

import pytest

from rsretrieval.experiments import run_method
from rsretrieval.training import TrainConfig


def _run(colour_data, run_dir, **kw):
    cfg = TrainConfig(**{**dict(epochs=1, batch_size=8, lr=1e-3, warmup_steps=1, progress=False, device="cpu"), **kw})
    return run_method("tiny", None, "adapter", colour_data, colour_data, colour_data, cfg, run_dir=run_dir)


@pytest.mark.slow
def test_cached_by_identity_and_restarted_when_settings_change(tmp_path, colour_data):
    run_dir = tmp_path / "run"
    first = _run(colour_data, run_dir)
    assert first["history"]["records"][-1]["updates"] == 4  # 32 pairs / 8
    assert (run_dir / "method.pt").exists() and (run_dir / "identity.json").exists()
    stamp = (run_dir / "results.json").stat().st_mtime_ns
    assert _run(colour_data, run_dir) == first  # same identity: the stored result, nothing retrained
    assert (run_dir / "results.json").stat().st_mtime_ns == stamp

    # An interrupted run of the same identity (results not written yet) resumes from last.pt.
    (run_dir / "results.json").unlink()
    again = _run(colour_data, run_dir)
    assert again["test"] == first["test"] and again["history"]["records"] == first["history"]["records"]

    # Other settings in the same folder: trained afresh, not resumed from the other run's last.pt.
    other = _run(colour_data, run_dir, lr=1e-2)
    assert other["identity"]["config"]["lr"] == 1e-2
    assert json.loads((run_dir / "identity.json").read_text())["config"]["lr"] == 1e-2
    assert other["history"]["records"][-1]["updates"] == 4 and other["test"] != first["test"]
