#include "cache.cuh"
#include "runtime.cuh"

namespace lukv {
namespace cuda {

void append(const AppendBatch& batch, Workspace& workspace) {
  CudaRuntime rt(workspace, batch.stream);
  runAppend(rt, batch);
}

void copyPages(const PoolView& pool, const std::vector<int32_t>& pairs, Workspace& workspace, cudaStream_t stream) {
  CudaRuntime rt(workspace, stream);
  runCopyPages(rt, pool, pairs);
}

void appendTokens(DevicePool& pool, HeadState* heads, int kvHeads, int tokens, int32_t pos0, const void* keys,
                  const void* values, InputKind kind, Workspace& workspace, cudaStream_t stream) {
  CudaRuntime rt(workspace, stream);
  runAppendTokens(rt, pool, pool.view(), heads, kvHeads, tokens, pos0, keys, values, kind);
}

}  // namespace cuda
}  // namespace lukv
