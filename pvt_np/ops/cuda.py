"""CUDA kernels of the CuPy path: the ops whose array-at-a-time form costs the GPU most.

On the GPU a training step is bound by kernel launches and by passes over memory, not by
arithmetic. Written as array expressions, a layer norm is ten launches each way, an AdamW
update fourteen per parameter, and a depthwise conv kh*kw shifted multiply-adds (CuPy's
einsum would first copy the overlapping window view, kh*kw times the output). Each kernel
here does one op in one launch, one thread per output element (or per row), with the
formula in its comment; the plain reading of every op stays in :mod:`pvt_np.ops.plain`.

The source is plain C++ that CUDA compiles (``cupy.RawModule``, one instantiation per
float type): a thread finds its element from ``blockIdx.x * blockDim.x + threadIdx.x``
and nothing else, so ``tests/cuda_harness.py`` compiles the same text with the host's
C++ compiler and runs every "thread" in a loop, which checks these kernels against the
NumPy ops on any machine, with or without a GPU.

Arrays are C-contiguous; indices are 64-bit (``long long``); float arguments have the
arrays' type. ``KERNELS`` lists each kernel's arguments, for the launcher and the harness.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from pvt_np.backend import Array, get_array_module

SOURCE = r"""
typedef long long i64;

// Depthwise conv, NHWC, kernel taps (kh, kw, C), input pixels outside x read as zero:
// out[n,i,j,c] = sum_{p,q} x[n, i*sh + p - ph, j*sw + q - pw, c] * taps[p,q,c]  (+ bias[c])
// One thread per output element; consecutive threads take consecutive channels (coalesced).
template <typename T>
__global__ void depthwise_forward(const T* x, const T* taps, const T* bias, T* out, i64 total, i64 has_bias,
                                  i64 h, i64 w, i64 c, i64 ho, i64 wo, i64 kh, i64 kw,
                                  i64 sh, i64 sw, i64 ph, i64 pw) {
    i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= total) return;
    i64 ch = idx % c, pix = idx / c;
    i64 j = pix % wo, i = (pix / wo) % ho, n = pix / (wo * ho);
    T acc = T(0);
    for (i64 p = 0; p < kh; ++p) {
        i64 y = i * sh + p - ph;
        if (y < 0 || y >= h) continue;
        for (i64 q = 0; q < kw; ++q) {
            i64 xx = j * sw + q - pw;
            if (xx < 0 || xx >= w) continue;
            acc += x[((n * h + y) * w + xx) * c + ch] * taps[(p * kw + q) * c + ch];
        }
    }
    out[idx] = has_bias ? acc + bias[ch] : acc;
}

// Its input gradient, with G = dL/dout: every output pixel (i, j) that read x[n,y,x,c] through
// tap (p, q) (i*sh + p - ph == y, j*sw + q - pw == x) sends back G[n,i,j,c] * taps[p,q,c]:
// dx[n,y,x,c] = sum over those (p, q) of G[n, (y+ph-p)/sh, (x+pw-q)/sw, c] * taps[p,q,c].
// One thread per input element, a gather: no atomics, no padded buffer.
template <typename T>
__global__ void depthwise_input_grad(const T* g, const T* taps, T* dx, i64 total,
                                     i64 h, i64 w, i64 c, i64 ho, i64 wo, i64 kh, i64 kw,
                                     i64 sh, i64 sw, i64 ph, i64 pw) {
    i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= total) return;
    i64 ch = idx % c, pix = idx / c;
    i64 xx = pix % w, y = (pix / w) % h, n = pix / (w * h);
    T acc = T(0);
    for (i64 p = 0; p < kh; ++p) {
        i64 ty = y + ph - p;  // i * sh for the output row that met this pixel through tap row p
        if (ty < 0 || ty % sh != 0 || ty / sh >= ho) continue;
        i64 i = ty / sh;
        for (i64 q = 0; q < kw; ++q) {
            i64 tx = xx + pw - q;
            if (tx < 0 || tx % sw != 0 || tx / sw >= wo) continue;
            acc += g[((n * ho + i) * wo + tx / sw) * c + ch] * taps[(p * kw + q) * c + ch];
        }
    }
    dx[idx] = acc;
}

// Its weight gradient, one image at a time: partial[n,p,q,c] = sum_{i,j} G[n,i,j,c] *
// x[n, i*sh + p - ph, j*sw + q - pw, c] (pixels outside x are zero); dtaps = sum over n of partial.
// One thread per (n, p, q, c): a fixed summation order, so the result does not depend on the launch.
template <typename T>
__global__ void depthwise_weight_grad(const T* g, const T* x, T* partial, i64 total,
                                      i64 h, i64 w, i64 c, i64 ho, i64 wo, i64 kh, i64 kw,
                                      i64 sh, i64 sw, i64 ph, i64 pw) {
    i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= total) return;
    i64 ch = idx % c, rest = idx / c;
    i64 q = rest % kw, p = (rest / kw) % kh, n = rest / (kw * kh);
    T acc = T(0);
    for (i64 i = 0; i < ho; ++i) {
        i64 y = i * sh + p - ph;
        if (y < 0 || y >= h) continue;
        for (i64 j = 0; j < wo; ++j) {
            i64 xx = j * sw + q - pw;
            if (xx < 0 || xx >= w) continue;
            acc += g[((n * ho + i) * wo + j) * c + ch] * x[((n * h + y) * w + xx) * c + ch];
        }
    }
    partial[idx] = acc;
}

// Layer norm of each row of C values (the last dim), two passes for the statistics:
// mean = sum x / C, var = sum (x - mean)^2 / C (biased, as torch), rstd = 1 / sqrt(var + eps),
// xhat = (x - mean) * rstd, y = xhat * weight + bias. One thread per row; keeps xhat and rstd.
template <typename T>
__global__ void layer_norm_forward(const T* x, const T* weight, const T* bias, T* y, T* xhat, T* rstd,
                                   i64 rows, i64 c, T eps) {
    i64 r = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= rows) return;
    const T* xr = x + r * c;
    T sum = T(0);
    for (i64 k = 0; k < c; ++k) sum += xr[k];
    T mean = sum / T(c);
    T sq = T(0);
    for (i64 k = 0; k < c; ++k) {
        T d = xr[k] - mean;
        sq += d * d;
    }
    T rs = T(1) / sqrt(sq / T(c) + eps);
    for (i64 k = 0; k < c; ++k) {
        T xh = (xr[k] - mean) * rs;
        xhat[r * c + k] = xh;
        y[r * c + k] = xh * weight[k] + bias[k];
    }
    rstd[r] = rs;
}

// Its backward for one row, with G = dL/dy and g = G * weight (the gradient reaching xhat):
// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)); the two means carry the gradient through
// the row's mean and variance. Also writes prod = G * xhat, whose column sums are dweight.
template <typename T>
__global__ void layer_norm_backward(const T* dy, const T* xhat, const T* rstd, const T* weight, T* dx, T* prod,
                                    i64 rows, i64 c) {
    i64 r = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= rows) return;
    const T* gr = dy + r * c;
    const T* xr = xhat + r * c;
    T sum_g = T(0), sum_gx = T(0);
    for (i64 k = 0; k < c; ++k) {
        T gk = gr[k] * weight[k];
        sum_g += gk;
        sum_gx += gk * xr[k];
    }
    T mean_g = sum_g / T(c), mean_gx = sum_gx / T(c), rs = rstd[r];
    for (i64 k = 0; k < c; ++k) {
        dx[r * c + k] = rs * (gr[k] * weight[k] - mean_g - xr[k] * mean_gx);
        prod[r * c + k] = gr[k] * xr[k];
    }
}

// GELU (erf form) and its local derivative, elementwise:
// y = x * Phi(x), Phi(x) = (1 + erf(x / sqrt 2)) / 2;  dy/dx = Phi(x) + x * exp(-x^2 / 2) / sqrt(2 pi).
template <typename T>
__global__ void gelu_erf_forward(const T* x, T* y, T* local, i64 total, i64 need_grad) {
    i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= total) return;
    T v = x[idx];
    T cdf = T(0.5) * (T(1) + erf(v * T(0.70710678118654752440)));
    y[idx] = v * cdf;
    if (need_grad) local[idx] = cdf + v * exp(T(-0.5) * v * v) * T(0.39894228040143267794);
}

// One AdamW update of one element, torch's order of operations (see pvt_np.optim.AdamW):
// p *= decay;  m = m + (g - m) * w  (or g - (g - m) * (1 - w) when w >= 0.5, torch's lerp);
// v = v * beta2 + g * (1 - beta2) * g;  p += m * (-step_size) / (sqrt(v) / bc2_sqrt + eps).
template <typename T>
__global__ void adamw_update(T* param, const T* grad, T* exp_avg, T* exp_avg_sq, i64 total, T decay,
                             i64 lerp_from_m, T w, T one_minus_w, T beta2, T one_minus_beta2,
                             T step_size, T bc2_sqrt, T eps) {
    i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= total) return;
    T p = param[idx] * decay;
    T g = grad[idx];
    T m = exp_avg[idx];
    T d = g - m;
    m = lerp_from_m ? m + d * w : g - d * one_minus_w;
    T v = exp_avg_sq[idx] * beta2 + g * one_minus_beta2 * g;
    T denom = sqrt(v) / bc2_sqrt + eps;
    param[idx] = p + m * (-step_size) / denom;
    exp_avg[idx] = m;
    exp_avg_sq[idx] = v;
}
"""

# Each kernel's arguments in order: "ptr" (an array of the kernel's float type), "i64", "T" (a float
# of that type). The first "i64" after the pointers is the thread count (see _launch).
_CONV = ["i64"] * 11  # h, w, c, ho, wo, kh, kw, sh, sw, ph, pw
KERNELS: dict[str, list[str]] = {
    "depthwise_forward": ["ptr"] * 4 + ["i64", "i64", *_CONV],
    "depthwise_input_grad": ["ptr"] * 3 + ["i64", *_CONV],
    "depthwise_weight_grad": ["ptr"] * 3 + ["i64", *_CONV],
    "layer_norm_forward": ["ptr"] * 6 + ["i64", "i64", "T"],
    "layer_norm_backward": ["ptr"] * 6 + ["i64", "i64"],
    "gelu_erf_forward": ["ptr"] * 3 + ["i64", "i64"],
    "adamw_update": ["ptr"] * 4 + ["i64", "T", "i64", *["T"] * 7],
}
# The threads of one block: a multiple of the warp (32) that keeps every SM busy at these sizes.
THREADS_PER_BLOCK = 256
C_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
# --fmad=false: no fused multiply-adds, so each kernel rounds as its comment reads (and as the host harness).
COMPILE_OPTIONS = ("--std=c++14", "--fmad=false")
# Set by the tests (tests/cuda_harness.py) to SOURCE compiled for the CPU, with RawModule's get_function:
# the ops then take these kernels on NumPy arrays too, which checks them and their wiring without a GPU.
HOST_STAND_IN: Any = None


def active(xp: Any) -> bool:
    """Whether the ops run these kernels: on CuPy, and on NumPy while the tests' host stand-in is installed."""
    return xp is not np or HOST_STAND_IN is not None


@functools.cache
def _module(xp: Any) -> Any:
    """The compiled kernels (float and double), built once per process on first use."""
    names = [f"{name}<{ctype}>" for name in KERNELS for ctype in C_TYPES.values()]
    return xp.RawModule(code=SOURCE, options=COMPILE_OPTIONS, name_expressions=names)


def _launch(name: str, dtype: Any, threads: int, *args: Any) -> None:
    """Run kernel ``name`` for ``dtype`` on ``threads`` threads; ints become i64, floats ``dtype``."""
    if threads == 0:
        return
    kinds = KERNELS[name]
    if len(args) != len(kinds):
        raise TypeError(f"{name}: {len(kinds)} arguments expected, got {len(args)}")
    ftype = np.dtype(dtype).type
    packed = []
    for position, (kind, value) in enumerate(zip(kinds, args, strict=True)):
        if kind == "ptr":
            if not value.flags.c_contiguous or value.dtype != dtype:
                layout = "C-contiguous" if value.flags.c_contiguous else "non-contiguous"
                raise ValueError(
                    f"{name}: argument {position}: expected a C-contiguous {np.dtype(dtype).name} array, "
                    f"got a {layout} {value.dtype} array"
                )
            packed.append(value)
        else:
            packed.append(np.int64(value) if kind == "i64" else ftype(value))
    xp = get_array_module(*(a for kind, a in zip(kinds, args, strict=True) if kind == "ptr"))
    module = HOST_STAND_IN if xp is np else _module(xp)
    kernel = module.get_function(f"{name}<{C_TYPES[np.dtype(dtype)]}>")
    kernel((-(-threads // THREADS_PER_BLOCK),), (THREADS_PER_BLOCK,), tuple(packed))


def _conv_sizes(x_shape: tuple[int, ...], out_shape: tuple[int, ...], taps_shape: tuple[int, ...]) -> list[int]:
    (_, h, w, c), (_, ho, wo, _), (kh, kw, _) = x_shape, out_shape, taps_shape
    return [h, w, c, ho, wo, kh, kw]


def depthwise_forward(
    x: Array, taps: Array, bias: Array | None, ph: int, pw: int, sh: int, sw: int, ho: int, wo: int
) -> Array:
    """Depthwise conv of NHWC ``x`` with ``taps`` (kh, kw, C), zero padding (ph, pw), stride (sh, sw)."""
    xp = get_array_module(x)
    x = xp.ascontiguousarray(x)
    n, c = x.shape[0], x.shape[3]
    out = xp.empty((n, ho, wo, c), dtype=x.dtype)
    sizes = _conv_sizes(x.shape, out.shape, taps.shape)
    has_bias = bias is not None
    _launch(
        "depthwise_forward", x.dtype, out.size, x, taps, bias if has_bias else taps, out, out.size, int(has_bias),
        *sizes, sh, sw, ph, pw,
    )  # fmt: skip
    return out


def depthwise_input_grad(g: Array, taps: Array, x_shape: tuple[int, ...], ph: int, pw: int, sh: int, sw: int) -> Array:
    """dL/dx (shape ``x_shape``, NHWC) of the depthwise conv, from G = dL/dout (contiguous NHWC)."""
    xp = get_array_module(g)
    dx = xp.empty(x_shape, dtype=g.dtype)
    sizes = _conv_sizes(x_shape, g.shape, taps.shape)
    _launch("depthwise_input_grad", g.dtype, dx.size, g, taps, dx, dx.size, *sizes, sh, sw, ph, pw)
    return dx


def depthwise_weight_grad(g: Array, x: Array, kh: int, kw: int, ph: int, pw: int, sh: int, sw: int) -> Array:
    """dL/dtaps (kh, kw, C): per-image partial sums (one thread each), then their sum over the images."""
    xp = get_array_module(g)
    x = xp.ascontiguousarray(x)
    n, c = x.shape[0], x.shape[3]
    partial = xp.empty((n, kh, kw, c), dtype=g.dtype)
    sizes = _conv_sizes(x.shape, g.shape, (kh, kw, c))
    _launch("depthwise_weight_grad", g.dtype, partial.size, g, x, partial, partial.size, *sizes, sh, sw, ph, pw)
    return partial.sum(axis=0)


def layer_norm_forward(x2: Array, weight: Array, bias: Array, eps: float) -> tuple[Array, Array, Array]:
    """(y, xhat, rstd) of the rows of ``x2`` (M, C); rstd has shape (M, 1)."""
    xp = get_array_module(x2)
    x2 = xp.ascontiguousarray(x2)
    rows, c = x2.shape
    y, xhat = xp.empty_like(x2), xp.empty_like(x2)
    rstd = xp.empty((rows, 1), dtype=x2.dtype)
    _launch("layer_norm_forward", x2.dtype, rows, x2, weight, bias, y, xhat, rstd, rows, c, eps)
    return y, xhat, rstd


def layer_norm_backward(g2: Array, xhat: Array, rstd: Array, weight: Array) -> tuple[Array, Array, Array]:
    """(dx, dweight, dbias) from G (M, C); the column sums are matrix-vector products with ones (cuBLAS)."""
    xp = get_array_module(g2)
    g2 = xp.ascontiguousarray(g2)
    rows, c = g2.shape
    dx, prod = xp.empty_like(g2), xp.empty_like(g2)
    _launch("layer_norm_backward", g2.dtype, rows, g2, xhat, rstd, weight, dx, prod, rows, c)
    ones = xp.ones(rows, dtype=g2.dtype)
    return dx, ones @ prod, ones @ g2


def gelu_erf_forward(x: Array, need_grad: bool) -> tuple[Array, Array | None]:
    """(y, dy/dx or None) of GELU's erf form, one pass."""
    xp = get_array_module(x)
    x = xp.ascontiguousarray(x)
    y = xp.empty_like(x)
    local = xp.empty_like(x) if need_grad else y  # a placeholder the kernel never writes
    _launch("gelu_erf_forward", x.dtype, x.size, x, y, local, x.size, int(need_grad))
    return y, (local if need_grad else None)


def adamw_update(
    param: Array, grad: Array, exp_avg: Array, exp_avg_sq: Array, *, decay: float, w: float, beta2: float,
    step_size: float, bc2_sqrt: float, eps: float,
) -> None:  # fmt: skip
    """One fused AdamW step of one parameter, in place (``param``, ``exp_avg``, ``exp_avg_sq`` contiguous)."""
    xp = get_array_module(param)
    grad = xp.ascontiguousarray(grad)
    _launch(
        "adamw_update", param.dtype, param.size, param, grad, exp_avg, exp_avg_sq, param.size, decay,
        int(abs(w) < 0.5), w, 1 - w, beta2, 1 - beta2, step_size, bc2_sqrt, eps,
    )  # fmt: skip
