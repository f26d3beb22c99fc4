/** Planner: budget parsing and the split of a budget. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { parseBudget, formatBytes, calibrateWidth, calibrateDistance, MAX_PREFETCH_DISTANCE } from "../src/offload/index.js";
import { InvalidArgumentError } from "../src/errors.js";

test("parseBudget: plain bytes, binary and decimal suffixes", () => {
  assert.equal(parseBudget("1048576"), 1048576);
  assert.equal(parseBudget("3GiB"), 3 * 2 ** 30);
  assert.equal(parseBudget("512MiB"), 512 * 2 ** 20);
  assert.equal(parseBudget("64KiB"), 64 * 1024);
  assert.equal(parseBudget("3GB"), 3e9);
  assert.equal(parseBudget("500MB"), 5e8);
  assert.equal(parseBudget("2KB"), 2000);
  assert.equal(parseBudget("1.5GiB"), 1.5 * 2 ** 30);
  assert.equal(parseBudget("3G"), 3 * 2 ** 30);
  for (const bad of ["", "abc", "3XB", "-1GiB", "0"]) assert.throws(() => parseBudget(bad), InvalidArgumentError, bad);
});

test("formatBytes", () => {
  assert.equal(formatBytes(3 * 2 ** 30), "3 GiB");
  assert.equal(formatBytes(412 * 2 ** 20), "412 MiB");
});

test("calibrateWidth: loads that fit in a layer's compute, within [topK, nExpert]", () => {
  assert.equal(calibrateWidth({ layerMs: 1, readMs: 2, topK: 8, nExpert: 64 }), 8);
  assert.equal(calibrateWidth({ layerMs: 30, readMs: 2, topK: 8, nExpert: 64 }), 15);
  assert.equal(calibrateWidth({ layerMs: 300, readMs: 2, topK: 8, nExpert: 64 }), 64);
});

test("planMemory counts the KV cache at its element type; fitContext shortens an unset context to fit the budget", async () => {
  const { mkdtempSync, rmSync } = await import("node:fs");
  const { tmpdir } = await import("node:os");
  const { join } = await import("node:path");
  const { makeModel } = await import("../src/tools/make-model/index.js");
  const { Model } = await import("../src/model/model.js");
  const { planMemory } = await import("../src/offload/planner.js");
  const { fitContext } = await import("../src/cli/offload-options.js");
  const { BudgetError } = await import("../src/errors.js");
  const dir = mkdtempSync(join(tmpdir(), "moira-plan-"));
  try {
    const path = join(dir, "m.gguf");
    await makeModel({ out: path, preset: "tiny-olmoe", type: "Q4_K", layers: 3, experts: 8, topK: 2, seed: 4 });
    const model = Model.open(path);
    try {
      const at = (contextLength: number, kvType?: "f32" | "f16") =>
        planMemory(model, { budget: 2 ** 40, contextLength, maxBatch: 64, policy: "fate", kvType });
      assert.equal(at(1024, "f16").kvBytes * 2, at(1024, "f32").kvBytes);
      assert.equal(at(1024).kvBytes, at(1024, "f32").kvBytes);
      const maxBatch = () => 64;
      const notes: string[] = [];
      const notify = (m: string) => notes.push(m);
      // a budget that holds 4096 positions: nothing changes, nothing said
      const roomy = at(4096).minimumBytes + 10 * at(4096).slotBytes;
      assert.equal(fitContext(model, { memoryBudget: roomy }, { wanted: 4096, needed: 100, maxBatch, notify }), 4096);
      assert.deepEqual(notes, []);
      // --context is taken as given, whatever the budget (the planner refuses it later)
      assert.equal(fitContext(model, { memoryBudget: at(64).minimumBytes, context: 4096 }, { wanted: 4096, needed: 100, maxBatch, notify }), 4096);
      // too small for 4096 positions: shortened, the KV cache and scratch taking at most half the
      // room beyond the weights and working slots, and the user told
      const budget = at(4096).minimumBytes - 1;
      const c = fitContext(model, { memoryBudget: budget }, { wanted: 4096, needed: 100, maxBatch, notify });
      assert.ok(c >= 100 && c < 4096, `context ${c}`);
      const floor = at(1).minimumBytes;
      assert.ok(at(c).minimumBytes - floor <= (budget - floor) / 2);
      assert.ok(at(c + 256).minimumBytes - floor > (budget - floor) / 2, "not the longest that fits");
      assert.equal(planMemory(model, { budget, contextLength: c, maxBatch: 64 }).budget, budget);
      assert.equal(notes.length, 1);
      assert.match(notes[0]!, new RegExp(`context shortened to ${c} positions .*--context`));
      // f16 KV: the same budget fits a longer context
      assert.ok(fitContext(model, { memoryBudget: budget, kvType: "f16" }, { wanted: 4096, needed: 100, maxBatch }) > c);
      // too small even for the positions the run needs: the planner's error for those
      assert.throws(() => fitContext(model, { memoryBudget: at(600).minimumBytes - 1 }, { wanted: 4096, needed: 600, maxBatch }),
        (e: unknown) => e instanceof BudgetError && /600 positions/.test((e as Error).message));
    } finally {
      model.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("calibrateDistance: the layers one expert read spans, within [1, max]", () => {
  assert.equal(calibrateDistance({ layerMs: 2.4, readMs: 1.0 }), 1, "a read fits in a layer: Fate's next layer");
  assert.equal(calibrateDistance({ layerMs: 2.4, readMs: 2.4 }), 1);
  assert.equal(calibrateDistance({ layerMs: 2.4, readMs: 4.4 }), 2, "Qwen1.5-MoE at 50 %");
  assert.equal(calibrateDistance({ layerMs: 1, readMs: 2.5 }), 3);
  assert.equal(calibrateDistance({ layerMs: 1, readMs: 100 }), MAX_PREFETCH_DISTANCE);
  assert.equal(calibrateDistance({ layerMs: 1, readMs: 100, max: 2 }), 2, "a model with 3 MoE layers");
  assert.equal(calibrateDistance({ layerMs: 0, readMs: 1, max: 3 }), 3);
});
