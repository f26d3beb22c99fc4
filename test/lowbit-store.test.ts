/**
 * Low-bit expert copies end to end: `writeLowbitSidecar` (moira quantize-experts) and the
 * ExpertStore serving misses from the sidecar (--lowbit-miss). Expert widths that are not whole
 * Q2_K blocks fall back per tensor (Q4_0, or the model's own bytes when already Q4_0).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { closeSync, mkdtempSync, openSync, readSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Model } from "../src/model/model.js";
import { Session } from "../src/engine/session.js";
import type { Backend } from "../src/backend/backend.js";
import { nativeOrRef } from "./backends.js";
import { makeModel } from "../src/tools/make-model/index.js";
import { ExpertStore } from "../src/offload/store.js";
import { planMemory } from "../src/offload/planner.js";
import { OffloadStats } from "../src/offload/stats.js";
import { openLowbitSidecar, writeLowbitSidecar } from "../src/offload/lowbit.js";
import { GGMLType } from "../src/formats/quant/types.js";

const dir = mkdtempSync(join(tmpdir(), "moira-lowbit-"));
process.on("exit", () => rmSync(dir, { recursive: true, force: true }));

function logitsOf(model: Model, backend: Backend, prompt: number[], steps: number, experts?: ExpertStore): Float32Array[] {
  const s = new Session(model, { backend, experts, contextLength: prompt.length + steps + 1 });
  const V = model.config.vocabSize;
  const out = [s.forward(prompt)];
  for (let i = 0; i < steps; i++) out.push(s.decodeStep(3 + ((i * 29) % 200)));
  return out.map((l) => l.slice(l.length - V));
}

test("quantize-experts Q2_K with an expert width of 320 (not whole 256-blocks): per-tensor fallback; --lowbit-miss serves misses low-bit", async () => {
  const path = join(dir, "qwen-320.gguf");
  // gate/up rows are d_model = 256 wide (Q2_K); down rows are d_ff = 320 wide (Q4_0 in the model already)
  await makeModel({ out: path, preset: "tiny-qwen2moe", type: "Q4_K", layers: 2, experts: 8, topK: 2, dFf: 320, seed: 7 });
  const model = Model.open(path);
  const backend = await nativeOrRef();
  try {
    const side = join(dir, "qwen-320.lowbit.gguf");
    const r = writeLowbitSidecar(model, "Q2_K", side);
    const src = openLowbitSidecar(model, side);
    const l0 = src.tensors.get(0)!;
    assert.equal(l0.gate.type, GGMLType.Q2_K);
    assert.equal(l0.up.type, GGMLType.Q2_K);
    assert.equal(l0.down.type, GGMLType.Q4_0, "320-wide rows fall back to Q4_0");
    const full = model.weights.stacked("blk.0.ffn_down_exps.weight", 8, 256, 320);
    assert.equal(full.type, GGMLType.Q4_0);
    // the down tensor was already Q4_0: its bytes are copied, not re-quantized
    const d1 = src.tensors.get(1)!.down;
    const copied = Buffer.alloc(d1.nExpert * d1.expertBytes);
    const fd = openSync(side, "r");
    try { readSync(fd, copied, 0, copied.length, d1.meta.file!.offset); } finally { closeSync(fd); }
    assert.ok(copied.equals(model.weights.stackedData("blk.1.ffn_down_exps.weight")), "down bytes copied verbatim");
    const fullExpertBytes = ["gate", "up", "down"].reduce((a, p) => a + model.weights.stacked(`blk.0.ffn_${p}_exps.weight`, 8, p === "down" ? 256 : 320, p === "down" ? 320 : 256).expertBytes, 0);
    assert.ok(r.expertBytes < fullExpertBytes, `low-bit expert ${r.expertBytes} B < full ${fullExpertBytes} B`);

    const prompt = [5, 17, 42, 99, 7, 123, 64, 8];
    const steps = 6;
    const ref = logitsOf(model, backend, prompt, steps);
    const run = (missWeight: number) => {
      const plan = planMemory(model, { budget: 2 ** 40, contextLength: prompt.length + steps + 1, policy: "none" });
      // no cache: every decode access is a miss, so every one can be served low-bit
      const stats = new OffloadStats(model.config.nLayer);
      const store = new ExpertStore(model.config, model.weights, path, {
        plan, policy: "none", predictor: "none", backend, stats,
        lowbit: { source: src, missWeight },
      });
      try {
        return { logits: logitsOf(model, backend, prompt, steps, store), lowbit: stats.total().lowbit };
      } finally {
        store.dispose();
      }
    };
    const off = run(0);
    assert.equal(off.lowbit, 0);
    off.logits.forEach((l, i) => assert.deepEqual(l, ref[i], `--lowbit-miss 0 is exact (step ${i})`));
    const on = run(1);
    assert.ok(on.lowbit >= steps * model.config.nLayer * model.config.nExpertUsed, `decode misses served low-bit: ${on.lowbit}`);
    // close to full precision, not equal: the prompt runs at full precision, decode experts at Q2_K
    let maxDiff = 0, scale = 0, differs = false;
    on.logits.forEach((l, i) => l.forEach((v, j) => {
      maxDiff = Math.max(maxDiff, Math.abs(v - ref[i]![j]!));
      scale = Math.max(scale, Math.abs(ref[i]![j]!));
      if (v !== ref[i]![j]) differs = true;
    }));
    assert.ok(differs, "low-bit experts change the logits");
    assert.ok(maxDiff < 0.5 * scale, `low-bit logits stay close: max diff ${maxDiff} of ${scale}`);
  } finally {
    backend.dispose();
    model.close();
  }
});

