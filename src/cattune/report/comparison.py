"""Each arm against the baseline: the paired comparison on one measure of one split
(:func:`compare_arms`) and the comparison table of every arm and split.

In the paired block's ``mcnemar`` (``cattune.stats.mcnemar_exact``), ``b01`` counts items only the
arm got right and ``b10`` items only the baseline got right (checked against the sign of the
difference before being named).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cattune.report.format import _arm_label, _cell, _interval, _md_table, _p, _pct, _the
from cattune.report.results import (
    BASELINE,
    CAT,
    _arms,
    _compared_arms,
    _has_flip,
    _majority,
    _paired,
    _reference,
    _split_n,
    _split_stats,
    _splits,
)

logger = logging.getLogger(__name__)

ALPHA = 0.05  # significance level of every verdict in the findings


@dataclass(frozen=True)
class Comparison:
    """An arm against the baseline on one measure of one split."""

    verdict: str  # "better", "worse", "not significantly different" or "undetermined"
    difference: float  # arm minus baseline, as a fraction
    ci: tuple[float, float] | None  # 95% interval of the difference
    p_value: float | None
    basis: str  # how the verdict was reached, for the sentence


def _discordant_text(mcnemar: Mapping[str, Any], difference: float, arm: str, reference: str = BASELINE) -> str:
    b01, b10 = mcnemar.get("b01"), mcnemar.get("b10")
    if b01 is None or b10 is None:
        return ""
    # Name the counts only when they agree with the difference, so a flipped convention upstream
    # cannot make the report attribute wins to the wrong arm.
    if (b01 - b10) * difference < 0:
        logger.warning("McNemar counts b01=%s b10=%s disagree with the difference %+.4f; not naming them",
                       b01, b10, difference)
        return ""
    return f"; {b01} items only {_arm_label(arm)} answered correctly, {b10} only {_the(reference)}"


def compare_arms(results: Mapping[str, Any], split: str, measure: str = "accuracy",
                 arm: str = CAT) -> Comparison | None:
    """``arm`` vs the baseline on ``split`` for ``measure`` ("accuracy", higher is better, or
    "flip_rate", lower is better). None when either arm lacks the measure on that split.

    The verdict uses, in order: the exact McNemar p-value; the interval of the paired difference;
    the two arms' own intervals (non-overlap is a conservative test). Significance is p < ALPHA.
    """
    arms, ref = _arms(results), _reference(results)
    if ref not in arms or arm not in arms or arm == ref:
        return None
    base, cat = _split_stats(arms[ref], split), _split_stats(arms[arm], split)
    if not base or not cat or base.get(measure) is None or cat.get(measure) is None:
        return None
    higher_is_better = measure == "accuracy"
    paired = _paired(results, arm, split)
    mcnemar = paired.get("mcnemar" if measure == "accuracy" else "flip_mcnemar") or {}
    if measure == "accuracy" and paired.get("accuracy_difference") is not None:
        difference = float(paired["accuracy_difference"])
    else:
        difference = float(cat[measure]) - float(base[measure])
    ci = None
    if measure == "accuracy" and paired.get("diff_ci_low") is not None and paired.get("diff_ci_high") is not None:
        ci = (float(paired["diff_ci_low"]), float(paired["diff_ci_high"]))

    p = mcnemar.get("p_value")
    low_key, high_key = ("ci_low", "ci_high") if measure == "accuracy" else ("flip_ci_low", "flip_ci_high")
    bounds = [base.get(low_key), base.get(high_key), cat.get(low_key), cat.get(high_key)]
    if p is not None:
        significant = p < ALPHA
        basis = f"exact McNemar p = {_p(p)}"
        if measure == "accuracy":
            basis += _discordant_text(mcnemar, difference, arm, ref)
    elif ci is not None:
        significant = ci[0] > 0 or ci[1] < 0
        basis = "the paired interval " + ("excludes" if significant else "includes") + " 0; no McNemar test recorded"
    elif None not in bounds:
        significant = bounds[1] < bounds[2] or bounds[3] < bounds[0]
        basis = ("the two 95% intervals " + ("do not overlap" if significant else "overlap")
                 + "; no paired test recorded")
    else:
        return Comparison("undetermined", difference, ci, None, "no test or interval recorded")
    if not significant or difference == 0:
        verdict = "not significantly different"
    else:
        verdict = "better" if (difference > 0) == higher_is_better else "worse"
    return Comparison(verdict, difference, ci, p, basis)


def _table_notes(results: Mapping[str, Any]) -> list[str]:
    methods = {s.get("ci_method") for a in _arms(results).values() for sp in _splits(results)
               if (s := _split_stats(a, sp))} - {None}
    described = {"wilson": "Wilson score interval over the n test items",
                 "seeds": "t interval across seeds (the value is the mean over seeds)"}
    notes = ["Cells: percentage [95% interval]."]
    if methods:
        notes.append("Intervals: " + "; ".join(described.get(m, f"method '{m}'") for m in sorted(methods)) + ".")
    if any(_has_flip(_split_stats(a, sp)) for a in _arms(results).values() for sp in _splits(results)):
        notes.append("Flip: share of answers that change when only the spurious values change (lower is better).")
    if _compared_arms(results):
        if results.get("paired"):
            notes.append(f"Arm - {_reference(results)}: difference in points [95% interval of the paired difference], "
                         "exact McNemar p.")
            if results.get("pooling"):
                notes.append(f"Paired tests: {results['pooling']}.")
        else:
            notes.append(f"Arm - {_reference(results)}: difference in points; no paired test was recorded.")
    return notes


def comparison_table(results: dict) -> str:
    """The Markdown comparison table (rows = arms, majority class, paired difference; columns =
    accuracy and, where measured, flip rate per split), followed by notes on the intervals."""
    arms = _arms(results)
    splits = _splits(results)
    if not arms or not splits:
        raise ValueError("results has no arms or no evaluated splits to tabulate")
    columns: list[tuple[str, str]] = []  # (split, measure)
    header = ["arm"]
    for split in splits:
        n = _split_n(results, split, "n")
        columns.append((split, "accuracy"))
        header.append(f"{split} acc %" + (f" (n={n})" if n is not None else ""))
        if any(_has_flip(_split_stats(a, split)) for a in arms.values()):
            flip_n = _split_n(results, split, "flip_n")
            columns.append((split, "flip_rate"))
            header.append(f"{split} flip %" + (f" (n={flip_n})" if flip_n is not None else ""))

    rows: list[list[str]] = []
    for name, arm in arms.items():
        row = [_arm_label(name)]
        for split, measure in columns:
            stats = _split_stats(arm, split)
            if not stats or stats.get(measure) is None:
                row.append("—")
                continue
            if measure == "accuracy":
                cell = _cell(stats["accuracy"], stats.get("ci_low"), stats.get("ci_high"))
                n_key = "n"
            else:
                cell = _cell(stats["flip_rate"], stats.get("flip_ci_low"), stats.get("flip_ci_high"))
                n_key = "flip_n"
            if _split_n(results, split, n_key) is None and stats.get(n_key) is not None:
                cell += f" (n={stats[n_key]})"
            row.append(cell)
        rows.append(row)

    majority = ["majority class"]
    for split, measure in columns:
        value = _majority(results, split) if measure == "accuracy" else None
        majority.append(_pct(value) if value is not None else "—")
    rows.append(majority)

    for arm in _compared_arms(results):
        paired_row = [f"{_arm_label(arm)} - {_reference(results)}"]
        for split, measure in columns:
            comparison = compare_arms(results, split, measure, arm)
            if comparison is None:
                paired_row.append("—")
                continue
            cell = f"{100 * comparison.difference:+.1f}"
            if comparison.ci is not None:
                cell += " " + _interval(*comparison.ci, signed=True)
            if comparison.p_value is not None:
                cell += f", p = {_p(comparison.p_value)}"
            paired_row.append(cell)
        if any(cell != "—" for cell in paired_row[1:]):
            rows.append(paired_row)
    return _md_table(header, rows) + "\n\n" + "\n".join(_table_notes(results))
