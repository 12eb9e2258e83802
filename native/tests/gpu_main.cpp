// lukv_gpu_tests: every CUDA kernel against its CPU twin on the same seeded random inputs.
//   lukv_gpu_tests [--seed N] [--only GROUP] [--small] [--verbose]
// --small uses the emulator's problem sizes (for compute-sanitizer runs).
// Without a usable CUDA device it fails, unless LUKV_ALLOW_NO_GPU=1, then it prints
// "no CUDA device: skipped" and exits 0 (for machines that build but cannot run the backend).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include <cuda_runtime.h>

#include "../cuda/probe.h"
#include "harness.h"

namespace lukv {
namespace test {
std::unique_ptr<Backend> makeGpuBackend();
}
}  // namespace lukv

int main(int argc, char** argv) {
  lukv::test::Options o;
  o.full = true;
  o.seed = (uint64_t)std::chrono::steady_clock::now().time_since_epoch().count() % 1000000007ull;
  if (const char* s = std::getenv("LUKV_TEST_SEED")) o.seed = std::strtoull(s, nullptr, 10);
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--seed" && i + 1 < argc) o.seed = std::strtoull(argv[++i], nullptr, 10);
    else if (a == "--only" && i + 1 < argc) o.only = argv[++i];
    else if (a == "--small") o.full = false;
    else if (a == "--verbose") o.verbose = true;
    else {
      std::fprintf(stderr, "usage: %s [--seed N] [--only GROUP] [--small] [--verbose]\n", argv[0]);
      return 2;
    }
  }
  std::printf("lukv GPU tests, seed %llu (rerun with --seed %llu)\n", (unsigned long long)o.seed, (unsigned long long)o.seed);
  int failed = lukv::test::runPlanTests(o.seed);

  const lukv::cuda::ProbeResult pr = lukv::cuda::probe();
  if (!pr.usable) {
    const char* allow = std::getenv("LUKV_ALLOW_NO_GPU");
    const bool ok = allow != nullptr && std::strcmp(allow, "1") == 0;
    std::printf("no CUDA device: skipped (%s)%s\n", pr.error.c_str(),
                ok ? "" : "; set LUKV_ALLOW_NO_GPU=1 to accept skipping on a machine without a GPU");
    return ok && failed == 0 ? 0 : 1;
  }
  int dev = 0;
  cudaDeviceProp prop;
  if (cudaGetDevice(&dev) == cudaSuccess && cudaGetDeviceProperties(&prop, dev) == cudaSuccess)
    std::printf("device %d: %s, compute capability %d.%d, %d SMs, %.1f GiB\n", dev, prop.name, prop.major, prop.minor,
                prop.multiProcessorCount, prop.totalGlobalMem / 1073741824.0);
  try {
    auto be = lukv::test::makeGpuBackend();
    failed += lukv::test::runKernelTests(*be, o);
  } catch (const std::exception& e) {
    std::printf("FAILED: %s\n", e.what());
    return 1;
  }
  return failed == 0 ? 0 : 1;
}
