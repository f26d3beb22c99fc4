/**
 * Devices through Dawn's Node binding (the `webgpu` package): the GPU object of a Node process, for
 * the GPU thread (node-worker.ts), `moira gpu-info`, the kernel tests and benches. Node only; in a
 * browser the GPU object is navigator.gpu (browser-worker.ts).
 */
import { GpuUnavailableError } from "../../errors.js";
import { GpuDevice, type GpuBackendType, type GpuDeviceOptions } from "./device.js";

const INSTALL_HINT =
  "a WebGPU adapter needs a GPU driver Dawn can use: on Linux a Vulkan driver (your GPU vendor's, or for a software " +
  "device Mesa's lavapipe >= 25: on Debian 12 add bookworm-backports and `apt-get install -t bookworm-backports " +
  "mesa-vulkan-drivers libvulkan1`), Metal on macOS, D3D12 on Windows";

function defaultBackend(): GpuBackendType | undefined {
  switch (process.platform) {
    case "linux": return "vulkan";
    case "darwin": return "metal";
    case "win32": return "d3d12";
    default: return undefined;
  }
}

interface DawnModule {
  create(flags: string[]): GPU;
}

/**
 * Opens a device on Dawn's first adapter of the backend (GpuDevice.open). Throws
 * GpuUnavailableError when the binding cannot load or there is no adapter (saying what to install).
 */
export async function openDawn(options: GpuDeviceOptions = {}): Promise<GpuDevice> {
  let dawn: DawnModule;
  try {
    dawn = (await import("webgpu")) as unknown as DawnModule;
  } catch (e) {
    throw new GpuUnavailableError(`the webgpu package (Dawn's Node binding) cannot be loaded: ${(e as Error).message}; run npm install`);
  }
  const backend = options.backend ?? defaultBackend();
  const gpu = dawn.create(backend ? [`backend=${backend}`] : []);
  return GpuDevice.open({ gpu, backend: backend ?? "default", installHint: INSTALL_HINT }, options.powerPreference);
}
