// pybind11 entry points of topoaudio._C. The Python layer (topoaudio/ops) wraps them in
// torch.library custom ops; nothing here knows about the op registry or autograd.
#include "bn_relu_pool.h"
#include "cochleagram.h"
#include "parallel_blocks.h"
#include "spatial_loss.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "topoaudio fused kernels (C++ CPU, and CUDA when built with it)";
  m.def("cochleagram_forward_cpu", &cochleagram_forward_cpu);
  m.def("cochleagram_backward_cpu", &cochleagram_backward_cpu);
  m.def("cochleagram_fast_forward_cpu", &cochleagram_fast_forward_cpu);
  m.def("cochleagram_fast_backward_cpu", &cochleagram_fast_backward_cpu);
  m.def("bn_relu_pool_forward_cpu", &bn_relu_pool_forward_cpu);
  m.def("bn_relu_pool_backward_cpu", &bn_relu_pool_backward_cpu);
  m.def("block_worker_threads", &block_worker_threads);
  m.def("spatial_weighted_sum_cpu", &spatial_weighted_sum_cpu);
  m.def("spatial_pair_sums_cpu", &spatial_pair_sums_cpu);
  m.def("spatial_pair_grad_cpu", &spatial_pair_grad_cpu);
#ifdef WITH_CUDA
  m.def("envelope_downsample_forward_cuda", &envelope_downsample_forward_cuda);
  m.def("envelope_downsample_backward_cuda", &envelope_downsample_backward_cuda);
  m.def("spatial_weighted_sum_cuda", &spatial_weighted_sum_cuda);
  m.def("spatial_pair_sums_cuda", &spatial_pair_sums_cuda);
  m.def("spatial_pair_grad_cuda", &spatial_pair_grad_cuda);
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
}
