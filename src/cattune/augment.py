"""Counterfactual augmentation: the comparator that uses the same knowledge as CAT.

CAT is told which values cause the answer. The simplest other use of that knowledge is to show the
model every training item with everything that is *not* a cause redrawn: the label, a function of
the causes only, stays valid, and the shortcut stops predicting it. ``TrainConfig.augment`` trains
on a fresh redraw of every record each epoch (deterministic in the seed and the epoch, so an
interrupted run resumes on the same data). STG-style data only: the benchmark module supplies
``redraw_noncausal`` and ``spans``.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Sequence
from typing import Any

import torch
from transformers import TrainerCallback

from cattune.data.records import Record


def counterfactual_records(records: Sequence[Record], benchmark: str, *, seed: int, epoch: int) -> list[Record]:
    """``records`` with every non-causal value redrawn; the causes and their annotation are unchanged,
    the named non-causal spans (``noncausal``) follow the new values."""
    from cattune.data.benchmarks import BENCHMARKS

    module = BENCHMARKS[benchmark].module
    rng = random.Random(seed * 100_003 + epoch)
    out = []
    for rec in records:
        text = module.redraw_noncausal(rec.input, rng)
        noncausal = module.spans(text, rec.target)[1]
        out.append(dataclasses.replace(rec, input=text, extra={**rec.extra, "noncausal": noncausal}))
    return out


def epochs_needed(n_examples: int, *, epochs: float, max_steps: int, batch_size: int, grad_accum: int,
                  world_size: int = 1) -> int:
    """How many distinct epochs a run starts (at least 1)."""
    if max_steps > 0:
        steps_per_epoch = max(1, math.ceil(n_examples / (batch_size * world_size)) // grad_accum)
        return max(1, math.ceil(max_steps / steps_per_epoch))
    return max(1, math.ceil(epochs))


class PerEpochExamples(torch.utils.data.Dataset):
    """One list of examples per epoch, all of the same length; ``epoch`` picks the list."""

    def __init__(self, copies: Sequence[Sequence[dict[str, Any]]]):
        if not copies or len({len(c) for c in copies}) != 1:
            raise ValueError("need at least one copy, all of the same length")
        self.copies = copies
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.copies[0])

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.copies[self.epoch % len(self.copies)][index]


class SelectEpoch(TrainerCallback):
    """Points a :class:`PerEpochExamples` at the epoch about to start (also on resume, mid-epoch)."""

    def __init__(self, dataset: PerEpochExamples):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):  # noqa: ANN001
        # The Trainer builds the epoch's data iterator after this callback.
        self.dataset.epoch = math.floor((state.epoch or 0.0) + 1e-9)
