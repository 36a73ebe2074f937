"""``extract``, ``finetune``, ``contrast`` and ``jobs show | cancel``: background jobs on a running server, through
the SDK.

A submitted job is followed with a tqdm bar on stderr (tqdm imported only then); Ctrl-C while following cancels
the job, since the user wants it gone, not running on unwatched. Summaries read the SDK's typed results.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from fvsteer_client import (
    Client,
    ContrastResult,
    ExtractOptions,
    ExtractResult,
    FinetuneOptions,
    FinetuneResult,
    FvsteerClientError,
    Job,
    JobFailedError,
)

from fvsteer_cli.output import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    dump_json,
    err,
    fields,
    fmt_norm,
    format_heads,
    out,
    phase_times,
)
from fvsteer_cli.parsing import Subcommands, add_pairs_source, add_wait_flags, layer_choice, sdk_options
from fvsteer_cli.remote import connect, request

Lines = list[tuple[str, object]]


def _vector_lines(result: ExtractResult | FinetuneResult | ContrastResult) -> Lines:
    return [("vector", result.vector), ("layer", result.layer), ("norm", fmt_norm(result.norm))]


def _extraction_summary(result: ExtractResult) -> Lines:
    """The lines a person wants from a succeeded extraction; everything else is in ``--json``."""
    metrics = result.metrics
    lines = [*_vector_lines(result), ("heads", format_heads(result.heads)),
             ("sweep top-1", f"{metrics.sweep_zero_shot_top1:.2f} zero-shot -> "
                             f"{metrics.sweep_zero_shot_fv_top1:.2f} with the vector (n={metrics.n_sweep})")]
    if result.phase_seconds:
        lines.append(("phase times", phase_times(result.phase_seconds, decimals=2)))
    cache = result.head_means_cache
    lines.append(("head-means cache", f"{'hit' if cache.hit else 'miss'} ({cache.backend})"))
    if result.scoring_cache is not None:
        scoring = result.scoring_cache
        lines.append(("scoring cache", f"AIE {'hit' if scoring.aie_hit else 'miss'}, layer sweep "
                                       f"{'hit' if scoring.layer_sweep_hit else 'miss'} ({scoring.backend})"))
    return lines


def _finetune_summary(result: FinetuneResult) -> Lines:
    """Hold-out accuracy at init and after training, next to 10-shot prompting on the same pairs."""
    metrics = result.metrics
    lines = [*_vector_lines(result), ("init", metrics.init),
             ("hold-out top-1", f"{metrics.holdout_top1_before:.2f} at init -> {metrics.holdout_top1_after:.2f} "
                                f"fine-tuned (n={metrics.n_holdout}, best epoch {metrics.best_epoch})"),
             ("10-shot prompting", f"{metrics.holdout_icl_top1:.2f} on the same hold-out pairs")]
    if metrics.seconds:
        lines.append(("phase times", phase_times(metrics.seconds, decimals=1)))
    return lines


def _contrast_summary(result: ContrastResult) -> Lines:
    return [*_vector_lines(result), ("method", f"{result.method} (normalize {result.normalize})"),
            ("separation", f"{result.separation:.2f} of {result.n_pairs} pairs differ the vector's way"),
            ("time", f"{result.seconds:.1f} s")]


def _summary(job: Job) -> Lines | None:
    """The summary of a succeeded job; None before that."""
    if job.state != "succeeded":
        return None
    if (extracted := job.extract_result) is not None:
        return _extraction_summary(extracted)
    if (finetuned := job.finetune_result) is not None:
        return _finetune_summary(finetuned)
    if (contrasted := job.contrast_result) is not None:
        return _contrast_summary(contrasted)
    return None


def _job_fields(job: Job) -> Lines:
    lines: Lines = [
        ("id", job.id), ("kind", job.kind), ("state", job.state), ("phase", job.phase),
        ("progress", f"{job.progress:.0%}"), ("created", job.created), ("updated", job.updated),
    ]
    if job.error:
        lines.append(("error", f"{job.error.get('type')}: {job.error.get('message')}"))
    summary = _summary(job)
    if summary is not None:
        lines.extend(summary)
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
        err(f"error: {error.get('type', 'job_failed')}: {error.get('message', f'job {job.id} failed')}")
    else:
        err(f"error: {job.state}: job {job.id} ended {job.state} and saved nothing")
    return EXIT_ERROR


def _cancel_after_interrupt(client: Client, job: Job) -> int:
    """Ctrl-C while following a job: the user wants it gone, not running on unwatched."""
    try:
        cancelled = client.cancel_job(job)
    except FvsteerClientError as exc:
        err(f"interrupted; could not cancel {job.id}: {exc}")
    else:
        err(f"interrupted; cancelled {job.id}" if cancelled.state == "cancelled" else
            f"interrupted; asked {job.id} to stop (it was {cancelled.state})")
    return EXIT_INTERRUPTED


def _run_job(args: argparse.Namespace, submit: Callable[[Client], Job]) -> int:
    """Submit a job, then follow it (or not, with --no-wait) and print its outcome."""
    with connect(args) as client:
        job = submit(client)
        if args.no_wait:
            if args.json:
                dump_json(job)
            else:
                out(job.id)
            return EXIT_OK
        try:  # from here on the job exists, so Ctrl-C must cancel it
            err(f"submitted {job.id}")
            final = _follow(client, job)
        except KeyboardInterrupt:
            return _cancel_after_interrupt(client, job)
    if args.json:
        dump_json(final)
    elif (summary := _summary(final)) is not None:
        out(fields(summary))
    return _job_outcome(final)


def _cmd_extract(args: argparse.Namespace) -> int:
    options = cast("ExtractOptions", sdk_options(args, ExtractOptions.__optional_keys__))
    return _run_job(args, lambda client: client.extract(args.name, **options))


def _cmd_finetune(args: argparse.Namespace) -> int:
    options = cast("FinetuneOptions", sdk_options(args, FinetuneOptions.__optional_keys__))
    if args.init_vector is not None and args.init is None:
        options["init"] = "vector"
    return _run_job(args, lambda client: client.finetune(args.name, **options))


def _contrast_pairs(path: str) -> list[tuple[str, str]]:
    """A JSON list of ``{"positive", "negative"}`` objects or ``[positive, negative]`` lists."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return [(item["positive"], item["negative"]) if isinstance(item, dict) else (item[0], item[1]) for item in data]


def _cmd_contrast(args: argparse.Namespace) -> int:
    try:
        pairs = _contrast_pairs(args.pairs)
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        err(f'error: --pairs {args.pairs}: expected a JSON list of {{"positive", "negative"}} objects: {exc!r}')
        return EXIT_USAGE
    return _run_job(args, lambda client: client.contrast(
        args.name, pairs, layer=args.layer, method=args.method, normalize=args.normalize, template=args.template,
        relation=args.relation))


def _cmd_show(args: argparse.Namespace) -> int:
    return request(args, lambda client: client.get_job(args.id), lambda job: fields(_job_fields(job)))


def _cancel_text(job: Job) -> str:
    if job.state == "cancelled":
        return f"cancelled {job.id}"
    if job.done:
        return f"{job.id} had already {job.state}; nothing to cancel"
    return f"cancelling {job.id} (it stops at its next step and saves nothing)"


def _cmd_cancel(args: argparse.Namespace) -> int:
    return request(args, lambda client: client.cancel_job(args.id), _cancel_text)


def _job_parser(commands: Subcommands, command: str, *, help: str, description: str) -> argparse.ArgumentParser:
    """A command that submits a job creating vector ``name`` from ``--relation | --pairs``."""
    parser = commands.add_parser(command, help=help, description=description)
    parser.add_argument("name", help="name of the vector to create")
    add_pairs_source(parser)
    return parser


def add_jobs_parsers(commands: Subcommands) -> None:
    """``extract`` and ``finetune`` (their flags are named as the SDK's options), and ``jobs show | cancel``."""
    extract = _job_parser(
        commands, "extract", help="extract a function vector by causal mediation (a job; follows its progress)",
        description="Submit an extraction job and follow it with a progress bar on stderr. Ctrl-C cancels the job.",
    )
    extract.add_argument("--n-prompts", type=int, help="clean 10-shot prompts averaged for head means (server: 100)")
    extract.add_argument("--n-trials", type=int, help="corrupted prompts per head score (server: 25)")
    extract.add_argument("--n-heads", type=int, help="heads summed into the vector (server: 10)")
    extract.add_argument("--layer", type=layer_choice, help="'auto' (sweep on validation pairs; default) or N")
    extract.add_argument("--seed", type=int, help="seeds the split, prompts and shuffles (server: 0)")
    add_wait_flags(extract)
    extract.set_defaults(handler=_cmd_extract)

    finetune = _job_parser(
        commands, "finetune",
        help="fine-tune a function vector on pairs, the model frozen (a job; follows its progress)",
        description="Submit a fine-tuning job and follow it with a progress bar on stderr (epoch, loss, hold-out "
                    "accuracy). Ctrl-C cancels the job.",
    )
    finetune.add_argument("--init", choices=["mediation", "zero", "random", "vector"],
                          help="starting vector (server: mediation, the causal-mediation FV of the same pairs)")
    finetune.add_argument("--init-vector", metavar="NAME", help="start from this stored vector (implies --init vector)")
    finetune.add_argument("--layer", type=int, help="block the vector is trained at (server: ~30%% of the depth)")
    finetune.add_argument("--epochs", type=int, help="full-batch training steps (server default: the tuned value)")
    finetune.add_argument("--lr", type=float, help="Adam learning rate (server default: the tuned value)")
    finetune.add_argument("--l2", type=float, help="weight of ||v - v0||^2 in the loss (server: 0)")
    finetune.add_argument("--seed", type=int, help="seeds the split, the hold-out and a random init (server: 0)")
    finetune.add_argument("--patience", type=int,
                          help="stop after this many epochs without a better hold-out score (server: the tuned value)")
    finetune.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                          help="also train on chat-rendered prompts so the vector steers chat turns (server: on)")
    add_wait_flags(finetune)
    finetune.set_defaults(handler=_cmd_finetune)

    contrast = commands.add_parser(
        "contrast", help="make a control vector from contrasting prompt pairs (a job; follows its progress)",
        description="Submit a contrastive job: the direction in the residual stream at --layer that separates each "
                    "pair's positive prompt from its negative one (CAA's mean difference, or repeng's PCA).")
    contrast.add_argument("name", help="name of the vector to create")
    contrast.add_argument("--pairs", required=True, metavar="FILE",
                          help='JSON list of {"positive": ..., "negative": ...} (or [positive, negative])')
    contrast.add_argument("--layer", required=True, type=int, help="block whose output it is taken from and added to")
    contrast.add_argument("--method", choices=["mean_diff", "pca"], default="mean_diff")
    contrast.add_argument("--normalize", choices=["none", "unit"], default="none")
    contrast.add_argument("--template", help="put each side where '{}' stands, e.g. 'Act as if you are {}.'")
    contrast.add_argument("--relation", help="what it encodes (default: the name)")
    add_wait_flags(contrast)
    contrast.set_defaults(handler=_cmd_contrast)

    jobs = commands.add_parser("jobs", help="show or cancel a background job")
    sub = jobs.add_subparsers(dest="jobs_command", metavar="COMMAND", required=True)
    show = sub.add_parser("show", help="a job's state, progress and result")
    show.add_argument("id")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(handler=_cmd_show)
    cancel = sub.add_parser("cancel", help="ask a job to stop (it saves nothing)")
    cancel.add_argument("id")
    cancel.add_argument("--json", action="store_true", help="print the job as the server answered")
    cancel.set_defaults(handler=_cmd_cancel)
