#include "attention.cuh"
#include "runtime.cuh"

namespace lukv {
namespace cuda {

void attend(const AttendBatch& batch, Workspace& workspace, int32_t minChunk) {
  CudaRuntime rt(workspace, batch.stream);
  runAttend(rt, batch, minChunk);
}

PreparedAttend prepareAttend(const AttendBatch& batch, Workspace& workspace, int32_t minChunk) {
  CudaRuntime rt(workspace, batch.stream);
  return prepareAttend(rt, batch, minChunk);
}

void launchAttend(const PreparedAttend& prepared, cudaStream_t stream) {
  CudaRuntime rt(stream);
  launchPrepared(rt, prepared);
}

}  // namespace cuda
}  // namespace lukv
