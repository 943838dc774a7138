#include "thread_pool.h"

#include <pthread.h>

#include <new>

#include "common.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
static inline void cpu_relax() { _mm_pause(); }
#elif defined(__aarch64__)
static inline void cpu_relax() { asm volatile("yield"); }
#else
static inline void cpu_relax() {}
#endif

namespace tova {

namespace {
// About 20-50 microseconds of polling before sleeping: long enough to bridge the gap between
// two matrix products of one token, short enough not to matter to other processes.
constexpr int kSpinIterations = 1 << 11;

// How many fork() calls lie between the program's start and this process: a fact of the process,
// counted by pthread_atfork's child hook (registered with the first pool).
std::atomic<uint64_t> g_forks{0};

uint64_t forks_so_far() {
  static const bool hooked = [] {
    pthread_atfork(nullptr, nullptr, [] { g_forks.fetch_add(1); });
    return true;
  }();
  (void)hooked;
  return g_forks.load(std::memory_order_relaxed);
}

// The thread objects of workers that live in another process (the parent of a fork): joining
// them would wait forever and destroying them aborts, so they are kept, untouched, to the end.
void abandon(std::vector<std::thread>& threads) {
  if (!threads.empty()) new std::vector<std::thread>(std::move(threads));  // (kept on purpose)
  threads.clear();
}

}  // namespace

ThreadPool::ThreadPool(int n_threads) : n_threads_(n_threads), forks_(forks_so_far()) {
  if (n_threads < 1) throw ArgumentError(cat("n_threads must be at least 1, got ", n_threads));
  start_workers();
}

void ThreadPool::start_workers() {
  threads_.reserve(static_cast<size_t>(n_threads_ - 1));
  for (int i = 1; i < n_threads_; ++i) threads_.emplace_back([this, i] { worker(i); });
}

// In a child made by fork() while this pool was idle: the workers are the parent's and absent
// here. The pool starts from scratch with workers of its own (its lock and condition made anew:
// a worker of the parent may have held them when it forked).
void ThreadPool::restart_after_fork() {
  abandon(threads_);
  new (&mu_) std::mutex();
  new (&cv_) std::condition_variable();
  generation_.store(0);
  sleepers_.store(0);
  stop_.store(false);
  for (Job& j : jobs_) {
    j.id.store(-1);
    j.refs.store(0);
    j.next.store(0);
    j.done.store(0);
    j.failed.store(false);
    j.error = nullptr;
  }
  forks_ = forks_so_far();
  start_workers();
}

ThreadPool::~ThreadPool() {
  if (forks_so_far() != forks_) {  // made before a fork, its workers in the parent
    abandon(threads_);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_.store(true);
    generation_.fetch_add(1);
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
}

void ThreadPool::participate(Job& j, int index) {
  for (;;) {
    const int64_t t = j.next.fetch_add(1, std::memory_order_acq_rel);
    if (t >= j.n) return;
    if (!j.failed.load(std::memory_order_relaxed)) {
      try {
        j.call(j.ctx, t, index);
      } catch (...) {
        if (!j.failed.exchange(true)) j.error = std::current_exception();
      }
    }
    j.done.fetch_add(1, std::memory_order_release);
  }
}

void ThreadPool::worker(int index) {
  int64_t seen = 0;
  for (;;) {
    int64_t g = generation_.load(std::memory_order_acquire);
    for (int i = 0; g == seen && i < kSpinIterations; ++i) {
      cpu_relax();
      g = generation_.load(std::memory_order_acquire);
    }
    if (g == seen) {
      std::unique_lock<std::mutex> lock(mu_);
      sleepers_.fetch_add(1);  // seq_cst: either the poster sees a sleeper, or we see its job
      cv_.wait(lock, [&] { return generation_.load() != seen; });
      sleepers_.fetch_sub(1);
      g = generation_.load();
    }
    if (stop_.load()) return;
    seen = g;
    Job& j = jobs_[g & 1];
    j.refs.fetch_add(1);  // seq_cst, paired with the poster's id / refs handshake
    if (j.id.load() == g) participate(j, index);
    j.refs.fetch_sub(1, std::memory_order_release);
  }
}

void ThreadPool::run_impl(int64_t n_tasks, Call call, void* ctx) {
  if (forks_so_far() != forks_) restart_after_fork();
  const int64_t g = generation_.load(std::memory_order_relaxed) + 1;
  Job& j = jobs_[g & 1];
  j.id.store(-1);  // seq_cst: a worker entering now sees -1 and leaves, or we see its ref
  for (int i = 0; j.refs.load() != 0;) {  // a worker leaving job g - 2 (it finds no task)
    if (i < kSpinIterations) {
      ++i;
      cpu_relax();
    } else {
      std::this_thread::yield();
    }
  }
  j.n = n_tasks;
  j.call = call;
  j.ctx = ctx;
  j.next.store(0, std::memory_order_relaxed);
  j.done.store(0, std::memory_order_relaxed);
  j.failed.store(false, std::memory_order_relaxed);
  j.error = nullptr;
  j.id.store(g, std::memory_order_release);
  generation_.store(g);  // seq_cst, paired with sleepers_
  if (sleepers_.load() > 0) {
    { std::lock_guard<std::mutex> lock(mu_); }  // a worker between its check and wait() is in wait() now
    cv_.notify_all();
  }
  participate(j, 0);
  // Every task is claimed; wait for those still running on other threads.
  for (int i = 0; j.done.load(std::memory_order_acquire) < n_tasks;) {
    if (i < kSpinIterations) {
      ++i;
      cpu_relax();
    } else {
      std::this_thread::yield();
    }
  }
  if (j.failed.load(std::memory_order_acquire)) std::rethrow_exception(j.error);
}

}  // namespace tova
