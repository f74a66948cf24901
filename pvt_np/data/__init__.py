"""Datasets (CIFAR-10/100, image folders) and deterministic batching with on-device augmentation.

Typical use::

    from pvt_np.data import Augment, CIFAR10_MEAN, CIFAR10_STD, load_dataset

    train = load_dataset("cifar10", "~/data", "train", download=True)
    loader = train.loader(128, seed=0, device="gpu", augment=Augment.cifar(),
                          mean=CIFAR10_MEAN, std=CIFAR10_STD)
    for x, y in loader.epoch(epoch, start_batch=k):  # resume mid-epoch at batch k
        ...
"""

from pvt_np.data.augment import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    TRIVIAL_OPS,
    Augment,
    MixParams,
    crop_flip_gather,
    cutmix,
    mix_targets,
    mixup,
    one_hot,
    rand_bbox,
    resize_bilinear,
    resize_matrix,
    sample_crop_flip,
    sample_mix,
    sample_trivial,
    to_float_nchw,
    translate,
    trivial_augment,
)
from pvt_np.data.cifar import CIFAR_SPECS, find_cifar, load_cifar
from pvt_np.data.dataset import SPLITS, Dataset
from pvt_np.data.download import DownloadError, download_url, file_md5
from pvt_np.data.errors import CorruptDatasetError, DataError, DatasetNotFoundError
from pvt_np.data.imagefolder import decode_image_folder, default_cache_dir, load_image_folder
from pvt_np.data.load import DATASETS, load_dataset
from pvt_np.data.loader import Batch, BatchLoader
from pvt_np.data.scenes import (
    SCENE_STYLES,
    SHAPES,
    SIZE_BUCKET_NAMES,
    SIZE_BUCKETS,
    Scenes,
    load_scenes,
    make_scenes,
    size_bucket,
)
from pvt_np.data.segmentation import (
    IGNORE_INDEX,
    SegmentationBatch,
    SegmentationBatches,
    SegmentationDataset,
    load_segmentation_folder,
)

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CIFAR_SPECS",
    "DATASETS",
    "IGNORE_INDEX",
    "SCENE_STYLES",
    "SHAPES",
    "SIZE_BUCKETS",
    "SIZE_BUCKET_NAMES",
    "SPLITS",
    "TRIVIAL_OPS",
    "Augment",
    "Batch",
    "BatchLoader",
    "CorruptDatasetError",
    "DataError",
    "Dataset",
    "DatasetNotFoundError",
    "DownloadError",
    "MixParams",
    "Scenes",
    "SegmentationBatch",
    "SegmentationBatches",
    "SegmentationDataset",
    "crop_flip_gather",
    "cutmix",
    "decode_image_folder",
    "default_cache_dir",
    "download_url",
    "file_md5",
    "find_cifar",
    "load_cifar",
    "load_dataset",
    "load_image_folder",
    "load_scenes",
    "load_segmentation_folder",
    "make_scenes",
    "mix_targets",
    "mixup",
    "one_hot",
    "rand_bbox",
    "resize_bilinear",
    "resize_matrix",
    "sample_crop_flip",
    "sample_mix",
    "sample_trivial",
    "size_bucket",
    "to_float_nchw",
    "translate",
    "trivial_augment",
]
