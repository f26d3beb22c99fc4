/**
 * The WebGPU backend's foundation (issue 14): a device through Dawn's Node binding, weights in
 * GGUF bytes on the GPU, and WGSL kernels with host wrappers that record into batches. The
 * Backend interface over them comes with the forward that lets backends own their memory.
 */
export { GpuDevice, GpuBatch, BufferUsage, type GpuAdapterReport, type GpuBackendType, type GpuBinding, type GpuDeviceOptions, type GpuFeatures, type GpuInstance, type GpuLimits } from "./device.js";
export { openDawn } from "./dawn.js";
export { type GpuWeight, uploadWeight } from "./weight.js";
export { type KernelOptions, type KernelVariant, PORTABLE_VARIANT, kernelVariant, variantName } from "./kernels/common.js";
export { GPU_WEIGHT_TYPES } from "./kernels/quant.js";
export { MatmulKernels, MATVEC_MAX_TOKENS } from "./kernels/matmul.js";
export { ElementwiseKernels } from "./kernels/elementwise.js";
export { RopeKernels } from "./kernels/rope.js";
export { AttentionKernels, ATTENTION_MAX_HEAD_DIM, type KvType } from "./kernels/attention.js";
export { GetRowsKernels } from "./kernels/get-rows.js";
export { RoutingKernels } from "./kernels/routing.js";
