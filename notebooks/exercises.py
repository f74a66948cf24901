"""The notebooks' exercises: each check runs the learner's function and compares it with what pvt_np computes.

A check never raises: it returns a :class:`Verdict`, which a notebook shows as one line ("solved: ..." or
"not solved yet: ..."), true only when every case agrees. Its reference is pvt_np itself (a conv's output
shape, ``count_flops``, ``gradcheck``, a loss's backward, a model's gradient), never a number written here.
Reference solutions are in ``solutions.py``, one function per exercise under the name the notebook asks
for; ``tests/test_course.py`` runs each through its check.

The exercises of each notebook, in order, are listed in :data:`EXERCISES`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

import pvt_np
from pvt_np import nn, ops
from pvt_np.complexity import attention_flops, count_flops
from pvt_np.data import IGNORE_INDEX, SIZE_BUCKET_NAMES
from pvt_np.nn import CrossEntropyLoss
from pvt_np.training.segmentation_metrics import SegmentationMetrics


@dataclass(frozen=True)
class Verdict:
    """The outcome of a check: true when solved; its repr is the line a notebook shows."""

    solved: bool
    message: str

    def __bool__(self) -> bool:
        return self.solved

    def __repr__(self) -> str:
        return f"{'solved' if self.solved else 'not solved yet'}: {self.message}"


class _Mismatch(Exception):
    """A case where the learner's answer differs from pvt_np's."""


def _verdict(name: str, cases: Callable[[], Iterator[str]]) -> Verdict:
    """Run every case of a check; the first mismatch, or an exception from the learner's code, fails it."""
    passed = []
    try:
        for case in cases():
            passed.append(case)
    except _Mismatch as err:
        return Verdict(False, str(err))
    except NotImplementedError:
        return Verdict(
            False, f"{name} is still the stub (it raises NotImplementedError): write it, then run this cell again"
        )
    except Exception as err:  # the learner's code failed: say how, rather than stop the notebook
        return Verdict(False, f"{name} raised {type(err).__name__}: {err}")
    return Verdict(True, f"{name} agrees with pvt_np ({'; '.join(passed)})")


def _expect_equal(what: str, got: Any, expected: Any) -> None:
    if got != expected:
        raise _Mismatch(f"{what} returned {got!r}, pvt_np gives {expected!r}")


def _expect_close(what: str, got: Any, expected: np.ndarray, tolerance: float) -> float:
    got = np.asarray(got, dtype=np.float64)
    if got.shape != expected.shape:
        raise _Mismatch(f"{what} returned shape {got.shape}, expected {expected.shape}")
    err = pvt_np.relative_error(got, expected)
    if not err <= tolerance:
        raise _Mismatch(f"{what}: relative error {err:.1e} against pvt_np (at most {tolerance:.0e} expected)")
    return err


# -- 01 · overlapping patch embedding ------------------------------------------------------------------------
CONV_CASES = [(30, 4, 4, 0), (30, 7, 4, 3), (33, 7, 4, 3), (224, 7, 4, 3), (57, 3, 2, 1), (15, 3, 2, 1),
              (8, 3, 1, 1), (9, 2, 2, 0), (31, 5, 3, 2), (5, 7, 4, 3)]  # fmt: skip


def check_tokens_per_side(tokens_per_side: Callable[[int, int, int, int], int]) -> Verdict:
    """tokens_per_side(size, kernel, stride, padding) against the output of a pvt_np conv on such an input."""

    def cases() -> Iterator[str]:
        for size, k, s, p in CONV_CASES:
            conv = nn.Conv2d(1, 1, k, s, p)
            with nn.no_grad():
                expected = conv(np.zeros((1, 1, size, size), np.float32)).shape[2]
            _expect_equal(f"tokens_per_side({size}, {k}, {s}, {p})", tokens_per_side(size, k, s, p), expected)
            yield f"{size}/{k}/{s}/{p} -> {expected}"

    return _verdict("tokens_per_side", cases)


def measured_shared_pixels(kernel: int, stride: int) -> int:
    """Pixels two horizontally neighbouring tokens both read, from the conv's backward (one-hot gradients)."""
    side = 4 * stride + 2 * kernel
    conv = nn.Conv2d(1, 1, kernel, stride, bias=False, dtype=np.float64)
    conv.weight.data[...] = 1.0
    y = conv(np.zeros((2, 1, side, side)))
    grad = np.zeros_like(y)
    grad[0, 0, 1, 1] = grad[1, 0, 1, 2] = 1.0
    fields = conv.backward(grad)[:, 0] != 0  # each token's receptive field
    return int((fields[0] & fields[1]).sum())


def check_shared_pixels(shared_pixels: Callable[[int, int], int]) -> Verdict:
    """shared_pixels(kernel, stride) against receptive fields measured with a conv's backward."""

    def cases() -> Iterator[str]:
        for k, s in [(7, 4), (4, 4), (3, 2), (5, 1), (2, 3), (9, 4)]:
            expected = measured_shared_pixels(k, s)
            _expect_equal(f"shared_pixels({k}, {s})", shared_pixels(k, s), expected)
            yield f"k {k}, s {s} -> {expected}"

    return _verdict("shared_pixels", cases)


def check_pyramid(pyramid: Callable[[int, int], list[tuple[int, int]]]) -> Verdict:
    """pyramid(height, width) against a pvt_np PVT v2's feature_sizes."""

    def cases() -> Iterator[str]:
        model = pvt_np.create_model("pvt_v2_b0", num_classes=0)
        for h, w in [(224, 224), (225, 225), (230, 180), (97, 131), (64, 48), (31, 200)]:
            expected = [tuple(map(int, hw)) for hw in model.feature_sizes(h, w)]
            got = [tuple(map(int, hw)) for hw in pyramid(h, w)]
            _expect_equal(f"pyramid({h}, {w})", got, expected)
            yield f"{h}x{w}"

    return _verdict("pyramid", cases)


# -- 02 · what attention costs -------------------------------------------------------------------------------
def check_sra_matmul_flops(sra_matmul_flops: Callable[[int, int, int, int], int]) -> Verdict:
    """sra_matmul_flops(h, w, c, r) against pvt_np.complexity.attention_flops (the stride-R conv floors)."""

    def cases() -> Iterator[str]:
        for h, w, c, r in [(56, 56, 64, 4), (56, 56, 64, 8), (58, 45, 64, 4), (200, 334, 64, 4), (30, 30, 32, 7)]:
            expected = attention_flops(h, w, c, "sra", sr_ratio=r)
            _expect_equal(f"sra_matmul_flops({h}, {w}, {c}, {r})", sra_matmul_flops(h, w, c, r), expected)
            yield f"{h}x{w}x{c}, R = {r}"

    return _verdict("sra_matmul_flops", cases)


def check_b2_stage1_change(b2_stage1_change: Callable[[int], int]) -> Verdict:
    """b2_stage1_change(r) against count_flops of pvt_v2_b2 with stage-1 ratio r, less that of pvt_v2_b2 (R = 8)."""

    def cases() -> Iterator[str]:
        base = None
        for r in (4, 2):
            got = b2_stage1_change(r)  # before the counts: a stub is reported at once
            if base is None:
                base = count_flops(pvt_np.create_model("pvt_v2_b2"), 224)
            expected = count_flops(pvt_np.create_model("pvt_v2_b2", sr_ratios=(r, 4, 2, 1)), 224) - base
            _expect_equal(f"b2_stage1_change({r})", got, expected)
            yield f"R = {r}: {expected / 1e6:+,.1f} MFLOPs"

    return _verdict("b2_stage1_change", cases)


def check_crossover_side(crossover_side: Callable[[int, int], int]) -> Verdict:
    """crossover_side(r, pool) against a search over square maps with attention_flops."""

    def cases() -> Iterator[str]:
        for r, pool in [(8, 7), (4, 7), (2, 7), (4, 5), (1, 7)]:
            side = 1
            while attention_flops(side, side, 1, "linear", pool_size=pool) >= attention_flops(
                side, side, 1, "sra", sr_ratio=r
            ):
                side += 1
            _expect_equal(f"crossover_side({r}, {pool})", crossover_side(r, pool), side)
            yield f"R = {r}, P = {pool} -> {side}"

    return _verdict("crossover_side", cases)


# -- 03 · the conv FFN as a position encoding ----------------------------------------------------------------
def check_min_input_side(min_input_side: Callable[[tuple[int, ...]], int]) -> Verdict:
    """min_input_side(sr_ratios): a PVT v2 with those ratios runs at that side and refuses one pixel less."""

    def cases() -> Iterator[str]:
        for ratios in [(8, 4, 2, 1), (4, 2, 1, 1), (2, 2, 2, 2), (8, 8, 4, 2)]:
            side = min_input_side(ratios)
            model = pvt_np.create_model("pvt_v2_b0", num_classes=0, sr_ratios=ratios)
            with nn.no_grad():
                try:
                    model(np.zeros((1, 3, side, side), np.float32))
                except ValueError as err:
                    raise _Mismatch(f"min_input_side({ratios}) returned {side}, too small: {err}") from None
                try:
                    model(np.zeros((1, 3, side - 1, side - 1), np.float32))
                except ValueError:
                    yield f"{ratios} -> {side}"
                    continue
            raise _Mismatch(f"min_input_side({ratios}) returned {side}, but {side - 1} runs too")

    return _verdict("min_input_side", cases)


def count_distinct_tokens(h: int, w: int, blocks: int, channels: int = 4) -> int:
    """Distinct token values after `blocks` zero-padded 3x3 depthwise convs (random weights) on a constant map."""
    pvt_np.manual_seed(7)
    convs = [nn.Conv2d(channels, channels, 3, 1, 1, groups=channels, dtype=np.float64) for _ in range(blocks)]
    x = np.repeat(np.random.default_rng(3).standard_normal((1, channels, 1, 1)), h, axis=2).repeat(w, axis=3)
    with nn.no_grad():
        for conv in convs:
            x = np.tanh(conv(x))  # a nonlinearity between convs, as the FFN's GELU
    tokens = x[0].reshape(channels, -1).T
    return len(np.unique(np.round(tokens, 10), axis=0))


def check_distinct_tokens(distinct_tokens: Callable[[int, int, int], int]) -> Verdict:
    """distinct_tokens(h, w, blocks) against stacked pvt_np depthwise convs run on constant maps."""

    def cases() -> Iterator[str]:
        for h, w, blocks in [(12, 16, 1), (12, 12, 2), (5, 5, 2), (4, 6, 3), (1, 7, 1), (16, 16, 3)]:
            expected = count_distinct_tokens(h, w, blocks)
            _expect_equal(f"distinct_tokens({h}, {w}, {blocks})", distinct_tokens(h, w, blocks), expected)
            yield f"{h}x{w}, {blocks} -> {expected}"

    return _verdict("distinct_tokens", cases)


# -- 04 · backprop by hand -----------------------------------------------------------------------------------
def silu_forward(x: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """y = x * sigmoid(x); the cache is (x, sigmoid(x))."""
    s = 1.0 / (1.0 + np.exp(-x))
    return x * s, (x, s)


def residual_forward(
    x: np.ndarray, weight: np.ndarray, ln_weight: np.ndarray, ln_bias: np.ndarray
) -> tuple[np.ndarray, tuple[Any, ...]]:
    """A pre-norm residual sublayer, as each half of a PVT v2 block: y = x + layer_norm(x) @ weight.T.

    x: (..., C); weight: (C, C); ln_weight, ln_bias: (C,). The cache is (h, weight, ln_cache), where
    h = layer_norm(x) and ln_cache is what ``pvt_np.ops.layer_norm_backward`` takes.
    """
    h, ln_cache = ops.layer_norm_forward(x, ln_weight, ln_bias)
    return x + h @ weight.T, (h, weight, ln_cache)


def rms_norm_forward(
    x: np.ndarray, weight: np.ndarray, eps: float = 1e-6
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Over the last axis: r = 1 / sqrt(mean(x^2) + eps), xhat = x * r, y = xhat * weight; cache (xhat, r, weight)."""
    r = 1.0 / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)
    xhat = x * r
    return xhat * weight, (xhat, r, weight)


def _gradcheck_cases(
    name: str, forward: Callable[..., Any], backward: Callable[..., Any], inputs: list[np.ndarray], names: list[str]
) -> Iterator[str]:
    errors = pvt_np.gradcheck((forward, backward), inputs, names=names)
    for grad_name, err in errors.items():
        if not err < 1e-7:
            raise _Mismatch(f"{name}: {grad_name} differs from central differences by {err:.1e} (relative)")
        yield f"{grad_name} {err:.0e} from central differences"


def check_silu_backward(silu_backward: Callable[[np.ndarray, Any], np.ndarray]) -> Verdict:
    """silu_backward(dout, cache) against central differences of silu_forward (pvt_np.gradcheck)."""
    x = np.random.default_rng(0).standard_normal((3, 7)) * 3.0  # large |x| too, where sigmoid saturates
    return _verdict(
        "silu_backward", lambda: _gradcheck_cases("silu_backward", silu_forward, silu_backward, [x], ["dx"])
    )


def check_residual_backward(residual_backward: Callable[[np.ndarray, Any], tuple[np.ndarray, ...]]) -> Verdict:
    """residual_backward(dout, cache) -> (dx, dweight, dln_weight, dln_bias) against central differences."""
    rng = np.random.default_rng(1)
    c = 6
    inputs = [rng.standard_normal((2, 5, c)), rng.standard_normal((c, c)) / c**0.5,
              1.0 + 0.1 * rng.standard_normal(c), 0.1 * rng.standard_normal(c)]  # fmt: skip
    names = ["dx", "dweight", "dln_weight", "dln_bias"]
    return _verdict(
        "residual_backward",
        lambda: _gradcheck_cases("residual_backward", residual_forward, residual_backward, inputs, names),
    )


def check_rms_norm_backward(rms_norm_backward: Callable[[np.ndarray, Any], tuple[np.ndarray, np.ndarray]]) -> Verdict:
    """rms_norm_backward(dout, cache) -> (dx, dweight) against central differences of rms_norm_forward."""
    rng = np.random.default_rng(2)
    x, weight = rng.standard_normal((4, 5, 8)), 1.0 + 0.2 * rng.standard_normal(8)
    return _verdict(
        "rms_norm_backward",
        lambda: _gradcheck_cases(
            "rms_norm_backward", rms_norm_forward, rms_norm_backward, [x, weight], ["dx", "dweight"]
        ),
    )


# -- 05 · training on CIFAR-10 -------------------------------------------------------------------------------
def check_smoothed_ce_grad(smoothed_ce_grad: Callable[[np.ndarray, np.ndarray, float], np.ndarray]) -> Verdict:
    """smoothed_ce_grad(logits, labels, smoothing) against pvt_np's CrossEntropyLoss backward."""

    def cases() -> Iterator[str]:
        rng = np.random.default_rng(4)
        for batch, classes, smoothing in [(6, 10, 0.1), (5, 4, 0.0), (3, 100, 0.3)]:
            logits = 3.0 * rng.standard_normal((batch, classes))
            labels = rng.integers(0, classes, batch)
            criterion = CrossEntropyLoss(label_smoothing=smoothing)
            criterion(logits, labels)
            expected = criterion.backward()
            got = smoothed_ce_grad(logits.copy(), labels.copy(), smoothing)
            err = _expect_close(f"smoothed_ce_grad(.., smoothing={smoothing})", got, expected, 1e-10)
            yield f"{batch}x{classes}, smoothing {smoothing}: {err:.0e}"

    return _verdict("smoothed_ce_grad", cases)


def check_loss_range(loss_range: Callable[[int, float], tuple[float, float]]) -> Verdict:
    """loss_range(classes, smoothing) -> (loss at equal logits, lowest loss) against pvt_np's CrossEntropyLoss.

    The lowest loss is reached where softmax(logits) equals the smoothed target q, e.g. at logits log(q).
    """

    def cases() -> Iterator[str]:
        for classes, smoothing in [(10, 0.1), (10, 0.3), (100, 0.1), (2, 0.5)]:
            criterion = CrossEntropyLoss(label_smoothing=smoothing)
            labels = np.arange(4) % classes
            start = float(criterion(np.zeros((4, classes)), labels))
            q = np.full((4, classes), smoothing / classes)
            q[np.arange(4), labels] += 1.0 - smoothing
            lowest = float(criterion(np.log(q), labels))
            got = tuple(float(v) for v in loss_range(classes, smoothing))
            for what, value, expected in (("first", got[0], start), ("second", got[1], lowest)):
                if not abs(value - expected) <= 1e-9 * max(1.0, abs(expected)):
                    raise _Mismatch(
                        f"loss_range({classes}, {smoothing}): its {what} value is {value:.6f}, "
                        f"pvt_np gives {expected:.6f}"
                    )
            yield f"{classes} classes, smoothing {smoothing}: {start:.3f} -> {lowest:.3f}"

    return _verdict("loss_range", cases)


# -- 06 · data parallelism -----------------------------------------------------------------------------------
def tiny_model() -> Any:
    """A 4-class PVT v2 of one block per stage, float64, without dropout or drop-path (16x16 inputs)."""
    return pvt_np.create_model(
        "pvt_v2_b0", num_classes=4, cifar=True, dtype=np.float64, seed=0, depths=(1, 1, 1, 1),
        embed_dims=(16, 16, 32, 32), num_heads=(1, 1, 2, 2), mlp_ratios=(2, 2, 2, 2),
    )  # fmt: skip


def tiny_batch(batch: int = 14) -> tuple[np.ndarray, np.ndarray]:
    """A batch of random 16x16 images and labels for :func:`tiny_model`."""
    rng = np.random.default_rng(6)
    return rng.standard_normal((batch, 3, 16, 16)), rng.integers(0, 4, batch)


def mean_loss_gradient(model: Any, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """{parameter name: gradient} of the mean cross-entropy over the batch (x, y)."""
    model.zero_grad()
    criterion = CrossEntropyLoss()
    criterion(model(x), y)
    model.backward(criterion.backward(), input_grad=False)
    return {name: p.grad.copy() for name, p in model.named_parameters()}


def _compare_gradients(what: str, got: dict[str, Any], expected: dict[str, np.ndarray]) -> float:
    if set(got) != set(expected):
        raise _Mismatch(f"{what} returned gradients for {len(got)} names, the model has {len(expected)} parameters")
    return max(_expect_close(f"{what}, {name}", got[name], expected[name], 1e-10) for name in expected)


def check_combine_uneven(
    combine_uneven: Callable[[list[dict[str, np.ndarray]], list[int]], dict[str, np.ndarray]],
) -> Verdict:
    """combine_uneven(slice_grads, slice_sizes) against the gradient of the whole batch."""

    def cases() -> Iterator[str]:
        model = tiny_model()
        x, y = tiny_batch()
        whole = mean_loss_gradient(model, x, y)
        for sizes in [(7, 7), (3, 5, 6), (1, 13)]:
            bounds = np.cumsum((0, *sizes))
            grads = [mean_loss_gradient(model, x[a:b], y[a:b]) for a, b in itertools.pairwise(bounds)]
            err = _compare_gradients(f"combine_uneven(.., {list(sizes)})", combine_uneven(grads, list(sizes)), whole)
            yield f"slices {sizes}: {err:.0e}"

    return _verdict("combine_uneven", cases)


def check_accumulated_gradient(
    accumulated_gradient: Callable[[Any, np.ndarray, np.ndarray, int], dict[str, np.ndarray]],
) -> Verdict:
    """accumulated_gradient(model, x, y, micro_batch) against the gradient of the whole batch in one pass."""

    def cases() -> Iterator[str]:
        model = tiny_model()
        x, y = tiny_batch()
        whole = mean_loss_gradient(model, x, y)
        for micro in (7, 4, 5):
            model.zero_grad()
            got = accumulated_gradient(model, x.copy(), y.copy(), micro)
            err = _compare_gradients(f"accumulated_gradient(.., micro_batch={micro})", got, whole)
            yield f"micro-batches of {micro}: {err:.0e}"

    return _verdict("accumulated_gradient", cases)


# -- 07 · the pyramid at work --------------------------------------------------------------------------------
def check_nearest_up2_backward(nearest_up2_backward: Callable[[np.ndarray], np.ndarray]) -> Verdict:
    """nearest_up2_backward(dout) against pvt_np's interpolate backward of a 2x nearest upsampling (float64)."""

    def cases() -> Iterator[str]:
        rng = np.random.default_rng(7)
        for n, c, h, w in [(2, 3, 4, 5), (1, 1, 1, 1), (3, 2, 1, 7), (1, 4, 9, 2), (2, 5, 6, 6)]:
            _, cache = ops.interpolate_forward(np.zeros((n, c, h, w)), scale_factor=2, mode="nearest")
            dout = rng.standard_normal((n, c, 2 * h, 2 * w))
            expected = ops.interpolate_backward(dout, cache)
            err = _expect_close(f"nearest_up2_backward(dout of shape {dout.shape})", nearest_up2_backward(dout.copy()),
                                expected, 1e-12)  # fmt: skip
            yield f"{n}x{c}x{2 * h}x{2 * w}: {err:.0e}"

    return _verdict("nearest_up2_backward", cases)


# ((rows in, rows out), (columns in, columns out)) of a bilinear resize: integer and other ratios, none downsampling
BILINEAR_CASES = [((4, 8), (5, 10)), ((3, 7), (6, 9)), ((5, 5), (2, 3)), ((1, 4), (7, 16)), ((14, 56), (9, 9))]


def check_bilinear_matrix(bilinear_matrix: Callable[[int, int], np.ndarray]) -> Verdict:
    """bilinear_matrix(n_in, n_out): A_h x A_w^T against pvt_np's bilinear interpolate forward, and
    A_h^T G A_w against its backward (float64)."""

    def cases() -> Iterator[str]:
        rng = np.random.default_rng(8)
        for (h, out_h), (w, out_w) in BILINEAR_CASES:
            a_h, a_w = (np.asarray(bilinear_matrix(i, o), np.float64) for i, o in ((h, out_h), (w, out_w)))
            _expect_equal(f"bilinear_matrix({h}, {out_h}).shape", a_h.shape, (out_h, h))
            _expect_equal(f"bilinear_matrix({w}, {out_w}).shape", a_w.shape, (out_w, w))
            x = rng.standard_normal((2, 3, h, w))
            out, cache = ops.interpolate_forward(x, size=(out_h, out_w), mode="bilinear")
            what = f"bilinear_matrix for {h}x{w} -> {out_h}x{out_w}"
            err = _expect_close(f"{what}: A_h @ x @ A_w.T", a_h @ x @ a_w.T, out, 1e-12)
            g = rng.standard_normal(out.shape)
            err = max(err, _expect_close(f"{what}: A_h.T @ g @ A_w", a_h.T @ g @ a_w,
                                         ops.interpolate_backward(g, cache), 1e-12))  # fmt: skip
            yield f"{h}x{w} -> {out_h}x{out_w}: {err:.0e}"

    return _verdict("bilinear_matrix", cases)


def check_iou_of_bucket(iou_of_bucket: Callable[[np.ndarray, np.ndarray, np.ndarray, int], float]) -> Verdict:
    """iou_of_bucket(pred, target, buckets, bucket) against SegmentationMetrics' iou_by_size (background class 0)."""

    def cases() -> Iterator[str]:
        rng = np.random.default_rng(9)
        for n, side, classes, ignored in [(2, 16, 4, 0.0), (3, 12, 6, 0.1), (1, 20, 3, 0.25)]:
            shape = (n, side, side)
            buckets = rng.integers(0, len(SIZE_BUCKET_NAMES), shape)
            target = np.where(buckets == 0, 0, rng.integers(1, classes, shape))  # objects on a background
            pred = np.where(rng.random(shape) < 0.6, target, rng.integers(0, classes, shape))
            target = np.where(rng.random(shape) < ignored, IGNORE_INDEX, target)
            metrics = SegmentationMetrics(classes)
            metrics.update(pred, target, buckets)
            scores = metrics.compute()["iou_by_size"]
            for bucket in range(1, len(SIZE_BUCKET_NAMES)):
                expected = scores[SIZE_BUCKET_NAMES[bucket]]
                got = float(iou_of_bucket(pred.copy(), target.copy(), buckets.copy(), bucket))
                if not abs(got - expected) <= 1e-12:
                    raise _Mismatch(
                        f"iou_of_bucket(.., bucket={bucket}) on {n}x{side}x{side} pixels of {classes} classes, "
                        f"{ignored:.0%} ignored, returned {got:.6f}, pvt_np gives {expected:.6f}"
                    )
            yield f"{n}x{side}x{side}, {classes} classes, {ignored:.0%} ignored"

    return _verdict("iou_of_bucket", cases)


# The exercises of each notebook, in the order a learner takes them: {notebook stem: {function name: check}}.
EXERCISES: dict[str, dict[str, Callable[[Callable[..., Any]], Verdict]]] = {
    "01_overlapping_patch_embedding": {
        "tokens_per_side": check_tokens_per_side,
        "shared_pixels": check_shared_pixels,
        "pyramid": check_pyramid,
    },
    "02_complexity": {
        "sra_matmul_flops": check_sra_matmul_flops,
        "b2_stage1_change": check_b2_stage1_change,
        "crossover_side": check_crossover_side,
    },
    "03_conv_ffn_position": {
        "min_input_side": check_min_input_side,
        "distinct_tokens": check_distinct_tokens,
    },
    "04_backprop_by_hand": {
        "silu_backward": check_silu_backward,
        "residual_backward": check_residual_backward,
        "rms_norm_backward": check_rms_norm_backward,
    },
    "05_train_cifar": {
        "smoothed_ce_grad": check_smoothed_ce_grad,
        "loss_range": check_loss_range,
    },
    "06_data_parallel": {
        "combine_uneven": check_combine_uneven,
        "accumulated_gradient": check_accumulated_gradient,
    },
    "07_pyramid_at_work": {
        "nearest_up2_backward": check_nearest_up2_backward,
        "bilinear_matrix": check_bilinear_matrix,
        "iou_of_bucket": check_iou_of_bucket,
    },
}
