// fvsteer playground — The Analogies panel: A : B :: C : ?, its scores and weights, loaded into Steer.
import { $, api, el, fmt, showError } from "./common.js";
import { showPanel } from "./tabs.js";
import { setWeights } from "./steer.js";
import { renderSnippet } from "./snippets.js";

export function bars(list, entries, { signed = false, best = null } = {}) {
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

export let lastWeights = null;

export async function solveAnalogy(event) {
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

export function loadAnalogyWeights() {
  if (!lastWeights) return;
  setWeights(lastWeights.weights);
  document.querySelector('input[name="mode"][value="raw"]').click();
  $("prompt").value = `Q: ${lastWeights.c}\nA:`;
  renderSnippet();
  showPanel($("tab-steer"));
  $("tab-steer").focus();
}

export function setupAnalogies() {
  $("analogy-form").addEventListener("submit", solveAnalogy);
  $("load-weights").addEventListener("click", loadAnalogyWeights);
}

