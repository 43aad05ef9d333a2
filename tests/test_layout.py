"""The library's shape stays as docs/design.md describes it: short loop, modest modules, one contract."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import rsretrieval
from rsretrieval import paths
from rsretrieval.data import get_dataset_info, load_dataset
from rsretrieval.training import TrainConfig, fit

PACKAGE = Path(rsretrieval.__file__).parent


def test_fit_reads_as_a_loop_and_modules_stay_small():
    assert len(inspect.getsource(fit).splitlines()) <= 60
    sizes = {p.relative_to(PACKAGE): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert max(sizes.values()) <= 800, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]


def test_the_training_path_reads_no_hidden_flags():
    for module in ("training/loop.py", "training/tasks.py", "training/checkpoint.py"):
        tree = ast.parse((PACKAGE / module).read_text())
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
        assert not any(isinstance(c.func, ast.Attribute) and c.func.attr == "signature" for c in calls), module
        getattrs = [c for c in calls if isinstance(c.func, ast.Name) and c.func.id == "getattr"]
        assert not any(isinstance(c.args[0], ast.Name) and c.args[0].id == "task" for c in getattrs), module


def test_cmer_is_one_package():
    import rsretrieval.cmer as cmer

    for name in ("FocusAdapterConfig", "SceneAugmentedTask", "RecyclingLoss", "CachedSideBranchTask", "CMERConfig",
                 "build_cmer"):
        assert getattr(cmer, name).__module__.startswith("rsretrieval.cmer."), name


def test_fit_takes_tasks_only(colour_data, tiny_bundle):
    with pytest.raises(TypeError, match="rsretrieval.training.Task"):
        fit(tiny_bundle.model, tiny_bundle.tokenizer, colour_data, tiny_bundle.transform,
            TrainConfig(epochs=1, progress=False), task=lambda batch: {})


def test_dataset_facts_live_in_the_registry():
    assert get_dataset_info("rsitmd").scene_rule == "prefix" and get_dataset_info("ucm").scene_rule == "ucm"
    assert get_dataset_info("sydney").scene_rule == "field"
    assert get_dataset_info("synthrs").scene_vocabulary == "synthrs" and get_dataset_info("synthrs").generated
    assert not get_dataset_info("rsicd").generated and get_dataset_info("rsicd").scene_vocabulary == "rs"


def test_data_home_and_shipped_weights(monkeypatch, tmp_path):
    assert paths.checkout_root() == PACKAGE.parent  # the tests run from the checkout
    assert paths.data_home() == PACKAGE.parent / "data"
    monkeypatch.setenv("RSR_HOME", str(tmp_path / "home"))
    assert paths.data_dir("synthrs") == tmp_path / "home" / "synthrs"
    assert (paths.WEIGHTS_DIR / "mini-synthrs.pt").is_file()


def test_a_named_root_must_hold_the_data_but_the_default_is_generated(monkeypatch, tmp_path):
    from rsretrieval.errors import DatasetNotFoundError

    with pytest.raises(DatasetNotFoundError, match="needs a root"):
        load_dataset("rsitmd")
    made = []

    def fake_prepare(name, root, **kwargs):
        made.append((name, Path(root)))
        raise DatasetNotFoundError("stop here")

    monkeypatch.setenv("RSR_HOME", str(tmp_path))
    monkeypatch.setattr("rsretrieval.data.prepare_dataset", fake_prepare)
    with pytest.raises(DatasetNotFoundError, match="stop here"):
        load_dataset("synthrs")
    assert made == [("synthrs", tmp_path / "synthrs")]


def _imported_modules(source: str, package: str) -> set[str]:
    """Every module ``source`` (a module of ``package``) imports, at its top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize("lower, upper", [("training", "rsretrieval.cmer"), ("methods", "rsretrieval.cmer"),
                                          ("editions.py", "rsretrieval.course")])
def test_imports_run_one_way(lower, upper):
    # the lower layers' registries learn of CMER through rsretrieval.plugins' entry points, not by import
    files = [PACKAGE / lower] if lower.endswith(".py") else sorted((PACKAGE / lower).rglob("*.py"))
    offenders = {str(f.relative_to(PACKAGE)): sorted(m for m in _imported_modules(
                     f.read_text(), ".".join(("rsretrieval", *f.relative_to(PACKAGE).parent.parts)))
                                                     if m == upper or m.startswith(upper + "."))
                 for f in files}
    assert not {f: m for f, m in offenders.items() if m}


def test_cmer_registers_itself_through_its_entry_point():
    from importlib.metadata import entry_points

    from rsretrieval.methods import list_methods
    from rsretrieval.training import list_losses

    assert {p.value for p in entry_points(group="rsretrieval.plugins")} >= {"rsretrieval.cmer"}
    assert {"focus_adapter", "cmer"} <= set(list_methods()) and {"recycling", "cmer"} <= set(list_losses())


def test_import_checker_sees_imports_inside_functions():
    source = "def f():\n    from ..cmer import focus_adapter\n    import rsretrieval.cmer.cache\n"
    assert {"rsretrieval.cmer", "rsretrieval.cmer.focus_adapter", "rsretrieval.cmer.cache"} <= \
        _imported_modules(source, "rsretrieval.training")
