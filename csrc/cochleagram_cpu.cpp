// CPU kernels for stage B of the cochleagram (see cochleagram.h).
//
// The strided correlation env[f] = sum_j |z[f D + j]| h[j] is rewritten in polyphase form so that
// BLAS does the multiply-adds: with the taps zero-padded to Q = ceil(W / D) blocks of D,
//   P[b, q] = sum_p |z[b D + p]| h[q D + p]        (a [blocks, D] x [D, Q] GEMM per row)
//   env[f]  = sum_q P[f + q, q]                     (Q diagonals)
// Rows are handed out to the threads dynamically in one parallel region per call
// (parallel_blocks.h); each thread computes a whole row, its magnitudes and its GEMM
// (single-threaded) in buffers of its own, so a thread slowed by another process on its core
// holds back at most the row it has taken, and each row's numbers do not depend on the schedule.
#include "cochleagram.h"

#include "parallel_blocks.h"
#include <algorithm>
#include <cmath>

namespace {

constexpr double kMinPower = 1e-16;  // the reference's sqrt(max(re^2 + im^2, 1e-16))

struct Polyphase {
  int64_t blocks, phases;  // blocks of `stride` samples, number of tap blocks Q
  at::Tensor taps;         // [Q, stride], zero beyond the window
};

Polyphase polyphase_taps(const at::Tensor& taps, int64_t stride, int64_t n_frames) {
  const int64_t window = taps.size(0);
  const int64_t phases = (window + stride - 1) / stride;
  auto padded = at::zeros({phases * stride}, taps.options());
  padded.narrow(0, 0, window).copy_(taps);
  return {n_frames + phases - 1, phases, padded.view({phases, stride})};
}


template <typename scalar_t>
void magnitudes(const scalar_t* z, scalar_t* m, int64_t valid, int64_t span) {
#pragma omp simd
  for (int64_t t = 0; t < valid; ++t) {
    const scalar_t re = z[2 * t], im = z[2 * t + 1];
    m[t] = std::sqrt(std::max(re * re + im * im, static_cast<scalar_t>(kMinPower)));
  }
  for (int64_t t = valid; t < span; ++t) m[t] = 0;
}

template <typename scalar_t>
void magnitude_backward(const scalar_t* z, const scalar_t* grad_m, scalar_t* grad_z, int64_t valid,
                        int64_t length) {
#pragma omp simd
  for (int64_t t = 0; t < valid; ++t) {
    const scalar_t re = z[2 * t], im = z[2 * t + 1];
    const scalar_t p = re * re + im * im;
    // d|z|/dz = z / |z|; zero where the clamp is active, as in the reference.
    const scalar_t scale = p > static_cast<scalar_t>(kMinPower)
                               ? grad_m[t] / std::sqrt(std::max(p, static_cast<scalar_t>(kMinPower)))
                               : scalar_t(0);
    grad_z[2 * t] = scale * re;
    grad_z[2 * t + 1] = scale * im;
  }
  for (int64_t t = valid; t < length; ++t) grad_z[2 * t] = grad_z[2 * t + 1] = 0;
}

}  // namespace

std::vector<at::Tensor> envelope_downsample_forward_cpu(const at::Tensor& analytic,
                                                        const at::Tensor& taps, int64_t stride,
                                                        int64_t n_frames, double power,
                                                        double offset, bool compress) {
  check_envelope_args(analytic, taps, stride, n_frames);
  TORCH_CHECK(analytic.device().is_cpu(), "envelope_downsample_forward_cpu needs CPU tensors");
  const int64_t rows = analytic.size(0), length = analytic.size(1);
  const Polyphase poly = polyphase_taps(taps, stride, n_frames);
  const int64_t span = poly.blocks * stride;  // may exceed length by < stride (zero taps there)
  auto out = at::empty({rows, n_frames}, analytic.options());
  auto envelope = at::empty({rows, n_frames}, analytic.options());
  AT_DISPATCH_FLOATING_TYPES(analytic.scalar_type(), "envelope_downsample_forward_cpu", [&] {
    const scalar_t* z = analytic.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    scalar_t* e = envelope.data_ptr<scalar_t>();
    const auto pw = static_cast<scalar_t>(power), off = static_cast<scalar_t>(offset);
    const auto taps_t = poly.taps.t();
    run_block_workers(rows, [&](const auto& take) {
      auto magnitude = at::empty({poly.blocks, stride}, analytic.options());
      auto phase_sums = at::empty({poly.blocks, poly.phases}, analytic.options());
      scalar_t* m = magnitude.data_ptr<scalar_t>();
      const scalar_t* pr = phase_sums.data_ptr<scalar_t>();
      for (int64_t row = take(); row < rows; row = take()) {
        magnitudes(z + row * length * 2, m, std::min(span, length), span);
        at::mm_out(phase_sums, magnitude, taps_t);
        for (int64_t f = 0; f < n_frames; ++f) {
          scalar_t acc = 0;
          for (int64_t q = 0; q < poly.phases; ++q) acc += pr[(f + q) * poly.phases + q];
          e[row * n_frames + f] = acc;
          o[row * n_frames + f] = compress ? std::pow(std::max(acc, scalar_t(0)) + off, pw) : acc;
        }
      }
    });
  });
  return {out, envelope};
}

at::Tensor envelope_downsample_backward_cpu(const at::Tensor& analytic, const at::Tensor& taps,
                                            const at::Tensor& grad_envelope, int64_t stride) {
  const int64_t n_frames = grad_envelope.size(-1);
  check_envelope_args(analytic, taps, stride, n_frames);
  TORCH_CHECK(analytic.device().is_cpu(), "envelope_downsample_backward_cpu needs CPU tensors");
  TORCH_CHECK(grad_envelope.is_contiguous() && grad_envelope.dim() == 2 &&
                  grad_envelope.size(0) == analytic.size(0) &&
                  grad_envelope.scalar_type() == analytic.scalar_type(),
              "grad_envelope must be a contiguous [rows, frames] tensor of the analytic's dtype");
  const int64_t rows = analytic.size(0), length = analytic.size(1);
  const Polyphase poly = polyphase_taps(taps, stride, n_frames);
  const int64_t span = poly.blocks * stride;
  auto grad_analytic = at::empty_like(analytic);
  AT_DISPATCH_FLOATING_TYPES(analytic.scalar_type(), "envelope_downsample_backward_cpu", [&] {
    const scalar_t* g = grad_envelope.data_ptr<scalar_t>();
    const scalar_t* z = analytic.data_ptr<scalar_t>();
    scalar_t* gz = grad_analytic.data_ptr<scalar_t>();
    run_block_workers(rows, [&](const auto& take) {
      auto grad_phase = at::empty({poly.blocks, poly.phases}, analytic.options());
      auto grad_magnitude = at::empty({poly.blocks, stride}, analytic.options());
      scalar_t* gp = grad_phase.data_ptr<scalar_t>();
      const scalar_t* gm = grad_magnitude.data_ptr<scalar_t>();
      for (int64_t row = take(); row < rows; row = take()) {
        // Transpose of the diagonal sum: frame f's gradient goes to P[f + q, q] for every q
        // (entries no frame reaches stay zero).
        std::fill(gp, gp + poly.blocks * poly.phases, scalar_t(0));
        for (int64_t f = 0; f < n_frames; ++f)
          for (int64_t q = 0; q < poly.phases; ++q)
            gp[(f + q) * poly.phases + q] = g[row * n_frames + f];
        at::mm_out(grad_magnitude, grad_phase, poly.taps);  // [blocks, D]
        magnitude_backward(z + row * length * 2, gm, gz + row * length * 2,
                           std::min(span, length), length);
      }
    });
  });
  return grad_analytic;
}
