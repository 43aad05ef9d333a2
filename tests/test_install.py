"""The package installs anywhere: a wheel in a fresh environment outside the checkout finds its weights
and generates SynthRS into its data home on first use."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _tracked_copy(dest: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    for rel in files:
        if (REPO / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)
    return dest


def _installed_wheel(tmp_path: Path) -> tuple[Path, Path]:
    """The package built as a wheel and installed into a fresh environment: its python and site-packages."""
    src = _tracked_copy(tmp_path / "src")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("rsretrieval-*.whl"))
    env_dir = tmp_path / "fresh"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # the wheel goes into the fresh environment; its dependencies (torch, open_clip, ...) are borrowed from
    # the test environment by path only, so the checkout's own editable install is not visible there
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    zipfile.ZipFile(wheel).extractall(site)  # what an installer does with a pure-Python wheel
    return python, site


@pytest.mark.slow
def test_wheel_in_a_fresh_environment_evaluates_miniclip_on_synthrs(tmp_path):
    python, site = _installed_wheel(tmp_path)

    home, cwd = tmp_path / "home", tmp_path / "elsewhere"
    cwd.mkdir()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "RSR_HOME": str(home), "CUDA_VISIBLE_DEVICES": ""}
    where = subprocess.run([python, "-c", "import rsretrieval; print(rsretrieval.__file__)"], cwd=cwd, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(site), where  # the installed copy, not the checkout
    done = subprocess.run([python, "-m", "rsretrieval", "eval", "--dataset", "synthrs", "--model", "mini",
                           "--pretrained", "synthrs", "--device", "cpu", "--json", str(tmp_path / "eval.json")], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (home / "synthrs" / "synthrs.json").is_file()  # SynthRS generated into the data home
    assert list(cwd.iterdir()) == []  # nothing written where the command ran
    # the shipped weights on the generated test split score what their pretraining report says
    report = json.loads((REPO / "rsretrieval" / "models" / "weights" / "mini-synthrs.json").read_text())
    measured = json.loads((tmp_path / "eval.json").read_text())["metrics"]["mr"]
    assert measured == pytest.approx(report["zero_shot"]["mr"], abs=1e-6)


@pytest.mark.slow
@pytest.mark.notebook
def test_a_notebook_copied_outside_the_checkout_runs_with_the_installed_wheel(tmp_path):
    """What a lab machine or Colab does: the wheel installed, one notebook in an empty folder, executed."""
    python, site = _installed_wheel(tmp_path)
    kernel = tmp_path / "jupyter" / "kernels" / "fresh"
    kernel.mkdir(parents=True)
    (kernel / "kernel.json").write_text(json.dumps({"argv": [str(python), "-m", "ipykernel_launcher", "-f",
                                                             "{connection_file}"], "language": "python"}))
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    shutil.copy2(REPO / "notebooks" / "00_datasets.ipynb", folder)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "RSR_HOME": str(tmp_path / "home"),
           "JUPYTER_PATH": str(tmp_path / "jupyter"), "CUDA_VISIBLE_DEVICES": "", "MPLBACKEND": "Agg"}
    where = subprocess.run([python, "-c", "import rsretrieval; print(rsretrieval.__file__)"], cwd=folder, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(site), where  # the kernel imports the installed copy, not the checkout
    done = subprocess.run([sys.executable, "-m", "papermill", "00_datasets.ipynb", "executed.ipynb", "-k", "fresh",
                           "-p", "SMOKE", "True", "-p", "DEVICE", "cpu", "-p", "OUTPUT_DIR", str(tmp_path / "out"),
                           "--no-progress-bar"], cwd=folder, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    records = json.loads((tmp_path / "out" / "records.json").read_text())
    assert records["n_test_images"] > 0 and records["checks"] == {"read_record": "ok"}
    assert (tmp_path / "home" / "synthrs-smoke" / "synthrs.json").is_file()  # data found through the library
    assert sorted(p.name for p in folder.iterdir()) == ["00_datasets.ipynb", "executed.ipynb"]


def test_a_notebook_in_a_kernel_without_the_package_says_how_to_install_it(tmp_path):
    import nbformat

    venv.create(tmp_path / "bare", with_pip=False)
    for path in sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        first = next(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
        done = subprocess.run([tmp_path / "bare" / "bin" / "python", "-c", first], cwd=tmp_path,
                              capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
        assert done.returncode != 0 and "rsretrieval is not installed in this kernel" in done.stderr, path.name
        assert "pip install" in done.stderr
