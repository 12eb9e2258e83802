#include <cuda_runtime.h>

#include "probe.h"

namespace lukv {
namespace cuda {

namespace {
const char* const kNoDevice =
    "no CUDA device is present: check that nvidia-smi lists a GPU and that CUDA_VISIBLE_DEVICES does not hide it";
}  // namespace

ProbeResult probe() {
  ProbeResult r;
  cudaRuntimeGetVersion(&r.runtimeVersion);
  // With the static runtime this loads libcuda lazily: no driver shows up as an error here, not
  // as a failure to load the addon.
  cudaError_t e = cudaDriverGetVersion(&r.driverVersion);
  if (e == cudaSuccess && r.driverVersion == 0) {
    // The loader's words for the same finding (NO_DRIVER in ts/native.ts), with what to do.
    r.error = "no NVIDIA driver was found (libcuda.so.1 is not installed): install the NVIDIA driver";
    return r;
  }
  if (e == cudaSuccess && r.driverVersion < r.runtimeVersion) {
    r.error = "the NVIDIA driver supports CUDA " + std::to_string(r.driverVersion / 1000) + "." +
              std::to_string(r.driverVersion % 1000 / 10) + " but lukv was built with CUDA " +
              std::to_string(r.runtimeVersion / 1000) + "." + std::to_string(r.runtimeVersion % 1000 / 10) +
              ": update the NVIDIA driver";
  }
  int count = 0;
  e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    if (r.error.empty()) {
      if (e == cudaErrorNoDevice) r.error = kNoDevice;
      else if (e == cudaErrorInsufficientDriver) r.error = "the NVIDIA driver is missing or too old for CUDA " +
                                                           std::to_string(r.runtimeVersion / 1000) + "." +
                                                           std::to_string(r.runtimeVersion % 1000 / 10) +
                                                           ": install or update the NVIDIA driver";
      else r.error = std::string("cudaGetDeviceCount failed: ") + cudaGetErrorString(e) + ": check the driver and the GPU with nvidia-smi";
    }
    cudaGetLastError();
    return r;
  }
  r.devices = count;
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp p;
    if (cudaGetDeviceProperties(&p, i) == cudaSuccess) {
      if (!r.names.empty()) r.names += ", ";
      r.names += p.name;
    }
  }
  if (count == 0 && r.error.empty()) r.error = kNoDevice;
  r.usable = count > 0 && r.error.empty();
  return r;
}

}  // namespace cuda
}  // namespace lukv
