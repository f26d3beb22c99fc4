/**
 * GGUF files on disk: the header read (and parsed by parse.ts) as far as it goes, tensors read
 * with positioned reads or mapped on demand; and typed accessors of the metadata.
 */
import { closeSync, fstatSync, openSync, readSync } from "node:fs";
import { FileAccessError, MissingTensorError, ModelFormatError } from "../../errors.js";
import { GGUFValueType, type GGUFMetadataValue, type Metadata, type FileMapper, type LoadOptions, type ModelFile, type TensorData, type TensorMeta, type WeightSource } from "../model-file.js";
import { typeName } from "../quant/types.js";
import { type GGUFFile, parseGGUF, valueTypeName } from "./parse.js";

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
    return parseGGUF(buf, fileSize, path, grow);
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
