/**
 * The budget holds for real. `moira bench` offloads a ~920 MB model (Q4_K, 4 layers x 64 wide
 * experts) under a --memory-budget of ~30 % of it, inside a memory cgroup (../shared/tools/memcap:
 * RAM + page cache) of budget + 10 % + the Node runtime (160 MiB, outside the budget by design),
 * with the model file evicted from the page cache first. The cap is well under half the file, so
 * a run that ignores the budget (all experts resident: the file's size in anonymous memory) or a
 * store that keeps every expert it reads (a 64-token prompt alone touches most of them) is
 * OOM-killed. moira's own accounting is checked too: the plan fits the budget, the store's arena
 * is the planned one and its peak use stays inside it, the process's peak RSS stays under
 * budget + runtime.
 *
 * Skips with a message where memcap or memory cgroups are unavailable, except in CI (env CI),
 * where that fails.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { makeModel } from "../src/tools/make-model/index.js";
import { Model } from "../src/model/model.js";
import { planMemory } from "../src/offload/planner.js";
import { REPO_ROOT, shared } from "./shared.js";

const MEMCAP = shared("tools", "memcap");
/** the Node runtime, outside the budget (measured: 65-80 MiB of cgroup peak beyond the plan) */
const RUNTIME = 160 * 2 ** 20;
const PROMPT = 64;
const GEN = 16;

function memcapProblem(): string | false {
  if (!existsSync(MEMCAP)) return `memcap not found at ${MEMCAP}`;
  if (!existsSync(join(REPO_ROOT, "dist", "cli", "main.js"))) return "dist/ not built (npx tsc -p tsconfig.json)";
  const r = spawnSync(MEMCAP, [String(256 * 2 ** 20), "--", "true"], { encoding: "utf8" });
  if (r.status !== 0) return `memory cgroups unavailable here (memcap: ${(r.stderr || `exit ${r.status}`).trim().split("\n").pop()})`;
  return false;
}

const problem = memcapProblem();

interface BenchJson {
  genTokens: number;
  peakRssBytes: number;
  budget: number;
  plan: { budget: number; nonExpertBytes: number; kvBytes: number; scratchBytes: number; arenaBytes: number; slotBytes: number; cacheSlots: number; transientSlots: number };
  offload: {
    total: { bytesRead: number };
    arena: { allocatedBytes: number; slotBytes: number; slots: number; peakSlotsUsed: number; peakBytes: number } | null;
  };
}

test("offloading a model 3x its budget runs under memcap at budget + 10% (+ runtime), and moira's own peaks stay in the budget",
  { skip: process.env.CI ? false : problem, timeout: 300_000 }, async () => {
    if (problem) assert.fail(`CI must run the memory-cap test: ${problem}`);
    const dir = mkdtempSync(join(tmpdir(), "moira-memcap-"));
    try {
      const path = join(dir, "olmoe-memcap.gguf");
      // 4 layers x 64 experts of 3.4 MiB (d_model 1024, d_ff 2048, Q4_K): 864 MiB of experts, 13 MiB else
      await makeModel({ out: path, preset: "tiny-olmoe", type: "Q4_K", layers: 4, experts: 64, topK: 4, seed: 5, dModel: 1024, dFf: 2048 });
      const fileBytes = statSync(path).size;
      const model = Model.open(path);
      let budget: number;
      try {
        const probe = planMemory(model, { budget: 2 ** 40, contextLength: PROMPT + GEN + 1, maxBatch: PROMPT, policy: "lru" });
        // the minimum plus a quarter of the experts cached: most of the experts stay on disk
        budget = probe.minimumBytes + Math.floor(probe.allExpertSlots / 4) * probe.slotBytes;
      } finally {
        model.close();
      }
      const cap = Math.floor(budget * 1.1) + RUNTIME;
      assert.ok(budget < 0.4 * fileBytes, `the budget (${budget}) must be well under the model (${fileBytes})`);
      assert.ok(fileBytes > 1.7 * cap, `the model (${fileBytes}) must not fit the cap (${cap}): a run ignoring the budget must be OOM-killed`);
      for (const policy of ["none", "lru", "fate"]) {
        const r = spawnSync(MEMCAP, ["--evict", path, String(cap), "--", process.execPath, join(REPO_ROOT, "bin", "moira.js"), "bench", "-m", path,
          "--memory-budget", String(budget), "--policy", policy, "--predictor", policy === "fate" ? "fate" : "none",
          "--prompt-tokens", String(PROMPT), "--gen-tokens", String(GEN), "--threads", "2", "--json", "--stats"], { encoding: "utf8", maxBuffer: 64 << 20 });
        const cgroupPeak = Number(/memcap: limit \d+ bytes, peak (\d+) bytes/.exec(r.stderr)?.[1] ?? NaN);
        const where = `${policy}: budget ${budget}, cap ${cap}, cgroup peak ${cgroupPeak}`;
        assert.notEqual(r.status, 137, `${where}: OOM-killed:\n${r.stderr}`);
        assert.equal(r.status, 0, `${where}: exit ${r.status}:\n${r.stderr}`);
        assert.ok(cgroupPeak <= cap, `${where}: memcap reports a peak over the cap`);
        const res = JSON.parse(r.stdout.trim().split("\n").pop()!) as BenchJson;
        assert.equal(res.genTokens, GEN);
        assert.equal(res.budget, budget);
        assert.ok(res.offload.total.bytesRead > 0, `${where}: experts were read from disk`);
        // the plan: every part moira allocates adds up to at most the budget
        const p = res.plan;
        const planned = p.nonExpertBytes + p.kvBytes + p.scratchBytes + p.arenaBytes;
        assert.ok(planned <= budget, `${where}: plan ${planned} > budget`);
        assert.equal(p.arenaBytes, (p.cacheSlots + p.transientSlots) * p.slotBytes);
        // the store: allocated exactly the planned arena, and never held more slots than it has
        const a = res.offload.arena;
        assert.ok(a, `${where}: the store reports its arena`);
        assert.equal(a.allocatedBytes, p.arenaBytes, `${where}: the store allocated ${a.allocatedBytes} bytes for a ${p.arenaBytes}-byte arena`);
        assert.ok(a.peakSlotsUsed > 0 && a.peakSlotsUsed <= a.slots, `${where}: peak ${a.peakSlotsUsed} of ${a.slots} slots`);
        assert.ok(a.peakBytes <= p.arenaBytes, `${where}: peak arena use ${a.peakBytes} > ${p.arenaBytes}`);
        if (policy !== "none") assert.ok(a.peakSlotsUsed > p.transientSlots, `${where}: the cache was used (peak ${a.peakSlotsUsed} slots)`);
        // the process: its own peak RSS within budget + runtime
        assert.ok(res.peakRssBytes <= budget + RUNTIME, `${where}: peak RSS ${res.peakRssBytes} > budget + runtime ${budget + RUNTIME}`);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
