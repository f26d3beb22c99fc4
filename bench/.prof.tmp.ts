// per-op timing around backend calls
import { Model } from "../src/model/model.js";
import { Session } from "../src/engine/session.js";
import { argmax } from "../src/engine/sampler.js";
import { NativeBackend } from "../src/backend/native/index.js";
const path = process.argv[2], nPrompt = Number(process.argv[3] ?? 128), nGen = Number(process.argv[4] ?? 16);
const model = Model.open(path);
const backend = NativeBackend.create({ threads: 2 });
const times = new Map<string, { ms: number; n: number }>();
const proto = Object.getPrototypeOf(backend);
for (const k of ["matmul", "rmsNorm", "rope", "attention", "siluMul", "getRows", "moeFfn"]) {
  const f = proto[k]; if (!f) continue;
  (backend as any)[k] = function (...args: any[]) {
    const t0 = performance.now(); const r = f.apply(this, args);
    let key = k; if (k === "matmul") key += ` ${args[0].rows}x${args[0].cols} T${args[2] > 4 ? ">4" : args[2]}`;
    const e = times.get(key) ?? { ms: 0, n: 0 }; e.ms += performance.now() - t0; e.n++; times.set(key, e); return r;
  };
}
const s = new Session(model, { backend, contextLength: nPrompt + nGen + 1 });
s.forward([5]); s.reset(); times.clear();
let x = 2024; const prompt = Array.from({ length: nPrompt }, () => { x = (x * 1103515245 + 12345) >>> 0; return 300 + (x % 40000); });
const dump = (label: string, total: number) => {
  let sum = 0; const rows = [...times.entries()].sort((a, b) => b[1].ms - a[1].ms);
  for (const [, v] of rows) sum += v.ms;
  console.log(`${label}: total ${total.toFixed(1)} ms, in ops ${sum.toFixed(1)} ms, JS ${(total - sum).toFixed(1)}`);
  for (const [k, v] of rows.slice(0, 12)) console.log(`  ${k.padEnd(28)} ${v.ms.toFixed(1).padStart(8)} ms  n=${v.n}`);
  times.clear();
};
let t0 = performance.now(); let logits = s.prefill(prompt); dump(`prefill ${nPrompt}`, performance.now() - t0);
t0 = performance.now(); for (let i = 0; i < nGen; i++) logits = s.decodeStep(argmax(logits)); dump(`decode ${nGen}`, performance.now() - t0);
