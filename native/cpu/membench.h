// A plain multi-threaded read of a buffer: the machine's practical read bandwidth, the baseline
// that attention benchmarks compare against.
#pragma once
#include <cstddef>
#include <vector>

namespace lukv {
namespace cpu {

// Reads `bytes` bytes `repeats` times with `threads` threads; returns seconds per repeat (the
// faster of a read with and one without software prefetch).
std::vector<double> readBandwidth(size_t bytes, int threads, int repeats);

}  // namespace cpu
}  // namespace lukv
