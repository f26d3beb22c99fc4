/**
 * GGUF v3 writer producing files llama.cpp loads: header (metadata of every value type, tensor
 * infos), padding to the alignment, then each tensor's data padded to the alignment, in the order
 * given (as gguf.cpp writes them: offsets are contiguous after padding).
 * writeGGUF streams tensor data to the file; serializeGGUF builds the file in memory for tests.
 */
import { closeSync, openSync, renameSync, rmSync, writeSync } from "node:fs";
import { FileAccessError, InvalidArgumentError } from "../../errors.js";
import { GGUFValueType, type GGUFMetadataValue } from "../model-file.js";
import { rowBytes, typeInfo, typeName, type GGMLType } from "../quant/types.js";
import { GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_MAX_DIMS, valueTypeName } from "./parse.js";

export interface GGUFTensorInput {
  readonly name: string;
  readonly type: GGMLType;
  /** GGUF order: dims[0] is the contiguous one. */
  readonly dims: readonly number[];
  /**
   * The tensor's bytes, or a function producing them when the tensor is written: writeGGUF then
   * holds one tensor in memory at a time (multi-GB generated or converted models).
   */
  readonly data: Uint8Array | (() => Uint8Array);
}

export interface GGUFWriteInput {
  readonly metadata: Iterable<[string, GGUFMetadataValue]>;
  readonly tensors: readonly GGUFTensorInput[];
  /**
   * Data alignment; default: the metadata's general.alignment, else 32. Written as
   * general.alignment (UINT32) only when it is not 32 and the metadata lacks the key.
   */
  readonly alignment?: number;
  /** Called after each tensor is written: data bytes written so far, and in all. */
  readonly onTensor?: (done: number, total: number) => void;
}

/** Bytes of a tensor of this type and (GGUF-order) dims. */
export function tensorBytes(type: GGMLType, dims: readonly number[]): number {
  return rowBytes(type, dims[0]!) * dims.slice(1).reduce((a, b) => a * b, 1);
}

/** A tensor's bytes, produced now if it is lazy, checked against its type and dims. */
function tensorData(t: GGUFTensorInput): Uint8Array {
  const data = typeof t.data === "function" ? t.data() : t.data;
  const nbytes = tensorBytes(t.type, t.dims);
  if (data.length !== nbytes) {
    throw new InvalidArgumentError(`tensor ${t.name}: ${typeName(t.type)} [${t.dims.join(", ")}] needs ${nbytes} bytes, data has ${data.length}`);
  }
  return data;
}

/** Growable little-endian byte sink for the header. */
class ByteSink {
  buf = new Uint8Array(1 << 16);
  view = new DataView(this.buf.buffer);
  len = 0;

  private ensure(n: number): void {
    if (this.len + n <= this.buf.length) return;
    let cap = this.buf.length * 2;
    while (cap < this.len + n) cap *= 2;
    const nb = new Uint8Array(cap);
    nb.set(this.buf.subarray(0, this.len));
    this.buf = nb;
    this.view = new DataView(nb.buffer);
  }

  private reserve(n: number): number {
    this.ensure(n);
    const at = this.len;
    this.len += n;
    return at;
  }

  u8(v: number): void { const at = this.reserve(1); this.view.setUint8(at, v); }
  i8(v: number): void { const at = this.reserve(1); this.view.setInt8(at, v); }
  u16(v: number): void { const at = this.reserve(2); this.view.setUint16(at, v, true); }
  i16(v: number): void { const at = this.reserve(2); this.view.setInt16(at, v, true); }
  u32(v: number): void { const at = this.reserve(4); this.view.setUint32(at, v, true); }
  i32(v: number): void { const at = this.reserve(4); this.view.setInt32(at, v, true); }
  f32(v: number): void { const at = this.reserve(4); this.view.setFloat32(at, v, true); }
  f64(v: number): void { const at = this.reserve(8); this.view.setFloat64(at, v, true); }
  u64(v: bigint | number): void { const at = this.reserve(8); this.view.setBigUint64(at, BigInt(v), true); }
  i64(v: bigint | number): void { const at = this.reserve(8); this.view.setBigInt64(at, BigInt(v), true); }

  bytes(b: Uint8Array): void { const at = this.reserve(b.length); this.buf.set(b, at); }

  /** u64 length + UTF-8 bytes, encoded in place (vocabularies hold 100k+ strings). */
  string(s: string): void {
    this.ensure(8 + 3 * s.length); // UTF-8 needs at most 3 bytes per UTF-16 unit
    const { written } = encoder.encodeInto(s, this.buf.subarray(this.len + 8));
    this.view.setUint32(this.len, written, true);
    this.view.setUint32(this.len + 4, 0, true);
    this.len += 8 + written;
  }

  padTo(alignment: number): void {
    const pad = (alignment - (this.len % alignment)) % alignment;
    this.reserve(pad); // new capacity is zero-filled; reused capacity was never written
  }

  result(): Uint8Array { return this.buf.subarray(0, this.len); }
}

const encoder = new TextEncoder();

const INT_RANGE: Partial<Record<GGUFValueType, [number, number]>> = {
  [GGUFValueType.UINT8]: [0, 0xff], [GGUFValueType.INT8]: [-0x80, 0x7f],
  [GGUFValueType.UINT16]: [0, 0xffff], [GGUFValueType.INT16]: [-0x8000, 0x7fff],
  [GGUFValueType.UINT32]: [0, 0xffffffff], [GGUFValueType.INT32]: [-0x80000000, 0x7fffffff],
};

function badValue(key: string, type: GGUFValueType, v: unknown): InvalidArgumentError {
  return new InvalidArgumentError(`metadata key ${key}: value ${String(v)} is not a valid ${valueTypeName(type)}`);
}

// No closures in here: it runs once per vocabulary entry.
function writeScalar(s: ByteSink, type: GGUFValueType, v: unknown, key: string): void {
  const range = INT_RANGE[type];
  if (range && (typeof v !== "number" || !Number.isInteger(v) || v < range[0] || v > range[1])) throw badValue(key, type, v);
  switch (type) {
    case GGUFValueType.UINT8: s.u8(v as number); break;
    case GGUFValueType.INT8: s.i8(v as number); break;
    case GGUFValueType.UINT16: s.u16(v as number); break;
    case GGUFValueType.INT16: s.i16(v as number); break;
    case GGUFValueType.UINT32: s.u32(v as number); break;
    case GGUFValueType.INT32: s.i32(v as number); break;
    case GGUFValueType.FLOAT32: if (typeof v !== "number") throw badValue(key, type, v); s.f32(v); break;
    case GGUFValueType.FLOAT64: if (typeof v !== "number") throw badValue(key, type, v); s.f64(v); break;
    case GGUFValueType.BOOL: if (typeof v !== "boolean") throw badValue(key, type, v); s.u8(v ? 1 : 0); break;
    case GGUFValueType.STRING: if (typeof v !== "string") throw badValue(key, type, v); s.string(v); break;
    case GGUFValueType.UINT64:
    case GGUFValueType.INT64: {
      if (typeof v !== "bigint" && !(typeof v === "number" && Number.isSafeInteger(v))) throw badValue(key, type, v);
      const b = BigInt(v as bigint | number);
      if (type === GGUFValueType.UINT64 ? b < 0n || b >= 1n << 64n : b < -(1n << 63n) || b >= 1n << 63n) throw badValue(key, type, v);
      if (type === GGUFValueType.UINT64) s.u64(b); else s.i64(b);
      break;
    }
    default:
      throw new InvalidArgumentError(`metadata key ${key}: unknown value type ${type}`);
  }
}

function writeValue(s: ByteSink, key: string, v: GGUFMetadataValue): void {
  s.u32(v.type);
  if (v.type !== GGUFValueType.ARRAY) {
    writeScalar(s, v.type, v.value, key);
    return;
  }
  if (v.itemType === GGUFValueType.ARRAY) throw new InvalidArgumentError(`metadata key ${key}: arrays of arrays cannot be written (llama.cpp rejects them)`);
  s.u32(v.itemType);
  const items = v.value;
  s.u64(items.length);
  for (let i = 0; i < items.length; i++) writeScalar(s, v.itemType, items[i], key);
}

function checkAlignment(a: number, where: string): number {
  if (!Number.isSafeInteger(a) || a <= 0 || (a & (a - 1)) !== 0 || a > 2 ** 30) {
    throw new InvalidArgumentError(`${where}: alignment ${a} must be a power of two`);
  }
  return a;
}

function alignUp(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

interface Layout {
  header: Uint8Array; // includes the padding up to the data section
  alignment: number;
  /** Per tensor: padded size in the data section. */
  padded: number[];
  dataBytes: number;
}

/** Validates the input and encodes the header; tensor data is not touched. */
function layout(input: GGUFWriteInput): Layout {
  const entries: [string, GGUFMetadataValue][] = [];
  const keys = new Set<string>();
  for (const [k, v] of input.metadata) {
    if (keys.has(k)) throw new InvalidArgumentError(`metadata key ${k} given twice`);
    keys.add(k);
    entries.push([k, v]);
  }
  const mdAlign = entries.find(([k]) => k === "general.alignment")?.[1];
  let alignment = input.alignment ?? GGUF_DEFAULT_ALIGNMENT;
  if (mdAlign) {
    if (mdAlign.type !== GGUFValueType.UINT32) throw new InvalidArgumentError(`metadata key general.alignment has type ${valueTypeName(mdAlign)}, expected UINT32`);
    const a = mdAlign.value;
    if (input.alignment !== undefined && input.alignment !== a) {
      throw new InvalidArgumentError(`alignment ${input.alignment} disagrees with metadata general.alignment ${a}`);
    }
    alignment = a;
  } else if (alignment !== GGUF_DEFAULT_ALIGNMENT) {
    entries.push(["general.alignment", { type: GGUFValueType.UINT32, value: alignment }]);
  }
  checkAlignment(alignment, "writeGGUF");

  const s = new ByteSink();
  s.u32(GGUF_MAGIC);
  s.u32(3);
  s.u64(input.tensors.length);
  s.u64(entries.length);
  for (const [k, v] of entries) {
    s.string(k);
    writeValue(s, k, v);
  }
  const names = new Set<string>();
  const padded: number[] = [];
  let offset = 0;
  for (const t of input.tensors) {
    const what = `tensor ${t.name}`;
    if (names.has(t.name)) throw new InvalidArgumentError(`${what} given twice`);
    names.add(t.name);
    if (t.dims.length < 1 || t.dims.length > GGUF_MAX_DIMS) throw new InvalidArgumentError(`${what}: ${t.dims.length} dims, must be 1..${GGUF_MAX_DIMS}`);
    for (const d of t.dims) if (!Number.isSafeInteger(d) || d < 1) throw new InvalidArgumentError(`${what}: dims [${t.dims.join(", ")}] must be positive integers`);
    typeInfo(t.type);
    const nbytes = tensorBytes(t.type, t.dims);
    if (typeof t.data !== "function" && t.data.length !== nbytes) {
      throw new InvalidArgumentError(`${what}: ${typeName(t.type)} [${t.dims.join(", ")}] needs ${nbytes} bytes, data has ${t.data.length}`);
    }
    s.string(t.name);
    s.u32(t.dims.length);
    for (const d of t.dims) s.u64(d);
    s.u32(t.type);
    s.u64(offset);
    const p = alignUp(nbytes, alignment);
    padded.push(p);
    offset += p;
  }
  s.padTo(alignment);
  return { header: s.result(), alignment, padded, dataBytes: offset };
}

/** Encodes a whole GGUF v3 file in memory (small files: tests, fixtures). */
export function serializeGGUF(input: GGUFWriteInput): Uint8Array {
  const { header, padded, dataBytes } = layout(input);
  const out = new Uint8Array(header.length + dataBytes);
  out.set(header);
  let at = header.length;
  input.tensors.forEach((t, i) => {
    out.set(tensorData(t), at);
    at += padded[i]!;
  });
  return out;
}

const ZEROS = new Uint8Array(4096);

/**
 * Writes a GGUF v3 file, streaming each tensor's bytes (no whole-file buffer; lazy tensors are
 * produced one at a time). Writes to a temporary file beside `path` and renames it, so a failed
 * write never leaves a truncated model. Returns the file size.
 */
export function writeGGUF(path: string, input: GGUFWriteInput): number {
  const { header, padded, dataBytes } = layout(input);
  const tmp = `${path}.tmp-${process.pid}`;
  let fd: number;
  try {
    fd = openSync(tmp, "w");
  } catch (e) {
    throw new FileAccessError(`cannot create ${path}: ${(e as Error).message}`);
  }
  const total = input.tensors.reduce((a, t) => a + tensorBytes(t.type, t.dims), 0);
  let ok = false, done = 0;
  try {
    writeAll(fd, header);
    input.tensors.forEach((t, i) => {
      const data = tensorData(t);
      writeAll(fd, data);
      done += data.length;
      let pad = padded[i]! - data.length;
      while (pad > 0) {
        const n = Math.min(pad, ZEROS.length);
        writeAll(fd, ZEROS.subarray(0, n));
        pad -= n;
      }
      input.onTensor?.(done, total);
    });
    ok = true;
  } finally {
    closeSync(fd);
    if (!ok) rmSync(tmp, { force: true });
  }
  renameSync(tmp, path);
  return header.length + dataBytes;
}

function writeAll(fd: number, b: Uint8Array): void {
  const CHUNK = 1 << 30;
  let done = 0;
  while (done < b.length) done += writeSync(fd, b, done, Math.min(CHUNK, b.length - done));
}
