/**
 * The model thread of the browser page (web/index.html): a dedicated worker, since the webgpu
 * backend blocks in Atomics.wait while its GPU thread (another worker, browser-worker.ts) runs the
 * WGSL kernels on navigator.gpu. For the page's job it fetches the GGUF file over HTTP, opens the
 * model from the bytes, runs the prompt's token ids and greedy decode steps, and answers with the
 * token ids, the prompt's logits and timings. Bundled for the browser by scripts/web.ts: nothing it
 * imports may be Node's.
 */
import { openGGUFBytes } from "../formats/gguf/memory.js";
import { ModelBase } from "../model/model-base.js";
import { Session } from "../engine/session.js";
import { argmax } from "../engine/sampler.js";
import { WebGpuBackend } from "../backend/webgpu/webgpu-backend.js";
import { browserGpuThread } from "../backend/webgpu/browser-thread.js";
import type { GpuAdapterReport } from "../backend/webgpu/device.js";

/** What the page asks for. */
export interface WebJob {
  /** URL of the GGUF file */
  readonly model: string;
  /** URL of the bundled GPU thread (browser-worker.ts) */
  readonly gpuWorker: string;
  /** the prompt's token ids */
  readonly prompt: readonly number[];
  /** tokens to generate greedily: the first from the prompt's logits, each next from a decode step */
  readonly tokens: number;
}

/** The worker's answer: the run, or why it failed (`code` is a MoiraError's: GPU_UNAVAILABLE where there is no WebGPU adapter). */
export type WebResult =
  | {
    readonly ids: number[];
    /** the logits of the prompt's last token */
    readonly promptLogits: number[];
    readonly adapter: GpuAdapterReport;
    /** milliseconds: the download, opening the model and the device, the prompt, all decode steps */
    readonly ms: { readonly fetch: number; readonly open: number; readonly prefill: number; readonly decode: number };
  }
  | { readonly error: { readonly name: string; readonly code?: string; readonly message: string } };

async function run(job: WebJob): Promise<WebResult> {
  const t0 = performance.now();
  const response = await fetch(job.model);
  if (!response.ok) throw new Error(`${job.model}: HTTP ${response.status} ${response.statusText}`);
  const bytes = new Uint8Array(await response.arrayBuffer());
  const t1 = performance.now();
  const model = ModelBase.fromFile(openGGUFBytes(bytes, job.model));
  try {
    const backend = await WebGpuBackend.create(browserGpuThread(job.gpuWorker));
    try {
      const session = new Session(model, { backend, contextLength: job.prompt.length + job.tokens, kvType: "f32" });
      const t2 = performance.now();
      let logits = session.prefill(job.prompt);
      const promptLogits = Array.from(logits);
      const t3 = performance.now();
      const ids: number[] = [];
      for (let i = 0; i < job.tokens; i++) {
        ids.push(argmax(logits));
        if (i + 1 < job.tokens) logits = session.decodeStep(ids[i]);
      }
      const t4 = performance.now();
      session.dispose();
      return { ids, promptLogits, adapter: backend.adapter, ms: { fetch: t1 - t0, open: t2 - t1, prefill: t3 - t2, decode: t4 - t3 } };
    } finally {
      backend.dispose();
    }
  } finally {
    model.close();
  }
}

/** The part of a dedicated worker's global scope used here (the project compiles without the DOM library). */
interface WorkerScope {
  onmessage: ((e: { readonly data: WebJob }) => void) | null;
  postMessage(message: WebResult): void;
}
const scope = globalThis as unknown as WorkerScope;
scope.onmessage = (e) => {
  run(e.data).then(
    (result) => scope.postMessage(result),
    (err: Error & { code?: string }) => scope.postMessage({ error: { name: err.name, code: err.code, message: err.message } }),
  );
};
