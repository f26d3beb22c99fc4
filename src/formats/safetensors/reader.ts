/**
 * safetensors reader: single files and sharded checkpoints (`model.safetensors.index.json`).
 *
 * Layout of one file: u64 little-endian header length N, N bytes of JSON
 * `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__"?: {...}}`, then the data
 * buffer; offsets are relative to the first byte after the header. Everything is validated
 * against the file length when the file is opened; tensor bytes are read lazily (fs.readSync),
 * so opening a 100 GB checkpoint costs only its headers.
 */
import { closeSync, existsSync, fstatSync, openSync, readdirSync, readFileSync, readSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { FileAccessError, MissingTensorError, ModelFormatError, UnsupportedError } from "../../errors.js";

/** Element types moira reads from safetensors (U8: bytes, as GPT-OSS's MXFP4 blocks and scales). */
export type SafetensorsDType = "F32" | "F16" | "BF16" | "U8";

const DTYPE_BYTES: Readonly<Record<SafetensorsDType, number>> = { F32: 4, F16: 2, BF16: 2, U8: 1 };

/** Bytes per element of a supported dtype. */
export function dtypeBytes(dtype: SafetensorsDType): number {
  return DTYPE_BYTES[dtype];
}

/** One tensor of a safetensors checkpoint. `shape` is in torch order (last dim contiguous). */
export interface SafetensorsTensorInfo {
  readonly name: string;
  readonly dtype: SafetensorsDType;
  readonly shape: readonly number[];
  /** The file holding it and the absolute offset of its first byte. */
  readonly file: string;
  readonly offset: number;
  readonly nbytes: number;
}

/** A set of safetensors files seen as one name → tensor map. */
export interface SafetensorsArchive {
  readonly tensors: ReadonlyMap<string, SafetensorsTensorInfo>;
  /** `__metadata__` of the (first) file, string → string. */
  readonly metadata: Readonly<Record<string, string>>;
  /** Reads one tensor's raw bytes (little-endian, as stored). */
  read(name: string): Uint8Array;
  close(): void;
}

/** Header length above this is treated as corrupt (the format caps it at 100 MB). */
const MAX_HEADER_BYTES = 100_000_000;

interface ParsedFile {
  tensors: SafetensorsTensorInfo[];
  metadata: Record<string, string>;
}

function readExactly(fd: number, dst: Uint8Array, position: number, path: string, what: string): void {
  let done = 0;
  while (done < dst.length) {
    const n = readSync(fd, dst, done, dst.length - done, position + done);
    if (n === 0) throw new ModelFormatError(`${path}: unexpected end of file while reading ${what}`);
    done += n;
  }
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function isNonNegInt(v: unknown): v is number {
  return typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
}

/** Parses and validates the header of one open file. */
function parseHeader(fd: number, path: string): ParsedFile {
  const fileSize = fstatSync(fd).size;
  if (fileSize < 8) throw new ModelFormatError(`${path}: ${fileSize} bytes is too short for a safetensors file (no 8-byte header length)`);
  const lenBuf = new Uint8Array(8);
  readExactly(fd, lenBuf, 0, path, "the header length");
  const headerLen = new DataView(lenBuf.buffer).getBigUint64(0, true);
  if (headerLen > BigInt(MAX_HEADER_BYTES) || 8n + headerLen > BigInt(fileSize)) {
    throw new ModelFormatError(`${path}: header length ${headerLen} runs past the end of the file (${fileSize} bytes); the file is truncated or not safetensors`);
  }
  const n = Number(headerLen);
  const headerBytes = new Uint8Array(n);
  readExactly(fd, headerBytes, 8, path, "the JSON header");
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(headerBytes));
  } catch (e) {
    throw new ModelFormatError(`${path}: header is not valid UTF-8 JSON (${(e as Error).message})`);
  }
  if (!isRecord(header)) throw new ModelFormatError(`${path}: header is not a JSON object`);

  const dataStart = 8 + n;
  const dataSize = fileSize - dataStart;
  const tensors: SafetensorsTensorInfo[] = [];
  let metadata: Record<string, string> = {};
  for (const [name, entry] of Object.entries(header)) {
    if (name === "__metadata__") {
      if (isRecord(entry)) metadata = Object.fromEntries(Object.entries(entry).map(([k, v]) => [k, String(v)]));
      continue;
    }
    if (!isRecord(entry)) throw new ModelFormatError(`${path}: tensor ${name}: header entry is not an object`);
    const { dtype, shape, data_offsets: offsets } = entry;
    if (typeof dtype !== "string") throw new ModelFormatError(`${path}: tensor ${name}: missing dtype`);
    if (!(dtype in DTYPE_BYTES)) {
      throw new UnsupportedError(`${path}: tensor ${name} has dtype ${dtype}; moira reads F32, F16, BF16 and U8 safetensors`);
    }
    if (!Array.isArray(shape) || !shape.every(isNonNegInt)) {
      throw new ModelFormatError(`${path}: tensor ${name}: shape ${JSON.stringify(shape)} is not a list of non-negative integers`);
    }
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isNonNegInt) || offsets[0] > offsets[1]) {
      throw new ModelFormatError(`${path}: tensor ${name}: data_offsets ${JSON.stringify(offsets)} is not [begin, end] with begin <= end`);
    }
    const [begin, end] = offsets as [number, number];
    if (end > dataSize) {
      throw new ModelFormatError(`${path}: tensor ${name}: data_offsets [${begin}, ${end}] run past the end of the data (${dataSize} bytes); the file is truncated`);
    }
    const elements = (shape as number[]).reduce((a, b) => a * b, 1);
    const expected = elements * DTYPE_BYTES[dtype as SafetensorsDType];
    if (end - begin !== expected) {
      throw new ModelFormatError(`${path}: tensor ${name}: shape [${shape.join(", ")}] ${dtype} needs ${expected} bytes, data_offsets [${begin}, ${end}] hold ${end - begin}`);
    }
    tensors.push({ name, dtype: dtype as SafetensorsDType, shape: shape as number[], file: path, offset: dataStart + begin, nbytes: expected });
  }
  return { tensors, metadata };
}

class Archive implements SafetensorsArchive {
  readonly tensors = new Map<string, SafetensorsTensorInfo>();
  metadata: Record<string, string> = {};
  private readonly fds = new Map<string, number>();

  /** Opens (once) and parses one file; returns its tensors. */
  addFile(path: string): SafetensorsTensorInfo[] {
    if (this.fds.has(path)) throw new ModelFormatError(`${path}: opened twice`);
    let fd: number;
    try {
      fd = openSync(path, "r");
    } catch (e) {
      throw new FileAccessError(`cannot open ${path}: ${(e as Error).message}`);
    }
    this.fds.set(path, fd);
    const parsed = parseHeader(fd, path);
    if (this.fds.size === 1) this.metadata = parsed.metadata;
    return parsed.tensors;
  }

  read(name: string): Uint8Array {
    const t = this.tensors.get(name);
    if (!t) throw new MissingTensorError(`tensor ${name} is not in the safetensors checkpoint`);
    const fd = this.fds.get(t.file);
    if (fd === undefined) throw new FileAccessError(`${t.file} is closed (tensor ${name})`);
    const out = new Uint8Array(t.nbytes);
    readExactly(fd, out, t.offset, t.file, `tensor ${name}`);
    return out;
  }

  close(): void {
    for (const fd of this.fds.values()) closeSync(fd);
    this.fds.clear();
  }
}

/** Opens one `.safetensors` file. */
export function openSafetensors(path: string): SafetensorsArchive {
  const archive = new Archive();
  try {
    for (const t of archive.addFile(path)) archive.tensors.set(t.name, t);
  } catch (e) {
    archive.close();
    throw e;
  }
  return archive;
}

/**
 * Opens a sharded checkpoint from its `*.safetensors.index.json`: `{weight_map: {tensor: shard}}`
 * with shard paths relative to the index. Every mapped tensor must be in its shard.
 */
export function openSafetensorsIndex(indexPath: string): SafetensorsArchive {
  let index: unknown;
  try {
    index = JSON.parse(readFileSync(indexPath, "utf8"));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code) throw new FileAccessError(`cannot read ${indexPath}: ${(e as Error).message}`);
    throw new ModelFormatError(`${indexPath}: not valid JSON (${(e as Error).message})`);
  }
  if (!isRecord(index) || !isRecord(index.weight_map)) throw new ModelFormatError(`${indexPath}: no "weight_map" object`);
  const weightMap = index.weight_map;
  const dir = dirname(indexPath);
  const archive = new Archive();
  try {
    const byShard = new Map<string, SafetensorsTensorInfo>();
    const shards = new Set<string>();
    for (const [name, shard] of Object.entries(weightMap)) {
      if (typeof shard !== "string") throw new ModelFormatError(`${indexPath}: weight_map entry for ${name} is not a file name`);
      shards.add(shard);
    }
    for (const shard of [...shards].sort()) {
      const shardPath = resolve(dir, shard);
      if (!existsSync(shardPath)) throw new FileAccessError(`${indexPath} names shard ${shard}, which does not exist at ${shardPath}`);
      for (const t of archive.addFile(shardPath)) byShard.set(`${shard}\u0000${t.name}`, t);
    }
    for (const [name, shard] of Object.entries(weightMap) as [string, string][]) {
      const t = byShard.get(`${shard}\u0000${name}`);
      if (!t) throw new ModelFormatError(`${indexPath}: tensor ${name} is mapped to ${shard}, which does not contain it`);
      archive.tensors.set(name, t);
    }
  } catch (e) {
    archive.close();
    throw e;
  }
  return archive;
}

/**
 * Opens the weights of a checkpoint directory: `model.safetensors.index.json` (or the one
 * `*.safetensors.index.json`) when present, else every `*.safetensors` file in it.
 * Throws ModelFormatError naming the directory when it holds no safetensors.
 */
export function openSafetensorsDirectory(dir: string): SafetensorsArchive {
  let names: string[];
  try {
    names = readdirSync(dir).sort();
  } catch (e) {
    throw new FileAccessError(`cannot list ${dir}: ${(e as Error).message}`);
  }
  const indexes = names.filter((n) => n.endsWith(".safetensors.index.json"));
  const preferred = indexes.includes("model.safetensors.index.json") ? "model.safetensors.index.json" : indexes.length === 1 ? indexes[0] : undefined;
  if (preferred) return openSafetensorsIndex(join(dir, preferred));
  if (indexes.length > 1) throw new ModelFormatError(`${dir}: several safetensors indexes (${indexes.join(", ")}) and none is model.safetensors.index.json`);
  const files = names.filter((n) => n.endsWith(".safetensors"));
  if (files.length === 0) throw new ModelFormatError(`${dir}: no *.safetensors weights (nor model.safetensors.index.json)`);
  if (files.length === 1) return openSafetensors(join(dir, files[0]));
  const archive = new Archive();
  try {
    for (const f of files) {
      for (const t of archive.addFile(join(dir, f))) {
        const prev = archive.tensors.get(t.name);
        if (prev) throw new ModelFormatError(`${dir}: tensor ${t.name} is in both ${prev.file} and ${t.file}`);
        archive.tensors.set(t.name, t);
      }
    }
  } catch (e) {
    archive.close();
    throw e;
  }
  return archive;
}
