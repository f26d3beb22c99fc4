/**
 * What the end-to-end benches (vs-llama.ts, offload.ts) share: a child process timed from spawn()
 * by its streamed stdout, and the median of a set of runs.
 */
import { spawn } from "node:child_process";

export interface TimedProcess {
  readonly code: number | null;
  /** ms from spawn() to the first and to the last stdout chunk (-1 when it printed nothing) */
  readonly firstMs: number;
  readonly lastMs: number;
  readonly stderr: string;
}

/** Runs argv[0] with the rest as arguments; resolves when it exits (rejects only when it cannot start). */
export function spawnTimed(argv: readonly string[], cwd?: string): Promise<TimedProcess> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    let first = -1, last = -1, stderr = "";
    const child = spawn(argv[0]!, argv.slice(1), { cwd, stdio: ["ignore", "pipe", "pipe"] });
    child.stdout.on("data", () => { const t = performance.now() - t0; if (first < 0) first = t; last = t; });
    child.stderr.on("data", (d: Buffer) => { stderr += d.toString(); });
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, firstMs: first, lastMs: last, stderr }));
  });
}

/** The median of the numbers that are not NaN (NaN when there are none). */
export function median(xs: readonly number[]): number {
  const s = xs.filter((x) => !Number.isNaN(x)).sort((p, q) => p - q);
  if (s.length === 0) return NaN;
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}
