"""bf16 against fp32 on this machine's CPU, and what cattune decides from it.

Times one matmul of SmolLM2-135M's MLP shape (a batch of 16 x 128 tokens, 576 -> 1536) in fp32,
in bf16 and under bf16 autocast, one thread, and prints ``cattune.precision.bf16_is_fast()``: a
config's ``bf16: true`` is used only where that is true (docs/PERFORMANCE.md).

    .venv/bin/python benchmarks/bench_bf16.py
"""

from __future__ import annotations

import argparse

import torch
from bench_loss import timed  # the sibling script's median timer (run from benchmarks/ or as a path)

from cattune.precision import bf16_is_fast


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048, help="rows of the left matrix (batch x length)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    a, b = torch.randn(args.tokens, 576), torch.randn(576, 1536)
    a16, b16 = a.bfloat16(), b.bfloat16()

    def autocast() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return a @ b

    fp32 = timed(lambda: a @ b, 1, args.repeats)
    bf16 = timed(lambda: a16 @ b16, 1, args.repeats)
    auto = timed(autocast, 1, args.repeats)
    print(f"CPU capability: {torch.backends.cpu.get_cpu_capability()}, torch {torch.__version__}, {args.threads} thread(s)")
    print(f"[{args.tokens} x 576] @ [576 x 1536], median of {args.repeats}:")
    print(f"  fp32      {fp32 * 1e3:9.1f} ms")
    print(f"  bf16      {bf16 * 1e3:9.1f} ms  ({bf16 / fp32:.1f} x fp32)")
    print(f"  autocast  {auto * 1e3:9.1f} ms  ({auto / fp32:.1f} x fp32)")
    print(f"cattune.precision.bf16_is_fast(): {bf16_is_fast()} -> bf16: true trains in {'bf16' if bf16_is_fast() else 'fp32'}")


if __name__ == "__main__":
    main()
