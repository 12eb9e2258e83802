#include "cache.h"

#include <algorithm>
#include <cstring>

#include "../cpu/attention.h"

namespace lukv {

namespace {
std::string str(int64_t v) { return std::to_string(v); }
}  // namespace

Cache::Cache(const CacheConfig& cfg) : cfg_(cfg) {
  kernels_ = cpu::selectKernels(cfg.simd.c_str());
  if (!kernels_) throwInvalid("Expected a SIMD level this processor supports for simd but received \"" + cfg.simd + "\"");
  if (!cpu::parsePrefetch(cfg.prefetch.c_str(), &prefetch_))
    throwInvalid("Expected one of auto, t0, t2, nta, none for prefetch but received \"" + cfg.prefetch + "\"");
  const int64_t pages = (cfg.maxTokens + cfg.pageSize - 1) / cfg.pageSize;
  pool_.reset(new PagePool(pages, cfg.pageSize, cfg.headDim, cfg.dtype));
  pool_threads_.reset(new ThreadPool(cfg.threads));
}

void Cache::checkLive() const {
  if (disposed_) throw Error(ErrorCode::Disposed, "KVCache was used after dispose()");
}

void Cache::dispose() {
  if (disposed_) return;
  disposed_ = true;
  seqs_.clear();
  pool_.reset();
  pool_threads_.reset();
}

Sequence& Cache::get(int32_t seq) {
  checkLive();
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) throw Error(ErrorCode::Disposed, "Sequence was used after dispose()");
  return *it->second;
}

const Sequence& Cache::get(int32_t seq) const { return const_cast<Cache*>(this)->get(seq); }

int32_t Cache::createSequence() {
  checkLive();
  auto s = std::make_unique<Sequence>();
  s->id = nextSeqId_++;
  s->heads.resize((size_t)cfg_.layers * cfg_.kvHeads);
  s->appended.assign(cfg_.layers, 0);
  s->obsQueries.resize(cfg_.layers);
  s->obsPositions.resize(cfg_.layers);
  int32_t id = s->id;
  seqs_[id] = std::move(s);
  return id;
}

int32_t Cache::fork(int32_t seq) {
  const Sequence& src = get(seq);
  auto s = std::make_unique<Sequence>(src);
  s->id = nextSeqId_++;
  for (auto& h : s->heads)
    for (int32_t p : h.pages) pool_->retain(p);
  int32_t id = s->id;
  seqs_[id] = std::move(s);
  return id;
}

void Cache::disposeSequence(int32_t seq) {
  if (disposed_) return;
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return;
  for (auto& h : it->second->heads)
    for (int32_t p : h.pages) pool_->release(p);
  seqs_.erase(it);
}

void Cache::append(int32_t seqId, int layer, int tokens, const void* keys, const void* values, InputKind kind) {
  Sequence& seq = get(seqId);
  const int H = cfg_.kvHeads, D = cfg_.headDim, P = cfg_.pageSize;
  if (tokens <= 0) return;
  if ((int64_t)seq.appended[layer] + tokens > INT32_MAX) throwInvalid("sequence would exceed 2^31-1 positions");
  // Raw 16-bit words are already in the cache's storage type: there is none for an f32 cache.
  if (kind == InputKind::Raw16 && cfg_.dtype == DType::F32)
    throwInvalid("Expected Float32Array keys and values for an f32 cache but received raw 16-bit words");

  // Plan first: count the pages every head needs (new pages, plus a private copy of a shared,
  // partly filled last page) so that a shortage fails before anything changes.
  int64_t needed = 0;
  for (int h = 0; h < H; ++h) {
    const HeadState& hs = seq.heads[(size_t)layer * H + h];
    int64_t len = hs.length();
    int64_t have = (int64_t)hs.pages.size();
    int64_t want = (len + tokens + P - 1) / P;
    needed += want - have;
    if (len % P != 0 && pool_->refcount(hs.pages.back()) > 1) needed += 1;
  }
  if (needed > pool_->freePages())
    throw Error(ErrorCode::OutOfPages, "append needs " + str(needed) + " free pages but the pool has " +
                                           str(pool_->freePages()) + " of " + str(pool_->numPages()) +
                                           " (maxTokens " + str(cfg_.maxTokens) + ", pageSize " + str(P) +
                                           "); nothing was appended");

  const size_t rowBytes = pool_->rowBytes();
  const int32_t pos0 = seq.appended[layer];
  for (int h = 0; h < H; ++h) {
    HeadState& hs = seq.heads[(size_t)layer * H + h];
    int64_t len = hs.length();
    if (len % P != 0 && pool_->refcount(hs.pages.back()) > 1) {
      std::vector<int32_t> fresh;
      pool_->allocate(1, fresh);
      std::memcpy(pool_->keys(fresh[0]), pool_->keys(hs.pages.back()), pool_->pageBytes());
      pool_->release(hs.pages.back());
      hs.pages.back() = fresh[0];
    }
    int64_t want = (len + tokens + P - 1) / P;
    pool_->allocate(want - (int64_t)hs.pages.size(), hs.pages);
    for (int t = 0; t < tokens; ++t) {
      int64_t idx = len + t;
      int32_t page = hs.pages[idx / P];
      int off = (int)(idx % P);
      uint8_t* kdst = pool_->keys(page) + off * rowBytes;
      uint8_t* vdst = pool_->values(page) + off * rowBytes;
      const size_t srcRow = ((size_t)t * H + h) * D;
      if (kind == InputKind::Raw16 || cfg_.dtype == DType::F32) {
        const size_t eb = kind == InputKind::Raw16 ? 2 : 4;
        std::memcpy(kdst, static_cast<const uint8_t*>(keys) + srcRow * eb, rowBytes);
        std::memcpy(vdst, static_cast<const uint8_t*>(values) + srcRow * eb, rowBytes);
      } else {
        const float* k = static_cast<const float*>(keys) + srcRow;
        const float* v = static_cast<const float*>(values) + srcRow;
        uint16_t* kd = reinterpret_cast<uint16_t*>(kdst);
        uint16_t* vd = reinterpret_cast<uint16_t*>(vdst);
        if (cfg_.dtype == DType::F16) {
          for (int d = 0; d < D; ++d) kd[d] = f32ToF16(k[d]), vd[d] = f32ToF16(v[d]);
        } else {
          for (int d = 0; d < D; ++d) kd[d] = f32ToBf16(k[d]), vd[d] = f32ToBf16(v[d]);
        }
      }
      hs.positions.push_back(pos0 + t);
    }
    if (seq.accumulate) seq.mass[(size_t)layer * H + h].resize(hs.positions.size(), 0.f);
  }
  seq.appended[layer] = pos0 + tokens;
}

void Cache::attend(int32_t seqId, int layer, int tokens, const float* queries, float* out, float scale) {
  Sequence& seq = get(seqId);
  const int H = cfg_.kvHeads;
  if (tokens > seq.appended[layer])
    throwInvalid("Expected at most " + str(seq.appended[layer]) + " query tokens for queries (layer " + str(layer) +
                 " has " + str(seq.appended[layer]) + " positions appended) but received " + str(tokens));
  std::vector<int32_t> qpos(tokens);
  for (int r = 0; r < tokens; ++r) qpos[r] = seq.appended[layer] - tokens + r;

  cpu::AttendArgs a;
  a.pool = pool_.get();
  a.kernels = kernels_;
  a.threads = pool_threads_.get();
  a.heads = seq.heads.data() + (size_t)layer * H;
  a.kvHeads = H;
  a.queryHeads = cfg_.queryHeads;
  a.headDim = cfg_.headDim;
  a.tokens = tokens;
  a.queryPositions = qpos.data();
  a.queries = queries;
  a.out = out;
  a.scale = scale;
  a.prefetch = prefetch_;
  std::vector<float*> mass, oracle;
  std::vector<const float*> oracleWeight;
  if (seq.accumulate) {
    for (int h = 0; h < H; ++h) mass.push_back(seq.mass[(size_t)layer * H + h].data());
    a.mass = mass.data();
  }
  if (seq.recording) {
    for (int h = 0; h < H; ++h) oracle.push_back(seq.oracle[(size_t)layer * H + h].data());
    for (int q = 0; q < cfg_.queryHeads; ++q) oracleWeight.push_back(seq.oracleWeight[(size_t)layer * cfg_.queryHeads + q].data());
    a.oracle = oracle.data();
    a.oracleWeight = oracleWeight.data();
    a.oracleTokens = seq.oracleTokens.data() + (size_t)layer * H;
  }
  cpu::attend(a);

  // Remember the last observationWindow query rows of the layer (SnapKV scores with them).
  const size_t rowFloats = (size_t)cfg_.queryHeads * cfg_.headDim;
  auto& oq = seq.obsQueries[layer];
  auto& op = seq.obsPositions[layer];
  // Up to 2W rows are held and the oldest are dropped W at a time, so a decode step appends one row
  // instead of moving the whole window; readers take the last W (observationRows).
  const size_t W = (size_t)cfg_.observationWindow;
  const size_t first = (size_t)tokens > W ? (size_t)tokens - W : 0;
  if (first > 0 || W == 0) {
    oq.clear();
    op.clear();
  }
  oq.insert(oq.end(), queries + first * rowFloats, queries + (size_t)tokens * rowFloats);
  op.insert(op.end(), qpos.begin() + first, qpos.end());
  if (op.size() > 2 * W) {
    const size_t drop = op.size() - W;
    oq.erase(oq.begin(), oq.begin() + drop * rowFloats);
    op.erase(op.begin(), op.begin() + drop);
  }
}

std::vector<int32_t> Cache::lengths(int32_t seqId) const {
  const Sequence& seq = get(seqId);
  std::vector<int32_t> out(seq.heads.size());
  for (size_t i = 0; i < out.size(); ++i) out[i] = seq.heads[i].length();
  return out;
}

std::vector<int32_t> Cache::positions(int32_t seqId, int layer, int head) const {
  return get(seqId).heads[(size_t)layer * cfg_.kvHeads + head].positions;
}

int32_t Cache::appended(int32_t seqId, int layer) const { return get(seqId).appended[layer]; }

const uint8_t* Cache::rowPtr(const HeadState& h, int32_t t, bool values) const {
  int32_t page = h.pages[t / cfg_.pageSize];
  const uint8_t* base = values ? pool_->values(page) : pool_->keys(page);
  return base + (size_t)(t % cfg_.pageSize) * pool_->rowBytes();
}

std::vector<float> Cache::readRows(int32_t seqId, int layer, int head, bool values) const {
  const HeadState& h = get(seqId).heads[(size_t)layer * cfg_.kvHeads + head];
  const int D = cfg_.headDim;
  std::vector<float> out((size_t)h.length() * D);
  for (int32_t t = 0; t < h.length(); ++t) {
    const uint8_t* row = rowPtr(h, t, values);
    for (int d = 0; d < D; ++d) {
      float v;
      if (cfg_.dtype == DType::F32) std::memcpy(&v, row + 4 * d, 4);
      else {
        uint16_t b;
        std::memcpy(&b, row + 2 * d, 2);
        v = cfg_.dtype == DType::F16 ? f16ToF32(b) : bf16ToF32(b);
      }
      out[(size_t)t * D + d] = v;
    }
  }
  return out;
}

Usage Cache::usage() const {
  checkLive();
  Usage u;
  u.pagesTotal = pool_->numPages();
  u.pagesUsed = pool_->usedPages();
  u.bytesTotal = u.pagesTotal * (int64_t)pool_->pageBytes();
  u.bytesUsed = u.pagesUsed * (int64_t)pool_->pageBytes();
  u.sequences = (int64_t)seqs_.size();
  return u;
}

}  // namespace lukv
