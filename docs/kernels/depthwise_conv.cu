// Depthwise conv of NHWC float images with taps (kh, kw, C), zero padding (ph, pw), stride (sh, sw):
// the versions before the kernels pvt_np ships, in order (see README.md here for the whole lesson).
//
//   forward:       out[n,i,j,c] = sum_{p,q} x[n, i*sh + p - ph, j*sw + q - pw, c] * taps[p,q,c]  (+ bias[c])
//                  (pixels outside x read as zero)
//   input grad:    with G = dL/dout, every output that read x[n,y,x,c] through tap (p, q) sends back
//                  G[n,i,j,c] * taps[p,q,c]
//   weight grad:   dtaps[p,q,c] = sum_{n,i,j} G[n,i,j,c] * x[n, i*sh + p - ph, j*sw + q - pw, c]
//
// The later versions are not copied here: they are depthwise_forward, depthwise_input_grad and
// depthwise_weight_grad of pvt_np/ops/cuda.py, instantiated with 64-bit and then 32-bit indices, which
// run.py compiles from that file. Every version has the shipped kernel's arguments (sizes as long long),
// so run.py launches them all the same way; what `total` counts is said at each kernel.

// Forward v1: one thread per output element, numbered as the loop nest for n, for c, for i, for j
// (the NCHW habit): consecutive threads take consecutive output columns j of one channel. In NHWC
// memory those are C floats apart, so a warp's 32 loads (and its 32 stores) touch 32 segments.
// total = N * Ho * Wo * C.
extern "C" __global__ void depthwise_forward_v1(const float* x, const float* taps, const float* bias, float* out,
                                                long long total, long long has_bias, long long h, long long w,
                                                long long c, long long ho, long long wo, long long kh,
                                                long long kw, long long sh, long long sw, long long ph,
                                                long long pw) {
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= total) return;
    long long j = t % wo, rest = t / wo;
    long long i = rest % ho;
    rest /= ho;
    long long ch = rest % c, n = rest / c;
    float acc = 0.0f;
    for (long long p = 0; p < kh; ++p) {
        long long y = i * sh + p - ph;
        if (y < 0 || y >= h) continue;
        for (long long q = 0; q < kw; ++q) {
            long long xx = j * sw + q - pw;
            if (xx < 0 || xx >= w) continue;
            acc += x[((n * h + y) * w + xx) * c + ch] * taps[(p * kw + q) * c + ch];
        }
    }
    out[((n * ho + i) * wo + j) * c + ch] = has_bias ? acc + bias[ch] : acc;
}

// Input grad v1: the forward run backwards, a scatter. One thread per output element (channel
// fastest, coalesced as the forward learned); each adds G * tap into every input pixel its window
// read. Windows overlap, so several threads add into one dx element at once: atomicAdd, on a dx
// zeroed before the launch (run.py's step includes that fill). The order of the adds, hence the
// rounding, changes from run to run. total = N * Ho * Wo * C (threads), dx has N * H * W * C.
extern "C" __global__ void depthwise_input_grad_v1(const float* g, const float* taps, float* dx, long long total,
                                                   long long h, long long w, long long c, long long ho,
                                                   long long wo, long long kh, long long kw, long long sh,
                                                   long long sw, long long ph, long long pw) {
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= total) return;
    long long ch = t % c, pix = t / c;
    long long j = pix % wo, rest = pix / wo;
    long long i = rest % ho, n = rest / ho;
    float gv = g[t];
    for (long long p = 0; p < kh; ++p) {
        long long y = i * sh + p - ph;
        if (y < 0 || y >= h) continue;
        for (long long q = 0; q < kw; ++q) {
            long long xx = j * sw + q - pw;
            if (xx < 0 || xx >= w) continue;
            atomicAdd(&dx[((n * h + y) * w + xx) * c + ch], gv * taps[(p * kw + q) * c + ch]);
        }
    }
}

// Weight grad v1: one thread per tap value (p, q, c), each summing over every output pixel of every
// image. Only kh * kw * C threads (4,608 for 3x3 taps of 512 channels: a few warps per SM), each
// walking N * Ho * Wo steps (100,352 for 32 images of 56 x 56) one after the other. total = kh * kw * C;
// writes dtaps directly. Its one argument more than the shipped kernel's: n, the number of images.
extern "C" __global__ void depthwise_weight_grad_v1(const float* g, const float* x, float* dtaps, long long total,
                                                    long long n_images, long long h, long long w, long long c,
                                                    long long ho, long long wo, long long kh, long long kw,
                                                    long long sh, long long sw, long long ph, long long pw) {
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= total) return;
    long long ch = t % c, rest = t / c;
    long long q = rest % kw, p = rest / kw;
    float acc = 0.0f;
    for (long long n = 0; n < n_images; ++n)
        for (long long i = 0; i < ho; ++i) {
            long long y = i * sh + p - ph;
            if (y < 0 || y >= h) continue;
            for (long long j = 0; j < wo; ++j) {
                long long xx = j * sw + q - pw;
                if (xx < 0 || xx >= w) continue;
                acc += g[((n * ho + i) * wo + j) * c + ch] * x[((n * h + y) * w + xx) * c + ch];
            }
        }
    dtaps[t] = acc;
}

// Weight grad v2: partial sums, one thread per (n, p, q, c) summing one image's output pixels into
// partial[n,p,q,c]; the N partials of each tap value are then summed by one matrix-vector product
// with ones (pvt_np.ops.cuda.column_sums, a cuBLAS call; run.py's step includes it). N times the
// threads of v1 and 1/N of the steps each, and a fixed order of the sums. total = N * kh * kw * C.
extern "C" __global__ void depthwise_weight_grad_v2(const float* g, const float* x, float* partial, long long total,
                                                    long long h, long long w, long long c, long long ho,
                                                    long long wo, long long kh, long long kw, long long sh,
                                                    long long sw, long long ph, long long pw) {
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= total) return;
    long long ch = t % c, rest = t / c;
    long long q = rest % kw;
    rest /= kw;
    long long p = rest % kh, n = rest / kh;
    float acc = 0.0f;
    for (long long i = 0; i < ho; ++i) {
        long long y = i * sh + p - ph;
        if (y < 0 || y >= h) continue;
        for (long long j = 0; j < wo; ++j) {
            long long xx = j * sw + q - pw;
            if (xx < 0 || xx >= w) continue;
            acc += g[((n * ho + i) * wo + j) * c + ch] * x[((n * h + y) * w + xx) * c + ch];
        }
    }
    partial[t] = acc;
}
