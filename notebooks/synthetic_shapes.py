"""A synthetic stand-in for CIFAR-10, for notebook 05 when no CIFAR-10 is at hand (as in CI).

Ten classes of shapes, each drawn in a hue typical of its class at a random place and size, on a noisy,
greyish background, written as the image-folder layout pvt_np reads (``<root>/<split>/<class>/<index>.png``).
A short run learns something from it, so the notebook's pictures still show a trained model.
"""

import colorsys
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

SHAPES = ("disk", "square", "triangle", "plus", "ring", "diamond", "h-stripes", "v-stripes", "x-cross", "frame")


def shape_mask(kind: str, dy: np.ndarray, dx: np.ndarray, r: float) -> np.ndarray:
    """Boolean mask of one shape; dy, dx: pixel offsets from its centre, r: its radius."""
    box = np.maximum(abs(dy), abs(dx)) <= r
    dist = np.hypot(dy, dx)
    masks = {
        "disk": dist <= r,
        "square": box,
        "triangle": (dy <= 0.8 * r) & (dy >= -r) & (abs(dx) <= (dy + r) * 0.6),
        "plus": box & ((abs(dx) <= r / 3.5) | (abs(dy) <= r / 3.5)),
        "ring": (dist <= r) & (dist >= 0.55 * r),
        "diamond": abs(dx) + abs(dy) <= r,
        "h-stripes": box & ((dy + r) // max(r / 2.5, 1) % 2 == 0),
        "v-stripes": box & ((dx + r) // max(r / 2.5, 1) % 2 == 0),
        "x-cross": box & ((abs(dx - dy) <= r / 3.5) | (abs(dx + dy) <= r / 3.5)),
        "frame": box & (np.maximum(abs(dy), abs(dx)) >= 0.6 * r),
    }
    return masks[kind]


def synthetic_shapes(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n 32x32 RGB images and their labels: a shape at a random place and size, in a hue typical of its class
    (so a short run can learn something), on a noisy, greyish background of random brightness."""
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float32)
    labels = rng.integers(0, len(SHAPES), n)
    images = np.empty((n, 32, 32, 3), np.uint8)
    for i, label in enumerate(labels):
        cy, cx = rng.uniform(10, 22, 2)
        r = rng.uniform(6, 11)
        hue = (label / len(SHAPES) + rng.normal(0, 0.04)) % 1.0
        fg = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0)))
        bg = np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0, 0.35), rng.uniform(0.1, 0.9)))
        mask = shape_mask(SHAPES[label], yy - cy, xx - cx, r)[..., None]
        img = np.where(mask, fg, bg) + rng.normal(0, 0.06, (32, 32, 3))
        images[i] = np.clip(img * 255, 0, 255).astype(np.uint8)
    return images, labels


def write_image_folder(root: Path, n_train: int, n_test: int, seed: int = 0) -> None:
    """Write n_train and n_test images as <root>/<split>/<class>/<index>.png (PNG: lossless)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = synthetic_shapes(n, rng)
        for i, (img, label) in enumerate(zip(images, labels, strict=True)):
            folder = root / split / SHAPES[label]
            folder.mkdir(parents=True, exist_ok=True)
            PILImage.fromarray(img).save(folder / f"{i:05d}.png")
