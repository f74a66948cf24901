"""One writer per run directory: ``pvt-np train`` holds a lock on its ``--output`` for its whole life.

The lock is an OS lock (``fcntl.flock``) on the file ``train.lock`` inside the run directory, not a
marker file: the kernel drops it when the last process holding it ends, however it ends (SIGKILL
included), so a killed run never blocks the next one. The file itself stays; it holds, as JSON, who
holds the lock (pid, host, start time, the launching ``pvt-np train`` if any), which is read only to
name the running run in the refusal of a second one.

Who holds it: the process that writes the run. In one process that is the process. Under
``pvt-np train --nprocs N`` the launcher takes the lock first (so a second run is refused before any
rank starts) and hands the same open file to mpiexec and through it to the ranks (an inherited file
descriptor shares the lock); rank 0, the writer, adopts it and records itself as the holder. So a
dead launcher whose ranks still run still holds the lock, until the last of them has ended.

A second run into a locked directory is refused at once, unless the holder is what is left of a
killed run (its launcher, or the holder itself, has gone): then it waits up to :data:`WAIT_SECONDS`
for those processes to end, saying so. Where the file system cannot lock (some network file
systems), a warning says so and the run goes on unprotected.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pvt_np.distributed import LOCK_FD_VARIABLE, process_alive, process_start

try:
    import fcntl
except ImportError:  # Windows: no flock; the run goes on unprotected, with a warning
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_NAME", "WAIT_SECONDS", "RunLock", "RunLocked", "acquire", "adopt", "drop_inherited"]

LOCK_NAME = "train.lock"
# How long a new run waits for the processes of a killed run (whose launcher or lock holder has gone) to end.
WAIT_SECONDS = 10.0
POLL_SECONDS = 0.1
# flock's errors on a file system that cannot lock.
NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL}


class RunLocked(RuntimeError):
    """Another run holds the run directory; the message names it and says how to proceed."""


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class RunLock:
    """The lock on one run directory, held while this object is open (see :func:`acquire`).

    The process that took the lock (``owner``) puts the directory back as it found it on :meth:`release`: the
    lock file is removed (or, if it was there before and the run wrote nothing, given back its content and
    times), and a directory the run created and left empty is removed. A process that adopted the lock (rank 0
    under the launcher) leaves that to the launcher.
    """

    def __init__(self, directory: Path, fd: int | None, created: bool, owner: bool = True) -> None:
        self.directory, self.fd, self.created, self.owner = directory, fd, created, owner
        self.path = directory / LOCK_NAME
        self.previous: tuple[bytes, int, int] | None = None  # the lock file as found: content, atime, mtime (ns)
        self.found: dict[str, int] = {}  # the directory's other entries as found: name -> mtime (ns)
        if owner:
            self._look()

    def _look(self) -> None:
        with contextlib.suppress(OSError):
            st = os.stat(self.path)
            if st.st_size:  # (empty: created just now by this run)
                self.previous = (self.path.read_bytes(), st.st_atime_ns, st.st_mtime_ns)
        self.found = self._entries()

    def _entries(self) -> dict[str, int]:
        entries = {}
        with contextlib.suppress(OSError):
            for p in self.directory.iterdir():
                if p.name != LOCK_NAME:
                    with contextlib.suppress(OSError):
                        entries[p.name] = p.stat().st_mtime_ns
        return entries

    @property
    def held(self) -> bool:
        """Whether an OS lock is held (False where the file system cannot lock)."""
        return self.fd is not None

    def record(self, **holder: Any) -> None:
        """Write who holds the lock into the lock file (read to name the run in a second run's refusal)."""
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.time(),
            "start": process_start(os.getpid()),
            **holder,
        }
        data = (json.dumps(info) + "\n").encode()
        with contextlib.suppress(OSError):
            if self.fd is not None:
                os.ftruncate(self.fd, 0)
                os.pwrite(self.fd, data, 0)
            else:
                self.path.write_bytes(data)

    def release(self) -> None:
        """Give the lock up, leaving the directory as it was found where the run wrote nothing (see the class)."""
        try:
            if self.owner:
                with contextlib.suppress(OSError):
                    if self.previous is not None and self._entries() == self.found:
                        content, atime, mtime = self.previous
                        self.path.write_bytes(content)
                        os.utime(self.path, ns=(atime, mtime))
                    else:  # (before the lock is let go: a run waiting for it then finds the file gone, and retries)
                        self.path.unlink(missing_ok=True)
                    if self.created and not any(self.directory.iterdir()):
                        self.directory.rmdir()
        finally:
            if self.fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self.fd)
                self.fd = None

    def detach_fd(self) -> int | None:
        """The lock's file descriptor, made inheritable, for a child to share (see the launcher)."""
        if self.fd is not None:
            os.set_inheritable(self.fd, True)
        return self.fd


def _holder(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _describe(info: dict[str, Any]) -> str:
    """'pid 1234 on host h, started 2026-12-06 20:41:07 UTC, launched by pid 1200' from a holder's record."""
    if not info.get("pid"):
        return "another pvt-np train (it has not recorded itself yet)"
    parts = [f"pid {info['pid']}"]
    if info.get("rank") is not None and info.get("ranks"):
        parts[0] += f", rank {info['rank']} of {info['ranks']}"
    if info.get("host") and info["host"] != socket.gethostname():
        parts.append(f"on host {info['host']}")
    if isinstance(info.get("started"), (int, float)):
        parts.append("started " + time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(info["started"])))
    if info.get("launcher_pid"):
        parts.append(f"launched by pvt-np train pid {info['launcher_pid']}")
    return "pvt-np train (" + ", ".join(parts) + ")"


def _ending(info: dict[str, Any]) -> bool:
    """Whether the holder is what is left of a killed run: on this host, its launcher or itself gone."""
    if info.get("host") != socket.gethostname() or not info.get("pid"):
        return False
    if not process_alive(int(info["pid"]), info.get("start")):
        return True  # rank 0 has gone; mpiexec or another rank, sharing the lock, has not yet
    launcher = info.get("launcher_pid")
    return bool(launcher) and not process_alive(int(launcher), info.get("launcher_start"))


def _open(directory: Path) -> tuple[int, bool]:
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    return os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644), created


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (a run that stopped before writing anything removes
    its directory and lock file: a lock on the removed file protects nothing)."""
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def acquire(
    directory: str | os.PathLike[str],
    wait: float = WAIT_SECONDS,
    say: Callable[[str], None] = _say,
    mine: Callable[[dict[str, Any]], bool] | None = None,
) -> RunLock:
    """Lock the run directory ``directory`` (created if missing) for this process; a :class:`RunLocked` if another
    run holds it. Holds of a killed run's leftovers are waited for, up to ``wait`` seconds, with a line to ``say``.

    ``mine``: given the holder's record, whether the holder is this run itself (a rank whose launcher holds the
    lock and could not hand it over): then the returned lock holds nothing, and the holder's lock protects the run.
    """
    directory = Path(directory)
    announced = False
    deadline = None
    created_any = False
    while True:
        fd, created = _open(directory)
        created_any = created_any or created
        if fcntl is None:
            os.close(fd)
            say(f"pvt-np train: warning: cannot lock {directory} on this system: a second pvt-np train into it "
                "would not be refused; run one at a time")  # fmt: skip
            return RunLock(directory, None, created_any)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            info = _holder(directory / LOCK_NAME)
            if mine is not None and mine(info):
                return RunLock(directory, None, False, owner=False)
            if not _ending(info):
                raise RunLocked(_refusal(directory, info)) from None
            if deadline is None:
                deadline = time.monotonic() + wait
            if not announced:
                say(f"pvt-np train: {directory} is still locked by {_describe(info)}, left from a run that was "
                    f"killed; waiting up to {wait:g} s for its processes to end")  # fmt: skip
                announced = True
            if time.monotonic() >= deadline:
                raise RunLocked(_refusal(directory, info, f"its processes had not ended after {wait:g} s. ")) from None
            time.sleep(POLL_SECONDS)
            continue
        except OSError as err:
            os.close(fd)
            if err.errno not in NO_LOCKS:
                raise
            say(f"pvt-np train: warning: the file system of {directory} cannot lock ({os.strerror(err.errno)}): a "
                "second pvt-np train into it would not be refused; run one at a time")  # fmt: skip
            return RunLock(directory, None, created_any)
        if not _same_file(fd, directory / LOCK_NAME):  # removed while we waited for it: lock the new one
            os.close(fd)
            continue
        if announced:
            say(f"pvt-np train: {directory} is free; going on")
        return RunLock(directory, fd, created_any)


def _refusal(directory: Path, info: dict[str, Any], why: str = "") -> str:
    pid = info.get("launcher_pid") or info.get("pid")
    stop = f"stop it (kill -INT {pid} saves a checkpoint; then continue with --resume)" if pid else "stop it"
    return (
        f"{directory} is in use by {_describe(info)}: one run at a time writes a run directory. {why}"
        f"Wait for it to end, {stop}, or choose another --output"
    )


def adopt(directory: str | os.PathLike[str]) -> RunLock | None:
    """The lock the launching ``pvt-np train`` handed down (an inherited descriptor of ``directory``'s lock file),
    or None if there is none (not launched by pvt-np train, or the MPI launcher closed it)."""
    text = os.environ.get(LOCK_FD_VARIABLE, "")
    if not text.isdigit():
        return None
    fd = int(text)
    try:
        if not _same_file(fd, Path(directory) / LOCK_NAME):
            return None
        os.set_inheritable(fd, False)
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the same open file: already held, returns at once
    except OSError:
        return None
    return RunLock(Path(directory), fd, False, owner=False)


def drop_inherited(directory: str | os.PathLike[str]) -> None:
    """Close the launcher's lock descriptor in a process that does not write the run (ranks other than 0)."""
    text = os.environ.get(LOCK_FD_VARIABLE, "")
    if text.isdigit() and _same_file(int(text), Path(directory) / LOCK_NAME):
        with contextlib.suppress(OSError):
            os.close(int(text))
