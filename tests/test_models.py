import pytest
import torch

from rsretrieval.errors import CheckpointError, ModelNotFoundError
from rsretrieval.models import (
    count_parameters,
    create_model,
    freeze,
    list_models,
    print_trainable_parameters,
    select_device,
)
from rsretrieval.models.factory import _resolve_name


def test_our_configs_are_listed_first():
    names = list_models()
    assert names[:4] == ["mini", "mini-2-layers", "mini-width-192", "tiny"]
    assert "ViT-B-32" in names


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(ModelNotFoundError, match="Available: mini, mini-2-layers, mini-width-192, tiny"):
        create_model("ViT-Nope")


def test_unknown_weights_tag():
    with pytest.raises(ModelNotFoundError, match="unknown weights 'nope'"):
        create_model("tiny", "nope")
    with pytest.raises(ModelNotFoundError, match="no file at"):
        create_model("tiny", "missing/file.pt")


def test_openai_weights_get_quickgelu():
    assert _resolve_name("ViT-B-32", "openai", None) == "ViT-B-32-quickgelu"
    assert _resolve_name("ViT-B-32", "laion2b_s34b_b79k", None) == "ViT-B-32"
    assert _resolve_name("ViT-B-32", None, True) == "ViT-B-32-quickgelu"
    with pytest.warns(UserWarning, match="QuickGELU"):
        _resolve_name("ViT-B-32", "openai", False)


def test_bundle_encodes_images_and_text():
    b = create_model("tiny")
    assert b.image_size == 32
    from PIL import Image

    x = b.transform(Image.new("RGB", (64, 48), "red")).unsqueeze(0)
    tokens = b.tokenizer(["two white planes"])
    assert tokens.shape == (1, 32)
    assert b.model.encode_image(x).shape == (1, 64)
    assert b.model.encode_text(tokens).shape == (1, 64)


def test_local_state_dict_file_loads_and_wrong_arch_is_clear(tmp_path):
    torch.manual_seed(0)
    a = create_model("tiny")
    path = tmp_path / "tiny-weights.pt"
    torch.save(a.model.state_dict(), path)
    b = create_model("tiny", str(path))
    for (k, va), (_, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(va, vb), k
    with pytest.raises(CheckpointError, match="does not fit architecture mini"):
        create_model("mini", str(path))


def test_shipped_weights_missing_says_how_to_make_them(monkeypatch, tmp_path):
    from rsretrieval import paths

    monkeypatch.setattr(paths, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(ModelNotFoundError, match="python -m rsretrieval pretrain"):
        create_model("mini", "synthrs")


def test_counts_and_freeze(capsys):
    m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    assert count_parameters(m) == (26, 26)
    freeze(m[0])
    assert count_parameters(m) == (10, 26)
    line = print_trainable_parameters(m)
    assert line == "trainable params: 10 || all params: 26 || trainable%: 38.4615"
    assert capsys.readouterr().out.strip() == line


def test_shared_parameters_counted_once():
    lin = torch.nn.Linear(2, 2)
    m = torch.nn.ModuleList([lin, lin])
    assert count_parameters(m) == (6, 6)


def test_select_device():
    assert select_device("auto").type == "cpu"  # CUDA_VISIBLE_DEVICES="" in conftest
    assert select_device("cpu") == torch.device("cpu")
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        select_device("cuda")


def test_compact_weights_round_trip(tmp_path):
    from rsretrieval.models.compact import TOKEN_KEY, load_compact, save_compact

    torch.manual_seed(1)
    src = create_model("tiny").model
    used = torch.tensor([49406, 49407, 320, 1000])
    path = tmp_path / "tiny.pt"
    save_compact(src, path, used, arch="tiny", meta={"zero_shot_mr": 1.0})
    dst = create_model("tiny").model
    assert load_compact(dst, path, arch="tiny") == {"zero_shot_mr": 1.0}
    for k, v in src.state_dict().items():
        got = dst.state_dict()[k]
        if k == TOKEN_KEY:
            assert torch.allclose(got[used], v[used].half().float())
            assert not torch.allclose(got[5], v[5])  # unused rows are redrawn, not stored
        else:
            assert torch.allclose(got, v.half().float()), k
    with pytest.raises(CheckpointError, match="weights for 'tiny', not 'mini'"):
        load_compact(create_model("mini").model, path, arch="mini")
    by_path = create_model("tiny", str(path)).model  # a compact file is weights by path too
    assert torch.equal(by_path.state_dict()["logit_scale"], dst.state_dict()["logit_scale"])
    blob = torch.load(path, weights_only=True)
    blob["payload"]["logit_scale"] += 1
    torch.save(blob, path)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_compact(dst, path, arch="tiny")


@pytest.mark.parametrize("content, says", [
    (b"", "is empty"),
    (b"just some text, not weights\n", "not a complete torch file"),
    ("pickle", "holds more than tensors"),
    ("tensor", "holds a Tensor"),
    ("empty", "holds an empty dict"),
    ("truncated", "not a complete torch file"),
])
def test_weights_files_that_are_not_what_they_claim(tmp_path, content, says):
    import pickle

    path = tmp_path / "weights.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "pickle":
        path.write_bytes(pickle.dumps({"visual.proj": Exception("code in a pickle")}))
    elif content == "tensor":
        torch.save(torch.ones(3), path)
    elif content == "empty":
        torch.save({}, path)
    else:
        torch.save(create_model("tiny").model.state_dict(), path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=says) as info:
        create_model("tiny", str(path))
    assert str(path) in str(info.value) and "weights_only=False" not in str(info.value)


def test_other_image_size_is_refused_unless_resizing_is_asked_for(tmp_path):
    torch.manual_seed(0)
    small = create_model("tiny", force_image_size=48)  # the same architecture at another resolution
    path = tmp_path / "tiny-48px.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in small.model.state_dict().items()}}, path)
    with pytest.raises(CheckpointError, match="another image size"):
        create_model("tiny", str(path))
    resized = create_model("tiny", str(path), resize_positional_embeddings=True)
    assert torch.equal(resized.model.text_projection, small.model.text_projection)


def test_openai_layout_files_get_quickgelu_and_others_warn(tmp_path):
    from open_clip.transformer import QuickGELU

    state = create_model("ViT-B-32-quickgelu").model.state_dict()
    openai = tmp_path / "openai-layout.pt"
    torch.save({**state, "input_resolution": torch.tensor(224), "context_length": torch.tensor(77),
                "vocab_size": torch.tensor(49408)}, openai)
    bundle = create_model("ViT-B-32", str(openai))
    assert bundle.name == "ViT-B-32-quickgelu"
    assert any(isinstance(m, QuickGELU) for m in bundle.model.modules())
    plain = tmp_path / "plain.pt"
    torch.save(state, plain)
    with pytest.warns(UserWarning, match="cannot tell .* QuickGELU"):
        create_model("ViT-B-32", str(plain))


@pytest.mark.parametrize("method", [None, "coop", "clip_adapter", "mrs_adapter", "focus_adapter"])
def test_trimmed_text_encoding_equals_open_clips_or_is_not_used(method):
    from rsretrieval.methods import apply_method, wrap_tokenizer
    from rsretrieval.models import encode_text_trimmed, trims_text_exactly

    torch.manual_seed(0)
    bundle = create_model("tiny")
    model = bundle.model if method is None else apply_method(bundle.model, method)
    with torch.no_grad():  # zero-initialised adapters would make any path look right
        for p in model.parameters():
            if p.requires_grad and not p.any():
                p.normal_(0, 0.05)
    tokenizer = wrap_tokenizer(model, bundle.tokenizer)
    model.eval()
    tokens = tokenizer(["planes", "a port with boats along the pier and many cars beside it", "a road"])
    if method == "focus_adapter":  # it has its own encode_text: trimming is refused, not guessed
        assert not trims_text_exactly(model, tokenizer)
        return
    assert trims_text_exactly(model, tokenizer)
    assert int((tokens != 0).any(0).nonzero().max()) + 1 < tokens.shape[1]  # there is padding to skip
    with torch.inference_mode():
        torch.testing.assert_close(encode_text_trimmed(model, tokens, normalize=True),
                                   model.encode_text(tokens, normalize=True), atol=1e-5, rtol=0)


@pytest.mark.parametrize("tag", ["synthrs", "synthrs3"])
def test_each_shipped_miniclip_scores_its_report_on_the_58f58c4_synthrs_test(tag):
    """The zero-shot guard: every MiniCLIP we ship keeps >= 25 mR on SynthRS 1.0's test (58f58c4's)."""
    import json

    from rsretrieval.data import load_dataset
    from rsretrieval.data.synthrs import generate_synthrs
    from rsretrieval.evaluation import evaluate
    from rsretrieval.models.factory import local_pretrained_path
    from rsretrieval.paths import data_dir
    from rsretrieval.pretrain import PretrainConfig

    weights = local_pretrained_path("mini", tag)
    report = json.loads(weights.with_suffix(".json").read_text())
    assert report["zero_shot"]["n_images"] == 306 and report["config"]["eval_images"] == 1500  # 1.0's test
    bundle = create_model("mini", tag, device="cpu")
    root = generate_synthrs(data_dir(PretrainConfig.eval_root), version=PretrainConfig.eval_version, progress=False)
    test = load_dataset("synthrs", root, "test")  # 1.0's, whatever version the course defaults to
    result = evaluate(bundle.model, test, transform=bundle.transform, tokenizer=bundle.tokenizer, device="cpu")
    assert result.metrics["mr"] == pytest.approx(report["zero_shot"]["mr"], abs=1e-6)
    assert result.metrics["mr"] >= 25
