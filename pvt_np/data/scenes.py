"""Generated segmentation scenes: shapes from a few pixels to most of the image, on textured backgrounds.

A data set that needs every level of a feature pyramid: each image holds several shapes
(disc, square, triangle, ring, cross: classes 1..5, class 0 the background) whose sizes
are drawn log-uniformly from ``min_object`` pixels to ``max_object`` of the image side, so
one image mixes objects a stride-32 map cannot resolve with objects a stride-4 map's
receptive field cannot cover. Nothing is downloaded.

* Colour and texture tell nothing of the class. Two styles say how much they tell of the
  object: ``"textured"`` paints the background and every object with the same random textures
  (smooth colour noise, or stripes of two random colours at a random angle and period), so an
  object is told from the background only by the edge where one texture meets another;
  ``"flat"`` paints each object in one random colour on a grainy background (a random colour
  with independent per-pixel noise), so any few pixels tell object from background and the
  shape alone tells the class. A PVT v2 trained from scratch for a few minutes on a CPU learns
  the flat scenes (where the objects are) and barely moves on the textured ones, which need
  far longer runs.
* Shapes are rotated by a random angle (the disc and ring are symmetric anyway) and
  their centres lie anywhere in the image, so large shapes are often cut by the border.
* Occlusion follows the drawing order: the largest shape is drawn first, so a small
  shape is never hidden entirely by a larger one; the mask keeps the class of the shape
  drawn last at each pixel.
* Each image ``i`` of a generation comes from its own generator, seeded by (seed, i), so
  a set of n scenes is the first n of any larger one; :func:`load_scenes` seeds its
  two splits apart, so the test split is the same for one seed whatever ``n_train``.

Per pixel, :class:`Scenes` also records the size bucket of the object it shows, by the
object's visible area (its pixels in the final mask) as a fraction of the image:
0 = background, 1 = small (< 1 %), 2 = medium (1 % to 10 %), 3 = large (> 10 %), which is
what a mean IoU pooled by object size needs. ``objects`` lists every drawn object
(image, class, visible area fraction).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pvt_np.backend import derive_seed
from pvt_np.data.augment import resize_matrix
from pvt_np.data.dataset import check_split
from pvt_np.data.segmentation import SegmentationDataset

__all__ = [
    "SCENE_STYLES", "SHAPES", "SIZE_BUCKETS", "SIZE_BUCKET_NAMES", "Scenes", "load_scenes", "make_scenes",
    "size_bucket",
]  # fmt: skip

SHAPES = ("disc", "square", "triangle", "ring", "cross")
SCENE_STYLES = ("textured", "flat")
SIZE_BUCKETS = (0.01, 0.10)  # visible-area fractions separating small | medium | large objects
SIZE_BUCKET_NAMES = ("background", "small", "medium", "large")
OBJECT_DTYPE = np.dtype([("image", np.int64), ("cls", np.uint8), ("area", np.float64)])
_TEXTURE_GRID = (2, 9)  # side of the coarse random colour grid of a noise texture, drawn in [2, 9)
_STRIPE_PERIOD = (3.0, 24.0)  # stripe period in pixels, drawn log-uniformly
_GRAIN_BASE = (40.0, 215.0)  # the flat style's background colour, per channel, kept off the ends so its noise shows
_GRAIN_NOISE = 40.0  # standard deviation of the flat style's per-pixel background noise


@dataclass(frozen=True, eq=False)
class Scenes:
    """A set of generated scenes.

    images: uint8 (N, H, W, 3); masks: uint8 (N, H, W) class ids, 0 = background, k = ``SHAPES[k - 1]``;
    size_buckets: uint8 (N, H, W), the size bucket of the object each pixel shows (0 = background,
    1..3 = small, medium, large; see :data:`SIZE_BUCKETS`); objects: structured (M,) array with fields
    ``image``, ``cls``, ``area`` (visible area / image area) for every drawn object;
    classes: the class names, ``classes[0] == 'background'``.
    """

    images: np.ndarray
    masks: np.ndarray
    size_buckets: np.ndarray
    objects: np.ndarray
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        """Classes including the background (the width of a segmentation head)."""
        return len(self.classes)

    def dataset(self, split: str = "") -> SegmentationDataset:
        """The images and masks as a :class:`SegmentationDataset` (no copy), for its batches."""
        return SegmentationDataset(self.images, self.masks, self.classes, name="scenes", split=split)


def size_bucket(area: np.ndarray | float) -> np.ndarray:
    """The size bucket (1 small, 2 medium, 3 large) of visible-area fractions ``area``: the bounds go to the larger."""
    return (np.searchsorted(np.asarray(SIZE_BUCKETS), np.asarray(area), side="right") + 1).astype(np.uint8)


def _texture(rng: np.random.Generator, y0: int, x0: int, h: int, w: int) -> np.ndarray:
    """An (h, w, 3) float texture of the window at (y0, x0): smooth colour noise or two-colour stripes.

    Stripes are a function of the absolute pixel position so they continue across the window's
    border; the noise is a coarse random colour grid enlarged by linear interpolation.
    """
    if rng.random() < 0.5:
        gy, gx = (int(v) for v in rng.integers(*_TEXTURE_GRID, size=2))
        grid = rng.uniform(0.0, 255.0, size=(3, gy, gx))
        field = resize_matrix(gy, h) @ grid @ resize_matrix(gx, w).T  # (3, h, w)
        return field.transpose(1, 2, 0)
    colours = rng.uniform(0.0, 255.0, size=(2, 3))
    period = np.exp(rng.uniform(*np.log(_STRIPE_PERIOD)))
    angle = rng.uniform(0.0, np.pi)
    phase = rng.uniform(0.0, 2.0 * np.pi)
    yy = np.arange(y0, y0 + h, dtype=np.float64)[:, None]
    xx = np.arange(x0, x0 + w, dtype=np.float64)[None, :]
    wave = 0.5 + 0.5 * np.sin(2.0 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period + phase)
    return colours[0] + wave[..., None] * (colours[1] - colours[0])


def _grain(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """The flat style's background: one random colour plus independent per-pixel noise, (h, w, 3) float."""
    return rng.uniform(*_GRAIN_BASE, size=3) + rng.normal(0.0, _GRAIN_NOISE, size=(h, w, 3))


def _flat(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """The flat style's object paint: one random colour, (h, w, 3) float."""
    return np.broadcast_to(rng.uniform(0.0, 255.0, size=3), (h, w, 3))


def _shape_mask(kind: str, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """Inside test of shape ``kind`` of radius ``r`` at rotated offsets (u, v) from its centre (pixel units)."""
    if kind == "disc":
        return u * u + v * v <= r * r
    if kind == "square":  # inscribed in the circle of radius r
        return np.maximum(np.abs(u), np.abs(v)) <= r / np.sqrt(2.0)
    if kind == "triangle":  # equilateral, circumradius r: three half-planes at distance r / 2 from the centre
        inside = np.ones(u.shape, dtype=bool)
        for k in range(3):
            a = np.pi / 2 + 2.0 * np.pi * k / 3
            inside &= u * np.cos(a) + v * np.sin(a) <= r / 2
        return inside
    if kind == "ring":
        d2 = u * u + v * v
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    if kind == "cross":
        arm = 0.3 * r
        au, av = np.abs(u), np.abs(v)
        return ((au <= r) & (av <= arm)) | ((av <= r) & (au <= arm))
    raise ValueError(f"unknown shape {kind!r}")


def _scene(
    rng: np.random.Generator,
    size: int,
    shapes: tuple[str, ...],
    objects: tuple[int, int],
    object_range: tuple[float, float],
    style: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[int, float]]]:
    """One scene: image (uint8), mask, size-bucket map and [(class, visible area)] of its objects."""
    flat = style == "flat"
    image = _grain(rng, size, size) if flat else _texture(rng, 0, 0, size, size)
    owner = np.zeros((size, size), dtype=np.int16)  # index + 1 of the object each pixel shows
    count = int(rng.integers(objects[0], objects[1] + 1))
    diameters = np.sort(np.exp(rng.uniform(np.log(object_range[0]), np.log(object_range[1]), size=count)))[::-1]
    classes = []
    for k, diameter in enumerate(diameters):
        cls = int(rng.integers(1, len(shapes) + 1))
        cy, cx = rng.uniform(0.0, size, size=2)
        angle = rng.uniform(0.0, 2.0 * np.pi)
        r = diameter / 2
        # The window of pixels the shape can touch, clipped to the image; pixel centres at integer + 0.5.
        y0, y1 = max(int(np.floor(cy - r)), 0), min(int(np.ceil(cy + r)) + 1, size)
        x0, x1 = max(int(np.floor(cx - r)), 0), min(int(np.ceil(cx + r)) + 1, size)
        texture = _flat(rng, y1 - y0, x1 - x0) if flat else _texture(rng, y0, x0, y1 - y0, x1 - x0)
        dy = np.arange(y0, y1, dtype=np.float64)[:, None] + 0.5 - cy
        dx = np.arange(x0, x1, dtype=np.float64)[None, :] + 0.5 - cx
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = -dx * np.sin(angle) + dy * np.cos(angle)
        inside = _shape_mask(shapes[cls - 1], u, v, r)
        image[y0:y1, x0:x1][inside] = texture[inside]
        owner[y0:y1, x0:x1][inside] = k + 1
        classes.append(cls)
    visible = np.bincount(owner.ravel(), minlength=count + 1)[1:] / float(size * size)
    class_of = np.array([0, *classes], dtype=np.uint8)
    bucket_of = np.concatenate([[0], size_bucket(visible)]).astype(np.uint8)
    drawn = [(c, float(a)) for c, a in zip(classes, visible, strict=True) if a > 0]
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), class_of[owner], bucket_of[owner], drawn


def make_scenes(
    n: int,
    size: int = 128,
    num_classes: int = len(SHAPES) + 1,
    seed: int = 0,
    *,
    objects: tuple[int, int] = (3, 8),
    object_range: tuple[float, float] = (4.0, 0.9),
    style: str = "textured",
) -> Scenes:
    """``n`` scenes of ``size`` x ``size`` pixels, a pure function of the arguments.

    num_classes: classes including the background, 2..6: the shapes used are ``SHAPES[:num_classes - 1]``.
    objects: (fewest, most) shapes per image, drawn uniformly.
    object_range: (smallest diameter in pixels, largest diameter as a fraction of ``size``); each shape's
        diameter (of its circumscribed circle) is drawn log-uniformly between them.
    style: "textured" (objects and background in the same textures) or "flat" (flat-coloured objects on a
        grainy background); see the module docstring.
    Image ``i`` depends only on (seed, i) and the settings, so ``make_scenes(m)`` is the first m of ``make_scenes(n)``.
    """
    if isinstance(n, bool) or int(n) != n or n < 0:
        raise ValueError(f"make_scenes: n must be a non-negative int, got {n!r}")
    if isinstance(size, bool) or int(size) != size or size < 8:
        raise ValueError(f"make_scenes: size must be an int >= 8, got {size!r}")
    if isinstance(num_classes, bool) or int(num_classes) != num_classes or not 2 <= num_classes <= len(SHAPES) + 1:
        raise ValueError(f"make_scenes: num_classes must be in [2, {len(SHAPES) + 1}], got {num_classes!r}")
    lo, hi = (int(v) for v in objects)
    if not 1 <= lo <= hi:
        raise ValueError(f"make_scenes: objects must be (fewest, most) with 1 <= fewest <= most, got {objects!r}")
    smallest, largest = float(object_range[0]), float(object_range[1]) * size
    if not (1.0 <= smallest <= largest and object_range[1] <= 2.0):
        raise ValueError(
            f"make_scenes: object_range must be (smallest diameter >= 1 px, largest fraction of the side <= 2) "
            f"with smallest <= largest * size, got {object_range!r}"
        )
    if style not in SCENE_STYLES:
        raise ValueError(f"make_scenes: style must be one of {', '.join(SCENE_STYLES)}, got {style!r}")
    n, size = int(n), int(size)
    shapes = SHAPES[: int(num_classes) - 1]
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    masks = np.empty((n, size, size), dtype=np.uint8)
    buckets = np.empty((n, size, size), dtype=np.uint8)
    records: list[tuple[int, int, float]] = []
    for i in range(n):
        rng = np.random.default_rng(derive_seed(seed, i))
        images[i], masks[i], buckets[i], drawn = _scene(rng, size, shapes, (lo, hi), (smallest, largest), style)
        records.extend((i, c, a) for c, a in drawn)
    return Scenes(images, masks, buckets, np.array(records, dtype=OBJECT_DTYPE), ("background", *shapes))


def load_scenes(
    split: str,
    n_train: int = 2000,
    n_test: int = 500,
    seed: int = 0,
    *,
    size: int = 128,
    num_classes: int = len(SHAPES) + 1,
    objects: tuple[int, int] = (3, 8),
    object_range: tuple[float, float] = (4.0, 0.9),
    style: str = "textured",
) -> Scenes:
    """The 'train' or 'test' split of the scenes of ``seed``: :func:`make_scenes` under two seeds derived from it.

    The test split depends on (seed, n_test and the settings) only, never on ``n_train``; the settings
    must be the same for both splits.
    """
    check_split(split)
    n = n_train if split == "train" else n_test
    split_seed = derive_seed(seed, 0 if split == "train" else 1)
    return make_scenes(n, size, num_classes, split_seed, objects=objects, object_range=object_range, style=style)
