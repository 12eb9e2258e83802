// Node-API bindings. Validation with user-facing messages happens in TypeScript first; checks here
// guard the native code against anything that slips through.
#include <napi.h>

#include <algorithm>
#include <functional>
#include <limits>
#include <cmath>
#include <memory>
#include <string>
#include <thread>

#include "../core/allocation.h"
#include "../core/cache.h"
#include "../cpu/kernels.h"
#include "../cpu/membench.h"
#include "../cpu/statistics.h"
#include "scan.h"
#ifdef LUKV_WITH_CUDA
#include "../cuda/probe.h"
#endif

namespace lukv {
#ifdef LUKV_CUDA_EMULATE
// The emulated build's test hook (native/tests/emu/emu_addon_backend.cpp): "op" or "op:n", op one of
// alloc, copyPages, append, attend, scores, compact, makes the n-th call of that operation (default
// the first) and every later one throw as a GPU's would (alloc: out of device memory; the others an
// Internal error, as a failed launch, or out of device memory with "/oom" after it); "" stops it.
void setEmulatedFailure(const std::string& what);
#endif

namespace {

Napi::Error toJs(Napi::Env env, const char* code, const std::string& message) {
  Napi::Error e = Napi::Error::New(env, message);
  e.Set("code", Napi::String::New(env, code));
  return e;
}

Napi::Error toJs(Napi::Env env, const Error& err) { return toJs(env, err.codeName(), err.what()); }

// Runs fn, turning lukv and standard exceptions into JS errors with a code.
template <class F>
auto guarded(Napi::Env env, F&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const Error& e) {
    throw toJs(env, e);
  } catch (const std::bad_alloc&) {
    throw toJs(env, "ERR_LUKV_OUT_OF_MEMORY", "out of host memory");
  } catch (const std::exception& e) {
    throw toJs(env, "ERR_LUKV_INTERNAL", e.what());
  }
}

int intArg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (info.Length() <= i || !info[i].IsNumber())
    throw toJs(info.Env(), "ERR_LUKV_INVALID_ARGUMENT", std::string("Expected a number for ") + name);
  return info[i].As<Napi::Number>().Int32Value();
}

struct TypedView {
  const void* data;
  size_t length;
  napi_typedarray_type type;
};

// The data, length and type of a typed array, read with one napi_get_typedarray_info (the Napi
// wrappers' type checks and length reads each ask V8 again, and a batch item is meant to cost
// little). It gives the data of arrays over a SharedArrayBuffer too, where
// napi_get_arraybuffer_info (TypedArray::ArrayBuffer().Data()) fails. False for anything else.
bool typedView(napi_env env, napi_value v, TypedView& t) {
  bool isTyped = false;
  void* data = nullptr;
  if (napi_is_typedarray(env, v, &isTyped) != napi_ok || !isTyped ||
      napi_get_typedarray_info(env, v, &t.type, &t.length, &data, nullptr, nullptr) != napi_ok)
    return false;
  t.data = data;
  return true;
}

// An optional typed-array option: false when absent (not a typed array), `out` when it is one of
// `type`. Another typed array throws: its elements are not the width the caller reads.
bool optionalTyped(Napi::Env env, Napi::Value v, napi_typedarray_type type, const char* what, TypedView& out) {
  if (!v.IsTypedArray()) return false;
  if (!typedView(env, v, out) || out.type != type)
    throw toJs(env, "ERR_LUKV_INVALID_ARGUMENT",
               std::string("Expected ") + (type == napi_int32_array ? "an Int32Array" : "a Float32Array") + " for " + what);
  return true;
}

TypedView typedArg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (info.Length() <= i || !info[i].IsTypedArray())
    throw toJs(info.Env(), "ERR_LUKV_INVALID_ARGUMENT", std::string("Expected a typed array for ") + name);
  TypedView v;
  if (!typedView(info.Env(), info[i], v))
    throw toJs(info.Env(), "ERR_LUKV_INVALID_ARGUMENT", std::string("Expected a readable typed array for ") + name);
  return v;
}

// Enums cross from TypeScript as their names.
template <class E>
struct Named {
  const char* name;
  E value;
};
const Named<Scorer> kScorers[] = {{"snapkv", Scorer::SnapKV}, {"keydiff", Scorer::KeyDiff}, {"knorm", Scorer::KNorm},
                                  {"tova", Scorer::TOVA},     {"h2o", Scorer::H2O},         {"streaming", Scorer::Streaming},
                                  {"random", Scorer::Random}, {"expected-attention", Scorer::ExpectedAttention}};
const Named<Pooling> kPoolings[] = {{"none", Pooling::None}, {"max", Pooling::Max}, {"avg", Pooling::Avg}};
const Named<Allocation> kAllocations[] = {{"uniform", Allocation::Uniform},
                                          {"pyramidkv", Allocation::PyramidKV},
                                          {"adakv", Allocation::AdaKV},
                                          {"lukv", Allocation::LUKV},
                                          {"explicit", Allocation::Explicit}};
const Named<DType> kDTypes[] = {{"f32", DType::F32}, {"f16", DType::F16}, {"bf16", DType::BF16}};

template <class E, size_t N>
E lookup(Napi::Env env, const char* what, const std::string& name, const Named<E> (&table)[N]) {
  for (const auto& e : table)
    if (name == e.name) return e.value;
  throw toJs(env, "ERR_LUKV_INVALID_ARGUMENT", std::string("unknown ") + what + " \"" + name + "\"");
}

// An optional name-valued option; `def` when absent.
template <class E, size_t N>
E named(Napi::Env env, Napi::Object o, const char* key, const Named<E> (&table)[N], E def) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined()) return def;
  if (!v.IsString()) throw toJs(env, "ERR_LUKV_INVALID_ARGUMENT", std::string("Expected a name for ") + key);
  return lookup(env, key, v.As<Napi::String>().Utf8Value(), table);
}

DType dtypeNamed(Napi::Env env, const std::string& name) { return lookup(env, "dtype", name, kDTypes); }

// One Float32Array per KV head.
Napi::Array perHeadArrays(Napi::Env env, const std::vector<std::vector<float>>& v) {
  Napi::Array out = Napi::Array::New(env, v.size());
  for (size_t h = 0; h < v.size(); ++h) {
    auto f = Napi::Float32Array::New(env, v[h].size());
    std::copy(v[h].begin(), v[h].end(), f.Data());
    out.Set((uint32_t)h, f);
  }
  return out;
}

class NativeCache : public Napi::ObjectWrap<NativeCache> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "NativeCache",
                       {
                           InstanceMethod("createSequence", &NativeCache::CreateSequence),
                           InstanceMethod("fork", &NativeCache::Fork),
                           InstanceMethod("disposeSequence", &NativeCache::DisposeSequence),
                           InstanceMethod("append", &NativeCache::Append),
                           InstanceMethod("attend", &NativeCache::Attend),
                           InstanceMethod("attendAsync", &NativeCache::AttendAsync),
                           InstanceMethod("attendBatch", &NativeCache::AttendBatch),
                           InstanceMethod("attendBatchAsync", &NativeCache::AttendBatchAsync),
                           InstanceMethod("appendBatch", &NativeCache::AppendBatch),
                           InstanceMethod("lengths", &NativeCache::Lengths),
                           InstanceMethod("pagesHeldAlone", &NativeCache::PagesHeldAlone),
                           InstanceMethod("compress", &NativeCache::Compress),
                           InstanceMethod("compressAsync", &NativeCache::CompressAsync),
                           InstanceMethod("scores", &NativeCache::Scores),
                           InstanceMethod("accumulate", &NativeCache::Accumulate),
                           InstanceMethod("accumulating", &NativeCache::Accumulating),
                           InstanceMethod("recordOracle", &NativeCache::RecordOracle),
                           InstanceMethod("stopOracle", &NativeCache::StopOracle),
                           InstanceMethod("oracle", &NativeCache::Oracle),
                           InstanceMethod("positions", &NativeCache::Positions),
                           InstanceMethod("appended", &NativeCache::Appended),
                           InstanceMethod("readRows", &NativeCache::ReadRows),
                           InstanceMethod("saveSequence", &NativeCache::SaveSequence),
                           InstanceMethod("saveSequenceAsync", &NativeCache::SaveSequenceAsync),
                           InstanceMethod("loadSequence", &NativeCache::LoadSequence),
                           InstanceMethod("loadSequenceAsync", &NativeCache::LoadSequenceAsync),
                           InstanceMethod("usage", &NativeCache::Usage),
                           InstanceMethod("trim", &NativeCache::Trim),
                           InstanceMethod("info", &NativeCache::Info),
                           InstanceMethod("dispose", &NativeCache::Dispose),
                       });
  }

  NativeCache(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeCache>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsObject())
      throw toJs(env, "ERR_LUKV_INVALID_ARGUMENT", "Expected an options object");
    Napi::Object o = info[0].As<Napi::Object>();
    auto num = [&](const char* k) -> double {
      Napi::Value v = o.Get(k);
      if (!v.IsNumber()) throw toJs(env, "ERR_LUKV_INVALID_ARGUMENT", std::string("Expected a number for ") + k);
      return v.As<Napi::Number>().DoubleValue();
    };
    auto str = [&](const char* k) -> std::string {
      Napi::Value v = o.Get(k);
      if (!v.IsString()) throw toJs(env, "ERR_LUKV_INVALID_ARGUMENT", std::string("Expected a string for ") + k);
      return v.As<Napi::String>().Utf8Value();
    };
    CacheConfig c;
    c.layers = (int)num("layers");
    c.kvHeads = (int)num("kvHeads");
    c.queryHeads = (int)num("queryHeads");
    c.headDim = (int)num("headDim");
    c.pageSize = (int)num("pageSize");
    c.maxTokens = (int64_t)num("maxTokens");
    c.dtype = dtypeNamed(env, str("dtype"));
    c.device = str("device");
    c.threads = (int)num("threads");
    c.observationWindow = (int)num("observationWindow");
    Napi::Value simd = o.Get("simd");
    c.simd = simd.IsString() ? simd.As<Napi::String>().Utf8Value() : "auto";
    Napi::Value prefetch = o.Get("prefetch");
    c.prefetch = prefetch.IsString() ? prefetch.As<Napi::String>().Utf8Value() : "auto";
    if (c.layers < 1 || c.kvHeads < 1 || c.queryHeads < c.kvHeads || c.queryHeads % c.kvHeads != 0 ||
        c.headDim < 1 || c.pageSize < 1 || c.maxTokens < 1 || c.threads < 1 || c.observationWindow < 0)
      throw toJs(env, "ERR_LUKV_INVALID_ARGUMENT", "invalid cache configuration");
    cache_ = guarded(env, [&] { return std::make_shared<Cache>(c); });
    reportMemory(env);
  }

  // A cache dropped without dispose() is freed when this object is collected.
  void Finalize(Napi::Env env) override {
    if (reported_ != 0) Napi::MemoryManagement::AdjustExternalMemory(env, -reported_);
    reported_ = 0;
  }

 private:
  Cache& cache(Napi::Env env) {
    if (!cache_ || cache_->disposed()) throw toJs(env, "ERR_LUKV_DISPOSED", "KVCache was used after dispose()");
    return *cache_;
  }

  Napi::Value CreateSequence(const Napi::CallbackInfo& info) {
    Cache& c = cache(info.Env());
    return Napi::Number::New(info.Env(), guarded(info.Env(), [&] { return c.createSequence(); }));
  }
  Napi::Value Fork(const Napi::CallbackInfo& info) {
    Cache& c = cache(info.Env());
    int id = intArg(info, 0, "sequence");
    return Napi::Number::New(info.Env(), guarded(info.Env(), [&] { return c.fork(id); }));
  }
  Napi::Value DisposeSequence(const Napi::CallbackInfo& info) {
    if (!cache_ || cache_->disposed()) return info.Env().Undefined();
    int id = intArg(info, 0, "sequence");
    cache_->disposeSequence(id);
    return info.Env().Undefined();
  }
  Napi::Value Append(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Cache& c = cache(env);
    int id = intArg(info, 0, "sequence"), layer = intArg(info, 1, "layer");
    TypedView k = typedArg(info, 2, "keys"), v = typedArg(info, 3, "values");
    const CacheConfig& cfg = c.config();
    const size_t row = (size_t)cfg.kvHeads * cfg.headDim;
    if (layer < 0 || layer >= cfg.layers) throw toJs(env, "ERR_LUKV_INVALID_ARGUMENT", "layer out of range");
    if (k.type != v.type || k.length != v.length || k.length % row != 0)
      throw toJs(env, "ERR_LUKV_INVALID_ARGUMENT", "keys and values must have the same type and a whole number of rows");
    InputKind kind;
    if (k.type == napi_float32_array) kind = InputKind::F32;
    else if (k.type == napi_uint16_array && cfg.dtype != DType::F32) kind = InputKind::Raw16;
    else throw toJs(env, "ERR_LUKV_INVALID_ARGUMENT", "keys must be a Float32Array or a Uint16Array of the cache dtype");
    const int tokens = tokensOf(env, k.length, row, "keys");
    guarded(env, [&] { c.append(id, layer, tokens, k.data, v.data, kind); });
    reportMemory(env);
    return env.Undefined();
  }

  struct AttendCall {
    int id, layer, tokens;
    float scale;
  };

  AttendCall attendArgs(const Napi::CallbackInfo& info, Cache& c, TypedView& q) {
    Napi::Env env = info.Env();
    AttendCall a;
    a.id = intArg(info, 0, "sequence");
    a.layer = intArg(info, 1, "layer");
    q = typedArg(info, 2, "queries");
    if (info.Length() < 4 || !info[3].IsNumber()) throw toJs(env, "ERR_LUKV_INVALID_ARGUMENT", "Expected a number for scale");
    a.scale = info[3].As<Napi::Number>().FloatValue();
    if (!std::isfinite(a.scale)) throw toJs(env, "ERR_LUKV_INVALID_ARGUMENT", "Expected a scale within the float32 range");
    const CacheConfig& cfg = c.config();
    const size_t row = (size_t)cfg.queryHeads * cfg.headDim;
    if (a.layer < 0 || a.layer >= cfg.layers) throw toJs(env, "ERR_LUKV_INVALID_ARGUMENT", "layer out of range");
    if (q.type != napi_float32_array || q.length % row != 0 || q.length == 0)
      throw toJs(env, "ERR_LUKV_INVALID_ARGUMENT", "queries must be a non-empty Float32Array of whole rows");
    a.tokens = tokensOf(env, q.length, row, "queries");
    return a;
  }

  // Optional fifth argument of attend/attendAsync: the caller's output array (checked in TypeScript
  // too: a Float32Array of the queries' length that does not overlap them). Empty when absent.
  // Rows of an array as an int token count: a sequence holds at most 2^31 - 1 positions (a larger
  // count cast to int turned negative, and the append returned without a word).
  static int tokensOf(Napi::Env env, size_t length, size_t row, const char* name) {
    const size_t tokens = length / row;
    if (tokens > (size_t)std::numeric_limits<int32_t>::max())
      throw toJs(env, "ERR_LUKV_INVALID_ARGUMENT", std::string("Expected at most 2147483647 tokens of ") + name + " (a sequence holds at most that many positions)");
    return (int)tokens;
  }

  static Napi::Float32Array outArg(const Napi::CallbackInfo& info, size_t length) {
    if (info.Length() <= 4 || info[4].IsUndefined()) return Napi::Float32Array();
    if (!info[4].IsTypedArray() || info[4].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array ||
        info[4].As<Napi::Float32Array>().ElementLength() != length)
      throw toJs(info.Env(), "ERR_LUKV_INVALID_ARGUMENT", "out must be a Float32Array of the queries' length");
    return info[4].As<Napi::Float32Array>();
  }

  // The output must not share memory with what the call reads after writing it (the queries join
  // the observation window after the attention). TypeScript compares the arrays' buffers; two
  // SharedArrayBuffer objects over one memory pass that, so the addresses are compared here.
  static bool sharesMemory(const void* a, size_t aBytes, const void* b, size_t bBytes) {
    const auto* a0 = static_cast<const char*>(a);
    const auto* b0 = static_cast<const char*>(b);
    return std::less<const char*>()(a0, b0 + bBytes) && std::less<const char*>()(b0, a0 + aBytes);
  }

  Napi::Value Attend(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Cache& c = cache(env);
    TypedView q;
    AttendCall a = attendArgs(info, c, q);
    Napi::Float32Array out = outArg(info, q.length);
    if (!out.IsEmpty() && sharesMemory(q.data, q.length * sizeof(float), out.Data(), q.length * sizeof(float)))
      throw toJs(env, "ERR_LUKV_INVALID_ARGUMENT", "Expected an out array that does not share memory with the queries (two SharedArrayBuffer objects over one memory)");
    if (out.IsEmpty()) out = Napi::Float32Array::New(env, q.length);
    guarded(env, [&] { c.attend(a.id, a.layer, a.tokens, static_cast<const float*>(q.data), out.Data(), a.scale); });
    return out;
  }

  // An async call on the cache: Run() executes on a libuv thread (no Node-API there, only the
  // core; the cache locks what it needs); its errors become the promise's rejection with their typed code.
  class CacheWorker : public Napi::AsyncWorker {
   public:
    CacheWorker(Napi::Env env, std::shared_ptr<Cache> cache)
        : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), cache_(std::move(cache)) {}
    Napi::Promise Promise() { return deferred_.Promise(); }

   protected:
    virtual void Run(Cache& cache) = 0;
    // Called on the main thread when Run succeeded.
    virtual void Resolve(Napi::Env env) = 0;
    void Reject(Napi::Env env, const char* code, const std::string& message) {
      deferred_.Reject(toJs(env, code, message).Value());
    }
    Napi::Promise::Deferred deferred_;

   private:
    void Execute() override {
      try {
        if (cache_->disposed()) throw Error(ErrorCode::Disposed, "KVCache was used after dispose()");
        Run(*cache_);
      } catch (const Error& e) {
        code_ = e.codeName();
        message_ = e.what();
      } catch (const std::bad_alloc&) {
        code_ = "ERR_LUKV_OUT_OF_MEMORY";
        message_ = "out of host memory";
      } catch (const std::exception& e) {
        code_ = "ERR_LUKV_INTERNAL";
        message_ = e.what();
      }
    }
    void OnOK() override {
      if (!code_.empty()) Reject(Env(), code_.c_str(), message_);
      else Resolve(Env());
    }
    void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

    std::shared_ptr<Cache> cache_;
    std::string code_, message_;
  };

  class AttendWorker : public CacheWorker {
   public:
    AttendWorker(Napi::Env env, std::shared_ptr<Cache> cache, AttendCall call, std::vector<float> queries,
                 Napi::Float32Array target)
        : CacheWorker(env, std::move(cache)), call_(call), queries_(std::move(queries)), out_(queries_.size()) {
      if (!target.IsEmpty()) target_ = Napi::Persistent(target);
    }

   protected:
    void Run(Cache& cache) override {
      cache.attend(call_.id, call_.layer, call_.tokens, queries_.data(), out_.data(), call_.scale);
    }
    void Resolve(Napi::Env env) override {
      // The caller's array is written here, on the main thread, so it is never touched while
      // JavaScript may be using it. One detached (transferred) or resized in the meantime cannot
      // take the result: null, and TypeScript reports it (the attention itself has run).
      Napi::Float32Array out;
      if (!target_.IsEmpty()) {
        out = target_.Value();
        if (out.ElementLength() != out_.size()) {
          deferred_.Resolve(env.Null());
          return;
        }
      } else {
        out = Napi::Float32Array::New(env, out_.size());
      }
      std::copy(out_.begin(), out_.end(), out.Data());
      deferred_.Resolve(out);
    }

   private:
    AttendCall call_;
    std::vector<float> queries_, out_;
    Napi::Reference<Napi::Float32Array> target_;
  };

  Napi::Value AttendAsync(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Cache& c = cache(env);
    TypedView q;
    AttendCall a = attendArgs(info, c, q);
    // Copied so the caller may reuse or transfer its array while the work runs.
    const float* qd = static_cast<const float*>(q.data);
    Napi::Float32Array target = outArg(info, q.length);
    auto* w = new AttendWorker(env, cache_, a, std::vector<float>(qd, qd + q.length), target);
    Napi::Promise p = w->Promise();
    w->Queue();
    return p;
  }

  // Expected Attention's statistics (Float64Array per layer) and settings, validated in TypeScript.
  static void parseExpected(Napi::Object o, const CacheConfig& cfg, ExpectedAttentionOptions& e) {
    auto f64 = [](Napi::Value v, std::vector<double>& out) {
      if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float64_array) return;
      auto a = v.As<Napi::Float64Array>();
      out.assign(a.Data(), a.Data() + a.ElementLength());
    };
    auto perLayer = [&](const char* key, std::vector<std::vector<double>>& out) {
      Napi::Value v = o.Get(key);
      out.assign(cfg.layers, {});
      if (!v.IsArray()) return;
      Napi::Array arr = v.As<Napi::Array>();
      for (uint32_t l = 0; l < arr.Length() && l < (uint32_t)cfg.layers; ++l) f64(arr.Get(l), out[l]);
    };
    perLayer("mean", e.mean);
    perLayer("covariance", e.covariance);
    f64(o.Get("inverseFrequencies"), e.inverseFrequencies);
    Napi::Value fp = o.Get("futurePositions"), eps = o.Get("epsilon");
    if (fp.IsNumber()) e.futurePositions = fp.As<Napi::Number>().Int32Value();
    if (eps.IsNumber()) e.epsilon = eps.As<Napi::Number>().DoubleValue();
    e.useCovariance = o.Get("useCovariance").ToBoolean().Value();
    e.valueNorm = o.Get("valueNorm").ToBoolean().Value();
  }

  // Batched steps: (layer, sequence ids, one typed array per item, ...). Arguments arrive checked
  // from TypeScript; these checks keep the native code safe from anything that slips through.
  static std::vector<int32_t> batchIds(const Napi::CallbackInfo& info, size_t i) {
    if (info.Length() <= i || !info[i].IsTypedArray() || info[i].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
      throw toJs(info.Env(), "ERR_LUKV_INVALID_ARGUMENT", "Expected an Int32Array of sequence ids");
    auto ids = info[i].As<Napi::Int32Array>();
    return std::vector<int32_t>(ids.Data(), ids.Data() + ids.ElementLength());
  }
  // The elements of argument i, read with napi_get_element (a getter there runs JS, which can resize
  // or detach any array read before it), unchecked: batchViews checks them and takes their views,
  // once every element of the call has been read.
  static std::vector<napi_value> batchElements(const Napi::CallbackInfo& info, size_t i, size_t count, const char* name) {
    Napi::Env env = info.Env();
    if (info.Length() <= i || !info[i].IsArray() || info[i].As<Napi::Array>().Length() != count)
      throw toJs(env, "ERR_LUKV_INVALID_ARGUMENT", std::string("Expected one typed array per item for ") + name);
    napi_value arr = info[i];
    std::vector<napi_value> out(count);
    for (uint32_t k = 0; k < count; ++k)
      if (napi_get_element(env, arr, k, &out[k]) != napi_ok)
        throw toJs(env, "ERR_LUKV_INVALID_ARGUMENT", std::string("Expected typed arrays of whole rows for ") + name);
    return out;
  }
  // The data pointers and lengths of items read by batchElements. Runs no JS, so they stay valid
  // until the caller next runs JS: take them only once every element of the call has been read.
  static std::vector<TypedView> batchViews(Napi::Env env, const std::vector<napi_value>& items, const char* name, size_t row) {
    std::vector<TypedView> out(items.size());
    for (size_t k = 0; k < items.size(); ++k)
      if (!typedView(env, items[k], out[k]) || out[k].length % row != 0)
        throw toJs(env, "ERR_LUKV_INVALID_ARGUMENT", std::string("Expected typed arrays of whole rows for ") + name);
    return out;
  }

  struct AttendBatchCall {
    int layer = 0;
    float scale = 0;
    double scaleGiven = 0;  // as given: the bounds are checked with it, as TypeScript checks them
    std::vector<int32_t> ids;
    std::vector<TypedView> queries;
    std::vector<float*> outs;  // the data of each item's out array
  };

  // The optional checks of the queries' values (arguments 5 and 6 of attendBatch): with a
  // Float64Array of each item's key bound (max |k| of its layer, as TypeScript tracks it), every
  // item's queries must be finite and keep the scores within float32 by the formulas of
  // checkScores in ts/finite.ts (the same double arithmetic, in the same order), and each item's
  // largest |q| is written to the second Float64Array. TypeScript's batch takes this path to save
  // one scan call per item; when it throws, TypeScript runs its own checks for the exact message.
  static void checkQueryValues(const Napi::CallbackInfo& info, const CacheConfig& cfg, const AttendBatchCall& a) {
    Napi::Env env = info.Env();
    if (info.Length() < 6 || info[5].IsUndefined() || info[5].IsNull()) return;
    TypedView keyMax, queryMax;
    const size_t n = a.ids.size();
    if (!typedView(env, info[5], keyMax) || keyMax.type != napi_float64_array || keyMax.length != n ||
        info.Length() < 7 || !typedView(env, info[6], queryMax) || queryMax.type != napi_float64_array || queryMax.length != n)
      throw toJs(env, "ERR_LUKV_INVALID_ARGUMENT", "Expected a Float64Array of key bounds and one for the query maxima, one entry per item");
    const double* kmax = static_cast<const double*>(keyMax.data);
    double* qmax = static_cast<double*>(const_cast<void*>(queryMax.data));
    const double scale = std::fabs(a.scaleGiven);
    constexpr double kScoreLimit = 0x1p120;  // SCORE_LIMIT in ts/finite.ts
    constexpr double kFloat32Max = (double)std::numeric_limits<float>::max();
    for (size_t i = 0; i < n; ++i) {
      const ScanResult r = scanF32(static_cast<const float*>(a.queries[i].data), a.queries[i].length, INFINITY);
      const double bound = (double)cfg.headDim * r.maxAbs * kmax[i] * std::max(1.0, scale);
      if (r.firstBad >= 0 || bound > kScoreLimit || r.maxAbs * scale > kFloat32Max)
        throw toJs(env, "ERR_LUKV_INVALID_ARGUMENT",
                   "Expected finite queries whose scores stay within float32 for items[" + std::to_string(i) + "].queries");
      qmax[i] = r.maxAbs;
    }
  }

  // (layer, ids, queries, scale, outs): outs is an array with a Float32Array of the item's
  // queries' length per item (TypeScript makes the ones the caller did not give).
  AttendBatchCall attendBatchArgs(const Napi::CallbackInfo& info, Cache& c) {
    Napi::Env env = info.Env();
    const CacheConfig& cfg = c.config();
    AttendBatchCall a;
    a.layer = intArg(info, 0, "layer");
    if (a.layer < 0 || a.layer >= cfg.layers) throw toJs(env, "ERR_LUKV_INVALID_ARGUMENT", "layer out of range");
    a.ids = batchIds(info, 1);
    const size_t row = (size_t)cfg.queryHeads * cfg.headDim;
    auto checkQuery = [&](const TypedView& q) {
      if (q.type != napi_float32_array || q.length == 0)
        throw toJs(env, "ERR_LUKV_INVALID_ARGUMENT", "queries must be non-empty Float32Arrays of whole rows");
      tokensOf(env, q.length, row, "queries");
    };
    // The elements are read first (getters may run), the views taken once after every read: the
    // queries' errors come after the scale's.
    const std::vector<napi_value> queries = batchElements(info, 2, a.ids.size(), "queries");
    if (info.Length() < 4 || !info[3].IsNumber()) throw toJs(env, "ERR_LUKV_INVALID_ARGUMENT", "Expected a number for scale");
    a.scaleGiven = info[3].As<Napi::Number>().DoubleValue();
    a.scale = (float)a.scaleGiven;
    if (!std::isfinite(a.scale)) throw toJs(env, "ERR_LUKV_INVALID_ARGUMENT", "Expected a scale within the float32 range");
    const std::vector<napi_value> outItems = batchElements(info, 4, a.ids.size(), "out");
    // Every getter has run: the views are taken and checked, with no JS until the kernel.
    a.queries = batchViews(env, queries, "queries", row);
    for (const TypedView& q : a.queries) checkQuery(q);
    const std::vector<TypedView> outs = batchViews(env, outItems, "out", 1);
    for (size_t i = 0; i < outs.size(); ++i) {
      if (outs[i].type != napi_float32_array || outs[i].length != a.queries[i].length)
        throw toJs(env, "ERR_LUKV_INVALID_ARGUMENT", "out must be a Float32Array of the queries' length");
      a.outs.push_back(static_cast<float*>(const_cast<void*>(outs[i].data)));
    }
    checkBatchMemory(env, a);
    checkQueryValues(info, cfg, a);
    return a;
  }

  // No item's output may share memory with another output or with any queries (see sharesMemory):
  // the ranges in address order, each checked against the furthest end before it.
  static void checkBatchMemory(Napi::Env env, const AttendBatchCall& a) {
    struct Range {
      const char* begin;
      const char* end;
      size_t item;
      bool out;
    };
    std::vector<Range> ranges;
    ranges.reserve(2 * a.outs.size());
    for (size_t i = 0; i < a.outs.size(); ++i) {
      const size_t bytes = a.queries[i].length * sizeof(float);
      const char* q = static_cast<const char*>(a.queries[i].data);
      const char* o = reinterpret_cast<const char*>(a.outs[i]);
      ranges.push_back({q, q + bytes, i, false});
      ranges.push_back({o, o + bytes, i, true});
    }
    std::sort(ranges.begin(), ranges.end(), [](const Range& x, const Range& y) { return std::less<const char*>()(x.begin, y.begin); });
    const Range* furthest = nullptr;     // of every range so far
    const Range* furthestOut = nullptr;  // of the outputs so far
    auto before = [](const char* p, const Range* r) { return r && std::less<const char*>()(p, r->end); };
    for (const Range& r : ranges) {
      const Range* other = r.out ? (before(r.begin, furthest) ? furthest : nullptr) : (before(r.begin, furthestOut) ? furthestOut : nullptr);
      if (other) {
        const Range& out = r.out ? r : *other;
        const Range& with = r.out ? *other : r;
        throw toJs(env, "ERR_LUKV_INVALID_ARGUMENT",
                   "Expected items[" + std::to_string(out.item) + "].out not to share memory with items[" + std::to_string(with.item) + "]." +
                       (with.out ? "out" : "queries") + " (two SharedArrayBuffer objects over one memory)");
      }
      if (!furthest || std::less<const char*>()(furthest->end, r.end)) furthest = &r;
      if (r.out && (!furthestOut || std::less<const char*>()(furthestOut->end, r.end))) furthestOut = &r;
    }
  }

  // Writes into the caller's out arrays (one per item; TypeScript makes the missing ones).
  Napi::Value AttendBatch(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Cache& c = cache(env);
    AttendBatchCall a = attendBatchArgs(info, c);
    const size_t row = (size_t)c.config().queryHeads * c.config().headDim;
    std::vector<Cache::AttendItem> items(a.ids.size());
    for (size_t i = 0; i < a.ids.size(); ++i)
      items[i] = {a.ids[i], tokensOf(env, a.queries[i].length, row, "queries"), static_cast<const float*>(a.queries[i].data), a.outs[i]};
    guarded(env, [&] { c.attendBatch(a.layer, items, a.scale); });
    return env.Undefined();
  }

  class AttendBatchWorker : public CacheWorker {
   public:
    // `queries` is copied before the worker is made: making it (its async resource) can run JS.
    AttendBatchWorker(Napi::Env env, std::shared_ptr<Cache> cache, const AttendBatchCall& call,
                      std::vector<std::vector<float>> queries, Napi::Array outs, size_t row)
        : CacheWorker(env, std::move(cache)), layer_(call.layer), scale_(call.scale), ids_(call.ids), row_(row),
          queries_(std::move(queries)), outs_(Napi::Persistent(outs)) {
      for (const std::vector<float>& q : queries_) out_.emplace_back(q.size());
    }

   protected:
    void Run(Cache& cache) override {
      std::vector<Cache::AttendItem> items;
      for (size_t i = 0; i < ids_.size(); ++i)
        items.push_back({ids_[i], (int)(queries_[i].size() / row_), queries_[i].data(), out_[i].data()});
      cache.attendBatch(layer_, items, scale_);
    }
    void Resolve(Napi::Env env) override {
      // The callers' arrays are written here, on the main thread (see AttendWorker); the array of
      // them is the addon's own (made by TypeScript for this call), held by one reference.
      // Every element is read first (a getter could resize an earlier target), then the views.
      napi_value outs = outs_.Value();
      std::vector<napi_value> items(out_.size());
      std::vector<float*> targets(out_.size());
      bool read = true;
      for (size_t i = 0; i < out_.size() && read; ++i) read = napi_get_element(env, outs, (uint32_t)i, &items[i]) == napi_ok;
      for (size_t i = 0; i < out_.size() && read; ++i) {
        TypedView t{};
        read = typedView(env, items[i], t) && t.type == napi_float32_array && t.length == out_[i].size();
        targets[i] = static_cast<float*>(const_cast<void*>(t.data));
      }
      if (!read) {
        deferred_.Resolve(Napi::Boolean::New(env, false));  // none written; see AttendWorker
        return;
      }
      for (size_t i = 0; i < out_.size(); ++i) std::copy(out_[i].begin(), out_[i].end(), targets[i]);
      deferred_.Resolve(Napi::Boolean::New(env, true));
    }

   private:
    int layer_;
    float scale_;
    std::vector<int32_t> ids_;
    size_t row_;
    std::vector<std::vector<float>> queries_, out_;
    Napi::Reference<Napi::Array> outs_;
  };

  // Like AttendBatch, off the main thread: resolves (with nothing) once every out array is written.
  Napi::Value AttendBatchAsync(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Cache& c = cache(env);
    AttendBatchCall a = attendBatchArgs(info, c);
    // Copied now, before any JS can run, so the caller may reuse or transfer its arrays while the work runs.
    std::vector<std::vector<float>> queries;
    for (const TypedView& t : a.queries) {
      const float* q = static_cast<const float*>(t.data);
      queries.emplace_back(q, q + t.length);
    }
    auto* w = new AttendBatchWorker(env, cache_, a, std::move(queries), info[4].As<Napi::Array>(),
                                    (size_t)c.config().queryHeads * c.config().headDim);
    Napi::Promise p = w->Promise();
    w->Queue();
    return p;
  }

  Napi::Value AppendBatch(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Cache& c = cache(env);
    const CacheConfig& cfg = c.config();
    const int layer = intArg(info, 0, "layer");
    if (layer < 0 || layer >= cfg.layers) throw toJs(env, "ERR_LUKV_INVALID_ARGUMENT", "layer out of range");
    const std::vector<int32_t> ids = batchIds(info, 1);
    const size_t row = (size_t)cfg.kvHeads * cfg.headDim;
    const std::vector<napi_value> keys = batchElements(info, 2, ids.size(), "keys");
    const std::vector<napi_value> values = batchElements(info, 3, ids.size(), "values");
    // Every getter has run: the views are taken with no JS until the rows are copied.
    const std::vector<TypedView> k = batchViews(env, keys, "keys", row), v = batchViews(env, values, "values", row);
    InputKind kind = InputKind::F32;
    std::vector<Cache::AppendItem> items;
    for (size_t i = 0; i < ids.size(); ++i) {
      if (k[i].type != v[i].type || k[i].length != v[i].length || k[i].type != k[0].type)
        throw toJs(env, "ERR_LUKV_INVALID_ARGUMENT", "keys and values must have one type and matching lengths");
      if (k[i].type == napi_float32_array) kind = InputKind::F32;
      else if (k[i].type == napi_uint16_array && cfg.dtype != DType::F32) kind = InputKind::Raw16;
      else throw toJs(env, "ERR_LUKV_INVALID_ARGUMENT", "keys must be Float32Arrays or Uint16Arrays of the cache dtype");
      items.push_back({ids[i], tokensOf(env, k[i].length, row, "keys"), k[i].data, v[i].data});
    }
    guarded(env, [&] { c.appendBatch(layer, items, kind); });
    reportMemory(env);
    return env.Undefined();
  }

  // Options arrive validated from TypeScript: plain numbers and typed arrays.
  static CompressOptions parseCompress(Napi::Env env, Napi::Object o, const CacheConfig& cfg) {
    auto num = [&](const char* k, double def) -> double {
      Napi::Value v = o.Get(k);
      return v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : def;
    };
    CompressOptions c;
    ScoreOptions& s = c.score;
    s.scorer = named(env, o, "scorer", kScorers, Scorer::SnapKV);
    s.window = (int)num("window", 32);
    s.pooling = named(env, o, "pooling", kPoolings, Pooling::None);
    s.kernel = (int)num("kernel", 7);
    s.groupMax = num("groupMax", 0) != 0;
    s.groupLayer = num("groupLayer", 0) != 0;
    s.valueNorm = num("valueNorm", 0) != 0;
    s.seed = (uint32_t)num("seed", 0);
    s.scale = (float)num("scale", 1.0 / std::sqrt((double)cfg.headDim));
    if (!std::isfinite(s.scale)) throw toJs(env, "ERR_LUKV_INVALID_ARGUMENT", "Expected a scale within the float32 range");
    Napi::Value obs = o.Get("observation");
    if (obs.IsArray()) {
      Napi::Array arr = obs.As<Napi::Array>();
      s.observation.resize(cfg.layers);
      for (uint32_t l = 0; l < arr.Length() && l < (uint32_t)cfg.layers; ++l) {
        TypedView f;
        if (!optionalTyped(env, arr.Get(l), napi_float32_array, "observationQueries", f)) continue;
        const float* rows = static_cast<const float*>(f.data);
        s.observation[l].assign(rows, rows + f.length);
      }
    }
    c.allocation = named(env, o, "allocation", kAllocations, Allocation::Uniform);
    c.ratio = num("ratio", 0);
    c.sink = (int)num("sink", 4);
    s.sink = c.sink;
    Napi::Value ea = o.Get("expected");
    if (ea.IsObject()) parseExpected(ea.As<Napi::Object>(), cfg, s.expected);
    c.alpha = num("alpha", 0.2);
    c.beta = num("beta", 20);
    Napi::Value pr = o.Get("pruneRatios");
    if (pr.IsTypedArray() && pr.As<Napi::TypedArray>().TypedArrayType() == napi_float64_array) {
      auto fa = pr.As<Napi::Float64Array>();
      c.pruneRatios.assign(fa.Data(), fa.Data() + fa.ElementLength());
    }
    TypedView b;
    if (optionalTyped(env, o.Get("budgets"), napi_int32_array, "budgets", b)) {
      const int32_t* budgets = static_cast<const int32_t*>(b.data);
      c.budgets.assign(budgets, budgets + b.length);
    }
    return c;
  }

  static Napi::Object reportToJs(Napi::Env env, const CompressReport& r) {
    Napi::Object o = Napi::Object::New(env);
    auto kept = Napi::Int32Array::New(env, r.kept.size());
    std::copy(r.kept.begin(), r.kept.end(), kept.Data());
    o.Set("kept", kept);
    o.Set("before", (double)r.before);
    o.Set("target", (double)r.target);
    o.Set("total", (double)r.total);
    o.Set("pagesFreed", (double)r.pagesFreed);
    o.Set("ms", r.ms);
    return o;
  }

  Napi::Value Compress(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Cache& c = cache(env);
    int id = intArg(info, 0, "sequence");
    if (info.Length() < 2 || !info[1].IsObject()) throw toJs(env, "ERR_LUKV_INVALID_ARGUMENT", "Expected an options object");
    CompressOptions opt = parseCompress(env, info[1].As<Napi::Object>(), c.config());
    CompressReport r = guarded(env, [&] { return c.compress(id, opt); });
    reportMemory(env);  // a compaction may write pages never written before (copies of shared ones, fresh pages)
    return reportToJs(env, r);
  }

  class CompressWorker : public CacheWorker {
   public:
    CompressWorker(Napi::Env env, std::shared_ptr<Cache> cache, int id, CompressOptions opt, NativeCache* owner)
        : CacheWorker(env, std::move(cache)), id_(id), opt_(std::move(opt)), owner_(Napi::Persistent(owner->Value())) {}

   protected:
    void Run(Cache& cache) override { report_ = cache.compress(id_, opt_); }
    void Resolve(Napi::Env env) override {
      NativeCache::Unwrap(owner_.Value())->reportMemory(env);
      deferred_.Resolve(reportToJs(env, report_));
    }

   private:
    int id_;
    CompressOptions opt_;
    CompressReport report_;
    Napi::ObjectReference owner_;
  };

  Napi::Value CompressAsync(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Cache& c = cache(env);
    int id = intArg(info, 0, "sequence");
    if (info.Length() < 2 || !info[1].IsObject()) throw toJs(env, "ERR_LUKV_INVALID_ARGUMENT", "Expected an options object");
    // Options (and any observation queries) are copied here, on the JS thread.
    auto* w = new CompressWorker(env, cache_, id, parseCompress(env, info[1].As<Napi::Object>(), c.config()), this);
    Napi::Promise p = w->Promise();
    w->Queue();
    return p;
  }

  Napi::Value Scores(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Cache& c = cache(env);
    int id = intArg(info, 0, "sequence"), layer = intArg(info, 1, "layer");
    if (layer < 0 || layer >= c.config().layers) throw toJs(env, "ERR_LUKV_INVALID_ARGUMENT", "layer out of range");
    if (info.Length() < 3 || !info[2].IsObject()) throw toJs(env, "ERR_LUKV_INVALID_ARGUMENT", "Expected an options object");
    CompressOptions opt = parseCompress(env, info[2].As<Napi::Object>(), c.config());
    return perHeadArrays(env, guarded(env, [&] { return c.scores(id, layer, opt.score); }));
  }

  Napi::Value Accumulate(const Napi::CallbackInfo& info) {
    Cache& c = cache(info.Env());
    int id = intArg(info, 0, "sequence");
    bool on = info.Length() > 1 && info[1].ToBoolean().Value();
    guarded(info.Env(), [&] { c.setAccumulate(id, on); });
    return info.Env().Undefined();
  }

  Napi::Value Accumulating(const Napi::CallbackInfo& info) {
    Cache& c = cache(info.Env());
    int id = intArg(info, 0, "sequence");
    return Napi::Boolean::New(info.Env(), guarded(info.Env(), [&] { return c.accumulating(id); }));
  }

  Napi::Value RecordOracle(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Cache& c = cache(env);
    int id = intArg(info, 0, "sequence");
    std::vector<std::vector<float>> wo;
    if (info.Length() > 1 && info[1].IsArray()) {
      Napi::Array arr = info[1].As<Napi::Array>();
      wo.resize(c.config().layers);
      for (uint32_t l = 0; l < arr.Length() && l < (uint32_t)c.config().layers; ++l) {
        TypedView f;
        if (!optionalTyped(env, arr.Get(l), napi_float32_array, "outputProjection", f)) continue;
        const float* w = static_cast<const float*>(f.data);
        wo[l].assign(w, w + f.length);
      }
    }
    bool normalize = info.Length() > 2 && info[2].ToBoolean().Value();
    guarded(env, [&] { c.recordOracle(id, wo, normalize); });
    return env.Undefined();
  }
  Napi::Value StopOracle(const Napi::CallbackInfo& info) {
    Cache& c = cache(info.Env());
    int id = intArg(info, 0, "sequence");
    guarded(info.Env(), [&] { c.stopOracle(id); });
    return info.Env().Undefined();
  }
  Napi::Value Oracle(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Cache& c = cache(env);
    int id = intArg(info, 0, "sequence"), layer = intArg(info, 1, "layer");
    if (layer < 0 || layer >= c.config().layers) throw toJs(env, "ERR_LUKV_INVALID_ARGUMENT", "layer out of range");
    return perHeadArrays(env, guarded(env, [&] { return c.oracle(id, layer); }));
  }

  Napi::Value Lengths(const Napi::CallbackInfo& info) {
    Cache& c = cache(info.Env());
    int id = intArg(info, 0, "sequence");
    auto v = guarded(info.Env(), [&] { return c.lengths(id); });
    auto out = Napi::Int32Array::New(info.Env(), v.size());
    std::copy(v.begin(), v.end(), out.Data());
    return out;
  }
  Napi::Value PagesHeldAlone(const Napi::CallbackInfo& info) {
    Cache& c = cache(info.Env());
    int id = intArg(info, 0, "sequence");
    return Napi::Number::New(info.Env(), (double)guarded(info.Env(), [&] { return c.pagesHeldAlone(id); }));
  }
  Napi::Value Positions(const Napi::CallbackInfo& info) {
    Cache& c = cache(info.Env());
    int id = intArg(info, 0, "sequence"), layer = intArg(info, 1, "layer"), head = intArg(info, 2, "head");
    if (layer < 0 || layer >= c.config().layers || head < 0 || head >= c.config().kvHeads)
      throw toJs(info.Env(), "ERR_LUKV_INVALID_ARGUMENT", "layer or head out of range");
    auto v = guarded(info.Env(), [&] { return c.positions(id, layer, head); });
    auto out = Napi::Int32Array::New(info.Env(), v.size());
    std::copy(v.begin(), v.end(), out.Data());
    return out;
  }
  Napi::Value Appended(const Napi::CallbackInfo& info) {
    Cache& c = cache(info.Env());
    int id = intArg(info, 0, "sequence"), layer = intArg(info, 1, "layer");
    if (layer < 0 || layer >= c.config().layers) throw toJs(info.Env(), "ERR_LUKV_INVALID_ARGUMENT", "layer out of range");
    return Napi::Number::New(info.Env(), guarded(info.Env(), [&] { return c.appended(id, layer); }));
  }
  Napi::Value ReadRows(const Napi::CallbackInfo& info) {
    Cache& c = cache(info.Env());
    int id = intArg(info, 0, "sequence"), layer = intArg(info, 1, "layer"), head = intArg(info, 2, "head");
    bool values = info.Length() > 3 && info[3].ToBoolean().Value();
    if (layer < 0 || layer >= c.config().layers || head < 0 || head >= c.config().kvHeads)
      throw toJs(info.Env(), "ERR_LUKV_INVALID_ARGUMENT", "layer or head out of range");
    auto v = guarded(info.Env(), [&] { return c.readRows(id, layer, head, values); });
    auto out = Napi::Float32Array::New(info.Env(), v.size());
    std::copy(v.begin(), v.end(), out.Data());
    return out;
  }
  // Saved sequences: saveSequence(id, bounds Float64Array) -> Buffer, loadSequence(bytes, measure)
  // -> [id, bounds Float64Array]; the async variants run the same core calls in a worker.
  static std::vector<double> boundsArg(const Napi::CallbackInfo& info, const CacheConfig& cfg) {
    TypedView b = typedArg(info, 1, "bounds");
    if (b.type != napi_float64_array || b.length != (size_t)cfg.layers * 3)
      throw toJs(info.Env(), "ERR_LUKV_INVALID_ARGUMENT", "bounds must be a Float64Array of layers * 3");
    const double* d = static_cast<const double*>(b.data);
    return std::vector<double>(d, d + b.length);
  }
  static std::vector<uint8_t> bytesArg(const Napi::CallbackInfo& info) {
    TypedView v = typedArg(info, 0, "bytes");
    if (v.type != napi_uint8_array) throw toJs(info.Env(), "ERR_LUKV_INVALID_ARGUMENT", "Expected a Uint8Array (or Buffer) for bytes");
    const uint8_t* d = static_cast<const uint8_t*>(v.data);
    return std::vector<uint8_t>(d, d + v.length);
  }
  // The largest Buffer this Node.js makes (buffer.constants.MAX_LENGTH, given by the caller): past it
  // Node refuses the Buffer, and for an external one frees the bytes itself (a double free here).
  static double maxBytesArg(const Napi::CallbackInfo& info) {
    if (info.Length() <= 2 || !info[2].IsNumber()) throw toJs(info.Env(), "ERR_LUKV_INVALID_ARGUMENT", "Expected a number for maxBytes");
    return info[2].As<Napi::Number>().DoubleValue();
  }
  static void checkSavedSize(size_t n, double maxBytes) {
    if ((double)n > maxBytes)
      throw Error(ErrorCode::InvalidArgument, "The saved sequence would be " + std::to_string(n) + " bytes, more than the largest Buffer this Node.js makes (" +
                                                  std::to_string((uint64_t)maxBytes) + " bytes): compress the sequence first");
  }
  // saveAsync's bytes (made on a worker thread, where no Buffer can be) become the Buffer's memory
  // (no copy); the vector is freed with it. Held here until the Buffer exists: creating it fails in
  // a worker thread being terminated, and the throw must not leak them. Their size is reported to
  // V8 as external memory while the Buffer lives, so that it counts toward the next collection.
  static Napi::Buffer<uint8_t> toBuffer(Napi::Env env, Cache::SavedBytes&& bytes) {
    auto owned = std::make_unique<Cache::SavedBytes>(std::move(bytes));
    const int64_t size = (int64_t)owned->size();
    Napi::Buffer<uint8_t> buffer = Napi::Buffer<uint8_t>::New(
        env, owned->data(), owned->size(),
        [](Napi::Env env, uint8_t*, Cache::SavedBytes* v) {
          Napi::MemoryManagement::AdjustExternalMemory(env, -(int64_t)v->size());
          delete v;
        },
        owned.get());
    if (buffer.IsEmpty()) return buffer;
    owned.release();  // the Buffer's finalizer frees it from now on
    Napi::MemoryManagement::AdjustExternalMemory(env, size);
    return buffer;
  }
  static Napi::Array loaded(Napi::Env env, int32_t id, const std::vector<double>& bounds) {
    Napi::Array out = Napi::Array::New(env, 2);
    auto b = Napi::Float64Array::New(env, bounds.size());
    std::copy(bounds.begin(), bounds.end(), b.Data());
    out.Set(0u, Napi::Number::New(env, id));
    out.Set(1u, b);
    return out;
  }
  Napi::Value SaveSequence(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Cache& c = cache(env);
    int id = intArg(info, 0, "sequence");
    std::vector<double> bounds = boundsArg(info, c.config());
    const double maxBytes = maxBytesArg(info);
    // Written straight into a Buffer of V8's: the collector frees it (an external Buffer's memory
    // waits for its finalizer, which runs only after the current turn of the event loop, so
    // synchronous saves in a loop piled up: 30 saves of 132 MB reached 4 GB).
    Napi::Buffer<uint8_t> out;
    guarded(env, [&] {
      c.saveSequenceInto(id, bounds, [&](size_t n) {
        checkSavedSize(n, maxBytes);
        try {
          out = Napi::Buffer<uint8_t>::New(env, n);
        } catch (const Napi::Error&) {
          throw std::bad_alloc();  // V8 could not make a Buffer that large
        }
        return out.Data();
      });
    });
    return out;
  }
  Napi::Value LoadSequence(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Cache& c = cache(env);
    TypedView v = typedArg(info, 0, "bytes");
    if (v.type != napi_uint8_array) throw toJs(env, "ERR_LUKV_INVALID_ARGUMENT", "Expected a Uint8Array (or Buffer) for bytes");
    const bool measure = info[1].ToBoolean().Value();
    std::vector<double> bounds;
    const int32_t id = guarded(env, [&] { return c.loadSequence(static_cast<const uint8_t*>(v.data), v.length, bounds, measure); });
    reportMemory(env);
    return loaded(env, id, bounds);
  }
  class SaveWorker : public CacheWorker {
   public:
    SaveWorker(Napi::Env env, std::shared_ptr<Cache> cache, int id, std::vector<double> bounds, double maxBytes)
        : CacheWorker(env, std::move(cache)), id_(id), bounds_(std::move(bounds)), maxBytes_(maxBytes) {}

   protected:
    void Run(Cache& cache) override {
      bytes_ = cache.saveSequence(id_, bounds_);
      checkSavedSize(bytes_.size(), maxBytes_);
    }
    void Resolve(Napi::Env env) override { deferred_.Resolve(toBuffer(env, std::move(bytes_))); }

   private:
    int id_;
    std::vector<double> bounds_;
    double maxBytes_;
    Cache::SavedBytes bytes_;
  };
  class LoadWorker : public CacheWorker {
   public:
    LoadWorker(Napi::Env env, std::shared_ptr<Cache> cache, std::vector<uint8_t> bytes, bool measure, NativeCache* owner)
        : CacheWorker(env, std::move(cache)), bytes_(std::move(bytes)), measure_(measure), owner_(Napi::Persistent(owner->Value())) {}

   protected:
    void Run(Cache& cache) override { id_ = cache.loadSequence(bytes_.data(), bytes_.size(), bounds_, measure_); }
    void Resolve(Napi::Env env) override {
      NativeCache::Unwrap(owner_.Value())->reportMemory(env);
      deferred_.Resolve(loaded(env, id_, bounds_));
    }

   private:
    std::vector<uint8_t> bytes_;  // copied on the JS thread: the caller may reuse or transfer its buffer
    bool measure_;
    Napi::ObjectReference owner_;
    int32_t id_ = 0;
    std::vector<double> bounds_;
  };
  Napi::Value SaveSequenceAsync(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Cache& c = cache(env);
    int id = intArg(info, 0, "sequence");
    auto* w = new SaveWorker(env, cache_, id, boundsArg(info, c.config()), maxBytesArg(info));
    Napi::Promise p = w->Promise();
    w->Queue();
    return p;
  }
  Napi::Value LoadSequenceAsync(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    cache(env);
    auto* w = new LoadWorker(env, cache_, bytesArg(info), info[1].ToBoolean().Value(), this);
    Napi::Promise p = w->Promise();
    w->Queue();
    return p;
  }

  Napi::Value Usage(const Napi::CallbackInfo& info) {
    Cache& c = cache(info.Env());
    auto u = guarded(info.Env(), [&] { return c.usage(); });
    Napi::Object o = Napi::Object::New(info.Env());
    o.Set("pagesTotal", (double)u.pagesTotal);
    o.Set("pagesUsed", (double)u.pagesUsed);
    o.Set("bytesTotal", (double)u.bytesTotal);
    o.Set("bytesUsed", (double)u.bytesUsed);
    o.Set("sequences", (double)u.sequences);
    return o;
  }
  Napi::Value Trim(const Napi::CallbackInfo& info) {
    Cache& c = cache(info.Env());
    const int64_t bytes = guarded(info.Env(), [&] { return c.trim(); });
    return Napi::Number::New(info.Env(), (double)bytes);
  }
  Napi::Value Info(const Napi::CallbackInfo& info) {
    Cache& c = cache(info.Env());
    Napi::Object o = Napi::Object::New(info.Env());
    o.Set("simd", c.simdName());
    o.Set("prefetch", c.prefetchName());
    o.Set("threads", c.threads());
    o.Set("device", c.device());
    return o;
  }
  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    if (cache_) cache_->dispose();  // waits for the calls in flight
    reportMemory(info.Env());
    return info.Env().Undefined();
  }

  // Tells V8 how much host memory the cache holds (pool pages written, page bookkeeping), so that
  // caches dropped without dispose() are collected as their memory grows, not at some later GC.
  // Only append grows it; trim() gives memory back without lowering it (the pages written may be
  // written again, so the report stays an upper bound until the cache is freed). On the CPU each
  // kernel thread besides the calling one counts as the 8 MiB stack it reserves: caches dropped
  // before they wrote a page hold little memory but threads, and are collected too (the CUDA
  // backend starts no threads).
  void reportMemory(Napi::Env env) {
    int64_t now = 0;
    if (cache_ && !cache_->disposed()) {
      now = (int64_t)cache_->residentBytes();
      if (std::string(cache_->device()) == "cpu") now += (int64_t)(cache_->threads() - 1) * (8 << 20);
    }
    if (now != reported_) Napi::MemoryManagement::AdjustExternalMemory(env, now - reported_);
    reported_ = now;
  }

  std::shared_ptr<Cache> cache_;
  int64_t reported_ = 0;  // bytes last reported to V8 with AdjustExternalMemory
};

Napi::Value CpuInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("simd", cpu::bestKernelName());
  Napi::Array supported = Napi::Array::New(env);
  uint32_t n = 0;
  for (const char* name : {"avx512", "avx2", "neon", "generic"})
    if (cpu::cpuSupports(name)) supported.Set(n++, name);
  o.Set("simdSupported", supported);
  o.Set("prefetch", cpu::prefetchName(cpu::bestPrefetch()));
  o.Set("hardwareThreads", (double)std::thread::hardware_concurrency());
  return o;
}

#ifdef LUKV_CUDA_EMULATE
Napi::Value EmulatedFailure(const Napi::CallbackInfo& info) {
  if (info.Length() != 1 || !info[0].IsString()) throw Napi::TypeError::New(info.Env(), "emulatedFailure(what: string)");
  guarded(info.Env(), [&] { setEmulatedFailure(info[0].As<Napi::String>().Utf8Value()); });
  return info.Env().Undefined();
}
#endif

Napi::Value CudaInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
#ifdef LUKV_WITH_CUDA
  cuda::ProbeResult r = cuda::probe();
  o.Set("compiled", true);
  o.Set("usable", r.usable);
  o.Set("devices", r.devices);
  o.Set("runtimeVersion", r.runtimeVersion);
  o.Set("driverVersion", r.driverVersion);
  o.Set("names", r.names);
  if (!r.error.empty()) o.Set("error", r.error);
#elif defined(LUKV_CUDA_EMULATE)
  // The test-only build: the CUDA backend's kernels run in the CPU emulator.
  o.Set("compiled", true);
  o.Set("usable", true);
  o.Set("emulated", true);
  o.Set("devices", 1);
  o.Set("runtimeVersion", 0);
  o.Set("driverVersion", 0);
  o.Set("names", "CUDA emulator (CPU)");
#else
  o.Set("compiled", false);
  o.Set("usable", false);
  o.Set("devices", 0);
  o.Set("error", "this build of lukv was compiled without CUDA (nvcc was not found or LUKV_CUDA=OFF)");
#endif
  return o;
}

// scanValues(array, kind, limit, result): result[0] = the first index with !(|x| < limit) or -1,
// result[1] = the largest |x| before it; `result` is a Float64Array of 2 the caller keeps (every
// attend and append call scans its inputs, so nothing is allocated per scan).
// kind 0: Float32Array; 1, 2: Uint16Array of raw f16, bf16 words (limit unused: bad = not finite).
// One array of scanValues / scanValuesBatch: kind 0 a Float32Array (limit applies), 1 and 2 a
// Uint16Array of raw f16 / bf16 words.
static ScanResult scanTyped(Napi::Env env, const TypedView& in, int kind, float limit) {
  if (kind == 0 && in.type == napi_float32_array) return scanF32(static_cast<const float*>(in.data), in.length, limit);
  if ((kind == 1 || kind == 2) && in.type == napi_uint16_array) return scanRaw16(static_cast<const uint16_t*>(in.data), in.length, kind == 2);
  throw toJs(env, "ERR_LUKV_INVALID_ARGUMENT", "Expected a Float32Array (kind 0) or a Uint16Array (kind 1, 2)");
}

Napi::Value ScanValues(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsTypedArray() || !info[1].IsNumber() || !info[2].IsNumber())
    throw toJs(env, "ERR_LUKV_INVALID_ARGUMENT", "Expected (typed array, kind, limit)");
  TypedView in;
  if (!typedView(env, info[0], in)) throw toJs(env, "ERR_LUKV_INVALID_ARGUMENT", "Expected a typed array");
  const ScanResult r = scanTyped(env, in, info[1].As<Napi::Number>().Int32Value(), info[2].As<Napi::Number>().FloatValue());
  TypedView res;
  if (info.Length() < 4 || !typedView(env, info[3], res) || res.type != napi_float64_array || res.length < 2)
    throw toJs(env, "ERR_LUKV_INVALID_ARGUMENT", "Expected a Float64Array of 2 for the result");
  double* out = static_cast<double*>(const_cast<void*>(res.data));
  out[0] = (double)r.firstBad;
  out[1] = r.maxAbs;
  return env.Undefined();
}

// scanValuesBatch(arrays, kind, limit, result): scanValues over each array of a JS array, one call
// for a batch's keys and values; result[2 i], result[2 i + 1] are array i's first bad index (or -1)
// and largest magnitude before it.
Napi::Value ScanValuesBatch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 4 || !info[0].IsArray() || !info[1].IsNumber() || !info[2].IsNumber())
    throw toJs(env, "ERR_LUKV_INVALID_ARGUMENT", "Expected (array of typed arrays, kind, limit, result)");
  napi_value arrays = info[0];
  const uint32_t n = info[0].As<Napi::Array>().Length();
  const int kind = info[1].As<Napi::Number>().Int32Value();
  const float limit = info[2].As<Napi::Number>().FloatValue();
  // Every element is read first (a getter could resize the result or an array read before it).
  std::vector<napi_value> items(n);
  for (uint32_t i = 0; i < n; ++i)
    if (napi_get_element(env, arrays, i, &items[i]) != napi_ok)
      throw toJs(env, "ERR_LUKV_INVALID_ARGUMENT", "Expected typed arrays");
  TypedView res;
  if (!typedView(env, info[3], res) || res.type != napi_float64_array || res.length < 2 * (size_t)n)
    throw toJs(env, "ERR_LUKV_INVALID_ARGUMENT", "Expected a Float64Array of 2 per array for the result");
  double* out = static_cast<double*>(const_cast<void*>(res.data));
  for (uint32_t i = 0; i < n; ++i) {
    TypedView in;
    if (!typedView(env, items[i], in))
      throw toJs(env, "ERR_LUKV_INVALID_ARGUMENT", "Expected typed arrays");
    const ScanResult r = scanTyped(env, in, kind, limit);
    out[2 * i] = (double)r.firstBad;
    out[2 * i + 1] = r.maxAbs;
  }
  return env.Undefined();
}

// accumulateQueryStatistics(queries, first, tokens, queryHeads, headDim, count, mean, m2 | null):
// QueryStatistics.add's running sums (arguments checked in TypeScript; sizes checked again here).
Napi::Value AccumulateQueryStatistics(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto view = [&](int i, napi_typedarray_type want, size_t need) -> void* {
    TypedView t;
    if (i >= (int)info.Length() || !typedView(env, info[i], t) || t.type != want || t.length < need)
      throw toJs(env, "ERR_LUKV_INVALID_ARGUMENT", "accumulateQueryStatistics: argument " + std::to_string(i) + " is not a typed array of the expected type and size");
    return const_cast<void*>(t.data);
  };
  const int first = info[1].As<Napi::Number>().Int32Value(), tokens = info[2].As<Napi::Number>().Int32Value();
  const int Q = info[3].As<Napi::Number>().Int32Value(), D = info[4].As<Napi::Number>().Int32Value();
  const double count = info[5].As<Napi::Number>().DoubleValue();
  if (first < 0 || tokens < first || Q < 1 || D < 1 || !(count >= 0 && count <= 9007199254740991.0))
    throw toJs(env, "ERR_LUKV_INVALID_ARGUMENT", "accumulateQueryStatistics: bad sizes");
  const size_t row = (size_t)Q * D;
  const float* q = static_cast<const float*>(view(0, napi_float32_array, (size_t)tokens * row));
  double* mean = static_cast<double*>(view(6, napi_float64_array, row));
  double* m2 = info.Length() > 7 && info[7].IsTypedArray() ? static_cast<double*>(view(7, napi_float64_array, row * D)) : nullptr;
  cpu::accumulateQueryStatistics(q, first, tokens, Q, D, (int64_t)count, mean, m2);
  return env.Undefined();
}

// keepOrder(scores: Float32Array, sink, window) -> Int32Array: the tokens outside the sink and the
// window, best first, ranked exactly as compress ranks them (core/allocation keepOrder).
Napi::Value KeepOrder(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsTypedArray() || !info[1].IsNumber() || !info[2].IsNumber() ||
      info[0].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
    throw toJs(env, "ERR_LUKV_INVALID_ARGUMENT", "Expected (Float32Array scores, sink, window)");
  Napi::Float32Array scores = info[0].As<Napi::Float32Array>();
  const int sink = info[1].As<Napi::Number>().Int32Value(), window = info[2].As<Napi::Number>().Int32Value();
  if (sink < 0 || window < 0 || scores.ElementLength() > (size_t)INT32_MAX)
    throw toJs(env, "ERR_LUKV_INVALID_ARGUMENT", "Expected sink and window >= 0 and at most 2^31-1 scores");
  const std::vector<int32_t> order = keepOrder(scores.Data(), (int32_t)scores.ElementLength(), sink, window);
  Napi::Int32Array out = Napi::Int32Array::New(env, order.size());
  std::copy(order.begin(), order.end(), out.Data());
  return out;
}

// lukvBudgets(pruneRatios: Float64Array, lengths: Int32Array, floors: Int32Array, total) -> Int32Array:
// the LU-KV keep counts of core/allocation (budgetsFromProfile checks the arguments first; floors
// are at most the lengths, and their sum at most total, at most the sum of lengths).
Napi::Value LukvBudgets(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto typed = [&](int i, napi_typedarray_type want) {
    return i < (int)info.Length() && info[i].IsTypedArray() && info[i].As<Napi::TypedArray>().TypedArrayType() == want;
  };
  if (!typed(0, napi_float64_array) || !typed(1, napi_int32_array) || !typed(2, napi_int32_array) || info.Length() < 4 ||
      !info[3].IsNumber())
    throw toJs(env, "ERR_LUKV_INVALID_ARGUMENT", "Expected (Float64Array pruneRatios, Int32Array lengths, Int32Array floors, total)");
  Napi::Float64Array prune = info[0].As<Napi::Float64Array>();
  Napi::Int32Array len = info[1].As<Napi::Int32Array>(), lo = info[2].As<Napi::Int32Array>();
  const size_t H = len.ElementLength();
  if (prune.ElementLength() != H || lo.ElementLength() != H)
    throw toJs(env, "ERR_LUKV_INVALID_ARGUMENT", "Expected pruneRatios, lengths and floors of one length");
  HeadBounds b;
  b.len.assign(len.Data(), len.Data() + H);
  b.lo.assign(lo.Data(), lo.Data() + H);
  b.hi = b.len;
  for (size_t h = 0; h < H; ++h) {
    if (b.lo[h] < 0 || b.lo[h] > b.len[h])
      throw toJs(env, "ERR_LUKV_INVALID_ARGUMENT", "Expected 0 <= floors[h] <= lengths[h]");
    b.before += b.len[h];
    b.sumLo += b.lo[h];
  }
  const double total = info[3].As<Napi::Number>().DoubleValue();
  if (!(total >= (double)b.sumLo && total <= (double)b.before) || total != std::floor(total))
    throw toJs(env, "ERR_LUKV_INVALID_ARGUMENT", "Expected an integer total between the sum of floors and the sum of lengths");
  std::vector<int32_t> keep;
  guarded(env, [&] { keep = lukvBudgets(b, std::vector<double>(prune.Data(), prune.Data() + H), (int64_t)total); });
  Napi::Int32Array out = Napi::Int32Array::New(env, H);
  std::copy(keep.begin(), keep.end(), out.Data());
  return out;
}

// keptTotal(ratio, tokens) -> the kept total of core/allocation (budgetsFromProfile checks the
// arguments first).
Napi::Value KeptTotal(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsNumber())
    throw toJs(env, "ERR_LUKV_INVALID_ARGUMENT", "Expected (ratio, tokens)");
  const double ratio = info[0].As<Napi::Number>().DoubleValue(), tokens = info[1].As<Napi::Number>().DoubleValue();
  if (!(ratio >= 0 && ratio <= 1) || !(tokens >= 0 && tokens <= 9007199254740991.0) || tokens != std::floor(tokens))
    throw toJs(env, "ERR_LUKV_INVALID_ARGUMENT", "Expected a ratio in [0, 1] and a safe integer count of tokens");
  return Napi::Number::New(env, (double)keptTotal(ratio, (int64_t)tokens));
}

// memoryReadBenchmark(bytes, threads, repeats) -> seconds per repeat, the faster of a read with and
// one without software prefetch (benchmarks only).
Napi::Value MemoryReadBenchmark(const Napi::CallbackInfo& info) {
  size_t bytes = (size_t)info[0].As<Napi::Number>().DoubleValue();
  int threads = info[1].As<Napi::Number>().Int32Value();
  int repeats = info[2].As<Napi::Number>().Int32Value();
  std::vector<double> s = cpu::readBandwidth(bytes, threads < 1 ? 1 : threads, repeats < 1 ? 1 : repeats);
  Napi::Array out = Napi::Array::New(info.Env(), s.size());
  for (size_t i = 0; i < s.size(); ++i) out.Set((uint32_t)i, s[i]);
  return out;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("memoryReadBenchmark", Napi::Function::New(env, MemoryReadBenchmark));
  exports.Set("NativeCache", NativeCache::Init(env));
  exports.Set("cpuInfo", Napi::Function::New(env, CpuInfo));
  exports.Set("scanValues", Napi::Function::New(env, ScanValues));
  exports.Set("scanValuesBatch", Napi::Function::New(env, ScanValuesBatch));
  exports.Set("keepOrder", Napi::Function::New(env, KeepOrder));
  exports.Set("lukvBudgets", Napi::Function::New(env, LukvBudgets));
  exports.Set("keptTotal", Napi::Function::New(env, KeptTotal));
  exports.Set("cudaInfo", Napi::Function::New(env, CudaInfo));
#ifdef LUKV_CUDA_EMULATE
  exports.Set("emulatedFailure", Napi::Function::New(env, EmulatedFailure));
#endif
  exports.Set("accumulateQueryStatistics", Napi::Function::New(env, AccumulateQueryStatistics));
  return exports;
}

}  // namespace
}  // namespace lukv

static Napi::Object InitModule(Napi::Env env, Napi::Object exports) { return lukv::Init(env, exports); }

NODE_API_MODULE(lukv, InitModule)
