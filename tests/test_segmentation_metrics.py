"""SegmentationMetrics: hand-computed cases, a per-class boolean-mask reference, batch accumulation, bad input, CuPy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pvt_np import backend
from pvt_np.training.segmentation_metrics import SegmentationMetrics

IGNORE = 255


def _scores(num_classes: int, pred: np.ndarray, target: np.ndarray, buckets: np.ndarray | None = None) -> dict:
    metrics = SegmentationMetrics(num_classes)
    metrics.update(pred, target, buckets)
    return metrics.compute()


def _reference(num_classes: int, pred: np.ndarray, target: np.ndarray, buckets: np.ndarray) -> dict:
    """The definitions written out with boolean masks, one class and one bucket at a time."""
    valid = target != IGNORE
    iou = []
    for c in range(num_classes):
        inter = np.sum((pred == c) & (target == c) & valid)
        union = np.sum(((pred == c) | (target == c)) & valid)
        iou.append(inter / union if union else math.nan)
    by_size = {}
    for b, name in ((1, "small"), (2, "medium"), (3, "large")):
        objects = valid & (buckets == b)
        region = objects | (valid & (buckets == 0))
        tp = np.sum(objects & (pred == target))
        fn = np.sum(objects & (pred != target))
        fp = np.sum(region & (pred != target) & (pred != 0))
        by_size[name] = tp / (tp + fn + fp) if objects.any() else math.nan
    return {
        "pixel_accuracy": np.sum((pred == target) & valid) / np.sum(valid),
        "iou": np.array(iou),
        "miou": np.nanmean(iou),
        "iou_by_size": by_size,
    }


def _random_batch(rng: np.random.Generator, n: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    target = rng.integers(0, k, (n, 12, 9)).astype(np.uint8)
    target[rng.random(target.shape) < 0.1] = IGNORE
    pred = np.where(rng.random(target.shape) < 0.6, target % k, rng.integers(0, k, target.shape)).astype(np.int64)
    buckets = np.where(target == 0, 0, rng.integers(1, 4, target.shape)).astype(np.uint8)
    return pred, target, buckets


def _assert_scores_equal(got: dict, want: dict) -> None:
    assert got["pixel_accuracy"] == pytest.approx(want["pixel_accuracy"], rel=1e-15)
    np.testing.assert_allclose(got["iou"], want["iou"], rtol=1e-15)
    assert got["miou"] == pytest.approx(want["miou"], rel=1e-15)
    assert got["iou_by_size"].keys() == want["iou_by_size"].keys()
    for name, value in want["iou_by_size"].items():
        assert got["iou_by_size"][name] == pytest.approx(value, rel=1e-15, nan_ok=True), name


def test_perfect_prediction_scores_one() -> None:
    target = np.array([[[0, 1, 2], [2, 1, 0]]])
    buckets = np.array([[[0, 1, 3], [3, 1, 0]]])
    s = _scores(3, target.copy(), target, buckets)
    assert s["pixel_accuracy"] == 1.0
    np.testing.assert_array_equal(s["iou"], [1.0, 1.0, 1.0])
    assert s["miou"] == 1.0
    assert s["iou_by_size"]["small"] == 1.0
    assert s["iou_by_size"]["large"] == 1.0
    assert math.isnan(s["iou_by_size"]["medium"])  # no medium object in the data


def test_all_wrong_scores_zero() -> None:
    target = np.array([[[0, 1], [2, 0]]])
    pred = (target + 1) % 3
    s = _scores(3, pred, target, np.array([[[0, 2], [2, 0]]]))
    assert s["pixel_accuracy"] == 0.0
    np.testing.assert_array_equal(s["iou"], [0.0, 0.0, 0.0])
    assert s["miou"] == 0.0
    assert s["iou_by_size"]["medium"] == 0.0


def test_ignored_pixels_count_nowhere() -> None:
    target = np.array([[[0, 1, IGNORE, IGNORE]]])
    pred = np.array([[[0, 1, 1, 0]]])  # the wrong guesses fall on ignored pixels
    s = _scores(2, pred, target, np.array([[[0, 2, 2, 0]]]))
    assert s["pixel_accuracy"] == 1.0
    np.testing.assert_array_equal(s["iou"], [1.0, 1.0])
    assert s["iou_by_size"]["medium"] == 1.0


def test_class_absent_from_target_and_prediction_is_left_out_of_miou() -> None:
    target = np.array([[[0, 0, 1, 1]]])
    pred = np.array([[[0, 1, 1, 1]]])  # class 2 appears nowhere
    s = _scores(3, pred, target)
    np.testing.assert_allclose(s["iou"][:2], [1 / 2, 2 / 3])
    assert math.isnan(s["iou"][2])
    assert s["miou"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert s["pixel_accuracy"] == 0.75
    assert all(math.isnan(v) for v in s["iou_by_size"].values())  # no size_buckets given


def test_class_predicted_but_absent_from_target_scores_zero() -> None:
    s = _scores(3, np.array([[[0, 2]]]), np.array([[[0, 0]]]))
    assert s["iou"][2] == 0.0
    assert s["miou"] == pytest.approx((1 / 2 + 0.0) / 2)


def test_iou_by_size_on_hand_made_masks() -> None:
    """Background pixels 0-3, a small object (4, 5), a large one (6-9); no medium object."""
    target = np.array([[[0, 0, 0, 0, 1, 1, 2, 2, 2, 2]]])
    buckets = np.array([[[0, 0, 0, 0, 1, 1, 3, 3, 3, 3]]])
    pred = np.array([[[0, 1, 0, 0, 1, 0, 2, 2, 1, 2]]])
    s = _scores(3, pred, target, buckets)["iou_by_size"]
    # small: TP pixel 4, FN pixel 5 (called background), FP pixel 1 (background called class 1)
    assert s["small"] == pytest.approx(1 / 3)
    # large: TP 6, 7, 9; FN 8; FP pixel 1 and pixel 8 (a large-object pixel called class 1: a miss and a false alarm)
    assert s["large"] == pytest.approx(3 / 6)
    assert math.isnan(s["medium"])


def test_iou_by_size_leaves_other_buckets_out() -> None:
    """Errors on a large object do not lower the small objects' score."""
    target = np.array([[[0, 1, 2, 2]]])
    buckets = np.array([[[0, 1, 3, 3]]])
    s = _scores(3, np.array([[[0, 1, 1, 1]]]), target, buckets)["iou_by_size"]
    assert s["small"] == 1.0
    assert s["large"] == 0.0


def test_matches_boolean_mask_reference(rng: np.random.Generator) -> None:
    pred, target, buckets = _random_batch(rng, 3, 5)
    _assert_scores_equal(_scores(5, pred, target, buckets), _reference(5, pred, target, buckets))


def test_batches_accumulate_to_the_one_shot_result(rng: np.random.Generator) -> None:
    batches = [_random_batch(rng, n, 4) for n in (1, 3, 2)]
    metrics = SegmentationMetrics(4)
    for pred, target, buckets in batches:
        metrics.update(pred, target, buckets)
    whole = [np.concatenate(parts) for parts in zip(*batches, strict=True)]
    _assert_scores_equal(metrics.compute(), _scores(4, *whole))
    metrics.reset()
    assert math.isnan(metrics.compute()["pixel_accuracy"])


def test_summed_counts_of_parts_score_the_whole(rng: np.random.Generator) -> None:
    """Data-parallel ranks each count their part of the test set; the sum of the counts (here two ranks' sum
    simulated, and a rank that counted nothing) scores the whole set exactly."""
    parts = [_random_batch(rng, n, 4) for n in (2, 3)]
    ranks = [SegmentationMetrics(4) for _ in range(3)]
    for metrics, (pred, target, buckets) in zip(ranks, parts, strict=False):
        metrics.update(pred, target, buckets)
    counted: list[np.ndarray] = []
    for metrics in ranks:  # what each rank hands to the all-reduce
        metrics.sum_counts(lambda mine: counted.append(mine.copy()) or mine)
    assert all(c.dtype == np.int64 and c.shape == counted[0].shape for c in counted) and not counted[2].any()
    total = sum(counted)
    for metrics in ranks:
        metrics.sum_counts(lambda mine: total)
    whole = [np.concatenate(p) for p in zip(*parts, strict=True)]
    for metrics in ranks:
        _assert_scores_equal(metrics.compute(), _scores(4, *whole))


def test_updates_without_size_buckets_count_in_the_class_scores_only(rng: np.random.Generator) -> None:
    (p1, t1, b1), (p2, t2, _) = _random_batch(rng, 2, 4), _random_batch(rng, 2, 4)
    metrics = SegmentationMetrics(4)
    metrics.update(p1, t1, b1)
    metrics.update(p2, t2)
    got = metrics.compute()
    both = _reference(4, np.concatenate([p1, p2]), np.concatenate([t1, t2]), np.concatenate([b1, b1]))
    assert got["pixel_accuracy"] == pytest.approx(both["pixel_accuracy"], rel=1e-15)
    np.testing.assert_allclose(got["iou"], both["iou"], rtol=1e-15)
    assert got["iou_by_size"] == pytest.approx(_reference(4, p1, t1, b1)["iou_by_size"], rel=1e-15, nan_ok=True)


def test_bad_input_is_refused_naming_the_argument() -> None:
    metrics = SegmentationMetrics(3)
    good = np.zeros((1, 2, 2), np.int64)
    with pytest.raises(ValueError, match=r"pred has shape \(1, 2, 3\), target \(1, 2, 2\)"):
        metrics.update(np.zeros((1, 2, 3), np.int64), good)
    with pytest.raises(ValueError, match=r"size_buckets has shape \(1, 1, 2\)"):
        metrics.update(good, good, np.zeros((1, 1, 2), np.int64))
    with pytest.raises(ValueError, match=r"pred must be \(N, H, W\), got shape \(2, 2\)"):
        metrics.update(good[0], good[0])
    with pytest.raises(TypeError, match="pred must hold integers, got dtype float64"):
        metrics.update(good.astype(np.float64), good)
    with pytest.raises(ValueError, match=r"target holds 1 pixel\(s\) with values outside \[0, 3\) and not 255"):
        metrics.update(good, np.array([[[0, 3], [IGNORE, 1]]]))
    with pytest.raises(ValueError, match=r"pred holds 2 pixel\(s\) with values outside \[0, 3\)"):
        metrics.update(np.array([[[0, 3], [-1, 1]]]), good)
    with pytest.raises(ValueError, match=r"size_buckets holds 1 pixel\(s\) with values outside \[0, 4\)"):
        metrics.update(good, good, np.array([[[0, 4], [0, 0]]]))
    assert math.isnan(metrics.compute()["pixel_accuracy"]), "a refused batch is not counted"
    with pytest.raises(ValueError, match=r"num_classes must lie in \[1, 255\]"):
        SegmentationMetrics(256)
    with pytest.raises(ValueError, match=r"background must lie in \[0, 3\), got 3"):
        SegmentationMetrics(3, background=3)


@pytest.mark.gpu
def test_cupy_arrays_stay_on_the_device_and_match_numpy(rng: np.random.Generator) -> None:
    cp = backend.cupy_module()
    batches = [_random_batch(rng, 2, 5) for _ in range(2)]
    on_host, on_device = SegmentationMetrics(5), SegmentationMetrics(5)
    for pred, target, buckets in batches:
        on_host.update(pred, target, buckets)
        on_device.update(cp.asarray(pred), cp.asarray(target), cp.asarray(buckets))
    assert isinstance(on_device._counts, cp.ndarray)
    _assert_scores_equal(on_device.compute(), on_host.compute())
    bad = SegmentationMetrics(5)
    bad.update(cp.asarray(batches[0][0]), cp.full(batches[0][1].shape, 7, dtype=cp.uint8))
    with pytest.raises(ValueError, match=r"compute: target holds 216 pixel\(s\)"):
        bad.compute()
