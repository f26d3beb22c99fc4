/**
 * Where a prefill log-probability gap to llama.cpp comes from: router near-ties or arithmetic.
 * Prints JSON to stdout.
 *
 *   node --import tsx bench/llama-parity-routing.ts --preset tiny-qwen3moe --type Q4_K [--prompts 3] [--seed 7] [--flips 6]
 *
 * For each prompt:
 * - the gap (max |log p_moira - log p_llama.cpp| over prompt positions and tokens), per position;
 * - moira's router top-k margin at every (layer, token): the k-th largest router logit minus the
 *   (k+1)-th (softmax keeps the order, so this is log(p_k / p_k+1)); the smallest ones, and the
 *   (layer, token) where moira's native backend (int8 activations) and ref backend (float
 *   activations) choose different experts;
 * - counterfactuals: moira native with the router logits at one near-tied (layer, token) nudged
 *   so that the (k+1)-th expert just beats the k-th, and the gap to llama.cpp after that single
 *   flip. A flip that brings the gap down to the level of the other positions is a routing choice
 *   llama.cpp made the other way.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { makeModel } from "../src/tools/make-model/index.js";
import { Model } from "../src/model/model.js";
import { RefBackend } from "../src/backend/ref/ref-backend.js";
import { NativeBackend } from "../src/backend/native/index.js";
import { withLlamaModel, disposeOracleLlama, parityPrompts, moiraLogProbs, routerSpy, type RouterLogits } from "../test/llama-oracle.js";

const { values: a } = parseArgs({
  options: {
    preset: { type: "string", default: "tiny-qwen3moe" },
    type: { type: "string", default: "Q4_K" },
    prompts: { type: "string", default: "3" },
    seed: { type: "string", default: "7" },
    flips: { type: "string", default: "6" },
  },
});

/** Experts in descending logit order (ties to the lower id, as moira's topK). */
function ranked(row: Float32Array): number[] {
  return [...row.keys()].sort((x, y) => row[y]! - row[x]! || x - y);
}

function gapsPerPosition(x: Float64Array[], y: Float64Array[]): number[] {
  return x.map((r, p) => {
    let g = 0;
    for (let i = 0; i < r.length; i++) if (Number.isFinite(r[i]!) && Number.isFinite(y[p]![i]!)) g = Math.max(g, Math.abs(r[i]! - y[p]![i]!));
    return g;
  });
}

const r4 = (x: number) => Math.round(x * 1e4) / 1e4;

const native = NativeBackend.create({ threads: 2 });
const ref = new RefBackend();
const dir = mkdtempSync(join(tmpdir(), "moira-parity-routing-"));
const out: unknown[] = [];
try {
  const path = join(dir, "m.gguf");
  await makeModel({ preset: a.preset!, type: a.type!, seed: Number(a.seed), out: path });
  const model = Model.open(path);
  const cfg = model.config;
  const k = cfg.nExpertUsed, nE = cfg.nExpert;
  try {
    await withLlamaModel(path, async (llama) => {
      for (const prompt of parityPrompts(cfg.vocabSize, Number(a.prompts))) {
        const lpLlama = await llama.logProbs(prompt);
        const nat: RouterLogits = new Map(), rf: RouterLogits = new Map();
        const lpNative = moiraLogProbs(model, routerSpy(native, model, nat), prompt);
        moiraLogProbs(model, routerSpy(ref, model, rf), prompt);
        const gaps = gapsPerPosition(lpNative, lpLlama);

        // router top-k margins (native) and native-vs-ref routing differences
        const sites: Array<{ layer: number; token: number; margin: number; kth: number; next: number; refDiffers: boolean; refMargin: number }> = [];
        for (const [l, logits] of nat) {
          for (let t = 0; t < prompt.length; t++) {
            const row = logits.subarray(t * nE, (t + 1) * nE);
            const rowRef = rf.get(l)!.subarray(t * nE, (t + 1) * nE);
            const o = ranked(row), oRef = ranked(rowRef);
            const setN = new Set(o.slice(0, k));
            const refDiffers = oRef.slice(0, k).some((e) => !setN.has(e));
            sites.push({
              layer: l, token: t, margin: row[o[k - 1]!]! - row[o[k]!]!, kth: o[k - 1]!, next: o[k]!,
              refDiffers, refMargin: rowRef[oRef[k - 1]!]! - rowRef[oRef[k]!]!,
            });
          }
        }
        sites.sort((x, y) => x.margin - y.margin);

        // counterfactual single flips at the nearest ties
        const flips: unknown[] = [];
        for (const s of sites.slice(0, Number(a.flips))) {
          const seen: RouterLogits = new Map();
          const lp = moiraLogProbs(model, routerSpy(native, model, seen, (l, logits) => {
            if (l !== s.layer) return;
            const row = logits.subarray(s.token * nE, (s.token + 1) * nE);
            row[s.next] = row[s.kth]! + Math.max(1e-4, Math.abs(row[s.kth]!) * 1e-5); // just above
          }), prompt);
          const g = gapsPerPosition(lp, lpLlama);
          flips.push({ layer: s.layer, token: s.token, margin: r4(s.margin), gapAfter: r4(Math.max(...g)), perPosition: g.map(r4) });
        }
        const row = {
          preset: a.preset, type: a.type, prompt,
          gap: r4(Math.max(...gaps)), perPosition: gaps.map(r4),
          nearestTies: sites.slice(0, Number(a.flips)).map((s) => ({ ...s, margin: r4(s.margin), refMargin: r4(s.refMargin) })),
          nativeVsRefRoutingDiffers: sites.filter((s) => s.refDiffers).map((s) => ({ layer: s.layer, token: s.token, margin: r4(s.margin), refMargin: r4(s.refMargin) })),
          flips,
        };
        out.push(row);
        process.stderr.write(`${JSON.stringify(row)}\n`);
      }
    });
  } finally {
    model.close();
  }
} finally {
  native.dispose();
  ref.dispose();
  await disposeOracleLlama();
  rmSync(dir, { recursive: true, force: true });
}
process.stdout.write(`${JSON.stringify(out, null, 1)}\n`);
