// CUDA kernels for stage B of the cochleagram (see ../cochleagram.h).
// Forward: one block per (row, tile of frames). The block turns the tile's span of the analytic
// signal into magnitudes in shared memory once, then each warp reduces one frame's window against
// the taps; overlapping windows (window/stride ~ 10x) reuse shared memory, not DRAM.
// Backward: one thread per (row, sample), gathering the <= ceil(window/stride) frames that cover it.
#include "../cochleagram.h"

#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

namespace {

constexpr int kThreads = 256;
constexpr int kMaxFramesPerBlock = 32;
constexpr size_t kSharedBytes = 40 * 1024;  // below the 48 KiB default, no opt-in needed

template <typename scalar_t>
__device__ __forceinline__ scalar_t magnitude_at(const scalar_t* __restrict__ z, int64_t t) {
  const scalar_t re = z[2 * t], im = z[2 * t + 1];
  return sqrt(max(re * re + im * im, static_cast<scalar_t>(1e-16)));
}

template <typename scalar_t, bool kShared>
__global__ void envelope_forward_kernel(const scalar_t* __restrict__ analytic,
                                        const scalar_t* __restrict__ taps,
                                        scalar_t* __restrict__ out, scalar_t* __restrict__ envelope,
                                        int64_t length, int window, int stride, int n_frames,
                                        int frames_per_block, scalar_t power, scalar_t offset,
                                        bool compress) {
  extern __shared__ unsigned char shared_raw[];
  scalar_t* magnitude = reinterpret_cast<scalar_t*>(shared_raw);
  const int64_t row = blockIdx.x;
  const int first_frame = blockIdx.y * frames_per_block;
  const int frames_here = min(frames_per_block, n_frames - first_frame);
  const int64_t t0 = static_cast<int64_t>(first_frame) * stride;
  const scalar_t* z = analytic + row * length * 2;
  if (kShared) {
    const int span = (frames_here - 1) * stride + window;
    for (int i = threadIdx.x; i < span; i += blockDim.x) magnitude[i] = magnitude_at(z, t0 + i);
    __syncthreads();
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, n_warps = blockDim.x / 32;
  for (int f = warp; f < frames_here; f += n_warps) {
    scalar_t acc = 0;
    for (int j = lane; j < window; j += 32) {
      const scalar_t m = kShared ? magnitude[f * stride + j] : magnitude_at(z, t0 + f * stride + j);
      acc += m * __ldg(taps + j);
    }
    for (int shift = 16; shift > 0; shift >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, shift);
    if (lane == 0) {
      const int64_t index = row * n_frames + first_frame + f;
      envelope[index] = acc;
      out[index] = compress ? pow(max(acc, static_cast<scalar_t>(0)) + offset, power) : acc;
    }
  }
}

template <typename scalar_t>
__global__ void envelope_backward_kernel(const scalar_t* __restrict__ analytic,
                                         const scalar_t* __restrict__ taps,
                                         const scalar_t* __restrict__ grad_env,
                                         scalar_t* __restrict__ grad_analytic, int64_t length,
                                         int window, int stride, int n_frames) {
  const int64_t row = blockIdx.x;
  const int64_t t = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (t >= length) return;
  const int64_t last = min(static_cast<int64_t>(n_frames - 1), t / stride);
  const int64_t first = t >= window ? (t - window) / stride + 1 : 0;
  const scalar_t* g = grad_env + row * n_frames;
  scalar_t grad_magnitude = 0;
  for (int64_t f = first; f <= last; ++f) grad_magnitude += g[f] * __ldg(taps + (t - f * stride));
  const scalar_t* z = analytic + row * length * 2;
  const scalar_t re = z[2 * t], im = z[2 * t + 1];
  const scalar_t p = re * re + im * im;
  const scalar_t scale = p > static_cast<scalar_t>(1e-16) ? grad_magnitude * rsqrt(p) : scalar_t(0);
  scalar_t* gz = grad_analytic + row * length * 2;
  gz[2 * t] = scale * re;
  gz[2 * t + 1] = scale * im;
}

void check_cuda(const at::Tensor& analytic, const at::Tensor& taps) {
  TORCH_CHECK(analytic.is_cuda() && taps.is_cuda() && analytic.device() == taps.device(),
              "CUDA kernels need all tensors on the same CUDA device");
  TORCH_CHECK(analytic.size(0) <= 0x7fffffff, "too many rows for one launch");
}

}  // namespace

std::vector<at::Tensor> envelope_downsample_forward_cuda(const at::Tensor& analytic,
                                                         const at::Tensor& taps, int64_t stride,
                                                         int64_t n_frames, double power,
                                                         double offset, bool compress) {
  check_envelope_args(analytic, taps, stride, n_frames);
  check_cuda(analytic, taps);
  const c10::cuda::CUDAGuard guard(analytic.device());
  const int64_t rows = analytic.size(0), length = analytic.size(1), window = taps.size(0);
  auto out = at::empty({rows, n_frames}, analytic.options());
  auto envelope = at::empty({rows, n_frames}, analytic.options());
  if (rows == 0) return {out, envelope};
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(analytic.scalar_type(), "envelope_downsample_forward_cuda", [&] {
    const int64_t fit = (static_cast<int64_t>(kSharedBytes / sizeof(scalar_t)) - window) / stride + 1;
    const int frames_per_block = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(
        {fit, kMaxFramesPerBlock, n_frames})));
    const dim3 grid(rows, (n_frames + frames_per_block - 1) / frames_per_block);
    const scalar_t* z = analytic.data_ptr<scalar_t>();
    const scalar_t* h = taps.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    scalar_t* e = envelope.data_ptr<scalar_t>();
    if (fit >= 1) {
      const size_t shared = ((frames_per_block - 1) * stride + window) * sizeof(scalar_t);
      envelope_forward_kernel<scalar_t, true><<<grid, kThreads, shared, stream>>>(
          z, h, o, e, length,
          window, stride, n_frames, frames_per_block, static_cast<scalar_t>(power),
          static_cast<scalar_t>(offset), compress);
    } else {  // a window too long for shared memory: read magnitudes straight from global memory
      envelope_forward_kernel<scalar_t, false><<<grid, kThreads, 0, stream>>>(
          z, h, o, e, length,
          window, stride, n_frames, frames_per_block, static_cast<scalar_t>(power),
          static_cast<scalar_t>(offset), compress);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, envelope};
}

at::Tensor envelope_downsample_backward_cuda(const at::Tensor& analytic, const at::Tensor& taps,
                                             const at::Tensor& grad_envelope, int64_t stride) {
  const int64_t n_frames = grad_envelope.size(-1);
  check_envelope_args(analytic, taps, stride, n_frames);
  check_cuda(analytic, taps);
  TORCH_CHECK(grad_envelope.is_cuda() && grad_envelope.is_contiguous() &&
                  grad_envelope.size(0) == analytic.size(0) &&
                  grad_envelope.scalar_type() == analytic.scalar_type(),
              "grad_envelope must be a contiguous CUDA [rows, frames] tensor of analytic's dtype");
  const c10::cuda::CUDAGuard guard(analytic.device());
  const int64_t rows = analytic.size(0), length = analytic.size(1);
  auto grad_analytic = at::empty_like(analytic);
  if (rows == 0) return grad_analytic;
  const dim3 grid(rows, (length + kThreads - 1) / kThreads);
  AT_DISPATCH_FLOATING_TYPES(analytic.scalar_type(), "envelope_downsample_backward_cuda", [&] {
    envelope_backward_kernel<scalar_t><<<grid, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        analytic.data_ptr<scalar_t>(), taps.data_ptr<scalar_t>(),
        grad_envelope.data_ptr<scalar_t>(), grad_analytic.data_ptr<scalar_t>(), length,
        static_cast<int>(taps.size(0)), static_cast<int>(stride), static_cast<int>(n_frames));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_analytic;
}
