/**
 * README claims that had no test, each tested in the README's own words:
 *
 *  1. "a batch, one token at a time and any thread count give the same bits" (bench/README.md):
 *     the native backend's logits (prefill and decode, a quantized and a float model) are
 *     bit-identical with 1, 2, 3 and 5 threads, and with the prompt fed one token at a time.
 *  2. "`--lowbit-miss W` serves a decode miss whose routing weight is below W from the low-bit
 *     copy": every expert served low-bit was a decode miss with weight < W; hits and heavy misses
 *     are full precision; W = 0 is bit-identical to no sidecar.
 *  3. "`--lowbit-prefill N` reads experts wanted by at most N prompt tokens from it": exactly those
 *     (during the prompt only); N = 0 is bit-identical to no sidecar.
 *  4. `moira quantize-experts` end to end: the sidecar's tensors, refusal of another model's
 *     sidecar, and `moira run --lowbit` with it.
 *  5. `moira convert`: "same tensor names, layouts and keys as llama.cpp's converter": the output
 *     of a checkpoint with a tokenizer.json carries tokenizer keys and loads in llama.cpp; with
 *     tokenizer keys added, llama.cpp continues every fixture's prompt as transformers and moira do.
 *
 * Observing the store: a thin ExpertProvider wrapper records, per acquire, which experts were
 * resident before it (the store's residency map, read directly: it is the definition of a hit)
 * and whether the weights handed out are the sidecar's (their GGML type is the sidecar's Q2_K,
 * the model's is Q4_K); the Session's routing observer gives each token's experts and weights.
 * CLI steps run bin/moira.js, i.e. dist/ (npx tsc -p tsconfig.json).
 */
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync, copyFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { makeModel } from "../src/tools/make-model/index.js";
import { Model } from "../src/model/model.js";
import { Session } from "../src/engine/session.js";
import { argmax } from "../src/engine/sampler.js";
import type { Backend } from "../src/backend/backend.js";
import type { AcquireHint, DeferredExperts, ExpertFfnWeights, ExpertProvider, ForwardInfo } from "../src/model/experts.js";
import type { RoutingObserver } from "../src/model/steps.js";
import { createExpertProvider, type OffloadFlags } from "../src/cli/offload-options.js";
import { planMemory } from "../src/offload/planner.js";
import { openLowbitSidecar, writeLowbitSidecar } from "../src/offload/lowbit.js";
import type { ExpertStore } from "../src/offload/store.js";
import { readGGUF } from "../src/formats/gguf/reader.js";
import { writeGGUF } from "../src/formats/gguf/writer.js";
import { GGUFValueType, type GGUFMetadataValue } from "../src/formats/model-file.js";
import { GGMLType, typeName } from "../src/formats/quant/types.js";
import { dequantize } from "../src/formats/quant/dequantize.js";
import { ModelFormatError } from "../src/errors.js";
import { REPO_ROOT, HAVE_SHARED, shared } from "./shared.js";

const CI = !!process.env.CI;
const dir = mkdtempSync(join(tmpdir(), "moira-claims-"));
process.on("exit", () => rmSync(dir, { recursive: true, force: true }));

// ---- what the tests need, and skipping only outside CI ---------------------------------------

type NativeMod = typeof import("../src/backend/native/index.js");
let nativeMod: NativeMod | null = null;
let nativeWhy = "";
try {
  nativeMod = await import("../src/backend/native/index.js");
  nativeMod.NativeBackend.create().dispose();
} catch (e) {
  nativeMod = null;
  nativeWhy = (e as Error).message;
}
let haveLlama = true;
try {
  await import("node-llama-cpp");
} catch {
  haveLlama = false;
}
/** node:test's `skip`: a reason when something is absent, except in CI, where the test runs (and fails). */
function needs(...conds: Array<[boolean, string]>): string | false {
  const missing = conds.filter(([ok]) => !ok).map(([, why]) => why);
  return missing.length === 0 || CI ? false : missing.join("; ");
}
const NEEDS_NATIVE: [boolean, string] = [nativeMod !== null, `native addon not built (${nativeWhy})`];
const NEEDS_SHARED: [boolean, string] = [HAVE_SHARED, "../shared not found: test data absent"];
const NEEDS_LLAMA: [boolean, string] = [haveLlama, "node-llama-cpp is not installed"];

function nativeBackend(threads: number): Backend & { setThreads(n: number): void } {
  if (!nativeMod) throw new Error(`the native addon is required: ${nativeWhy}`);
  return nativeMod.NativeBackend.create({ threads });
}

after(async () => {
  if (haveLlama) await (await import("./llama-oracle.js")).disposeOracleLlama();
});

function moira(...args: string[]) {
  const r = spawnSync(process.execPath, [join(REPO_ROOT, "bin", "moira.js"), ...args], { encoding: "utf8", maxBuffer: 64 << 20 });
  return { code: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr };
}

const bitsOf = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

/** Logits of a prompt (every row, one batch) and `steps` greedy decode steps, each row a copy. */
function runLogits(model: Model, backend: Backend, prompt: readonly number[], steps: number, o: { experts?: ExpertProvider; observer?: RoutingObserver } = {}): Float32Array[] {
  const s = new Session(model, { backend, experts: o.experts, observer: o.observer, contextLength: prompt.length + steps + 1 });
  const V = model.config.vocabSize;
  const out: Float32Array[] = [];
  const pre = s.forward(prompt, { allLogits: true });
  for (let t = 0; t < prompt.length; t++) out.push(pre.slice(t * V, (t + 1) * V));
  let next = argmax(out[out.length - 1]!);
  for (let i = 0; i < steps; i++) {
    const l = s.decodeStep(next).slice(0, V);
    out.push(l);
    next = argmax(l);
  }
  return out;
}

function prompt(n: number, vocab: number, seed: number): number[] {
  const out: number[] = [];
  let x = seed;
  for (let i = 0; i < n; i++) { x = (Math.imul(x, 1103515245) + 12345) >>> 0; out.push(3 + (x % (vocab - 3))); }
  return out;
}

// ---- 1. threads --------------------------------------------------------------------------------

/** The prompt's rows fed one token at a time (decode steps), then the same decode steps as runLogits. */
function runLogitsOneByOne(model: Model, backend: Backend, prompt: readonly number[], steps: number): Float32Array[] {
  const s = new Session(model, { backend, contextLength: prompt.length + steps + 1 });
  const V = model.config.vocabSize;
  const out = prompt.map((t) => s.decodeStep(t).slice(0, V));
  let next = argmax(out[out.length - 1]!);
  for (let i = 0; i < steps; i++) {
    const l = s.decodeStep(next).slice(0, V);
    out.push(l);
    next = argmax(l);
  }
  return out;
}

/** Fails naming the first row and logit where two runs' bits differ. */
function assertSameBits(a: Float32Array[], b: Float32Array[], promptLength: number, what: string): void {
  assert.equal(a.length, b.length);
  a.forEach((l, i) => {
    if (bitsOf(l).equals(bitsOf(b[i]!))) return;
    let at = 0;
    while (Object.is(l[at], b[i]![at])) at++;
    assert.fail(`${what}: ${i < promptLength ? `prompt row ${i}` : `decode step ${i - promptLength}`}, logit ${at}: ${l[at]} vs ${b[i]![at]}`);
  });
}

// README (bench/README.md, attention): "a batch, one token at a time and any thread count give the same bits"
test("any thread count gives the same bits: native logits with 1, 2, 3 and 5 threads, and a batch = one token at a time (Q4_K and F16)", { skip: needs(NEEDS_NATIVE) }, async () => {
  const backend = nativeBackend(1);
  try {
    for (const [preset, type] of [["tiny-qwen2moe", "Q4_K"], ["tiny-olmoe", "F16"]] as const) {
      const path = join(dir, `threads-${preset}-${type}.gguf`);
      await makeModel({ out: path, preset, type, seed: 11 });
      const model = Model.open(path);
      try {
        // 70 prompt tokens: three of attention's 32-row cache chunks, rows that split unevenly over the threads
        const p = prompt(70, model.config.vocabSize, 5);
        const steps = 4;
        backend.setThreads(1);
        const one = runLogits(model, backend, p, steps);
        for (const threads of [2, 3, 5]) {
          backend.setThreads(threads);
          assertSameBits(runLogits(model, backend, p, steps), one, p.length, `${preset} ${type}: ${threads} threads vs 1`);
        }
        for (const threads of [1, 3]) {
          backend.setThreads(threads);
          assertSameBits(runLogitsOneByOne(model, backend, p, steps), one, p.length, `${preset} ${type}: one token at a time (${threads} threads) vs the batch`);
        }
      } finally {
        model.close();
      }
    }
  } finally {
    backend.dispose();
  }
});

// ---- the low-bit store, observed -----------------------------------------------------------------

interface Access {
  phase: "prefill" | "decode";
  layer: number;
  expert: number;
  /** resident (or being loaded) before the acquire: not a miss */
  resident: boolean;
  /** the weights handed out are the sidecar's */
  low: boolean;
  /** decode: the token's routing weight for this expert (from the routing observer) */
  weight: number;
  /** prefill: how many prompt tokens chose this expert */
  votes: number;
}

/** Routing of the last forward pass per layer, from the Session's observer. */
class LastRouting implements RoutingObserver {
  readonly byLayer = new Map<number, { votes: Map<number, number>; weight: Map<number, number>; nTokens: number }>();
  onRouting(layer: number, experts: Int32Array, weights: Float32Array, nTokens: number, k: number): void {
    const votes = new Map<number, number>(), weight = new Map<number, number>();
    for (let t = 0; t < nTokens; t++) {
      for (let j = 0; j < k; j++) {
        const e = experts[t * k + j]!;
        votes.set(e, (votes.get(e) ?? 0) + 1);
        if (nTokens === 1) weight.set(e, weights[j]!);
      }
    }
    this.byLayer.set(layer, { votes, weight, nTokens });
  }
}

/** The store as the model sees it, recording every access. */
class RecordingProvider implements ExpertProvider {
  readonly accesses: Access[] = [];
  constructor(private readonly store: ExpertStore, private readonly routing: LastRouting, private readonly nExpert: number, private readonly lowType: GGMLType) {}
  get maxExpertsPerAcquire(): number | undefined { return this.store.maxExpertsPerAcquire; }
  beginRequest(): void { this.store.beginRequest(); }
  beginForward(info: ForwardInfo): void { this.store.beginForward(info); }
  private record(layer: number, experts: readonly number[], hint: AcquireHint, weights: readonly ExpertFfnWeights[], resident: boolean[]): void {
    const r = this.routing.byLayer.get(layer)!;
    assert.equal(r.nTokens, hint.nTokens, "the observer saw this forward pass's routing");
    experts.forEach((e, i) => {
      const w = weights[i]!;
      const low = w.gate.type === this.lowType;
      assert.ok(w.up.type === w.gate.type && w.down.type === w.gate.type, "an expert's three matrices come from one file");
      this.accesses.push({
        phase: hint.nTokens > 1 ? "prefill" : "decode", layer, expert: e, resident: resident[i]!, low,
        weight: r.weight.get(e) ?? NaN, votes: r.votes.get(e) ?? 0,
      });
    });
  }
  private residency(layer: number, experts: readonly number[]): boolean[] {
    // the store's own map of experts in memory or being read (private: the definition of a hit)
    const full = (this.store as unknown as { full: Map<number, unknown> }).full;
    assert.ok(full instanceof Map, "ExpertStore keeps its residency map in `full`");
    return experts.map((e) => full.has(layer * this.nExpert + e));
  }
  acquire(layer: number, experts: readonly number[], hint: AcquireHint): ExpertFfnWeights[] {
    const resident = this.residency(layer, experts);
    const w = this.store.acquire(layer, experts, hint);
    this.record(layer, experts, hint, w, resident);
    return w;
  }
  acquireDeferred(layer: number, experts: readonly number[], hint: AcquireHint): DeferredExperts {
    const resident = this.residency(layer, experts);
    const d = this.store.acquireDeferred(layer, experts, hint);
    this.record(layer, experts, hint, d.weights, resident);
    return d;
  }
  release(layer: number, experts: readonly number[]): void {
    this.store.release(layer, experts);
  }
}

/** A Q4_K OLMoE-shaped model (16 experts, top-4) and its Q2_K sidecar, shared by tests 2 and 3. */
let lowbitModel: Promise<{ path: string; side: string }> | null = null;
function lowbitFixture(): Promise<{ path: string; side: string }> {
  lowbitModel ??= (async () => {
    const path = join(dir, "lowbit-olmoe.gguf");
    await makeModel({ out: path, preset: "tiny-olmoe", type: "Q4_K", layers: 4, experts: 16, topK: 4, seed: 3 });
    const side = join(dir, "lowbit-olmoe.q2k.gguf");
    const m = Model.open(path);
    try { writeLowbitSidecar(m, "Q2_K", side); } finally { m.close(); }
    return { path, side };
  })();
  return lowbitModel;
}

/**
 * An offloaded run through the CLI's flag handling (createExpertProvider): `cacheSlots` experts
 * cached beyond the working slots. Returns every row's logits and every access.
 */
function offloadedRun(model: Model, backend: Backend, p: readonly number[], steps: number, flags: OffloadFlags, cacheSlots: number) {
  const contextLength = p.length + steps + 1;
  const min = planMemory(model, { budget: Number.MAX_SAFE_INTEGER, contextLength, policy: flags.policy });
  const budget = min.minimumBytes + cacheSlots * min.slotBytes;
  const routing = new LastRouting();
  const h = createExpertProvider(model, { ...flags, memoryBudget: budget }, backend, { contextLength });
  try {
    assert.equal(h.plan!.cacheSlots, flags.policy === "none" ? 0 : cacheSlots);
    const rec = new RecordingProvider(h.store!, routing, model.config.nExpert, GGMLType.Q2_K);
    const logits = runLogits(model, backend, p, steps, { experts: rec, observer: routing });
    return { logits, accesses: rec.accesses, stats: h.stats!.total(), phases: h.stats!.phases };
  } finally {
    h.dispose();
  }
}

function assertSameLogits(a: Float32Array[], b: Float32Array[], what: string): void {
  assert.equal(a.length, b.length);
  a.forEach((l, i) => assert.ok(bitsOf(l).equals(bitsOf(b[i]!)), `${what}: row ${i} differs`));
}

function differs(a: Float32Array[], b: Float32Array[]): boolean {
  return a.some((l, i) => !bitsOf(l).equals(bitsOf(b[i]!)));
}

// ---- 2. --lowbit-miss ---------------------------------------------------------------------------

test("--lowbit-miss W: only decode misses with routing weight < W are served low-bit; hits and heavy misses are full precision; W=0 is exact", { skip: needs(NEEDS_NATIVE) }, async () => {
  const { path, side } = await lowbitFixture();
  const model = Model.open(path);
  const backend = nativeBackend(2);
  try {
    const cfg = model.config;
    // the weight the model mixes with is the router probability (no top-k renormalisation, no scale)
    assert.equal(cfg.normTopK, false);
    assert.equal(cfg.routedScale, 1);
    const p = prompt(6, cfg.vocabSize, 9);
    const steps = 16;
    const base: OffloadFlags = { policy: "lru", predictor: "none" };
    const cache = 10; // of 2 layers x 16 experts: decode has both hits and misses

    // W: the median decode routing weight of a run without a sidecar, so that misses fall on both sides
    const plain = offloadedRun(model, backend, p, steps, base, cache);
    const ws = plain.accesses.filter((a) => a.phase === "decode").map((a) => a.weight).sort((a, b) => a - b);
    const W = ws[Math.floor(ws.length / 2)]!;
    assert.ok(plain.accesses.every((a) => !a.low), "no sidecar, no low-bit experts");

    const on = offloadedRun(model, backend, p, steps, { ...base, lowbit: side, lowbitMiss: W }, cache);
    const dec = on.accesses.filter((a) => a.phase === "decode");
    const lightMisses = dec.filter((a) => !a.resident && a.weight < W);
    const heavyMisses = dec.filter((a) => !a.resident && a.weight >= W);
    const hits = dec.filter((a) => a.resident);
    // the test sees every kind of access
    assert.ok(lightMisses.length > 0 && heavyMisses.length > 0 && hits.length > 0,
      `accesses: ${lightMisses.length} light misses, ${heavyMisses.length} heavy misses, ${hits.length} hits (W = ${W})`);
    for (const a of dec) {
      assert.ok(Number.isFinite(a.weight), `decode L${a.layer}.E${a.expert} has a routing weight`);
      const want = !a.resident && a.weight < W;
      assert.equal(a.low, want, `decode L${a.layer}.E${a.expert} (${a.resident ? "hit" : "miss"}, weight ${a.weight.toFixed(4)}, W ${W.toFixed(4)}) served ${a.low ? "low-bit" : "full precision"}`);
    }
    for (const a of on.accesses.filter((x) => x.phase === "prefill")) assert.equal(a.low, false, "the prompt runs at full precision without --lowbit-prefill");
    // the store's own count agrees
    assert.equal(on.stats.lowbit, lightMisses.length);
    assert.equal(on.phases.decode.lowbit, lightMisses.length);
    assert.ok(differs(on.logits, plain.logits), "low-bit experts change the logits");

    // W = 0: bit-identical to no sidecar (and to the all-resident run)
    const zero = offloadedRun(model, backend, p, steps, { ...base, lowbit: side, lowbitMiss: 0 }, cache);
    assert.equal(zero.stats.lowbit, 0);
    assert.ok(zero.accesses.every((a) => !a.low));
    assertSameLogits(zero.logits, plain.logits, "--lowbit-miss 0 vs no sidecar");
    assertSameLogits(plain.logits, runLogits(model, backend, p, steps), "offloaded vs all resident");
  } finally {
    backend.dispose();
    model.close();
  }
});

// ---- 3. --lowbit-prefill ------------------------------------------------------------------------

test("--lowbit-prefill N: exactly the experts wanted by at most N prompt tokens are read low-bit, only in the prompt; N=0 is exact", { skip: needs(NEEDS_NATIVE) }, async () => {
  const { path, side } = await lowbitFixture();
  const model = Model.open(path);
  const backend = nativeBackend(2);
  try {
    const p = prompt(12, model.config.vocabSize, 21);
    const steps = 6;
    // without prediction, and in the README's form: --lowbit-prefill N with the default policy and predictor (fate)
    for (const base of [{ policy: "lru", predictor: "none" }, { policy: "fate", predictor: "fate" }] as OffloadFlags[]) {
      const what = `--policy ${base.policy} --predictor ${base.predictor}`;
      const plain = offloadedRun(model, backend, p, steps, base, 40);
      const votes = plain.accesses.filter((a) => a.phase === "prefill").map((a) => a.votes).sort((a, b) => a - b);
      const N = votes[Math.floor(votes.length / 2)]!;
      const on = offloadedRun(model, backend, p, steps, { ...base, lowbit: side, lowbitPrefill: N }, 40);
      const pre = on.accesses.filter((a) => a.phase === "prefill");
      const cold = pre.filter((a) => a.votes <= N);
      assert.ok(cold.length > 0 && cold.length < pre.length, `${what}: ${cold.length} of ${pre.length} prompt experts wanted by <= ${N} tokens`);
      // the rule: low-bit when at most N tokens want it, unless already in memory (a prompt layer is
      // asked once, so that is a prefetch of an expert predicted to be wanted by more than N)
      const wrong = pre.filter((a) => a.low !== (a.votes <= N && !a.resident));
      assert.deepEqual(wrong.map((a) => `L${a.layer}.E${a.expert} (${a.votes} tokens, ${a.low ? "low-bit" : "full"}${a.resident ? ", prefetched" : ""})`), [],
        `${what} --lowbit-prefill ${N}: experts served against the rule`);
      // and prefetching does not defeat it: few cold experts arrive in full ahead of their layer
      const prefetchedCold = cold.filter((a) => a.resident).length;
      assert.ok(prefetchedCold <= cold.length / 4, `${what}: ${prefetchedCold} of ${cold.length} cold experts were prefetched in full`);
      for (const a of on.accesses.filter((x) => x.phase === "decode")) assert.equal(a.low, false, `${what}: decode is full precision without --lowbit-miss`);
      assert.equal(on.phases.prefill.lowbit, cold.length - prefetchedCold);
      assert.equal(on.phases.decode.lowbit, 0);
      assert.ok(differs(on.logits, plain.logits), "low-bit experts change the logits");

      const zero = offloadedRun(model, backend, p, steps, { ...base, lowbit: side, lowbitPrefill: 0 }, 40);
      assert.ok(zero.accesses.every((a) => !a.low));
      assertSameLogits(zero.logits, plain.logits, `${what} --lowbit-prefill 0 vs no sidecar`);
    }
  } finally {
    backend.dispose();
    model.close();
  }
});

// ---- 4. quantize-experts ------------------------------------------------------------------------

/** Root-mean-square of a - b over RMS of b. */
function relRms(a: Float32Array, b: Float32Array): number {
  let d = 0, n = 0;
  for (let i = 0; i < a.length; i++) { d += (a[i]! - b[i]!) ** 2; n += b[i]! ** 2; }
  return Math.sqrt(d / n);
}

test("quantize-experts: the CLI writes a sidecar of the model's experts, another model's sidecar is refused, run --lowbit uses it", { skip: needs(NEEDS_NATIVE) }, async () => {
  const a = join(dir, "qe-a.gguf");
  await makeModel({ out: a, preset: "tiny-qwen2moe", type: "Q8_0", seed: 1 });
  const side = join(dir, "qe-a.q2k.gguf");
  const q = moira("quantize-experts", a, "--type", "Q2_K", "--out", side);
  assert.equal(q.code, 0, q.stderr);
  assert.match(q.stderr, /wrote .*qe-a\.q2k\.gguf: Q2_K experts/);

  // its tensors: exactly the model's stacked expert tensors (not the shared expert), same shapes, Q2_K,
  // and copies of those experts (close to each expert's own weights, not to another expert's)
  const g = readGGUF(side);
  const mg = readGGUF(a);
  const modelBytes = readFileSync(a), sideBytes = readFileSync(side);
  const expertNames = [...mg.tensors.keys()].filter((n) => /^blk\.\d+\.ffn_(gate|up|down)_exps\.weight$/.test(n)).sort();
  assert.equal(expertNames.length, 2 * 3);
  assert.deepEqual([...g.tensors.keys()].sort(), expertNames);
  for (const name of expertNames) {
    const s = g.tensors.get(name)!, m = mg.tensors.get(name)!;
    assert.deepEqual(s.dims, m.dims, `${name} shape`);
    assert.equal(typeName(s.type), "Q2_K", `${name} type`);
    assert.ok(s.nbytes < m.nbytes / 2, `${name}: ${s.nbytes} B low-bit vs ${m.nbytes} B`);
    const [cols, rows, nExpert] = m.dims as number[];
    const per = cols! * rows!;
    const full = dequantize(m.type, modelBytes.subarray(m.file!.offset, m.file!.offset + m.nbytes), per * nExpert!);
    const low = dequantize(s.type, sideBytes.subarray(s.file!.offset, s.file!.offset + s.nbytes), per * nExpert!);
    for (let e = 0; e < nExpert!; e++) {
      const own = relRms(low.subarray(e * per, (e + 1) * per), full.subarray(e * per, (e + 1) * per));
      const other = relRms(low.subarray(e * per, (e + 1) * per), full.subarray(((e + 1) % nExpert!) * per, ((e + 1) % nExpert!) * per + per));
      assert.ok(own < 0.5 && other > 1, `${name} expert ${e}: error ${own.toFixed(3)} against itself, ${other.toFixed(3)} against the next expert`);
    }
  }

  // moira run --lowbit: runs, writes text, and serves decode misses low-bit
  const r = moira("run", "--model", a, "--prompt", "Once upon a time", "--max-tokens", "12", "--temperature", "0",
    "--memory-budget", "64MiB", "--policy", "none", "--predictor", "none", "--lowbit", side, "--lowbit-miss", "0.5", "--stats");
  assert.equal(r.code, 0, r.stderr);
  assert.ok(r.stdout.trim().length > 0, "generated text");
  const low = /misses, (\d+) low-bit\)/.exec(r.stderr);
  assert.ok(low, `--stats reports low-bit experts: ${r.stderr}`);
  assert.ok(Number(low[1]) >= 11 * 2, `every decode step read low-bit experts: ${low[1]}`);

  // another model's sidecar: a different architecture/shape, and the same shape with other weights
  const b = join(dir, "qe-b-olmoe.gguf");
  await makeModel({ out: b, preset: "tiny-olmoe", type: "Q8_0", seed: 1 });
  const c = join(dir, "qe-c-seed2.gguf");
  await makeModel({ out: c, preset: "tiny-qwen2moe", type: "Q8_0", seed: 2 });
  for (const other of [b, c]) {
    const m = Model.open(other);
    try {
      assert.throws(() => openLowbitSidecar(m, side), (e: unknown) => e instanceof ModelFormatError && /sidecar/.test((e as Error).message),
        `the sidecar of ${a} must be refused for ${other}`);
    } finally {
      m.close();
    }
    const r = moira("run", "--model", other, "--prompt", "Once upon a time", "--max-tokens", "4", "--memory-budget", "64MiB",
      "--lowbit", side, "--lowbit-miss", "0.5");
    assert.equal(r.code, 1, `run --lowbit with another model's sidecar (${other}) must fail; stderr: ${r.stderr}`);
    assert.match(r.stderr, /^moira: .*sidecar/);
  }
});

// ---- 5. convert → llama.cpp ---------------------------------------------------------------------

/**
 * A byte-level BPE vocabulary of `n` tokens (GGUF "gpt2" keys) with `eos` as its end token: what
 * llama.cpp needs to load a model; the tests pass token ids, so the pieces do not matter.
 */
function gpt2VocabKeys(n: number, eos: number): Array<[string, GGUFMetadataValue]> {
  const pieces = ["Ċ", "Ġ", ...Array.from({ length: n - 2 }, (_, i) => String.fromCharCode(97 + (i % 26)).repeat(1 + Math.floor(i / 26)))];
  return [
    ["tokenizer.ggml.model", { type: GGUFValueType.STRING, value: "gpt2" }],
    ["tokenizer.ggml.pre", { type: GGUFValueType.STRING, value: "default" }],
    ["tokenizer.ggml.tokens", { type: GGUFValueType.ARRAY, itemType: GGUFValueType.STRING, value: pieces }],
    ["tokenizer.ggml.token_type", { type: GGUFValueType.ARRAY, itemType: GGUFValueType.INT32, value: Int32Array.from(pieces, () => 1) }],
    ["tokenizer.ggml.merges", { type: GGUFValueType.ARRAY, itemType: GGUFValueType.STRING, value: [] }],
    ["tokenizer.ggml.bos_token_id", { type: GGUFValueType.UINT32, value: eos }],
    ["tokenizer.ggml.eos_token_id", { type: GGUFValueType.UINT32, value: eos }],
    ["tokenizer.ggml.add_bos_token", { type: GGUFValueType.BOOL, value: false }],
  ];
}

/** The same GGUF with extra metadata keys (tensors byte for byte). */
function withKeys(src: string, out: string, keys: Array<[string, GGUFMetadataValue]>): string {
  const g = readGGUF(src);
  const bytes = readFileSync(src);
  const md = new Map(g.metadata);
  for (const [k, v] of keys) md.set(k, v);
  const tensors = [...g.tensors.values()].map((t) => ({ name: t.name, type: t.type, dims: [...t.dims], data: bytes.subarray(t.file!.offset, t.file!.offset + t.nbytes) }));
  writeGGUF(out, { metadata: md, tensors });
  return out;
}

const FIXTURES = shared("fixtures", "hf-tiny-moe");

/** ../shared's fixture `name` as a Hugging Face directory (config.json + model.safetensors). */
function hfDir(name: string): string {
  const d = join(dir, `hf-${name}`);
  if (!existsSync(d)) {
    mkdirSync(d);
    copyFileSync(join(FIXTURES, `${name}_config.json`), join(d, "config.json"));
    copyFileSync(join(FIXTURES, `${name}.safetensors`), join(d, "model.safetensors"));
  }
  return d;
}

function moiraGreedy(model: Model, backend: Backend, p: readonly number[], n: number): number[] {
  const s = new Session(model, { backend, contextLength: p.length + n });
  let logits = s.prefill(p);
  const ids: number[] = [];
  for (let i = 0; i < n; i++) {
    ids.push(argmax(logits));
    if (i < n - 1) logits = s.decodeStep(ids[i]!);
  }
  return ids;
}

test("convert output with a tokenizer.json carries the tokenizer keys llama.cpp's converter writes, and llama.cpp loads it", { skip: needs(NEEDS_SHARED, NEEDS_LLAMA) }, async () => {
  const { withLlamaModel } = await import("./llama-oracle.js");
  // a checkpoint llama.cpp's converter would take: weights, config and a (byte-level BPE) tokenizer.json
  const d = join(dir, "hf-with-tokenizer");
  mkdirSync(d);
  copyFileSync(join(hfDir("qwen_moe_tiny"), "config.json"), join(d, "config.json"));
  copyFileSync(join(hfDir("qwen_moe_tiny"), "model.safetensors"), join(d, "model.safetensors"));
  const vocab = Object.fromEntries((gpt2VocabKeys(48, 47)[2]![1].value as string[]).map((p, i) => [p, i]));
  writeFileSync(join(d, "tokenizer.json"), JSON.stringify({
    version: "1.0", added_tokens: [], normalizer: null,
    pre_tokenizer: { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: null, decoder: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: { type: "BPE", dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, vocab, merges: [] },
  }));
  const out = join(dir, "converted-with-tokenizer.gguf");
  const r = moira("convert", "--model", d, "--out", out);
  assert.equal(r.code, 0, r.stderr);
  const keys = [...readGGUF(out).metadata.keys()];
  for (const k of ["tokenizer.ggml.model", "tokenizer.ggml.tokens"]) assert.ok(keys.includes(k), `convert wrote no ${k} (keys: ${keys.filter((x) => !x.includes(".attention.")).join(", ")})`);
  const ref = JSON.parse(readFileSync(join(FIXTURES, "qwen_moe_tiny.ref.json"), "utf8")) as { input_ids: number[] };
  const got = await withLlamaModel(out, (m) => m.greedy(ref.input_ids, 1));
  assert.equal(got.length, 1);
});

test("convert → llama.cpp: each HF fixture's GGUF (tokenizer keys added) loads in llama.cpp, whose greedy continuation and logits match moira's and transformers'", { skip: needs(NEEDS_SHARED, NEEDS_LLAMA) }, async (t) => {
  const { withLlamaModel } = await import("./llama-oracle.js");
  const backend = nativeMod ? nativeBackend(2) : new (await import("../src/backend/ref/ref-backend.js")).RefBackend();
  const names = ["full_mixtral", "mixtral_classic", "gqa_mixtral", "qwen_moe_tiny", "qwen_scale", "mixtral_scale", "deepseek_full", "deepseek_scale"];
  const failures: string[] = [];
  const errors: string[] = [];
  let withGreedyIds = 0;
  try {
    for (const name of names) {
      const refName = name === "mixtral_classic" ? "full_mixtral" : name; // same weights as full_mixtral
      const ref = JSON.parse(readFileSync(join(FIXTURES, `${refName}.ref.json`), "utf8")) as { input_ids: number[]; hf_logits: number[]; greedy_ids?: number[]; vocab_size: number };
      const converted = join(dir, `${name}.gguf`);
      const r = moira("convert", "--model", hfDir(name), "--out", converted);
      assert.equal(r.code, 0, `${name}: ${r.stderr}`);
      const model = Model.open(converted);
      try {
        const V = model.config.vocabSize;
        assert.equal(V, ref.vocab_size);
        const n = ref.greedy_ids?.length ?? 6;
        const ours = moiraGreedy(model, backend, ref.input_ids, n);
        // an end token llama.cpp would stop at: one neither engine should produce here
        const eos = [...Array(V).keys()].find((t) => !ours.includes(t))!;
        const keys = gpt2VocabKeys(V, eos);
        // llama.cpp reads deepseek2.attention.q_lora_rank unless the model has 26 or 27 layers (its
        // test for V2-Lite); the converters write it only when config.json has one (these have null)
        const md = readGGUF(converted).metadata;
        if (md.get("general.architecture")?.value === "deepseek2" && !md.has("deepseek2.attention.q_lora_rank")) {
          keys.push(["deepseek2.attention.q_lora_rank", { type: GGUFValueType.UINT32, value: 0 }]);
        }
        const path = withKeys(converted, join(dir, `${name}.vocab.gguf`), keys);
        const { theirs, logProbs } = await withLlamaModel(path, async (m) => ({ theirs: await m.greedy(ref.input_ids, n), logProbs: await m.logProbs(ref.input_ids) }));
        if (theirs.join() !== ours.join()) failures.push(`${name}: llama.cpp greedy ${theirs} vs moira ${ours}`);
        if (ref.greedy_ids) {
          withGreedyIds++;
          if (theirs.join() !== ref.greedy_ids.join()) failures.push(`${name}: llama.cpp greedy ${theirs} vs transformers ${ref.greedy_ids}`);
        }
        // llama.cpp's log-probabilities against transformers' logits (both shifted to log-softmax)
        let maxErr = 0;
        logProbs.forEach((row, t) => {
          const hf = ref.hf_logits.slice(t * V, (t + 1) * V);
          const m = Math.max(...hf);
          const lse = m + Math.log(hf.reduce((s, x) => s + Math.exp(x - m), 0));
          for (let i = 0; i < V; i++) maxErr = Math.max(maxErr, Math.abs(row[i]! - (hf[i]! - lse)));
        });
        errors.push(`${name} ${maxErr.toExponential(1)}`);
        if (!(maxErr < 1e-3)) failures.push(`${name}: llama.cpp log-probs differ from transformers' by ${maxErr}`);
      } finally {
        model.close();
      }
    }
  } finally {
    backend.dispose();
  }
  t.diagnostic(`llama.cpp log-prob error vs transformers: ${errors.join(", ")}`);
  assert.ok(withGreedyIds >= 4, "the fixtures' greedy_ids were checked");
  assert.deepEqual(failures, []);
});
