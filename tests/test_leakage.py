"""Leakage between datasets: planted near-duplicates (re-encoded, resized, cropped) are all found, and
no pair is invented among different images, even of the same kind of scene."""

import csv
import json

import pytest
from PIL import Image

pytest.importorskip("skimage")

from rsretrieval.cli import main  # noqa: E402
from rsretrieval.data import load_dataset  # noqa: E402
from rsretrieval.data.leakage import find_leakage, match_score  # noqa: E402

PLANTS = {  # how each planted copy of a test image was altered
    "jpeg": lambda im: im,
    "resized": lambda im: im.resize((im.width * 7 // 8, im.height * 7 // 8), Image.BICUBIC),  # 256 -> 224
    "centre-crop": lambda im: im.crop((im.width // 20, im.height // 20, im.width * 19 // 20, im.height * 19 // 20)),
    "corner-crop": lambda im: im.crop((0, 0, im.width * 92 // 100, im.height * 92 // 100)),
    "crop-resized": lambda im: im.crop((im.width // 10, 0, im.width, im.height * 9 // 10)).resize(im.size),
}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """SynthRS (its train and test splits: different images, many of one kind of scene) and, in a
    second folder, a copy of five test images, each altered one way and saved as JPEG."""
    base = tmp_path_factory.mktemp("leak")
    assert main(["data", "synth", "--root", str(base / "synthrs"), "--n-images", "150", "--image-size", "224"]) == 0
    test = load_dataset("synthrs", base / "synthrs", "test")
    train = load_dataset("synthrs", base / "synthrs", "train")
    copies = base / "copies"
    copies.mkdir()
    truth = {}
    step = max(1, test.num_images // len(PLANTS))  # one plant per alteration, spread over the test split
    for (name, alter), source in zip(PLANTS.items(), test.image_paths[::step], strict=False):
        target = copies / f"{name}_{source.stem}.jpg"
        alter(Image.open(source).convert("RGB")).save(target, "JPEG", quality=70)
        truth[str(source)] = str(target)
    return base, test, train, truth


def test_every_planted_duplicate_is_found_and_none_invented(planted):
    _, test, train, truth = planted
    pairs = find_leakage(test.image_paths, list(train.image_paths) + list(map(str, truth.values())),
                         progress=False)
    assert {p["test_image"]: p["train_image"] for p in pairs} == truth
    assert min(p["score"] for p in pairs) >= 0.85
    assert find_leakage(test.image_paths, train.image_paths, progress=False) == []  # different images


def test_match_score_separates_the_same_image_from_a_similar_one(planted):
    _, test, _, _ = planted
    a, b = (Image.open(p).convert("L") for p in test.image_paths[:2])
    assert match_score(a, a) == pytest.approx(1.0, abs=1e-3)
    assert match_score(a, b) < 0.85


def _as_csv(folder, paths):
    folder.mkdir()
    with open(folder / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filepath", "title"])
        w.writerows((str(p), "an aerial image") for p in paths)
    return folder


@pytest.mark.slow
def test_the_command_line_lists_the_pairs_and_load_dataset_leaves_them_out(planted, tmp_path, capsys):
    base, test, train, truth = planted
    other = _as_csv(tmp_path / "other", list(train.image_paths[:20]) + list(truth.values()))
    out = tmp_path / "leaks.json"
    assert main(["data", "leakage", "--test", f"synthrs:{base / 'synthrs'}", "--train", f"csv:{other}", "--train-split", "all",
                 "--json", str(out), "--no-progress"]) == 0
    pairs = json.loads(out.read_text())
    assert {p["test_image"] for p in pairs} == set(truth) and all(set(p) == {"test_image", "train_image", "score"}
                                                                  for p in pairs)
    assert f"5 of {test.num_images} synthrs test images are near-duplicates" in capsys.readouterr().err
    kept = load_dataset("synthrs", base / "synthrs", "test", exclude=out)
    assert kept.num_images == test.num_images - 5 and kept.metadata["excluded"] == 5
    assert not set(map(str, kept.image_paths)) & set(truth)
    other_train = load_dataset("csv", other, "train", exclude=out, val_fraction=0)
    assert other_train.num_images == 20 and other_train.metadata["excluded"] == 5


def test_a_leakage_list_excludes_the_same_files_from_any_working_directory(planted, tmp_path, monkeypatch, capsys):
    base, test, train, truth = planted
    other = _as_csv(tmp_path / "other", list(truth.values()))
    monkeypatch.chdir(base)  # relative roots, as a user types them
    assert main(["data", "leakage", "--test", "synthrs:synthrs", "--train", f"csv:{other}", "--train-split", "all",
                 "--json", str(tmp_path / "leaks.json"), "--no-progress"]) == 0
    pairs = json.loads((tmp_path / "leaks.json").read_text())
    assert pairs and all(p["test_image"].startswith("/") and p["train_image"].startswith("/") for p in pairs)
    monkeypatch.chdir(tmp_path)
    kept = load_dataset("synthrs", base / "synthrs", "test", exclude=tmp_path / "leaks.json")
    assert kept.metadata["excluded"] == 5


def test_an_exclusion_that_names_nothing_is_an_error(planted, tmp_path):
    from rsretrieval.errors import DatasetFormatError, DatasetNotFoundError

    base = planted[0]
    with pytest.raises(DatasetNotFoundError, match=r"exclude='.*gone.json': no leakage list there"):
        load_dataset("synthrs", base / "synthrs", "test", exclude=tmp_path / "gone.json")
    with pytest.raises(DatasetNotFoundError, match="exclude= names 1 image"):
        load_dataset("synthrs", base / "synthrs", "test", exclude=[tmp_path / "nowhere.png"])
    relative = tmp_path / "relative.json"
    relative.write_text(json.dumps([{"test_image": "synthrs/images/a.png", "train_image": "/b.png", "score": 1}]))
    with pytest.raises(DatasetFormatError, match="'synthrs/images/a.png' is a relative path"):
        load_dataset("synthrs", base / "synthrs", "test", exclude=relative)
