"""Word-level causal relations -> token-level supervised rows and their cause columns.

This is the method's adjacency matrix ``M`` (METHOD.md section 3), kept sparse: a mapping from
each supervised row (a query position) to the token columns it should attend to. It is unrelated
to the Hugging Face ``attention_mask`` (which marks padding).

Rules:
* Every occurrence of every effect span and every cause span is found in the text by characters,
  with a word-boundary check so that ``"Smoking: 1"`` does not match inside ``"Smoking: 10"``.
* Character spans map to tokens through the tokenizer's offset mapping: a token belongs to a span
  when its characters overlap the span (offsets that include a leading space still count).
* A (cause occurrence, effect occurrence) pair counts when the cause's last token comes before the
  effect's first token. The released code also skips pairs where the effect starts on the very
  next token after the cause ends; that is the default here (``skip_adjacent=True``) for
  comparability, and ``skip_adjacent=False`` keeps them.
* An effect occupying tokens ``s .. e-1`` supervises rows ``s-1 .. e-2`` (row ``i`` predicts token
  ``i+1``); each such row gets every paired cause token ``j <= i`` as a column.
* Spans that do not occur are counted, never hidden; rows or columns cut off by truncation are
  dropped and counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cattune.data.records import Relation


def _is_word_char(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def find_occurrences(text: str, span: str) -> list[tuple[int, int]]:
    """Character ranges ``[start, end)`` of every occurrence of ``span`` as a whole-word match.

    The boundary check only applies at span ends that are word characters: ``"5"`` does not match
    inside ``"15"`` or ``"5.0"``'s neighbour ``"55"``, while a span ending in punctuation (``"A."``)
    may be followed by anything.
    """
    if not span:
        return []
    found: list[tuple[int, int]] = []
    start = text.find(span)
    while start != -1:
        end = start + len(span)
        left_ok = start == 0 or not (_is_word_char(span[0]) and _is_word_char(text[start - 1]))
        right_ok = end == len(text) or not (_is_word_char(span[-1]) and _is_word_char(text[end]))
        # "84" must not match the "84" of "84.0", nor "1" the "1" of "1.5": a digit span followed
        # by a decimal point and a digit is part of a longer number.
        if right_ok and span[-1].isdigit() and end + 1 < len(text) and text[end] == "." and text[end + 1].isdigit():
            right_ok = False
        if left_ok and right_ok:
            found.append((start, end))
        start = text.find(span, start + 1)
    return found


def char_range_to_tokens(offsets: Sequence[tuple[int, int]], start: int, end: int) -> list[int]:
    """Indices of the tokens whose character offsets overlap ``[start, end)``."""
    return [t for t, (a, b) in enumerate(offsets) if a < end and b > start and b > a]


@dataclass
class MaskStats:
    """Counts behind one or more examples' supervision; they add up across examples."""

    relations: int = 0
    effects_found: int = 0
    effects_missing: int = 0
    causes_found: int = 0
    causes_missing: int = 0
    pairs: int = 0
    pairs_skipped_order: int = 0
    pairs_skipped_adjacent: int = 0
    rows: int = 0
    rows_truncated: int = 0
    columns_truncated: int = 0
    missing_spans: list[tuple[str, str]] = field(default_factory=list)

    def add(self, other: MaskStats) -> None:
        for name in self.__dataclass_fields__:
            if name == "missing_spans":
                self.missing_spans.extend(other.missing_spans)
            else:
                setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class CausalRows:
    """The sparse adjacency of one example: supervised row -> sorted cause columns."""

    rows: dict[int, tuple[int, ...]]
    stats: MaskStats

    def __len__(self) -> int:
        return len(self.rows)


def causal_rows(
    text: str,
    offsets: Sequence[tuple[int, int]],
    relations: Iterable[Relation],
    *,
    max_length: int | None = None,
    skip_adjacent: bool = True,
) -> CausalRows:
    """Supervised rows and cause columns of one example.

    ``offsets`` are the character offsets of every token of ``text`` (special tokens have
    ``(0, 0)``, which never overlaps a span). ``max_length`` is where the token sequence will be
    cut; rows or columns at or past it are dropped and counted.
    """
    stats = MaskStats()
    rows: dict[int, set[int]] = {}
    n_tokens = len(offsets)
    limit = n_tokens if max_length is None else min(n_tokens, max_length)
    span_tokens: dict[str, list[list[int]]] = {}

    def occurrences(span: str) -> list[list[int]]:
        if span not in span_tokens:
            toks = [char_range_to_tokens(offsets, a, b) for a, b in find_occurrences(text, span)]
            span_tokens[span] = [t for t in toks if t]
        return span_tokens[span]

    for rel in relations:
        stats.relations += 1
        effects = occurrences(rel.effect)
        if effects:
            stats.effects_found += 1
        else:
            stats.effects_missing += 1
            stats.missing_spans.append(("effect", rel.effect))
        for cause in rel.causes:
            causes = occurrences(cause)
            if causes:
                stats.causes_found += 1
            else:
                stats.causes_missing += 1
                stats.missing_spans.append(("cause", cause))
            for eff in effects:
                s, e = eff[0], eff[-1] + 1
                for cau in causes:
                    if cau[-1] >= s:
                        stats.pairs_skipped_order += 1
                        continue
                    if skip_adjacent and cau[-1] + 1 == s:
                        stats.pairs_skipped_adjacent += 1
                        continue
                    stats.pairs += 1
                    for row in range(max(s - 1, 0), e - 1):
                        rows.setdefault(row, set()).update(j for j in cau if j <= row)
    kept_rows: dict[int, tuple[int, ...]] = {}
    for row in sorted(rows):
        if row >= limit:
            stats.rows_truncated += 1
            stats.columns_truncated += len(rows[row])
            continue
        cols = tuple(sorted(j for j in rows[row] if j < limit))
        stats.columns_truncated += len(rows[row]) - len(cols)
        if cols:
            kept_rows[row] = cols
        else:
            stats.rows_truncated += 1
    stats.rows = len(kept_rows)
    return CausalRows(kept_rows, stats)


def span_columns(
    text: str,
    offsets: Sequence[tuple[int, int]],
    spans: Iterable[str],
    *,
    max_length: int | None = None,
) -> tuple[int, ...]:
    """Token indices covered by every occurrence of the given spans (for diagnostics and
    path-level constraints on named non-causal spans)."""
    limit = len(offsets) if max_length is None else min(len(offsets), max_length)
    cols: set[int] = set()
    for span in spans:
        for a, b in find_occurrences(text, span):
            cols.update(t for t in char_range_to_tokens(offsets, a, b) if t < limit)
    return tuple(sorted(cols))
