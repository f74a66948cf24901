"""Batch augmentation on the array backend: crop + flip, TrivialAugment, normalisation, mixup and cutmix.

Every function here works on a whole batch at once with NumPy or CuPy (whichever
owns the arrays), so the training loop has no per-image Python loop. The random
parameters (crop offsets, flip bits, mixing coefficient, cutmix box) are tiny and
are drawn on the host with a NumPy generator by :func:`sample_crop_flip` and
:func:`sample_mix`; the loader seeds that generator from (seed, epoch, batch), which
makes every batch reproducible on either device.

Semantics follow the usual PyTorch pipeline:

* ``crop_flip_gather`` = torchvision ``RandomCrop(size, padding=p)`` (zero padding of
  the raw uint8 image) followed by ``RandomHorizontalFlip()``.
* ``trivial_augment`` = TrivialAugment (Mueller & Hutter 2021) after the crop and flip,
  on a set of ops that suit 32x32 images (see :data:`TRIVIAL_OPS`).
* ``to_float_nchw`` = ``ToTensor()`` + ``Normalize(mean, std)``.
* ``resize_bilinear`` = ``torch.nn.functional.interpolate(x, size, mode="bilinear",
  antialias=True)`` on the normalised float batch (the low-resolution epochs of
  progressive resizing).
* ``translate`` = a fixed crop of the zero-padded image: ``RandomCrop``'s output at one
  offset, on the normalised float batch (the shifted views of ``--tta flip-shift``).
* ``mixup`` / ``cutmix`` / ``mix_targets`` = timm's ``Mixup`` in its default
  ``mode='batch'``: one coefficient per batch, image ``i`` mixed with image
  ``B - 1 - i`` (the batch reversed), cutmix's coefficient corrected to the box's
  area, soft targets ``lam * onehot(y) + (1 - lam) * onehot(y[::-1])``. Label
  smoothing is left to the loss (it commutes with the mixing).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from pvt_np.backend import Array, get_array_module

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "TRIVIAL_OPS",
    "Augment",
    "MixParams",
    "crop_flip_gather",
    "cutmix",
    "mix_targets",
    "mixup",
    "one_hot",
    "rand_bbox",
    "resize_bilinear",
    "resize_matrix",
    "sample_crop_flip",
    "sample_mix",
    "sample_trivial",
    "to_float_nchw",
    "translate",
    "trivial_augment",
]

# Per-channel statistics of the training images on the 0-1 scale (per-pixel std,
# not the often-quoted (0.2023, 0.1994, 0.2010), which is a std of image means).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


@dataclass(frozen=True)
class Augment:
    """Training-time augmentation settings for :class:`~pvt_np.data.BatchLoader`.

    crop_padding: zero padding of the random crop (0 = no crop); the crop has the
        input's size, as ``RandomCrop(32, padding=4)`` on 32x32 images.
    hflip: flip each image horizontally with probability 0.5.
    mixup_alpha, cutmix_alpha: Beta(alpha, alpha) parameters; 0 disables each.
        With both > 0, cutmix is chosen with probability ``switch_prob``.
    mix_prob: probability that a batch is mixed at all (else lam = 1).
    trivial: TrivialAugment after the crop and flip (one op of :data:`TRIVIAL_OPS` per image).
    When mixing is enabled the loader returns soft targets (B, num_classes).
    """

    crop_padding: int = 0
    hflip: bool = False
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0
    switch_prob: float = 0.5
    trivial: bool = False

    def __post_init__(self) -> None:
        if int(self.crop_padding) != self.crop_padding or self.crop_padding < 0:
            raise ValueError(f"Augment: crop_padding must be a non-negative int, got {self.crop_padding!r}")
        for name in ("mixup_alpha", "cutmix_alpha"):
            if not float(getattr(self, name)) >= 0.0:
                raise ValueError(f"Augment: {name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("mix_prob", "switch_prob"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ValueError(f"Augment: {name} must be in [0, 1], got {getattr(self, name)!r}")
        if not isinstance(self.trivial, bool):
            raise ValueError(f"Augment: trivial must be True or False, got {self.trivial!r}")

    @classmethod
    def cifar(cls, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, **kwargs: Any) -> Augment:
        """The standard CIFAR recipe: 4-pixel padded random crop and horizontal flip (plus optional mixing)."""
        return cls(crop_padding=4, hflip=True, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, **kwargs)

    @property
    def mixing(self) -> bool:
        """True when mixup or cutmix is enabled (the loader then returns soft targets)."""
        return self.mixup_alpha > 0.0 or self.cutmix_alpha > 0.0


@dataclass(frozen=True)
class MixParams:
    """One batch's mixing draw: ``kind`` is 'none', 'mixup' or 'cutmix'; ``bbox`` = (y0, y1, x0, x1) for cutmix."""

    kind: str
    lam: float
    bbox: tuple[int, int, int, int] | None = None


# Parameter sampling (host, NumPy) -------------------------------------------------


def sample_crop_flip(
    rng: np.random.Generator, batch: int, padding: int, hflip: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw crop offsets ``dy, dx`` in [0, 2*padding] and flip bits for ``batch`` images.

    Offsets index the padded image, as torchvision's RandomCrop (0 = the top/left
    edge of the padding). Offsets are drawn first, then flips; a disabled
    transform draws nothing and returns zeros / all-False.
    """
    if padding > 0:
        dy = rng.integers(0, 2 * padding + 1, size=batch)
        dx = rng.integers(0, 2 * padding + 1, size=batch)
    else:
        dy = np.zeros(batch, dtype=np.int64)
        dx = np.zeros(batch, dtype=np.int64)
    flip = rng.random(batch) < 0.5 if hflip else np.zeros(batch, dtype=bool)
    return dy, dx, flip


def rand_bbox(rng: np.random.Generator, height: int, width: int, lam: float) -> tuple[int, int, int, int]:
    """timm's cutmix box: side ``sqrt(1 - lam)`` of the image's, centred uniformly, clipped to the image."""
    ratio = np.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy = int(rng.integers(0, height))
    cx = int(rng.integers(0, width))
    y0 = int(np.clip(cy - cut_h // 2, 0, height))
    y1 = int(np.clip(cy + (cut_h + 1) // 2, 0, height))
    x0 = int(np.clip(cx - cut_w // 2, 0, width))
    x1 = int(np.clip(cx + (cut_w + 1) // 2, 0, width))
    return y0, y1, x0, x1


def sample_mix(rng: np.random.Generator, augment: Augment, height: int, width: int) -> MixParams:
    """Draw one batch's mixing as timm's ``Mixup._params_per_batch`` + ``cutmix_bbox_and_lam``.

    For cutmix, lam is corrected to 1 - box area / image area (timm's
    ``correct_lam=True``) so the targets match the pixels actually pasted.
    """
    if not augment.mixing or rng.random() >= augment.mix_prob:
        return MixParams("none", 1.0)
    if augment.mixup_alpha > 0.0 and augment.cutmix_alpha > 0.0:
        use_cutmix = bool(rng.random() < augment.switch_prob)
    else:
        use_cutmix = augment.cutmix_alpha > 0.0
    alpha = augment.cutmix_alpha if use_cutmix else augment.mixup_alpha
    lam = float(rng.beta(alpha, alpha))
    if not use_cutmix:
        return MixParams("mixup", lam)
    bbox = rand_bbox(rng, height, width, lam)
    y0, y1, x0, x1 = bbox
    lam = 1.0 - (y1 - y0) * (x1 - x0) / float(height * width)
    return MixParams("cutmix", lam, bbox)


# TrivialAugment: each image gets one op, chosen uniformly, at a level chosen uniformly from
# 0..TRIVIAL_LEVELS (31 bins, as the paper's), signed with probability 0.5 where the op has a
# direction. The set is TrivialAugmentWide's ops that are exact on a 32x32 uint8 grid, with
# its magnitude ranges: colour ops (factor 1 +- 0.99), solarize, posterize (8 -> 2 bits),
# translations by whole pixels and shears whose row/column shifts are rounded to whole pixels.
# Left out: rotation by arbitrary angles (needs interpolation, which blurs a 32-px image),
# rotations by 90 degrees (sideways or upside-down objects are not in CIFAR's distribution;
# the horizontal flip already gives the one symmetry it has), and sharpness, autocontrast and
# equalize (not implemented yet). Translations stop at half the side: TrivialAugmentWide's
# 32 px would move a CIFAR image out of its frame.
TRIVIAL_OPS = (
    "identity", "brightness", "contrast", "saturation", "solarize", "posterize",
    "translate_x", "translate_y", "shear_x", "shear_y",
)  # fmt: skip
TRIVIAL_LEVELS = 30
_SIGNED_OPS = ("brightness", "contrast", "saturation", "translate_x", "translate_y", "shear_x", "shear_y")
_COLOUR_RANGE = 0.99  # brightness, contrast, saturation factor 1 + 0.99 * magnitude
_SHEAR_RANGE = 0.99  # shear factor (TrivialAugmentWide's; about 45 degrees at the edges)
_POSTERIZE_BITS_DROPPED = 6  # 8 bits at magnitude 0, 2 at magnitude 1


def sample_trivial(rng: np.random.Generator, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw TrivialAugment's op index and signed level (in [-TRIVIAL_LEVELS, TRIVIAL_LEVELS]) per image.

    Three draws of ``batch`` values, always (so what follows is drawn the same whatever was
    chosen): the op, the level, the sign; the sign is kept only for ops with a direction.
    """
    op = rng.integers(0, len(TRIVIAL_OPS), size=batch)
    level = rng.integers(0, TRIVIAL_LEVELS + 1, size=batch)
    negative = rng.random(batch) < 0.5
    signed = np.isin(op, [TRIVIAL_OPS.index(name) for name in _SIGNED_OPS])
    return op, np.where(signed & negative, -level, level)


# Application (device, NumPy or CuPy) --------------------------------------------------


def crop_flip_gather(
    images: Array, index: Array, dy: Array, dx: Array, flip: Array, padding: int, fill: int = 0
) -> Array:
    """Gather ``images[index]`` (uint8 NHWC) already cropped and flipped: one vectorised gather.

    out[b, i, j] = padded(images[index[b]])[dy[b] + i, dx[b] + j'] with
    j' = W - 1 - j when flip[b] (the flip is applied after the crop, as
    RandomCrop then RandomHorizontalFlip), and ``fill`` (zero by default) where the
    source pixel lies in the padding. Indexing the unpadded dataset with clipped
    coordinates and masking avoids materialising a padded copy. Index arrays must
    live on the same device as ``images``. A segmentation mask, (N, H, W, 1), goes
    through the same draws with ``fill=255`` (the ignored label) so it moves with its image.
    """
    xp = get_array_module(images)
    h, w = images.shape[1], images.shape[2]
    ar_h = xp.arange(h)
    ar_w = xp.arange(w)
    rows = dy[:, None] - padding + ar_h  # (B, H)
    cols = dx[:, None] - padding + xp.where(flip[:, None], w - 1 - ar_w, ar_w)  # (B, W)
    out = images[
        index[:, None, None],
        xp.clip(rows, 0, h - 1)[:, :, None],
        xp.clip(cols, 0, w - 1)[:, None, :],
    ]  # (B, H, W, C)
    if padding > 0:
        inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
        if fill == 0:
            out *= inside[..., None].astype(out.dtype)
        else:
            out = xp.where(inside[..., None], out, xp.asarray(fill, dtype=out.dtype))
    return out


def translate(x: Array, dy: int, dx: int, fill: Array) -> Array:
    """Shift a float (N, C, H, W) batch by whole pixels: out[..., i, j] = x[..., i + dy, j + dx], ``fill`` outside.

    ``fill`` is the value of a zero (black) pixel after normalisation, per channel, broadcastable
    to (1, C, 1, 1): what the crops of training put in their padding, so (dy, dx) is the crop of
    the image zero-padded by p taken at offset (p + dy, p + dx), normalised, for any p >= |dy|, |dx|.
    The content moves up by dy rows and left by dx columns. A new array, on x's device.
    """
    xp = get_array_module(x)
    if x.ndim != 4:
        raise ValueError(f"translate: expected an (N, C, H, W) batch, got shape {tuple(x.shape)}")
    c, h, w = x.shape[1:]
    if int(dy) != dy or int(dx) != dx or abs(dy) >= h or abs(dx) >= w:
        raise ValueError(f"translate: dy, dx must be whole pixels inside the {h}x{w} image, got {dy}, {dx}")
    if getattr(fill, "size", None) != c:
        raise ValueError(f"translate: fill must hold one value per channel ({c}), got {fill!r}")
    dy, dx = int(dy), int(dx)
    out = xp.empty_like(x)
    out[...] = xp.asarray(fill, dtype=x.dtype).reshape(1, c, 1, 1)
    # Rows [max(-dy, 0), h - max(dy, 0)) of the output come from rows shifted by dy (likewise columns).
    out[:, :, max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)] = x[
        :, :, max(dy, 0) : h - max(-dy, 0), max(dx, 0) : w - max(-dx, 0)
    ]
    return out


def trivial_augment(images: Array, op: Array, level: Array) -> Array:
    """TrivialAugment on uint8 NHWC RGB ``images``: image b gets op ``TRIVIAL_OPS[op[b]]`` at ``level[b]``.

    ``level`` is an integer in [-TRIVIAL_LEVELS, TRIVIAL_LEVELS]; its magnitude
    m = level / TRIVIAL_LEVELS and every op is the identity at m = 0. One pass over
    the whole batch, each op applied through per-image parameters that are neutral
    for the images that drew another op (a blend factor of 1, a threshold of 256,
    all bits kept, a shift of 0), so there is no per-image Python loop. The colour
    ops are torchvision's tensor functional on uint8 (same float32 arithmetic, then
    clamped and truncated); the geometric ones move whole pixels:

    * brightness / contrast / saturation: ``f * img + (1 - f) * ref`` with
      f = 1 + 0.99 m and ref = 0, the mean of the grey image, the grey image
      (grey = uint8(0.2989 r + 0.587 g + 0.114 b), as ``rgb_to_grayscale``);
    * solarize: invert the pixels >= round(256 (1 - |m|));
    * posterize: keep the top 8 - round(6 |m|) bits;
    * translate_x / _y: shift by round(m * side / 2) pixels, zeros coming in;
    * shear_x: out[y, x] = img[y, x - rint(0.99 m (y - (H - 1) / 2))], zeros outside
      (shear_y likewise with the roles of x and y exchanged).
    """
    xp = get_array_module(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"trivial_augment: expected uint8 RGB images (B, H, W, 3), got {images.dtype} {images.shape}")
    b, h, w, _ = images.shape
    names = {name: i for i, name in enumerate(TRIVIAL_OPS)}
    m = level.astype(np.float64) / TRIVIAL_LEVELS

    # Colour: one blend for the batch, its factor 1 (exactly the identity) where the op is another.
    colour = (op == names["brightness"]) | (op == names["contrast"]) | (op == names["saturation"])
    factor = xp.where(colour, 1.0 + _COLOUR_RANGE * m, 1.0)
    # f and 1 - f rounded to float32 from float64, as torch rounds the Python floats it is given.
    ratio = factor.astype(np.float32).reshape(b, 1, 1, 1)
    rest = (1.0 - factor).astype(np.float32).reshape(b, 1, 1, 1)
    x = images.astype(np.float32)
    grey = np.float32(0.2989) * x[..., 0] + np.float32(0.587) * x[..., 1] + np.float32(0.114) * x[..., 2]
    grey = grey.astype(np.uint8).astype(np.float32)[..., None]  # (B, H, W, 1), truncated as torchvision's
    # A sum of at most 65793 values <= 255 is exact in float32, so the mean does not depend on the summation order.
    mean = grey.sum(axis=(1, 2), keepdims=True) / np.float32(h * w)
    zero = xp.zeros((), dtype=np.float32)
    ref = xp.where(
        (op == names["contrast"]).reshape(b, 1, 1, 1),
        mean,
        xp.where((op == names["saturation"]).reshape(b, 1, 1, 1), grey, zero),
    )
    out = xp.clip(ratio * x + rest * ref, 0, 255).astype(np.uint8)

    magnitude = xp.abs(m)
    threshold = xp.where(op == names["solarize"], xp.rint(256.0 * (1.0 - magnitude)), 256.0).astype(np.int64)
    out = xp.where(out >= threshold.reshape(b, 1, 1, 1), 255 - out, out)
    bits = xp.where(op == names["posterize"], 8 - xp.rint(_POSTERIZE_BITS_DROPPED * magnitude), 8).astype(np.int64)
    out &= ((0xFF << (8 - bits)) & 0xFF).astype(np.uint8).reshape(b, 1, 1, 1)

    # Geometry: one gather, the source pixel of out[b, y, x] at (y - dy, x - dx), zero outside the image.
    ys = xp.arange(h, dtype=np.float64).reshape(1, h, 1)
    xs = xp.arange(w, dtype=np.float64).reshape(1, 1, w)
    tx = xp.where(op == names["translate_x"], xp.rint(m * (w // 2)), 0.0).reshape(b, 1, 1)
    ty = xp.where(op == names["translate_y"], xp.rint(m * (h // 2)), 0.0).reshape(b, 1, 1)
    sx = xp.where(op == names["shear_x"], _SHEAR_RANGE * m, 0.0).reshape(b, 1, 1)
    sy = xp.where(op == names["shear_y"], _SHEAR_RANGE * m, 0.0).reshape(b, 1, 1)
    src_x = (xs - tx - xp.rint(sx * (ys - (h - 1) / 2))).astype(np.int64)  # (B, H, W)
    src_y = (ys - ty - xp.rint(sy * (xs - (w - 1) / 2))).astype(np.int64)
    inside = (src_x >= 0) & (src_x < w) & (src_y >= 0) & (src_y < h)
    out = out[xp.arange(b).reshape(b, 1, 1), xp.clip(src_y, 0, h - 1), xp.clip(src_x, 0, w - 1)]
    out *= inside[..., None].astype(np.uint8)
    return out


def to_float_nchw(batch: Array, scale: Array, shift: Array, dtype: Any = np.float32) -> Array:
    """uint8 NHWC -> ``dtype`` NCHW computing ``batch * scale + shift`` per channel.

    With scale = 1 / (255 std) and shift = -mean / std this is ToTensor +
    Normalize(mean, std); ``scale``/``shift`` have shape (1, C, 1, 1) and live on
    the batch's device.
    """
    xp = get_array_module(batch)
    n, h, w, c = batch.shape
    out = xp.empty((n, c, h, w), dtype=dtype)
    out[...] = batch.transpose(0, 3, 1, 2)
    out *= scale
    out += shift
    return out


def one_hot(labels: Array, num_classes: int, dtype: Any = np.float32) -> Array:
    """(B,) int labels -> (B, num_classes) one-hot rows on the labels' device."""
    xp = get_array_module(labels)
    out = xp.zeros((labels.shape[0], num_classes), dtype=dtype)
    out[xp.arange(labels.shape[0]), labels] = 1
    return out


# The partner of row i is row B - 1 - i of the whole batch: ``x[::-1]`` by default; a data-parallel
# rank holding only a slice of the batch passes its slice's partners explicitly.


def mix_targets(
    labels: Array, num_classes: int, lam: float, dtype: Any = np.float32, partner_labels: Array | None = None
) -> Array:
    """timm's ``mixup_target`` without smoothing: lam * onehot(y) + (1 - lam) * onehot(y reversed)."""
    y1 = one_hot(labels, num_classes, dtype)
    y2 = y1[::-1] if partner_labels is None else one_hot(partner_labels, num_classes, dtype)
    return y1 * lam + y2 * (1.0 - lam)


def mixup(x: Array, lam: float, partner: Array | None = None) -> Array:
    """lam * x + (1 - lam) * x reversed along the batch (a new array; ``x`` is untouched)."""
    return x * lam + (x[::-1] if partner is None else partner) * (1.0 - lam)


def cutmix(x: Array, bbox: tuple[int, int, int, int], partner: Array | None = None) -> Array:
    """Paste the box ``bbox`` = (y0, y1, x0, x1) of the reversed batch into a copy of NCHW ``x``."""
    y0, y1, x0, x1 = bbox
    out = x.copy()
    out[:, :, y0:y1, x0:x1] = (x[::-1] if partner is None else partner)[:, :, y0:y1, x0:x1]
    return out


@functools.lru_cache(maxsize=64)
def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """The (n_out, n_in) float64 matrix of antialiased linear resampling along one axis.

    Output pixel i is centred at c_i = (i + 1/2) s - 1/2 in input coordinates, s = n_in / n_out
    (pixel centres, ``align_corners=False``), and takes the normalised triangle weights
        R[i, j] = t((j - c_i) / a) / sum_k t((k - c_i) / a),  t(u) = max(0, 1 - |u|),  a = max(s, 1):
    plain linear interpolation when enlarging (a = 1: the two nearest pixels), and a triangle
    stretched over s pixels when shrinking, so every input pixel contributes (no aliasing).
    Each row sums to 1; n_out == n_in gives the identity. This is PIL's and torch's
    ``antialias=True`` bilinear filter. Built once per (n_in, n_out) (every low-resolution step asks
    for the same two), and read-only since it is shared.
    """
    if n_in < 1 or n_out < 1:
        raise ValueError(f"resize_matrix: sizes must be >= 1, got {n_in} -> {n_out}")
    scale = n_in / n_out
    support = max(scale, 1.0)
    centres = (np.arange(n_out) + 0.5) * scale - 0.5
    weights = np.maximum(0.0, 1.0 - np.abs(np.arange(n_in)[None, :] - centres[:, None]) / support)
    matrix = weights / weights.sum(axis=1, keepdims=True)
    matrix.setflags(write=False)
    return matrix


def resize_bilinear(x: Array, size: tuple[int, int]) -> Array:
    """Resize a float (N, C, H, W) batch to (N, C, h, w) = size with the antialiased bilinear filter.

    y = R_h x R_w^T per image and channel, with R_h = resize_matrix(H, h) and R_w = resize_matrix(W, w)
    (two batched matrix products, in x's dtype, on x's device).
    """
    xp = get_array_module(x)
    if x.ndim != 4:
        raise ValueError(f"resize_bilinear: expected an (N, C, H, W) batch, got shape {tuple(x.shape)}")
    h, w = (int(v) for v in size)
    rows = xp.asarray(resize_matrix(x.shape[2], h), dtype=x.dtype)
    cols = xp.asarray(resize_matrix(x.shape[3], w), dtype=x.dtype)
    return xp.ascontiguousarray(rows @ (x @ cols.T))
