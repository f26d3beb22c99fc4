/**
 * Opens a model whatever its format: a directory is a Hugging Face checkpoint (converted on the
 * fly to GGUF names and keys), a file is GGUF.
 */
import { statSync } from "node:fs";
import { FileAccessError } from "../errors.js";
import { openGGUF, type GGUFOpenOptions } from "./gguf/reader.js";
import { openHFDirectory } from "./hf/index.js";
import type { ModelFile } from "./model-file.js";

/** `options` apply to GGUF files (HF directories ignore them). */
export function openModel(path: string, options: GGUFOpenOptions = {}): ModelFile {
  let isDir: boolean;
  try {
    isDir = statSync(path).isDirectory();
  } catch (e) {
    throw new FileAccessError(`cannot open model ${path}: ${(e as Error).message}`);
  }
  return isDir ? openHFDirectory(path) : openGGUF(path, options);
}
