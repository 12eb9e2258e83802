#!/usr/bin/env node
// What prebuildify runs in place of node-gyp (`prebuildify --node-gyp=scripts/prebuildify-cmake.js`):
// prebuildify 6 only knows node-gyp, so this turns its `rebuild --target=.. --arch=.. --release`
// into a cmake-js build and leaves the addon in <cwd>/build/Release, where prebuildify looks.
//
// Environment (set by scripts/prebuilds.js):
//   LUKV_SOURCE_DIR          the CMake project (default: this package)
//   LUKV_CUDA                ON or OFF: whether to build the CUDA backend
//   LUKV_CUDA_ARCHITECTURES  CMAKE_CUDA_ARCHITECTURES for the CUDA build
"use strict";
const { spawnSync } = require("child_process");
const path = require("path");

const [command, ...flags] = process.argv.slice(2);
if (command !== "rebuild") {
  console.error(`prebuildify-cmake: expected "rebuild" from prebuildify but got ${JSON.stringify(command)}`);
  process.exit(2);
}

const source = process.env.LUKV_SOURCE_DIR || path.resolve(__dirname, "..");
// A separate build folder per prebuild keeps the developer's build/ (and its sticky CMake cache) untouched.
const args = [require.resolve("cmake-js/bin/cmake-js"), "rebuild", "-d", source, "-O", path.join(process.cwd(), "build")];
for (const flag of flags) {
  // --target and --devdir only matter to node-gyp: a Node-API build uses node-api-headers.
  const arch = /^--arch=(.+)$/.exec(flag);
  if (arch) args.push("--arch", arch[1]);
  if (flag === "--debug") args.push("--debug");
}
if (process.env.LUKV_CUDA) args.push(`--CDLUKV_CUDA=${process.env.LUKV_CUDA}`);
if (process.env.LUKV_CUDA_ARCHITECTURES) args.push(`--CDCMAKE_CUDA_ARCHITECTURES=${process.env.LUKV_CUDA_ARCHITECTURES}`);

const run = spawnSync(process.execPath, args, { stdio: "inherit" });
process.exit(run.status ?? 1);
