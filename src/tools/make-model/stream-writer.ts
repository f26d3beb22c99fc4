/**
 * GGUF v3 writer for tensors that are generated while the file is written: the header is built
 * from types and dims alone, then each tensor's bytes are produced, written and dropped. A
 * Mixtral-8x7B-shaped file (tens of GB) therefore needs one tensor in memory at a time, which a
 * writer taking every tensor's bytes up front cannot offer.
 */
import { closeSync, openSync, writeSync } from "node:fs";
import { FileAccessError, InvalidArgumentError } from "../../errors.js";
import { GGUFValueType, type GGUFMetadataValue } from "../../formats/model-file.js";
import { rowBytes, type GGMLType } from "../../formats/quant/types.js";

export interface LazyTensor {
  readonly name: string;
  readonly type: GGMLType;
  /** GGUF order: dims[0] is contiguous. */
  readonly dims: readonly number[];
  /** Called once, when the tensor is written; must return exactly tensorBytes(type, dims) bytes. */
  readonly generate: () => Uint8Array;
}

export function tensorBytes(type: GGMLType, dims: readonly number[]): number {
  return rowBytes(type, dims[0]!) * dims.slice(1).reduce((a, b) => a * b, 1);
}

const GGUF_VERSION = 3;
const enc = new TextEncoder();

/** Little-endian byte sink that grows as needed. */
class ByteSink {
  private buf = new Uint8Array(1 << 16);
  private view = new DataView(this.buf.buffer);
  length = 0;

  private reserve(n: number): void {
    if (this.length + n <= this.buf.length) return;
    let cap = this.buf.length * 2;
    while (cap < this.length + n) cap *= 2;
    const next = new Uint8Array(cap);
    next.set(this.buf.subarray(0, this.length));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }
  u8(v: number): void { this.reserve(1); this.view.setUint8(this.length, v); this.length += 1; }
  i8(v: number): void { this.reserve(1); this.view.setInt8(this.length, v); this.length += 1; }
  u16(v: number): void { this.reserve(2); this.view.setUint16(this.length, v, true); this.length += 2; }
  i16(v: number): void { this.reserve(2); this.view.setInt16(this.length, v, true); this.length += 2; }
  u32(v: number): void { this.reserve(4); this.view.setUint32(this.length, v, true); this.length += 4; }
  i32(v: number): void { this.reserve(4); this.view.setInt32(this.length, v, true); this.length += 4; }
  f32(v: number): void { this.reserve(4); this.view.setFloat32(this.length, v, true); this.length += 4; }
  f64(v: number): void { this.reserve(8); this.view.setFloat64(this.length, v, true); this.length += 8; }
  u64(v: bigint | number): void { this.reserve(8); this.view.setBigUint64(this.length, BigInt(v), true); this.length += 8; }
  i64(v: bigint | number): void { this.reserve(8); this.view.setBigInt64(this.length, BigInt(v), true); this.length += 8; }
  str(s: string): void {
    const b = enc.encode(s);
    this.u64(b.length);
    this.reserve(b.length);
    this.buf.set(b, this.length);
    this.length += b.length;
  }
  zeros(n: number): void { this.reserve(n); this.buf.fill(0, this.length, this.length + n); this.length += n; }
  bytes(): Uint8Array { return this.buf.subarray(0, this.length); }
}

function writeScalar(sink: ByteSink, type: GGUFValueType, v: unknown, key: string): void {
  switch (type) {
    case GGUFValueType.UINT8: sink.u8(Number(v)); break;
    case GGUFValueType.INT8: sink.i8(Number(v)); break;
    case GGUFValueType.UINT16: sink.u16(Number(v)); break;
    case GGUFValueType.INT16: sink.i16(Number(v)); break;
    case GGUFValueType.UINT32: sink.u32(Number(v)); break;
    case GGUFValueType.INT32: sink.i32(Number(v)); break;
    case GGUFValueType.FLOAT32: sink.f32(Number(v)); break;
    case GGUFValueType.FLOAT64: sink.f64(Number(v)); break;
    case GGUFValueType.BOOL: sink.u8(v ? 1 : 0); break;
    case GGUFValueType.STRING: sink.str(String(v)); break;
    case GGUFValueType.UINT64: sink.u64(v as bigint | number); break;
    case GGUFValueType.INT64: sink.i64(v as bigint | number); break;
    default: throw new InvalidArgumentError(`GGUF metadata ${key}: cannot write value type ${type}`);
  }
}

/** Header bytes (magic through tensor infos and padding) for the given metadata and tensors. */
export function encodeHeader(metadata: ReadonlyArray<[string, GGUFMetadataValue]>, tensors: readonly LazyTensor[], alignment: number): { header: Uint8Array; offsets: number[] } {
  const sink = new ByteSink();
  sink.u32(0x46554747); // "GGUF"
  sink.u32(GGUF_VERSION);
  sink.u64(tensors.length);
  sink.u64(metadata.length);
  for (const [key, value] of metadata) {
    sink.str(key);
    sink.u32(value.type);
    if (value.type === GGUFValueType.ARRAY) {
      sink.u32(value.itemType);
      sink.u64(value.value.length);
      for (let i = 0; i < value.value.length; i++) writeScalar(sink, value.itemType, value.value[i], key);
    } else {
      writeScalar(sink, value.type, value.value, key);
    }
  }
  const offsets: number[] = [];
  let offset = 0;
  for (const t of tensors) {
    sink.str(t.name);
    sink.u32(t.dims.length);
    for (const d of t.dims) sink.u64(d);
    sink.u32(t.type);
    sink.u64(offset);
    offsets.push(offset);
    offset = alignUp(offset + tensorBytes(t.type, t.dims), alignment);
  }
  sink.zeros(alignUp(sink.length, alignment) - sink.length);
  return { header: sink.bytes(), offsets };
}

function alignUp(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

/**
 * Writes a GGUF file, generating each tensor's bytes just before it is written.
 * `onTensor(bytesDone, bytesTotal)` reports progress after every tensor. Returns the file size.
 */
export function writeLazyGGUF(
  path: string,
  opts: { metadata: ReadonlyArray<[string, GGUFMetadataValue]>; tensors: readonly LazyTensor[]; alignment?: number; onTensor?: (done: number, total: number) => void },
): number {
  const alignment = opts.alignment ?? 32;
  const metadata = opts.metadata.some(([k]) => k === "general.alignment") || alignment === 32
    ? opts.metadata
    : [...opts.metadata, ["general.alignment", { type: GGUFValueType.UINT32, value: alignment }] as [string, GGUFMetadataValue]];
  const { header } = encodeHeader(metadata, opts.tensors, alignment);
  let fd: number;
  try {
    fd = openSync(path, "w");
  } catch (e) {
    throw new FileAccessError(`cannot create ${path}: ${(e as Error).message}`);
  }
  const total = opts.tensors.reduce((a, t) => a + tensorBytes(t.type, t.dims), 0);
  let pos = 0;
  const put = (b: Uint8Array): void => {
    let done = 0;
    while (done < b.length) done += writeSync(fd, b, done, Math.min(b.length - done, 1 << 30), pos + done);
    pos += b.length;
  };
  try {
    put(header);
    let done = 0;
    for (const t of opts.tensors) {
      const data = t.generate();
      const expected = tensorBytes(t.type, t.dims);
      if (data.length !== expected) throw new InvalidArgumentError(`tensor ${t.name}: generated ${data.length} bytes, expected ${expected}`);
      put(data);
      const pad = alignUp(pos, alignment) - pos;
      if (pad > 0) put(new Uint8Array(pad));
      done += data.length;
      opts.onTensor?.(done, total);
    }
  } finally {
    closeSync(fd);
  }
  return pos;
}
