"""Checkpoint I/O: timm / official whai362/PVT / .npz / .safetensors, exports, and ``pvt-np convert``.

Pretrained weights cannot be downloaded here, so checkpoints come from randomly initialised
timm models (small heads); the official layout is built from a timm state_dict with the
inverse of timm's ``checkpoint_filter_fn``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from pvt_np import cli, create_model
from pvt_np import weights as W
from pvt_np.io.record import RECORD_FORMAT_VERSION, RECORD_KEY
from pvt_np.models import ModelMeta, PyramidVisionTransformerV2

try:
    import timm
    import torch
    from timm.models.pvt_v2 import checkpoint_filter_fn
except ImportError:  # torch and timm are test extras
    torch = timm = checkpoint_filter_fn = None

needs_torch = pytest.mark.skipif(torch is None, reason="needs torch and timm (test extra)")

NUM_CLASSES = 10


# ---------------------------------------------------------------------------
# helpers and fixtures
# ---------------------------------------------------------------------------
def _timm_model(name: str, num_classes: int = NUM_CLASSES, seed: int = 0):
    torch.manual_seed(seed)
    model = timm.create_model(name, num_classes=num_classes)
    with torch.no_grad():  # timm zero-inits biases; make every tensor distinctive
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.eval()


@pytest.fixture(scope="module")
def timm_b0():
    if torch is None:
        pytest.skip("needs torch and timm (test extra)")
    return _timm_model("pvt_v2_b0")


@pytest.fixture(scope="module")
def timm_b0_sd(timm_b0) -> OrderedDict:
    return OrderedDict((k, v.detach().clone()) for k, v in timm_b0.state_dict().items())


@pytest.fixture(scope="module")
def b0_npz(tmp_path_factory) -> Path:
    """A pvt_np .npz of a b0 with 10 classes (no torch needed)."""
    path = tmp_path_factory.mktemp("npz") / "b0.npz"
    return W.save_npz(create_model("pvt_v2_b0", num_classes=NUM_CLASSES, seed=3), path)


@pytest.fixture
def no_torch(monkeypatch):
    """Make ``import torch`` fail, as on an installation without the torch extra."""
    for name in [m for m in sys.modules if m == "torch" or m.startswith("torch.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "torch", None)


@pytest.fixture
def no_safetensors(monkeypatch):
    """Make ``import safetensors`` fail, so the pure-Python reader/writer is used."""
    for name in [m for m in sys.modules if m == "safetensors" or m.startswith("safetensors.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)


def _assert_same_weights(model, expected) -> None:
    got = model.state_dict()
    assert list(got) == list(expected)
    for k, v in expected.items():
        v = v.numpy() if hasattr(v, "numpy") else np.asarray(v)
        np.testing.assert_array_equal(got[k], v, err_msg=k)


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# ---------------------------------------------------------------------------
# timm round trip and the official layout
# ---------------------------------------------------------------------------
@needs_torch
@pytest.mark.parametrize("name", ["pvt_v2_b0", "pvt_v2_b2_li"])
def test_timm_round_trip_is_bitwise(name):
    tm = _timm_model(name, seed=1)
    sd = tm.state_dict()
    model = W.load_weights(create_model(name, num_classes=NUM_CLASSES), sd)
    out = W.export_timm_state_dict(model)
    assert list(out) == list(sd)
    for k, v in sd.items():
        assert isinstance(out[k], torch.Tensor) and out[k].dtype == v.dtype and out[k].shape == v.shape
        assert torch.equal(out[k], v), k
    fresh = timm.create_model(name, num_classes=NUM_CLASSES)
    fresh.load_state_dict(out, strict=True)  # timm accepts the export as is


@needs_torch
@pytest.mark.parametrize("name", ["pvt_v2_b0", "pvt_v2_b2_li"])
def test_official_mapping_equals_timm_checkpoint_filter_fn(name):
    tm = _timm_model(name, seed=2)
    sd = tm.state_dict()
    official = W.timm_to_official(sd)
    keys = list(official)
    assert W.detect_layout(keys) == "official"
    assert {"patch_embed1.proj.weight", "patch_embed4.norm.bias", "norm1.weight", "norm4.bias", "head.weight"} <= set(
        keys
    )
    assert "block1.0.mlp.dwconv.dwconv.weight" in keys and "block4.1.attn.kv.weight" in keys
    assert not any(k.startswith(("stages.", "patch_embed.")) for k in keys)
    if name.endswith("_li"):
        assert "block1.0.attn.sr.weight" in keys and "block4.0.attn.sr.weight" in keys
    ours = W.official_to_timm(official)
    theirs = checkpoint_filter_fn(dict(official), tm)
    assert list(ours) == list(theirs) == list(sd)
    assert all(ours[k] is theirs[k] is official[W.timm_key_to_official(k)] for k in ours)
    # our official export has exactly these keys
    model = W.load_weights(create_model(name, num_classes=NUM_CLASSES), official)
    exported = W.export_official_state_dict(model)
    assert list(exported) == keys
    assert all(torch.equal(exported[k], official[k]) for k in keys)


@needs_torch
def test_official_checkpoint_gives_timm_logits(timm_b0, timm_b0_sd):
    official = W.timm_to_official(timm_b0_sd)
    model = W.load_weights(create_model("pvt_v2_b0", num_classes=NUM_CLASSES), official).eval()
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        expected = timm_b0(torch.from_numpy(x)).numpy()
    got = model(x)
    assert got.shape == (2, NUM_CLASSES)
    rel = np.linalg.norm(got - expected) / np.linalg.norm(expected)
    assert rel < 1e-4, rel


# ---------------------------------------------------------------------------
# .pth files
# ---------------------------------------------------------------------------
@needs_torch
@pytest.mark.parametrize(
    "wrap",
    [
        "plain",
        "model",
        "state_dict_with_training_state",
        "ddp_prefix",
        "official_in_model_ddp",
        "compiled",
    ],
)
def test_pth_with_wrappers(tmp_path, timm_b0_sd, wrap):
    sd = timm_b0_sd
    if wrap == "plain":
        obj = sd
    elif wrap == "model":
        obj = {"model": sd}
    elif wrap == "state_dict_with_training_state":  # timm / DeiT-style training checkpoint
        obj = {"epoch": 3, "arch": "pvt_v2_b0", "state_dict": sd, "args": argparse.Namespace(lr=1e-3, opt="adamw")}
    elif wrap == "ddp_prefix":
        obj = {"state_dict": {f"module.{k}": v for k, v in sd.items()}}
    elif wrap == "compiled":
        obj = {f"_orig_mod.{k}": v for k, v in sd.items()}
    else:
        obj = {"model": {f"module.{k}": v for k, v in W.timm_to_official(sd).items()}, "epoch": 299}
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    model = W.load_weights(create_model("pvt_v2_b0", num_classes=NUM_CLASSES), path)
    _assert_same_weights(model, sd)


@needs_torch
def test_save_timm_and_official_checkpoints(tmp_path, timm_b0_sd):
    model = W.load_weights(create_model("pvt_v2_b0", num_classes=NUM_CLASSES), timm_b0_sd)
    timm_path = W.save_timm_checkpoint(model, tmp_path / "timm.pth")
    official_path = W.save_official_checkpoint(model, tmp_path / "official.pth")
    loaded = torch.load(timm_path, weights_only=True)
    assert list(loaded) == list(timm_b0_sd) and all(torch.equal(loaded[k], v) for k, v in timm_b0_sd.items())
    fresh = timm.create_model("pvt_v2_b0", num_classes=NUM_CLASSES)
    fresh.load_state_dict(loaded, strict=True)
    official = torch.load(official_path, weights_only=True)
    assert W.detect_layout(official) == "official"
    _assert_same_weights(W.load_weights(create_model("pvt_v2_b0", num_classes=NUM_CLASSES), official_path), loaded)
    assert _files(tmp_path) == ["official.pth", "timm.pth"]  # no temporary files left


@needs_torch
def test_half_precision_tensors_are_cast(timm_b0_sd):
    for dtype in (torch.float16, torch.bfloat16):
        sd = {k: v.to(dtype) for k, v in timm_b0_sd.items()}
        model = W.load_weights(create_model("pvt_v2_b0", num_classes=NUM_CLASSES), sd)
        assert model.dtype == np.float32
        np.testing.assert_array_equal(model.state_dict()["head.weight"], sd["head.weight"].float().numpy())


class _Opaque:
    """A class torch's weights_only unpickler does not allow."""


@needs_torch
def test_pickled_objects_need_trust(tmp_path, timm_b0_sd):
    path = tmp_path / "full.pth"
    torch.save({"model": dict(timm_b0_sd), "extra": _Opaque()}, path)
    with pytest.raises(ValueError, match="trust_pickle=True"):
        W.load_weights(create_model("pvt_v2_b0", num_classes=NUM_CLASSES), path)
    model = W.load_weights(create_model("pvt_v2_b0", num_classes=NUM_CLASSES), path, trust_pickle=True)
    _assert_same_weights(model, timm_b0_sd)


# ---------------------------------------------------------------------------
# .npz and load_model
# ---------------------------------------------------------------------------
def test_npz_round_trip_with_config(tmp_path):
    model = create_model("pvt_v2_b0", num_classes=7, cifar=True, seed=5, dtype=np.float64)
    path = W.save_npz(model, tmp_path / "sub" / "m.npz")
    assert _files(path.parent) == ["m.npz"]
    with np.load(path, allow_pickle=False) as z:
        record = json.loads(str(z[RECORD_KEY]))
    assert record["model_name"] == "pvt_v2_b0" and record["dtype"] == "float64"
    assert record["config"] == W.model_config(model)
    assert record["config"]["patch_size"] == 3 and record["config"]["sr_ratios"] == [4, 2, 1, 1]

    loaded = W.load_model(path)
    assert loaded.model_name == "pvt_v2_b0" and loaded.dtype == np.float64 and loaded.num_classes == 7
    assert W.model_config(loaded) == W.model_config(model)
    _assert_same_weights(loaded, model.state_dict())
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32))
    np.testing.assert_array_equal(loaded.eval()(x), model.eval()(x))
    assert W.load_model(path, dtype=np.float32).dtype == np.float32
    # a model built by hand (no registered name) rebuilds from its config alone
    bare = PyramidVisionTransformerV2(num_classes=3, depths=(1, 1, 1, 1), embed_dims=(8, 16, 24, 32))
    bare_path = W.save_npz(bare, tmp_path / "bare.npz")
    rebuilt = W.load_model(bare_path)
    assert W.model_config(rebuilt) == W.model_config(bare)
    _assert_same_weights(rebuilt, bare.state_dict())


def test_npz_into_existing_model_and_no_record(tmp_path, b0_npz):
    model = W.load_weights(create_model("pvt_v2_b0", num_classes=NUM_CLASSES), b0_npz)
    _assert_same_weights(model, create_model("pvt_v2_b0", num_classes=NUM_CLASSES, seed=3).state_dict())
    plain = tmp_path / "plain.npz"
    np.savez(plain, **model.state_dict())
    _assert_same_weights(W.load_weights(create_model("pvt_v2_b0", num_classes=NUM_CLASSES), plain), model.state_dict())
    # a file without a record is recognised from its shapes, with ImageNet's preprocessing
    recognised = W.load_model(plain)
    assert recognised.model_name == "pvt_v2_b0" and W.model_config(recognised) == W.model_config(model)
    assert recognised.meta == W.IMAGENET_META
    _assert_same_weights(recognised, model.state_dict())
    custom = PyramidVisionTransformerV2(num_classes=3, depths=(1, 1, 1, 1), embed_dims=(8, 16, 24, 32))
    np.savez(tmp_path / "custom.npz", **custom.state_dict())
    with pytest.raises(W.UnknownArchitectureError, match=r"does not record .* match no registered variant"):
        W.load_model(tmp_path / "custom.npz")


def test_save_npz_failure_keeps_previous_file(tmp_path, b0_npz, monkeypatch):
    target = tmp_path / "keep.npz"
    target.write_bytes(b0_npz.read_bytes())
    before = target.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        W.save_npz(create_model("pvt_v2_b0", num_classes=2), target)
    assert target.read_bytes() == before and _files(tmp_path) == ["keep.npz"]


# ---------------------------------------------------------------------------
# .safetensors
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("writer", ["package", "pure"])
@pytest.mark.parametrize("reader", ["package", "pure"])
def test_safetensors_round_trip(tmp_path, monkeypatch, writer, reader):
    pytest.importorskip("safetensors")
    model = create_model("pvt_v2_b0", num_classes=4, seed=7)
    path = tmp_path / "m.safetensors"
    with monkeypatch.context() as m:
        if writer == "pure":
            m.setitem(sys.modules, "safetensors", None)
            m.setitem(sys.modules, "safetensors.numpy", None)
        W.save_safetensors(model, path)
    if reader == "pure":
        monkeypatch.setitem(sys.modules, "safetensors", None)
        monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    else:
        from safetensors.numpy import load_file

        assert set(load_file(str(path))) == set(model.state_dict())  # the package accepts our file
    loaded = W.load_model(path)
    assert W.model_config(loaded) == W.model_config(model)
    _assert_same_weights(loaded, model.state_dict())


def test_safetensors_without_torch_or_package(tmp_path, no_torch, no_safetensors):
    model = create_model("pvt_v2_b0", num_classes=4, seed=8)
    path = W.save_safetensors(model, tmp_path / "official.safetensors", layout="official")
    ckpt = W.read_checkpoint(path)
    assert W.detect_layout(ckpt.state_dict) == "official"
    _assert_same_weights(W.load_weights(create_model("pvt_v2_b0", num_classes=4), path), model.state_dict())


@needs_torch
def test_safetensors_written_by_torch_including_bf16(tmp_path, timm_b0_sd, monkeypatch):
    st_torch = pytest.importorskip("safetensors.torch")
    path = tmp_path / "bf16.safetensors"
    st_torch.save_file({k: v.to(torch.bfloat16) for k, v in timm_b0_sd.items()}, str(path))
    expected = timm_b0_sd["head.weight"].to(torch.bfloat16).float().numpy()
    for blocked in (False, True):  # the package's NumPy API cannot hold bfloat16: the reader here takes over
        if blocked:
            monkeypatch.setitem(sys.modules, "safetensors", None)
        model = W.load_weights(create_model("pvt_v2_b0", num_classes=NUM_CLASSES), path)
        np.testing.assert_array_equal(model.state_dict()["head.weight"], expected)


@pytest.mark.parametrize("reader", ["package", "pure"])
def test_safetensors_truncated_or_corrupt(tmp_path, monkeypatch, reader):
    if reader == "pure":
        monkeypatch.setitem(sys.modules, "safetensors", None)
    model = create_model("pvt_v2_b0", num_classes=2)
    good = W.save_safetensors(model, tmp_path / "good.safetensors").read_bytes()
    cases = {
        "truncated.safetensors": good[: len(good) // 2],
        "garbage.safetensors": b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!",
        "short.safetensors": b"\x01\x02\x03",
        "huge_header.safetensors": (10**12).to_bytes(8, "little") + b"{}",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=r"cannot read .* as \.safetensors"):
            W.load_weights(model, tmp_path / name)


# ---------------------------------------------------------------------------
# without torch
# ---------------------------------------------------------------------------
def test_without_torch(tmp_path, no_torch, b0_npz):
    model = create_model("pvt_v2_b0", num_classes=NUM_CLASSES)
    W.load_weights(model, b0_npz)  # .npz needs no torch
    fake = tmp_path / "x.pth"
    fake.write_bytes(b"\x80\x02 a legacy torch pickle")
    for call in (
        lambda: W.load_weights(model, fake),
        lambda: W.export_timm_state_dict(model),
        lambda: W.save_timm_checkpoint(model, tmp_path / "out.pth"),
        lambda: W.save_official_checkpoint(model, tmp_path / "off.pth"),
    ):
        with pytest.raises(ImportError, match=r"pip install 'pvt_np\[torch\]'"):
            call()
    assert _files(tmp_path) == ["x.pth"]


# ---------------------------------------------------------------------------
# bad inputs
# ---------------------------------------------------------------------------
def _b0_state(num_classes: int = NUM_CLASSES) -> OrderedDict:
    return create_model("pvt_v2_b0", num_classes=num_classes, seed=4).state_dict()


def test_missing_unexpected_and_mis_shaped_keys_all_named():
    sd = _b0_state()
    del sd["stages.1.blocks.0.attn.q.weight"], sd["head.bias"]
    sd["stages.0.blocks.0.attn.extra"] = np.zeros(3, np.float32)
    sd["stages.2.norm.weight"] = np.zeros(5, np.float32)
    model = create_model("pvt_v2_b0", num_classes=NUM_CLASSES)
    before = model.state_dict()
    with pytest.raises(ValueError) as info:
        W.load_weights(model, sd)
    msg = str(info.value)
    assert "missing keys (2): stages.1.blocks.0.attn.q.weight, head.bias" in msg
    assert "unexpected keys (1): stages.0.blocks.0.attn.extra" in msg
    assert "mis-shaped keys (1): stages.2.norm.weight: expected (160,), got (5,)" in msg
    _assert_same_weights(model, before)  # nothing was loaded
    # strict=False ignores missing and unexpected keys, never shapes
    with pytest.raises(ValueError, match="mis-shaped keys"):
        W.load_weights(model, sd, strict=False)
    del sd["stages.2.norm.weight"]
    W.load_weights(model, sd, strict=False)
    np.testing.assert_array_equal(model.state_dict()["head.weight"], sd["head.weight"])
    np.testing.assert_array_equal(model.state_dict()["head.bias"], before["head.bias"])


def test_official_layout_errors_use_official_names():
    official = W.timm_to_official(_b0_state())
    del official["block2.1.mlp.dwconv.dwconv.bias"]
    official["block1.0.attn.bogus.weight"] = np.zeros(2, np.float32)
    official["norm3.weight"] = np.zeros(4, np.float32)
    with pytest.raises(ValueError) as info:
        W.load_weights(create_model("pvt_v2_b0", num_classes=NUM_CLASSES), official)
    msg = str(info.value)
    assert "official whai362/PVT key layout" in msg
    assert "missing keys (1): block2.1.mlp.dwconv.dwconv.bias (pvt_np: stages.1.blocks.1.mlp.dwconv.bias)" in msg
    assert "unexpected keys (1): block1.0.attn.bogus.weight (pvt_np: stages.0.blocks.0.attn.bogus.weight)" in msg
    assert "norm3.weight (pvt_np: stages.2.norm.weight): expected (160,), got (4,)" in msg


def test_other_models_checkpoint_is_a_clear_error(b0_npz):
    b1 = create_model("pvt_v2_b1", num_classes=NUM_CLASSES).state_dict()
    with pytest.raises(W.WeightsMismatchError) as info:
        W.load_weights(create_model("pvt_v2_b0", num_classes=NUM_CLASSES), b1)
    msg = str(info.value)
    assert "\n" not in msg and len(msg) < 400, msg  # one line naming the variant, not 177 keys
    assert msg.startswith("load_weights: the state_dict looks like pvt_v2_b1, 10 classes, but the model is pvt_v2_b0")
    assert "embed_dims (64, 128, 320, 512) vs (32, 64, 160, 256)" in msg and "177 keys do not fit" in msg
    details = "\n".join(info.value.details)  # the full list, on request
    assert "mis-shaped keys (177)" in details
    assert "patch_embed.proj.weight: expected (32, 3, 7, 7), got (64, 3, 7, 7)" in details
    # different depths, official layout, linear SRA
    b2 = W.timm_to_official(create_model("pvt_v2_b2_li", num_classes=NUM_CLASSES).state_dict())
    with pytest.raises(W.WeightsMismatchError) as info:
        W.load_weights(create_model("pvt_v2_b0", num_classes=NUM_CLASSES), b2)
    msg = str(info.value)
    assert "\n" not in msg and "looks like pvt_v2_b2_li" in msg and "linear True vs False" in msg
    assert "block3.5.norm1.weight (pvt_np: stages.2.blocks.5.norm1.weight)" in "\n".join(info.value.details)
    # a pvt_np file says what it holds, and how to get that model
    with pytest.raises(W.WeightsMismatchError) as info:
        W.load_weights(create_model("pvt_v2_b1", num_classes=NUM_CLASSES), b0_npz)
    msg = str(info.value)
    assert "holds pvt_v2_b0, 10 classes, but the model is pvt_v2_b1" in msg
    assert f"pvt_np.load_model({str(b0_npz)!r}) builds the model it holds" in msg
    # a different head size
    with pytest.raises(W.WeightsMismatchError, match=r"holds pvt_v2_b0, 10 classes, but the model is pvt_v2_b0, 3 "):
        W.load_weights(create_model("pvt_v2_b0", num_classes=3), b0_npz)
    # the CIFAR stem, from the shapes alone
    cifar = create_model("pvt_v2_b0", num_classes=NUM_CLASSES, cifar=True).state_dict()
    with pytest.raises(W.WeightsMismatchError) as info:
        W.load_weights(create_model("pvt_v2_b0", num_classes=NUM_CLASSES), cifar)
    msg = str(info.value)
    assert "looks like pvt_v2_b0 with the CIFAR stem (3x3 stride 2), sr_ratios (4, 2, 1, 1), 10 classes" in msg
    assert "patch_size 3 vs 7" in msg and "\n" not in msg


def test_not_a_state_dict():
    model = create_model("pvt_v2_b0", num_classes=2)
    with pytest.raises(ValueError, match="no state_dict found: entries that are not tensors: epoch"):
        W.load_weights(model, {"epoch": 3, "weights": np.zeros(2)})
    with pytest.raises(ValueError, match="holds no tensors"):
        W.load_weights(model, {})
    with pytest.raises(ValueError, match=r"holds no PVT v2 weights: none of its 1 keys .* first keys: fc.weight"):
        W.load_weights(model, {"fc.weight": np.zeros((2, 2))})


@needs_torch
def test_corrupt_and_odd_pth(tmp_path):
    model = create_model("pvt_v2_b0", num_classes=2)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x80\x02 this is not a pickle" * 10)
    with pytest.raises(ValueError, match=r"cannot read .*bad\.pth as a PyTorch checkpoint"):
        W.load_weights(model, bad)
    text = tmp_path / "notes.pth"
    text.write_text("this is not a pickle\n")
    with pytest.raises(ValueError, match=r"notes\.pth' is not a checkpoint: it is a text file starting 'this is"):
        W.load_weights(model, text)
    listed = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], listed)
    with pytest.raises(ValueError, match="expected a mapping of parameter names to tensors, got list"):
        W.load_weights(model, listed)


def test_corrupt_and_truncated_npz(tmp_path, b0_npz):
    model = create_model("pvt_v2_b0", num_classes=NUM_CLASSES)
    data = b0_npz.read_bytes()
    cases = {
        "truncated.npz": data[: len(data) // 2],
        "tail_cut.npz": data[:-10],
        "garbage.npz": b"PK\x03\x04 definitely not a zip archive",
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=f"cannot read .*{name} as .npz"):
            W.load_weights(model, tmp_path / name)
    np.save(tmp_path / "single.npy", np.zeros(3))
    (tmp_path / "single.npz").write_bytes((tmp_path / "single.npy").read_bytes())  # a .npy renamed
    with pytest.raises(ValueError, match=r"single\.npz' is not a checkpoint: it holds a single \.npy array"):
        W.load_weights(model, tmp_path / "single.npz")
    (tmp_path / "text.npz").write_bytes(b"hello")
    with pytest.raises(ValueError, match=r"text\.npz' is not a checkpoint: it is a text file starting 'hello'"):
        W.load_weights(model, tmp_path / "text.npz")
    record_broken = tmp_path / "record.npz"
    np.savez(record_broken, **{RECORD_KEY: np.array("{not json")})
    with pytest.raises(ValueError, match="record is not valid JSON"):
        W.load_model(record_broken)


def test_files_are_told_apart_by_content_and_missing_file(tmp_path, b0_npz):
    model = create_model("pvt_v2_b0", num_classes=NUM_CLASSES)
    odd = tmp_path / "weights.h5"
    odd.write_bytes(b"\x00\x01\x02 binary")
    with pytest.raises(ValueError, match=r"weights.h5' is not a checkpoint: its content is none of the checkpoint"):
        W.load_weights(model, odd)
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty.npz' is not a checkpoint: it is empty"):
        W.load_weights(model, tmp_path / "empty.npz")
    renamed = tmp_path / "weights.bin"  # an .npz under another name still loads
    renamed.write_bytes(b0_npz.read_bytes())
    _assert_same_weights(W.load_weights(model, renamed), W.load_model(b0_npz).state_dict())
    with pytest.raises(FileNotFoundError, match="does not exist"):
        W.load_weights(model, tmp_path / "nope.npz")


# ---------------------------------------------------------------------------
# pvt-np convert
# ---------------------------------------------------------------------------
@needs_torch
def test_cli_convert_formats(tmp_path, timm_b0_sd, capsys):
    src = tmp_path / "timm.pth"
    torch.save({"model": W.timm_to_official(timm_b0_sd)}, src)
    npz = tmp_path / "out.npz"
    assert cli.main(["convert", str(src), str(npz), "--model", "pvt_v2_b0"]) == 0  # num_classes from the head
    assert f"wrote {npz} (npz, 178 tensors, pvt_v2_b0, 10 classes)" in capsys.readouterr().out
    loaded = W.load_model(npz)
    _assert_same_weights(loaded, timm_b0_sd)
    # from the .npz no --model is needed; every output format reads back to the same weights
    outputs = {"timm": "t.pth", "official": "o.pt", "safetensors": "s.safetensors", "npz": "n.npz"}
    for fmt, name in outputs.items():
        assert cli.main(["convert", str(npz), str(tmp_path / name), "--to", fmt]) == 0, capsys.readouterr().err
        back = W.load_weights(create_model("pvt_v2_b0", num_classes=NUM_CLASSES), tmp_path / name)
        _assert_same_weights(back, timm_b0_sd)
    assert W.detect_layout(torch.load(tmp_path / "o.pt", weights_only=True)) == "official"
    timm.create_model("pvt_v2_b0", num_classes=NUM_CLASSES).load_state_dict(
        torch.load(tmp_path / "t.pth", weights_only=True), strict=True
    )
    assert not [n for n in _files(tmp_path) if n.endswith(".tmp")]


def test_cli_convert_errors(tmp_path, b0_npz, capsys):
    def convert(*argv: str) -> tuple[int, str]:
        rc = cli.main(["convert", *argv])
        return rc, capsys.readouterr().err

    dst = tmp_path / "out.npz"
    rc, err = convert(str(tmp_path / "missing.npz"), str(dst))
    assert rc == 1 and "does not exist" in err
    rc, err = convert(str(b0_npz), str(tmp_path / "out.weird"))
    assert rc == 2 and "cannot tell the output format" in err
    rc, err = convert(str(b0_npz), str(tmp_path / "out.pth"), "--to", "npz")
    assert rc == 2 and "--to npz writes .npz files" in err
    odd = tmp_path / "src.h5"
    odd.write_bytes(b"x")
    rc, err = convert(str(odd), str(dst), "--model", "pvt_v2_b0")
    assert rc == 1 and "is not a checkpoint: it is a text file" in err
    rc, err = convert(str(b0_npz), str(dst), "--model", "pvt_v2_b1")
    assert rc == 1 and "holds a pvt_v2_b0 but --model is pvt_v2_b1" in err
    rc, err = convert(str(b0_npz), str(dst), "--num-classes", "3")
    assert rc == 1 and "10 classes but --num-classes is 3" in err
    custom = tmp_path / "custom.npz"
    np.savez(custom, **PyramidVisionTransformerV2(num_classes=3, depths=(1, 1, 1, 1)).state_dict())
    rc, err = convert(str(custom), str(dst))
    assert rc == 2 and "--model is required" in err and "depths (1, 1, 1, 1), embed_dims (64, 128, 256, 512)" in err
    rc, err = convert(str(custom), str(dst), "--model", "pvt_v2_b0")
    assert rc == 1 and "looks like an unregistered PVT v2" not in err  # no variant matches: the keys are listed
    assert "mis-shaped keys" in err and "... and" in err
    plain = tmp_path / "plain.npz"
    np.savez(plain, **create_model("pvt_v2_b1", num_classes=NUM_CLASSES).state_dict())
    rc, err = convert(str(plain), str(dst), "--model", "pvt_v2_b0")
    assert rc == 1 and "looks like pvt_v2_b1" in err and len(err.splitlines()) == 1
    rc, err = convert(str(plain), str(dst), "--model", "pvt_v2_b0", "--show-keys")
    assert rc == 1 and "looks like pvt_v2_b1" in err and "mis-shaped keys (177)" in err
    truncated = tmp_path / "trunc.npz"
    truncated.write_bytes(b0_npz.read_bytes()[:1000])
    rc, err = convert(str(truncated), str(dst), "--model", "pvt_v2_b0")
    assert rc == 1 and "corrupt or truncated" in err
    assert not dst.exists()
    with pytest.raises(SystemExit) as info:  # argparse rejects an unknown format / model
        cli.main(["convert", str(b0_npz), str(dst), "--to", "onnx"])
    assert info.value.code == 2 and "invalid choice: 'onnx'" in capsys.readouterr().err
    assert not dst.exists()


def test_cli_convert_never_overwrites_on_failure(tmp_path, b0_npz, capsys):
    dst = tmp_path / "existing.npz"
    dst.write_bytes(b"precious")
    assert cli.main(["convert", str(b0_npz), str(dst)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err and dst.read_bytes() == b"precious"
    b1 = tmp_path / "b1.npz"
    W.save_npz(create_model("pvt_v2_b1", num_classes=NUM_CLASSES), b1)
    b1_plain = tmp_path / "b1_plain.npz"
    np.savez(b1_plain, **create_model("pvt_v2_b1", num_classes=NUM_CLASSES).state_dict())
    assert cli.main(["convert", str(b1_plain), str(dst), "--model", "pvt_v2_b0", "--force"]) == 1
    assert "looks like pvt_v2_b1" in capsys.readouterr().err and dst.read_bytes() == b"precious"
    assert _files(tmp_path) == ["b1.npz", "b1_plain.npz", "existing.npz"]
    assert cli.main(["convert", str(b0_npz), str(dst), "--force"]) == 0
    assert W.load_model(dst).model_name == "pvt_v2_b0"


def test_cli_convert_without_torch(tmp_path, b0_npz, no_torch, capsys):
    src = tmp_path / "some.pth"
    src.write_bytes(b"\x80\x02 not read anyway")
    assert cli.main(["convert", str(src), str(tmp_path / "o.npz"), "--model", "pvt_v2_b0"]) == 1
    assert "pip install 'pvt_np[torch]'" in capsys.readouterr().err
    assert cli.main(["convert", str(b0_npz), str(tmp_path / "o.pth")]) == 1
    assert "needs PyTorch" in capsys.readouterr().err
    assert cli.main(["convert", str(b0_npz), str(tmp_path / "o.safetensors")]) == 0
    assert _files(tmp_path) == ["o.safetensors", "some.pth"]


# ---------------------------------------------------------------------------
# one checkpoint story: every file records its model, load_model rebuilds it
# ---------------------------------------------------------------------------
_META = ModelMeta(
    classes=("cat", "dog", "fox", "owl", "eel", "yak", "emu"),
    input_size=(32, 32),
    mean=(0.49, 0.48, 0.45),
    std=(0.25, 0.24, 0.26),
)


def _assert_same_model(loaded, model) -> None:
    assert loaded.model_name == model.model_name and loaded.dtype == model.dtype
    assert W.model_config(loaded) == W.model_config(model)
    assert loaded.meta == model.meta
    _assert_same_weights(loaded, model.state_dict())


@pytest.mark.parametrize("kind", ["npz", "safetensors", "safetensors-official"])
def test_weights_files_record_the_cifar_model(tmp_path, kind):
    model = create_model("pvt_v2_b0", num_classes=7, cifar=True, sr_ratios=(2, 1, 1, 1), seed=5, dtype=np.float64)
    model.meta = _META
    if kind == "npz":
        path = W.save_npz(model, tmp_path / "m.npz")
    else:
        path = W.save_safetensors(
            model, tmp_path / "m.safetensors", layout=kind.split("-")[-1].replace("safetensors", "timm")
        )
    record = W.read_checkpoint(path).record
    assert record["model_name"] == "pvt_v2_b0" and record["dtype"] == "float64"
    assert record["overrides"] == {"sr_ratios": [2, 1, 1, 1], "patch_size": 3, "stride": 2}
    assert record["classes"] == list(_META.classes) and record["input_size"] == [32, 32]
    assert record["mean"] == list(_META.mean) and record["std"] == list(_META.std)
    _assert_same_model(W.load_model(path), model)


@needs_torch
@pytest.mark.parametrize("layout", ["timm", "official"])
def test_pth_files_record_the_model_and_timm_still_loads_them(tmp_path, layout):
    model = create_model("pvt_v2_b0", num_classes=7, sr_ratios=(4, 2, 1, 1), seed=6)
    model.meta = _META
    save = W.save_timm_checkpoint if layout == "timm" else W.save_official_checkpoint
    path = save(model, tmp_path / "m.pth")
    assert W.read_checkpoint(path).record["layout"] == layout
    _assert_same_model(W.load_model(path), model)
    state = torch.load(path, weights_only=True)  # a plain state_dict: the record rides in its _metadata
    if layout == "official":
        state = checkpoint_filter_fn(state, None)
    timm.create_model("pvt_v2_b0", num_classes=7, sr_ratios=(4, 2, 1, 1)).load_state_dict(state, strict=True)
    assert W.timm_constructor(model) == "timm.create_model('pvt_v2_b0', num_classes=7, sr_ratios=(4, 2, 1, 1))"


@needs_torch
def test_foreign_pth_is_recognised_from_its_shapes(tmp_path, timm_b0_sd, capsys):
    torch.save({"state_dict": W.timm_to_official(timm_b0_sd), "epoch": 9}, tmp_path / "official.pth")
    loaded = W.load_model(tmp_path / "official.pth")
    assert loaded.model_name == "pvt_v2_b0" and loaded.num_classes == NUM_CLASSES
    assert W.model_config(loaded) == W.model_config(create_model("pvt_v2_b0", num_classes=NUM_CLASSES))
    assert loaded.meta == W.IMAGENET_META  # what timm's pretrained pvt_v2 expects
    _assert_same_weights(loaded, timm_b0_sd)
    # pvt-np convert needs no --model either; flags that disagree with the shapes are refused
    assert cli.main(["convert", str(tmp_path / "official.pth"), str(tmp_path / "b0.npz")]) == 0
    assert "pvt_v2_b0, 10 classes, recognised from its shapes" in capsys.readouterr().out
    _assert_same_weights(W.load_model(tmp_path / "b0.npz"), timm_b0_sd)
    for flags, message in ((["--num-classes", "3"], "10 classes but --num-classes is 3"),
                           (["--cifar"], "a 7x7 stem, but --cifar was given")):  # fmt: skip
        assert cli.main(["convert", str(tmp_path / "official.pth"), str(tmp_path / "x.npz"), *flags]) == 1
        assert message in capsys.readouterr().err
    li = _timm_model("pvt_v2_b2_li", num_classes=0).state_dict()
    assert W.infer_architecture(li)[0] == "pvt_v2_b2_li"
    assert W.load_model(W.read_checkpoint(li)).num_classes == 0
    # a state_dict read back with torch.load keeps pvt_np's record
    model = create_model("pvt_v2_b0", num_classes=3, sr_ratios=(4, 2, 1, 1), seed=1)
    model.meta = ModelMeta(classes=("a", "b", "c"))
    _assert_same_model(
        W.load_model(W.read_checkpoint(torch.load(W.save_timm_checkpoint(model, tmp_path / "m.pth")))), model
    )


def test_timm_cannot_hold_the_cifar_stem(tmp_path, capsys):
    model = create_model("pvt_v2_b0", num_classes=10, cifar=True)
    assert W.timm_inexpressible(create_model("pvt_v2_b0", num_classes=10, sr_ratios=(4, 2, 1, 1))) is None
    for save in (W.save_timm_checkpoint, W.save_official_checkpoint):
        with pytest.raises(ValueError) as info:
            save(model, tmp_path / "x.pth")
        msg = str(info.value)
        assert "\n" not in msg and "stages." not in msg  # a paragraph, not a list of keys
        assert "the CIFAR stem (3x3 conv, stride 2)" in msg and "always builds the ImageNet stem (7x7 conv" in msg
        assert "Save it as .npz or .safetensors instead" in msg
    src = W.save_npz(model, tmp_path / "cifar.npz")
    assert cli.main(["convert", str(src), str(tmp_path / "x.pth")]) == 1
    err = capsys.readouterr().err
    assert "timm's pvt_v2, like the official whai362/PVT code, always builds the ImageNet stem" in err
    assert len(err.splitlines()) == 1
    assert _files(tmp_path) == ["cifar.npz"]


def test_load_model_does_not_initialise_the_weights(tmp_path, b0_npz, monkeypatch):
    def fail(self, seed=0):
        raise AssertionError("load_model initialised weights it overwrites")

    monkeypatch.setattr(PyramidVisionTransformerV2, "init_weights", fail)
    assert W.load_model(b0_npz).num_classes == NUM_CLASSES
    with pytest.raises(TypeError, match="load_model: unknown argument"):
        W.load_model(b0_npz, num_classes=3)
    model = W.load_model(b0_npz, drop_path_rate=0.1)
    assert model.stages[-1].blocks[-1].drop_path1.p == pytest.approx(0.1)


def test_record_from_a_newer_pvt_np_is_refused(tmp_path):
    model = create_model("pvt_v2_b0", num_classes=2)
    record = W.model_record(model)
    record["format_version"] = RECORD_FORMAT_VERSION + 1
    np.savez(tmp_path / "new.npz", **model.state_dict(), **{RECORD_KEY: np.array(json.dumps(record))})
    with pytest.raises(ValueError, match="written by a newer pvt_np"):
        W.load_model(tmp_path / "new.npz")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": -1}, r"num_classes must be an int >= 0 \(0: no head\), got -1"),
        ({"num_classes": 2.5}, "num_classes must be an int >= 0"),
        ({"drop_path_rate": 1.5}, r"drop_path_rate must be a probability in \[0, 1\), got 1.5"),
        ({"attn_drop_rate": -0.1}, "attn_drop_rate must be a probability"),
        ({"embed_dims": (30, 64, 160, 256), "num_heads": (4, 2, 5, 8)}, "embed_dims.0. = 30 is not divisible by"),
        ({"depths": (2, 0, 2, 2)}, r"depths must hold ints >= 1, got \(2, 0, 2, 2\)"),
        ({"sr_ratios": (8, 4, 2)}, "sr_ratios needs 4 values"),
        ({"patch_size": 2, "stride": 2}, r"patch_size \(2\) must be larger than stride \(2\)"),
        ({"in_chans": 0}, "in_chans must be an int >= 1, got 0"),
        ({"mlp_ratios": (8, 8, 4, 0)}, "mlp_ratios must hold positive numbers"),
        ({"linear": "yes"}, "linear must be True or False"),
        ({"colour": 3}, r"unknown override\(s\) \['colour'\]"),
    ],
)
def test_create_model_rejects_arguments_that_make_no_model(kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_model("pvt_v2_b0", **kwargs)


def test_training_checkpoint_written_before_records_still_loads(tmp_path):
    from pvt_np.io.checkpoint import save_checkpoint

    model = create_model("pvt_v2_b0", num_classes=4, cifar=True, depths=(1, 1, 1, 1), seed=2)
    payload = {  # what pvt_np's trainer wrote before checkpoints carried the model record
        "config": {"model": "pvt_v2_b0", "model_overrides": {"depths": [1, 1, 1, 1], "drop_rate": 0.1},
                   "cifar_stem": True, "dtype": "float32", "dataset": "cifar10", "data_path": "data"},
        "num_classes": 4,
        "classes": ["a", "b", "c", "d"],
        "normalize": {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2]},
        "model": model.state_dict(),
        "optimizer": {"state": {0: {"exp_avg": np.ones(3)}}},
    }  # fmt: skip
    save_checkpoint(tmp_path / "last.npz", payload)
    ckpt = W.read_checkpoint(tmp_path / "last.npz")
    assert ckpt.kind == "training" and ckpt.training["config"]["dataset"] == "cifar10"
    loaded = W.load_model(ckpt)
    assert W.model_config(loaded) == W.model_config(model)
    assert loaded.meta == ModelMeta(("a", "b", "c", "d"), (32, 32), (0.5, 0.4, 0.3), (0.2, 0.2, 0.2))
    _assert_same_weights(loaded, model.state_dict())
    _assert_same_weights(
        W.load_weights(create_model("pvt_v2_b0", 4, cifar=True, depths=(1,) * 4), ckpt.source), model.state_dict()
    )


def test_load_model_draws_no_initial_weights(tmp_path: Path) -> None:
    """load_model builds under nn.skip_init(): no random draw for weights it overwrites, and every weight loaded."""
    from pvt_np import backend, load_model, nn

    model = create_model("pvt_v2_b0", num_classes=10, cifar=True, seed=3)
    path = W.save_npz(model, tmp_path / "b0.npz")
    state = backend.get_rng(np).bit_generator.state
    loaded = load_model(path)
    assert backend.get_rng(np).bit_generator.state == state
    expected = model.state_dict()
    assert all(np.array_equal(v, expected[k]) for k, v in loaded.state_dict().items())
    with nn.skip_init():
        nn.Linear(4, 3)
    assert backend.get_rng(np).bit_generator.state == state
    nn.Linear(4, 3)  # outside the context the default init draws again
    assert backend.get_rng(np).bit_generator.state != state
