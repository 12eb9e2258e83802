// Stress test of the cache's locking, meant to run under ThreadSanitizer (scripts/tsan.sh): threads
// append, attend (alone and batched), compress, fork, save, load and dispose their own sequences
// while others read lengths and usage of every sequence. Each fork a thread makes has a twin that it
// hands to the next thread, which appends to, compresses, attends over and disposes it while the
// parent and the first fork go on: their pages are shared copy-on-write between two threads.
// Sequences are independent, so each thread's outputs on its own sequences must equal a replay of
// its operations alone on a fresh cache; at the end every page is back in the pool.
#include <atomic>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "../core/cache.h"

using namespace lukv;

namespace {

CacheConfig config() {
  CacheConfig c;
  c.layers = 2;
  c.kvHeads = 2;
  c.queryHeads = 4;
  c.headDim = 16;
  c.pageSize = 4;
  c.maxTokens = 1 << 16;  // large enough that no thread runs out of pages because of another
  c.dtype = DType::F32;
  c.threads = 2;
  c.observationWindow = 4;
  return c;
}

uint64_t mixIn(uint64_t h, const void* data, size_t bytes) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < bytes; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

// Sequence ids behind a lock, shared between threads.
struct Ids {
  std::mutex mu;
  std::vector<int32_t> ids;
  void add(int32_t id) {
    std::lock_guard<std::mutex> l(mu);
    ids.push_back(id);
  }
};

// Registry of live sequence ids, for the readers.
struct Registry : Ids {
  void remove(int32_t id) {
    std::lock_guard<std::mutex> l(mu);
    for (auto& x : ids)
      if (x == id) x = -1;
  }
  int32_t pick(std::mt19937& r) {
    std::lock_guard<std::mutex> l(mu);
    if (ids.empty()) return -1;
    return ids[r() % ids.size()];
  }
};

// Disposes a sequence, first taking it out of the readers' registry (if any).
void disposeListed(Cache& cache, Registry* reg, int32_t id) {
  if (reg) reg->remove(id);
  cache.disposeSequence(id);
}

// Forks handed from one thread to the next.
struct Inbox : Ids {
  int32_t pop() {
    std::lock_guard<std::mutex> l(mu);
    if (ids.empty()) return -1;
    const int32_t id = ids.back();
    ids.pop_back();
    return id;
  }
};

// Operations with their inputs drawn from r; what the call returns is mixed into h.
void appendRandom(Cache& cache, int32_t id, int layer, std::mt19937& r) {
  const CacheConfig& c = cache.config();
  std::normal_distribution<float> n;
  const int t = 1 + (int)(r() % 6);
  std::vector<float> k(t * (size_t)c.kvHeads * c.headDim), v(k.size());
  for (auto& x : k) x = n(r);
  for (auto& x : v) x = n(r);
  cache.append(id, layer, t, k.data(), v.data(), InputKind::F32);
}

void attendRandom(Cache& cache, int32_t id, int layer, int tokens, std::mt19937& r, uint64_t& h) {
  const CacheConfig& c = cache.config();
  std::normal_distribution<float> n;
  std::vector<float> q(tokens * (size_t)c.queryHeads * c.headDim), out(q.size());
  for (auto& x : q) x = n(r);
  cache.attend(id, layer, tokens, q.data(), out.data(), 0.25f);
  h = mixIn(h, out.data(), out.size() * sizeof(float));
}

void compressRandom(Cache& cache, int32_t id, std::mt19937& r, uint64_t& h) {
  CompressOptions o;
  o.score.scorer = (r() % 2) ? Scorer::KNorm : Scorer::KeyDiff;
  o.score.window = 1;
  o.sink = 1;
  o.ratio = 0.3;
  o.allocation = (r() % 2) ? Allocation::Uniform : Allocation::AdaKV;
  CompressReport rep = cache.compress(id, o);
  h = mixIn(h, rep.kept.data(), rep.kept.size() * sizeof(int32_t));
}

// One operation on a fork another thread handed over, drawn from r (not the thread's own stream,
// so that its own operations stay those of the replay): append, attend, compress or dispose.
// Returns false when it disposed the fork.
bool workOnAdopted(Cache& cache, int32_t id, std::mt19937& r, uint64_t& h) {
  const int op = (int)(r() % 8), layer = (int)(r() % cache.config().layers);
  if (op < 3) appendRandom(cache, id, layer, r);
  else if (op < 5) {
    if (cache.appended(id, layer) > 0) attendRandom(cache, id, layer, 1, r, h);
  } else if (op < 7) compressRandom(cache, id, r, h);
  else return false;
  return true;
}

std::atomic<int64_t> adoptedOps{0};  // operations made on forks handed over, over all threads

// One worker's operations, seeded: returns a hash of everything it observed of its own sequences.
// give / take: the next thread's inbox and this thread's (null in the replay, which disposes the
// twin forks at once: nothing it observes of its own sequences depends on them).
uint64_t work(Cache& cache, uint32_t seed, int steps, Registry* reg, Inbox* give = nullptr, Inbox* take = nullptr) {
  const CacheConfig& c = cache.config();
  std::mt19937 r(seed);
  std::normal_distribution<float> n;
  uint64_t h = 1469598103934665603ull;
  std::vector<int32_t> mine{cache.createSequence()};
  if (reg) reg->add(mine[0]);
  std::mt19937 other(seed ^ 0x9e3779b9u);  // draws for the forks handed over by the previous thread
  std::vector<int32_t> adopted;
  uint64_t unchecked = 0;  // what the calls on forks handed over return: not replayed, not compared
  const size_t qRow = (size_t)c.queryHeads * c.headDim;
  for (int s = 0; s < steps; ++s) {
    if (take) {
      const int32_t got = take->pop();
      if (got >= 0) adopted.push_back(got);
      if (!adopted.empty()) {
        const size_t i = other() % adopted.size();
        adoptedOps++;
        if (!workOnAdopted(cache, adopted[i], other, unchecked)) {
          disposeListed(cache, reg, adopted[i]);
          adopted.erase(adopted.begin() + i);
        }
      }
    }
    const int32_t seq = mine[r() % mine.size()];
    const int op = (int)(r() % 12);
    const int layer = (int)(r() % c.layers);
    if (op < 4) {
      appendRandom(cache, seq, layer, r);
    } else if (op < 7) {
      const int have = cache.appended(seq, layer);
      if (have == 0) continue;
      attendRandom(cache, seq, layer, 1 + (int)(r() % std::min(have, 3)), r, h);
    } else if (op == 7) {
      compressRandom(cache, seq, r, h);
    } else if (op == 8 && mine.size() < 4) {
      const int32_t f = cache.fork(seq);
      mine.push_back(f);
      if (reg) reg->add(f);
      const int32_t twin = cache.fork(seq);
      if (give) {
        if (reg) reg->add(twin);
        give->add(twin);
      } else {
        cache.disposeSequence(twin);
      }
    } else if (op == 10) {
      // One batched step over every sequence of this thread that has a position in the layer.
      std::vector<Cache::AttendItem> items;
      std::vector<std::vector<float>> q, out;
      for (int32_t id : mine) {
        if (cache.appended(id, layer) == 0) continue;
        q.emplace_back(qRow);
        out.emplace_back(qRow);
        for (auto& x : q.back()) x = n(r);
        items.push_back({id, 1, q.back().data(), out.back().data()});
      }
      cache.attendBatch(layer, items, 0.25f);
      for (auto& o : out) h = mixIn(h, o.data(), o.size() * sizeof(float));
    } else if (op == 11 && mine.size() < 4) {
      // Save, then load the copy as another sequence of this thread.
      std::vector<double> bounds(c.layers * 3, 1.0);
      const Cache::SavedBytes bytes = cache.saveSequence(seq, bounds);
      h = mixIn(h, bytes.data(), bytes.size());
      const int32_t copy = cache.loadSequence(bytes.data(), bytes.size(), bounds, (r() & 1) != 0);
      mine.push_back(copy);
      if (reg) reg->add(copy);
    } else if (op == 9 && mine.size() > 1) {
      const size_t i = 1 + r() % (mine.size() - 1);
      disposeListed(cache, reg, mine[i]);
      mine.erase(mine.begin() + i);
    }
    const std::vector<int32_t> len = cache.lengths(mine[r() % mine.size()]);
    h = mixIn(h, len.data(), len.size() * sizeof(int32_t));
  }
  for (int32_t id : mine) disposeListed(cache, reg, id);
  for (int32_t id : adopted) disposeListed(cache, reg, id);
  return h;
}

}  // namespace

int main(int argc, char** argv) {
  const int threads = 4, steps = argc > 1 ? std::atoi(argv[1]) : 400;
  const uint32_t seed = argc > 2 ? (uint32_t)std::atoi(argv[2]) : 20261206u;
  std::printf("concurrency stress: %d threads x %d steps, seed %u\n", threads, steps, seed);

  Cache cache(config());
  Registry reg;
  std::vector<uint64_t> got(threads);
  std::atomic<bool> done{false};
  std::atomic<int64_t> reads{0};
  // Readers: lengths and usage of whatever sequences exist (they may be disposed meanwhile).
  std::vector<std::thread> readers;
  for (int i = 0; i < 2; ++i)
    readers.emplace_back([&, i] {
      std::mt19937 r(seed + 100 + i);
      while (!done) {
        const int32_t id = reg.pick(r);
        try {
          if (id > 0) cache.lengths(id);
          Usage u = cache.usage();
          if (u.pagesUsed > u.pagesTotal) std::abort();
        } catch (const Error& e) {
          if (e.code() != ErrorCode::Disposed) throw;
        }
        reads++;
      }
    });
  std::vector<Inbox> inboxes(threads);
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t)
    workers.emplace_back([&, t] { got[t] = work(cache, seed + t, steps, &reg, &inboxes[(t + 1) % threads], &inboxes[t]); });
  for (auto& w : workers) w.join();
  // Forks handed over after their new thread had finished.
  for (Inbox& box : inboxes)
    for (int32_t id = box.pop(); id >= 0; id = box.pop()) disposeListed(cache, &reg, id);
  done = true;
  for (auto& w : readers) w.join();

  int failures = 0;
  if (cache.usage().pagesUsed != 0) {
    std::printf("FAIL: %lld pages still used after every sequence was disposed\n", (long long)cache.usage().pagesUsed);
    failures++;
  }
  for (int t = 0; t < threads; ++t) {
    Cache alone(config());
    const uint64_t want = work(alone, seed + t, steps, nullptr);
    if (want != got[t]) {
      std::printf("FAIL: thread %d observed something other than its operations replayed alone\n", t);
      failures++;
    }
  }
  std::printf("%s (%lld concurrent reads, %lld operations on forks another thread made)\n", failures ? "FAILED" : "passed",
              (long long)reads.load(), (long long)adoptedOps.load());
  return failures ? 1 : 0;
}
