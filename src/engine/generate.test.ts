/** generate(): the timings it reports cover whole steps (forward, sampling, detokenizing), as streamed. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { generate, type GenerationStats } from "./generate.js";
import { Rng, sample } from "./sampler.js";

const V = 8;
const busy = (ms: number) => { const until = performance.now() + ms; while (performance.now() < until); };
/** Logits whose argmax is `t`. */
const pointAt = (t: number) => { const l = new Float32Array(V); l[t] = 5; return l; };

/** A session whose forward takes `forwardMs`: the prompt predicts token 1, token t predicts t + 1. */
const fakeSession = (forwardMs: number) => ({
  prefill: (_: readonly number[]) => { busy(forwardMs); return pointAt(1); },
  decodeStep: (t: number) => { busy(forwardMs); return pointAt((t + 1) % V); },
});

/** A tokenizer whose stream decoder takes `pushMs` a token; `stopAt` is its end-of-generation id. */
const fakeTokenizer = (pushMs: number, stopAt: number[] = []) => ({
  eosIds: stopAt,
  createStreamDecoder: () => ({ push: (id: number) => { busy(pushMs); return `<${id}>`; }, flush: () => "" }),
});

async function drain(it: AsyncGenerator<{ token: number; text: string }, GenerationStats>): Promise<{ text: string; stats: GenerationStats }> {
  let text = "";
  let r = await it.next();
  while (!r.done) { text += r.value.text; r = await it.next(); }
  return { text, stats: r.value };
}

test("decode time counts detokenizing, not only the forward", async () => {
  const { text, stats } = await drain(generate(fakeSession(1), fakeTokenizer(12), [0, 0, 0], { maxTokens: 6, temperature: 0 }));
  assert.equal(text, "<1><2><3><4><5><6>");
  assert.equal(stats.generatedTokens, 6);
  assert.equal(stats.stopReason, "max-tokens");
  // 5 steps after the first token, each with a 12 ms detokenize (and a 1 ms forward)
  assert.ok(stats.decodeMs >= 5 * 13, `decode ${stats.decodeMs} ms`);
  assert.ok(stats.decodeTokensPerSecond <= 1000 / 13, `${stats.decodeTokensPerSecond} tok/s`);
  // prefill lasts until the first token is ready: its forward, its sampling, its text
  assert.ok(stats.prefillMs >= 13, `prefill ${stats.prefillMs} ms`);
});

test("decode time counts sampling", async () => {
  // sampling over a million candidates costs milliseconds a token; the forward, 1 ms
  const big = 1_000_000;
  const logits = new Float32Array(big).map((_, i) => Math.sin(i));
  const session = { prefill: () => { busy(1); return logits; }, decodeStep: () => { busy(1); return logits; } };
  const opts = { temperature: 1, topK: 0, topP: 1, minP: 0 };
  let sampleMs = Infinity;
  for (let i = 0; i < 3; i++) {
    const t = performance.now();
    sample(logits, opts, new Rng(i));
    sampleMs = Math.min(sampleMs, performance.now() - t);
  }
  const { stats } = await drain(generate(session, null, [0], { maxTokens: 5, ...opts, seed: 1 }));
  assert.ok(stats.decodeMs >= 4 * (1 + 0.5 * sampleMs), `decode ${stats.decodeMs} ms for 4 steps; one sample() ${sampleMs} ms`);
});

test("a stop token ends the stream; a slow reader that stops early gets stats at its pace through onStats", async () => {
  const stopped = await drain(generate(fakeSession(0), fakeTokenizer(0, [3]), [0], { maxTokens: 10, temperature: 0 }));
  assert.equal(stopped.text, "<1><2>");
  assert.equal(stopped.stats.generatedTokens, 3);
  assert.equal(stopped.stats.stopReason, "stop-token");

  const seen: GenerationStats[] = [];
  const it = generate(fakeSession(0), fakeTokenizer(0), [0], { maxTokens: 10, temperature: 0, onStats: (s) => seen.push(s) });
  // a reader that takes 8 ms over each token (measured on generate()'s clock: a timer may fire a
  // fraction of a millisecond early): the stream runs at its pace, and so does the count
  for (let i = 0; i < 3; i++) { await it.next(); await new Promise((r) => setTimeout(r, 1)); busy(8); }
  await it.return(undefined as never);
  assert.equal(seen.length, 1);
  assert.equal(seen[0].generatedTokens, 3);
  assert.equal(seen[0].stopReason, "stopped");
  assert.ok(seen[0].decodeMs >= 2 * 8, `decode ${seen[0].decodeMs} ms`);
});

test("an aborted signal ends the generation within one step, without an error", async () => {
  const ctl = new AbortController();
  let steps = 0;
  const session = { prefill: () => pointAt(1), decodeStep: (t: number) => { steps++; return pointAt((t + 1) % V); } };
  const it = generate(session, fakeTokenizer(0), [0], { maxTokens: 1000, temperature: 0, signal: ctl.signal });
  await it.next();
  await it.next();
  ctl.abort();
  const stepsAtAbort = steps;
  const { stats } = await drain(it);
  assert.equal(stats.stopReason, "aborted");
  assert.ok(steps - stepsAtAbort <= 1, `${steps - stepsAtAbort} decode steps after the abort`);
  assert.ok(stats.generatedTokens <= 3);

  let prefilled = false;
  const before = await drain(generate({ prefill: () => { prefilled = true; return pointAt(1); }, decodeStep: () => pointAt(1) }, null, [0], {
    maxTokens: 5, temperature: 0, signal: AbortSignal.abort(),
  }));
  assert.equal(prefilled, false, "aborted before the prefill: nothing runs");
  assert.equal(before.stats.stopReason, "aborted");
  assert.equal(before.stats.generatedTokens, 0);
});

test("logprobs: the raw distribution's log softmax, top alternatives in rank order", async () => {
  const logits = Float32Array.from([0, 2, 1, 2, -1, 0, 0, 0]);
  const session = { prefill: () => logits, decodeStep: () => logits };
  const it = generate(session, fakeTokenizer(0), [0], { maxTokens: 2, temperature: 0, repeatPenalty: 1.5, logprobs: { top: 3 } });
  const r = await it.next();
  assert.ok(!r.done);
  const z = Math.log(Array.from(logits).reduce((a, l) => a + Math.exp(l), 0));
  const lp = r.value.logprobs!;
  assert.equal(r.value.token, 1, "greedy: the lower id of the tied best");
  assert.ok(Math.abs(lp.logprob - (2 - z)) < 1e-9);
  assert.deepEqual(lp.top.map((t) => t.token), [1, 3, 2]);
  assert.ok(Math.abs(lp.top[2].logprob - (1 - z)) < 1e-9);
  // the second token is sampled from penalized logits (token 1 repeated), but reported under the raw ones
  const second = await it.next();
  assert.ok(!second.done);
  assert.equal(second.value.token, 3);
  assert.ok(Math.abs(second.value.logprobs!.logprob - (2 - z)) < 1e-9);
});

test("cachedTokens: only the rest of the prompt is prefilled; the whole prompt is the penalty's history", async () => {
  const seen: number[][] = [];
  const logits = Float32Array.from([0, 3, 2.9, 0, 0, 0, 0, 0]);
  const session = { prefill: (t: readonly number[]) => { seen.push([...t]); return logits; }, decodeStep: () => logits };
  const { stats } = await drain(generate(session, fakeTokenizer(0), [1, 5, 6], { maxTokens: 1, temperature: 0, repeatPenalty: 2, cachedTokens: 2 }));
  assert.deepEqual(seen, [[6]]);
  assert.equal(stats.promptTokens, 3);
  assert.equal(stats.cachedTokens, 2);
  // token 1 is in the cached part of the prompt: still penalized, so token 2 wins
  const { text } = await drain(generate(session, fakeTokenizer(0), [1, 5, 6], { maxTokens: 1, temperature: 0, repeatPenalty: 2, cachedTokens: 2 }));
  assert.equal(text, "<2>");
  await assert.rejects(generate(session, null, [1, 2], { maxTokens: 1, cachedTokens: 2 }).next(), /cachedTokens/);
});
