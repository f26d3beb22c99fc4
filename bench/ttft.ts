/**
 * Time to first token from process start, as a user meets it: `moira run -n 1` as a whole process
 * against llama.cpp (bench/llama-peer.mjs: node-llama-cpp's prebuilt CPU binary, its own process),
 * run alternately, with a warm page cache or (`--cold`) the model file evicted before every run.
 * Each run's first stdout byte is timed from spawn; /usr/bin/time gives the child's CPU times,
 * minor/major page faults and peak RSS. `--variants` adds in-process runs of how weights can be
 * loaded (a child of this script per run):
 *   lazy-read  each tensor read into a copy when the first forward first uses it (moira before)
 *   read       every tensor read into a copy before the first forward
 *   map-lazy   every tensor mapped, pages faulted in by the first forward
 *   map        every tensor mapped and populated before the first forward (Session's default
 *              with the native backend)
 * and `--decode N` times N greedy decode steps after the first token in those runs (2 MiB vs
 * 4 KiB pages). Prints JSON: every sample, best and median per runner, moira / llama.cpp ratios.
 *
 *   node --import tsx bench/ttft.ts [--model /work/models/olmoe-q4k.gguf] [--prompt TEXT]
 *     [--threads 2] [--rounds 3] [--cold] [--runners moira,llama] [--variants lazy-read,read,map-lazy,map]
 *     [--decode 0]
 */
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
const { values: a } = parseArgs({
  options: {
    model: { type: "string", default: "/work/models/olmoe-q4k.gguf" },
    // 12 tokens with the BOS in OLMoE's tokenizer
    prompt: { type: "string", default: "Once upon a time, in a small town" },
    threads: { type: "string", default: "2" },
    rounds: { type: "string", default: "3" },
    cold: { type: "boolean", default: false },
    runners: { type: "string", default: "moira,llama" },
    variants: { type: "string", default: "" },
    decode: { type: "string", default: "0" },
    child: { type: "string" },
  },
});
const threads = Number(a.threads), decodeSteps = Number(a.decode);

type Variant = "lazy-read" | "read" | "map-lazy" | "map";
const VARIANTS: readonly Variant[] = ["lazy-read", "read", "map-lazy", "map"];

/** One run of a variant in this process: prints {weightsReadyMs, firstTokenMs, ...} on stderr. */
async function child(variant: Variant): Promise<void> {
  const { Model } = await import("../src/model/model.js");
  const { ResidentExperts } = await import("../src/model/experts.js");
  const { Session } = await import("../src/engine/session.js");
  const { loadTokenizer } = await import("../src/engine/tokenizer/index.js");
  const { argmax } = await import("../src/engine/sampler.js");
  const { MappedFile, NativeBackend } = await import("../src/backend/native/index.js");
  const startMs = performance.now();
  const mapped = variant === "map-lazy";
  const model = Model.open(a.model!, mapped ? { map: (p, offset, length) => MappedFile.open(p, { offset, length }) } : {});
  const backend = NativeBackend.create({ threads });
  const tok = loadTokenizer(model.file);
  const ids = tok.encode(a.prompt!, { addBos: tok.addBosDefault });
  const ru0 = process.resourceUsage();
  // an explicit ResidentExperts keeps Session from loading all weights (the variants do it here)
  let experts;
  if (variant === "map") experts = undefined;
  else {
    if (variant === "read") model.weights.loadAll();
    experts = new ResidentExperts(model.config, model.weights);
  }
  const session = new Session(model, { backend, contextLength: ids.length + decodeSteps + 1, experts });
  const weightsReadyMs = performance.now();
  const ru1 = process.resourceUsage();
  let logits = session.prefill(ids);
  let next = argmax(logits);
  const firstTokenMs = performance.now();
  const ru2 = process.resourceUsage();
  for (let i = 0; i < decodeSteps; i++) { logits = session.decodeStep(next); next = argmax(logits); }
  const decodeMs = performance.now() - firstTokenMs;
  const d = (x: NodeJS.ResourceUsage, y: NodeJS.ResourceUsage) => ({
    minflt: y.minorPageFault - x.minorPageFault, majflt: y.majorPageFault - x.majorPageFault,
    userMs: (y.userCPUTime - x.userCPUTime) / 1000, sysMs: (y.systemCPUTime - x.systemCPUTime) / 1000,
  });
  process.stderr.write(JSON.stringify({
    variant, promptTokens: ids.length, startMs, weightsReadyMs, firstTokenMs,
    load: d(ru0, ru1), prefill: d(ru1, ru2),
    decodeTokPerS: decodeSteps > 0 ? decodeSteps / (decodeMs / 1000) : null,
  }) + "\n");
  backend.dispose();
  model.close();
}

/**
 * posix_fadvise(DONTNEED) over the whole file, as ../shared/tools/memcap --evict does. Returns the
 * MiB still cached after it (fincore): pages another process has mapped stay, and such a run is
 * not cold.
 */
function evict(path: string): number | null {
  execFileSync("python3", ["-c", "import os,sys; fd=os.open(sys.argv[1], os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)", path]);
  try {
    return Math.round(Number(execFileSync("fincore", ["-b", "-n", "-o", "RES", path], { encoding: "utf8" }).trim()) / 2 ** 20);
  } catch {
    return null;
  }
}

interface Sample {
  runner: string;
  /** spawn -> first stdout byte (whole process, moira and llama.cpp runners) */
  firstByteMs: number | null;
  exitMs: number;
  userS: number; sysS: number; minflt: number; majflt: number; maxRssMiB: number;
  /** what the child reported about itself */
  self: Record<string, unknown>;
  /** --cold: MiB of the file still cached after eviction */
  cachedAfterEvictMiB?: number | null;
}

function runTimed(runner: string, cmd: string, args: string[]): Promise<Sample> {
  const dir = mkdtempSync(join(tmpdir(), "moira-ttft-"));
  const timeOut = join(dir, "time");
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    let first = -1, err = "";
    const c = spawn("/usr/bin/time", ["-f", "%U %S %R %F %M", "-o", timeOut, cmd, ...args], { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] });
    c.stdout.on("data", () => { if (first < 0) first = performance.now(); });
    c.stderr.on("data", (b: Buffer) => { err += b.toString(); });
    c.on("error", reject);
    c.on("close", (code) => {
      const exitMs = performance.now() - t0;
      const tm = readFileSync(timeOut, "utf8").trim().split("\n").pop()!.split(" ").map(Number);
      rmSync(dir, { recursive: true, force: true });
      if (code !== 0) return reject(new Error(`${runner} exited ${code}:\n${err}`));
      let self: Record<string, unknown> = {};
      const jsonLine = err.trim().split("\n").reverse().find((l) => l.startsWith("{"));
      if (jsonLine) self = JSON.parse(jsonLine);
      const pre = /prefill: (\d+) tokens in ([\d.]+) ms/.exec(err);
      if (pre) self = { promptTokens: Number(pre[1]), prefillMs: Number(pre[2]) };
      resolve({
        runner, firstByteMs: first < 0 ? null : first - t0, exitMs,
        userS: tm[0], sysS: tm[1], minflt: tm[2], majflt: tm[3], maxRssMiB: Math.round(tm[4] / 1024), self,
      });
    });
  });
}

function runOnce(runner: string, promptFile: string): Promise<Sample> {
  if (runner === "moira") {
    return runTimed(runner, process.execPath, [join(ROOT, "bin", "moira.js"), "run", "-m", a.model!, "-p", a.prompt!, "-n", "1",
      "--threads", String(threads), "--temperature", "0"]);
  }
  if (runner === "llama") {
    return runTimed(runner, process.execPath, [join(ROOT, "bench", "llama-peer.mjs"), a.model!, promptFile, "1", String(threads), "0"]);
  }
  const variant = runner.replace(/^moira:/, "") as Variant;
  if (!VARIANTS.includes(variant)) throw new Error(`unknown runner ${runner}; runners: moira, llama, moira:<${VARIANTS.join("|")}>`);
  return runTimed(runner, process.execPath, ["--import", "tsx", fileURLToPath(import.meta.url), "--child", variant,
    "--model", a.model!, "--prompt", a.prompt!, "--threads", String(threads), "--decode", String(decodeSteps)]);
}

const median = (xs: number[]) => { const s = [...xs].sort((x, y) => x - y); return s.length ? s[(s.length - 1) >> 1] : NaN; };

/**
 * The time to first token of a sample: in-process variants report theirs (from their time origin);
 * llama-peer's completion of one token may print nothing before it ends, then its own first-token
 * time counts (from its time origin, a few ms after spawn).
 */
function ttft(s: Sample): number {
  const own = typeof s.self.firstTokenMs === "number" ? s.self.firstTokenMs : null;
  if (own !== null && s.runner.startsWith("moira:")) return own;
  return s.firstByteMs ?? own ?? s.exitMs;
}

async function main(): Promise<void> {
  if (a.child) return child(a.child as Variant);
  const runners = [...a.runners!.split(",").filter(Boolean), ...a.variants!.split(",").filter(Boolean).map((v) => `moira:${v}`)];
  const dir = mkdtempSync(join(tmpdir(), "moira-ttft-prompt-"));
  const promptFile = join(dir, "prompt.txt");
  writeFileSync(promptFile, a.prompt!);
  const samples: Sample[] = [];
  try {
    for (let r = 0; r < Number(a.rounds); r++) {
      for (const runner of runners) {
        const cached = a.cold ? evict(a.model!) : undefined;
        const s = await runOnce(runner, promptFile);
        if (a.cold) s.cachedAfterEvictMiB = cached;
        samples.push(s);
        process.stderr.write(`round ${r} ${runner}:${a.cold ? ` cached after evict ${cached} MiB,` : ""} ttft ${ttft(s).toFixed(0)} ms, exit ${s.exitMs.toFixed(0)} ms, user ${s.userS} s, sys ${s.sysS} s, minflt ${s.minflt}, majflt ${s.majflt}, rss ${s.maxRssMiB} MiB\n`);
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  const summary: Record<string, unknown> = {};
  for (const runner of runners) {
    const ss = samples.filter((s) => s.runner === runner), t = ss.map(ttft);
    summary[runner] = {
      ttftBestMs: Math.round(Math.min(...t)), ttftMedianMs: Math.round(median(t)),
      sysMedianS: median(ss.map((s) => s.sysS)), userMedianS: median(ss.map((s) => s.userS)),
      minfltMedian: median(ss.map((s) => s.minflt)), majfltMedian: median(ss.map((s) => s.majflt)),
      maxRssMiB: Math.max(...ss.map((s) => s.maxRssMiB)),
      decodeTokPerS: ss.some((s) => typeof s.self.decodeTokPerS === "number")
        ? { best: Math.max(...ss.map((s) => s.self.decodeTokPerS as number)), median: median(ss.map((s) => s.self.decodeTokPerS as number)) } : undefined,
    };
  }
  const get = (r: string, k: string) => (summary[r] as Record<string, number> | undefined)?.[k];
  const ratio = runners.includes("moira") && runners.includes("llama") ? {
    best: +(get("moira", "ttftBestMs")! / get("llama", "ttftBestMs")!).toFixed(3),
    median: +(get("moira", "ttftMedianMs")! / get("llama", "ttftMedianMs")!).toFixed(3),
  } : undefined;
  process.stdout.write(JSON.stringify({ model: a.model, prompt: a.prompt, threads, cold: a.cold, summary, moiraOverLlama: ratio, samples }, null, 2) + "\n");
}

await main();
