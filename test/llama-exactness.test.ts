/**
 * Parity with llama.cpp (node-llama-cpp's prebuilt CPU build), per weight type: for every
 * architecture make-model writes (each one's default tiny preset: 6) and 3 prompts, moira's greedy continuation
 * (16 tokens) against llama.cpp's, and moira's prefill log-probabilities against llama.cpp's.
 *
 * Float weights (F32, F16): every continuation identical, log-probabilities within ~0.01.
 *
 * Quantized weights: llama.cpp rounds activations its own way (to f16 / bf16 for F16 / BF16
 * weights, to int8 blocks for the quantized ones, with other scales than moira's), which moves
 * log-probabilities by a few tenths on these random models. Two kinds of near-tie then decide
 * whether a continuation stays identical:
 * - output: at the step where the continuations part, moira's top-2 logit margin (its best
 *   logit minus its second best) is small: `OUT_MARGIN` per type;
 * - routing: one router decision earlier on was nearly tied (router margin = the k-th largest
 *   router logit minus the (k+1)-th, i.e. log(p_k / p_k+1), at most `ROUTER_MARGIN`) and
 *   llama.cpp took the other expert: flipping that single decision in moira puts llama.cpp's
 *   token within OUT_MARGIN of moira's best. A flipped expert moves that token's log-probs by
 *   1-2.5 on these random weights (the prefill gaps of ~2 for Q4_K came from such flips).
 * So per type: at least `IDENTICAL_FLOOR` of 18 continuations identical; every divergence
 * explained by one of the two near-ties; and the prefill log-prob gap, after flipping router
 * near-ties (per position the smaller of its gap with and without one flip), under `GAP`.
 * The bounds are measured values plus a little (bench/llama-parity.ts prints them); the same
 * measures between moira's own native backend (int8 activations) and its ref backend (float
 * activations) come out alike (bench/llama-parity.ts --against ref).
 */
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { makeModel } from "../src/tools/make-model/index.js";
import { Model } from "../src/model/model.js";
import { ARCHITECTURES } from "../src/model/registry.js";
import { loadTokenizer } from "../src/engine/tokenizer/index.js";
import { withLlamaModel, disposeOracleLlama, getOracleLlama, parityPrompts, parityRun, type ParityRun } from "./llama-oracle.js";
import { nativeOrRef } from "./backends.js";

after(() => disposeOracleLlama());

const PRESETS = ARCHITECTURES.map((a) => a.makeModel.defaultPreset);
const N_PROMPTS = 3;
const N_GEN = 16;
/** router decisions this close (in router logits) may go either way between the engines */
const ROUTER_MARGIN = 0.03;

interface TypeBounds {
  /** identical continuations of 18, at least */
  identicalFloor: number;
  /** moira's top-2 logit margin at a divergence explained by the output alone, at most */
  outMargin: number;
  /** prefill log-prob gap after router near-ties, at most */
  gap: number;
}

// Measured on the dev box (AVX-512; moira native): identical / max output margin / max gap after flips
const BOUNDS: Record<string, TypeBounds> = {
  F32: { identicalFloor: 18, outMargin: 0, gap: 0.02 }, //      18 / -     / 0.0099
  F16: { identicalFloor: 18, outMargin: 0, gap: 0.025 }, //     18 / -     / 0.0136
  BF16: { identicalFloor: 16, outMargin: 0.02, gap: 0.12 }, //  17 / 0.004 / 0.079
  Q8_0: { identicalFloor: 9, outMargin: 0.2, gap: 0.42 }, //    11 / 0.144 / 0.321
  Q4_0: { identicalFloor: 9, outMargin: 0.1, gap: 0.48 }, //    11 / 0.042 / 0.370 (raw 1.745)
  Q4_K: { identicalFloor: 11, outMargin: 0.25, gap: 0.65 }, //  13 / 0.192 / 0.533 (raw 2.472)
  Q5_K: { identicalFloor: 8, outMargin: 0.25, gap: 0.7 }, //    10 / 0.200 / 0.565
  Q6_K: { identicalFloor: 8, outMargin: 0.15, gap: 0.6 }, //    10 / 0.102 / 0.481
  // llama.cpp's MXFP4_MOE file type: experts MXFP4, the other matrices Q8_0
  MXFP4: { identicalFloor: 12, outMargin: 0.1, gap: 0.5 }, //   14 / 0.013 / 0.392 (raw 0.931)
};

async function llamaAvailable(): Promise<string | null> {
  try {
    await getOracleLlama();
    return null;
  } catch (e) {
    if (process.env.CI) throw e; // node-llama-cpp and its prebuilt binary must be there in CI
    return `node-llama-cpp is not available: ${(e as Error).message}`;
  }
}

const r3 = (x: number) => x.toFixed(3);

function describe(preset: string, r: ParityRun): string {
  const d = r.divergence!;
  const why = d.flip === undefined ? `output margin ${r3(d.margin)}`
    : d.flip ? `output margin ${r3(d.margin)}, router flip at layer ${d.flip.layer} token ${d.flip.token} (router margin ${d.flip.margin.toFixed(4)})`
    : `output margin ${r3(d.margin)}, no router near-tie explains it`;
  return `${preset} [${r.prompt}] step ${d.step} (${why}): moira [${d.moira}] llama.cpp [${d.llama}]`;
}

for (const [type, bounds] of Object.entries(BOUNDS)) {
  test(`llama.cpp parity, ${type}: greedy continuations and prefill log-probs of every architecture`, { timeout: 300_000 }, async (t) => {
    const missing = await llamaAvailable();
    if (missing) return t.skip(missing);
    const backend = await nativeOrRef();
    if (backend.name !== "native") {
      backend.dispose();
      return t.skip("the bounds are measured with the native backend (int8 activations); build the addon");
    }
    const dir = mkdtempSync(join(tmpdir(), "moira-llama-"));
    const runs: Array<ParityRun & { preset: string }> = [];
    try {
      for (const preset of PRESETS) {
        const path = join(dir, `${preset}-${type}.gguf`);
        await makeModel({ preset, type, seed: 7, out: path });
        const model = Model.open(path);
        const eos = new Set(loadTokenizer(model.file).eosIds);
        try {
          await withLlamaModel(path, async (llama) => {
            for (const prompt of parityPrompts(model.config.vocabSize, N_PROMPTS)) {
              const run = await parityRun(model, backend, llama, prompt, { nGen: N_GEN, eos, outMargin: bounds.outMargin, routerMargin: ROUTER_MARGIN });
              runs.push({ preset, ...run });
            }
          });
        } finally {
          model.close();
          rmSync(path);
        }
      }
    } finally {
      backend.dispose();
      rmSync(dir, { recursive: true, force: true });
    }

    const diverged = runs.filter((r) => r.divergence);
    for (const r of diverged) t.diagnostic(`${type} divergence: ${describe(r.preset, r)}`);
    const identical = runs.length - diverged.length;
    const worst = runs.reduce((a, b) => (b.residualGap > a.residualGap ? b : a));
    const rawWorst = runs.reduce((a, b) => (b.prefillGap > a.prefillGap ? b : a));
    t.diagnostic(`${type}: ${identical}/${runs.length} identical; prefill log-prob gap ${r3(rawWorst.prefillGap)} (${rawWorst.preset}), ${r3(worst.residualGap)} after router near-ties (${worst.preset}); largest router margin flipped ${Math.max(...runs.map((r) => r.flipMargin)).toFixed(4)}`);

    assert.equal(runs.length, PRESETS.length * N_PROMPTS);
    // every divergence is a near-tie: of the output at that step, or of one earlier router decision
    const unexplained = diverged.filter((r) => r.divergence!.flip === null);
    assert.deepEqual(unexplained.map((r) => describe(r.preset, r)), [], `${type}: divergences no near-tie explains`);
    for (const r of diverged) {
      const d = r.divergence!;
      assert.ok(d.margin <= bounds.outMargin || (d.flip && d.flip.margin <= ROUTER_MARGIN), describe(r.preset, r));
    }
    assert.ok(identical >= bounds.identicalFloor, `${type}: only ${identical} of ${runs.length} continuations identical (floor ${bounds.identicalFloor})`);
    assert.ok(worst.residualGap <= bounds.gap, `${type}: prefill log-prob gap ${worst.residualGap} (${worst.preset} [${worst.prompt}]) exceeds ${bounds.gap} even after flipping router near-ties (raw ${worst.prefillGap})`);
  });
}
