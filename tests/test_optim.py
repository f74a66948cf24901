"""pvt_np.optim against torch.optim / torch.nn.utils / timm: same parameters, same gradients, same numbers."""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from pvt_np import nn
from pvt_np.nn import Parameter
from pvt_np.optim import (
    SGD,
    AdamW,
    CosineWarmupSchedule,
    clip_grad_norm_,
    cosine_warmup_lr,
    param_groups_weight_decay,
)

torch = pytest.importorskip("torch")

SHAPES = [(7, 5), (5,), (3, 4, 2, 2), (1,)]
STEPS = 35
# max |ours - torch| / max |torch| per array
TOL = {np.float64: 1e-12, np.float32: 1e-6}


def make_params(dtype: Any, seed: int = 0) -> tuple[list[Parameter], list[Any]]:
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    return [Parameter(a.copy()) for a in arrays], [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in arrays]


def grad_for(step: int, index: int, shape: tuple[int, ...], dtype: Any) -> np.ndarray | None:
    """Deterministic gradient of parameter ``index`` at ``step``; None (no grad) for param 3 every 4th step."""
    if index == 3 and step % 4 == 1:
        return None
    rng = np.random.default_rng([step, index])
    scale = 10.0 ** rng.uniform(-3, 1)
    return (scale * rng.standard_normal(shape)).astype(dtype)


def set_grads(step: int, ours: list[Parameter], theirs: list[Any] | None = None) -> None:
    for i, p in enumerate(ours):
        g = grad_for(step, i, p.shape, p.dtype)
        p.grad = None if g is None else g.copy()
        if theirs is not None:
            theirs[i].grad = None if g is None else torch.from_numpy(g.copy())


def assert_close(ours: np.ndarray, ref: np.ndarray, rel: float, what: str) -> None:
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape and ours.dtype == ref.dtype, what
    scale = max(float(np.max(np.abs(ref))), np.finfo(ref.dtype).tiny)
    err = float(np.max(np.abs(ours.astype(np.float64) - ref.astype(np.float64)))) / scale
    assert err <= rel, f"{what}: relative error {err:.3g} > {rel:.3g}"


def run_parity(
    make_ours: Callable[[list[Parameter]], Any],
    make_torch: Callable[[list[Any]], Any],
    dtype: Any,
    state_names: dict[str, str],
) -> None:
    ours, theirs = make_params(dtype)
    opt, topt = make_ours(ours), make_torch(theirs)
    assert len(opt.param_groups) == len(topt.param_groups)
    for t in range(STEPS):
        for g, tg in zip(opt.param_groups, topt.param_groups, strict=True):  # a per-step lr, as a scheduler sets
            g["lr"] = tg["lr"] = tg.setdefault("base", tg["lr"]) * (1 + 0.5 * math.sin(t))
        set_grads(t, ours, theirs)
        opt.step()
        topt.step()
    rel = TOL[dtype]
    for i, (p, q) in enumerate(zip(ours, theirs, strict=True)):
        assert_close(p.data, q.detach().numpy(), rel, f"param {i}")
        tstate = topt.state[q]
        for ours_key, torch_key in state_names.items():
            if ours_key == "step":
                assert opt.state[p]["step"] == int(tstate["step"])
            else:
                assert_close(opt.state[p][ours_key], tstate[torch_key].numpy(), rel, f"param {i} {ours_key}")
    # parameter 3 missed some gradients: its step counter must lag, as in torch
    if "step" in state_names:
        assert opt.state[ours[3]]["step"] == STEPS - len(range(1, STEPS, 4))


def adamw_groups(ps: list[Any]) -> list[dict[str, Any]]:
    return [
        {"params": [ps[0], ps[2]], "weight_decay": 0.0, "lr": 5e-3},
        {"params": [ps[1], ps[3]], "betas": (0.3, 0.9), "eps": 1e-3},  # 1 - beta1 >= 0.5: torch's other lerp branch
    ]


ADAMW_CASES = {
    "no_decay": (lambda ps: ps, {"lr": 1e-2, "weight_decay": 0.0}),
    "decay": (lambda ps: ps, {"lr": 3e-3, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.05}),
    "defaults": (lambda ps: ps, {}),
    "groups": (adamw_groups, {"lr": 1e-2, "weight_decay": 0.1}),
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", sorted(ADAMW_CASES))
def test_adamw_matches_torch(case: str, dtype: Any) -> None:
    groups, kwargs = ADAMW_CASES[case]
    run_parity(
        lambda ps: AdamW(groups(ps), **kwargs),
        lambda ps: torch.optim.AdamW(groups(ps), foreach=False, **kwargs),
        dtype,
        {"step": "step", "exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq"},
    )


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.3, 0.95)], ids=["lerp-small-w", "lerp-large-w"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_adamw_chunked_update_is_the_whole_array_update(dtype: Any, betas: tuple[float, float], threads: int) -> None:
    """A parameter of 2.5 chunks is updated in chunks on the worker threads: bit for bit the update of the whole
    array (the same operations, elementwise), and torch's to its tolerance; a small one alongside, whole."""
    from pvt_np.ops import parallel
    from pvt_np.optim.adamw import ADAMW_CHUNK_ELEMENTS, _adamw_whole

    rng = np.random.default_rng(5)
    shapes = [(5 * ADAMW_CHUNK_ELEMENTS // 2,), (3, 7)]
    arrays = [rng.standard_normal(s).astype(dtype) for s in shapes]
    ours = [Parameter(a.copy()) for a in arrays]
    theirs = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in arrays]
    whole = [a.copy() for a in arrays]
    moments = [(np.zeros_like(a), np.zeros_like(a)) for a in arrays]
    kwargs = {"lr": 1e-2, "betas": betas, "weight_decay": 0.1}
    before = parallel.get_num_threads()
    parallel.configure_threads(threads)
    try:
        opt, topt = AdamW(ours, **kwargs), torch.optim.AdamW(theirs, foreach=False, **kwargs)
        for t in range(1, 4):
            for i, (p, tp) in enumerate(zip(ours, theirs, strict=True)):
                g = (10.0 ** (t - 2) * rng.standard_normal(p.shape)).astype(dtype)
                p.grad, tp.grad = g.copy(), torch.from_numpy(g.copy())
                opts = {"decay": 1 - 1e-2 * 0.1, "w": 1 - betas[0], "beta2": betas[1], "eps": 1e-8,
                        "step_size": 1e-2 / (1 - betas[0] ** t), "bc2_sqrt": (1 - betas[1] ** t) ** 0.5}  # fmt: skip
                _adamw_whole(whole[i], g, *moments[i], opts)
            opt.step()
            topt.step()
    finally:
        parallel.configure_threads(before)
    for i, (p, tp) in enumerate(zip(ours, theirs, strict=True)):
        np.testing.assert_array_equal(p.data, whole[i])
        np.testing.assert_array_equal(opt.state[p]["exp_avg"], moments[i][0])
        np.testing.assert_array_equal(opt.state[p]["exp_avg_sq"], moments[i][1])
        assert_close(p.data, tp.detach().numpy(), TOL[dtype], f"param {i}")


def sgd_groups(ps: list[Any]) -> list[dict[str, Any]]:
    return [
        {"params": [ps[0], ps[3]], "momentum": 0.9, "nesterov": True, "weight_decay": 1e-2},
        {"params": [ps[1], ps[2]], "momentum": 0.5, "dampening": 0.25},
    ]


SGD_CASES = {
    "plain": (lambda ps: ps, {"lr": 0.05}),
    "decay": (lambda ps: ps, {"lr": 0.05, "weight_decay": 1e-2}),
    "momentum": (lambda ps: ps, {"lr": 0.02, "momentum": 0.9}),
    "momentum_dampening_decay": (lambda ps: ps, {"lr": 0.02, "momentum": 0.9, "dampening": 0.1, "weight_decay": 1e-3}),
    "nesterov": (lambda ps: ps, {"lr": 0.02, "momentum": 0.9, "nesterov": True}),
    "nesterov_decay": (lambda ps: ps, {"lr": 0.02, "momentum": 0.8, "nesterov": True, "weight_decay": 5e-2}),
    "groups": (sgd_groups, {"lr": 0.03}),
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", sorted(SGD_CASES))
def test_sgd_matches_torch(case: str, dtype: Any) -> None:
    groups, kwargs = SGD_CASES[case]
    has_momentum = kwargs.get("momentum", 0) != 0
    run_parity(
        lambda ps: SGD(groups(ps), **kwargs),
        lambda ps: torch.optim.SGD(groups(ps), foreach=False, **kwargs),
        dtype,
        {"momentum_buffer": "momentum_buffer"} if has_momentum else {},
    )


def test_step_skips_missing_grads_and_never_touches_grads() -> None:
    ours, _ = make_params(np.float64)
    before = [p.data.copy() for p in ours]
    opt = AdamW(ours, lr=0.1, weight_decay=0.1)
    ours[0].grad = np.ones(ours[0].shape)
    grad = ours[0].grad.copy()
    opt.step()
    assert list(opt.state) == [ours[0]]
    assert not np.array_equal(ours[0].data, before[0])
    assert all(np.array_equal(p.data, b) for p, b in zip(ours[1:], before[1:], strict=True))
    np.testing.assert_array_equal(ours[0].grad, grad)
    sgd = SGD(ours, lr=0.1, momentum=0.9, weight_decay=0.1, nesterov=True)
    sgd.step()
    sgd.step()
    np.testing.assert_array_equal(ours[0].grad, grad)


def test_zero_grad() -> None:
    ours, _ = make_params(np.float32)
    opt = SGD(ours, lr=0.1)
    set_grads(0, ours)
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is None or not p.grad.any() for p in ours)
    opt.zero_grad()
    assert all(p.grad is None for p in ours)


def test_step_returns_closure_value() -> None:
    ours, _ = make_params(np.float64)
    assert AdamW(ours).step(lambda: 3.5) == 3.5


# -- clip_grad_norm_ ----------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("max_norm", [1e-3, 1.0, 1e6, math.inf])
def test_clip_grad_norm_matches_torch(max_norm: float, dtype: Any) -> None:
    ours, theirs = make_params(dtype)
    set_grads(1, ours, theirs)  # parameter 3 has no gradient at step 1
    total = clip_grad_norm_(ours, max_norm)
    ttotal = torch.nn.utils.clip_grad_norm_(theirs, max_norm, foreach=False)
    assert isinstance(total, np.ndarray) and total.ndim == 0 and total.dtype == dtype
    rel = TOL[dtype]
    assert_close(total, ttotal.numpy(), rel, "total norm")
    for i, (p, q) in enumerate(zip(ours, theirs, strict=True)):
        if q.grad is None:
            assert p.grad is None
        else:
            assert_close(p.grad, q.grad.numpy(), rel, f"grad {i}")


def test_clip_grad_norm_edge_cases() -> None:
    p = Parameter(np.zeros(3))
    assert clip_grad_norm_([p], 1.0) == 0.0  # no gradients: 0, nothing to scale
    p.grad = np.array([3.0, 4.0, 0.0])
    total = clip_grad_norm_(p, 1.0)  # a single Parameter is accepted, as in torch
    assert float(total) == 5.0
    np.testing.assert_allclose(p.grad, [0.6, 0.8, 0.0], rtol=1e-6)


# -- param_groups_weight_decay ------------------------------------------------------
class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pos_embed = Parameter(np.zeros((1, 5, 8), dtype=np.float32))
        self.body = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 3))
        self.head = nn.Linear(3, 2, bias=False)


class _TorchNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pos_embed = torch.nn.Parameter(torch.zeros(1, 5, 8))
        self.body = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 3))
        self.head = torch.nn.Linear(3, 2, bias=False)


@pytest.mark.parametrize("no_wd", [(), ("pos_embed",), ("pos_embed", "body.2.*")])
def test_param_groups_weight_decay_matches_timm(no_wd: tuple[str, ...]) -> None:
    timm_optim = pytest.importorskip("timm.optim")
    model, tmodel = _Net(), _TorchNet()
    names = {id(p): n for n, p in model.named_parameters()}
    tnames = {id(p): n for n, p in tmodel.named_parameters()}
    assert sorted(names.values()) == sorted(tnames.values())
    groups = param_groups_weight_decay(model, 0.05, no_weight_decay=no_wd)
    tgroups = timm_optim.param_groups_weight_decay(tmodel, 0.05, no_weight_decay_list=no_wd)
    assert [g["weight_decay"] for g in groups] == [0.0, 0.05] == [g["weight_decay"] for g in tgroups]
    for g, tg in zip(groups, tgroups, strict=True):
        assert [names[id(p)] for p in g["params"]] == [tnames[id(p)] for p in tg["params"]]
    AdamW(groups, lr=1e-3)  # the groups feed an optimizer directly


# -- CosineWarmupSchedule -----------------------------------------------------------
def reference_lr(t: int, base: float, total: int, warmup: int, lr0: float, min_lr: float) -> float:
    """The docstring's formula, written out independently of pvt_np."""
    if t < warmup:
        return lr0 + (base - lr0) * t / warmup
    if t >= total:
        return min_lr
    return min_lr + 0.5 * (base - min_lr) * (1 + math.cos(math.pi * (t - warmup) / (total - warmup)))


@pytest.mark.parametrize(
    ("total", "warmup", "lr0", "min_lr"),
    [(20, 0, 0.0, 0.0), (20, 5, 1e-6, 1e-5), (12, 12, 0.0, 0.0), (10, 1, 0.0, 1e-6), (1, 0, 0.0, 2e-6)],
)
def test_schedule_matches_torch_lambda_lr(total: int, warmup: int, lr0: float, min_lr: float) -> None:
    bases = [1e-3, 5e-4]
    ours, theirs = make_params(np.float64)
    opt = AdamW([{"params": ours[:2]}, {"params": ours[2:], "lr": bases[1]}], lr=bases[0])
    topt = torch.optim.AdamW([{"params": theirs[:2]}, {"params": theirs[2:], "lr": bases[1]}], lr=bases[0])
    sched = CosineWarmupSchedule(opt, total, warmup_steps=warmup, warmup_lr_init=lr0, min_lr=min_lr)
    lambdas = [
        (lambda t, b=b: reference_lr(t, b, total, warmup, lr0, min_lr) / b)  # LambdaLR multiplies by base_lr
        for b in bases
    ]
    tsched = torch.optim.lr_scheduler.LambdaLR(topt, lambdas)
    for t in range(total + 4):
        assert sched.last_step == t
        lrs = sched.get_lr()
        assert lrs == [g["lr"] for g in opt.param_groups]
        for lr, tlr in zip(lrs, tsched.get_last_lr(), strict=True):
            assert lr == pytest.approx(tlr, rel=1e-13, abs=0.0)
        sched.step()
        topt.step()  # no gradients: changes nothing, but keeps torch's call order
        tsched.step()
    # exact values at the boundaries
    for b in bases:
        if warmup:
            assert cosine_warmup_lr(0, b, total, warmup, lr0, min_lr) == lr0
            assert cosine_warmup_lr(warmup - 1, b, total, warmup, lr0, min_lr) < b or lr0 >= b
        if warmup < total:
            assert cosine_warmup_lr(warmup, b, total, warmup, lr0, min_lr) == b
        assert cosine_warmup_lr(total, b, total, warmup, lr0, min_lr) == min_lr
        assert cosine_warmup_lr(total + 100, b, total, warmup, lr0, min_lr) == min_lr


def test_schedule_midpoint_and_torch_optimizer() -> None:
    assert cosine_warmup_lr(15, 1.0, 25, 5, 0.0, 0.2) == pytest.approx(0.6, abs=1e-15)
    # any optimizer with param_groups can be driven, torch's included
    _, theirs = make_params(np.float64)
    topt = torch.optim.SGD(theirs, lr=0.1)
    sched = CosineWarmupSchedule(topt, 10, warmup_steps=2)
    assert topt.param_groups[0]["lr"] == 0.0
    sched.step()
    assert topt.param_groups[0]["lr"] == pytest.approx(0.05)


# -- checkpoints --------------------------------------------------------------------
def _walk_leaves(obj: Any) -> list[Any]:
    if isinstance(obj, dict):
        return [leaf for v in obj.values() for leaf in _walk_leaves(v)]
    if isinstance(obj, (list, tuple)):
        return [leaf for v in obj for leaf in _walk_leaves(v)]
    return [obj]


OPTIMIZERS = {
    "adamw_groups": lambda ps: AdamW(adamw_groups(ps), lr=1e-2, weight_decay=0.1),
    "sgd_groups": lambda ps: SGD(sgd_groups(ps), lr=0.03),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_state_dict_round_trip_continues_bitwise(name: str) -> None:
    make = OPTIMIZERS[name]
    ours, _ = make_params(np.float64)
    opt = make(ours)
    sched = CosineWarmupSchedule(opt, 30, warmup_steps=4, warmup_lr_init=1e-4, min_lr=1e-5)
    for t in range(10):
        set_grads(t, ours)
        opt.step()
        sched.step()

    saved = pickle.loads(pickle.dumps((opt.state_dict(), sched.state_dict())))
    for leaf in _walk_leaves(saved):
        assert leaf is None or isinstance(leaf, (np.ndarray, int, float, bool, str)), type(leaf)
    snapshot = pickle.dumps(saved)

    clones = [Parameter(p.data.copy()) for p in ours]
    opt2 = make(clones)
    for g in opt2.param_groups:  # the checkpoint, not the constructor, decides the options
        g["lr"] = 123.0
    sched2 = CosineWarmupSchedule(opt2, 30)
    opt2.load_state_dict(saved[0])
    sched2.load_state_dict(saved[1])
    assert sched2.last_step == 10 and sched2.get_lr() == sched.get_lr()

    for t in range(10, 25):
        for params in (ours, clones):
            set_grads(t, params)
        opt.step()
        sched.step()
        opt2.step()
        sched2.step()
    for p, c in zip(ours, clones, strict=True):
        np.testing.assert_array_equal(p.data, c.data)
        for key, value in opt.state[p].items():
            np.testing.assert_array_equal(value, opt2.state[c][key])
    assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in opt2.param_groups]
    assert pickle.dumps(saved) == snapshot  # the saved state is a copy: later steps did not change it


def test_load_state_dict_follows_parameter_dtype() -> None:
    ours, _ = make_params(np.float64)
    opt = AdamW(ours)
    set_grads(0, ours)
    opt.step()
    saved = opt.state_dict()
    ours32, _ = make_params(np.float32)
    opt32 = AdamW(ours32)
    opt32.load_state_dict(saved)
    for p in ours32:
        if p in opt32.state:
            state = opt32.state[p]
            assert state["exp_avg"].dtype == np.float32 and state["exp_avg_sq"].dtype == np.float32
            assert isinstance(state["step"], int)
    assert not np.shares_memory(opt32.state[ours32[0]]["exp_avg"], saved["state"][0]["exp_avg"])


# -- bad input ------------------------------------------------------------------------
def _params() -> list[Parameter]:
    return make_params(np.float64)[0]


BAD_CONSTRUCTORS = {
    "adamw_negative_lr": (lambda ps: AdamW(ps, lr=-1e-3), r"lr: expected a finite number >= 0, got -0\.001"),
    "adamw_nan_lr": (lambda ps: AdamW(ps, lr=math.nan), r"lr: expected"),
    "adamw_negative_eps": (lambda ps: AdamW(ps, eps=-1e-8), r"eps: expected a finite number >= 0"),
    "adamw_negative_wd": (lambda ps: AdamW(ps, weight_decay=-0.1), r"weight_decay: expected"),
    "adamw_beta1_one": (
        lambda ps: AdamW(ps, betas=(1.0, 0.999)),
        r"betas\[0\]: expected a number in \[0, 1\), got 1\.0",
    ),
    "adamw_beta2_negative": (lambda ps: AdamW(ps, betas=(0.9, -0.1)), r"betas\[1\]: expected"),
    "adamw_betas_not_pair": (lambda ps: AdamW(ps, betas=(0.9,)), r"betas: expected a pair"),
    "adamw_empty": (lambda ps: AdamW([]), r"params: expected at least one Parameter, got an empty list"),
    "adamw_empty_groups": (lambda ps: AdamW([{"params": []}]), r"params: expected at least one Parameter"),
    "adamw_group_negative_wd": (
        lambda ps: AdamW([{"params": ps[:2]}, {"params": ps[2:], "weight_decay": -1.0}]),
        r"param_groups\[1\]: weight_decay: expected a finite number >= 0, got -1\.0",
    ),
    "adamw_param_in_two_groups": (
        lambda ps: AdamW([{"params": ps[:2]}, {"params": ps[1:]}]),
        r"param_groups\[1\]: params\[0\].*one group only, got it also in param_groups\[0\]",
    ),
    "adamw_param_twice_in_group": (lambda ps: AdamW([ps[0], ps[1], ps[0]]), r"params\[2\] repeating params\[0\]"),
    "adamw_group_without_params": (lambda ps: AdamW([{"lr": 0.1}]), r"expected a 'params' entry"),
    "sgd_negative_lr": (lambda ps: SGD(ps, lr=-0.1), r"SGD.*lr: expected"),
    "sgd_negative_momentum": (lambda ps: SGD(ps, lr=0.1, momentum=-0.5), r"momentum: expected"),
    "sgd_negative_wd": (lambda ps: SGD(ps, lr=0.1, weight_decay=-1e-4), r"weight_decay: expected"),
    "sgd_nesterov_no_momentum": (lambda ps: SGD(ps, lr=0.1, nesterov=True), r"nesterov=True: expected momentum > 0"),
    "sgd_nesterov_dampening": (
        lambda ps: SGD(ps, lr=0.1, momentum=0.9, dampening=0.1, nesterov=True),
        r"dampening == 0",
    ),
    "clip_negative_max_norm": (lambda ps: clip_grad_norm_(ps, -1.0), r"max_norm: expected a number >= 0"),
    "schedule_zero_total": (lambda ps: CosineWarmupSchedule(SGD(ps), 0), r"total_steps: expected an integer >= 1"),
    "schedule_long_warmup": (
        lambda ps: CosineWarmupSchedule(SGD(ps), 10, warmup_steps=11),
        r"warmup_steps: expected at most total_steps=10, got 11",
    ),
    "schedule_negative_min_lr": (lambda ps: CosineWarmupSchedule(SGD(ps), 10, min_lr=-1.0), r"min_lr: expected"),
    "groups_negative_wd": (lambda ps: param_groups_weight_decay(_Net(), -0.1), r"weight_decay: expected"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONSTRUCTORS))
def test_bad_arguments_raise_value_error(case: str) -> None:
    build, message = BAD_CONSTRUCTORS[case]
    with pytest.raises(ValueError, match=message):
        build(_params())


def test_bad_param_types_raise_type_error() -> None:
    ps = _params()
    with pytest.raises(TypeError, match="iterable of Parameters"):
        AdamW(ps[0])
    with pytest.raises(TypeError, match=r"params\[1\]: expected a Parameter, got ndarray"):
        SGD([ps[0], ps[1].data])


def _trained_adamw(ps: list[Parameter]) -> AdamW:
    opt = AdamW([{"params": ps[:2]}, {"params": ps[2:]}])
    set_grads(0, ps)
    opt.step()
    return opt


def _sgd_state_for_adamw() -> dict[str, Any]:
    ps = _params()
    sgd = SGD([{"params": ps[:2]}, {"params": ps[2:]}], lr=0.1, momentum=0.9)
    set_grads(0, ps)
    sgd.step()
    return sgd.state_dict()


def _reshaped(sd: dict[str, Any]) -> dict[str, Any]:
    sd["state"][0]["exp_avg"] = sd["state"][0]["exp_avg"][:3]
    return sd


BAD_STATE_DICTS = {
    "group_count": (
        lambda sd: {"state": sd["state"], "param_groups": sd["param_groups"][:1]},
        r"expected 2 parameter groups, got 1",
    ),
    "param_count": (
        lambda sd: {
            "state": sd["state"],
            "param_groups": [sd["param_groups"][0], {**sd["param_groups"][1], "params": [2, 3, 4]}],
        },
        r"param_groups\[1\]: expected 2 parameters, got 3",
    ),
    "shape": (_reshaped, r"\['exp_avg'\]: expected shape \(7, 5\), got \(3, 5\)"),
    "other_optimizer": (lambda sd: _sgd_state_for_adamw(), r"expected keys \['exp_avg', 'exp_avg_sq', 'step'\]"),
    "bad_option": (
        lambda sd: {"state": sd["state"], "param_groups": [sd["param_groups"][0], {**sd["param_groups"][1], "lr": -1}]},
        r"param_groups\[1\]: lr: expected",
    ),
    "not_a_state_dict": (lambda sd: {"state": {}}, r"expected keys \['param_groups', 'state'\]"),
}


@pytest.mark.parametrize("case", sorted(BAD_STATE_DICTS))
def test_bad_state_dict_raises_and_changes_nothing(case: str) -> None:
    corrupt, message = BAD_STATE_DICTS[case]
    ps = _params()
    opt = _trained_adamw(ps)
    before = pickle.dumps(opt.state_dict())
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(corrupt(opt.state_dict()))
    assert pickle.dumps(opt.state_dict()) == before


def test_bad_schedule_state_dict() -> None:
    ps = _params()
    sched = CosineWarmupSchedule(SGD([{"params": ps[:2]}, {"params": ps[2:]}], lr=0.1), 10)
    sd = sched.state_dict()
    with pytest.raises(ValueError, match=r"base_lrs: expected 2 values \(one per group\), got 1"):
        sched.load_state_dict({**sd, "base_lrs": [0.1]})
    with pytest.raises(ValueError, match=r"state_dict: expected keys"):
        sched.load_state_dict({"last_step": 3})
