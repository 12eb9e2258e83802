// The loader's choice of binary and its CUDA reasons, on made-up machines (every combination of
// local build, prebuilds, driver and load failure), then on this checkout for real.
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import {
  cudaStatus,
  cudaUnavailableMessage,
  findCudaDriver,
  loadBinary,
  NO_DRIVER,
  Loaded,
  LoaderHost,
  NativeAddon,
  NativeCudaInfo,
  autoDevice,
} from "../ts/native";
import { backends, KVCache } from "../ts";

const ROOT = "/pkg";
const BUILD = "/pkg/build/Release/lukv.node";
const CPU = "/pkg/prebuilds/linux-x64/lukv.node";
const CUDA = "/pkg/prebuilds/linux-x64-cuda/lukv.node";
const DRIVER = "/usr/lib/x86_64-linux-gnu/libcuda.so.1";

const NO_CUDA_BUILD: NativeCudaInfo = {
  compiled: false,
  usable: false,
  devices: 0,
  error: "this build of lukv was compiled without CUDA (nvcc was not found or LUKV_CUDA=OFF)",
};
const CUDA_NO_DRIVER: NativeCudaInfo = {
  compiled: true,
  usable: false,
  devices: 0,
  runtimeVersion: 13000,
  driverVersion: 0,
  names: "",
  error: "no NVIDIA driver was found (libcuda.so.1 is not installed): install the NVIDIA driver",
};

// A stand-in addon that only answers cudaInfo(); `name` tells which file it came from.
function fakeAddon(name: string, cuda: NativeCudaInfo): NativeAddon {
  return { name, cudaInfo: () => cuda } as unknown as NativeAddon;
}

interface Machine {
  files?: string[]; // binaries present
  broken?: Record<string, string>; // file -> load error
  driver?: string | null; // findCudaDriver() result
  env?: Record<string, string>;
  platform?: string;
  arch?: string;
}

function host(m: Machine): LoaderHost & { loads: string[] } {
  const files = new Set(m.files ?? []);
  const loads: string[] = [];
  return {
    loads,
    root: ROOT,
    platform: m.platform ?? "linux",
    arch: m.arch ?? "x64",
    env: m.env ?? {},
    exists: (f) => files.has(f),
    findCudaDriver: () => (m.driver === undefined ? null : m.driver),
    load: (f) => {
      loads.push(f);
      if (m.broken?.[f]) throw new Error(m.broken[f]);
      return fakeAddon(f, f === CPU ? NO_CUDA_BUILD : f === CUDA ? CUDA_NO_DRIVER : NO_CUDA_BUILD);
    },
  };
}

function summary(l: Loaded) {
  return { kind: l.binary.kind, file: l.binary.file, reason: l.binary.reason, cudaNotes: l.cudaNotes };
}

describe("loadBinary picks one binary", () => {
  test("a local build wins when present", () => {
    const h = host({ files: [BUILD, CPU, CUDA], driver: DRIVER });
    expect(summary(loadBinary(h))).toEqual({
      kind: "build",
      file: BUILD,
      reason: "a local build (build/Release) is present; LUKV_PREBUILDS_ONLY=1 selects the prebuilt binaries",
      cudaNotes: [],
    });
    expect(h.loads).toEqual([BUILD]);
  });

  test("without a driver the CPU binary is used and the CUDA binary is never loaded", () => {
    const h = host({ files: [BUILD, CPU, CUDA], env: { LUKV_PREBUILDS_ONLY: "1" } });
    const l = loadBinary(h);
    expect(summary(l)).toEqual({
      kind: "cpu",
      file: CPU,
      reason: "the CUDA binary is not used: no NVIDIA driver was found (libcuda.so.1 is not installed)",
      cudaNotes: ["no NVIDIA driver was found (libcuda.so.1 is not installed): install the NVIDIA driver"],
    });
    expect(h.loads).toEqual([CPU]);
    expect(cudaUnavailableMessage(cudaStatus(l).reasons)).toBe(
      'device "cuda" was requested but cannot be used: no NVIDIA driver was found (libcuda.so.1 is not installed): ' +
        "install the NVIDIA driver. " +
        'Use device "cpu" or "auto".',
    );
  });

  test("LUKV_PREBUILDS_ONLY=0 still uses the local build", () => {
    expect(loadBinary(host({ files: [BUILD, CPU], env: { LUKV_PREBUILDS_ONLY: "0" } })).binary.kind).toBe("build");
  });

  test("with a driver the CUDA binary is used, and its probe supplies the reasons", () => {
    const h = host({ files: [CPU, CUDA], driver: DRIVER });
    const l = loadBinary(h);
    expect(summary(l)).toEqual({ kind: "cuda", file: CUDA, reason: `an NVIDIA driver was found (${DRIVER})`, cudaNotes: [] });
    expect(h.loads).toEqual([CUDA]);
    // The probe says "not installed" (the runtime could not load libcuda), but the loader found the
    // file: one reason, that names it (it said both "found" and "not installed").
    expect(cudaStatus(l).reasons).toEqual([
      `${DRIVER} was found but the CUDA runtime could not load it (a broken or partial NVIDIA driver installation, or a file that is not the driver): reinstall the NVIDIA driver`,
    ]);
  });

  test("a CUDA binary that fails to load falls back to the CPU binary and says why", () => {
    const h = host({ files: [CPU, CUDA], driver: DRIVER, broken: { [CUDA]: "libfoo.so: cannot open shared object file\n(line two)" } });
    const l = loadBinary(h);
    const failure = "the CUDA binary prebuilds/linux-x64-cuda/lukv.node failed to load: libfoo.so: cannot open shared object file (line two)";
    expect(summary(l)).toEqual({ kind: "cpu", file: CPU, reason: `the CUDA binary is not used: ${failure}`, cudaNotes: [failure] });
    expect(h.loads).toEqual([CUDA, CPU]);
  });

  test("a platform without a CUDA binary lists that and the missing driver", () => {
    const arm = "/pkg/prebuilds/linux-arm64/lukv.node";
    const l = loadBinary(host({ files: [arm], arch: "arm64" }));
    expect(summary(l)).toEqual({
      kind: "cpu",
      file: arm,
      reason:
        "the CUDA binary is not used: lukv has no CUDA binary for linux-arm64; no NVIDIA driver was found (libcuda.so.1 is not installed)",
      cudaNotes: [
        "lukv has no CUDA binary for linux-arm64: build it from source with nvcc on the PATH (LUKV_BUILD_FROM_SOURCE=1 npm rebuild lukv)",
        "no NVIDIA driver was found (libcuda.so.1 is not installed): install the NVIDIA driver",
      ],
    });
  });

  test("where the driver is not looked for, the CUDA binary is tried first", () => {
    const cudaWin = "/pkg/prebuilds/win32-x64-cuda/lukv.node";
    const h = host({ files: [cudaWin], platform: "win32" });
    h.findCudaDriver = () => undefined;
    expect(loadBinary(h).binary).toEqual({ kind: "cuda", file: cudaWin, reason: "the driver is not looked for on win32" });
  });

  test("without a CPU binary the CUDA binary serves the CPU even without a driver", () => {
    const h = host({ files: [CUDA] });
    const l = loadBinary(h);
    expect(summary(l)).toEqual({
      kind: "cuda",
      file: CUDA,
      reason:
        "the CPU-only binary cannot be used (prebuilds/linux-x64/lukv.node does not exist); the CUDA binary also has the CPU backend",
      cudaNotes: [],
    });
    expect(cudaStatus(l).reasons).toEqual(["no NVIDIA driver was found (libcuda.so.1 is not installed): install the NVIDIA driver"]);
  });

  test("a local build that fails to load is skipped and named in the reason", () => {
    const l = loadBinary(host({ files: [BUILD, CPU], broken: { [BUILD]: "bad ELF" } }));
    expect(l.binary.kind).toBe("cpu");
    expect(l.binary.reason).toBe(
      "the CUDA binary is not used: lukv has no CUDA binary for linux-x64; no NVIDIA driver was found (libcuda.so.1 is not installed); " +
        "the local build build/Release/lukv.node failed to load: bad ELF",
    );
  });

  test("a local build without CUDA says that only a build from scratch gets CUDA", () => {
    const l = loadBinary(host({ files: [BUILD] }));
    expect(cudaStatus(l).reasons).toEqual([
      "the local build (build/Release) was compiled without CUDA: it was configured with LUKV_CUDA=OFF or without finding nvcc, " +
        "and the CMake cache in build/ keeps that through incremental builds, so rebuild it from scratch with nvcc on the PATH and " +
        "LUKV_CUDA unset (`npm run build:native` in a checkout, which is cmake-js rebuild and deletes build/ first, or in a project " +
        "that depends on lukv delete node_modules/lukv/build and run `LUKV_BUILD_FROM_SOURCE=1 npm rebuild lukv`), " +
        "or set LUKV_PREBUILDS_ONLY=1 to use the prebuilt binaries",
      // A binary without CUDA cannot probe for the driver: a rebuild alone would not be enough.
      `${NO_DRIVER}: install the NVIDIA driver`,
    ]);
    // With a driver, only the rebuild is asked for.
    expect(cudaStatus(loadBinary(host({ files: [BUILD], driver: DRIVER }))).reasons).toHaveLength(1);
  });

  test("a CUDA prebuild or emulated build without CUDA says how to make that binary again", () => {
    const cuda = host({ files: [CUDA], env: { LUKV_BINARY: "cuda" } });
    cuda.load = (f) => fakeAddon(f, NO_CUDA_BUILD);
    expect(cudaStatus(loadBinary(cuda)).reasons).toEqual([
      "the CUDA binary was compiled without CUDA: make it again with `npm run prebuilds -- --cuda` in a checkout " +
        "(it fails when nvcc is missing), or reinstall lukv",
      `${NO_DRIVER}: install the NVIDIA driver`,
    ]);
    // (no driver: the emulated build never needs one, so none is asked for)
    const emu = host({ files: ["/pkg/build-emu/Release/lukv.node"], env: { LUKV_BINARY: "emu" } });
    expect(cudaStatus(loadBinary(emu)).reasons).toEqual([
      "the emulated build (build-emu/Release) was compiled without the emulator: delete build-emu/ and run `npm run build:emu`",
    ]);
    // LUKV_BINARY=cpu on a machine without a driver: the driver is named too (only the unset was advised).
    const cpu = loadBinary(host({ files: [CPU], env: { LUKV_BINARY: "cpu" } }));
    expect(cudaStatus(cpu).reasons).toEqual(["LUKV_BINARY=cpu selects the CPU-only binary: unset it", `${NO_DRIVER}: install the NVIDIA driver`]);
  });

  test("under LUKV_PREBUILDS_ONLY a missing CUDA prebuild is not advised a source build alone", () => {
    const l = loadBinary(host({ files: [BUILD, CPU], env: { LUKV_PREBUILDS_ONLY: "1" } }));
    expect(l.binary.kind).toBe("cpu");
    expect(l.cudaNotes).toEqual([
      "lukv has no CUDA binary for linux-x64: make it with `npm run prebuilds` in a checkout, with nvcc on the PATH, " +
        "or unset LUKV_PREBUILDS_ONLY and build from source with nvcc on the PATH (LUKV_BUILD_FROM_SOURCE=1 npm rebuild lukv)",
      "no NVIDIA driver was found (libcuda.so.1 is not installed): install the NVIDIA driver",
    ]);
  });

  test("LUKV_BINARY forces one binary, even the CUDA one without a driver", () => {
    const h = host({ files: [BUILD, CPU, CUDA], env: { LUKV_BINARY: "cuda" } });
    expect(summary(loadBinary(h))).toEqual({ kind: "cuda", file: CUDA, reason: "LUKV_BINARY=cuda", cudaNotes: [] });
    expect(h.loads).toEqual([CUDA]);
    const cpu = loadBinary(host({ files: [BUILD, CPU, CUDA], driver: DRIVER, env: { LUKV_BINARY: "CPU" } }));
    expect(summary(cpu)).toEqual({
      kind: "cpu",
      file: CPU,
      reason: "LUKV_BINARY=cpu",
      cudaNotes: ["LUKV_BINARY=cpu selects the CPU-only binary: unset it"],
    });
    expect(loadBinary(host({ files: [BUILD, CPU], env: { LUKV_BINARY: "auto" } })).binary.kind).toBe("build");
  });

  test("LUKV_BINARY with a missing binary does not fall back", () => {
    expect(() => loadBinary(host({ files: [CPU], env: { LUKV_BINARY: "cuda" } }))).toThrow(
      "lukv: no native binary could be loaded for linux-x64 from /pkg:\n" +
        "  - prebuilds/linux-x64-cuda/lukv.node does not exist\n" +
        "To fix: unset LUKV_BINARY to let lukv choose; or make the prebuilt binaries with `npm run prebuilds` in a checkout " +
        "(the CUDA one only when nvcc is on the PATH), or reinstall lukv, whose npm package carries them for linux-x64 (glibc >= 2.34).",
    );
  });

  test("LUKV_BINARY=cpu with a missing prebuild and a local build: advises LUKV_BINARY=build, not a source build", () => {
    const h = host({ files: [BUILD], env: { LUKV_BINARY: "cpu" } });
    expect(() => loadBinary(h)).toThrow(
      "lukv: no native binary could be loaded for linux-x64 from /pkg:\n" +
        "  - prebuilds/linux-x64/lukv.node does not exist\n" +
        "To fix: set LUKV_BINARY=build to use the local build (build/Release/lukv.node is present), " +
        "or unset LUKV_BINARY to let lukv choose; or make the prebuilt binaries with `npm run prebuilds` in a checkout, " +
        "or reinstall lukv, whose npm package carries them for linux-x64 (glibc >= 2.34).",
    );
    expect(h.loads).toEqual([]);
  });

  test("LUKV_BINARY=build with no local build advises a source build", () => {
    expect(() => loadBinary(host({ files: [CPU, CUDA], env: { LUKV_BINARY: "build" } }))).toThrow(
      "lukv: no native binary could be loaded for linux-x64 from /pkg:\n" +
        "  - build/Release/lukv.node does not exist\n" +
        "To fix: unset LUKV_BINARY to let lukv choose; build it from source: `LUKV_BUILD_FROM_SOURCE=1 npm rebuild lukv` " +
        "(needs CMake >= 3.18 and a C++17 compiler), or `npm run build:native` in a checkout; " +
        "lukv ships prebuilt binaries for linux-x64 (glibc >= 2.34).",
    );
  });

  test("LUKV_BINARY=emu without the emulated build advises npm run build:emu", () => {
    expect(() => loadBinary(host({ files: [BUILD, CPU], env: { LUKV_BINARY: "emu" } }))).toThrow(
      "lukv: no native binary could be loaded for linux-x64 from /pkg:\n" +
        "  - build-emu/Release/lukv.node does not exist\n" +
        "To fix: make it with `npm run build:emu` in a checkout (the test-only build whose CUDA kernels run in a CPU emulator); " +
        "or unset LUKV_BINARY to let lukv choose.",
    );
  });

  test("LUKV_PREBUILDS_ONLY with no prebuild names the skipped local build and does not advise building it again", () => {
    const h = host({ files: [BUILD], env: { LUKV_PREBUILDS_ONLY: "1" } });
    expect(() => loadBinary(h)).toThrow(
      "lukv: no native binary could be loaded for linux-x64 from /pkg:\n" +
        "  - build/Release/lukv.node is present but was skipped because LUKV_PREBUILDS_ONLY=1 is set\n" +
        "  - prebuilds/linux-x64/lukv.node does not exist\n" +
        "  - prebuilds/linux-x64-cuda/lukv.node does not exist\n" +
        "To fix: unset LUKV_PREBUILDS_ONLY to use the local build; or make the prebuilt binaries with `npm run prebuilds` " +
        "in a checkout, or reinstall lukv, whose npm package carries them for linux-x64 (glibc >= 2.34).",
    );
    expect(h.loads).toEqual([]);
  });

  test("LUKV_PREBUILDS_ONLY with no prebuild and no local build: prebuilds first, a source build only with the variable unset", () => {
    expect(() => loadBinary(host({ files: [CPU], broken: { [CPU]: "GLIBC_2.34 not found" }, env: { LUKV_PREBUILDS_ONLY: "yes" } }))).toThrow(
      "lukv: no native binary could be loaded for linux-x64 from /pkg:\n" +
        "  - prebuilds/linux-x64/lukv.node failed to load: GLIBC_2.34 not found\n" +
        "  - prebuilds/linux-x64-cuda/lukv.node does not exist\n" +
        "To fix: make the prebuilt binaries with `npm run prebuilds` in a checkout, or reinstall lukv, whose npm package carries them " +
        "for linux-x64 (glibc >= 2.34); or unset LUKV_PREBUILDS_ONLY and build it from source: `LUKV_BUILD_FROM_SOURCE=1 npm rebuild lukv` " +
        "(needs CMake >= 3.18 and a C++17 compiler), or `npm run build:native` in a checkout.",
    );
  });

  test("an unknown LUKV_BINARY is an InvalidArgumentError", () => {
    expect(() => loadBinary(host({ files: [CPU], env: { LUKV_BINARY: "gpu" } }))).toThrow(
      'Expected one of "auto", "build", "cpu", "cuda", "emu" for LUKV_BINARY but received "gpu" of type string',
    );
  });

  test("LUKV_BINARY=emu loads the emulated test build and nothing else", () => {
    const EMU = "/pkg/build-emu/Release/lukv.node";
    const h = host({ files: [BUILD, CPU, EMU], env: { LUKV_BINARY: "emu" } });
    expect(summary(loadBinary(h))).toEqual({ kind: "emu", file: EMU, reason: "LUKV_BINARY=emu", cudaNotes: [] });
    expect(h.loads).toEqual([EMU]);
    expect(loadBinary(host({ files: [BUILD, CPU, EMU] })).binary.kind).toBe("build");
  });

  test("a binary whose probe finds a usable device: no reasons, and auto is CUDA", () => {
    const usable: NativeCudaInfo = { compiled: true, usable: true, devices: 1, runtimeVersion: 13000, driverVersion: 13000, names: "NVIDIA H100" };
    const h = host({ files: [CUDA], driver: DRIVER });
    h.load = (f) => fakeAddon(f, usable);
    const l = loadBinary(h);
    expect(cudaStatus(l).reasons).toEqual([]);
    expect(autoDevice(cudaStatus(l).reasons, cudaStatus(l).info)).toEqual({ device: "cuda", reason: "CUDA can be used (NVIDIA H100)" });
    expect(autoDevice(["no CUDA device is present"])).toEqual({ device: "cpu", reason: "CUDA cannot be used: no CUDA device is present" });
  });

  test("nothing loadable: one BackendUnavailableError listing every file tried", () => {
    let err: unknown;
    try {
      loadBinary(host({ files: [CPU], broken: { [CPU]: "GLIBC_2.34 not found" }, arch: "x64" }));
    } catch (e) {
      err = e;
    }
    expect(err).toMatchObject({ name: "BackendUnavailableError", code: "ERR_LUKV_BACKEND_UNAVAILABLE" });
    expect((err as Error).message).toBe(
      "lukv: no native binary could be loaded for linux-x64 from /pkg:\n" +
        "  - prebuilds/linux-x64/lukv.node failed to load: GLIBC_2.34 not found\n" +
        "  - prebuilds/linux-x64-cuda/lukv.node does not exist\n" +
        "To fix: build it from source: `LUKV_BUILD_FROM_SOURCE=1 npm rebuild lukv` (needs CMake >= 3.18 and a C++17 compiler), " +
        "or `npm run build:native` in a checkout; lukv ships prebuilt binaries for linux-x64 (glibc >= 2.34).",
    );
  });
});

describe("findCudaDriver", () => {
  test("finds libcuda.so.1 in LD_LIBRARY_PATH", () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "lukv-driver-"));
    try {
      fs.writeFileSync(path.join(dir, "libcuda.so.1"), "");
      expect(findCudaDriver("linux", { LD_LIBRARY_PATH: `/nonexistent:${dir}` })).toBe(path.join(dir, "libcuda.so.1"));
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test("does not look outside Linux", () => {
    expect(findCudaDriver("darwin", {})).toBeUndefined();
  });
});

describe("backends() in this checkout", () => {
  // The tests run against the local build unless LUKV_PREBUILDS_ONLY or LUKV_BINARY say otherwise.
  const forced = Boolean(process.env.LUKV_PREBUILDS_ONLY || process.env.LUKV_BINARY);

  (forced ? test.skip : test)("uses build/Release and reports whether CUDA can be used", () => {
    const b = backends();
    expect(b.binary.kind).toBe("build");
    expect(b.binary.file).toBe(path.resolve(__dirname, "..", "build", "Release", "lukv.node"));
    expect(b.binary.reason).toBe("a local build (build/Release) is present; LUKV_PREBUILDS_ONLY=1 selects the prebuilt binaries");
    expect(b.cuda.usable).toBe(b.cuda.reasons.length === 0);
    if (b.cuda.usable) {
      expect(b.auto.device).toBe("cuda");
      return;
    }
    expect(b.cuda.error).toBe(b.cuda.reasons.join("; "));
    expect(b.auto).toEqual({ device: "cpu", reason: `CUDA cannot be used: ${b.cuda.error}` });
    if (b.cuda.compiled && findCudaDriver() === null) {
      // The machines this runs on in CI: nvcc, no driver.
      expect(b.cuda.reasons).toEqual(["no NVIDIA driver was found (libcuda.so.1 is not installed): install the NVIDIA driver"]);
      expect(b.cuda.driverVersion).toBe(0);
    }
    if (!b.cuda.compiled) expect(b.cuda.reasons[0]).toMatch(/^the local build \(build\/Release\) was compiled without CUDA: /);
  });

  test('simd "auto" takes the best table, but AVX2 over AVX-512 for a headDim that is a multiple of 8 and not of 16; a table given is kept', () => {
    const supported = backends().cpu.simdSupported;
    const tableFor = (headDim: number, simd?: "avx512") => {
      const cache = new KVCache({ layers: 1, kvHeads: 1, headDim, maxTokens: 16, device: "cpu", ...(simd ? { simd } : {}) });
      try {
        return cache.config.simd;
      } finally {
        cache.dispose();
      }
    };
    const halves = supported[0] === "avx512" && supported.includes("avx2") ? "avx2" : supported[0];
    expect([64, 72, 100, 104, 128].map((d) => tableFor(d))).toEqual([supported[0], halves, supported[0], halves, supported[0]]);
    if (supported[0] === "avx512") expect(tableFor(72, "avx512")).toBe("avx512");
  });

  // The hint "auto" resolves to, from /proc/cpuinfo as Linux reports the processor: a second reading
  // of vendor and family, independent of the addon's cpuid code.
  const cpuinfo = process.platform === "linux" && process.arch === "x64" ? fs.readFileSync("/proc/cpuinfo", "utf8") : "";
  (cpuinfo ? test : test.skip)("the default prefetch hint follows the processor's vendor and family", () => {
    const field = (name: string) => new RegExp(`^${name}\\s*:\\s*(.*)$`, "m").exec(cpuinfo)?.[1].trim();
    const vendor = field("vendor_id"), family = Number(field("cpu family"));
    const expected = vendor === "AuthenticAMD" ? (family >= 26 ? "nta" : "t2") : vendor === "GenuineIntel" ? "t2" : "t0";
    expect(backends().cpu.prefetch).toBe(expected);
    const cache = new KVCache({ layers: 1, kvHeads: 1, headDim: 8 });
    expect(cache.config.prefetch).toBe(expected);
    cache.dispose();
  });

  test('without a usable GPU, device "cuda" throws the loader\'s message and "auto" is the CPU', () => {
    const options = { layers: 1, kvHeads: 1, headDim: 8 };
    if (backends().cuda.usable) return; // a GPU machine: the device suite covers it
    let err: unknown;
    try {
      new KVCache({ ...options, device: "cuda" });
    } catch (e) {
      err = e;
    }
    expect(err).toMatchObject({ name: "BackendUnavailableError", code: "ERR_LUKV_BACKEND_UNAVAILABLE" });
    expect((err as Error).message).toBe(cudaUnavailableMessage(backends().cuda.reasons));
    const cache = new KVCache({ ...options, device: "auto" });
    expect(cache.config.device).toBe("cpu");
    cache.dispose();
  });
});

describe("a binary this process cannot load (truncated, or for another processor)", () => {
  const built = path.join(__dirname, "..", "build", "Release", "lukv.node");
  const present = fs.existsSync(built) ? test : test.skip;
  present("is refused with a reason, and the loader goes on to the next binary (it crashed the process with SIGBUS)", () => {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), "lukv-truncated-"));
    try {
      const whole = fs.readFileSync(built);
      for (const [dir, bytes] of [["linux-x64", whole.subarray(0, whole.length >> 1)], ["linux-x64-cuda", whole]] as const) {
        fs.mkdirSync(path.join(root, "prebuilds", dir), { recursive: true });
        fs.writeFileSync(path.join(root, "prebuilds", dir, "lukv.node"), bytes);
      }
      // In a child process: without the check, loading the truncated file kills the process.
      const script = `
        const { loadBinary, nodeHost } = require(${JSON.stringify(path.join(__dirname, "..", "dist", "ts", "native.js"))});
        const host = { ...nodeHost(${JSON.stringify(root)}), env: { LUKV_PREBUILDS_ONLY: "1" }, findCudaDriver: () => null };
        const l = loadBinary(host);
        console.log(JSON.stringify({ kind: l.binary.kind, reason: l.binary.reason }));`;
      const run = require("child_process").spawnSync(process.execPath, ["-e", script], { encoding: "utf8" });
      expect([run.status, run.signal, run.stderr]).toEqual([0, null, ""]);
      const got = JSON.parse(run.stdout);
      expect(got.kind).toBe("cuda");
      expect(got.reason).toMatch(/prebuilds\/linux-x64\/lukv\.node failed to load: .*is truncated: \d+ bytes where its ELF headers need \d+/);
    } finally {
      fs.rmSync(root, { recursive: true, force: true });
    }
  });

  const onX64 = fs.existsSync(built) && process.arch === "x64" ? test : test.skip;
  onX64("a binary for another processor is refused naming both processors, and the loader goes on (the dynamic loader said 'No such file or directory')", () => {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), "lukv-foreign-"));
    try {
      const foreign = Buffer.from(fs.readFileSync(built));
      foreign.writeUInt16LE(183, 0x12); // e_machine: AArch64
      for (const [dir, bytes] of [["linux-x64", foreign], ["linux-x64-cuda", fs.readFileSync(built)]] as const) {
        fs.mkdirSync(path.join(root, "prebuilds", dir), { recursive: true });
        fs.writeFileSync(path.join(root, "prebuilds", dir, "lukv.node"), bytes);
      }
      const { loadBinary, nodeHost } = require("../ts/native") as typeof import("../ts/native");
      const l = loadBinary({ ...nodeHost(root), env: { LUKV_PREBUILDS_ONLY: "1" }, findCudaDriver: () => null });
      expect(l.binary.kind).toBe("cuda");
      expect(l.binary.reason).toMatch(
        /prebuilds\/linux-x64\/lukv\.node failed to load: .*lukv\.node is a binary for AArch64, 64-bit little-endian, not for this process's x86-64, 64-bit little-endian \(x64\): it was built or downloaded for another machine/,
      );
    } finally {
      fs.rmSync(root, { recursive: true, force: true });
    }
  });

  test("the processor check names an unknown machine by its number and passes files for the given architecture", () => {
    const { checkElfBinary } = require("../ts/native") as typeof import("../ts/native");
    const file = path.join(os.tmpdir(), `lukv-machine-${process.pid}.node`);
    const head = Buffer.alloc(64);
    head.writeUInt32BE(0x7f454c46, 0);
    head[4] = 2; // 64-bit
    head[5] = 1; // little-endian
    try {
      head.writeUInt16LE(9999, 0x12);
      fs.writeFileSync(file, head);
      expect(() => checkElfBinary(file, "arm64")).toThrow(
        `${file} is a binary for ELF machine 9999, 64-bit little-endian, not for this process's AArch64, 64-bit little-endian (arm64)`,
      );
      head.writeUInt16LE(183, 0x12);
      fs.writeFileSync(file, head);
      expect(() => checkElfBinary(file, "arm64")).not.toThrow();
      expect(() => checkElfBinary(file, "x64")).toThrow(
        `${file} is a binary for AArch64, 64-bit little-endian, not for this process's x86-64, 64-bit little-endian (x64)`,
      );
      expect(() => checkElfBinary(file, "mips")).not.toThrow(); // an architecture without an entry: left to the loader
      // The same machine in another width or byte order (ppc64 comes in both orders).
      head[4] = 1; // 32-bit: its header is 52 bytes, which the 64 written hold
      head.writeUInt16LE(62, 0x12);
      fs.writeFileSync(file, head);
      expect(() => checkElfBinary(file, "x64")).toThrow(
        `${file} is a binary for x86-64, 32-bit little-endian, not for this process's x86-64, 64-bit little-endian (x64)`,
      );
      head[4] = 2;
      head[5] = 2; // big-endian: e_machine is read big-endian too
      head.writeUInt16BE(62, 0x12);
      fs.writeFileSync(file, head);
      expect(() => checkElfBinary(file, "x64")).toThrow(
        `${file} is a binary for x86-64, 64-bit big-endian, not for this process's x86-64, 64-bit little-endian (x64)`,
      );
    } finally {
      fs.rmSync(file, { force: true });
    }
  });

  test("whole files and files of other formats pass the check", () => {
    const { checkElfBinary } = require("../ts/native") as typeof import("../ts/native");
    expect(() => checkElfBinary(process.execPath)).not.toThrow();
    const text = path.join(os.tmpdir(), `lukv-not-elf-${process.pid}.node`);
    fs.writeFileSync(text, "not a shared object");
    try {
      expect(() => checkElfBinary(text)).not.toThrow(); // the loader's own error names it
    } finally {
      fs.rmSync(text);
    }
  });
});
