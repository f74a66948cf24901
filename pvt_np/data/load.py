"""``load_dataset``: one entry point for CIFAR-10, CIFAR-100 and image folders."""

from __future__ import annotations

import os

from pvt_np.data.cifar import load_cifar
from pvt_np.data.dataset import Dataset, check_split
from pvt_np.data.imagefolder import load_image_folder

__all__ = ["DATASETS", "load_dataset"]

DATASETS = ("cifar10", "cifar100", "imagefolder")


def load_dataset(
    name: str,
    root: str | os.PathLike[str],
    split: str = "train",
    download: bool = False,
    *,
    verify: bool = True,
    cache: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> Dataset:
    """Load ``split`` ('train' or 'test') of dataset ``name`` from ``root``.

    cifar10 / cifar100: ``root`` holds the official python archive or its
        extracted folder; ``download=True`` fetches a missing archive (md5-checked);
        ``verify`` checks an archive's md5; ``progress`` shows the download bar.
    imagefolder: ``root`` is a folder or .tar/.tar.gz with ``train/<class>/`` and
        ``test/<class>/``; ``cache``, ``cache_dir`` and ``workers`` control the
        decoded-image cache and the decoder processes. Nothing can be downloaded.
    """
    key = str(name).lower()
    if key not in DATASETS:
        raise ValueError(f"load_dataset: unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    check_split(split)
    if key == "imagefolder":
        if download:
            raise ValueError(
                "load_dataset: download=True is not supported for 'imagefolder' (give a local folder or archive)"
            )
        return load_image_folder(root, split, cache=cache, cache_dir=cache_dir, workers=workers)
    return load_cifar(key, root, split, download, verify=verify, progress=progress)
