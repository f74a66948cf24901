"""CUDA kernels of the CuPy path: the ops whose array-at-a-time form costs the GPU most.

On the GPU a training step is bound by kernel launches and by passes over memory, not by
arithmetic. Written as array expressions, a layer norm is ten launches each way, an AdamW
update fourteen per parameter, and a depthwise conv kh*kw shifted multiply-adds (CuPy's
einsum would first copy the overlapping window view, kh*kw times the output). Each kernel
here does one op in one launch, one thread per output element (or one warp of 32 threads
per row), with the formula in its comment; the plain implementation of every op stays in
:mod:`pvt_np.ops.plain`. The products go to cuBLAS through :mod:`pvt_np.ops.blas`.

The source is plain C++ that CUDA compiles (``cupy.RawModule``, one instantiation per
float type, and per index type where :data:`INDEXED`): a thread finds its element from
``blockIdx.x * blockDim.x + threadIdx.x`` and nothing else, and the lanes of a warp meet
only through ``__shfl_xor_sync``. So ``tests/cuda_harness.py`` compiles the same text
with the host's C++ compiler and runs every "thread" in a loop (the 32 lanes of a warp
taking turns between shuffles), which checks these kernels against the NumPy ops on any
machine, with or without a GPU.

Arrays are C-contiguous; size arguments are 64-bit (``long long``); float arguments have
the arrays' type. ``KERNELS`` lists each kernel's arguments, for the launcher and the harness.
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
// I is the index type: int where every array has fewer than 2^31 elements (64-bit division
// is many instructions on a GPU, and these kernels are bound by their index arithmetic), else i64.
template <typename T, typename I>
__global__ void depthwise_forward(const T* x, const T* taps, const T* bias, T* out, i64 total, i64 has_bias,
                                  i64 h_, i64 w_, i64 c_, i64 ho_, i64 wo_, i64 kh_, i64 kw_,
                                  i64 sh_, i64 sw_, i64 ph_, i64 pw_) {
    i64 t = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= total) return;
    I idx = (I)t, h = (I)h_, w = (I)w_, c = (I)c_, ho = (I)ho_, wo = (I)wo_, kh = (I)kh_, kw = (I)kw_;
    I sh = (I)sh_, sw = (I)sw_, ph = (I)ph_, pw = (I)pw_;
    I ch = idx % c, pix = idx / c;
    I j = pix % wo, rest = pix / wo;
    I i = rest % ho, n = rest / ho;
    T acc = T(0);
    for (I p = 0; p < kh; ++p) {
        I y = i * sh + p - ph;
        if (y < 0 || y >= h) continue;
        for (I q = 0; q < kw; ++q) {
            I xx = j * sw + q - pw;
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
template <typename T, typename I>
__global__ void depthwise_input_grad(const T* g, const T* taps, T* dx, i64 total,
                                     i64 h_, i64 w_, i64 c_, i64 ho_, i64 wo_, i64 kh_, i64 kw_,
                                     i64 sh_, i64 sw_, i64 ph_, i64 pw_) {
    i64 t = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= total) return;
    I idx = (I)t, h = (I)h_, w = (I)w_, c = (I)c_, ho = (I)ho_, wo = (I)wo_, kh = (I)kh_, kw = (I)kw_;
    I sh = (I)sh_, sw = (I)sw_, ph = (I)ph_, pw = (I)pw_;
    I ch = idx % c, pix = idx / c;
    I xx = pix % w, rest = pix / w;
    I y = rest % h, n = rest / h;
    T acc = T(0);
    for (I p = 0; p < kh; ++p) {
        I ty = y + ph - p;  // i * sh for the output row that met this pixel through tap row p
        if (ty < 0) break;  // ty only falls as p rises
        I i = ty / sh;
        if (i * sh != ty || i >= ho) continue;
        for (I q = 0; q < kw; ++q) {
            I tx = xx + pw - q;
            if (tx < 0) break;
            I jj = tx / sw;
            if (jj * sw != tx || jj >= wo) continue;
            acc += g[((n * ho + i) * wo + jj) * c + ch] * taps[(p * kw + q) * c + ch];
        }
    }
    dx[idx] = acc;
}

// Its weight gradient, one output row of one image at a time:
// partial[n,i,p,q,c] = sum_j G[n,i,j,c] * x[n, i*sh + p - ph, j*sw + q - pw, c] (pixels outside x
// are zero); dtaps[p,q,c] = sum over (n, i) of partial (a matrix-vector product with ones).
// One thread per (n, i, p, q, c): enough threads to fill the GPU at every stage (one per
// (n, p, q, c) summing whole images left b2_li's first stage with 74k threads of 3,136 steps),
// and a fixed summation order, so the result does not depend on the launch.
template <typename T, typename I>
__global__ void depthwise_weight_grad(const T* g, const T* x, T* partial, i64 total,
                                      i64 h_, i64 w_, i64 c_, i64 ho_, i64 wo_, i64 kh_, i64 kw_,
                                      i64 sh_, i64 sw_, i64 ph_, i64 pw_) {
    i64 t = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= total) return;
    I idx = (I)t, h = (I)h_, w = (I)w_, c = (I)c_, ho = (I)ho_, wo = (I)wo_, kh = (I)kh_, kw = (I)kw_;
    I sh = (I)sh_, sw = (I)sw_, ph = (I)ph_, pw = (I)pw_;
    I ch = idx % c, rest = idx / c;
    I q = rest % kw;
    rest /= kw;
    I p = rest % kh, row = rest / kh;  // row = n * ho + i
    I i = row % ho, n = row / ho;
    T acc = T(0);
    I y = i * sh + p - ph;
    if (y >= 0 && y < h) {
        for (I j = 0; j < wo; ++j) {
            I xx = j * sw + q - pw;
            if (xx < 0 || xx >= w) continue;
            acc += g[(row * wo + j) * c + ch] * x[((n * h + y) * w + xx) * c + ch];
        }
    }
    partial[idx] = acc;
}

// A dense conv's input gradient from its im2col matrix's, dC (rows: output pixels (n, i, j); columns:
// taps (p, q, c)), onto the padded input (NHWC, hp x wp): every window that read pixel (y, x) through
// tap (p, q) (i*sh + p == y, j*sw + q == x) adds its entry back:
// dxpad[n,y,x,c] = sum over those (p, q) of dC[(n*ho + i)*wo + j, (p*kw + q)*C + c]  (zero where no window reads).
// One thread per padded-input element, a gather (no atomics, one launch instead of one slice-add per tap).
template <typename T, typename I>
__global__ void col2im(const T* dcols, T* dxpad, i64 total, i64 hp_, i64 wp_, i64 c_, i64 ho_, i64 wo_,
                       i64 kh_, i64 kw_, i64 sh_, i64 sw_) {
    i64 t = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= total) return;
    I idx = (I)t, hp = (I)hp_, wp = (I)wp_, c = (I)c_, ho = (I)ho_, wo = (I)wo_, kh = (I)kh_, kw = (I)kw_;
    I sh = (I)sh_, sw = (I)sw_;
    I ch = idx % c, pix = idx / c;
    I xx = pix % wp, rest = pix / wp;
    I y = rest % hp, n = rest / hp;
    T acc = T(0);
    for (I p = 0; p < kh && p <= y; ++p) {
        I i = (y - p) / sh;
        if (i * sh != y - p || i >= ho) continue;
        for (I q = 0; q < kw && q <= xx; ++q) {
            I j = (xx - q) / sw;
            if (j * sw != xx - q || j >= wo) continue;
            acc += dcols[((n * ho + i) * wo + j) * (kh * kw * c) + (p * kw + q) * c + ch];
        }
    }
    dxpad[idx] = acc;
}

// The sum of v over the 32 lanes of a warp, in every lane: a butterfly of shuffles. Each step
// adds a lane's value and its partner's (a + b in one, b + a in the other: the same bits), so
// all lanes end with the same total.
template <typename T>
__device__ T warp_sum(T v) {
    for (int m = 16; m > 0; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
    return v;
}

// Layer norm of each row of C values (the last dim), two passes for the statistics:
// mean = sum x / C, var = sum (x - mean)^2 / C (biased, as torch), rstd = 1 / sqrt(var + eps),
// xhat = (x - mean) * rstd, y = xhat * weight + bias. One warp per row: lane l takes columns
// l, l + 32, ... (consecutive lanes read consecutive values), the sums meet through warp_sum.
// Keeps xhat and rstd.
template <typename T>
__global__ void layer_norm_forward(const T* x, const T* weight, const T* bias, T* y, T* xhat, T* rstd,
                                   i64 rows, i64 c, T eps) {
    i64 r = ((i64)blockIdx.x * blockDim.x + threadIdx.x) / 32;  // the block is whole warps
    if (r >= rows) return;  // the same for the whole warp
    int lane = threadIdx.x % 32;
    const T* xr = x + r * c;
    T sum = T(0);
    for (i64 k = lane; k < c; k += 32) sum += xr[k];
    T mean = warp_sum(sum) / T(c);
    T sq = T(0);
    for (i64 k = lane; k < c; k += 32) {
        T d = xr[k] - mean;
        sq += d * d;
    }
    T rs = T(1) / sqrt(warp_sum(sq) / T(c) + eps);
    for (i64 k = lane; k < c; k += 32) {
        T xh = (xr[k] - mean) * rs;
        xhat[r * c + k] = xh;
        y[r * c + k] = xh * weight[k] + bias[k];
    }
    if (lane == 0) rstd[r] = rs;
}

// Its backward for one row, with G = dL/dy and g = G * weight (the gradient reaching xhat):
// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)); the two means carry the gradient through
// the row's mean and variance. Also writes the row [G * xhat, G] of sums (2C values), whose column
// sums are [dweight, dbias] (one matrix-vector product for both). One warp per row, as the forward.
template <typename T>
__global__ void layer_norm_backward(const T* dy, const T* xhat, const T* rstd, const T* weight, T* dx, T* sums,
                                    i64 rows, i64 c) {
    i64 r = ((i64)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    if (r >= rows) return;
    int lane = threadIdx.x % 32;
    const T* gr = dy + r * c;
    const T* xr = xhat + r * c;
    T sum_g = T(0), sum_gx = T(0);
    for (i64 k = lane; k < c; k += 32) {
        T gk = gr[k] * weight[k];
        sum_g += gk;
        sum_gx += gk * xr[k];
    }
    T mean_g = warp_sum(sum_g) / T(c), mean_gx = warp_sum(sum_gx) / T(c), rs = rstd[r];
    for (i64 k = lane; k < c; k += 32) {
        dx[r * c + k] = rs * (gr[k] * weight[k] - mean_g - xr[k] * mean_gx);
        sums[r * 2 * c + k] = gr[k] * xr[k];
        sums[r * 2 * c + c + k] = gr[k];
    }
}

// The larger of v over the 32 lanes of a warp, in every lane (a butterfly, as warp_sum).
template <typename T>
__device__ T warp_max(T v) {
    for (int m = 16; m > 0; m >>= 1) {
        T other = __shfl_xor_sync(0xffffffffu, v, m);
        v = other > v ? other : v;
    }
    return v;
}

// Attention's scaled softmax of each row of M scores, in place allowed (y may be x):
// t = x * scale,  y = exp(t - max t) / sum exp(t - max t)  (the max changes nothing but overflow).
// One warp per row, lanes over the columns as layer_norm_forward.
template <typename T>
__global__ void softmax_rows(const T* x, T* y, i64 rows, i64 m, T scale) {
    i64 r = ((i64)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    if (r >= rows) return;
    int lane = threadIdx.x % 32;
    const T* xr = x + r * m;
    T* yr = y + r * m;
    T top = xr[0] * scale;  // a start every lane has (m >= 1), so no -infinity constant is needed
    for (i64 k = lane; k < m; k += 32) {
        T t = xr[k] * scale;
        top = t > top ? t : top;
    }
    top = warp_max(top);
    T sum = T(0);
    for (i64 k = lane; k < m; k += 32) {
        T e = exp(xr[k] * scale - top);
        yr[k] = e;
        sum += e;
    }
    sum = warp_sum(sum);
    for (i64 k = lane; k < m; k += 32) yr[k] = yr[k] / sum;
}

// Its backward through the scale, in place on D = dL/dP (rows of P = softmax(x * scale)):
// dL/dx = (D - sum_k D_k P_k) * P * scale. One warp per row.
template <typename T>
__global__ void softmax_rows_backward(T* d, const T* p, i64 rows, i64 m, T scale) {
    i64 r = ((i64)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    if (r >= rows) return;
    int lane = threadIdx.x % 32;
    T* dr = d + r * m;
    const T* pr = p + r * m;
    T dot = T(0);
    for (i64 k = lane; k < m; k += 32) dot += dr[k] * pr[k];
    dot = warp_sum(dot);
    for (i64 k = lane; k < m; k += 32) dr[k] = (dr[k] - dot) * pr[k] * scale;
}

// ReLU's backward from its output y: dx = G * (y > 0), the mask as 0 or 1 and multiplied (as the
// NumPy path: a negative G times 0 is -0, a NaN stays NaN).
template <typename T>
__global__ void relu_backward(const T* g, const T* y, T* dx, i64 total) {
    i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= total) return;
    dx[idx] = g[idx] * T(y[idx] > T(0) ? 1 : 0);
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

// AdamW for many tensors in one launch (one launch per step instead of one per parameter).
// The table holds K + 1 starts, then the four addresses of each tensor (param, grad, exp_avg,
// exp_avg_sq): tensor k's elements are the global indices starts[k] .. starts[k+1] - 1, and
// each thread finds its tensor by a binary search of the starts.
// The update of one element, torch's order of operations (see pvt_np.optim.AdamW):
// p *= decay;  m = m + (g - m) * w  (or g - (g - m) * (1 - w) when w >= 0.5, torch's lerp);
// v = v * beta2 + g * (1 - beta2) * g;  p += m * (-step_size) / (sqrt(v) / bc2_sqrt + eps).
template <typename T>
__global__ void adamw_multi(const i64* table, i64 tensors, i64 total, T decay, i64 lerp_from_m, T w,
                            T one_minus_w, T beta2, T one_minus_beta2, T step_size, T bc2_sqrt, T eps) {
    i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= total) return;
    i64 lo = 0, hi = tensors;  // starts[lo] <= idx < starts[hi]
    while (hi - lo > 1) {
        i64 mid = (lo + hi) / 2;
        if (table[mid] <= idx) lo = mid; else hi = mid;
    }
    const i64* address = table + tensors + 1 + 4 * lo;
    T* param = (T*)address[0];
    const T* grad = (const T*)address[1];
    T* exp_avg = (T*)address[2];
    T* exp_avg_sq = (T*)address[3];
    i64 e = idx - table[lo];
    T p = param[e] * decay;
    T g = grad[e];
    T m = exp_avg[e];
    T d = g - m;
    m = lerp_from_m ? m + d * w : g - d * one_minus_w;
    T v = exp_avg_sq[e] * beta2 + g * one_minus_beta2 * g;
    T denom = sqrt(v) / bc2_sqrt + eps;
    param[e] = p + m * (-step_size) / denom;
    exp_avg[e] = m;
    exp_avg_sq[e] = v;
}
"""

# Each kernel's arguments in order: "ptr" (an array of the kernel's float type), "iptr" (an int64 array),
# "i64", "T" (a float of that type).
_CONV = ["i64"] * 11  # h, w, c, ho, wo, kh, kw, sh, sw, ph, pw
KERNELS: dict[str, list[str]] = {
    "depthwise_forward": ["ptr"] * 4 + ["i64", "i64", *_CONV],
    "depthwise_input_grad": ["ptr"] * 3 + ["i64", *_CONV],
    "depthwise_weight_grad": ["ptr"] * 3 + ["i64", *_CONV],
    "col2im": ["ptr"] * 2 + ["i64"] * 10,  # total, hp, wp, c, ho, wo, kh, kw, sh, sw
    "layer_norm_forward": ["ptr"] * 6 + ["i64", "i64", "T"],
    "layer_norm_backward": ["ptr"] * 6 + ["i64", "i64"],
    "softmax_rows": ["ptr"] * 2 + ["i64", "i64", "T"],
    "softmax_rows_backward": ["ptr"] * 2 + ["i64", "i64", "T"],
    "relu_backward": ["ptr"] * 3 + ["i64"],
    "gelu_erf_forward": ["ptr"] * 3 + ["i64", "i64"],
    "adamw_multi": ["iptr", "i64", "i64", "T", "i64", *["T"] * 7],
}
# Kernels with a second template argument, the index type (see depthwise_forward).
INDEXED = frozenset({"depthwise_forward", "depthwise_input_grad", "depthwise_weight_grad", "col2im"})
I_TYPES = ("int", "long long")
INT_INDEX_LIMIT = 2**31  # INDEXED kernels use int where every array and the thread count are below this
# Kernels whose 32 lanes of a warp work together (warp shuffles): one warp per row, 32 threads a row.
WARP_KERNELS = frozenset({"layer_norm_forward", "layer_norm_backward", "softmax_rows", "softmax_rows_backward"})
WARP_SIZE = 32
# The threads of one block: a multiple of the warp (32) that keeps every SM busy at these sizes.
THREADS_PER_BLOCK = 256
C_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
_INT64 = np.dtype(np.int64)
# --fmad=false: no fused multiply-adds, so each kernel rounds as its comment reads (and as the host harness).
COMPILE_OPTIONS = ("--std=c++14", "--fmad=false")
# Set by the tests (tests/cuda_harness.py) to SOURCE compiled for the CPU, with RawModule's get_function:
# the ops then take these kernels on NumPy arrays too, which checks them and their wiring without a GPU.
HOST_KERNELS: Any = None


def active(xp: Any) -> bool:
    """Whether the ops take their GPU functions (these kernels, cuBLAS): on CuPy, and on NumPy while the tests'
    host build of the kernels (:data:`HOST_KERNELS`) is installed. Each op asks this in one place."""
    return xp is not np or HOST_KERNELS is not None


def expressions(name: str) -> list[str]:
    """The instantiations of kernel ``name``: ``name<float>``, ... (and each index type for INDEXED)."""
    if name in INDEXED:
        return [f"{name}<{ctype}, {itype}>" for ctype in C_TYPES.values() for itype in I_TYPES]
    return [f"{name}<{ctype}>" for ctype in C_TYPES.values()]


@functools.cache
def _module(xp: Any) -> Any:
    """The compiled kernels (float and double), built once per process on first use."""
    names = [expression for name in KERNELS for expression in expressions(name)]
    return xp.RawModule(code=SOURCE, options=COMPILE_OPTIONS, name_expressions=names)


# (id(module), expression) -> (module, kernel): each kernel looked up once (a lookup per launch costs
# host time, and a step is bound by the host's launches); the module is kept so that its id stays its own.
_FUNCTIONS: dict[tuple[int, str], tuple[Any, Any]] = {}


def _function(module: Any, expression: str) -> Any:
    """Kernel ``expression`` of ``module``."""
    key = (id(module), expression)
    if key not in _FUNCTIONS:
        _FUNCTIONS[key] = (module, module.get_function(expression))
    return _FUNCTIONS[key][1]


def _launch(name: str, dtype: Any, threads: int, *args: Any) -> None:
    """Run kernel ``name`` for ``dtype`` on ``threads`` threads; ints become i64, floats ``dtype``.

    INDEXED kernels index with 32-bit ints when every array argument has fewer than
    INT_INDEX_LIMIT (2^31) elements, else with 64-bit ones.
    """
    if threads == 0:
        return
    kinds = KERNELS[name]
    if len(args) != len(kinds):
        raise TypeError(f"{name}: {len(kinds)} arguments expected, got {len(args)}")
    dtype = np.dtype(dtype)
    ftype = dtype.type
    packed = []
    largest = 0
    for position, (kind, value) in enumerate(zip(kinds, args, strict=True)):
        if kind in ("ptr", "iptr"):
            want = dtype if kind == "ptr" else _INT64
            if value.dtype != want or not value.flags.c_contiguous:
                layout = "C-contiguous" if value.flags.c_contiguous else "non-contiguous"
                raise ValueError(
                    f"{name}: argument {position}: expected a C-contiguous {want.name} array, "
                    f"got a {layout} {value.dtype} array"
                )
            largest = max(largest, value.size)
            packed.append(value)
        else:
            packed.append(np.int64(value) if kind == "i64" else ftype(value))
    module = HOST_KERNELS if isinstance(args[0], np.ndarray) else _module(get_array_module(args[0]))
    expression = f"{name}<{C_TYPES[dtype]}>"
    if name in INDEXED:
        itype = I_TYPES[0] if max(largest, threads) < INT_INDEX_LIMIT else I_TYPES[1]
        expression = f"{name}<{C_TYPES[dtype]}, {itype}>"
    kernel = _function(module, expression)
    kernel((-(-threads // THREADS_PER_BLOCK),), (THREADS_PER_BLOCK,), tuple(packed))


def address(a: Array) -> int:
    """The address of ``a``'s first element (device or host)."""
    return int(a.ctypes.data) if isinstance(a, np.ndarray) else int(a.data.ptr)


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
    """dL/dtaps's partial sums, (N*Ho, kh*kw*C): one row per output row of each image (one thread per entry).

    dL/dtaps (kh, kw, C) is their column sum (:func:`pvt_np.ops.blas.column_sums`).
    """
    xp = get_array_module(g)
    x = xp.ascontiguousarray(x)
    n, ho, c = g.shape[0], g.shape[1], x.shape[3]
    partial = xp.empty((n * ho, kh, kw, c), dtype=g.dtype)
    sizes = _conv_sizes(x.shape, g.shape, (kh, kw, c))
    _launch("depthwise_weight_grad", g.dtype, partial.size, g, x, partial, partial.size, *sizes, sh, sw, ph, pw)
    return partial.reshape(n * ho, -1)


def col2im(dcols: Array, dxpad: Array, kh: int, kw: int, sh: int, sw: int, ho: int, wo: int) -> None:
    """Fill ``dxpad`` (N, Hp, Wp, C), C-contiguous, from the im2col gradient ``dcols`` (N*Ho*Wo, kh*kw*C)."""
    xp = get_array_module(dcols)
    dcols = xp.ascontiguousarray(dcols)
    _, hp, wp, c = dxpad.shape
    _launch("col2im", dxpad.dtype, dxpad.size, dcols, dxpad, dxpad.size, hp, wp, c, ho, wo, kh, kw, sh, sw)


def layer_norm_forward(x2: Array, weight: Array, bias: Array, eps: float) -> tuple[Array, Array, Array]:
    """(y, xhat, rstd) of the rows of ``x2`` (M, C); rstd has shape (M, 1). One warp per row."""
    xp = get_array_module(x2)
    x2 = xp.ascontiguousarray(x2)
    rows, c = x2.shape
    y, xhat = xp.empty_like(x2), xp.empty_like(x2)
    rstd = xp.empty((rows, 1), dtype=x2.dtype)
    _launch("layer_norm_forward", x2.dtype, rows * WARP_SIZE, x2, weight, bias, y, xhat, rstd, rows, c, eps)
    return y, xhat, rstd


def layer_norm_backward(g2: Array, xhat: Array, rstd: Array, weight: Array) -> tuple[Array, Array]:
    """(dx, sums) from G (M, C), one warp per row; the column sums of ``sums`` (M, 2C) are [dweight, dbias]."""
    xp = get_array_module(g2)
    g2 = xp.ascontiguousarray(g2)
    rows, c = g2.shape
    dx, sums = xp.empty_like(g2), xp.empty((rows, 2 * c), dtype=g2.dtype)
    _launch("layer_norm_backward", g2.dtype, rows * WARP_SIZE, g2, xhat, rstd, weight, dx, sums, rows, c)
    return dx, sums


def softmax_rows(x: Array, scale: float) -> None:
    """x <- softmax(x * scale) along the last axis, in place (attention's scores), one warp per row."""
    m = x.shape[-1]
    rows = x.size // m if m else 0
    _launch("softmax_rows", x.dtype, rows * WARP_SIZE, x, x, rows, m, scale)


def softmax_rows_backward(d: Array, probs: Array, scale: float) -> None:
    """d <- (d - rowsum(d * probs)) * probs * scale, in place: dL/dx from d = dL/dprobs, probs = softmax(x * scale)."""
    m = d.shape[-1]
    rows = d.size // m if m else 0
    _launch("softmax_rows_backward", d.dtype, rows * WARP_SIZE, d, probs, rows, m, scale)


def relu_backward(g: Array, y: Array) -> Array:
    """dL/dx = G * (y > 0) of ReLU, from G and its output y (both contiguous, one shape), one pass."""
    xp = get_array_module(g)
    g, y = xp.ascontiguousarray(g), xp.ascontiguousarray(y)
    dx = xp.empty_like(g)
    _launch("relu_backward", g.dtype, g.size, g, y, dx, g.size)
    return dx


def gelu_erf_forward(x: Array, need_grad: bool) -> tuple[Array, Array | None]:
    """(y, dy/dx or None) of GELU's erf form, one pass."""
    xp = get_array_module(x)
    x = xp.ascontiguousarray(x)
    y = xp.empty_like(x)
    local = xp.empty_like(x) if need_grad else y  # a placeholder the kernel never writes
    _launch("gelu_erf_forward", x.dtype, x.size, x, y, local, x.size, int(need_grad))
    return y, (local if need_grad else None)


def adamw_multi(
    table: Array, tensors: int, total: int, dtype: Any, *, decay: float, w: float, beta2: float, step_size: float,
    bc2_sqrt: float, eps: float,
) -> None:  # fmt: skip
    """One fused AdamW step of ``tensors`` parameters of ``dtype`` with the same options, in place, in one launch.

    ``table`` (int64, on the parameters' device): the starts of the tensors in the global
    index (``tensors + 1`` entries, the last = ``total``), then each tensor's four
    :func:`address` es: param, grad, exp_avg, exp_avg_sq, all C-contiguous and of ``dtype``.
    """
    _launch(
        "adamw_multi", dtype, total, table, tensors, total, decay, int(abs(w) < 0.5), w, 1 - w, beta2, 1 - beta2,
        step_size, bc2_sqrt, eps,
    )  # fmt: skip
