// Runs every *.test.ts under src/ and test/ with node:test (TypeScript through tsx).
// Usage: node scripts/test.mjs [filter-substring...]
import { readdirSync, statSync } from "node:fs";
import { join, relative } from "node:path";
import { spawnSync } from "node:child_process";
import { availableParallelism } from "node:os";

const root = new URL("..", import.meta.url).pathname;
const filters = process.argv.slice(2);
const files = [];
function walk(dir) {
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) walk(p);
    else if (name.endsWith(".test.ts")) files.push(relative(root, p));
  }
}
for (const d of ["src", "test"]) walk(join(root, d));
const selected = files.filter((f) => filters.length === 0 || filters.some((s) => f.includes(s))).sort();
if (selected.length === 0) { console.error("no test files matched"); process.exit(1); }
const r = spawnSync(process.execPath, [
  "--import", "tsx", "--test", `--test-concurrency=${Math.max(1, Math.min(2, availableParallelism()))}`,
  ...selected,
], { stdio: "inherit", cwd: root });
process.exit(r.status ?? 1);
