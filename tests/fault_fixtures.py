"""Helpers for tests/test_faults.py: ``pvt-np`` with hooks that hold a run at a known step, in every process.

Run as a script, this module is ``pvt-np`` with optional hooks placed before the ``--``::

    python tests/fault_fixtures.py [--pause-at STEP --marker DIR] [--slow-exit SECONDS] -- train ...

--pause-at STEP      before training step STEP (counted from 0 in this process) write DIR/paused.<pid>
                     (holding the rank) and wait there until DIR/release exists (signals are handled meanwhile;
                     a SIGINT there also writes DIR/sigint.<pid>)
--slow-exit SECONDS  once paused, the first SIGTERM waits SECONDS before ending the process as pvt-np would
                     (a rank slow to end: the processes of a killed run outlive their launcher a while)

Launched with ``--nprocs N``, the launcher runs this script as its ranks (with the same hooks) in place of
``python -m pvt_np``; everything else is pvt-np's own: the launcher, mpiexec, the lock, the signals.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training_fixtures import REPO, child_env

SCRIPT = Path(__file__).resolve()
WAIT_LIMIT = 120.0  # seconds a paused process waits for its release before giving up


def command(args: Sequence[str], hooks: Sequence[str] = ()) -> list[str]:
    """The command line of ``pvt-np ARGS`` through this script."""
    return [sys.executable, str(SCRIPT), *hooks, "--", *args]


def start(args: Sequence[str], hooks: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
    """``pvt-np ARGS`` with ``hooks``, in a session of its own (as a terminal's command is), output to ``log``."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            command(args, hooks), cwd=REPO, env=child_env(), stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def run_processes(text: str) -> dict[int, str]:
    """The live processes (zombies aside) whose command line contains ``text``: pid -> command line (/proc)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
            args = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):  # the process ended while we looked
            continue
        if state not in ("Z", "X") and text in args and int(stat.parent.name) != os.getpid():
            found[int(stat.parent.name)] = args
    return found


def kill_all(text: str, *processes: subprocess.Popen[bytes]) -> None:
    """SIGKILL every process of a run (each ``processes`` and every process naming ``text``), then reap ours."""
    for _ in range(3):
        pids = {p.pid for p in processes if p.poll() is None} | set(run_processes(text))
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    for p in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=5)


def wait_for(condition: Any, what: str, timeout: float = 60.0, interval: float = 0.02) -> float:
    """Wait until ``condition()`` is true; the seconds it took, or an AssertionError naming ``what``."""
    began = time.monotonic()
    while not condition():
        if time.monotonic() - began > timeout:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(interval)
    return time.monotonic() - began


def _rank_command(hooks: list[str]) -> Any:
    """launch_command with this script, and the same hooks, in place of ``python -m pvt_np``."""
    from pvt_np import distributed

    real = distributed.launch_command

    def launch_command(nprocs: int, argv: Sequence[str]) -> list[str]:
        cmd = real(nprocs, argv)
        at = cmd.index("-m")
        return [*cmd[:at], str(SCRIPT), *hooks, "--", *cmd[at + 2 :]]

    return launch_command


def _install_pause(step: int, marker: Path, slow_exit: float | None) -> None:
    from pvt_np.training import trainer

    real_step = trainer.train_step
    calls = 0

    def slow_terminate() -> None:
        ending = signal.getsignal(signal.SIGTERM)  # pvt-np's own (raises Terminated once)
        done = []

        def handler(signum: int, frame: Any) -> None:
            if done:
                return
            done.append(signum)
            time.sleep(slow_exit)
            if callable(ending):
                ending(signum, frame)
            else:
                os._exit(128 + signum)

        signal.signal(signal.SIGTERM, handler)

    def note_sigint() -> None:
        handling = signal.getsignal(signal.SIGINT)  # the trainer's (finish the step, save, stop)

        def handler(signum: int, frame: Any) -> None:
            (marker / f"sigint.{os.getpid()}").touch()  # the test releases the step once every process has it
            if callable(handling):
                handling(signum, frame)

        signal.signal(signal.SIGINT, handler)

    def pausing_step(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        if calls == step:
            if slow_exit is not None:
                slow_terminate()
            note_sigint()
            marker.mkdir(parents=True, exist_ok=True)
            (marker / f"paused.{os.getpid()}").write_text(os.environ.get("PMI_RANK", "0"))  # this process's rank
            deadline = time.monotonic() + WAIT_LIMIT
            while not (marker / "release").exists():  # signal handlers run here; SIGKILL ends the process here
                if time.monotonic() > deadline:
                    raise SystemExit(f"fault_fixtures: nobody released step {step}")
                time.sleep(0.005)
        calls += 1
        return real_step(*args, **kwargs)

    trainer.train_step = pausing_step


def _main(argv: list[str]) -> int:
    split = argv.index("--")
    parser = argparse.ArgumentParser()
    parser.add_argument("--pause-at", type=int)
    parser.add_argument("--marker", type=Path)
    parser.add_argument("--slow-exit", type=float)
    hooks = parser.parse_args(argv[:split])

    from pvt_np import cli, distributed

    if hooks.pause_at is not None:  # (a launcher never trains: the hook waits there in vain)
        _install_pause(hooks.pause_at, hooks.marker, hooks.slow_exit)
    if hooks.slow_exit is not None:  # the rank's launcher watch must not cut the slow exit short
        distributed.watch_launcher = functools.partial(distributed.watch_launcher, grace=hooks.slow_exit + 5.0)
    distributed.launch_command = _rank_command(argv[:split])  # a launcher's ranks get the same hooks
    sys.argv = [sys.argv[0], *argv[split + 1 :]]  # what launch() passes on to the ranks
    return cli.main(argv[split + 1 :])


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
