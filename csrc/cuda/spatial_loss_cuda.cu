// CUDA tile kernels of the spatial loss (contract: ../spatial_loss.h). Square tiles of T units
// (64 for float, 32 for double so static shared memory stays under 48 KiB); 256 threads as 16 x 16,
// each owning an R x R patch (R = T / 16) of every tile. Plain FMA on shared-memory tiles: the
// tensor-core path is the Triton kernel (topoaudio/kernels/spatial_loss.py); bench/ compares them.
// Pair sums are reduced per row tile in double, in a fixed order (deterministic).
#include "../spatial_loss.h"

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

namespace {

constexpr int kThreads = 256;
constexpr int kBatchChunk = 32;

template <typename scalar_t>
struct Tiles {
  static constexpr int T = sizeof(scalar_t) == 8 ? 32 : 64;
  static constexpr int R = T / 16;
};

// r patch of tile pair (a, b): r[u][v] = z_{a T + ty R + u} . z_{b T + tx R + v}.
template <typename scalar_t>
__device__ void r_patch(const scalar_t* __restrict__ z, int64_t n, int batch, int64_t a, int64_t b,
                        scalar_t (*zi)[kBatchChunk + 1], scalar_t (*zj)[kBatchChunk + 1],
                        scalar_t r[Tiles<scalar_t>::R][Tiles<scalar_t>::R]) {
  constexpr int T = Tiles<scalar_t>::T, R = Tiles<scalar_t>::R;
  const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
  for (int u = 0; u < R; ++u)
    for (int v = 0; v < R; ++v) r[u][v] = 0;
  for (int k0 = 0; k0 < batch; k0 += kBatchChunk) {
    for (int e = threadIdx.x; e < T * kBatchChunk; e += kThreads) {
      const int row = e / kBatchChunk, k = e % kBatchChunk;
      const int64_t gi = a * T + row, gj = b * T + row;
      const bool in_k = k0 + k < batch;
      zi[row][k] = (gi < n && in_k) ? z[gi * batch + k0 + k] : scalar_t(0);
      zj[row][k] = (gj < n && in_k) ? z[gj * batch + k0 + k] : scalar_t(0);
    }
    __syncthreads();
    for (int k = 0; k < kBatchChunk; ++k) {
      scalar_t left[R], right[R];
      for (int u = 0; u < R; ++u) left[u] = zi[ty * R + u][k];
      for (int v = 0; v < R; ++v) right[v] = zj[tx * R + v][k];
      for (int u = 0; u < R; ++u)
        for (int v = 0; v < R; ++v) r[u][v] += left[u] * right[v];
    }
    __syncthreads();
  }
}

// Writes this thread's R x R accumulator patch of row tile a, batch columns from c0, to out [n, batch].
template <typename scalar_t>
__device__ __forceinline__ void store_patch(scalar_t* __restrict__ out,
                                            const scalar_t (&acc)[Tiles<scalar_t>::R][Tiles<scalar_t>::R],
                                            int64_t n, int batch, int64_t a, int c0) {
  constexpr int T = Tiles<scalar_t>::T, R = Tiles<scalar_t>::R;
  const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
  for (int u = 0; u < R; ++u)
    for (int v = 0; v < R; ++v) {
      const int64_t gi = a * T + ty * R + u;
      const int col = c0 + tx * R + v;
      if (gi < n && col < batch) out[gi * batch + col] = acc[u][v];
    }
}

template <typename scalar_t>
__device__ __forceinline__ scalar_t distance(const scalar_t* __restrict__ p, int64_t i, int64_t j) {
  const scalar_t dx = p[2 * i] - p[2 * j], dy = p[2 * i + 1] - p[2 * j + 1];
  return sqrt(dx * dx + dy * dy);
}

template <typename scalar_t>
__device__ bool tiles_apart(const scalar_t* __restrict__ boxes, int64_t a, int64_t b, double radius) {
  const double gx = fmax(0.0, fmax(double(boxes[4 * a] - boxes[4 * b + 2]),
                                   double(boxes[4 * b] - boxes[4 * a + 2])));
  const double gy = fmax(0.0, fmax(double(boxes[4 * a + 1] - boxes[4 * b + 3]),
                                   double(boxes[4 * b + 1] - boxes[4 * a + 3])));
  return gx * gx + gy * gy > radius * radius;
}

template <typename scalar_t>
__global__ void weighted_sum_kernel(const scalar_t* __restrict__ z, const scalar_t* __restrict__ p,
                                    scalar_t* __restrict__ wz, double* __restrict__ w_sum,
                                    double* __restrict__ w2_sum, int64_t n, int batch) {
  constexpr int T = Tiles<scalar_t>::T, R = Tiles<scalar_t>::R;
  __shared__ scalar_t w[T][T + 1];
  __shared__ scalar_t zj[T][T + 1];
  const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
  const int64_t a = blockIdx.x;
  const int c0 = blockIdx.y * T;  // first batch column of this block
  scalar_t acc[R][R] = {};
  double s1[R] = {}, s2[R] = {};
  for (int64_t b = 0; b * T < n; ++b) {
    for (int u = 0; u < R; ++u)
      for (int v = 0; v < R; ++v) {
        const int64_t gi = a * T + ty * R + u, gj = b * T + tx * R + v;
        // zero diagonal (see spatial_loss.h): w_ii = 1 would round small off-diagonal sums away
        const scalar_t value = (gi < n && gj < n && gi != gj)
                                   ? scalar_t(1) / (scalar_t(1) + distance(p, gi, gj))
                                   : scalar_t(0);
        w[ty * R + u][tx * R + v] = value;
        s1[u] += value;
        s2[u] += double(value) * value;
      }
    for (int e = threadIdx.x; e < T * T; e += kThreads) {
      const int row = e / T, col = e % T;
      const int64_t gj = b * T + row;
      zj[row][col] = (gj < n && c0 + col < batch) ? z[gj * batch + c0 + col] : scalar_t(0);
    }
    __syncthreads();
    for (int j = 0; j < T; ++j)
      for (int u = 0; u < R; ++u)
        for (int v = 0; v < R; ++v) acc[u][v] += w[ty * R + u][j] * zj[j][tx * R + v];
    __syncthreads();
  }
  store_patch(wz, acc, n, batch, a, c0);
  if (blockIdx.y == 0) {  // weight sums depend on positions only: one batch block writes them
    // The 16 threads of a row group are 16 consecutive lanes: reduce across them with shuffles.
    for (int u = 0; u < R; ++u) {
      for (int offset = 8; offset > 0; offset /= 2) {
        s1[u] += __shfl_down_sync(0xffffffffu, s1[u], offset, 16);
        s2[u] += __shfl_down_sync(0xffffffffu, s2[u], offset, 16);
      }
      const int64_t gi = a * T + ty * R + u;
      if (tx == 0 && gi < n) {
        w_sum[gi] = s1[u];
        w2_sum[gi] = s2[u];
      }
    }
  }
}

template <typename scalar_t>
__global__ void pair_sums_kernel(const scalar_t* __restrict__ z, const scalar_t* __restrict__ p,
                                 const scalar_t* __restrict__ boxes, double* __restrict__ partial,
                                 int64_t n, int batch, int64_t tiles, double radius) {
  constexpr int T = Tiles<scalar_t>::T, R = Tiles<scalar_t>::R;
  __shared__ scalar_t zi[T][kBatchChunk + 1];
  __shared__ scalar_t zj[T][kBatchChunk + 1];
  __shared__ double reduce[kThreads];
  const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
  const int64_t a = blockIdx.x;
  double acc[7] = {0, 0, 0, 0, 0, 0, 0};
  for (int64_t b = a; b < tiles; ++b) {  // pairs i < j live in tiles b >= a
    if (tiles_apart(boxes, a, b, radius)) continue;  // uniform across the block
    scalar_t r[R][R];
    r_patch(z, n, batch, a, b, zi, zj, r);
    for (int u = 0; u < R; ++u)
      for (int v = 0; v < R; ++v) {
        const int64_t gi = a * T + ty * R + u, gj = b * T + tx * R + v;
        if (gi >= n || gj >= n || gi >= gj) continue;
        const double d = distance(p, gi, gj);
        if (d > radius) continue;
        const double w = 1.0 / (1.0 + d), rv = r[u][v];
        acc[0] += 1; acc[1] += w; acc[2] += w * w; acc[3] += rv;
        acc[4] += rv * rv; acc[5] += w * rv; acc[6] += fabs(rv - w);
      }
  }
  for (int k = 0; k < 7; ++k) {  // fixed-order tree reduction
    reduce[threadIdx.x] = acc[k];
    __syncthreads();
    for (int half = kThreads / 2; half > 0; half /= 2) {
      if (threadIdx.x < half) reduce[threadIdx.x] += reduce[threadIdx.x + half];
      __syncthreads();
    }
    if (threadIdx.x == 0) partial[a * 7 + k] = reduce[0];
    __syncthreads();
  }
}

template <typename scalar_t>
__global__ void pair_grad_kernel(const scalar_t* __restrict__ z, const scalar_t* __restrict__ p,
                                 const scalar_t* __restrict__ boxes, scalar_t* __restrict__ grad,
                                 int64_t n, int batch, int64_t tiles, double radius, double c_r,
                                 double c_r2, double c_wr, double c_abs) {
  constexpr int T = Tiles<scalar_t>::T, R = Tiles<scalar_t>::R;
  __shared__ scalar_t zi[T][kBatchChunk + 1];
  __shared__ scalar_t zj[T][kBatchChunk + 1];
  __shared__ scalar_t coef[T][T + 1];
  const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
  const int64_t a = blockIdx.x;
  const int c0 = blockIdx.y * T;  // this block's batch columns; r always spans the whole batch
  scalar_t acc[R][R] = {};
  for (int64_t b = 0; b < tiles; ++b) {  // both orders of every pair
    if (tiles_apart(boxes, a, b, radius)) continue;
    scalar_t r[R][R];
    r_patch(z, n, batch, a, b, zi, zj, r);
    for (int u = 0; u < R; ++u)
      for (int v = 0; v < R; ++v) {
        const int64_t gi = a * T + ty * R + u, gj = b * T + tx * R + v;
        scalar_t value = 0;
        if (gi < n && gj < n && gi != gj) {
          const scalar_t d = distance(p, gi, gj);
          if (d <= radius) {
            const scalar_t w = scalar_t(1) / (scalar_t(1) + d), diff = r[u][v] - w;
            const scalar_t sign = diff > 0 ? scalar_t(1) : (diff < 0 ? scalar_t(-1) : scalar_t(0));
            value = scalar_t(c_r + 2 * c_r2 * r[u][v] + c_wr * w + c_abs * sign);
          }
        }
        coef[ty * R + u][tx * R + v] = value;
      }
    __syncthreads();
    // grad_I[:, c0 : c0 + T] += coef @ z_J[:, c0 : c0 + T], z_J read in batch chunks through zj
    for (int k0 = 0; k0 < T; k0 += kBatchChunk) {
      for (int e = threadIdx.x; e < T * kBatchChunk; e += kThreads) {
        const int row = e / kBatchChunk, k = e % kBatchChunk;
        const int64_t gj = b * T + row;
        const int col = c0 + k0 + k;
        zj[row][k] = (gj < n && col < batch) ? z[gj * batch + col] : scalar_t(0);
      }
      __syncthreads();
      for (int u = 0; u < R; ++u)
        for (int v = 0; v < R; ++v) {
          const int local = tx * R + v - k0;  // this thread's column inside the chunk
          if (local < 0 || local >= kBatchChunk) continue;
          scalar_t sum = 0;
          for (int j = 0; j < T; ++j) sum += coef[ty * R + u][j] * zj[j][local];
          acc[u][v] += sum;
        }
      __syncthreads();
    }
  }
  store_patch(grad, acc, n, batch, a, c0);
}

template <typename scalar_t>
at::Tensor tile_boxes(const at::Tensor& positions) {
  constexpr int T = Tiles<scalar_t>::T;
  const int64_t n = positions.size(0), tiles = (n + T - 1) / T;
  auto padded = at::cat({positions, positions.narrow(0, n - 1, 1).expand({tiles * T - n, 2})});
  auto grouped = padded.view({tiles, T, 2});
  return at::cat({std::get<0>(grouped.min(1)), std::get<0>(grouped.max(1))}, 1).contiguous();
}

void check_cuda(const at::Tensor& z, const at::Tensor& positions) {
  check_spatial_tensors(z, positions);
  TORCH_CHECK(z.is_cuda(), "CUDA spatial-loss kernels need CUDA tensors");
  TORCH_CHECK(z.size(1) <= 0x7fffffff, "batch too large");
}

}  // namespace

std::vector<at::Tensor> spatial_weighted_sum_cuda(const at::Tensor& z, const at::Tensor& positions) {
  check_cuda(z, positions);
  const c10::cuda::CUDAGuard guard(z.device());
  const int64_t n = z.size(0);
  const int batch = static_cast<int>(z.size(1));
  auto wz = at::empty_like(z);
  auto w_sum = at::empty({n}, z.options().dtype(at::kDouble));
  auto w2_sum = at::empty({n}, z.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "spatial_weighted_sum_cuda", [&] {
    constexpr int T = Tiles<scalar_t>::T;
    const dim3 grid((n + T - 1) / T, (batch + T - 1) / T);
    weighted_sum_kernel<scalar_t><<<grid, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        z.data_ptr<scalar_t>(), positions.data_ptr<scalar_t>(), wz.data_ptr<scalar_t>(),
        w_sum.data_ptr<double>(), w2_sum.data_ptr<double>(), n, batch);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {wz, w_sum, w2_sum};
}

at::Tensor spatial_pair_sums_cuda(const at::Tensor& z, const at::Tensor& positions, double radius) {
  check_cuda(z, positions);
  const c10::cuda::CUDAGuard guard(z.device());
  const int64_t n = z.size(0);
  const int batch = static_cast<int>(z.size(1));
  at::Tensor partial;
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "spatial_pair_sums_cuda", [&] {
    constexpr int T = Tiles<scalar_t>::T;
    const int64_t tiles = (n + T - 1) / T;
    const auto boxes = tile_boxes<scalar_t>(positions);
    partial = at::empty({tiles, 7}, z.options().dtype(at::kDouble));
    pair_sums_kernel<scalar_t><<<tiles, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        z.data_ptr<scalar_t>(), positions.data_ptr<scalar_t>(), boxes.data_ptr<scalar_t>(),
        partial.data_ptr<double>(), n, batch, tiles, radius);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return partial.sum(0);
}

at::Tensor spatial_pair_grad_cuda(const at::Tensor& z, const at::Tensor& positions, double radius,
                                  const at::Tensor& coef) {
  check_cuda(z, positions);
  TORCH_CHECK(coef.numel() == 4, "coef must hold 4 numbers");
  const c10::cuda::CUDAGuard guard(z.device());
  const auto c = coef.to(at::kDouble).cpu();
  const double* cp = c.data_ptr<double>();
  const int64_t n = z.size(0);
  const int batch = static_cast<int>(z.size(1));
  auto grad = at::empty_like(z);
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "spatial_pair_grad_cuda", [&] {
    constexpr int T = Tiles<scalar_t>::T;
    const int64_t tiles = (n + T - 1) / T;
    const auto boxes = tile_boxes<scalar_t>(positions);
    const dim3 grid(tiles, (batch + T - 1) / T);
    pair_grad_kernel<scalar_t><<<grid, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        z.data_ptr<scalar_t>(), positions.data_ptr<scalar_t>(), boxes.data_ptr<scalar_t>(),
        grad.data_ptr<scalar_t>(), n, batch, tiles, radius, cp[0], cp[1], cp[2], cp[3]);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad;
}
