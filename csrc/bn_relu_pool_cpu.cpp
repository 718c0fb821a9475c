// Training-mode batch norm, ReLU and (optionally) a 2x2 max-pool in one pass each way, on the CPU
// (issue 20: in cochcnn's training step these three ops cost ~50x one pass over the activations,
// because each reads and writes the full-resolution tensor and max-pool keeps int64 indices).
//
// Layout: channels-last (NHWC) contiguous, the layout training uses (the Python wrapper converts
// anything else). Per channel c, over the M = N H W positions:
//   mean_c, var_c (biased)                        two passes (mean, then squared deviations)
//   z = a_c x + b_c,  a_c = w_c / sqrt(var_c + eps),  b_c = bias_c - mean_c a_c   (rounded to the
//                                                   input's dtype, as batch_norm's output is)
//   pool:  out = relu(max of z over the 2x2 window), argmax = the window position (uint8, 0-3,
//          the first maximum in row-major order, as max_pool2d picks it); rows and columns beyond
//          2 floor(H / 2), 2 floor(W / 2) are in the statistics but in no window
//   no pool: out = relu(z)
// Backward, dy = grad_out at the window's argmax (or at the position) where out > 0, else 0:
//   grad_bias_c = sum dy,  grad_weight_c = sum dy xhat,  xhat = (x - mean_c) invstd_c
//   grad_x = w_c invstd_c (dy - grad_bias_c / M - xhat grad_weight_c / M)
// Sums over positions are taken in fixed chunks and then added chunk by chunk in order, so the
// result does not depend on the thread count.
#include "bn_relu_pool.h"
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace {

constexpr int64_t kChunk = 1024;  // positions per partial sum

struct Shape {
  int64_t n, c, h, w, ho, wo;
  bool pool;
  int64_t positions() const { return n * h * w; }
};

Shape shape_of(const at::Tensor& x, bool pool) {
  TORCH_CHECK(x.dim() == 4, "batch_norm_relu_pool: x must be [N, C, H, W], got ", x.sizes());
  Shape s{x.size(0), x.size(1), x.size(2), x.size(3), x.size(2), x.size(3), pool};
  if (pool) {
    s.ho = s.h / 2;
    s.wo = s.w / 2;
  }
  TORCH_CHECK(s.positions() > 1, "batch_norm_relu_pool: training batch norm needs more than one "
              "value per channel, got ", x.sizes());
  return s;
}

void check_channels_last(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_contiguous(at::MemoryFormat::ChannelsLast) && t.device().is_cpu(),
              "batch_norm_relu_pool: ", name, " must be a channels-last contiguous CPU tensor");
}

// per-channel tensors (weight, bias, statistics) are float64 for float64 x, float32 otherwise
at::ScalarType vector_dtype(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

void check_vector(const at::Tensor& t, int64_t c, at::ScalarType dtype, const char* name) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == c && t.scalar_type() == dtype && t.is_contiguous(),
              "batch_norm_relu_pool: ", name, " must be a contiguous ", c10::toString(dtype),
              " [", c, "] tensor");
}

// Storage type -> the type arithmetic runs in, with loads and stores the compiler can vectorise:
// bfloat16 is handled as its bits (c10::BFloat16's conversions are scalar calls with a NaN branch;
// these are the same round-to-nearest-even, branch-free).
template <typename T> struct Io {
  using storage = T;
  using math = T;
  static math load(storage v) { return v; }
  static storage store(math v) { return v; }
};
template <> struct Io<c10::BFloat16> {
  using storage = uint16_t;
  using math = float;
  static float load(uint16_t v) {
    const uint32_t bits = static_cast<uint32_t>(v) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
  }
  static uint16_t store(float f) {
    uint32_t bits;
    std::memcpy(&bits, &f, sizeof bits);
    const uint32_t rounded = bits + 0x7FFFu + ((bits >> 16) & 1u);
    return static_cast<uint16_t>((f != f ? 0x7FC00000u : rounded) >> 16);
  }
};

// The inner loops, over a position's C channels (the statistics: over a chunk of positions). Each
// is a function of its own with __restrict arguments and `omp simd`, so that it vectorises without
// runtime alias checks: as lambdas over shared buffers GCC kept a scalar fallback, which ran ~5x
// slower than torch's ops.
template <typename io, typename S, typename A>
inline void add_values(const S* __restrict x, int64_t count, A* __restrict acc, int64_t C) {
  for (int64_t p = 0; p < count; ++p, x += C) {
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) acc[c] += io::load(x[c]);
  }
}

template <typename io, typename S, typename A>
inline void add_squares(const S* __restrict x, int64_t count, const A* __restrict mu,
                        A* __restrict acc, int64_t C) {
  for (int64_t p = 0; p < count; ++p, x += C) {
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const A d = io::load(x[c]) - mu[c];
      acc[c] += d * d;
    }
  }
}

// z = a x + b rounded to x's dtype (as batch_norm's output is); relu keeps NaN, as torch's does
template <typename io, typename S, typename A>
inline A normalised(S x, A a, A b) { return io::load(io::store(a * io::load(x) + b)); }
template <typename A>
inline A relu(A v) { return (v > 0 || v != v) ? v : A(0); }

template <typename io, typename S, typename A>
inline void relu_row(const S* __restrict x, const A* __restrict a, const A* __restrict b,
                     S* __restrict out, int64_t C) {
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) out[c] = io::store(relu(normalised<io>(x[c], a[c], b[c])));
}

// one 2x2 window: x0, x1 its top row, x2, x3 its bottom row
template <typename io, typename S, typename A>
inline void pool_window(const S* __restrict x0, const S* __restrict x1, const S* __restrict x2,
                        const S* __restrict x3, const A* __restrict a, const A* __restrict b,
                        S* __restrict out, uint8_t* __restrict argmax, int64_t C) {
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) {
    // max_pool2d's rule: a later value wins if greater, or if it is NaN
    A best = normalised<io>(x0[c], a[c], b[c]);
    uint8_t where = 0;
    const A v1 = normalised<io>(x1[c], a[c], b[c]);
    const bool t1 = v1 > best || v1 != v1;
    best = t1 ? v1 : best;
    where = t1 ? 1 : where;
    const A v2 = normalised<io>(x2[c], a[c], b[c]);
    const bool t2 = v2 > best || v2 != v2;
    best = t2 ? v2 : best;
    where = t2 ? 2 : where;
    const A v3 = normalised<io>(x3[c], a[c], b[c]);
    const bool t3 = v3 > best || v3 != v3;
    best = t3 ? v3 : best;
    where = t3 ? 3 : where;
    out[c] = io::store(relu(best));
    argmax[c] = where;
  }
}

// sums of dy and dy xhat; x is the input that fed each output (its window's argmax when pooled)
template <typename io, typename S, typename A>
inline void add_grad_sums(const S* __restrict g, const S* __restrict out, const S* __restrict x,
                          const A* __restrict mu, const A* __restrict inv, A* __restrict sum_dy,
                          A* __restrict sum_dy_xhat, int64_t C) {
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) {
    const A gv = io::load(g[c]);  // loaded unconditionally, so that the loop vectorises
    const A dy = io::load(out[c]) > 0 ? gv : A(0);
    sum_dy[c] += dy;
    sum_dy_xhat[c] += dy * ((io::load(x[c]) - mu[c]) * inv[c]);
  }
}

template <typename io, typename S, typename A>
inline void add_grad_sums_pooled(const S* __restrict g, const S* __restrict out,
                                 const uint8_t* __restrict argmax, const S* __restrict x0,
                                 const S* __restrict x1, const S* __restrict x2,
                                 const S* __restrict x3, const A* __restrict mu,
                                 const A* __restrict inv, A* __restrict sum_dy,
                                 A* __restrict sum_dy_xhat, int64_t C) {
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) {
    const uint8_t where = argmax[c];
    const A v0 = io::load(x0[c]), v1 = io::load(x1[c]), v2 = io::load(x2[c]), v3 = io::load(x3[c]);
    const A xv = where == 0 ? v0 : where == 1 ? v1 : where == 2 ? v2 : v3;
    const A gv = io::load(g[c]);  // loaded unconditionally, so that the loop vectorises
    const A dy = io::load(out[c]) > 0 ? gv : A(0);
    sum_dy[c] += dy;
    sum_dy_xhat[c] += dy * ((xv - mu[c]) * inv[c]);
  }
}

// grad_x at one position; `here` is the position's place in its window (0-3), or -1 when the
// output's gradient reaches it directly (no pooling), or 4 when it is in no window
template <typename io, typename S, typename A>
inline void write_grad(const S* __restrict g, const S* __restrict out,
                       const uint8_t* __restrict argmax, int here, const S* __restrict x,
                       const A* __restrict k, const A* __restrict mean_dy,
                       const A* __restrict mean_dy_xhat, const A* __restrict mu,
                       const A* __restrict inv, S* __restrict gx, int64_t C) {
  if (here == 4) {
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const A xhat = (io::load(x[c]) - mu[c]) * inv[c];
      gx[c] = io::store(k[c] * (-mean_dy[c] - xhat * mean_dy_xhat[c]));
    }
    return;
  }
  if (here < 0) {
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const A gv = io::load(g[c]);  // loaded unconditionally, so that the loop vectorises
    const A dy = io::load(out[c]) > 0 ? gv : A(0);
      const A xhat = (io::load(x[c]) - mu[c]) * inv[c];
      gx[c] = io::store(k[c] * (dy - mean_dy[c] - xhat * mean_dy_xhat[c]));
    }
    return;
  }
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) {
    const A gv = io::load(g[c]);
    const A dy = ((argmax[c] == here) & (io::load(out[c]) > 0)) ? gv : A(0);
    const A xhat = (io::load(x[c]) - mu[c]) * inv[c];
    gx[c] = io::store(k[c] * (dy - mean_dy[c] - xhat * mean_dy_xhat[c]));
  }
}

// Per-channel sums over positions [0, positions), in chunks of kChunk positions added up in a
// fixed order (the same bits at any thread count). add_chunk(p0, p1, acc) adds positions
// [p0, p1) into acc; add_one(p, acc) adds one.
template <typename A, typename F>
std::vector<double> chunked_sums(int64_t positions, int64_t width, F add_chunk) {
  const int64_t chunks = (positions + kChunk - 1) / kChunk;
  std::vector<double> partial(chunks * width, 0.0);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<A> acc(width);
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      std::fill(acc.begin(), acc.end(), A(0));
      add_chunk(chunk * kChunk, std::min(positions, (chunk + 1) * kChunk), acc.data());
      for (int64_t c = 0; c < width; ++c) partial[chunk * width + c] = acc[c];
    }
  });
  std::vector<double> total(width, 0.0);
  for (int64_t chunk = 0; chunk < chunks; ++chunk)
    for (int64_t c = 0; c < width; ++c) total[c] += partial[chunk * width + c];
  return total;
}

template <typename A, typename F>
std::vector<double> chunked_sums_by_position(int64_t positions, int64_t width, F add_one) {
  return chunked_sums<A>(positions, width, [&](int64_t p0, int64_t p1, A* acc) {
    for (int64_t p = p0; p < p1; ++p) add_one(p, acc);
  });
}

template <typename scalar_t, typename math = typename Io<scalar_t>::math>
void forward_kernel(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                    double eps, const Shape& s, at::Tensor& out, at::Tensor& argmax,
                    math* mean, math* invstd, math* var) {
  using io = Io<scalar_t>;
  using storage = typename io::storage;
  const storage* xp = reinterpret_cast<const storage*>(x.data_ptr<scalar_t>());
  const int64_t C = s.c, M = s.positions(), H = s.h, W = s.w;
  const std::vector<double> sums = chunked_sums<math>(M, C, [&](int64_t p0, int64_t p1, math* acc) {
    add_values<io>(xp + p0 * C, p1 - p0, acc, C);
  });
  std::vector<math> mu(C);
  for (int64_t c = 0; c < C; ++c) mu[c] = static_cast<math>(sums[c] / M);
  const std::vector<double> squares = chunked_sums<math>(
      M, C, [&](int64_t p0, int64_t p1, math* acc) {
        add_squares<io>(xp + p0 * C, p1 - p0, mu.data(), acc, C);
      });
  std::vector<math> a(C), b(C);
  const math* wp = weight.data_ptr<math>();
  const math* bp = bias.data_ptr<math>();
  for (int64_t c = 0; c < C; ++c) {
    const double v = squares[c] / M, inv = 1.0 / std::sqrt(v + eps);
    mean[c] = mu[c];
    var[c] = static_cast<math>(v);
    invstd[c] = static_cast<math>(inv);
    a[c] = static_cast<math>(wp[c] * inv);
    b[c] = static_cast<math>(bp[c] - mu[c] * (wp[c] * inv));
  }
  storage* op = reinterpret_cast<storage*>(out.data_ptr<scalar_t>());
  if (!s.pool) {
    at::parallel_for(0, M, kChunk, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) relu_row<io>(xp + p * C, a.data(), b.data(), op + p * C, C);
    });
    return;
  }
  uint8_t* ap = argmax.data_ptr<uint8_t>();
  at::parallel_for(0, s.n * s.ho, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / s.ho, i = r % s.ho;
      const storage* top = xp + (n * H + 2 * i) * W * C;
      for (int64_t j = 0; j < s.wo; ++j) {
        const storage* x0 = top + 2 * j * C;
        pool_window<io>(x0, x0 + C, x0 + W * C, x0 + W * C + C, a.data(), b.data(),
                        op + (r * s.wo + j) * C, ap + (r * s.wo + j) * C, C);
      }
    }
  });
}

template <typename scalar_t, typename math = typename Io<scalar_t>::math>
void backward_kernel(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& out,
                     const at::Tensor& argmax, const at::Tensor& mean, const at::Tensor& invstd,
                     const at::Tensor& weight, const Shape& s, at::Tensor& grad_x,
                     at::Tensor& grad_weight, at::Tensor& grad_bias) {
  using io = Io<scalar_t>;
  using storage = typename io::storage;
  const storage* gp = reinterpret_cast<const storage*>(grad.data_ptr<scalar_t>());
  const storage* xp = reinterpret_cast<const storage*>(x.data_ptr<scalar_t>());
  const storage* op = reinterpret_cast<const storage*>(out.data_ptr<scalar_t>());
  const uint8_t* ap = s.pool ? argmax.data_ptr<uint8_t>() : nullptr;
  const int64_t C = s.c, H = s.h, W = s.w, M = s.positions();
  const math* mu = mean.data_ptr<math>();
  const math* inv = invstd.data_ptr<math>();
  const math* wp = weight.data_ptr<math>();
  // Pass 1: sum dy and dy xhat per channel over the output positions
  const std::vector<double> total = chunked_sums_by_position<math>(
      s.n * s.ho * s.wo, 2 * C, [&](int64_t q, math* acc) {
        if (!s.pool) {
          add_grad_sums<io>(gp + q * C, op + q * C, xp + q * C, mu, inv, acc, acc + C, C);
          return;
        }
        const int64_t j = q % s.wo, i = (q / s.wo) % s.ho, n = q / (s.wo * s.ho);
        const storage* x0 = xp + ((n * H + 2 * i) * W + 2 * j) * C;
        add_grad_sums_pooled<io>(gp + q * C, op + q * C, ap + q * C, x0, x0 + C, x0 + W * C,
                                 x0 + W * C + C, mu, inv, acc, acc + C, C);
      });
  std::vector<math> k(C), mean_dy(C), mean_dy_xhat(C);
  math* gw = grad_weight.data_ptr<math>();
  math* gb = grad_bias.data_ptr<math>();
  for (int64_t c = 0; c < C; ++c) {
    gb[c] = static_cast<math>(total[c]);
    gw[c] = static_cast<math>(total[C + c]);
    k[c] = wp[c] * inv[c];
    mean_dy[c] = static_cast<math>(total[c] / M);
    mean_dy_xhat[c] = static_cast<math>(total[C + c] / M);
  }
  // Pass 2: grad_x at every input position
  storage* gx = reinterpret_cast<storage*>(grad_x.data_ptr<scalar_t>());
  at::parallel_for(0, s.n * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / H, h = r % H, i = h / 2;
      const int64_t covered = !s.pool ? W : i < s.ho ? 2 * s.wo : 0;  // positions in a window
      for (int64_t w = 0; w < W; ++w) {
        const int64_t p = r * W + w;
        const int64_t q = !s.pool ? p : ((n * s.ho + i) * s.wo + w / 2);
        const int here = w >= covered ? 4 : !s.pool ? -1 : static_cast<int>((h % 2) * 2 + w % 2);
        const int64_t qc = here == 4 ? 0 : q * C;
        write_grad<io>(gp + qc, op + qc, s.pool ? ap + qc : nullptr, here, xp + p * C, k.data(),
                       mean_dy.data(), mean_dy_xhat.data(), mu, inv, gx + p * C, C);
      }
    }
  });
}

}  // namespace

// -> (out [N, C, Ho, Wo], argmax uint8 (empty without pooling), mean, invstd, biased var [C]),
// out and argmax channels-last
std::vector<at::Tensor> bn_relu_pool_forward_cpu(const at::Tensor& x, const at::Tensor& weight,
                                                 const at::Tensor& bias, double eps, bool pool) {
  check_channels_last(x, "x");
  const Shape s = shape_of(x, pool);
  const auto vdtype = vector_dtype(x);
  check_vector(weight, s.c, vdtype, "weight");
  check_vector(bias, s.c, vdtype, "bias");
  const auto cl = at::MemoryFormat::ChannelsLast;
  at::Tensor out = at::empty({s.n, s.c, s.ho, s.wo}, x.options().memory_format(cl));
  at::Tensor argmax = pool ? at::empty({s.n, s.c, s.ho, s.wo}, x.options().dtype(at::kByte).memory_format(cl))
                           : at::empty({0}, x.options().dtype(at::kByte));
  at::Tensor mean = at::empty({s.c}, weight.options());
  at::Tensor invstd = at::empty({s.c}, weight.options());
  at::Tensor var = at::empty({s.c}, weight.options());
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "bn_relu_pool_forward_cpu", [&] {
    using math = typename Io<scalar_t>::math;
    forward_kernel<scalar_t>(x, weight, bias, eps, s, out, argmax, mean.data_ptr<math>(),
                             invstd.data_ptr<math>(), var.data_ptr<math>());
  });
  return {out, argmax, mean, invstd, var};
}

// -> (grad_x like x, grad_weight, grad_bias)
std::vector<at::Tensor> bn_relu_pool_backward_cpu(const at::Tensor& grad, const at::Tensor& x,
                                                  const at::Tensor& out, const at::Tensor& argmax,
                                                  const at::Tensor& mean, const at::Tensor& invstd,
                                                  const at::Tensor& weight, bool pool) {
  check_channels_last(x, "x");
  check_channels_last(out, "out");
  check_channels_last(grad, "grad");
  const Shape s = shape_of(x, pool);
  TORCH_CHECK(grad.sizes() == out.sizes() && out.size(0) == s.n && out.size(1) == s.c &&
              out.size(2) == s.ho && out.size(3) == s.wo && grad.scalar_type() == x.scalar_type() &&
              out.scalar_type() == x.scalar_type(),
              "batch_norm_relu_pool backward: grad and out must be [N, C, Ho, Wo] in x's dtype");
  if (pool) {
    check_channels_last(argmax, "argmax");
    TORCH_CHECK(argmax.sizes() == out.sizes() && argmax.scalar_type() == at::kByte,
                "batch_norm_relu_pool backward: argmax must be uint8 shaped like out");
  }
  for (const auto* t : {&mean, &invstd, &weight})
    check_vector(*t, s.c, vector_dtype(x), "mean, invstd and weight");
  at::Tensor grad_x = at::empty_like(x, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  at::Tensor grad_weight = at::empty({s.c}, weight.options());
  at::Tensor grad_bias = at::empty({s.c}, weight.options());
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "bn_relu_pool_backward_cpu", [&] {
    backward_kernel<scalar_t>(grad, x, out, argmax, mean, invstd, weight, s, grad_x, grad_weight,
                              grad_bias);
  });
  return {grad_x, grad_weight, grad_bias};
}
