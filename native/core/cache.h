// The KV cache: configuration, the page table (sequences and their per-(layer, KV head) state)
// and one backend (cpu/ or cuda/) that holds the pages and runs the kernels. Every call is planned
// here and executed by the backend.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
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

  // Every public call is safe from any thread (the JS thread, async workers, worker_threads sharing
  // the object) and locks what it needs itself:
  // - calls on one sequence are serialised by that sequence's lock, held for the whole call;
  // - calls on different sequences run at the same time: the page table and the page allocator
  //   are locked only while they change (planning an append or a compaction round, committing
  //   it), never while rows are read or written, so lengths(), positions(), appended() and
  //   usage() wait for no kernel of another sequence;
  // - a backend that runs one call at a time (CUDA: one stream, one workspace) is also locked
  //   around each call that reaches it; the CPU backend is not (its scratch is per thread and its
  //   thread pool runs a second concurrent caller's items on that caller's thread);
  // - dispose() waits for every call in flight; calls after it throw Disposed.
  // Lock order: lifetime (shared) -> sequence -> backend -> table.
  void dispose();
  bool disposed() const { return disposed_.load(); }

  int32_t createSequence();
  int32_t fork(int32_t seq);
  void disposeSequence(int32_t seq);
  bool hasSequence(int32_t seq) const { return table_ && table_->has(seq); }

  void append(int32_t seq, int layer, int tokens, const void* keys, const void* values, InputKind kind);
  // out: [tokens, queryHeads, headDim]; queries are the last `tokens` positions appended to `layer`.
  void attend(int32_t seq, int layer, int tokens, const float* queries, float* out, float scale);

  // Batched steps: one call on each of several distinct sequences, all on `layer`, planned here and
  // run as one pass of the backend. A sequence given twice, or any bad item, fails the whole batch
  // before anything runs.
  struct AttendItem {
    int32_t seq;
    int tokens;            // query rows: the last `tokens` positions appended to the layer
    const float* queries;  // [tokens, queryHeads, headDim]
    float* out;            // same shape
  };
  void attendBatch(int layer, const std::vector<AttendItem>& items, float scale);
  struct AppendItem {
    int32_t seq;
    int tokens;
    const void* keys;  // [tokens, kvHeads, headDim] of `kind`
    const void* values;
  };
  // All or nothing: OutOfPages (nothing appended) unless the pool holds the pages of every item.
  void appendBatch(int layer, const std::vector<AppendItem>& items, InputKind kind);

  // Scores of every kept token of every KV head of `layer` (what compress ranks by).
  std::vector<std::vector<float>> scores(int32_t seq, int layer, const ScoreOptions& options);
  // Scores, allocates, selects and compacts every layer; returns what was kept and freed.
  CompressReport compress(int32_t seq, const CompressOptions& options);
  void setAccumulate(int32_t seq, bool on);
  bool accumulating(int32_t seq) const;
  // Starts recording the oracle. outputProjection: per layer [queryHeads*headDim, hidden] (empty =
  // use ||v||); normalize divides the weights by their sum over the layer's heads and tokens.
  void recordOracle(int32_t seq, const std::vector<std::vector<float>>& outputProjection, bool normalize);
  void stopOracle(int32_t seq);
  std::vector<std::vector<float>> oracle(int32_t seq, int layer) const;

  std::vector<int32_t> lengths(int32_t seq) const;
  // Pages of the sequence that no other sequence holds: what evicting from it can give back.
  int64_t pagesHeldAlone(int32_t seq) const;
  std::vector<int32_t> positions(int32_t seq, int layer, int head) const;
  // Copies a head's kept K or V rows out as f32, [length, headDim] (for tests and tools).
  std::vector<float> readRows(int32_t seq, int layer, int head, bool values) const;
  int32_t appended(int32_t seq, int layer) const;

  // Saved sequences (sequence_file.cpp; the format is docs/sequence-format.md). `bounds` is the
  // caller's per-layer metadata ([layers * 3] finite, >= 0: the input-check bounds of the
  // TypeScript layer), saved with the sequence and given back by loadSequence. Loading checks the
  // whole file (BadSequenceFile naming the problem) and the free pages (OutOfPages) before it takes
  // a page; a failed load changes nothing. With `measure` (a cache that checks its inputs) the
  // bounds returned are at least those of the file's own rows and observation rows, and a key or
  // value that is not finite fails the load.
  // The bytes are written once, so the buffer is not zero-filled first.
  struct NoFill : std::allocator<uint8_t> {
    template <class U>
    struct rebind { using other = NoFill; };
    template <class U>
    void construct(U* p) { ::new (static_cast<void*>(p)) U; }
  };
  using SavedBytes = std::vector<uint8_t, NoFill>;
  SavedBytes saveSequence(int32_t seq, const std::vector<double>& bounds) const;
  // The same bytes written where `alloc(size)` says (called once, with the sequence held; a
  // JavaScript Buffer, say, so that its memory is the garbage collector's to free).
  void saveSequenceInto(int32_t seq, const std::vector<double>& bounds, const std::function<uint8_t*(size_t)>& alloc) const;
  int32_t loadSequence(const uint8_t* data, size_t size, std::vector<double>& bounds, bool measure);
  Usage usage() const;
  // Gives the memory of the pool's free pages back to the system (see Backend::releaseFreeMemory):
  // the bytes given back. Sequences keep every page they hold.
  int64_t trim();
  // Host memory the cache holds resident: the pool pages written so far (when the pool is in host
  // memory) and the page bookkeeping.
  size_t residentBytes() {
    std::shared_lock<std::shared_mutex> life(life_);
    if (disposed_ || !backend_) return 0;
    std::lock_guard<std::mutex> table(tableMu_);
    PageAllocator& pages = backend_->pages();
    const bool hostPool = std::string(backend_->device()) == "cpu";
    return (hostPool ? (size_t)pages.touchedPages() * backend_->pageBytes() : 0) + pages.bookkeepingBytes();
  }

 private:
  // Sequences held for a call: the cache's lifetime (shared), each sequence's lock, taken in
  // ascending id order (so two batches never wait on each other in a cycle), and, for a call that
  // reaches a backend which runs one call at a time, the backend's. The sequences stay valid while
  // held (only their holder can dispose them, and dispose() waits for the lifetime). seqs[i] is
  // ids[i]'s.
  struct HeldAll {
    std::shared_lock<std::shared_mutex> life;
    std::vector<std::shared_ptr<std::mutex>> mu;
    std::vector<std::unique_lock<std::mutex>> own;
    std::unique_lock<std::mutex> exec;
    std::vector<Sequence*> seqs;
  };
  // One sequence held: holdAll of one.
  struct Held {
    HeldAll all;
    Sequence* seq;
  };
  Held hold(int32_t seq, bool backend) const;
  HeldAll holdAll(const std::vector<int32_t>& ids, bool backend) const;
  std::unique_lock<std::mutex> lockTable() const { return std::unique_lock<std::mutex>(tableMu_); }
  // Page copies (source, destination pairs) run, then their sources released; the pages freed.
  int64_t copyThenRelease(const std::vector<int32_t>& copies);
  // The backend's part of appends already planned in the table (`merged`: their copies and rows,
  // in order): copies, rows, then the copies' sources released. When the backend throws, every
  // append is undone (in reverse order) before the error goes on: nothing was appended.
  // `appends` is an array of `count` (sequence, plan) pairs: a single append passes its own, with no
  // vector made on the decode path.
  using PlannedAppend = std::pair<Sequence*, const AppendPlan*>;
  void writeAppended(const PlannedAppend* appends, size_t count, int layer, const AppendPlan& merged, int tokens,
                     const void* keys, const void* values, InputKind kind);
  void checkLive() const;
  // New sequences get their lock (table locked).
  int32_t registerSequence(int32_t seq);
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
  std::atomic<bool> disposed_{false};
  mutable std::shared_mutex life_;
  mutable std::mutex tableMu_;  // table_'s sequence map and head page lists, the page allocator, seqMu_
  mutable std::mutex exec_;     // backends that are not concurrent()
  mutable std::map<int32_t, std::shared_ptr<std::mutex>> seqMu_;
};

}  // namespace lukv
