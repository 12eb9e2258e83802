// The one place that loads the compiled addon, and the hand-written type of its surface.
// Users never see these objects: KVCache and Sequence hold them privately.
import * as fs from "fs";
import * as path from "path";
import load = require("node-gyp-build");
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
  dtype: number; // 0 f32, 1 f16, 2 bf16
  threads: number;
  simd: string;
  observationWindow: number;
}

export interface NativeCache {
  createSequence(): number;
  fork(seq: number): number;
  disposeSequence(seq: number): void;
  append(seq: number, layer: number, keys: Float32Array | Uint16Array, values: Float32Array | Uint16Array): void;
  attend(seq: number, layer: number, queries: Float32Array, scale: number): Float32Array;
  attendAsync(seq: number, layer: number, queries: Float32Array, scale: number): Promise<Float32Array>;
  lengths(seq: number): Int32Array;
  compress(seq: number, options: NativeCompressOptions): NativeReport;
  compressAsync(seq: number, options: NativeCompressOptions): Promise<NativeReport>;
  scores(seq: number, layer: number, options: NativeCompressOptions): Float32Array[];
  accumulate(seq: number, on: boolean): void;
  positions(seq: number, layer: number, head: number): Int32Array;
  appended(seq: number, layer: number): number;
  readRows(seq: number, layer: number, head: number, values: boolean): Float32Array;
  usage(): NativeUsage;
  info(): { simd: string; threads: number; device: string };
  dispose(): void;
}

export interface NativeCpuInfo {
  simd: string;
  simdSupported: string[];
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
}

export interface NativeAddon {
  NativeCache: new (options: NativeCacheOptions) => NativeCache;
  cpuInfo(): NativeCpuInfo;
  cudaInfo(): NativeCudaInfo;
  /** Seconds per repeat of a plain multi-threaded read of `bytes` bytes. */
  memoryReadBenchmark(bytes: number, threads: number, repeats: number): number[];
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

let addon: NativeAddon | undefined;

/** Loads the addon once (a local build in build/Release first, else a prebuilt binary). */
export function native(): NativeAddon {
  if (!addon) {
    const root = packageRoot();
    try {
      addon = load(root) as NativeAddon;
    } catch (e) {
      const msg = e instanceof Error ? e.message : String(e);
      throw new Error(
        `lukv: could not load the native addon from ${root}: ${msg}\n` +
          `Build it from source with \`npm run build:native\` (needs cmake and a C++17 compiler), ` +
          `or reinstall lukv so that a prebuilt binary for ${process.platform}-${process.arch} is used.`,
      );
    }
  }
  return addon;
}
