import json

import numpy as np
import pytest

from rsretrieval.errors import QueryImageError
from PIL import Image

from rsretrieval.errors import CheckpointError
from rsretrieval.search import Encoder, ImageIndex, SearchIndexError, find_images


@pytest.fixture(scope="module")
def encoder():
    return Encoder("tiny", None, device="cpu")


@pytest.fixture
def archive(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "archive"
    (root / "sub").mkdir(parents=True)
    for k in range(12):
        arr = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
        folder = root / "sub" if k % 3 == 0 else root
        ext = [".png", ".jpg", ".TIF"][k % 3]
        Image.fromarray(arr).save(folder / f"img_{k:02d}{ext}")
    (root / "broken.png").write_bytes(b"not an image")
    (root / "notes.txt").write_text("ignored")
    return root


def test_find_images_is_recursive_and_filters(archive):
    names = [p.name for p in find_images(archive)]
    assert len(names) == 13 and "notes.txt" not in names and "img_00.png" in names


def test_build_search_and_skip(archive, tmp_path, encoder):
    index = ImageIndex.build(archive, tmp_path / "idx", encoder, batch_size=5, progress=False)
    assert len(index) == 12
    assert [s["path"] for s in index.manifest.skipped] == ["broken.png"]
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["dim"] == 64 and manifest["encoder"]["model"] == "tiny"
    hits = index.search_text("two white planes", k=5)
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))
    first = next(p for p in find_images(archive) if p.name != "broken.png")
    assert index.search_image(first, k=1)[0].path == first  # an indexed image finds itself
    with pytest.raises(QueryImageError, match="broken.png is not an image rsretrieval can read"):
        index.search_image(archive / "broken.png")
    with pytest.raises(ValueError, match="empty query"):
        index.search_text("   ")


def test_interrupted_build_resumes_without_reencoding(archive, tmp_path, encoder, monkeypatch):
    calls = []
    original = Encoder.encode_images

    def counting(self, images):
        calls.append(len(images))
        if len(calls) == 2 and not getattr(counting, "crashed", False):
            counting.crashed = True
            raise KeyboardInterrupt
        return original(self, images)

    monkeypatch.setattr(Encoder, "encode_images", counting)
    with pytest.raises(KeyboardInterrupt):
        ImageIndex.build(archive, tmp_path / "idx", encoder, batch_size=4, chunk=4, progress=False)
    with pytest.raises(FileNotFoundError, match="interrupted build"):
        ImageIndex.load(tmp_path / "idx")
    calls.clear()
    index = ImageIndex.build(archive, tmp_path / "idx", encoder, batch_size=4, chunk=4, progress=False)
    assert len(index) == 12
    # 13 files; the first chunk of 4 (finished before the crash, broken.png among them) is not redone
    assert sum(calls) == 13 - 4


def test_wrong_query_model_is_refused(archive, tmp_path, encoder):
    ImageIndex.build(archive, tmp_path / "idx", encoder, progress=False)
    other = Encoder("mini", None, device="cpu")
    with pytest.raises(CheckpointError, match="same model"):
        ImageIndex.load(tmp_path / "idx", other)


def test_add_and_scene_filter(archive, tmp_path, encoder):
    scenes = {str(p.relative_to(archive)): "port" for p in find_images(archive) if p.suffix == ".jpg"}
    index = ImageIndex.build(archive, tmp_path / "idx", encoder, scenes=scenes, progress=False)
    port = index.search_text("boats", k=10, scene="port")
    assert len(port) == len(scenes) and all(h.scene == "port" for h in port)
    with pytest.raises(SearchIndexError, match="no image of scene"):
        index.search_text("boats", scene="desert")
    extra = archive / "new.png"
    Image.new("RGB", (40, 40), "blue").save(extra)
    assert index.add([extra]) == 1
    again = ImageIndex.load(tmp_path / "idx", encoder)
    assert len(again) == 13 and again.search_image(extra, k=1)[0].path == extra.resolve()


def test_empty_folder_is_a_clear_error(tmp_path, encoder):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SearchIndexError, match="no images"):
        ImageIndex.build(tmp_path / "empty", tmp_path / "idx", encoder, progress=False)


def _bomb_png(path, side=20_000):
    """A PNG that declares side x side pixels (400 MP) in a few bytes: a decompression bomb."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def test_a_decompression_bomb_is_an_error_naming_the_file_and_skipped_when_indexing(archive, tmp_path, encoder):
    from rsretrieval.data.dataset import open_image
    from rsretrieval.errors import DatasetFormatError

    bomb = _bomb_png(archive / "bomb.png")
    with pytest.raises(DatasetFormatError, match=r"bomb\.png declares more pixels.*MAX_IMAGE_PIXELS"):
        open_image(bomb)
    index = ImageIndex.build(archive, tmp_path / "idx", encoder, batch_size=5, progress=False)
    assert len(index) == 12 and sorted(s["path"] for s in index.manifest.skipped) == ["bomb.png", "broken.png"]


def test_weights_are_identified_by_content_not_by_path(archive, tmp_path, monkeypatch):
    import torch

    from rsretrieval.models import create_model

    torch.manual_seed(1)
    weights = tmp_path / "w" / "tiny.pt"
    weights.parent.mkdir()
    torch.save(create_model("tiny").model.state_dict(), weights)
    ImageIndex.build(archive, tmp_path / "idx", Encoder("tiny", str(weights), device="cpu"), progress=False)
    monkeypatch.chdir(tmp_path)
    assert len(ImageIndex.load(tmp_path / "idx", Encoder("tiny", "w/tiny.pt", device="cpu"))) == 12  # same file
    torch.manual_seed(2)
    torch.save(create_model("tiny").model.state_dict(), weights)  # replaced under the same name
    with pytest.raises(CheckpointError, match="same model"):
        ImageIndex.load(tmp_path / "idx", Encoder("tiny", str(weights), device="cpu"))


def test_the_encoder_leaves_the_callers_random_state_alone():
    import torch

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    Encoder("tiny", None, device="cpu")
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("damage", ["manifest", "embeddings"])
def test_a_damaged_index_names_the_file(archive, tmp_path, encoder, damage):
    ImageIndex.build(archive, tmp_path / "idx", encoder, progress=False)
    name = {"manifest": "manifest.json", "embeddings": "embeddings.npy"}[damage]
    path = tmp_path / "idx" / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(SearchIndexError, match=rf"{name} is .*damaged.*index build"):
        ImageIndex.load(tmp_path / "idx", encoder)


@pytest.mark.parametrize("field, value, said", [
    ("paths", "a.png", "field 'paths' is str"), ("dim", "64", "field 'dim' is str"),
    ("encoder", ["tiny"], "field 'encoder' is list"), ("normalized", 1, "field 'normalized' is int"),
    ("scenes", [], "need as many scenes"), ("tiling", {"size": 0}, "tiling"), ("dtype", "int8", "dtype 'int8'"),
])
def test_a_manifest_field_of_the_wrong_type_is_one_line_naming_it(archive, tmp_path, encoder, capsys, field,
                                                                   value, said):
    from rsretrieval.cli import main

    ImageIndex.build(archive, tmp_path / "idx", encoder, progress=False)
    path = tmp_path / "idx" / "manifest.json"
    doc = json.loads(path.read_text())
    path.write_text(json.dumps({**doc, field: value}))
    with pytest.raises(SearchIndexError, match=f"manifest.json is damaged: .*{said}"):
        ImageIndex.load(tmp_path / "idx", encoder)
    capsys.readouterr()
    assert main(["search", str(tmp_path / "idx"), "a harbour", "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "manifest.json is damaged" in err


def test_adding_an_image_outside_the_root_is_refused(archive, tmp_path, encoder):
    index = ImageIndex.build(archive, tmp_path / "idx", encoder, progress=False)
    stray = tmp_path / "stray.png"
    Image.new("RGB", (40, 40), "red").save(stray)
    with pytest.raises(SearchIndexError, match="not below the index root"):
        index.add([stray])


DYING_RANK = """
import os, sys
from rsretrieval.search import archive

encode, done = archive._encode_part, []

def encode_then_die(*args, **kwargs):  # rank 1 is killed after its first part: the build stops midway
    encode(*args, **kwargs)
    done.append(1)
    if os.environ["RANK"] == "1" and len(done) == 1:
        os._exit(9)

archive._encode_part = encode_then_die
from rsretrieval.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_torchrun_ranks_share_a_build_resume_it_and_merge_what_one_process_builds(tmp_path, encoder):
    import os
    import subprocess
    import sys

    rng = np.random.default_rng(1)
    root = tmp_path / "archive"
    root.mkdir()
    for k in range(40):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(root / f"img_{k:02d}.png")
    (root / "broken.png").write_bytes(b"not an image")
    single = ImageIndex.build(root, tmp_path / "one", encoder, chunk=6, progress=False)

    args = ["index", "build", "--images", str(root), "--out", str(tmp_path / "two"), "--model", "tiny",
            "--pretrained", "", "--device", "cpu", "--chunk", "6", "--batch-size", "4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    script = tmp_path / "dying_rank.py"
    script.write_text(DYING_RANK)
    died = subprocess.run([*run, str(script), *args], capture_output=True, text=True, timeout=300, env=env)
    assert died.returncode != 0 and not (tmp_path / "two" / "manifest.json").exists()
    finished = list((tmp_path / "two" / "parts").glob("part-*.json"))
    assert 1 <= len(finished) < 7  # 41 files in parts of 6: rank 1's first part at least (rank 0 is stopped with it)

    resumed = subprocess.run([*run, "-m", "rsretrieval", *args], capture_output=True, text=True, timeout=300, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count("ImageIndex(") == 1  # rank 0 reports
    two = ImageIndex.load(tmp_path / "two", encoder)
    assert two.manifest.paths == single.manifest.paths and len(two) == 40
    assert [s["path"] for s in two.manifest.skipped] == ["broken.png"]
    assert np.allclose(np.asarray(two.embeddings, np.float32), np.asarray(single.embeddings, np.float32), atol=2e-3)
    assert not (tmp_path / "two" / "parts").exists()
