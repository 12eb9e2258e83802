#include "runtime.cuh"
#include "scores.cuh"

namespace lukv {
namespace cuda {

void scoreHeads(const ScoreBatch& batch, Workspace& workspace) {
  CudaRuntime rt(workspace, batch.stream);
  runScores(rt, batch);
}

std::vector<int64_t> scoreOffsets(const ScoreBatch& batch) {
  std::vector<int64_t> out;
  int64_t at = 0;
  for (const ScoreHeadRef& h : batch.heads) {
    out.push_back(at);
    at += h.head->length();
  }
  return out;
}

}  // namespace cuda
}  // namespace lukv
