// fvsteer playground — The Vectors panel: the registry as a table, logit lens, metrics' plots, admin actions.
import { $, api, el, fmt, showError, state } from "./common.js";
import { loadVectors } from "./bank.js";
import { heatmap, historyChart, lineChart } from "./plots.js";

export function metricsText(info) {
  const metrics = info.metrics || {};
  if (typeof metrics.holdout_top1_after === "number") {
    return `hold-out top-1 ${fmt(metrics.holdout_top1_before, 2)} → ${fmt(metrics.holdout_top1_after, 2)}`;
  }
  if (typeof metrics.sweep_zero_shot_fv_top1 === "number") {
    return `zero-shot top-1 ${fmt(metrics.sweep_zero_shot_top1, 2)} → ${fmt(metrics.sweep_zero_shot_fv_top1, 2)}`;
  }
  return "";
}

export function renderVectorTable() {
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

export async function openVector(name) {
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

export async function refreshVectors() {
  showError($("vectors-error"), null);
  try {
    await loadVectors();
  } catch (error) {
    showError($("vectors-error"), error);
  }
}

export async function useAdminToken(event) {
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

export function forgetToken() {
  state.adminToken = null;
  $("upload-form").hidden = true;
  $("admin-state").textContent = "no admin token";
  $("refused").replaceChildren();
  renderVectorTable();
}

export async function deleteVector(name) {
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

export async function uploadVector(event) {
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

export function setupVectors() {
  $("refresh-vectors").addEventListener("click", refreshVectors);
  $("admin-form").addEventListener("submit", useAdminToken);
  $("forget-token").addEventListener("click", forgetToken);
  $("upload-form").addEventListener("submit", uploadVector);
}

