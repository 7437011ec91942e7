"""Compare two arms over the seeds of several experiments' results.json files (docs/STUDY.md).

The per-item paired tests of `cattune experiment` need the run folders; this pools what the
committed results keep, each run's accuracy and flip rate, and tests the seed-paired differences
(paired t and exact sign-flip, cattune.stats.paired_seed_test). A seed counts once: a later file
does not replace an earlier file's run of the same arm and seed.

    .venv/bin/python scripts/pool_seeds.py results/stg-study-lr results/stg-study-confirm \\
        --arms baseline,cat-path-jitter-w01-lr2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cattune.stats import paired_seed_test, seed_summary

MEASURES = (("test_iid", "accuracy"), ("test_ood", "accuracy"), ("test_ood", "flip_rate"),
            ("test_ood_anticorrelated", "accuracy"))


def per_seed(results_dirs: list[Path], arm: str, split: str, measure: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for folder in results_dirs:
        results = json.loads((folder / "results.json").read_text())
        seeds = results["arms"].get(arm, {}).get("splits", {}).get(split, {}).get("per_seed", {})
        for seed, stats in seeds.items():
            if measure in stats and seed not in values:
                values[seed] = stats[measure]
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results_dirs", nargs="+", type=Path, help="folders holding results.json")
    parser.add_argument("--arms", required=True, metavar="A,B", help="the reference arm, then the arm compared with it")
    args = parser.parse_args()
    reference, arm = args.arms.split(",")
    print(f"| split | measure | seeds | {reference} | {arm} | difference [95% t interval] | paired t p | sign-flip p |")
    print("|---|---|---|---|---|---|---|---|")
    for split, measure in MEASURES:
        a, b = per_seed(args.results_dirs, reference, split, measure), per_seed(args.results_dirs, arm, split, measure)
        seeds = sorted(set(a) & set(b), key=int)
        if len(seeds) < 2:
            continue
        xa, xb = [100 * a[s] for s in seeds], [100 * b[s] for s in seeds]
        test = paired_seed_test(xa, xb)
        print(f"| {split} | {measure} | {','.join(seeds)} | {seed_summary(xa)['mean']:.1f} | {seed_summary(xb)['mean']:.1f} "
              f"| {test['mean_difference']:+.1f} [{test['ci_low']:+.1f}, {test['ci_high']:+.1f}] "
              f"| {test['t_test_p_value']:.2g} | {test['sign_flip_p_value']:.2g} |")


if __name__ == "__main__":
    main()
