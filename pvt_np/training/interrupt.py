"""Ctrl-C during training: the first asks the loop to stop after its current step (and save), a second stops at once."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from typing import Any


@contextlib.contextmanager
def ctrl_c_requests_stop(request_stop: Callable[[], bool]) -> Iterator[None]:
    """While in the block, SIGINT calls ``request_stop``, which returns False when a stop was already requested:
    that second Ctrl-C raises KeyboardInterrupt at once. Outside the main thread no handler can be set, and
    Ctrl-C behaves as usual."""

    def handler(signum: int, frame: Any) -> None:
        if not request_stop():
            raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


__all__ = ["ctrl_c_requests_stop"]
