"""PNG plots of a vector's extraction metrics: the AIE heatmap (layers × heads) and the layer-sweep curve.

Used by ``fvsteer eval --plot`` and the results report; matplotlib is imported only when drawing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from fvsteer_client import VectorInfo

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _number_grid(value: object) -> list[list[float]] | None:
    """``metrics.aie`` as a rectangular float grid, or None if it is not one."""
    if not isinstance(value, list) or not value or not all(isinstance(row, list) and row for row in value):
        return None
    if len({len(row) for row in value}) != 1 or not all(isinstance(x, int | float) for row in value for x in row):
        return None
    return [[float(x) for x in row] for row in value]


def _layer_scores(value: object) -> dict[int, float] | None:
    """``metrics.layer_sweep`` ({"layer": accuracy}) keyed by int, or None if it is not one."""
    if not isinstance(value, dict) or not value:
        return None
    try:
        return {int(layer): float(score) for layer, score in sorted(value.items(), key=lambda kv: int(kv[0]))}
    except (TypeError, ValueError):
        return None


def plot_vector(info: VectorInfo, directory: Path, warn: Callable[[str], None]) -> list[Path]:
    """``<name>_aie.png`` and ``<name>_layer_sweep.png`` from the vector's extraction metrics; what is missing
    (imported vectors have no metrics) is said on stderr and skipped."""
    aie = _number_grid(info.metrics.get("aie"))
    sweep = _layer_scores(info.metrics.get("layer_sweep"))
    if aie is None and sweep is None:
        warn(f"vector {info.name} ({info.method}) has no AIE or layer-sweep metrics; no plots written")
        return []
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # lazy: matplotlib is slow to import
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    if aie is None:
        warn(f"vector {info.name} has no AIE metrics; skipping the AIE heatmap")
    else:
        fig = Figure(figsize=(max(5.5, 0.35 * len(aie[0]) + 2), max(3.5, 0.25 * len(aie) + 1.5)), layout="tight")
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        limit = max((abs(x) for row in aie for x in row), default=0.0) or 1.0
        image = ax.imshow(aie, cmap="RdBu_r", vmin=-limit, vmax=limit, origin="lower", aspect="auto",
                          interpolation="nearest")
        fig.colorbar(image, ax=ax, label="average indirect effect")
        chosen = [(h[1], h[0]) for h in info.heads if isinstance(h, list | tuple) and len(h) >= 2]
        ax.scatter([c[0] for c in chosen], [c[1] for c in chosen], marker="s", s=60, facecolors="none",
                   edgecolors="black", linewidths=1.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title(f"{info.name}: AIE per head (\u25a1 = the {len(chosen)} chosen)")
        written.append(_save(fig, directory / f"{info.name}_aie.png"))
    if sweep is None:
        warn(f"vector {info.name} has no layer-sweep metrics; skipping the layer-sweep plot")
    else:
        fig = Figure(figsize=(6.0, 3.5), layout="tight")
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        layers, scores = list(sweep), list(sweep.values())
        ax.plot(layers, scores, marker="o", label="zero-shot + vector")
        baseline = info.metrics.get("sweep_zero_shot_top1")
        if isinstance(baseline, int | float) and math.isfinite(baseline):
            ax.axhline(baseline, color="grey", linestyle="--", label="zero-shot, no vector")
        ax.axvline(info.layer, color="tab:red", linestyle=":", label=f"chosen layer {info.layer}")
        if info.layer in sweep:
            ax.plot([info.layer], [sweep[info.layer]], marker="*", markersize=14, color="tab:red", linestyle="none")
        ax.set_ylim(-0.02, 1.02)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("layer")
        ax.set_ylabel("zero-shot top-1 (sweep pairs)")
        ax.set_title(f"{info.name}: layer sweep")
        ax.legend(fontsize="small")
        written.append(_save(fig, directory / f"{info.name}_layer_sweep.png"))
    return written


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=100)
    return path
