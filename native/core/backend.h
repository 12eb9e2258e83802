// What a backend (cpu/, cuda/) implements: the page memory and the kernels that read and write it.
// The core (cache, page_table, compress) plans every call on the host and hands the backend plain
// requests: page ids, slots, kept rows, host arrays in and out. A backend keeps no sequence state.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "compress.h"
#include "dtype.h"
#include "page_allocator.h"
#include "page_table.h"

namespace lukv {

// Inputs are Float32 values, or raw 16-bit words already in the cache's storage type.
enum class InputKind { F32, Raw16 };

struct BackendConfig {
  std::string device = "cpu";  // "cpu" or "cuda"
  int64_t pages = 0;
  int pageSize = 16, headDim = 0;
  DType dtype = DType::F16;
  int threads = 1;             // CPU threads (the CPU backend's kernels; host work of the others)
  std::string simd = "auto";   // CPU kernel table
  std::string prefetch = "auto";  // CPU prefetch hint (cpu::parsePrefetch names)
};

// Attention of `tokens` query rows over the kvHeads heads of one layer.
struct AttendRequest {
  const HeadState* heads = nullptr;  // kvHeads heads of the layer
  int kvHeads = 0, queryHeads = 0;
  int tokens = 0;
  const int32_t* queryPositions = nullptr;  // [tokens], ascending
  const float* queries = nullptr;           // host [tokens, queryHeads, headDim]
  float* out = nullptr;                     // host, same shape
  float scale = 0;
  // Optional, per KV head, host arrays updated in place. mass: attention mass per kept token, to
  // which the call adds each token's softmax weight averaged over the query heads of the group
  // (H2O). oracle: the profiling oracle, max over query rows and the group's query heads of softmax
  // weight x oracleWeight[query head][token], for the first oracleTokens[head] tokens.
  float* const* mass = nullptr;
  float* const* oracle = nullptr;
  const float* const* oracleWeight = nullptr;  // per query head of the layer
  const int32_t* oracleTokens = nullptr;
};

// Scores of one (layer, KV head): one float per kept token, higher = keep.
struct ScoreRequest {
  const HeadState* head = nullptr;
  int layer = 0, kvHead = 0;
  // Observation query rows ([rows, queryHeads, headDim], host) and their positions, for the
  // attention-based scorers.
  const float* queries = nullptr;
  const int32_t* queryPositions = nullptr;
  int rows = 0;
  const float* mass = nullptr;  // h2o: host [length]
  // streaming: the newest position appended to the layer (its scores count back from it, so that
  // the heads of a layer compare, and stay exact in f32 where positions themselves tie past 2^24)
  int32_t newest = 0;
  // expected-attention: the layer's rotated query mean [queryHeads, headDim] and covariance
  // [queryHeads, headDim, headDim] (null without the covariance term), host.
  const float* expectedMean = nullptr;
  const float* expectedCovariance = nullptr;
  float* out = nullptr;         // host [length]
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* device() const = 0;
  virtual std::string simd() const = 0;  // CPU kernel table, or what runs the kernels
  virtual std::string prefetch() const { return "none"; }  // how CPU kernels request rows ahead
  virtual int threads() const = 0;
  virtual PageAllocator& pages() = 0;
  virtual size_t pageBytes() const = 0;
  // Compaction writes the kept rows into the head's own first pages (true) or into fresh pages.
  virtual bool compactsInPlace() const = 0;
  // Calls on different sequences may run at the same time (see Cache); false makes the cache run
  // one backend call at a time.
  virtual bool concurrent() const { return false; }
  // Host work split over the backend's threads (selection in compress).
  virtual void parallelFor(int64_t n, const std::function<void(int64_t)>& fn) = 0;

  // Whole pages, (source, destination) pairs, before anything else of the call.
  virtual void copyPages(const std::vector<int32_t>& pairs) = 0;
  // Row t of head h of keys/values ([tokens, kvHeads, headDim], host) to plan.dest.
  virtual void writeRows(const AppendPlan& plan, int tokens, int kvHeads, const void* keys, const void* values,
                         InputKind kind) = 0;
  // Attention of several sequences of one layer as one pass (one request per sequence; the
  // batched step). attend is a batch of one.
  virtual void attendBatch(const std::vector<AttendRequest>& calls) = 0;
  void attend(const AttendRequest& r) { attendBatch(std::vector<AttendRequest>{r}); }
  virtual void scores(const std::vector<ScoreRequest>& heads, int kvHeads, int queryHeads, const ScoreOptions& options) = 0;
  // Kept rows of every head of the round, in order, into its `to` pages.
  virtual void compact(const std::vector<CompactHead>& round) = 0;
  // A head's first `count` K or V rows as stored (cache dtype, bit for bit), [count, headDim].
  virtual void readRaw(const HeadState& head, int32_t count, bool values, uint8_t* out) = 0;
  // The same rows as f32 (readRaw, then the dtype's exact widening; backend.cpp).
  void readRows(const HeadState& head, int32_t count, bool values, float* out);
  // ||v|| of a head's first `count` value rows.
  virtual void valueNorms(const HeadState& head, int32_t count, float* out) = 0;
  // Bytes the backend holds besides the pool (device workspace), for usage().
  virtual int64_t extraBytes() const { return 0; }
  // Gives the memory of free pages back to the system where the pool can (host memory; see
  // PagePool::releaseFree); the bytes given back. Called under the table's lock.
  virtual int64_t releaseFreeMemory() { return 0; }
  // The rows' storage type and dimension, for readRows.
  virtual DType dtype() const = 0;
  virtual int headDim() const = 0;
};

// The backend for config.device. Throws BackendUnavailable (with the reason) when this build or
// machine cannot provide it, OutOfPages when the pool does not fit.
std::unique_ptr<Backend> makeBackend(const BackendConfig& config);

// Defined by cpu/ (always) and by cuda/ (builds with the CUDA backend, real or emulated).
std::unique_ptr<Backend> makeCpuBackend(const BackendConfig& config);
std::unique_ptr<Backend> makeCudaBackend(const BackendConfig& config);
// Whether this build has a CUDA backend, and why not.
bool cudaBackendUsable(std::string* why);

}  // namespace lukv
