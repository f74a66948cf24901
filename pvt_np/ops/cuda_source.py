"""The C++ source of the CUDA kernels (:mod:`pvt_np.ops.cuda` compiles and launches them).

Each kernel's comment states its formula. The text is plain C++ that CUDA compiles: a thread
finds its element from ``blockIdx.x * blockDim.x + threadIdx.x`` and nothing else, and the
lanes of a warp meet only through ``__shfl_xor_sync``, so ``tests/cuda_harness.py`` compiles
the same text for the host and checks every kernel without a GPU.
"""

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

// AdamW's update of element e of one tensor (param, grad, exp_avg, exp_avg_sq), in torch's order of
// operations (see pvt_np.optim.AdamW), shared by the two AdamW kernels below:
// p *= decay;  m = m + (g - m) * w  (or g - (g - m) * (1 - w) when w >= 0.5, torch's lerp);
// v = v * beta2 + g * (1 - beta2) * g;  p += m * (-step_size) / (sqrt(v) / bc2_sqrt + eps).
template <typename T>
__device__ void adamw_element(T* param, const T* grad, T* exp_avg, T* exp_avg_sq, i64 e, T decay,
                              i64 lerp_from_m, T w, T one_minus_w, T beta2, T one_minus_beta2, T step_size,
                              T bc2_sqrt, T eps) {
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

// AdamW for many tensors in one launch (one launch per step instead of one per parameter), the
// per-step scalars (decay, step_size, bc2_sqrt) as arguments from the host: adamw_element.
// The table holds K + 1 starts, then the four addresses of each tensor (param, grad, exp_avg,
// exp_avg_sq): tensor k's elements are the global indices starts[k] .. starts[k+1] - 1, and
// each thread finds its tensor by a binary search of the starts.
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
    adamw_element((T*)address[0], (const T*)address[1], (T*)address[2], (T*)address[3], idx - table[lo], decay,
                  lerp_from_m, w, one_minus_w, beta2, one_minus_beta2, step_size, bc2_sqrt, eps);
}

// AdamW of one tensor, capturable (a CUDA graph replays it): the per-step scalars are read from
// device memory at run time, where the step before wrote them (AdamW(capturable=True) computes
// step_size = lr / (1 - beta1^t), bc2_sqrt = (1 - beta2^t)^0.5 and decay = 1 - lr * weight_decay
// on the device), not frozen as arguments when the launch is recorded:
// adamw_element(..., decay = *decay, step_size = *step_size, bc2_sqrt = *bc2_sqrt). The constants
// (w, beta2, eps) are arguments. One thread per element.
template <typename T>
__global__ void adamw_capturable(T* param, const T* grad, T* exp_avg, T* exp_avg_sq, const T* step_size,
                                 const T* bc2_sqrt, const T* decay, i64 total, i64 lerp_from_m, T w,
                                 T one_minus_w, T beta2, T one_minus_beta2, T eps) {
    i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= total) return;
    adamw_element(param, grad, exp_avg, exp_avg_sq, idx, *decay, lerp_from_m, w, one_minus_w, beta2,
                  one_minus_beta2, *step_size, *bc2_sqrt, eps);
}
"""
