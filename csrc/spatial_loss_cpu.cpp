// CPU kernels of the spatial loss: the tile primitives of spatial_loss.h and, for the CPU autograd
// Function (topoaudio/ops/spatial_loss.py, issue 23), the whole forward and backward as two ops
// (topoaudio::spatial_loss_forward_cpu / _backward_cpu, registered below).
//
// Work is split into fixed blocks of units handed out to the threads dynamically
// (parallel_blocks.h, run_block_pool: a thread slowed by another process takes fewer, and a
// helper that has not woken up yet is not waited for). Each block's outputs are written by the
// one thread that took it, and every reduction over blocks (s, the Gram, the pair sums) is summed
// from per-block partials in block order, so the results depend neither on the thread count nor
// on the schedule. Products go to BLAS (sgemm/dgemm, on the worker's thread) on raw pointers: no
// ATen op per tile (each costs dispatch at small N).
//
// Issue 23: under load the time was lost outside these kernels: ~25 ATen elementwise ops and MKL
// GEMMs (unit vectors, Gram, backward addmm, projection), each split statically over the threads
// and each ending in a barrier that waited for a thread sharing its core with other processes. Now
// a forward is two block passes (unit vectors with s and the Gram; W z or the pair sums) and a
// backward one.
#include "spatial_loss.h"

#include "parallel_blocks.h"
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <type_traits>

// BLAS as torch links it (MKL exports the Fortran symbols from libtorch_cpu). Weak: a torch
// without them still loads, and the products then go through ATen (gemm_aten below).
extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b, const int* ldb,
            const double* beta, double* c, const int* ldc) __attribute__((weak));
}

namespace {

constexpr int64_t kRows = 64;     // rows per weighted-sum block
constexpr int64_t kCols = 2048;   // columns per weighted-sum block (64 x 2048 floats = 512 KiB)
constexpr int64_t kTile = 256;    // square tiles of the radius / absolute kernels
constexpr int64_t kUnits = 256;   // units per block of the O(N B) passes (unit vectors, backward)

// Modes of the fused ops (spatial_loss.py's _FUSED_* constants)
constexpr int64_t kAllPairs = 0;  // relative, all pairs: W z by weight tiles
constexpr int64_t kLattice = 1;   // relative, all pairs, W z by the lattice's FFT (in Python)
constexpr int64_t kTiles = 2;     // radius or absolute: r tiles over Morton-sorted units

// A 64-byte-aligned scratch buffer (MKL picks its code path by alignment too: the same alignment
// every call keeps results bitwise repeatable).
template <typename T>
struct Scratch {
  explicit Scratch(int64_t n)
      : data(static_cast<T*>(std::aligned_alloc(64, ((n * sizeof(T) + 63) / 64) * 64 + 64))) {
    TORCH_CHECK(data != nullptr, "out of memory for a ", n, "-element buffer");
  }
  ~Scratch() { std::free(data); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  T* data;
};

// C = alpha op(A) op(B) + beta C, column-major (BLAS's convention), through ATen when the BLAS
// symbols are absent.
template <typename T>
void gemm_aten(char ta, char tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
               const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  const auto options = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  // column-major X (rows x cols, ld) as a tensor: strides {1, ld}; op = 'T' swaps them
  auto view = [&](const T* p, char t, int64_t rows, int64_t cols, int64_t ld) {
    return t == 'N' ? at::from_blob(const_cast<T*>(p), {rows, cols}, {1, ld}, options)
                    : at::from_blob(const_cast<T*>(p), {rows, cols}, {ld, 1}, options);
  };
  auto out = at::from_blob(c, {m, n}, {1, ldc}, options);
  if (k == 0) {
    out.mul_(beta);
    return;
  }
  out.addmm_(view(a, ta, m, k, lda), view(b, tb, k, n, ldb), beta, alpha);
}

template <typename T>
void gemm_cm(char ta, char tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
             const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  const auto fits = [](int64_t v) { return v <= std::numeric_limits<int>::max(); };
  const bool blas = std::is_same<T, float>::value ? sgemm_ != nullptr : dgemm_ != nullptr;
  if (!blas || !fits(m) || !fits(n) || !fits(k) || !fits(lda) || !fits(ldb) || !fits(ldc)) {
    gemm_aten<T>(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  const int im = m, in = n, ik = k;
  const int ilda = std::max<int64_t>(lda, 1), ildb = std::max<int64_t>(ldb, 1),
            ildc = std::max<int64_t>(ldc, 1);
  if constexpr (std::is_same<T, float>::value) {
    sgemm_(&ta, &tb, &im, &in, &ik, &alpha, a, &ilda, b, &ildb, &beta, c, &ildc);
  } else {
    dgemm_(&ta, &tb, &im, &in, &ik, &alpha, a, &ilda, b, &ildb, &beta, c, &ildc);
  }
}

// The same for row-major matrices: C [m x n] = alpha op(A) op(B) + beta C (a row-major matrix is
// its column-major transpose, so the operands swap).
template <typename T>
void gemm_rm(char ta, char tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
             const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  gemm_cm<T>(tb, ta, n, m, k, alpha, b, ldb, a, lda, beta, c, ldc);
}

template <typename scalar_t>
void weight_rows(const scalar_t* p, int64_t row0, int64_t rows, int64_t col0, int64_t cols,
                 scalar_t* w, double* w_sum, double* w2_sum) {
  for (int64_t i = 0; i < rows; ++i) {
    const scalar_t xi = p[2 * (row0 + i)], yi = p[2 * (row0 + i) + 1];
    scalar_t* wi = w + i * cols;
    scalar_t s = 0, s2 = 0;
#pragma omp simd reduction(+ : s, s2)
    for (int64_t j = 0; j < cols; ++j) {
      const scalar_t dx = xi - p[2 * (col0 + j)], dy = yi - p[2 * (col0 + j) + 1];
      // w_ii = 0: the diagonal would dominate each row's float sums (w_ii = 1 against off-diagonal
      // weights of 1e-6 when positions are in micrometres or far apart) and round them away
      const scalar_t v = row0 + i == col0 + j
                             ? scalar_t(0)
                             : scalar_t(1) / (scalar_t(1) + std::sqrt(dx * dx + dy * dy));
      wi[j] = v;
      s += v;
      s2 += v * v;
    }
    w_sum[i] += s;
    w2_sum[i] += s2;
  }
}

// W z for the row block starting at `row0` (z [N, B] row-major): out [rows x B] = sum over column
// blocks of W_IJ z_J, W's row sums added to w_sum / w2_sum [rows]. `tile`: kRows x kCols scratch.
template <typename scalar_t>
void weighted_rows(const scalar_t* p, const scalar_t* z, int64_t n, int64_t batch, int64_t row0,
                   int64_t rows, scalar_t* tile, scalar_t* out, double* w_sum, double* w2_sum) {
  for (int64_t col0 = 0; col0 < n; col0 += kCols) {
    const int64_t cols = std::min(kCols, n - col0);
    weight_rows<scalar_t>(p, row0, rows, col0, cols, tile, w_sum, w2_sum);
    gemm_rm<scalar_t>('N', 'N', rows, batch, cols, 1, tile, cols, z + col0 * batch, batch,
                      col0 == 0 ? 0 : 1, out, batch);
  }
}

struct Box {
  double x0, y0, x1, y1;
};

template <typename scalar_t>
std::vector<Box> tile_boxes(const scalar_t* p, int64_t n) {
  std::vector<Box> boxes;
  for (int64_t start = 0; start < n; start += kTile) {
    Box b{1e300, 1e300, -1e300, -1e300};
    for (int64_t i = start; i < std::min(n, start + kTile); ++i) {
      b.x0 = std::min<double>(b.x0, p[2 * i]);
      b.y0 = std::min<double>(b.y0, p[2 * i + 1]);
      b.x1 = std::max<double>(b.x1, p[2 * i]);
      b.y1 = std::max<double>(b.y1, p[2 * i + 1]);
    }
    boxes.push_back(b);
  }
  return boxes;
}

bool tiles_within(const Box& a, const Box& b, double radius) {
  const double gx = std::max({0.0, a.x0 - b.x1, b.x0 - a.x1});
  const double gy = std::max({0.0, a.y0 - b.y1, b.y0 - a.y1});
  return std::sqrt(gx * gx + gy * gy) <= radius;
}

// One row of a tile: adds the row's pairs (columns j0..cols) to the seven sums.
template <typename scalar_t>
void pair_sums_row(const scalar_t* p, int64_t gi, int64_t col0, int64_t j0, int64_t cols,
                   const scalar_t* r_row, double radius, double* acc) {
  const scalar_t xi = p[2 * gi], yi = p[2 * gi + 1];
  double count = 0, sw = 0, sw2 = 0, sr = 0, sr2 = 0, swr = 0, sabs = 0;
#pragma omp simd reduction(+ : count, sw, sw2, sr, sr2, swr, sabs)
  for (int64_t j = j0; j < cols; ++j) {
    const scalar_t dx = xi - p[2 * (col0 + j)], dy = yi - p[2 * (col0 + j) + 1];
    const scalar_t d = std::sqrt(dx * dx + dy * dy);
    const double in = d <= radius ? 1.0 : 0.0;
    const double w = 1.0 / (1.0 + static_cast<double>(d)), rv = r_row[j];
    count += in;
    sw += in * w;
    sw2 += in * w * w;
    sr += in * rv;
    sr2 += in * rv * rv;
    swr += in * w * rv;
    sabs += in * std::fabs(rv - w);
  }
  acc[0] += count; acc[1] += sw; acc[2] += sw2; acc[3] += sr;
  acc[4] += sr2; acc[5] += swr; acc[6] += sabs;
}

// One row of a tile: replaces r_ij by dS/dr_ij (zero outside the pair set and on i == j).
template <typename scalar_t>
void pair_grad_row(const scalar_t* p, int64_t gi, int64_t col0, int64_t cols, scalar_t* r_row,
                   double radius, const double* c) {
  const scalar_t xi = p[2 * gi], yi = p[2 * gi + 1];
#pragma omp simd
  for (int64_t j = 0; j < cols; ++j) {
    const scalar_t dx = xi - p[2 * (col0 + j)], dy = yi - p[2 * (col0 + j) + 1];
    const scalar_t d = std::sqrt(dx * dx + dy * dy);
    const scalar_t w = scalar_t(1) / (scalar_t(1) + d), rv = r_row[j];
    const scalar_t diff = rv - w;
    const scalar_t sign = diff > 0 ? scalar_t(1) : (diff < 0 ? scalar_t(-1) : scalar_t(0));
    const bool in = d <= radius && gi != col0 + j;
    r_row[j] = in ? static_cast<scalar_t>(c[0] + 2 * c[1] * rv + c[2] * w + c[3] * sign)
                  : scalar_t(0);
  }
}

// The seven pair sums of row tile a (pairs i < j: column tiles b >= a) into acc[7].
template <typename scalar_t>
void pair_sums_tile(const scalar_t* p, const scalar_t* z, int64_t n, int64_t batch,
                    const std::vector<Box>& boxes, int64_t a, double radius, scalar_t* r,
                    double* acc) {
  const int64_t tiles = static_cast<int64_t>(boxes.size());
  const int64_t row0 = a * kTile, rows = std::min(kTile, n - row0);
  std::fill(acc, acc + 7, 0.0);
  for (int64_t b = a; b < tiles; ++b) {
    if (!tiles_within(boxes[a], boxes[b], radius)) continue;
    const int64_t col0 = b * kTile, cols = std::min(kTile, n - col0);
    gemm_rm<scalar_t>('N', 'T', rows, cols, batch, 1, z + row0 * batch, batch, z + col0 * batch,
                      batch, 0, r, cols);
    for (int64_t i = 0; i < rows; ++i)
      pair_sums_row(p, row0 + i, col0, a == b ? i + 1 : 0, cols, r + i * cols, radius, acc);
  }
}

// The seven pair sums over every tile pair within the radius, added into sums[0..6]: tiles in
// parallel on the sleeping pool, then summed tile by tile in a fixed order (the same bits at any
// thread count).
template <typename scalar_t>
void add_tiled_pair_sums(const scalar_t* p, const scalar_t* z, int64_t n, int64_t batch,
                         double radius, double* sums) {
  const int64_t tiles = (n + kTile - 1) / kTile;
  const auto boxes = tile_boxes(p, n);
  std::vector<double> partial(tiles * 7);
  // tile a has tiles - a partners: taken in that order, the longest go first
  run_block_pool(tiles, [&](const auto& take) {
    Scratch<scalar_t> r(kTile * kTile);
    for (int64_t a = take(); a < tiles; a = take())
      pair_sums_tile<scalar_t>(p, z, n, batch, boxes, a, radius, r.data, &partial[a * 7]);
  });
  for (int64_t a = 0; a < tiles; ++a)
    for (int k = 0; k < 7; ++k) sums[k] += partial[a * 7 + k];
}

// dS/dz of row tile a (every column tile within the radius) into out [rows x B].
template <typename scalar_t>
void pair_grad_tile(const scalar_t* p, const scalar_t* z, int64_t n, int64_t batch,
                    const std::vector<Box>& boxes, int64_t a, double radius, const double* c,
                    scalar_t* r, scalar_t* out) {
  const int64_t tiles = static_cast<int64_t>(boxes.size());
  const int64_t row0 = a * kTile, rows = std::min(kTile, n - row0);
  bool first = true;
  for (int64_t b = 0; b < tiles; ++b) {  // both orders of every pair
    if (!tiles_within(boxes[a], boxes[b], radius)) continue;
    const int64_t col0 = b * kTile, cols = std::min(kTile, n - col0);
    gemm_rm<scalar_t>('N', 'T', rows, cols, batch, 1, z + row0 * batch, batch, z + col0 * batch,
                      batch, 0, r, cols);
    for (int64_t i = 0; i < rows; ++i)  // r overwritten with dS/dr in place
      pair_grad_row(p, row0 + i, col0, cols, r + i * cols, radius, c);
    gemm_rm<scalar_t>('N', 'N', rows, batch, cols, 1, r, cols, z + col0 * batch, batch,
                      first ? 0 : 1, out, batch);
    first = false;
  }
  if (first) std::fill(out, out + rows * batch, scalar_t(0));
}

// 2^(floor(log2 v) + 1) from the exponent bits, as spatial_common.power_of_two_above: a power of
// two at or above v >= 0 (finite); 0 and subnormals get the smallest normal power of two.
template <typename T>
T power_of_two_above(T v) {
  using Bits = typename std::conditional<std::is_same<T, float>::value, uint32_t, uint64_t>::type;
  constexpr bool single = std::is_same<T, float>::value;
  constexpr Bits mask = single ? Bits(0x7F800000u) : Bits(0x7FF0000000000000ull);
  constexpr Bits low = single ? Bits(0x00800000u) : Bits(0x0010000000000000ull);
  Bits bits;
  std::memcpy(&bits, &v, sizeof(T));
  bits = (bits & mask) + low;
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

// What the unit-vector pass leaves per block of units (summed over blocks in block order).
struct UnitPartial {
  double self_dot = 0, self_dot2 = 0;  // sum |z_i|^2, sum |z_i|^4
  bool finite = true;
};

// Per-worker buffers of the unit-vector pass: a block's values [B x kUnits] and per-unit numbers.
template <typename T>
struct UnitBuffers {
  explicit UnitBuffers(int64_t batch)
      : values(batch * kUnits), largest(kUnits), sum(kUnits), norm2(kUnits), inv(kUnits),
        self_dot(kUnits), column(kUnits) {}
  std::vector<double> values;
  std::vector<T> largest;
  std::vector<double> sum, norm2, inv, self_dot;
  std::vector<int64_t> column;
};

// Unit vectors of units [u0, u0 + count) (in sorted order; unit i is feature column order[i]):
// each column of x [B, N] (any strides) scaled by a power of two, centred over the batch, divided
// by its norm, or zero when dead (std <= eps x RMS: spatial_common.live_units). Writes z rows
// (z [N, B]) or zt columns (zt [B, N]), factor[i] = 1 / (norm scale) (0 if dead), adds the
// block's z_i to s_part [B] and its self dots to `part`. Loops run over the block's units (inner,
// vectorised), batch rows outer, so a contiguous x is read by rows.
template <typename T>
void unit_vectors_block(const T* x, int64_t sb, int64_t sn, const int64_t* order, int64_t n,
                        int64_t batch, int64_t u0, int64_t count, double eps, T* z, T* zt,
                        double* factor, double* s_part, UnitBuffers<T>& buf, UnitPartial& part) {
  const double eps2 = eps * eps;
  int64_t* col = buf.column.data();
  for (int64_t j = 0; j < count; ++j) col[j] = (order != nullptr ? order[u0 + j] : u0 + j) * sn;
  T* largest = buf.largest.data();
  double *sum = buf.sum.data(), *norm2 = buf.norm2.data(), *inv = buf.inv.data(),
         *self_dot = buf.self_dot.data(), *values = buf.values.data();
  std::fill(largest, largest + count, T(0));
  std::fill(sum, sum + count, 0.0);
  std::fill(norm2, norm2 + count, 0.0);
  std::fill(self_dot, self_dot + count, 0.0);
  bool finite = true;
  for (int64_t b = 0; b < batch; ++b) {
    const T* row = x + b * sb;
#pragma omp simd reduction(&& : finite)
    for (int64_t j = 0; j < count; ++j) {
      const T a = std::fabs(row[col[j]]);
      finite = finite && a <= std::numeric_limits<T>::max();  // false for Inf and NaN
      largest[j] = std::max(largest[j], a);
    }
  }
  if (!finite) {  // the caller raises; nothing else of this call is used
    part.finite = false;
    for (int64_t j = 0; j < count; ++j) largest[j] = 0;
  }
  for (int64_t j = 0; j < count; ++j) largest[j] = power_of_two_above(largest[j]);  // the scale
  for (int64_t b = 0; b < batch; ++b) {
    const T* row = x + b * sb;
    double* v = values + b * count;
#pragma omp simd
    for (int64_t j = 0; j < count; ++j) {
      v[j] = finite ? static_cast<double>(row[col[j]] / largest[j]) : 0.0;  // exact
      sum[j] += v[j];
    }
  }
  for (int64_t j = 0; j < count; ++j) sum[j] /= batch;  // the mean
  for (int64_t b = 0; b < batch; ++b) {
    double* v = values + b * count;
#pragma omp simd
    for (int64_t j = 0; j < count; ++j) {
      v[j] -= sum[j];
      norm2[j] += v[j] * v[j];
    }
  }
  for (int64_t j = 0; j < count; ++j) {
    // |x|^2 = |centred|^2 + B mean^2; live iff |centred| > eps |x|
    const bool live = finite && norm2[j] > (norm2[j] + batch * sum[j] * sum[j]) * eps2;
    inv[j] = live ? 1.0 / std::sqrt(norm2[j]) : 0.0;
    factor[u0 + j] = inv[j] / static_cast<double>(largest[j]);
  }
  for (int64_t b = 0; b < batch; ++b) {
    const double* v = values + b * count;
    double s = 0;
    if (zt != nullptr) {
      T* out = zt + b * n + u0;
#pragma omp simd reduction(+ : s)
      for (int64_t j = 0; j < count; ++j) {
        const T zv = static_cast<T>(v[j] * inv[j]);
        out[j] = zv;
        s += zv;
        self_dot[j] += static_cast<double>(zv) * zv;
      }
    } else {
      T* out = z + u0 * batch + b;
#pragma omp simd reduction(+ : s)
      for (int64_t j = 0; j < count; ++j) {
        const T zv = static_cast<T>(v[j] * inv[j]);
        out[j * batch] = zv;
        s += zv;
        self_dot[j] += static_cast<double>(zv) * zv;
      }
    }
    s_part[b] += s;
  }
  for (int64_t j = 0; j < count; ++j) {
    part.self_dot += self_dot[j];
    part.self_dot2 += self_dot[j] * self_dot[j];
  }
}

// Back through z = (x / scale - mean) / norm for unit i, given g = dL/dz_i [B] (double): project
// out z_i, centre, scale by factor_i, and write the feature column order[i] of grad [B, N].
template <typename T>
void unit_backward(const T* zi, int64_t zs, double* g, int64_t batch, double factor, T* grad_col,
                   int64_t n) {
  double dot = 0;
  for (int64_t b = 0; b < batch; ++b) dot += static_cast<double>(zi[b * zs]) * g[b];
  double sum = 0;
  for (int64_t b = 0; b < batch; ++b) {
    g[b] -= zi[b * zs] * dot;
    sum += g[b];
  }
  const double mean = sum / batch;
  for (int64_t b = 0; b < batch; ++b) grad_col[b * n] = static_cast<T>((g[b] - mean) * factor);
}

}  // namespace

// --- the tile primitives (spatial_loss.h) ------------------------------------------------------

std::vector<at::Tensor> spatial_weighted_sum_cpu(const at::Tensor& z, const at::Tensor& positions) {
  check_spatial_tensors(z, positions);
  const int64_t n = z.size(0), batch = z.size(1);
  auto wz = at::empty_like(z);
  auto w_sum = at::zeros({n}, z.options().dtype(at::kDouble));
  auto w2_sum = at::zeros({n}, z.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "spatial_weighted_sum_cpu", [&] {
    const scalar_t* p = positions.data_ptr<scalar_t>();
    const scalar_t* zp = z.data_ptr<scalar_t>();
    scalar_t* out = wz.data_ptr<scalar_t>();
    double* ws = w_sum.data_ptr<double>();
    double* w2s = w2_sum.data_ptr<double>();
    const int64_t blocks = (n + kRows - 1) / kRows;
    run_block_pool(blocks, [&](const auto& take) {
      Scratch<scalar_t> tile(kRows * kCols);
      for (int64_t block = take(); block < blocks; block = take()) {
        const int64_t row0 = block * kRows, rows = std::min(kRows, n - row0);
        weighted_rows<scalar_t>(p, zp, n, batch, row0, rows, tile.data, out + row0 * batch,
                                ws + row0, w2s + row0);
      }
    });
  });
  return {wz, w_sum, w2_sum};
}

at::Tensor spatial_pair_sums_cpu(const at::Tensor& z, const at::Tensor& positions, double radius) {
  check_spatial_tensors(z, positions);
  const int64_t n = z.size(0), batch = z.size(1);
  auto sums = at::zeros({7}, z.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "spatial_pair_sums_cpu", [&] {
    add_tiled_pair_sums<scalar_t>(positions.data_ptr<scalar_t>(), z.data_ptr<scalar_t>(), n, batch,
                                  radius, sums.data_ptr<double>());
  });
  return sums;
}

at::Tensor spatial_pair_grad_cpu(const at::Tensor& z, const at::Tensor& positions, double radius,
                                 const at::Tensor& coef) {
  check_spatial_tensors(z, positions);
  TORCH_CHECK(coef.numel() == 4, "coef must hold 4 numbers");
  const auto c = coef.to(at::kDouble).cpu().contiguous();
  const double* cp = c.data_ptr<double>();
  const double coefs[4] = {cp[0], cp[1], cp[2], cp[3]};
  const int64_t n = z.size(0), batch = z.size(1), tiles = (n + kTile - 1) / kTile;
  auto grad = at::empty_like(z);
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "spatial_pair_grad_cpu", [&] {
    const scalar_t* p = positions.data_ptr<scalar_t>();
    const scalar_t* zp = z.data_ptr<scalar_t>();
    scalar_t* out = grad.data_ptr<scalar_t>();
    const auto boxes = tile_boxes(p, n);
    run_block_pool(tiles, [&](const auto& take) {
      Scratch<scalar_t> r(kTile * kTile);
      for (int64_t a = take(); a < tiles; a = take())
        pair_grad_tile<scalar_t>(p, zp, n, batch, boxes, a, radius, coefs, r.data,
                                 out + a * kTile * batch);
    });
  });
  return grad;
}

// --- the whole loss on the CPU (issue 23) ------------------------------------------------------

// x [B, N] features in the compute dtype (any strides), positions [N, 2] (sorted by `order` for
// kTiles; `order` int64 [N] or empty for the identity). Returns
//   {stats float64 [8], z, factor float64 [N], wz, s [B], gram [B, B]}
// stats[0] = 1 if every feature is finite, else 0 (nothing after the unit vectors is computed).
//   kAllPairs: z [N, B]; wz = W z [N, B]; stats[1..7] = |s|^2, sum |z_i|^2, sum |z_i|^4,
//              sum gram^2, sum z_i . (W z)_i, and (row_sums) sum w, sum w^2 over i != j.
//   kLattice:  z is z^T [B, N] (the lattice transforms by batch column); no wz; stats[1..4].
//   kTiles:    z [N, B]; stats[1..7] = the seven pair sums within `radius` (pairs i < j).
// s and the Gram Z^T Z are summed from per-block partials in block order in float64, then
// rounded to the compute dtype (the backward's all-pairs term uses them).
std::vector<at::Tensor> spatial_loss_forward_cpu(const at::Tensor& x, const at::Tensor& positions,
                                                 const at::Tensor& order, double eps, int64_t mode,
                                                 double radius, bool row_sums) {
  TORCH_CHECK(x.dim() == 2 && x.device().is_cpu(), "x must be [B, N] on the CPU");
  TORCH_CHECK(mode == kAllPairs || mode == kLattice || mode == kTiles, "unknown mode ", mode);
  const int64_t batch = x.size(0), n = x.size(1);
  TORCH_CHECK(positions.dim() == 2 && positions.size(0) == n && positions.size(1) == 2 &&
                  positions.is_contiguous() && positions.scalar_type() == x.scalar_type(),
              "positions must be [N, 2] contiguous in x's dtype");
  const bool sorted = order.numel() > 0;
  TORCH_CHECK(!sorted || (order.numel() == n && order.scalar_type() == at::kLong &&
                          order.is_contiguous()), "order must be int64 [N]");
  const auto options = x.options();
  auto stats = at::zeros({8}, options.dtype(at::kDouble));
  auto z = mode == kLattice ? at::empty({batch, n}, options) : at::empty({n, batch}, options);
  auto factor = at::empty({n}, options.dtype(at::kDouble));
  const bool all_pairs = mode != kTiles;
  auto s = at::empty({all_pairs ? batch : 0}, options);
  auto gram = at::empty({all_pairs ? batch : 0, all_pairs ? batch : 0}, options);
  auto wz = at::empty({mode == kAllPairs ? n : 0, mode == kAllPairs ? batch : 0}, options);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "spatial_loss_forward_cpu", [&] {
    using T = scalar_t;
    const T* xp = x.data_ptr<T>();
    const int64_t* op = sorted ? order.data_ptr<int64_t>() : nullptr;
    T* zp = z.data_ptr<T>();
    double* fp = factor.data_ptr<double>();
    double* st = stats.data_ptr<double>();
    // 1. unit vectors, s and Gram partials per block of kUnits units
    const int64_t blocks = (n + kUnits - 1) / kUnits;
    std::vector<double> s_part(all_pairs ? blocks * batch : 0);
    std::vector<T> gram_part(all_pairs ? blocks * batch * batch : 0);
    std::vector<UnitPartial> parts(blocks);
    run_block_pool(blocks, [&](const auto& take) {
      UnitBuffers<T> buffers(batch);
      std::vector<double> s_unused(batch);
      for (int64_t k = take(); k < blocks; k = take()) {
        const int64_t u0 = k * kUnits, count = std::min(kUnits, n - u0);
        double* sk = all_pairs ? &s_part[k * batch] : s_unused.data();
        std::fill(sk, sk + batch, 0.0);
        unit_vectors_block<T>(xp, x.stride(0), x.stride(1), op, n, batch, u0, count, eps,
                              mode == kLattice ? nullptr : zp, mode == kLattice ? zp : nullptr,
                              fp, sk, buffers, parts[k]);
        if (!all_pairs) continue;
        T* g = &gram_part[k * batch * batch];
        if (mode == kLattice)  // zt [B, N]: Z_k^T Z_k = zt_k zt_k^T
          gemm_rm<T>('N', 'T', batch, batch, count, 1, zp + u0, n, zp + u0, n, 0, g, batch);
        else  // z [N, B]
          gemm_rm<T>('T', 'N', batch, batch, count, 1, zp + u0 * batch, batch, zp + u0 * batch,
                     batch, 0, g, batch);
      }
    });
    double self_dot = 0, self_dot2 = 0;
    bool finite = true;
    for (const auto& part : parts) {
      self_dot += part.self_dot;
      self_dot2 += part.self_dot2;
      finite = finite && part.finite;
    }
    st[0] = finite ? 1.0 : 0.0;
    if (!finite) return;  // the caller raises, naming the non-finite values
    if (all_pairs) {
      std::vector<double> s_total(batch, 0.0), g_total(batch * batch, 0.0);
      for (int64_t k = 0; k < blocks; ++k) {  // fixed order over blocks
        for (int64_t b = 0; b < batch; ++b) s_total[b] += s_part[k * batch + b];
        const T* g = &gram_part[k * batch * batch];
        for (int64_t e = 0; e < batch * batch; ++e) g_total[e] += g[e];
      }
      T* sp = s.data_ptr<T>();
      T* gp = gram.data_ptr<T>();
      double s2 = 0, gram2 = 0;
      for (int64_t b = 0; b < batch; ++b) {
        s2 += s_total[b] * s_total[b];
        sp[b] = static_cast<T>(s_total[b]);
      }
      for (int64_t e = 0; e < batch * batch; ++e) {
        gram2 += g_total[e] * g_total[e];
        gp[e] = static_cast<T>(g_total[e]);
      }
      st[1] = s2, st[2] = self_dot, st[3] = self_dot2, st[4] = gram2;
    }
    const T* p = positions.data_ptr<T>();
    if (mode == kAllPairs) {
      // 2. W z by row blocks, with sum z_i . (W z)_i and W's row sums per block
      const int64_t row_blocks = (n + kRows - 1) / kRows;
      std::vector<double> part(row_blocks * 3, 0.0);
      T* wp = wz.data_ptr<T>();
      run_block_pool(row_blocks, [&](const auto& take) {
        Scratch<T> tile(kRows * kCols);
        double ws[kRows], w2s[kRows];
        for (int64_t k = take(); k < row_blocks; k = take()) {
          const int64_t row0 = k * kRows, rows = std::min(kRows, n - row0);
          std::fill(ws, ws + rows, 0.0);
          std::fill(w2s, w2s + rows, 0.0);
          weighted_rows<T>(p, zp, n, batch, row0, rows, tile.data, wp + row0 * batch, ws, w2s);
          double zwz = 0, w = 0, w2 = 0;
          const T* zr = zp + row0 * batch;
          const T* wr = wp + row0 * batch;
          for (int64_t e = 0; e < rows * batch; ++e) zwz += static_cast<double>(zr[e]) * wr[e];
          for (int64_t i = 0; i < rows; ++i) w += ws[i], w2 += w2s[i];
          part[k * 3] = zwz, part[k * 3 + 1] = w, part[k * 3 + 2] = w2;
        }
      });
      double zwz = 0, w = 0, w2 = 0;
      for (int64_t k = 0; k < row_blocks; ++k)
        zwz += part[k * 3], w += part[k * 3 + 1], w2 += part[k * 3 + 2];
      st[5] = zwz;
      if (row_sums) st[6] = w, st[7] = w2;
    } else if (mode == kTiles) {
      // 2. the seven pair sums over r tiles within the radius
      add_tiled_pair_sums<T>(p, zp, n, batch, radius, st + 1);
    }
  });
  return {stats, z, factor, wz, s, gram};
}

// The gradient of the loss with respect to x [B, N] (in z's dtype), from the forward's outputs:
// grad_loss (0-d), z (as the forward returned it), factor, order, and coef = dL/d(sum r, sum r^2,
// sum w r, sum |r - w|) per unit of grad_loss.
//   kAllPairs / kLattice: dL/dz_i = c_r s + c_wr (W z)_i + 2 c_r2 (Z^T Z) z_i (the terms along z_i
//     are left out: the projection removes them); wz [N, B] of any strides (kLattice: (W z)^T.t()).
//   kTiles: the pair gradient over r tiles within `radius` (Morton-sorted z and positions).
// Then per unit: project out z_i, centre over the batch, times factor_i, into column order[i].
at::Tensor spatial_loss_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& z,
                                     const at::Tensor& factor, const at::Tensor& order,
                                     const at::Tensor& wz, const at::Tensor& gram,
                                     const at::Tensor& s, const at::Tensor& positions,
                                     double radius, at::ArrayRef<double> coef, int64_t mode) {
  TORCH_CHECK(mode == kAllPairs || mode == kLattice || mode == kTiles, "unknown mode ", mode);
  TORCH_CHECK(coef.size() == 4, "coef must hold 4 numbers");
  TORCH_CHECK(grad_loss.numel() == 1 && grad_loss.scalar_type() == z.scalar_type(),
              "grad_loss must be one number in z's dtype");
  const bool by_column = mode == kLattice;  // z is z^T [B, N]
  const int64_t n = by_column ? z.size(1) : z.size(0), batch = by_column ? z.size(0) : z.size(1);
  TORCH_CHECK(z.is_contiguous() && factor.numel() == n, "z must be contiguous, factor [N]");
  const bool sorted = order.numel() > 0;
  auto grad = at::empty({batch, n}, z.options());
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "spatial_loss_backward_cpu", [&] {
    using T = scalar_t;
    const double g = static_cast<double>(*grad_loss.data_ptr<T>());
    const double c[4] = {g * coef[0], g * coef[1], g * coef[2], g * coef[3]};
    const T* zp = z.data_ptr<T>();
    const double* fp = factor.data_ptr<double>();
    const int64_t* op = sorted ? order.data_ptr<int64_t>() : nullptr;
    T* out = grad.data_ptr<T>();
    // unit i's z: zp + i * zi_step, element b at b * zb_step
    const int64_t zi_step = by_column ? 1 : batch, zb_step = by_column ? n : 1;
    if (mode == kTiles) {
      const T* p = positions.data_ptr<T>();
      const auto boxes = tile_boxes(p, n);
      const int64_t tiles = static_cast<int64_t>(boxes.size());
      run_block_pool(tiles, [&](const auto& take) {
        Scratch<T> r(kTile * kTile), rows_out(kTile * batch);
        std::vector<double> gi(batch);
        for (int64_t a = take(); a < tiles; a = take()) {
          pair_grad_tile<T>(p, zp, n, batch, boxes, a, radius, c, r.data, rows_out.data);
          const int64_t row0 = a * kTile, rows = std::min(kTile, n - row0);
          for (int64_t i = 0; i < rows; ++i) {
            const int64_t unit = row0 + i;
            for (int64_t b = 0; b < batch; ++b) gi[b] = rows_out.data[i * batch + b];
            unit_backward<T>(zp + unit * zi_step, zb_step, gi.data(), batch, fp[unit],
                             out + (sorted ? op[unit] : unit), n);
          }
        }
      });
      return;
    }
    TORCH_CHECK(wz.dim() == 2 && wz.size(0) == n && wz.size(1) == batch, "wz must be [N, B]");
    TORCH_CHECK(gram.is_contiguous() && s.is_contiguous(), "gram and s must be contiguous");
    const T* wp = wz.data_ptr<T>();
    const int64_t wi_step = wz.stride(0), wb_step = wz.stride(1);
    const T* gp = gram.data_ptr<T>();
    const T* sp = s.data_ptr<T>();
    const int64_t blocks = (n + kUnits - 1) / kUnits;
    run_block_pool(blocks, [&](const auto& take) {
      Scratch<T> product(kUnits * batch);  // [units x B]: Z_k (Z^T Z), the Gram symmetric
      std::vector<double> gi(batch);
      for (int64_t k = take(); k < blocks; k = take()) {
        const int64_t u0 = k * kUnits, count = std::min(kUnits, n - u0);
        if (by_column)  // zt [B, N]: rows of Z_k are its columns
          gemm_rm<T>('T', 'N', count, batch, batch, T(2 * c[1]), zp + u0, n, gp, batch, 0,
                     product.data, batch);
        else
          gemm_rm<T>('N', 'N', count, batch, batch, T(2 * c[1]), zp + u0 * batch, batch, gp,
                     batch, 0, product.data, batch);
        for (int64_t i = 0; i < count; ++i) {
          const int64_t unit = u0 + i;
          const T* wzi = wp + unit * wi_step;
          for (int64_t b = 0; b < batch; ++b)
            gi[b] = static_cast<double>(product.data[i * batch + b]) + c[0] * sp[b] +
                    c[2] * wzi[b * wb_step];
          unit_backward<T>(zp + unit * zi_step, zb_step, gi.data(), batch, fp[unit],
                           out + (sorted ? op[unit] : unit), n);
        }
      }
    });
  });
  return grad;
}

// Registered with the dispatcher (torch.ops.topoaudio.*): the Python layer calls them from the CPU
// autograd Function; bindings.cpp keeps the pybind11 entry points of the primitives.
TORCH_LIBRARY_FRAGMENT(topoaudio, m) {
  m.def("spatial_loss_forward_cpu(Tensor x, Tensor positions, Tensor order, float eps, int mode, "
        "float radius, bool row_sums) -> Tensor[]",
        &spatial_loss_forward_cpu);
  m.def("spatial_loss_backward_cpu(Tensor grad_loss, Tensor z, Tensor factor, Tensor order, "
        "Tensor wz, Tensor gram, Tensor s, Tensor positions, float radius, float[] coef, int mode) "
        "-> Tensor",
        &spatial_loss_backward_cpu);
}
