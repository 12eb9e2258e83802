// The page table both backends share: sequences, each (layer, KV head)'s page list, length and
// original positions, forks with copy-on-write, and the plans a backend executes (where appended
// rows go and which shared pages to copy first; which kept rows move where, and which pages are
// released). Host bookkeeping only: no page bytes are read or written here.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "errors.h"
#include "page_allocator.h"

namespace lukv {

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

// The last query rows a layer attended with (SnapKV's and TOVA's observation window): a ring of
// at most `capacity` rows, so a decode step writes its one row over the oldest and moves no other.
struct ObservedRows {
  std::vector<float> rows;         // [held][rowFloats], in ring order
  std::vector<int32_t> positions;  // [held]
  size_t oldest = 0;               // slot of the oldest row (0 until the ring is full)

  size_t held() const { return positions.size(); }
  // Remembers rows [0, count) of q (positions pos), keeping the last `capacity` rows.
  void push(const float* q, const int32_t* pos, size_t count, size_t rowFloats, size_t capacity);
  // The last n <= held() rows, oldest first.
  void last(size_t n, size_t rowFloats, std::vector<float>& q, std::vector<int32_t>& pos) const;
};

struct Sequence {
  int32_t id = 0;
  std::vector<HeadState> heads;          // [layers * kvHeads]
  std::vector<int32_t> appended;         // per layer: tokens ever appended = next position
  std::vector<ObservedRows> observed;   // per layer: the last query rows (rows of queryHeads * headDim)
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
  std::vector<ObservedRows> frozenObserved;
};

// What a backend does for an append: copy the shared pages first (copy-on-write), then write row
// t of head h to dest[2 * (t * kvHeads + h)] (page) and dest[... + 1] (slot in the page).
struct AppendPlan {
  std::vector<int32_t> copies;  // (source page, destination page) pairs
  std::vector<int32_t> dest;    // [tokens * kvHeads, 2]
  // Each head as it was before, for undoAppend: its length, its page count and, when the plan
  // replaced its partly filled last page by a private copy, the page replaced (else -1).
  struct Before {
    int32_t length;
    int32_t pages;
    int32_t replaced;
  };
  std::vector<Before> before;  // [kvHeads]
};

// One head's compaction: the kept rows (ascending indices into the old token order) are written in
// order to slots 0, 1, ... of `to`. In place, `to` is the head's own first pages (already private).
struct CompactHead {
  size_t index = 0;                  // layer * kvHeads + head
  const std::vector<int32_t>* kept = nullptr;
  int32_t length = 0;                // the head's tokens before
  std::vector<int32_t> from;         // the head's pages before
  std::vector<int32_t> to;           // its pages after (fresh: taken by takePages before the round)
  bool inPlace = false;              // `to` is the first pages of `from`
};

// Compaction runs in rounds: a round's heads are compacted together, then the pages they no
// longer use are released before the next round starts (fresh-page compaction needs free pages
// for a head's kept rows until its old pages come back).
struct CompactionPlan {
  std::vector<std::vector<CompactHead>> rounds;
};

// Free pages an append of `tokens` rows to each of the H heads takes. `copied` (optional) carries,
// across the appends of one batch, how often each shared page was already copied away by the
// appends before (two forks appending behind one shared page need one copy, not two).
int64_t appendPagesNeeded(const HeadState* heads, int H, int tokens, int P, const PageAllocator& pages,
                          std::map<int32_t, int>* copied);

// The page bookkeeping of an append to kvHeads heads (of one layer): grows each by `tokens` at
// positions pos0 ..., taking pages from `pages`. Checks first (OutOfPages, nothing changes; `limits`
// completes the message) and returns where the rows go. A head whose partly filled last page is
// shared gets a private copy (plan.copies: source, destination pairs); its reference to the source
// is not dropped here but by releaseCopySources once the copy ran, so that until then no other
// sharer compacts the source in place (it counts as shared) and it cannot be freed and reused.
// `pending` (optional) counts, across the appends of one batch, the sources whose release is
// pending: a head whose only other references are those writes into the page in place (behind the
// rows being copied, which it does not touch), as appendPagesNeeded's `copied` counts.
AppendPlan appendToHeads(HeadState* heads, int kvHeads, int tokens, int32_t pos0, int pageSize, PageAllocator& pages,
                         const std::string& limits, std::map<int32_t, int>* pending = nullptr);
// Drops the references to the sources of page copies (the even entries of source, destination
// pairs) once the copies ran.
void releaseCopySources(PageAllocator& pages, const std::vector<int32_t>& copies);
// Undoes appendToHeads when the backend could not copy or write the rows (a device allocation or
// launch that failed): each head gets back its length, its pages and the shared last page the plan
// had replaced by a copy (whose reference was kept: call this instead of releaseCopySources); the
// pages the plan took go back to the pool.
void undoAppendToHeads(HeadState* heads, int kvHeads, const AppendPlan& plan, PageAllocator& pages);

// Fresh-page compaction of any set of heads in one round, all or nothing (the CUDA kernels' own
// tests and benchmark): heads whose kept list is empty or keeps every token are left alone; the
// others get ceil(kept / pageSize) new pages (OutOfPages, nothing taken, when the pool lacks them).
std::vector<CompactHead> takeFreshPages(HeadState* const* heads, const std::vector<std::vector<int32_t>>& kept,
                                        int pageSize, PageAllocator& pages);
// After the round ran: the head keeps the kept positions (and mass, when given) and its pages
// become `to`; the pages it no longer uses are released.
void commitHead(HeadState& head, const CompactHead& c, PageAllocator& pages, std::vector<float>* mass);

class PageTable {
 public:
  PageTable(int layers, int kvHeads, int pageSize, PageAllocator& pages)
      : layers_(layers), kvHeads_(kvHeads), pageSize_(pageSize), pages_(&pages) {}

  int pageSize() const { return pageSize_; }
  size_t heads() const { return (size_t)layers_ * kvHeads_; }
  PageAllocator& allocator() { return *pages_; }
  const PageAllocator& allocator() const { return *pages_; }

  int32_t create();
  int32_t fork(int32_t seq);
  void dispose(int32_t seq);
  void clear();
  size_t count() const { return seqs_.size(); }
  bool has(int32_t seq) const { return seqs_.count(seq) != 0; }
  // Throws Disposed for an unknown sequence.
  Sequence& get(int32_t seq);
  const Sequence& get(int32_t seq) const;

  // Grows every head of `layer` by `tokens` (positions appended ...). Checks first that the pool
  // has the pages (OutOfPages names them; nothing changes), then takes them and returns where the
  // rows go. `limits` completes the error message. The sources of the plan's copies stay taken
  // until releaseCopies (see appendToHeads; `pending` as there).
  AppendPlan append(Sequence& seq, int layer, int tokens, const std::string& limits, std::map<int32_t, int>* pending = nullptr);
  // Drops the references to the sources of copies once they ran (appendToHeads, planCompaction).
  void releaseCopies(const std::vector<int32_t>& copies) { releaseCopySources(*pages_, copies); }
  // Undoes append(seq, layer, ...) that returned `plan` (see undoAppendToHeads), the appended count
  // and the H2O mass included. Appends of one batch are undone in the reverse of their order.
  void undoAppend(Sequence& seq, int layer, const AppendPlan& plan);

  // Plans keeping kept[i] (ascending token indices; empty = keep all) of every head i of `seq`.
  // In place (inPlace): a head writes into its own first ceil(keep / pageSize) pages, shared ones
  // among them replaced by private copies (returned in copies, to be executed first, and their
  // sources released by releaseCopies after that: until then no other sharer of a source compacts
  // it in place, since it still counts as shared). Fresh: every
  // head that moves gets new pages, in rounds that fit the free pages. Throws OutOfPages, changing
  // nothing, when the pool cannot hold the plan. Takes the pages it needs; commitCompaction
  // finishes the bookkeeping.
  CompactionPlan planCompaction(Sequence& seq, const std::vector<std::vector<int32_t>>& kept, bool inPlace,
                                std::vector<int32_t>& copies);
  // A new sequence holding `state`'s heads (positions), appended counts, observation rows and mass
  // (its pages and id are ignored): takes ceil(length / pageSize) pages per head, all or nothing
  // (OutOfPages, `limits` completing the message), and returns the new id. The caller writes the rows.
  int32_t restore(Sequence state, const std::string& limits);
  // Fresh compaction: takes the destination pages of a round (the plan checked they are free).
  void takePages(std::vector<CompactHead>& round);
  // Gives back the destination pages takePages took for a round that did not run (the backend failed).
  void releaseTaken(std::vector<CompactHead>& round);
  // After a round ran: the heads' pages, positions and mass become the kept ones and the pages no
  // longer used are released.
  void commitRound(Sequence& seq, const std::vector<CompactHead>& round);

 private:
  int layers_, kvHeads_, pageSize_;
  PageAllocator* pages_;
  std::map<int32_t, std::unique_ptr<Sequence>> seqs_;
  int32_t nextId_ = 1;
};

}  // namespace lukv
