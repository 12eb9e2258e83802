// The KV cache: configuration, the page table (sequences and their per-(layer, KV head) state)
// and one backend (cpu/ or cuda/) that holds the pages and runs the kernels. Every call is planned
// here and executed by the backend.
#pragma once
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "backend.h"
#include "compress.h"
#include "dtype.h"
#include "errors.h"
#include "page_table.h"

namespace lukv {

struct CacheConfig {
  int layers = 0, kvHeads = 0, queryHeads = 0, headDim = 0, pageSize = 16;
  int64_t maxTokens = 0;
  DType dtype = DType::F16;
  int threads = 1;
  std::string simd = "auto";
  std::string prefetch = "auto";  // cpu::parsePrefetch names
  int observationWindow = 32;  // query rows remembered per layer (SnapKV's observation window)
  std::string device = "cpu";  // "cpu" or "cuda"
};

struct Usage {
  int64_t pagesTotal, pagesUsed, bytesTotal, bytesUsed, sequences;
};

class Cache {
 public:
  explicit Cache(const CacheConfig& cfg);
  const CacheConfig& config() const { return cfg_; }
  std::string simdName() const { return backend_->simd(); }
  std::string prefetchName() const { return backend_->prefetch(); }
  int threads() const { return backend_->threads(); }
  const char* device() const { return backend_->device(); }

  // The cache does not lock: its callers (the addon) hold this mutex around every call, so calls
  // from the JS thread, async workers and worker_threads sharing the object are serialised.
  std::mutex& mutex() { return mu_; }

  void dispose();
  bool disposed() const { return disposed_; }

  int32_t createSequence();
  int32_t fork(int32_t seq);
  void disposeSequence(int32_t seq);
  bool hasSequence(int32_t seq) const { return table_ && table_->has(seq); }

  void append(int32_t seq, int layer, int tokens, const void* keys, const void* values, InputKind kind);
  // out: [tokens, queryHeads, headDim]; queries are the last `tokens` positions appended to `layer`.
  void attend(int32_t seq, int layer, int tokens, const float* queries, float* out, float scale);

  // Scores of every kept token of every KV head of `layer` (what compress ranks by).
  std::vector<std::vector<float>> scores(int32_t seq, int layer, const ScoreOptions& options);
  // Scores, allocates, selects and compacts every layer; returns what was kept and freed.
  CompressReport compress(int32_t seq, const CompressOptions& options);
  void setAccumulate(int32_t seq, bool on);
  // Starts recording the oracle. outputProjection: per layer [queryHeads*headDim, hidden] (empty =
  // use ||v||); normalize divides the weights by their sum over the layer's heads and tokens.
  void recordOracle(int32_t seq, const std::vector<std::vector<float>>& outputProjection, bool normalize);
  void stopOracle(int32_t seq);
  std::vector<std::vector<float>> oracle(int32_t seq, int layer) const;

  std::vector<int32_t> lengths(int32_t seq) const;
  std::vector<int32_t> positions(int32_t seq, int layer, int head) const;
  // Copies a head's kept K or V rows out as f32, [length, headDim] (for tests and tools).
  std::vector<float> readRows(int32_t seq, int layer, int head, bool values) const;
  int32_t appended(int32_t seq, int layer) const;
  Usage usage() const;
  // Host memory the cache holds resident: the pool pages written so far (when the pool is in host
  // memory) and the page bookkeeping.
  size_t residentBytes() {
    if (!backend_) return 0;
    PageAllocator& pages = backend_->pages();
    const bool hostPool = std::string(backend_->device()) == "cpu";
    return (hostPool ? (size_t)pages.touchedPages() * backend_->pageBytes() : 0) + pages.bookkeepingBytes();
  }

 private:
  Sequence& get(int32_t seq);
  const Sequence& get(int32_t seq) const;
  void checkLive() const;
  // Observation rows of `layer` for attention-based scorers (copied), with their positions.
  void observationRows(const Sequence& seq, int layer, const ScoreOptions& o, std::vector<float>& rows,
                       std::vector<int32_t>& positions) const;
  void scoreLayerHeads(const Sequence& seq, const std::vector<int>& layers, const ScoreOptions& o,
                       std::vector<std::vector<float>>& out);
  void layerMeanScores(const Sequence& seq, int layer, std::vector<std::vector<float>>& out) const;

  CacheConfig cfg_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<PageTable> table_;
  std::string limits_;  // the pool's shape, for out-of-pages messages
  bool disposed_ = false;
  std::mutex mu_;
};

}  // namespace lukv
