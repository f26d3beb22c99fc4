/**
 * What the benches share: a child process timed from spawn() by its streamed stdout, the median
 * of a set of runs, and the RAM read bandwidth a decode bound is measured against.
 */
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { NativeBackend, allocAligned, loadNativeAddon } from "../src/backend/native/index.js";

export interface TimedProcess {
  readonly code: number | null;
  /** ms from spawn() to the first and to the last stdout chunk (-1 when it printed nothing) */
  readonly firstMs: number;
  readonly lastMs: number;
  readonly stderr: string;
  /** the child's peak resident set (VmHWM; file-backed mapped pages included) and its anonymous part, bytes */
  readonly peakRssBytes: number;
  readonly peakAnonBytes: number;
  /** bytes the child caused to be read from storage (/proc/PID/io read_bytes, page-fault reads included) */
  readonly readBytes: number;
}

/** Sampled every 50 ms while the child runs: /proc/PID/status and /proc/PID/io (Linux). */
function sampleProc(pid: number, into: { peakRssBytes: number; peakAnonBytes: number; readBytes: number }): void {
  try {
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    const kb = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, "m").exec(status)?.[1] ?? 0) * 1024;
    into.peakRssBytes = Math.max(into.peakRssBytes, kb("VmHWM"));
    into.peakAnonBytes = Math.max(into.peakAnonBytes, kb("RssAnon"));
    const io = readFileSync(`/proc/${pid}/io`, "utf8");
    into.readBytes = Math.max(into.readBytes, Number(/^read_bytes:\s+(\d+)/m.exec(io)?.[1] ?? 0));
  } catch {
    // the child has exited between two samples: keep the last values
  }
}

/** Runs argv[0] with the rest as arguments; resolves when it exits (rejects only when it cannot start). */
export function spawnTimed(argv: readonly string[], cwd?: string): Promise<TimedProcess> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    let first = -1, last = -1, stderr = "";
    const child = spawn(argv[0]!, argv.slice(1), { cwd, stdio: ["ignore", "pipe", "pipe"] });
    const proc = { peakRssBytes: 0, peakAnonBytes: 0, readBytes: 0 };
    const sampler = setInterval(() => { if (child.pid !== undefined) sampleProc(child.pid, proc); }, 50);
    child.stdout.on("data", () => { const t = performance.now() - t0; if (first < 0) first = t; last = t; });
    child.stderr.on("data", (d: Buffer) => { stderr += d.toString(); });
    child.on("error", (e) => { clearInterval(sampler); reject(e); });
    child.on("exit", () => clearInterval(sampler));
    child.on("close", (code) => resolve({ code, firstMs: first, lastMs: last, stderr, ...proc }));
  });
}

/** The median of the numbers that are not NaN (NaN when there are none). */
export function median(xs: readonly number[]): number {
  const s = xs.filter((x) => !Number.isNaN(x)).sort((p, q) => p - q);
  if (s.length === 0) return NaN;
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

/**
 * RAM read bandwidth (bytes/s) with `threads` threads: the addon's AVX-512 / AVX2 sum over a 1 GiB
 * buffer, best of 5 after a warm-up pass (page faults). Leaves the pool at `threads`.
 */
export function ramReadBytesPerS(threads: number): number {
  const be = NativeBackend.create({ threads });
  const addon = loadNativeAddon();
  const buf = allocAligned(2 ** 30, 4096);
  try {
    const f = new Float32Array(buf.buffer);
    f.fill(1);
    addon.sumF32(f);
    let best = 0;
    for (let i = 0; i < 5; i++) { const t0 = performance.now(); addon.sumF32(f); best = Math.max(best, 2 ** 30 / ((performance.now() - t0) / 1000)); }
    return best;
  } finally { buf.dispose(); be.dispose(); }
}
