"""Segmentation data: the generated scenes, the folder reader and its errors, batches that move masks with images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pvt_np.backend import gpu_available
from pvt_np.data import (
    IGNORE_INDEX,
    CorruptDatasetError,
    DatasetNotFoundError,
    SegmentationBatches,
    crop_flip_gather,
    load_scenes,
    load_segmentation_folder,
    make_scenes,
    size_bucket,
)

# Generated scenes ------------------------------------------------------------------


def test_scenes_deterministic_and_seeded() -> None:
    a, b, c = make_scenes(6, size=32, seed=1), make_scenes(6, size=32, seed=1), make_scenes(6, size=32, seed=2)
    for field in ("images", "masks", "size_buckets"):
        assert getattr(a, field).tobytes() == getattr(b, field).tobytes()
    assert a.objects.tobytes() == b.objects.tobytes()
    assert a.images.tobytes() != c.images.tobytes()
    assert a.masks.tobytes() != c.masks.tobytes()
    assert a.images.shape == (6, 32, 32, 3) and a.images.dtype == np.uint8
    assert a.masks.shape == a.size_buckets.shape == (6, 32, 32) and a.masks.dtype == np.uint8


def test_scenes_prefix_and_fixed_test_split() -> None:
    few, many = make_scenes(3, size=32, seed=4), make_scenes(5, size=32, seed=4)
    assert np.array_equal(few.images, many.images[:3]) and np.array_equal(few.masks, many.masks[:3])
    test_a = load_scenes("test", n_train=2, n_test=4, seed=7, size=32)
    test_b = load_scenes("test", n_train=9, n_test=4, seed=7, size=32)
    train = load_scenes("train", n_train=4, n_test=4, seed=7, size=32)
    assert np.array_equal(test_a.images, test_b.images) and np.array_equal(test_a.masks, test_b.masks)
    assert not np.array_equal(train.images, test_a.images)
    assert not np.array_equal(load_scenes("test", 2, 4, seed=8, size=32).images, test_a.images)


@pytest.fixture(scope="module")
def scenes128():
    return make_scenes(200, size=128, seed=0)


def test_scenes_cover_object_sizes_and_classes(scenes128) -> None:
    area = scenes128.objects["area"]
    assert (area < 0.01).sum() >= 100 and (area > 0.10).sum() >= 50 and ((area >= 0.01) & (area <= 0.10)).sum() >= 50
    assert area.min() * 128 * 128 <= 16  # a few pixels
    assert set(np.unique(scenes128.masks).tolist()) == set(range(6))
    counts = np.bincount(scenes128.objects["cls"], minlength=6)[1:]
    assert counts.min() > 0.5 * counts.mean()


def test_scenes_size_buckets_match_objects(scenes128) -> None:
    # Recount each object's visible area from the masks is not possible (same-class objects may touch),
    # so check the buckets against the per-object record per image instead: a bucket's pixels equal the
    # visible areas of the objects recorded in it.
    s = scenes128
    hw = 128 * 128
    for i in range(20):
        rec = s.objects[s.objects["image"] == i]
        buckets = size_bucket(rec["area"])
        for b in (1, 2, 3):
            assert (s.size_buckets[i] == b).sum() == round(rec["area"][buckets == b].sum() * hw)
        assert np.array_equal(s.size_buckets[i] == 0, s.masks[i] == 0)
    assert size_bucket(np.array([0.0099, 0.01, 0.0999, 0.1, 0.5])).tolist() == [1, 2, 2, 3, 3]


def test_scenes_textured(scenes128) -> None:
    s = scenes128
    for i in range(20):
        background = s.images[i][s.masks[i] == 0].astype(np.float64)
        assert background.std(axis=0).max() > 10.0  # not a flat colour
    # Colour does not give the class: per (image, class) mean colours differ between classes by far
    # less than they spread within a class.
    groups = {k: [] for k in range(1, 6)}
    for i in range(len(s)):
        for k in np.unique(s.masks[i]).tolist():
            if k:
                groups[k].append(s.images[i][s.masks[i] == k].mean(axis=0))
    means = np.array([np.mean(groups[k], axis=0) for k in groups])
    spread = min(np.std(groups[k], axis=0).min() for k in groups)
    assert np.abs(means[:, None] - means[None]).max() < 0.5 * spread


def test_make_scenes_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        make_scenes(1, num_classes=7)
    with pytest.raises(ValueError, match="size"):
        make_scenes(1, size=4)
    with pytest.raises(ValueError, match="objects"):
        make_scenes(1, objects=(3, 2))
    with pytest.raises(ValueError, match="split"):
        load_scenes("val")
    with pytest.raises(ValueError, match="style"):
        make_scenes(1, style="plain")


def test_scenes_flat_style() -> None:
    """Flat: each visible object is one colour, the background is grain; load_scenes passes the style on."""
    flat, textured = make_scenes(30, size=48, seed=3, style="flat"), make_scenes(30, size=48, seed=3)
    assert flat.images.tobytes() != textured.images.tobytes()
    colours = 0
    for i in range(len(flat)):
        image, mask = flat.images[i].astype(np.int64), flat.masks[i]
        background = image[mask == 0]
        assert background.std(axis=0).min() > 20.0  # grain, per channel
        # Each object is flat: within one class of one image, the colours are those of its few objects.
        for k in np.unique(mask[mask > 0]).tolist():
            distinct = np.unique(image[mask == k], axis=0)
            assert len(distinct) <= (flat.objects[(flat.objects["image"] == i) & (flat.objects["cls"] == k)]).size
            colours += len(distinct)
    assert colours >= 50
    assert load_scenes("test", 2, 3, seed=1, size=32, style="flat").images.shape == (3, 32, 32, 3)


def test_scenes_fewer_classes() -> None:
    s = make_scenes(10, size=32, num_classes=3, seed=0)
    assert s.classes == ("background", "disc", "square") and s.masks.max() <= 2


# The folder reader -----------------------------------------------------------------


def _write(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)


def _folder(root: Path, split: str = "train", n: int = 3, h: int = 8, w: int = 10, classes: int = 3) -> None:
    rng = np.random.default_rng(0)
    for k in range(n):
        _write(root / split / "images" / f"im{k}.png", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        mask = rng.integers(0, classes, (h, w), dtype=np.uint8)
        mask[0, 0] = IGNORE_INDEX
        _write(root / split / "masks" / f"im{k}.png", mask)


def test_folder_reads_pairs(tmp_path: Path) -> None:
    _folder(tmp_path)
    ds = load_segmentation_folder(tmp_path, "train")
    assert ds.images.shape == (3, 8, 10, 3) and ds.masks.shape == (3, 8, 10)
    assert ds.names == ("im0", "im1", "im2") and ds.num_classes == 3 and ds.classes == ("0", "1", "2")
    assert np.array_equal(ds.masks[1], np.asarray(Image.open(tmp_path / "train/masks/im1.png")))
    assert np.array_equal(ds.images[2], np.asarray(Image.open(tmp_path / "train/images/im2.png")))


def test_folder_jpg_grey_palette_and_classes_file(tmp_path: Path) -> None:
    _write(tmp_path / "test/images/a.jpg", np.full((6, 6), 90, np.uint8), "L")
    palette = Image.new("P", (6, 6))
    palette.putpalette([0, 0, 0, 128, 0, 0] + [0] * 762)
    palette.putpixel((2, 3), 1)
    palette.putpixel((0, 0), IGNORE_INDEX)
    (tmp_path / "test/masks").mkdir(parents=True)
    palette.save(tmp_path / "test/masks/a.png")
    (tmp_path / "classes.txt").write_text("background\ncat\ndog\n")
    ds = load_segmentation_folder(tmp_path, "test")
    assert ds.images.shape == (1, 6, 6, 3) and ds.classes == ("background", "cat", "dog")
    assert ds.masks[0, 3, 2] == 1 and ds.masks[0, 0, 0] == IGNORE_INDEX and ds.masks.sum() == 1 + IGNORE_INDEX


def test_folder_resize(tmp_path: Path) -> None:
    _write(tmp_path / "train/images/a.png", np.zeros((8, 8, 3), np.uint8))
    _write(tmp_path / "train/images/b.png", np.zeros((6, 10, 3), np.uint8))
    mask = np.zeros((8, 8), np.uint8)
    mask[:, 4:] = 2
    _write(tmp_path / "train/masks/a.png", mask)
    _write(tmp_path / "train/masks/b.png", np.ones((6, 10), np.uint8))
    with pytest.raises(CorruptDatasetError, match=r"b\.png.*one size"):
        load_segmentation_folder(tmp_path, "train")
    ds = load_segmentation_folder(tmp_path, "train", size=4)
    assert ds.images.shape == (2, 4, 4, 3)
    assert ds.masks[0].tolist() == [[0, 0, 2, 2]] * 4 and (ds.masks[1] == 1).all()


@pytest.mark.parametrize(
    ("damage", "error", "pattern"),
    [
        ("no_mask", CorruptDatasetError, r"im1\.png: image without a mask"),
        ("no_image", CorruptDatasetError, r"extra\.png: mask without an image"),
        ("mask_size", CorruptDatasetError, r"masks.im2\.png: mask is 7x10 but its image im2\.png is 8x10"),
        ("class_id", CorruptDatasetError, r"masks.im0\.png: class ids \[7\] are not in \[0, 3\)"),
        ("unreadable", CorruptDatasetError, r"cannot read image .*im1\.png"),
        ("rgb_mask", CorruptDatasetError, r"masks.im0\.png: a mask must be a single-channel PNG"),
        ("no_split", DatasetNotFoundError, r"test.images: no such folder"),
    ],
)
def test_folder_errors_name_the_file(tmp_path: Path, damage: str, error: type, pattern: str) -> None:
    _folder(tmp_path)
    split = "train"
    if damage == "no_mask":
        (tmp_path / "train/masks/im1.png").unlink()
    elif damage == "no_image":
        _write(tmp_path / "train/masks/extra.png", np.zeros((8, 10), np.uint8))
    elif damage == "mask_size":
        _write(tmp_path / "train/masks/im2.png", np.zeros((7, 10), np.uint8))
    elif damage == "class_id":
        mask = np.zeros((8, 10), np.uint8)
        mask[3, 3] = 7
        _write(tmp_path / "train/masks/im0.png", mask)
    elif damage == "unreadable":
        (tmp_path / "train/images/im1.png").write_bytes(b"not a png")
    elif damage == "rgb_mask":
        _write(tmp_path / "train/masks/im0.png", np.zeros((8, 10, 3), np.uint8))
    else:
        split = "test"
    with pytest.raises(error, match=pattern):
        load_segmentation_folder(tmp_path, split, num_classes=3)


def test_folder_class_ids_checked_against_classes_file(tmp_path: Path) -> None:
    _folder(tmp_path, classes=3)
    (tmp_path / "classes.txt").write_text("a\nb\n")
    with pytest.raises(CorruptDatasetError, match=r"masks.im\d\.png: class ids \[2\]"):
        load_segmentation_folder(tmp_path, "train")
    with pytest.raises(CorruptDatasetError, match=r"classes\.txt: names 2 classes but num_classes is 3"):
        load_segmentation_folder(tmp_path, "train", num_classes=3)


# Batches ---------------------------------------------------------------------------


def _pair(n: int = 4, h: int = 6, w: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Images whose pixels encode (sample, row, column), masks a function of the same, so both can be traced."""
    s, r, c = np.meshgrid(np.arange(n), np.arange(h), np.arange(w), indexing="ij")
    images = np.stack([s * 10 + 1, r + 1, c + 1], axis=-1).astype(np.uint8)
    masks = ((s * 7 + r * 3 + c) % 5).astype(np.uint8)
    return images, masks


def test_batches_move_masks_with_images() -> None:
    images, masks = _pair()
    loader = SegmentationBatches(images, masks, 4, seed=3, crop_padding=3, hflip=True)
    seen_pad = seen_flip = False
    for epoch in range(4):
        x, y = loader.batch(epoch, 0)
        assert x.shape == (4, 3, 6, 7) and y.shape == (4, 6, 7) and y.dtype == np.int64
        u8 = np.rint(x.transpose(0, 2, 3, 1) * 255).astype(np.int64)
        pad = (u8 == 0).all(axis=-1)
        seen_pad |= pad.any()
        assert (y[pad] == IGNORE_INDEX).all() and (y[~pad] != IGNORE_INDEX).all()
        s, r, c = u8[..., 0][~pad] // 10, u8[..., 1][~pad] - 1, u8[..., 2][~pad] - 1
        assert np.array_equal(y[~pad], (s * 7 + r * 3 + c) % 5)  # each pixel's class came with it
        cols = u8[..., 2].astype(np.int64)
        seen_flip |= bool((np.diff(cols, axis=2)[~pad[:, :, 1:] & ~pad[:, :, :-1]] < 0).any())
        again = loader.batch(epoch, 0)
        assert np.array_equal(again.x, x) and np.array_equal(again.y, y)
    assert seen_pad and seen_flip


def test_batches_without_augmentation_and_bad_input() -> None:
    images, masks = _pair()
    x, y = SegmentationBatches(images, masks, 2, shuffle=False).batch(0, 1)
    assert np.array_equal(y, masks[2:4]) and np.allclose(x, images[2:4].transpose(0, 3, 1, 2) / 255.0)
    with pytest.raises(ValueError, match="masks must be uint8"):
        SegmentationBatches(images, masks[:, :5], 2)
    with pytest.raises(ValueError, match="crop_padding"):
        SegmentationBatches(images, masks, 2, crop_padding=-1)


@pytest.mark.parametrize("ranks", [2, 4])
def test_batch_shards_are_slices_of_the_whole_batch(ranks: int) -> None:
    """A data-parallel rank's shard is its rows of the 1-process batch: the same samples, crops and flips."""
    images, masks = _pair()
    whole = SegmentationBatches(images, masks, 4, seed=5, crop_padding=3, hflip=True)
    parts = [
        SegmentationBatches(images, masks, 4, seed=5, crop_padding=3, hflip=True, shard=(r, ranks))
        for r in range(ranks)
    ]
    for epoch in range(3):
        full = whole.batch(epoch, 0)
        pieces = [part.batch(epoch, 0) for part in parts]
        assert all(p.x.shape[0] == 4 // ranks for p in pieces)
        assert np.array_equal(np.concatenate([p.x for p in pieces]), full.x)
        assert np.array_equal(np.concatenate([p.y for p in pieces]), full.y)
    assert len(parts[0]) == len(whole)
    with pytest.raises(ValueError, match="shard must be"):
        SegmentationBatches(images, masks, 4, shard=(0, 3))
    with pytest.raises(ValueError, match="shard must be"):
        SegmentationBatches(images, masks, 4, shard=(2, 2))


def test_crop_flip_gather_default_fill_unchanged() -> None:
    images, _ = _pair()
    idx, dy, dx, flip = np.arange(4), np.array([0, 2, 4, 1]), np.array([4, 0, 2, 3]), np.array([1, 0, 1, 0], bool)
    zero = crop_flip_gather(images, idx, dy, dx, flip, 2)
    filled = crop_flip_gather(images, idx, dy, dx, flip, 2, fill=255)
    pad = (zero == 0).all(axis=-1)
    assert pad.any() and (filled[pad] == 255).all() and np.array_equal(filled[~pad], zero[~pad])


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="needs a CUDA GPU with CuPy")
def test_batches_gpu_equal_cpu() -> None:
    images, masks = _pair()
    cpu = SegmentationBatches(images, masks, 4, seed=1, crop_padding=2, hflip=True).batch(1, 0)
    gpu = SegmentationBatches(images, masks, 4, seed=1, crop_padding=2, hflip=True, device="gpu").batch(1, 0)
    assert np.array_equal(gpu.y.get(), cpu.y) and np.allclose(gpu.x.get(), cpu.x)
