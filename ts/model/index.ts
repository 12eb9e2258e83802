/**
 * A small trained GQA language model running on lukv: safetensors and tokenizer readers, the
 * forward pass (all attention and KV storage through a lukv Sequence) and sampling.
 */
export { TinyLM, tensorName } from "./tiny-lm";
export type { TinyLMConfig, TinyLMWeights, LayerWeights, ForwardOptions, GenerateOptions, Generation } from "./tiny-lm";
export { loadTinyLM, defaultModelDir, configFromJson, MODEL_FILES } from "./load";
export { Tokenizer, preSplit } from "./tokenizer";
export type { TokenizerJson } from "./tokenizer";
export { readSafetensors, parseSafetensors, encodeSafetensors } from "./safetensors";
export type { Safetensors, Tensor } from "./safetensors";
export { Sampler, argmax, seededRandom } from "./sampling";
export type { SamplingOptions } from "./sampling";
export { matmul, matvec, rmsNorm, ropeTables, applyRope, swiglu } from "./kernels";
export { modelProfile, modelTexts, passkeyPrompts } from "./files";
export type { NamedText, PasskeyPrompt } from "./files";
export { calibrateTinyLM } from "./calibrate";
export type { CalibrationOptions, Calibration } from "./calibrate";
export { OutputErrorProbe, outputErrorProbe, outputErrorOracle } from "./output-error";
export type { AttentionInputs, OutputErrorTerms } from "./output-error";
