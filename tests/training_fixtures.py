"""Fixtures for tests/test_training.py: a tiny image-folder dataset, CLI runs, a pausing child process.

Everything is small and built under a temporary folder: 16x16 PNGs in four
classes (each class a different dominant colour plus noise, so a tiny model
learns something within a few epochs), and the arguments of a ``pvt-np train``
run of a model small enough to train an epoch in well under a second.

Run as a script, this module is ``pvt-np`` with one addition: it pauses before
a chosen training step (counting ``train_step`` calls from 0), or before a chosen
test-set evaluation (``evaluate:K``, counting the trainer's ``evaluate`` calls from 0),
writes a marker file and waits there until a release file appears. The parent test
signals the child while it waits, so the signal lands at a known step of a known
epoch whatever the machine's speed::

    python tests/training_fixtures.py STEP MARKER RELEASE -- train --data-path ... --output ...
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
NUM_CLASSES = 4
IMAGE_SIZE = 16
N_TRAIN, N_TEST = 64, 32
BATCH_SIZE = 4
STEPS_PER_EPOCH = N_TRAIN // BATCH_SIZE
TINY_MODEL = ("depths=1,1,1,1", "embed_dims=8,16,16,16", "num_heads=1,1,1,1", "mlp_ratios=2,2,2,2")
SUBPROCESS_TIMEOUT = 120  # seconds; a child that hangs fails the test instead of the suite


def write_image_folder(root: Path, seed: int = 0) -> Path:
    """``root/{train,test}/class_k/NNN.png``: N_TRAIN / N_TEST random RGB images, classes interleaved."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        for i in range(n):
            k = i % NUM_CLASSES
            colour = np.full(3, 60.0)
            colour[k % 3] = 200.0 if k < 3 else 130.0
            image = colour + rng.normal(0.0, 45.0, (IMAGE_SIZE, IMAGE_SIZE, 3))
            path = root / split / f"class_{k}" / f"{i:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path)
    return root


def train_args(data: Path, output: Path, *extra: str, epochs: int = 3) -> list[str]:
    """``pvt-np train`` arguments for the tiny model on the image folder at ``data``."""
    args = ["train", "--dataset", "imagefolder", "--data-path", str(data), "--output", str(output)]
    for override in TINY_MODEL:
        args += ["--override", override]
    args += ["--epochs", str(epochs), "--batch-size", str(BATCH_SIZE), "--threads", "1", "--seed", "7"]
    args += ["--drop-rate", "0.1", "--drop-path-rate", "0.2", "--warmup-epochs", "0.5", "--clip-grad", "1.0"]
    args += ["--eval-every", "1"]  # every epoch's test figures (the CIFAR default scores every fifth)
    return args + list(extra)


def child_env() -> dict[str, str]:
    """The test's environment with one BLAS thread and the repository importable.

    (Tests point XDG_CACHE_HOME at a temporary folder: children inherit it, so their decoded-image
    caches stay out of the user's ~/.cache.)
    """
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def run_pvt_np(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """``python -m pvt_np ARGS`` to completion; returns the finished process (output captured)."""
    return subprocess.run(
        [sys.executable, "-m", "pvt_np", *args],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )


def run_signalled(args: Sequence[str], step: int | str, sig: int, workdir: Path) -> tuple[int, str]:
    """Start ``pvt-np ARGS`` paused before training step ``step`` (or 'evaluate:K'); send ``sig`` there.

    Returns (exit code, the child's output).

    The child waits at the step until the release file exists; it is created right after the
    signal is sent (a SIGKILLed child never sees it; after SIGINT the child finishes the step).
    """
    marker, release = workdir / "paused", workdir / "release"
    for f in (marker, release):
        f.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), str(step), str(marker), str(release), "--", *args]
    with open(workdir / "child.log", "w+") as log:
        child = subprocess.Popen(cmd, cwd=REPO, env=child_env(), stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + SUBPROCESS_TIMEOUT
            while not marker.exists():
                if child.poll() is not None:
                    log.seek(0)
                    raise AssertionError(f"child exited ({child.returncode}) before step {step}:\n{log.read()}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"child did not reach step {step} in {SUBPROCESS_TIMEOUT} s")
                time.sleep(0.01)
            child.send_signal(sig)
            release.touch()
            code = child.wait(timeout=SUBPROCESS_TIMEOUT)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        log.seek(0)
        return code, log.read()


def checkpoint(path: Path) -> dict[str, Any]:
    from pvt_np.training import load_checkpoint

    return load_checkpoint(path)


def _paused_main(argv: list[str]) -> int:
    target, _, index = argv[0].rpartition(":")
    step, marker, release = int(index), Path(argv[1]), Path(argv[2])
    if argv[3] != "--" or target not in ("", "evaluate"):
        raise SystemExit("usage: training_fixtures.py STEP|evaluate:K MARKER RELEASE -- PVT_NP_ARGS...")
    from pvt_np import cli
    from pvt_np.training import trainer

    name = target or "train_step"
    real_step = getattr(trainer, name)
    calls = 0

    def pausing_step(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        if calls == step:
            marker.write_text(str(step))
            deadline = time.monotonic() + SUBPROCESS_TIMEOUT
            while not release.exists():  # a signal handler runs here; SIGKILL ends the process here
                if time.monotonic() > deadline:
                    raise SystemExit(f"training_fixtures: nobody released step {step}")
                time.sleep(0.005)
        calls += 1
        return real_step(*args, **kwargs)

    setattr(trainer, name, pausing_step)
    return cli.main(argv[4:])


if __name__ == "__main__":
    sys.exit(_paused_main(sys.argv[1:]))
