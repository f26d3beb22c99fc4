/**
 * sample() against a plain full-sort sampler (the walk it replaces): the same token for the same
 * logits, options and random state, over many random logit vectors and option combinations.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { Rng, sample, type SamplerOptions } from "./sampler.js";

/** The sampler as first written: sort every candidate, then walk the stages in rank order. */
function sampleByFullSort(logits: Float32Array, o: SamplerOptions, rng: Rng, history: readonly number[] = []): number {
  const temperature = o.temperature ?? 0.8;
  const penalty = o.repeatPenalty ?? 1;
  const l = Float32Array.from(logits);
  if (penalty !== 1) {
    for (const t of new Set(history.slice(-(o.repeatLastN ?? 64)))) l[t] = l[t] > 0 ? l[t] / penalty : l[t] * penalty;
  }
  let ids = Array.from({ length: l.length }, (_, i) => i).sort((a, b) => l[b] - l[a] || a - b);
  if (temperature === 0) return ids[0];
  if (o.topK) ids = ids.slice(0, o.topK);
  const max = l[ids[0]];
  const u = rng.next();
  if (!Number.isFinite(max)) return ids[0];
  let probs = ids.map((i) => Math.exp(l[i] - max));
  const total = probs.reduce((a, b) => a + b, 0);
  probs = probs.map((p) => p / total);
  if ((o.topP ?? 1) < 1) {
    let acc = 0, n = 0;
    while (n < probs.length && acc < o.topP!) acc += probs[n++];
    ids = ids.slice(0, Math.max(1, n));
  }
  if ((o.minP ?? 0) > 0) ids = ids.slice(0, Math.max(1, probs.slice(0, ids.length).filter((p) => p >= o.minP! * probs[0]).length));
  const w = ids.map((i) => Math.exp((l[i] - max) / temperature));
  let r = u * w.reduce((a, b) => a + b, 0);
  for (let j = 0; j < ids.length; j++) if ((r -= w[j]) <= 0) return ids[j];
  return ids[ids.length - 1];
}

/** Normal-ish logits: `scale` sets how peaked the distribution is; `step` > 0 rounds them (ties). */
function randomLogits(rng: Rng, n: number, o: { scale: number; step?: number; masked?: number }): Float32Array {
  const l = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const g = Math.sqrt(-2 * Math.log(1 - rng.next())) * Math.cos(2 * Math.PI * rng.next());
    let v = g * o.scale;
    if (o.step) v = Math.round(v / o.step) * o.step;
    l[i] = rng.next() < (o.masked ?? 0) ? -Infinity : v;
  }
  return l;
}

const pick = <T>(rng: Rng, xs: readonly T[]): T => xs[Math.floor(rng.next() * xs.length)];

function compare(cases: number, seed: number, vocabs: readonly number[], shapes: readonly { scale: number; step?: number; masked?: number }[]): void {
  const g = new Rng(seed);
  let sampled = 0;
  for (let c = 0; c < cases; c++) {
    const n = pick(g, vocabs);
    const logits = randomLogits(g, n, pick(g, shapes));
    const o: SamplerOptions = {
      temperature: pick(g, [0, 0.3, 0.8, 1, 1.7]),
      topK: pick(g, [0, 1, 2, 40, 1023, 1024, 1025, 3000, n - 1, n, n + 7]),
      topP: pick(g, [1, 1, 0.95, 0.5, 0.05]),
      minP: pick(g, [0, 0, 0.05, 0.3, 1]),
      repeatPenalty: pick(g, [1, 1, 1.3]),
    };
    if (o.topK! < 0) o.topK = 0;
    const history = Array.from({ length: 80 }, () => Math.floor(g.next() * n));
    for (let draw = 0; draw < 4; draw++) {
      const seedDraw = Math.floor(g.next() * 2 ** 32);
      const want = sampleByFullSort(logits, o, new Rng(seedDraw), history);
      const got = sample(logits, o, new Rng(seedDraw), history);
      assert.equal(got, want, `case ${c} draw ${draw}: n=${n} ${JSON.stringify(o)}`);
      sampled++;
    }
  }
  assert.equal(sampled, cases * 4);
}

test("same token as the full-sort walk: few candidates (sorted walk), ties and -Infinity included", () => {
  compare(600, 1, [1, 2, 5, 37, 300, 1024], [
    { scale: 1 }, { scale: 4 }, { scale: 0.01 }, { scale: 2, step: 0.5 }, { scale: 3, step: 1, masked: 0.3 }, { scale: 1, masked: 0.9 },
  ]);
});

test("same token as the full-sort walk: many candidates (partitioned search)", () => {
  compare(300, 2, [1025, 1500, 4099], [{ scale: 1 }, { scale: 3 }, { scale: 8 }, { scale: 0.2 }, { scale: 3, masked: 0.5 }, { scale: 2, step: 0.25 }]);
});

test("same token as the full-sort walk on an OLMoE-size vocabulary (50,280), with the CLI and OpenAI defaults", () => {
  const g = new Rng(3);
  const options: SamplerOptions[] = [
    { temperature: 0.8, topK: 40, topP: 0.95, minP: 0.05 },
    { temperature: 1, topK: 0, topP: 1, minP: 0 },
    { temperature: 0.7, topK: 0, topP: 0.9, minP: 0 },
    { temperature: 1.2, topK: 0, topP: 1, minP: 0.02 },
  ];
  for (let c = 0; c < 12; c++) {
    const logits = randomLogits(g, 50_280, { scale: pick(g, [1.5, 3, 6]) });
    for (const o of options) {
      const seedDraw = Math.floor(g.next() * 2 ** 32);
      assert.equal(sample(logits, o, new Rng(seedDraw)), sampleByFullSort(logits, o, new Rng(seedDraw)), JSON.stringify(o));
    }
  }
});

test("the draw follows the probabilities: a two-token vocabulary at 3:1, and a spread one", () => {
  // logits ln 3 and 0: the first token three times out of four
  const two = new Float32Array([Math.log(3), 0]);
  const rng = new Rng(7);
  let first = 0;
  for (let i = 0; i < 4000; i++) if (sample(two, { temperature: 1 }, rng) === 0) first++;
  assert.ok(Math.abs(first / 4000 - 0.75) < 0.03, `first token ${first} of 4000`);
  // a large vocabulary where the first 10 ids hold half the mass: they are drawn about half the time
  const n = 5000, l = new Float32Array(n).fill(0);
  for (let i = 0; i < 10; i++) l[i] = Math.log((n - 10) / 10);
  let head = 0;
  for (let i = 0; i < 2000; i++) if (sample(l, { temperature: 1 }, rng) < 10) head++;
  assert.ok(Math.abs(head / 2000 - 0.5) < 0.05, `head ${head} of 2000`);
});

test("edge cases: all -Infinity gives the lowest id; one finite logit is always chosen; greedy ties go to the lower id", () => {
  for (const n of [3, 2000]) {
    const l = new Float32Array(n).fill(-Infinity);
    assert.equal(sample(l, { temperature: 1 }, new Rng(1)), 0);
    l[n - 2] = -50;
    for (let s = 0; s < 20; s++) assert.equal(sample(l, { temperature: 1.5, topP: 1 }, new Rng(s)), n - 2);
    const t = new Float32Array(n).fill(1);
    t[n - 1] = 2; t[n - 3] = 2;
    assert.equal(sample(t, { temperature: 0 }, null), n - 3);
    assert.equal(sample(t, { temperature: 1, topK: 1 }, new Rng(5)), n - 3);
  }
  assert.throws(() => sample(new Float32Array(4), { temperature: 1 }, null), /random source/);
});
