// The KV cache: configuration, the page pool, the sequences and their per-(layer, KV head) state.
// Device-agnostic bookkeeping lives here; the CPU kernels that read and write pages are in cpu/.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "../cpu/kernels.h"
#include "compress.h"
#include "dtype.h"
#include "errors.h"
#include "pool.h"
#include "threadpool.h"

namespace lukv {

struct CacheConfig {
  int layers = 0, kvHeads = 0, queryHeads = 0, headDim = 0, pageSize = 16;
  int64_t maxTokens = 0;
  DType dtype = DType::F16;
  int threads = 1;
  std::string simd = "auto";
  std::string prefetch = "auto";  // cpu::parsePrefetch names
  int observationWindow = 32;  // query rows remembered per layer (SnapKV's observation window)
};

// Inputs are Float32 values, or raw 16-bit words already in the cache's storage type.
enum class InputKind { F32, Raw16 };

struct HeadState {
  std::vector<int32_t> pages;
  std::vector<int32_t> positions;  // original position of every kept token, ascending
  int32_t length() const { return (int32_t)positions.size(); }
  // Calls fn(page, offsetInPage, count, firstToken) for the tokens [t0, t1) page by page, with
  // P tokens per page.
  template <class F>
  void forSegments(int P, int32_t t0, int32_t t1, F&& fn) const {
    for (int32_t t = t0; t < t1;) {
      const int off = t % P;
      const int n = (int)(P - off < t1 - t ? P - off : t1 - t);
      fn(pages[t / P], off, n, t);
      t += n;
    }
  }
};

struct Sequence {
  int32_t id = 0;
  std::vector<HeadState> heads;          // [layers * kvHeads]
  std::vector<int32_t> appended;         // per layer: tokens ever appended = next position
  std::vector<std::vector<float>> obsQueries;   // per layer: last rows of queries, [rows][queryHeads*headDim]
  std::vector<std::vector<int32_t>> obsPositions;
  // Attention mass per kept token and head (H2O), accumulated by attend when `accumulate` is on.
  bool accumulate = false;
  std::vector<std::vector<float>> mass;  // [layers * kvHeads][length]
  // Profiling oracle (recordOracle): the context is the tokens kept when recording began.
  bool recording = false;
  std::vector<int32_t> oracleTokens;                 // [layers * kvHeads] context tokens per head
  std::vector<std::vector<float>> oracle;            // [layers * kvHeads][oracleTokens]
  std::vector<std::vector<float>> oracleWeight;      // [layers * queryHeads][oracleTokens of its KV head]
  // The observation window frozen when recording began (scores rank the context as compress would then).
  bool frozen = false;
  std::vector<std::vector<float>> frozenQueries;
  std::vector<std::vector<int32_t>> frozenPositions;
};

struct Usage {
  int64_t pagesTotal, pagesUsed, bytesTotal, bytesUsed, sequences;
};

class Cache {
 public:
  explicit Cache(const CacheConfig& cfg);
  const CacheConfig& config() const { return cfg_; }
  const char* simdName() const { return kernels_->name; }
  const char* prefetchName() const { return cpu::prefetchName(prefetch_); }
  int threads() const { return pool_threads_->threads(); }

  // Every public method takes the cache lock: calls from the JS thread and from async workers
  // (and several worker_threads sharing nothing but this object) are serialised here.
  std::mutex& mutex() { return mu_; }

  void dispose();
  bool disposed() const { return disposed_; }

  int32_t createSequence();
  int32_t fork(int32_t seq);
  void disposeSequence(int32_t seq);
  bool hasSequence(int32_t seq) const { return seqs_.count(seq) != 0; }

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
  // Host memory the cache holds resident: the pool pages written so far and their bookkeeping.
  size_t residentBytes() const {
    return pool_ ? (size_t)pool_->touchedPages() * pool_->pageBytes() + pool_->bookkeepingBytes() : 0;
  }

 private:
  Sequence& get(int32_t seq);
  const Sequence& get(int32_t seq) const;
  void checkLive() const;
  const uint8_t* rowPtr(const HeadState& h, int32_t t, bool values) const;
  // Observation rows of `layer` for attention-based scorers (copied), with their positions.
  void observationRows(const Sequence& seq, int layer, const ScoreOptions& o, std::vector<float>& rows,
                       std::vector<int32_t>& positions) const;
  void scoreLayerHeads(const Sequence& seq, const std::vector<int>& layers, const ScoreOptions& o,
                       std::vector<std::vector<float>>& out);

  CacheConfig cfg_;
  std::unique_ptr<PagePool> pool_;
  std::unique_ptr<ThreadPool> pool_threads_;
  const cpu::Kernels* kernels_;
  cpu::Prefetch prefetch_ = cpu::Prefetch::T0;
  std::map<int32_t, std::unique_ptr<Sequence>> seqs_;
  int32_t nextSeqId_ = 1;
  bool disposed_ = false;
  std::mutex mu_;
};

}  // namespace lukv
