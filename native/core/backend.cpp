#include "backend.h"

namespace lukv {

std::unique_ptr<Backend> makeBackend(const BackendConfig& config) {
  if (config.device == "cpu") return makeCpuBackend(config);
  if (config.device == "cuda") {
    std::string why;
    if (!cudaBackendUsable(&why)) throw Error(ErrorCode::BackendUnavailable, why);
    return makeCudaBackend(config);
  }
  throwInvalid("Expected \"cpu\" or \"cuda\" for device but received \"" + config.device + "\"");
}

#ifndef LUKV_HAS_CUDA_BACKEND
bool cudaBackendUsable(std::string* why) {
  if (why) *why = "this build of lukv has no CUDA backend (nvcc was not found or LUKV_CUDA=OFF)";
  return false;
}
std::unique_ptr<Backend> makeCudaBackend(const BackendConfig&) {
  std::string why;
  cudaBackendUsable(&why);
  throw Error(ErrorCode::BackendUnavailable, why);
}
#endif

}  // namespace lukv
