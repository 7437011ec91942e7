"""Print, for STG files, the label shares by number of two-digit spurious values (docs/STUDY.md).

    .venv/bin/python scripts/stg_length_shortcut.py ../shared/data/cat-release/STG/spurious_token_game_train3_M.jsonl
"""

from __future__ import annotations

import argparse

from cattune.data.records import load_records
from cattune.data.stg import label_by_spurious_length


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="STG JSONL files (release format)")
    args = parser.parse_args()
    for path in args.files:
        table = label_by_spurious_length([(r.input, r.target) for r in load_records(path)])
        labels = sorted({label for group in table.values() for label in group["shares"]})
        print(path)
        print("| two-digit spurious values | items | " + " | ".join(labels) + " |")
        print("|---|---|" + "---|" * len(labels))
        for count, group in table.items():
            print(f"| {count} | {group['n']} | " + " | ".join(f"{100 * group['shares'].get(k, 0):.0f}%" for k in labels) + " |")


if __name__ == "__main__":
    main()
