/** Backend selection: `native` (the C++ addon, default) or `ref` (the TypeScript oracle). */
import type { Backend } from "./backend.js";
import { RefBackend } from "./ref/ref-backend.js";
import { InvalidArgumentError } from "../errors.js";

export type BackendName = "native" | "ref";

export interface BackendOptions {
  /** worker threads for the native backend (default: all cores) */
  threads?: number;
}

export async function createBackend(name: string, opts: BackendOptions = {}): Promise<Backend> {
  if (name === "ref") return new RefBackend();
  if (name === "native") {
    const { NativeBackend } = await import("./native/index.js");
    return NativeBackend.create({ threads: opts.threads });
  }
  throw new InvalidArgumentError(`unknown backend "${name}"; choose native or ref`);
}
