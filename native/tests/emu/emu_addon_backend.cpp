// The CUDA backend of the emulated test build of the addon (LUKV_CUDA_EMULATE=ON): the kernels of
// native/cuda compiled with g++ and run in the CPU emulator, "device" memory in host memory. It
// lets the jest suite run `device: "cuda"` end to end on machines without a GPU.
#include <cstdlib>
#include <mutex>
#include <new>
#include <string>

#include "../../cuda/attention.cuh"
#include "../../cuda/backend.h"
#include "../../cuda/cache.cuh"
#include "../../cuda/compress.cuh"
#include "../../cuda/scores.cuh"
#include "emu_runtime.h"

namespace lukv {

namespace {

// The emulator keeps its threads in global state: one emulated launch at a time per process.
std::mutex& emulatorLock() {
  static std::mutex mu;
  return mu;
}

// The failure asked for by setEmulatedFailure, parsed there, and the calls of its operation counted since.
struct Failure {
  std::mutex mu;
  std::string what;  // as asked, for the message
  std::string op;    // empty: none
  long nth = 1;
  bool oom = false;
  long calls = 0;
};
Failure& failure() {
  static Failure f;
  return f;
}

void failIfAsked(const char* op, ErrorCode code) {
  Failure& f = failure();
  std::lock_guard<std::mutex> lock(f.mu);
  if (f.op != op) return;
  if (++f.calls >= f.nth) throw Error(f.oom ? ErrorCode::OutOfMemory : code, std::string("the emulated device failed ") + op + " (" + f.what + ")");
}

struct EmuDevice {
  static const char* name() { return "cuda-emulator"; }
  void* alloc(size_t bytes) {
    failIfAsked("alloc", ErrorCode::OutOfMemory);
    // Unused bytes are NaN as floats, as on the GPU tests: a read of one shows in the results.
    void* p = std::malloc(bytes ? bytes : 16);
    if (!p) throw Error(ErrorCode::OutOfMemory, "the emulated device could not allocate " + std::to_string(bytes) + " bytes");
    std::memset(p, 0xFF, bytes);
    return p;
  }
  void free(void* p) { std::free(p); }
  void toDevice(void* dst, const void* src, size_t bytes) { std::memcpy(dst, src, bytes); }
  void toHost(void* dst, const void* src, size_t bytes) { std::memcpy(dst, src, bytes); }
  // An emulated device of LUKV_EMU_DEVICE_BYTES (default 1 GiB), so the free-memory check runs too.
  bool memInfo(size_t* freeBytes, size_t* totalBytes) {
    size_t total = size_t(1) << 30;
    if (const char* e = std::getenv("LUKV_EMU_DEVICE_BYTES")) total = (size_t)std::strtoull(e, nullptr, 10);
    *freeBytes = *totalBytes = total;
    return true;
  }
  void append(const cuda::AppendBatch& b) {
    failIfAsked("append", ErrorCode::Internal);
    run([&](test::EmuRuntime& rt) { cuda::runAppend(rt, b); });
  }
  void copyPages(const cuda::PoolView& pool, const std::vector<int32_t>& pairs) {
    failIfAsked("copyPages", ErrorCode::Internal);
    run([&](test::EmuRuntime& rt) { cuda::runCopyPages(rt, pool, pairs); });
  }
  void attend(const cuda::AttendBatch& b) {
    failIfAsked("attend", ErrorCode::Internal);
    // Small chunks, so that the split-K reduce runs on the small problems of the tests.
    cuda::AttendOptions o;
    o.minChunk = 64;
    run([&](test::EmuRuntime& rt) {
      cuda::runAttend(rt, b, o);
      if (!rt.countersClear()) throw Error(ErrorCode::Internal, "attention left its split counters non-zero");
    });
  }
  void scores(const cuda::ScoreBatch& b) {
    failIfAsked("scores", ErrorCode::Internal);
    run([&](test::EmuRuntime& rt) { cuda::runScores(rt, b); });
  }
  void compact(const cuda::PoolView& pool, const std::vector<cuda::CompactHeadInput>& heads) {
    failIfAsked("compact", ErrorCode::Internal);
    run([&](test::EmuRuntime& rt) { cuda::runCompact(rt, pool, heads); });
  }

 private:
  template <class F>
  void run(F&& fn) {
    std::lock_guard<std::mutex> lock(emulatorLock());
    test::EmuRuntime rt(4, 2);
    fn(rt);
  }
};

}  // namespace

void setEmulatedFailure(const std::string& what) {
  // "op", "op:n", either with "/oom" (the failure as out of device memory), or "" for none. A
  // misspelt request would make nothing fail, and the test asking for it pass for the wrong reason.
  static const char* const ops[] = {"alloc", "copyPages", "append", "attend", "scores", "compact"};
  const size_t slash = what.find('/');
  const std::string spec = what.substr(0, slash);
  const size_t colon = spec.find(':');
  const std::string op = spec.substr(0, colon), count = colon == std::string::npos ? "1" : spec.substr(colon + 1);
  bool known = what.empty();
  for (const char* o : ops) known = known || op == o;
  if (!known || count.empty() || count.find_first_not_of("0123456789") != std::string::npos ||
      (slash != std::string::npos && what.substr(slash) != "/oom"))
    throw Error(ErrorCode::InvalidArgument, "emulatedFailure: expected \"op\", \"op:n\" or either with \"/oom\" (op: alloc, copyPages, append, attend, scores, compact), or \"\", but received \"" + what + "\"");
  Failure& f = failure();
  std::lock_guard<std::mutex> lock(f.mu);
  f.what = what;
  f.op = what.empty() ? "" : op;
  f.nth = std::strtol(count.c_str(), nullptr, 10);
  f.oom = slash != std::string::npos;
  f.calls = 0;
}

bool cudaBackendUsable(std::string* why) {
  if (why) why->clear();
  return true;
}

std::unique_ptr<Backend> makeCudaBackend(const BackendConfig& config) {
  return std::unique_ptr<Backend>(new cuda::CudaBackend<EmuDevice>(config, EmuDevice()));
}

}  // namespace lukv
