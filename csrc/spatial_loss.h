// Tile kernels of the spatial-correlation loss (docs/DESIGN.md, topoaudio/ops/spatial_chunked.py
// states the same contract in PyTorch). z: [N, B] unit vectors; positions: [N, 2] in mm, same dtype.
//  weighted_sum: {W z [N, B], row sums of W [N], row sums of W^2 [N]}, W_ij = 1 / (1 + d_ij) for
//    i != j and W_ii = 0 (units sharing a position keep w = 1; only a unit's own term is left out).
//  pair_sums:    float64 [7] = count, sum w, w^2, r, r^2, w r, |r - w| over pairs i < j, d_ij <= radius.
//  pair_grad:    dS/dz for S = sum over those pairs of c0 r + c1 r^2 + c2 w r + c3 |r - w|.
// Units must be sorted spatially for pair_sums / pair_grad to skip tile pairs beyond the radius.
#pragma once
#include <torch/extension.h>
#include <vector>

std::vector<at::Tensor> spatial_weighted_sum_cpu(const at::Tensor& z, const at::Tensor& positions);
at::Tensor spatial_pair_sums_cpu(const at::Tensor& z, const at::Tensor& positions, double radius);
at::Tensor spatial_pair_grad_cpu(const at::Tensor& z, const at::Tensor& positions, double radius,
                                 const at::Tensor& coef);

#ifdef WITH_CUDA
std::vector<at::Tensor> spatial_weighted_sum_cuda(const at::Tensor& z, const at::Tensor& positions);
at::Tensor spatial_pair_sums_cuda(const at::Tensor& z, const at::Tensor& positions, double radius);
at::Tensor spatial_pair_grad_cuda(const at::Tensor& z, const at::Tensor& positions, double radius,
                                  const at::Tensor& coef);
#endif

inline void check_spatial_tensors(const at::Tensor& z, const at::Tensor& positions) {
  TORCH_CHECK(z.dim() == 2 && positions.dim() == 2 && positions.size(1) == 2 &&
                  positions.size(0) == z.size(0),
              "need z [N, B] and positions [N, 2], got ", z.sizes(), " and ", positions.sizes());
  TORCH_CHECK(z.is_contiguous() && positions.is_contiguous(), "inputs must be contiguous");
  TORCH_CHECK(z.scalar_type() == positions.scalar_type(), "z and positions must share a dtype");
  TORCH_CHECK(z.device() == positions.device(), "z and positions must be on one device");
}
