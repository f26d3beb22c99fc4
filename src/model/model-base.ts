/**
 * A model over an open ModelFile: its architecture, frozen config and shape-checked weights.
 * Nothing here touches the file system, so a browser build uses it alone (on a GGUF file fetched
 * into memory: openGGUFBytes); Model (model.ts) adds opening a path. Nothing here decides where
 * weights live; see ExpertProvider.
 */
import type { ModelFile } from "../formats/model-file.js";
import { GGUFValueType } from "../formats/model-file.js";
import type { Architecture, ExpectedTensor } from "./architecture.js";
import type { ModelConfig } from "./config.js";
import { ModelWeights } from "./weights.js";
import { architectureFor } from "./registry.js";
import { MissingTensorError, ModelFormatError } from "../errors.js";
import { GGMLType, RELAID_LAYOUT, RELAID_LAYOUT_KEY } from "../formats/quant/types.js";

/**
 * Checks a tensor's presence (unless optional, or replaced by its orElse set) and shape; an unused
 * one is checked without being declared as used (never loaded, any type).
 */
function checkTensor(weights: ModelWeights, t: ExpectedTensor): void {
  const check = (x: ExpectedTensor) => (t.unused ? weights.checkShape(x.name, x.dims) : weights.meta(x.name, x.dims));
  if (weights.has(t.name) || (!t.optional && !t.orElse)) {
    check(t);
    return;
  }
  if (!t.orElse) return;
  const missing = t.orElse.filter((x) => !weights.has(x.name)).map((x) => x.name);
  if (missing.length > 0) {
    throw new MissingTensorError(`tensor ${t.name} is missing from the model; ${t.orElse.map((x) => x.name).join(" + ")} could replace it, but ${missing.join(" and ")} ${missing.length > 1 ? "are" : "is"} missing too`);
  }
  for (const x of t.orElse) check(x);
}

/** Refuses Q4_K_R16 tensors unless the file says `moira repack` wrote them in this moira's layout. */
function checkRelaidLayout(file: ModelFile): void {
  const relaid = [...file.weights.tensors.values()].find((t) => t.type === GGMLType.Q4_K_R16);
  if (!relaid) return;
  const v = file.metadata.get(RELAID_LAYOUT_KEY);
  if (v?.type === GGUFValueType.STRING && v.value === RELAID_LAYOUT) return;
  throw new ModelFormatError(
    `${file.path}: tensor ${relaid.name} has type Q4_K_R16, but ${RELAID_LAYOUT_KEY} is ${v ? JSON.stringify(v.value) : "missing"}, ` +
    `not "${RELAID_LAYOUT}": a layout another moira wrote; run moira repack again on the original model`,
  );
}

export class ModelBase {
  protected constructor(
    readonly file: ModelFile,
    readonly arch: Architecture,
    readonly config: ModelConfig,
    readonly weights: ModelWeights,
  ) {}

  /** Reads the config of `file` and checks every tensor's presence and shape; closes the file if that fails. */
  static fromFile(file: ModelFile): ModelBase {
    try {
      const archValue = file.metadata.get("general.architecture");
      if (!archValue || archValue.type !== GGUFValueType.STRING) {
        throw new ModelFormatError(`${file.path}: metadata key general.architecture is missing`);
      }
      checkRelaidLayout(file);
      const arch = architectureFor(archValue.value);
      const config = arch.config(file.metadata, file.weights.tensors);
      const weights = new ModelWeights(file.weights);
      for (const t of arch.tensors(config)) checkTensor(weights, t);
      return new this(file, arch, config, weights);
    } catch (e) {
      file.weights.close();
      throw e;
    }
  }

  close(): void {
    this.file.weights.close();
  }
}
