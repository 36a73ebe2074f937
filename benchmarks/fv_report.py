"""Regenerate docs/results.md: function vectors extracted by causal mediation for the six core relations on the
embedded model, evaluated on held-out pairs, with the AIE heatmaps and layer-sweep curves.

It starts its own server (real HTTP, a throwaway registry), drives it with the SDK exactly as a user would
(extract → evaluate → plot), and writes the table and PNGs. Takes ~20 min on 2 CPU cores:

    .venv/bin/python benchmarks/fv_report.py [--relations antonym,capitalize] [--out docs]
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from fvsteer_client import Client, Evaluation, Job, ServiceUnavailableError

from fvsteer_cli.plots import plot_vector

ROOT = Path(__file__).resolve().parent.parent
# Sections written by other scripts or from other benchmarks' runs start with this; the report keeps them all.
SECTION_MARKER = "<!-- section: "
CORE = ["antonym", "country-capital", "present-past", "singular-plural", "english-french", "capitalize"]
COLUMNS = [("zero_shot", "zero-shot"), ("zero_shot_fv", "zero-shot + FV"), ("icl", "10-shot ICL"),
           ("icl_shuffled", "shuffled 10-shot"), ("icl_shuffled_fv", "shuffled 10-shot + FV")]


def start_server(vectors: Path, token: str) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "FVSTEER_PORT": str(port), "FVSTEER_VECTORS_DIR": str(vectors),
           "FVSTEER_ADMIN_TOKEN": token, "FVSTEER_JOBS_DIR": str(vectors / "jobs"), "FVSTEER_LOG_LEVEL": "WARNING"}
    process = subprocess.Popen([sys.executable, "-m", "app.server"], cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    with Client(url) as client:
        for _ in range(600):
            try:
                client.ready()
                return process, url
            except (ServiceUnavailableError, OSError, Exception):
                time.sleep(0.5)
    process.terminate()
    raise RuntimeError("server did not become ready")


def cell(evaluation: Evaluation, key: str) -> str:
    accuracy = getattr(evaluation, key)
    return f"{accuracy.top1:.2f} ({accuracy.top3:.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--relations", default=",".join(CORE))
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    relations = [name for name in args.relations.split(",") if name]
    images = args.out / "img"
    token = secrets.token_hex(8)
    rows: list[tuple[str, Job, Evaluation]] = []
    with tempfile.TemporaryDirectory() as workdir:
        process, url = start_server(Path(workdir), token)
        try:
            with Client(url, admin_token=token, timeout=600) as client:
                model = client.ready().model
                for relation in relations:
                    name = f"{relation}-cma"
                    started = time.perf_counter()
                    job = client.wait_for_job(client.extract(name, relation=relation, seed=args.seed))
                    evaluation = client.evaluate(name, relation=relation, seed=args.seed)
                    plot_vector(client.get_vector(name), images, lambda text: print(text, file=sys.stderr))
                    rows.append((relation, job, evaluation))
                    print(f"{relation}: layer {evaluation.layer}, zero-shot {evaluation.zero_shot.top1:.2f} -> "
                          f"{evaluation.zero_shot_fv.top1:.2f} with the FV ({time.perf_counter() - started:.0f} s)",
                          flush=True)
        finally:
            process.terminate()
            process.wait(timeout=30)
    write_report(args.out / "results.md", model, rows, relations, args.seed)


def write_report(path: Path, model: str, rows: list[tuple[str, Job, Evaluation]], relations: list[str],
                 seed: int) -> None:
    lines = [
        "# Results",
        "",
        f"Function vectors extracted by causal mediation (Todd et al., ICLR 2024) on **{model}** (CPU, float32),",
        "one per relation, with fvsteer's defaults: N = 100 clean 10-shot prompts for the head means, 25 corrupted",
        "prompts for the AIE, the top 10 heads, the layer swept on validation pairs (plus 24 training pairs asked",
        f"zero-shot), split seed {seed}. Evaluation on the held-out test split: first-token top-1 (top-3 in",
        "brackets). As in Todd et al., test items the model misses with clean 10-shot prompting are left out",
        "(`dropped`) and every column but 10-shot ICL is measured on the rest; 10-shot ICL is over all test items.",
        "",
        "| relation | layer | n | dropped | " + " | ".join(title for _, title in COLUMNS) + " |",
        "|---|---:|---:|---:|" + "---:|" * len(COLUMNS),
    ]
    for relation, _, evaluation in rows:
        lines.append(f"| {relation} | {evaluation.layer} | {evaluation.n} | {evaluation.n_dropped} | "
                     + " | ".join(cell(evaluation, key) for key, _ in COLUMNS) + " |")
    thin = [f"{relation} (n = {evaluation.n})" for relation, _, evaluation in rows if 0 < evaluation.n < 10]
    none = [relation for relation, _, evaluation in rows if evaluation.n == 0]
    lines += ["", "A row with few kept items says little" + (f": {', '.join(thin)}." if thin else "; none here.")]
    if none:
        lines += ["", f"No test item of {', '.join(none)} is answered by clean 10-shot prompting, so the columns "
                  "measured on kept items are empty (0.00) there: the model does not know these pairs."]
    lines += ["", "## Extraction", "",
              "Phase times are wall-clock seconds on the machine that ran the report, with whatever else it was doing.",
              "", "| relation | heads (layer.head) | phase seconds |", "|---|---|---|"]
    for relation, job, _ in rows:
        result = job.result or {}
        heads = ", ".join(f"{h[0]}.{h[1]}" for h in result.get("heads", []))
        phases = ", ".join(f"{k} {v:.1f}" for k, v in (result.get("phase_seconds") or {}).items())
        lines.append(f"| {relation} | {heads} | {phases} |")
    lines += ["", "## Plots", "", "AIE per head (chosen heads boxed); zero-shot accuracy by layer with the vector.", ""]
    for relation in relations:
        stem = f"img/{relation}-cma"
        lines.append(f"![{relation} AIE]({stem}_aie.png) ![{relation} sweep]({stem}_layer_sweep.png)")
    command = f".venv/bin/python benchmarks/fv_report.py --relations {','.join(relations)}"
    lines += ["", "## Regenerate", "", "```bash", command, "```", "",
              f"Generated {datetime.now(UTC).date().isoformat()}.", ""]
    # Head scoring (benchmarks/mediation.py, extract_repeat.py) and the fine-tuned / composite section
    # (benchmarks/finetune_report.py) come from other runs: keep them.
    old = path.read_text() if path.exists() else ""
    kept = old[old.index(SECTION_MARKER):] if SECTION_MARKER in old else ""
    path.write_text("\n".join(lines) + ("\n" + kept if kept else ""))


if __name__ == "__main__":
    main()
