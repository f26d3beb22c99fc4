/**
 * The GPU thread's entry in a browser (a module Web Worker that browser-thread.ts starts): its
 * buffers in the first message, requests in the rest; devices on navigator.gpu.
 */
import { GpuUnavailableError } from "../../errors.js";
import { GpuDevice, type GpuDeviceOptions } from "./device.js";
import type { GpuRequest, GpuThreadBuffers } from "./protocol.js";
import { serveGpuRequests } from "./worker.js";

const INSTALL_HINT = "the browser must have WebGPU enabled (Chromium without a GPU it allows: --enable-unsafe-webgpu, for its SwiftShader adapter)";

/** A device on the browser's GPU object (Dawn's backend option does not apply: the browser chooses). */
async function openNavigatorGpu(options: GpuDeviceOptions): Promise<GpuDevice> {
  const gpu = (globalThis as { navigator?: { gpu?: GPU } }).navigator?.gpu;
  if (!gpu) throw new GpuUnavailableError(`navigator.gpu is absent (WebGPU needs a secure context: https or localhost): ${INSTALL_HINT}`);
  return GpuDevice.open({ gpu, backend: "default", installHint: INSTALL_HINT }, options.powerPreference);
}

/** The part of a dedicated worker's global scope used here (the project compiles without the DOM library). */
interface WorkerScope {
  onmessage: ((e: { readonly data: unknown }) => void) | null;
}
const scope = globalThis as unknown as WorkerScope;
scope.onmessage = (first) => {
  const serve = serveGpuRequests(first.data as GpuThreadBuffers, openNavigatorGpu);
  scope.onmessage = (e) => serve(e.data as GpuRequest);
};
