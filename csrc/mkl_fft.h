// Batched complex FFTs that run on the calling thread, for the CPU kernels' workers (issue 10).
//
// ATen's torch.fft on the CPU creates an MKL DFT descriptor per call (twiddle tables and all) and
// lets MKL thread it; called from inside run_block_workers' parallel region it did not stay on the
// worker's thread: with 2 threads the cochleagram took 2.7x its 1-thread time, the second thread
// spinning in libgomp. Here each worker commits its own descriptors once per call, single-threaded
// (DFTI_THREAD_LIMIT 1), and reuses them for every block it takes.
//
// The declarations are MKL's documented DFTI C interface (values as in mkl_dfti.h of oneMKL
// 2024.2, the MKL inside torch 2.11's libtorch_cpu); the symbols are declared weak, so a torch
// without MKL still loads the extension and the caller falls back to at::fft (has_mkl_fft()).
#pragma once
#include <ATen/ATen.h>
#include <ATen/Config.h>

#include <complex>
#include <cstdint>

namespace mkl_dfti {
struct Descriptor;
using Handle = Descriptor*;
enum Param : int {
  kForwardScale = 4, kBackwardScale = 5, kNumberOfTransforms = 7, kPlacement = 11,
  kInputDistance = 14, kOutputDistance = 15, kThreadLimit = 27
};
enum Value : int { kComplex = 32, kSingle = 35, kDouble = 36, kNotInplace = 44 };
}  // namespace mkl_dfti

extern "C" {
long DftiCreateDescriptor_s_1d(mkl_dfti::Handle*, mkl_dfti::Value, ...) __attribute__((weak));
long DftiCreateDescriptor_d_1d(mkl_dfti::Handle*, mkl_dfti::Value, ...) __attribute__((weak));
long DftiSetValue(mkl_dfti::Handle, mkl_dfti::Param, ...) __attribute__((weak));
long DftiCommitDescriptor(mkl_dfti::Handle) __attribute__((weak));
long DftiComputeForward(mkl_dfti::Handle, void*, ...) __attribute__((weak));
long DftiComputeBackward(mkl_dfti::Handle, void*, ...) __attribute__((weak));
long DftiFreeDescriptor(mkl_dfti::Handle*) __attribute__((weak));
}

inline bool has_mkl_fft() {
#if AT_MKL_ENABLED()
  return DftiCreateDescriptor_s_1d != nullptr && DftiCreateDescriptor_d_1d != nullptr &&
         DftiSetValue != nullptr && DftiCommitDescriptor != nullptr &&
         DftiComputeForward != nullptr && DftiComputeBackward != nullptr &&
         DftiFreeDescriptor != nullptr;
#else
  return false;
#endif
}

// `rows` complex transforms of `length` points, out of place. forward: the
// unnormalised DFT times `scale`; otherwise the inverse DFT times `scale` (1/length: ifft).
// Without MKL it calls at::fft (single-threaded inside a worker's region all the same).
template <typename scalar_t>
class BatchedFft {
 public:
  // input_distance: points from one input row to the next (default: length; more lets a caller
  // keep rows at fixed places in a larger buffer). Output rows are contiguous.
  BatchedFft(int64_t rows, int64_t length, bool forward, double scale, int64_t input_distance = 0)
      : rows_(rows), length_(length), input_distance_(input_distance > 0 ? input_distance : length),
        forward_(forward), scale_(scale) {
    TORCH_CHECK(input_distance_ >= length_, "BatchedFft: input rows overlap");
    if (!has_mkl_fft()) return;
    const long status = std::is_same_v<scalar_t, double>
                            ? DftiCreateDescriptor_d_1d(&handle_, mkl_dfti::kComplex, long(length))
                            : DftiCreateDescriptor_s_1d(&handle_, mkl_dfti::kComplex, long(length));
    TORCH_CHECK(status == 0, "MKL DFT: could not create a descriptor (status ", status, ")");
    check(DftiSetValue(handle_, mkl_dfti::kNumberOfTransforms, long(rows)));
    check(DftiSetValue(handle_, mkl_dfti::kInputDistance, long(input_distance_)));
    check(DftiSetValue(handle_, mkl_dfti::kOutputDistance, long(length)));
    check(DftiSetValue(handle_, mkl_dfti::kPlacement, mkl_dfti::kNotInplace));
    check(DftiSetValue(handle_, forward ? mkl_dfti::kForwardScale : mkl_dfti::kBackwardScale,
                       scale));  // read as double whatever the precision (C varargs)
    check(DftiSetValue(handle_, mkl_dfti::kThreadLimit, 1));
    check(DftiCommitDescriptor(handle_));
  }
  ~BatchedFft() {
    if (handle_ != nullptr) DftiFreeDescriptor(&handle_);
  }
  BatchedFft(const BatchedFft&) = delete;
  BatchedFft& operator=(const BatchedFft&) = delete;

  // input, output: complex [rows, length], contiguous, distinct (input_distance == length).
  void run(const at::Tensor& input, at::Tensor& output) const {
    TORCH_CHECK(input_distance_ == length_ && input.is_contiguous() && output.is_contiguous(),
                "BatchedFft::run(Tensor): contiguous rows only");
    run(input.data_ptr(), output.data_ptr());
  }

  // The same on raw buffers (input rows input_distance apart, output rows contiguous): no tensor
  // is made per call (the fast cochleagram runs ~1,700 small transforms per batch, where creating
  // views cost ~15 %).
  void run(const void* input, void* output) const {
    if (handle_ == nullptr) {
      run_without_mkl(input, output);
      return;
    }
    auto* in = const_cast<void*>(input);
    check(forward_ ? DftiComputeForward(handle_, in, output)
                   : DftiComputeBackward(handle_, in, output));
  }

 private:
  static void check(long status) { TORCH_CHECK(status == 0, "MKL DFT failed (status ", status, ")"); }

  // at::fft on tensors over the buffers; its norms give the scales 1 and 1 / length only.
  void run_without_mkl(const void* input, void* output) const {
    const bool unscaled = scale_ == 1.0;
    TORCH_CHECK(unscaled || scale_ == 1.0 / static_cast<double>(length_),
                "at::fft fallback: scale 1 or 1/n only");
    // forward: "backward" leaves it unscaled, "forward" scales by 1/n; inverse: the other way
    const auto norm = forward_ == unscaled ? "backward" : "forward";
    const auto options = at::TensorOptions().dtype(c10::toComplexType(
        c10::CppTypeToScalarType<scalar_t>::value));
    const auto in = at::from_blob(const_cast<void*>(input), {rows_, length_}, {input_distance_, 1},
                                  options);
    auto out = at::from_blob(output, {rows_, length_}, options);
    if (forward_) at::fft_fft_out(out, in, c10::nullopt, -1, norm);
    else at::fft_ifft_out(out, in, c10::nullopt, -1, norm);
  }

  int64_t rows_;
  int64_t length_;
  int64_t input_distance_;
  bool forward_;
  double scale_;
  mkl_dfti::Handle handle_ = nullptr;
};
