/**
 * Weights on the GPU: a 2-D weight in its GGUF bytes, anywhere in a buffer (an expert is a slice
 * of its stacked tensor), and the storage bindings a kernel reads it through. A binding starts at
 * a multiple of minStorageBufferOffsetAlignment and spans at most maxStorageBufferBindingSize
 * bytes, so a weight is bound in chunks of rows (an output head of 150k rows exceeds 128 MiB
 * on lavapipe), each with the byte offset of its first row inside the binding.
 */
import type { WeightMatrix } from "../backend.js";
import { GGMLType, rowBytes, typeName } from "../../formats/quant/types.js";
import { InvalidArgumentError, UnsupportedError } from "../../errors.js";
import type { GpuBinding, GpuDevice } from "./device.js";

export interface GpuWeight {
  readonly type: GGMLType;
  readonly rows: number;
  readonly cols: number;
  readonly buffer: GPUBuffer;
  /** byte offset of row 0 in `buffer` (even for F16 / BF16, a multiple of 4 for F32) */
  readonly byteOffset: number;
}

/** Uploads a weight's bytes into a new buffer. */
export function uploadWeight(dev: GpuDevice, w: WeightMatrix): GpuWeight {
  const bytes = w.rows * rowBytes(w.type, w.cols);
  if (w.data.byteLength < bytes) {
    throw new InvalidArgumentError(`a ${w.rows}x${w.cols} ${typeName(w.type)} weight needs ${bytes} bytes, has ${w.data.byteLength}`);
  }
  const buffer = dev.allocWith(w.data.subarray(0, bytes), `${typeName(w.type)} ${w.rows}x${w.cols}`);
  return { type: w.type, rows: w.rows, cols: w.cols, buffer, byteOffset: 0 };
}

/** Rows [r0, r1) of a weight, bound at `binding`; row r0 starts `base` bytes into it. */
export interface WeightChunk {
  readonly r0: number;
  readonly r1: number;
  readonly binding: GpuBinding;
  readonly base: number;
}

/** The chunks that bind every row of `w`. */
export function weightChunks(dev: GpuDevice, w: GpuWeight): WeightChunk[] {
  const rb = rowBytes(w.type, w.cols);
  const align = dev.limits.minStorageBufferOffsetAlignment;
  const elemAlign = w.type === GGMLType.F32 ? 4 : w.type === GGMLType.F16 || w.type === GGMLType.BF16 ? 2 : 1;
  if (w.byteOffset % elemAlign !== 0) {
    throw new InvalidArgumentError(`a ${typeName(w.type)} weight must start at a multiple of ${elemAlign} bytes, not ${w.byteOffset}`);
  }
  if (w.byteOffset + w.rows * rb > w.buffer.size) {
    throw new InvalidArgumentError(`a ${w.rows}x${w.cols} ${typeName(w.type)} weight at byte ${w.byteOffset} overruns its buffer of ${w.buffer.size} bytes`);
  }
  const rowsPer = Math.floor((dev.limits.maxStorageBufferBindingSize - align - 4) / rb);
  if (rowsPer < 1) throw new UnsupportedError(`a row of ${rb} bytes does not fit one storage binding (${dev.limits.maxStorageBufferBindingSize} bytes)`);
  const chunks: WeightChunk[] = [];
  for (let r0 = 0; r0 < w.rows; r0 += rowsPer) {
    const r1 = Math.min(w.rows, r0 + rowsPer);
    const start = w.byteOffset + r0 * rb;
    const offset = Math.floor(start / align) * align;
    const end = Math.min(w.buffer.size, Math.ceil((w.byteOffset + r1 * rb) / 4) * 4);
    chunks.push({ r0, r1, binding: { buffer: w.buffer, offset, size: end - offset }, base: start - offset });
  }
  return chunks;
}
