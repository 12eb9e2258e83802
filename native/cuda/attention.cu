#include "attention.cuh"
#include "runtime.cuh"

namespace lukv {
namespace cuda {

void attend(const AttendBatch& batch, Workspace& workspace, const AttendOptions& options) {
  CudaRuntime rt(workspace, batch.stream);
  runAttend(rt, batch, options);
}

PreparedAttend prepareAttend(const AttendBatch& batch, Workspace& workspace, const AttendOptions& options) {
  CudaRuntime rt(workspace, batch.stream);
  return prepareAttend(rt, batch, options);
}

void launchAttend(const PreparedAttend& prepared, cudaStream_t stream) {
  CudaRuntime rt(stream);
  launchPrepared(rt, prepared);
}

}  // namespace cuda
}  // namespace lukv
