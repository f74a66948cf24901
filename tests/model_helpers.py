"""Helpers for tests/test_model.py: timm reference models, weight randomisation, forward+backward runners.

Every comparison is relative to the reference tensor's largest magnitude,
max |ours - ref| / max |ref|, so one number per tensor says how many
significant digits agree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

import pvt_np
from pvt_np.nn import Module

# The CIFAR config (pvt_np.models.CIFAR_OVERRIDES), written out here so the timm mirror does not
# take its geometry from the code under test; test_cifar_overrides_are_documented ties the two.
CIFAR_PATCH_SIZE, CIFAR_STRIDE, CIFAR_SR_RATIOS = 3, 2, (4, 2, 1, 1)


def rel_err(actual: Any, expected: Any) -> float:
    """max |actual - expected| / max |expected| (the absolute error when expected is all zeros)."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape, f"shape {a.shape}, expected {e.shape}"
    assert np.all(np.isfinite(a)), "non-finite values"
    if e.size == 0:
        return 0.0
    diff, scale = float(np.abs(a - e).max()), float(np.abs(e).max())
    return diff / scale if scale > 0.0 else diff


def assert_all_close(errors: Mapping[str, float], tol: float, what: str) -> float:
    """Assert every error <= tol; the message names the worst tensors and their errors. Returns the worst."""
    assert errors, f"{what}: nothing compared"
    ranked = sorted(errors.items(), key=lambda kv: -kv[1])
    worst = ranked[0][1]
    listing = ", ".join(f"{k}={v:.2e}" for k, v in ranked[:5])
    assert worst <= tol, f"{what}: max relative error {worst:.3e} > {tol:.0e} (worst: {listing})"
    return worst


def timm_pvt(name: str, cifar: bool = False, **kwargs: Any) -> nn.Module:
    """timm's model for a pvt_np name, in float64.

    ``cifar=True`` mirrors create_model(..., cifar=True): timm builds the variant with the CIFAR
    sr_ratios, and its hard-coded 7x7 / stride-4 stem is replaced by a 3x3 / stride-2
    OverlapPatchEmbed (same parameter names, same place in the state_dict).
    """
    import timm
    from timm.models.pvt_v2 import OverlapPatchEmbed

    if cifar:
        kwargs = {"sr_ratios": CIFAR_SR_RATIOS, **kwargs}
    tm = timm.create_model(name, **kwargs)
    if cifar:
        tm.patch_embed = OverlapPatchEmbed(
            patch_size=CIFAR_PATCH_SIZE,
            stride=CIFAR_STRIDE,
            in_chans=tm.patch_embed.proj.in_channels,
            embed_dim=tm.patch_embed.proj.out_channels,
        )
    return tm.double()


def randomize_(module: nn.Module, seed: int) -> nn.Module:
    """Give every parameter of a torch module a generic, seeded value (in place).

    Linear weights N(0, 1/fan_in) (attention logits of order one, so softmax is far from
    uniform), conv weights N(0, 2/fan_out) (the PVT init), LayerNorm weights 1 + N(0, 0.2^2),
    every bias and LayerNorm bias N(0, 0.1^2 or 0.2^2). Zero biases and unit LayerNorms would
    let a forward that forgot a bias or an affine term agree with the reference.
    """
    g = torch.Generator().manual_seed(seed)

    def normal_(t: torch.Tensor, std: float, mean: float = 0.0) -> None:
        t.copy_(mean + std * torch.randn(t.shape, generator=g, dtype=torch.float64))

    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Linear):
                normal_(m.weight, 1.0 / math.sqrt(m.in_features))
            elif isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                normal_(m.weight, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.LayerNorm):
                normal_(m.weight, 0.2, mean=1.0)
                normal_(m.bias, 0.2)
                continue
            else:
                continue
            if m.bias is not None:
                normal_(m.bias, 0.1)
    return module


def numpy_state(module: nn.Module) -> dict[str, np.ndarray]:
    """The module's state_dict as float64 NumPy arrays (same keys, same order)."""
    return {k: v.detach().double().numpy().copy() for k, v in module.state_dict().items()}


def run_torch(module: nn.Module, inputs: list[np.ndarray], dout: np.ndarray, *args: Any) -> dict[str, np.ndarray]:
    """Forward/backward with autograd: {'out', 'input', <param name>: grad} as float64 NumPy."""
    module.zero_grad(set_to_none=True)
    ts = [torch.from_numpy(np.array(a, dtype=np.float64)).requires_grad_(True) for a in inputs]
    out = module(*ts, *args)
    out.backward(torch.from_numpy(np.asarray(dout, dtype=np.float64)))
    res = {"out": out.detach().numpy().copy(), "input": ts[0].grad.numpy().copy()}
    for name, p in module.named_parameters():
        assert p.grad is not None, f"torch left no gradient in {name}"
        res[name] = p.grad.numpy().copy()
    return res


def run_ours(module: Module, inputs: list[np.ndarray], dout: np.ndarray, *args: Any) -> dict[str, np.ndarray]:
    """Forward/backward of a pvt_np module in its own dtype: {'out', 'input', <param name>: grad}."""
    dtype = module.dtype
    module.zero_grad()
    out = module(*[np.array(a, dtype=dtype) for a in inputs], *args)
    assert out.dtype == dtype, f"output dtype {out.dtype}, module dtype {dtype}"
    dx = module.backward(np.asarray(dout, dtype=dtype))
    assert dx.dtype == dtype, f"input-gradient dtype {dx.dtype}, module dtype {dtype}"
    res = {"out": pvt_np.to_numpy(out).copy(), "input": pvt_np.to_numpy(dx).copy()}
    for name, p in module.named_parameters():
        assert p.grad is not None, f"backward left no gradient in {name}"
        assert p.grad.dtype == dtype, f"{name}: gradient dtype {p.grad.dtype}, module dtype {dtype}"
        res[name] = pvt_np.to_numpy(p.grad)
    return res


def compare(ours: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Relative error of every entry; both sides must hold exactly the same names."""
    assert list(ours) == list(ref), f"compared names differ: {sorted(set(ours) ^ set(ref))}"
    return {k: rel_err(ours[k], ref[k]) for k in ref}
