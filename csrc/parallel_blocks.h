// Dynamic work distribution for the CPU kernels (issue 10). ATen's parallel_for splits a range
// statically: when one of its threads shares a core with another busy process, the others finish
// their half and wait (spinning) for it, and the call takes many times its one-thread time. Here
// one parallel region starts one worker per thread, and the workers take blocks from a shared
// counter, so a thread that runs at full speed takes more blocks. Each block is processed by
// exactly one worker and writes only its own outputs, so results do not depend on which thread
// took which block, nor on the thread count. One region, one barrier per call.
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

// Calls worker(take) once per thread (up to `blocks` threads) inside one parallel region; take()
// returns the next block index, >= blocks once none are left. Inside the region ATen runs nested
// ops (at::mm_out, at::addmm_) single-threaded, so a worker's GEMMs stay on its own core.
template <typename Worker>
void run_block_workers(int64_t blocks, const Worker& worker) {
  if (blocks <= 0) return;
  std::atomic<int64_t> next{0};
  const auto take = [&next]() { return next.fetch_add(1, std::memory_order_relaxed); };
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), blocks));
  // grain 1 over [0, workers): one index per thread; run inline when already inside a region
  at::parallel_for(0, workers, 1, [&](int64_t begin, int64_t end) {
    for (int64_t w = begin; w < end; ++w) worker(take);
  });
}
