/**
 * A WebGPU device on a platform's GPU object (Dawn's Node binding in Node: dawn.ts; navigator.gpu
 * in a browser: browser-worker.ts): opening an adapter, what it offers (features, limits), buffers
 * (alloc, upload, async download), pipelines compiled once per WGSL source, and batches of compute
 * dispatches submitted together.
 *
 * Lifetime: the GPU object must stay referenced while its device lives (Dawn crashes when the one
 * its `create()` returned is collected first), and the device must be destroyed explicitly or Node
 * does not exit; the device holds the object, and `GpuDevice.dispose()` does both.
 */
import { GpuUnavailableError, UnsupportedError } from "../../errors.js";

/** Dawn's backend names (the `backend=` option of `create`). */
export type GpuBackendType = "vulkan" | "metal" | "d3d12" | "d3d11" | "opengl" | "opengles";

export interface GpuDeviceOptions {
  /** Dawn's backend, in Node (a browser chooses its own); default: the platform's native API (vulkan on Linux, metal on macOS, d3d12 on Windows) */
  readonly backend?: GpuBackendType;
  readonly powerPreference?: GPUPowerPreference;
}

/** The capabilities kernels choose their variants by (at pipeline creation). */
export interface GpuFeatures {
  /** subgroupAdd / subgroupMax ... (feature "subgroups") */
  readonly subgroups: boolean;
  /** the subgroup_id / num_subgroups builtins (WGSL language feature "subgroup_id") */
  readonly subgroupId: boolean;
  /** f16 arithmetic and storage types in WGSL (feature "shader-f16") */
  readonly shaderF16: boolean;
  /** dot4I8Packed and pack4xI8 (WGSL language feature "packed_4x8_integer_dot_product") */
  readonly packedInt8Dot: boolean;
  /** GPU timestamps in compute passes (feature "timestamp-query") */
  readonly timestampQuery: boolean;
}

export interface GpuLimits {
  readonly maxBufferSize: number;
  readonly maxStorageBufferBindingSize: number;
  readonly maxComputeWorkgroupStorageSize: number;
  readonly maxComputeInvocationsPerWorkgroup: number;
  readonly maxComputeWorkgroupsPerDimension: number;
  readonly minStorageBufferOffsetAlignment: number;
  readonly minUniformBufferOffsetAlignment: number;
}

/** What `moira gpu-info` prints: the adapter in use, its features and limits. */
export interface GpuAdapterReport {
  readonly vendor: string;
  readonly architecture: string;
  readonly device: string;
  readonly description: string;
  /** the Dawn backend asked for ("default" when the platform has no preferred one, and in a browser) */
  readonly backend: GpuBackendType | "default";
  /** a software or otherwise limited adapter (lavapipe / SwiftShader): proves correctness, never speed */
  readonly fallbackAdapter: boolean;
  readonly subgroupMinSize: number;
  readonly subgroupMaxSize: number;
  readonly features: GpuFeatures;
  readonly limits: GpuLimits;
}

/** A buffer range a dispatch binds (offset a multiple of minStorageBufferOffsetAlignment). */
export interface GpuBinding {
  readonly buffer: GPUBuffer;
  readonly offset?: number;
  readonly size?: number;
}

/** Byte size of the parameter block every dispatch gets (a uniform buffer slot). */
export const PARAM_BYTES = 64;

/** A platform's GPU object, and what a device's report and errors say about it. */
export interface GpuInstance {
  readonly gpu: GPU;
  /** the backend it was asked for (the report's `backend`) */
  readonly backend: GpuBackendType | "default";
  /** how to get an adapter where it offers none (ends the GpuUnavailableError's message) */
  readonly installHint: string;
}

/** GPUBufferUsage bits (WebGPU's values; Node has no GPUBufferUsage global). */
export const BufferUsage = {
  MAP_READ: 0x0001,
  MAP_WRITE: 0x0002,
  COPY_SRC: 0x0004,
  COPY_DST: 0x0008,
  UNIFORM: 0x0040,
  STORAGE: 0x0080,
  QUERY_RESOLVE: 0x0200,
} as const;
const MAP_READ_MODE = 0x0001;

export class GpuDevice {
  readonly report: GpuAdapterReport;
  readonly features: GpuFeatures;
  readonly limits: GpuLimits;
  /** The GPU object the device was opened on: held so that Dawn outlives the device; dropped by dispose(). */
  private gpu: GPU | undefined;
  private readonly pipelines = new Map<string, GPUComputePipeline>();
  /** one uniform slot per dispatch of a batch; queue order makes reuse across batches safe */
  private params: GPUBuffer | undefined;
  private readonly errors: string[] = [];
  private disposed = false;

  private constructor(gpu: GPU, readonly device: GPUDevice, report: GpuAdapterReport) {
    this.gpu = gpu;
    this.report = report;
    this.features = report.features;
    this.limits = report.limits;
    device.addEventListener("uncapturederror", (ev) => {
      this.errors.push((ev as GPUUncapturedErrorEvent).error.message);
    });
    void device.lost.then((info) => {
      if (!this.disposed) this.errors.push(`the WebGPU device was lost (${info.reason}): ${info.message}`);
    });
  }

  /**
   * Opens the first adapter of `instance` with the features kernels use (subgroups, shader-f16,
   * timestamp-query where offered) and the adapter's largest buffer limits. Throws
   * GpuUnavailableError when there is no adapter (saying what to install) or it refuses a device.
   */
  static async open(instance: GpuInstance, powerPreference: GPUPowerPreference = "high-performance"): Promise<GpuDevice> {
    const { gpu, backend } = instance;
    const adapter = await gpu.requestAdapter({ powerPreference });
    if (!adapter) {
      throw new GpuUnavailableError(`no WebGPU adapter found${backend === "default" ? "" : ` for the ${backend} backend`}: ${instance.installHint}`);
    }
    const wanted: GPUFeatureName[] = ["subgroups", "shader-f16", "timestamp-query"];
    const requiredFeatures = wanted.filter((f) => adapter.features.has(f));
    const a = adapter.limits;
    let device: GPUDevice;
    try {
      device = await adapter.requestDevice({
        requiredFeatures,
        requiredLimits: {
          maxBufferSize: a.maxBufferSize,
          maxStorageBufferBindingSize: a.maxStorageBufferBindingSize,
          maxComputeWorkgroupStorageSize: a.maxComputeWorkgroupStorageSize,
          maxComputeInvocationsPerWorkgroup: a.maxComputeInvocationsPerWorkgroup,
          maxComputeWorkgroupSizeX: a.maxComputeWorkgroupSizeX,
          maxStorageBuffersPerShaderStage: a.maxStorageBuffersPerShaderStage,
        },
      });
    } catch (e) {
      throw new GpuUnavailableError(`the WebGPU adapter "${adapter.info.description}" refused a device: ${(e as Error).message}`);
    }
    const lang = gpu.wgslLanguageFeatures;
    const has = (f: GPUFeatureName) => device.features.has(f);
    const info = adapter.info as GPUAdapterInfo & { subgroupMinSize?: number; subgroupMaxSize?: number; isFallbackAdapter?: boolean };
    const d = device.limits;
    const report: GpuAdapterReport = {
      vendor: info.vendor,
      architecture: info.architecture,
      device: info.device,
      description: info.description,
      backend,
      fallbackAdapter: info.isFallbackAdapter ?? false,
      subgroupMinSize: info.subgroupMinSize ?? 0,
      subgroupMaxSize: info.subgroupMaxSize ?? 0,
      features: {
        subgroups: has("subgroups"),
        subgroupId: has("subgroups") && lang.has("subgroup_id"),
        shaderF16: has("shader-f16"),
        packedInt8Dot: lang.has("packed_4x8_integer_dot_product"),
        timestampQuery: has("timestamp-query"),
      },
      limits: {
        maxBufferSize: d.maxBufferSize,
        maxStorageBufferBindingSize: d.maxStorageBufferBindingSize,
        maxComputeWorkgroupStorageSize: d.maxComputeWorkgroupStorageSize,
        maxComputeInvocationsPerWorkgroup: d.maxComputeInvocationsPerWorkgroup,
        maxComputeWorkgroupsPerDimension: d.maxComputeWorkgroupsPerDimension,
        minStorageBufferOffsetAlignment: d.minStorageBufferOffsetAlignment,
        minUniformBufferOffsetAlignment: d.minUniformBufferOffsetAlignment,
      },
    };
    return new GpuDevice(gpu, device, report);
  }

  /** A buffer of at least `bytes` (rounded up to 4), zero-filled. Default usage: storage, copy in and out. */
  alloc(bytes: number, usage: number = BufferUsage.STORAGE | BufferUsage.COPY_SRC | BufferUsage.COPY_DST, label?: string): GPUBuffer {
    this.checkOpen();
    const size = Math.max(4, Math.ceil(bytes / 4) * 4);
    if (size > this.limits.maxBufferSize) {
      throw new UnsupportedError(`a GPU buffer of ${bytes} bytes exceeds the adapter's maxBufferSize (${this.limits.maxBufferSize})`);
    }
    return this.device.createBuffer({ size, usage, label });
  }

  /** Copies `data` into `buffer` at byteOffset (a multiple of 4); a tail short of 4 bytes is zero-padded. */
  upload(buffer: GPUBuffer, data: ArrayBufferView, byteOffset = 0): void {
    this.checkOpen();
    let bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    if (bytes.byteLength % 4 !== 0) {
      const padded = new Uint8Array(Math.ceil(bytes.byteLength / 4) * 4);
      padded.set(bytes);
      bytes = padded;
    }
    this.device.queue.writeBuffer(buffer, byteOffset, bytes);
  }

  /** A new storage buffer holding `data`. */
  allocWith(data: ArrayBufferView, label?: string): GPUBuffer {
    const b = this.alloc(data.byteLength, undefined, label);
    this.upload(b, data);
    return b;
  }

  /**
   * Reads `bytes` bytes of `buffer` from byteOffset (both multiples of 4) once the work submitted
   * so far has run. Throws if a validation error was raised since the last download.
   */
  async download(buffer: GPUBuffer, byteOffset = 0, bytes: number = buffer.size - byteOffset): Promise<ArrayBuffer> {
    this.checkOpen();
    const size = Math.ceil(bytes / 4) * 4;
    const staging = this.device.createBuffer({ size: Math.max(4, size), usage: BufferUsage.MAP_READ | BufferUsage.COPY_DST });
    try {
      const enc = this.device.createCommandEncoder();
      enc.copyBufferToBuffer(buffer, byteOffset, staging, 0, size);
      this.device.queue.submit([enc.finish()]);
      await staging.mapAsync(MAP_READ_MODE);
      const copy = staging.getMappedRange(0, size).slice(0, bytes);
      staging.unmap();
      this.throwRaisedErrors();
      return copy;
    } finally {
      staging.destroy();
    }
  }

  /** Waits for the work submitted so far; throws if a validation error was raised meanwhile. */
  async finish(): Promise<void> {
    this.checkOpen();
    await this.device.queue.onSubmittedWorkDone();
    this.throwRaisedErrors();
  }

  /** The compute pipeline of a WGSL source (entry point `main`), compiled once per source text. */
  pipeline(code: string): GPUComputePipeline {
    this.checkOpen();
    let p = this.pipelines.get(code);
    if (!p) {
      const module = this.device.createShaderModule({ code });
      p = this.device.createComputePipeline({ layout: "auto", compute: { module, entryPoint: "main" } });
      this.pipelines.set(code, p);
    }
    return p;
  }

  /** A new batch of dispatches, recorded now and submitted together by `submit()`. */
  batch(): GpuBatch {
    this.checkOpen();
    return new GpuBatch(this);
  }

  /** The uniform buffer that holds `slots` parameter blocks (grown on demand). */
  paramBuffer(slots: number): GPUBuffer {
    const need = slots * this.paramStride();
    if (!this.params || this.params.size < need) {
      this.params?.destroy();  // freed after the work already submitted that reads it
      this.params = this.device.createBuffer({ size: Math.max(need, 64 * this.paramStride()), usage: BufferUsage.UNIFORM | BufferUsage.COPY_DST });
    }
    return this.params;
  }

  /** Bytes between parameter blocks in the uniform buffer. */
  paramStride(): number {
    return Math.max(PARAM_BYTES, this.limits.minUniformBufferOffsetAlignment);
  }

  /** Destroys the device (unmapping and freeing its buffers) and lets Dawn go; idempotent. */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.pipelines.clear();
    this.params?.destroy();
    this.device.destroy();
    this.gpu = undefined;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  private checkOpen(): void {
    if (this.disposed || !this.gpu) throw new Error("GpuDevice used after dispose()");
  }

  private throwRaisedErrors(): void {
    if (this.errors.length === 0) return;
    const all = this.errors.splice(0);
    throw new Error(`WebGPU reported ${all.length} error(s): ${all.join("\n")}`);
  }
}

interface Dispatch {
  readonly pipeline: GPUComputePipeline;
  readonly params: Uint32Array;
  readonly bindings: readonly GpuBinding[];
  readonly groups: readonly [number, number, number];
}

/**
 * Compute dispatches recorded in order and submitted as one command buffer, each with its
 * parameter block (binding 0, a uniform of PARAM_BYTES) and its storage bindings (1, 2, ...).
 */
export class GpuBatch {
  private readonly dispatches: Dispatch[] = [];
  private readonly retired: GPUBuffer[] = [];

  constructor(private readonly dev: GpuDevice) {}

  /** Records one dispatch. params: at most PARAM_BYTES / 4 u32 (f32 values as their bits). */
  dispatch(pipeline: GPUComputePipeline, params: Uint32Array, bindings: readonly GpuBinding[], groups: readonly [number, number, number]): void {
    if (params.byteLength > PARAM_BYTES) throw new Error(`dispatch parameters of ${params.byteLength} bytes exceed ${PARAM_BYTES}`);
    const max = this.dev.limits.maxComputeWorkgroupsPerDimension;
    if (groups.some((g) => g > max)) throw new UnsupportedError(`a dispatch of ${groups.join("x")} workgroups exceeds ${max} per dimension`);
    if (groups.some((g) => g === 0)) return;
    this.dispatches.push({ pipeline, params, bindings, groups });
  }

  /** Destroys `buffer` once this batch is submitted (it may still be bound by dispatches recorded here). */
  retire(buffer: GPUBuffer): void {
    this.retired.push(buffer);
  }

  /** Submits everything recorded (optionally timing the pass with timestamp queries); the batch is empty again afterwards. */
  submit(timestamps?: { querySet: GPUQuerySet; beginningOfPassWriteIndex: number; endOfPassWriteIndex: number }): void {
    const list = this.dispatches.splice(0);
    if (list.length === 0) {
      for (const b of this.retired.splice(0)) b.destroy();
      return;
    }
    const device = this.dev.device;
    const stride = this.dev.paramStride();
    const pbuf = this.dev.paramBuffer(list.length);
    const blob = new Uint8Array(list.length * stride);
    list.forEach((d, i) => blob.set(new Uint8Array(d.params.buffer, d.params.byteOffset, d.params.byteLength), i * stride));
    device.queue.writeBuffer(pbuf, 0, blob);
    const enc = device.createCommandEncoder();
    const pass = enc.beginComputePass(timestamps ? { timestampWrites: timestamps } : {});
    list.forEach((d, i) => {
      const entries: GPUBindGroupEntry[] = [{ binding: 0, resource: { buffer: pbuf, offset: i * stride, size: PARAM_BYTES } }];
      d.bindings.forEach((b, j) => entries.push({ binding: j + 1, resource: { buffer: b.buffer, offset: b.offset ?? 0, size: b.size } }));
      pass.setPipeline(d.pipeline);
      pass.setBindGroup(0, device.createBindGroup({ layout: d.pipeline.getBindGroupLayout(0), entries }));
      pass.dispatchWorkgroups(d.groups[0], d.groups[1], d.groups[2]);
    });
    pass.end();
    device.queue.submit([enc.finish()]);
    // destroy() after submit frees the memory once the submitted work is done with it
    for (const b of this.retired.splice(0)) b.destroy();
  }
}
