"""Data-parallel training: MPI (mpi4py) between processes, NCCL (``cupy.cuda.nccl``) between GPUs.

The scheme is Horovod's and llm.c's. Every rank holds the whole model and the
whole dataset, takes its own equal slice of every global batch (the same sample
order on every rank), runs forward and backward on it, and then one all-reduce
of a single flat buffer holding every gradient (plus the step's loss) makes every
rank hold the average. Every rank then takes the same optimizer step from the
same weights, so the weights stay identical without ever being sent; a checksum
of their bits, compared every few hundred steps, proves it.

The average of the per-slice gradients is the gradient of the global batch's mean
loss (the chain rule over a split batch: with equal slices, d mean_B / dw =
1/N sum_r d mean_{B_r} / dw), and PVT has no batch statistics (LayerNorm, not
BatchNorm), so an N-rank run computes the 1-process run to rounding.

A run started without an MPI launcher, or with one process, gets the
single-process :class:`World`: every collective is then the identity and mpi4py
is never imported.

Here: the world and its collectives, the replicas' check, and launching the ranks through mpiexec; the gradient
all-reduce is :mod:`pvt_np.allreduce` (re-exported here), the processes' identities and the ranks' watch on their
launcher are :mod:`pvt_np.processes`.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from pvt_np import backend
from pvt_np.allreduce import DEFAULT_BUCKET_BYTES, GradientAllReduce
from pvt_np.data import Dataset
from pvt_np.ops import parallel
from pvt_np.processes import (
    LAUNCHER_SIZE_VARIABLES,
    LAUNCHER_VARIABLE,
    _parent_death_signal,
    _SignalForwarder,
    launcher_identity,
    process_alive,
    process_start,
    under_launcher,
    watch_launcher,
)

# The launcher's and the ranks' process checks (pvt_np.processes) and the all-reduce (pvt_np.allreduce) are named
# here too, as the command and the trainer use them.
__all__ = [
    "CHECK_WEIGHTS_EVERY",
    "DEFAULT_BUCKET_BYTES",
    "LAUNCHER_SIZE_VARIABLES",
    "LAUNCHER_VARIABLE",
    "DistributedError",
    "GradientAllReduce",
    "OptionError",
    "World",
    "check_replicas",
    "default_threads",
    "fail",
    "get_world",
    "join_world",
    "launch",
    "launch_command",
    "launcher_identity",
    "local_batch_size",
    "process_alive",
    "process_start",
    "set_threads",
    "shard_bounds",
    "shard_dataset",
    "under_launcher",
    "use_local_gpu",
    "watch_launcher",
    "weights_checksum",
]

# Set by launch() for the ranks it starts: the launching command's start (time.time()), for --time-budget.
STARTED_AT_VARIABLE = "PVT_NP_STARTED_AT"
# Set by launch() for the ranks: the inherited file descriptor of the run directory's lock (pvt_np.training.runlock).
LOCK_FD_VARIABLE = "PVT_NP_RUN_LOCK_FD"
# Exit codes of pvt-np train, the same in one process and under MPI (docs/faults.md): 0 done, 1 any failure,
# 2 a bad option, 128 + the signal's number for a run stopped by SIGHUP (129), SIGINT (130) or SIGTERM (143).
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
SIGNAL_EXITS = {"SIGHUP": 129, "SIGINT": 130, "SIGTERM": 143}
# Steps between weight checksums (and at every epoch end): an integer sum over the weights (measured
# 4 ms for b0 on a busy 2-core machine, against ~0.5 s per step) and one tiny allgather.
CHECK_WEIGHTS_EVERY = 200
# Seconds an aborting rank waits after flushing, so mpiexec forwards its last message before the kill.
ABORT_GRACE_SECONDS = 0.5

T = TypeVar("T")


class DistributedError(RuntimeError):
    """Raised on every rank with the same message: the ranks agreed to stop."""


class OptionError(DistributedError):
    """An option that the ranks cannot run with (``--batch-size`` not divisible by them, ``--nprocs`` under
    mpiexec): ``pvt-np train`` exits 2 for it, as for any bad option."""


@dataclass
class World:
    """This process's place among the data-parallel ranks.

    rank, size: position in and size of the world; local_rank, local_size: the same
    among the ranks of this node (which GPU to take, how many cores to share).
    comm: the mpi4py communicator, None for the single-process world.
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    comm: Any = None

    @property
    def is_root(self) -> bool:
        """Rank 0 alone prints, logs, plots and writes checkpoints."""
        return self.rank == 0

    def allreduce_sum(self, value: Any) -> Any:
        """The sum over ranks of a host number or NumPy array (the value itself for one process)."""
        if self.size == 1:
            return value
        return self.comm.allreduce(value)

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on some rank."""
        return bool(flag) if self.size == 1 else bool(self.comm.allreduce(int(bool(flag))))

    def agree(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on every rank; if it raised on any rank, raise the same error on all of them.

        The error is a :class:`DistributedError` with the message; when every rank raised the
        same message, its ``__cause__`` is the rank's own exception.

        ``fn`` must not itself communicate (a rank that failed before a collective would leave
        the others waiting). With one process, ``fn``'s own exceptions pass through unchanged.
        """
        if self.size == 1:
            return fn()
        result, message, error = None, None, None
        try:
            result = fn()
        except Exception as err:  # gathered and re-raised on every rank below
            message, error = str(err) or type(err).__name__, err
        messages = self.comm.allgather(message)
        failed = [(r, m) for r, m in enumerate(messages) if m is not None]
        if failed:
            if all(m == failed[0][1] for _, m in failed) and len(failed) == self.size:
                # Every rank raised the same: its own error is the cause, so a caller can still tell
                # a bad option (exit 2) from a failure (exit 1).
                raise DistributedError(failed[0][1]) from error
            raise DistributedError("; ".join(f"rank {r} of {self.size}: {m}" for r, m in failed))
        return result  # type: ignore[return-value]

    def abort(self, code: int = 1) -> None:
        """End every rank now (MPI_Abort); the only safe exit when one rank failed alone.

        mpiexec kills every process as soon as one aborts, and what this rank wrote just
        before may still sit in the pipe to mpiexec's output forwarder: a traceback cut
        after its first line was seen under load. So flush, and give the forwarder a moment.
        """
        if self.size > 1:
            sys.stdout.flush()
            print(f"rank {self.rank} of {self.size}: ending every rank (MPI_Abort, exit code {code})", file=sys.stderr)
            sys.stderr.flush()
            time.sleep(ABORT_GRACE_SECONDS)
            self.comm.Abort(code)


_WORLD: World | None = None


def _launcher_size() -> int:
    for name in LAUNCHER_SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 1


def get_world() -> World:
    """The world this process was started in (created once; MPI is initialised only under a launcher).

    Started by ``mpiexec -n N`` (N > 1) without mpi4py installed, it raises a
    :class:`DistributedError` rather than letting N processes each train the whole run
    into the same directory.
    """
    global _WORLD
    if _WORLD is not None:
        return _WORLD
    launched = _launcher_size()
    if launched <= 1:
        _WORLD = World()
        return _WORLD
    try:
        from mpi4py import MPI
    except ImportError as err:
        raise DistributedError(
            f"started by an MPI launcher with {launched} processes, but mpi4py cannot be imported ({err}); "
            "install it with pip install 'pvt_np[mpi]' (mpi4py and MPICH), or run one process without mpiexec"
        ) from err
    comm = MPI.COMM_WORLD
    if comm.Get_size() == 1:
        _WORLD = World()
        return _WORLD
    node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.Get_rank())
    _WORLD = World(comm.Get_rank(), comm.Get_size(), node.Get_rank(), node.Get_size(), comm)
    node.Free()
    _install_abort_hook(_WORLD)
    return _WORLD


def _install_abort_hook(world: World) -> None:
    """An exception that escapes on one rank aborts them all, instead of leaving them in a collective."""
    previous = sys.excepthook

    def hook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        previous(kind, value, tb)
        sys.stderr.flush()
        world.abort(1)

    sys.excepthook = hook


# -- splitting the work -------------------------------------------------------------------
def local_batch_size(global_batch: int, world: World) -> int:
    """This rank's share of ``--batch-size``: equal slices, or an error naming both numbers."""
    if global_batch % world.size:
        below, above = global_batch - global_batch % world.size, global_batch - global_batch % world.size + world.size
        nearest = f"{below} or {above}" if below else f"{above}"
        raise OptionError(
            f"--batch-size {global_batch} is not divisible by the {world.size} ranks: every rank takes an equal "
            f"slice of each batch; use a multiple of {world.size} (e.g. {nearest})"
        )
    return global_batch // world.size


def shard_bounds(n: int, world: World) -> tuple[int, int]:
    """This rank's contiguous part [start, stop) of an evaluation set of ``n`` images (the parts differ in size
    by at most one)."""
    if n < world.size:
        raise DistributedError(f"the test set has {n} images, fewer than the {world.size} ranks that share it")
    return n * world.rank // world.size, n * (world.rank + 1) // world.size


def shard_dataset(dataset: Any, world: World) -> Any:
    """This rank's contiguous part of an evaluation set (:func:`shard_bounds`)."""
    if world.size == 1:
        return dataset
    start, stop = shard_bounds(len(dataset), world)
    return Dataset(
        dataset.images[start:stop], dataset.labels[start:stop], dataset.classes, dataset.name, dataset.split,
        dataset.source,
    )  # fmt: skip


def default_threads(world: World, requested: int | None) -> int:
    """Threads for this rank: ``requested`` (--threads), else this node's cores shared among its ranks."""
    if requested is not None:
        return int(requested)
    return max(1, min(parallel.available_cores(), parallel.MAX_THREADS * world.local_size) // world.local_size)


def set_threads(world: World, requested: int | None) -> None:
    """Threads of this rank, set through pvt_np.ops.parallel.configure_threads (which also limits BLAS).

    One process takes configure_threads' default unless ``requested``; N ranks on a
    node share its cores, so two ranks on two cores do not run four threads.
    """
    parallel.configure_threads(default_threads(world, requested))


def join_world(device: str) -> World:
    """This process's world, set up for a trainer: with several ranks each draws the random masks of the whole
    batch and keeps its slice (``backend.set_batch_shard``), and on the GPU uses its node-local device."""
    world = get_world()
    if world.size > 1:
        backend.set_batch_shard(world.rank, world.size)
        if device == "gpu":
            use_local_gpu(world)
    return world


def use_local_gpu(world: World) -> None:
    """Make this rank's GPU (its local rank on this node) the current device, before anything is allocated."""
    xp = backend.cupy_module()
    count = xp.cuda.runtime.getDeviceCount()
    if world.local_size > count:
        raise DistributedError(
            f"{world.local_size} ranks on this node but {count} GPUs: NCCL needs one GPU per rank; "
            f"start at most {count} ranks per node"
        )
    xp.cuda.Device(world.local_rank).use()


# -- replicas stay equal ---------------------------------------------------------------------
def weights_checksum(parameters: Iterable[Any]) -> int:
    """A checksum of the bits of every parameter: integer sums, so exact and the same on any machine."""
    total = 0
    for p in parameters:
        data = p.data
        xp = backend.get_array_module(data)
        words = xp.ascontiguousarray(data).reshape(-1).view(np.uint32 if data.dtype.itemsize == 4 else np.uint64)
        total = (total + int(words.sum(dtype=np.uint64))) % (1 << 64)
    return total


def check_replicas(world: World, parameters: Iterable[Any], where: str) -> None:
    """Every rank's weights must be bit-identical; a DistributedError on every rank otherwise."""
    if world.size == 1:
        return
    sums = world.comm.allgather(weights_checksum(parameters))
    if len(set(sums)) > 1:
        listed = ", ".join(f"rank {r} {s:#x}" for r, s in enumerate(sums))
        raise DistributedError(
            f"the ranks' weights diverged ({where}): checksums {listed}. "
            "Every rank must run the same pvt_np, NumPy and BLAS on the same kind of device"
        )


# -- launching -----------------------------------------------------------------------------
def _find_mpiexec() -> str | None:
    """The mpiexec beside this Python (a virtual environment's, from the mpich wheel), else the one on PATH."""
    beside_python = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return beside_python if os.access(beside_python, os.X_OK) else shutil.which("mpiexec")


def auto_nprocs(device: str, threads: int | None, batch_size: int) -> int:
    """How many processes ``pvt-np train`` runs when ``--nprocs`` is not typed.

    One single-threaded rank per usable core (at most ``MAX_THREADS``, and a number that divides the
    batch) when that is possible: training on the CPU, no ``--threads`` typed, not already started by a
    launcher, mpi4py and an mpiexec installed, two or more cores. Otherwise 1: one process whose
    threads share the cores. Why ranks rather than threads: a rank runs all of a step in parallel,
    the Python between the ops and the data augmentation included, where threads split only the
    large ops; on 2 cores two ranks trained b0 CIFAR at 1.46x the speed of one process of two
    threads (README, Data-parallel training).
    """
    if device != "cpu" or threads is not None or under_launcher():
        return 1
    cores = min(parallel.available_cores(), parallel.MAX_THREADS, batch_size)
    if cores < 2 or importlib.util.find_spec("mpi4py") is None or _find_mpiexec() is None:
        return 1
    return max(n for n in range(1, cores + 1) if batch_size % n == 0)  # the ranks split the batch evenly


def command_started() -> float:
    """The ``time.monotonic()`` at which this command started: the launching ``pvt-np train``'s start for a
    rank it started (read from ``STARTED_AT_VARIABLE``, in wall-clock seconds), else now."""
    now_mono, now_wall = time.monotonic(), time.time()
    text = os.environ.get(STARTED_AT_VARIABLE, "") if under_launcher() else ""
    try:
        started_at = float(text)
    except ValueError:
        return now_mono
    return now_mono - min(max(now_wall - started_at, 0.0), 3600.0)  # a stale or odd value cannot go far


def launch_command(nprocs: int, argv: Sequence[str]) -> list[str]:
    """``mpiexec -n N python -m pvt_np ARGV`` (for ``pvt-np train --nprocs N``), or an error saying what is missing.

    ``argv`` is the command line after the program name; ``--nprocs N`` is removed from it (the ranks
    must not launch again: each finds itself under mpiexec and trains).
    """
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg == "--nprocs" and i + 1 < len(argv):
            del argv[i : i + 2]
            break
        if arg.startswith("--nprocs="):
            del argv[i]
            break
    if nprocs < 1:
        raise DistributedError(f"--nprocs: expected a positive number of processes, got {nprocs}")
    if under_launcher():
        raise OptionError("--nprocs: this process was already started by mpiexec; use one or the other")
    mpiexec = _find_mpiexec()
    if mpiexec is None:
        raise DistributedError(
            f"--nprocs {nprocs}: no mpiexec found beside {sys.executable} or on PATH; "
            "install one with pip install 'pvt_np[mpi]' (mpi4py and MPICH)"
        )
    try:
        import mpi4py  # noqa: F401  (only checked: each rank imports it)
    except ImportError as err:
        raise DistributedError(
            f"--nprocs {nprocs}: mpi4py cannot be imported ({err}); install it with pip install 'pvt_np[mpi]'"
        ) from err
    return [mpiexec, "-n", str(nprocs), sys.executable, "-m", "pvt_np", *argv]


def fail(
    world: World, err: BaseException, agreed: tuple[type[BaseException], ...] = (), command: str = "pvt-np train"
) -> int:
    """Report a failure and return the exit code 1, or end every rank if this one failed alone.

    An agreed error (:class:`DistributedError`, or one of the ``agreed`` types, which the
    caller knows every rank raises at the same point) is printed once, by rank 0, and every
    rank returns. Any other error may have hit this rank only, while the others wait in a
    collective: it is printed with the rank's number and the whole job is aborted.
    """
    if isinstance(err, (DistributedError, *agreed)) or world.size == 1:
        if world.is_root:
            print(f"{command}: error: {err}", file=sys.stderr, flush=True)
        return 1
    print(f"{command}: error: rank {world.rank} of {world.size}: {err}", file=sys.stderr, flush=True)
    world.abort(1)
    return 1


def launch(nprocs: int, argv: Sequence[str], started: float | None = None, lock_fd: int | None = None) -> int:
    """Run ``pvt-np`` under ``mpiexec -n nprocs``; returns its exit code (see :func:`exit_code`).

    ``started``: the ``time.time()`` at which the command started, passed to the ranks (see
    :func:`command_started`) so that a ``--time-budget`` counts mpiexec's own start-up too.
    ``lock_fd``: the run directory's lock (pvt_np.training.runlock), handed to mpiexec and through
    it to the ranks, whose rank 0 adopts it: the lock lives as long as any process of the run.

    mpiexec runs in a session of its own, without the terminal's input, and this process
    forwards the signals it gets (:class:`_SignalForwarder`): SIGINT as SIGINT, which
    MPICH's mpiexec passes on to the ranks (they finish the step, save and exit 130; a
    second one makes mpiexec abort them at once), SIGTERM and SIGHUP as SIGTERM. So a
    SIGINT sent to this process alone (``kill -INT``, a notebook's interrupt) stops the
    run as a Ctrl-C at the terminal does, and a ``kill`` or a closed terminal leaves no
    ranks training behind it. (In the terminal's process group mpiexec would get each
    Ctrl-C from the terminal as well, and two copies of one Ctrl-C make it abort.)

    A signal that cannot be forwarded, SIGKILL, must be noticed: on Linux mpiexec gets SIGTERM
    when this process dies (a parent-death signal), and every rank watches this process
    (:func:`watch_launcher`), so no rank outlives the launcher by more than a few seconds.
    """
    try:
        command = launch_command(nprocs, argv)
    except DistributedError as err:
        print(f"pvt-np train: error: {err}", file=sys.stderr)
        return EXIT_USAGE if isinstance(err, OptionError) else EXIT_FAILURE
    env = dict(os.environ)
    if started is not None:
        env[STARTED_AT_VARIABLE] = repr(float(started))
    env[LAUNCHER_VARIABLE] = f"{os.getpid()}:{process_start(os.getpid()) or ''}"
    if lock_fd is not None:
        env[LOCK_FD_VARIABLE] = str(lock_fd)
    forwarder = _SignalForwarder()
    with forwarder.installed() as forwarding:  # (off the main thread: mpiexec stays in the terminal's group)
        process = subprocess.Popen(
            command, env=env, stdin=subprocess.DEVNULL, start_new_session=forwarding,
            pass_fds=() if lock_fd is None else (lock_fd,), preexec_fn=_parent_death_signal(),
        )  # fmt: skip
        with process:
            forwarder.attach(process)
            code = process.wait()
    return exit_code(code, forwarder.received)


def exit_code(mpiexec_code: int, received: Sequence[int] = ()) -> int:
    """The launcher's exit code: 128 + the number of the first signal it got (SIGINT 130, SIGTERM 143, SIGHUP 129,
    as one process gives), else mpiexec's when it is one that ``pvt-np train`` gives (0, 1, 2, 129, 130, 143: the
    ranks' own), else 1 with a line giving mpiexec's code (a rank killed, mpiexec's own failure)."""
    if received:
        return 128 + int(received[0])
    if mpiexec_code in (EXIT_OK, EXIT_FAILURE, EXIT_USAGE, *SIGNAL_EXITS.values()):
        return mpiexec_code
    if mpiexec_code < 0:
        how = f"mpiexec was killed by {signal.Signals(-mpiexec_code).name}"
    else:  # a rank killed (MPICH: its signal's number), mpiexec's own failure, or ranks that ended unlike
        how = f"mpiexec exit code {mpiexec_code}"
    print(f"pvt-np train: error: the run ended abnormally: {how}; every rank has ended", file=sys.stderr, flush=True)
    return EXIT_FAILURE
