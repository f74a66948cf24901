"""Tests of pvt_np.data: CIFAR archives, image folders, the decode cache, batching and augmentation.

Every fixture is built here, small, under tmp_path: fake official CIFAR archives
(same pickle layout, a few images), image folders of PNG and JPEG files and
their tarballs. No network and no shared data are used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
import pickle
import re
import shutil
import tarfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pvt_np import backend
from pvt_np.data import (
    CIFAR_SPECS,
    TRIVIAL_OPS,
    Augment,
    BatchLoader,
    CorruptDatasetError,
    DataError,
    Dataset,
    DatasetNotFoundError,
    crop_flip_gather,
    cutmix,
    load_cifar,
    load_dataset,
    load_image_folder,
    mix_targets,
    mixup,
    resize_bilinear,
    resize_matrix,
    sample_crop_flip,
    sample_mix,
    sample_trivial,
    translate,
    trivial_augment,
)
from pvt_np.data import cifar as cifar_mod
from pvt_np.data import imagefolder as imf_mod
from pvt_np.data.download import file_md5

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the fallback cache (~/.cache/pvt_np) inside tmp_path, and md5 memo per test."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(cifar_mod, "_VERIFIED", set())


# CIFAR fixtures ------------------------------------------------------------------------


def pattern_pixel(i: np.ndarray, c: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The known value of channel c at (y, x) of image i (a swap of any two of c, y, x changes it)."""
    return ((c * 80 + y * 7 + x * 3 + i * 11) % 256).astype(np.uint8)


def official_rows(first: int, n: int) -> np.ndarray:
    """(n, 3072) rows in CIFAR's layout, written from the definition: byte c*1024 + y*32 + x is channel c at (y, x)."""
    off = np.arange(3072)
    c, y, x = off // 1024, (off % 1024) // 32, off % 32
    i = np.arange(first, first + n)[:, None]
    return pattern_pixel(i, c[None], y[None], x[None])


def expected_nhwc(first: int, n: int) -> np.ndarray:
    i, y, x, c = np.meshgrid(np.arange(first, first + n), np.arange(32), np.arange(32), np.arange(3), indexing="ij")
    return pattern_pixel(i, c, y, x)


def py2_style_pickle(obj: object) -> bytes:
    """Protocol-2 pickle naming numpy.core.multiarray, as the official (Python 2 era) files do."""
    data = pickle.dumps(obj, protocol=2)
    return data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 1_700_000_000
    tar.addfile(info, io.BytesIO(data))


CIFAR10_TRAIN_PER_BATCH = 4
CIFAR10_TEST = 6


def cifar10_labels(first: int, n: int) -> list[int]:
    return [(first + k) * 3 % 10 for k in range(n)]


def cifar10_members() -> dict[str, bytes]:
    folder = "cifar-10-batches-py"
    members = {}
    for b in range(5):
        first = b * CIFAR10_TRAIN_PER_BATCH
        batch = {
            b"batch_label": f"training batch {b + 1} of 5".encode(),
            b"labels": cifar10_labels(first, CIFAR10_TRAIN_PER_BATCH),
            b"data": official_rows(first, CIFAR10_TRAIN_PER_BATCH),
            b"filenames": [f"img_{first + k}.png".encode() for k in range(CIFAR10_TRAIN_PER_BATCH)],
        }
        members[f"{folder}/data_batch_{b + 1}"] = py2_style_pickle(batch)
    members[f"{folder}/test_batch"] = py2_style_pickle(
        {
            b"batch_label": b"testing batch 1 of 1",
            b"labels": cifar10_labels(100, CIFAR10_TEST),
            b"data": official_rows(100, CIFAR10_TEST),
            b"filenames": [b"t.png"] * CIFAR10_TEST,
        }
    )
    members[f"{folder}/batches.meta"] = py2_style_pickle(
        {b"label_names": [n.encode() for n in CIFAR10_NAMES], b"num_cases_per_batch": 10000, b"num_vis": 3072}
    )
    members[f"{folder}/readme.html"] = b"<html></html>"
    return members


def cifar100_members() -> dict[str, bytes]:
    folder = "cifar-100-python"
    fine = [f"class_{k:02d}" for k in range(100)]

    def split(first: int, n: int) -> dict:
        return {
            b"batch_label": b"x",
            b"fine_labels": [(first + k) * 37 % 100 for k in range(n)],
            b"coarse_labels": [(first + k) % 20 for k in range(n)],
            b"data": official_rows(first, n),
            b"filenames": [b"f.png"] * n,
        }

    return {
        f"{folder}/train": py2_style_pickle(split(0, 7)),
        f"{folder}/test": py2_style_pickle(split(50, 3)),
        f"{folder}/meta": py2_style_pickle(
            {b"fine_label_names": [n.encode() for n in fine], b"coarse_label_names": [b"c"] * 20}
        ),
        f"{folder}/file.txt~": b"",
    }


def write_tar(path: Path, members: dict[str, bytes], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tar:
        dirs = sorted({name.rsplit("/", 1)[0] for name in members if "/" in name})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, data in members.items():
            add_bytes(tar, name, data)
    return path


def write_tree(root: Path, members: dict[str, bytes]) -> Path:
    for name, data in members.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


@pytest.fixture
def cifar10_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake cifar-10-python.tar.gz whose md5 is registered as the official one."""
    (tmp_path / "c10").mkdir()
    path = write_tar(tmp_path / "c10" / "cifar-10-python.tar.gz", cifar10_members())
    spec = dataclasses.replace(CIFAR_SPECS["cifar10"], md5=file_md5(path))
    monkeypatch.setitem(CIFAR_SPECS, "cifar10", spec)
    return path


def test_cifar10_from_archive(cifar10_archive: Path) -> None:
    train = load_dataset("cifar10", cifar10_archive.parent, "train")
    test = load_dataset("cifar10", cifar10_archive.parent, "test")
    n = 5 * CIFAR10_TRAIN_PER_BATCH
    assert train.images.shape == (n, 32, 32, 3) and train.images.dtype == np.uint8
    assert train.labels.dtype == np.int64
    np.testing.assert_array_equal(train.labels, cifar10_labels(0, n))  # batches 1..5 in order
    np.testing.assert_array_equal(train.images, expected_nhwc(0, n))  # channel-major rows -> NHWC
    np.testing.assert_array_equal(test.labels, cifar10_labels(100, CIFAR10_TEST))
    np.testing.assert_array_equal(test.images, expected_nhwc(100, CIFAR10_TEST))
    assert train.classes == tuple(CIFAR10_NAMES) and train.num_classes == 10
    assert (train.name, train.split, test.split) == ("cifar10", "train", "test")
    # The archive path itself is accepted as root.
    again = load_cifar("cifar10", cifar10_archive, "test")
    np.testing.assert_array_equal(again.images, test.images)


def test_cifar10_from_extracted_folder(cifar10_archive: Path, tmp_path: Path) -> None:
    write_tree(tmp_path / "ex", cifar10_members())  # what extracting the archive gives
    ref = load_dataset("cifar10", cifar10_archive.parent, "train")
    for root in (tmp_path / "ex", tmp_path / "ex" / "cifar-10-batches-py"):
        ds = load_dataset("cifar10", root, "train")
        np.testing.assert_array_equal(ds.images, ref.images)
        np.testing.assert_array_equal(ds.labels, ref.labels)
        assert ds.classes == ref.classes


def test_cifar100_archive_and_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "c100").mkdir()
    archive = write_tar(tmp_path / "c100" / "cifar-100-python.tar.gz", cifar100_members())
    monkeypatch.setitem(CIFAR_SPECS, "cifar100", dataclasses.replace(CIFAR_SPECS["cifar100"], md5=file_md5(archive)))
    train = load_dataset("cifar100", tmp_path / "c100", "train")
    test = load_dataset("cifar100", tmp_path / "c100", "test")
    np.testing.assert_array_equal(train.labels, [k * 37 % 100 for k in range(7)])  # fine labels
    np.testing.assert_array_equal(train.images, expected_nhwc(0, 7))
    np.testing.assert_array_equal(test.images, expected_nhwc(50, 3))
    assert train.num_classes == 100 and train.classes[5] == "class_05"
    folder = write_tree(tmp_path / "ex", cifar100_members())
    np.testing.assert_array_equal(load_dataset("cifar100", folder, "test").images, test.images)


def test_md5_rejects_corrupted_archive(cifar10_archive: Path) -> None:
    data = bytearray(cifar10_archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    cifar10_archive.write_bytes(bytes(data))
    with pytest.raises(CorruptDatasetError, match="md5 mismatch") as err:
        load_dataset("cifar10", cifar10_archive.parent, "train")
    assert str(cifar10_archive) in str(err.value)
    assert "delete it and download it again" in str(err.value) and "verify" not in str(err.value)


def test_cifar_on_an_image_folder_says_which_dataset_it_is(tmp_path: Path) -> None:
    """An image folder or its archive given as CIFAR: no md5 complaint or download advice, the dataset to use."""
    members, _ = folder_members("cifar10-jpeg/")
    archive = write_tar(tmp_path / "cifar10-jpeg.tar.gz", members)
    folder = write_tree(tmp_path / "folder", members)
    for root in (archive, folder, folder / "cifar10-jpeg"):
        with pytest.raises(DataError, match="'imagefolder' dataset") as err:
            load_dataset("cifar10", root, "train")
        assert str(root) in str(err.value) and "md5" not in str(err.value) and "download" not in str(err.value)


def test_real_md5_is_checked_by_default(tmp_path: Path) -> None:
    # Without registering the fake's md5, the official checksum rejects it.
    (tmp_path / "d").mkdir()
    write_tar(tmp_path / "d" / "cifar-10-python.tar.gz", cifar10_members())
    with pytest.raises(CorruptDatasetError, match="c58f30108f718f92721af3b95e74349a"):
        load_dataset("cifar10", tmp_path / "d", "test")
    assert len(load_dataset("cifar10", tmp_path / "d", "test", verify=False)) == CIFAR10_TEST


def test_truncated_archive_gives_clear_error(cifar10_archive: Path) -> None:
    data = cifar10_archive.read_bytes()
    cifar10_archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptDatasetError, match="truncated or corrupt") as err:
        load_cifar("cifar10", cifar10_archive.parent, "train", verify=False)
    assert str(cifar10_archive) in str(err.value)
    with pytest.raises(CorruptDatasetError, match="md5 mismatch"):
        load_cifar("cifar10", cifar10_archive.parent, "train")


def test_corrupt_or_missing_file_in_extracted_folder(tmp_path: Path) -> None:
    folder = write_tree(tmp_path, cifar10_members()) / "cifar-10-batches-py"
    (folder / "data_batch_3").write_bytes(b"not a pickle at all")
    with pytest.raises(CorruptDatasetError, match="data_batch_3"):
        load_cifar("cifar10", tmp_path, "train")
    (folder / "data_batch_3").unlink()
    with pytest.raises(DatasetNotFoundError, match="data_batch_3"):
        load_cifar("cifar10", tmp_path, "train")
    assert len(load_cifar("cifar10", tmp_path, "test")) == CIFAR10_TEST


def test_unpickler_refuses_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple:
            return (os.mkdir, (str(marker),))

    members = cifar10_members()
    members["cifar-10-batches-py/test_batch"] = pickle.dumps({b"data": Evil(), b"labels": []}, protocol=2)
    write_tree(tmp_path, members)
    with pytest.raises(CorruptDatasetError, match="refusing to load"):
        load_cifar("cifar10", tmp_path, "test")
    assert not marker.exists()


def test_missing_cifar_offline_message(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("cifar10", tmp_path, "train")
    msg = str(err.value)
    assert "cifar-10-python.tar.gz" in msg
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in msg
    assert str(tmp_path / "cifar-10-python.tar.gz") in msg
    assert isinstance(err.value, FileNotFoundError)


class FakeResponse:
    """Minimal urlopen() result: streams ``data``, then raises ``fail`` if given."""

    def __init__(self, data: bytes, fail: BaseException | None = None, length: int | None = None) -> None:
        self._buf = io.BytesIO(data)
        self._fail = fail
        self.headers = {"Content-Length": str(len(data) if length is None else length)}

    def read(self, n: int = -1) -> bytes:
        block = self._buf.read(min(n, 7))
        if not block and self._fail is not None:
            raise self._fail
        return block

    def __enter__(self) -> FakeResponse:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


@pytest.mark.parametrize("mode", ["no_network", "cut_midway"])
def test_download_offline_fails_cleanly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    def fake_urlopen(url: str, timeout: float = 0) -> FakeResponse:
        if mode == "no_network":
            raise urllib.error.URLError(OSError(101, "Network is unreachable"))
        return FakeResponse(b"\x1f\x8b" + b"x" * 40, fail=ConnectionResetError(104, "Connection reset by peer"))

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    root = tmp_path / "data"
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("cifar10", root, "train", download=True, progress=False)
    msg = str(err.value)
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in msg
    assert str(root / "cifar-10-python.tar.gz") in msg and "download failed" in msg
    assert not root.exists() or list(root.iterdir()) == []  # no partial or temporary file


def test_download_success_and_md5_mismatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    payload = write_tar(tmp_path / "src.tar.gz", cifar10_members()).read_bytes()
    seen = []

    def fake_urlopen(url: str, timeout: float = 0) -> FakeResponse:
        seen.append(url)
        return FakeResponse(payload)

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    root = tmp_path / "data"
    # The official md5 rejects the fake: nothing is saved.
    with pytest.raises(CorruptDatasetError, match="md5"):
        load_dataset("cifar10", root, "test", download=True, progress=False)
    assert list(root.iterdir()) == []
    spec = dataclasses.replace(CIFAR_SPECS["cifar10"], md5=file_md5(tmp_path / "src.tar.gz"))
    monkeypatch.setitem(CIFAR_SPECS, "cifar10", spec)
    ds = load_dataset("cifar10", root, "test", download=True, progress=False)
    assert seen[-1] == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    assert [p.name for p in root.iterdir()] == ["cifar-10-python.tar.gz"]
    np.testing.assert_array_equal(ds.images, expected_nhwc(100, CIFAR10_TEST))


def test_download_short_read_is_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=0: FakeResponse(b"abc", length=1000))
    with pytest.raises(DatasetNotFoundError, match="cut short"):
        load_dataset("cifar10", tmp_path / "d", "train", download=True, progress=False)
    assert list((tmp_path / "d").iterdir()) == []


# Image-folder fixtures ------------------------------------------------------------------


def folder_image(cls: int, k: int, size: tuple[int, int] = (6, 5)) -> np.ndarray:
    """A distinct (H, W, 3) uint8 pattern for image k of class cls."""
    h, w = size
    y, x, c = np.meshgrid(np.arange(h), np.arange(w), np.arange(3), indexing="ij")
    return ((y * 40 + x * 17 + c * 60 + cls * 29 + k * 5) % 256).astype(np.uint8)


FOLDER_CLASSES = ["bird", "cat", "dog"]  # written in another order below; sorted by name when loaded


def encode(array: np.ndarray, fmt: str, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    img = Image.fromarray(array)
    if mode != "RGB":
        img = img.convert(mode)
    img.save(buf, format=fmt, **({"quality": 100, "subsampling": 0} if fmt == "JPEG" else {}))
    return buf.getvalue()


def folder_members(prefix: str = "") -> tuple[dict[str, bytes], dict[str, list[np.ndarray]]]:
    """train/ with PNG files (exact) and test/ with PNG + JPEG files, plus files that must be ignored."""
    members: dict[str, bytes] = {}
    expected: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    for ci, cls in enumerate(FOLDER_CLASSES):
        for k in range(3):
            a = folder_image(ci, k)
            members[f"{prefix}train/{cls}/{k:03d}.png"] = encode(a, "PNG")
            expected["train"].append(a)
        for k in range(2):
            a = folder_image(ci, 10 + k)
            ext = "jpg" if k == 0 else "JPEG"
            members[f"{prefix}test/{cls}/{k:03d}.{ext}"] = encode(a, "JPEG")
            expected["test"].append(a)
    members[f"{prefix}train/cat/._000.png"] = b"AppleDouble junk"  # hidden: ignored
    members[f"{prefix}train/cat/notes.txt"] = b"not an image"
    members[f"{prefix}test/.DS_Store"] = b"junk"
    return members, expected


def check_folder_dataset(ds: Dataset, expected: dict[str, list[np.ndarray]], split: str) -> None:
    per_class = 3 if split == "train" else 2
    assert ds.classes == tuple(FOLDER_CLASSES)
    np.testing.assert_array_equal(ds.labels, np.repeat(np.arange(3), per_class))
    assert ds.images.shape == (3 * per_class, 6, 5, 3) and ds.images.dtype == np.uint8
    want = np.stack(expected[split])
    if split == "train":  # PNG: exact
        np.testing.assert_array_equal(ds.images, want)
    else:  # JPEG quality 100, no chroma subsampling: within a few levels
        assert np.abs(ds.images.astype(int) - want).max() <= 8


@pytest.fixture
def image_folder(tmp_path: Path) -> tuple[Path, dict[str, list[np.ndarray]]]:
    members, expected = folder_members()
    return write_tree(tmp_path / "folder", members), expected


@pytest.mark.parametrize("split", ["train", "test"])
def test_image_folder_from_directory(image_folder: tuple, split: str) -> None:
    root, expected = image_folder
    ds = load_dataset("imagefolder", root, split)
    check_folder_dataset(ds, expected, split)


@pytest.mark.parametrize(("prefix", "mode", "suffix"), [("", "w:gz", ".tar.gz"), ("mydata/", "w", ".tar")])
def test_image_folder_from_tarball(tmp_path: Path, prefix: str, mode: str, suffix: str) -> None:
    members, expected = folder_members(prefix)
    archive = write_tar(tmp_path / f"images{suffix}", members, mode)
    for split in ("train", "test"):
        check_folder_dataset(load_image_folder(archive, split), expected, split)


def test_image_folder_modes_and_one_top_folder(tmp_path: Path) -> None:
    a = folder_image(0, 0)
    members = {
        "top/train/a/rgb.png": encode(a, "PNG"),
        "top/train/a/rgba.png": encode(a, "PNG", "RGBA"),
        "top/train/b/gray.png": encode(a, "PNG", "L"),
        "top/train/b/pal.png": encode(a, "PNG", "P"),
    }
    ds = load_image_folder(write_tree(tmp_path / "f", members), "train")
    assert ds.images.shape == (4, 6, 5, 3)
    np.testing.assert_array_equal(ds.images[0], a)
    np.testing.assert_array_equal(ds.images[1], a)  # alpha dropped
    gray = np.asarray(Image.fromarray(a).convert("L"))
    np.testing.assert_array_equal(ds.images[2], np.repeat(gray[..., None], 3, axis=2))
    with pytest.raises(DatasetNotFoundError, match="no test/ split"):
        load_image_folder(tmp_path / "f", "test")


def test_class_order_file(tmp_path: Path) -> None:
    members, _ = folder_members()
    members["classes.txt"] = b"dog\ncat\nbird\n"
    archive = write_tar(tmp_path / "x.tar.gz", members)
    ds = load_image_folder(archive, "train")
    assert ds.classes == ("dog", "cat", "bird")
    np.testing.assert_array_equal(ds.labels, np.repeat([0, 1, 2], 3))
    np.testing.assert_array_equal(ds.images[:3], np.stack([folder_image(2, k) for k in range(3)]))  # dog first
    members["classes.txt"] = b"dog\ncat\n"
    with pytest.raises(CorruptDatasetError, match="does not list the class folder"):
        load_image_folder(write_tree(tmp_path / "f", members), "train")


def test_image_folder_errors(tmp_path: Path) -> None:
    members, _ = folder_members()
    members["train/dog/big.png"] = encode(folder_image(0, 0, size=(7, 5)), "PNG")
    with pytest.raises(CorruptDatasetError, match="share one size") as err:
        load_image_folder(write_tree(tmp_path / "sizes", members), "train", cache=False)
    assert "train/dog/big.png" in str(err.value)

    members, _ = folder_members()
    members["test/cat/000.jpg"] = b"\xff\xd8\xff garbage"
    archive = write_tar(tmp_path / "bad.tar.gz", members)
    with pytest.raises(CorruptDatasetError, match=re.escape("test/cat/000.jpg")) as err:
        load_image_folder(archive, "test")
    assert str(archive) in str(err.value)

    members, _ = folder_members()
    data = write_tar(tmp_path / "t.tar.gz", members).read_bytes()
    (tmp_path / "t.tar.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptDatasetError, match="truncated") as err:
        load_image_folder(tmp_path / "t.tar.gz", "train")
    assert str(tmp_path / "t.tar.gz") in str(err.value)

    write_tree(tmp_path / "flat", {"a/x.png": encode(folder_image(0, 0), "PNG")})
    with pytest.raises(CorruptDatasetError, match="no train/ or test/ folder"):
        load_image_folder(tmp_path / "flat", "train")


def test_decoder_pool_matches_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    members, _ = folder_members()
    archive = write_tar(tmp_path / "p.tar.gz", members)
    ref, ref_classes = imf_mod.decode_image_folder(archive, workers=0)
    monkeypatch.setattr(imf_mod, "_CHUNK", 2)  # several chunks -> a process pool
    pooled, classes = imf_mod.decode_image_folder(archive, workers=2)
    assert classes == ref_classes
    for split in ("train", "test"):
        np.testing.assert_array_equal(pooled[split][0], ref[split][0])
        np.testing.assert_array_equal(pooled[split][1], ref[split][1])
    members["train/dog/002.png"] = b"\x89PNG broken"
    with pytest.raises(
        CorruptDatasetError, match=re.escape("train/dog/002.png")
    ):  # a worker's error reaches the caller
        imf_mod.decode_image_folder(write_tree(tmp_path / "f", members), workers=2)


# The decode cache ----------------------------------------------------------------------------


def _cache_files(tmp_path: Path) -> list[Path]:
    """The caches in the default cache folder ($XDG_CACHE_HOME/pvt_np, set by _isolated_cache)."""
    folder = tmp_path / "xdg" / "pvt_np"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def _count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = imf_mod._decode_items
    monkeypatch.setattr(imf_mod, "_decode_items", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_cache_reused_and_invalidated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    members, expected = folder_members()
    (tmp_path / "src").mkdir()
    archive = write_tar(tmp_path / "src" / "imgs.tar.gz", members)
    first = load_image_folder(archive, "train")
    assert [p.name for p in archive.parent.iterdir()] == ["imgs.tar.gz"]  # nothing beside the data
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert [p.name for p in _cache_files(tmp_path)] == [f"imagefolder-sha256-{digest[:32]}.npz"]  # no temporary

    calls = _count_decodes(monkeypatch)
    second = load_image_folder(archive, "train")
    test = load_image_folder(archive, "test")  # both splits come from the one cache
    assert calls == []
    assert (first.name, second.name, test.name) == ("imagefolder",) * 3 and test.source == str(archive)
    np.testing.assert_array_equal(second.images, first.images)
    np.testing.assert_array_equal(second.labels, first.labels)
    assert second.classes == first.classes
    check_folder_dataset(test, expected, "test")

    # A copy of the archive elsewhere, under another name, has the same contents: the same cache.
    copy = tmp_path / "elsewhere" / "copy.tar.gz"
    copy.parent.mkdir()
    shutil.copyfile(archive, copy)
    check_folder_dataset(load_image_folder(copy, "test"), expected, "test")
    assert calls == [] and len(_cache_files(tmp_path)) == 1

    # Change the source: a fourth bird -> decoded again, into a new cache.
    members["train/bird/003.png"] = encode(folder_image(0, 3), "PNG")
    write_tar(archive, members)
    third = load_image_folder(archive, "train")
    assert calls == [1] and len(third) == len(first) + 1
    np.testing.assert_array_equal(third.images[3], folder_image(0, 3))
    load_image_folder(archive, "train")
    assert calls == [1]  # and the new cache is used


def test_cache_is_keyed_by_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Swap two images' contents in a plain tar and give it back its size and mtime: only the contents tell.
    members, _ = folder_members()
    archive = write_tar(tmp_path / "imgs.tar", members, "w")
    os.utime(archive, ns=(10**18, 10**18))
    before = load_image_folder(archive, "train")
    size = archive.stat().st_size
    a, b = "train/cat/000.png", "train/cat/001.png"
    members[a], members[b] = members[b], members[a]
    write_tar(archive, members, "w")
    os.utime(archive, ns=(10**18, 10**18))
    assert archive.stat().st_size == size
    calls = _count_decodes(monkeypatch)
    after = load_image_folder(archive, "train")
    assert calls == [1]
    np.testing.assert_array_equal(after.images[3], before.images[4])
    np.testing.assert_array_equal(after.images[4], before.images[3])


def test_cache_of_directory_tracks_files(image_folder: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, _ = image_folder
    listing = sorted(p.relative_to(root) for p in root.rglob("*"))
    load_image_folder(root, "train")
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == listing  # nothing written into the data
    assert [p.name.startswith("imagefolder-dir-") for p in _cache_files(tmp_path)] == [True]
    calls = _count_decodes(monkeypatch)
    load_image_folder(root, "train")
    assert calls == []
    (root / "train" / "cat" / "000.png").write_bytes(encode(folder_image(5, 5), "PNG"))
    os.utime(root / "train" / "cat" / "000.png", ns=(2, 2))
    ds = load_image_folder(root, "train")
    assert calls == [1]
    np.testing.assert_array_equal(ds.images[3], folder_image(5, 5))
    assert len(_cache_files(tmp_path)) == 1  # the folder's cache was replaced, not added to


def test_cache_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    members, _ = folder_members()
    (tmp_path / "src").mkdir()
    archive = write_tar(tmp_path / "src" / "imgs.tar.gz", members)
    cache_dir = tmp_path / "cache"
    real_savez = np.savez

    def failing_savez(f: io.IOBase, **arrays: np.ndarray) -> None:
        f.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", failing_savez)
    ds = load_image_folder(archive, "train", cache_dir=cache_dir)  # the data still loads
    assert len(ds) == 9
    assert [p.name for p in archive.parent.iterdir()] == ["imgs.tar.gz"]
    assert list(cache_dir.iterdir()) == []  # no cache, no temporary file

    def interrupted_savez(f: io.IOBase, **arrays: np.ndarray) -> None:
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", interrupted_savez)
    with pytest.raises(KeyboardInterrupt):
        load_image_folder(archive, "train", cache_dir=cache_dir)
    assert list(cache_dir.iterdir()) == []

    monkeypatch.setattr(np, "savez", real_savez)
    load_image_folder(archive, "train", cache_dir=cache_dir)
    assert [p.suffix for p in cache_dir.iterdir()] == [".npz"]
    assert [p.name for p in archive.parent.iterdir()] == ["imgs.tar.gz"] and _cache_files(tmp_path) == []


def test_corrupt_cache_is_replaced(image_folder: tuple, tmp_path: Path) -> None:
    root, expected = image_folder
    load_image_folder(root, "train")
    (cache,) = _cache_files(tmp_path)
    cache.write_bytes(b"garbage")
    check_folder_dataset(load_image_folder(root, "train"), expected, "train")
    with np.load(cache) as z:
        assert "train_images" in z.files


def test_read_only_data_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing is written beside the data, so a read-only data folder works, even for root.

    Root writes through permission bits, so the read-only folder is a monkeypatched write failure:
    any atomic write into it raises PermissionError (and the test fails if one is even tried).
    """
    members, expected = folder_members()
    src = tmp_path / "ro"
    src.mkdir()
    archive = write_tar(src / "imgs.tar.gz", members)
    real_atomic_write = imf_mod.atomic_write
    tried: list[Path] = []

    def guarded(path: os.PathLike[str], mode: str = "wb") -> Any:
        if Path(path).resolve().is_relative_to(src.resolve()):
            tried.append(Path(path))
            raise PermissionError(13, "Permission denied", str(path))
        return real_atomic_write(path, mode)

    monkeypatch.setattr(imf_mod, "atomic_write", guarded)
    cache_dir = tmp_path / "mycache"
    check_folder_dataset(load_image_folder(archive, "test", cache_dir=cache_dir), expected, "test")
    assert tried == [] and [p.name for p in src.iterdir()] == ["imgs.tar.gz"]
    assert [p.suffix for p in cache_dir.iterdir()] == [".npz"]
    with pytest.MonkeyPatch.context() as mp:  # the second load reads the cache: no decoding
        mp.setattr(imf_mod, "_decode_items", lambda *a, **k: pytest.fail("decoded again"))
        check_folder_dataset(load_image_folder(archive, "train", cache_dir=cache_dir), expected, "train")
    # Without cache_dir the cache goes to $XDG_CACHE_HOME/pvt_np.
    load_image_folder(archive, "train")
    assert len(_cache_files(tmp_path)) == 1 and tried == []


def test_unwritable_cache_folder_costs_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    members, expected = folder_members()
    archive = write_tar(tmp_path / "imgs.tar.gz", members)

    def denied(path: os.PathLike[str], mode: str = "wb") -> Any:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(imf_mod, "atomic_write", denied)
    with caplog.at_level(logging.WARNING, logger="pvt_np.data"):
        check_folder_dataset(load_image_folder(archive, "train", cache_dir=tmp_path / "c"), expected, "train")
    message = " ".join(r.getMessage() for r in caplog.records)
    assert str(tmp_path / "c") in message and "Permission denied" in message and "--cache-dir" in message
    assert [p.name for p in tmp_path.iterdir()] == ["imgs.tar.gz"]


# load_dataset --------------------------------------------------------------------------------


def test_load_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cifar10, cifar100, imagefolder") as err:
        load_dataset("mnist", tmp_path)
    assert "mnist" in str(err.value)
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        load_dataset("imagefolder", tmp_path / "nowhere", "train")
    with pytest.raises(ValueError, match="split"):
        load_dataset("cifar10", tmp_path, "val")
    with pytest.raises(ValueError, match="download"):
        load_dataset("imagefolder", tmp_path, "train", download=True)


def test_dataset_validation() -> None:
    images = np.zeros((4, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="uint8"):
        Dataset(images.astype(np.float32), np.zeros(4, np.int64), ("a",))
    with pytest.raises(ValueError, match="4 images but 3 labels"):
        Dataset(images, np.zeros(3, np.int64), ("a",))
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        Dataset(images, np.array([0, 1, 2, 0]), ("a", "b"))
    ds = Dataset(images + 51, np.array([0, 1, 1, 0], np.int32), ("a", "b"))
    assert ds.labels.dtype == np.int64 and ds.image_size == (8, 8)
    mean, std = ds.mean_std()
    np.testing.assert_allclose(mean, 0.2)
    np.testing.assert_allclose(std, 0.0, atol=1e-7)


# Batching ---------------------------------------------------------------------------------------


def id_images(n: int, h: int = 8, w: int = 8) -> np.ndarray:
    """Images whose every pixel encodes the image's index: channel 0 = i % 256, channel 1 = i // 256."""
    images = np.zeros((n, h, w, 3), np.uint8)
    images[..., 0] = (np.arange(n) % 256)[:, None, None]
    images[..., 1] = (np.arange(n) // 256)[:, None, None]
    images[..., 2] = 200
    return images


def ids_of(x: np.ndarray) -> np.ndarray:
    """Inverse of id_images for an unaugmented, unnormalised batch (values on the 0-1 scale)."""
    px = np.rint(backend.to_numpy(x)[:, :, 0, 0] * 255).astype(int)
    return px[:, 0] + 256 * px[:, 1]


def batches_equal(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        np.array_equal(backend.to_numpy(p.x), backend.to_numpy(q.x))
        and np.array_equal(backend.to_numpy(p.y), backend.to_numpy(q.y))
        for p, q in zip(a, b, strict=True)
    )


def test_batches_deterministic_and_cover_epoch() -> None:
    n = 103
    images, labels = id_images(n), np.arange(n) % 10
    loader = BatchLoader(images, labels, 16, seed=7)
    assert len(loader) == 7  # 6 full + the partial last batch
    epoch0 = list(loader.epoch(0))
    assert [b.x.shape[0] for b in epoch0] == [16] * 6 + [7]
    assert epoch0[0].x.shape == (16, 3, 8, 8) and epoch0[0].x.dtype == np.float32
    assert epoch0[0].y.dtype == np.int64
    ids = np.concatenate([ids_of(b.x) for b in epoch0])
    assert sorted(ids) == list(range(n))  # each sample exactly once
    np.testing.assert_array_equal(np.concatenate([b.y for b in epoch0]), labels[ids])
    np.testing.assert_array_equal(ids, loader.order(0))
    assert batches_equal(epoch0, list(BatchLoader(images, labels, 16, seed=7).epoch(0)))  # same seed
    ids1 = np.concatenate([ids_of(b.x) for b in loader.epoch(1)])
    assert sorted(ids1) == list(range(n)) and not np.array_equal(ids1, ids)  # new order each epoch
    other = np.concatenate([ids_of(b.x) for b in BatchLoader(images, labels, 16, seed=8).epoch(0)])
    assert not np.array_equal(other, ids)
    assert batches_equal(epoch0, list(loader.epoch(0)))  # asking again gives the same batches

    dropped = BatchLoader(images, labels, 16, seed=7, drop_last=True)
    assert len(dropped) == 6 and [b.x.shape[0] for b in dropped.epoch(0)] == [16] * 6
    plain = BatchLoader(images, labels, 50, shuffle=False)
    np.testing.assert_array_equal(np.concatenate([ids_of(b.x) for b in plain.epoch(3)]), np.arange(n))


def test_resume_mid_epoch_gives_same_batches() -> None:
    images, labels = id_images(70, 12, 12), np.arange(70) % 5
    aug = Augment(crop_padding=3, hflip=True, mixup_alpha=0.4, cutmix_alpha=1.0)
    full = list(BatchLoader(images, labels, 9, seed=3, augment=aug, num_classes=5).epoch(4))
    resumed_loader = BatchLoader(images, labels, 9, seed=3, augment=aug, num_classes=5)  # a fresh process
    resumed = list(resumed_loader.epoch(4, start_batch=5))
    assert len(resumed) == len(full) - 5
    assert batches_equal(resumed, full[5:])
    assert batches_equal([resumed_loader.batch(4, 2)], [full[2]])
    assert list(resumed_loader.epoch(4, start_batch=len(full))) == []
    with pytest.raises(ValueError, match="start_batch"):
        next(resumed_loader.epoch(4, start_batch=len(full) + 1))


def test_batch_size_larger_than_dataset() -> None:
    with pytest.raises(ValueError, match=r"batch_size 11 .*\(10 samples\)"):
        BatchLoader(id_images(10), np.zeros(10, np.int64), 11)
    with pytest.raises(ValueError, match="batch_size"):
        BatchLoader(id_images(10), np.zeros(10, np.int64), 0)


def reference_crop_flip(image: np.ndarray, dy: int, dx: int, flip: bool, pad: int) -> np.ndarray:
    """Per-image reference: zero-pad, crop at (dy, dx) of the padded image, then mirror."""
    h, w, _ = image.shape
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    out = padded[dy : dy + h, dx : dx + w]
    return out[:, ::-1] if flip else out


@pytest.mark.parametrize("pad", [0, 2, 4])
def test_crop_flip_matches_reference(pad: int) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(1, 256, size=(30, 9, 7, 3), dtype=np.uint8)  # no zero pixels: padding is visible
    index = rng.permutation(30)[:20]
    dy, dx, flip = sample_crop_flip(rng, 20, pad, True)
    out = crop_flip_gather(images, index, dy, dx, flip, pad)
    assert out.shape == (20, 9, 7, 3) and out.dtype == np.uint8
    for b in range(20):
        np.testing.assert_array_equal(out[b], reference_crop_flip(images[index[b]], dy[b], dx[b], flip[b], pad))
    # Extreme offsets: the padding is zeros, exactly pad rows/cols of it.
    ones = np.full((2, 9, 7, 3), 255, np.uint8)
    corner = crop_flip_gather(
        ones, np.array([0, 1]), np.array([0, 2 * pad]), np.array([0, 2 * pad]), np.array([False, False]), pad
    )
    assert (corner[0, :pad] == 0).all() and (corner[0, :, :pad] == 0).all() and (corner[0, pad:, pad:] == 255).all()
    assert (corner[1, 9 - pad :] == 0).all() and (corner[1, : 9 - pad, : 7 - pad] == 255).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_translate_is_a_fixed_crop_of_the_padded_image(dtype: Any) -> None:
    """translate(x, dy, dx, loader.zero_pixel) on a loader's normalised batch equals the normalised crop at offset
    (p + dy, p + dx) of the image zero-padded by p (the crops of training), for every shift up to p = 3; the
    image itself at (0, 0); a new array."""
    rng = np.random.default_rng(3)
    images = rng.integers(1, 256, size=(6, 9, 7, 3), dtype=np.uint8)  # no zero pixels: the fill is visible
    loader = BatchLoader(images, np.zeros(6, np.int64), 6, shuffle=False, mean=(0.5, 0.4, 0.3),
                         std=(0.2, 0.25, 0.3), dtype=dtype)  # fmt: skip
    x, _ = next(iter(loader.epoch(0)))
    pad = 3
    for dy in range(-pad, pad + 1):
        for dx in range(-pad, pad + 1):
            out = translate(x, dy, dx, loader.zero_pixel)
            assert out.shape == x.shape and out.dtype == dtype and out is not x
            crops = np.stack([reference_crop_flip(im, pad + dy, pad + dx, False, pad) for im in images])
            want = ((crops / 255.0 - np.array([0.5, 0.4, 0.3])) / np.array([0.2, 0.25, 0.3])).transpose(0, 3, 1, 2)
            np.testing.assert_allclose(out, want, rtol=1e-6 if dtype == np.float32 else 1e-13, atol=1e-6)
    # The content moves up by dy and left by dx: the pixel at (i + dy, j + dx) lands at (i, j).
    out = translate(x, 2, -1, loader.zero_pixel)
    np.testing.assert_array_equal(out[:, :, :7, 1:], x[:, :, 2:, :6])
    np.testing.assert_array_equal(translate(x, 0, 0, loader.zero_pixel), x)


def test_translate_refuses_bad_shifts() -> None:
    x = np.zeros((2, 3, 5, 4), np.float32)
    fill = np.zeros((1, 3, 1, 1), np.float32)
    with pytest.raises(ValueError, match=r"translate: dy, dx must be whole pixels inside the 5x4 image, got 0, 4"):
        translate(x, 0, 4, fill)
    with pytest.raises(ValueError, match=r"got 1.5, 0"):
        translate(x, 1.5, 0, fill)
    with pytest.raises(ValueError, match=r"translate: expected an \(N, C, H, W\) batch, got shape \(3, 5, 4\)"):
        translate(x[0], 1, 0, fill)
    with pytest.raises(ValueError, match=r"translate: fill must hold one value per channel \(3\), got"):
        translate(x, 1, 0, fill[:, :2])


def test_loader_augmentation_uses_documented_seeds() -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(40, 10, 10, 3), dtype=np.uint8)
    labels = rng.integers(0, 4, size=40)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    loader = BatchLoader(images, labels, 16, seed=11, augment=Augment.cifar(), mean=mean, std=std)
    epoch, k = 2, 1
    x, y = loader.batch(epoch, k)
    idx = np.random.default_rng(backend.derive_seed(11, epoch)).permutation(40)[16:32]
    dy, dx, flip = sample_crop_flip(np.random.default_rng(backend.derive_seed(11, epoch, k)), 16, 4, True)
    want = np.stack([reference_crop_flip(images[i], a, b, f, 4) for i, a, b, f in zip(idx, dy, dx, flip, strict=True)])
    want = (want / 255.0 - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(x, want.transpose(0, 3, 1, 2), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(y, labels[idx])


def test_flip_rate_and_offsets() -> None:
    dy, dx, flip = sample_crop_flip(np.random.default_rng(5), 20000, 4, True)
    assert 0.48 < flip.mean() < 0.52
    assert set(np.unique(dy)) == set(range(9)) and set(np.unique(dx)) == set(range(9))
    # Through the loader: left half white, right half black; a flipped image is black on the left.
    images = np.zeros((1000, 4, 4, 3), np.uint8)
    images[:, :, :2] = 255
    loader = BatchLoader(images, np.zeros(1000, np.int64), 250, seed=2, augment=Augment(hflip=True))
    flipped = np.concatenate([backend.to_numpy(b.x)[:, 0, 0, 0] == 0 for b in loader.epoch(0)])
    assert 0.45 < flipped.mean() < 0.55


def test_normalization_and_layout() -> None:
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(5, 4, 6, 3), dtype=np.uint8)
    mean, std = np.array([0.4914, 0.4822, 0.4465]), np.array([0.2470, 0.2435, 0.2616])
    for dtype, tol in ((np.float32, 1e-5), (np.float64, 1e-12)):
        loader = BatchLoader(images, np.arange(5), 5, shuffle=False, mean=mean, std=std, dtype=dtype)
        x, _ = loader.batch(0, 0)
        assert x.dtype == dtype and x.shape == (5, 3, 4, 6) and x.flags.c_contiguous
        want = ((images / 255.0 - mean) / std).transpose(0, 3, 1, 2)
        np.testing.assert_allclose(x, want, rtol=tol, atol=tol)
    x, _ = BatchLoader(images, np.arange(5), 5, shuffle=False).batch(0, 0)
    np.testing.assert_allclose(x, images.transpose(0, 3, 1, 2) / 255.0, atol=1e-7)
    with pytest.raises(ValueError, match="one per channel"):
        BatchLoader(images, np.arange(5), 5, mean=(0.5, 0.5), std=(1, 1))


def test_mixup_pairs_and_targets() -> None:
    n, k = 12, 5
    images, labels = id_images(n), np.arange(n) % k
    aug = Augment(mixup_alpha=0.8)
    loader = BatchLoader(images, labels, 6, seed=4, augment=aug, num_classes=k)
    assert loader.soft_targets
    plain = BatchLoader(images, labels, 6, seed=4, num_classes=k)
    for b in range(len(loader)):
        x, y = loader.batch(1, b)
        x0, y0 = plain.batch(1, b)  # same order: the permutation depends only on (seed, epoch)
        mix = sample_mix(np.random.default_rng(backend.derive_seed(4, 1, b)), aug, 8, 8)
        assert mix.kind == "mixup" and 0 < mix.lam < 1
        np.testing.assert_allclose(x, mix.lam * x0 + (1 - mix.lam) * x0[::-1], rtol=1e-6, atol=1e-6)
        assert y.shape == (6, k) and y.dtype == np.float32
        np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-6)
        want = np.zeros((6, k))
        want[np.arange(6), y0] += mix.lam
        want[np.arange(6), y0[::-1]] += 1 - mix.lam
        np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-7)


def test_cutmix_box_and_targets() -> None:
    rng = np.random.default_rng(9)
    x = rng.standard_normal((7, 3, 16, 16)).astype(np.float32)
    labels = np.array([0, 1, 2, 3, 1, 2, 0])
    aug = Augment(cutmix_alpha=1.0)
    for seed in range(5):
        mix = sample_mix(np.random.default_rng(seed), aug, 16, 16)
        assert mix.kind == "cutmix"
        y0, y1, x0, x1 = mix.bbox
        out = cutmix(x, mix.bbox)
        inside = np.zeros((16, 16), bool)
        inside[y0:y1, x0:x1] = True
        np.testing.assert_array_equal(out[:, :, inside], x[::-1][:, :, inside])
        np.testing.assert_array_equal(out[:, :, ~inside], x[:, :, ~inside])
        assert mix.lam == pytest.approx(1 - inside.sum() / 256)
        t = mix_targets(labels, 4, mix.lam)
        np.testing.assert_allclose(t.sum(axis=1), 1.0, rtol=1e-6)
        # Image i is paired with image 6 - i: labels (0, 0), (1, 2), (2, 1), (3, 3).
        assert t[0, 0] == pytest.approx(1.0) and t[3, 3] == pytest.approx(1.0)
        assert t[1, 1] == pytest.approx(mix.lam) and t[1, 2] == pytest.approx(1 - mix.lam)
        assert t[5, 2] == pytest.approx(mix.lam) and t[5, 1] == pytest.approx(1 - mix.lam)
    # Both enabled: switch_prob picks cutmix about half the time; mix_prob=0 never mixes.
    kinds = [
        sample_mix(np.random.default_rng(s), Augment(mixup_alpha=1, cutmix_alpha=1), 8, 8).kind for s in range(400)
    ]
    assert 0.4 < kinds.count("cutmix") / 400 < 0.6 and set(kinds) == {"mixup", "cutmix"}
    assert sample_mix(np.random.default_rng(0), Augment(mixup_alpha=1, mix_prob=0), 8, 8).kind == "none"


def test_mixing_matches_timm() -> None:
    torch = pytest.importorskip("torch")
    timm_mixup = pytest.importorskip("timm.data.mixup")
    labels = np.array([3, 0, 2, 2, 1, 4])
    for lam in (0.3, 0.71):
        ours = mix_targets(labels, 5, lam)
        theirs = timm_mixup.mixup_target(torch.from_numpy(labels), 5, lam=lam, smoothing=0.0).numpy()
        np.testing.assert_allclose(ours, theirs, rtol=1e-6)
    x = np.random.default_rng(0).standard_normal((6, 3, 4, 4)).astype(np.float32)
    xt = torch.from_numpy(x.copy())
    mixer = timm_mixup.Mixup(mixup_alpha=1.0, cutmix_alpha=0.0, label_smoothing=0.0, num_classes=5)
    state = np.random.get_state()  # noqa: NPY002
    try:
        np.random.seed(1)  # noqa: NPY002
        lam = mixer._mix_batch(xt)  # timm draws lam from NumPy's global generator
    finally:
        np.random.set_state(state)  # noqa: NPY002
    np.testing.assert_allclose(mixup(x, lam), xt.numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.gpu
def test_gpu_batches_match_cpu() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(50, 12, 12, 3), dtype=np.uint8)
    labels = rng.integers(0, 6, size=50)
    aug = Augment(crop_padding=4, hflip=True, mixup_alpha=0.5, cutmix_alpha=1.0)
    kw = {"seed": 5, "augment": aug, "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "num_classes": 6}
    cpu = list(BatchLoader(images, labels, 16, device="cpu", **kw).epoch(1))
    gpu = list(BatchLoader(images, labels, 16, device="gpu", **kw).epoch(1))
    assert backend.device_of(gpu[0].x) == "gpu" and backend.device_of(gpu[0].y) == "gpu"
    for c, g in zip(cpu, gpu, strict=True):
        np.testing.assert_allclose(backend.to_numpy(g.x), c.x, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(backend.to_numpy(g.y), c.y, rtol=1e-6, atol=1e-7)


# -- TrivialAugment -------------------------------------------------------------------------------


def _torchvision_op(image: np.ndarray, name: str, m: float) -> np.ndarray:
    """torchvision's functional on one uint8 HWC image, with trivial_augment's magnitude -> parameter maps."""
    torch = pytest.importorskip("torch")
    tf = pytest.importorskip("torchvision.transforms.functional")
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous()
    f = 1.0 + 0.99 * m
    h, w = image.shape[:2]
    if name == "identity":
        return image
    if name == "brightness":
        out = tf.adjust_brightness(t, f)
    elif name == "contrast":
        out = tf.adjust_contrast(t, f)
    elif name == "saturation":
        out = tf.adjust_saturation(t, f)
    elif name == "solarize":
        threshold = round(256 * (1 - abs(m)))
        if threshold == 256:  # torchvision refuses a threshold above the largest value: nothing is inverted
            return image
        out = tf.solarize(t, float(threshold))
    elif name == "posterize":
        out = tf.posterize(t, int(8 - round(6 * abs(m))))
    elif name in ("translate_x", "translate_y"):
        shift = round(m * ((w if name == "translate_x" else h) // 2))
        move = [shift, 0] if name == "translate_x" else [0, shift]
        out = tf.affine(t, angle=0.0, translate=move, scale=1.0, shear=[0.0, 0.0])
    else:
        raise AssertionError(name)
    return out.permute(1, 2, 0).numpy()


def _shear_reference(image: np.ndarray, name: str, m: float) -> np.ndarray:
    """The documented whole-pixel shear, pixel by pixel."""
    h, w, _ = image.shape
    out = np.zeros_like(image)
    for y in range(h):
        for x in range(w):
            if name == "shear_x":
                sy, sx = y, x - int(np.rint(0.99 * m * (y - (h - 1) / 2)))
            else:
                sy, sx = y - int(np.rint(0.99 * m * (x - (w - 1) / 2))), x
            if 0 <= sy < h and 0 <= sx < w:
                out[y, x] = image[sy, sx]
    return out


def _trivial_images() -> np.ndarray:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 12, 10, 3), dtype=np.uint8)
    images[2:] = images[2:] // 3 + 60  # low contrast too: the contrast and saturation blends do not saturate
    return images


@pytest.mark.parametrize("name", TRIVIAL_OPS)
def test_trivial_ops_match_torchvision_or_the_formula(name: str) -> None:
    """Each op at every level equals torchvision's functional (the shears: the explicit formula) bit for bit."""
    images = _trivial_images()
    op = np.full(len(images), TRIVIAL_OPS.index(name))
    for level in range(-30, 31):
        out = trivial_augment(images, op, np.full(len(images), level))
        assert out.dtype == np.uint8 and out.shape == images.shape
        if level == 0:
            np.testing.assert_array_equal(out, images)
        for image, got in zip(images, out, strict=True):
            if name.startswith("shear"):
                want = _shear_reference(image, name, level / 30)
            else:
                want = _torchvision_op(image, name, level / 30)
            np.testing.assert_array_equal(got, want, err_msg=f"{name} at level {level}")


def test_trivial_mixed_batch_equals_each_image_alone() -> None:
    """Images that drew different ops in one batch get what each gets alone (the others' parameters are neutral)."""
    images = np.concatenate([_trivial_images()] * 10)
    op, level = sample_trivial(np.random.default_rng(4), len(images))
    assert set(op.tolist()) == set(range(len(TRIVIAL_OPS)))
    out = trivial_augment(images, op, level)
    for i in range(len(images)):
        alone = trivial_augment(images[i : i + 1], op[i : i + 1], level[i : i + 1])
        np.testing.assert_array_equal(out[i : i + 1], alone)
    np.testing.assert_array_equal(trivial_augment(images, op, np.zeros_like(level)), images)
    with pytest.raises(ValueError, match=r"expected uint8 RGB images \(B, H, W, 3\), got uint8 \(2, 4, 4, 1\)"):
        trivial_augment(np.zeros((2, 4, 4, 1), np.uint8), op[:2], level[:2])


def test_trivial_draws_and_loader_determinism() -> None:
    """Levels in range, signs only where the op has a direction; batches a function of (seed, epoch, batch)."""
    op, level = sample_trivial(np.random.default_rng(0), 20000)
    unsigned = np.isin(op, [TRIVIAL_OPS.index(n) for n in ("identity", "solarize", "posterize")])
    assert level.min() == -30 and level.max() == 30 and (level[unsigned] >= 0).all()
    assert set(np.unique(op)) == set(range(len(TRIVIAL_OPS)))
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(40, 10, 10, 3), dtype=np.uint8)
    labels = rng.integers(0, 4, size=40)
    aug = Augment(crop_padding=2, hflip=True, trivial=True)
    a = BatchLoader(images, labels, 16, seed=11, augment=aug, dtype=np.float64)
    b = BatchLoader(images, labels, 16, seed=11, augment=aug, dtype=np.float64)
    plain = BatchLoader(images, labels, 16, seed=11, augment=Augment(crop_padding=2, hflip=True), dtype=np.float64)
    x1 = a.batch(2, 1).x
    assert x1.dtype == np.float64 and x1.shape == (16, 3, 10, 10)
    np.testing.assert_array_equal(b.batch(2, 1).x, x1)  # a fresh loader: the same batch
    np.testing.assert_array_equal(a.batch(2, 0).x, b.batch(2, 0).x)
    assert not np.array_equal(a.batch(2, 0).x, x1) and not np.array_equal(a.batch(3, 1).x, x1)
    # The documented draws: crop and flip as without TrivialAugment, then the ops, applied after the crop.
    epoch, k = 2, 1
    idx = np.random.default_rng(backend.derive_seed(11, epoch)).permutation(40)[16:32]
    draws = np.random.default_rng(backend.derive_seed(11, epoch, k))
    dy, dx, flip = sample_crop_flip(draws, 16, 2, True)
    op, level = sample_trivial(draws, 16)
    want = trivial_augment(crop_flip_gather(images, idx, dy, dx, flip, 2), op, level)
    np.testing.assert_array_equal(x1, want.transpose(0, 3, 1, 2) * (1.0 / 255.0))  # the loader scales by 1 / 255
    assert not np.array_equal(plain.batch(epoch, k).x, x1)
    with pytest.raises(ValueError, match="TrivialAugment needs RGB images \\(3 channels\\), got 1"):
        BatchLoader(images[..., :1], labels, 16, augment=aug)
    with pytest.raises(ValueError, match="Augment: trivial must be True or False, got 'yes'"):
        Augment(trivial="yes")  # type: ignore[arg-type]


# Progressive resizing: the antialiased bilinear resize ---------------------------------------------------------

RESIZES = [(32, 32, 24, 24), (17, 23, 9, 16), (16, 16, 12, 12), (5, 7, 8, 11), (1, 4, 3, 1)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("h", "w", "oh", "ow"), RESIZES, ids=[f"{h}x{w}->{oh}x{ow}" for h, w, oh, ow in RESIZES])
def test_resize_bilinear_equals_torch_antialiased_interpolate(h: int, w: int, oh: int, ow: int, dtype: Any) -> None:
    """Shrinking (the triangle stretched over the scale) and enlarging (plain bilinear), uneven sizes."""
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(h * 100 + w).standard_normal((2, 3, h, w)).astype(dtype)
    y = resize_bilinear(x, (oh, ow))
    # torch in float64 on the same (rounded) input is the reference for both dtypes: torch's own float32
    # kernel differs from it by up to ~3e-6 here, more than the float32 rounding of this product.
    want = torch.nn.functional.interpolate(
        torch.from_numpy(x.astype(np.float64)), size=(oh, ow), mode="bilinear", antialias=True, align_corners=False
    ).numpy()
    assert y.dtype == dtype and y.shape == (2, 3, oh, ow) and y.flags.c_contiguous
    np.testing.assert_allclose(y, want, rtol=0, atol=1e-6 if dtype == np.float32 else 1e-14)


def test_resize_matrix_rows_and_identity() -> None:
    for n_in, n_out in ((32, 24), (7, 3), (3, 7), (1, 5), (5, 1)):
        r = resize_matrix(n_in, n_out)
        assert r.shape == (n_out, n_in) and (r >= 0).all()
        np.testing.assert_allclose(r.sum(axis=1), 1.0, rtol=0, atol=1e-15)  # a constant image stays constant
    np.testing.assert_array_equal(resize_matrix(9, 9), np.eye(9))
    assert resize_matrix(32, 24) is resize_matrix(32, 24) and not resize_matrix(32, 24).flags.writeable
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 5))
    np.testing.assert_array_equal(resize_bilinear(x, (6, 5)), x)
    # Halving: output 0 is centred at 0.5 and its triangle reaches 2 pixels out, weights 1 - |j - 0.5| / 2
    # = 3/4, 3/4, 1/4, 0 for j = 0..3, normalised by their sum 7/4 (output 1 mirrors it).
    np.testing.assert_allclose(resize_matrix(4, 2), np.array([[3, 3, 1, 0], [0, 1, 3, 3]]) / 7, rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match=r"resize_matrix: sizes must be >= 1, got 4 -> 0"):
        resize_matrix(4, 0)
    with pytest.raises(ValueError, match=r"expected an \(N, C, H, W\) batch, got shape \(3, 6, 5\)"):
        resize_bilinear(x[0], (3, 3))
