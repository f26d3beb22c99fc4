/**
 * Quality cost of low-bit experts (Fate's IO quantization, HOBBIT's mixed precision) on the trained
 * tiny MoE: the model reads ../shared/text token by token with an LRU expert cache of 8 slots;
 * misses whose routing probability is below W (`--lowbit-miss W`), or prompt experts wanted by at
 * most N tokens (`--lowbit-prefill N`), are served from a low-bit sidecar. Against the
 * full-precision run: mean KL divergence of next-token distributions, perplexity, greedy (argmax)
 * agreement, and the share of expert uses served low-bit. JSON lines to stdout.
 *
 *   node --import tsx bench/lowbit-quality.ts [--types Q2_K,Q4_0] [--weights 0.05,0.15,1] [--tokens 120]
 */
import { readFileSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { Model } from "../src/model/model.js";
import { Session } from "../src/engine/session.js";
import { NativeBackend } from "../src/backend/native/index.js";
import { loadTokenizer } from "../src/engine/tokenizer/index.js";
import { ExpertStore, planMemory, writeLowbitSidecar, openLowbitSidecar, OffloadStats } from "../src/offload/index.js";

const { values: a } = parseArgs({
  options: {
    model: { type: "string", default: "../shared/models/tinymoe-trained.gguf" },
    text: { type: "string", default: "../shared/text" },
    types: { type: "string", default: "Q2_K,Q4_0" },
    weights: { type: "string", default: "0.05,0.15,1" },
    prefill: { type: "string", default: "2,8,24" },
    tokens: { type: "string", default: "120" },
  },
});
const model = Model.open(a.model!);
const backend = NativeBackend.create({ threads: 2 });
const tok = loadTokenizer(model.file);
const V = model.config.vocabSize;
const nTok = Math.min(Number(a.tokens), model.config.contextLength - 1);
// one prose passage per English domain
const samples = ["wikipedia_texts.txt", "c4_texts.txt", "arxiv_texts.txt"].map((f) => {
  const lines = readFileSync(join(a.text!, f), "utf8").split("\n").filter((l) => l.length > 200 && /^[A-Za-z]/.test(l));
  return tok.encode(lines.slice(0, 4).join(" "), { addBos: true }).slice(0, nTok);
});

/** Per-position logits, token by token (decode path) or as one prompt (prefill path). */
function run(ids: number[], mode: "decode" | "prefill", experts?: ExpertStore): Float32Array[] {
  const s = new Session(model, { backend, experts, contextLength: ids.length + 1 });
  if (mode === "prefill") {
    const all = s.forward(ids, { allLogits: true });
    return ids.map((_, i) => all.subarray(i * V, (i + 1) * V));
  }
  return ids.map((t) => s.decodeStep(t).slice());
}
const logSoftmax = (l: Float32Array) => {
  let m = -Infinity; for (const x of l) m = Math.max(m, x);
  let z = 0; for (const x of l) z += Math.exp(x - m);
  const lz = m + Math.log(z);
  return Float64Array.from(l, (x) => x - lz);
};
function compare(ids: number[], ref: Float32Array[], out: Float32Array[]) {
  let kl = 0, nllR = 0, nllL = 0, agree = 0, n = 0;
  for (let i = 0; i < ids.length - 1; i++) {
    const p = logSoftmax(ref[i]), q = logSoftmax(out[i]);
    for (let v = 0; v < V; v++) kl += Math.exp(p[v]) * (p[v] - q[v]);
    nllR -= p[ids[i + 1]]; nllL -= q[ids[i + 1]];
    let x = 0, y = 0;
    for (let v = 1; v < V; v++) { if (p[v] > p[x]) x = v; if (q[v] > q[y]) y = v; }
    if (x === y) agree++;
    n++;
  }
  return { n, kl, nllR, nllL, agree };
}

const dir = mkdtempSync(join(tmpdir(), "moira-lowbit-"));
const refs = { decode: samples.map((ids) => run(ids, "decode")), prefill: samples.map((ids) => run(ids, "prefill")) };
for (const type of a.types!.split(",")) {
  const side = join(dir, `experts-${type}.gguf`);
  writeLowbitSidecar(model, type, side);
  const settings = [
    ...a.weights!.split(",").map((w) => ({ mode: "decode" as const, missWeight: Number(w), prefillMaxTokens: 0 })),
    ...a.prefill!.split(",").map((p) => ({ mode: "prefill" as const, missWeight: 0, prefillMaxTokens: Number(p) })),
  ];
  for (const st of settings) {
    const tot = { n: 0, kl: 0, nllR: 0, nllL: 0, agree: 0 }, stats = new OffloadStats(model.config.nLayer);
    samples.forEach((ids, k) => {
      const probe = planMemory(model, { budget: 2 ** 50, contextLength: ids.length + 1, maxBatch: ids.length });
      const plan = planMemory(model, { budget: probe.minimumBytes + 8 * probe.slotBytes, contextLength: ids.length + 1, maxBatch: ids.length, policy: "lru" });
      const store = new ExpertStore(model.config, model.weights, a.model!, {
        plan, policy: "lru", predictor: "none", backend, stats,
        lowbit: { source: openLowbitSidecar(model, side), missWeight: st.missWeight, prefillMaxTokens: st.prefillMaxTokens },
      });
      const c = compare(ids, refs[st.mode][k], run(ids, st.mode, store));
      store.dispose();
      for (const key of Object.keys(tot) as Array<keyof typeof tot>) tot[key] += c[key];
    });
    const t = stats.total();
    process.stdout.write(JSON.stringify({
      type, mode: st.mode, lowbitMiss: st.missWeight || undefined, lowbitPrefill: st.prefillMaxTokens || undefined,
      positions: tot.n, meanKL: +(tot.kl / tot.n).toExponential(3),
      pplFull: +Math.exp(tot.nllR / tot.n).toFixed(2), pplLowbit: +Math.exp(tot.nllL / tot.n).toFixed(2),
      greedyAgreement: +(tot.agree / tot.n).toFixed(4), lowbitShare: +(t.lowbit / Math.max(1, t.accesses)).toFixed(4),
    }) + "\n");
  }
}
backend.dispose();
