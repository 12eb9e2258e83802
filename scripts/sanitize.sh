#!/usr/bin/env bash
# Builds the addon with AddressSanitizer and UndefinedBehaviorSanitizer and runs the jest suite
# against it. The checkout is staged in build/sanitize/tree (its own build/Release, dist and a link
# to node_modules), so the normal build is left alone. Node.js itself is not instrumented: the
# ASan runtime is preloaded, leak checking is off (V8 keeps memory to the end), and any ASan or
# UBSan report aborts the test process, which fails the suite.
#
# Needs: g++ with libasan and libubsan, cmake, and `npm ci` done here.
# Usage: scripts/sanitize.sh [jest arguments]   e.g. scripts/sanitize.sh __tests__/numbers.test.ts
# Skipped: the packaging test (npm pack and a fresh install, which builds without sanitizers), and
# the memory and soak tests (their RSS bounds mean nothing under ASan's shadow memory and quarantine).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=$ROOT/build/sanitize
TREE=$WORK/tree
mkdir -p "$WORK"
rm -rf "$TREE"
mkdir -p "$TREE"
git ls-files -co --exclude-standard | grep -v '^node_modules/' | tar -cf - -T - | tar -xf - -C "$TREE"
ln -s "$ROOT/node_modules" "$TREE/node_modules"

FLAGS="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g"
echo "== building the addon with $FLAGS"
(cd "$TREE" && LUKV_CUDA=OFF npx cmake-js compile --CDCMAKE_CXX_FLAGS="$FLAGS" \
  --CDCMAKE_SHARED_LINKER_FLAGS="-fsanitize=address,undefined" > "$WORK/build.log" 2>&1) ||
  { tail -30 "$WORK/build.log"; exit 1; }
(cd "$TREE" && npx tsc -p tsconfig.build.json)

ASAN_LIB=$(g++ -print-file-name=libasan.so)
UBSAN_LIB=$(g++ -print-file-name=libubsan.so)
echo "== jest with $ASAN_LIB preloaded"
cd "$TREE"
export LD_PRELOAD="$ASAN_LIB:$UBSAN_LIB"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:allocator_may_return_null=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
# Sanitized code runs several times slower: one worker, long timeouts.
# (Test paths go first: jest's list options would take them as more ignore patterns.)
npx jest "$@" --maxWorkers=1 --testTimeout=1200000 --testPathIgnorePatterns '/(packaging|memory|soak)\.test\.ts$'

