"""Helpers for tests/test_distributed.py: ``pvt-np`` under ``mpiexec``, with hooks that a test can switch on.

Run as a script (directly or as every rank of ``mpiexec -n N``), this module is
``pvt-np`` with optional hooks placed before the ``--``::

    python tests/distributed_fixtures.py [--record FILE] [--stop-at STEP] [--fail-load-rank R]
                                         [--crash-rank R --crash-step STEP] -- train ...

--record FILE        rank 0 writes the loss of every training step (as train_step returned it,
                     the mean over the global batch; either task's) to FILE, one JSON list
--stop-at STEP       every rank sends itself SIGINT during training step STEP (counted from 0
                     in this process): the run stops as after a Ctrl-C, saving a checkpoint
--fail-load-rank R   rank R cannot read the data (its load_dataset raises a DataError)
--crash-rank R       rank R raises an uncaught exception during training step --crash-step
--serve-cifar FILE   FILE stands for the official CIFAR-10 archive: its md5 is registered and every
                     download (urllib.request.urlopen) reads it, each rank appending its number to
                     FILE.fetches
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training_fixtures import REPO, SUBPROCESS_TIMEOUT, child_env

MPIEXEC = Path(sys.executable).with_name("mpiexec")


def run_ranks(ranks: int, hooks: Sequence[str], args: Sequence[str], timeout: float = SUBPROCESS_TIMEOUT) -> Any:
    """This script as ``ranks`` processes (through mpiexec when ranks > 1); the finished process."""
    script = [sys.executable, str(Path(__file__).resolve()), *hooks, "--", *args]
    launcher = [str(MPIEXEC), "-n", str(ranks)] if ranks > 1 else []
    return subprocess.run(
        launcher + script, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=timeout, check=False
    )


def _serve_cifar(archive: Path, rank: int) -> None:
    import dataclasses
    import io
    import urllib.request

    from pvt_np.data import cifar
    from pvt_np.data.download import file_md5

    cifar.CIFAR_SPECS["cifar10"] = dataclasses.replace(cifar.CIFAR_SPECS["cifar10"], md5=file_md5(archive))
    payload = archive.read_bytes()

    def urlopen(url: str, timeout: float = 0.0) -> io.BytesIO:
        with open(f"{archive}.fetches", "a") as log:
            log.write(f"{rank}\n")
        response = io.BytesIO(payload)
        response.headers = {"Content-Length": str(len(payload))}  # type: ignore[attr-defined]
        return response

    urllib.request.urlopen = urlopen


def _main(argv: list[str]) -> int:
    split = argv.index("--")
    parser = argparse.ArgumentParser()
    parser.add_argument("--record", type=Path)
    parser.add_argument("--stop-at", type=int)
    parser.add_argument("--fail-load-rank", type=int)
    parser.add_argument("--crash-rank", type=int)
    parser.add_argument("--crash-step", type=int, default=0)
    parser.add_argument("--serve-cifar", type=Path)
    hooks = parser.parse_args(argv[:split])

    from pvt_np import cli, data, distributed
    from pvt_np.training import datasets, segmentation, trainer

    world = distributed.get_world()
    if hooks.serve_cifar is not None:
        _serve_cifar(hooks.serve_cifar, world.rank)
    if hooks.fail_load_rank == world.rank:

        def unreadable(*args: Any, **kwargs: Any) -> Any:
            raise data.DataError(f"cannot read the data at rank {world.rank}'s end (simulated)")

        datasets.load_dataset = unreadable  # where the run's data set-up finds it

    real_step = trainer.train_step
    real_segmentation_step = segmentation.SegmentationTrainer.train_step
    losses: list[float] = []

    def before_step() -> None:
        step = len(losses)
        if hooks.stop_at == step:
            os.kill(os.getpid(), signal.SIGINT)
        if hooks.crash_rank == world.rank and hooks.crash_step == step:
            raise ZeroDivisionError(f"rank {world.rank} failed at step {step} (simulated)")

    def hooked_step(*args: Any, **kwargs: Any) -> Any:
        before_step()
        loss, logits = real_step(*args, **kwargs)
        losses.append(float(loss))
        return loss, logits

    def hooked_segmentation_step(self: Any, x: Any, y: Any) -> float:
        before_step()
        loss = real_segmentation_step(self, x, y)
        losses.append(loss)
        return loss

    trainer.train_step = hooked_step
    segmentation.SegmentationTrainer.train_step = hooked_segmentation_step
    try:
        return cli.main(argv[split + 1 :])
    finally:
        if hooks.record is not None and world.is_root:
            hooks.record.write_text(json.dumps(losses))


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
