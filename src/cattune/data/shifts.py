"""The splits both STG generators write and how their spurious values relate to the causes.

Each split draws from its own random stream seeded by ``(benchmark, seed, split name)``, so asking
for fewer shifts or another test size leaves the other splits unchanged.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

CORRELATED, INDEPENDENT, ANTICORRELATED, IN_RANGE = "correlated", "independent", "anticorrelated", "in_range"
EXTRA_SHIFTS: tuple[str, ...] = (ANTICORRELATED, IN_RANGE)
BASE_SPLITS: dict[str, str] = {"train": CORRELATED, "test_iid": CORRELATED, "test_ood": INDEPENDENT}

# (random stream, number of records, spurious relation, **benchmark options) -> records
SplitGenerator = Callable[..., list[dict[str, Any]]]


def split_relations(extra_shifts: Sequence[str] = EXTRA_SHIFTS) -> dict[str, str]:
    """Split name -> spurious relation, for the base splits and the requested extra shifts."""
    unknown = [s for s in extra_shifts if s not in EXTRA_SHIFTS]
    if unknown:
        raise ValueError(f"unknown shift(s) {', '.join(unknown)}; known: {', '.join(EXTRA_SHIFTS)}")
    return {**BASE_SPLITS, **{f"test_ood_{shift}": shift for shift in extra_shifts}}


def generate_splits(
    benchmark: str,
    generate_split: SplitGenerator,
    seed: int,
    train_size: int,
    test_size: int,
    extra_shifts: Sequence[str] = EXTRA_SHIFTS,
    **options: Any,
) -> dict[str, list[dict[str, Any]]]:
    """The training pool, the IID and OOD tests, and one test per extra shift, each split drawn by
    ``generate_split(rng, size, relation, **options)``."""
    if train_size < 0 or test_size < 0:
        raise ValueError("sizes must be non-negative")
    splits = {}
    for split, relation in split_relations(extra_shifts).items():
        size = train_size if split == "train" else test_size
        splits[split] = generate_split(random.Random(f"{benchmark}:{seed}:{split}"), size, relation, **options)
    return splits
