#include "backend.h"

#include <cstring>

namespace lukv {

void Backend::readRows(const HeadState& head, int32_t count, bool values, float* out) {
  const DType t = dtype();
  const size_t n = (size_t)count * headDim();
  if (t == DType::F32) {
    readRaw(head, count, values, reinterpret_cast<uint8_t*>(out));
    return;
  }
  std::vector<uint16_t> raw(n);
  readRaw(head, count, values, reinterpret_cast<uint8_t*>(raw.data()));
  for (size_t i = 0; i < n; ++i) out[i] = t == DType::F16 ? f16ToF32(raw[i]) : bf16ToF32(raw[i]);
}

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
