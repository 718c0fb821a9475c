// Training-mode batch norm + ReLU (+ 2x2 max-pool) fused on the CPU (csrc/bn_relu_pool_cpu.cpp has
// the maths; topoaudio/ops/bn_relu_pool.py the contract and the reference).
// x: channels-last [N, C, H, W], float32, float64 or bfloat16; weight, bias: [C] float64 for
// float64 x, float32 otherwise. Forward returns {out [N, C, Ho, Wo] channels-last, argmax uint8 like
// out (empty without pooling), mean, invstd, biased var [C]}; backward returns {grad_x,
// grad_weight, grad_bias}.
#pragma once
#include <torch/extension.h>
#include <vector>

std::vector<at::Tensor> bn_relu_pool_forward_cpu(const at::Tensor& x, const at::Tensor& weight,
                                                 const at::Tensor& bias, double eps, bool pool);
std::vector<at::Tensor> bn_relu_pool_backward_cpu(const at::Tensor& grad, const at::Tensor& x,
                                                  const at::Tensor& out, const at::Tensor& argmax,
                                                  const at::Tensor& mean, const at::Tensor& invstd,
                                                  const at::Tensor& weight, bool pool);
