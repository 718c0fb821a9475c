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
// The transforms are unnormalised (MKL would scale in a pass of its own); their 1/M and 1/P are
// folded into the band's and the bins' weights. Buffers are plain arrays and the transforms run on
// raw pointers: a batch of 16 clips is ~1,700 blocks, where creating tensor views cost ~15 %.
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

// Unnormalised transforms, cached per thread. input_distance: see BatchedFft.
template <typename scalar_t>
const BatchedFft<scalar_t>& cached_fft(int64_t rows, int64_t length, bool forward,
                                       int64_t input_distance = 0) {
  using Key = std::tuple<int64_t, int64_t, bool, int64_t>;
  thread_local std::map<Key, std::unique_ptr<BatchedFft<scalar_t>>> cache;
  auto& slot = cache[Key(rows, length, forward, input_distance)];
  if (!slot) slot = std::make_unique<BatchedFft<scalar_t>>(rows, length, forward, 1.0, input_distance);
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

// c_m Hw[m] / M (c_0 = c_{M/2} = 1, else 2): the weight of envelope bin m of an unnormalised
// size-M transform in the frames of an unnormalised length-P inverse transform.
template <typename scalar_t>
inline complex_t<scalar_t> bin_weight(const complex_t<scalar_t>& response, int64_t m, int64_t size) {
  const scalar_t twice = (m == 0 || 2 * m == size) ? scalar_t(1) : scalar_t(2);
  return response * (twice / static_cast<scalar_t>(size));  // as fold_range
}

template <typename scalar_t>
int64_t envelope_bins(const FastPlan& plan, int64_t size) {
  return std::min(plan.max_bin, size / 2) + 1;
}

// Per-worker buffers, sized for the largest transform. The band buffer's two rows sit max_size
// apart and stay zero beyond the last band written into them (band_written).
template <typename scalar_t>
struct Buffers {
  using cplx = complex_t<scalar_t>;
  std::vector<cplx> band, analytic, packed, spectrum, folded, frames;
  int64_t band_written[2] = {0, 0};
  explicit Buffers(const FastPlan& plan)
      : band(2 * plan.max_size), analytic(2 * plan.max_size), packed(plan.max_size),
        spectrum(std::max(plan.max_size, plan.period)), folded(2 * plan.period),
        frames(plan.period) {}
};

// The two channels' analytic samples z [2, M] (rows M apart) for one clip; the second row is zero
// when the pair has one channel.
template <typename scalar_t>
const complex_t<scalar_t>* analytic_pair(Buffers<scalar_t>& buf, const FastPlan& plan,
                                         const complex_t<scalar_t>* spectrum_row,
                                         const scalar_t* filters, std::pair<int64_t, int64_t> pair,
                                         int64_t size) {
  using cplx = complex_t<scalar_t>;
  const scalar_t scale = scalar_t(1) / static_cast<scalar_t>(plan.length);  // M / T, and the ifft's 1/M
  for (int64_t i = 0; i < 2; ++i) {
    const int64_t c = i == 0 ? pair.first : pair.second;
    cplx* row = buf.band.data() + i * plan.max_size;
    const int64_t width = c < 0 ? 0 : plan.width[c];
    if (c >= 0) {
      const scalar_t* h = filters + c * plan.n_bins_spectrum + plan.lo[c];
      const cplx* x = spectrum_row + plan.lo[c];
      for (int64_t j = 0; j < width; ++j) row[j] = x[j] * (h[j] * scale);
    }
    if (buf.band_written[i] > width) std::fill(row + width, row + buf.band_written[i], cplx(0, 0));
    buf.band_written[i] = width;
  }
  cached_fft<scalar_t>(2, size, /*forward=*/false, plan.max_size).run(buf.band.data(),
                                                                      buf.analytic.data());
  return buf.analytic.data();
}

// packed[n] = max(|z1[n]|, 1e-8) + i max(|z2[n]|, 1e-8): both envelopes in one complex signal.
// |z| as sqrt(re^2 + im^2): std::abs goes through hypot (overflow-safe, several times slower);
// check_samples bounds |z|^2 well below overflow.
template <typename scalar_t>
void packed_envelopes(const complex_t<scalar_t>* z, int64_t size, complex_t<scalar_t>* packed) {
  const scalar_t* __restrict zf = reinterpret_cast<const scalar_t*>(z);
  scalar_t* __restrict pf = reinterpret_cast<scalar_t*>(packed);
  const scalar_t floor = static_cast<scalar_t>(kMinMagnitude);
  const scalar_t* __restrict zf2 = zf + 2 * size;
#pragma omp simd
  for (int64_t n = 0; n < size; ++n) {
    const scalar_t a = zf[2 * n], b = zf[2 * n + 1], c = zf2[2 * n], d = zf2[2 * n + 1];
    pf[2 * n] = std::max(std::sqrt(a * a + b * b), floor);
    pf[2 * n + 1] = std::max(std::sqrt(c * c + d * d), floor);
  }
}

// A[r] += w_m e1[m], A[P + r] += w_m e2[m] for bins m in [m0, m1) (r = m - base, all in
// [0, P)) of the same weight factor c (c_m = 1 for m = 0 and M/2, else 2), where E = e1 + i e2 is
// the unnormalised transform Y of a packed pair: e1 = (Y[m] + conj(Y[M - m])) / 2,
// e2 = (Y[m] - conj(Y[M - m])) / 2i. Plain arrays and no branch, so that the loop vectorises
// (GCC does not vectorise loads of c10::complex).
template <typename scalar_t>
inline void fold_range(const scalar_t* __restrict y, const scalar_t* __restrict hw, int64_t size,
                       int64_t m0, int64_t m1, int64_t base, scalar_t c, scalar_t* __restrict a,
                       scalar_t* __restrict a2) {
  const scalar_t weight = c / static_cast<scalar_t>(size);  // c_m / M
#pragma omp simd
  for (int64_t m = m0; m < m1; ++m) {
    const int64_t mirror = m == 0 ? 0 : size - m, r = m - base;
    const scalar_t wr = hw[2 * m] * weight, wi = hw[2 * m + 1] * weight;
    const scalar_t yr = y[2 * m], yi = y[2 * m + 1], mr = y[2 * mirror], mi = y[2 * mirror + 1];
    const scalar_t e1r = (yr + mr) * scalar_t(0.5), e1i = (yi - mi) * scalar_t(0.5);
    const scalar_t e2r = (yi + mi) * scalar_t(0.5), e2i = (mr - yr) * scalar_t(0.5);
    a[2 * r] += wr * e1r - wi * e1i;
    a[2 * r + 1] += wr * e1i + wi * e1r;
    a2[2 * r] += wr * e2r - wi * e2i;
    a2[2 * r + 1] += wr * e2i + wi * e2r;
  }
}

// A[m mod P] += c_m Hw[m] / M e1[m] and A[P + m mod P] += ... e2[m] for m < n_bins: the
// correlation with the window as a product. A: 2 P complex, zeroed here.
template <typename scalar_t>
void fold_bins(const complex_t<scalar_t>* Y, const complex_t<scalar_t>* response, int64_t size,
               int64_t n_bins, int64_t period, complex_t<scalar_t>* A) {
  std::fill(A, A + 2 * period, complex_t<scalar_t>(0, 0));
  const auto* y = reinterpret_cast<const scalar_t*>(Y);
  const auto* hw = reinterpret_cast<const scalar_t*>(response);
  auto* a = reinterpret_cast<scalar_t*>(A);
  auto* a2 = a + 2 * period;
  const int64_t half = size % 2 == 0 ? size / 2 : -1;  // the other bin with c_m = 1
  for (int64_t base = 0; base < n_bins; base += period) {
    const int64_t end = std::min(n_bins, base + period);
    const int64_t lo = std::max<int64_t>(base, 1);
    if (base == 0) fold_range(y, hw, size, 0, 1, base, scalar_t(1), a, a2);
    if (half >= lo && half < end) {
      fold_range(y, hw, size, lo, half, base, scalar_t(2), a, a2);
      fold_range(y, hw, size, half, half + 1, base, scalar_t(1), a, a2);
      fold_range(y, hw, size, half + 1, end, base, scalar_t(2), a, a2);
    } else {
      fold_range(y, hw, size, lo, end, base, scalar_t(2), a, a2);
    }
  }
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
      Buffers<scalar_t> buf(plan);
      for (int64_t block = take(); block < rows * n_pairs; block = take()) {
        const int64_t row = block / n_pairs;
        const auto pair = plan.pairs[block % n_pairs];
        const int64_t M = plan.size[pair.first], n_bins = envelope_bins<scalar_t>(plan, M);
        const cplx* z = analytic_pair(buf, plan, x + row * plan.n_bins_spectrum, h, pair, M);
        packed_envelopes(z, M, buf.packed.data());
        cached_fft<scalar_t>(1, M, /*forward=*/true).run(buf.packed.data(), buf.spectrum.data());
        cplx* A = buf.folded.data();
        fold_bins(buf.spectrum.data(), hw, M, n_bins, P, A);
        // frame = Re sum_r A[r] w^{rf}: the Hermitian parts of A1 and A2, packed, one ifft
        cplx* F = buf.frames.data();
        for (int64_t r = 0; r < P; ++r) {
          const int64_t mirror = r == 0 ? 0 : P - r;
          const cplx a1 = (A[r] + std::conj(A[mirror])) * scalar_t(0.5);
          const cplx a2 = (A[P + r] + std::conj(A[P + mirror])) * scalar_t(0.5);
          F[r] = a1 + cplx(0, 1) * a2;
        }
        cplx* fr = buf.spectrum.data();  // free again
        cached_fft<scalar_t>(1, P, /*forward=*/false).run(F, fr);
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
    // the adjoint of the band's weight X H / T (the transforms below are unnormalised too)
    const scalar_t band_scale = scalar_t(1) / static_cast<scalar_t>(plan.length);
    run_block_workers(rows * n_pairs, [&](const auto& take) {
      Buffers<scalar_t> buf(plan);
      std::vector<cplx> grad_z(2 * plan.max_size), grad_band(2 * plan.max_size);
      for (int64_t block = take(); block < rows * n_pairs; block = take()) {
        const int64_t row = block / n_pairs;
        const auto pair = plan.pairs[block % n_pairs];
        const int64_t M = plan.size[pair.first], n_bins = envelope_bins<scalar_t>(plan, M);
        const cplx* z = analytic_pair(buf, plan, x + row * plan.n_bins_spectrum, h, pair, M);
        // G_A = sum_f g[f] w^{-rf}: both channels' real gradients in one forward FFT
        cplx* F = buf.frames.data();
        std::fill(F, F + P, cplx(0, 0));
        for (int64_t i = 0; i < 2; ++i) {
          const int64_t c = i == 0 ? pair.first : pair.second;
          if (c < 0) continue;
          const scalar_t* g = g_env + (row * plan.channels + c) * n_frames;
          for (int64_t f = 0; f < n_frames; ++f) F[f] += i == 0 ? cplx(g[f], 0) : cplx(0, g[f]);
        }
        cplx* Q = buf.spectrum.data();
        cached_fft<scalar_t>(1, P, /*forward=*/true).run(F, Q);
        cplx* GA = buf.folded.data();
        for (int64_t r = 0; r < P; ++r) {
          const cplx y = Q[r], y_mirror = std::conj(Q[r == 0 ? 0 : P - r]);
          GA[r] = (y + y_mirror) * scalar_t(0.5);
          GA[P + r] = (y - y_mirror) * cplx(0, -0.5);
        }
        // G_E[m] = conj(w_m) G_A[m mod P]; g_e[n] = Re sum_m G_E[m] e^{2 pi i m n / M}: the two
        // channels' Hermitian spectra, packed (H1 + i H2), one inverse FFT
        cplx* S = buf.packed.data();
        std::fill(S, S + M, cplx(0, 0));
        for (int64_t m = 0, r = 0; m < n_bins; ++m, r = (r + 1 == P ? 0 : r + 1)) {
          const cplx w = std::conj(bin_weight<scalar_t>(hw[m], m, M));
          const cplx g1 = w * GA[r], g2 = w * GA[P + r];
          const cplx half1 = g1 * scalar_t(0.5), half2 = g2 * scalar_t(0.5);
          const int64_t mirror = m == 0 ? 0 : M - m;
          S[m] += half1 + cplx(0, 1) * half2;
          S[mirror] += std::conj(half1) + cplx(0, 1) * std::conj(half2);
        }
        cplx* GE = buf.spectrum.data();
        cached_fft<scalar_t>(1, M, /*forward=*/false).run(S, GE);
        // through e = max(|z|, 1e-8): z / |z| where not floored
        cplx* gzp = grad_z.data();
        const scalar_t floor = static_cast<scalar_t>(kMinMagnitude);
        for (int64_t i = 0; i < 2; ++i)
          for (int64_t n = 0; n < M; ++n) {
            const cplx zn = z[i * M + n];
            const scalar_t mag = std::sqrt(zn.real() * zn.real() + zn.imag() * zn.imag());
            const scalar_t g = i == 0 ? GE[n].real() : GE[n].imag();
            gzp[i * M + n] = mag > floor ? zn * (g / mag) : cplx(0, 0);
          }
        // adjoint of the unnormalised inverse transform: the unnormalised forward one
        cplx* GB = grad_band.data();
        cached_fft<scalar_t>(2, M, /*forward=*/true).run(gzp, GB);
        for (int64_t i = 0; i < 2; ++i) {
          const int64_t c = i == 0 ? pair.first : pair.second;
          if (c < 0) continue;
          const scalar_t* hc = h + c * plan.n_bins_spectrum + plan.lo[c];
          cplx* s = slot + row * plan.slot_width + plan.slot_offset[c];
          for (int64_t j = 0; j < plan.width[c]; ++j) s[j] = GB[i * M + j] * (hc[j] * band_scale);
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
