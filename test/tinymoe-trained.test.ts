/**
 * The trained tiny MoE of ../shared (real LLaMA SentencePiece vocabulary): `moira run` at
 * temperature 0 and llama.cpp produce the same greedy text, token for token, tokenization included,
 * on the native backend and on webgpu (when there is an adapter; in CI there must be one).
 */
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { shared, skipUnlessShared, REPO_ROOT } from "./shared.js";
import { withLlamaModel, disposeOracleLlama } from "./llama-oracle.js";
import { openWebGpu } from "./backends.js";

after(() => disposeOracleLlama());

const MODEL = shared("models", "tinymoe-trained.gguf");
const N_GEN = 24;

/** The first prose line of a few ../shared/text samples (headings and bullets skipped). */
function prompts(): string[] {
  return ["wikipedia_texts.txt", "c4_texts.txt", "arxiv_texts.txt"].map((f) => {
    const lines = readFileSync(shared("text", f), "utf8").split("\n").map((l) => l.trim());
    const line = lines.find((l) => l.length > 60 && /^[A-Za-z]/.test(l))!;
    return line.split(" ").slice(0, 12).join(" ");
  });
}

/** The backends `run` is checked on: native, and webgpu where an adapter opens (required in CI). */
async function backends(): Promise<string[]> {
  const { gpu, absent } = await openWebGpu();
  if (gpu) { gpu.dispose(); return ["native", "webgpu"]; }
  if (process.env.CI) throw new Error(`CI needs a WebGPU adapter (lavapipe): ${absent}`);
  return ["native"];
}

test("tinymoe-trained: moira run (greedy) prints exactly llama.cpp's greedy text", { skip: skipUnlessShared(), timeout: 300_000 }, async () => {
  const list = prompts();
  assert.equal(list.length, 3);
  const names = await backends();
  await withLlamaModel(MODEL, async (llama) => {
    for (const prompt of list) {
      const bos = 1;
      const tokens = [bos, ...llama.tokenize(prompt)];
      const ids = await llama.greedy(tokens, N_GEN);
      // the continuation's text as node-llama-cpp streams it: decoded after the prompt's tokens (a
      // first word keeps its space)
      const expected = llama.model.detokenize(ids as never, false, tokens as never);
      for (const backend of names) {
        const r = spawnSync(process.execPath, [join(REPO_ROOT, "bin", "moira.js"), "run", "--model", MODEL, "--prompt", prompt,
          "--max-tokens", String(N_GEN), "--temperature", "0", "--backend", backend], { encoding: "utf8" });
        assert.equal(r.status, 0, r.stderr);
        assert.equal(r.stdout, expected + "\n", `${backend}, prompt ${JSON.stringify(prompt)}`);
        assert.match(r.stderr, /decode: \d+ tokens/);
        assert.match(r.stderr, new RegExp(`backend: ${backend}`));
      }
    }
  }, { contextSize: 128 });
});
