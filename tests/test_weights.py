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
        record = json.loads(str(z[W.RECORD_KEY]))
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
    bare = W.PyramidVisionTransformerV2(num_classes=3, depths=(1, 1, 1, 1), embed_dims=(8, 16, 24, 32))
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
    with pytest.raises(ValueError, match="no pvt_np model record"):
        W.load_model(plain)


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
        "short.safetensors": b"abc",
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
    fake.write_bytes(b"whatever")
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
    with pytest.raises(ValueError) as info:
        W.load_weights(create_model("pvt_v2_b0", num_classes=NUM_CLASSES), b1)
    msg = str(info.value)
    assert (
        "mis-shaped keys (177)" in msg and "patch_embed.proj.weight: expected (32, 3, 7, 7), got (64, 3, 7, 7)" in msg
    )
    assert "hint: the checkpoint looks like pvt_v2_b1" in msg and "the model is pvt_v2_b0" in msg
    # different depths: missing/unexpected blocks, official layout too
    b2 = W.timm_to_official(create_model("pvt_v2_b2_li", num_classes=NUM_CLASSES).state_dict())
    with pytest.raises(ValueError) as info:
        W.load_weights(create_model("pvt_v2_b0", num_classes=NUM_CLASSES), b2)
    msg = str(info.value)
    assert "unexpected keys" in msg and "block3.5.norm1.weight (pvt_np: stages.2.blocks.5.norm1.weight)" in msg
    assert "looks like pvt_v2_b2_li" in msg and "with linear SRA" in msg
    # a pvt_np file names the model it was saved from
    with pytest.raises(ValueError, match="the file was saved from pvt_v2_b0"):
        W.load_weights(create_model("pvt_v2_b1", num_classes=NUM_CLASSES), b0_npz)
    # a different head size
    with pytest.raises(ValueError, match="head has 10 classes, the model's 3: build the model with num_classes=10"):
        W.load_weights(create_model("pvt_v2_b0", num_classes=3), b0_npz)


def test_not_a_state_dict():
    model = create_model("pvt_v2_b0", num_classes=2)
    with pytest.raises(ValueError, match="no state_dict found: entries that are not tensors: epoch"):
        W.load_weights(model, {"epoch": 3, "weights": np.zeros(2)})
    with pytest.raises(ValueError, match="holds no tensors"):
        W.load_weights(model, {})
    with pytest.raises(ValueError, match=r"PVT v2 stage keys .* found"):
        W.load_weights(model, {"fc.weight": np.zeros((2, 2))})


@needs_torch
def test_corrupt_and_odd_pth(tmp_path):
    model = create_model("pvt_v2_b0", num_classes=2)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"this is not a pickle" * 10)
    with pytest.raises(ValueError, match=r"cannot read .*bad\.pth as a PyTorch checkpoint"):
        W.load_weights(model, bad)
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
        "text.npz": b"hello",
    }
    np.save(tmp_path / "single.npy", np.zeros(3))
    cases["single.npz"] = (tmp_path / "single.npy").read_bytes()  # a .npy renamed
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=f"cannot read .*{name} as .npz"):
            W.load_weights(model, tmp_path / name)
    record_broken = tmp_path / "record.npz"
    np.savez(record_broken, **{W.RECORD_KEY: np.array("{not json")})
    with pytest.raises(ValueError, match="record is not valid JSON"):
        W.load_model(record_broken)


def test_unknown_extension_and_missing_file(tmp_path):
    model = create_model("pvt_v2_b0", num_classes=2)
    odd = tmp_path / "weights.h5"
    odd.write_bytes(b"x")
    with pytest.raises(ValueError, match=r"unknown checkpoint extension '.h5'; expected one of"):
        W.load_weights(model, odd)
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
    assert rc == 1 and "unknown checkpoint extension" in err
    rc, err = convert(str(b0_npz), str(dst), "--model", "pvt_v2_b1")
    assert rc == 1 and "holds a pvt_v2_b0 but --model is pvt_v2_b1" in err
    rc, err = convert(str(b0_npz), str(dst), "--num-classes", "3")
    assert rc == 1 and "10 classes but --num-classes is 3" in err
    plain = tmp_path / "plain.npz"
    np.savez(plain, **create_model("pvt_v2_b1", num_classes=NUM_CLASSES).state_dict())
    rc, err = convert(str(plain), str(dst))
    assert rc == 2 and "--model is required" in err
    rc, err = convert(str(plain), str(dst), "--model", "pvt_v2_b0")
    assert rc == 1 and "mis-shaped keys (177)" in err and "looks like pvt_v2_b1" in err
    truncated = tmp_path / "trunc.npz"
    truncated.write_bytes(b0_npz.read_bytes()[:1000])
    rc, err = convert(str(truncated), str(dst), "--model", "pvt_v2_b0")
    assert rc == 1 and "truncated or corrupt" in err
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
    assert "mis-shaped" in capsys.readouterr().err and dst.read_bytes() == b"precious"
    assert _files(tmp_path) == ["b1.npz", "b1_plain.npz", "existing.npz"]
    assert cli.main(["convert", str(b0_npz), str(dst), "--force"]) == 0
    assert W.load_model(dst).model_name == "pvt_v2_b0"


def test_cli_convert_without_torch(tmp_path, b0_npz, no_torch, capsys):
    src = tmp_path / "some.pth"
    src.write_bytes(b"not read anyway")
    assert cli.main(["convert", str(src), str(tmp_path / "o.npz"), "--model", "pvt_v2_b0"]) == 1
    assert "pip install 'pvt_np[torch]'" in capsys.readouterr().err
    assert cli.main(["convert", str(b0_npz), str(tmp_path / "o.pth")]) == 1
    assert "needs PyTorch" in capsys.readouterr().err
    assert cli.main(["convert", str(b0_npz), str(tmp_path / "o.safetensors")]) == 0
    assert _files(tmp_path) == ["o.safetensors", "some.pth"]
