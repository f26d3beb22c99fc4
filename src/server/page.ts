/**
 * The page `moira serve` answers at /: one self-contained HTML document (inline CSS and script,
 * nothing fetched from elsewhere) that
 *   - chats with the model: it streams /v1/chat/completions (`stream: true`), showing each piece as
 *     it arrives; Stop aborts the fetch (the server ends the generation within a step), Reset
 *     forgets the conversation. Each turn sends the whole conversation, so the slot's KV cache
 *     finds it and prefills only the new turn (the status line shows the cached tokens);
 *   - draws the experts live from /v1/cache, polled every 500 ms: a layers x experts heatmap of
 *     the hits since start (or accesses, or routed tokens), the experts the cache holds now
 *     outlined, and the cache's totals. Without --memory-budget every expert is resident: the page
 *     says so and draws how many tokens chose each expert. /metrics renders the same snapshot,
 *     so the cells' numbers are those of a scrape.
 *
 * Each heatmap cell carries its numbers as data attributes (data-hits, data-accesses,
 * data-resident, data-routed), each total its data-value, and <body> the count of completed polls
 * (data-polls) and the chat's state (data-chat: idle | streaming): what test/server-page.test.ts
 * reads in headless Chromium. The script avoids template literals: it lives in one.
 */
export const PAGE_HTML = String.raw`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>moira</title>
<link rel="icon" href="data:,">
<style>
  :root { --fg: #1d2330; --muted: #687086; --line: #dde1ea; --bg: #f7f8fb; --panel: #fff; --accent: #2458b3; --resident: #e07b00; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg); background: var(--bg); }
  header { display: flex; align-items: baseline; gap: 12px; padding: 10px 18px; border-bottom: 1px solid var(--line); background: var(--panel); }
  header h1 { margin: 0; font-size: 18px; }
  header #model { color: var(--muted); }
  main { display: grid; grid-template-columns: minmax(320px, 1fr) minmax(320px, 1.2fr); gap: 16px; padding: 16px 18px; }
  @media (max-width: 900px) { main { grid-template-columns: 1fr; } }
  section { background: var(--panel); border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; min-width: 0; }
  h2 { margin: 0 0 8px; font-size: 15px; }
  #messages { height: 52vh; overflow-y: auto; display: flex; flex-direction: column; gap: 8px; padding: 4px 2px 8px; }
  .msg { white-space: pre-wrap; word-wrap: break-word; padding: 7px 10px; border-radius: 8px; max-width: 92%; }
  .msg.user { align-self: flex-end; background: #e5edfb; }
  .msg.assistant { align-self: flex-start; background: #f1f2f5; }
  .msg.assistant.streaming::after { content: "\25ae"; color: var(--muted); margin-left: 2px; }
  .msg.stopped { border-left: 3px solid var(--resident); }
  .msg.failed { border-left: 3px solid #c0392b; }
  textarea { width: 100%; resize: vertical; font: inherit; padding: 7px 9px; border: 1px solid var(--line); border-radius: 6px; }
  .controls { display: flex; flex-wrap: wrap; gap: 8px; align-items: center; margin-top: 6px; }
  .controls label { color: var(--muted); }
  .controls input { width: 70px; font: inherit; }
  button { font: inherit; padding: 4px 12px; border-radius: 6px; border: 1px solid var(--line); background: #fff; cursor: pointer; }
  button#send { background: var(--accent); border-color: var(--accent); color: #fff; }
  button:disabled { opacity: .45; cursor: default; }
  #chat-status, #cache-mode { color: var(--muted); min-height: 1.4em; margin-top: 6px; }
  #chat-status.error { color: #c0392b; }
  #cache-stats { display: grid; grid-template-columns: repeat(auto-fill, minmax(130px, 1fr)); gap: 6px 12px; margin: 8px 0 12px; }
  #cache-stats div { border-left: 3px solid var(--line); padding-left: 7px; }
  #cache-stats dt { color: var(--muted); font-size: 12px; }
  #cache-stats dd { margin: 0; font-size: 16px; font-variant-numeric: tabular-nums; }
  .heat-head { display: flex; align-items: center; gap: 10px; margin-bottom: 6px; color: var(--muted); }
  #heatmap { display: grid; gap: 1px; overflow-x: auto; font-size: 10px; color: var(--muted); }
  #heatmap .cell { min-width: 4px; height: 14px; border-radius: 2px; background: #eef0f5; }
  #heatmap .cell.resident { box-shadow: inset 0 0 0 2px var(--resident); }
  #heatmap .row-label { padding-right: 4px; text-align: right; white-space: nowrap; line-height: 14px; }
  #heatmap .col-label { text-align: center; overflow: hidden; }
  .legend { display: flex; align-items: center; gap: 8px; margin-top: 8px; color: var(--muted); font-size: 12px; }
  .legend .ramp { width: 120px; height: 10px; border-radius: 2px; background: linear-gradient(90deg, #eef0f5, #1f4fa8); }
  .legend .res { width: 14px; height: 10px; border-radius: 2px; box-shadow: inset 0 0 0 2px var(--resident); }
</style>
</head>
<body data-polls="0" data-chat="idle">
<header><h1>moira</h1><span id="model">connecting…</span></header>
<main>
  <section id="chat">
    <h2>Chat</h2>
    <div id="messages" aria-live="polite"></div>
    <form id="composer">
      <textarea id="input" rows="3" placeholder="Message (Enter sends, Shift+Enter starts a new line)"></textarea>
      <div class="controls">
        <label>max tokens <input id="max-tokens" type="number" min="1" value="256"></label>
        <label>temperature <input id="temperature" type="number" min="0" step="0.1" value="0.7"></label>
        <button id="send" type="submit">Send</button>
        <button id="stop" type="button" disabled>Stop</button>
        <button id="reset" type="button">Reset</button>
      </div>
      <div id="chat-status"></div>
    </form>
  </section>
  <section id="cache">
    <h2>Expert cache</h2>
    <div id="cache-mode">loading…</div>
    <dl id="cache-stats"></dl>
    <div class="heat-head" id="heat-head" hidden>
      <label>color: <select id="heat-metric"></select></label>
      <span id="heat-max"></span>
    </div>
    <div id="heatmap"></div>
    <div class="legend" id="legend" hidden><span>0</span><span class="ramp"></span><span>max</span><span class="res" id="legend-res"></span><span id="legend-res-text">resident now</span></div>
  </section>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const POLL_MS = 500;
/** the conversation so far, sent whole each turn (the server's KV cache finds its prefix) */
let conversation = [];
/** the running request's controller, or null */
let running = null;

// ---- chat ----

function bubble(role, text) {
  const d = document.createElement("div");
  d.className = "msg " + role;
  d.textContent = text;
  $("messages").appendChild(d);
  $("messages").scrollTop = $("messages").scrollHeight;
  return d;
}

/** kind: "error" shows the line in red; anything else plainly */
function setStatus(text, kind) {
  $("chat-status").textContent = text;
  $("chat-status").className = kind === "error" ? "error" : "";
}

function setRunning(controller) {
  running = controller;
  document.body.dataset.chat = controller ? "streaming" : "idle";
  $("send").disabled = controller !== null;
  $("stop").disabled = controller === null;
}

/** Reads the server-sent events of a response, calling onData with each event's data. */
async function readEvents(response, onData) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true }).replace(/\r/g, "");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) if (line.startsWith("data:")) onData(line.slice(5).trim());
    }
  }
}

async function sendTurn(text) {
  conversation.push({ role: "user", content: text });
  bubble("user", text);
  const out = bubble("assistant", "");
  out.classList.add("streaming");
  out.dataset.chunks = "0";
  const controller = new AbortController();
  setRunning(controller);
  setStatus("generating…");
  let reply = "", usage = null, finish = null;
  const started = performance.now();
  try {
    const body = {
      messages: conversation, stream: true, stream_options: { include_usage: true },
      max_tokens: Number($("max-tokens").value) || 256, temperature: Number($("temperature").value),
    };
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body), signal: controller.signal,
    });
    if (!response.ok) {
      const e = await response.json().catch(() => null);
      throw new Error(e && e.error ? e.error.message : "HTTP " + response.status);
    }
    await readEvents(response, (data) => {
      if (data === "[DONE]") return;
      const j = JSON.parse(data);
      if (j.error) throw new Error(j.error.message);
      if (j.usage) usage = j.usage;
      const choice = j.choices && j.choices[0];
      if (!choice) return;
      if (choice.finish_reason) finish = choice.finish_reason;
      if (choice.delta && choice.delta.content) {
        reply += choice.delta.content;
        out.textContent = reply;
        out.dataset.chunks = String(Number(out.dataset.chunks) + 1);
        $("messages").scrollTop = $("messages").scrollHeight;
      }
    });
    conversation.push({ role: "assistant", content: reply });
    const s = ((performance.now() - started) / 1000).toFixed(1);
    setStatus(usage
      ? "prompt " + usage.prompt_tokens + " tokens (" + usage.prompt_tokens_details.cached_tokens + " cached, not prefilled), " + usage.completion_tokens + " generated in " + s + " s; " + finish
      : "done in " + s + " s");
    if (usage) {
      $("chat-status").dataset.promptTokens = String(usage.prompt_tokens);
      $("chat-status").dataset.cachedTokens = String(usage.prompt_tokens_details.cached_tokens);
    }
  } catch (e) {
    if (controller.signal.aborted) {
      // what was shown stays in the conversation: the next turn continues from it
      conversation.push({ role: "assistant", content: reply });
      out.classList.add("stopped");
      setStatus("stopped");
    } else {
      conversation.pop();
      out.classList.add("failed");
      if (!reply) out.textContent = "(no reply)";
      setStatus("error: " + e.message, "error");
    }
  } finally {
    out.classList.remove("streaming");
    if (running === controller) setRunning(null);
  }
}

$("composer").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = $("input").value.trim();
  if (!text || running) return;
  $("input").value = "";
  sendTurn(text);
});
$("input").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); $("composer").requestSubmit(); }
});
$("stop").addEventListener("click", () => { if (running) running.abort(); });
$("reset").addEventListener("click", () => {
  if (running) running.abort();
  conversation = [];
  $("messages").replaceChildren();
  setStatus("new conversation");
});

fetch("/v1/models").then((r) => r.json()).then((m) => {
  const model = m.data[0];
  $("model").textContent = model.id + " · context " + model.context_length + " tokens";
}).catch(() => { $("model").textContent = "server unreachable"; });

// ---- expert cache ----

/** the heatmap's shape, to rebuild it only when it changes */
let shape = "";
let cells = [];
let polls = 0;

const METRICS = {
  hits: "hits since start",
  accesses: "accesses since start",
  routed: "tokens routed since start",
};

function formatBytes(b) {
  if (b >= 2 ** 30) return (b / 2 ** 30).toFixed(2) + " GiB";
  if (b >= 2 ** 20) return (b / 2 ** 20).toFixed(1) + " MiB";
  if (b >= 2 ** 10) return (b / 2 ** 10).toFixed(1) + " KiB";
  return b + " B";
}

function sum(grid) {
  let s = 0;
  for (const row of grid) for (const v of row) s += v;
  return s;
}

function showStats(items) {
  const dl = $("cache-stats");
  dl.replaceChildren();
  for (const [key, label, value, text] of items) {
    const div = document.createElement("div");
    const dt = document.createElement("dt");
    const dd = document.createElement("dd");
    dt.textContent = label;
    dd.textContent = text;
    dd.dataset.stat = key;
    dd.dataset.value = String(value);
    div.append(dt, dd);
    dl.appendChild(div);
  }
}

function buildHeatmap(s) {
  const map = $("heatmap");
  map.replaceChildren();
  map.style.gridTemplateColumns = "auto repeat(" + s.nExpert + ", minmax(4px, 1fr))";
  const step = Math.max(1, Math.ceil(s.nExpert / 16));
  map.appendChild(document.createElement("span"));
  for (let e = 0; e < s.nExpert; e++) {
    const c = document.createElement("span");
    c.className = "col-label";
    c.textContent = e % step === 0 ? String(e) : "";
    map.appendChild(c);
  }
  cells = [];
  s.layers.forEach((layer) => {
    const label = document.createElement("span");
    label.className = "row-label";
    label.textContent = "L" + layer;
    map.appendChild(label);
    const row = [];
    for (let e = 0; e < s.nExpert; e++) {
      const c = document.createElement("div");
      c.className = "cell";
      c.dataset.layer = String(layer);
      c.dataset.expert = String(e);
      map.appendChild(c);
      row.push(c);
    }
    cells.push(row);
  });
  const select = $("heat-metric");
  select.replaceChildren();
  for (const key of s.cache ? ["hits", "accesses", "routed"] : ["routed"]) {
    const o = document.createElement("option");
    o.value = key;
    o.textContent = METRICS[key];
    select.appendChild(o);
  }
  $("heat-head").hidden = false;
  $("legend").hidden = false;
  $("legend-res").hidden = !s.cache;
  $("legend-res-text").hidden = !s.cache;
}

function color(v, max) {
  if (v <= 0 || max <= 0) return "";
  // log scale: the hot experts do not wash out the warm ones
  const t = Math.log1p(v) / Math.log1p(max);
  const mix = (a, b) => Math.round(a + (b - a) * t);
  return "rgb(" + mix(226, 31) + "," + mix(233, 79) + "," + mix(246, 168) + ")";
}

let lastSnapshot = null;

function drawHeatmap(s) {
  const key = $("heat-metric").value || (s.cache ? "hits" : "routed");
  const grid = key === "routed" ? s.routedTokens : s.cache[key];
  let max = 0;
  for (const row of grid) for (const v of row) if (v > max) max = v;
  $("heat-max").textContent = "max " + max;
  s.layers.forEach((layer, i) => {
    for (let e = 0; e < s.nExpert; e++) {
      const c = cells[i][e];
      const routed = s.routedTokens[i][e];
      c.dataset.routed = String(routed);
      let title = "layer " + layer + ", expert " + e + ": " + routed + " tokens routed";
      if (s.cache) {
        const hits = s.cache.hits[i][e], accesses = s.cache.accesses[i][e], resident = s.cache.resident[i][e];
        c.dataset.hits = String(hits);
        c.dataset.accesses = String(accesses);
        c.dataset.resident = String(resident);
        c.classList.toggle("resident", resident === 1);
        title += ", " + hits + " hits of " + accesses + " accesses" + (resident === 1 ? ", resident now" : "");
      }
      c.style.background = color(grid[i][e], max);
      c.title = title;
    }
  });
}

function render(s) {
  lastSnapshot = s;
  const next = s.mode + ":" + s.layers.join(",") + ":" + s.nExpert;
  if (next !== shape) { shape = next; buildHeatmap(s); }
  const routed = sum(s.routedTokens);
  if (s.cache) {
    const c = s.cache, hits = sum(c.hits), accesses = sum(c.accesses), resident = sum(c.resident);
    $("cache-mode").textContent = "Experts offloaded under --memory-budget: " + resident + " of " + s.layers.length * s.nExpert +
      " held in the cache now (outlined); the colors count since the server started.";
    const rate = accesses > 0 ? hits / accesses : 0;
    showStats([
      ["hitRate", "hit rate", rate, (100 * rate).toFixed(1) + "%"],
      ["accesses", "accesses", accesses, String(accesses)],
      ["hits", "hits", hits, String(hits)],
      ["misses", "misses (read on demand)", c.misses, String(c.misses)],
      ["bytesRead", "expert bytes read", c.bytesRead, formatBytes(c.bytesRead)],
      ["stallSeconds", "stall (waiting for reads)", c.stallSeconds, c.stallSeconds.toFixed(3) + " s"],
      ["resident", "experts resident", resident, resident + " / " + s.layers.length * s.nExpert],
      ["cacheSlots", "cache slots in service", c.cacheSlots, String(c.cacheSlots)],
      ["kvCommittedBytes", "KV cache committed", c.kvCommittedBytes, formatBytes(c.kvCommittedBytes)],
      ["routedTokens", "tokens routed", routed, String(routed)],
    ]);
  } else {
    $("cache-mode").textContent = "All experts are resident (the server runs without --memory-budget): nothing is offloaded, " +
      "so the heatmap shows how many tokens chose each expert since the server started.";
    showStats([
      ["routedTokens", "tokens routed", routed, String(routed)],
      ["experts", "experts (all resident)", s.layers.length * s.nExpert, s.layers.length + " layers × " + s.nExpert],
    ]);
  }
  drawHeatmap(s);
}

$("heat-metric").addEventListener("change", () => { if (lastSnapshot) drawHeatmap(lastSnapshot); });

async function poll() {
  let next = POLL_MS;
  try {
    const r = await fetch("/v1/cache", { cache: "no-store" });
    if (r.status === 404) {
      $("cache-mode").textContent = "This server records no expert statistics.";
      return;
    }
    render(await r.json());
    polls++;
    document.body.dataset.polls = String(polls);
  } catch (e) {
    $("cache-mode").textContent = "server unreachable; retrying";
    next = 4 * POLL_MS;
  }
  setTimeout(poll, next);
}
poll();
</script>
</body>
</html>
`;
