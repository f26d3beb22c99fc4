/**
 * Locating ../shared (read-only test data beside the repository). Tests that need it skip with a
 * clear message only when it is absent; in CI it is present, so they run.
 */
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

/** The `skip` option for node:test: a message when ../shared is absent, false otherwise. */
export const skipWithoutShared: string | false = HAVE_SHARED ? false : `../shared not found at ${SHARED}: test data absent`;
