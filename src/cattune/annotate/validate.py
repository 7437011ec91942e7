"""Checking proposed causal relations against the text they annotate.

An assistant LLM (or a rule, or a person) proposes ``{effect: [causes]}`` relations; only spans
that the training code can actually place become supervision. A span is kept when it occurs in
``input + target`` as a whole-word match (:func:`cattune.masks.find_occurrences`, the same search
the masks use) and, for a cause, when some occurrence of it ends before some occurrence of its
effect starts. Everything else is dropped with a reason, so callers can count and report it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cattune.data.records import Relation
from cattune.masks import find_occurrences

# Reasons a span is dropped; the names appear in summaries and reports.
NOT_IN_TEXT = "not_in_text"
NOT_BEFORE_EFFECT = "not_before_effect"
EFFECT_DROPPED = "effect_dropped"
NO_VALID_CAUSE = "no_valid_cause"
DUPLICATE = "duplicate"
EMPTY = "empty"


@dataclass(frozen=True)
class DroppedSpan:
    """One span that did not become supervision, and why."""

    role: str  # "effect" or "cause"
    span: str
    effect: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"role": self.role, "span": self.span, "effect": self.effect, "reason": self.reason}


@dataclass(frozen=True)
class ValidatedRelations:
    """The relations that survived validation, what was dropped, and how many spans were kept."""

    relations: tuple[Relation, ...]
    dropped: tuple[DroppedSpan, ...]
    spans_kept: int

    @property
    def spans_dropped(self) -> int:
        return len(self.dropped)

    def dropped_by_reason(self) -> Counter[str]:
        return Counter(d.reason for d in self.dropped)


def validate_relations(
    text: str, proposed: Iterable[tuple[str, Sequence[str]]], *, keep_duplicates: bool = False
) -> ValidatedRelations:
    """Keep the relations of ``proposed`` whose spans can be placed in ``text``.

    ``proposed`` holds ``(effect, causes)`` pairs as parsed from a reply. A relation whose effect
    does not occur is dropped with all its causes; a relation left with no valid cause is dropped
    (its effect counted as ``no_valid_cause``). Repeated causes within one relation are dropped as
    duplicates unless ``keep_duplicates`` (a rule naming one cause per variable keeps two variables
    that print the same value; the tokens are the same either way). Spans kept counts each kept
    effect and each kept cause once per relation.
    """
    occurrences: dict[str, list[tuple[int, int]]] = {}

    def find(span: str) -> list[tuple[int, int]]:
        if span not in occurrences:
            occurrences[span] = find_occurrences(text, span)
        return occurrences[span]

    relations: list[Relation] = []
    dropped: list[DroppedSpan] = []
    kept = 0
    for effect, causes in proposed:
        if not effect.strip():
            dropped.append(DroppedSpan("effect", effect, effect, EMPTY))
            dropped.extend(DroppedSpan("cause", c, effect, EFFECT_DROPPED) for c in causes)
            continue
        effect_at = find(effect)
        if not effect_at:
            dropped.append(DroppedSpan("effect", effect, effect, NOT_IN_TEXT))
            dropped.extend(DroppedSpan("cause", c, effect, EFFECT_DROPPED) for c in causes)
            continue
        latest_effect_start = max(start for start, _ in effect_at)
        good: list[str] = []
        for cause in causes:
            if not cause.strip():
                dropped.append(DroppedSpan("cause", cause, effect, EMPTY))
            elif cause in good and not keep_duplicates:
                dropped.append(DroppedSpan("cause", cause, effect, DUPLICATE))
            elif not find(cause):
                dropped.append(DroppedSpan("cause", cause, effect, NOT_IN_TEXT))
            elif min(end for _, end in find(cause)) > latest_effect_start:
                dropped.append(DroppedSpan("cause", cause, effect, NOT_BEFORE_EFFECT))
            else:
                good.append(cause)
        if not good:
            dropped.append(DroppedSpan("effect", effect, effect, NO_VALID_CAUSE))
            continue
        relations.append(Relation(effect, tuple(good)))
        kept += 1 + len(good)
    return ValidatedRelations(tuple(relations), tuple(dropped), kept)
