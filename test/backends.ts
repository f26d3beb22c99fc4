/** The backends a cross-cutting test runs on: ref always; native when the addon is built (always in CI). */
import { RefBackend } from "../src/backend/ref/ref-backend.js";
import type { Backend } from "../src/backend/backend.js";
import type { NativeAddon } from "../src/backend/native/addon.js";
import type { WebGpuBackend } from "../src/backend/webgpu/webgpu-backend.js";
import type { GpuDevice } from "../src/backend/webgpu/device.js";
import type { KernelVariant } from "../src/backend/webgpu/kernels/common.js";
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
    const { startNodeGpuThread } = await import("../src/backend/webgpu/node-thread.js");
    return { gpu: await WebGpuBackend.create(startNodeGpuThread), absent: "" };
  } catch (e) {
    if (!(e instanceof GpuUnavailableError)) throw e;
    return { absent: e.message };
  }
}

/**
 * A GpuDevice on the adapter there is (the kernel tests' own, outside any backend), or why there is
 * none; with the kernel variants to test on it: the adapter's best, and the portable one when it differs.
 */
export async function openGpuDevice(): Promise<{ dev?: GpuDevice; absent: string; variants: () => KernelVariant[] }> {
  const { openDawn } = await import("../src/backend/webgpu/dawn.js");
  const { PORTABLE_VARIANT, kernelVariant, variantName } = await import("../src/backend/webgpu/kernels/common.js");
  try {
    const dev = await openDawn();
    const variants = () => {
      const best = kernelVariant(dev.features);
      return variantName(best) === variantName(PORTABLE_VARIANT) ? [best] : [best, PORTABLE_VARIANT];
    };
    return { dev, absent: "", variants };
  } catch (e) {
    if (!(e instanceof GpuUnavailableError)) throw e;
    return { absent: e.message, variants: () => [] };
  }
}
