#include "compress.cuh"
#include "runtime.cuh"

namespace lukv {
namespace cuda {

void compactHeads(const PoolView& pool, const std::vector<CompactHeadInput>& heads, Workspace& workspace,
                  cudaStream_t stream) {
  CudaRuntime rt(workspace, stream);
  runCompact(rt, pool, heads);
}

void compactSequenceHeads(DevicePool& pool, const std::vector<HeadState*>& heads,
                          const std::vector<std::vector<int32_t>>& kept, const std::vector<const float*>& massIn,
                          const std::vector<float*>& massOut, Workspace& workspace, cudaStream_t stream) {
  CudaRuntime rt(workspace, stream);
  runCompactSequenceHeads(rt, pool, pool.view(), heads, kept, massIn, massOut);
}

}  // namespace cuda
}  // namespace lukv
