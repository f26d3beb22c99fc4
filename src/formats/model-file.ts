/**
 * A model as moira sees it before any architecture code runs: GGUF-style metadata plus tensors
 * under canonical GGUF names. A GGUF file is one directly; a Hugging Face directory is converted
 * on the fly (config.json → GGUF metadata keys, HF tensor names → GGUF names), exactly as
 * llama.cpp's converter would, so every architecture file reads one vocabulary of names.
 */
import type { GGMLType } from "./quant/types.js";

/** GGUF metadata value types (ids as in the file format). */
export enum GGUFValueType {
  UINT8 = 0,
  INT8 = 1,
  UINT16 = 2,
  INT16 = 3,
  UINT32 = 4,
  INT32 = 5,
  FLOAT32 = 6,
  BOOL = 7,
  STRING = 8,
  ARRAY = 9,
  UINT64 = 10,
  INT64 = 11,
  FLOAT64 = 12,
}

/**
 * One metadata value with its type, so that a file can be written back byte-compatibly.
 * Scalars: number (UINT64/INT64 as bigint), boolean, string. ARRAY: `value` is a JS array (or a
 * typed array for numeric arrays) and `itemType` names the element type.
 */
export type GGUFMetadataValue =
  | { type: Exclude<GGUFValueType, GGUFValueType.ARRAY | GGUFValueType.UINT64 | GGUFValueType.INT64 | GGUFValueType.STRING | GGUFValueType.BOOL>; value: number }
  | { type: GGUFValueType.UINT64 | GGUFValueType.INT64; value: bigint }
  | { type: GGUFValueType.STRING; value: string }
  | { type: GGUFValueType.BOOL; value: boolean }
  | { type: GGUFValueType.ARRAY; itemType: GGUFValueType; value: ArrayLike<unknown> };

export type Metadata = ReadonlyMap<string, GGUFMetadataValue>;

/** A tensor's description. dims are in GGUF order: dims[0] (ne0) is the contiguous one (columns). */
export interface TensorMeta {
  readonly name: string;
  readonly type: GGMLType;
  readonly dims: readonly number[];
  readonly nbytes: number;
  /** For tensors stored verbatim in a file: the file and the absolute offset of the first byte. */
  readonly file?: { path: string; offset: number };
}

export interface TensorData extends TensorMeta {
  readonly data: Uint8Array;
}

/** Source of tensors by canonical (GGUF) name. */
/**
 * Maps `length` bytes of a file from `offset` into memory (injected by a caller that has a native
 * mapper, e.g. backend/native's MappedFile): tensors become views of mappings instead of copies.
 */
export type FileMapper = (path: string, offset: number, length: number) => { readonly buffer: ArrayBuffer; dispose(): void };

export interface LoadOptions {
  /**
   * Map the tensor's bytes with this mapper instead of reading a copy, where the tensor is stored
   * verbatim in a file (sources that convert tensors ignore it).
   */
  readonly map?: FileMapper;
}

export interface WeightSource {
  readonly tensors: ReadonlyMap<string, TensorMeta>;
  /** Reads (or converts) a tensor's bytes. Throws MissingTensorError naming the tensor if absent. */
  load(name: string, options?: LoadOptions): TensorData;
  /**
   * Loads many tensors at once (same result as `load` for each), where a source can do better
   * than one by one: with `map`, a GGUF file's neighbouring tensors share one mapping.
   */
  loadMany?(names: Iterable<string>, options?: LoadOptions): Map<string, TensorData>;
  /**
   * Reads only some rows of a 2-D tensor stored verbatim (`rowBytes` each), packed in the order
   * given, without loading the rest; absent where tensors are converted rather than stored.
   */
  loadRows?(name: string, rowBytes: number, rows: readonly number[]): Uint8Array;
  close(): void;
}

export interface ModelFile {
  readonly path: string;
  readonly format: "gguf" | "hf";
  readonly metadata: Metadata;
  readonly weights: WeightSource;
  /** HF directories: the path of tokenizer.json when present. */
  readonly tokenizerJsonPath?: string;
}
