// Layer norm over the last dim of a C-contiguous (rows, C) float array, forward and backward:
// the versions before the kernel pvt_np ships, in order (see README.md here for the whole lesson).
//
//   forward:   mean = sum x / C,  var = sum (x - mean)^2 / C,  rstd = 1 / sqrt(var + eps),
//              xhat = (x - mean) * rstd,  y = xhat * weight + bias    (keeps xhat and rstd)
//   backward:  with G = dL/dy and g = G * weight,
//              dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),
//              and the row [G * xhat, G] of sums (2C values), whose column sums are [dweight, dbias]
//
// The last version of each is not copied here: it is layer_norm_forward<float> and
// layer_norm_backward<float> of pvt_np/ops/cuda.py, which run.py compiles from that file.
// Every version has the shipped kernel's arguments, so run.py launches them all the same way.

// v1: one thread per row, the formula as it reads. Three passes over the row from one thread.
// The 32 threads of a warp work on 32 rows C values apart, so each load of the warp touches 32
// different memory segments instead of one: the reads are not coalesced.
extern "C" __global__ void layer_norm_forward_v1(const float* x, const float* weight, const float* bias, float* y,
                                                 float* xhat, float* rstd, long long rows, long long c, float eps) {
    long long r = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= rows) return;
    const float* xr = x + r * c;
    float sum = 0.0f;
    for (long long k = 0; k < c; ++k) sum += xr[k];
    float mean = sum / (float)c;
    float sq = 0.0f;
    for (long long k = 0; k < c; ++k) {
        float d = xr[k] - mean;
        sq += d * d;
    }
    float rs = 1.0f / sqrtf(sq / (float)c + eps);
    for (long long k = 0; k < c; ++k) {
        float xh = (xr[k] - mean) * rs;
        xhat[r * c + k] = xh;
        y[r * c + k] = xh * weight[k] + bias[k];
    }
    rstd[r] = rs;
}

extern "C" __global__ void layer_norm_backward_v1(const float* dy, const float* xhat, const float* rstd,
                                                  const float* weight, float* dx, float* sums, long long rows,
                                                  long long c) {
    long long r = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= rows) return;
    const float* gr = dy + r * c;
    const float* xr = xhat + r * c;
    float sum_g = 0.0f, sum_gx = 0.0f;
    for (long long k = 0; k < c; ++k) {
        float gk = gr[k] * weight[k];
        sum_g += gk;
        sum_gx += gk * xr[k];
    }
    float mean_g = sum_g / (float)c, mean_gx = sum_gx / (float)c, rs = rstd[r];
    for (long long k = 0; k < c; ++k) {
        dx[r * c + k] = rs * (gr[k] * weight[k] - mean_g - xr[k] * mean_gx);
        sums[r * 2 * c + k] = gr[k] * xr[k];
        sums[r * 2 * c + c + k] = gr[k];
    }
}

// The sum of v over the 32 lanes of a warp, in every lane, through the warp's 32 slots of shared
// memory: a tree of halvings (16 lanes add the upper half's slots to theirs, then 8, ..., then 1),
// and every lane reads slot 0. __syncwarp between the steps: no lane reads a slot before its writer
// has written it, and none writes the slots again before every lane has read the total.
__device__ float layer_norm_warp_sum_shared(float* slots, int lane, float v) {
    slots[lane] = v;
    __syncwarp();
    for (int m = 16; m > 0; m >>= 1) {
        if (lane < m) slots[lane] += slots[lane + m];
        __syncwarp();
    }
    float total = slots[0];
    __syncwarp();
    return total;
}

// v2: one warp per row. Lane l takes columns l, l + 32, ...: the warp's 32 loads of one step are 32
// consecutive floats (one 128-byte segment), and each lane walks C / 32 values instead of C. The
// lanes' partial sums meet in shared memory (layer_norm_warp_sum_shared). The block is whole warps.
extern "C" __global__ void layer_norm_forward_v2(const float* x, const float* weight, const float* bias, float* y,
                                                 float* xhat, float* rstd, long long rows, long long c, float eps) {
    __shared__ float slots[1024];  // 32 for each warp of the block (at most 1024 threads)
    long long r = ((long long)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    if (r >= rows) return;  // the same for the whole warp
    int lane = threadIdx.x % 32;
    float* mine = slots + (threadIdx.x - lane);
    const float* xr = x + r * c;
    float sum = 0.0f;
    for (long long k = lane; k < c; k += 32) sum += xr[k];
    float mean = layer_norm_warp_sum_shared(mine, lane, sum) / (float)c;
    float sq = 0.0f;
    for (long long k = lane; k < c; k += 32) {
        float d = xr[k] - mean;
        sq += d * d;
    }
    float rs = 1.0f / sqrtf(layer_norm_warp_sum_shared(mine, lane, sq) / (float)c + eps);
    for (long long k = lane; k < c; k += 32) {
        float xh = (xr[k] - mean) * rs;
        xhat[r * c + k] = xh;
        y[r * c + k] = xh * weight[k] + bias[k];
    }
    if (lane == 0) rstd[r] = rs;
}

extern "C" __global__ void layer_norm_backward_v2(const float* dy, const float* xhat, const float* rstd,
                                                  const float* weight, float* dx, float* sums, long long rows,
                                                  long long c) {
    __shared__ float slots[1024];
    long long r = ((long long)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    if (r >= rows) return;
    int lane = threadIdx.x % 32;
    float* mine = slots + (threadIdx.x - lane);
    const float* gr = dy + r * c;
    const float* xr = xhat + r * c;
    float sum_g = 0.0f, sum_gx = 0.0f;
    for (long long k = lane; k < c; k += 32) {
        float gk = gr[k] * weight[k];
        sum_g += gk;
        sum_gx += gk * xr[k];
    }
    float mean_g = layer_norm_warp_sum_shared(mine, lane, sum_g) / (float)c;
    float mean_gx = layer_norm_warp_sum_shared(mine, lane, sum_gx) / (float)c;
    float rs = rstd[r];
    for (long long k = lane; k < c; k += 32) {
        dx[r * c + k] = rs * (gr[k] * weight[k] - mean_g - xr[k] * mean_gx);
        sums[r * 2 * c + k] = gr[k] * xr[k];
        sums[r * 2 * c + c + k] = gr[k];
    }
}
