"""Compare two arms over the seeds of several experiments' results.json files (docs/STUDY.md).

A seed counts once; the tests are over seed pairs (cattune.report.pooled).

    .venv/bin/python scripts/pool_seeds.py results/stg-study-lr results/stg-study-confirm \\
        --arms baseline,cat-path-jitter-w01-lr2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cattune.report.pooled import pooled_comparison, pooled_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results_dirs", nargs="+", type=Path, help="folders holding results.json")
    parser.add_argument("--arms", required=True, metavar="A,B", help="the reference arm, then the arm compared with it")
    args = parser.parse_args()
    reference, arm = args.arms.split(",")
    results = [json.loads((folder / "results.json").read_text()) for folder in args.results_dirs]
    print(pooled_table(pooled_comparison(results, reference, arm), reference, arm))


if __name__ == "__main__":
    main()
