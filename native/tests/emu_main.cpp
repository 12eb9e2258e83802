// lukv_emu_tests: the CUDA kernels run in the CPU emulator against their CPU twins, plus the
// planner tests. Needs no GPU and no nvcc.
//   lukv_emu_tests [--seed N] [--only GROUP] [--verbose] [--plan-only]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "emu/cuda_emu.h"
#include "harness.h"

namespace lukv {
namespace test {
std::unique_ptr<Backend> makeEmuBackend();
}
}  // namespace lukv

int main(int argc, char** argv) {
  lukv::test::Options o;
  o.full = false;
  o.seed = (uint64_t)std::chrono::steady_clock::now().time_since_epoch().count() % 1000000007ull;
  if (const char* s = std::getenv("LUKV_TEST_SEED")) o.seed = std::strtoull(s, nullptr, 10);
  bool planOnly = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--seed" && i + 1 < argc) o.seed = std::strtoull(argv[++i], nullptr, 10);
    else if (a == "--only" && i + 1 < argc) o.only = argv[++i];
    else if (a == "--verbose") o.verbose = true;
    else if (a == "--plan-only") planOnly = true;
    else {
      std::fprintf(stderr, "usage: %s [--seed N] [--only GROUP] [--verbose] [--plan-only]\n", argv[0]);
      return 2;
    }
  }
  std::printf("lukv emulator tests, seed %llu (rerun with --seed %llu)\n", (unsigned long long)o.seed,
              (unsigned long long)o.seed);
  int failed = lukv::test::runPlanTests(o.seed);
  if (!planOnly) {
    auto be = lukv::test::makeEmuBackend();
    failed += lukv::test::runKernelTests(*be, o);
    const auto& st = emu::stats();
    std::printf("emulator: %llu launches, %llu blocks, %llu fiber switches\n", (unsigned long long)st.launches,
                (unsigned long long)st.blocks, (unsigned long long)st.switches);
  }
  return failed == 0 ? 0 : 1;
}
