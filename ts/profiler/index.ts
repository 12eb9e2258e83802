/**
 * The offline profiler: LU-KV's calibration protocol, from oracle capture in a decode loop to a
 * Profile that compress({ allocation: "lukv" }) and budgetsFromProfile() use.
 */
export {
  Profiler,
  type AddSequenceOptions,
  type HeadValues,
  type ProfileReport,
  type ProfilerLoadOverrides,
  type ProfilerOptions,
  type ProfilerSample,
  type ProfilerScorerOptions,
} from "./profiler";
export type { ProfilerScope } from "./sample";
