"""``cattune annotate``: fill the ``important`` field of a dataset, or compare two annotations.

Modes (one parser):

  --in F --out F --examples E --endpoint URL --model NAME
      an assistant LLM behind an OpenAI-compatible endpoint annotates every item, prompted with
      human-written examples; the key is read from $OPENAI_API_KEY (see --api-key-env).
  --backend local --in F --out F --examples E [--model NAME]
      the same with a Hugging Face model run in-process (default the embedded SmolLM2-135M; a
      smoke test: its annotations are poor and validation drops most of them).
  --backend rules --causes A,B,C --in F --out F
      "Name: value" prompts annotated by rule: effect = the target, causes = the named fields.
  --compare A B
      agreement between two annotations of the same items, and supervised rows per item.

An interrupted run resumes from its cache when the same command is run again. Details:
docs/ANNOTATE.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from cattune.cli.main import UserError

BACKENDS = ("openai", "local", "rules")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "annotate",
        help="annotate a dataset with causal relations (assistant LLM, local model or rules), or compare two annotations",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    io = p.add_argument_group("input and output")
    io.add_argument("--in", dest="in_path", metavar="FILE", help="release-format JSONL to annotate")
    io.add_argument("--out", dest="out_path", metavar="FILE", help="annotated JSONL to write (atomically)")
    io.add_argument("--report", metavar="FILE",
                    help="JSON report: summary, failures with reasons, dropped spans (default OUT_STEM.annotate-report.json; "
                         "with --compare: per-item comparison, written only if given)")
    io.add_argument("--keep-failed", action="store_true",
                    help="write failed items to the output without an 'important' field (default: leave them out)")
    io.add_argument("--no-progress", action="store_true", help="no progress bar")

    be = p.add_argument_group("backend")
    be.add_argument("--backend", choices=BACKENDS, default="openai", help="who annotates (default: openai)")
    be.add_argument("--examples", metavar="FILE|NAME",
                    help="human-written examples (YAML/JSON) or a shipped set: stg, word_problems, gsm8k, arc")
    be.add_argument("--task", metavar="TEXT", help="one-line task description for the prompt (overrides the examples file's)")
    be.add_argument("--endpoint", metavar="URL",
                    help="OpenAI-compatible base URL, e.g. http://localhost:8000/v1 (default $OPENAI_BASE_URL or OpenAI's)")
    be.add_argument("--model", metavar="NAME",
                    help="model name at the endpoint; with --backend local a model folder, hub id or embedded name "
                         "(default smollm2-135m)")
    be.add_argument("--api-key-env", metavar="NAME", default="OPENAI_API_KEY",
                    help="environment variable holding the API key (default OPENAI_API_KEY); the key is never written anywhere")
    be.add_argument("--temperature", type=float, metavar="T", default=0.0, help="sampling temperature at the endpoint (default 0)")
    be.add_argument("--max-tokens", type=int, metavar="N", default=1024, help="reply length limit at the endpoint (default 1024)")
    be.add_argument("--max-new-tokens", type=int, metavar="N", default=256, help="reply length limit of --backend local (default 256)")
    be.add_argument("--max-reply-retries", type=int, metavar="N", default=2,
                    help="times an unusable reply is sent back with the reason before the item fails (default 2)")

    sc = p.add_argument_group("scale, faults and resuming (LLM backends)")
    sc.add_argument("--concurrency", type=int, metavar="N", default=8, help="items in flight at once (default 8; --backend local runs one)")
    sc.add_argument("--timeout", type=float, metavar="S", default=60.0, help="seconds before a request times out (default 60)")
    sc.add_argument("--max-attempts", type=int, metavar="N", default=6,
                    help="tries per request on timeouts, connection errors, 429 and 5xx (default 6)")
    sc.add_argument("--backoff-base", type=float, metavar="S", default=1.0, help="first backoff ceiling in seconds, doubled per retry (default 1)")
    sc.add_argument("--backoff-max", type=float, metavar="S", default=60.0, help="largest backoff ceiling in seconds (default 60)")
    sc.add_argument("--max-retry-after", type=float, metavar="S", default=300.0,
                    help="longest Retry-After honoured; longer fails the item (default 300 s)")
    sc.add_argument("--cache", metavar="FILE", help="resume cache (default OUT_STEM.annotate-cache.jsonl beside --out)")
    sc.add_argument("--no-cache", action="store_true", help="neither read nor write a cache")
    sc.add_argument("--retry-failed", action="store_true", help="ask again for items whose cached outcome is a failure")

    ru = p.add_argument_group("rules backend (Name: value prompts)")
    ru.add_argument("--causes", metavar="A,B,C", help="names of the causal fields, e.g. Smoking,Weight,Exercise")
    ru.add_argument("--effect-form", default="{target}", metavar="TEMPLATE",
                    help="the effect span, from the target (default '{target}'; STG_H: 'Answer: {target}')")
    ru.add_argument("--cause-form", choices=("field", "value"), default="field",
                    help="cause spans as 'Name: value' (default, STG) or the value as printed (STG_H)")

    cm = p.add_argument_group("compare")
    cm.add_argument("--compare", nargs=2, metavar=("A", "B"), help="compare annotation B with reference A")
    cm.add_argument("--tokenizer", default="smollm2-135m", metavar="NAME",
                    help="tokenizer for supervised-row counts (default smollm2-135m; 'none' to skip)")
    cm.add_argument("--max-length", type=int, metavar="N", default=256, help="token length cut for row counts (default 256)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.compare:
        return _compare(args)
    if not args.in_path or not args.out_path:
        raise UserError("--in FILE and --out FILE are required (or use --compare A B)")
    from cattune.annotate import AnnotateError, annotate_file

    annotator = _annotator(args)
    try:
        result = annotate_file(
            args.in_path, args.out_path, annotator,
            cache_path=args.cache, use_cache=_uses_cache(args), report_path=args.report,
            keep_failed=args.keep_failed, concurrency=args.concurrency, retry_failed=args.retry_failed,
            progress=not args.no_progress,
        )
    except AnnotateError as exc:
        raise UserError(str(exc)) from None
    _print_summary(args, result)
    return 0


def _uses_cache(args: argparse.Namespace) -> bool:
    # Rules are recomputed faster than a cache could be read.
    return not args.no_cache and args.backend != "rules"


def _annotator(args: argparse.Namespace):
    from cattune.annotate import AnnotateError, LLMAnnotator, RetryPolicy, RuleAnnotator, load_example_set

    if args.backend == "rules":
        if not args.causes:
            raise UserError("--backend rules needs --causes, e.g. --causes Smoking,Weight,Exercise")
        try:
            return RuleAnnotator(args.causes.split(","), effect_form=args.effect_form, cause_form=args.cause_form)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    if args.causes:
        raise UserError("--causes belongs to --backend rules")
    if not args.examples:
        raise UserError(f"--backend {args.backend} needs --examples FILE (or a shipped set: stg, word_problems, gsm8k, arc)")
    examples = load_example_set(args.examples)
    if args.max_reply_retries < 0:
        raise UserError("--max-reply-retries must be 0 or more")
    if args.backend == "local":
        from cattune.annotate.local import LocalChatBackend

        try:
            backend = LocalChatBackend(args.model or "smollm2-135m", max_new_tokens=args.max_new_tokens)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    else:
        from cattune.annotate.client import OpenAIChatBackend, api_key_from_env

        if not args.model:
            raise UserError("--model NAME is required: the model name the endpoint serves")
        if args.concurrency < 1:
            raise UserError("--concurrency must be at least 1")
        endpoint = args.endpoint or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        try:
            policy = RetryPolicy(args.max_attempts, args.backoff_base, args.backoff_max, args.max_retry_after)
            backend = OpenAIChatBackend(
                endpoint, args.model, api_key_from_env(args.api_key_env), timeout=args.timeout, policy=policy,
                temperature=args.temperature, max_tokens=args.max_tokens, concurrency=args.concurrency,
                api_key_env=args.api_key_env,
            )
        except (ValueError, AnnotateError) as exc:
            raise UserError(str(exc)) from None
        # One log line per HTTP request (httpx2/httpcore2 are the openai client's transport) would
        # bury the summary; the openai client's debug lines carry request details.
        for noisy in ("openai", "httpx2", "httpcore2"):
            logging.getLogger(noisy).setLevel(max(logging.getLogger().level, logging.WARNING))
    return LLMAnnotator(backend, examples, task=args.task, max_reply_retries=args.max_reply_retries)


def _print_summary(args: argparse.Namespace, result) -> None:
    from cattune.annotate.run import default_cache_path, default_report_path

    s = result.summary
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(s.failed_by_kind.items()))
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(s.dropped_by_reason.items()))
    lines = [
        f"items {s.items}: annotated {s.annotated}, failed {s.failed}" + (f" ({kinds})" if kinds else "")
        + (f"; {s.from_cache} prompts taken from the cache" if s.from_cache else ""),
        f"spans kept {s.spans_kept}, dropped {s.spans_dropped}" + (f" ({reasons})" if reasons else ""),
    ]
    if args.backend != "rules":
        lines.append(f"requests {s.usage.requests}, tokens used {s.usage.prompt_tokens} prompt + "
                     f"{s.usage.completion_tokens} completion"
                     + (f" (cached outcomes had cost {s.cached_usage.prompt_tokens} + {s.cached_usage.completion_tokens})"
                        if s.from_cache else ""))
    failures = [(r, o) for r, o in zip(result.records, result.outcomes) if o.status != "annotated"]
    for record, outcome in failures[:5]:
        lines.append(f"  failed: {record.source}:{record.line}: {outcome.reason}")
    if len(failures) > 5:
        lines.append(f"  ... and {len(failures) - 5} more failures in the report")
    kept = s.annotated + (s.failed if args.keep_failed else 0)
    lines.append(f"wrote {args.out_path} ({kept} records), report {args.report or default_report_path(args.out_path)}"
                 + (f", cache {args.cache or default_cache_path(args.out_path)}" if _uses_cache(args) else ""))
    print("\n".join(lines))


def _compare(args: argparse.Namespace) -> int:
    from cattune.annotate import compare_annotations, format_comparison
    from cattune.data.records import load_records
    from cattune.files import atomic_write_json

    if args.in_path or args.out_path:
        raise UserError("--compare A B takes no --in/--out")
    path_a, path_b = args.compare
    a, b = load_records(path_a), load_records(path_b)
    tokenizer = None
    if args.tokenizer.lower() != "none":
        from cattune.models import load_tokenizer

        tokenizer = load_tokenizer(args.tokenizer)
    report = compare_annotations(a, b, names=(path_a, path_b), tokenizer=tokenizer,
                                 tokenizer_name=None if tokenizer is None else args.tokenizer, max_length=args.max_length)
    if report.items_compared == 0:
        raise UserError(f"{path_a} and {path_b} have no item in common (items are matched by input and target)")
    print(format_comparison(report))
    if args.report:
        atomic_write_json(args.report, report.to_json(per_item=True))
        print(f"wrote {args.report}", file=sys.stderr)
    return 0
