"""The processes of a data-parallel run: the ranks end with their launcher.

A process is named by its pid and its start (:func:`process_start`), so a pid the system has given to a new process
is not taken for the old one (:func:`process_alive`). The launching ``pvt-np train`` forwards the signals it gets to
mpiexec (:class:`_SignalForwarder`); the one it cannot forward, SIGKILL, is noticed twice over: mpiexec gets a
parent-death signal (:func:`_parent_death_signal`, Linux) and every rank watches the launcher
(:func:`watch_launcher`). :mod:`pvt_np.distributed` uses these and names the public ones too.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

# Set by pvt_np.distributed.launch() for the ranks: "PID:START" of the launching pvt-np train (START: see
# process_start), which every rank watches, ending itself when the launcher has gone (SIGKILL cannot be forwarded).
LAUNCHER_VARIABLE = "PVT_NP_LAUNCHER"
# Environment variables by which MPI launchers tell a process the size of its world
# (MPICH's Hydra and Slurm's PMI, Open MPI, MVAPICH).
LAUNCHER_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
# Seconds between a rank's checks that its launcher lives, and how long it then waits for its own SIGTERM
# handler to end it (the main thread may be stuck in a collective with a rank already gone) before _exit.
WATCH_SECONDS = 0.25
WATCH_GRACE_SECONDS = 5.0


def under_launcher() -> bool:
    """Whether mpiexec (or another MPI launcher) started this process, whatever its number of ranks."""
    return any(name in os.environ for name in LAUNCHER_SIZE_VARIABLES)


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _prctl() -> Any:
    """libc's prctl, or None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def _parent_death_signal() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGTERM when this process dies (Linux), else None.

    Looked up before the fork, so the child only calls it; a launcher that died between the fork and
    the call is caught by comparing the child's parent with it."""
    prctl = _prctl()
    if prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def process_start(pid: int) -> str | None:
    """An identity of process ``pid`` that a reused pid does not share: its start time in clock ticks after boot
    (Linux's /proc/PID/stat), or None where that cannot be read (another system, or no such process)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2 :].split()[19]  # field 22, counted after the command's closing ")"
    except (OSError, ValueError, IndexError):
        return None


def process_alive(pid: int, start: str | None = None) -> bool:
    """Whether process ``pid`` runs on this host, a zombie (ended, not yet reaped) counting as gone; with ``start``
    (from :func:`process_start`), whether it is still that process rather than a new one given the same pid."""
    if pid <= 0:
        return False
    if os.name == "nt":  # (os.kill there would end the process, not probe it): cannot tell, so alive
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no /proc (not Linux): os.kill's answer; or the process has just gone
        return not Path("/proc/self/stat").exists()
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return False
    return not start or fields[19] == start


def launcher_identity() -> tuple[int, str | None] | None:
    """(pid, start) of the ``pvt-np train`` that launched this rank (from :data:`LAUNCHER_VARIABLE`), else None."""
    pid, _, start = os.environ.get(LAUNCHER_VARIABLE, "").partition(":")
    return (int(pid), start or None) if pid.isdigit() and under_launcher() else None


def watch_launcher(interval: float = WATCH_SECONDS, grace: float = WATCH_GRACE_SECONDS) -> threading.Thread | None:
    """In a rank started by ``pvt-np train --nprocs`` (none otherwise: a user's own mpiexec keeps MPI's tear-down):
    end this rank when the launcher has gone, whatever killed it, SIGKILL included.

    A daemon thread checks every ``interval`` seconds that the launcher lives; once it has gone, the thread
    sends this process SIGTERM (``pvt-np train`` ends on it between two bytecodes: a checkpoint being written
    is abandoned, its temporary removed, the last one intact), and if the process still runs ``grace``
    seconds later (its main thread stuck in a collective with a rank that has gone) it exits at once (143).
    The rank also gets SIGTERM if its own parent, mpiexec's proxy, dies (Linux).
    """
    identity = launcher_identity()
    if identity is None:
        return None
    pid, start = identity
    prctl = _prctl()
    if prctl is not None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)

    def watch() -> None:
        while process_alive(pid, start):
            time.sleep(interval)
        print(f"pvt-np train: the launching pvt-np train (pid {pid}) has gone; ending this rank (pid {os.getpid()})",
              file=sys.stderr, flush=True)  # fmt: skip
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace)
        os._exit(128 + int(signal.SIGTERM))  # 143: a run stopped by SIGTERM

    thread = threading.Thread(target=watch, name="pvt-np-launcher-watch", daemon=True)
    thread.start()
    return thread


class _SignalForwarder:
    """Signal handlers that pass SIGINT, SIGTERM and SIGHUP on to the launched mpiexec.

    A signal that arrives before mpiexec has started is held and sent as soon as it has
    (:meth:`attach`), so none is lost to the moment between the handlers and the process.
    """

    # the signal received -> the signal sent on
    FORWARDED: ClassVar[dict[str, str]] = {"SIGINT": "SIGINT", "SIGTERM": "SIGTERM", "SIGHUP": "SIGTERM"}

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.pending: list[int] = []
        self.received: list[int] = []  # the signals this process got, in order (its exit code: 128 + the first)

    def __call__(self, signum: int, frame: Any) -> None:
        self.received.append(int(signum))
        sent = getattr(signal, self.FORWARDED[signal.Signals(signum).name])
        if self.process is None:
            self.pending.append(sent)
        else:  # (send_signal does nothing once mpiexec has exited)
            self.process.send_signal(sent)

    def attach(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        while self.pending:
            process.send_signal(self.pending.pop(0))

    @contextlib.contextmanager
    def installed(self) -> Iterator[bool]:
        """Install the handlers for the duration (the ones before are put back); yields whether they are in
        place: off the main thread Python lets no handler be set, and nothing is installed."""
        previous: dict[int, Any] = {}
        try:
            for name in self.FORWARDED:
                if hasattr(signal, name):  # (Windows has no SIGHUP)
                    number = getattr(signal, name)
                    previous[number] = signal.signal(number, self)
        except ValueError:  # not the main thread
            pass
        try:
            yield bool(previous)
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
