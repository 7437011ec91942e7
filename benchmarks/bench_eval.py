"""Benchmark: batched evaluation vs one item at a time on the released STG OOD test with SmolLM2.

Three ways to produce the same greedy answers:

* ``batched``: :func:`cattune.evaluate.generate` with ``--batch-size`` prompts per forward pass.
* ``single``: the same function with one prompt per forward pass (KV cache, same stop rule, the
  prompts' shared prefix still computed once per call).
* ``hf_single``: ``model.generate(do_sample=False)`` per prompt, stopping at eos or a newline, the
  loop an evaluation script usually starts from.

The machine is shared and its load changes by the minute, so the ratio is measured in a paired
design: the first ``--paired-items`` prompts are cut into chunks of ``--batch-size``, and every
chunk is run by each path back to back (the order rotating from chunk to chunk); the speed-up is
the ratio of the summed times (and the median of the per-chunk ratios, which a burst of load
in one chunk does not move). The whole 400-item file is then evaluated batched, and the
one-at-a-time time for the whole file is extrapolated from the paired ratio (stated in the
output). Answers of every path are checked against the batched ones.

    python benchmarks/bench_eval.py --threads 1 --json bench_eval.json

Other files work too (``--data``, ``--task``, ``--max-new-tokens``); ``hf_single`` supports stop
strings but not GSM8K's stop pattern, so use ``--skip-hf`` there.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cat-release" / "STG" / "spurious_token_game_ood3_2.jsonl"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--paired-items", type=int, default=96, help="prompts timed by every path, chunk by chunk")
    parser.add_argument("--task", default="stg", help="answer checker (stop rule and token limit) of the data")
    parser.add_argument("--max-new-tokens", type=int, help="override the checker's token limit")
    parser.add_argument("--skip-full", action="store_true", help="do not time the whole file batched")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--skip-hf", action="store_true", help="do not time the model.generate loop")
    parser.add_argument("--json", type=Path, help="write the measurements here")
    args = parser.parse_args(argv)

    import torch
    import transformers

    from cattune.checkers import get_checker
    from cattune.data.records import load_records
    from cattune.evaluate import generate, git_revision
    from cattune.models import load_model, load_tokenizer

    load_before = os.getloadavg()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    model = load_model(args.model, dtype=dtype).eval()
    tokenizer = load_tokenizer(args.model)
    records = load_records(args.data)
    prompts = [r.input for r in records]
    checker = get_checker(args.task)
    max_new_tokens = args.max_new_tokens or checker.max_new_tokens
    kwargs = dict(max_new_tokens=max_new_tokens, stop_strings=checker.stop_strings,
                  stop_pattern=checker.stop_pattern, progress=False)

    def batched(chunk: list[str]) -> list[str]:
        return generate(model, tokenizer, chunk, batch_size=args.batch_size, **kwargs)

    def single(chunk: list[str]) -> list[str]:
        return generate(model, tokenizer, chunk, batch_size=1, **kwargs)

    def hf_single(chunk: list[str]) -> list[str]:
        out = []
        with torch.inference_mode():
            for prompt in chunk:
                ids = torch.tensor([tokenizer(prompt)["input_ids"]])
                gen = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                     max_new_tokens=max_new_tokens, stop_strings=list(checker.stop_strings) or None,
                                     tokenizer=tokenizer, pad_token_id=tokenizer.pad_token_id)
                out.append(tokenizer.decode(gen[0, ids.shape[1]:], skip_special_tokens=True))
        return out

    paths = {"batched": batched, "single": single}
    if not args.skip_hf:
        paths["hf_single"] = hf_single
    names = list(paths)
    for fn in paths.values():  # warm-up: first-call allocations
        fn(prompts[:2])

    paired = prompts[: args.paired_items]
    chunk_seconds: dict[str, list[float]] = {name: [] for name in names}
    chunk_cpu_seconds: dict[str, list[float]] = {name: [] for name in names}
    outputs: dict[str, list[str]] = {name: [] for name in names}
    for k, start in enumerate(range(0, len(paired), args.batch_size)):
        chunk = paired[start:start + args.batch_size]
        for name in names[k % len(names):] + names[:k % len(names)]:
            t0, c0 = time.perf_counter(), time.process_time()
            answers_of_chunk = paths[name](chunk)
            chunk_seconds[name].append(time.perf_counter() - t0)
            chunk_cpu_seconds[name].append(time.process_time() - c0)
            outputs[name].extend(answers_of_chunk)
        print(f"chunk {k + 1}: " + ", ".join(f"{n} {chunk_seconds[n][-1]:.1f} s ({chunk_cpu_seconds[n][-1]:.1f} s CPU)"
                                             for n in names), file=sys.stderr, flush=True)
    totals = {name: sum(chunk_seconds[name]) for name in names}
    speedup = {name: totals[name] / totals["batched"] for name in names if name != "batched"}
    # Per-chunk ratios: a burst of load from other processes hits one chunk, not the median.
    chunk_ratios = {name: [a / b for a, b in zip(chunk_seconds[name], chunk_seconds["batched"])]
                    for name in names if name != "batched"}
    median_speedup = {name: statistics.median(r) for name, r in chunk_ratios.items()}
    # CPU time counts the work done whatever else runs on the machine (with one thread it is
    # the cleanest measure; with several, threads spinning while descheduled inflate it).
    cpu_totals = {name: sum(chunk_cpu_seconds[name]) for name in names}
    cpu_speedup = {name: cpu_totals[name] / cpu_totals["batched"] for name in names if name != "batched"}
    answers = {name: [checker.extract(g) for g in outputs[name]] for name in names}
    agreement = {name: sum(a == b for a, b in zip(answers[name], answers["batched"])) / len(paired)
                 for name in names if name != "batched"}

    n_all = len(prompts)
    full_seconds = full_cpu_seconds = accuracy = None
    if not args.skip_full:
        t0, c0 = time.perf_counter(), time.process_time()
        full = batched(prompts)
        full_seconds, full_cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
        accuracy = sum(checker.is_correct(g, r.target) for g, r in zip(full, records)) / n_all
    new_tokens = [len(tokenizer(g, add_special_tokens=False)["input_ids"]) for g in outputs["batched"]]
    result = {
        "data": str(args.data),
        "n": n_all,
        "model": args.model,
        "task": checker.name,
        "max_new_tokens": max_new_tokens,
        "dtype": args.dtype,
        "batch_size": args.batch_size,
        "paired_items": len(paired),
        "mean_new_tokens": statistics.mean(new_tokens),
        "paired_seconds": totals,
        "paired_chunk_seconds": chunk_seconds,
        "speedup_of_batched_over": speedup,
        "speedup_per_chunk": chunk_ratios,
        "median_chunk_speedup_of_batched_over": median_speedup,
        "paired_cpu_seconds": cpu_totals,
        "paired_chunk_cpu_seconds": chunk_cpu_seconds,
        "cpu_time_speedup_of_batched_over": cpu_speedup,
        "answer_agreement_with_batched": agreement,
        "file_seconds_batched_measured": full_seconds,
        "file_cpu_seconds_batched_measured": full_cpu_seconds,
        "file_seconds_extrapolated": {name: full_seconds * r for name, r in speedup.items()} if full_seconds else None,
        "batched_accuracy": accuracy,
        "torch_threads": torch.get_num_threads(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "cpu": platform.processor() or platform.machine(),
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "git_revision": git_revision(),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
