// fvsteer playground — The vectors, loaded once, shown by the Steer sliders and the Vectors table.
import { api, state } from "./common.js";
import { renderSliders } from "./steer.js";
import { renderSnippet } from "./snippets.js";
import { renderVectorTable } from "./vectors.js";

export function holdout(info) {
  const metrics = info.metrics || {};
  if (typeof metrics.holdout_top1_after === "number") return metrics.holdout_top1_after;
  if (typeof metrics.sweep_zero_shot_fv_top1 === "number") return metrics.sweep_zero_shot_fv_top1;
  return null;
}

export async function loadVectors() {
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

