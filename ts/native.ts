// The one place that loads the compiled addon, and the hand-written type of its surface.
// Users never see these objects: KVCache and Sequence hold them privately.
//
// A process loads ONE binary and uses it for every cache, so classes are never registered twice:
//   build/Release/lukv.node                       a source build (npm run build:native), when present
//   prebuilds/<platform>-<arch>-cuda/lukv.node    CPU + CUDA (static CUDA runtime): loads without a
//                                                 driver; tried when an NVIDIA driver is installed
//   prebuilds/<platform>-<arch>/lukv.node         CPU only
// The CUDA binary contains the same CPU backend, so a process that loaded it needs no other binary.
import * as fs from "fs";
import * as path from "path";
import * as os from "os";
import { BackendUnavailableError, invalid } from "./errors";
import type { NativeCompressOptions } from "./compress";

export interface NativeUsage {
  pagesTotal: number;
  pagesUsed: number;
  bytesTotal: number;
  bytesUsed: number;
  sequences: number;
}

export interface NativeReport {
  kept: Int32Array;
  before: number;
  target: number;
  total: number;
  pagesFreed: number;
  ms: number;
}

export interface NativeCacheOptions {
  layers: number;
  kvHeads: number;
  queryHeads: number;
  headDim: number;
  pageSize: number;
  maxTokens: number;
  dtype: "f32" | "f16" | "bf16";
  device: "cpu" | "cuda";
  threads: number;
  simd: string;
  prefetch: string;
  observationWindow: number;
}

export interface NativeCache {
  createSequence(): number;
  fork(seq: number): number;
  disposeSequence(seq: number): void;
  append(seq: number, layer: number, keys: Float32Array | Uint16Array, values: Float32Array | Uint16Array): void;
  attend(seq: number, layer: number, queries: Float32Array, scale: number, out?: Float32Array): Float32Array;
  /** Resolves with null when `out` was detached or resized before the result could be written (the attention ran). */
  attendAsync(seq: number, layer: number, queries: Float32Array, scale: number, out?: Float32Array): Promise<Float32Array | null>;
  /**
   * Writes each item's result into its out array (one per item, of its queries' length). With
   * `keyMax` (each item's bound on |k|), first checks every item's queries as checkScores does and
   * writes each item's largest |q| into `queryMax`; throws an invalid-argument error naming the
   * first item that fails, before anything runs.
   */
  attendBatch(layer: number, seqs: Int32Array, queries: Float32Array[], scale: number, outs: Float32Array[], keyMax?: Float64Array | null, queryMax?: Float64Array): void;
  /**
   * Like attendBatch (the queries checked and copied at the call), off the main thread; the out
   * arrays are written when the promise resolves, with true, or none of them (false) when one was
   * detached or resized meanwhile (the attention ran).
   */
  attendBatchAsync(
    layer: number,
    seqs: Int32Array,
    queries: Float32Array[],
    scale: number,
    outs: Float32Array[],
    keyMax?: Float64Array | null,
    queryMax?: Float64Array,
  ): Promise<boolean>;
  appendBatch(layer: number, seqs: Int32Array, keys: (Float32Array | Uint16Array)[], values: (Float32Array | Uint16Array)[]): void;
  lengths(seq: number): Int32Array;
  /** Pages of the sequence no other sequence holds (what evicting from it can free). */
  pagesHeldAlone(seq: number): number;
  compress(seq: number, options: NativeCompressOptions): NativeReport;
  compressAsync(seq: number, options: NativeCompressOptions): Promise<NativeReport>;
  scores(seq: number, layer: number, options: NativeCompressOptions): Float32Array[];
  accumulate(seq: number, on: boolean): void;
  accumulating(seq: number): boolean;
  recordOracle(seq: number, outputProjection: Float32Array[] | undefined, normalize: boolean): void;
  stopOracle(seq: number): void;
  oracle(seq: number, layer: number): Float32Array[];
  positions(seq: number, layer: number, head: number): Int32Array;
  appended(seq: number, layer: number): number;
  readRows(seq: number, layer: number, head: number, values: boolean): Float32Array;
  /** maxBytes: the largest Buffer this Node.js makes; a larger save throws an invalid-argument error. */
  saveSequence(seq: number, bounds: Float64Array, maxBytes: number): Buffer;
  saveSequenceAsync(seq: number, bounds: Float64Array, maxBytes: number): Promise<Buffer>;
  /** measure: the bounds returned are at least those of the file's rows; a non-finite key or value fails. */
  loadSequence(bytes: Uint8Array, measure: boolean): [number, Float64Array];
  loadSequenceAsync(bytes: Uint8Array, measure: boolean): Promise<[number, Float64Array]>;
  usage(): NativeUsage;
  /** Gives the memory of the pool's free pages back to the system; the bytes given back. */
  trim(): number;
  info(): { simd: string; prefetch: string; threads: number; device: string };
  dispose(): void;
}

export interface NativeCpuInfo {
  simd: string;
  simdSupported: string[];
  /** The prefetch hint "auto" resolves to on this processor. */
  prefetch: string;
  hardwareThreads: number;
}

export interface NativeCudaInfo {
  compiled: boolean;
  usable: boolean;
  devices: number;
  runtimeVersion?: number;
  driverVersion?: number;
  names?: string;
  error?: string;
  /** The test-only build whose CUDA kernels run in a CPU emulator. */
  emulated?: boolean;
}

export interface NativeAddon {
  NativeCache: new (options: NativeCacheOptions) => NativeCache;
  cpuInfo(): NativeCpuInfo;
  cudaInfo(): NativeCudaInfo;
  /** Only in the emulated test build: makes the emulated device fail ("op", "op:n", "op:n/oom"; "" stops; native/addon/addon.cpp). */
  emulatedFailure?(what: string): void;
  /**
   * Writes [first index with !(|x| < limit) or -1, largest |x| before it] into `result` (a
   * Float64Array of 2), of a Float32Array (kind 0), or of raw f16 (1) or bf16 (2) words in a
   * Uint16Array, where bad means not finite.
   */
  scanValues(values: Float32Array | Uint16Array, kind: 0 | 1 | 2, limit: number, result: Float64Array): void;
  /** scanValues over each array, in one call: result[2i], result[2i+1] for array i. */
  scanValuesBatch(arrays: (Float32Array | Uint16Array)[], kind: 0 | 1 | 2, limit: number, result: Float64Array): void;
  /** The tokens outside the first `sink` and last `window`, best first, ranked as compress ranks them (NaN lowest, ties to the earlier position). */
  keepOrder(scores: Float32Array, sink: number, window: number): Int32Array;
  /** LU-KV keep counts (core/allocation): floors <= lengths, their sum <= total <= the sum of lengths. */
  lukvBudgets(pruneRatios: Float64Array, lengths: Int32Array, floors: Int32Array, total: number): Int32Array;
  /** round((1 - ratio) * tokens), halves up, the ratio read as the decimal it prints as (core/allocation). */
  keptTotal(ratio: number, tokens: number): number;
  /** Seconds per repeat of a plain multi-threaded read of `bytes` bytes (the faster of a read with and one without software prefetch). */
  memoryReadBenchmark(bytes: number, threads: number, repeats: number): number[];
  /** QueryStatistics.add's float64 sums of rows [first, tokens) around `shift` (products: the full symmetric matrices, or null). */
  accumulateQueryStatistics(queries: Float32Array, first: number, tokens: number, queryHeads: number, headDim: number, count: number, mean: Float64Array, m2: Float64Array | null): void;
}

/** The package root: the nearest folder above this file whose package.json is lukv's. */
export function packageRoot(): string {
  let dir = __dirname;
  for (;;) {
    const pkg = path.join(dir, "package.json");
    if (fs.existsSync(pkg)) {
      try {
        if (JSON.parse(fs.readFileSync(pkg, "utf8")).name === "lukv") return dir;
      } catch {
        // not ours; keep walking up
      }
    }
    const parent = path.dirname(dir);
    if (parent === dir) throw new Error(`lukv: could not find the package root above ${__dirname}`);
    dir = parent;
  }
}

/**
 * Which binary a process uses: a local source build, the CPU-only prebuild, the CUDA prebuild, or
 * (tests only, LUKV_BINARY=emu) the build whose CUDA kernels run in a CPU emulator.
 */
export type BinaryKind = "build" | "cpu" | "cuda" | "emu";

/** The binary this process loaded, and why. */
export interface LoadedBinary {
  kind: BinaryKind;
  /** Absolute path of the .node file. */
  file: string;
  /** Why this binary was chosen. */
  reason: string;
}

/** What the loader reads from the machine; tests pass a made-up one. */
export interface LoaderHost {
  /** The package root: build/ and prebuilds/ are under it. */
  root: string;
  platform: string;
  arch: string;
  env: Record<string, string | undefined>;
  exists(file: string): boolean;
  /** Where the NVIDIA driver library was found; null when it was not; undefined where it is not looked for. */
  findCudaDriver(): string | null | undefined;
  load(file: string): NativeAddon;
}

/** A loaded binary, plus what the loader found against CUDA before the binary's own probe runs. */
export interface Loaded {
  addon: NativeAddon;
  binary: LoadedBinary;
  cudaNotes: string[];
  /** Where the loader found libcuda.so.1: null when nowhere, undefined when not looked for (not Linux). */
  driver?: string | null;
}

const BINARY_KINDS: readonly BinaryKind[] = ["build", "cpu", "cuda", "emu"];

/** Where each binary lives, relative to the package root. */
export function binaryPaths(platform: string, arch: string): Record<BinaryKind, string> {
  return {
    build: "build/Release/lukv.node",
    cpu: `prebuilds/${platform}-${arch}/lukv.node`,
    // Beside <platform>-<arch>, not in it: tools that follow node-gyp-build read that folder and must not pick this.
    cuda: `prebuilds/${platform}-${arch}-cuda/lukv.node`,
    // Made by `npm run build:emu` for the tests; loaded only when LUKV_BINARY=emu asks for it.
    emu: "build-emu/Release/lukv.node",
  };
}

export const NO_DRIVER = "no NVIDIA driver was found (libcuda.so.1 is not installed)";
const BUILD_FROM_SOURCE = "LUKV_BUILD_FROM_SOURCE=1 npm rebuild lukv";
const FROM_SOURCE_FIX = `build it from source: \`${BUILD_FROM_SOURCE}\` (needs CMake >= 3.18 and a C++17 compiler), or \`npm run build:native\` in a checkout`;
const SHIPPED = "lukv ships prebuilt binaries for linux-x64 (glibc >= 2.34)";

// A source build writes build/Release, never prebuilds/: these come only from `npm run prebuilds` or the npm package.
function prebuildsFix(cuda: boolean): string {
  return (
    `make the prebuilt binaries with \`npm run prebuilds\` in a checkout${cuda ? " (the CUDA one only when nvcc is on the PATH)" : ""}, ` +
    "or reinstall lukv, whose npm package carries them for linux-x64 (glibc >= 2.34)"
  );
}

// What makes the binary LUKV_BINARY asks for; hasBuild: build/Release/lukv.node exists.
function forcedFixes(kind: BinaryKind, hasBuild: boolean): string[] {
  const unset = "unset LUKV_BINARY to let lukv choose";
  if (kind === "build") return [unset, FROM_SOURCE_FIX, SHIPPED];
  if (kind === "emu") return ["make it with `npm run build:emu` in a checkout (the test-only build whose CUDA kernels run in a CPU emulator)", `or ${unset}`];
  return [
    hasBuild ? `set LUKV_BINARY=build to use the local build (build/Release/lukv.node is present), or ${unset}` : unset,
    `or ${prebuildsFix(kind === "cuda")}`,
  ];
}

function envFlag(value: string | undefined): boolean {
  return value !== undefined && !/^(|0|false|no|off)$/i.test(value.trim());
}

// dlopen messages may span lines; reasons are joined into one line.
function oneLine(e: unknown): string {
  return (e instanceof Error ? e.message : String(e)).replace(/\s*\n\s*/g, " ").trim();
}

/**
 * Picks and loads one binary for this process. Exported for tests; everyone else calls native().
 *
 * LUKV_BINARY=build|cpu|cuda loads exactly that binary. Otherwise: the local build when present
 * (unless LUKV_PREBUILDS_ONLY=1); then the CUDA prebuild when an NVIDIA driver is installed; then
 * the CPU prebuild; then the CUDA prebuild anyway, as its CPU backend works without a driver.
 */
export function loadBinary(host: LoaderHost): Loaded {
  const rel = binaryPaths(host.platform, host.arch);
  const file = (kind: BinaryKind) => path.join(host.root, rel[kind]);
  const tuple = `${host.platform}-${host.arch}`;
  const failures = new Map<BinaryKind, string>();
  const driver = host.findCudaDriver();
  const tryLoad = (kind: BinaryKind): NativeAddon | undefined => {
    if (!host.exists(file(kind))) {
      failures.set(kind, `${rel[kind]} does not exist`);
      return undefined;
    }
    try {
      return host.load(file(kind));
    } catch (e) {
      failures.set(kind, `${rel[kind]} failed to load: ${oneLine(e)}`);
      return undefined;
    }
  };
  const result = (kind: BinaryKind, addon: NativeAddon, reason: string, cudaNotes: string[] = []): Loaded => ({
    addon,
    binary: { kind, file: file(kind), reason },
    cudaNotes,
    driver,
  });

  const requested = host.env.LUKV_BINARY?.trim().toLowerCase() ?? "";
  if (requested !== "" && requested !== "auto") {
    if (!(BINARY_KINDS as readonly string[]).includes(requested))
      throw invalid("LUKV_BINARY", 'one of "auto", "build", "cpu", "cuda", "emu"', host.env.LUKV_BINARY);
    const kind = requested as BinaryKind;
    const addon = tryLoad(kind);
    if (!addon) throw noBinaryError(tuple, host, [...failures.values()], forcedFixes(kind, host.exists(file("build"))));
    const notes = kind === "cpu" ? ["LUKV_BINARY=cpu selects the CPU-only binary: unset it"] : [];
    return result(kind, addon, `LUKV_BINARY=${kind}`, notes);
  }

  const prebuildsOnly = envFlag(host.env.LUKV_PREBUILDS_ONLY);
  let buildFailure = "";
  if (!prebuildsOnly && host.exists(file("build"))) {
    const addon = tryLoad("build");
    if (addon) return result("build", addon, "a local build (build/Release) is present; LUKV_PREBUILDS_ONLY=1 selects the prebuilt binaries");
    buildFailure = `; the local build ${failures.get("build")}`;
  }

  // Problems with CUDA found before loading anything (the CUDA binary's own probe says more once
  // loaded), each with what to do about it.
  const problems: { problem: string; fix?: string }[] = [];
  const hasCuda = host.exists(file("cuda"));
  if (!hasCuda) {
    // Under LUKV_PREBUILDS_ONLY a source build would be skipped too.
    const fix = prebuildsOnly
      ? `make it with \`npm run prebuilds\` in a checkout, with nvcc on the PATH, or unset LUKV_PREBUILDS_ONLY and build from source with nvcc on the PATH (${BUILD_FROM_SOURCE})`
      : `build it from source with nvcc on the PATH (${BUILD_FROM_SOURCE})`;
    problems.push({ problem: `lukv has no CUDA binary for ${tuple}`, fix });
  }
  if (driver === null) problems.push({ problem: NO_DRIVER, fix: "install the NVIDIA driver" });
  if (hasCuda && driver !== null) {
    const addon = tryLoad("cuda");
    const found = driver === undefined ? `the driver is not looked for on ${host.platform}` : `an NVIDIA driver was found (${driver})`;
    if (addon) return result("cuda", addon, found + buildFailure);
    problems.push({ problem: `the CUDA binary ${failures.get("cuda")}` });
  }
  const notes = problems.map((p) => (p.fix ? `${p.problem}: ${p.fix}` : p.problem));

  const cpu = tryLoad("cpu");
  if (cpu) return result("cpu", cpu, `the CUDA binary is not used: ${problems.map((p) => p.problem).join("; ")}${buildFailure}`, notes);

  if (!failures.has("cuda")) {
    const addon = tryLoad("cuda");
    // Once loaded, the CUDA binary's probe reports the driver itself: no notes.
    if (addon) return result("cuda", addon, `the CPU-only binary cannot be used (${failures.get("cpu")}); the CUDA binary also has the CPU backend${buildFailure}`);
  }
  if (!prebuildsOnly) throw noBinaryError(tuple, host, [...failures.values()], [FROM_SOURCE_FIX, SHIPPED]);
  // A source build is skipped while LUKV_PREBUILDS_ONLY is set: say so, and advise what gets past it.
  if (host.exists(file("build"))) {
    const skipped = `${rel.build} is present but was skipped because LUKV_PREBUILDS_ONLY=${host.env.LUKV_PREBUILDS_ONLY} is set`;
    throw noBinaryError(tuple, host, [skipped, ...failures.values()], ["unset LUKV_PREBUILDS_ONLY to use the local build", `or ${prebuildsFix(false)}`]);
  }
  throw noBinaryError(tuple, host, [...failures.values()], [prebuildsFix(false), `or unset LUKV_PREBUILDS_ONLY and ${FROM_SOURCE_FIX}`]);
}

function noBinaryError(tuple: string, host: LoaderHost, failures: string[], fixes: string[]): BackendUnavailableError {
  return new BackendUnavailableError(
    `lukv: no native binary could be loaded for ${tuple} from ${host.root}:\n` +
      failures.map((f) => `  - ${f}\n`).join("") +
      `To fix: ${fixes.join("; ")}.`,
  );
}

/** Where the dynamic linker would find libcuda.so.1, the NVIDIA driver's library; null if nowhere. Linux only. */
export function findCudaDriver(platform: string = process.platform, env: Record<string, string | undefined> = process.env): string | null | undefined {
  if (platform !== "linux") return undefined;
  const dirs = [...(env.LD_LIBRARY_PATH ?? "").split(":").filter(Boolean), ...DRIVER_DIRS];
  for (const dir of dirs) {
    const lib = path.join(dir, "libcuda.so.1");
    if (fs.existsSync(lib)) return lib;
  }
  // ldconfig's cache names the libraries of every folder the linker searches, wherever the driver put them.
  try {
    if (fs.readFileSync("/etc/ld.so.cache").includes("libcuda.so.1")) return "libcuda.so.1 in /etc/ld.so.cache";
  } catch {
    // no cache: the folders above are all there is
  }
  return null;
}

// Distribution library folders, the NVIDIA container toolkit's and WSL's.
const DRIVER_DIRS = [
  "/usr/lib/x86_64-linux-gnu",
  "/usr/lib/aarch64-linux-gnu",
  "/usr/lib64",
  "/usr/lib",
  "/lib64",
  "/usr/local/nvidia/lib64",
  "/usr/lib/wsl/lib",
];

// ELF e_machine of each Node architecture whose binaries the loader may meet, the names it prints,
// whether its binaries are 64-bit (e_ident's class) and little-endian (Node's ppc64 is ppc64le).
const ELF_MACHINES: Record<string, [number, string, boolean, boolean]> = {
  x64: [62, "x86-64", true, true],
  arm64: [183, "AArch64", true, true],
  ia32: [3, "x86 (32-bit)", false, true],
  arm: [40, "ARM (32-bit)", false, true],
  ppc64: [21, "PowerPC 64", true, true],
  s390x: [22, "IBM S/390", true, false],
  riscv64: [243, "RISC-V", true, true],
  loong64: [258, "LoongArch", true, true],
};

/**
 * Throws when `file` is an ELF shared object that this process cannot load, with the reason: one
 * built for another processor than `arch` (the dynamic loader says only "No such file or
 * directory"), or one shorter than its own headers say (an interrupted download or copy: the
 * dynamic loader maps such a file past its end and the process dies of SIGBUS on the first
 * access). A thrown error lets the loader try the next binary. Files of other formats are left to
 * the loader.
 */
export function checkElfBinary(file: string, arch: string = process.arch): void {
  const fd = fs.openSync(file, "r");
  try {
    const size = fs.fstatSync(fd).size;
    const head = Buffer.alloc(64);
    const got = fs.readSync(fd, head, 0, 64, 0);
    if (got < 4 || head.readUInt32BE(0) !== 0x7f454c46) return; // not ELF
    const wide = head[4] === 2, little = head[5] === 1;
    if (got < (wide ? 64 : 52)) throw new Error(`${file} is truncated: ${size} bytes, shorter than an ELF header`);
    const u16 = (b: Buffer, at: number) => (little ? b.readUInt16LE(at) : b.readUInt16BE(at));
    const u32 = (b: Buffer, at: number) => (little ? b.readUInt32LE(at) : b.readUInt32BE(at));
    // The dynamic loader reports a binary for another processor as "No such file or directory".
    const expected = ELF_MACHINES[arch], machine = u16(head, 0x12);
    // The architecture's byte order (ppc64 binaries come in both) and width, against the file's.
    const hostLittle = arch === process.arch ? os.endianness() === "LE" : expected?.[3];
    if (expected && (machine !== expected[0] || wide !== expected[2] || little !== hostLittle)) {
      const found = Object.values(ELF_MACHINES).find(([m]) => m === machine);
      const kind = (name: string, w: boolean, l: boolean) => `${name}, ${w ? 64 : 32}-bit ${l ? "little" : "big"}-endian`;
      throw new Error(
        `${file} is a binary for ${kind(found ? found[1] : `ELF machine ${machine}`, wide, little)}, not for this process's ` +
          `${kind(expected[1], expected[2], hostLittle !== false)} (${arch}): it was built or downloaded for another machine`,
      );
    }
    const word = (b: Buffer, at: number) => (wide ? Number(little ? b.readBigUInt64LE(at) : b.readBigUInt64BE(at)) : u32(b, at));
    const phoff = word(head, wide ? 0x20 : 0x1c), shoff = word(head, wide ? 0x28 : 0x20);
    const phentsize = u16(head, wide ? 0x36 : 0x2a), phnum = u16(head, wide ? 0x38 : 0x2c);
    const shentsize = u16(head, wide ? 0x3a : 0x2e), shnum = u16(head, wide ? 0x3c : 0x30);
    let need = Math.max(phoff + phentsize * phnum, shnum > 0 ? shoff + shentsize * shnum : 0);
    if (phoff + phentsize * phnum <= size && phnum > 0) {
      const table = Buffer.alloc(phentsize * phnum);
      fs.readSync(fd, table, 0, table.length, phoff);
      for (let i = 0; i < phnum; i++) {
        const at = i * phentsize;
        // p_offset and p_filesz: the bytes of each segment the loader maps.
        const offset = word(table, at + (wide ? 8 : 4)), filesz = word(table, at + (wide ? 0x20 : 0x10));
        need = Math.max(need, offset + filesz);
      }
    }
    if (need > size) throw new Error(`${file} is truncated: ${size} bytes where its ELF headers need ${need} (an interrupted download or copy?)`);
  } finally {
    fs.closeSync(fd);
  }
}

/** @internal the host of this process (exported for tests). */
export function nodeHost(root: string): LoaderHost {
  return {
    root,
    platform: process.platform,
    arch: process.arch,
    env: process.env,
    exists: (file) => fs.existsSync(file),
    findCudaDriver: () => findCudaDriver(),
    load: (file) => {
      checkElfBinary(file);
      return require(file) as NativeAddon;
    },
  };
}

let state: Loaded | undefined;

function loaded(): Loaded {
  state ??= loadBinary(nodeHost(packageRoot()));
  return state;
}

/** The addon, loaded once per process (see loadBinary for which binary). */
export function native(): NativeAddon {
  return loaded().addon;
}

/** The binary this process uses, and why. */
export function loadedBinary(): LoadedBinary {
  return { ...loaded().binary };
}

const statusOf = new WeakMap<Loaded, { info: NativeCudaInfo; reasons: string[] }>();

/** The CUDA probe of the loaded binary, and every reason the CUDA backend cannot be used (empty when it can). Probed once per binary. */
export function cudaStatus(from: Loaded = loaded()): { info: NativeCudaInfo; reasons: string[] } {
  const known = statusOf.get(from);
  if (known) return { info: { ...known.info }, reasons: [...known.reasons] };
  const info = from.addon.cudaInfo();
  const reasons = [...from.cudaNotes];
  if (info.compiled) {
    // The probe cannot tell a driver that is missing from one that did not load; the loader can.
    if (!info.usable && typeof from.driver === "string" && info.error?.startsWith(NO_DRIVER))
      reasons.push(
        `${from.driver} was found but the CUDA runtime could not load it (a broken or partial NVIDIA driver installation, or a file that is not the driver): reinstall the NVIDIA driver`,
      );
    else if (!info.usable) reasons.push(info.error ?? "the CUDA probe found no usable device");
  } else if (from.binary.kind !== "cpu") {
    reasons.push(compiledWithoutCuda(from.binary.kind));
  }
  // A binary without CUDA cannot say that the driver is missing too; without it, rebuilding with
  // CUDA (the advice above) would not be enough.
  // (The emulated build never needs one; the auto order notes it when it passes over the CUDA binary.)
  if (!info.compiled && from.driver === null && from.binary.kind !== "emu" && !from.cudaNotes.some((n) => n.startsWith(NO_DRIVER)))
    reasons.push(`${NO_DRIVER}: install the NVIDIA driver`);
  statusOf.set(from, { info, reasons });
  return { info: { ...info }, reasons: [...reasons] };
}

// CMake keeps the first configure's LUKV_CUDA and nvcc lookup in its cache; only a build from scratch sees new ones.
function compiledWithoutCuda(kind: BinaryKind): string {
  if (kind === "build")
    return (
      "the local build (build/Release) was compiled without CUDA: it was configured with LUKV_CUDA=OFF or without finding nvcc, " +
      "and the CMake cache in build/ keeps that through incremental builds, so rebuild it from scratch with nvcc on the PATH and " +
      "LUKV_CUDA unset (`npm run build:native` in a checkout, which is cmake-js rebuild and deletes build/ first, or in a project " +
      `that depends on lukv delete node_modules/lukv/build and run \`${BUILD_FROM_SOURCE}\`), or set LUKV_PREBUILDS_ONLY=1 to use the prebuilt binaries`
    );
  if (kind === "emu") return "the emulated build (build-emu/Release) was compiled without the emulator: delete build-emu/ and run `npm run build:emu`";
  return "the CUDA binary was compiled without CUDA: make it again with `npm run prebuilds -- --cuda` in a checkout (it fails when nvcc is missing), or reinstall lukv";
}

/** What `device: "auto"` resolves to, given cudaStatus(): CUDA when it can be used, else the CPU. */
export function autoDevice(reasons: string[], info?: NativeCudaInfo): { device: "cpu" | "cuda"; reason: string } {
  if (reasons.length === 0) {
    const what = info?.names ? `${info.names}` : "a CUDA device";
    return { device: "cuda", reason: `CUDA can be used (${what}${info?.emulated ? ", emulated on the CPU" : ""})` };
  }
  return { device: "cpu", reason: `CUDA cannot be used: ${reasons.join("; ")}` };
}

/** The message of the error `device: "cuda"` throws. */
export function cudaUnavailableMessage(reasons: string[]): string {
  return `device "cuda" was requested but cannot be used: ${reasons.join("; ")}. Use device "cpu" or "auto".`;
}

/**
 * The backend a cache gets for its `device` option: "cpu" for "cpu"; for "cuda" the CUDA backend,
 * or BackendUnavailableError listing every reason it cannot be used; for "auto" CUDA when it can be
 * used, else the CPU.
 */
export function resolveDevice(device: "auto" | "cpu" | "cuda"): "cpu" | "cuda" {
  if (device === "cpu") return "cpu";
  const { info, reasons } = cudaStatus();
  if (device === "cuda") {
    if (reasons.length) throw new BackendUnavailableError(cudaUnavailableMessage(reasons));
    return "cuda";
  }
  return autoDevice(reasons, info).device;
}
