/**
 * The native compute pool under stress: compiled on its own from native/threadpool.h with a small
 * driver (test/native/threadpool-stress.cc) and run for many back-to-back runs of alternating
 * task counts. A pool that lets a late worker claim a task of the next run (the bug this guards
 * against) crashes or miscounts within a fraction of a second here.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { REPO_ROOT } from "./shared.js";

test("thread pool: every task of every run runs exactly once, and run() returns only after them", () => {
  const dir = mkdtempSync(join(tmpdir(), "moira-pool-"));
  try {
    const exe = join(dir, "stress");
    const cc = spawnSync("g++", ["-O2", "-std=c++17", "-pthread", join(REPO_ROOT, "test/native/threadpool-stress.cc"), "-o", exe], { encoding: "utf8" });
    assert.equal(cc.status, 0, `g++ failed: ${cc.stderr}`);
    for (const threads of ["2", "3"]) {
      const r = spawnSync(exe, ["300000", threads], { encoding: "utf8", timeout: 120_000 });
      assert.equal(r.signal, null, `the stress run with ${threads} threads died of ${r.signal}`);
      assert.equal(r.status, 0, `the stress run with ${threads} threads: ${r.stdout}${r.stderr}`);
      assert.match(r.stdout, /300000 runs, 0 wrong task counts/);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
