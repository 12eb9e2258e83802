#include "cuda_emu.h"

#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define LUKV_EMU_ASAN 1
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

dim3 threadIdx, blockIdx, blockDim, gridDim;

// Saves the callee-saved registers on the current stack, stores the stack pointer in *from,
// switches to the stack `to` and restores its registers (x86-64 System V). swapcontext would
// also save the signal mask with a system call on every switch, far too slow here.
extern "C" void lukv_emu_switch(void** from, void* to);
asm(R"(
.text
.globl lukv_emu_switch
.type lukv_emu_switch,@function
lukv_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size lukv_emu_switch, .-lukv_emu_switch
.section .note.GNU-stack,"",@progbits
.text
)");

namespace emu {

namespace {

constexpr size_t kStackBytes = 512 * 1024;

struct Fiber {
  void* sp = nullptr;
  char* stack = nullptr;
  bool done = false;
};

struct Warp {
  int arrived = 0;
  uint64_t gen = 0;
  uint64_t vals[2][32];
  int lines[2][32];
};

// Stacks are kept for the next launch and freed at exit.
struct Fibers : std::vector<Fiber> {
  ~Fibers() {
    for (Fiber& f : *this) std::free(f.stack);
  }
};
Fibers fibers;
std::vector<Warp> warps;
void* schedulerSp = nullptr;
int current = -1;
int threads = 0, doneCount = 0;
uint64_t progress = 0;
int barrierArrived = 0, barrierLine = -1;
uint64_t barrierGen = 0;
const std::function<void()>* body = nullptr;
std::string failure;
Stats counters;

#ifdef LUKV_EMU_ASAN
const void* mainBottom = nullptr;
size_t mainSize = 0;
#endif

void setThreadIdx(int t) {
  threadIdx.x = (unsigned)t % blockDim.x;
  threadIdx.y = (unsigned)t / blockDim.x % blockDim.y;
  threadIdx.z = (unsigned)t / (blockDim.x * blockDim.y);
}

// From the running fiber back to the scheduler.
void yieldFiber(bool dying = false) {
  Fiber& f = fibers[current];
  counters.switches++;
#ifdef LUKV_EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(dying ? nullptr : &fake, mainBottom, mainSize);
  lukv_emu_switch(&f.sp, schedulerSp);
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
  (void)dying;
  lukv_emu_switch(&f.sp, schedulerSp);
#endif
}

[[noreturn]] void fail(const std::string& what) {
  if (failure.empty()) failure = what;
  // Park this fiber for good; the scheduler sees the failure and stops the launch.
  for (;;) yieldFiber();
}

void trampoline() {
#ifdef LUKV_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &mainBottom, &mainSize);
#endif
  try {
    (*body)();
  } catch (const std::exception& e) {
    if (failure.empty()) failure = std::string("exception in a kernel thread: ") + e.what();
  }
  fibers[current].done = true;
  doneCount++;
  progress++;
  for (;;) yieldFiber(true);
}

std::string where() {
  return " (block " + std::to_string(blockIdx.x) + "," + std::to_string(blockIdx.y) + "," + std::to_string(blockIdx.z) +
         ", thread " + std::to_string(threadIdx.x) + ")";
}

}  // namespace

Stats& stats() { return counters; }

void syncthreads(int line) {
  if (doneCount > 0) fail("__syncthreads at line " + std::to_string(line) + " after some threads of the block returned" + where());
  const uint64_t my = barrierGen;
  if (barrierArrived == 0) barrierLine = line;
  else if (barrierLine != line)
    fail("threads of one block wait at different __syncthreads (lines " + std::to_string(barrierLine) + " and " +
         std::to_string(line) + ")" + where());
  barrierArrived++;
  progress++;
  if (barrierArrived == threads) {
    barrierArrived = 0;
    barrierGen++;
    return;
  }
  while (barrierGen == my) yieldFiber();
}

uint64_t shuffle(unsigned mask, uint64_t value, int mode, int arg, int line) {
  if (mask != 0xffffffffu) fail("only full-warp shuffles are emulated" + where());
  const int t = current;
  const int lane = t % 32;
  Warp& w = warps[t / 32];
  const uint64_t my = w.gen;
  const int slot = (int)(my & 1);
  w.vals[slot][lane] = value;
  w.lines[slot][lane] = line;
  w.arrived++;
  progress++;
  if (w.arrived == 32) {
    for (int i = 1; i < 32; ++i)
      if (w.lines[slot][i] != w.lines[slot][0])
        fail("divergent shuffles in one warp (lines " + std::to_string(w.lines[slot][0]) + " and " +
             std::to_string(w.lines[slot][i]) + ")" + where());
    w.arrived = 0;
    w.gen++;
  } else {
    while (w.gen == my) yieldFiber();
  }
  const int src = mode == 0 ? (lane ^ arg) : arg;
  if (src < 0 || src >= 32) return value;  // out-of-range lanes read their own value, as on hardware
  return w.vals[slot][src];
}

void launch(dim3 grid, dim3 block, const std::function<void()>& fn) {
  const int n = (int)(block.x * block.y * block.z);
  if (n <= 0 || n > 1024 || n % 32 != 0) throw std::runtime_error("emulated blocks need a multiple of 32 threads, at most 1024");
  counters.launches++;
  gridDim = grid;
  blockDim = block;
  body = &fn;
  if ((int)fibers.size() < n) fibers.resize(n);
  warps.assign(n / 32, Warp{});
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        blockIdx = dim3(bx, by, bz);
        counters.blocks++;
        threads = n;
        doneCount = 0;
        barrierArrived = 0;
        failure.clear();
        for (auto& w : warps) w.arrived = 0;
        for (int t = 0; t < n; ++t) {
          Fiber& f = fibers[t];
          if (!f.stack) f.stack = static_cast<char*>(std::malloc(kStackBytes));
          if (!f.stack) throw std::runtime_error("emulator: out of memory for fiber stacks");
#ifdef LUKV_EMU_ASAN
          __asan_unpoison_memory_region(f.stack, kStackBytes);
#endif
          uintptr_t top = ((uintptr_t)f.stack + kStackBytes) & ~(uintptr_t)15;
          void** sp = reinterpret_cast<void**>(top);
          *--sp = nullptr;                                   // fake return address of trampoline
          *--sp = reinterpret_cast<void*>(&trampoline);      // where the first switch returns to
          for (int i = 0; i < 6; ++i) *--sp = nullptr;       // rbp rbx r12 r13 r14 r15
          f.sp = sp;
          f.done = false;
          counters.threads++;
        }
        while (doneCount < n) {
          const uint64_t before = progress;
          for (int t = 0; t < n && failure.empty(); ++t) {
            if (fibers[t].done) continue;
            current = t;
            setThreadIdx(t);
            counters.switches++;
#ifdef LUKV_EMU_ASAN
            void* fake = nullptr;
            __sanitizer_start_switch_fiber(&fake, fibers[t].stack, kStackBytes);
            lukv_emu_switch(&schedulerSp, fibers[t].sp);
            __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
            lukv_emu_switch(&schedulerSp, fibers[t].sp);
#endif
          }
          current = -1;
          if (!failure.empty()) throw std::runtime_error("emulated kernel: " + failure);
          if (progress == before && doneCount < n)
            throw std::runtime_error("emulated kernel deadlocked in block (" + std::to_string(bx) + "," +
                                     std::to_string(by) + "," + std::to_string(bz) + "): " +
                                     std::to_string(n - doneCount) + " threads wait at a barrier or shuffle that " +
                                     std::to_string(doneCount) + " finished threads will never reach");
        }
      }
}

}  // namespace emu
