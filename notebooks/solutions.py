"""Reference solutions of the notebooks' exercises, one function per exercise, named as the notebook asks.

Try an exercise before reading its solution: each check in ``exercises.py`` says what is still wrong.
``tests/test_course.py`` runs every solution here through its check.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pvt_np import ops
from pvt_np.nn import CrossEntropyLoss


# -- 01 · overlapping patch embedding ------------------------------------------------------------------------
def tokens_per_side(size: int, kernel: int, stride: int, padding: int) -> int:
    # The last window must start at or before size + 2 * padding - kernel; windows start every stride pixels.
    return (size + 2 * padding - kernel) // stride + 1


def shared_pixels(kernel: int, stride: int) -> int:
    # Neighbouring windows start stride columns apart: kernel - stride columns of kernel rows overlap.
    return max(0, kernel - stride) * kernel


def pyramid(height: int, width: int) -> list[tuple[int, int]]:
    # The stem (kernel 7, stride 4, padding 3), then a kernel 3, stride 2, padding 1 conv before stages 2-4.
    sizes = [(tokens_per_side(height, 7, 4, 3), tokens_per_side(width, 7, 4, 3))]
    for _ in range(3):
        h, w = sizes[-1]
        sizes.append((tokens_per_side(h, 3, 2, 1), tokens_per_side(w, 3, 2, 1)))
    return sizes


# -- 02 · what attention costs -------------------------------------------------------------------------------
def sra_matmul_flops(h: int, w: int, c: int, r: int) -> int:
    # Keys come from a stride-r, kernel-r conv: (h // r) x (w // r) of them; q @ k^T and attn @ v cost N M C each.
    return 2 * (h * w) * (h // r) * (w // r) * c


def sra_layer_flops(h: int, w: int, c: int, r: int) -> int:
    """Forward FLOPs of one SRA attention layer (r >= 2): projections, reduction conv, LayerNorm, the matmuls."""
    n, m = h * w, (h // r) * (w // r)
    q_and_proj = 2 * n * c * c
    reduction = r * r * c * c * m + c * m  # the r x r conv's multiply-adds and its bias
    norm = 2 * m * c
    kv = 2 * m * c * c
    return q_and_proj + reduction + norm + kv + sra_matmul_flops(h, w, c, r)


def b2_stage1_change(r: int) -> int:
    # pvt_v2_b2's stage 1: 3 blocks on a 56 x 56 map of 64 channels; nothing else depends on its ratio.
    return 3 * (sra_layer_flops(56, 56, 64, r) - sra_layer_flops(56, 56, 64, 8))


def crossover_side(r: int, pool: int) -> int:
    # Linear SRA is cheaper once the SRA key map (side // r)^2 holds more than pool^2 keys: side // r >= pool + 1.
    return r * (pool + 1)


# -- 03 · the conv FFN as a position encoding ----------------------------------------------------------------
def min_input_side(sr_ratios: tuple[int, ...]) -> int:
    # Stage i's map must be at least sr_ratios[i] on a side (its reduction conv needs one whole window).
    side = 1
    while any(s < r for (s, _), r in zip(pyramid(side, side), sr_ratios, strict=True)):
        side += 1
    return side


def distinct_tokens(h: int, w: int, blocks: int) -> int:
    # After L padded 3x3 convs a token knows its distance to each border, capped at L: count the kinds per axis.
    def kinds(n: int) -> int:
        return len({(min(i, blocks), min(n - 1 - i, blocks)) for i in range(n)})

    return kinds(h) * kinds(w)


# -- 04 · backprop by hand -----------------------------------------------------------------------------------
def silu_backward(dout: np.ndarray, cache: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    # y = x s with s = sigmoid(x), s' = s (1 - s):  dy/dx = s + x s (1 - s).
    x, s = cache
    return dout * s * (1.0 + x * (1.0 - s))


def residual_backward(dout: np.ndarray, cache: tuple[Any, ...]) -> tuple[np.ndarray, ...]:
    # y = x + h W^T, h = LN(x): the skip passes G straight to x; the branch adds LN's backward of G W.
    h, weight, ln_cache = cache
    c = h.shape[-1]
    dweight = dout.reshape(-1, c).T @ h.reshape(-1, c)
    dx_branch, dln_weight, dln_bias = ops.layer_norm_backward(dout @ weight, ln_cache)
    return dout + dx_branch, dweight, dln_weight, dln_bias


def rms_norm_backward(
    dout: np.ndarray, cache: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    # As LayerNorm without the mean: g = G weight; dx = r (g - xhat mean(g xhat)); dweight = sum of G xhat.
    xhat, r, weight = cache
    g = dout * weight
    dx = r * (g - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    dweight = (dout * xhat).reshape(-1, xhat.shape[-1]).sum(axis=0)
    return dx, dweight


# -- 05 · training on CIFAR-10 -------------------------------------------------------------------------------
def smoothed_ce_grad(logits: np.ndarray, labels: np.ndarray, smoothing: float) -> np.ndarray:
    # L = mean over rows of -sum_k q_k log p_k with q = (1 - eps) onehot + eps / K:  dL/dz = (p - q) / B.
    batch, classes = logits.shape
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    q = np.full_like(p, smoothing / classes)
    q[np.arange(batch), labels] += 1.0 - smoothing
    return (p - q) / batch


def loss_range(classes: int, smoothing: float) -> tuple[float, float]:
    # Equal logits give p = 1/K: loss log K whatever the target. The lowest loss is at p = q: the entropy of q.
    right = 1.0 - smoothing + smoothing / classes
    wrong = smoothing / classes
    lowest = -right * np.log(right) - (classes - 1) * wrong * np.log(wrong)
    return float(np.log(classes)), float(lowest)


# -- 06 · data parallelism -----------------------------------------------------------------------------------
def combine_uneven(slice_grads: list[dict[str, np.ndarray]], slice_sizes: list[int]) -> dict[str, np.ndarray]:
    # L = (1/B) sum_i l_i = sum_r (b_r / B) L_r: each slice's mean-loss gradient weighs b_r / B.
    total = sum(slice_sizes)
    return {
        name: sum(g[name] * (b / total) for g, b in zip(slice_grads, slice_sizes, strict=True))
        for name in slice_grads[0]
    }


def accumulated_gradient(model: Any, x: np.ndarray, y: np.ndarray, micro_batch: int) -> dict[str, np.ndarray]:
    # backward adds into .grad; scaling each micro-batch's dL/dlogits by b / B makes the sum the batch mean's.
    model.zero_grad()
    for start in range(0, len(x), micro_batch):
        xb, yb = x[start : start + micro_batch], y[start : start + micro_batch]
        criterion = CrossEntropyLoss()
        criterion(model(xb), yb)
        model.backward(criterion.backward(len(xb) / len(x)), input_grad=False)
    return {name: p.grad.copy() for name, p in model.named_parameters()}


# -- 07 · the pyramid at work --------------------------------------------------------------------------------
def nearest_up2_backward(dout: np.ndarray) -> np.ndarray:
    # Each input pixel was copied to a 2x2 block of the output: its gradient is the sum of the block's.
    n, c, h2, w2 = dout.shape
    return dout.reshape(n, c, h2 // 2, 2, w2 // 2, 2).sum(axis=(3, 5))


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    # Output i samples the input at s = (i + 0.5) n_in / n_out - 0.5 (pixel centres line up), clamped at 0:
    # weight 1 - f on pixel floor(s), f on the next one (the last pixel past the edge), f = s - floor(s).
    rows = np.arange(n_out)
    src = np.maximum((rows + 0.5) * n_in / n_out - 0.5, 0.0)
    low = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    frac = src - low
    a = np.zeros((n_out, n_in))
    np.add.at(a, (rows, low), 1.0 - frac)  # add: where both neighbours are the last pixel, its weights sum
    np.add.at(a, (rows, np.minimum(low + 1, n_in - 1)), frac)
    return a


def iou_of_bucket(pred: np.ndarray, target: np.ndarray, buckets: np.ndarray, bucket: int) -> float:
    # Counted: labelled pixels of the bucket's objects or of the background (bucket 0); other buckets stay out.
    counted = (target != 255) & ((buckets == bucket) | (buckets == 0))
    objects = counted & (buckets == bucket)
    right = pred == target
    tp = np.sum(objects & right)
    fn = np.sum(objects & ~right)
    fp = np.sum(counted & ~right & (pred != 0))  # a wrong object class (class 0 is the background)
    return float(tp / (tp + fn + fp))
