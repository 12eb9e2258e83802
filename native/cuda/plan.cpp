#include "plan.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "../core/errors.h"

namespace lukv {
namespace cuda {

namespace {

std::string str(int64_t v) { return std::to_string(v); }

int64_t ceilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Appends the head's page ids after checking that they cover its length and lie in the pool.
int32_t addPages(std::vector<int32_t>& out, const int32_t* pages, int64_t count, int32_t length, const PoolView& pool,
                 const char* what, size_t index) {
  const int64_t need = ceilDiv(length, pool.pageSize);
  if (length < 0) throwInvalid(std::string(what) + " " + str((int64_t)index) + ": negative length " + str(length));
  // The kernels step their token counters in 32 bits (by up to 2^24 in grid-stride loops): a head
  // this long would wrap them past 2^31 - 1 into negative indices.
  if (length > kMaxDeviceHeadTokens)
    throwInvalid(std::string(what) + " " + str((int64_t)index) + ": " + str(length) +
                 " tokens; the CUDA backend takes at most " + str(kMaxDeviceHeadTokens) + " per (layer, KV head)");
  if (count < need)
    throwInvalid(std::string(what) + " " + str((int64_t)index) + ": " + str(length) + " tokens need " + str(need) +
                 " pages of " + str(pool.pageSize) + " but the page list has " + str(count));
  if (need > 0 && pages == nullptr) throwInvalid(std::string(what) + " " + str((int64_t)index) + ": no page list");
  if ((int64_t)out.size() + need > std::numeric_limits<int32_t>::max())
    throwInvalid("too many pages in one launch (more than 2^31-1)");
  const int32_t begin = (int32_t)out.size();
  for (int64_t i = 0; i < need; ++i) {
    const int32_t p = pages[i];
    if (p < 0 || p >= pool.numPages)
      throwInvalid(std::string(what) + " " + str((int64_t)index) + ": page id " + str(p) + " outside the pool of " +
                   str(pool.numPages) + " pages");
    out.push_back(p);
  }
  return begin;
}

// Tokens of `positions` (ascending) at or before `pos`.
int32_t visibleAt(const int32_t* positions, int32_t length, int32_t pos) {
  return (int32_t)(std::upper_bound(positions, positions + length, pos) - positions);
}

}  // namespace

void checkHeadDim(int headDim) {
  if (headDim < 8 || headDim > kMaxHeadDim || headDim % 8 != 0)
    throwInvalid("Expected headDim a multiple of 8 between 8 and " + str(kMaxHeadDim) +
                 " for the CUDA backend (rows are read as 16-byte vectors) but received " + str(headDim));
}

void checkPool(const PoolView& pool) {
  checkHeadDim(pool.headDim);
  if (pool.pageSize < 1) throwInvalid("Expected pageSize >= 1 but received " + str(pool.pageSize));
  if (pool.dtype < 0 || pool.dtype > 2) throwInvalid("unknown cache dtype " + str(pool.dtype));
  const int64_t eb = pool.dtype == 0 ? 4 : 2;
  if (pool.rowBytes != pool.headDim * eb || pool.pageBytes != 2 * pool.pageSize * pool.rowBytes)
    throw Error(ErrorCode::Internal, "pool view with an inconsistent row or page size");
  if (pool.numPages > 0 && pool.data == nullptr) throw Error(ErrorCode::Internal, "pool view without memory");
}

PoolView poolView(uint8_t* data, int64_t numPages, int pageSize, int headDim, DType dtype) {
  PoolView v;
  v.data = data;
  v.numPages = numPages;
  v.pageSize = pageSize;
  v.headDim = headDim;
  v.dtype = (int32_t)dtype;
  v.rowBytes = (int64_t)headDim * dtypeBytes(dtype);
  v.pageBytes = 2 * (int64_t)pageSize * v.rowBytes;
  return v;
}

int32_t pageShiftOf(int32_t pageSize) {
  if (pageSize <= 0 || (pageSize & (pageSize - 1)) != 0) return -1;
  int32_t s = 0;
  while ((1 << s) < pageSize) ++s;
  return s;
}

ScaleFactors scaleFactors(float scale) {
  const float log2e = 1.4426950408889634f;
  const float f = scale * log2e;
  if (std::isfinite(f)) return {f, 1.f};
  return {scale, log2e};
}

int attendVectorsPerBlock(int groupSize, int maxRows) {
  const int heads = std::min(groupSize, kMaxQueryVectors);
  const int rows = groupSize >= kMaxQueryVectors ? 1 : std::max(1, std::min(maxRows, kMaxQueryVectors / groupSize));
  const int n = heads * rows;
  int nq = 1;
  while (nq < n) nq <<= 1;
  return nq;
}

AttendPlan planAttend(const std::vector<AttendHeadInput>& in, int queryHeads, int kvHeads, int32_t totalRows,
                      const PoolView& pool, int64_t targetUnits, int32_t minChunk) {
  checkPool(pool);
  if (kvHeads < 1 || queryHeads < kvHeads || queryHeads % kvHeads != 0)
    throwInvalid("Expected queryHeads a multiple of kvHeads but received " + str(queryHeads) + " and " + str(kvHeads));
  const int G = queryHeads / kvHeads;
  AttendPlan plan;
  int maxRows = 0;
  for (const auto& h : in) maxRows = std::max(maxRows, h.rows);
  plan.vectorsPerBlock = attendVectorsPerBlock(G, maxRows);
  const int headsPerGroup = std::min(G, kMaxQueryVectors);
  const int rowsPerGroup = G >= kMaxQueryVectors ? 1 : kMaxQueryVectors / G;

  for (size_t i = 0; i < in.size(); ++i) {
    const AttendHeadInput& h = in[i];
    if (h.kvHead < 0 || h.kvHead >= kvHeads)
      throwInvalid("head " + str((int64_t)i) + ": kvHead " + str(h.kvHead) + " outside [0, " + str(kvHeads) + ")");
    if (h.rows < 0 || h.row0 < 0 || (int64_t)h.row0 + h.rows > totalRows)
      throwInvalid("head " + str((int64_t)i) + ": query rows [" + str(h.row0) + ", " + str((int64_t)h.row0 + h.rows) +
                   ") outside the " + str(totalRows) + " rows given");
    if (h.length > 0 && h.positions == nullptr) throwInvalid("head " + str((int64_t)i) + ": no positions");
    if (h.rows > 0 && h.queryPositions == nullptr) throwInvalid("head " + str((int64_t)i) + ": no query positions");
    if ((h.oracle != nullptr) != (h.oracleWeight != nullptr) || h.oracleTokens < 0 || h.oracleTokens > h.length)
      throwInvalid("head " + str((int64_t)i) + ": oracle needs its weights and at most length (" + str(h.length) +
                   ") tokens, received " + str(h.oracleTokens));
    AttnHead d{};
    d.pageBegin = addPages(plan.pageIndices, h.pages, h.pageCount, h.length, pool, "head", i);
    d.length = h.length;
    d.groupBegin = (int32_t)plan.groups.size();
    d.oracleTokens = h.oracle ? h.oracleTokens : 0;
    d.groupSize = G;
    d.mass = h.mass;
    d.oracle = h.oracle;
    d.oracleWeight = h.oracleWeight;
    if (h.mass || h.oracle) plan.keepScores = true;

    const int32_t visBegin = (int32_t)plan.visible.size();
    for (int r = 0; r < h.rows; ++r) {
      if (r > 0 && h.queryPositions[r] < h.queryPositions[r - 1])
        throwInvalid("head " + str((int64_t)i) + ": query positions must ascend");
      plan.visible.push_back(visibleAt(h.positions, h.length, h.queryPositions[r]));
    }
    for (int r0 = 0; r0 < h.rows; r0 += rowsPerGroup) {
      const int rows = std::min(rowsPerGroup, h.rows - r0);
      for (int g0 = 0; g0 < G; g0 += headsPerGroup) {
        AttnGroup g{};
        g.head = (int32_t)plan.heads.size();
        g.row0 = h.row0 + r0;
        g.rows = rows;
        g.g0 = g0;
        g.heads = std::min(headsPerGroup, G - g0);
        g.qhead0 = h.kvHead * G + g0;
        g.visibleBegin = visBegin + r0;
        g.span = 0;
        for (int r = 0; r < rows; ++r) g.span = std::max(g.span, plan.visible[visBegin + r0 + r]);
        g.vectorBase = plan.vectors;
        plan.vectors += (int64_t)rows * g.heads;
        plan.maxSpan = std::max(plan.maxSpan, g.span);
        plan.groups.push_back(g);
      }
    }
    d.groupEnd = (int32_t)plan.groups.size();
    plan.heads.push_back(d);
  }

  // Split-K: the smallest chunk (a multiple of 64 tokens, at least minChunk) whose blocks still
  // fit in one wave of targetUnits, so a long head spreads over every SM without a second,
  // partly empty wave. Equal chunks for all groups keep blocks of similar cost whatever the
  // heads' lengths are after eviction.
  auto unitsFor = [&](int64_t chunk) {
    int64_t n = 0;
    for (const auto& g : plan.groups) n += g.span == 0 ? 1 : ceilDiv(g.span, chunk);
    return n;
  };
  int64_t chunk = std::numeric_limits<int32_t>::max();
  const int64_t align = 64;
  int64_t lo = ceilDiv(std::max<int32_t>(minChunk, 1), align), hi = ceilDiv(std::max<int32_t>(plan.maxSpan, 1), align);
  if ((int64_t)plan.groups.size() < targetUnits && lo < hi && unitsFor(hi * align) <= targetUnits) {
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (unitsFor(mid * align) <= targetUnits) hi = mid;
      else lo = mid + 1;
    }
    chunk = lo * align;
  }
  for (size_t gi = 0; gi < plan.groups.size(); ++gi) {
    AttnGroup& g = plan.groups[gi];
    g.unitBegin = (int32_t)plan.units.size();
    const int64_t n = g.span == 0 ? 1 : ceilDiv(g.span, chunk);
    for (int64_t c = 0; c < n; ++c) {
      AttnUnit u{};
      u.group = (int32_t)gi;
      u.t0 = (int32_t)std::min<int64_t>(g.span, c * chunk);
      u.t1 = (int32_t)std::min<int64_t>(g.span, (c + 1) * chunk);
      plan.units.push_back(u);
    }
    g.unitCount = (int32_t)n;
    if (n > 1) plan.needReduce = true;
    if (plan.keepScores) {
      g.scoreBase = plan.scoreFloats;
      plan.scoreFloats += (int64_t)g.rows * g.heads * g.span;
    }
    if (plan.units.size() > (size_t)std::numeric_limits<int32_t>::max())
      throwInvalid("too many attention blocks in one launch");
  }
  return plan;
}

CompactPlan planCompact(const std::vector<CompactHeadInput>& in, const PoolView& pool) {
  checkPool(pool);
  CompactPlan plan;
  // Pages read by this call (1) and written (2): a page must not be both, nor written twice.
  std::vector<uint8_t> use((size_t)pool.numPages, 0);
  for (size_t i = 0; i < in.size(); ++i) {
    const CompactHeadInput& h = in[i];
    CompactHeadDesc d{};
    d.oldPageBegin = addPages(plan.pageIndices, h.oldPages, h.oldPageCount, h.oldLength, pool, "compacted head", i);
    for (int32_t p = d.oldPageBegin; p < (int32_t)plan.pageIndices.size(); ++p) use[plan.pageIndices[p]] |= 1;
    if (h.keptCount < 0 || h.keptCount > h.oldLength)
      throwInvalid("compacted head " + str((int64_t)i) + ": keeps " + str(h.keptCount) + " of " + str(h.oldLength) + " tokens");
    if (h.keptCount > 0 && h.kept == nullptr) throwInvalid("compacted head " + str((int64_t)i) + ": no kept indices");
    d.keptBegin = (int32_t)plan.kept.size();
    d.keptCount = h.keptCount;
    for (int32_t j = 0; j < h.keptCount; ++j) {
      const int32_t k = h.kept[j];
      if (k < 0 || k >= h.oldLength || (j > 0 && k <= h.kept[j - 1]))
        throwInvalid("compacted head " + str((int64_t)i) + ": kept indices must ascend strictly inside [0, " +
                     str(h.oldLength) + "); index " + str(j) + " is " + str(k));
      plan.kept.push_back(k);
    }
    d.massIn = h.massIn;
    d.massOut = h.massOut;
    if ((h.massIn != nullptr) != (h.massOut != nullptr))
      throwInvalid("compacted head " + str((int64_t)i) + ": mass needs both its source and destination");
    plan.maxKept = std::max(plan.maxKept, h.keptCount);
    plan.heads.push_back(d);
  }
  for (size_t i = 0; i < in.size(); ++i) {
    const CompactHeadInput& h = in[i];
    CompactHeadDesc& d = plan.heads[i];
    d.newPageBegin = addPages(plan.pageIndices, h.newPages, h.newPageCount, h.keptCount, pool, "compacted head", i);
    for (int32_t p = d.newPageBegin; p < (int32_t)plan.pageIndices.size(); ++p) {
      uint8_t& u = use[plan.pageIndices[p]];
      if (u != 0)
        throwInvalid("compacted head " + str((int64_t)i) + ": destination page " + str(plan.pageIndices[p]) +
                     (u & 1 ? " is also a source page" : " is used twice") + " (compaction needs fresh pages)");
      u = 2;
    }
  }
  return plan;
}

ScorePlan planScores(const std::vector<ScoreHeadInput>& in, int queryHeads, int kvHeads, int32_t totalRows,
                     const PoolView& pool, bool attention) {
  checkPool(pool);
  if (kvHeads < 1 || queryHeads < kvHeads || queryHeads % kvHeads != 0)
    throwInvalid("Expected queryHeads a multiple of kvHeads but received " + str(queryHeads) + " and " + str(kvHeads));
  const int G = queryHeads / kvHeads;
  ScorePlan plan;
  for (size_t i = 0; i < in.size(); ++i) {
    const ScoreHeadInput& h = in[i];
    if (h.kvHead < 0 || h.kvHead >= kvHeads)
      throwInvalid("scored head " + str((int64_t)i) + ": kvHead " + str(h.kvHead) + " outside [0, " + str(kvHeads) + ")");
    ScoreHeadDesc d{};
    d.pageBegin = addPages(plan.pageIndices, h.pages, h.pageCount, h.length, pool, "scored head", i);
    d.length = h.length;
    d.kvHead = h.kvHead;
    d.outBase = plan.outFloats;
    plan.outFloats += h.length;
    d.tileBase = plan.tiles;
    plan.tiles += ceilDiv(h.length, kKeyTile);
    plan.maxLength = std::max(plan.maxLength, h.length);
    d.visibleBegin = (int32_t)plan.visible.size();
    if (attention) {
      if (h.rows < 0 || h.row0 < 0 || (int64_t)h.row0 + h.rows > totalRows)
        throwInvalid("scored head " + str((int64_t)i) + ": observation rows outside the " + str(totalRows) + " rows given");
      if (h.length > 0 && h.positions == nullptr) throwInvalid("scored head " + str((int64_t)i) + ": no positions");
      if (h.rows > 0 && h.queryPositions == nullptr) throwInvalid("scored head " + str((int64_t)i) + ": no query positions");
      d.row0 = h.row0;
      // Pooling stops before the first observation query and before the recent window (TOVA
      // observes one query, so for it the window is the nearer bound), as on the CPU.
      const int32_t observed = h.rows > 0 ? visibleAt(h.positions, h.length, h.queryPositions[0] - 1) : h.length;
      d.poolEnd = std::min(observed, std::max<int32_t>(0, h.length - h.window));
      d.rows = h.rows;
      for (int r = 0; r < h.rows; ++r) plan.visible.push_back(visibleAt(h.positions, h.length, h.queryPositions[r]));
      d.rawBase = plan.rawFloats;
      plan.rawFloats += (int64_t)h.rows * G * h.length;
      d.statBase = plan.statFloats;
      plan.statFloats += (int64_t)h.rows * G * 2;
    }
    plan.heads.push_back(d);
  }
  return plan;
}

}  // namespace cuda
}  // namespace lukv
