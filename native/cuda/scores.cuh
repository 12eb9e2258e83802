// Scoring kernels and their host orchestration (generic over the runtime).
//
// snapkv / tova in three launches: raw scores of every (observation row, group head) against
// every token (a 64 x 64 tile per block through shared memory), each vector's softmax max and
// sum, then per token the mean probability over rows with pooling and the GQA combination.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <string>

#include "device.h"
#include "scores.h"

namespace lukv {
namespace cuda {

constexpr int kObsTokens = 64, kObsVectors = 64, kObsDims = 32;
constexpr int kPoolTile = 256;

template <class S>
__global__ void __launch_bounds__(256) obsScoresKernel(const ScoreParams p) {
  constexpr int VEC = S::kPerVec, VPR = kObsDims / VEC;
  // One word of padding per row keeps the column reads on distinct banks.
  __shared__ float sq[kObsVectors][kObsDims + 1];
  __shared__ float sk[kObsTokens][kObsDims + 1];
  const ScoreHeadDesc h = p.heads[blockIdx.y];
  const int G = p.groupSize, D = p.pool.headDim;
  const int32_t t0 = (int32_t)blockIdx.x * kObsTokens;
  const int nvec = h.rows * G;
  const int v0 = (int)blockIdx.z * kObsVectors;
  if (t0 >= h.length || v0 >= nvec) return;  // the whole block leaves, before any barrier
  const int tx = (int)threadIdx.x % 16, ty = (int)threadIdx.x / 16;
  const int32_t* pages = p.pageIndices + h.pageBegin;
  float acc[4][4];
  LUKV_UNROLL
  for (int i = 0; i < 4; ++i) {
    LUKV_UNROLL
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;
  }
  for (int d0 = 0; d0 < D; d0 += kObsDims) {
    for (int i = (int)threadIdx.x; i < kObsTokens * VPR; i += 256) {
      const int tt = i / VPR, vi = i - tt * VPR;
      const int32_t t = t0 + tt;
      const int d = d0 + vi * VEC;
      float f[VEC];
      if (t < h.length && d < D) {
        S::unpack(load16(keyRow(p.pool, pages, p.pageShift, t) + d * S::kBytes), f);
      } else {
        LUKV_UNROLL
        for (int e = 0; e < VEC; ++e) f[e] = 0.f;
      }
      LUKV_UNROLL
      for (int e = 0; e < VEC; ++e) sk[tt][vi * VEC + e] = f[e];
    }
    for (int i = (int)threadIdx.x; i < kObsVectors * kObsDims; i += 256) {
      const int vv = i / kObsDims, dd = i - vv * kObsDims;
      const int v = v0 + vv, d = d0 + dd;
      float x = 0.f;
      if (v < nvec && d < D) {
        const int r = v / G, g = v - r * G;
        x = p.queries[((int64_t)(h.row0 + r) * p.queryHeads + h.kvHead * G + g) * D + d];
      }
      sq[vv][dd] = x;
    }
    __syncthreads();
    for (int dd = 0; dd < kObsDims; ++dd) {
      float a[4], b[4];
      LUKV_UNROLL
      for (int i = 0; i < 4; ++i) a[i] = sq[ty + 16 * i][dd];
      LUKV_UNROLL
      for (int j = 0; j < 4; ++j) b[j] = sk[tx + 16 * j][dd];
      LUKV_UNROLL
      for (int i = 0; i < 4; ++i) {
        LUKV_UNROLL
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
      }
    }
    __syncthreads();
  }
  LUKV_UNROLL
  for (int i = 0; i < 4; ++i) {
    const int v = v0 + ty + 16 * i;
    if (v >= nvec) continue;
    const int32_t vis = p.visible[h.visibleBegin + v / G];
    LUKV_UNROLL
    for (int j = 0; j < 4; ++j) {
      const int32_t t = t0 + tx + 16 * j;
      if (t < h.length)
        p.raw[h.rawBase + (int64_t)v * h.length + t] = t < vis ? acc[i][j] * p.scoreScale * p.expScale : -INFINITY;
    }
  }
}

LUKV_DEVICE void combineSoftmax(float& m, float& l, float m2, float l2) {
  const float M = fmaxf(m, m2);
  if (M == -INFINITY) {
    l = 0.f;
  } else {
    l = (m == -INFINITY ? 0.f : l * exp2f(m - M)) + (m2 == -INFINITY ? 0.f : l2 * exp2f(m2 - M));
  }
  m = M;
}

// Max and sum of exp2 over each vector's raw scores: grid (vector, head).
__global__ void __launch_bounds__(256) obsStatsKernel(const ScoreParams p) {
  __shared__ float sm[8], sl[8];
  const ScoreHeadDesc h = p.heads[blockIdx.y];
  const int v = (int)blockIdx.x;
  if (v >= h.rows * p.groupSize) return;
  const float* raw = p.raw + h.rawBase + (int64_t)v * h.length;
  float m = -INFINITY, l = 0.f;
  for (int32_t t = (int32_t)threadIdx.x; t < h.length; t += 256) {
    const float s = raw[t];
    if (s == -INFINITY) continue;
    if (s > m) {
      l *= exp2f(m - s);
      m = s;
    }
    l += exp2f(s - m);
  }
  LUKV_UNROLL
  for (int o = 16; o >= 1; o >>= 1) {
    const float m2 = __shfl_xor_sync(kFullMask, m, o), l2 = __shfl_xor_sync(kFullMask, l, o);
    combineSoftmax(m, l, m2, l2);
  }
  const int warp = (int)threadIdx.x / 32, lane = (int)threadIdx.x % 32;
  if (lane == 0) sm[warp] = m, sl[warp] = l;
  __syncthreads();
  if (threadIdx.x == 0) {
    float M = sm[0], L = sl[0];
    for (int w = 1; w < 8; ++w) combineSoftmax(M, L, sm[w], sl[w]);
    p.stats[h.statBase + 2 * v] = M;
    p.stats[h.statBase + 2 * v + 1] = L;
  }
}

// Mean probability over the observation rows per group head, pooled along the tokens, then
// the group's mean or max: grid (token tile, head).
__global__ void __launch_bounds__(256) obsPoolKernel(const ScoreParams p) {
  __shared__ float ph[kPoolTile + 2 * kMaxPoolHalo];
  const ScoreHeadDesc h = p.heads[blockIdx.y];
  const int32_t j0 = (int32_t)blockIdx.x * kPoolTile;
  const int32_t L = h.length;
  if (j0 >= L) return;
  const int G = p.groupSize;
  const int halo = (p.pooling != 0 && p.kernel > 1) ? p.kernel / 2 : 0;
  const int32_t base = j0 - halo;
  const int32_t lo = base > 0 ? base : 0;
  const int32_t hi = j0 + kPoolTile + halo < L ? j0 + kPoolTile + halo : L;
  const int32_t j = j0 + (int32_t)threadIdx.x;
  const float invRows = h.rows > 0 ? 1.f / (float)h.rows : 0.f;
  float agg = p.groupMax ? -INFINITY : 0.f;
  for (int g = 0; g < G; ++g) {
    for (int32_t x = lo + (int32_t)threadIdx.x; x < hi; x += 256) {
      float s = 0.f;
      for (int r = 0; r < h.rows; ++r) {
        const int v = r * G + g;
        const float m = p.stats[h.statBase + 2 * v], l = p.stats[h.statBase + 2 * v + 1];
        if (l > 0.f) s += exp2f(p.raw[h.rawBase + (int64_t)v * L + x] - m) / l;
      }
      ph[x - base] = s * invRows;
    }
    __syncthreads();
    if (j < L) {
      float val;
      if (halo == 0) {
        val = ph[j - base];
      } else {
        // Only the tokens before the recent window pool, with each other (see cpu/scores.cpp).
        const int32_t end = h.poolEnd;
        const int32_t a = j - halo > 0 ? j - halo : 0, b = j + halo < end - 1 ? j + halo : end - 1;
        if (j >= end) {
          val = ph[j - base];
        } else if (p.pooling == 1) {
          val = ph[a - base];
          for (int32_t x = a + 1; x <= b; ++x) val = fmaxf(val, ph[x - base]);
        } else {
          float s = 0.f;
          for (int32_t x = a; x <= b; ++x) s += ph[x - base];
          val = s / (float)p.kernel;
        }
      }
      agg = p.groupMax ? fmaxf(agg, val) : agg + val;
    }
    __syncthreads();
  }
  if (j < L) p.out[h.outBase + j] = p.groupMax ? agg : agg / (float)G;
}

// ||row|| of a K or V row read by one warp (lane l takes vectors l, l + 32, ...), in every lane.
template <class S>
LUKV_DEVICE float rowNorm(const uint8_t* row, int vecs, int lane) {
  float s = 0.f;
  for (int vi = lane; vi < vecs; vi += 32) {
    float f[S::kPerVec];
    S::unpack(load16(row + vi * 16), f);
    LUKV_UNROLL
    for (int e = 0; e < S::kPerVec; ++e) s = fmaf(f[e], f[e], s);
  }
  s = laneSum<1, 32>(s);
  if (s >= kTinySquares && s < INFINITY) return sqrtf(s);
  double sd = 0;
  for (int vi = lane; vi < vecs; vi += 32) {
    float f[S::kPerVec];
    S::unpack(load16(row + vi * 16), f);
    LUKV_UNROLL
    for (int e = 0; e < S::kPerVec; ++e) sd += (double)f[e] * f[e];
  }
  return (float)sqrt(laneSum<1, 32>(sd));
}

// One warp per K row: -||k||. grid (row blocks, head).
template <class S>
__global__ void __launch_bounds__(256) knormKernel(const ScoreParams p) {
  const ScoreHeadDesc h = p.heads[blockIdx.y];
  const int warp = (int)threadIdx.x / 32, lane = (int)threadIdx.x % 32;
  const int vecs = p.pool.headDim / S::kPerVec;
  const int32_t* pages = p.pageIndices + h.pageBegin;
  for (int32_t t = (int32_t)blockIdx.x * 8 + warp; t < h.length; t += (int32_t)gridDim.x * 8) {
    const float norm = rowNorm<S>(keyRow(p.pool, pages, p.pageShift, t), vecs, lane);
    if (lane == 0) p.out[h.outBase + t] = -norm;
  }
}

// One warp reads a key row: lane l holds vectors l and l + 32 of it in f (zeros past the row's
// `vecs` vectors); returns 1 / ||row|| (0 for a zero row), the same in every lane. For a row of
// tiny values f comes back scaled by 2^64 and the inverse with it: f · inverse is the unit row.
template <class S>
LUKV_DEVICE float loadKeyInverseNorm(const uint8_t* row, int vecs, int lane, float (&f)[2][S::kPerVec]) {
  float s = 0.f;
  LUKV_UNROLL
  for (int k = 0; k < 2; ++k) {
    const int vi = lane + 32 * k;
    if (vi < vecs) {
      S::unpack(load16(row + vi * 16), f[k]);
    } else {
      LUKV_UNROLL
      for (int e = 0; e < S::kPerVec; ++e) f[k][e] = 0.f;
    }
    LUKV_UNROLL
    for (int e = 0; e < S::kPerVec; ++e) s = fmaf(f[k][e], f[k][e], s);
  }
  s = laneSum<1, 32>(s);
  if (s >= kTinySquares) return 1.f / sqrtf(s);
  // Tiny values: the norm in double, and f scaled by 2^64 (exactly) so that its inverse fits a float.
  double sd = 0;
  LUKV_UNROLL
  for (int k = 0; k < 2; ++k) {
    LUKV_UNROLL
    for (int e = 0; e < S::kPerVec; ++e) {
      sd += (double)f[k][e] * f[k][e];
      f[k][e] *= 0x1p64f;
    }
  }
  const double norm = sqrt(laneSum<1, 32>(sd));
  return norm > 0 ? (float)(1.0 / (norm * 0x1p64)) : 0.f;
}

// keydiff, step 1: per tile of kKeyTile tokens, the sum of unit keys. grid (tile, head).
template <class S>
__global__ void __launch_bounds__(256) keyTileKernel(const ScoreParams p) {
  constexpr int VEC = S::kPerVec;
  __shared__ float sSum[8][kMaxHeadDim];
  const ScoreHeadDesc h = p.heads[blockIdx.y];
  const int32_t t0 = (int32_t)blockIdx.x * kKeyTile;
  if (t0 >= h.length) return;
  const int D = p.pool.headDim, vecs = D / VEC;
  const int warp = (int)threadIdx.x / 32, lane = (int)threadIdx.x % 32;
  const int32_t t1 = t0 + kKeyTile < h.length ? t0 + kKeyTile : h.length;
  const int32_t* pages = p.pageIndices + h.pageBegin;
  float acc[2][VEC];
  LUKV_UNROLL
  for (int k = 0; k < 2; ++k) {
    LUKV_UNROLL
    for (int e = 0; e < VEC; ++e) acc[k][e] = 0.f;
  }
  for (int32_t t = t0 + warp; t < t1; t += 8) {
    const uint8_t* row = keyRow(p.pool, pages, p.pageShift, t);
    float f[2][VEC];
    const float inv = loadKeyInverseNorm<S>(row, vecs, lane, f);
    LUKV_UNROLL
    for (int k = 0; k < 2; ++k) {
      LUKV_UNROLL
      for (int e = 0; e < VEC; ++e) acc[k][e] += f[k][e] * inv;
    }
  }
  LUKV_UNROLL
  for (int k = 0; k < 2; ++k) {
    const int vi = lane + 32 * k;
    if (vi < vecs) {
      LUKV_UNROLL
      for (int e = 0; e < VEC; ++e) sSum[warp][vi * VEC + e] = acc[k][e];
    }
  }
  __syncthreads();
  for (int d = (int)threadIdx.x; d < D; d += 256) {
    float s = 0.f;
    for (int w = 0; w < 8; ++w) s += sSum[w][d];
    p.tiles[(h.tileBase + blockIdx.x) * D + d] = s;
  }
}

// keydiff, step 2: the mean unit key (summed in double, as on the CPU) and 1/its norm. grid (head).
__global__ void __launch_bounds__(256) keyAnchorKernel(const ScoreParams p) {
  __shared__ double sRed[256];
  const ScoreHeadDesc h = p.heads[blockIdx.x];
  if (h.length == 0) return;
  const int D = p.pool.headDim;
  const int64_t tiles = (h.length + kKeyTile - 1) / kKeyTile;
  float* anchor = p.anchor + (int64_t)blockIdx.x * (D + 1);
  double an = 0;
  for (int d = (int)threadIdx.x; d < D; d += 256) {
    double s = 0;
    for (int64_t k = 0; k < tiles; ++k) s += (double)p.tiles[(h.tileBase + k) * D + d];
    const float a = (float)(s / h.length);
    anchor[d] = a;
    an += (double)a * a;
  }
  sRed[threadIdx.x] = an;
  __syncthreads();
  for (int o = 128; o >= 1; o >>= 1) {
    if ((int)threadIdx.x < o) sRed[threadIdx.x] += sRed[threadIdx.x + o];
    __syncthreads();
  }
  if (threadIdx.x == 0) anchor[D] = sRed[0] > 0 ? (float)(1.0 / sqrt(sRed[0])) : 0.f;
}

// keydiff, step 3: -cos(k_j, anchor), one warp per row. grid (row blocks, head).
template <class S>
__global__ void __launch_bounds__(256) keyDiffKernel(const ScoreParams p) {
  constexpr int VEC = S::kPerVec;
  const ScoreHeadDesc h = p.heads[blockIdx.y];
  const int D = p.pool.headDim, vecs = D / VEC;
  const int warp = (int)threadIdx.x / 32, lane = (int)threadIdx.x % 32;
  const int32_t* pages = p.pageIndices + h.pageBegin;
  const float* anchor = p.anchor + (int64_t)blockIdx.y * (D + 1);
  for (int32_t t = (int32_t)blockIdx.x * 8 + warp; t < h.length; t += (int32_t)gridDim.x * 8) {
    const uint8_t* row = keyRow(p.pool, pages, p.pageShift, t);
    float f[2][VEC];
    const float inv = loadKeyInverseNorm<S>(row, vecs, lane, f);
    float dot = 0.f;
    LUKV_UNROLL
    for (int k = 0; k < 2; ++k) {
      const int vi = lane + 32 * k;
      if (vi < vecs) {
        LUKV_UNROLL
        for (int e = 0; e < VEC; ++e) dot = fmaf(f[k][e] * inv, anchor[vi * VEC + e], dot);
      }
    }
    dot = laneSum<1, 32>(dot);
    if (lane == 0) p.out[h.outBase + t] = -dot * anchor[D];
  }
}

// expected-attention, step 1: the logits z = scale mean'.k + scale^2/2 k' cov' k of every group
// head for a tile of kExpectedTile tokens staged in shared memory (a warp serves 4 of them, so
// each covariance row read feeds 4 tokens), in base-2 units; -inf for the sink tokens, which the
// softmax leaves out. grid (token tile, head).
constexpr int kExpectedTile = 32, kExpectedPerWarp = kExpectedTile / 8;
template <class S>
__global__ void __launch_bounds__(256) expectedLogitsKernel(const ScoreParams p) {
  constexpr int VEC = S::kPerVec, T = kExpectedPerWarp;
  __shared__ float sk[kExpectedTile][kMaxHeadDim];
  const ScoreHeadDesc h = p.heads[blockIdx.y];
  const int32_t t0 = (int32_t)blockIdx.x * kExpectedTile;
  if (t0 >= h.length) return;  // the whole block leaves, before any barrier
  const int G = p.groupSize, D = p.pool.headDim, vecs = D / VEC;
  const int32_t* pages = p.pageIndices + h.pageBegin;
  for (int i = (int)threadIdx.x; i < kExpectedTile * vecs; i += 256) {
    const int tt = i / vecs, vi = i - tt * vecs;
    float f[VEC];
    if (t0 + tt < h.length) {
      S::unpack(load16(keyRow(p.pool, pages, p.pageShift, t0 + tt) + vi * 16), f);
    } else {
      LUKV_UNROLL
      for (int e = 0; e < VEC; ++e) f[e] = 0.f;
    }
    LUKV_UNROLL
    for (int e = 0; e < VEC; ++e) sk[tt][vi * VEC + e] = f[e];
  }
  __syncthreads();
  const int warp = (int)threadIdx.x / 32, lane = (int)threadIdx.x % 32;
  const float(*k)[kMaxHeadDim] = sk + warp * T;
  const int64_t first = ((int64_t)p.expectedSlot[blockIdx.y] * p.queryHeads + (int64_t)h.kvHead * G) * D;
  for (int g = 0; g < G; ++g) {
    const float* mean = p.expectedMean + first + (int64_t)g * D;
    float lin[T], quad[T];
    LUKV_UNROLL
    for (int x = 0; x < T; ++x) lin[x] = quad[x] = 0.f;
    for (int j = lane; j < D; j += 32) {
      const float m = mean[j];
      LUKV_UNROLL
      for (int x = 0; x < T; ++x) lin[x] = fmaf(m, k[x][j], lin[x]);
    }
    if (p.expectedCovariance) {
      const float* cov = p.expectedCovariance + (first + (int64_t)g * D) * D;
      for (int i = 0; i < D; ++i) {
        float ki[T];
        LUKV_UNROLL
        for (int x = 0; x < T; ++x) ki[x] = k[x][i];
        for (int j = lane; j < D; j += 32) {
          const float c = cov[(int64_t)i * D + j];
          LUKV_UNROLL
          for (int x = 0; x < T; ++x) quad[x] = fmaf(ki[x] * c, k[x][j], quad[x]);
        }
      }
    }
    LUKV_UNROLL
    for (int x = 0; x < T; ++x) {
      lin[x] = laneSum<1, 32>(lin[x]);
      quad[x] = laneSum<1, 32>(quad[x]);
    }
    if (lane != 0) continue;
    LUKV_UNROLL
    for (int x = 0; x < T; ++x) {
      const int32_t t = t0 + warp * T + x;
      if (t >= h.length) continue;
      // ½s²·kᵀΣk; where s²/2 overflows, (s/2)·(s·kᵀΣk).
      const float qz = isfinite(p.halfScale2) ? p.halfScale2 * quad[x] : p.halfScale * (p.scale * quad[x]);
      const float z = (p.scale * lin[x] + qz) * 1.4426950408889634f;
      p.raw[h.rawBase + (int64_t)g * h.length + t] = t < p.sink ? -INFINITY : z;
    }
  }
}

// expected-attention, step 3 (after obsStatsKernel's softmax max and sum per group head): the
// group's mean probability, times (.. + epsilon) * ||v|| with the value norm; one warp per token
// (0 for the sink tokens, which the host fills). grid (row blocks, head).
template <class S>
__global__ void __launch_bounds__(256) expectedFinishKernel(const ScoreParams p) {
  const ScoreHeadDesc h = p.heads[blockIdx.y];
  const int warp = (int)threadIdx.x / 32, lane = (int)threadIdx.x % 32;
  const int G = p.groupSize, vecs = p.pool.headDim / S::kPerVec;
  const int32_t* pages = p.pageIndices + h.pageBegin;
  for (int32_t t = (int32_t)blockIdx.x * 8 + warp; t < h.length; t += (int32_t)gridDim.x * 8) {
    const float vn = p.valueNorm ? rowNorm<S>(keyRow(p.pool, pages, p.pageShift, t) + (int64_t)p.pool.pageSize * p.pool.rowBytes, vecs, lane) : 0.f;
    if (lane != 0) continue;
    float s = 0.f;
    if (t >= p.sink) {
      for (int g = 0; g < G; ++g) {
        const float m = p.stats[h.statBase + 2 * g], l = p.stats[h.statBase + 2 * g + 1];
        if (l > 0.f) s += exp2f(p.raw[h.rawBase + (int64_t)g * h.length + t] - m) / l;
      }
      s /= (float)G;
      if (p.valueNorm) s = (s + p.epsilon) * vn;
    }
    p.out[h.outBase + t] = s;
  }
}

inline std::vector<ScoreHeadInput> scoreInputs(const ScoreBatch& b) {
  std::vector<ScoreHeadInput> in;
  for (const ScoreHeadRef& r : b.heads) {
    ScoreHeadInput x;
    x.pages = r.head->pages.data();
    x.pageCount = (int64_t)r.head->pages.size();
    x.positions = r.head->positions.data();
    x.length = r.head->length();
    x.kvHead = r.kvHead;
    x.row0 = r.row0;
    x.rows = r.rows;
    x.queryPositions = r.queryPositions;
    if (b.scorer == Scorer::SnapKV || b.scorer == Scorer::TOVA) x.window = b.window;
    if (b.scorer == Scorer::ExpectedAttention) {
      // One softmax per group head over every token: planned as one row that sees them all.
      static const int32_t kSeesAll = INT32_MAX;
      x.row0 = 0;
      x.rows = 1;
      x.queryPositions = &kSeesAll;
    }
    in.push_back(x);
  }
  return in;
}

template <class RT, class S>
void runScoresTyped(RT& rt, const ScoreBatch& b, const ScorePlan& plan, ScoreParams& p) {
  const unsigned heads = (unsigned)plan.heads.size();
  const unsigned rowBlocks = (unsigned)std::max<int64_t>(1, std::min<int64_t>(4096, (plan.maxLength + 7) / 8));
  switch (b.scorer) {
    case Scorer::SnapKV:
    case Scorer::TOVA: {
      int maxVectors = 0;
      for (const auto& h : plan.heads) maxVectors = std::max(maxVectors, h.rows * p.groupSize);
      if (maxVectors > 0) {
        const dim3 g1((unsigned)((plan.maxLength + kObsTokens - 1) / kObsTokens), heads,
                      (unsigned)((maxVectors + kObsVectors - 1) / kObsVectors));
        rt.launch(obsScoresKernel<S>, g1, dim3(256), p, "obsScores");
        rt.launch(obsStatsKernel, dim3((unsigned)maxVectors, heads), dim3(256), p, "obsStats");
      }
      // Also without observation rows: a head with none scores 0 everywhere, as on the CPU.
      rt.launch(obsPoolKernel, dim3((unsigned)((plan.maxLength + kPoolTile - 1) / kPoolTile), heads), dim3(256), p,
                "obsPool");
      break;
    }
    case Scorer::KNorm:
      rt.launch(knormKernel<S>, dim3(rowBlocks, heads), dim3(256), p, "knorm");
      break;
    case Scorer::ExpectedAttention:
      rt.launch(expectedLogitsKernel<S>, dim3((unsigned)((plan.maxLength + kExpectedTile - 1) / kExpectedTile), heads),
                dim3(256), p, "expectedLogits");
      rt.launch(obsStatsKernel, dim3((unsigned)p.groupSize, heads), dim3(256), p, "expectedSoftmax");
      rt.launch(expectedFinishKernel<S>, dim3(rowBlocks, heads), dim3(256), p, "expectedFinish");
      break;
    case Scorer::KeyDiff:
      rt.launch(keyTileKernel<S>, dim3((unsigned)((plan.maxLength + kKeyTile - 1) / kKeyTile), heads), dim3(256), p,
                "keyTiles");
      rt.launch(keyAnchorKernel, dim3(heads), dim3(256), p, "keyAnchor");
      rt.launch(keyDiffKernel<S>, dim3(rowBlocks, heads), dim3(256), p, "keyDiff");
      break;
    default:
      break;
  }
}

// Heads of one scoring launch: they are the grid's y dimension.
constexpr size_t kMaxLaunchHeads = 65535;

// Scores of at most kMaxLaunchHeads heads (runScores splits larger batches).
template <class RT>
void runScoresPart(RT& rt, const ScoreBatch& b) {
  checkPool(b.pool);
  if (b.heads.empty()) return;
  if (b.out == nullptr) throwInvalid("scoring needs a device output");
  if (b.heads.size() > kMaxLaunchHeads) throw Error(ErrorCode::Internal, "too many heads for one scoring launch");
  const bool attention = b.scorer == Scorer::SnapKV || b.scorer == Scorer::TOVA;
  if (attention) {
    bool anyRows = false;
    for (const ScoreHeadRef& r : b.heads) anyRows = anyRows || r.rows > 0;
    if (anyRows && b.queries == nullptr) throwInvalid("snapkv and tova need device observation queries");
    if (b.pooling != Pooling::None && (b.kernel < 1 || b.kernel > 2 * kMaxPoolHalo + 1))
      throwInvalid("Expected a pooling kernel between 1 and " + std::to_string(2 * kMaxPoolHalo + 1) +
                   " but received " + std::to_string(b.kernel));
    if (!std::isfinite(b.scale)) throwInvalid("snapkv and tova need a finite scale");
  }
  const bool expected = b.scorer == Scorer::ExpectedAttention;
  if (expected && b.expectedMean == nullptr) throwInvalid("expected-attention needs the device query statistics");
  const ScorePlan plan = planScores(scoreInputs(b), b.queryHeads, b.kvHeads, expected ? 1 : b.queryRows, b.pool,
                                    attention || expected);
  if (plan.outFloats == 0) return;

  if (b.scorer == Scorer::H2O) {
    for (size_t i = 0; i < b.heads.size(); ++i) {
      if (plan.heads[i].length == 0) continue;
      if (b.heads[i].mass == nullptr) throwInvalid("scorer \"h2o\" needs the attention mass of every head");
      rt.deviceCopy(b.out + plan.heads[i].outBase, b.heads[i].mass, (size_t)plan.heads[i].length * sizeof(float));
    }
    return;
  }
  if (b.scorer == Scorer::Streaming || b.scorer == Scorer::Random) {
    std::vector<float> host((size_t)plan.outFloats);
    for (size_t i = 0; i < b.heads.size(); ++i) {
      const HeadState& hs = *b.heads[i].head;
      float* o = host.data() + plan.heads[i].outBase;
      for (int32_t t = 0; t < hs.length(); ++t)
        o[t] = b.scorer == Scorer::Streaming ? (float)(hs.positions[t] - b.heads[i].newest)  // as cpu/scores.cpp
                                             : randomScore(b.seed, (uint32_t)b.heads[i].layer,
                                                           (uint32_t)b.heads[i].kvHead, (uint32_t)hs.positions[t]);
    }
    rt.toDevice(b.out, host.data(), host.size() * sizeof(float));
    return;
  }

  Arena arena;
  const size_t oPages = arena.add(plan.pageIndices), oHeads = arena.add(plan.heads), oVisible = arena.add(plan.visible);
  std::vector<int32_t> slots;
  for (const ScoreHeadRef& r : b.heads) slots.push_back(r.expectedSlot);
  const size_t oSlots = arena.add(slots);
  const uint8_t* meta = rt.upload(arena.bytes());
  const int D = b.pool.headDim;
  ScratchLayout sl;
  const bool softmax = attention || expected;
  const size_t sRaw = softmax ? sl.add((size_t)plan.rawFloats * sizeof(float)) : 0;
  const size_t sStats = softmax ? sl.add((size_t)plan.statFloats * sizeof(float)) : 0;
  const bool keyDiff = b.scorer == Scorer::KeyDiff;
  const size_t sTiles = keyDiff ? sl.add((size_t)plan.tiles * D * sizeof(float)) : 0;
  const size_t sAnchor = keyDiff ? sl.add(plan.heads.size() * (D + 1) * sizeof(float)) : 0;
  uint8_t* scratch = sl.size() ? rt.scratch(sl.size()) : nullptr;

  ScoreParams p{};
  p.pool = b.pool;
  p.pageShift = pageShiftOf(b.pool.pageSize);
  p.queryHeads = b.queryHeads;
  p.groupSize = b.queryHeads / b.kvHeads;
  p.pageIndices = reinterpret_cast<const int32_t*>(meta + oPages);
  p.heads = reinterpret_cast<const ScoreHeadDesc*>(meta + oHeads);
  p.numHeads = (int32_t)plan.heads.size();
  p.maxLength = plan.maxLength;
  p.visible = reinterpret_cast<const int32_t*>(meta + oVisible);
  p.queries = b.queries;
  const ScaleFactors f = scaleFactors(b.scale);
  p.scoreScale = f.score;
  p.expScale = f.exp;
  p.raw = softmax ? reinterpret_cast<float*>(scratch + sRaw) : nullptr;
  p.stats = softmax ? reinterpret_cast<float*>(scratch + sStats) : nullptr;
  p.out = b.out;
  p.pooling = (int32_t)b.pooling;
  p.kernel = b.kernel;
  p.groupMax = b.groupMax ? 1 : 0;
  p.tiles = keyDiff ? reinterpret_cast<float*>(scratch + sTiles) : nullptr;
  p.anchor = keyDiff ? reinterpret_cast<float*>(scratch + sAnchor) : nullptr;
  p.expectedSlot = reinterpret_cast<const int32_t*>(meta + oSlots);
  p.expectedMean = b.expectedMean;
  p.expectedCovariance = b.expectedCovariance;
  p.scale = b.scale;
  p.halfScale = 0.5f * b.scale;
  p.halfScale2 = p.halfScale * b.scale;
  p.sink = b.sink;
  p.valueNorm = b.valueNorm ? 1 : 0;
  p.epsilon = b.epsilon;
  if (b.pool.dtype == 0) runScoresTyped<RT, StoreF32>(rt, b, plan, p);
  else if (b.pool.dtype == 1) runScoresTyped<RT, StoreF16>(rt, b, plan, p);
  else runScoresTyped<RT, StoreBF16>(rt, b, plan, p);
}

// Any number of heads: launches of at most kMaxLaunchHeads heads, each writing its slice of out.
template <class RT>
void runScores(RT& rt, const ScoreBatch& b) {
  if (b.heads.size() <= kMaxLaunchHeads) {
    runScoresPart(rt, b);
    return;
  }
  if (b.out == nullptr) throwInvalid("scoring needs a device output");
  ScoreBatch part = b;
  float* out = b.out;
  for (size_t first = 0; first < b.heads.size(); first += kMaxLaunchHeads) {
    const size_t end = std::min(b.heads.size(), first + kMaxLaunchHeads);
    part.heads.assign(b.heads.begin() + (std::ptrdiff_t)first, b.heads.begin() + (std::ptrdiff_t)end);
    part.out = out;
    runScoresPart(rt, part);
    for (size_t i = first; i < end; ++i) out += b.heads[i].head->length();
  }
}

}  // namespace cuda
}  // namespace lukv
