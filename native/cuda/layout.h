// Plain-data parameter blocks shared by the host planners and the CUDA kernels. No CUDA headers:
// the planners are ordinary C++ and are unit-tested without a GPU.
#pragma once
#include <cstdint>

namespace lukv {
namespace cuda {

// Largest head dimension the kernels take; head dims must also be multiples of 8 so every row is
// a whole number of 16-byte vectors in every storage type.
constexpr int kMaxHeadDim = 256;
// Query vectors (query rows x heads of one GQA group) that share one pass over a head's K/V.
constexpr int kMaxQueryVectors = 8;
// Threads of an attention block (4 warps, each over its own token tiles, merged at the end).
constexpr int kAttendThreads = 128;

// The device page pool as the kernels see it: the same layout as lukv::PagePool (a page holds
// pageSize K rows then pageSize V rows of one (layer, KV head), headDim elements each).
struct PoolView {
  uint8_t* data = nullptr;  // address of page 0 (device memory; host memory in the emulator)
  int64_t numPages = 0;
  int32_t pageSize = 0, headDim = 0;
  int32_t dtype = 0;        // 0 f32, 1 f16, 2 bf16 (lukv::DType)
  int64_t rowBytes = 0, pageBytes = 0;
};

// One (sequence, KV head) of the layer.
struct AttnHead {
  int32_t pageBegin;               // its page ids are pageIndices[pageBegin ...]
  int32_t length;                  // kept tokens
  int32_t groupBegin, groupEnd;    // its query groups
  int32_t oracleTokens;            // tokens the oracle covers (the context when recording began)
  int32_t groupSize;               // G: query heads per KV head
  float* mass;                     // [length] H2O attention mass, or null
  float* oracle;                   // [oracleTokens], or null
  const float* oracleWeight;       // [G, oracleTokens]: ||v W_O|| of the head's query heads
};

// Query vectors that read a head's K/V together: `rows` consecutive query rows x `heads`
// consecutive query heads of the head's group (rows * heads <= kMaxQueryVectors).
struct AttnGroup {
  int32_t head;                    // AttnHead index
  int32_t row0, rows;              // global query rows (in queries/out)
  int32_t qhead0, heads;           // first query head (absolute) and how many
  int32_t g0;                      // first head inside the GQA group (qhead0 - kvHead * G)
  int32_t visibleBegin;            // visible[visibleBegin + r]: tokens query row r may see
  int32_t span;                    // the most any of its rows sees
  int32_t unitBegin, unitCount;    // its blocks (token ranges); one block writes the output itself
  int32_t pad;
  int64_t vectorBase;              // its first vector in finalML
  int64_t scoreBase;               // its raw scores: scores[scoreBase + v * span + t]
};

// One attention block: tokens [t0, t1) of a group.
struct AttnUnit {
  int32_t group, t0, t1, pad;
};

struct AttnParams {
  PoolView pool;
  int32_t queryHeads;
  int32_t pageShift;               // log2(pageSize) when a power of two, else -1
  const int32_t* pageIndices;
  const AttnHead* heads;
  const AttnGroup* groups;
  const AttnUnit* units;
  const int32_t* visible;
  const float* queries;            // [rows, queryHeads, headDim] f32
  float* out;                      // [rows, queryHeads, headDim] f32
  // Softmax scale * log2(e) = scoreScale * expScale (scaleFactors): a score in base-2 units is
  // ((q . k) * scoreScale) * expScale, two roundings (expScale is 1 unless the product overflows).
  float scoreScale, expScale;
  int32_t partialStride;           // vectors reserved per unit in the partials (the kernel's NQ)
  float* partialAcc;               // [units * partialStride, headDim]
  float* partialML;                // [units * partialStride, 2]: running max and sum
  float* finalML;                  // [vectors, 2] final max and sum, when scores are kept
  float* scores;                   // raw scores for the mass/oracle pass, or null
  // Per group, zero between launches: the last unit of a split group to finish merges the
  // partials and puts the counter back to zero. Null: attendReduceKernel merges instead.
  int32_t* counters;
  int32_t numHeads, numGroups, numUnits;
  int32_t maxSpan;
};

struct AppendParams {
  PoolView pool;
  int32_t kvHeads;
  int32_t inputF32;                // 1: inputs are f32 (converted); 0: raw words of the cache dtype
  const void* keys;                // [rows, kvHeads, headDim]
  const void* values;
  const int32_t* dest;             // [rows * kvHeads, 2]: (page, slot) of each row of each head
  int64_t entries;                 // rows * kvHeads
};

struct CopyPagesParams {
  PoolView pool;
  const int32_t* pairs;            // [n, 2]: (source page, destination page)
  int64_t count;
};

// One head's compaction: kept rows (ascending indices into the old page list) gathered in order
// into fresh pages.
struct CompactHeadDesc {
  int32_t keptBegin, keptCount;    // kept[keptBegin ...]
  int32_t oldPageBegin, newPageBegin;  // into pageIndices
  const float* massIn;             // optional per-token floats that move with the rows
  float* massOut;
};

struct CompactParams {
  PoolView pool;
  int32_t pageShift;
  const int32_t* kept;
  const int32_t* pageIndices;
  const CompactHeadDesc* heads;
  int32_t numHeads;
};

// One (sequence, KV head) scored with observation query rows.
struct ScoreHeadDesc {
  int32_t pageBegin, length;
  int32_t kvHead;
  int32_t row0, rows;              // observation rows (global, in queries)
  int32_t visibleBegin;            // visible[visibleBegin + r]
  int32_t poolEnd;                 // the tokens pooling covers: before the first observation query and the recent window
  int64_t rawBase;                 // raw[rawBase + (r * G + g) * length + t]
  int64_t statBase;                // stats[statBase + r * G + g]: (max, sum)
  int64_t outBase;                 // out[outBase + t]
  int64_t tileBase;                // keydiff partial sums: tiles[(tileBase + tile) * headDim + d]
};

struct ScoreParams {
  PoolView pool;
  int32_t pageShift;
  int32_t queryHeads, groupSize;
  const int32_t* pageIndices;
  const ScoreHeadDesc* heads;
  int32_t numHeads, maxLength;
  const int32_t* visible;
  const float* queries;            // observation rows [rows, queryHeads, headDim]
  float scoreScale, expScale;      // as in AttnParams
  float* raw;                      // raw scores (base-2 units), -inf where a row cannot see the token
  float* stats;
  float* out;
  int32_t pooling;                 // 0 none, 1 max, 2 avg (lukv::Pooling)
  int32_t kernel;                  // pooling width
  int32_t groupMax;                // combine the GQA group by max instead of mean
  float* tiles;                    // keydiff: per-tile sums of unit keys
  float* anchor;                   // keydiff: [numHeads, headDim + 1]: mean unit key, then 1/||mean||
  // expected-attention: statistics slot per head, the statistics (see ScoreBatch) and settings.
  const int32_t* expectedSlot;
  const float* expectedMean;
  const float* expectedCovariance;
  float scale, halfScale, halfScale2;  // scale, scale / 2 and scale^2 / 2 (infinite for |s| > ~2.6e19)
  int32_t sink, valueNorm;
  float epsilon;
};

}  // namespace cuda
}  // namespace lukv
