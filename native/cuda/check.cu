#include "check.h"

#include <cstdlib>
#include <cstring>
#include <string>

namespace lukv {
namespace cuda {

namespace {
const char* baseName(const char* path) {
  const char* s = std::strrchr(path, '/');
  return s ? s + 1 : path;
}
}  // namespace

void throwCudaError(cudaError_t e, const char* what, const char* file, int line) {
  // Reading the error clears it unless it is sticky; either way the message carries it.
  cudaGetLastError();
  std::string msg = std::string("CUDA error ") + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ") in " + what +
                    " at " + baseName(file) + ":" + std::to_string(line);
  ErrorCode code = ErrorCode::Internal;
  switch (e) {
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
    case cudaErrorDevicesUnavailable:
    case cudaErrorNoKernelImageForDevice:
    case cudaErrorInvalidDevice:
    case cudaErrorSystemDriverMismatch:
    case cudaErrorCompatNotSupportedOnDevice:
      code = ErrorCode::BackendUnavailable;
      break;
    case cudaErrorMemoryAllocation:
      code = ErrorCode::OutOfMemory;
      msg += ": out of device memory";
      break;
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchFailure:
    case cudaErrorMisalignedAddress:
    case cudaErrorIllegalInstruction:
    case cudaErrorHardwareStackError:
    case cudaErrorAssert:
      msg += "; the CUDA context is no longer usable in this process";
      break;
    default:
      break;
  }
  throw Error(code, msg);
}

bool syncChecksEnabled() {
  static const bool on = [] {
    const char* v = std::getenv("LUKV_CUDA_SYNC");
    return v != nullptr && v[0] != '\0' && std::strcmp(v, "0") != 0;
  }();
  return on;
}

void checkLaunch(cudaStream_t stream, const char* kernel, const char* file, int line) {
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) throwCudaError(e, kernel, file, line);
  if (syncChecksEnabled()) {
    e = cudaStreamSynchronize(stream);
    if (e != cudaSuccess) throwCudaError(e, kernel, file, line);
  }
}

}  // namespace cuda
}  // namespace lukv
