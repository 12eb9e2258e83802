#include "membench.h"

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>

#include "../core/pool.h"
#include "../core/threadpool.h"
#include "kernels.h"

namespace lukv {
namespace cpu {

namespace {

// The buffer of the last call, kept for the next call of the same size: benchmarks alternate
// plain-read rounds with the code they measure, and faulting in a fresh buffer every round took
// longer than the reads themselves (30-50 ms for 128 MiB on the virtual machine measured). The
// threads are not kept: idle pool workers spin for a while and would compete with the measured code.
struct Baseline {
  size_t floats = 0;
  float* buf = nullptr;
  ~Baseline() { freeStreamed(buf, floats * 4); }
};
std::mutex gMu;
std::unique_ptr<Baseline> gLast;

}  // namespace

std::vector<double> readBandwidth(size_t bytes, int threads, int repeats) {
  std::lock_guard<std::mutex> lock(gMu);
  const size_t floats = bytes / 4;
  if (!gLast || gLast->floats != floats) {
    gLast.reset();
    auto b = std::make_unique<Baseline>();
    // Allocated like the page pool (huge pages where the kernel grants them), so the baseline
    // reads memory the same way attention does; ordinary floats (no subnormals, whose additions
    // can take microcode assists).
    b->buf = static_cast<float*>(allocateStreamed(floats * 4));
    if (!b->buf) return {};
    for (size_t i = 0; i < floats; ++i) b->buf[i] = (float)(i & 1023) * 0.001f;
    b->floats = floats;
    gLast = std::move(b);
  }
  const float* buf = gLast->buf;
  // The widest loads this processor runs (the kernels' own table): a baseline slower than what the
  // hardware can read would flatter every ratio measured against it.
  const Kernels* k = selectKernels("auto");
  ThreadPool pool(threads);
  const int64_t parts = (int64_t)threads * 4;
  std::vector<float> sums(parts);
  std::vector<double> seconds;
  // Parts start on 64-byte boundaries (16 floats).
  const auto bound = [&](int64_t p) { return (size_t)((floats / 16) * p / parts) * 16 + (p == parts ? floats % 16 : 0); };
  // Each repeat reads the buffer twice, with and without software prefetch (2 KiB ahead), and
  // keeps the faster: on the Intel Xeon measured the hardware prefetchers alone read at about 60%
  // of what the same loop with prefetch reads.
  auto readOnce = [&](bool prefetch) {
    auto t0 = std::chrono::steady_clock::now();
    pool.parallelFor(parts, [&](int64_t p) {
      const size_t begin = bound(p), end = bound(p + 1);
      sums[p] += k->readSum(buf + begin, end - begin, prefetch);
    });
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  // Untimed reads for 5 ms first, as the benchmarks give the code they measure: a new pool's
  // workers take a millisecond or more to join, and a short read would run on one thread.
  const auto warm = std::chrono::steady_clock::now();
  do readOnce(false);
  while (std::chrono::steady_clock::now() - warm < std::chrono::milliseconds(5));
  for (int r = 0; r < repeats; ++r) {
    const double plain = readOnce(false), prefetched = readOnce(true);
    seconds.push_back(plain < prefetched ? plain : prefetched);
  }
  volatile float sink = 0;
  for (float s : sums) sink = sink + s;
  return seconds;
}

}  // namespace cpu
}  // namespace lukv
