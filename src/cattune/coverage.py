"""Annotation coverage: how much of a file's word-level annotation becomes token-level supervision.

For one tokenizer, every record is encoded as in training (:func:`cattune.encoding.encode_record`)
and its causal rows are built; the report adds up the :class:`cattune.masks.MaskStats` and says
which spans were not found, how many supervised rows each record gets, what truncation cut, and
which records are the worst offenders (``file:line`` with what was missed), so a file's
annotations can be trusted, or fixed, before a training run.
"""

from __future__ import annotations

import logging
import os
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from cattune.data.records import Record, load_records
from cattune.encoding import encode_record
from cattune.masks import MaskStats, find_occurrences

logger = logging.getLogger(__name__)


def _summary(values: Sequence[int]) -> dict[str, float | int | None]:
    if not values:
        return {"mean": None, "min": None, "max": None}
    return {"mean": sum(values) / len(values), "min": min(values), "max": max(values)}


def _problem(record: Record, stats: MaskStats, rows: int, truncated: bool) -> dict[str, Any] | None:
    """What went wrong for one annotated record, or None when nothing did."""
    effects = [span for kind, span in stats.missing_spans if kind == "effect"]
    causes = [span for kind, span in stats.missing_spans if kind == "cause"]
    reasons = []
    if effects:
        reasons.append(f"{len(effects)} effect span(s) not found")
    if causes:
        reasons.append(f"{len(causes)} cause span(s) not found")
    if stats.relations == 0:
        reasons.append("no usable relation")
    if stats.rows_truncated or stats.columns_truncated:
        reasons.append(f"truncation dropped {stats.rows_truncated} row(s), {stats.columns_truncated} column(s)")
    if stats.relations and not stats.pairs and not (effects or causes):
        reasons.append(f"no usable (cause, effect) pair: {stats.pairs_skipped_order} with the cause not before "
                       f"the effect, {stats.pairs_skipped_adjacent} adjacent")
    if not reasons:
        return None
    return {
        "where": f"{record.source}:{record.line}" if record.source else f"record {record.line}",
        "rows": rows,
        "missing_effects": effects,
        "missing_causes": causes,
        "truncated": truncated,
        "problem": "; ".join(reasons),
        # Sort key: missing spans first, then records left without supervision.
        "_severity": (len(effects) + len(causes), rows == 0, stats.rows_truncated),
    }


def coverage_report(
    path_or_records: str | os.PathLike[str] | Sequence[Record],
    tokenizer: Any,
    *,
    max_length: int = 256,
    skip_adjacent: bool = True,
    worst: int = 5,
) -> dict[str, Any]:
    """Coverage figures of one file (or a list of records) for ``tokenizer``.

    Rows and spans are counted over annotated records; ``tokens``, truncation and the record
    counts over all records. ``worst`` is the number of offending records listed.
    """
    if isinstance(path_or_records, (str, os.PathLike)):
        name = str(path_or_records)
        records: Sequence[Record] = load_records(path_or_records)
    else:
        records = path_or_records
        name = records[0].source if records and records[0].source else "<records>"
    total = MaskStats()
    rows_per_record: list[int] = []
    tokens: list[int] = []
    repairs: Counter[str] = Counter()
    truncated_records = 0
    repeated_spans = 0
    empty_annotations = 0
    problems = []
    for record in tqdm(records, desc=f"coverage {Path(name).name}", unit="rec", leave=False, disable=None):
        example = encode_record(tokenizer, record, max_length=max_length, skip_adjacent=skip_adjacent)
        length = len(example.input_ids)
        if example.truncated:
            # Report the full length (what max_length would need to be); only cut records pay twice.
            length = len(encode_record(tokenizer, record, max_length=sys.maxsize, with_rows=False).input_ids)
            truncated_records += 1
        tokens.append(length)
        repairs.update(record.annotation_repairs)
        if not record.is_annotated:
            continue
        if not record.important:
            empty_annotations += 1
        stats = example.rows.stats
        total.add(stats)
        rows = len(example.rows)
        rows_per_record.append(rows)
        text = record.text
        for rel in record.important or ():
            for span in (rel.effect, *rel.causes):
                repeated_spans += len(find_occurrences(text, span)) > 1
        problem = _problem(record, stats, rows, example.truncated)
        if problem:
            problems.append(problem)
    problems.sort(key=lambda p: p["_severity"], reverse=True)
    for p in problems:
        del p["_severity"]
    annotated = len(rows_per_record)
    report = {
        "file": name,
        "records": len(records),
        "annotated_records": annotated,
        "empty_annotations": empty_annotations,
        "relations": total.relations,
        "effect_spans_found": total.effects_found,
        "effect_spans_missing": total.effects_missing,
        "cause_spans_found": total.causes_found,
        "cause_spans_missing": total.causes_missing,
        "spans_found_several_times": repeated_spans,
        "pairs": total.pairs,
        "pairs_skipped_order": total.pairs_skipped_order,
        "pairs_skipped_adjacent": total.pairs_skipped_adjacent,
        "supervised_rows": total.rows,
        "rows_per_record": _summary(rows_per_record),
        "zero_row_records": sum(1 for r in rows_per_record if r == 0),
        "tokens_per_record": _summary(tokens),
        "max_length": max_length,
        "truncated_records": truncated_records,
        "rows_truncated": total.rows_truncated,
        "columns_truncated": total.columns_truncated,
        "annotation_repairs": dict(sorted(repairs.items())),
        "records_with_problems": len(problems),
        "worst": problems[:worst],
    }
    logger.info("%s: %d/%d annotated, %d cause spans missing, %d zero-row records", name, annotated,
                len(records), total.causes_missing, report["zero_row_records"])
    return report
