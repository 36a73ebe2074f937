// fvsteer playground — The Steer panel's request snippets (curl, Python SDK, OpenAI client).
import { $, state } from "./common.js";
import { steerRequest } from "./steer.js";

export function py(value, indent = "") {
  if (value === null || value === undefined) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value === "number") return String(value);
  if (typeof value === "string") return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map((item) => py(item, indent)).join(", ")}]`;
  return `{${Object.entries(value).map(([key, item]) => `${JSON.stringify(key)}: ${py(item, indent)}`).join(", ")}}`;
}

export function shellQuote(text) {
  return `'${text.replace(/'/g, "'\\''")}'`;
}

export function renderSnippet() {
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

export async function copySnippet() {
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

