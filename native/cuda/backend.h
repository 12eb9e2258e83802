// The CUDA backend: the page pool in device memory (one allocation, checked against the device's
// free memory first) and the kernel families of cache.h, attention.h, scores.h and compress.h.
// Generic over the machine it runs on (Dev), so the same code runs on a GPU (backend.cu) and, for
// tests on machines without one, in the CPU emulator (native/tests/emu/emu_addon_backend.cpp).
// Plain C++: no kernels here.
//
// Dev provides:
//   static const char* name();                      // what runs the kernels
//   void* alloc(size_t bytes); void free(void* p);  // device memory
//   void toDevice(void* dst, const void* src, size_t bytes);  // ordered with the launches
//   void toHost(void* dst, const void* src, size_t bytes);    // waits for the data
//   bool memInfo(size_t* freeBytes, size_t* totalBytes);
//   and the launches: append, copyPages, attend, scores, compact (the families of cache.h,
//   attention.h, scores.h, compress.h), in order on one stream.
//
// Sequences, mass and oracle stay on the host (core/page_table); a call that accumulates the H2O
// mass or the oracle copies those arrays to the device and back.
#pragma once
#include <cmath>
#include <cstring>
#include <map>
#include <string>

#include "../core/backend.h"
#include "attention.h"
#include "cache.h"
#include "compress.h"
#include "scores.h"

namespace lukv {
namespace cuda {

template <class Dev>
class CudaBackend : public Backend {
 public:
  // Everything is checked before anything is allocated, on the host or the device.
  CudaBackend(const BackendConfig& c, Dev dev)
      : dev_(std::move(dev)), pages_(checkedPages(c, dev_)), threads_(c.threads) {
    view_ = poolView(nullptr, c.pages, c.pageSize, c.headDim, c.dtype);
    try {
      view_.data = static_cast<uint8_t*>(dev_.alloc((size_t)c.pages * (size_t)view_.pageBytes));
    } catch (const Error& e) {
      // The pool itself: too large for the device, as the check above would have said.
      if (e.code() != ErrorCode::OutOfMemory) throw;
      throw Error(ErrorCode::OutOfPages, std::string("could not allocate the device page pool: ") + e.what());
    }
  }
  ~CudaBackend() override {
    for (Buffer* b : {&q_, &out_, &keys_, &values_, &mass_, &oracle_, &weights_, &scores_})
      if (b->ptr) dev_.free(b->ptr);
    if (view_.data) dev_.free(view_.data);
  }

  const char* device() const override { return "cuda"; }
  std::string simd() const override { return Dev::name(); }
  int threads() const override { return threads_; }
  PageAllocator& pages() override { return pages_; }
  size_t pageBytes() const override { return (size_t)view_.pageBytes; }
  // Gathering into fresh pages: an in-place parallel compaction would read rows it overwrites.
  bool compactsInPlace() const override { return false; }
  void parallelFor(int64_t n, const std::function<void(int64_t)>& fn) override {
    for (int64_t i = 0; i < n; ++i) fn(i);
  }

  void copyPages(const std::vector<int32_t>& pairs) override {
    if (pairs.empty()) return;
    dev_.copyPages(view_, pairs);
  }

  void writeRows(const AppendPlan& plan, int tokens, int kvHeads, const void* keys, const void* values,
                 InputKind kind) override {
    const size_t bytes = (size_t)tokens * kvHeads * view_.headDim * (kind == InputKind::F32 ? 4 : 2);
    void* k = upload(keys_, keys, bytes);
    void* v = upload(values_, values, bytes);
    AppendBatch b;
    b.pool = view_;
    b.kvHeads = kvHeads;
    b.rows = tokens;
    b.keys = k;
    b.values = v;
    b.kind = kind;
    b.dest = plan.dest.data();
    dev_.append(b);
  }

  // One launch for every request: AttendBatch's sequences, their query rows one after another.
  void attendBatch(const std::vector<AttendRequest>& calls) override {
    if (calls.empty()) return;
    const int H = calls[0].kvHeads, Q = calls[0].queryHeads, G = Q / H, D = view_.headDim;
    std::vector<size_t> rowAt(calls.size() + 1, 0);
    for (size_t i = 0; i < calls.size(); ++i) rowAt[i + 1] = rowAt[i] + (size_t)calls[i].tokens;
    const size_t rowFloats = (size_t)Q * D, qFloats = rowAt.back() * rowFloats;
    AttendBatch b;
    b.pool = view_;
    b.kvHeads = H;
    b.queryHeads = Q;
    float* q = static_cast<float*>(grow(q_, qFloats * sizeof(float)));
    for (size_t i = 0; i < calls.size(); ++i)
      dev_.toDevice(q + rowAt[i] * rowFloats, calls[i].queries, (size_t)calls[i].tokens * rowFloats * sizeof(float));
    b.queries = q;
    b.out = static_cast<float*>(grow(out_, qFloats * sizeof(float)));
    // One launch has one scale: the core batches only requests that share it.
    b.scale = calls[0].scale;
    // The host's mass and oracle arrays, one device block per (request, head).
    const size_t N = calls.size() * (size_t)H;
    std::vector<float*> mass(N), oracle(N);
    std::vector<const float*> weights(N);
    size_t massFloats = 0, oracleFloats = 0;
    bool anyMass = false, anyOracle = false;
    for (const AttendRequest& r : calls)
      for (int h = 0; h < H; ++h) {
        anyMass = anyMass || r.mass;
        anyOracle = anyOracle || r.oracle;
        if (r.mass) massFloats += (size_t)r.heads[h].length();
        if (r.oracle) oracleFloats += (size_t)r.oracleTokens[h];
      }
    float* massBase = anyMass ? static_cast<float*>(grow(mass_, std::max<size_t>(massFloats, 1) * sizeof(float))) : nullptr;
    float* oracleBase = anyOracle ? static_cast<float*>(grow(oracle_, std::max<size_t>(oracleFloats, 1) * sizeof(float))) : nullptr;
    float* weightBase =
        anyOracle ? static_cast<float*>(grow(weights_, std::max<size_t>(oracleFloats * G, 1) * sizeof(float))) : nullptr;
    size_t massAt = 0, oracleAt = 0;
    for (size_t i = 0; i < calls.size(); ++i) {
      const AttendRequest& r = calls[i];
      AttendSequence s;
      s.heads = r.heads;
      s.rows = r.tokens;
      s.queryPositions = r.queryPositions;
      float** m = mass.data() + i * H;
      float** o = oracle.data() + i * H;
      const float** w = weights.data() + i * H;
      if (r.mass) {
        for (int h = 0; h < H; ++h) {
          m[h] = massBase + massAt;
          massAt += (size_t)r.heads[h].length();
          dev_.toDevice(m[h], r.mass[h], (size_t)r.heads[h].length() * sizeof(float));
        }
        s.mass = m;
      }
      if (r.oracle) {
        for (int h = 0; h < H; ++h) {
          const size_t T = (size_t)r.oracleTokens[h];
          o[h] = oracleBase + oracleAt;
          dev_.toDevice(o[h], r.oracle[h], T * sizeof(float));
          float* wh = weightBase + oracleAt * G;  // [G, T]: the head's query heads one after another
          for (int g = 0; g < G; ++g) dev_.toDevice(wh + (size_t)g * T, r.oracleWeight[(size_t)h * G + g], T * sizeof(float));
          w[h] = wh;
          oracleAt += T;
        }
        s.oracle = o;
        s.oracleWeight = w;
        s.oracleTokens = r.oracleTokens;
      }
      b.sequences.push_back(s);
    }
    dev_.attend(b);
    for (size_t i = 0; i < calls.size(); ++i) {
      const AttendRequest& r = calls[i];
      dev_.toHost(r.out, b.out + rowAt[i] * rowFloats, (size_t)r.tokens * rowFloats * sizeof(float));
      if (r.mass)
        for (int h = 0; h < H; ++h) dev_.toHost(r.mass[h], mass[i * H + h], (size_t)r.heads[h].length() * sizeof(float));
      if (r.oracle)
        for (int h = 0; h < H; ++h) dev_.toHost(r.oracle[h], oracle[i * H + h], (size_t)r.oracleTokens[h] * sizeof(float));
    }
  }

  void scores(const std::vector<ScoreRequest>& heads, int kvHeads, int queryHeads, const ScoreOptions& o) override {
    if (heads.empty()) return;
    const size_t rowFloats = (size_t)queryHeads * view_.headDim;
    const bool attention = o.scorer == Scorer::SnapKV || o.scorer == Scorer::TOVA;
    // Every layer's observation rows in one buffer; the heads of a layer share theirs.
    std::vector<float> rows;
    std::map<const float*, int32_t> rowOf;
    ScoreBatch b;
    b.pool = view_;
    b.kvHeads = kvHeads;
    b.queryHeads = queryHeads;
    b.scorer = o.scorer;
    b.pooling = o.pooling;
    b.kernel = o.kernel;
    b.groupMax = o.groupMax;
    b.seed = o.seed;
    b.scale = o.scale;
    b.sink = o.sink;
    b.window = o.window;
    b.valueNorm = o.expected.valueNorm;
    b.epsilon = (float)o.expected.epsilon;
    const bool expected = o.scorer == Scorer::ExpectedAttention;
    std::map<const float*, int32_t> slotOf;  // a layer's statistics, shared by its heads
    std::vector<const ScoreRequest*> slotHeads;
    size_t total = 0, massTotal = 0;
    for (const ScoreRequest& r : heads) {
      ScoreHeadRef x;
      x.head = r.head;
      x.layer = r.layer;
      x.kvHead = r.kvHead;
      x.newest = r.newest;
      if (attention && r.rows > 0) {
        auto it = rowOf.find(r.queries);
        if (it == rowOf.end()) {
          it = rowOf.emplace(r.queries, (int32_t)(rows.size() / rowFloats)).first;
          rows.insert(rows.end(), r.queries, r.queries + (size_t)r.rows * rowFloats);
        }
        x.row0 = it->second;
        x.rows = r.rows;
        x.queryPositions = r.queryPositions;
      }
      if (expected) {
        auto it = slotOf.emplace(r.expectedMean, (int32_t)slotHeads.size()).first;
        if (it->second == (int32_t)slotHeads.size()) slotHeads.push_back(&r);
        x.expectedSlot = it->second;
      }
      total += (size_t)r.head->length();
      if (r.mass) massTotal += (size_t)r.head->length();
      b.heads.push_back(x);
    }
    if (total == 0) return;
    b.queryRows = (int32_t)(rows.size() / std::max<size_t>(rowFloats, 1));
    if (!rows.empty()) b.queries = static_cast<const float*>(upload(q_, rows.data(), rows.size() * sizeof(float)));
    if (expected) {
      // The statistics take the place of the observation rows: means of every slot, then covariances.
      const size_t meanFloats = rowFloats, covFloats = rowFloats * view_.headDim;
      const bool cov = slotHeads[0]->expectedCovariance != nullptr;
      std::vector<float> stats;
      for (const ScoreRequest* r : slotHeads) stats.insert(stats.end(), r->expectedMean, r->expectedMean + meanFloats);
      if (cov)
        for (const ScoreRequest* r : slotHeads) stats.insert(stats.end(), r->expectedCovariance, r->expectedCovariance + covFloats);
      const float* base = static_cast<const float*>(upload(q_, stats.data(), stats.size() * sizeof(float)));
      b.expectedMean = base;
      b.expectedCovariance = cov ? base + slotHeads.size() * meanFloats : nullptr;
    }
    if (o.scorer == Scorer::H2O) {
      float* m = static_cast<float*>(grow(mass_, std::max<size_t>(massTotal, 1) * sizeof(float)));
      for (size_t i = 0; i < heads.size(); ++i) {
        if (!heads[i].mass) continue;
        dev_.toDevice(m, heads[i].mass, (size_t)heads[i].head->length() * sizeof(float));
        b.heads[i].mass = m;
        m += heads[i].head->length();
      }
    }
    b.out = static_cast<float*>(grow(scores_, total * sizeof(float)));
    dev_.scores(b);
    size_t at = 0;
    for (const ScoreRequest& r : heads) {
      dev_.toHost(r.out, b.out + at, (size_t)r.head->length() * sizeof(float));
      at += (size_t)r.head->length();
    }
  }

  void compact(const std::vector<CompactHead>& round) override { dev_.compact(view_, compactInputs(round)); }

  void readRaw(const HeadState& h, int32_t count, bool values, uint8_t* out) override {
    const int P = view_.pageSize;
    h.forSegments(P, 0, count, [&](int32_t page, int off, int cnt, int32_t t) {
      const uint8_t* src = view_.data + (int64_t)page * view_.pageBytes + (values ? (int64_t)P * view_.rowBytes : 0) +
                           (int64_t)off * view_.rowBytes;
      dev_.toHost(out + (size_t)t * view_.rowBytes, src, (size_t)cnt * view_.rowBytes);
    });
  }
  DType dtype() const override { return (DType)view_.dtype; }
  int headDim() const override { return view_.headDim; }

  void valueNorms(const HeadState& h, int32_t count, float* out) override {
    const int D = view_.headDim;
    std::vector<float> v((size_t)count * D);
    readRows(h, count, true, v.data());
    for (int32_t t = 0; t < count; ++t) {
      double s = 0;
      for (int d = 0; d < D; ++d) s += (double)v[(size_t)t * D + d] * v[(size_t)t * D + d];
      out[t] = (float)std::sqrt(s);
    }
  }

 private:
  struct Buffer {
    void* ptr = nullptr;
    size_t size = 0;
  };
  static int64_t checkedPages(const BackendConfig& c, Dev& dev) {
    checkHeadDim(c.headDim);
    if (c.pages < 0 || c.pages > INT32_MAX)
      throwInvalid("Expected between 0 and 2^31-1 pages but received " + std::to_string(c.pages));
    const double bytes = (double)c.pages * 2.0 * c.pageSize * c.headDim * dtypeBytes(c.dtype);
    size_t freeBytes = 0, totalBytes = 0;
    if (dev.memInfo(&freeBytes, &totalBytes) && bytes > (double)freeBytes)
      throw Error(ErrorCode::OutOfPages, "the device page pool needs " + std::to_string((uint64_t)bytes) +
                                             " bytes but the device has " + std::to_string(freeBytes) + " bytes free (of " +
                                             std::to_string(totalBytes) + "); lower maxTokens");
    return c.pages;
  }
  // Device buffers reused from call to call; they only grow. Sizes rounded to 16 bytes, so every
  // row the kernels read as 16-byte vectors stays inside.
  void* grow(Buffer& b, size_t bytes) {
    bytes = (bytes + 15) / 16 * 16;
    if (b.size >= bytes && b.ptr) return b.ptr;
    if (b.ptr) dev_.free(b.ptr);
    b.ptr = nullptr;
    b.size = 0;
    const size_t want = bytes + bytes / 2;
    b.ptr = dev_.alloc(want);
    b.size = want;
    return b.ptr;
  }
  void* upload(Buffer& b, const void* src, size_t bytes) {
    void* p = grow(b, bytes);
    dev_.toDevice(p, src, bytes);
    return p;
  }

  Dev dev_;
  PageAllocator pages_;
  PoolView view_;
  int threads_;
  Buffer q_, out_, keys_, values_, mass_, oracle_, weights_, scores_;
};

}  // namespace cuda
}  // namespace lukv
