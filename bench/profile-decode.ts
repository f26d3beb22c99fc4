/**
 * Where one decoded token's time goes: every Backend op is timed (wall clock around the call,
 * N-API crossing and pool barriers included) and accumulated over `--tokens` greedy decode steps
 * after a `--prompt`-token prefill, all experts resident, weights mapped from the file. Ops are
 * grouped into parts (expert FFN, attention, norms/rope/KV store, router, q/k/v/o projections,
 * output head, embedding); "JavaScript" is the forward's wall time outside any op (recipe code,
 * routing softmax/top-k, allocation, GC, and the timing wrapper's own cost per call); "JavaScript
 * alone" runs the same steps on a backend whose compute ops return at once. Also counts native calls
 * per token, and the active weight bytes streamed per token with the RAM bandwidth they imply.
 *
 *   node --import tsx bench/profile-decode.ts [--model /work/models/olmoe-q4k.gguf] [--threads 2]
 *     [--prompt 8] [--tokens 32] [--kv-type f16] [--rounds 3]
 *
 * Rounds repeat the decode (rewinding the KV cache to the prompt); per part the best and median
 * round are printed as JSON, and a markdown table of the medians to stderr.
 */
import { parseArgs } from "node:util";
import { Model } from "../src/model/model.js";
import { Session } from "../src/engine/session.js";
import { NativeBackend } from "../src/backend/native/index.js";
import type { Backend, ExpertBatch, WeightMatrix } from "../src/backend/backend.js";
import { rowBytes } from "../src/formats/quant/types.js";
import { outputHeadTensor } from "../src/model/steps.js";
import { parseKvType } from "../src/model/kv-cache.js";

const { values: a } = parseArgs({
  options: {
    model: { type: "string", default: "/work/models/olmoe-q4k.gguf" },
    threads: { type: "string", default: "2" },
    prompt: { type: "string", default: "8" },
    tokens: { type: "string", default: "32" },
    "kv-type": { type: "string", default: "f16" },
    rounds: { type: "string", default: "3" },
  },
});
const nPrompt = Number(a.prompt), nTok = Number(a.tokens), rounds = Number(a.rounds);

const native = NativeBackend.create({ threads: Number(a.threads) });
const model = Model.open(a.model!);
const cfg = model.config;
const now = () => Number(process.hrtime.bigint()) / 1e6; // ms

/** Per-part accumulated ms and call counts for the current round. */
let acc = new Map<string, { ms: number; calls: number }>();
/** Per call shape (part, op, sizes): the fastest call seen and the calls per round. The sum of
 * calls x fastest is a floor that holds on a loaded machine (a call preempted midway is not the
 * fastest one). */
const shapes = new Map<string, { part: string; min: number; calls: number }>();
let bytes = 0;
let recording = false;
function add(part: string, ms: number, shape = ""): void {
  if (!recording) return;
  const e = acc.get(part) ?? { ms: 0, calls: 0 };
  e.ms += ms; e.calls++;
  acc.set(part, e);
  const key = `${part}|${shape}`;
  const s = shapes.get(key) ?? { part, min: Infinity, calls: 0 };
  s.min = Math.min(s.min, ms); s.calls++;
  shapes.set(key, s);
}
const wBytes = (w: WeightMatrix) => w.rows * rowBytes(w.type, w.cols);
function matmulPart(w: WeightMatrix): string {
  if (w.rows === cfg.vocabSize) return "output head";
  if (w.rows === cfg.nExpert && w.cols === cfg.dModel) return "router";
  return "q/k/v/o proj";
}
const PART: Record<string, string> = {
  rmsNorm: "norms/rope/kv", rope: "norms/rope/kv", f32ToF16: "norms/rope/kv", storeKv: "norms/rope/kv", attention: "attention",
  moeFfn: "expert FFN", getRows: "embedding", siluMul: "other ops", add: "other ops", addRowBias: "other ops", sigmoidGateRows: "other ops",
};

/** The native backend with every op timed. Ops added later are timed under their own name. */
const backend: Backend = new Proxy(native, {
  get(target, prop, recv) {
    const v = Reflect.get(target, prop, recv);
    if (typeof v !== "function" || prop === "dispose" || prop === "constructor") return v;
    return (...args: unknown[]) => {
      const t0 = now();
      const r = (v as (...x: unknown[]) => unknown).apply(target, args);
      const ms = now() - t0;
      const name = String(prop);
      if (name === "matmul") {
        const w = args[0] as WeightMatrix;
        add(matmulPart(w), ms, `${w.rows}x${w.cols}`);
        if (recording) bytes += wBytes(w);
      } else if (name === "moeFfn") {
        add(PART.moeFfn, ms, String((args[2] as ExpertBatch).experts.length));
        if (recording) for (const e of (args[2] as ExpertBatch).experts) bytes += wBytes(e.gate) + wBytes(e.up) + wBytes(e.down);
      } else if (name.startsWith("matmul")) {
        // batched / fused matmuls: [w...] first
        const ws = args[0] as WeightMatrix[];
        add(ws.some((w) => w.rows === cfg.vocabSize) ? "output head" : ws.some((w) => w.rows === cfg.nExpert) ? "router" : "q/k/v/o proj", ms, ws.map((w) => `${w.rows}x${w.cols}`).join("+"));
        if (recording) for (const w of ws) bytes += wBytes(w);
      } else add(PART[name] ?? name, ms, name);
      return r;
    };
  },
});

const session = new Session(model, { backend, contextLength: nPrompt + nTok + 1, kvType: parseKvType(a["kv-type"]!) });
const headBytes = (() => { const w = model.weights.matrix(outputHeadTensor(cfg, model.weights), cfg.vocabSize, cfg.dModel); return wBytes(w); })();
const prompt = Array.from({ length: nPrompt }, (_, i) => (1000 + 37 * i) % cfg.vocabSize);

const argmax = (x: Float32Array) => { let b = 0; for (let i = 1; i < x.length; i++) if (x[i] > x[b]) b = i; return b; };
let logits = session.prefill(prompt);
const first = argmax(logits);
// one untimed warm-up decode (first-touch of scratch, JIT)
session.decodeStep(first);

type Round = { parts: Map<string, { ms: number; calls: number }>; total: number; bytes: number; minTok: number };
const results: Round[] = [];
for (let r = 0; r < rounds; r++) {
  session.rewind(nPrompt);
  acc = new Map(); bytes = 0;
  let tok = first, total = 0, minTok = Infinity;
  for (let i = 0; i < nTok; i++) {
    recording = true;
    const t0 = now();
    logits = session.decodeStep(tok);
    const dt = now() - t0;
    total += dt; minTok = Math.min(minTok, dt);
    recording = false;
    tok = argmax(logits);
  }
  results.push({ parts: acc, total, bytes, minTok });
}

// The recipe's JavaScript alone: the same decode steps on a backend whose compute ops return at once
// (memory ops still real), so what remains is the forward's own code, routing and allocation; the
// "JavaScript (outside ops)" row above also holds the timing proxy's own cost per call.
const MEMORY_OPS = new Set(["alloc", "upload", "download", "view", "allocKv", "mapFile", "endForward", "checkWeights", "dispose"]);
const hollow: Backend = new Proxy(native, {
  get(target, prop, recv) {
    const v = Reflect.get(target, prop, recv);
    if (typeof v !== "function" || MEMORY_OPS.has(String(prop)) || prop === "constructor") return v;
    return () => undefined;
  },
});
const jsAlone: number[] = [];
{
  const s = new Session(model, { backend: hollow, contextLength: nPrompt + nTok + 1, kvType: parseKvType(a["kv-type"]!) });
  s.prefill(prompt);
  for (let r = 0; r < rounds; r++) {
    s.rewind(nPrompt);
    const t0 = now();
    for (let i = 0; i < nTok; i++) s.decodeStep(first);
    jsAlone.push((now() - t0) / nTok);
  }
}

const names = [...new Set(results.flatMap((r) => [...r.parts.keys()]))];
const med = (xs: number[]) => { const s = [...xs].sort((p, q) => p - q); return s[Math.floor(s.length / 2)]; };
const perTok = (r: Round, n: string) => (r.parts.get(n)?.ms ?? 0) / nTok;
const js = (r: Round) => (r.total - [...r.parts.values()].reduce((s, e) => s + e.ms, 0)) / nTok;
const floor = (n: string) => [...shapes.values()].filter((s) => s.part === n).reduce((t, s) => t + s.min * s.calls, 0) / (nTok * rounds);
const rows = [
  ...names.map((n) => ({ part: n, best: Math.min(...results.map((r) => perTok(r, n))), median: med(results.map((r) => perTok(r, n))), floor: floor(n), callsPerToken: (results[0].parts.get(n)?.calls ?? 0) / nTok })),
  { part: "JavaScript (outside ops)", best: Math.min(...results.map(js)), median: med(results.map(js)), floor: NaN, callsPerToken: 0 },
];
rows.sort((p, q) => q.median - p.median);
const totals = results.map((r) => r.total / nTok);
const gb = results[0].bytes / nTok / 1e9;
const out = {
  model: a.model, threads: native.threads, isa: native.isa, prompt: nPrompt, tokens: nTok, kvType: a["kv-type"], rounds,
  msPerToken: { best: Math.min(...totals), median: med(totals), fastestToken: Math.min(...results.map((r) => r.minTok)) },
  activeWeightGBPerToken: +gb.toFixed(4), outputHeadMB: +(headBytes / 1e6).toFixed(1),
  impliedGBps: { best: +(gb / (Math.min(...totals) / 1e3)).toFixed(2), median: +(gb / (med(totals) / 1e3)).toFixed(2) },
  nativeCallsPerToken: rows.reduce((s, r) => s + r.callsPerToken, 0),
  jsAloneMsPerToken: { best: +Math.min(...jsAlone).toFixed(3), median: +med(jsAlone).toFixed(3) },
  parts: rows.map((r) => ({ ...r, best: +r.best.toFixed(3), median: +r.median.toFixed(3), floor: +r.floor.toFixed(3) })),
};
console.log(JSON.stringify(out, null, 2));
const md = ["| part | ms/token (median round) | best round | floor (calls x fastest call) | calls/token |", "|---|---|---|---|---|",
  ...rows.map((r) => `| ${r.part} | ${r.median.toFixed(2)} | ${r.best.toFixed(2)} | ${r.floor.toFixed(2)} | ${r.callsPerToken} |`),
  `| **total** | **${med(totals).toFixed(2)}** | ${Math.min(...totals).toFixed(2)} | fastest token ${Math.min(...results.map((r) => r.minTok)).toFixed(2)} | |`,
  `| JavaScript alone (compute ops hollowed out) | ${med(jsAlone).toFixed(2)} | ${Math.min(...jsAlone).toFixed(2)} | | |`];
console.error(md.join("\n"));
model.close();
