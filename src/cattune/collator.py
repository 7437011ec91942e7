"""Training examples and their batches, with the sparse causal rows carried through.

A batch holds the usual ``input_ids``, ``attention_mask`` (padding) and ``labels``, plus:

* ``cat_rows``: ``[R, 2]`` (batch index, query position) of every supervised row;
* ``cat_pairs_cause``: ``[P, 2]`` (index into ``cat_rows``, key position) of each cause column;
* ``cat_pairs_<name>``: the same for named non-causal spans (``spurious``, ``irrelevant``) when the
  records carry a ``noncausal`` field; they feed the logged attention shares and path constraints;
* with path rows (``build_examples(path_rows=True)``): ``cat_answer_rows`` and ``cat_path_rows``,
  [R] bool, which of the rows are answer rows (they have cause columns) and which path rows (every
  position after the first named non-causal token that is not inside a named span). A position
  can be both; it appears once in ``cat_rows``.

Sequences are padded on the right, so every row's allowed keys are the positions ``j <= i``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from cattune.data.records import Record
from cattune.encoding import IGNORE_INDEX, encode_record
from cattune.masks import MaskStats, span_columns

logger = logging.getLogger(__name__)

PAIR_PREFIX = "cat_pairs_"


def noncausal_spans(record: Record) -> dict[str, list[str]]:
    """Named non-causal spans of a record (the ``noncausal`` field written by the STG generators)."""
    value = record.extra.get("noncausal")
    if not isinstance(value, dict):
        return {}
    return {str(k): [str(s) for s in v] for k, v in value.items() if isinstance(v, list)}


@dataclass
class ExampleSet:
    examples: list[dict[str, Any]]
    stats: MaskStats
    without_rows: int  # annotated records that yield no supervised row (trained on LM loss only)
    truncated: int


def build_examples(
    records: Sequence[Record],
    tokenizer: Any,
    *,
    max_length: int = 256,
    skip_adjacent: bool = True,
    path_rows: bool = False,
) -> ExampleSet:
    """Encode records into training examples (token ids, labels, rows -> columns).

    ``path_rows``: also list the path rows of each example (see the module docstring).
    """
    stats = MaskStats()
    examples = []
    without_rows = truncated = 0
    for rec in records:
        enc = encode_record(tokenizer, rec, max_length=max_length, skip_adjacent=skip_adjacent)
        stats.add(enc.rows.stats)
        truncated += int(enc.truncated)
        if not enc.rows.rows:
            without_rows += 1
        named = {
            name: span_columns(enc.text, enc.offsets, spans, max_length=max_length)
            for name, spans in noncausal_spans(rec).items()
        }
        example = {
            "input_ids": enc.input_ids,
            "labels": enc.labels,
            "cat_rows": enc.rows.rows,
            "cat_named_columns": named,
        }
        if path_rows:
            example["cat_path_rows"] = path_positions(named, len(enc.input_ids))
        examples.append(example)
    return ExampleSet(examples, stats, without_rows, truncated)


def path_positions(named_columns: dict[str, Any], length: int) -> list[int]:
    """Positions after the first named non-causal token that are not inside a named span."""
    inside = set().union(*(set(cols) for cols in named_columns.values())) if named_columns else set()
    if not inside:
        return []
    return [i for i in range(min(inside) + 1, length) if i not in inside]


class CATCollator:
    """Right-pads a list of examples and packs their supervised rows into flat index tensors."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        n = len(features)
        input_ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((n, width), dtype=torch.long)
        rows: list[tuple[int, int]] = []
        answer: list[bool] = []
        path: list[bool] = []
        pairs: dict[str, list[tuple[int, int]]] = {"cause": []}
        with_path = any("cat_path_rows" in f for f in features)
        for b, feat in enumerate(features):
            length = len(feat["input_ids"])
            input_ids[b, :length] = torch.tensor(feat["input_ids"])
            labels[b, :length] = torch.tensor(feat["labels"])
            attention_mask[b, :length] = 1
            named = feat.get("cat_named_columns") or {}
            causes = feat.get("cat_rows", {})
            path_rows = set(feat.get("cat_path_rows", ()))
            for row in sorted(set(causes) | path_rows):
                r = len(rows)
                rows.append((b, row))
                answer.append(row in causes)
                path.append(row in path_rows)
                pairs["cause"].extend((r, c) for c in causes.get(row, ()))
                for name, named_cols in named.items():
                    pairs.setdefault(name, []).extend((r, c) for c in named_cols if c <= row)
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "cat_rows": torch.tensor(rows, dtype=torch.long).reshape(-1, 2),
        }
        if with_path:
            batch["cat_answer_rows"] = torch.tensor(answer, dtype=torch.bool)
            batch["cat_path_rows"] = torch.tensor(path, dtype=torch.bool)
        for name, plist in pairs.items():
            batch[PAIR_PREFIX + name] = torch.tensor(plist, dtype=torch.long).reshape(-1, 2)
        return batch
