"""One comparison over the seeds of several experiments' results.

The per-item paired tests of an experiment need its run folders; what its ``results.json`` keeps
of each run is the per-seed accuracy and flip rate. Pooling those across experiments that ran the
same arms on different seeds gives seed-level paired tests over all of them (paired t and exact
sign-flip, :func:`cattune.stats.paired_seed_test`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cattune.report.format import _md_table
from cattune.stats import paired_seed_test, seed_summary

# (split, per-seed measure) compared by default: the STG experiments' splits
POOLED_MEASURES: tuple[tuple[str, str], ...] = (
    ("test_iid", "accuracy"),
    ("test_ood", "accuracy"),
    ("test_ood", "flip_rate"),
    ("test_ood_anticorrelated", "accuracy"),
)


def seed_values(results: Sequence[Mapping[str, Any]], arm: str, split: str, measure: str) -> dict[str, float]:
    """Seed -> ``measure`` of ``arm`` on ``split`` over several results dicts; a seed counts once
    (the first results that hold it win)."""
    values: dict[str, float] = {}
    for result in results:
        per_seed = result.get("arms", {}).get(arm, {}).get("splits", {}).get(split, {}).get("per_seed", {})
        for seed, stats in per_seed.items():
            if measure in stats and str(seed) not in values:
                values[str(seed)] = float(stats[measure])
    return values


def pooled_comparison(
    results: Sequence[Mapping[str, Any]],
    reference: str,
    arm: str,
    measures: Sequence[tuple[str, str]] = POOLED_MEASURES,
) -> list[dict[str, Any]]:
    """Per (split, measure) with at least two seeds run by both arms: the seeds, both arms' means
    and ``arm - reference`` tested over the seed pairs (in percentage points)."""
    rows = []
    for split, measure in measures:
        a = seed_values(results, reference, split, measure)
        b = seed_values(results, arm, split, measure)
        seeds = sorted(set(a) & set(b), key=lambda s: (len(s), s))
        if len(seeds) < 2:
            continue
        xa, xb = [100 * a[s] for s in seeds], [100 * b[s] for s in seeds]
        rows.append({"split": split, "measure": measure, "seeds": seeds,
                     "reference_mean": seed_summary(xa)["mean"], "arm_mean": seed_summary(xb)["mean"],
                     **paired_seed_test(xa, xb)})
    return rows


def pooled_table(rows: Sequence[Mapping[str, Any]], reference: str, arm: str) -> str:
    """Markdown table of :func:`pooled_comparison`'s rows."""
    header = ["split", "measure", "seeds", reference, arm, "difference [95% t interval]", "paired t p", "sign-flip p"]
    body = [[r["split"], r["measure"], ",".join(r["seeds"]), f"{r['reference_mean']:.1f}", f"{r['arm_mean']:.1f}",
             f"{r['mean_difference']:+.1f} [{r['ci_low']:+.1f}, {r['ci_high']:+.1f}]",
             "undefined" if r["t_test_p_value"] is None else f"{r['t_test_p_value']:.2g}",
             f"{r['sign_flip_p_value']:.2g}"] for r in rows]
    return _md_table(header, body)
