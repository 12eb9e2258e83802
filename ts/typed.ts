// Typed arrays as the engine holds them: their own accessors, which a subclass or an instance
// cannot replace, so reading them runs no user code (for arrays a call writes to, like `out`, read
// after the inputs were checked, and for error messages).
const typedArrayProto = Object.getPrototypeOf(Uint8Array.prototype) as object;
const accessor = (name: string) => Object.getOwnPropertyDescriptor(typedArrayProto, name)!.get! as (this: ArrayBufferView) => number;
const lengthGetter = accessor("length"), byteOffsetGetter = accessor("byteOffset"), byteLengthGetter = accessor("byteLength");
const bufferGetter = Object.getOwnPropertyDescriptor(typedArrayProto, "buffer")!.get! as (this: ArrayBufferView) => ArrayBufferLike;

const tagGetter = Object.getOwnPropertyDescriptor(typedArrayProto, Symbol.toStringTag)!.get! as (this: unknown) => string | undefined;

/** A typed array's element type name ("Float32Array"), undefined for anything else. */
export function typedArrayName(v: unknown): string | undefined {
  return tagGetter.call(v);
}

/** A typed array's length (0 when detached or out of bounds). */
export function lengthOf(v: ArrayBufferView): number {
  return lengthGetter.call(v);
}

/** A typed array's buffer. */
export function bufferOf(v: ArrayBufferView): ArrayBufferLike {
  return bufferGetter.call(v);
}

/** Whether two typed arrays over one buffer share bytes, by their offsets and lengths. */
export function overlapping(a: ArrayBufferView, b: ArrayBufferView): boolean {
  const a0 = byteOffsetGetter.call(a), b0 = byteOffsetGetter.call(b);
  return a0 < b0 + byteLengthGetter.call(b) && b0 < a0 + byteLengthGetter.call(a);
}
