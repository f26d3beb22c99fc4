/**
 * The GPU thread in Node: a worker thread (node:worker_threads) running node-worker.ts, its
 * buffers in workerData. Run from the TypeScript sources (tests, benches under tsx), its module is
 * .ts and the thread registers tsx's loader before importing it (a worker's entry module does not
 * get the hooks `--import tsx` gave this thread); the published package runs dist/*.js directly.
 */
import { Worker } from "node:worker_threads";
import { GpuUnavailableError } from "../../errors.js";
import type { GpuThread, GpuThreadBuffers } from "./protocol.js";

export function startNodeGpuThread(buffers: GpuThreadBuffers): GpuThread {
  const worker = newWorker(buffers);
  // the thread's failure to start (a module that does not load) ends the backend's wait for the device
  const failed = new Promise<never>((_, reject) => {
    worker.once("error", (e) => reject(new GpuUnavailableError(`the GPU thread failed: ${e.message}`)));
    worker.once("exit", (code) => reject(new GpuUnavailableError(`the GPU thread exited (code ${code}) before opening a device`)));
  });
  return {
    post: (r) => worker.postMessage(r),
    failed,
    unref: () => worker.unref(),
    terminate: () => void worker.terminate(),
  };
}

function newWorker(workerData: GpuThreadBuffers): Worker {
  if (!import.meta.url.endsWith(".ts")) return new Worker(new URL("./node-worker.js", import.meta.url), { workerData });
  const entry = new URL("./node-worker.ts", import.meta.url).href;
  const boot = `import("tsx/esm/api").then((tsx) => { tsx.register(); return import(${JSON.stringify(entry)}); })`;
  return new Worker(boot, { eval: true, workerData });
}
