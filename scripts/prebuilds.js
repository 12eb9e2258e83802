#!/usr/bin/env node
// `npm run prebuilds`: builds the binaries that ship in the npm package, through prebuildify.
//
//   prebuilds/<platform>-<arch>/lukv.node        CPU only (LUKV_CUDA=OFF); node-gyp-build finds it too
//   prebuilds/<platform>-<arch>-cuda/lukv.node   CPU + CUDA, static CUDA runtime, SASS sm_80/sm_90 + PTX;
//                                               only lukv's loader (ts/native.ts) looks in this folder
//
// Options: --out DIR (write DIR/prebuilds; default: this package), --cuda (fail without nvcc),
// --no-cuda (CPU only). By default the CUDA binary is built when nvcc is found and LUKV_CUDA is not OFF.
// --check builds nothing: it fails unless both binaries (only the CPU one with LUKV_CUDA=OFF) are in
// prebuilds/ and pass the checks below; `npm publish` runs it, as a package without them would
// make every install compile.
// Each binary is built in its own temporary folder, so build/ (the local build) is never touched.
"use strict";
const { spawnSync } = require("child_process");
const fs = require("fs");
const os = require("os");
const path = require("path");

const root = path.resolve(__dirname, "..");
const tuple = `${process.platform}-${process.arch}`;
// SASS for A100 (sm_80) and Hopper (sm_90); "90" also embeds compute_90 PTX for newer GPUs.
// LUKV_PREBUILD_CUDA_ARCHITECTURES overrides it (the packaging test builds one architecture, to
// save the minutes the CUDA kernels take to compile three times).
const CUDA_ARCHITECTURES = process.env.LUKV_PREBUILD_CUDA_ARCHITECTURES || "80-real;90";

function parseArgs(argv) {
  const opts = { out: root, cuda: "auto", check: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--out") opts.out = path.resolve(argv[++i] ?? fail("--out needs a folder"));
    else if (a === "--cuda") opts.cuda = "on";
    else if (a === "--no-cuda") opts.cuda = "off";
    else if (a === "--check") opts.check = true;
    else fail(`unknown option ${a} (expected --out DIR, --cuda, --no-cuda, --check)`);
  }
  if (opts.cuda === "auto" && /^(off|0|false|no)$/i.test(process.env.LUKV_CUDA ?? "")) opts.cuda = "off";
  return opts;
}

function fail(message) {
  console.error(`lukv prebuilds: ${message}`);
  process.exit(1);
}

function onPath(name) {
  return (process.env.PATH ?? "").split(path.delimiter).some((dir) => dir && fs.existsSync(path.join(dir, name)));
}

// The same places CMakeLists.txt looks: CUDACXX, the PATH, /usr/local/cuda.
function nvccFound() {
  return Boolean(process.env.CUDACXX) || onPath("nvcc") || fs.existsSync("/usr/local/cuda/bin/nvcc");
}

function destination(out, variant) {
  return path.join(out, "prebuilds", variant === "cuda" ? `${tuple}-cuda` : tuple, "lukv.node");
}

function build(variant, out) {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), `lukv-prebuild-${variant}-`));
  try {
    const args = [
      require.resolve("prebuildify/bin.js"),
      "--napi",
      "--name", "lukv",
      "--target", process.versions.node,
      "--cwd", work,
      "--out", work,
      `--node-gyp=${path.join(__dirname, "prebuildify-cmake.js")}`,
    ];
    if (onPath("strip")) args.push("--strip");
    const env = { ...process.env, LUKV_SOURCE_DIR: root, LUKV_CUDA: variant === "cuda" ? "ON" : "OFF" };
    if (variant === "cuda") env.LUKV_CUDA_ARCHITECTURES = CUDA_ARCHITECTURES;
    console.log(`lukv prebuilds: building the ${variant} binary for ${tuple}`);
    const run = spawnSync(process.execPath, args, { stdio: "inherit", env });
    if (run.status !== 0) fail(`prebuildify failed for the ${variant} binary (exit ${run.status})`);

    const built = path.join(work, "prebuilds", tuple, "lukv.node");
    const dest = destination(out, variant);
    fs.mkdirSync(path.dirname(dest), { recursive: true });
    fs.copyFileSync(built, dest);
    verify(variant, dest);
    console.log(`lukv prebuilds: wrote ${dest} (${(fs.statSync(dest).size / 1e6).toFixed(1)} MB)`);
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}

// A prebuild must load here and contain exactly the backends its folder promises; the CUDA one must
// not need libcudart or libcuda, or it would fail to load on machines without the toolkit or driver.
function verify(variant, file) {
  const probe = spawnSync(process.execPath, ["-e", `process.stdout.write(JSON.stringify(require(${JSON.stringify(file)}).cudaInfo()))`], { encoding: "utf8" });
  if (probe.status !== 0) fail(`${file} does not load: ${probe.stderr.trim()}`);
  const info = JSON.parse(probe.stdout);
  if (info.compiled !== (variant === "cuda")) fail(`${file} has compiled=${info.compiled} in cudaInfo(), expected ${variant === "cuda"} (was nvcc found?)`);
  if (variant === "cuda" && onPath("readelf")) {
    const dyn = spawnSync("readelf", ["-d", file], { encoding: "utf8" });
    const needed = [...dyn.stdout.matchAll(/\(NEEDED\).*\[(.+)\]/g)].map((m) => m[1]);
    const cuda = needed.filter((lib) => /^libcud(a|art)\b/.test(lib));
    if (cuda.length) fail(`${file} links ${cuda.join(", ")} dynamically; it must use the static CUDA runtime`);
  }
}

const opts = parseArgs(process.argv.slice(2));
if (opts.check) {
  for (const variant of opts.cuda === "off" ? ["cpu"] : ["cpu", "cuda"]) {
    const file = destination(opts.out, variant);
    if (!fs.existsSync(file)) fail(`${file} is missing: run \`npm run prebuilds\` first`);
    verify(variant, file);
    console.log(`lukv prebuilds: ${file} is fine`);
  }
  process.exit(0);
}
build("cpu", opts.out);
if (opts.cuda === "on" && !nvccFound()) fail("--cuda was given but nvcc was not found (set CUDACXX or put nvcc on the PATH)");
if (opts.cuda === "on" || (opts.cuda === "auto" && nvccFound())) build("cuda", opts.out);
else console.log(`lukv prebuilds: no CUDA binary (${opts.cuda === "off" ? "turned off" : "nvcc was not found"})`);
