/**
 * GGUF reader (versions 2 and 3, little-endian), as llama.cpp's gguf.cpp writes them:
 *
 *   magic "GGUF" | version u32 | n_tensors u64 | n_kv u64
 *   n_kv × (key string | value type u32 | value)         string = u64 length + UTF-8 bytes
 *   n_tensors × (name string | n_dims u32 | dims u64[n_dims] | ggml type u32 | offset u64)
 *   padding to `general.alignment` (default 32) | tensor data (offsets relative to here)
 *
 * Only the header is read; every count and length is checked against the bytes the file can still
 * hold before anything is allocated, so a corrupt or hostile file fails with a ModelFormatError
 * (or UnsupportedError for a tensor type moira does not know) naming the field, never with a
 * RangeError or an out-of-memory.
 */
import { closeSync, fstatSync, openSync, readSync } from "node:fs";
import { FileAccessError, MissingTensorError, ModelFormatError, UnsupportedError } from "../../errors.js";
import { GGUFValueType, type GGUFMetadataValue, type Metadata, type FileMapper, type LoadOptions, type ModelFile, type TensorData, type TensorMeta, type WeightSource } from "../model-file.js";
import { TYPE_INFO, typeName, type GGMLType } from "../quant/types.js";

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
 * `fileSize` (default buf.length) bounds every length and tensor range.
 */
export function parseGGUF(buf: Uint8Array, fileSize?: number, path = "<buffer>"): GGUFFile {
  return parseWith(new HeaderCursor(buf, fileSize ?? buf.length, path), path);
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

const INITIAL_HEADER_READ = 1 << 20;

/** Reads and validates the header of the GGUF file at `path` (tensor data is not read). */
export function readGGUF(path: string): GGUFFile {
  const fd = openForRead(path);
  try {
    const fileSize = fstatSync(fd).size;
    const readPrefix = (len: number, old?: Uint8Array): Uint8Array => {
      const buf = new Uint8Array(len);
      let have = 0;
      if (old) { buf.set(old); have = old.length; }
      while (have < len) {
        const got = readSync(fd, buf, have, len - have, have);
        if (got === 0) throw new ModelFormatError(`${path}: file shrank while reading its header (got ${have} of ${len} bytes)`);
        have += got;
      }
      return buf;
    };
    let buf = readPrefix(Math.min(fileSize, INITIAL_HEADER_READ));
    const grow = (minLength: number): Uint8Array => {
      buf = readPrefix(Math.min(fileSize, Math.max(minLength, buf.length * 2)), buf);
      return buf;
    };
    return parseWith(new HeaderCursor(buf, fileSize, path, grow), path);
  } finally {
    closeSync(fd);
  }
}

function openForRead(path: string): number {
  try {
    return openSync(path, "r");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOENT") throw new FileAccessError(`model file ${path} not found`);
    throw new FileAccessError(`cannot open model file ${path}: ${(e as Error).message}`);
  }
}

/** Largest single readSync; Node rejects lengths past 2 GiB. */
const READ_CHUNK = 1 << 30;

/**
 * Longest mapping loadMany makes: Node 20 refuses external buffers of 4 GiB and more; 2 MiB under
 * that keeps whole 2 MiB pages in reach.
 */
const MAX_SPAN = 2 ** 32 - 2 ** 21;
/** A gap between wanted tensors longer than this (tensors nobody asked for) starts a new mapping. */
const MAX_GAP = 2 ** 20;

export interface GGUFOpenOptions {
  /** map each tensor's bytes instead of reading a copy (no copy, shared page cache) */
  readonly map?: FileMapper;
}

/**
 * Tensors of a GGUF file, read on demand with positioned reads (one fd, opened on first use), or,
 * with `map`, mapped one tensor per mapping (views are emptied by close()).
 */
export class GGUFWeightSource implements WeightSource {
  readonly tensors: ReadonlyMap<string, TensorMeta>;
  private fd: number | null = null;
  private readonly mappings: Array<ReturnType<FileMapper>> = [];

  constructor(readonly file: GGUFFile, private readonly options: GGUFOpenOptions = {}) {
    this.tensors = file.tensors;
  }

  /** `options.map` (else the mapper given at open, if any): map the bytes instead of reading a copy. */
  load(name: string, options: LoadOptions = {}): TensorData {
    const t = this.tensors.get(name);
    if (!t) throw new MissingTensorError(`tensor ${name} not found in ${this.file.path}`);
    const base = t.file!.offset;
    const map = options.map ?? this.options.map;
    if (map) {
      if (base + t.nbytes > this.file.fileSize) {
        throw new ModelFormatError(`${this.file.path}: tensor ${name}: file ended after ${Math.max(0, this.file.fileSize - base)} of ${t.nbytes} bytes; the file is truncated`);
      }
      const m = map(this.file.path, base, t.nbytes);
      this.mappings.push(m);
      return { ...t, data: new Uint8Array(m.buffer) };
    }
    const fd = this.openFd();
    const data = new Uint8Array(t.nbytes);
    let have = 0;
    while (have < data.length) {
      const got = readSync(fd, data, have, Math.min(READ_CHUNK, data.length - have), base + have);
      if (got === 0) throw new ModelFormatError(`${this.file.path}: tensor ${name}: file ended after ${have} of ${t.nbytes} bytes; the file is truncated`);
      have += got;
    }
    return { ...t, data };
  }

  /**
   * With a mapper: tensors that lie next to each other in the file share one mapping (split where
   * it would pass MAX_SPAN or skip more than MAX_GAP bytes), each a view of it. Few large mappings
   * rather than one per tensor: every external buffer counts against V8's external memory, and each
   * step past its limit forces a full garbage collection (tens of them for a few GB in 100 MB
   * pieces). Without one, `load` for each.
   */
  loadMany(names: Iterable<string>, options: LoadOptions = {}): Map<string, TensorData> {
    const map = options.map ?? this.options.map;
    const out = new Map<string, TensorData>();
    const metas: TensorMeta[] = [];
    for (const name of names) {
      const t = this.tensors.get(name);
      if (!t) throw new MissingTensorError(`tensor ${name} not found in ${this.file.path}`);
      if (map) metas.push(t);
      else out.set(name, this.load(name));
    }
    if (!map) return out;
    metas.sort((x, y) => x.file!.offset - y.file!.offset);
    for (let i = 0; i < metas.length;) {
      const start = metas[i].file!.offset;
      let end = start + metas[i].nbytes, j = i + 1;
      for (; j < metas.length; j++) {
        const t = metas[j], tEnd = Math.max(end, t.file!.offset + t.nbytes);
        if (t.file!.offset - end > MAX_GAP || tEnd - start > MAX_SPAN) break;
        end = tEnd;
      }
      if (end > this.file.fileSize) {
        const t = metas.slice(i, j).find((m) => m.file!.offset + m.nbytes > this.file.fileSize)!;
        throw new ModelFormatError(`${this.file.path}: tensor ${t.name}: file ended after ${Math.max(0, this.file.fileSize - t.file!.offset)} of ${t.nbytes} bytes; the file is truncated`);
      }
      const m = map(this.file.path, start, end - start);
      this.mappings.push(m);
      for (const t of metas.slice(i, j)) out.set(t.name, { ...t, data: new Uint8Array(m.buffer, t.file!.offset - start, t.nbytes) });
      i = j;
    }
    return out;
  }

  loadRows(name: string, rowBytes: number, rows: readonly number[]): Uint8Array {
    const t = this.tensors.get(name);
    if (!t) throw new MissingTensorError(`tensor ${name} not found in ${this.file.path}`);
    const nRows = Math.floor(t.nbytes / rowBytes);
    const out = new Uint8Array(rows.length * rowBytes);
    const fd = this.openFd();
    rows.forEach((r, i) => {
      if (!(Number.isInteger(r) && r >= 0 && r < nRows)) throw new ModelFormatError(`tensor ${name}: row ${r} is outside its ${nRows} rows`);
      const at = t.file!.offset + r * rowBytes;
      const got = readSync(fd, out, i * rowBytes, rowBytes, at);
      if (got < rowBytes) throw new ModelFormatError(`${this.file.path}: tensor ${name}: file ended inside row ${r}; the file is truncated`);
    });
    return out;
  }

  /** The file, opened on first use. */
  private openFd(): number {
    if (this.fd === null) this.fd = openForRead(this.file.path);
    return this.fd;
  }

  close(): void {
    if (this.fd !== null) {
      closeSync(this.fd);
      this.fd = null;
    }
    for (const m of this.mappings.splice(0)) m.dispose();
  }
}

/** Opens a GGUF model: header parsed now, tensors read (or mapped) on demand. */
export function openGGUF(path: string, options: GGUFOpenOptions = {}): ModelFile {
  const file = readGGUF(path);
  return { path, format: "gguf", metadata: file.metadata, weights: new GGUFWeightSource(file, options) };
}

// ---------------------------------------------------------------------------------------------
// Typed metadata accessors: each names the key and the type found when the metadata disagrees.

/** The value of `key`; ModelFormatError when absent. */
export function metaValue(md: Metadata, key: string): GGUFMetadataValue {
  const v = md.get(key);
  if (v === undefined) throw new ModelFormatError(`metadata key ${key} missing`);
  return v;
}

function wrongType(key: string, v: GGUFMetadataValue, expected: string): ModelFormatError {
  return new ModelFormatError(`metadata key ${key} has type ${valueTypeName(v)}, expected ${expected}`);
}

function isNumericType(t: GGUFValueType): boolean {
  return t !== GGUFValueType.STRING && t !== GGUFValueType.ARRAY && t !== GGUFValueType.BOOL;
}

function toNumber(key: string, x: unknown): number {
  if (typeof x === "number") return x;
  if (typeof x === "bigint") {
    const n = Number(x);
    if (!Number.isSafeInteger(n)) throw new ModelFormatError(`metadata key ${key}: value ${x} is too large`);
    return n;
  }
  throw new ModelFormatError(`metadata key ${key}: value ${String(x)} is not a number`);
}

export function metaString(md: Metadata, key: string): string {
  const v = metaValue(md, key);
  if (v.type !== GGUFValueType.STRING) throw wrongType(key, v, "STRING");
  return v.value;
}

export function metaOptString(md: Metadata, key: string): string | undefined {
  return md.has(key) ? metaString(md, key) : undefined;
}

/** Any numeric scalar (integers of any width, floats); 64-bit integers must fit a safe integer. */
export function metaNumber(md: Metadata, key: string): number {
  const v = metaValue(md, key);
  if (!isNumericType(v.type)) throw wrongType(key, v, "a number");
  return toNumber(key, v.value);
}

export function metaOptNumber(md: Metadata, key: string): number | undefined {
  return md.has(key) ? metaNumber(md, key) : undefined;
}

export function metaBool(md: Metadata, key: string): boolean {
  const v = metaValue(md, key);
  if (v.type !== GGUFValueType.BOOL) throw wrongType(key, v, "BOOL");
  return v.value;
}

export function metaOptBool(md: Metadata, key: string): boolean | undefined {
  return md.has(key) ? metaBool(md, key) : undefined;
}

/** The items of an ARRAY value, optionally checking the item type. */
export function metaArray(md: Metadata, key: string, itemType?: GGUFValueType): ArrayLike<unknown> {
  const v = metaValue(md, key);
  if (v.type !== GGUFValueType.ARRAY) throw wrongType(key, v, itemType === undefined ? "ARRAY" : `ARRAY[${valueTypeName(itemType)}]`);
  if (itemType !== undefined && v.itemType !== itemType) throw wrongType(key, v, `ARRAY[${valueTypeName(itemType)}]`);
  return v.value;
}

export function metaOptArray(md: Metadata, key: string, itemType?: GGUFValueType): ArrayLike<unknown> | undefined {
  return md.has(key) ? metaArray(md, key, itemType) : undefined;
}

export function metaStringArray(md: Metadata, key: string): string[] {
  return Array.from(metaArray(md, key, GGUFValueType.STRING) as ArrayLike<string>);
}

/** A numeric array of any item type, as numbers. */
export function metaNumberArray(md: Metadata, key: string): number[] {
  const v = metaValue(md, key);
  if (v.type !== GGUFValueType.ARRAY || !isNumericType(v.itemType)) throw wrongType(key, v, "ARRAY of numbers");
  return Array.from(v.value, (x) => toNumber(key, x));
}

/** A number that is either a scalar or (per-layer hyperparameters) an array; arrays give their items. */
export function metaNumberOrArray(md: Metadata, key: string): number | number[] {
  const v = metaValue(md, key);
  return v.type === GGUFValueType.ARRAY ? metaNumberArray(md, key) : metaNumber(md, key);
}

/** Human-readable one-line summary of a tensor: "blk.0.attn_q.weight Q4_K [256, 256]". */
export function describeTensor(t: TensorMeta): string {
  return `${t.name} ${typeName(t.type)} [${t.dims.join(", ")}]`;
}
