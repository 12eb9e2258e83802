// Saved sequences: one sequence's kept tokens per (layer, KV head) in the cache dtype, bit for bit,
// with what a restored sequence needs to continue exactly as the original (appended counts,
// observation rows, H2O mass). Byte layout, checksum and versioning: docs/sequence-format.md.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "cache.h"
#include "crc32c.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the saved-sequence format is written with little-endian memory copies"
#endif

namespace lukv {

namespace {

const uint8_t kMagic[8] = {0x89, 'L', 'U', 'K', 'V', 'S', 'E', 'Q'};
const uint32_t kVersion = 1;
const size_t kHeaderBytes = 64;
const uint32_t kFlagMass = 1;      // every head carries its H2O mass (accumulateAttention was on)
const size_t kLayerFixedBytes = 32;  // appended, observation rows, 3 bounds

std::string str(uint64_t v) { return std::to_string(v); }

[[noreturn]] void bad(const std::string& m) { throw Error(ErrorCode::BadSequenceFile, "Bad sequence file: " + m); }

class Writer {
 public:
  explicit Writer(uint8_t* p) : p_(p) {}
  template <class T>
  void put(T v) { bytes(&v, sizeof v); }
  void bytes(const void* src, size_t n) {
    if (n) std::memcpy(p_, src, n);
    p_ += n;
  }
  uint8_t* at() { return p_; }
  void skip(size_t n) { p_ += n; }

 private:
  uint8_t* p_;
};

// Reads the sections; every size is checked against what is left before it is used, so a declared
// count can never make it allocate or read more than the file holds.
class Reader {
 public:
  Reader(const uint8_t* p, size_t n) : p_(p), end_(p + n) {}
  size_t left() const { return (size_t)(end_ - p_); }
  template <class T>
  T get(const std::string& what) {
    T v;
    std::memcpy(&v, take(sizeof v, what), sizeof v);
    return v;
  }
  const uint8_t* take(size_t n, const std::string& what) {
    if (n > left()) bad(what + " runs past the end of the payload");
    const uint8_t* q = p_;
    p_ += n;
    return q;
  }
  // `count` items of `itemBytes`, checked before multiplying.
  const uint8_t* items(uint64_t count, size_t itemBytes, const std::string& what) {
    if (itemBytes && count > left() / itemBytes)
      bad(what + " declares " + str(count) + " entries, more than the " + str(left()) + " bytes left can hold");
    return take((size_t)count * itemBytes, what);
  }

 private:
  const uint8_t* p_;
  const uint8_t* end_;
};

uint32_t u32At(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

std::string headName(int layer, int head) { return "head (layer " + std::to_string(layer) + ", KV head " + std::to_string(head) + ")"; }

// `x` as the cache dtype stores it (rounded to nearest; infinity past its range).
double storedAs(DType dt, double x) {
  const float f = (float)x;
  if (dt == DType::F16) return f16ToF32(f32ToF16(f));
  if (dt == DType::BF16) return bf16ToF32(f32ToBf16(f));
  return f;
}

// The largest magnitude among `count` stored values of `dt` (raw f16/bf16 words or f32), or -1 when
// one is not finite. The magnitude bits (sign cleared) order finite values as their magnitudes do.
double largestMagnitude(DType dt, const uint8_t* at, size_t count) {
  if (dt == DType::F32) {
    uint32_t top = 0;
    for (size_t i = 0; i < count; ++i) {
      uint32_t u;
      std::memcpy(&u, at + 4 * i, 4);
      top = std::max(top, u & 0x7fffffffu);
    }
    return top >= 0x7f800000u ? -1 : (double)bitsToFloat(top);
  }
  uint16_t top = 0;
  for (size_t i = 0; i < count; ++i) {
    uint16_t u;
    std::memcpy(&u, at + 2 * i, 2);
    top = std::max<uint16_t>(top, u & 0x7fff);
  }
  if (dt == DType::F16) return top >= 0x7c00 ? -1 : (double)f16ToF32(top);
  return top >= 0x7f80 ? -1 : (double)bf16ToF32(top);
}

}  // namespace

Cache::SavedBytes Cache::saveSequence(int32_t seqId, const std::vector<double>& bounds) const {
  SavedBytes out;
  saveSequenceInto(seqId, bounds, [&](size_t n) {
    out.resize(n);
    return out.data();
  });
  return out;
}

void Cache::saveSequenceInto(int32_t seqId, const std::vector<double>& bounds, const std::function<uint8_t*(size_t)>& alloc) const {
  Held held = hold(seqId, true);
  const Sequence& seq = *held.seq;
  const int L = cfg_.layers;
  if (bounds.size() != (size_t)L * 3) throwInvalid("Expected " + str((uint64_t)L * 3) + " bounds");
  const size_t rowBytes = (size_t)cfg_.headDim * dtypeBytes(cfg_.dtype);
  const size_t rowFloats = (size_t)cfg_.queryHeads * cfg_.headDim;
  const bool mass = seq.accumulate;
  // Every observation row a layer holds (up to observationWindow), oldest first.
  size_t bytes = kHeaderBytes + 4;
  for (int l = 0; l < L; ++l) bytes += kLayerFixedBytes + seq.observed[l].held() * (4 + rowFloats * 4);
  for (const HeadState& h : seq.heads) bytes += 4 + (size_t)h.length() * (4 + (mass ? 4 : 0) + 2 * rowBytes);

  uint8_t* const out = alloc(bytes);
  Writer w(out);
  w.bytes(kMagic, 8);
  w.put<uint32_t>(kVersion);
  w.put<uint32_t>((uint32_t)kHeaderBytes);
  w.put<uint64_t>(bytes);
  for (int v : {cfg_.layers, cfg_.kvHeads, cfg_.queryHeads, cfg_.headDim}) w.put<uint32_t>((uint32_t)v);
  w.put<uint32_t>((uint32_t)cfg_.dtype);
  w.put<uint32_t>(mass ? kFlagMass : 0);
  std::memset(w.at(), 0, kHeaderBytes - 48);  // reserved
  w.skip(kHeaderBytes - 48);

  std::vector<float> rows;
  std::vector<int32_t> pos;
  for (int l = 0; l < L; ++l) {
    seq.observed[l].last(seq.observed[l].held(), rowFloats, rows, pos);
    w.put<int32_t>(seq.appended[l]);
    w.put<uint32_t>((uint32_t)pos.size());
    for (int k = 0; k < 3; ++k) w.put<double>(bounds[(size_t)l * 3 + k]);
    w.bytes(pos.data(), pos.size() * 4);
    w.bytes(rows.data(), pos.size() * rowFloats * 4);
  }
  for (size_t i = 0; i < seq.heads.size(); ++i) {
    const HeadState& h = seq.heads[i];
    const size_t n = (size_t)h.length();
    w.put<uint32_t>((uint32_t)n);
    w.bytes(h.positions.data(), n * 4);
    if (mass) w.bytes(seq.mass[i].data(), n * 4);
    backend_->readRaw(h, (int32_t)n, false, w.at());
    w.skip(n * rowBytes);
    backend_->readRaw(h, (int32_t)n, true, w.at());
    w.skip(n * rowBytes);
  }
  const uint32_t crc = crc32c(out, bytes - 4);
  w.put<uint32_t>(crc);
}

int32_t Cache::loadSequence(const uint8_t* data, size_t size, std::vector<double>& bounds, bool measure) {
  std::shared_lock<std::shared_mutex> life(life_);
  checkLive();
  const int L = cfg_.layers, H = cfg_.kvHeads;
  // Header: identity and declared size first, then the checksum over everything, then the shape.
  if (size < 8 || std::memcmp(data, kMagic, 8) != 0) bad("it does not start with the lukv sequence magic bytes");
  if (size < kHeaderBytes + 4) bad("truncated: " + str(size) + " bytes, shorter than the " + str(kHeaderBytes + 4) + "-byte header and checksum");
  const uint32_t version = u32At(data + 8);
  if (version != kVersion) bad("format version " + str(version) + " is not supported (this lukv reads version " + str(kVersion) + ")");
  if (u32At(data + 12) != kHeaderBytes) bad("header size " + str(u32At(data + 12)) + " is not " + str(kHeaderBytes));
  uint64_t declared;
  std::memcpy(&declared, data + 16, 8);
  if (declared > size) bad("truncated: the header declares " + str(declared) + " bytes but " + str(size) + " were given");
  if (declared < size) bad("the header declares " + str(declared) + " bytes but " + str(size) + " were given (trailing bytes)");
  const uint32_t stored = u32At(data + size - 4), actual = crc32c(data, size - 4);
  if (stored != actual) bad("checksum mismatch (stored CRC-32C " + str(stored) + ", computed " + str(actual) + "): the data is corrupt");
  const char* names[] = {"layers", "kvHeads", "queryHeads", "headDim", "dtype"};
  const int want[] = {cfg_.layers, cfg_.kvHeads, cfg_.queryHeads, cfg_.headDim, (int)cfg_.dtype};
  for (int k = 0; k < 5; ++k) {
    const uint32_t got = u32At(data + 24 + 4 * k);
    if (got == (uint32_t)want[k]) continue;
    if (k == 4)
      bad("dtype " + (got <= 2 ? std::string(dtypeName((DType)got)) : "code " + str(got)) + " does not match this cache's " + dtypeName(cfg_.dtype));
    bad(std::string(names[k]) + " " + str(got) + " does not match this cache's " + str((uint64_t)want[k]));
  }
  const uint32_t flags = u32At(data + 44);
  if (flags & ~kFlagMass) bad("unknown flags " + str(flags));
  for (size_t b = 48; b < kHeaderBytes; ++b)
    if (data[b] != 0) bad("reserved header byte " + str(b) + " is not zero");
  const bool mass = (flags & kFlagMass) != 0;

  const size_t rowBytes = (size_t)cfg_.headDim * dtypeBytes(cfg_.dtype);
  const size_t rowFloats = (size_t)cfg_.queryHeads * cfg_.headDim;
  Reader r(data + kHeaderBytes, size - kHeaderBytes - 4);
  Sequence s;
  s.heads.resize((size_t)L * H);
  s.appended.resize(L);
  s.observed.resize(L);
  s.accumulate = mass;
  if (mass) s.mass.resize((size_t)L * H);
  std::vector<double> b((size_t)L * 3);
  for (int l = 0; l < L; ++l) {
    const std::string name = "layer " + std::to_string(l);
    const int32_t appended = r.get<int32_t>(name + " appended count");
    if (appended < 0) bad(name + " has a negative appended count " + std::to_string(appended));
    s.appended[l] = appended;
    const uint32_t rows = r.get<uint32_t>(name + " observation row count");
    for (int k = 0; k < 3; ++k) {
      const double v = r.get<double>(name + " bounds");
      if (!(v >= 0) || !std::isfinite(v)) bad(name + " has a bound that is not a finite number >= 0");
      b[(size_t)l * 3 + k] = v;
    }
    const uint8_t* pos = r.items(rows, 4, name + " observation positions");
    const uint8_t* q = r.items(rows, rowFloats * 4, name + " observation rows");
    std::vector<int32_t> positions(rows);
    std::vector<float> values((size_t)rows * rowFloats);
    if (rows) std::memcpy(positions.data(), pos, (size_t)rows * 4);
    for (int32_t p : positions)
      if (p < 0 || p >= appended) bad(name + " has an observation position " + std::to_string(p) + " outside [0, " + std::to_string(appended) + ")");
    if (rows) std::memcpy(values.data(), q, (size_t)rows * rowFloats * 4);
    for (float v : values) {
      if (!std::isfinite(v)) bad(name + " has an observation row value that is not finite");
      if (measure) b[(size_t)l * 3 + 2] = std::max(b[(size_t)l * 3 + 2], (double)std::fabs(v));
    }
    // A cache with a smaller observationWindow than the one that saved keeps the last rows.
    s.observed[l].push(values.data(), positions.data(), rows, rowFloats, (size_t)cfg_.observationWindow);
  }
  // Where each head's K and V rows are in the file.
  std::vector<const uint8_t*> keys(s.heads.size()), values(s.heads.size());
  const size_t perToken = 4 + (mass ? 4 : 0) + 2 * rowBytes;
  for (size_t i = 0; i < s.heads.size(); ++i) {
    const int l = (int)(i / H);
    const std::string name = headName(l, (int)(i % H));
    const uint32_t n = r.get<uint32_t>(name + " length");
    const uint8_t* at = r.items(n, perToken, name);
    HeadState& h = s.heads[i];
    h.positions.resize(n);
    if (n) std::memcpy(h.positions.data(), at, (size_t)n * 4);
    int32_t prev = -1;
    for (int32_t p : h.positions) {
      if (p <= prev || p >= s.appended[l])
        bad(name + " has position " + std::to_string(p) + " out of order or outside [0, " + std::to_string(s.appended[l]) + ")");
      prev = p;
    }
    at += (size_t)n * 4;
    if (mass) {
      s.mass[i].resize(n);
      if (n) std::memcpy(s.mass[i].data(), at, (size_t)n * 4);
      // Sums of attention weights: finite and never negative.
      for (float v : s.mass[i])
        if (!(std::isfinite(v) && v >= 0)) bad(name + " has an attention mass that is negative or not finite");
      at += (size_t)n * 4;
    }
    keys[i] = at;
    values[i] = at + (size_t)n * rowBytes;
  }
  if (r.left() != 0) bad(str(r.left()) + " bytes after the last head section");
  if (measure) {
    // The bounds of the rows themselves, so that later checks hold whatever the file claims (a
    // cache without checkFinite saves bounds it never measured: 0).
    const char* what[] = {"key", "value"};
    for (size_t i = 0; i < s.heads.size(); ++i) {
      const int l = (int)(i / H);
      for (int k = 0; k < 2; ++k) {
        const double top = largestMagnitude(cfg_.dtype, k ? values[i] : keys[i], (size_t)s.heads[i].length() * cfg_.headDim);
        if (top < 0) bad(headName(l, (int)(i % H)) + " has a " + what[k] + " that is not finite");
        // A checked cache saves the largest input before rounding to the cache dtype; the rows hold
        // it rounded, so only a row above that rounding raises the bound (a re-save stays the same).
        double& bound = b[(size_t)l * 3 + k];
        if (top > storedAs(cfg_.dtype, bound)) bound = top;
      }
    }
  }

  // Pages (all or nothing), then the rows through the backend's append path, one head at a time.
  // Nobody else knows the new id until it is returned, so its own lock is not needed. A backend that
  // runs one call at a time is held before the pages are taken, as every call that takes pages
  // holds it: a compress there takes fresh pages in rounds and counts on the free ones it planned.
  std::unique_lock<std::mutex> exec;
  if (!backend_->concurrent()) exec = std::unique_lock<std::mutex>(exec_);
  int32_t id;
  const Sequence* restored;
  {
    auto table = lockTable();
    id = registerSequence(table_->restore(std::move(s), limits_));
    restored = &table_->get(id);
  }
  try {
    const Sequence& seq = *restored;
    const InputKind kind = cfg_.dtype == DType::F32 ? InputKind::F32 : InputKind::Raw16;
    const int P = cfg_.pageSize;
    for (size_t i = 0; i < seq.heads.size(); ++i) {
      const HeadState& h = seq.heads[i];
      if (h.length() == 0) continue;
      AppendPlan plan;
      plan.dest.resize((size_t)h.length() * 2);
      for (int32_t t = 0; t < h.length(); ++t) plan.dest[2 * (size_t)t] = h.pages[t / P], plan.dest[2 * (size_t)t + 1] = t % P;
      backend_->writeRows(plan, h.length(), 1, keys[i], values[i], kind);
    }
  } catch (...) {
    auto table = lockTable();
    table_->dispose(id);
    seqMu_.erase(id);
    throw;
  }
  bounds = std::move(b);
  return id;
}

}  // namespace lukv
