/**
 * `moira replay --report`: one self-contained HTML file (inline SVG and CSS, one small inline
 * script, nothing fetched) drawn from exactly the object `--json` prints. Every plotted point
 * carries its number in `data-value` (the JSON number as written) and in a tooltip.
 */
import type { Hardware } from "./time-model.js";
import type { LocalityResult } from "./locality.js";
import type { SimulationResult, SweepPoint } from "./simulate.js";

export interface ReplayOutput {
  readonly traces: ReadonlyArray<{ name: string; requests: number; tokens: number; nLayer: number; nExpert: number; topK: number; hasPredictions: boolean; notes: readonly string[] }>;
  readonly modelShape: string | null;
  readonly expertBytes: number;
  readonly hardware: Hardware;
  /** One run per (trace, policy, predictor, budget), plus the sums over traces (trace "all"). */
  readonly runs: readonly SimulationResult[];
  readonly sweep: readonly SweepPoint[];
  readonly locality: readonly LocalityResult[];
  readonly command: string;
}

const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

function esc(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]!);
}

const pct = (v: number): string => `${(v * 100).toFixed(1)}%`;

interface Series { label: string; points: Array<{ x: number; y: number; attrs: Record<string, string | number> }> }

function lineChart(o: { id: string; title: string; xLabel: string; yLabel: string; series: Series[]; xTicks: number[] }): string {
  const W = 640, H = 320, L = 56, R = 150, T = 30, B = 44;
  const xs = o.xTicks, x0 = Math.min(...xs), x1 = Math.max(...xs);
  const px = (x: number): number => L + (x1 === x0 ? 0.5 : (x - x0) / (x1 - x0)) * (W - L - R);
  const py = (y: number): number => T + (1 - y) * (H - T - B);
  const parts: string[] = [`<svg id="${o.id}" class="chart" viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" role="img" aria-label="${esc(o.title)}">`,
    `<text x="${W / 2}" y="18" text-anchor="middle" class="title">${esc(o.title)}</text>`];
  for (let g = 0; g <= 10; g += 2) {
    const y = py(g / 10);
    parts.push(`<line x1="${L}" x2="${W - R}" y1="${y}" y2="${y}" class="grid"/><text x="${L - 6}" y="${y + 4}" text-anchor="end" class="tick">${g * 10}%</text>`);
  }
  for (const x of xs) parts.push(`<text x="${px(x)}" y="${H - B + 16}" text-anchor="middle" class="tick">${x}</text>`);
  parts.push(`<text x="${(L + W - R) / 2}" y="${H - 8}" text-anchor="middle" class="axis">${esc(o.xLabel)}</text>`,
    `<text x="14" y="${(T + H - B) / 2}" text-anchor="middle" class="axis" transform="rotate(-90 14 ${(T + H - B) / 2})">${esc(o.yLabel)}</text>`);
  o.series.forEach((s, i) => {
    const c = COLORS[i % COLORS.length]!;
    const pts = s.points.map((p) => `${px(p.x).toFixed(1)},${py(p.y).toFixed(1)}`).join(" ");
    parts.push(`<polyline points="${pts}" fill="none" stroke="${c}" stroke-width="2"/>`);
    for (const p of s.points) {
      const attrs = Object.entries(p.attrs).map(([k, v]) => `data-${k}="${esc(String(v))}"`).join(" ");
      parts.push(`<circle cx="${px(p.x).toFixed(1)}" cy="${py(p.y).toFixed(1)}" r="3.5" fill="${c}" class="point" ${attrs} data-value="${p.y}"><title>${esc(s.label)} @ ${p.x}: ${pct(p.y)}</title></circle>`);
    }
    const ly = T + 14 + i * 18;
    parts.push(`<rect x="${W - R + 12}" y="${ly - 9}" width="12" height="12" fill="${c}"/><text x="${W - R + 30}" y="${ly + 1}" class="legend">${esc(s.label)}</text>`);
  });
  parts.push("</svg>");
  return parts.join("\n");
}

function barChart(o: { id: string; title: string; groups: Array<{ label: string; bars: Array<{ label: string; value: number; attrs: Record<string, string | number> }> }> }): string {
  const W = 640, H = 320, L = 56, R = 150, T = 30, B = 44;
  const py = (y: number): number => T + (1 - y) * (H - T - B);
  const parts: string[] = [`<svg id="${o.id}" class="chart" viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" role="img" aria-label="${esc(o.title)}">`,
    `<text x="${W / 2}" y="18" text-anchor="middle" class="title">${esc(o.title)}</text>`];
  for (let g = 0; g <= 10; g += 2) {
    const y = py(g / 10);
    parts.push(`<line x1="${L}" x2="${W - R}" y1="${y}" y2="${y}" class="grid"/><text x="${L - 6}" y="${y + 4}" text-anchor="end" class="tick">${g / 10}</text>`);
  }
  const gw = (W - L - R) / Math.max(1, o.groups.length);
  const labels = o.groups[0]?.bars.map((b) => b.label) ?? [];
  o.groups.forEach((g, gi) => {
    const bw = (gw * 0.8) / Math.max(1, g.bars.length);
    g.bars.forEach((b, bi) => {
      const x = L + gi * gw + gw * 0.1 + bi * bw, y = py(Math.max(0, Math.min(1, b.value)));
      const attrs = Object.entries(b.attrs).map(([k, v]) => `data-${k}="${esc(String(v))}"`).join(" ");
      parts.push(`<rect x="${x.toFixed(1)}" y="${y.toFixed(1)}" width="${(bw - 2).toFixed(1)}" height="${(py(0) - y).toFixed(1)}" fill="${COLORS[bi % COLORS.length]}" class="bar" ${attrs} data-value="${b.value}"><title>${esc(g.label)} ${esc(b.label)}: ${b.value.toFixed(3)}</title></rect>`);
      parts.push(`<text x="${(x + bw / 2 - 1).toFixed(1)}" y="${(y - 3).toFixed(1)}" text-anchor="middle" class="val">${b.value.toFixed(2)}</text>`);
    });
    parts.push(`<text x="${L + gi * gw + gw / 2}" y="${H - B + 16}" text-anchor="middle" class="tick">${esc(g.label)}</text>`);
  });
  labels.forEach((lab, i) => {
    const ly = T + 14 + i * 18;
    parts.push(`<rect x="${W - R + 12}" y="${ly - 9}" width="12" height="12" fill="${COLORS[i % COLORS.length]}"/><text x="${W - R + 30}" y="${ly + 1}" class="legend">${esc(lab)}</text>`);
  });
  parts.push("</svg>");
  return parts.join("\n");
}

function runLabel(r: SimulationResult): string {
  return `${r.policy}${r.predictor !== "none" ? "+" + r.predictor : ""} @${+r.slotsPerLayer.toFixed(2)}/layer`;
}

export function renderReport(out: ReplayOutput): string {
  const policies = [...new Set(out.sweep.map((p) => p.policy))];
  const slots = [...new Set(out.sweep.map((p) => p.slotsPerLayer))].sort((a, b) => a - b);
  const sweep = lineChart({
    id: "chart-sweep", title: "Hit rate vs cache budget (all traces)", xLabel: "slots per layer", yLabel: "hit rate", xTicks: slots,
    series: policies.map((policy) => ({
      label: policy,
      points: out.sweep.filter((p) => p.policy === policy).map((p) => ({ x: p.slotsPerLayer, y: p.hitRate, attrs: { chart: "sweep", policy, slots: p.slotsPerLayer } })),
    })),
  });
  const all = out.runs.filter((r) => r.trace === "all");
  const nLayer = all[0]?.perLayer.length ?? 0;
  const layerChart = lineChart({
    id: "chart-layers", title: "Per-layer hit rate (all traces)", xLabel: "layer", yLabel: "hit rate",
    xTicks: Array.from({ length: nLayer }, (_, l) => l).filter((l) => nLayer <= 16 || l % 4 === 0 || l === nLayer - 1),
    series: all.map((r, i) => ({
      label: runLabel(r),
      points: r.perLayer.map((pl) => ({ x: pl.layer, y: pl.hitRate, attrs: { chart: "layer", run: i, layer: pl.layer } })),
    })),
  });
  const loc = out.locality.filter((l) => l.trace.includes("+") || out.traces.length === 1);
  const locChart = barChart({
    id: "chart-locality", title: "Local routing consistency (SRP, SCH at cache size c)",
    groups: loc.map((l) => ({
      label: `L = ${l.segmentLength}`,
      bars: [{ label: "SRP", value: l.srp, attrs: { chart: "locality", metric: "srp", segment: l.segmentLength } },
        ...l.cacheSizes.map((c, i) => ({ label: `SCH c=${c}`, value: l.sch[i]!, attrs: { chart: "locality", metric: "sch", segment: l.segmentLength, cache: c } }))],
    })),
  });
  const rows = out.runs.map((r) => `<tr><td>${esc(r.trace)}</td><td>${esc(r.policy)}</td><td>${esc(r.predictor)}</td><td>${+r.slotsPerLayer.toFixed(2)}</td><td>${r.hits}</td><td>${r.misses}</td><td>${pct(r.hitRate)}</td><td>${(r.bytesMoved / 1e9).toFixed(2)}</td><td>${r.precision === null ? "–" : r.precision.toFixed(3)}</td><td>${r.recall === null ? "–" : r.recall.toFixed(3)}</td><td>${r.time ? (r.time.decodePerTokenS * 1000).toFixed(1) : "–"}</td></tr>`).join("\n");
  const locRows = out.locality.map((l) => `<tr><td>${esc(l.trace)}</td><td>${l.segmentLength}</td><td>${l.srp.toFixed(4)}</td>${l.sch.map((s, i) => `<td>c=${l.cacheSizes[i]}: ${s.toFixed(4)}</td>`).join("")}</tr>`).join("\n");
  const notes = [...new Set([...out.traces.flatMap((t) => t.notes.map((n) => `${t.name}: ${n}`)), ...out.runs.flatMap((r) => r.notes)])];
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>moira replay report</title>
<style>
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}
table{border-collapse:collapse;margin:12px 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f3f3f3}.chart{display:block;margin:16px 0;border:1px solid #eee}
.grid{stroke:#e5e5e5}.tick{font-size:11px;fill:#555}.axis{font-size:12px;fill:#333}.title{font-size:14px;font-weight:600}
.legend{font-size:11px}.val{font-size:9px;fill:#333}code{background:#f6f6f6;padding:1px 4px}
</style></head>
<body>
<h1>moira replay</h1>
<p>Command: <code>${esc(out.command)}</code></p>
<p>Traces: ${out.traces.map((t) => `${esc(t.name)} (${t.requests} requests, ${t.tokens} tokens, ${t.nLayer} layers × ${t.nExpert} experts, top-${t.topK})`).join("; ")}.
Expert size ${(out.expertBytes / 1e6).toFixed(1)} MB${out.modelShape ? ` (${esc(out.modelShape)})` : ""}; hardware <b>${esc(out.hardware.name)}</b>: ${esc(out.hardware.description)}.</p>
${sweep}
${layerChart}
${locChart}
<h2>Runs</h2>
<table id="runs"><tr><th>trace</th><th>policy</th><th>predictor</th><th>slots/layer</th><th>hits</th><th>misses</th><th>hit rate</th><th>GB moved</th><th>precision</th><th>recall</th><th>ms/token (modelled)</th></tr>
${rows}
</table>
<h2>Locality</h2>
<table id="locality"><tr><th>trace</th><th>segment</th><th>SRP</th><th colspan="4">SCH</th></tr>
${locRows}
</table>
${notes.length ? `<h2>Notes</h2><ul>${notes.map((n) => `<li>${esc(n)}</li>`).join("")}</ul>` : ""}
<script>
// Proves the page rendered and its scripts ran without error (checked by the headless test).
document.body.setAttribute("data-ready", String(document.querySelectorAll("[data-value]").length));
</script>
</body></html>
`;
}
