// Attention's scaled softmax over the last dim of a C-contiguous (rows, M) float array, forward and
// backward: the versions before the kernel pvt_np ships, in order (see README.md here for the lesson).
//
//   forward:   t = x * scale,  y = exp(t - max t) / sum exp(t - max t)   (y may be x: in place)
//   backward:  in place on D = dL/dP, P = softmax(x * scale):  dL/dx = (D - sum_k D_k P_k) * P * scale
//
// The last version of each is not copied here: it is softmax_rows<float> and softmax_rows_backward<float>
// of pvt_np/ops/cuda.py, which run.py compiles from that file. Every version has the shipped kernel's
// arguments, so run.py launches them all the same way.

// v1: one thread per row, the formula as it reads: the max, the sum of exponentials, the division.
// A warp's 32 threads read 32 rows M values apart: no load of the warp is coalesced. PVT v2's
// rows are short (M = 49 pooled keys), so a thread's work is small and the loads dominate.
extern "C" __global__ void softmax_rows_v1(const float* x, float* y, long long rows, long long m, float scale) {
    long long r = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= rows) return;
    const float* xr = x + r * m;
    float* yr = y + r * m;
    float top = xr[0] * scale;
    for (long long k = 1; k < m; ++k) {
        float t = xr[k] * scale;
        top = t > top ? t : top;
    }
    float sum = 0.0f;
    for (long long k = 0; k < m; ++k) {
        float e = expf(xr[k] * scale - top);
        yr[k] = e;
        sum += e;
    }
    for (long long k = 0; k < m; ++k) yr[k] = yr[k] / sum;
}

extern "C" __global__ void softmax_rows_backward_v1(float* d, const float* p, long long rows, long long m,
                                                    float scale) {
    long long r = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= rows) return;
    float* dr = d + r * m;
    const float* pr = p + r * m;
    float dot = 0.0f;
    for (long long k = 0; k < m; ++k) dot += dr[k] * pr[k];
    for (long long k = 0; k < m; ++k) dr[k] = (dr[k] - dot) * pr[k] * scale;
}

// The sum (or, with take_max, the larger) of v over the 32 lanes of a warp, in every lane, through the
// warp's 32 slots of shared memory: a tree of halvings, then every lane reads slot 0. __syncwarp between
// the steps: no lane reads a slot before its writer has written it, nor writes one before all have read.
__device__ float softmax_warp_reduce_shared(float* slots, int lane, float v, bool take_max) {
    slots[lane] = v;
    __syncwarp();
    for (int m = 16; m > 0; m >>= 1) {
        if (lane < m) {
            float other = slots[lane + m];
            slots[lane] = take_max ? (other > slots[lane] ? other : slots[lane]) : slots[lane] + other;
        }
        __syncwarp();
    }
    float total = slots[0];
    __syncwarp();
    return total;
}

// v2: one warp per row. Lane l takes columns l, l + 32, ...: each step's 32 loads are consecutive
// floats (coalesced), and a row of 49 takes two steps instead of 49. The lanes' max and sum meet in
// shared memory (softmax_warp_reduce_shared). The block is whole warps.
extern "C" __global__ void softmax_rows_v2(const float* x, float* y, long long rows, long long m, float scale) {
    __shared__ float slots[1024];  // 32 for each warp of the block (at most 1024 threads)
    long long r = ((long long)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    if (r >= rows) return;  // the same for the whole warp
    int lane = threadIdx.x % 32;
    float* mine = slots + (threadIdx.x - lane);
    const float* xr = x + r * m;
    float* yr = y + r * m;
    float top = xr[0] * scale;  // a start every lane has (m >= 1)
    for (long long k = lane; k < m; k += 32) {
        float t = xr[k] * scale;
        top = t > top ? t : top;
    }
    top = softmax_warp_reduce_shared(mine, lane, top, true);
    float sum = 0.0f;
    for (long long k = lane; k < m; k += 32) {
        float e = expf(xr[k] * scale - top);
        yr[k] = e;
        sum += e;
    }
    sum = softmax_warp_reduce_shared(mine, lane, sum, false);
    for (long long k = lane; k < m; k += 32) yr[k] = yr[k] / sum;
}

extern "C" __global__ void softmax_rows_backward_v2(float* d, const float* p, long long rows, long long m,
                                                    float scale) {
    __shared__ float slots[1024];
    long long r = ((long long)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    if (r >= rows) return;
    int lane = threadIdx.x % 32;
    float* mine = slots + (threadIdx.x - lane);
    float* dr = d + r * m;
    const float* pr = p + r * m;
    float dot = 0.0f;
    for (long long k = lane; k < m; k += 32) dot += dr[k] * pr[k];
    dot = softmax_warp_reduce_shared(mine, lane, dot, false);
    for (long long k = lane; k < m; k += 32) dr[k] = (dr[k] - dot) * pr[k] * scale;
}
