export { KVCache, Sequence } from "./cache";
export type { KVCacheOptions, AttendOptions, OracleOptions, AutoCompressOptions, PressureOptions, PressureEvent, PressureStats, Usage, CacheConfig, Device, SimdLevel, PrefetchHint } from "./cache";
export type { AttendBatchItem, AttendBatchOptions, AppendBatchItem } from "./batch";
export { backends } from "./backends";
export type { Backends } from "./backends";
export {
  LukvError,
  InvalidArgumentError,
  OutOfPagesError,
  OutOfMemoryError,
  InternalError,
  DisposedError,
  BackendUnavailableError,
  BadProfileError,
  BadModelError,
  SequenceBusyError,
  BadSequenceFileError,
} from "./errors";
export { f32ToF16Bits, f16BitsToF32, f32ToBf16Bits, bf16BitsToF32, toBits, fromBits, roundTo } from "./dtype";
export type { DType } from "./dtype";
export type { CompressOptions, CompressReport, ScoreOptions, ScorerName, AllocationName, PoolingName } from "./compress";
export { QueryStatistics } from "./expected-attention";
export type { QueryStatisticsOptions, ExpectedAttentionOptions, RopeOptions } from "./expected-attention";
export * from "./budget";
export * from "./profile";
export * from "./profiler";
