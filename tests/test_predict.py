"""From a trained run to a used model: load_model on a run's checkpoints, predict, pvt-np predict.

A one-epoch run on the tiny image folder of tests/training_fixtures.py (16x16 PNGs, four
classes) gives the checkpoints; predict is checked against the evaluation path (same
normalisation, same logits) and on images of other sizes and modes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import training_fixtures as tf
from PIL import Image

import pvt_np
from pvt_np import cli
from pvt_np import weights as W
from pvt_np.data import load_dataset
from pvt_np.inference import prepare_images
from pvt_np.models import ModelMeta
from pvt_np.nn import no_grad

CLASSES = tuple(f"class_{k}" for k in range(tf.NUM_CLASSES))


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tf.write_image_folder(tmp_path_factory.mktemp("data") / "folder")


@pytest.fixture(scope="module")
def run_dir(image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-epoch pvt-np train run of the tiny model."""
    out = tmp_path_factory.mktemp("run") / "run"
    assert cli.main(tf.train_args(image_folder, out, "--no-progress", epochs=1)) == 0
    return out


@pytest.fixture(scope="module")
def odd_images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Images of other sizes and modes: grey 17x40, RGBA 40x17, palette 9x9, RGB 200x120 JPEG."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(3)
    paths = []
    for name, mode, size in (("grey.png", "L", (17, 40)), ("alpha.png", "RGBA", (40, 17)),
                             ("palette.png", "P", (9, 9)), ("big.jpg", "RGB", (200, 120))):  # fmt: skip
        channels = {"L": 1, "RGBA": 4, "P": 1, "RGB": 3}[mode]
        pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8).squeeze(-1 if channels == 1 else ())
        image = Image.fromarray(pixels, "L" if mode == "P" else mode)
        (image.convert("P") if mode == "P" else image).save(root / name)
        paths.append(root / name)
    return paths


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    return np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)


def test_run_checkpoints_rebuild_the_trained_model(run_dir: Path, image_folder: Path) -> None:
    for name in ("best.npz", "last.npz"):
        model = pvt_np.load_model(run_dir / name)
        train = load_dataset("imagefolder", image_folder, "train")
        mean, std = train.mean_std()
        assert model.meta == ModelMeta(CLASSES, (tf.IMAGE_SIZE, tf.IMAGE_SIZE), tuple(mean), tuple(std))
        assert model.model_name == "pvt_v2_b0" and model.num_classes == tf.NUM_CLASSES
        config = W.model_config(model)
        assert (config["patch_size"], config["stride"], config["depths"]) == (3, 2, [1, 1, 1, 1])
        ckpt = W.read_checkpoint(run_dir / name)
        assert ckpt.kind == "training" and ckpt.training["config"]["dataset"] == "imagefolder"
        np.testing.assert_array_equal(model.state_dict()["head.weight"], ckpt.state_dict["head.weight"])
        # load_weights takes the training checkpoint as well
        fresh = pvt_np.create_model("pvt_v2_b0", num_classes=4, cifar=True, **_tiny())
        W.load_weights(fresh, run_dir / name)
        for key, value in model.state_dict().items():
            np.testing.assert_array_equal(fresh.state_dict()[key], value, err_msg=key)


def _tiny() -> dict[str, tuple[int, ...]]:
    return {
        "depths": (1, 1, 1, 1),
        "embed_dims": (8, 16, 16, 16),
        "num_heads": (1, 1, 1, 1),
        "mlp_ratios": (2, 2, 2, 2),
    }


def test_predict_matches_the_evaluation_path(run_dir: Path, image_folder: Path) -> None:
    """Test images at the training size: predict's probabilities are the softmax of evaluate's logits."""
    model = pvt_np.load_model(run_dir / "best.npz")
    test = load_dataset("imagefolder", image_folder, "test")
    loader = test.loader(len(test), shuffle=False, mean=model.meta.mean, std=model.meta.std)
    with no_grad():
        expected = _softmax(model.eval()(loader.batch(0, 0).x))
    model.train()
    predictions = pvt_np.predict(model, test.images, top_k=4)
    assert model.training  # the mode is restored
    for prediction, row in zip(predictions, expected, strict=True):
        assert prediction.indices == tuple(np.argsort(-row, kind="stable"))
        np.testing.assert_allclose(prediction.probabilities, np.sort(row)[::-1], rtol=1e-5, atol=1e-7)
        assert prediction.labels == tuple(CLASSES[i] for i in prediction.indices)
    # files, arrays and PIL images of the same pixels give the same answers
    paths = sorted((image_folder / "test").glob("*/*.png"))[:6]
    pixels = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    by_path = pvt_np.predict(model, paths, top_k=4)
    assert [p.source for p in by_path] == [str(p) for p in paths]
    for images in (pixels, [Image.fromarray(p) for p in pixels]):
        again = pvt_np.predict(model, images, top_k=4)
        assert [(p.indices, p.probabilities) for p in again] == [(p.indices, p.probabilities) for p in by_path]
        assert [p.source for p in again] == [f"<image {k}>" for k in range(len(paths))]


def test_predict_on_odd_sizes_and_modes(run_dir: Path, odd_images: list[Path]) -> None:
    model = pvt_np.load_model(run_dir / "best.npz")
    predictions = pvt_np.predict(model, odd_images, top_k=2)
    assert [p.source for p in predictions] == [str(p) for p in odd_images]
    for p in predictions:
        assert len(p.indices) == 2 and p.probabilities[0] >= p.probabilities[1] > 0
        assert sum(p.probabilities) <= 1 + 1e-9 and set(p.labels) <= set(CLASSES)
    assert len(pvt_np.predict(model, odd_images[0], top_k=99)[0].indices) == tf.NUM_CLASSES  # at most K
    # A grey 40x17 image (height x width) of one value: converted to RGB, covered and cropped, still that value.
    grey = Image.new("L", (17, 40), 100)
    pixels, names = prepare_images([grey, np.full((40, 17, 4), 7, np.uint8)], (16, 16))
    assert pixels.shape == (2, 16, 16, 3) and pixels.dtype == np.uint8 and names == ["<image 0>", "<image 1>"]
    assert (pixels[0] == 100).all() and (pixels[1] == 7).all()
    # 16x48 made of three tiles: no resize is needed, the centre crop is the middle tile.
    tiles = np.concatenate([np.full((16, 16, 3), v, np.uint8) for v in (10, 20, 30)], axis=1)
    assert (prepare_images(tiles, (16, 16))[0] == 20).all()


def test_predict_errors_name_the_argument(run_dir: Path, tmp_path: Path) -> None:
    model = pvt_np.load_model(run_dir / "best.npz")
    with pytest.raises(ValueError, match="top_k must be an int >= 1, got 0"):
        pvt_np.predict(model, [np.zeros((8, 8), np.uint8)], top_k=0)
    with pytest.raises(FileNotFoundError, match=r"image .*nope\.png' does not exist"):
        pvt_np.predict(model, [tmp_path / "nope.png"])
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match=r"cannot read .*notes\.png' as an image"):
        pvt_np.predict(model, [tmp_path / "notes.png"])
    with pytest.raises(ValueError, match=r"must be uint8 \(H, W\).* got float64 \(8, 8\)"):
        pvt_np.predict(model, [np.zeros((8, 8))])
    bare = pvt_np.create_model("pvt_v2_b0", num_classes=3, cifar=True)
    with pytest.raises(ValueError, match=r"does not record its input size .* input_size=\(height, width\)"):
        pvt_np.predict(bare, [np.zeros((8, 8), np.uint8)])
    with pytest.raises(ValueError, match="does not record the normalisation"):
        pvt_np.predict(bare, [np.zeros((8, 8), np.uint8)], input_size=(32, 32))
    with pytest.raises(ValueError, match="input 4x4 is too small"):
        pvt_np.predict(model, [np.zeros((8, 8), np.uint8)], input_size=(4, 4))


def _predict_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(["predict", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_predict(run_dir: Path, odd_images: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    files = [str(p) for p in odd_images]
    code, out, err = _predict_cli(capsys, str(run_dir / "best.npz"), *files, "--json", "--top-k", "3")
    assert code == 0, err
    report = json.loads(out)
    expected = pvt_np.predict(pvt_np.load_model(run_dir / "best.npz"), odd_images, top_k=3)
    assert report == [p.to_dict() for p in expected]
    assert [r["image"] for r in report] == files and all(len(r["top_k"]) == 3 for r in report)
    assert set(report[0]["top_k"][0]) == {"label", "index", "probability"}
    code, out, err = _predict_cli(capsys, str(run_dir / "last.npz"), files[0])
    assert code == 0 and out.splitlines()[0] == files[0] and "class_" in out and "%" in out
    assert len(out.splitlines()) == 1 + tf.NUM_CLASSES  # --top-k 5 shows the 4 classes there are
    code, out, err = _predict_cli(capsys, str(run_dir / "best.npz"), files[0], "--input-size", "24", "20")
    assert code == 0, err


def test_cli_predict_errors(run_dir: Path, odd_images: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    readme = Path(__file__).resolve().parents[1] / "README.md"
    code, _, err = _predict_cli(capsys, str(readme), str(odd_images[0]))
    assert code == 1 and "README.md' is not a checkpoint: it is a text file" in err
    assert "corrupt" not in err and "allow_pickle" not in err
    code, _, err = _predict_cli(capsys, str(run_dir / "best.npz"), "missing.png")
    assert code == 1 and "image 'missing.png' does not exist" in err
    for flag, value in (("--top-k", "0"), ("--top-k", "two"), ("--input-size", "-3")):
        args = [str(run_dir / "best.npz"), str(odd_images[0]), flag, value] + (["16"] if flag == "--input-size" else [])
        with pytest.raises(SystemExit) as stop:
            cli.main(["predict", *args])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and f"argument {flag}: expected an integer >= 1, got" in err and value in err
    if not pvt_np.gpu_available():
        code, _, err = _predict_cli(capsys, str(run_dir / "best.npz"), str(odd_images[0]), "--device", "gpu")
        assert code == 1 and "device='gpu' requested" in err
    with pytest.raises(SystemExit):
        cli.main(["predict", "--help"])
    assert "(default: 5)" in capsys.readouterr().out  # sub-commands' help shows defaults


def test_run_to_used_model(
    run_dir: Path, image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """best.npz -> convert (no --model) -> a weights file that load_model, predict and evaluate use alike;
    and the run continues from its directory alone."""
    best = run_dir / "best.npz"
    out = tmp_path / "x.safetensors"
    assert cli.main(["convert", str(best), str(out)]) == 0
    assert "pvt_v2_b0 with the CIFAR stem" in capsys.readouterr().out
    from_run, from_weights = pvt_np.load_model(best), pvt_np.load_model(out)
    assert from_weights.meta == from_run.meta and W.model_config(from_weights) == W.model_config(from_run)
    image = np.random.default_rng(0).integers(0, 256, (23, 31, 3), dtype=np.uint8)
    assert pvt_np.predict(from_weights, image) == pvt_np.predict(from_run, image)
    assert cli.main(["evaluate", str(best)]) == 0
    by_run = capsys.readouterr().out.splitlines()[1]
    assert cli.main(["evaluate", str(out), "--dataset", "imagefolder", "--data-path", str(image_folder)]) == 0
    assert capsys.readouterr().out.splitlines()[1] == by_run  # the same loss and accuracy
    assert cli.main(["evaluate", str(out)]) == 1
    assert "is a weights file, which does not record the data" in capsys.readouterr().err
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    before = (copy / "last.npz").read_bytes()
    # Every setting comes from the run's config.json.
    assert cli.main(["train", "--resume", "--output", str(copy), "--no-progress"]) == 0
    assert "done: test accuracy" in capsys.readouterr().out
    assert (copy / "last.npz").read_bytes() == before  # the run had ended: nothing more to train


def test_import_reaches_every_public_submodule_lazily() -> None:
    code = (
        "import sys, pvt_np\n"
        "assert not [m for m in sys.modules if m.startswith('pvt_np.')], 'import pvt_np imported submodules'\n"
        "pvt_np.weights.load_weights, pvt_np.training.Trainer, pvt_np.optim.AdamW, pvt_np.data.load_dataset\n"
        "pvt_np.complexity.count_flops, pvt_np.bench, pvt_np.load_model, pvt_np.predict, pvt_np.create_model\n"
        "assert set(pvt_np.__all__) <= set(dir(pvt_np))\n"
        "[getattr(pvt_np, name) for name in pvt_np.__all__]\n"
        "try:\n    pvt_np.no_such_thing\nexcept AttributeError as err:\n    assert 'no_such_thing' in str(err)\n"
        "else:\n    raise SystemExit('no AttributeError')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=tf.child_env())
    assert result.returncode == 0, result.stderr
