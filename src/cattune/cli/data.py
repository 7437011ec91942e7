"""``cattune data``: generate the synthetic benchmarks, prepare the downstream tasks and check annotation coverage."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cattune.data import stg, stg_h

SIZES = {stg.NAME: (1600, 400), stg_h.NAME: (3000, 1000)}  # the released sizes


def _shifts(value: str) -> tuple[str, ...]:
    if value.strip().lower() in ("", "none"):
        return ()
    return tuple(s.strip().replace("-", "_") for s in value.split(",") if s.strip())


def _add_generator(sub: argparse._SubParsersAction, name: str, module: Any, summary: str, description: str) -> argparse.ArgumentParser:
    train_size, test_size = SIZES[name]
    p = sub.add_parser(name, help=summary, description=description,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder (created if needed; files of the same names are replaced)")
    p.add_argument("--seed", type=int, default=42, help="random seed (default: 42); each split has its own stream")
    p.add_argument("--train-size", type=int, default=train_size, metavar="N",
                   help=f"training pool size (default: {train_size}, as released)")
    p.add_argument("--test-size", type=int, default=test_size, metavar="M",
                   help=f"size of every test split (default: {test_size}, as released)")
    p.add_argument("--extra-shifts", type=_shifts, default=module.EXTRA_SHIFTS, metavar="LIST",
                   help=f"comma-separated extra OOD tests to write, or 'none' (default: {','.join(module.EXTRA_SHIFTS)})")
    p.set_defaults(func=run_generate, generator=name)
    return p


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data",
        help="generate STG / STG_H data, prepare downstream tasks and check annotation coverage",
        description="Generate the synthetic benchmarks (stg, stg-h), name the non-causal spans of a released "
                    "STG / STG_H file (spans), prepare the downstream tasks from the released files (task) "
                    "and report how well a file's annotations map to token-level supervision for a "
                    "tokenizer (check).",
    )
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    parser.set_defaults(func=lambda args: parser.print_help() or 2)

    p = _add_generator(
        sub, stg.NAME, stg, "generate the Spurious Token Game",
        "Write DIR/train.jsonl, DIR/test_iid.jsonl, DIR/test_ood.jsonl, one DIR/test_ood_<shift>.jsonl\n"
        "per extra shift, and DIR/card.json + DIR/card.md (sizes, label balance, majority accuracy).\n\n"
        "Causes Smoking, Weight, Exercise (1..10); spurious Yellow fingers = int(1.5 x Smoking),\n"
        "Clothing size = int(Weight), Hormones = int(0.5 x Exercise) in train/IID; irrelevant Certain\n"
        "gene, Room size (1..10). Label: High Risk if 1.2 S + 0.7 W - E > 7.2, else Low Risk.\n"
        "test_ood: every value independent in 1..10 (as released).\n"
        "Extra shifts: anticorrelated (spurious = int(ratio x (11 - cause)): same values as in\n"
        "training, opposite direction), in_range (spurious independent of the cause but with its\n"
        "training values; separates shortcut use from Hormones values above 5, never seen in training).",
    )
    p.add_argument("--middle-risk", action="store_true",
                   help="label items whose float score equals 2.7 exactly 'Middle Risk', as the released "
                        "generator does (default: off, they are 'Low Risk' by the threshold rule)")

    p = _add_generator(
        sub, stg_h.NAME, stg_h, "generate STG_H (air-quality index)",
        "Write DIR/train.jsonl, DIR/test_iid.jsonl, DIR/test_ood.jsonl, one DIR/test_ood_<shift>.jsonl\n"
        "per extra shift, and DIR/card.json + DIR/card.md.\n\n"
        "Six noisy causes, five spurious variables (noisy linear functions of single causes in\n"
        "train/IID, narrow shifted uniforms in OOD), three irrelevant ones, one fixed template; the\n"
        "target is an integer AQI 0..100. Constants inferred from the released files (docs/DATA.md).",
    )
    p.add_argument("--label-from-printed", action="store_true",
                   help="compute the AQI from the printed (rounded) cause values, so the label is a function "
                        "of the prompt (default: from the unrounded values, as released; ~3%% differ by 1)")

    p = sub.add_parser(
        "check",
        help="report how a file's annotations map to token-level supervision",
        description="For each FILE: records, annotated records, relations, effect/cause spans found and "
                    "not found, supervised rows per record, truncation, loader repairs, and the worst "
                    "offending records (file:line and what was missed).",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="release-format JSONL file(s)")
    p.add_argument("--model", default="smollm2-135m",
                   help="model whose tokenizer is used (embedded name, folder or hub id; default: smollm2-135m)")
    p.add_argument("--max-length", type=int, default=256, metavar="N", help="training truncation length (default: 256)")
    p.add_argument("--keep-adjacent", action="store_true",
                   help="keep (cause, effect) pairs where the effect starts right after the cause "
                        "(the released code skips them; default: skip)")
    p.add_argument("--worst", type=int, default=5, metavar="K", help="offending records listed per file (default: 5)")
    p.add_argument("--json", metavar="OUT", help="also write the figures to this JSON file")
    p.set_defaults(func=run_check)

    p = sub.add_parser(
        "spans",
        help="add the named spurious and irrelevant spans to an STG / STG_H file (for the path constraint)",
        description="Write OUT: every record of FILE with a 'noncausal' field naming its spurious and irrelevant\n"
                    "spans, read from the prompt; the causes ('important') and the other fields are kept.\n"
                    "The released files lack the field, and the path constraint (path_weight > 0, the\n"
                    "recipes of docs/STUDY.md) needs it; 'cattune experiment' adds it by itself, 'cattune\n"
                    "train' reads it from the file. Generated files ('cattune data stg') already have it.\n\n"
                    "Example (the study's best recipe: the path constraint with position jitter, docs/STUDY.md):\n"
                    "  cattune data spans ../shared/data/cat-release/STG/spurious_token_game_train3_M.jsonl \\\n"
                    "      --out runs/data/stg_m_train.with_spans.jsonl\n"
                    "  cattune train --config configs/train_stg_smollm2_path_jitter.yaml output_dir=runs/stg-cat",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", metavar="FILE", help="release-format JSONL file of the benchmark")
    p.add_argument("--out", required=True, metavar="OUT", help="output JSONL file (replaced if it exists)")
    p.add_argument("--benchmark", choices=[stg.NAME, stg_h.NAME], default=stg.NAME,
                   help=f"whose prompt format FILE holds (default: {stg.NAME})")
    p.set_defaults(func=run_spans)

    from cattune.tasks import TASKS

    p = sub.add_parser(
        "task",
        help="prepare a downstream task (MAWPS, SVAMP, GSM8K, ASDiv, ARC-E) from the released files",
        description="Write DIR/train.jsonl, DIR/test_iid.jsonl, DIR/test_ood.jsonl (MAWPS, SVAMP), DIR/val.jsonl\n"
                    "(MAWPS, SVAMP, ARC-E) and DIR/card.json + DIR/card.md from the released files.\n\n"
                    "Prompts become '<question> Answer: ' with bare answers (ARC-E: options one per line,\n"
                    "letter answers). Test items whose question is in the training file, or earlier in the\n"
                    "same split, are removed. OOD for MAWPS is all of SVAMP and for SVAMP all of MAWPS.\n"
                    "Every split is shuffled with the seed, so its first N items are a random sample.\n"
                    "Details: docs/TASKS.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", choices=list(TASKS), metavar="NAME", help=f"task: {', '.join(TASKS)}")
    p.add_argument("--release", required=True, metavar="DIR",
                   help="the released CAT data folder (holds MAWPS/, SVAMP/, GSM8k/, ASDiv/, ARC_E/)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder (created if needed; files of the same names are replaced)")
    p.add_argument("--train-limit", type=int, metavar="N", help="keep a random N training items (default: all)")
    p.add_argument("--test-limit", type=int, metavar="M", help="keep a random M items of every test split (default: all)")
    p.add_argument("--seed", type=int, default=0, help="shuffling seed (default: 0)")
    p.set_defaults(func=run_task)


def run_generate(args: argparse.Namespace) -> int:
    from cattune.cli.main import UserError
    from cattune.data.benchmarks import BENCHMARKS, write_benchmark

    if args.train_size < 0 or args.test_size < 0:
        raise UserError("--train-size and --test-size must be non-negative")
    module = BENCHMARKS[args.generator].module
    unknown = [s for s in args.extra_shifts if s not in module.EXTRA_SHIFTS]
    if unknown:
        raise UserError(f"unknown --extra-shifts {', '.join(unknown)}; choose from {', '.join(module.EXTRA_SHIFTS)} or 'none'")
    options: dict[str, Any] = {"extra_shifts": args.extra_shifts}
    if args.generator == stg.NAME:
        options["middle_risk"] = args.middle_risk
    else:
        options["label_from_printed"] = args.label_from_printed
    result = write_benchmark(args.generator, args.out, seed=args.seed, train_size=args.train_size,
                             test_size=args.test_size, **options)
    print(f"{args.generator} (seed {args.seed}) -> {result.folder}")
    width = max(len(p.name) for p in result.files.values())
    for split, path in result.files.items():
        s = result.card["splits"][split]
        balance = ", ".join(f"{label}: {count}" for label, count in list(s["labels"].items())[:3])
        if s["distinct_labels"] > 3:
            balance += f", ... ({s['distinct_labels']} distinct)"
        majority = "-" if s["majority_accuracy"] is None else f"{100 * s['majority_accuracy']:.1f}%"
        print(f"  {path.name:<{width}}  {s['size']:>6}  majority {majority:>6} ({s['majority_label']})  {balance}")
    print(f"  card: {result.folder / 'card.json'} (notes in card.md)")
    return 0


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


COLUMNS = (
    ("file", lambda r: Path(r["file"]).name),
    ("records", lambda r: r["records"]),
    ("annotated", lambda r: r["annotated_records"]),
    ("relations", lambda r: r["relations"]),
    ("effects found/missing", lambda r: f"{r['effect_spans_found']}/{r['effect_spans_missing']}"),
    ("causes found/missing", lambda r: f"{r['cause_spans_found']}/{r['cause_spans_missing']}"),
    ("rows/record mean [min-max]", lambda r: f"{_fmt(r['rows_per_record']['mean'])} "
                                             f"[{_fmt(r['rows_per_record']['min'])}-{_fmt(r['rows_per_record']['max'])}]"),
    ("zero-row", lambda r: r["zero_row_records"]),
    ("truncated", lambda r: r["truncated_records"]),
    ("repairs", lambda r: sum(r["annotation_repairs"].values())),
)


def format_table(reports: Sequence[dict[str, Any]]) -> str:
    """The coverage reports as an aligned text table, one line per file."""
    header = [name for name, _ in COLUMNS]
    rows = [[_fmt(get(r)) for _, get in COLUMNS] for r in reports]
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in rows]
    return "\n".join(lines)


def _shorten(spans: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(json.dumps(s, ensure_ascii=False) for s in spans[:limit])
    return shown + (f" (+{len(spans) - limit} more)" if len(spans) > limit else "")


def run_check(args: argparse.Namespace) -> int:
    from cattune.coverage import coverage_report
    from cattune.files import atomic_write_json
    from cattune.models import load_tokenizer

    tokenizer = load_tokenizer(args.model)
    reports = [
        coverage_report(path, tokenizer, max_length=args.max_length, skip_adjacent=not args.keep_adjacent, worst=args.worst)
        for path in args.files
    ]
    print(f"annotation coverage with the {args.model} tokenizer (max length {args.max_length})")
    print(format_table(reports))
    for report in reports:
        if not report["worst"]:
            continue
        print(f"\n{Path(report['file']).name}: {report['records_with_problems']} record(s) with problems; worst:")
        for w in report["worst"]:
            detail = []
            if w["missing_effects"]:
                detail.append(f"effects not found: {_shorten(w['missing_effects'])}")
            if w["missing_causes"]:
                detail.append(f"causes not found: {_shorten(w['missing_causes'])}")
            print(f"  {w['where']}: {w['problem']} ({w['rows']} rows)" + (f"\n    {'; '.join(detail)}" if detail else ""))
    if args.json:
        path = atomic_write_json(args.json, {"model": args.model, "max_length": args.max_length,
                                             "skip_adjacent": not args.keep_adjacent, "files": reports})
        print(f"\nfigures written to {path}")
    return 0


def run_spans(args: argparse.Namespace) -> int:
    from cattune.cli.main import UserError
    from cattune.data.benchmarks import add_noncausal_spans
    from cattune.data.records import load_records, write_records

    if Path(args.out).resolve() == Path(args.file).resolve():
        raise UserError("--out must not be FILE itself; write the enriched copy elsewhere")
    records = add_noncausal_spans(load_records(args.file), args.benchmark)
    path = write_records(args.out, records)
    spurious = sum(len(r.extra["noncausal"]["spurious"]) for r in records)
    irrelevant = sum(len(r.extra["noncausal"]["irrelevant"]) for r in records)
    print(f"{args.file} -> {path}: {len(records)} records, {spurious} spurious and {irrelevant} irrelevant spans named")
    return 0


def run_task(args: argparse.Namespace) -> int:
    from cattune.cli.main import UserError
    from cattune.tasks import prepare_task

    for option, value in (("--train-limit", args.train_limit), ("--test-limit", args.test_limit)):
        if value is not None and value < 1:
            raise UserError(f"{option} must be at least 1")
    card = prepare_task(args.name, args.release, args.out, train_limit=args.train_limit,
                        test_limit=args.test_limit, seed=args.seed)
    out = Path(args.out)
    print(f"{card['task']}: {card['description']} -> {out}")
    print(f"  prompt '{card['prompt_format']}', checker {card['checker']['name']}, seed {card['seed']}")
    header = ("file", "source", "released", "in train", "repeated", "size", "annotated", "spans lost")
    rows = []
    for split, s in card["splits"].items():
        source = s["source"] if s["part"] == "all" else f"{s['source']} ({s['part']})"
        norm = s["normalisation"]
        rows.append((card["files"][split], source, str(s["released"]), str(s["removed_in_train"]),
                     str(s["removed_repeated"]), str(s["size"]), f"{s['annotated']} ({100 * s['annotated_share']:.0f}%)",
                     f"{norm['spans_lost']}/{norm['spans']}" if norm["spans"] else "-"))
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]
    print(("  " + "  ".join(h.ljust(w) for h, w in zip(header, widths))).rstrip())
    for row in rows:
        cells = (c.rjust(w) if 2 <= i <= 5 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
        print(("  " + "  ".join(cells)).rstrip())
    print("  (in train / repeated: test items removed because their question is in the training file / "
          "earlier in the split)")
    for note in card["notes"]:
        print(f"  - {note}")
    print(f"  card: {out / 'card.json'} (also card.md); supervised rows: cattune data check {out / 'train.jsonl'}")
    return 0
