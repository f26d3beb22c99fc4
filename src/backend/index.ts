/** Backend selection: `native` (the C++ addon, default), `ref` (the TypeScript oracle) or `webgpu` (WGSL kernels on a WebGPU device). */
import type { Backend } from "./backend.js";
import type { WeightLayout } from "./native/native-backend.js";
import { RefBackend } from "./ref/ref-backend.js";
import { InvalidArgumentError } from "../errors.js";

export type BackendName = "native" | "ref" | "webgpu";

export interface BackendOptions {
  /** worker threads for the native backend (default: all cores) */
  threads?: number;
  /** the native backend's layout of resident weights (NativeBackendOptions.weightLayout) */
  weightLayout?: WeightLayout;
}

export async function createBackend(name: string, opts: BackendOptions = {}): Promise<Backend> {
  if (name === "ref") return new RefBackend();
  if (name === "native") {
    const { NativeBackend } = await import("./native/index.js");
    return NativeBackend.create({ threads: opts.threads, weightLayout: opts.weightLayout });
  }
  if (name === "webgpu") {
    const { WebGpuBackend } = await import("./webgpu/webgpu-backend.js");
    const { startNodeGpuThread } = await import("./webgpu/node-thread.js");
    return await WebGpuBackend.create(startNodeGpuThread);
  }
  throw new InvalidArgumentError(`unknown backend "${name}"; choose native, ref or webgpu`);
}
