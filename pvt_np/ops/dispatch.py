"""The one door every op call goes through: which implementation runs, and who watches.

Each op has two implementations with the same signature and the same
``forward(...) -> (out, cache)`` / ``backward(dout, cache) -> grads`` contract:

* **fast**: shaped for speed (``pvt_np/ops/<family>.py``): strided views,
  GEMM-shaped contractions, chunks on worker threads, buffers reused in place;
* **plain**: the formula as it reads (``pvt_np/ops/plain.py``), the ground truth
  the fast one is tested against.

``pvt_np.ops.<op>_forward`` / ``_backward`` are the dispatchers made here. Their
docstring is the plain implementation's (the math), plus a line naming both. They
run the fast implementation, or the plain one inside :func:`use_plain`; modules call
only the dispatchers, so the switch moves a whole model at once. A forward and
its backward must run under the same implementation (their caches differ); the plain
caches are types of their own, and a backward given the other implementation's cache
says so.

Observers (:func:`observe`) see every call after it returns, as an
:class:`OpCall` (op name, phase, arguments, result, seconds). The benchmark's
per-op profile and the FLOP counter (``pvt_np.complexity``) are both observers,
so neither keeps a picture of the code of its own: a new layer built from
registered ops is profiled and counted as it runs.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

PHASES = ("forward", "backward")


@dataclass(frozen=True)
class OpCall:
    """One finished op call, as observers see it."""

    op: str  # the family name, e.g. "conv2d"
    phase: str  # "forward" or "backward"
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    result: Any
    seconds: float  # wall time of the call (after ``sync`` on both sides, when an observer gave one)


@dataclass
class Op:
    """The two implementations of one op family."""

    name: str
    fast_forward: Callable[..., Any]
    fast_backward: Callable[..., Any]
    plain_forward: Callable[..., Any] | None = None
    plain_backward: Callable[..., Any] | None = None
    plain_cache: type | None = None  # the plain forward's cache type; any other cache is the fast implementation's


_registry: dict[str, Op] = {}
_plain = False
_observers: list[tuple[Callable[[OpCall], None], Callable[[], None] | None]] = []
_substitute: Callable[..., Any] | None = None


def registered_ops() -> dict[str, Op]:
    """Every op family by name (a copy)."""
    return dict(_registry)


def is_plain() -> bool:
    """True inside :func:`use_plain`."""
    return _plain


@contextlib.contextmanager
def use_plain(enabled: bool = True) -> Iterator[None]:
    """Within this context every op call runs its plain implementation (``enabled=False``: the fast one).

    Nothing else changes: the same modules, parameters, caches' owners and random
    draws, so a model run under both switches must give the same numbers.
    """
    global _plain
    missing = [op.name for op in _registry.values() if None in (op.plain_forward, op.plain_backward, op.plain_cache)]
    if enabled and missing:
        raise RuntimeError(f"use_plain: no plain implementation registered for {', '.join(missing)}")
    previous = _plain
    _plain = bool(enabled)
    try:
        yield
    finally:
        _plain = previous


@contextlib.contextmanager
def observe(callback: Callable[[OpCall], None], sync: Callable[[], None] | None = None) -> Iterator[None]:
    """Call ``callback(OpCall)`` after every op call made within this context.

    ``sync`` (for example a device synchronise) runs before the timer starts and
    before it stops, so asynchronous GPU work is charged to the op that queued it.
    Observers nest; each sees every call.
    """
    entry = (callback, sync)
    _observers.append(entry)
    try:
        yield
    finally:
        _observers.remove(entry)


@contextlib.contextmanager
def substitute(answer: Callable[..., Any]) -> Iterator[None]:
    """Within this context an op call returns ``answer(op_name, phase, *args, **kwargs)``
    instead of running either implementation; observers see it as any other call.

    The FLOP counter runs a model's forward this way on shapes alone: its
    ``answer`` returns a zero-cost array of the op's output shape, so counting
    b2 with full attention at 2048 px needs no N x N matrix. Does not nest;
    process-wide, as :func:`use_plain`: op calls from other threads are answered too.
    """
    global _substitute
    if _substitute is not None:
        raise RuntimeError("substitute: already inside a substitute() context")
    _substitute = answer
    try:
        yield
    finally:
        _substitute = None


def _check_cache_implementation(op: Op, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """A backward must get the cache of its own implementation's forward (the two caches hold different things)."""
    cache = args[1] if len(args) > 1 else kwargs.get("cache")
    from_plain = op.plain_cache is not None and isinstance(cache, op.plain_cache)
    if from_plain != _plain:
        made, active = ("plain", "fast") if from_plain else ("fast", "plain")
        raise TypeError(
            f"{op.name}_backward: got a cache made by the {made} implementation's forward while the {active} one "
            "is active; run a forward and its backward under the same use_plain() setting"
        )


def _where(fn: Callable[..., Any]) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


def _dispatcher_doc(fast: Callable[..., Any], plain: Callable[..., Any] | None) -> str:
    """The plain implementation's docstring (the formula and its derivation), then one line naming both.

    This is what ``help()`` and an editor show for ``pvt_np.ops.<op>_forward`` / ``_backward``: a reader
    lands on the math; the fast implementation's own docstring says how it is computed.
    """
    if plain is None:
        return f"{inspect.getdoc(fast) or ''}\n\nFast implementation: {_where(fast)}; no plain one is registered."
    where = (
        f"Implementations: plain {_where(plain)} (this text; inside use_plain()), fast {_where(fast)} (the default)."
    )
    return f"{inspect.getdoc(plain) or ''}\n\n{where}"


def _renamed_who(op: Op, kwargs: dict[str, Any]) -> dict[str, Any]:
    """A forward's ``who=``, the former name of ``layer=``: still taken, with a DeprecationWarning."""
    if "layer" in kwargs:
        raise TypeError(f"{op.name}_forward: got layer= and who= (its deprecated name); pass layer= alone")
    warnings.warn(f"{op.name}_forward: who= is deprecated; use layer=", DeprecationWarning, stacklevel=3)
    renamed = dict(kwargs)
    renamed["layer"] = renamed.pop("who")
    return renamed


def _dispatcher(op: Op, phase: str) -> Callable[..., Any]:
    fast = getattr(op, f"fast_{phase}")

    # The signature is the fast implementation's (the two are equal); the docstring is the plain one's derivation.
    @functools.wraps(fast)
    def call(*args: Any, **kwargs: Any) -> Any:
        if phase == "backward":
            _check_cache_implementation(op, args, kwargs)
        elif "who" in kwargs:
            kwargs = _renamed_who(op, kwargs)
        fn = getattr(op, f"plain_{phase}") if _plain else fast
        if _substitute is not None:
            fn = functools.partial(_substitute, op.name, phase)
        if not _observers:
            return fn(*args, **kwargs)
        syncs = [s for _, s in _observers if s is not None]
        for s in syncs:
            s()
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        for s in syncs:
            s()
        record = OpCall(op.name, phase, args, kwargs, result, time.perf_counter() - start)
        for callback, _ in list(_observers):
            callback(record)
        return result

    call.__doc__ = _dispatcher_doc(fast, getattr(op, f"plain_{phase}"))
    call.__module__ = __package__  # the public name is pvt_np.ops.<op>_<phase> (help(), pickle), not the fast one's
    return call


def register(
    name: str,
    fast_forward: Callable[..., Any],
    fast_backward: Callable[..., Any],
    plain_forward: Callable[..., Any] | None = None,
    plain_backward: Callable[..., Any] | None = None,
    plain_cache: type | None = None,
) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """Register an op family; returns its (forward, backward) dispatchers.

    ``plain_cache`` is the type of the plain forward's cache: a backward given a
    cache of the other implementation than the active one raises a TypeError.
    """
    if name in _registry:
        raise ValueError(f"register: op {name!r} is already registered")
    op = Op(name, fast_forward, fast_backward, plain_forward, plain_backward, plain_cache)
    _registry[name] = op
    return _dispatcher(op, "forward"), _dispatcher(op, "backward")
