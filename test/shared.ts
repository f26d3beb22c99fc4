/**
 * Locating ../shared (read-only test data beside the repository). Tests that need it skip with a
 * clear message only when it is absent; in CI it is present, so they run.
 */
import type { ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { resolve } from "node:path";

export const REPO_ROOT = resolve(fileURLToPath(new URL("..", import.meta.url)));
export const SHARED = process.env.MOIRA_SHARED ?? resolve(REPO_ROOT, "..", "shared");
export const HAVE_SHARED = existsSync(resolve(SHARED, "README.md"));

/** Path inside ../shared. */
export function shared(...parts: string[]): string {
  return resolve(SHARED, ...parts);
}

/**
 * The `skip` option for node:test: a message when ../shared is absent, false otherwise; in CI an
 * absent ../shared throws (the importing test file fails) instead of skipping.
 */
export const skipWithoutShared: string | false = skipUnlessPresent(HAVE_SHARED, `../shared not found at ${SHARED}: test data absent`);

/**
 * The `skip` option for a test whose prerequisite (a file, a binary, a tool, the native addon) is
 * missing: `reason` when it is absent, false when present. In CI (env CI set) an absent
 * prerequisite is an error, not a skip: this throws, so the test file fails with `reason`.
 */
export function skipUnlessPresent(present: boolean, reason: string): string | false {
  if (present) return false;
  if (process.env.CI) throw new Error(`${reason} (required in CI, where a missing prerequisite fails instead of skipping)`);
  return reason;
}

/** As skipWithoutShared, but in CI an absent ../shared throws (in the calling test file) instead of skipping. */
export function skipUnlessShared(): string | false {
  return skipUnlessPresent(HAVE_SHARED, `../shared not found at ${SHARED}: test data absent`);
}

/**
 * Inside a test: skips it (t.skip) with `reason` and returns true when the prerequisite is
 * absent, so the caller returns at once; in CI it fails the test instead. Use where presence is
 * only known while the test runs (`if (skipIfAbsent(t, existsSync(p), "...")) return;`).
 */
export function skipIfAbsent(t: { skip(message?: string): void }, present: boolean, reason: string): boolean {
  if (present) return false;
  if (process.env.CI) throw new Error(`${reason} (required in CI, where a missing prerequisite fails instead of skipping)`);
  t.skip(reason);
  return true;
}

/** The port a `moira serve --port 0` child listens on, read from the address it prints on stderr. */
export function servePort(child: ChildProcess): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    let err = "";
    child.stderr!.on("data", (d) => {
      err += d;
      const m = /http:\/\/127\.0\.0\.1:(\d+)/.exec(err);
      if (m) resolve(Number(m[1]));
    });
    child.on("exit", (code) => reject(new Error(`serve exited ${code}: ${err}`)));
  });
}
