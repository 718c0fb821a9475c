// CPU tile kernels of the spatial loss (see spatial_loss.h). Row tiles are handed out to the
// threads dynamically (parallel_blocks.h: a thread slowed by another process takes fewer); each
// tile's outputs are written by the one thread that took it, in a fixed summation order, so the
// result does not depend on the thread count or the schedule. Weight and mask tiles
// are generated in cache-sized buffers; the [tile x tile] x [tile x B] products go to BLAS
// (single-threaded inside a parallel region), which vectorises for the machine it runs on.
#include "spatial_loss.h"

#include "parallel_blocks.h"
#include <algorithm>
#include <cmath>
#include <limits>

namespace {

constexpr int64_t kRows = 64;     // rows per weighted-sum block
constexpr int64_t kCols = 2048;   // columns per weighted-sum block (64 x 2048 floats = 512 KiB)
constexpr int64_t kTile = 256;    // square tiles of the radius / absolute kernels

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

}  // namespace

std::vector<at::Tensor> spatial_weighted_sum_cpu(const at::Tensor& z, const at::Tensor& positions) {
  check_spatial_tensors(z, positions);
  const int64_t n = z.size(0);
  auto wz = at::zeros_like(z);
  auto w_sum = at::zeros({n}, z.options().dtype(at::kDouble));
  auto w2_sum = at::zeros({n}, z.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "spatial_weighted_sum_cpu", [&] {
    const scalar_t* p = positions.data_ptr<scalar_t>();
    double* ws = w_sum.data_ptr<double>();
    double* w2s = w2_sum.data_ptr<double>();
    const int64_t blocks = (n + kRows - 1) / kRows;
    run_block_workers(blocks, [&](const auto& take) {
      auto tile = at::empty({kRows, kCols}, z.options());
      for (int64_t block = take(); block < blocks; block = take()) {
        const int64_t row0 = block * kRows, rows = std::min(kRows, n - row0);
        auto out = wz.narrow(0, row0, rows);
        for (int64_t col0 = 0; col0 < n; col0 += kCols) {
          const int64_t cols = std::min(kCols, n - col0);
          auto w = tile.view(-1).narrow(0, 0, rows * cols).view({rows, cols});
          weight_rows<scalar_t>(p, row0, rows, col0, cols, w.data_ptr<scalar_t>(), ws + row0,
                                w2s + row0);
          out.addmm_(w, z.narrow(0, col0, cols));
        }
      }
    });
  });
  return {wz, w_sum, w2_sum};
}

at::Tensor spatial_pair_sums_cpu(const at::Tensor& z, const at::Tensor& positions, double radius) {
  check_spatial_tensors(z, positions);
  const int64_t n = z.size(0), tiles = (n + kTile - 1) / kTile;
  auto partial = at::zeros({tiles, 7}, z.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "spatial_pair_sums_cpu", [&] {
    const scalar_t* p = positions.data_ptr<scalar_t>();
    const auto boxes = tile_boxes(p, n);
    double* part = partial.data_ptr<double>();
    // tile a has tiles - a partners: taken in that order, the longest go first
    run_block_workers(tiles, [&](const auto& take) {
      auto r_tile = at::empty({kTile, kTile}, z.options());
      for (int64_t a = take(); a < tiles; a = take()) {
        const int64_t row0 = a * kTile, rows = std::min(kTile, n - row0);
        double acc[7] = {0, 0, 0, 0, 0, 0, 0};
        for (int64_t b = a; b < tiles; ++b) {  // pairs i < j live in tiles b >= a
          if (!tiles_within(boxes[a], boxes[b], radius)) continue;
          const int64_t col0 = b * kTile, cols = std::min(kTile, n - col0);
          auto r = r_tile.view(-1).narrow(0, 0, rows * cols).view({rows, cols});
          at::mm_out(r, z.narrow(0, row0, rows), z.narrow(0, col0, cols).t());
          const scalar_t* rp = r.data_ptr<scalar_t>();
          for (int64_t i = 0; i < rows; ++i)
            pair_sums_row(p, row0 + i, col0, a == b ? i + 1 : 0, cols, rp + i * cols, radius, acc);
        }
        std::copy(acc, acc + 7, part + a * 7);
      }
    });
  });
  return partial.sum(0);  // fixed order over tiles
}

at::Tensor spatial_pair_grad_cpu(const at::Tensor& z, const at::Tensor& positions, double radius,
                                 const at::Tensor& coef) {
  check_spatial_tensors(z, positions);
  TORCH_CHECK(coef.numel() == 4, "coef must hold 4 numbers");
  const auto c = coef.to(at::kDouble).cpu();
  const double coefs[4] = {c[0].item<double>(), c[1].item<double>(), c[2].item<double>(),
                           c[3].item<double>()};
  const int64_t n = z.size(0), tiles = (n + kTile - 1) / kTile;
  auto grad = at::zeros_like(z);
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "spatial_pair_grad_cpu", [&] {
    const scalar_t* p = positions.data_ptr<scalar_t>();
    const auto boxes = tile_boxes(p, n);
    run_block_workers(tiles, [&](const auto& take) {
      auto r_tile = at::empty({kTile, kTile}, z.options());
      for (int64_t a = take(); a < tiles; a = take()) {
        const int64_t row0 = a * kTile, rows = std::min(kTile, n - row0);
        auto out = grad.narrow(0, row0, rows);
        for (int64_t b = 0; b < tiles; ++b) {  // both orders of every pair
          if (!tiles_within(boxes[a], boxes[b], radius)) continue;
          const int64_t col0 = b * kTile, cols = std::min(kTile, n - col0);
          auto r = r_tile.view(-1).narrow(0, 0, rows * cols).view({rows, cols});
          at::mm_out(r, z.narrow(0, row0, rows), z.narrow(0, col0, cols).t());
          scalar_t* rp = r.data_ptr<scalar_t>();  // overwritten with dS/dr in place
          for (int64_t i = 0; i < rows; ++i)
            pair_grad_row(p, row0 + i, col0, cols, rp + i * cols, radius, coefs);
          out.addmm_(r, z.narrow(0, col0, cols));
        }
      }
    });
  });
  return grad;
}
