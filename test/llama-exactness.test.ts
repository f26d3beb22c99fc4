/**
 * Parity with llama.cpp (node-llama-cpp's prebuilt CPU build), per weight type: for every
 * architecture make-model writes (each one's tiny presets) and 3 prompts, moira's greedy continuation
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
 * - routing: one router decision earlier on was nearly tied (router margin = how far, in router
 *   logits, it is from going the other way, see RouterSite: for softmax gating the k-th largest
 *   router logit minus the (k+1)-th, i.e. log(p_k / p_k+1); at most `ROUTER_MARGIN`) and
 *   llama.cpp took the other expert: flipping that single decision in moira puts llama.cpp's
 *   token within OUT_MARGIN of moira's best. A flipped expert moves that token's log-probs by
 *   1-2.5 on these random weights, up to ~9 with GLM-4.5's scaled sigmoid routing (the raw
 *   prefill gaps of 2 to 9 came from such flips).
 * So per type: at least `IDENTICAL_FLOOR` of the 3 continuations per preset identical; every divergence
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
import { makeModel, PRESETS as SHAPES } from "../src/tools/make-model/index.js";
import { Model } from "../src/model/model.js";
import { ARCHITECTURES } from "../src/model/registry.js";
import { loadTokenizer } from "../src/engine/tokenizer/index.js";
import { withLlamaModel, disposeOracleLlama, llamaMissing, parityPrompts, parityRun, type ParityRun } from "./llama-oracle.js";
import { nativeOrRef } from "./backends.js";

after(() => disposeOracleLlama());

/** Every tiny preset of every architecture (its default and its variants), from the registry. */
const TINY_PRESETS = ARCHITECTURES.flatMap((a) => Object.keys(a.makeModel.presets).filter((name) => name.startsWith("tiny")));
/** Those with DeepSeek-V3's group-limited routing (tiny-deepseek3), held to V3_BOUNDS; the others to BOUNDS. */
const V3_PRESETS = TINY_PRESETS.filter((name) => (SHAPES[name]!.routing?.groups ?? 1) > 1);
const PRESETS = TINY_PRESETS.filter((name) => !V3_PRESETS.includes(name));
const N_PROMPTS = 3;
const N_GEN = 16;
/** router decisions this close (in router logits) may go either way between the engines */
const ROUTER_MARGIN = 0.03;

/** every continuation */
const ALL = PRESETS.length * N_PROMPTS;

interface TypeBounds {
  /** identical continuations (of ALL), at least */
  identicalFloor: number;
  /** moira's top-2 logit margin at a divergence explained by the output alone, at most */
  outMargin: number;
  /** prefill log-prob gap after router near-ties, at most */
  gap: number;
}

// Measured on the dev box (AVX-512; moira native): identical / max output margin / max gap after
// flips, over 6 presets; then what tiny-glm4moe adds (its identical of 3 / output margins / gap);
// the floors also count tiny-gpt-oss's identical continuations (listed below)
const BOUNDS: Record<string, TypeBounds> = {
  F32: { identicalFloor: ALL, outMargin: 0, gap: 0.02 }, //     18 / -     / 0.0099; glm4moe 3 / - / 0.0072
  F16: { identicalFloor: ALL, outMargin: 0, gap: 0.025 }, //    18 / -     / 0.0136; glm4moe 3 / - / 0.0116
  BF16: { identicalFloor: 22, outMargin: 0.02, gap: 0.12 }, //  17 / 0.004 / 0.079;  glm4moe 3 / - / 0.077
  Q8_0: { identicalFloor: 14, outMargin: 0.2, gap: 0.42 }, //   11 / 0.144 / 0.321;  glm4moe 2 / 0.099 / 0.279 (raw 9.53)
  Q4_0: { identicalFloor: 13, outMargin: 0.1, gap: 0.48 }, //   11 / 0.042 / 0.370 (raw 1.745); glm4moe 2 / 0.024 / 0.278
  Q4_K: { identicalFloor: 13, outMargin: 0.25, gap: 0.65 }, // 13 / 0.192 / 0.533 (raw 2.472); glm4moe 1 / 0.099, 0.152 / 0.419
  Q5_K: { identicalFloor: 12, outMargin: 0.25, gap: 0.7 }, //  10 / 0.200 / 0.565;  glm4moe 2 / 0.033 / 0.389
  Q6_K: { identicalFloor: 12, outMargin: 0.2, gap: 0.6 }, //    10 / 0.102 / 0.481;  glm4moe 1 / 0.091, 0.144 / 0.439
  // llama.cpp's MXFP4_MOE file type: experts MXFP4, the other matrices Q8_0
  MXFP4: { identicalFloor: 16, outMargin: 0.1, gap: 0.5 }, //  14 / 0.013 / 0.392 (raw 0.931); glm4moe 2 / 0.022 / 0.301 (raw 6.96)
};
// tiny-gpt-oss (biased router over 4 of 8 experts, biased clamped-SwiGLU experts, sinks, a window
// of 16 on layers 0 and 2, YaRN): identical of 3 / divergences (output margin, or the router flip
// that explains it) / max gap after flips (raw). The window is outgrown by every continuation.
//   F32 3 / - / 0.014;  F16 3 / - / 0.016;  BF16 3 / - / 0.092;  Q8_0 3 / - / 0.342;
//   Q4_0 2 / flip 0.0263 / 0.276;  Q4_K 1 / 0.089, flip 0.0007 / 0.452;  Q5_K 2 / flip 0.0231 / 0.422 (raw 1.758);
//   Q6_K 3 / - / 0.470;  MXFP4 2 / 0.010 / 0.300 (raw 1.513)

/**
 * DeepSeek-V3's routing over MLA at tiny size (tiny-deepseek3: sigmoid scores with a selection
 * bias, 4 of 16 experts from the best 2 of 4 groups, weights renormalised and scaled by 2.5):
 * float weights as above (F16: one router near-tie of 0.0008 parts one continuation, the flip
 * explains it); quantized weights part at near-ties in most continuations. Each decision has more
 * ways to go (any of 16 experts, and whole groups), so near-ties are denser; the routed experts
 * carry 2.5x the weight, so a flipped expert moves log-probs by 2-6 and can make a near-tie further
 * on (parityRun's chains of two flips); llama.cpp's router logits wander further from moira's
 * (quantized activations in its absorbed MLA as well), up to 0.093. Measured at seed 7:
 * identical / max output margin / max gap after flips.
 */
const V3_ROUTER_MARGIN = 0.1;
const V3_BOUNDS: Record<string, TypeBounds> = {
  F32: { identicalFloor: 3, outMargin: 0, gap: 0.02 }, //       3 / -     / 0.0145
  F16: { identicalFloor: 2, outMargin: 0, gap: 0.025 }, //      2 / -     / 0.0175 (router flip, margin 0.0008)
  BF16: { identicalFloor: 2, outMargin: 0.02, gap: 0.2 }, //    2 / 0.012 / 0.142 (raw 1.93)
  Q8_0: { identicalFloor: 1, outMargin: 0.1, gap: 0.6 }, //     1 / 0.057 / 0.500 (raw 2.11)
  Q4_0: { identicalFloor: 0, outMargin: 0.25, gap: 0.55 }, //   0 / 0.223 / 0.429 (raw 5.84)
  Q4_K: { identicalFloor: 0, outMargin: 0.3, gap: 1.0 }, //     0 / 0.249 / 0.810 (raw 5.35)
  Q5_K: { identicalFloor: 0, outMargin: 0.3, gap: 0.8 }, //     0 / 0.236 / 0.664 (raw 5.78)
  Q6_K: { identicalFloor: 1, outMargin: 0.15, gap: 0.75 }, //   1 / 0.116 / 0.604
  MXFP4: { identicalFloor: 0, outMargin: 0.25, gap: 0.55 }, //  0 / 0.218 / 0.439 (raw 2.98)
};

/** The presets, bounds and router margin each test holds. */
const FAMILIES = [
  { name: "every architecture", presets: PRESETS, bounds: BOUNDS, routerMargin: ROUTER_MARGIN },
  { name: "DeepSeek-V3's routing", presets: V3_PRESETS, bounds: V3_BOUNDS, routerMargin: V3_ROUTER_MARGIN },
];

const r3 = (x: number) => x.toFixed(3);

function describe(preset: string, r: ParityRun): string {
  const d = r.divergence!;
  const why = d.flip === undefined ? `output margin ${r3(d.margin)}`
    : d.flip ? `output margin ${r3(d.margin)}, router flip at layer ${d.flip.layer} token ${d.flip.token} (router margin ${d.flip.margin.toFixed(4)})`
    : `output margin ${r3(d.margin)}, no router near-tie explains it`;
  return `${preset} [${r.prompt}] step ${d.step} (${why}): moira [${d.moira}] llama.cpp [${d.llama}]`;
}

for (const { name, presets, bounds: familyBounds, routerMargin } of FAMILIES) for (const [type, bounds] of Object.entries(familyBounds)) {
  test(`llama.cpp parity, ${type}: greedy continuations and prefill log-probs of ${name}`, { timeout: 300_000 }, async (t) => {
    const missing = await llamaMissing();
    if (missing) return t.skip(missing);
    const backend = await nativeOrRef();
    if (backend.name !== "native") {
      backend.dispose();
      return t.skip("the bounds are measured with the native backend (int8 activations); build the addon");
    }
    const dir = mkdtempSync(join(tmpdir(), "moira-llama-"));
    const runs: Array<ParityRun & { preset: string }> = [];
    try {
      for (const preset of presets) {
        const path = join(dir, `${preset}-${type}.gguf`);
        await makeModel({ preset, type, seed: 7, out: path });
        const model = Model.open(path);
        const eos = new Set(loadTokenizer(model.file).eosIds);
        try {
          await withLlamaModel(path, async (llama) => {
            for (const prompt of parityPrompts(model.config.vocabSize, N_PROMPTS)) {
              const run = await parityRun(model, backend, llama, prompt, { nGen: N_GEN, eos, outMargin: bounds.outMargin, routerMargin });
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

    assert.equal(runs.length, presets.length * N_PROMPTS);
    // every divergence is a near-tie: of the output at that step, or of one earlier router decision
    const unexplained = diverged.filter((r) => r.divergence!.flip === null);
    assert.deepEqual(unexplained.map((r) => describe(r.preset, r)), [], `${type}: divergences no near-tie explains`);
    for (const r of diverged) {
      const d = r.divergence!;
      assert.ok(d.margin <= bounds.outMargin || (d.flip && d.flip.margin <= routerMargin), describe(r.preset, r));
    }
    assert.ok(identical >= bounds.identicalFloor, `${type}: only ${identical} of ${runs.length} continuations identical (floor ${bounds.identicalFloor})`);
    assert.ok(worst.residualGap <= bounds.gap, `${type}: prefill log-prob gap ${worst.residualGap} (${worst.preset} [${worst.prompt}]) exceeds ${bounds.gap} even after flipping router near-ties (raw ${worst.prefillGap})`);
  });
}
