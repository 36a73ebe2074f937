// fvsteer playground: plain JavaScript over the server's public HTTP API (same origin), no build step.
// Panels: Steer (sliders, steered vs baseline text, request snippets), Analogies, Vectors (+ admin), Train.
"use strict";

const $ = (id) => document.getElementById(id);
const WEIGHT_LIMIT = 2;

/** An error answer of the API: its envelope's message and the parameter it names. */
class ApiError extends Error {
  constructor(status, message, param) {
    super(message);
    this.status = status;
    this.param = param;
  }
}

async function apiError(response) {
  let message = `${response.status} ${response.statusText}`;
  let param = null;
  try {
    const body = await response.json();
    if (body && body.error) {
      message = body.error.message || message;
      param = body.error.param || null;
    }
  } catch (_) { /* not JSON: keep the status line */ }
  return new ApiError(response.status, message, param);
}

/** fetch against this server; JSON in and out; a non-2xx answer throws ApiError. */
async function api(path, { method = "GET", body, token, form, signal } = {}) {
  const headers = {};
  if (token) headers.Authorization = `Bearer ${token}`;
  let payload;
  if (form) payload = form;
  else if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  const response = await fetch(path, { method, headers, body: payload, signal, credentials: "same-origin" });
  if (!response.ok) throw await apiError(response);
  return response.json();
}

function showError(box, error) {
  box.replaceChildren();
  if (!error) {
    box.hidden = true;
    return;
  }
  box.hidden = false;
  box.append(document.createTextNode(error.message || String(error)));
  if (error.param) {
    box.append(document.createTextNode(" — parameter "));
    const code = document.createElement("code");
    code.textContent = error.param;
    box.append(code);
  }
  if (error.status) box.append(document.createTextNode(` (HTTP ${error.status})`));
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

const fmt = (value, digits = 3) => (typeof value === "number" ? value.toFixed(digits).replace(/\.?0+$/, "") || "0" : "");

// --- server-sent events over fetch (POST /complete) and EventSource (jobs) ------------------------------------

/** Read a text/event-stream response, calling onEvent(name, data) for each event. */
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let name = "message";
  let data = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let newline;
    while ((newline = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, newline).replace(/\r$/, "");
      buffer = buffer.slice(newline + 1);
      if (line === "") {
        if (data.length) onEvent(name, JSON.parse(data.join("\n")));
        name = "message";
        data = [];
      } else if (line.startsWith("event:")) name = line.slice(6).trim();
      else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
    }
  }
}

// --- state shared by the panels -------------------------------------------------------------------------------

const state = {
  model: null,          // the served model's name (OpenAI base model id)
  vectors: [],          // VectorInfo of each vector, sorted by name
  weights: new Map(),   // vector name → weight in the Steer panel
  adminToken: null,     // in memory only
  snippetLang: "curl",
  controller: null,     // the running Steer request
  job: null,            // {id, source} of the Train panel's job
};

// --- tabs (keyboard: arrows, Home, End) -------------------------------------------------------------------------

function setupTabs(list, onSelect) {
  const tabs = [...list.querySelectorAll('[role="tab"]')];
  const select = (tab, focus) => {
    for (const other of tabs) {
      const selected = other === tab;
      other.setAttribute("aria-selected", String(selected));
      other.tabIndex = selected ? 0 : -1;
    }
    if (focus) tab.focus();
    onSelect(tab);
  };
  for (const tab of tabs) {
    tab.addEventListener("click", () => select(tab, false));
    tab.addEventListener("keydown", (event) => {
      const index = tabs.indexOf(tab);
      const next = { ArrowRight: index + 1, ArrowLeft: index - 1, Home: 0, End: tabs.length - 1 }[event.key];
      if (next === undefined) return;
      event.preventDefault();
      select(tabs[(next + tabs.length) % tabs.length], true);
    });
  }
  return (tab) => select(tab, false);
}

let showPanel;

function panelTabs() {
  showPanel = setupTabs($("tabs"), (tab) => {
    for (const panel of document.querySelectorAll('[role="tabpanel"]')) {
      panel.hidden = panel.id !== tab.getAttribute("aria-controls");
    }
  });
}

// --- vectors: loaded once, shown by the Steer sliders and the Vectors table ----------------------------------

function holdout(info) {
  const metrics = info.metrics || {};
  if (typeof metrics.holdout_top1_after === "number") return metrics.holdout_top1_after;
  if (typeof metrics.sweep_zero_shot_fv_top1 === "number") return metrics.sweep_zero_shot_fv_top1;
  return null;
}

async function loadVectors() {
  const listing = await api("/vectors");
  const infos = [];
  const queue = [...listing.vectors];
  const worker = async () => {  // a few at a time: a bank of 100+ vectors is 100+ small GETs
    while (queue.length) {
      const summary = queue.shift();
      try {
        infos.push(await api(`/vectors/${encodeURIComponent(summary.name)}`));
      } catch (error) {
        if (error.status !== 404) throw error;  // deleted meanwhile
      }
    }
  };
  await Promise.all([worker(), worker(), worker(), worker()]);
  infos.sort((a, b) => a.name.localeCompare(b.name));
  state.vectors = infos;
  for (const name of [...state.weights.keys()]) {
    if (!infos.some((info) => info.name === name)) state.weights.delete(name);
  }
  renderSliders();
  renderVectorTable();
  renderSnippet();
}

// --- Steer ----------------------------------------------------------------------------------------------------

function renderSliders() {
  const list = $("sliders");
  list.replaceChildren();
  for (const info of state.vectors) {
    const id = `w-${info.name}`;
    const weight = state.weights.get(info.name) || 0;
    const acc = holdout(info);
    const title = `${info.name}: relation ${info.relation}, layer ${info.layer}, ${info.method}` +
      (acc === null ? "" : `, hold-out top-1 ${fmt(acc, 2)}`) + `, norm ${fmt(info.norm, 1)}`;
    const slider = el("input", {
      type: "range", id, min: String(-WEIGHT_LIMIT), max: String(WEIGHT_LIMIT), step: "0.05", value: String(weight),
      "aria-describedby": `${id}-value`, "data-name": info.name,
    });
    const output = el("output", { id: `${id}-value`, for: id, text: fmt(weight, 2) });
    const item = el("li", { title, "data-name": info.name, "data-relation": info.relation },
      el("label", { for: id, text: info.name }), slider, output);
    if (weight) item.classList.add("weighted");
    slider.addEventListener("input", () => {
      const value = Number(slider.value);
      if (value) state.weights.set(info.name, value);
      else state.weights.delete(info.name);
      output.textContent = fmt(value, 2);
      item.classList.toggle("weighted", value !== 0);
      updateWeightedCount();
      renderSnippet();
    });
    list.append(item);
  }
  filterSliders();
  updateWeightedCount();
}

function filterSliders() {
  const query = $("vector-filter").value.trim().toLowerCase();
  for (const item of $("sliders").children) {
    const text = `${item.dataset.name} ${item.dataset.relation}`.toLowerCase();
    item.hidden = Boolean(query) && !text.includes(query);
  }
}

function updateWeightedCount() {
  $("weighted-count").textContent = String(state.weights.size);
}

function setWeights(weights) {
  state.weights.clear();
  for (const [name, weight] of Object.entries(weights)) {
    const clamped = Math.max(-WEIGHT_LIMIT, Math.min(WEIGHT_LIMIT, Math.round(weight * 20) / 20));
    if (clamped && state.vectors.some((info) => info.name === name)) state.weights.set(name, clamped);
  }
  renderSliders();
  renderSnippet();
}

function optionalNumber(id) {
  const text = $(id).value.trim();
  return text === "" ? null : Number(text);
}

/** The POST /complete body the Steer form describes. */
function steerRequest() {
  const chat = document.querySelector('input[name="mode"]:checked').value === "chat";
  const body = {};
  if (chat) {
    const messages = [];
    const system = $("system").value.trim();
    if (system) messages.push({ role: "system", content: system });
    messages.push({ role: "user", content: $("prompt").value });
    body.messages = messages;
  } else {
    body.prompt = $("prompt").value;
  }
  const relations = Object.fromEntries(state.weights);
  if (Object.keys(relations).length) body.relations = relations;
  const scale = optionalNumber("scale");
  if (scale !== null && scale !== 1) body.scale = scale;
  const layer = optionalNumber("layer");
  if (layer !== null) body.layer = layer;
  if ($("positions").value !== "fv") body.positions = $("positions").value;
  body.max_new_tokens = optionalNumber("max-new-tokens") ?? 16;
  const temperature = optionalNumber("temperature");
  if (temperature) body.temperature = temperature;
  const topP = optionalNumber("top-p");
  if (topP !== null && topP !== 1) body.top_p = topP;
  const seed = optionalNumber("seed");
  if (seed !== null) body.seed = seed;
  if ($("stop-newline").checked) body.stop = ["\n"];
  body.return_baseline = true;
  return body;
}

async function runSteer(event) {
  event.preventDefault();
  if (state.controller) return;
  const body = steerRequest();
  const steered = $("steered-text");
  const baseline = $("baseline-text");
  steered.textContent = "";
  baseline.textContent = "";
  $("steered-meta").textContent = "";
  $("baseline-meta").textContent = "";
  showError($("steer-error"), null);
  $("steer-state").textContent = body.relations ? "generating…" : "generating (no vector weighted: both unsteered)…";
  $("run").disabled = true;
  $("stop").disabled = false;
  state.controller = new AbortController();
  try {
    const response = await fetch("/complete", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ ...body, stream: true }), signal: state.controller.signal,
    });
    if (!response.ok) throw await apiError(response);
    let failure = null;
    await readEvents(response, (name, data) => {
      if (name === "token") steered.textContent += data.text;
      else if (name === "baseline") baseline.textContent += data.text;
      else if (name === "done") showCompletion(data);
      else if (name === "error") failure = new ApiError(0, data.error.message, data.error.param);
    });
    if (failure) throw failure;
    $("steer-state").textContent = "done";
  } catch (error) {
    if (error.name === "AbortError") $("steer-state").textContent = "stopped";
    else {
      $("steer-state").textContent = "";
      showError($("steer-error"), error);
    }
  } finally {
    state.controller = null;
    $("run").disabled = false;
    $("stop").disabled = true;
  }
}

function showCompletion(done) {
  $("steered-text").textContent = done.text;  // the final text (stop strings removed)
  // The receipt: per layer, each vector as name@digest (the exact values applied) and the composite's norm.
  const applied = (added) => added.vectors.map((v) => `${v.name}@${v.digest.slice(0, 8)}`).join(" + ");
  const layers = done.steering
    ? Object.entries(done.steering.layers)
      .map(([layer, added]) => `layer ${layer}: ${applied(added)} ‖v‖ ${fmt(added.norm, 1)}`).join(", ")
    : "unsteered";
  $("steered-meta").textContent = `${done.finish_reason} · ${done.usage.completion_tokens} tokens · ${layers}`;
  if (done.baseline) {
    $("baseline-text").textContent = done.baseline.text;
    $("baseline-meta").textContent = done.baseline.finish_reason;
  }
}

// --- request snippets ------------------------------------------------------------------------------------------

function py(value, indent = "") {
  if (value === null || value === undefined) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value === "number") return String(value);
  if (typeof value === "string") return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map((item) => py(item, indent)).join(", ")}]`;
  return `{${Object.entries(value).map(([key, item]) => `${JSON.stringify(key)}: ${py(item, indent)}`).join(", ")}}`;
}

function shellQuote(text) {
  return `'${text.replace(/'/g, "'\\''")}'`;
}

function renderSnippet() {
  const body = steerRequest();
  const origin = window.location.origin;
  let text;
  if (state.snippetLang === "curl") {
    text = `curl -s ${origin}/complete -H 'content-type: application/json' \\\n  -d ${shellQuote(JSON.stringify(body))}`;
  } else if (state.snippetLang === "sdk") {
    const args = Object.entries(body)
      .filter(([key]) => key !== "prompt")
      .map(([key, value]) => `${key}=${py(value)}`);
    const first = body.prompt !== undefined ? [py(body.prompt)] : [];
    text = `from fvsteer_client import Client  # pip install -e ./sdk\n\n` +
      `with Client(${py(origin)}) as client:\n` +
      `    out = client.complete(${[...first, ...args].join(",\n                          ")})\n` +
      `    print(out.text)\n    print(out.baseline.text)\n`;
  } else {
    const steering = {};
    if (body.relations) steering.relations = body.relations;
    if (body.scale !== undefined) steering.scale = body.scale;
    if (body.layer !== undefined) steering.layer = body.layer;
    if (body.positions !== undefined) steering.positions = body.positions;
    const common = [`model=${py(state.model || "MODEL")}`, `max_tokens=${body.max_new_tokens}`];
    if (body.temperature !== undefined) common.push(`temperature=${body.temperature}`);
    else common.push("temperature=0");
    if (body.top_p !== undefined) common.push(`top_p=${body.top_p}`);
    if (body.seed !== undefined) common.push(`seed=${body.seed}`);
    if (body.stop) common.push(`stop=${py(body.stop)}`);
    if (steering.relations) common.push(`extra_body={"steering": ${py(steering)}}`);
    const chat = body.messages !== undefined;
    const call = chat
      ? `client.chat.completions.create(\n    messages=${py(body.messages)},\n    ${common.join(",\n    ")})\nprint(out.choices[0].message.content)`
      : `client.completions.create(\n    prompt=${py(body.prompt)},\n    ${common.join(",\n    ")})\nprint(out.choices[0].text)`;
    text = `from openai import OpenAI\n\nclient = OpenAI(base_url=${py(`${origin}/v1`)}, api_key="unused")\n` +
      `out = ${call}\n` +
      (steering.relations ? "" : "# steer: extra_body={\"steering\": {\"relations\": {name: weight}}}, or model=\"<model>+<vector>*<weight>\"\n");
  }
  $("snippet").textContent = text;
}

async function copySnippet() {
  const text = $("snippet").textContent;
  try {
    await navigator.clipboard.writeText(text);
    $("copy-state").textContent = "copied";
  } catch (_) {  // no clipboard permission (plain http on another host): select it for Ctrl+C
    const range = document.createRange();
    range.selectNodeContents($("snippet"));
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    $("copy-state").textContent = "selected: press Ctrl+C";
  }
}

function setupSteer() {
  $("steer-form").addEventListener("submit", runSteer);
  $("stop").addEventListener("click", () => state.controller && state.controller.abort());
  $("vector-filter").addEventListener("input", filterSliders);
  $("reset-weights").addEventListener("click", () => setWeights({}));
  for (const radio of document.querySelectorAll('input[name="mode"]')) {
    radio.addEventListener("change", () => {
      const chat = radio.value === "chat" && radio.checked;
      $("system-label").classList.toggle("hidden", !chat);
      $("prompt-label").textContent = chat ? "User message" : "Text to continue";
      $("stop-newline").checked = !chat;
      renderSnippet();
    });
  }
  $("steer-form").addEventListener("input", renderSnippet);
  $("steer-form").addEventListener("change", renderSnippet);
  setupTabs($("snippet-tabs"), (tab) => {
    state.snippetLang = tab.dataset.lang;
    renderSnippet();
  });
  $("copy-snippet").addEventListener("click", copySnippet);
  $("prompt").addEventListener("keydown", (event) => {  // Ctrl/Cmd+Enter runs from the prompt box
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("steer-form").requestSubmit();
  });
}

// --- Analogies ---------------------------------------------------------------------------------------------------

function bars(list, entries, { signed = false, best = null } = {}) {
  list.replaceChildren();
  const largest = Math.max(...entries.map(([, value]) => Math.abs(value)), 1e-9);
  const lowest = Math.min(...entries.map(([, value]) => value));
  for (const [label, value] of entries) {
    const bar = el("span", { class: "bar" });
    if (signed) {
      const half = (Math.abs(value) / largest) * 50;
      bar.classList.add(value < 0 ? "neg" : "pos");
      bar.style.width = `${half}%`;
      bar.style.left = value < 0 ? `${50 - half}%` : "50%";
    } else {  // log-probabilities: the bar grows from the lowest one to 0
      const span = Math.max(-lowest, 1e-9);
      bar.style.width = `${Math.max(2, ((value - lowest) / span) * 100)}%`;
      bar.style.left = "0";
    }
    const item = el("li", { "data-label": label },
      el("span", { class: "label", text: label }),
      el("span", { class: "track", role: "img", "aria-label": `${label}: ${fmt(value)}` }, bar),
      el("span", { class: "value", text: fmt(value) }));
    if (label === best) item.classList.add("best");
    list.append(item);
  }
}

let lastWeights = null;

async function solveAnalogy(event) {
  event.preventDefault();
  showError($("analogy-error"), null);
  const body = { a: $("analogy-a").value.trim(), b: $("analogy-b").value.trim(), c: $("analogy-c").value.trim() };
  const choices = $("analogy-choices").value.split(",").map((item) => item.trim()).filter(Boolean);
  if (choices.length) body.choices = choices;
  $("analogy-state").textContent = "solving…";
  $("solve").disabled = true;
  try {
    const result = await api("/analogies", { method: "POST", body });
    $("analogy-answer").textContent = result.answer;
    $("analogy-combiner").textContent = `(${result.combiner} combiner)`;
    if (result.choice_scores) {
      bars($("choice-bars"), choices.map((choice, index) => [choice, result.choice_scores[index]]), { best: result.answer });
    } else {
      $("choice-bars").replaceChildren(el("li", { class: "muted", text: "no choices given: the answer was generated" }));
    }
    const weights = Object.entries(result.weights).sort((x, y) => Math.abs(y[1]) - Math.abs(x[1]));
    bars($("weight-bars"), weights, { signed: true });
    lastWeights = { weights: result.weights, c: result.c };
    $("analogy-result").hidden = false;
    $("analogy-state").textContent = "";
  } catch (error) {
    $("analogy-state").textContent = "";
    showError($("analogy-error"), error);
  } finally {
    $("solve").disabled = false;
  }
}

function loadAnalogyWeights() {
  if (!lastWeights) return;
  setWeights(lastWeights.weights);
  document.querySelector('input[name="mode"][value="raw"]').click();
  $("prompt").value = `Q: ${lastWeights.c}\nA:`;
  renderSnippet();
  showPanel($("tab-steer"));
  $("tab-steer").focus();
}

function setupAnalogies() {
  $("analogy-form").addEventListener("submit", solveAnalogy);
  $("load-weights").addEventListener("click", loadAnalogyWeights);
}

// --- plots (SVG, no library) ----------------------------------------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  return node;
}

/** A line chart of series [{label, points: [[x, y]], color}] with y in [yMin, yMax]. */
function lineChart(title, series, { yMin = 0, yMax = 1, xLabel = "" } = {}) {
  const width = 420, height = 200, left = 40, right = 10, top = 12, bottom = 30;
  const xs = series.flatMap((line) => line.points.map(([x]) => x));
  const xMin = Math.min(...xs), xMax = Math.max(...xs, xMin + 1);
  const sx = (x) => left + ((x - xMin) / (xMax - xMin)) * (width - left - right);
  const sy = (y) => top + (1 - (y - yMin) / (yMax - yMin || 1)) * (height - top - bottom);
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "plot", role: "img", "aria-label": title });
  chart.append(svg("line", { x1: left, y1: sy(yMin), x2: width - right, y2: sy(yMin), stroke: "#999" }));
  chart.append(svg("line", { x1: left, y1: top, x2: left, y2: sy(yMin), stroke: "#999" }));
  for (const y of [yMin, (yMin + yMax) / 2, yMax]) {
    const label = svg("text", { x: left - 4, y: sy(y) + 4, "text-anchor": "end" });
    label.textContent = fmt(y, 2);
    chart.append(label);
  }
  for (const x of [xMin, xMax]) {
    const label = svg("text", { x: sx(x), y: height - 14, "text-anchor": "middle" });
    label.textContent = String(x);
    chart.append(label);
  }
  const caption = svg("text", { x: (left + width) / 2, y: height - 2, "text-anchor": "middle" });
  caption.textContent = xLabel;
  chart.append(caption);
  for (const line of series) {
    if (!line.points.length) continue;
    const path = line.points.map(([x, y], index) => `${index ? "L" : "M"}${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(" ");
    chart.append(svg("path", { d: path, fill: "none", stroke: line.color, "stroke-width": 2 }));
    for (const [x, y] of line.points.length < 40 ? line.points : []) {
      chart.append(svg("circle", { cx: sx(x), cy: sy(y), r: 2.5, fill: line.color }));
    }
  }
  return chart;
}

/** A [layer][head] heatmap of the average indirect effect. */
function heatmap(title, matrix) {
  const layers = matrix.length, heads = Math.max(...matrix.map((row) => row.length));
  const cell = Math.max(4, Math.min(14, Math.floor(400 / Math.max(heads, 1))));
  const left = 30, top = 16;
  const width = left + heads * cell + 10, height = top + layers * cell + 10;
  const largest = Math.max(...matrix.flat().map(Math.abs), 1e-12);
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "plot", role: "img", "aria-label": title });
  matrix.forEach((row, layer) => {
    row.forEach((value, head) => {
      const strength = Math.min(1, Math.abs(value) / largest);
      const color = value >= 0 ? `rgba(36,87,197,${strength.toFixed(3)})` : `rgba(180,60,60,${strength.toFixed(3)})`;
      const rect = svg("rect", { x: left + head * cell, y: top + layer * cell, width: cell, height: cell, fill: color });
      const tip = svg("title");
      tip.textContent = `layer ${layer}, head ${head}: AIE ${value.toExponential(2)}`;
      rect.append(tip);
      chart.append(rect);
    });
    if (layer % 5 === 0) {
      const label = svg("text", { x: left - 4, y: top + layer * cell + cell, "text-anchor": "end" });
      label.textContent = String(layer);
      chart.append(label);
    }
  });
  const caption = svg("text", { x: left, y: 11 });
  caption.textContent = "head →   (rows: layers)";
  chart.append(caption);
  return chart;
}

function legend(items) {
  const box = el("p", { class: "legend" });
  for (const [swatch, label] of items) box.append(el("span", { class: `swatch ${swatch}` }), label);
  return box;
}

function historyChart(history) {
  const losses = history.map((record) => record.loss);
  const top = Math.max(...losses, 1e-9);
  return [
    lineChart("training loss (scaled to its first value) and hold-out top-1 per epoch", [
      { points: history.map((record) => [record.epoch, record.loss / top]), color: "#2457c5" },
      { points: history.map((record) => [record.epoch, record.holdout_top1]), color: "#2f7d4f" },
    ], { xLabel: "epoch" }),
    legend([["a", `loss (÷ ${fmt(top, 2)})`], ["b", "hold-out top-1"]]),
  ];
}

// --- Vectors ---------------------------------------------------------------------------------------------------

function metricsText(info) {
  const metrics = info.metrics || {};
  if (typeof metrics.holdout_top1_after === "number") {
    return `hold-out top-1 ${fmt(metrics.holdout_top1_before, 2)} → ${fmt(metrics.holdout_top1_after, 2)}`;
  }
  if (typeof metrics.sweep_zero_shot_fv_top1 === "number") {
    return `zero-shot top-1 ${fmt(metrics.sweep_zero_shot_top1, 2)} → ${fmt(metrics.sweep_zero_shot_fv_top1, 2)}`;
  }
  return "";
}

function renderVectorTable() {
  const body = document.querySelector("#vector-table tbody");
  body.replaceChildren();
  const admin = Boolean(state.adminToken);
  for (const cell of document.querySelectorAll(".admin-only")) cell.hidden = !admin;
  for (const info of state.vectors) {
    const open = el("button", { type: "button", class: "link", text: info.name, "data-name": info.name });
    open.addEventListener("click", () => openVector(info.name));
    const row = el("tr", { "data-name": info.name },
      el("td", {}, open), el("td", { text: info.relation }), el("td", { class: "num", text: String(info.layer) }),
      el("td", { class: "num", text: fmt(info.norm, 2) }), el("td", { text: info.method }),
      el("td", { text: metricsText(info) }));
    if (admin) {
      const remove = el("button", { type: "button", text: "Delete", "aria-label": `Delete ${info.name}` });
      remove.addEventListener("click", () => deleteVector(info.name));
      row.append(el("td", {}, remove));
    }
    body.append(row);
  }
  $("vectors-state").textContent = `${state.vectors.length} vectors`;
}

async function openVector(name) {
  const info = state.vectors.find((item) => item.name === name);
  if (!info) return;
  showError($("vectors-error"), null);
  for (const row of document.querySelectorAll("#vector-table tr")) row.classList.toggle("selected", row.dataset.name === name);
  $("vector-detail").hidden = false;
  $("detail-title").textContent = name;
  $("detail-meta").textContent = `relation ${info.relation} · layer ${info.layer} · ${info.method} · norm ${fmt(info.norm, 2)}` +
    ` · d_model ${info.d_model} · created ${info.created}` + (metricsText(info) ? ` · ${metricsText(info)}` : "");
  const plots = $("detail-plots");
  plots.replaceChildren();
  const metrics = info.metrics || {};
  if (metrics.layer_sweep && Object.keys(metrics.layer_sweep).length) {
    const points = Object.entries(metrics.layer_sweep).map(([layer, top1]) => [Number(layer), top1]).sort((a, b) => a[0] - b[0]);
    plots.append(el("h3", { text: "Layer sweep: zero-shot top-1 with the vector at each layer" }),
      lineChart("layer sweep", [{ points, color: "#2457c5" }], { xLabel: "layer" }));
  }
  if (Array.isArray(metrics.aie) && metrics.aie.length) {
    plots.append(el("h3", { text: "Average indirect effect per head" }), heatmap("AIE heatmap", metrics.aie));
  }
  if (Array.isArray(metrics.history) && metrics.history.length) {
    plots.append(el("h3", { text: "Fine-tuning" }), ...historyChart(metrics.history));
  }
  if (!plots.children.length) plots.append(el("p", { class: "muted", text: "no layer sweep, AIE or training curve stored with this vector" }));
  const lens = $("lens-tokens");
  lens.replaceChildren(el("li", { class: "muted", text: "decoding…" }));
  try {
    const decoded = await api(`/vectors/${encodeURIComponent(name)}/decode?k=10`);
    lens.replaceChildren(...decoded.tokens.map((token) => el("li", { text: `${JSON.stringify(token.token)}  ${fmt(token.prob, 4)}` })));
  } catch (error) {
    lens.replaceChildren();
    showError($("vectors-error"), error);
  }
}

async function refreshVectors() {
  showError($("vectors-error"), null);
  try {
    await loadVectors();
  } catch (error) {
    showError($("vectors-error"), error);
  }
}

async function useAdminToken(event) {
  event.preventDefault();
  showError($("admin-error"), null);
  const token = $("admin-token").value;
  $("admin-token").value = "";  // kept in memory only, not in the form
  try {
    const listing = await api("/admin/vectors", { token });
    state.adminToken = token;
    $("admin-state").textContent = `admin: ${listing.vectors.length} vectors, ${listing.refused.length} refused files`;
    $("refused").replaceChildren(...listing.refused.map((item) => el("li", { text: `${item.file}: ${item.reason}` })));
    $("upload-form").hidden = false;
    renderVectorTable();
  } catch (error) {
    showError($("admin-error"), error);
  }
}

function forgetToken() {
  state.adminToken = null;
  $("upload-form").hidden = true;
  $("admin-state").textContent = "no admin token";
  $("refused").replaceChildren();
  renderVectorTable();
}

async function deleteVector(name) {
  if (!window.confirm(`Delete vector ${name}? Its file is removed from the server.`)) return;
  showError($("admin-error"), null);
  try {
    await api(`/admin/vectors/${encodeURIComponent(name)}`, { method: "DELETE", token: state.adminToken });
    $("admin-state").textContent = `deleted ${name}`;
    $("vector-detail").hidden = true;
    await loadVectors();
  } catch (error) {
    showError($("admin-error"), error);
  }
}

async function uploadVector(event) {
  event.preventDefault();
  showError($("admin-error"), null);
  const form = new FormData();
  const file = $("upload-file").files[0];
  if (file) form.append("file", file);
  form.append("name", $("upload-name").value.trim());
  form.append("layer", $("upload-layer").value.trim());
  if ($("upload-relation").value.trim()) form.append("relation", $("upload-relation").value.trim());
  try {
    const stored = await api("/admin/vectors", { method: "POST", form, token: state.adminToken });
    $("admin-state").textContent = `uploaded ${stored.name} (layer ${stored.layer})`;
    await loadVectors();
  } catch (error) {
    showError($("admin-error"), error);
  }
}

function setupVectors() {
  $("refresh-vectors").addEventListener("click", refreshVectors);
  $("admin-form").addEventListener("submit", useAdminToken);
  $("forget-token").addEventListener("click", forgetToken);
  $("upload-form").addEventListener("submit", uploadVector);
}

// --- Train ---------------------------------------------------------------------------------------------------------

function parseCsvLine(line) {
  const cells = [];
  let cell = "", quoted = false;
  for (let i = 0; i < line.length; i++) {
    const char = line[i];
    if (quoted) {
      if (char === '"' && line[i + 1] === '"') { cell += '"'; i++; }
      else if (char === '"') quoted = false;
      else cell += char;
    } else if (char === '"') quoted = true;
    else if (char === ",") { cells.push(cell); cell = ""; }
    else cell += char;
  }
  cells.push(cell);
  return cells.map((item) => item.trim());
}

/** Pairs from the text box: JSON ([{input, output}] or [[input, output]]) or two-column CSV. */
function parsePairs(text) {
  const trimmed = text.trim();
  if (!trimmed) return [];
  if (trimmed.startsWith("[")) {
    let items;
    try {
      items = JSON.parse(trimmed);
    } catch (error) {
      throw new ApiError(0, `pairs are not valid JSON: ${error.message}`, "pairs");
    }
    return items.map((item, index) => {
      if (Array.isArray(item) && item.length === 2) return { input: String(item[0]), output: String(item[1]) };
      if (item && typeof item === "object" && "input" in item && "output" in item) return { input: String(item.input), output: String(item.output) };
      if (item && typeof item === "object" && "positive" in item && "negative" in item) return { input: String(item.positive), output: String(item.negative) };
      throw new ApiError(0, `pair ${index} is neither {"input", "output"}, {"positive", "negative"} nor [first, second]`, `pairs.${index}`);
    });
  }
  const rows = trimmed.split(/\r?\n/).filter((line) => line.trim()).map(parseCsvLine);
  if (rows.length && rows[0][0].toLowerCase() === "input" && (rows[0][1] || "").toLowerCase() === "output") rows.shift();
  return rows.map((row, index) => {
    if (row.length !== 2) throw new ApiError(0, `CSV line ${index + 1} has ${row.length} columns; a pair has 2`, `pairs.${index}`);
    return { input: row[0], output: row[1] };
  });
}

function countPairs() {
  try {
    const pairs = parsePairs($("train-pairs").value);
    $("pairs-count").textContent = pairs.length ? `${pairs.length} pairs` : "";
  } catch (error) {
    $("pairs-count").textContent = error.message;
  }
}

function trainMethod() {
  return document.querySelector('input[name="method"]:checked').value;
}

const TRAIN_PATHS = { finetune: "/vectors/finetune", extract: "/vectors/extract", contrast: "/vectors/contrast" };

function trainRequest() {
  const body = { name: $("train-name").value.trim(), pairs: parsePairs($("train-pairs").value) };
  if (trainMethod() === "contrast") {  // each pair: a prompt showing the behaviour, then its opposite
    body.pairs = body.pairs.map((pair) => ({ positive: pair.input, negative: pair.output }));
    body.layer = optionalNumber("contrast-layer") ?? 12;
    body.method = $("contrast-method").value;
    body.normalize = $("contrast-normalize").value;
    const template = $("contrast-template").value.trim();
    if (template) body.template = template;
  } else if (trainMethod() === "finetune") {
    body.epochs = optionalNumber("train-epochs") ?? 160;
    body.patience = optionalNumber("train-patience") ?? 40;
    body.chat = $("train-chat").checked;
    body.lr = optionalNumber("train-lr") ?? 0.1;
    body.init = $("train-init").value;
    body.seed = optionalNumber("train-seed") ?? 0;
  } else {
    body.n_heads = optionalNumber("extract-heads") ?? 10;
    body.n_prompts = optionalNumber("extract-prompts") ?? 100;
    body.n_trials = optionalNumber("extract-trials") ?? 25;
    body.seed = optionalNumber("extract-seed") ?? 0;
  }
  return body;
}

const curve = [];

function drawCurve() {
  const box = $("train-curve");
  box.replaceChildren();
  if (curve.length) box.append(...historyChart(curve));
}

function showJob(job) {
  $("train-progress").value = job.progress;
  $("train-progress").setAttribute("aria-valuetext", `${Math.round(job.progress * 100)} %`);
  const detail = job.detail || {};
  let text = `${job.kind} ${job.id}: ${job.state}, ${job.phase}, ${Math.round(job.progress * 100)} %`;
  if (typeof detail.epoch === "number") {
    text += ` — epoch ${detail.epoch}${detail.epochs ? `/${detail.epochs}` : ""}, loss ${fmt(detail.loss, 4)}, hold-out top-1 ${fmt(detail.holdout_top1, 2)}`;
    if (typeof detail.holdout_chat_top1 === "number") text += `, as chat turns ${fmt(detail.holdout_chat_top1, 2)}`;
    if (!curve.length || curve[curve.length - 1].epoch !== detail.epoch) {
      curve.push({ epoch: detail.epoch, loss: detail.loss, holdout_top1: detail.holdout_top1 });
      drawCurve();
    }
  }
  $("train-state").textContent = text;
}

async function jobEnded(job) {
  state.job = null;
  $("train-start").disabled = false;
  $("train-cancel").disabled = true;
  showJob(job);
  if (job.state === "succeeded") {
    const result = job.result;
    if (result.metrics && Array.isArray(result.metrics.history)) {
      curve.splice(0, curve.length, ...result.metrics.history);
      drawCurve();
    }
    const metrics = result.metrics || {};
    let acc;
    if (typeof result.separation === "number") acc = `${result.method}: ${Math.round(result.separation * result.n_pairs)} of ${result.n_pairs} pairs differ its way`;
    else if (typeof metrics.holdout_top1_after === "number") acc = `hold-out top-1 ${fmt(metrics.holdout_top1_before, 2)} → ${fmt(metrics.holdout_top1_after, 2)}`;
    else acc = `zero-shot top-1 ${fmt(metrics.sweep_zero_shot_top1, 2)} → ${fmt(metrics.sweep_zero_shot_fv_top1, 2)}`;
    $("train-summary").textContent = `Saved vector ${result.vector} (layer ${result.layer}, norm ${fmt(result.norm, 2)}; ${acc}).`;
    $("train-use").dataset.name = result.vector;
    $("train-result").hidden = false;
    await loadVectors();
  } else if (job.state === "failed" && job.error) {
    showError($("train-error"), job.error);
  }
}

function watchJob(job) {
  const source = new EventSource(`/jobs/${encodeURIComponent(job.id)}/events`);
  state.job = { id: job.id, source };
  source.addEventListener("progress", (event) => showJob(JSON.parse(event.data)));
  source.addEventListener("end", (event) => {
    source.close();
    jobEnded(JSON.parse(event.data)).catch((error) => showError($("train-error"), error));
  });
  source.addEventListener("error", () => {  // the connection dropped: EventSource retries by itself
    if (source.readyState === EventSource.CLOSED && state.job) {
      api(`/jobs/${encodeURIComponent(job.id)}`).then((latest) => {
        if (["succeeded", "failed", "cancelled"].includes(latest.state)) return jobEnded(latest);
        return watchJob(latest);
      }).catch((error) => showError($("train-error"), error));
    }
  });
}

async function startTraining(event) {
  event.preventDefault();
  showError($("train-error"), null);
  $("train-result").hidden = true;
  curve.splice(0, curve.length);
  drawCurve();
  try {
    const body = trainRequest();
    const path = TRAIN_PATHS[trainMethod()];
    const job = await api(path, { method: "POST", body });
    $("train-start").disabled = true;
    $("train-cancel").disabled = false;
    showJob(job);
    watchJob(job);
  } catch (error) {
    showError($("train-error"), error);
  }
}

async function cancelTraining() {
  if (!state.job) return;
  try {
    await api(`/jobs/${encodeURIComponent(state.job.id)}`, { method: "DELETE" });
  } catch (error) {
    showError($("train-error"), error);
  }
}

function setupTrain() {
  $("train-form").addEventListener("submit", startTraining);
  $("train-cancel").addEventListener("click", cancelTraining);
  $("train-pairs").addEventListener("input", countPairs);
  $("train-file").addEventListener("change", async () => {
    const file = $("train-file").files[0];
    if (!file) return;
    $("train-pairs").value = await file.text();
    countPairs();
  });
  for (const radio of document.querySelectorAll('input[name="method"]')) {
    radio.addEventListener("change", () => {
      for (const method of Object.keys(TRAIN_PATHS)) $(`${method}-options`).hidden = method !== trainMethod();
    });
  }
  $("train-use").addEventListener("click", () => {
    setWeights({ [$("train-use").dataset.name]: 1 });
    showPanel($("tab-steer"));
    $("tab-steer").focus();
  });
}

// --- start ---------------------------------------------------------------------------------------------------------

async function connect() {
  const status = $("server-status");
  try {
    const ready = await fetch("/readyz").then((response) => response.json());
    if (ready.model) state.model = ready.model;
    status.textContent = ready.status ? `${ready.model} · ${ready.status}` : "model loading…";
    if (!ready.status) {
      setTimeout(connect, 2000);
      return;
    }
    await loadVectors();
  } catch (error) {
    status.textContent = `server: ${error.message}`;
    setTimeout(connect, 3000);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  panelTabs();
  setupSteer();
  setupAnalogies();
  setupVectors();
  setupTrain();
  renderSnippet();
  connect();
});
