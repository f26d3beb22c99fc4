/**
 * moira vs llama.cpp parity per weight type, on make-model GGUFs: the numbers behind
 * test/llama-exactness.test.ts and the README's parity table. Prints JSON to stdout (the per-type
 * summary; --runs adds every run), progress to stderr.
 *
 *   node --import tsx bench/llama-parity.ts [--presets tiny,tiny-qwen3moe] [--types Q4_K,Q5_K]
 *     [--prompts 3] [--gen 16] [--seed 7] [--out-margin 0.25] [--router-margin 0.05] [--runs]
 *
 * Per (preset, type, prompt) see ParityRun in test/llama-oracle.ts: greedy continuations
 * identical or the step where they part with moira's top-2 logit margin there (and, when that
 * margin exceeds --out-margin, the router near-tie whose flip explains it); the prefill
 * log-probability gap, raw and after flipping router decisions with margin <= --router-margin.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { makeModel } from "../src/tools/make-model/index.js";
import { Model } from "../src/model/model.js";
import { ARCHITECTURES } from "../src/model/registry.js";
import { loadTokenizer } from "../src/engine/tokenizer/index.js";
import { NativeBackend } from "../src/backend/native/index.js";
import { RefBackend } from "../src/backend/ref/ref-backend.js";
import { withLlamaModel, disposeOracleLlama, parityPrompts, parityRun, moiraGreedy, moiraLogProbs, type ParityRun, type OracleModel } from "../test/llama-oracle.js";

const { values: a } = parseArgs({
  options: {
    presets: { type: "string", default: ARCHITECTURES.flatMap((x) => Object.keys(x.makeModel.presets).filter((p) => p.startsWith("tiny"))).join(",") },
    types: { type: "string", default: "F32,F16,BF16,Q8_0,Q4_0,Q4_K,Q5_K,Q6_K,MXFP4" },
    prompts: { type: "string", default: "3" },
    gen: { type: "string", default: "16" },
    seed: { type: "string", default: "7" },
    "out-margin": { type: "string", default: "0.25" },
    "router-margin": { type: "string", default: "0.05" },
    runs: { type: "boolean", default: false },
    // "ref": compare moira's native backend with moira's ref backend (float activations) instead
    // of llama.cpp: the same measures for moira's own int8 activation rounding
    against: { type: "string", default: "llama" },
  },
});
const opts = { nGen: Number(a.gen), outMargin: Number(a["out-margin"]), routerMargin: Number(a["router-margin"]) };
const r4 = (x: number) => Math.round(x * 1e4) / 1e4;

const backend = NativeBackend.create({ threads: 2 });
const dir = mkdtempSync(join(tmpdir(), "moira-parity-"));
const runs: Array<ParityRun & { preset: string; type: string }> = [];
try {
  for (const preset of a.presets!.split(",")) {
    for (const type of a.types!.split(",")) {
      const path = join(dir, `${preset}-${type}.gguf`);
      await makeModel({ preset, type, seed: Number(a.seed), out: path });
      const model = Model.open(path);
      const eos = new Set(loadTokenizer(model.file).eosIds);
      try {
        const ref = new RefBackend();
        const refOracle = {
          greedy: async (p: readonly number[], n: number) => moiraGreedy(model, ref, p, n).ids,
          logProbs: async (p: readonly number[]) => moiraLogProbs(model, ref, p),
        } as OracleModel;
        const against = a.against === "ref" ? <T>(_: string, fn: (m: OracleModel) => Promise<T>) => fn(refOracle) : withLlamaModel;
        await against(path, async (llama) => {
          for (const prompt of parityPrompts(model.config.vocabSize, Number(a.prompts))) {
            const run = { preset, type, ...(await parityRun(model, backend, llama, prompt, { ...opts, eos })) };
            runs.push(run);
            const d = run.divergence;
            process.stderr.write(`${preset} ${type} [${prompt}] ${run.identical ? "identical" : `diverge step ${d!.step} margin ${d!.margin.toFixed(4)}${d!.flip !== undefined ? ` flip ${JSON.stringify(d!.flip)}` : ""}`} gap ${run.prefillGap.toFixed(4)} residual ${run.residualGap.toFixed(4)} flipMargin ${run.flipMargin.toFixed(4)}\n`);
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
  await disposeOracleLlama();
  rmSync(dir, { recursive: true, force: true });
}

const summary = a.types!.split(",").map((type) => {
  const rs = runs.filter((r) => r.type === type);
  const divs = rs.flatMap((r) => (r.divergence ? [r.divergence] : []));
  const byOutput = divs.filter((d) => d.flip === undefined);
  const byRouter = divs.filter((d) => d.flip);
  return {
    type, runs: rs.length, identical: rs.filter((r) => r.identical).length,
    divergences: divs.length,
    maxOutputMargin: r4(Math.max(0, ...byOutput.map((d) => d.margin))),
    explainedByRouterFlip: byRouter.length,
    maxDivergenceRouterMargin: r4(Math.max(0, ...byRouter.map((d) => d.flip!.margin))),
    unexplained: divs.filter((d) => d.flip === null).length,
    maxPrefillGap: r4(Math.max(...rs.map((r) => r.prefillGap))),
    maxResidualGap: r4(Math.max(...rs.map((r) => r.residualGap))),
    maxFlipMargin: r4(Math.max(...rs.map((r) => r.flipMargin))),
  };
});
process.stdout.write(`${JSON.stringify(a.runs ? { summary, runs } : { summary }, null, 1)}\n`);
