// The batched steps of the cache (attendBatch, appendBatch; attend is a batch of one): every item
// is checked and planned on the host, then the backend runs the whole batch at once.
#include <algorithm>
#include <cstring>
#include <map>

#include "cache.h"

namespace lukv {

namespace {
std::string str(int64_t v) { return std::to_string(v); }

// The ids of a batch's items, checked to be distinct (a sequence given twice would wait for its
// own lock). A duplicate is reported as the first item that repeats an earlier one.
template <class Item>
std::vector<int32_t> distinctIds(const std::vector<Item>& items) {
  std::vector<int32_t> ids(items.size());
  for (size_t i = 0; i < items.size(); ++i) ids[i] = items[i].seq;
  if (items.size() < 2) return ids;
  std::vector<std::pair<int32_t, size_t>> sorted(items.size());
  for (size_t i = 0; i < items.size(); ++i) sorted[i] = {ids[i], i};
  std::sort(sorted.begin(), sorted.end());
  size_t first = 0, repeat = items.size();  // the repeat with the lowest index, and the item it repeats
  for (size_t k = 1; k < sorted.size(); ++k)
    if (sorted[k].first == sorted[k - 1].first && (k < 2 || sorted[k - 2].first != sorted[k].first) &&
        sorted[k].second < repeat) {
      first = sorted[k - 1].second;
      repeat = sorted[k].second;
    }
  if (repeat < items.size())
    throwInvalid("Expected distinct sequences for items but items[" + str((int64_t)first) + "] and items[" +
                 str((int64_t)repeat) + "] are the same sequence");
  return ids;
}

}  // namespace

Cache::HeldAll Cache::holdAll(const std::vector<int32_t>& ids, bool backend) const {
  HeldAll h;
  h.life = std::shared_lock<std::shared_mutex>(life_);
  checkLive();
  std::vector<size_t> order(ids.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return ids[a] < ids[b]; });
  {
    auto table = lockTable();
    for (size_t i : order) {
      auto it = seqMu_.find(ids[i]);
      if (it == seqMu_.end()) table_->get(ids[i]);  // throws Disposed
      h.mu.push_back(it->second);
    }
  }
  for (auto& mu : h.mu) h.own.emplace_back(*mu);
  if (backend && !backend_->concurrent()) h.exec = std::unique_lock<std::mutex>(exec_);
  auto table = lockTable();
  h.seqs.resize(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) h.seqs[i] = &table_->get(ids[i]);  // disposed meanwhile: Disposed
  return h;
}

void Cache::attendBatch(int layer, const std::vector<AttendItem>& items, float scale) {
  if (layer < 0 || layer >= cfg_.layers) throwInvalid("layer out of range");
  HeldAll held = holdAll(distinctIds(items), true);
  const std::vector<Sequence*>& seqs = held.seqs;
  const int H = cfg_.kvHeads, QH = cfg_.queryHeads;
  for (size_t i = 0; i < items.size(); ++i) {
    const int32_t appended = seqs[i]->appended[layer];
    if (items[i].tokens < 1 || items[i].tokens > appended)
      throwInvalid("Expected 1 to " + str(appended) + " query tokens for queries (layer " + str(layer) + " has " +
                   str(appended) + " positions appended) but received " + str(items[i].tokens));
  }
  if (items.empty()) return;

  // Per item: its query positions, and the mass / oracle arrays it updates (flat, item i's first
  // at qpos0[i] and i * H or i * QH).
  std::vector<size_t> qpos0(items.size() + 1, 0);
  for (size_t i = 0; i < items.size(); ++i) qpos0[i + 1] = qpos0[i] + (size_t)items[i].tokens;
  std::vector<int32_t> qpos(qpos0.back());
  std::vector<float*> mass, oracle;
  std::vector<const float*> oracleWeight;
  std::vector<AttendRequest> requests(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    Sequence& seq = *seqs[i];
    const int tokens = items[i].tokens;
    int32_t* pos = qpos.data() + qpos0[i];
    for (int r = 0; r < tokens; ++r) pos[r] = seq.appended[layer] - tokens + r;
    AttendRequest& a = requests[i];
    a.heads = seq.heads.data() + (size_t)layer * H;
    a.kvHeads = H;
    a.queryHeads = QH;
    a.tokens = tokens;
    a.queryPositions = pos;
    a.queries = items[i].queries;
    a.out = items[i].out;
    a.scale = scale;
    if (seq.accumulate) {
      if (mass.empty()) mass.resize(items.size() * H);
      for (int h = 0; h < H; ++h) mass[i * H + h] = seq.mass[(size_t)layer * H + h].data();
    }
    if (seq.recording) {
      if (oracle.empty()) {
        oracle.resize(items.size() * H);
        oracleWeight.resize(items.size() * QH);
      }
      for (int h = 0; h < H; ++h) oracle[i * H + h] = seq.oracle[(size_t)layer * H + h].data();
      for (int q = 0; q < QH; ++q) oracleWeight[i * QH + q] = seq.oracleWeight[(size_t)layer * QH + q].data();
      a.oracleTokens = seq.oracleTokens.data() + (size_t)layer * H;
    }
  }
  // The pointer arrays are complete (no resize after this): point the requests into them.
  for (size_t i = 0; i < items.size(); ++i) {
    if (seqs[i]->accumulate) requests[i].mass = mass.data() + i * H;
    if (seqs[i]->recording) {
      requests[i].oracle = oracle.data() + i * H;
      requests[i].oracleWeight = oracleWeight.data() + i * QH;
    }
  }
  backend_->attendBatch(requests);

  const size_t rowFloats = (size_t)QH * cfg_.headDim;
  for (size_t i = 0; i < items.size(); ++i)
    seqs[i]->observed[layer].push(items[i].queries, qpos.data() + qpos0[i], (size_t)items[i].tokens, rowFloats,
                                  (size_t)cfg_.observationWindow);
}

void Cache::appendBatch(int layer, const std::vector<AppendItem>& items, InputKind kind) {
  if (layer < 0 || layer >= cfg_.layers) throwInvalid("layer out of range");
  // Raw 16-bit words are already in the cache's storage type: there is none for an f32 cache.
  if (kind == InputKind::Raw16 && cfg_.dtype == DType::F32)
    throwInvalid("Expected Float32Array keys and values for an f32 cache but received raw 16-bit words");
  HeldAll held = holdAll(distinctIds(items), true);
  const std::vector<Sequence*>& seqs = held.seqs;
  const int H = cfg_.kvHeads, P = cfg_.pageSize;
  PageAllocator& pages = backend_->pages();
  // The pool is counted and taken under the table's lock; the rows are written after it.
  auto table = lockTable();
  // Every item is checked, and the pages of the whole batch counted, before any item takes one.
  int64_t needed = 0, totalTokens = 0;
  std::map<int32_t, int> copied;
  for (size_t i = 0; i < items.size(); ++i) {
    if (items[i].tokens < 0) throwInvalid("Expected a non-negative number of tokens but received " + str(items[i].tokens));
    if ((int64_t)seqs[i]->appended[layer] + items[i].tokens > INT32_MAX)
      throwInvalid("sequence would exceed 2^31-1 positions");
    if (items[i].tokens == 0) continue;
    needed += appendPagesNeeded(seqs[i]->heads.data() + (size_t)layer * H, H, items[i].tokens, P, pages, &copied);
    totalTokens += items[i].tokens;
  }
  if (needed > pages.freePages())
    throw Error(ErrorCode::OutOfPages, "appendBatch needs " + str(needed) + " free pages but the pool has " +
                                           str(pages.freePages()) + " of " + str(pages.numPages()) + limits_ +
                                           "; nothing was appended");
  if (totalTokens == 0) return;

  // One plan for the batch: the items' rows one after another, as if one append of all of them.
  AppendPlan merged;
  std::map<int32_t, int> pending;  // copy sources of the items before, released after the copies
  const size_t rowBytes = (size_t)H * cfg_.headDim * (kind == InputKind::F32 ? 4 : 2);
  std::vector<uint8_t> keys, values;
  const bool single = items.size() == 1;
  if (!single) {
    keys.resize((size_t)totalTokens * rowBytes);
    values.resize((size_t)totalTokens * rowBytes);
  }
  std::vector<AppendPlan> plans(items.size());
  std::vector<PlannedAppend> appends;
  try {
    for (size_t i = 0; i < items.size(); ++i) {
      if (items[i].tokens == 0) continue;
      plans[i] = table_->append(*seqs[i], layer, items[i].tokens, limits_, &pending);
      appends.push_back({seqs[i], &plans[i]});
      merged.copies.insert(merged.copies.end(), plans[i].copies.begin(), plans[i].copies.end());
      merged.dest.insert(merged.dest.end(), plans[i].dest.begin(), plans[i].dest.end());
    }
  } catch (...) {  // checked above, so not expected: still all or nothing
    for (size_t i = appends.size(); i-- > 0;) table_->undoAppend(*appends[i].first, layer, *appends[i].second);
    throw;
  }
  table.unlock();
  size_t at = 0;
  for (size_t i = 0; i < items.size() && !single; ++i) {
    const size_t bytes = (size_t)items[i].tokens * rowBytes;
    std::memcpy(keys.data() + at, items[i].keys, bytes);
    std::memcpy(values.data() + at, items[i].values, bytes);
    at += bytes;
  }
  writeAppended(appends.data(), appends.size(), layer, merged, (int)totalTokens, single ? items[0].keys : keys.data(),
                single ? items[0].values : values.data(), kind);
}

}  // namespace lukv
