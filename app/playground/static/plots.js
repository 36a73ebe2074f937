// fvsteer playground — Plots as SVG, no library: bars, heatmaps, curves.
import { el, fmt } from "./common.js";

export const SVG = "http://www.w3.org/2000/svg";

export function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  return node;
}

/** A line chart of series [{label, points: [[x, y]], color}] with y in [yMin, yMax]. */
export function lineChart(title, series, { yMin = 0, yMax = 1, xLabel = "" } = {}) {
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
export function heatmap(title, matrix) {
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

export function legend(items) {
  const box = el("p", { class: "legend" });
  for (const [swatch, label] of items) box.append(el("span", { class: `swatch ${swatch}` }), label);
  return box;
}

export function historyChart(history) {
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

