/**
 * GGUF header parser (versions 2 and 3, little-endian), as llama.cpp's gguf.cpp writes them:
 *
 *   magic "GGUF" | version u32 | n_tensors u64 | n_kv u64
 *   n_kv × (key string | value type u32 | value)         string = u64 length + UTF-8 bytes
 *   n_tensors × (name string | n_dims u32 | dims u64[n_dims] | ggml type u32 | offset u64)
 *   padding to `general.alignment` (default 32) | tensor data (offsets relative to here)
 *
 * Only the header is read; every count and length is checked against the bytes the file can still
 * hold before anything is allocated, so a corrupt or hostile file fails with a ModelFormatError
 * (or UnsupportedError for a tensor type moira does not know) naming the field, never with a
 * RangeError or an out-of-memory. Bytes in, no I/O: files on disk (reader.ts) and in memory
 * (memory.ts) are parsed here.
 */
import { ModelFormatError, UnsupportedError } from "../../errors.js";
import { GGUFValueType, type GGUFMetadataValue, type TensorMeta } from "../model-file.js";
import { TYPE_INFO, type GGMLType } from "../quant/types.js";

export const GGUF_MAGIC = 0x46554747; // "GGUF" read as little-endian u32
export const GGUF_DEFAULT_ALIGNMENT = 32;
/** ggml's GGML_MAX_DIMS. */
export const GGUF_MAX_DIMS = 4;

export interface GGUFFile {
  readonly path: string;
  readonly version: number;
  readonly metadata: Map<string, GGUFMetadataValue>;
  /** In file order; `file.offset` is absolute. */
  readonly tensors: Map<string, TensorMeta>;
  readonly alignment: number;
  /** Absolute offset of the tensor data section. */
  readonly dataOffset: number;
  readonly fileSize: number;
}

/** Byte size of each scalar value type; strings and arrays are variable. */
const SCALAR_SIZE: Partial<Record<GGUFValueType, number>> = {
  [GGUFValueType.UINT8]: 1, [GGUFValueType.INT8]: 1, [GGUFValueType.BOOL]: 1,
  [GGUFValueType.UINT16]: 2, [GGUFValueType.INT16]: 2,
  [GGUFValueType.UINT32]: 4, [GGUFValueType.INT32]: 4, [GGUFValueType.FLOAT32]: 4,
  [GGUFValueType.UINT64]: 8, [GGUFValueType.INT64]: 8, [GGUFValueType.FLOAT64]: 8,
};

/** Name of a value type for messages: "UINT32", "ARRAY[STRING]". */
export function valueTypeName(v: GGUFMetadataValue | GGUFValueType): string {
  if (typeof v === "number") return GGUFValueType[v] ?? `type#${v}`;
  return v.type === GGUFValueType.ARRAY ? `ARRAY[${valueTypeName(v.itemType)}]` : valueTypeName(v.type);
}

const MIN_KV_BYTES = 8 + 4 + 1; // empty key, type, one-byte value
const MIN_TENSOR_INFO_BYTES = 8 + 4 + 8 + 4 + 8; // empty name, n_dims, one dim, type, offset
const TWO_32 = 2 ** 32;
// ignoreBOM: a token may be exactly U+FEFF (llama vocab has one); the default decoder would drop it
const utf8 = new TextDecoder("utf-8", { ignoreBOM: true });

/**
 * Reads the header from a buffer that may be a prefix of the file; `grow(minLength)` (when given)
 * returns a longer prefix of at least minLength bytes.
 */
class HeaderCursor {
  buf: Uint8Array;
  view: DataView;
  pos = 0;

  constructor(
    buf: Uint8Array, readonly fileSize: number, readonly path: string,
    private readonly grow?: (minLength: number) => Uint8Array,
  ) {
    this.buf = buf;
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }

  /** Bytes the file holds from the cursor on. */
  remaining(): number {
    return this.fileSize - this.pos;
  }

  need(n: number, what: string): void {
    const end = this.pos + n;
    if (end <= this.buf.length) return;
    if (end > this.fileSize) {
      throw new ModelFormatError(`${this.path}: ${what}: needs bytes [${this.pos}, ${end}) but the file ends at ${this.fileSize}; the file is truncated`);
    }
    if (!this.grow) {
      throw new ModelFormatError(`${this.path}: ${what}: needs bytes [${this.pos}, ${end}) but only the first ${this.buf.length} bytes of the file were supplied`);
    }
    this.buf = this.grow(end);
    this.view = new DataView(this.buf.buffer, this.buf.byteOffset, this.buf.byteLength);
  }

  u32(what: string): number {
    this.need(4, what);
    const v = this.view.getUint32(this.pos, true);
    this.pos += 4;
    return v;
  }

  /** u64 as a number; values past 2^53 cannot describe anything in a real file. */
  u64(what: string): number {
    this.need(8, what);
    const lo = this.view.getUint32(this.pos, true);
    const hi = this.view.getUint32(this.pos + 4, true);
    this.pos += 8;
    if (hi > 0x1fffff) throw new ModelFormatError(`${this.path}: ${what}: value ${(BigInt(hi) << 32n) | BigInt(lo)} is impossibly large`);
    return hi * TWO_32 + lo;
  }

  string(what: string): string {
    const len = this.u64(what);
    if (len > this.remaining()) {
      throw new ModelFormatError(`${this.path}: ${what}: string length ${len} runs past end of file (${this.remaining()} bytes remain); the file is truncated or corrupt`);
    }
    this.need(len, what);
    const start = this.pos;
    this.pos += len;
    return decodeString(this.buf, start, len);
  }
}

function decodeString(buf: Uint8Array, start: number, len: number): string {
  // short ASCII strings (most vocabulary tokens) skip TextDecoder's per-call overhead
  if (len <= 24) {
    let ascii = true;
    for (let i = 0; i < len; i++) if (buf[start + i]! >= 0x80) { ascii = false; break; }
    if (ascii) return String.fromCharCode.apply(null, buf.subarray(start, start + len) as unknown as number[]);
  }
  return utf8.decode(buf.subarray(start, start + len));
}

function readScalar(c: HeaderCursor, type: GGUFValueType, what: string): GGUFMetadataValue {
  const size = SCALAR_SIZE[type]!;
  c.need(size, what);
  const v = c.view, p = c.pos;
  c.pos += size;
  switch (type) {
    case GGUFValueType.UINT8: return { type, value: v.getUint8(p) };
    case GGUFValueType.INT8: return { type, value: v.getInt8(p) };
    case GGUFValueType.UINT16: return { type, value: v.getUint16(p, true) };
    case GGUFValueType.INT16: return { type, value: v.getInt16(p, true) };
    case GGUFValueType.UINT32: return { type, value: v.getUint32(p, true) };
    case GGUFValueType.INT32: return { type, value: v.getInt32(p, true) };
    case GGUFValueType.FLOAT32: return { type, value: v.getFloat32(p, true) };
    case GGUFValueType.FLOAT64: return { type, value: v.getFloat64(p, true) };
    case GGUFValueType.BOOL: return { type, value: v.getUint8(p) !== 0 };
    case GGUFValueType.UINT64: return { type, value: v.getBigUint64(p, true) };
    case GGUFValueType.INT64: return { type, value: v.getBigInt64(p, true) };
    default: throw new Error(`unreachable: scalar type ${type}`);
  }
}

function readArray(c: HeaderCursor, what: string): GGUFMetadataValue {
  const itemType = c.u32(`${what} (array item type)`) as GGUFValueType;
  const count = c.u64(`${what} (array length)`);
  if (itemType === GGUFValueType.ARRAY) throw new UnsupportedError(`${c.path}: ${what}: arrays of arrays are not supported (llama.cpp rejects them too)`);
  const itemSize = itemType === GGUFValueType.STRING ? 8 : SCALAR_SIZE[itemType];
  if (itemSize === undefined) throw new ModelFormatError(`${c.path}: ${what}: unknown array item type ${itemType}`);
  if (count * itemSize > c.remaining()) {
    throw new ModelFormatError(`${c.path}: ${what}: array of ${count} ${valueTypeName(itemType)} needs at least ${count * itemSize} bytes but only ${c.remaining()} remain in the file`);
  }
  if (itemType === GGUFValueType.STRING) {
    const value: string[] = new Array<string>(count);
    for (let i = 0; i < count; i++) value[i] = c.string(what);
    return { type: GGUFValueType.ARRAY, itemType, value };
  }
  const bytes = count * itemSize;
  c.need(bytes, what);
  const copy = c.buf.slice(c.pos, c.pos + bytes); // fresh, aligned buffer (little-endian host)
  c.pos += bytes;
  const b = copy.buffer;
  let value: ArrayLike<unknown>;
  switch (itemType) {
    case GGUFValueType.UINT8: value = copy; break;
    case GGUFValueType.INT8: value = new Int8Array(b); break;
    case GGUFValueType.UINT16: value = new Uint16Array(b); break;
    case GGUFValueType.INT16: value = new Int16Array(b); break;
    case GGUFValueType.UINT32: value = new Uint32Array(b); break;
    case GGUFValueType.INT32: value = new Int32Array(b); break;
    case GGUFValueType.FLOAT32: value = new Float32Array(b); break;
    case GGUFValueType.FLOAT64: value = new Float64Array(b); break;
    case GGUFValueType.UINT64: value = new BigUint64Array(b); break;
    case GGUFValueType.INT64: value = new BigInt64Array(b); break;
    case GGUFValueType.BOOL: value = Array.from(copy, (x) => x !== 0); break;
    default: throw new Error(`unreachable: item type ${itemType}`);
  }
  return { type: GGUFValueType.ARRAY, itemType, value };
}

function readValue(c: HeaderCursor, type: GGUFValueType, what: string): GGUFMetadataValue {
  if (type === GGUFValueType.STRING) return { type, value: c.string(what) };
  if (type === GGUFValueType.ARRAY) return readArray(c, what);
  if (SCALAR_SIZE[type] === undefined) throw new ModelFormatError(`${c.path}: ${what} has unknown value type ${type}`);
  return readScalar(c, type, what);
}

function isPowerOfTwo(n: number): boolean {
  return Number.isSafeInteger(n) && n > 0 && (n & (n - 1)) === 0 && n <= 2 ** 30;
}

function alignUp(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

/**
 * Parses a GGUF header from `buf` (the whole file, or a prefix of it holding at least the header).
 * `fileSize` (default buf.length) bounds every length and tensor range; `grow(minLength)`, when
 * given, returns a longer prefix of at least minLength bytes (a file read as far as its header goes).
 */
export function parseGGUF(buf: Uint8Array, fileSize?: number, path = "<buffer>", grow?: (minLength: number) => Uint8Array): GGUFFile {
  return parseWith(new HeaderCursor(buf, fileSize ?? buf.length, path, grow), path);
}

function parseWith(c: HeaderCursor, path: string): GGUFFile {
  if (c.fileSize < 4) throw new ModelFormatError(`${path}: not a GGUF file: ${c.fileSize} bytes, too short for the magic`);
  const magic = c.u32("magic");
  if (magic !== GGUF_MAGIC) {
    const shown = [0, 8, 16, 24].map((s) => ((magic >>> s) & 0xff).toString(16).padStart(2, "0")).join(" ");
    throw new ModelFormatError(`${path}: not a GGUF file: magic ${shown} expected GGUF (47 47 55 46)`);
  }
  const version = c.u32("version");
  if (version === 1) throw new UnsupportedError(`${path}: GGUF version 1 is obsolete and not supported; re-convert the model with a current llama.cpp`);
  if (version !== 2 && version !== 3) throw new ModelFormatError(`${path}: GGUF version ${version} is not supported (expected 2 or 3)`);
  const nTensors = c.u64("tensor count");
  const nKV = c.u64("metadata key/value count");
  if (nKV * MIN_KV_BYTES > c.remaining()) {
    throw new ModelFormatError(`${path}: metadata count ${nKV} cannot fit in the ${c.remaining()} bytes left in the file; the file is truncated or corrupt`);
  }
  if (nTensors * MIN_TENSOR_INFO_BYTES > c.remaining()) {
    throw new ModelFormatError(`${path}: tensor count ${nTensors} cannot fit in the ${c.remaining()} bytes left in the file; the file is truncated or corrupt`);
  }

  const metadata = new Map<string, GGUFMetadataValue>();
  for (let i = 0; i < nKV; i++) {
    const key = c.string(`metadata key #${i}`);
    if (metadata.has(key)) throw new ModelFormatError(`${path}: duplicate metadata key ${key}`);
    const what = `metadata key ${key}`;
    const type = c.u32(`${what} (value type)`) as GGUFValueType;
    metadata.set(key, readValue(c, type, what));
  }

  let alignment = GGUF_DEFAULT_ALIGNMENT;
  const al = metadata.get("general.alignment");
  if (al !== undefined) {
    if (al.type === GGUFValueType.ARRAY || al.type === GGUFValueType.STRING || al.type === GGUFValueType.BOOL
      || al.type === GGUFValueType.FLOAT32 || al.type === GGUFValueType.FLOAT64) {
      throw new ModelFormatError(`${path}: general.alignment has type ${valueTypeName(al)}, expected UINT32`);
    }
    const a = Number(al.value);
    if (!isPowerOfTwo(a)) throw new ModelFormatError(`${path}: general.alignment is ${a}, must be a power of two`);
    alignment = a;
  }

  interface Info { name: string; type: GGMLType; dims: number[]; nbytes: number; rel: number }
  const infos: Info[] = [];
  const names = new Set<string>();
  for (let i = 0; i < nTensors; i++) {
    const name = c.string(`tensor info #${i} (name)`);
    const what = `tensor ${name}`;
    if (names.has(name)) throw new ModelFormatError(`${path}: duplicate tensor name ${name}`);
    names.add(name);
    const nDims = c.u32(`${what} (n_dims)`);
    if (nDims < 1 || nDims > GGUF_MAX_DIMS) throw new ModelFormatError(`${path}: ${what}: n_dims is ${nDims}, must be 1..${GGUF_MAX_DIMS}`);
    const dims: number[] = [];
    for (let d = 0; d < nDims; d++) {
      const ne = c.u64(`${what} (dim ${d})`);
      if (ne < 1) throw new ModelFormatError(`${path}: ${what}: dim ${d} is ${ne}, must be positive`);
      dims.push(ne);
    }
    const typeId = c.u32(`${what} (type)`);
    const info = TYPE_INFO.get(typeId as GGMLType);
    if (!info) throw new UnsupportedError(`${path}: ${what} has GGML type id ${typeId}, which moira does not know`);
    const rel = c.u64(`${what} (offset)`);
    if (dims[0]! % info.blockSize !== 0) {
      throw new ModelFormatError(`${path}: ${what}: row of ${dims[0]} elements is not a whole number of ${info.name} blocks (${info.blockSize})`);
    }
    let nbytes = (dims[0]! / info.blockSize) * info.typeSize;
    for (let d = 1; d < nDims; d++) nbytes *= dims[d]!; // may lose precision only far past any file size
    if (rel % alignment !== 0) {
      throw new ModelFormatError(`${path}: ${what}: data offset ${rel} is not a multiple of the alignment ${alignment}`);
    }
    infos.push({ name, type: typeId as GGMLType, dims, nbytes, rel });
  }

  const dataOffset = alignUp(c.pos, alignment);
  const fileSize = c.fileSize;
  const tensors = new Map<string, TensorMeta>();
  for (const t of infos) {
    const start = dataOffset + t.rel;
    const end = start + t.nbytes;
    if (end > fileSize) {
      throw new ModelFormatError(`${path}: tensor ${t.name}: data [${start}, ${end}) runs past end of file (size ${fileSize}); the file is truncated`);
    }
    tensors.set(t.name, { name: t.name, type: t.type, dims: t.dims, nbytes: t.nbytes, file: { path, offset: start } });
  }
  const byOffset = [...infos].sort((a, b) => a.rel - b.rel);
  for (let i = 1; i < byOffset.length; i++) {
    const prev = byOffset[i - 1]!, cur = byOffset[i]!;
    if (prev.rel + prev.nbytes > cur.rel) {
      throw new ModelFormatError(`${path}: tensors ${prev.name} and ${cur.name} overlap: ${prev.name} occupies [${dataOffset + prev.rel}, ${dataOffset + prev.rel + prev.nbytes}), ${cur.name} starts at ${dataOffset + cur.rel}`);
    }
  }
  return { path, version, metadata, tensors, alignment, dataOffset, fileSize };
}
