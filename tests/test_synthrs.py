"""SynthRS: layout, determinism, masks, caption truth and the cache behaviour of generate_synthrs."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rsretrieval.data.synthrs import captions, generate, scenes
from rsretrieval.data.synthrs import (
    DOMAINS,
    OBJECTS,
    PALETTE,
    SCENE_INFO,
    SCENES,
    SOURCE_SCENES,
    VERSIONS,
    WEB_SCENES,
    SynthRSExistsError,
    edition,
    generate_synthrs,
    make_captions,
    render_scene,
)

RSITMD_NAMES = ("airport", "farmland", "forest", "beach", "river", "port", "parking", "denseresidential",
                "industrial", "playground", "storagetanks", "bridge")
NAME = re.compile(r"^([a-z]+)_(\d+)\.png$")


@pytest.fixture(scope="module")
def rs_root(tmp_path_factory) -> Path:
    return generate_synthrs(tmp_path_factory.mktemp("synth") / "rs", n_images=360, image_size=96, seed=3,
                            progress=False)


@pytest.fixture(scope="module")
def source_root(tmp_path_factory) -> Path:
    return generate_synthrs(tmp_path_factory.mktemp("synth") / "src", n_images=180, image_size=96, seed=3,
                            domain="source", progress=False)


def _load(root: Path) -> tuple[list[dict], dict[str, list[dict]]]:
    doc = json.loads((root / "dataset_RSITMD.json").read_text())
    assert doc["dataset"] == "synthrs"
    return doc["images"], json.loads((root / "objects.json").read_text())


# ----------------------------------------------------------------------------- caption parsing

_NOUNS = {form: cls for cls, spec in OBJECTS.items() for pair in spec.nouns for form in pair}
_COUNT = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "many": 6, "several": 6,
          "lots of": 6}
_PHRASE = re.compile(
    r"\b(lots of|an|a|one|two|three|four|five|many|several)\s+(?:(small|large)\s+)?(?:(%s)\s+)?(%s)\b"
    % ("|".join(PALETTE), "|".join(sorted(map(re.escape, _NOUNS), key=len, reverse=True))),
    re.IGNORECASE,
)


def _claims(caption: str) -> list[tuple[int, str | None, str | None, str]]:
    """(count, size, colour, class) for every counted noun phrase of a caption."""
    return [(_COUNT[m[0].lower()], m[1] or None, m[2] or None,
             _NOUNS[m[3].lower()]) for m in _PHRASE.findall(caption)]


def _check_claims(caption: str, objects: list[dict]) -> int:
    n = 0
    for count, size, colour, cls in _claims(caption):
        hits = [o for o in objects
                if o["kind"] == "object" and o["class"] == cls and colour in (None, o["colour"])]
        assert (len(hits) > 5) if count == 6 else (len(hits) == count), (caption, count, colour, cls,
                                                                         len(hits))
        if size:
            assert all(o["size"] == size for o in hits), (caption, [o["size"] for o in hits])
        n += 1
    return n


# ----------------------------------------------------------------------------- tests


def test_scene_and_object_vocabulary():
    assert set(RSITMD_NAMES) <= set(SCENES) and len(SCENES) >= 12
    assert all(s.isalnum() and s.islower() for s in SCENES + SOURCE_SCENES)  # prefix before "_" is the label
    assert set(SOURCE_SCENES) <= set(OBJECTS)
    assert {"white", "red", "blue", "green", "gray", "yellow", "black", "orange"} <= set(PALETTE)


def test_layout_and_splits(rs_root):
    images, objects = _load(rs_root)
    assert len(images) == 360
    meta = json.loads((rs_root / "synthrs.json").read_text())
    assert meta["params"]["n_images"] == 360 and meta["params"]["version"] == VERSIONS["rs"]
    sentids = set()
    per_scene: dict[str, Counter] = defaultdict(Counter)
    for k, rec in enumerate(images):
        m = NAME.match(rec["filename"])
        assert m and m[1] in SCENES, rec["filename"]
        assert (rs_root / "images" / rec["filename"]).is_file()
        assert (rs_root / "masks" / rec["filename"]).is_file()
        assert rec["imgid"] == k and rec["split"] in ("train", "val", "test")
        assert len(rec["sentences"]) == 5 and rec["sentids"] == [s["sentid"] for s in rec["sentences"]]
        for s in rec["sentences"]:
            assert s["imgid"] == k and s["tokens"] == re.findall(r"[a-z0-9]+", s["raw"].lower())
            assert s["raw"][0].isupper() and s["raw"].endswith(".")
        sentids.update(rec["sentids"])
        per_scene[m[1]][rec["split"]] += 1
        assert rec["filename"] in objects
    assert len(sentids) == 5 * len(images)
    assert len(per_scene) == len(SCENES)
    totals = Counter(rec["split"] for rec in images)
    train_share, _, test_share = edition("rs")["split_fractions"]  # the current version's
    assert abs(totals["train"] / 360 - train_share) < 0.05 and abs(totals["test"] / 360 - test_share) < 0.05
    assert totals["val"] > 0
    shares = edition("rs")["split_fractions"]
    for scene, c in per_scene.items():  # stratified: every scene's 20 images split by the shares (1.0: 14/2/4)
        assert (c["train"], c["val"], c["test"]) == tuple(round(20 * f) for f in shares), (scene, c)


def test_rsitmd_reader_loads_it(rs_root):
    from rsretrieval.data import load_dataset

    test = load_dataset("synthrs", rs_root, "test")
    n_test = round(360 * edition("rs")["split_fractions"][2])  # stratified: the same share of each scene
    assert test.num_images == n_test and test.num_captions == 5 * n_test
    assert set(test.scenes) == set(SCENES)
    assert test.metadata.get("objects_file", "").endswith("objects.json")


def test_masks_match_objects(rs_root):
    _, objects = _load(rs_root)
    small = total = 0
    for fn, objs in list(objects.items())[::3]:
        mask = np.asarray(Image.open(rs_root / "masks" / fn))
        img = Image.open(rs_root / "images" / fn)
        assert mask.dtype == np.uint8 and mask.shape == (96, 96)
        assert img.size == (96, 96) and img.mode == "RGB"
        assert set(np.unique(mask)) <= set(range(len(objs) + 1))
        for k, o in enumerate(objs, start=1):
            assert o["id"] == k
            ys, xs = np.nonzero(mask == k)
            assert len(ys), (fn, o)
            assert o["bbox"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], (fn, o)
            assert o["area_fraction"] == pytest.approx(len(ys) / mask.size, abs=1e-6)
            assert o["kind"] in ("object", "landmark") and (o["class"] in OBJECTS) == (o["kind"] == "object")
            if o["kind"] == "object":
                total += 1
                small += o["area_fraction"] < 0.03
                assert o["on"] is None or objs[o["on"] - 1]["kind"] == "landmark"
    assert total > 200 and small / total > 0.5, (small, total)


def test_objects_shared_across_scenes(rs_root):
    _, objects = _load(rs_root)
    scenes_of: dict[str, set[str]] = defaultdict(set)
    for fn, objs in objects.items():
        for o in objs:
            if o["kind"] == "object":
                scenes_of[o["class"]].add(NAME.match(fn)[1])
    for cls in ("car", "boat", "tree", "building"):
        assert len(scenes_of[cls]) >= 3, (cls, scenes_of[cls])
    counts = Counter(len([o for o in objs if o["kind"] == "object"]) for objs in objects.values())
    assert sum(v for k,
               v in counts.items() if 1 <= k <= 8) > 0.3 * len(objects)  # many images have few objects


def test_captions_are_true_varied_and_often_scene_free(rs_root):
    images, objects = _load(rs_root)
    checked = scene_free = 0
    for rec in images:
        caps = [s["raw"] for s in rec["sentences"]]
        assert len(set(caps)) == 5, caps
        scene = NAME.match(rec["filename"])[1]
        objs = objects[rec["filename"]]
        checked += sum(_check_claims(c, objs) for c in caps)
        free = [c for c in caps if not any(re.search(rf"\b{w}\b",
                                                     c.lower()) for w in SCENE_INFO[scene].nouns)]
        assert free, caps
        scene_free += len(free)
    assert checked > 1000
    assert 0.3 <= scene_free / (5 * len(images)) <= 0.5


def test_regimes_small_targets_and_scene_free_captions(tmp_path):
    """The regimes notebook 04 tries a component in: smaller objects, captions that never name the scene."""
    from rsretrieval.data.synthrs import generate_synthrs

    base = generate_synthrs(tmp_path / "base", n_images=40, image_size=96, progress=False)
    other = generate_synthrs(tmp_path / "other", n_images=40, image_size=96, object_scale=0.5, unnamed_share=1.0,
                             progress=False)
    params = json.loads((other / "synthrs.json").read_text())["params"]
    assert (params["object_scale"], params["unnamed_share"]) == (0.5, 1.0)
    assert "object_scale" not in json.loads((base / "synthrs.json").read_text())["params"]  # the default's as before
    area = {}
    for name, root in (("base", base), ("other", other)):
        objs = [o for v in json.loads((root / "objects.json").read_text()).values() for o in v if o["kind"] == "object"]
        area[name] = np.median([o["area_fraction"] for o in objs])
    assert area["other"] < 0.5 * area["base"]  # half the length: about a quarter of the area
    images, _ = _load(other)
    for rec in images:
        scene = NAME.match(rec["filename"])[1]
        for s in rec["sentences"]:
            assert not any(re.search(rf"\b{w}\b", s["raw"].lower()) for w in SCENE_INFO[scene].nouns), s["raw"]
    with pytest.raises(ValueError, match="unnamed_share"):
        generate_synthrs(tmp_path / "bad", n_images=4, image_size=96, unnamed_share=1.5, progress=False)


def test_caption_claims_parse():
    objs = [{"kind": "object", "class": "plane", "colour": "white", "size": "small"}] * 2 + \
           [{"kind": "object", "class": "car", "colour": "red", "size": "small"}]
    assert _claims("Two white planes are parked beside a red car.") == [(2, None, "white", "plane"),
                                                                        (1, None, "red", "car")]
    assert _check_claims("Two white aircraft and an automobile.", objs) == 1
    with pytest.raises(AssertionError):
        _check_claims("Three planes are parked.", objs)


def test_source_domain(source_root):
    images, objects = _load(source_root)
    areas, named_places = [], set()
    for rec in images:
        label = NAME.match(rec["filename"])[1]
        assert label in SOURCE_SCENES
        objs = objects[rec["filename"]]
        assert any(o["class"] == label for o in objs)
        things = [o for o in objs if o["kind"] == "object"]
        assert all(o["ground"].endswith("background") or o["ground"] in scenes._SOURCE_GROUNDS for o in things)
        assert all(o["class"] in ("road", "river", "runway") for o in objs if o["kind"] != "object")
        for s in rec["sentences"]:
            _check_claims(s["raw"], things)
            words = s["raw"].lower()
            named_places.update(scene for scene in SCENES if captions._mentions(words, SCENE_INFO[scene].nouns))
        areas += [o["area_fraction"] for o in things]
    assert min(areas) < 0.01 and max(areas) > 0.15  # small to large objects
    grounds = {o["ground"] for objs in objects.values() for o in objs if o["kind"] == "object"}
    assert len({g for g in grounds if g.endswith("background")}) >= 6  # backdrops vary in colour
    assert len(grounds & set(scenes._SOURCE_GROUNDS)) >= 5  # and real grounds are named
    assert any(o["kind"] == "landmark" for objs in objects.values() for o in objs)
    assert len(named_places) >= 12  # captions teach most scene words, as web captions say where


def test_web_domain_has_object_photos_and_aerial_photos_with_alt_text(tmp_path):
    root = generate_synthrs(tmp_path / "web", n_images=108, image_size=64, seed=3, domain="web", progress=False)
    images, objects = _load(root)
    labels = Counter(NAME.match(rec["filename"])[1] for rec in images)
    assert set(labels) == set(SOURCE_SCENES) | set(SCENES) and set(WEB_SCENES) == set(labels)
    checked = 0
    for rec in images:
        label = NAME.match(rec["filename"])[1]
        caps = [s["raw"] for s in rec["sentences"]]
        assert len(set(caps)) == 5, caps
        checked += sum(_check_claims(c, objects[rec["filename"]]) for c in caps)
        if label in SCENE_INFO:  # alt-text names the place the photo is of, in most captions
            named = [c for c in caps if captions._mentions(c.lower(), SCENE_INFO[label].nouns)]
            assert len(named) >= 3, caps
    assert checked > 200
    # an aerial web photo is not an rs image: another rng stream, and a colour cast, haze and blur
    rs = generate_synthrs(tmp_path / "rs", n_images=18, image_size=64, seed=3, progress=False)
    web_airport = np.asarray(Image.open(root / "images" / "airport_1.png"), np.float32)
    rs_airport = np.asarray(Image.open(rs / "images" / "airport_1.png"), np.float32)
    assert np.abs(web_airport - rs_airport).mean() > 5


def test_deterministic_and_order_free(tmp_path):
    a = generate_synthrs(tmp_path / "a", n_images=24, image_size=64, seed=5, progress=False)
    b = generate_synthrs(tmp_path / "b", n_images=24, image_size=64, seed=5, progress=False)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 2 * 24 + 3
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    # image 19 rendered alone equals the file: each image's rng depends only on (seed, domain, index)
    rng = np.random.default_rng([5, DOMAINS.index("rs"), 19])
    img, objs, mask = render_scene(rng, SCENES[19 % len(SCENES)], 64, "rs")
    fn = f"{SCENES[19 % len(SCENES)]}_{19 // len(SCENES) + 1}.png"
    assert np.array_equal(np.asarray(img), np.asarray(Image.open(a / "images" / fn)))
    assert np.array_equal(mask, np.asarray(Image.open(a / "masks" / fn)))
    c = generate_synthrs(tmp_path / "c", n_images=24, image_size=64, seed=6, progress=False)
    assert (a / "images" / fn).read_bytes() != (c / "images" / fn).read_bytes()


def test_rerun_is_noop_and_changes_are_refused(tmp_path):
    root = generate_synthrs(tmp_path / "d", n_images=6, image_size=48, progress=False)
    stamp = (root / "synthrs.json").stat().st_mtime_ns
    assert generate_synthrs(root, n_images=6, image_size=48, progress=False) == root
    assert (root / "synthrs.json").stat().st_mtime_ns == stamp
    victim = next((root / "images").iterdir())
    victim.unlink()  # a damaged copy with the same parameters is remade, not trusted
    generate_synthrs(root, n_images=6, image_size=48, progress=False)
    assert victim.is_file()
    with pytest.raises(SynthRSExistsError, match="n_images"):
        generate_synthrs(root, n_images=7, image_size=48, progress=False)
    with pytest.raises(FileExistsError):  # the error is also a FileExistsError
        generate_synthrs(root, n_images=6, image_size=48, domain="source", progress=False)
    generate_synthrs(root, n_images=7, image_size=48, overwrite=True, progress=False)
    assert len(list((root / "images").iterdir())) == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no temporary or old folders left
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(SynthRSExistsError, match="not a SynthRS dataset"):
        generate_synthrs(other, n_images=6, image_size=48, overwrite=True, progress=False)
    assert (other / "notes.txt").read_text() == "mine"
    with pytest.raises(ValueError):
        generate_synthrs(tmp_path / "bad", split_fractions=(0.5, 0.1, 0.1), progress=False)


def test_versions_stay_generable_by_name(tmp_path):
    """Each rs version keeps its size, split and captions; image i is the same picture in every version."""
    from rsretrieval.data.synthrs import RS_EDITIONS, edition

    assert VERSIONS["rs"] in RS_EDITIONS and edition("rs", "1.0")["n_images"] == 1500
    assert edition("rs", "3.0") | {} == {"version": "3.0", **RS_EDITIONS["3.0"]}
    old = generate_synthrs(tmp_path / "v1", version="1.0", n_images=36, image_size=64, progress=False)
    new = generate_synthrs(tmp_path / "v3", version="3.0", n_images=36, image_size=64, progress=False)
    p_old, p_new = (json.loads((r / "synthrs.json").read_text())["params"] for r in (old, new))
    # version 1.0's parameters are written as they always were (what the committed zoo was built on)
    assert p_old == {"version": "1.0", "n_images": 36, "image_size": 64, "seed": 0, "domain": "rs",
                     "split_fractions": [0.7, 0.1, 0.2]}
    assert p_new["version"] == "3.0" and p_new["split_fractions"] == [0.72, 0.18, 0.10]
    assert "caption_clauses" not in p_new  # the version's own clause count is implied by it
    assert (old / "images" / "airport_1.png").read_bytes() == (new / "images" / "airport_1.png").read_bytes()
    words = [np.mean([len(s["raw"].split()) for rec in _load(r)[0] for s in rec["sentences"]]) for r in (old, new)]
    assert words[1] > words[0] + 3  # 3.0's captions make two statements
    with pytest.raises(SynthRSExistsError, match="version: '1.0' -> '3.0'"):
        generate_synthrs(old, version="3.0", n_images=36, image_size=64, progress=False)
    with pytest.raises(ValueError, match="no version '2.0'; known: 1.0, 3.0"):
        generate_synthrs(tmp_path / "v2", version="2.0", progress=False)
    assert not (tmp_path / "v2").exists()


def test_the_default_root_refuses_a_dataset_of_other_parameters(tmp_path):
    """prepare_dataset used to hand back whatever SynthRS lay in the folder: now the generator checks it."""
    from rsretrieval.data import prepare_dataset

    stale = generate_synthrs(tmp_path / "synthrs", n_images=18, image_size=48, progress=False)
    with pytest.raises(SynthRSExistsError, match=r"n_images: 18 -> \d+.*data synth --overwrite"):
        prepare_dataset("synthrs", stale)
    assert len(list((stale / "images").iterdir())) == 18  # nothing deleted


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def failing(arr):
        calls.append(1)
        if len(calls) > 5:
            raise KeyboardInterrupt
        return b""

    monkeypatch.setattr(generate, "_png_bytes", failing)
    with pytest.raises(KeyboardInterrupt):
        generate_synthrs(tmp_path / "e", n_images=10, image_size=48, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_dataset_another_process_finished_first_is_kept(tmp_path, monkeypatch):
    """Two runs (parallel notebooks or test workers) generating one folder: the second keeps the first's
    folder, which the first may be reading, instead of swapping its own copy in under it."""
    root = tmp_path / "d"
    write = generate._write_dataset
    theirs = {}

    def racing(tmp, params, progress):
        write(tmp, params, progress)
        monkeypatch.setattr(generate, "_write_dataset", write)
        generate_synthrs(root, n_images=6, image_size=48, progress=False)  # the other process wins
        theirs.update({p.name: p.stat().st_ino for p in (root / "images").iterdir()})

    monkeypatch.setattr(generate, "_write_dataset", racing)
    assert generate_synthrs(root, n_images=6, image_size=48, progress=False) == root
    assert {p.name: p.stat().st_ino for p in (root / "images").iterdir()} == theirs  # the same files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # our copy removed, nothing left aside


def test_render_scene_api_and_sizes():
    rng = np.random.default_rng(0)
    for size in (48, 160):
        img, objs, mask = render_scene(rng, "port", size)
        assert img.size == (size, size) and mask.shape == (size, size)
        for o in objs:
            assert 0 <= o["bbox"][0] < o["bbox"][2] <= size and 0 <= o["bbox"][1] < o["bbox"][3] <= size
    caps = make_captions(rng, "port", objs)
    assert len(caps) == 5 and len(set(caps)) == 5
    for cls in SOURCE_SCENES:
        img, objs, _ = render_scene(rng, cls, 64, "source")
        assert len(make_captions(rng, cls, objs, "source")) == 5
    with pytest.raises(ValueError, match="unknown rs scene"):
        render_scene(rng, "volcano", 64)
    with pytest.raises(ValueError, match="domain"):
        render_scene(rng, "airport", 64, "photo")
