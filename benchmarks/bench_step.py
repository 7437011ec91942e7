"""Training-step cost of CAT vs plain fine-tuning, SmolLM2-135M on CPU.

Variants, each a full step (forward, backward, optimizer step) on the same batch:

  plain        plain fine-tuning, SDPA attention (the baseline of every ratio)
  recompute    CAT with the row-recompute backend ("cat_sdpa": SDPA + the supervised rows' softmax)
  eager        CAT with the eager backend (every layer's [B, H, T, T] map kept, as released)
  plain-eager  plain fine-tuning with eager attention (what the eager CAT step adds to)

Every variant runs in its own subprocess so that its memory is its own. After loading and the
warm-up steps (which page in the memory-mapped weights and create the optimizer state) the
process's peak RSS (VmHWM) is reset through /proc/self/clear_refs: "peak" is the highest resident
memory during the timed steps (weights and optimizer state included). (Peak minus the resident
memory before the timed steps would isolate activations, but that baseline depends on how much
freed memory the allocator happened to return to the system, so it is not reported.) Times are the
median of --steps steps after --warmup steps. Rounds run the variants one after another
(never side by side) and repeat --rounds times; ratios are taken within a round and their median
reported, because the machine may be shared and absolute times drift.

The batch is synthetic: random token ids of exactly --length tokens (no padding unless
--pad-fraction), --rows-per-example supervised rows at the end of each example (the answer
rows) with --causes-per-row cause columns among the earlier tokens, as in STG.

    CATTUNE_HOME=/tmp/cathome python benchmarks/bench_step.py --batch 8 --length 128 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

VARIANTS = ("plain", "recompute", "eager", "plain-eager")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) so that loading the model does not count."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmHWM not found in /proc/self/status")


def run_variant(args: argparse.Namespace) -> dict:
    """One variant in this process: set up, warm up, time the steps, report peak memory."""
    import torch

    from cattune.attention import RowSupervision, capture_row_attention, prepare_model_for_cat
    from cattune.loss import reattention_loss
    from cattune.models import load_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    variant = args.child
    attn = "eager" if variant in ("eager", "plain-eager") else "sdpa"
    model = load_model(args.model, attn_implementation=attn)
    if args.mode == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(
            r=args.lora_r, lora_alpha=args.lora_r // 2, lora_dropout=0.1,
            target_modules=["q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "down_proj"]))
    if args.checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if variant in ("recompute", "eager"):
        prepare_model_for_cat(model, variant)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)

    gen = torch.Generator().manual_seed(args.seed)
    vocab = model.get_input_embeddings().weight.shape[0]
    ids = torch.randint(10, vocab, (args.batch, args.length), generator=gen)
    mask = torch.ones(args.batch, args.length, dtype=torch.long)
    n_pad = int(args.length * args.pad_fraction)
    per_example = []
    for b in range(args.batch):
        real = args.length - (n_pad * b // max(args.batch - 1, 1))  # a spread of right padding
        mask[b, real:] = 0
        rows = {}
        for row in range(real - 1 - args.rows_per_example, real - 1):
            rows[row] = torch.randperm(real - args.rows_per_example - 1, generator=gen)[: args.causes_per_row].tolist()
        per_example.append(rows)
    labels = ids.masked_fill(mask == 0, -100)
    supervision = RowSupervision.from_row_columns(per_example)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16)

    def step() -> None:
        with autocast:
            if variant in ("plain", "plain-eager"):
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            else:
                with capture_row_attention(model, supervision, backend=variant) as cap:
                    out = model(input_ids=ids, attention_mask=mask, labels=labels, **cap.forward_kwargs)
                    masses = cap.masses(out, mask)
                term = reattention_loss(*masses.row_statistics(), alpha=2.0, loss_type="div")
                loss = out.loss + term.loss
                # Like the plain step (and a Trainer), keep no reference to the outputs during the
                # backward: the logits alone are B x T x vocab floats.
                del out, masses, cap
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    process_peak_after_warmup = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    rss_before = _rss_bytes()
    if not _reset_peak_rss():
        raise SystemExit("cannot reset the peak RSS (/proc/self/clear_refs); peak memory would include loading")
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak = _peak_rss_bytes()
    return {"variant": variant, "step_s": statistics.median(times), "step_times_s": times,
            "peak_bytes": peak, "rss_before_steps_bytes": rss_before,
            "process_peak_bytes": max(process_peak_after_warmup, peak),
            "trainable_parameters": sum(p.numel() for p in params)}


def child_command(args: argparse.Namespace, variant: str) -> list[str]:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", variant]
    for name in ("model", "mode", "batch", "length", "steps", "warmup", "threads", "lora_r", "rows_per_example",
                 "causes_per_row", "pad_fraction", "seed"):
        cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    cmd += ["--bf16"] if args.bf16 else []
    cmd += ["--checkpointing"] if args.checkpointing else []
    return cmd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--mode", choices=("lora", "full"), default="lora")
    parser.add_argument("--lora-r", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--rows-per-example", type=int, default=2)
    parser.add_argument("--causes-per-row", type=int, default=12)
    parser.add_argument("--pad-fraction", type=float, default=0.0,
                        help="right padding of the most padded example, as a fraction of --length")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    parser.add_argument("--checkpointing", action="store_true", help="non-reentrant gradient checkpointing")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(run_variant(args)))
        return
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(variants) - set(VARIANTS)
    if unknown or "plain" not in variants:
        raise SystemExit(f"--variants must include 'plain' and name only {', '.join(VARIANTS)}")

    rounds, failures = [], {}
    for r in range(args.rounds):
        results = {}
        for variant in variants:
            proc = subprocess.run(child_command(args, variant), capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                # -9 is usually the kernel's out-of-memory killer; the other variants still count.
                failures.setdefault(variant, []).append({"round": r + 1, "returncode": proc.returncode,
                                                         "stderr_tail": proc.stderr[-2000:]})
                print(f"round {r + 1} {variant:12} FAILED with exit code {proc.returncode}"
                      f"{' (killed: out of memory?)' if proc.returncode == -9 else ''}", file=sys.stderr, flush=True)
                continue
            results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
            if not args.json:
                res = results[variant]
                print(f"round {r + 1} {variant:12} step {res['step_s']:.3f} s   "
                      f"peak {res['peak_bytes'] / 2**30:.2f} GiB", flush=True)
        rounds.append(results)
    if any("plain" not in rnd for rnd in rounds):
        raise SystemExit(f"the plain variant failed: {failures.get('plain')}")

    summary = {}
    for variant in variants:
        if any(variant not in rnd for rnd in rounds):
            continue
        summary[variant] = {
            "step_s": statistics.median(t for rnd in rounds for t in rnd[variant]["step_times_s"]),
            "peak_gib": statistics.median(rnd[variant]["peak_bytes"] for rnd in rounds) / 2**30,
            "time_ratio": statistics.median(rnd[variant]["step_s"] / rnd["plain"]["step_s"] for rnd in rounds),
            # The fastest step of each variant is the least disturbed by other processes.
            "time_ratio_fastest": statistics.median(
                min(rnd[variant]["step_times_s"]) / min(rnd["plain"]["step_times_s"]) for rnd in rounds),
            "peak_ratio": statistics.median(rnd[variant]["peak_bytes"] / rnd["plain"]["peak_bytes"] for rnd in rounds),
            "time_ratios_per_round": [rnd[variant]["step_s"] / rnd["plain"]["step_s"] for rnd in rounds],
        }
    config = {k: getattr(args, k) for k in ("model", "mode", "lora_r", "batch", "length", "rows_per_example",
                                            "causes_per_row", "pad_fraction", "steps", "warmup", "rounds",
                                            "threads", "bf16", "checkpointing")}
    config["trainable_parameters"] = rounds[0]["plain"]["trainable_parameters"]
    if args.json:
        print(json.dumps({"config": config, "summary": summary, "rounds": rounds, "failures": failures}))
        return
    print(f"\n{args.mode} ({config['trainable_parameters']:,} trainable), batch {args.batch} x {args.length}, "
          f"{args.threads} thread(s), bf16 {args.bf16}, checkpointing {args.checkpointing}, "
          f"{args.rounds} round(s) x {args.steps} steps")
    print("time ratios: median over rounds of (median step / plain median step) and of (fastest step / plain "
          "fastest step); peak: highest RSS during the timed steps")
    print(f"{'variant':12}{'step s':>9}{'x plain':>9}{'fastest x':>11}{'peak GiB':>10}{'x plain':>9}")
    for variant, s in summary.items():
        print(f"{variant:12}{s['step_s']:>9.3f}{s['time_ratio']:>9.3f}{s['time_ratio_fastest']:>11.3f}"
              f"{s['peak_gib']:>10.2f}{s['peak_ratio']:>9.3f}")
    for variant, failed in failures.items():
        print(f"{variant:12}failed in round(s) {[f['round'] for f in failed]} "
              f"(exit codes {[f['returncode'] for f in failed]}; -9: killed, usually out of memory)")


if __name__ == "__main__":
    main()
