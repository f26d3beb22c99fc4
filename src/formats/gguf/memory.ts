/**
 * A GGUF file held whole in memory (a browser's, fetched over HTTP): the header parsed as a file's
 * is (parse.ts), each tensor a view of the bytes. No Node module: a browser build opens models so.
 */
import { MissingTensorError } from "../../errors.js";
import type { ModelFile, TensorData, TensorMeta, WeightSource } from "../model-file.js";
import { type GGUFFile, parseGGUF } from "./parse.js";

/** The tensors of a GGUF file in memory: each load is a view of its bytes (no copy). */
class GGUFBytesSource implements WeightSource {
  readonly tensors: ReadonlyMap<string, TensorMeta>;

  constructor(readonly file: GGUFFile, private readonly bytes: Uint8Array) {
    this.tensors = file.tensors;
  }

  load(name: string): TensorData {
    const t = this.tensors.get(name);
    if (!t) throw new MissingTensorError(`tensor ${name} not found in ${this.file.path}`);
    const at = t.file!.offset;
    return { ...t, data: this.bytes.subarray(at, at + t.nbytes) };
  }

  /** Nothing to release: the bytes are the caller's. */
  close(): void {}
}

/**
 * Opens the GGUF file `bytes` (the whole file, at the start of its buffer as a fetched one is, so
 * that tensors keep the file's alignment; `name`, e.g. its URL, stands for its path in messages).
 * Every tensor lies inside the bytes: the parser checks each range against their length.
 */
export function openGGUFBytes(bytes: Uint8Array, name: string): ModelFile {
  const file = parseGGUF(bytes, bytes.length, name);
  return { path: name, format: "gguf", metadata: file.metadata, weights: new GGUFBytesSource(file, bytes) };
}
