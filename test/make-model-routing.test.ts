/**
 * make-model --routing-skew / --routing-from: deterministic, off by default (byte-identical files),
 * and the targeted experts really become the popular ones when the model runs. Also the
 * TraceObserver's token numbering across prefill and decode.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { makeModel, planModel, resolveShape, routingTargets } from "../src/tools/make-model/index.js";
import { Model } from "../src/model/model.js";
import { Session } from "../src/engine/session.js";
import { nativeOrRef } from "./backends.js";
import { routingStatistics, TraceObserver, type RoutingTrace } from "../src/trace/index.js";
import { InvalidArgumentError } from "../src/errors.js";

const dir = mkdtempSync(join(tmpdir(), "moira-make-model-routing-"));
process.on("exit", () => rmSync(dir, { recursive: true, force: true }));

// 2 layers of 8 experts top-2, small vocab: fast to write and to run
const SHAPE = { preset: "tiny", layers: 2, vocab: 512, context: 64 } as const;

/** native when built (required in CI), else ref */
const backend = nativeOrRef;

/** Routes 16 requests of 48 pseudo-random tokens (fixed LCG) through the model. */
async function trace(path: string): Promise<RoutingTrace> {
  const model = Model.open(path);
  const obs = new TraceObserver({ nLayer: model.config.nLayer, nExpert: model.config.nExpert, topK: model.config.nExpertUsed });
  const s = new Session(model, { backend: await backend(), contextLength: 48, observer: obs });
  let x = 12345;
  for (let r = 0; r < 16; r++) {
    obs.beginRequest(r);
    s.reset();
    const ids = Array.from({ length: 48 }, () => { x = (Math.imul(x, 1103515245) + 12345) >>> 0; return 3 + (x >>> 8) % (model.config.vocabSize - 3); });
    s.forward(ids);
  }
  return obs.toTrace(path);
}

test("make-model --routing-*: off by default (same bytes), deterministic, recorded in metadata", async () => {
  const a = join(dir, "plain.gguf"), b = join(dir, "plain-empty-routing.gguf");
  await makeModel({ ...SHAPE, out: a });
  await makeModel({ ...SHAPE, out: b, routing: {} });
  assert.deepEqual(readFileSync(a), readFileSync(b));
  assert.ok(!planModel(SHAPE).metadata.some(([k]) => k === "moira.routing"));

  const s1 = join(dir, "skew-1.gguf"), s2 = join(dir, "skew-2.gguf");
  await makeModel({ ...SHAPE, out: s1, routing: { skew: 1 } });
  await makeModel({ ...SHAPE, out: s2, routing: { skew: 1 } });
  assert.deepEqual(readFileSync(s1), readFileSync(s2));
  assert.notDeepEqual(readFileSync(s1), readFileSync(a));
  const meta = planModel({ ...SHAPE, routing: { skew: 1 } }).metadata.find(([k]) => k === "moira.routing");
  assert.equal(meta?.[1].value, "zipf skew 1");

  assert.throws(() => planModel({ ...SHAPE, routing: { skew: 0 } }), InvalidArgumentError);
  assert.throws(() => planModel({ ...SHAPE, routing: { skew: 1, from: "x.json" } }), InvalidArgumentError);
});

test("make-model --routing-skew: the targeted experts become the popular ones", async () => {
  const plain = join(dir, "plain.gguf"), skew = join(dir, "skew-1.gguf");
  const tp = await trace(plain), ts = await trace(skew);
  const targets = routingTargets(resolveShape(SHAPE), { skew: 1 }, 0);
  const sp = routingStatistics(tp), ss = routingStatistics(ts);
  assert.ok(ss.loadCv > sp.loadCv + 0.2, `load CV ${ss.loadCv} vs ${sp.loadCv} without --routing-skew`);
  for (let l = 0; l < ts.nLayer; l++) {
    const count = new Float64Array(ts.nExpert);
    let n = 0;
    for (const r of ts.requests) for (const t of r.tokens) { n++; for (const e of t.layers[l]!.experts) count[e]!++; }
    const tg = targets[l]!;
    const top = tg.indexOf(Math.max(...tg)), bottom = tg.indexOf(Math.min(...tg));
    assert.ok(count[top]! / n > ts.topK / ts.nExpert + 0.1, `layer ${l}: most popular target expert ${top} serves ${count[top]! / n}`);
    assert.ok(count[top]! > 3 * count[bottom]!, `layer ${l}: expert ${top} (${count[top]}) vs least popular target ${bottom} (${count[bottom]})`);
  }
});

test("make-model --routing-from: counts file by expert id; other expert counts by rank profile", () => {
  const f = join(dir, "counts.json");
  writeFileSync(f, JSON.stringify({ layers: [0, 15], data: [{ 0: 1, 1: 1, 2: 1, 3: 1, 4: 1, 5: 1, 6: 1, 7: 30 }, { 0: 30, 1: 1, 2: 1, 3: 1, 4: 1, 5: 1, 6: 1, 7: 1 }] }));
  const t = routingTargets(resolveShape(SHAPE), { from: f }, 0);
  assert.equal(t.length, 2);
  for (const row of t) assert.ok(Math.abs(row.reduce((a, b) => a + b, 0) - 2) < 1e-9);
  assert.equal(t[0]!.indexOf(Math.max(...t[0]!)), 7); // layer 0 → measured layer 0
  assert.equal(t[1]!.indexOf(Math.max(...t[1]!)), 0); // last layer → measured layer 15
  assert.ok(Math.max(...t[0]!) <= 0.95);
  const t16 = routingTargets(resolveShape({ ...SHAPE, experts: 16 }), { from: f }, 0);
  assert.equal(t16[0]!.length, 16);
  assert.equal(t16[0]!.filter((v) => v > 0.3).length, 2); // the top expert's share, resampled to 2 of 16
});

test("TraceObserver numbers prefill then decode tokens consecutively and restarts per request", () => {
  const obs = new TraceObserver({ nLayer: 2, nExpert: 4, topK: 1 });
  const route = (n: number) => { for (let l = 0; l < 2; l++) obs.onRouting(l, new Int32Array(n).fill(l), new Float32Array(n).fill(1), n, 1); };
  route(5); route(1); route(1);
  obs.beginRequest("b");
  route(3); route(1);
  const t = obs.toTrace("x");
  assert.deepEqual(t.requests.map((r) => r.tokens.map((x) => `${x.token}${x.phase[0]}`)), [["0p", "1p", "2p", "3p", "4p", "5d", "6d"], ["0p", "1p", "2p", "3d"]]);
});
