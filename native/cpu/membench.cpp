#include "membench.h"

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "../core/threadpool.h"

namespace lukv {
namespace cpu {

std::vector<double> readBandwidth(size_t bytes, int threads, int repeats) {
  const size_t words = bytes / 8;
  uint64_t* buf = static_cast<uint64_t*>(std::aligned_alloc(64, (words * 8 + 63) / 64 * 64));
  if (!buf) return {};
  for (size_t i = 0; i < words; ++i) buf[i] = i * 0x9e3779b97f4a7c15ull;
  ThreadPool pool(threads);
  const int64_t parts = (int64_t)threads * 4;
  std::vector<uint64_t> sums(parts);
  std::vector<double> seconds;
  for (int r = 0; r < repeats; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    pool.parallelFor(parts, [&](int64_t p) {
      size_t begin = words * p / parts, end = words * (p + 1) / parts;
      // Four independent lanes so the loop is bound by memory, not by one add chain.
      uint64_t a = 0, b = 0, c = 0, d = 0;
      size_t i = begin;
      for (; i + 4 <= end; i += 4) {
        a += buf[i];
        b ^= buf[i + 1];
        c += buf[i + 2];
        d ^= buf[i + 3];
      }
      for (; i < end; ++i) a += buf[i];
      sums[p] = a + b + c + d;
    });
    auto t1 = std::chrono::steady_clock::now();
    seconds.push_back(std::chrono::duration<double>(t1 - t0).count());
  }
  volatile uint64_t sink = 0;
  for (uint64_t s : sums) sink = sink + s;
  std::free(buf);
  return seconds;
}

}  // namespace cpu
}  // namespace lukv
