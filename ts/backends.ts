import * as os from "os";
import { invalid } from "./errors";
import { autoDevice, BinaryKind, cudaStatus, loadedBinary, native } from "./native";

/** What each backend can do on this machine, and which native binary this process uses. */
export interface Backends {
  /** The one native binary this process loaded, and why (see "Installing" in the README). */
  binary: {
    /** "build": build/Release from a source build; "cpu": the CPU-only prebuild; "cuda": the CUDA prebuild (which also has the CPU backend); "emu": the test build with emulated CUDA. */
    kind: BinaryKind;
    /** Absolute path of the .node file. */
    file: string;
    /** Why this binary was chosen. */
    reason: string;
  };
  /** What `device: "auto"` means here, and why. */
  auto: { device: "cpu" | "cuda"; reason: string };
  cpu: {
    /** Threads a cache uses by default (every core, up to 1024, when LUKV_THREADS is malformed). */
    threads: number;
    /** Why LUKV_THREADS cannot be used (a cache without the threads option then throws it); absent when it can. */
    threadsError?: string;
    /** Best kernel table on this processor. */
    simd: string;
    /** Every kernel table this processor can run, best first. */
    simdSupported: string[];
    /** The prefetch hint a cache uses by default on this processor (`prefetch: "auto"`). */
    prefetch: string;
  };
  cuda: {
    /** Whether the loaded binary contains the CUDA backend. */
    compiled: boolean;
    /** CUDA devices the probe found (0 when the binary has no CUDA). */
    devices: number;
    /** Whether `device: "cuda"` can be used. */
    usable: boolean;
    /** Every reason CUDA cannot be used, each with what to do; empty when it can. */
    reasons: string[];
    /** The reasons in one line; absent when CUDA can be used. */
    error?: string;
    /** CUDA runtime version the binary was built with, e.g. 13000 for 13.0 (CUDA binaries only). */
    runtimeVersion?: number;
    /** CUDA version the installed driver supports, 0 without a driver (CUDA binaries only). */
    driverVersion?: number;
    /** Names of the devices found, comma separated (CUDA binaries only). */
    names?: string;
    /** True in the test-only build whose CUDA kernels run in a CPU emulator (LUKV_BINARY=emu). */
    emulated?: boolean;
  };
}

/** Reports the CPU kernels, the CUDA state of this machine and the binary in use. Probes the GPU. */
export function backends(): Backends {
  const addon = native();
  const cpu = addon.cpuInfo();
  const { info, reasons } = cudaStatus();
  // A malformed LUKV_THREADS is reported, not thrown: this is the call that diagnoses a setup.
  let threads: number, threadsError: string | undefined;
  try {
    threads = defaultThreads();
  } catch (e) {
    threads = Math.min(os.availableParallelism(), MAX_THREADS);
    threadsError = (e as Error).message;
  }
  const cuda: Backends["cuda"] = { compiled: info.compiled, devices: info.devices, usable: reasons.length === 0, reasons };
  if (reasons.length) cuda.error = reasons.join("; ");
  if (info.compiled) {
    cuda.runtimeVersion = info.runtimeVersion;
    cuda.driverVersion = info.driverVersion;
    cuda.names = info.names;
    if (info.emulated) cuda.emulated = true;
  }
  return {
    binary: loadedBinary(),
    auto: autoDevice(reasons, info),
    cpu: { threads, ...(threadsError !== undefined ? { threadsError } : {}), simd: cpu.simd, simdSupported: cpu.simdSupported, prefetch: cpu.prefetch },
    cuda,
  };
}

/** @internal The most kernel threads a cache takes (the threads option and LUKV_THREADS). */
export const MAX_THREADS = 1024;

/** @internal The threads a cache gets without the threads option: LUKV_THREADS, else every core (up to MAX_THREADS). */
export function defaultThreads(): number {
  const raw = process.env.LUKV_THREADS;
  // Surrounding blanks are ignored, as in the other LUKV_ variables ("4 " from a shell script).
  const env = raw?.trim();
  if (env !== undefined && env !== "") {
    // Decimal digits only (Number() would also take "0x10" or "1e1"), and the threads option's cap.
    const n = /^[0-9]+$/.test(env) ? Number(env) : NaN;
    if (!(n >= 1 && n <= MAX_THREADS)) throw invalid("LUKV_THREADS", `integer between 1 and ${MAX_THREADS}`, raw);
    return n;
  }
  return Math.min(os.availableParallelism(), MAX_THREADS);
}
