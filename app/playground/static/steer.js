// fvsteer playground — The Steer panel: sliders, steered and baseline text side by side, chat mode.
import { $, ApiError, apiError, el, fmt, readEvents, showError, state, WEIGHT_LIMIT } from "./common.js";
import { setupTabs } from "./tabs.js";
import { holdout } from "./bank.js";
import { copySnippet, renderSnippet } from "./snippets.js";

export function renderSliders() {
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

export function filterSliders() {
  const query = $("vector-filter").value.trim().toLowerCase();
  for (const item of $("sliders").children) {
    const text = `${item.dataset.name} ${item.dataset.relation}`.toLowerCase();
    item.hidden = Boolean(query) && !text.includes(query);
  }
}

export function updateWeightedCount() {
  $("weighted-count").textContent = String(state.weights.size);
}

export function setWeights(weights) {
  state.weights.clear();
  for (const [name, weight] of Object.entries(weights)) {
    const clamped = Math.max(-WEIGHT_LIMIT, Math.min(WEIGHT_LIMIT, Math.round(weight * 20) / 20));
    if (clamped && state.vectors.some((info) => info.name === name)) state.weights.set(name, clamped);
  }
  renderSliders();
  renderSnippet();
}

export function optionalNumber(id) {
  const text = $(id).value.trim();
  return text === "" ? null : Number(text);
}

/** The POST /complete body the Steer form describes. */
export function steerRequest() {
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

export async function runSteer(event) {
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

export function showCompletion(done) {
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

export function setupSteer() {
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

