"""Where the supervised rows look: attention shares by category, and one example's attention map.

The supervised rows are the positions that predict the annotated effect tokens (the answer). For
each row, its attention over the keys it may see (``j <= i``, not padding) is split into disjoint
categories, in this order of precedence: the row's ``cause`` columns, each named column set
(e.g. ``spurious``, ``irrelevant``, given as spans per record), the ``first_token`` (the usual
attention sink), and ``other`` (everything else). A category's share is its probability mass,
averaged over heads, rows and layers; per-layer shares are reported too. Both functions read
attention through :func:`cattune.attention.capture_row_attention`, so they see exactly what the
Re-Attention loss sees.

Attention mass is a diagnostic, not a measure of what the model uses (METHOD.md section 9).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from cattune.attention import RowSupervision, capture_row_attention, prepare_model_for_cat, pretrained_model
from cattune.data.records import Record
from cattune.encoding import EncodedExample, encode_record
from cattune.loss import attention_ratio
from cattune.masks import span_columns

logger = logging.getLogger(__name__)

CAUSE, FIRST_TOKEN, OTHER = "cause", "first_token", "other"


@contextmanager
def _inspection_mode(model: torch.nn.Module, backend: str):
    """Eval mode and the backend's attention implementation, restoring both afterwards."""
    hf = pretrained_model(model)
    previous_impl = hf.config._attn_implementation
    was_training = model.training
    prepare_model_for_cat(model, backend)
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)
        if hf.config._attn_implementation != previous_impl:
            hf.set_attn_implementation(previous_impl)


def _category_columns(
    example: EncodedExample, named: Mapping[str, Sequence[str]], max_length: int
) -> dict[str, dict[int, tuple[int, ...]]]:
    """Per category, the disjoint columns of each supervised row of one example."""
    spans = {name: set(span_columns(example.text, example.offsets, list(values), max_length=max_length))
             for name, values in named.items()}
    categories: dict[str, dict[int, tuple[int, ...]]] = {name: {} for name in (CAUSE, *named, FIRST_TOKEN, OTHER)}
    for row, causes in example.rows.rows.items():
        taken = set(causes)
        categories[CAUSE][row] = tuple(sorted(causes))
        for name, cols in spans.items():
            own = {j for j in cols if j <= row} - taken
            categories[name][row] = tuple(sorted(own))
            taken |= own
        categories[FIRST_TOKEN][row] = () if 0 in taken else (0,)
        taken.add(0)
        categories[OTHER][row] = tuple(j for j in range(row + 1) if j not in taken)
    return categories


def _padded(examples: Sequence[EncodedExample], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded input ids and the [B, T] padding mask."""
    length = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), length), dtype=torch.long)
    for b, e in enumerate(examples):
        ids[b, : len(e.input_ids)] = torch.tensor(e.input_ids)
        mask[b, : len(e.input_ids)] = 1
    return ids, mask


def _pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token to pad batches with")
    return int(pad)


def attention_shares(
    model: torch.nn.Module,
    tokenizer: Any,
    records: Sequence[Record],
    column_spans: Sequence[Mapping[str, Sequence[str]]] | None = None,
    *,
    backend: str = "recompute",
    batch_size: int = 8,
    max_length: int = 256,
    layers: Sequence[int] | None = None,
    skip_adjacent: bool = True,
) -> dict[str, Any]:
    """Mean attention shares of the supervised rows by category, overall and per layer.

    ``column_spans``: one mapping per record, name -> spans (literal substrings of the text),
    e.g. ``{"spurious": [...], "irrelevant": [...]}``; every record must use the same names.
    Returns ``{"categories", "share": {category: float}, "per_layer": {category: [float]},
    "layers", "causal_ratio", "rows", "records", "records_without_rows", "backend"}``, where
    ``causal_ratio`` is the mean over rows of (mean cause probability / mean probability of the
    other allowed columns), the ratio the loss thresholds.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    spans_per_record = list(column_spans) if column_spans is not None else [{} for _ in records]
    if len(spans_per_record) != len(records):
        raise ValueError(f"column_spans has {len(spans_per_record)} entries for {len(records)} records")
    names = list(spans_per_record[0]) if spans_per_record else []
    for k, spans in enumerate(spans_per_record):
        if list(spans) != names:
            raise ValueError(f"record {k} names column sets {list(spans)}, the first record {names}")
    if {CAUSE, FIRST_TOKEN, OTHER} & set(names):
        raise ValueError(f"column set names must differ from {CAUSE!r}, {FIRST_TOKEN!r} and {OTHER!r}")
    categories = [CAUSE, *names, FIRST_TOKEN, OTHER]

    encoded = []
    without_rows = 0
    for record, spans in zip(records, spans_per_record):
        example = encode_record(tokenizer, record, max_length=max_length, skip_adjacent=skip_adjacent)
        if example.rows.rows:
            encoded.append((example, _category_columns(example, spans, max_length)))
        else:
            without_rows += 1
    if without_rows:
        logger.info("attention_shares: %d of %d records have no supervised rows", without_rows, len(records))

    sums: dict[str, torch.Tensor] = {}
    ratio_sum, n_rows, n_ratio_rows, layer_ids = 0.0, 0, 0, ()
    with _inspection_mode(model, backend):
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start : start + batch_size]
            ids, mask = _padded([e for e, _ in chunk], _pad_id(tokenizer))
            causes = [cats[CAUSE] for _, cats in chunk]
            extra = {name: [cats[name] for _, cats in chunk] for name in categories[1:]}
            supervision = RowSupervision.from_row_columns(causes, extra)
            device = next(model.parameters()).device
            with capture_row_attention(model, supervision, backend=backend, layers=layers) as cap:
                out = model(input_ids=ids.to(device), attention_mask=mask.to(device), **cap.forward_kwargs)
                masses = cap.masses(out, mask.to(device))
            layer_ids = masses.layers
            for name in categories:
                per_row = masses.mass[name].mean(-1)  # [L, R], heads averaged
                sums[name] = sums.get(name, 0) + per_row.sum(-1).double().cpu()
            ratio, valid = attention_ratio(*masses.row_statistics())
            ratio_sum += float(ratio[valid].double().sum())
            n_ratio_rows += int(valid.sum())
            n_rows += len(supervision)

    per_layer = {name: (sums[name] / n_rows).tolist() if n_rows else [] for name in categories}
    return {
        "categories": categories,
        "share": {name: float(sum(v) / len(v)) if v else float("nan") for name, v in per_layer.items()},
        "per_layer": per_layer,
        "layers": list(layer_ids),
        "causal_ratio": ratio_sum / n_ratio_rows if n_ratio_rows else float("nan"),
        "rows": n_rows,
        "records": len(records),
        "records_without_rows": without_rows,
        "backend": backend,
    }


def path_attention(
    model: torch.nn.Module,
    tokenizer: Any,
    records: Sequence[Record],
    column_spans: Sequence[Mapping[str, Sequence[str]]],
    *,
    backend: str = "recompute",
    batch_size: int = 8,
    max_length: int = 256,
) -> dict[str, Any]:
    """How much the positions after the named non-causal spans read them: the path rows of the path
    constraint (every position after the first named token, outside the named spans).

    Returns ``{"share", "per_layer", "max_head_share", "max_head_per_layer", "rows", "records"}``:
    the attention share on the named spans, averaged over heads (``share``) and for the head that
    reads them most (``max_head_share``), averaged over rows and layers (and per layer). The answer
    rows alone cannot show whether earlier positions carry the shortcut forward; this can.
    """
    from cattune.collator import path_positions

    if len(column_spans) != len(records):
        raise ValueError(f"column_spans has {len(column_spans)} entries for {len(records)} records")
    encoded = []
    for record, spans in zip(records, column_spans):
        example = encode_record(tokenizer, record, max_length=max_length)
        named = {name: span_columns(example.text, example.offsets, list(values), max_length=max_length)
                 for name, values in spans.items()}
        rows = path_positions(named, len(example.input_ids))
        if rows:
            columns = sorted(set().union(*(set(c) for c in named.values())))
            encoded.append((example, {row: tuple(c for c in columns if c <= row) for row in rows}))
    if not encoded:
        return {}
    mean_sum: torch.Tensor | float = 0.0  # [L] after the first batch
    max_sum: torch.Tensor | float = 0.0
    n_rows = 0
    with _inspection_mode(model, backend):
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start : start + batch_size]
            ids, mask = _padded([e for e, _ in chunk], _pad_id(tokenizer))
            supervision = RowSupervision.from_row_columns([{r: () for r in rows} for _, rows in chunk],
                                                          {"noncausal": [rows for _, rows in chunk]})
            device = next(model.parameters()).device
            with capture_row_attention(model, supervision, backend=backend) as cap:
                out = model(input_ids=ids.to(device), attention_mask=mask.to(device), **cap.forward_kwargs)
                mass = cap.masses(out, mask.to(device)).mass["noncausal"].double().cpu()  # [L, R, H]
            mean_sum = mean_sum + mass.mean(-1).sum(-1)
            max_sum = max_sum + mass.amax(-1).sum(-1)
            n_rows += mass.shape[1]
    per_layer, max_per_layer = (mean_sum / n_rows).tolist(), (max_sum / n_rows).tolist()
    return {"share": sum(per_layer) / len(per_layer), "per_layer": per_layer,
            "max_head_share": sum(max_per_layer) / len(max_per_layer), "max_head_per_layer": max_per_layer,
            "rows": n_rows, "records": len(encoded)}


def row_attention_map(
    model: torch.nn.Module,
    tokenizer: Any,
    record: Record,
    *,
    rows: Sequence[int] | None = None,
    backend: str = "recompute",
    max_length: int = 256,
    layers: Sequence[int] | None = None,
    skip_adjacent: bool = True,
) -> tuple[list[str], list[int], torch.Tensor]:
    """One example's attention for a heat-map: ``(tokens, rows, matrix [len(rows), T])``.

    The matrix is the attention of each row averaged over the selected layers and all heads;
    ``rows`` defaults to the record's supervised rows.
    """
    example = encode_record(tokenizer, record, max_length=max_length, skip_adjacent=skip_adjacent)
    chosen = sorted(example.rows.rows) if rows is None else sorted(set(int(r) for r in rows))
    if not chosen:
        raise ValueError("the record has no supervised rows (no annotation matched); pass rows= explicitly")
    n_tokens = len(example.input_ids)
    if chosen[0] < 0 or chosen[-1] >= n_tokens:
        raise ValueError(f"rows must lie in 0..{n_tokens - 1}")
    causes = {row: example.rows.rows.get(row, ()) for row in chosen}
    supervision = RowSupervision.from_row_columns([causes])
    ids, mask = _padded([example], _pad_id(tokenizer))
    device = next(model.parameters()).device
    with _inspection_mode(model, backend):
        with capture_row_attention(model, supervision, backend=backend, layers=layers) as cap:
            out = model(input_ids=ids.to(device), attention_mask=mask.to(device), **cap.forward_kwargs)
            probabilities = cap.row_probabilities(out)  # [L, R, H, T]
    tokens = [tokenizer.decode([token]) for token in example.input_ids]
    return tokens, chosen, probabilities.mean(dim=(0, 2)).cpu()
