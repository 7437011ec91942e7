"""Re-Attention loss: the released-style per-row Python loop vs cattune's vectorised path.

Both take the same batch: the dense mean attention A [B, T, T] (mean over layers and heads) of a
right-padded batch. The loop reads the method's dense matrix M [B, T, T] the way the released
code stores it; the vectorised path reads the same supervision in its sparse form (rows and
cause columns, built once per example at encoding time) and runs row gather -> masses ->
reattention_loss. Times are medians of --repeats runs after --warmup runs, forward alone and
forward + backward. Taking the gradient with respect to the dense A costs both paths the writing
of a dense [B, T, T] gradient; a training step never has that tensor (the recompute backend hands
over only the supervised rows), so forward + backward is also timed from the gathered rows.

    python benchmarks/bench_loss.py --batch 16 --length 256 --rows-per-example 2 --causes-per-row 12
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from cattune.attention import RowSupervision, row_masses
from cattune.loss import reattention_loss


def released_style_loss(attention: torch.Tensor, matrix: torch.Tensor, key_valid: torch.Tensor,
                        alpha: float, loss_type: str) -> torch.Tensor:
    """A faithful transcription of the released loop: every example, every row, tensor ops per row."""
    batch, length = matrix.shape[:2]
    losses = []
    for b in range(batch):
        for i in range(length):
            row = matrix[b, i, : i + 1] & key_valid[b, : i + 1]
            allowed = key_valid[b, : i + 1]
            causal_idx = torch.nonzero(row).squeeze(-1)
            other_idx = torch.nonzero(allowed & ~row).squeeze(-1)
            if len(causal_idx) == 0 or len(other_idx) == 0:
                continue
            a_c = attention[b, i, causal_idx].mean()
            a_n = attention[b, i, other_idx].mean()
            ratio = a_c / a_n
            if ratio < alpha:
                if loss_type == "div":
                    losses.append(-torch.log(1 + a_c) / torch.log(1 + a_n))
                elif loss_type == "div2":
                    losses.append(-torch.log(1 + a_c / (1 + a_n)))
                elif loss_type == "nll":
                    losses.append(-a_c / (a_c + a_n))
                else:
                    losses.append(alpha - ratio)
            else:
                losses.append(torch.zeros((), dtype=attention.dtype))
    return torch.stack(losses).mean() if losses else attention.sum() * 0.0


def vectorised_loss(attention: torch.Tensor, supervision: RowSupervision, key_valid: torch.Tensor,
                    alpha: float, loss_type: str) -> torch.Tensor:
    rows = supervision.rows
    row_probabilities = attention[rows[:, 0], rows[:, 1]][:, None, :]  # [R, 1 head, T]
    masses = row_masses([row_probabilities], supervision, key_valid)
    return reattention_loss(*masses.row_statistics(), alpha=alpha, loss_type=loss_type).loss


def loss_from_rows(row_probabilities: torch.Tensor, supervision: RowSupervision, key_valid: torch.Tensor,
                   alpha: float, loss_type: str) -> torch.Tensor:
    """The loss from the supervised rows' probabilities [R, H, T]: what a training step runs (the
    recompute backend hands over these rows; no dense map exists, so none receives a gradient)."""
    masses = row_masses([row_probabilities], supervision, key_valid)
    return reattention_loss(*masses.row_statistics(), alpha=alpha, loss_type=loss_type).loss


def make_batch(batch: int, length: int, rows_per_example: int, causes_per_row: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    key_valid = torch.ones(batch, length, dtype=torch.bool)
    lengths = torch.randint(length * 3 // 4, length + 1, (batch,), generator=gen)
    for b, n in enumerate(lengths.tolist()):
        key_valid[b, n:] = False  # right padding
    logits = torch.randn(batch, length, length, generator=gen)
    allowed = torch.tril(torch.ones(length, length, dtype=torch.bool))[None] & key_valid[:, None, :]
    attention = torch.softmax(logits.masked_fill(~allowed, float("-inf")), -1).nan_to_num(0.0)
    matrix = torch.zeros(batch, length, length, dtype=torch.bool)
    per_example = []
    for b, n in enumerate(lengths.tolist()):
        # Answer rows near the end of the real tokens, causes among the prompt tokens (as in STG).
        rows = {}
        for i in range(n - 1 - rows_per_example, n - 1):
            cols = torch.randperm(n - rows_per_example - 1, generator=gen)[:causes_per_row].tolist()
            matrix[b, i, cols] = True
            rows[i] = cols
        per_example.append(rows)
    return attention, matrix, key_valid, RowSupervision.from_row_columns(per_example)


def timed(fn, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--rows-per-example", type=int, default=2)
    parser.add_argument("--causes-per-row", type=int, default=12)
    parser.add_argument("--loss-type", default="div")
    parser.add_argument("--alpha", type=float, default=2.0)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    attention, matrix, key_valid, supervision = make_batch(
        args.batch, args.length, args.rows_per_example, args.causes_per_row, args.seed)
    attention.requires_grad_(True)
    kw = dict(alpha=args.alpha, loss_type=args.loss_type)

    loop_value = released_style_loss(attention, matrix, key_valid, **kw)
    ours_value = vectorised_loss(attention, supervision, key_valid, **kw)
    difference = abs(loop_value.item() - ours_value.item())
    if difference > 1e-5:
        raise SystemExit(f"the two paths disagree: {loop_value.item()} vs {ours_value.item()}")

    def backward(fn):
        def run():
            attention.grad = None
            fn().backward()
        return run

    with torch.no_grad():
        loop_fwd = timed(lambda: released_style_loss(attention, matrix, key_valid, **kw), args.warmup, args.repeats)
        ours_fwd = timed(lambda: vectorised_loss(attention, supervision, key_valid, **kw), args.warmup, args.repeats)
    loop_fb = timed(backward(lambda: released_style_loss(attention, matrix, key_valid, **kw)),
                    args.warmup, args.repeats)
    ours_fb = timed(backward(lambda: vectorised_loss(attention, supervision, key_valid, **kw)),
                    args.warmup, args.repeats)
    rows = supervision.rows
    row_probabilities = attention.detach()[rows[:, 0], rows[:, 1]][:, None, :].requires_grad_(True)

    def rows_backward():
        row_probabilities.grad = None
        loss_from_rows(row_probabilities, supervision, key_valid, **kw).backward()

    rows_fb = timed(rows_backward, args.warmup, args.repeats)

    result = {
        "batch": args.batch, "length": args.length, "rows": len(supervision),
        "cause_columns": int(supervision.column_sets["cause"].shape[0]), "threads": args.threads,
        "loss": ours_value.item(), "abs_difference": difference,
        "loop_forward_s": loop_fwd, "vectorised_forward_s": ours_fwd, "forward_speedup": loop_fwd / ours_fwd,
        "loop_forward_backward_s": loop_fb, "vectorised_forward_backward_s": ours_fb,
        "forward_backward_speedup": loop_fb / ours_fb,
        "rows_forward_backward_s": rows_fb, "rows_forward_backward_speedup": loop_fb / rows_fb,
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"batch {args.batch} x length {args.length}: {result['rows']} supervised rows, "
          f"{result['cause_columns']} cause columns, {args.threads} thread(s), loss {result['loss']:.6f} "
          f"(paths agree to {difference:.1e})")
    print(f"{'':24}{'per-row loop':>14}{'vectorised':>14}{'speed-up':>10}")
    print(f"{'forward':24}{loop_fwd * 1e3:>12.2f}ms{ours_fwd * 1e3:>12.3f}ms{loop_fwd / ours_fwd:>9.0f}x")
    print(f"{'forward + backward':24}{loop_fb * 1e3:>12.2f}ms{ours_fb * 1e3:>12.3f}ms{loop_fb / ours_fb:>9.0f}x")
    print(f"{'  from the rows':24}{'':>14}{rows_fb * 1e3:>12.3f}ms{loop_fb / rows_fb:>9.0f}x"
          "   (gradient to the supervised rows only, as in training)")


if __name__ == "__main__":
    main()
