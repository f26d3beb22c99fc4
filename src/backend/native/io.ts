/**
 * Native I/O and memory for the offload layer: aligned buffers (64 B for SIMD, 4096 B for O_DIRECT),
 * an asynchronous O_DIRECT file reader on native I/O threads, and file identity for detecting a
 * replaced model file.
 */
import { FileAccessError, InvalidArgumentError } from "../../errors.js";
import { loadNativeAddon, type NativeFileIdentity, type RawDirectReader } from "./addon.js";

/** An aligned native allocation. `buffer` is detached (length 0) after dispose(). */
export class AlignedBuffer {
  private constructor(readonly buffer: ArrayBuffer, readonly align: number) {}

  /** `bytes` of memory aligned to `align` (a power of two; 4096 for O_DIRECT destinations). */
  static alloc(bytes: number, align = 64): AlignedBuffer {
    return new AlignedBuffer(loadNativeAddon().allocAligned(bytes, align), align);
  }
  get byteLength(): number { return this.buffer.byteLength; }
  /** Frees the memory now; views of `buffer` become empty. Idempotent. */
  dispose(): void { loadNativeAddon().freeAligned(this.buffer); }
  [Symbol.dispose](): void { this.dispose(); }
}

/**
 * Gives the whole pages inside bytes [offset, offset + length) of `view` back to the kernel
 * (madvise MADV_DONTNEED: they read as zero afterwards and cost nothing until written); the
 * partial pages at either end are kept. Returns the bytes given back.
 */
export function discardPages(view: ArrayBufferView, offset: number, length: number): number {
  if (offset < 0 || length < 0 || offset + length > view.byteLength) {
    throw new InvalidArgumentError(`discardPages: bytes ${offset}..${offset + length} are outside a view of ${view.byteLength}`);
  }
  return loadNativeAddon().discardPages(view.buffer as ArrayBuffer, view.byteOffset + offset, length);
}

/** Shorthand for AlignedBuffer.alloc. */
export function allocAligned(bytes: number, align = 64): AlignedBuffer {
  return AlignedBuffer.alloc(bytes, align);
}

/**
 * A private read-write mapping of `length` bytes of a file from `offset` (writes stay in this
 * process). At most 4 GiB - 1 per mapping (Node 20's limit on external buffers): map tensors, not
 * whole files. `populate` faults every page in now rather than during the first use. `buffer` is
 * detached after dispose().
 */
export class MappedFile {
  private constructor(readonly buffer: ArrayBuffer, readonly path: string) {}

  static open(path: string, range: { offset: number; length: number }, options: { populate?: boolean } = {}): MappedFile {
    try {
      return new MappedFile(loadNativeAddon().mapFile(path, range.offset, range.length, options.populate ?? false), path);
    } catch (e) {
      throw new FileAccessError((e as Error).message);
    }
  }
  /** Unmaps now; views of `buffer` become empty. Idempotent. */
  dispose(): void { loadNativeAddon().unmapFile(this.buffer); }
  [Symbol.dispose](): void { this.dispose(); }
}

export type FileIdentity = NativeFileIdentity;

/** (dev, ino, size, mtime) of a path: compare two to detect a replaced or rewritten file. */
export function fileIdentity(path: string): FileIdentity {
  try {
    return loadNativeAddon().fileIdentity(path);
  } catch (e) {
    throw new FileAccessError((e as Error).message);
  }
}

export function sameFile(a: FileIdentity, b: FileIdentity): boolean {
  return a.dev === b.dev && a.ino === b.ino && a.size === b.size && a.mtimeNs === b.mtimeNs;
}

/** A read that failed: I/O error or short read (the file is shorter than the range asked for). */
export class ReadError extends FileAccessError {}

export interface DirectReaderOptions {
  /** native I/O threads (default 3, at most 16) */
  ioThreads?: number;
}

/**
 * Asynchronous positional reads. `read` returns a ticket at once; the bytes land in `dest` on a
 * native I/O thread. Keep `dest` alive and untouched until the ticket is reported done by poll,
 * wait or waitAny + poll. Unaligned slices are fine (read through an aligned bounce buffer); a
 * 4 KiB-aligned offset/length into a 4096-aligned destination goes straight to the destination.
 */
export class DirectReader {
  private raw: RawDirectReader | undefined;

  private constructor(raw: RawDirectReader, readonly path: string) { this.raw = raw; }

  static open(path: string, options: DirectReaderOptions = {}): DirectReader {
    const addon = loadNativeAddon();
    try {
      return new DirectReader(new addon.DirectReader(path, options.ioThreads ?? 3), path);
    } catch (e) {
      throw new FileAccessError((e as Error).message);
    }
  }

  private live(): RawDirectReader {
    if (!this.raw) throw new InvalidArgumentError(`DirectReader for ${this.path} is closed`);
    return this.raw;
  }

  /** true when O_DIRECT is in use; false when the filesystem refused it and reads are buffered */
  get direct(): boolean { return this.live().direct; }
  /** file size at open */
  get size(): number { return this.live().size; }

  /** `urgent`: queued in front of every non-urgent read (a computation is waiting for it). */
  read(fileOffset: number, length: number, dest: ArrayBufferView | ArrayBuffer, destOffset = 0, urgent = false): number {
    return this.live().read(fileOffset, length, dest, destOffset, urgent);
  }

  /** Removes a read no I/O thread has started: true when no byte will be written (ticket retired). */
  cancel(ticket: number): boolean {
    return this.live().cancel(ticket);
  }

  /** Moves a still-queued read in front of every non-urgent one: true when it was queued. */
  promote(ticket: number): boolean {
    return this.live().promote(ticket);
  }

  /** true once the read finished (the ticket is then retired); throws ReadError if it failed. */
  poll(ticket: number): boolean {
    const r = this.live().poll(ticket);
    if (typeof r === "string") throw new ReadError(r);
    return r === 1;
  }

  /** Blocks until the read finishes; throws ReadError if it failed. Retires the ticket. */
  wait(ticket: number): void {
    const r = this.live().wait(ticket);
    if (typeof r === "string") throw new ReadError(r);
  }

  /**
   * Blocks until one of `tickets` finishes (or timeoutMs passes: returns undefined) and returns it,
   * retired; throws ReadError if that read failed.
   */
  waitAny(tickets: readonly number[], timeoutMs = -1): number | undefined {
    const t = this.live().waitAny(tickets, timeoutMs);
    if (t === 0) return undefined;
    this.poll(t);
    return t;
  }

  /** Stops the I/O threads (queued reads fail); idempotent. */
  close(): void {
    this.raw?.close();
    this.raw = undefined;
  }
  dispose(): void { this.close(); }
  [Symbol.dispose](): void { this.close(); }
}
