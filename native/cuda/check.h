// CUDA failures as lukv::Error: every runtime call and every launch is checked, and nothing in
// the backend aborts the process. Include only from CUDA translation units.
#pragma once
#include <cuda_runtime.h>

#include "../core/errors.h"

namespace lukv {
namespace cuda {

// Throws lukv::Error for `e`, naming the call and where it was made. No device or an unusable
// driver becomes ErrorCode::BackendUnavailable, no memory OutOfMemory, anything else Internal.
[[noreturn]] void throwCudaError(cudaError_t e, const char* what, const char* file, int line);

// After a launch: the launch error, and with LUKV_CUDA_SYNC=1 in the environment also the
// kernel's own failure (the stream is synchronised so the error names the kernel that failed).
void checkLaunch(cudaStream_t stream, const char* kernel, const char* file, int line);

bool syncChecksEnabled();

}  // namespace cuda
}  // namespace lukv

#define LUKV_CUDA_CHECK(call)                                                           \
  do {                                                                                  \
    cudaError_t lukvErr_ = (call);                                                      \
    if (lukvErr_ != cudaSuccess) ::lukv::cuda::throwCudaError(lukvErr_, #call, __FILE__, __LINE__); \
  } while (0)
