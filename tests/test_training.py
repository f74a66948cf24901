"""Tests of pvt_np.training: parity with a PyTorch training loop, exact resume, bad input, outputs.

* Parity: the same initial weights and batches through pvt_np's ``train_step``
  (AdamW in two weight-decay groups, warmup + cosine schedule, label-smoothed
  cross-entropy, gradient clipping) and through timm's pvt_v2 with torch.optim.
* Resume: ``pvt-np train`` killed (SIGKILL) or interrupted (SIGINT) mid-epoch and
  resumed ends with bitwise the same weights as an uninterrupted run. The child
  waits at a chosen step for the signal (tests/training_fixtures.py), so where
  it lands does not depend on the machine's speed.
* The GPU's deferred loss reads (every --log-every steps), simulated on the CPU:
  a Ctrl-C between reads, a non-finite loss pinned to its step.
* Bad input through ``pvt_np.cli.main``: a clear message, exit code 1 (2 for a bad
  option value, named as the option, with its allowed range and the value), nothing overwritten.
* Outputs: the start line, metrics, the step log, plots, best.npz, ``pvt-np evaluate``,
  ``--no-progress``; resuming from the run directory alone; leftovers of killed runs.

The datasets are built under tmp_path (tests/training_fixtures.py).
"""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import training_fixtures as tf
from helpers import max_rel_err

from pvt_np import backend, cli
from pvt_np.cli import evaluate as cli_evaluate
from pvt_np.cli import train as cli_train
from pvt_np.complexity import count_flops, count_params
from pvt_np.data import Augment, Dataset, resize_bilinear
from pvt_np.io.checkpoint import save_checkpoint
from pvt_np.models import create_model
from pvt_np.nn import CrossEntropyLoss, no_grad
from pvt_np.optim import AdamW, CosineWarmupSchedule, cosine_warmup_lr, param_groups_weight_decay
from pvt_np.training import ConfigError, TrainConfig, TrainingError, budget, build_model, load_checkpoint, train_step
from pvt_np.training import trainer as trainer_mod
from pvt_np.training import tta as tta_mod
from pvt_np.training.rundir import write_metrics
from pvt_np.training.runlock import LOCK_NAME
from pvt_np.weights import load_model

# Parity with PyTorch ---------------------------------------------------------------------------------

PARITY_STEPS = 24  # three epochs of 8 batches
PARITY_BATCH = 8
PARITY_LR, PARITY_MIN_LR, PARITY_WARMUP = 2e-3, 1e-5, 4
PARITY_WD, PARITY_SMOOTHING = 0.05, 0.1
# The gradient norms of this run lie between about 3.4 and 5.5: 4.5 clips some steps and not others.
PARITY_CLIP = 4.5
# float64: two implementations of the same arithmetic differ by rounding only (measured: losses
# ~4e-16, weights ~1e-12 after 24 steps); the bound is 1e-6.
F64_LOSS_TOL = F64_WEIGHT_TOL = 1e-6
# float32: each op rounds to ~6e-8 and Adam's normalised steps carry that into the weights
# (measured: losses <= 2e-7, weights <= 5e-6 relative to each tensor's largest entry).
F32_LOSS_TOL = 1e-5
F32_WEIGHT_TOL = 3e-5


def _parity_data(dtype: Any) -> Any:
    """A BatchLoader with random crops and flips over 64 random 32x32 uint8 images in 10 classes."""
    rng = np.random.default_rng(2024)
    images = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 64)
    data = Dataset(images, labels, tuple(f"c{k}" for k in range(10)), name="synthetic", split="train")
    mean, std = data.mean_std()
    return data.loader(
        PARITY_BATCH, shuffle=True, seed=11, drop_last=True, augment=Augment(crop_padding=4, hflip=True),
        mean=mean, std=std, dtype=dtype,
    )  # fmt: skip


def _run_parity(dtype: Any) -> dict[str, Any]:
    """Train pvt_np and its timm twin side by side on the same batches; return everything to compare."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("timm")
    from pvt_np.io.timm import timm_twin

    tdtype = torch.float64 if np.dtype(dtype) == np.float64 else torch.float32
    model = create_model("pvt_v2_b0", num_classes=10, seed=5, dtype=dtype, cifar=True, depths=(1, 1, 1, 1))
    twin = timm_twin(model)
    assert model.training and twin.training
    assert all(m.p == 0 for m in twin.modules() if isinstance(m, torch.nn.Dropout)), "drop rates must be 0"
    assert next(twin.parameters()).dtype == tdtype

    criterion = CrossEntropyLoss(label_smoothing=PARITY_SMOOTHING)
    groups = param_groups_weight_decay(model, PARITY_WD)
    optimizer = AdamW(groups, lr=PARITY_LR)
    schedule = CosineWarmupSchedule(optimizer, PARITY_STEPS, PARITY_WARMUP, min_lr=PARITY_MIN_LR)

    names = {id(p): name for name, p in model.named_parameters()}
    twin_params = dict(twin.named_parameters())
    twin_groups = [
        {"params": [twin_params[names[id(p)]] for p in g["params"]], "weight_decay": g["weight_decay"]}
        for g in optimizer.param_groups
    ]
    assert [len(g["params"]) > 0 for g in twin_groups] == [True, True]
    assert [g["weight_decay"] for g in twin_groups] == [0.0, PARITY_WD]
    assert sum(len(g["params"]) for g in twin_groups) == len(twin_params)
    twin_opt = torch.optim.AdamW(twin_groups, lr=PARITY_LR, foreach=False)

    def factor(t: int) -> float:
        return cosine_warmup_lr(t, PARITY_LR, PARITY_STEPS, PARITY_WARMUP, 0.0, PARITY_MIN_LR) / PARITY_LR

    twin_sched = torch.optim.lr_scheduler.LambdaLR(twin_opt, [factor, factor])
    twin_criterion = torch.nn.CrossEntropyLoss(label_smoothing=PARITY_SMOOTHING)

    loader = _parity_data(dtype)
    batches = [b for epoch in range(3) for b in loader.epoch(epoch)]
    assert len(batches) == PARITY_STEPS
    out: dict[str, Any] = {"loss": [], "twin_loss": [], "norm": [], "lr": [], "twin_lr": []}
    for x, y in batches:
        tx, ty = torch.from_numpy(x.copy()), torch.from_numpy(y.copy())
        out["lr"].append([g["lr"] for g in optimizer.param_groups])
        out["twin_lr"].append([g["lr"] for g in twin_opt.param_groups])

        loss, _ = train_step(model, criterion, optimizer, x, y, PARITY_CLIP)
        schedule.step()

        twin_opt.zero_grad()
        twin_loss = twin_criterion(twin(tx), ty)
        twin_loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(twin.parameters(), PARITY_CLIP)
        twin_opt.step()
        twin_sched.step()

        out["loss"].append(float(loss))
        out["twin_loss"].append(twin_loss.item())
        out["norm"].append(float(norm))
    out["model"], out["twin"], out["grads"] = model, twin, {n: p.grad for n, p in model.named_parameters()}
    return out


def _key_bias_slices(model: Any) -> dict[str, slice]:
    """Per attention layer, the key half of ``kv.bias`` (keys first, then values, as in timm)."""
    return {
        f"stages.{i}.blocks.{j}.attn.kv.bias": slice(0, blk.attn.dim)
        for i, stage in enumerate(model.stages)
        for j, blk in enumerate(stage.blocks)
    }


def _weight_errors(run: dict[str, Any], skip: dict[str, slice] | None = None) -> dict[str, float]:
    twin_state = {k: v.detach().numpy() for k, v in run["twin"].state_dict().items()}
    ours = run["model"].state_dict()
    assert sorted(ours) == sorted(twin_state)
    errors = {}
    for name, value in ours.items():
        ref = twin_state[name]
        if skip and name in skip:  # compare the rest of the tensor, relative to the whole tensor's max
            keep = np.ones(ref.shape[0], dtype=bool)
            keep[skip[name]] = False
            errors[name] = float(np.abs(value[keep] - ref[keep]).max()) / float(np.abs(ref).max())
        else:
            errors[name] = max_rel_err(value, ref)
    return errors


def _check_schedule_and_clipping(run: dict[str, Any]) -> None:
    lrs, twin_lrs = np.array(run["lr"]), np.array(run["twin_lr"])
    np.testing.assert_allclose(lrs, twin_lrs, rtol=1e-12, atol=0)
    assert lrs[0, 0] == 0.0 and lrs[PARITY_WARMUP, 0] == pytest.approx(PARITY_LR, rel=1e-12)
    assert lrs[-1, 0] < 0.05 * PARITY_LR
    norms = np.array(run["norm"])
    clipped = int((norms > PARITY_CLIP).sum())
    assert 0 < clipped < PARITY_STEPS, f"clipping must be active in some steps only; norms {np.round(norms, 2)}"


def _worst(errors: dict[str, float]) -> str:
    name = max(errors, key=errors.__getitem__)
    return f"{name}: {errors[name]:.3e}"


def _record_evaluations(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The results of every evaluation pvt-np evaluate runs from now on, in order."""
    results: list[dict[str, Any]] = []
    real_evaluate = cli_evaluate.evaluate

    def recording(*args: Any, **kwargs: Any) -> dict[str, Any]:
        results.append(real_evaluate(*args, **kwargs))
        return results[-1]

    monkeypatch.setattr(cli_evaluate, "evaluate", recording)
    return results


def test_training_parity_with_torch_float64() -> None:
    run = _run_parity(np.float64)
    _check_schedule_and_clipping(run)
    loss, twin_loss = np.array(run["loss"]), np.array(run["twin_loss"])
    step_errors = np.abs(loss - twin_loss) / np.abs(twin_loss)
    assert step_errors.max() <= F64_LOSS_TOL, f"per-step loss relative errors {step_errors}"
    assert loss[-1] < loss[0]  # it trained
    errors = _weight_errors(run)
    assert max(errors.values()) <= F64_WEIGHT_TOL, f"final weights differ, worst {_worst(errors)}"
    # Every weight moved away from its initial value (no parameter left out of the update).
    initial = create_model("pvt_v2_b0", num_classes=10, seed=5, dtype=np.float64, cifar=True, depths=(1, 1, 1, 1))
    for name, value in initial.state_dict().items():
        assert not np.array_equal(value, run["model"].state_dict()[name]), f"{name} never changed"
    # The key half of kv.bias has an exactly zero gradient (adding q . b_k to every logit of a softmax
    # row changes nothing); the float32 test relies on this. Here it is rounding noise only.
    for name, keys in _key_bias_slices(run["model"]).items():
        grad = run["grads"][name]
        assert np.abs(grad[keys]).max() <= 1e-12 * np.abs(grad[keys.stop :]).max(), name


def test_training_parity_with_torch_float32() -> None:
    run = _run_parity(np.float32)
    _check_schedule_and_clipping(run)
    loss, twin_loss = np.array(run["loss"]), np.array(run["twin_loss"])
    step_errors = np.abs(loss - twin_loss) / np.abs(twin_loss)
    assert step_errors.max() <= F32_LOSS_TOL, f"per-step loss relative errors {step_errors}"
    # The keys' bias gets a gradient that is zero in exact arithmetic and float32 rounding noise in
    # practice; Adam normalises that noise into steps of up to ~lr * noise / eps, different in each
    # implementation. Those entries (which cannot change any output) are compared in float64 only.
    keys = _key_bias_slices(run["model"])
    errors = _weight_errors(run, skip=keys)
    assert max(errors.values()) <= F32_WEIGHT_TOL, f"final weights differ, worst {_worst(errors)}"
    for name, sl in keys.items():
        grad = run["grads"][name]
        assert np.abs(grad[sl]).max() <= 1e-6 * np.abs(grad[sl.stop :]).max(), f"{name}: key bias gradient not ~0"


# Shared runs --------------------------------------------------------------------------------------------

TIMING_FIELDS = ("train_seconds", "img_per_s")
# The resume tests also mix images (mixup or cutmix, soft targets): every random draw must replay.
# The reference run and the resume tests: every random draw on, and an EMA of the weights (resumed exactly too).
MIXING = ("--mixup", "0.2", "--cutmix", "0.5", "--trivial-augment", "--ema-decay", "0.9")
# The last: the accuracy of the image alone, beside the flip-TTA scores (--tta flip, the default).
METRIC_FIELDS = ["epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "lr", *TIMING_FIELDS,
                 "test_accuracy_single_view"]  # fmt: skip


@pytest.fixture(autouse=True)
def _keep_thread_count() -> Any:
    """In-process runs may set pvt_np's thread count (--threads); restore it for the other tests."""
    from pvt_np.ops import parallel

    n = parallel.get_num_threads()
    yield
    if parallel.get_num_threads() != n:
        parallel.configure_threads(n)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny image folder, decoded once so that every run reads its cache."""
    from pvt_np.data import load_dataset

    root = tf.write_image_folder(tmp_path_factory.mktemp("data") / "folder")
    assert len(load_dataset("imagefolder", root, "train")) == tf.N_TRAIN
    return root


@pytest.fixture(scope="module")
def reference_run(image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """An uninterrupted ``python -m pvt_np train`` of three epochs (with progress bars): (run dir, process)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    proc = tf.run_pvt_np(tf.train_args(image_folder, out, *MIXING))
    assert proc.returncode == 0, proc.stderr
    return out, proc


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder``: (contents, mtime in ns); the run lock's file aside (there while a run holds the
    lock, with the holder's pid: docs/faults.md)."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != LOCK_NAME
    }


def _main(capsys: pytest.CaptureFixture[str], args: list[str]) -> tuple[int, str, str]:
    code = cli.main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _assert_same_run(ours: Path, reference: Path) -> None:
    """Final checkpoints bitwise equal: model, optimizer state, schedule, history (timings aside)."""
    a, b = load_checkpoint(ours), load_checkpoint(reference)
    assert sorted(a["model"]) == sorted(b["model"])
    for name, value in b["model"].items():
        assert a["model"][name].dtype == value.dtype and a["model"][name].shape == value.shape, name
        assert np.array_equal(a["model"][name], value), f"{name}: resumed weights differ from the reference run"
    opt_a, opt_b = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sorted(opt_a) == sorted(opt_b)
    for k in opt_b:
        assert opt_a[k]["step"] == opt_b[k]["step"]
        for key in ("exp_avg", "exp_avg_sq"):
            assert np.array_equal(opt_a[k][key], opt_b[k][key]), f"optimizer state {k}.{key} differs"
    assert a["schedule"] == b["schedule"]
    assert a["weights"] == b["weights"] and (a["ema"] is None) == (b["ema"] is None)
    for name, value in (b["ema"] or {}).items():
        assert np.array_equal(a["ema"][name], value), f"{name}: resumed EMA differs from the reference run"
    assert a["progress"]["epoch"] == b["progress"]["epoch"] and a["progress"]["batch"] == b["progress"]["batch"] == 0

    def strip(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in row.items() if k not in TIMING_FIELDS} for row in history]

    assert strip(a["history"]) == strip(b["history"])
    assert a["best_accuracy"] == b["best_accuracy"]


# Exact resume ---------------------------------------------------------------------------------------------


def test_reference_run_shows_progress(image_folder: Path, reference_run: tuple[Path, Any]) -> None:
    out, proc = reference_run
    # One line at the start says what the run does.
    model = build_model(cli_train.saved_config(out), tf.NUM_CLASSES, (16, 16))
    start = proc.stdout.splitlines()[0]
    for part in (
        f"starting: imagefolder at {image_folder} ",
        f"({tf.N_TRAIN} training / {tf.N_TEST} test images of 16x16, {tf.NUM_CLASSES} classes)",
        "| pvt_v2_b0 (CIFAR stem, depths=(1, 1, 1, 1), embed_dims=(8, 16, 16, 16)",
        f"{count_params(model) / 1e6:.3g} M parameters, {count_flops(model, (16, 16)) / 1e6:.3g} MFLOPs/image",
        "| cpu float32, 1 thread |",
        f"3 epochs of {tf.STEPS_PER_EPOCH} steps, the first 1 at 12x12 | output {out}",  # progressive resizing
    ):
        assert part in start, f"{part!r} not in the start line: {start}"
    for epoch in (1, 2, 3):
        low_res = " at 12x12" if epoch == 1 else ""  # the first half of the 3 epochs, progressive resizing
        assert f"epoch {epoch}/3{low_res or ':'}" in proc.stderr, proc.stderr  # each epoch's bar
        # --tta flip-grid (the default): the flip before the last epoch, fifty views after it.
        scored = (
            r"flip TTA; single view [\d.]+" if epoch < 3
            else r"flip-grid TTA; ten views [\d.]+, flip [\d.]+, single view [\d.]+"
        )  # fmt: skip
        assert re.search(
            rf"^epoch {epoch}: train loss [\d.]+ acc [\d.]+{low_res} \| test loss [\d.]+ acc [\d.]+ "
            rf"\({scored}\) \| EMA test loss",
            proc.stdout,
            re.M,
        )
    assert f"{tf.STEPS_PER_EPOCH}/{tf.STEPS_PER_EPOCH}" in proc.stderr
    assert "done: test accuracy" in proc.stdout


def test_sigkill_mid_epoch_then_resume_is_bitwise_exact(
    image_folder: Path, reference_run: tuple[Path, Any], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    args = tf.train_args(image_folder, out, *MIXING)
    step = tf.STEPS_PER_EPOCH + 5  # killed before the 6th step of epoch 2
    code, log = tf.run_signalled(args, step, signal.SIGKILL, tmp_path)
    assert code == -signal.SIGKILL, log
    saved = load_checkpoint(out / "last.npz")  # written at the end of epoch 1; epoch 2's 5 steps are lost
    assert (saved["progress"]["epoch"], saved["progress"]["batch"]) == (1, 0)
    assert saved["schedule"]["last_step"] == tf.STEPS_PER_EPOCH and len(saved["history"]) == 1
    assert not list(out.glob(".*.tmp")), "a temporary checkpoint was left behind"

    # The run directory alone is enough: every setting comes from its config.json.
    proc = tf.run_pvt_np(["train", "--resume", "--output", str(out), "--threads", "1"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("resuming at epoch 2, batch 0: imagefolder at"), proc.stdout
    assert "epoch 1/3" not in proc.stderr and "epoch 2/3" in proc.stderr  # epoch 1 is not trained again
    _assert_same_run(out / "last.npz", reference_run[0] / "last.npz")
    _assert_same_run(out / "best.npz", reference_run[0] / "best.npz")
    # The step log holds every step once, as the uninterrupted run logged it.
    assert (out / "steps.csv").read_text() == (reference_run[0] / "steps.csv").read_text()


def test_ctrl_c_saves_mid_epoch_and_resume_is_bitwise_exact(
    image_folder: Path, reference_run: tuple[Path, Any], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    args = tf.train_args(image_folder, out, *MIXING)
    step = tf.STEPS_PER_EPOCH + 9  # SIGINT while waiting before the 10th step of epoch 2
    code, log = tf.run_signalled(args, step, signal.SIGINT, tmp_path)
    assert code == 130, log
    # The current step is finished, then the run stops and saves.
    assert "interrupted at epoch 2, batch 10" in log and "--resume" in log, log
    saved = load_checkpoint(out / "last.npz")
    assert (saved["progress"]["epoch"], saved["progress"]["batch"]) == (1, 10)
    assert saved["progress"]["partial"]["seen"] == 10 * tf.BATCH_SIZE
    assert saved["schedule"]["last_step"] == tf.STEPS_PER_EPOCH + 10 and len(saved["history"]) == 1

    proc = tf.run_pvt_np([*args, "--resume"])
    assert proc.returncode == 0, proc.stderr
    # It went on from there: epoch 1 is not trained again, epoch 2's bar starts at step 10.
    assert proc.stdout.startswith("resuming at epoch 2, batch 10: "), proc.stdout
    assert (out / "steps.csv").read_text() == (reference_run[0] / "steps.csv").read_text()
    assert "epoch 1/3" not in proc.stderr
    assert re.search(rf"epoch 2/3: +\d+%\|[^|]*\| 10/{tf.STEPS_PER_EPOCH} ", proc.stderr), proc.stderr
    _assert_same_run(out / "last.npz", reference_run[0] / "last.npz")
    _assert_same_run(out / "best.npz", reference_run[0] / "best.npz")
    reference_rows = [json.loads(line) for line in (reference_run[0] / "metrics.jsonl").read_text().splitlines()]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for row, ref in zip(rows, reference_rows, strict=True):  # the interrupted epoch's train stats too
        assert {k: v for k, v in row.items() if k not in TIMING_FIELDS} == {
            k: v for k, v in ref.items() if k not in TIMING_FIELDS
        }


# Outputs ------------------------------------------------------------------------------------------------------


def _assert_png(path: Path) -> None:
    from PIL import Image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        image.load()
        assert image.width > 100 and image.height > 100


def test_outputs_metrics_plots_best_and_evaluate(
    image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    code, stdout, stderr = _main(capsys, tf.train_args(image_folder, out, "--no-progress"))
    assert code == 0, stderr
    # --no-progress: no bars, no per-epoch lines; only the final summary.
    assert stderr == ""
    assert stdout.splitlines() == [stdout.strip()] and stdout.startswith("done: test accuracy")
    assert sorted(p.name for p in out.iterdir()) == [
        "best.npz", "config.json", "confusion.png", "curves.png", "last.npz", "metrics.csv", "metrics.jsonl",
        "steps.csv",
    ]  # fmt: skip
    with open(out / "steps.csv", newline="") as f:
        steps = list(csv.DictReader(f))
    assert [int(r["step"]) for r in steps] == list(range(1, 3 * tf.STEPS_PER_EPOCH + 1))
    assert [float(r["epoch"]) for r in steps] == [(i + 1) / tf.STEPS_PER_EPOCH for i in range(len(steps))]

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    # --tta flip-grid (the default): the last row also has the flip's and the ten views' accuracies (its
    # test_accuracy: fifty views).
    many = ["test_accuracy_flip", "test_accuracy_flip_shift"]
    assert [list(r) for r in rows] == [METRIC_FIELDS, METRIC_FIELDS, [*METRIC_FIELDS, *many]]
    with open(out / "metrics.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert [list(r) for r in csv_rows] == [[*METRIC_FIELDS, *many]] * 3
    assert [[r[k] for k in many] for r in csv_rows[:2]] == [["", ""]] * 2  # not scored so in the first two epochs
    for row, csv_row in zip(rows, csv_rows, strict=True):
        assert {k: float(v) for k, v in csv_row.items() if v != ""} == {k: float(v) for k, v in row.items()}
    for r in rows:
        assert all(math.isfinite(r[k]) for k in METRIC_FIELDS)
        assert 0.0 <= r["train_accuracy"] <= 1.0 and 0.0 <= r["test_accuracy"] <= 1.0
        # accuracies are counts over the 64 training / 32 test images
        assert (r["train_accuracy"] * tf.N_TRAIN).is_integer() and (r["test_accuracy"] * tf.N_TEST).is_integer()
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert rows[-1]["lr"] == pytest.approx(TrainConfig().min_lr)  # the cosine reached min_lr
    assert json.loads((out / "config.json").read_text())["epochs"] == 3
    _assert_png(out / "curves.png")
    _assert_png(out / "confusion.png")

    last, best = load_checkpoint(out / "last.npz"), load_checkpoint(out / "best.npz")
    accuracies = [r["test_accuracy"] for r in rows]
    best_epoch = int(np.argmax(accuracies)) + 1  # the first epoch reaching the maximum
    assert last["history"] == rows and last["best_accuracy"] == max(accuracies)
    assert best["progress"]["epoch"] == best_epoch and best["history"] == rows[:best_epoch]
    assert best["best_accuracy"] == max(accuracies)
    if best_epoch == 3:
        assert all(np.array_equal(best["model"][k], v) for k, v in last["model"].items())

    # pvt-np evaluate reproduces the recorded test loss and accuracy exactly, scoring each checkpoint as the run did
    # (fifty views after the last epoch, the flip before).
    results = _record_evaluations(monkeypatch)
    for name, row in (("last.npz", rows[-1]), ("best.npz", rows[best_epoch - 1])):
        code, stdout, stderr = _main(capsys, ["evaluate", str(out / name), "--confusion", str(tmp_path / "c.png")])
        assert code == 0, stderr
        assert results[-1]["accuracy"] == row["test_accuracy"] and results[-1]["loss"] == row["test_loss"]
        assert results[-1]["confusion"].sum() == tf.N_TEST
        assert f"accuracy {row['test_accuracy']:.4f}" in stdout and f"{tf.N_TEST} images" in stdout
        single = f"single view {row['test_accuracy_single_view']:.4f}"
        if row["epoch"] == 3:
            ten, flip = row["test_accuracy_flip_shift"], row["test_accuracy_flip"]
            assert f"flip-grid TTA; ten views {ten:.4f}, flip {flip:.4f}, {single}" in stdout
            assert results[-1]["flip_accuracy"] == flip and results[-1]["flip_shift_accuracy"] == ten
        else:
            assert f"(flip TTA; {single})" in stdout
        assert results[-1]["single_view_accuracy"] == row["test_accuracy_single_view"]
        _assert_png(tmp_path / "c.png")
    # --tta flip rescores the last epoch's weights as the earlier epochs were scored: its recorded flip accuracy.
    code, stdout, stderr = _main(capsys, ["evaluate", str(out / "last.npz"), "--tta", "flip"])
    assert code == 0, stderr
    assert results[-1]["accuracy"] == rows[-1]["test_accuracy_flip"] and "flip_accuracy" not in results[-1]
    # --tta flip-shift rescores them by the ten views, which the fifty began with.
    code, stdout, stderr = _main(capsys, ["evaluate", str(out / "last.npz"), "--tta", "flip-shift"])
    assert code == 0, stderr
    assert results[-1]["accuracy"] == rows[-1]["test_accuracy_flip_shift"] and "flip_shift_accuracy" not in results[-1]
    # --tta none scores the image alone: the single-view accuracy the run recorded.
    code, stdout, stderr = _main(capsys, ["evaluate", str(out / "last.npz"), "--tta", "none"])
    assert code == 0, stderr
    assert results[-1]["accuracy"] == rows[-1]["test_accuracy_single_view"] and "TTA" not in stdout
    assert "single_view_accuracy" not in results[-1]
    # A run from before --tta existed (no tta in its config) was scored without it, and is evaluated so.
    old_run = load_checkpoint(out / "last.npz")
    del old_run["config"]["tta"]
    save_checkpoint(tmp_path / "old.npz", old_run)
    code, stdout, stderr = _main(capsys, ["evaluate", str(tmp_path / "old.npz")])
    assert code == 0, stderr
    assert results[-1]["accuracy"] == rows[-1]["test_accuracy_single_view"] and "TTA" not in stdout


def test_evaluate_uses_the_runs_test_subset(
    image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    args = tf.train_args(image_folder, out, "--no-progress", "--test-subset", "12", "--train-subset", "40", epochs=1)
    code, _, stderr = _main(capsys, args)
    assert code == 0, stderr
    row = json.loads((out / "metrics.jsonl").read_text())
    assert (row["train_accuracy"] * 40).is_integer() and (row["test_accuracy"] * 12).is_integer()
    results: list[dict[str, Any]] = []
    real_evaluate = cli_evaluate.evaluate
    monkeypatch.setattr(cli_evaluate, "evaluate", lambda *a, **k: results.append(real_evaluate(*a, **k)) or results[-1])
    code, stdout, stderr = _main(capsys, ["evaluate", str(out / "last.npz")])
    assert code == 0, stderr
    assert results[0]["confusion"].sum() == 12 and "12 images (the run's --test-subset)" in stdout, stdout
    assert results[0]["accuracy"] == row["test_accuracy"] and results[0]["loss"] == row["test_loss"]
    # --test-subset N picks the subset pvt-np train --test-subset N scores: 12 gives the run's own score again.
    code, stdout, stderr = _main(capsys, ["evaluate", str(out / "last.npz"), "--test-subset", "12"])
    assert code == 0, stderr
    assert results[-1]["accuracy"] == row["test_accuracy"] and results[-1]["loss"] == row["test_loss"]
    code, stdout, stderr = _main(capsys, ["evaluate", str(out / "last.npz"), "--test-subset", "5"])
    assert code == 0, stderr
    assert results[-1]["confusion"].sum() == 5 and "5 images (--test-subset)" in stdout, stdout
    code, stdout, stderr = _main(capsys, ["evaluate", str(out / "last.npz"), "--test-subset", str(tf.N_TEST + 1)])
    assert code == 1 and "--test-subset" in stderr and str(tf.N_TEST) in stderr, stderr


# Bad input -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-epoch run (its folder is copied by the tests that need a run to damage or refuse)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    code = cli.main(tf.train_args(image_folder, out, "--no-progress", epochs=1))
    assert code == 0
    return out


def _copy_run(finished_run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    return out


def _expect_error(capsys: pytest.CaptureFixture[str], args: list[str], *parts: str) -> str:
    code, stdout, stderr = _main(capsys, args)
    assert code == 1, f"exit code {code}; stderr: {stderr}"
    assert stdout == "", stdout
    assert stderr.startswith(f"pvt-np {args[0]}: error: "), stderr
    for part in parts:
        assert part in stderr, f"{part!r} not in: {stderr}"
    assert "Traceback" not in stderr
    return stderr


def test_missing_data_path(image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere"
    args = tf.train_args(image_folder, tmp_path / "run", "--no-progress")
    args[args.index("--data-path") + 1] = str(missing)
    _expect_error(capsys, args, str(missing), "does not exist")
    assert not (tmp_path / "run").exists()
    cifar = ["train", "--data-path", str(missing), "--output", str(tmp_path / "run"), "--no-progress"]
    _expect_error(capsys, cifar, "cifar-10-python.tar.gz not found", str(missing))
    assert not (tmp_path / "run").exists()


def test_truncated_image_folder_archive(image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    archive = tmp_path / "folder.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for split in ("train", "test"):
            tar.add(image_folder / split, arcname=split)
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    args = tf.train_args(archive, tmp_path / "run", "--no-progress")
    _expect_error(capsys, args, str(archive), "truncated, corrupt")
    assert not (tmp_path / "run").exists()


def test_corrupt_cifar_archive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(b"\x1f\x8b\x08\x00" + bytes(1000))  # a gzip header, then nothing useful
    args = ["train", "--data-path", str(tmp_path), "--output", str(tmp_path / "run"), "--no-progress"]
    _expect_error(capsys, args, str(archive), "md5 mismatch", "corrupt, truncated")
    assert not (tmp_path / "run").exists()
    assert archive.read_bytes() == b"\x1f\x8b\x08\x00" + bytes(1000)  # not "repaired" or replaced


# A bad option value: (extra arguments, what the message must contain after 'argument ').
BAD_FLAGS = [
    (["--batch-size", "0"], "--batch-size: expected an integer >= 1, got 0"),
    (["--batch-size", str(tf.N_TRAIN + 1)],
     f"--batch-size: expected at most {tf.N_TRAIN} (the number of training images used), got {tf.N_TRAIN + 1}"),
    (["--batch-size", "20", "--train-subset", "16"],
     "--batch-size: expected at most 16 (the number of training images used), got 20"),
    (["--lr", "-1"], "--lr: expected a finite number > 0, got -1.0"),
    (["--lr", "nan"], "--lr: expected a finite number > 0, got nan"),
    (["--min-lr", "0.01"], "--min-lr: expected a number in [0, 0.001] (at most the peak learning rate), got 0.01"),
    (["--warmup-epochs", "4"], "--warmup-epochs: expected a number in [0, 3] (at most the number of epochs), got 4.0"),
    (["--epochs", "0"], "--epochs: expected an integer >= 1, got 0"),
    (["--train-subset", "1000000"],
     f"--train-subset: expected at most {tf.N_TRAIN} (the number of training images), got 1000000"),
    (["--test-subset", "0"], "--test-subset: expected an integer >= 1 (or None: all of them), got 0"),
    (["--test-subset", str(tf.N_TEST + 1)],
     f"--test-subset: expected at most {tf.N_TEST} (the number of test images), got {tf.N_TEST + 1}"),
    (["--label-smoothing", "1"], "--label-smoothing: expected a number in [0, 1), got 1.0"),
    (["--drop-path-rate", "-0.1"], "--drop-path-rate: expected a number in [0, 1), got -0.1"),
    (["--weight-decay", "-1"], "--weight-decay: expected a number in [0, inf), got -1.0"),
    (["--clip-grad", "0"], "--clip-grad: expected a finite number > 0 (or None: no clipping), got 0.0"),
    (["--mixup", "-1"], "--mixup: expected a number in [0, inf) (0: off), got -1.0"),
    (["--seed", "-1"], "--seed: expected an integer >= 0, got -1"),
    (["--log-every", "0"], "--log-every: expected an integer >= 1, got 0"),
    (["--eval-every", "0"], "--eval-every: expected an integer >= 1, got 0"),
    (["--time-budget", "1"], "--time-budget: expected no --epochs beside it (the budget chooses the number of "
     "epochs), got --time-budget 1 and --epochs 3"),
    (["--ema-decay", "1"], "--ema-decay: expected a number in (0, 1) (or None: no EMA), got 1.0"),
    (["--low-res-epochs", "4"], "--low-res-epochs: expected an integer from 0 to the number of epochs (3) (none "
     "given: the first half), got 4"),
    (["--low-res-epochs", "-1"], "--low-res-epochs: expected an integer from 0 to the number of epochs (3) (none "
     "given: the first half), got -1"),
    (["--low-res-scale", "0"], "--low-res-scale: expected a number in (0, 1] (the low-resolution epochs' size / "
     "the images'), got 0.0"),
    (["--low-res-epochs", "1", "--low-res-scale", "0.05"], "--low-res-scale: expected a scale whose 1x1 images "
     "pvt_v2_b0 can take ("),
    (["--ema-decay", "0"], "--ema-decay: expected a number in (0, 1) (or None: no EMA), got 0.0"),
    (["--override", "depths=1,1"], "--override: expected create_model arguments that build a pvt_v2_b0 "
     "(embed_dims needs 2 values (one per stage, like depths), got (8, 16, 16, 16)), got depths=1,1"),
    (["--override", "colour=1"], "--override: expected create_model arguments that build a pvt_v2_b0 "
     "(unknown override(s) ['colour']"),
    (["--override", "num_heads=3,1,1,1"], "--override: expected create_model arguments that build a pvt_v2_b0 "
     "(stage 0: embed_dims[0] = 8 is not divisible by num_heads[0] = 3), got "),
]  # fmt: skip
INTERNAL_NAMES = ("BatchLoader", "AdamW", "CosineWarmupSchedule", "TrainConfig", "PyramidVisionTransformerV2",
                  "Attention:", "create_model:", "Traceback")  # fmt: skip


@pytest.mark.parametrize(("extra", "expected"), BAD_FLAGS, ids=[" ".join(e) for e, _ in BAD_FLAGS])
def test_bad_option_values_are_named_as_options(
    extra: list[str], expected: str, image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit code 2 like argparse; the option, its allowed range and the value; no internal names; nothing written."""
    code, stdout, stderr = _main(capsys, tf.train_args(image_folder, tmp_path / "run", "--no-progress", *extra))
    assert code == 2, stderr
    assert stdout == ""
    assert stderr.startswith(f"pvt-np train: error: argument {expected}"), stderr
    assert not any(name in stderr for name in INTERNAL_NAMES), stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("command", "flag"), [("train", "--threads"), ("evaluate", "--batch-size")])
def test_zero_counts_are_argparse_errors(command: str, flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Options outside any TrainConfig: argparse itself refuses them (before: a raw traceback for --threads 0)."""
    args = [command, *(["x.npz"] if command == "evaluate" else []), flag, "0"]
    with pytest.raises(SystemExit) as stop:
        cli.main(args)
    assert stop.value.code == 2
    assert f"argument {flag}: expected an integer >= 1, got 0" in capsys.readouterr().err


def test_cifar_options_on_an_image_folder_point_to_imagefolder(
    image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--dataset cifar10 on an image folder or its archive: not an md5 complaint, but the dataset to use."""
    archive = tmp_path / "folder.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for split in ("train", "test"):
            tar.add(image_folder / split, arcname=f"cifar10/{split}")
    for data in (archive, image_folder):
        args = ["train", "--dataset", "cifar10", "--data-path", str(data), "--output", str(tmp_path / "run")]
        stderr = _expect_error(capsys, args, f"{data} is an image", "--dataset imagefolder")
        assert "md5" not in stderr and "verify" not in stderr and "download" not in stderr, stderr
    assert not (tmp_path / "run").exists()


def test_unknown_device_is_an_argparse_error(capsys: pytest.CaptureFixture[str]) -> None:
    for command in (["train"], ["evaluate", "x.npz"]):
        with pytest.raises(SystemExit) as stop:
            cli.main([*command, "--device", "tpu"])
        assert stop.value.code == 2
        assert "invalid choice: 'tpu'" in capsys.readouterr().err


@pytest.mark.parametrize("cupy", ["missing", "no-gpu"])
def test_gpu_device_without_cupy_or_gpu(
    cupy: str,
    finished_run: Path,
    image_folder: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if cupy == "missing":
        monkeypatch.setattr(backend, "_cupy", None)
        why = "CuPy is not installed"
    else:

        def no_device() -> int:
            raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")

        runtime = types.SimpleNamespace(getDeviceCount=no_device)
        fake = types.SimpleNamespace(ndarray=type("ndarray", (), {}), cuda=types.SimpleNamespace(runtime=runtime))
        monkeypatch.setattr(backend, "_cupy", fake)
        why = "CuPy finds no CUDA device"
    args = tf.train_args(image_folder, tmp_path / "run", "--no-progress", "--device", "gpu")
    _expect_error(capsys, args, "device='gpu'", why, "device='cpu'")
    assert not (tmp_path / "run").exists()
    before = _snapshot(finished_run)
    _expect_error(capsys, ["evaluate", str(finished_run / "last.npz"), "--device", "gpu"], why)
    assert _snapshot(finished_run) == before


def test_existing_run_without_resume_is_untouched(
    finished_run: Path, image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _copy_run(finished_run, tmp_path)
    before = _snapshot(out)
    _expect_error(capsys, tf.train_args(image_folder, out, "--no-progress"), str(out), "--resume", "nothing was")
    assert _snapshot(out) == before


@pytest.mark.parametrize(
    "change",
    [("--override", "embed_dims=8,16,16,32"), ("--model", "pvt_v2_b1"), ("--dtype", "float64")],
    ids=["override", "model", "dtype"],
)
def test_resume_with_another_model_is_refused(
    change: tuple[str, str], finished_run: Path, image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _copy_run(finished_run, tmp_path)
    before = _snapshot(out)
    args = tf.train_args(image_folder, out, "--no-progress", "--resume", *change)
    _expect_error(capsys, args, "last.npz", "is from another model", change[1].split("=")[-1].replace(",", ", "))
    assert _snapshot(out) == before


@pytest.mark.parametrize("change", [("--seed", "8"), ("--lr", "0.5")], ids=["seed", "lr"])
def test_resume_with_changed_trajectory_is_refused(
    change: tuple[str, str], finished_run: Path, image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A resumed run must replay the same batches and updates: changed settings are named, nothing is written."""
    out = _copy_run(finished_run, tmp_path)
    before = _snapshot(out)
    args = tf.train_args(image_folder, out, "--no-progress", "--resume", *change)
    _expect_error(capsys, args, "settings differ from its checkpoint", change[0].lstrip("-"))
    assert _snapshot(out) == before


def test_resume_from_the_directory_checks_typed_options(
    finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Options typed with --resume must agree with the run, even when they equal the parser's defaults."""
    out = _copy_run(finished_run, tmp_path)
    before = _snapshot(out)
    assert cli_train.saved_config(out).seed == 7  # the run's seed; the parser's default is 0
    resume = ["train", "--resume", "--output", str(out)]
    _expect_error(capsys, [*resume, "--seed", "0"], "settings differ from its checkpoint", "seed 7 -> 0")
    _expect_error(capsys, [*resume, "--model", "pvt_v2_b0", "--override", "depths=1,1,1,1"], "is from another model")
    assert _snapshot(out) == before
    # Agreeing options and the ones a resumed run may change (device, logging) are fine; the run is complete.
    code, stdout, stderr = _main(capsys, [*resume, "--seed", "7", "--device", "cpu", "--no-progress"])
    assert code == 0, stderr
    assert stdout.startswith("done: test accuracy"), stdout
    # An unreadable config.json is named, not taken for missing settings.
    (out / "config.json").write_text("{not json")
    _expect_error(capsys, resume, "cannot read the run's settings", str(out / "config.json"))


def test_resume_without_checkpoint(image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _expect_error(capsys, tf.train_args(image_folder, tmp_path / "run", "--resume"), "no checkpoint", "last.npz")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "foreign-npz"])
def test_corrupt_last_checkpoint(
    damage: str, finished_run: Path, image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _copy_run(finished_run, tmp_path)
    last = out / "last.npz"
    if damage == "garbage":
        last.write_bytes(b"not a zip file at all" * 10)
        expected = evaluate_expected = "is not a checkpoint: it is a text file"
    elif damage == "truncated":
        last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
        expected = evaluate_expected = "corrupt or truncated"
    else:
        np.savez(last, weight=np.zeros(3))
        expected = "is not a pvt_np training checkpoint"
        evaluate_expected = "holds no PVT v2 weights"  # evaluate also takes weights files
    before = _snapshot(out)
    _expect_error(capsys, tf.train_args(image_folder, out, "--no-progress", "--resume"), str(last), expected)
    assert _snapshot(out) == before
    _expect_error(capsys, ["evaluate", str(last)], str(last), evaluate_expected)
    assert _snapshot(out) == before


@pytest.mark.filterwarnings("ignore:(invalid value|overflow) encountered:RuntimeWarning")
def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(
    image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An infinite pixel in batch 3 of epoch 2 (the loss becomes NaN): stop there, keep epoch 1's files."""
    from pvt_np.data.loader import BatchLoader

    out = tmp_path / "run"
    real_batch = BatchLoader.batch
    snapshot: dict[str, tuple[bytes, int]] = {}

    def poisoned(self: BatchLoader, epoch: int, index: int) -> Any:
        batch = real_batch(self, epoch, index)
        if self.shuffle and (epoch, index) == (1, 2):  # the training loader
            snapshot.update(_snapshot(out))
            batch.x[0, 0, 0, 0] = np.inf
        return batch

    monkeypatch.setattr(BatchLoader, "batch", poisoned)
    stderr = _expect_error(
        capsys,
        tf.train_args(image_folder, out, "--no-progress"),
        "non-finite loss (nan)",
        f"at epoch 2, step 3/{tf.STEPS_PER_EPOCH}",
        f"global step {tf.STEPS_PER_EPOCH + 3}",
        str(out / "last.npz"),
        "untouched",
    )
    assert snapshot, "the poisoned batch was never drawn"
    assert "last.npz" in snapshot and _snapshot(out) == snapshot, stderr  # byte-identical, same mtimes
    assert load_checkpoint(out / "last.npz")["progress"]["epoch"] == 1


@pytest.mark.filterwarnings("ignore:(invalid value|overflow) encountered:RuntimeWarning")
def test_weights_spoiled_by_the_last_step_of_an_epoch_are_not_saved(
    image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last step of epoch 2 has a finite loss but leaves a NaN weight (an overflowing update): no save."""
    out = tmp_path / "run"
    trainer = _trainer(image_folder, out)
    snapshot: dict[str, tuple[bytes, int]] = {}
    calls = [0]

    def step(model: Any, *args: Any, **kwargs: Any) -> Any:
        result = train_step(model, *args, **kwargs)
        calls[0] += 1
        if calls[0] == 2 * tf.STEPS_PER_EPOCH:
            snapshot.update(_snapshot(out))
            model.head.weight.data[0, 0] = np.nan
        return result

    monkeypatch.setattr(trainer_mod, "train_step", step)
    with pytest.raises(TrainingError, match=r"non-finite test loss \(nan\) after epoch 2") as err:
        trainer.fit()
    assert str(out / "last.npz") in str(err.value) and "untouched" in str(err.value)
    assert "last.npz" in snapshot and _snapshot(out) == snapshot


@pytest.mark.filterwarnings("ignore:(invalid value|overflow) encountered:RuntimeWarning")
def test_non_finite_loss_before_any_checkpoint(
    image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A learning rate of 1e30 blows the weights up in the first update: the second loss is not finite."""
    out = tmp_path / "run"
    args = tf.train_args(image_folder, out, "--no-progress", "--lr", "1e30", "--warmup-epochs", "0")
    _expect_error(capsys, args, "non-finite loss", "at epoch 1, step 2/", "no checkpoint")
    assert not (out / "last.npz").exists()


# Leftovers of interrupted runs ------------------------------------------------------------------------------------

# pvt-np killed (SIGKILL) inside the rename that would publish its first last.npz: the temporary stays behind.
KILLED_WHILE_SAVING = """
import os, signal, sys
from pvt_np import cli

real_replace = os.replace


def replace(src, dst, *args, **kwargs):
    if str(dst).endswith("last.npz"):
        os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst, *args, **kwargs)


os.replace = replace
sys.exit(cli.main(sys.argv[1:]))
"""


def test_next_start_removes_the_temporaries_of_a_killed_save(image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = tf.train_args(image_folder, out, "--no-progress", epochs=1)
    child = subprocess.run(
        [sys.executable, "-c", KILLED_WHILE_SAVING, *args], cwd=tf.REPO, env=tf.child_env(),
        capture_output=True, text=True, timeout=tf.SUBPROCESS_TIMEOUT, check=False,
    )  # fmt: skip
    assert child.returncode == -signal.SIGKILL, child.stderr
    stale = list(out.glob(".last.npz.*.tmp"))
    assert len(stale) == 1 and stale[0].stat().st_size > 0 and not (out / "last.npz").exists()
    # Files that are not the run's own temporaries are left alone.
    others = [out / ".notes.txt.tmp", out / ".data.npz.abcd1234.tmp", out / "last.npz.tmp"]
    for path in others:
        path.write_text("not pvt-np's")
    proc = tf.run_pvt_np(args)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir() if p.name.endswith(".tmp")) == sorted(p.name for p in others)
    assert load_checkpoint(out / "last.npz")["progress"]["epoch"] == 1


@pytest.mark.parametrize("epochs", [1, 2], ids=["last-epoch", "earlier-epoch"])
def test_ctrl_c_during_evaluation_stops_with_the_checkpoint_message(
    epochs: int, image_folder: Path, tmp_path: Path
) -> None:
    """SIGINT while epoch 1 is evaluated: the epoch is saved, then exit 130 as anywhere else (was 0 in the last)."""
    out = tmp_path / "run"
    code, log = tf.run_signalled(tf.train_args(image_folder, out, epochs=epochs), "evaluate:0", signal.SIGINT, tmp_path)
    assert code == 130, log
    more = "the run is complete" if epochs == 1 else "continue with --resume"
    assert f"interrupted at the end of epoch 1; checkpoint saved to {out / 'last.npz'} ({more})" in log, log
    assert "done: test accuracy" not in log and "epoch 2/2" not in log
    saved = load_checkpoint(out / "last.npz")
    assert (saved["progress"]["epoch"], saved["progress"]["batch"], len(saved["history"])) == (1, 0, 1)


# The GPU's deferred loss reads, on the CPU -----------------------------------------------------------------------


class _NotNumpy(types.ModuleType):
    """Delegates to NumPy but is not ``numpy``: the trainer's ``xp is np`` test then takes the GPU branch."""

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)


@pytest.fixture
def deferred_loss_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the trainer read the losses every --log-every steps, as it does on the GPU (on the CPU: every step)."""
    monkeypatch.setattr(trainer_mod, "np", _NotNumpy("numpy_proxy"))


def _trainer(image_folder: Path, out: Path, log_every: int = 5, resume: bool = False) -> trainer_mod.Trainer:
    """A float64 run (float32 losses sum exactly in float64 whatever their grouping; float64 ones do not)."""
    args = tf.train_args(image_folder, out, "--no-progress", "--log-every", str(log_every), "--dtype", "float64")
    return trainer_mod.Trainer(cli_train.config_from_args(cli.build_parser().parse_args(args)), out, resume=resume)


def _count_steps(monkeypatch: pytest.MonkeyPatch, trainer: trainer_mod.Trainer, stop_at: int = -1) -> list[int]:
    """Count the training steps in the returned list; request a stop at step ``stop_at`` (from 0), as Ctrl-C does."""
    calls = [0]

    def step(*args: Any, **kwargs: Any) -> Any:
        if calls[0] == stop_at:
            trainer._stop_requested = True
        calls[0] += 1
        return train_step(*args, **kwargs)

    monkeypatch.setattr(trainer_mod, "train_step", step)
    return calls


@pytest.mark.usefixtures("deferred_loss_reads")
def test_deferred_loss_reads_interrupt_and_resume_exactly(
    image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C between two loss reads: the pending steps are counted in the checkpoint, resume is exact.

    The reference reads every loss at once (--log-every 1), the resumed run every 3rd: the metrics must
    not depend on how the steps were grouped into reads.
    """
    _trainer(image_folder, tmp_path / "reference", log_every=1).fit()
    trainer = _trainer(image_folder, tmp_path / "run")
    _count_steps(monkeypatch, trainer, stop_at=tf.STEPS_PER_EPOCH + 6)  # 7th step of epoch 2, 2 after the last read
    with pytest.raises(KeyboardInterrupt, match="interrupted at epoch 2, batch 7"):
        trainer.fit()
    saved = load_checkpoint(tmp_path / "run" / "last.npz")
    assert (saved["progress"]["epoch"], saved["progress"]["batch"]) == (1, 7)
    assert saved["progress"]["partial"]["seen"] == 7 * tf.BATCH_SIZE
    resumed = _trainer(image_folder, tmp_path / "run", log_every=3, resume=True)
    steps = _count_steps(monkeypatch, resumed)
    resumed.fit()
    assert steps == [3 * tf.STEPS_PER_EPOCH - (tf.STEPS_PER_EPOCH + 7)]  # only the steps not yet done
    _assert_same_run(tmp_path / "run" / "last.npz", tmp_path / "reference" / "last.npz")


@pytest.mark.filterwarnings("ignore:(invalid value|overflow) encountered:RuntimeWarning")
@pytest.mark.usefixtures("deferred_loss_reads")
@pytest.mark.parametrize("ctrl_c", [False, True], ids=["no-interrupt", "ctrl-c-before-the-read"])
def test_deferred_loss_reads_pin_a_non_finite_loss_to_its_step(
    ctrl_c: bool, image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NaN at step 3 of epoch 2, read at step 5: the message names step 3; a Ctrl-C at step 4 saves nothing."""
    from pvt_np.data.loader import BatchLoader

    out = tmp_path / "run"
    trainer = _trainer(image_folder, out)
    if ctrl_c:
        _count_steps(monkeypatch, trainer, stop_at=tf.STEPS_PER_EPOCH + 3)
    real_batch = BatchLoader.batch
    snapshot: dict[str, tuple[bytes, int]] = {}

    def poisoned(self: BatchLoader, epoch: int, index: int) -> Any:
        batch = real_batch(self, epoch, index)
        if self.shuffle and (epoch, index) == (1, 2):
            snapshot.update(_snapshot(out))
            batch.x[0, 0, 0, 0] = np.inf
        return batch

    monkeypatch.setattr(BatchLoader, "batch", poisoned)
    with pytest.raises(BaseException) as stop:  # not KeyboardInterrupt (that would end the test session)
        trainer.fit()
    assert isinstance(stop.value, TrainingError), repr(stop.value)
    assert f"at epoch 2, step 3/{tf.STEPS_PER_EPOCH} (global step {tf.STEPS_PER_EPOCH + 3})" in str(stop.value)
    assert "last.npz" in snapshot and _snapshot(out) == snapshot


def test_step_log_and_plots_leave_the_matplotlib_backend_alone(image_folder: Path, tmp_path: Path) -> None:
    """Trainer.step_log has one entry per step on the CPU; saving plots does not switch pyplot's backend."""
    import matplotlib

    from pvt_np.training import Trainer

    backend_before = matplotlib.get_backend()
    config = TrainConfig(
        model="pvt_v2_b0",
        model_overrides={"depths": (1, 1, 1, 1), "embed_dims": (8, 16, 16, 16), "num_heads": (1, 1, 1, 1)},
        dataset="imagefolder",
        data_path=str(image_folder),
        epochs=1,
        batch_size=tf.BATCH_SIZE,
        progress=False,
    )
    trainer = Trainer(config, tmp_path / "run")
    trainer.fit()
    steps = len(trainer.train_loader)
    assert [e["step"] for e in trainer.step_log] == list(range(1, steps + 1))
    losses = [e["loss"] for e in trainer.step_log]
    assert np.mean(losses) == pytest.approx(trainer.history[0]["train_loss"], rel=1e-9)
    assert matplotlib.get_backend() == backend_before
    assert (tmp_path / "run" / "curves.png").read_bytes().startswith(b"\x89PNG")


def test_curves_have_whole_epoch_ticks_and_the_step_loss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pvt_np.training import plots

    figures: list[Any] = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    history = [
        {"epoch": e, "train_loss": 2.0 / e, "test_loss": 2.1 / e, "train_accuracy": 0.1 * e, "test_accuracy": 0.1 * e}
        for e in (1, 2, 3)
    ]
    steps = [{"epoch": (i + 1) / 40, "loss": 2.0 - i / 100 + (i % 2) * 0.5} for i in range(120)]
    plots.plot_curves(history, tmp_path / "c.png", steps)
    ax_loss, ax_acc = figures[0].axes
    for ax in (ax_loss, ax_acc):
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    lines = {line.get_label(): line for line in ax_loss.get_lines()}
    smoothed = lines["train (per step, smoothed)"].get_ydata()
    raw = [line for line in ax_loss.get_lines() if len(line.get_ydata()) == 120 and line is not lines.get(
        "train (per step, smoothed)")]  # fmt: skip
    assert len(raw) == 1 and list(raw[0].get_ydata()) == [s["loss"] for s in steps]
    # A moving average over 6 steps: the alternating +0.5 is averaged out to within 0.5 / 6.
    expected = np.array([2.0 - i / 100 + 0.25 for i in range(120)])
    assert np.abs(smoothed[6:] - expected[6:]).max() < 0.1
    assert list(lines["train (epoch mean)"].get_xdata()) == [1, 2, 3]
    assert list(lines["test"].get_ydata()) == [r["test_loss"] for r in history]


def test_one_epoch_curves_span_the_run_from_its_start() -> None:
    """A one-epoch run (a smoke test) draws its points at the end of a 0-1 axis with whole-epoch ticks, not alone
    in a window of fractions around epoch 1."""
    from pvt_np.training import plots

    history = [{"epoch": 1, "train_loss": 2.0, "test_loss": 1.9, "train_accuracy": 0.3, "test_accuracy": 0.35}]
    for steps in (None, [{"epoch": (i + 1) / 8, "loss": 2.3 - i / 10} for i in range(8)]):
        for ax in plots.curves_figure(history, steps).axes:
            low, high = ax.get_xlim()
            assert low <= 0 < 1 <= high < 1.1, (low, high)
            ticks = [t for t in ax.get_xticks() if low <= t <= high]
            assert ticks == [0, 1], ticks
            assert all(list(line.get_xdata())[-1] == 1 for line in ax.get_lines())


def test_curves_show_the_single_view_beside_the_flip_tta(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A --tta flip run's accuracy panel: the TTA scores and, dashed, the image alone, at the scored epochs only."""
    from pvt_np.training import plots

    figures: list[Any] = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    scored = {2: (0.5, 0.4), 3: (0.7, 0.65)}  # epoch: (TTA accuracy, single view); epoch 1 not scored
    history = [
        {"epoch": e, "train_loss": 1.0, "train_accuracy": 0.5, "test_loss": 0.9 if e in scored else None,
         "test_accuracy": scored[e][0] if e in scored else None,
         "test_accuracy_single_view": scored[e][1] if e in scored else None}
        for e in (1, 2, 3)
    ]  # fmt: skip
    plots.plot_curves(history, tmp_path / "c.png")
    lines = {line.get_label(): line for line in figures[0].axes[1].get_lines()}
    assert list(lines["test (flip TTA)"].get_xdata()) == [2, 3]
    assert list(lines["test (flip TTA)"].get_ydata()) == [50.0, 70.0]
    assert list(lines["test (single view)"].get_xdata()) == [2, 3]
    assert list(lines["test (single view)"].get_ydata()) == [40.0, 65.0]
    assert lines["test (single view)"].get_linestyle() == "--"
    assert "test (ten views)" not in lines


def test_curves_mark_the_ten_views_apart_from_the_flip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A --tta flip-shift run's last row holds the ten views' accuracy and the flip's beside it: the flip line
    ends at the flip's score, and the ten views are a marker of their own."""
    from pvt_np.training import plots

    figures: list[Any] = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    history = [
        {"epoch": 1, "train_loss": 1.0, "train_accuracy": 0.5, "test_loss": 0.9, "test_accuracy": 0.5,
         "test_accuracy_single_view": 0.4},
        {"epoch": 2, "train_loss": 0.8, "train_accuracy": 0.6, "test_loss": 0.7, "test_accuracy": 0.75,
         "test_accuracy_single_view": 0.625, "test_accuracy_flip": 0.6875},
    ]  # fmt: skip
    plots.plot_curves(history, tmp_path / "c.png")
    # A --tta flip-grid run's last row has the ten views' accuracy too: its marker says fifty views.
    grid = [*history[:1], {**history[1], "test_accuracy_flip_shift": 0.71875}]
    plots.plot_curves(grid, tmp_path / "g.png")
    for figure, views in zip(figures, ("ten views", "fifty views"), strict=True):
        ax_loss, ax_acc = figure.axes
        lines = {line.get_label(): line for line in ax_acc.get_lines()}
        assert list(lines["test (flip TTA)"].get_ydata()) == [50.0, 68.75]
        marker = lines[f"test ({views})"]
        assert list(marker.get_xdata()) == [2] and list(marker.get_ydata()) == [75.0]
        assert list(lines["test (single view)"].get_ydata()) == [40.0, 62.5]
        assert [line.get_label() for line in ax_loss.get_lines()][-1] == f"test (flip TTA); {views} last"


def test_train_config_checks_its_fields() -> None:
    """The Python API gets the same checks, in its own terms (the field names)."""
    with pytest.raises(ConfigError, match=r"TrainConfig: batch_size: expected an integer >= 1, got 0"):
        TrainConfig(batch_size=0)
    with pytest.raises(ConfigError, match=r"warmup_epochs: expected a number in \[0, 2\]"):
        TrainConfig(epochs=2, warmup_epochs=2.5)
    with pytest.raises(ConfigError, match="model: expected one of pvt_v2_b0"):
        TrainConfig(model="resnet50")
    assert TrainConfig(epochs=2, warmup_epochs=2, train_subset=5).warmup_epochs == 2
    with pytest.raises(ConfigError, match=r"time_budget: expected a number of minutes > 0 .* got -1"):
        TrainConfig(time_budget=-1)
    with pytest.raises(ConfigError, match="budget_fit: expected None or the record of a time-budget fit"):
        TrainConfig(budget_fit=[3])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="trivial_augment: expected True or False, got 'yes'"):
        TrainConfig(trivial_augment="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"ema_decay: expected a number in \(0, 1\)"):
        TrainConfig(ema_decay=float("nan"))
    expected = "tta: expected 'none' or 'flip' or 'flip-shift' or 'flip-grid', got 'both'"
    with pytest.raises(ConfigError, match=expected):
        TrainConfig(tta="both")


def _seen_batches(monkeypatch: pytest.MonkeyPatch, trainer: trainer_mod.Trainer) -> list[tuple[int, np.ndarray]]:
    """(epoch, batch) of every training step the trainer takes, in the returned list."""
    seen: list[tuple[int, np.ndarray]] = []
    real_step = trainer_mod.train_step

    def step(model: Any, criterion: Any, optimizer: Any, x: Any, *rest: Any, **kwargs: Any) -> Any:
        seen.append((trainer.epoch, x.copy()))
        return real_step(model, criterion, optimizer, x, *rest, **kwargs)

    monkeypatch.setattr(trainer_mod, "train_step", step)
    return seen


@pytest.mark.parametrize(
    ("extra", "low_epochs", "low_size"),
    [((), 1, (12, 12)), (("--epochs", "5", "--low-res-scale", "0.5"), 2, (8, 8)),
     (("--low-res-scale", "0.05"), 0, None), (("--low-res-epochs", "0"), 0, None)],
    ids=["half-of-3", "half-of-5", "too-small-for-the-model", "off"],
)  # fmt: skip
def test_low_res_epochs_default_to_the_first_half(
    extra: tuple[str, ...], low_epochs: int, low_size: tuple[int, int] | None, image_folder: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Without --low-res-epochs the first epochs // 2 train on the reduced batches, where the model takes them
    (a 1x1 image it does not: then every epoch is at full size, no error); the start line says so."""
    out = tmp_path / "run"
    args = tf.train_args(image_folder, out, *extra)
    trainer = trainer_mod.Trainer(cli_train.config_from_args(cli.build_parser().parse_args(args)), out)
    seen = _seen_batches(monkeypatch, trainer)
    trainer.fit()
    epochs = trainer.config.epochs
    assert trainer.config.low_res_epochs == (0 if "--low-res-epochs" in extra else None)
    assert trainer.low_res_epochs() == low_epochs
    assert [(epoch, x.shape[2:]) for epoch, x in seen] == [
        (e, low_size if e < low_epochs else (16, 16)) for e in range(epochs) for _ in range(tf.STEPS_PER_EPOCH)
    ]
    start = f"{epochs} epochs of {tf.STEPS_PER_EPOCH} steps"
    assert start + (f", the first {low_epochs} at {low_size[0]}x{low_size[1]} |" if low_size else " |") in (
        trainer.summary
    )


def test_low_res_epochs_train_on_resized_batches(
    image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--low-res-epochs 2 --low-res-scale 0.75: epochs 1-2 see each augmented batch resized to 12x12, epoch 3 the
    16x16 batch itself; the test set is scored at full size."""
    out = tmp_path / "run"
    args = tf.train_args(image_folder, out, "--no-progress", "--low-res-epochs", "2", "--low-res-scale", "0.75")
    trainer = trainer_mod.Trainer(cli_train.config_from_args(cli.build_parser().parse_args(args)), out)
    seen = _seen_batches(monkeypatch, trainer)
    trainer.fit()
    assert [(epoch, x.shape[2:]) for epoch, x in seen] == [
        (e, (12, 12) if e < 2 else (16, 16)) for e in range(3) for _ in range(tf.STEPS_PER_EPOCH)
    ]
    for k in (0, tf.STEPS_PER_EPOCH):  # the first step of epochs 1 and 2: the loader's batch, resized
        epoch, x = seen[k]
        np.testing.assert_array_equal(x, resize_bilinear(trainer.train_loader.batch(epoch, 0).x, (12, 12)))
    np.testing.assert_array_equal(seen[-1][1], trainer.train_loader.batch(2, tf.STEPS_PER_EPOCH - 1).x)
    rows = load_checkpoint(out / "last.npz")["history"]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and all(r["test_accuracy"] is not None for r in rows)
    with pytest.raises(ConfigError, match=r"low_res_epochs: expected 0 or none given with --time-budget"):
        TrainConfig(low_res_epochs=1, time_budget=10)


def test_a_run_from_before_low_res_epochs_resumes_without_them(
    finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run whose config.json and checkpoint predate --low-res-epochs trained at full size: it resumes with 0,
    not with today's default (the first half at low resolution)."""
    out = _copy_run(finished_run, tmp_path)
    config = json.loads((out / "config.json").read_text())
    assert config.pop("low_res_epochs") is None
    (out / "config.json").write_text(json.dumps(config))
    ckpt = load_checkpoint(out / "last.npz")
    del ckpt["config"]["low_res_epochs"]
    save_checkpoint(out / "last.npz", ckpt)
    assert cli_train.saved_config(out).low_res_epochs == 0
    code, stdout, stderr = _main(capsys, ["train", "--resume", "--output", str(out), "--no-progress", "--epochs", "3"])
    assert code == 1 and "settings differ from its checkpoint: epochs 1 -> 3. " in stderr, stderr  # epochs only
    code, stdout, stderr = _main(capsys, ["train", "--resume", "--output", str(out), "--no-progress"])
    assert code == 0 and stdout.startswith("done: test accuracy"), stderr


def test_metrics_csv_has_every_rows_columns(tmp_path: Path) -> None:
    """A run resumed with another --tta gains (or loses) the single-view column: the CSV header is the union of
    the rows' keys in order of appearance, a missing value an empty field; the JSON lines keep each row as is."""
    history = [
        {"epoch": 1, "test_accuracy": 0.5},
        {"epoch": 2, "test_accuracy": 0.75, "test_accuracy_single_view": 0.625},
        {"epoch": 3, "test_accuracy": 0.875},
    ]
    write_metrics(tmp_path, history)
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [list(r) for r in rows] == [["epoch", "test_accuracy", "test_accuracy_single_view"]] * 3
    assert [r["test_accuracy_single_view"] for r in rows] == ["", "0.625", ""]
    assert [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == history


class _Batches:
    """A loader over fixed (x, y) batches: what evaluate reads (len and epoch)."""

    def __init__(self, batches: list[tuple[np.ndarray, np.ndarray]], zero_pixel: Any = None) -> None:
        self.batches = batches
        self.zero_pixel = zero_pixel

    def __len__(self) -> int:
        return len(self.batches)

    def epoch(self, epoch: int) -> Any:
        return iter(self.batches)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_flip_tta_scores_the_mean_of_the_image_and_its_mirror(dtype: Any) -> None:
    """evaluate(tta="flip"): loss, accuracy and confusion of z = (f(x) + f(x mirrored along W)) / 2, formed here
    by hand on three uneven batches of 5 classes; single_view_accuracy is tta="none"'s accuracy."""
    rng = np.random.default_rng(5)
    model = create_model("pvt_v2_b0", num_classes=5, cifar=True, depths=(1, 1, 1, 1), drop_path_rate=0.3,
                         seed=2, dtype=dtype)  # fmt: skip
    batches = [(rng.standard_normal((n, 3, 20, 28)).astype(dtype), rng.integers(0, 5, n)) for n in (4, 7, 1)]
    model.eval()
    with no_grad():
        views = [(model(x), model(np.ascontiguousarray(x[..., ::-1]))) for x, _ in batches]
    model.train()  # evaluate must switch to eval mode itself (no drop-path)
    z = np.concatenate([(a + b) / 2 for a, b in views]).astype(np.float64)
    single = np.concatenate([a for a, _ in views])
    y = np.concatenate([labels for _, labels in batches])
    expected_loss = np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(y)), y])
    flip = tta_mod.evaluate(model, _Batches(batches), 5, tta="flip")
    none = tta_mod.evaluate(model, _Batches(batches), 5, tta="none")
    assert flip["accuracy"] == np.mean(z.argmax(axis=1) == y)
    assert flip["single_view_accuracy"] == none["accuracy"] == np.mean(single.argmax(axis=1) == y)
    np.testing.assert_array_equal(flip["confusion"], np.bincount(y * 5 + z.argmax(axis=1), minlength=25).reshape(5, 5))
    assert flip["loss"] == pytest.approx(expected_loss, rel=1e-6 if dtype == np.float32 else 1e-12)
    assert flip["accuracy"] != none["accuracy"] or flip["loss"] != none["loss"]  # the mirror view counted
    with pytest.raises(ValueError, match="tta must be one of none, flip, flip-shift, flip-grid, got 'both'"):
        tta_mod.evaluate(model, _Batches(batches), 5, tta="both")


def _mean_of_views(
    model: Any, batches: list[tuple[np.ndarray, np.ndarray]], zero_pixel: np.ndarray, shifts: list[tuple[int, int]]
) -> tuple[np.ndarray, np.ndarray, float]:
    """The expected TTA logits z (float64), labels and loss: the mean of f over each image and its mirror, each
    moved by every (dy, dx) of ``shifts`` with zero_pixel coming in (built here by padding by 2 and slicing)."""

    def moved(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
        n, c, h, w = x.shape
        padded = np.broadcast_to(zero_pixel, (n, c, h + 4, w + 4)).copy()  # 2 pixels of black around
        padded[:, :, 2 : 2 + h, 2 : 2 + w] = x
        return np.ascontiguousarray(padded[:, :, 2 + dy : 2 + dy + h, 2 + dx : 2 + dx + w])

    model.eval()
    with no_grad():
        views = [[model(moved(v, dy, dx)) for v in (x, x[..., ::-1]) for dy, dx in shifts] for x, _ in batches]
    z = np.concatenate([sum(v) / (2 * len(shifts)) for v in views]).astype(np.float64)
    y = np.concatenate([labels for _, labels in batches])
    return z, y, float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(y)), y]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_flip_shift_tta_scores_the_mean_of_ten_views(dtype: Any) -> None:
    """evaluate(tta="flip-shift"): z = the mean of f over the image and its mirror, each as is and moved by 2 pixels
    up, down, left and right with the loader's zero_pixel coming in (built here by padding and slicing), on three
    uneven batches; single_view_accuracy is f(x)'s, flip_accuracy is tta="flip"'s accuracy."""
    rng = np.random.default_rng(6)
    model = create_model("pvt_v2_b0", num_classes=5, cifar=True, depths=(1, 1, 1, 1), seed=3, dtype=dtype)
    batches = [(rng.standard_normal((n, 3, 20, 28)).astype(dtype), rng.integers(0, 5, n)) for n in (4, 7, 1)]
    zero_pixel = np.array([-1.5, 0.25, 2.0], dtype=dtype).reshape(1, 3, 1, 1)
    z, y, expected_loss = _mean_of_views(model, batches, zero_pixel, [(0, 0), (2, 0), (-2, 0), (0, 2), (0, -2)])
    loader = _Batches(batches, zero_pixel)
    ten = tta_mod.evaluate(model, loader, 5, tta="flip-shift")
    flip = tta_mod.evaluate(model, loader, 5, tta="flip")
    assert ten["accuracy"] == np.mean(z.argmax(axis=1) == y)
    assert ten["flip_accuracy"] == flip["accuracy"] and ten["single_view_accuracy"] == flip["single_view_accuracy"]
    assert "flip_accuracy" not in flip
    np.testing.assert_array_equal(ten["confusion"], np.bincount(y * 5 + z.argmax(axis=1), minlength=25).reshape(5, 5))
    assert ten["loss"] == pytest.approx(expected_loss, rel=1e-6 if dtype == np.float32 else 1e-12)
    assert ten["loss"] != flip["loss"]  # the shifted views counted
    assert tta_mod.scoring_tta("flip-shift", last=False) == "flip"
    assert tta_mod.scoring_tta("flip-shift", last=True) == "flip-shift"
    assert [tta_mod.scoring_tta(t, last) for t in ("none", "flip") for last in (False, True)] == [
        "none", "none", "flip", "flip"
    ]  # fmt: skip


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_flip_grid_tta_scores_the_mean_of_fifty_views(dtype: Any) -> None:
    """evaluate(tta="flip-grid"): z = the mean of f over the image and its mirror, each moved by every (dy, dx) in
    {-2..2}^2 with the loader's zero_pixel coming in (built here by padding and slicing), on three uneven batches;
    flip_shift_accuracy is tta="flip-shift"'s accuracy, flip_accuracy and single_view_accuracy tta="flip"'s."""
    rng = np.random.default_rng(7)
    model = create_model("pvt_v2_b0", num_classes=5, cifar=True, depths=(1, 1, 1, 1), seed=4, dtype=dtype)
    batches = [(rng.standard_normal((n, 3, 20, 12)).astype(dtype), rng.integers(0, 5, n)) for n in (6, 3, 1)]
    zero_pixel = np.array([0.5, -2.0, 1.25], dtype=dtype).reshape(1, 3, 1, 1)
    shifts = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)]
    z, y, expected_loss = _mean_of_views(model, batches, zero_pixel, shifts)
    loader = _Batches(batches, zero_pixel)
    grid = tta_mod.evaluate(model, loader, 5, tta="flip-grid")
    ten = tta_mod.evaluate(model, loader, 5, tta="flip-shift")
    assert len(set(tta_mod.TTA_VIEWS["flip-grid"])) == 50
    assert tta_mod.TTA_VIEWS["flip-grid"][:10] == tta_mod.TTA_VIEWS["flip-shift"]
    assert grid["accuracy"] == np.mean(z.argmax(axis=1) == y)
    assert grid["flip_shift_accuracy"] == ten["accuracy"] and "flip_shift_accuracy" not in ten
    assert grid["flip_accuracy"] == ten["flip_accuracy"]
    assert grid["single_view_accuracy"] == ten["single_view_accuracy"]
    np.testing.assert_array_equal(grid["confusion"], np.bincount(y * 5 + z.argmax(axis=1), minlength=25).reshape(5, 5))
    assert grid["loss"] == pytest.approx(expected_loss, rel=1e-6 if dtype == np.float32 else 1e-12)
    assert grid["loss"] != ten["loss"]  # the diagonal and one-pixel views counted
    assert tta_mod.scoring_tta("flip-grid", last=False) == "flip"
    assert tta_mod.scoring_tta("flip-grid", last=True) == "flip-grid"


def test_ema_and_eval_every(
    image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--ema-decay keeps decay * ema + (1 - decay) * weights after every step, from the initial weights;
    --eval-every 2 scores epochs 2 and 3 (the last) only; best.npz holds the weights that scored best."""
    out = tmp_path / "run"
    decay = 0.8
    args = tf.train_args(image_folder, out, "--no-progress", "--ema-decay", str(decay), "--eval-every", "2")
    config = cli_train.config_from_args(cli.build_parser().parse_args(args))
    trainer = trainer_mod.Trainer(config, out)
    expected: dict[str, np.ndarray] = {}
    real_step = trainer_mod.train_step

    def step(model: Any, *rest: Any, **kwargs: Any) -> Any:
        if not expected:  # the EMA starts from the initial weights
            expected.update(model.state_dict())
        result = real_step(model, *rest, **kwargs)
        for name, p in model.named_parameters():  # the documented update, in the weights' dtype
            expected[name] = expected[name] * np.float32(decay) + np.float32(1.0 - decay) * p.data
        return result

    monkeypatch.setattr(trainer_mod, "train_step", step)
    trainer.fit()
    last = load_checkpoint(out / "last.npz")
    assert sorted(last["ema"]) == sorted(expected) and last["weights"] == "raw"
    for name, value in expected.items():
        np.testing.assert_array_equal(last["ema"][name], value, err_msg=name)
    rows = last["history"]
    assert [(r["test_accuracy"] is None, r["ema_test_accuracy"] is None) for r in rows] == [
        (True, True), (False, False), (False, False),
    ]  # fmt: skip
    assert [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()] == rows
    with open(out / "metrics.csv", newline="") as f:
        assert [r["test_loss"] for r in csv.DictReader(f)] == ["", str(rows[1]["test_loss"]), str(rows[2]["test_loss"])]
    _assert_png(out / "curves.png")
    scores = [(r[key], r["epoch"], kind) for r in rows[1:] for key, kind in
              (("test_accuracy", "raw"), ("ema_test_accuracy", "ema"))]  # fmt: skip
    best_accuracy = max(score for score, _, _ in scores)
    _, best_epoch, kind = next(item for item in scores if item[0] == best_accuracy)  # the first to reach it; raw first
    best = load_checkpoint(out / "best.npz")
    assert last["best_accuracy"] == best["best_accuracy"] == best_accuracy
    assert best["weights"] == kind and best["progress"]["epoch"] == best_epoch
    # load_model and pvt-np evaluate get the weights that scored: their test figures are the row's.
    row = rows[best_epoch - 1]
    prefix = "ema_test" if kind == "ema" else "test"
    results = _record_evaluations(monkeypatch)
    code, _, stderr = _main(capsys, ["evaluate", str(out / "best.npz")])
    assert code == 0, stderr
    assert (results[-1]["accuracy"], results[-1]["loss"]) == (row[f"{prefix}_accuracy"], row[f"{prefix}_loss"])

    # EMA weights kept apart: swapping them in for the evaluation leaves the trained weights as they were.
    assert not all(np.array_equal(last["ema"][k], v) for k, v in last["model"].items())
    resumed = trainer_mod.Trainer(config, out, resume=True)
    resumed._setup()
    for name, p in resumed.model.named_parameters():
        np.testing.assert_array_equal(p.data, last["model"][name])
        np.testing.assert_array_equal(resumed.ema[name], last["ema"][name])


def test_fit_epochs() -> None:
    """The most epochs whose training and evaluations (every K-th epoch and the last) fit in the time left."""
    assert budget.fit_epochs(100.0, 10.0, 5.0, 1) == 6  # 15 s an epoch
    assert budget.fit_epochs(90.0, 10.0, 5.0, 1) == 6  # exactly full
    assert budget.fit_epochs(100.0, 10.0, 5.0, 3) == 8  # 80 s + 3 evaluations (3, 6, 8)
    assert budget.fit_epochs(104.9, 10.0, 5.0, 3) == 8  # 9 epochs: 90 s + 3 evaluations = 105 s
    assert budget.fit_epochs(105.0, 10.0, 5.0, 3) == 9
    assert budget.fit_epochs(14.9, 10.0, 5.0, 1) == 0 and budget.fit_epochs(-3.0, 10.0, 5.0, 1) == 0
    # The first E // 2 epochs at 5 s: 8 epochs cost 4 * 5 + 4 * 10 + 8 evaluations * 5 = 100 s, 9 cost 115 s.
    assert budget.fit_epochs(100.0, 10.0, 5.0, 1, 5.0) == 8
    assert budget.fit_epochs(99.9, 10.0, 5.0, 1, 5.0) == 7  # 3 * 5 + 4 * 10 + 7 * 5 = 90 s
    assert budget.fit_epochs(14.9, 10.0, 5.0, 1, 1.0) == 0  # one epoch has no low-resolution half
    # A dearer last evaluation (flip-grid's fifty views): 8 epochs, 2 evaluations (3, 6) and the last: 80 + 10 + 20.
    assert budget.fit_epochs(110.0, 10.0, 5.0, 3, None, 20.0) == 8
    assert budget.fit_epochs(109.9, 10.0, 5.0, 3, None, 20.0) == 7  # 70 + 10 + 20 = 100 s
    assert budget.fit_epochs(29.9, 10.0, 5.0, 3, None, 20.0) == 0  # one epoch and its last evaluation: 30 s


def _budget_args(image_folder: Path, out: Path, *extra: str) -> list[str]:
    """The tiny run without its --epochs (the budget chooses them)."""
    args = tf.train_args(image_folder, out, "--no-progress", *extra)
    at = args.index("--epochs")
    return args[:at] + args[at + 2 :]


def _config(args: list[str], base: Any = None) -> TrainConfig:
    return cli_train.config_from_args(cli.build_parser().parse_args(args), base)


def test_time_budget_fits_the_schedule_and_resume_keeps_it(
    image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--time-budget: a timed probe picks E epochs; the run is then the plain run of --epochs E (the probe
    leaves the model, optimizer and draws alone; the cosine ends at min_lr), and --resume, stopped mid-run,
    continues it from the recorded fit without timing again."""
    out = tmp_path / "budget"
    trainer = trainer_mod.Trainer(_config(_budget_args(image_folder, out, "--time-budget", "0.1")), out)
    stop_at = budget.PROBE_STEPS + budget.PROBE_LOW_RES_STEPS + tf.STEPS_PER_EPOCH + 3
    steps = _count_steps(monkeypatch, trainer, stop_at=stop_at)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    probe = budget.PROBE_STEPS + budget.PROBE_LOW_RES_STEPS  # full size, then the first half's 12x12
    assert steps[0] == probe + tf.STEPS_PER_EPOCH + 4  # the probe's steps, epoch 1, 4 of epoch 2
    saved = json.loads((out / "config.json").read_text())
    fit = saved["budget_fit"]
    assert saved["time_budget"] == 0.1 and saved["epochs"] == fit["epochs"] >= 2
    epoch_seconds = tf.STEPS_PER_EPOCH * fit["step_seconds"] + fit["write_seconds"]
    low_epoch_seconds = tf.STEPS_PER_EPOCH * fit["low_res_step_seconds"] + fit["write_seconds"]
    available = 0.1 * 60 * (1 - budget.BUDGET_MARGIN) - fit["start_seconds"]
    # The last evaluation is the fifty views of --tta flip-grid, timed apart (the others score the flip).
    expected = budget.fit_epochs(
        available, epoch_seconds, fit["eval_seconds"], 1, low_epoch_seconds, fit["last_eval_seconds"]
    )
    assert fit["epochs"] == expected
    assert load_checkpoint(out / "last.npz")["schedule"]["total_steps"] == fit["epochs"] * tf.STEPS_PER_EPOCH

    def no_second_probe(self: Any) -> None:
        raise AssertionError("--resume timed the run again")

    monkeypatch.setattr(trainer_mod.Trainer, "_fit_budget", no_second_probe)
    monkeypatch.setattr(trainer_mod, "train_step", train_step)
    resume = cli.build_parser().parse_args(["train", "--resume", "--output", str(out), "--no-progress"])
    resumed = trainer_mod.Trainer(cli_train.config_from_args(resume, cli_train.saved_config(out)), out, resume=True)
    resumed.fit()
    assert json.loads((out / "config.json").read_text()) == saved

    plain = tmp_path / "plain"
    trainer_mod.Trainer(_config(tf.train_args(image_folder, plain, "--no-progress", epochs=fit["epochs"])), plain).fit()
    _assert_same_run(out / "last.npz", plain / "last.npz")
    _assert_same_run(out / "best.npz", plain / "best.npz")
    last = load_checkpoint(out / "last.npz")
    assert len(last["history"]) == fit["epochs"]
    assert last["history"][-1]["lr"] == pytest.approx(TrainConfig().min_lr)


def test_time_budget_too_short(image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A budget that cannot hold one epoch stops after the probe, says why, and writes nothing."""
    out = tmp_path / "run"
    code, stdout, stderr = _main(capsys, _budget_args(image_folder, out, "--time-budget", "0.0001"))
    assert code == 1 and stdout == "", stderr
    assert stderr.startswith("pvt-np train: error: --time-budget 0.0001 minutes holds 0 epochs here, fewer than one: ")
    assert "Give a longer --time-budget (nothing was written)." in stderr
    assert not out.exists()


def _tiny_args_without_mlp(image_folder: Path, out: Path, *extra: str) -> list[str]:
    """train_args with the tiny model's overrides but not its mlp_ratios (and one epoch)."""
    args = tf.train_args(image_folder, out, "--no-progress", *extra, epochs=1)
    i = args.index(f"mlp_ratios={tf.TINY_MODEL[-1].split('=')[1]}")
    return args[: i - 1] + args[i + 1 :]


def test_a_cifar_run_trains_mlp_ratio_4_and_records_it(
    image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CIFAR config of a run adds mlp_ratios (4, 4, 4, 4) to its model_overrides when it starts (config.json
    and the checkpoint's model record say so); a typed mlp_ratios wins, and --cifar-stem no keeps
    the variant's own (8, 8, 4, 4). A run started before (none recorded) resumes with the variant's own."""
    assert trainer_mod.CIFAR_TRAIN_OVERRIDES == {"mlp_ratios": (4, 4, 4, 4)}
    parser = cli.build_parser()

    def built(*extra: str, out: Path = tmp_path / "probe") -> trainer_mod.Trainer:
        trainer = trainer_mod.Trainer(
            cli_train.config_from_args(parser.parse_args(_tiny_args_without_mlp(image_folder, out, *extra))), out
        )
        trainer._setup()
        return trainer

    t = built()
    assert t.config.cifar_stem and t.config.model_overrides["mlp_ratios"] == (4, 4, 4, 4)
    assert t.model.mlp_ratios == (4, 4, 4, 4) and t.model.patch_embed.proj.weight.shape[-1] == 3  # CIFAR stem
    assert t.model.mlp_ratios == built("--cifar-stem", "yes").model.mlp_ratios
    assert built("--override", "mlp_ratios=2,3,2,3").model.mlp_ratios == (2, 3, 2, 3)
    t = built("--cifar-stem", "no", "--override", "sr_ratios=1,1,1,1")  # the ImageNet stem: a 4x4 map at 16 px
    assert "mlp_ratios" not in t.config.model_overrides and t.model.mlp_ratios == (8, 8, 4, 4)

    out = tmp_path / "run"
    code, _, stderr = _main(capsys, _tiny_args_without_mlp(image_folder, out))
    assert code == 0, stderr
    assert json.loads((out / "config.json").read_text())["model_overrides"]["mlp_ratios"] == [4, 4, 4, 4]
    assert load_model(out / "last.npz").mlp_ratios == (4, 4, 4, 4)

    monkeypatch.setattr(trainer_mod, "CIFAR_TRAIN_OVERRIDES", {})  # the code before the CIFAR config had it
    old = tmp_path / "old"
    code, _, stderr = _main(capsys, _tiny_args_without_mlp(image_folder, old, "--epochs", "2"))
    assert code == 0, stderr
    monkeypatch.undo()
    assert "mlp_ratios" not in cli_train.saved_config(old).model_overrides
    resumed = trainer_mod.Trainer(cli_train.saved_config(old), old, resume=True)
    resumed._setup()  # restores last.npz: a model of other shapes would not load
    assert resumed.model.mlp_ratios == (8, 8, 4, 4) and "mlp_ratios" not in resumed.config.model_overrides
