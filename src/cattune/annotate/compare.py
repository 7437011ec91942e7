"""How much two annotations of the same items agree, and how much supervision each yields.

For example the released MAWPS training set annotated by two different assistant LLMs. Items are
matched by ``input`` and ``target`` (by position when both files list the same items in the same
order). Agreement is reported as precision / recall / F1 of B against A (A is the reference; the
F1 is symmetric) on:

* relation pairs ``(effect, cause)``, exactly and after normalising case and whitespace;
* effect spans and cause spans on their own;
* per item, the Jaccard index of the normalised pair sets;
* with a tokenizer, the supervised token rows and (row, column) cells each annotation produces
  (:func:`cattune.encoding.encode_record`): two annotations with different span boundaries can
  still point the same rows at the same tokens.

Every annotation is also validated against its text (:mod:`cattune.annotate.validate`), so spans
that training could not place are counted per side.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cattune.annotate.validate import validate_relations
from cattune.data.records import Record


def normalise_span(span: str) -> str:
    """Case-folded, whitespace-collapsed form of a span."""
    return " ".join(span.split()).casefold()


@dataclass
class Agreement:
    """Matches between two sets of things, summed over items."""

    matched: int = 0
    in_a: int = 0
    in_b: int = 0

    def add(self, a: set[Any], b: set[Any]) -> None:
        self.matched += len(a & b)
        self.in_a += len(a)
        self.in_b += len(b)

    @property
    def precision(self) -> float:
        return self.matched / self.in_b if self.in_b else 0.0

    @property
    def recall(self) -> float:
        return self.matched / self.in_a if self.in_a else 0.0

    @property
    def f1(self) -> float:
        total = self.in_a + self.in_b
        return 2 * self.matched / total if total else 0.0

    def to_json(self) -> dict[str, float | int]:
        return {"matched": self.matched, "in_a": self.in_a, "in_b": self.in_b,
                "precision": round(self.precision, 4), "recall": round(self.recall, 4), "f1": round(self.f1, 4)}


@dataclass
class SideStats:
    """One annotation file on its own."""

    name: str
    items_with_relations: int = 0
    relations: int = 0
    pairs: int = 0
    spans_placed: int = 0
    spans_dropped: int = 0
    dropped_by_reason: Counter[str] = field(default_factory=Counter)
    rows_per_item: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name, "items_with_relations": self.items_with_relations, "relations": self.relations,
            "pairs": self.pairs, "spans_placed": self.spans_placed, "spans_dropped": self.spans_dropped,
            "dropped_by_reason": dict(self.dropped_by_reason),
        }
        if self.rows_per_item:
            rows = self.rows_per_item
            out["supervised_rows"] = {"total": sum(rows), "mean": round(statistics.fmean(rows), 3),
                                      "median": statistics.median(rows), "items_without_rows": rows.count(0)}
        return out


@dataclass
class ComparisonReport:
    a: SideStats
    b: SideStats
    items_compared: int
    only_in_a: int
    only_in_b: int
    agreement: dict[str, Agreement]
    jaccard_mean: float
    jaccard_items: int
    tokenizer: str | None = None
    per_item: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self, *, per_item: bool = False) -> dict[str, Any]:
        out = {
            "a": self.a.to_json(), "b": self.b.to_json(), "items_compared": self.items_compared,
            "only_in_a": self.only_in_a, "only_in_b": self.only_in_b,
            "agreement": {k: v.to_json() for k, v in self.agreement.items()},
            "pair_jaccard_mean": round(self.jaccard_mean, 4), "pair_jaccard_items": self.jaccard_items,
            "tokenizer": self.tokenizer,
        }
        if per_item:
            out["per_item"] = self.per_item
        return out


def align(a: Sequence[Record], b: Sequence[Record]) -> tuple[list[tuple[Record, Record]], int, int]:
    """Pairs of records about the same item, and how many of A and of B found no partner."""
    def key(r: Record) -> tuple[str, str]:
        return (r.input, r.target)

    if len(a) == len(b) and all(key(x) == key(y) for x, y in zip(a, b)):
        return list(zip(a, b)), 0, 0
    waiting: dict[tuple[str, str], deque[Record]] = defaultdict(deque)
    for rec in b:
        waiting[key(rec)].append(rec)
    pairs = []
    for rec in a:
        queue = waiting.get(key(rec))
        if queue:
            pairs.append((rec, queue.popleft()))
    return pairs, len(a) - len(pairs), len(b) - len(pairs)


def _pairs(record: Record, norm: bool) -> set[tuple[str, str]]:
    f = normalise_span if norm else (lambda s: s)
    return {(f(rel.effect), f(c)) for rel in record.important or () for c in rel.causes}


def _side_update(side: SideStats, record: Record) -> None:
    relations = record.important or ()
    side.items_with_relations += bool(relations)
    side.relations += len(relations)
    side.pairs += sum(len(r.causes) for r in relations)
    checked = validate_relations(record.text, [(r.effect, r.causes) for r in relations])
    side.spans_placed += checked.spans_kept
    side.spans_dropped += checked.spans_dropped
    side.dropped_by_reason.update(checked.dropped_by_reason())


def compare_annotations(
    a: Sequence[Record],
    b: Sequence[Record],
    *,
    names: tuple[str, str] = ("A", "B"),
    tokenizer: Any = None,
    tokenizer_name: str | None = None,
    max_length: int = 256,
) -> ComparisonReport:
    """Compare annotation B with reference A over the items both contain."""
    from cattune.encoding import encode_record

    pairs, only_a, only_b = align(a, b)
    side_a, side_b = SideStats(names[0]), SideStats(names[1])
    agreement = {k: Agreement() for k in ("pairs_exact", "pairs_normalised", "effects_exact", "effects_normalised",
                                          "causes_exact", "causes_normalised")}
    if tokenizer is not None:
        agreement["token_rows"] = Agreement()
        agreement["token_cells"] = Agreement()
    jaccards: list[float] = []
    per_item: list[dict[str, Any]] = []
    for ra, rb in pairs:
        _side_update(side_a, ra)
        _side_update(side_b, rb)
        item: dict[str, Any] = {"line_a": ra.line, "line_b": rb.line}
        for norm, suffix in ((False, "exact"), (True, "normalised")):
            pa, pb = _pairs(ra, norm), _pairs(rb, norm)
            agreement[f"pairs_{suffix}"].add(pa, pb)
            agreement[f"effects_{suffix}"].add({e for e, _ in pa}, {e for e, _ in pb})
            agreement[f"causes_{suffix}"].add({c for _, c in pa}, {c for _, c in pb})
            if norm and (pa or pb):
                jaccard = len(pa & pb) / len(pa | pb)
                jaccards.append(jaccard)
                item["pair_jaccard"] = round(jaccard, 4)
        if tokenizer is not None:
            rows_a = encode_record(tokenizer, ra, max_length=max_length).rows.rows
            rows_b = encode_record(tokenizer, rb, max_length=max_length).rows.rows
            side_a.rows_per_item.append(len(rows_a))
            side_b.rows_per_item.append(len(rows_b))
            agreement["token_rows"].add(set(rows_a), set(rows_b))
            agreement["token_cells"].add({(r, c) for r, cols in rows_a.items() for c in cols},
                                         {(r, c) for r, cols in rows_b.items() for c in cols})
            item["rows_a"], item["rows_b"] = len(rows_a), len(rows_b)
        per_item.append(item)
    return ComparisonReport(
        a=side_a, b=side_b, items_compared=len(pairs), only_in_a=only_a, only_in_b=only_b, agreement=agreement,
        jaccard_mean=statistics.fmean(jaccards) if jaccards else 0.0, jaccard_items=len(jaccards),
        tokenizer=tokenizer_name, per_item=per_item,
    )


def format_comparison(report: ComparisonReport) -> str:
    """A plain-text table of the report, for the terminal and the docs."""
    a, b = report.a, report.b
    lines = [
        f"items compared: {report.items_compared} (only in A: {report.only_in_a}, only in B: {report.only_in_b})",
        f"A = {a.name}",
        f"B = {b.name}",
        "",
        f"{'':32}{'A':>12}{'B':>12}",
        f"{'items with relations':32}{a.items_with_relations:>12}{b.items_with_relations:>12}",
        f"{'relations':32}{a.relations:>12}{b.relations:>12}",
        f"{'(effect, cause) pairs':32}{a.pairs:>12}{b.pairs:>12}",
        f"{'spans placed in the text':32}{a.spans_placed:>12}{b.spans_placed:>12}",
        f"{'spans dropped':32}{a.spans_dropped:>12}{b.spans_dropped:>12}",
    ]
    for reason in sorted(set(a.dropped_by_reason) | set(b.dropped_by_reason)):
        lines.append(f"{'  ' + reason:32}{a.dropped_by_reason[reason]:>12}{b.dropped_by_reason[reason]:>12}")
    if a.rows_per_item:
        ja, jb = a.to_json()["supervised_rows"], b.to_json()["supervised_rows"]
        lines.append(f"{'supervised rows, total':32}{ja['total']:>12}{jb['total']:>12}")
        lines.append(f"{'supervised rows per item, mean':32}{ja['mean']:>12.2f}{jb['mean']:>12.2f}")
        lines.append(f"{'supervised rows per item, median':32}{ja['median']:>12}{jb['median']:>12}")
        lines.append(f"{'items without supervised rows':32}{ja['items_without_rows']:>12}{jb['items_without_rows']:>12}")
    lines += ["", f"agreement of B with A{f' (tokenizer {report.tokenizer})' if report.tokenizer else ''}:",
              f"{'':24}{'matched':>9}{'in A':>9}{'in B':>9}{'precision':>11}{'recall':>9}{'F1':>8}"]
    for name, agr in report.agreement.items():
        lines.append(f"{name:24}{agr.matched:>9}{agr.in_a:>9}{agr.in_b:>9}{agr.precision:>11.3f}{agr.recall:>9.3f}{agr.f1:>8.3f}")
    lines.append(f"per-item Jaccard of normalised pairs: mean {report.jaccard_mean:.3f} over {report.jaccard_items} items")
    return "\n".join(lines)
