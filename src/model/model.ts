/**
 * Model: an opened checkpoint (GGUF file or HF directory) with its architecture, frozen config
 * and shape-checked weights (ModelBase, which a browser build uses alone: it opens no path).
 * Nothing here decides where weights live; see ExpertProvider.
 */
import type { FileMapper } from "../formats/model-file.js";
import { openModel } from "../formats/open.js";
import { ModelBase } from "./model-base.js";

export class Model extends ModelBase {
  /**
   * Opens a GGUF file or HF directory, reads its config and checks every tensor's presence and
   * shape. `map` (GGUF only): tensors are views of one file mapping instead of copies.
   */
  static open(path: string, options: { map?: FileMapper } = {}): Model {
    return Model.fromFile(openModel(path, options));
  }
}
