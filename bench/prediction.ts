/**
 * Fate predictor accuracy per layer: layer l's gate input pushed through layer l+1's router
 * (`NextLayerRouter`, the store's own predictor) names k' experts for the next layer; against the
 * experts that layer then really routes to, precision = hits / k' and recall = hits / k, at widths
 * k' = k and 2k. Tokens are decoded one at a time (so each prediction is one token's), on:
 * the trained tiny MoE over ../shared/text (a trained router: the honest test), make-model presets
 * (random routers), and the HF fixtures (random ids). JSON to stdout, a markdown table to stderr.
 *
 *   node --import tsx bench/prediction.ts [--tokens 256] [--presets tiny,tiny-olmoe,olmoe-1b-7b]
 */
import { existsSync, mkdtempSync, readFileSync, readdirSync, copyFileSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { Model } from "../src/model/model.js";
import { Session } from "../src/engine/session.js";
import { ResidentExperts, type ExpertProvider, type AcquireHint } from "../src/model/experts.js";
import { NativeBackend } from "../src/backend/native/index.js";
import { loadTokenizer } from "../src/engine/tokenizer/index.js";
import { NextLayerRouter } from "../src/offload/fate-predictor.js";
import { makeModel } from "../src/tools/make-model/index.js";

const { values: a } = parseArgs({
  options: {
    tokens: { type: "string", default: "256" },
    shared: { type: "string", default: "../shared" },
    presets: { type: "string", default: "tiny,tiny-olmoe,olmoe-1b-7b" },
    dir: { type: "string", default: "/tmp/moira-bench" },
  },
});
const backend = NativeBackend.create({ threads: 2 });

/** Wraps the resident experts: scores the pending prediction for each layer, then predicts the next. */
class PredictionProbe implements ExpertProvider {
  private readonly inner: ResidentExperts;
  private readonly router: NextLayerRouter;
  private pending = new Map<number, { k: number[]; k2: number[] }>();
  readonly hits: Array<{ n: number; k: number; k2: number }>;
  constructor(private readonly model: Model) {
    this.inner = new ResidentExperts(model.config, model.weights);
    this.router = new NextLayerRouter(model.config, model.weights, backend);
    this.hits = Array.from({ length: model.config.nLayer }, () => ({ n: 0, k: 0, k2: 0 }));
  }
  acquire(layer: number, experts: readonly number[], hint: AcquireHint) {
    const cfg = this.model.config, k = cfg.nExpertUsed;
    const p = this.pending.get(layer);
    if (p && hint.nTokens === 1) {
      const actual = new Set(experts);
      const h = this.hits[layer];
      h.n++;
      h.k += p.k.filter((e) => actual.has(e)).length;
      h.k2 += p.k2.filter((e) => actual.has(e)).length;
    }
    this.pending.delete(layer);
    if (layer + 1 < cfg.nLayer && layer + 1 >= cfg.leadingDense && hint.nTokens === 1) {
      const order = this.router.predict(layer + 1, hint.gateInput, 1, Math.min(2 * k, cfg.nExpert)).experts;
      this.pending.set(layer + 1, { k: order.slice(0, k), k2: order });
    }
    return this.inner.acquire(layer, experts);
  }
  release(): void {}
}

interface Result { model: string; router: string; tokens: number; k: number; perLayer: Array<{ layer: number; precisionK: number; recallK: number; precision2K: number; recall2K: number }>; mean: { precisionK: number; recall2K: number; precision2K: number } }

function measure(name: string, router: string, path: string, sequences: number[][]): Result {
  const model = Model.open(path);
  const probe = new PredictionProbe(model);
  let tokens = 0;
  for (const ids of sequences) {
    const s = new Session(model, { backend, experts: probe, contextLength: ids.length + 1 });
    for (const t of ids) { s.decodeStep(t); tokens++; }
  }
  const k = model.config.nExpertUsed, k2 = Math.min(2 * k, model.config.nExpert);
  const perLayer = probe.hits.map((h, layer) => ({
    layer,
    precisionK: h.n ? h.k / (h.n * k) : NaN, recallK: h.n ? h.k / (h.n * k) : NaN,
    precision2K: h.n ? h.k2 / (h.n * k2) : NaN, recall2K: h.n ? h.k2 / (h.n * k) : NaN,
  })).filter((r) => !Number.isNaN(r.precisionK));
  const mean = (f: (r: (typeof perLayer)[number]) => number) => perLayer.reduce((s, r) => s + f(r), 0) / perLayer.length;
  model.close();
  return { model: name, router, tokens, k, perLayer, mean: { precisionK: mean((r) => r.precisionK), recall2K: mean((r) => r.recall2K), precision2K: mean((r) => r.precision2K) } };
}

const nTok = Number(a.tokens);
const results: Result[] = [];
function textSequences(path: string, perSeq: number): number[][] {
  const tok = loadTokenizer(Model.open(path).file);
  return ["wikipedia_texts.txt", "c4_texts.txt", "arxiv_texts.txt", "github_oss_with_stack_texts.txt"].map((f) => {
    const lines = readFileSync(join(a.shared!, "text", f), "utf8").split("\n").filter((l) => l.length > 100);
    return tok.encode(lines.slice(0, 8).join("\n"), { addBos: true }).slice(0, perSeq);
  });
}
const trained = join(a.shared!, "models", "tinymoe-trained.gguf");
if (existsSync(trained)) results.push(measure("tinymoe-trained", "trained", trained, textSequences(trained, Math.min(127, Math.ceil(nTok / 4)))));
mkdirSync(a.dir!, { recursive: true });
for (const preset of a.presets!.split(",")) {
  const path = join(a.dir!, `pred-${preset}.gguf`);
  if (!existsSync(path)) await makeModel({ preset, type: "Q8_0", out: path });
  results.push(measure(preset, "random", path, textSequences(path, Math.ceil(nTok / 4))));
}
const fixtures = join(a.shared!, "fixtures", "hf-tiny-moe");
if (existsSync(fixtures)) {
  const tmp = mkdtempSync(join(tmpdir(), "moira-pred-"));
  for (const f of readdirSync(fixtures).filter((x) => x.endsWith("_config.json"))) {
    const name = f.replace(/_config\.json$/, ""), dir = join(tmp, name);
    mkdirSync(dir);
    copyFileSync(join(fixtures, f), join(dir, "config.json"));
    copyFileSync(join(fixtures, `${name}.safetensors`), join(dir, "model.safetensors"));
    const vocab = Model.open(dir).config.vocabSize;
    let x = 7;
    const ids = Array.from({ length: 48 }, () => { x = (x * 1103515245 + 12345) >>> 0; return x % vocab; });
    results.push(measure(`hf:${name}`, "random", dir, [ids]));
  }
}
process.stdout.write(JSON.stringify({ bench: "prediction", results }, null, 2) + "\n");
const pct = (v: number) => (100 * v).toFixed(1);
process.stderr.write("| model | router | tokens | k | precision = recall at k' = k | recall at 2k | precision at 2k | per layer (precision at k) |\n|---|---|---|---|---|---|---|---|\n");
for (const r of results) {
  process.stderr.write(`| ${r.model} | ${r.router} | ${r.tokens} | ${r.k} | ${pct(r.mean.precisionK)} % | ${pct(r.mean.recall2K)} % | ${pct(r.mean.precision2K)} % | ${r.perLayer.map((l) => pct(l.precisionK)).join(" / ")} |\n`);
}
backend.dispose();
