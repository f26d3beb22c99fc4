// `moira replay --json --report`: the HTML opens in headless Chromium without errors, and its
// charts carry exactly the numbers of the JSON output.
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync } from "node:fs";
import { spawnSync } from "node:child_process";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { REPO_ROOT, skipUnlessPresent } from "./shared.js";
import { TraceRecorder } from "../src/trace/format.js";
import { rng } from "../src/trace/synthetic.js";
import type { ReplayOutput } from "../src/trace/report.js";

const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";

function writeRandomTrace(path: string, withPredictions: boolean): void {
  const r = rng(11);
  const rec = new TraceRecorder(path, { model: "test", nLayer: 6, nExpert: 8, topK: 2 });
  for (let q = 0; q < 2; q++) {
    rec.beginRequest(q);
    let prev: number[][] = [];
    for (let t = 0; t < 60; t++) {
      const cur: number[][] = [];
      for (let l = 0; l < 6; l++) {
        const s = new Set<number>(prev[l] && r() < 0.5 ? [prev[l]![0]!] : []);
        while (s.size < 2) s.add(Math.floor(r() * r() * 8));
        cur.push([...s]);
      }
      cur.forEach((e, l) => rec.record({ token: t, layer: l, experts: e, weights: [0.6, 0.4], predicted: withPredictions && l > 0 ? [e[0]!, (e[1]! + 1) % 8] : undefined }));
      prev = cur;
    }
  }
  rec.close();
}

test("replay --json --report: report opens in headless Chromium and shows the JSON numbers", {
  skip: skipUnlessPresent(existsSync(CHROMIUM), `${CHROMIUM} not found: install it (apt-get install -y chromium) or set CHROMIUM=/path`),
  timeout: 120_000,
}, () => {
  const dir = mkdtempSync(join(tmpdir(), "moira-report-"));
  const trace = join(dir, "t.jsonl"), report = join(dir, "report.html");
  writeRandomTrace(trace, true);
  const cli = spawnSync(process.execPath, ["--import", "tsx", join(REPO_ROOT, "src/cli/replay.ts"), "replay",
    "--trace", trace, "--policy", "lru,arc,fate,belady", "--predictor", "fate", "--slots-per-layer", "2,4", "--json", "--report", report],
  { cwd: REPO_ROOT, encoding: "utf8" });
  assert.equal(cli.status, 0, cli.stderr);
  const out = JSON.parse(cli.stdout) as ReplayOutput;
  assert.ok(out.sweep.length === 4 * 8 && out.runs.length > 0 && out.locality.length === 3);
  assert.ok(readFileSync(report, "utf8").length > 1000);

  const chrome = spawnSync(CHROMIUM, ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", `--user-data-dir=${mkdtempSync(join(tmpdir(), "moira-chromium-"))}`,
    "--enable-logging=stderr", "--v=0", "--dump-dom", `file://${report}`], { encoding: "utf8", timeout: 90_000 });
  assert.equal(chrome.status, 0, chrome.stderr);
  const dom = chrome.stdout;
  assert.doesNotMatch(chrome.stderr, /Uncaught|SyntaxError|ReferenceError|TypeError/, "console errors in the report");
  // the inline script ran and counted every plotted value
  const ready = /data-ready="(\d+)"/.exec(dom);
  assert.ok(ready, "report script did not run");
  const expectPoints = out.sweep.length + out.runs.filter((r) => r.trace === "all").length * 6 + 3 * (1 + out.locality[0]!.cacheSizes.length);
  assert.equal(Number(ready[1]), expectPoints);
  const values = (chart: string): Map<string, string> => {
    const m = new Map<string, string>();
    const re = new RegExp(`<(?:circle|rect)[^>]*data-chart="${chart}"[^>]*>`, "g");
    for (const tag of dom.match(re) ?? []) {
      const attr = (n: string): string => new RegExp(`data-${n}="([^"]*)"`).exec(tag)?.[1] ?? "";
      m.set([attr("policy"), attr("slots"), attr("run"), attr("layer"), attr("metric"), attr("segment"), attr("cache")].join("|"), attr("value"));
    }
    return m;
  };
  const sweep = values("sweep");
  for (const p of out.sweep) assert.equal(sweep.get([p.policy, p.slotsPerLayer, "", "", "", "", ""].join("|")), String(p.hitRate), `sweep ${p.policy} ${p.slotsPerLayer}`);
  const layers = values("layer");
  out.runs.filter((r) => r.trace === "all").forEach((r, i) => {
    for (const pl of r.perLayer) assert.equal(layers.get(["", "", i, pl.layer, "", "", ""].join("|")), String(pl.hitRate));
  });
  const loc = values("locality");
  for (const l of out.locality) {
    assert.equal(loc.get(["", "", "", "", "srp", l.segmentLength, ""].join("|")), String(l.srp));
    l.cacheSizes.forEach((c, i) => assert.equal(loc.get(["", "", "", "", "sch", l.segmentLength, c].join("|")), String(l.sch[i])));
  }
  // the fate predictor used the recorded predictions
  const fate = out.runs.find((r) => r.trace === "all" && r.policy === "lru")!;
  assert.equal(fate.predictor, "fate");
  assert.ok(fate.precision !== null && fate.precision > 0.4);
});
