/**
 * Exactness against llama.cpp (node-llama-cpp's prebuilt CPU build): for every architecture
 * llama.cpp supports and each weight type, the GGUF that `make-model` writes loads in llama.cpp and
 * moira's greedy continuation equals llama.cpp's, token for token.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { makeModel } from "../src/tools/make-model/index.js";
import { Model } from "../src/model/model.js";
import { Session } from "../src/engine/session.js";
import { argmax } from "../src/engine/sampler.js";
import { withLlamaModel } from "./llama-oracle.js";
import { backendsUnderTest } from "./backends.js";
import type { Backend } from "../src/backend/backend.js";

const PRESETS = ["tiny", "tiny-qwen2moe", "tiny-qwen3moe", "tiny-olmoe", "tiny-deepseek2"];
const TYPES = ["F32", "F16", "Q8_0", "Q4_0", "Q4_K", "Q6_K"];
const N_GEN = 16;

export function moiraGreedy(model: Model, backend: Backend, prompt: readonly number[], n: number): number[] {
  const s = new Session(model, { backend, contextLength: prompt.length + n });
  let logits = s.prefill(prompt);
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const t = argmax(logits);
    out.push(t);
    if (i < n - 1) logits = s.decodeStep(t);
  }
  return out;
}

function prompts(vocab: number): number[][] {
  // fixed pseudo-random prompts away from the special tokens at the start of the vocabulary
  const ps: number[][] = [];
  let x = 12345;
  for (let p = 0; p < 3; p++) {
    const toks: number[] = [];
    for (let i = 0; i < 4 + 2 * p; i++) { x = (x * 1103515245 + 12345) >>> 0; toks.push(300 + (x % (vocab - 300))); }
    ps.push(toks);
  }
  return ps;
}

test("make-model GGUFs: moira greedy == llama.cpp greedy for every architecture and type", { timeout: 600_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), "moira-llama-"));
  const backend = (await backendsUnderTest()).at(-1)!; // native when built, else ref
  const mismatches: string[] = [];
  try {
    for (const preset of PRESETS) {
      for (const type of TYPES) {
        const path = join(dir, `${preset}-${type}.gguf`);
        await makeModel({ preset, type, seed: 7, out: path });
        const model = Model.open(path);
        try {
          await withLlamaModel(path, async (llama) => {
            for (const prompt of prompts(model.config.vocabSize)) {
              const ours = moiraGreedy(model, backend, prompt, N_GEN);
              const theirs = await llama.greedy(prompt, N_GEN);
              if (ours.join(",") !== theirs.join(",")) {
                mismatches.push(`${preset} ${type} prompt [${prompt}]: moira [${ours}] llama.cpp [${theirs}]`);
              }
            }
          });
        } finally {
          model.close();
          rmSync(path);
        }
      }
    }
  } finally {
    backend.dispose();
    rmSync(dir, { recursive: true, force: true });
  }
  assert.deepEqual(mismatches, [], `greedy continuations differ (backend ${backend.name}):\n${mismatches.join("\n")}`);
});
