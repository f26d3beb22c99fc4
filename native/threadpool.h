// A persistent compute pool: threads are created once (and again only on setThreads); the calling
// (JavaScript) thread takes tasks too. Tasks are claimed with a CAS on a counter tagged with the run
// generation, so a worker still leaving run g can never claim an index of run g+1.
// A run first *closes* the counter (a generation with no claimable index) and only then changes the
// task count and function: a worker that read run g's counter but the next run's task count would
// otherwise claim an index against g's stale counter, run the next run's function early, and count
// it as done twice, so that run could return while a task still used its stack.
// Idle workers spin ~200 us (ops arrive back to back during a forward pass), then sleep on a condvar.
// A thread waiting for others (the caller at the end of a run) pauses, then also yields (backoff).
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>
#if defined(__x86_64__)
#include <immintrin.h>
#define MOIRA_PAUSE() _mm_pause()
#else
#define MOIRA_PAUSE() std::this_thread::yield()
#endif

namespace moira {

class ThreadPool {
 public:
  using Task = std::function<void(int task, int thread)>;

  explicit ThreadPool(int nThreads) : n_(nThreads < 1 ? 1 : nThreads) {
    for (int i = 1; i < n_; i++) workers_.emplace_back([this, i] { workerLoop(i); });
  }
  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_.store(true);
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }
  int size() const { return n_; }

  // Runs fn(0..nTasks-1) across the pool; returns when all are done. Not reentrant.
  void run(int nTasks, const Task& fn) {
    if (nTasks <= 0) return;
    if (n_ == 1 || nTasks == 1) {
      for (int i = 0; i < nTasks; i++) fn(i, 0);
      return;
    }
    work_.store((++gen_ << 32) | kClosed);  // seq_cst: before the new count and function below
    fn_.store(&fn);
    nTasks_.store(nTasks);
    done_.store(0);
    const uint64_t g = ++gen_;
    {
      std::lock_guard<std::mutex> lk(mu_);
      work_.store(g << 32, std::memory_order_release);
    }
    cv_.notify_all();
    claim(g, 0);
    for (int spins = 0; done_.load(std::memory_order_acquire) < nTasks;) backoff(spins);
    fn_ = nullptr;
  }

 public:
  // One step of a wait for another pool thread: pause, and after ~50 us of pausing also yield the
  // core. On a quiet machine the wait ends long before; on an oversubscribed one the thread being
  // waited for may be preempted, and spinning on would keep it off the core.
  static void backoff(int& spins) {
    MOIRA_PAUSE();
    if (++spins >= 4096) std::this_thread::yield();
  }

 private:
  void claim(uint64_t g, int tid) {
    for (;;) {
      uint64_t v = work_.load(std::memory_order_acquire);
      if ((v >> 32) != g) return;
      const uint32_t idx = (uint32_t)(v & 0xffffffffu);
      if (idx >= (uint32_t)nTasks_.load()) return;  // kClosed is never below a count
      if (work_.compare_exchange_weak(v, v + 1)) {
        (*fn_.load())((int)idx, tid);
        done_.fetch_add(1);
      }
    }
  }
  void workerLoop(int tid) {
    uint64_t seen = 0;
    for (;;) {
      auto t0 = std::chrono::steady_clock::now();
      int spins = 0;
      uint64_t g;
      while ((g = work_.load(std::memory_order_acquire) >> 32) == seen && !stop_.load(std::memory_order_relaxed)) {
        MOIRA_PAUSE();
        if (++spins % 64 == 0 && std::chrono::steady_clock::now() - t0 > std::chrono::microseconds(200)) {
          std::unique_lock<std::mutex> lk(mu_);
          cv_.wait(lk, [&] { return (work_.load() >> 32) != seen || stop_.load(); });
        }
      }
      if (stop_.load()) return;
      seen = g;
      claim(g, tid);
    }
  }

  static constexpr uint64_t kClosed = 0xffffffffu;
  const int n_;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> work_{0};  // generation << 32 | next task index
  std::atomic<int> done_{0};
  uint64_t gen_ = 0;
  std::atomic<int> nTasks_{0};
  std::atomic<const Task*> fn_{nullptr};
};

}  // namespace moira
