#include "membench.h"

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>

#include "../core/pool.h"
#include "../core/threadpool.h"

namespace lukv {
namespace cpu {

namespace {

// The buffer of the last call, kept for the next call of the same size: benchmarks alternate
// plain-read rounds with the code they measure, and faulting in a fresh buffer every round took
// longer than the reads themselves (30-50 ms for 128 MiB on the virtual machine measured). The
// threads are not kept: idle pool workers spin for a while and would compete with the measured code.
struct Baseline {
  size_t words = 0;
  uint64_t* buf = nullptr;
  ~Baseline() { freeStreamed(buf, words * 8); }
};
std::mutex gMu;
std::unique_ptr<Baseline> gLast;

}  // namespace

std::vector<double> readBandwidth(size_t bytes, int threads, int repeats) {
  std::lock_guard<std::mutex> lock(gMu);
  const size_t words = bytes / 8;
  if (!gLast || gLast->words != words) {
    gLast.reset();
    auto b = std::make_unique<Baseline>();
    // Allocated like the page pool (huge pages where the kernel grants them), so the baseline
    // reads memory the same way attention does.
    b->buf = static_cast<uint64_t*>(allocateStreamed(words * 8));
    if (!b->buf) return {};
    for (size_t i = 0; i < words; ++i) b->buf[i] = i * 0x9e3779b97f4a7c15ull;
    b->words = words;
    gLast = std::move(b);
  }
  uint64_t* buf = gLast->buf;
  ThreadPool pool(threads);
  const int64_t parts = (int64_t)threads * 4;
  std::vector<uint64_t> sums(parts);
  std::vector<double> seconds;
  // Each repeat reads the buffer twice, with and without software prefetch (2 KiB ahead), and
  // keeps the faster: on the Intel Xeon measured the hardware prefetchers alone read at about 60%
  // of what the same loop with prefetch reads, and a baseline below what the hardware can do
  // would flatter every ratio measured against it.
  auto readOnce = [&](bool prefetch) {
    auto t0 = std::chrono::steady_clock::now();
    pool.parallelFor(parts, [&](int64_t p) {
      size_t begin = words * p / parts, end = words * (p + 1) / parts;
      // Four independent lanes so the loop is bound by memory, not by one add chain.
      uint64_t a = 0, b = 0, c = 0, d = 0;
      size_t i = begin;
      for (; i + 8 <= end; i += 8) {
        if (prefetch) {
#if defined(__x86_64__) || defined(__i386__)
          __asm__ volatile("prefetcht0 %0" : : "m"(*(const volatile uint8_t*)(buf + i + 256)));
#else
          __builtin_prefetch(buf + i + 256, 0, 3);
#endif
        }
        a += buf[i];
        b ^= buf[i + 1];
        c += buf[i + 2];
        d ^= buf[i + 3];
        a += buf[i + 4];
        b ^= buf[i + 5];
        c += buf[i + 6];
        d ^= buf[i + 7];
      }
      for (; i < end; ++i) a += buf[i];
      sums[p] += a + b + c + d;
    });
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  for (int r = 0; r < repeats; ++r) {
    const double plain = readOnce(false), prefetched = readOnce(true);
    seconds.push_back(plain < prefetched ? plain : prefetched);
  }
  volatile uint64_t sink = 0;
  for (uint64_t s : sums) sink = sink + s;
  return seconds;
}

}  // namespace cpu
}  // namespace lukv
