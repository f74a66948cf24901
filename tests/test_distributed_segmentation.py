"""Data-parallel segmentation (``pvt-np train --task segmentation`` under MPI): N ranks compute the 1-process run.

Tiny generated scenes (16 training scenes of 32 px, 5 test scenes: parts of 2 and 3) and a tiny pvt_v2_b0 in float64,
with the crops (whose padding the masks ignore, so the ranks' slices count different numbers of pixels), flips and
drop-path on. Runs under ``mpiexec`` go through tests/distributed_fixtures.py, as tests/test_distributed.py's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from distributed_fixtures import MPIEXEC, run_ranks
from training_fixtures import REPO, child_env

from pvt_np.training import load_checkpoint

pytest.importorskip("mpi4py")
if not MPIEXEC.exists():
    pytest.skip(f"no mpiexec beside {sys.executable} (pip install mpich)", allow_module_level=True)

EPOCHS = 2
BATCH = 8  # 2 steps per epoch on the 16 training scenes
PARITY_TOL = 1e-12
TINY = ["depths=1,1,1,1", "embed_dims=8,16,24,32", "num_heads=1,1,1,1"]


def _args(out: Path, *extra: str) -> list[str]:
    args = ["train", "--task", "segmentation", "--dataset", "scenes", "--image-size", "32", "--train-subset", "16"]
    args += ["--test-subset", "5", "--epochs", str(EPOCHS), "--batch-size", str(BATCH), "--lr", "0.003"]
    args += ["--warmup-epochs", "0.5", "--drop-path-rate", "0.2", "--dtype", "float64", "--seed", "3"]
    for override in TINY:
        args += ["--override", override]
    return [*args, "--threads", "1", "--no-progress", "--output", str(out), *extra]


def _ok(proc: subprocess.CompletedProcess[str], code: int = 0) -> None:
    assert proc.returncode == code, f"exit {proc.returncode}, expected {code}\n{proc.stdout}\n{proc.stderr}"


def _max_weight_diff(a: Path, b: Path) -> float:
    wa, wb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    assert wa.keys() == wb.keys()
    return max(float(np.max(np.abs(wa[k] - wb[k]))) for k in wa)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The 1-process run and the 2-rank run of the same config, per-step losses recorded."""
    root = tmp_path_factory.mktemp("dpseg")
    out: dict[str, Any] = {"root": root}
    for ranks in (1, 2):
        record = root / f"losses{ranks}.json"
        proc = run_ranks(ranks, ["--record", str(record)], _args(root / f"run{ranks}"))
        _ok(proc)
        out[ranks] = {"dir": root / f"run{ranks}", "losses": np.array(json.loads(record.read_text())), "proc": proc}
    return out


def test_two_ranks_compute_the_one_process_run(runs: dict[str, Any]) -> None:
    """Per-step losses (the global batch's mean over its counted pixels), final weights and every epoch's figures
    of 2 ranks equal 1 process's, in float64; the test figures are of the whole test set."""
    one, two = runs[1], runs[2]
    assert one["losses"].shape == two["losses"].shape == (EPOCHS * 16 // BATCH,)
    loss_diff = float(np.max(np.abs(one["losses"] - two["losses"])))
    weight_diff = _max_weight_diff(one["dir"] / "last.npz", two["dir"] / "last.npz")
    assert loss_diff <= PARITY_TOL, f"per-step losses differ by {loss_diff:.3g}"
    assert weight_diff <= PARITY_TOL, f"final weights differ by {weight_diff:.3g}"
    assert float(np.std(one["losses"])) > 1e-3  # the runs trained: the parity is not of constant losses
    h1, h2 = load_checkpoint(one["dir"] / "last.npz")["history"], load_checkpoint(two["dir"] / "last.npz")["history"]
    assert len(h1) == len(h2) == EPOCHS
    for r1, r2 in zip(h1, h2, strict=True):
        assert abs(r1["train_loss"] - r2["train_loss"]) <= PARITY_TOL
        scores = [k for k in r1 if k.startswith("test_")]
        assert "test_iou_small" in scores and {k: r1[k] for k in scores} == {k: r2[k] for k in scores}


def test_rank_zero_alone_writes_and_prints(runs: dict[str, Any]) -> None:
    one, two = runs[1], runs[2]
    assert sorted(p.name for p in two["dir"].iterdir()) == sorted(p.name for p in one["dir"].iterdir())
    assert two["proc"].stdout.count("done: test mIoU") == 1


def test_a_run_stopped_on_two_ranks_resumes_on_two_ranks_launched_by_nprocs(runs: dict[str, Any]) -> None:
    """Ctrl-C at step 2 on both ranks: rank 0 saves epoch 2, batch 1 (exit 130); ``pvt-np train --resume --nprocs
    2`` (the launcher, its run lock, mpiexec) finishes it with the uninterrupted run's weights."""
    out = runs["root"] / "resume"
    _ok(run_ranks(2, ["--stop-at", "2"], _args(out)), 130)
    progress = load_checkpoint(out / "last.npz")["progress"]
    assert (progress["epoch"], progress["batch"]) == (1, 1), progress
    command = [sys.executable, "-m", "pvt_np", "train", "--resume", "--nprocs", "2", "--output", str(out)]
    _ok(subprocess.run(command, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=120))
    diff = _max_weight_diff(runs[1]["dir"] / "last.npz", out / "last.npz")
    assert diff <= PARITY_TOL, f"final weights differ by {diff:.3g}"


def test_batch_not_divisible_by_the_ranks(tmp_path: Path) -> None:
    """mpiexec -n 3 with --batch-size 8: one clear error naming both numbers, exit 2, nothing written."""
    out = tmp_path / "run"
    proc = run_ranks(3, [], _args(out))
    _ok(proc, 2)
    assert proc.stderr.count("--batch-size 8 is not divisible by the 3 ranks") == 1, proc.stderr
    assert not out.exists()
