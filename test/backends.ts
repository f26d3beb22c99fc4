/** The backends a cross-cutting test runs on: ref always; native when the addon is built (always in CI). */
import { RefBackend } from "../src/backend/ref/ref-backend.js";
import type { Backend } from "../src/backend/backend.js";
import type { NativeAddon } from "../src/backend/native/addon.js";
import type { WebGpuBackend } from "../src/backend/webgpu/webgpu-backend.js";
import { GpuUnavailableError } from "../src/errors.js";

export async function backendsUnderTest(): Promise<Backend[]> {
  const list: Backend[] = [new RefBackend()];
  try {
    const { NativeBackend } = await import("../src/backend/native/index.js");
    list.push(NativeBackend.create({ threads: 2 }));
  } catch (e) {
    if (process.env.CI) throw e; // the native addon must be built in CI
  }
  return list;
}

/** The fastest backend there is: native when the addon is built (required in CI), else ref. */
export async function nativeOrRef(): Promise<Backend> {
  try {
    const { NativeBackend } = await import("../src/backend/native/index.js");
    return NativeBackend.create({ threads: 2 });
  } catch (e) {
    if (process.env.CI) throw e;
    return new RefBackend();
  }
}

/** Runs `f` under every ISA the addon supports here (the process-wide kernel table), then restores the one it had. */
export function eachIsa(addon: NativeAddon, f: (isa: string) => void): void {
  const isa0 = addon.isa();
  try {
    for (const isa of addon.supportedIsas()) {
      addon.setIsa(isa);
      f(isa);
    }
  } finally {
    addon.setIsa(isa0);
  }
}

/**
 * The webgpu backend on the adapter there is, or why there is none (GpuUnavailableError's message;
 * any other failure is thrown). Tests skip on `absent` outside CI (skipUnlessPresent).
 */
export async function openWebGpu(): Promise<{ gpu?: WebGpuBackend; absent: string }> {
  try {
    const { WebGpuBackend } = await import("../src/backend/webgpu/webgpu-backend.js");
    return { gpu: await WebGpuBackend.create(), absent: "" };
  } catch (e) {
    if (!(e instanceof GpuUnavailableError)) throw e;
    return { absent: e.message };
  }
}
