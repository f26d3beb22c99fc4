/**
 * The budget holds while the KV cache grows. `moira chat` talks to a ~880 MB model (Q4_K, 4
 * layers x 64 experts, 32 KiB of f32 KV per position) under a --memory-budget of about a third
 * of it, inside a memory cgroup (../shared/tools/memcap: RAM + page cache) of budget +
 * min(160 MiB, 10 %), with the model file evicted from the page cache first. Two long user lines
 * and their replies take the conversation past 700 positions: the KV cache grows block by block,
 * each block taking expert slots (the --stats split shows the cache shrinking), and the process's
 * peak RSS stays within budget + min(160 MiB, 10 %).
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
import { REPO_ROOT, shared } from "./shared.js";

const MEMCAP = shared("tools", "memcap");
const MIB = 2 ** 20;
const BUDGET = 300 * MIB;
/** what the process may hold beyond the budget: the Node runtime, within min(160 MiB, 10 %) */
const ALLOWANCE = Math.min(160 * MIB, Math.floor(BUDGET / 10));
const CONTEXT = 1024;

function memcapProblem(): string | false {
  if (!existsSync(MEMCAP)) return `memcap not found at ${MEMCAP}`;
  if (!existsSync(join(REPO_ROOT, "dist", "cli", "main.js"))) return "dist/ not built (npx tsc -p tsconfig.json)";
  const r = spawnSync(MEMCAP, [String(256 * MIB), "--", "true"], { encoding: "utf8" });
  if (r.status !== 0) return `memory cgroups unavailable here (memcap: ${(r.stderr || `exit ${r.status}`).trim().split("\n").pop()})`;
  return false;
}

const problem = memcapProblem();

const LINE = "Tell me a long story about the old lighthouse keeper who lived on the rocky island, his cat, the storms of winter, " +
  "the ships that passed in the night, and the letters he wrote to his daughter in the city far away.";

test("chat under a budget: the KV cache grows into the expert cache and peak RSS stays within budget + min(160 MiB, 10 %)",
  { skip: process.env.CI ? false : problem, timeout: 300_000 }, async () => {
    if (problem) assert.fail(`CI must run the memory-cap test: ${problem}`);
    const dir = mkdtempSync(join(tmpdir(), "moira-kv-memcap-"));
    try {
      const path = join(dir, "olmoe-kv.gguf");
      await makeModel({
        out: path, preset: "tiny-olmoe", type: "Q4_K", layers: 4, experts: 64, topK: 4, seed: 5, dModel: 1024, dFf: 2048,
        heads: 16, kvHeads: 16, context: 2048,
      });
      const cap = BUDGET + ALLOWANCE;
      const fileBytes = statSync(path).size;
      assert.ok(fileBytes > 2.5 * cap, `the model (${fileBytes}) must be several times the cap (${cap})`);
      const input = `${LINE} ${LINE}\nNow tell it again from the cat's point of view. ${LINE}\n`;
      const r = spawnSync(MEMCAP, ["--evict", path, String(cap), "--", process.execPath, join(REPO_ROOT, "bin", "moira.js"), "chat", "-m", path,
        "--memory-budget", String(BUDGET), "--context", String(CONTEXT), "--kv-type", "f32", "--max-tokens", "200", "--temperature", "0",
        "--threads", "2", "--stats"], { encoding: "utf8", input, maxBuffer: 64 << 20 });
      const cgroupPeak = Number(/memcap: limit \d+ bytes, peak (\d+) bytes/.exec(r.stderr)?.[1] ?? NaN);
      const where = `budget ${BUDGET}, cap ${cap}, cgroup peak ${cgroupPeak}`;
      assert.notEqual(r.status, 137, `${where}: OOM-killed:\n${r.stderr}`);
      assert.equal(r.status, 0, `${where}: exit ${r.status}:\n${r.stderr}`);
      assert.ok(cgroupPeak <= cap, `${where}: memcap reports a peak over the cap`);
      assert.match(r.stderr, /KV cache \d+ [KM]iB growing to 32 MiB \(1024 positions, in blocks of 256/, r.stderr);
      // the split as it changed: KV blocks committed, expert slots given up for each
      const split = /KV cache \/ expert cache slots by committed positions: (.*)/.exec(r.stderr)?.[1];
      assert.ok(split, `--stats shows the split:\n${r.stderr}`);
      const steps = split.split(" -> ").map((s) => {
        const m = /^(\d+): .* \/ (\d+)$/.exec(s);
        assert.ok(m, s);
        return { positions: Number(m[1]), slots: Number(m[2]) };
      });
      const grown = steps.filter((s) => s.positions >= 512);
      assert.ok(grown.length >= 2, `the KV cache grew past two blocks: ${split}`);
      const first = steps[0]!, most = steps.reduce((a, b) => (b.positions > a.positions ? b : a));
      assert.ok(most.slots < first.slots, `the expert cache gave slots to the KV cache: ${split}`);
      const rss = Number(/peak RSS (\d+) bytes/.exec(r.stderr)?.[1] ?? NaN);
      assert.ok(rss <= BUDGET + ALLOWANCE, `${where}: peak RSS ${rss} > budget + min(160 MiB, 10 %) = ${BUDGET + ALLOWANCE}`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
