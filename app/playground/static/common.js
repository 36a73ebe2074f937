// fvsteer playground — Helpers every panel shares: element lookup, the API call and its errors, number formatting,
// server-sent events (POST /complete over fetch; jobs over EventSource) and the state the panels share.

export const $ = (id) => document.getElementById(id);
export const WEIGHT_LIMIT = 2;

/** An error answer of the API: its envelope's message and the parameter it names. */
export class ApiError extends Error {
  constructor(status, message, param) {
    super(message);
    this.status = status;
    this.param = param;
  }
}

export async function apiError(response) {
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
export async function api(path, { method = "GET", body, token, form, signal } = {}) {
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

export function showError(box, error) {
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

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

export const fmt = (value, digits = 3) => (typeof value === "number" ? value.toFixed(digits).replace(/\.?0+$/, "") || "0" : "");


/** Read a text/event-stream response, calling onEvent(name, data) for each event. */
export async function readEvents(response, onEvent) {
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


export const state = {
  model: null,          // the served model's name (OpenAI base model id)
  vectors: [],          // VectorInfo of each vector, sorted by name
  weights: new Map(),   // vector name → weight in the Steer panel
  adminToken: null,     // in memory only
  snippetLang: "curl",
  controller: null,     // the running Steer request
  job: null,            // {id, source} of the Train panel's job
};

