// Attention kernels and their host orchestration (generic over the runtime, see runtime.h).
//
// One block = one unit: a token range [t0, t1) of a group of up to 8 query vectors (the whole
// GQA group of one decode row, or several prefill rows) of one KV head. Its 4 warps take turns
// over tiles of tokens; inside a warp, R lanes hold one K/V row as 16-byte vectors, so a warp
// step covers 32/R rows. Scores are kept in base-2 units: q . k * scale * log2 e, the factors
// applied to the dot (never to q, whose scaled elements could overflow where no score does).
// A group with one unit writes its output directly; otherwise each unit writes (max, sum, acc)
// partials and the group's last unit to finish merges them (or attendReduceKernel does).
#pragma once
#include <algorithm>
#include <cmath>

#include "attention.h"
#include "device.h"

namespace lukv {
namespace cuda {

template <class S, int DPAD, int NQ>
struct AttendShape {
  static constexpr int kVec = S::kPerVec;                                 // elements per 16 bytes
  static constexpr int kLanes = DPAD / kVec < 32 ? DPAD / kVec : 32;      // lanes per row (R)
  static constexpr int kVecs = DPAD / (kLanes * kVec);                    // 16-byte vectors per lane and row
  static constexpr int kElems = kVecs * kVec;                             // elements per lane and row
  static constexpr int kRowsPerStep = 32 / kLanes;
  // Steps per tile: enough independent loads in flight, few enough registers for 8 vectors.
  static constexpr int kSteps = ((NQ >= 8 ? 2 : 4) / kVecs) > 0 ? (NQ >= 8 ? 2 : 4) / kVecs : 1;
  static constexpr int kTile = kSteps * kRowsPerStep;                      // tokens per warp tile
};

// Merges the partials of a split group into its output (FlashDecoding's reduce). Reads through
// L2 (__ldcg): in the fused path the partials were written by other blocks of the same launch,
// and L1 is not coherent across SMs.
LUKV_DEVICE void mergeGroup(const AttnParams& p, const AttnGroup& grp, int thread, int threads) {
  const int D = p.pool.headDim;
  const int nvec = grp.rows * grp.heads;
  for (int idx = thread; idx < nvec * D; idx += threads) {
    const int v = idx / D, d = idx - v * D;
    float M = -INFINITY;
    for (int32_t k = 0; k < grp.unitCount; ++k)
      M = fmaxf(M, __ldcg(p.partialML + ((int64_t)(grp.unitBegin + k) * p.partialStride + v) * 2));
    float a = 0.f, L = 0.f;
    if (M != -INFINITY) {
      for (int32_t k = 0; k < grp.unitCount; ++k) {
        const int64_t slot = (int64_t)(grp.unitBegin + k) * p.partialStride + v;
        const float mk = __ldcg(p.partialML + slot * 2);
        if (mk == -INFINITY) continue;
        const float f = exp2f(mk - M);
        a += __ldcg(p.partialAcc + slot * D + d) * f;
        L += __ldcg(p.partialML + slot * 2 + 1) * f;
      }
    }
    const int r = v / grp.heads, g = v - r * grp.heads;
    p.out[((int64_t)(grp.row0 + r) * p.queryHeads + grp.qhead0 + g) * D + d] = M == -INFINITY ? 0.f : a / L;
    if (d == 0 && p.finalML != nullptr) {
      p.finalML[(grp.vectorBase + v) * 2] = M;
      p.finalML[(grp.vectorBase + v) * 2 + 1] = L;
    }
  }
}

template <class S, int DPAD, int NQ>
__global__ void __launch_bounds__(kAttendThreads) attendKernel(const AttnParams p) {
  using Sh = AttendShape<S, DPAD, NQ>;
  constexpr int VEC = Sh::kVec, R = Sh::kLanes, NV = Sh::kVecs, E = Sh::kElems;
  constexpr int RPS = Sh::kRowsPerStep, STEPS = Sh::kSteps, TILE = Sh::kTile;
  constexpr int kWarps = kAttendThreads / 32;
  __shared__ float sAcc[kWarps][NQ][DPAD];
  __shared__ float sM[kWarps][NQ];
  __shared__ float sL[kWarps][NQ];

  const AttnUnit u = p.units[blockIdx.x];
  const AttnGroup grp = p.groups[u.group];
  const AttnHead hd = p.heads[grp.head];
  const int D = p.pool.headDim;
  const int warp = (int)threadIdx.x / 32, lane = (int)threadIdx.x % 32;
  const int lr = lane % R, rg = lane / R;
  const int nvec = grp.rows * grp.heads;
  const int32_t* pages = p.pageIndices + hd.pageBegin;
  const int64_t vOffset = (int64_t)p.pool.pageSize * p.pool.rowBytes;

  // This lane's slice of every query vector, and how far each vector may look.
  float q[NQ][E];
  int32_t vis[NQ];
  int32_t visMax = 0;
  LUKV_UNROLL
  for (int v = 0; v < NQ; ++v) {
    vis[v] = 0;
    LUKV_UNROLL
    for (int e = 0; e < E; ++e) q[v][e] = 0.f;
    if (v < nvec) {
      const int r = v / grp.heads, g = v - r * grp.heads;
      vis[v] = p.visible[grp.visibleBegin + r];
      visMax = vis[v] > visMax ? vis[v] : visMax;
      const float* qp = p.queries + ((int64_t)(grp.row0 + r) * p.queryHeads + grp.qhead0 + g) * D;
      LUKV_UNROLL
      for (int i = 0; i < NV; ++i) {
        const int d0 = (i * R + lr) * VEC;
        if (d0 < D) {
          LUKV_UNROLL
          for (int e = 0; e < VEC; ++e) q[v][i * VEC + e] = qp[d0 + e];
        }
      }
    }
  }
  const int32_t tEnd = u.t1 < visMax ? u.t1 : visMax;

  float m[NQ], l[NQ], acc[NQ][E];
  LUKV_UNROLL
  for (int v = 0; v < NQ; ++v) {
    m[v] = -INFINITY;
    l[v] = 0.f;
    LUKV_UNROLL
    for (int e = 0; e < E; ++e) acc[v][e] = 0.f;
  }

  for (int32_t base = u.t0 + warp * TILE; base < tEnd; base += kWarps * TILE) {
    // Issue every K and V load of the tile before the first use.
    uint4 kr[STEPS][NV], vr[STEPS][NV];
    LUKV_UNROLL
    for (int s = 0; s < STEPS; ++s) {
      const int32_t t = base + s * RPS + rg;
      const uint8_t* row = t < tEnd ? keyRow(p.pool, pages, p.pageShift, t) : nullptr;
      LUKV_UNROLL
      for (int i = 0; i < NV; ++i) {
        const int d0 = (i * R + lr) * VEC;
        if (row != nullptr && d0 < D) {
          kr[s][i] = load16(row + d0 * S::kBytes);
          vr[s][i] = load16(row + vOffset + d0 * S::kBytes);
        } else {
          kr[s][i] = zero16();
          vr[s][i] = zero16();
        }
      }
    }
    // Scores: partial dots over this lane's elements, summed over the R lanes of the row, times
    // scoreScale, then expScale (1 unless scale x log2 e overflows): base-2 scores, each rounded
    // once more, so that the max below is one of them and its exponent is exactly 0.
    float sc[STEPS][NQ];
    LUKV_UNROLL
    for (int s = 0; s < STEPS; ++s) {
      float kf[E];
      LUKV_UNROLL
      for (int i = 0; i < NV; ++i) S::unpack(kr[s][i], kf + i * VEC);
      LUKV_UNROLL
      for (int v = 0; v < NQ; ++v) {
        float dot = 0.f;
        LUKV_UNROLL
        for (int e = 0; e < E; ++e) dot = fmaf(q[v][e], kf[e], dot);
        sc[s][v] = laneSum<1, R>(dot) * p.scoreScale * p.expScale;
      }
    }
    // Causal mask by position (a prefix of the head per query row); raw scores saved for the
    // mass/oracle pass, once per row.
    LUKV_UNROLL
    for (int s = 0; s < STEPS; ++s) {
      const int32_t t = base + s * RPS + rg;
      LUKV_UNROLL
      for (int v = 0; v < NQ; ++v) {
        if (t < tEnd && t < vis[v]) {
          if (p.scores != nullptr && lr == 0)
            p.scores[grp.scoreBase + (int64_t)v * grp.span + t] = sc[s][v];
        } else {
          sc[s][v] = -INFINITY;
        }
      }
    }
    // Online softmax: the tile's max over the warp, rescale, weights.
    LUKV_UNROLL
    for (int v = 0; v < NQ; ++v) {
      float mt = sc[0][v];
      LUKV_UNROLL
      for (int s = 1; s < STEPS; ++s) mt = fmaxf(mt, sc[s][v]);
      mt = laneMax<R, 32>(mt);
      const float mNew = fmaxf(m[v], mt);
      const float corr = mNew == -INFINITY ? 1.f : exp2f(m[v] - mNew);
      m[v] = mNew;
      l[v] *= corr;
      LUKV_UNROLL
      for (int e = 0; e < E; ++e) acc[v][e] *= corr;
      LUKV_UNROLL
      for (int s = 0; s < STEPS; ++s) {
        sc[s][v] = mNew == -INFINITY ? 0.f : exp2f(sc[s][v] - mNew);
        l[v] += sc[s][v];
      }
    }
    LUKV_UNROLL
    for (int s = 0; s < STEPS; ++s) {
      float vf[E];
      LUKV_UNROLL
      for (int i = 0; i < NV; ++i) S::unpack(vr[s][i], vf + i * VEC);
      LUKV_UNROLL
      for (int v = 0; v < NQ; ++v) {
        LUKV_UNROLL
        for (int e = 0; e < E; ++e) acc[v][e] = fmaf(sc[s][v], vf[e], acc[v][e]);
      }
    }
  }

  // Every lane of a row shares the row's weights: sum over the row groups of the warp.
  LUKV_UNROLL
  for (int v = 0; v < NQ; ++v) {
    l[v] = laneSum<R, 32>(l[v]);
    LUKV_UNROLL
    for (int e = 0; e < E; ++e) acc[v][e] = laneSum<R, 32>(acc[v][e]);
  }
  if (lane == 0) {
    LUKV_UNROLL
    for (int v = 0; v < NQ; ++v) {
      sM[warp][v] = m[v];
      sL[warp][v] = l[v];
    }
  }
  if (rg == 0) {
    LUKV_UNROLL
    for (int v = 0; v < NQ; ++v) {
      LUKV_UNROLL
      for (int i = 0; i < NV; ++i) {
        LUKV_UNROLL
        for (int e = 0; e < VEC; ++e) sAcc[warp][v][(i * R + lr) * VEC + e] = acc[v][i * VEC + e];
      }
    }
  }
  __syncthreads();

  // Merge the warps; the only unit of its group writes the output, others a partial.
  const bool direct = grp.unitCount == 1;
  for (int idx = (int)threadIdx.x; idx < nvec * D; idx += kAttendThreads) {
    const int v = idx / D, d = idx - v * D;
    float M = -INFINITY;
    LUKV_UNROLL
    for (int w = 0; w < kWarps; ++w) M = fmaxf(M, sM[w][v]);
    float a = 0.f, L = 0.f;
    if (M != -INFINITY) {
      LUKV_UNROLL
      for (int w = 0; w < kWarps; ++w) {
        const float mw = sM[w][v];
        if (mw != -INFINITY) {
          const float f = exp2f(mw - M);
          a += sAcc[w][v][d] * f;
          L += sL[w][v] * f;
        }
      }
    }
    if (direct) {
      const int r = v / grp.heads, g = v - r * grp.heads;
      p.out[((int64_t)(grp.row0 + r) * p.queryHeads + grp.qhead0 + g) * D + d] = M == -INFINITY ? 0.f : a / L;
      if (d == 0 && p.finalML != nullptr) {
        p.finalML[(grp.vectorBase + v) * 2] = M;
        p.finalML[(grp.vectorBase + v) * 2 + 1] = L;
      }
    } else {
      const int64_t slot = (int64_t)blockIdx.x * p.partialStride + v;
      p.partialAcc[slot * D + d] = a;
      if (d == 0) {
        p.partialML[slot * 2] = M;
        p.partialML[slot * 2 + 1] = L;
      }
    }
  }

  // Fused reduce: the last unit of a split group to finish merges it, saving a launch. Each
  // thread fences its partials before the block counts itself, so the last block sees them all.
  if (!direct && p.counters != nullptr) {
    __shared__ int sLast;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) sLast = atomicAdd(p.counters + u.group, 1) == grp.unitCount - 1 ? 1 : 0;
    __syncthreads();
    if (sLast) {
      __threadfence();
      mergeGroup(p, grp, (int)threadIdx.x, kAttendThreads);
      if (threadIdx.x == 0) p.counters[u.group] = 0;  // ready for the next launch
    }
  }
}

// The separate reduce launch (used when no counters are given).
__global__ void __launch_bounds__(128) attendReduceKernel(const AttnParams p) {
  const AttnGroup grp = p.groups[blockIdx.x];
  if (grp.unitCount <= 1) return;
  mergeGroup(p, grp, (int)threadIdx.x, (int)blockDim.x);
}

// Second, light pass over the saved scores (not over K/V), as on the CPU: softmax weights into
// the H2O mass and the oracle. One thread per (head, token), so each element has one writer.
__global__ void __launch_bounds__(256) attendMassKernel(const AttnParams p) {
  const AttnHead hd = p.heads[blockIdx.x];
  if (hd.mass == nullptr && hd.oracle == nullptr) return;
  const float invG = 1.f / (float)hd.groupSize;
  for (int32_t t = (int32_t)(blockIdx.y * blockDim.x + threadIdx.x); t < hd.length;
       t += (int32_t)(gridDim.y * blockDim.x)) {
    float add = 0.f, best = -INFINITY;
    for (int32_t gi = hd.groupBegin; gi < hd.groupEnd; ++gi) {
      const AttnGroup grp = p.groups[gi];
      if (t >= grp.span) continue;
      for (int v = 0; v < grp.rows * grp.heads; ++v) {
        const int r = v / grp.heads, g = v - r * grp.heads;
        if (t >= p.visible[grp.visibleBegin + r]) continue;
        const float M = p.finalML[(grp.vectorBase + v) * 2], L = p.finalML[(grp.vectorBase + v) * 2 + 1];
        const float w = exp2f(p.scores[grp.scoreBase + (int64_t)v * grp.span + t] - M) / L;
        add += w * invG;
        if (hd.oracle != nullptr && t < hd.oracleTokens)
          best = fmaxf(best, w * hd.oracleWeight[(int64_t)(grp.g0 + g) * hd.oracleTokens + t]);
      }
    }
    if (hd.mass != nullptr) hd.mass[t] += add;
    if (hd.oracle != nullptr && t < hd.oracleTokens) hd.oracle[t] = fmaxf(hd.oracle[t], best);
  }
}

inline int paddedHeadDim(int headDim) { return headDim <= 64 ? 64 : headDim <= 128 ? 128 : 256; }

template <class S, int DPAD>
AttendKernelFn attendKernelForNq(int nq) {
  switch (nq) {
    case 1: return attendKernel<S, DPAD, 1>;
    case 2: return attendKernel<S, DPAD, 2>;
    case 4: return attendKernel<S, DPAD, 4>;
    default: return attendKernel<S, DPAD, 8>;
  }
}

template <class S>
AttendKernelFn attendKernelForDim(int dpad, int nq) {
  if (dpad == 64) return attendKernelForNq<S, 64>(nq);
  if (dpad == 128) return attendKernelForNq<S, 128>(nq);
  return attendKernelForNq<S, 256>(nq);
}

inline AttendKernelFn attendKernelFor(int dtype, int headDim, int nq) {
  const int dpad = paddedHeadDim(headDim);
  if (dtype == 0) return attendKernelForDim<StoreF32>(dpad, nq);
  if (dtype == 1) return attendKernelForDim<StoreF16>(dpad, nq);
  return attendKernelForDim<StoreBF16>(dpad, nq);
}

// Plans the batch, uploads its metadata and carves the scratch; launchPrepared then runs it.
template <class RT>
PreparedAttend prepareAttend(RT& rt, const AttendBatch& b, const AttendOptions& opt) {
  const int32_t minChunk = opt.minChunk;
  checkPool(b.pool);
  if (b.kvHeads < 1 || b.queryHeads < b.kvHeads || b.queryHeads % b.kvHeads != 0)
    throwInvalid("Expected queryHeads a multiple of kvHeads but received " + std::to_string(b.queryHeads) + " and " +
                 std::to_string(b.kvHeads));
  PreparedAttend out;
  int32_t totalRows = 0;
  const std::vector<AttendHeadInput> in = attendInputs(b, &totalRows);
  if (in.empty() || totalRows == 0) return out;
  if (b.queries == nullptr || b.out == nullptr) throwInvalid("attend needs device queries and output");
  if (!std::isfinite(b.scale)) throwInvalid("Expected a finite scale but received " + std::to_string(b.scale));
  const int G = b.queryHeads / b.kvHeads;
  int maxRows = 0;
  for (const auto& h : in) maxRows = std::max(maxRows, h.rows);
  const int nq = attendVectorsPerBlock(G, maxRows);
  const AttendKernelFn kernel = attendKernelFor(b.pool.dtype, b.pool.headDim, nq);
  const int64_t target = (int64_t)rt.smCount() * rt.residentBlocks(kernel, kAttendThreads);
  const AttendPlan plan = planAttend(in, b.queryHeads, b.kvHeads, totalRows, b.pool, target, minChunk);
  const int D = b.pool.headDim;

  Arena arena;
  const size_t oPages = arena.add(plan.pageIndices), oHeads = arena.add(plan.heads), oGroups = arena.add(plan.groups),
               oUnits = arena.add(plan.units), oVisible = arena.add(plan.visible);
  const uint8_t* meta = rt.upload(arena.bytes());
  ScratchLayout sl;
  const size_t units = plan.units.size();
  const size_t sAcc = plan.needReduce ? sl.add(units * nq * D * sizeof(float)) : 0;
  const size_t sML = plan.needReduce ? sl.add(units * nq * 2 * sizeof(float)) : 0;
  const size_t sFinal = plan.keepScores ? sl.add((size_t)plan.vectors * 2 * sizeof(float)) : 0;
  const size_t sScores = plan.keepScores ? sl.add((size_t)plan.scoreFloats * sizeof(float)) : 0;
  uint8_t* scratch = sl.size() ? rt.scratch(sl.size()) : nullptr;

  AttnParams& p = out.params;
  p.pool = b.pool;
  p.queryHeads = b.queryHeads;
  p.pageShift = pageShiftOf(b.pool.pageSize);
  p.pageIndices = reinterpret_cast<const int32_t*>(meta + oPages);
  p.heads = reinterpret_cast<const AttnHead*>(meta + oHeads);
  p.groups = reinterpret_cast<const AttnGroup*>(meta + oGroups);
  p.units = reinterpret_cast<const AttnUnit*>(meta + oUnits);
  p.visible = reinterpret_cast<const int32_t*>(meta + oVisible);
  p.queries = b.queries;
  p.out = b.out;
  const ScaleFactors f = scaleFactors(b.scale);
  p.scoreScale = f.score;
  p.expScale = f.exp;
  p.partialStride = nq;
  p.partialAcc = plan.needReduce ? reinterpret_cast<float*>(scratch + sAcc) : nullptr;
  p.partialML = plan.needReduce ? reinterpret_cast<float*>(scratch + sML) : nullptr;
  p.finalML = plan.keepScores ? reinterpret_cast<float*>(scratch + sFinal) : nullptr;
  p.scores = plan.keepScores ? reinterpret_cast<float*>(scratch + sScores) : nullptr;
  p.counters = plan.needReduce && opt.fusedReduce ? rt.counters(plan.groups.size()) : nullptr;
  p.numHeads = (int32_t)plan.heads.size();
  p.numGroups = (int32_t)plan.groups.size();
  p.numUnits = (int32_t)units;
  p.maxSpan = plan.maxSpan;
  out.kernel = kernel;
  out.needReduce = plan.needReduce;
  out.keepScores = plan.keepScores;
  out.vectorsPerBlock = nq;
  return out;
}

template <class RT>
void launchPrepared(RT& rt, const PreparedAttend& a) {
  if (a.kernel == nullptr) return;
  const AttnParams& p = a.params;
  rt.launch(a.kernel, dim3((unsigned)p.numUnits), dim3(kAttendThreads), p, "attend");
  if (a.needReduce && p.counters == nullptr)
    rt.launch(attendReduceKernel, dim3((unsigned)p.numGroups), dim3(128), p, "attendReduce");
  if (a.keepScores) {
    const unsigned ys = (unsigned)std::min<int64_t>(65535, std::max<int64_t>(1, ((int64_t)p.maxSpan + 255) / 256));
    rt.launch(attendMassKernel, dim3((unsigned)p.numHeads, ys), dim3(256), p, "attendMass");
  }
}

template <class RT>
void runAttend(RT& rt, const AttendBatch& b, const AttendOptions& opt = AttendOptions()) {
  const PreparedAttend a = prepareAttend(rt, b, opt);
  launchPrepared(rt, a);
}

}  // namespace cuda
}  // namespace lukv
