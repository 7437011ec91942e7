"""Position jitter: random gaps in the position ids during training.

A causal LM knows how many tokens precede each position (the rotary distance to the first token
says it outright). When the length of a spurious value predicts the label (STG: a value of 10 or
more is two digit tokens, and in training it goes with a high cause), that count is a shortcut no
attention constraint on the value tokens can remove: the path constraint stops the model reading
the values, and its answers still follow their lengths (docs/STUDY.md). Training with random gaps
in the position ids makes the count unreliable; evaluation uses the ordinary ids, which training
also sees (a draw of zero gaps).
"""

from __future__ import annotations

import torch


def jittered_position_ids(input_ids: torch.Tensor, max_gaps: int, *, generator: torch.Generator | None = None
                          ) -> torch.Tensor:
    """[B, T] position ids: the model's default ``0..T-1`` for each row, plus, per row, k unit gaps
    (k uniform in ``0..max_gaps``) before uniformly drawn positions 1..T-1; every token after a gap
    gets an id one higher. Ids stay strictly increasing, so no mask reads them as packed sequences.
    """
    batch, length = input_ids.shape
    base = torch.arange(length, device=input_ids.device).expand(batch, length)
    if max_gaps <= 0 or length < 2:
        return base.clone()
    counts = torch.randint(0, max_gaps + 1, (batch, 1), generator=generator)  # [B, 1]
    where = torch.randint(1, length, (batch, max_gaps), generator=generator)  # [B, G]
    used = torch.arange(max_gaps).expand(batch, max_gaps) < counts  # [B, G]: the first k draws count
    gaps = torch.zeros(batch, length, dtype=torch.long)
    gaps.scatter_add_(1, where, used.long())
    return base + gaps.cumsum(-1).to(input_ids.device)
