"""Faults, as real processes (docs/faults.md): no process outlives a killed run, one writer per run directory,
the same exit codes with and without MPI.

Every run is the tiny model on the tiny image folder of tests/training_fixtures.py, held at a known training
step by tests/fault_fixtures.py (in the launcher's ranks too), so a signal or a kill lands where the test says
whatever the machine's speed. Waits are generous but bounded, and every process of a run is killed in a
``finally`` (found by its unique output folder in its command line: the launcher, mpiexec and the ranks).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import fault_fixtures as ff
import pytest
import training_fixtures as tf

from pvt_np import distributed
from pvt_np.training import load_checkpoint, runlock

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads the process table from /proc; parent-death signals"
)
MPIEXEC = Path(sys.executable).with_name("mpiexec")
HAVE_MPI = MPIEXEC.exists() and distributed.importlib.util.find_spec("mpi4py") is not None
needs_mpi = pytest.mark.skipif(not HAVE_MPI, reason="needs mpi4py and an mpiexec beside Python (the mpi extra)")
END_WITHIN = 10.0  # seconds: the bound on processes outliving a killed launcher or rank
STEPS = tf.STEPS_PER_EPOCH


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tf.write_image_folder(tmp_path_factory.mktemp("faults") / "data")


def _args(data: Path, out: Path, *extra: str, epochs: int = 3) -> list[str]:
    return tf.train_args(data, out, "--no-progress", *extra, epochs=epochs)


def _log(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


class Run:
    """One ``pvt-np train`` held at training step ``step`` in each of its ``nprocs`` training processes."""

    def __init__(self, tmp: Path, name: str, args: list[str], nprocs: int, step: int, *hooks: str) -> None:
        self.marker, self.log, self.nprocs = tmp / f"{name}.marker", tmp / f"{name}.log", nprocs
        self.out = Path(args[args.index("--output") + 1])
        pause = ["--pause-at", str(step), "--marker", str(self.marker), *hooks]
        self.process = ff.start([*args, "--nprocs", str(nprocs)], pause, self.log)

    def paused(self) -> dict[int, int]:
        """rank -> pid of the processes waiting at the step."""
        return {int(p.read_text() or 0): int(p.name.split(".")[1]) for p in self.marker.glob("paused.*")}

    def wait_paused(self) -> dict[int, int]:
        ff.wait_for(lambda: len(self.paused()) == self.nprocs or self.process.poll() is not None, "paused")
        assert self.process.poll() is None, f"exited {self.process.returncode} before the step:\n{_log(self.log)}"
        return self.paused()

    def release(self) -> None:
        self.marker.mkdir(exist_ok=True)
        (self.marker / "release").touch()

    def kill(self) -> None:
        ff.kill_all(str(self.out), self.process)


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[2])


def _alive(pids: list[int]) -> list[int]:
    return [pid for pid in pids if distributed.process_alive(pid)]


# (a) the launcher killed ----------------------------------------------------------------------------------------------


@needs_mpi
@pytest.mark.parametrize("killed", ["launcher", "launcher-mpiexec-proxy"])
def test_sigkill_of_the_launcher_ends_every_process_of_the_run(
    killed: str, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """kill -9 of ``pvt-np train --nprocs 2`` (alone, or with mpiexec and its proxy, so that only the ranks' own
    watch of the launcher is left): mpiexec and both ranks end within 10 s; the checkpoint is whole."""
    run = Run(tmp_path, "run", _args(data, tmp_path / "run"), 2, STEPS + 2)  # held in epoch 2: last.npz exists
    try:
        ranks = list(run.wait_paused().values())
        proxies = sorted({_parent(pid) for pid in ranks})
        mpiexec = [pid for pid, cmd in ff.run_processes(str(run.out)).items() if "mpiexec" in cmd.split()[0]]
        assert len(mpiexec) == 1, ff.run_processes(str(run.out))
        victims = [run.process.pid] + (mpiexec + proxies if killed != "launcher" else [])
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        seconds = ff.wait_for(
            lambda: not _alive(ranks + mpiexec + proxies), "every process of the run ended", timeout=END_WITHIN
        )
        with capsys.disabled():
            print(f"\n  kill -9 of the {killed.replace('-', ', ')}: every process gone after {seconds:.2f} s")
        assert ff.run_processes(str(run.out)) == {}
        saved = load_checkpoint(run.out / "last.npz")  # the epoch-1 checkpoint, whole
        assert (saved["progress"]["epoch"], saved["progress"]["batch"]) == (1, 0)
        assert not list(run.out.glob(".*.tmp"))
    finally:
        run.kill()


# (b) a rank killed -------------------------------------------------------------------------------------------------


@needs_mpi
@pytest.mark.parametrize("rank", [0, 1])
def test_a_killed_rank_ends_the_other_and_mpiexec(rank: int, data: Path, tmp_path: Path) -> None:
    """kill -9 of one rank (rank 0 writes, rank 1 does not): the other rank, mpiexec and the launcher end within
    10 s, the launcher with exit code 1 and a line saying how the run ended."""
    run = Run(tmp_path, "run", _args(data, tmp_path / "run"), 2, 3)
    try:
        ranks = run.wait_paused()
        os.kill(ranks[rank], signal.SIGKILL)
        run.release()  # the other rank goes on to the all-reduce, where it meets the dead one
        ff.wait_for(lambda: run.process.poll() is not None, "the launcher ended", timeout=END_WITHIN)
        ff.wait_for(lambda: not ff.run_processes(str(run.out)), "every process ended", timeout=END_WITHIN)
        log = _log(run.log)
        assert run.process.returncode == 1, log
        assert "pvt-np train: error: the run ended abnormally: mpiexec exit code" in log, log
        assert not (run.out / "last.npz").exists()
    finally:
        run.kill()


# (c) two runs into one directory --------------------------------------------------------------------------------------


@pytest.mark.parametrize("nprocs", [1, pytest.param(2, marks=needs_mpi)], ids=["one-process", "two-ranks"])
def test_two_runs_started_together_into_one_directory(nprocs: int, data: Path, tmp_path: Path) -> None:
    """Two runs started together into one empty --output: exactly one trains, the other is refused at once
    with exit code 1, naming the running one (pid and start time) and how to go on."""
    out = tmp_path / "run"
    runs = [Run(tmp_path, name, _args(data, out), nprocs, 2) for name in ("a", "b")]
    try:
        ff.wait_for(lambda: any(r.process.poll() is not None for r in runs), "one run refused")
        (loser,) = [r for r in runs if r.process.poll() is not None]
        (winner,) = [r for r in runs if r is not loser]
        log = _log(loser.log)
        assert loser.process.returncode == 1, log
        named = re.search(rf"error: {re.escape(str(out))} is in use by pvt-np train \(pid (\d+)[^)]*, started 20", log)
        assert named, log
        assert "Wait for it to end, stop it (kill -INT " in log and "or choose another --output" in log, log
        winners = {winner.process.pid, *ff.run_processes(str(out))} - {loser.process.pid}
        assert int(named.group(1)) in winners, (named.group(0), winners)
        winner.wait_paused()
        winner.release()
        assert winner.process.wait(timeout=120) == 0, _log(winner.log)
        assert "done: test accuracy" in _log(winner.log)
        assert load_checkpoint(out / "last.npz")["progress"]["epoch"] == 3
    finally:
        for r in runs:
            r.kill()


def test_a_resume_while_the_run_goes_on_is_refused(data: Path, tmp_path: Path) -> None:
    """--resume into a run directory whose run still trains (it has a checkpoint): refused at once, exit 1."""
    run = Run(tmp_path, "run", _args(data, tmp_path / "run"), 1, STEPS + 2)
    try:
        (pid,) = run.wait_paused().values()
        began = time.monotonic()
        proc = tf.run_pvt_np(["train", "--resume", "--output", str(run.out), "--threads", "1"])
        assert proc.returncode == 1, proc.stderr
        assert f"is in use by pvt-np train (pid {pid}, started " in proc.stderr, proc.stderr
        assert time.monotonic() - began < 30  # at once: no wait for a run whose processes all live
        assert run.process.poll() is None  # the running one goes on
    finally:
        run.kill()


# (d) kill -9, then --resume at once -----------------------------------------------------------------------------------


@needs_mpi
def test_resume_right_after_a_sigkill_waits_for_the_lock_then_is_bitwise_exact(data: Path, tmp_path: Path) -> None:
    """kill -9 of the launcher of a 2-rank run whose ranks take 6 s to end, then --resume at once: it says it
    waits for the old processes' lock, takes over once they have gone and ends bit-equal to an uninterrupted run,
    no temporary left."""
    from test_training import _assert_same_run

    reference = tmp_path / "reference"
    ref = subprocess.run(
        [sys.executable, "-m", "pvt_np", *_args(data, reference), "--nprocs", "2"], cwd=tf.REPO,
        env=tf.child_env(), capture_output=True, text=True, timeout=tf.SUBPROCESS_TIMEOUT, check=False,
    )  # fmt: skip
    assert ref.returncode == 0, ref.stderr
    args = _args(data, tmp_path / "run")
    run = Run(tmp_path, "run", args, 2, STEPS + 3, "--slow-exit", "6")
    resume = None
    try:
        run.wait_paused()
        os.kill(run.process.pid, signal.SIGKILL)
        killed = time.monotonic()
        resume = subprocess.Popen(
            [sys.executable, "-m", "pvt_np", *args, "--nprocs", "2", "--resume"], cwd=tf.REPO, env=tf.child_env(),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip
        stdout, stderr = resume.communicate(timeout=tf.SUBPROCESS_TIMEOUT)
        assert resume.returncode == 0, stderr
        assert f"{run.out} is still locked by pvt-np train (pid " in stderr, stderr
        assert "left from a run that was killed; waiting up to 10 s for its processes to end" in stderr, stderr
        assert f"{run.out} is free; going on" in stderr, stderr
        assert "done: test accuracy" in stdout, stdout
        assert time.monotonic() - killed < tf.SUBPROCESS_TIMEOUT
    finally:
        run.kill()
        if resume is not None and resume.poll() is None:
            ff.kill_all(str(run.out), resume)
    _assert_same_run(run.out / "last.npz", reference / "last.npz")
    _assert_same_run(run.out / "best.npz", reference / "best.npz")
    assert not list(run.out.glob(".*.tmp")), "a temporary was left behind"


# (e) exit codes ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("nprocs", [1, pytest.param(2, marks=needs_mpi)], ids=["one-process", "two-ranks"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_a_signal_gives_the_same_exit_code_with_and_without_mpi(
    sig: signal.Signals, nprocs: int, data: Path, tmp_path: Path
) -> None:
    """SIGINT 130 (after saving), SIGTERM 143, SIGHUP 129, sent to the command during training, in one process
    and from the launcher of two ranks; no process left."""
    run = Run(tmp_path, "run", _args(data, tmp_path / "run"), nprocs, STEPS + 2)
    try:
        run.wait_paused()
        run.process.send_signal(sig)
        if sig == signal.SIGINT:  # held until every process has it (mpiexec passes it on a moment later)
            ff.wait_for(lambda: len(list(run.marker.glob("sigint.*"))) == nprocs, "SIGINT reached every process")
        run.release()  # SIGINT: the held step is finished, then the run saves and stops
        code = run.process.wait(timeout=60)
        log = _log(run.log)
        assert code == 128 + sig, log
        ff.wait_for(lambda: not ff.run_processes(str(run.out)), "every process ended", timeout=END_WITHIN)
        saved = load_checkpoint(run.out / "last.npz")
        progress = (saved["progress"]["epoch"], saved["progress"]["batch"])
        if sig == signal.SIGINT:  # the held step finished, then saved
            assert "(continue with --resume)" in log and progress == (1, 3), log
        else:
            assert "stopped by SIGTERM" in log or "stopped by SIGHUP" in log, log
            assert progress == (1, 0)  # epoch 1's checkpoint, as it was
        assert not list(run.out.glob(".*.tmp"))
    finally:
        run.kill()


@pytest.mark.parametrize("nprocs", [1, pytest.param(2, marks=needs_mpi)], ids=["one-process", "two-ranks"])
@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (("--lr", "-1"), 2, "argument --lr: expected"),  # a bad option (under MPI: seen by the ranks)
        (("--train-subset", "1000"), 2, "argument --train-subset: expected at most 64"),  # seen once the data is read
        (("--data-path", "missing"), 1, "does not exist"),  # a failure
    ],
    ids=["option", "option-after-reading-the-data", "failure"],
)
def test_errors_give_the_same_exit_code_with_and_without_mpi(
    extra: tuple[str, ...], code: int, message: str, nprocs: int, data: Path, tmp_path: Path
) -> None:
    args = _args(data, tmp_path / "run", "--nprocs", str(nprocs))
    if extra[0] == "--data-path":
        args[args.index("--data-path") + 1] = str(tmp_path / extra[1])
    else:
        args += list(extra)
    proc = tf.run_pvt_np(args)
    assert proc.returncode == code, proc.stderr
    assert proc.stderr.count(message) == 1, proc.stderr
    assert not (tmp_path / "run").exists()  # nothing written, not even the lock


@needs_mpi
def test_a_batch_the_ranks_cannot_share_is_an_option_error() -> None:
    """--batch-size 3 on 2 ranks names the option: exit 2, as any bad option."""
    with pytest.raises(distributed.OptionError, match="--batch-size 3 is not divisible by the 2 ranks"):
        distributed.local_batch_size(3, distributed.World(rank=0, size=2))


# The lock itself, in this process ------------------------------------------------------------------------------------


def test_the_lock_refuses_a_second_holder_and_names_the_first(tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = runlock.acquire(out)
    first.record()
    try:
        assert first.held and (out / runlock.LOCK_NAME).exists()
        with pytest.raises(runlock.RunLocked) as refused:
            runlock.acquire(out)  # another open file: flock refuses it, even in this process
        assert f"{out} is in use by pvt-np train (pid {os.getpid()}, started " in str(refused.value)
        assert f"kill -INT {os.getpid()} saves a checkpoint" in str(refused.value)
    finally:
        first.release()
    second = runlock.acquire(out)  # released: free at once
    second.release()


def test_a_lock_left_by_a_killed_run_is_waited_for_then_taken(tmp_path: Path) -> None:
    """The holder's launcher has gone (a pid whose start time no longer matches): the next run waits, saying so,
    and takes the lock once the holder lets go; if it does not within the wait, a refusal says so."""
    out = tmp_path / "run"
    holder = runlock.acquire(out)
    holder.record(launcher_pid=os.getpid(), launcher_start="0")  # "its launcher": this pid, started at another time
    said: list[str] = []
    with pytest.raises(runlock.RunLocked, match=r"its processes had not ended after 0\.3 s"):
        runlock.acquire(out, wait=0.3, say=said.append)
    assert len(said) == 1 and "left from a run that was killed; waiting up to 0.3 s" in said[0]
    timer = threading.Timer(0.3, holder.release)
    timer.start()
    said.clear()
    lock = runlock.acquire(out, wait=10, say=said.append)
    timer.join()
    assert lock.held and said[-1] == f"pvt-np train: {out} is free; going on"
    lock.release()


def test_a_file_system_that_cannot_lock_gets_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(runlock.fcntl, "flock", no_locks)
    said: list[str] = []
    lock = runlock.acquire(tmp_path / "run", say=said.append)
    assert not lock.held
    assert said and "warning: the file system of" in said[0] and "cannot lock" in said[0], said
    assert "would not be refused" in said[0]


def test_a_run_leaves_the_directory_as_it_found_it(tmp_path: Path) -> None:
    """The lock file is there while a run holds the lock: a run that wrote nothing leaves no trace (the directory
    it made is removed, a lock file left by a killed run gets its content and times back); a run that wrote
    removes the lock file and keeps its files."""
    out = tmp_path / "a" / "run"
    runlock.acquire(out).release()
    assert not out.exists()
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    runlock.acquire(out).release()  # a directory that was there stays
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    left = out / runlock.LOCK_NAME  # as a killed run leaves it
    left.write_text('{"pid": 1}\n')
    os.utime(left, ns=(10**18, 10**18))
    lock = runlock.acquire(out)
    lock.record()
    lock.release()
    assert left.read_text() == '{"pid": 1}\n' and left.stat().st_mtime_ns == 10**18
    lock = runlock.acquire(out)
    lock.record()
    (out / "last.npz").write_bytes(b"written")
    lock.release()
    assert sorted(p.name for p in out.iterdir()) == ["last.npz", "notes.txt"]


def test_the_launcher_exit_code() -> None:
    """128 + the first signal the launcher got; the ranks' own codes pass; anything else (a rank killed) is 1."""
    assert distributed.exit_code(1, [int(signal.SIGHUP), int(signal.SIGINT)]) == 129
    for code in (0, 1, 2, 129, 130, 143):
        assert distributed.exit_code(code) == code
    for code in (9, 137, 255, -9):
        assert distributed.exit_code(code) == 1


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_process_alive_tells_gone_reused_and_zombie_processes() -> None:
    me = os.getpid()
    assert distributed.process_alive(me) and distributed.process_alive(me, distributed.process_start(me))
    assert not distributed.process_alive(me, "0")  # the same pid, another process
    assert not distributed.process_alive(_dead_pid())
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    with contextlib.suppress(Exception):
        ff.wait_for(lambda: Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z", "")
    try:
        assert not distributed.process_alive(zombie.pid)  # ended, not yet reaped
    finally:
        zombie.wait()


# A rank's watch of its launcher, alone --------------------------------------------------------------------------------

WATCHING = """
import signal, sys, time
from pvt_np import distributed
if sys.argv[1] == "stuck":  # SIGTERM changes nothing, as for a main thread stuck in a collective
    signal.signal(signal.SIGTERM, lambda *args: None)
distributed.watch_launcher(interval=0.05, grace=0.5)
print("watching", flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("rank", ["ends-on-sigterm", "stuck"])
def test_a_rank_ends_when_its_launcher_has_gone(rank: str) -> None:
    """A process started as a rank of pvt-np train --nprocs (the launcher's pid in its environment) ends soon
    after the launcher dies by SIGKILL (not yet reaped: a zombie): by SIGTERM, or, when that does not end it,
    by exit code 143 after the grace period."""
    launcher = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    identity = f"{launcher.pid}:{distributed.process_start(launcher.pid)}"
    env = {**tf.child_env(), "PMI_SIZE": "2", distributed.LAUNCHER_VARIABLE: identity}
    child = subprocess.Popen(
        [sys.executable, "-c", WATCHING, rank], cwd=tf.REPO, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stdout.readline() == "watching\n"
        launcher.kill()
        child.wait(timeout=END_WITHIN)
        assert child.returncode == (-signal.SIGTERM if rank == "ends-on-sigterm" else 143)
        assert f"the launching pvt-np train (pid {launcher.pid}) has gone" in child.stderr.read()
    finally:
        for p in (launcher, child):
            p.kill()
            p.wait()


def test_a_forked_child_ends_quietly_on_sigterm() -> None:
    """The image decoders' worker pool is forked while the run's SIGTERM handler is set; the pool ends its workers
    with SIGTERM. A child dies of the signal as by default, with no traceback, and the parent's handler is intact."""
    from pvt_np.cli import train as cli_train

    with cli_train._terminated_by_signals():
        read, write = os.pipe()
        child = os.fork()
        if child == 0:  # the child: wait to be killed, reporting to the parent that it is ready
            os.close(read)
            os.write(write, b"ready")
            time.sleep(30)
            os._exit(3)  # not reached when SIGTERM ends it
        os.close(write)
        assert os.read(read, 5) == b"ready"
        os.close(read)
        os.kill(child, signal.SIGTERM)
        _, status = os.waitpid(child, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM, status
        with pytest.raises(cli_train.Terminated):  # the parent still turns SIGTERM into Terminated
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
