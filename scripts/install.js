#!/usr/bin/env node
// npm's install step for lukv: nothing to do when a prebuilt binary loads here; otherwise build
// the addon from source with cmake-js, saying why. The runtime loader (dist/ts/native.js) makes the
// same choice, so an install that skipped this script still works wherever a prebuild fits.
//
//   LUKV_BUILD_FROM_SOURCE=1 (or npm's --build-from-source)  always build from source
"use strict";
const { spawnSync } = require("child_process");
const fs = require("fs");
const path = require("path");

const root = path.resolve(__dirname, "..");
const tuple = `${process.platform}-${process.arch}`;
const REQUIREMENTS = "CMake >= 3.18 and a C++17 compiler (and nvcc for the CUDA backend)";

function say(message) {
  console.log(`lukv: ${message}`);
}

function flag(value) {
  return value !== undefined && !/^(|0|false|no|off)$/i.test(value.trim());
}

// The binary the runtime loader would use, or why there is none. Without dist/ this is a checkout
// of the repository, where the TypeScript is compiled after this step and nothing is prebuilt.
function usableBinary() {
  const loader = path.join(root, "dist", "ts", "native.js");
  if (!fs.existsSync(loader)) return { why: "this is a checkout of the repository (no dist/)" };
  try {
    const native = require(loader);
    native.native();
    return { binary: native.loadedBinary() };
  } catch (e) {
    // The loader's list of files tried, without its advice (which is what happens next).
    return { why: String(e && e.message ? e.message : e).replace(/^lukv: /, "").replace(/\nTo fix:[^]*$/, "").trim() };
  }
}

function buildFromSource(why) {
  say(`building the native addon from source with cmake-js: ${why}`);
  let cmakeJs;
  try {
    cmakeJs = require.resolve("cmake-js/bin/cmake-js");
    require.resolve("node-addon-api/package.json");
  } catch {
    fail(
      "cmake-js and node-addon-api are needed to build from source but are not installed " +
        "(they are optional dependencies of lukv: install without --omit=optional, or add them to your project)",
    );
  }
  // compile = incremental build, with a full rebuild when that fails. An earlier build configured
  // with other CUDA settings is configured again from scratch: CMake keeps the first ones.
  const stale = staleSettings();
  if (stale) say(`build/ was configured with ${stale}; configuring it again`);
  const run = spawnSync(process.execPath, [cmakeJs, stale ? "rebuild" : "compile"], { cwd: root, stdio: "inherit" });
  if (run.error) fail(`could not run cmake-js: ${run.error.message}`);
  if (run.status !== 0) fail(`the source build failed (cmake-js exited with ${run.status})`);
  if (!fs.existsSync(path.join(root, "build", "Release", "lukv.node"))) fail("the source build reported success but left no build/Release/lukv.node");
  say("built build/Release/lukv.node");
}

// The CUDA settings of the environment that build/CMakeCache.txt was not configured with, as text
// ("LUKV_CUDA=OFF (now ON)"), or undefined when they match or nothing is set.
function staleSettings() {
  let cache;
  try {
    cache = fs.readFileSync(path.join(root, "build", "CMakeCache.txt"), "utf8");
  } catch {
    return undefined; // no earlier build: cmake-js configures one
  }
  const cached = (name) => (cache.match(new RegExp(`^${name}:[A-Z]+=(.*)$`, "m")) || [])[1];
  const differ = [];
  const cuda = process.env.LUKV_CUDA;
  const on = (v) => !/^(0|false|no|off|n)$/i.test(String(v).trim());
  if (cuda !== undefined && cuda.trim() !== "") {
    const was = cached("LUKV_CUDA");
    if (was === undefined || on(was) !== on(cuda)) differ.push(`LUKV_CUDA=${was ?? "unknown"} (now ${cuda})`);
  }
  const arch = process.env.LUKV_CUDA_ARCHITECTURES;
  // Architectures matter only to a build with CUDA (CMake records them only then).
  const cudaWanted = cuda === undefined || cuda.trim() === "" || on(cuda);
  if (cudaWanted && arch !== undefined && arch.trim() !== "") {
    const was = cached("LUKV_CUDA_ARCHITECTURES_USED");
    if (was !== arch.trim()) differ.push(`LUKV_CUDA_ARCHITECTURES=${was ?? "unknown"} (now ${arch.trim()})`);
  }
  return differ.length ? differ.join(", ") : undefined;
}

function fail(message) {
  console.error(
    `lukv: ${message}.\n` +
      `lukv's prebuilt binaries cover linux-x64 with glibc >= 2.34; anywhere else (or when they do not load) it is built\n` +
      `from source, which needs ${REQUIREMENTS}. After installing those, run: LUKV_BUILD_FROM_SOURCE=1 npm rebuild lukv`,
  );
  process.exit(1);
}

// Whether the loader would take only a prebuilt binary here (LUKV_BINARY=cpu or cuda, or
// LUKV_PREBUILDS_ONLY=1 unless LUKV_BINARY names the local build): a source build would not be used.
// Not in a checkout of the repository (no dist/), which has no prebuilds and builds from source.
function prebuiltOnly() {
  if (!fs.existsSync(path.join(root, "dist", "ts", "native.js"))) return false;
  if (binaryKind === "cpu" || binaryKind === "cuda") return true;
  return flag(process.env.LUKV_PREBUILDS_ONLY) && binaryKind !== "build";
}

// The loader refuses other values at run time; a source build would not help.
const BINARY_KINDS = ["auto", "build", "cpu", "cuda", "emu"];
const binaryKind = (process.env.LUKV_BINARY ?? "").trim().toLowerCase();
if (binaryKind !== "" && !BINARY_KINDS.includes(binaryKind)) {
  console.error(`lukv: LUKV_BINARY is ${JSON.stringify(binaryKind)}, not one of ${BINARY_KINDS.join(", ")}: unset it or fix it, then run npm rebuild lukv`);
  process.exit(1);
}

if (binaryKind === "emu") {
  say("LUKV_BINARY=emu selects the test build with emulated CUDA (npm run build:emu in a checkout); nothing to build here");
} else if (flag(process.env.LUKV_BUILD_FROM_SOURCE) || flag(process.env.npm_config_build_from_source)) {
  buildFromSource("requested by LUKV_BUILD_FROM_SOURCE or --build-from-source");
} else if (prebuiltOnly()) {
  // The loader would not use a source build: building one would say "built" and fail at run time.
  const found = usableBinary();
  if (found.binary) say(`using ${path.relative(root, found.binary.file)} (${found.binary.reason})`);
  else {
    console.error(
      `lukv: ${binaryKind === "cpu" || binaryKind === "cuda" ? `LUKV_BINARY=${binaryKind}` : "LUKV_PREBUILDS_ONLY=1"} asks for a prebuilt binary, ` +
        `and none loads here: ${found.why}.\nUnset it to build from source (the loader then uses build/Release), or reinstall lukv.`,
    );
    process.exit(1);
  }
} else if (fs.existsSync(path.join(root, "build", "CMakeCache.txt")) && fs.existsSync(path.join(root, "build", "Release", "lukv.node"))) {
  // An earlier source build (a checkout, or a user's rebuild): keep build/Release, which the loader
  // prefers, in step with the sources. Incremental, so cheap when nothing changed.
  buildFromSource("updating the earlier source build in build/");
} else {
  // (A build/ without a binary is a source build that failed or was interrupted: the prebuilt
  // binaries come first, as if it were not there.)
  const found = usableBinary();
  if (found.binary) say(`using ${path.relative(root, found.binary.file)} (${found.binary.reason})`);
  else buildFromSource(found.why);
}
