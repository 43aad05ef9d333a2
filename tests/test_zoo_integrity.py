"""The zoo trusts nothing it did not build: damaged, edited or swapped files and records are refused by name."""

import json
import shutil

import pytest

from rsretrieval.cli import main
from rsretrieval.errors import ZooIntegrityError
from rsretrieval.paths import checkout_root
from rsretrieval.zoo import load_zoo

SOURCE = checkout_root() / "data" / "zoo" / "mini-synthrs-small-targets"  # 6 entries, 1.3 MB


@pytest.fixture
def zoo(tmp_path):
    folder = tmp_path / "zoo"
    shutil.copytree(SOURCE, folder, ignore=shutil.ignore_patterns("runs", ".*"))
    return folder


def _edit(folder, change):
    index = folder / "zoo.json"
    doc = json.loads(index.read_text())
    change(doc["entries"])
    index.write_text(json.dumps(doc))


def test_the_committed_zoo_loads_verified(zoo):
    assert len(load_zoo(zoo)["entries"]) == 6


def test_an_edited_hash_is_refused_naming_the_entry(zoo):
    _edit(zoo, lambda rows: rows[0].update(file_sha256="0" * 64))
    with pytest.raises(ZooIntegrityError, match=r"entry focus_adapter-s0: .* has sha256 .* replaced or edited"):
        load_zoo(zoo)


def test_a_file_swapped_for_another_seeds_is_refused(zoo):
    shutil.copyfile(zoo / "files" / "focus_adapter-s1.pt", zoo / "files" / "focus_adapter-s0.pt")
    with pytest.raises(ZooIntegrityError, match="entry focus_adapter-s0"):
        load_zoo(zoo)


def test_a_file_and_its_hash_swapped_for_another_entrys_are_refused(zoo):
    shutil.copyfile(zoo / "files" / "side_branch-s0.pt", zoo / "files" / "focus_adapter-s0.pt")

    def swap(rows):
        rows[0]["file_sha256"] = next(r for r in rows if r["key"] == "side_branch-s0")["file_sha256"]

    _edit(zoo, swap)
    with pytest.raises(ZooIntegrityError, match="focus_adapter-s0 and side_branch-s0 hold the same weights"):
        load_zoo(zoo)


def test_a_val_mr_that_contradicts_its_history_is_refused(zoo):
    # what notebook 06's "best model by validation" would otherwise select
    _edit(zoo, lambda rows: rows[1].update(val_mr=rows[1]["val_mr"] + 20))
    with pytest.raises(ZooIntegrityError, match="entry focus_adapter-s1: val_mr .* not the best of its recorded"):
        load_zoo(zoo)


@pytest.mark.parametrize("change, message", [
    (lambda rows: rows[2].pop("file"), "entry focus_adapter-s2: file missing or of the wrong type"),
    (lambda rows: rows[2].update(seed="0"), "entry focus_adapter-s2: seed missing or of the wrong type"),
    (lambda rows: rows[2].update(file="../../outside.pt"), "lies outside the zoo folder"),
    (lambda rows: rows.append(["not", "a", "row"]), "entry 6 is not a record"),
])
def test_a_damaged_record_is_refused_by_name(zoo, change, message):
    _edit(zoo, change)
    with pytest.raises(ZooIntegrityError, match=message):
        load_zoo(zoo)


def test_a_missing_file_is_refused_with_its_rebuild_command(zoo):
    (zoo / "files" / "side_branch-s2.pt").unlink()
    with pytest.raises(ZooIntegrityError, match=r"side_branch-s2.pt is missing: rebuild it with `python -m rsretrieval "
                                                 r"zoo build --only side_branch --seed 2"):
        load_zoo(zoo)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"entries": 3}'])
def test_zoo_show_on_a_damaged_zoo_json_is_one_line_naming_the_file(zoo, text, capsys):
    (zoo / "zoo.json").write_text(text)
    assert main(["zoo", "show", "--out", str(zoo)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and str(zoo / "zoo.json") in err
    assert (zoo / "files" / "side_branch-s0.pt").is_file()  # nothing deleted


def test_a_build_over_a_damaged_zoo_json_stops_before_training(zoo, capsys):
    (zoo / "zoo.json").write_text("{not json")
    assert main(["zoo", "build", "--out", str(zoo), "--regime", "small-targets", "--only", "side_branch"]) == 1
    assert "zoo.json is not valid JSON" in capsys.readouterr().err
    assert not (zoo / "runs").exists()
