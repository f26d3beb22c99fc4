/**
 * Executes a TensorPlan recipe: reads the HF source tensors and produces the GGUF tensor's bytes.
 * All rearrangements move whole elements (2 or 4 bytes; MXFP4's 4-bit codes and exponent bytes)
 * and never touch values, so a converted tensor is bit-identical to what llama.cpp's converter
 * writes; the only arithmetic is the exact F16/BF16 → F32 widening of norms, biases and routers.
 */
import { ModelFormatError } from "../../errors.js";
import { GGMLType } from "../quant/types.js";
import { dtypeBytes, type SafetensorsDType } from "../safetensors/reader.js";
import type { TensorPlan } from "./tensor-names.js";

type Elements = Uint16Array | Uint32Array;

function view(bytes: Uint8Array, dtype: SafetensorsDType): Elements {
  if (dtypeBytes(dtype) === 1) throw new ModelFormatError(`${dtype} tensors convert only as MXFP4 blocks and scales`);
  const n = bytes.byteLength / dtypeBytes(dtype);
  // Fresh reads start at offset 0 of their own buffer, so the view is aligned; copy otherwise.
  const b = bytes.byteOffset % 4 === 0 ? bytes : bytes.slice();
  return dtypeBytes(dtype) === 4 ? new Uint32Array(b.buffer, b.byteOffset, n) : new Uint16Array(b.buffer, b.byteOffset, n);
}

function alloc(like: Elements, n: number): Elements {
  return like instanceof Uint32Array ? new Uint32Array(n) : new Uint16Array(n);
}

/**
 * llama.cpp LlamaModel.permute: `w.reshape(n_head, 2, rows/n_head/2, cols).swapaxes(1, 2)`.
 * Within each head, row j*half + i (j = which half of the rotate_half pair) moves to i*2 + j,
 * turning HF's "rotate halves" layout into GGUF's "rotate adjacent pairs" one.
 */
export function permuteQKRows<T extends Elements>(src: T, rows: number, cols: number, nHead: number): T {
  if (rows % (2 * nHead) !== 0) throw new ModelFormatError(`Q/K permutation: ${rows} rows do not split into ${nHead} heads of pairs`);
  const dst = alloc(src, src.length) as T;
  const headDim = rows / nHead;
  const half = headDim / 2;
  for (let h = 0; h < nHead; h++) {
    for (let j = 0; j < 2; j++) {
      for (let i = 0; i < half; i++) {
        const from = (h * headDim + j * half + i) * cols;
        const to = (h * headDim + i * 2 + j) * cols;
        dst.set(src.subarray(from, from + cols), to);
      }
    }
  }
  return dst;
}

/** dst[b][c][r] = src[b][r][colStart + c] for a batch of [rows, srcCols] matrices, c < nCols. */
function transposeBatched(src: Elements, batch: number, rows: number, srcCols: number, colStart: number, nCols: number): Elements {
  const dst = alloc(src, batch * rows * nCols);
  for (let b = 0; b < batch; b++) {
    const s = b * rows * srcCols;
    const d = b * rows * nCols;
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < nCols; c++) dst[d + c * rows + r] = src[s + r * srcCols + colStart + c];
    }
  }
  return dst;
}

/** Rows [rowStart, rowStart + nRows) of each [rows, cols] matrix of a batch. */
function sliceRowsBatched(src: Elements, batch: number, rows: number, cols: number, rowStart: number, nRows: number): Elements {
  const dst = alloc(src, batch * nRows * cols);
  for (let b = 0; b < batch; b++) {
    const from = (b * rows + rowStart) * cols;
    dst.set(src.subarray(from, from + nRows * cols), b * nRows * cols);
  }
  return dst;
}

/**
 * GPT-OSS's interleaved gate/up: the elements of parity `half` along the last dim of each of
 * `batch * rows` rows of `2 * n` ([batch, rows, 2n] → [batch, rows, n]), or with `transposed`
 * each matrix transposed as well (→ [batch, n, rows]).
 */
function interleavedHalf(src: Elements, batch: number, rows: number, n: number, half: 0 | 1, transposed: boolean): Elements {
  const dst = alloc(src, batch * rows * n);
  for (let b = 0; b < batch; b++) {
    for (let r = 0; r < rows; r++) {
      const s = (b * rows + r) * 2 * n + half;
      for (let j = 0; j < n; j++) dst[transposed ? (b * n + j) * rows + r : (b * rows + r) * n + j] = src[s + 2 * j];
    }
  }
  return dst;
}

/**
 * MXFP4 blocks and scales in transformers' layout (GPT-OSS: blocks [..., rows, nb, 16] of two
 * 4-bit codes per byte, element 2i in the low nibble and 2i+1 in the high; scales [..., rows, nb]
 * of E8M0 exponents) → GGUF MXFP4 rows of 17-byte blocks (the exponent, then byte j holding element
 * j low and element j + 16 high), as llama.cpp's GptOssModel.repack_mxfp4. With `rowParity` only
 * the rows of that parity (the interleaved gate/up), else all.
 */
function repackMxfp4(blocks: Uint8Array, scales: Uint8Array, rows: number, nb: number, rowParity: 0 | 1 | undefined): Uint8Array {
  const outRows = rowParity === undefined ? rows : rows / 2;
  const out = new Uint8Array(outRows * nb * 17);
  const code = (b: number, k: number): number => (k & 1 ? blocks[b + (k >> 1)] >> 4 : blocks[b + (k >> 1)] & 0x0f);
  for (let r = 0; r < outRows; r++) {
    const src = rowParity === undefined ? r : 2 * r + rowParity;
    for (let q = 0; q < nb; q++) {
      const o = (r * nb + q) * 17, b = (src * nb + q) * 16;
      out[o] = scales[src * nb + q];
      for (let j = 0; j < 16; j++) out[o + 1 + j] = code(b, j) | (code(b, j + 16) << 4);
    }
  }
  return out;
}

function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

/** Widens F16 / BF16 elements to F32 (exact). */
function widenToF32(src: Uint16Array, dtype: SafetensorsDType): Float32Array {
  const out = new Float32Array(src.length);
  if (dtype === "BF16") {
    const bits = new Uint32Array(out.buffer);
    for (let i = 0; i < src.length; i++) bits[i] = src[i] << 16;
  } else {
    for (let i = 0; i < src.length; i++) out[i] = halfToFloat(src[i]);
  }
  return out;
}

function sourceShape2D(shape: readonly number[]): [number, number] {
  if (shape.length === 1) return [shape[0], 1];
  if (shape.length === 2) return [shape[0], shape[1]];
  throw new ModelFormatError(`expected a 1-D or 2-D tensor, found shape [${shape.join(", ")}]`);
}

/**
 * Produces the bytes of a planned GGUF tensor. `read(name)` returns an HF tensor's raw bytes;
 * `shapeOf(name)` its torch shape.
 */
export function materialize(plan: TensorPlan, read: (hfName: string) => Uint8Array, shapeOf: (hfName: string) => readonly number[]): Uint8Array {
  const dtype = plan.sourceDtype;
  const r = plan.recipe;
  let out: Elements;
  switch (r.kind) {
    case "copy":
      out = view(read(plan.sources[0]), dtype);
      break;
    case "permute-qk": {
      const [rows, cols] = sourceShape2D(shapeOf(plan.sources[0]));
      out = permuteQKRows(view(read(plan.sources[0]), dtype), rows, cols, r.nHead);
      break;
    }
    case "stack": {
      const parts = plan.sources.map((s) => view(read(s), dtype));
      out = alloc(parts[0], parts.reduce((a, p) => a + p.length, 0));
      let at = 0;
      for (const p of parts) { out.set(p, at); at += p.length; }
      break;
    }
    case "packed-gate-up": {
      const [E, a, b] = shapeOf(plan.sources[0]);
      const src = view(read(plan.sources[0]), dtype);
      if (!r.transposed) {
        const ff = a / 2;
        out = sliceRowsBatched(src, E, a, b, r.half * ff, ff); // [E, 2ff, H] → [E, ff, H]
      } else {
        const ff = b / 2;
        out = transposeBatched(src, E, a, b, r.half * ff, ff); // [E, H, 2ff] → [E, ff, H]
      }
      break;
    }
    case "packed-down": {
      const [E, a, b] = shapeOf(plan.sources[0]);
      const src = view(read(plan.sources[0]), dtype);
      out = r.transposed ? transposeBatched(src, E, a, b, 0, b) : src; // [E, ff, H] → [E, H, ff]
      break;
    }
    case "interleaved-gate-up": {
      // [E, 2ff] biases, or [E, hidden, 2ff] weights taken transposed → [E, ff] / [E, ff, hidden]
      const shape = shapeOf(plan.sources[0]);
      const E = shape[0], rows = shape.length === 3 ? shape[1] : 1, n = shape[shape.length - 1] / 2;
      out = interleavedHalf(view(read(plan.sources[0]), dtype), E, rows, n, r.half, r.transposed);
      break;
    }
    case "mxfp4": {
      const [E, rows, nb] = shapeOf(plan.sources[0]);
      const blocks = read(plan.sources[0]), scales = read(plan.sources[1]);
      const scaleShape = shapeOf(plan.sources[1]);
      if (scaleShape.length !== 3 || scaleShape[0] !== E || scaleShape[1] !== rows || scaleShape[2] !== nb) {
        throw new ModelFormatError(`tensor ${plan.sources[1]}: expected torch shape [${E}, ${rows}, ${nb}] (the scales of ${plan.sources[0]}), found [${scaleShape.join(", ")}]`);
      }
      const per = (r.rowParity === undefined ? rows : rows / 2) * nb * 17;
      const bytes = new Uint8Array(E * per);
      for (let e = 0; e < E; e++) {
        bytes.set(repackMxfp4(blocks.subarray(e * rows * nb * 16, (e + 1) * rows * nb * 16), scales.subarray(e * rows * nb, (e + 1) * rows * nb), rows, nb, r.rowParity), e * per);
      }
      if (bytes.byteLength !== plan.nbytes) throw new ModelFormatError(`tensor ${plan.name}: produced ${bytes.byteLength} bytes, expected ${plan.nbytes}`);
      return bytes;
    }
    case "kv-b-k":
    case "kv-b-v": {
      const [, kvLora] = shapeOf(plan.sources[0]);
      const src = view(read(plan.sources[0]), dtype);
      const per = r.nope + r.v;
      out = r.kind === "kv-b-k"
        // [n_head, nope+v, kv_lora] rows 0..nope, transposed → [n_head, kv_lora, nope]
        ? transposeBatched(sliceRowsBatched(src, r.nHead, per, kvLora, 0, r.nope), r.nHead, r.nope, kvLora, 0, kvLora)
        // rows nope..nope+v → [n_head, v, kv_lora]
        : sliceRowsBatched(src, r.nHead, per, kvLora, r.nope, r.v);
      break;
    }
  }
  const result = plan.type === GGMLType.F32 && dtype !== "F32" ? widenToF32(out as Uint16Array, dtype) : out;
  const bytes = new Uint8Array(result.buffer, result.byteOffset, result.byteLength);
  if (bytes.byteLength !== plan.nbytes) throw new ModelFormatError(`tensor ${plan.name}: produced ${bytes.byteLength} bytes, expected ${plan.nbytes}`);
  return bytes;
}
