// Dynamic work distribution for the CPU kernels (issue 10). ATen's parallel_for splits a range
// statically: when one of its threads shares a core with another busy process, the others finish
// their half and wait (spinning) for it, and the call takes many times its one-thread time. Here
// one parallel region starts one worker per thread, and the workers take blocks from a shared
// counter, so a thread that runs at full speed takes more blocks. Each block is processed by
// exactly one worker and writes only its own outputs, so results do not depend on which thread
// took which block, nor on the thread count. One region, one barrier per call.
#pragma once
#include <ATen/Config.h>
#include <ATen/Parallel.h>
#include <c10/util/ParallelGuard.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

#if AT_MKL_ENABLED()
// MKL's per-thread thread count, C interface (mkl_service.h maps mkl_set_num_threads_local to it;
// the lower-case symbol itself is the Fortran one, taking a pointer). Weak, so that a torch whose
// MKL does not export it still loads.
extern "C" int MKL_Set_Num_Threads_Local(int) __attribute__((weak));
#endif

// Inside a parallel region MKL still starts its own team of torch.set_num_threads() threads per
// GEMM (torch sets MKL's count, so MKL_NUM_THREADS=1 has no effect): one fork and one spinning
// barrier per small GEMM, which is what collapses under contention. A worker's GEMMs run on its
// own thread; the previous per-thread setting is restored on exit.
class SequentialBlasGuard {
 public:
  SequentialBlasGuard() {
#if AT_MKL_ENABLED()
    if (MKL_Set_Num_Threads_Local != nullptr) previous_ = MKL_Set_Num_Threads_Local(1);
#endif
  }
  ~SequentialBlasGuard() {
#if AT_MKL_ENABLED()
    if (MKL_Set_Num_Threads_Local != nullptr) MKL_Set_Num_Threads_Local(previous_);
#endif
  }
  SequentialBlasGuard(const SequentialBlasGuard&) = delete;
  SequentialBlasGuard& operator=(const SequentialBlasGuard&) = delete;

 private:
  int previous_ = 0;
};

// Calls worker(take) once per thread (up to `blocks` threads) inside one parallel region; take()
// returns the next block index, >= blocks once none are left. Inside the region ATen runs nested
// elementwise ops single-threaded and SequentialBlasGuard keeps MKL's GEMMs on the worker's thread.
template <typename Worker>
void run_block_workers(int64_t blocks, const Worker& worker) {
  if (blocks <= 0) return;
  std::atomic<int64_t> next{0};
  const auto take = [&next]() { return next.fetch_add(1, std::memory_order_relaxed); };
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), blocks));
  // grain 1 over [0, workers): one index per thread; run inline when already inside a region
  at::parallel_for(0, workers, 1, [&](int64_t begin, int64_t end) {
    const SequentialBlasGuard sequential_blas;
    for (int64_t w = begin; w < end; ++w) worker(take);
  });
}

// The same contract on a pool of helper threads that sleep between calls and are never waited
// for (issue 23): the caller takes blocks at once; a helper joins if it wakes while blocks are
// left, and the caller waits only for helpers that joined (those holding blocks). An OpenMP region
// ends in a barrier every thread must reach: under load, a thread that had not yet been scheduled
// held each region up by about a scheduler slice (~3 ms), and libgomp's threads spin ~300,000
// iterations after each region (OMP_WAIT_POLICY unset), taking CPU from the caller's next steps.
// Calls from inside a parallel region or a pool helper, with one thread or one block, or while
// another thread's call holds the pool, run inline on the caller. Used by the spatial kernels
// (their calls are short at small N, three per step); the cochleagram keeps run_block_workers.
namespace block_pool {
// Runs body(context) on the caller and on up to `helpers` pool threads (each at most once, each
// with MKL on one thread and ATen's nested ops inline); returns once every run has returned.
// An exception from any run is rethrown on the caller.
void run(int64_t helpers, void (*body)(void*), void* context);
}  // namespace block_pool

template <typename Worker>
void run_block_pool(int64_t blocks, const Worker& worker) {
  if (blocks <= 0) return;
  std::atomic<int64_t> next{0};
  const auto take = [&next]() { return next.fetch_add(1, std::memory_order_relaxed); };
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), blocks));
  auto body = [&]() { worker(take); };
  if (workers == 1 || at::in_parallel_region()) {
    const c10::ParallelGuard nested_inline(true);
    const SequentialBlasGuard sequential_blas;
    body();
    return;
  }
  block_pool::run(workers - 1, [](void* context) { (*static_cast<decltype(body)*>(context))(); },
                  &body);
}

// Test probe (parallel_blocks.cpp): runs `blocks` blocks that each sleep, returns how many distinct
// threads took at least one (run_block_workers; torch.ops.topoaudio.block_pool_threads probes
// run_block_pool the same way).
int64_t block_worker_threads(int64_t blocks, double seconds_per_block);
