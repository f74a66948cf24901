"""The capturable training step (pvt_np.training.capturable) and its static-buffer form (pvt_np.training.cuda_graph),
on NumPy: the eager step's bits, no host transfer and no new state buffer after the warm-up."""

from __future__ import annotations

import itertools
from typing import Any, ClassVar

import numpy as np
import pytest

from pvt_np import backend
from pvt_np.counter_rng import CounterRng
from pvt_np.models import create_model
from pvt_np.nn import CrossEntropyLoss
from pvt_np.optim import AdamW, CosineWarmupSchedule, param_groups_weight_decay
from pvt_np.training.capturable import CapturableStep
from pvt_np.training.cuda_graph import StaticStep
from pvt_np.training.ema import update_ema
from pvt_np.training.trainer import train_step

SEED, EPOCH = 7, 2
# batch shapes, step by step: a partial batch, then the smaller images of a low-resolution epoch, then back
SHAPES = [(4, 16), (4, 16), (3, 16), (4, 12), (4, 12), (3, 12), (4, 16), (4, 16)]


@pytest.fixture(autouse=True)
def _numpy_generator_back() -> Any:
    """The step keys NumPy's masks from the device (use_device_key); the next test gets NumPy's own generator."""
    yield
    backend.manual_seed(0)


def _parts(dtype: Any) -> tuple[Any, CrossEntropyLoss, dict[str, Any]]:
    model = create_model(
        "pvt_v2_b0", num_classes=5, depths=(1, 1, 1, 1), embed_dims=(8, 16, 16, 16), num_heads=(1, 1, 1, 1),
        drop_rate=0.2, drop_path_rate=0.3, cifar=True, dtype=dtype, seed=1,
    )  # fmt: skip
    return model, CrossEntropyLoss(label_smoothing=0.1), model.state_dict()


def _batches(dtype: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(3)
    return [
        (rng.standard_normal((n, 3, s, s)).astype(dtype), rng.integers(0, 5, n)) for n, s in SHAPES
    ]  # fmt: skip


def _optimizer(model: Any, capturable: bool) -> tuple[AdamW, CosineWarmupSchedule]:
    opt = AdamW(param_groups_weight_decay(model, 0.05), lr=3e-3, capturable=capturable)
    return opt, CosineWarmupSchedule(opt, total_steps=6, warmup_steps=2, min_lr=1e-5)


def _eager(dtype: Any) -> tuple[Any, list[float], AdamW, dict[str, Any], list[float]]:
    """The trainer's eager loop of before, with the GPU's mask generator (the counter-based one) on NumPy."""
    model, criterion, ema = _parts(dtype)
    opt, sched = _optimizer(model, capturable=False)
    losses, lrs = [], []
    for b, (x, y) in enumerate(_batches(dtype)):
        seed = backend.derive_seed(SEED, EPOCH, b, 1)
        backend.manual_seed(seed)
        backend._RNGS[np.__name__] = CounterRng(np, seed)  # what get_rng(cupy) holds after manual_seed(seed)
        loss, _ = train_step(model, criterion, opt, x, y, clip_grad=1.0)
        sched.step()
        update_ema(ema, model, 0.9)
        losses.append(float(loss))
        lrs.append(opt.param_groups[0]["lr"])
    backend.manual_seed(0)
    return model, losses, opt, ema, lrs


def _capturable(dtype: Any, static: bool) -> tuple[Any, list[float], AdamW, dict[str, Any], list[float]]:
    model, criterion, ema = _parts(dtype)
    opt, sched = _optimizer(model, capturable=True)
    step = CapturableStep(
        model, criterion, opt, sched, steps_per_epoch=len(SHAPES), log_every=len(SHAPES), clip_grad=1.0, ema=ema,
        ema_decay=0.9,
    )  # fmt: skip
    step.begin_epoch(SEED, EPOCH, 0)
    run = StaticStep(step) if static else step
    lrs = []
    for x, y in _batches(dtype):
        run(x, y)
        lrs.append(float(opt.param_groups[0]["lr"]))
    losses, _ = step.read_tally(len(SHAPES))
    backend.manual_seed(0)
    if static:
        assert len(run.shapes()) == 4 and not run.capture  # NumPy: the no-argument step, called
    return model, list(losses), opt, ema, lrs


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("static", [False, True], ids=["step", "static-buffers"])
def test_capturable_step_is_the_eager_step_bit_for_bit(dtype: Any, static: bool) -> None:
    """Eight steps with dropout, drop path, clipping, EMA, warm-up and cosine, through two batch shapes and two
    partial batches: the same losses, lrs, weights, moments, step counts and EMA, bit for bit."""
    e_model, e_losses, e_opt, e_ema, e_lrs = _eager(dtype)
    c_model, c_losses, c_opt, c_ema, c_lrs = _capturable(dtype, static)
    assert c_losses == e_losses and c_lrs == e_lrs
    assert len(set(e_lrs)) == len(e_lrs) - 2  # the lr moved every step until the cosine's end (min_lr after it)
    for (name, p), q in zip(e_model.named_parameters(), c_model.parameters(), strict=True):
        np.testing.assert_array_equal(q.data, p.data, err_msg=name)
        np.testing.assert_array_equal(c_ema[name], e_ema[name], err_msg=name)
        for key in ("exp_avg", "exp_avg_sq"):
            np.testing.assert_array_equal(c_opt.state[q][key], e_opt.state[p][key], err_msg=f"{name} {key}")
    assert c_opt.state_dict()["state"].keys() == e_opt.state_dict()["state"].keys()
    assert all(s["step"] == len(SHAPES) for s in c_opt.state_dict()["state"].values())


def test_a_step_that_cannot_be_recorded_runs_eagerly_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the capture fails (as a CUDA version may refuse an op inside a capture), the run goes on eagerly with
    a warning and computes what the eager step computes."""
    import pvt_np.training.cuda_graph as cuda_graph

    def refuse(xp: Any, run: Any) -> None:
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(cuda_graph, "_Graph", refuse)
    monkeypatch.setattr(StaticStep, "__init__", _capture_on(StaticStep.__init__))
    with pytest.warns(RuntimeWarning, match="could not be recorded as a CUDA graph.*operation not permitted"):
        _, losses, _, _, _ = _capturable(np.float64, static=True)
    assert losses == _eager(np.float64)[1]


class _FakeStream:
    """A CuPy stream stand-in that records begin/end_capture calls."""

    calls: ClassVar[list[str]] = []

    def __init__(self, non_blocking: bool = False) -> None:
        pass

    def __enter__(self) -> _FakeStream:
        return self

    def __exit__(self, *args: Any) -> None:
        pass

    def begin_capture(self) -> None:
        self.calls.append("begin")

    def end_capture(self) -> None:
        self.calls.append("end")


def _fake_cupy() -> Any:
    import types

    return types.SimpleNamespace(
        ones=np.ones, float32=np.float32, cuda=types.SimpleNamespace(Stream=_FakeStream)
    )  # fmt: skip


def test_a_cupy_that_refuses_gemms_in_a_capture_is_found_before_the_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """CuPy 14's cuBLAS bindings raise NotImplementedError on a recording stream: the probe records one GEMM,
    ends the capture, and reports why; StaticStep then trains eagerly with a warning, never starting to record the
    step itself."""
    import types

    import pvt_np.training.cuda_graph as cuda_graph

    def refuse(a: Any, b: Any) -> None:
        raise NotImplementedError("calling cuBLAS API during stream capture is currently unsupported")

    _FakeStream.calls = []
    monkeypatch.setattr(cuda_graph.blas, "matmul", refuse)
    reason = cuda_graph.capture_refusal(_fake_cupy())
    assert reason == "NotImplementedError: calling cuBLAS API during stream capture is currently unsupported"
    assert _FakeStream.calls == ["begin", "end"]
    monkeypatch.setattr(cuda_graph.blas, "matmul", lambda a, b: a @ b)
    assert cuda_graph.capture_refusal(_fake_cupy()) is None

    def never(xp: Any, run: Any) -> None:
        raise AssertionError("the step was recorded after the probe failed")

    monkeypatch.setattr(cuda_graph, "_Graph", never)
    monkeypatch.setattr(cuda_graph, "capture_refusal", lambda xp: "NotImplementedError: cuBLAS")
    with pytest.warns(RuntimeWarning, match="cannot be recorded as a CUDA graph here.*cuBLAS"):
        static = StaticStep(types.SimpleNamespace(xp=_fake_cupy()))  # type: ignore[arg-type]
    assert not static.capture


def _capture_on(init: Any) -> Any:
    """StaticStep.__init__ that asks for capture on NumPy too (where there is nothing to record)."""

    def patched(self: StaticStep, step: CapturableStep, capture: bool = True) -> None:
        init(self, step, capture)
        self.capture = True

    return patched


class HostRead(AssertionError):
    pass


class Guarded(np.ndarray):
    """A NumPy array standing in for a device array: while ``armed``, any read of a value on the host raises."""

    armed = False

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        if Guarded.armed:
            raise HostRead("a host read inside the step")
        return getattr(np.ndarray, self._name)(self.view(np.ndarray), *args, **kwargs)


for _name in ("__float__", "__int__", "__index__", "__bool__", "__complex__", "item", "tolist", "__format__"):

    def _method(self: Any, *args: Any, _name: str = _name, **kwargs: Any) -> Any:
        if Guarded.armed:
            raise HostRead(f"{_name} inside the step")
        return getattr(self.view(np.ndarray), _name)(*args, **kwargs)

    setattr(Guarded, _name, _method)


def _guard_everything(step: CapturableStep) -> list[Any]:
    """Make every array of the step's state a Guarded view (the same memory); returns them all."""
    opt, sched = step.optimizer, step.schedule
    arrays: list[Any] = []

    def guard(a: Any) -> Any:
        g = a.view(Guarded)
        arrays.append(g)
        return g

    for p in step.model.parameters():
        p.data, p.grad = guard(p.data), guard(p.grad)
    for state in [*opt.state.values(), *opt._scalars.values()]:
        for k, v in state.items():
            state[k] = guard(v)
    opt._tables = {k: (guard(a), guard(b), h) for k, (a, b, h) in opt._tables.items()}
    d = sched._device
    d["step"], d["index"] = guard(d["step"]), guard(d["index"])
    d["tables"] = [guard(t) for t in d["tables"]]
    d["lrs"] = [guard(t) for t in d["lrs"]]
    for group, lr in zip(opt.param_groups, d["lrs"], strict=True):
        group["lr"] = lr
    for name in ("batch", "keys", "key", "slot", "tally"):
        setattr(step, name, guard(getattr(step, name)))
    return arrays


def _armed_steps(monkeypatch: pytest.MonkeyPatch, step: Any, batches: list[Any], watch: Any) -> list[Any]:
    """Run ``step`` on each batch with the guard armed and ``backend.to_numpy`` refused; ``watch()`` after each."""
    real = backend.to_numpy

    def to_numpy(x: Any) -> np.ndarray:
        if Guarded.armed:
            raise HostRead("backend.to_numpy inside the step")
        return real(x)

    monkeypatch.setattr(backend, "to_numpy", to_numpy)
    seen = []
    for x, y in batches:
        Guarded.armed = True
        try:
            step(x.view(Guarded), y)  # the labels stay host arrays: NumPy's loss checks their range on the host
        finally:
            Guarded.armed = False
        seen.append(watch())
    return seen


def test_step_after_warm_up_reads_nothing_on_the_host_and_makes_no_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """After one warm-up step, three steps with every state array a Guarded view: no host read, the same arrays
    (no new buffer for the weights, gradients, moments, counters, lrs, step sizes, key or tally), and the per-step
    values changed on the device between steps."""
    model, criterion, ema = _parts(np.float32)
    opt, sched = _optimizer(model, capturable=True)
    step = CapturableStep(model, criterion, opt, sched, steps_per_epoch=8, log_every=4, clip_grad=1.0, ema=ema,
                          ema_decay=0.9)  # fmt: skip
    step.begin_epoch(SEED, EPOCH, 0)
    batches = [(x, y) for x, y in _batches(np.float32) if x.shape[0] == 4 and x.shape[2] == 16]
    step(*batches[0])
    arrays = _guard_everything(step)
    first = next(iter(model.parameters()))
    scalars = opt._scalars[first]
    state = opt.state[first]

    def watch() -> tuple[Any, ...]:
        values = (opt.param_groups[0]["lr"], scalars["step_size"], scalars["bc2_sqrt"], step.key, state["step"])
        return tuple(np.array(v) for v in values)

    seen = _armed_steps(monkeypatch, step, batches[1:], watch)
    after = [*(p.data for p in model.parameters()), *(p.grad for p in model.parameters())]
    after += [v for s in [*opt.state.values(), *opt._scalars.values()] for v in s.values()]
    assert all(any(a is b for b in arrays) for a in after)  # every state array is still the one guarded
    for earlier, later in itertools.pairwise(seen):
        assert all(not np.array_equal(a, b) for a, b in zip(earlier, later, strict=True))
    assert [int(s[-1]) for s in seen] == [2, 3, 4]
    losses, _ = step.read_tally(4)
    assert np.all(np.isfinite(losses)) and np.all(losses > 0)


def test_the_guard_catches_a_host_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """The guard can fail: the eager loop's per-step reads (a loss as a float, the lr as a number) raise."""
    model, criterion, _ = _parts(np.float32)
    opt, sched = _optimizer(model, capturable=True)
    step = CapturableStep(model, criterion, opt, sched, steps_per_epoch=8, log_every=4)
    step.begin_epoch(SEED, EPOCH, 0)
    batches = [(x, y) for x, y in _batches(np.float32) if x.shape[0] == 4 and x.shape[2] == 16]
    step(*batches[0])
    _guard_everything(step)

    def reads_the_loss(x: Any, y: Any) -> None:
        step(x, y)
        step.read_tally(1)

    def reads_the_lr(x: Any, y: Any) -> None:
        step(x, y)
        float(opt.param_groups[0]["lr"])

    for eager_read in (reads_the_loss, reads_the_lr):
        with pytest.raises(HostRead):
            _armed_steps(monkeypatch, eager_read, batches[1:2], lambda: None)


def test_capturable_adamw_state_dict_is_the_eager_format_and_loads_old_ones() -> None:
    """Step counts are saved as Python ints and lrs as floats; an eager optimizer's state loads into a capturable
    one (and back), and both continue with the same bits."""
    model, _, _ = _parts(np.float64)
    params = list(model.parameters())[:3]
    rng = np.random.default_rng(0)
    eager = AdamW(params, lr=1e-2)
    for _ in range(3):
        for p in params:
            p.grad = rng.standard_normal(p.shape)
        eager.step()
    saved = eager.state_dict()
    copies = [p.data.copy() for p in params]
    twin = [type(p)(c.copy()) for p, c in zip(params, copies, strict=True)]
    capturable = AdamW(twin, lr=1e-2, capturable=True)
    capturable.load_state_dict(saved)
    assert all(isinstance(capturable.state[p]["step"], np.ndarray) for p in twin)
    grads = [rng.standard_normal(p.shape) for p in params]
    for p, q, g in zip(params, twin, grads, strict=True):
        p.grad, q.grad = g.copy(), g.copy()
    eager.step()
    capturable.step()
    for p, q in zip(params, twin, strict=True):
        np.testing.assert_array_equal(q.data, p.data)
    back = capturable.state_dict()
    assert [s["step"] for s in back["state"].values()] == [4, 4, 4]
    assert all(type(s["step"]) is int for s in back["state"].values())
    assert type(back["param_groups"][0]["lr"]) is float


def test_device_schedule_state_dict_round_trip() -> None:
    """A schedule on the device saves the host format, and restores its step and lr there."""
    model, _, _ = _parts(np.float64)
    opt, sched = _optimizer(model, capturable=True)
    sched.to_device(np)
    for _ in range(3):
        sched.step()
    saved = sched.state_dict()
    assert saved["last_step"] == 3 and type(saved["last_step"]) is int
    host_opt, host_sched = _optimizer(model, capturable=False)
    host_sched.load_state_dict(saved)
    assert float(opt.param_groups[0]["lr"]) == host_opt.param_groups[0]["lr"] == sched.get_last_lr()[0]
    other_opt, other = _optimizer(model, capturable=True)
    other.to_device(np)
    other.load_state_dict(saved)
    assert other.last_step == 3 and float(other_opt.param_groups[0]["lr"]) == host_opt.param_groups[0]["lr"]
    other.step()
    host_sched.step()
    assert float(other_opt.param_groups[0]["lr"]) == host_opt.param_groups[0]["lr"]
