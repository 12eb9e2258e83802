#!/usr/bin/env bash
# The CUDA backend's whole check on a GPU machine, in one run: build the standalone test project
# (native/tests) for this GPU's architecture only, compare every CUDA kernel with its CPU twin
# (ctest), build the real CUDA addon and run the device part of the jest suite on the GPU
# (__tests__/device.test.ts: the public API with device "cuda" against the CPU backend), run the
# benchmark (bench/gpu), then compute-sanitizer memcheck and racecheck on small problems, and print
# one summary table last. Needs cmake, g++ and nvcc; Node.js for the addon steps (on PATH, or
# LUKV_NODE=/path/to/node carried to the machine) with node_modules installed; no network.
#
# Expected on one H100/H200 machine (16 cores): configure ~10 s, build ~1.5 min, tests ~1 min,
# addon build ~1 min, device suite ~30 s, benchmark ~1 min, compute-sanitizer ~2 min: 7-8
# minutes. Steps run in order of value (the sanitizers last) under one time budget, so the script
# ends in time whatever happens.
#
# Usage: scripts/gpu-check.sh [--build-only] [--no-sanitizer]
#   LUKV_TEST_SEED=N         reuse the inputs of an earlier run (the seed is printed)
#   LUKV_CHECK_SECONDS=470   the whole run's budget; a step that would not fit is skipped
# Logs, the benchmark JSON and the kernels' SASS go to $OUT when it is set, else to
# build/gpu-check/results.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD=${LUKV_GPU_BUILD:-$ROOT/build/gpu-check}
RESULTS=${OUT:-$BUILD/results}
mkdir -p "$RESULTS"
exec > >(tee "$RESULTS/gpu-check.log") 2>&1

BUILD_ONLY=0
SANITIZER=1
for a in "$@"; do
  case "$a" in
    --build-only) BUILD_ONLY=1 ;;
    --no-sanitizer) SANITIZER=0 ;;
    *) echo "usage: $0 [--build-only] [--no-sanitizer]"; exit 2 ;;
  esac
done

START=$(date +%s)
BUDGET=${LUKV_CHECK_SECONDS:-470}
step() { echo; echo "==== [$(( $(date +%s) - START )) s] $*"; }
# The time a step may take: what it asks for, or what is left of the budget (keeping 15 s for
# the summary).
limit() {
  local want=$1 left=$(( BUDGET - 15 - ($(date +%s) - START) ))
  [ "$left" -lt "$want" ] && want=$left
  echo $(( want > 1 ? want : 1 ))
}

export PATH="$PATH:/usr/local/cuda/bin"
SEED=${LUKV_TEST_SEED:-$(( $(date +%s) % 1000000007 ))}
export LUKV_TEST_SEED=$SEED
export LUKV_SEED=$SEED
NODE=${LUKV_NODE:-$(command -v node || true)}
# Rows of the summary table: step, result, seconds.
SUMMARY=()
T0=$(date +%s)
mark() { local now; now=$(date +%s); SUMMARY+=("$1|$2|$(( now - T0 ))"); T0=$now; }
# Kernel failures are reported by the kernel that failed, not by the next call.
export LUKV_CUDA_SYNC=1

step "machine"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total,clocks.sm,clocks.mem --format=csv || true
fi
nvcc --version | tail -2 || { echo "nvcc not found"; exit 2; }
cmake --version | head -1
echo "cores: $(nproc); seed: $SEED"

HAVE_GPU=0
if command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q "^GPU"; then HAVE_GPU=1; fi
ARCH=${LUKV_CUDA_ARCH:-}
if [ -z "$ARCH" ] && [ "$HAVE_GPU" = 1 ]; then
  ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '. ')
  [ -z "$ARCH" ] && ARCH=native  # CMake asks the GPU itself
fi
if [ "$HAVE_GPU" = 0 ]; then
  ARCH=${ARCH:-90}
  echo "no GPU found: building for sm_$ARCH only"
fi

step "configure (sm_$ARCH, -O2)"
GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)
cmake -S native/tests -B "$BUILD" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="$ARCH" \
  -DLUKV_PTXAS_VERBOSE=ON -DLUKV_EMU_SANITIZE=OFF >"$RESULTS/build.log" 2>&1 || {
  tail -30 "$RESULTS/build.log"; echo "configure FAILED"; exit 1; }

T0=$(date +%s)
step "build lukv_gpu_tests and lukv_gpu_bench (expected 1-2 min)"
if ! timeout "$(limit 300)" cmake --build "$BUILD" -j"$(nproc)" --target lukv_gpu_tests lukv_gpu_bench >>"$RESULTS/build.log" 2>&1; then
  grep -E "error|Error" "$RESULTS/build.log" | head -30
  echo "build FAILED (see build.log)"
  exit 1
fi
mark "build native tests (sm_$ARCH)" built
# Registers, shared memory and spills of the attention kernels (from ptxas -v).
awk '/Compiling entry function/ { name = $0; sub(/.*function ./, "", name); sub(/. for .*/, "", name) }
     /spill stores/ { spill = $0; sub(/^ +/, "", spill) }
     /Used [0-9]+ registers/ {
       if (name ~ /attendKernel/) {
         regs = $0; sub(/.*Used /, "", regs); sub(/ registers.*/, "", regs)
         n = name; gsub(/_ZN4lukv4cuda12attendKernelINS0_|EEEvNS0_10AttnParamsE/, "", n)
         print "  " n ": " regs " registers, " spill
       }
       name = "" }' "$RESULTS/build.log" | sort -u | head -40 || true
if command -v cuobjdump >/dev/null; then
  obj=$(find "$BUILD" -name 'attention.cu.o' | head -1)
  if [ -n "$obj" ] && cuobjdump -sass "$obj" 2>/dev/null | gzip >"$RESULTS/attention.sass.gz"; then
    echo "SASS of the attention kernels: attention.sass.gz; 16-byte global loads: $(zcat "$RESULTS/attention.sass.gz" | grep -c 'LDG.E.128'), other global loads: $(zcat "$RESULTS/attention.sass.gz" | grep 'LDG' | grep -vc 'LDG.E.128')"
  fi
fi
if [ "$BUILD_ONLY" = 1 ]; then echo "built (--build-only)"; exit 0; fi
if [ "$HAVE_GPU" = 0 ]; then echo "no GPU on this machine: the build is all that can be checked here"; exit 2; fi

step "tests: every CUDA kernel against its CPU twin (ctest, expected < 1 min)"
TESTS=FAILED
if (cd "$BUILD" && timeout "$(limit 180)" ctest -R gpu_vs_cpu --output-on-failure >"$RESULTS/tests.log" 2>&1); then TESTS=passed; fi
grep -E "^(lukv|device|plan|errors|append|decode|prefill|scores) |checks:|FAIL|no CUDA|Test #|tests passed" "$RESULTS/tests.log" | head -60
mark "ctest: kernels vs CPU twins" "$TESTS"

ADDON="not run"
DEVICE="not run"
if [ -z "$NODE" ] || [ ! -d node_modules/cmake-js ]; then
  ADDON="skipped (needs node and node_modules: set LUKV_NODE, run npm ci first)"
else
  step "build the CUDA addon (build/Release, sm_$ARCH; expected ~1 min)"
  if LUKV_CUDA=ON timeout "$(limit 240)" "$NODE" node_modules/cmake-js/bin/cmake-js rebuild \
      --CDCMAKE_CUDA_ARCHITECTURES="$ARCH" >"$RESULTS/addon-build.log" 2>&1; then ADDON=built; else ADDON=FAILED; tail -20 "$RESULTS/addon-build.log"; fi
  mark "build the CUDA addon" "$ADDON"
  if [ "$ADDON" = built ]; then
    step "device suite on the GPU: the public API with device \"cuda\" against the CPU (expected ~30 s)"
    if LUKV_DEVICE_BINARY=build LUKV_REQUIRE_DEVICE_SUITE=1 timeout "$(limit 180)" "$NODE" node_modules/jest/bin/jest.js \
        __tests__/device.test.ts >"$RESULTS/device-suite.log" 2>&1; then DEVICE=passed; else DEVICE=FAILED; fi
    grep -E "✕|Tests:|seed" "$RESULTS/device-suite.log" | head -30
    mark "jest device suite on the GPU" "$(grep -E '^Tests:' "$RESULTS/device-suite.log" | sed 's/^Tests: *//' || echo "$DEVICE")"
  fi
fi

step "benchmark (expected < 1 min)"
BENCH=FAILED
if timeout "$(limit 150)" "$BUILD/lukv_gpu_bench" --json "$RESULTS/gpu-bench.json" >"$RESULTS/bench.log" 2>&1; then BENCH=done; fi
mark "bench/gpu" "$BENCH"

MEMCHECK="not run"
RACECHECK="not run"
if [ "$SANITIZER" = 1 ]; then
  CS=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  if [ -x "$CS" ]; then
    sanitize() {  # tool, time limit, test arguments...
      local tool=$1 limit=$2
      shift 2
      timeout "$limit" "$CS" --tool "$tool" --print-limit 20 --error-exitcode 9 "$BUILD/lukv_gpu_tests" --small --seed "$SEED" "$@" \
        >>"$RESULTS/sanitizer.log" 2>&1
      local rc=$?
      if grep -qE "Device not supported|Unable to initialize|Target application terminated before first instrumented" "$RESULTS/sanitizer.log"; then echo "unavailable here"
      elif [ $rc = 0 ]; then echo "clean"
      elif [ $rc = 124 ]; then echo "timed out"
      else echo "FAILED (rc $rc)"; fi
    }
    step "compute-sanitizer memcheck, small problems (expected ~1 min)"
    MEMCHECK=$(sanitize memcheck "$(limit 150)")
    echo "memcheck: $MEMCHECK"
    step "compute-sanitizer racecheck (shared memory), small decode and scores (expected ~1 min)"
    if [ "$(limit 60)" -ge 30 ]; then
      RACECHECK=$(sanitize racecheck "$(limit 90)" --only decode)
      [ "$RACECHECK" = clean ] && [ "$(limit 30)" -ge 20 ] && RACECHECK=$(sanitize racecheck "$(limit 60)" --only scores)
    else
      RACECHECK="skipped (time budget)"
    fi
    echo "racecheck: $RACECHECK"
    mark "compute-sanitizer" "memcheck $MEMCHECK; racecheck $RACECHECK"
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY|Invalid|Race reported" "$RESULTS/sanitizer.log" | sort | uniq -c | head -20
  else
    MEMCHECK="compute-sanitizer not found"
    RACECHECK="$MEMCHECK"
  fi
fi

step "benchmark"
if [ "$BENCH" = done ]; then
  sed -n '/^lukv CUDA benchmark/,$p' "$RESULTS/bench.log"
else
  tail -20 "$RESULTS/bench.log"
fi

step "summary (total $(( $(date +%s) - START )) s, seed $SEED, files in $RESULTS)"
grep -E "^  FAILED" "$RESULTS/tests.log" | head -15
printf '%-34s | %-60s | %s\n' "step" "result" "seconds"
printf '%-34s-+-%-60s-+-%s\n' "$(printf '%.0s-' {1..34})" "$(printf '%.0s-' {1..60})" "-------"
for row in "${SUMMARY[@]}"; do
  IFS='|' read -r name result secs <<<"$row"
  printf '%-34s | %-60s | %s\n' "$name" "$result" "$secs"
done
ok=1
[ "$TESTS" = passed ] && [ "$BENCH" = done ] || ok=0
case "$ADDON$DEVICE" in *FAILED*) ok=0 ;; esac
case "$MEMCHECK$RACECHECK" in *FAILED*) ok=0 ;; esac
[ "$ok" = 1 ] && exit 0
exit 1
