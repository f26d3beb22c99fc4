/**
 * GGML tensor types: ids as stored in GGUF tensor infos, and block geometry.
 * A row of `n` elements of type T occupies (n / blockSize) * typeSize bytes; n must be a multiple
 * of blockSize.
 */
import { UnsupportedError } from "../../errors.js";

export enum GGMLType {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  I8 = 24,
  I16 = 25,
  I32 = 26,
  I64 = 27,
  F64 = 28,
  BF16 = 30,
  MXFP4 = 39,
  /**
   * moira's own layout, unknown to llama.cpp: Q4_K re-laid in panels of 16 rows, which the native
   * backend computes faster (native/kernels.h). Made at load (Backend.relayout), or once by `moira
   * repack` into a file of its own.
   */
  Q4_K_R16 = 240,
}

export interface TypeInfo {
  readonly name: string;
  /** elements per block */
  readonly blockSize: number;
  /** bytes per block */
  readonly typeSize: number;
}

/** Geometry of every type whose size moira knows (it can skip or size these even where it cannot compute with them). */
export const TYPE_INFO: ReadonlyMap<GGMLType, TypeInfo> = new Map<GGMLType, TypeInfo>([
  [GGMLType.F32, { name: "F32", blockSize: 1, typeSize: 4 }],
  [GGMLType.F16, { name: "F16", blockSize: 1, typeSize: 2 }],
  [GGMLType.Q4_0, { name: "Q4_0", blockSize: 32, typeSize: 18 }],
  [GGMLType.Q4_1, { name: "Q4_1", blockSize: 32, typeSize: 20 }],
  [GGMLType.Q5_0, { name: "Q5_0", blockSize: 32, typeSize: 22 }],
  [GGMLType.Q5_1, { name: "Q5_1", blockSize: 32, typeSize: 24 }],
  [GGMLType.Q8_0, { name: "Q8_0", blockSize: 32, typeSize: 34 }],
  [GGMLType.Q8_1, { name: "Q8_1", blockSize: 32, typeSize: 36 }],
  [GGMLType.Q2_K, { name: "Q2_K", blockSize: 256, typeSize: 84 }],
  [GGMLType.Q3_K, { name: "Q3_K", blockSize: 256, typeSize: 110 }],
  [GGMLType.Q4_K, { name: "Q4_K", blockSize: 256, typeSize: 144 }],
  [GGMLType.Q5_K, { name: "Q5_K", blockSize: 256, typeSize: 176 }],
  [GGMLType.Q6_K, { name: "Q6_K", blockSize: 256, typeSize: 210 }],
  [GGMLType.Q8_K, { name: "Q8_K", blockSize: 256, typeSize: 292 }],
  [GGMLType.I8, { name: "I8", blockSize: 1, typeSize: 1 }],
  [GGMLType.I16, { name: "I16", blockSize: 1, typeSize: 2 }],
  [GGMLType.I32, { name: "I32", blockSize: 1, typeSize: 4 }],
  [GGMLType.I64, { name: "I64", blockSize: 1, typeSize: 8 }],
  [GGMLType.F64, { name: "F64", blockSize: 1, typeSize: 8 }],
  [GGMLType.BF16, { name: "BF16", blockSize: 1, typeSize: 2 }],
  [GGMLType.MXFP4, { name: "MXFP4", blockSize: 32, typeSize: 17 }],
  // 16 rows x 256 elements in 2304 bytes: 144 per row, as Q4_K (row ranges at multiples of 16 only)
  [GGMLType.Q4_K_R16, { name: "Q4_K_R16", blockSize: 256, typeSize: 144 }],
]);

/** Types every backend computes with (dequantize); Q2_K / Q3_K are dequantize-only (no quantize). */
export const COMPUTE_TYPES: readonly GGMLType[] = [
  GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.Q8_0, GGMLType.Q4_0,
  GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K, GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.MXFP4,
];

/** Types a model file may hold that only some backends compute (Backend.extraTypes). */
export const BACKEND_TYPES: readonly GGMLType[] = [GGMLType.Q4_K_R16];

/**
 * The metadata key and value `moira repack` writes beside Q4_K_R16 tensors: a file without them, or
 * with another value, holds type id 240 in a layout this moira does not know (ModelBase refuses it).
 */
export const RELAID_LAYOUT_KEY = "moira.relaid_layout";
export const RELAID_LAYOUT = "Q4_K_R16/2: 16-row panels, Q4_K's packed scales";

export function typeInfo(type: GGMLType): TypeInfo {
  const info = TYPE_INFO.get(type);
  if (!info) throw new UnsupportedError(`GGML type id ${type} is unknown to moira`);
  return info;
}

export function typeName(type: GGMLType): string {
  return TYPE_INFO.get(type)?.name ?? `type#${type}`;
}

export function typeFromName(name: string): GGMLType {
  const up = name.toUpperCase();
  for (const [t, info] of TYPE_INFO) if (info.name === up) return t;
  throw new UnsupportedError(`unknown tensor type "${name}"; known: ${[...TYPE_INFO.values()].map((i) => i.name).join(", ")}`);
}

/** Bytes of one row of `ncols` elements. Throws if ncols is not a whole number of blocks. */
export function rowBytes(type: GGMLType, ncols: number): number {
  const { blockSize, typeSize, name } = typeInfo(type);
  if (ncols % blockSize !== 0) {
    throw new UnsupportedError(`a row of ${ncols} elements is not a whole number of ${name} blocks (${blockSize})`);
  }
  return (ncols / blockSize) * typeSize;
}
