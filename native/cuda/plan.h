// Host-side planning of the CUDA launches: page tables flattened FlashInfer-style (one index
// array plus per-head offsets), query vectors grouped, long heads split into token ranges
// (split-K), every input checked so that no kernel can read or write outside its buffers.
// Plain C++: tested on machines without a GPU.
#pragma once
#include <cstdint>
#include <vector>

#include "../core/dtype.h"
#include "layout.h"

namespace lukv {
namespace cuda {

// Throws lukv::Error (invalid argument) unless the kernels support this head dim.
void checkHeadDim(int headDim);
// Throws unless `pool` describes a pool the kernels can address.
void checkPool(const PoolView& pool);
// The view of a pool with this shape whose page 0 is at `data` (device memory, or host memory for
// the emulator and for byte-for-byte copies).
PoolView poolView(uint8_t* data, int64_t numPages, int pageSize, int headDim, DType dtype);
// log2(pageSize) when it is a power of two, else -1.
int32_t pageShiftOf(int32_t pageSize);

// The softmax scale in base-2 units, scale * log2(e), as two float32 factors applied to q . k in
// turn: (scale * log2(e), 1), or (scale, log2(e)) where that product overflows float32. Neither q
// nor any intermediate is scaled beyond the score itself, which the input checks keep finite.
struct ScaleFactors {
  float score, exp;
};
ScaleFactors scaleFactors(float scale);

// One (sequence, KV head) of the layer, as the host holds it.
struct AttendHeadInput {
  const int32_t* pages = nullptr;
  int64_t pageCount = 0;
  const int32_t* positions = nullptr;  // original position of every kept token, ascending
  int32_t length = 0;
  int kvHead = 0;
  int32_t row0 = 0;                    // first query row of its sequence (global)
  int rows = 0;
  const int32_t* queryPositions = nullptr;  // [rows], ascending
  // Optional device arrays, passed through to the kernels.
  float* mass = nullptr;
  float* oracle = nullptr;
  int32_t oracleTokens = 0;
  const float* oracleWeight = nullptr;
};

struct AttendPlan {
  std::vector<AttnHead> heads;
  std::vector<AttnGroup> groups;
  std::vector<AttnUnit> units;
  std::vector<int32_t> visible;
  std::vector<int32_t> pageIndices;
  int vectorsPerBlock = 1;   // the kernel's NQ
  int64_t vectors = 0;       // query vectors in all groups
  int64_t scoreFloats = 0;   // raw scores kept for the mass/oracle pass
  int32_t maxSpan = 0;
  bool needReduce = false;   // some group has more than one unit
  bool keepScores = false;   // some head accumulates mass or the oracle
};

// Query vectors per attention block for this group size and number of query rows: 1, 2, 4 or 8.
int attendVectorsPerBlock(int groupSize, int maxRows);

// targetUnits: blocks that fill the device once (SMs x resident blocks per SM); heads are split
// into token ranges of at least minChunk tokens until about that many blocks exist.
AttendPlan planAttend(const std::vector<AttendHeadInput>& heads, int queryHeads, int kvHeads, int32_t totalRows,
                      const PoolView& pool, int64_t targetUnits, int32_t minChunk = 256);

struct CompactHeadInput {
  const int32_t* oldPages = nullptr;
  int64_t oldPageCount = 0;
  int32_t oldLength = 0;
  const int32_t* kept = nullptr;       // ascending token indices, < oldLength
  int32_t keptCount = 0;
  const int32_t* newPages = nullptr;   // fresh pages: at least ceil(keptCount / pageSize)
  int64_t newPageCount = 0;
  const float* massIn = nullptr;       // optional per-token floats gathered with the rows
  float* massOut = nullptr;
};

struct CompactPlan {
  std::vector<CompactHeadDesc> heads;
  std::vector<int32_t> kept;
  std::vector<int32_t> pageIndices;
  int32_t maxKept = 0;
};

// Rejects destination pages that are also a source of the same call: the gather must not
// overwrite rows it has yet to read.
CompactPlan planCompact(const std::vector<CompactHeadInput>& heads, const PoolView& pool);

struct ScoreHeadInput {
  const int32_t* pages = nullptr;
  int64_t pageCount = 0;
  const int32_t* positions = nullptr;
  int32_t length = 0;
  int kvHead = 0;
  int32_t row0 = 0;                    // observation rows (global) for snapkv / tova
  int rows = 0;
  const int32_t* queryPositions = nullptr;
  int32_t window = 0;                  // snapkv / tova: the last tokens, kept anyway, are not pooled
};

struct ScorePlan {
  std::vector<ScoreHeadDesc> heads;
  std::vector<int32_t> visible;
  std::vector<int32_t> pageIndices;
  int64_t rawFloats = 0, statFloats = 0, outFloats = 0, tiles = 0;
  int32_t maxLength = 0;
};

// Tokens per keydiff partial-sum tile.
constexpr int kKeyTile = 256;

// The most tokens one (layer, KV head) may hold for the kernels (2^31 - 2^25): their 32-bit token
// counters step by up to 2^24 (grid-stride loops) and must not pass 2^31 - 1. Every plan checks it.
constexpr int32_t kMaxDeviceHeadTokens = 2113929216;

ScorePlan planScores(const std::vector<ScoreHeadInput>& heads, int queryHeads, int kvHeads, int32_t totalRows,
                     const PoolView& pool, bool attention);

}  // namespace cuda
}  // namespace lukv
