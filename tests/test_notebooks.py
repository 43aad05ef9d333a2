"""Every course notebook: paired with its source, output-free, and executed top to bottom.

The execution tests run papermill in a fresh ``python3`` kernel with SMOKE=True on the CPU
(CUDA_VISIBLE_DEVICES="" is inherited from conftest). ``make test-gpu`` runs them with
DEVICE=cuda and SMOKE=False instead, and they are skipped when no GPU is present.
"""

import json
import math
import os
from pathlib import Path

import nbformat
import pytest

from rsretrieval.course import NotebookFailed, list_notebooks, notebook_parameters, run_notebook

NOTEBOOKS = list_notebooks()
REQUIRED = {"SMOKE", "DEVICE", "DATASET", "DATA_DIR", "MODEL", "PRETRAINED", "BATCH_SIZE", "SEED", "OUTPUT_DIR"}
CELL_TIMEOUT = 600
GPU = os.environ.get("RSR_TEST_GPU") == "1"

# What each notebook must record, with the range its values must fall in.
EXPECTED_RECORDS = {
    "00_datasets": {"n_train_images": (1, 1e6), "n_test_images": (1, 1e6), "n_scenes": (2, 1000)},
    "01_zero_shot": {"zero_shot_mr": (0, 100), "n_test_images": (1, 1e6), "chance_mr": (0, 100)},
    "02_full_vs_petl": {"full_minus_best_petl_mr": (-100, 100)},
    "03_focus_adapter": {"focus_share_after": (0, 1), "focus_lift_after": (0, 100), "uniform_share": (0, 1)},
    "04_scene_and_negatives": {"cmer_minus_side_branch_mr": (-100, 100)},
    "05_resource_efficiency": {"focus_vs_mrs_throughput": (0, 1e4), "focus_vs_mrs_memory": (0, 100),
                               "cache_speedup": (0, 1e6)},
    "06_search_engine": {"n_indexed": (1, 1e8), "faiss_recall_at_k": (0, 1), "faiss_p50_ms": (0, 1e5)},
}


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 2, "notebooks/ should hold the course"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_hygiene(path: Path):
    import jupytext

    nb = nbformat.read(path, as_version=4)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert not cell.get("outputs"), f"{path.name} cell {i} has committed outputs"
            assert cell.get("execution_count") is None, f"{path.name} cell {i} has an execution count"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name} needs exactly one cell tagged 'parameters'"
    source = path.with_suffix(".py")
    assert source.exists(), f"{path.name} has no paired py:percent source"
    paired = jupytext.read(source)
    strip = lambda cells: [(c.cell_type, c.source.strip()) for c in cells]  # noqa: E731
    assert strip(paired.cells) == strip(nb.cells), f"{path.name} differs from {source.name}: run `make notebooks`"
    missing = REQUIRED - set(notebook_parameters(path))
    assert not missing, f"{path.name} lacks parameters {sorted(missing)}"
    first_code = next(c.source for c in nb.cells if c.cell_type == "code")
    assert 'find_spec("rsretrieval")' in first_code, f"{path.name}: the first code cell should say how to install"
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown").lower()
    assert "exercise" in markdown, f"{path.name} should end with exercises"
    assert "runtime" in markdown, f"{path.name} should state its expected runtime"


def _check_records(name: str, records: dict):
    for key, (lo, hi) in EXPECTED_RECORDS.get(name, {}).items():
        assert key in records, f"{name} did not record {key}"
        assert lo <= records[key] <= hi, f"{name}: {key}={records[key]} outside [{lo}, {hi}]"

    def finite(key, value):
        if isinstance(value, float):
            assert math.isfinite(value), f"{name}: {key} is {value}"
        elif isinstance(value, dict):
            for k, v in value.items():
                finite(f"{key}.{k}", v)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                finite(f"{key}[{i}]", v)

    finite(name, records)


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path: Path, tmp_path: Path):
    if GPU:
        import torch

        if not torch.cuda.is_available():
            pytest.skip("RSR_TEST_GPU=1 but torch sees no CUDA GPU")
        params = {"SMOKE": False, "DEVICE": "cuda"}
    else:
        params = {"SMOKE": True, "DEVICE": "cpu"}
    try:
        result = run_notebook(path, tmp_path, params, cell_timeout=CELL_TIMEOUT, html=False)
    except NotebookFailed as exc:
        pytest.fail(str(exc), pytrace=False)
    records = json.loads((tmp_path / path.stem / "records.json").read_text())
    assert records == result["records"]
    _check_records(path.stem, records)
    from rsretrieval.editions import has_solutions

    built = sum(has_solutions(c.source) for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
    assert len(records.get("checks", {})) >= min(built, 1), f"{path.stem}: a build-it cell without a check"
    assert set(records.get("checks", {}).values()) <= {"ok"}, f"{path.stem}: {records['checks']}"


@pytest.mark.skipif(GPU, reason="a CPU smoke run")
def test_notebook_takes_a_recipe_by_name(tmp_path: Path):
    from rsretrieval.editions import write_edition

    # the student edition: the same pipeline without the worked answers (which set their own learning rates)
    [path] = write_edition("student", tmp_path / "student", [p for p in NOTEBOOKS if p.stem == "02_full_vs_petl"])
    params = {"SMOKE": True, "DEVICE": "cpu", "RECIPE": "pe-rsitr", "METHODS": "full,linear_probe,mrs_adapter"}
    try:
        result = run_notebook(path, tmp_path, params, cell_timeout=CELL_TIMEOUT, html=False)
    except NotebookFailed as exc:
        pytest.fail(str(exc), pytrace=False)
    assert set(result["records"]["checks"].values()) == {"not done"}  # the student's cells, not yet written
    identities = [json.loads(p.read_text())["identity"] for p in (tmp_path / path.stem).rglob("results.json")]
    assert identities and all(i["recipe"] == "pe-rsitr" for i in identities)
    assert {i["config"]["optimizer"] for i in identities} == {"adam"}  # the recipe's, not the notebook's
    assert {i["config"]["lr"] for i in identities} == {2e-4}
