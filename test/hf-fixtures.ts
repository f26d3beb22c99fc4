/** The Hugging Face tiny-MoE fixtures of ../shared, laid out as model directories in a temp dir. */
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { HAVE_SHARED, shared } from "./shared.js";

export interface HfReference {
  input_ids: number[];
  hf_logits: number[];
  greedy_ids?: number[];
  vocab_size: number;
}

export interface HfFixture {
  name: string;
  /** a directory with config.json + model.safetensors */
  dir: string;
  ref: HfReference | null;
}

const FIXTURES = HAVE_SHARED ? shared("fixtures", "hf-tiny-moe") : "";
let cache: HfFixture[] | null = null;

export function hfFixtures(): HfFixture[] {
  if (cache) return cache;
  if (!HAVE_SHARED) return (cache = []);
  const root = mkdtempSync(join(tmpdir(), "moira-hf-"));
  cache = readdirSync(FIXTURES)
    .filter((f) => f.endsWith("_config.json"))
    .map((f) => f.replace(/_config\.json$/, ""))
    .sort()
    .map((name) => {
      const dir = join(root, name);
      mkdirSync(dir);
      copyFileSync(join(FIXTURES, `${name}_config.json`), join(dir, "config.json"));
      copyFileSync(join(FIXTURES, `${name}.safetensors`), join(dir, "model.safetensors"));
      const refPath = join(FIXTURES, `${name}.ref.json`);
      const ref: HfReference | null = existsSync(refPath) ? JSON.parse(readFileSync(refPath, "utf8")) : null;
      return { name, dir, ref };
    });
  return cache;
}

export function readGenReference(): { prompt_ids: number[]; generated_ids: number[]; step_logits: number[]; vocab_size: number } {
  return JSON.parse(readFileSync(join(FIXTURES, "full_mixtral_gen.ref.json"), "utf8"));
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) return Infinity;
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}
