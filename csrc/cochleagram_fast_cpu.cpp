// The fast, approximate cochleagram on the CPU (issue 20): forward and backward in one parallel
// region each, the algorithm of topoaudio/ops/cochleagram_fast.py (its docstring has the maths).
//
// Per channel k (band [lo, lo + L), transform size M, envelope bins m < n_bins):
//   z = ifft_M(X[lo + j] H[lo + j] M / T, j < L; zero-padded)       samples of z_k at t = n T / M
//   e = max(|z|, 1e-8)
//   E = fft_M(e)                                                     (two channels of the same M in
//                                                                     one complex FFT: e1 + i e2)
//   A[m mod P] += c_m Hw[m] / M E[m]   (c_0 = c_{M/2} = 1, else 2)    the correlation as a product
//   frame[f] = Re sum_r A[r] e^{2 pi i r f / P}                      (Hermitian part of A, two
//                                                                     channels in one length-P ifft)
// Blocks are (clip, pair of channels of one size M), taken from a shared counter
// (run_block_workers); every FFT runs on the worker's thread through descriptors cached per
// thread. The backward is the exact adjoint of these steps; each (clip, channel) writes the
// gradient of its band to a slot of its own, and a second pass sums the slots in a fixed order,
// so results do not depend on the schedule or the thread count.

#include "cochleagram.h"
#include <torch/extension.h>

#include "mkl_fft.h"
#include "parallel_blocks.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <tuple>
#include <vector>

namespace {

constexpr double kMinMagnitude = 1e-8;  // the exact op's sqrt(max(re^2 + im^2, 1e-16))

// Every transform here is scaled by 1 / n (BatchedFft's at::fft fallback supports only that);
// the constants below make up for it.
template <typename scalar_t>
const BatchedFft<scalar_t>& cached_fft(int64_t rows, int64_t length, bool forward) {
  using Key = std::tuple<int64_t, int64_t, bool>;
  thread_local std::map<Key, std::unique_ptr<BatchedFft<scalar_t>>> cache;
  auto& slot = cache[Key(rows, length, forward)];
  if (!slot) slot = std::make_unique<BatchedFft<scalar_t>>(rows, length, forward,
                                                           1.0 / static_cast<double>(length));
  return *slot;
}

struct FastPlan {
  int64_t channels, n_bins_spectrum, length, period, n_frames, max_bin;
  std::vector<int64_t> lo, width, size;
  std::vector<std::pair<int64_t, int64_t>> pairs;  // channels of one size; second -1 if alone
  int64_t max_size = 0;
  std::vector<int64_t> slot_offset;  // per channel: offset of its band in the gradient slots
  int64_t slot_width = 0;
};

FastPlan make_plan(const at::Tensor& bands, const at::Tensor& sizes, int64_t n_bins_spectrum,
                   int64_t length, int64_t period, int64_t n_frames, int64_t max_bin) {
  TORCH_CHECK(bands.dim() == 2 && bands.size(1) == 2 && bands.scalar_type() == at::kLong,
              "bands must be an int64 [channels, 2] tensor of (lo, width)");
  TORCH_CHECK(sizes.dim() == 1 && sizes.size(0) == bands.size(0) &&
                  sizes.scalar_type() == at::kLong, "sizes must be int64 [channels]");
  TORCH_CHECK(period >= 1 && n_frames >= 1 && n_frames <= period,
              "the fast cochleagram needs the stride to divide the length (period = T / D)");
  FastPlan plan{bands.size(0), n_bins_spectrum, length, period, n_frames, max_bin, {}, {}, {}, {}};
  const auto b = bands.contiguous();
  const auto s = sizes.contiguous();
  const int64_t* r = b.data_ptr<int64_t>();
  const int64_t* m = s.data_ptr<int64_t>();
  for (int64_t c = 0; c < plan.channels; ++c) {
    TORCH_CHECK(r[2 * c] >= 0 && r[2 * c + 1] >= 0 && r[2 * c] + r[2 * c + 1] <= n_bins_spectrum,
                "band of channel ", c, " is not within the spectrum's ", n_bins_spectrum, " bins");
    TORCH_CHECK(m[c] >= std::max<int64_t>(r[2 * c + 1], 2), "channel ", c, ": size ", m[c],
                " is below its band's width ", r[2 * c + 1]);
    plan.lo.push_back(r[2 * c]);
    plan.width.push_back(r[2 * c + 1]);
    plan.size.push_back(m[c]);
    plan.slot_offset.push_back(plan.slot_width);
    plan.slot_width += r[2 * c + 1];
    plan.max_size = std::max(plan.max_size, m[c]);
  }
  // pairs of channels of one size, largest sizes first (the longest blocks start first)
  std::map<int64_t, std::vector<int64_t>, std::greater<>> by_size;
  for (int64_t c = 0; c < plan.channels; ++c) by_size[plan.size[c]].push_back(c);
  for (const auto& [size, members] : by_size)
    for (size_t i = 0; i < members.size(); i += 2)
      plan.pairs.emplace_back(members[i], i + 1 < members.size() ? members[i + 1] : -1);
  return plan;
}

template <typename scalar_t>
using complex_t = c10::complex<scalar_t>;

// |z| as sqrt(re^2 + im^2): std::abs goes through hypot (overflow-safe, several times slower);
// check_samples bounds |z|^2 well below overflow.
template <typename scalar_t>
inline scalar_t magnitude(const complex_t<scalar_t>& z) {
  return std::sqrt(z.real() * z.real() + z.imag() * z.imag());
}

// c_m Hw[m] / M x M (the envelope FFT's 1/M) x P (the frame ifft's 1/P), for m < n_bins.
template <typename scalar_t>
complex_t<scalar_t> bin_weight(const complex_t<scalar_t>* response, int64_t m, int64_t size,
                               int64_t period) {
  const scalar_t twice = (m == 0 || 2 * m == size) ? scalar_t(1) : scalar_t(2);
  return response[m] * (twice * static_cast<scalar_t>(period));
}

template <typename scalar_t>
int64_t envelope_bins(const FastPlan& plan, int64_t size) {
  return std::min(plan.max_bin, size / 2) + 1;
}

// Per-worker buffers, sized for the largest transform.
template <typename scalar_t>
struct Buffers {
  at::Tensor band, analytic, packed, spectrum, folded, frames;
  Buffers(const FastPlan& plan, const at::TensorOptions& complex_options)
      : band(at::zeros({2, plan.max_size}, complex_options)),
        analytic(at::empty({2, plan.max_size}, complex_options)),
        packed(at::empty({plan.max_size}, complex_options)),
        spectrum(at::empty({plan.max_size}, complex_options)),
        folded(at::empty({2, plan.period}, complex_options)),
        frames(at::empty({plan.period}, complex_options)) {}
};

// Views of the first `size` points of each of a buffer's two rows, contiguous [2, size].
inline at::Tensor rows_of(const at::Tensor& buffer, int64_t size) {
  return buffer.view(-1).narrow(0, 0, 2 * size).view({2, size});
}
inline at::Tensor row_of(const at::Tensor& buffer, int64_t size) {
  return buffer.view(-1).narrow(0, 0, size);
}

// The two channels' analytic samples z [2, M] for one clip (row b of the second channel is zero
// when the pair has one channel).
template <typename scalar_t>
at::Tensor analytic_pair(Buffers<scalar_t>& buf, const FastPlan& plan,
                         const complex_t<scalar_t>* spectrum_row, const scalar_t* filters,
                         std::pair<int64_t, int64_t> pair, int64_t size) {
  at::Tensor band = rows_of(buf.band, size);
  auto* out = band.data_ptr<complex_t<scalar_t>>();
  const scalar_t scale = static_cast<scalar_t>(size) / static_cast<scalar_t>(plan.length);
  for (int64_t i = 0; i < 2; ++i) {
    const int64_t c = i == 0 ? pair.first : pair.second;
    complex_t<scalar_t>* row = out + i * size;
    std::fill(row, row + size, complex_t<scalar_t>(0, 0));
    if (c < 0) continue;
    const scalar_t* h = filters + c * plan.n_bins_spectrum + plan.lo[c];
    const complex_t<scalar_t>* x = spectrum_row + plan.lo[c];
    for (int64_t j = 0; j < plan.width[c]; ++j) row[j] = x[j] * (h[j] * scale);
  }
  at::Tensor analytic = rows_of(buf.analytic, size);
  cached_fft<scalar_t>(2, size, /*forward=*/false).run(band, analytic);  // ifft: 1/M
  return analytic;
}

}  // namespace

// spectrum: complex [rows, T/2 + 1] (rfft of the clips); filters: real [C, T/2 + 1] (the exact
// op's); bands: int64 [C, 2] (lo, width); sizes: int64 [C] (M_k); response: complex [>= max
// n_bins] (Hw[m] = sum_j h[j] e^{2 pi i m j / T}). Returns {out, envelope} [rows, C, n_frames].
std::vector<at::Tensor> cochleagram_fast_forward_cpu(
    const at::Tensor& spectrum, const at::Tensor& filters, const at::Tensor& bands,
    const at::Tensor& sizes, const at::Tensor& response, int64_t length, int64_t period,
    int64_t n_frames, int64_t max_bin, double power, double offset, bool compress) {
  TORCH_CHECK(spectrum.device().is_cpu() && spectrum.is_complex() && spectrum.dim() == 2 &&
                  spectrum.is_contiguous() && spectrum.size(1) == length / 2 + 1,
              "spectrum must be a contiguous complex CPU [rows, T/2 + 1] tensor");
  TORCH_CHECK(filters.dim() == 2 && filters.is_contiguous() &&
                  filters.scalar_type() == c10::toRealValueType(spectrum.scalar_type()) &&
                  filters.size(1) == spectrum.size(1),
              "filters must be contiguous real [channels, T/2 + 1] of the spectrum's precision");
  TORCH_CHECK(response.scalar_type() == spectrum.scalar_type() && response.dim() == 1 &&
                  response.is_contiguous(), "response must be contiguous complex [bins]");
  const FastPlan plan = make_plan(bands, sizes, spectrum.size(1), length, period, n_frames, max_bin);
  TORCH_CHECK(response.size(0) >= std::min(max_bin, plan.max_size / 2) + 1,
              "response holds too few bins");
  const int64_t rows = spectrum.size(0), n_pairs = static_cast<int64_t>(plan.pairs.size());
  auto out = at::empty({rows, plan.channels, n_frames}, filters.options());
  auto envelope = at::empty({rows, plan.channels, n_frames}, filters.options());
  AT_DISPATCH_FLOATING_TYPES(filters.scalar_type(), "cochleagram_fast_forward_cpu", [&] {
    using cplx = complex_t<scalar_t>;
    const auto* x = spectrum.data_ptr<cplx>();
    const scalar_t* h = filters.data_ptr<scalar_t>();
    const cplx* hw = response.data_ptr<cplx>();
    scalar_t* o = out.data_ptr<scalar_t>();
    scalar_t* e_out = envelope.data_ptr<scalar_t>();
    const auto pw = static_cast<scalar_t>(power), off = static_cast<scalar_t>(offset);
    const int64_t P = plan.period;
    run_block_workers(rows * n_pairs, [&](const auto& take) {
      Buffers<scalar_t> buf(plan, spectrum.options());
      for (int64_t block = take(); block < rows * n_pairs; block = take()) {
        const int64_t row = block / n_pairs;
        const auto pair = plan.pairs[block % n_pairs];
        const int64_t M = plan.size[pair.first], n_bins = envelope_bins<scalar_t>(plan, M);
        const auto analytic = analytic_pair(buf, plan, x + row * plan.n_bins_spectrum, h, pair, M);
        const cplx* z = analytic.data_ptr<cplx>();
        // both envelopes in one complex signal: e1 + i e2
        auto packed = row_of(buf.packed, M);
        cplx* p = packed.data_ptr<cplx>();
        const scalar_t floor = static_cast<scalar_t>(kMinMagnitude);
        for (int64_t n = 0; n < M; ++n)
          p[n] = cplx(std::max(magnitude(z[n]), floor), std::max(magnitude(z[M + n]), floor));
        auto spec = row_of(buf.spectrum, M);
        cached_fft<scalar_t>(1, M, /*forward=*/true).run(packed, spec);  // E / M, packed
        const cplx* Y = spec.data_ptr<cplx>();
        cplx* A = buf.folded.template data_ptr<cplx>();
        std::fill(A, A + 2 * P, cplx(0, 0));
        for (int64_t m = 0, r = 0; m < n_bins; ++m, r = (r + 1 == P ? 0 : r + 1)) {
          const cplx y = Y[m], y_mirror = std::conj(Y[m == 0 ? 0 : M - m]);
          const cplx e1 = (y + y_mirror) * scalar_t(0.5);
          const cplx e2 = (y - y_mirror) * cplx(0, -0.5);  // / (2i)
          const cplx w = bin_weight<scalar_t>(hw, m, M, P);
          A[r] += w * e1;
          A[P + r] += w * e2;
        }
        // frame = Re sum_r A[r] w^{rf}: the Hermitian parts of A1 and A2, packed, one ifft
        cplx* F = buf.frames.template data_ptr<cplx>();
        for (int64_t r = 0; r < P; ++r) {
          const int64_t mirror = r == 0 ? 0 : P - r;
          const cplx a1 = (A[r] + std::conj(A[mirror])) * scalar_t(0.5);
          const cplx a2 = (A[P + r] + std::conj(A[P + mirror])) * scalar_t(0.5);
          F[r] = a1 + cplx(0, 1) * a2;
        }
        auto frames_out = row_of(buf.spectrum, P);  // spectrum is free again
        cached_fft<scalar_t>(1, P, /*forward=*/false).run(buf.frames, frames_out);
        const cplx* fr = frames_out.data_ptr<cplx>();
        for (int64_t i = 0; i < 2; ++i) {
          const int64_t c = i == 0 ? pair.first : pair.second;
          if (c < 0) continue;
          const int64_t at = (row * plan.channels + c) * n_frames;
          for (int64_t f = 0; f < n_frames; ++f) {
            const scalar_t v = i == 0 ? fr[f].real() : fr[f].imag();
            e_out[at + f] = v;
            o[at + f] = compress ? std::pow(std::max(v, scalar_t(0)) + off, pw) : v;
          }
        }
      }
    });
  });
  return {out, envelope};
}

// grad_envelope: [rows, C, n_frames] (w.r.t. the uncompressed envelope). Returns the gradient
// w.r.t. the spectrum, complex [rows, T/2 + 1] (the caller applies the adjoint of rfft).
at::Tensor cochleagram_fast_backward_cpu(const at::Tensor& grad_envelope,
                                         const at::Tensor& spectrum, const at::Tensor& filters,
                                         const at::Tensor& bands, const at::Tensor& sizes,
                                         const at::Tensor& response, int64_t length,
                                         int64_t period, int64_t max_bin) {
  TORCH_CHECK(grad_envelope.dim() == 3 && grad_envelope.is_contiguous() &&
                  grad_envelope.size(0) == spectrum.size(0) &&
                  grad_envelope.size(1) == filters.size(0) &&
                  grad_envelope.scalar_type() == filters.scalar_type(),
              "grad_envelope must be a contiguous [rows, channels, frames] tensor of the filters' dtype");
  TORCH_CHECK(spectrum.is_complex() && spectrum.is_contiguous() && filters.is_contiguous() &&
                  response.is_contiguous() && response.scalar_type() == spectrum.scalar_type(),
              "spectrum, filters and response must be contiguous, of one precision");
  const int64_t n_frames = grad_envelope.size(2);
  const FastPlan plan = make_plan(bands, sizes, spectrum.size(1), length, period, n_frames, max_bin);
  const int64_t rows = spectrum.size(0), n_pairs = static_cast<int64_t>(plan.pairs.size());
  auto slots = at::empty({rows, plan.slot_width}, spectrum.options());
  auto grad_spectrum = at::zeros({rows, plan.n_bins_spectrum}, spectrum.options());
  AT_DISPATCH_FLOATING_TYPES(filters.scalar_type(), "cochleagram_fast_backward_cpu", [&] {
    using cplx = complex_t<scalar_t>;
    const auto* x = spectrum.data_ptr<cplx>();
    const scalar_t* h = filters.data_ptr<scalar_t>();
    const cplx* hw = response.data_ptr<cplx>();
    const scalar_t* g_env = grad_envelope.data_ptr<scalar_t>();
    cplx* slot = slots.data_ptr<cplx>();
    const int64_t P = plan.period;
    run_block_workers(rows * n_pairs, [&](const auto& take) {
      Buffers<scalar_t> buf(plan, spectrum.options());
      auto grad_z = at::empty({2, plan.max_size}, spectrum.options());
      for (int64_t block = take(); block < rows * n_pairs; block = take()) {
        const int64_t row = block / n_pairs;
        const auto pair = plan.pairs[block % n_pairs];
        const int64_t M = plan.size[pair.first], n_bins = envelope_bins<scalar_t>(plan, M);
        const auto analytic = analytic_pair(buf, plan, x + row * plan.n_bins_spectrum, h, pair, M);
        const cplx* z = analytic.data_ptr<cplx>();
        // G_A = sum_f g[f] w^{-rf}: both channels' real gradients in one forward FFT
        cplx* F = buf.frames.template data_ptr<cplx>();
        std::fill(F, F + P, cplx(0, 0));
        for (int64_t i = 0; i < 2; ++i) {
          const int64_t c = i == 0 ? pair.first : pair.second;
          if (c < 0) continue;
          const scalar_t* g = g_env + (row * plan.channels + c) * n_frames;
          for (int64_t f = 0; f < n_frames; ++f) F[f] += i == 0 ? cplx(g[f], 0) : cplx(0, g[f]);
        }
        auto q = row_of(buf.spectrum, P);
        cached_fft<scalar_t>(1, P, /*forward=*/true).run(buf.frames, q);  // / P
        const cplx* Q = q.data_ptr<cplx>();
        cplx* GA = buf.folded.template data_ptr<cplx>();
        for (int64_t r = 0; r < P; ++r) {
          const cplx y = Q[r], y_mirror = std::conj(Q[r == 0 ? 0 : P - r]);
          GA[r] = (y + y_mirror) * scalar_t(0.5);
          GA[P + r] = (y - y_mirror) * cplx(0, -0.5);
        }
        // G_E[m] = conj(w_m) G_A[m mod P]; g_e[n] = Re sum_m G_E[m] e^{2 pi i m n / M}: the two
        // channels' Hermitian spectra, packed (H1 + i H2), one inverse FFT
        cplx* S = buf.packed.template data_ptr<cplx>();
        std::fill(S, S + M, cplx(0, 0));
        for (int64_t m = 0, r = 0; m < n_bins; ++m, r = (r + 1 == P ? 0 : r + 1)) {
          // G_E = conj(c_m Hw / M) G_A and G_A = P GA (the fft's 1/P); the ifft's 1/M wants
          // M G_E: conj(c_m Hw) P GA, which is conj(bin_weight) GA
          const cplx w = std::conj(bin_weight<scalar_t>(hw, m, M, P));
          const cplx g1 = w * GA[r], g2 = w * GA[P + r];
          const cplx half1 = g1 * scalar_t(0.5), half2 = g2 * scalar_t(0.5);
          const int64_t mirror = m == 0 ? 0 : M - m;
          S[m] += half1 + cplx(0, 1) * half2;
          S[mirror] += std::conj(half1) + cplx(0, 1) * std::conj(half2);
        }
        auto ge = row_of(buf.spectrum, M);
        cached_fft<scalar_t>(1, M, /*forward=*/false).run(row_of(buf.packed, M), ge);  // / M
        const cplx* GE = ge.data_ptr<cplx>();
        // through e = max(|z|, 1e-8): z / |z| where not floored
        auto gz = rows_of(grad_z, M);
        cplx* gzp = gz.data_ptr<cplx>();
        const scalar_t floor = static_cast<scalar_t>(kMinMagnitude);
        for (int64_t i = 0; i < 2; ++i)
          for (int64_t n = 0; n < M; ++n) {
            const cplx zn = z[i * M + n];
            const scalar_t mag = magnitude(zn);
            const scalar_t g = i == 0 ? GE[n].real() : GE[n].imag();
            gzp[i * M + n] = mag > floor ? zn * (g / mag) : cplx(0, 0);
          }
        // adjoint of ifft_M (1/M) is fft_M / M: the descriptor's forward with 1/M
        auto gb = rows_of(buf.band, M);
        cached_fft<scalar_t>(2, M, /*forward=*/true).run(gz, gb);
        const cplx* GB = gb.data_ptr<cplx>();
        const scalar_t scale = static_cast<scalar_t>(M) / static_cast<scalar_t>(plan.length);
        for (int64_t i = 0; i < 2; ++i) {
          const int64_t c = i == 0 ? pair.first : pair.second;
          if (c < 0) continue;
          const scalar_t* hc = h + c * plan.n_bins_spectrum + plan.lo[c];
          cplx* s = slot + row * plan.slot_width + plan.slot_offset[c];
          for (int64_t j = 0; j < plan.width[c]; ++j) s[j] = GB[i * M + j] * (hc[j] * scale);
        }
      }
    });
    cplx* gs = grad_spectrum.data_ptr<cplx>();
    run_block_workers(rows, [&](const auto& take) {
      for (int64_t row = take(); row < rows; row = take())
        for (int64_t c = 0; c < plan.channels; ++c) {
          const cplx* s = slot + row * plan.slot_width + plan.slot_offset[c];
          cplx* g = gs + row * plan.n_bins_spectrum + plan.lo[c];
          for (int64_t j = 0; j < plan.width[c]; ++j) g[j] += s[j];
        }
    });
  });
  return grad_spectrum;
}
