// Packs lukv as a release would (prebuilds made by `npm run prebuilds`, TypeScript compiled fresh),
// installs the tarball into an empty folder with no compiler on the PATH and no network (npm
// --offline, from the cache `npm ci` filled), and runs attention there on the CPU backend.
// When nvcc is found the CUDA prebuild is built and packed too, and must load on this machine,
// which has no NVIDIA driver; LUKV_TEST_CUDA_PREBUILD=0 skips it (it adds about a minute).
// LUKV_KEEP_PACKAGING=1 keeps the temporary folder (staged package, tarball, app) for a look.
import { spawnSync, SpawnSyncOptions } from "child_process";
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { randn, rng, testSeed } from "./helpers/random";
import { referenceAttention, relativeError } from "./helpers/reference";
import { findCudaDriver, NO_DRIVER } from "../ts/native";

const ROOT = path.resolve(__dirname, "..");
const TUPLE = `${process.platform}-${process.arch}`;
const CPU_PREBUILD = `prebuilds/${TUPLE}/lukv.node`;
const CUDA_PREBUILD = `prebuilds/${TUPLE}-cuda/lukv.node`;

function which(name: string, searchPath = process.env.PATH ?? ""): string | undefined {
  for (const dir of searchPath.split(path.delimiter)) {
    const file = dir && path.join(dir, name);
    if (file && fs.existsSync(file)) return file;
  }
  return undefined;
}

const nvccFound = Boolean(process.env.CUDACXX || which("nvcc") || fs.existsSync("/usr/local/cuda/bin/nvcc"));
const withCuda = nvccFound && process.env.LUKV_TEST_CUDA_PREBUILD !== "0";
// Exact CUDA messages hold where no NVIDIA driver is installed: the CI machines and this one.
const noDriver = findCudaDriver() === null;

// Runs a command to completion; returns its stdout and stderr, or throws with both.
function run(command: string, args: string[], options: SpawnSyncOptions = {}): { stdout: string; stderr: string } {
  const r = spawnSync(command, args, { encoding: "utf8", maxBuffer: 64 << 20, ...options });
  const stdout = String(r.stdout ?? "");
  const stderr = String(r.stderr ?? "");
  if (r.status !== 0)
    throw new Error(`${command} ${args.join(" ")} exited with ${r.status ?? r.signal}${r.error ? ` (${r.error.message})` : ""}\n${stdout}\n${stderr}`);
  return { stdout, stderr };
}

interface PackResult {
  filename: string;
  size: number;
  unpackedSize: number;
  files: { path: string; size: number }[];
}

let work: string;
let pack: PackResult;
let installed: string; // node_modules/lukv in the app
let installLog: string;
let bareEnv: NodeJS.ProcessEnv; // no compiler, no network

beforeAll(() => {
  const started = Date.now();
  work = fs.mkdtempSync(path.join(os.tmpdir(), "lukv-packaging-"));
  const stage = path.join(work, "package");

  // The shipped files as `npm pack` lists them, without dist/ and prebuilds/, which are made fresh.
  const listed = JSON.parse(run("npm", ["pack", "--dry-run", "--json", "--ignore-scripts"], { cwd: ROOT }).stdout)[0] as PackResult;
  for (const { path: file } of listed.files) {
    if (/^(dist|prebuilds)\//.test(file)) continue;
    fs.mkdirSync(path.dirname(path.join(stage, file)), { recursive: true });
    fs.copyFileSync(path.join(ROOT, file), path.join(stage, file));
  }
  // One CUDA architecture: what is checked here is how the binaries are packed and loaded.
  run(process.execPath, [path.join(ROOT, "scripts", "prebuilds.js"), "--out", stage, withCuda ? "--cuda" : "--no-cuda"], {
    cwd: ROOT,
    env: { ...process.env, LUKV_PREBUILD_CUDA_ARCHITECTURES: "90" },
  });
  run(process.execPath, [require.resolve("typescript/bin/tsc"), "-p", "tsconfig.build.json", "--outDir", path.join(stage, "dist")], { cwd: ROOT });
  pack = JSON.parse(run("npm", ["pack", "--json", "--ignore-scripts", "--pack-destination", work], { cwd: stage }).stdout)[0];

  // A PATH with node, npm and basic tools only: no cc, c++, gcc, g++, nvcc, cmake, make or ninja.
  const bin = path.join(work, "bin");
  fs.mkdirSync(bin);
  fs.symlinkSync(process.execPath, path.join(bin, "node"));
  fs.symlinkSync(fs.realpathSync(which("npm")!), path.join(bin, "npm"));
  for (const tool of ["sh", "bash", "env", "cat", "ls", "mkdir", "rm", "cp", "mv", "chmod", "uname", "tar", "gzip"]) {
    const found = which(tool);
    if (found) fs.symlinkSync(found, path.join(bin, tool));
  }
  const cache = run("npm", ["config", "get", "cache"], { cwd: ROOT }).stdout.trim();
  bareEnv = { PATH: bin, HOME: os.homedir(), TMPDIR: os.tmpdir(), npm_config_cache: cache, npm_config_update_notifier: "false" };

  const app = path.join(work, "app");
  fs.mkdirSync(app);
  fs.writeFileSync(path.join(app, "package.json"), JSON.stringify({ name: "app", version: "1.0.0", private: true }));
  fs.writeFileSync(path.join(app, "check.js"), CHECK_SCRIPT);
  const install = run(
    "npm",
    ["install", path.join(work, pack.filename), "--offline", "--no-audit", "--no-fund", "--foreground-scripts", "--loglevel=warn"],
    { cwd: app, env: bareEnv },
  );
  installLog = install.stdout + install.stderr;
  installed = path.join(app, "node_modules", "lukv");
  // eslint-disable-next-line no-console
  console.log(
    `packaging: ${pack.filename} ${(pack.size / 1e6).toFixed(2)} MB packed, ${(pack.unpackedSize / 1e6).toFixed(2)} MB unpacked, ` +
      `${pack.files.length} files${withCuda ? ", with the CUDA prebuild" : ""}; built, packed and installed in ${((Date.now() - started) / 1000).toFixed(0)} s`,
  );
}, 20 * 60_000);

afterAll(() => {
  // eslint-disable-next-line no-console
  if (process.env.LUKV_KEEP_PACKAGING === "1") console.log(`packaging: kept ${work}`);
  else if (work) fs.rmSync(work, { recursive: true, force: true });
});

// Runs in the app folder: loads lukv from node_modules, reports backends() and attends over the input.
const CHECK_SCRIPT = `
const fs = require("fs");
const lukv = require("lukv");
const input = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const { layers, kvHeads, queryHeads, headDim } = input.shape;
const out = { resolved: require.resolve("lukv"), backends: lukv.backends() };
const cache = new lukv.KVCache({ layers, kvHeads, queryHeads, headDim, dtype: "f32", device: "auto" });
out.device = cache.config.device;
const seq = cache.createSequence();
seq.append(0, Float32Array.from(input.keys), Float32Array.from(input.values));
out.attention = Array.from(seq.attend(0, Float32Array.from(input.queries)));
try {
  new lukv.KVCache({ layers, kvHeads, headDim, device: "cuda" });
} catch (e) {
  out.cudaError = { name: e.name, code: e.code, message: e.message };
}
seq.dispose();
cache.dispose();
process.stdout.write(JSON.stringify(out));
`;

interface CheckOutput {
  resolved: string;
  backends: {
    binary: { kind: string; file: string; reason: string };
    auto: { device: string; reason: string };
    cuda: { compiled: boolean; usable: boolean; reasons: string[]; error?: string };
  };
  device: string;
  attention: number[];
  cudaError?: { name: string; code: string; message: string };
}

const SHAPE = { layers: 1, kvHeads: 2, queryHeads: 4, headDim: 16 };

// Runs check.js with the bare environment plus `env`, and checks its attention against the reference.
function checkInstalled(label: string, env: NodeJS.ProcessEnv = {}): CheckOutput {
  const { kvHeads, queryHeads, headDim } = SHAPE;
  const tokens = 7;
  const r = rng(testSeed(label));
  const keys = randn(r, tokens * kvHeads * headDim);
  const values = randn(r, tokens * kvHeads * headDim);
  const queries = randn(r, queryHeads * headDim);
  const inputFile = path.join(work, `${label}.json`);
  fs.writeFileSync(inputFile, JSON.stringify({ shape: SHAPE, keys: [...keys], values: [...values], queries: [...queries] }));
  const out = JSON.parse(run("node", ["check.js", inputFile], { cwd: path.dirname(path.dirname(installed)), env: { ...bareEnv, ...env } }).stdout) as CheckOutput;

  expect(out.resolved).toBe(path.join(fs.realpathSync(installed), "dist", "ts", "index.js"));
  const heads = Array.from({ length: kvHeads }, (_, h) => {
    const pick = (src: Float32Array) => {
      const rows = new Float32Array(tokens * headDim);
      for (let t = 0; t < tokens; t++) rows.set(src.subarray((t * kvHeads + h) * headDim, (t * kvHeads + h + 1) * headDim), t * headDim);
      return rows;
    };
    return { keys: pick(keys), values: pick(values), positions: Array.from({ length: tokens }, (_, t) => t) };
  });
  const expected = referenceAttention(heads, queries, [tokens - 1], queryHeads, headDim);
  expect(out.attention).toHaveLength(expected.length);
  expect(relativeError(out.attention, expected)).toBeLessThan(1e-5);
  expect(out.device).toBe("cpu");
  expect(out.cudaError?.name).toBe("BackendUnavailableError");
  expect(out.cudaError?.code).toBe("ERR_LUKV_BACKEND_UNAVAILABLE");
  expect(out.cudaError?.message).toBe(`device "cuda" was requested but cannot be used: ${out.backends.cuda.reasons.join("; ")}. Use device "cpu" or "auto".`);
  expect(out.backends.auto).toEqual({ device: "cpu", reason: `CUDA cannot be used: ${out.backends.cuda.reasons.join("; ")}` });
  expect(out.backends.cuda.usable).toBe(false);
  return out;
}

test("the tarball holds what runs and builds lukv, and nothing else", () => {
  const files = pack.files.map((f) => f.path);
  for (const f of ["package.json", "README.md", "CMakeLists.txt", "scripts/install.js", "dist/ts/index.js", "dist/ts/index.d.ts", "dist/ts/native.js", "dist/ts/cli.js", "native/addon/addon.cpp", CPU_PREBUILD])
    expect(files).toContain(f);
  expect(files.includes(CUDA_PREBUILD)).toBe(withCuda);
  if (fs.existsSync(path.join(ROOT, "models"))) expect(files.some((f) => f.startsWith("models/"))).toBe(true);
  const unexpected = files.filter(
    (f) => /^(__tests__|tools|ts|bench|examples|build|node_modules|\.ci)\//.test(f) || /\.map$/.test(f) || (f.startsWith("scripts/") && f !== "scripts/install.js"),
  );
  expect(unexpected).toEqual([]);
  // Everything but the demo model is code and two binaries: the CPU one and the CUDA one with its
  // kernels (about 5 MB for the two release architectures; one here).
  const withoutModels = pack.files.filter((f) => !f.path.startsWith("models/")).reduce((n, f) => n + f.size, 0);
  expect(withoutModels).toBeLessThan(10e6);
  expect(pack.size).toBeLessThan(16e6);
});

test("the installed declarations type-check a strict app and show only the public API", () => {
  const declarations: string[] = [];
  const walk = (dir: string): void => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (p.endsWith(".d.ts")) declarations.push(p);
    }
  };
  walk(path.join(installed, "dist", "ts"));
  for (const file of declarations) {
    const text = fs.readFileSync(file, "utf8");
    const name = path.relative(installed, file);
    // Typed arrays with type arguments (Int32Array<ArrayBuffer>) need TypeScript 5.7 to read.
    expect([name, text.match(/\b(?:Int8|Uint8|Uint8Clamped|Int16|Uint16|Int32|Uint32|Float32|Float64|BigInt64|BigUint64)Array</g)]).toEqual([name, null]);
    expect([name, text.includes("@internal")]).toEqual([name, false]);
  }
  const app = path.join(work, "types-app");
  fs.mkdirSync(path.join(app, "node_modules"), { recursive: true });
  fs.symlinkSync(installed, path.join(app, "node_modules", "lukv"));
  fs.writeFileSync(
    path.join(app, "main.ts"),
    `import { KVCache, budgetsFromProfile, createProfile, type CompressReport } from "lukv";
const cache = new KVCache({ layers: 1, kvHeads: 1, headDim: 8 });
const seq = cache.createSequence();
const report: CompressReport = seq.compress({ ratio: 0.5 });
const keep: Int32Array = budgetsFromProfile(createProfile({ table: [0.5], grid: 1, layers: 1, kvHeads: 1 }), { ratio: 0.5, lengths: [4] });
console.log(report.total, keep.length);
`,
  );
  const options = { strict: true, skipLibCheck: false, noEmit: true, target: "ES2022", module: "node16", moduleResolution: "node16", lib: ["ES2022", "esnext.disposable"], types: ["node"], typeRoots: [path.join(ROOT, "node_modules", "@types")] };
  fs.writeFileSync(path.join(app, "tsconfig.json"), JSON.stringify({ compilerOptions: options, files: ["main.ts"] }));
  run(process.execPath, [require.resolve("typescript/bin/tsc"), "-p", app]);
});

test("the install found no compiler, reached no network and used the prebuilt binary", () => {
  const compiler = spawnSync("sh", ["-c", "command -v cc c++ gcc g++ clang nvcc cmake make ninja"], { env: bareEnv, encoding: "utf8" });
  expect(compiler.stdout).toBe("");
  expect(compiler.status).not.toBe(0);
  const reason = withCuda ? `the CUDA binary is not used: ${NO_DRIVER}` : `the CUDA binary is not used: lukv has no CUDA binary for ${TUPLE}; ${NO_DRIVER}`;
  if (noDriver) expect(installLog).toContain(`lukv: using ${CPU_PREBUILD} (${reason})`);
  else expect(installLog).toMatch(/lukv: using prebuilds\//);
  // No source build happened.
  expect(fs.existsSync(path.join(installed, "build"))).toBe(false);
});

test("where no prebuilt binary fits, the install script says why and builds from source, which fails clearly here", () => {
  // The installed package without its prebuilds, next to it so cmake-js resolves as in a real install.
  const bare = path.join(path.dirname(installed), "lukv-without-prebuilds");
  fs.cpSync(installed, bare, { recursive: true, filter: (src) => !src.startsWith(path.join(installed, "prebuilds")) });
  const r = spawnSync("node", ["scripts/install.js"], { cwd: bare, env: bareEnv, encoding: "utf8" });
  expect(r.status).toBe(1);
  expect(r.stdout).toContain(
    `lukv: building the native addon from source with cmake-js: no native binary could be loaded for ${TUPLE} from ${bare}:\n` +
      `  - ${CPU_PREBUILD} does not exist\n` +
      `  - ${CUDA_PREBUILD} does not exist\n`,
  );
  // cmake-js and node-addon-api are optional dependencies: there unless the npm cache lacked them.
  const sourceBuildRan = fs.existsSync(path.join(path.dirname(installed), "cmake-js"));
  expect(r.stderr).toContain(
    sourceBuildRan ? "lukv: the source build failed (cmake-js exited with 1).\n" : "lukv: cmake-js and node-addon-api are needed to build from source but are not installed",
  );
  expect(r.stderr).toMatch(/After installing those, run: LUKV_BUILD_FROM_SOURCE=1 npm rebuild lukv\n$/);
  expect(fs.existsSync(path.join(bare, "build", "Release", "lukv.node"))).toBe(false);
  // A prebuilt binary asked for by name: building from source would not help (the loader would not
  // use it), so the script says so and builds nothing.
  for (const env of [{ LUKV_BINARY: "cpu" }, { LUKV_PREBUILDS_ONLY: "1" }]) {
    const forced = spawnSync("node", ["scripts/install.js"], { cwd: bare, env: { ...bareEnv, ...env }, encoding: "utf8" });
    expect([forced.status, forced.stdout]).toEqual([1, ""]);
    expect(forced.stderr).toMatch(/^lukv: (LUKV_BINARY=cpu|LUKV_PREBUILDS_ONLY=1) asks for a prebuilt binary, and none loads here: /);
    expect(forced.stderr).toContain("Unset it to build from source (the loader then uses build/Release), or reinstall lukv.");
  }
  // A failed or interrupted build's leftovers (a configured build/ without a binary) do not make the
  // next install rebuild when a prebuild loads.
  const cacheFile = path.join(bare, "build", "CMakeCache.txt");
  if (!fs.existsSync(cacheFile)) {
    fs.mkdirSync(path.dirname(cacheFile), { recursive: true });
    fs.writeFileSync(cacheFile, "# left by an interrupted configure\n");
  }
  fs.cpSync(path.join(installed, "prebuilds"), path.join(bare, "prebuilds"), { recursive: true });
  const again = spawnSync("node", ["scripts/install.js"], { cwd: bare, env: bareEnv, encoding: "utf8" });
  expect([again.status, again.stderr]).toEqual([0, ""]);
  expect(again.stdout).toMatch(/^lukv: using prebuilds\//);
  // With a finished source build there, LUKV_PREBUILDS_ONLY=1 uses the prebuild and builds nothing
  // (the loader skips build/ then).
  fs.mkdirSync(path.join(bare, "build", "Release"), { recursive: true });
  fs.copyFileSync(path.join(bare, CPU_PREBUILD), path.join(bare, "build", "Release", "lukv.node"));
  const skipBuild = spawnSync("node", ["scripts/install.js"], { cwd: bare, env: { ...bareEnv, LUKV_PREBUILDS_ONLY: "1" }, encoding: "utf8" });
  expect([skipBuild.status, skipBuild.stderr]).toEqual([0, ""]);
  expect(skipBuild.stdout).toMatch(/^lukv: using prebuilds\//);
});

test("attention runs on the CPU binary of the installed package", () => {
  const out = checkInstalled("packaging-cpu");
  if (!noDriver) return;
  expect(out.backends.binary).toEqual({
    kind: "cpu",
    file: path.join(fs.realpathSync(installed), CPU_PREBUILD),
    reason: withCuda ? `the CUDA binary is not used: ${NO_DRIVER}` : `the CUDA binary is not used: lukv has no CUDA binary for ${TUPLE}; ${NO_DRIVER}`,
  });
  expect(out.backends.cuda.compiled).toBe(false);
  expect(out.backends.cuda.reasons).toEqual([
    ...(withCuda ? [] : [`lukv has no CUDA binary for ${TUPLE}: build it from source with nvcc on the PATH (LUKV_BUILD_FROM_SOURCE=1 npm rebuild lukv)`]),
    `${NO_DRIVER}: install the NVIDIA driver`,
  ]);
});

(withCuda ? describe : describe.skip)("the CUDA prebuild", () => {
  test("links the CUDA runtime statically and not the driver", () => {
    const readelf = which("readelf");
    if (!readelf) return;
    const needed = [...run(readelf, ["-d", path.join(installed, CUDA_PREBUILD)]).stdout.matchAll(/\(NEEDED\).*\[(.+)\]/g)].map((m) => m[1]);
    expect(needed).toContain("libc.so.6");
    expect(needed.filter((lib) => /cuda|nvidia/i.test(lib))).toEqual([]);
  });

  test("loads without a driver, reports why CUDA is unavailable and runs the CPU backend", () => {
    const out = checkInstalled("packaging-cuda", { LUKV_BINARY: "cuda" });
    expect(out.backends.binary).toEqual({ kind: "cuda", file: path.join(fs.realpathSync(installed), CUDA_PREBUILD), reason: "LUKV_BINARY=cuda" });
    expect(out.backends.cuda.compiled).toBe(true);
    if (noDriver) expect(out.backends.cuda.reasons).toEqual(["no NVIDIA driver was found (libcuda.so.1 is not installed): install the NVIDIA driver"]);
  });

  test('"auto" loads it when a driver library is found, and survives one that does not work', () => {
    // An empty libcuda.so.1: the loader's lookup finds it, the CUDA runtime fails to open it.
    const fakeDriver = path.join(work, "fake-driver");
    fs.mkdirSync(fakeDriver, { recursive: true });
    fs.writeFileSync(path.join(fakeDriver, "libcuda.so.1"), "");
    const out = checkInstalled("packaging-fake-driver", { LD_LIBRARY_PATH: fakeDriver });
    expect(out.backends.binary).toEqual({
      kind: "cuda",
      file: path.join(fs.realpathSync(installed), CUDA_PREBUILD),
      reason: `an NVIDIA driver was found (${path.join(fakeDriver, "libcuda.so.1")})`,
    });
    expect(out.backends.cuda.compiled).toBe(true);
    expect(out.backends.cuda.reasons).toEqual([
      `${path.join(fakeDriver, "libcuda.so.1")} was found but the CUDA runtime could not load it (a broken or partial NVIDIA driver installation, or a file that is not the driver): reinstall the NVIDIA driver`,
    ]);
  });
});
