/**
 * The GPU thread in a browser: a module Web Worker running browser-worker.ts (bundled on its own:
 * the caller names its URL), its buffers in the first message. The calling thread must itself be
 * a dedicated worker (it blocks in Atomics.wait, which a page's main thread may not) of a
 * cross-origin isolated page (SharedArrayBuffer).
 */
import { GpuUnavailableError } from "../../errors.js";
import type { StartGpuThread } from "./protocol.js";

/** The parts of the Web Worker API used here (the project compiles without the DOM library). */
interface WebWorker {
  postMessage(message: unknown): void;
  addEventListener(type: "error", listener: (e: { readonly message?: string }) => void): void;
  terminate(): void;
}
type WebWorkerConstructor = new (url: string | URL, options: { type: "module" }) => WebWorker;

/** Starts GPU threads from the bundled browser-worker.ts at `url`. */
export function browserGpuThread(url: string | URL): StartGpuThread {
  return (buffers) => {
    const Worker = (globalThis as { Worker?: WebWorkerConstructor }).Worker;
    if (!Worker) throw new GpuUnavailableError("this thread cannot start a Web Worker for the GPU (run the webgpu backend in a browser's dedicated worker)");
    const worker = new Worker(url, { type: "module" });
    const failed = new Promise<never>((_, reject) => {
      worker.addEventListener("error", (e) => reject(new GpuUnavailableError(`the GPU thread failed: ${e.message || `${String(url)} did not load`}`)));
    });
    worker.postMessage(buffers);
    return { post: (r) => worker.postMessage(r), failed, unref: () => {}, terminate: () => worker.terminate() };
  };
}
