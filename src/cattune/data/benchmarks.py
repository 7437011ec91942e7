"""Synthetic benchmarks by name: generate every split, write the JSONL files and the dataset card.

``write_benchmark("stg", out_dir, seed=..., train_size=..., test_size=...)`` writes
``train.jsonl``, ``test_iid.jsonl``, ``test_ood.jsonl`` and one ``test_ood_<shift>.jsonl`` per
extra shift, plus ``card.json`` / ``card.md``. The generators themselves live in
:mod:`cattune.data.stg` and :mod:`cattune.data.stg_h`.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from cattune.data import cards, stg, stg_h
from cattune.data.records import DataError, Record, write_records
from cattune.data.tables import parse_table

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Benchmark:
    name: str
    module: ModuleType
    description: str
    notes: Callable[[Mapping[str, Any]], list[str]]


def _stg_notes(options: Mapping[str, Any]) -> list[str]:
    notes = [
        "Label: f = 1.2*Smoking + 0.7*Weight - Exercise; High Risk if f > 7.2 else Low Risk.",
        "Middle Risk branch " + (
            "ON: items whose float score equals 2.7 exactly are labelled 'Middle Risk', as in the "
            "released generator (7 of 2,400 released items)."
            if options.get("middle_risk") else
            "off (default): items whose score is 2.7 are labelled 'Low Risk' by the threshold rule; "
            "the released files label them 'Middle Risk'."
        ),
        "test_ood draws every value, spurious included, independently from 1..10.",
    ]
    shifts = options.get("extra_shifts", ())
    if stg.ANTICORRELATED in shifts:
        notes.append("test_ood_anticorrelated: spurious = int(ratio * (11 - cause)); the spurious values stay "
                     "inside their training support but point the opposite way.")
    if stg.IN_RANGE in shifts:
        notes.append("test_ood_in_range: spurious = int(ratio * v) with v independent of the cause: independence "
                     "without values unseen in training.")
    notes.append("Every split carries the annotation and 'noncausal' spans (the released test files have none).")
    return notes


def _stg_h_notes(options: Mapping[str, Any]) -> list[str]:
    notes = [
        "Label: AQI = round((clip(f, -20, 30) + 20) / 50 * 100), f = 0.3 f1 + 0.25 f2 + 0.2 f3 + 0.15 f4 "
        "- 0.2 f5 - 0.3 f6, computed from the " + (
            "printed (rounded) cause values: the label is a function of the prompt."
            if options.get("label_from_printed") else
            "unrounded cause values as in the release: about 3% of labels differ by 1 from the formula "
            "applied to the printed values."
        ),
        "test_ood draws the spurious values from narrow shifted uniforms (as released); where these leave the "
        "training ranges (listed below) it tests extrapolation as well as independence.",
    ]
    shifts = options.get("extra_shifts", ())
    if stg_h.ANTICORRELATED in shifts:
        notes.append("test_ood_anticorrelated: the training mechanism applied to the cause reflected in its "
                     "range (low + high - cause).")
    if stg_h.IN_RANGE in shifts:
        notes.append("test_ood_in_range: the training mechanism applied to an independent draw of the cause.")
    return notes


BENCHMARKS: dict[str, Benchmark] = {
    stg.NAME: Benchmark(stg.NAME, stg, "Spurious Token Game (cancer risk, 8 integer variables)", _stg_notes),
    stg_h.NAME: Benchmark(stg_h.NAME, stg_h, "STG_H (air-quality index 0..100, 14 variables)", _stg_h_notes),
}


def add_noncausal_spans(records: Sequence[Record], benchmark: str) -> list[Record]:
    """The records with a ``noncausal`` field naming their spurious and irrelevant spans, read from
    the benchmark's prompt (the released files lack it; the path constraint needs it). The causes
    (``important``) and every other field are kept exactly. Raises :class:`DataError` (file:line)
    on a prompt that is not the benchmark's."""
    spans = BENCHMARKS[benchmark].module.spans
    enriched = []
    for rec in records:
        try:
            noncausal = spans(rec.input, rec.target)[1]
        except ValueError as exc:
            raise DataError(rec.source or "<records>", rec.line or None, str(exc),
                            f"is this a {benchmark} file?") from None
        enriched.append(dataclasses.replace(rec, extra={**rec.extra, "noncausal": noncausal}))
    return enriched


@dataclass(frozen=True)
class GeneratedDataset:
    folder: Path
    files: dict[str, Path]
    card: dict[str, Any]


_LEADING_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _number(value: str) -> float | None:
    """The number in a printed value such as ``"41.9%"``, ``"38th"`` or ``"114.2Mbps"``."""
    match = _LEADING_NUMBER.match(value)
    return float(match.group()) if match else None


def value_ranges(records: Sequence[Mapping[str, Any]]) -> dict[str, list[float]]:
    """Per printed variable, the smallest and largest value in ``records``."""
    ranges: dict[str, list[float]] = {}
    for rec in records:
        for f in parse_table(rec["input"]):
            number = _number(f.value)
            if number is None:
                continue
            low_high = ranges.setdefault(f.name, [number, number])
            low_high[0], low_high[1] = min(low_high[0], number), max(low_high[1], number)
    return ranges


def range_notes(
    ranges: Mapping[str, Mapping[str, Sequence[float]]], variables: Sequence[str], *, tolerance: float = 0.1
) -> list[str]:
    """One note per test split and variable whose values leave the training range by more than
    ``tolerance`` times its width (smaller excursions are sampling noise at the tails)."""
    train = ranges.get("train", {})
    notes = []
    for split, split_ranges in ranges.items():
        if split == "train":
            continue
        for name in variables:
            if name in train and name in split_ranges:
                (lo, hi), (tlo, thi) = split_ranges[name], train[name]
                margin = tolerance * (thi - tlo)
                if lo < tlo - margin or hi > thi + margin:
                    notes.append(f"{split}: {name} spans {lo:g}..{hi:g}, training only {tlo:g}..{thi:g}.")
    return notes


def write_benchmark(
    name: str,
    out_dir: str | os.PathLike[str],
    *,
    seed: int,
    train_size: int,
    test_size: int,
    **options: Any,
) -> GeneratedDataset:
    """Generate every split of benchmark ``name`` and write them with a card into ``out_dir``."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    bench = BENCHMARKS[name]
    # Record every option, defaults included, so the card alone says how the data was made.
    defaults = {
        key: param.default
        for key, param in inspect.signature(bench.module.generate_splits).parameters.items()
        if param.kind is inspect.Parameter.KEYWORD_ONLY
    }
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ValueError(f"{name} has no option(s) {', '.join(unknown)}; known: {', '.join(defaults)}")
    options = {**defaults, **options}
    options["extra_shifts"] = tuple(options["extra_shifts"])
    splits = bench.module.generate_splits(seed, train_size, test_size, **options)
    folder = Path(out_dir)
    files = {}
    for split, records in splits.items():
        path = folder / f"{split}.jsonl"
        if path.exists():
            logger.info("replacing %s", path)
        files[split] = write_records(path, records)
    ranges = {split: value_ranges(records) for split, records in splits.items()}
    notes = bench.notes(options) + range_notes(ranges, bench.module.SPURIOUS)
    card = cards.build_card(
        name,
        seed=seed,
        options={**options, "extra_shifts": list(options["extra_shifts"])},
        splits=splits,
        files={split: path.name for split, path in files.items()},
        notes=notes,
    )
    card["value_ranges"] = ranges
    cards.write_card(folder, card)
    logger.info("wrote %s: %s", folder, ", ".join(f"{s} {len(r)}" for s, r in splits.items()))
    return GeneratedDataset(folder, files, card)
