"""Readers of the published caption layouts, on tiny fake copies (see fakedata.py)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from fakedata import (
    captions_for,
    make_karpathy,
    make_precomp,
    make_rsicd,
    make_rsitmd,
    make_sydney,
    make_synthrs,
    make_ucm,
    write_image,
)

from rsretrieval.data import (
    CaptionDataset,
    check_dataset,
    get_dataset_info,
    list_datasets,
    load_dataset,
)
from rsretrieval.data.readers import carve_validation, prefix_scene, ucm_scene
from rsretrieval.errors import DatasetFormatError, DatasetNotFoundError


def assert_matches(
    data: CaptionDataset,
    expected: list[tuple[str, str, list[str]]],
    images_dir: Path,
) -> None:
    """Image names, scenes, captions and the caption -> image index, exactly."""
    assert [str(p.relative_to(images_dir)) for p in data.image_paths] == [fn for fn, _, _ in expected]
    assert data.scenes == [scene for _, scene, _ in expected]
    assert data.captions == [c for _, _, caps in expected for c in caps]
    assert data.text_to_image == [i for i, (_, _, caps) in enumerate(expected) for _ in caps]
    assert data.skipped == []


def load_quiet(*args, **kwargs) -> CaptionDataset:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # clean fake data must load without any warning
        return load_dataset(*args, **kwargs)


# ---------------------------------------------------------------- every layout, every split


@pytest.mark.parametrize(
    ("name", "maker", "images", "kwargs"),
    [
        ("rsicd", make_rsicd, "RSICD_images", {}),
        ("ucm", make_ucm, "imgs", {}),
        ("sydney", make_sydney, "imgs", {}),
        ("karpathy", make_karpathy, "pics", {"images_dir": "pics"}),
    ],
)
@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_file_splits(tmp_path, name, maker, images, kwargs, split):
    expected = maker(tmp_path)
    data = load_quiet(name, tmp_path, split, **kwargs)
    assert data.name == name and data.split == split
    assert_matches(data, expected[split], tmp_path / images)
    assert data.metadata["val_source"] == "file"


def test_all_split_is_file_order(tmp_path):
    expected = make_ucm(tmp_path)
    data = load_quiet("ucm", tmp_path, "all")
    assert sorted(p.name for p in data.image_paths) == sorted(fn for s in expected.values() for fn, _, _ in s)
    assert data.num_captions == 5 * data.num_images


def test_rsitmd_scenes_captions_and_carve(tmp_path):
    expected = make_rsitmd(tmp_path)
    test = load_quiet("rsitmd", tmp_path, "test")
    assert_matches(test, expected["test"], tmp_path / "images")
    assert test.scenes == ["airport", "denseresidential", "beach"]  # DenseResidential_91 normalised

    train = load_quiet("rsitmd", tmp_path, "train", val_fraction=0.25, seed=3)
    val = load_quiet("rsitmd", tmp_path, "val", val_fraction=0.25, seed=3)
    file_train = {fn: (scene, caps) for fn, scene, caps in expected["train"]}
    names_t = [p.name for p in train.image_paths]
    names_v = [p.name for p in val.image_paths]
    assert set(names_t).isdisjoint(names_v)
    assert set(names_t) | set(names_v) == set(file_train)
    assert len(names_v) == 5  # round(20 * 0.25)
    assert val.metadata["val_source"] == "carved"
    # stratified: every scene with >= 4 train images gives at least one val image
    assert {"airport", "beach", "denseresidential"} <= set(val.scenes)
    # captions follow their image, including the 4-caption one and the stripped one
    for data in (train, val):
        for j, i in enumerate(data.text_to_image):
            assert data.captions[j] in file_train[data.image_paths[i].name][1]
        for i, path in enumerate(data.image_paths):
            assert len(data.image_to_texts[i]) == len(file_train[path.name][1])
            assert data.scenes[i] == file_train[path.name][0]
    assert "padded caption with spaces" in train.captions + val.captions


def test_carve_is_deterministic_and_seeded(tmp_path):
    make_rsitmd(tmp_path)
    a = load_quiet("rsitmd", tmp_path, "val", seed=0, val_fraction=0.3)
    b = load_quiet("rsitmd", tmp_path, "val", seed=0, val_fraction=0.3)
    assert a.image_paths == b.image_paths
    picks = {tuple(load_quiet("rsitmd", tmp_path, "val", seed=s, val_fraction=0.3).image_paths)
             for s in range(6)}  # fmt: skip
    assert len(picks) > 1


def test_carve_ignores_record_order_and_stratifies():
    names = [f"s{k % 3}_{k}.tif" for k in range(30)]
    scenes = [n.split("_")[0] for n in names]
    picked = carve_validation(names, scenes, 0.2, seed=7)
    assert len(picked) == 6
    assert sorted(scenes[i] for i in picked) == ["s0", "s0", "s1", "s1", "s2", "s2"]
    order = list(reversed(range(30)))
    picked_rev = carve_validation([names[i] for i in order], [scenes[i] for i in order], 0.2, seed=7)
    assert {names[order[i]] for i in picked_rev} == {names[i] for i in picked}
    with pytest.raises(ValueError, match="val_fraction"):
        carve_validation(names, scenes, 1.0)


def test_synthrs_layout_and_objects(tmp_path):
    expected = make_synthrs(tmp_path)
    data = load_quiet("synthrs", tmp_path, "test")
    assert_matches(data, expected["test"], tmp_path / "images")
    assert data.metadata["objects_file"] == str(tmp_path / "objects.json")


def test_synthrs_missing_says_how_to_generate(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"python -m rsretrieval data synth --root"):
        load_dataset("synthrs", tmp_path / "nothing")


def test_rsicd_without_class_files_warns_once(tmp_path):
    expected = make_rsicd(tmp_path, class_files=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_dataset("rsicd", tmp_path, "all")
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "3 image(s)" in message and "txtclasses_rsicd" in message and "00001.jpg" in message
    by_name = {fn: scene for s in expected.values() for fn, scene, _ in s}
    assert [by_name[p.name] for p in data.image_paths] == data.scenes
    assert data.scenes.count("unknown") == 3


def test_rsicd_keeps_duplicate_captions_and_restval(tmp_path):
    make_rsicd(tmp_path)
    train = load_quiet("rsicd", tmp_path, "train")
    assert [p.name for p in train.image_paths] == ["airport_1.jpg", "00001.jpg", "denseResidential_4.jpg"]
    assert train.captions[3] == train.captions[4]  # duplicates stay: evaluation needs all five
    assert train.num_captions == 15


def test_precomp_both_filename_conventions(tmp_path):
    expected = make_precomp(tmp_path)
    test = load_quiet("precomp", tmp_path, "test")  # one file-name line per caption
    assert_matches(test, expected["test"], tmp_path / "images")
    train = load_quiet("precomp", tmp_path, "train", val_fraction=0.2)  # one line per image
    val = load_quiet("precomp", tmp_path, "val", val_fraction=0.2)
    got = {p.name: [train.captions[j] for j in ts] for p, ts in zip(train.image_paths, train.image_to_texts)}
    got.update({p.name: [val.captions[j] for j in ts] for p, ts in zip(val.image_paths, val.image_to_texts)})
    assert got == {fn: caps for fn, _, caps in expected["train"]}
    assert val.num_images == 1 and train.num_images == 4


def test_precomp_needs_images_dir(tmp_path):
    make_precomp(tmp_path, images=False)
    with pytest.raises(DatasetNotFoundError, match="images_dir"):
        load_dataset("precomp", tmp_path)
    write_image(tmp_path / "elsewhere" / "airport_10.tif")
    write_image(tmp_path / "elsewhere" / "beach_11.tif")
    data = load_quiet("precomp", tmp_path, "test", images_dir=tmp_path / "elsewhere")
    assert data.image_paths[0] == tmp_path / "elsewhere" / "airport_10.tif"


def test_karpathy_accepts_json_path(tmp_path):
    expected = make_karpathy(tmp_path)
    data = load_quiet("karpathy", tmp_path / "captions.json", "test", images_dir=tmp_path / "pics")
    assert_matches(data, expected["test"], tmp_path / "pics")


def test_scene_rules():
    assert prefix_scene("denseresidential_12.tif") == "denseresidential"
    assert prefix_scene("DenseResidential_3.jpg") == "denseresidential"
    assert prefix_scene("dense_residential_3.jpg") == "denseresidential"
    assert prefix_scene("00001.jpg") is None
    assert [ucm_scene(f"{n}.tif") for n in (1, 100, 101, 1100, 2100)] == [
        "agricultural", "agricultural", "airplane", "harbor", "tenniscourt"]  # fmt: skip
    assert ucm_scene("2101.tif") is None and ucm_scene("x.tif") is None


def test_registry():
    assert set(list_datasets()) >= {"rsitmd", "rsicd", "ucm", "sydney", "synthrs", "karpathy", "precomp"}
    info = get_dataset_info("RSITMD")
    assert info.url is None and info.sha256 == {}
    assert "xiaoyuan1996/AMFMN" in info.source
    assert "201528014227051/RSICD_optimal" in get_dataset_info("rsicd").source
    assert "dataset_RSITMD.json" in info.layout() and "images/" in info.layout()
    with pytest.raises(DatasetNotFoundError, match="valid names: .*rsitmd"):
        get_dataset_info("nope")


def test_bad_arguments(tmp_path):
    make_ucm(tmp_path)
    with pytest.raises(ValueError, match="split must be one of"):
        load_dataset("ucm", tmp_path, "dev")
    with pytest.raises(ValueError, match="on_error"):
        load_dataset("ucm", tmp_path, on_error="ignore")


# ---------------------------------------------------------------- missing files


def test_missing_annotation_file(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("rsitmd", tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "dataset_RSITMD.json") in msg
    assert "images/" in msg and "xiaoyuan1996/AMFMN" in msg and "manual" in msg
    assert isinstance(err.value, FileNotFoundError)


def test_missing_annotation_points_one_level_down(tmp_path):
    make_ucm(tmp_path / "UCM_captions")
    with pytest.raises(DatasetNotFoundError, match="did you mean root=.*UCM_captions"):
        load_dataset("ucm", tmp_path)


def test_missing_image(tmp_path):
    make_rsitmd(tmp_path)
    (tmp_path / "images" / "airport_90.tif").unlink()
    with pytest.raises(DatasetFormatError, match=r"airport_90\.tif.*is missing"):
        load_dataset("rsitmd", tmp_path, "test")
    assert load_dataset("rsitmd", tmp_path, "test", verify_images=False).num_images == 3
    assert load_quiet("rsitmd", tmp_path, "train").num_images > 0  # only the split's images are checked
    with pytest.warns(UserWarning, match=r"left out 1 image record\(s\) of"):
        data = load_dataset("rsitmd", tmp_path, "test", on_error="skip")
    assert data.num_images == 2 and len(data.skipped) == 1 and "airport_90.tif" in data.skipped[0]


# ---------------------------------------------------------------- malformed annotations


def _edit_rsitmd(root: Path, edit) -> Path:
    make_rsitmd(root)
    path = root / "dataset_RSITMD.json"
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc, indent=1))
    return path


def test_malformed_json_names_line_and_column(tmp_path):
    make_rsitmd(tmp_path)
    path = tmp_path / "dataset_RSITMD.json"
    lines = path.read_text().splitlines()
    lines[5] = lines[5].rstrip(",")  # drop a comma
    path.write_text("\n".join(lines))
    pattern = r"dataset_RSITMD\.json: not valid JSON at line \d+ column \d+"
    with pytest.raises(DatasetFormatError, match=pattern):
        load_dataset("rsitmd", tmp_path)


def test_wrong_top_level(tmp_path):
    make_rsitmd(tmp_path)
    (tmp_path / "dataset_RSITMD.json").write_text("[1, 2]")
    with pytest.raises(DatasetFormatError, match="'images' list"):
        load_dataset("rsitmd", tmp_path)


def _drop_text(doc: dict) -> None:
    for key in ("raw", "tokens"):
        doc["images"][2]["sentences"][1].pop(key)


# (edit of the 23-image RSITMD fake, expected message, images left with on_error="skip")
BAD_RECORDS = {
    "no-filename": (lambda d: d["images"][2].pop("filename"), r"image record #2 .* no 'filename'", 22),
    "no-sentences": (
        lambda d: d["images"][2].pop("sentences"),
        r"image record #2 \(filename='airport_3\.tif'.* no 'sentences'",
        22,
    ),
    "bad-split": (lambda d: d["images"][2].update(split="training"), r"airport_3\.tif.*split='training'", 22),
    "empty-caption": (
        lambda d: d["images"][2]["sentences"][1].update(raw="   "),
        r"airport_3\.tif.*sentence #1 .*empty caption",
        23,
    ),
    "no-text": (_drop_text, r"airport_3\.tif.*sentence #1 .*neither a 'raw'", 23),
    "duplicate": (
        lambda d: d["images"][5].update(filename="airport_3.tif"),
        r"record #5 .*repeats file name 'airport_3\.tif'",
        22,
    ),
}


@pytest.mark.parametrize(("edit", "pattern", "n_images"), BAD_RECORDS.values(), ids=BAD_RECORDS.keys())
def test_bad_record_raises_then_skips(tmp_path, edit, pattern, n_images):
    path = _edit_rsitmd(tmp_path, edit)
    with pytest.raises(DatasetFormatError, match=pattern) as err:
        load_dataset("rsitmd", tmp_path, "all")
    assert str(path) in str(err.value) and "on_error='skip'" in str(err.value)
    with pytest.warns(UserWarning, match="left out") as rec:
        data = load_dataset("rsitmd", tmp_path, "all", on_error="skip")
    assert len([w for w in rec if "left out" in str(w.message)]) == 1
    assert len(data.skipped) == 1
    assert data.num_images == n_images


def test_non_utf8_caption(tmp_path):
    make_rsitmd(tmp_path)
    path = tmp_path / "dataset_RSITMD.json"
    text = path.read_text()
    target = captions_for("beach_12.tif")[3]
    data = text.encode("utf-8").replace(target.encode(), b"caf\xe9 " + target.encode(), 1)
    path.write_bytes(data)
    line = data[: data.index(b"caf\xe9")].count(b"\n") + 1
    with pytest.raises(DatasetFormatError) as err:
        load_dataset("rsitmd", tmp_path, "all")
    msg = str(err.value)
    assert "beach_12.tif" in msg and "sentence #3" in msg and f"(line {line})" in msg and "UTF-8" in msg
    with pytest.warns(UserWarning, match=r"left out 1 caption\(s\) of"):
        ds = load_dataset("rsitmd", tmp_path, "all", on_error="skip")
    assert ds.num_captions == 23 * 5 - 1 - 1  # one image has 4 captions, one caption skipped


def test_skip_counts_several_problems(tmp_path):
    def edit(doc):
        doc["images"][0]["sentences"][0]["raw"] = ""
        doc["images"][1]["sentences"][1]["raw"] = ""
        doc["images"][3]["filename"] = doc["images"][4]["filename"]

    _edit_rsitmd(tmp_path, edit)
    (tmp_path / "images" / "airport_7.tif").unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_dataset("rsitmd", tmp_path, "all", on_error="skip")
    # two images left out (a repeated name, a missing file), two captions dropped from kept images
    assert len(caught) == 1 and "left out 2 image record(s) and 2 caption(s) of kept images" in str(
        caught[0].message
    )
    assert len(data.skipped) == 4
    assert data.num_images == 21 and data.num_captions == 21 * 5 - 1 - 2


def test_skip_counts_only_the_loaded_split(tmp_path):
    # airport_1 is a train image, beach_92 and airport_90 are test images of the fake
    def edit(doc):
        by_name = {img["filename"]: img for img in doc["images"]}
        by_name["airport_1.tif"]["sentences"][0]["raw"] = ""
        by_name["beach_92.tif"]["sentences"][0]["raw"] = ""
        by_name["beach_92.tif"]["sentences"][1]["raw"] = ""
        doc["images"].append({"split": "test", "sentences": []})  # no file name: its split still reads

    _edit_rsitmd(tmp_path, edit)
    (tmp_path / "images" / "airport_90.tif").unlink()
    with pytest.warns(UserWarning, match=r"test: left out 2 image record\(s\) and 2 caption\(s\) of kept"):
        test = load_dataset("rsitmd", tmp_path, "test", on_error="skip")
    assert len(test.skipped) == 4 and not any("airport_1.tif" in note for note in test.skipped)
    with pytest.warns(UserWarning) as caught:
        train = load_dataset("rsitmd", tmp_path, "train", on_error="skip")
        val = load_dataset("rsitmd", tmp_path, "val", on_error="skip")
    # the dropped caption goes with its image's split after the validation carve
    split_of_airport_1 = "train" if any(p.name == "airport_1.tif" for p in train.image_paths) else "val"
    owner, other = (train, val) if split_of_airport_1 == "train" else (val, train)
    assert [("airport_1.tif" in n) for n in owner.skipped] == [True] and other.skipped == []
    assert sum("left out 1 caption(s) of" in str(w.message) for w in caught) == 1
    with pytest.warns(UserWarning, match=r"all: left out 2 image record\(s\) and 3 caption\(s\)"):
        load_dataset("rsitmd", tmp_path, "all", on_error="skip")


def test_skip_counts_a_record_of_unreadable_split_in_every_split(tmp_path):
    _edit_rsitmd(tmp_path, lambda doc: doc["images"].append({"filename": "x_1.tif", "split": "training"}))
    for split in ("train", "test"):
        with pytest.warns(UserWarning, match=r"left out 1 image record\(s\) \(1 of unknown split\)"):
            data = load_dataset("rsitmd", tmp_path, split, on_error="skip")
        assert "split='training'" in data.skipped[0]


def test_image_with_all_captions_bad_is_left_out(tmp_path):
    def edit(doc):
        for s in doc["images"][0]["sentences"]:
            s["raw"] = ""

    _edit_rsitmd(tmp_path, edit)
    with pytest.warns(UserWarning):
        data = load_dataset("rsitmd", tmp_path, "all", on_error="skip")
    assert "airport_1.tif" not in [p.name for p in data.image_paths]
    assert len(data.skipped) == 6  # five empty captions + the image itself


# ---------------------------------------------------------------- malformed precomp files


def test_precomp_line_count_mismatch(tmp_path):
    make_precomp(tmp_path)
    with open(tmp_path / "train_caps.txt", "a", encoding="utf-8") as f:
        f.write("one more caption\n")
    pattern = r"train_caps\.txt has 26 lines but .*train_filename\.txt has 5"
    with pytest.raises(DatasetFormatError, match=pattern):
        load_dataset("precomp", tmp_path)


def test_precomp_bad_lines(tmp_path):
    make_precomp(tmp_path)
    caps = (tmp_path / "test_caps.txt").read_bytes().split(b"\n")
    caps[3] = b"na\xefve caption"
    caps[6] = b"   "
    (tmp_path / "test_caps.txt").write_bytes(b"\n".join(caps))
    with pytest.raises(DatasetFormatError, match=r"test_caps\.txt: line 4 .*not valid UTF-8"):
        load_dataset("precomp", tmp_path, "test")
    with pytest.warns(UserWarning, match=r"left out 2 caption\(s\) of"):
        data = load_dataset("precomp", tmp_path, "test", on_error="skip")
    assert data.num_captions == 8 and data.image_to_texts == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert any("line 7" in note and "empty" in note for note in data.skipped)


def test_precomp_duplicate_image_line(tmp_path):
    make_precomp(tmp_path)
    names = (tmp_path / "train_filename.txt").read_text().splitlines()
    names[2] = names[0]
    (tmp_path / "train_filename.txt").write_text("\n".join(names) + "\n")
    with pytest.raises(DatasetFormatError, match=r"train_filename\.txt: line 3 .*repeats"):
        load_dataset("precomp", tmp_path)


# ---------------------------------------------------------------- check_dataset


def test_check_dataset_reports_everything(tmp_path):
    def edit(doc):
        doc["images"][0]["sentences"][0]["raw"] = ""

    _edit_rsitmd(tmp_path, edit)
    (tmp_path / "images" / "beach_12.tif").unlink()
    (tmp_path / "images" / "plane_19.tif").write_bytes(b"not an image at all")
    report = check_dataset("rsitmd", tmp_path)
    assert report["ok"] is False
    problems = "\n".join(report["problems"])
    assert "empty caption" in problems
    assert "beach_12.tif is missing" in problems
    assert "plane_19.tif cannot be decoded" in problems
    assert "other than 5 captions" in problems
    assert report["splits"]["train"]["images"] == 20 and report["splits"]["test"]["images"] == 3
    assert report["splits"]["test"]["scenes"] == {"airport": 1, "beach": 1, "denseresidential": 1}
    assert "cannot be decoded" not in "\n".join(check_dataset("rsitmd", tmp_path, decode=False)["problems"])


def test_check_dataset_clean_and_duplicates(tmp_path):
    make_rsicd(tmp_path)
    report = check_dataset("rsicd", tmp_path)
    assert report["ok"] is True
    assert report["splits"]["train"]["duplicate_captions"] == 1
    assert any("repeat another caption" in p for p in report["problems"])


def test_check_dataset_unreadable_file(tmp_path):
    make_ucm(tmp_path)
    (tmp_path / "dataset.json").write_text("{oops")
    report = check_dataset("ucm", tmp_path)
    assert report["ok"] is False and "not valid JSON" in report["problems"][0]
