// One pool of worker threads for all parallel compute. Workers spin briefly after a job (the
// next matmul usually follows within microseconds) and then sleep on a condition variable, so
// an idle or contended pool does not burn cores that other programs need. A job never waits for
// a sleeping worker to wake up: the caller runs tasks itself, a worker joins whatever job is
// current when it wakes, and a job is complete when its tasks are (not when every worker has
// checked in), so the cost of waking a thread is never on the critical path. In a child made by
// fork() the pool starts workers of its own at its next job (the parent's are not there).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

namespace tova {

class ThreadPool {
 public:
  explicit ThreadPool(int n_threads);  // n_threads >= 1; the caller is thread 0
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Calls f(task, thread) for every task in [0, n_tasks) and returns when all are done.
  // Tasks are handed out dynamically; `thread` is in [0, size()). A task that throws ends the
  // job (tasks not started are skipped) and its exception is rethrown here.
  template <class F>
  void run(int64_t n_tasks, F&& f) {
    if (n_tasks <= 0) return;
    if (n_threads_ == 1 || n_tasks == 1) {
      for (int64_t t = 0; t < n_tasks; ++t) f(t, 0);
      return;
    }
    using Fn = std::remove_reference_t<F>;
    run_impl(n_tasks, [](void* ctx, int64_t t, int th) { (*static_cast<Fn*>(ctx))(t, th); }, &f);
  }

  // Splits [0, n) into about `chunks_per_thread * size()` contiguous ranges and calls
  // f(begin, end, thread) on each.
  template <class F>
  void parallel_for(int64_t n, F&& f, int64_t min_chunk = 1, int chunks_per_thread = 1) {
    if (n <= 0) return;
    int64_t n_chunks = static_cast<int64_t>(n_threads_) * chunks_per_thread;
    int64_t chunk = (n + n_chunks - 1) / n_chunks;
    if (chunk < min_chunk) chunk = min_chunk;
    n_chunks = (n + chunk - 1) / chunk;
    run(n_chunks, [&](int64_t c, int th) {
      int64_t b = c * chunk, e = b + chunk < n ? b + chunk : n;
      f(b, e, th);
    });
  }

 private:
  using Call = void (*)(void*, int64_t, int);
  // A posted job. Two slots alternate, so a worker still leaving job g never sees the fields of
  // job g + 1 being written; the caller rewrites a slot (job g + 2) only once no worker is in it.
  struct Job {
    std::atomic<int64_t> id{-1};    // the generation this slot holds; -1 while being written
    std::atomic<int> refs{0};       // workers inside the slot
    std::atomic<int64_t> next{0};   // next task to claim
    std::atomic<int64_t> done{0};   // tasks finished
    int64_t n = 0;
    Call call = nullptr;
    void* ctx = nullptr;
    std::atomic<bool> failed{false};  // a task threw: the rest are skipped
    std::exception_ptr error;         // the first task's exception (written by the thread that set failed)
  };
  void run_impl(int64_t n_tasks, Call call, void* ctx);
  void start_workers();
  void restart_after_fork();
  void worker(int index);
  static void participate(Job& j, int index);

  int n_threads_;
  uint64_t forks_;  // the process's fork count when the workers started (restart_after_fork)
  std::vector<std::thread> threads_;
  Job jobs_[2];
  std::atomic<int64_t> generation_{0};  // the latest job posted
  std::atomic<int> sleepers_{0};
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable cv_;
};

}  // namespace tova
