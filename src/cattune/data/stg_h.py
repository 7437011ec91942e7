"""STG_H: the harder Spurious Token Game, an air-quality index (AQI) from 14 printed variables.

METHOD.md section 8 gives this process only in outline; the constants below were inferred from
the released files (``STG_H_train``, ``STG_H_iid_test``, ``STG_H_ood_test``, 5,000 items), see
docs/DATA.md for the evidence and a side-by-side comparison:

* One fixed template: six causes ``; ``-separated and ended by ``. ``, then the five spurious
  variables, then the three irrelevant ones, then the question and ``" Answer: "``.
* Causes: ``U(low, high)`` plus Gaussian noise (standard deviations 2, 2, 1.5, 1, 3, 3, fitted by
  maximum likelihood), printed with one decimal (two with a ``%`` sign).
* AQI = ``round((clip(f, -20, 30) + 20) / 50 * 100)`` with ``f = 0.3 f1 + 0.25 f2 + 0.2 f3 +
  0.15 f4 - 0.2 f5 - 0.3 f6`` on the unrounded cause values, as released: 3% of released labels
  differ by 1 from the same formula on the printed values. ``label_from_printed=True`` uses the
  printed values instead, making the label an exact function of the prompt.
* Spurious (training and IID test): a linear function of one noisy cause plus Gaussian noise
  (Ice Cream Sales Index = 0.4 x Meteorological Dispersion + N(0, 2), ...).
* Spurious (OOD test): independent uniforms on shifted, narrow ranges (Ice Cream Sales Index
  U(5, 9), ...), disjoint from or at the edge of their training ranges.
* Irrelevant: City Anniversary 1..100 (always printed with "th"), Average Internet Speed
  U(80, 120) + N(0, 3) in Mbps, Number of Libraries 10..50.
* Annotation: ``{"Answer: <aqi>": [the six cause values as printed]}``.

The extra shifts mirror STG's: ``anticorrelated`` applies the training mechanism to the cause
reflected within its range (``low + high - cause``), ``in_range`` applies it to an independent
draw of the cause, so the spurious values keep their training marginals.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cattune.data import shifts
from cattune.data.records import Relation
from cattune.data.shifts import ANTICORRELATED, CORRELATED, EXTRA_SHIFTS, IN_RANGE, INDEPENDENT
from cattune.data.tables import TableField, parse_table, redraw_same_length, replace_values

NAME = "stg-h"
QUESTION = "Given these diverse conditions, what is the projected Air Quality Index (AQI) on a 0-100 scale?"
PROMPT_SUFFIX = " Answer: "
EFFECT_PREFIX = "Answer: "


@dataclass(frozen=True)
class CauseSpec:
    low: float
    high: float
    noise: float
    weight: float  # coefficient in the AQI score
    unit: str = ""


CAUSE_SPECS: dict[str, CauseSpec] = {
    "Industrial Emissions": CauseSpec(30, 70, 2.0, 0.3),
    "Vehicle Emissions": CauseSpec(20, 60, 2.0, 0.25),
    "Coal Dependency": CauseSpec(10, 50, 1.5, 0.2, "%"),
    "Agricultural Burning": CauseSpec(10, 30, 1.0, 0.15),
    "Urban Green Coverage": CauseSpec(40, 80, 3.0, -0.2, "%"),
    "Meteorological Dispersion": CauseSpec(50, 90, 3.0, -0.3),
}


@dataclass(frozen=True)
class SpuriousSpec:
    cause: str
    slope: float
    noise: float
    ood_low: float
    ood_high: float
    integer: bool = False  # printed as a rounded integer instead of one decimal


SPURIOUS_SPECS: dict[str, SpuriousSpec] = {
    "Ice Cream Sales Index": SpuriousSpec("Meteorological Dispersion", 0.4, 2.0, 5, 9),
    "Allergy Complaints Level": SpuriousSpec("Agricultural Burning", 0.2, 3.0, 2, 6),
    "Renewable Stock Index": SpuriousSpec("Industrial Emissions", 1.1, 1.5, 3, 7, integer=True),
    "Public Transport Subscriptions (k)": SpuriousSpec("Vehicle Emissions", 0.15, 2.0, 3, 9),
    "Water Awareness Score": SpuriousSpec("Urban Green Coverage", -0.1, 1.0, -8, -4),
}

CAUSES: tuple[str, ...] = tuple(CAUSE_SPECS)
SPURIOUS: tuple[str, ...] = tuple(SPURIOUS_SPECS)
IRRELEVANT: tuple[str, ...] = ("City Anniversary", "Average Internet Speed", "Number of Libraries")
VARIABLES: tuple[str, ...] = CAUSES + SPURIOUS + IRRELEVANT

SCORE_CLIP = (-20.0, 30.0)


def _format_decimal(value: float, unit: str = "") -> str:
    return f"{value:.1f}{unit}"


def _irrelevant_draws() -> dict[str, Callable[[random.Random], str]]:
    return {
        "City Anniversary": lambda rng: f"{rng.randint(1, 100)}th",
        "Average Internet Speed": lambda rng: _format_decimal(rng.uniform(80, 120) + rng.gauss(0, 3), "Mbps"),
        "Number of Libraries": lambda rng: str(rng.randint(10, 50)),
    }


IRRELEVANT_DRAWS = _irrelevant_draws()


def aqi(causes: Mapping[str, float]) -> int:
    """The label: the clipped linear score mapped to an integer 0..100."""
    score = sum(spec.weight * causes[name] for name, spec in CAUSE_SPECS.items())
    low, high = SCORE_CLIP
    return round((min(max(score, low), high) - low) / (high - low) * 100)


def draw_cause(rng: random.Random, name: str) -> float:
    spec = CAUSE_SPECS[name]
    return rng.uniform(spec.low, spec.high) + rng.gauss(0, spec.noise)


def _spurious_value(spec: SpuriousSpec, driver: float, rng: random.Random) -> float:
    value = spec.slope * driver + rng.gauss(0, spec.noise)
    return round(value) if spec.integer else value


def _ood_spurious_value(spec: SpuriousSpec, rng: random.Random) -> float:
    value = rng.uniform(spec.ood_low, spec.ood_high)
    return round(value) if spec.integer else value


def _format_spurious(spec: SpuriousSpec, value: float) -> str:
    return str(int(value)) if spec.integer else _format_decimal(value)


def draw_values(rng: random.Random, relation: str = CORRELATED) -> tuple[dict[str, float], dict[str, str]]:
    """One city's unrounded cause values and every variable as printed."""
    causes = {name: draw_cause(rng, name) for name in CAUSES}
    printed = {name: _format_decimal(causes[name], CAUSE_SPECS[name].unit) for name in CAUSES}
    for name, spec in SPURIOUS_SPECS.items():
        cause = CAUSE_SPECS[spec.cause]
        if relation == CORRELATED:
            value = _spurious_value(spec, causes[spec.cause], rng)
        elif relation == INDEPENDENT:
            value = _ood_spurious_value(spec, rng)
        elif relation == ANTICORRELATED:
            value = _spurious_value(spec, cause.low + cause.high - causes[spec.cause], rng)
        elif relation == IN_RANGE:
            value = _spurious_value(spec, draw_cause(rng, spec.cause), rng)
        else:
            raise ValueError(f"unknown spurious relation {relation!r}; known: "
                             f"{', '.join((CORRELATED, INDEPENDENT) + EXTRA_SHIFTS)}")
        printed[name] = _format_spurious(spec, value)
    for name, draw in IRRELEVANT_DRAWS.items():
        printed[name] = draw(rng)
    return causes, printed


def format_prompt(printed: Mapping[str, str]) -> str:
    """The released template filled with the printed values."""
    def group(names: Sequence[str]) -> str:
        return "; ".join(f"{name}: {printed[name]}" for name in names) + "."

    return " ".join((group(CAUSES), group(SPURIOUS), group(IRRELEVANT), QUESTION)) + PROMPT_SUFFIX


def _printed_number(value: str) -> float:
    return float(value.rstrip("%"))


def make_record(causes: Mapping[str, float], printed: Mapping[str, str], *, label_from_printed: bool = False) -> dict[str, Any]:
    """A release-format object (integer target, plus ``noncausal``) for one city."""
    prompt = format_prompt(printed)
    if label_from_printed:
        target = aqi({name: _printed_number(printed[name]) for name in CAUSES})
    else:
        target = aqi(causes)
    relations, noncausal = spans(prompt, target)
    return {
        "input": prompt,
        "target": target,
        "important": [{rel.effect: list(rel.causes)} for rel in relations],
        "noncausal": noncausal,
    }


def generate_split(rng: random.Random, size: int, relation: str, *, label_from_printed: bool = False) -> list[dict[str, Any]]:
    records = []
    for _ in range(size):
        causes, printed = draw_values(rng, relation)
        records.append(make_record(causes, printed, label_from_printed=label_from_printed))
    return records


def generate_splits(
    seed: int,
    train_size: int,
    test_size: int,
    *,
    label_from_printed: bool = False,
    extra_shifts: Sequence[str] = EXTRA_SHIFTS,
) -> dict[str, list[dict[str, Any]]]:
    """The training pool, the IID and OOD tests, and one test per extra shift (each split from
    its own random stream seeded by ``(seed, split name)``)."""
    return shifts.generate_splits(NAME, generate_split, seed, train_size, test_size, extra_shifts,
                                  label_from_printed=label_from_printed)


def _fields(text: str) -> dict[str, TableField]:
    fields = {f.name: f for f in parse_table(text)}
    missing = [name for name in VARIABLES if name not in fields]
    if missing:
        raise ValueError(f"not an STG_H prompt: no value for {', '.join(missing)}")
    return fields


def _ood_printed(name: str, rng: random.Random) -> str:
    if name in SPURIOUS_SPECS:
        spec = SPURIOUS_SPECS[name]
        return _format_spurious(spec, _ood_spurious_value(spec, rng))
    return IRRELEVANT_DRAWS[name](rng)


def redraw_spurious(text: str, rng: random.Random) -> str:
    """``text`` with only the spurious values redrawn as in the OOD test (at least one changes)."""
    old = {name: field.value for name, field in _fields(text).items() if name in SPURIOUS}
    while True:
        new = {name: _ood_printed(name, rng) for name in SPURIOUS}
        if new != old:
            return replace_values(text, new)


def redraw_spurious_same_length(text: str, rng: random.Random) -> str:
    """:func:`redraw_spurious` keeping each value's printed length, so the prompt keeps its token
    count under digit-splitting tokenizers."""
    _fields(text)
    return redraw_same_length(text, SPURIOUS, _ood_printed, rng)


def redraw_noncausal(text: str, rng: random.Random) -> str:
    """``text`` with every spurious value redrawn over its OOD range and every irrelevant value
    over its range (counterfactual augmentation: the causes and so the label are unchanged)."""
    _fields(text)
    return replace_values(text, {name: _ood_printed(name, rng) for name in SPURIOUS + IRRELEVANT})


def spans(text: str, target: str | int) -> tuple[tuple[Relation, ...], dict[str, list[str]]]:
    """The causal relation in the release annotation form (``"Answer: <aqi>"`` <- the six cause
    values as printed) and the non-causal values as printed, for any STG_H prompt."""
    fields = _fields(text)
    relation = Relation(f"{EFFECT_PREFIX}{target}", tuple(fields[name].value for name in CAUSES))
    noncausal = {
        "spurious": [fields[name].value for name in SPURIOUS],
        "irrelevant": [fields[name].value for name in IRRELEVANT],
    }
    return (relation,), noncausal
