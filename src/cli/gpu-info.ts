/**
 * `moira gpu-info`: the WebGPU adapter moira's GPU kernels would use (through Dawn's Node binding),
 * its features and limits, and the kernel variant they select; or, where there is none, what to
 * install (a GpuUnavailableError, printed as one line).
 */
import { Option, type Command } from "commander";
import type { GpuAdapterReport, GpuBackendType } from "../backend/webgpu/device.js";
import { openDawn } from "../backend/webgpu/dawn.js";
import { kernelVariant, variantName } from "../backend/webgpu/kernels/common.js";
import { formatBytes } from "../offload/planner.js";

interface GpuInfoOptions {
  backend?: GpuBackendType;
  json?: true;
}

const BACKENDS: GpuBackendType[] = ["vulkan", "metal", "d3d12", "d3d11", "opengl", "opengles"];

export function registerGpuInfoCommand(program: Command): void {
  program.command("gpu-info")
    .description("the WebGPU adapter moira would use: vendor, device, backend, features (subgroups, shader-f16, timestamp-query) and limits")
    .addOption(new Option("--backend <name>", "Dawn backend (default: vulkan on Linux, metal on macOS, d3d12 on Windows)").choices(BACKENDS))
    .option("--json", "print the report as JSON")
    .action(async (o: GpuInfoOptions) => {
      const dev = await openDawn({ backend: o.backend });
      try {
        const kernels = variantName(kernelVariant(dev.features));
        if (o.json) process.stdout.write(`${JSON.stringify({ ...dev.report, kernels }, null, 2)}\n`);
        else process.stdout.write(describe(dev.report, kernels));
      } finally {
        dev.dispose();
      }
    });
}

function describe(r: GpuAdapterReport, kernels: string): string {
  const yes = (b: boolean) => (b ? "yes" : "no");
  const f = r.features, l = r.limits;
  const rows: [string, string][] = [
    ["adapter", r.description || r.device],
    ["vendor", r.vendor],
    ["architecture", r.architecture],
    ["device", r.device],
    ["backend", r.backend],
    ["fallback adapter", r.fallbackAdapter ? "yes (software or limited: it proves correctness, never speed)" : "no"],
    ["subgroups", f.subgroups ? `yes (size ${r.subgroupMinSize}..${r.subgroupMaxSize}${f.subgroupId ? ", subgroup_id" : ""})` : "no"],
    ["shader-f16", yes(f.shaderF16)],
    ["timestamp-query", yes(f.timestampQuery)],
    ["packed int8 dot", yes(f.packedInt8Dot)],
    ["maxBufferSize", `${l.maxBufferSize} (${formatBytes(l.maxBufferSize)})`],
    ["maxStorageBufferBindingSize", `${l.maxStorageBufferBindingSize} (${formatBytes(l.maxStorageBufferBindingSize)})`],
    ["maxComputeWorkgroupStorageSize", `${l.maxComputeWorkgroupStorageSize}`],
    ["maxComputeInvocationsPerWorkgroup", `${l.maxComputeInvocationsPerWorkgroup}`],
    ["kernels", `${kernels} (reduction / quantized matvec / f16 data)`],
  ];
  const w = Math.max(...rows.map(([k]) => k.length));
  return rows.map(([k, v]) => `${k.padEnd(w)}  ${v}\n`).join("");
}
