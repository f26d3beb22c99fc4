/**
 * safetensors writer (tests and tools: fixtures, sharded copies). Tensors are laid out in the
 * order given, header padded with spaces to a multiple of 8 bytes as the reference writer does.
 */
import { writeFileSync } from "node:fs";
import { InvalidArgumentError } from "../../errors.js";
import { dtypeBytes, type SafetensorsDType } from "./reader.js";

export interface SafetensorsTensorInput {
  readonly name: string;
  readonly dtype: SafetensorsDType;
  /** torch order */
  readonly shape: readonly number[];
  readonly data: Uint8Array;
}

export function serializeSafetensors(tensors: readonly SafetensorsTensorInput[], metadata?: Record<string, string>): Uint8Array {
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  let offset = 0;
  for (const t of tensors) {
    const expected = t.shape.reduce((a, b) => a * b, 1) * dtypeBytes(t.dtype);
    if (t.data.byteLength !== expected) throw new InvalidArgumentError(`tensor ${t.name}: shape [${t.shape.join(", ")}] ${t.dtype} needs ${expected} bytes, got ${t.data.byteLength}`);
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + expected] };
    offset += expected;
  }
  let json = JSON.stringify(header);
  json += " ".repeat((8 - (Buffer.byteLength(json) % 8)) % 8);
  const headerBytes = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + headerBytes.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerBytes.length), true);
  out.set(headerBytes, 8);
  let at = 8 + headerBytes.length;
  for (const t of tensors) { out.set(t.data, at); at += t.data.byteLength; }
  return out;
}

export function writeSafetensors(path: string, tensors: readonly SafetensorsTensorInput[], metadata?: Record<string, string>): void {
  writeFileSync(path, serializeSafetensors(tensors, metadata));
}
