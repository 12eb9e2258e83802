// CUDA attention over paged per-head KV: decode and prefill chunks for many sequences in one
// launch, GQA, causal by original position, split over token ranges (split-K) and reduced.
// Mirrors native/cpu/attention.cpp, including the H2O mass and oracle accumulation.
#pragma once
#include <cstdint>
#include <vector>

#include "../core/backend.h"
#include "layout.h"
#include "plan.h"
#include "runtime.h"
#include "workspace.h"

namespace lukv {
namespace cuda {

// One sequence's part of a launch: its kvHeads heads of the layer and its query rows.
struct AttendSequence {
  const HeadState* heads = nullptr;    // kvHeads heads; page ids are device pool pages
  int rows = 0;                        // query rows (1 for decode)
  const int32_t* queryPositions = nullptr;  // [rows], ascending (host)
  // Optional, per KV head, device arrays (see AttendRequest in core/backend.h): H2O mass [length]
  // to which the softmax weight averaged over the group is added, and the oracle
  // [oracleTokens[h]] with its weights [group, oracleTokens[h]].
  float* const* mass = nullptr;
  float* const* oracle = nullptr;
  const float* const* oracleWeight = nullptr;
  const int32_t* oracleTokens = nullptr;
};

struct AttendBatch {
  PoolView pool;
  int kvHeads = 0, queryHeads = 0;
  std::vector<AttendSequence> sequences;  // rows of sequence i follow those of sequence i - 1
  const float* queries = nullptr;         // device [total rows, queryHeads, headDim] f32
  float* out = nullptr;                   // device, same shape
  float scale = 0;
  cudaStream_t stream = nullptr;
};

struct AttendOptions {
  int32_t minChunk = 256;   // the fewest tokens a block of a split head takes
  bool fusedReduce = true;  // the last block of a split head merges it (else a second launch)
};

// Asynchronous on batch.stream; throws lukv::Error on invalid input or a CUDA failure.
void attend(const AttendBatch& batch, Workspace& workspace, const AttendOptions& options = AttendOptions());

using AttendKernelFn = void (*)(AttnParams);

// A planned launch: metadata uploaded into the workspace, scratch carved. Valid until the
// workspace is used for another call; launching it again recomputes the same step (benchmarks,
// or replaying a decode step whose page tables did not change).
struct PreparedAttend {
  AttnParams params{};
  AttendKernelFn kernel = nullptr;
  bool needReduce = false, keepScores = false;
  int vectorsPerBlock = 0;
};

PreparedAttend prepareAttend(const AttendBatch& batch, Workspace& workspace,
                             const AttendOptions& options = AttendOptions());
void launchAttend(const PreparedAttend& prepared, cudaStream_t stream);

// The batch as planner input (one entry per (sequence, KV head)); shared with the emulator.
inline std::vector<AttendHeadInput> attendInputs(const AttendBatch& b, int32_t* totalRows) {
  std::vector<AttendHeadInput> in;
  int32_t row = 0;
  for (const AttendSequence& s : b.sequences) {
    for (int h = 0; h < b.kvHeads; ++h) {
      const HeadState& hs = s.heads[h];
      AttendHeadInput x;
      x.pages = hs.pages.data();
      x.pageCount = (int64_t)hs.pages.size();
      x.positions = hs.positions.data();
      x.length = hs.length();
      x.kvHead = h;
      x.row0 = row;
      x.rows = s.rows;
      x.queryPositions = s.queryPositions;
      x.mass = s.mass ? s.mass[h] : nullptr;
      if (s.oracle) {
        x.oracle = s.oracle[h];
        x.oracleWeight = s.oracleWeight[h];
        x.oracleTokens = s.oracleTokens[h];
      }
      in.push_back(x);
    }
    row += s.rows;
  }
  *totalRows = row;
  return in;
}

}  // namespace cuda
}  // namespace lukv
