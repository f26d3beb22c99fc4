/**
 * llama.cpp as an oracle for tests, through node-llama-cpp's prebuilt CPU binary.
 *
 * - One Llama instance per process (getLlama once, CPU only, never builds).
 * - Every call loads the model, does its work and disposes the model and context, so tests can
 *   run many models in one process; `withLlamaModel` keeps one model loaded for several calls.
 * - Greedy means temperature 0 (argmax), no repetition penalty, no token bias, and exactly the
 *   given prompt tokens (no BOS is added).
 * - llama.cpp's own log lines are captured; the last ones are attached to load errors.
 */
import type { Llama, LlamaContext, LlamaModel, Token } from "node-llama-cpp";
import type { Model } from "../src/model/model.js";
import type { Backend, WeightMatrix } from "../src/backend/backend.js";
import type { KvType } from "../src/model/kv-cache.js";
import { Session } from "../src/engine/session.js";
import { argmax } from "../src/engine/sampler.js";
import { ExpertRouter, selectionBias } from "../src/model/routing.js";
import type { ExpertGating } from "../src/model/config.js";

let llamaPromise: Promise<Llama> | undefined;
const recentLogs: string[] = [];

/** The shared Llama instance (CPU, prebuilt binary). */
export function getOracleLlama(): Promise<Llama> {
  llamaPromise ??= (async () => {
    const { getLlama, LlamaLogLevel } = await import("node-llama-cpp");
    return getLlama({
      gpu: false,
      build: "never",
      logLevel: LlamaLogLevel.warn,
      logger: (_level, message) => {
        recentLogs.push(message.trimEnd());
        if (recentLogs.length > 40) recentLogs.shift();
      },
    });
  })();
  return llamaPromise;
}

/**
 * Why llama.cpp cannot be asked here (a skip reason), or null when it can. In CI a missing
 * node-llama-cpp or prebuilt binary is an error: the tests that need it must run there.
 */
export async function llamaMissing(): Promise<string | null> {
  try {
    await getOracleLlama();
    return null;
  } catch (e) {
    if (process.env.CI) throw e;
    return `node-llama-cpp is not available: ${(e as Error).message}`;
  }
}

/**
 * Disposes the shared Llama instance (test files call it from `after`), so llama.cpp's native
 * state is torn down in order before the process exits instead of by exit-time destructors.
 */
export async function disposeOracleLlama(): Promise<void> {
  const p = llamaPromise;
  llamaPromise = undefined;
  if (!p) return;
  try {
    await (await p).dispose();
  } catch {
    /* it never loaded: nothing to tear down */
  }
}

/** A loaded model plus the operations tests need; valid only inside `withLlamaModel`. */
export interface OracleModel {
  readonly model: LlamaModel;
  /** Greedy continuation of exactly `promptTokens`: `nTokens` new token ids. */
  greedy(promptTokens: readonly number[], nTokens: number): Promise<number[]>;
  /** Token ids of `text` (no BOS; special-token text is matched as special tokens). */
  tokenize(text: string): number[];
  /**
   * Log-probabilities (log-softmax of the logits) of the next token after each prompt
   * position: `[promptTokens.length][nVocab]`. Logits themselves are these plus a per-row
   * constant, so compare them after subtracting each row's log-sum-exp (or max).
   */
  logProbs(promptTokens: readonly number[]): Promise<Float64Array[]>;
}

/** Loads `modelPath` into llama.cpp, runs `fn`, and disposes everything. */
export async function withLlamaModel<T>(modelPath: string, fn: (m: OracleModel) => Promise<T>, opts: { contextSize?: number } = {}): Promise<T> {
  const llama = await getOracleLlama();
  let model: LlamaModel;
  recentLogs.length = 0;
  try {
    model = await llama.loadModel({ modelPath, gpuLayers: 0 });
  } catch (e) {
    throw new Error(`llama.cpp could not load ${modelPath}: ${(e as Error).message}\n${recentLogs.join("\n")}`);
  }
  const contextSize = opts.contextSize ?? 256;
  // One thread: on small CI machines ggml's thread pool spins against the test runner's other
  // workers (300 ms per token on a tiny model with 2 threads on 2 cores, 1 ms with one).
  const threads = Number(process.env.MOIRA_ORACLE_THREADS ?? 1);
  const newContext = (): Promise<LlamaContext> => model.createContext({ contextSize, batchSize: contextSize, sequences: 1, threads });
  const oracle: OracleModel = {
    model,
    async greedy(promptTokens, nTokens) {
      const context = await newContext();
      try {
        const seq = context.getSequence();
        const out: number[] = [];
        if (nTokens <= 0) return out;
        for await (const tok of seq.evaluate(promptTokens.slice() as Token[], { temperature: 0 })) {
          out.push(tok);
          if (out.length >= nTokens) break;
        }
        return out;
      } finally {
        await context.dispose();
      }
    },
    tokenize(text) {
      return model.tokenize(text, true).map(Number);
    },
    async logProbs(promptTokens) {
      const context = await newContext();
      try {
        const seq = context.getSequence();
        const nVocab = model.fileInfo.metadata.tokenizer?.ggml?.tokens?.length ?? 0;
        const res = await seq.controlledEvaluate(
          // node-llama-cpp's sampler defaults are top-k 40 and top-p 0.95: the probabilities it
          // returns would be renormalised over that cut. topK 0 means the whole vocabulary, topP 1
          // and minP 0 add no cut, so these are the softmax of the raw logits over every token.
          promptTokens.map((t) => [t as Token, { generateNext: { probabilities: true, options: { temperature: 1, topK: 0, topP: 1, minP: 0 } } }]),
        );
        return res.map((r, i) => {
          const probs = r?.next?.probabilities;
          if (!probs) throw new Error(`llama.cpp returned no probabilities for prompt position ${i}`);
          let size = nVocab;
          for (const tok of probs.keys()) size = Math.max(size, tok + 1);
          const row = new Float64Array(size).fill(-Infinity);
          for (const [tok, p] of probs) row[tok] = Math.log(p);
          return row;
        });
      } finally {
        await context.dispose();
      }
    },
  };
  try {
    return await fn(oracle);
  } finally {
    await model.dispose();
  }
}

/** Greedy continuation (temperature 0, no penalties) of exactly `promptTokens` (no BOS added). */
export function llamaGreedy(modelPath: string, promptTokens: readonly number[], nTokens: number): Promise<number[]> {
  return withLlamaModel(modelPath, (m) => m.greedy(promptTokens, nTokens), { contextSize: Math.max(64, promptTokens.length + nTokens + 8) });
}

/** Token ids llama.cpp gives `text` with the model's vocabulary (no BOS added). */
export function llamaTokenize(modelPath: string, text: string): Promise<number[]> {
  return withLlamaModel(modelPath, async (m) => m.tokenize(text));
}

/** Log-softmax of llama.cpp's logits after each prompt position: [promptTokens.length][nVocab]. */
export function llamaLogProbs(modelPath: string, promptTokens: readonly number[]): Promise<Float64Array[]> {
  return withLlamaModel(modelPath, (m) => m.logProbs(promptTokens), { contextSize: Math.max(64, promptTokens.length + 8) });
}

// ---------------------------------------------------------------------------------------------
// Parity measures shared by test/llama-exactness.test.ts and bench/llama-parity.ts

/** `count` fixed pseudo-random prompts (4, 6, 8, ... tokens) away from the special tokens at the start of the vocabulary. */
export function parityPrompts(vocab: number, count = 3): number[][] {
  const ps: number[][] = [];
  let x = 12345;
  for (let p = 0; p < count; p++) {
    const toks: number[] = [];
    for (let i = 0; i < 4 + 2 * p; i++) { x = (x * 1103515245 + 12345) >>> 0; toks.push(300 + (x % (vocab - 300))); }
    ps.push(toks);
  }
  return ps;
}

/** moira's greedy continuation of `prompt`: n token ids and the logits each was chosen from. */
export function moiraGreedy(model: Model, backend: Backend, prompt: readonly number[], n: number, opts: { kvType?: KvType } = {}): { ids: number[]; logits: Float32Array[] } {
  const s = new Session(model, { backend, contextLength: prompt.length + n, kvType: opts.kvType });
  let logits = s.prefill(prompt);
  const ids: number[] = [], all: Float32Array[] = [];
  for (let i = 0; i < n; i++) {
    const t = argmax(logits);
    ids.push(t);
    all.push(logits);
    if (i < n - 1) logits = s.decodeStep(t);
  }
  return { ids, logits: all };
}

/** moira's log-softmax after every prompt position (float64), the shape `OracleModel.logProbs` returns. */
export function moiraLogProbs(model: Model, backend: Backend, prompt: readonly number[], opts: { kvType?: KvType } = {}): Float64Array[] {
  const s = new Session(model, { backend, contextLength: prompt.length, kvType: opts.kvType });
  const v = model.config.vocabSize;
  const all = s.forward(prompt, { allLogits: true });
  return prompt.map((_, i) => logSoftmax(all.subarray(i * v, (i + 1) * v)));
}

export function logSoftmax(logits: ArrayLike<number>): Float64Array {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) max = Math.max(max, logits[i]!);
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i]! - max);
  const lse = max + Math.log(sum);
  return Float64Array.from(logits, (l) => l - lse);
}

/**
 * The prefill log-probability gap: max over prompt positions and tokens of |a - b|, over the
 * tokens where both are finite (llama.cpp's float32 softmax underflows to 0 below ~1e-45).
 */
export function maxLogProbGap(a: readonly Float64Array[], b: readonly Float64Array[]): number {
  if (a.length !== b.length) throw new Error(`log-prob rows: ${a.length} vs ${b.length}`);
  let gap = 0;
  for (let r = 0; r < a.length; r++) gap = Math.max(gap, rowGap(a[r]!, b[r]!));
  return gap;
}

/** The top-2 margin of a logit row: its largest logit minus its second largest (>= 0). */
export function topTwoMargin(logits: ArrayLike<number>): number {
  let a = -Infinity, b = -Infinity;
  for (let i = 0; i < logits.length; i++) {
    const v = logits[i]!;
    if (v > a) { b = a; a = v; } else if (v > b) b = v;
  }
  return a - b;
}

/**
 * The first step where two greedy continuations differ, or -1 when they agree. llama.cpp stops
 * at an end-of-generation token (so `theirs` may be shorter): moira must have produced one of
 * `eos` right there too.
 */
export function firstDivergence(ours: readonly number[], theirs: readonly number[], eos: ReadonlySet<number> = new Set()): number {
  return ours.findIndex((t, i) => (i < theirs.length ? t !== theirs[i] : i === theirs.length && !eos.has(t)));
}

// ---------------------------------------------------------------------------------------------
// Router near-ties: moira's routing decisions, and counterfactual flips of them

/** Router logits of one forward, per MoE layer: [nTokens * nExpert] (dense layers absent). */
export type RouterLogits = Map<number, Float32Array>;

/**
 * `inner` with its matmul watched: every product with a router matrix (blk.L.ffn_gate_inp) is
 * copied into `seen` as the router logits (plus the router's bias where it has one, GPT-OSS),
 * after `edit` (when given) has had the chance to change them; the model then reads the edited
 * logits (a changed biased logit goes back as itself less the bias). Everything else passes through.
 */
export function routerSpy(inner: Backend, model: Model, seen: RouterLogits, edit?: (layer: number, logits: Float32Array) => void): Backend {
  const cfg = model.config;
  const routers = new Map<WeightMatrix, { layer: number; bias: Float32Array | null }>();
  for (let l = 0; l < cfg.nLayer; l++) {
    const name = `blk.${l}.ffn_gate_inp.weight`;
    if (model.weights.has(name)) {
      routers.set(model.weights.matrix(name, cfg.nExpert, cfg.dModel), { layer: l, bias: model.weights.optionalVector(`blk.${l}.ffn_gate_inp.bias`, cfg.nExpert) });
    }
  }
  return new Proxy(inner, {
    get(target, prop) {
      if (prop === "matmul") {
        return (w: WeightMatrix, x: Float32Array, n: number, out: Float32Array): void => {
          target.matmul(w, x, n, out);
          const r = routers.get(w);
          if (r === undefined) return;
          const logits = out.slice();
          if (r.bias) for (let i = 0; i < logits.length; i++) logits[i] += r.bias[i % cfg.nExpert]!;
          if (edit) {
            const before = logits.slice();
            edit(r.layer, logits);
            for (let i = 0; i < logits.length; i++) if (logits[i] !== before[i]) out[i] = logits[i]! - (r.bias ? r.bias[i % cfg.nExpert]! : 0);
          }
          seen.set(r.layer, logits);
        };
      }
      const v = Reflect.get(target, prop, target) as unknown;
      return typeof v === "function" ? v.bind(target) : v;
    },
  });
}

/**
 * One routing decision: at (layer, token) moira takes the k experts with the best selection
 * scores (model/routing.ts: the router logits' gating plus the layer's selection bias); `kth` is
 * the last one taken, `next` the first one left out. `tie` is the smaller change of one router
 * logit that makes them tie: `expert` (next, raised, or kth, lowered) to the logit `to`;
 * `margin` is its size: how far the decision is from going the other way, in router logits.
 * Without a selection bias that is the k-th largest router logit minus the (k+1)-th (for softmax
 * gating log(p_k / p_k+1)). With expert groups see groupedSite.
 */
export interface RouterSite { layer: number; token: number; margin: number; kth: number; next: number; tie: { expert: number; to: number } }

/** Every routing decision of a forward, smallest margin first. */
export function routerSites(model: Model, router: RouterLogits): RouterSite[] {
  const cfg = model.config, nE = cfg.nExpert, k = cfg.nExpertUsed;
  const ranker = new ExpertRouter(cfg);
  const ranked = new Int32Array(k + 1);
  const sites: RouterSite[] = [];
  for (const [layer, logits] of router) {
    const bias = selectionBias(model.weights, cfg, layer);
    for (let token = 0; token < logits.length / nE; token++) {
      const row = logits.subarray(token * nE, (token + 1) * nE);
      if (cfg.expertGroups > 1) {
        sites.push(groupedSite(ranker, k, row, bias, layer, token));
        continue;
      }
      ranker.rank(row, bias, k + 1, ranked);
      const kth = ranked[k - 1]!, next = ranked[k]!;
      const tie = smallestTie(cfg.expertGating, row, bias, kth, next);
      sites.push({ layer, token, margin: tie.expert === next ? tie.to - row[next]! : row[kth]! - tie.to, kth, next, tie });
    }
  }
  return sites.sort((x, y) => x.margin - y.margin);
}

/**
 * A routing decision under expert groups, which can also go the other way at the group level (the
 * token's expert_group_used_count-th best group against the next one, which swaps several experts
 * at once): the one-logit change of least size that changes the chosen experts, raising a left-out
 * expert's router logit or lowering a chosen one's, whichever level it acts at. Found per expert
 * by bisection through the routing itself (the choice, once changed, stays changed as the logit
 * moves on) to ~1e-9; `next` is an expert that then comes in, `kth` one that goes out; a change
 * above 1e3 counts as none (a sigmoid score saturating short of the bar).
 */
function groupedSite(ranker: ExpertRouter, k: number, row: Float32Array, bias: Float32Array | null, layer: number, token: number): RouterSite {
  const chosen = new Int32Array(k);
  const choice = (): Set<number> => {
    ranker.rank(row, bias, k, chosen);
    return new Set(chosen);
  };
  const before = choice();
  const changedAt = (e: number, to: number): Set<number> | null => {
    const x0 = row[e]!;
    row[e] = to;
    const after = choice();
    row[e] = x0;
    return [...before].some((x) => !after.has(x)) ? after : null;
  };
  let site: RouterSite = { layer, token, margin: Infinity, kth: -1, next: -1, tie: { expert: -1, to: NaN } };
  for (let e = 0; e < row.length; e++) {
    const x0 = row[e]!;
    const dir = before.has(e) ? -1 : 1; // a chosen expert goes down, a left-out one up
    // no change beyond the best site's so far (nor 1e3) is worth finding
    const limit = Math.min(site.margin, 1e3);
    let hi = Math.min(1, limit);
    while (!changedAt(e, x0 + dir * hi) && hi < limit) hi = Math.min(2 * hi, limit);
    if (!changedAt(e, x0 + dir * hi)) continue;
    let lo = 0;
    while (hi - lo > 1e-9 * Math.max(1, Math.abs(x0))) {
      const mid = (lo + hi) / 2;
      if (changedAt(e, x0 + dir * mid)) hi = mid; else lo = mid;
    }
    if (hi >= site.margin) continue;
    const after = changedAt(e, x0 + dir * hi)!;
    site = {
      layer, token, margin: hi, kth: [...before].find((x) => !after.has(x))!, next: [...after].find((x) => !before.has(x))!,
      tie: { expert: e, to: x0 + dir * hi },
    };
  }
  return site;
}

/** The smaller one-logit change (row: the router logits) that gives `next` the selection score of `kth`. */
function smallestTie(gating: ExpertGating, row: Float32Array, bias: Float32Array | null, kth: number, next: number): RouterSite["tie"] {
  if (gating === "sigmoid") {
    // sigmoid(x_next) + b_next = sigmoid(x_kth) + b_kth, moving x_next up or x_kth down
    const b = (e: number) => (bias ? bias[e]! : 0);
    const sigmoid = (x: number) => 1 / (1 + Math.exp(-x));
    const logit = (p: number) => (p <= 0 ? -Infinity : p >= 1 ? Infinity : Math.log(p / (1 - p)));
    const up = logit(sigmoid(row[kth]!) + b(kth) - b(next)), down = logit(sigmoid(row[next]!) + b(next) - b(kth));
    return up - row[next]! <= row[kth]! - down ? { expert: next, to: up } : { expert: kth, to: down };
  }
  // softmax and softmax-weight rank by the logit itself
  if (bias) throw new Error(`router near-ties under ${gating} gating with a selection bias are not modelled`);
  return { expert: next, to: row[kth]! };
}

/** moira's logits of every position of `tokens` (one batch), with its router logits; each of `flips` swaps one decision. */
export function moiraForward(model: Model, backend: Backend, tokens: readonly number[], ...flips: RouterSite[]): { logits: Float32Array[]; router: RouterLogits } {
  const router: RouterLogits = new Map();
  const nE = model.config.nExpert, v = model.config.vocabSize;
  const spied = routerSpy(backend, model, router, flips.length === 0 ? undefined : (l, logits) => {
    for (const flip of flips) if (flip.layer === l) swapDecision(logits.subarray(flip.token * nE, (flip.token + 1) * nE), flip);
  });
  const s = new Session(model, { backend: spied, contextLength: tokens.length });
  const all = s.forward(tokens, { allLogits: true });
  return { logits: tokens.map((_, i) => all.subarray(i * v, (i + 1) * v)), router };
}

/** Moves one router logit of `row` (one token's) so that the decision `flip` goes the other way. */
function swapDecision(row: Float32Array, flip: RouterSite): void {
  // the (k+1)-th expert just beats the k-th (under groups: the change just swaps them); everything else unchanged
  const { expert, to } = flip.tie;
  const step = Math.max(1e-4, Math.abs(to) * 1e-5);
  row[expert] = expert === flip.next || to > row[expert]! ? to + step : to - step;
}

/**
 * The routing decision, among those with margin <= maxMargin, whose flip alone makes `holds`
 * true of moira's logits (smallest margin first); null when none does.
 */
export function explainingFlip(model: Model, backend: Backend, tokens: readonly number[], maxMargin: number, holds: (logits: Float32Array[]) => boolean): RouterSite | null {
  const { router } = moiraForward(model, backend, tokens);
  for (const site of routerSites(model, router)) {
    if (site.margin > maxMargin) break;
    if (holds(moiraForward(model, backend, tokens, site).logits)) return site;
  }
  return null;
}

/** max over tokens of |a - b| where both are finite. */
export function rowGap(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let gap = 0;
  for (let i = 0; i < Math.min(a.length, b.length); i++) {
    if (Number.isFinite(a[i]!) && Number.isFinite(b[i]!)) gap = Math.max(gap, Math.abs(a[i]! - b[i]!));
  }
  return gap;
}

// ---------------------------------------------------------------------------------------------
// One parity run: greedy continuation and prefill log-probabilities, with their explanations

export interface ParityRun {
  prompt: number[];
  /** moira's and llama.cpp's greedy continuations agree token for token */
  identical: boolean;
  divergence?: {
    step: number;
    /** moira's top-2 margin at that step: its best logit minus its second best */
    margin: number;
    moira: number[];
    llama: number[];
    /**
     * A router near-tie that explains it when the output margin does not: flipping this one
     * routing decision puts llama.cpp's token within `outMargin` of moira's best (null: none
     * with margin <= routerMargin does; absent: not needed).
     */
    flip?: RouterSite | null;
  };
  /** max |log p_moira - log p_llama.cpp| over prompt positions and tokens */
  prefillGap: number;
  /**
   * The same after explaining router near-ties: per position the smallest of its gap and its
   * gaps once one routing decision with margin <= routerMargin is flipped, or two in a chain (the
   * second such a near-tie, at a later layer or token, of the routing the first flip gives: a
   * flipped expert moves the hidden state enough to make new near-ties); the max of those.
   */
  residualGap: number;
  /** the largest margin among the flips that at least halved some position's gap (0: none did) */
  flipMargin: number;
}

/** Runs one prompt through moira and llama.cpp (see ParityRun). */
export async function parityRun(
  model: Model, backend: Backend, llama: OracleModel, prompt: readonly number[],
  opts: { nGen: number; eos: ReadonlySet<number>; outMargin: number; routerMargin: number },
): Promise<ParityRun> {
  const ours = moiraGreedy(model, backend, prompt, opts.nGen);
  const theirs = await llama.greedy(prompt, opts.nGen);
  const at = firstDivergence(ours.ids, theirs, opts.eos);
  const run: ParityRun = { prompt: [...prompt], identical: at < 0, prefillGap: 0, residualGap: 0, flipMargin: 0 };
  if (at >= 0 && at < theirs.length) {
    const margin = topTwoMargin(ours.logits[at]!);
    run.divergence = { step: at, margin, moira: ours.ids, llama: theirs };
    if (margin > opts.outMargin) {
      const want = theirs[at]!;
      run.divergence.flip = explainingFlip(model, backend, [...prompt, ...ours.ids.slice(0, at)], opts.routerMargin, (logits) => {
        const last = logits.at(-1)!;
        let max = -Infinity;
        for (const x of last) max = Math.max(max, x);
        return last[want]! >= max - opts.outMargin;
      });
    }
  } else if (at >= 0) {
    // llama.cpp stopped at an end-of-generation token and moira did not
    run.divergence = { step: at, margin: Infinity, moira: ours.ids, llama: theirs, flip: null };
  }

  const lpLlama = await llama.logProbs(prompt);
  const base = moiraForward(model, backend, prompt);
  const gaps = base.logits.map((l, p) => rowGap(logSoftmax(l), lpLlama[p]!));
  run.prefillGap = Math.max(...gaps);
  const residual = gaps.slice();
  const account = (logits: Float32Array[], margin: number) => logits.forEach((l, p) => {
    const g = rowGap(logSoftmax(l), lpLlama[p]!);
    if (g < residual[p]!) residual[p] = g;
    if (g < gaps[p]! / 2) run.flipMargin = Math.max(run.flipMargin, margin);
  });
  for (const site of routerSites(model, base.router)) {
    if (site.margin > opts.routerMargin) break;
    const flipped = moiraForward(model, backend, prompt, site);
    account(flipped.logits, site.margin);
    for (const then of routerSites(model, flipped.router)) {
      if (then.margin > opts.routerMargin) break;
      if (then.token > site.token || (then.token === site.token && then.layer > site.layer)) {
        account(moiraForward(model, backend, prompt, site, then).logits, Math.max(site.margin, then.margin));
      }
    }
  }
  run.residualGap = Math.max(...residual);
  return run;
}
