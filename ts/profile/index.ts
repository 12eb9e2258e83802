/**
 * LU-KV profiles: the table Φ[grid][layers][kvHeads] of per-head prune ratios, its
 * .npy (LU-KV authors, NVIDIA kvpress) and JSON forms, and the online lookup that
 * turns it into per-head budgets.
 */
export {
  createProfile,
  profileRowRatio,
  PROFILE_FORMAT,
  PROFILE_FORMAT_VERSION,
  type Profile,
  type ProfileCalibration,
  type ProfileInit,
  type ProfileMeta,
} from "./profile";
export { decodeNpy, encodeNpy, type EncodeNpyOptions, type NpyArray, type NpyFloatDtype } from "./npy";
export { profileFromJson, profileToJson, type ProfileJson } from "./json";
export {
  decodeProfile,
  encodeProfile,
  loadProfile,
  profileFromNpy,
  profileToNpy,
  saveProfile,
  type ProfileFormat,
  type SaveProfileOptions,
} from "./io";
export { budgetsFromProfile, pruneRatiosAt, type BudgetsFromProfileOptions } from "./budgets";
