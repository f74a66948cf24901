"""The notebooks as a course: every exercise's reference solution passes its check, and each check can fail.

``notebooks/exercises.py`` holds the checks (each compares the learner's function with what pvt_np
computes), ``notebooks/solutions.py`` the reference solutions. Here every solution is run through its
check, a stub and a typical mistake are run through it too (a check that cannot fail would teach nothing),
and each notebook is read for the shape of a lesson: numbered in order, goals and prerequisites first
(prerequisites only from earlier notebooks), a summary and the numbered exercises last, each exercise
committed as a stub with the call of its check.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

nbformat = pytest.importorskip("nbformat")

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
sys.path.insert(0, str(NOTEBOOK_DIR))  # the notebooks import exercises.py from their own folder

import exercises  # noqa: E402
import solutions  # noqa: E402

ALL = [(stem, name) for stem, names in exercises.EXERCISES.items() for name in names]
IDS = [name for _, name in ALL]


def _stub(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("the exercise cell as committed")


def _unscaled_accumulation(model: Any, x: np.ndarray, y: np.ndarray, micro_batch: int) -> dict[str, np.ndarray]:
    """Micro-batches' mean-loss gradients added up without their b / B weights."""
    model.zero_grad()
    for start in range(0, len(x), micro_batch):
        criterion = exercises.CrossEntropyLoss()
        criterion(model(x[start : start + micro_batch]), y[start : start + micro_batch])
        model.backward(criterion.backward(), input_grad=False)
    return {name: p.grad.copy() for name, p in model.named_parameters()}


def _without_skip(dout: np.ndarray, cache: Any) -> tuple[np.ndarray, ...]:
    """The residual sublayer's gradients with the branch's dx alone (the skip connection's G forgotten)."""
    dx, *rest = solutions.residual_backward(dout, cache)
    return (dx - dout, *rest)


def _matmuls_only(r: int) -> int:
    """pvt_v2_b2's change of FLOPs with stage-1 ratio r, counting the two attention matmuls alone."""
    return 3 * (solutions.sra_matmul_flops(56, 56, 64, r) - solutions.sra_matmul_flops(56, 56, 64, 8))


def _bilinear_from_source(n_in: int, src: np.ndarray) -> np.ndarray:
    """The bilinear matrix of the source coordinates src (one per output pixel): 1 - f and f on its neighbours."""
    low = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    frac = src - low
    a = np.zeros((len(src), n_in))
    np.add.at(a, (np.arange(len(src)), low), 1.0 - frac)
    np.add.at(a, (np.arange(len(src)), np.minimum(low + 1, n_in - 1)), frac)
    return a


def _bilinear_align_corners(n_in: int, n_out: int) -> np.ndarray:
    """align_corners=True: the corner pixels' centres line up, s = i (n_in - 1) / (n_out - 1)."""
    return _bilinear_from_source(n_in, np.arange(n_out) * (n_in - 1) / max(n_out - 1, 1))


def _bucket_iou(pred: np.ndarray, target: np.ndarray, counted: np.ndarray, objects: np.ndarray) -> float:
    """Pooled IoU with TP and FN over the pixels `objects`, FP over the pixels `counted`."""
    right = pred == target
    tp, fn = np.sum(objects & right), np.sum(objects & ~right)
    return float(tp / (tp + fn + np.sum(counted & ~right & (pred != 0))))


def _iou_fp_everywhere(pred: np.ndarray, target: np.ndarray, buckets: np.ndarray, bucket: int) -> float:
    """False positives counted over every labelled pixel, the other buckets' too."""
    labelled = target != 255
    return _bucket_iou(pred, target, labelled, labelled & (buckets == bucket))


def _iou_ignore_forgotten(pred: np.ndarray, target: np.ndarray, buckets: np.ndarray, bucket: int) -> float:
    """The bucket's IoU with the ignored pixels (target 255) counted as any other."""
    return _bucket_iou(pred, target, (buckets == bucket) | (buckets == 0), buckets == bucket)


# A plausible wrong answer to each exercise: its check must say it is not solved.
MISTAKES: dict[str, Callable[..., Any]] = {
    "tokens_per_side": lambda size, k, s, p: size // s,  # v1's formula, padding and kernel ignored
    "shared_pixels": lambda k, s: (k - s) ** 2,  # the overlap's columns squared
    "pyramid": lambda h, w: [(h // 4 // 2**i, w // 4 // 2**i) for i in range(4)],  # floors, as PVT v1
    "sra_matmul_flops": lambda h, w, c, r: 2 * (h * w) ** 2 * c // r**2,  # N / R^2 keys: no floor
    "b2_stage1_change": _matmuls_only,
    "crossover_side": lambda r, pool: r * pool,  # where the two cost the same, not where linear is cheaper
    "min_input_side": lambda ratios: 4 * ratios[0],  # stage 1 alone, and not the smallest
    "distinct_tokens": lambda h, w, blocks: 9,  # one conv's nine kinds of position, whatever the depth
    "silu_backward": lambda dout, cache: dout * cache[1],  # the sigmoid's part only
    "residual_backward": _without_skip,
    "rms_norm_backward": lambda dout, c: (dout * c[2] * c[1], (dout * c[0]).reshape(-1, c[0].shape[-1]).sum(0)),
    "smoothed_ce_grad": lambda logits, labels, eps: solutions.smoothed_ce_grad(logits, labels, 0.0),  # no smoothing
    "loss_range": lambda classes, eps: (float(np.log(classes)), 0.0),  # as if the loss could reach 0
    "combine_uneven": lambda grads, sizes: {n: sum(g[n] for g in grads) / len(grads) for n in grads[0]},  # plain mean
    "accumulated_gradient": _unscaled_accumulation,
    "nearest_up2_backward": lambda dout: solutions.nearest_up2_backward(dout) / 4,  # the block's mean, not its sum
    "bilinear_matrix": _bilinear_align_corners,
    "iou_of_bucket": _iou_fp_everywhere,
}

# Further plausible wrong answers to some exercises: their checks must say these are not solved either.
MORE_MISTAKES: list[tuple[str, Callable[..., Any]]] = [
    ("bilinear_matrix", lambda n_in, n_out: _bilinear_from_source(n_in, np.arange(n_out) * n_in / n_out)),  # no 0.5
    ("iou_of_bucket", _iou_ignore_forgotten),
]


def test_every_exercise_has_a_solution_and_a_mistake() -> None:
    names = {name for _, name in ALL}
    assert names == set(MISTAKES)
    assert all(callable(getattr(solutions, name, None)) for name in names)


@pytest.mark.parametrize(("stem", "name"), ALL, ids=IDS)
def test_reference_solution_passes_its_check(stem: str, name: str) -> None:
    verdict = exercises.EXERCISES[stem][name](getattr(solutions, name))
    assert verdict.solved, verdict


@pytest.mark.parametrize(("stem", "name"), ALL, ids=IDS)
def test_check_reports_the_stub_and_a_mistake_as_unsolved(stem: str, name: str) -> None:
    check = exercises.EXERCISES[stem][name]
    assert not check(_stub)  # reported, not raised: the committed notebook runs on
    assert not check(MISTAKES[name])


@pytest.mark.parametrize(("name", "mistake"), MORE_MISTAKES, ids=[name for name, _ in MORE_MISTAKES])
def test_check_reports_further_mistakes_as_unsolved(name: str, mistake: Callable[..., Any]) -> None:
    stem = next(stem for stem, names in exercises.EXERCISES.items() if name in names)
    assert not exercises.EXERCISES[stem][name](mistake)


# -- the notebooks' shape ----------------------------------------------------------------------------------------
def _headings(source: str, level: int) -> list[str]:
    return re.findall(rf"^{'#' * level} (.+)$", source, re.M)


def test_notebooks_are_numbered_in_order_and_each_has_exercises() -> None:
    assert [p.stem[:3] for p in NOTEBOOKS] == [f"{i:02d}_" for i in range(1, len(NOTEBOOKS) + 1)]
    assert list(exercises.EXERCISES) == [p.stem for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_reads_as_a_lesson(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    number = int(path.stem[:2])
    first = nb.cells[0]
    assert first.cell_type == "markdown"
    assert re.match(rf"# {number:02d} · \S", first.source), "the title carries the notebook's number"
    sections = _headings(first.source, 2)
    assert sections[:2] == ["What you will learn", "What you should know first"]
    known = first.source.split("## What you should know first", 1)[1]
    earlier = [int(n) for n in re.findall(r"\b(\d\d)_[a-z]", known)]
    assert all(n < number for n in earlier), f"prerequisites name a later notebook: {earlier}"

    markdown = [c.source for c in nb.cells if c.cell_type == "markdown"]
    later = [h for source in markdown[1:] for h in _headings(source, 2)]
    assert later[-2:] == ["Summary", "Exercises"], "a lesson ends with its summary, then its exercises"
    numbered = [h for source in markdown for h in _headings(source, 3) if h.startswith("Exercise ")]
    names = list(exercises.EXERCISES[path.stem])
    assert 2 <= len(names) <= 4
    assert [h.split(" · ")[0] for h in numbered] == [f"Exercise {i}" for i in range(1, len(names) + 1)]

    code = [c.source for c in nb.cells if c.cell_type == "code"]
    for name in names:
        stubs = [s for s in code if re.search(rf"^def {name}\(", s, re.M)]
        assert len(stubs) == 1 and "raise NotImplementedError" in stubs[0], f"{name}: commit the stub, not a solution"
        check = exercises.EXERCISES[path.stem][name].__name__
        assert any(f"exercises.{check}({name})" in s for s in code), f"no cell runs {check} on {name}"
