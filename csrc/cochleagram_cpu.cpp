// The cochleagram on the CPU (see cochleagram.h): stages A and B in one parallel region (issue 10).
//
// The strided correlation env[f] = sum_j |z[f D + j]| h[j] is rewritten in polyphase form so that
// BLAS does the multiply-adds: with the taps zero-padded to Q = ceil(W / D) blocks of D,
//   P[b, q] = sum_p |z[b D + p]| h[q D + p]        (a [blocks, D] x [D, Q] GEMM per row)
//   env[f]  = sum_q P[f + q, q]                     (Q diagonals)
// Each worker computes whole rows, their magnitudes and GEMMs (single-threaded), in buffers of its
// own, so a row's numbers do not depend on the schedule.
#include "cochleagram.h"

#include "mkl_fft.h"
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

// One row of stage B: z [length] complex (interleaved) -> envelope e[n_frames] and output o
// (compressed or not). magnitude [blocks, D] and phase_sums [blocks, Q] are the caller's buffers.
template <typename scalar_t>
void downsample_row(const scalar_t* z, int64_t length, const Polyphase& poly,
                    const at::Tensor& taps_t, at::Tensor& magnitude, at::Tensor& phase_sums,
                    scalar_t* e, scalar_t* o, int64_t n_frames, scalar_t pw, scalar_t off,
                    bool compress) {
  const int64_t span = poly.blocks * magnitude.size(1);  // may exceed length (zero taps there)
  magnitudes(z, magnitude.data_ptr<scalar_t>(), std::min(span, length), span);
  at::mm_out(phase_sums, magnitude, taps_t);
  const scalar_t* pr = phase_sums.data_ptr<scalar_t>();
  for (int64_t f = 0; f < n_frames; ++f) {
    scalar_t acc = 0;
    for (int64_t q = 0; q < poly.phases; ++q) acc += pr[(f + q) * poly.phases + q];
    e[f] = acc;
    o[f] = compress ? std::pow(std::max(acc, scalar_t(0)) + off, pw) : acc;
  }
}

// Its adjoint: g[n_frames] (gradient w.r.t. the envelope) -> grad_z [length] complex.
template <typename scalar_t>
void downsample_row_backward(const scalar_t* z, int64_t length, const Polyphase& poly,
                             const scalar_t* g, int64_t n_frames, at::Tensor& grad_phase,
                             at::Tensor& grad_magnitude, scalar_t* grad_z) {
  const int64_t span = poly.blocks * grad_magnitude.size(1);
  scalar_t* gp = grad_phase.data_ptr<scalar_t>();
  // Transpose of the diagonal sum: frame f's gradient goes to P[f + q, q] for every q (entries
  // no frame reaches stay zero).
  std::fill(gp, gp + poly.blocks * poly.phases, scalar_t(0));
  for (int64_t f = 0; f < n_frames; ++f)
    for (int64_t q = 0; q < poly.phases; ++q) gp[(f + q) * poly.phases + q] = g[f];
  at::mm_out(grad_magnitude, grad_phase, poly.taps);  // [blocks, D]
  magnitude_backward(z, grad_magnitude.data_ptr<scalar_t>(), grad_z, std::min(span, length),
                     length);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// The whole op on the CPU: stage A (band of the spectrum times the filter, complex inverse FFT)
// and stage B for one block of (clip, group of adjacent channels) at a time, the blocks handed out
// dynamically in one parallel region. Stage A used to be a loop of torch.fft calls in Python, each
// split statically across the threads by ATen: under contention every call waited for the slowed
// thread. Here each worker runs its FFTs and GEMMs on its own thread (run_block_workers), so the
// numbers of a block do not depend on the thread count.
namespace {

constexpr int64_t kGroupChannels = 8;  // channels per block: one batched FFT of 8 rows, ~2.5 MB

struct ChannelGroups {
  int64_t channels, count;
  std::vector<int64_t> lo, hi, offset;  // per group: band [lo, hi) and its offset in the partials
  int64_t total_width = 0;
};

ChannelGroups channel_groups(const at::Tensor& bands, int64_t n_bins) {
  TORCH_CHECK(bands.dim() == 2 && bands.size(1) == 2 && bands.scalar_type() == at::kLong,
              "bands must be an int64 [channels, 2] tensor of [lo, hi) bin ranges");
  const auto b = bands.contiguous();
  const int64_t* r = b.data_ptr<int64_t>();
  ChannelGroups groups;
  groups.channels = b.size(0);
  groups.count = (groups.channels + kGroupChannels - 1) / kGroupChannels;
  for (int64_t g = 0; g < groups.count; ++g) {
    int64_t lo = n_bins, hi = 0;
    for (int64_t c = g * kGroupChannels; c < std::min(groups.channels, (g + 1) * kGroupChannels); ++c) {
      TORCH_CHECK(0 <= r[2 * c] && r[2 * c] <= r[2 * c + 1] && r[2 * c + 1] <= n_bins,
                  "band of channel ", c, " is not within the spectrum's ", n_bins, " bins");
      if (r[2 * c + 1] > r[2 * c]) lo = std::min(lo, r[2 * c]), hi = std::max(hi, r[2 * c + 1]);
    }
    if (hi <= lo) lo = hi = 0;  // a group of empty bands
    groups.lo.push_back(lo);
    groups.hi.push_back(hi);
    groups.offset.push_back(groups.total_width);
    groups.total_width += hi - lo;
  }
  return groups;
}

// The checks both directions share (the backward reads n_frames from its gradient).
void check_whole_op_args(const at::Tensor& spectrum, const at::Tensor& filters,
                         const at::Tensor& bands, const at::Tensor& taps, int64_t length,
                         int64_t stride, int64_t n_frames) {
  TORCH_CHECK(spectrum.device().is_cpu() && filters.device().is_cpu(),
              "the CPU cochleagram needs CPU tensors");
  TORCH_CHECK(spectrum.is_complex() && spectrum.dim() == 2 && spectrum.is_contiguous(),
              "spectrum must be a contiguous complex [rows, bins] tensor");
  TORCH_CHECK(filters.dim() == 2 && filters.is_contiguous() &&
                  filters.scalar_type() == c10::toRealValueType(spectrum.scalar_type()),
              "filters must be a contiguous real [channels, bins] tensor of the spectrum's precision");
  TORCH_CHECK(spectrum.size(1) == filters.size(1) && spectrum.size(1) == length / 2 + 1,
              "spectrum and filters must hold the length // 2 + 1 bins of a length-", length,
              " signal");
  TORCH_CHECK(bands.dim() == 2 && bands.size(0) == filters.size(0),
              "bands and filters disagree on the channels");
  TORCH_CHECK(taps.dim() == 1 && taps.is_contiguous() && taps.scalar_type() == filters.scalar_type(),
              "taps must be a contiguous 1-D tensor of the filters' dtype");
  TORCH_CHECK(stride >= 1 && n_frames >= 1 && (n_frames - 1) * stride + taps.size(0) <= length,
              "the last downsampling window runs past the end of the signal");
}

// Per worker: the band buffer (complex [group, length], zero outside the band last written), the
// group's analytic subbands (complex [group, length]) and the worker's own inverse FFT. Every
// block transforms all kGroupChannels rows (one descriptor); a last, smaller group's extra rows
// are zero and their output is never read.
template <typename scalar_t>
struct StageA {
  at::Tensor band, analytic;
  BatchedFft<scalar_t> ifft;
  int64_t written_lo = 0, written_hi = 0;

  StageA(int64_t length, const at::TensorOptions& complex_options)
      : band(at::zeros({kGroupChannels, length}, complex_options)),
        analytic(at::empty({kGroupChannels, length}, complex_options)),
        ifft(kGroupChannels, length, /*forward=*/false, 1.0 / static_cast<double>(length)) {}

  // The analytic subbands of channels [c0, c0 + n) of one clip: X[k] H_c[k] on [lo, hi), zero
  // elsewhere (the one-sided spectrum), then an inverse FFT of length T. Returns [n, T] complex.
  at::Tensor subbands(const c10::complex<scalar_t>* spectrum_row, const scalar_t* filters,
                      int64_t n_bins, int64_t c0, int64_t n, int64_t lo, int64_t hi) {
    const int64_t length = band.size(1);
    auto* buffer = band.data_ptr<c10::complex<scalar_t>>();
    for (int64_t c = 0; c < kGroupChannels; ++c)  // clear only what the previous block wrote
      std::fill(buffer + c * length + written_lo, buffer + c * length + written_hi,
                c10::complex<scalar_t>(0, 0));
    for (int64_t c = 0; c < n; ++c) {
      const scalar_t* h = filters + (c0 + c) * n_bins;
      for (int64_t k = lo; k < hi; ++k) buffer[c * length + k] = spectrum_row[k] * h[k];
    }
    written_lo = lo, written_hi = hi;
    ifft.run(band, analytic);
    return analytic;
  }
};

}  // namespace

std::vector<at::Tensor> cochleagram_forward_cpu(const at::Tensor& spectrum,
                                                const at::Tensor& filters, const at::Tensor& bands,
                                                const at::Tensor& taps, int64_t length,
                                                int64_t stride, int64_t n_frames, double power,
                                                double offset, bool compress) {
  check_whole_op_args(spectrum, filters, bands, taps, length, stride, n_frames);
  const int64_t rows = spectrum.size(0), n_bins = spectrum.size(1);
  const ChannelGroups groups = channel_groups(bands, n_bins);
  const Polyphase poly = polyphase_taps(taps, stride, n_frames);
  auto out = at::empty({rows, groups.channels, n_frames}, filters.options());
  auto envelope = at::empty({rows, groups.channels, n_frames}, filters.options());
  AT_DISPATCH_FLOATING_TYPES(filters.scalar_type(), "cochleagram_forward_cpu", [&] {
    const auto* x = spectrum.data_ptr<c10::complex<scalar_t>>();
    const scalar_t* h = filters.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    scalar_t* e = envelope.data_ptr<scalar_t>();
    const auto pw = static_cast<scalar_t>(power), off = static_cast<scalar_t>(offset);
    const auto taps_t = poly.taps.t();
    run_block_workers(rows * groups.count, [&](const auto& take) {
      StageA<scalar_t> stage_a(length, spectrum.options());
      auto magnitude = at::empty({poly.blocks, stride}, filters.options());
      auto phase_sums = at::empty({poly.blocks, poly.phases}, filters.options());
      for (int64_t block = take(); block < rows * groups.count; block = take()) {
        const int64_t row = block / groups.count, g = block % groups.count;
        const int64_t c0 = g * kGroupChannels, n = std::min(kGroupChannels, groups.channels - c0);
        const auto analytic = stage_a.subbands(x + row * n_bins, h, n_bins, c0, n, groups.lo[g],
                                               groups.hi[g]);
        const auto* z = reinterpret_cast<const scalar_t*>(analytic.data_ptr());
        for (int64_t c = 0; c < n; ++c) {
          const int64_t at_out = (row * groups.channels + c0 + c) * n_frames;
          downsample_row(z + c * length * 2, length, poly, taps_t, magnitude, phase_sums,
                         e + at_out, o + at_out, n_frames, pw, off, compress);
        }
      }
    });
  });
  return {out, envelope};
}

at::Tensor cochleagram_backward_cpu(const at::Tensor& grad_envelope, const at::Tensor& spectrum,
                                    const at::Tensor& filters, const at::Tensor& bands,
                                    const at::Tensor& taps, int64_t length, int64_t stride) {
  TORCH_CHECK(grad_envelope.dim() == 3 && grad_envelope.is_contiguous() &&
                  grad_envelope.size(0) == spectrum.size(0) &&
                  grad_envelope.size(1) == filters.size(0) &&
                  grad_envelope.scalar_type() == filters.scalar_type(),
              "grad_envelope must be a contiguous [rows, channels, frames] tensor of the filters' dtype");
  const int64_t n_frames = grad_envelope.size(2);
  check_whole_op_args(spectrum, filters, bands, taps, length, stride, n_frames);
  const int64_t rows = spectrum.size(0), n_bins = spectrum.size(1);
  const ChannelGroups groups = channel_groups(bands, n_bins);
  const Polyphase poly = polyphase_taps(taps, stride, n_frames);
  // Each block writes the gradient of its group's band to a slot of its own; a second pass sums
  // the slots in a fixed order, so the result does not depend on which thread took which block.
  auto partials = at::empty({rows, groups.total_width}, spectrum.options());
  auto grad_spectrum = at::zeros({rows, n_bins}, spectrum.options());
  AT_DISPATCH_FLOATING_TYPES(filters.scalar_type(), "cochleagram_backward_cpu", [&] {
    using complex_t = c10::complex<scalar_t>;
    const auto* x = spectrum.data_ptr<complex_t>();
    const scalar_t* h = filters.data_ptr<scalar_t>();
    const scalar_t* g_env = grad_envelope.data_ptr<scalar_t>();
    complex_t* part = partials.data_ptr<complex_t>();
    run_block_workers(rows * groups.count, [&](const auto& take) {
      StageA<scalar_t> stage_a(length, spectrum.options());
      // rows beyond a last, smaller group are transformed too (and ignored): keep them finite
      auto grad_analytic = at::zeros({kGroupChannels, length}, spectrum.options());
      auto grad_bins = at::empty({kGroupChannels, length}, spectrum.options());
      // adjoint of ifft (norm "backward") is fft / T
      const BatchedFft<scalar_t> fft(kGroupChannels, length, /*forward=*/true,
                                     1.0 / static_cast<double>(length));
      auto grad_phase = at::empty({poly.blocks, poly.phases}, filters.options());
      auto grad_magnitude = at::empty({poly.blocks, stride}, filters.options());
      for (int64_t block = take(); block < rows * groups.count; block = take()) {
        const int64_t row = block / groups.count, g = block % groups.count;
        const int64_t c0 = g * kGroupChannels, n = std::min(kGroupChannels, groups.channels - c0);
        const int64_t lo = groups.lo[g], hi = groups.hi[g];
        const auto analytic = stage_a.subbands(x + row * n_bins, h, n_bins, c0, n, lo, hi);
        const auto* z = reinterpret_cast<const scalar_t*>(analytic.data_ptr());
        auto* gz = reinterpret_cast<scalar_t*>(grad_analytic.data_ptr());
        for (int64_t c = 0; c < n; ++c)
          downsample_row_backward(z + c * length * 2, length, poly,
                                  g_env + (row * groups.channels + c0 + c) * n_frames, n_frames,
                                  grad_phase, grad_magnitude, gz + c * length * 2);
        fft.run(grad_analytic, grad_bins);  // only the band [lo, hi) reaches the spectrum
        const complex_t* gb = grad_bins.data_ptr<complex_t>();
        complex_t* slot = part + row * groups.total_width + groups.offset[g];
        for (int64_t k = lo; k < hi; ++k) {
          complex_t acc(0, 0);
          for (int64_t c = 0; c < n; ++c) acc += gb[c * length + k] * h[(c0 + c) * n_bins + k];
          slot[k - lo] = acc;
        }
      }
    });
    complex_t* gs = grad_spectrum.data_ptr<complex_t>();
    run_block_workers(rows, [&](const auto& take) {
      for (int64_t row = take(); row < rows; row = take())
        for (int64_t g = 0; g < groups.count; ++g) {
          const complex_t* slot = part + row * groups.total_width + groups.offset[g];
          for (int64_t k = groups.lo[g]; k < groups.hi[g]; ++k)
            gs[row * n_bins + k] += slot[k - groups.lo[g]];
        }
    });
  });
  return grad_spectrum;
}
