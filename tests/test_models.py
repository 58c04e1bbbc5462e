"""Registry, weight resolution and safe, strict checkpoint loading."""

import os
import pickle
import re
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from mamba_bench.errors import CheckpointError, UnknownNameError
from mamba_bench.models import create_model, get_spec, read_state_dict, registered_models, save_checkpoint
from mamba_bench.models.weights import load_weights_into, resolve_weights


def test_aliases_pin_imagenet1k_weights_and_preprocessing():
    swin = get_spec("swin-b")
    assert swin.timm_name == "swin_base_patch4_window7_224.ms_in1k"
    assert swin.input_size == 224 and swin.interpolation == "bicubic"
    conv = get_spec("convnext-b")
    assert conv.timm_name == "convnext_base.fb_in1k"
    assert conv.hf_hub_id == "timm/convnext_base.fb_in1k" and conv.hf_hub_filename == "model.safetensors"
    assert conv.weights_url is None  # weights come through the Hugging Face Hub cache, as timm's do
    assert conv.mean == pytest.approx((0.485, 0.456, 0.406))
    assert {"swin-t", "swin-s", "convnext-t", "convnext-s", "convnext-nano", "swin-nano"} <= set(registered_models())


def test_any_timm_name_resolves():
    spec = get_spec("resnet18")
    assert spec.family == "timm" and spec.num_classes == 1000
    assert spec.weights_file.endswith(".safetensors")


def test_unknown_model_lists_valid_names_and_suggests():
    with pytest.raises(UnknownNameError) as exc:
        get_spec("convnxt-b")
    msg = str(exc.value)
    assert "convnext-b" in msg and "swin-nano" in msg and "\n" not in msg


@pytest.mark.parametrize("name", ["convnext-nano", "swin-nano"])
def test_nano_models_forward(name):
    model = create_model(name)
    assert not model.training
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 10)
    assert sum(p.numel() for p in model.parameters()) < 2_000_000


def _trained_pair(tmp_path):
    torch.manual_seed(0)
    model = create_model("convnext-nano")
    path = save_checkpoint(model, tmp_path / "m.safetensors", {"mamba_bench_model": "convnext-nano"})
    return model, path


def test_safetensors_roundtrip_loads_strictly(tmp_path):
    model, path = _trained_pair(tmp_path)
    again = create_model("convnext-nano", weights=str(path))
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(model(x), again(x))


@pytest.mark.parametrize("wrapper", ["model", "state_dict", None])
def test_pth_with_wrappers_and_ddp_prefix(tmp_path, wrapper):
    model, _ = _trained_pair(tmp_path)
    sd = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({wrapper: sd, "epoch": 3} if wrapper else sd, tmp_path / "c.pth")
    again = create_model("convnext-nano", weights=str(tmp_path / "c.pth"))
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v)


def test_mismatched_checkpoint_names_first_keys(tmp_path):
    model, _ = _trained_pair(tmp_path)
    sd = model.state_dict()
    sd.pop("head.fc.weight")
    sd["extra.weight"] = torch.zeros(1)
    sd["stem.0.weight"] = torch.zeros(3, 3, 1, 1)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as exc:
        create_model("convnext-nano", weights=str(tmp_path / "bad.pth"))
    msg = str(exc.value)
    assert "1 missing: head.fc.weight" in msg
    assert "1 unexpected: extra.weight" in msg
    assert "stem.0.weight (3, 3, 1, 1)" in msg


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    swin = create_model("swin-nano")
    path = save_checkpoint(swin, tmp_path / "swin.safetensors", {})
    with pytest.raises(CheckpointError, match="does not fit convnext-nano"):
        create_model("convnext-nano", weights=str(path))


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = marker
    with open(tmp_path / "evil.pth", "wb") as fh:
        pickle.dump({"model": evil}, fh)
    with pytest.raises(CheckpointError, match="refusing to load"):
        read_state_dict(tmp_path / "evil.pth")
    assert not marker.exists()


class FakeCfgNode(dict):
    """Like yacs' CfgNode: a dict subclass pickled next to the weights in official releases."""


def test_checkpoint_with_config_objects_loads_tensors_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = marker
    model = create_model("convnext-nano")
    cfg = FakeCfgNode(MODEL=FakeCfgNode(NAME="x"), HOOK=evil)
    torch.save({"model": model.state_dict(), "config": cfg, "epoch": 3, "max_accuracy": 80.1},
               tmp_path / "release.pth")
    with pytest.raises(pickle.UnpicklingError):  # weights_only=True alone refuses this file
        torch.load(tmp_path / "release.pth", weights_only=True)
    state = read_state_dict(tmp_path / "release.pth")
    assert not marker.exists()
    assert set(state) == set(model.state_dict())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_garbage_file_is_a_clear_error(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        read_state_dict(tmp_path / "junk.pth")


def test_url_download_is_cached_and_atomic(tmp_path):
    model, path = _trained_pair(tmp_path)
    url = path.resolve().as_uri()  # file:// goes through the same urllib download code
    got = resolve_weights(url, cache=tmp_path / "cache")
    assert got.parent == tmp_path / "cache" / "weights" and got.read_bytes() == path.read_bytes()
    assert not list((tmp_path / "cache" / "weights").glob("*.part*"))
    path.unlink()  # second resolution must come from the cache, not the source
    assert resolve_weights(url, cache=tmp_path / "cache") == got
    net = create_model("convnext-nano")
    load_weights_into(net, url, get_spec("convnext-nano"), cache_dir=str(tmp_path / "cache"))


def test_offline_download_names_the_file_to_pass(tmp_path):
    with pytest.raises(CheckpointError) as exc:
        resolve_weights("http://127.0.0.1:9/vssm_base_0229.pth", cache=tmp_path)
    msg = str(exc.value)
    assert "could not download" in msg and "--weights /path/to/vssm_base_0229.pth" in msg
    assert not any(tmp_path.rglob("*vssm*"))


def test_missing_weights_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_weights(str(tmp_path / "nope.pth"))


def test_official_swin_layout_is_adapted_like_timm(tmp_path):
    """A checkpoint in the official Swin release layout (relative_position_index buffers, `head.`)
    loads through timm's filter, the single place foreign layouts are adapted."""
    from mamba_bench.models.timm_zoo import swin_nano as _swin_nano

    net = _swin_nano(10)
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    official = {}
    for k, v in sd.items():  # official layout: downsample at the end of the previous stage, `head.`
        k = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", k)
        official[k.replace("head.fc.", "head.")] = v
    assert "layers.0.downsample.reduction.weight" in official
    torch.save({"model": official}, tmp_path / "swin_official.pth")
    again = create_model("swin-nano", weights=str(tmp_path / "swin_official.pth"))
    assert torch.equal(again.state_dict()["head.fc.weight"], sd["head.fc.weight"])


def test_urllib_is_the_only_network_path(monkeypatch, tmp_path):
    calls = []

    def fake(*a, **k):
        calls.append(a[0])
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", fake)
    with pytest.raises(CheckpointError):
        resolve_weights("https://example.invalid/w.safetensors", cache=tmp_path)
    assert calls == ["https://example.invalid/w.safetensors"]


def _fake_hf_cache(root, repo: str, file: str, payload: bytes) -> None:
    """The layout huggingface_hub keeps: models--ORG--NAME/{refs/main, snapshots/<commit>/FILE}."""
    base = root / ("models--" + repo.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    (base / "snapshots" / commit).mkdir(parents=True)
    (base / "snapshots" / commit / file).write_bytes(payload)


def test_timm_weights_come_from_the_hugging_face_cache_offline(tmp_path, monkeypatch):
    """A researcher's warm timm cache is used with no network (HF_HUB_OFFLINE): the spec names the hub
    repository, and the weights load from the cache, not from any mamba-bench folder."""
    from mamba_bench.eval.predict import predict_images

    spec = get_spec("test_convnext.r160_in1k")
    assert spec.hf_hub_id == "timm/test_convnext.r160_in1k"
    net = spec.build()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.02, generator=torch.Generator().manual_seed(3))
    ckpt = tmp_path / "w.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(ckpt))
    _fake_hf_cache(tmp_path / "hf", spec.hf_hub_id, "model.safetensors", ckpt.read_bytes())
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hfc

    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", True)
    img = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (180, 200, 3), dtype=np.uint8)).save(img)
    res, errors = predict_images("test_convnext.r160_in1k", [str(img)], topk=3, device="cpu")
    assert not errors
    from mamba_bench.models.preprocess import image_for_spec, to_model_input

    x = torch.from_numpy(image_for_spec(Image.open(img).convert("RGB"), spec))[None]

    with torch.inference_mode():
        want = net.eval()(to_model_input(x, spec, torch.device("cpu")))[0]
    assert res[0]["topk"][0]["index"] == int(want.argmax())
    assert res[0]["topk"][0]["logit"] == pytest.approx(float(want.max()), rel=1e-5)


def test_hf_weights_missing_offline_name_the_file(tmp_path, monkeypatch):
    import huggingface_hub.constants as hfc

    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError) as exc:
        resolve_weights("hf-hub:timm/convnext_tiny.fb_in1k")
    msg = str(exc.value)
    assert "not in the local Hugging Face cache" in msg and "--weights /path/to/model.safetensors" in msg


def test_release_urls_use_torch_hub_cache(tmp_path, monkeypatch):
    """Without a mamba-bench cache, a release file goes where torch.hub keeps it ($TORCH_HOME), so a file
    torch.hub.load_state_dict_from_url already fetched is found offline."""
    monkeypatch.delenv("MAMBA_BENCH_CACHE", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / "vssm_base_0229_ckpt_epoch_237.pth").write_bytes(b"cached")
    url = "http://127.0.0.1:9/MzeroMiko/VMamba/releases/download/%23v2cls/vssm_base_0229_ckpt_epoch_237.pth"
    assert resolve_weights(url) == hub / "vssm_base_0229_ckpt_epoch_237.pth"
    with pytest.raises(CheckpointError, match=f"or put it in {hub}"):
        resolve_weights("http://127.0.0.1:9/other.pth")
