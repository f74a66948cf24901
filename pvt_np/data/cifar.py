"""CIFAR-10 and CIFAR-100 from the official "python version" releases.

Reads either the archive (``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``,
streamed, never extracted to disk) or its extracted folder
(``cifar-10-batches-py/`` / ``cifar-100-python/``). Each pickled batch holds
``b'data'``: uint8 (N, 3072), channel-major (1024 red, 1024 green, 1024 blue
values, row-major), and ``b'labels'`` (CIFAR-10) or ``b'fine_labels'`` (CIFAR-100).

The pickles are read with an unpickler that only reconstructs NumPy arrays, so
a tampered file cannot run code. Every failure (missing file, truncated or
corrupt archive, md5 mismatch, offline download) becomes one
:mod:`~pvt_np.data.errors` exception whose message names the file and the fix.
"""

from __future__ import annotations

import codecs
import io
import itertools
import os
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pvt_np.data.dataset import SPLITS, Dataset, check_split
from pvt_np.data.download import DownloadError, download_url, file_md5
from pvt_np.data.errors import CorruptDatasetError, DataError, DatasetNotFoundError

try:  # the module that holds the array-reconstruction functions a pickled array names
    from numpy._core import multiarray, numeric  # NumPy >= 2
except ImportError:  # pragma: no cover - NumPy 1.x
    from numpy.core import multiarray, numeric  # type: ignore[no-redef]

__all__ = ["CIFAR_SPECS", "CifarSpec", "find_cifar", "load_cifar"]

BASE_URL = "https://www.cs.toronto.edu/~kriz/"


@dataclass(frozen=True)
class CifarSpec:
    """File names, checksum and pickle keys of one official CIFAR release."""

    name: str
    archive: str
    folder: str
    md5: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: bytes
    names_key: bytes

    @property
    def url(self) -> str:
        """The official download address."""
        return BASE_URL + self.archive


CIFAR_SPECS: dict[str, CifarSpec] = {
    "cifar10": CifarSpec(
        name="cifar10",
        archive="cifar-10-python.tar.gz",
        folder="cifar-10-batches-py",
        md5="c58f30108f718f92721af3b95e74349a",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        meta_file="batches.meta",
        label_key=b"labels",
        names_key=b"label_names",
    ),
    "cifar100": CifarSpec(
        name="cifar100",
        archive="cifar-100-python.tar.gz",
        folder="cifar-100-python",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        train_files=("train",),
        test_files=("test",),
        meta_file="meta",
        label_key=b"fine_labels",
        names_key=b"fine_label_names",
    ),
}

# Errors a damaged gzip/tar/pickle stream can raise; all become CorruptDatasetError.
_READ_ERRORS = (
    tarfile.TarError,
    EOFError,
    zlib.error,
    pickle.UnpicklingError,
    OSError,
    ValueError,
    KeyError,
    TypeError,
    AttributeError,
    IndexError,
)

# md5 results already computed in this process, keyed by (path, size, mtime_ns):
# loading train then test verifies the archive once.
_VERIFIED: set[tuple[str, int, int]] = set()


def _numpy_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Python 3 writes bytes in protocol-2 pickles as _codecs.encode(str, 'latin1').
        ("_codecs", "encode"): codecs.encode,
    }
    for mod in ("numpy.core", "numpy._core"):
        allowed[(f"{mod}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{mod}.multiarray", "scalar")] = multiarray.scalar
        if hasattr(numeric, "_frombuffer"):
            allowed[(f"{mod}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that reconstructs NumPy arrays and builtin containers only (no other global is callable)."""

    _allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None


def _unpickle(data: bytes) -> dict:
    obj = _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
    if not isinstance(obj, dict):
        raise pickle.UnpicklingError(f"expected a dict, got {type(obj).__name__}")
    return obj


def find_cifar(name: str, root: str | os.PathLike[str]) -> tuple[str, Path] | None:
    """Locate a CIFAR release under ``root``: ('folder', path) or ('archive', path), or None.

    ``root`` may be the directory holding the archive or the extracted folder,
    the extracted folder itself, or the archive file itself. The extracted
    folder wins when both exist (no decompression needed).
    """
    spec = CIFAR_SPECS[name]
    root = Path(root).expanduser()
    if root.is_file():
        return "archive", root
    if root.is_dir():
        if (root / spec.meta_file).is_file():
            return "folder", root
        if (root / spec.folder).is_dir():
            return "folder", root / spec.folder
        if (root / spec.archive).is_file():
            return "archive", root / spec.archive
    return None


def _missing_message(spec: CifarSpec, root: Path, why: str = "") -> str:
    target = root / spec.archive
    how = (
        f"download {spec.url} on a machine with internet access and put the file at {target} "
        f"(or extract it there, giving {root / spec.folder}{os.sep}), or let it be downloaded "
        "(pvt-np train --download, or load_dataset(..., download=True))"
    )
    head = f"{spec.name}: {spec.archive} not found under {root}"
    return f"{head} ({why}); {how}" if why else f"{head}; {how}"


_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_PEEK_MEMBERS = 64  # an image-folder archive shows its images within its first members


def _image_folder_hint(spec: CifarSpec, path: Path) -> str | None:
    """If ``path`` holds an image folder (train/<class>/... images) rather than CIFAR, the message saying so."""
    try:
        if path.is_dir():
            tops = [path, *(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))]
            found = any((d / s).is_dir() and any(c.is_dir() for c in (d / s).iterdir()) for d in tops for s in SPLITS)
        else:
            with tarfile.open(path, "r|*") as tar:
                names = [m.name for m in itertools.islice(tar, _PEEK_MEMBERS)]
            found = any(n.lower().endswith(_IMAGE_SUFFIXES) for n in names)
    except (*_READ_ERRORS, StopIteration):
        return None
    if not found:
        return None
    kind = "an image folder" if path.is_dir() else "an image-folder archive"
    return (
        f"{path} is {kind} (train/<class>/ and test/<class>/ images), not the {spec.name} python release: "
        "load it as the 'imagefolder' dataset (pvt-np train --dataset imagefolder)"
    )


def _verify_md5(spec: CifarSpec, path: Path) -> None:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _VERIFIED:
        return
    digest = file_md5(path)
    if digest != spec.md5:
        raise CorruptDatasetError(
            _image_folder_hint(spec, path)
            or f"{path}: md5 mismatch (got {digest}, expected {spec.md5} for the official {spec.archive}); "
            f"the file is corrupt, truncated or not the official release: if it is meant to be {spec.url}, "
            "delete it and download it again"
        )
    _VERIFIED.add(key)


def _read_archive_members(path: Path, wanted: set[str]) -> dict[str, bytes]:
    """Stream the archive once, keeping the files whose base name is in ``wanted``."""
    found: dict[str, bytes] = {}
    with tarfile.open(path, "r|*") as tar:
        for member in tar:
            base = member.name.rstrip("/").rsplit("/", 1)[-1]
            if member.isfile() and base in wanted and base not in found:
                f = tar.extractfile(member)
                if f is None:
                    continue
                found[base] = f.read()
                if len(found) == len(wanted):
                    break
    return found


def _parse_batch(spec: CifarSpec, name: str, data: bytes) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(data)
    pixels = np.asarray(batch[b"data"])
    labels = np.asarray(batch[spec.label_key], dtype=np.int64)
    if pixels.dtype != np.uint8 or pixels.ndim != 2 or pixels.shape[1] != 3072:
        raise ValueError(f"{name}: b'data' should be uint8 (N, 3072), got {pixels.dtype} {pixels.shape}")
    if labels.shape != (pixels.shape[0],):
        raise ValueError(f"{name}: {pixels.shape[0]} images but labels of shape {labels.shape}")
    # Channel-major rows (R plane, G plane, B plane) -> NHWC.
    images = np.ascontiguousarray(pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, labels


def load_cifar(
    name: str,
    root: str | os.PathLike[str],
    split: str = "train",
    download: bool = False,
    *,
    verify: bool = True,
    progress: bool = True,
) -> Dataset:
    """Load a split of CIFAR-10 (``name='cifar10'``) or CIFAR-100 (``'cifar100'``, fine labels).

    root: a directory holding ``cifar-10-python.tar.gz`` or ``cifar-10-batches-py/``
        (CIFAR-100: ``cifar-100-python.tar.gz`` / ``cifar-100-python/``), or that
        archive or folder itself.
    download: fetch the archive from the official address into ``root`` when
        nothing is found (md5-verified, atomic).
    verify: check an archive's md5 against the official one before reading it
        (about 0.3 s; once per process and file). Extracted folders are not checked.
    Returns a :class:`Dataset` with uint8 (N, 32, 32, 3) images, labels in the
    official order, and the class names from the release's meta file.
    """
    if name not in CIFAR_SPECS:
        raise ValueError(f"load_cifar: unknown name {name!r}; expected one of {sorted(CIFAR_SPECS)}")
    spec = CIFAR_SPECS[name]
    check_split(split)
    root = Path(root).expanduser()
    located = find_cifar(name, root)
    if located is None:
        hint = _image_folder_hint(spec, root) if root.is_dir() else None
        if hint is not None:
            raise DatasetNotFoundError(hint)
        if not download:
            raise DatasetNotFoundError(_missing_message(spec, root))
        target = root / spec.archive
        try:
            download_url(spec.url, target, md5=spec.md5, progress=progress)
        except DownloadError as err:
            raise DatasetNotFoundError(_missing_message(spec, root, f"download failed: {err}")) from err
        _VERIFIED.add((str(target.resolve()), target.stat().st_size, target.stat().st_mtime_ns))
        located = ("archive", target)
    kind, path = located
    files = spec.train_files if split == "train" else spec.test_files
    wanted = [*files, spec.meta_file]

    if kind == "archive":
        if verify:
            _verify_md5(spec, path)
        try:
            raw = _read_archive_members(path, set(wanted))
        except _READ_ERRORS as err:
            raise CorruptDatasetError(
                f"{path}: cannot read the archive, it is truncated or corrupt ({type(err).__name__}: {err}); "
                f"delete it and download {spec.url} again"
            ) from err
        missing = [f for f in wanted if f not in raw]
        if missing:
            raise CorruptDatasetError(
                _image_folder_hint(spec, path)
                or f"{path}: not a complete {spec.archive}: missing {', '.join(missing)} "
                f"(expected {spec.folder}/{{{', '.join(wanted)}}}); download {spec.url} again"
            )
        where = {f: f"{path}:{spec.folder}/{f}" for f in wanted}
    else:
        raw = {}
        for f in wanted:
            p = path / f
            if not p.is_file():
                raise DatasetNotFoundError(
                    f"{spec.name}: {p} is missing from the extracted folder {path}; "
                    f"re-extract {spec.archive} (from {spec.url}) into {path.parent}"
                )
            raw[f] = p.read_bytes()
        where = {f: str(path / f) for f in wanted}

    images, labels = [], []
    current = files[0]
    try:
        for current in files:
            im, lb = _parse_batch(spec, current, raw[current])
            images.append(im)
            labels.append(lb)
        current = spec.meta_file
        meta = _unpickle(raw[current])
        classes = tuple(c.decode() if isinstance(c, bytes) else str(c) for c in meta[spec.names_key])
    except DataError:
        raise
    except _READ_ERRORS as err:
        raise CorruptDatasetError(
            f"{where[current]}: corrupt {spec.name} file ({type(err).__name__}: {err}); download {spec.url} again"
        ) from err
    try:
        return Dataset(
            images=np.concatenate(images),
            labels=np.concatenate(labels),
            classes=classes,
            name=spec.name,
            split=split,
            source=str(path),
        )
    except ValueError as err:
        raise CorruptDatasetError(f"{path}: inconsistent {spec.name} data: {err}") from err
