"""The Spurious Token Game (STG): a synthetic cancer-risk benchmark with planted shortcuts.

The data-generating process is METHOD.md section 8, checked against the released files:

* Prompt: ``PROMPT_PREFIX`` + the 8 ``Name: value`` pairs in random order joined by ``", "`` +
  ``PROMPT_SUFFIX``.
* Causes Smoking, Weight, Exercise: random integers 1..10.
* Spurious (training and IID test): ``int(ratio * cause)`` with Yellow fingers <- 1.5 x Smoking,
  Clothing size <- 1.0 x Weight, Hormones <- 0.5 x Exercise.
* Irrelevant Certain gene, Room size: random integers 1..10.
* Label: ``f = 1.2 * Smoking + 0.7 * Weight - Exercise``; "High Risk" if ``f > 7.2`` else "Low
  Risk". The released generator also answers "Middle Risk" when the float ``f == 2.7`` exactly
  (7 released items); that branch is off by default and on with ``middle_risk=True``.
* OOD test: every variable, spurious included, drawn independently from 1..10.
* Annotation: ``{label: [cause spans in the order they appear in the prompt]}`` (the released
  order), spans in the ``"Smoking: 8"`` form.

Two further shifts (not in the release) break the shortcut in controlled ways:

* ``anticorrelated``: spurious values tied to the opposite of their cause, ``int(ratio * (11 -
  cause))``. The spurious values stay inside their training support, so a model that reads them
  instead of the causes fails systematically, and no error comes from unseen values.
* ``in_range``: spurious values independent of the causes but drawn from their training marginals
  (``int(ratio * v)`` with an independent ``v`` in 1..10). The released OOD test draws Hormones
  from 1..10 although training never shows a value above 5; this shift separates shortcut use from
  that range extrapolation.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from cattune.data import shifts
from cattune.data.records import Relation
from cattune.data.shifts import ANTICORRELATED, CORRELATED, EXTRA_SHIFTS, IN_RANGE, INDEPENDENT
from cattune.data.tables import TableField, parse_table, redraw_same_length, replace_values

NAME = "stg"
PROMPT_PREFIX = "Here is the statistical data for a person. Please predict the probability of cancer. "
PROMPT_SUFFIX = " Answer: "
PAIR_SEPARATOR = ", "

CAUSES: tuple[str, ...] = ("Smoking", "Weight", "Exercise")
SPURIOUS: tuple[str, ...] = ("Yellow fingers", "Clothing size", "Hormones")
IRRELEVANT: tuple[str, ...] = ("Certain gene", "Room size")
VARIABLES: tuple[str, ...] = CAUSES + SPURIOUS + IRRELEVANT

# spurious variable -> (its cause, the ratio of int(ratio * cause))
SPURIOUS_MECHANISM: dict[str, tuple[str, float]] = {
    "Yellow fingers": ("Smoking", 1.5),
    "Clothing size": ("Weight", 1.0),
    "Hormones": ("Exercise", 0.5),
}
LOW, HIGH = 1, 10  # every drawn value is an integer in LOW..HIGH

HIGH_RISK, LOW_RISK, MIDDLE_RISK = "High Risk", "Low Risk", "Middle Risk"
HIGH_RISK_THRESHOLD = 7.2
MIDDLE_RISK_SCORE = 2.7


def risk_score(smoking: int, weight: int, exercise: int) -> float:
    """The latent score, evaluated in the same float order as the released generator."""
    return 1.2 * smoking + 0.7 * weight - exercise


def risk_label(smoking: int, weight: int, exercise: int, *, middle_risk: bool = False) -> str:
    """The label rule; ``middle_risk`` enables the released generator's exact ``f == 2.7`` branch."""
    score = risk_score(smoking, weight, exercise)
    if score > HIGH_RISK_THRESHOLD:
        return HIGH_RISK
    # Exact float equality is what the released code does; only combinations whose float sum
    # lands exactly on 2.7 fire it, which is why it is off by default.
    if middle_risk and score == MIDDLE_RISK_SCORE:
        return MIDDLE_RISK
    return LOW_RISK


def draw_values(rng: random.Random, relation: str = CORRELATED) -> dict[str, int]:
    """One person's eight values; ``relation`` says how the spurious values follow the causes."""
    values = {name: rng.randint(LOW, HIGH) for name in CAUSES}
    for name, (cause, ratio) in SPURIOUS_MECHANISM.items():
        if relation == CORRELATED:
            values[name] = int(ratio * values[cause])
        elif relation == INDEPENDENT:
            values[name] = rng.randint(LOW, HIGH)
        elif relation == ANTICORRELATED:
            values[name] = int(ratio * (LOW + HIGH - values[cause]))
        elif relation == IN_RANGE:
            values[name] = int(ratio * rng.randint(LOW, HIGH))
        else:
            raise ValueError(f"unknown spurious relation {relation!r}; known: "
                             f"{', '.join((CORRELATED, INDEPENDENT) + EXTRA_SHIFTS)}")
    for name in IRRELEVANT:
        values[name] = rng.randint(LOW, HIGH)
    return values


def format_prompt(values: Mapping[str, int], order: Sequence[str]) -> str:
    """The prompt text with the pairs in the given order."""
    return PROMPT_PREFIX + PAIR_SEPARATOR.join(f"{name}: {values[name]}" for name in order) + PROMPT_SUFFIX


def make_record(values: Mapping[str, int], order: Sequence[str], *, middle_risk: bool = False) -> dict[str, Any]:
    """A release-format object (plus ``noncausal``) for one person's values."""
    prompt = format_prompt(values, order)
    target = risk_label(values["Smoking"], values["Weight"], values["Exercise"], middle_risk=middle_risk)
    relations, noncausal = spans(prompt, target)
    return {
        "input": prompt,
        "target": target,
        "important": [{rel.effect: list(rel.causes)} for rel in relations],
        "noncausal": noncausal,
    }


def generate_split(rng: random.Random, size: int, relation: str, *, middle_risk: bool = False) -> list[dict[str, Any]]:
    """``size`` records whose spurious values follow ``relation``."""
    records = []
    for _ in range(size):
        values = draw_values(rng, relation)
        order = list(VARIABLES)
        rng.shuffle(order)
        records.append(make_record(values, order, middle_risk=middle_risk))
    return records


def generate_splits(
    seed: int,
    train_size: int,
    test_size: int,
    *,
    middle_risk: bool = False,
    extra_shifts: Sequence[str] = EXTRA_SHIFTS,
) -> dict[str, list[dict[str, Any]]]:
    """The training pool, the IID and OOD tests, and one test per extra shift.

    Each split draws from its own random stream seeded by ``(seed, split name)``, so asking for
    fewer shifts or another test size leaves the other splits unchanged.
    """
    return shifts.generate_splits(NAME, generate_split, seed, train_size, test_size, extra_shifts,
                                  middle_risk=middle_risk)


def _fields(text: str) -> dict[str, TableField]:
    fields = {f.name: f for f in parse_table(text)}
    missing = [name for name in VARIABLES if name not in fields]
    if missing:
        raise ValueError(f"not an STG prompt: no value for {', '.join(missing)}")
    return fields


def redraw_spurious(text: str, rng: random.Random) -> str:
    """``text`` with only the spurious values redrawn from 1..10 (the OOD draw); at least one
    value always changes, so a prediction that flips can only be due to spurious values."""
    old = {name: field.value for name, field in _fields(text).items() if name in SPURIOUS}
    while True:
        new = {name: str(rng.randint(LOW, HIGH)) for name in SPURIOUS}
        if new != old:
            return replace_values(text, new)


def redraw_spurious_same_length(text: str, rng: random.Random) -> str:
    """:func:`redraw_spurious` keeping each value's number of digits (1..9 stay one digit, 10 stays
    10), so the prompt keeps its token count and every later token its position; ``text`` unchanged
    when every spurious value is 10."""
    _fields(text)
    return redraw_same_length(text, SPURIOUS, lambda _name, r: str(r.randint(LOW, HIGH)), rng)


def redraw_noncausal(text: str, rng: random.Random) -> str:
    """``text`` with every spurious and irrelevant value redrawn from 1..10 (counterfactual
    augmentation: the label, a function of the causes only, stays valid)."""
    _fields(text)
    return replace_values(text, {name: str(rng.randint(LOW, HIGH)) for name in SPURIOUS + IRRELEVANT})


def label_by_spurious_length(records: Sequence[tuple[str, str]]) -> dict[int, dict[str, Any]]:
    """Per number of two-digit spurious values in a prompt (0..3): how many ``(prompt, label)``
    items have it and the share of each label.

    "10" and above are two tokens under digit-splitting tokenizers, so this count moves every later
    token. In training data, where the spurious values follow the causes, it predicts the label: a
    shortcut through the prompt's length that no attention constraint on the value tokens removes.
    """
    table: dict[int, dict[str, Any]] = {}
    for text, label in records:
        count = sum(len(field.value) > 1 for name, field in _fields(text).items() if name in SPURIOUS)
        group = table.setdefault(count, {"n": 0, "labels": {}})
        group["n"] += 1
        group["labels"][label] = group["labels"].get(label, 0) + 1
    for group in table.values():
        group["shares"] = {label: n / group["n"] for label, n in sorted(group["labels"].items())}
    return dict(sorted(table.items()))


def spans(text: str, target: str) -> tuple[tuple[Relation, ...], dict[str, list[str]]]:
    """The causal relation in the release annotation form and the named non-causal spans.

    Works on any STG prompt, annotated or not: the label depends on the three cause pairs,
    listed in the order they appear in the prompt (as in the released annotations).
    """
    fields = sorted(_fields(text).values(), key=lambda f: f.start)
    causes = tuple(f.span for f in fields if f.name in CAUSES)
    noncausal = {
        "spurious": [f.span for f in fields if f.name in SPURIOUS],
        "irrelevant": [f.span for f in fields if f.name in IRRELEVANT],
    }
    return (Relation(str(target), causes),), noncausal
