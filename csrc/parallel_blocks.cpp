// A probe of run_block_workers for the tests: how many distinct threads took blocks. The CPU
// kernels were once compiled without -fopenmp, and their "parallel" region ran every block on
// the calling thread without any error; tests/test_parallel_blocks.py now catches that.
#include "parallel_blocks.h"

#include <chrono>
#include <mutex>
#include <set>
#include <thread>

int64_t block_worker_threads(int64_t blocks, double seconds_per_block) {
  std::mutex mutex;
  std::set<std::thread::id> threads;
  run_block_workers(blocks, [&](const auto& take) {
    for (int64_t block = take(); block < blocks; block = take()) {
      std::this_thread::sleep_for(std::chrono::duration<double>(seconds_per_block));
      const std::lock_guard<std::mutex> lock(mutex);
      threads.insert(std::this_thread::get_id());
    }
  });
  return static_cast<int64_t>(threads.size());
}
