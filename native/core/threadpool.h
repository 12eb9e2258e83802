// A small fork-join pool: parallelFor(n, fn) runs fn(i) for i in [0, n) on the workers and the caller.
//
// Waking a sleeping thread can take a millisecond or more on a virtual machine (the host must
// schedule the idle virtual CPU again), which is longer than a whole decode step. So workers spin
// for a short while (kSpinMicros) after each job before they sleep on the condition variable, and
// the caller spins until the workers are done: back-to-back calls (one per layer in a decode loop)
// never pay a wake-up; and the caller never waits for a worker that is still asleep.
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <stdexcept>
#include <thread>
#include <vector>

#include "errors.h"
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace lukv {

class ThreadPool {
 public:
  static constexpr int kSpinMicros = 2000;

  // Throws BackendUnavailable when the system cannot start that many threads, after stopping the
  // ones it started (left running, they would wait on a condition variable being destroyed).
  explicit ThreadPool(int threads) : threads_(threads < 1 ? 1 : threads), blocks_(new Block[threads_]) {
    try {
      for (int i = 1; i < threads_; ++i) workers_.emplace_back([this, i] { workerLoop(i); });
    } catch (const std::exception& e) {
      const size_t started = workers_.size();
      stopWorkers();
      throw Error(ErrorCode::BackendUnavailable, "Cannot start " + std::to_string(threads_ - 1) + (threads_ == 2 ? " kernel thread" : " kernel threads") + " for the CPU backend (" +
                                                     std::to_string(started) + " started, then: " + e.what() +
                                                     "); give fewer threads (the threads option or LUKV_THREADS)");
    }
  }
  ~ThreadPool() { stopWorkers(); }
  int threads() const { return threads_; }

  // One job at a time runs on the workers: a caller that finds the pool busy with another
  // caller's job runs its own items on its own thread instead of waiting (calls on different
  // sequences of a cache run concurrently). Not re-entrant from inside fn.
  // An item that throws (std::bad_alloc, say) does not stop the others: parallelFor returns, or
  // rethrows the first such exception, only once every item has run, since fn and what it refers
  // to live in the caller's frame (a worker's exception used to end the process, and one on the
  // calling thread left the workers running on that frame after it was gone).
  // The caller waits for the items, not for the workers: a worker that is still asleep when all
  // items are done simply finds no job when it wakes.
  // The items are dealt in one block per thread (the caller's first), each thread running its own
  // block before it helps with the others': a step repeated with the same items (a decode loop)
  // then runs each item on the same core as the step before, whose caches still hold its rows. With
  // one shared counter the items changed cores from call to call, and 16 short sequences' kernels
  // (1 MiB of rows, which each core's L2 holds) took ~10% longer on two threads than their share.
  void parallelFor(int64_t n, const std::function<void(int64_t)>& fn) {
    if (n <= 0) return;
    std::unique_lock<std::mutex> job(job_, std::try_to_lock);
    if (threads_ == 1 || n == 1 || !job.owns_lock()) {
      std::exception_ptr error;
      for (int64_t i = 0; i < n; ++i) {
        try {
          fn(i);
        } catch (...) {
          if (!error) error = std::current_exception();
        }
      }
      if (error) std::rethrow_exception(error);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      fn_ = &fn;
      for (int b = 0; b < threads_; ++b) {
        blocks_[b].next.store(n * b / threads_, std::memory_order_relaxed);
        blocks_[b].end = n * (b + 1) / threads_;
      }
      finished_.store(0);
      error_ = nullptr;
      generation_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    runItems(fn, 0);
    // Items still running elsewhere: at most one per worker.
    spinUntil([&] { return finished_.load(std::memory_order_acquire) == n; });
    {
      std::lock_guard<std::mutex> lock(mu_);
      fn_ = nullptr;  // workers that wake from now on find no job
    }
    // Workers that joined this job may still be about to look for an item; the blocks are reset by
    // the next call, so wait until they have left.
    spinUntil([&] { return busy_.load(std::memory_order_acquire) == 0; });
    std::exception_ptr error;
    {
      std::lock_guard<std::mutex> lock(mu_);
      std::swap(error, error_);
    }
    if (error) std::rethrow_exception(error);
  }

 private:
  static void relax() {
#if defined(__x86_64__) || defined(__i386__)
    _mm_pause();
#else
    std::this_thread::yield();
#endif
  }
  template <class Pred>
  static void spinUntil(Pred done) {
    for (int spins = 0; !done(); ++spins) {
      if (spins < 4096) relax();
      else std::this_thread::yield();
    }
  }
  // Thread `self` runs the items of its block, then of the blocks after it. Each thread counts the
  // items it ran and adds them once, when it finds none left.
  void runItems(const std::function<void(int64_t)>& fn, int self) {
    int64_t done = 0;
    for (int k = 0; k < threads_; ++k) {
      Block& b = blocks_[(self + k) % threads_];
      for (;;) {
        const int64_t i = b.next.fetch_add(1, std::memory_order_relaxed);
        if (i >= b.end) break;
        try {
          fn(i);
        } catch (...) {
          std::lock_guard<std::mutex> lock(mu_);
          if (!error_) error_ = std::current_exception();
        }
        ++done;
      }
    }
    if (done > 0) finished_.fetch_add(done, std::memory_order_release);
  }
  // Waits for a generation other than `seen` (or stop): spins first, then sleeps.
  void awaitJob(uint64_t seen) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(kSpinMicros);
    for (int spins = 0;; ++spins) {
      if (generation_.load(std::memory_order_acquire) != seen || stop_.load()) return;
      if ((spins & 255) == 255 && std::chrono::steady_clock::now() > until) break;
      relax();
    }
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return stop_.load() || generation_.load() != seen; });
  }
  void workerLoop(int self) {
    uint64_t seen = 0;
    for (;;) {
      awaitJob(seen);
      if (stop_.load()) return;
      const std::function<void(int64_t)>* fn;
      {
        std::lock_guard<std::mutex> lock(mu_);
        seen = generation_.load();
        if (!fn_) continue;  // that job is already done
        fn = fn_;
        busy_.fetch_add(1);
      }
      runItems(*fn, self);
      busy_.fetch_sub(1, std::memory_order_release);
    }
  }

  void stopWorkers() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_.store(true);
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
  }

  int threads_;
  std::vector<std::thread> workers_;
  std::mutex job_;  // held by the caller whose job the workers run
  std::mutex mu_;
  std::condition_variable cv_;
  const std::function<void(int64_t)>* fn_ = nullptr;
  std::exception_ptr error_;  // the job's first exception from an item (under mu_)
  // One thread's share of a job's items: [next, end) left to hand out. On a line of its own, since
  // its thread takes every item of it from the counter.
  struct alignas(64) Block {
    std::atomic<int64_t> next{0};
    int64_t end = 0;
  };
  std::unique_ptr<Block[]> blocks_;
  // On lines of their own: polled by spinning threads.
  alignas(64) std::atomic<int64_t> finished_{0};
  alignas(64) std::atomic<int> busy_{0};
  alignas(64) std::atomic<uint64_t> generation_{0};
  std::atomic<bool> stop_{false};
};

}  // namespace lukv
