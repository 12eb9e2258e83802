import * as os from "os";
import { native } from "./native";

/** What each backend can do on this machine. */
export interface Backends {
  cpu: {
    /** Threads a cache uses by default. */
    threads: number;
    /** Best kernel table on this processor. */
    simd: string;
    /** Every kernel table this processor can run, best first. */
    simdSupported: string[];
  };
  cuda: {
    /** Whether this binary contains the CUDA backend. */
    compiled: boolean;
    /** Usable CUDA devices. */
    devices: number;
    /** Whether `device: "cuda"` can be used. */
    usable: boolean;
    /** Why CUDA cannot be used, when it cannot. */
    error?: string;
  };
}

/** Reports the CPU kernels and the CUDA state of this machine. */
export function backends(): Backends {
  const addon = native();
  const cpu = addon.cpuInfo();
  const cuda = addon.cudaInfo();
  const envThreads = Number(process.env.LUKV_THREADS);
  const threads = Number.isInteger(envThreads) && envThreads > 0 ? envThreads : os.availableParallelism();
  const usable = false; // the CUDA cache is not implemented yet; the probe below says what the machine has
  const error = cuda.error ?? (cuda.usable ? "this version of lukv has no CUDA cache yet" : undefined);
  return {
    cpu: { threads, simd: cpu.simd, simdSupported: cpu.simdSupported },
    cuda: { compiled: cuda.compiled, devices: cuda.devices, usable, ...(error ? { error } : {}) },
  };
}
