"""Your own captioned images in open_clip's CSV/TSV format: read, grouped per image, trained and evaluated."""

import csv
import json

import pytest

from rsretrieval.cli import main
from rsretrieval.data import load_dataset
from rsretrieval.errors import DatasetFormatError, DatasetNotFoundError


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("csv") / "synthrs"
    assert main(["data", "synth", "--root", str(root), "--n-images", "40", "--image-size", "64"]) == 0
    return root


def _write_csv(path, rows, header, delimiter=","):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def chips(synth, tmp_path_factory):
    """SynthRS rewritten as open_clip CSVs, one per split, image paths relative to the CSV folder."""
    folder = tmp_path_factory.mktemp("chips")
    (folder / "chips").symlink_to(synth / "images")
    for split in ("train", "val", "test"):
        data = load_dataset("synthrs", synth, split)
        rows = [(f"chips/{data.image_paths[i].name}", cap, data.scenes[i])
                for cap, i in zip(data.captions, data.text_to_image, strict=True)]
        _write_csv(folder / f"{split}.csv", rows, ["filepath", "title", "scene"])
    return folder


def test_csv_splits_read_as_the_dataset_they_were_written_from(synth, chips):
    for split in ("train", "val", "test"):
        ours = load_dataset("csv", chips, split, csv_scene_key="scene")
        theirs = load_dataset("synthrs", synth, split)
        assert [p.name for p in ours.image_paths] == [p.name for p in theirs.image_paths]
        assert ours.captions == theirs.captions and ours.text_to_image == theirs.text_to_image
        assert ours.scenes == theirs.scenes


def test_one_tsv_with_a_split_column_and_other_column_names(synth, tmp_path):
    data = load_dataset("synthrs", synth, "all")
    rows = [(str(data.image_paths[i]), cap, "test" if k % 2 else "train")
            for k, i in enumerate(sorted(set(data.text_to_image)))
            for cap in [c for c, j in zip(data.captions, data.text_to_image) if j == i]]
    path = _write_csv(tmp_path / "caps.tsv", rows, ["image", "caption", "split"], delimiter="\t")
    test = load_dataset("csv", path, "test", csv_img_key="image", csv_caption_key="caption")
    assert test.num_images == len(set(data.text_to_image)) // 2 and test.num_captions == test.num_images * 5
    with pytest.raises(DatasetFormatError, match=r"no image column 'filepath'; its columns are 'image', 'caption'"
                                                  r".*csv_img_key="):
        load_dataset("csv", path, "test")


def test_bad_rows_are_named_by_file_and_line(synth, tmp_path):
    img = str(synth / "images" / sorted(p.name for p in (synth / "images").iterdir())[0])
    rows = [(img, "a caption", "train"), (img, "", "train"), (img, "another", "test"), ("", "x", "train"),
            (img + ".gone", "lost", "train"), (img, "third", "holdout")]
    path = _write_csv(tmp_path / "bad.csv", rows, ["filepath", "title", "split"])
    with pytest.raises(DatasetFormatError, match=r"bad.csv: line 3 .* has an empty 'title'"):
        load_dataset("csv", path, "train")
    with pytest.warns(UserWarning, match="left out"):
        data = load_dataset("csv", path, "train", on_error="skip", val_fraction=0)
    assert data.captions == ["a caption"]
    messages = " | ".join(data.skipped)
    assert "line 4" in messages and "one image belongs to one split" in messages
    assert "is missing" in messages and "holdout" in messages
    with pytest.raises(DatasetNotFoundError, match="no caption CSV"):
        load_dataset("csv", tmp_path / "nowhere", "train")


@pytest.mark.slow
def test_a_csv_of_chips_trains_and_evaluates_through_the_command_line(synth, chips, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--dataset", "csv", "--root", str(chips), "--csv-scene-key", "scene", "--model", "tiny",
                 "--method", "linear_probe", "--epochs", "1", "--batch-size", "16", "--out", str(out),
                 "--no-progress", "--device", "cpu"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert 0 <= results["test"]["mr"] <= 100
    assert set(results["test_per_scene"]) == set(load_dataset("synthrs", synth, "test").scenes)
    capsys.readouterr()
    assert main(["eval", "--dataset", "csv", "--root", str(chips), "--model", "tiny", "--run", str(out),
                 "--json", str(tmp_path / "eval.json")]) == 0
    assert json.loads((tmp_path / "eval.json").read_text())["metrics"]["mr"] == pytest.approx(
        results["test"]["mr"], abs=1e-6)


# ------------------------------------------------------------------ parsing that loses nothing silently

def _images(synth, n):
    return sorted(p.name for p in (synth / "images").iterdir())[:n]


def _raw(tmp_path, synth, body, name="caps.csv"):
    """A CSV written by hand (not by csv.writer), next to a link to the images."""
    (tmp_path / "img").symlink_to(synth / "images")
    path = tmp_path / name
    path.write_bytes(body.encode("utf-8"))
    return path


def test_quoted_line_breaks_and_unicode_separators_stay_inside_their_field(synth, tmp_path):
    a, b = _images(synth, 2)
    body = (f'filepath,title\n\nimg/{a},"two planes\nbeside the terminal"\n'
            f"img/{a},a runway\u2028with a taxiway\nimg/{b},a harbour\x85with boats\n"
            f"img/{b},a port\x0cand cranes\n")
    data = load_dataset("csv", _raw(tmp_path, synth, body), "train", val_fraction=0)
    assert data.num_images == 2 and data.num_captions == 4  # no row dropped, none split in two
    assert "two planes beside the terminal" in data.captions and "a runway with a taxiway" in data.captions


def test_an_unclosed_quote_is_an_error_naming_the_line_it_opens_on(synth, tmp_path):
    a, b = _images(synth, 2)
    rows = "".join(f"img/{b},caption {k}\n" for k in range(2000))
    body = f'filepath,title\nimg/{a},fine\n\nimg/{a},"never closed\n{rows}'
    with pytest.raises(DatasetFormatError, match=r"caps.csv: the record starting on line 4 cannot be parsed "
                                                  r"\(unexpected end of data\).*not closed"):
        load_dataset("csv", _raw(tmp_path, synth, body), "train")


def test_lines_named_are_physical_lines_after_blank_lines_and_quoted_breaks(synth, tmp_path):
    a, = _images(synth, 1)
    body = f'filepath,title\n\n\nimg/{a},"one\ntwo"\n\nimg/{a},\n'
    with pytest.raises(DatasetFormatError, match=r"caps.csv: line 7 \(filepath='img/.*'\) has an empty 'title'"):
        load_dataset("csv", _raw(tmp_path, synth, body), "train")


def test_a_repeated_column_is_blamed_on_the_header(synth, tmp_path):
    a, = _images(synth, 1)
    body = f"filepath,title,title\nimg/{a},one,two\n"
    with pytest.raises(DatasetFormatError, match=r"line 1, the header, names the caption column 'title' 2 times "
                                                  r"\(columns 2, 3\)"):
        load_dataset("csv", _raw(tmp_path, synth, body), "train")


def test_one_file_under_several_spellings_is_one_image(synth, tmp_path):
    a, = _images(synth, 1)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "img").symlink_to(synth / "images")
    body = (f"filepath,title\nimg/{a},one\n./img/{a},two\nimg//{a},three\n../d/img/{a},four\n"
            f"img/../img/{a},five\n")
    path = tmp_path / "d" / "caps.csv"
    path.write_text(body)
    data = load_dataset("csv", path, "train", val_fraction=0)
    assert data.num_images == 1 and data.captions == ["one", "two", "three", "four", "five"]
    assert data.image_paths == [tmp_path / "d" / "img" / a]


def test_a_folder_is_not_an_image(synth, tmp_path):
    a, = _images(synth, 1)
    (tmp_path / "folder.png").mkdir()
    body = f"filepath,title\nimg/{a},one\nfolder.png,not an image\n"
    with pytest.warns(UserWarning, match="left out"):
        data = load_dataset("csv", _raw(tmp_path, synth, body), "train", val_fraction=0, on_error="skip")
    assert data.num_images == 1 and "folder.png is missing" in " ".join(data.skipped)


def test_data_check_takes_the_options_its_hints_name(synth, tmp_path, capsys):
    a, = _images(synth, 1)
    path = _raw(tmp_path, synth, f"filepath;title;part\nimg/{a};one;train\n")
    assert main(["data", "check", "csv", "--root", str(path)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert "--csv-separator" in report["problems"][0]
    assert main(["data", "check", "csv", "--root", str(path), "--csv-separator", ";"]) == 0
    capsys.readouterr()
    assert main(["data", "check", "csv", "--root", str(path), "--csv-separator", ";",
                 "--csv-split-key", "nope"]) == 1
    problem = json.loads(capsys.readouterr().out)["problems"][0]
    assert "--csv-split-key" in problem
    assert main(["data", "check", "csv", "--root", str(path), "--csv-separator", ";",
                 "--csv-split-key", "part"]) == 0
