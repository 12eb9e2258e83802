#include "page_table.h"

#include <algorithm>

namespace lukv {

namespace {
std::string str(int64_t v) { return std::to_string(v); }
int64_t pagesFor(int64_t tokens, int P) { return (tokens + P - 1) / P; }
}  // namespace

void ObservedRows::push(const float* q, const int32_t* pos, size_t count, size_t rowFloats, size_t capacity) {
  if (capacity == 0) {
    rows.clear();
    positions.clear();
    oldest = 0;
    return;
  }
  for (size_t r = count > capacity ? count - capacity : 0; r < count; ++r) {
    const float* row = q + r * rowFloats;
    if (held() < capacity) {
      rows.insert(rows.end(), row, row + rowFloats);
      positions.push_back(pos[r]);
    } else {
      std::copy(row, row + rowFloats, rows.begin() + oldest * rowFloats);
      positions[oldest] = pos[r];
      oldest = (oldest + 1) % held();
    }
  }
}

void ObservedRows::last(size_t n, size_t rowFloats, std::vector<float>& q, std::vector<int32_t>& pos) const {
  const size_t h = held();
  q.resize(n * rowFloats);
  pos.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const size_t slot = (oldest + h - n + i) % h;
    std::copy(rows.begin() + slot * rowFloats, rows.begin() + (slot + 1) * rowFloats, q.begin() + i * rowFloats);
    pos[i] = positions[slot];
  }
}

int32_t PageTable::create() {
  auto s = std::make_unique<Sequence>();
  s->id = nextId_++;
  s->heads.resize(heads());
  s->appended.assign(layers_, 0);
  s->observed.resize(layers_);
  const int32_t id = s->id;
  seqs_[id] = std::move(s);
  return id;
}

int32_t PageTable::fork(int32_t seq) {
  auto s = std::make_unique<Sequence>(get(seq));
  s->id = nextId_++;
  for (auto& h : s->heads)
    for (int32_t p : h.pages) pages_->retain(p);
  const int32_t id = s->id;
  seqs_[id] = std::move(s);
  return id;
}

int32_t PageTable::restore(Sequence state, const std::string& limits) {
  if (state.heads.size() != heads() || state.appended.size() != (size_t)layers_)
    throw Error(ErrorCode::Internal, "restore: the sequence state does not match the cache's shape");
  int64_t needed = 0;
  for (const HeadState& h : state.heads) needed += pagesFor(h.length(), pageSize_);
  if (needed > pages_->freePages())
    throw Error(ErrorCode::OutOfPages, "loading the sequence needs " + str(needed) + " free pages but the pool has " +
                                           str(pages_->freePages()) + " of " + str(pages_->numPages()) + limits +
                                           "; nothing was loaded");
  auto s = std::make_unique<Sequence>(std::move(state));
  s->id = nextId_++;
  for (HeadState& h : s->heads) {
    h.pages.clear();
    pages_->allocate(pagesFor(h.length(), pageSize_), h.pages);
  }
  s->observed.resize(layers_);
  const int32_t id = s->id;
  seqs_[id] = std::move(s);
  return id;
}

void PageTable::dispose(int32_t seq) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return;
  for (auto& h : it->second->heads)
    for (int32_t p : h.pages) pages_->release(p);
  seqs_.erase(it);
}

void PageTable::clear() { seqs_.clear(); }

Sequence& PageTable::get(int32_t seq) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) throw Error(ErrorCode::Disposed, "Sequence was used after dispose()");
  return *it->second;
}

const Sequence& PageTable::get(int32_t seq) const { return const_cast<PageTable*>(this)->get(seq); }

namespace {
// Whether an append behind the shared, partly filled page `last` copies it: the page has holders
// besides the appending head, not counting the copy sources `counted` already holds (earlier
// appends of a batch, whose rows the head does not touch); the copy is then counted there.
// Only shared pages are looked up or entered in `counted`: an append to unshared pages (every
// decode step of a sequence without forks) makes no map node.
bool copiesLastPage(const PageAllocator& pages, int32_t last, std::map<int32_t, int>* counted) {
  const int holders = pages.refcount(last);
  if (holders <= 1) return false;
  int earlier = 0;
  if (counted) {
    auto it = counted->find(last);
    if (it != counted->end()) earlier = it->second;
  }
  if (holders - earlier <= 1) return false;
  if (counted) (*counted)[last] += 1;
  return true;
}
}  // namespace

int64_t appendPagesNeeded(const HeadState* heads, int H, int tokens, int P, const PageAllocator& pages,
                          std::map<int32_t, int>* copied) {
  // New pages, plus a private copy of a shared, partly filled last page, so that a shortage fails
  // before anything changes.
  int64_t needed = 0;
  for (int h = 0; h < H; ++h) {
    const HeadState& hs = heads[h];
    const int64_t len = hs.length();
    needed += pagesFor(len + tokens, P) - (int64_t)hs.pages.size();
    if (len % P == 0) continue;
    if (copiesLastPage(pages, hs.pages.back(), copied)) needed += 1;
  }
  return needed;
}

AppendPlan appendToHeads(HeadState* heads, int H, int tokens, int32_t pos0, int P, PageAllocator& pages,
                         const std::string& limits, std::map<int32_t, int>* pending) {
  AppendPlan plan;
  if (tokens <= 0) return plan;
  if ((int64_t)pos0 + tokens > INT32_MAX) throwInvalid("sequence would exceed 2^31-1 positions");
  std::map<int32_t, int> counted = pending ? *pending : std::map<int32_t, int>();
  const int64_t needed = appendPagesNeeded(heads, H, tokens, P, pages, &counted);
  if (needed > pages.freePages())
    throw Error(ErrorCode::OutOfPages, "append needs " + str(needed) + " free pages but the pool has " +
                                           str(pages.freePages()) + " of " + str(pages.numPages()) + limits +
                                           "; nothing was appended");
  plan.dest.resize((size_t)tokens * H * 2);
  plan.before.resize(H);
  for (int h = 0; h < H; ++h) {
    HeadState& hs = heads[h];
    const int64_t len = hs.length();
    plan.before[h] = {(int32_t)len, (int32_t)hs.pages.size(), -1};
    if (len % P != 0 && copiesLastPage(pages, hs.pages.back(), pending)) {
      std::vector<int32_t> fresh;
      pages.allocate(1, fresh);
      plan.copies.push_back(hs.pages.back());
      plan.copies.push_back(fresh[0]);
      plan.before[h].replaced = hs.pages.back();
      hs.pages.back() = fresh[0];  // the reference to the old page is released after the copy
    }
    pages.allocate(pagesFor(len + tokens, P) - (int64_t)hs.pages.size(), hs.pages);
    for (int t = 0; t < tokens; ++t) {
      const int64_t idx = len + t;
      plan.dest[((size_t)t * H + h) * 2] = hs.pages[idx / P];
      plan.dest[((size_t)t * H + h) * 2 + 1] = (int32_t)(idx % P);
      hs.positions.push_back(pos0 + t);
    }
  }
  return plan;
}

void releaseCopySources(PageAllocator& pages, const std::vector<int32_t>& copies) {
  for (size_t i = 0; i + 1 < copies.size(); i += 2) pages.release(copies[i]);
}

void undoAppendToHeads(HeadState* heads, int H, const AppendPlan& plan, PageAllocator& pages) {
  for (int h = 0; h < (int)plan.before.size() && h < H; ++h) {
    HeadState& hs = heads[h];
    const AppendPlan::Before& b = plan.before[h];
    if (b.replaced >= 0) {
      pages.release(hs.pages[(size_t)b.pages - 1]);  // the private copy
      hs.pages[(size_t)b.pages - 1] = b.replaced;    // whose source reference was kept
    }
    for (size_t p = (size_t)b.pages; p < hs.pages.size(); ++p) pages.release(hs.pages[p]);
    hs.pages.resize((size_t)b.pages);
    hs.positions.resize((size_t)b.length);
  }
}

AppendPlan PageTable::append(Sequence& seq, int layer, int tokens, const std::string& limits, std::map<int32_t, int>* pending) {
  const int H = kvHeads_;
  if (tokens <= 0) return AppendPlan();
  if ((int64_t)seq.appended[layer] + tokens > INT32_MAX) throwInvalid("sequence would exceed 2^31-1 positions");
  AppendPlan plan = appendToHeads(seq.heads.data() + (size_t)layer * H, H, tokens, seq.appended[layer], pageSize_,
                                  *pages_, limits, pending);
  if (seq.accumulate)
    for (int h = 0; h < H; ++h) seq.mass[(size_t)layer * H + h].resize(seq.heads[(size_t)layer * H + h].length(), 0.f);
  seq.appended[layer] += tokens;
  return plan;
}

void PageTable::undoAppend(Sequence& seq, int layer, const AppendPlan& plan) {
  const int H = kvHeads_;
  if (plan.before.empty()) return;  // an append of no tokens
  HeadState* heads = seq.heads.data() + (size_t)layer * H;
  const int32_t tokens = heads[0].length() - plan.before[0].length;
  undoAppendToHeads(heads, H, plan, *pages_);
  if (seq.accumulate)
    for (int h = 0; h < H; ++h) seq.mass[(size_t)layer * H + h].resize(heads[h].length(), 0.f);
  seq.appended[layer] -= tokens;
}

CompactionPlan PageTable::planCompaction(Sequence& seq, const std::vector<std::vector<int32_t>>& kept, bool inPlace,
                                         std::vector<int32_t>& copies) {
  const int P = pageSize_;
  const size_t NH = seq.heads.size();
  CompactionPlan plan;
  if (inPlace) {
    // A compacted head writes into its first ceil(keep / P) pages, so shared pages among them get
    // a private copy first.
    int64_t needed = 0;
    for (size_t i = 0; i < NH; ++i) {
      if (kept[i].empty()) continue;
      const int64_t dest = pagesFor((int64_t)kept[i].size(), P);
      for (int64_t p = 0; p < dest; ++p)
        if (pages_->refcount(seq.heads[i].pages[p]) > 1) needed++;
    }
    if (needed > pages_->freePages())
      throw Error(ErrorCode::OutOfPages, "compress needs " + str(needed) +
                                             " free pages to copy pages shared with forks but the pool has " +
                                             str(pages_->freePages()) + "; nothing was evicted");
    plan.rounds.emplace_back();
    for (size_t i = 0; i < NH; ++i) {
      if (kept[i].empty()) continue;
      HeadState& hs = seq.heads[i];
      const int64_t dest = pagesFor((int64_t)kept[i].size(), P);
      for (int64_t p = 0; p < dest; ++p) {
        const int32_t old = hs.pages[p];
        if (pages_->refcount(old) <= 1) continue;
        std::vector<int32_t> fresh;
        pages_->allocate(1, fresh);
        copies.push_back(old);
        copies.push_back(fresh[0]);
        hs.pages[p] = fresh[0];  // the reference to `old` is released after the copy (releaseCopySources)
      }
      CompactHead c;
      c.index = i;
      c.kept = &kept[i];
      c.length = hs.length();
      c.from = hs.pages;
      c.to.assign(hs.pages.begin(), hs.pages.begin() + dest);
      c.inPlace = true;
      plan.rounds.back().push_back(std::move(c));
    }
    return plan;
  }
  // Fresh pages: a round takes heads while their new pages fit in what is free; once it ran, the
  // old pages that only this sequence held come back. Simulated here so that a plan that cannot
  // finish fails before the first round.
  int64_t free = pages_->freePages(), roundNeed = 0, roundFreed = 0;
  std::vector<CompactHead> round;
  for (size_t i = 0; i < NH; ++i) {
    if (kept[i].empty()) continue;
    const HeadState& hs = seq.heads[i];
    const int64_t need = pagesFor((int64_t)kept[i].size(), P);
    int64_t freed = 0;
    for (int32_t p : hs.pages) freed += pages_->refcount(p) == 1 ? 1 : 0;
    if (roundNeed + need > free && !round.empty()) {
      plan.rounds.push_back(std::move(round));
      round.clear();
      free += roundFreed - roundNeed;
      roundNeed = roundFreed = 0;
    }
    if (need > free)
      throw Error(ErrorCode::OutOfPages, "compress needs " + str(need) + " free pages to compact a head but the pool has " +
                                             str(free) + "; nothing was evicted");
    CompactHead c;
    c.index = i;
    c.kept = &kept[i];
    c.length = hs.length();
    c.from = hs.pages;
    round.push_back(std::move(c));
    roundNeed += need;
    roundFreed += freed;
  }
  if (!round.empty()) plan.rounds.push_back(std::move(round));
  return plan;
}

void PageTable::takePages(std::vector<CompactHead>& round) {
  for (CompactHead& c : round) {
    if (c.inPlace) continue;
    c.to.clear();
    if (!pages_->allocate(pagesFor((int64_t)c.kept->size(), pageSize_), c.to)) {
      releaseTaken(round);  // planned rounds never get here
      throw Error(ErrorCode::Internal, "compaction ran out of the pages it had planned");
    }
  }
}

void PageTable::releaseTaken(std::vector<CompactHead>& round) {
  for (CompactHead& c : round) {
    if (c.inPlace) continue;
    for (int32_t p : c.to) pages_->release(p);
    c.to.clear();
  }
}

void commitHead(HeadState& hs, const CompactHead& c, PageAllocator& pages, std::vector<float>* mass) {
  const std::vector<int32_t>& k = *c.kept;
  // k[j] >= j: moving in order never reads an entry that was already overwritten.
  for (size_t j = 0; j < k.size(); ++j) {
    hs.positions[j] = hs.positions[k[j]];
    if (mass) (*mass)[j] = (*mass)[k[j]];
  }
  hs.positions.resize(k.size());
  if (mass) mass->resize(k.size());
  for (size_t p = c.inPlace ? c.to.size() : 0; p < c.from.size(); ++p) pages.release(c.from[p]);
  hs.pages = c.to;
}

void PageTable::commitRound(Sequence& seq, const std::vector<CompactHead>& round) {
  for (const CompactHead& c : round)
    commitHead(seq.heads[c.index], c, *pages_, seq.accumulate ? &seq.mass[c.index] : nullptr);
}

std::vector<CompactHead> takeFreshPages(HeadState* const* heads, const std::vector<std::vector<int32_t>>& kept,
                                        int P, PageAllocator& pages) {
  std::vector<CompactHead> round;
  int64_t needed = 0;
  for (size_t i = 0; i < kept.size(); ++i) {
    if (kept[i].empty()) continue;
    bool identity = (int64_t)kept[i].size() == heads[i]->length();
    for (size_t j = 0; identity && j < kept[i].size(); ++j) identity = kept[i][j] == (int32_t)j;
    if (identity) continue;
    CompactHead c;
    c.index = i;
    c.kept = &kept[i];
    c.length = heads[i]->length();
    c.from = heads[i]->pages;
    round.push_back(std::move(c));
    needed += pagesFor((int64_t)kept[i].size(), P);
  }
  if (needed > pages.freePages())
    throw Error(ErrorCode::OutOfPages, "compaction needs " + str(needed) + " fresh pages but the pool has " +
                                           str(pages.freePages()) + "; nothing was evicted");
  for (CompactHead& c : round) pages.allocate(pagesFor((int64_t)c.kept->size(), P), c.to);
  return round;
}

}  // namespace lukv
