import { Model } from "../src/model/model.js";
import { Session } from "../src/engine/session.js";
import { NativeBackend } from "../src/backend/native/index.js";
const rounds = Number(process.argv[2] ?? 5), nTok = Number(process.argv[3] ?? 48);
const cfgs = process.argv.slice(4).map((s) => { const [path, layout] = s.split(":"); return { path: path!, layout: (layout ?? "gguf") as "gguf" | "relaid" }; });
function run(c: { path: string; layout: "gguf" | "relaid" }): { ms: number; hash: number } {
  const be = NativeBackend.create({ threads: 2, weightLayout: c.layout });
  const model = Model.open(c.path);
  const s = new Session(model, { backend: be, contextLength: 128 });
  let logits = s.forward([1, 2, 3, 4, 5, 6, 7, 8]);
  let hash = 0;
  const t0 = performance.now();
  for (let i = 0; i < nTok; i++) {
    let best = 0; for (let j = 1; j < logits.length; j++) if (logits[j]! > logits[best]!) best = j;
    hash = (hash * 31 + best + Math.round(logits[best]! * 1e4)) | 0;
    logits = s.forward([best], { phase: "decode" });
  }
  const ms = (performance.now() - t0) / nTok;
  s.dispose?.(); model.close(); be.dispose();
  return { ms, hash };
}
const res = cfgs.map(() => [] as number[]); const hashes = new Set<number>();
for (let r = 0; r < rounds; r++) for (let k = 0; k < cfgs.length; k++) { const i = r % 2 ? cfgs.length - 1 - k : k; const x = run(cfgs[i]!); res[i]!.push(x.ms); hashes.add(x.hash); }
const med = (a: number[]) => [...a].sort((x, y) => x - y)[a.length >> 1]!;
cfgs.forEach((c, i) => console.log(`${c.path.split("/").pop()}:${c.layout} best ${Math.min(...res[i]!).toFixed(2)} median ${med(res[i]!).toFixed(2)}`));
console.log(`distinct hashes: ${hashes.size}`);
