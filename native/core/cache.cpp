#include "cache.h"

#include <algorithm>
#include <cstring>


namespace lukv {

namespace {
std::string str(int64_t v) { return std::to_string(v); }
}  // namespace

Cache::Cache(const CacheConfig& cfg) : cfg_(cfg) {
  BackendConfig b;
  b.device = cfg.device;
  b.pages = (cfg.maxTokens + cfg.pageSize - 1) / cfg.pageSize;
  b.pageSize = cfg.pageSize;
  b.headDim = cfg.headDim;
  b.dtype = cfg.dtype;
  b.threads = cfg.threads;
  b.simd = cfg.simd;
  b.prefetch = cfg.prefetch;
  backend_ = makeBackend(b);
  table_.reset(new PageTable(cfg.layers, cfg.kvHeads, cfg.pageSize, backend_->pages()));
  limits_ = " (maxTokens " + str(cfg.maxTokens) + ", pageSize " + str(cfg.pageSize) + ")";
}

void Cache::checkLive() const {
  if (disposed_) throw Error(ErrorCode::Disposed, "KVCache was used after dispose()");
}

void Cache::dispose() {
  std::unique_lock<std::shared_mutex> life(life_);  // waits for the calls in flight
  if (disposed_) return;
  disposed_ = true;
  table_.reset();
  backend_.reset();
  seqMu_.clear();
}

Cache::Held Cache::hold(int32_t id, bool backend) const {
  HeldAll all = holdAll({id}, backend);
  Sequence* seq = all.seqs[0];
  return Held{std::move(all), seq};
}

int32_t Cache::registerSequence(int32_t id) {
  seqMu_[id] = std::make_shared<std::mutex>();
  return id;
}

int32_t Cache::createSequence() {
  std::shared_lock<std::shared_mutex> life(life_);
  checkLive();
  auto table = lockTable();
  return registerSequence(table_->create());
}

int32_t Cache::fork(int32_t seq) {
  Held h = hold(seq, false);
  auto table = lockTable();
  return registerSequence(table_->fork(seq));
}

void Cache::disposeSequence(int32_t seq) {
  std::shared_lock<std::shared_mutex> life(life_);
  if (disposed_) return;
  std::shared_ptr<std::mutex> mu;
  {
    auto table = lockTable();
    auto it = seqMu_.find(seq);
    if (it == seqMu_.end()) return;
    mu = it->second;
  }
  std::lock_guard<std::mutex> own(*mu);  // after the sequence's call in flight, if any
  auto table = lockTable();
  table_->dispose(seq);
  seqMu_.erase(seq);
}

void Cache::append(int32_t seqId, int layer, int tokens, const void* keys, const void* values, InputKind kind) {
  Held h = hold(seqId, true);
  Sequence& seq = *h.seq;
  if (tokens <= 0) return;
  // Raw 16-bit words are already in the cache's storage type: there is none for an f32 cache.
  if (kind == InputKind::Raw16 && cfg_.dtype == DType::F32)
    throwInvalid("Expected Float32Array keys and values for an f32 cache but received raw 16-bit words");
  AppendPlan plan;
  {
    auto table = lockTable();
    plan = table_->append(seq, layer, tokens, limits_);
  }
  const PlannedAppend one{&seq, &plan};
  writeAppended(&one, 1, layer, plan, tokens, keys, values, kind);
}

void Cache::writeAppended(const PlannedAppend* appends, size_t count, int layer, const AppendPlan& merged, int tokens,
                          const void* keys, const void* values, InputKind kind) {
  // Same order on every backend: the private copies land before the rows written into them. The
  // copies' sources stay taken until the rows are written: a backend that fails (a device
  // allocation or launch) gets the table back as it was, each head with its shared page again.
  try {
    if (!merged.copies.empty()) backend_->copyPages(merged.copies);
    backend_->writeRows(merged, tokens, cfg_.kvHeads, keys, values, kind);
  } catch (...) {
    auto table = lockTable();
    for (size_t i = count; i-- > 0;) table_->undoAppend(*appends[i].first, layer, *appends[i].second);
    throw;
  }
  if (merged.copies.empty()) return;
  auto table = lockTable();
  table_->releaseCopies(merged.copies);
}

// Runs page copies, then drops the references to their sources (also when the copy fails), so that
// a source shared with other sequences stays shared, and taken, while it is read. Returns the pages
// the release returned to the pool.
int64_t Cache::copyThenRelease(const std::vector<int32_t>& copies) {
  if (copies.empty()) return 0;
  auto release = [&] {
    auto table = lockTable();
    const int64_t used = backend_->pages().usedPages();
    table_->releaseCopies(copies);
    return used - backend_->pages().usedPages();
  };
  try {
    backend_->copyPages(copies);
  } catch (...) {
    release();
    throw;
  }
  return release();
}

void Cache::attend(int32_t seqId, int layer, int tokens, const float* queries, float* out, float scale) {
  attendBatch(layer, {AttendItem{seqId, tokens, queries, out}}, scale);
}

std::vector<int32_t> Cache::lengths(int32_t seqId) const {
  Held h = hold(seqId, false);
  const Sequence& seq = *h.seq;
  std::vector<int32_t> out(seq.heads.size());
  for (size_t i = 0; i < out.size(); ++i) out[i] = seq.heads[i].length();
  return out;
}

int64_t Cache::pagesHeldAlone(int32_t seqId) const {
  Held h = hold(seqId, false);
  auto table = lockTable();  // reference counts change under it
  const PageAllocator& pages = backend_->pages();
  int64_t n = 0;
  for (const HeadState& hs : h.seq->heads)
    for (int32_t p : hs.pages) n += pages.refcount(p) == 1 ? 1 : 0;
  return n;
}

std::vector<int32_t> Cache::positions(int32_t seqId, int layer, int head) const {
  Held h = hold(seqId, false);
  return h.seq->heads[(size_t)layer * cfg_.kvHeads + head].positions;
}

int32_t Cache::appended(int32_t seqId, int layer) const {
  Held h = hold(seqId, false);
  return h.seq->appended[layer];
}

std::vector<float> Cache::readRows(int32_t seqId, int layer, int head, bool values) const {
  Held held = hold(seqId, true);
  const HeadState& h = held.seq->heads[(size_t)layer * cfg_.kvHeads + head];
  std::vector<float> out((size_t)h.length() * cfg_.headDim);
  backend_->readRows(h, h.length(), values, out.data());
  return out;
}

int64_t Cache::trim() {
  std::shared_lock<std::shared_mutex> life(life_);
  checkLive();
  auto table = lockTable();  // pages are taken under it: none is taken while their memory goes
  return backend_->releaseFreeMemory();
}

Usage Cache::usage() const {
  std::shared_lock<std::shared_mutex> life(life_);
  checkLive();
  auto table = lockTable();
  Usage u;
  const PageAllocator& pages = backend_->pages();
  u.pagesTotal = pages.numPages();
  u.pagesUsed = pages.usedPages();
  u.bytesTotal = u.pagesTotal * (int64_t)backend_->pageBytes();
  u.bytesUsed = u.pagesUsed * (int64_t)backend_->pageBytes();
  u.sequences = (int64_t)table_->count();
  return u;
}

}  // namespace lukv
