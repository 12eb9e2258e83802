// The CPU backend's pool side: creating it, writing appended rows, copying pages for
// copy-on-write, reading rows back; and handing attention and scoring to their kernels.
#include <cstring>

#include "attention.h"
#include "backend.h"
#include "scores.h"

namespace lukv {
namespace cpu {

CpuBackend::CpuBackend(const BackendConfig& c) : headDim_(c.headDim) {
  // "auto" takes AVX2 over AVX-512 for rows of a multiple of 8 but not of 16 (72, 104, ...): its
  // vectors cover them whole, where AVX-512's leave each row a scalar tail (4.5x slower at 72).
  const bool halfVectors = c.headDim % 16 != 0 && c.headDim % 8 == 0;
  const char* simd = c.simd == "auto" && halfVectors && std::strcmp(bestKernelName(), "avx512") == 0 && cpuSupports("avx2")
                         ? "avx2"
                         : c.simd.c_str();
  kernels_ = selectKernels(simd);
  if (!kernels_) throwInvalid("Expected a SIMD level this processor supports for simd but received \"" + c.simd + "\"");
  if (!parsePrefetch(c.prefetch.c_str(), &prefetch_))
    throwInvalid("Expected one of auto, t0, t2, nta, none for prefetch but received \"" + c.prefetch + "\"");
  pool_.reset(new PagePool(c.pages, c.pageSize, c.headDim, c.dtype));
  threads_.reset(new ThreadPool(c.threads));
}

void CpuBackend::copyPages(const std::vector<int32_t>& pairs) {
  for (size_t i = 0; i + 1 < pairs.size(); i += 2)
    std::memcpy(pool_->keys(pairs[i + 1]), pool_->keys(pairs[i]), pool_->pageBytes());
}

void CpuBackend::writeRows(const AppendPlan& plan, int tokens, int H, const void* keys, const void* values,
                           InputKind kind) {
  const int D = headDim_;
  const DType dtype = pool_->dtype();
  const size_t rowBytes = pool_->rowBytes();
  const bool copy = kind == InputKind::Raw16 || dtype == DType::F32;
  const size_t eb = kind == InputKind::Raw16 ? 2 : 4;
  const int64_t entries = (int64_t)tokens * H;
  // The kernel table's conversion (vectorised; the same bits as f32ToF16 / f32ToBf16).
  void (*convert)(const float*, uint16_t*, int) = dtype == DType::F16 ? kernels_->toF16 : kernels_->toBf16;
  for (int64_t e = 0; e < entries; ++e) {
    const int32_t page = plan.dest[2 * e], off = plan.dest[2 * e + 1];
    uint8_t* kdst = pool_->keys(page) + off * rowBytes;
    uint8_t* vdst = pool_->values(page) + off * rowBytes;
    const size_t srcRow = (size_t)e * D;
    if (copy) {
      std::memcpy(kdst, static_cast<const uint8_t*>(keys) + srcRow * eb, rowBytes);
      std::memcpy(vdst, static_cast<const uint8_t*>(values) + srcRow * eb, rowBytes);
      continue;
    }
    const float* k = static_cast<const float*>(keys) + srcRow;
    const float* v = static_cast<const float*>(values) + srcRow;
    uint16_t* kd = reinterpret_cast<uint16_t*>(kdst);
    uint16_t* vd = reinterpret_cast<uint16_t*>(vdst);
    convert(k, kd, D);
    convert(v, vd, D);
  }
}

void CpuBackend::attendBatch(const std::vector<AttendRequest>& calls) {
  std::vector<AttendArgs> args(calls.size());
  for (size_t i = 0; i < calls.size(); ++i) {
    AttendArgs& a = args[i];
    static_cast<AttendRequest&>(a) = calls[i];
    a.pool = pool_.get();
    a.kernels = kernels_;
    a.threads = threads_.get();
    a.headDim = headDim_;
    a.prefetch = prefetch_;
  }
  cpu::attendBatch(args.data(), args.size());
}

void CpuBackend::scores(const std::vector<ScoreRequest>& heads, int kvHeads, int queryHeads, const ScoreOptions& options) {
  threads_->parallelFor((int64_t)heads.size(), [&](int64_t i) {
    const ScoreRequest& r = heads[i];
    HeadScoreArgs a;
    a.pool = pool_.get();
    a.kernels = kernels_;
    a.head = r.head;
    a.layer = r.layer;
    a.headIndex = r.kvHead;
    a.group = queryHeads / kvHeads;
    a.headDim = headDim_;
    a.queryHeads = queryHeads;
    a.queries = r.queries;
    a.queryPositions = r.queryPositions;
    a.rows = r.rows;
    a.accumulated = r.mass;
    a.newest = r.newest;
    a.expectedMean = r.expectedMean;
    a.expectedCovariance = r.expectedCovariance;
    a.options = &options;
    scoreHead(a, r.out);
  });
}

void CpuBackend::readRaw(const HeadState& h, int32_t count, bool values, uint8_t* out) {
  const size_t rowBytes = pool_->rowBytes();
  h.forSegments(pool_->pageSize(), 0, count, [&](int32_t page, int off, int cnt, int32_t t) {
    const uint8_t* src = (values ? pool_->values(page) : pool_->keys(page)) + (size_t)off * rowBytes;
    std::memcpy(out + (size_t)t * rowBytes, src, (size_t)cnt * rowBytes);
  });
}

void CpuBackend::valueNorms(const HeadState& h, int32_t count, float* out) {
  const size_t rowBytes = pool_->rowBytes();
  const DType dt = pool_->dtype();
  h.forSegments(pool_->pageSize(), 0, count, [&](int32_t page, int off, int cnt, int32_t t) {
    kernels_->rowNorms(dt, pool_->values(page) + (size_t)off * rowBytes, cnt, headDim_, out + t);
  });
}

}  // namespace cpu

std::unique_ptr<Backend> makeCpuBackend(const BackendConfig& config) {
  return std::unique_ptr<Backend>(new cpu::CpuBackend(config));
}

}  // namespace lukv
