// Runs every *.test.ts under src/ and test/ with node:test (TypeScript through tsx).
// Usage: node scripts/test.mjs [filter-substring...]
import { existsSync, readFileSync, readdirSync, renameSync, statSync } from "node:fs";
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
// The tests' llama.cpp peer (node-llama-cpp's prebuilt CPU binary) loads the CPU variant that best
// fits this CPU. On hosts with AMX (Sapphire Rapids and later) that is
// libggml-cpu-sapphirerapids.so, which aborts the process on F16 models (node-llama-cpp 3.21.1:
// "ggml-backend.cpp:1294: GGML_ASSERT(*cur_backend_id != -1) failed"). The tests compare results
// with llama.cpp's, not speed: for their run that variant is set aside, so the peer loads its next
// one (as on every host without AMX), and put back afterwards.
const setAside = [];
if (process.platform === "linux" && existsSync("/proc/cpuinfo") && /\bamx_tile\b/.test(readFileSync("/proc/cpuinfo", "utf8"))) {
  const bins = join(root, "node_modules", "@node-llama-cpp", "linux-x64", "bins");
  for (const d of existsSync(bins) ? readdirSync(bins) : []) {
    const lib = join(bins, d, "libggml-cpu-sapphirerapids.so");
    // a run killed before it could put the file back left it set aside: this run puts it back
    if (existsSync(lib)) renameSync(lib, `${lib}.set-aside`);
    else if (!existsSync(`${lib}.set-aside`)) continue;
    setAside.push(lib);
    console.error(`AMX host: the llama.cpp peer's ${relative(root, lib)} (aborts on F16 models) is set aside during the tests`);
  }
}
const restore = () => { for (const lib of setAside.splice(0)) renameSync(`${lib}.set-aside`, lib); };
process.on("exit", restore);
for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => { restore(); process.exit(130); });
const r = spawnSync(process.execPath, [
  "--import", "tsx", "--test", `--test-concurrency=${Math.max(1, Math.min(2, availableParallelism()))}`,
  ...selected,
], { stdio: "inherit", cwd: root });
process.exit(r.status ?? 1);
