"""The data of a run: its training and test sets (or their seeded random subsets) and their batch loaders."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pvt_np import backend, distributed
from pvt_np.data import Augment, BatchLoader, Dataset, load_dataset
from pvt_np.training.config import TrainConfig
from pvt_np.training.validation import check_subset


def random_subset(dataset: Dataset, n: int | None, seed: int) -> Dataset:
    """A random subset of ``n`` samples, the same for the same seed (all of it when n is None).

    Random, not the first n: image folders and archives are stored class by class. ``pvt-np train
    --test-subset N`` draws its N test images with seed 0, and ``pvt-np evaluate`` draws the same.
    """
    if n is None or n == len(dataset):
        return dataset
    if not 1 <= n <= len(dataset):
        raise ValueError(f"subset size: expected 1 to {len(dataset)} (the number of samples), got {n}")
    keep = np.sort(np.random.default_rng(backend.derive_seed(seed, len(dataset))).permutation(len(dataset))[:n])
    return Dataset(
        dataset.images[keep], dataset.labels[keep], dataset.classes, dataset.name, dataset.split, dataset.source
    )


@dataclass
class RunData:
    """A run's images and loaders; ``mean`` and ``std``: the training images' per-channel statistics, with which
    both loaders normalise (and predict later does)."""

    train_set: Dataset
    test_set: Dataset
    train_loader: BatchLoader
    test_loader: BatchLoader
    mean: np.ndarray
    std: np.ndarray


def fetch_data(config: TrainConfig) -> None:
    """Download what --download would (both splits come from one archive)."""
    load_dataset(config.dataset, config.data_path, "test", True, cache_dir=config.cache_dir)


def load_run_data(config: TrainConfig, world: distributed.World) -> RunData:
    """The data of a run: the splits, their subsets (config.train_subset, config.test_subset) and loaders; the
    training batches shuffled and augmented as configured and sharded over the ranks of ``world``, the test
    set split between them."""
    cfg = config
    train = load_dataset(cfg.dataset, cfg.data_path, "train", cfg.download, cache_dir=cfg.cache_dir)
    check_subset("train_subset", cfg.train_subset, len(train), "training images")
    test = load_dataset(cfg.dataset, cfg.data_path, "test", cfg.download, cache_dir=cfg.cache_dir)
    check_subset("test_subset", cfg.test_subset, len(test), "test images")
    train_set = random_subset(train, cfg.train_subset, cfg.seed)
    test_set = random_subset(test, cfg.test_subset, 0)
    # Checked here, in the run's terms, rather than by the loader deep inside.
    check_subset("batch_size", cfg.batch_size, len(train_set), "training images used")
    mean, std = train_set.mean_std()
    augment = Augment(
        crop_padding=cfg.crop_padding, hflip=cfg.hflip, mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix,
        trivial=cfg.trivial_augment,
    )  # fmt: skip
    distributed.local_batch_size(cfg.batch_size, world)  # a clear error if the ranks cannot share it
    train_loader = train_set.loader(
        cfg.batch_size, shuffle=True, seed=cfg.seed, drop_last=True, device=cfg.device,
        augment=augment, mean=mean, std=std, dtype=cfg.dtype, shard=(world.rank, world.size),
    )  # fmt: skip
    test_part = distributed.shard_dataset(test_set, world)
    test_loader = test_part.loader(
        min(cfg.eval_batch_size, len(test_part)), shuffle=False, device=cfg.device,
        mean=mean, std=std, dtype=cfg.dtype,
    )  # fmt: skip
    return RunData(train_set, test_set, train_loader, test_loader, mean, std)


__all__ = ["RunData", "fetch_data", "load_run_data", "random_subset"]
