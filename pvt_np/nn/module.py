"""The Module contract shared by every layer and model.

``y = m(x)`` runs the forward and keeps what the backward needs;
``dx = m.backward(dy)`` returns the input gradient and *adds* each
parameter's gradient into its ``.grad`` (accumulating, as torch does, until
``zero_grad()``). A composite module's backward calls its children's
backward in the reverse order of its forward, so the chain rule is visible
in the code. A forward keeps one cache, so a module instance is used once per
forward/backward pair; backward frees the cache, and so does the next call (before its
forward runs, so two forwards without a backward never hold two caches at once).
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from pvt_np import backend
from pvt_np.backend import Array

_GRAD_ENABLED = True
# (on_enter, on_exit) pairs of watch_calls(), innermost last.
_call_watchers: list[tuple[Callable[[Module], None], Callable[[Module, Any], None]]] = []


@contextlib.contextmanager
def no_grad() -> Iterator[None]:
    """Within this context forwards keep no caches (inference: less memory, no backward)."""
    global _GRAD_ENABLED
    previous = _GRAD_ENABLED
    _GRAD_ENABLED = False
    try:
        yield
    finally:
        _GRAD_ENABLED = previous


def is_grad_enabled() -> bool:
    """False inside :func:`no_grad`."""
    return _GRAD_ENABLED


@contextlib.contextmanager
def watch_calls(on_enter: Callable[[Module], None], on_exit: Callable[[Module, Any], None]) -> Iterator[None]:
    """Within this context ``module(...)`` calls ``on_enter(module)`` before its forward and
    ``on_exit(module, output)`` after it.

    An op observer (:func:`pvt_np.ops.observe`) sees every op call but not which
    module made it; a watcher that pushes on enter and pops on exit keeps the
    stack of running modules, whose top made the op call (how
    :mod:`pvt_np.complexity` gives per-layer rows). Watchers nest; a forward that
    raises skips the exits, so a watcher's stack is only valid until the first
    error. Module calls on other threads are seen too: watch one thread's work.
    When nobody watches, a call costs one extra check of an empty list.
    """
    entry = (on_enter, on_exit)
    _call_watchers.append(entry)
    try:
        yield
    finally:
        _call_watchers.remove(entry)


def state_dict_mismatches(
    expected: Mapping[str, tuple[int, ...]],
    state_dict: Mapping[str, Any],
    strict: bool = True,
    display: Callable[[str], str] = str,
) -> dict[str, list[str]]:
    """The keys of ``state_dict`` that do not fit ``expected`` shapes, by kind: 'missing' and 'unexpected'
    (empty unless ``strict``), and 'mis-shaped' ('key: expected (..), got (..)'); ``display`` names a key."""
    return {
        "missing": [display(k) for k in expected if k not in state_dict] if strict else [],
        "unexpected": [display(k) for k in state_dict if k not in expected] if strict else [],
        "mis-shaped": [
            f"{display(k)}: expected {tuple(expected[k])}, got {tuple(np.shape(v))}"
            for k, v in state_dict.items()
            if k in expected and tuple(np.shape(v)) != tuple(expected[k])
        ],
    }


def describe_mismatches(found: Mapping[str, list[str]], limit: int | None = None) -> list[str]:
    """One line per kind of :func:`state_dict_mismatches` that has keys, naming at most ``limit`` of them."""
    lines = []
    for kind, keys in found.items():
        if keys:
            shown = keys if limit is None else keys[:limit]
            more = f"; ... and {len(keys) - len(shown)} more" if len(keys) > len(shown) else ""
            lines.append(f"{kind} keys ({len(keys)}): {(', ' if kind != 'mis-shaped' else '; ').join(shown)}{more}")
    return lines


class Parameter:
    """A trainable array and its accumulated gradient (``None`` until a backward)."""

    __slots__ = ("data", "grad")

    def __init__(self, data: Array) -> None:
        self.data = data
        self.grad: Array | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def size(self) -> int:
        return int(self.data.size)

    def accumulate(self, grad: Array) -> None:
        """Add ``grad`` into ``.grad`` (the backward of every layer calls this)."""
        if self.grad is None:
            # Backward ops return freshly allocated arrays, so owning one is safe.
            self.grad = grad
        else:
            self.grad += grad

    def __repr__(self) -> str:
        return f"Parameter(shape={self.shape}, dtype={self.dtype}, device={backend.device_of(self.data)})"


class Module:
    """Base class: registers Parameters and sub-Modules assigned as attributes."""

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_cache", None)
        object.__setattr__(self, "_has_cache", False)
        object.__setattr__(self, "_path", "")

    def __setattr__(self, name: str, value: Any) -> None:
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}: call Module.__init__() before assigning attributes")
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    # -- running ----------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._has_cache:  # a forward never backpropagated: drop its cache before the new one is computed
            object.__setattr__(self, "_cache", None)
            object.__setattr__(self, "_has_cache", False)
        if not _call_watchers:
            return self.forward(*args, **kwargs)
        watchers = list(_call_watchers)
        for on_enter, _ in watchers:
            on_enter(self)
        output = self.forward(*args, **kwargs)
        for _, on_exit in reversed(watchers):
            on_exit(self, output)
        return output

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not define forward")

    def backward(self, dout: Array) -> Array:
        raise NotImplementedError(f"{type(self).__name__} does not define backward")

    def _save(self, cache: Any) -> None:
        """Keep what backward needs (nothing under :func:`no_grad`)."""
        object.__setattr__(self, "_cache", cache if _GRAD_ENABLED else None)
        object.__setattr__(self, "_has_cache", _GRAD_ENABLED)

    def _peek_cache(self) -> Any:
        """The cache without consuming it (to validate a gradient before any state changes)."""
        if not self._has_cache:
            self._pop_cache()  # raises the usual "backward without forward" error
        return self._cache

    def _pop_cache(self) -> Any:
        """Hand the cache to backward once; a second backward is an error, as in torch."""
        if not self._has_cache:
            raise RuntimeError(
                f"{self._label()}: backward called without a preceding forward "
                "(or a second time, or after a forward under no_grad())"
            )
        cache = self._cache
        object.__setattr__(self, "_cache", None)
        object.__setattr__(self, "_has_cache", False)
        return cache

    def _label(self) -> str:
        return f"{type(self).__name__} '{self._path}'" if self._path else type(self).__name__

    # -- introspection ----------------------------------------------------
    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """Yield (dotted name, module) for this module and all descendants."""
        if prefix and not self._path:
            object.__setattr__(self, "_path", prefix)
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator[Module]:
        for _, m in self.named_modules():
            yield m

    def children(self) -> Iterator[Module]:
        yield from self._modules.values()

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        """Yield (torch-style dotted name, Parameter)."""
        for name, p in self._parameters.items():
            yield (f"{prefix}.{name}" if prefix else name), p
        for name, child in self._modules.items():
            yield from child.named_parameters(f"{prefix}.{name}" if prefix else name)

    def parameters(self) -> Iterator[Parameter]:
        for _, p in self.named_parameters():
            yield p

    def set_names(self) -> Module:
        """Record every descendant's dotted name, used in error messages."""
        for name, m in self.named_modules():
            object.__setattr__(m, "_path", name)
        return self

    # -- state ------------------------------------------------------------
    def zero_grad(self) -> None:
        """Drop accumulated gradients (torch's set_to_none=True behaviour)."""
        for p in self.parameters():
            p.grad = None

    def train(self, mode: bool = True) -> Module:
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self) -> Module:
        return self.train(False)

    def state_dict(self) -> OrderedDict[str, Array]:
        """Copies of every parameter array, keyed by dotted name (torch's keys)."""
        return OrderedDict((name, p.data.copy()) for name, p in self.named_parameters())

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> Module:
        """Copy arrays into the parameters, keeping each parameter's device and dtype.

        Missing, unexpected and mis-shaped keys are all named in one error.
        With ``strict=False`` missing and unexpected keys are ignored, shapes are still checked.
        """
        params = dict(self.named_parameters())
        problems = describe_mismatches(
            state_dict_mismatches({k: p.shape for k, p in params.items()}, state_dict, strict)
        )
        if problems:
            raise ValueError(f"load_state_dict into {type(self).__name__}: " + " | ".join(problems))
        for k, p in params.items():
            if k in state_dict:
                value = backend.to_device(state_dict[k], backend.device_of(p.data))
                p.data = value.astype(p.data.dtype, copy=True)
        return self

    def to(self, device: str | None = None, dtype: Any = None) -> Module:
        """Move parameters (and gradients) to 'cpu'/'gpu' and/or cast to float32/float64."""
        if device is not None:
            backend.check_device(device)
        dt = backend.check_float_dtype(dtype) if dtype is not None else None
        for p in self.parameters():
            for attr in ("data", "grad"):
                arr = getattr(p, attr)
                if arr is None:
                    continue
                if device is not None:
                    arr = backend.to_device(arr, device)
                if dt is not None and arr.dtype != dt:
                    arr = arr.astype(dt)
                setattr(p, attr, arr)
        for m in self.modules():
            object.__setattr__(m, "_cache", None)
            object.__setattr__(m, "_has_cache", False)
        return self

    @property
    def device(self) -> str:
        """Device of the first parameter ('cpu' for a module without parameters)."""
        for p in self.parameters():
            return backend.device_of(p.data)
        return "cpu"

    @property
    def dtype(self) -> np.dtype:
        """dtype of the first parameter (float32 for a module without parameters)."""
        for p in self.parameters():
            return p.data.dtype
        return np.dtype(np.float32)

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        if self._modules:
            for name, child in self._modules.items():
                child_repr = repr(child).replace("\n", "\n  ")
                lines.append(f"\n  ({name}): {child_repr}")
            lines.append("\n")
        lines.append(")")
        return "".join(lines)


class ModuleList(Module):
    """A list of modules registered under '0', '1', ... (torch's naming)."""

    def __init__(self, modules: list[Module] | None = None) -> None:
        super().__init__()
        for m in modules or []:
            self.append(m)

    def append(self, module: Module) -> ModuleList:
        setattr(self, str(len(self._modules)), module)
        return self

    def __getitem__(self, index: int) -> Module:
        return list(self._modules.values())[index]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())


class Sequential(ModuleList):
    """Runs its children in order; backward runs their backwards in reverse order."""

    def __init__(self, *modules: Module) -> None:
        super().__init__(list(modules))

    def forward(self, x: Array) -> Array:
        for m in self:
            x = m(x)
        return x

    def backward(self, dout: Array) -> Array:
        for m in reversed(list(self)):
            dout = m.backward(dout)
        return dout
