/**
 * The browser build (scripts/web.ts, web/index.html): its bundles hold the project's own sources
 * and no Node module; in headless Chromium with WebGPU (SwiftShader where there is no GPU) the
 * page fetches the tiny model over HTTP, runs it through the webgpu backend's WGSL kernels in two
 * workers, and gives ref's greedy tokens, the prompt's logits within 1e-4 (relative) of ref's, and
 * no console error. Skips only when Chromium or its WebGPU adapter is absent outside CI; in CI
 * their absence fails.
 */
import { test, after } from "node:test";
import assert from "node:assert/strict";
import type { ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { isBuiltin } from "node:module";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { makeModel } from "../src/tools/make-model/index.js";
import { Model } from "../src/model/model.js";
import { Session } from "../src/engine/session.js";
import { argmax } from "../src/engine/sampler.js";
import { RefBackend } from "../src/backend/ref/ref-backend.js";
import type { WebResult } from "../src/web/model-worker.js";
import { buildWeb, serveWeb } from "../scripts/web.js";
import { Browser, CHROMIUM, NO_CHROMIUM } from "./chromium.js";
import { maxAbsDiff } from "./hf-fixtures.js";
import { skipIfAbsent, skipUnlessPresent } from "./shared.js";

const dir = mkdtempSync(join(tmpdir(), "moira-web-"));
const outdir = join(dir, "build");
const metafile = await buildWeb(outdir);
const children: ChildProcess[] = [];
after(() => {
  for (const c of children) c.kill("SIGKILL");
  rmSync(dir, { recursive: true, force: true });
});

test("the browser bundles hold the project's own sources, no Node module", () => {
  const inputs = Object.keys(metafile.inputs);
  assert.deepEqual(inputs.filter((i) => isBuiltin(i) || !i.startsWith("src/")), []);
  const bundled = (output: string) => Object.keys(metafile.outputs[Object.keys(metafile.outputs).find((o) => o.endsWith(output))!].inputs);
  // the GPU thread's kernels and the model's GGUF parser are in; the file reader (node:fs) is not
  assert.ok(bundled("gpu-worker.js").includes("src/backend/webgpu/kernels/matmul.ts"));
  assert.ok(bundled("model-worker.js").includes("src/formats/gguf/parse.ts"));
  assert.ok(!inputs.includes("src/formats/gguf/reader.ts"));
});

test("web/index.html in headless Chromium with WebGPU: the tiny model's greedy tokens as ref's, its logits within 1e-4", {
  skip: skipUnlessPresent(existsSync(CHROMIUM), NO_CHROMIUM),
  timeout: 60_000,
}, async (t) => {
  const path = join(dir, "tiny.gguf");
  await makeModel({ preset: "tiny", type: "F32", seed: 3, out: path });
  const prompt = [1, 17, 42, 7, 99, 3, 250, 11], tokens = 6;
  // ref in Node: the prompt's logits, then greedy decode steps (as the page's model worker runs them)
  const model = Model.open(path);
  const session = new Session(model, { backend: new RefBackend(), contextLength: prompt.length + tokens, kvType: "f32" });
  let logits = session.prefill(prompt);
  const promptLogits = Float32Array.from(logits);
  const ids: number[] = [];
  for (let i = 0; i < tokens; i++) {
    ids.push(argmax(logits));
    if (i + 1 < tokens) logits = session.decodeStep(ids[i]);
  }
  model.close();

  const server = await serveWeb({ model: path, outdir });
  const b = await Browser.launch(["--enable-unsafe-webgpu"], children);
  try {
    const port = (server.address() as AddressInfo).port;
    await b.send("Page.navigate", { url: `http://127.0.0.1:${port}/?prompt=${prompt.join(",")}&tokens=${tokens}` });
    await b.until("window.moiraResult", "the page's result", 50_000);
    const result = await b.eval<WebResult>("window.moiraResult");
    if ("error" in result) {
      const absent = result.error.code === "GPU_UNAVAILABLE";
      if (absent && skipIfAbsent(t, false, `no WebGPU adapter in ${CHROMIUM}: ${result.error.message}`)) return;
      assert.fail(`the page failed: ${result.error.name}: ${result.error.message}`);
    }
    assert.deepEqual(result.ids, ids);
    const scale = promptLogits.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
    const diff = maxAbsDiff(result.promptLogits, promptLogits);
    assert.ok(diff <= 1e-4 * scale + 1e-6, `max |logit - ref| ${diff.toExponential(2)} over logits up to ${scale.toFixed(2)}`);
    assert.equal(await b.eval<string>("document.getElementById('ids').textContent"), ids.join(", "));
    assert.deepEqual(b.errors, [], "console errors in the page");
  } finally {
    await b.close();
    server.close();
  }
});
