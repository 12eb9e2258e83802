// Append and page-copy kernels and their host orchestration (generic over the runtime).
#pragma once
#include <algorithm>
#include <string>

#include "cache.h"
#include "device.h"

namespace lukv {
namespace cuda {

// Where vector vi of append entry e goes: its K address (the V address is pageSize rows on).
LUKV_DEVICE uint8_t* appendDest(const AppendParams& p, int64_t e, int vi) {
  const int32_t page = p.dest[2 * e], slot = p.dest[2 * e + 1];
  return p.pool.data + (int64_t)page * p.pool.pageBytes + (int64_t)slot * p.pool.rowBytes + vi * 16;
}

// One thread per 16-byte vector of a destination row; f32 input converted to the cache dtype.
template <class S>
__global__ void __launch_bounds__(256) appendConvertKernel(const AppendParams p) {
  constexpr int VEC = S::kPerVec;
  const int D = p.pool.headDim;
  const int vecs = D / VEC;
  const int64_t total = p.entries * vecs;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t e = i / vecs;
    const int vi = (int)(i - e * vecs);
    uint8_t* k = appendDest(p, e, vi);
    uint8_t* v = k + (int64_t)p.pool.pageSize * p.pool.rowBytes;
    const int64_t src = e * D + (int64_t)vi * VEC;
    float kf[VEC], vf[VEC];
    LUKV_UNROLL
    for (int j = 0; j < VEC; j += 4) {
      const float4 a = *reinterpret_cast<const float4*>(static_cast<const float*>(p.keys) + src + j);
      const float4 b = *reinterpret_cast<const float4*>(static_cast<const float*>(p.values) + src + j);
      kf[j] = a.x, kf[j + 1] = a.y, kf[j + 2] = a.z, kf[j + 3] = a.w;
      vf[j] = b.x, vf[j + 1] = b.y, vf[j + 2] = b.z, vf[j + 3] = b.w;
    }
    *reinterpret_cast<uint4*>(k) = S::pack(kf);
    *reinterpret_cast<uint4*>(v) = S::pack(vf);
  }
}

// Rows already in the cache's storage type (f32 into an f32 cache, or raw 16-bit words).
__global__ void __launch_bounds__(256) appendCopyKernel(const AppendParams p) {
  const int vecs = (int)(p.pool.rowBytes / 16);
  const int64_t total = p.entries * vecs;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t e = i / vecs;
    const int vi = (int)(i - e * vecs);
    uint8_t* k = appendDest(p, e, vi);
    uint8_t* v = k + (int64_t)p.pool.pageSize * p.pool.rowBytes;
    const int64_t src = e * p.pool.rowBytes + vi * 16;
    *reinterpret_cast<uint4*>(k) = *reinterpret_cast<const uint4*>(static_cast<const uint8_t*>(p.keys) + src);
    *reinterpret_cast<uint4*>(v) = *reinterpret_cast<const uint4*>(static_cast<const uint8_t*>(p.values) + src);
  }
}

__global__ void __launch_bounds__(256) copyPagesKernel(const CopyPagesParams p) {
  const int64_t vecs = p.pool.pageBytes / 16;
  const int64_t total = p.count * vecs;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t c = i / vecs, vi = i - c * vecs;
    const uint8_t* s = p.pool.data + (int64_t)p.pairs[2 * c] * p.pool.pageBytes + vi * 16;
    uint8_t* d = p.pool.data + (int64_t)p.pairs[2 * c + 1] * p.pool.pageBytes + vi * 16;
    *reinterpret_cast<uint4*>(d) = *reinterpret_cast<const uint4*>(s);
  }
}

// Grid for a grid-stride loop over `total` items of 256 threads.
inline unsigned strideBlocks(int64_t total) {
  return (unsigned)std::max<int64_t>(1, std::min<int64_t>((total + 255) / 256, 1 << 20));
}

template <class RT>
void runAppend(RT& rt, const AppendBatch& b) {
  checkPool(b.pool);
  if (b.rows <= 0) return;
  if (b.kvHeads < 1) throwInvalid("Expected kvHeads >= 1 but received " + std::to_string(b.kvHeads));
  if (b.keys == nullptr || b.values == nullptr || b.dest == nullptr) throwInvalid("append needs keys, values and destinations");
  if ((reinterpret_cast<uintptr_t>(b.keys) | reinterpret_cast<uintptr_t>(b.values)) % 16 != 0)
    throwInvalid("append needs 16-byte aligned device keys and values");
  if (b.kind == InputKind::Raw16 && b.pool.dtype == 0)
    throwInvalid("Expected Float32 keys and values for an f32 cache but received raw 16-bit words");
  const int64_t entries = (int64_t)b.rows * b.kvHeads;
  std::vector<int32_t> dest(b.dest, b.dest + 2 * entries);
  for (int64_t e = 0; e < entries; ++e) {
    if (dest[2 * e] < 0 || dest[2 * e] >= b.pool.numPages || dest[2 * e + 1] < 0 || dest[2 * e + 1] >= b.pool.pageSize)
      throwInvalid("append destination " + std::to_string(e) + " (page " + std::to_string(dest[2 * e]) + ", slot " +
                   std::to_string(dest[2 * e + 1]) + ") is outside the pool");
  }
  const uint8_t* meta = rt.upload(std::vector<uint8_t>(reinterpret_cast<const uint8_t*>(dest.data()),
                                                       reinterpret_cast<const uint8_t*>(dest.data() + dest.size())));
  AppendParams p{};
  p.pool = b.pool;
  p.kvHeads = b.kvHeads;
  p.inputF32 = b.kind == InputKind::F32;
  p.keys = b.keys;
  p.values = b.values;
  p.dest = reinterpret_cast<const int32_t*>(meta);
  p.entries = entries;
  const int64_t total = entries * (b.pool.rowBytes / 16);
  const dim3 grid(strideBlocks(total)), block(256);
  if (!p.inputF32 || b.pool.dtype == 0) rt.launch(appendCopyKernel, grid, block, p, "appendCopy");
  else if (b.pool.dtype == 1) rt.launch(appendConvertKernel<StoreF16>, grid, block, p, "appendF16");
  else rt.launch(appendConvertKernel<StoreBF16>, grid, block, p, "appendBF16");
}

template <class RT>
void runCopyPages(RT& rt, const PoolView& pool, const std::vector<int32_t>& pairs) {
  checkPool(pool);
  if (pairs.empty()) return;
  if (pairs.size() % 2 != 0) throwInvalid("page copies come in (source, destination) pairs");
  for (int32_t x : pairs)
    if (x < 0 || x >= pool.numPages) throwInvalid("page copy names page " + std::to_string(x) + " outside the pool");
  const uint8_t* meta = rt.upload(std::vector<uint8_t>(reinterpret_cast<const uint8_t*>(pairs.data()),
                                                       reinterpret_cast<const uint8_t*>(pairs.data() + pairs.size())));
  CopyPagesParams p{};
  p.pool = pool;
  p.pairs = reinterpret_cast<const int32_t*>(meta);
  p.count = (int64_t)pairs.size() / 2;
  rt.launch(copyPagesKernel, dim3(strideBlocks(p.count * (pool.pageBytes / 16))), dim3(256), p, "copyPages");
}

// An append for any pool with PagePool's allocator interface: the page bookkeeping is the core's
// (appendToHeads), the copies and row writes run here.
template <class RT, class Pool>
void runAppendTokens(RT& rt, Pool& pool, const PoolView& view, HeadState* heads, int kvHeads, int tokens, int32_t pos0,
                     const void* keys, const void* values, InputKind kind) {
  if (tokens <= 0) return;
  const AppendPlan plan = appendToHeads(heads, kvHeads, tokens, pos0, view.pageSize, pool, "");
  // Same stream: the private copies land before the rows written into them, and before any later
  // write into a released source.
  try {
    runCopyPages(rt, view, plan.copies);
  } catch (...) {
    releaseCopySources(pool, plan.copies);
    throw;
  }
  releaseCopySources(pool, plan.copies);
  AppendBatch b;
  b.pool = view;
  b.kvHeads = kvHeads;
  b.rows = tokens;
  b.keys = keys;
  b.values = values;
  b.kind = kind;
  b.dest = plan.dest.data();
  runAppend(rt, b);
}

}  // namespace cuda
}  // namespace lukv
