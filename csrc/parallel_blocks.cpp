// The helper-thread pool of run_block_pool (parallel_blocks.h), and probes of both schedulers for
// the tests: how many distinct threads took blocks. The CPU kernels were once compiled without
// -fopenmp, and their "parallel" region ran every block on the calling thread without any error;
// tests/test_parallel_blocks.py now catches that.
#include "parallel_blocks.h"

#include <torch/library.h>

#include <chrono>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <pthread.h>
#include <set>
#include <thread>

namespace block_pool {
namespace {

// One job at a time (run_mutex); its state is guarded by `mutex`. A helper joins only while the
// job is open, under the mutex, and the caller closes it under the mutex before waiting for the
// helpers that joined: no helper touches a job (body, context) after the caller returned. Leaked
// on purpose (helpers are detached and sleep in `wake` until the process ends); a forked child
// makes its own (the parent's helper threads do not exist in it).
class Pool {
 public:
  void run(int64_t helpers, void (*body)(void*), void* context) {
    std::unique_lock<std::mutex> run_lock(run_mutex_, std::try_to_lock);
    if (!run_lock.owns_lock()) {  // another thread's call holds the pool: this one runs alone
      run_body(body, context);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      while (static_cast<int64_t>(threads_) < helpers) {
        std::thread(&Pool::helper, this).detach();
        ++threads_;
      }
      body_ = body, context_ = context, error_ = nullptr;
      wanted_ = helpers, joined_ = 0, open_ = true;
      ++epoch_;
    }
    wake_.notify_all();
    std::exception_ptr error;
    try {
      run_body(body, context);
    } catch (...) {
      error = std::current_exception();
    }
    std::unique_lock<std::mutex> lock(mutex_);
    open_ = false;  // every block is taken: a helper waking now has nothing to do
    finished_.wait(lock, [this] { return active_ == 0; });
    if (!error) error = error_;
    body_ = nullptr, context_ = nullptr, error_ = nullptr;
    lock.unlock();
    if (error) std::rethrow_exception(error);
  }

 private:
  static void run_body(void (*body)(void*), void* context) {
    const c10::ParallelGuard nested_inline(true);  // ATen ops inside a block run on its thread
    const SequentialBlasGuard sequential_blas;
    body(context);
  }

  void helper() {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      wake_.wait(lock, [&] { return epoch_ != seen; });
      seen = epoch_;
      if (!open_ || joined_ >= wanted_) continue;
      ++joined_, ++active_;
      void (*body)(void*) = body_;
      void* context = context_;
      lock.unlock();
      std::exception_ptr error;
      try {
        run_body(body, context);
      } catch (...) {
        error = std::current_exception();
      }
      lock.lock();
      if (error && !error_) error_ = error;
      if (--active_ == 0) finished_.notify_one();
    }
  }

  std::mutex run_mutex_, mutex_;
  std::condition_variable wake_, finished_;
  size_t threads_ = 0;
  uint64_t epoch_ = 0;
  void (*body_)(void*) = nullptr;
  void* context_ = nullptr;
  std::exception_ptr error_;
  int64_t wanted_ = 0, joined_ = 0, active_ = 0;
  bool open_ = false;
};

std::atomic<Pool*> pool{nullptr};

void forget_pool_in_child() { pool.store(nullptr); }  // (the parent's helpers are not in the child)

Pool& the_pool() {
  static const bool registered = pthread_atfork(nullptr, nullptr, forget_pool_in_child) == 0;
  (void)registered;
  Pool* current = pool.load();
  if (current == nullptr) {  // (no helper starts before its first job: a losing copy is unused)
    Pool* made = new Pool();
    if (pool.compare_exchange_strong(current, made)) return *made;
    delete made;
  }
  return *current;
}

}  // namespace

void run(int64_t helpers, void (*body)(void*), void* context) {
  the_pool().run(helpers, body, context);
}

}  // namespace block_pool

namespace {

template <typename Run>
int64_t distinct_threads(int64_t blocks, double seconds_per_block, const Run& run) {
  std::mutex mutex;
  std::set<std::thread::id> threads;
  run(blocks, [&](const auto& take) {
    for (int64_t block = take(); block < blocks; block = take()) {
      std::this_thread::sleep_for(std::chrono::duration<double>(seconds_per_block));
      const std::lock_guard<std::mutex> lock(mutex);
      threads.insert(std::this_thread::get_id());
    }
  });
  return static_cast<int64_t>(threads.size());
}

int64_t block_pool_threads(int64_t blocks, double seconds_per_block) {
  return distinct_threads(blocks, seconds_per_block,
                          [](int64_t b, const auto& worker) { run_block_pool(b, worker); });
}

}  // namespace

int64_t block_worker_threads(int64_t blocks, double seconds_per_block) {
  return distinct_threads(blocks, seconds_per_block,
                          [](int64_t b, const auto& worker) { run_block_workers(b, worker); });
}

TORCH_LIBRARY_FRAGMENT(topoaudio, m) {
  m.def("block_pool_threads(int blocks, float seconds_per_block) -> int", &block_pool_threads);
}
