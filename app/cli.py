"""The ``fvsteer`` command line: start the server, or talk to a running one through the SDK.

Only ``serve`` imports the server (and with it torch); every other command is a thin layer over
``fvsteer_client`` so that it starts fast and uses exactly the names of the HTTP API. tqdm (progress
bars) and matplotlib (``eval --plot``) are imported only by the commands that draw.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from fvsteer_client import (
    DEFAULT_BASE_URL,
    APIConnectionError,
    APIError,
    Client,
    Completion,
    CompletionOptions,
    EvaluateOptions,
    Evaluation,
    ExtractOptions,
    FinetuneOptions,
    FvsteerClientError,
    InvalidPairsError,
    Job,
    JobFailedError,
    RateLimitError,
    VectorInfo,
)
from pydantic import BaseModel

from app.errors import FvsteerError

Handler = Callable[[argparse.Namespace], int]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C


def _out(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


def _err(text: str) -> None:
    sys.stderr.write(text if text.endswith("\n") else text + "\n")


def _dump_json(value: BaseModel | Sequence[BaseModel]) -> None:
    if isinstance(value, BaseModel):
        data: Any = value.model_dump(mode="json")
    else:
        data = [v.model_dump(mode="json") for v in value]
    _out(json.dumps(data, indent=2, ensure_ascii=False))


def _fields(pairs: Sequence[tuple[str, object]]) -> str:
    """``key  value`` lines with the keys aligned, as ``vectors show`` prints them."""
    width = max(len(key) for key, _ in pairs)
    return "\n".join(f"{key.ljust(width)}  {'' if value is None else value}" for key, value in pairs)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Plain space-aligned columns: readable by people and splittable by ``awk``."""
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(header)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]]
    return "\n".join(lines)


def _fmt_norm(norm: float) -> str:
    return f"{norm:.4g}"


def _client(args: argparse.Namespace) -> Client:
    return Client(base_url=args.url, admin_token=args.token, timeout=args.timeout)


def _relation(text: str) -> tuple[str, float]:
    """``name=weight`` (weight may be negative); a bare ``name`` means weight 1."""
    name, sep, weight = text.partition("=")
    name = name.strip()
    if not name:
        raise argparse.ArgumentTypeError(f"expected name=weight, got {text!r}")
    if not sep:
        return name, 1.0
    try:
        return name, float(weight)
    except ValueError:
        raise argparse.ArgumentTypeError(f"weight of {name!r} is not a number: {weight!r}") from None


def _cmd_serve(args: argparse.Namespace) -> int:
    """Options become ``FVSTEER_*`` variables so that Settings stays the one place configuration is read."""
    for option, var in (("host", "FVSTEER_HOST"), ("port", "FVSTEER_PORT"), ("model", "FVSTEER_MODEL")):
        value = getattr(args, option)
        if value is not None:
            os.environ[var] = str(value)
    from app.server import run  # lazy: torch and the engine load only when serving
    from app.settings import Settings

    return run(Settings())


def _cmd_vectors_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.admin:
            return _print_admin_listing(client, as_json=args.json)
        vectors = client.list_vectors()
    if args.json:
        _dump_json(vectors)
        return EXIT_OK
    rows = [[v.name, v.relation or "", str(v.layer), _fmt_norm(v.norm), v.method, v.model] for v in vectors]
    _out(_table(["NAME", "RELATION", "LAYER", "NORM", "METHOD", "MODEL"], rows))
    return EXIT_OK


def _print_admin_listing(client: Client, *, as_json: bool) -> int:
    listing = client.admin.list_vectors()
    if as_json:
        _dump_json(listing)
        return EXIT_OK
    rows = [
        [v.name, v.relation or "", str(v.layer), _fmt_norm(v.norm), v.method, str(v.d_model), str(len(v.heads)),
         str(v.n_pairs if v.n_pairs is not None else ""), v.created]
        for v in listing.vectors
    ]
    _out(_table(["NAME", "RELATION", "LAYER", "NORM", "METHOD", "D_MODEL", "HEADS", "PAIRS", "CREATED"], rows))
    for refused in listing.refused:
        _err(f"refused: {refused.file}: {refused.reason}")
    return EXIT_OK


def _cmd_vectors_show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        info = client.get_vector(args.name)
    if args.json:
        _dump_json(info)
        return EXIT_OK
    _out(_fields(_vector_fields(info)))
    return EXIT_OK


def _format_heads(heads: Sequence[Any]) -> str:
    """``[[layer, head, aie], …]`` as ``L14.H3 (0.0123), …``."""
    parts = []
    for head in heads:
        if isinstance(head, list | tuple) and len(head) >= 2:
            aie = f" ({head[2]:.3g})" if len(head) > 2 and isinstance(head[2], int | float) else ""
            parts.append(f"L{head[0]}.H{head[1]}{aie}")
    return ", ".join(parts)


def _format_metric(value: Any) -> str:
    """Scalars as they are; big structures (the AIE matrix, the layer sweep) in brief: ``--json`` has them all."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return " ".join(f"{key}:{_format_metric(item)}" for key, item in value.items())
    if isinstance(value, list):
        if value and all(isinstance(row, list) for row in value):
            return f"[{len(value)}x{len(value[0])} matrix]"
        return f"[{len(value)} items]"
    return str(value)


def _vector_fields(info: VectorInfo) -> list[tuple[str, object]]:
    """``vectors show``: one line per field; heads and metrics condensed so a big model stays one screen."""
    data = info.model_dump(mode="json")
    lines: list[tuple[str, object]] = [(key, value) for key, value in data.items() if key not in ("heads", "metrics")]
    lines.append(("heads", _format_heads(info.heads) or "none"))
    if not info.metrics:
        lines.append(("metrics", "none"))
    lines.extend((f"metrics.{key}", _format_metric(value)) for key, value in info.metrics.items())
    return lines


def _cmd_vectors_import(args: argparse.Namespace) -> int:
    with _client(args) as client:
        meta = client.admin.upload_vector(args.file, name=args.name, layer=args.layer, relation=args.relation)
    if args.json:
        _dump_json(meta)
    else:
        _out(f"imported {meta.name}: layer {meta.layer}, norm {_fmt_norm(meta.norm)}, d_model {meta.d_model}")
    return EXIT_OK


def _cmd_vectors_delete(args: argparse.Namespace) -> int:
    with _client(args) as client:
        deleted = client.admin.delete_vector(args.name)
    _out(f"deleted {deleted.deleted}")
    return EXIT_OK


def _completion_options(args: argparse.Namespace) -> CompletionOptions:
    """Unset options stay None, which the SDK does not send, so the server's defaults stay the defaults."""
    return {
        "relations": dict(args.relations) if args.relations else None,
        "layer": args.layer,
        "scale": args.scale,
        "positions": args.positions,
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "seed": args.seed,
        "stop": list(args.stop) if args.stop else None,
        "return_baseline": True if args.baseline else None,
    }


def _print_completion(completion: Completion) -> None:
    if completion.baseline is None:
        _out(completion.text)
        return
    label = "steered" if completion.steering is not None else "unsteered"
    _out(f"--- {label} ({completion.finish_reason}) ---")
    _out(completion.text)
    _out(f"--- baseline ({completion.baseline.finish_reason}) ---")
    _out(completion.baseline.text)


def _cmd_complete(args: argparse.Namespace) -> int:
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if args.stream:
        return _stream_completion(args, prompt)
    with _client(args) as client:
        completion = client.complete(prompt, **_completion_options(args))
    if args.json:
        _dump_json(completion)
    else:
        _print_completion(completion)
    return EXIT_OK


def _stream_completion(args: argparse.Namespace, prompt: str) -> int:
    """Print the text as it is generated; the finish reason (and baseline, if asked) follow on stderr/stdout."""
    with _client(args) as client:
        final: Completion | None = None
        for chunk in client.complete(prompt, stream=True, **_completion_options(args)):
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
            final = chunk.completion or final
    sys.stdout.write("\n")
    if final is not None:
        _err(f"[{final.finish_reason}, {final.usage.completion_tokens} tokens]")
        if final.baseline is not None:
            _out(f"--- baseline ({final.baseline.finish_reason}) ---")
            _out(final.baseline.text)
    return EXIT_OK


def _cmd_vectors_decode(args: argparse.Namespace) -> int:
    with _client(args) as client:
        decoded = client.decode_vector(args.name, k=args.k)
    if args.json:
        _dump_json(decoded)
        return EXIT_OK
    # tokens are shown as JSON strings so that leading spaces and newlines stay visible
    rows = [[str(rank), json.dumps(t.token, ensure_ascii=False), f"{t.prob:.4f}"]
            for rank, t in enumerate(decoded.tokens, start=1)]
    _out(_table(["RANK", "TOKEN", "PROB"], rows))
    return EXIT_OK


# --- jobs: extraction, following progress, cancelling ------------------------------------------------------------


def _layer_choice(text: str) -> int | Literal["auto"]:
    if text == "auto":
        return "auto"
    try:
        layer = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a layer number, got {text!r}") from None
    if layer < 0:
        raise argparse.ArgumentTypeError(f"layer must be 0 or more, got {layer}")
    return layer


def _extraction_summary(job: Job) -> list[tuple[str, object]]:
    """The lines a person wants from a succeeded extraction; everything else is in ``--json``."""
    result = job.result or {}
    metrics = result.get("metrics") or {}
    lines: list[tuple[str, object]] = [("vector", result.get("vector")), ("layer", result.get("layer"))]
    if isinstance(result.get("norm"), int | float):
        lines.append(("norm", f"{result['norm']:.4g}"))
    lines.append(("heads", _format_heads(result.get("heads") or [])))
    before, after = metrics.get("sweep_zero_shot_top1"), metrics.get("sweep_zero_shot_fv_top1")
    if isinstance(before, int | float) and isinstance(after, int | float):
        n_sweep = metrics.get("n_sweep")
        lines.append(("sweep top-1", f"{before:.2f} zero-shot -> {after:.2f} with the vector"
                                     + (f" (n={n_sweep})" if n_sweep is not None else "")))
    phases = result.get("phase_seconds") or {}
    if phases:
        lines.append(("phase times", ", ".join(f"{phase} {seconds:.2f} s" for phase, seconds in phases.items())))
    cache = result.get("head_means_cache") or {}
    if cache:
        lines.append(("head-means cache", f"{'hit' if cache.get('hit') else 'miss'} ({cache.get('backend', '?')})"))
    return lines


def _job_fields(job: Job) -> list[tuple[str, object]]:
    lines: list[tuple[str, object]] = [
        ("id", job.id), ("kind", job.kind), ("state", job.state), ("phase", job.phase),
        ("progress", f"{job.progress:.0%}"), ("created", job.created), ("updated", job.updated),
    ]
    if job.error:
        lines.append(("error", f"{job.error.get('type')}: {job.error.get('message')}"))
    if job.state == "succeeded" and job.kind == "extract":
        lines.extend(_extraction_summary(job))
    elif job.state == "succeeded" and job.kind == "finetune":
        lines.extend(_finetune_summary(job))
    elif job.result:
        lines.append(("result", json.dumps(job.result, ensure_ascii=False)))
    return lines


def _detail_text(detail: dict[str, Any] | None) -> str:
    """A training epoch as ``epoch 12/40 loss 0.812 hold-out 0.75``; other details are not shown on the bar."""
    if not detail or "epoch" not in detail:
        return ""
    text = f"epoch {detail['epoch']:.0f}/{detail.get('epochs', '?')}"
    if isinstance(detail.get("loss"), int | float):
        text += f" loss {detail['loss']:.3f}"
    if isinstance(detail.get("holdout_top1"), int | float):
        text += f" hold-out {detail['holdout_top1']:.2f}"
    return text


def _follow(client: Client, job: Job) -> Job:
    """Wait for the job with a progress bar on stderr (its description is the phase); return the final job."""
    from tqdm import tqdm  # lazy: only commands that wait draw bars

    bar_format = "{desc}: {percentage:3.0f}%|{bar}| {elapsed}{postfix}"
    with tqdm(total=100, desc=job.phase, file=sys.stderr, bar_format=bar_format, dynamic_ncols=True) as bar:

        def show(snapshot: Job) -> None:
            bar.set_description_str(snapshot.phase, refresh=False)
            bar.set_postfix_str(_detail_text(snapshot.detail), refresh=False)
            bar.n = round(snapshot.progress * 100)
            bar.refresh()

        try:
            return client.wait_for_job(job, on_progress=show)
        except JobFailedError as exc:
            return exc.job


def _job_outcome(job: Job) -> int:
    """Exit status of a finished job; a job that did not succeed is also reported as an error on stderr."""
    if job.state == "succeeded":
        return EXIT_OK
    if job.state == "failed":
        error = job.error or {}
        _err(f"error: {error.get('type', 'job_failed')}: {error.get('message', f'job {job.id} failed')}")
    else:
        _err(f"error: {job.state}: job {job.id} ended {job.state} and saved nothing")
    return EXIT_ERROR


def _cancel_after_interrupt(client: Client, job: Job) -> int:
    """Ctrl-C while following a job: the user wants it gone, not running on unwatched."""
    try:
        cancelled = client.cancel_job(job)
    except FvsteerClientError as exc:
        _err(f"interrupted; could not cancel {job.id}: {exc}")
    else:
        _err(f"interrupted; cancelled {job.id}" if cancelled.state == "cancelled" else
             f"interrupted; asked {job.id} to stop (it was {cancelled.state})")
    return EXIT_INTERRUPTED


def _run_job(args: argparse.Namespace, submit: Callable[[Client], Job],
             summary: Callable[[Job], list[tuple[str, object]]]) -> int:
    """Submit a job, then follow it (or not, with --no-wait) and print its outcome."""
    with _client(args) as client:
        job = submit(client)
        if args.no_wait:
            if args.json:
                _dump_json(job)
            else:
                _out(job.id)
            return EXIT_OK
        try:  # from here on the job exists, so Ctrl-C must cancel it
            _err(f"submitted {job.id}")
            final = _follow(client, job)
        except KeyboardInterrupt:
            return _cancel_after_interrupt(client, job)
    if args.json:
        _dump_json(final)
    elif final.state == "succeeded":
        _out(_fields(summary(final)))
    return _job_outcome(final)


def _cmd_extract(args: argparse.Namespace) -> int:
    options: ExtractOptions = {
        "relation": args.relation, "pairs": args.pairs, "n_prompts": args.n_prompts, "n_trials": args.n_trials,
        "n_heads": args.n_heads, "layer": args.layer, "seed": args.seed,
    }
    return _run_job(args, lambda client: client.extract(args.name, **options), _extraction_summary)


def _finetune_summary(job: Job) -> list[tuple[str, object]]:
    result = job.result or {}
    metrics = result.get("metrics") or {}
    lines: list[tuple[str, object]] = [("vector", result.get("vector")), ("layer", result.get("layer"))]
    if isinstance(result.get("norm"), int | float):
        lines.append(("norm", f"{result['norm']:.4g}"))
    lines.append(("init", metrics.get("init")))
    before, after = metrics.get("holdout_top1_before"), metrics.get("holdout_top1_after")
    if isinstance(before, int | float) and isinstance(after, int | float):
        lines.append(("hold-out top-1", f"{before:.2f} at init -> {after:.2f} fine-tuned "
                                        f"(n={metrics.get('n_holdout')}, best epoch {metrics.get('best_epoch')})"))
    icl = metrics.get("holdout_icl_top1")
    if isinstance(icl, int | float):
        lines.append(("10-shot prompting", f"{icl:.2f} on the same hold-out pairs"))
    seconds = metrics.get("seconds") or {}
    if seconds:
        lines.append(("phase times", ", ".join(f"{phase} {value:.1f} s" for phase, value in seconds.items())))
    return lines


def _cmd_finetune(args: argparse.Namespace) -> int:
    options: FinetuneOptions = {
        "relation": args.relation, "pairs": args.pairs, "init": args.init, "init_vector": args.init_vector,
        "layer": args.layer, "epochs": args.epochs, "lr": args.lr, "l2": args.l2, "seed": args.seed,
    }
    if args.init_vector is not None and args.init is None:
        options["init"] = "vector"
    return _run_job(args, lambda client: client.finetune(args.name, **options), _finetune_summary)


def _cmd_jobs_show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.get_job(args.id)
    if args.json:
        _dump_json(job)
    else:
        _out(_fields(_job_fields(job)))
    return EXIT_OK


def _cmd_jobs_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.cancel_job(args.id)
    if args.json:
        _dump_json(job)
    elif job.state == "cancelled":
        _out(f"cancelled {job.id}")
    elif job.done:
        _out(f"{job.id} had already {job.state}; nothing to cancel")
    else:
        _out(f"cancelling {job.id} (it stops at its next step and saves nothing)")
    return EXIT_OK


# --- eval ---------------------------------------------------------------------------------------------------------

_SETTINGS = ("zero_shot", "zero_shot_fv", "icl", "icl_shuffled", "icl_shuffled_fv")
_SETTING_LABELS = {
    "zero_shot": "zero-shot", "zero_shot_fv": "zero-shot + vector", "icl": "in-context",
    "icl_shuffled": "shuffled in-context", "icl_shuffled_fv": "shuffled in-context + vector",
}


def _pairs_or_relation(value: str) -> EvaluateOptions:
    """An existing file is a pairs file; anything else names a shipped relation (the server knows which exist)."""
    return {"pairs": value} if Path(value).is_file() else {"relation": value}


def _evaluation_json(result: Evaluation) -> dict[str, Any]:
    """One flat object: each setting's top-1 under its name, top-3 apart."""
    accuracies = {name: getattr(result, name) for name in _SETTINGS}
    return {
        **{name: accuracy.top1 for name, accuracy in accuracies.items()},
        "n": result.n,
        "top3": {name: accuracy.top3 for name, accuracy in accuracies.items()},
        "n_dropped": result.n_dropped,
        "vector": result.vector,
        "layer": result.layer,
    }


def _cmd_eval(args: argparse.Namespace) -> int:
    options: EvaluateOptions = {**_pairs_or_relation(args.pairs), "seed": args.seed, "shots": args.shots}
    with _client(args) as client:
        result = client.evaluate(args.vector, **options)
        info = client.get_vector(args.vector) if args.plot is not None else None
    if args.json:
        _out(json.dumps(_evaluation_json(result), indent=2, ensure_ascii=False))
    else:
        _out(f"vector {result.vector} (layer {result.layer}) on {result.relation}: "
             f"{result.n} pairs, {result.n_dropped} dropped (wrong even with clean in-context prompts)")
        rows = [[_SETTING_LABELS[name], f"{getattr(result, name).top1:.3f}", f"{getattr(result, name).top3:.3f}"]
                for name in _SETTINGS]
        _out(_table(["SETTING", "TOP1", "TOP3"], rows))
    if info is not None:
        from app.plots import plot_vector  # lazy: matplotlib is slow to import

        for path in plot_vector(info, Path(args.plot), _err):
            _err(f"wrote {path}")
    return EXIT_OK


def _add_vectors_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    vectors = commands.add_parser("vectors", help="list, show, import and delete function vectors")
    sub = vectors.add_subparsers(dest="vectors_command", metavar="COMMAND", required=True)

    ls = sub.add_parser("list", help="vectors of the loaded model")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ls.add_argument("--admin", action="store_true", help="full metadata and refused files (needs the admin token)")
    ls.set_defaults(handler=_cmd_vectors_list)

    show = sub.add_parser("show", help="one vector's details")
    show.add_argument("name")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(handler=_cmd_vectors_show)

    imp = sub.add_parser("import", help="upload a safetensors vector (admin)")
    imp.add_argument("file", help="safetensors file holding a float tensor 'vector' of shape [d_model]")
    imp.add_argument("--name", required=True)
    imp.add_argument("--layer", required=True, type=int, help="decoder block whose output it is added to")
    imp.add_argument("--relation", help="relation it encodes (defaults to what the server chooses)")
    imp.add_argument("--json", action="store_true", help="print the stored metadata as JSON")
    imp.set_defaults(handler=_cmd_vectors_import)

    delete = sub.add_parser("delete", help="remove a vector from the registry (admin)")
    delete.add_argument("name")
    delete.set_defaults(handler=_cmd_vectors_delete)

    decode = sub.add_parser("decode", help="the tokens a vector promotes (logit lens)")
    decode.add_argument("name")
    decode.add_argument("-k", type=int, default=10, help="how many tokens (default %(default)s)")
    decode.add_argument("--json", action="store_true", help="print JSON")
    decode.set_defaults(handler=_cmd_vectors_decode)


def _add_jobs_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    extract = commands.add_parser(
        "extract", help="extract a function vector by causal mediation (a job; follows its progress)",
        description="Submit an extraction job and follow it with a progress bar on stderr. Ctrl-C cancels the job.",
    )
    extract.add_argument("name", help="name of the vector to create")
    source = extract.add_mutually_exclusive_group(required=True)
    source.add_argument("--relation", help="a shipped relation, e.g. antonym")
    source.add_argument("--pairs", metavar="FILE", help="your pairs: JSON list of {input, output} or 2-column CSV")
    extract.add_argument("--n-prompts", type=int, help="clean 10-shot prompts averaged for head means (server: 100)")
    extract.add_argument("--n-trials", type=int, help="corrupted prompts per head score (server: 25)")
    extract.add_argument("--n-heads", type=int, help="heads summed into the vector (server: 10)")
    extract.add_argument("--layer", type=_layer_choice, help="'auto' (sweep on validation pairs; default) or N")
    extract.add_argument("--seed", type=int, help="seeds the split, prompts and shuffles (server: 0)")
    extract.add_argument("--no-wait", action="store_true", help="print the job id and return at once")
    extract.add_argument("--json", action="store_true", help="print the final job (or, with --no-wait, the new one)")
    extract.set_defaults(handler=_cmd_extract)

    finetune = commands.add_parser(
        "finetune", help="fine-tune a function vector on pairs, the model frozen (a job; follows its progress)",
        description="Submit a fine-tuning job and follow it with a progress bar on stderr (epoch, loss, hold-out "
                    "accuracy). Ctrl-C cancels the job.",
    )
    finetune.add_argument("name", help="name of the vector to create")
    source = finetune.add_mutually_exclusive_group(required=True)
    source.add_argument("--relation", help="a shipped relation, e.g. antonym")
    source.add_argument("--pairs", metavar="FILE", help="your pairs: JSON list of {input, output} or 2-column CSV")
    finetune.add_argument("--init", choices=["mediation", "zero", "random", "vector"],
                          help="starting vector (server: mediation, the causal-mediation FV of the same pairs)")
    finetune.add_argument("--init-vector", metavar="NAME", help="start from this stored vector (implies --init vector)")
    finetune.add_argument("--layer", type=int, help="block the vector is trained at (server: ~30%% of the depth)")
    finetune.add_argument("--epochs", type=int, help="full-batch training steps (server default: the tuned value)")
    finetune.add_argument("--lr", type=float, help="Adam learning rate (server default: the tuned value)")
    finetune.add_argument("--l2", type=float, help="weight of ||v - v0||^2 in the loss (server: 0)")
    finetune.add_argument("--seed", type=int, help="seeds the split, the hold-out and a random init (server: 0)")
    finetune.add_argument("--no-wait", action="store_true", help="print the job id and return at once")
    finetune.add_argument("--json", action="store_true", help="print the final job (or, with --no-wait, the new one)")
    finetune.set_defaults(handler=_cmd_finetune)

    jobs = commands.add_parser("jobs", help="show or cancel a background job")
    sub = jobs.add_subparsers(dest="jobs_command", metavar="COMMAND", required=True)
    show = sub.add_parser("show", help="a job's state, progress and result")
    show.add_argument("id")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(handler=_cmd_jobs_show)
    cancel = sub.add_parser("cancel", help="ask a job to stop (it saves nothing)")
    cancel.add_argument("id")
    cancel.add_argument("--json", action="store_true", help="print the job as the server answered")
    cancel.set_defaults(handler=_cmd_jobs_cancel)


def _add_eval_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ev = commands.add_parser("eval", help="accuracy of a vector: zero-shot and in-context, without and with it")
    ev.add_argument("--vector", required=True, help="the vector to evaluate")
    ev.add_argument("--pairs", required=True, metavar="FILE_OR_RELATION",
                    help="a pairs file (JSON or CSV) if such a file exists, else a shipped relation name")
    ev.add_argument("--seed", type=int, help="seeds demonstrations and shuffles (server: 0)")
    ev.add_argument("--shots", type=int, help="demonstrations per in-context prompt (server: 10)")
    ev.add_argument("--json", action="store_true", help="print one JSON object (top-1 per setting, top3 apart)")
    ev.add_argument("--plot", metavar="DIR",
                    help="also write DIR/<vector>_aie.png and DIR/<vector>_layer_sweep.png from its extraction")
    ev.set_defaults(handler=_cmd_eval)


def _add_complete_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    complete = commands.add_parser("complete", help="a (steered) completion")
    complete.add_argument("prompt", help="the prompt; '-' reads it from stdin")
    complete.add_argument(
        "--relation", action="append", type=_relation, dest="relations", metavar="NAME=WEIGHT",
        help="steer with this vector (repeat to compose; weight defaults to 1, may be negative)",
    )
    complete.add_argument("--layer", type=int, help="add every vector at this layer instead of its own")
    complete.add_argument("--scale", type=float, help="multiplies the whole composite vector")
    complete.add_argument("--positions", choices=["fv", "all"], help="fv: last prompt token on; all: every token")
    complete.add_argument("--max-new-tokens", type=int)
    complete.add_argument("--temperature", type=float, help="0 = greedy")
    complete.add_argument("--top-p", type=float)
    complete.add_argument("--seed", type=int, help="makes sampling reproducible")
    complete.add_argument(
        "--stop", action="append", metavar="S", help="stop sequence (repeatable; in bash, $'\\n' is a newline)"
    )
    complete.add_argument("--baseline", action="store_true", help="also return the unsteered completion")
    output = complete.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the whole response as JSON")
    output.add_argument("--stream", action="store_true", help="print the text as it is generated")
    complete.set_defaults(handler=_cmd_complete)


# --- analogies and alignment -----------------------------------------------------------------------------------


def _cmd_analogy(args: argparse.Namespace) -> int:
    with _client(args) as client:
        result = client.analogy(args.a, args.b, args.c, choices=args.choices, max_new_tokens=args.max_new_tokens)
    if args.json:
        _dump_json(result)
        return EXIT_OK
    _out(f"{result.a} : {result.b} :: {result.c} : {result.answer}")
    rows = [[name, f"{weight:+.3f}", f"{result.scores[name]:.2f}"] for name, weight in result.top_relations(args.top)]
    _out(_table(["RELATION", "WEIGHT", "LOG P(B|A)"], rows))
    if result.choice_scores is not None and args.choices:
        _out(_table(["CHOICE", "LOG P"], [[choice, f"{score:.2f}"]
                                          for choice, score in zip(args.choices, result.choice_scores, strict=True)]))
    _err(f"combiner: {result.combiner}")
    return EXIT_OK


def _accuracy_cell(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "-"


def _cmd_analogies(args: argparse.Namespace) -> int:
    from app.analogy.offline import analogy_accuracy  # lazy: loads torch and the model
    from app.local import load_local

    result = analogy_accuracy(load_local(), Path(args.dataset), limit=args.limit, seed=args.seed, say=_err)
    if args.json:
        _out(json.dumps(result, indent=2))
        return EXIT_OK
    conditions = ["baseline", "softmax", "composite", "oracle"]
    rows = [[relation, str(counts["n"]), *(_accuracy_cell(counts.get(c)) for c in conditions)]
            for relation, counts in result["by_relation"].items()]
    rows.append(["overall", str(result["n"]), *(_accuracy_cell(result.get(c)) for c in conditions)])
    _out(_table(["RELATION", "N", "UNSTEERED", "SOFTMAX", "COMPOSITE", "ORACLE"], rows))
    return EXIT_OK


def _cmd_alignment(args: argparse.Namespace) -> int:
    from app.analogy.offline import alignment  # lazy: loads torch and the model
    from app.local import load_local

    result = alignment(load_local(), Path(args.semeval), say=_err)
    if args.json:
        _out(json.dumps(result, indent=2))
        return EXIT_OK
    rows = [[row["subcategory"], row["relation"], str(row["n"]), f"{row['finetuned']:+.3f}",
             f"{row['mediation']:+.3f}", f"{row['unsteered']:+.3f}"] for row in result["subcategories"]]
    mean = result["mean"]
    rows.append(["mean", "", "", f"{mean['finetuned']:+.3f}", f"{mean['mediation']:+.3f}", f"{mean['unsteered']:+.3f}"])
    _out(_table(["SUBCATEGORY", "RELATION", "N", "FINE-TUNED", "MEDIATION", "UNSTEERED"], rows))
    return EXIT_OK


def _add_analogy_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    analogy = commands.add_parser("analogy", help="solve A : B :: C : ? with the composite A:B implies (server)")
    analogy.add_argument("a")
    analogy.add_argument("b")
    analogy.add_argument("c")
    analogy.add_argument("--choices", nargs="+", metavar="D", help="candidate answers (else the answer is generated)")
    analogy.add_argument("--max-new-tokens", type=int, help="tokens generated without choices (server: 8)")
    analogy.add_argument("--top", type=int, default=5, help="relations shown (largest weights)")
    analogy.add_argument("--json", action="store_true", help="print the whole response as JSON")
    analogy.set_defaults(handler=_cmd_analogy)

    analogies = commands.add_parser(
        "analogies", help="analogy accuracy on a dataset: unsteered, composite, oracle (runs the model locally)",
        description="Loads the model and the registry (FVSTEER_* settings) in this process and scores every "
                    "problem: unsteered 'A : B :: C : D', the softmax and fitted composites at 'Q: C\nA:', and the "
                    "known relation's own vector (oracle).",
    )
    analogies.add_argument("--dataset", required=True, metavar="FILE",
                           help="UCLA VAT CSV (relation,A,B,C,D,D_foil) or multiple-choice JSONL")
    analogies.add_argument("--limit", type=int, help="score a seeded sample of this many problems")
    analogies.add_argument("--seed", type=int, default=0, help="seeds --limit's sample")
    analogies.add_argument("--json", action="store_true", help="print JSON (keys baseline, composite, n, ...)")
    analogies.set_defaults(handler=_cmd_analogies)

    align = commands.add_parser(
        "alignment", help="Spearman of vector scores with SemEval-2012 human ratings (runs the model locally)",
    )
    align.add_argument("--semeval", required=True, metavar="DIR", help="the semeval2012_task2 folder")
    align.add_argument("--json", action="store_true", help="print JSON")
    align.set_defaults(handler=_cmd_alignment)


def build_parser() -> argparse.ArgumentParser:
    """Built per call so that ``--url``/``--token`` defaults follow the environment at that moment."""
    parser = argparse.ArgumentParser(prog="fvsteer", description="Steer language models with function vectors.")
    parser.add_argument(
        "--url", default=os.environ.get("FVSTEER_URL") or DEFAULT_BASE_URL,
        help="server base URL (env FVSTEER_URL; default %(default)s)",
    )
    parser.add_argument(
        "--token", default=os.environ.get("FVSTEER_ADMIN_TOKEN") or None,
        help="admin token for admin commands (env FVSTEER_ADMIN_TOKEN)",
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the server")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser("serve", help="start the HTTP server")
    serve.add_argument("--host", help="bind address (env FVSTEER_HOST)")
    serve.add_argument("--port", type=int, help="bind port (env FVSTEER_PORT)")
    serve.add_argument("--model", help="HF id, local directory or .gguf file (env FVSTEER_MODEL)")
    serve.set_defaults(handler=_cmd_serve)

    _add_vectors_parser(commands)
    _add_complete_parser(commands)
    _add_jobs_parsers(commands)
    _add_eval_parser(commands)
    _add_analogy_parsers(commands)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    args = parser.parse_args(argv)
    relations: list[tuple[str, float]] = getattr(args, "relations", None) or []
    names = [name for name, _ in relations]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        parser.error(f"--relation given more than once for: {', '.join(repeated)}")
    return args


def _describe(exc: APIError) -> str:
    text = f"error: {exc.type}: {exc.message}"
    if isinstance(exc, RateLimitError) and exc.retry_after is not None:
        text += f" (retry after {exc.retry_after:g}s)"
    return text


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status (0 ok, 1 failed, 2 usage error)."""
    parser = build_parser()
    try:
        args = _parse(parser, argv)
    except SystemExit as exc:  # argparse exits on --help (0) and on usage errors (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    handler: Handler = args.handler
    try:
        return handler(args)
    except APIError as exc:
        _err(_describe(exc))
    except APIConnectionError as exc:
        _err(f"error: connection_error: {exc}")
    except InvalidPairsError as exc:
        _err(f"error: invalid_pairs: {exc}")
    except FvsteerError as exc:  # the offline commands raise the server's own errors
        _err(f"error: {exc.type}: {exc.message}")
    except OSError as exc:
        _err(f"error: io_error: {exc}")
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return EXIT_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
