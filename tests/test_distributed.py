"""Data-parallel training (pvt_np.distributed): N MPI ranks compute the 1-process run.

The runs use the tiny image folder and model of tests/training_fixtures.py in float64, with
every source of randomness switched on (crops, flips, TrivialAugment, mixup and cutmix, dropout,
drop-path), an EMA of the weights and gradient clipping, so that any rank-dependent draw or a
wrong gradient scale shows.
Runs under ``mpiexec`` go through tests/distributed_fixtures.py (mpi4py and MPICH come
with the test extra); each has a timeout, so a hang fails the test instead of the suite.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from distributed_fixtures import MPIEXEC, run_ranks
from training_fixtures import REPO, child_env, train_args, write_image_folder

from pvt_np import backend, distributed
from pvt_np.data import Augment, BatchLoader
from pvt_np.training import load_checkpoint

pytest.importorskip("mpi4py")
if not MPIEXEC.exists():
    pytest.skip(f"no mpiexec beside {sys.executable} (pip install mpich)", allow_module_level=True)

# The default process count, taken before conftest's autouse patch replaces it for in-process runs.
AUTO_NPROCS = distributed.auto_nprocs
EPOCHS = 2
BATCH = 8  # 8 steps per epoch on the 64 training images
PARITY_TOL = 1e-10
EXTRA = ("--dtype", "float64", "--batch-size", str(BATCH), "--mixup", "0.4", "--cutmix", "1.0", "--trivial-augment",
         "--ema-decay", "0.9", "--no-progress")  # fmt: skip


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    return train_args(data, out, *EXTRA, *extra, epochs=EPOCHS)


def _ok(proc: subprocess.CompletedProcess[str], code: int = 0) -> None:
    assert proc.returncode == code, f"exit {proc.returncode}, expected {code}\n{proc.stdout}\n{proc.stderr}"


def _max_weight_diff(a: Path, b: Path, entry: str = "model") -> float:
    """The largest difference between the weights (``entry="ema"``: their moving averages) of two checkpoints."""
    wa, wb = load_checkpoint(a)[entry], load_checkpoint(b)[entry]
    assert wa.keys() == wb.keys()
    return max(float(np.max(np.abs(wa[k] - wb[k]))) for k in wa)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One image folder; the 1-process run and the 2-rank run of the same config, per-step losses recorded."""
    root = tmp_path_factory.mktemp("dp")
    data = write_image_folder(root / "data")
    out: dict[str, Any] = {"root": root, "data": data}
    for ranks in (1, 2):
        record = root / f"losses{ranks}.json"
        proc = run_ranks(ranks, ["--record", str(record)], _args(data, root / f"run{ranks}"))
        _ok(proc)
        out[ranks] = {"dir": root / f"run{ranks}", "losses": np.array(json.loads(record.read_text())), "proc": proc}
    return out


def test_two_ranks_compute_the_one_process_run(runs: dict[str, Any]) -> None:
    """Per-step losses (the global-batch mean) and final weights of 2 ranks equal 1 process's, in float64."""
    one, two = runs[1], runs[2]
    assert one["losses"].shape == two["losses"].shape == (EPOCHS * 64 // BATCH,)
    loss_diff = float(np.max(np.abs(one["losses"] - two["losses"])))
    weight_diff = _max_weight_diff(one["dir"] / "last.npz", two["dir"] / "last.npz")
    assert loss_diff <= PARITY_TOL, f"per-step losses differ by {loss_diff:.3g}"
    assert weight_diff <= PARITY_TOL, f"final weights differ by {weight_diff:.3g}"
    ema_diff = _max_weight_diff(one["dir"] / "last.npz", two["dir"] / "last.npz", "ema")
    assert ema_diff <= PARITY_TOL, f"final EMA weights differ by {ema_diff:.3g}"
    assert float(np.std(one["losses"])) > 1e-3  # the runs trained: the parity is not of constant losses
    h1, h2 = load_checkpoint(one["dir"] / "last.npz")["history"], load_checkpoint(two["dir"] / "last.npz")["history"]
    for r1, r2 in zip(h1, h2, strict=True):  # training and test figures are of the whole batch and test set
        assert r1["train_accuracy"] == r2["train_accuracy"] and r1["test_accuracy"] == r2["test_accuracy"]
        assert abs(r1["train_loss"] - r2["train_loss"]) <= PARITY_TOL
        assert abs(r1["test_loss"] - r2["test_loss"]) <= PARITY_TOL
        assert r1["ema_test_accuracy"] == r2["ema_test_accuracy"]
        assert abs(r1["ema_test_loss"] - r2["ema_test_loss"]) <= PARITY_TOL


def test_rank_zero_alone_writes_and_prints(runs: dict[str, Any]) -> None:
    """The 2-rank run directory holds what a 1-process run writes, and one 'done' line was printed."""
    one, two = runs[1], runs[2]
    assert sorted(p.name for p in two["dir"].iterdir()) == sorted(p.name for p in one["dir"].iterdir())
    assert two["proc"].stdout.count("done: test accuracy") == 1
    assert two["proc"].stdout.count("epoch 2:") == 0  # --no-progress: no rank printed epoch lines


def test_resume_with_a_different_number_of_ranks(runs: dict[str, Any]) -> None:
    """A 2-rank run stopped mid-epoch resumes in 1 process, and a 1-process run resumes on 2 ranks
    (launched by --nprocs): both end with the uninterrupted run's weights."""
    root, data, reference = runs["root"], runs["data"], runs[1]["dir"] / "last.npz"
    for first, then in ((2, 1), (1, 2)):
        out = root / f"resume{first}to{then}"
        stopped = run_ranks(first, ["--stop-at", "5"], _args(data, out))
        _ok(stopped, 130)
        progress = load_checkpoint(out / "last.npz")["progress"]
        assert (progress["epoch"], progress["batch"]) == (0, 6), progress
        resume = [*_args(data, out), "--resume"]
        if then == 1:
            _ok(run_ranks(1, [], resume))
        else:
            proc = subprocess.run([sys.executable, "-m", "pvt_np", resume[0], "--nprocs", "2", *resume[1:]],
                                  cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=120)  # fmt: skip
            _ok(proc)
        diff = _max_weight_diff(reference, out / "last.npz")
        assert diff <= PARITY_TOL, f"{first} ranks then {then}: final weights differ by {diff:.3g}"


def test_time_budget_on_two_ranks(tmp_path: Path, runs: dict[str, Any]) -> None:
    """Under --time-budget the ranks train the epochs fitted from rank 0's timings, together, to min_lr."""
    out = tmp_path / "budget"
    args = _args(runs["data"], out, "--time-budget", "0.1")
    at = args.index("--epochs")
    _ok(run_ranks(2, [], args[:at] + args[at + 2 :]))
    fit = json.loads((out / "config.json").read_text())["budget_fit"]
    last = load_checkpoint(out / "last.npz")
    assert fit["epochs"] >= 1 and len(last["history"]) == fit["epochs"] == last["progress"]["epoch"]
    assert last["schedule"]["last_step"] == last["schedule"]["total_steps"] == fit["epochs"] * 64 // BATCH
    assert last["history"][-1]["lr"] == pytest.approx(1e-5)


def test_batch_not_divisible_by_the_ranks(tmp_path: Path, runs: dict[str, Any]) -> None:
    """mpiexec -n 3 with --batch-size 8: one clear error naming both numbers, exit 2 (a bad option), nothing written."""
    out = tmp_path / "run"
    proc = run_ranks(3, [], _args(runs["data"], out))
    _ok(proc, 2)
    assert proc.stderr.count("--batch-size 8 is not divisible by the 3 ranks") == 1, proc.stderr
    assert "use a multiple of 3 (e.g. 6 or 9)" in proc.stderr
    assert not out.exists()


def test_a_bad_option_under_mpiexec_is_refused_once_with_exit_2(tmp_path: Path, runs: dict[str, Any]) -> None:
    """mpiexec -n 2 pvt-np train --lr -1: argparse's form and exit code, as in one process; nothing written."""
    out = tmp_path / "run"
    proc = run_ranks(2, [], _args(runs["data"], out, "--lr", "-1"))
    _ok(proc, 2)
    assert proc.stderr.count("pvt-np train: error: argument --lr: expected") == 1, proc.stderr
    assert not out.exists()


def test_a_rank_that_cannot_read_the_data_stops_every_rank(tmp_path: Path, runs: dict[str, Any]) -> None:
    """Rank 1's data is unreadable: both ranks stop with the same message (printed once), nothing written."""
    out = tmp_path / "run"
    proc = run_ranks(2, ["--fail-load-rank", "1"], _args(runs["data"], out))
    _ok(proc, 1)
    assert proc.stderr.count("rank 1 of 2: cannot read the data at rank 1's end (simulated)") == 1, proc.stderr
    assert "MPI_Abort" not in proc.stderr  # an agreed stop, not an abort
    assert not out.exists()


def test_a_non_finite_loss_stops_every_rank_alike(tmp_path: Path, runs: dict[str, Any]) -> None:
    """lr 1e30 blows the weights up: the all-reduced loss is NaN on both ranks, which stop together."""
    out = tmp_path / "run"
    proc = run_ranks(2, [], _args(runs["data"], out, "--lr", "1e30", "--warmup-epochs", "0"))
    _ok(proc, 1)
    assert proc.stderr.count("non-finite loss") == 1, proc.stderr  # printed by rank 0 alone
    assert re.search(r"non-finite loss \(nan\) at epoch 1, step \d/8 ", proc.stderr), proc.stderr
    assert "MPI_Abort" not in proc.stderr
    assert not (out / "last.npz").exists()


def test_a_rank_that_dies_aborts_the_run(tmp_path: Path, runs: dict[str, Any]) -> None:
    """An exception on rank 1 mid-training ends both ranks through MPI_Abort (rank 0 is in the all-reduce)."""
    out = tmp_path / "run"
    proc = run_ranks(2, ["--crash-rank", "1", "--crash-step", "3"], _args(runs["data"], out), timeout=60)
    assert proc.returncode != 0
    assert "ZeroDivisionError: rank 1 failed at step 3 (simulated)" in proc.stderr
    assert "MPI_Abort" in proc.stderr
    assert not (out / "last.npz").exists()


@pytest.mark.gpu
def test_two_gpu_ranks_compute_the_one_gpu_run(tmp_path: Path, runs: dict[str, Any]) -> None:
    """NCCL: 2 ranks on 2 GPUs (local ranks 0 and 1) equal one process on one GPU, in float64."""
    cp = pytest.importorskip("cupy")
    if cp.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs 2 GPUs")
    result = {}
    for ranks in (1, 2):
        record = tmp_path / f"losses{ranks}.json"
        _ok(
            run_ranks(
                ranks, ["--record", str(record)], _args(runs["data"], tmp_path / f"gpu{ranks}", "--device", "gpu")
            )
        )
        result[ranks] = np.array(json.loads(record.read_text()))
    assert float(np.max(np.abs(result[1] - result[2]))) <= PARITY_TOL
    assert _max_weight_diff(tmp_path / "gpu1" / "last.npz", tmp_path / "gpu2" / "last.npz") <= PARITY_TOL


# -- the pieces, with two ranks -------------------------------------------------------------
PIECES = r"""
import json, sys
import numpy as np
from threadpoolctl import threadpool_info
from pvt_np import distributed
from pvt_np.ops import parallel
from pvt_np.nn import Parameter

world = distributed.get_world()
r, out = world.rank, {}
rng = np.random.default_rng(r)
params = [Parameter(np.zeros(s)) for s in [(3, 5), (7,), (2, 2, 2)]] + [Parameter(np.zeros(4))]
for p in params[:3]:
    p.grad = rng.standard_normal(p.data.shape)
local = [p.grad.copy() for p in params[:3]]
reduce = distributed.GradientAllReduce(world, bucket_bytes=5 * 8)  # 5 float64 per bucket: 8 buckets
(loss,) = reduce(params, np.float64(1.5 + r))
out["grads"] = [p.grad.tolist() for p in params[:3]]
out["local"] = [g.tolist() for g in local]
out["loss"] = float(loss)
out["untouched"] = params[3].grad is None
distributed.check_replicas(world, params, "equal")
params[0].data[0, 0] = float(r)
try:
    distributed.check_replicas(world, params, "after a rank-dependent change")
except distributed.DistributedError as err:
    out["diverged"] = str(err)
try:
    world.agree(lambda: 1 / 0 if r == 1 else None)
except distributed.DistributedError as err:
    out["agreed"] = str(err)
out["any"] = [world.any(r == 1), world.any(False)]
distributed.set_threads(world, None)
out["threads"] = parallel.get_num_threads()
out["blas"] = sorted({i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"})
out["world"] = [world.rank, world.size, world.local_rank, world.local_size]
with open(f"{sys.argv[1]}/rank{r}.json", "w") as f:  # a file each: the ranks' stdout lines interleave
    json.dump(out, f)
"""


def test_allreduce_checksum_and_agreement_on_two_ranks(tmp_path: Path) -> None:
    """Bucketed all-reduce = the mean over ranks; divergent weights and a one-rank error stop both ranks alike."""
    proc = subprocess.run([str(MPIEXEC), "-n", "2", sys.executable, "-c", PIECES, str(tmp_path)], cwd=REPO,
                          env=child_env(), capture_output=True, text=True, timeout=120)  # fmt: skip
    _ok(proc)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [o["world"] for o in results] == [[0, 2, 0, 2], [1, 2, 1, 2]]
    for o in results:
        for g, a, b in zip(o["grads"], results[0]["local"], results[1]["local"], strict=True):
            np.testing.assert_array_equal(np.array(g), (np.array(a) + np.array(b)) * 0.5)
        assert o["loss"] == 2.0 and o["untouched"]
        assert "weights diverged (after a rank-dependent change)" in o["diverged"]
        assert o["diverged"] == results[0]["diverged"]
        assert o["agreed"] == "rank 1 of 2: division by zero"
        assert o["any"] == [True, False]
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        assert o["threads"] == max(1, cores // 2)
        assert o["blas"] == [1]  # NumPy's BLAS, limited through threadpoolctl: pvt_np's threads run the GEMM chunks


# -- in-process: the draws that make the parity ---------------------------------------------
@pytest.fixture
def reset_shard() -> Any:
    yield
    backend.set_batch_shard(0, 1)


@pytest.mark.parametrize(
    "mix",
    [(0.0, 0.0, False), (0.4, 0.0, False), (0.0, 1.0, False), (0.0, 1.0, True), (0.0, 0.0, True)],
    ids=["plain", "mixup", "cutmix", "cutmix-trivial", "trivial"],
)
def test_loader_shards_are_slices_of_the_whole_batch(mix: tuple[float, float, bool]) -> None:
    """For 2 and 4 shards, the shards' batches stacked are the 1-process batch bit for bit (mixed targets too)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 12, 10, 3), dtype=np.uint8)
    labels = rng.integers(0, 5, 40)
    aug = Augment(crop_padding=3, hflip=True, mixup_alpha=mix[0], cutmix_alpha=mix[1], trivial=mix[2])

    def make(shard: tuple[int, int]) -> BatchLoader:
        return BatchLoader(images, labels, 8, seed=3, drop_last=True, augment=aug, num_classes=5, shard=shard,
                           dtype=np.float64, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.25))  # fmt: skip

    whole = make((0, 1))
    for count in (2, 4):
        shards = [make((i, count)) for i in range(count)]
        for k in range(len(whole)):
            full = whole.batch(1, k)
            parts = [s.batch(1, k) for s in shards]
            np.testing.assert_array_equal(np.concatenate([p.x for p in parts]), full.x)
            np.testing.assert_array_equal(np.concatenate([p.y for p in parts]), full.y)
    with pytest.raises(ValueError, match=r"count dividing batch_size 8, got \(0, 3\)"):
        make((0, 3))


def test_dropout_and_drop_path_masks_are_slices_of_the_whole_batch(reset_shard: Any) -> None:
    """A model in training mode on half a batch, sharded, gives the rows of the whole batch's output."""
    from pvt_np import create_model

    model = create_model("pvt_v2_b0", num_classes=3, depths=(1, 1, 1, 1), embed_dims=(8, 8, 8, 8),
                         num_heads=(1, 1, 1, 1), mlp_ratios=(2, 2, 2, 2), drop_rate=0.3, attn_drop_rate=0.3,
                         drop_path_rate=0.5, dtype=np.float64, seed=1)  # fmt: skip
    x = np.random.default_rng(4).standard_normal((4, 3, 32, 32))
    backend.manual_seed(11)
    full = model(x)
    model.backward(np.ones_like(full), input_grad=False)
    for r in range(2):
        backend.set_batch_shard(r, 2)
        backend.manual_seed(11)
        part = model(x[2 * r : 2 * r + 2])
        model.backward(np.ones_like(part), input_grad=False)
        np.testing.assert_allclose(part, full[2 * r : 2 * r + 2], rtol=0, atol=1e-12)
    backend.set_batch_shard(0, 1)
    backend.manual_seed(12)
    other = model(x)
    assert np.max(np.abs(other - full)) > 1e-3  # the masks matter: another seed gives another output
    with pytest.raises(ValueError, match="expected 0 <= index < count, got index 2, count 2"):
        backend.set_batch_shard(2, 2)


def test_batch_split_errors_and_test_set_parts() -> None:
    """local_batch_size names both numbers; the test set's parts cover it once; thread shares."""
    world3 = distributed.World(rank=2, size=3, local_rank=2, local_size=3)
    with pytest.raises(distributed.DistributedError, match=r"--batch-size 128 is not divisible by the 3 ranks"):
        distributed.local_batch_size(128, world3)
    assert distributed.local_batch_size(129, world3) == 43
    with pytest.raises(distributed.DistributedError, match=r"--batch-size 2 is not .* a multiple of 3 \(e\.g\. 3\)"):
        distributed.local_batch_size(2, world3)
    from pvt_np.data import Dataset

    images = np.zeros((10, 2, 2, 3), dtype=np.uint8)
    ds = Dataset(images, np.arange(10) % 2, ("a", "b"))
    parts = [distributed.shard_dataset(ds, distributed.World(rank=r, size=3)) for r in range(3)]
    assert [len(p) for p in parts] == [3, 3, 4]
    with pytest.raises(distributed.DistributedError, match="the test set has 10 images, fewer than the 11 ranks"):
        distributed.shard_dataset(ds, distributed.World(rank=0, size=11))
    assert distributed.default_threads(world3, 5) == 5
    assert distributed.default_threads(distributed.World(), None) >= 1


def test_missing_mpi4py_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Started by mpiexec without mpi4py: an error saying what to install; without a launcher, one process."""
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py now raises ImportError
    monkeypatch.setattr(distributed, "_WORLD", None)
    for name in distributed.LAUNCHER_SIZE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert distributed.get_world() == distributed.World()  # no launcher: mpi4py is not even imported
    monkeypatch.setattr(distributed, "_WORLD", None)
    monkeypatch.setenv("PMI_SIZE", "2")
    with pytest.raises(distributed.DistributedError, match=r"MPI launcher with 2 processes, but mpi4py cannot be "):
        distributed.get_world()
    from pvt_np import cli

    data = write_image_folder(tmp_path / "data")
    assert cli.main(train_args(data, tmp_path / "run")) == 1
    assert "pvt-np train: error: started by an MPI launcher with 2 processes" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    monkeypatch.delenv("PMI_SIZE")
    with pytest.raises(distributed.DistributedError, match=r"--nprocs 2: mpi4py cannot be imported"):
        distributed.launch_command(2, ["train", "--nprocs", "2"])
    assert AUTO_NPROCS("cpu", None, 128) == 1  # the default falls back to one process, silently


def test_launch_command_drops_nprocs(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in distributed.LAUNCHER_SIZE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for argv in (["train", "--nprocs", "3", "--epochs", "1"], ["train", "--nprocs=3", "--epochs", "1"],
                 ["train", "--epochs", "1"]):  # fmt: skip
        command = distributed.launch_command(3, argv)
        assert command[1:] == ["-n", "3", sys.executable, "-m", "pvt_np", "train", "--epochs", "1"]
    with pytest.raises(distributed.DistributedError, match="expected a positive number of processes, got 0"):
        distributed.launch_command(0, ["train", "--nprocs", "0"])
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    with pytest.raises(distributed.DistributedError, match="already started by mpiexec"):
        distributed.launch_command(2, ["train", "--nprocs", "2"])


def test_default_is_one_rank_per_core_when_mpi_is_there(monkeypatch: pytest.MonkeyPatch) -> None:
    """auto_nprocs: one single-threaded rank per core on the CPU, else one process, whatever is missing."""
    from pvt_np.ops import parallel

    for name in distributed.LAUNCHER_SIZE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    cases = ((2, 128, 2), (3, 128, 2), (6, 128, 4), (64, 128, parallel.MAX_THREADS), (4, 3, 3), (2, 5, 1), (1, 128, 1))
    for cores, batch, expected in cases:
        monkeypatch.setattr(parallel, "available_cores", lambda cores=cores: cores)
        assert AUTO_NPROCS("cpu", None, batch) == expected, (cores, batch)
    monkeypatch.setattr(parallel, "available_cores", lambda: 2)
    assert AUTO_NPROCS("gpu", None, 128) == 1  # one process per GPU is the user's choice (--nprocs)
    assert AUTO_NPROCS("cpu", 2, 128) == 1  # --threads typed: the user chose one process's threads
    monkeypatch.setattr(distributed, "_find_mpiexec", lambda: None)
    assert AUTO_NPROCS("cpu", None, 128) == 1
    monkeypatch.undo()
    monkeypatch.setenv("PMI_SIZE", "1")  # under mpiexec -n 1: train here, never launch again
    assert AUTO_NPROCS("cpu", None, 128) == 1


def test_train_launches_the_default_ranks_after_checking_the_options(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """pvt-np train with no --nprocs checks its options in one process (exit 2, nothing launched), then
    starts auto_nprocs ranks with the command line as typed; --nprocs 1 trains in this process."""
    from pvt_np import cli

    for name in distributed.LAUNCHER_SIZE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    launched: list[tuple[int, list[str]]] = []
    monkeypatch.setattr(distributed, "launch", lambda n, argv, started, **kw: launched.append((n, list(argv))) or 0)
    monkeypatch.setattr(distributed, "auto_nprocs", lambda device, threads, batch: 2 if threads is None else 1)
    monkeypatch.setattr(sys, "argv", ["pvt-np", "train", "--lr", "-1"])
    assert cli.main(["train", "--lr", "-1", "--output", str(tmp_path / "bad")]) == 2
    assert "argument --lr: expected" in capsys.readouterr().err
    assert launched == [] and not (tmp_path / "bad").exists()
    data = write_image_folder(tmp_path / "data")
    argv = train_args(data, tmp_path / "run", epochs=1)
    del argv[argv.index("--threads") : argv.index("--threads") + 2]
    monkeypatch.setattr(sys, "argv", ["pvt-np", *argv])
    assert cli.main(argv) == 0
    assert launched == [(2, argv)] and not (tmp_path / "run").exists()
    one = [*argv, "--nprocs", "1", "--no-progress"]
    monkeypatch.setattr(sys, "argv", ["pvt-np", *one])
    assert cli.main(one) == 0
    assert len(launched) == 1 and (tmp_path / "run" / "last.npz").exists()


def test_ranks_count_the_budget_from_the_launching_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """command_started: the launcher's start for a rank it started; now for anything else."""
    import time

    for name in distributed.LAUNCHER_SIZE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(distributed.STARTED_AT_VARIABLE, repr(time.time() - 5.0))
    assert abs(time.monotonic() - distributed.command_started()) < 0.5  # no launcher: the variable is ignored
    monkeypatch.setenv("PMI_SIZE", "2")
    assert 4.5 < time.monotonic() - distributed.command_started() < 6.0
    for odd in ("soon", repr(time.time() + 60.0)):  # unreadable, or in the future: now
        monkeypatch.setenv(distributed.STARTED_AT_VARIABLE, odd)
        assert abs(time.monotonic() - distributed.command_started()) < 0.5


def test_download_is_fetched_once_by_rank_0(tmp_path: Path) -> None:
    """--download on 2 ranks: rank 0 fetches the archive, the other rank then reads it; the run trains
    (and its start line names the ranks)."""
    from test_data import cifar10_members, write_tar

    served = write_tar(tmp_path / "served.tar.gz", cifar10_members())
    data, out = tmp_path / "data", tmp_path / "run"
    args = train_args(data, out, "--dataset", "cifar10", "--download", "--batch-size", "8", epochs=1)
    proc = run_ranks(2, ["--serve-cifar", str(served)], args)
    _ok(proc)
    assert "| cpu float32, 2 processes (MPI) x 1 thread |" in proc.stdout  # the start line says how it runs
    assert Path(f"{served}.fetches").read_text().split() == ["0"]
    assert (data / "cifar-10-python.tar.gz").read_bytes() == served.read_bytes()
    assert (out / "last.npz").exists()


def _processes_naming(text: str) -> dict[int, str]:
    """The running processes whose command line contains ``text``: pid -> command line (Linux's /proc)."""
    found = {}
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # the process ended while we looked
            continue
        if text in args:
            found[int(cmdline.parent.name)] = args
    return found


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads the process table from /proc")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_a_signal_to_the_launcher_alone_reaches_the_ranks(sig: signal.Signals, tmp_path: Path) -> None:
    """pvt-np train --nprocs 2, signalled once it has saved its first epoch: SIGINT sent to the launching
    process alone (kill -INT, a notebook's interrupt) stops the ranks after a step with a checkpoint and exit
    130, as a Ctrl-C at the terminal does; SIGTERM and SIGHUP (a closed terminal) end them, exit 143 and 129.
    Either way no rank trains on after the launcher has returned. (The run would take minutes if the signal were
    lost.)"""
    import time

    data, out = write_image_folder(tmp_path / "data"), tmp_path / "run"
    args = train_args(data, out, "--nprocs", "2", "--no-progress", epochs=500)
    with subprocess.Popen(
        [sys.executable, "-m", "pvt_np", *args], cwd=REPO, env=child_env(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    ) as launcher:  # fmt: skip
        deadline = time.monotonic() + 60
        while not (out / "last.npz").exists() and launcher.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        try:
            assert launcher.poll() is None and (out / "last.npz").exists(), "no first epoch saved within 60 s"
            launcher.send_signal(sig)
            _, stderr = launcher.communicate(timeout=60)
        except (AssertionError, subprocess.TimeoutExpired) as err:
            for pid in [launcher.pid, *_processes_naming(str(out))]:  # mpiexec may be in a session of its own
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if isinstance(err, AssertionError):
                raise
            raise AssertionError(f"{sig.name}: the run went on after the launcher was signalled") from None
    assert _processes_naming(str(out)) == {}
    if sig == signal.SIGINT:
        assert launcher.returncode == 130, stderr
        assert "pvt-np train: interrupted at " in stderr and "(continue with --resume)" in stderr, stderr
        assert load_checkpoint(out / "last.npz")["progress"]["epoch"] < 500
    else:  # as one process exits: 128 + the signal's number (docs/faults.md)
        assert launcher.returncode == {signal.SIGTERM: 143, signal.SIGHUP: 129}[sig], stderr


class _FakeMpiexec:
    """Stands for the mpiexec Popen in launch(): records its arguments and the signals sent to it; ``signals``
    are raised in this process, one before launch() has the process (as from __init__) and the rest in wait()."""

    made: ClassVar[list[_FakeMpiexec]] = []

    def __init__(self, command: list[str], **kwargs: Any) -> None:
        self.kwargs, self.sent = kwargs, []
        _FakeMpiexec.made.append(self)
        if threading.current_thread() is threading.main_thread():
            os.kill(os.getpid(), signal.SIGINT)  # before launch() has attached the process: held, then sent

    def __enter__(self) -> _FakeMpiexec:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def send_signal(self, sig: int) -> None:
        self.sent.append(sig)

    def wait(self) -> int:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                os.kill(os.getpid(), sig)
        return 130


def test_launch_forwards_the_signals_it_gets_to_mpiexec(monkeypatch: pytest.MonkeyPatch) -> None:
    """On the main thread: mpiexec in a session of its own, no terminal input; SIGINT forwarded as SIGINT (also
    one that came before the process was attached), SIGTERM and SIGHUP as SIGTERM; the handlers before are put
    back. Off the main thread no handler can be set: mpiexec then stays in the terminal's process group."""
    monkeypatch.setattr(distributed, "launch_command", lambda nprocs, argv: ["mpiexec", "-n", str(nprocs)])
    monkeypatch.setattr(distributed.subprocess, "Popen", _FakeMpiexec)
    _FakeMpiexec.made.clear()
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    assert distributed.launch(2, ["train"]) == 130
    (main,) = _FakeMpiexec.made
    assert main.kwargs["start_new_session"] is True and main.kwargs["stdin"] == subprocess.DEVNULL
    assert main.sent == [signal.SIGINT, signal.SIGINT, signal.SIGTERM, signal.SIGTERM]
    assert {s: signal.getsignal(s) for s in before} == before
    codes: list[int] = []
    worker = threading.Thread(target=lambda: codes.append(distributed.launch(2, ["train"])))
    worker.start()
    worker.join()
    assert codes == [130] and _FakeMpiexec.made[1].kwargs["start_new_session"] is False
    assert {s: signal.getsignal(s) for s in before} == before
