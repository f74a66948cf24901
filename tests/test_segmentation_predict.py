"""A trained segmentation model in use: load_model rebuilds a segmentation run's segmenter, predict gives masks at
each image's own size, and pvt-np predict --masks-dir writes PNG masks the folder loader reads back.

A one-epoch run on eight 32x32 generated scenes (a tiny backbone, a Semantic FPN head on the stride-32 map alone)
gives the checkpoints.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import pvt_np
from pvt_np import cli
from pvt_np.data.segmentation import SegmentationBatches, load_segmentation_folder
from pvt_np.inference import segmentation_input_size
from pvt_np.io.checkpoint import load_checkpoint, save_checkpoint
from pvt_np.io.load import WeightsMismatchError, load_weights
from pvt_np.io.npz import save_npz
from pvt_np.models import ModelMeta, SemanticSegmenter
from pvt_np.nn import no_grad
from pvt_np.training.segmentation import MEAN, STD, SegmentationConfig, SegmentationTrainer, predict_masks

TINY = {"depths": (1, 1, 1, 1), "embed_dims": (8, 16, 24, 32), "num_heads": (1, 1, 1, 1)}
HEAD = {"levels": (3,), "fpn_channels": 16, "head_channels": 8, "num_groups": 4}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> SegmentationTrainer:
    config = SegmentationConfig(
        model_overrides={**TINY, **HEAD}, image_size=32, train_subset=8, test_subset=4, epochs=1, batch_size=8,
        progress=False,
    )  # fmt: skip
    trainer = SegmentationTrainer(config, tmp_path_factory.mktemp("run") / "run")
    trainer.fit()
    return trainer


def _normalised(images: np.ndarray) -> np.ndarray:
    """What the run's evaluation feeds the model: its own loader, mean and std."""
    masks = np.zeros(images.shape[:3], np.uint8)
    return SegmentationBatches(images, masks, len(images), shuffle=False, mean=MEAN, std=STD).batch(0, 0).x


def test_load_model_rebuilds_the_run_s_segmenter(trained: SegmentationTrainer) -> None:
    for name in ("last.npz", "best.npz"):
        model = pvt_np.load_model(trained.out / name)
        assert isinstance(model, SemanticSegmenter) and model.model_name == "pvt_v2_b0"
        assert model.head.levels == (3,) and (model.head.fpn_channels, model.head.head_channels) == (16, 8)
        assert model.head.num_groups == 4 and tuple(model.backbone.embed_dims) == TINY["embed_dims"]
        assert model.num_classes == trained.num_classes and model.backbone.num_classes == 0
        saved, ours = trained.model.state_dict(), model.state_dict()
        assert list(ours) == list(saved)
        assert all(np.array_equal(ours[k], saved[k]) and ours[k].dtype == np.float32 for k in saved)
        assert model.meta == ModelMeta(classes=trained.classes, input_size=(32, 32), mean=MEAN, std=STD)
    wide = pvt_np.load_model(trained.out / "last.npz", dtype=np.float64)
    assert wide.dtype == np.float64 and np.array_equal(
        wide.state_dict()["head.conv_seg.weight"], ours["head.conv_seg.weight"]
    )


def test_load_model_is_strict_and_names_the_file(trained: SegmentationTrainer, tmp_path: Path) -> None:
    payload = load_checkpoint(trained.out / "last.npz")
    model_state = payload["model"]
    short = tmp_path / "short.npz"
    save_checkpoint(short, {**payload, "model": {k: v for k, v in model_state.items() if k != "head.conv_seg.bias"}})
    with pytest.raises(WeightsMismatchError, match=r"short\.npz'.*missing keys \(1\): head\.conv_seg\.bias"):
        pvt_np.load_model(short)
    other = tmp_path / "other_levels.npz"
    save_checkpoint(
        other, {**payload, "config": {**payload["config"], "model_overrides": {**TINY, **HEAD, "levels": (2, 3)}}}
    )
    with pytest.raises(
        WeightsMismatchError, match=r"other_levels\.npz'.*missing keys \(10\): head\.lateral_convs\.2\.conv\.weight"
    ):
        pvt_np.load_model(other)
    unknown = tmp_path / "unknown.npz"
    save_checkpoint(unknown, {**payload, "config": {**payload["config"], "model": "pvt_v9"}})
    with pytest.raises(ValueError, match=r"unknown\.npz: the segmentation checkpoint names no model .*'pvt_v9'"):
        pvt_np.load_model(unknown)
    bad = tmp_path / "bad_override.npz"
    save_checkpoint(bad, {**payload, "config": {**payload["config"], "model_overrides": {**TINY, "depth": 3}}})
    with pytest.raises(ValueError, match=r"bad_override\.npz: the run's model_overrides .*\['depth'\]"):
        pvt_np.load_model(bad)
    with pytest.raises(WeightsMismatchError, match=r"last\.npz' is a segmentation run's checkpoint .*load_model"):
        load_weights(pvt_np.create_model("pvt_v2_b0", 0, **TINY), trained.out / "last.npz")


def test_predict_masks_are_the_model_s_argmax(trained: SegmentationTrainer) -> None:
    images = trained.test_split.images
    results = pvt_np.predict(trained.out / "last.npz", images)
    with no_grad():
        expected = predict_masks(trained.model, _normalised(images))
    assert [r.source for r in results] == [f"<image {k}>" for k in range(len(images))]
    for result, mask in zip(results, expected, strict=True):
        assert result.mask.dtype == np.uint8 and result.mask.shape == (32, 32)
        np.testing.assert_array_equal(result.mask, mask)
        assert result.labels == trained.classes
        fractions = result.fractions()
        assert sum(f for _, f in fractions) == pytest.approx(1.0)
        assert [k for k, _ in fractions] == sorted(set(np.unique(mask).tolist()), key=lambda k: -(mask == k).sum())


def test_other_sizes_go_to_the_training_size_and_back(trained: SegmentationTrainer) -> None:
    model = pvt_np.load_model(trained.out / "best.npz", dtype=np.float64)
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    (result,) = pvt_np.predict(model, image)
    fed = np.asarray(Image.fromarray(image).resize((32, 32), Image.BILINEAR))[None]
    x = SegmentationBatches(
        fed, np.zeros((1, 32, 32), np.uint8), 1, shuffle=False, mean=MEAN, std=STD, dtype=np.float64
    )
    with no_grad():
        logits = torch.from_numpy(np.ascontiguousarray(model(x.batch(0, 0).x)))
    expected = F.interpolate(logits, size=(50, 70), mode="bilinear", align_corners=False).argmax(dim=1)[0]
    assert result.mask.shape == (50, 70)
    np.testing.assert_array_equal(result.mask, expected.numpy())


def test_without_a_recorded_size_each_side_goes_to_its_nearest_multiple_of_32(trained: SegmentationTrainer) -> None:
    assert segmentation_input_size(20, 20) == (32, 32)
    assert segmentation_input_size(50, 70) == (64, 64)
    assert segmentation_input_size(48, 80) == (64, 96)
    assert segmentation_input_size(111, 112) == (96, 128)
    model = pvt_np.load_model(trained.out / "last.npz")
    model.meta = ModelMeta(classes=trained.classes, mean=MEAN, std=STD)
    image = np.random.default_rng(2).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    (result,) = pvt_np.predict(model, image)
    (at_64,) = pvt_np.predict(model, image, input_size=(64, 64))
    (at_32,) = pvt_np.predict(model, image, input_size=(32, 32))
    np.testing.assert_array_equal(result.mask, at_64.mask)
    assert not np.array_equal(at_64.mask, at_32.mask)


def test_predict_errors_name_the_argument(trained: SegmentationTrainer, tmp_path: Path) -> None:
    model = pvt_np.load_model(trained.out / "last.npz")
    with pytest.raises(ValueError, match="top_k is for a classification model, got top_k=3"):
        pvt_np.predict(model, [np.zeros((8, 8), np.uint8)], top_k=3)
    with pytest.raises(FileNotFoundError, match=r"image .*nope\.png' does not exist"):
        pvt_np.predict(model, [tmp_path / "nope.png"])
    with pytest.raises(ValueError, match="input 4x4 is too small"):
        pvt_np.predict(model, [np.zeros((8, 8), np.uint8)], input_size=(4, 4))
    model.meta = ModelMeta(classes=trained.classes)
    with pytest.raises(ValueError, match="does not record the normalisation"):
        pvt_np.predict(model, [np.zeros((8, 8), np.uint8)])


def _predict_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(["predict", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_writes_masks_the_folder_loader_reads(
    trained: SegmentationTrainer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images_dir, masks_dir = tmp_path / "data" / "test" / "images", tmp_path / "data" / "test" / "masks"
    images_dir.mkdir(parents=True)
    files = []
    for k, image in enumerate(trained.test_split.images):
        files.append(str(images_dir / f"scene{k}.png"))
        Image.fromarray(image).save(files[-1])
    checkpoint = str(trained.out / "best.npz")
    code, out, err = _predict_cli(capsys, checkpoint, *files, "--masks-dir", str(masks_dir))
    assert code == 0, err
    assert sorted(p.name for p in masks_dir.iterdir()) == [f"scene{k}.png" for k in range(len(files))]  # no temp file
    read = load_segmentation_folder(tmp_path / "data", "test", num_classes=trained.num_classes)
    expected = pvt_np.predict(checkpoint, files)
    assert read.names == tuple(f"scene{k}" for k in range(len(files)))
    np.testing.assert_array_equal(read.masks, np.stack([p.mask for p in expected]))
    np.testing.assert_array_equal(read.images, trained.test_split.images)
    first = expected[0]
    lines = out.splitlines()
    assert lines[0] == f"{files[0]} (32x32) -> {masks_dir / 'scene0.png'}"
    assert len(lines) == sum(1 + len(p.fractions()) for p in expected)
    top_class, top_fraction = first.fractions()[0]
    assert f"{top_fraction:.2%}" in lines[1] and first.labels[top_class] in lines[1]

    code, _, err = _predict_cli(capsys, checkpoint, *files, "--masks-dir", str(masks_dir))
    assert code == 2 and "argument --masks-dir" in err and "scene0.png exists" in err and "--force" in err
    code, out, err = _predict_cli(capsys, checkpoint, files[0], "--masks-dir", str(masks_dir), "--force", "--json")
    assert code == 0, err
    assert json.loads(out) == [{**first.to_dict(), "mask": str(masks_dir / "scene0.png")}]
    code, out, err = _predict_cli(capsys, checkpoint, files[0], "--json")
    assert code == 0 and json.loads(out) == [{**first.to_dict(), "mask": None}]


def test_cli_errors_name_the_flag(
    trained: SegmentationTrainer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = str(trained.out / "last.npz")
    image = tmp_path / "a" / "x.png"
    image.parent.mkdir()
    Image.fromarray(trained.test_split.images[0]).save(image)
    code, _, err = _predict_cli(capsys, checkpoint, str(image), "--top-k", "3")
    assert code == 2 and "argument --top-k: only for a classification model" in err and "last.npz" in err
    code, _, err = _predict_cli(capsys, checkpoint, str(image), "--force")
    assert code == 2 and "argument --force: only with --masks-dir" in err
    twin = tmp_path / "b" / "x.jpg"
    twin.parent.mkdir()
    Image.fromarray(trained.test_split.images[1]).save(twin)
    code, _, err = _predict_cli(capsys, checkpoint, str(image), str(twin), "--masks-dir", str(tmp_path / "m"))
    assert code == 2 and "argument --masks-dir" in err and "would both write" in err and not (tmp_path / "m").exists()
    code, _, err = _predict_cli(capsys, checkpoint, str(image), "missing.png", "--masks-dir", str(tmp_path / "m"))
    assert code == 1 and "image 'missing.png' does not exist" in err and not (tmp_path / "m").exists()
    classifier = save_npz(pvt_np.create_model("pvt_v2_b0", 3, **TINY), tmp_path / "classifier.npz")
    code, _, err = _predict_cli(capsys, str(classifier), str(image), "--masks-dir", str(tmp_path / "m"))
    assert code == 2 and "argument --masks-dir: only for a segmentation model" in err and "classifier.npz" in err


def test_convert_refuses_a_segmentation_checkpoint(
    trained: SegmentationTrainer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["convert", str(trained.out / "last.npz"), str(tmp_path / "out.npz")])
    err = capsys.readouterr().err
    assert code == 1 and "last.npz is a segmentation run's checkpoint" in err and not (tmp_path / "out.npz").exists()
