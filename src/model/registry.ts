/**
 * The architecture registry, the one list of architectures: GGUF general.architecture →
 * Architecture. What else lists them derives from it (formats/hf's HF_MODEL_TYPES, make-model's
 * MAKE_MODEL_ARCHS and PRESETS); a new architecture is its file plus its line here.
 */
import type { Architecture } from "./architecture.js";
import { mixtral } from "./arch/mixtral.js";
import { qwen2moe } from "./arch/qwen2moe.js";
import { qwen3moe } from "./arch/qwen3moe.js";
import { olmoe } from "./arch/olmoe.js";
import { deepseek2 } from "./arch/deepseek2.js";
import { deepseek } from "./arch/deepseek.js";
import { glm4moe } from "./arch/glm4moe.js";
import { gptOss } from "./arch/gpt-oss.js";
import { UnsupportedError } from "../errors.js";

export const ARCHITECTURES: readonly Architecture[] = [mixtral, qwen2moe, qwen3moe, olmoe, deepseek2, deepseek, glm4moe, gptOss];

export function architectureFor(ggufArch: string): Architecture {
  const a = ARCHITECTURES.find((x) => x.name === ggufArch);
  if (!a) {
    throw new UnsupportedError(
      `architecture "${ggufArch}" is not supported; supported: ${ARCHITECTURES.map((x) => `${x.name} (${x.description})`).join(", ")}`,
    );
  }
  return a;
}
