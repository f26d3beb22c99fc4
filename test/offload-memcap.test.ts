/**
 * The budget holds for real: `moira bench` offloading a model whose experts are larger than its
 * --memory-budget runs to the end under a memory cgroup (../shared/tools/memcap: RAM + page cache)
 * of budget + 10% + the Node runtime (~160 MiB, outside the budget by design), with the model file
 * evicted from the page cache first. Skips with a message where memcap or cgroups are unavailable.
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
const RUNTIME = 160 * 2 ** 20;

function memcapProblem(): string | false {
  if (!existsSync(MEMCAP)) return `memcap not found at ${MEMCAP}`;
  if (!existsSync(join(REPO_ROOT, "dist", "cli", "main.js"))) return "dist/ not built (npx tsc -p tsconfig.json)";
  const r = spawnSync(MEMCAP, [String(256 * 2 ** 20), "--", "true"], { encoding: "utf8" });
  if (r.status !== 0) return `memory cgroups unavailable here (memcap: ${(r.stderr || `exit ${r.status}`).trim().split("\n").pop()})`;
  return false;
}

const skip = memcapProblem();

test("offloading runs under memcap at budget + 10% (+ runtime) without being OOM-killed", { skip, timeout: 300_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), "moira-memcap-"));
  try {
    const path = join(dir, "olmoe-memcap.gguf");
    // 4 layers x 16 experts at d_model 512 / d_ff 1024: experts ~9 MiB of ~12 MiB
    await makeModel({ out: path, preset: "tiny-olmoe", type: "Q4_K", layers: 4, experts: 16, topK: 4, seed: 5, dModel: 512, dFf: 1024 });
    const model = Model.open(path);
    let budget: number, expertBytes: number;
    try {
      const probe = planMemory(model, { budget: 2 ** 40, contextLength: 64 + 16 + 1, maxBatch: 64, policy: "lru" });
      expertBytes = probe.expertFileBytes;
      // the minimum plus a quarter of the experts cached: most of the experts stay on disk
      budget = probe.minimumBytes + Math.floor(probe.allExpertSlots / 4) * probe.slotBytes;
    } finally {
      model.close();
    }
    assert.ok(budget < statSync(path).size, "the model must not fit the budget");
    const cap = Math.floor(budget * 1.1) + RUNTIME;
    for (const policy of ["none", "lru", "fate"]) {
      const r = spawnSync(MEMCAP, ["--evict", path, String(cap), "--", process.execPath, join(REPO_ROOT, "bin", "moira.js"), "bench", "-m", path,
        "--memory-budget", String(budget), "--policy", policy, "--predictor", policy === "fate" ? "fate" : "none",
        "--prompt-tokens", "64", "--gen-tokens", "16", "--json", "--stats"], { encoding: "utf8", maxBuffer: 64 << 20 });
      assert.notEqual(r.status, 137, `${policy}: OOM-killed under a ${cap}-byte cap (budget ${budget}):\n${r.stderr}`);
      assert.equal(r.status, 0, `${policy}: exit ${r.status}:\n${r.stderr}`);
      const res = JSON.parse(r.stdout.trim().split("\n").pop()!) as { genTokens: number; offload: { total: { bytesRead: number } } };
      assert.equal(res.genTokens, 16);
      assert.ok(res.offload.total.bytesRead > 0, `${policy}: experts were read from disk`);
      assert.ok(expertBytes > 0);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
