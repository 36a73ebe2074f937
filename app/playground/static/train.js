// fvsteer playground — The Train panel: pairs in, a job (fine-tune, extract or contrast) with live progress, the new vector out.
import { $, api, ApiError, fmt, showError, state } from "./common.js";
import { showPanel } from "./tabs.js";
import { loadVectors } from "./bank.js";
import { optionalNumber, setWeights } from "./steer.js";
import { historyChart } from "./plots.js";

export function parseCsvLine(line) {
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
export function parsePairs(text) {
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

export function countPairs() {
  try {
    const pairs = parsePairs($("train-pairs").value);
    $("pairs-count").textContent = pairs.length ? `${pairs.length} pairs` : "";
  } catch (error) {
    $("pairs-count").textContent = error.message;
  }
}

export function trainMethod() {
  return document.querySelector('input[name="method"]:checked').value;
}

export const TRAIN_PATHS = { finetune: "/vectors/finetune", extract: "/vectors/extract", contrast: "/vectors/contrast" };

export function trainRequest() {
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

export const curve = [];

export function drawCurve() {
  const box = $("train-curve");
  box.replaceChildren();
  if (curve.length) box.append(...historyChart(curve));
}

export function showJob(job) {
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

export async function jobEnded(job) {
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

export function watchJob(job) {
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

export async function startTraining(event) {
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

export async function cancelTraining() {
  if (!state.job) return;
  try {
    await api(`/jobs/${encodeURIComponent(state.job.id)}`, { method: "DELETE" });
  } catch (error) {
    showError($("train-error"), error);
  }
}

export function setupTrain() {
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

