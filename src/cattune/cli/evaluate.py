"""``cattune evaluate``: accuracy of a model on release-format files, beside each file's majority baseline."""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
from pathlib import Path
from typing import Any

from cattune.checkers import TASKS
from cattune.files import atomic_write_json

FLIP_PERTURBATIONS = {"stg": "cattune.data.stg", "stg_h": "cattune.data.stg_h"}
DTYPES = ("float32", "bfloat16")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="greedy-decode test files and report accuracy with 95%% intervals",
        description=(
            "Generate an answer for every item of each file (greedy, batched), judge it with the "
            "task's checker and print accuracy with a Wilson 95% interval beside the file's "
            "majority-class baseline. Per-item predictions are written as JSONL."
        ),
    )
    p.add_argument("--model", required=True, metavar="RUN_OR_MODEL",
                   help="embedded name (smollm2-135m), model folder, cattune run folder or LoRA adapter folder")
    p.add_argument("--data", required=True, nargs="+", metavar="FILE", help="release-format JSONL test file(s)")
    p.add_argument("--task", choices=TASKS, help="answer checker for every file (default: inferred per file)")
    p.add_argument("--json", metavar="OUT", help="write the results (with config, version, git revision) here")
    p.add_argument("--predictions-dir", metavar="DIR",
                   help="per-item predictions folder (default: OUT's name + '-predictions' beside --json, "
                        "else ./predictions)")
    p.add_argument("--batch-size", type=int, default=16, help="prompts per forward pass (default 16)")
    p.add_argument("--limit", type=int, metavar="N", help="evaluate only the first N items of each file")
    p.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="weights dtype (default float32; bfloat16 is faster on CPUs with AMX but can change answers)")
    p.add_argument("--flip-rate", choices=tuple(FLIP_PERTURBATIONS), metavar="{stg,stg_h}",
                   help="on the files of this task, also report how often the answer changes when only the "
                        "spurious values are redrawn (spurious flip rate)")
    p.add_argument("--same-length", action="store_true",
                   help="with --flip-rate: redraw each spurious value only among values printed with as many "
                        "characters, so every token keeps its position (flips then come from the values alone)")
    p.add_argument("--seed", type=int, default=0, help="seed of the flip-rate redraws (default 0)")
    p.set_defaults(func=run)


def _perturbation(kind: str, same_length: bool = False) -> Any:
    from cattune.cli.main import UserError

    module_name = FLIP_PERTURBATIONS[kind]
    function = "redraw_spurious_same_length" if same_length else "redraw_spurious"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise UserError(f"--flip-rate {kind} needs {module_name}.{function}, which this installation lacks") from None
    perturb = getattr(module, function, None)
    if perturb is None:
        raise UserError(f"--flip-rate {kind} needs {module_name}.{function}, which this installation lacks")
    return perturb


def _predictions_dir(args: argparse.Namespace) -> Path:
    if args.predictions_dir:
        return Path(args.predictions_dir)
    if args.json:
        out = Path(args.json)
        return out.with_name(f"{out.stem}-predictions")
    return Path("predictions")


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def run(args: argparse.Namespace) -> int:
    from cattune.cli.main import UserError
    from cattune.evaluate import evaluate_files, provenance
    from cattune.models import resolve_model

    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be >= 1, got {args.limit}")
    if args.same_length and not args.flip_rate:
        raise UserError("--same-length changes the flip-rate redraw: give --flip-rate stg or stg_h with it")
    perturb = _perturbation(args.flip_rate, args.same_length) if args.flip_rate else None
    import torch

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    predictions_dir = _predictions_dir(args)
    results = evaluate_files(args.model, args.data, task=args.task, batch_size=args.batch_size,
                             out_dir=predictions_dir, limit=args.limit, dtype=dtype,
                             flip_perturbations={args.flip_rate: perturb} if perturb else None,
                             seed=args.seed, progress=not getattr(args, "quiet", False))
    description = resolve_model(args.model).description
    print(f"model: {description}")
    for path, r in results.items():
        print(f"{path} ({r.task}, n={r.n}): accuracy {_pct(r.accuracy)}% [{_pct(r.ci_low)}, {_pct(r.ci_high)}]; "
              f"majority '{r.majority_label}' {_pct(r.majority_accuracy)}%"
              + (f"; {r.no_answer} without an answer" if r.no_answer else ""))
        if r.numeric_error and r.numeric_error["mean_absolute_error"] is not None:
            print(f"  mean absolute error {r.numeric_error['mean_absolute_error']:.2f} "
                  f"over the {r.numeric_error['numeric_answers']} answers that hold a number")
        if r.flip is not None:
            f = r.flip
            redraw = "spurious values redrawn" + (" keeping their printed lengths" if args.same_length else "")
            print(f"  flip rate {_pct(f.rate)}% [{_pct(f.ci_low)}, {_pct(f.ci_high)}] (n={f.n}, {redraw}, "
                  f"seed {f.seed}); per item: {f.per_item_path}")
        print(f"  predictions: {r.predictions_path}")
    if args.json:
        report = {
            "model": {"argument": args.model, "description": description},
            "config": {"task": args.task, "batch_size": args.batch_size, "limit": args.limit, "dtype": args.dtype,
                       "decoding": "greedy", "flip_rate": args.flip_rate, "same_length": args.same_length, "seed": args.seed},
            **provenance(),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "results": {path: r.to_json() for path, r in results.items()},
        }
        atomic_write_json(args.json, report)
        print(f"results: {args.json}")
    return 0
