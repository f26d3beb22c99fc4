/**
 * Typed errors. Every error a user can cause (bad file, bad flag, too small a budget) is a
 * MoiraError subclass whose message names the problem and what to do; the CLI prints the message
 * without a stack trace and exits non-zero. Anything else is a bug.
 */
export class MoiraError extends Error {
  /** A short stable code for programs: "MODEL_FORMAT", "UNSUPPORTED", ... */
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.code = code;
    this.name = new.target.name;
  }
}

/** The file is not a valid GGUF / safetensors / config (truncated, corrupt, inconsistent). */
export class ModelFormatError extends MoiraError {
  constructor(message: string) { super("MODEL_FORMAT", message); }
}

/** Valid input that moira does not support (architecture, quant type, feature). */
export class UnsupportedError extends MoiraError {
  constructor(message: string) { super("UNSUPPORTED", message); }
}

/** A path that does not exist or cannot be read. */
export class FileAccessError extends MoiraError {
  constructor(message: string) { super("FILE_ACCESS", message); }
}

/** A bad option value or argument. */
export class InvalidArgumentError extends MoiraError {
  constructor(message: string) { super("INVALID_ARGUMENT", message); }
}

/** The memory budget cannot hold what the model needs. */
export class BudgetError extends MoiraError {
  constructor(message: string) { super("BUDGET", message); }
}

/** A tensor the architecture needs is absent, or has the wrong shape. */
export class MissingTensorError extends ModelFormatError {}

/** Too many requests are waiting for the engine already (a bounded queue, `--queue-size`). */
export class QueueFullError extends MoiraError {
  constructor(message: string) { super("QUEUE_FULL", message); }
}

/** A prompt (a chat message with the conversation it needs) leaves no room in the context for a reply. */
export class ContextFullError extends MoiraError {
  constructor(message: string) { super("CONTEXT_FULL", message); }
}

/** No WebGPU adapter (no GPU driver, no Vulkan / Metal / D3D12 device), or the binding cannot load. */
export class GpuUnavailableError extends MoiraError {
  constructor(message: string) { super("GPU_UNAVAILABLE", message); }
}
