// The cochleagram's fused kernels. Stage B (envelope magnitude + windowed-sinc downsampling
// (+ compression)) is fused so the full-rate envelope is never written to memory. On GPUs stage A
// (filtering and the complex inverse FFT) stays in torch.fft (cuFFT) and CUDA runs stage B alone;
// on the CPU the whole op runs in one parallel region (cochleagram_forward_cpu /
// cochleagram_backward_cpu); see docs/DESIGN.md.
#pragma once
#include <torch/extension.h>
#include <vector>

// The whole op on the CPU. spectrum: rfft of the clips, complex [rows, T/2 + 1]; filters: real
// [channels, T/2 + 1]; bands: int64 [channels, 2], each filter's nonzero bins [lo, hi).
// Returns {out, envelope}, each [rows, channels, frames].
std::vector<at::Tensor> cochleagram_forward_cpu(const at::Tensor& spectrum,
                                                const at::Tensor& filters, const at::Tensor& bands,
                                                const at::Tensor& taps, int64_t length,
                                                int64_t stride, int64_t n_frames, double power,
                                                double offset, bool compress);
// grad_envelope: [rows, channels, frames]. Returns the gradient w.r.t. the spectrum,
// complex [rows, T/2 + 1] (the caller applies the adjoint of rfft).
at::Tensor cochleagram_backward_cpu(const at::Tensor& grad_envelope, const at::Tensor& spectrum,
                                    const at::Tensor& filters, const at::Tensor& bands,
                                    const at::Tensor& taps, int64_t length, int64_t stride);

// The fast, approximate mode on the CPU (issue 20; csrc/cochleagram_fast_cpu.cpp has the maths).
// bands: int64 [channels, 2] (lo, width); sizes: int64 [channels], each channel's transform size
// M_k; response: complex [bins], the window's response Hw[m]; period = T / stride. Returns {out,
// envelope} [rows, channels, frames]; the backward takes grad_envelope w.r.t. the uncompressed
// envelope and returns the gradient w.r.t. the spectrum, complex [rows, T/2 + 1].
std::vector<at::Tensor> cochleagram_fast_forward_cpu(
    const at::Tensor& spectrum, const at::Tensor& filters, const at::Tensor& bands,
    const at::Tensor& sizes, const at::Tensor& response, int64_t length, int64_t period,
    int64_t n_frames, int64_t max_bin, double power, double offset, bool compress);
at::Tensor cochleagram_fast_backward_cpu(const at::Tensor& grad_envelope,
                                         const at::Tensor& spectrum, const at::Tensor& filters,
                                         const at::Tensor& bands, const at::Tensor& sizes,
                                         const at::Tensor& response, int64_t length,
                                         int64_t period, int64_t max_bin);

#ifdef WITH_CUDA
// Stage B alone on CUDA. analytic: [rows, T, 2] real view of the complex analytic subbands;
// taps: [W]. Returns {out [rows, frames], envelope [rows, frames]}; out is the compressed
// envelope when compress is true, otherwise a copy of envelope. The backward takes grad_envelope
// [rows, frames] (w.r.t. the downsampled, uncompressed envelope) and returns [rows, T, 2].
std::vector<at::Tensor> envelope_downsample_forward_cuda(const at::Tensor& analytic,
                                                         const at::Tensor& taps, int64_t stride,
                                                         int64_t n_frames, double power,
                                                         double offset, bool compress);
at::Tensor envelope_downsample_backward_cuda(const at::Tensor& analytic, const at::Tensor& taps,
                                             const at::Tensor& grad_envelope, int64_t stride);
#endif

// Shared argument checks: the Python layer validates user input; these guard the kernel contract.
inline void check_envelope_args(const at::Tensor& analytic, const at::Tensor& taps, int64_t stride,
                                int64_t n_frames) {
  TORCH_CHECK(analytic.dim() == 3 && analytic.size(2) == 2,
              "analytic must be [rows, T, 2], got ", analytic.sizes());
  TORCH_CHECK(analytic.is_contiguous() && taps.is_contiguous(), "inputs must be contiguous");
  TORCH_CHECK(taps.dim() == 1 && taps.scalar_type() == analytic.scalar_type(),
              "taps must be 1-D with the dtype of analytic");
  TORCH_CHECK(stride >= 1 && n_frames >= 1, "stride and n_frames must be positive");
  TORCH_CHECK((n_frames - 1) * stride + taps.size(0) <= analytic.size(1),
              "the last downsampling window runs past the end of the signal");
}
