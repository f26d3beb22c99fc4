/**
 * Fate's prediction, measured by the engine itself: the trained tiny MoE of ../shared runs real
 * text (../shared/text) through an offloading ExpertStore with the `fate` predictor, the prefetch
 * width pinned to k and then 2k, and the store's own statistics (OffloadStats.prediction: each
 * decode token's prediction for layer l+1, made from layer l's gate input, against the experts
 * layer l+1 then selects) must show the accuracy bench/prediction.ts measures on this model
 * (77.5 % at k, recall 94.5 % at 2k), less a few points. Random guessing gives k/n = 25 % at k
 * and 50 % recall at 2k; a predictor that ranks experts the wrong way round gets almost nothing.
 *
 * Tokens are fed one at a time after a short prompt (teacher forcing), so every scored prediction
 * is one token's. Skips without ../shared or the native addon, except in CI (env CI), where that fails.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { Model } from "../src/model/model.js";
import { Session } from "../src/engine/session.js";
import { loadTokenizer } from "../src/engine/tokenizer/index.js";
import { createExpertProvider } from "../src/cli/offload-options.js";
import { planMemory } from "../src/offload/planner.js";
import { PredictionStats } from "../src/offload/predictor.js";
import type { Backend } from "../src/backend/backend.js";
import { HAVE_SHARED, shared, skipWithoutShared } from "./shared.js";

const MODEL = shared("models", "tinymoe-trained.gguf");
const TEXTS = ["wikipedia_texts.txt", "c4_texts.txt", "arxiv_texts.txt", "github_oss_with_stack_texts.txt"];
/** the model's context */
const CONTEXT = 128;
const PROMPT = 16;

// floors: measured here 76.9 % at k (layers 62.2 / 83.1 / 85.4) and 94.3 % recall at 2k (layers 84.6 / 98.5 / 99.7), 444 tokens
const PRECISION_AT_K = 0.74;
const LAYER_PRECISION_AT_K = 0.58;
const RECALL_AT_2K = 0.91;
const LAYER_RECALL_AT_2K = 0.8;

async function nativeBackend(): Promise<Backend | string> {
  try {
    const { NativeBackend } = await import("../src/backend/native/index.js");
    return NativeBackend.create({ threads: 2 });
  } catch (e) {
    if (process.env.CI) throw e; // the native addon must be built in CI
    return `native addon not built (the ExpertStore reads with it): ${(e as Error).message}`;
  }
}

/** Token ids of real text: per sample file, its first long lines, one context's worth. */
function textSequences(model: Model): number[][] {
  const tok = loadTokenizer(model.file);
  return TEXTS.map((f) => {
    const lines = readFileSync(shared("text", f), "utf8").split("\n").filter((l) => l.length > 100);
    return tok.encode(lines.slice(0, 8).join("\n"), { addBos: true }).slice(0, CONTEXT - 1);
  });
}

interface Measured { stats: PredictionStats; decodeTokens: number; nLayer: number; k: number; nExpert: number }

/** Runs the texts through an ExpertStore (fate policy and predictor) with prefetch width `width`. */
function measure(backend: Backend, width: number): Measured {
  const model = Model.open(MODEL);
  try {
    const cfg = model.config;
    const probe = planMemory(model, { budget: 2 ** 40, contextLength: CONTEXT, maxBatch: PROMPT, policy: "fate" });
    // a quarter of the experts cacheable: most predictions name experts that are not resident
    const budget = probe.minimumBytes + Math.floor(probe.allExpertSlots / 4) * probe.slotBytes;
    const handle = createExpertProvider(model, { memoryBudget: budget, policy: "fate", predictor: "fate", prefetchWidth: width },
      backend, { contextLength: CONTEXT, maxBatch: PROMPT });
    try {
      assert.equal(handle.store!.width, width, "the prefetch width is the one asked for");
      const stats = new PredictionStats(cfg.nLayer);
      let decodeTokens = 0;
      for (const ids of textSequences(model)) {
        assert.ok(ids.length > PROMPT + 64, "a long enough text");
        const session = new Session(model, { backend, experts: handle.provider, contextLength: CONTEXT });
        session.prefill(ids.slice(0, PROMPT));
        handle.stats!.reset(); // score decode predictions only: one token's each
        for (const t of ids.slice(PROMPT)) session.decodeStep(t);
        decodeTokens += ids.length - PROMPT;
        stats.merge(handle.stats!.prediction);
      }
      return { stats, decodeTokens, nLayer: cfg.nLayer, k: cfg.nExpertUsed, nExpert: cfg.nExpert };
    } finally {
      handle.dispose();
    }
  } finally {
    model.close();
  }
}

const pct = (x: number) => `${(100 * x).toFixed(1)} %`;

test("fate prediction on the trained tiny MoE: the store's precision at k and recall at 2k reach the measured accuracy",
  { skip: process.env.CI ? false : skipWithoutShared, timeout: 300_000 }, async (t) => {
    assert.ok(HAVE_SHARED, `CI must run the prediction test: ${skipWithoutShared}`);
    const backend = await nativeBackend();
    if (typeof backend === "string") { t.skip(backend); return; }
    try {
      const probe = Model.open(MODEL);
      const topK = probe.config.nExpertUsed;
      probe.close();
      for (const width of [topK, 2 * topK]) {
        const m = measure(backend, width);
        const s = m.stats;
        const perLayer = (f: (l: number) => number) => Array.from({ length: m.nLayer - 1 }, (_, i) => pct(f(i + 1))).join(" / ");
        const where = `width ${width}: precision ${pct(s.precision())} (layers ${perLayer((l) => s.precision(l))}), ` +
          `recall ${pct(s.recall())} (layers ${perLayer((l) => s.recall(l))}) over ${m.decodeTokens} tokens`;
        t.diagnostic(where);
        // every decode token scored once per predicted layer (1..n-1), at the pinned width
        const scored = m.decodeTokens * (m.nLayer - 1);
        assert.equal(s.predicted[0], 0, "layer 0 is never predicted");
        assert.equal(s.predicted.reduce((a, b) => a + b, 0), scored * width, `${where}: predictions of ${width} experts`);
        assert.equal(s.actual.reduce((a, b) => a + b, 0), scored * m.k, `${where}: k experts selected per layer`);
        if (width === m.k) {
          // k' = k: precision and recall are one number
          assert.ok(Math.abs(s.precision() - s.recall()) < 1e-12, where);
          assert.ok(s.precision() >= PRECISION_AT_K, `${where}: precision at k below ${pct(PRECISION_AT_K)}`);
          for (let l = 1; l < m.nLayer; l++) assert.ok(s.precision(l) >= LAYER_PRECISION_AT_K, `${where}: layer ${l} below ${pct(LAYER_PRECISION_AT_K)}`);
        } else {
          assert.ok(Math.abs(s.precision() - s.recall() / 2) < 1e-12, `${where}: precision at 2k is half the recall`);
          assert.ok(s.recall() >= RECALL_AT_2K, `${where}: recall at 2k below ${pct(RECALL_AT_2K)}`);
          for (let l = 1; l < m.nLayer; l++) assert.ok(s.recall(l) >= LAYER_RECALL_AT_2K, `${where}: layer ${l} below ${pct(LAYER_RECALL_AT_2K)}`);
        }
      }
    } finally {
      backend.dispose();
    }
  });
