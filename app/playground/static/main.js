// fvsteer playground — The playground's entry point: connects to the server and sets up every panel.
import { $, state } from "./common.js";
import { panelTabs } from "./tabs.js";
import { loadVectors } from "./bank.js";
import { setupSteer } from "./steer.js";
import { renderSnippet } from "./snippets.js";
import { setupAnalogies } from "./analogies.js";
import { setupVectors } from "./vectors.js";
import { setupTrain } from "./train.js";

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
