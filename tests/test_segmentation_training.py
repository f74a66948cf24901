"""Segmentation training: a run trains and writes its files, resumes bit-exactly, reads an images + masks folder,
and the command refuses bad masks (exit 1, the file named) and classification-only options (exit 2)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pvt_np import cli
from pvt_np.data.segmentation import SegmentationBatches
from pvt_np.io.checkpoint import load_checkpoint
from pvt_np.training.segmentation import MEAN, STD, SegmentationConfig, SegmentationTrainer, predict_masks
from pvt_np.training.validation import ConfigError

TINY = {"depths": (1, 1, 1, 1), "embed_dims": (8, 16, 24, 32), "num_heads": (1, 1, 1, 1)}
TINY_FLAGS = ["--override", "depths=1,1,1,1", "--override", "embed_dims=8,16,24,32", "--override", "num_heads=1,1,1,1"]


def tiny_config(**changes: object) -> SegmentationConfig:
    values = {
        "model_overrides": TINY, "image_size": 32, "train_subset": 24, "test_subset": 8, "epochs": 3,
        "batch_size": 8, "lr": 3e-3, "crop_padding": 4, "progress": False,
    }  # fmt: skip
    return SegmentationConfig(**{**values, **changes})


def write_folder(root: Path, classes: int = 2, n_train: int = 6, n_test: int = 2, size: int = 32) -> Path:
    """``root/<split>/images|masks``: the left half class 0 (dark), the right half class 1 (bright)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for i in range(n):
            mask = np.zeros((size, size), np.uint8)
            mask[:, size // 2 :] = 1
            image = 40.0 + 160.0 * mask[..., None] + rng.normal(0.0, 20.0, (size, size, 3))
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / split / "images" / f"{i:02d}.png")
            Image.fromarray(mask, mode="L").save(root / split / "masks" / f"{i:02d}.png")
    (root / "classes.txt").write_text("".join(f"c{k}\n" for k in range(classes)))
    return root


def test_a_run_trains_and_writes_its_files(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = SegmentationTrainer(tiny_config(), out).fit()
    assert {p.name for p in out.iterdir()} == {"config.json", "metrics.jsonl", "metrics.csv", "last.npz", "best.npz"}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows[-1] == result
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    for row in rows:
        assert 0.0 <= row["test_pixel_accuracy"] <= 1.0 and 0.0 <= row["test_miou"] <= 1.0
        sizes = [row[f"test_iou_{k}"] for k in ("small", "medium", "large")]
        assert all(v is None or 0.0 <= v <= 1.0 for v in sizes)
    best = load_checkpoint(out / "best.npz")
    assert best["best_miou"] == max(r["test_miou"] for r in rows) and best["task"] == "segmentation"
    assert json.loads((out / "config.json").read_text())["task"] == "segmentation"


def test_resume_after_an_interrupted_run_is_bit_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    SegmentationTrainer(tiny_config(), tmp_path / "reference").fit()
    out = tmp_path / "run"
    trainer = SegmentationTrainer(tiny_config(), out)
    step = SegmentationTrainer.train_step
    steps = []

    def stopping_step(self: SegmentationTrainer, x: object, y: object) -> float:
        steps.append(1)
        if len(steps) == 5:  # Ctrl-C during the 2nd step of epoch 2 (3 steps an epoch)
            self._request_stop()
        return step(self, x, y)

    monkeypatch.setattr(SegmentationTrainer, "train_step", stopping_step)
    with pytest.raises(KeyboardInterrupt, match="epoch 2, batch 2"):
        trainer.fit()
    monkeypatch.undo()
    saved = load_checkpoint(out / "last.npz")
    assert (saved["progress"]["epoch"], saved["progress"]["batch"]) == (1, 2)
    SegmentationTrainer(tiny_config(), out, resume=True).fit()
    ours, theirs = load_checkpoint(out / "last.npz"), load_checkpoint(tmp_path / "reference" / "last.npz")
    assert ours["model"].keys() == theirs["model"].keys()
    for key in ours["model"]:
        np.testing.assert_array_equal(ours["model"][key], theirs["model"][key], err_msg=key)
    drop_times = [{k: v for k, v in row.items() if k != "train_seconds"} for row in ours["history"]]
    assert drop_times == [{k: v for k, v in row.items() if k != "train_seconds"} for row in theirs["history"]]


def test_resume_with_another_trajectory_setting_is_refused(tmp_path: Path) -> None:
    SegmentationTrainer(tiny_config(epochs=1), tmp_path / "run").fit()
    with pytest.raises(ValueError, match=r"lr 0.003 -> 0.001"):
        SegmentationTrainer(tiny_config(epochs=1, lr=1e-3), tmp_path / "run", resume=True).fit()


class _TwoRanks:
    """The two ranks' world as RankCrossEntropy sees it: size 2, and an all-reduce that adds the other's count."""

    size = 2

    def __init__(self, other: int) -> None:
        self.other = other

    def allreduce_sum(self, value: int) -> int:
        return value + self.other


def test_rank_losses_average_to_the_global_batch_mean(rng: np.random.Generator) -> None:
    """Two slices with different numbers of ignored pixels: the average of the weighted slice losses and of their
    gradients is the whole batch's mean over its counted pixels; a slice with none counted adds 0."""
    from pvt_np.data.segmentation import IGNORE_INDEX
    from pvt_np.nn import CrossEntropyLoss
    from pvt_np.training.segmentation import RankCrossEntropy

    logits = rng.normal(size=(4, 3, 5, 6))
    for ignored in ((0.1, 0.6), (0.3, 1.0)):
        target = rng.integers(0, 3, (4, 5, 6))
        target[:2][rng.random((2, 5, 6)) < ignored[0]] = IGNORE_INDEX
        target[2:][rng.random((2, 5, 6)) < ignored[1]] = IGNORE_INDEX
        whole = CrossEntropyLoss(ignore_index=IGNORE_INDEX)
        loss, grad = float(whole(logits, target)), whole.backward()
        counts = [int((target[s] != IGNORE_INDEX).sum()) for s in (slice(0, 2), slice(2, 4))]
        losses, grads = [], []
        for r, part in enumerate((slice(0, 2), slice(2, 4))):
            ce = RankCrossEntropy(_TwoRanks(counts[1 - r]), IGNORE_INDEX)  # type: ignore[arg-type]
            losses.append(float(ce(logits[part], target[part])))
            grads.append(ce.backward())
        assert np.isfinite(losses).all() and abs((losses[0] + losses[1]) / 2 - loss) <= 1e-15
        np.testing.assert_allclose(np.concatenate(grads) / 2, grad, rtol=0, atol=1e-17)
    assert counts[1] == 0 and losses[1] == 0.0 and not grads[1].any()
    nothing = RankCrossEntropy(_TwoRanks(0), IGNORE_INDEX)  # type: ignore[arg-type]
    assert np.isnan(nothing(logits[:2], np.full((2, 5, 6), IGNORE_INDEX))) and not nothing.backward().any()


@pytest.mark.parametrize(
    ("field", "value"),
    [("dataset", "cifar10"), ("batch_size", 0), ("drop_path_rate", 1.0), ("scene_style", "plain"),
     ("scene_classes", 1), ("scene_classes", 7), ("scene_classes", True)],
)  # fmt: skip
def test_bad_config_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as err:
        tiny_config(**{field: value})
    assert err.value.field == field


def test_a_tiny_folder_trains_through_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_folder(tmp_path / "data")
    out = tmp_path / "run"
    args = ["train", "--task", "segmentation", "--dataset", "segfolder", "--data-path", str(data), *TINY_FLAGS]
    args += ["--epochs", "2", "--batch-size", "3", "--lr", "0.003", "--threads", "1", "--output", str(out)]
    assert cli.main(args) == 0, capsys.readouterr().err
    assert "done: test mIoU" in capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and not any(k.startswith("test_iou_s") for k in rows[-1])  # no size buckets in a folder
    assert load_checkpoint(out / "last.npz")["classes"] == ["c0", "c1"]
    # --resume of a finished run takes its task and settings from config.json and trains nothing more.
    assert cli.main(["train", "--resume", "--output", str(out), "--no-progress"]) == 0


@pytest.mark.parametrize("fault", ["class id", "size"])
def test_a_bad_mask_exits_1_naming_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], fault: str) -> None:
    data = write_folder(tmp_path / "data")
    bad = data / "train" / "masks" / "03.png"
    mask = np.full((32, 32) if fault == "class id" else (16, 32), 7 if fault == "class id" else 1, np.uint8)
    Image.fromarray(mask, mode="L").save(bad)
    args = ["train", "--task", "segmentation", "--dataset", "segfolder", "--data-path", str(data), *TINY_FLAGS]
    assert cli.main([*args, "--output", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and ("[7]" in err if fault == "class id" else "16x32" in err), err
    assert not (tmp_path / "run" / "last.npz").exists()


@pytest.mark.parametrize("extra", [["--mixup", "0.2"], ["--tta", "none"], ["--cutmix", "1"], ["--ema-decay", "0.9"]])
def test_classification_options_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list) -> None:
    args = ["train", "--task", "segmentation", *extra, "--output", str(tmp_path / "run")]
    assert cli.main(args) == 2
    assert f"argument {extra[0]}: not with --task segmentation" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_image_size_is_refused_for_classification(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["train", "--image-size", "32", "--output", str(tmp_path / "run")]) == 2
    assert "argument --image-size" in capsys.readouterr().err


def test_predict_masks_gives_class_ids_per_pixel(tmp_path: Path) -> None:
    trainer = SegmentationTrainer(tiny_config(epochs=1), tmp_path / "run")
    trainer.fit()
    images = trainer.test_split.images[:3]
    x = SegmentationBatches(images, trainer.test_split.masks[:3], 3, shuffle=False, mean=MEAN, std=STD).batch(0, 0).x
    masks = predict_masks(trainer.model, x)
    assert masks.shape == (3, 32, 32) and masks.dtype.kind == "i"
    assert 0 <= masks.min() and masks.max() < trainer.num_classes


def test_init_backbone_loads_every_backbone_weight(tmp_path: Path) -> None:
    from pvt_np.io.npz import save_npz
    from pvt_np.models import create_model

    classifier = create_model("pvt_v2_b0", 10, seed=3, **TINY)
    path = save_npz(classifier, tmp_path / "classifier.npz")
    trainer = SegmentationTrainer(tiny_config(init_backbone=str(path)), tmp_path / "run")
    trainer._setup()
    mine = trainer.model.backbone.state_dict()
    theirs = {k: v for k, v in classifier.state_dict().items() if not k.startswith("head.")}
    assert mine.keys() == theirs.keys()
    for key in mine:
        np.testing.assert_array_equal(mine[key], theirs[key], err_msg=key)
    fresh = SegmentationTrainer(tiny_config(), tmp_path / "fresh")
    fresh._setup()
    head, fresh_head = trainer.model.head.state_dict(), fresh.model.head.state_dict()  # the head: from the seed
    assert all(np.array_equal(head[k], fresh_head[k]) for k in head)


def test_init_backbone_of_another_shape_names_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pvt_np.io.npz import save_npz
    from pvt_np.models import create_model

    path = save_npz(create_model("pvt_v2_b0", 10, **{**TINY, "embed_dims": (8, 16, 24, 40)}), tmp_path / "other.npz")
    args = ["train", "--task", "segmentation", "--image-size", "32", "--train-subset", "8", "--test-subset", "4"]
    args += [*TINY_FLAGS, "--init-backbone", str(path), "--output", str(tmp_path / "run")]
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert f"--init-backbone {path}" in err and "mis-shaped" in err, err
    assert cli.main(["train", "--init-backbone", str(path), "--output", str(tmp_path / "c")]) == 2


def test_a_folder_subset_is_drawn_at_random_and_never_larger_than_the_folder(tmp_path: Path) -> None:
    """--train-subset / --test-subset on a folder draw a seeded random subset, as classification does, not the first
    files by name; asking for more images than the folder holds is refused naming the option's field."""
    from pvt_np.data.segmentation import load_segmentation_folder
    from pvt_np.training.segmentation import load_splits

    data = write_folder(tmp_path / "data", n_train=12, n_test=4)
    every = load_segmentation_folder(data, "train").images
    picks = set()
    for seed in range(6):
        train, test = load_splits(
            tiny_config(dataset="segfolder", data_path=str(data), train_subset=5, test_subset=4, seed=seed)
        )
        assert len(train.images) == 5 and len(test.images) == 4
        rows = [next(i for i, image in enumerate(every) if np.array_equal(image, x)) for x in train.images]
        assert rows == sorted(rows)  # the folder's order is kept within the subset
        picks.add(tuple(rows))
        again, _ = load_splits(
            tiny_config(dataset="segfolder", data_path=str(data), train_subset=5, test_subset=4, seed=seed)
        )
        assert np.array_equal(again.images, train.images)  # the same seed draws the same subset
    assert len(picks) > 1 and picks != {(0, 1, 2, 3, 4)}
    with pytest.raises(ConfigError, match="train_subset"):
        load_splits(tiny_config(dataset="segfolder", data_path=str(data), train_subset=13))


def test_the_scene_settings_reach_the_data(tmp_path: Path) -> None:
    from pvt_np.data.scenes import load_scenes

    trainer = SegmentationTrainer(tiny_config(scene_style="textured", scene_classes=4, seed=2), tmp_path / "run")
    trainer._setup()
    expected = load_scenes("train", 24, 8, 2, size=32, style="textured", num_classes=4)
    assert trainer.num_classes == 4 and trainer.classes == expected.classes
    assert np.array_equal(trainer.train_split.images, expected.images)
    assert np.array_equal(trainer.train_split.masks, expected.masks)


def test_a_run_from_before_the_scene_settings_resumes_as_the_six_class_textured_scenes(tmp_path: Path) -> None:
    from pvt_np.io.checkpoint import save_checkpoint

    old = {"scene_style": "textured", "scene_classes": 6}
    SegmentationTrainer(tiny_config(epochs=1, **old), tmp_path / "run").fit()
    ckpt = load_checkpoint(tmp_path / "run" / "last.npz")
    for key in old:  # what such a run's checkpoint holds
        del ckpt["config"][key]
    save_checkpoint(tmp_path / "run" / "last.npz", ckpt)
    with pytest.raises(ValueError, match=r"with 6 classes, this run asks for .* with 2 classes"):
        SegmentationTrainer(tiny_config(epochs=1), tmp_path / "run", resume=True).fit()
    with pytest.raises(ValueError, match=r"settings differ from its checkpoint: scene_style 'textured' -> 'flat'"):
        SegmentationTrainer(tiny_config(epochs=1, scene_classes=6), tmp_path / "run", resume=True).fit()
    assert SegmentationTrainer(tiny_config(epochs=1, **old), tmp_path / "run", resume=True).fit()["epoch"] == 1


def test_init_backbone_from_a_segmentation_run_takes_its_backbone(tmp_path: Path) -> None:
    first = SegmentationTrainer(tiny_config(epochs=1), tmp_path / "first")
    first.fit()
    second = SegmentationTrainer(tiny_config(init_backbone=str(tmp_path / "first" / "last.npz")), tmp_path / "second")
    second._setup()
    mine, theirs = second.model.backbone.state_dict(), first.model.backbone.state_dict()
    assert mine.keys() == theirs.keys() and all(np.array_equal(mine[k], theirs[k]) for k in mine)


def test_scene_flags_through_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["train", "--task", "segmentation", "--image-size", "32", "--train-subset", "8", "--test-subset", "4"]
    args += [*TINY_FLAGS, "--epochs", "1", "--batch-size", "4", "--no-progress"]
    assert cli.main([*args, "--scene-classes", "6", "--scene-style", "textured", "--output", str(tmp_path / "r")]) == 0
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert (saved["scene_classes"], saved["scene_style"]) == (6, "textured")
    assert cli.main([*args, "--scene-classes", "9", "--output", str(tmp_path / "bad")]) != 0
    assert "argument --scene-classes" in capsys.readouterr().err
    assert cli.main(["train", "--scene-classes", "3", "--output", str(tmp_path / "c")]) == 2
    assert "argument --scene-classes" in capsys.readouterr().err


def test_evaluate_scores_a_checkpoint_as_its_run_did(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    SegmentationTrainer(tiny_config(epochs=1), tmp_path / "run").fit()
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert cli.main(["evaluate", str(tmp_path / "run" / "last.npz"), "--batch-size", "3"]) == 0
    out = capsys.readouterr().out
    assert f"mIoU {last['test_miou']:.4f}" in out and f"pixel accuracy {last['test_pixel_accuracy']:.4f}" in out
    assert f"small {last['test_iou_small']:.4f}" in out or last["test_iou_small"] is None
    assert cli.main(["evaluate", str(tmp_path / "run" / "last.npz"), "--test-subset", "3"]) == 0
    assert ", 3 images" in capsys.readouterr().out
    for flag in (["--tta", "flip"], ["--dataset", "cifar10"], ["--confusion", str(tmp_path / "c.png")]):
        assert cli.main(["evaluate", str(tmp_path / "run" / "last.npz"), *flag]) == 2
        assert f"argument {flag[0]}: not for a segmentation checkpoint" in capsys.readouterr().err


def test_a_saved_config_reads_back_with_the_settings_older_runs_lacked() -> None:
    config = tiny_config(model_overrides={**TINY, "levels": (3,)})
    saved = json.loads(json.dumps(dataclasses.asdict(config)))  # as config.json holds it: tuples become lists
    assert SegmentationConfig.from_saved({**saved, "task": "segmentation"}) == config
    del saved["scene_style"], saved["scene_classes"]
    older = SegmentationConfig.from_saved(saved, epochs=7)
    assert (older.scene_style, older.scene_classes, older.epochs) == ("textured", 6, 7)
